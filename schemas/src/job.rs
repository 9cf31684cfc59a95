//! Jobs: what a client submits ([`JobSpec`]) and what the store keeps ([`JobRecord`]).

use std::collections::{BTreeMap, BTreeSet};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::names::{is_token, ANY};
use crate::{JobId, Timestamp, WorkerId};

pub const DEFAULT_QUEUE: &str = "default";
pub const DEFAULT_PRODUCT: &str = "default";
pub const DEFAULT_PRIORITY: u8 = 5;
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Upper bounds that keep one record well under NATS' default 1 MB payload.
pub const MAX_ARGV: usize = 1024;
pub const MAX_ENV: usize = 256;
pub const MAX_STRING: usize = 16 * 1024;

/// What a client submits. Unknown fields are refused, so a misspelt option
/// (`max_attempt`) is an error rather than silently ignored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Program and arguments, run directly (no shell). Must not be empty.
    pub command: Vec<String>,
    /// Extra environment variables for the process.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory on the worker; default: a fresh temporary directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Queue (first routing dimension). Default `default`.
    #[serde(default = "default_queue")]
    pub queue: String,
    /// Capabilities the worker must have, e.g. `{"os": "linux", "gpu": "a100"}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requires: BTreeMap<String, String>,
    /// Tags the worker must all carry, e.g. `["gpu", "repo-cache"]`.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub tags: BTreeSet<String>,
    /// 0 (most urgent) to 9. Default 5.
    #[serde(default = "default_priority")]
    #[schemars(range(max = 9))]
    pub priority: u8,
    /// Maximum run time of one attempt, in seconds; the process is killed after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// Attempts before the job is `dead`. Default 3, at least 1.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// A second submission with the same product and key returns the first job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Product the job is accounted to. Default `default`.
    #[serde(default = "default_product")]
    pub product: String,
    /// Free-form labels (shown, filterable; later: limit keys).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Lease time-to-live in seconds: a worker that stops renewing for this long loses
    /// the job. Independent of `timeout_secs`. Default from the coordinator's config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ttl_secs: Option<u64>,
    /// Capabilities the job would rather have (soft: raises its score when a worker
    /// with them is free), e.g. `{"region": "eu"}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub prefer: BTreeMap<String, String>,
    /// Score weights for this job, overriding the product's and the defaults.
    // Boxed, as rare and large (144 bytes) fields of a record are: the leader holds
    // every live job's record in memory, and a record's size is paid by each of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<Box<ScoreWeights>>,
    /// Jobs that must all succeed before this one runs. If one fails for good, this
    /// job is cancelled with that reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<JobId>,
    /// The job this one was created under; the parent's completion waits for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<JobId>,
    /// Not dispatched before this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<Timestamp>,
    /// The most this job may spend (cost units); crossing it while running cancels
    /// the job with reason `budget_exceeded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost: Option<f64>,
    /// A profile from the coordinators' configuration: its values fill what this
    /// submission leaves at the defaults, and its command is a prefix of this one's
    /// (see `gf_schemas::profile::resolve`). Kept in the record: the job's kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
}

/// Weights of the score terms. Missing fields take the next level's value
/// (submission → product → coordinator defaults).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScoreWeights {
    /// Per priority level above 9 (P0 gets 9× this).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<f64>,
    /// Per minute waited (capped at 30 minutes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<f64>,
    /// Subtracted per attempt already made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<f64>,
    /// Multiplies the product's weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product: Option<f64>,
    /// Per preferred capability a free worker offers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<f64>,
    /// Subtracted per unit of `max_cost`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
    /// Learned placement: per point of likely success above the kind's usual rate
    /// on a worker (×100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success: Option<f64>,
    /// Learned placement: per halving of the kind's usual duration on a worker (×10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed: Option<f64>,
    /// Learned placement: subtracted (×20) per attempt of this job that failed on a
    /// worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_here: Option<f64>,
}

/// A score and its terms, as computed for one decision.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Score {
    pub total: f64,
    /// Each term's contribution (`priority`, `waiting`, `retry`, `product`,
    /// `affinity`, `cost`).
    pub terms: BTreeMap<String, f64>,
}

fn default_queue() -> String {
    DEFAULT_QUEUE.into()
}
fn default_product() -> String {
    DEFAULT_PRODUCT.into()
}
fn default_priority() -> u8 {
    DEFAULT_PRIORITY
}
fn default_max_attempts() -> u32 {
    DEFAULT_MAX_ATTEMPTS
}

/// A submission that cannot be accepted, naming the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid job spec: `{field}` {problem}")]
pub struct SpecError {
    pub field: String,
    pub problem: String,
}

fn bad(field: impl Into<String>, problem: impl Into<String>) -> SpecError {
    SpecError {
        field: field.into(),
        problem: problem.into(),
    }
}

impl JobSpec {
    /// A spec with every default and this command line.
    pub fn command<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> Self {
        Self {
            command: argv.into_iter().map(Into::into).collect(),
            env: BTreeMap::new(),
            cwd: None,
            queue: default_queue(),
            requires: BTreeMap::new(),
            tags: BTreeSet::new(),
            priority: DEFAULT_PRIORITY,
            timeout_secs: None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            idempotency_key: None,
            product: default_product(),
            labels: BTreeMap::new(),
            lease_ttl_secs: None,
            prefer: BTreeMap::new(),
            weights: None,
            depends_on: Vec::new(),
            parent: None,
            not_before: None,
            max_cost: None,
            profile: None,
        }
    }

    /// Checks everything serde cannot: non-empty command, token-safe names, bounds.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.command.is_empty() || self.command[0].is_empty() {
            return Err(bad("command", "must name a program to run"));
        }
        if self.command.len() > MAX_ARGV {
            return Err(bad(
                "command",
                format!("has more than {MAX_ARGV} arguments"),
            ));
        }
        if self.env.len() > MAX_ENV {
            return Err(bad("env", format!("has more than {MAX_ENV} variables")));
        }
        for k in self.env.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(bad(format!("env.{k}"), "is not a valid variable name"));
            }
        }
        if !is_token(&self.queue) || self.queue == ANY {
            return Err(bad(
                "queue",
                "must be 1-128 characters from A-Z a-z 0-9 _ -",
            ));
        }
        if !is_token(&self.product) {
            return Err(bad(
                "product",
                "must be 1-128 characters from A-Z a-z 0-9 _ -",
            ));
        }
        for (k, v) in &self.requires {
            if !is_token(k) || k == "queue" {
                return Err(bad(
                    format!("requires.{k}"),
                    "is not a valid capability name",
                ));
            }
            if !is_token(v) || v == ANY {
                return Err(bad(
                    format!("requires.{k}"),
                    "value must be 1-128 characters from A-Z a-z 0-9 _ - (and not `_`)",
                ));
            }
        }
        for t in &self.tags {
            if !is_token(t) {
                return Err(bad("tags", format!("`{t}` is not a valid tag")));
            }
        }
        if self.priority > 9 {
            return Err(bad("priority", "must be between 0 (most urgent) and 9"));
        }
        if self.max_attempts == 0 || self.max_attempts > 100 {
            return Err(bad("max_attempts", "must be between 1 and 100"));
        }
        if self.timeout_secs == Some(0) {
            return Err(bad("timeout_secs", "must be at least 1"));
        }
        if let Some(ttl) = self.lease_ttl_secs {
            if !(1..=3600).contains(&ttl) {
                return Err(bad("lease_ttl_secs", "must be between 1 and 3600"));
            }
        }
        for (k, v) in &self.prefer {
            if !is_token(k) || !is_token(v) {
                return Err(bad(
                    format!("prefer.{k}"),
                    "must be made of A-Z a-z 0-9 _ -",
                ));
            }
        }
        if self.depends_on.len() > 1000 {
            return Err(bad("depends_on", "has more than 1000 jobs"));
        }
        if let Some(c) = self.max_cost {
            if !c.is_finite() || c < 0.0 {
                return Err(bad("max_cost", "must be a non-negative number"));
            }
        }
        if let Some(w) = &self.weights {
            let all = [
                w.priority, w.waiting, w.retry, w.product, w.affinity, w.cost,
            ];
            if all.iter().flatten().any(|x| !x.is_finite()) {
                return Err(bad("weights", "must be finite numbers"));
            }
        }
        if let Some(p) = &self.profile {
            if !is_token(p) {
                return Err(bad(
                    "profile",
                    "must be 1-128 characters from A-Z a-z 0-9 _ -",
                ));
            }
        }
        if let Some(k) = &self.idempotency_key {
            if k.is_empty() || k.len() > 256 {
                return Err(bad("idempotency_key", "must be 1-256 characters"));
            }
        }
        let long = self
            .command
            .iter()
            .chain(self.env.values())
            .chain(self.labels.values())
            .chain(self.cwd.iter())
            .any(|s| s.len() > MAX_STRING);
        if long {
            return Err(bad(
                "command/env/labels/cwd",
                format!("has a value over {MAX_STRING} bytes"),
            ));
        }
        Ok(())
    }
}

/// Where a job is in its life. Terminal states: `succeeded`, `dead`, `cancelled`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting to be dispatched (possibly until `retry_at`).
    Pending,
    /// Cannot be dispatched now; `reason` says why (e.g. `unplaceable: …`).
    Blocked,
    /// Leased at dispatch to the worker named in `lease` (sent to it with the current
    /// epoch), which has not confirmed the start yet: its first renewal or its
    /// completion does, or the reaper takes the job back at the lease's `expires_at`
    /// (the start deadline). Without a lease: a notice of an earlier coordinator,
    /// waiting for a claim.
    Dispatched,
    /// A worker holds the lease and runs it.
    Running,
    /// Its own run succeeded; waiting for its children to finish.
    Waiting,
    Succeeded,
    /// Failed and out of attempts.
    Dead,
    Cancelled,
    /// Refused by an operator before it ran.
    Rejected,
}

impl JobState {
    pub const ALL: [JobState; 9] = [
        JobState::Pending,
        JobState::Blocked,
        JobState::Dispatched,
        JobState::Running,
        JobState::Waiting,
        JobState::Succeeded,
        JobState::Dead,
        JobState::Cancelled,
        JobState::Rejected,
    ];
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Dead | JobState::Cancelled | JobState::Rejected
        )
    }
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Blocked => "blocked",
            JobState::Dispatched => "dispatched",
            JobState::Running => "running",
            JobState::Waiting => "waiting",
            JobState::Succeeded => "succeeded",
            JobState::Dead => "dead",
            JobState::Cancelled => "cancelled",
            JobState::Rejected => "rejected",
        }
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for JobState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        JobState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                let all: Vec<_> = JobState::ALL.iter().map(|s| s.as_str()).collect();
                format!("unknown state `{s}` (one of: {})", all.join(", "))
            })
    }
}

/// The right to run a job at one epoch, until `expires_at` (NATS server time).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Lease {
    pub worker: WorkerId,
    pub epoch: u64,
    pub granted_at: Timestamp,
    pub expires_at: Timestamp,
    /// The TTL each renewal extends the lease by.
    pub ttl_ms: u64,
}

/// Model usage a job reports in its result file (`usage` key).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Usage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
    #[serde(default)]
    pub calls: u64,
    /// Cost in the product's budget units.
    #[serde(default)]
    pub cost: f64,
}

/// How one attempt ended, as reported by the worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum AttemptOutcome {
    Succeeded {
        exit_code: i32,
    },
    Failed {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
        error: String,
    },
    TimedOut {
        after_secs: u64,
    },
}

impl AttemptOutcome {
    pub fn is_success(&self) -> bool {
        matches!(self, AttemptOutcome::Succeeded { .. })
    }
}

/// One attempt in a job's history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Attempt {
    pub epoch: u64,
    pub worker: WorkerId,
    pub started_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Timestamp>,
    /// Set when the worker reported; absent when the lease was lost or revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<AttemptOutcome>,
    /// Why the attempt ended without an outcome (lease expired, cancelled, released…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_because: Option<String>,
    /// Uploads of this attempt's artifacts or checkpoint the coordinators refused
    /// (over the job's cap, a bad name): the files are not stored, the outcome stands.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifact_errors: Vec<String>,
}

/// A job as the store keeps it (value of `gf_jobs.<id>`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobRecord {
    pub id: JobId,
    pub spec: JobSpec,
    pub state: JobState,
    /// Why the job is blocked, dead or cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Fencing token: rises by one at every dispatch. Claim, renew and complete carry it.
    pub epoch: u64,
    /// Attempts started (claims granted).
    pub attempts: u32,
    /// The holder's lease: of a `running` job, and of a `dispatched` one (granted at
    /// dispatch, start not confirmed yet; `expires_at` is then the start deadline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Lease>,
    /// Not dispatched before this time (retry backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<Timestamp>,
    /// When the current dispatch notice went out (for the claim timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispatched_at: Option<Timestamp>,
    /// The JSON result the last successful attempt wrote to `$GF_RESULT_FILE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// Usage summed over all reported attempts.
    // Boxed for the same reason as `JobSpec::weights`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Box<Usage>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Attempt>,
    /// Jobs created under this one (see `JobSpec::parent`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<JobId>,
    /// The score breakdown of the last dispatch decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<Score>,
    /// W3C `traceparent` of the submission, so dispatch and the worker's run join the
    /// submitter's trace. Absent when tracing is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_parent: Option<String>,
    /// For a job submitted with a profile: where each value of the resolved `spec` came
    /// from (`profile`, `submission`, `default`, or `merged`). Absent without a
    /// profile (every value is then the submission's or the default).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub provenance: BTreeMap<String, crate::profile::Provenance>,
    pub submitted_at: Timestamp,
    pub updated_at: Timestamp,
}

impl JobRecord {
    pub fn new(id: JobId, spec: JobSpec, now: Timestamp) -> Self {
        Self {
            id,
            spec,
            state: JobState::Pending,
            reason: None,
            epoch: 0,
            attempts: 0,
            lease: None,
            retry_at: None,
            dispatched_at: None,
            result: None,
            usage: None,
            history: Vec::new(),
            children: Vec::new(),
            score: None,
            trace_parent: None,
            provenance: BTreeMap::new(),
            submitted_at: now,
            updated_at: now,
        }
    }

    /// The open attempt at `epoch`, if any.
    pub fn attempt_mut(&mut self, epoch: u64) -> Option<&mut Attempt> {
        self.history
            .iter_mut()
            .rev()
            .find(|a| a.epoch == epoch && a.ended_at.is_none())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The minimal submission is just a command; defaults fill the rest.
    #[test]
    fn minimal_spec_defaults() {
        let s: JobSpec = serde_json::from_str(r#"{"command":["echo","hi"]}"#).unwrap();
        assert_eq!(s, JobSpec::command(["echo", "hi"]));
        assert_eq!(s.queue, "default");
        assert_eq!(s.max_attempts, 3);
        s.validate().unwrap();
    }

    /// A misspelt field is refused with its name rather than ignored.
    #[test]
    fn unknown_fields_refused() {
        let e = serde_json::from_str::<JobSpec>(r#"{"command":["x"],"max_attempt":2}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_attempt"), "{e}");
    }

    /// Validation names the field at fault.
    #[test]
    fn validation_names_field() {
        let mut s = JobSpec::command(Vec::<String>::new());
        assert_eq!(s.validate().unwrap_err().field, "command");
        s.command = vec!["x".into()];
        s.requires.insert("os".into(), "li.nux".into());
        assert_eq!(s.validate().unwrap_err().field, "requires.os");
        s.requires.clear();
        s.max_attempts = 0;
        assert_eq!(s.validate().unwrap_err().field, "max_attempts");
        s.max_attempts = 1;
        s.queue = "a b".into();
        assert_eq!(s.validate().unwrap_err().field, "queue");
    }

    /// The record's JSON shape is pinned: clients in other languages read these names.
    #[test]
    fn record_shape_pinned() {
        let id: JobId = "019a0000-0000-7000-8000-000000000001".parse().unwrap();
        let t = Timestamp::from_unix_millis(0);
        let r = JobRecord::new(id, JobSpec::command(["true"]), t);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "id": "019a0000-0000-7000-8000-000000000001",
                "spec": {"command": ["true"], "queue": "default", "priority": 5,
                         "max_attempts": 3, "product": "default"},
                "state": "pending", "epoch": 0, "attempts": 0,
                "submitted_at": "1970-01-01T00:00:00Z", "updated_at": "1970-01-01T00:00:00Z"
            })
        );
        let outcome = AttemptOutcome::Failed {
            exit_code: Some(2),
            error: "exit 2".into(),
        };
        assert_eq!(
            serde_json::to_value(outcome).unwrap(),
            serde_json::json!({"status": "failed", "exit_code": 2, "error": "exit 2"})
        );
    }

    #[test]
    fn state_parse() {
        assert_eq!("dead".parse::<JobState>().unwrap(), JobState::Dead);
        assert!("zombie"
            .parse::<JobState>()
            .unwrap_err()
            .contains("pending"));
        assert!(JobState::Cancelled.is_terminal());
        assert!(!JobState::Running.is_terminal());
    }
}
