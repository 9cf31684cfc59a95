//! Artifacts and checkpoints: the files a job leaves in `$GF_ARTIFACTS_DIR`, and the
//! contents of `$GF_CHECKPOINT_DIR` a later attempt resumes from.
//!
//! Both live in the `gf_artifacts` JetStream object store, but a factory never touches
//! it: it uploads through the coordinators on its own RPC subjects
//! (`gf.rpc.w.<factory>.upload_begin|upload_chunk|upload_commit`, and
//! `checkpoint_read` to restore), and every request is refused unless the factory holds
//! the job's lease at the epoch it names. An upload is a begin (declaring the size),
//! chunks of at most [`CHUNK_SIZE`] bytes in order, and a commit (declaring the chunk
//! count and SHA-256); only a committed upload is listed or restored.
//!
//! Object names: an artifact is `<job>/<attempt>/<path>`, the checkpoint is
//! `<job>/checkpoint` (a tar archive of the directory).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::names::FactoryVerb;
use crate::rpc::FactoryRequest;
use crate::{JobId, Timestamp, WorkerId};

/// Largest chunk of one upload or read, in bytes (before base64).
pub const CHUNK_SIZE: usize = 128 * 1024;
/// Largest upload request body: a base64 chunk and its envelope.
pub const MAX_UPLOAD_REQUEST: usize = CHUNK_SIZE * 4 / 3 + 4096;
/// Longest artifact path (bytes).
pub const MAX_NAME: usize = 512;
/// Most artifacts one job may keep (over all attempts).
pub const MAX_FILES: usize = 1000;

/// What an upload stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BlobKind {
    /// A file from `$GF_ARTIFACTS_DIR`, kept per attempt.
    Artifact,
    /// The job's checkpoint (a tar of `$GF_CHECKPOINT_DIR`); a newer one replaces it.
    Checkpoint,
}

/// Starts an upload (`gf.rpc.w.<factory>.upload_begin`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UploadBeginRequest {
    pub job_id: JobId,
    pub epoch: u64,
    pub worker_id: WorkerId,
    pub kind: BlobKind,
    /// The artifact's path relative to `$GF_ARTIFACTS_DIR` (`/`-separated); ignored
    /// for a checkpoint.
    #[serde(default)]
    pub name: String,
    /// Total bytes to come; checked against the job's caps before anything is sent.
    pub size: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UploadBeginReply {
    /// Names this upload in its chunks and commit.
    pub upload: String,
    /// Send chunks of at most this many bytes.
    pub chunk_size: u32,
}

/// One chunk of an upload (`gf.rpc.w.<factory>.upload_chunk`). A retried chunk (same
/// upload and `seq`) is stored once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UploadChunkRequest {
    pub job_id: JobId,
    pub epoch: u64,
    pub worker_id: WorkerId,
    pub upload: String,
    /// 0, 1, 2… in order.
    pub seq: u32,
    /// The bytes, base64 (standard alphabet, padded).
    pub data: String,
}

/// Ends an upload (`gf.rpc.w.<factory>.upload_commit`): from here on it is listed
/// (an artifact) or restored (a checkpoint).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UploadCommitRequest {
    pub job_id: JobId,
    pub epoch: u64,
    pub worker_id: WorkerId,
    pub upload: String,
    pub kind: BlobKind,
    #[serde(default)]
    pub name: String,
    pub size: u64,
    pub chunks: u32,
    /// Lowercase hex SHA-256 of the whole content.
    pub sha256: String,
}

/// Reads the job's last checkpoint, a chunk at a time
/// (`gf.rpc.w.<factory>.checkpoint_read`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckpointReadRequest {
    pub job_id: JobId,
    pub epoch: u64,
    pub worker_id: WorkerId,
    /// `None` for the first chunk; then the `next` of the previous reply.
    #[serde(default)]
    pub after: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CheckpointReadReply {
    /// `None`: the job has no checkpoint (start from scratch).
    pub checkpoint: Option<CheckpointInfo>,
    /// This chunk, base64; empty when there is no checkpoint.
    #[serde(default)]
    pub data: String,
    /// Pass as `after` to read the next chunk.
    #[serde(default)]
    pub next: u64,
}

macro_rules! upload_request {
    ($($t:ty => $verb:ident),* $(,)?) => {$(
        impl FactoryRequest for $t {
            const VERB: FactoryVerb = FactoryVerb::$verb;
            fn sender(&self) -> &WorkerId {
                &self.worker_id
            }
        }
    )*};
}

upload_request! {
    UploadBeginRequest => UploadBegin,
    UploadChunkRequest => UploadChunk,
    UploadCommitRequest => UploadCommit,
    CheckpointReadRequest => CheckpointRead,
}

/// Reads a stored artifact (or the checkpoint) a chunk at a time, for operators
/// (`gf.rpc.artifact.read`; `gf artifacts ID --get NAME`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ArtifactReadRequest {
    pub job_id: JobId,
    /// The artifact's path; ignored with `checkpoint`.
    #[serde(default)]
    pub name: String,
    /// Which attempt's file; default the latest attempt that left one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// Read the job's checkpoint (a tar archive) instead of an artifact.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub checkpoint: bool,
    /// `None` for the first chunk; then the `next` of the previous reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ArtifactReadReply {
    pub size: u64,
    pub chunks: u32,
    pub sha256: String,
    /// This chunk, base64; empty for an empty file.
    pub data: String,
    /// Pass as `after` to read the next chunk.
    pub next: u64,
}

/// One stored artifact.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ArtifactInfo {
    /// Path relative to the artifacts directory.
    pub name: String,
    /// The attempt (1 for the first) that left it.
    pub attempt: u32,
    pub epoch: u64,
    pub size: u64,
    /// Lowercase hex SHA-256.
    pub sha256: String,
    pub uploaded_at: Timestamp,
    /// The object's chunk set in the object store.
    pub nuid: String,
    pub chunks: u32,
}

/// The job's last saved checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CheckpointInfo {
    /// The epoch that saved it: a lower epoch never replaces it.
    pub epoch: u64,
    pub attempt: u32,
    pub size: u64,
    pub sha256: String,
    pub saved_at: Timestamp,
    pub nuid: String,
    pub chunks: u32,
}

/// An upload the coordinators refused (over a cap, a bad name).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ArtifactError {
    pub attempt: u32,
    pub name: String,
    pub message: String,
    pub at: Timestamp,
}

/// Everything stored for one job (`GET /api/jobs/{id}/artifacts`, `gf artifacts ID`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobArtifacts {
    /// In upload order.
    #[serde(default)]
    pub files: Vec<ArtifactInfo>,
    /// Sum of `files`' sizes: what the per-job cap is checked against.
    #[serde(default)]
    pub total_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<CheckpointInfo>,
    /// Uploads refused, newest last (at most 20 kept).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<ArtifactError>,
}

impl JobArtifacts {
    /// The file `name` of `attempt`, or of the latest attempt that left one.
    pub fn find(&self, name: &str, attempt: Option<u32>) -> Option<&ArtifactInfo> {
        self.files
            .iter()
            .filter(|f| f.name == name && attempt.is_none_or(|a| a == f.attempt))
            .max_by_key(|f| (f.attempt, f.epoch))
    }
}

/// Why an artifact path is not acceptable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("artifact name `{name}` {problem}")]
pub struct NameError {
    pub name: String,
    pub problem: &'static str,
}

/// Checks an artifact path: relative, `/`-separated, no empty, `.` or `..` parts, no
/// control characters, at most [`MAX_NAME`] bytes.
pub fn check_name(name: &str) -> Result<(), NameError> {
    let bad = |problem| {
        Err(NameError {
            name: name.chars().take(80).collect(),
            problem,
        })
    };
    if name.is_empty() {
        return bad("is empty");
    }
    if name.len() > MAX_NAME {
        return bad("is too long (at most 512 bytes)");
    }
    if name.chars().any(|c| c.is_control() || c == '\\') {
        return bad("holds a control character or a backslash");
    }
    if name
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return bad("must be a relative path without empty, `.` or `..` parts");
    }
    Ok(())
}

/// The object store name of an artifact.
pub fn object_name(job: &JobId, attempt: u32, name: &str) -> String {
    format!("{job}/{attempt}/{name}")
}

/// The object store name of a job's checkpoint.
pub fn checkpoint_object(job: &JobId) -> String {
    format!("{job}/checkpoint")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for ok in ["a.txt", "out/report.html", "a b/c-d_e.json", "..x", "x.."] {
            assert_eq!(check_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "a//b",
            "a/",
            "../x",
            "a/../b",
            "./a",
            "a\nb",
            "a\\b",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_name(&"a".repeat(MAX_NAME + 1)).is_err());
    }

    #[test]
    fn find_prefers_the_latest_attempt() {
        let f = |name: &str, attempt| ArtifactInfo {
            name: name.into(),
            attempt,
            epoch: attempt as u64,
            size: 1,
            sha256: String::new(),
            uploaded_at: Timestamp::from_unix_millis(0),
            nuid: String::new(),
            chunks: 1,
        };
        let a = JobArtifacts {
            files: vec![f("x", 1), f("x", 2), f("y", 1)],
            ..Default::default()
        };
        assert_eq!(a.find("x", None).map(|f| f.attempt), Some(2));
        assert_eq!(a.find("x", Some(1)).map(|f| f.attempt), Some(1));
        assert_eq!(a.find("y", Some(2)), None);
        assert_eq!(a.find("z", None), None);
    }
}
