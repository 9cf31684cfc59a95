//! The factory verbs of artifacts and checkpoints: `upload_begin`, `upload_chunk`,
//! `upload_commit`, `checkpoint_read`. Each decodes, checks that the subject's factory
//! is the one the payload names and that it holds the job's lease at that epoch, then
//! acts.

use base64::Engine as _;
use bytes::Bytes;
use gf_schemas::artifact::{
    self, ArtifactError, ArtifactInfo, ArtifactReadReply, ArtifactReadRequest, BlobKind,
    CheckpointInfo, CheckpointReadReply, CheckpointReadRequest, JobArtifacts, UploadBeginReply,
    UploadBeginRequest, UploadChunkRequest, UploadCommitRequest, CHUNK_SIZE, MAX_UPLOAD_REQUEST,
};
use gf_schemas::names::{self, FactoryVerb};
use gf_schemas::{ErrorKind, JobId, JobRecord, RpcError, WorkerId};

use super::{human_bytes, now, unavailable, Artifacts};
use crate::service::{decode, Service};

/// Answers one artifact or checkpoint request from factory `sender`.
pub async fn serve(
    service: &Service,
    subject: &str,
    sender: &WorkerId,
    verb: FactoryVerb,
    payload: &[u8],
) -> Bytes {
    let max = MAX_UPLOAD_REQUEST.max(service.config.max_submit_bytes);
    macro_rules! call {
        ($t:ty, $what:literal, $method:ident) => {
            match decode::<$t>($what, payload, max) {
                Err(e) => crate::rpc::reply::<()>(service, subject, Err(e)),
                Ok(req) => match crate::identity::check(sender, &req) {
                    Ok(()) => crate::rpc::reply(service, subject, $method(service, req).await),
                    Err((why, e)) => {
                        crate::identity::refused(&service.events, subject, sender, verb, why, &e);
                        crate::rpc::reply::<()>(service, subject, Err(e))
                    }
                },
            }
        };
    }
    match verb {
        FactoryVerb::UploadBegin => call!(UploadBeginRequest, "upload begin", begin),
        FactoryVerb::UploadChunk => call!(UploadChunkRequest, "upload chunk", chunk),
        FactoryVerb::UploadCommit => call!(UploadCommitRequest, "upload commit", commit),
        FactoryVerb::CheckpointRead => {
            call!(CheckpointReadRequest, "checkpoint read", checkpoint_read)
        }
        other => crate::rpc::reply::<()>(
            service,
            subject,
            Err(RpcError::new(
                ErrorKind::Invalid,
                format!("`{other}` is not an artifact verb"),
            )),
        ),
    }
}

/// Answers an operator's request: `gf.rpc.artifact.list` or `gf.rpc.artifact.read`.
pub async fn serve_operator(service: &Service, subject: &str, payload: &[u8]) -> Bytes {
    let max = service.config.max_submit_bytes;
    let r = match subject {
        names::rpc::ARTIFACT_LIST => {
            match decode::<gf_schemas::rpc::GetJobRequest>("artifact list request", payload, max) {
                Ok(req) => {
                    return crate::rpc::reply(service, subject, list(service, &req.job_id).await)
                }
                Err(e) => Err(e),
            }
        }
        _ => match decode::<ArtifactReadRequest>("artifact read request", payload, max) {
            Ok(req) => return crate::rpc::reply(service, subject, read(service, req).await),
            Err(e) => Err(e),
        },
    };
    crate::rpc::reply::<()>(service, subject, r)
}

/// A job's artifacts; `not_found` when neither the job nor any artifact exists.
pub async fn list(service: &Service, job: &JobId) -> Result<JobArtifacts, RpcError> {
    let all = store(service)?.list(job).await?;
    if all == JobArtifacts::default() {
        service.get_job(job).await?;
    }
    Ok(all)
}

async fn read(service: &Service, req: ArtifactReadRequest) -> Result<ArtifactReadReply, RpcError> {
    let store = store(service)?;
    let all = list(service, &req.job_id).await?;
    let (nuid, size, chunks, sha256) = if req.checkpoint {
        let c = all.checkpoint.ok_or_else(|| {
            RpcError::new(
                ErrorKind::NotFound,
                format!("job {} has no checkpoint", req.job_id),
            )
        })?;
        (c.nuid, c.size, c.chunks, c.sha256)
    } else {
        let f = all.find(&req.name, req.attempt).cloned().ok_or_else(|| {
            RpcError::new(
                ErrorKind::NotFound,
                format!("job {} has no artifact `{}`", req.job_id, req.name),
            )
        })?;
        (f.nuid, f.size, f.chunks, f.sha256)
    };
    let (data, next) = if chunks == 0 {
        (String::new(), 0)
    } else {
        read_chunk(store, &nuid, req.after).await?
    };
    Ok(ArtifactReadReply {
        size,
        chunks,
        sha256,
        data,
        next,
    })
}

/// The chunk of `nuid` after stream sequence `after` (the first with `None`), base64,
/// and its sequence.
async fn read_chunk(
    store: &Artifacts,
    nuid: &str,
    after: Option<u64>,
) -> Result<(String, u64), RpcError> {
    let from = after.map_or(1, |s| s + 1);
    let msg = store
        .stream
        .direct_get_next_for_subject(names::artifact_chunks(nuid), Some(from))
        .await
        .map_err(|e| {
            RpcError::new(
                ErrorKind::NotFound,
                format!("chunk after {from} not readable: {e}"),
            )
        })?;
    Ok((
        base64::engine::general_purpose::STANDARD.encode(&msg.payload),
        msg.sequence,
    ))
}

fn store(service: &Service) -> Result<&Artifacts, RpcError> {
    service
        .artifacts
        .get()
        .ok_or_else(|| RpcError::new(ErrorKind::Unavailable, "artifact store not open yet"))
}

/// The job's record, if `worker` holds its lease at `epoch`.
async fn held(
    service: &Service,
    job: &JobId,
    epoch: u64,
    worker: &WorkerId,
) -> Result<JobRecord, RpcError> {
    service.store.held_job(job, epoch, worker).await
}

/// The attempt number of the record's current epoch.
fn attempt_of(rec: &JobRecord) -> u32 {
    // A job leased at dispatch counts its attempt once the start is confirmed.
    (rec.attempts + u32::from(rec.state == gf_schemas::JobState::Dispatched)).max(1)
}

/// Most chunks one upload may have, from the cap of its kind.
fn max_chunks(store: &Artifacts, kind: BlobKind) -> u64 {
    let cap = match kind {
        BlobKind::Artifact => store.config.max_job_bytes,
        BlobKind::Checkpoint => store.config.max_checkpoint_bytes,
    };
    cap.div_ceil(CHUNK_SIZE as u64)
}

/// Refuses an upload for a reason the job should know about: recorded in the index
/// and in the attempt's `artifact_errors`.
async fn refuse(
    service: &Service,
    store: &Artifacts,
    rec: &JobRecord,
    epoch: u64,
    name: &str,
    kind: ErrorKind,
    message: String,
) -> RpcError {
    tracing::warn!(job = %rec.id, epoch, %message, "upload refused");
    store
        .record_error(
            &rec.id,
            ArtifactError {
                attempt: attempt_of(rec),
                name: name.to_string(),
                message: message.clone(),
                at: now(),
            },
        )
        .await;
    let noted = service
        .store
        .modify_job(&rec.id, service.clock.now(), |r| {
            // An upload by the holder of a lease granted at dispatch shows it started.
            if let Some(w) = r.lease.as_ref().map(|l| l.worker.clone()) {
                crate::fsm::confirm_start(r, epoch, &w, None, service.clock.now());
            }
            let Some(a) = r.history.iter_mut().rev().find(|a| a.epoch == epoch) else {
                return Ok(((), false));
            };
            if a.artifact_errors.len() >= 20 || a.artifact_errors.contains(&message) {
                return Ok(((), false));
            }
            a.artifact_errors.push(message.clone());
            Ok(((), true))
        })
        .await;
    if let Err(e) = noted {
        tracing::warn!(job = %rec.id, error = %e, "refused upload not noted in the job's record");
    }
    RpcError::new(kind, message)
}

async fn begin(service: &Service, req: UploadBeginRequest) -> Result<UploadBeginReply, RpcError> {
    let store = store(service)?;
    let rec = held(service, &req.job_id, req.epoch, &req.worker_id).await?;
    let attempt = attempt_of(&rec);
    let part = match req.kind {
        BlobKind::Artifact => {
            if let Err(e) = artifact::check_name(&req.name) {
                return Err(refuse(
                    service,
                    store,
                    &rec,
                    req.epoch,
                    &req.name,
                    ErrorKind::Invalid,
                    e.to_string(),
                )
                .await);
            }
            let current = store.list(&req.job_id).await?;
            let replaced = current.find(&req.name, Some(attempt)).is_some();
            let total = current.total_after(&req.name, attempt, req.size);
            let cap = store.config.max_job_bytes;
            if total > cap {
                let message = format!(
                    "artifact `{}` ({}) is over the job's artifact cap: {} stored, {} allowed ({} would be stored)",
                    req.name,
                    human_bytes(req.size),
                    human_bytes(current.total_bytes),
                    human_bytes(cap),
                    human_bytes(total),
                );
                return Err(refuse(
                    service,
                    store,
                    &rec,
                    req.epoch,
                    &req.name,
                    ErrorKind::TooLarge,
                    message,
                )
                .await);
            }
            if !replaced && current.files.len() >= artifact::MAX_FILES {
                let message = format!(
                    "artifact `{}`: the job already keeps {} files, the most allowed",
                    req.name,
                    artifact::MAX_FILES
                );
                return Err(refuse(
                    service,
                    store,
                    &rec,
                    req.epoch,
                    &req.name,
                    ErrorKind::TooLarge,
                    message,
                )
                .await);
            }
            attempt.to_string()
        }
        BlobKind::Checkpoint => {
            let cap = store.config.max_checkpoint_bytes;
            if req.size > cap {
                let message = format!(
                    "checkpoint ({}) is over the checkpoint cap of {}",
                    human_bytes(req.size),
                    human_bytes(cap)
                );
                return Err(refuse(
                    service,
                    store,
                    &rec,
                    req.epoch,
                    "checkpoint",
                    ErrorKind::TooLarge,
                    message,
                )
                .await);
            }
            "ckpt".to_string()
        }
    };
    let nonce = format!("{:016x}", rand::random::<u64>());
    Ok(UploadBeginReply {
        upload: names::artifact_nuid(&req.job_id, &part, &nonce),
        chunk_size: CHUNK_SIZE as u32,
    })
}

async fn chunk(service: &Service, req: UploadChunkRequest) -> Result<(), RpcError> {
    let store = store(service)?;
    let kind = artifact::upload_kind(&req.job_id, &req.upload)?;
    if u64::from(req.seq) >= max_chunks(store, kind).max(1) {
        return Err(RpcError::new(
            ErrorKind::TooLarge,
            format!("chunk {} is past the cap of this upload", req.seq),
        ));
    }
    let data = artifact::decode_chunk(&req.data)?;
    held(service, &req.job_id, req.epoch, &req.worker_id).await?;
    // A retried chunk (same upload and seq) is stored once: the stream's duplicate
    // window drops the repeat.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        "Nats-Msg-Id",
        format!("{}.{}", req.upload, req.seq).as_str(),
    );
    let ack = store
        .js
        .publish_with_headers(names::artifact_chunks(&req.upload), headers, data.into())
        .await
        .map_err(unavailable)?;
    ack.await.map_err(unavailable)?;
    Ok(())
}

/// Chunks stored under an upload's subject.
async fn stored_chunks(store: &Artifacts, upload: &str) -> Result<u64, RpcError> {
    use futures::TryStreamExt;
    let subject = names::artifact_chunks(upload);
    let counts: Vec<(String, usize)> = store
        .stream
        .info_with_subjects(&subject)
        .await
        .map_err(unavailable)?
        .try_collect()
        .await
        .map_err(unavailable)?;
    Ok(counts
        .into_iter()
        .filter(|(s, _)| *s == subject)
        .map(|(_, n)| n as u64)
        .sum())
}

async fn commit(service: &Service, req: UploadCommitRequest) -> Result<JobArtifacts, RpcError> {
    let store = store(service)?;
    let (kind, sha256) = req.checked()?;
    let expected_chunks = u64::from(req.chunks);
    let rec = held(service, &req.job_id, req.epoch, &req.worker_id).await?;
    let attempt = attempt_of(&rec);
    let stored = stored_chunks(store, &req.upload).await?;
    if stored != expected_chunks {
        return Err(RpcError::new(
            ErrorKind::Invalid,
            format!(
                "upload {} has {stored} chunks stored, the commit says {}",
                req.upload, req.chunks
            ),
        ));
    }
    let at = now();
    let (old, written) = match kind {
        BlobKind::Artifact => {
            artifact::check_name(&req.name)
                .map_err(|e| RpcError::new(ErrorKind::Invalid, e.to_string()))?;
            let cap = store.config.max_job_bytes;
            let info = ArtifactInfo {
                name: req.name.clone(),
                attempt,
                epoch: req.epoch,
                size: req.size,
                sha256: sha256.clone(),
                uploaded_at: at,
                nuid: req.upload.clone(),
                chunks: req.chunks,
            };
            store
                .modify(&req.job_id, |a| {
                    let old = a
                        .files
                        .iter()
                        .position(|f| f.name == info.name && f.attempt == attempt)
                        .map(|i| a.files.remove(i));
                    if old.as_ref().is_some_and(|o| o.nuid == info.nuid) {
                        // A repeated commit: put it back as it was.
                        a.files.push(old.clone().expect("some"));
                        a.total_bytes = a.files.iter().map(|f| f.size).sum();
                        return Ok(None);
                    }
                    let total: u64 = a.files.iter().map(|f| f.size).sum::<u64>() + info.size;
                    if total > cap {
                        return Err(RpcError::new(
                            ErrorKind::TooLarge,
                            format!(
                                "artifact `{}` ({}) is over the job's artifact cap of {}",
                                info.name,
                                human_bytes(info.size),
                                human_bytes(cap)
                            ),
                        ));
                    }
                    a.files.push(info.clone());
                    a.total_bytes = total;
                    Ok(old.map(|o| o.nuid))
                })
                .await?
        }
        BlobKind::Checkpoint => {
            let info = CheckpointInfo {
                epoch: req.epoch,
                attempt,
                size: req.size,
                sha256: sha256.clone(),
                saved_at: at,
                nuid: req.upload.clone(),
                chunks: req.chunks,
            };
            store
                .modify(&req.job_id, |a| {
                    match &a.checkpoint {
                        Some(c) if c.nuid == info.nuid => return Ok(None),
                        // Never over a newer epoch's checkpoint (a paused worker whose
                        // lease check passed just before it was reaped).
                        Some(c) if c.epoch > info.epoch => {
                            return Err(RpcError::new(
                                ErrorKind::StaleEpoch,
                                format!(
                                "job {} has a checkpoint of epoch {}; epoch {} may not replace it",
                                req.job_id, c.epoch, info.epoch
                            ),
                            ))
                        }
                        _ => {}
                    }
                    let old = a.checkpoint.replace(info.clone()).map(|c| c.nuid);
                    Ok(old)
                })
                .await?
        }
    };
    if let Some(old) = old {
        store.purge_chunks(&old).await;
    }
    let object = match kind {
        BlobKind::Artifact => artifact::object_name(&req.job_id, attempt, &req.name),
        BlobKind::Checkpoint => artifact::checkpoint_object(&req.job_id),
    };
    store
        .publish_meta(&object, &req.upload, req.size, req.chunks, &sha256)
        .await;
    metrics::counter!(gf_telemetry::names::ARTIFACT_BYTES, "kind" => kind.as_str())
        .increment(req.size);
    Ok(written)
}

async fn checkpoint_read(
    service: &Service,
    req: CheckpointReadRequest,
) -> Result<CheckpointReadReply, RpcError> {
    let store = store(service)?;
    held(service, &req.job_id, req.epoch, &req.worker_id).await?;
    let Some(info) = store.list(&req.job_id).await?.checkpoint else {
        return Ok(CheckpointReadReply {
            checkpoint: None,
            data: String::new(),
            next: 0,
        });
    };
    if info.chunks == 0 {
        return Ok(CheckpointReadReply {
            checkpoint: Some(info),
            data: String::new(),
            next: 0,
        });
    }
    let (data, next) = read_chunk(store, &info.nuid, req.after).await?;
    Ok(CheckpointReadReply {
        checkpoint: Some(info),
        data,
        next,
    })
}
