//! The load suite: no-op jobs (`gf:noop`, run in-process by the worker) through the
//! whole fleet, and for reference the same with a process per job (`true`).
//!
//! Measured, per configuration: throughput (jobs/s, first submit to last completion),
//! submit→done and submit→claim latency percentiles (from the job records' server-side
//! timestamps), and the JetStream traffic per job (stream writes per bucket/stream, and
//! messages in/out of the NATS server from its monitoring endpoint). Also the raw
//! JetStream ceiling on the same machine: per job, a KV create, a pipelined publish,
//! a fetch + ack and a KV compare-and-set, with async-nats and no Gigafactory code; and
//! the protocol ceilings: the design's job lifecycle (and three others) as bare
//! messages with trivial logic, so the gap between the two ceilings is the lifecycle's
//! and the gap below the second is this implementation's. A last fixed-rate run at 100
//! jobs/s gives the latency floor: a job's chain of hops with nothing queued.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use async_nats::jetstream::{self, consumer, kv, stream};
use futures::StreamExt;
use gf_schemas::names::{self, rpc};
use gf_schemas::rpc::SubmitReply;
use gf_schemas::{JobId, JobSpec, JobState};
use gf_worker::RpcClient;
use serde::Serialize;

use crate::cluster::{Cluster, ClusterSpec, Part, Timings, WorkerSpec};
// The peers live beside the load suite (kept out of `lib.rs`, which only lists suites).
#[path = "peers.rs"]
pub mod peers;
use crate::harness::connect;
use crate::process::{GfCommand, ProcessCluster};

/// The load suite's job: the worker's built-in in-process no-op handler.
const NOOP: &[&str] = &["gf:noop"];
/// Jobs of the latency-floor run (at 100 jobs/s: ten seconds).
const LATENCY_FLOOR_JOBS: usize = 1000;

#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// Jobs per measurement.
    #[arg(long, default_value_t = 2000)]
    pub jobs: usize,
    /// Worker process counts for the scale-out series.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    pub workers: Vec<usize>,
    /// Slots per worker process.
    #[arg(long, default_value_t = 8)]
    pub slots: u32,
    /// Submit requests in flight at once when submitting as fast as possible.
    #[arg(long, default_value_t = 64)]
    pub inflight: usize,
    /// Jobs per submit request when submitting as fast as possible, through
    /// `gf.rpc.batch.submit` (1: one `gf.rpc.submit` per job). The fixed-rate run always
    /// submits one job per request.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub submit_batch: u16,
    /// Jobs for the raw JetStream ceiling and for each protocol ceiling.
    #[arg(long, default_value_t = 20000)]
    pub raw_jobs: usize,
    /// Pending jobs for the coordinator memory measurement (0 skips it).
    #[arg(long, default_value_t = 20000)]
    pub pending: usize,
    /// Write the figures as JSON here.
    #[arg(long, default_value = "benchmarks/load.json")]
    pub json: PathBuf,
    /// Run only one measurement: `--jobs` submitted one per request at this many per
    /// second, to the largest `--workers` count (for quick comparisons and profiling;
    /// the full suite derives its fixed rate from the measured maximum instead).
    #[arg(long, value_parser = parse_rate, conflicts_with = "ceilings_only")]
    pub rate: Option<f64>,
    /// Run only the ceilings: the raw JetStream ceiling and the protocol ceilings (the
    /// job lifecycles as bare messages), no Gigafactory process.
    #[arg(long)]
    pub ceilings_only: bool,
    /// Run only the comparison with the peers (taskiq + taskiq-nats, Celery + Redis,
    /// apalis + Redis; installed by scripts/install-peers.sh): `--peer-jobs` no-op jobs
    /// through each, and through Gigafactory, at the largest `--workers` count.
    #[arg(long, conflicts_with_all = ["ceilings_only", "rate", "no_peers"])]
    pub peers: bool,
    /// Leave the peers out of the full suite.
    #[arg(long)]
    pub no_peers: bool,
    /// Run only the backlog curve: for each size, that many jobs submitted at once to
    /// the largest `--workers` count (e.g. `--backlog 5000,20000,50000,100000`), and
    /// each throughput as a share of the first.
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["ceilings_only", "rate", "peers"])]
    pub backlog: Vec<usize>,
    /// Jobs per system in the comparison with the peers.
    #[arg(long, default_value_t = 20000)]
    pub peer_jobs: usize,
    /// How the fleet runs connect to NATS: `open` (no authentication), `secured` (as
    /// an operator deploys it: `gf admin init`, the auth callout, factories enrolled
    /// with a token and their own keys; docs/security.md), or both, `open,secured`:
    /// each fleet run is then made in each mode, one right after the other, and the
    /// figures are printed side by side at the end. The ceilings, the fabric run, the
    /// memory measurement and the peers stay open. (The compose backend is always
    /// secured.) `chaos --secured load` is `--auth secured`.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "open")]
    pub auth: Vec<AuthMode>,
}

/// Whether a fleet run's NATS authenticates its clients ([`LoadArgs::auth`]).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    Open,
    Secured,
}

impl AuthMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Open => "open",
            AuthMode::Secured => "secured",
        }
    }
}

impl LoadArgs {
    /// The modes each fleet run is made in, in the order given, each once.
    pub fn auth_modes(&self) -> Vec<AuthMode> {
        let mut modes: Vec<AuthMode> = Vec::new();
        for m in &self.auth {
            if !modes.contains(m) {
                modes.push(*m);
            }
        }
        if modes.is_empty() {
            modes.push(AuthMode::Open);
        }
        modes
    }
}

/// A fixed rate: jobs per second, above 0 and at most 100,000.
fn parse_rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of jobs per second"))?;
    if rate.is_finite() && rate > 0.0 && rate <= 100_000.0 {
        Ok(rate)
    } else {
        Err(format!(
            "{s} jobs/s: the rate must be above 0 and at most 100000"
        ))
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

pub(crate) fn percentiles(mut v: Vec<f64>) -> Option<Percentiles> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    Some(Percentiles {
        p50_ms: at(0.50),
        p90_ms: at(0.90),
        p99_ms: at(0.99),
        max_ms: *v.last().expect("non-empty"),
    })
}

#[derive(Clone, Debug, Serialize)]
pub struct Run {
    pub label: String,
    /// Open NATS, or secured (auth callout, enrolled factories).
    pub auth: AuthMode,
    /// Secured: the workers enrolled as factories (active, in the factories bucket)
    /// at the end of the run. `None` when open.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub factories: Option<usize>,
    pub workers: usize,
    pub slots: u32,
    pub durable: bool,
    /// Submissions per second asked for; `None` = as fast as possible.
    pub rate: Option<f64>,
    pub jobs: usize,
    pub succeeded: usize,
    pub seconds: f64,
    pub jobs_per_sec: f64,
    pub submit_per_sec: f64,
    pub submit_to_done: Option<Percentiles>,
    pub submit_to_claim: Option<Percentiles>,
    /// Where the time goes, per job: submit → first dispatch notice (the scheduler),
    /// dispatch → claim (notice delivery, pull, claim RPC), claim → done (process
    /// spawn, run, completion RPC). Dispatch times from the `job_dispatched` events.
    pub submit_to_dispatch: Option<Percentiles>,
    pub dispatch_to_claim: Option<Percentiles>,
    pub claim_to_done: Option<Percentiles>,
    /// Share of jobs whose first dispatch was decided by their own submission (the
    /// coordinator's direct lane: a worker had room and nothing was waiting), not by a
    /// plan pass.
    pub dispatched_at_submission: Option<f64>,
    /// Worker slots x seconds / jobs: how long one slot takes per job, all in.
    pub slot_ms_per_job: f64,
    /// Stream writes per job, by stream (KV buckets are streams `KV_<bucket>`).
    pub writes_per_job: HashMap<String, f64>,
    /// NATS server messages in / out per job (all traffic, from `/varz`).
    pub server_msgs_in_per_job: Option<f64>,
    pub server_msgs_out_per_job: Option<f64>,
    /// Coordinator resident memory at the end, MiB.
    pub coordinator_rss_mib: Option<f64>,
    /// CPU milliseconds per job spent by each kind of process (workers include the
    /// job processes they reaped); with 2 cores, 2000 / the total bounds jobs/s.
    pub cpu_ms_per_job: HashMap<String, f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Raw {
    pub durable: bool,
    pub jobs: usize,
    pub seconds: f64,
    pub jobs_per_sec: f64,
    /// Four JetStream round trips per job.
    pub round_trips_per_sec: f64,
    /// CPU ms per job of nats-server and of the client.
    pub cpu_ms_per_job: HashMap<String, f64>,
}

/// The design's message pattern with trivial logic (see [`protocol_ceiling`]).
#[derive(Clone, Debug, Serialize)]
pub struct Protocol {
    /// Which lifecycle: the design's, or one with fewer steps (see [`Lifecycle`]).
    pub lifecycle: String,
    /// Whose it is: today's, the candidate new one, or outside the design.
    pub generation: String,
    /// Record writes per job.
    pub writes_per_job: u32,
    pub jobs: usize,
    pub workers: usize,
    pub seconds: f64,
    pub jobs_per_sec: f64,
    /// NATS server messages in / out per job (from `/varz`).
    pub server_msgs_in_per_job: Option<f64>,
    pub server_msgs_out_per_job: Option<f64>,
    /// CPU ms per job of nats-server and of this process (every role).
    pub cpu_ms_per_job: HashMap<String, f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Memory {
    pub pending_jobs: usize,
    pub coordinator_rss_mib: f64,
    pub coordinator_rss_before_mib: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct LoadReport {
    pub machine: String,
    pub nats_server: String,
    pub command: String,
    pub raw: Vec<Raw>,
    pub protocol: Vec<Protocol>,
    /// The built lifecycle's ceiling measured again right after the scale-out runs, so
    /// the fleet's share is taken against a ceiling bracketing its runs in time (one
    /// ceiling run moves by ±20 % on this machine).
    pub protocol_after: Vec<Protocol>,
    pub runs: Vec<Run>,
    pub memory: Option<Memory>,
    /// The comparison with the peers: Gigafactory's run and theirs, same jobs.
    pub peers: Option<Comparison>,
}

impl LoadReport {
    /// The protocol ceiling measured for `lifecycle`, if this run measured it.
    fn protocol_of(&self, lifecycle: Lifecycle) -> Option<&Protocol> {
        measured(&self.protocol, lifecycle)
    }

    /// The same ceiling measured again after the fleet's runs, if it was.
    fn protocol_after_of(&self, lifecycle: Lifecycle) -> Option<&Protocol> {
        measured(&self.protocol_after, lifecycle)
    }
}

/// The ceiling of `lifecycle` among `ceilings`.
fn measured(ceilings: &[Protocol], lifecycle: Lifecycle) -> Option<&Protocol> {
    ceilings.iter().find(|p| p.lifecycle == lifecycle.label())
}

/// Gigafactory beside the peers, from one run of the suite.
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    pub gigafactory: Run,
    pub peers: Vec<peers::PeerRun>,
}

pub async fn run(args: LoadArgs, gf: &GfCommand) -> anyhow::Result<bool> {
    let mut report = LoadReport {
        machine: machine(),
        nats_server: nats_version(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        raw: Vec::new(),
        protocol: Vec::new(),
        protocol_after: Vec::new(),
        runs: Vec::new(),
        memory: None,
        peers: None,
    };
    if args.peers {
        report.peers = Some(compare(gf, &args, &peers_installed()?).await?);
        return write_report(&args, &report);
    }
    if !args.backlog.is_empty() {
        let workers = args.workers.iter().copied().max().unwrap_or(8);
        for &n in &args.backlog {
            let at_once = LoadArgs {
                jobs: n,
                ..args.clone()
            };
            let label = format!("backlog: {n} jobs at once");
            let fleet = Fleet::new(workers, &label);
            report.runs.extend(fleet_runs(gf, &at_once, fleet).await?);
        }
        for mode in args.auth_modes() {
            let runs: Vec<&Run> = report.runs.iter().filter(|r| r.auth == mode).collect();
            let Some(first) = runs.first() else { continue };
            println!(
                "backlog curve ({workers} workers × {} slots, {}):",
                args.slots,
                mode.as_str()
            );
            for r in &runs {
                println!(
                    "    {:>7} jobs at once: {:>7.0} jobs/s, {:>5.1}% of the {}-job figure (target ≥ 90%)",
                    r.jobs,
                    r.jobs_per_sec,
                    100.0 * r.jobs_per_sec / first.jobs_per_sec,
                    first.jobs
                );
            }
        }
        print_auth_comparison(&report.runs);
        return write_report(&args, &report);
    }
    if let Some(rate) = args.rate {
        let workers = args
            .workers
            .iter()
            .copied()
            .max()
            .context("no worker counts given")?;
        let fleet = Fleet {
            rate: Some(rate),
            ..Fleet::new(workers, "fixed rate")
        };
        report.runs.extend(fleet_runs(gf, &args, fleet).await?);
        print_auth_comparison(&report.runs);
        return write_report(&args, &report);
    }
    for durable in [false, true] {
        let r = raw_ceiling(args.raw_jobs, durable).await?;
        println!(
            "raw JetStream ceiling{}: {:.0} jobs/s ({:.0} round trips/s) over {} jobs",
            if durable {
                " (sync_interval: always)"
            } else {
                ""
            },
            r.jobs_per_sec,
            r.round_trips_per_sec,
            r.jobs
        );
        println!("    CPU ms per job: {:?}", r.cpu_ms_per_job);
        report.raw.push(r);
    }
    let workers = args.workers.iter().copied().max().unwrap_or(8);
    for lifecycle in Lifecycle::ALL {
        let p = protocol_ceiling(args.raw_jobs, workers, args.slots, lifecycle).await?;
        println!(
            "protocol ceiling, {} ({} record writes; trivial logic, {workers} worker connections): {:.0} jobs/s over {} jobs; msgs in/out per job {:.1}/{:.1}",
            p.lifecycle,
            p.writes_per_job,
            p.jobs_per_sec,
            p.jobs,
            p.server_msgs_in_per_job.unwrap_or(f64::NAN),
            p.server_msgs_out_per_job.unwrap_or(f64::NAN),
        );
        println!("    CPU ms per job: {:?}", p.cpu_ms_per_job);
        report.protocol.push(p);
    }
    print_ceiling_ratios(&report);
    if args.ceilings_only {
        return write_report(&args, &report);
    }
    // The best worker count is the first mode's (open, unless only secured is asked).
    let mut best: Option<Run> = None;
    for &w in &args.workers {
        let label = format!("scale-out {w}w");
        let runs = fleet_runs(gf, &args, Fleet::new(w, &label)).await?;
        let r = &runs[0];
        if best
            .as_ref()
            .is_none_or(|b| r.jobs_per_sec > b.jobs_per_sec)
        {
            best = Some(r.clone());
        }
        report.runs.extend(runs);
    }
    let best = best.context("no worker counts given")?;
    if report.protocol_of(Lifecycle::Archived).is_some() {
        let p = protocol_ceiling(args.raw_jobs, workers, args.slots, Lifecycle::Archived).await?;
        println!(
            "protocol ceiling again after the scale-out runs, {}: {:.0} jobs/s over {} jobs",
            p.lifecycle, p.jobs_per_sec, p.jobs
        );
        report.protocol_after.push(p);
    }
    let r = fabric_run(gf, &args).await?;
    print_run(&r);
    report.runs.push(r);
    // At the best worker count: half the max rate (the latency figures), durable
    // storage, and the same no-op as a real process per job (`true`).
    let half = best.jobs_per_sec / 2.0;
    let follow_ups: [(&str, bool, Option<f64>, &[&str]); 3] = [
        ("half of max rate", false, Some(half), NOOP),
        ("durable (sync_interval: always)", true, None, NOOP),
        ("subprocess jobs (`true`)", false, None, &["true"]),
    ];
    for (label, durable, rate, command) in follow_ups {
        let fleet = Fleet {
            durable,
            rate,
            command,
            ..Fleet::new(best.workers, label)
        };
        report.runs.extend(fleet_runs(gf, &args, fleet).await?);
    }
    // The latency floor: the same fleet nearly idle, so the figures are the chain of
    // hops a job takes, without queueing behind other work.
    let floor = LoadArgs {
        jobs: args.jobs.min(LATENCY_FLOOR_JOBS),
        ..args.clone()
    };
    let fleet = Fleet {
        rate: Some(100.0),
        ..Fleet::new(best.workers, "latency floor (100 jobs/s)")
    };
    report.runs.extend(fleet_runs(gf, &floor, fleet).await?);
    print_auth_comparison(&report.runs);
    if args.pending > 0 {
        let m = memory_run(gf, args.pending).await?;
        println!(
            "coordinator RSS: {:.1} MiB idle, {:.1} MiB with {} pending jobs",
            m.coordinator_rss_before_mib, m.coordinator_rss_mib, m.pending_jobs
        );
        report.memory = Some(m);
    }
    let raw = report.raw.first().map(|r| r.jobs_per_sec).unwrap_or(0.0);
    if raw > 0.0 {
        println!(
            "project max {:.0} jobs/s = {:.1}% of the raw ceiling {:.0} jobs/s",
            best.jobs_per_sec,
            100.0 * best.jobs_per_sec / raw,
            raw
        );
    }
    if let Some(p) = report.protocol.first() {
        println!(
            "project max {:.0} jobs/s = {:.1}% of {} as bare messages, {:.0} jobs/s",
            best.jobs_per_sec,
            100.0 * best.jobs_per_sec / p.jobs_per_sec,
            p.lifecycle,
            p.jobs_per_sec
        );
    }
    // The issue 20 target: the fleet against its own lifecycle as bare messages (the
    // built one, archive copy included; without it too, as measured before phase L).
    for (lifecycle, target) in [
        (Lifecycle::Archived, Some(80.0)),
        (Lifecycle::LeaseGrant, None),
    ] {
        let Some(before) = report.protocol_of(lifecycle) else {
            continue;
        };
        let after = report.protocol_after_of(lifecycle).map(|p| p.jobs_per_sec);
        let ceiling = bracketing_ceiling(before.jobs_per_sec, after);
        let share = 100.0 * best.jobs_per_sec / ceiling;
        println!(
            "project max {:.0} jobs/s = {share:.1}% of the built lifecycle as bare messages ({}), {}{}",
            best.jobs_per_sec,
            before.lifecycle,
            match after {
                Some(a) => format!(
                    "{ceiling:.0} jobs/s (mean of {:.0} before and {a:.0} after the fleet's runs; {:.1}% / {:.1}% of each)",
                    before.jobs_per_sec,
                    100.0 * best.jobs_per_sec / before.jobs_per_sec,
                    100.0 * best.jobs_per_sec / a
                ),
                None => format!("{ceiling:.0} jobs/s"),
            },
            match target {
                Some(t) if share >= t => format!(" (target ≥ {t:.0}%: met)"),
                Some(t) => format!(" (target ≥ {t:.0}%: missed)"),
                None => String::new(),
            }
        );
    }
    if !args.no_peers {
        match peers_installed() {
            Ok(installed) => report.peers = Some(compare(gf, &args, &installed).await?),
            Err(e) => println!("peers: not measured ({e:#})"),
        }
    }
    write_report(&args, &report)
}

/// The peers as installed by `scripts/install-peers.sh`, found from the working
/// directory (the repository or a folder in it).
fn peers_installed() -> anyhow::Result<peers::Installed> {
    let cwd = std::env::current_dir()?;
    let root = cwd
        .ancestors()
        .find(|d| d.join("benchmarks/peers").is_dir())
        .with_context(|| format!("no benchmarks/peers in {} or above", cwd.display()))?;
    peers::Installed::find(root)
        .map_err(|e| anyhow::anyhow!("{e}; run scripts/install-peers.sh first"))
}

/// The targets against each peer: Gigafactory's jobs/s must be at least this many
/// times theirs (issue 20: ≥ 1.5× taskiq, ahead of the others).
fn peer_target(system: &str) -> f64 {
    if system.starts_with("taskiq") {
        1.5
    } else {
        1.0
    }
}

/// Gigafactory and every peer with the same jobs and worker count, one after the
/// other on this machine, and the ratios against the targets.
async fn compare(
    gf: &GfCommand,
    args: &LoadArgs,
    installed: &peers::Installed,
) -> anyhow::Result<Comparison> {
    let workers = args.workers.iter().copied().max().unwrap_or(8);
    let ours = LoadArgs {
        jobs: args.peer_jobs,
        ..args.clone()
    };
    let label = format!("Gigafactory, {} jobs", args.peer_jobs);
    let gigafactory = fleet_run(gf, &ours, &Fleet::new(workers, &label), AuthMode::Open).await?;
    print_run(&gigafactory);
    let (jobs, slots) = (args.peer_jobs, args.slots);
    let installed = peers::Installed {
        redis_server: installed.redis_server.clone(),
        venv: installed.venv.clone(),
        apalis: installed.apalis.clone(),
        dir: installed.dir.clone(),
    };
    let peers =
        tokio::task::spawn_blocking(move || peers::run_all(&installed, jobs, workers, slots))
            .await??;
    println!("\nno-op jobs, {jobs} per system, {workers} workers each, this machine:");
    println!(
        "{:<52} {:>9}  {:>8}  {:>7}  CPU ms per job",
        "system", "jobs/s", "ratio", "target"
    );
    let cpu = |m: &HashMap<String, f64>| {
        let mut v: Vec<String> = m.iter().map(|(k, x)| format!("{k} {x:.3}")).collect();
        v.sort();
        v.join(", ")
    };
    println!(
        "{:<52} {:>9.0}  {:>8}  {:>7}  {}",
        format!("Gigafactory ({workers} × {slots} slots)"),
        gigafactory.jobs_per_sec,
        "",
        "",
        cpu(&gigafactory.cpu_ms_per_job)
    );
    for p in &peers {
        let ratio = gigafactory.jobs_per_sec / p.jobs_per_sec;
        let target = peer_target(&p.system);
        println!(
            "{:<52} {:>9.0}  {:>7.2}×  {:>6.1}×  {} [{}]",
            p.system,
            p.jobs_per_sec,
            ratio,
            target,
            cpu(&p.cpu_ms_per_job),
            if ratio >= target { "met" } else { "missed" }
        );
    }
    Ok(Comparison { gigafactory, peers })
}

/// The ceiling the fleet's runs are measured against: the mean of the runs before and
/// after them when both were made (a single run moves too much to stand alone).
fn bracketing_ceiling(before: f64, after: Option<f64>) -> f64 {
    after.map_or(before, |a| (before + a) / 2.0)
}

/// Each protocol ceiling as a share of the raw ceiling measured in the same run.
fn print_ceiling_ratios(report: &LoadReport) {
    let Some(raw) = report.raw.iter().find(|r| !r.durable) else {
        return;
    };
    println!("protocol ceilings, old and new lifecycles side by side:");
    for p in &report.protocol {
        println!(
            "    {:<44} {:<56} {:>7.0} jobs/s  {:>5.1}% of the raw ceiling",
            p.generation,
            p.lifecycle,
            p.jobs_per_sec,
            100.0 * p.jobs_per_sec / raw.jobs_per_sec
        );
    }
    let by = |l: Lifecycle| report.protocol_of(l).map(|p| p.jobs_per_sec);
    if let (Some(old), Some(new)) = (by(Lifecycle::Design), by(Lifecycle::LeaseAtDispatch)) {
        println!("    new / old, by a pass: {:.2}×", new / old);
    }
    if let (Some(old), Some(new)) = (by(Lifecycle::NoticeOnlyDispatch), by(Lifecycle::NoClaim)) {
        println!("    new / old, at submission: {:.2}×", new / old);
    }
    if let (Some(old), Some(new)) = (by(Lifecycle::Design), by(Lifecycle::Archived)) {
        println!("    built / old, by a pass: {:.2}×", new / old);
    }
}

fn write_report(args: &LoadArgs, report: &LoadReport) -> anyhow::Result<bool> {
    if let Some(dir) = args.json.parent() {
        std::fs::create_dir_all(dir).ok();
    }
    std::fs::write(&args.json, serde_json::to_string_pretty(report)?)?;
    println!("figures written to {}", args.json.display());
    Ok(true)
}

fn print_run(r: &Run) {
    let p = |x: &Option<Percentiles>| {
        x.as_ref()
            .map(|p| {
                format!(
                    "p50 {:.1} / p90 {:.1} / p99 {:.1} ms",
                    p.p50_ms, p.p90_ms, p.p99_ms
                )
            })
            .unwrap_or_else(|| "-".into())
    };
    println!(
        "{:<34} {:<7} {:>2} workers: {:>7.1} jobs/s ({}/{} ok in {:.1} s; submit {:.0}/s); submit→done {}; submit→claim {}; msgs in/out per job {:.1}/{:.1}",
        r.label,
        r.auth.as_str(),
        r.workers,
        r.jobs_per_sec,
        r.succeeded,
        r.jobs,
        r.seconds,
        r.submit_per_sec,
        p(&r.submit_to_done),
        p(&r.submit_to_claim),
        r.server_msgs_in_per_job.unwrap_or(f64::NAN),
        r.server_msgs_out_per_job.unwrap_or(f64::NAN),
    );
    println!(
        "    per job: submit→dispatch {}; dispatch→claim {}; claim→done {}; one slot spends {:.1} ms per job; dispatched at submission: {}",
        p(&r.submit_to_dispatch),
        p(&r.dispatch_to_claim),
        p(&r.claim_to_done),
        r.slot_ms_per_job,
        r.dispatched_at_submission
            .map_or("-".into(), |s| format!("{:.0}%", 100.0 * s))
    );
    let mut cpu: Vec<_> = r
        .cpu_ms_per_job
        .iter()
        .map(|(k, v)| format!("{k} {v:.2}"))
        .collect();
    cpu.sort();
    let total = r.cpu_ms_per_job.values().sum::<f64>();
    // How busy the processes kept the machine: a latency figure means little without
    // it (half the max rate, submitted one job per request, is not half the CPU).
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    println!(
        "    CPU ms per job: {} (total {total:.2}; {:.0} % of {cores} cores at {:.0} jobs/s)",
        cpu.join(", "),
        100.0 * total * r.jobs_per_sec / (1000.0 * cores),
        r.jobs_per_sec,
    );
    let mut w: Vec<_> = r.writes_per_job.iter().collect();
    w.sort_by(|a, b| a.0.cmp(b.0));
    println!("    stream writes per job: {w:?}");
}

pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown cpu".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string())
        })
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb / 1024 / 1024)
        .unwrap_or(0);
    format!(
        "{cores} cores ({cpu}), {mem} GiB RAM, {}",
        std::env::consts::OS
    )
}

fn nats_version() -> String {
    std::process::Command::new(gf_testkit::nats_server_bin())
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Resident memory of a process, MiB.
fn rss_mib(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = s
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// CPU time of a process (and its reaped children), ms.
fn cpu_ms(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime, stime, cutime, cstime are fields 14-17 of the line: 11-14 of `rest`.
    let ticks: f64 = f
        .get(11..15)?
        .iter()
        .filter_map(|x| x.parse::<f64>().ok())
        .sum();
    let hz = 100.0; // USER_HZ on Linux.
    Some(ticks * 1000.0 / hz)
}

/// CPU ms so far by kind of part: nats, coordinator, workers; and this process.
fn cpu_by_kind(c: &ProcessCluster) -> HashMap<String, f64> {
    let mut out: HashMap<String, f64> = HashMap::new();
    for p in c.parts() {
        let kind = match p {
            crate::cluster::Part::Nats(_) => "nats-server",
            crate::cluster::Part::Coordinator(_) => "coordinator",
            crate::cluster::Part::Worker(_) => "workers (with jobs)",
        };
        if let Some(ms) = c.pid(p).and_then(cpu_ms) {
            *out.entry(kind.into()).or_default() += ms;
        }
    }
    if let Some(ms) = cpu_ms(std::process::id()) {
        out.insert("load generator (chaos)".into(), ms);
    }
    out
}

/// Last sequence of each Gigafactory stream (KV buckets are `KV_<bucket>` streams).
async fn stream_seqs(js: &jetstream::Context) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    let names = [
        format!("KV_{}", names::BUCKET_JOBS),
        format!("KV_{}", names::BUCKET_IDEM),
        format!("KV_{}", names::BUCKET_WORKERS),
        format!("KV_{}", names::BUCKET_LEADER),
        names::STREAM_DISPATCH.to_string(),
        names::STREAM_EVENTS.to_string(),
        names::STREAM_LOGS.to_string(),
    ];
    for n in names {
        if let Ok(mut s) = js.get_stream(&n).await {
            if let Ok(info) = s.info().await {
                out.insert(n, info.state.last_sequence);
            }
        }
    }
    out
}

/// `in_msgs`, `out_msgs` from the server's `/varz`.
async fn varz(url: &Option<String>) -> Option<(u64, u64)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let url = url.as_ref()?;
    let hostport = url.trim_start_matches("http://").trim_end_matches('/');
    let mut s = tokio::net::TcpStream::connect(hostport).await.ok()?;
    s.write_all(format!("GET /varz HTTP/1.0\r\nHost: {hostport}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf);
    let body = text.split("\r\n\r\n").nth(1)?;
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    Some((v["in_msgs"].as_u64()?, v["out_msgs"].as_u64()?))
}

/// One measurement's cluster: NATS and one coordinator, its buckets and streams made.
struct Bench {
    cluster: ProcessCluster,
    client: async_nats::Client,
    js: jetstream::Context,
    coord: Part,
}

impl Bench {
    async fn start(gf: &GfCommand, spec: ClusterSpec) -> anyhow::Result<Self> {
        let gf2 = gf.clone();
        let mut cluster =
            tokio::task::spawn_blocking(move || ProcessCluster::start(spec, gf2)).await??;
        let client = connect(&cluster).await?;
        let js = jetstream::new(client.clone());
        let (coord, _) = cluster.add_coordinator()?;
        wait_store(&js).await?;
        // The buckets exist a moment before the coordinator's RPC subscription does.
        crate::harness::eventually(Duration::from_secs(60), "the RPC plane", || async {
            let probe = client.request(rpc::BUDGET_LIST, "{}".into());
            tokio::time::timeout(Duration::from_secs(2), probe)
                .await
                .ok()?
                .ok()
                .map(|_| ())
        })
        .await?;
        Ok(Self {
            cluster,
            client,
            js,
            coord,
        })
    }
}

/// The counters a run's per-job figures are the differences of.
struct Counters {
    /// Last sequence per stream.
    seqs: HashMap<String, u64>,
    /// The server's messages in / out.
    varz: Option<(u64, u64)>,
    /// CPU ms per kind of process.
    cpu: HashMap<String, f64>,
}

/// Stream writes, server messages and CPU per job between two [`Counters`].
struct PerJob {
    writes: HashMap<String, f64>,
    msgs_in: Option<f64>,
    msgs_out: Option<f64>,
    cpu_ms: HashMap<String, f64>,
}

impl Counters {
    async fn read(cluster: &ProcessCluster, js: &jetstream::Context) -> Self {
        Self {
            seqs: stream_seqs(js).await,
            varz: varz(&cluster.monitor_url(0)).await,
            cpu: cpu_by_kind(cluster),
        }
    }

    fn per_job(&self, after: &Counters, n: usize) -> PerJob {
        let n = n as f64;
        let (msgs_in, msgs_out) = match (self.varz, after.varz) {
            (Some((i0, o0)), Some((i1, o1))) => {
                (Some((i1 - i0) as f64 / n), Some((o1 - o0) as f64 / n))
            }
            _ => (None, None),
        };
        PerJob {
            writes: after
                .seqs
                .iter()
                .map(|(k, a)| {
                    let b = self.seqs.get(k).copied().unwrap_or(0);
                    (k.clone(), (a - b) as f64 / n)
                })
                .collect(),
            msgs_in,
            msgs_out,
            cpu_ms: after
                .cpu
                .iter()
                .map(|(k, a)| (k.clone(), (a - self.cpu.get(k).copied().unwrap_or(0.0)) / n))
                .collect(),
        }
    }
}

pub(crate) fn load_timings() -> Timings {
    Timings {
        lease_ttl: Duration::from_secs(30),
        claim_timeout: Duration::from_secs(15),
        reaper_period: Duration::from_millis(500),
        ..Default::default()
    }
}

/// What one fleet measurement runs: how many workers, the store's durability, the
/// submission rate (`None`: as fast as possible), the jobs' command, its label.
#[derive(Clone, Debug)]
struct Fleet<'a> {
    workers: usize,
    durable: bool,
    rate: Option<f64>,
    command: &'a [&'a str],
    label: &'a str,
}

impl<'a> Fleet<'a> {
    /// No-op jobs as fast as possible, in memory.
    fn new(workers: usize, label: &'a str) -> Self {
        Self {
            workers,
            durable: false,
            rate: None,
            command: NOOP,
            label,
        }
    }
}

/// The fleet measurement once per mode of `--auth`, one right after the other (so both
/// see the same machine), each printed as it ends.
async fn fleet_runs(gf: &GfCommand, args: &LoadArgs, fleet: Fleet<'_>) -> anyhow::Result<Vec<Run>> {
    let mut runs = Vec::new();
    for mode in args.auth_modes() {
        let r = fleet_run(gf, args, &fleet, mode).await?;
        print_run(&r);
        runs.push(r);
    }
    Ok(runs)
}

/// The runs made both open and secured, side by side: what authentication costs.
/// Nothing when only one mode ran.
fn print_auth_comparison(runs: &[Run]) {
    let pairs: Vec<(&Run, &Run)> = runs
        .iter()
        .filter(|o| o.auth == AuthMode::Open)
        .filter_map(|o| {
            runs.iter()
                .find(|s| {
                    s.auth == AuthMode::Secured
                        && s.label == o.label
                        && s.workers == o.workers
                        && s.jobs == o.jobs
                })
                .map(|s| (o, s))
        })
        .collect();
    if pairs.is_empty() {
        return;
    }
    let p = |x: &Option<Percentiles>| {
        x.as_ref()
            .map(|p| format!("{:.1}/{:.1}", p.p50_ms, p.p99_ms))
            .unwrap_or_else(|| "-".into())
    };
    let cpu = |r: &Run| r.cpu_ms_per_job.values().sum::<f64>();
    println!("\nopen vs secured NATS (same jobs, workers and rate; secured = auth callout, enrolled factories):");
    println!(
        "{:<34} {:<8} {:>9} {:>8} {:>15} {:>15} {:>11} {:>13}",
        "run",
        "auth",
        "jobs/s",
        "ratio",
        "done p50/p99",
        "claim p50/p99",
        "CPU ms/job",
        "msgs in/out"
    );
    for (o, s) in pairs {
        for r in [o, s] {
            println!(
                "{:<34} {:<8} {:>9.1} {:>8} {:>15} {:>15} {:>11.2} {:>13}",
                r.label,
                r.auth.as_str(),
                r.jobs_per_sec,
                if r.auth == AuthMode::Secured {
                    format!("{:.3}×", s.jobs_per_sec / o.jobs_per_sec)
                } else {
                    String::new()
                },
                p(&r.submit_to_done),
                p(&r.submit_to_claim),
                cpu(r),
                format!(
                    "{:.1}/{:.1}",
                    r.server_msgs_in_per_job.unwrap_or(f64::NAN),
                    r.server_msgs_out_per_job.unwrap_or(f64::NAN)
                ),
            );
        }
    }
}

/// One measurement: a fresh cluster with one coordinator and `fleet.workers` worker
/// processes; `--jobs` jobs submitted as fast as possible (or at `fleet.rate`/s), NATS
/// open or secured (`auth`).
async fn fleet_run(
    gf: &GfCommand,
    args: &LoadArgs,
    fleet: &Fleet<'_>,
    auth: AuthMode,
) -> anyhow::Result<Run> {
    let Fleet {
        workers,
        durable,
        rate,
        command,
        label,
    } = *fleet;
    let spec = ClusterSpec {
        nats_nodes: 1,
        durable,
        timings: load_timings(),
        secured: auth == AuthMode::Secured,
        ..Default::default()
    };
    let Bench {
        mut cluster,
        client,
        js,
        coord,
    } = Bench::start(gf, spec).await?;
    for i in 0..workers {
        cluster.add_worker(WorkerSpec::new(format!("load{i}"), args.slots))?;
    }
    wait_active(&js, workers).await?;
    let n = args.jobs;
    let rpc = RpcClient::new(client.clone(), Duration::from_secs(30));
    let waiter = count_successes(&client, n, Duration::from_secs(30)).await?;
    let before = Counters::read(&cluster, &js).await;
    let started = Instant::now();
    let spec = JobSpec::command(command.iter().copied());
    let body: bytes::Bytes = serde_json::to_vec(&spec)?.into();
    let ids = match rate {
        None => submit_fast(&rpc, &body, n, args).await?,
        Some(rate) => {
            let interval = Duration::from_secs_f64(1.0 / rate);
            let ids: Vec<anyhow::Result<JobId>> = futures::stream::iter(0..n)
                .map(|i| {
                    let rpc = rpc.clone();
                    let body = body.clone();
                    async move {
                        // Each submission waits for its slot in the schedule.
                        tokio::time::sleep_until((started + interval * i as u32).into()).await;
                        rpc.call_raw::<SubmitReply>(rpc::SUBMIT, body)
                            .await
                            .map(|r| r.job_id)
                            .map_err(anyhow::Error::from)
                    }
                })
                .buffer_unordered(4096)
                .collect()
                .await;
            ids.into_iter().collect::<anyhow::Result<_>>()?
        }
    };
    let submitted = started.elapsed();
    let finished = waiter.await?;
    let seconds = finished.duration_since(started).as_secs_f64();
    // Every job's completion has landed (its event came after the write). Counted
    // before the records are read back: that read is the suite's, not the jobs'.
    let per_job = before.per_job(&Counters::read(&cluster, &js).await, n);
    let records = crate::audit::read_jobs(&js).await?;
    let by_id: HashMap<JobId, &gf_schemas::JobRecord> = records.iter().map(|r| (r.id, r)).collect();
    let events = crate::audit::read_events(&js).await.unwrap_or_default();
    let mut dispatched: HashMap<JobId, gf_schemas::Timestamp> = HashMap::new();
    let mut at_submission = 0;
    for e in &events {
        if e.kind == gf_schemas::EventKind::JobDispatched {
            if let Some(j) = e.job_id {
                if let std::collections::hash_map::Entry::Vacant(first) = dispatched.entry(j) {
                    first.insert(e.time);
                    at_submission += usize::from(e.message == gf_coordinator::lane::EVENT_MESSAGE);
                }
            }
        }
    }
    let (mut to_dispatch, mut d_to_claim, mut claim_to_done) = (Vec::new(), Vec::new(), Vec::new());
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let Latencies {
        succeeded,
        to_done,
        to_claim,
    } = latencies(&ids, &by_id);
    for id in &ids {
        let Some(r) = by_id.get(id) else { continue };
        if let Some(a) = r.history.first() {
            if let Some(d) = dispatched.get(id) {
                to_dispatch.push(ms(d.since(r.submitted_at)));
                d_to_claim.push(ms(a.started_at.since(*d)));
            }
            if let Some(end) = a.ended_at {
                claim_to_done.push(ms(end.since(a.started_at)));
            }
        }
    }
    let rss = cluster.pid(coord).and_then(rss_mib);
    let factories = match auth {
        AuthMode::Open => None,
        AuthMode::Secured => Some(
            gf_auth::store::Store::open(&js, 1)
                .await?
                .factories()
                .await?
                .iter()
                .filter(|f| f.state == gf_auth::store::FactoryState::Active)
                .count(),
        ),
    };
    if succeeded < n {
        eprintln!("chaos load: only {succeeded} of {n} jobs succeeded in {label}");
    }
    Ok(Run {
        label: label.into(),
        auth,
        factories,
        workers,
        slots: args.slots,
        durable,
        rate,
        jobs: n,
        succeeded,
        seconds,
        jobs_per_sec: succeeded as f64 / seconds,
        submit_per_sec: n as f64 / submitted.as_secs_f64(),
        submit_to_done: percentiles(to_done),
        submit_to_claim: percentiles(to_claim),
        submit_to_dispatch: percentiles(to_dispatch),
        dispatch_to_claim: percentiles(d_to_claim),
        claim_to_done: percentiles(claim_to_done),
        dispatched_at_submission: Some(at_submission as f64 / n as f64),
        slot_ms_per_job: 1000.0 * (workers as f64 * args.slots as f64) * seconds
            / succeeded.max(1) as f64,
        writes_per_job: per_job.writes,
        server_msgs_in_per_job: per_job.msgs_in,
        server_msgs_out_per_job: per_job.msgs_out,
        coordinator_rss_mib: rss,
        cpu_ms_per_job: per_job.cpu_ms,
    })
}

/// Counts the jobs the `JobSucceeded` events report (core subscription on the events
/// stream's subjects) until `n` succeeded, or none came for `idle`; the task returns
/// when it stopped. Subscribed and flushed before this returns, so every job submitted
/// afterwards is seen.
pub async fn count_successes(
    client: &async_nats::Client,
    n: usize,
    idle: Duration,
) -> anyhow::Result<tokio::task::JoinHandle<Instant>> {
    let mut done_sub = client
        .subscribe(names::event(gf_schemas::EventKind::JobSucceeded))
        .await?;
    client.flush().await?;
    Ok(tokio::spawn(async move {
        let mut done = 0;
        while done < n {
            match tokio::time::timeout(idle, done_sub.next()).await {
                Ok(Some(m)) => {
                    done += gf_schemas::decode_events(&m.payload).map_or(0, |e| e.len());
                }
                _ => break,
            }
        }
        Instant::now()
    }))
}

/// What the records of a run's jobs say, in milliseconds.
pub struct Latencies {
    pub succeeded: usize,
    /// Submission to the end of the last attempt, of each job that succeeded.
    pub to_done: Vec<f64>,
    /// Submission to the claim of the first attempt, of each job that ran.
    pub to_claim: Vec<f64>,
}

pub fn latencies(ids: &[JobId], by_id: &HashMap<JobId, &gf_schemas::JobRecord>) -> Latencies {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut l = Latencies {
        succeeded: 0,
        to_done: Vec::new(),
        to_claim: Vec::new(),
    };
    for id in ids {
        let Some(r) = by_id.get(id) else { continue };
        if r.state == JobState::Succeeded {
            l.succeeded += 1;
            if let Some(end) = r.history.last().and_then(|a| a.ended_at) {
                l.to_done.push(ms(end.since(r.submitted_at)));
            }
        }
        if let Some(a) = r.history.first() {
            l.to_claim.push(ms(a.started_at.since(r.submitted_at)));
        }
    }
    l
}

/// Submits `n` jobs of one spec (`body`) as fast as possible: `--submit-batch` jobs per
/// request, `--inflight` requests at once. Fails on the first refused job.
pub(crate) async fn submit_fast(
    rpc: &RpcClient,
    body: &bytes::Bytes,
    n: usize,
    args: &LoadArgs,
) -> anyhow::Result<Vec<JobId>> {
    let per = usize::from(args.submit_batch);
    let sizes: Vec<usize> = (0..n).step_by(per).map(|i| per.min(n - i)).collect();
    let chunks: Vec<anyhow::Result<Vec<JobId>>> = futures::stream::iter(sizes)
        .map(|k| async move {
            if k == 1 {
                let r: SubmitReply = rpc.call_raw(rpc::SUBMIT, body.clone()).await?;
                return Ok(vec![r.job_id]);
            }
            let mut batch = Vec::with_capacity(2 + k * (body.len() + 1));
            gf_schemas::rpc::append_json_array(&mut batch, std::iter::repeat_n(body.as_ref(), k));
            let replies: gf_schemas::rpc::BatchReply<SubmitReply> =
                rpc.call_raw(rpc::SUBMIT_BATCH, batch.into()).await?;
            replies
                .into_iter()
                .map(|r| {
                    r.into_result().map(|r| r.job_id).map_err(|e| {
                        anyhow::anyhow!("submit refused: {}: {}", e.kind.as_str(), e.message)
                    })
                })
                .collect()
        })
        .buffer_unordered(args.inflight)
        .collect()
        .await;
    let mut ids = Vec::with_capacity(n);
    for c in chunks {
        ids.extend(c?);
    }
    Ok(ids)
}

/// Waits until the coordinator has created every bucket and stream.
async fn wait_store(js: &jetstream::Context) -> anyhow::Result<()> {
    crate::harness::eventually(
        Duration::from_secs(60),
        "the buckets and streams",
        || async {
            for b in [
                names::BUCKET_JOBS,
                names::BUCKET_WORKERS,
                names::BUCKET_IDEM,
                names::BUCKET_LEADER,
            ] {
                js.get_key_value(b).await.ok()?;
            }
            for s in [
                names::STREAM_DISPATCH,
                names::STREAM_EVENTS,
                names::STREAM_LOGS,
            ] {
                js.get_stream(s).await.ok()?;
            }
            Some(())
        },
    )
    .await
}

async fn wait_active(js: &jetstream::Context, n: usize) -> anyhow::Result<()> {
    gf_testkit::wait_active_workers(js, n, Duration::from_secs(60)).await
}

/// Coordinator memory with `n` pending jobs (no workers).
async fn memory_run(gf: &GfCommand, n: usize) -> anyhow::Result<Memory> {
    let spec = ClusterSpec {
        timings: load_timings(),
        ..Default::default()
    };
    let Bench {
        cluster,
        client,
        js,
        coord,
    } = Bench::start(gf, spec).await?;
    // A registered worker that never claims: the jobs stay `pending` (with no worker
    // at all they would be written `blocked`, unplaceable — a different load).
    let worker = crate::harness::eventually(
        Duration::from_secs(30),
        "the coordinator to register a worker",
        || async {
            crate::scenarios::FakeWorker::register(
                client.clone(),
                "idle",
                gf_schemas::DEFAULT_QUEUE,
            )
            .await
            .ok()
        },
    )
    .await?;
    wait_active(&js, 1).await?;
    let pid = cluster.pid(coord).context("coordinator pid")?;
    let before = rss_mib(pid).unwrap_or(0.0);
    let rpc = RpcClient::new(client.clone(), Duration::from_secs(30));
    let body: bytes::Bytes = serde_json::to_vec(&JobSpec::command(["true"]))?.into();
    let results: Vec<bool> = futures::stream::iter(0..n)
        .map(|_| {
            let rpc = rpc.clone();
            let body = body.clone();
            async move { rpc.call_raw::<SubmitReply>(rpc::SUBMIT, body).await.is_ok() }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let ok = results.iter().filter(|b| **b).count();
    if ok < n {
        bail!("only {ok} of {n} submissions accepted");
    }
    // The leader's view is fed by a watch: wait until the coordinator's memory stops
    // moving (unchanged over two seconds), at most 30 s.
    let mut last = rss_mib(pid).unwrap_or(0.0);
    let mut steady = 0;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = rss_mib(pid).unwrap_or(0.0);
        steady = if (now - last).abs() < 0.5 {
            steady + 1
        } else {
            0
        };
        last = now;
        if steady >= 2 {
            break;
        }
    }
    drop(worker);
    Ok(Memory {
        pending_jobs: n,
        coordinator_rss_mib: last,
        coordinator_rss_before_mib: before,
    })
}

/// A NATS server with no Gigafactory on it, a KV bucket of job records (file storage,
/// one revision kept) and a work-queue stream on one subject: what the ceilings run on.
struct Bare {
    cluster: ProcessCluster,
    client: async_nats::Client,
    js: jetstream::Context,
    kv: kv::Store,
    stream: stream::Stream,
}

impl Bare {
    async fn start(
        durable: bool,
        bucket: &str,
        stream_name: &str,
        subject: &str,
    ) -> anyhow::Result<Self> {
        let cluster = tokio::task::spawn_blocking(move || {
            ProcessCluster::start(
                ClusterSpec {
                    durable,
                    ..Default::default()
                },
                GfCommand::external(PathBuf::from("/bin/false")),
            )
        })
        .await??;
        let client = connect(&cluster).await?;
        let js = jetstream::new(client.clone());
        let kv = js
            .create_key_value(kv::Config {
                bucket: bucket.into(),
                history: 1,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await?;
        let stream = js
            .create_stream(stream::Config {
                name: stream_name.into(),
                subjects: vec![subject.into()],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await?;
        Ok(Self {
            cluster,
            client,
            js,
            kv,
            stream,
        })
    }
}

/// The raw JetStream pipeline a job system needs per job, without Gigafactory:
/// KV create (the job record), publish to a work stream (pipelined, acks awaited
/// concurrently), fetch + ack from a pull consumer, KV compare-and-set (the claim).
async fn raw_ceiling(n: usize, durable: bool) -> anyhow::Result<Raw> {
    let Bare {
        cluster,
        client: _,
        js,
        kv,
        stream,
    } = Bare::start(durable, "raw_jobs", "RAW_WORK", "raw.work").await?;
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("raw".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: 100_000,
            ..Default::default()
        })
        .await?;
    let payload: bytes::Bytes = vec![b'x'; 400].into();
    let cpu_before = cpu_by_kind(&cluster);
    let started = Instant::now();
    let done = Arc::new(AtomicUsize::new(0));
    let (kv2, d2, p2) = (kv.clone(), done.clone(), payload.clone());
    let worker = tokio::spawn(async move {
        let msgs = consumer.messages().await?;
        msgs.take(n)
            .for_each_concurrent(256, |m| {
                let kv = kv2.clone();
                let d = d2.clone();
                let p = p2.clone();
                async move {
                    let Ok(m) = m else { return };
                    let text = String::from_utf8_lossy(&m.payload).to_string();
                    let mut it = text.split(' ');
                    let (Some(key), Some(rev)) =
                        (it.next(), it.next().and_then(|r| r.parse().ok()))
                    else {
                        return;
                    };
                    if kv.update(key, p, rev).await.is_ok() {
                        let _ = m.ack().await;
                        d.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
            .await;
        anyhow::Ok(())
    });
    let produced: Vec<anyhow::Result<()>> = futures::stream::iter(0..n)
        .map(|i| {
            let kv = kv.clone();
            let js = js.clone();
            let p = payload.clone();
            async move {
                let key = format!("job{i}");
                let rev = kv.create(&key, p).await?;
                js.publish("raw.work", format!("{key} {rev}").into())
                    .await?
                    .await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(256)
        .collect()
        .await;
    produced.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    tokio::time::timeout(Duration::from_secs(120), worker)
        .await
        .context("raw consumer did not finish")???;
    let seconds = started.elapsed().as_secs_f64();
    let ok = done.load(Ordering::Relaxed);
    let cpu_after = cpu_by_kind(&cluster);
    drop(cluster);
    Ok(Raw {
        durable,
        jobs: ok,
        seconds,
        jobs_per_sec: ok as f64 / seconds,
        round_trips_per_sec: 4.0 * ok as f64 / seconds,
        cpu_ms_per_job: cpu_after
            .iter()
            .map(|(k, a)| {
                (
                    k.clone(),
                    (a - cpu_before.get(k).copied().unwrap_or(0.0)) / ok.max(1) as f64,
                )
            })
            .collect(),
    })
}

/// A job's lifecycle, as messages, for [`protocol_ceiling`].
#[derive(Clone, Copy, Debug, PartialEq)]
enum Lifecycle {
    /// The design's: create, dispatch (write + notice), claim (request + write), complete
    /// (request + write).
    Design,
    /// Dispatch as a notice only (no write); the claim is the first write after create.
    NoticeOnlyDispatch,
    /// Also no claim: the worker that takes the notice runs the job and completes it.
    /// What leasing at dispatch costs for a job that finds a worker with room at
    /// submission (the direct lane): the create writes the record already leased.
    NoClaim,
    /// The candidate lifecycle of issue 20 for a job dispatched by a pass: the leader
    /// writes the record running under the chosen worker's lease (the dispatch write)
    /// and publishes the notice; the worker runs the job and completes it. No claim
    /// request, no claim write.
    LeaseAtDispatch,
    /// What issue 20 built: leased at dispatch as [`Self::LeaseAtDispatch`], but the grant
    /// is a plain publish on the chosen worker's own subject (not stored, no pull, no
    /// ack), as `gf.ctl.worker.<id>` carries it. One message per job here (the real
    /// leader sends one per worker per pass).
    LeaseGrant,
    /// What issue 20 built, whole: [`Self::LeaseGrant`] and the archive copy the leader
    /// publishes for every finished record it sees in its watch (issue 19's archive,
    /// taken over by the leader in issue 20 phase E): a publish with a message id to a
    /// compressed file stream with a duplicate window, its ack awaited. A stored write
    /// per job that [`Self::LeaseGrant`] leaves out.
    Archived,
    /// No coordinator on the job's path: the submitter creates the record and publishes
    /// the notice itself, the worker writes `running` (its lease) and `done` with
    /// compare-and-sets of its own, and the coordinator only watches. Outside the
    /// design (workers never write the store there); the least a job with a lease and
    /// an observer costs.
    WorkersWrite,
}

impl Lifecycle {
    const ALL: [Lifecycle; 7] = [
        Self::Design,
        Self::NoticeOnlyDispatch,
        Self::LeaseAtDispatch,
        Self::NoClaim,
        Self::LeaseGrant,
        Self::Archived,
        Self::WorkersWrite,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Design => "the design's lifecycle",
            Self::NoticeOnlyDispatch => "dispatch as a notice only",
            Self::LeaseAtDispatch => "lease at dispatch",
            Self::NoClaim => "dispatch as a notice only, no claim",
            Self::LeaseGrant => "lease at dispatch, granted on the worker's subject",
            Self::Archived => "lease granted on the worker's subject, archived",
            Self::WorkersWrite => "workers write the records (no coordinator on the path)",
        }
    }

    /// Which lifecycle it stands for: today's (a pass's dispatch, and the direct
    /// lane's), the candidate of issue 20 (leasing at dispatch, by a pass and by the
    /// lane), or one the design rules out.
    fn generation(self) -> &'static str {
        match self {
            Self::Design => "today, dispatched by a pass",
            Self::NoticeOnlyDispatch => "today, dispatched at submission (direct lane)",
            Self::LeaseAtDispatch => "new (lease at dispatch), by a pass",
            Self::NoClaim => "new (lease at dispatch), at submission",
            Self::LeaseGrant => "built (issue 20 phase B), by a pass, no archive",
            Self::Archived => "built (issue 20 phases B and E), by a pass",
            Self::WorkersWrite => "outside the design",
        }
    }

    fn writes(self) -> u32 {
        match self {
            Self::Design => 4,
            Self::NoticeOnlyDispatch => 3,
            Self::LeaseAtDispatch => 3,
            Self::NoClaim => 2,
            Self::LeaseGrant => 3,
            Self::Archived => 4,
            Self::WorkersWrite => 3,
        }
    }

    /// Whether the grant is a plain publish on the chosen worker's own subject.
    fn grants(self) -> bool {
        matches!(self, Self::LeaseGrant | Self::Archived)
    }

    /// Whether the worker asks for the job (a claim request) before running it.
    fn claims(self) -> bool {
        matches!(self, Self::Design | Self::NoticeOnlyDispatch)
    }
}

/// The design's message pattern with trivial logic: what a job's lifecycle costs in
/// messages alone on this machine, an upper bound for any implementation of it that
/// sends one message per step (no batching). Per job: a submit request answered after
/// a KV create; every record write delivered to the "leader" by a watch of the whole
/// bucket; on seeing a new job, a KV compare-and-set (dispatched) and a notice
/// published with an ack to a work-queue stream; a worker pulls and acks the notice,
/// sends a claim request (answered after a compare-and-set) and a completion request
/// (the same). The "coordinator" has one connection (RPCs, writes, watch), each
/// "worker" one, the submitter one, all in this process; no JSON, no planning, no
/// events, 600-byte records. The other [`Lifecycle`]s leave steps out or move them to
/// the submitter and the workers, to show what a change to the design's lifecycle
/// would buy.
async fn protocol_ceiling(
    n: usize,
    workers: usize,
    slots: u32,
    lifecycle: Lifecycle,
) -> anyhow::Result<Protocol> {
    use std::sync::Mutex;
    const SUBMIT: &str = "proto.rpc.submit";
    const CLAIM: &str = "proto.rpc.claim";
    const COMPLETE: &str = "proto.rpc.complete";
    const NOTICES: &str = "proto.dispatch";
    const GRANTS: &str = "proto.grant";
    const BUCKET: &str = "proto_jobs";
    const ARCHIVE: &str = "proto.archive";
    // The coordinator's connection is the one `Bare` opens.
    let Bare {
        cluster,
        client: coord,
        js,
        kv,
        stream,
    } = Bare::start(false, BUCKET, "PROTO_DISPATCH", NOTICES).await?;
    if lifecycle == Lifecycle::Archived {
        // The archive stream's settings that cost per message (`GF_ARCHIVE`'s).
        js.create_stream(stream::Config {
            name: "PROTO_ARCHIVE".into(),
            subjects: vec![format!("{ARCHIVE}.>")],
            storage: stream::StorageType::File,
            compression: Some(stream::Compression::S2),
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await?;
    }
    stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("proto".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await?;
    // A record: its state in the first byte, padding for the rest.
    let record = |state: u8| -> bytes::Bytes {
        let mut v = vec![b'x'; 600];
        v[0] = state;
        v.into()
    };
    // The last revision written per job (writes race with the watch, so keep the max).
    let revs: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let note = |revs: &Mutex<HashMap<String, u64>>, key: &str, rev: u64| {
        let mut r = revs.lock().expect("revs");
        let e = r.entry(key.to_string()).or_default();
        *e = (*e).max(rev);
    };
    // The roles' loops, and the handlers they start (one per request or new job, as
    // the real coordinator does, so they run on both cores).
    let mut tasks = tokio::task::JoinSet::new();
    let handlers = tokio_util::task::TaskTracker::new();
    // The coordinator's RPC plane.
    let mut rpcs = coord.subscribe("proto.rpc.*").await?;
    {
        let (coord, kv, revs, handlers) =
            (coord.clone(), kv.clone(), revs.clone(), handlers.clone());
        tasks.spawn(async move {
            let next_id = Arc::new(AtomicUsize::new(0));
            while let Some(msg) = rpcs.next().await {
                let Some(reply) = msg.reply.clone() else {
                    continue;
                };
                let (coord, kv, revs, next_id) =
                    (coord.clone(), kv.clone(), revs.clone(), next_id.clone());
                handlers.spawn(async move {
                    let key = match msg.subject.as_str() {
                        SUBMIT => {
                            let key = format!("j{}", next_id.fetch_add(1, Ordering::Relaxed));
                            let Ok(rev) = kv.create(&key, record(b'P')).await else {
                                return;
                            };
                            note(&revs, &key, rev);
                            key
                        }
                        subject => {
                            let key = String::from_utf8_lossy(&msg.payload).to_string();
                            let state = if subject == CLAIM { b'R' } else { b'D' };
                            let rev = revs.lock().expect("revs").get(&key).copied().unwrap_or(0);
                            let Ok(rev) = kv.update(&key, record(state), rev).await else {
                                return;
                            };
                            note(&revs, &key, rev);
                            key
                        }
                    };
                    let _ = coord.publish(reply, key.into()).await;
                });
            }
        });
    }
    // Jobs through their whole lifecycle: completed, or with an archive, archived.
    let done = Arc::new(AtomicUsize::new(0));
    let all_done = Arc::new(tokio::sync::Notify::new());
    // The leader: a watch of every record write; a new job is dispatched.
    let mut watch = kv.watch_all().await?;
    {
        let (kv, js, revs, handlers) = (kv.clone(), js.clone(), revs.clone(), handlers.clone());
        let (coord, done, all_done) = (coord.clone(), done.clone(), all_done.clone());
        let granted = Arc::new(AtomicUsize::new(0));
        tasks.spawn(async move {
            while let Some(Ok(e)) = watch.next().await {
                if e.value.first() == Some(&b'D') && lifecycle == Lifecycle::Archived {
                    // The finished record's archive copy, as the leader's archiver
                    // publishes it: its own subject, a message id, the ack awaited.
                    let (js, done, all_done) = (js.clone(), done.clone(), all_done.clone());
                    handlers.spawn(async move {
                        let mut headers = async_nats::HeaderMap::new();
                        headers.insert("Nats-Msg-Id", format!("{}.{}", e.key, e.revision).as_str());
                        let subject = format!("{ARCHIVE}.{}", e.key);
                        let Ok(ack) = js.publish_with_headers(subject, headers, e.value).await
                        else {
                            return;
                        };
                        if ack.await.is_ok() && done.fetch_add(1, Ordering::Relaxed) + 1 == n {
                            all_done.notify_one();
                        }
                    });
                    continue;
                }
                // With workers writing, the coordinator only observes.
                if e.value.first() != Some(&b'P') || lifecycle == Lifecycle::WorkersWrite {
                    continue;
                }
                let (kv, js, revs) = (kv.clone(), js.clone(), revs.clone());
                let (coord, granted) = (coord.clone(), granted.clone());
                handlers.spawn(async move {
                    // Before the notice goes out: the submit handler may not have
                    // noted the create's revision yet when the claim or completion comes.
                    note(&revs, &e.key, e.revision);
                    // The design's dispatch write; or, leasing at dispatch, the write
                    // that makes the record running under the chosen worker's lease.
                    let dispatch_write = match lifecycle {
                        Lifecycle::Design => Some(b'S'),
                        Lifecycle::LeaseAtDispatch
                        | Lifecycle::LeaseGrant
                        | Lifecycle::Archived => Some(b'R'),
                        _ => None,
                    };
                    if let Some(state) = dispatch_write {
                        let Ok(rev) = kv.update(&e.key, record(state), e.revision).await else {
                            return;
                        };
                        note(&revs, &e.key, rev);
                    }
                    if lifecycle.grants() {
                        // To the chosen worker (round robin), on its own subject.
                        let w = granted.fetch_add(1, Ordering::Relaxed) % workers;
                        let _ = coord
                            .publish(format!("{GRANTS}.{w}"), e.key.clone().into())
                            .await;
                        return;
                    }
                    if let Ok(ack) = js.publish(NOTICES, e.key.clone().into()).await {
                        let _ = ack.await;
                    }
                });
            }
        });
    }
    // Workers: pull, ack, claim, complete, `slots` at a time each.
    for w in 0..workers {
        let client = connect(&cluster).await?;
        if lifecycle.grants() {
            // Its grants come on its own subject; it runs each and completes it.
            let grants = client.subscribe(format!("{GRANTS}.{w}")).await?;
            // The server has the subscription before any grant is sent.
            client.flush().await?;
            let (done, all_done) = (done.clone(), all_done.clone());
            tasks.spawn(async move {
                grants
                    .for_each_concurrent(slots as usize, |m| {
                        let (client, done, all_done) =
                            (client.clone(), done.clone(), all_done.clone());
                        async move {
                            // With an archive, a job is done once archived.
                            if client.request(COMPLETE, m.payload).await.is_ok()
                                && lifecycle != Lifecycle::Archived
                                && done.fetch_add(1, Ordering::Relaxed) + 1 == n
                            {
                                all_done.notify_one();
                            }
                        }
                    })
                    .await;
            });
            continue;
        }
        let consumer: consumer::PullConsumer = jetstream::new(client.clone())
            .get_stream("PROTO_DISPATCH")
            .await?
            .get_consumer("proto")
            .await
            .map_err(|e| anyhow::anyhow!("proto consumer: {e}"))?;
        // The worker's own handle on the records, used only when workers write them.
        let worker_kv = jetstream::new(client.clone()).get_key_value(BUCKET).await?;
        let (done, all_done) = (done.clone(), all_done.clone());
        tasks.spawn(async move {
            let Ok(msgs) = consumer.messages().await else {
                return;
            };
            msgs.for_each_concurrent(slots as usize, |m| {
                let (client, kv, done, all_done) = (
                    client.clone(),
                    worker_kv.clone(),
                    done.clone(),
                    all_done.clone(),
                );
                async move {
                    let Ok(m) = m else { return };
                    let key = m.payload.clone();
                    let _ = m.ack().await;
                    if lifecycle == Lifecycle::WorkersWrite {
                        // The notice carries the create's revision: "key revision".
                        let text = String::from_utf8_lossy(&key);
                        let Some((key, rev)) = text.split_once(' ') else {
                            return;
                        };
                        let Ok(rev) = rev.parse::<u64>() else { return };
                        let Ok(rev) = kv.update(key, record(b'R'), rev).await else {
                            return;
                        };
                        if kv.update(key, record(b'D'), rev).await.is_ok()
                            && done.fetch_add(1, Ordering::Relaxed) + 1 == n
                        {
                            all_done.notify_one();
                        }
                        return;
                    }
                    if lifecycle.claims() && client.request(CLAIM, key.clone()).await.is_err() {
                        return;
                    }
                    if client.request(COMPLETE, key).await.is_ok()
                        && done.fetch_add(1, Ordering::Relaxed) + 1 == n
                    {
                        all_done.notify_one();
                    }
                }
            })
            .await;
        });
    }
    let submitter = connect(&cluster).await?;
    let submitter_js = jetstream::new(submitter.clone());
    let submitter_kv = submitter_js.get_key_value(BUCKET).await?;
    coord.flush().await?;
    let before = Counters::read(&cluster, &js).await;
    let started = Instant::now();
    let finished = all_done.notified();
    futures::stream::iter(0..n)
        .for_each_concurrent(64, |i| {
            let (s, js, kv) = (
                submitter.clone(),
                submitter_js.clone(),
                submitter_kv.clone(),
            );
            async move {
                if lifecycle != Lifecycle::WorkersWrite {
                    let _ = s.request(SUBMIT, bytes::Bytes::new()).await;
                    return;
                }
                // The submitter writes the record and publishes its notice itself.
                let key = format!("j{i}");
                let Ok(rev) = kv.create(&key, record(b'P')).await else {
                    return;
                };
                if let Ok(ack) = js.publish(NOTICES, format!("{key} {rev}").into()).await {
                    let _ = ack.await;
                }
            }
        })
        .await;
    let ok = tokio::time::timeout(Duration::from_secs(120), finished)
        .await
        .is_ok();
    let seconds = started.elapsed().as_secs_f64();
    let per_job = before.per_job(&Counters::read(&cluster, &js).await, n);
    tasks.shutdown().await;
    // With every job done no handler is left waiting on the server; bounded anyway.
    handlers.close();
    let _ = tokio::time::timeout(Duration::from_secs(10), handlers.wait()).await;
    drop(cluster);
    if !ok {
        bail!(
            "protocol ceiling: only {} of {n} jobs completed in 120 s",
            done.load(Ordering::Relaxed)
        );
    }
    Ok(Protocol {
        lifecycle: lifecycle.label().into(),
        generation: lifecycle.generation().into(),
        writes_per_job: lifecycle.writes(),
        jobs: n,
        workers,
        seconds,
        jobs_per_sec: n as f64 / seconds,
        server_msgs_in_per_job: per_job.msgs_in,
        server_msgs_out_per_job: per_job.msgs_out,
        cpu_ms_per_job: per_job.cpu_ms,
    })
}

/// The fabric alone: the real coordinator and RPC plane, with the worker side played
/// in-process by the suite (each job leased to it at dispatch completed at once, many
/// in parallel, no job process). Shows what the coordinator + NATS sustain.
async fn fabric_run(gf: &GfCommand, args: &LoadArgs) -> anyhow::Result<Run> {
    use gf_schemas::rpc::ControlMessage;
    let spec = ClusterSpec {
        timings: load_timings(),
        ..Default::default()
    };
    let Bench {
        cluster,
        client,
        js,
        coord,
    } = Bench::start(gf, spec).await?;
    let fake = Arc::new(
        crate::scenarios::FakeWorker::register(client.clone(), "fabric", gf_schemas::DEFAULT_QUEUE)
            .await?,
    );
    let mut msgs = client.subscribe(names::worker_control(&fake.id)).await?;
    wait_active(&js, 1).await?;
    let n = args.jobs;
    let done = Arc::new(AtomicUsize::new(0));
    let all_done = Arc::new(tokio::sync::Notify::new());
    let (d2, f2, a2) = (done.clone(), fake.clone(), all_done.clone());
    let handler = tokio::spawn(async move {
        let mut tasks = tokio::task::JoinSet::new();
        while let Some(m) = msgs.next().await {
            let Ok(ControlMessage::Start { grants }) = serde_json::from_slice(&m.payload) else {
                continue;
            };
            for g in grants {
                let (d, f, a) = (d2.clone(), f2.clone(), a2.clone());
                tasks.spawn(async move {
                    if f.complete(g.job_id, g.lease.epoch).await.is_ok()
                        && d.fetch_add(1, Ordering::Relaxed) + 1 == n
                    {
                        a.notify_one();
                    }
                });
            }
            while tasks.try_join_next().is_some() {}
        }
    });
    let before = Counters::read(&cluster, &js).await;
    let started = Instant::now();
    let rpc_c = RpcClient::new(client.clone(), Duration::from_secs(30));
    let body: bytes::Bytes = serde_json::to_vec(&JobSpec::command(["true"]))?.into();
    let ids = submit_fast(&rpc_c, &body, n, args).await?;
    let submitted = started.elapsed();
    let finished = tokio::time::timeout(Duration::from_secs(120), all_done.notified()).await;
    let seconds = started.elapsed().as_secs_f64();
    handler.abort();
    if finished.is_err() {
        eprintln!(
            "chaos load: fabric run: only {} of {n} done",
            done.load(Ordering::Relaxed)
        );
    }
    let per_job = before.per_job(&Counters::read(&cluster, &js).await, n);
    let records = crate::audit::read_jobs(&js).await?;
    let by_id: HashMap<JobId, &gf_schemas::JobRecord> = records.iter().map(|r| (r.id, r)).collect();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (mut to_done, mut to_claim, mut succeeded) = (Vec::new(), Vec::new(), 0);
    for id in &ids {
        let Some(r) = by_id.get(id) else { continue };
        if r.state == JobState::Succeeded {
            succeeded += 1;
            if let Some(a) = r.history.first() {
                to_claim.push(ms(a.started_at.since(r.submitted_at)));
                if let Some(e) = a.ended_at {
                    to_done.push(ms(e.since(r.submitted_at)));
                }
            }
        }
    }
    let _ = fake;
    Ok(Run {
        label: "fabric only (in-process fake worker)".into(),
        auth: AuthMode::Open,
        factories: None,
        workers: 1,
        slots: 64,
        durable: false,
        rate: None,
        jobs: n,
        succeeded,
        seconds,
        jobs_per_sec: succeeded as f64 / seconds,
        submit_per_sec: n as f64 / submitted.as_secs_f64(),
        submit_to_done: percentiles(to_done),
        submit_to_claim: percentiles(to_claim),
        submit_to_dispatch: None,
        dispatch_to_claim: None,
        claim_to_done: None,
        dispatched_at_submission: None,
        slot_ms_per_job: 0.0,
        writes_per_job: per_job.writes,
        server_msgs_in_per_job: per_job.msgs_in,
        server_msgs_out_per_job: per_job.msgs_out,
        coordinator_rss_mib: cluster.pid(coord).and_then(rss_mib),
        cpu_ms_per_job: per_job.cpu_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_must_be_positive_finite_and_bounded() {
        assert_eq!(parse_rate("800"), Ok(800.0));
        assert_eq!(parse_rate("0.5"), Ok(0.5));
        for bad in ["0", "-3", "NaN", "inf", "1e9", "fast"] {
            let e = parse_rate(bad).expect_err(bad);
            assert!(e.contains(bad), "{e} names {bad}");
        }
    }

    /// The fleet's share is taken against the mean of the ceiling runs that bracket it,
    /// or the one before when no second run was made.
    #[test]
    fn the_ceiling_is_the_mean_of_the_runs_bracketing_the_fleet() {
        assert_eq!(bracketing_ceiling(8_000.0, None), 8_000.0);
        assert_eq!(bracketing_ceiling(8_000.0, Some(6_000.0)), 7_000.0);
    }
}
