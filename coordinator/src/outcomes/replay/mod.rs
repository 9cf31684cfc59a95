//! Offline evaluation of placement weights (`gf outcomes replay`): exported outcome
//! rows are played again through the planner's own choice of worker
//! ([`crate::plan::best_fit`] with the learned terms) under two sets of weights, and
//! each replay is valued by what it would have changed.
//!
//! How a replay runs (pure and deterministic: same rows and weights, same report):
//! - **Arrivals.** Every attempt with a verdict (succeeded, failed, timed out, lease
//!   expired) is a job to place, arriving when it started in the record. Preempted,
//!   released and cancelled attempts are skipped (their end was nobody's doing).
//! - **Fleet.** The workers of the rows, each with its newest capabilities, the queues
//!   it ran, its slots (the most attempts it had open at once) and the window it was
//!   around in ([`fleet::Fleet`]).
//! - **Time.** An event simulation: waiting jobs are taken by priority then arrival,
//!   each placed by `best_fit` among the eligible workers with a free slot, holding it
//!   for the expected duration on that worker; a job finding no free slot waits.
//! - **Knowledge.** The planner learns as it would have: its estimates take in the
//!   recorded rows that had ended by the simulated time; `failed_here` sees the job's
//!   recorded earlier attempts.
//! - **Value.** A placement is valued with [`fleet::Oracle`], a decayless model fitted
//!   on the whole file: expected failures (1 − likely success), expected run time, the
//!   wait before a slot; the recorded placements are valued with the same model for
//!   reference. Fairness between products is Jain's index over each product's mean
//!   stretch ((wait + run) / the kind's mean run): 1 when every product is served alike.

mod fleet;
mod report;
pub mod synthetic;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};

use gf_schemas::outcome::{OutcomeClass, OutcomeRow};
use gf_schemas::{Attempt, AttemptOutcome, JobId, JobRecord, JobSpec, ScoreWeights, Timestamp};
use serde::Serialize;

use crate::plan::learned::Learned;
use crate::score::{ScoringConfig, Weights};
use fleet::{Fleet, Oracle};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ReplayError {
    #[error(
        "no outcome rows to replay: none succeeded, failed, timed out or lost its lease \
         (preempted, released and cancelled attempts are skipped)"
    )]
    Empty,
}

/// A named set of weights to replay with.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub label: String,
    pub weights: Weights,
}

impl Policy {
    /// The coordinator's default weights.
    pub fn defaults() -> Self {
        Self {
            label: "defaults".into(),
            weights: Weights::default(),
        }
    }

    /// Placement before learning: the learned terms weighted 0.
    pub fn unlearned() -> Self {
        Self {
            label: "learning off".into(),
            weights: Weights::default().overlay(&ScoreWeights {
                success: Some(0.0),
                speed: Some(0.0),
                failed_here: Some(0.0),
                ..Default::default()
            }),
        }
    }
}

/// Sums over a set of placed jobs.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Tally {
    pub jobs: usize,
    pub expected_failures: f64,
    /// Expected run seconds.
    pub run_secs: f64,
    /// Seconds from arrival to a slot.
    pub wait_secs: f64,
    /// Sum of (wait + run) / the kind's mean run.
    pub stretch: f64,
}

impl Tally {
    fn add(&mut self, fail: f64, run: f64, wait: f64, kind_secs: f64) {
        self.jobs += 1;
        self.expected_failures += fail;
        self.run_secs += run;
        self.wait_secs += wait;
        self.stretch += (wait + run) / kind_secs;
    }

    pub fn failure_rate(&self) -> f64 {
        self.expected_failures / self.jobs.max(1) as f64
    }

    /// Wait plus run.
    pub fn wall_secs(&self) -> f64 {
        self.wait_secs + self.run_secs
    }

    pub fn mean_stretch(&self) -> f64 {
        self.stretch / self.jobs.max(1) as f64
    }
}

/// One replay (or the record itself) valued.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Valued {
    pub label: String,
    /// The learned terms' weights (the others do not choose a worker in a replay).
    pub weights: BTreeMap<&'static str, f64>,
    pub total: Tally,
    pub per_product: BTreeMap<String, Tally>,
    pub per_kind: BTreeMap<String, Tally>,
    /// Jobs placed on another worker than the recorded one.
    pub moved: usize,
    /// Jain's index over the products' mean stretch, in (0, 1].
    pub fairness: f64,
}

impl Valued {
    fn new(label: &str, w: &Weights) -> Self {
        Self {
            label: label.to_string(),
            weights: [
                ("success", w.success),
                ("speed", w.speed),
                ("failed_here", w.failed_here),
            ]
            .into(),
            total: Tally::default(),
            per_product: BTreeMap::new(),
            per_kind: BTreeMap::new(),
            moved: 0,
            fairness: 1.0,
        }
    }

    fn add(&mut self, p: &Placement, fail: f64, run: f64, wait: f64, kind_secs: f64) {
        self.total.add(fail, run, wait, kind_secs);
        self.per_product
            .entry(p.record.spec.product.clone())
            .or_default()
            .add(fail, run, wait, kind_secs);
        self.per_kind
            .entry(p.kind.clone())
            .or_default()
            .add(fail, run, wait, kind_secs);
    }

    fn finish(&mut self) {
        let x: Vec<f64> = self.per_product.values().map(Tally::mean_stretch).collect();
        let (sum, sq) = x.iter().fold((0.0, 0.0), |(s, q), v| (s + v, q + v * v));
        self.fairness = if sq > 0.0 {
            sum * sum / (x.len() as f64 * sq)
        } else {
            1.0
        };
    }
}

/// Two weight sets replayed over one file, and the record valued alike.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Comparison {
    /// Rows read, replayed, and skipped (preempted, released, cancelled).
    pub rows: usize,
    pub replayed: usize,
    pub skipped: usize,
    pub workers: usize,
    pub kinds: usize,
    pub products: usize,
    /// Recorded attempts that failed (counted, not expected).
    pub recorded_failures: usize,
    /// The recorded placements valued by the model (no wait: the record has none).
    pub recorded: Valued,
    pub a: Valued,
    pub b: Valued,
    /// B's expected failures − A's: what A avoids against B.
    pub failures_avoided: f64,
    /// B's wall seconds (wait + run) − A's.
    pub wall_secs_saved: f64,
}

impl Comparison {
    /// The report `gf outcomes replay` prints.
    pub fn render(&self) -> String {
        report::render(self)
    }
}

/// A job to place: one recorded attempt.
struct Placement {
    arrival_ms: i64,
    priority: u8,
    kind: String,
    recorded: usize,
    /// The job as the planner would see it: spec from the row, history = the job's
    /// recorded earlier attempts.
    record: JobRecord,
    eligible: Vec<usize>,
}

/// The rows prepared once for any number of replays.
struct Prepared<'r> {
    fleet: Fleet,
    oracle: Oracle,
    /// Sorted by arrival (then job and epoch).
    placements: Vec<Placement>,
    /// The rows with a verdict in the order they ended: what the planner learns from.
    feed: Vec<&'r OutcomeRow>,
}

/// Replays `rows` with `a` and with `b`.
pub fn compare(rows: &[OutcomeRow], a: &Policy, b: &Policy) -> Result<Comparison, ReplayError> {
    let rows = super::dedup(rows.to_vec());
    let prepared = Prepared::of(&rows)?;
    let recorded = prepared.recorded();
    let recorded_failures = prepared
        .feed
        .iter()
        .filter(|r| r.outcome.verdict() == Some(false))
        .count();
    let va = prepared.run(a);
    let vb = prepared.run(b);
    Ok(Comparison {
        rows: rows.len(),
        replayed: prepared.placements.len(),
        skipped: rows.len() - prepared.placements.len(),
        workers: prepared.fleet.workers.len(),
        kinds: recorded.per_kind.len(),
        products: recorded.per_product.len(),
        recorded_failures,
        failures_avoided: vb.total.expected_failures - va.total.expected_failures,
        wall_secs_saved: vb.total.wall_secs() - va.total.wall_secs(),
        recorded,
        a: va,
        b: vb,
    })
}

/// The attempt a row records, as a job's history holds it.
fn attempt_of(r: &OutcomeRow) -> Attempt {
    let outcome = match r.outcome {
        OutcomeClass::Succeeded => Some(AttemptOutcome::Succeeded {
            exit_code: r.exit_code.unwrap_or(0),
        }),
        OutcomeClass::Failed => Some(AttemptOutcome::Failed {
            exit_code: r.exit_code,
            error: r.why.clone().unwrap_or_default(),
        }),
        OutcomeClass::TimedOut => Some(AttemptOutcome::TimedOut {
            after_secs: r.duration_ms / 1000,
        }),
        _ => None,
    };
    // Without an outcome the class is read back from why it ended.
    let because = match r.outcome {
        OutcomeClass::Preempted => Some("preempted".to_string()),
        OutcomeClass::Released => Some("released".to_string()),
        OutcomeClass::Cancelled => Some("cancelled".to_string()),
        OutcomeClass::LeaseExpired => Some("lease expired".to_string()),
        _ => None,
    };
    Attempt {
        epoch: r.epoch,
        worker: r.worker.clone(),
        started_at: r.started_at,
        ended_at: Some(r.ended_at),
        outcome,
        ended_because: because,
        artifact_errors: Vec::new(),
    }
}

fn spec_of(r: &OutcomeRow) -> JobSpec {
    let mut spec = JobSpec::command([r.kind.clone()]);
    spec.labels.insert("kind".into(), r.kind.clone());
    spec.queue = r.queue.clone();
    spec.product = r.product.clone();
    spec.priority = r.priority;
    spec.requires = r.requires.clone();
    spec.tags = r.tags.clone();
    spec
}

impl<'r> Prepared<'r> {
    fn of(rows: &'r [OutcomeRow]) -> Result<Self, ReplayError> {
        let all: Vec<&OutcomeRow> = rows.iter().collect();
        let mut feed: Vec<&OutcomeRow> = rows
            .iter()
            .filter(|r| r.outcome.verdict().is_some())
            .collect();
        if feed.is_empty() {
            return Err(ReplayError::Empty);
        }
        feed.sort_by_key(|r| (r.ended_at, r.job_id, r.epoch));
        // Every worker that held an attempt holds a slot in the replay.
        let fleet = Fleet::of(&all);
        let oracle = Oracle::of(&feed, &fleet);
        let mut by_job: HashMap<JobId, Vec<&OutcomeRow>> = HashMap::new();
        for r in &all {
            by_job.entry(r.job_id).or_default().push(r);
        }
        for v in by_job.values_mut() {
            v.sort_by_key(|r| r.epoch);
        }
        let mut placements: Vec<(&OutcomeRow, Placement)> = feed
            .iter()
            .map(|r| {
                let spec = spec_of(r);
                let mut record = JobRecord::new(r.job_id, spec, r.started_at);
                record.history = by_job[&r.job_id]
                    .iter()
                    .filter(|e| e.epoch < r.epoch)
                    .map(|e| attempt_of(e))
                    .collect();
                record.attempts = record.history.len() as u32;
                let recorded = fleet.index(&r.worker);
                let at = r.started_at.unix_millis();
                let eligible = fleet.eligible(&record.spec, at, recorded);
                let p = Placement {
                    arrival_ms: at,
                    priority: r.priority,
                    kind: r.kind.clone(),
                    recorded,
                    record,
                    eligible,
                };
                (*r, p)
            })
            .collect();
        placements.sort_by_key(|(r, p)| (p.arrival_ms, r.job_id, r.epoch));
        Ok(Self {
            fleet,
            oracle,
            placements: placements.into_iter().map(|(_, p)| p).collect(),
            feed,
        })
    }

    /// The recorded placements valued by the model.
    fn recorded(&self) -> Valued {
        let mut v = Valued::new("recorded", &Weights::default());
        v.weights.clear();
        for p in &self.placements {
            let (fail, run) = self.value(p, p.recorded);
            v.add(p, fail, run, 0.0, self.oracle.kind_secs(&p.kind));
        }
        v.finish();
        v
    }

    /// Expected failure and run seconds of `p` on worker `w`.
    fn value(&self, p: &Placement, w: usize) -> (f64, f64) {
        (
            1.0 - self.oracle.success(&self.fleet, &p.kind, w),
            self.oracle.secs(&self.fleet, &p.kind, w),
        )
    }

    /// One replay: the event simulation described in the module's header.
    fn run(&self, policy: &Policy) -> Valued {
        let scoring = ScoringConfig {
            defaults: policy.weights.clone(),
            ..Default::default()
        };
        let mut learned = Learned::default();
        for w in &self.fleet.workers {
            if let Some(p) = &w.profile {
                learned.note_profile(&w.id, p);
            }
        }
        let mut out = Valued::new(&policy.label, &policy.weights);
        let mut free: Vec<u32> = self.fleet.workers.iter().map(|w| w.slots).collect();
        let mut free_total: u32 = free.iter().sum();
        // (end ms, worker): slots to give back.
        let mut running: BinaryHeap<Reverse<(i64, usize)>> = BinaryHeap::new();
        // (priority, arrival ms, placement): the most urgent first, then the oldest.
        let mut waiting: BTreeSet<(u8, i64, usize)> = BTreeSet::new();
        let (mut arrived, mut fed) = (0usize, 0usize);
        let mut now = self.placements[0].arrival_ms;
        loop {
            while let Some(&Reverse((end, w))) = running.peek() {
                if end > now {
                    break;
                }
                running.pop();
                free[w] += 1;
                free_total += 1;
            }
            while let Some(p) = self.placements.get(arrived) {
                if p.arrival_ms > now {
                    break;
                }
                waiting.insert((p.priority, p.arrival_ms, arrived));
                arrived += 1;
            }
            while let Some(r) = self.feed.get(fed) {
                if r.ended_at.unix_millis() > now {
                    break;
                }
                learned.observe(r);
                fed += 1;
            }
            let mut placed = Vec::new();
            for &key in &waiting {
                if free_total == 0 {
                    break;
                }
                let p = &self.placements[key.2];
                let candidates = p.eligible.iter().filter(|w| free[**w] > 0).map(|&w| {
                    let worker = &self.fleet.workers[w];
                    (w, &worker.id, &worker.caps, i64::from(free[w]))
                });
                let chosen = crate::plan::best_fit(
                    &p.record,
                    &scoring,
                    &learned,
                    Timestamp::from_unix_millis(now),
                    candidates,
                );
                let Some(w) = chosen else { continue };
                free[w] -= 1;
                free_total -= 1;
                let (fail, run) = self.value(p, w);
                running.push(Reverse((now + (run * 1000.0).ceil() as i64, w)));
                let wait = (now - p.arrival_ms) as f64 / 1000.0;
                out.add(p, fail, run, wait, self.oracle.kind_secs(&p.kind));
                out.moved += usize::from(w != p.recorded);
                placed.push(key);
            }
            for key in placed {
                waiting.remove(&key);
            }
            let next_end = running.peek().map(|r| r.0 .0);
            let next_arrival = self.placements.get(arrived).map(|p| p.arrival_ms);
            match next_end.into_iter().chain(next_arrival).min() {
                Some(t) => now = t.max(now),
                // Nothing runs or arrives: every job was placed (each one's recorded
                // worker frees a slot eventually).
                None => break,
            }
        }
        debug_assert!(waiting.is_empty());
        out.finish();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(success: f64, speed: f64, failed_here: f64) -> Policy {
        Policy {
            label: format!("{success}/{speed}/{failed_here}"),
            weights: Weights::default().overlay(&ScoreWeights {
                success: Some(success),
                speed: Some(speed),
                failed_here: Some(failed_here),
                ..Default::default()
            }),
        }
    }

    /// On the synthetic fleet (a worker failing most builds, a slow one, a fast one
    /// joining late, a GPU worker) learned placement avoids expected failures and wall
    /// time against placement without it, moves builds off the flaky worker, keeps
    /// GPU jobs on the GPU worker, and the same input gives the same report.
    #[test]
    fn learned_weights_beat_no_learning_on_the_synthetic_fleet() {
        let rows = synthetic::synthetic(3000, 11);
        assert_eq!(rows.len(), 3000);
        let c = compare(&rows, &Policy::defaults(), &Policy::unlearned()).unwrap();
        assert_eq!(c.replayed + c.skipped, 3000);
        assert_eq!(c.a.total.jobs, c.replayed, "every job placed");
        assert_eq!(c.b.total.jobs, c.replayed);
        assert!(
            c.failures_avoided > 0.05 * c.replayed as f64,
            "{}",
            c.render()
        );
        let build = |v: &Valued| v.per_kind["build"].failure_rate();
        assert!(build(&c.a) < build(&c.b) * 0.7, "{}", c.render());
        // The record (random claims) fares like placement without learning.
        assert!(
            (c.recorded.total.failure_rate() - c.b.total.failure_rate()).abs() < 0.05,
            "{}",
            c.render()
        );
        assert!(c.a.fairness > 0.0 && c.a.fairness <= 1.0 + 1e-9);
        assert_eq!(
            c,
            compare(&rows, &Policy::defaults(), &Policy::unlearned()).unwrap()
        );
        assert_eq!(
            c.render(),
            compare(&rows, &Policy::defaults(), &Policy::unlearned())
                .unwrap()
                .render()
        );
    }

    /// Equal weights give equal replays: nothing avoided, nothing saved.
    #[test]
    fn a_set_against_itself_changes_nothing() {
        let rows = synthetic::synthetic(800, 3);
        let c = compare(&rows, &set(1.0, 0.5, 1.0), &set(1.0, 0.5, 1.0)).unwrap();
        assert_eq!(c.a.total, c.b.total);
        assert_eq!((c.failures_avoided, c.wall_secs_saved), (0.0, 0.0));
    }

    /// The speed term alone sends work to faster workers: less run time than without.
    #[test]
    fn speed_alone_saves_run_time() {
        let rows = synthetic::synthetic(2000, 5);
        let c = compare(&rows, &set(0.0, 2.0, 0.0), &set(0.0, 0.0, 0.0)).unwrap();
        assert!(c.a.total.run_secs < c.b.total.run_secs, "{}", c.render());
    }

    /// A preempted attempt is skipped; capacity holds: on one one-slot worker the
    /// second job waits for the first (valued at the mean duration, longer than the
    /// recorded first run).
    #[test]
    fn one_slot_makes_the_second_job_wait() {
        let rows = synthetic::two_jobs_one_worker();
        let c = compare(&rows, &Policy::defaults(), &Policy::unlearned()).unwrap();
        assert_eq!((c.replayed, c.skipped, c.workers), (2, 1, 1));
        assert_eq!(c.a.total.jobs, 2);
        assert!(c.a.total.wait_secs > 0.0, "{c:?}");
        assert_eq!(c.a.total, c.b.total, "one worker: no choice to make");
    }

    #[test]
    fn nothing_to_replay_is_an_error() {
        assert_eq!(
            compare(&[], &Policy::defaults(), &Policy::unlearned()),
            Err(ReplayError::Empty)
        );
    }
}
