//! Live counters for the operator surface: jobs by state, queue depth per queue, jobs
//! processed, throughput and latency over the last minutes, and model usage per
//! provider and model.
//!
//! Every record of the `gf_jobs` bucket (a replay of the current ones first) feeds an
//! [`Aggregator`]: on the leader from its scheduler's view ([`LeaderFeed`]), elsewhere
//! from the stats task's own watch. Readers get cheap snapshots through a `watch`
//! channel. The aggregator is a pure value fed records, so
//! it is unit-tested on fixed timestamps, and `gf stats` reuses it on a bucket read.
//!
//! The watch resumes from the last revision it counted when it is re-opened, and a
//! replay (when a resume could miss a removal) drops what it does not deliver; see
//! [`crate::watch`].
//!
//! Throughput buckets are keyed by the time a job *finished* (its record's
//! `updated_at`, server-anchored), not by when this coordinator saw it: a coordinator
//! that starts (or restarts) rebuilds the last minutes' figures from the replay, and a
//! job is counted once however often the watch replays it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt;
use gf_schemas::{JobId, JobRecord, JobState, Timestamp};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Width of one throughput/latency bucket.
pub const BUCKET_SECS: i64 = 10;
/// How far back the series go.
pub const WINDOW_SECS: i64 = 15 * 60;

/// What one job contributes to the counters; kept so an update can first take the
/// previous contribution away. One per job in `gf_jobs`, grace-window jobs included,
/// so it is kept small (56 bytes): queue and product names are shared (see
/// [`Names`]), usage, which few jobs report, is boxed. With 100,000 finished jobs in
/// their grace period the owned strings and the inline usage cost a standby 31 MiB
/// (BENCHMARKS.md, issue 19).
#[derive(Clone, Debug)]
struct Summary {
    /// KV revision of the record summed up (0 when unknown).
    rev: u64,
    state: JobState,
    queue: Arc<str>,
    product: Arc<str>,
    usage: Option<Box<(ModelKey, UsageSums)>>,
}

/// Queue and product names shared by every [`Summary`] naming them. Bounded: past
/// `MAX_NAMES` distinct names a name is no longer shared (each summary then holds
/// its own copy), so made-up names cannot grow it without end.
#[derive(Debug, Default)]
struct Names(std::collections::HashSet<Arc<str>>);

impl Names {
    const MAX_NAMES: usize = 4096;

    fn get(&mut self, name: &str) -> Arc<str> {
        if let Some(n) = self.0.get(name) {
            return n.clone();
        }
        let n: Arc<str> = name.into();
        if self.0.len() < Self::MAX_NAMES {
            self.0.insert(n.clone());
        }
        n
    }
}

type ModelKey = (String, String);

#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct UsageSums {
    jobs: u64,
    calls: u64,
    input_tokens: u64,
    output_tokens: u64,
    cost: f64,
    run_ms: u64,
}

impl UsageSums {
    fn add(&mut self, o: &UsageSums, sign: i8) {
        let f = |a: &mut u64, b: u64| {
            *a = if sign > 0 {
                a.saturating_add(b)
            } else {
                a.saturating_sub(b)
            }
        };
        f(&mut self.jobs, o.jobs);
        f(&mut self.calls, o.calls);
        f(&mut self.input_tokens, o.input_tokens);
        f(&mut self.output_tokens, o.output_tokens);
        f(&mut self.run_ms, o.run_ms);
        self.cost += f64::from(sign) * o.cost;
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    succeeded: u64,
    dead: u64,
    cancelled: u64,
    latency_ms_sum: u64,
    latency_ms_max: u64,
    run_ms_sum: u64,
}

/// Counters over every job record it has been fed.
#[derive(Debug, Default)]
pub struct Aggregator {
    jobs: crate::jobmap::JobMap<Summary>,
    names: Names,
    by_state: BTreeMap<JobState, u64>,
    /// Pending, blocked and dispatched jobs per queue: the backlog.
    depth: BTreeMap<String, u64>,
    buckets: BTreeMap<i64, Bucket>,
    models: BTreeMap<ModelKey, UsageSums>,
    /// While a full replay of `gf_jobs` is being fed: the stream's last revision when it
    /// began, and every job it (or anything since) delivered. See
    /// [`Aggregator::begin_replay`].
    replay: Option<(u64, crate::jobmap::JobSet)>,
}

/// One point of the throughput/latency series.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SeriesPoint {
    /// Start of the bucket, unix seconds.
    pub start: i64,
    pub succeeded: u64,
    pub dead: u64,
    pub cancelled: u64,
    /// Mean submit-to-success time of the jobs that succeeded in this bucket.
    pub latency_ms_avg: Option<u64>,
    pub latency_ms_max: Option<u64>,
    /// Mean run time of the successful attempt.
    pub run_ms_avg: Option<u64>,
}

/// Model usage summed over jobs that reported it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ModelUsage {
    pub provider: String,
    pub model: String,
    pub jobs: u64,
    pub calls: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost: f64,
    /// Output tokens per second of run time.
    pub tokens_per_sec: Option<f64>,
    /// Mean run time per call.
    pub ms_per_call: Option<u64>,
}

/// A point-in-time view of the counters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobStats {
    /// `false` until the first full replay of `gf_jobs` is done: counts may be low.
    pub synced: bool,
    pub total: u64,
    /// Jobs in each state (every state is present).
    pub by_state: BTreeMap<String, u64>,
    /// Jobs in a terminal state (succeeded, dead, cancelled).
    pub processed: u64,
    pub running: u64,
    /// Pending, blocked and dispatched jobs per queue.
    pub queue_depth: BTreeMap<String, u64>,
    pub bucket_secs: i64,
    /// Oldest first, one point per bucket over the last `WINDOW_SECS`.
    pub series: Vec<SeriesPoint>,
    pub models: Vec<ModelUsage>,
}

fn is_backlog(s: JobState) -> bool {
    matches!(
        s,
        JobState::Pending | JobState::Blocked | JobState::Dispatched
    )
}

fn bucket_of(t: Timestamp) -> i64 {
    (t.unix_millis() / 1000).div_euclid(BUCKET_SECS) * BUCKET_SECS
}

fn run_ms(rec: &JobRecord) -> u64 {
    rec.history
        .iter()
        .filter_map(|a| a.ended_at.map(|e| e.since(a.started_at).as_millis() as u64))
        .sum()
}

impl Aggregator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes in the current record of a job (first sight or an update). `now` bounds
    /// the window: finishes older than it are not kept in the series.
    pub fn ingest(&mut self, rec: &JobRecord, now: Timestamp) {
        self.ingest_revision(rec, 0, now)
    }

    /// [`Aggregator::ingest`] of the record at KV revision `rev`: one older than the
    /// revision already counted is ignored, so two feeds (a watch and the leader's
    /// view, see [`StatsFeed`]) can overlap while they hand over.
    pub fn ingest_revision(&mut self, rec: &JobRecord, rev: u64, now: Timestamp) {
        if let Some((_, seen)) = &mut self.replay {
            seen.insert(rec.id);
        }
        if rev != 0 && self.jobs.get(&rec.id).is_some_and(|o| o.rev >= rev) {
            return;
        }
        let usage = rec.usage.as_ref().map(|u| {
            let key = (
                u.provider.clone().unwrap_or_else(|| "unknown".into()),
                u.model.clone().unwrap_or_else(|| "unknown".into()),
            );
            let sums = UsageSums {
                jobs: 1,
                calls: u.calls,
                input_tokens: u.input_tokens,
                output_tokens: u.output_tokens,
                cost: u.cost,
                run_ms: run_ms(rec),
            };
            Box::new((key, sums))
        });
        let new = Summary {
            rev,
            state: rec.state,
            queue: self.names.get(&rec.spec.queue),
            product: self.names.get(&rec.spec.product),
            usage,
        };
        let old = self.jobs.insert(rec.id, new.clone());
        let was_terminal = old.as_ref().is_some_and(|o| o.state.is_terminal());
        if let Some(old) = old {
            self.count(&old, -1);
        }
        self.count(&new, 1);
        if rec.state.is_terminal() && !was_terminal {
            self.finished(rec, now);
        }
    }

    /// The ids of the jobs it holds (live, and finished within their grace period)
    /// matching the filters, newest first, older than `before`: at most `limit`, and
    /// how many match in all. Costs one pass over the jobs it holds, never history.
    pub fn matching(
        &self,
        state: Option<JobState>,
        queue: Option<&str>,
        product: Option<&str>,
        before: Option<JobId>,
        limit: usize,
    ) -> (Vec<JobId>, usize) {
        let mut total = 0;
        let mut ids: Vec<JobId> = Vec::new();
        for (id, s) in &self.jobs {
            if state.is_some_and(|st| st != s.state)
                || queue.is_some_and(|q| q != &*s.queue)
                || product.is_some_and(|p| p != &*s.product)
            {
                continue;
            }
            total += 1;
            if before.is_none_or(|b| *id < b) {
                ids.push(*id);
            }
        }
        // Newest first; only the first `limit` need ordering.
        if ids.len() > limit {
            ids.select_nth_unstable_by(limit, |a, b| b.cmp(a));
            ids.truncate(limit);
        }
        ids.sort_unstable_by(|a, b| b.cmp(a));
        (ids, total)
    }

    pub fn contains(&self, id: &JobId) -> bool {
        self.jobs.contains_key(id)
    }

    /// A deleted (purged) job leaves the counters; its finish stays in the series.
    pub fn remove(&mut self, id: &JobId) {
        if let Some((_, seen)) = &mut self.replay {
            seen.insert(*id);
        }
        if let Some(old) = self.jobs.remove(id) {
            self.count(&old, -1);
        }
    }

    /// A full replay of the bucket starts; `upto` is the stream's last revision just
    /// before it. A job counted here that the replay does not deliver was removed while
    /// nobody watched (e.g. its expiry marker came and went during a long outage):
    /// [`Aggregator::end_replay`] takes it out, so the counters follow the bucket and
    /// not everything ever seen.
    pub fn begin_replay(&mut self, upto: u64) {
        self.replay = Some((upto, crate::jobmap::JobSet::default()));
    }

    /// Forgets a replay that will not be finished (its ids are no longer collected).
    pub fn cancel_replay(&mut self) {
        self.replay = None;
    }

    /// The replay delivered everything: drops the jobs it did not deliver (and that
    /// were not written since it began).
    pub fn end_replay(&mut self) {
        let Some((upto, seen)) = self.replay.take() else {
            return;
        };
        let stale: Vec<JobId> = self
            .jobs
            .iter()
            .filter(|(id, s)| s.rev <= upto && !seen.contains(id))
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            self.remove(&id);
        }
    }

    fn count(&mut self, s: &Summary, sign: i8) {
        let bump = |v: &mut u64| {
            *v = if sign > 0 {
                *v + 1
            } else {
                v.saturating_sub(1)
            }
        };
        bump(self.by_state.entry(s.state).or_default());
        if is_backlog(s.state) {
            let d = self.depth.entry(s.queue.to_string()).or_default();
            bump(d);
            if *d == 0 {
                self.depth.remove(&*s.queue);
            }
        }
        if let Some((key, sums)) = s.usage.as_deref() {
            self.models.entry(key.clone()).or_default().add(sums, sign);
        }
    }

    fn finished(&mut self, rec: &JobRecord, now: Timestamp) {
        let start = bucket_of(rec.updated_at);
        let oldest = bucket_of(now) - WINDOW_SECS + BUCKET_SECS;
        if start < oldest {
            return;
        }
        let b = self.buckets.entry(start).or_default();
        match rec.state {
            JobState::Succeeded => {
                b.succeeded += 1;
                let lat = rec.updated_at.since(rec.submitted_at).as_millis() as u64;
                b.latency_ms_sum += lat;
                b.latency_ms_max = b.latency_ms_max.max(lat);
                let last_run = rec
                    .history
                    .last()
                    .and_then(|a| a.ended_at.map(|e| e.since(a.started_at)))
                    .unwrap_or_default();
                b.run_ms_sum += last_run.as_millis() as u64;
            }
            JobState::Dead => b.dead += 1,
            _ => b.cancelled += 1,
        }
        // Forget buckets that left the window.
        self.buckets = self.buckets.split_off(&oldest);
    }

    pub fn snapshot(&self, synced: bool, now: Timestamp) -> JobStats {
        let by_state: BTreeMap<String, u64> = JobState::ALL
            .iter()
            .map(|s| {
                (
                    s.as_str().to_string(),
                    self.by_state.get(s).copied().unwrap_or(0),
                )
            })
            .collect();
        let processed = JobState::ALL
            .iter()
            .filter(|s| s.is_terminal())
            .map(|s| self.by_state.get(s).copied().unwrap_or(0))
            .sum();
        let last = bucket_of(now);
        let series = (0..WINDOW_SECS / BUCKET_SECS)
            .rev()
            .map(|i| {
                let start = last - i * BUCKET_SECS;
                let b = self.buckets.get(&start).copied().unwrap_or_default();
                let avg = |sum: u64| (b.succeeded > 0).then(|| sum / b.succeeded);
                SeriesPoint {
                    start,
                    succeeded: b.succeeded,
                    dead: b.dead,
                    cancelled: b.cancelled,
                    latency_ms_avg: avg(b.latency_ms_sum),
                    latency_ms_max: (b.succeeded > 0).then_some(b.latency_ms_max),
                    run_ms_avg: avg(b.run_ms_sum),
                }
            })
            .collect();
        let models = self
            .models
            .iter()
            .filter(|(_, u)| u.jobs > 0)
            .map(|((provider, model), u)| ModelUsage {
                provider: provider.clone(),
                model: model.clone(),
                jobs: u.jobs,
                calls: u.calls,
                input_tokens: u.input_tokens,
                output_tokens: u.output_tokens,
                cost: u.cost,
                tokens_per_sec: (u.run_ms > 0)
                    .then(|| u.output_tokens as f64 * 1000.0 / u.run_ms as f64),
                ms_per_call: (u.calls > 0).then(|| u.run_ms / u.calls),
            })
            .collect();
        JobStats {
            synced,
            total: self.jobs.len() as u64,
            by_state,
            processed,
            running: self.by_state.get(&JobState::Running).copied().unwrap_or(0),
            queue_depth: self.depth.clone(),
            bucket_secs: BUCKET_SECS,
            series,
            models,
        }
    }
}

/// Readers' end: the latest snapshot, refreshed at most twice a second, and the index
/// of the jobs counted (what listing pages through, [`crate::history::list`]).
#[derive(Clone)]
pub struct StatsHandle {
    rx: watch::Receiver<Arc<JobStats>>,
    shared: Arc<Shared>,
}

impl StatsHandle {
    pub fn current(&self) -> Arc<JobStats> {
        self.rx.borrow().clone()
    }

    /// [`Aggregator::matching`] on the live counters.
    pub fn matching(
        &self,
        state: Option<JobState>,
        queue: Option<&str>,
        product: Option<&str>,
        before: Option<JobId>,
        limit: usize,
    ) -> (Vec<JobId>, usize) {
        self.shared
            .agg
            .lock()
            .expect("stats")
            .matching(state, queue, product, before, limit)
    }

    /// Whether job `id` is live or finished within its grace period, as far as the
    /// counters know.
    pub fn contains(&self, id: &JobId) -> bool {
        self.shared.agg.lock().expect("stats").contains(id)
    }
}

/// What the stats task and the leader's view share.
struct Shared {
    agg: Mutex<Aggregator>,
    /// `true` once a full replay of `gf_jobs` has been counted.
    synced: AtomicBool,
    /// `true` while this coordinator leads: its scheduler's view feeds the aggregator
    /// and the stats task keeps no watch of its own.
    leader_feeds: watch::Sender<bool>,
    /// The last revision the leader's jobs watch applied (every entry up to it fed the
    /// aggregator): where the stats task's watch resumes when the leader stops.
    leader_position: std::sync::atomic::AtomicU64,
}

/// The leader's side of the counters. The leader already watches `gf_jobs` and decodes
/// every record for its view; feeding the same records here saves a second watch, which
/// cost one more message from the server and one more decode per job write. Created by
/// [`StatsFeed::lead`] when a term starts; dropping it (however the term ends) hands the
/// counting back to the stats task's own watch, which resumes from where the leader's
/// watch got to ([`LeaderFeed::position`]).
pub struct LeaderFeed(Arc<Shared>);

impl LeaderFeed {
    pub fn ingest(&self, rec: &JobRecord, rev: u64) {
        let now = Timestamp::now_local();
        self.0
            .agg
            .lock()
            .expect("stats")
            .ingest_revision(rec, rev, now);
    }

    pub fn remove(&self, id: &JobId) {
        self.0.agg.lock().expect("stats").remove(id);
    }

    /// The leader's view has replayed the whole bucket.
    pub fn synced(&self) {
        self.0.synced.store(true, Ordering::Relaxed);
    }

    /// The leader's jobs watch applied every entry up to `revision` (0 while a replay
    /// starts over).
    pub fn position(&self, revision: u64) {
        self.0.leader_position.store(revision, Ordering::Relaxed);
    }

    /// The leader's view starts a full replay ([`Aggregator::begin_replay`]).
    pub fn begin_replay(&self, upto: u64) {
        self.0.agg.lock().expect("stats").begin_replay(upto);
    }

    /// The leader's replay is current ([`Aggregator::end_replay`]).
    pub fn end_replay(&self) {
        self.0.agg.lock().expect("stats").end_replay();
    }
}

impl Drop for LeaderFeed {
    fn drop(&mut self) {
        self.0.leader_feeds.send_replace(false);
    }
}

/// Hands out [`LeaderFeed`]s to the scheduler.
#[derive(Clone)]
pub struct StatsFeed(Arc<Shared>);

impl StatsFeed {
    pub fn lead(&self) -> LeaderFeed {
        self.0.leader_feeds.send_replace(true);
        LeaderFeed(self.0.clone())
    }
}

/// Starts the task that keeps the counters; it ends when `shutdown` fires.
/// `replay_timeout` bounds the wait for its watch to deliver the bucket
/// ([`crate::watch`]).
pub fn start(
    jobs: kv::Store,
    replay_timeout: Duration,
    shutdown: CancellationToken,
) -> (StatsHandle, StatsFeed, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(Arc::new(
        Aggregator::new().snapshot(false, Timestamp::now_local()),
    ));
    let shared = Arc::new(Shared {
        agg: Mutex::new(Aggregator::new()),
        synced: AtomicBool::new(false),
        leader_feeds: watch::Sender::new(false),
        leader_position: std::sync::atomic::AtomicU64::new(0),
    });
    let task = tokio::spawn(run(jobs, shared.clone(), tx, replay_timeout, shutdown));
    (
        StatsHandle {
            rx,
            shared: shared.clone(),
        },
        StatsFeed(shared),
        task,
    )
}

/// Publishes a snapshot twice a second and, while this coordinator does not lead,
/// counts from its own watch of `gf_jobs`. The watch resumes from the last revision it
/// counted when it is re-opened (after it broke, or the leader's view fed the counters
/// meanwhile; records the leader fed are recognised by their revision), and replays
/// the bucket only when a resume could miss a removal ([`crate::watch`]).
async fn run(
    jobs: kv::Store,
    shared: Arc<Shared>,
    tx: watch::Sender<Arc<JobStats>>,
    replay_timeout: Duration,
    shutdown: CancellationToken,
) {
    let mut publish = tokio::time::interval(Duration::from_millis(500));
    publish.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut leading = shared.leader_feeds.subscribe();
    let snapshot = |shared: &Shared| {
        let agg = shared.agg.lock().expect("stats");
        Arc::new(agg.snapshot(
            shared.synced.load(Ordering::Relaxed),
            Timestamp::now_local(),
        ))
    };
    let mut position = crate::watch::Resumable::new("stats_jobs");
    let mut backoff = crate::watch::Backoff::default();
    // Whether the last watch ended in trouble (then the next one waits its backoff).
    let mut troubled = false;
    loop {
        if *leading.borrow_and_update() {
            // The leader's view feeds the counters; the watch resumes when it stops,
            // from where the leader's watch got to if that is later.
            position.broke();
            position.adopt(shared.leader_position.load(Ordering::Relaxed));
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = publish.tick() => { tx.send_replace(snapshot(&shared)); }
                _ = leading.changed() => {}
            }
            continue;
        }
        if std::mem::take(&mut troubled) {
            let pause = backoff.next_pause();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
            if *leading.borrow() {
                continue;
            }
        }
        position.adopt(shared.leader_position.load(Ordering::Relaxed));
        // With NATS down the open waits out its request timeouts; a shutdown cuts it.
        let Some(opened) = shutdown.run_until_cancelled(position.open(&jobs)).await else {
            return;
        };
        let opened = match opened {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, "stats: cannot watch the jobs bucket; retrying");
                position.broke();
                troubled = true;
                continue;
            }
        };
        let mut current = opened.current;
        match opened.start {
            crate::watch::Start::Replay { upto } => {
                shared.agg.lock().expect("stats").begin_replay(upto)
            }
            // A replay the leader's view began and did not finish is not this one.
            crate::watch::Start::Resume => shared.agg.lock().expect("stats").cancel_replay(),
        }
        if current {
            backoff.reset();
            shared.agg.lock().expect("stats").end_replay();
            shared.synced.store(true, Ordering::Relaxed);
        }
        let deadline = tokio::time::Instant::now() + replay_timeout;
        let mut watch = opened.watch.fuse();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = publish.tick() => { tx.send_replace(snapshot(&shared)); }
                // The leader's view takes over: drop this watch.
                _ = leading.changed() => break,
                _ = tokio::time::sleep_until(deadline), if !current => {
                    tracing::warn!(
                        timeout_ms = replay_timeout.as_millis() as u64,
                        "stats: the jobs watch did not deliver the bucket in time; re-opening"
                    );
                    if position.timed_out() {
                        // Spaced by the timeout already, and it resumes further on.
                        backoff.reset();
                    }
                    troubled = true;
                    break;
                }
                entry = watch.next() => {
                    let entry = match entry {
                        Some(Ok(e)) => e,
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "stats: jobs watch failed; re-creating");
                            troubled = true;
                            break;
                        }
                        None => {
                            troubled = true;
                            break;
                        }
                    };
                    // Decoded before taking the lock the snapshots also take.
                    if entry.operation == kv::Operation::Put {
                        if let Ok(rec) = serde_json::from_slice::<JobRecord>(&entry.value) {
                            let now = Timestamp::now_local();
                            let mut agg = shared.agg.lock().expect("stats");
                            agg.ingest_revision(&rec, entry.revision, now);
                        }
                    } else if let Ok(id) = entry.key.parse::<JobId>() {
                        shared.agg.lock().expect("stats").remove(&id);
                    }
                    position.seen(entry.revision);
                    if !current && (entry.seen_current || entry.delta == 0) {
                        current = true;
                        backoff.reset();
                        shared.agg.lock().expect("stats").end_replay();
                        shared.synced.store(true, Ordering::Relaxed);
                        crate::memory::release_freed();
                    }
                }
            }
        }
        position.broke();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gf_schemas::{Attempt, AttemptOutcome, JobSpec, Usage, WorkerId};

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_unix_millis(secs * 1000)
    }

    fn job(queue: &str, state: JobState, submitted: i64, updated: i64) -> JobRecord {
        let mut spec = JobSpec::command(["true"]);
        spec.queue = queue.into();
        let mut r = JobRecord::new(JobId::new(), spec, t(submitted));
        r.state = state;
        r.updated_at = t(updated);
        r
    }

    /// The per-job summary stays small: it is held for every job in `gf_jobs`.
    #[test]
    fn a_summary_is_small_and_shares_its_names() {
        assert!(
            std::mem::size_of::<Summary>() <= 56,
            "{}",
            std::mem::size_of::<Summary>()
        );
        let now = t(10_000);
        let mut a = Aggregator::new();
        let (j1, j2) = (
            job("q", JobState::Succeeded, 1, 2),
            job("q", JobState::Pending, 1, 2),
        );
        a.ingest(&j1, now);
        a.ingest(&j2, now);
        assert!(Arc::ptr_eq(&a.jobs[&j1.id].queue, &a.jobs[&j2.id].queue));
        assert_eq!(a.matching(None, Some("q"), None, None, 10).1, 2);
    }

    /// Two feeds overlapping while they hand over: a record older than the one counted
    /// changes nothing, a newer one moves the job on.
    #[test]
    fn older_revisions_are_ignored() {
        let now = t(10_000);
        let mut a = Aggregator::new();
        let mut j = job("q", JobState::Running, 9_990, 9_995);
        a.ingest_revision(&j, 5, now);
        j.state = JobState::Succeeded;
        j.updated_at = t(9_999);
        a.ingest_revision(&j, 7, now);
        let mut stale = j.clone();
        stale.state = JobState::Running;
        a.ingest_revision(&stale, 5, now);
        a.ingest_revision(&j, 7, now);
        let s = a.snapshot(true, now);
        assert_eq!(s.by_state["succeeded"], 1);
        assert_eq!(s.running, 0);
        let finished: u64 = s.series.iter().map(|p| p.succeeded).sum();
        assert_eq!(finished, 1, "counted once");
    }

    /// A replay drops the jobs it did not deliver (removed while nobody watched), and
    /// keeps those it delivered, those written since it began, and a removal's own.
    #[test]
    fn a_replay_drops_what_it_did_not_deliver() {
        let now = t(10_000);
        let mut a = Aggregator::new();
        let kept = job("q", JobState::Pending, 9_990, 9_990);
        let gone = job("q", JobState::Succeeded, 9_990, 9_995);
        let later = job("q", JobState::Running, 9_990, 9_999);
        a.ingest_revision(&kept, 1, now);
        a.ingest_revision(&gone, 2, now);
        a.begin_replay(2);
        a.ingest_revision(&kept, 1, now);
        // Written after the replay began, and arriving before it ends: not stale.
        a.ingest_revision(&later, 3, now);
        a.end_replay();
        assert!(a.contains(&kept.id) && a.contains(&later.id));
        assert!(!a.contains(&gone.id), "removed while nobody watched");
        let s = a.snapshot(true, now);
        assert_eq!((s.total, s.processed), (2, 0));
        // Without a replay under way, nothing is swept.
        a.end_replay();
        assert_eq!(a.snapshot(true, now).total, 2);
        // A replay cancelled (another feed took over) sweeps nothing either.
        a.begin_replay(10);
        a.cancel_replay();
        a.end_replay();
        assert_eq!(a.snapshot(true, now).total, 2);
    }

    /// Counts follow a job through its states; queue depth counts only the backlog.
    #[test]
    fn counts_follow_updates() {
        let now = t(10_000);
        let mut a = Aggregator::new();
        let mut j = job("q1", JobState::Pending, 9_990, 9_990);
        a.ingest(&j, now);
        a.ingest(&job("q2", JobState::Blocked, 9_990, 9_990), now);
        let s = a.snapshot(true, now);
        assert_eq!(s.total, 2);
        assert_eq!(s.queue_depth.get("q1"), Some(&1));
        assert_eq!(s.queue_depth.get("q2"), Some(&1));
        j.state = JobState::Running;
        a.ingest(&j, now);
        let s = a.snapshot(true, now);
        assert_eq!((s.running, s.by_state["pending"]), (1, 0));
        assert_eq!(s.queue_depth.get("q1"), None, "running is not backlog");
        j.state = JobState::Succeeded;
        j.updated_at = t(9_995);
        a.ingest(&j, now);
        // A replay of the same terminal record (watch re-created) counts nothing more.
        a.ingest(&j, now);
        let s = a.snapshot(true, now);
        assert_eq!((s.running, s.processed, s.total), (0, 1, 2));
        let done: u64 = s.series.iter().map(|p| p.succeeded).sum();
        assert_eq!(done, 1);
        let p = s.series.iter().find(|p| p.succeeded == 1).unwrap();
        assert_eq!(p.start, 9_990);
        assert_eq!(p.latency_ms_avg, Some(5_000));
    }

    /// Finishes older than the window count as processed but not in the series; the
    /// series always has one point per bucket, oldest first.
    #[test]
    fn series_window() {
        let now = t(100_000);
        let mut a = Aggregator::new();
        a.ingest(&job("q", JobState::Dead, 1_000, 2_000), now);
        a.ingest(&job("q", JobState::Cancelled, 99_990, 99_995), now);
        let s = a.snapshot(true, now);
        assert_eq!(s.processed, 2);
        assert_eq!(s.series.len() as i64, WINDOW_SECS / BUCKET_SECS);
        assert!(s.series.windows(2).all(|w| w[0].start < w[1].start));
        assert_eq!(s.series.last().unwrap().start, 100_000);
        let dead: u64 = s.series.iter().map(|p| p.dead).sum();
        let cancelled: u64 = s.series.iter().map(|p| p.cancelled).sum();
        assert_eq!((dead, cancelled), (0, 1));
    }

    /// Usage is summed per provider and model, and an updated record replaces (not
    /// adds to) the job's earlier contribution.
    #[test]
    fn model_usage() {
        let now = t(10_000);
        let mut a = Aggregator::new();
        let mut j = job("q", JobState::Running, 9_000, 9_000);
        j.usage = Some(Box::new(Usage {
            provider: Some("acme".into()),
            model: Some("m1".into()),
            input_tokens: 100,
            output_tokens: 50,
            calls: 2,
            cost: 0.5,
        }));
        a.ingest(&j, now);
        j.state = JobState::Succeeded;
        j.history.push(Attempt {
            epoch: 1,
            worker: WorkerId::new("w").unwrap(),
            started_at: t(9_000),
            ended_at: Some(t(9_010)),
            outcome: Some(AttemptOutcome::Succeeded { exit_code: 0 }),
            ended_because: None,
            artifact_errors: Vec::new(),
        });
        a.ingest(&j, now);
        let s = a.snapshot(true, now);
        assert_eq!(s.models.len(), 1);
        let m = &s.models[0];
        assert_eq!((m.jobs, m.calls, m.output_tokens), (1, 2, 50));
        assert_eq!(m.tokens_per_sec, Some(5.0));
        assert_eq!(m.ms_per_call, Some(5_000));
        assert!((m.cost - 0.5).abs() < 1e-9);
    }
}
