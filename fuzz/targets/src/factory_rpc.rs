//! A factory's requests on `gf.rpc.w.<factory>.<verb>`, every verb, batches included:
//! the first byte picks the verb, the rest is the body. Runs what the coordinator's
//! RPC plane runs before it reads the store (`coordinator/src/rpc.rs`,
//! `coordinator/src/artifacts/rpc.rs`): the batch split, the decode with its size
//! limit, and each verb's checks.

use std::fmt::Debug;

use gf_schemas::artifact::{
    self, BlobKind, CheckpointReadRequest, JobArtifacts, UploadBeginRequest, UploadChunkRequest,
    UploadCommitRequest, CHUNK_SIZE, MAX_UPLOAD_REQUEST,
};
use gf_schemas::names::{self, FactoryVerb, Routing};
use gf_schemas::rpc::{
    self, ClaimRequest, CompleteRequest, HeartbeatRequest, RegisterRequest, ReleaseRequest,
    RenewRequest, MAX_BATCH,
};
use gf_schemas::{FactoryRequest, WorkerId};

use crate::check::{plain_subject, round_trip, MAX_BODY};

/// The factory the subject names.
const FACTORY: &str = "fz-factory";

pub fn run(data: &[u8]) {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let verb = FactoryVerb::ALL[usize::from(pick) % FactoryVerb::ALL.len()];
    let factory = WorkerId::new(FACTORY).expect("a valid id");
    let subject = names::factory_rpc(&factory, verb);
    let parsed = names::parse_factory_rpc(&subject).expect("a factory subject parses");
    assert_eq!((&parsed.factory, parsed.verb), (&factory, verb));
    match verb.batched() {
        Some(single) => {
            if let Ok(items) = rpc::batch_items(body) {
                assert!((1..=MAX_BATCH).contains(&items.len()));
                for item in items {
                    one(single, item.get().as_bytes());
                }
            }
        }
        None => one(verb, body),
    }
}

fn one(verb: FactoryVerb, body: &[u8]) {
    match verb {
        FactoryVerb::Register => {
            if let Some(r) = request::<RegisterRequest>("register request", body) {
                registered(&r);
            }
        }
        FactoryVerb::Heartbeat => drop(request::<HeartbeatRequest>("heartbeat", body)),
        FactoryVerb::Claim => drop(request::<ClaimRequest>("claim request", body)),
        FactoryVerb::Renew => drop(request::<RenewRequest>("renew request", body)),
        FactoryVerb::Complete => drop(request::<CompleteRequest>("completion", body)),
        FactoryVerb::Release => drop(request::<ReleaseRequest>("release request", body)),
        FactoryVerb::UploadBegin => {
            if let Some(r) = request::<UploadBeginRequest>("upload begin", body) {
                // What the cap is checked against never wraps below the new size.
                let stored = JobArtifacts {
                    total_bytes: 7,
                    ..Default::default()
                };
                assert!(stored.total_after(&r.name, 1, r.size) >= r.size);
                if r.kind == BlobKind::Artifact && artifact::check_name(&r.name).is_ok() {
                    // The object name stays under the job's attempt: no empty, `.` or
                    // `..` part can climb out of it.
                    let object = artifact::object_name(&r.job_id, 1, &r.name);
                    assert!(
                        object
                            .split('/')
                            .all(|p| !p.is_empty() && p != "." && p != ".."),
                        "{object}"
                    );
                }
            }
        }
        FactoryVerb::UploadChunk => {
            if let Some(r) = request::<UploadChunkRequest>("upload chunk", body) {
                if artifact::upload_kind(&r.job_id, &r.upload).is_ok() {
                    // Its chunks go to `$O.gf_artifacts.C.<upload>`: no wildcard in it.
                    plain_subject(&r.upload);
                }
                if let Ok(bytes) = artifact::decode_chunk(&r.data) {
                    assert!((1..=CHUNK_SIZE).contains(&bytes.len()));
                }
            }
        }
        FactoryVerb::UploadCommit => {
            if let Some(r) = request::<UploadCommitRequest>("upload commit", body) {
                if let Ok((kind, sha)) = r.checked() {
                    assert_eq!(kind, r.kind);
                    assert!(sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()));
                    assert_eq!(sha, sha.to_ascii_lowercase());
                    // Its chunks go to `$O.gf_artifacts.C.<upload>`: no wildcard in it.
                    plain_subject(&r.upload);
                }
            }
        }
        FactoryVerb::CheckpointRead => {
            drop(request::<CheckpointReadRequest>("checkpoint read", body))
        }
        // The coordinator refuses a batch inside a batch before decoding it.
        FactoryVerb::ClaimBatch | FactoryVerb::CompleteBatch => {}
    }
}

/// Decodes as the coordinator does; what it accepts speaks for a sender whose own
/// subject parses back to it, and survives a round trip.
fn request<T>(what: &str, body: &[u8]) -> Option<T>
where
    T: FactoryRequest + PartialEq + Debug,
{
    let max = match T::VERB {
        FactoryVerb::UploadBegin
        | FactoryVerb::UploadChunk
        | FactoryVerb::UploadCommit
        | FactoryVerb::CheckpointRead => MAX_UPLOAD_REQUEST.max(MAX_BODY),
        _ => MAX_BODY,
    };
    let req: T = rpc::decode_request(what, body, max).ok()?;
    let own = names::parse_factory_rpc(&req.subject()).expect("a request's own subject parses");
    assert_eq!((&own.factory, own.verb), (req.sender(), T::VERB));
    round_trip(&req);
    Some(req)
}

/// A registration the coordinator accepts makes only plain filter subjects: the
/// worker can never be handed a filter wider than its own capabilities.
fn registered(r: &RegisterRequest) {
    if r.validate().is_err() {
        return;
    }
    let routing = Routing::default();
    let filters = routing.worker_filters(&r.capabilities.queues, &r.capabilities.values);
    assert!(!filters.is_empty());
    for f in &filters {
        plain_subject(f);
        assert_eq!(f.split('.').count(), 2 + routing.dims().len(), "{f}");
    }
}
