//! Dispatch at submission ("the direct lane"). When the leader's last plan pass left a
//! free slot on a live worker that fits a new job, and the job has nothing to wait for,
//! the submission on the leader creates the record already dispatched and leased to
//! that worker (epoch 1) and sends it the grant at once. That saves the job a revision-checked write and the
//! wait for the leader's watch and next pass: one round trip of four on its way to a
//! worker, and a write of five per job.
//!
//! Invariants:
//! - Only speed rides on the lane, never safety. The record is created like any other
//!   (`create`, so at most once), under a lease fenced by its epoch like any other. A
//!   stale lane (a worker died since the pass) means a grant nobody starts, which the
//!   start deadline sends back to pending, as for any grant.
//! - The lane is open only on the leader, only while its lease is valid by the
//!   leader's own monotonic clock, and only holds slots the last pass left free after
//!   placing every waiting job that could use them: a job taking one overtakes nobody.
//! - Every slot handed out is counted until the leader's view holds the job, so a pass
//!   that reopens the lane does not hand out the same slot twice: a pass suspends the
//!   lane before it decides ([`DirectLane::suspend`]: no room is handed out until it
//!   reopens), subtracts the slots whose job is not created yet from its workers'
//!   room, and takes the created ones into its view ([`DirectLane::drain`]).
//! - Jobs with dependencies or a parent (whose record must list them before they
//!   run), a start time in the future, a concurrency or rate limit, or a product
//!   whose budget blocks it take the planned way.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Instant;

use gf_schemas::{Capabilities, JobRecord, Timestamp, WorkerId};

use crate::config::LimitRule;
use crate::plan::{best_fit, limit_keys};
use crate::score::{self, ScoringConfig};

/// The message of a `job_dispatched` event for a job dispatched by its submission
/// (a pass's dispatch has none).
pub const EVENT_MESSAGE: &str = "at submission";

/// A worker the last pass left room on.
#[derive(Debug, Clone)]
pub struct Room {
    pub worker: WorkerId,
    pub capabilities: Capabilities,
    /// Grants it can still take: slots − running − leased at dispatch and not started.
    pub free: i64,
}

#[derive(Default)]
pub struct DirectLane {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// `None` while closed (not the leader, or between losing and regaining it).
    open_until: Option<Instant>,
    rooms: Vec<Room>,
    /// Products whose budget blocks new work.
    blocked_products: HashSet<String>,
    /// Slots taken whose job is not created yet.
    reserved: HashMap<WorkerId, i64>,
    /// Jobs created through the lane that the leader's view has not taken in yet.
    handed: Vec<(JobRecord, u64)>,
}

impl Inner {
    /// Open, and the leader lease it was opened under not yet lapsed.
    fn open_now(&self) -> bool {
        self.open_until.is_some_and(|t| Instant::now() < t)
    }
}

/// A slot taken from the lane. Dropped without [`DirectLane::created`] (the create
/// failed, or the submission stopped early), it gives the slot back.
pub struct Ticket<'a> {
    lane: &'a DirectLane,
    worker: Option<WorkerId>,
}

impl Ticket<'_> {
    /// The worker whose room the slot was taken from: the job is leased to it.
    pub fn worker(&self) -> &WorkerId {
        self.worker.as_ref().expect("held until consumed")
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if let Some(w) = self.worker.take() {
            let mut inner = self.lane.inner.lock().expect("lane");
            unreserve(&mut inner, &w);
            if let Some(room) = inner.rooms.iter_mut().find(|r| r.worker == w) {
                room.free += 1;
            }
        }
    }
}

fn unreserve(inner: &mut Inner, w: &WorkerId) {
    if let Some(n) = inner.reserved.get_mut(w) {
        *n -= 1;
        if *n <= 0 {
            inner.reserved.remove(w);
        }
    }
}

/// What a job must satisfy to take the lane, besides a fitting worker with room.
pub struct Rules<'a> {
    pub scoring: &'a ScoringConfig,
    pub limits: &'a [LimitRule],
}

impl DirectLane {
    /// Opens (or refreshes) the lane after a plan pass: `rooms` is what the pass left
    /// free, `valid_until` when the leader lease stops being safe to act on.
    ///
    /// The rooms are taken as they are: the pass counted every slot handed out before
    /// it (those [`DirectLane::suspend`] reported, and the jobs [`DirectLane::drain`]
    /// gave its view), and the lane handed out none since the suspend.
    pub fn open(
        &self,
        valid_until: Instant,
        mut rooms: Vec<Room>,
        blocked_products: HashSet<String>,
    ) {
        let mut inner = self.inner.lock().expect("lane");
        rooms.retain(|r| r.free > 0);
        inner.rooms = rooms;
        inner.blocked_products = blocked_products;
        inner.open_until = Some(valid_until);
    }

    /// Takes every room away before a plan pass decides, and returns the slots taken
    /// earlier whose job is not created yet, per worker: the pass must count them as
    /// leased (its view lacks those jobs). Rooms left open while the pass decides and
    /// writes would hand out the slots it decides on (under load, a 3-slot worker
    /// leased 4 jobs). Jobs created since are still handed over for
    /// [`DirectLane::drain`], which the pass calls after this; a job created in
    /// between is counted twice for one pass, never not at all. [`DirectLane::open`]
    /// gives rooms back after the pass.
    pub fn suspend(&self) -> HashMap<WorkerId, i64> {
        let mut inner = self.inner.lock().expect("lane");
        inner.rooms.clear();
        inner.reserved.clone()
    }

    /// Moves the deadline after the leader renewed its lease; no-op while closed.
    pub fn extend(&self, valid_until: Instant) {
        let mut inner = self.inner.lock().expect("lane");
        if inner.open_until.is_some() {
            inner.open_until = Some(valid_until);
        }
    }

    /// Closes the lane: this coordinator stopped leading, or is rebuilding its view.
    /// Jobs handed over but not taken in are dropped too: the next view is read from
    /// the store, which holds them.
    pub fn close(&self) {
        let mut inner = self.inner.lock().expect("lane");
        inner.open_until = None;
        inner.rooms.clear();
        inner.handed.clear();
    }

    /// A slot for `rec` (still pending, not yet created), with the score the dispatch
    /// decision is recorded with; `None` if the job must take the planned way.
    pub fn take(
        &self,
        rec: &JobRecord,
        rules: &Rules,
        now: Timestamp,
    ) -> Option<(Ticket<'_>, gf_schemas::Score)> {
        let spec = &rec.spec;
        if !spec.depends_on.is_empty()
            || spec.parent.is_some()
            || spec.not_before.is_some_and(|t| t > now)
            || !limit_keys(spec, rules.limits).is_empty()
        {
            return None;
        }
        let mut inner = self.inner.lock().expect("lane");
        if !inner.open_now() || inner.blocked_products.contains(&spec.product) {
            return None;
        }
        // As the planner chooses.
        // Without the learned terms: the lane only opens on a fleet with room to
        // spare and nothing waiting, and keeps no estimates of its own.
        let i = best_fit(
            rec,
            rules.scoring,
            &crate::plan::learned::Learned::default(),
            now,
            inner
                .rooms
                .iter()
                .enumerate()
                .filter(|(_, r)| r.free > 0 && r.capabilities.unmet(spec).is_none())
                .map(|(i, r)| (i, &r.worker, &r.capabilities, r.free)),
        )?;
        let best = &mut inner.rooms[i];
        best.free -= 1;
        let worker = best.worker.clone();
        let score = score::score(rec, Some(&best.capabilities), rules.scoring, now);
        *inner.reserved.entry(worker.clone()).or_default() += 1;
        Some((
            Ticket {
                lane: self,
                worker: Some(worker),
            },
            score,
        ))
    }

    /// The job holding `ticket` was created (as `rec`, at `revision`): it stays counted
    /// until the leader takes it into its view with [`DirectLane::drain`].
    pub fn created(&self, mut ticket: Ticket<'_>, rec: JobRecord, revision: u64) {
        let w = ticket.worker.take().expect("held until consumed");
        let mut inner = self.inner.lock().expect("lane");
        unreserve(&mut inner, &w);
        if inner.open_until.is_some() {
            inner.handed.push((rec, revision));
        }
    }

    /// The jobs created through the lane since the last call, for the leader's view.
    pub fn drain(&self) -> Vec<(JobRecord, u64)> {
        let mut inner = self.inner.lock().expect("lane");
        std::mem::take(&mut inner.handed)
    }

    /// Notices the lane could hand out now, over all workers.
    pub fn free(&self) -> i64 {
        let inner = self.inner.lock().expect("lane");
        if !inner.open_now() {
            return 0;
        }
        inner.rooms.iter().map(|r| r.free.max(0)).sum()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};
    use std::time::{Duration, Instant};

    use gf_schemas::{JobId, JobRecord, JobSpec, Timestamp, WorkerId};

    use super::{DirectLane, Room, Rules};
    use crate::config::LimitRule;
    use crate::plan::caps;
    use crate::score::ScoringConfig;

    fn now() -> Timestamp {
        Timestamp::from_unix_millis(1_700_000_000_000)
    }

    fn job(spec: JobSpec) -> JobRecord {
        JobRecord::new(JobId::new(), spec, now())
    }

    fn room(id: &str, free: i64, tags: &[&str]) -> Room {
        Room {
            worker: WorkerId::new(id).unwrap(),
            capabilities: caps(&[], tags),
            free,
        }
    }

    fn open(lane: &DirectLane, rooms: Vec<Room>) {
        lane.open(
            Instant::now() + Duration::from_secs(60),
            rooms,
            HashSet::new(),
        );
    }

    fn take_worker(lane: &DirectLane, rec: &JobRecord, rules: &Rules) -> Option<String> {
        let (ticket, _) = lane.take(rec, rules, now())?;
        let w = ticket.worker().to_string();
        lane.created(ticket, rec.clone(), 1);
        Some(w)
    }

    static SCORING: std::sync::LazyLock<ScoringConfig> =
        std::sync::LazyLock::new(ScoringConfig::default);

    fn rules() -> Rules<'static> {
        Rules {
            scoring: &SCORING,
            limits: &[],
        }
    }

    #[test]
    fn closed_lane_hands_out_nothing() {
        let lane = DirectLane::default();
        assert!(lane
            .take(&job(JobSpec::command(["true"])), &rules(), now())
            .is_none());
        open(&lane, vec![room("w1", 2, &[])]);
        lane.close();
        assert!(lane
            .take(&job(JobSpec::command(["true"])), &rules(), now())
            .is_none());
        assert_eq!(lane.free(), 0);
    }

    /// A pass suspends the lane before it decides: no room is handed out while it
    /// decides and writes, and it is told which slots taken earlier have no created
    /// job yet; once created, the job is handed over for the pass's view.
    #[test]
    fn a_suspended_lane_hands_out_nothing_and_reports_slots_not_yet_created() {
        let lane = DirectLane::default();
        assert!(lane.suspend().is_empty(), "nothing taken");
        open(&lane, vec![room("w1", 3, &[])]);
        let rec = job(JobSpec::command(["true"]));
        let (ticket, _) = lane.take(&rec, &rules(), now()).expect("room");
        let w1 = WorkerId::new("w1").unwrap();
        assert_eq!(lane.suspend(), HashMap::from([(w1.clone(), 1)]));
        assert_eq!(lane.free(), 0);
        assert!(lane
            .take(&job(JobSpec::command(["true"])), &rules(), now())
            .is_none());
        lane.created(ticket, rec.clone(), 1);
        assert!(lane.suspend().is_empty(), "created: nothing held");
        assert_eq!(
            lane.drain()
                .into_iter()
                .map(|(r, _)| r.id)
                .collect::<Vec<_>>(),
            vec![rec.id]
        );
        // The pass's rooms count the job (its view took it in): all are handed out.
        open(&lane, vec![room("w1", 2, &[])]);
        assert_eq!(lane.free(), 2);
    }

    #[test]
    fn a_lapsed_lease_closes_the_lane() {
        let lane = DirectLane::default();
        lane.open(Instant::now(), vec![room("w1", 2, &[])], HashSet::new());
        assert!(lane
            .take(&job(JobSpec::command(["true"])), &rules(), now())
            .is_none());
        lane.extend(Instant::now() + Duration::from_secs(60));
        assert!(lane
            .take(&job(JobSpec::command(["true"])), &rules(), now())
            .is_some());
    }

    #[test]
    fn takes_only_free_fitting_slots() {
        let lane = DirectLane::default();
        open(&lane, vec![room("plain", 1, &[]), room("gpu", 1, &["gpu"])]);
        let mut gpu = JobSpec::command(["true"]);
        gpu.tags.insert("gpu".into());
        assert_eq!(
            take_worker(&lane, &job(gpu.clone()), &rules()).as_deref(),
            Some("gpu")
        );
        assert_eq!(
            take_worker(&lane, &job(gpu), &rules()),
            None,
            "gpu slot used"
        );
        let plain = job(JobSpec::command(["true"]));
        assert_eq!(
            take_worker(&lane, &plain, &rules()).as_deref(),
            Some("plain")
        );
        assert_eq!(take_worker(&lane, &plain, &rules()), None, "all slots used");
    }

    #[test]
    fn a_dropped_ticket_gives_its_slot_back() {
        let lane = DirectLane::default();
        open(&lane, vec![room("w1", 1, &[])]);
        let rec = job(JobSpec::command(["true"]));
        let (ticket, _) = lane.take(&rec, &rules(), now()).unwrap();
        assert!(lane.take(&rec, &rules(), now()).is_none());
        drop(ticket);
        assert_eq!(lane.free(), 1);
        assert!(lane.take(&rec, &rules(), now()).is_some());
    }

    /// Every slot out when a pass suspends the lane is counted once by that pass:
    /// reserved ones in what `suspend` returns, created ones in what `drain` gives
    /// its view; one created in between is in both (counted twice, never missed).
    #[test]
    fn a_pass_is_told_of_every_slot_handed_out_before_it() {
        let lane = DirectLane::default();
        open(&lane, vec![room("w1", 3, &[])]);
        let a = job(JobSpec::command(["true"]));
        let b = job(JobSpec::command(["true"]));
        let (reserved, _) = lane.take(&a, &rules(), now()).unwrap();
        take_worker(&lane, &b, &rules()).unwrap();
        let (late, _) = lane.take(&a, &rules(), now()).unwrap();
        let held = lane.suspend();
        lane.created(late, a.clone(), 1);
        let drained = lane.drain();
        let w1 = WorkerId::new("w1").unwrap();
        assert_eq!(held, HashMap::from([(w1, 2)]), "reserved and late");
        assert_eq!(drained.len(), 2, "b, and late created after the suspend");
        drop(reserved);
        assert!(lane.suspend().is_empty());
    }

    #[test]
    fn jobs_with_something_to_wait_for_take_the_planned_way() {
        let lane = DirectLane::default();
        open(&lane, vec![room("w1", 10, &[])]);
        let mut dep = JobSpec::command(["true"]);
        dep.depends_on = vec![JobId::new()];
        assert!(lane.take(&job(dep), &rules(), now()).is_none());
        let mut later = JobSpec::command(["true"]);
        later.not_before = Some(Timestamp::from_unix_millis(now().unix_millis() + 60_000));
        assert!(lane.take(&job(later), &rules(), now()).is_none());
        let mut limited = JobSpec::command(["true"]);
        limited.labels.insert("repo".into(), "a".into());
        let limits = [LimitRule {
            label: "repo".into(),
            max_running: Some(1),
            max_starts_per_minute: None,
        }];
        let with_limits = Rules {
            scoring: &SCORING,
            limits: &limits,
        };
        assert!(lane.take(&job(limited), &with_limits, now()).is_none());
        assert!(lane
            .take(&job(JobSpec::command(["true"])), &with_limits, now())
            .is_some());
        let mut paid = JobSpec::command(["true"]);
        paid.product = "paid".into();
        lane.open(
            Instant::now() + Duration::from_secs(60),
            vec![room("w1", 10, &[])],
            HashSet::from(["paid".to_string()]),
        );
        assert!(
            lane.take(&job(paid), &rules(), now()).is_none(),
            "budget blocks"
        );
    }
}
