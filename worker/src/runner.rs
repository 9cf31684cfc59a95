//! Running one claimed job as a subprocess: its own process group, stdout and stderr
//! streamed line by line to `GF_LOGS`, the lease renewed while it runs, and the whole
//! group killed at once when the lease is revoked, the timeout passes, or the worker
//! must give the job back.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use futures::stream::{FuturesOrdered, StreamExt};
use gf_schemas::rpc::{ClaimReply, RenewReply, RenewRequest};
use gf_schemas::{names, AttemptOutcome, JobId, LogLine, LogStream, Timestamp, Usage, WorkerId};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::client::RpcClient;
use crate::handler::{Handler, HandlerCall, Handlers};

/// Largest result file read back (the rest of the output belongs in artifacts).
const MAX_RESULT_BYTES: u64 = 512 * 1024;
/// Longest single log line kept; longer lines are cut.
const MAX_LINE: usize = 16 * 1024;

/// How a run ended, from the worker's side.
#[derive(Debug)]
pub enum RunEnd {
    /// The process finished (or timed out): report this.
    Finished {
        outcome: AttemptOutcome,
        result: Option<serde_json::Value>,
        usage: Option<Usage>,
    },
    /// The lease was lost: the process was killed and nothing is reported.
    Revoked(String),
    /// The worker is stopping: the process was killed; release the job.
    GivenBack,
}

pub struct Job {
    pub id: JobId,
    pub claim: ClaimReply,
    pub worker: WorkerId,
    /// Fires when a coordinator revokes the lease (pushed or learnt from a renew).
    pub revoked: CancellationToken,
    /// Fires when the worker gives up waiting for running jobs at shutdown.
    pub give_back: CancellationToken,
    /// For a lease granted at dispatch: when its start deadline passes (this worker's
    /// clock). The first renewal, which confirms the start, is due well before it.
    /// `None` for a claimed job (the claim confirmed the start).
    pub start_by: Option<tokio::time::Instant>,
}

pub async fn run(
    job: Job,
    rpc: RpcClient,
    js: async_nats::jetstream::Context,
    scratch: &Path,
    handlers: &Handlers,
) -> RunEnd {
    let command = &job.claim.spec.command;
    if let Some(handler) = handlers.for_command(command) {
        return run_handler(&job, &rpc, handler.as_ref()).await;
    }
    if let Some(error) = handlers.unknown_builtin(command) {
        return failed(None, error);
    }
    run_process(job, rpc, js, scratch).await
}

/// Runs an in-process job under the same lease rules as a process.
async fn run_handler(job: &Job, rpc: &RpcClient, handler: &dyn Handler) -> RunEnd {
    let spec = &job.claim.spec;
    let call = HandlerCall {
        job_id: job.id,
        epoch: job.claim.lease.epoch,
        attempt: job.claim.attempt,
        worker: job.worker.clone(),
        args: spec.command[1..].to_vec(),
        env: spec.env.clone(),
    };
    let mut output = None;
    let work = async {
        match handler.call(call).await {
            Ok(out) => {
                output = Some(out);
                AttemptOutcome::Succeeded { exit_code: 0 }
            }
            Err(error) => AttemptOutcome::Failed {
                exit_code: None,
                error,
            },
        }
    };
    // Dropping `work` (revocation, timeout, give-back) drops the handler's future.
    let outcome = match keep_lease(job, rpc, None, None, work).await {
        Ok(o) => o,
        Err(end) => return end,
    };
    let output = output.unwrap_or_default();
    RunEnd::Finished {
        outcome,
        result: output.result,
        usage: output.usage,
    }
}

async fn run_process(
    job: Job,
    rpc: RpcClient,
    js: async_nats::jetstream::Context,
    scratch: &Path,
) -> RunEnd {
    let spec = &job.claim.spec;
    let epoch = job.claim.lease.epoch;
    let dir = match &spec.cwd {
        Some(c) => PathBuf::from(c),
        None => scratch.join(format!("{}-{epoch}", job.id)),
    };
    if let Err(e) = tokio::fs::create_dir_all(&dir).await {
        return failed(
            None,
            format!("cannot create working directory {}: {e}", dir.display()),
        );
    }
    let ttl = Duration::from_millis(job.claim.lease.ttl_ms);
    let prepared = crate::artifacts::while_renewing(
        &rpc,
        job.id,
        epoch,
        &job.worker,
        ttl,
        crate::artifacts::JobDirs::prepare(
            scratch,
            job.id,
            epoch,
            job.claim.attempt,
            job.worker.clone(),
            rpc.clone(),
        ),
    )
    .await;
    let mut dirs = match prepared {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => return failed(None, format!("cannot create the artifact directories: {e}")),
        Err(e) => return RunEnd::Revoked(e.to_string()),
    };
    let result_file = scratch.join(format!("{}-{epoch}.result.json", job.id));
    let usage_file = scratch.join(format!("{}-{epoch}.usage.json", job.id));
    let _ = tokio::fs::remove_file(&result_file).await;
    let _ = tokio::fs::remove_file(&usage_file).await;
    let mut cmd = Command::new(&spec.command[0]);
    cmd.args(&spec.command[1..])
        .envs(&spec.env)
        .env("GF_JOB_ID", job.id.to_string())
        .env("GF_EPOCH", epoch.to_string())
        .env("GF_ATTEMPT", job.claim.attempt.to_string())
        .env("GF_WORKER_ID", job.worker.to_string())
        .env("GF_RESULT_FILE", &result_file)
        .env("GF_USAGE_FILE", &usage_file)
        .envs(dirs.env())
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    #[cfg(unix)]
    cmd.process_group(0);
    #[cfg(target_os = "linux")]
    die_with_worker(&mut cmd);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return failed(None, format!("cannot start `{}`: {e}", spec.command[0])),
    };
    let pid = child.id();
    let (lines_tx, lines_rx) = mpsc::channel::<(LogStream, String)>(1024);
    let pumps = [
        tokio::spawn(pump(
            child.stdout.take().expect("piped"),
            LogStream::Stdout,
            lines_tx.clone(),
        )),
        tokio::spawn(pump(
            child.stderr.take().expect("piped"),
            LogStream::Stderr,
            lines_tx,
        )),
    ];
    let logs = tokio::spawn(publish_logs(
        js,
        job.worker.clone(),
        job.id,
        epoch,
        lines_rx,
    ));

    let end = keep_lease(&job, &rpc, Some(&usage_file), Some(&mut dirs), async {
        match child.wait().await {
            Ok(s) if s.success() => AttemptOutcome::Succeeded { exit_code: 0 },
            Ok(s) => AttemptOutcome::Failed {
                exit_code: s.code(),
                error: describe_exit(s),
            },
            Err(e) => AttemptOutcome::Failed {
                exit_code: None,
                error: format!("wait failed: {e}"),
            },
        }
    })
    .await;
    // Whatever ended the run, nothing of the job may outlive it.
    kill_group(pid);
    let _ = child.wait().await;
    for p in pumps {
        // A grandchild that escaped the group could hold the pipes open; don't wait on it.
        let _ = tokio::time::timeout(Duration::from_secs(2), p).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), logs).await;
    // The attempt is over: its checkpoint (also when given back) and its artifacts go
    // up while the lease is still held; nothing of a revoked attempt does.
    let keep = match &end {
        Ok(_) => Some(true),
        Err(RunEnd::GivenBack) => Some(false),
        Err(_) => None,
    };
    if let Some(artifacts) = keep {
        let saved = crate::artifacts::while_renewing(&rpc, job.id, epoch, &job.worker, ttl, async {
            if let Err(e) = dirs.save_checkpoint().await {
                tracing::warn!(job = %job.id, error = %e, "checkpoint not saved at the end of the attempt");
            }
            if artifacts {
                dirs.upload_artifacts().await
            } else {
                Vec::new()
            }
        })
        .await;
        match saved {
            Ok(errors) => {
                for e in errors {
                    tracing::warn!(job = %job.id, error = %e, "artifact not stored");
                }
            }
            Err(e) => {
                dirs.remove().await;
                return RunEnd::Revoked(e.to_string());
            }
        }
    }
    dirs.remove().await;
    let outcome = match end {
        Ok(o) => o,
        Err(e) => return e,
    };
    let (result, usage) = read_result(&result_file).await;
    // The usage file is cumulative (renewals report it): at the end it is the
    // attempt's usage, unless the result file carries one.
    let usage = match usage {
        Some(u) => Some(u),
        None => read_usage(&usage_file).await,
    };
    let _ = tokio::fs::remove_file(&result_file).await;
    let _ = tokio::fs::remove_file(&usage_file).await;
    if spec.cwd.is_none() {
        let _ = tokio::fs::remove_dir_all(&dir).await;
    }
    match (outcome, result) {
        (AttemptOutcome::Succeeded { .. }, Err(e)) => failed(Some(0), e),
        (outcome, result) => RunEnd::Finished {
            outcome,
            result: result.ok().flatten(),
            usage,
        },
    }
}

/// Waits for `work` while holding the lease: renews it every third of its TTL (with
/// the usage read from `usage_file`, so a job over its own `max_cost` is stopped while
/// running), saves `checkpoint` after each renewal when it changed, and stops waiting
/// on revocation, give-back or the job's timeout. `Err` is how the run ended when the work did not finish; dropping `work` stops it.
async fn keep_lease(
    job: &Job,
    rpc: &RpcClient,
    usage_file: Option<&Path>,
    mut checkpoint: Option<&mut crate::artifacts::JobDirs>,
    work: impl Future<Output = AttemptOutcome>,
) -> Result<AttemptOutcome, RunEnd> {
    let renew_every =
        Duration::from_millis(job.claim.lease.ttl_ms / 3).max(Duration::from_millis(100));
    let timeout = job.claim.spec.timeout_secs.map(Duration::from_secs);
    let deadline = async {
        match timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline, work);
    // The first renewal is due one period in. Not `interval` + an initial `tick()`:
    // that first tick goes through the timer wheel, which rounds deadlines up to the
    // next millisecond, and cost every job 0.2–1.8 ms before it started (measured).
    // A lease granted at dispatch must hear from the worker before its start deadline:
    // the first renewal is due a quarter of the start window after the start (a job
    // done sooner confirms its start with its completion instead, and never renews).
    // A quarter of the window, not half of what this worker's clock says is left: that
    // is counted from when the grant arrived, and a worker paused while the grant was in
    // flight (up to a third of the TTL must cost nothing) received it that much late,
    // so the deadline by the server's clock is nearer than it looks from here.
    let began = tokio::time::Instant::now();
    let first = match job.start_by {
        Some(by) => {
            let lease = &job.claim.lease;
            let window = lease.expires_at.since(lease.granted_at);
            (window / 4)
                .min(by.saturating_duration_since(began) / 2)
                .min(renew_every)
                .max(Duration::from_millis(10))
        }
        None => renew_every,
    };
    let mut renew = tokio::time::interval_at(began + first, renew_every);
    let mut renew_req = RenewRequest {
        job_id: job.id,
        epoch: job.claim.lease.epoch,
        worker_id: job.worker.clone(),
        usage: None,
        ran_ms: None,
    };
    loop {
        tokio::select! {
            outcome = &mut work => return Ok(outcome),
            _ = job.revoked.cancelled() => return Err(RunEnd::Revoked("revoked by a coordinator".into())),
            _ = job.give_back.cancelled() => return Err(RunEnd::GivenBack),
            _ = &mut deadline => {
                return Ok(AttemptOutcome::TimedOut { after_secs: timeout.map_or(0, |t| t.as_secs()) });
            }
            _ = renew.tick() => {
                if let Some(path) = usage_file {
                    renew_req.usage = read_usage(path).await;
                }
                if job.start_by.is_some() {
                    renew_req.ran_ms = Some(began.elapsed().as_millis() as u64);
                }
                // Hedged: a renewal stuck on a stalled coordinator would cost a whole
                // period, and the first one confirms a start with a deadline.
                let renewed = rpc.with_timeout(renew_every).call_factory_hedged::<_, RenewReply>(&renew_req).await;
                let label = match &renewed {
                    Ok(_) => "ok",
                    Err(e) if e.lost_lease() => "lost",
                    Err(_) => "error",
                };
                metrics::counter!(gf_telemetry::names::WORKER_RENEWALS, "result" => label).increment(1);
                match renewed {
                    Ok(_) => {
                        // Saved while the lease is fresh; an unchanged directory costs
                        // one directory listing.
                        if let Some(dirs) = checkpoint.as_deref_mut() {
                            match dirs.save_checkpoint().await {
                                Ok(()) => {}
                                Err(e) if e.lost_lease() => return Err(RunEnd::Revoked(e.to_string())),
                                Err(e) => tracing::warn!(job = %job.id, error = %e, "checkpoint not saved; next renewal retries"),
                            }
                        }
                    }
                    Err(e) if e.lost_lease() => return Err(RunEnd::Revoked(e.to_string())),
                    // The lease outlives a few missed renewals; if it does not, the next
                    // renew that gets through says so.
                    Err(e) => tracing::warn!(job = %job.id, error = %e, "renew failed; will retry"),
                }
            }
        }
    }
}

/// Has the kernel SIGKILL the job if the worker dies (even by SIGKILL), so a crashed
/// worker leaves no orphan still producing effects while the job runs again elsewhere.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn die_with_worker(cmd: &mut Command) {
    // SAFETY: runs in the forked child before exec; prctl(2) is async-signal-safe and
    // the closure neither allocates nor takes locks.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Some(nix::sys::signal::Signal::SIGKILL))
                .map_err(|e| std::io::Error::from_raw_os_error(e as i32))
        });
    }
}

fn failed(exit_code: Option<i32>, error: String) -> RunEnd {
    RunEnd::Finished {
        outcome: AttemptOutcome::Failed { exit_code, error },
        result: None,
        usage: None,
    }
}

fn describe_exit(s: std::process::ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = s.signal() {
            return format!("killed by signal {sig}");
        }
    }
    match s.code() {
        Some(c) => format!("exit status {c}"),
        None => "exited abnormally".into(),
    }
}

/// Kills the job's whole process group (it is its own group leader).
pub fn kill_group(pid: Option<u32>) {
    #[cfg(unix)]
    if let Some(pid) = pid {
        use nix::sys::signal::{killpg, Signal};
        use nix::unistd::Pid;
        let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
}

/// Reads `$GF_RESULT_FILE`: `Ok(None)` when absent; an error when present but not JSON
/// (a job that claims success with an unreadable result did not succeed). A top-level
/// `usage` object is split off as the attempt's usage.
async fn read_result(path: &Path) -> (Result<Option<serde_json::Value>, String>, Option<Usage>) {
    let meta = match tokio::fs::metadata(path).await {
        Ok(m) => m,
        Err(_) => return (Ok(None), None),
    };
    if meta.len() > MAX_RESULT_BYTES {
        return (
            Err(format!(
                "result file is {} bytes; the limit is {MAX_RESULT_BYTES}",
                meta.len()
            )),
            None,
        );
    }
    let text = match tokio::fs::read(path).await {
        Ok(t) => t,
        Err(e) => return (Err(format!("cannot read result file: {e}")), None),
    };
    let mut value: serde_json::Value = match serde_json::from_slice(&text) {
        Ok(v) => v,
        Err(e) => return (Err(format!("result file is not JSON: {e}")), None),
    };
    let usage = value
        .as_object_mut()
        .and_then(|o| o.remove("usage"))
        .and_then(|u| serde_json::from_value::<Usage>(u).ok());
    (Ok(Some(value)), usage)
}

/// The cumulative usage a job wrote to `$GF_USAGE_FILE`, if any (small files only).
async fn read_usage(path: &Path) -> Option<Usage> {
    let meta = tokio::fs::metadata(path).await.ok()?;
    if meta.len() > 64 * 1024 {
        return None;
    }
    serde_json::from_slice(&tokio::fs::read(path).await.ok()?).ok()
}

async fn pump(
    reader: impl AsyncRead + Unpin,
    stream: LogStream,
    tx: mpsc::Sender<(LogStream, String)>,
) {
    let mut lines = BufReader::new(reader).split(b'\n');
    while let Ok(Some(raw)) = lines.next_segment().await {
        let mut line = String::from_utf8_lossy(&raw).into_owned();
        if line.ends_with('\r') {
            line.pop();
        }
        if line.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
            line.push_str(" …[cut]");
        }
        if tx.send((stream, line)).await.is_err() {
            break;
        }
    }
}

/// Publishes lines in order with a window of unacknowledged publishes.
async fn publish_logs(
    js: async_nats::jetstream::Context,
    worker: WorkerId,
    job: JobId,
    epoch: u64,
    mut rx: mpsc::Receiver<(LogStream, String)>,
) {
    let subject = names::logs(&worker, &job);
    let mut acks = FuturesOrdered::new();
    let mut seq = 0;
    while let Some((stream, line)) = rx.recv().await {
        seq += 1;
        let msg = LogLine {
            job_id: job,
            epoch,
            seq,
            stream,
            line,
            time: Timestamp::now_local(),
        };
        let body = serde_json::to_vec(&msg).expect("serializes");
        metrics::counter!(gf_telemetry::names::WORKER_LOG_LINES).increment(1);
        match js.publish(subject.clone(), body.into()).await {
            Ok(ack) => acks.push_back(std::future::IntoFuture::into_future(ack)),
            Err(e) => tracing::debug!(%job, error = %e, "log line not published"),
        }
        while acks.len() > 256 {
            let _ = acks.next().await;
        }
    }
    while acks.next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;
    use gf_schemas::{JobSpec, Lease};

    use super::*;

    fn job() -> Job {
        let worker = WorkerId::new("w1").expect("worker id");
        let now = Timestamp::from_unix_millis(0);
        Job {
            id: JobId::new(),
            claim: ClaimReply {
                spec: JobSpec::command(["gf:noop"]),
                lease: Lease {
                    worker: worker.clone(),
                    epoch: 1,
                    granted_at: now,
                    expires_at: now,
                    ttl_ms: 30_000,
                },
                attempt: 1,
            },
            worker,
            revoked: CancellationToken::new(),
            give_back: CancellationToken::new(),
            start_by: None,
        }
    }

    /// Work that is already done ends the run on the first poll. Regression: the renew
    /// interval's immediate first tick was awaited first, and tokio rounds a deadline
    /// up to the next millisecond, so every job waited for the timer driver's next turn
    /// (0.2–1.8 ms of claim→done at idle).
    #[tokio::test(start_paused = true)]
    async fn finished_work_ends_without_waiting_for_a_timer() {
        // Off a millisecond boundary, where a deadline of "now" rounds up to the next one.
        tokio::time::advance(Duration::from_micros(500)).await;
        // Never used: the work ends before the first renewal is due.
        let nats = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect("127.0.0.1:1")
            .await
            .expect("client");
        let rpc = RpcClient::new(nats, Duration::from_secs(1));
        let job = job();
        let done = async { AttemptOutcome::Succeeded { exit_code: 0 } };
        let ended = keep_lease(&job, &rpc, None, None, done).now_or_never();
        assert!(
            matches!(ended, Some(Ok(AttemptOutcome::Succeeded { exit_code: 0 }))),
            "the run did not end on its first poll"
        );
    }
}
