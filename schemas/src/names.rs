//! Subject, bucket and stream names. No subject string is built anywhere else.
//!
//! Dispatch routing: the configured routing dimensions (default `queue`, `os`, `arch`)
//! become subject tokens, `gf.dispatch.<queue>.<os>.<arch>`, with [`ANY`] (`_`) where the
//! job accepts any value. A worker listens on every combination of "its own value" and
//! `_` per dimension, so a notice reaches exactly the workers whose dimension values fit.

use std::collections::BTreeMap;

use crate::{JobId, JobSpec, WorkerId};

/// Token meaning "any value" in a dispatch subject.
pub const ANY: &str = "_";

pub const BUCKET_JOBS: &str = "gf_jobs";
pub const BUCKET_WORKERS: &str = "gf_workers";
pub const BUCKET_IDEM: &str = "gf_idem";
pub const BUCKET_LEADER: &str = "gf_leader";
pub const BUCKET_BUDGETS: &str = "gf_budgets";
pub const BUCKET_SCHEDULES: &str = "gf_schedules";
/// Manifests by name: their jobs' names and ids.
pub const BUCKET_MANIFESTS: &str = "gf_manifests";
/// The tracker bridge: items and their jobs, seen webhook deliveries, and outbound
/// deliveries (keys from [`bridge_item_key`], [`bridge_seen_key`],
/// [`bridge_job_key`], [`bridge_delivery_key`]).
pub const BUCKET_BRIDGE: &str = "gf_bridge";
/// State changes of bridged jobs waiting to be echoed to their trackers.
pub const STREAM_BRIDGE: &str = "GF_BRIDGE";
/// Object store of artifacts and checkpoints (its stream is `OBJ_gf_artifacts`).
pub const OBJECT_ARTIFACTS: &str = "gf_artifacts";
/// Per job: its stored artifacts, its checkpoint and refused uploads (key: the job
/// id). The index is the truth of what is listed and restored; the object store
/// holds the bytes.
pub const BUCKET_ARTIFACT_INDEX: &str = "gf_artifact_index";
pub const BRIDGE_OUT_ALL: &str = "gf.bridge.out.>";
pub const STREAM_USAGE: &str = "GF_USAGE";
pub const USAGE_ALL: &str = "gf.usage.>";
pub const STREAM_DISPATCH: &str = "GF_DISPATCH";
pub const STREAM_EVENTS: &str = "GF_EVENTS";
pub const STREAM_LOGS: &str = "GF_LOGS";
/// One row per finished attempt (see `outcome::OutcomeRow`), what placement learns from.
pub const STREAM_OUTCOMES: &str = "GF_OUTCOMES";
pub const OUTCOMES_ALL: &str = "gf.outcomes.>";

/// KV key (in [`BUCKET_LEADER`]) holding the scheduler leader's lease.
pub const LEADER_KEY: &str = "scheduler";

pub const DISPATCH_ALL: &str = "gf.dispatch.>";
pub const EVENTS_ALL: &str = "gf.events.>";
pub const LOGS_ALL: &str = "gf.logs.>";

/// Queue group every coordinator replica serves the RPC plane in.
pub const RPC_QUEUE_GROUP: &str = "gf-coordinators";

/// The RPC plane: request/reply subjects served by the coordinators.
///
/// Two kinds of subject share it. Operator and client requests (submit, job queries,
/// cancel, budgets, schedules…) are the constants here. Requests a factory sends on its
/// own behalf (register, heartbeat, claim, renew, complete, release and their batches)
/// carry the sender in the subject, `gf.rpc.w.<factory>.<verb>`: built by
/// [`super::factory_rpc`], parsed back by [`super::parse_factory_rpc`].
pub mod rpc {
    /// Wildcard covering every RPC subject (what coordinators subscribe to).
    pub const ALL: &str = "gf.rpc.>";
    pub const SUBMIT: &str = "gf.rpc.submit";
    pub const GET_JOB: &str = "gf.rpc.job.get";
    /// A page of jobs, from the live store and the archive (docs/history.md).
    pub const LIST_JOBS: &str = "gf.rpc.job.list";
    pub const CANCEL: &str = "gf.rpc.job.cancel";
    pub const EXPLAIN: &str = "gf.rpc.job.explain";
    pub const REQUEUE: &str = "gf.rpc.job.requeue";
    pub const REJECT: &str = "gf.rpc.job.reject";
    /// A child job under a running parent. A client RPC, not a factory one: the job's
    /// own process sends it (`gf submit --parent $GF_JOB_ID`) with whatever client
    /// credentials it was given, never with its factory's, so a job cannot act as the
    /// factory it runs on (claim, complete, read its consumers).
    pub const SUBMIT_CHILD: &str = "gf.rpc.job.child";
    pub const DAG: &str = "gf.rpc.job.dag";
    pub const BUDGET_LIST: &str = "gf.rpc.budget.list";
    pub const BUDGET_SET: &str = "gf.rpc.budget.set";
    pub const SCHEDULE_ADD: &str = "gf.rpc.schedule.add";
    pub const SCHEDULE_LIST: &str = "gf.rpc.schedule.list";
    pub const SCHEDULE_REMOVE: &str = "gf.rpc.schedule.remove";
    pub const MANIFEST_SUBMIT: &str = "gf.rpc.manifest.submit";
    pub const MANIFEST_GET: &str = "gf.rpc.manifest.get";
    pub const PROFILE_LIST: &str = "gf.rpc.profile.list";
    pub const BRIDGE_DELIVERIES: &str = "gf.rpc.bridge.deliveries";
    pub const BRIDGE_REDELIVER: &str = "gf.rpc.bridge.redeliver";
    /// A job's artifacts and checkpoint (body: `{"job_id"}`).
    pub const ARTIFACT_LIST: &str = "gf.rpc.artifact.list";
    /// One artifact's (or the checkpoint's) bytes, a chunk at a time.
    pub const ARTIFACT_READ: &str = "gf.rpc.artifact.read";
    /// Batches: the body is a JSON array of the single subject's requests (at most
    /// [`crate::rpc::MAX_BATCH`]); the reply is `{"ok": [...]}` holding each item's own
    /// envelope, in order. Each item is applied exactly as if sent alone. The factory
    /// batches are the verbs [`super::FactoryVerb::ClaimBatch`] and
    /// [`super::FactoryVerb::CompleteBatch`].
    pub const SUBMIT_BATCH: &str = "gf.rpc.batch.submit";

    /// The single-request subject a batch subject carries items of.
    pub fn batched(subject: &str) -> Option<&'static str> {
        match subject {
            SUBMIT_BATCH => Some(SUBMIT),
            _ => None,
        }
    }

    /// Where the worker RPCs were before they moved under `gf.rpc.w.<factory>`: a
    /// coordinator answers a request on one of them with a hint to upgrade the worker.
    pub const LEGACY_FACTORY_SUBJECTS: [&str; 8] = [
        "gf.rpc.register",
        "gf.rpc.heartbeat",
        "gf.rpc.claim",
        "gf.rpc.renew",
        "gf.rpc.complete",
        "gf.rpc.release",
        "gf.rpc.batch.claim",
        "gf.rpc.batch.complete",
    ];
}

/// First tokens of every factory RPC subject: `gf.rpc.w.<factory>.<verb>`.
pub const FACTORY_RPC_PREFIX: &str = "gf.rpc.w";

/// What a factory asks the coordinators on its own behalf: the last token of
/// `gf.rpc.w.<factory>.<verb>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FactoryVerb {
    Register,
    Heartbeat,
    Claim,
    Renew,
    Complete,
    Release,
    /// A JSON array of claims (see [`rpc::SUBMIT_BATCH`] for the batch rules).
    ClaimBatch,
    /// A JSON array of completions.
    CompleteBatch,
    /// Artifacts and checkpoints (see [`crate::artifact`]): start an upload…
    UploadBegin,
    /// …send one chunk…
    UploadChunk,
    /// …and make it count.
    UploadCommit,
    /// Reads the job's last checkpoint, a chunk at a time.
    CheckpointRead,
}

impl FactoryVerb {
    pub const ALL: [FactoryVerb; 12] = [
        FactoryVerb::Register,
        FactoryVerb::Heartbeat,
        FactoryVerb::Claim,
        FactoryVerb::Renew,
        FactoryVerb::Complete,
        FactoryVerb::Release,
        FactoryVerb::ClaimBatch,
        FactoryVerb::CompleteBatch,
        FactoryVerb::UploadBegin,
        FactoryVerb::UploadChunk,
        FactoryVerb::UploadCommit,
        FactoryVerb::CheckpointRead,
    ];

    /// The subject token, also a bounded metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            FactoryVerb::Register => "register",
            FactoryVerb::Heartbeat => "heartbeat",
            FactoryVerb::Claim => "claim",
            FactoryVerb::Renew => "renew",
            FactoryVerb::Complete => "complete",
            FactoryVerb::Release => "release",
            FactoryVerb::ClaimBatch => "claim_batch",
            FactoryVerb::CompleteBatch => "complete_batch",
            FactoryVerb::UploadBegin => "upload_begin",
            FactoryVerb::UploadChunk => "upload_chunk",
            FactoryVerb::UploadCommit => "upload_commit",
            FactoryVerb::CheckpointRead => "checkpoint_read",
        }
    }

    pub fn parse(token: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == token)
    }

    /// For a batch verb, the verb of its items.
    pub fn batched(self) -> Option<Self> {
        match self {
            FactoryVerb::ClaimBatch => Some(FactoryVerb::Claim),
            FactoryVerb::CompleteBatch => Some(FactoryVerb::Complete),
            _ => None,
        }
    }
}

impl std::fmt::Display for FactoryVerb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The subject a factory sends `verb` on: `gf.rpc.w.<factory>.<verb>`.
pub fn factory_rpc(factory: &WorkerId, verb: FactoryVerb) -> String {
    format!("{FACTORY_RPC_PREFIX}.{factory}.{verb}")
}

/// The pattern of `verb`'s subjects with the factory as a wildcard,
/// `gf.rpc.w.*.<verb>`: for span names, documentation and the published index.
pub fn factory_rpc_pattern(verb: FactoryVerb) -> String {
    format!("{FACTORY_RPC_PREFIX}.*.{verb}")
}

/// Every RPC subject a factory may publish: `gf.rpc.w.<factory>.>`.
pub fn factory_rpc_all(factory: &WorkerId) -> String {
    format!("{FACTORY_RPC_PREFIX}.{factory}.>")
}

/// A factory RPC subject, parsed: who sent it (as the server authorised the
/// publisher for that subject) and what it asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FactoryRpc {
    pub factory: WorkerId,
    pub verb: FactoryVerb,
}

/// Why a subject is not a factory RPC subject.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FactorySubjectError {
    /// Not under `gf.rpc.w.` at all (an operator or client subject, or garbage).
    #[error("not a factory RPC subject")]
    NotFactory,
    #[error("`{0}` is not a valid factory id in a factory RPC subject")]
    BadFactory(String),
    #[error("unknown factory RPC verb `{0}`")]
    UnknownVerb(String),
    #[error("a factory RPC subject is gf.rpc.w.<factory>.<verb>, not `{0}`")]
    Shape(String),
}

/// Parses `gf.rpc.w.<factory>.<verb>`. Total over any input (no panics, no
/// allocation beyond the result and error text): the coordinator runs it on every
/// subject it receives.
pub fn parse_factory_rpc(subject: &str) -> Result<FactoryRpc, FactorySubjectError> {
    let Some(rest) = subject
        .strip_prefix(FACTORY_RPC_PREFIX)
        .and_then(|r| r.strip_prefix('.'))
    else {
        return Err(FactorySubjectError::NotFactory);
    };
    let mut tokens = rest.split('.');
    let (Some(factory), Some(verb), None) = (tokens.next(), tokens.next(), tokens.next()) else {
        return Err(FactorySubjectError::Shape(
            subject.chars().take(200).collect(),
        ));
    };
    let factory = WorkerId::new(factory)
        .map_err(|_| FactorySubjectError::BadFactory(factory.chars().take(80).collect()))?;
    let verb = FactoryVerb::parse(verb)
        .ok_or_else(|| FactorySubjectError::UnknownVerb(verb.chars().take(80).collect()))?;
    Ok(FactoryRpc { factory, verb })
}

/// The inbox prefix a factory's connection uses (`ConnectOptions::custom_inbox_prefix`)
/// for every reply it waits for: RPC replies, JetStream API replies, pulled messages,
/// publish acks. A factory may subscribe `<prefix>.>` and nothing like `_INBOX.>`, so it
/// cannot read other connections' replies.
pub fn factory_inbox_prefix(factory: &WorkerId) -> String {
    format!("_INBOX_{factory}")
}

/// The inbox prefix of a static client user (a submitter, `gf admin user create`):
/// `_CLIENT_<user>`. Not `_INBOX_<user>`: a factory could be enrolled with the same
/// name and would share it. `user` is a token (`is_token`), so the prefix is one token.
pub fn client_inbox_prefix(user: &str) -> String {
    format!("_CLIENT_{user}")
}

/// The JetStream API and ack subjects a client touches on a stream's consumer; what a
/// factory's permissions grant on the consumers approved for it.
pub mod js {
    /// `CONSUMER.INFO`: binding an existing consumer (`get_consumer_from_stream`), and
    /// what a pull re-reads after a reconnect.
    pub fn consumer_info(stream: &str, consumer: &str) -> String {
        format!("$JS.API.CONSUMER.INFO.{stream}.{consumer}")
    }
    /// `CONSUMER.MSG.NEXT`: a pull request (fetch, batch, messages).
    pub fn consumer_next(stream: &str, consumer: &str) -> String {
        format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}")
    }
    /// Every ack subject of the consumer in the classic form,
    /// `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>`.
    pub fn acks(stream: &str, consumer: &str) -> String {
        format!("$JS.ACK.{stream}.{consumer}.>")
    }
    /// Every ack subject of the consumer in the v2 form (domain and account hash first,
    /// `$JS.ACK.<domain|_>.<account hash>.<stream>.<consumer>.…`), which a server with
    /// the `js_ack_fc_v2` feature flag uses and later ones will by default.
    pub fn acks_v2(stream: &str, consumer: &str) -> String {
        format!("$JS.ACK.*.*.{stream}.{consumer}.>")
    }
    /// `CONSUMER.CREATE` (what a factory must never be granted: a consumer's creator
    /// picks its filter and so reads any subject of the stream).
    pub fn consumer_create(stream: &str, consumer: &str) -> String {
        format!("$JS.API.CONSUMER.CREATE.{stream}.{consumer}")
    }
    pub fn stream_info(stream: &str) -> String {
        format!("$JS.API.STREAM.INFO.{stream}")
    }
    /// Every subject of a KV bucket (`$KV.<bucket>.>`).
    pub fn kv_all(bucket: &str) -> String {
        format!("$KV.{bucket}.>")
    }
    /// The subject a KV put of `key` publishes to.
    pub fn kv(bucket: &str, key: &str) -> String {
        format!("$KV.{bucket}.{key}")
    }
    /// A direct get on a stream (how KV values are read).
    pub fn direct_get(stream: &str) -> String {
        format!("$JS.API.DIRECT.GET.{stream}")
    }
}

/// The span and label name of an RPC subject: the subject itself, except that a
/// factory subject's factory becomes `*` (`gf.rpc.w.*.claim`), so names stay bounded.
pub fn rpc_name(subject: &str) -> std::borrow::Cow<'_, str> {
    match parse_factory_rpc(subject) {
        Ok(FactoryRpc { verb, .. }) => factory_rpc_pattern(verb).into(),
        Err(_) => subject.into(),
    }
}

/// Subject a product's outcome rows are published on.
pub fn outcomes(product: &str) -> String {
    format!("gf.outcomes.{product}")
}

/// Subject a product's usage entries are published on.
pub fn usage(product: &str) -> String {
    format!("gf.usage.{product}")
}

/// `true` when `s` is usable as a subject token, KV key part and capability value:
/// non-empty, only `A-Z a-z 0-9 _ -`.
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Subject a factory publishes one job's log lines on: `gf.logs.<factory>.<job>`.
/// The factory is in the subject so the server can let each factory publish only its
/// own (`gf.logs.<factory>.>`), and a reader knows which factory wrote a line.
pub fn logs(factory: &WorkerId, job: &JobId) -> String {
    format!("gf.logs.{factory}.{job}")
}

/// Filter for one job's log lines whichever factory wrote them: `gf.logs.*.<job>`.
/// Every reader uses it (a job's attempts may run on several factories).
pub fn job_logs(job: &JobId) -> String {
    format!("gf.logs.*.{job}")
}

/// Every log subject a factory may publish: `gf.logs.<factory>.>`.
pub fn factory_logs_all(factory: &WorkerId) -> String {
    format!("gf.logs.{factory}.>")
}

/// The factory and job of a log subject, `None` for anything else.
pub fn parse_logs(subject: &str) -> Option<(WorkerId, JobId)> {
    let rest = subject.strip_prefix("gf.logs.")?;
    let (factory, job) = rest.split_once('.')?;
    Some((WorkerId::new(factory).ok()?, job.parse().ok()?))
}

/// Subject an event is published on: `gf.events.<kind>`.
pub fn event(kind: crate::EventKind) -> String {
    format!("gf.events.{}", kind.as_str())
}

/// Control subject a worker listens on for revocations pushed by coordinators, drain
/// requests and the leases granted to it at dispatch.
pub fn worker_control(worker: &WorkerId) -> String {
    format!("gf.ctl.worker.{worker}")
}

/// The chunk subject of an object in [`OBJECT_ARTIFACTS`], `$O.gf_artifacts.C.<nuid>`.
/// Our uploads' nuids are `<job>.<attempt or ckpt>.<nonce>` (the object store reads a
/// chunk set by this exact subject, whatever its tokens), so every chunk of a job,
/// committed or abandoned, is under [`artifact_job_chunks`].
pub fn artifact_chunks(nuid: &str) -> String {
    format!("$O.{OBJECT_ARTIFACTS}.C.{nuid}")
}

/// Every chunk subject of one job's uploads: `$O.gf_artifacts.C.<job>.>`.
pub fn artifact_job_chunks(job: &JobId) -> String {
    format!("$O.{OBJECT_ARTIFACTS}.C.{job}.>")
}

/// The nuid of an upload: `<job>.<part>.<nonce>`; `part` is the attempt number or
/// `ckpt`.
pub fn artifact_nuid(job: &JobId, part: &str, nonce: &str) -> String {
    format!("{job}.{part}.{nonce}")
}

/// The meta subject of an object in [`OBJECT_ARTIFACTS`]: its name base64url-encoded
/// (padded), as every object store client writes it.
pub fn artifact_meta(encoded_name: &str) -> String {
    format!("$O.{OBJECT_ARTIFACTS}.M.{encoded_name}")
}

/// [`worker_control`] with the worker as `*`: the bounded name of its spans.
pub const WORKER_CONTROL_ANY: &str = "gf.ctl.worker.*";

/// KV key of a job in [`BUCKET_JOBS`].
pub fn job_key(job: &JobId) -> String {
    job.to_string()
}

/// KV key of an idempotency key in [`BUCKET_IDEM`]: `<product>.<sha256-hex of key>`.
/// Hashing keeps arbitrary client keys inside the KV key alphabet.
pub fn idem_key(product: &str, key_hash_hex: &str) -> String {
    format!("{product}.{key_hash_hex}")
}

/// Subject of a bridged job's outbound state changes: `gf.bridge.out.<source>.<job>`.
/// One source's subjects are delivered in order, by one consumer per source.
pub fn bridge_out(source: &str, job: &JobId) -> String {
    format!("gf.bridge.out.{source}.{job}")
}

/// Filter of one source's outbound state changes.
pub fn bridge_out_source(source: &str) -> String {
    format!("gf.bridge.out.{source}.>")
}

/// Durable consumer delivering one source's state changes.
pub fn bridge_consumer(source: &str) -> String {
    format!("gf-bridge-{source}")
}

/// KV key (in [`BUCKET_BRIDGE`]) of a tracker item's job: `item.<source>.<sha256 hex
/// of the item key and revision>` (hashed: item keys hold `/`, `#`, spaces).
pub fn bridge_item_key(source: &str, item_hash_hex: &str) -> String {
    format!("item.{source}.{item_hash_hex}")
}

/// KV key of a handled webhook delivery id (replay protection).
pub fn bridge_seen_key(source: &str, delivery_hash_hex: &str) -> String {
    format!("seen.{source}.{delivery_hash_hex}")
}

/// KV key of a bridged job's link to its item.
pub fn bridge_job_key(job: &JobId) -> String {
    format!("job.{job}")
}

/// KV key of one outbound delivery; `id` is `<job>.<revision>` (KV-safe).
pub fn bridge_delivery_key(id: &str) -> String {
    format!("delivery.{id}")
}

/// The routing dimensions, in subject order. `queue` is the job's queue; every other
/// dimension is read from the job's `requires` and a worker's capabilities.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routing {
    dims: Vec<String>,
}

pub const DEFAULT_DIMS: [&str; 3] = ["queue", "os", "arch"];

impl Default for Routing {
    fn default() -> Self {
        Self::new(DEFAULT_DIMS.iter().map(|s| s.to_string()).collect()).expect("valid")
    }
}

impl Routing {
    /// Dimensions must be distinct tokens and start with `queue`.
    pub fn new(dims: Vec<String>) -> Result<Self, String> {
        if dims.first().map(String::as_str) != Some("queue") {
            return Err("routing dimensions must start with `queue`".into());
        }
        if dims.len() > 6 {
            return Err("at most 6 routing dimensions (workers bind 2^n filters)".into());
        }
        for (i, d) in dims.iter().enumerate() {
            if !is_token(d) || dims[..i].contains(d) {
                return Err(format!("routing dimension `{d}` is not a distinct token"));
            }
        }
        Ok(Self { dims })
    }
    pub fn dims(&self) -> &[String] {
        &self.dims
    }

    /// The route a job's notices go to.
    pub fn route_of(&self, spec: &JobSpec) -> Route {
        let tokens = self
            .dims
            .iter()
            .map(|d| {
                if d == "queue" {
                    spec.queue.clone()
                } else {
                    spec.requires
                        .get(d)
                        .cloned()
                        .unwrap_or_else(|| ANY.to_string())
                }
            })
            .collect();
        Route { tokens }
    }

    /// Filter subjects for a worker serving `queues` with `caps`: for each dimension,
    /// its own value or `_`. A worker lacking a dimension only matches `_` there.
    pub fn worker_filters(
        &self,
        queues: &[String],
        caps: &BTreeMap<String, String>,
    ) -> Vec<String> {
        let mut acc: Vec<Vec<String>> = queues.iter().map(|q| vec![q.clone()]).collect();
        for d in self.dims.iter().skip(1) {
            let mut next = Vec::with_capacity(acc.len() * 2);
            for prefix in &acc {
                if let Some(v) = caps.get(d) {
                    let mut p = prefix.clone();
                    p.push(v.clone());
                    next.push(p);
                }
                let mut p = prefix.clone();
                p.push(ANY.to_string());
                next.push(p);
            }
            acc = next;
        }
        acc.into_iter()
            .map(|tokens| Route { tokens }.subject())
            .collect()
    }
}

/// A dispatch route: one token per routing dimension.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    tokens: Vec<String>,
}

impl Route {
    pub fn subject(&self) -> String {
        format!("gf.dispatch.{}", self.tokens.join("."))
    }
    pub fn tokens(&self) -> &[String] {
        &self.tokens
    }
    /// Short label, e.g. `default/linux/_`.
    pub fn label(&self) -> String {
        self.tokens.join("/")
    }
}

/// The archive of finished jobs (docs/history.md): one message per job on
/// [`archive`]'s subject, kept for the archive retention.
pub const STREAM_ARCHIVE: &str = "GF_ARCHIVE";
pub const ARCHIVE_ALL: &str = "gf.archive.>";
/// The durable consumer on the jobs bucket's stream that fed the archive before the
/// scheduler leader did; coordinators remove it when they start.
pub const ARCHIVER_CONSUMER: &str = "gf_archiver";
/// The archive's position: every finished job write up to the `gf_jobs` revision
/// stored under [`ARCHIVE_POSITION_KEY`] (decimal text) is archived.
pub const BUCKET_ARCHIVE_POSITION: &str = "gf_archive_position";
pub const ARCHIVE_POSITION_KEY: &str = "through";

/// Subject of a finished job in [`STREAM_ARCHIVE`]:
/// `gf.archive.<yyyymmdd>.<state>.<queue>.<job>`, the day being the job's creation day
/// (from its UUIDv7 id), so the id alone finds it ([`archive_job`]) and a listing by
/// state and queue walks one day's partition. The queue is a token (validated at
/// submission).
pub fn archive(day: &str, state: crate::JobState, queue: &str, job: &JobId) -> String {
    format!("gf.archive.{day}.{}.{queue}.{job}", state.as_str())
}

/// Filter matching a job's archived record whatever its state and queue.
pub fn archive_job(day: &str, job: &JobId) -> String {
    format!("gf.archive.{day}.*.*.{job}")
}

/// Filter of one day's archived jobs, optionally of one state and queue.
pub fn archive_day(day: &str, state: Option<crate::JobState>, queue: Option<&str>) -> String {
    format!(
        "gf.archive.{day}.{}.{}.*",
        state.map(|s| s.as_str()).unwrap_or("*"),
        queue.unwrap_or("*")
    )
}

/// The day, state and queue of an archive subject.
pub fn parse_archive(subject: &str) -> Option<(&str, &str, &str, JobId)> {
    let mut t = subject.strip_prefix("gf.archive.")?.split('.');
    let (day, state, queue, job) = (t.next()?, t.next()?, t.next()?, t.next()?);
    if t.next().is_some() {
        return None;
    }
    Some((day, state, queue, job.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(queue: &str, requires: &[(&str, &str)]) -> JobSpec {
        let mut s = JobSpec::command(["true"]);
        s.queue = queue.into();
        s.requires = requires
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        s
    }

    /// A job's route uses `_` for dimensions it does not constrain.
    #[test]
    fn route_of_job() {
        let r = Routing::default();
        assert_eq!(
            r.route_of(&spec("default", &[])).subject(),
            "gf.dispatch.default._._"
        );
        assert_eq!(
            r.route_of(&spec("gpu", &[("os", "linux"), ("gpu", "a100")]))
                .subject(),
            "gf.dispatch.gpu.linux._"
        );
    }

    /// A worker's filters cover its own values and `_` for every dimension, and the
    /// route of every job it could run is among them.
    #[test]
    fn worker_filters_cover_matching_routes() {
        let r = Routing::default();
        let caps: BTreeMap<_, _> = [("os", "linux"), ("arch", "x86_64")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let f = r.worker_filters(&["default".into()], &caps);
        assert_eq!(
            f,
            vec![
                "gf.dispatch.default.linux.x86_64",
                "gf.dispatch.default.linux._",
                "gf.dispatch.default._.x86_64",
                "gf.dispatch.default._._",
            ]
        );
        for job in [
            spec("default", &[]),
            spec("default", &[("os", "linux")]),
            spec("default", &[("arch", "x86_64"), ("os", "linux")]),
        ] {
            assert!(f.contains(&r.route_of(&job).subject()));
        }
        assert!(!f.contains(&r.route_of(&spec("default", &[("os", "plan9")])).subject()));
        assert!(!f.contains(&r.route_of(&spec("other", &[])).subject()));
    }

    /// Every factory subject parses back to the factory and verb it was built from.
    #[test]
    fn factory_rpc_round_trips() {
        let f = WorkerId::new("host-1_a").unwrap();
        for verb in FactoryVerb::ALL {
            let subject = factory_rpc(&f, verb);
            assert_eq!(subject, format!("gf.rpc.w.host-1_a.{}", verb.as_str()));
            assert_eq!(
                parse_factory_rpc(&subject),
                Ok(FactoryRpc {
                    factory: f.clone(),
                    verb
                })
            );
            assert_eq!(rpc_name(&subject), format!("gf.rpc.w.*.{verb}"));
        }
        assert_eq!(factory_rpc_all(&f), "gf.rpc.w.host-1_a.>");
        assert_eq!(FactoryVerb::ClaimBatch.batched(), Some(FactoryVerb::Claim));
        assert_eq!(FactoryVerb::Claim.batched(), None);
    }

    /// Operator subjects, foreign subjects and every malformed factory subject are
    /// told apart, and the factory token obeys the worker id rules.
    #[test]
    fn factory_rpc_parse_refuses_what_is_not_one() {
        use FactorySubjectError::*;
        for s in [
            rpc::SUBMIT,
            rpc::SUBMIT_BATCH,
            "",
            "gf",
            "gf.rpc.w",
            "gf.rpc.wx.a.claim",
            "x.gf.rpc.w.a.claim",
        ] {
            assert_eq!(parse_factory_rpc(s), Err(NotFactory), "{s:?}");
        }
        for s in [
            "gf.rpc.w.",
            "gf.rpc.w.a",
            "gf.rpc.w.a.claim.x",
            "gf.rpc.w.a.b.claim",
        ] {
            assert!(matches!(parse_factory_rpc(s), Err(Shape(_))), "{s:?}");
        }
        for s in [
            "gf.rpc.w..claim",
            "gf.rpc.w.*.claim",
            "gf.rpc.w.>.claim",
            "gf.rpc.w._.claim",
            "gf.rpc.w.a b.claim",
            "gf.rpc.w.\u{e9}.claim",
        ] {
            assert!(matches!(parse_factory_rpc(s), Err(BadFactory(_))), "{s:?}");
        }
        let long = format!("gf.rpc.w.{}.claim", "a".repeat(65));
        assert!(matches!(parse_factory_rpc(&long), Err(BadFactory(_))));
        for s in [
            "gf.rpc.w.a.submit",
            "gf.rpc.w.a.",
            "gf.rpc.w.a.Claim",
            "gf.rpc.w.a.>",
        ] {
            assert!(matches!(parse_factory_rpc(s), Err(UnknownVerb(_))), "{s:?}");
        }
        assert_eq!(rpc_name(rpc::SUBMIT), rpc::SUBMIT);
        assert_eq!(rpc_name("gf.rpc.w.*.claim"), "gf.rpc.w.*.claim");
    }

    /// Log subjects carry the factory first; readers filter on any factory.
    #[test]
    fn log_subjects() {
        let f = WorkerId::new("w1").unwrap();
        let job: JobId = "019a0000-0000-7000-8000-000000000001".parse().unwrap();
        let s = logs(&f, &job);
        assert_eq!(s, format!("gf.logs.w1.{job}"));
        assert_eq!(job_logs(&job), format!("gf.logs.*.{job}"));
        assert_eq!(factory_logs_all(&f), "gf.logs.w1.>");
        assert_eq!(parse_logs(&s), Some((f, job)));
        for bad in [
            "gf.logs",
            "gf.logs.w1",
            "gf.logs.w1.nope",
            "gf.logs.*.x",
            "gf.logs.a.b.c",
            "other",
        ] {
            assert_eq!(parse_logs(bad), None, "{bad:?}");
        }
        assert!(
            LOGS_ALL.ends_with(".>"),
            "the stream captures every factory's lines"
        );
    }

    #[test]
    fn routing_dims_validated() {
        assert!(Routing::new(vec!["os".into()]).is_err());
        assert!(Routing::new(vec!["queue".into(), "os".into(), "os".into()]).is_err());
        assert!(Routing::new(vec!["queue".into(), "a.b".into()]).is_err());
        assert!(Routing::new(vec!["queue".into(), "gpu".into()]).is_ok());
    }
}

/// Authentication (issue #15): the auth callout's subject, its buckets and keys, and the
/// system subjects the coordinators use on factories' connections.
pub mod auth {
    use crate::WorkerId;

    /// Where nats-server asks who a connecting client is (config-mode auth callout).
    pub const CALLOUT: &str = "$SYS.REQ.USER.AUTH";
    /// The queue group every coordinator replica answers the callout in.
    pub const CALLOUT_GROUP: &str = "gf-auth";
    /// Enrollment tokens by id (only their secrets' hashes).
    pub const BUCKET_ENROLL: &str = "gf_enroll";
    /// Enrolled factories (`f.<id>`) and the index of their public keys (`k.<nkey>`).
    pub const BUCKET_FACTORIES: &str = "gf_factories";
    /// The account a factory's user JWT places it in (the JWT's `aud`).
    pub const ACCOUNT: &str = "GF";

    /// KV key of a factory's record in [`BUCKET_FACTORIES`].
    pub fn factory_key(id: &WorkerId) -> String {
        format!("f.{id}")
    }
    /// The prefix of every factory record's key in [`BUCKET_FACTORIES`].
    pub const FACTORY_PREFIX: &str = "f.";
    /// KV key of the public-key index entry of `nkey` in [`BUCKET_FACTORIES`]
    /// (an nkey is base32: never a `.`, `*` or `>`).
    pub fn nkey_key(nkey: &str) -> String {
        format!("k.{nkey}")
    }
    /// Operators ask the coordinators (queue group [`CALLOUT_GROUP`]) to close a
    /// revoked factory's connection now: `{"factory": ID}`, answered `{"kicked": bool}`.
    pub const KICK_REQUEST: &str = "gf.auth.kick";

    /// Disconnects a client on one server (system account): `{"cid": N}`.
    pub fn server_kick(server_id: &str) -> String {
        format!("$SYS.REQ.SERVER.{server_id}.KICK")
    }
}
