//! The `gf` command line: every operator action, and `gf dev` which runs a whole local
//! fleet in one process.

pub mod config;
pub mod dev;
pub mod doctor;
pub mod nats_bin;
pub mod ops;
pub mod output;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
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
    Coordinator(CoordinatorArgs),
    /// Run a worker that claims and runs jobs matching its capabilities.
    Worker(WorkerArgs),
    /// Submit a job: `gf submit [OPTIONS] -- CMD ARGS...`. Prints the job id.
    Submit(ops::SubmitArgs),
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
    /// Show the effective configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Check the configuration, NATS, JetStream, buckets, streams, auth and clock skew.
    Doctor(doctor::DoctorArgs),
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
}

fn dur_value(d: Duration) -> toml::Value {
    toml::Value::String(humantime::format_duration(d).to_string())
}

fn str_list(v: &[String]) -> toml::Value {
    toml::Value::Array(v.iter().cloned().map(toml::Value::String).collect())
}

type FlagLayer = Vec<(String, toml::Value, String)>;

impl CoordinatorArgs {
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
    /// On shutdown, how long running jobs may finish [worker.drain_grace; default 30s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub drain_grace: Option<Duration>,
    /// Directory for jobs' working directories and result files [worker.scratch_dir].
    #[arg(long)]
    pub scratch_dir: Option<PathBuf>,
    /// Serve Prometheus metrics on http://ADDR/metrics [worker.metrics_addr].
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
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
/// `RUST_LOG` when the filter is left at its default).
pub fn init_tracing(loaded: &config::Loaded) {
    let settings = &loaded.settings.log;
    let filter = match (loaded.sources.get("log.filter"), std::env::var("RUST_LOG")) {
        (Some(config::Source::Default) | None, Ok(rust_log)) => rust_log,
        _ => settings.filter.clone(),
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| "info,async_nats=warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if settings.format == config::LogFormat::Json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    // TODO(tracing): OpenTelemetry export over OTLP with W3C trace context in NATS
    // headers is not built yet (issue #5); the keys exist so files written for it load.
    if let Some(endpoint) = &loaded.settings.tracing.otlp_endpoint {
        tracing::warn!(%endpoint, "tracing.otlp_endpoint is set but this build does not export traces yet");
    }
}

/// Cancels the token on Ctrl-C or SIGTERM.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
        t.cancel();
    });
    token
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
    init_tracing(&loaded);
    let url = loaded.settings.nats.url.clone();
    match cli.command {
        Command::Dev(a) => dev::run(&url, a).await,
        Command::Coordinator(_) => {
            gf_coordinator::run(loaded.coordinator(), shutdown_on_signals()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Worker(_) => {
            gf_worker::run(loaded.worker()?, shutdown_on_signals()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Submit(a) => ops::submit(&url, a).await,
        Command::Jobs(a) => ops::jobs(&url, a).await,
        Command::Job(a) => ops::job(&url, a).await,
        Command::Logs(a) => ops::logs(&url, a).await,
        Command::Cancel(a) => ops::cancel(&url, a).await,
        Command::Workers(a) => ops::workers(&url, a).await,
        Command::Config(_) | Command::Doctor(_) => unreachable!("handled above"),
    }
}

/// Connects for a short operator command, with an error that says what to check.
pub async fn connect(url: &str) -> anyhow::Result<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .name("gf cli")
        .connection_timeout(Duration::from_secs(3))
        .connect(url)
        .await
        .with_context(|| {
            format!("cannot reach NATS at {url} (is it running? set --nats-url or GF_NATS_URL)")
        })
}
