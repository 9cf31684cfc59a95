//! The scheduler leader's loop: keeps the [`View`] current from KV watches, applies
//! what [`plan`] decides with revision-checked writes, reaps expired leases and
//! unclaimed notices, adds reported usage to budgets, and fires cron schedules.
//!
//! A conflict on any write only means the view was behind: the job is re-read and
//! decided again on the next pass.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use gf_schemas::budget::UsageEntry;
use gf_schemas::{EventKind, JobId, JobState, Level, Timestamp, WorkerRecord, WorkerState};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::dispatch::InFlight;
use crate::error::StoreError;
use crate::fsm;
use crate::leader::{self, LeaderLease};
use crate::metrics::{self, ViewCounts, ViewGauges};
pub use crate::plan::{plan, unplaceable_reason, worker_live, Decision, Policy, StartLog, View};
use crate::service::Service;
use crate::store::encode;
use crate::watch::{Backoff, Resumable, Start};

/// Shared, read-only status for `/health`.
#[derive(Default)]
pub struct LeaderStatus {
    pub is_leader: AtomicBool,
    pub leader: Mutex<Option<String>>,
}

/// A waiting job's queue and requirements: what its queue and route depth depend on.
type Shape<'a> = (&'a str, &'a BTreeMap<String, String>);

/// What the leader's gauges report, derived from the view.
pub fn counts(
    view: &View,
    routing: &gf_schemas::names::Routing,
    worker_timeout: Duration,
    now: Timestamp,
) -> ViewCounts {
    let mut c = ViewCounts::default();
    // Waiting jobs counted per shape (queue and requirements, borrowed) first, and the
    // labels made once per shape: this walks every live job twice a second, and
    // allocating a queue name and a route label per job was a tenth of the leader's
    // CPU with 100,000 waiting (profiled). Hashed with foldhash: SipHash over each
    // job's requirements was 4 % of the coordinator's CPU with 100,000 waiting.
    let mut shapes: HashMap<Shape, (&gf_schemas::JobSpec, u64), crate::jobmap::JobHasher> =
        HashMap::default();
    for (rec, _) in view.jobs.values() {
        *c.jobs.entry(rec.state).or_default() += 1;
        if matches!(rec.state, JobState::Pending | JobState::Blocked) {
            shapes
                .entry((rec.spec.queue.as_str(), &rec.spec.requires))
                .or_insert((&rec.spec, 0))
                .1 += 1;
        }
    }
    for ((queue, _), (spec, n)) in shapes {
        *c.queue_depth.entry(queue.to_string()).or_default() += n;
        *c.route_depth
            .entry(routing.route_of(spec).label())
            .or_default() += n;
    }
    for w in view.workers.values() {
        let live = worker_live(w, worker_timeout, now);
        let state = if live { w.state } else { WorkerState::Gone };
        *c.workers.entry(state).or_default() += 1;
        if live && w.state != WorkerState::Gone {
            c.slots_total += u64::from(w.slots);
            c.slots_free += u64::from(w.free_slots);
        }
    }
    c
}

pub fn policy(service: &Service) -> Policy<'_> {
    let cfg = &service.config;
    Policy {
        worker_timeout: cfg.worker_timeout,
        scoring: &cfg.scoring,
        preemption_margin: cfg.preemption_margin,
        limits: &cfg.limits,
    }
}

/// Runs for the life of the coordinator: waits to become leader, leads until
/// leadership is lost or `shutdown`, and steps down on shutdown.
pub async fn run(
    service: Arc<Service>,
    status: Arc<LeaderStatus>,
    stats: crate::stats::StatsFeed,
    archiver: crate::history::archive::Archiver,
    outcomes: crate::outcomes::Publisher,
    mut reconnects: watch::Receiver<u64>,
    shutdown: CancellationToken,
) {
    let cfg = service.config.clone();
    let me = cfg.id.clone();
    let mut tick = tokio::time::interval(cfg.leader_ttl / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        // With NATS unreachable each call below waits out its request timeout (seconds
        // each): a shutdown must not wait for them, or for the next turn (a coordinator
        // that lost its leadership to an outage took over 60 s to stop). A lease taken
        // by a try cut short expires by itself, as a crashed leader's does.
        let acquired = shutdown
            .run_until_cancelled(async {
                sync_clock(&service).await;
                *status.leader.lock().expect("status") = leader::current(&service.store.leader)
                    .await
                    .map(|(v, _)| v.holder);
                leader::try_acquire(&service.store.leader, &me, cfg.leader_ttl, &service.clock)
                    .await
            })
            .await;
        let Some(acquired) = acquired else { return };
        let Some(mut lease) = acquired else {
            continue;
        };
        tracing::info!(term = lease.term, "became scheduler leader");
        service.events.emit(
            EventKind::LeaderElected,
            Level::Info,
            None,
            None,
            format!("{me} leads term {}", lease.term),
        );
        status.is_leader.store(true, Ordering::SeqCst);
        metrics::leader(true);
        *status.leader.lock().expect("status") = Some(me.clone());
        // What the term keeps between re-opened watches; the next term starts over.
        let mut term = Term::new();
        loop {
            let mut end = lead(
                &service,
                &mut lease,
                (&stats, &archiver, &outcomes),
                &mut reconnects,
                &shutdown,
                &mut term,
            )
            .await;
            if matches!(end, LeadEnd::Restart) {
                // Its watches are dropped, to be opened again where they got to.
                term.broke();
            }
            // Until the view is current again nothing may take a slot the old view
            // promised; jobs the lane created meanwhile come back with the watch.
            service.lane.close();
            if matches!(end, LeadEnd::Restart) && lease.valid() {
                let pause = term.backoff.next_pause();
                tracing::info!(
                    pause_ms = pause.as_millis() as u64,
                    "re-opening the scheduler's watches"
                );
                end = pause_leading(&service, &mut lease, pause, &shutdown).await;
            }
            match end {
                LeadEnd::Restart if lease.valid() => continue,
                LeadEnd::Shutdown => {
                    leader::step_down(&service.store.leader, &lease).await;
                    status.is_leader.store(false, Ordering::SeqCst);
                    metrics::leader(false);
                    return;
                }
                _ => break,
            }
        }
        tracing::warn!("lost scheduler leadership");
        status.is_leader.store(false, Ordering::SeqCst);
        metrics::leader(false);
        ViewGauges::default().clear();
    }
}

/// Waits `pause` before the leader re-opens its watches, renewing the lease meanwhile
/// (the pause may be longer than the lease). `Restart` when it is over.
async fn pause_leading(
    service: &Service,
    lease: &mut LeaderLease,
    pause: Duration,
    shutdown: &CancellationToken,
) -> LeadEnd {
    let until = tokio::time::Instant::now() + pause;
    let mut renew = tokio::time::interval_at(
        tokio::time::Instant::now() + service.config.leader_ttl / 3,
        service.config.leader_ttl / 3,
    );
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return LeadEnd::Shutdown,
            _ = tokio::time::sleep_until(until) => return LeadEnd::Restart,
            _ = renew.tick() => {
                if let Some(end) = renew_or_end(service, lease, shutdown).await {
                    return end;
                }
            }
        }
    }
}

/// What a leader keeps while it re-opens its watches within one term (after a watch
/// broke, NATS reconnected, or a watch was too slow): its view, with the planner and
/// the start log that go with it, where each watch got to, and the backoff between
/// attempts. A watch that can resume keeps the view and applies only what changed
/// (`crate::watch`); a jobs watch that must replay rebuilds the view from nothing.
struct Term {
    view: Option<View>,
    planner: crate::plan::Planner,
    starts: StartLog,
    jobs: Resumable,
    workers: Resumable,
    budgets: Resumable,
    backoff: Backoff,
    /// The jobs watch is replaying the bucket into a fresh view (the counters sweep
    /// what it did not deliver once it is current).
    replaying: bool,
}

impl Term {
    fn new() -> Self {
        Self {
            view: None,
            planner: crate::plan::Planner::new(),
            starts: StartLog::default(),
            jobs: Resumable::new("leader_jobs"),
            workers: Resumable::new("leader_workers"),
            budgets: Resumable::new("leader_budgets"),
            backoff: Backoff::default(),
            replaying: false,
        }
    }

    fn broke(&mut self) {
        self.jobs.broke();
        self.workers.broke();
        self.budgets.broke();
    }
}

async fn sync_clock(service: &Service) {
    let key = format!("clock.{}", service.config.id);
    match service.clock.sync(&service.store.leader, &key).await {
        Ok(skew) if skew > Duration::from_secs(2) => {
            tracing::warn!(
                skew_ms = skew.as_millis() as u64,
                "local clock differs from the NATS server's; leases use the server's"
            )
        }
        Ok(_) => {}
        Err(e) => tracing::debug!(error = %e, "clock sync"),
    }
}

/// How long a leader renewal in flight when the shutdown fires may still take: with
/// NATS up it is answered in milliseconds (and the step-down after it needs its
/// revision); with NATS down it would wait out its request timeout.
const RENEW_GRACE_AT_STOP: Duration = Duration::from_millis(500);

/// Renews the leader lease; `None` if renewed, else how the term ends: `Lost` if the
/// renewal failed, `Shutdown` if the shutdown fired and the renewal was not answered
/// within [`RENEW_GRACE_AT_STOP`] after it (the lease then expires by itself, as a
/// crashed leader's does).
async fn renew_or_end(
    service: &Service,
    lease: &mut LeaderLease,
    shutdown: &CancellationToken,
) -> Option<LeadEnd> {
    let stopping = async {
        shutdown.cancelled().await;
        tokio::time::sleep(RENEW_GRACE_AT_STOP).await;
    };
    tokio::select! {
        renewed = leader::renew(&service.store.leader, &service.config.id, lease) => {
            (!renewed).then_some(LeadEnd::Lost)
        }
        _ = stopping => Some(LeadEnd::Shutdown),
    }
}

enum LeadEnd {
    Shutdown,
    Lost,
    /// Watches broke, NATS reconnected, or a watch was too slow: re-open them (resuming
    /// where they got to, see [`Term`]).
    Restart,
}

async fn lead(
    service: &Arc<Service>,
    lease: &mut LeaderLease,
    (stats, archiver, outcomes): (
        &crate::stats::StatsFeed,
        &crate::history::archive::Archiver,
        &crate::outcomes::Publisher,
    ),
    reconnects: &mut watch::Receiver<u64>,
    shutdown: &CancellationToken,
    term: &mut Term,
) -> LeadEnd {
    let store = &service.store;
    if term.view.is_none() {
        term.jobs.forget();
    }
    reconnects.borrow_and_update();
    // The set-up's requests wait out their timeouts while NATS is down: a shutdown
    // cuts them (nothing was planned on yet; the term is not used again).
    let usage = shutdown
        .run_until_cancelled(async {
            match usage_consumer(&store.js).await {
                Ok(u) => u.messages().await.map_err(async_nats::Error::from),
                Err(e) => Err(e),
            }
        })
        .await;
    let Some(usage) = usage else {
        return LeadEnd::Shutdown;
    };
    let mut usage = match usage {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "cannot bind the usage consumer; retrying");
            return LeadEnd::Restart;
        }
    };
    // Each opened as a resume from where the view got to when it can be, else a
    // replay of its bucket (`crate::watch`).
    let opened = shutdown
        .run_until_cancelled(async {
            (
                term.jobs.open(&store.jobs).await,
                term.workers.open(&store.workers).await,
                term.budgets.open(&store.budgets).await,
            )
        })
        .await;
    let Some(opened) = opened else {
        return LeadEnd::Shutdown;
    };
    let (jobs, workers, budgets) = match opened {
        (Ok(j), Ok(w), Ok(b)) => (j, w, b),
        (j, w, b) => {
            // A replay opened here is not applied: the next open must replay again.
            for (o, r) in [
                (&j, &mut term.jobs),
                (&w, &mut term.workers),
                (&b, &mut term.budgets),
            ] {
                if matches!(o, Ok(o) if matches!(o.start, Start::Replay { .. })) {
                    r.forget();
                }
            }
            let e = [j.err(), w.err(), b.err()]
                .into_iter()
                .flatten()
                .next()
                .map(|e| e.to_string());
            tracing::warn!(error = ?e, "cannot watch the buckets; retrying");
            return LeadEnd::Restart;
        }
    };
    let (mut jobs_w, mut workers_w, mut budgets_w) = (jobs.watch, workers.watch, budgets.watch);
    let mut view = match (term.view.take(), jobs.start) {
        (Some(view), Start::Resume) => view,
        (old, start) => {
            // The old view's counters feed goes before the new one starts.
            drop(old);
            let mut view = View {
                stats: Some(stats.lead()),
                outcomes: Some(
                    crate::outcomes::Recorder::new(service.routing.clone())
                        .publishing_to(outcomes.clone()),
                ),
                archive: Some(archiver.feed().await),
                handoff: Some(service.handoff.clone()),
                ..View::default()
            };
            // What earlier terms learned; the workers' profiles follow from the watch.
            view.learned =
                crate::outcomes::warm(&store.js, &service.routing, service.clock.now()).await;
            if let (Start::Replay { upto }, Some(feed)) = (start, &view.stats) {
                feed.begin_replay(upto);
            }
            term.replaying = true;
            term.planner = crate::plan::Planner::new();
            term.starts = StartLog::default();
            view
        }
    };
    if let Some(feed) = &view.stats {
        feed.position(term.jobs.last());
    }
    // A bucket replayed is applied from nothing.
    if matches!(workers.start, Start::Replay { .. }) {
        view.workers.clear();
    }
    if matches!(budgets.start, Start::Replay { .. }) {
        view.budgets.clear();
    }
    service.handoff.open(term.jobs.last());
    let mut inflight = InFlight::default();
    let end = follow(
        service,
        lease,
        &mut usage,
        (&mut jobs_w, &mut workers_w, &mut budgets_w),
        (jobs.current, workers.current, budgets.current),
        (&mut view, &mut inflight),
        reconnects,
        shutdown,
        term,
    )
    .await;
    // Every dispatch write is answered, and the grants of those that landed sent,
    // before the view is kept or dropped: a grant not sent costs its job a start
    // deadline. Each is bounded by the request timeout, and they run at once. Only
    // while the lease holds: a leader that was paused past it (a zombie) must not
    // send them, since the new leader may have leased those jobs again (the workers
    // would run them a second time, fenced). Their start deadlines send them back.
    if lease.valid() {
        while !inflight.is_empty() {
            let written = inflight.next().await;
            dispatched(service, &mut view, written, &mut inflight, false).await;
        }
    } else if !inflight.is_empty() {
        tracing::warn!(
            writes = inflight.len(),
            "leader lease lapsed with dispatch writes unanswered; their grants are not sent"
        );
    }
    service.handoff.close();
    term.view = Some(view);
    end
}

/// The three watches the leader's view follows.
type Watches<'a> = (
    &'a mut async_nats::jetstream::kv::Watch,
    &'a mut async_nats::jetstream::kv::Watch,
    &'a mut async_nats::jetstream::kv::Watch,
);

/// The leader's loop over its open watches: applies what they deliver to the view,
/// plans when something changed and the view is current, renews the lease, reaps.
#[allow(clippy::too_many_arguments)]
async fn follow(
    service: &Arc<Service>,
    lease: &mut LeaderLease,
    usage: &mut consumer::pull::Stream,
    (jobs_w, workers_w, budgets_w): Watches<'_>,
    // Whether each watch has delivered what its bucket held when it was opened.
    (mut jobs_current, mut workers_current, mut budgets_current): (bool, bool, bool),
    (view, inflight): (&mut View, &mut InFlight),
    reconnects: &mut watch::Receiver<u64>,
    shutdown: &CancellationToken,
    term: &mut Term,
) -> LeadEnd {
    let cfg = service.config.clone();
    let mut outcome_tick = tokio::time::interval(crate::outcomes::FLUSH_PERIOD);
    outcome_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut renew = tokio::time::interval(cfg.leader_ttl / 3);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reap = tokio::time::interval(cfg.reaper_period);
    reap.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut gauge_tick = tokio::time::interval(GAUGE_PERIOD);
    gauge_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut gauges = ViewGauges::default();
    // The watches must deliver what their buckets held by then (`crate::watch`).
    let replay_deadline = tokio::time::Instant::now() + cfg.watch_replay_timeout;
    let mut current = false;
    // A pass is due when something changed (`dirty`) and not before `next_pass`.
    let mut dirty = false;
    let mut next_pass = tokio::time::Instant::now();
    loop {
        // The view is current once every watch delivered what its bucket held: only
        // then may it be planned on (a view missing workers would find jobs
        // unplaceable), counted or reaped.
        if !current && jobs_current && workers_current && budgets_current {
            current = true;
            dirty = true;
            term.backoff.reset();
            if std::mem::take(&mut term.replaying) {
                if let Some(feed) = &view.stats {
                    feed.end_replay();
                }
                // The replay's transient buffers are freed; give the pages back.
                crate::memory::release_freed();
            }
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return LeadEnd::Shutdown,
            _ = renew.tick() => {
                if let Some(end) = renew_or_end(service, lease, shutdown).await {
                    return end;
                }
                service.lane.extend(lease.valid_until());
                if shutdown.run_until_cancelled(sync_clock(service)).await.is_none() {
                    return LeadEnd::Shutdown;
                }
            }
            _ = reconnects.changed() => return LeadEnd::Restart,
            _ = tokio::time::sleep_until(replay_deadline), if !current => {
                tracing::warn!(
                    jobs = jobs_current,
                    workers = workers_current,
                    budgets = budgets_current,
                    timeout_ms = cfg.watch_replay_timeout.as_millis() as u64,
                    "a watch did not deliver its bucket in time (current = true for those that did); re-opening"
                );
                let mut progressed = false;
                for (done, r) in [
                    (jobs_current, &mut term.jobs),
                    (workers_current, &mut term.workers),
                    (budgets_current, &mut term.budgets),
                ] {
                    if !done {
                        progressed |= r.timed_out();
                    }
                }
                if progressed {
                    // Re-opens are spaced by the timeout, and each resumes further on.
                    term.backoff.reset();
                }
                return LeadEnd::Restart;
            }
            // Before the watches: under load they are always ready and would starve it.
            _ = due(next_pass), if dirty && current => {
                if !lease.valid() {
                    return LeadEnd::Lost;
                }
                // In this order: every slot the lane handed out is then either held
                // or in the view (see `DirectLane::suspend`).
                view.lane_held = service.lane.suspend();
                for (rec, rev) in service.lane.drain() {
                    view.offer_job(rec, rev);
                }
                let (planning, rooms) = apply_plan(
                    service,
                    &mut term.planner,
                    (view, inflight),
                    &mut term.starts,
                )
                .await;
                service.lane.open(lease.valid_until(), rooms, blocked_products(view));
                dirty = false;
                next_pass = tokio::time::Instant::now() + pass_spacing(planning);
            }
            _ = gauge_tick.tick() => {
                if current {
                    if let Some(stats) = &view.stats {
                        stats.synced();
                    }
                    let walk = std::time::Instant::now();
                    gauges.publish(&counts(
                        view,
                        &service.routing,
                        cfg.worker_timeout,
                        service.clock.now(),
                    ));
                    // The walk visits every live job: under a deep backlog it is spaced
                    // out so that it takes at most 1 % of the leader's time (4 % at
                    // 150,000 waiting every 500 ms, profiled); scrapes are seconds apart.
                    gauge_tick.reset_after(GAUGE_PERIOD.max(walk.elapsed() * 100));
                }
            }
            _ = outcome_tick.tick() => {
                if let Some(o) = view.outcomes.as_mut().filter(|o| o.pending() > 0) {
                    o.flush();
                }
            }
            entry = workers_w.next() => {
                let Some(Ok(e)) = entry else { return LeadEnd::Restart };
                workers_current |= e.seen_current || e.delta == 0;
                term.workers.seen(e.revision);
                view.apply_worker(&e.key, e.operation, &e.value);
                dirty = true;
            }
            entry = budgets_w.next() => {
                let Some(Ok(e)) = entry else { return LeadEnd::Restart };
                budgets_current |= e.seen_current || e.delta == 0;
                term.budgets.seen(e.revision);
                view.apply_budget(&e.key, e.operation, &e.value);
                dirty = true;
            }
            msg = usage.next() => {
                let Some(Ok(msg)) = msg else { return LeadEnd::Restart };
                if !account(service, &msg, shutdown).await {
                    return LeadEnd::Restart;
                }
            }
            _ = reap.tick() => {
                if current && lease.valid() {
                    crate::history::resolve_references(&service.store, view).await;
                    reap_expired(service, view).await;
                    fire_schedules(service).await;
                    term.starts.prune(service.clock.now());
                    dirty = true;
                }
            }
            written = inflight.next(), if !inflight.is_empty() => {
                if !lease.valid() {
                    return LeadEnd::Lost;
                }
                dispatched(service, view, written, inflight, true).await;
                dirty = true;
            }
            // Last: under a flood of submissions the jobs watch is always ready, and
            // first in this biased select it starved every arm below it. Heartbeats
            // then stopped reaching the view, every worker looked gone after
            // `worker_timeout`, the pass wrote the whole backlog `blocked`
            // ("unplaceable") and back once they reappeared, again and again (50,000
            // jobs at once: 8 of 8 workers gone, ~200,000 unplaceable writes, 68
            // record writes per finished job, under 1 job/s). The other arms are rarely
            // ready and cheap.
            entry = jobs_w.next() => {
                let Some(Ok(e)) = entry else { return LeadEnd::Restart };
                jobs_current |= e.seen_current || e.delta == 0;
                term.jobs.seen(e.revision);
                view.apply_job(&e.key, e.revision, e.operation, &e.value);
                // Take what is already buffered before deciding, a bounded amount at a
                // time so the other arms get their turn.
                for _ in 0..WATCH_ENTRIES_PER_TURN {
                    let Some(Some(Ok(e))) = futures::FutureExt::now_or_never(jobs_w.next()) else {
                        break;
                    };
                    jobs_current |= e.seen_current || e.delta == 0;
                    term.jobs.seen(e.revision);
                    view.apply_job(&e.key, e.revision, e.operation, &e.value);
                }
                if let Some(feed) = &view.stats {
                    feed.position(term.jobs.last());
                }
                service.handoff.seen(term.jobs.last());
                if let Some(archive) = &mut view.archive {
                    archive.seen(term.jobs.last());
                    if archive.overflowed() {
                        // Built again from a replay, which hands the archiver every
                        // finished record above its stored position once more.
                        term.jobs.forget();
                        return LeadEnd::Restart;
                    }
                }
                dirty = true;
            }
        }
    }
}

/// Ready at `at`, and at once when `at` has passed. Not a bare `sleep_until`: the timer
/// wheel rounds every deadline up to the next millisecond, so even a deadline in the
/// past can wait for the timer driver's next turn, holding a pass (and the dispatch of
/// every job waiting for it) up to a millisecond. The same wait in the worker cost each
/// job ~1 ms; here the load suite's figures did not move beyond noise, but nothing on a
/// job's path should wait for a timer that is already due.
async fn due(at: tokio::time::Instant) {
    if tokio::time::Instant::now() < at {
        tokio::time::sleep_until(at).await;
    }
}

/// Job watch entries applied in one turn of the leader's loop at most.
const WATCH_ENTRIES_PER_TURN: usize = 4096;

/// How often the leader's gauges (jobs by state, queue depth, slots) are recomputed:
/// a walk over every live job, so not on every pass; scrapes are seconds apart.
const GAUGE_PERIOD: Duration = Duration::from_millis(500);

/// The pause after a plan pass before the next one: three times what deciding took,
/// so planning takes at most a quarter of the leader's time, while changes arriving
/// meanwhile are batched into the next pass. A pass costs what changed since the last
/// one (see `plan::Planner`), so the pause is microseconds at any backlog depth, except
/// after a full recomputation (workers or budgets changed); it never exceeds 50 ms.
fn pass_spacing(pass: Duration) -> Duration {
    (pass * 3).min(Duration::from_millis(50))
}

/// Products whose budget blocks new work, for the direct lane.
fn blocked_products(view: &View) -> HashSet<String> {
    view.budgets
        .iter()
        .filter(|(_, b)| b.blocked().is_some())
        .map(|(product, _)| product.clone())
        .collect()
}

/// Re-reads one job into the view after a conflicting write: the leader's copy, which
/// holds the write that won (a replica's could be older than the view itself).
async fn refresh(service: &Service, view: &mut View, id: &JobId) {
    match service.store.load_job_latest(id).await {
        Ok(Some((rec, rev))) => view.set_job(rec, rev),
        Ok(None) => view.remove_job(id),
        Err(e) => tracing::debug!(job = %id, error = %e, "refresh failed"),
    }
}

/// Writes allowed in flight at once when applying a plan. Each decision touches a
/// different job, so the writes are independent; results are applied in order.
const PLAN_WRITES_IN_FLIGHT: usize = 64;
/// Decisions prepared (records copied out of the view) at a time.
const PLAN_CHUNK: usize = 512;

/// Decides and writes one pass: each dispatch is a write that leases the job to the
/// chosen worker, started here and answered in [`dispatched`] (see [`InFlight`]); the
/// other decisions are written before this returns. Returns the time spent deciding
/// (CPU, not I/O) and the room the pass left.
async fn apply_plan(
    service: &Arc<Service>,
    planner: &mut crate::plan::Planner,
    (view, inflight): (&mut View, &mut InFlight),
    starts: &mut StartLog,
) -> (Duration, Vec<crate::lane::Room>) {
    use futures::StreamExt as _;
    let now = service.clock.now();
    let planning = std::time::Instant::now();
    let crate::plan::Pass { decisions, rooms } = planner.pass(view, &policy(service), starts, now);
    let planning = planning.elapsed();
    // In chunks, so a pass that decides for 100,000 jobs (all unplaceable, say) holds
    // a chunk's worth of record copies at a time, not one per job.
    let mut decisions = decisions.into_iter().peekable();
    while decisions.peek().is_some() {
        let mut prepared = Vec::new();
        for d in decisions.by_ref().take(PLAN_CHUNK) {
            let id = d.job();
            if let Decision::Preempt {
                victim,
                epoch,
                for_job,
            } = d
            {
                preempt(service, view, victim, epoch, for_job, now).await;
                continue;
            }
            let Some((mut rec, rev)) = view.jobs.get(&id).cloned() else {
                continue;
            };
            let applied = match &d {
                Decision::Dispatch(_, score, worker) => {
                    let cfg = &service.config;
                    if fsm::lease_at_dispatch(
                        &mut rec,
                        worker,
                        cfg.lease_ttl,
                        cfg.claim_timeout,
                        now,
                    )
                    .is_err()
                    {
                        continue;
                    }
                    rec.score = Some(score.clone());
                    rec.updated_at = now;
                    // Counted at the decision: a write that fails only makes the limit
                    // stricter for a minute.
                    for (k, _) in crate::plan::limit_keys(&rec.spec, &cfg.limits) {
                        starts.record(k, now);
                    }
                    while inflight.len() >= crate::dispatch::WRITES_IN_FLIGHT {
                        let written = inflight.next().await;
                        dispatched(service, view, written, inflight, true).await;
                    }
                    // The view first: the next pass must see the slot taken.
                    view.set_job(rec.clone(), rev);
                    inflight.start(service, rec, rev);
                    continue;
                }
                Decision::Block(_, reason) => fsm::block(&mut rec, reason),
                Decision::Unblock(_) if rec.state == JobState::Blocked => {
                    rec.state = JobState::Pending;
                    rec.reason = None;
                    true
                }
                Decision::Cancel(_, reason) => fsm::cancel(&mut rec, reason, now).is_ok(),
                Decision::FinishParent(_, failed) => fsm::finish_parent(&mut rec, *failed),
                _ => false,
            };
            if applied {
                rec.updated_at = now;
                prepared.push((d, rec, rev));
            }
        }
        let store = &service.store;
        let mut results =
            futures::stream::iter(prepared.into_iter().map(|(d, rec, rev)| async move {
                let written = store.update_job(&rec, rev).await;
                (d, rec, written)
            }))
            .buffered(PLAN_WRITES_IN_FLIGHT);
        while let Some((d, rec, written)) = results.next().await {
            let id = d.job();
            match written {
                Ok(new_rev) => {
                    match &d {
                        Decision::Block(_, reason) if reason.starts_with("unplaceable") => {
                            service
                                .events
                                .job(EventKind::JobUnplaceable, &rec, reason.clone());
                            metrics::unplaceable(&rec.spec.queue);
                        }
                        Decision::Cancel(_, reason) => {
                            service
                                .events
                                .job(EventKind::JobCancelled, &rec, reason.clone());
                            metrics::finished(&rec.spec.queue, JobState::Cancelled);
                        }
                        Decision::FinishParent(..) => {
                            let kind = if rec.state == JobState::Succeeded {
                                EventKind::JobSucceeded
                            } else {
                                EventKind::JobDead
                            };
                            service
                                .events
                                .job(kind, &rec, rec.reason.clone().unwrap_or_default());
                            metrics::finished(&rec.spec.queue, rec.state);
                        }
                        _ => {}
                    }
                    view.set_job(rec, new_rev);
                }
                Err(StoreError::Conflict(_)) => refresh(service, view, &id).await,
                // The view catches up from the watch; the job is decided again next pass.
                Err(e) => tracing::warn!(job = %id, error = %e, "scheduler write failed"),
            }
        }
    }
    (planning, rooms)
}

/// Takes in the answer to a dispatch write, and every other already there, then sends
/// the grants of those that landed (one message per worker). A conflict reads the job
/// again (the write that won); another failure too when `reread` (not while the
/// leader stops: a read would wait out the same outage), else the record the view took
/// in for it stays until its start deadline, when the reaper reads the store.
async fn dispatched(
    service: &Service,
    view: &mut View,
    first: crate::dispatch::Written,
    inflight: &mut InFlight,
    reread: bool,
) {
    let mut grants = crate::dispatch::Grants::default();
    let mut next = Some(first);
    while let Some((rec, written)) = next.take() {
        match written {
            Ok(new_rev) => {
                if let Some(g) = fsm::grant(&rec) {
                    grants.add(g);
                }
                service.events.job(EventKind::JobDispatched, &rec, "");
                metrics::dispatched(&rec.spec.queue, metrics::DispatchedBy::Pass);
                // Not `set_job`: the watch may have delivered this write, or a later one.
                view.offer_job(rec, new_rev);
            }
            Err(StoreError::Conflict(_)) => refresh(service, view, &rec.id).await,
            Err(e) => {
                tracing::warn!(job = %rec.id, error = %e, "dispatch write failed");
                if reread {
                    refresh(service, view, &rec.id).await;
                }
            }
        }
        next = inflight.ready();
    }
    grants.send(&service.client).await;
}

async fn preempt(
    service: &Service,
    view: &mut View,
    victim: JobId,
    epoch: u64,
    for_job: JobId,
    now: Timestamp,
) {
    let result = service
        .store
        .modify_job(&victim, now, |rec| {
            let r = fsm::preempt(rec, epoch, &for_job, now);
            let changed = r.is_some();
            Ok((r, changed))
        })
        .await;
    match result {
        Ok((Some(revocation), rec, rev)) => {
            let holder = rec
                .history
                .iter()
                .rev()
                .find(|a| a.epoch == epoch)
                .map(|a| a.worker.clone());
            metrics::revoked(revocation.reason);
            service.events.job(
                EventKind::JobRevoked,
                &rec,
                format!("preempted by {for_job}"),
            );
            if let Some(w) = holder {
                service.push_revocation(&w, revocation).await;
            }
            view.set_job(rec, rev);
        }
        Ok((None, rec, rev)) => view.set_job(rec, rev),
        Err(e) => tracing::debug!(job = %victim, error = %e, "preemption"),
    }
}

/// Expired leases → pending/dead (revoking the holder); leases granted at dispatch whose
/// start nobody confirmed by the deadline → pending (revoking the holder); unclaimed
/// notices → pending; silent workers → gone.
async fn reap_expired(service: &Service, view: &mut View) {
    let cfg = &service.config;
    let now = service.clock.now();
    let expired: Vec<JobId> = view
        .jobs
        .values()
        .filter(|(r, _)| match (r.state, &r.lease, r.dispatched_at) {
            (JobState::Running | JobState::Dispatched, Some(l), _) => fsm::lease_expired(l, now),
            (JobState::Dispatched, _, Some(at)) => at.plus(cfg.claim_timeout) <= now,
            _ => false,
        })
        .map(|(r, _)| r.id)
        .collect();
    for id in expired {
        let result = service
            .store
            .modify_job(&id, now, |rec| {
                let holder = rec.lease.as_ref().map(|l| l.worker.clone());
                if let Some(rev) = fsm::expire_lease(rec, now) {
                    return Ok((Some((rev, holder, true)), true));
                }
                if let Some(rev) = fsm::expire_start(rec, now) {
                    return Ok((Some((rev, holder, false)), true));
                }
                Ok((None, fsm::expire_claim(rec, cfg.claim_timeout, now)))
            })
            .await;
        match result {
            Ok((revoked, rec, rev)) => {
                if let Some((revocation, Some(worker), started)) = revoked {
                    metrics::revoked(revocation.reason);
                    if rec.state == JobState::Dead {
                        metrics::finished(&rec.spec.queue, JobState::Dead);
                    }
                    let what = if started {
                        format!("worker {worker} stopped renewing")
                    } else {
                        format!("worker {worker} did not start it by its start deadline")
                    };
                    service.events.job(EventKind::JobLeaseExpired, &rec, what);
                    if rec.state == JobState::Dead {
                        service.events.job(
                            EventKind::JobDead,
                            &rec,
                            rec.reason.clone().unwrap_or_default(),
                        );
                    }
                    service.push_revocation(&worker, revocation).await;
                    view.suspects.insert(worker, now);
                }
                view.set_job(rec, rev);
            }
            Err(e) => tracing::debug!(job = %id, error = %e, "reap"),
        }
    }
    // Suspects that showed life (or went) since.
    let suspects = std::mem::take(&mut view.suspects);
    view.suspects = suspects
        .into_iter()
        .filter(|(w, since)| {
            view.workers
                .get(w)
                .is_some_and(|r| r.last_heartbeat <= *since)
        })
        .collect();
    let gone: Vec<WorkerRecord> = view
        .workers
        .values()
        .filter(|w| w.state != WorkerState::Gone && !worker_live(w, cfg.worker_timeout, now))
        .cloned()
        .collect();
    for mut w in gone {
        w.state = WorkerState::Gone;
        w.free_slots = 0;
        if service
            .store
            .workers
            .put(w.id.as_str(), encode(&w))
            .await
            .is_ok()
        {
            service.events.emit(
                EventKind::WorkerGone,
                Level::Warn,
                None,
                Some(&w.id),
                "no heartbeat",
            );
            metrics::worker_lost();
            view.workers.insert(w.id.clone(), w);
        }
    }
}

/// The durable consumer the leader adds usage from. One message in flight at a time,
/// so entries are added in stream order and a budget's `last_seq` can skip repeats.
async fn usage_consumer(
    js: &jetstream::Context,
) -> Result<consumer::PullConsumer, async_nats::Error> {
    let stream = js.get_stream(gf_schemas::names::STREAM_USAGE).await?;
    Ok(stream
        .get_or_create_consumer(
            "gf_accountant",
            consumer::pull::Config {
                durable_name: Some("gf_accountant".into()),
                ack_policy: consumer::AckPolicy::Explicit,
                max_ack_pending: 1,
                ack_wait: Duration::from_secs(30),
                ..Default::default()
            },
        )
        .await?)
}

/// Adds one usage entry to its product's budget (creating the budget if needed),
/// retrying until the write lands; then acks. `false` if it gave up (leadership or
/// connection trouble): the entry stays unacked and is redelivered.
async fn account(
    service: &Service,
    msg: &jetstream::Message,
    shutdown: &CancellationToken,
) -> bool {
    let Ok(info) = msg.info() else { return false };
    let seq = info.stream_sequence;
    let entry: UsageEntry = match serde_json::from_slice(&msg.payload) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, seq, "unreadable usage entry skipped");
            let _ = msg.ack().await;
            return true;
        }
    };
    for _ in 0..50 {
        if shutdown.is_cancelled() {
            return false;
        }
        // Stamped inside the update, so a budget created by this entry never has a
        // history point older than its period start.
        let result = service
            .update_budget(&entry.product, |b| {
                Ok(b.add_entry(
                    seq,
                    entry.cost,
                    entry.tokens,
                    entry.worker_secs,
                    service.clock.now(),
                ))
            })
            .await;
        match result {
            Ok(b) => {
                metrics::budget(&b);
                let _ = msg.ack().await;
                return true;
            }
            Err(e) => {
                tracing::debug!(error = %e, "budget update; retrying");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    false
}

/// Submits a job for every schedule whose latest tick has not fired yet. At most once
/// per tick: the submission's idempotency key names the schedule and the tick.
async fn fire_schedules(service: &Service) {
    let Ok(all) = crate::store::read_all(&service.store.schedules).await else {
        return;
    };
    let now = service.clock.now();
    for (name, value) in all {
        let Ok(mut sched) = serde_json::from_slice::<gf_schemas::Schedule>(&value) else {
            continue;
        };
        if sched.paused {
            continue;
        }
        let Some(tick) = crate::cron::latest_tick(&sched.cron, sched.last_tick, now) else {
            continue;
        };
        let mut spec = sched.spec.clone();
        spec.idempotency_key = Some(format!("schedule:{name}:{}", tick.unix_millis()));
        spec.labels.insert("schedule".into(), name.clone());
        spec.labels.insert("tick".into(), tick.to_string());
        let body = encode(&spec);
        match service.submit(&body).await {
            Ok(r) => {
                tracing::info!(schedule = %name, job = %r.job_id, %tick, duplicate = r.duplicate, "schedule fired")
            }
            Err(e) => {
                tracing::warn!(schedule = %name, error = %e, "schedule submission failed");
                continue;
            }
        }
        sched.last_tick = Some(tick);
        if let Err(e) = service.store.schedules.put(&name, encode(&sched)).await {
            tracing::debug!(schedule = %name, error = %e, "schedule tick not recorded; the idempotency key covers a repeat");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::FutureExt;
    use tokio::time::Instant;

    use super::due;

    /// Queue and route depth count every waiting job once, whatever their shapes;
    /// other states only count by state.
    #[test]
    fn counts_depth_per_queue_and_route() {
        use gf_schemas::{JobId, JobRecord, JobSpec, JobState, Timestamp};
        let routing = gf_schemas::names::Routing::default();
        let mut view = super::View::default();
        let job = |queue: &str, os: Option<&str>, state: JobState| {
            let mut s = JobSpec::command(["true"]);
            s.queue = queue.into();
            if let Some(os) = os {
                s.requires.insert("os".into(), os.into());
            }
            let mut r = JobRecord::new(JobId::new(), s, Timestamp::from_unix_millis(0));
            r.state = state;
            r
        };
        for (q, os, state, n) in [
            ("default", None, JobState::Pending, 3),
            ("default", Some("linux"), JobState::Blocked, 2),
            ("batch", None, JobState::Pending, 1),
            ("batch", None, JobState::Running, 4),
        ] {
            for _ in 0..n {
                view.set_job(job(q, os, state), 1);
            }
        }
        let c = super::counts(
            &view,
            &routing,
            Duration::from_secs(10),
            Timestamp::from_unix_millis(0),
        );
        assert_eq!(c.jobs[&JobState::Pending], 4);
        assert_eq!(c.jobs[&JobState::Running], 4);
        assert_eq!(c.queue_depth["default"], 5);
        assert_eq!(c.queue_depth["batch"], 1);
        let label = |q: &str, os: Option<&str>| {
            routing
                .route_of(&job(q, os, JobState::Pending).spec)
                .label()
        };
        assert_eq!(
            c.route_depth[&label("default", None)]
                + c.route_depth[&label("default", Some("linux"))],
            5
        );
        assert_eq!(c.route_depth.values().sum::<u64>(), 6);
    }

    /// A pass that is due runs on the first poll, also off a millisecond boundary (where
    /// the timer wheel would round a deadline of "now" up to the next millisecond); one
    /// that is not due waits for its time.
    #[tokio::test(start_paused = true)]
    async fn a_due_pass_does_not_wait_for_the_timer() {
        tokio::time::advance(Duration::from_micros(500)).await;
        let now = Instant::now();
        assert!(due(now).now_or_never().is_some(), "due now");
        assert!(
            due(now - Duration::from_micros(100))
                .now_or_never()
                .is_some(),
            "overdue"
        );
        let later = now + Duration::from_millis(5);
        assert!(due(later).now_or_never().is_none(), "not yet due");
        due(later).await;
        assert!(Instant::now() >= later);
    }
}
