//! The Gigafactory wire contract.
//!
//! Every type that crosses NATS or HTTP lives here, together with the subject, bucket
//! and stream names ([`names`]) and the JSON Schemas published under `schemas/json/`
//! ([`json_schemas`]). This crate does no I/O: the coordinator, the worker, the CLI and
//! clients in other languages all agree on the shapes defined here and nothing else.

pub mod artifact;
pub mod bridge;
pub mod budget;
pub mod event;
pub mod ids;
pub mod job;
pub mod manifest;
pub mod names;
pub mod outcome;
pub mod permissions;
pub mod profile;
pub mod rpc;
pub mod time;
pub mod worker;

pub use budget::{Budget, Explanation, Schedule, SpendPoint, WorkerFit};
pub use event::{
    decode_events, Event, EventKind, Level, LineOrigin, LogLine, LogOrigins, LogStream,
};
pub use ids::{ConsumerName, IdError, JobId, WorkerId};
pub use job::{
    Attempt, AttemptOutcome, JobRecord, JobSpec, JobState, Lease, Score, ScoreWeights, SpecError,
    Usage, DEFAULT_MAX_ATTEMPTS, DEFAULT_PRIORITY, DEFAULT_PRODUCT, DEFAULT_QUEUE,
};
pub use manifest::{Manifest, ManifestJob, ManifestStatus};
pub use names::{FactoryVerb, Route};
pub use profile::{NamedProfile, Profile, Provenance};
pub use rpc::{ErrorKind, FactoryRequest, Reply, RpcError};
pub use time::Timestamp;
pub use worker::{Capabilities, RunningJob, WorkerRecord, WorkerState};

/// The RPC plane as published in `schemas/json/index.json`: each subject with the
/// schema files of its request and reply, so a client in any language needs nothing
/// but these files.
pub fn rpc_index() -> serde_json::Value {
    use names::{factory_rpc_pattern, rpc, FactoryVerb};
    let entry = |req: &str, reply: &str| serde_json::json!({"request": format!("{req}.schema.json"), "reply": format!("{reply}.schema.json")});
    let factory_entry = |verb: FactoryVerb| match verb {
        FactoryVerb::Register => entry("register_request", "register_reply"),
        FactoryVerb::Heartbeat => entry("heartbeat_request", "heartbeat_reply"),
        FactoryVerb::Claim => entry("claim_request", "claim_reply"),
        FactoryVerb::Renew => entry("renew_request", "renew_reply"),
        FactoryVerb::Complete => entry("complete_request", "complete_reply"),
        FactoryVerb::Release => entry("release_request", "release_reply"),
        FactoryVerb::UploadBegin => entry("upload_begin_request", "upload_begin_reply"),
        FactoryVerb::UploadChunk => entry("upload_chunk_request", "release_reply"),
        FactoryVerb::UploadCommit => entry("upload_commit_request", "upload_commit_reply"),
        FactoryVerb::CheckpointRead => entry("checkpoint_read_request", "checkpoint_read_reply"),
        FactoryVerb::ClaimBatch | FactoryVerb::CompleteBatch => serde_json::Value::Null,
    };
    let factory_verbs: serde_json::Map<String, serde_json::Value> = FactoryVerb::ALL
        .into_iter()
        .filter(|v| v.batched().is_none())
        .map(|v| (v.as_str().to_string(), factory_entry(v)))
        .collect();
    let batch_pattern = |v: FactoryVerb| {
        let single = v.batched().expect("a batch verb");
        (
            factory_rpc_pattern(v),
            serde_json::Value::from(factory_rpc_pattern(single)),
        )
    };
    let mut batches: serde_json::Map<String, serde_json::Value> =
        [FactoryVerb::ClaimBatch, FactoryVerb::CompleteBatch]
            .into_iter()
            .map(batch_pattern)
            .collect();
    batches.insert(rpc::SUBMIT_BATCH.into(), rpc::SUBMIT.into());
    let mut index = serde_json::json!({
        "description": "Gigafactory RPC plane: NATS request/reply subjects served by the coordinators. Replies are {\"ok\": ...} or {\"error\": {\"kind\", \"message\"}}.",
        "subjects": {
            rpc::SUBMIT: entry("job_spec", "submit_reply"),
            rpc::GET_JOB: entry("get_job_request", "get_job_reply"),
            rpc::LIST_JOBS: entry("job_list_request", "job_page_reply"),
            rpc::CANCEL: entry("cancel_request", "cancel_reply"),
            rpc::EXPLAIN: entry("job_action", "explain_reply"),
            rpc::REQUEUE: entry("job_action", "cancel_reply"),
            rpc::REJECT: entry("job_action", "cancel_reply"),
            rpc::DAG: entry("job_action", "dag_reply"),
            rpc::SUBMIT_CHILD: entry("child_request", "submit_reply"),
            rpc::BUDGET_SET: entry("budget_update", "budget_reply"),
            rpc::BUDGET_LIST: entry("empty_request", "budget_list_reply"),
            rpc::SCHEDULE_ADD: entry("schedule", "schedule_reply"),
            rpc::SCHEDULE_LIST: entry("empty_request", "schedule_list_reply"),
            rpc::SCHEDULE_REMOVE: entry("schedule_name", "release_reply"),
        },
        "factory_subjects": {
            "description": "Requests a factory (worker) sends on its own behalf, on gf.rpc.w.<factory>.<verb>: <factory> is the worker id, and the coordinators take the sender from the subject. A request whose worker_id names another worker is refused with kind `forbidden`.",
            "pattern": format!("{}.{{factory}}.{{verb}}", names::FACTORY_RPC_PREFIX),
            "factory": {"description": "the worker id: 1 to 64 of A-Z a-z 0-9 _ - (but not `_` alone)", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
            "verbs": factory_verbs,
        },
        "batches": {
            "description": "A batch subject's request is a JSON array (at most MAX_BATCH items) of its single subject's requests; its reply is {\"ok\": [each item's own envelope, in order]}. Each item is applied exactly as if sent alone. In factory subjects `*` stands for the factory.",
            "max_items": crate::rpc::MAX_BATCH,
            "subjects": batches,
        },
        "streams": {
            "events": {"subject": names::EVENTS_ALL, "message": "event.schema.json", "batch": "under load a message may hold a JSON array of events of its subject's kind"},
            "logs": {"subject": names::LOGS_ALL, "message": "log_line.schema.json", "pattern": "gf.logs.{factory}.{job}", "read_one_job": "gf.logs.*.{job}"},
            "dispatch": {"subject": names::DISPATCH_ALL, "message": "dispatch_notice.schema.json"},
            "bridge": {"subject": names::BRIDGE_OUT_ALL, "message": "echo.schema.json"},
            "outcomes": {"subject": names::OUTCOMES_ALL, "message": "outcome_row.schema.json", "pattern": "gf.outcomes.{product}", "batch": "a message holds a JSON array of rows; keep the first per job_id and epoch"},
        }
    });
    // Workflow subjects (profiles, manifests, the tracker bridge's deliveries).
    let workflow = [
        (rpc::MANIFEST_SUBMIT, entry("manifest", "manifest_reply")),
        (rpc::MANIFEST_GET, entry("manifest_name", "manifest_reply")),
        (
            rpc::PROFILE_LIST,
            entry("empty_request", "profile_list_reply"),
        ),
        (
            rpc::BRIDGE_DELIVERIES,
            entry("delivery_query", "delivery_list_reply"),
        ),
        (
            rpc::BRIDGE_REDELIVER,
            entry("redeliver_request", "delivery_reply"),
        ),
        (
            rpc::ARTIFACT_LIST,
            entry("get_job_request", "artifact_list_reply"),
        ),
        (
            rpc::ARTIFACT_READ,
            entry("artifact_read_request", "artifact_read_reply"),
        ),
    ];
    if let Some(subjects) = index["subjects"].as_object_mut() {
        for (subject, e) in workflow {
            subjects.insert(subject.into(), e);
        }
    }
    index
}

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
        ("job_list_request", s::<rpc::JobListRequest>()),
        ("job_page_reply", s::<Reply<rpc::JobPage>>()),
        ("cancel_request", s::<rpc::CancelRequest>()),
        ("cancel_reply", s::<Reply<rpc::CancelReply>>()),
        ("register_request", s::<rpc::RegisterRequest>()),
        ("register_reply", s::<Reply<rpc::RegisterReply>>()),
        ("heartbeat_request", s::<rpc::HeartbeatRequest>()),
        ("heartbeat_reply", s::<Reply<rpc::HeartbeatReply>>()),
        ("claim_request", s::<rpc::ClaimRequest>()),
        ("claim_reply", s::<Reply<rpc::ClaimReply>>()),
        ("renew_request", s::<rpc::RenewRequest>()),
        ("renew_reply", s::<Reply<rpc::RenewReply>>()),
        ("complete_request", s::<rpc::CompleteRequest>()),
        ("complete_reply", s::<Reply<rpc::CompleteReply>>()),
        ("release_request", s::<rpc::ReleaseRequest>()),
        ("release_reply", s::<Reply<()>>()),
        ("control_message", s::<rpc::ControlMessage>()),
        ("control_ack", s::<Reply<rpc::ControlAck>>()),
        ("dispatch_notice", s::<rpc::DispatchNotice>()),
        ("event", s::<Event>()),
        ("log_line", s::<LogLine>()),
        ("worker_record", s::<WorkerRecord>()),
        ("rpc_error", s::<RpcError>()),
        ("budget", s::<Budget>()),
        ("schedule", s::<Schedule>()),
        ("explanation", s::<Explanation>()),
        ("job_action", s::<rpc::JobAction>()),
        ("explain_reply", s::<Reply<Explanation>>()),
        ("dag_reply", s::<Reply<rpc::Dag>>()),
        ("child_request", s::<rpc::ChildRequest>()),
        ("budget_update", s::<rpc::BudgetUpdate>()),
        ("budget_reply", s::<Reply<Budget>>()),
        ("budget_list_reply", s::<Reply<Vec<Budget>>>()),
        ("schedule_reply", s::<Reply<Schedule>>()),
        ("schedule_list_reply", s::<Reply<Vec<Schedule>>>()),
        ("schedule_name", s::<rpc::ScheduleName>()),
        ("manifest", s::<Manifest>()),
        ("manifest_name", s::<manifest::ManifestName>()),
        ("manifest_reply", s::<Reply<ManifestStatus>>()),
        ("profile", s::<Profile>()),
        ("profile_list_reply", s::<Reply<Vec<NamedProfile>>>()),
        ("echo", s::<bridge::Echo>()),
        ("webhook_reply", s::<bridge::WebhookReply>()),
        ("delivery_query", s::<bridge::DeliveryQuery>()),
        ("delivery_list_reply", s::<Reply<Vec<bridge::Delivery>>>()),
        ("redeliver_request", s::<bridge::RedeliverRequest>()),
        ("delivery_reply", s::<Reply<bridge::Delivery>>()),
        ("outcome_row", s::<outcome::OutcomeRow>()),
        ("upload_begin_request", s::<artifact::UploadBeginRequest>()),
        (
            "upload_begin_reply",
            s::<Reply<artifact::UploadBeginReply>>(),
        ),
        ("upload_chunk_request", s::<artifact::UploadChunkRequest>()),
        (
            "upload_commit_request",
            s::<artifact::UploadCommitRequest>(),
        ),
        ("upload_commit_reply", s::<Reply<artifact::JobArtifacts>>()),
        (
            "checkpoint_read_request",
            s::<artifact::CheckpointReadRequest>(),
        ),
        (
            "checkpoint_read_reply",
            s::<Reply<artifact::CheckpointReadReply>>(),
        ),
        ("job_artifacts", s::<artifact::JobArtifacts>()),
        ("artifact_list_reply", s::<Reply<artifact::JobArtifacts>>()),
        (
            "artifact_read_request",
            s::<artifact::ArtifactReadRequest>(),
        ),
        (
            "artifact_read_reply",
            s::<Reply<artifact::ArtifactReadReply>>(),
        ),
        (
            "empty_request",
            serde_json::json!({"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "EmptyRequest", "description": "Any body (ignored); send `{}`."}),
        ),
    ]
}
