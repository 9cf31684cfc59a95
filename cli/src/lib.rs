//! The `gf` command line: every operator action, and `gf dev` which runs a whole local
//! fleet in one process.

pub mod allocator;
pub mod config;
pub mod dev;
pub mod doctor;
pub mod factory;
pub mod nats_bin;
pub mod ops;
pub mod ops_admin;
pub mod ops_artifacts;
pub mod ops_outcomes;
pub mod ops_sched;
pub mod ops_workflow;
pub mod output;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(name = "gf", version, about = "Gigafactory: run long jobs on your own fleet, exactly once in effect.", long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Base configuration file [default: gigafactory.toml if present]. The overlay
    /// gigafactory.<GF_ENV>.toml beside it is merged over it when GF_ENV is set.
    #[arg(long, global = true, env = "GF_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// NATS server to use [config nats.url, env GF_NATS_URL; default nats://127.0.0.1:4222].
    #[arg(long, global = true)]
    pub nats_url: Option<String>,
    /// Log format for long-running commands [config log.format, env GF_LOG_FORMAT; default text].
    #[arg(long, global = true, value_parser = ["text", "json"])]
    pub log_format: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a local fleet: NATS (started, and installed, if needed), a coordinator and
    /// N workers, then submit a few demo jobs and print the addresses.
    Dev(dev::DevArgs),
    /// Run a coordinator (job store, scheduler, RPC plane, HTTP API).
    ///
    /// Ctrl-C, SIGTERM and SIGHUP (a closed terminal) stop it in order: RPC and HTTP
    /// intake drain, a leader steps down so a standby takes over at once, events are
    /// flushed, then it exits.
    Coordinator(CoordinatorArgs),
    /// Run a worker that claims and runs jobs matching its capabilities.
    ///
    /// Ctrl-C, SIGTERM and SIGHUP (a closed terminal) drain it: it claims nothing new,
    /// running jobs get --drain-grace to finish and report, and what is still running
    /// then is killed and given back without spending an attempt. Started under `nohup`,
    /// it keeps ignoring SIGHUP.
    Worker(WorkerArgs),
    /// Submit a job: `gf submit [OPTIONS] -- CMD ARGS...` (prints the job id), or a
    /// manifest of jobs with dependencies: `gf submit -f jobs.toml`.
    Submit(ops::SubmitArgs),
    /// Manifests: `gf manifest show NAME` lists its jobs and their states.
    Manifest(ops_workflow::ManifestArgs),
    /// Job profiles (named templates) the coordinators know.
    Profiles(ops_workflow::ProfilesArgs),
    /// The tracker bridge: `gf bridge deliveries`, `gf bridge redeliver ID`.
    Bridge(ops_workflow::BridgeArgs),
    /// A job's artifacts (files left in $GF_ARTIFACTS_DIR) and checkpoint; `--get NAME`
    /// downloads one.
    Artifacts(ops_artifacts::ArtifactsArgs),
    /// List jobs, newest first.
    Jobs(ops::JobsArgs),
    /// Show one job.
    Job(ops::JobArgs),
    /// Print a job's output; `-f` follows it until the job ends.
    Logs(ops::LogsArgs),
    /// Cancel a job (any non-terminal state); a running job's process is killed.
    Cancel(ops::CancelArgs),
    /// List workers with their capabilities, slots and last heartbeat.
    Workers(ops::WorkersArgs),
    /// Why a job is where it is: score terms, each live worker's fit, what it waits for.
    Explain(ops_sched::ExplainArgs),
    /// Send a dead, cancelled or rejected job round again (attempts reset).
    Requeue(ops_sched::ActionArgs),
    /// Refuse a pending job: it ends `rejected` with the reason.
    Reject(ops_sched::ActionArgs),
    /// A job's dependencies and children, with their states.
    Dag(ops_sched::ExplainArgs),
    /// List dead letters (jobs that ran out of attempts).
    Dead(ops::JobsArgs),
    /// Budgets per product: list, set limits, pause, resume.
    Budgets(ops_sched::BudgetsArgs),
    /// Cron schedules that submit jobs.
    Schedule(ops_sched::ScheduleArgs),
    /// Show the effective configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Check the configuration, NATS, JetStream, buckets, streams, auth and clock skew.
    Doctor(doctor::DoctorArgs),
    /// Drain a worker: it finishes what it runs and claims nothing new.
    Drain(ops_admin::DrainArgs),
    /// Undrain a worker: it claims jobs again.
    Undrain(ops_admin::DrainArgs),
    /// Print recent events (state changes and errors); `-f` follows new ones.
    Events(ops_admin::EventsArgs),
    /// Counters: jobs by state, queue depth, workers, recent throughput, model usage.
    Stats(ops_admin::StatsArgs),
    /// Make a random HTTP API token and print the hash line for `--api-token`.
    ApiToken(ops_admin::ApiTokenArgs),
    /// Factories on a secured NATS: enrollment tokens, enrolled factories.
    Factory(factory::FactoryArgs),
    /// A secured deployment's secrets: `gf admin init DIR`.
    Admin(factory::AdminArgs),
    /// Finished attempts as feature rows (`gf outcomes export > outcomes.jsonl`), and
    /// what other weights would have made of them (`gf outcomes replay`).
    Outcomes(ops_outcomes::OutcomesArgs),
    /// What needs an operator: flaky workers per kind, kinds no worker runs well,
    /// capabilities unplaceable jobs wait for, budgets burning out early.
    Recommend(ops_outcomes::RecommendArgs),
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Print every key's effective value and where it came from (default, base file,
    /// overlay, env, flag), secrets masked.
    Show,
}

/// Coordinator flags; each overrides its config key (see `gf config show`).
#[derive(Args, Debug, Clone)]
pub struct CoordinatorArgs {
    /// Address for the HTTP API and /health [coordinator.http_addr; default 127.0.0.1:8080].
    #[arg(long)]
    pub http_addr: Option<SocketAddr>,
    /// This replica's id [coordinator.id; default: generated].
    #[arg(long = "id", id = "coordinator_id", value_name = "ID")]
    pub id: Option<String>,
    /// Default lease TTL for jobs that don't set one [coordinator.lease_ttl; default 30s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub lease_ttl: Option<Duration>,
    /// How long a dispatched job may wait for a claim [coordinator.claim_timeout; default 15s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub claim_timeout: Option<Duration>,
    /// How often expired leases are looked for [coordinator.reaper_period; default 500ms].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub reaper_period: Option<Duration>,
    /// Replicas of buckets and streams, 3 on a clustered NATS [coordinator.replicas; default 1].
    #[arg(long)]
    pub replicas: Option<usize>,
    /// Enable preemption: revoke a running job scoring at least this much below a job
    /// that cannot be placed (priority levels are worth 10 by default).
    /// [coordinator.preemption_margin; default: off]
    #[arg(long)]
    pub preemption_margin: Option<f64>,
    /// Limit per label value, `LABEL:MAX_RUNNING` or `LABEL:MAX_RUNNING:STARTS_PER_MINUTE`
    /// (either may be empty), e.g. `repo:3`, `provider::60` (repeatable).
    #[arg(long = "limit", value_name = "RULE", value_parser = parse_limit)]
    pub limits: Vec<gf_coordinator::config::LimitRule>,
    /// Weight of a product in scores, `PRODUCT=WEIGHT` (repeatable).
    #[arg(long = "product-weight", value_name = "PRODUCT=WEIGHT", value_parser = parse_weight)]
    pub product_weights: Vec<(String, f64)>,
    /// Refuse submissions for products over budget (default: they wait).
    /// [coordinator.refuse_over_budget]
    #[arg(long)]
    pub refuse_over_budget: bool,
    /// HTTP API token `NAME:ROLE:SHA256HEX` (repeatable; role `viewer` or `operator`;
    /// only the token's hash is given: make one with `gf api-token`).
    #[arg(
        long = "api-token",
        env = "GF_API_TOKENS",
        value_delimiter = ',',
        value_name = "NAME:ROLE:SHA256"
    )]
    pub api_tokens: Vec<String>,
    /// A file of HTTP API tokens, one `NAME:ROLE:SHA256HEX` a line (`#` comments and
    /// blank lines ignored), added to `--api-token`; the compose deployment's
    /// `scripts/compose-secrets.sh` writes one. Read at start: restart to apply changes.
    #[arg(long, env = "GF_API_TOKENS_FILE", value_name = "PATH")]
    pub api_tokens_file: Option<PathBuf>,
    /// Serve the HTTP API and dashboard without authentication (local use only).
    #[arg(long, env = "GF_NO_AUTH")]
    pub no_auth: bool,
    /// A secured NATS: the folder `gf admin init` wrote. The coordinator connects as
    /// its nkey user and answers the auth callout (enrolls and admits factories).
    #[arg(long, env = "GF_SECRETS_DIR", value_name = "DIR")]
    pub secrets_dir: Option<PathBuf>,
}

/// The lines of an `--api-tokens-file`: `NAME:ROLE:SHA256HEX`, `#` comments and blank
/// lines ignored. A bad line is an error naming its line number: a token silently
/// dropped would lock its holder out with no hint why.
pub fn parse_api_tokens_file(text: &str) -> anyhow::Result<Vec<gf_coordinator::config::ApiToken>> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .map(|(n, l)| {
            gf_coordinator::config::ApiToken::parse(l).map_err(|e| anyhow::anyhow!("line {n}: {e}"))
        })
        .collect()
}

pub fn parse_limit(s: &str) -> Result<gf_coordinator::config::LimitRule, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let num = |p: Option<&&str>| -> Result<Option<u32>, String> {
        match p.map(|x| x.trim()).filter(|x| !x.is_empty()) {
            None => Ok(None),
            Some(x) => x
                .parse()
                .map(Some)
                .map_err(|_| format!("`{x}` in `{s}` is not a number")),
        }
    };
    if parts.len() < 2 || parts.len() > 3 || !gf_schemas::names::is_token(parts[0]) {
        return Err(format!(
            "`{s}` is not LABEL:MAX_RUNNING[:STARTS_PER_MINUTE]"
        ));
    }
    let rule = gf_coordinator::config::LimitRule {
        label: parts[0].to_string(),
        max_running: num(parts.get(1))?,
        max_starts_per_minute: num(parts.get(2))?,
    };
    if rule.max_running.is_none() && rule.max_starts_per_minute.is_none() {
        return Err(format!("`{s}` sets no limit"));
    }
    Ok(rule)
}

pub fn parse_weight(s: &str) -> Result<(String, f64), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not PRODUCT=WEIGHT"))?;
    Ok((
        k.to_string(),
        v.parse().map_err(|_| format!("`{v}` is not a number"))?,
    ))
}

fn dur_value(d: Duration) -> toml::Value {
    toml::Value::String(humantime::format_duration(d).to_string())
}

fn str_list(v: &[String]) -> toml::Value {
    toml::Value::Array(v.iter().cloned().map(toml::Value::String).collect())
}

type FlagLayer = Vec<(String, toml::Value, String)>;

impl CoordinatorArgs {
    /// API tokens (flags, `GF_API_TOKENS` and `--api-tokens-file`, not config-file
    /// keys: a token list is deployment-specific), on top of the loaded config. Refuses
    /// to serve the API with no tokens unless `--no-auth`.
    pub fn apply_policy(&self, c: &mut gf_coordinator::CoordinatorConfig) -> anyhow::Result<()> {
        let mut tokens = self
            .api_tokens
            .iter()
            .map(|t| gf_coordinator::config::ApiToken::parse(t).map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<Vec<_>>>()
            .context("--api-token / GF_API_TOKENS")?;
        if let Some(path) = &self.api_tokens_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("--api-tokens-file {}", path.display()))?;
            tokens.extend(
                parse_api_tokens_file(&text)
                    .with_context(|| format!("--api-tokens-file {}", path.display()))?,
            );
        }
        if tokens.is_empty() && !self.no_auth {
            bail!("the HTTP API needs tokens: pass --api-token NAME:ROLE:SHA256 (make one with `gf api-token`) or --api-tokens-file, or --no-auth to serve it to anyone");
        }
        c.auth = gf_coordinator::config::AuthConfig {
            enabled: !self.no_auth,
            tokens,
        };
        if let Some(dir) = &self.secrets_dir {
            let secrets = gf_auth::Secrets::read(dir)
                .with_context(|| format!("--secrets-dir {}", dir.display()))?;
            c.security = Some(gf_coordinator::auth::Security::new(secrets));
        }
        Ok(())
    }

    /// The flags given, as config keys.
    pub fn flags(&self) -> FlagLayer {
        let mut f = FlagLayer::new();
        let mut push = |k: &str, v: toml::Value, flag: &str| f.push((k.into(), v, flag.into()));
        if let Some(a) = self.http_addr {
            push(
                "coordinator.http_addr",
                toml::Value::String(a.to_string()),
                "--http-addr",
            );
        }
        if let Some(id) = &self.id {
            push("coordinator.id", toml::Value::String(id.clone()), "--id");
        }
        if let Some(d) = self.lease_ttl {
            push("coordinator.lease_ttl", dur_value(d), "--lease-ttl");
        }
        if let Some(d) = self.claim_timeout {
            push("coordinator.claim_timeout", dur_value(d), "--claim-timeout");
        }
        if let Some(d) = self.reaper_period {
            push("coordinator.reaper_period", dur_value(d), "--reaper-period");
        }
        if let Some(r) = self.replicas {
            push(
                "coordinator.replicas",
                toml::Value::Integer(r as i64),
                "--replicas",
            );
        }
        if let Some(m) = self.preemption_margin {
            push(
                "coordinator.preemption_margin",
                toml::Value::Float(m),
                "--preemption-margin",
            );
        }
        if !self.limits.is_empty() {
            let rules: Vec<String> = self
                .limits
                .iter()
                .map(|l| {
                    let n = |v: Option<u32>| v.map(|x| x.to_string()).unwrap_or_default();
                    format!(
                        "{}:{}:{}",
                        l.label,
                        n(l.max_running),
                        n(l.max_starts_per_minute)
                    )
                })
                .collect();
            push("coordinator.limits", str_list(&rules), "--limit");
        }
        if !self.product_weights.is_empty() {
            let ws: Vec<String> = self
                .product_weights
                .iter()
                .map(|(p, w)| format!("{p}={w}"))
                .collect();
            push(
                "coordinator.product_weights",
                str_list(&ws),
                "--product-weight",
            );
        }
        if self.refuse_over_budget {
            push(
                "coordinator.refuse_over_budget",
                toml::Value::Boolean(true),
                "--refuse-over-budget",
            );
        }
        f
    }
}

/// Worker flags; each overrides its config key (see `gf config show`).
#[derive(Args, Debug, Clone)]
pub struct WorkerArgs {
    /// Capability `key=value` (repeatable); overrides detected os, arch, cpus, memory_mb
    /// [worker.capabilities].
    #[arg(long = "cap", value_name = "KEY=VALUE", value_parser = parse_kv)]
    pub caps: Vec<(String, String)>,
    /// Tag this worker carries (repeatable), e.g. `gpu` [worker.tags].
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Queues to serve (repeatable) [worker.queues; default default].
    #[arg(long = "queue", value_name = "QUEUE")]
    pub queues: Vec<String>,
    /// Jobs run at once [worker.slots; default 4].
    #[arg(long)]
    pub slots: Option<u32>,
    /// Worker id [worker.id; default: host name plus a random suffix].
    #[arg(long = "id", id = "worker_id", value_name = "ID")]
    pub id: Option<String>,
    /// On shutdown (Ctrl-C, SIGTERM, SIGHUP), how long running jobs may finish before they are given back [worker.drain_grace; default 30s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub drain_grace: Option<Duration>,
    /// Directory for jobs' working directories and result files [worker.scratch_dir].
    #[arg(long)]
    pub scratch_dir: Option<PathBuf>,
    /// Serve Prometheus metrics on http://ADDR/metrics [worker.metrics_addr].
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
    /// A secured NATS: the folder holding this factory's key and id (made, with a
    /// fresh key, on first use; the seed never leaves it). The worker connects with
    /// this key alone once enrolled.
    #[arg(long, env = "GF_WORKER_KEY_DIR", value_name = "DIR")]
    pub key_dir: Option<PathBuf>,
    /// Enroll this factory with a token from `gf factory token create` (once; the
    /// key in --key-dir is what it connects with afterwards).
    #[arg(long, env = "GF_ENROLL_TOKEN", value_name = "TOKEN", requires = "key_dir",
          value_parser = |s: &str| gf_auth::EnrollToken::parse(s).map_err(|e| e.to_string()))]
    pub enroll: Option<gf_auth::EnrollToken>,
    /// Once started, switch to a fresh key (the old one works for a grace period);
    /// `gf factory rotate ID` asks a running worker to do the same.
    #[arg(long, requires = "key_dir")]
    pub rotate_key: bool,
    /// Threads running the worker's own tasks (NATS, leases, heartbeats, the jobs'
    /// pipes); its jobs are processes of their own and blocking work has its own
    /// pool, so one is enough. More only help in-process handlers that compute.
    #[arg(long, env = "GF_WORKER_THREADS", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: u16,
}

/// The async runtime `cli`'s command runs on. A worker's has
/// [`WorkerArgs::threads`] threads: a worker waits on NATS and on its jobs'
/// processes, and a second thread only adds wake-ups (eight 8-slot workers on two
/// cores spent 0.041 ms of CPU per no-op job with two threads each, 0.030 with one;
/// BENCHMARKS.md, issue 20 phase J). Every other command gets tokio's default, a
/// thread per core (`TOKIO_WORKER_THREADS` overrides it).
pub fn runtime(cli: &Cli) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Command::Worker(w) = &cli.command {
        builder.worker_threads(w.threads.into());
    }
    builder.enable_all().build()
}

impl WorkerArgs {
    /// The flags given, as config keys.
    pub fn flags(&self) -> FlagLayer {
        let mut f = FlagLayer::new();
        let mut push = |k: &str, v: toml::Value, flag: &str| f.push((k.into(), v, flag.into()));
        if !self.caps.is_empty() {
            let t: toml::Table = self
                .caps
                .iter()
                .map(|(k, v)| (k.clone(), toml::Value::String(v.clone())))
                .collect();
            push("worker.capabilities", toml::Value::Table(t), "--cap");
        }
        if !self.tags.is_empty() {
            push("worker.tags", str_list(&self.tags), "--tag");
        }
        if !self.queues.is_empty() {
            push("worker.queues", str_list(&self.queues), "--queue");
        }
        if let Some(n) = self.slots {
            push("worker.slots", toml::Value::Integer(n.into()), "--slots");
        }
        if let Some(id) = &self.id {
            push("worker.id", toml::Value::String(id.clone()), "--id");
        }
        if let Some(d) = self.drain_grace {
            push("worker.drain_grace", dur_value(d), "--drain-grace");
        }
        if let Some(p) = &self.scratch_dir {
            push(
                "worker.scratch_dir",
                toml::Value::String(p.display().to_string()),
                "--scratch-dir",
            );
        }
        if let Some(a) = self.metrics_addr {
            push(
                "worker.metrics_addr",
                toml::Value::String(a.to_string()),
                "--metrics-addr",
            );
        }
        f
    }
}

/// Parses `key=value` where both sides are subject-safe tokens.
pub fn parse_kv(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not KEY=VALUE"))?;
    if !gf_schemas::names::is_token(k) || !gf_schemas::names::is_token(v) {
        return Err(format!(
            "`{s}`: key and value must be made of A-Z a-z 0-9 _ -"
        ));
    }
    Ok((k.to_string(), v.to_string()))
}

/// The loader for this invocation: the base file, the process environment, and the
/// global flags plus `extra` as the flag layer.
pub fn loader(global: &Global, extra: FlagLayer) -> config::Loader {
    let mut l = config::Loader::new(global.config.clone(), config::process_env());
    if let Some(u) = &global.nats_url {
        l.flags.push((
            "nats.url".into(),
            toml::Value::String(u.clone()),
            "--nats-url".into(),
        ));
    }
    if let Some(f) = &global.log_format {
        l.flags.push((
            "log.format".into(),
            toml::Value::String(f.clone()),
            "--log-format".into(),
        ));
    }
    l.flags.extend(extra);
    l
}

/// Logs to stderr as text or JSON (`log.format`), filtered by `log.filter` (or
/// `RUST_LOG` when the filter is left at its default), and, when
/// `tracing.otlp_endpoint` is set, exports spans over OTLP/HTTP as `service`. Keep the
/// returned guard alive: dropping it flushes the spans still buffered.
pub fn init_tracing(
    loaded: &config::Loaded,
    service: &str,
) -> Option<gf_telemetry::trace::OtelGuard> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;
    let settings = &loaded.settings.log;
    let defaulted = matches!(
        loaded.sources.get("log.filter"),
        Some(config::Source::Default) | None
    );
    let filter = match std::env::var("RUST_LOG") {
        Ok(rust_log) if defaulted => rust_log,
        // `gf dev` prints its own summary; a whole fleet's INFO lines would bury it.
        _ if defaulted && service == "gf-dev" => "warn".into(),
        _ => settings.filter.clone(),
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| "info,async_nats=warn".into());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if settings.format == config::LogFormat::Json {
        fmt.json().boxed()
    } else {
        fmt.boxed()
    };
    let tracing = &loaded.settings.tracing;
    let (guard, otel_error) = match &tracing.otlp_endpoint {
        Some(endpoint) => {
            match gf_telemetry::trace::OtelGuard::otlp(endpoint, &tracing.otlp_headers, service) {
                Ok(g) => (Some(g), None),
                Err(e) => (None, Some(e)),
            }
        }
        None => (None, None),
    };
    let otel = guard.as_ref().map(|g| g.layer());
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .with(filter)
        .try_init();
    if let Some(e) = otel_error {
        tracing::warn!(error = %e, "cannot export traces; continuing without");
    } else if let Some(endpoint) = &tracing.otlp_endpoint {
        tracing::debug!(endpoint = %gf_telemetry::trace::traces_url(endpoint), service, "exporting traces over OTLP");
    }
    guard
}

/// Cancels the token on Ctrl-C, SIGTERM or SIGHUP: every long-running command stops in
/// order (a worker drains) whichever way it is told to. SIGHUP is what a closed
/// terminal sends; its default action kills the process at once, which would leave a
/// worker's running jobs to their lease and a coordinator's events unflushed. No
/// command reloads its configuration on SIGHUP, so stopping is the only meaning it has.
/// A process started with SIGHUP ignored (`nohup gf worker`, a supervisor that ignores
/// it) keeps ignoring it: it was asked to outlive its terminal.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    // Installed before returning, so a signal that arrives while the command starts
    // is not lost to the default action.
    #[cfg(unix)]
    let handlers = {
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::interrupt()).expect("SIGINT handler"),
            signal(SignalKind::terminate()).expect("SIGTERM handler"),
            // Asked before tokio installs its handler, which replaces the ignoring.
            (!hangup_ignored()).then(|| signal(SignalKind::hangup()).expect("SIGHUP handler")),
        )
    };
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            let (mut interrupt, mut term, mut hangup) = handlers;
            let hangup = async {
                match &mut hangup {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            let signal = tokio::select! {
                _ = interrupt.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
                _ = hangup => "SIGHUP",
            };
            tracing::info!(signal, "shutting down");
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("shutting down");
        }
        t.cancel();
    });
    token
}

/// Whether this process was started with SIGHUP ignored (`nohup`).
#[cfg(unix)]
#[allow(unsafe_code)]
fn hangup_ignored() -> bool {
    use nix::libc;
    let mut current = std::mem::MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: with a null new action, sigaction(2) only writes the current disposition
    // of SIGHUP into `current`, which is zeroed and of the right type; it is read only
    // when the call succeeded.
    unsafe {
        libc::sigaction(libc::SIGHUP, std::ptr::null(), current.as_mut_ptr()) == 0
            && current.assume_init().sa_sigaction == libc::SIG_IGN
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let extra = match &cli.command {
        Command::Coordinator(a) => a.flags(),
        Command::Worker(a) => a.flags(),
        _ => Vec::new(),
    };
    let loader = loader(&cli.global, extra);
    if let Command::Doctor(a) = cli.command {
        return doctor::run(loader, a).await;
    }
    let loaded = loader.load()?;
    if let Command::Config(ConfigCommand::Show) = cli.command {
        for (what, file) in [("base", &loaded.base), ("overlay", &loaded.overlay)] {
            let file = file
                .as_ref()
                .map_or("(none)".into(), |f| f.display().to_string());
            println!("# {what}: {file}");
        }
        print!("{}", loaded.show());
        return Ok(ExitCode::SUCCESS);
    }
    let service = match &cli.command {
        Command::Coordinator(_) => "gf-coordinator",
        Command::Worker(_) => "gf-worker",
        Command::Dev(_) => "gf-dev",
        _ => "gf",
    };
    let _otel = init_tracing(&loaded, service);
    let url = loaded.settings.nats.url.clone();
    match cli.command {
        Command::Dev(a) => dev::run(&url, a).await,
        Command::Coordinator(a) => {
            let mut config = loaded.coordinator()?;
            a.apply_policy(&mut config)?;
            gf_coordinator::run(config, shutdown_on_signals()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Worker(a) => {
            let mut config = loaded.worker()?;
            config.key_dir = a.key_dir;
            config.enroll = a.enroll;
            config.rotate_key = a.rotate_key;
            gf_worker::run(config, shutdown_on_signals()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Submit(a) => match &a.file {
            Some(f) => ops_workflow::submit_manifest(&url, f, a.wait, a.json).await,
            None => ops::submit(&url, a).await,
        },
        Command::Manifest(a) => ops_workflow::manifest(&url, a).await,
        Command::Profiles(a) => ops_workflow::profiles(&url, a).await,
        Command::Bridge(a) => ops_workflow::bridge(&url, a).await,
        Command::Artifacts(a) => ops_artifacts::artifacts(&url, a).await,
        Command::Jobs(a) => ops::jobs(&url, a).await,
        Command::Job(a) => ops::job(&url, a).await,
        Command::Logs(a) => ops::logs(&url, a).await,
        Command::Cancel(a) => ops::cancel(&url, a).await,
        Command::Workers(a) => ops::workers(&url, a).await,
        Command::Explain(a) => ops_sched::explain(&url, a).await,
        Command::Requeue(a) => {
            ops_sched::job_action(&url, gf_schemas::names::rpc::REQUEUE, a).await
        }
        Command::Reject(a) => ops_sched::job_action(&url, gf_schemas::names::rpc::REJECT, a).await,
        Command::Dag(a) => ops_sched::dag(&url, a).await,
        Command::Dead(mut a) => {
            a.state = Some(gf_schemas::JobState::Dead);
            ops::jobs(&url, a).await
        }
        Command::Budgets(a) => ops_sched::budgets(&url, a).await,
        Command::Schedule(a) => ops_sched::schedule(&url, a).await,
        Command::Config(_) | Command::Doctor(_) => unreachable!("handled above"),
        Command::Drain(a) => ops_admin::drain(&url, a, true).await,
        Command::Undrain(a) => ops_admin::drain(&url, a, false).await,
        Command::Events(a) => ops_admin::events(&url, a).await,
        Command::Stats(a) => ops_admin::stats(&url, a).await,
        Command::ApiToken(a) => ops_admin::api_token(a),
        Command::Factory(a) => factory::run(&url, a).await,
        Command::Admin(a) => factory::admin(a),
        Command::Outcomes(a) => ops_outcomes::outcomes(&url, a).await,
        Command::Recommend(a) => ops_outcomes::recommend(&url, a).await,
    }
}

/// Connects for a short operator command, with an error that says what to check.
/// A `nats://user:password@…` URL logs in as that user: the operator (`gf-admin`), or
/// a client's own user (`gf admin user create`), whose replies come to its own inbox
/// prefix (the only one it may subscribe to).
pub async fn connect(url: &str) -> anyhow::Result<async_nats::Client> {
    let (mut options, shown) = gf_auth::url::connect_options(url);
    if let Some(user) = gf_auth::url::user(url).filter(|u| u != gf_auth::secrets::ADMIN_USER) {
        options = options.custom_inbox_prefix(gf_schemas::names::client_inbox_prefix(&user));
    }
    options
        .name("gf cli")
        .connection_timeout(Duration::from_secs(3))
        .connect(url)
        .await
        .with_context(|| {
            format!("cannot reach NATS at {shown} (is it running? set --nats-url or GF_NATS_URL)")
        })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{parse_api_tokens_file, runtime, Cli};

    #[test]
    fn a_worker_runs_on_one_thread_unless_told_and_refuses_none() {
        let threads = |args: &[&str]| {
            let cli = Cli::try_parse_from(args).expect("parses");
            runtime(&cli).expect("runtime").metrics().num_workers()
        };
        assert_eq!(threads(&["gf", "worker"]), 1);
        assert_eq!(threads(&["gf", "worker", "--threads", "3"]), 3);
        // Other commands keep tokio's default (a thread per core, or the env's).
        assert!(threads(&["gf", "coordinator"]) >= 1);
        let err = Cli::try_parse_from(["gf", "worker", "--threads", "0"]).unwrap_err();
        assert!(err.to_string().contains("--threads"), "{err}");
    }

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn api_tokens_file_skips_comments_and_names_a_bad_line() {
        let good = format!(
            "# made by compose-secrets.sh\n\nops:operator:{HASH}\n  dash:viewer:{HASH}  \n"
        );
        let tokens = parse_api_tokens_file(&good).unwrap();
        let names: Vec<_> = tokens.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["ops", "dash"]);
        assert_eq!(tokens[0].role.as_str(), "operator");

        let bad = format!("ops:operator:{HASH}\nops:operator:short\n");
        let err = format!("{:#}", parse_api_tokens_file(&bad).unwrap_err());
        assert!(err.contains("line 2"), "{err}");
        assert!(parse_api_tokens_file("# nothing\n").unwrap().is_empty());
    }
}
