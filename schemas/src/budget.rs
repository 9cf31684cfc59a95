//! Budgets per product, cron schedules, and scheduling explanations.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{JobId, JobSpec, JobState, Score, Timestamp, WorkerId};

/// A product's budget (value of `gf_budgets.<product>`). Spend is added from the usage
/// jobs report, exactly once per reported attempt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Budget {
    pub product: String,
    /// Cost units per period; `None` is unlimited.
    #[serde(default)]
    pub limit_cost: Option<f64>,
    /// Tokens (input + output) per period; `None` is unlimited.
    #[serde(default)]
    pub limit_tokens: Option<u64>,
    /// Worker-hours (attempt wall time summed over workers) per period; `None` is
    /// unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_worker_hours: Option<f64>,
    /// Period length in seconds; `None` never resets.
    #[serde(default)]
    pub period_secs: Option<u64>,
    pub period_start: Timestamp,
    #[serde(default)]
    pub spent_cost: f64,
    #[serde(default)]
    pub spent_tokens: u64,
    #[serde(default)]
    pub spent_worker_hours: f64,
    /// No dispatches while paused.
    #[serde(default)]
    pub paused: bool,
    /// Usage stream sequence last added; a redelivered entry at or below it is skipped.
    #[serde(default)]
    pub last_seq: u64,
    /// Spend over time for a burn-down chart (cumulative within the period), newest last.
    #[serde(default)]
    pub history: Vec<SpendPoint>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SpendPoint {
    pub time: Timestamp,
    pub cost: f64,
    pub tokens: u64,
    #[serde(default)]
    pub worker_hours: f64,
}

/// At most this many points of history are kept per budget.
pub const MAX_HISTORY: usize = 500;
/// Longest budget period accepted (100 years): longer ones are refused rather than
/// stored, so period arithmetic never reaches the edge of representable time.
pub const MAX_PERIOD_SECS: u64 = 100 * 365 * 24 * 3600;

impl Budget {
    pub fn new(product: &str, now: Timestamp) -> Self {
        Self {
            product: product.into(),
            limit_cost: None,
            limit_tokens: None,
            limit_worker_hours: None,
            period_secs: None,
            period_start: now,
            spent_cost: 0.0,
            spent_tokens: 0,
            spent_worker_hours: 0.0,
            paused: false,
            last_seq: 0,
            history: Vec::new(),
        }
    }

    /// Why no new work may start for this product, if so.
    pub fn blocked(&self) -> Option<String> {
        if self.paused {
            return Some(format!("budget: product {} is paused", self.product));
        }
        if let Some(l) = self.limit_cost {
            if self.spent_cost >= l {
                return Some(format!(
                    "budget: product {} spent {:.4} of {l} cost units",
                    self.product, self.spent_cost
                ));
            }
        }
        if let Some(l) = self.limit_tokens {
            if self.spent_tokens >= l {
                return Some(format!(
                    "budget: product {} used {} of {l} tokens",
                    self.product, self.spent_tokens
                ));
            }
        }
        if let Some(l) = self.limit_worker_hours {
            if self.spent_worker_hours >= l {
                return Some(format!(
                    "budget: product {} used {:.2} of {l} worker-hours",
                    self.product, self.spent_worker_hours
                ));
            }
        }
        None
    }

    /// Starts a new period when the current one is over. `true` if it did.
    pub fn roll_period(&mut self, now: Timestamp) -> bool {
        let Some(p) = self.period_secs else {
            return false;
        };
        let len = std::time::Duration::from_secs(p.max(1));
        if self.period_start.plus(len) > now {
            return false;
        }
        // Whole periods elapsed, in one step (a 1 s period idle for a year is 31M steps).
        let elapsed = now.since(self.period_start).as_secs() / len.as_secs();
        let skip = std::time::Duration::from_secs(elapsed.saturating_mul(len.as_secs()));
        self.period_start = self.period_start.plus(skip);
        self.spent_cost = 0.0;
        self.spent_tokens = 0;
        self.spent_worker_hours = 0.0;
        true
    }

    /// Adds one usage entry with stream sequence `seq`; `false` if already added.
    pub fn add(&mut self, seq: u64, cost: f64, tokens: u64, now: Timestamp) -> bool {
        self.add_entry(seq, cost, tokens, 0.0, now)
    }

    /// [`Budget::add`] with worker time as well (seconds of attempts that ran).
    pub fn add_entry(
        &mut self,
        seq: u64,
        cost: f64,
        tokens: u64,
        worker_secs: f64,
        now: Timestamp,
    ) -> bool {
        if seq <= self.last_seq {
            return false;
        }
        self.roll_period(now);
        self.last_seq = seq;
        self.spent_cost += cost;
        self.spent_tokens += tokens;
        self.spent_worker_hours += worker_secs.max(0.0) / 3600.0;
        self.history.push(SpendPoint {
            time: now,
            cost: self.spent_cost,
            tokens: self.spent_tokens,
            worker_hours: self.spent_worker_hours,
        });
        if self.history.len() > MAX_HISTORY {
            let drop = self.history.len() - MAX_HISTORY;
            self.history.drain(..drop);
        }
        true
    }
}

/// One usage report on the `GF_USAGE` stream, published once per accepted completion
/// (deduplicated by `Nats-Msg-Id` = job and epoch).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UsageEntry {
    pub job_id: JobId,
    pub epoch: u64,
    pub product: String,
    pub cost: f64,
    pub tokens: u64,
    /// Seconds of worker time (attempts that ended), for worker-hour limits. Published
    /// by the scheduler leader, summed per product, apart from cost and tokens.
    #[serde(default)]
    pub worker_secs: f64,
}

/// A cron schedule (value of `gf_schedules.<name>`) that submits `spec` at each tick.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    pub name: String,
    /// Cron expression with seconds: `sec min hour day-of-month month day-of-week`;
    /// five fields mean second 0.
    pub cron: String,
    pub spec: JobSpec,
    #[serde(default)]
    pub paused: bool,
    /// The last tick a job was submitted for.
    #[serde(default)]
    pub last_tick: Option<Timestamp>,
}

/// How one live worker fits a job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WorkerFit {
    pub worker: WorkerId,
    /// `None` when the worker could run the job.
    pub missing: Option<String>,
    pub free_slots: i64,
    /// The job's score with this worker (affinity and the learned terms differ per
    /// worker).
    pub score: Option<Score>,
    /// The numbers behind the learned terms, once the job's kind has outcomes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learned: Option<LearnedFit>,
}

/// What finished attempts say about one worker for one kind of job (smoothed).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LearnedFit {
    pub kind: String,
    /// Likely success on this worker, and the kind's rate over every worker.
    pub success: f64,
    pub kind_success: f64,
    /// Attempts of the kind on this worker behind the estimate (decayed).
    pub observed: f64,
    /// Typical seconds on this worker, and the kind's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secs: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind_secs: Option<f64>,
}

/// Why a job is where it is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Explanation {
    pub job_id: JobId,
    pub state: JobState,
    #[serde(default)]
    pub reason: Option<String>,
    /// One sentence for humans.
    pub summary: String,
    /// Score with the coordinator's weights, without affinity.
    pub score: Score,
    /// Every live worker and whether it fits.
    pub workers: Vec<WorkerFit>,
    /// What holds the job back right now (dependencies, budget, limits, time).
    pub waiting_for: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_unix_millis(s * 1000)
    }

    /// Spend is added once per sequence, blocks at the limit, and resets each period.
    #[test]
    fn budget_accounting() {
        let mut b = Budget::new("p", t(0));
        b.limit_cost = Some(1.0);
        b.period_secs = Some(100);
        assert!(b.add(1, 0.6, 10, t(1)));
        assert!(!b.add(1, 0.6, 10, t(2)), "same entry twice");
        assert!(b.blocked().is_none());
        assert!(b.add(2, 0.4, 10, t(3)));
        assert!(b.blocked().unwrap().contains("spent 1.0000 of 1"));
        assert!(b.roll_period(t(250)));
        assert_eq!((b.spent_cost, b.period_start), (0.0, t(200)));
        assert!(b.blocked().is_none());
        b.paused = true;
        assert!(b.blocked().unwrap().contains("paused"));
    }

    /// Worker time blocks at its limit like cost, and resets with the period.
    #[test]
    fn worker_hour_budget() {
        let mut b = Budget::new("p", t(0));
        b.limit_worker_hours = Some(1.0);
        b.period_secs = Some(100);
        assert!(b.add_entry(1, 0.0, 0, 1800.0, t(1)));
        assert!(b.blocked().is_none());
        assert!(!b.add_entry(1, 0.0, 0, 1800.0, t(2)), "same entry twice");
        assert!(b.add_entry(2, 0.0, 0, 1800.0, t(3)));
        let why = b.blocked().expect("at the limit");
        assert!(why.contains("used 1.00 of 1 worker-hours"), "{why}");
        assert_eq!(b.history.last().map(|p| p.worker_hours), Some(1.0));
        assert!(b.roll_period(t(150)));
        assert_eq!(b.spent_worker_hours, 0.0);
        assert!(b.blocked().is_none());
    }
}
