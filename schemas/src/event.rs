//! The audit trail (`GF_EVENTS`) and job log lines (`GF_LOGS`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{JobId, JobState, Timestamp, WorkerId};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    JobSubmitted,
    JobDispatched,
    JobClaimed,
    JobSucceeded,
    JobFailed,
    JobRetryScheduled,
    JobDead,
    JobCancelled,
    JobLeaseExpired,
    JobReleased,
    JobUnplaceable,
    JobRevoked,
    WorkerRegistered,
    WorkerDraining,
    WorkerGone,
    LeaderElected,
    RpcRejected,
    // A factory's request named another worker than the factory its subject says sent
    // it (an impersonation attempt or a broken client); refused with `forbidden`. (A
    // plain comment: the other kinds have none, and a doc comment would turn the
    // published enum into a `oneOf`.)
    RpcForbidden,
    // The tracker bridge refused a webhook (bad signature, stale, malformed).
    WebhookRefused,
    // An echo of a bridged job's state change to its tracker failed an attempt (`warn`)
    // or was given up (`error`); the job itself is not affected.
    EchoFailed,
    // A NATS connection refused by the auth callout over its enrollment token (unknown,
    // wrong secret, revoked, expired, used up, outside its networks, no factory id, id
    // taken); the message starts with the reason's code (`token_expired: …`).
    EnrollmentRefused,
    // A NATS connection refused over its key (unknown and no token, a signature that
    // does not verify, a revoked factory, a refused rotation, a malformed request, the
    // store unreachable); the message starts with the reason's code.
    ConnectionRefused,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::JobSubmitted => "job_submitted",
            EventKind::JobDispatched => "job_dispatched",
            EventKind::JobClaimed => "job_claimed",
            EventKind::JobSucceeded => "job_succeeded",
            EventKind::JobFailed => "job_failed",
            EventKind::JobRetryScheduled => "job_retry_scheduled",
            EventKind::JobDead => "job_dead",
            EventKind::JobCancelled => "job_cancelled",
            EventKind::JobLeaseExpired => "job_lease_expired",
            EventKind::JobReleased => "job_released",
            EventKind::JobUnplaceable => "job_unplaceable",
            EventKind::JobRevoked => "job_revoked",
            EventKind::WorkerRegistered => "worker_registered",
            EventKind::WorkerDraining => "worker_draining",
            EventKind::WorkerGone => "worker_gone",
            EventKind::LeaderElected => "leader_elected",
            EventKind::RpcRejected => "rpc_rejected",
            EventKind::RpcForbidden => "rpc_forbidden",
            EventKind::WebhookRefused => "webhook_refused",
            EventKind::EchoFailed => "echo_failed",
            EventKind::EnrollmentRefused => "enrollment_refused",
            EventKind::ConnectionRefused => "connection_refused",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Info,
    Warn,
    Error,
}

/// One entry of the audit trail.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Event {
    pub time: Timestamp,
    pub kind: EventKind,
    pub level: Level,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<JobId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<WorkerId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// The job's state after the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<JobState>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Which coordinator or worker emitted it.
    pub source: String,
}

/// Reads one `GF_EVENTS` message: a single [`Event`], or (when the coordinator had
/// several of the same kind to publish at once) a JSON array of them. Batching keeps the
/// audit trail from costing one stored message per event under load.
pub fn decode_events(payload: &[u8]) -> Result<Vec<Event>, serde_json::Error> {
    let array = payload
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'[');
    if array {
        serde_json::from_slice(payload)
    } else {
        serde_json::from_slice(payload).map(|e| vec![e])
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogStream {
    Stdout,
    Stderr,
}

/// One line a job printed, published by the factory running it on
/// `gf.logs.<factory>.<job>` (read a job's lines with `gf.logs.*.<job>`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LogLine {
    pub job_id: JobId,
    pub epoch: u64,
    /// Per attempt, from 1, across both streams.
    pub seq: u64,
    pub stream: LogStream,
    pub line: String,
    pub time: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_one_event_or_an_array() {
        let e = Event {
            time: Timestamp::from_unix_millis(1),
            kind: EventKind::JobSucceeded,
            level: Level::Info,
            job_id: None,
            epoch: None,
            state: None,
            worker_id: None,
            message: "m".into(),
            source: "s".into(),
        };
        let one = serde_json::to_vec(&e).unwrap();
        let many = serde_json::to_vec(&vec![e.clone(), e.clone()]).unwrap();
        assert_eq!(decode_events(&one).unwrap(), vec![e.clone()]);
        assert_eq!(decode_events(&many).unwrap(), vec![e.clone(), e]);
        assert!(decode_events(b" [{\"kind\": 1}]").is_err());
        assert!(decode_events(b"{").is_err());
    }
}
