//! The cluster the suites drive, behind a small interface with two backends: OS
//! processes on loopback ([`crate::process`]) and the docker-compose deployment
//! ([`crate::compose`]).
//!
//! A cluster is NATS (one node, or three with R3 buckets and streams), coordinators
//! and workers. Every part is addressed by a [`Part`] and can be hit by a [`Fault`].

use std::fmt;
use std::time::Duration;

/// One part of the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(tag = "kind", content = "index", rename_all = "snake_case")]
pub enum Part {
    Nats(usize),
    Coordinator(usize),
    Worker(usize),
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Part::Nats(i) => write!(f, "nats-{i}"),
            Part::Coordinator(i) => write!(f, "coordinator-{i}"),
            Part::Worker(i) => write!(f, "worker-{i}"),
        }
    }
}

/// What can be done to a part.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// `kill -9`.
    Kill,
    /// `SIGSTOP`: the process is frozen, its sockets stay open.
    Pause,
    /// `SIGCONT`.
    Resume,
    /// Start a killed part again with the same identity (ports, store, worker id). On
    /// compose, returns once the container's healthcheck passes.
    Start,
    /// A graceful stop: SIGTERM, then SIGKILL after a grace period.
    Stop,
    /// Drop every connection of the part to NATS and refuse new ones: the proxy of a
    /// worker behind one (process backend), or a real network partition of any part
    /// (compose backend: the container leaves the network).
    Cut,
    /// Let connections through again after [`Fault::Cut`].
    Heal,
}

/// Timings the coordinators run with (the `gf coordinator` flags).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Timings {
    #[serde(with = "millis")]
    pub lease_ttl: Duration,
    #[serde(with = "millis")]
    pub claim_timeout: Duration,
    #[serde(with = "millis")]
    pub reaper_period: Duration,
    /// Not a flag of `gf coordinator`: its default, used for bounds.
    #[serde(with = "millis")]
    pub leader_ttl: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            lease_ttl: Duration::from_secs(3),
            claim_timeout: Duration::from_secs(3),
            reaper_period: Duration::from_millis(200),
            leader_ttl: gf_coordinator::CoordinatorConfig::default().leader_ttl,
        }
    }
}

impl Timings {
    /// How soon a job held by a dead or cut-off worker must be running again.
    pub fn recovery_bound(&self) -> Duration {
        self.lease_ttl + self.reaper_period + Duration::from_secs(2)
    }
}

mod millis {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
}

/// How to build the cluster.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// 1 or 3 NATS nodes (3: buckets and streams with 3 replicas).
    pub nats_nodes: usize,
    /// NATS with `sync_interval: always` (fsync every write).
    pub durable: bool,
    pub timings: Timings,
    /// The grace period of every outcome in the live store (`history.succeeded`,
    /// `.cancelled`, `.rejected`, `.dead`): finished jobs leave `gf_jobs` this long after
    /// they finish and are found in the archive only. `None` keeps the defaults (a day
    /// and more: nothing leaves during a run).
    pub history_grace: Option<Duration>,
    /// Run secured, as an operator deploys it (docs/security.md): `gf admin init` in
    /// the run's folder, nats-server with its config (the auth callout), coordinators
    /// with `--secrets-dir`, workers enrolled as factories with a token and their own
    /// keys, the suite's clients as the operators' user `gf-admin`. The compose
    /// backend is always secured.
    pub secured: bool,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        Self {
            nats_nodes: 1,
            durable: false,
            timings: Timings::default(),
            history_grace: None,
            secured: false,
        }
    }
}

impl ClusterSpec {
    /// The coordinators' environment for the settings that have no `gf coordinator`
    /// flag.
    pub fn coordinator_env(&self) -> Vec<(String, String)> {
        let mut env = Vec::new();
        if let Some(grace) = self.history_grace {
            for outcome in ["SUCCEEDED", "CANCELLED", "REJECTED", "DEAD"] {
                env.push((
                    format!("GF_HISTORY_{outcome}"),
                    format!("{}s", grace.as_secs().max(1)),
                ));
            }
        }
        env
    }
}

/// A worker to start.
#[derive(Clone, Debug)]
pub struct WorkerSpec {
    pub id: String,
    pub slots: u32,
    /// Connect through a proxy that can cut the worker off ([`Fault::Cut`]).
    pub via_proxy: bool,
    /// Run under `faketime` with this offset (e.g. `+5m`): a worker whose clock is off.
    pub clock_offset: Option<String>,
}

impl WorkerSpec {
    pub fn new(id: impl Into<String>, slots: u32) -> Self {
        Self {
            id: id.into(),
            slots,
            via_proxy: false,
            clock_offset: None,
        }
    }
}

/// A running cluster. Every process it started is killed when it is dropped.
pub trait Cluster: Send {
    /// Client URL(s) of NATS, comma-separated when clustered.
    fn nats_url(&self) -> String;
    /// Client URL of one NATS node.
    fn node_url(&self, i: usize) -> String;
    /// [`Cluster::node_url`] with the operators' credentials in it when the cluster is
    /// secured: for clients the suite runs itself (in-process workers, `gf` commands).
    fn operator_url(&self, i: usize) -> String {
        self.node_url(i)
    }
    /// A directory shared with the workers' jobs (the side-effect file lives here).
    fn work_dir(&self) -> &std::path::Path;
    fn spec(&self) -> &ClusterSpec;
    /// Starts one more coordinator; returns its part and its id.
    fn add_coordinator(&mut self) -> anyhow::Result<(Part, String)>;
    /// Starts one more worker.
    fn add_worker(&mut self, spec: WorkerSpec) -> anyhow::Result<Part>;
    /// Applies a fault to a part.
    fn inject(&mut self, part: Part, fault: Fault) -> anyhow::Result<()>;
    /// Whether the part's process is alive (a paused one counts as alive).
    fn alive(&mut self, part: Part) -> bool;
    /// The coordinator id of a coordinator part, or the worker id of a worker part.
    fn name(&self, part: Part) -> Option<String>;
    /// Parts of one kind that exist (alive or not).
    fn parts(&self) -> Vec<Part>;
    /// Last lines of the part's log, for failure reports.
    fn log_tail(&self, part: Part) -> String;
    /// Prometheus and Alertmanager of the deployment, if it has them (compose).
    fn monitoring(&self) -> Option<Monitoring> {
        None
    }
    /// How the suite's own clients connect to [`Cluster::nats_url`]: as they are on the
    /// process backend; TLS and the operators' user on the secured compose deployment.
    fn connect_options(&self) -> anyhow::Result<async_nats::ConnectOptions> {
        Ok(async_nats::ConnectOptions::new())
    }
}

/// Base URLs (`http://host:port`) of a deployment's monitoring.
#[derive(Clone, Debug)]
pub struct Monitoring {
    pub prometheus: String,
    pub alertmanager: String,
}
