//! The scheduler and reaper, run by the one leader among the coordinators.
//!
//! The leader owns an in-memory view of every non-terminal job and every worker, fed
//! by KV watches (a snapshot, then every change). From it, it decides — by pure
//! functions over the view — which pending jobs to dispatch (no more than matching
//! free capacity plus a small slack, most urgent first), which jobs no live worker
//! could run, and which leases or claims expired. Each decision is applied with a
//! revision-checked write; a conflict only means the view was behind, so the job is
//! re-read and decided again on the next pass.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt;
use gf_schemas::rpc::DispatchNotice;
use gf_schemas::{
    EventKind, JobId, JobRecord, JobState, Level, Timestamp, WorkerId, WorkerRecord, WorkerState,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::error::StoreError;
use crate::fsm;
use crate::leader::{self, LeaderLease};
use crate::metrics::{self, ViewCounts, ViewGauges};
use crate::service::Service;
use crate::store::encode;

/// Shared, read-only status for `/health`.
#[derive(Default)]
pub struct LeaderStatus {
    pub is_leader: AtomicBool,
    pub leader: Mutex<Option<String>>,
}

/// What the leader knows. Jobs in terminal states are dropped.
#[derive(Default)]
pub struct View {
    pub jobs: HashMap<JobId, (JobRecord, u64)>,
    pub workers: HashMap<WorkerId, WorkerRecord>,
}

impl View {
    pub fn apply_job(&mut self, key: &str, rev: u64, op: kv::Operation, value: &[u8]) {
        let Ok(id) = key.parse::<JobId>() else { return };
        if op != kv::Operation::Put {
            self.jobs.remove(&id);
            return;
        }
        if self.jobs.get(&id).is_some_and(|(_, r)| *r >= rev) {
            return;
        }
        match serde_json::from_slice::<JobRecord>(value) {
            Ok(rec) if rec.state.is_terminal() => {
                self.jobs.remove(&id);
            }
            Ok(rec) => {
                self.jobs.insert(id, (rec, rev));
            }
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
            self.workers.insert(id, rec);
        }
    }

    pub fn set_job(&mut self, rec: JobRecord, rev: u64) {
        if rec.state.is_terminal() {
            self.jobs.remove(&rec.id);
        } else {
            self.jobs.insert(rec.id, (rec, rev));
        }
    }
}

/// A worker is live while its last heartbeat is younger than `timeout` (server time).
pub fn worker_live(w: &WorkerRecord, timeout: Duration, now: Timestamp) -> bool {
    w.state != WorkerState::Gone && w.last_heartbeat.plus(timeout) > now
}

/// Why no live worker can run `spec`, for the `unplaceable:` reason.
pub fn unplaceable_reason<'a>(
    spec: &gf_schemas::JobSpec,
    live: impl Iterator<Item = &'a WorkerRecord>,
) -> String {
    let mut missing: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut draining = 0;
    for w in live {
        if w.state == WorkerState::Draining && w.capabilities.unmet(spec).is_none() {
            draining += 1;
            continue;
        }
        if let Some(m) = w.capabilities.unmet(spec) {
            missing.entry(m).or_default().push(w.id.to_string());
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

/// One dispatch decision.
#[derive(Debug, PartialEq)]
pub enum Decision {
    Dispatch(JobId),
    Unplaceable(JobId, String),
    /// Blocked as unplaceable, but a worker that fits is live again.
    Unblock(JobId),
}

impl Decision {
    pub fn job(&self) -> JobId {
        match self {
            Decision::Dispatch(id) | Decision::Unplaceable(id, _) | Decision::Unblock(id) => *id,
        }
    }

    /// Applies the decision to the job's record; `false` when it no longer fits.
    pub fn apply(&self, rec: &mut JobRecord, now: Timestamp) -> bool {
        match self {
            Decision::Dispatch(_) => fsm::dispatch(rec, now).is_ok(),
            Decision::Unplaceable(_, reason) => fsm::block(rec, reason),
            Decision::Unblock(_) if rec.state == JobState::Blocked => {
                rec.state = JobState::Pending;
                rec.reason = None;
                true
            }
            Decision::Unblock(_) => false,
        }
    }
}

/// Decides, from the view alone, what to dispatch now: the most urgent pending jobs
/// (priority, then age), each only if some live active worker that can run it has a
/// free slot (slots minus running minus already-dispatched, plus `slack`).
pub fn plan(view: &View, worker_timeout: Duration, slack: u32, now: Timestamp) -> Vec<Decision> {
    let live: Vec<&WorkerRecord> = view
        .workers
        .values()
        .filter(|w| worker_live(w, worker_timeout, now))
        .collect();
    let active: Vec<&WorkerRecord> = live
        .iter()
        .copied()
        .filter(|w| w.state == WorkerState::Active)
        .collect();
    let mut free: HashMap<&WorkerId, i64> = active
        .iter()
        .map(|w| (&w.id, i64::from(w.slots + slack)))
        .collect();
    for (rec, _) in view.jobs.values() {
        if let (JobState::Running, Some(l)) = (rec.state, &rec.lease) {
            if let Some(f) = free.get_mut(&l.worker) {
                *f -= 1;
            }
        }
    }
    let pick =
        |free: &HashMap<&WorkerId, i64>, spec: &gf_schemas::JobSpec| -> Option<(WorkerId, i64)> {
            active
                .iter()
                .filter(|w| w.capabilities.unmet(spec).is_none())
                .map(|w| (w.id.clone(), free[&w.id]))
                .max_by_key(|(_, f)| *f)
        };
    // Notices already out take capacity first.
    for (rec, _) in view
        .jobs
        .values()
        .filter(|(r, _)| r.state == JobState::Dispatched)
    {
        if let Some((w, _)) = pick(&free, &rec.spec) {
            *free.get_mut(&w).expect("active") -= 1;
        }
    }
    let mut candidates: Vec<&JobRecord> = view
        .jobs
        .values()
        .map(|(r, _)| r)
        .filter(|r| match r.state {
            JobState::Pending => r.retry_at.is_none_or(|t| t <= now),
            JobState::Blocked => r
                .reason
                .as_deref()
                .is_some_and(|s| s.starts_with("unplaceable")),
            _ => false,
        })
        .collect();
    candidates.sort_by_key(|r| (r.spec.priority, r.submitted_at, r.id));
    let mut out = Vec::new();
    for rec in candidates {
        match pick(&free, &rec.spec) {
            None => {
                let reason = unplaceable_reason(&rec.spec, live.iter().copied());
                if rec.state != JobState::Blocked || rec.reason.as_deref() != Some(reason.as_str())
                {
                    out.push(Decision::Unplaceable(rec.id, reason));
                }
            }
            Some((w, f)) if f > 0 => {
                *free.get_mut(&w).expect("active") -= 1;
                out.push(Decision::Dispatch(rec.id));
            }
            Some(_) if rec.state == JobState::Blocked => out.push(Decision::Unblock(rec.id)),
            Some(_) => {}
        }
    }
    out
}

/// What the leader's gauges report, derived from the view.
pub fn counts(
    view: &View,
    routing: &gf_schemas::names::Routing,
    worker_timeout: Duration,
    now: Timestamp,
) -> ViewCounts {
    let mut c = ViewCounts {
        jobs: BTreeMap::new(),
        queue_depth: BTreeMap::new(),
        route_depth: BTreeMap::new(),
        workers: BTreeMap::new(),
        slots_total: 0,
        slots_free: 0,
    };
    for (rec, _) in view.jobs.values() {
        *c.jobs.entry(rec.state).or_default() += 1;
        if matches!(rec.state, JobState::Pending | JobState::Blocked) {
            *c.queue_depth.entry(rec.spec.queue.clone()).or_default() += 1;
            *c.route_depth
                .entry(routing.route_of(&rec.spec).label())
                .or_default() += 1;
        }
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

/// Runs for the life of the coordinator: waits to become leader, leads until
/// leadership is lost or `shutdown`, and steps down on shutdown.
pub async fn run(
    service: Arc<Service>,
    status: Arc<LeaderStatus>,
    mut reconnects: watch::Receiver<u64>,
    shutdown: CancellationToken,
) {
    let cfg = service.config.clone();
    let me = cfg.id.clone();
    let mut tick = tokio::time::interval(cfg.leader_ttl / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        sync_clock(&service).await;
        *status.leader.lock().expect("status") = leader::current(&service.store.leader)
            .await
            .map(|(v, _)| v.holder);
        let Some(mut lease) =
            leader::try_acquire(&service.store.leader, &me, cfg.leader_ttl, &service.clock).await
        else {
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
        loop {
            let end = lead(&service, &mut lease, &mut reconnects, &shutdown).await;
            match end {
                LeadEnd::Restart if lease.valid() => {
                    tracing::info!("rebuilding scheduler view");
                    continue;
                }
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

enum LeadEnd {
    Shutdown,
    Lost,
    /// Watches broke or NATS reconnected: rebuild the view.
    Restart,
}

async fn lead(
    service: &Arc<Service>,
    lease: &mut LeaderLease,
    reconnects: &mut watch::Receiver<u64>,
    shutdown: &CancellationToken,
) -> LeadEnd {
    let cfg = service.config.clone();
    let me = cfg.id.clone();
    let (mut jobs_w, mut workers_w) = match (
        service.store.jobs.watch_with_history(">").await,
        service.store.workers.watch_with_history(">").await,
    ) {
        (Ok(j), Ok(w)) => (j, w),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %e, "cannot watch buckets");
            tokio::time::sleep(Duration::from_millis(500)).await;
            return LeadEnd::Restart;
        }
    };
    reconnects.borrow_and_update();
    let mut view = View::default();
    let mut gauges = ViewGauges::default();
    let mut jobs_current = false;
    let mut renew = tokio::time::interval(cfg.leader_ttl / 3);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reap = tokio::time::interval(cfg.reaper_period);
    reap.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut dirty = false;
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return LeadEnd::Shutdown,
            _ = renew.tick() => {
                if !leader::renew(&service.store.leader, &me, lease).await {
                    return LeadEnd::Lost;
                }
                sync_clock(service).await;
            }
            _ = reconnects.changed() => return LeadEnd::Restart,
            entry = jobs_w.next() => {
                let Some(Ok(e)) = entry else { return LeadEnd::Restart };
                jobs_current |= e.seen_current || e.delta == 0;
                view.apply_job(&e.key, e.revision, e.operation, &e.value);
                // Take everything already buffered before deciding.
                while let Some(Some(Ok(e))) = futures::FutureExt::now_or_never(jobs_w.next()) {
                    jobs_current |= e.seen_current || e.delta == 0;
                    view.apply_job(&e.key, e.revision, e.operation, &e.value);
                }
                dirty = jobs_current;
            }
            entry = workers_w.next() => {
                let Some(Ok(e)) = entry else { return LeadEnd::Restart };
                view.apply_worker(&e.key, e.operation, &e.value);
                dirty = jobs_current;
            }
            _ = reap.tick() => {
                if jobs_current && lease.valid() {
                    reap_expired(service, &mut view).await;
                    dirty = true;
                }
            }
        }
        if dirty {
            if !lease.valid() {
                return LeadEnd::Lost;
            }
            apply_plan(service, &mut view).await;
            gauges.publish(&counts(
                &view,
                &service.routing,
                cfg.worker_timeout,
                service.clock.now(),
            ));
        }
    }
}

/// Re-reads one job into the view after a conflicting write.
async fn refresh(service: &Service, view: &mut View, id: &JobId) {
    match service.store.load_job(id).await {
        Ok(Some((rec, rev))) => view.set_job(rec, rev),
        Ok(None) => {
            view.jobs.remove(id);
        }
        Err(e) => tracing::debug!(job = %id, error = %e, "refresh failed"),
    }
}

async fn apply_plan(service: &Service, view: &mut View) {
    let cfg = &service.config;
    let now = service.clock.now();
    let decisions = plan(view, cfg.worker_timeout, cfg.dispatch_slack, now);
    let mut acks = Vec::new();
    for d in decisions {
        let id = d.job();
        let Some((mut rec, rev)) = view.jobs.get(&id).cloned() else {
            continue;
        };
        if !d.apply(&mut rec, now) {
            continue;
        }
        rec.updated_at = now;
        match service.store.update_job(&rec, rev).await {
            Ok(new_rev) => {
                match rec.state {
                    JobState::Dispatched => {
                        let notice = DispatchNotice {
                            job_id: id,
                            epoch: rec.epoch,
                            dispatched_at: now,
                        };
                        let subject = service.routing.route_of(&rec.spec).subject();
                        match service.store.js.publish(subject, encode(&notice)).await {
                            Ok(ack) => acks.push(ack),
                            // The claim timeout sends it back to pending.
                            Err(e) => tracing::warn!(job = %id, error = %e, "notice not published"),
                        }
                        service.events.job(EventKind::JobDispatched, &rec, "");
                        metrics::dispatched(&rec.spec.queue);
                    }
                    JobState::Blocked => {
                        service.events.job(
                            EventKind::JobUnplaceable,
                            &rec,
                            rec.reason.clone().unwrap_or_default(),
                        );
                    }
                    _ => {}
                }
                view.set_job(rec, new_rev);
            }
            Err(StoreError::Conflict(_)) => refresh(service, view, &id).await,
            Err(e) => {
                tracing::warn!(job = %id, error = %e, "scheduler write failed");
                break;
            }
        }
    }
    for ack in acks {
        if let Err(e) = ack.await {
            tracing::warn!(error = %e, "dispatch notice not acknowledged");
        }
    }
}

/// Expired leases → pending/dead (revoking the holder); unclaimed notices → pending;
/// silent workers → gone.
async fn reap_expired(service: &Service, view: &mut View) {
    let cfg = &service.config;
    let now = service.clock.now();
    let expired: Vec<JobId> = view
        .jobs
        .values()
        .filter(|(r, _)| match (r.state, &r.lease, r.dispatched_at) {
            (JobState::Running, Some(l), _) => fsm::lease_expired(l, now),
            (JobState::Dispatched, _, Some(at)) => at.plus(cfg.claim_timeout) <= now,
            _ => false,
        })
        .map(|(r, _)| r.id)
        .collect();
    for id in expired {
        let result = service
            .store
            .modify_job(&id, |rec| {
                let holder = rec.lease.as_ref().map(|l| l.worker.clone());
                if let Some(rev) = fsm::expire_lease(rec, now) {
                    return Ok((Some((rev, holder)), true));
                }
                Ok((None, fsm::expire_claim(rec, cfg.claim_timeout, now)))
            })
            .await;
        match result {
            Ok((revoked, rec, rev)) => {
                if let Some((revocation, Some(worker))) = revoked {
                    metrics::revoked(revocation.reason);
                    if rec.state == JobState::Dead {
                        metrics::finished(&rec.spec.queue, JobState::Dead);
                    }
                    service.events.job(
                        EventKind::JobLeaseExpired,
                        &rec,
                        format!("worker {worker} stopped renewing"),
                    );
                    if rec.state == JobState::Dead {
                        service.events.job(
                            EventKind::JobDead,
                            &rec,
                            rec.reason.clone().unwrap_or_default(),
                        );
                    }
                    service.push_revocation(&worker, revocation).await;
                }
                view.set_job(rec, rev);
            }
            Err(e) => tracing::debug!(job = %id, error = %e, "reap"),
        }
    }
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
            view.workers.insert(w.id.clone(), w);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gf_schemas::{Capabilities, JobSpec};

    fn t(ms: i64) -> Timestamp {
        Timestamp::from_unix_millis(1_800_000_000_000 + ms)
    }
    fn worker(id: &str, slots: u32, tags: &[&str]) -> WorkerRecord {
        WorkerRecord {
            id: WorkerId::new(id).unwrap(),
            capabilities: Capabilities {
                values: [("os".to_string(), "linux".to_string())].into(),
                tags: tags.iter().map(|s| s.to_string()).collect(),
                queues: vec!["default".into()],
            },
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
        View {
            workers: workers.into_iter().map(|w| (w.id.clone(), w)).collect(),
            jobs: jobs.into_iter().map(|j| (j.id, (j, 1))).collect(),
        }
    }
    fn job(priority: u8, at: i64) -> JobRecord {
        let mut s = JobSpec::command(["true"]);
        s.priority = priority;
        JobRecord::new(JobId::new(), s, t(at))
    }
    const TIMEOUT: Duration = Duration::from_secs(10);

    /// Only as many jobs as free slots (plus slack) are dispatched, most urgent first.
    #[test]
    fn dispatch_bounded_by_capacity_and_priority_first() {
        let low: Vec<JobRecord> = (0..5).map(|i| job(5, i)).collect();
        let urgent = job(0, 100);
        let mut jobs = low.clone();
        jobs.push(urgent.clone());
        let v = view(vec![worker("a", 2, &[])], jobs);
        let d = plan(&v, TIMEOUT, 0, t(1));
        assert_eq!(
            d,
            vec![Decision::Dispatch(urgent.id), Decision::Dispatch(low[0].id)]
        );
        let d = plan(&v, TIMEOUT, 1, t(1));
        assert_eq!(d.len(), 3);
    }

    /// Running and already-dispatched jobs use up capacity.
    #[test]
    fn running_and_dispatched_count() {
        let mut running = job(5, 0);
        running.state = JobState::Running;
        running.lease = Some(gf_schemas::Lease {
            worker: WorkerId::new("a").unwrap(),
            epoch: 1,
            granted_at: t(0),
            expires_at: t(9_000),
            ttl_ms: 9_000,
        });
        let mut dispatched = job(5, 1);
        dispatched.state = JobState::Dispatched;
        let v = view(
            vec![worker("a", 2, &[])],
            vec![running, dispatched, job(5, 2)],
        );
        assert!(plan(&v, TIMEOUT, 0, t(1)).is_empty());
    }

    /// A job nobody can run is reported with the missing capability; a job waiting for
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
        let d = plan(&v, TIMEOUT, 0, t(1));
        assert!(d.contains(&Decision::Unplaceable(
            plan9.id,
            "unplaceable: no live worker has os=plan9".into()
        )));
        assert!(d.contains(&Decision::Unplaceable(
            gpu.id,
            "unplaceable: no live worker has tag gpu".into()
        )));
        assert_eq!(d.len(), 2);
    }

    /// A blocked-unplaceable job is dispatched once a fitting worker appears.
    #[test]
    fn unplaceable_recovers() {
        let mut gpu = job(5, 0);
        gpu.spec.tags.insert("gpu".into());
        gpu.state = JobState::Blocked;
        gpu.reason = Some("unplaceable: no live worker has tag gpu".into());
        let v = view(vec![worker("a", 1, &[])], vec![gpu.clone()]);
        assert!(
            plan(&v, TIMEOUT, 0, t(1)).is_empty(),
            "same reason, no rewrite"
        );
        let v = view(
            vec![worker("a", 1, &[]), worker("g", 1, &["gpu"])],
            vec![gpu.clone()],
        );
        assert_eq!(plan(&v, TIMEOUT, 0, t(1)), vec![Decision::Dispatch(gpu.id)]);
    }
}
