//! Outcome rows: one per finished attempt, the features scheduling learns from
//! (stream `GF_OUTCOMES`, exported by `gf outcomes export` as JSON Lines).

use std::collections::{BTreeMap, BTreeSet};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Attempt, AttemptOutcome, JobId, JobRecord, Timestamp, WorkerId};

/// How an attempt ended, as a class the scheduler can learn from.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeClass {
    Succeeded,
    Failed,
    TimedOut,
    /// The worker stopped renewing its lease (crashed, cut off, paused).
    LeaseExpired,
    /// Taken back for a more urgent job; not the worker's doing.
    Preempted,
    /// Given back by the worker (shutdown, drain).
    Released,
    Cancelled,
}

impl OutcomeClass {
    /// Whether the attempt says something about the worker: `Some(true)` for a
    /// success, `Some(false)` for a failure it is answerable for (a failed or timed-out
    /// run, a lost lease), `None` for endings that are nobody's fault (preempted,
    /// released, cancelled).
    pub fn verdict(self) -> Option<bool> {
        match self {
            Self::Succeeded => Some(true),
            Self::Failed | Self::TimedOut | Self::LeaseExpired => Some(false),
            Self::Preempted | Self::Released | Self::Cancelled => None,
        }
    }

    /// Classifies a closed attempt from what the record keeps of it.
    pub fn of(attempt: &Attempt) -> Self {
        match (&attempt.outcome, attempt.ended_because.as_deref()) {
            (Some(AttemptOutcome::Succeeded { .. }), _) => Self::Succeeded,
            (Some(AttemptOutcome::Failed { .. }), _) => Self::Failed,
            (Some(AttemptOutcome::TimedOut { .. }), _) => Self::TimedOut,
            (None, Some(b)) if b.starts_with("preempted") || b.starts_with("taken back") => {
                Self::Preempted
            }
            (None, Some(b)) if b.starts_with("released") => Self::Released,
            (None, Some(b)) if b.starts_with("cancelled") => Self::Cancelled,
            (None, _) => Self::LeaseExpired,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
            Self::LeaseExpired => "lease_expired",
            Self::Preempted => "preempted",
            Self::Released => "released",
            Self::Cancelled => "cancelled",
        }
    }
}

/// One finished attempt with the features placement learns from. Published by the
/// scheduler leader (JSON arrays of rows on `gf.outcomes.<product>`); a reader keeps
/// the first row per (`job_id`, `epoch`), since a leader change may repeat one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OutcomeRow {
    pub job_id: JobId,
    pub epoch: u64,
    /// 1 for the job's first attempt, counting every attempt started.
    pub attempt: u32,
    /// The job's kind ([`crate::profile::kind`]).
    pub kind: String,
    pub worker: WorkerId,
    /// The worker's profile (its dispatch consumer's name: workers with the same
    /// queues, capabilities and tags share it); absent if the worker was unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_profile: Option<String>,
    /// The worker's capabilities (`key=value`) and tags.
    #[serde(default)]
    pub capabilities: BTreeMap<String, String>,
    #[serde(default)]
    pub worker_tags: BTreeSet<String>,
    pub queue: String,
    pub product: String,
    pub priority: u8,
    /// What the job required (`key=value`) and its required tags.
    #[serde(default)]
    pub requires: BTreeMap<String, String>,
    #[serde(default)]
    pub tags: BTreeSet<String>,
    pub outcome: OutcomeClass,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    pub started_at: Timestamp,
    pub ended_at: Timestamp,
    pub duration_ms: u64,
    /// Tokens (input + output) and cost this attempt reported.
    #[serde(default)]
    pub tokens: u64,
    #[serde(default)]
    pub cost: f64,
    /// Why it ended: the error of a failed run, or why an attempt ended without an
    /// outcome (lease expired, preempted, released, cancelled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

impl OutcomeRow {
    /// The row of a closed attempt of `rec`; `None` while it is open. `usage` is what
    /// this attempt reported (tokens, cost); the worker's capabilities and profile are
    /// filled by the caller, who knows the fleet.
    pub fn of(rec: &JobRecord, index: usize, usage: (u64, f64)) -> Option<Self> {
        let a = rec.history.get(index)?;
        let ended = a.ended_at?;
        let outcome = OutcomeClass::of(a);
        let (exit_code, why) = match &a.outcome {
            Some(AttemptOutcome::Succeeded { exit_code }) => (Some(*exit_code), None),
            Some(AttemptOutcome::Failed { exit_code, error }) => (*exit_code, Some(error.clone())),
            Some(AttemptOutcome::TimedOut { after_secs }) => {
                (None, Some(format!("timed out after {after_secs}s")))
            }
            None => (None, a.ended_because.clone()),
        };
        Some(Self {
            job_id: rec.id,
            epoch: a.epoch,
            attempt: index as u32 + 1,
            kind: crate::profile::kind(&rec.spec),
            worker: a.worker.clone(),
            worker_profile: None,
            capabilities: BTreeMap::new(),
            worker_tags: BTreeSet::new(),
            queue: rec.spec.queue.clone(),
            product: rec.spec.product.clone(),
            priority: rec.spec.priority,
            requires: rec.spec.requires.clone(),
            tags: rec.spec.tags.clone(),
            outcome,
            exit_code,
            started_at: a.started_at,
            ended_at: ended,
            duration_ms: ended.since(a.started_at).as_millis() as u64,
            tokens: usage.0,
            cost: usage.1,
            why,
        })
    }
}

/// Reads one stream message of rows: a JSON array of rows, or a single row.
pub fn decode_rows(payload: &[u8]) -> Result<Vec<OutcomeRow>, serde_json::Error> {
    match payload.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => serde_json::from_slice(payload),
        _ => serde_json::from_slice(payload).map(|r| vec![r]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::JobSpec;

    fn t(ms: i64) -> Timestamp {
        Timestamp::from_unix_millis(ms)
    }

    /// Each way an attempt ends maps to its class, and only the worker's own endings
    /// count for or against it.
    #[test]
    fn classes_and_verdicts() {
        let a = |outcome: Option<AttemptOutcome>, because: Option<&str>| Attempt {
            epoch: 1,
            worker: WorkerId::new("w").unwrap(),
            started_at: t(0),
            ended_at: Some(t(1500)),
            outcome,
            ended_because: because.map(String::from),
            artifact_errors: Vec::new(),
        };
        let cases = [
            (
                a(Some(AttemptOutcome::Succeeded { exit_code: 0 }), None),
                OutcomeClass::Succeeded,
                Some(true),
            ),
            (
                a(
                    Some(AttemptOutcome::Failed {
                        exit_code: Some(2),
                        error: "exit 2".into(),
                    }),
                    None,
                ),
                OutcomeClass::Failed,
                Some(false),
            ),
            (
                a(Some(AttemptOutcome::TimedOut { after_secs: 5 }), None),
                OutcomeClass::TimedOut,
                Some(false),
            ),
            (
                a(None, Some("lease expired on worker w")),
                OutcomeClass::LeaseExpired,
                Some(false),
            ),
            (
                a(None, Some("preempted by x")),
                OutcomeClass::Preempted,
                None,
            ),
            (
                a(None, Some("released: drain")),
                OutcomeClass::Released,
                None,
            ),
            (
                a(None, Some("cancelled: op")),
                OutcomeClass::Cancelled,
                None,
            ),
        ];
        for (attempt, class, verdict) in cases {
            assert_eq!(OutcomeClass::of(&attempt), class);
            assert_eq!(class.verdict(), verdict, "{class:?}");
        }
    }

    /// A row carries the job's features and the attempt's; an open attempt has none;
    /// a stream message may hold one row or an array.
    #[test]
    fn row_of_a_closed_attempt() {
        let mut spec = JobSpec::command(["./bin/build.sh", "--fast"]);
        spec.product = "web".into();
        let mut rec = JobRecord::new(JobId::new(), spec, t(0));
        rec.history.push(Attempt {
            epoch: 3,
            worker: WorkerId::new("w1").unwrap(),
            started_at: t(1000),
            ended_at: Some(t(3500)),
            outcome: Some(AttemptOutcome::Failed {
                exit_code: Some(1),
                error: "exit status 1".into(),
            }),
            ended_because: None,
            artifact_errors: Vec::new(),
        });
        rec.history.push(Attempt {
            epoch: 4,
            worker: WorkerId::new("w2").unwrap(),
            started_at: t(4000),
            ended_at: None,
            outcome: None,
            ended_because: None,
            artifact_errors: Vec::new(),
        });
        let row = OutcomeRow::of(&rec, 0, (120, 0.5)).expect("closed");
        assert_eq!(row.kind, "build.sh");
        assert_eq!((row.epoch, row.attempt, row.duration_ms), (3, 1, 2500));
        assert_eq!(row.outcome, OutcomeClass::Failed);
        assert_eq!(row.exit_code, Some(1));
        assert_eq!(row.why.as_deref(), Some("exit status 1"));
        assert_eq!(
            (row.product.as_str(), row.tokens, row.cost),
            ("web", 120, 0.5)
        );
        assert!(OutcomeRow::of(&rec, 1, (0, 0.0)).is_none(), "still open");
        let one = serde_json::to_vec(&row).unwrap();
        let many = serde_json::to_vec(&vec![row.clone(), row.clone()]).unwrap();
        assert_eq!(decode_rows(&one).unwrap(), vec![row.clone()]);
        assert_eq!(decode_rows(&many).unwrap().len(), 2);
    }
}
