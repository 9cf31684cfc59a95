//! Learned placement: what finished attempts say about where a kind of job succeeds
//! and how long it takes, as score terms for choosing among the workers that have room.
//!
//! Estimates per (kind, worker) and (kind, worker profile), smoothed toward a prior so
//! that a new worker is not starved and one failure does not ban a worker:
//!
//! - success: `p_kind = (ok_k + K·P0) / (n_k + K)`, then the profile's
//!   `p_prof = (ok_p + K·p_kind) / (n_p + K)`, then the worker's
//!   `p_w = (ok_w + K·p_prof) / (n_w + K)`, with `K` = [`PRIOR_WEIGHT`] and `P0` =
//!   [`PRIOR_SUCCESS`]. A worker with no history is its profile; a profile with none is
//!   the kind.
//! - duration: the same shrinkage on the mean of log₂(seconds).
//!
//! Counts decay ([`DECAY`] per observation of the same key), so a worker that was
//! fixed recovers within about a hundred jobs.
//!
//! The terms (weights in [`crate::score::Weights`]):
//! - `success` = (p_w − p_kind) × 100 × weight: a worker 50 points below the kind's
//!   rate costs 50 × weight;
//! - `speed` = (mean log₂ duration of the kind − the worker's) × 10 × weight: twice as
//!   fast as usual is +10 × weight;
//! - `failed_here` = − failed attempts of this very job on this worker × 20 × weight.
//!
//! They only choose the worker (like `affinity`); the dispatch order ranks without a
//! worker, so the incremental planner's index is untouched and a pass costs the same
//! except for the jobs it places.

use std::collections::HashMap;

use gf_schemas::names::Routing;
use gf_schemas::outcome::{OutcomeClass, OutcomeRow};
use gf_schemas::{Capabilities, JobRecord, Score, WorkerId, WorkerRecord};

use crate::score::{ScoringConfig, Weights};

/// Pseudo-observations of the prior at each level.
pub const PRIOR_WEIGHT: f64 = 5.0;
/// Success rate assumed for a kind nothing is known about.
pub const PRIOR_SUCCESS: f64 = 0.9;
/// Weight an observation keeps per newer observation of the same key.
pub const DECAY: f64 = 0.99;
/// Points per failed attempt of this job on the worker (times the weight).
const FAILED_HERE_POINTS: f64 = 20.0;

/// Decayed counts of one key.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stat {
    /// Attempts with a verdict.
    pub n: f64,
    /// Of which succeeded.
    pub ok: f64,
    /// Attempts with a duration (successes).
    pub timed: f64,
    /// Sum of log₂(seconds) over them.
    pub log_secs: f64,
}

impl Stat {
    fn add(&mut self, success: bool, secs: Option<f64>) {
        self.n = self.n * DECAY + 1.0;
        self.ok = self.ok * DECAY + f64::from(u8::from(success));
        if let Some(s) = secs {
            self.timed = self.timed * DECAY + 1.0;
            self.log_secs = self.log_secs * DECAY + s.max(0.001).log2();
        }
    }

    fn success(&self, prior: f64) -> f64 {
        (self.ok + PRIOR_WEIGHT * prior) / (self.n + PRIOR_WEIGHT)
    }

    fn log_duration(&self, prior: Option<f64>) -> Option<f64> {
        match prior {
            Some(p) => Some((self.log_secs + PRIOR_WEIGHT * p) / (self.timed + PRIOR_WEIGHT)),
            None if self.timed > 0.0 => Some(self.log_secs / self.timed),
            None => None,
        }
    }
}

#[derive(Clone, Debug, Default)]
struct KindStats {
    all: Stat,
    by_profile: HashMap<String, Stat>,
    by_worker: HashMap<WorkerId, Stat>,
}

/// What the estimates say about one worker for one kind.
#[derive(Clone, Debug, PartialEq)]
pub struct Estimate {
    /// Smoothed success rates: the worker's, and the kind's over every worker.
    pub success: f64,
    pub kind_success: f64,
    /// Attempts behind the worker's own estimate (decayed).
    pub observed: f64,
    /// Typical seconds (geometric mean), the worker's and the kind's, once known.
    pub secs: Option<f64>,
    pub kind_secs: Option<f64>,
}

/// The learned estimates, kept by the scheduler leader and fed every outcome row.
#[derive(Clone, Debug, Default)]
pub struct Learned {
    kinds: HashMap<String, KindStats>,
    /// Each worker's profile, from its capabilities (see [`crate::consumers::name_for`]);
    /// only known with a routing (on the leader) or from rows.
    profiles: HashMap<WorkerId, (Capabilities, String)>,
    routing: Option<Routing>,
    rows: u64,
}

impl Learned {
    pub fn new(routing: Routing) -> Self {
        Self {
            routing: Some(routing),
            ..Self::default()
        }
    }

    /// Rows taken in.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Learns a worker's profile when its capabilities are new or changed.
    pub fn note_worker(&mut self, w: &WorkerRecord) {
        let Some(routing) = &self.routing else { return };
        if self.profile_for(w).is_some() {
            return;
        }
        let name = crate::consumers::name_for(routing, &w.capabilities).to_string();
        self.profiles
            .insert(w.id.clone(), (w.capabilities.clone(), name));
    }

    /// Records a worker's profile by name (an offline replay knows it from the rows,
    /// not from a routing).
    pub fn note_profile(&mut self, w: &WorkerId, profile: &str) {
        self.profiles
            .insert(w.clone(), (Capabilities::default(), profile.to_string()));
    }

    /// The profile learnt for `w` with the capabilities it has now, if any.
    pub fn profile_for(&self, w: &WorkerRecord) -> Option<&str> {
        self.profiles
            .get(&w.id)
            .filter(|(c, _)| *c == w.capabilities)
            .map(|(_, p)| p.as_str())
    }

    /// The worker's profile, if known.
    pub fn profile_of(&self, w: &WorkerId) -> Option<&str> {
        self.profiles.get(w).map(|(_, p)| p.as_str())
    }

    /// Takes in one finished attempt. Endings that are nobody's fault (preempted,
    /// released, cancelled) teach nothing.
    pub fn observe(&mut self, row: &OutcomeRow) {
        let Some(success) = row.outcome.verdict() else {
            return;
        };
        self.rows += 1;
        // Only a success says how long the work takes; a failure may stop early.
        let secs =
            (row.outcome == OutcomeClass::Succeeded).then(|| row.duration_ms as f64 / 1000.0);
        let k = self.kinds.entry(row.kind.clone()).or_default();
        k.all.add(success, secs);
        k.by_worker
            .entry(row.worker.clone())
            .or_default()
            .add(success, secs);
        if let Some(p) = &row.worker_profile {
            k.by_profile
                .entry(p.clone())
                .or_default()
                .add(success, secs);
        }
    }

    /// The estimate for `worker` on `kind`; `None` when nothing is known of the kind.
    pub fn estimate(&self, kind: &str, worker: &WorkerId) -> Option<Estimate> {
        let k = self.kinds.get(kind)?;
        let kind_success = k.all.success(PRIOR_SUCCESS);
        let kind_log = k.all.log_duration(None);
        let prof = self
            .profile_of(worker)
            .and_then(|p| k.by_profile.get(p))
            .cloned()
            .unwrap_or_default();
        let prof_success = prof.success(kind_success);
        let prof_log = kind_log.and_then(|l| prof.log_duration(Some(l)));
        let own = k.by_worker.get(worker).cloned().unwrap_or_default();
        Some(Estimate {
            success: own.success(prof_success),
            kind_success,
            observed: own.n,
            secs: prof_log
                .and_then(|l| own.log_duration(Some(l)))
                .map(f64::exp2),
            kind_secs: kind_log.map(f64::exp2),
        })
    }

    /// The kinds known, with their attempts (decayed) and smoothed success rate.
    pub fn kinds(&self) -> impl Iterator<Item = (&str, f64, f64)> {
        self.kinds
            .iter()
            .map(|(k, s)| (k.as_str(), s.all.n, s.all.success(PRIOR_SUCCESS)))
    }

    /// Workers seen running `kind`.
    pub fn workers_of(&self, kind: &str) -> impl Iterator<Item = &WorkerId> {
        self.kinds
            .get(kind)
            .into_iter()
            .flat_map(|k| k.by_worker.keys())
    }
}

/// Failed attempts (run and failed, or lost with the lease) of `rec` on `worker`.
pub fn failed_on(rec: &JobRecord, worker: &WorkerId) -> usize {
    rec.history
        .iter()
        .filter(|a| {
            &a.worker == worker
                && a.ended_at.is_some()
                && OutcomeClass::of(a).verdict() == Some(false)
        })
        .count()
}

/// The learned terms for placing `rec` (of `kind`) on `worker`, each rounded like the
/// other terms; zeros where nothing is known.
pub fn terms(
    rec: &JobRecord,
    kind: &str,
    worker: &WorkerId,
    learned: &Learned,
    w: &Weights,
) -> [(&'static str, f64); 3] {
    let (success, speed) = match learned.estimate(kind, worker) {
        Some(e) => {
            let success = (e.success - e.kind_success) * 100.0 * w.success;
            let speed = match (e.secs, e.kind_secs) {
                (Some(s), Some(k)) => (k.log2() - s.log2()) * 10.0 * w.speed,
                _ => 0.0,
            };
            (success, speed)
        }
        None => (0.0, 0.0),
    };
    let failed = -(failed_on(rec, worker) as f64) * FAILED_HERE_POINTS * w.failed_here;
    [
        ("success", round(success)),
        ("speed", round(speed)),
        ("failed_here", round(failed)),
    ]
}

/// The learned side of placing one job, worked out once per placement: its kind and
/// weights. Nothing is computed for a job that never ran while nothing is learned.
pub(crate) struct Placing<'a> {
    /// `None` when the terms are all zero for every worker.
    kind: Option<(String, Weights)>,
    learned: &'a Learned,
}

impl<'a> Placing<'a> {
    pub fn of(rec: &JobRecord, scoring: &ScoringConfig, learned: &'a Learned) -> Self {
        let ran = rec.history.iter().any(|a| a.ended_at.is_some());
        let kind = (ran || !learned.kinds.is_empty()).then(|| {
            (
                gf_schemas::profile::kind(&rec.spec),
                scoring.weights_for(&rec.spec),
            )
        });
        Self { kind, learned }
    }

    /// The sum of the learned terms on `worker`.
    pub fn total(&self, rec: &JobRecord, worker: &WorkerId) -> f64 {
        self.kind.as_ref().map_or(0.0, |(kind, w)| {
            terms(rec, kind, worker, self.learned, w)
                .iter()
                .map(|(_, v)| v)
                .sum()
        })
    }

    /// Adds the learned terms to a worker's score, when the kind is known or this job
    /// failed somewhere (otherwise they are all zero and left out).
    pub fn extend(&self, rec: &JobRecord, worker: &WorkerId, score: &mut Score) {
        let Some((kind, w)) = &self.kind else { return };
        if !self.learned.kinds.contains_key(kind)
            && !rec
                .history
                .iter()
                .any(|a| OutcomeClass::of(a).verdict() == Some(false) && a.ended_at.is_some())
        {
            return;
        }
        let t = terms(rec, kind, worker, self.learned, w);
        for (name, v) in t {
            score.terms.insert(name.to_string(), v);
        }
        score.total = round(score.total + t.iter().map(|(_, v)| v).sum::<f64>());
    }
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0 + 0.0
}

#[cfg(test)]
mod tests {
    use gf_schemas::{Attempt, AttemptOutcome, JobId, JobSpec, Timestamp};

    use super::*;

    fn row(kind: &str, worker: &str, profile: &str, ok: bool, secs: u64) -> OutcomeRow {
        let mut rec = JobRecord::new(
            JobId::new(),
            JobSpec::command([kind]),
            Timestamp::from_unix_millis(0),
        );
        rec.history.push(Attempt {
            epoch: 1,
            worker: WorkerId::new(worker).unwrap(),
            started_at: Timestamp::from_unix_millis(0),
            ended_at: Some(Timestamp::from_unix_millis(secs as i64 * 1000)),
            outcome: Some(if ok {
                AttemptOutcome::Succeeded { exit_code: 0 }
            } else {
                AttemptOutcome::Failed {
                    exit_code: Some(1),
                    error: "exit 1".into(),
                }
            }),
            ended_because: None,
            artifact_errors: Vec::new(),
        });
        let mut r = OutcomeRow::of(&rec, 0, (0, 0.0)).unwrap();
        r.worker_profile = Some(profile.into());
        r
    }

    fn id(s: &str) -> WorkerId {
        WorkerId::new(s).unwrap()
    }

    /// One failure does not ban a worker; a record of failures sinks its estimate for
    /// that kind only; an unknown worker starts at the kind's rate; a slow worker is
    /// estimated slower.
    #[test]
    fn estimates_shrink_toward_the_prior() {
        let mut l = Learned::default();
        assert!(l.estimate("build", &id("a")).is_none());
        l.observe(&row("build", "a", "p1", false, 10));
        let e = l.estimate("build", &id("a")).unwrap();
        assert!(e.success > 0.6, "one failure is not a ban: {e:?}");
        for i in 0..100 {
            l.observe(&row("build", "a", "p1", i % 5 == 0, 10));
            l.observe(&row("build", "b", "p2", true, 40));
            l.observe(&row("eval", "a", "p1", true, 5));
        }
        let a = l.estimate("build", &id("a")).unwrap();
        let b = l.estimate("build", &id("b")).unwrap();
        assert!(a.success < 0.35 && b.success > 0.9, "{a:?} {b:?}");
        assert!(l.estimate("eval", &id("a")).unwrap().success > 0.9);
        let new = l.estimate("build", &id("new")).unwrap();
        assert!((new.success - new.kind_success).abs() < 1e-9, "{new:?}");
        assert!(a.secs.unwrap() < b.secs.unwrap());
        let w = Weights::default();
        let spec = JobRecord::new(
            JobId::new(),
            JobSpec::command(["build"]),
            Timestamp::from_unix_millis(0),
        );
        let ta = terms(&spec, "build", &id("a"), &l, &w);
        let tb = terms(&spec, "build", &id("b"), &l, &w);
        assert!(ta[0].1 < 0.0 && tb[0].1 > 0.0, "{ta:?} {tb:?}");
        assert!(ta[1].1 > tb[1].1, "a is faster: {ta:?} {tb:?}");
    }

    /// Preempted, released and cancelled attempts teach nothing; failures of this very
    /// job on a worker count against that worker only.
    #[test]
    fn only_the_workers_own_endings_count() {
        let mut l = Learned::default();
        let mut r = row("build", "a", "p1", false, 1);
        r.outcome = OutcomeClass::Preempted;
        l.observe(&r);
        assert_eq!(l.rows(), 0);
        let mut rec = JobRecord::new(
            JobId::new(),
            JobSpec::command(["build"]),
            Timestamp::from_unix_millis(0),
        );
        for (w, because) in [
            ("a", "lease expired on worker a"),
            ("a", "preempted by x"),
            ("b", "released: drain"),
        ] {
            rec.history.push(Attempt {
                epoch: 1,
                worker: id(w),
                started_at: Timestamp::from_unix_millis(0),
                ended_at: Some(Timestamp::from_unix_millis(1)),
                outcome: None,
                ended_because: Some(because.into()),
                artifact_errors: Vec::new(),
            });
        }
        assert_eq!(failed_on(&rec, &id("a")), 1);
        assert_eq!(failed_on(&rec, &id("b")), 0);
        let t = terms(&rec, "build", &id("a"), &l, &Weights::default());
        assert_eq!(t[2], ("failed_here", -20.0));
    }

    fn fleet_worker(name: &str) -> WorkerRecord {
        WorkerRecord {
            id: id(name),
            capabilities: Capabilities {
                values: [
                    ("os".to_string(), "linux".to_string()),
                    ("host".to_string(), name.to_string()),
                ]
                .into(),
                tags: Default::default(),
                queues: vec!["default".into()],
            },
            slots: 1,
            free_slots: 1,
            running: vec![],
            state: gf_schemas::WorkerState::Active,
            version: "t".into(),
            hostname: name.into(),
            registered_at: Timestamp::from_unix_millis(0),
            last_heartbeat: Timestamp::from_unix_millis(0),
        }
    }

    /// The synthetic fleet: `flaky` fails 80 % of `build` jobs and runs `eval`
    /// fine. Each round two builds and one eval are placed on three one-slot workers by
    /// the planner's own choice ([`crate::plan::best_fit`]), run, and their records
    /// closed through the leader's view (outcome rows → estimates). After a few hundred
    /// jobs builds go mostly elsewhere while evals still use `flaky`; a worker that
    /// joins late still gets builds; `explain` shows the terms and the numbers.
    #[test]
    fn a_flaky_builder_loses_builds_keeps_evals_and_a_new_worker_gets_work() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};

        use crate::plan::{best_fit, explain, Policy, StartLog, View};
        let routing = Routing::default();
        let scoring = ScoringConfig::default();
        let mut view = View {
            outcomes: Some(crate::outcomes::Recorder::new(routing.clone())),
            learned: Learned::new(routing),
            ..Default::default()
        };
        let add_worker = |view: &mut View, name: &str| {
            let w = fleet_worker(name);
            view.apply_worker(
                name,
                async_nats::jetstream::kv::Operation::Put,
                &serde_json::to_vec(&w).unwrap(),
            );
        };
        for w in ["flaky", "good1", "good2"] {
            add_worker(&mut view, w);
        }
        let mut rng = StdRng::seed_from_u64(17);
        // (kind, worker) → placements, counted per phase.
        let mut early: HashMap<(String, String), u32> = HashMap::new();
        let mut late: HashMap<(String, String), u32> = HashMap::new();
        let mut joined: HashMap<(String, String), u32> = HashMap::new();
        let mut rev = 0u64;
        for round in 0..300i64 {
            if round == 200 {
                add_worker(&mut view, "fresh");
            }
            let now = Timestamp::from_unix_millis(round * 60_000);
            let mut free: Vec<WorkerRecord> = view.workers.values().cloned().collect();
            free.sort_by(|a, b| a.id.cmp(&b.id));
            let mut kinds: Vec<&str> = if round >= 200 {
                vec!["build", "build", "build", "eval"]
            } else {
                vec!["build", "build", "eval"]
            };
            // Jobs arrive in any order (the eval first a third of the time).
            let at = rng.random_range(0..kinds.len());
            kinds.swap(0, at);
            for kind in kinds {
                let mut spec = JobSpec::command(["./run.sh"]);
                spec.labels.insert("kind".into(), kind.to_string());
                let mut rec = JobRecord::new(JobId::new(), spec, now);
                // The first 50 rounds ran before learned placement (any free worker
                // took the job, as claims race today); the planner's choice after.
                let chosen = if round < 50 {
                    free[rng.random_range(0..free.len())].id.clone()
                } else {
                    best_fit(
                        &rec,
                        &scoring,
                        &view.learned,
                        now,
                        free.iter()
                            .map(|w| (w.id.clone(), &w.id, &w.capabilities, 1)),
                    )
                    .expect("a free worker")
                };
                free.retain(|w| w.id != chosen);
                let tally = match round {
                    0..100 => &mut early,
                    100..200 => &mut late,
                    _ => &mut joined,
                };
                *tally
                    .entry((kind.to_string(), chosen.to_string()))
                    .or_default() += 1;
                // Runs: the record as the view sees it running, then ended.
                rec.state = gf_schemas::JobState::Running;
                rec.epoch = 1;
                rec.attempts = 1;
                rec.history.push(Attempt {
                    epoch: 1,
                    worker: chosen.clone(),
                    started_at: now,
                    ended_at: None,
                    outcome: None,
                    ended_because: None,
                    artifact_errors: Vec::new(),
                });
                rev += 1;
                view.set_job(rec.clone(), rev);
                let fails = chosen.as_str() == "flaky" && kind == "build" && rng.random_bool(0.8);
                rec.history[0].ended_at =
                    Some(Timestamp::from_unix_millis(round * 60_000 + 30_000));
                rec.history[0].outcome = Some(if fails {
                    AttemptOutcome::Failed {
                        exit_code: Some(1),
                        error: "exit 1".into(),
                    }
                } else {
                    AttemptOutcome::Succeeded { exit_code: 0 }
                });
                rec.state = if fails {
                    gf_schemas::JobState::Dead
                } else {
                    gf_schemas::JobState::Succeeded
                };
                rev += 1;
                view.set_job(rec, rev);
            }
        }
        let n = |t: &HashMap<(String, String), u32>, k: &str, w: &str| {
            t.get(&(k.to_string(), w.to_string())).copied().unwrap_or(0)
        };
        assert!(
            n(&early, "build", "flaky") >= 10,
            "it got builds at first: {early:?}"
        );
        let builds_late: u32 = ["flaky", "good1", "good2"]
            .iter()
            .map(|w| n(&late, "build", w))
            .sum();
        assert_eq!(builds_late, 200);
        assert!(
            n(&late, "build", "flaky") * 10 <= builds_late,
            "builds go mostly elsewhere: {late:?}"
        );
        assert!(
            n(&late, "eval", "flaky") >= 80,
            "evals still use the flaky builder: {late:?}"
        );
        assert!(
            n(&joined, "build", "fresh") >= 50,
            "a new worker gets work: {joined:?}"
        );
        assert!(n(&joined, "build", "flaky") <= 15, "{joined:?}");
        // What `gf explain` shows for a build: the terms, and the numbers behind them.
        let mut spec = JobSpec::command(["./run.sh"]);
        spec.labels.insert("kind".into(), "build".into());
        let rec = JobRecord::new(JobId::new(), spec, Timestamp::from_unix_millis(0));
        let scoring_ref = &scoring;
        let policy = Policy {
            worker_timeout: std::time::Duration::from_secs(365 * 24 * 3600),
            scoring: scoring_ref,
            preemption_margin: None,
            limits: &[],
        };
        let e = explain(
            &rec,
            &view,
            &policy,
            &StartLog::default(),
            Timestamp::from_unix_millis(0),
        );
        let fit = |w: &str| e.workers.iter().find(|f| f.worker.as_str() == w).unwrap();
        let flaky = fit("flaky");
        let terms = &flaky.score.as_ref().unwrap().terms;
        assert!(terms["success"] < -20.0, "{terms:?}");
        let l = flaky.learned.as_ref().unwrap();
        assert!(l.success < 0.5 && l.kind_success > 0.6, "{l:?}");
        assert!(fit("good1").score.as_ref().unwrap().terms["success"] > 0.0);
        assert_eq!(
            fit("fresh").score.as_ref().unwrap().terms["failed_here"],
            0.0
        );
    }
}
