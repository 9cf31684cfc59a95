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

/// What a log reader does with one line ([`LogOrigins::check`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineOrigin {
    /// Written by the factory that held the job at the line's epoch: show it.
    Holder,
    /// Its factory and epoch are not in the record the reader has: read the job again
    /// ([`LogOrigins::learn`]) and check again (a line still not known then is not to
    /// be shown). Said once per (factory, epoch), and again while the line's epoch is
    /// newer than the record's (the record read was older than the line).
    Unknown,
    /// Not the job's (another job in the subject or the payload), or from a factory that
    /// did not hold the job at that epoch: do not show it.
    Foreign,
}

/// Which of a job's log lines come from a factory that held the job.
///
/// The server lets a factory publish only under its own `gf.logs.<factory>.>`, so the
/// factory in a line's subject is authenticated; the job after it is not (any factory
/// may publish `gf.logs.<itself>.<any job>`). The job's record is the authority on
/// who ran it: every attempt names its factory and epoch, and a lease granted at
/// dispatch names its holder before the attempt is recorded. A reader shows a line only
/// when its subject's factory held the job at the line's epoch. Lines are published only
/// after the lease (or claim) that allows them is written, so a reader that meets an
/// unknown pair reads the record again before it decides.
#[derive(Clone, Debug)]
pub struct LogOrigins {
    job: JobId,
    held: std::collections::HashSet<(WorkerId, u64)>,
    /// The newest epoch of the records learnt.
    epoch: u64,
    /// Pairs already answered [`LineOrigin::Unknown`].
    asked: std::collections::HashSet<(WorkerId, u64)>,
    /// [`LineOrigin::Unknown`] answers so far (at most [`Self::MAX_ASKED`]).
    asks: usize,
}

impl LogOrigins {
    /// How many times a reader re-reads the record at most; beyond that (lines under
    /// ever new epochs: a factory writing into a job it does not hold) every unknown
    /// line is foreign, so a forger cannot make a reader read the store once per line.
    pub const MAX_ASKED: usize = 1024;

    pub fn new(job: JobId) -> Self {
        Self {
            job,
            held: Default::default(),
            epoch: 0,
            asked: Default::default(),
            asks: 0,
        }
    }

    /// Takes the holders from the job's record: each attempt's, and the current lease's.
    pub fn learn(&mut self, rec: &crate::JobRecord) {
        if rec.id != self.job {
            return;
        }
        self.epoch = self.epoch.max(rec.epoch);
        self.held
            .extend(rec.history.iter().map(|a| (a.worker.clone(), a.epoch)));
        if let Some(l) = &rec.lease {
            self.held.insert((l.worker.clone(), l.epoch));
        }
    }

    /// The verdict on a line read from `subject`.
    pub fn check(&mut self, subject: &str, line: &LogLine) -> LineOrigin {
        let Some((factory, job)) = crate::names::parse_logs(subject) else {
            return LineOrigin::Foreign;
        };
        if job != self.job || line.job_id != self.job {
            return LineOrigin::Foreign;
        }
        let pair = (factory, line.epoch);
        if self.held.contains(&pair) {
            return LineOrigin::Holder;
        }
        if self.asks >= Self::MAX_ASKED {
            return LineOrigin::Foreign;
        }
        // A record older than the line cannot know its holder (a replica behind, or the
        // record read before this dispatch); one at or past its epoch is asked once
        // more per pair (read before the claim that named the holder).
        let newer = line.epoch > self.epoch;
        if self.asked.insert(pair) || newer {
            self.asks += 1;
            return LineOrigin::Unknown;
        }
        LineOrigin::Foreign
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only the factory that held the job at an epoch is shown; an unknown pair asks for
    /// the record once, then is decided.
    #[test]
    fn log_lines_from_the_holder_only() {
        let job = JobId::new();
        let other = JobId::new();
        let (f1, f2) = (WorkerId::new("f1").unwrap(), WorkerId::new("f2").unwrap());
        let now = Timestamp::from_unix_millis(1);
        let mut rec = crate::JobRecord::new(job, crate::JobSpec::command(["true"]), now);
        rec.epoch = 1;
        rec.history.push(crate::Attempt {
            epoch: 1,
            worker: f1.clone(),
            started_at: now,
            ended_at: None,
            outcome: None,
            ended_because: None,
            artifact_errors: Vec::new(),
        });
        let line = |epoch| LogLine {
            job_id: job,
            epoch,
            seq: 1,
            stream: LogStream::Stdout,
            line: "x".into(),
            time: now,
        };
        let subject = |f: &WorkerId, j: &JobId| crate::names::logs(f, j);
        let mut o = LogOrigins::new(job);
        // Nothing learnt yet: the line is newer than anything known, ask.
        assert_eq!(o.check(&subject(&f1, &job), &line(1)), LineOrigin::Unknown);
        assert_eq!(o.check(&subject(&f1, &job), &line(1)), LineOrigin::Unknown);
        o.learn(&rec);
        assert_eq!(o.check(&subject(&f1, &job), &line(1)), LineOrigin::Holder);
        // f2 never held epoch 1: asked once (the record might predate a claim), then
        // decided.
        assert_eq!(o.check(&subject(&f2, &job), &line(1)), LineOrigin::Unknown);
        assert_eq!(o.check(&subject(&f2, &job), &line(1)), LineOrigin::Foreign);
        // Epoch 2 is newer than the record: asked until a record that knows it is learnt.
        assert_eq!(o.check(&subject(&f1, &job), &line(2)), LineOrigin::Unknown);
        assert_eq!(o.check(&subject(&f1, &job), &line(2)), LineOrigin::Unknown);
        // A lease granted at dispatch names its holder before any attempt does.
        rec.epoch = 2;
        rec.lease = Some(crate::Lease {
            worker: f2.clone(),
            epoch: 2,
            granted_at: now,
            expires_at: now,
            ttl_ms: 1,
        });
        o.learn(&rec);
        assert_eq!(o.check(&subject(&f2, &job), &line(2)), LineOrigin::Holder);
        assert_eq!(o.check(&subject(&f1, &job), &line(2)), LineOrigin::Foreign);
        // Another job in the subject or in the payload, or no log subject at all.
        assert_eq!(
            o.check(&subject(&f1, &other), &line(1)),
            LineOrigin::Foreign
        );
        let mut elsewhere = line(1);
        elsewhere.job_id = other;
        assert_eq!(
            o.check(&subject(&f1, &job), &elsewhere),
            LineOrigin::Foreign
        );
        assert_eq!(
            o.check("gf.events.job_succeeded", &line(1)),
            LineOrigin::Foreign
        );
        // A forger cycling epochs makes the reader ask a bounded number of times.
        let asked = (3..3 + 2 * LogOrigins::MAX_ASKED as u64)
            .filter(|e| o.check(&subject(&f2, &job), &line(*e)) == LineOrigin::Unknown)
            .count();
        assert!(asked < LogOrigins::MAX_ASKED, "{asked}");
    }

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
