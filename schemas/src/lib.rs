//! The Gigafactory wire contract.
//!
//! Every type that crosses NATS or HTTP lives here, together with the subject, bucket
//! and stream names ([`names`]) and the JSON Schemas published under `schemas/json/`
//! ([`json_schemas`]). This crate does no I/O: the coordinator, the worker, the CLI and
//! clients in other languages all agree on the shapes defined here and nothing else.

pub mod event;
pub mod ids;
pub mod job;
pub mod names;
pub mod rpc;
pub mod time;
pub mod worker;

pub use event::{Event, EventKind, Level, LogLine, LogStream};
pub use ids::{IdError, JobId, WorkerId};
pub use job::{
    Attempt, AttemptOutcome, JobRecord, JobSpec, JobState, Lease, SpecError, Usage,
    DEFAULT_MAX_ATTEMPTS, DEFAULT_PRIORITY, DEFAULT_PRODUCT, DEFAULT_QUEUE,
};
pub use names::Route;
pub use rpc::{ErrorKind, Reply, RpcError};
pub use time::Timestamp;
pub use worker::{Capabilities, RunningJob, WorkerRecord, WorkerState};

/// Every published JSON Schema as `(file stem, schema)`.
///
/// `schemas/json/<stem>.schema.json` holds exactly these; a test regenerates them and
/// fails when the checked-in files differ (run with `GF_UPDATE_SCHEMAS=1` to rewrite).
pub fn json_schemas() -> Vec<(&'static str, serde_json::Value)> {
    fn s<T: schemars::JsonSchema>() -> serde_json::Value {
        serde_json::to_value(schemars::schema_for!(T)).expect("schema serializes")
    }
    vec![
        ("job_spec", s::<JobSpec>()),
        ("job_record", s::<JobRecord>()),
        ("submit_reply", s::<Reply<rpc::SubmitReply>>()),
        ("get_job_request", s::<rpc::GetJobRequest>()),
        ("get_job_reply", s::<Reply<JobRecord>>()),
        ("cancel_request", s::<rpc::CancelRequest>()),
        ("register_request", s::<rpc::RegisterRequest>()),
        ("heartbeat_request", s::<rpc::HeartbeatRequest>()),
        ("claim_request", s::<rpc::ClaimRequest>()),
        ("renew_request", s::<rpc::RenewRequest>()),
        ("complete_request", s::<rpc::CompleteRequest>()),
        ("release_request", s::<rpc::ReleaseRequest>()),
        ("control_message", s::<rpc::ControlMessage>()),
        ("dispatch_notice", s::<rpc::DispatchNotice>()),
        ("event", s::<Event>()),
        ("log_line", s::<LogLine>()),
        ("worker_record", s::<WorkerRecord>()),
        ("rpc_error", s::<RpcError>()),
    ]
}
