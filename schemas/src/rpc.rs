//! The RPC plane: request and reply bodies on `gf.rpc.*` (a factory's own requests on
//! `gf.rpc.w.<factory>.<verb>`, see [`FactoryRequest`]), control messages on
//! `gf.ctl.worker.<id>`, and dispatch notices on `gf.dispatch.…`.
//!
//! Every reply is an envelope: `{"ok": …}` or `{"error": {"kind": …, "message": …}}`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::names::FactoryVerb;
use crate::{
    AttemptOutcome, Capabilities, ConsumerName, JobId, JobRecord, JobSpec, JobState, Lease,
    RunningJob, Timestamp, Usage, WorkerId, WorkerState,
};

/// A request a factory sends on its own behalf, on `gf.rpc.w.<factory>.<verb>`.
///
/// Its payload still names the worker (`worker_id`), which older clients relied on; the
/// coordinator takes the sender from the subject (which the server authorised) and
/// refuses the request with [`ErrorKind::Forbidden`] when the two differ.
pub trait FactoryRequest: Serialize + serde::de::DeserializeOwned {
    const VERB: FactoryVerb;
    /// The worker the payload says sent it.
    fn sender(&self) -> &WorkerId;
    /// The subject this request goes on: its sender's own.
    fn subject(&self) -> String {
        crate::names::factory_rpc(self.sender(), Self::VERB)
    }
}

macro_rules! factory_request {
    ($($t:ty => $verb:ident),* $(,)?) => {$(
        impl FactoryRequest for $t {
            const VERB: FactoryVerb = FactoryVerb::$verb;
            fn sender(&self) -> &WorkerId {
                &self.worker_id
            }
        }
    )*};
}

factory_request! {
    RegisterRequest => Register,
    HeartbeatRequest => Heartbeat,
    ClaimRequest => Claim,
    RenewRequest => Renew,
    CompleteRequest => Complete,
    ReleaseRequest => Release,
}

/// Reply envelope.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Reply<T> {
    Ok(T),
    Error(RpcError),
}

impl<T> Reply<T> {
    pub fn into_result(self) -> Result<T, RpcError> {
        match self {
            Reply::Ok(t) => Ok(t),
            Reply::Error(e) => Err(e),
        }
    }
}

impl<T> From<Result<T, RpcError>> for Reply<T> {
    fn from(r: Result<T, RpcError>) -> Self {
        match r {
            Ok(t) => Reply::Ok(t),
            Err(e) => Reply::Error(e),
        }
    }
}

/// What kind of failure an RPC met. Callers branch on this, never on the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request is malformed or fails validation; `message` names what is wrong.
    Invalid,
    /// The request is larger than the coordinator accepts.
    TooLarge,
    NotFound,
    /// The epoch in the request is not the job's current one: a newer dispatch exists.
    StaleEpoch,
    /// The caller no longer holds the lease (expired, cancelled, released, or another
    /// worker won): stop work, nothing it reports counts.
    Revoked,
    /// Someone else won a race (e.g. a claim); re-read and decide again.
    Conflict,
    /// The worker lacks a capability the job requires.
    NotEligible,
    /// The job is in a state that does not allow the operation.
    WrongState,
    /// The coordinator cannot serve right now (store unreachable); retry later.
    Unavailable,
    /// The sender may not do this: a factory's request names another worker than the
    /// factory its subject (`gf.rpc.w.<factory>.<verb>`) says sent it. Not retryable;
    /// audited as an `rpc_forbidden` event.
    Forbidden,
    Internal,
}

impl ErrorKind {
    /// The wire name (as serialized), for labels and HTTP error bodies.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Invalid => "invalid",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::NotFound => "not_found",
            ErrorKind::StaleEpoch => "stale_epoch",
            ErrorKind::Revoked => "revoked",
            ErrorKind::Conflict => "conflict",
            ErrorKind::NotEligible => "not_eligible",
            ErrorKind::WrongState => "wrong_state",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::Internal => "internal",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct RpcError {
    pub kind: ErrorKind,
    pub message: String,
}

impl RpcError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// Most items one batch request (`gf.rpc.batch.submit`, `gf.rpc.w.<factory>.*_batch`) may carry. Bounded so one batch is
/// one modest burst of store writes and its reply stays far below NATS' payload limit.
pub const MAX_BATCH: usize = 256;

/// Reply to a batch request: each item's own envelope, in the order of the request.
pub type BatchReply<T> = Vec<Reply<T>>;

/// Decodes a JSON request body as the coordinators do, with an error that names what
/// is wrong: `too_large` past `max` bytes, `invalid` when it is not a `T`. Total over
/// any input (fuzzed: `fuzz/`).
pub fn decode_request<T: serde::de::DeserializeOwned>(
    what: &str,
    body: &[u8],
    max: usize,
) -> Result<T, RpcError> {
    if body.len() > max {
        return Err(RpcError::new(
            ErrorKind::TooLarge,
            format!("{what} is {} bytes; the limit is {max}", body.len()),
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| RpcError::new(ErrorKind::Invalid, format!("malformed {what}: {e}")))
}

/// Splits a batch request body into its items, each still encoded (decoded later as
/// if it had come alone). Refused as a whole only when it is not a JSON array of 1 to
/// [`MAX_BATCH`] values. Total over any input (fuzzed: `fuzz/`).
pub fn batch_items(payload: &[u8]) -> Result<Vec<&serde_json::value::RawValue>, RpcError> {
    match serde_json::from_slice::<Vec<&serde_json::value::RawValue>>(payload) {
        Ok(items) if items.len() > MAX_BATCH => Err(RpcError::new(
            ErrorKind::TooLarge,
            format!("batch of {} items; the limit is {MAX_BATCH}", items.len()),
        )),
        Ok(items) if items.is_empty() => Err(RpcError::new(
            ErrorKind::Invalid,
            "empty batch: send at least one request",
        )),
        Ok(items) => Ok(items),
        Err(e) => Err(RpcError::new(
            ErrorKind::Invalid,
            format!("malformed batch (a JSON array of requests): {e}"),
        )),
    }
}

/// Appends `[a,b,…]` to `out` from items that are each already encoded JSON, without
/// decoding them again: a batch request from encoded requests, or a batch reply from
/// encoded envelopes.
pub fn append_json_array<'a>(out: &mut Vec<u8>, items: impl IntoIterator<Item = &'a [u8]>) {
    out.push(b'[');
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(item);
    }
    out.push(b']');
}

/// Reply to `gf.rpc.submit` (whose request body is a [`JobSpec`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SubmitReply {
    pub job_id: JobId,
    /// `true` when the idempotency key was seen before and this is the first job.
    pub duplicate: bool,
    pub state: JobState,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetJobRequest {
    pub job_id: JobId,
}

/// `gf.rpc.job.list`: one page of jobs, filtered (what `GET /api/jobs` answers).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobListRequest {
    /// Only jobs in this state.
    #[serde(default)]
    pub state: Option<JobState>,
    /// Only jobs of this queue.
    #[serde(default)]
    pub queue: Option<String>,
    /// Only jobs of this product.
    #[serde(default)]
    pub product: Option<String>,
    /// `next_cursor` of the previous page.
    #[serde(default)]
    pub cursor: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// One page of jobs: first the live store's (live jobs, and finished ones within their
/// grace period), newest first; then, for finished states, the archive's, by creation
/// day newest first (within a day in the order they were archived).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobPage {
    pub jobs: Vec<JobRecord>,
    /// Jobs matching the filters in the live store (live, and finished within their
    /// grace period). The archive holds more finished ones, reached by paging on.
    pub total: usize,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {
    pub job_id: JobId,
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CancelReply {
    pub state: JobState,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    pub worker_id: WorkerId,
    pub capabilities: Capabilities,
    pub slots: u32,
    pub version: String,
    pub hostname: String,
}

impl RegisterRequest {
    /// The checks a registration passes before anything is stored: 1 to 10,000 slots,
    /// at least one queue, and queues and capabilities made of subject tokens (they
    /// become the tokens of the dispatch consumer's filter subjects, so a `.`, `*` or
    /// `>` would widen what the worker receives). Total over any input (fuzzed:
    /// `fuzz/`).
    pub fn validate(&self) -> Result<(), RpcError> {
        let invalid = |m: String| Err(RpcError::new(ErrorKind::Invalid, m));
        if self.slots == 0 || self.slots > 10_000 {
            return invalid("`slots` must be between 1 and 10000".into());
        }
        let caps = &self.capabilities;
        if caps.queues.is_empty() {
            return invalid("`capabilities.queues` must name at least one queue".into());
        }
        if let Some(q) = caps
            .queues
            .iter()
            .find(|q| !crate::names::is_token(q) || *q == crate::names::ANY)
        {
            return invalid(format!(
                "queue `{q}` is not made of A-Z a-z 0-9 _ - (and not `_` alone)"
            ));
        }
        for (k, v) in &caps.values {
            if !crate::names::is_token(k) || !crate::names::is_token(v) {
                return invalid(format!(
                    "capability `{k}={v}` is not made of A-Z a-z 0-9 _ -"
                ));
            }
        }
        Ok(())
    }
}

/// What the coordinators tell a registering worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RegisterReply {
    /// Routing dimensions in subject order; the worker derives its filters from them.
    pub routing_dims: Vec<String>,
    pub heartbeat_interval_ms: u64,
    /// The durable pull consumer on `GF_DISPATCH` the coordinator created for this
    /// worker's profile (identical profiles share it and compete for its notices). The
    /// worker only binds it (`CONSUMER.INFO`) and pulls; if it is ever missing the
    /// worker registers again and the coordinator creates it again.
    pub consumer: ConsumerName,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    pub worker_id: WorkerId,
    pub state: WorkerState,
    pub free_slots: u32,
    pub running: Vec<RunningJob>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HeartbeatReply {
    /// `false` when the coordinators have no record of this worker: register again.
    pub known: bool,
    /// Jobs the worker reported that it no longer holds: stop them.
    pub revoked: Vec<Revocation>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    pub job_id: JobId,
    pub epoch: u64,
    pub worker_id: WorkerId,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ClaimReply {
    pub spec: JobSpec,
    pub lease: Lease,
    /// 1 for the first attempt.
    pub attempt: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    pub job_id: JobId,
    pub epoch: u64,
    pub worker_id: WorkerId,
    /// Usage so far (what the job wrote to `$GF_USAGE_FILE`), checked against the
    /// job's `max_cost`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// How long the job has run on the worker (its monotonic clock), in ms. The first
    /// renewal of a lease granted at dispatch confirms the start; the coordinator dates
    /// the attempt's `started_at` this much before it received the renewal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ran_ms: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RenewReply {
    pub lease: Lease,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteRequest {
    pub job_id: JobId,
    pub epoch: u64,
    pub worker_id: WorkerId,
    pub outcome: AttemptOutcome,
    /// The JSON the job wrote to `$GF_RESULT_FILE`, minus `usage`.
    #[serde(default)]
    pub result: Option<serde_json::Value>,
    #[serde(default)]
    pub usage: Option<Usage>,
    /// How long the job ran, in ms (see [`RenewRequest::ran_ms`]): a completion that
    /// confirms a start dates the attempt's `started_at` from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ran_ms: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CompleteReply {
    /// The job's state after this completion (`pending` when a retry is scheduled).
    pub state: JobState,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRequest {
    pub job_id: JobId,
    pub epoch: u64,
    pub worker_id: WorkerId,
    pub reason: String,
}

/// Why a lease was taken away.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RevokeReason {
    LeaseExpired,
    Cancelled,
    Superseded,
    /// Made room for a much more urgent job.
    Preempted,
    /// The job crossed its own `max_cost`.
    BudgetExceeded,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Revocation {
    pub job_id: JobId,
    pub epoch: u64,
    pub reason: RevokeReason,
}

/// Pushed by coordinators on `gf.ctl.worker.<id>`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum ControlMessage {
    Revoke(Revocation),
    /// `drain: true`: finish running jobs but claim nothing new; `false`: claim again.
    /// Sent as a request: the worker answers with a [`ControlAck`].
    Drain {
        drain: bool,
    },
    /// An enrolled factory makes a new key and switches to it without stopping (the
    /// old key keeps working for a grace period). Sent as a request: answered with a
    /// [`ControlAck`] once the new key is in use.
    RotateKey,
    /// Leases granted at dispatch to this worker (a batch of one pass, or one job
    /// dispatched at its submission): run each job under its lease. Nothing else is
    /// asked first; the first renewal or the completion (each carrying the lease's
    /// epoch) confirms the start. A grant not confirmed by `lease.expires_at` (the
    /// start deadline, server time) is taken back by the reaper, so a lost message
    /// costs a start deadline, never a job.
    Start {
        grants: Vec<LeaseGrant>,
    },
}

impl ControlMessage {
    /// Decodes a control message as `serde_json::from_slice` does. A `start` (one per
    /// worker per dispatch pass) is read as a plain struct first: serde reads an
    /// internally tagged enum by buffering the whole message and reading it again,
    /// which was 7 % of a worker's CPU in the load suite. Anything else, or a `start`
    /// the struct does not read, takes the general path.
    pub fn from_json(bytes: &[u8]) -> serde_json::Result<Self> {
        #[derive(Deserialize)]
        #[serde(rename_all = "snake_case")]
        enum StartTag {
            Start,
        }
        #[derive(Deserialize)]
        struct StartWire {
            #[serde(rename = "type")]
            _type: StartTag,
            grants: Vec<LeaseGrant>,
        }
        match serde_json::from_slice::<StartWire>(bytes) {
            Ok(s) => Ok(ControlMessage::Start { grants: s.grants }),
            Err(_) => serde_json::from_slice(bytes),
        }
    }
}

/// A job leased to one worker at dispatch: what a claim's reply carried, without the
/// claim. See [`ControlMessage::Start`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LeaseGrant {
    pub job_id: JobId,
    pub spec: JobSpec,
    /// Its `expires_at` is the start deadline; the first renewal extends it by `ttl_ms`.
    pub lease: Lease,
    /// The attempt this start will be (1 for the first).
    pub attempt: u32,
    /// W3C `traceparent` of the submission, when tracing is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_parent: Option<String>,
}

/// A worker's answer to a control message sent as a request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ControlAck {
    /// The worker's state after applying the message.
    pub state: WorkerState,
}

/// A hint that a job may be claimed at `epoch`. The KV record is the truth: a notice
/// can be stale, and a claim with its epoch is then refused.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DispatchNotice {
    pub job_id: JobId,
    pub epoch: u64,
    pub dispatched_at: Timestamp,
}

#[cfg(test)]
mod tests {

    #[test]
    fn json_array_from_encoded_items() {
        let mut out = b"{\"ok\":".to_vec();
        append_json_array(&mut out, [b"1".as_slice(), b"{\"a\":2}", b"[]"]);
        assert_eq!(out, b"{\"ok\":[1,{\"a\":2},[]]".to_vec());
        let mut empty = Vec::new();
        append_json_array(&mut empty, []);
        assert_eq!(empty, b"[]");
    }

    use super::*;

    /// `ControlMessage::from_json` reads every message as the derived decoding does,
    /// a `start` whatever its field order, and refuses what that refuses.
    #[test]
    fn control_messages_decode_as_the_derived_decoding_does() {
        let t = crate::Timestamp::from_unix_millis(1_000);
        let grant = LeaseGrant {
            job_id: crate::JobId::new(),
            spec: crate::JobSpec::command(["gf:noop"]),
            lease: crate::Lease {
                worker: crate::WorkerId::new("w1").unwrap(),
                epoch: 2,
                granted_at: t,
                expires_at: t,
                ttl_ms: 1000,
            },
            attempt: 1,
            trace_parent: Some("00-abc-def-01".into()),
        };
        let messages = [
            ControlMessage::Start {
                grants: vec![grant.clone(), grant.clone()],
            },
            ControlMessage::Start { grants: vec![] },
            ControlMessage::Revoke(Revocation {
                job_id: grant.job_id,
                epoch: 2,
                reason: RevokeReason::Cancelled,
            }),
            ControlMessage::Drain { drain: true },
            ControlMessage::RotateKey,
        ];
        for m in messages {
            let bytes = serde_json::to_vec(&m).unwrap();
            assert_eq!(ControlMessage::from_json(&bytes).unwrap(), m);
        }
        let grants = serde_json::to_string(&[&grant]).unwrap();
        let tag_last = format!(r#"{{"grants":{grants},"type":"start"}}"#);
        assert_eq!(
            ControlMessage::from_json(tag_last.as_bytes()).unwrap(),
            ControlMessage::Start {
                grants: vec![grant]
            }
        );
        for bad in [
            r#"{"type":"start"}"#,
            r#"{"grants":[]}"#,
            r#"{"type":"begin","grants":[]}"#,
            "not json",
        ] {
            assert!(ControlMessage::from_json(bad.as_bytes()).is_err(), "{bad}");
            assert!(serde_json::from_slice::<ControlMessage>(bad.as_bytes()).is_err());
        }
    }

    /// Reply envelopes are `{"ok": …}` or `{"error": {"kind", "message"}}`.
    #[test]
    fn envelope_shape() {
        let ok: Reply<CancelReply> = Reply::Ok(CancelReply {
            state: JobState::Cancelled,
        });
        assert_eq!(
            serde_json::to_string(&ok).unwrap(),
            r#"{"ok":{"state":"cancelled"}}"#
        );
        let err: Reply<CancelReply> =
            Reply::Error(RpcError::new(ErrorKind::StaleEpoch, "epoch 1 < 2"));
        assert_eq!(
            serde_json::to_string(&err).unwrap(),
            r#"{"error":{"kind":"stale_epoch","message":"epoch 1 < 2"}}"#
        );
    }

    /// `as_str` is exactly the serialized name.
    #[test]
    fn error_kind_names() {
        for k in [
            ErrorKind::Invalid,
            ErrorKind::TooLarge,
            ErrorKind::NotFound,
            ErrorKind::StaleEpoch,
            ErrorKind::Revoked,
            ErrorKind::Conflict,
            ErrorKind::NotEligible,
            ErrorKind::WrongState,
            ErrorKind::Unavailable,
            ErrorKind::Forbidden,
            ErrorKind::Internal,
        ] {
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
        // Pinned: clients in other languages branch on these names.
        assert_eq!(
            serde_json::to_value(ErrorKind::Forbidden).unwrap(),
            "forbidden"
        );
    }

    /// Each factory request names its verb, and its subject is its own worker's.
    #[test]
    fn factory_requests_know_their_subject() {
        let w = WorkerId::new("w7").unwrap();
        let claim = ClaimRequest {
            job_id: JobId::new(),
            epoch: 1,
            worker_id: w.clone(),
        };
        assert_eq!(claim.subject(), "gf.rpc.w.w7.claim");
        assert_eq!(claim.sender(), &w);
        assert_eq!(
            crate::names::parse_factory_rpc(&claim.subject())
                .unwrap()
                .verb,
            ClaimRequest::VERB
        );
        let verbs = [
            RegisterRequest::VERB,
            HeartbeatRequest::VERB,
            ClaimRequest::VERB,
            RenewRequest::VERB,
            CompleteRequest::VERB,
            ReleaseRequest::VERB,
        ];
        let distinct: std::collections::BTreeSet<_> = verbs.iter().collect();
        assert_eq!(distinct.len(), verbs.len());
    }

    #[test]
    fn control_message_shape() {
        let id: JobId = "019a0000-0000-7000-8000-000000000001".parse().unwrap();
        let m = ControlMessage::Revoke(Revocation {
            job_id: id,
            epoch: 3,
            reason: RevokeReason::Cancelled,
        });
        assert_eq!(
            serde_json::to_value(&m).unwrap(),
            serde_json::json!({"type": "revoke", "job_id": id.to_string(), "epoch": 3, "reason": "cancelled"})
        );
        assert_eq!(
            serde_json::to_value(ControlMessage::Drain { drain: true }).unwrap(),
            serde_json::json!({"type": "drain", "drain": true})
        );
    }
}

/// Operator action on one job (`requeue`, `reject`, `explain`, `dag`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobAction {
    pub job_id: JobId,
    #[serde(default)]
    pub reason: Option<String>,
}

/// A child job submitted under a running parent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChildRequest {
    pub parent: JobId,
    pub spec: JobSpec,
}

/// Changes to a product's budget; absent fields stay as they are.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetUpdate {
    pub product: String,
    /// Cost units per period; a negative value removes the limit.
    #[serde(default)]
    pub limit_cost: Option<f64>,
    /// Tokens per period; 0 removes the limit.
    #[serde(default)]
    pub limit_tokens: Option<u64>,
    /// Period in seconds; 0 means the budget never resets.
    #[serde(default)]
    pub period_secs: Option<u64>,
    #[serde(default)]
    pub paused: Option<bool>,
    /// Worker-hours per period; a negative value removes the limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_worker_hours: Option<f64>,
}

/// A node of a job's graph: its dependencies and children, with their states.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DagNode {
    pub job_id: JobId,
    pub state: JobState,
    pub command: String,
    pub depends_on: Vec<JobId>,
    pub children: Vec<JobId>,
    #[serde(default)]
    pub parent: Option<JobId>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Dag {
    pub root: JobId,
    pub nodes: Vec<DagNode>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleName {
    pub name: String,
}
