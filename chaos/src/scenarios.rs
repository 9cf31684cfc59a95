//! The fault scenarios. Each one starts its own cluster, runs a workload, injects its
//! fault, waits (with deadlines, never blind sleeps to order a race) for the fleet to
//! settle, and returns a [`Report`] whose `passed` is false on any invariant
//! violation or failed pass criterion.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt;
use gf_schemas::names::{self, rpc, Routing};
use gf_schemas::rpc::{
    ClaimRequest, CompleteReply, CompleteRequest, ControlMessage, DispatchNotice, HeartbeatReply,
    HeartbeatRequest, RegisterReply, RegisterRequest, SubmitReply,
};
use gf_schemas::{
    AttemptOutcome, Capabilities, ErrorKind, EventKind, JobId, JobSpec, JobState, Timestamp,
    WorkerId, WorkerState,
};
use gf_worker::RpcClient;
use tokio_util::sync::CancellationToken;

use crate::cluster::{ClusterSpec, Fault, Part, WorkerSpec};
use crate::harness::{connect, eventually, Harness, Report};
use crate::process::GfCommand;

/// Size of a run.
#[derive(Clone, Debug)]
pub struct Scale {
    /// Jobs per scenario.
    pub jobs: usize,
    pub quick: bool,
}

pub const ALL: [&str; 14] = [
    "worker-kill",
    "worker-pause",
    "worker-short-pause",
    "leader-kill",
    "leader-pause",
    "nats-restart",
    "cluster-node-kill",
    "worker-partition",
    "idempotency",
    "poison",
    "race-50",
    "complete-vs-reap",
    "clock-skew",
    "archiver-kill",
];

/// The suite on docker-compose (`chaos suite --backend compose`): the scenarios that
/// mean something on containers, with the ones only compose makes possible (real
/// partitions of a coordinator and of one NATS node, rolling restarts under load).
pub const COMPOSE: [&str; 11] = [
    "worker-kill",
    "worker-pause",
    "worker-partition",
    "leader-kill",
    "leader-pause",
    "leader-partition",
    "cluster-node-kill",
    "nats-partition",
    "nats-rolling-restart",
    "coordinator-rolling-upgrade",
    "alerts",
];

/// Scenarios that need the compose backend (a network partition of any part, or
/// Prometheus and Alertmanager).
pub const COMPOSE_ONLY: [&str; 5] = [
    "leader-partition",
    "nats-partition",
    "nats-rolling-restart",
    "coordinator-rolling-upgrade",
    "alerts",
];

/// The scenarios of the quick suite (CI), with small N. Left out: `leader-pause` and
/// `cluster-node-kill` (slow: leader TTL, cluster formation) and `clock-skew` (needs
/// `faketime`); the full suite runs them.
pub const QUICK: [&str; 10] = [
    "worker-kill",
    "worker-pause",
    "worker-short-pause",
    "leader-kill",
    "nats-restart",
    "worker-partition",
    "idempotency",
    "poison",
    "race-50",
    "complete-vs-reap",
];

/// One line per scenario: what it proves.
pub fn describe(name: &str) -> &'static str {
    match name {
        "worker-kill" => "kill -9 a worker mid-job: its jobs are re-leased within TTL + reaper + 2 s and run once in effect",
        "worker-pause" => "SIGSTOP a worker past its lease TTL, then SIGCONT: the zombie is fenced, nothing it reports counts",
        "worker-short-pause" => "SIGSTOP a worker for TTL/3: no false revocation, every job it held finishes on it",
        "leader-kill" => "kill -9 the scheduler leader: the standby takes over within leader TTL + 3 s, no job lost",
        "leader-pause" => "SIGSTOP the leader past its lease, resume it: the standby leads, the zombie leader does not dispatch or reap",
        "nats-restart" => "kill -9 and restart the single NATS server mid-run: no job lost or run twice",
        "cluster-node-kill" => "3-node JetStream cluster, R3: kill one node mid-run, bring it back: no job lost or run twice",
        "worker-partition" => "cut a worker off NATS (proxy) past its TTL, reconnect: jobs re-leased in bound, the worker rejoins",
        "idempotency" => "many clients submit the same idempotency keys at once: one job per key",
        "poison" => "garbage and truncated JSON on every gf.rpc.* subject (factory subjects with garbage tokens too), requests naming another worker (forbidden) and malformed dispatch notices: refused, the fleet keeps working",
        "race-50" => "50 one-slot workers, jobs leased to them at dispatch: every job started and run exactly once, in one attempt",
        "complete-vs-reap" => "completions sent right at the start deadline of leases granted at dispatch, as the reaper takes them back: each is either accepted or refused, never both",
        "clock-skew" => "workers whose clocks are 5 minutes ahead and behind (faketime): no false expiry, no job lost",
        "archiver-kill" => "kill -9 every coordinator (the archiver runs on them) mid-run, restart them within the grace period: once every job has left gf_jobs (45 s grace), each is in the archive as last seen, and the checker reads them there",
        "leader-partition" => "compose: take the leader coordinator off the network (a real partition from NATS): the standby leads within leader TTL + 3 s, the healed one does not dispatch or reap",
        "nats-partition" => "compose: take the NATS node leading the jobs bucket off the network (a minority partition), then reconnect it: no job lost or run twice",
        "nats-rolling-restart" => "compose: stop and start each of the three NATS nodes in turn (each healthy before the next) while jobs are submitted and run",
        "coordinator-rolling-upgrade" => "compose: stop one coordinator, start it again (healthy), then the other, while jobs are submitted and run",
        "alerts" => "compose: kill two workers holding jobs, pause both coordinators, stop a NATS node: the alerts the rules define fire in Alertmanager and resolve, no other alert fires",
        _ => "unknown scenario",
    }
}

pub async fn run(name: &str, scale: &Scale, gf: &GfCommand) -> anyhow::Result<Report> {
    let started = Instant::now();
    if COMPOSE_ONLY.contains(&name) && gf.compose.is_none() {
        anyhow::bail!("scenario {name} needs the compose backend (--backend compose)");
    }
    eprintln!("chaos: === {name}: {}", describe(name));
    let report = match name {
        "worker-kill" => worker_kill(scale, gf).await,
        "worker-pause" => worker_pause(scale, gf).await,
        "worker-short-pause" => worker_short_pause(scale, gf).await,
        "leader-kill" => leader_kill(scale, gf).await,
        "leader-pause" => leader_pause(scale, gf).await,
        "nats-restart" => nats_restart(scale, gf).await,
        "cluster-node-kill" => cluster_node_kill(scale, gf).await,
        "worker-partition" => worker_partition(scale, gf).await,
        "idempotency" => idempotency(scale, gf).await,
        "poison" => poison(scale, gf).await,
        "race-50" => race_50(scale, gf).await,
        "complete-vs-reap" => complete_vs_reap(scale, gf).await,
        "clock-skew" => clock_skew(scale, gf).await,
        "archiver-kill" => archiver_kill(scale, gf).await,
        "leader-partition" => leader_partition(scale, gf).await,
        "nats-partition" => nats_partition(scale, gf).await,
        "nats-rolling-restart" => nats_rolling_restart(scale, gf).await,
        "coordinator-rolling-upgrade" => coordinator_rolling_upgrade(scale, gf).await,
        "alerts" => alerts(scale, gf).await,
        other => anyhow::bail!(
            "unknown scenario `{other}` (one of: {}, {})",
            ALL.join(", "),
            COMPOSE_ONLY.join(", ")
        ),
    };
    report.with_context(|| {
        format!(
            "scenario {name} could not run to the end ({:?})",
            started.elapsed()
        )
    })
}

/// Time allowed for `n` jobs to finish after the faults, on top of the fixed bounds.
fn budget(n: usize) -> Duration {
    Duration::from_secs(90) + Duration::from_millis(60 * n as u64)
}

fn three_workers() -> Vec<WorkerSpec> {
    (0..3)
        .map(|i| WorkerSpec::new(format!("w{i}"), 4))
        .collect()
}

/// Standard fleet: one NATS, two coordinators, three workers with four slots.
async fn fleet(
    name: &str,
    gf: &GfCommand,
    spec: ClusterSpec,
    workers: Vec<WorkerSpec>,
) -> anyhow::Result<Harness> {
    let mut h = Harness::start(name, spec, gf.clone(), 2).await?;
    h.add_workers(workers).await?;
    Ok(h)
}

/// (job, epoch) pairs leased to `worker` right now, per the watch.
fn held_by(h: &Harness, ids: &[JobId], worker: &str) -> Vec<(JobId, u64)> {
    ids.iter()
        .filter_map(|id| h.audit.latest(id))
        .filter(|r| {
            !r.state.is_terminal()
                && r.lease
                    .as_ref()
                    .is_some_and(|l| l.worker.as_str() == worker)
        })
        .map(|r| (r.id, r.epoch))
        .collect()
}

/// Waits until every one of `held` is terminal or at a later epoch (re-leased).
async fn wait_moved_on(
    h: &Harness,
    held: &[(JobId, u64)],
    timeout: Duration,
) -> anyhow::Result<()> {
    let moved_on = |(id, epoch): &(JobId, u64)| {
        h.audit
            .latest(id)
            .is_some_and(|r| r.epoch > *epoch || r.state.is_terminal())
    };
    let waited = eventually(timeout, "the held jobs to be re-leased", || async {
        held.iter().all(moved_on).then_some(())
    })
    .await;
    waited.map_err(|e| {
        // Name the jobs that did not move on and where they are.
        let stuck: Vec<String> = held
            .iter()
            .filter(|h| !moved_on(h))
            .map(|(id, epoch)| match h.audit.latest(id) {
                Some(r) => format!(
                    "{id}@{epoch}: {} epoch {} attempts {} ({})",
                    r.state,
                    r.epoch,
                    r.attempts,
                    r.reason.as_deref().unwrap_or("-")
                ),
                None => format!("{id}@{epoch}: unknown"),
            })
            .collect();
        e.context(format!("not re-leased: {}", stuck.join("; ")))
    })
}

async fn worker_kill(scale: &Scale, gf: &GfCommand) -> anyhow::Result<Report> {
    let mut h = fleet("worker-kill", gf, ClusterSpec::default(), three_workers()).await?;
    let n = scale.jobs;
    let ids = fault_holding_worker(&mut h, n, Fault::Kill, "kill").await?;
    h.fault(Part::Worker(0), Fault::Start)?;
    h.wait_terminal(&ids, budget(n)).await?;
    h.finish(true).await
}

/// The standard workload with `fault` on worker w0 once it holds jobs: every job it
/// held must be re-leased (or done) within the recovery bound. Returns every job id.
async fn fault_holding_worker(
    h: &mut Harness,
    n: usize,
    fault: Fault,
    at: &str,
) -> anyhow::Result<Vec<JobId>> {
    let ids = h.submit_many(n, |_| h_effect("0.2")).await?;
    h.wait_some_terminal(&ids, n / 4, budget(n)).await?;
    h.wait_worker_running(&ids, "w0", Duration::from_secs(30))
        .await?;
    let held = held_by(h, &ids, "w0");
    h.fault(Part::Worker(0), fault)?;
    let bound = h.cluster.spec().timings.recovery_bound();
    wait_moved_on(h, &held, bound + Duration::from_secs(5)).await?;
    h.note(format!(
        "{} jobs held by w0 at the {at} were re-leased",
        held.len()
    ));
    Ok(ids)
}

/// Undoes the fault on w0 (`undo`), lets every job finish, and checks that the
/// worker comes back to work: active again with a heartbeat after the undo.
async fn worker_rejoins(
    h: &mut Harness,
    ids: &[JobId],
    n: usize,
    undo: Fault,
    within: Duration,
) -> anyhow::Result<()> {
    let undone = h.fault(Part::Worker(0), undo)?;
    h.wait_terminal(ids, budget(n)).await?;
    if let Err(e) = h.wait_workers_active(&["w0".into()], undone, within).await {
        h.fail(format!("w0 did not rejoin after the {undo:?}: {e}"));
    }
    Ok(())
}

/// A job that sleeps `sleep` seconds, then appends `<job id> <epoch>` to the
/// side-effect file (whose path [`Harness::submit_many`] fills in). Ten attempts, so
/// repeated faults cannot make it dead.
fn h_effect(sleep: &str) -> JobSpec {
    let mut spec = JobSpec::command([
        "sh",
        "-c",
        r#"sleep "$SLEEP"; echo "$GF_JOB_ID $GF_EPOCH" >> "$EFFECTS""#,
    ]);
    spec.env.insert("SLEEP".into(), sleep.into());
    spec.env.insert("EFFECTS".into(), String::new());
    spec.max_attempts = 10;
    spec
}

async fn worker_pause(scale: &Scale, gf: &GfCommand) -> anyhow::Result<Report> {
    let mut h = fleet("worker-pause", gf, ClusterSpec::default(), three_workers()).await?;
    let n = scale.jobs;
    let ids = fault_holding_worker(&mut h, n, Fault::Pause, "pause").await?;
    // The zombie is fenced (the audit checks it) and comes back to work.
    worker_rejoins(&mut h, &ids, n, Fault::Resume, Duration::from_secs(30)).await?;
    h.finish(true).await
}

async fn worker_short_pause(scale: &Scale, gf: &GfCommand) -> anyhow::Result<Report> {
    let mut h = fleet(
        "worker-short-pause",
        gf,
        ClusterSpec::default(),
        three_workers(),
    )
    .await?;
    let n = scale.jobs;
    let pause = h.cluster.spec().timings.lease_ttl / 3;
    let ids = h.submit_many(n, |_| h_effect("1")).await?;
    h.wait_worker_running(&ids, "w0", Duration::from_secs(30))
        .await?;
    let held = held_by(&h, &ids, "w0");
    h.fault(Part::Worker(0), Fault::Pause)?;
    // The fault lasts a fixed time by design: a pause of a third of the TTL.
    tokio::time::sleep(pause).await;
    h.fault(Part::Worker(0), Fault::Resume)?;
    h.wait_terminal(&ids, budget(n)).await?;
    let mut revoked = Vec::new();
    for (id, epoch) in &held {
        let r = h.audit.latest(id).context("record")?;
        if r.epoch != *epoch || r.history.iter().any(|a| a.outcome.is_none()) {
            revoked.push(*id);
        }
    }
    if !revoked.is_empty() {
        h.fail(format!(
            "a pause of {pause:?} (under the TTL) lost leases: {revoked:?}"
        ));
    }
    h.note(format!(
        "{} jobs held through a {pause:?} pause, none re-leased",
        held.len()
    ));
    h.finish(true).await
}

/// Applies `fault` to the scheduler leader and waits for a standby to lead, failing the
/// run if that takes longer than leader TTL + 3 s. Returns the old leader's part and id.
async fn leader_takeover(
    h: &mut Harness,
    fault: Fault,
    how: &str,
) -> anyhow::Result<(Part, String)> {
    let (part, old) = h.wait_leader(Duration::from_secs(10)).await?;
    let t0 = Instant::now();
    h.fault(part, fault)?;
    let limit = h.cluster.spec().timings.leader_ttl + Duration::from_secs(3);
    let new = eventually(limit + Duration::from_secs(10), "a new leader", || async {
        h.leader().await.filter(|(_, id)| *id != old)
    })
    .await?;
    let took = t0.elapsed();
    h.note(format!(
        "{} took over from {how}{old} after {:.2} s",
        new.1,
        took.as_secs_f64()
    ));
    if took > limit {
        h.fail(format!("takeover took {took:?}, bound {limit:?}"));
    }
    Ok((part, old))
}

async fn leader_kill(scale: &Scale, gf: &GfCommand) -> anyhow::Result<Report> {
    let mut h = fleet("leader-kill", gf, ClusterSpec::default(), three_workers()).await?;
    let n = scale.jobs;
    let ids = h.submit_many(n, |_| h_effect("0.05")).await?;
    h.wait_some_terminal(&ids, n / 4, budget(n)).await?;
    let (part, _) = leader_takeover(&mut h, Fault::Kill, "").await?;
    h.wait_terminal(&ids, budget(n)).await?;
    h.fault(part, Fault::Start)?;
    // The fleet still takes new work with the old leader back as a standby.
    let late = h.submit_many(5, |_| h_effect("0")).await?;
    h.wait_terminal(&late, Duration::from_secs(60)).await?;
    h.finish(true).await
}

async fn leader_pause(scale: &Scale, gf: &GfCommand) -> anyhow::Result<Report> {
    let mut h = fleet("leader-pause", gf, ClusterSpec::default(), three_workers()).await?;
    let n = scale.jobs;
    let ids = h.submit_many(n, |_| h_effect("0.05")).await?;
    h.wait_some_terminal(&ids, n / 4, budget(n)).await?;
    let (part, old) = leader_takeover(&mut h, Fault::Pause, "the paused ").await?;
    // Let the new leader work for a while, then wake the zombie.
    let done = h.audit.terminal_count(&ids);
    let _ = h
        .wait_some_terminal(&ids, (done + n / 8).min(n), Duration::from_secs(30))
        .await;
    let resumed = h.fault(part, Fault::Resume)?;
    h.wait_terminal(&ids, budget(n)).await?;
    let late = h.submit_many(5, |_| h_effect("0")).await?;
    h.wait_terminal(&late, Duration::from_secs(60)).await?;
    zombie_stays_quiet(&mut h, &old, resumed, "resumed").await;
    h.finish(true).await
}

/// The old leader must not act as leader after it is back (`since`) while another
/// one leads: no dispatch, no reap in its name.
async fn zombie_stays_quiet(h: &mut Harness, old: &str, since: Timestamp, how: &str) {
    let events = crate::audit::read_events(&h.js).await.unwrap_or_default();
    let grace = since.plus(Duration::from_secs(1));
    let acts: Vec<JobId> = events
        .iter()
        .filter(|e| e.source == old && e.time > grace)
        .filter(|e| {
            matches!(
                e.kind,
                EventKind::JobDispatched | EventKind::JobLeaseExpired
            )
        })
        .filter_map(|e| e.job_id)
        .collect();
    let still = h.leader().await.map(|l| l.1);
    if !acts.is_empty() && still.as_deref() != Some(old) {
        h.fail(format!(
            "the {how} zombie leader {old} dispatched or reaped {} jobs after coming back: {:?}",
            acts.len(),
            &acts[..acts.len().min(10)]
        ));
    }
}

async fn leader_partition(scale: &Scale, gf: &GfCommand) -> anyhow::Result<Report> {
    let mut h = fleet(
        "leader-partition",
        gf,
        ClusterSpec::default(),
        three_workers(),
    )
    .await?;
    let n = scale.jobs;
    let ids = h.submit_many(n, |_| h_effect("0.05")).await?;
    h.wait_some_terminal(&ids, n / 4, budget(n)).await?;
    let (part, old) = leader_takeover(&mut h, Fault::Cut, "the partitioned ").await?;
    let done = h.audit.terminal_count(&ids);
    let _ = h
        .wait_some_terminal(&ids, (done + n / 8).min(n), Duration::from_secs(30))
        .await;
    let healed = h.fault(part, Fault::Heal)?;
    h.wait_terminal(&ids, budget(n)).await?;
    let late = h.submit_many(5, |_| h_effect("0")).await?;
    h.wait_terminal(&late, Duration::from_secs(60)).await?;
    zombie_stays_quiet(&mut h, &old, healed, "healed").await;
    h.finish(true).await
}

/// The NATS node that leads the jobs bucket's stream (by the server name the cluster
/// reports), as a part.
async fn jobs_stream_leader(h: &Harness) -> anyhow::Result<(Part, String)> {
    let kv = h.js.get_key_value(names::BUCKET_JOBS).await?;
    let mut stream = h.js.get_stream(&kv.stream_name).await?;
    let info = stream.info().await?;
    let leader = info
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .context("the jobs stream reports no leader")?;
    let part = h
        .cluster
        .parts()
        .into_iter()
        .find(|p| matches!(p, Part::Nats(_)) && h.cluster.name(*p).as_deref() == Some(&leader))
        .with_context(|| format!("no NATS part named {leader}"))?;
    Ok((part, leader))
}

async fn nats_partition(scale: &Scale, gf: &GfCommand) -> anyhow::Result<Report> {
    let mut h = fleet(
        "nats-partition",
        gf,
        ClusterSpec::default(),
        three_workers(),
    )
    .await?;
    let n = scale.jobs;
    let ids = h.submit_many(n, |_| h_effect("0.05")).await?;
    h.wait_some_terminal(&ids, n / 4, budget(n)).await?;
    let (part, leader) = jobs_stream_leader(&h).await?;
    h.fault(part, Fault::Cut)?;
    let done = h.audit.terminal_count(&ids);
    // The majority elects a new stream leader and the fleet goes on without the node.
    h.wait_some_terminal(&ids, (done + n / 8).min(n), budget(n))
        .await?;
    h.note(format!(
        "{} more jobs finished with {leader} (the jobs stream's leader) partitioned",
        h.audit.terminal_count(&ids) - done
    ));
    h.fault(part, Fault::Heal)?;
    h.wait_terminal(&ids, budget(n)).await?;
    let late = h.submit_many(5, |_| h_effect("0")).await?;
    h.wait_terminal(&late, Duration::from_secs(60)).await?;
    h.finish(true).await
}

/// Restarts `parts` one after the other (graceful stop, start, healthy) while batches
/// of jobs are submitted: a batch before each restart, so every restart happens
/// under load, and one at the end.
async fn rolling(h: &mut Harness, n: usize, parts: &[Part]) -> anyhow::Result<Vec<JobId>> {
    let batch = n / (parts.len() + 1);
    let mut ids = Vec::new();
    for (k, part) in parts.iter().enumerate() {
        let more = h.submit_many(batch, |_| h_effect("0.2")).await?;
        ids.extend(more);
        h.wait_some_terminal(&ids, k * batch + batch / 4, budget(n))
            .await?;
        let t0 = Instant::now();
        h.fault(*part, Fault::Stop)?;
        h.fault(*part, Fault::Start)?;
        let running = h.audit.terminal_count(&ids);
        h.note(format!(
            "{part} restarted (stop, start, healthy) in {:.1} s with {} of {} jobs done",
            t0.elapsed().as_secs_f64(),
            running,
            ids.len()
        ));
    }
    let rest = h
        .submit_many(n - batch * parts.len(), |_| h_effect("0.2"))
        .await?;
    ids.extend(rest);
    h.wait_terminal(&ids, budget(n)).await?;
    Ok(ids)
}

async fn nats_rolling_restart(scale: &Scale, gf: &GfCommand) -> anyhow::Result<Report> {
    let mut h = fleet(
        "nats-rolling-restart",
        gf,
        ClusterSpec::default(),
        three_workers(),
    )
    .await?;
    let nodes: Vec<Part> = h
        .cluster
        .parts()
        .into_iter()
        .filter(|p| matches!(p, Part::Nats(_)))
        .collect();
    rolling(&mut h, scale.jobs, &nodes).await?;
    h.finish(true).await
}

async fn coordinator_rolling_upgrade(scale: &Scale, gf: &GfCommand) -> anyhow::Result<Report> {
    let mut h = fleet(
        "coordinator-rolling-upgrade",
        gf,
        ClusterSpec::default(),
        three_workers(),
    )
    .await?;
    rolling(
        &mut h,
        scale.jobs,
        &[Part::Coordinator(0), Part::Coordinator(1)],
    )
    .await?;
    h.finish(true).await
}

async fn nats_restart(scale: &Scale, gf: &GfCommand) -> anyhow::Result<Report> {
    let mut h = fleet("nats-restart", gf, ClusterSpec::default(), three_workers()).await?;
    let n = scale.jobs;
    let ids = h.submit_many(n, |_| h_effect("0.05")).await?;
    h.wait_some_terminal(&ids, n / 4, budget(n)).await?;
    h.fault(Part::Nats(0), Fault::Kill)?;
    h.fault(Part::Nats(0), Fault::Start)?;
    h.wait_terminal(&ids, budget(n)).await?;
    let late = h.submit_many(5, |_| h_effect("0")).await?;
    h.wait_terminal(&late, Duration::from_secs(60)).await?;
    h.finish(true).await
}

/// The grace period of finished jobs in `archiver-kill`: longer than the outage plus a
/// new leader's takeover (the killed leader's lease runs out, the new one's view
/// replays the bucket and hands the archiver what lies above the stored position), so
/// nothing may be lost; short enough that every job leaves `gf_jobs` during the run.
const ARCHIVER_KILL_GRACE: Duration = Duration::from_secs(45);
/// How long the archiver is down: a few seconds, well inside the grace period.
const ARCHIVER_OUTAGE: Duration = Duration::from_secs(3);

/// Kills every coordinator (the leader archives, from its view) while jobs finish,
/// restarts them within the grace period, and lets every job's grace period end: each
/// finished job must be in the archive, as the watch last saw it, and the final check
/// reads them there.
async fn archiver_kill(scale: &Scale, gf: &GfCommand) -> anyhow::Result<Report> {
    let spec = ClusterSpec {
        history_grace: Some(ARCHIVER_KILL_GRACE),
        ..Default::default()
    };
    let mut h = fleet("archiver-kill", gf, spec, three_workers()).await?;
    let n = scale.jobs;
    let ids = h.submit_many(n, |_| h_effect("0.05")).await?;
    h.wait_some_terminal(&ids, n / 4, budget(n)).await?;
    let coordinators: Vec<Part> = h
        .cluster
        .parts()
        .into_iter()
        .filter(|p| matches!(p, Part::Coordinator(_)))
        .collect();
    for p in &coordinators {
        h.fault(*p, Fault::Kill)?;
    }
    let finished_at_kill = h.audit.terminal_count(&ids);
    let (above, through) = archiver_backlog(&h).await.unwrap_or_default();
    h.note(format!(
        "archiver killed with {finished_at_kill} of {n} jobs finished: {above} job writes above its stored position ({through}), left to the next leader"
    ));
    // The outage lasts a fixed time by design.
    tokio::time::sleep(ARCHIVER_OUTAGE).await;
    for p in &coordinators {
        h.fault(*p, Fault::Start)?;
    }
    h.wait_terminal(&ids, budget(n)).await?;

    // Every job leaves the live store when its grace period ends…
    let jobs = h.js.get_key_value(names::BUCKET_JOBS).await?;
    let limit = ARCHIVER_KILL_GRACE + Duration::from_secs(30);
    let left = eventually(limit, "every job to leave gf_jobs", || async {
        let live = gf_coordinator::store::read_all(&jobs).await.ok()?;
        let live: std::collections::BTreeSet<String> = live.into_iter().map(|(k, _)| k).collect();
        ids.iter()
            .all(|id| !live.contains(&names::job_key(id)))
            .then_some(())
    })
    .await;
    if let Err(e) = left {
        h.fail(format!(
            "finished jobs stayed in gf_jobs past their grace period: {e}"
        ));
    }
    // …and is in the archive, as the watch last saw it.
    let (mut missing, mut differ) = (Vec::new(), Vec::new());
    for id in &ids {
        match gf_coordinator::history::archive::find(&h.js, id).await? {
            None => missing.push(*id),
            Some(archived) => {
                let seen = h.audit.latest(id);
                if seen.is_none_or(|s| (s.state, s.epoch) != (archived.state, archived.epoch)) {
                    differ.push(*id);
                }
            }
        }
    }
    if !missing.is_empty() {
        h.fail(format!(
            "{} finished jobs are missing from the archive: {:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
        ));
    }
    if !differ.is_empty() {
        h.fail(format!(
            "{} archived records differ from the last state seen: {:?}",
            differ.len(),
            &differ[..differ.len().min(10)]
        ));
    }
    h.note(format!(
        "all {n} jobs left gf_jobs after their grace period; {} archived",
        n - missing.len()
    ));
    h.finish(true).await
}

/// Job writes above the archive's stored position (what the next leader archives
/// from), and that position.
async fn archiver_backlog(h: &Harness) -> anyhow::Result<(u64, u64)> {
    let through = gf_coordinator::history::archive::position(&h.js).await?;
    let mut stream =
        h.js.get_stream(format!("KV_{}", names::BUCKET_JOBS))
            .await?;
    let last = stream.info().await?.state.last_sequence;
    Ok((last.saturating_sub(through), through))
}

async fn cluster_node_kill(scale: &Scale, gf: &GfCommand) -> anyhow::Result<Report> {
    let spec = ClusterSpec {
        nats_nodes: 3,
        ..Default::default()
    };
    let mut h = fleet("cluster-node-kill", gf, spec, three_workers()).await?;
    let n = scale.jobs;
    let ids = h.submit_many(n, |_| h_effect("0.05")).await?;
    h.wait_some_terminal(&ids, n / 4, budget(n)).await?;
    h.fault(Part::Nats(0), Fault::Kill)?;
    let done = h.audit.terminal_count(&ids);
    h.wait_some_terminal(&ids, (done + n / 8).min(n), budget(n))
        .await?;
    h.fault(Part::Nats(0), Fault::Start)?;
    h.wait_terminal(&ids, budget(n)).await?;
    let late = h.submit_many(5, |_| h_effect("0")).await?;
    h.wait_terminal(&late, Duration::from_secs(60)).await?;
    h.finish(true).await
}

async fn worker_partition(scale: &Scale, gf: &GfCommand) -> anyhow::Result<Report> {
    let mut workers = three_workers();
    workers[0].via_proxy = true;
    let mut h = fleet("worker-partition", gf, ClusterSpec::default(), workers).await?;
    let n = scale.jobs;
    let ids = fault_holding_worker(&mut h, n, Fault::Cut, "cut").await?;
    worker_rejoins(&mut h, &ids, n, Fault::Heal, Duration::from_secs(60)).await?;
    h.finish(true).await
}

async fn idempotency(scale: &Scale, gf: &GfCommand) -> anyhow::Result<Report> {
    let mut h = fleet("idempotency", gf, ClusterSpec::default(), three_workers()).await?;
    let keys = (scale.jobs / 10).max(5);
    let clients = if scale.quick { 6 } else { 16 };
    let run = format!("{:08x}", rand::random::<u32>());
    let mut conns = Vec::new();
    for _ in 0..clients {
        conns.push(RpcClient::new(
            connect(&*h.cluster).await?,
            Duration::from_secs(10),
        ));
    }
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(clients));
    let mut tasks = Vec::new();
    for c in conns {
        let audit = h.audit.clone();
        let barrier = barrier.clone();
        let run = run.clone();
        let effects = h.effects.display().to_string();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut out = Vec::new();
            let subs = futures::stream::iter(0..keys)
                .map(|k| {
                    let mut spec = h_effect("0");
                    spec.env.insert("EFFECTS".into(), effects.clone());
                    spec.idempotency_key = Some(format!("idem-{run}-{k}"));
                    let c = c.clone();
                    let audit = audit.clone();
                    async move {
                        let t = Timestamp::now_local();
                        let r = c.call::<_, SubmitReply>(rpc::SUBMIT, &spec).await;
                        if let Ok(r) = &r {
                            audit.submitted(crate::audit::SubmitEntry {
                                time: t,
                                key: spec.idempotency_key.clone(),
                                job_id: Some(r.job_id),
                                duplicate: r.duplicate,
                                error: None,
                            });
                        }
                        (
                            k,
                            r.map(|r| (r.job_id, r.duplicate))
                                .map_err(|e| e.to_string()),
                        )
                    }
                })
                .buffer_unordered(16)
                .collect::<Vec<_>>()
                .await;
            out.extend(subs);
            out
        }));
    }
    let mut per_key: BTreeMap<usize, Vec<(JobId, bool)>> = BTreeMap::new();
    let mut errors = Vec::new();
    for t in tasks {
        for (k, r) in t.await? {
            match r {
                Ok(x) => per_key.entry(k).or_default().push(x),
                Err(e) => errors.push(e),
            }
        }
    }
    if !errors.is_empty() {
        h.fail(format!(
            "{} submissions failed: {:?}",
            errors.len(),
            &errors[..errors.len().min(3)]
        ));
    }
    let mut ids = Vec::new();
    for (k, replies) in &per_key {
        let firsts = replies.iter().filter(|(_, dup)| !dup).count();
        if firsts != 1 {
            h.fail(format!("key {k}: {firsts} replies said `not a duplicate`"));
        }
        ids.push(replies[0].0);
    }
    h.effect_jobs.extend(ids.iter().copied());
    h.note(format!(
        "{keys} keys x {clients} clients at once: {} submissions",
        keys * clients
    ));
    h.wait_terminal(&ids, budget(ids.len())).await?;
    h.finish(true).await
}

/// Garbage, truncated and wrong-shaped bodies.
fn poison_bodies() -> Vec<Vec<u8>> {
    let valid = serde_json::to_vec(&JobSpec::command(["true"])).expect("json");
    let mut v: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"\x00\xff\xfe garbage \x01".to_vec(),
        b"{".to_vec(),
        b"null".to_vec(),
        b"[]".to_vec(),
        b"\"string\"".to_vec(),
        b"{\"job_id\": 12, \"epoch\": -1}".to_vec(),
        b"{\"job_id\": \"not-a-uuid\", \"epoch\": 1, \"worker_id\": \"x\"}".to_vec(),
        vec![b'['; 10_000],
        "{\"command\": [\"\u{fffd}\"], \"extra\": 1}"
            .as_bytes()
            .to_vec(),
    ];
    for cut in [1, valid.len() / 2, valid.len() - 1] {
        v.push(valid[..cut].to_vec());
    }
    v
}

/// Every factory subject of `factory`, and subjects under `gf.rpc.w.` whose factory
/// or verb token is garbage (each must be refused, not dropped).
fn poison_factory_subjects(factory: &WorkerId) -> Vec<String> {
    let mut subjects: Vec<String> = names::FactoryVerb::ALL
        .into_iter()
        .map(|verb| names::factory_rpc(factory, verb))
        .collect();
    let prefix = names::FACTORY_RPC_PREFIX;
    let long = "f".repeat(200);
    for bad in [
        format!("{prefix}._.claim"),
        format!("{prefix}.{long}.claim"),
        format!("{prefix}.f\u{e9}.claim"),
        format!("{prefix}.{factory}.submit"),
        format!("{prefix}.{factory}.claim.extra"),
        format!("{prefix}.{factory}"),
    ] {
        subjects.push(bad);
    }
    subjects
}

/// A well-formed request for `verb` that names `worker` (batch verbs: a batch of one).
fn request_naming(verb: names::FactoryVerb, worker: &WorkerId) -> serde_json::Value {
    use gf_schemas::rpc::{ReleaseRequest, RenewRequest};
    use names::FactoryVerb::*;
    let (job_id, epoch, worker_id) = (JobId::new(), 1, worker.clone());
    let value = match verb {
        Register => serde_json::to_value(RegisterRequest {
            worker_id,
            capabilities: Capabilities {
                queues: vec![gf_schemas::DEFAULT_QUEUE.into()],
                ..Default::default()
            },
            slots: 1,
            version: "poison".into(),
            hostname: "poison".into(),
        }),
        Heartbeat => serde_json::to_value(HeartbeatRequest {
            worker_id,
            state: WorkerState::Active,
            free_slots: 1,
            running: Vec::new(),
        }),
        Claim => serde_json::to_value(ClaimRequest {
            job_id,
            epoch,
            worker_id,
        }),
        Renew => serde_json::to_value(RenewRequest {
            job_id,
            epoch,
            worker_id,
            usage: None,
            ran_ms: None,
        }),
        Complete => serde_json::to_value(CompleteRequest {
            job_id,
            epoch,
            worker_id,
            outcome: AttemptOutcome::Succeeded { exit_code: 0 },
            result: None,
            usage: None,
            ran_ms: None,
        }),
        Release => serde_json::to_value(ReleaseRequest {
            job_id,
            epoch,
            worker_id,
            reason: "poison".into(),
        }),
        UploadBegin => serde_json::to_value(gf_schemas::artifact::UploadBeginRequest {
            job_id,
            epoch,
            worker_id,
            kind: gf_schemas::artifact::BlobKind::Artifact,
            name: "poison.txt".into(),
            size: 1,
        }),
        UploadChunk => serde_json::to_value(gf_schemas::artifact::UploadChunkRequest {
            job_id,
            epoch,
            worker_id,
            upload: names::artifact_nuid(&job_id, "1", "0123456789abcdef"),
            seq: 0,
            data: "cG9pc29u".into(),
        }),
        UploadCommit => serde_json::to_value(gf_schemas::artifact::UploadCommitRequest {
            job_id,
            epoch,
            worker_id,
            upload: names::artifact_nuid(&job_id, "1", "0123456789abcdef"),
            kind: gf_schemas::artifact::BlobKind::Artifact,
            name: "poison.txt".into(),
            size: 1,
            chunks: 1,
            sha256: "0".repeat(64),
        }),
        CheckpointRead => serde_json::to_value(gf_schemas::artifact::CheckpointReadRequest {
            job_id,
            epoch,
            worker_id,
            after: None,
        }),
        ClaimBatch | CompleteBatch => {
            return serde_json::json!([request_naming(verb.batched().expect("batch"), worker)])
        }
    };
    value.expect("wire types serialize")
}

async fn poison(scale: &Scale, gf: &GfCommand) -> anyhow::Result<Report> {
    let mut h = fleet("poison", gf, ClusterSpec::default(), three_workers()).await?;
    let factory = WorkerId::new("poisoner")?;
    let mut subjects: Vec<String> = [rpc::SUBMIT, rpc::GET_JOB, rpc::CANCEL, rpc::SUBMIT_BATCH]
        .map(String::from)
        .into();
    subjects.extend(poison_factory_subjects(&factory));
    subjects.extend(rpc::LEGACY_FACTORY_SUBJECTS.map(String::from));
    let is_batch = |subject: &str| {
        rpc::batched(subject).is_some()
            || names::parse_factory_rpc(subject).is_ok_and(|f| f.verb.batched().is_some())
    };
    let mut sent = 0;
    let mut unanswered = Vec::new();
    let mut accepted = Vec::new();
    for subject in &subjects {
        let mut bodies = poison_bodies();
        if is_batch(subject) {
            // The same poison as batch items, next to the malformed batches themselves.
            let items: Vec<Vec<u8>> = bodies
                .iter()
                .filter(|b| serde_json::from_slice::<serde_json::Value>(b).is_ok())
                .map(|b| [b"[".as_slice(), b, b"]"].concat())
                .collect();
            bodies.extend(items);
        }
        for body in bodies {
            sent += 1;
            let r = tokio::time::timeout(
                Duration::from_secs(5),
                h.nats.request(subject.clone(), body.clone().into()),
            )
            .await;
            match r {
                Ok(Ok(msg)) => {
                    let v: serde_json::Value =
                        serde_json::from_slice(&msg.payload).unwrap_or_default();
                    // A batch is answered item by item: poison in it must fail each one.
                    let accepted_item = match v.get("ok") {
                        Some(serde_json::Value::Array(items)) if is_batch(subject) => {
                            items.iter().any(|i| i.get("error").is_none())
                        }
                        _ => v.get("error").is_none(),
                    };
                    if accepted_item {
                        accepted.push(format!("{subject} <- {:?}", String::from_utf8_lossy(&body)));
                    }
                }
                _ => unanswered.push(format!("{subject} <- {:?}", String::from_utf8_lossy(&body))),
            }
        }
    }
    // Impersonation: well-formed requests on one factory's subjects naming a worker of
    // the fleet. Each (and each batch item) must be refused as `forbidden`.
    let victim = WorkerId::new("w0")?;
    let mut impersonated = Vec::new();
    for verb in names::FactoryVerb::ALL {
        let subject = names::factory_rpc(&factory, verb);
        let body = serde_json::to_vec(&request_naming(verb, &victim))?;
        sent += 1;
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            h.nats.request(subject.clone(), body.into()),
        )
        .await;
        let v: serde_json::Value = match r {
            Ok(Ok(msg)) => serde_json::from_slice(&msg.payload).unwrap_or_default(),
            _ => {
                unanswered.push(format!("{subject} <- a request naming {victim}"));
                continue;
            }
        };
        let kinds: Vec<&serde_json::Value> = match v.get("ok") {
            Some(serde_json::Value::Array(items)) if verb.batched().is_some() => {
                items.iter().map(|i| &i["error"]["kind"]).collect()
            }
            _ => vec![&v["error"]["kind"]],
        };
        if kinds
            .iter()
            .any(|k| k.as_str() != Some(ErrorKind::Forbidden.as_str()))
        {
            impersonated.push(format!("{subject}: {v}"));
        }
    }
    if !impersonated.is_empty() {
        h.fail(format!(
            "requests naming another worker not refused as forbidden: {impersonated:?}"
        ));
    }
    // Malformed and misleading dispatch notices, straight into the dispatch stream.
    let route = Routing::default()
        .route_of(&JobSpec::command(["true"]))
        .subject();
    let real = h.submit_many(1, |_| h_effect("0")).await?;
    let ghost = DispatchNotice {
        job_id: JobId::new(),
        epoch: 1,
        dispatched_at: Timestamp::now_local(),
    };
    let future_epoch = DispatchNotice {
        job_id: real[0],
        epoch: 999,
        dispatched_at: Timestamp::now_local(),
    };
    let mut notices = poison_bodies();
    notices.push(serde_json::to_vec(&ghost)?);
    notices.push(serde_json::to_vec(&future_epoch)?);
    for body in notices {
        h.js.publish(route.clone(), body.into()).await?.await?;
        sent += 1;
    }
    h.note(format!("{sent} poison messages sent"));
    if !unanswered.is_empty() {
        h.fail(format!(
            "{} poison requests got no answer: {:?}",
            unanswered.len(),
            &unanswered[..unanswered.len().min(5)]
        ));
    }
    if !accepted.is_empty() {
        h.fail(format!("poison accepted as valid: {accepted:?}"));
    }
    let n = scale.jobs;
    let mut ids = h.submit_many(n, |_| h_effect("0")).await?;
    ids.extend(real);
    h.wait_terminal(&ids, budget(n)).await?;
    for p in h.cluster.parts() {
        if !h.cluster.alive(p) {
            h.fail(format!("{p} died after the poison"));
        }
    }
    h.finish(true).await
}

async fn race_50(scale: &Scale, gf: &GfCommand) -> anyhow::Result<Report> {
    let mut h = Harness::start("race-50", ClusterSpec::default(), gf.clone(), 2).await?;
    let workers_n = 50;
    let stop = CancellationToken::new();
    let mut workers = Vec::new();
    for i in 0..workers_n {
        let cfg = gf_worker::WorkerConfig {
            // Secured: in-process workers of the harness log in as the operator.
            nats_url: h.cluster.operator_url(0),
            id: Some(WorkerId::new(format!("race{i}"))?),
            slots: 1,
            drain_grace: Duration::from_secs(2),
            scratch_dir: Some(h.cluster.work_dir().join(format!("scratch-race{i}"))),
            ..Default::default()
        };
        workers.push(gf_worker::start(cfg, stop.clone()).await?);
    }
    let ids_w: Vec<String> = (0..workers_n).map(|i| format!("race{i}")).collect();
    h.wait_workers_active(
        &ids_w,
        Timestamp::from_unix_millis(0),
        Duration::from_secs(60),
    )
    .await?;
    let n = scale.jobs;
    let ids = h.submit_many(n, |_| h_effect("0")).await?;
    h.wait_terminal(&ids, budget(n)).await?;
    let mut extra = Vec::new();
    let mut by_worker: HashMap<String, usize> = HashMap::new();
    for id in &ids {
        let r = h.audit.latest(id).context("record")?;
        if r.attempts != 1 {
            extra.push(*id);
        }
        if let Some(a) = r.history.last() {
            *by_worker.entry(a.worker.as_str().to_string()).or_default() += 1;
        }
    }
    if !extra.is_empty() {
        h.fail(format!(
            "{} jobs needed more than one attempt without any fault: {:?}",
            extra.len(),
            &extra[..extra.len().min(10)]
        ));
    }
    h.note(format!(
        "{} of {workers_n} workers ran at least one job",
        by_worker.len()
    ));
    stop.cancel();
    for w in workers {
        let _ = tokio::time::timeout(Duration::from_secs(10), w.join()).await;
    }
    h.finish(true).await
}

/// A worker the suite plays itself over the RPC plane (no job process): to time
/// completions against lease expiry, and to load the fabric without process spawns.
pub(crate) struct FakeWorker {
    pub(crate) id: WorkerId,
    pub(crate) rpc: RpcClient,
    stop: CancellationToken,
}

impl FakeWorker {
    pub(crate) async fn register(
        nats: async_nats::Client,
        id: &str,
        queue: &str,
    ) -> anyhow::Result<Self> {
        let id = WorkerId::new(id)?;
        let rpc = RpcClient::new(nats, Duration::from_secs(5));
        let caps = Capabilities {
            values: BTreeMap::new(),
            tags: Default::default(),
            queues: vec![queue.into()],
        };
        let reply: RegisterReply = rpc
            .call_factory(&RegisterRequest {
                worker_id: id.clone(),
                capabilities: caps,
                slots: 64,
                version: "chaos".into(),
                hostname: "chaos".into(),
            })
            .await?;
        let stop = CancellationToken::new();
        let (rpc2, id2, stop2) = (rpc.clone(), id.clone(), stop.clone());
        let every = Duration::from_millis(reply.heartbeat_interval_ms.max(100));
        tokio::spawn(async move {
            loop {
                let _ = rpc2
                    .call_factory::<_, HeartbeatReply>(&HeartbeatRequest {
                        worker_id: id2.clone(),
                        state: WorkerState::Active,
                        free_slots: 64,
                        running: Vec::new(),
                    })
                    .await;
                tokio::select! {
                    _ = stop2.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
            }
        });
        Ok(Self { id, rpc, stop })
    }

    /// Sends a completion until it gets a definitive answer.
    pub(crate) async fn complete(&self, job: JobId, epoch: u64) -> Result<JobState, ErrorKind> {
        let req = CompleteRequest {
            job_id: job,
            epoch,
            worker_id: self.id.clone(),
            outcome: AttemptOutcome::Succeeded { exit_code: 0 },
            result: None,
            usage: None,
            ran_ms: None,
        };
        for _ in 0..50 {
            match self.rpc.call_factory::<_, CompleteReply>(&req).await {
                Ok(r) => return Ok(r.state),
                Err(e) if e.retryable() => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(e) => return Err(e.kind().unwrap_or(ErrorKind::Internal)),
            }
        }
        Err(ErrorKind::Unavailable)
    }
}

impl Drop for FakeWorker {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn complete_vs_reap(scale: &Scale, gf: &GfCommand) -> anyhow::Result<Report> {
    let mut h = Harness::start("complete-vs-reap", ClusterSpec::default(), gf.clone(), 2).await?;
    let queue = "reap";
    let fake = std::sync::Arc::new(FakeWorker::register(h.nats.clone(), "reaptimer", queue).await?);
    h.wait_workers_active(
        &["reaptimer".into()],
        Timestamp::from_unix_millis(0),
        Duration::from_secs(30),
    )
    .await?;
    // The leases the leader grants the fake worker at dispatch.
    let mut msgs = h.nats.subscribe(names::worker_control(&fake.id)).await?;
    let n = scale.jobs;
    let ids = h
        .submit_many(n, |_| {
            let mut s = JobSpec::command(["true"]);
            s.queue = "reap".into();
            s.lease_ttl_secs = Some(1);
            s.max_attempts = 10;
            s
        })
        .await?;
    let index: HashMap<JobId, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    // First completion of each job: its answer, by job.
    let answers = std::sync::Arc::new(std::sync::Mutex::new(HashMap::<
        JobId,
        (u64, Result<JobState, ErrorKind>),
    >::new()));
    let stop = CancellationToken::new();
    let deadline = Instant::now() + budget(n);
    let timed = std::sync::Mutex::new(std::collections::HashSet::<JobId>::new());
    let (ans, fk, st) = (answers.clone(), fake.clone(), stop.clone());
    let handler = tokio::spawn(async move {
        loop {
            let m = tokio::select! {
                _ = st.cancelled() => return,
                m = msgs.next() => m,
            };
            let Some(m) = m else { return };
            let Ok(ControlMessage::Start { grants }) =
                serde_json::from_slice::<ControlMessage>(&m.payload)
            else {
                continue;
            };
            for grant in grants {
                let job = grant.job_id;
                let i = index.get(&job).copied().unwrap_or(0);
                // Only each job's first grant is timed against its lease's deadline (the
                // start deadline: the completion is what confirms the start); later
                // ones (after a lost race) complete at once.
                let first = timed.lock().expect("timed").insert(job);
                let (ans, fk) = (ans.clone(), fk.clone());
                tokio::spawn(async move {
                    if first {
                        // Sweep the completion across the deadline: from 300 ms before
                        // it to 300 ms after (the reaper runs every 200 ms).
                        let offset_ms = -300 + (600 * i as i64) / (n.max(2) as i64 - 1);
                        let at = grant.lease.expires_at.unix_millis() + offset_ms;
                        let wait = at - Timestamp::now_local().unix_millis();
                        if wait > 0 {
                            tokio::time::sleep(Duration::from_millis(wait as u64)).await;
                        }
                        let r = fk.complete(job, grant.lease.epoch).await;
                        ans.lock()
                            .expect("answers")
                            .insert(job, (grant.lease.epoch, r));
                    } else {
                        let _ = fk.complete(job, grant.lease.epoch).await;
                    }
                });
            }
        }
    });
    let r = h
        .wait_terminal(&ids, deadline.saturating_duration_since(Instant::now()))
        .await;
    // A first completion that lost the race may still be on its way when the re-run
    // finished the job: wait for every first completion's answer.
    let r = match r {
        Ok(()) => {
            eventually(
                Duration::from_secs(30),
                "every timed completion's answer",
                || async { (answers.lock().expect("answers").len() >= ids.len()).then_some(()) },
            )
            .await
        }
        Err(e) => Err(e),
    };
    stop.cancel();
    let _ = handler.await;
    r?;
    let answers = answers.lock().expect("answers").clone();
    let (mut won, mut lost, mut wrong) = (0, 0, Vec::new());
    for id in &ids {
        let rec = h.audit.latest(id).context("record")?;
        let Some((epoch, answer)) = answers.get(id) else {
            wrong.push(format!("{id}: no first completion recorded"));
            continue;
        };
        let attempt = rec.history.iter().find(|a| a.epoch == *epoch);
        let accepted = attempt.is_some_and(|a| a.outcome.is_some());
        match answer {
            Ok(_) => {
                won += 1;
                if !accepted || rec.epoch != *epoch {
                    wrong.push(format!("{id}: completion at epoch {epoch} answered ok but the record does not hold it"));
                }
            }
            Err(ErrorKind::StaleEpoch | ErrorKind::Revoked) => {
                lost += 1;
                if accepted {
                    wrong.push(format!(
                        "{id}: completion at epoch {epoch} refused but recorded"
                    ));
                }
            }
            Err(k) => wrong.push(format!("{id}: completion answered {k:?}")),
        }
    }
    h.note(format!(
        "{won} completions won the race with the reaper, {lost} lost it (refused and re-run)"
    ));
    if !wrong.is_empty() {
        h.fail(format!(
            "{} completions disagree with the store: {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(5)]
        ));
    }
    h.finish(true).await
}

async fn clock_skew(scale: &Scale, gf: &GfCommand) -> anyhow::Result<Report> {
    let lib = crate::process::libfaketime()
        .context("libfaketime is not installed here (scripts/install-chaos-deps.sh, or apt-get install faketime)")?;
    let probe = std::process::Command::new("date")
        .arg("+%s")
        .env("LD_PRELOAD", &lib)
        .env("FAKETIME", "+5m")
        .output();
    let skewed = match probe {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .trim()
            .parse::<i64>()
            .ok(),
        _ => None,
    };
    let now = Timestamp::now_local().unix_millis() / 1000;
    let works = skewed.is_some_and(|s| (s - now - 300).abs() < 10);
    if !works {
        anyhow::bail!(
            "libfaketime does not shift the clock here ({})",
            lib.display()
        );
    }
    let mut workers = three_workers();
    workers[0].clock_offset = Some("+5m".into());
    workers[1].clock_offset = Some("-5m".into());
    let mut h = fleet("clock-skew", gf, ClusterSpec::default(), workers).await?;
    let n = scale.jobs;
    // The first jobs outlast a renewal period, so skewed workers renew leases too;
    // each also records the wall clock its process saw.
    let ids = h
        .submit_many(n, |i| {
            let mut s = h_effect(if i < 24 { "1.5" } else { "0.05" });
            s.command = vec![
                "sh".into(),
                "-c".into(),
                r#"sleep "$SLEEP"; echo "$GF_JOB_ID $GF_EPOCH $(date +%s) $GF_WORKER_ID" >> "$EFFECTS""#.into(),
            ];
            s
        })
        .await?;
    h.wait_terminal(&ids, budget(n)).await?;
    // The clock each worker's jobs saw, against ours: proves the skew was real.
    let now = Timestamp::now_local().unix_millis() / 1000;
    let text = std::fs::read_to_string(&h.effects).unwrap_or_default();
    let mut seen: BTreeMap<String, i64> = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if let (Some(t), Some(w)) = (f.get(2).and_then(|t| t.parse::<i64>().ok()), f.get(3)) {
            seen.insert(w.to_string(), t - now);
        }
    }
    h.note(format!(
        "clock offset seen by each worker's jobs, seconds (approx.): {seen:?}"
    ));
    if seen.get("w0").is_none_or(|d| *d < 200) || seen.get("w1").is_none_or(|d| *d > -200) {
        h.fail("faketime did not shift the workers' clocks as asked");
    }
    let mut per_worker: HashMap<String, usize> = HashMap::new();
    let mut lost = Vec::new();
    for id in &ids {
        let r = h.audit.latest(id).context("record")?;
        if r.history.iter().any(|a| a.outcome.is_none()) {
            lost.push(*id);
        }
        for a in &r.history {
            *per_worker.entry(a.worker.as_str().to_string()).or_default() += 1;
        }
    }
    for w in ["w0", "w1"] {
        if per_worker.get(w).copied().unwrap_or(0) == 0 {
            h.fail(format!("the skewed worker {w} ran no job"));
        }
    }
    if !lost.is_empty() {
        h.fail(format!(
            "{} attempts lost their lease with skewed clocks: {:?}",
            lost.len(),
            &lost[..lost.len().min(10)]
        ));
    }
    h.note(format!(
        "attempts per worker (w0 +5 min, w1 -5 min): {per_worker:?}"
    ));
    h.finish(true).await
}

/// Submits `n` jobs in waves of `wave`, each wave waited for: load without a backlog
/// (a backlog held for a minute is what `GigafactoryBacklogGrowingWithoutCapacity`
/// looks for once its durations are scaled).
async fn paced(h: &mut Harness, n: usize, wave: usize, sleep: &str) -> anyhow::Result<()> {
    let mut left = n;
    while left > 0 {
        let k = left.min(wave);
        let ids = h.submit_many(k, |_| h_effect(sleep)).await?;
        h.wait_terminal(&ids, budget(k)).await?;
        left -= k;
    }
    Ok(())
}

/// Waits until each of `names` has fired after `since` (in Alertmanager), then,
/// after `undo`, until each has resolved. Records the times as notes.
async fn alerts_fire_and_resolve(
    h: &mut Harness,
    log: &crate::monitor::AlertLog,
    names: &[&str],
    since: Timestamp,
    what: &str,
) -> anyhow::Result<()> {
    let waited = eventually(
        Duration::from_secs(150),
        &format!("{names:?} to fire after {what}"),
        || async {
            names
                .iter()
                .all(|n| log.fired_since(n, since))
                .then_some(())
        },
    )
    .await;
    if let Err(e) = waited {
        let (polls, err) = log.health();
        h.fail(format!(
            "{e:#} (Alertmanager polls answered: {polls}, last error: {err:?})"
        ));
    }
    Ok(())
}

async fn alerts_resolved(
    h: &mut Harness,
    log: &crate::monitor::AlertLog,
    names: &[&str],
    since: Timestamp,
    what: &str,
) {
    let waited = eventually(
        Duration::from_secs(240),
        &format!("{names:?} to resolve after {what}"),
        || async {
            names
                .iter()
                .all(|n| log.resolved_since(n, since))
                .then_some(())
        },
    )
    .await;
    if let Err(e) = waited {
        h.fail(format!("{e:#}"));
    }
}

async fn alerts(scale: &Scale, gf: &GfCommand) -> anyhow::Result<Report> {
    let mut h = fleet("alerts", gf, ClusterSpec::default(), three_workers()).await?;
    let mon = h
        .cluster
        .monitoring()
        .context("the alerts scenario needs Prometheus and Alertmanager (compose)")?;
    let log = crate::monitor::AlertLog::watch(mon.alertmanager.clone(), h.stop_token());
    let n = scale.jobs;
    let started = Timestamp::now_local();
    // Each expected alert with the fault that explains it: one that fires before its
    // fault is as unrelated as one of another name.
    let mut expected: Vec<(&str, Timestamp)> = Vec::new();

    // 1. Two workers killed while they hold jobs: both are lost, and their 6+ leases
    // expire (the spike threshold is 5).
    let long = h.submit_many(12, |_| h_effect("4")).await?;
    h.wait_worker_running(&long, "w0", Duration::from_secs(30))
        .await?;
    h.wait_worker_running(&long, "w1", Duration::from_secs(30))
        .await?;
    let held = held_by(&h, &long, "w0").len() + held_by(&h, &long, "w1").len();
    let t1 = h.fault(Part::Worker(0), Fault::Kill)?;
    h.fault(Part::Worker(1), Fault::Kill)?;
    let lost = ["GigafactoryWorkerLost", "GigafactoryLeaseExpiriesSpiking"];
    h.note(format!("killed w0 and w1 holding {held} jobs"));
    alerts_fire_and_resolve(&mut h, &log, &lost, t1, "the worker kills").await?;
    h.fault(Part::Worker(0), Fault::Start)?;
    h.fault(Part::Worker(1), Fault::Start)?;
    h.wait_terminal(&long, budget(12)).await?;
    // The bulk of the run, paced, while those alerts resolve.
    paced(&mut h, n.saturating_sub(62), 12, "0.05").await?;
    alerts_resolved(&mut h, &log, &lost, t1, "the workers came back").await;
    expected.extend(lost.map(|a| (a, t1)));

    // 2. Both coordinators frozen: no scheduler leader, coordinators not scraped.
    let t2 = h.fault(Part::Coordinator(0), Fault::Pause)?;
    h.fault(Part::Coordinator(1), Fault::Pause)?;
    let frozen = ["GigafactoryNoSchedulerLeader", "GigafactoryCoordinatorDown"];
    alerts_fire_and_resolve(&mut h, &log, &frozen, t2, "pausing both coordinators").await?;
    h.fault(Part::Coordinator(0), Fault::Resume)?;
    h.fault(Part::Coordinator(1), Fault::Resume)?;
    h.wait_leader(Duration::from_secs(30)).await?;
    alerts_resolved(&mut h, &log, &frozen, t2, "resuming them").await;
    expected.extend(frozen.map(|a| (a, t2)));

    // 3. One NATS node stopped: a replica of the job store is unavailable; jobs run on.
    let t3 = h.fault(Part::Nats(2), Fault::Stop)?;
    let down = ["GigafactoryNatsReplicaDown"];
    paced(&mut h, 25, 12, "0.05").await?;
    alerts_fire_and_resolve(&mut h, &log, &down, t3, "stopping a NATS node").await?;
    h.fault(Part::Nats(2), Fault::Start)?;
    paced(&mut h, 25, 12, "0.05").await?;
    alerts_resolved(&mut h, &log, &down, t3, "starting it again").await;
    expected.extend(down.map(|a| (a, t3)));

    // The report: each alert with its times (seconds after the run's start), and any
    // alert no fault explains.
    let secs = |t: Timestamp| (t.unix_millis() as f64 - started.unix_millis() as f64) / 1000.0;
    for a in log.all() {
        let instance = a
            .labels
            .get("instance")
            .map(|i| format!(" ({i})"))
            .unwrap_or_default();
        let resolved = a
            .resolved
            .map(|r| format!("resolved at +{:.0} s", secs(r)))
            .unwrap_or_else(|| "still firing".into());
        h.note(format!(
            "alert {}{instance}: fired at +{:.0} s, {resolved}",
            a.name,
            secs(a.fired)
        ));
        if !expected
            .iter()
            .any(|(name, fault)| *name == a.name && a.fired >= *fault)
        {
            h.fail(format!(
                "unrelated alert {}{instance} fired at +{:.0} s (no fault of this run explains it then)",
                a.name,
                secs(a.fired)
            ));
        }
    }
    h.note(format!(
        "faults at +{:.0} s (workers killed), +{:.0} s (coordinators paused), +{:.0} s (NATS node stopped)",
        secs(t1),
        secs(t2),
        secs(t3)
    ));
    h.finish(true).await
}
