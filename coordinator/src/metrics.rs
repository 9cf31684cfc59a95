//! Recording coordinator metrics. Names and help texts live in `gf_telemetry`; these
//! helpers keep call sites to one line and labels bounded.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use gf_schemas::rpc::RevokeReason;
use gf_schemas::{AttemptOutcome, ErrorKind, JobState, Usage, WorkerState};
use gf_telemetry::names::*;
use metrics::{counter, gauge, histogram, Counter, Histogram, Label};

use crate::jobmap::JobHasher;

/// A per-job series: its name and up to two fixed labels (`("", "")` when unused), by
/// the address and length of each static string; a queue label, when the series has
/// one, is the key of the inner map. Addresses, not text: comparing the five strings
/// on every lookup was about 2 % of the leader's CPU under load (profiled, issue 20).
/// Equal address and length is equal text; equal text at two addresses only makes two
/// entries, whose handles the recorder resolves to the one series.
type Fixed = [(usize, usize); 5];
type Handles<H> = HashMap<Fixed, HashMap<String, H, JobHasher>, JobHasher>;

fn series_key(name: &'static str, fixed: [(&'static str, &'static str); 2]) -> Fixed {
    let at = |s: &'static str| (s.as_ptr() as usize, s.len());
    [
        at(name),
        at(fixed[0].0),
        at(fixed[0].1),
        at(fixed[1].0),
        at(fixed[1].1),
    ]
}

thread_local! {
    // Handles of the series recorded for every job, looked up by the recorder once per
    // label set and thread: doing it per call (the labels allocated, the key hashed
    // and compared in the recorder's registry) was about 4 % of the leader's CPU under
    // load (profiled, issue 20). Invariant: only filled once `gf_telemetry::install`
    // ran (the global recorder never changes after it), so no handle here belongs to
    // the no-op recorder of a process that installs its recorder later.
    static COUNTERS: RefCell<Handles<Counter>> = RefCell::default();
    static HISTOGRAMS: RefCell<Handles<Histogram>> = RefCell::default();
}

fn labels(queue: Option<&str>, fixed: [(&'static str, &'static str); 2]) -> Vec<Label> {
    queue
        .map(|q| Label::new("queue", q.to_string()))
        .into_iter()
        .chain(
            fixed
                .into_iter()
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| Label::from_static_parts(k, v)),
        )
        .collect()
}

/// Applies `f` to the cached handle of `name{queue, fixed...}`, registering it once.
fn with_handle<H>(
    cache: &'static std::thread::LocalKey<RefCell<Handles<H>>>,
    register: fn(&'static str, Vec<Label>) -> H,
    name: &'static str,
    queue: Option<&str>,
    fixed: [(&'static str, &'static str); 2],
    f: impl FnOnce(&H),
) {
    if !gf_telemetry::installed() {
        return f(&register(name, labels(queue, fixed)));
    }
    cache.with_borrow_mut(|c| {
        let per_queue = c.entry(series_key(name, fixed)).or_default();
        // A series either always has a queue label or never: `""` is never mixed up
        // with a queue of that name.
        let q = queue.unwrap_or("");
        if let Some(h) = per_queue.get(q) {
            return f(h);
        }
        let h = register(name, labels(queue, fixed));
        f(&h);
        per_queue.insert(q.to_string(), h);
    })
}

fn count(name: &'static str, queue: Option<&str>, fixed: [(&'static str, &'static str); 2]) {
    with_handle(
        &COUNTERS,
        |n, l| counter!(n, l),
        name,
        queue,
        fixed,
        |c| c.increment(1),
    );
}

fn observe(
    name: &'static str,
    queue: Option<&str>,
    fixed: [(&'static str, &'static str); 2],
    value: f64,
) {
    with_handle(
        &HISTOGRAMS,
        |n, l| histogram!(n, l),
        name,
        queue,
        fixed,
        |h| h.record(value),
    );
}

const NO_LABEL: (&str, &str) = ("", "");

/// Registers the label-free counters the alert rules take `increase()` of at 0: a
/// series that first appears at 1 has no increase to Prometheus, so the first lease
/// expiry or lost worker would go unseen. Call once the recorder is installed, before
/// the scheduler starts.
pub fn init_counters() {
    for name in [LEASES_EXPIRED, WORKERS_LOST, LEADER_CHANGES] {
        counter!(name).increment(0);
    }
    // A standby reports 0 rather than nothing, so "no leader" is a 0 on every
    // coordinator and not only an absent series. Set before the scheduler starts.
    gauge!(SCHEDULER_LEADER).set(0.0);
}

/// A bucket watch opened (`which` names the watch, never an id): `resumed` from the
/// view's last revision, or a replay of the whole bucket.
pub fn watch_opened(which: &'static str, resumed: bool) {
    let name = if resumed {
        WATCH_RESUMES
    } else {
        WATCH_REPLAYS
    };
    counter!(name, "watch" => which).increment(1);
}

/// A watch that did not deliver what its bucket held in time.
pub fn watch_replay_timeout(which: &'static str) {
    counter!(WATCH_REPLAY_TIMEOUTS, "watch" => which).increment(1);
}

/// A worker marked gone by the leader.
pub fn worker_lost() {
    counter!(WORKERS_LOST).increment(1);
}

/// Refreshes `gf_store_replicas` from the jobs stream's cluster info (one round trip,
/// at most a second: on a timeout the last values stay). A single-node NATS reports no
/// cluster: one current replica.
pub async fn store_replicas(stream: &mut async_nats::jetstream::stream::Stream) {
    let Ok(Ok(info)) = tokio::time::timeout(Duration::from_secs(1), stream.info()).await else {
        return;
    };
    let counts = match &info.cluster {
        Some(c) => ReplicaCounts::of(c.leader.is_some(), &c.replicas),
        None => ReplicaCounts {
            current: 1,
            ..Default::default()
        },
    };
    gauge!(STORE_REPLICAS, "state" => "current").set(counts.current as f64);
    gauge!(STORE_REPLICAS, "state" => "lagging").set(counts.lagging as f64);
    gauge!(STORE_REPLICAS, "state" => "unavailable").set(counts.unavailable as f64);
}

/// A follower not heard from for longer than this is unavailable; NATS itself stops
/// calling a peer current after the same time (its lost-quorum interval).
const REPLICA_SILENCE: Duration = Duration::from_secs(10);

/// The stream's replicas by state, the leader counted as current.
#[derive(Debug, Default, PartialEq, Eq)]
struct ReplicaCounts {
    current: usize,
    /// Up and heard from, but behind the leader: under a burst of fsynced writes on a
    /// busy host a follower can stay behind for minutes; the store keeps working and
    /// nothing is to be restarted, so it is not what `GigafactoryNatsReplicaDown` is for.
    lagging: usize,
    /// Offline, not heard from for [`REPLICA_SILENCE`], or never heard from by this
    /// leader (NATS reports a zero `active` for a peer it has not seen since it took
    /// over): a node down or cut off.
    unavailable: usize,
}

impl ReplicaCounts {
    fn of(has_leader: bool, followers: &[async_nats::jetstream::stream::PeerInfo]) -> Self {
        let mut counts = Self {
            current: usize::from(has_leader),
            ..Default::default()
        };
        for r in followers {
            let unheard = r.active > REPLICA_SILENCE || (r.active.is_zero() && !r.current);
            if r.offline || unheard {
                counts.unavailable += 1;
            } else if r.current {
                counts.current += 1;
            } else {
                counts.lagging += 1;
            }
        }
        counts
    }
}

pub fn outcome_label(o: &AttemptOutcome) -> &'static str {
    match o {
        AttemptOutcome::Succeeded { .. } => "succeeded",
        AttemptOutcome::Failed { .. } => "failed",
        AttemptOutcome::TimedOut { .. } => "timed_out",
    }
}

pub fn revoke_label(r: RevokeReason) -> &'static str {
    match r {
        RevokeReason::LeaseExpired => "lease_expired",
        RevokeReason::Cancelled => "cancelled",
        RevokeReason::Superseded => "superseded",
        RevokeReason::Preempted => "preempted",
        RevokeReason::BudgetExceeded => "budget_exceeded",
    }
}

pub fn rpc(operation: &'static str, took: Duration, result: Result<(), ErrorKind>) {
    observe(
        RPC_DURATION,
        None,
        [("operation", operation), NO_LABEL],
        took.as_secs_f64(),
    );
    let result = match result {
        Ok(()) => "ok",
        Err(k) => k.as_str(),
    };
    count(
        RPC_REQUESTS,
        None,
        [("operation", operation), ("result", result)],
    );
}

pub fn submitted(queue: &str, product: &str) {
    counter!(JOBS_SUBMITTED, "queue" => queue.to_string(), "product" => product.to_string())
        .increment(1);
}

pub fn finished(queue: &str, state: JobState) {
    count(
        JOBS_FINISHED,
        Some(queue),
        [("state", state.as_str()), NO_LABEL],
    );
    if state == JobState::Dead {
        counter!(DEAD_LETTERS, "queue" => queue.to_string()).increment(1);
    }
}

pub fn archived(state: JobState) {
    count(ARCHIVED, None, [("state", state.as_str()), NO_LABEL]);
}

pub fn archive_lag(lag: Duration) {
    gauge!(ARCHIVE_LAG).set(lag.as_secs_f64());
}

pub fn claim(result: Result<(), ErrorKind>) {
    let r = match result {
        Ok(()) => "won",
        Err(k @ (ErrorKind::Conflict | ErrorKind::StaleEpoch | ErrorKind::NotEligible)) => {
            k.as_str()
        }
        Err(_) => "error",
    };
    count(CLAIMS, None, [("result", r), NO_LABEL]);
}

pub fn queue_wait(queue: &str, waited: Duration) {
    observe(QUEUE_WAIT, Some(queue), [NO_LABEL; 2], waited.as_secs_f64());
}

pub fn attempt_finished(queue: &str, outcome: &AttemptOutcome, ran: Duration) {
    let o = outcome_label(outcome);
    count(ATTEMPTS_FINISHED, Some(queue), [("outcome", o), NO_LABEL]);
    observe(
        RUN_TIME,
        Some(queue),
        [("outcome", o), NO_LABEL],
        ran.as_secs_f64(),
    );
}

pub fn retry(queue: &str) {
    counter!(JOB_RETRIES, "queue" => queue.to_string()).increment(1);
}

pub fn fenced(operation: &'static str, kind: ErrorKind) {
    if matches!(kind, ErrorKind::StaleEpoch | ErrorKind::Revoked) {
        counter!(FENCED_WRITES, "operation" => operation, "kind" => kind.as_str()).increment(1);
    }
}

pub fn revoked(reason: RevokeReason) {
    counter!(LEASES_REVOKED, "reason" => revoke_label(reason)).increment(1);
    if reason == RevokeReason::LeaseExpired {
        counter!(LEASES_EXPIRED).increment(1);
    }
}

/// How a dispatch was decided: by the leader's plan pass, or by the submission itself
/// through the direct lane ([`crate::lane`]).
#[derive(Clone, Copy)]
pub enum DispatchedBy {
    Pass,
    Submission,
}

pub fn dispatched(queue: &str, by: DispatchedBy) {
    let by = match by {
        DispatchedBy::Pass => "pass",
        DispatchedBy::Submission => "submission",
    };
    count(DISPATCHES, Some(queue), [("by", by), NO_LABEL]);
}

pub fn unplaceable(queue: &str) {
    counter!(UNPLACEABLE, "queue" => queue.to_string()).increment(1);
}

pub fn usage(u: &Usage) {
    let provider = u.provider.clone().unwrap_or_else(|| "unknown".into());
    let model = u.model.clone().unwrap_or_else(|| "unknown".into());
    let (p, m) = (provider.clone(), model.clone());
    counter!(MODEL_TOKENS, "provider" => p.clone(), "model" => m.clone(), "direction" => "input")
        .increment(u.input_tokens);
    counter!(MODEL_TOKENS, "provider" => p, "model" => m, "direction" => "output")
        .increment(u.output_tokens);
    counter!(MODEL_CALLS, "provider" => provider.clone(), "model" => model.clone())
        .increment(u.calls);
    // Counters are integers: cost is counted in millionths of a unit.
    counter!(MODEL_COST, "provider" => provider, "model" => model)
        .increment((u.cost * 1e6).round() as u64);
}

pub fn leader(is_leader: bool) {
    gauge!(SCHEDULER_LEADER).set(if is_leader { 1.0 } else { 0.0 });
    if is_leader {
        counter!(LEADER_CHANGES).increment(1);
    }
}

/// Gauges the leader derives from its view. Remembers the label values it reported so
/// a queue that empties drops to 0 instead of keeping its last value.
#[derive(Default)]
pub struct ViewGauges {
    queues: BTreeSet<String>,
    routes: BTreeSet<String>,
}

#[derive(Default)]
pub struct ViewCounts {
    pub jobs: BTreeMap<JobState, u64>,
    pub queue_depth: BTreeMap<String, u64>,
    pub route_depth: BTreeMap<String, u64>,
    pub workers: BTreeMap<WorkerState, u64>,
    pub slots_total: u64,
    pub slots_free: u64,
}

impl ViewGauges {
    pub fn publish(&mut self, c: &ViewCounts) {
        for s in JobState::ALL.into_iter().filter(|s| !s.is_terminal()) {
            gauge!(JOBS, "state" => s.as_str()).set(*c.jobs.get(&s).unwrap_or(&0) as f64);
        }
        self.queues.extend(c.queue_depth.keys().cloned());
        for q in &self.queues {
            gauge!(QUEUE_DEPTH, "queue" => q.clone())
                .set(*c.queue_depth.get(q).unwrap_or(&0) as f64);
        }
        self.routes.extend(c.route_depth.keys().cloned());
        for r in &self.routes {
            gauge!(ROUTE_QUEUE_DEPTH, "route" => r.clone())
                .set(*c.route_depth.get(r).unwrap_or(&0) as f64);
        }
        for (s, name) in [
            (WorkerState::Starting, "starting"),
            (WorkerState::Active, "active"),
            (WorkerState::Draining, "draining"),
            (WorkerState::Gone, "gone"),
        ] {
            gauge!(WORKERS, "state" => name).set(*c.workers.get(&s).unwrap_or(&0) as f64);
        }
        gauge!(WORKER_SLOTS, "state" => "total").set(c.slots_total as f64);
        gauge!(WORKER_SLOTS, "state" => "free").set(c.slots_free as f64);
    }

    /// On losing leadership: this replica no longer knows, so it reports nothing.
    pub fn clear(&mut self) {
        self.publish(&ViewCounts::default());
    }
}

pub fn budget(b: &gf_schemas::Budget) {
    gauge!(BUDGET_SPENT, "product" => b.product.clone()).set(b.spent_cost);
    if let Some(l) = b.limit_cost {
        gauge!(BUDGET_LIMIT, "product" => b.product.clone()).set(l);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_nats::jetstream::stream::PeerInfo;

    fn peer(current: bool, active_ms: u64, offline: bool) -> PeerInfo {
        PeerInfo {
            name: "n".into(),
            current,
            active: Duration::from_millis(active_ms),
            offline,
            lag: None,
        }
    }

    /// Only a follower that is offline or silent counts against the alert; one that
    /// is up but behind is `lagging`.
    /// A per-job series recorded before the recorder is installed (and lost, as any
    /// metric then) does not leave a dead handle behind: once installed, it counts.
    #[test]
    fn a_series_recorded_before_the_recorder_counts_after_it() {
        finished("early", JobState::Succeeded);
        let handle = gf_telemetry::install("test");
        finished("early", JobState::Succeeded);
        finished("early", JobState::Succeeded);
        let text = handle.render();
        assert!(
            text.contains(r#"gf_jobs_finished_total{queue="early",state="succeeded"} 2"#),
            "{text}"
        );
    }

    #[test]
    fn a_lagging_follower_is_not_a_replica_down() {
        let counts = ReplicaCounts::of(
            true,
            &[
                peer(true, 120, false),
                peer(false, 80, false),
                peer(false, 15_000, false),
                peer(true, 0, true),
                peer(false, 0, false),
            ],
        );
        assert_eq!(
            counts,
            ReplicaCounts {
                current: 2,
                lagging: 1,
                unavailable: 3
            }
        );
        assert_eq!(ReplicaCounts::of(false, &[]), ReplicaCounts::default());
    }
}
