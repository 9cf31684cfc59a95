//! Workers as the coordinator records them (`gf_workers.<id>`), and capability matching.

use std::collections::{BTreeMap, BTreeSet};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{JobId, JobSpec, Timestamp, WorkerId};

/// What a worker offers: named values (`os`, `arch`, `cpus`, `memory_mb`, `engine`…)
/// and free tags (`gpu`, `repo-cache`…).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Capabilities {
    #[serde(default)]
    pub values: BTreeMap<String, String>,
    #[serde(default)]
    pub tags: BTreeSet<String>,
    /// Queues this worker serves.
    pub queues: Vec<String>,
}

impl Capabilities {
    /// Why this worker cannot run `spec`, or `None` when it can. Pure; used by the
    /// scheduler (placement, explanations) and at claim.
    pub fn unmet(&self, spec: &JobSpec) -> Option<String> {
        if !self.queues.iter().any(|q| q == &spec.queue) {
            return Some(format!("queue={}", spec.queue));
        }
        for (k, want) in &spec.requires {
            match self.values.get(k) {
                Some(have) if have == want => {}
                _ => return Some(format!("{k}={want}")),
            }
        }
        spec.tags
            .iter()
            .find(|t| !self.tags.contains(*t))
            .map(|t| format!("tag {t}"))
    }
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// Registered, still binding its consumer: not offered work yet.
    Starting,
    /// Takes new jobs.
    Active,
    /// Finishes what it runs, takes nothing new.
    Draining,
    /// Stopped heartbeating or shut down.
    Gone,
}

/// A job a worker reports running, with the epoch it holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RunningJob {
    pub job_id: JobId,
    pub epoch: u64,
}

/// A worker as stored in `gf_workers` (written only by coordinators).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WorkerRecord {
    pub id: WorkerId,
    pub capabilities: Capabilities,
    pub slots: u32,
    pub free_slots: u32,
    #[serde(default)]
    pub running: Vec<RunningJob>,
    pub state: WorkerState,
    pub version: String,
    pub hostname: String,
    pub registered_at: Timestamp,
    /// Server-anchored time of the last heartbeat. Liveness is judged from this.
    pub last_heartbeat: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps() -> Capabilities {
        Capabilities {
            values: [("os", "linux"), ("arch", "x86_64")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            tags: ["gpu".to_string()].into(),
            queues: vec!["default".into()],
        }
    }

    /// `unmet` names the first missing requirement; a matching spec has none.
    #[test]
    fn unmet_names_missing_requirement() {
        let mut s = JobSpec::command(["x"]);
        assert_eq!(caps().unmet(&s), None);
        s.tags.insert("gpu".into());
        s.requires.insert("os".into(), "linux".into());
        assert_eq!(caps().unmet(&s), None);
        s.requires.insert("os".into(), "plan9".into());
        assert_eq!(caps().unmet(&s).as_deref(), Some("os=plan9"));
        s.requires.clear();
        s.tags.insert("tpu".into());
        assert_eq!(caps().unmet(&s).as_deref(), Some("tag tpu"));
        s.tags.clear();
        s.queue = "nightly".into();
        assert_eq!(caps().unmet(&s).as_deref(), Some("queue=nightly"));
    }
}
