//! The backlog's order without re-scoring it: waiting jobs kept in groups whose order
//! does not change while they wait, and the groups ordered by a key that moves with
//! time in a known way, so that a pass finds the most valuable job by looking at the
//! few groups near the top.
//!
//! The order to reproduce is the planner's: score at `now` (higher first, see
//! [`crate::score`]), then earlier submission (milliseconds), then lower id. A job's
//! score is `round(fixed terms + round(min(minutes since ready, 30) × w))`, where only
//! the waiting term moves with time.
//!
//! **Groups.** Jobs share a group when their fixed terms, waiting weight `w`, the delay
//! `δ` from submission to becoming ready, limit keys and set of fitting workers are all
//! equal. Within a group the order is fixed: by (submission ms, id). Proof: with the
//! same `δ`, an earlier submission is an earlier ready time, so (for `w ≥ 0`, the only
//! groups made) a job in an earlier millisecond has waited longer and scores at least
//! as much; an equal score is then decided by the earlier millisecond, as the planner
//! does. Only jobs of the same millisecond can be out of order (their sub-millisecond
//! ready times differ while the tie-break looks at the id), so a group's best job is
//! found among its first millisecond's jobs ("the head block"), by exact scores.
//!
//! **Across groups.** For the head of group `g` the approximate score
//! `A_g(now) = base_g + w · clamp((now − ready)/1 min, 0, 30)` is within `ε` of the
//! exact score of every job in its head block (`ε` covers the two roundings to 0.001,
//! the head block's sub-millisecond spread and float error). Groups of one `w` are kept
//! in three ordered sets, one per regime, each keyed by something that does not move:
//! not ready yet (`A = base`), waiting less than 30 minutes (`A = base − w·ready + w·now`,
//! keyed by `base − w·ready`), and capped (`A = base + 30·w`). A group moves between
//! regimes when its head crosses a boundary; a pass moves the groups whose time has come.
//! The best job overall is among the groups whose `A` is within `2ε` of the largest
//! (any other group's jobs score strictly less than the best head block's best job),
//! so those few are scored exactly and the winner is taken.
//!
//! Jobs that cannot be grouped that way (a negative or non-finite weight, non-finite
//! terms) are kept aside and scored exactly on every pass.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use gf_schemas::JobId;

use crate::jobmap::JobMap;
use crate::score::Fixed;

const NANOS_PER_MINUTE: f64 = 60e9;
const CAP_NANOS: i128 = 30 * 60 * 1_000_000_000;

/// An `f64` ordered by [`f64::total_cmp`], for keys of ordered sets.
#[derive(Clone, Copy, Debug)]
struct Key(f64);

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.0.total_cmp(&other.0).is_eq()
    }
}
impl Eq for Key {}
impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Key {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// What a job brings to the index.
pub(crate) struct Entry {
    pub id: JobId,
    /// `submitted_at`, nanoseconds since the epoch.
    pub submitted_ns: i128,
    /// `score::ready_since`, nanoseconds since the epoch.
    pub ready_ns: i128,
    pub fixed: Fixed,
    /// The limit keys it counts against and the set of active workers that fit it
    /// (bit `i` = the `i`-th active worker by id): what the pass decides per group.
    pub limits: Vec<String>,
    pub fits: Vec<u64>,
}

/// A job as the pass ranks it: the planner's comparison keys.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Candidate {
    pub id: JobId,
    pub score: f64,
    pub submitted_ms: i64,
    pub from: From,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum From {
    Group(u32),
    /// Position in this pass's exactly scored list.
    Exact(usize),
}

impl Candidate {
    /// Dispatched sooner than `other`: the planner's order (score, then earlier
    /// submission, then lower id).
    fn before(&self, other: &Candidate) -> bool {
        self.score
            .total_cmp(&other.score)
            .then(other.submitted_ms.cmp(&self.submitted_ms))
            .then(other.id.cmp(&self.id))
            .is_gt()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct GroupKey {
    fixed: [u64; 4],
    waiting: u64,
    delay_ns: i128,
    limits: Vec<String>,
    fits: Vec<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Regime {
    /// Not ready yet at the pass's `now` (submitted by a coordinator whose clock runs
    /// ahead): the waiting term is 0.
    Early,
    Waiting,
    Capped,
}

/// Where a group is filed in its class: the regime, the key, and the head's ready
/// time it was filed under.
#[derive(Clone, Copy, Debug)]
struct Filed {
    regime: Regime,
    key: Key,
    ready_ns: i128,
}

struct Group {
    key: GroupKey,
    fixed: Fixed,
    base: f64,
    /// (submission ms, id) → sub-millisecond nanoseconds of the submission.
    jobs: BTreeMap<(i64, JobId), u32>,
    /// `None` while suspended for the rest of a pass (or empty).
    filed: Option<Filed>,
}

impl Group {
    fn head_ready_ns(&self) -> Option<i128> {
        self.jobs
            .first_key_value()
            .map(|(&(ms, _), &sub)| submitted_ns(ms, sub) + self.key.delay_ns)
    }

    /// The best job of the group at `now`: among its first millisecond's jobs, by
    /// exact score, then id (the millisecond is the same).
    fn best(&self, gid: u32, now_ns: i128) -> Option<Candidate> {
        let mut block = self.jobs.iter();
        let (&(ms, first), &sub) = block.next()?;
        let delay = self.key.delay_ns;
        let score = |sub: u32| {
            self.fixed
                .total(waited(now_ns, submitted_ns(ms, sub) + delay))
        };
        let candidate = |id: JobId, score: f64| Candidate {
            id,
            score,
            submitted_ms: ms,
            from: From::Group(gid),
        };
        let mut best = candidate(first, score(sub));
        // Scores in the block lie between those of its earliest and latest ready
        // times; when those are equal every job ties and the lowest id (first) wins.
        let same_ms: Vec<(JobId, u32)> = block
            .take_while(|((m, _), _)| *m == ms)
            .map(|(&(_, id), &sub)| (id, sub))
            .collect();
        if same_ms.is_empty() {
            return Some(best);
        }
        let (lo, hi) = same_ms
            .iter()
            .fold((sub, sub), |(lo, hi), (_, s)| (lo.min(*s), hi.max(*s)));
        if score(lo).total_cmp(&score(hi)).is_eq() {
            return Some(best);
        }
        for (id, sub) in same_ms {
            let c = candidate(id, score(sub));
            if c.before(&best) {
                best = c;
            }
        }
        Some(best)
    }
}

fn submitted_ns(ms: i64, sub: u32) -> i128 {
    i128::from(ms) * 1_000_000 + i128::from(sub)
}

/// `now.since(ready)` from nanoseconds, as [`gf_schemas::Timestamp::since`]: zero when
/// `ready` is later.
fn waited(now_ns: i128, ready_ns: i128) -> Duration {
    let d = now_ns - ready_ns;
    if d <= 0 {
        Duration::ZERO
    } else {
        Duration::new((d / 1_000_000_000) as u64, (d % 1_000_000_000) as u32)
    }
}

/// The groups of one waiting weight, filed by regime.
#[derive(Default)]
struct Class {
    weight: f64,
    early: BTreeSet<(Key, u32)>,
    early_by_ready: BTreeSet<(i128, u32)>,
    waiting: BTreeSet<(Key, u32)>,
    waiting_by_ready: BTreeSet<(i128, u32)>,
    capped: BTreeSet<(Key, u32)>,
}

impl Class {
    /// The approximate score of a group filed under `key` in `regime`.
    fn approx(&self, regime: Regime, key: Key, now_min: f64) -> f64 {
        match regime {
            Regime::Early => key.0,
            Regime::Waiting => key.0 + self.weight * now_min,
            Regime::Capped => key.0 + 30.0 * self.weight,
        }
    }

    /// Groups in decreasing approximate score, per regime, while at least `floor`.
    fn near_top(&self, now_min: f64, floor: f64, out: &mut Vec<u32>) {
        for (regime, set) in [
            (Regime::Early, &self.early),
            (Regime::Waiting, &self.waiting),
            (Regime::Capped, &self.capped),
        ] {
            for &(key, gid) in set.iter().rev() {
                if self.approx(regime, key, now_min) < floor {
                    break;
                }
                out.push(gid);
            }
        }
    }

    fn top(&self, now_min: f64) -> Option<f64> {
        [
            (Regime::Early, &self.early),
            (Regime::Waiting, &self.waiting),
            (Regime::Capped, &self.capped),
        ]
        .into_iter()
        .filter_map(|(regime, set)| {
            set.last()
                .map(|&(key, _)| self.approx(regime, key, now_min))
        })
        .max_by(f64::total_cmp)
    }
}

/// The waiting jobs in the planner's order (see the module documentation).
#[derive(Default)]
pub(crate) struct RankIndex {
    /// Origin of the waiting regime's keys (keeps them small, so float error is too).
    origin_ns: Option<i128>,
    groups: Vec<Option<Group>>,
    vacant: Vec<u32>,
    by_key: HashMap<GroupKey, u32>,
    classes: HashMap<u64, Class>,
    /// Which group each grouped job is in, and its submission millisecond.
    member: JobMap<(u32, i64)>,
    /// Jobs scored exactly on every pass: submission and ready times, fixed terms.
    exact: JobMap<(i128, i128, Fixed)>,
    /// Bound on |exact score − approximate score| over the groups filed since the
    /// index was made.
    eps: f64,
    /// Groups set aside for the rest of this pass.
    suspended: Vec<u32>,
    /// This pass's exactly scored jobs, best first, and how many were taken.
    exact_ranked: Vec<Candidate>,
    exact_taken: usize,
}

impl RankIndex {
    pub fn len(&self) -> usize {
        self.member.len() + self.exact.len()
    }

    pub fn groups(&self) -> usize {
        self.by_key.len()
    }

    pub fn insert(&mut self, e: Entry, now_ns: i128) {
        self.remove(&e.id, now_ns);
        let w = e.fixed.waiting;
        let terms = [
            e.fixed.priority,
            e.fixed.retry,
            e.fixed.product,
            e.fixed.cost,
        ];
        if !(w.is_finite() && w >= 0.0) || terms.iter().any(|t| !t.is_finite()) {
            self.exact
                .insert(e.id, (e.submitted_ns, e.ready_ns, e.fixed));
            return;
        }
        let key = GroupKey {
            fixed: terms.map(f64::to_bits),
            waiting: w.to_bits(),
            delay_ns: e.ready_ns - e.submitted_ns,
            limits: e.limits,
            fits: e.fits,
        };
        let gid = match self.by_key.get(&key) {
            Some(&g) => g,
            None => self.new_group(key, e.fixed),
        };
        let ms = e.submitted_ns.div_euclid(1_000_000) as i64;
        let sub = e.submitted_ns.rem_euclid(1_000_000) as u32;
        let group = self.groups[gid as usize].as_mut().expect("live group");
        let was_head = group.jobs.first_key_value().map(|(k, _)| *k);
        group.jobs.insert((ms, e.id), sub);
        self.member.insert(e.id, (gid, ms));
        let suspended = was_head.is_some() && group.filed.is_none();
        let head = group.jobs.first_key_value().map(|(k, _)| *k);
        if head != was_head && !suspended {
            self.unfile(gid);
            self.file(gid, now_ns);
        }
    }

    fn new_group(&mut self, key: GroupKey, fixed: Fixed) -> u32 {
        let base = fixed.base();
        let w = fixed.waiting;
        // Two roundings to 0.001, the head block's spread (under 1 ms of waiting),
        // and float error, generously.
        self.eps = self
            .eps
            .max(0.0012 + 3e-5 * w + 1e-12 * (base.abs() + 30.0 * w));
        self.classes.entry(key.waiting).or_default().weight = w;
        let g = Group {
            key: key.clone(),
            base,
            fixed,
            jobs: BTreeMap::new(),
            filed: None,
        };
        let gid = match self.vacant.pop() {
            Some(i) => {
                self.groups[i as usize] = Some(g);
                i
            }
            None => {
                self.groups.push(Some(g));
                (self.groups.len() - 1) as u32
            }
        };
        self.by_key.insert(key, gid);
        gid
    }

    pub fn remove(&mut self, id: &JobId, now_ns: i128) {
        if self.exact.remove(id).is_some() {
            return;
        }
        let Some((gid, ms)) = self.member.remove(id) else {
            return;
        };
        let group = self.groups[gid as usize].as_mut().expect("live group");
        let was_head = group.jobs.first_key_value().map(|(k, _)| *k);
        group.jobs.remove(&(ms, *id));
        let suspended = group.filed.is_none();
        if group.jobs.is_empty() {
            self.unfile(gid);
            let g = self.groups[gid as usize].take().expect("live group");
            self.by_key.remove(&g.key);
            self.suspended.retain(|s| *s != gid);
            self.vacant.push(gid);
            return;
        }
        let head = group.jobs.first_key_value().map(|(k, _)| *k);
        if head != was_head && !suspended {
            self.unfile(gid);
            self.file(gid, now_ns);
        }
    }

    fn unfile(&mut self, gid: u32) {
        let group = self.groups[gid as usize].as_mut().expect("live group");
        let Some(f) = group.filed.take() else {
            return;
        };
        let class = self
            .classes
            .get_mut(&group.key.waiting)
            .expect("filed in its class");
        match f.regime {
            Regime::Early => {
                class.early.remove(&(f.key, gid));
                class.early_by_ready.remove(&(f.ready_ns, gid));
            }
            Regime::Waiting => {
                class.waiting.remove(&(f.key, gid));
                class.waiting_by_ready.remove(&(f.ready_ns, gid));
            }
            Regime::Capped => {
                class.capped.remove(&(f.key, gid));
            }
        }
    }

    /// Files a group under its head, as of `now_ns`.
    fn file(&mut self, gid: u32, now_ns: i128) {
        let origin = *self.origin_ns.get_or_insert(now_ns);
        let group = self.groups[gid as usize].as_mut().expect("live group");
        let Some(ready_ns) = group.head_ready_ns() else {
            return;
        };
        let w = group.fixed.waiting;
        let class = self.classes.entry(group.key.waiting).or_default();
        let since = now_ns - ready_ns;
        let (regime, key) = if since < 0 {
            class.early.insert((Key(group.base), gid));
            class.early_by_ready.insert((ready_ns, gid));
            (Regime::Early, Key(group.base))
        } else if since < CAP_NANOS {
            let k = Key(group.base - w * ((ready_ns - origin) as f64 / NANOS_PER_MINUTE));
            class.waiting.insert((k, gid));
            class.waiting_by_ready.insert((ready_ns, gid));
            (Regime::Waiting, k)
        } else {
            class.capped.insert((Key(group.base), gid));
            (Regime::Capped, Key(group.base))
        };
        group.filed = Some(Filed {
            regime,
            key,
            ready_ns,
        });
    }

    /// Starts a pass at `now_ns`: moves the groups whose head became ready or reached
    /// the 30-minute cap since the last pass, and scores the ungrouped jobs.
    pub fn begin(&mut self, now_ns: i128) {
        let mut moving = Vec::new();
        for class in self.classes.values() {
            moving.extend(
                class
                    .early_by_ready
                    .iter()
                    .take_while(|(r, _)| *r <= now_ns)
                    .map(|(_, g)| *g),
            );
            moving.extend(
                class
                    .waiting_by_ready
                    .iter()
                    .take_while(|(r, _)| now_ns - *r >= CAP_NANOS)
                    .map(|(_, g)| *g),
            );
        }
        for gid in moving {
            self.unfile(gid);
            self.file(gid, now_ns);
        }
        self.exact_ranked = self
            .exact
            .iter()
            .map(|(id, (submitted, ready, fixed))| Candidate {
                id: *id,
                score: fixed.total(waited(now_ns, *ready)),
                submitted_ms: submitted.div_euclid(1_000_000) as i64,
                from: From::Exact(0),
            })
            .collect();
        self.exact_ranked.sort_by(|a, b| {
            if a.before(b) {
                std::cmp::Ordering::Less
            } else {
                std::cmp::Ordering::Greater
            }
        });
        for (i, c) in self.exact_ranked.iter_mut().enumerate() {
            c.from = From::Exact(i);
        }
        self.exact_taken = 0;
    }

    /// The best waiting job at `now_ns` among those not taken or set aside this pass.
    pub fn best(&self, now_ns: i128) -> Option<Candidate> {
        let origin = self.origin_ns.unwrap_or(now_ns);
        let now_min = (now_ns - origin) as f64 / NANOS_PER_MINUTE;
        let mut best = self.exact_ranked.get(self.exact_taken).copied();
        let top = self
            .classes
            .values()
            .filter_map(|c| c.top(now_min))
            .max_by(f64::total_cmp);
        if let Some(top) = top {
            let mut near = Vec::new();
            for class in self.classes.values() {
                class.near_top(now_min, top - 2.0 * self.eps, &mut near);
            }
            for gid in near {
                let group = self.groups[gid as usize].as_ref().expect("live group");
                if let Some(c) = group.best(gid, now_ns) {
                    if best.is_none_or(|b| c.before(&b)) {
                        best = Some(c);
                    }
                }
            }
        }
        best
    }

    /// Takes `c` (from [`RankIndex::best`]) out: it was dispatched.
    pub fn take(&mut self, c: &Candidate, now_ns: i128) {
        match c.from {
            From::Exact(i) => {
                debug_assert_eq!(i, self.exact_taken);
                self.exact_taken += 1;
                self.exact.remove(&c.id);
            }
            From::Group(_) => self.remove(&c.id, now_ns),
        }
    }

    /// Sets `c`'s whole group aside for the rest of the pass (or, ungrouped, the job):
    /// nothing in it can be placed in this pass.
    pub fn skip(&mut self, c: &Candidate) {
        match c.from {
            From::Exact(_) => self.exact_taken += 1,
            From::Group(gid) => {
                self.unfile(gid);
                self.suspended.push(gid);
            }
        }
    }

    /// Ends a pass: the groups set aside are filed again.
    pub fn end(&mut self, now_ns: i128) {
        for gid in std::mem::take(&mut self.suspended) {
            if self.groups[gid as usize].is_some() {
                self.file(gid, now_ns);
            }
        }
        self.exact_ranked.clear();
        self.exact_taken = 0;
    }
}

#[cfg(test)]
mod tests {
    use gf_schemas::{JobRecord, JobSpec, Timestamp};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::score::ScoringConfig;

    const T0: i128 = 1_800_000_000_000 * 1_000_000;
    const MS: i128 = 1_000_000;

    fn fixed(priority: u8, waiting: f64) -> Fixed {
        let mut spec = JobSpec::command(["true"]);
        spec.priority = priority;
        spec.weights = Some(Box::new(gf_schemas::ScoreWeights {
            waiting: Some(waiting),
            ..Default::default()
        }));
        let rec = JobRecord::new(JobId::new(), spec, Timestamp::from_unix_millis(0));
        Fixed::of(&rec, &ScoringConfig::default())
    }

    fn entry(id: JobId, submitted_ns: i128, delay_ns: i128, fixed: Fixed) -> Entry {
        Entry {
            id,
            submitted_ns,
            ready_ns: submitted_ns + delay_ns,
            fixed,
            limits: vec![],
            fits: vec![1],
        }
    }

    /// Everything in `index`, in the order [`RankIndex::best`] gives it at `now`.
    fn drain(index: &mut RankIndex, now: i128) -> Vec<JobId> {
        index.begin(now);
        let mut out = Vec::new();
        while let Some(c) = index.best(now) {
            out.push(c.id);
            index.take(&c, now);
        }
        index.end(now);
        out
    }

    /// Two jobs of one group submitted in the same millisecond: the one with the lower
    /// id was submitted later within it, and at this `now` its waiting term rounds
    /// down while the other's rounds up, so the higher id goes first.
    #[test]
    fn same_millisecond_straddling_a_rounding_step() {
        let f = fixed(5, 1.0);
        let (a, b) = {
            let (x, y) = (JobId::new(), JobId::new());
            (x.min(y), x.max(y))
        };
        let m = T0;
        let mut index = RankIndex::default();
        index.insert(entry(a, m + 900_000, 0, f.clone()), m);
        index.insert(entry(b, m + 100_000, 0, f.clone()), m);
        assert_eq!(index.groups(), 1);
        // b waited 30.5 ms (0.000508 min → 0.001), a 29.7 ms (0.000495 → 0.000).
        let now = m + 100_000 + 30_500_000;
        assert!(f.total(waited(now, m + 100_000)) > f.total(waited(now, m + 900_000)));
        assert_eq!(drain(&mut index, now), vec![b, a]);
        // A millisecond later both round up alike: the lower id first again.
        let mut index = RankIndex::default();
        index.insert(entry(a, m + 900_000, 0, f.clone()), m);
        index.insert(entry(b, m + 100_000, 0, f.clone()), m);
        assert_eq!(drain(&mut index, now + 5 * MS), vec![a, b]);
    }

    /// Randomised: the index's order equals sorting by exact score at many fixed
    /// times (before any job is ready, across the 30-minute cap, long after), with
    /// groups of several weights (one negative, kept aside), retry delays, and
    /// submissions clustered in the same milliseconds.
    #[test]
    fn order_equals_exact_sort_at_any_time() {
        let mut rng = StdRng::seed_from_u64(7);
        for case in 0..200 {
            let weights = [0.0, 0.5, 1.0, 2.0, -1.0];
            let mut jobs: Vec<(JobId, i128, i128, Fixed)> = Vec::new();
            for _ in 0..rng.random_range(1..120) {
                let f = fixed(
                    rng.random_range(0..10),
                    weights[rng.random_range(0..weights.len())],
                );
                let ms = rng.random_range(0..40i128) * 60_000 * MS / rng.random_range(1..200);
                let submitted = T0 + ms + rng.random_range(0..3) * 333_333;
                let delay = if rng.random_bool(0.2) {
                    rng.random_range(0..5) * 7_777_777
                } else {
                    0
                };
                jobs.push((JobId::new(), submitted, delay, f));
            }
            let mut index = RankIndex::default();
            for (id, s, d, f) in &jobs {
                index.insert(entry(*id, *s, *d, f.clone()), T0);
            }
            let mut now = T0 - 5 * MS;
            for _ in 0..12 {
                let mut expected: Vec<Candidate> = jobs
                    .iter()
                    .map(|(id, s, d, f)| Candidate {
                        id: *id,
                        score: f.total(waited(now, s + d)),
                        submitted_ms: s.div_euclid(MS) as i64,
                        from: From::Exact(0),
                    })
                    .collect();
                expected.sort_by(|a, b| {
                    if a.before(b) {
                        std::cmp::Ordering::Less
                    } else {
                        std::cmp::Ordering::Greater
                    }
                });
                let expected: Vec<JobId> = expected.iter().map(|c| c.id).collect();
                // Drain a copy, so the same index goes on to later times.
                let mut copy = RankIndex::default();
                for (id, s, d, f) in &jobs {
                    copy.insert(entry(*id, *s, *d, f.clone()), T0);
                }
                // Walk the original through time too (transitions without draining).
                index.begin(now);
                let first = index.best(now).map(|c| c.id);
                index.end(now);
                assert_eq!(first, expected.first().copied(), "case {case}");
                assert_eq!(drain(&mut copy, now), expected, "case {case} at {now}");
                now += rng.random_range(0..15 * 60_000) * MS + rng.random_range(0..MS);
            }
        }
    }
}
