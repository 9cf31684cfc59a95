//! What the scheduler leader decides, as pure functions over its [`View`].
//!
//! For every waiting job, most valuable first (see [`crate::score`]), [`plan`] checks
//! the gates in order — start time, dependencies, product budget, a live worker that
//! fits, concurrency and rate limits — and dispatches it while some fitting worker has
//! a free slot (slots − running − leased at dispatch and not yet started). Never more:
//! a grant must find its slot free when it arrives, or it would wait on the worker
//! past its start deadline and be taken back (see `fsm::lease_at_dispatch`). A job that cannot pass
//! a gate is `blocked` with the reason, written only when the reason changes. With
//! preemption on, a job that passes every gate but finds no slot may revoke the
//! lowest-scoring running job on a fitting worker, if that one scores at least the
//! margin less.
//!
//! [`plan_pass`] decides by scanning every job; the leader runs [`Planner`], which
//! decides the same at the cost of what changed since its last pass (`plan/backlog.rs`,
//! `plan/rank.rs`). The full scan stays as the reference it is tested against.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use gf_schemas::{
    Budget, Capabilities, JobId, JobRecord, JobSpec, JobState, Score, Timestamp, WorkerId,
    WorkerRecord, WorkerState,
};

use crate::config::LimitRule;
use crate::jobmap::{JobMap, JobSet};
use crate::score::{self, ScoringConfig};

mod backlog;
pub mod learned;
mod rank;

pub use backlog::Planner;

/// What the leader knows: live jobs, the final state of finished ones (for
/// dependencies and parents), workers and budgets.
#[derive(Default)]
pub struct View {
    pub jobs: JobMap<(JobRecord, u64)>,
    /// Finished jobs still in `gf_jobs` (their grace period), and those that left it
    /// while a live job still names them (see `retained`).
    pub terminal: JobMap<JobState>,
    /// How many live jobs name each id as a dependency or a child.
    pub(crate) refs: JobMap<u32>,
    /// Finished jobs whose record expired from `gf_jobs` but which a live job still
    /// names: their state stays in `terminal` until no live job names them. So the
    /// view follows the live jobs and the grace window, not all history.
    pub(crate) retained: JobSet,
    pub workers: HashMap<WorkerId, WorkerRecord>,
    pub budgets: HashMap<String, Budget>,
    /// On the leader, every job record the view takes in also feeds the operator
    /// counters (see [`crate::stats::LeaderFeed`]).
    pub stats: Option<crate::stats::LeaderFeed>,
    /// On the leader, attempts that end become outcome rows (see [`crate::outcomes`]).
    pub outcomes: Option<crate::outcomes::Recorder>,
    /// On the leader, finished records go to the archive (see
    /// [`crate::history::archive`]).
    pub archive: Option<crate::history::archive::Feed>,
    /// On the leader, the records this coordinator wrote, taken instead of decoding
    /// what the watch delivers (see [`crate::handoff`]).
    pub handoff: Option<std::sync::Arc<crate::handoff::Handoff>>,
    /// What finished attempts taught about placement (fed from `outcomes` on the
    /// leader; read from the stream for an explanation).
    pub learned: learned::Learned,
    /// Workers a lease was taken back from (it expired, or a grant was not started),
    /// and when: nothing is leased to them again until they show life after that (a
    /// heartbeat), so a paused or cut-off worker that still looks live does not cost
    /// its jobs a second deadline. See [`View::suspect`].
    pub suspects: HashMap<WorkerId, Timestamp>,
    /// Jobs whose record changed (or went) since the [`Planner`] last looked: what its
    /// next pass re-evaluates. Records must change through [`View::set_job`],
    /// [`View::apply_job`] and [`View::remove_job`] for it to see them.
    pub(crate) changed: Vec<JobId>,
    /// On the leader, slots the direct lane handed out whose job's create has not
    /// landed yet (so the view lacks the job), per worker: a pass counts them as
    /// leased. Set before each pass (see [`crate::lane::DirectLane::suspend`]).
    pub lane_held: HashMap<WorkerId, i64>,
}

impl View {
    /// Takes in what the jobs watch delivered: revision `rev` of `key`.
    pub fn apply_job(&mut self, key: &str, rev: u64, op: kv::Operation, value: &Bytes) {
        let Ok(id) = key.parse::<JobId>() else { return };
        if op != kv::Operation::Put {
            // A deleted key, or a finished job's grace period ended (the server's
            // limit marker reads as a purge).
            self.remove_job(&id);
            self.forget_finished(&id);
            if let Some(stats) = &self.stats {
                stats.remove(&id);
            }
            return;
        }
        if self.jobs.get(&id).is_some_and(|(_, r)| *r >= rev) {
            return;
        }
        let written = self.handoff.as_ref().and_then(|h| h.take(&id, rev));
        match written.map_or_else(|| serde_json::from_slice::<JobRecord>(value), Ok) {
            Ok(rec) => self.take_in(rec, rev, Some(value)),
            Err(e) => tracing::error!(job = %id, error = %e, "unreadable job record"),
        }
    }

    pub fn apply_worker(&mut self, key: &str, op: kv::Operation, value: &[u8]) {
        let Ok(id) = WorkerId::new(key) else { return };
        if op != kv::Operation::Put {
            self.workers.remove(&id);
            return;
        }
        if let Ok(rec) = serde_json::from_slice::<WorkerRecord>(value) {
            self.learned.note_worker(&rec);
            self.workers.insert(id, rec);
        }
    }

    pub fn apply_budget(&mut self, key: &str, op: kv::Operation, value: &[u8]) {
        if op != kv::Operation::Put {
            self.budgets.remove(key);
            return;
        }
        if let Ok(b) = serde_json::from_slice::<Budget>(value) {
            self.budgets.insert(key.to_string(), b);
        }
    }

    pub fn set_job(&mut self, rec: JobRecord, rev: u64) {
        self.take_in(rec, rev, None);
    }

    /// [`View::set_job`], with the record as stored when the caller has it (`raw`),
    /// so the archive need not encode it again.
    fn take_in(&mut self, rec: JobRecord, rev: u64, raw: Option<&Bytes>) {
        if let Some(stats) = &self.stats {
            stats.ingest(&rec, rev);
        }
        if let Some(o) = &mut self.outcomes {
            let old = self.jobs.get(&rec.id).map(|(r, _)| r);
            for row in o.observe(old, &rec, &self.workers, &self.budgets, &self.learned) {
                self.learned.observe(row);
            }
        }
        self.changed.push(rec.id);
        if rec.state.is_terminal() {
            if let Some((old, _)) = self.jobs.remove(&rec.id) {
                self.count_refs(&old, false);
            }
            self.terminal.insert(rec.id, rec.state);
            if let Some(archive) = &mut self.archive {
                // A copy: the watch's value is a slice of the connection's read
                // buffer, which holding it (up to the archiver's whole queue) would
                // keep alive.
                archive.finished(rec, rev, raw.map(|b| Bytes::copy_from_slice(b)));
            }
        } else {
            self.terminal.remove(&rec.id);
            self.retained.remove(&rec.id);
            // The new references first, so an id named by both never drops to zero.
            self.count_refs(&rec, true);
            if let Some((old, _)) = self.jobs.insert(rec.id, (rec, rev)) {
                self.count_refs(&old, false);
            }
        }
    }

    /// Counts (or uncounts) the ids a live record names.
    fn count_refs(&mut self, rec: &JobRecord, add: bool) {
        for id in rec.spec.depends_on.iter().chain(&rec.children) {
            if add {
                *self.refs.entry(*id).or_default() += 1;
                continue;
            }
            if let std::collections::hash_map::Entry::Occupied(mut e) = self.refs.entry(*id) {
                *e.get_mut() -= 1;
                if *e.get() == 0 {
                    e.remove();
                    if self.retained.remove(id) {
                        self.terminal.remove(id);
                    }
                }
            }
        }
    }

    /// Ids live jobs name (dependencies, children) whose state the view does not
    /// know: a job that finished and left `gf_jobs` before this view saw it (after a
    /// takeover, or named by a new submission). At most `max`.
    pub fn unknown_references(&self, max: usize) -> Vec<JobId> {
        self.refs
            .keys()
            .filter(|id| self.state_of(id).is_none())
            .take(max)
            .copied()
            .collect()
    }

    /// Takes in the final state of a job found outside the view (the archive), for
    /// the live jobs that name it; the planner looks at them again.
    pub fn resolve_finished(&mut self, id: JobId, state: JobState) {
        if !state.is_terminal() || self.jobs.contains_key(&id) || !self.refs.contains_key(&id) {
            return;
        }
        self.terminal.insert(id, state);
        self.retained.insert(id);
        self.changed.push(id);
    }

    /// A finished job's record left `gf_jobs`: forget its state unless a live job
    /// still names it.
    fn forget_finished(&mut self, id: &JobId) {
        if !self.terminal.contains_key(id) {
            return;
        }
        if self.refs.contains_key(id) {
            self.retained.insert(*id);
        } else {
            self.terminal.remove(id);
        }
    }

    /// Whether `w` lost a lease and has not heartbeaten since: live for the gates (its
    /// jobs are not unplaceable), but not given new ones.
    pub fn suspect(&self, w: &WorkerRecord) -> bool {
        self.suspects
            .get(&w.id)
            .is_some_and(|since| w.last_heartbeat <= *since)
    }

    /// Takes in a record this coordinator wrote, unless the view already holds it or a
    /// later revision (the watch can deliver it, and what followed, first).
    pub fn offer_job(&mut self, rec: JobRecord, rev: u64) {
        if self.terminal.contains_key(&rec.id)
            || self.jobs.get(&rec.id).is_some_and(|(_, r)| *r >= rev)
        {
            return;
        }
        self.set_job(rec, rev);
    }

    /// Forgets a live job (its key was deleted, or a re-read found nothing).
    pub fn remove_job(&mut self, id: &JobId) {
        if let Some((old, _)) = self.jobs.remove(id) {
            self.count_refs(&old, false);
            self.changed.push(*id);
        }
    }

    /// The jobs changed since the last call, for the [`Planner`].
    pub(crate) fn take_changes(&mut self) -> Vec<JobId> {
        std::mem::take(&mut self.changed)
    }

    /// A job's state, live or finished; `None` if unknown.
    pub fn state_of(&self, id: &JobId) -> Option<JobState> {
        self.jobs
            .get(id)
            .map(|(r, _)| r.state)
            .or_else(|| self.terminal.get(id).copied())
    }
}

/// A worker is live while its last heartbeat is younger than `timeout` (server time).
pub fn worker_live(w: &WorkerRecord, timeout: Duration, now: Timestamp) -> bool {
    w.state != WorkerState::Gone && w.last_heartbeat.plus(timeout) > now
}

/// Why no live worker can run `spec`, for the `unplaceable:` reason.
pub fn unplaceable_reason<'a>(
    spec: &JobSpec,
    live: impl Iterator<Item = &'a WorkerRecord>,
) -> String {
    let mut missing: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut draining = 0;
    for w in live {
        match w.capabilities.unmet(spec) {
            None if w.state != WorkerState::Active => draining += 1,
            None => {}
            Some(m) => missing.entry(m).or_default().push(w.id.to_string()),
        }
    }
    if missing.is_empty() && draining == 0 {
        return "unplaceable: no live workers".into();
    }
    if missing.is_empty() {
        return format!("unplaceable: the {draining} matching worker(s) are draining");
    }
    if missing.len() == 1 {
        let (m, _) = missing.into_iter().next().expect("one");
        return format!("unplaceable: no live worker has {m}");
    }
    let parts: Vec<String> = missing
        .into_iter()
        .take(5)
        .map(|(m, ws)| format!("{} worker(s) lack {m}", ws.len()))
        .collect();
    format!("unplaceable: {}", parts.join("; "))
}

/// Settings the planner needs.
pub struct Policy<'a> {
    pub worker_timeout: Duration,
    pub scoring: &'a ScoringConfig,
    pub preemption_margin: Option<f64>,
    pub limits: &'a [LimitRule],
}

/// Dispatch starts per limit key (`label=value`) in the last minute; kept by the leader.
#[derive(Default)]
pub struct StartLog {
    starts: HashMap<String, VecDeque<Timestamp>>,
}

impl StartLog {
    pub fn record(&mut self, key: String, at: Timestamp) {
        self.starts.entry(key).or_default().push_back(at);
    }
    pub fn in_last_minute(&self, key: &str, now: Timestamp) -> usize {
        self.starts.get(key).map_or(0, |q| {
            q.iter()
                .filter(|t| now.since(**t) < Duration::from_secs(60))
                .count()
        })
    }
    pub fn prune(&mut self, now: Timestamp) {
        for q in self.starts.values_mut() {
            while q
                .front()
                .is_some_and(|t| now.since(*t) >= Duration::from_secs(60))
            {
                q.pop_front();
            }
        }
        self.starts.retain(|_, q| !q.is_empty());
    }
}

/// The limit keys (`label=value`) a job counts against.
pub fn limit_keys(spec: &JobSpec, limits: &[LimitRule]) -> Vec<(String, usize)> {
    limits
        .iter()
        .enumerate()
        .filter_map(|(i, l)| {
            spec.labels
                .get(&l.label)
                .map(|v| (format!("{}={v}", l.label), i))
        })
        .collect()
}

/// Where a job goes among the workers that fit it and have room, given as `(worker,
/// its id, its capabilities, its free notices)`: the one the job scores best on
/// (preferred capabilities, and the learned terms: likely success, speed, this job's
/// failures there), then the one with the most room; the last of equals. One rule for
/// the plan pass and the direct lane, so a submission picks as a pass would. Each
/// candidate is scored once.
pub(crate) fn best_fit<'c, W>(
    rec: &JobRecord,
    scoring: &ScoringConfig,
    learned: &learned::Learned,
    now: Timestamp,
    candidates: impl IntoIterator<Item = (W, &'c WorkerId, &'c Capabilities, i64)>,
) -> Option<W> {
    let placing = learned::Placing::of(rec, scoring, learned);
    candidates
        .into_iter()
        .map(|(w, id, caps, free)| {
            let s = score::total(rec, Some(caps), scoring, now) + placing.total(rec, id);
            (s, free, w)
        })
        .max_by(|(sa, fa, _), (sb, fb, _)| sa.total_cmp(sb).then(fa.cmp(fb)))
        .map(|(_, _, w)| w)
}

/// The job to preempt for one that fits `fits` and finds no free slot: a job leased at
/// dispatch whose start is not confirmed first (taking it back loses no work and spends
/// no attempt), then the lowest scoring job running on any of them (with its worker and
/// score); among equals the first in `running_on`'s order (sorted by id, so the same
/// one every pass). One rule for the full pass and the incremental planner.
pub(crate) fn preemption_victim<'a>(
    fits: &[&'a WorkerRecord],
    running_on: &HashMap<&WorkerId, Vec<&'a JobRecord>>,
    scoring: &ScoringConfig,
    now: Timestamp,
) -> Option<(&'a WorkerRecord, &'a JobRecord, f64)> {
    fits.iter()
        .flat_map(|w| {
            running_on
                .get(&w.id)
                .into_iter()
                .flatten()
                .map(move |v| (*w, *v))
        })
        .map(|(w, v)| (w, v, score::total(v, Some(&w.capabilities), scoring, now)))
        .min_by(|a, b| {
            let started = |r: &JobRecord| r.state == JobState::Running;
            started(a.1).cmp(&started(b.1)).then(a.2.total_cmp(&b.2))
        })
}

/// The score a job is dispatched with on `worker`: [`score::score`] with the worker's
/// affinity, plus the learned terms when they say anything (see `plan::learned`).
pub fn placed_score(
    rec: &JobRecord,
    worker: &WorkerRecord,
    scoring: &ScoringConfig,
    learned: &learned::Learned,
    now: Timestamp,
) -> Score {
    let mut s = score::score(rec, Some(&worker.capabilities), scoring, now);
    learned::Placing::of(rec, scoring, learned).extend(rec, &worker.id, &mut s);
    s
}

#[derive(Debug, PartialEq)]
pub enum Decision {
    /// Dispatched and leased to the worker (chosen by [`best_fit`] among those free).
    Dispatch(JobId, Score, WorkerId),
    /// Blocked (or re-blocked with a new reason).
    Block(JobId, String),
    /// Blocked, but every gate is open now; waits for a slot as pending.
    Unblock(JobId),
    /// A dependency failed for good.
    Cancel(JobId, String),
    Preempt {
        victim: JobId,
        epoch: u64,
        for_job: JobId,
    },
    /// A waiting parent whose children all ended; `Some` names a child that failed.
    FinishParent(JobId, Option<(JobId, JobState)>),
}

impl Decision {
    pub fn job(&self) -> JobId {
        match self {
            Decision::Dispatch(id, ..)
            | Decision::Block(id, _)
            | Decision::Unblock(id)
            | Decision::Cancel(id, _) => *id,
            Decision::FinishParent(id, _) => *id,
            Decision::Preempt { victim, .. } => *victim,
        }
    }
}

/// The first gate a waiting job cannot pass, before capacity: `Err(Some(reason))`
/// blocks it, `Err(None)` cancels it (reason in the `Ok`-less branch via `cancel`).
pub enum Gate {
    Open,
    Block(String),
    Cancel(String),
}

pub fn gate(rec: &JobRecord, view: &View, live: &[&WorkerRecord], now: Timestamp) -> Gate {
    let spec = &rec.spec;
    if let Some(t) = spec.not_before.filter(|t| *t > now) {
        return Gate::Block(format!("not before {t}"));
    }
    let mut waiting = 0;
    for dep in &spec.depends_on {
        match view.state_of(dep) {
            Some(JobState::Succeeded) => {}
            Some(s) if s.is_terminal() => {
                return Gate::Cancel(format!("dependency {dep} ended {s}"))
            }
            _ => waiting += 1,
        }
    }
    if waiting > 0 {
        return Gate::Block(format!(
            "waiting for {waiting} of {} dependencies",
            spec.depends_on.len()
        ));
    }
    if let Some(reason) = view.budgets.get(&spec.product).and_then(|b| b.blocked()) {
        return Gate::Block(reason);
    }
    if !live
        .iter()
        .any(|w| w.state == WorkerState::Active && w.capabilities.unmet(spec).is_none())
    {
        return Gate::Block(unplaceable_reason(spec, live.iter().copied()));
    }
    Gate::Open
}

/// A candidate in dispatch order: higher score first, then earlier submission, then
/// lower id (a total order, so a pass is deterministic). The keys are copied out of
/// the record because a pass compares them many times.
struct Ranked<'a> {
    score: f64,
    submitted_ms: i64,
    id: u128,
    rec: &'a JobRecord,
}

impl<'a> Ranked<'a> {
    fn new(score: f64, rec: &'a JobRecord) -> Self {
        Self {
            score,
            submitted_ms: rec.submitted_at.unix_millis(),
            id: rec.id.as_uuid().as_u128(),
            rec,
        }
    }
}

impl Ord for Ranked<'_> {
    /// Greater = dispatched sooner (`BinaryHeap` pops the greatest).
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then(other.submitted_ms.cmp(&self.submitted_ms))
            .then(other.id.cmp(&self.id))
    }
}

impl PartialOrd for Ranked<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Ranked<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Ranked<'_> {}

/// What one pass decided, and the room it left.
pub struct Pass {
    pub decisions: Vec<Decision>,
    /// Active workers with notices to spare after every waiting job that could use
    /// them was placed (slots − running − dispatched), for the direct lane.
    pub rooms: Vec<crate::lane::Room>,
}

/// Each active worker's slots, less those the direct lane handed out for jobs the
/// view does not hold yet; the planners then take off what runs and was dispatched.
fn slots<'a>(active: &[&'a WorkerRecord], view: &View) -> HashMap<&'a WorkerId, i64> {
    active
        .iter()
        .map(|w| {
            let held = view.lane_held.get(&w.id).copied().unwrap_or(0);
            (&w.id, i64::from(w.slots) - held)
        })
        .collect()
}

pub fn plan(view: &View, policy: &Policy, starts: &StartLog, now: Timestamp) -> Vec<Decision> {
    plan_pass(view, policy, starts, now).decisions
}

pub fn plan_pass(view: &View, policy: &Policy, starts: &StartLog, now: Timestamp) -> Pass {
    let live: Vec<&WorkerRecord> = view
        .workers
        .values()
        .filter(|w| worker_live(w, policy.worker_timeout, now))
        .collect();
    // In id order, so that among equal workers the same one is chosen every time.
    let mut active: Vec<&WorkerRecord> = live
        .iter()
        .copied()
        .filter(|w| w.state == WorkerState::Active && !view.suspect(w))
        .collect();
    active.sort_by(|a, b| a.id.cmp(&b.id));
    let mut free = slots(&active, view);
    let mut in_flight: HashMap<String, u32> = HashMap::new();
    let mut running_on: HashMap<&WorkerId, Vec<&JobRecord>> = HashMap::new();
    for (rec, _) in view.jobs.values() {
        if matches!(rec.state, JobState::Running | JobState::Dispatched) {
            for (k, _) in limit_keys(&rec.spec, policy.limits) {
                *in_flight.entry(k).or_default() += 1;
            }
        }
        // A job leased at dispatch holds its worker's slot as a running one does, from
        // the grant on: the worker starts every grant at once, so none waits for a slot.
        if let (JobState::Running | JobState::Dispatched, Some(l)) = (rec.state, &rec.lease) {
            if let Some(f) = free.get_mut(&l.worker) {
                *f -= 1;
            }
        }
        if let (JobState::Running | JobState::Dispatched, Some(l)) = (rec.state, &rec.lease) {
            running_on.entry(&l.worker).or_default().push(rec);
        }
    }
    // In id order: among equal victims, the same one every time.
    for jobs in running_on.values_mut() {
        jobs.sort_by_key(|r| r.id);
    }
    let fitting = |spec: &JobSpec| -> Vec<&WorkerRecord> {
        active
            .iter()
            .copied()
            .filter(|w| w.capabilities.unmet(spec).is_none())
            .collect()
    };
    // Notices already out without a lease (an earlier coordinator's, for any fitting
    // worker) take capacity first (in id order, for the same reason).
    let mut out_already: Vec<&JobRecord> = view
        .jobs
        .values()
        .map(|(r, _)| r)
        .filter(|r| r.state == JobState::Dispatched && r.lease.is_none())
        .collect();
    out_already.sort_by_key(|r| r.id);
    for rec in out_already {
        if let Some(w) = fitting(&rec.spec).into_iter().max_by_key(|w| free[&w.id]) {
            *free.get_mut(&w.id).expect("active") -= 1;
        }
    }
    let mut out = Vec::new();
    // Parents whose children all ended.
    for (rec, _) in view
        .jobs
        .values()
        .filter(|(r, _)| r.state == JobState::Waiting)
    {
        let states: Vec<(JobId, Option<JobState>)> = rec
            .children
            .iter()
            .map(|c| (*c, view.state_of(c)))
            .collect();
        if states
            .iter()
            .all(|(_, s)| s.is_some_and(|s| s.is_terminal()))
        {
            let failed = states
                .into_iter()
                .find(|(_, s)| *s != Some(JobState::Succeeded))
                .map(|(c, s)| (c, s.expect("terminal")));
            out.push(Decision::FinishParent(rec.id, failed));
        }
    }
    // Slots left anywhere: once none are, a candidate can only be gated (blocked,
    // cancelled, unblocked), so ranking and placing it is skipped — with thousands
    // pending, that is most of a pass.
    let mut capacity: i64 = free.values().filter(|f| **f > 0).sum();
    let can_preempt = policy.preemption_margin.is_some();
    // Ranked lazily: a heap is built in linear time and only as many jobs are popped
    // in rank order as can still be placed; the rest are only gated, in any order.
    let mut ranked: BinaryHeap<Ranked> = view
        .jobs
        .values()
        .map(|(r, _)| r)
        .filter(|r| match r.state {
            JobState::Pending => r.retry_at.is_none_or(|t| t <= now),
            JobState::Blocked => true,
            _ => false,
        })
        .map(|r| Ranked::new(score::total(r, None, policy.scoring, now), r))
        .collect();
    let mut unranked = Vec::new().into_iter();
    let mut starts_now: HashMap<String, usize> = HashMap::new();
    let mut preempted = false;
    loop {
        let placing = capacity > 0 || (can_preempt && !preempted);
        if !placing && !ranked.is_empty() {
            unranked = std::mem::take(&mut ranked).into_vec().into_iter();
        }
        let next = if placing {
            ranked.pop()
        } else {
            unranked.next()
        };
        let Some(Ranked {
            score: job_score,
            rec,
            ..
        }) = next
        else {
            break;
        };
        match gate(rec, view, &live, now) {
            Gate::Cancel(reason) => {
                out.push(Decision::Cancel(rec.id, reason));
                continue;
            }
            Gate::Block(reason) => {
                if rec.state != JobState::Blocked || rec.reason.as_deref() != Some(reason.as_str())
                {
                    out.push(Decision::Block(rec.id, reason));
                }
                continue;
            }
            Gate::Open => {}
        }
        let unblock = || (rec.state == JobState::Blocked).then_some(Decision::Unblock(rec.id));
        if capacity <= 0 && (preempted || !can_preempt) {
            out.extend(unblock());
            continue;
        }
        let keys = limit_keys(&rec.spec, policy.limits);
        let limited = keys.iter().any(|(k, i)| {
            let rule = &policy.limits[*i];
            rule.max_running
                .is_some_and(|m| in_flight.get(k).copied().unwrap_or(0) >= m)
                || rule.max_starts_per_minute.is_some_and(|m| {
                    starts.in_last_minute(k, now) + starts_now.get(k).copied().unwrap_or(0)
                        >= m as usize
                })
        });
        let fits = fitting(&rec.spec);
        // Prefer a free worker that offers the job's preferred capabilities.
        let best = best_fit(
            rec,
            policy.scoring,
            &view.learned,
            now,
            fits.iter()
                .filter(|w| free[&w.id] > 0)
                .map(|w| (*w, &w.id, &w.capabilities, free[&w.id])),
        );
        if limited {
            out.extend(unblock());
            continue;
        }
        let chosen = match best {
            Some(w) => Some(w),
            None if !preempted && policy.preemption_margin.is_some() => {
                let margin = policy.preemption_margin.expect("some");
                let victim = preemption_victim(&fits, &running_on, policy.scoring, now);
                match victim {
                    Some((w, v, s)) if job_score - s >= margin => {
                        preempted = true;
                        let epoch = v.lease.as_ref().map_or(v.epoch, |l| l.epoch);
                        out.push(Decision::Preempt {
                            victim: v.id,
                            epoch,
                            for_job: rec.id,
                        });
                        *free.get_mut(&w.id).expect("active") += 1;
                        capacity += 1;
                        Some(w)
                    }
                    _ => None,
                }
            }
            None => None,
        };
        match chosen {
            Some(w) => {
                *free.get_mut(&w.id).expect("active") -= 1;
                capacity -= 1;
                for (k, _) in keys {
                    *in_flight.entry(k.clone()).or_default() += 1;
                    *starts_now.entry(k).or_default() += 1;
                }
                out.push(Decision::Dispatch(
                    rec.id,
                    placed_score(rec, w, policy.scoring, &view.learned, now),
                    w.id.clone(),
                ));
            }
            None => out.extend(unblock()),
        }
    }
    let rooms = active
        .iter()
        .filter(|w| free[&w.id] > 0)
        .map(|w| crate::lane::Room {
            worker: w.id.clone(),
            capabilities: w.capabilities.clone(),
            free: free[&w.id],
        })
        .collect();
    Pass {
        decisions: out,
        rooms,
    }
}

/// Explains a job from the same inputs the planner uses.
pub fn explain(
    rec: &JobRecord,
    view: &View,
    policy: &Policy,
    starts: &StartLog,
    now: Timestamp,
) -> gf_schemas::Explanation {
    let live: Vec<&WorkerRecord> = view
        .workers
        .values()
        .filter(|w| worker_live(w, policy.worker_timeout, now))
        .collect();
    let running = |w: &WorkerId| {
        view.jobs
            .values()
            .filter(|(r, _)| {
                r.state == JobState::Running && r.lease.as_ref().is_some_and(|l| &l.worker == w)
            })
            .count() as i64
    };
    let kind = gf_schemas::profile::kind(&rec.spec);
    let mut workers: Vec<gf_schemas::WorkerFit> = live
        .iter()
        .map(|w| {
            let mut missing = w.capabilities.unmet(&rec.spec);
            if missing.is_none() && w.state != WorkerState::Active {
                missing = Some(format!("worker is {:?}", w.state).to_lowercase());
            }
            gf_schemas::WorkerFit {
                worker: w.id.clone(),
                score: missing
                    .is_none()
                    .then(|| placed_score(rec, w, policy.scoring, &view.learned, now)),
                learned: view.learned.estimate(&kind, &w.id).map(|e| {
                    gf_schemas::budget::LearnedFit {
                        kind: kind.clone(),
                        success: e.success,
                        kind_success: e.kind_success,
                        observed: e.observed,
                        secs: e.secs,
                        kind_secs: e.kind_secs,
                    }
                }),
                missing,
                free_slots: i64::from(w.slots) - running(&w.id),
            }
        })
        .collect();
    workers.sort_by(|a, b| a.worker.cmp(&b.worker));
    let mut waiting_for = Vec::new();
    if !rec.state.is_terminal()
        && !matches!(
            rec.state,
            JobState::Running | JobState::Dispatched | JobState::Waiting
        )
    {
        match gate(rec, view, &live, now) {
            Gate::Block(r) | Gate::Cancel(r) => waiting_for.push(r),
            Gate::Open => {}
        }
        if let Some(t) = rec.retry_at.filter(|t| *t > now) {
            waiting_for.push(format!("retry backoff until {t}"));
        }
        for (k, i) in limit_keys(&rec.spec, policy.limits) {
            let rule = &policy.limits[i];
            let n = view
                .jobs
                .values()
                .filter(|(r, _)| {
                    matches!(r.state, JobState::Running | JobState::Dispatched)
                        && limit_keys(&r.spec, policy.limits)
                            .iter()
                            .any(|(x, _)| *x == k)
                })
                .count();
            if rule.max_running.is_some_and(|m| n >= m as usize) {
                waiting_for.push(format!(
                    "limit: {n} jobs with {k} in flight (max {})",
                    rule.max_running.expect("some")
                ));
            }
            if let Some(m) = rule.max_starts_per_minute {
                if starts.in_last_minute(&k, now) >= m as usize {
                    waiting_for.push(format!("limit: {m} starts per minute for {k} reached"));
                }
            }
        }
        if waiting_for.is_empty()
            && !workers
                .iter()
                .any(|w| w.missing.is_none() && w.free_slots > 0)
        {
            waiting_for.push("capacity: every fitting worker is busy".into());
        }
    }
    let summary = match (rec.state, waiting_for.first()) {
        (s, _) if s.is_terminal() => format!(
            "{s}{}",
            rec.reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        ),
        (JobState::Running, _) => format!(
            "running on {}",
            rec.lease
                .as_ref()
                .map_or("?".into(), |l| l.worker.to_string())
        ),
        (JobState::Dispatched, _) => match &rec.lease {
            Some(l) => format!(
                "leased to {} at dispatch; waiting for it to start (by {})",
                l.worker, l.expires_at
            ),
            None => "dispatched; waiting for a worker to claim it".into(),
        },
        (JobState::Waiting, _) => format!("waiting for {} children", rec.children.len()),
        (_, Some(w)) => w.clone(),
        (_, None) => "ready; will be dispatched on the next scheduling pass".into(),
    };
    gf_schemas::Explanation {
        job_id: rec.id,
        state: rec.state,
        reason: rec.reason.clone(),
        summary,
        score: score::score(rec, None, policy.scoring, now),
        workers,
        waiting_for,
        labels: rec.spec.labels.clone(),
    }
}

/// Capabilities helper for tests and callers that only have values.
pub fn caps(values: &[(&str, &str)], tags: &[&str]) -> Capabilities {
    Capabilities {
        values: values
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        queues: vec![gf_schemas::DEFAULT_QUEUE.into()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gf_schemas::Lease;

    fn t(ms: i64) -> Timestamp {
        Timestamp::from_unix_millis(1_800_000_000_000 + ms)
    }
    fn worker(id: &str, slots: u32, tags: &[&str]) -> WorkerRecord {
        WorkerRecord {
            id: WorkerId::new(id).unwrap(),
            capabilities: caps(&[("os", "linux")], tags),
            slots,
            free_slots: slots,
            running: vec![],
            state: WorkerState::Active,
            version: "t".into(),
            hostname: "h".into(),
            registered_at: t(0),
            last_heartbeat: t(0),
        }
    }
    fn view(workers: Vec<WorkerRecord>, jobs: Vec<JobRecord>) -> View {
        let mut v = View {
            workers: workers.into_iter().map(|w| (w.id.clone(), w)).collect(),
            ..Default::default()
        };
        for j in jobs {
            v.set_job(j, 1);
        }
        v
    }
    fn job(priority: u8, at: i64) -> JobRecord {
        let mut s = JobSpec::command(["true"]);
        s.priority = priority;
        JobRecord::new(JobId::new(), s, t(at))
    }
    /// A finished job leaves the view when its grace period ends (the marker reads
    /// as a purge), unless a live job names it: then its state stays until no live
    /// job does, so the dependent still sees how its dependency ended.
    #[test]
    fn finished_jobs_leave_the_view_when_they_expire_unless_named() {
        let mut v = View::default();
        let mut dep = job(0, 0);
        let mut other = job(0, 1);
        let mut waiting = job(0, 2);
        waiting.spec.depends_on = vec![dep.id];
        v.set_job(dep.clone(), 1);
        v.set_job(other.clone(), 2);
        v.set_job(waiting.clone(), 3);
        dep.state = JobState::Succeeded;
        other.state = JobState::Dead;
        v.set_job(dep.clone(), 4);
        v.set_job(other.clone(), 5);
        let expire = |v: &mut View, id: &JobId| {
            v.apply_job(&id.to_string(), 9, kv::Operation::Purge, &Bytes::new())
        };
        expire(&mut v, &other.id);
        expire(&mut v, &dep.id);
        assert_eq!(v.state_of(&other.id), None, "nobody names it: forgotten");
        assert_eq!(
            v.state_of(&dep.id),
            Some(JobState::Succeeded),
            "named: kept"
        );
        // The dependent finishes: nothing names the dependency any more.
        waiting.state = JobState::Succeeded;
        v.set_job(waiting.clone(), 6);
        assert_eq!(v.state_of(&dep.id), None);
        expire(&mut v, &waiting.id);
        assert!(v.terminal.is_empty() && v.jobs.is_empty());
        assert!(v.refs.is_empty() && v.retained.is_empty());
    }

    /// A live job names a job the view never saw (it left the store before this
    /// leader started): the view reports it, and takes in its final state once found.
    #[test]
    fn unknown_references_are_reported_and_resolved() {
        let mut v = View::default();
        let gone = JobId::new();
        let mut dependent = job(0, 0);
        dependent.spec.depends_on = vec![gone];
        v.set_job(dependent.clone(), 1);
        assert_eq!(v.unknown_references(10), vec![gone]);
        v.take_changes();
        v.resolve_finished(gone, JobState::Succeeded);
        assert_eq!(v.state_of(&gone), Some(JobState::Succeeded));
        assert_eq!(v.take_changes(), vec![gone], "the planner looks again");
        assert!(v.unknown_references(10).is_empty());
        // An id nobody names is not taken in.
        v.resolve_finished(JobId::new(), JobState::Dead);
        assert_eq!(v.terminal.len(), 1);
        dependent.state = JobState::Succeeded;
        v.set_job(dependent, 2);
        assert_eq!(v.state_of(&gone), None, "dropped once nobody names it");
    }

    fn running_on(mut j: JobRecord, w: &str) -> JobRecord {
        j.state = JobState::Running;
        j.epoch = 1;
        j.lease = Some(Lease {
            worker: WorkerId::new(w).unwrap(),
            epoch: 1,
            granted_at: t(0),
            expires_at: t(9_000),
            ttl_ms: 9_000,
        });
        j
    }
    const TIMEOUT: Duration = Duration::from_secs(10);
    fn policy<'a>(
        scoring: &'a ScoringConfig,
        limits: &'a [LimitRule],
        preempt: Option<f64>,
    ) -> Policy<'a> {
        Policy {
            worker_timeout: TIMEOUT,
            scoring,
            preemption_margin: preempt,
            limits,
        }
    }
    fn dispatched(d: &[Decision]) -> Vec<JobId> {
        d.iter()
            .filter_map(|d| {
                if let Decision::Dispatch(id, ..) = d {
                    Some(*id)
                } else {
                    None
                }
            })
            .collect()
    }
    fn run(v: &View) -> Vec<Decision> {
        plan(
            v,
            &policy(&ScoringConfig::default(), &[], None),
            &StartLog::default(),
            t(1),
        )
    }

    /// Only as many jobs as free slots are dispatched, most urgent first.
    #[test]
    fn dispatch_bounded_by_capacity_and_priority_first() {
        let low: Vec<JobRecord> = (0..5).map(|i| job(5, i)).collect();
        let urgent = job(0, 100);
        let mut jobs = low.clone();
        jobs.push(urgent.clone());
        let v = view(vec![worker("a", 2, &[])], jobs);
        assert_eq!(dispatched(&run(&v)), vec![urgent.id, low[0].id]);
    }

    /// Slots the direct lane handed out for jobs the view does not hold yet count as
    /// leased, in the full scan and the incremental planner alike: a 3-slot worker
    /// with 2 held takes one more job and offers the lane no room.
    #[test]
    fn slots_the_lane_holds_are_not_planned_on() {
        let jobs: Vec<JobRecord> = (0..5).map(|i| job(5, i)).collect();
        let mut v = view(vec![worker("a", 3, &[])], jobs.clone());
        v.lane_held.insert(WorkerId::new("a").unwrap(), 2);
        let scoring = ScoringConfig::default();
        let policy = policy(&scoring, &[], None);
        let full = plan_pass(&v, &policy, &StartLog::default(), t(1));
        assert_eq!(dispatched(&full.decisions), vec![jobs[0].id]);
        assert!(full.rooms.is_empty());
        let incremental = Planner::new().pass(&mut v, &policy, &StartLog::default(), t(1));
        assert_eq!(dispatched(&incremental.decisions), vec![jobs[0].id]);
        assert!(incremental.rooms.is_empty());
        // With nothing held, all three slots are planned on.
        v.lane_held.clear();
        assert_eq!(dispatched(&run(&v)).len(), 3);
    }

    /// With every slot taken, the rest of the backlog is still gated: a job that can
    /// no longer be placed is blocked and a blocked one whose gate opened is unblocked,
    /// though neither is ranked or dispatched. With one slot, the best of many wins.
    #[test]
    fn full_fleet_still_gates_and_one_slot_takes_the_best() {
        let mut plan9 = job(5, 0);
        plan9.spec.requires.insert("os".into(), "plan9".into());
        let mut was_blocked = job(5, 1);
        was_blocked.state = JobState::Blocked;
        was_blocked.reason = Some("not before then".into());
        let backlog: Vec<JobRecord> = (10..200).map(|i| job(5, i)).collect();
        let mut jobs = vec![
            running_on(job(5, -1), "a"),
            plan9.clone(),
            was_blocked.clone(),
        ];
        jobs.extend(backlog.iter().cloned());
        let v = view(vec![worker("a", 1, &[])], jobs.clone());
        let d = run(&v);
        assert!(dispatched(&d).is_empty());
        assert!(d.contains(&Decision::Block(
            plan9.id,
            "unplaceable: no live worker has os=plan9".into()
        )));
        assert!(d.contains(&Decision::Unblock(was_blocked.id)));
        assert_eq!(d.len(), 2, "{d:?}");

        let urgent = job(1, 500);
        jobs.push(urgent.clone());
        let v = view(vec![worker("a", 1, &[]), worker("b", 1, &[])], jobs);
        assert_eq!(dispatched(&run(&v)), vec![urgent.id]);
    }

    /// Running and already-dispatched jobs use up capacity.
    #[test]
    fn running_and_dispatched_count() {
        let mut d = job(5, 1);
        d.state = JobState::Dispatched;
        let v = view(
            vec![worker("a", 2, &[])],
            vec![running_on(job(5, 0), "a"), d, job(5, 2)],
        );
        assert!(dispatched(&run(&v)).is_empty());
    }

    /// A grant not yet started holds a slot of the worker it names (not of any
    /// worker), so no worker is ever granted more than its slots: a grant never waits
    /// for a slot past its start deadline.
    #[test]
    fn grants_not_yet_started_hold_their_workers_slots() {
        let mut granted = running_on(job(5, 1), "a");
        granted.state = JobState::Dispatched;
        let next = job(5, 2);
        let solo = view(
            vec![worker("a", 1, &[])],
            vec![granted.clone(), next.clone()],
        );
        assert!(
            dispatched(&run(&solo)).is_empty(),
            "a's only slot is granted"
        );
        let pair = view(
            vec![worker("a", 1, &[]), worker("b", 1, &[])],
            vec![granted.clone(), next.clone()],
        );
        let d = run(&pair);
        assert!(
            d.iter().any(
                |d| matches!(d, Decision::Dispatch(id, _, w) if *id == next.id && w.as_str() == "b")
            ),
            "{d:?}"
        );
        let pass = plan_pass(
            &pair,
            &policy(&ScoringConfig::default(), &[], None),
            &StartLog::default(),
            t(1),
        );
        assert!(pass.rooms.is_empty(), "no room left for the direct lane");
        // The explanation names the holder.
        let e = explain(
            &granted,
            &pair,
            &policy(&ScoringConfig::default(), &[], None),
            &StartLog::default(),
            t(1),
        );
        assert!(
            e.summary.contains("leased to a at dispatch"),
            "{}",
            e.summary
        );
    }

    /// A job nobody can run is blocked with the missing capability; a job waiting for
    /// its retry time is left alone; dead workers don't count.
    #[test]
    fn unplaceable_and_retry_wait() {
        let mut plan9 = job(5, 0);
        plan9.spec.requires.insert("os".into(), "plan9".into());
        let mut later = job(5, 1);
        later.retry_at = Some(t(5_000));
        let mut gpu = job(5, 2);
        gpu.spec.tags.insert("gpu".into());
        let mut stale = worker("old", 4, &["gpu"]);
        stale.last_heartbeat = t(-20_000);
        let v = view(
            vec![worker("a", 4, &[]), stale],
            vec![plan9.clone(), later, gpu.clone()],
        );
        let d = run(&v);
        assert!(d.contains(&Decision::Block(
            plan9.id,
            "unplaceable: no live worker has os=plan9".into()
        )));
        assert!(d.contains(&Decision::Block(
            gpu.id,
            "unplaceable: no live worker has tag gpu".into()
        )));
        assert_eq!(d.len(), 2);
    }

    /// A blocked-unplaceable job is dispatched once a fitting worker appears, and its
    /// reason is not rewritten while nothing changes.
    #[test]
    fn unplaceable_recovers() {
        let mut gpu = job(5, 0);
        gpu.spec.tags.insert("gpu".into());
        gpu.state = JobState::Blocked;
        gpu.reason = Some("unplaceable: no live worker has tag gpu".into());
        let v = view(vec![worker("a", 1, &[])], vec![gpu.clone()]);
        assert!(run(&v).is_empty());
        let v = view(
            vec![worker("a", 1, &[]), worker("g", 1, &["gpu"])],
            vec![gpu.clone()],
        );
        assert_eq!(dispatched(&run(&v)), vec![gpu.id]);
    }

    /// Dependencies gate a job; a failed dependency cancels it; all succeeded opens it.
    #[test]
    fn dependencies() {
        let a = job(5, 0);
        let mut b = job(5, 1);
        b.spec.depends_on = vec![a.id];
        let mut v = view(vec![worker("w", 4, &[])], vec![a.clone(), b.clone()]);
        let d = run(&v);
        assert!(d.contains(&Decision::Block(
            b.id,
            "waiting for 1 of 1 dependencies".into()
        )));
        v.terminal.insert(a.id, JobState::Dead);
        v.jobs.remove(&a.id);
        assert!(run(&v).contains(&Decision::Cancel(
            b.id,
            format!("dependency {} ended dead", a.id)
        )));
        v.terminal.insert(a.id, JobState::Succeeded);
        assert_eq!(dispatched(&run(&v)), vec![b.id]);
    }

    /// A product at its budget gets no dispatches; others do.
    #[test]
    fn budget_blocks_product() {
        let mut paid = job(5, 0);
        paid.spec.product = "acme".into();
        let free_job = job(5, 1);
        let mut v = view(
            vec![worker("w", 4, &[])],
            vec![paid.clone(), free_job.clone()],
        );
        let mut b = gf_schemas::Budget::new("acme", t(0));
        b.limit_cost = Some(1.0);
        b.spent_cost = 1.0;
        v.budgets.insert("acme".into(), b);
        let d = run(&v);
        assert_eq!(dispatched(&d), vec![free_job.id]);
        assert!(
            matches!(&d[0], Decision::Block(id, r) if *id == paid.id && r.starts_with("budget:"))
        );
    }

    /// A concurrency limit per label value holds across running, dispatched and new.
    #[test]
    fn concurrency_limit_per_key() {
        let limits = [LimitRule {
            label: "repo".into(),
            max_running: Some(2),
            max_starts_per_minute: None,
        }];
        let labelled = |at, repo: &str| {
            let mut j = job(5, at);
            j.spec.labels.insert("repo".into(), repo.into());
            j
        };
        let r1 = running_on(labelled(0, "x"), "w");
        let jobs = vec![r1, labelled(1, "x"), labelled(2, "x"), labelled(3, "y")];
        let ids: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
        let v = view(vec![worker("w", 10, &[])], jobs);
        let scoring = ScoringConfig::default();
        let d = plan(
            &v,
            &policy(&scoring, &limits, None),
            &StartLog::default(),
            t(1),
        );
        assert_eq!(dispatched(&d), vec![ids[1], ids[3]]);
        let rate = [LimitRule {
            label: "repo".into(),
            max_running: None,
            max_starts_per_minute: Some(1),
        }];
        let mut log = StartLog::default();
        log.record("repo=y".into(), t(0));
        let d = plan(&v, &policy(&scoring, &rate, None), &log, t(1));
        assert_eq!(dispatched(&d), vec![ids[1]]);
    }

    /// With preemption on, an urgent job on a full fleet revokes the lowest-scoring
    /// running job if the gap is at least the margin; never with preemption off.
    #[test]
    fn preemption() {
        let low = running_on(job(9, 0), "w");
        let mid = running_on(job(6, 0), "w");
        let urgent = job(0, 5);
        let v = view(
            vec![worker("w", 2, &[])],
            vec![low.clone(), mid, urgent.clone()],
        );
        let scoring = ScoringConfig::default();
        let d = plan(
            &v,
            &policy(&scoring, &[], Some(30.0)),
            &StartLog::default(),
            t(10),
        );
        assert_eq!(
            d[0],
            Decision::Preempt {
                victim: low.id,
                epoch: 1,
                for_job: urgent.id
            }
        );
        assert_eq!(dispatched(&d), vec![urgent.id]);
        assert!(dispatched(&run(&v)).is_empty());
        let d = plan(
            &v,
            &policy(&scoring, &[], Some(100.0)),
            &StartLog::default(),
            t(10),
        );
        assert!(d.is_empty(), "gap below the margin: {d:?}");
    }

    /// A job leased at dispatch but not started is the first victim, before a running
    /// job that scores lower.
    #[test]
    fn an_unstarted_grant_is_the_first_victim() {
        let low = running_on(job(9, 0), "w");
        let mut granted = running_on(job(6, 0), "w");
        granted.state = JobState::Dispatched;
        let urgent = job(0, 5);
        let v = view(
            vec![worker("w", 2, &[])],
            vec![low, granted.clone(), urgent.clone()],
        );
        let scoring = ScoringConfig::default();
        let d = plan(
            &v,
            &policy(&scoring, &[], Some(30.0)),
            &StartLog::default(),
            t(10),
        );
        assert_eq!(
            d[0],
            Decision::Preempt {
                victim: granted.id,
                epoch: 1,
                for_job: urgent.id
            }
        );
        assert_eq!(dispatched(&d), vec![urgent.id]);
    }

    /// A waiting parent ends when its children do, dead if one failed.
    #[test]
    fn parents_finish_with_children() {
        let mut p = job(5, 0);
        p.state = JobState::Waiting;
        let c1 = JobId::new();
        let c2 = JobId::new();
        p.children = vec![c1, c2];
        let mut v = view(vec![], vec![p.clone()]);
        v.terminal.insert(c1, JobState::Succeeded);
        assert!(run(&v).is_empty());
        v.terminal.insert(c2, JobState::Cancelled);
        assert_eq!(
            run(&v),
            vec![Decision::FinishParent(
                p.id,
                Some((c2, JobState::Cancelled))
            )]
        );
    }

    /// Explain names the missing capability for each worker and the score terms.
    #[test]
    fn explain_names_missing_capability() {
        let mut j = job(3, 0);
        j.spec.tags.insert("gpu".into());
        let v = view(
            vec![worker("a", 1, &[]), worker("g", 1, &["gpu"])],
            vec![j.clone()],
        );
        let scoring = ScoringConfig::default();
        let e = explain(
            &j,
            &v,
            &policy(&scoring, &[], None),
            &StartLog::default(),
            t(1),
        );
        assert_eq!(e.workers[0].missing.as_deref(), Some("tag gpu"));
        assert!(e.workers[1].missing.is_none());
        assert_eq!(e.workers[1].score.as_ref().unwrap().terms["priority"], 60.0);
        assert_eq!(e.score.terms.len(), 6);
    }
}
