//! Operator commands that talk to a running fleet: submit, jobs, job, logs, cancel,
//! workers. Writes go through the coordinators' RPC plane; reads come straight from the
//! buckets and streams.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use async_nats::jetstream;
use clap::Args;
use gf_schemas::names::{self, rpc};
use gf_schemas::rpc::{CancelReply, CancelRequest, SubmitReply};
use gf_schemas::{
    JobId, JobRecord, JobSpec, JobState, LogLine, LogStream, Timestamp, WorkerRecord,
};
use gf_worker::{CallError, RpcClient};

use crate::{connect, output, parse_kv};

#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// A profile from the coordinators' configuration (`gf profiles`): its values fill
    /// what these options leave at their defaults, its command is a prefix of CMD.
    #[arg(long)]
    pub profile: Option<String>,
    /// Submit a manifest (TOML, or JSON with a `.json` name): named jobs with
    /// dependencies by name, as one unit. Re-submitting it creates nothing new.
    #[arg(
        short = 'f',
        long = "file",
        value_name = "FILE",
        conflicts_with = "command"
    )]
    pub file: Option<std::path::PathBuf>,
    /// Queue to submit to.
    #[arg(long, default_value = "default")]
    pub queue: String,
    /// Capability the worker must have, `KEY=VALUE` (repeatable), e.g. `os=linux`.
    #[arg(long = "require", value_name = "KEY=VALUE", value_parser = parse_kv)]
    pub requires: Vec<(String, String)>,
    /// Tag the worker must carry (repeatable).
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// 0 (most urgent) to 9.
    #[arg(long, default_value_t = gf_schemas::DEFAULT_PRIORITY)]
    pub priority: u8,
    /// A repeat with the same key (and product) returns the first job. Without one,
    /// this submission gets its own (`gf-submit-<random hex>`), so that copies of the request
    /// sent while a coordinator is slow to answer make one job.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Maximum run time per attempt, e.g. `90s`, `2h`.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// Attempts before the job is dead.
    #[arg(long, default_value_t = gf_schemas::DEFAULT_MAX_ATTEMPTS)]
    pub max_attempts: u32,
    /// Lease TTL: how soon a lost worker is noticed, e.g. `30s`.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub lease_ttl: Option<Duration>,
    /// Product the job is accounted to.
    #[arg(long, default_value = "default")]
    pub product: String,
    /// Environment variable for the job, `KEY=VALUE` (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory on the worker.
    #[arg(long)]
    pub cwd: Option<String>,
    /// Label `KEY=VALUE` (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Create the job under this parent (whose completion then waits for it).
    #[arg(long)]
    pub parent: Option<JobId>,
    /// Run only after this job succeeded (repeatable).
    #[arg(long = "depends-on", value_name = "JOB")]
    pub depends_on: Vec<JobId>,
    /// Not before this time: RFC 3339 (`2026-11-22T03:00:00Z`) or a delay (`10m`).
    #[arg(long, value_parser = parse_when)]
    pub not_before: Option<Timestamp>,
    /// Preferred capability `KEY=VALUE` (repeatable; soft, raises the score).
    #[arg(long = "prefer", value_name = "KEY=VALUE", value_parser = parse_kv)]
    pub prefer: Vec<(String, String)>,
    /// The most this job may spend; crossing it while running cancels it.
    #[arg(long)]
    pub max_cost: Option<f64>,
    /// Follow the job to the end; exit non-zero unless it succeeded.
    #[arg(long)]
    pub wait: bool,
    /// Print JSON instead of the job id.
    #[arg(long)]
    pub json: bool,
    /// The program and its arguments (with `--profile`, arguments to its command).
    #[arg(last = true, required_unless_present = "file", value_name = "CMD")]
    pub command: Vec<String>,
}

fn split_pairs(flag: &str, items: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    items
        .iter()
        .map(|s| {
            s.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("{flag} `{s}` is not KEY=VALUE"))
        })
        .collect()
}

impl SubmitArgs {
    pub fn spec(&self) -> anyhow::Result<JobSpec> {
        let mut spec = JobSpec::command(self.command.clone());
        spec.queue = self.queue.clone();
        spec.requires = self.requires.iter().cloned().collect();
        spec.tags = self.tags.iter().cloned().collect();
        spec.priority = self.priority;
        spec.idempotency_key = self.idempotency_key.clone();
        spec.timeout_secs = self.timeout.map(|d| d.as_secs().max(1));
        spec.max_attempts = self.max_attempts;
        spec.lease_ttl_secs = self.lease_ttl.map(|d| d.as_secs().max(1));
        spec.product = self.product.clone();
        spec.env = split_pairs("--env", &self.env)?;
        spec.labels = split_pairs("--label", &self.labels)?;
        spec.cwd = self.cwd.clone();
        spec.parent = self.parent;
        spec.depends_on = self.depends_on.clone();
        spec.not_before = self.not_before;
        spec.prefer = self.prefer.iter().cloned().collect();
        spec.max_cost = self.max_cost;
        spec.profile = self.profile.clone();
        spec.validate()?;
        Ok(spec)
    }
}

/// An RFC 3339 time, or a delay from now such as `10m`.
pub fn parse_when(s: &str) -> Result<Timestamp, String> {
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(Timestamp::now_local().plus(d));
    }
    serde_json::from_value::<Timestamp>(serde_json::Value::String(s.into())).map_err(|_| {
        format!("`{s}` is neither a time like 2026-11-22T03:00:00Z nor a delay like 10m")
    })
}

fn rpc_client(client: &async_nats::Client) -> RpcClient {
    RpcClient::new(client.clone(), Duration::from_secs(10))
}

/// How long one round of a hedged submission waits, and how many rounds it makes.
const SUBMIT_ROUND: Duration = Duration::from_secs(4);
const SUBMIT_ROUNDS: u32 = 3;

/// A request whose repeats make nothing new (a keyed submission, a manifest), hedged
/// ([`RpcClient::call_raw_hedged`]: a copy every quarter of `round` while unanswered)
/// in up to `rounds` rounds. A coordinator that is paused or cut off stays in the RPC
/// queue group for a while and NATS gives it about half the requests; a plain request
/// that lands there fails after its timeout (and may still be applied when that
/// coordinator wakes, so a retry by hand could apply it twice).
pub(crate) async fn call_repeatable<Resp: serde::de::DeserializeOwned>(
    client: &async_nats::Client,
    subject: &str,
    body: Vec<u8>,
    round: Duration,
    rounds: u32,
) -> anyhow::Result<Resp> {
    let rpc = RpcClient::new(client.clone(), round);
    let mut tried = 1;
    loop {
        match rpc.call_raw_hedged(subject, body.clone().into()).await {
            Err(CallError::Timeout { .. }) if tried < rounds => tried += 1,
            answered => {
                return answered
                    .with_context(|| format!("{tried} round(s) of {round:?} on {subject}"))
            }
        }
    }
}

/// `spec` with an idempotency key: its own, or one made for this one submission
/// (`gf-submit-` and 128 random bits in hex; the second value is `true` then). With a
/// key, copies of the request make one job, so the submission can be hedged.
fn keyed(mut spec: JobSpec) -> (JobSpec, bool) {
    let made = spec.idempotency_key.is_none();
    if made {
        spec.idempotency_key = Some(format!("gf-submit-{:032x}", rand::random::<u128>()));
    }
    (spec, made)
}

pub async fn submit(url: &str, a: SubmitArgs) -> anyhow::Result<ExitCode> {
    // Hedged: a coordinator that is paused or cut off stays in the RPC queue group for
    // a while and NATS gives it about half the requests; a plain request that lands
    // there fails after its timeout (and may still make the job when that coordinator
    // wakes, so a retry by hand would make two). The key makes the copies one job.
    let (spec, made_key) = keyed(a.spec()?);
    let client = connect(url).await?;
    let body = serde_json::to_vec(&spec)?;
    // Rounds of 4 s, a copy every second: with one of two coordinators stalled a round
    // fails when all 4 copies reach it (1 in 16), so 3 rounds (12 s at most; a plain
    // request waited 10 s) leave 1 in 4,096.
    let mut reply: SubmitReply =
        call_repeatable(&client, rpc::SUBMIT, body, SUBMIT_ROUND, SUBMIT_ROUNDS)
            .await
            .context("submission failed")?;
    // A key made here is seen before only when one copy was answered after another.
    reply.duplicate &= !made_key;
    if a.json && !a.wait {
        println!("{}", serde_json::to_string(&reply)?);
    } else if !a.json {
        println!("{}", reply.job_id);
        if reply.duplicate {
            eprintln!(
                "(idempotency key seen before: this is the first job, {})",
                reply.state
            );
        }
    }
    if !a.wait {
        return Ok(ExitCode::SUCCESS);
    }
    let rec = follow(&client, reply.job_id, !a.json).await?;
    if a.json {
        println!("{}", serde_json::to_string(&rec)?);
    } else {
        eprintln!(
            "{} {}{}",
            rec.id,
            rec.state,
            rec.reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        );
    }
    Ok(if rec.state == JobState::Succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Follows a job through the coordinators (`gf.rpc.job.get`, what a submit-only
/// client may read) until it is terminal, printing each state change seen. A moment
/// without an answer (a coordinator restarting) is waited out.
pub async fn follow(
    client: &async_nats::Client,
    id: JobId,
    print: bool,
) -> anyhow::Result<JobRecord> {
    let rpc_client = rpc_client(client);
    let mut last = None;
    let mut unanswered = 0;
    loop {
        let rec: JobRecord = match rpc_client
            .call(rpc::GET_JOB, &gf_schemas::rpc::GetJobRequest { job_id: id })
            .await
        {
            Ok(r) => r,
            Err(gf_worker::client::CallError::Refused(e))
                if e.kind != gf_schemas::ErrorKind::Unavailable =>
            {
                bail!("following job {id}: {}", e.message)
            }
            // About a minute of silence (10 s per unanswered call) is not a restart.
            Err(e) if unanswered >= 6 => bail!("following job {id}: {e}"),
            Err(e) => {
                tracing::debug!(error = %e, "job {id}: no answer; asking again");
                unanswered += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        unanswered = 0;
        if print && last != Some((rec.state, rec.epoch)) {
            let extra = rec
                .lease
                .as_ref()
                .map(|l| format!(" on {}", l.worker))
                .unwrap_or_default();
            eprintln!(
                "{} {}{extra} (epoch {}, attempt {})",
                rec.id, rec.state, rec.epoch, rec.attempts
            );
        }
        last = Some((rec.state, rec.epoch));
        if rec.state.is_terminal() {
            return Ok(rec);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[derive(Args, Debug)]
pub struct JobsArgs {
    /// Only jobs in this state (pending, blocked, dispatched, running, waiting,
    /// succeeded, dead, cancelled, rejected). Finished states include the archive.
    #[arg(long)]
    pub state: Option<JobState>,
    /// Only jobs of this queue.
    #[arg(long)]
    pub queue: Option<String>,
    /// Only jobs of this product.
    #[arg(long)]
    pub product: Option<String>,
    /// At most this many (1 to 500): live and recent ones newest first, then archived
    /// ones by creation day.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Continue from a previous page (the cursor it printed).
    #[arg(long)]
    pub cursor: Option<String>,
    #[arg(long)]
    pub json: bool,
}

/// A page of jobs from the coordinators (`gf.rpc.job.list`: the same path as
/// `GET /api/jobs`; no read of the whole store).
pub async fn jobs(url: &str, a: JobsArgs) -> anyhow::Result<ExitCode> {
    let client = connect(url).await?;
    let req = gf_schemas::rpc::JobListRequest {
        state: a.state,
        queue: a.queue,
        product: a.product,
        cursor: a.cursor,
        limit: Some(a.limit),
    };
    let page: gf_schemas::rpc::JobPage = rpc_client(&client)
        .call(rpc::LIST_JOBS, &req)
        .await
        .context("cannot list jobs")?;
    if a.json {
        // The jobs as an array, as before paging existed; the cursor goes to stderr.
        println!("{}", serde_json::to_string_pretty(&page.jobs)?);
    } else if page.jobs.is_empty() {
        eprintln!("no jobs");
    } else {
        println!("{}", output::jobs_table(&page.jobs, Timestamp::now_local()));
    }
    if let Some(c) = &page.next_cursor {
        eprintln!("more: --cursor {c}");
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct JobArgs {
    pub id: JobId,
    #[arg(long)]
    pub json: bool,
}

/// One job wherever it is: live, within its grace period, or archived.
pub async fn job(url: &str, a: JobArgs) -> anyhow::Result<ExitCode> {
    let client = connect(url).await?;
    let rec: JobRecord = rpc_client(&client)
        .call(
            rpc::GET_JOB,
            &gf_schemas::rpc::GetJobRequest { job_id: a.id },
        )
        .await
        .with_context(|| format!("cannot read job {}", a.id))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rec)?);
    } else {
        print!("{}", output::job_detail(&rec, Timestamp::now_local()));
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    pub id: JobId,
    /// Keep following new lines until the job ends.
    #[arg(short, long)]
    pub follow: bool,
    /// Print each line exactly as the job wrote it, control characters and escape
    /// sequences included (by default they are shown escaped: `\x1b[31m`).
    #[arg(long)]
    pub raw: bool,
}

/// A job's log lines, read with direct gets by subject (`gf.logs.*.<job>`) from
/// `GF_LOGS`: read only, no consumer, so a submit-only client may do it too. With
/// `--follow`, new lines are polled for until the job is over (then one more round,
/// for lines published just before its end).
///
/// Only lines from a factory that held the job at the line's epoch are shown
/// ([`gf_schemas::LogOrigins`]): any factory may publish under any job id on its own
/// log subjects, so the others are counted and named on stderr at the end, not shown.
pub async fn logs(url: &str, a: LogsArgs) -> anyhow::Result<ExitCode> {
    let client = connect(url).await?;
    let rpc_client = rpc_client(&client);
    let record = async || -> anyhow::Result<JobRecord> {
        rpc_client
            .call(
                rpc::GET_JOB,
                &gf_schemas::rpc::GetJobRequest { job_id: a.id },
            )
            .await
            .with_context(|| format!("no job {}", a.id))
    };
    let mut origins = gf_schemas::LogOrigins::new(a.id);
    let rec = record().await?;
    origins.learn(&rec);
    // Wherever the job is (live, in its grace period or archived): its lines are kept
    // by GF_LOGS's own retention.
    let mut done = rec.state.is_terminal() || !a.follow;
    let stream = jetstream::new(client.clone())
        .get_stream_no_info(names::STREAM_LOGS)
        .await?;
    // Every factory that ran an attempt of the job wrote on its own subject.
    let subject = names::job_logs(&a.id);
    let mut next = 1;
    let mut epoch = None;
    let mut foreign: BTreeMap<String, u64> = BTreeMap::new();
    loop {
        match stream
            .direct_get_next_for_subject(subject.as_str(), Some(next))
            .await
        {
            Ok(m) => {
                next = m.sequence + 1;
                let Ok(line) = serde_json::from_slice::<LogLine>(&m.payload) else {
                    continue;
                };
                let mut origin = origins.check(&m.subject, &line);
                if origin == gf_schemas::LineOrigin::Unknown {
                    origins.learn(&record().await?);
                    origin = origins.check(&m.subject, &line);
                }
                if origin != gf_schemas::LineOrigin::Holder {
                    let factory = names::parse_logs(&m.subject)
                        .map_or_else(|| m.subject.to_string(), |(f, _)| f.to_string());
                    *foreign.entry(factory).or_default() += 1;
                    continue;
                }
                if epoch.is_some_and(|e| e != line.epoch) {
                    eprintln!("── attempt at epoch {} ──", line.epoch);
                }
                epoch = Some(line.epoch);
                let text = if a.raw {
                    std::borrow::Cow::Borrowed(line.line.as_str())
                } else {
                    output::printable(&line.line)
                };
                match line.stream {
                    LogStream::Stdout => println!("{text}"),
                    LogStream::Stderr => eprintln!("{text}"),
                }
            }
            Err(e) if matches!(e.kind(), jetstream::stream::DirectGetErrorKind::NotFound) => {
                if done {
                    for (factory, n) in &foreign {
                        eprintln!(
                            "gf logs: {n} line(s) published for job {} by factory {factory}, which did not hold it at their epoch, not shown",
                            a.id
                        );
                    }
                    return Ok(ExitCode::SUCCESS);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
                // One more round after the end, for the last lines.
                done = record().await?.state.is_terminal();
            }
            Err(e) => bail!("cannot read the log of job {}: {e}", a.id),
        }
    }
}

#[derive(Args, Debug)]
pub struct CancelArgs {
    pub id: JobId,
    /// Recorded with the job and in the event.
    #[arg(long)]
    pub reason: Option<String>,
}

pub async fn cancel(url: &str, a: CancelArgs) -> anyhow::Result<ExitCode> {
    let client = connect(url).await?;
    let req = CancelRequest {
        job_id: a.id,
        reason: a.reason,
    };
    let r: CancelReply = rpc_client(&client)
        .call(rpc::CANCEL, &req)
        .await
        .with_context(|| format!("cannot cancel {}", a.id))?;
    println!("{} {}", a.id, r.state);
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct WorkersArgs {
    /// Include workers that are gone.
    #[arg(long)]
    pub all: bool,
    #[arg(long)]
    pub json: bool,
}

pub async fn workers(url: &str, a: WorkersArgs) -> anyhow::Result<ExitCode> {
    let client = connect(url).await?;
    let bucket = jetstream::new(client.clone())
        .get_key_value(names::BUCKET_WORKERS)
        .await
        .context("no workers bucket: has a coordinator started against this NATS?")?;
    let mut ws: Vec<WorkerRecord> = gf_coordinator::store::read_all_as::<WorkerRecord>(&bucket)
        .await?
        .into_iter()
        .filter(|w: &WorkerRecord| a.all || w.state != gf_schemas::WorkerState::Gone)
        .collect();
    ws.sort_by(|x, y| x.id.cmp(&y.id));
    if a.json {
        println!("{}", serde_json::to_string_pretty(&ws)?);
    } else if ws.is_empty() {
        eprintln!("no workers");
    } else {
        println!("{}", output::workers_table(&ws, Timestamp::now_local()));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_submission_without_a_key_gets_its_own_and_a_given_key_is_kept() {
        let bare = || JobSpec::command(["true"]);
        let (a, made_a) = keyed(bare());
        let (b, made_b) = keyed(bare());
        assert!(made_a && made_b);
        let (ka, kb) = (a.idempotency_key.unwrap(), b.idempotency_key.unwrap());
        assert!(ka.starts_with("gf-submit-"), "{ka}");
        assert_ne!(ka, kb, "each submission its own key");
        let mut given = bare();
        given.idempotency_key = Some("TICKET-42".into());
        let (kept, made) = keyed(given);
        assert!(!made);
        assert_eq!(kept.idempotency_key.as_deref(), Some("TICKET-42"));
        kept.validate().expect("still valid");
        let (made_spec, _) = keyed(bare());
        made_spec.validate().expect("a made key is valid");
    }
}
