//! The `gf` command line: every operator action, and `gf dev` which runs a whole local
//! fleet in one process.

pub mod dev;
pub mod nats_bin;
pub mod ops;
pub mod ops_admin;
pub mod output;

use std::collections::{BTreeMap, BTreeSet};
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
    /// NATS server to use.
    #[arg(
        long,
        global = true,
        env = "GF_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,
    /// Log format for long-running commands.
    #[arg(long, global = true, env = "GF_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
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
}

#[derive(Args, Debug, Clone)]
pub struct CoordinatorArgs {
    /// Address for the HTTP API and /health.
    #[arg(long, env = "GF_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,
    /// This replica's id (default: generated).
    #[arg(long, env = "GF_COORDINATOR_ID")]
    pub id: Option<String>,
    /// Default lease TTL for jobs that don't set one.
    #[arg(long, env = "GF_LEASE_TTL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub lease_ttl: Duration,
    /// How long a dispatched job may wait for a claim before it is dispatched again.
    #[arg(long, env = "GF_CLAIM_TIMEOUT", default_value = "15s", value_parser = humantime::parse_duration)]
    pub claim_timeout: Duration,
    /// How often expired leases are looked for.
    #[arg(long, env = "GF_REAPER_PERIOD", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub reaper_period: Duration,
    /// Replicas of buckets and streams (3 on a clustered NATS).
    #[arg(long, env = "GF_REPLICAS", default_value_t = 1)]
    pub replicas: usize,
    /// HTTP API token `NAME:ROLE:SHA256HEX` (repeatable; role `viewer` or `operator`;
    /// only the token's hash is given: make one with `gf api-token`).
    #[arg(
        long = "api-token",
        env = "GF_API_TOKENS",
        value_delimiter = ',',
        value_name = "NAME:ROLE:SHA256"
    )]
    pub api_tokens: Vec<String>,
    /// Serve the HTTP API and dashboard without authentication (local use only).
    #[arg(long, env = "GF_NO_AUTH")]
    pub no_auth: bool,
}

impl CoordinatorArgs {
    pub fn config(&self, nats_url: &str) -> anyhow::Result<gf_coordinator::CoordinatorConfig> {
        let tokens = self
            .api_tokens
            .iter()
            .map(|t| gf_coordinator::config::ApiToken::parse(t).map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<Vec<_>>>()
            .context("--api-token / GF_API_TOKENS")?;
        if tokens.is_empty() && !self.no_auth {
            bail!("the HTTP API needs tokens: pass --api-token NAME:ROLE:SHA256 (make one with `gf api-token`), or --no-auth to serve it to anyone");
        }
        let mut c = gf_coordinator::CoordinatorConfig {
            nats_url: nats_url.into(),
            http_addr: Some(self.http_addr),
            lease_ttl: self.lease_ttl,
            claim_timeout: self.claim_timeout,
            reaper_period: self.reaper_period,
            replicas: self.replicas,
            auth: gf_coordinator::config::AuthConfig {
                enabled: !self.no_auth,
                tokens,
            },
            ..Default::default()
        };
        if let Some(id) = &self.id {
            c.id = id.clone();
        }
        Ok(c)
    }
}

#[derive(Args, Debug, Clone)]
pub struct WorkerArgs {
    /// Capability `key=value` (repeatable); overrides detected os, arch, cpus, memory_mb.
    #[arg(long = "cap", value_name = "KEY=VALUE", value_parser = parse_kv)]
    pub caps: Vec<(String, String)>,
    /// Tag this worker carries (repeatable), e.g. `gpu`.
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Queues to serve (repeatable).
    #[arg(long = "queue", value_name = "QUEUE", default_value = "default")]
    pub queues: Vec<String>,
    /// Jobs run at once.
    #[arg(long, env = "GF_SLOTS", default_value_t = 4)]
    pub slots: u32,
    /// Worker id (default: host name plus a random suffix).
    #[arg(long, env = "GF_WORKER_ID")]
    pub id: Option<String>,
    /// On shutdown, how long running jobs may finish before they are given back.
    #[arg(long, env = "GF_DRAIN_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain_grace: Duration,
    /// Directory for jobs' working directories and result files.
    #[arg(long, env = "GF_SCRATCH_DIR")]
    pub scratch_dir: Option<PathBuf>,
}

impl WorkerArgs {
    pub fn config(&self, nats_url: &str) -> anyhow::Result<gf_worker::WorkerConfig> {
        let id = match &self.id {
            Some(s) => Some(gf_schemas::WorkerId::new(s.clone())?),
            None => None,
        };
        for q in &self.queues {
            if !gf_schemas::names::is_token(q) {
                bail!("--queue `{q}`: use A-Z a-z 0-9 _ -");
            }
        }
        for t in &self.tags {
            if !gf_schemas::names::is_token(t) {
                bail!("--tag `{t}`: use A-Z a-z 0-9 _ -");
            }
        }
        if self.slots == 0 {
            bail!("--slots must be at least 1");
        }
        Ok(gf_worker::WorkerConfig {
            nats_url: nats_url.into(),
            id,
            queues: self.queues.clone(),
            capabilities: self.caps.iter().cloned().collect::<BTreeMap<_, _>>(),
            tags: self.tags.iter().cloned().collect::<BTreeSet<_>>(),
            slots: self.slots,
            drain_grace: self.drain_grace,
            scratch_dir: self.scratch_dir.clone(),
            ..Default::default()
        })
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

pub fn init_tracing(global: &Global) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GF_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| "info,async_nats=warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if global.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
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
    let url = cli.global.nats_url.clone();
    match cli.command {
        Command::Dev(a) => dev::run(&url, a).await,
        Command::Coordinator(a) => {
            gf_coordinator::run(a.config(&url)?, shutdown_on_signals()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Worker(a) => {
            gf_worker::run(a.config(&url)?, shutdown_on_signals()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Submit(a) => ops::submit(&url, a).await,
        Command::Jobs(a) => ops::jobs(&url, a).await,
        Command::Job(a) => ops::job(&url, a).await,
        Command::Logs(a) => ops::logs(&url, a).await,
        Command::Cancel(a) => ops::cancel(&url, a).await,
        Command::Workers(a) => ops::workers(&url, a).await,
        Command::Drain(a) => ops_admin::drain(&url, a, true).await,
        Command::Undrain(a) => ops_admin::drain(&url, a, false).await,
        Command::Events(a) => ops_admin::events(&url, a).await,
        Command::Stats(a) => ops_admin::stats(&url, a).await,
        Command::ApiToken(a) => ops_admin::api_token(a),
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
