//! Job scores: a weighted sum of terms, each kept so decisions can be explained.
//!
//! `priority` (9 − priority level), `waiting` (minutes since the job became ready,
//! capped at 30, so aging lifts a job at most three levels), `retry` (− attempts made), `product` (the product's weight),
//! `affinity` (preferred capabilities the worker offers), `cost` (− `max_cost`).
//! Weights: per submission, else per product, else the coordinator's defaults.

use std::collections::BTreeMap;
use std::time::Duration;

use gf_schemas::{Capabilities, JobRecord, JobSpec, Score, ScoreWeights, Timestamp};

#[derive(Clone, Debug, PartialEq)]
pub struct Weights {
    pub priority: f64,
    pub waiting: f64,
    pub retry: f64,
    pub product: f64,
    pub affinity: f64,
    pub cost: f64,
    /// Learned placement terms (see `plan::learned`): likely success on the worker for
    /// this kind of job, speed on it, and this job's own failures on it.
    pub success: f64,
    pub speed: f64,
    pub failed_here: f64,
}

impl Default for Weights {
    /// Priority dominates (one level = 10 minutes of waiting), retries are mildly
    /// penalised, cost is ignored unless configured.
    fn default() -> Self {
        Self {
            priority: 10.0,
            waiting: 1.0,
            retry: 2.0,
            product: 1.0,
            affinity: 5.0,
            cost: 0.0,
            // Picked with `gf outcomes replay` on synthetic fleets: speed weighted like
            // success avoided more failures and saved more wall time than half of it
            // (docs/scheduling.md, "Replaying outcomes").
            success: 1.0,
            speed: 1.0,
            failed_here: 1.0,
        }
    }
}

impl Weights {
    /// These weights with `o`'s values where it has them.
    pub fn overlay(&self, o: &ScoreWeights) -> Self {
        Self {
            priority: o.priority.unwrap_or(self.priority),
            waiting: o.waiting.unwrap_or(self.waiting),
            retry: o.retry.unwrap_or(self.retry),
            product: o.product.unwrap_or(self.product),
            affinity: o.affinity.unwrap_or(self.affinity),
            cost: o.cost.unwrap_or(self.cost),
            success: o.success.unwrap_or(self.success),
            speed: o.speed.unwrap_or(self.speed),
            failed_here: o.failed_here.unwrap_or(self.failed_here),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScoringConfig {
    pub defaults: Weights,
    /// Weight overrides per product.
    pub per_product: BTreeMap<String, ScoreWeights>,
    /// Each product's weight (the `product` term's base), default 0.
    pub product_weight: BTreeMap<String, f64>,
}

impl ScoringConfig {
    /// Submission over product over defaults.
    pub fn weights_for(&self, spec: &JobSpec) -> Weights {
        let mut w = self.defaults.clone();
        if let Some(p) = self.per_product.get(&spec.product) {
            w = w.overlay(p);
        }
        if let Some(s) = &spec.weights {
            w = w.overlay(s);
        }
        w
    }
}

/// When the job became ready to run: submission, or the end of its last attempt that
/// reported an outcome. An attempt lost with its worker (lease expired, given back,
/// preempted) does not restart the wait: the job goes back where it stood, so a dead
/// worker's jobs run again promptly instead of queueing behind everything submitted
/// since.
pub fn ready_since(rec: &JobRecord) -> Timestamp {
    let last = rec
        .history
        .iter()
        .filter(|a| a.outcome.is_some())
        .filter_map(|a| a.ended_at)
        .max();
    let base = last.map_or(rec.submitted_at, |t| t.max(rec.submitted_at));
    rec.retry_at.map_or(base, |r| r.max(base))
}

/// Attempts that count against the job's rank: those that ran and failed, not those
/// lost with their worker.
fn failed_attempts(rec: &JobRecord) -> u32 {
    let lost = rec
        .history
        .iter()
        .filter(|a| a.outcome.is_none() && a.ended_at.is_some())
        .count();
    rec.attempts.saturating_sub(lost as u32)
}

/// The job's score at `now`, with `worker`'s affinity if one is given.
pub fn score(
    rec: &JobRecord,
    worker: Option<&Capabilities>,
    cfg: &ScoringConfig,
    now: Timestamp,
) -> Score {
    let terms = terms(rec, worker, cfg, now);
    Score {
        total: sum(&terms),
        terms: terms.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
    }
}

/// `score(..).total` without building the breakdown: the planner ranks every
/// candidate on each pass and keeps the breakdown only for what it dispatches.
pub fn total(
    rec: &JobRecord,
    worker: Option<&Capabilities>,
    cfg: &ScoringConfig,
    now: Timestamp,
) -> f64 {
    sum(&terms(rec, worker, cfg, now))
}

fn sum(terms: &[(&str, f64)]) -> f64 {
    round(terms.iter().map(|(_, v)| v).sum())
}

/// Each term, rounded; the one place the formula lives.
fn terms(
    rec: &JobRecord,
    worker: Option<&Capabilities>,
    cfg: &ScoringConfig,
    now: Timestamp,
) -> [(&'static str, f64); 6] {
    let fixed = Fixed::of(rec, cfg);
    let affinity_hits = worker.map_or(0, |c| {
        rec.spec
            .prefer
            .iter()
            .filter(|(k, v)| c.values.get(*k) == Some(*v))
            .count()
    });
    fixed.terms(now.since(ready_since(rec)), affinity_hits)
}

/// The terms of a job's score that do not change while it waits (each rounded), and
/// the weights of the two that do: the planner's backlog index keeps these per group
/// of jobs and scores with [`Fixed::total`], the same arithmetic as [`total`].
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Fixed {
    pub priority: f64,
    pub retry: f64,
    pub product: f64,
    pub cost: f64,
    /// The waiting term's weight: the term is `min(minutes waited, 30) × waiting`.
    pub waiting: f64,
    affinity: f64,
}

impl Fixed {
    pub fn of(rec: &JobRecord, cfg: &ScoringConfig) -> Self {
        let spec = &rec.spec;
        let w = cfg.weights_for(spec);
        Self {
            priority: round(f64::from(9u8.saturating_sub(spec.priority)) * w.priority),
            retry: round(-f64::from(failed_attempts(rec)) * w.retry),
            product: round(
                cfg.product_weight
                    .get(&spec.product)
                    .copied()
                    .unwrap_or(0.0)
                    * w.product,
            ),
            cost: round(-spec.max_cost.unwrap_or(0.0) * w.cost),
            waiting: w.waiting,
            affinity: w.affinity,
        }
    }

    /// Every term, for a job that has waited `waited` since it became ready, on a
    /// worker offering `affinity_hits` of its preferred capabilities.
    fn terms(&self, waited: Duration, affinity_hits: usize) -> [(&'static str, f64); 6] {
        let waited_min = (waited.as_secs_f64() / 60.0).min(30.0);
        [
            ("priority", self.priority),
            ("waiting", round(waited_min * self.waiting)),
            ("retry", self.retry),
            ("product", self.product),
            ("affinity", round(affinity_hits as f64 * self.affinity)),
            ("cost", self.cost),
        ]
    }

    /// The score without a worker (as the planner ranks) after waiting `waited`:
    /// exactly `total(rec, None, cfg, now)` for `waited = now.since(ready_since(rec))`.
    pub fn total(&self, waited: Duration) -> f64 {
        sum(&self.terms(waited, 0))
    }

    /// The sum of the fixed terms: with the waiting term, within rounding of the score
    /// (the backlog index orders groups by it; [`Fixed::total`] is the exact score).
    pub fn base(&self) -> f64 {
        self.priority + self.retry + self.product + self.cost
    }
}

fn round(x: f64) -> f64 {
    // `+ 0.0` turns a negative zero (e.g. −0 attempts × weight) into 0.
    (x * 1000.0).round() / 1000.0 + 0.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use gf_schemas::JobId;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_unix_millis(1_800_000_000_000 + s * 1000)
    }
    fn rec(priority: u8) -> JobRecord {
        let mut s = JobSpec::command(["x"]);
        s.priority = priority;
        JobRecord::new(JobId::new(), s, t(0))
    }

    /// Each term is computed from fixed inputs and the total is their sum.
    #[test]
    fn terms_and_total() {
        let mut r = rec(2);
        r.attempts = 1;
        r.spec.product = "acme".into();
        r.spec.prefer.insert("region".into(), "eu".into());
        r.spec.max_cost = Some(3.0);
        let mut cfg = ScoringConfig::default();
        cfg.product_weight.insert("acme".into(), 4.0);
        cfg.defaults.cost = 1.0;
        let caps = Capabilities {
            values: [("region".to_string(), "eu".to_string())].into(),
            ..Default::default()
        };
        let s = score(&r, Some(&caps), &cfg, t(120));
        let term = |k: &str| s.terms[k];
        assert_eq!(term("priority"), 70.0);
        assert_eq!(term("waiting"), 2.0);
        assert_eq!(term("retry"), -2.0);
        assert_eq!(term("product"), 4.0);
        assert_eq!(term("affinity"), 5.0);
        assert_eq!(term("cost"), -3.0);
        assert_eq!(s.total, 76.0);
        assert_eq!(total(&r, Some(&caps), &cfg, t(120)), s.total);
        assert_eq!(score(&r, None, &cfg, t(120)).terms["affinity"], 0.0);
    }

    /// A job whose attempt was lost with its worker keeps its rank: no retry penalty
    /// and its wait counts from submission. A failed attempt costs both.
    #[test]
    fn lost_attempt_keeps_rank() {
        let cfg = ScoringConfig::default();
        let attempt = |outcome| gf_schemas::Attempt {
            epoch: 1,
            worker: gf_schemas::WorkerId::new("w").expect("id"),
            started_at: t(10),
            ended_at: Some(t(50)),
            outcome,
            ended_because: None,
            artifact_errors: Vec::new(),
        };
        let mut lost = rec(5);
        lost.attempts = 1;
        lost.history.push(attempt(None));
        let mut failed = lost.clone();
        failed.history[0] = attempt(Some(gf_schemas::AttemptOutcome::Failed {
            exit_code: Some(1),
            error: "boom".into(),
        }));
        let fresh = rec(5);
        let at = t(120);
        assert_eq!(score(&lost, None, &cfg, at), score(&fresh, None, &cfg, at));
        let s = score(&failed, None, &cfg, at);
        assert_eq!(s.terms["retry"], -2.0);
        assert!(s.terms["waiting"] < score(&fresh, None, &cfg, at).terms["waiting"]);
    }

    /// A P0 job outranks a P5 job that has waited for ever (the waiting term is capped).
    #[test]
    fn priority_beats_waiting() {
        let cfg = ScoringConfig::default();
        let old_low = score(&rec(5), None, &cfg, t(100_000));
        let mut new_high = rec(0);
        new_high.submitted_at = t(100_000);
        assert!(score(&new_high, None, &cfg, t(100_000)).total > old_low.total);
    }

    /// Submission weights override product weights, which override the defaults.
    #[test]
    fn weights_layer() {
        let mut cfg = ScoringConfig::default();
        cfg.per_product.insert(
            "p".into(),
            ScoreWeights {
                priority: Some(1.0),
                retry: Some(7.0),
                ..Default::default()
            },
        );
        let mut s = JobSpec::command(["x"]);
        s.product = "p".into();
        s.weights = Some(Box::new(ScoreWeights {
            priority: Some(3.0),
            ..Default::default()
        }));
        let w = cfg.weights_for(&s);
        assert_eq!((w.priority, w.retry, w.waiting), (3.0, 7.0, 1.0));
    }
}
