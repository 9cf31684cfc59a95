//! A job's artifacts and checkpoint, from the worker's side.
//!
//! Each attempt gets two directories beside its working directory:
//! `$GF_ARTIFACTS_DIR` (files to keep: uploaded when the attempt ends) and
//! `$GF_CHECKPOINT_DIR` (state to resume from: the last saved checkpoint of the job is
//! restored into it before the job starts, with `GF_CHECKPOINT_RESTORED=1`, and it is
//! saved at each lease renewal when it changed, and when the attempt ends).
//!
//! Everything goes through the coordinators on this factory's own RPC subjects
//! (`upload_begin`, `upload_chunk`, `upload_commit`, `checkpoint_read`), which refuse
//! it unless this worker holds the job's lease at the attempt's epoch. A checkpoint is
//! a tar archive of the directory; a job should replace its checkpoint files
//! atomically (write, then rename), since a save may happen at any moment.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use gf_schemas::artifact::{
    BlobKind, CheckpointReadReply, CheckpointReadRequest, JobArtifacts, UploadBeginReply,
    UploadBeginRequest, UploadChunkRequest, UploadCommitRequest,
};
use gf_schemas::rpc::{RenewReply, RenewRequest};
use gf_schemas::{JobId, WorkerId};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use crate::client::{CallError, RpcClient};

/// Tries of one upload request before the upload is given up.
const TRIES: u32 = 5;

/// The directories of one attempt and what was saved from them.
pub struct JobDirs {
    job: JobId,
    epoch: u64,
    worker: WorkerId,
    pub artifacts: PathBuf,
    pub checkpoint: PathBuf,
    /// A checkpoint was restored into `checkpoint` before the job started.
    pub restored: bool,
    /// The checkpoint directory as last saved (or restored): unchanged means no save.
    saved: Option<Vec<(PathBuf, u64, SystemTime)>>,
    rpc: RpcClient,
}

impl JobDirs {
    /// Creates both directories under `scratch` and, from the second attempt on,
    /// restores the job's checkpoint (a first attempt has none to resume from, and
    /// asking would cost every job a request). A checkpoint that cannot be restored is
    /// logged and the job starts without it.
    pub async fn prepare(
        scratch: &Path,
        job: JobId,
        epoch: u64,
        attempt: u32,
        worker: WorkerId,
        rpc: RpcClient,
    ) -> std::io::Result<Self> {
        let artifacts = scratch.join(format!("{job}-{epoch}.artifacts"));
        let checkpoint = scratch.join(format!("{job}-{epoch}.checkpoint"));
        for d in [&artifacts, &checkpoint] {
            let _ = tokio::fs::remove_dir_all(d).await;
            tokio::fs::create_dir_all(d).await?;
        }
        let mut dirs = Self {
            job,
            epoch,
            worker,
            artifacts,
            checkpoint,
            restored: false,
            saved: None,
            rpc,
        };
        if attempt <= 1 {
            return Ok(dirs);
        }
        match dirs.restore().await {
            Ok(true) => {
                dirs.restored = true;
                dirs.saved = Some(fingerprint(&dirs.checkpoint).await);
                tracing::info!(%job, epoch, "checkpoint restored");
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(%job, epoch, error = %e, "checkpoint not restored; starting without it");
                let _ = tokio::fs::remove_dir_all(&dirs.checkpoint).await;
                tokio::fs::create_dir_all(&dirs.checkpoint).await?;
            }
        }
        Ok(dirs)
    }

    /// The environment a job sees.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            (
                "GF_ARTIFACTS_DIR",
                self.artifacts.to_string_lossy().into_owned(),
            ),
            (
                "GF_CHECKPOINT_DIR",
                self.checkpoint.to_string_lossy().into_owned(),
            ),
        ];
        if self.restored {
            env.push(("GF_CHECKPOINT_RESTORED", "1".into()));
        }
        env
    }

    /// Reads the job's last checkpoint and unpacks it; `false` when there is none.
    async fn restore(&self) -> Result<bool, String> {
        let mut req = CheckpointReadRequest {
            job_id: self.job,
            epoch: self.epoch,
            worker_id: self.worker.clone(),
            after: None,
        };
        let mut data = Vec::new();
        let mut read = 0u32;
        let info = loop {
            let reply: CheckpointReadReply = retry(|| self.rpc.call_factory(&req))
                .await
                .map_err(|e| e.to_string())?;
            let Some(info) = reply.checkpoint else {
                return Ok(false);
            };
            if info.chunks == 0 {
                break info;
            }
            let chunk = base64::engine::general_purpose::STANDARD
                .decode(reply.data.as_bytes())
                .map_err(|e| format!("checkpoint chunk is not base64: {e}"))?;
            data.extend_from_slice(&chunk);
            read += 1;
            if read >= info.chunks {
                break info;
            }
            req.after = Some(reply.next);
        };
        let dir = self.checkpoint.clone();
        // Hashed and unpacked off the worker's runtime threads (often one): a large
        // checkpoint must not hold up heartbeats and the other slots' jobs.
        tokio::task::spawn_blocking(move || {
            if data.len() as u64 != info.size || hex::encode(Sha256::digest(&data)) != info.sha256 {
                return Err("checkpoint does not match its size and SHA-256".to_string());
            }
            tar::Archive::new(&data[..])
                .unpack(&dir)
                .map_err(|e| format!("cannot unpack the checkpoint: {e}"))
        })
        .await
        .map_err(|e| e.to_string())??;
        Ok(true)
    }

    /// Saves the checkpoint directory if it changed since the last save (or restore).
    pub async fn save_checkpoint(&mut self) -> Result<(), CallError> {
        let now = fingerprint(&self.checkpoint).await;
        if now.is_empty() && self.saved.is_none() {
            return Ok(());
        }
        if self.saved.as_ref() == Some(&now) {
            return Ok(());
        }
        let dir = self.checkpoint.clone();
        let archive = tokio::task::spawn_blocking(move || {
            let mut b = tar::Builder::new(Vec::new());
            b.follow_symlinks(false);
            b.append_dir_all(".", &dir)?;
            b.into_inner()
        })
        .await
        .map_err(|e| CallError::Transport(e.to_string()))?
        .map_err(|e| CallError::Transport(format!("cannot pack the checkpoint: {e}")))?;
        self.upload(BlobKind::Checkpoint, String::new(), Source::Mem(archive, 0))
            .await?;
        tracing::debug!(job = %self.job, epoch = self.epoch, "checkpoint saved");
        self.saved = Some(now);
        Ok(())
    }

    /// Uploads every regular file under the artifacts directory (symbolic links are
    /// not followed), in name order. Returns what could not be stored; a lost lease
    /// stops at once.
    pub async fn upload_artifacts(&self) -> Vec<String> {
        let mut errors = Vec::new();
        for (path, name) in files(&self.artifacts).await {
            let file = match tokio::fs::File::open(&path).await {
                Ok(f) => f,
                Err(e) => {
                    errors.push(format!("artifact `{name}`: cannot open: {e}"));
                    continue;
                }
            };
            match self
                .upload(BlobKind::Artifact, name.clone(), Source::File(file))
                .await
            {
                Ok(()) => {}
                Err(e) if e.lost_lease() => {
                    errors.push(format!("artifacts: lease lost: {e}"));
                    break;
                }
                Err(e) => errors.push(format!("artifact `{name}`: {e}")),
            }
        }
        errors
    }

    /// Removes both directories.
    pub async fn remove(self) {
        let _ = tokio::fs::remove_dir_all(&self.artifacts).await;
        let _ = tokio::fs::remove_dir_all(&self.checkpoint).await;
    }

    async fn upload(
        &self,
        kind: BlobKind,
        name: String,
        mut source: Source,
    ) -> Result<(), CallError> {
        let size = source.size().await.map_err(io)?;
        let begin = UploadBeginRequest {
            job_id: self.job,
            epoch: self.epoch,
            worker_id: self.worker.clone(),
            kind,
            name: name.clone(),
            size,
        };
        let began: UploadBeginReply = retry(|| self.rpc.call_factory(&begin)).await?;
        let chunk_size = (began.chunk_size as usize).clamp(1, gf_schemas::artifact::CHUNK_SIZE);
        let mut hash = Sha256::new();
        let mut sent = 0u64;
        let mut seq = 0u32;
        let mut buf = vec![0u8; chunk_size];
        while sent < size {
            let want = chunk_size.min((size - sent) as usize);
            source.read_exact(&mut buf[..want]).await.map_err(io)?;
            hash.update(&buf[..want]);
            let chunk = UploadChunkRequest {
                job_id: self.job,
                epoch: self.epoch,
                worker_id: self.worker.clone(),
                upload: began.upload.clone(),
                seq,
                data: base64::engine::general_purpose::STANDARD.encode(&buf[..want]),
            };
            retry(|| self.rpc.call_factory::<_, ()>(&chunk)).await?;
            sent += want as u64;
            seq += 1;
        }
        let commit = UploadCommitRequest {
            job_id: self.job,
            epoch: self.epoch,
            worker_id: self.worker.clone(),
            upload: began.upload,
            kind,
            name,
            size,
            chunks: seq,
            sha256: hex::encode(hash.finalize()),
        };
        let _: JobArtifacts = retry(|| self.rpc.call_factory(&commit)).await?;
        Ok(())
    }
}

fn io(e: std::io::Error) -> CallError {
    CallError::Transport(format!("reading the file: {e}"))
}

/// Calls `f` until it is answered, up to [`TRIES`] times for retryable failures.
async fn retry<T, Fut>(f: impl Fn() -> Fut) -> Result<T, CallError>
where
    Fut: Future<Output = Result<T, CallError>>,
{
    let mut wait = Duration::from_millis(100);
    let mut tries = 0;
    loop {
        match f().await {
            Err(e) if e.retryable() && tries + 1 < TRIES => {
                tries += 1;
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            other => return other,
        }
    }
}

/// What an upload reads from: a file, or bytes in memory.
enum Source {
    File(tokio::fs::File),
    Mem(Vec<u8>, usize),
}

impl Source {
    async fn size(&mut self) -> std::io::Result<u64> {
        match self {
            Source::File(f) => Ok(f.metadata().await?.len()),
            Source::Mem(b, _) => Ok(b.len() as u64),
        }
    }

    async fn read_exact(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        match self {
            Source::File(f) => f.read_exact(buf).await.map(|_| ()),
            Source::Mem(b, at) => {
                let end = *at + buf.len();
                let part = b.get(*at..end).ok_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "past the end")
                })?;
                buf.copy_from_slice(part);
                *at = end;
                Ok(())
            }
        }
    }
}

/// Every regular file under `dir` with its `/`-separated path relative to it, sorted.
async fn files(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(mut entries) = tokio::fs::read_dir(&d).await else {
            continue;
        };
        while let Ok(Some(e)) = entries.next_entry().await {
            let Ok(t) = e.file_type().await else { continue };
            let path = e.path();
            if t.is_dir() {
                todo.push(path);
            } else if t.is_file() {
                let Ok(rel) = path.strip_prefix(dir) else {
                    continue;
                };
                let name = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                out.push((path, name));
            }
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    out
}

/// Each file's path, size and modification time: what "changed" means for a save.
async fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, SystemTime)> {
    let mut out = Vec::new();
    for (path, _) in files(dir).await {
        if let Ok(m) = tokio::fs::metadata(&path).await {
            out.push((
                path,
                m.len(),
                m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            ));
        }
    }
    out
}

/// Runs `work` while renewing the lease every third of `ttl` (an upload at the end of
/// an attempt may outlast the lease). `Err` when the lease was lost: `work` is dropped.
pub async fn while_renewing<T>(
    rpc: &RpcClient,
    job: JobId,
    epoch: u64,
    worker: &WorkerId,
    ttl: Duration,
    work: impl Future<Output = T>,
) -> Result<T, CallError> {
    let every = (ttl / 3).max(Duration::from_millis(100));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let renew = RenewRequest {
        job_id: job,
        epoch,
        worker_id: worker.clone(),
        usage: None,
        ran_ms: None,
    };
    tokio::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return Ok(out),
            _ = tick.tick() => {
                // Hedged like the run's own renewals (`runner::keep_lease`).
                match rpc.with_timeout(every).call_factory_hedged::<_, RenewReply>(&renew).await {
                    Err(e) if e.lost_lease() => return Err(e),
                    Err(e) => tracing::warn!(%job, error = %e, "renew failed; will retry"),
                    Ok(_) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Files are found recursively with relative `/` names, symlinks skipped, sorted.
    #[tokio::test]
    async fn files_are_listed_relative_and_sorted() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("sub/deeper")).unwrap();
        std::fs::write(d.path().join("b.txt"), "b").unwrap();
        std::fs::write(d.path().join("sub/deeper/c.bin"), "c").unwrap();
        std::fs::write(d.path().join("a.txt"), "a").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("link")).unwrap();
        let names: Vec<String> = files(d.path()).await.into_iter().map(|(_, n)| n).collect();
        assert_eq!(names, ["a.txt", "b.txt", "sub/deeper/c.bin"]);
    }
}
