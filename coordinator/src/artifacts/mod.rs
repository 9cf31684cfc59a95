//! Artifacts and checkpoints (see [`gf_schemas::artifact`] for the protocol).
//!
//! The bytes live in the `gf_artifacts` object store, written in its own format (chunks
//! on `$O.gf_artifacts.C.<nuid>`, an object info on `$O.gf_artifacts.M.<name>`), so
//! any object store client (`nats object get gf_artifacts <job>/1/report.txt`) reads
//! them. What is listed and restored is decided by the per-job entry in
//! `gf_artifact_index`, written revision-checked: an upload exists once its commit
//! made it there.
//!
//! Invariants:
//! - Every write is made for a factory that holds the job's lease at the epoch it
//!   names ([`crate::fsm::check_holder`] on a fresh read), so a worker whose lease was
//!   reaped writes nothing, and a checkpoint of a lower epoch never replaces a newer
//!   one (checked again in the index update).
//! - A job's chunks, committed or abandoned, are all under `$O.gf_artifacts.C.<job>.>`
//!   (nuids are `<job>.<attempt|ckpt>.<nonce>`), so removing a job's artifacts is one
//!   purge whatever happened to its uploads.
//! - The per-job cap bounds committed bytes; uncommitted chunks of one upload are
//!   bounded by the chunk index limit derived from the cap.

mod rpc;
mod sweep;

use std::time::Duration;

use async_nats::jetstream::{self, kv, object_store};
use base64::Engine as _;
use bytes::Bytes;
use futures::StreamExt;
use gf_schemas::artifact::{ArtifactError, ArtifactInfo, JobArtifacts};
use gf_schemas::names::{self, BUCKET_ARTIFACT_INDEX, OBJECT_ARTIFACTS};
use gf_schemas::{ErrorKind, JobId, RpcError, Timestamp};

pub use rpc::{list, serve, serve_operator};
pub use sweep::{run as sweep, sweep_once};

/// Limits on what jobs may store.
#[derive(Clone, Debug)]
pub struct ArtifactsConfig {
    /// Sum of one job's artifacts over all its attempts.
    pub max_job_bytes: u64,
    /// One checkpoint.
    pub max_checkpoint_bytes: u64,
    /// How often the leader removes the artifacts of jobs that are gone.
    pub sweep_interval: Duration,
}

impl Default for ArtifactsConfig {
    fn default() -> Self {
        Self {
            max_job_bytes: 100 * 1024 * 1024,
            max_checkpoint_bytes: 64 * 1024 * 1024,
            sweep_interval: Duration::from_secs(300),
        }
    }
}

/// Refused uploads kept per job.
const MAX_ERRORS: usize = 20;
/// Attempts of a revision-checked index update before giving up.
const MAX_CAS: usize = 16;

/// Handles on the object store and the index.
#[derive(Clone)]
pub struct Artifacts {
    js: jetstream::Context,
    /// The object store's stream (`OBJ_gf_artifacts`).
    stream: jetstream::stream::Stream,
    index: kv::Store,
    pub config: ArtifactsConfig,
}

fn unavailable(e: impl std::fmt::Display) -> RpcError {
    RpcError::new(ErrorKind::Unavailable, format!("artifact store: {e}"))
}

/// Human-readable byte count for error messages.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut unit = "B";
    for u in UNITS {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

impl Artifacts {
    /// Creates (or opens) the object store and the index.
    pub async fn open(
        js: jetstream::Context,
        replicas: usize,
        config: ArtifactsConfig,
    ) -> anyhow::Result<Self> {
        let objects = match js.get_object_store(OBJECT_ARTIFACTS).await {
            Ok(o) => o,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: OBJECT_ARTIFACTS.into(),
                    description: Some("Gigafactory job artifacts and checkpoints".into()),
                    num_replicas: replicas,
                    storage: jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| anyhow::anyhow!("creating object store {OBJECT_ARTIFACTS}: {e}"))?,
        };
        drop(objects);
        let stream = js
            .get_stream(format!("OBJ_{OBJECT_ARTIFACTS}"))
            .await
            .map_err(|e| anyhow::anyhow!("opening the object store's stream: {e}"))?;
        let index = match js.get_key_value(BUCKET_ARTIFACT_INDEX).await {
            Ok(s) => s,
            Err(_) => js
                .create_key_value(index_config(replicas))
                .await
                .map_err(|e| anyhow::anyhow!("creating bucket {BUCKET_ARTIFACT_INDEX}: {e}"))?,
        };
        Ok(Self {
            js,
            stream,
            index,
            config,
        })
    }

    /// What is stored for `job` (empty when nothing is).
    pub async fn list(&self, job: &JobId) -> Result<JobArtifacts, RpcError> {
        Ok(self.load(job).await?.map(|(a, _)| a).unwrap_or_default())
    }

    async fn load(&self, job: &JobId) -> Result<Option<(JobArtifacts, u64)>, RpcError> {
        let Some(entry) = self
            .index
            .entry(job.to_string())
            .await
            .map_err(unavailable)?
        else {
            return Ok(None);
        };
        if entry.operation != kv::Operation::Put {
            return Ok(None);
        }
        let a = serde_json::from_slice(&entry.value).map_err(|e| {
            RpcError::new(
                ErrorKind::Internal,
                format!("artifact index of job {job} does not parse: {e}"),
            )
        })?;
        Ok(Some((a, entry.revision)))
    }

    /// Read-modify-write of a job's index entry; `f` decides on the current entry each
    /// time (a conflict re-reads). Returns `f`'s output and the entry as written.
    async fn modify<T>(
        &self,
        job: &JobId,
        mut f: impl FnMut(&mut JobArtifacts) -> Result<T, RpcError>,
    ) -> Result<(T, JobArtifacts), RpcError> {
        let key = job.to_string();
        for _ in 0..MAX_CAS {
            let current = self.load(job).await?;
            let (mut a, rev) = match current {
                Some((a, rev)) => (a, Some(rev)),
                None => (JobArtifacts::default(), None),
            };
            let out = f(&mut a)?;
            let body = Bytes::from(serde_json::to_vec(&a).expect("serializes"));
            let written = match rev {
                Some(rev) => self.index.update(&key, body, rev).await.map(|_| ()),
                None => self
                    .index
                    .create(&key, body)
                    .await
                    .map(|_| ())
                    .map_err(|e| {
                        // Reported as an update error so both arms read alike; any failure
                        // re-reads.
                        kv::UpdateError::with_source(kv::UpdateErrorKind::Other, e)
                    }),
            };
            match written {
                Ok(()) => return Ok((out, a)),
                Err(e) => {
                    tracing::debug!(%job, error = %e, "artifact index update failed; re-reading")
                }
            }
        }
        Err(RpcError::new(
            ErrorKind::Conflict,
            format!("artifact index of job {job} changed too often; retry"),
        ))
    }

    /// Records a refused upload in the index (the job's record gets it too, from the
    /// caller).
    async fn record_error(&self, job: &JobId, error: ArtifactError) {
        let r = self
            .modify(job, |a| {
                a.errors.push(error.clone());
                let extra = a.errors.len().saturating_sub(MAX_ERRORS);
                a.errors.drain(..extra);
                Ok(())
            })
            .await;
        if let Err(e) = r {
            tracing::warn!(%job, error = %e, "could not record a refused upload");
        }
    }

    /// The chunks of a stored object, in order, checked against its chunk count and
    /// SHA-256: the last item is an error if they do not match (a reader of a
    /// download then sees the transfer fail rather than a silently wrong file).
    pub fn read(
        &self,
        nuid: String,
        chunks: u32,
        sha256: String,
    ) -> impl futures::Stream<Item = Result<Bytes, RpcError>> + Send + 'static {
        use sha2::Digest as _;
        enum St {
            Start,
            Reading(Box<jetstream::consumer::pull::Ordered>, sha2::Sha256, u32),
            Done,
        }
        let stream = self.stream.clone();
        futures::stream::unfold(St::Start, move |st| {
            let stream = stream.clone();
            let nuid = nuid.clone();
            let sha256 = sha256.clone();
            async move {
                let (mut messages, mut hash, left) = match st {
                    St::Done => return None,
                    St::Reading(m, h, l) => (m, h, l),
                    St::Start => {
                        let opened = async {
                            stream
                                .create_consumer(jetstream::consumer::pull::OrderedConfig {
                                    filter_subject: names::artifact_chunks(&nuid),
                                    ..Default::default()
                                })
                                .await
                                .map_err(unavailable)?
                                .messages()
                                .await
                                .map_err(unavailable)
                        };
                        match opened.await {
                            Ok(m) => (Box::new(m), sha2::Sha256::new(), chunks),
                            Err(e) => return Some((Err(e), St::Done)),
                        }
                    }
                };
                if left == 0 {
                    return (hex::encode(hash.finalize()) != sha256).then(|| {
                        let e = RpcError::new(
                            ErrorKind::Internal,
                            format!("object {nuid} does not match its SHA-256"),
                        );
                        (Err(e), St::Done)
                    });
                }
                let next = tokio::time::timeout(Duration::from_secs(10), messages.next()).await;
                match next {
                    Ok(Some(Ok(msg))) => {
                        hash.update(&msg.payload);
                        let data = msg.payload.clone();
                        Some((Ok(data), St::Reading(messages, hash, left - 1)))
                    }
                    Ok(Some(Err(e))) => Some((Err(unavailable(e)), St::Done)),
                    Ok(None) => Some((Err(unavailable("chunks ended early")), St::Done)),
                    Err(_) => Some((Err(unavailable("timed out reading a chunk")), St::Done)),
                }
            }
        })
    }

    /// One stored artifact and its bytes.
    pub async fn download(
        &self,
        job: &JobId,
        name: &str,
        attempt: Option<u32>,
    ) -> Result<
        (
            ArtifactInfo,
            impl futures::Stream<Item = Result<Bytes, RpcError>> + Send + 'static,
        ),
        RpcError,
    > {
        let all = self.list(job).await?;
        let Some(info) = all.find(name, attempt).cloned() else {
            let which = attempt
                .map(|a| format!(" of attempt {a}"))
                .unwrap_or_default();
            return Err(RpcError::new(
                ErrorKind::NotFound,
                format!("job {job} has no artifact `{name}`{which}"),
            ));
        };
        let body = self.read(info.nuid.clone(), info.chunks, info.sha256.clone());
        Ok((info, body))
    }

    /// Removes everything stored for `job`: every chunk (committed or abandoned),
    /// every object info, the index entry. Idempotent.
    pub async fn remove_job(&self, job: &JobId) -> Result<(), RpcError> {
        let current = self.list(job).await?;
        self.stream
            .purge()
            .filter(names::artifact_job_chunks(job))
            .await
            .map_err(unavailable)?;
        let mut objects: Vec<String> = current
            .files
            .iter()
            .map(|f| gf_schemas::artifact::object_name(job, f.attempt, &f.name))
            .collect();
        if current.checkpoint.is_some() {
            objects.push(gf_schemas::artifact::checkpoint_object(job));
        }
        for o in objects {
            self.stream
                .purge()
                .filter(meta_subject(&o))
                .await
                .map_err(unavailable)?;
        }
        self.index
            .purge(job.to_string())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Writes the object info of a committed upload, so object store clients see it.
    async fn publish_meta(&self, name: &str, nuid: &str, size: u64, chunks: u32, sha256: &str) {
        let digest = hex::decode(sha256).unwrap_or_default();
        let info = serde_json::json!({
            "name": name,
            "bucket": OBJECT_ARTIFACTS,
            "nuid": nuid,
            "size": size,
            "chunks": chunks,
            "mtime": time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            "digest": format!("SHA-256={}", base64::engine::general_purpose::URL_SAFE.encode(digest)),
            "options": {"max_chunk_size": gf_schemas::artifact::CHUNK_SIZE},
        });
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Rollup", "sub");
        let sent = self
            .js
            .publish_with_headers(
                meta_subject(name),
                headers,
                serde_json::to_vec(&info).expect("serializes").into(),
            )
            .await;
        let acked = match sent {
            Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = acked {
            // Only object store clients miss it; the index (our truth) is written.
            tracing::warn!(object = name, error = %e, "object info not written");
        }
    }

    async fn purge_chunks(&self, nuid: &str) {
        if let Err(e) = self
            .stream
            .purge()
            .filter(names::artifact_chunks(nuid))
            .await
        {
            tracing::warn!(nuid, error = %e, "old chunks not purged; the job's removal will");
        }
    }
}

fn meta_subject(object: &str) -> String {
    names::artifact_meta(&base64::engine::general_purpose::URL_SAFE.encode(object))
}

pub fn index_config(replicas: usize) -> kv::Config {
    kv::Config {
        bucket: BUCKET_ARTIFACT_INDEX.into(),
        description: "Gigafactory artifacts and checkpoints per job".into(),
        history: 1,
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// `now` for records.
fn now() -> Timestamp {
    Timestamp::now_local()
}
