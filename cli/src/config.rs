//! Configuration files: `gigafactory.toml` (base), an optional overlay
//! `gigafactory.<env>.toml` chosen by `GF_ENV`, then `GF_…` environment variables for
//! single keys, then command-line flags.
//!
//! Layers are TOML tables deep-merged in that order: tables merge key by key, scalars
//! and arrays replace. Without `GF_ENV` only the base is read, so the result is exactly
//! the base. Every key is declared once in [`KEYS`] (its environment variable, whether
//! it is secret); a key not declared there is an error naming the file and the key.
//!
//! The loader takes its files and environment as parameters ([`Loader`]) and keeps no
//! global state, so tests need no environment mutation. [`Loaded::show`] prints the
//! effective configuration with the source of every value, secrets masked.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::{Table, Value};

/// The default base file, looked up in the working directory.
pub const BASE_FILE: &str = "gigafactory.toml";

/// Where a value came from; later sources win.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Default,
    Base(PathBuf),
    Overlay(PathBuf),
    Env(String),
    Flag(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => write!(f, "default"),
            Source::Base(p) => write!(f, "base {}", p.display()),
            Source::Overlay(p) => write!(f, "overlay {}", p.display()),
            Source::Env(v) => write!(f, "env {v}"),
            Source::Flag(v) => write!(f, "flag {v}"),
        }
    }
}

/// How an environment variable's text becomes a TOML value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    Str,
    Int,
    /// Comma-separated.
    List,
    /// Comma-separated `k=v` pairs; in files a table with free keys.
    Map,
    Float,
    Bool,
    /// A tree of named tables (`[profiles.<name>]`, `[bridge.sources.<name>]`): its
    /// keys are checked against a [`Shape`], its values by their typed settings. Files
    /// only: no environment variable.
    Tree(&'static Shape),
}

/// The keys allowed inside a [`KeyKind::Tree`] key, so an unknown one is an error
/// naming the file and the full key (`profiles.agent.comand`).
#[derive(Debug, PartialEq, Eq)]
pub enum Shape {
    /// A value (any TOML type; the typed settings check it).
    Leaf,
    /// A table with free keys (a map such as `env` or `labels`).
    Free,
    /// A table with these keys.
    Table(&'static [(&'static str, Shape)]),
    /// A table of named tables, each of this shape.
    Named(&'static Shape),
    /// An array of tables, each of this shape.
    Array(&'static Shape),
}

const WEIGHTS: Shape = Shape::Table(&[
    ("priority", Shape::Leaf),
    ("waiting", Shape::Leaf),
    ("retry", Shape::Leaf),
    ("product", Shape::Leaf),
    ("affinity", Shape::Leaf),
    ("cost", Shape::Leaf),
    ("success", Shape::Leaf),
    ("speed", Shape::Leaf),
    ("failed_here", Shape::Leaf),
]);

const PROFILE: Shape = Shape::Table(&[
    ("description", Shape::Leaf),
    ("command", Shape::Leaf),
    ("queue", Shape::Leaf),
    ("requires", Shape::Free),
    ("tags", Shape::Leaf),
    ("priority", Shape::Leaf),
    ("timeout", Shape::Leaf),
    ("max_attempts", Shape::Leaf),
    ("lease_ttl", Shape::Leaf),
    ("env", Shape::Free),
    ("product", Shape::Leaf),
    ("labels", Shape::Free),
    ("prefer", Shape::Free),
    ("weights", WEIGHTS),
    ("max_cost", Shape::Leaf),
]);

const PROFILES: Shape = Shape::Named(&PROFILE);

const RULE: Shape = Shape::Table(&[
    ("events", Shape::Leaf),
    ("label", Shape::Leaf),
    ("profile", Shape::Leaf),
    ("command", Shape::Leaf),
    ("revision", Shape::Leaf),
    ("labels", Shape::Free),
]);

const ECHO: Shape = Shape::Table(&[
    ("url", Shape::Leaf),
    ("secret_env", Shape::Leaf),
    ("github_api", Shape::Leaf),
    ("token_env", Shape::Leaf),
    ("max_attempts", Shape::Leaf),
    ("backoff", Shape::Leaf),
    ("backoff_max", Shape::Leaf),
]);

const SOURCE: Shape = Shape::Table(&[
    ("format", Shape::Leaf),
    ("secret_env", Shape::Leaf),
    ("tolerance", Shape::Leaf),
    ("item", Shape::Leaf),
    ("labels_at", Shape::Leaf),
    ("rules", Shape::Array(&RULE)),
    ("echo", ECHO),
]);

const BRIDGE: Shape = Shape::Table(&[("sources", Shape::Named(&SOURCE))]);

/// One configuration key.
pub struct Key {
    /// Dotted path, e.g. `coordinator.lease_ttl`.
    pub path: &'static str,
    pub kind: KeyKind,
    /// Environment variables that set it: the canonical `GF_<SECTION>_<KEY>` first,
    /// then older names kept working.
    pub env: &'static [&'static str],
    /// Masked by `gf config show`.
    pub secret: bool,
}

macro_rules! key {
    ($path:literal, Tree($shape:expr)) => {
        Key { path: $path, kind: KeyKind::Tree($shape), env: &[], secret: false }
    };
    ($path:literal, $kind:ident, [$($env:literal),*]) => {
        Key { path: $path, kind: KeyKind::$kind, env: &[$($env),*], secret: false }
    };
    ($path:literal, $kind:ident, [$($env:literal),*], secret) => {
        Key { path: $path, kind: KeyKind::$kind, env: &[$($env),*], secret: true }
    };
}

/// Every key, once. `gigafactory.toml` at the repo root documents each of them.
pub const KEYS: &[Key] = &[
    key!("nats.url", Str, ["GF_NATS_URL"]),
    key!("log.format", Str, ["GF_LOG_FORMAT"]),
    key!("log.filter", Str, ["GF_LOG_FILTER", "GF_LOG"]),
    key!("tracing.otlp_endpoint", Str, ["GF_TRACING_OTLP_ENDPOINT"]),
    key!(
        "tracing.otlp_headers",
        Map,
        ["GF_TRACING_OTLP_HEADERS"],
        secret
    ),
    key!("coordinator.id", Str, ["GF_COORDINATOR_ID"]),
    key!(
        "coordinator.http_addr",
        Str,
        ["GF_COORDINATOR_HTTP_ADDR", "GF_HTTP_ADDR"]
    ),
    key!(
        "coordinator.routing_dims",
        List,
        ["GF_COORDINATOR_ROUTING_DIMS"]
    ),
    key!(
        "coordinator.lease_ttl",
        Str,
        ["GF_COORDINATOR_LEASE_TTL", "GF_LEASE_TTL"]
    ),
    key!(
        "coordinator.claim_timeout",
        Str,
        ["GF_COORDINATOR_CLAIM_TIMEOUT", "GF_CLAIM_TIMEOUT"]
    ),
    key!(
        "coordinator.reaper_period",
        Str,
        ["GF_COORDINATOR_REAPER_PERIOD", "GF_REAPER_PERIOD"]
    ),
    key!(
        "coordinator.watch_replay_timeout",
        Str,
        ["GF_COORDINATOR_WATCH_REPLAY_TIMEOUT"]
    ),
    key!(
        "coordinator.heartbeat_interval",
        Str,
        ["GF_COORDINATOR_HEARTBEAT_INTERVAL"]
    ),
    key!(
        "coordinator.worker_timeout",
        Str,
        ["GF_COORDINATOR_WORKER_TIMEOUT"]
    ),
    key!("coordinator.leader_ttl", Str, ["GF_COORDINATOR_LEADER_TTL"]),
    key!("coordinator.retry_base", Str, ["GF_COORDINATOR_RETRY_BASE"]),
    key!("coordinator.retry_max", Str, ["GF_COORDINATOR_RETRY_MAX"]),
    key!(
        "coordinator.dispatch_slack",
        Int,
        ["GF_COORDINATOR_DISPATCH_SLACK"]
    ),
    key!(
        "coordinator.max_submit_bytes",
        Int,
        ["GF_COORDINATOR_MAX_SUBMIT_BYTES"]
    ),
    key!(
        "coordinator.replicas",
        Int,
        ["GF_COORDINATOR_REPLICAS", "GF_REPLICAS"]
    ),
    key!(
        "coordinator.max_inflight_rpc",
        Int,
        ["GF_COORDINATOR_MAX_INFLIGHT_RPC"]
    ),
    key!(
        "coordinator.preemption_margin",
        Float,
        ["GF_COORDINATOR_PREEMPTION_MARGIN", "GF_PREEMPTION_MARGIN"]
    ),
    key!("coordinator.limits", List, ["GF_COORDINATOR_LIMITS"]),
    key!(
        "coordinator.product_weights",
        List,
        ["GF_COORDINATOR_PRODUCT_WEIGHTS"]
    ),
    key!(
        "coordinator.refuse_over_budget",
        Bool,
        ["GF_COORDINATOR_REFUSE_OVER_BUDGET", "GF_REFUSE_OVER_BUDGET"]
    ),
    key!("history.succeeded", Str, ["GF_HISTORY_SUCCEEDED"]),
    key!("history.cancelled", Str, ["GF_HISTORY_CANCELLED"]),
    key!("history.rejected", Str, ["GF_HISTORY_REJECTED"]),
    key!("history.dead", Str, ["GF_HISTORY_DEAD"]),
    key!("history.archive", Str, ["GF_HISTORY_ARCHIVE"]),
    key!("history.logs", Str, ["GF_HISTORY_LOGS"]),
    key!("history.events", Str, ["GF_HISTORY_EVENTS"]),
    key!("worker.id", Str, ["GF_WORKER_ID"]),
    key!("worker.queues", List, ["GF_WORKER_QUEUES"]),
    key!("worker.capabilities", Map, ["GF_WORKER_CAPABILITIES"]),
    key!("worker.tags", List, ["GF_WORKER_TAGS"]),
    key!("worker.slots", Int, ["GF_WORKER_SLOTS", "GF_SLOTS"]),
    key!(
        "worker.drain_grace",
        Str,
        ["GF_WORKER_DRAIN_GRACE", "GF_DRAIN_GRACE"]
    ),
    key!(
        "worker.scratch_dir",
        Str,
        ["GF_WORKER_SCRATCH_DIR", "GF_SCRATCH_DIR"]
    ),
    key!("worker.rpc_timeout", Str, ["GF_WORKER_RPC_TIMEOUT"]),
    key!("worker.metrics_addr", Str, ["GF_WORKER_METRICS_ADDR"]),
    key!(
        "artifacts.max_job_bytes",
        Int,
        ["GF_ARTIFACTS_MAX_JOB_BYTES"]
    ),
    key!(
        "artifacts.max_checkpoint_bytes",
        Int,
        ["GF_ARTIFACTS_MAX_CHECKPOINT_BYTES"]
    ),
    key!(
        "artifacts.sweep_interval",
        Str,
        ["GF_ARTIFACTS_SWEEP_INTERVAL"]
    ),
    key!("profiles", Tree(&PROFILES)),
    key!("bridge", Tree(&BRIDGE)),
];

pub fn key(path: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.path == path)
}

/// The typed configuration. Durations are written as `"30s"`, `"500ms"`, `"5m"`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub nats: NatsSettings,
    pub log: LogSettings,
    pub tracing: TracingSettings,
    pub coordinator: CoordinatorSettings,
    /// How long finished jobs stay in the live store (docs/history.md).
    pub history: HistorySettings,
    pub worker: WorkerSettings,
    /// Caps on artifacts and checkpoints.
    pub artifacts: ArtifactSettings,
    /// Named job templates, resolved by the coordinators at submission.
    pub profiles: BTreeMap<String, ProfileSettings>,
    /// The tracker bridge.
    pub bridge: gf_bridge::BridgeSettings,
}

/// `[profiles.<name>]` as written: like a job spec, with durations as text.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ProfileSettings {
    pub description: Option<String>,
    pub command: Vec<String>,
    pub queue: Option<String>,
    pub requires: BTreeMap<String, String>,
    pub tags: Vec<String>,
    pub priority: Option<u8>,
    /// e.g. `"2h"`.
    pub timeout: Option<String>,
    pub max_attempts: Option<u32>,
    pub lease_ttl: Option<String>,
    pub env: BTreeMap<String, String>,
    pub product: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub prefer: BTreeMap<String, String>,
    pub weights: Option<gf_schemas::ScoreWeights>,
    pub max_cost: Option<f64>,
}

impl ProfileSettings {
    /// The profile as the coordinator applies it; an error names the field.
    pub fn profile(&self) -> Result<gf_schemas::Profile, (String, String)> {
        let secs = |k: &str, d: &Option<String>| -> Result<Option<u64>, (String, String)> {
            d.as_deref()
                .map(|t| {
                    humantime::parse_duration(t)
                        .map(|d| d.as_secs().max(1))
                        .map_err(|e| (k.to_string(), format!("`{t}` is not a duration ({e})")))
                })
                .transpose()
        };
        let p = gf_schemas::Profile {
            description: self.description.clone(),
            command: self.command.clone(),
            queue: self.queue.clone(),
            requires: self.requires.clone(),
            tags: self.tags.iter().cloned().collect(),
            priority: self.priority,
            timeout_secs: secs("timeout", &self.timeout)?,
            max_attempts: self.max_attempts,
            lease_ttl_secs: secs("lease_ttl", &self.lease_ttl)?,
            env: self.env.clone(),
            product: self.product.clone(),
            labels: self.labels.clone(),
            prefer: self.prefer.clone(),
            weights: self.weights.clone(),
            max_cost: self.max_cost,
        };
        p.validate().map_err(|e| {
            let field = match e.field.as_str() {
                "timeout_secs" => "timeout".to_string(),
                "lease_ttl_secs" => "lease_ttl".to_string(),
                f => f.to_string(),
            };
            (field, e.problem)
        })?;
        Ok(p)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NatsSettings {
    /// May carry `user:password@`, masked when shown.
    pub url: String,
}

impl Default for NatsSettings {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub filter: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            filter: "info,async_nats=warn".into(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TracingSettings {
    /// OTLP/HTTP collector base URL, e.g. `http://localhost:4318`; unset: no export.
    pub otlp_endpoint: Option<String>,
    /// Extra headers on every export (e.g. an API key): secret.
    pub otlp_headers: BTreeMap<String, String>,
}

/// `[artifacts]`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ArtifactSettings {
    pub max_job_bytes: u64,
    pub max_checkpoint_bytes: u64,
    #[serde(with = "dur")]
    pub sweep_interval: Duration,
}

impl Default for ArtifactSettings {
    fn default() -> Self {
        let d = gf_coordinator::artifacts::ArtifactsConfig::default();
        Self {
            max_job_bytes: d.max_job_bytes,
            max_checkpoint_bytes: d.max_checkpoint_bytes,
            sweep_interval: d.sweep_interval,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CoordinatorSettings {
    pub id: Option<String>,
    pub http_addr: Option<SocketAddr>,
    pub routing_dims: Vec<String>,
    #[serde(with = "dur")]
    pub lease_ttl: Duration,
    #[serde(with = "dur")]
    pub claim_timeout: Duration,
    #[serde(with = "dur")]
    pub reaper_period: Duration,
    #[serde(with = "dur")]
    pub heartbeat_interval: Duration,
    #[serde(with = "dur")]
    pub worker_timeout: Duration,
    #[serde(with = "dur")]
    pub leader_ttl: Duration,
    #[serde(with = "dur")]
    pub watch_replay_timeout: Duration,
    #[serde(with = "dur")]
    pub retry_base: Duration,
    #[serde(with = "dur")]
    pub retry_max: Duration,
    pub dispatch_slack: u32,
    pub max_submit_bytes: usize,
    pub replicas: usize,
    pub max_inflight_rpc: usize,
    /// Preemption margin; unset is off.
    pub preemption_margin: Option<f64>,
    /// `LABEL:MAX_RUNNING[:STARTS_PER_MINUTE]` each.
    pub limits: Vec<String>,
    /// `PRODUCT=WEIGHT` each.
    pub product_weights: Vec<String>,
    pub refuse_over_budget: bool,
}

impl Default for CoordinatorSettings {
    fn default() -> Self {
        let d = gf_coordinator::CoordinatorConfig::default();
        Self {
            id: None,
            http_addr: d.http_addr,
            routing_dims: d.routing_dims,
            lease_ttl: d.lease_ttl,
            claim_timeout: d.claim_timeout,
            reaper_period: d.reaper_period,
            heartbeat_interval: d.heartbeat_interval,
            worker_timeout: d.worker_timeout,
            leader_ttl: d.leader_ttl,
            watch_replay_timeout: d.watch_replay_timeout,
            retry_base: d.retry_base,
            retry_max: d.retry_max,
            dispatch_slack: d.dispatch_slack,
            max_submit_bytes: d.max_submit_bytes,
            replicas: d.replicas,
            max_inflight_rpc: d.max_inflight_rpc,
            preemption_margin: d.preemption_margin,
            limits: Vec::new(),
            product_weights: Vec::new(),
            refuse_over_budget: d.refuse_over_budget,
        }
    }
}

/// `[history]`: grace periods per outcome, each a duration (`"24h"`, `"7d"`) or
/// `"never"`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HistorySettings {
    pub succeeded: String,
    pub cancelled: String,
    pub rejected: String,
    pub dead: String,
    /// How long the archive keeps a finished job (a duration, not `never`).
    pub archive: String,
    /// How long job logs are kept (a duration); unset: as long as the archive keeps a
    /// job (`archive`).
    pub logs: Option<String>,
    /// How long events are kept (a duration).
    pub events: String,
}

impl Default for HistorySettings {
    fn default() -> Self {
        let d = gf_coordinator::history::HistoryConfig::default();
        let show = |g: Option<Duration>| match g {
            None => "never".to_string(),
            Some(d) if d.as_secs() % 86_400 == 0 => format!("{}d", d.as_secs() / 86_400),
            Some(d) if d.as_secs() % 3600 == 0 => format!("{}h", d.as_secs() / 3600),
            Some(d) => format!("{}s", d.as_secs()),
        };
        Self {
            succeeded: show(d.succeeded),
            cancelled: show(d.cancelled),
            rejected: show(d.rejected),
            dead: show(d.dead),
            archive: show(Some(d.archive)),
            logs: d.logs.map(|l| show(Some(l))),
            events: show(Some(d.events)),
        }
    }
}

impl HistorySettings {
    /// Each grace period, parsed; an error names the key.
    fn parsed(&self) -> Result<gf_coordinator::history::HistoryConfig, (&'static str, String)> {
        let p = |key: &'static str, v: &str| {
            gf_coordinator::history::parse_grace(v).map_err(|e| (key, e))
        };
        Ok(gf_coordinator::history::HistoryConfig {
            succeeded: p("history.succeeded", &self.succeeded)?,
            cancelled: p("history.cancelled", &self.cancelled)?,
            rejected: p("history.rejected", &self.rejected)?,
            dead: p("history.dead", &self.dead)?,
            archive: p("history.archive", &self.archive)?.ok_or((
                "history.archive",
                "the archive cannot keep jobs for ever: give a duration such as 30d".to_string(),
            ))?,
            logs: match &self.logs {
                None => None,
                Some(l) => Some(p("history.logs", l)?.ok_or((
                    "history.logs",
                    "logs cannot be kept for ever: give a duration such as 30d, or leave it unset to keep them as long as the archive keeps the job".to_string(),
                ))?),
            },
            events: p("history.events", &self.events)?.ok_or((
                "history.events",
                "events cannot be kept for ever: give a duration such as 7d".to_string(),
            ))?,
        })
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerSettings {
    pub id: Option<String>,
    pub queues: Vec<String>,
    pub capabilities: BTreeMap<String, String>,
    pub tags: Vec<String>,
    pub slots: u32,
    #[serde(with = "dur")]
    pub drain_grace: Duration,
    pub scratch_dir: Option<PathBuf>,
    #[serde(with = "dur")]
    pub rpc_timeout: Duration,
    pub metrics_addr: Option<SocketAddr>,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        let d = gf_worker::WorkerConfig::default();
        Self {
            id: None,
            queues: d.queues,
            capabilities: BTreeMap::new(),
            tags: Vec::new(),
            slots: d.slots,
            drain_grace: d.drain_grace,
            scratch_dir: None,
            rpc_timeout: d.rpc_timeout,
            metrics_addr: None,
        }
    }
}

mod dur {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map_err(|e| serde::de::Error::custom(format!("`{s}` is not a duration ({e})")))
    }
}

/// A configuration error, naming the file (or variable) and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {error}")]
    Read { file: PathBuf, error: String },
    #[error("{file}: {error}")]
    Parse { file: PathBuf, error: String },
    #[error("{file}: unknown key `{key}`")]
    UnknownKey { file: PathBuf, key: String },
    #[error("GF_ENV={env}: overlay file {file} not found")]
    OverlayMissing { env: String, file: PathBuf },
    #[error("{var}: {error} (key `{key}`)")]
    Env {
        var: String,
        key: String,
        error: String,
    },
    #[error("{source_}: key `{key}`: {error}")]
    Invalid {
        source_: String,
        key: String,
        error: String,
    },
}

/// What to load: the base file (optional when not named explicitly), the environment
/// (for `GF_ENV` and `GF_…` overrides), and flags as a TOML layer.
#[derive(Clone, Debug, Default)]
pub struct Loader {
    pub base: PathBuf,
    /// The base was named explicitly (`--config`): it must exist.
    pub base_required: bool,
    pub env: BTreeMap<String, String>,
    /// Flags given on the command line, as `(key path, value, flag name)`.
    pub flags: Vec<(String, Value, String)>,
}

/// The effective configuration and where each value came from.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub settings: Settings,
    /// The environment it was loaded with (the bridge's secrets are read from it).
    pub env: BTreeMap<String, String>,
    pub sources: BTreeMap<String, Source>,
    /// The merged table (defaults included): what `show` prints.
    pub table: Table,
    pub base: Option<PathBuf>,
    pub overlay: Option<PathBuf>,
}

impl Loader {
    /// The base file in `dir` (or `config` if given) with this environment.
    pub fn new(config: Option<PathBuf>, env: BTreeMap<String, String>) -> Self {
        Self {
            base_required: config.is_some(),
            base: config.unwrap_or_else(|| PathBuf::from(BASE_FILE)),
            env,
            flags: Vec::new(),
        }
    }

    /// The overlay file for `GF_ENV`, beside the base: `gigafactory.<env>.toml`.
    pub fn overlay_path(&self) -> Option<(String, PathBuf)> {
        let env = self.env.get("GF_ENV").filter(|e| !e.is_empty())?;
        let stem = self
            .base
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "gigafactory".into());
        Some((
            env.clone(),
            self.base.with_file_name(format!("{stem}.{env}.toml")),
        ))
    }

    pub fn load(&self) -> Result<Loaded, ConfigError> {
        let mut table =
            Table::try_from(Settings::default()).expect("default settings serialize to TOML");
        let mut sources = BTreeMap::new();
        flatten_sources(&table, "", &Source::Default, &mut sources);

        let mut base = None;
        match std::fs::read_to_string(&self.base) {
            Ok(text) => {
                let t = parse_file(&self.base, &text)?;
                merge(&mut table, t.clone());
                flatten_sources(&t, "", &Source::Base(self.base.clone()), &mut sources);
                base = Some(self.base.clone());
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !self.base_required => {}
            Err(e) => {
                return Err(ConfigError::Read {
                    file: self.base.clone(),
                    error: e.to_string(),
                })
            }
        }

        let mut overlay = None;
        if let Some((env, path)) = self.overlay_path() {
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(ConfigError::OverlayMissing { env, file: path })
                }
                Err(e) => {
                    return Err(ConfigError::Read {
                        file: path,
                        error: e.to_string(),
                    })
                }
            };
            let t = parse_file(&path, &text)?;
            merge(&mut table, t.clone());
            flatten_sources(&t, "", &Source::Overlay(path.clone()), &mut sources);
            overlay = Some(path);
        }

        for k in KEYS {
            // The canonical name wins over older aliases.
            let Some((var, text)) = k.env.iter().find_map(|v| self.env.get(*v).map(|t| (*v, t)))
            else {
                continue;
            };
            let value = env_value(k, text).map_err(|error| ConfigError::Env {
                var: var.into(),
                key: k.path.into(),
                error,
            })?;
            set_path(&mut table, k.path, value);
            sources.retain(|p, _| !(p == k.path || p.starts_with(&format!("{}.", k.path))));
            sources.insert(k.path.into(), Source::Env(var.into()));
        }

        for (path, value, flag) in &self.flags {
            set_path(&mut table, path, value.clone());
            sources.retain(|p, _| !(p == path || p.starts_with(&format!("{path}."))));
            sources.insert(path.clone(), Source::Flag(flag.clone()));
        }

        let settings: Settings =
            Settings::deserialize(table.clone()).map_err(|e| ConfigError::Invalid {
                source_: "effective configuration (env or flags)".into(),
                key: String::new(),
                error: e.to_string(),
            })?;
        validate(&settings, &sources, &self.env)?;
        Ok(Loaded {
            settings,
            env: self.env.clone(),
            sources,
            table,
            base,
            overlay,
        })
    }
}

/// Parses a file: TOML syntax, then every key declared, then types (the error shows
/// the line).
fn parse_file(path: &Path, text: &str) -> Result<Table, ConfigError> {
    let table: Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Parse {
            file: path.into(),
            error: e.to_string(),
        })?;
    check_keys(&table, "", path)?;
    toml::from_str::<Settings>(text).map_err(|e| ConfigError::Parse {
        file: path.into(),
        error: e.to_string(),
    })?;
    Ok(table)
}

fn check_keys(table: &Table, prefix: &str, file: &Path) -> Result<(), ConfigError> {
    for (k, v) in table {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        if let Some(key) = key(&path) {
            if let KeyKind::Tree(shape) = key.kind {
                check_shape(v, shape, &path, file)?;
                continue;
            }
            if key.kind == KeyKind::Map && !v.is_table() {
                return Err(ConfigError::Parse {
                    file: file.into(),
                    error: format!("key `{path}` must be a table"),
                });
            }
            continue;
        }
        let is_section = KEYS.iter().any(|k| k.path.starts_with(&format!("{path}.")));
        match v {
            Value::Table(t) if is_section => check_keys(t, &path, file)?,
            _ => {
                return Err(ConfigError::UnknownKey {
                    file: file.into(),
                    key: path,
                })
            }
        }
    }
    Ok(())
}

/// Checks the keys of a tree value against its shape; the error names the full key.
fn check_shape(v: &Value, shape: &Shape, path: &str, file: &Path) -> Result<(), ConfigError> {
    let must_be = |what: &str| ConfigError::Parse {
        file: file.into(),
        error: format!("key `{path}` must be {what}"),
    };
    match shape {
        Shape::Leaf => Ok(()),
        Shape::Free => v.is_table().then_some(()).ok_or_else(|| must_be("a table")),
        Shape::Table(fields) => {
            let t = v.as_table().ok_or_else(|| must_be("a table"))?;
            for (k, child) in t {
                let at = format!("{path}.{k}");
                match fields.iter().find(|(name, _)| name == k) {
                    Some((_, s)) => check_shape(child, s, &at, file)?,
                    None => {
                        return Err(ConfigError::UnknownKey {
                            file: file.into(),
                            key: at,
                        })
                    }
                }
            }
            Ok(())
        }
        Shape::Named(each) => {
            let t = v
                .as_table()
                .ok_or_else(|| must_be("a table of named tables"))?;
            for (k, child) in t {
                check_shape(child, each, &format!("{path}.{k}"), file)?;
            }
            Ok(())
        }
        Shape::Array(each) => {
            let a = v
                .as_array()
                .ok_or_else(|| must_be("an array of tables (`[[...]]`)"))?;
            for (i, child) in a.iter().enumerate() {
                check_shape(child, each, &format!("{path}.{i}"), file)?;
            }
            Ok(())
        }
    }
}

fn env_value(k: &Key, text: &str) -> Result<Value, String> {
    let items = || {
        text.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
    };
    Ok(match k.kind {
        KeyKind::Str => Value::String(text.into()),
        KeyKind::Int => Value::Integer(
            text.trim()
                .parse()
                .map_err(|_| format!("`{text}` is not an integer"))?,
        ),
        KeyKind::List => Value::Array(items().map(Value::String).collect()),
        KeyKind::Float => Value::Float(
            text.trim()
                .parse()
                .map_err(|_| format!("`{text}` is not a number"))?,
        ),
        KeyKind::Bool => Value::Boolean(match text.trim() {
            "true" | "1" | "yes" => true,
            "false" | "0" | "no" | "" => false,
            _ => return Err(format!("`{text}` is not true or false")),
        }),
        KeyKind::Tree(_) => return Err("set in a configuration file, not the environment".into()),
        KeyKind::Map => {
            let mut t = Table::new();
            for item in items() {
                let (a, b) = item
                    .split_once('=')
                    .ok_or_else(|| format!("`{item}` is not KEY=VALUE"))?;
                t.insert(a.trim().into(), Value::String(b.trim().into()));
            }
            Value::Table(t)
        }
    })
}

fn validate(
    s: &Settings,
    sources: &BTreeMap<String, Source>,
    env: &BTreeMap<String, String>,
) -> Result<(), ConfigError> {
    let bad = |key: &str, error: String| ConfigError::Invalid {
        source_: sources
            .get(key)
            .map(|s| s.to_string())
            .unwrap_or_else(|| "default".into()),
        key: key.into(),
        error,
    };
    if s.worker.slots == 0 {
        return Err(bad("worker.slots", "must be at least 1".into()));
    }
    if s.coordinator.replicas == 0 {
        return Err(bad("coordinator.replicas", "must be at least 1".into()));
    }
    if let Err((key, e)) = s.history.parsed() {
        return Err(bad(key, e));
    }
    if s.coordinator.watch_replay_timeout.is_zero() {
        return Err(bad(
            "coordinator.watch_replay_timeout",
            "must be more than 0".into(),
        ));
    }
    for l in &s.coordinator.limits {
        crate::parse_limit(l).map_err(|e| bad("coordinator.limits", e))?;
    }
    for w in &s.coordinator.product_weights {
        crate::parse_weight(w).map_err(|e| bad("coordinator.product_weights", e))?;
    }
    if s.coordinator
        .preemption_margin
        .is_some_and(|m| !m.is_finite() || m < 0.0)
    {
        return Err(bad(
            "coordinator.preemption_margin",
            "must be a non-negative number".into(),
        ));
    }
    for (key, list) in [
        ("worker.queues", &s.worker.queues),
        ("worker.tags", &s.worker.tags),
        ("coordinator.routing_dims", &s.coordinator.routing_dims),
    ] {
        if let Some(t) = list.iter().find(|t| !gf_schemas::names::is_token(t)) {
            return Err(bad(key, format!("`{t}`: use A-Z a-z 0-9 _ -")));
        }
    }
    if s.coordinator.routing_dims.first().map(String::as_str) != Some("queue") {
        return Err(bad(
            "coordinator.routing_dims",
            "the first dimension must be `queue`".into(),
        ));
    }
    if let Some((k, v)) = s
        .worker
        .capabilities
        .iter()
        .find(|(k, v)| !gf_schemas::names::is_token(k) || !gf_schemas::names::is_token(v))
    {
        return Err(bad(
            "worker.capabilities",
            format!("`{k}={v}`: use A-Z a-z 0-9 _ -"),
        ));
    }
    for (name, p) in &s.profiles {
        gf_schemas::profile::check_name(name).map_err(|e| bad("profiles", e))?;
        p.profile().map_err(|(field, problem)| {
            bad("profiles", format!("`profiles.{name}.{field}`: {problem}"))
        })?;
    }
    if s.bridge.sources.contains_key("deliveries") {
        return Err(bad(
            "bridge",
            "`bridge.sources.deliveries`: that name is taken by /api/bridge/deliveries".into(),
        ));
    }
    s.bridge
        .resolve(env, false)
        .map_err(|e| bad("bridge", e.to_string()))?;
    if !matches!(
        s.nats.url.split("://").next(),
        Some("nats" | "tls" | "ws" | "wss")
    ) {
        return Err(bad(
            "nats.url",
            format!("`{}` is not a nats:// URL", mask_url(&s.nats.url)),
        ));
    }
    Ok(())
}

/// Deep merge: tables merge key by key; anything else replaces.
pub fn merge(into: &mut Table, from: Table) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(Value::Table(a)), Value::Table(b)) => merge(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

fn set_path(table: &mut Table, path: &str, value: Value) {
    let mut t = table;
    let mut parts: Vec<&str> = path.split('.').collect();
    let last = parts.pop().expect("non-empty path");
    for p in parts {
        t = t
            .entry(p)
            .or_insert_with(|| Value::Table(Table::new()))
            .as_table_mut()
            .expect("sections are tables");
    }
    t.insert(last.into(), value);
}

/// Records `source` for every leaf in `table` (a map key counts as one leaf).
fn flatten_sources(
    table: &Table,
    prefix: &str,
    source: &Source,
    out: &mut BTreeMap<String, Source>,
) {
    for (k, v) in table {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            Value::Table(t) if key(&path).is_none() => flatten_sources(t, &path, source, out),
            _ => {
                out.insert(path, source.clone());
            }
        }
    }
}

/// `nats://user:secret@host` → `nats://user:****@host`.
pub fn mask_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.into();
    };
    let Some((auth, host)) = rest.rsplit_once('@') else {
        return url.into();
    };
    let masked = match auth.split_once(':') {
        Some((user, _)) => format!("{user}:****"),
        None => "****".into(),
    };
    format!("{scheme}://{masked}@{host}")
}

impl Loaded {
    /// One line per key: `key = value  # source`, secrets masked, unset keys commented.
    pub fn show(&self) -> String {
        let mut out = String::new();
        for k in KEYS {
            let source = self.sources.get(k.path).cloned().unwrap_or(Source::Default);
            let value = lookup(&self.table, k.path);
            if let (KeyKind::Tree(_), Some(Value::Table(t))) = (k.kind, value) {
                // One line per named part: `profiles.agent = { … }`.
                if t.is_empty() {
                    out.push_str(&format!(
                        "{:<56} # {source}\n",
                        format!("# {} (none)", k.path)
                    ));
                }
                for (name, v) in t {
                    let text = format!("{}.{name} = {}", k.path, inline(v));
                    out.push_str(&format!("{text:<56} # {source}\n"));
                }
                continue;
            }
            let text = match value {
                None => format!("# {} (unset)", k.path),
                Some(v) => {
                    let shown = match (k.secret, v) {
                        (true, Value::Table(t)) => {
                            let masked: Table = t
                                .keys()
                                .map(|k| (k.clone(), Value::String("****".into())))
                                .collect();
                            inline(&Value::Table(masked))
                        }
                        (true, _) => "\"****\"".into(),
                        (false, Value::String(s)) if k.path == "nats.url" => {
                            inline(&Value::String(mask_url(s)))
                        }
                        (false, v) => inline(v),
                    };
                    format!("{} = {shown}", k.path)
                }
            };
            out.push_str(&format!("{text:<56} # {source}\n"));
        }
        out
    }

    /// The coordinator's configuration, with the bridge's secrets read from the
    /// environment (an error names the key and the variable).
    pub fn coordinator(&self) -> anyhow::Result<gf_coordinator::CoordinatorConfig> {
        let mut cfg = self.coordinator_policy();
        cfg.bridge = self.settings.bridge.resolve(&self.env, true)?;
        Ok(cfg)
    }

    /// [`Loaded::coordinator`] without the bridge (no secrets needed).
    pub fn coordinator_policy(&self) -> gf_coordinator::CoordinatorConfig {
        let c = &self.settings.coordinator;
        let mut cfg = gf_coordinator::CoordinatorConfig {
            nats_url: self.settings.nats.url.clone(),
            http_addr: c.http_addr,
            routing_dims: c.routing_dims.clone(),
            lease_ttl: c.lease_ttl,
            claim_timeout: c.claim_timeout,
            reaper_period: c.reaper_period,
            heartbeat_interval: c.heartbeat_interval,
            worker_timeout: c.worker_timeout,
            leader_ttl: c.leader_ttl,
            watch_replay_timeout: c.watch_replay_timeout,
            retry_base: c.retry_base,
            retry_max: c.retry_max,
            dispatch_slack: c.dispatch_slack,
            max_submit_bytes: c.max_submit_bytes,
            replicas: c.replicas,
            max_inflight_rpc: c.max_inflight_rpc,
            ..Default::default()
        };
        if let Some(id) = &c.id {
            cfg.id = id.clone();
        }
        // Validated at load, so these parse.
        cfg.preemption_margin = c.preemption_margin;
        cfg.limits = c
            .limits
            .iter()
            .filter_map(|l| crate::parse_limit(l).ok())
            .collect();
        cfg.scoring.product_weight = c
            .product_weights
            .iter()
            .filter_map(|w| crate::parse_weight(w).ok())
            .collect();
        cfg.refuse_over_budget = c.refuse_over_budget;
        // Validated at load, so this parses.
        if let Ok(h) = self.settings.history.parsed() {
            cfg.history = h;
        }
        let a = &self.settings.artifacts;
        cfg.artifacts = gf_coordinator::artifacts::ArtifactsConfig {
            max_job_bytes: a.max_job_bytes,
            max_checkpoint_bytes: a.max_checkpoint_bytes,
            sweep_interval: a.sweep_interval.max(Duration::from_secs(1)),
        };
        // Validated at load.
        cfg.profiles = self
            .settings
            .profiles
            .iter()
            .filter_map(|(n, p)| Some((n.clone(), p.profile().ok()?)))
            .collect();
        cfg
    }

    pub fn worker(&self) -> anyhow::Result<gf_worker::WorkerConfig> {
        let w = &self.settings.worker;
        let id = match &w.id {
            Some(s) => Some(gf_schemas::WorkerId::new(s.clone())?),
            None => None,
        };
        Ok(gf_worker::WorkerConfig {
            nats_url: self.settings.nats.url.clone(),
            id,
            queues: w.queues.clone(),
            capabilities: w.capabilities.clone(),
            tags: w.tags.iter().cloned().collect(),
            slots: w.slots,
            drain_grace: w.drain_grace,
            scratch_dir: w.scratch_dir.clone(),
            rpc_timeout: w.rpc_timeout,
            metrics_addr: w.metrics_addr,
            handlers: gf_worker::Handlers::default(),
            // Flags and environment only (`gf worker --key-dir --enroll`).
            key_dir: None,
            enroll: None,
            rotate_key: false,
        })
    }
}

fn lookup<'a>(table: &'a Table, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut v = table.get(parts.next()?)?;
    for p in parts {
        v = v.as_table()?.get(p)?;
    }
    Some(v)
}

/// A value on one line.
fn inline(v: &Value) -> String {
    match v {
        Value::Table(t) if t.is_empty() => "{}".into(),
        Value::Table(t) => {
            let items: Vec<String> = t
                .iter()
                .map(|(k, v)| format!("{k} = {}", inline(v)))
                .collect();
            format!("{{ {} }}", items.join(", "))
        }
        other => other.to_string(),
    }
}

/// The process environment, for `main` (tests pass their own map).
pub fn process_env() -> BTreeMap<String, String> {
    std::env::vars().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    const BASE: &str = r#"
[nats]
url = "nats://base:4222"

[coordinator]
lease_ttl = "20s"
routing_dims = ["queue", "os", "arch"]

[worker]
slots = 2
queues = ["default", "batch"]
[worker.capabilities]
engine = "docker"
"#;

    /// Without GF_ENV the result is the base file over the defaults, each value
    /// attributed to where it came from.
    #[test]
    fn base_only() {
        let dir = tempfile::tempdir().unwrap();
        let base = write(dir.path(), "gigafactory.toml", BASE);
        // A staging overlay exists but GF_ENV is unset: it must not be read.
        write(
            dir.path(),
            "gigafactory.staging.toml",
            "[worker]\nslots = 9\n",
        );
        let l = Loader::new(Some(base.clone()), env(&[])).load().unwrap();
        assert_eq!(l.settings.nats.url, "nats://base:4222");
        assert_eq!(l.settings.coordinator.lease_ttl, Duration::from_secs(20));
        assert_eq!(l.settings.worker.slots, 2);
        assert_eq!(l.settings.worker.capabilities["engine"], "docker");
        assert_eq!(
            l.settings.coordinator.claim_timeout,
            Duration::from_secs(15)
        );
        assert_eq!(l.sources["worker.slots"], Source::Base(base));
        assert_eq!(l.sources["coordinator.claim_timeout"], Source::Default);
        assert!(l.overlay.is_none());
        // The base equals itself parsed alone: nothing else crept in.
        let alone: Settings = toml::from_str(BASE).unwrap();
        assert_eq!(l.settings, alone);
    }

    /// The overlay deep-merges: tables merge key by key, scalars and arrays replace.
    #[test]
    fn base_and_overlay() {
        let dir = tempfile::tempdir().unwrap();
        let base = write(dir.path(), "gigafactory.toml", BASE);
        let overlay = write(
            dir.path(),
            "gigafactory.staging.toml",
            "[worker]\nqueues = [\"staging\"]\n[worker.capabilities]\ngpu_kind = \"a100\"\n",
        );
        let l = Loader::new(Some(base.clone()), env(&[("GF_ENV", "staging")]))
            .load()
            .unwrap();
        assert_eq!(l.settings.worker.queues, vec!["staging"], "arrays replace");
        assert_eq!(l.settings.worker.slots, 2, "untouched keys stay");
        assert_eq!(l.settings.worker.capabilities.len(), 2, "tables merge");
        assert_eq!(l.settings.worker.capabilities["engine"], "docker");
        assert_eq!(l.sources["worker.queues"], Source::Overlay(overlay.clone()));
        // A table-valued key is attributed to the last layer that touched it.
        assert_eq!(
            l.sources["worker.capabilities"],
            Source::Overlay(overlay.clone())
        );
        assert_eq!(l.sources["worker.slots"], Source::Base(base));
        assert_eq!(l.overlay, Some(overlay));
    }

    /// GF_ENV naming an overlay that does not exist is an error that names the file.
    #[test]
    fn overlay_missing() {
        let dir = tempfile::tempdir().unwrap();
        let base = write(dir.path(), "gigafactory.toml", BASE);
        let e = Loader::new(Some(base), env(&[("GF_ENV", "staging")]))
            .load()
            .unwrap_err();
        assert!(matches!(e, ConfigError::OverlayMissing { .. }));
        let text = e.to_string();
        assert!(
            text.contains("GF_ENV=staging") && text.contains("gigafactory.staging.toml"),
            "{text}"
        );
    }

    /// An unknown key, or a value of the wrong type, names the file and the key.
    #[test]
    fn bad_key() {
        let dir = tempfile::tempdir().unwrap();
        let base = write(dir.path(), "gigafactory.toml", BASE);
        write(
            dir.path(),
            "gigafactory.prod.toml",
            "[coordinator]\nlease_tl = \"5s\"\n",
        );
        let e = Loader::new(Some(base.clone()), env(&[("GF_ENV", "prod")]))
            .load()
            .unwrap_err()
            .to_string();
        assert!(e.contains("gigafactory.prod.toml"), "{e}");
        assert!(e.contains("`coordinator.lease_tl`"), "{e}");

        let bad = write(dir.path(), "typed.toml", "[worker]\nslots = \"many\"\n");
        let e = Loader::new(Some(bad), env(&[]))
            .load()
            .unwrap_err()
            .to_string();
        assert!(e.contains("typed.toml") && e.contains("slots"), "{e}");

        let bad = write(
            dir.path(),
            "dur.toml",
            "[coordinator]\nlease_ttl = \"soon\"\n",
        );
        let e = Loader::new(Some(bad), env(&[]))
            .load()
            .unwrap_err()
            .to_string();
        assert!(e.contains("dur.toml") && e.contains("lease_ttl"), "{e}");

        let bad = write(dir.path(), "section.toml", "[wrker]\nslots = 1\n");
        let e = Loader::new(Some(bad), env(&[]))
            .load()
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown key `wrker`"), "{e}");
    }

    /// `GF_…` variables override single keys over base and overlay; old names still
    /// work; bad values name the variable and the key; flags win over everything.
    #[test]
    fn env_override() {
        let dir = tempfile::tempdir().unwrap();
        let base = write(dir.path(), "gigafactory.toml", BASE);
        let mut loader = Loader::new(
            Some(base),
            env(&[
                ("GF_WORKER_SLOTS", "7"),
                ("GF_LEASE_TTL", "45s"),
                ("GF_WORKER_CAPABILITIES", "os=linux"),
                ("GF_UNRELATED", "ignored"),
            ]),
        );
        let l = loader.load().unwrap();
        assert_eq!(l.settings.worker.slots, 7);
        assert_eq!(
            l.sources["worker.slots"],
            Source::Env("GF_WORKER_SLOTS".into())
        );
        assert_eq!(l.settings.coordinator.lease_ttl, Duration::from_secs(45));
        assert_eq!(
            l.settings.worker.capabilities,
            BTreeMap::from([("os".to_string(), "linux".to_string())]),
            "an env map replaces the whole key"
        );
        assert_eq!(l.settings.nats.url, "nats://base:4222");

        loader
            .flags
            .push(("worker.slots".into(), Value::Integer(3), "--slots".into()));
        let l = loader.load().unwrap();
        assert_eq!(l.settings.worker.slots, 3);
        assert_eq!(l.sources["worker.slots"], Source::Flag("--slots".into()));

        let e = Loader::new(None, env(&[("GF_WORKER_SLOTS", "lots")]))
            .load()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("GF_WORKER_SLOTS") && e.contains("worker.slots"),
            "{e}"
        );
        let e = Loader::new(None, env(&[("GF_WORKER_SLOTS", "0")]))
            .load()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("env GF_WORKER_SLOTS") && e.contains("at least 1"),
            "{e}"
        );
    }

    /// No file at the default path: the defaults, exactly.
    #[test]
    fn no_file_is_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let mut loader = Loader::new(None, env(&[]));
        loader.base = dir.path().join(BASE_FILE);
        let l = loader.load().unwrap();
        assert_eq!(l.settings, Settings::default());
        assert!(l.base.is_none());
        // Named explicitly, a missing file is an error.
        let e = Loader::new(Some(dir.path().join("nope.toml")), env(&[]))
            .load()
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope.toml"), "{e}");
    }

    /// `show` lists every key with its source and masks secrets.
    #[test]
    fn show_masks_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let base = write(
            dir.path(),
            "gigafactory.toml",
            "[nats]\nurl = \"nats://gf:hunter2@nats:4222\"\n[tracing.otlp_headers]\nx-api-key = \"s3cret\"\n",
        );
        let l = Loader::new(Some(base), env(&[("GF_WORKER_SLOTS", "5")]))
            .load()
            .unwrap();
        let shown = l.show();
        assert!(
            !shown.contains("hunter2") && !shown.contains("s3cret"),
            "{shown}"
        );
        assert!(shown.contains("nats://gf:****@nats:4222"), "{shown}");
        assert!(shown.contains("x-api-key = \"****\""), "{shown}");
        assert!(
            shown
                .lines()
                .any(|l| l.starts_with("worker.slots = 5") && l.ends_with("# env GF_WORKER_SLOTS")),
            "{shown}"
        );
        assert!(shown.contains("# coordinator.id (unset)"), "{shown}");
        assert_eq!(shown.lines().count(), KEYS.len());
    }

    /// Grace periods per outcome from the file and the environment, `never` keeps a
    /// finished job for ever, and a bad value names its key.
    #[test]
    fn history_keys() {
        let dir = tempfile::tempdir().unwrap();
        let base = write(
            dir.path(),
            "gigafactory.toml",
            "[history]\nsucceeded = \"2h\"\ndead = \"never\"\n",
        );
        let c = Loader::new(Some(base.clone()), env(&[("GF_HISTORY_CANCELLED", "90s")]))
            .load()
            .unwrap()
            .coordinator_policy();
        assert_eq!(c.history.succeeded, Some(Duration::from_secs(7200)));
        assert_eq!(c.history.dead, None);
        assert_eq!(c.history.cancelled, Some(Duration::from_secs(90)));
        assert_eq!(c.history.rejected, Some(Duration::from_secs(86_400)));
        let err = Loader::new(Some(base), env(&[("GF_HISTORY_REJECTED", "soon")]))
            .load()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("history.rejected") && err.contains("soon"),
            "{err}"
        );
    }

    /// Logs follow the archive's retention unless set; events have their own; neither
    /// may be `never`.
    #[test]
    fn log_and_event_retention_keys() {
        let dir = tempfile::tempdir().unwrap();
        let base = write(
            dir.path(),
            "gigafactory.toml",
            "[history]\narchive = \"10d\"\n",
        );
        let c = Loader::new(Some(base.clone()), env(&[]))
            .load()
            .unwrap()
            .coordinator_policy();
        assert_eq!(c.history.logs, None);
        assert_eq!(c.history.logs(), Duration::from_secs(10 * 86_400));
        assert_eq!(c.history.events, Duration::from_secs(7 * 86_400));
        let c = Loader::new(
            Some(base.clone()),
            env(&[("GF_HISTORY_LOGS", "2d"), ("GF_HISTORY_EVENTS", "36h")]),
        )
        .load()
        .unwrap()
        .coordinator_policy();
        assert_eq!(c.history.logs(), Duration::from_secs(2 * 86_400));
        assert_eq!(c.history.events, Duration::from_secs(36 * 3600));
        for (var, key) in [
            ("GF_HISTORY_LOGS", "history.logs"),
            ("GF_HISTORY_EVENTS", "history.events"),
        ] {
            let err = Loader::new(Some(base.clone()), env(&[(var, "never")]))
                .load()
                .unwrap_err()
                .to_string();
            assert!(err.contains(key) && err.contains("for ever"), "{err}");
        }
    }

    /// The example gigafactory.toml at the repo root parses and documents every key.
    /// Scheduling policy from the file, overridden from the environment; a malformed
    /// rule names its key.
    #[test]
    fn scheduling_policy_keys() {
        let dir = tempfile::tempdir().unwrap();
        let base = write(
            dir.path(),
            "gigafactory.toml",
            "[coordinator]\npreemption_margin = 30\nlimits = [\"repo:3\", \"provider::60\"]\nproduct_weights = [\"acme=5\"]\nrefuse_over_budget = true\n",
        );
        let c = Loader::new(Some(base.clone()), env(&[]))
            .load()
            .unwrap()
            .coordinator_policy();
        assert_eq!(c.preemption_margin, Some(30.0));
        assert_eq!(c.limits.len(), 2);
        assert_eq!(
            (c.limits[0].label.as_str(), c.limits[0].max_running),
            ("repo", Some(3))
        );
        assert_eq!(c.limits[1].max_starts_per_minute, Some(60));
        assert_eq!(c.scoring.product_weight.get("acme"), Some(&5.0));
        assert!(c.refuse_over_budget);
        let vars = env(&[
            ("GF_COORDINATOR_LIMITS", "x:1"),
            ("GF_PREEMPTION_MARGIN", "12.5"),
            ("GF_REFUSE_OVER_BUDGET", "false"),
        ]);
        let c = Loader::new(Some(base.clone()), vars)
            .load()
            .unwrap()
            .coordinator_policy();
        assert_eq!(
            (c.limits.len(), c.preemption_margin, c.refuse_over_budget),
            (1, Some(12.5), false)
        );
        let bad = write(
            dir.path(),
            "bad.toml",
            "[coordinator]\nlimits = [\"nope\"]\n",
        );
        let e = Loader::new(Some(bad), env(&[]))
            .load()
            .unwrap_err()
            .to_string();
        assert!(e.contains("coordinator.limits"), "{e}");
    }

    /// Profiles and bridge sources load from the file; an unknown key inside them
    /// names the file and the full key; a bad template or duration names the key; a
    /// missing secret only stops the coordinator, not other commands.
    #[test]
    fn profiles_and_bridge() {
        let dir = tempfile::tempdir().unwrap();
        let good = r#"
[profiles.agent]
command = ["run-agent"]
queue = "agents"
timeout = "2h"
env = { MODEL = "big" }
weights = { waiting = 2.0 }

[bridge.sources.github]
secret_env = "GH_SECRET"
[[bridge.sources.github.rules]]
events = ["issues.labeled"]
label = "agent"
profile = "agent"
command = ["{issue.number}"]
"#;
        let base = write(dir.path(), "gigafactory.toml", good);
        let l = Loader::new(Some(base.clone()), env(&[])).load().unwrap();
        let c = l.coordinator_policy();
        assert_eq!(c.profiles["agent"].timeout_secs, Some(7200));
        assert_eq!(c.profiles["agent"].queue.as_deref(), Some("agents"));
        let e = l.coordinator().unwrap_err().to_string();
        assert!(
            e.contains("GH_SECRET") && e.contains("bridge.sources.github.secret_env"),
            "{e}"
        );
        let l = Loader::new(Some(base), env(&[("GH_SECRET", "s")]))
            .load()
            .unwrap();
        assert_eq!(l.coordinator().unwrap().bridge.sources.len(), 1);
        assert!(l.show().contains("profiles.agent = {"), "{}", l.show());

        for (text, want) in [
            ("[profiles.agent]\ncomand = [\"x\"]\n", "unknown key `profiles.agent.comand`"),
            ("[profiles.agent.weights]\nwaitng = 1.0\n", "unknown key `profiles.agent.weights.waitng`"),
            ("[bridge.sources.gh]\nsecret = \"x\"\n", "unknown key `bridge.sources.gh.secret`"),
            ("[[bridge.sources.gh.rules]]\nevent = []\n", "unknown key `bridge.sources.gh.rules.0.event`"),
            ("[profiles.agent]\ntimeout = \"soon\"\n", "profiles.agent.timeout"),
            ("[profiles.agent]\nqueue = \"a b\"\n", "profiles.agent.queue"),
            ("[bridge.sources.gh]\nsecret_env = \"S\"\n[[bridge.sources.gh.rules]]\ncommand = [\"{issue.number\"]\n", "bridge.sources.gh.rules.0.command"),
        ] {
            let f = write(dir.path(), "bad.toml", text);
            let e = Loader::new(Some(f), env(&[])).load().unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
            if want.starts_with("unknown") {
                assert!(e.contains("bad.toml"), "{e}");
            }
        }
    }

    #[test]
    fn example_file_documents_every_key() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../gigafactory.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let l = Loader::new(Some(path), env(&[])).load().unwrap();
        assert_eq!(
            l.settings,
            Settings::default(),
            "the example shows the defaults"
        );
        for k in KEYS {
            let leaf = k.path.rsplit('.').next().unwrap();
            assert!(
                text.contains(&format!("{leaf} =")) || text.contains(&format!("[{}]", k.path)),
                "gigafactory.toml does not document {}",
                k.path
            );
        }
    }
}
