//! The docker-compose backend: the suites drive the repository's `docker-compose.yml`
//! (three NATS nodes, two coordinators, workers, Prometheus, Alertmanager) through the
//! `docker` and `docker-compose` CLIs.
//!
//! Each cluster is its own compose project (`<prefix><random>`), so runs never share a
//! container, network or volume, and `down -v` removes all of it when the cluster is
//! dropped (`CHAOS_KEEP=1` keeps it for a post-mortem). Faults are the engine's own:
//! `docker kill -s KILL`, `docker stop` (SIGTERM, then KILL after the grace period),
//! `docker pause`/`unpause` (the cgroup freezer: the process stops like SIGSTOP and its
//! sockets stay open), `docker start`, and real partitions: `docker network disconnect`
//! takes the container off the project's only network (its peers see packets to it
//! vanish), `docker network connect` puts it back with the DNS aliases it had.
//!
//! Coordinators are the file's `coordinator-1` and `coordinator-2` services (at most
//! two). A worker is a one-off container of the `worker` service (`docker-compose run`)
//! with the id and slots of its [`WorkerSpec`]. Jobs write their side effects to the
//! run's work directory, which is bind-mounted into every worker at the same path.
//!
//! Prometheus runs the deployment's alert rules with every duration divided by
//! [`ALERT_TIME_SCALE`] (`for: 5m` becomes 30 s, `[10m]` becomes `[60s]`), scraping every
//! 3 s: the same expressions, so a fault raises the alerts the rules define within a
//! scenario's minutes instead of an operator's quarter hour. Prometheus and
//! Alertmanager start once both coordinators run, so no alert fires for a deployment
//! that is still starting.
//!
//! The suite on the host reaches NATS, the coordinators, Prometheus and Alertmanager at
//! their container addresses (Docker on Linux routes the bridge networks to the host),
//! so a project publishes no port and cannot collide with another one.
//!
//! The deployment runs secured, as an operator runs it: each project gets secrets of
//! its own (`scripts/compose-secrets.sh`: a local CA, NATS' certificate, `gf admin
//! init`) outside the work directory the workers see; NATS speaks TLS only and sends
//! unknown clients to the coordinators' auth callout; workers enroll with the token
//! the compose file's `enroll` service makes, once both coordinators answer. The
//! suite's own clients connect as the operators' user `gf-admin` over TLS
//! ([`crate::tls`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::cluster::{Cluster, ClusterSpec, Fault, Monitoring, Part, WorkerSpec};

/// Where and how to run a compose cluster.
#[derive(Clone, Debug)]
pub struct ComposeOptions {
    /// The deployment's compose file (the repository's `docker-compose.yml`).
    pub file: PathBuf,
    /// Image of coordinators and workers (`GF_IMAGE` in the compose file).
    pub gf_image: String,
    /// Project names start with this; must start with a letter or digit.
    pub project_prefix: String,
}

impl ComposeOptions {
    /// The repository's compose file and the default image, or the environment's
    /// `CHAOS_COMPOSE_FILE`, `GF_IMAGE` and `CHAOS_COMPOSE_PREFIX`.
    pub fn from_env() -> Self {
        let file = std::env::var_os("CHAOS_COMPOSE_FILE")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("..")
                    .join("docker-compose.yml")
            });
        Self {
            file,
            gf_image: std::env::var("GF_IMAGE").unwrap_or_else(|_| "gigafactory/gf:local".into()),
            project_prefix: std::env::var("CHAOS_COMPOSE_PREFIX")
                .unwrap_or_else(|_| "gfchaos".into()),
        }
    }
}

/// Alert rule durations are divided by this on compose runs.
pub const ALERT_TIME_SCALE: u64 = 10;

/// Divides every duration of an alert rules file (`for: 2m`, and ranges like `[15m]`)
/// by `factor`, in whole seconds (at least 1 s).
pub fn scale_rule_durations(text: &str, factor: u64) -> String {
    fn scaled(d: &str, factor: u64) -> Option<String> {
        let (num, unit) = d.split_at(d.len().checked_sub(1)?);
        let n: u64 = num.parse().ok()?;
        let secs = match unit {
            "s" => n,
            "m" => n * 60,
            "h" => n * 3600,
            "d" => n * 86_400,
            _ => return None,
        };
        Some(format!("{}s", (secs / factor).max(1)))
    }
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix("for:") {
            let d = rest.trim();
            if let Some(new) = scaled(d, factor) {
                out.push_str(&line[..line.len() - trimmed.len()]);
                out.push_str("for: ");
                out.push_str(&new);
                out.push_str(if line.ends_with('\n') { "\n" } else { "" });
                continue;
            }
        }
        // Ranges: `[15m]` (never inside a quoted annotation in our rules).
        let mut rest = line;
        while let Some(open) = rest.find('[') {
            out.push_str(&rest[..=open]);
            rest = &rest[open + 1..];
            let range = rest
                .find(']')
                .and_then(|close| Some((close, scaled(&rest[..close], factor)?)));
            if let Some((close, new)) = range {
                out.push_str(&new);
                rest = &rest[close..];
            }
        }
        out.push_str(rest);
    }
    out
}

/// The deployment's Prometheus config for a chaos run: scrapes every 3 s, evaluates
/// every 2 s.
fn fast_prometheus_config(text: &str) -> anyhow::Result<String> {
    let mut out = text.to_string();
    for (from, to) in [
        (
            "scrape_interval: 15s",
            "scrape_interval: 3s\n  scrape_timeout: 3s",
        ),
        ("evaluation_interval: 15s", "evaluation_interval: 2s"),
        ("refresh_interval: 15s", "refresh_interval: 3s"),
    ] {
        if !out.contains(from) {
            bail!("deploy/prometheus/prometheus.yml no longer has `{from}`");
        }
        out = out.replace(from, to);
    }
    Ok(out)
}

/// The tracker source the coordinators of a compose run have (`POST
/// /api/bridge/tracker`, GitHub-signed with [`WEBHOOK_SECRET`]): an issue labelled
/// `agent` makes a job, whose state changes are echoed to a port nothing listens on,
/// once each, so the dashboard's tracker panels (webhooks, echo attempts, echoes given
/// up) have something to show after a load run. Unused by the fault scenarios.
const COORDINATOR_CONFIG: &str = r#"# Written by the chaos suite for one run.
[profiles.agent]
description = "an agent on a tracker issue"
command = ["sh", "-c", "echo agent on issue $0"]

[bridge.sources.tracker]
secret_env = "GF_CHAOS_WEBHOOK_SECRET"
[[bridge.sources.tracker.rules]]
label = "agent"
profile = "agent"
command = ["{issue.number}"]
[bridge.sources.tracker.echo]
url = "http://127.0.0.1:9/hook"
secret_env = "GF_CHAOS_WEBHOOK_SECRET"
max_attempts = 1
"#;
const WEBHOOK_SECRET_ENV: &str = "GF_CHAOS_WEBHOOK_SECRET";
/// The signing secret of the `tracker` source (a test value).
pub const WEBHOOK_SECRET: &str = "chaos-webhook-secret";
/// The bridge source of [`COORDINATOR_CONFIG`].
pub const WEBHOOK_SOURCE: &str = "tracker";

/// The NATS services of the compose file, in [`Part::Nats`] order.
const NATS: [&str; 3] = ["nats-1", "nats-2", "nats-3"];
/// The coordinator services, in [`Part::Coordinator`] order.
const COORDINATORS: [&str; 2] = ["coordinator-1", "coordinator-2"];

struct Container {
    /// Compose service (or, for a worker, the worker id).
    name: String,
    /// Container id.
    id: String,
    /// DNS aliases on the project network, re-applied when a partition heals.
    aliases: Vec<String>,
}

pub struct ComposeCluster {
    spec: ClusterSpec,
    opts: ComposeOptions,
    project: String,
    override_file: PathBuf,
    dir: tempfile::TempDir,
    /// The project's secrets (GF_COMPOSE_SECRETS), apart from `dir`, which the workers
    /// see.
    secrets: tempfile::TempDir,
    /// gf-admin's password: the suite's own clients log in as the operator.
    admin_password: String,
    /// Whether the `enroll` service has made the workers' token.
    enrolled: bool,
    keep: bool,
    nats: Vec<Container>,
    coordinators: Vec<Container>,
    workers: Vec<Container>,
}

/// Runs a command; its stdout on success, an error with its stderr otherwise.
fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {cmd:?} (is docker installed?)"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn docker(args: &[&str]) -> anyhow::Result<String> {
    run(Command::new("docker").args(args))
}

fn millis(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

impl ComposeCluster {
    /// Starts the NATS nodes of a new project and waits until every one is healthy
    /// (current with the JetStream meta group).
    pub fn start(spec: ClusterSpec, opts: ComposeOptions) -> anyhow::Result<Self> {
        for image in [
            opts.gf_image.as_str(),
            "gigafactory/nats:local",
            "gigafactory/prometheus:local",
            "gigafactory/alertmanager:local",
        ] {
            docker(&["image", "inspect", "-f", "{{.Id}}", image]).with_context(|| {
                format!("image {image} is missing: build it with scripts/docker-images.sh")
            })?;
        }
        let keep = std::env::var_os("CHAOS_KEEP").is_some();
        let dir = tempfile::Builder::new()
            .prefix("gf-chaos-compose-")
            .disable_cleanup(keep)
            .tempdir()?;
        let secrets = tempfile::Builder::new()
            .prefix("gf-chaos-secrets-")
            .disable_cleanup(keep)
            .tempdir()?;
        let script = opts
            .file
            .parent()
            .context("compose file has no folder")?
            .join("scripts/compose-secrets.sh");
        run(Command::new(&script)
            .arg(secrets.path())
            .env("GF_IMAGE", &opts.gf_image))?;
        let admin_password = std::fs::read_to_string(secrets.path().join("gf/admin.pass"))
            .context("compose-secrets.sh wrote no gf/admin.pass")?
            .trim()
            .to_string();
        let project = format!("{}{:08x}", opts.project_prefix, rand::random::<u32>());
        let override_file = dir.path().join("chaos.compose.yml");
        let mut c = Self {
            spec,
            opts,
            project,
            override_file,
            dir,
            secrets,
            admin_password,
            enrolled: false,
            keep,
            nats: Vec::new(),
            coordinators: Vec::new(),
            workers: Vec::new(),
        };
        if keep {
            eprintln!(
                "chaos: keeping compose project {}, {} and {}",
                c.project,
                c.dir.path().display(),
                c.secrets.path().display()
            );
        }
        c.write_override()?;
        let mut up = vec!["up", "-d", "--no-deps"];
        up.extend(NATS);
        c.compose(&up)?;
        for svc in NATS {
            let id = c.service_container(svc)?;
            let aliases = c.aliases(&id)?;
            c.nats.push(Container {
                name: svc.into(),
                id,
                aliases,
            });
        }
        for i in 0..NATS.len() {
            c.wait_healthy(&c.nats[i].id, Duration::from_secs(90))?;
        }
        Ok(c)
    }

    /// The project's file on top of the deployment's: the suite's timings for the
    /// coordinators, and the work directory mounted into the workers.
    fn write_override(&self) -> anyhow::Result<()> {
        let deploy = self
            .opts
            .file
            .parent()
            .context("compose file has no folder")?
            .join("deploy/prometheus");
        let prom = self.dir.path().join("prometheus");
        std::fs::create_dir_all(&prom)?;
        let read = |f: &str| {
            std::fs::read_to_string(deploy.join(f))
                .with_context(|| format!("cannot read {}", deploy.join(f).display()))
        };
        std::fs::write(
            prom.join("prometheus.yml"),
            fast_prometheus_config(&read("prometheus.yml")?)?,
        )?;
        std::fs::write(
            prom.join("alerts.yml"),
            scale_rule_durations(&read("alerts.yml")?, ALERT_TIME_SCALE),
        )?;
        let t = &self.spec.timings;
        // worker_timeout well above the longest coordinator outage a scenario causes
        // (both paused until the alerts fire, ~20 s): workers are not declared gone
        // for heartbeats nobody could receive.
        let mut coord_env = format!(
            "      GF_COORDINATOR_WORKER_TIMEOUT: \"30s\"\n      GF_COORDINATOR_LEASE_TTL: \"{}\"\n      GF_COORDINATOR_CLAIM_TIMEOUT: \"{}\"\n      GF_COORDINATOR_REAPER_PERIOD: \"{}\"\n",
            millis(t.lease_ttl),
            millis(t.claim_timeout),
            millis(t.reaper_period)
        );
        for (k, v) in self.spec.coordinator_env() {
            coord_env.push_str(&format!("      {k}: \"{v}\"\n"));
        }
        let log = std::env::var("CHAOS_GF_LOG").unwrap_or_else(|_| "info,async_nats=warn".into());
        let dir = self.dir.path().display();
        let config = self.dir.path().join("gigafactory.toml");
        std::fs::write(&config, COORDINATOR_CONFIG)?;
        let mut text = String::from("# Written by the chaos suite for one run.\nservices:\n");
        for svc in COORDINATORS {
            text.push_str(&format!(
                "  {svc}:\n    environment:\n{coord_env}      GF_LOG: \"{log}\"\n      GF_CONFIG: /etc/gigafactory/chaos.toml\n      {WEBHOOK_SECRET_ENV}: \"{WEBHOOK_SECRET}\"\n    volumes:\n      - \"{}:/etc/gigafactory/chaos.toml:ro\"\n",
                config.display()
            ));
        }
        text.push_str(&format!(
            "  prometheus:\n    volumes:\n      - \"{}:/etc/prometheus:ro\"\n",
            prom.display()
        ));
        text.push_str(&format!(
            "  worker:\n    environment:\n      GF_WORKER_DRAIN_GRACE: \"2s\"\n      GF_LOG: \"{log}\"\n    volumes:\n      - \"{dir}:{dir}\"\n"
        ));
        std::fs::write(&self.override_file, text)?;
        Ok(())
    }

    fn compose_cmd(&self) -> Command {
        let mut cmd = Command::new("docker-compose");
        cmd.arg("-p")
            .arg(&self.project)
            .arg("-f")
            .arg(&self.opts.file)
            .arg("-f")
            .arg(&self.override_file)
            .env("GF_IMAGE", &self.opts.gf_image)
            .env("GF_COMPOSE_SECRETS", self.secrets.path());
        cmd
    }

    /// Once both coordinators answer, runs the compose file's `enroll` service (as `up`
    /// does before the workers): the token every worker enrolls with.
    fn ensure_enrolled(&mut self) -> anyhow::Result<()> {
        if self.enrolled {
            return Ok(());
        }
        if self.coordinators.is_empty() {
            bail!("workers enroll through a coordinator: add one first");
        }
        for c in &self.coordinators {
            self.wait_healthy(&c.id, Duration::from_secs(90))?;
        }
        self.compose(&["run", "--rm", "-T", "--no-deps", "enroll"])
            .context("the enroll service made no token")?;
        self.enrolled = true;
        self.check_api_auth()
    }

    /// The deployment's HTTP API is secured by default: a read without a token is
    /// refused (401), the one with the operator's token from compose-secrets.sh is
    /// answered. Checked once per project, on the first coordinator.
    fn check_api_auth(&self) -> anyhow::Result<()> {
        let ip = self
            .address(Part::Coordinator(0))
            .context("coordinator-1 has no address")?;
        let token_file = self.secrets.path().join("api/operator.token");
        let token = std::fs::read_to_string(&token_file)
            .with_context(|| format!("{}", token_file.display()))?;
        let bearer = format!("Bearer {}", token.trim());
        let status =
            |auth: Option<&str>| http_status(&format!("{ip}:8080"), "/api/jobs?limit=1", auth);
        let open = status(None)?;
        if open != 401 {
            bail!("the compose HTTP API answered {open} to a request without a token (want 401)");
        }
        let with = status(Some(&bearer))?;
        if with != 200 {
            bail!("the compose HTTP API answered {with} to the operator's token (want 200)");
        }
        Ok(())
    }

    fn compose(&self, args: &[&str]) -> anyhow::Result<String> {
        run(self.compose_cmd().args(args))
    }

    /// Runs `n` replicas of the `worker` service with `slots` slots each, the way an
    /// operator scales the deployment (`up -d --scale worker=N`; ids are host names),
    /// and returns once every replica is healthy (registered). They are not parts:
    /// faults are for the workers of [`Cluster::add_worker`].
    pub fn scale_workers(&mut self, n: usize, slots: u32) -> anyhow::Result<()> {
        self.ensure_enrolled()?;
        let scale = format!("worker={n}");
        run(self
            .compose_cmd()
            .env("GF_WORKER_SLOTS", slots.to_string())
            .args(["up", "-d", "--no-deps", "--scale", &scale, "worker"]))?;
        let ids = self.compose(&["ps", "-q", "worker"])?;
        for id in ids.lines().filter(|l| !l.is_empty()) {
            self.wait_healthy(id, Duration::from_secs(90))?;
        }
        Ok(())
    }

    /// The compose project's name.
    pub fn project(&self) -> &str {
        &self.project
    }

    /// The project's network.
    fn network(&self) -> String {
        format!("{}_default", self.project)
    }

    fn service_container(&self, svc: &str) -> anyhow::Result<String> {
        let id = self.compose(&["ps", "-q", svc])?;
        let id = id.lines().next().unwrap_or_default().to_string();
        if id.is_empty() {
            bail!("service {svc} has no container in project {}", self.project);
        }
        Ok(id)
    }

    fn aliases(&self, id: &str) -> anyhow::Result<Vec<String>> {
        let format = format!(
            "{{{{json (index .NetworkSettings.Networks \"{}\").Aliases}}}}",
            self.network()
        );
        let json = docker(&["inspect", "-f", &format, id])?;
        let aliases: Option<Vec<String>> = serde_json::from_str(&json).unwrap_or_default();
        // Docker adds the short container id itself on every connect.
        Ok(aliases
            .unwrap_or_default()
            .into_iter()
            .filter(|a| !id.starts_with(a.as_str()))
            .collect())
    }

    /// The container's address on the project network (empty while disconnected).
    pub fn address(&self, part: Part) -> Option<String> {
        let c = self.container(part)?;
        let format = format!(
            "{{{{with index .NetworkSettings.Networks \"{}\"}}}}{{{{.IPAddress}}}}{{{{end}}}}",
            self.network()
        );
        docker(&["inspect", "-f", &format, &c.id])
            .ok()
            .filter(|ip| !ip.is_empty())
    }

    /// Address of a service that is not a [`Part`] (`prometheus`, `alertmanager`).
    pub fn service_address(&self, svc: &str) -> anyhow::Result<String> {
        let id = self.service_container(svc)?;
        let format = format!(
            "{{{{with index .NetworkSettings.Networks \"{}\"}}}}{{{{.IPAddress}}}}{{{{end}}}}",
            self.network()
        );
        docker(&["inspect", "-f", &format, &id])
    }

    fn container(&self, part: Part) -> Option<&Container> {
        match part {
            Part::Nats(i) => self.nats.get(i),
            Part::Coordinator(i) => self.coordinators.get(i),
            Part::Worker(i) => self.workers.get(i),
        }
    }

    /// Waits until the container's healthcheck passes.
    fn wait_healthy(&self, id: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = docker(&[
                "inspect",
                "-f",
                "{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}",
                id,
            ])?;
            if status == "healthy" {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let logs = docker_logs(id, 20);
                bail!("container {id} not healthy after {timeout:?} ({status}):\n{logs}");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

fn docker_logs(id: &str, lines: usize) -> String {
    let out = Command::new("docker")
        .args(["logs", "--tail", &lines.to_string(), id])
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(o) => format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => format!("(no logs: {e})"),
    }
}

impl Cluster for ComposeCluster {
    fn nats_url(&self) -> String {
        (0..self.nats.len())
            .map(|i| self.node_url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn node_url(&self, i: usize) -> String {
        let ip = self
            .address(Part::Nats(i))
            .unwrap_or_else(|| "0.0.0.0".into());
        format!("tls://{ip}:4222")
    }

    fn work_dir(&self) -> &Path {
        self.dir.path()
    }

    fn spec(&self) -> &ClusterSpec {
        &self.spec
    }

    fn add_coordinator(&mut self) -> anyhow::Result<(Part, String)> {
        let i = self.coordinators.len();
        let svc = *COORDINATORS
            .get(i)
            .context("the compose deployment has two coordinators")?;
        self.compose(&["up", "-d", "--no-deps", svc])?;
        let id = self.service_container(svc)?;
        let aliases = self.aliases(&id)?;
        self.coordinators.push(Container {
            name: svc.into(),
            id,
            aliases,
        });
        if self.coordinators.len() == COORDINATORS.len() {
            self.compose(&["up", "-d", "--no-deps", "alertmanager", "prometheus"])?;
            for svc in ["alertmanager", "prometheus"] {
                let id = self.service_container(svc)?;
                self.wait_healthy(&id, Duration::from_secs(60))?;
            }
        }
        Ok((Part::Coordinator(i), svc.to_string()))
    }

    fn add_worker(&mut self, spec: WorkerSpec) -> anyhow::Result<Part> {
        if spec.clock_offset.is_some() {
            bail!("a worker with a clock offset needs the process backend (faketime)");
        }
        self.ensure_enrolled()?;
        let i = self.workers.len();
        let name = format!("{}_w_{}", self.project, spec.id);
        let worker_id = format!("GF_WORKER_ID={}", spec.id);
        let slots = format!("GF_WORKER_SLOTS={}", spec.slots);
        let id = self.compose(&[
            "run",
            "-d",
            "--no-deps",
            "--name",
            &name,
            "-e",
            &worker_id,
            "-e",
            &slots,
            "worker",
        ])?;
        let id = id.lines().last().unwrap_or_default().to_string();
        let id = if id.is_empty() { name } else { id };
        let aliases = self.aliases(&id)?;
        self.workers.push(Container {
            name: spec.id,
            id,
            aliases,
        });
        Ok(Part::Worker(i))
    }

    fn inject(&mut self, part: Part, fault: Fault) -> anyhow::Result<()> {
        let c = self
            .container(part)
            .with_context(|| format!("no such part {part}"))?;
        let id = c.id.clone();
        match fault {
            Fault::Kill => docker(&["kill", "-s", "KILL", &id]).map(drop),
            Fault::Stop => docker(&["stop", "-t", "30", &id]).map(drop),
            Fault::Pause => docker(&["pause", &id]).map(drop),
            Fault::Resume => docker(&["unpause", &id]).map(drop),
            Fault::Start => {
                docker(&["start", &id])?;
                // A restarted part is back when its healthcheck says so: NATS current
                // with the cluster, a coordinator serving /health, a worker registered.
                self.wait_healthy(&id, Duration::from_secs(90))
            }
            Fault::Cut => docker(&["network", "disconnect", &self.network(), &id]).map(drop),
            Fault::Heal => {
                let net = self.network();
                let mut args = vec!["network", "connect"];
                for a in &c.aliases {
                    args.push("--alias");
                    args.push(a);
                }
                args.push(&net);
                args.push(&id);
                docker(&args).map(drop)
            }
        }
    }

    fn alive(&mut self, part: Part) -> bool {
        self.container(part).is_some_and(|c| {
            docker(&["inspect", "-f", "{{.State.Running}}", &c.id]).is_ok_and(|s| s == "true")
        })
    }

    fn name(&self, part: Part) -> Option<String> {
        self.container(part).map(|c| c.name.clone())
    }

    fn parts(&self) -> Vec<Part> {
        let mut v: Vec<Part> = (0..self.nats.len()).map(Part::Nats).collect();
        v.extend((0..self.coordinators.len()).map(Part::Coordinator));
        v.extend((0..self.workers.len()).map(Part::Worker));
        v
    }

    fn log_tail(&self, part: Part) -> String {
        self.container(part)
            .map(|c| docker_logs(&c.id, 15))
            .unwrap_or_default()
    }

    fn monitoring(&self) -> Option<Monitoring> {
        Some(Monitoring {
            prometheus: format!("http://{}:9090", self.service_address("prometheus").ok()?),
            alertmanager: format!("http://{}:9093", self.service_address("alertmanager").ok()?),
        })
    }

    fn connect_options(&self) -> anyhow::Result<async_nats::ConnectOptions> {
        let tls = crate::tls::client_config(&self.secrets.path().join("ca.pem"), "nats")?;
        Ok(async_nats::ConnectOptions::new()
            .user_and_password(
                gf_auth::secrets::ADMIN_USER.into(),
                self.admin_password.clone(),
            )
            .require_tls(true)
            .tls_client_config(tls))
    }
}

impl Drop for ComposeCluster {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        // One-off worker containers first: `down` only knows the services' own.
        for w in &self.workers {
            let _ = docker(&["rm", "-f", "-v", &w.id]);
        }
        if let Err(e) = self.compose(&["down", "-v", "--remove-orphans", "-t", "5"]) {
            eprintln!(
                "chaos: cannot remove compose project {}: {e:#}",
                self.project
            );
        }
    }
}

/// The status code of a plain HTTP/1.0 GET (blocking; the compose cluster's calls are
/// synchronous), with an optional `Authorization` header.
fn http_status(host: &str, path: &str, auth: Option<&str>) -> anyhow::Result<u16> {
    use std::io::{Read as _, Write as _};
    let addr: std::net::SocketAddr = host.parse().with_context(|| format!("address {host}"))?;
    let mut conn = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connect to {host}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n");
    if let Some(a) = auth {
        req.push_str(&format!("Authorization: {a}\r\n"));
    }
    req.push_str("\r\n");
    conn.write_all(req.as_bytes())?;
    let mut head = [0u8; 12];
    conn.read_exact(&mut head)
        .with_context(|| format!("no answer from {host}{path}"))?;
    // "HTTP/1.1 401"
    std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("not an HTTP answer from {host}{path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_durations_are_scaled() {
        let rules = "      - alert: A\n        expr: sum(increase(x[10m])) > 5 and delta(y[15m]) > 0\n        for: 5m\n        annotations:\n          summary: \"keep [this] as is\"\n";
        let out = scale_rule_durations(rules, 10);
        assert!(
            out.contains("sum(increase(x[60s])) > 5 and delta(y[90s]) > 0"),
            "{out}"
        );
        assert!(out.contains("        for: 30s\n"), "{out}");
        assert!(out.contains("keep [this] as is"), "{out}");
        assert_eq!(scale_rule_durations("for: 2s", 10), "for: 1s");
    }

    #[test]
    fn the_deployment_files_can_be_sped_up() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus");
        let prom = std::fs::read_to_string(dir.join("prometheus.yml")).unwrap();
        let fast = fast_prometheus_config(&prom).unwrap();
        assert!(fast.contains("scrape_interval: 3s"));
        let rules = std::fs::read_to_string(dir.join("alerts.yml")).unwrap();
        let scaled = scale_rule_durations(&rules, ALERT_TIME_SCALE);
        assert!(!scaled.contains("for: 5m"), "{scaled}");
        assert!(
            !scaled.contains("m])"),
            "a range was left unscaled: {scaled}"
        );
    }
}
