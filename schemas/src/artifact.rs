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
use crate::{ErrorKind, JobId, RpcError, Timestamp, WorkerId};

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

impl BlobKind {
    /// The wire name, also a bounded metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            BlobKind::Artifact => "artifact",
            BlobKind::Checkpoint => "checkpoint",
        }
    }
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

    /// The bytes stored once `name` of `attempt` is uploaded with `size` bytes
    /// (replacing that attempt's file of the name, if any): what an upload's begin
    /// checks against the job's cap. Saturating: a declared size near `u64::MAX` is
    /// over any cap, never a wrapped small total.
    pub fn total_after(&self, name: &str, attempt: u32, size: u64) -> u64 {
        let replaced = self.find(name, Some(attempt)).map_or(0, |f| f.size);
        self.total_bytes
            .saturating_sub(replaced)
            .saturating_add(size)
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

/// The kind of upload `upload` is, when it is one of `job`'s upload ids
/// (`<job>.<part>.<nonce>`, see [`crate::names::artifact_nuid`]; part `ckpt` is the
/// checkpoint, a number an attempt's artifact). Anything else is `invalid`: a factory
/// may only write under its own job's uploads. Total over any input (fuzzed: `fuzz/`).
pub fn upload_kind(job: &JobId, upload: &str) -> Result<BlobKind, RpcError> {
    let bad = || {
        RpcError::new(
            ErrorKind::Invalid,
            format!(
                "`{}` is not an upload of job {job}",
                upload.chars().take(120).collect::<String>()
            ),
        )
    };
    let rest = upload
        .strip_prefix(&job.to_string())
        .and_then(|r| r.strip_prefix('.'))
        .ok_or_else(bad)?;
    let (part, nonce) = rest.split_once('.').ok_or_else(bad)?;
    if !crate::names::is_token(part) || !crate::names::is_token(nonce) || nonce.len() != 16 {
        return Err(bad());
    }
    if part == "ckpt" {
        Ok(BlobKind::Checkpoint)
    } else if part.parse::<u32>().is_ok() {
        Ok(BlobKind::Artifact)
    } else {
        Err(bad())
    }
}

/// The bytes of a chunk (`UploadChunkRequest::data`): standard padded base64 of 1 to
/// [`CHUNK_SIZE`] bytes, or `invalid`. Total over any input (fuzzed: `fuzz/`).
pub fn decode_chunk(data: &str) -> Result<Vec<u8>, RpcError> {
    use base64::Engine as _;
    // Checked before decoding, so an oversized chunk costs no allocation.
    if data.len() > CHUNK_SIZE.div_ceil(3) * 4 {
        return Err(RpcError::new(
            ErrorKind::Invalid,
            format!("a chunk holds at most {CHUNK_SIZE} bytes"),
        ));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data.as_bytes())
        .map_err(|e| RpcError::new(ErrorKind::Invalid, format!("chunk data is not base64: {e}")))?;
    if bytes.len() > CHUNK_SIZE || bytes.is_empty() {
        return Err(RpcError::new(
            ErrorKind::Invalid,
            format!("a chunk holds 1 to {CHUNK_SIZE} bytes, not {}", bytes.len()),
        ));
    }
    Ok(bytes)
}

impl UploadCommitRequest {
    /// The checks a commit passes before the store is read: the upload is one of the
    /// job's and of the kind the commit says, the SHA-256 is 64 hex digits, and the
    /// chunk count is the size's. Returns the kind and the SHA-256 in lowercase.
    /// Total over any input (fuzzed: `fuzz/`).
    pub fn checked(&self) -> Result<(BlobKind, String), RpcError> {
        let kind = upload_kind(&self.job_id, &self.upload)?;
        if kind != self.kind {
            return Err(RpcError::new(
                ErrorKind::Invalid,
                format!(
                    "upload {} is not a {} upload",
                    self.upload,
                    self.kind.as_str()
                ),
            ));
        }
        if self.sha256.len() != 64 || !self.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(RpcError::new(
                ErrorKind::Invalid,
                "sha256 must be 64 hex digits",
            ));
        }
        let expected_chunks = self.size.div_ceil(CHUNK_SIZE as u64);
        if u64::from(self.chunks) != expected_chunks {
            return Err(RpcError::new(
                ErrorKind::Invalid,
                format!(
                    "{} bytes are {expected_chunks} chunks, not {}",
                    self.size, self.chunks
                ),
            ));
        }
        Ok((kind, self.sha256.to_ascii_lowercase()))
    }
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
    fn upload_ids_belong_to_their_job() {
        use crate::names::artifact_nuid;
        let job = JobId::new();
        let other = JobId::new();
        let id = artifact_nuid(&job, "2", "0123456789abcdef");
        assert_eq!(upload_kind(&job, &id), Ok(BlobKind::Artifact));
        let ck = artifact_nuid(&job, "ckpt", "0123456789abcdef");
        assert_eq!(upload_kind(&job, &ck), Ok(BlobKind::Checkpoint));
        for bad in [
            artifact_nuid(&other, "2", "0123456789abcdef"),
            artifact_nuid(&job, "x", "0123456789abcdef"),
            artifact_nuid(&job, "2", "short"),
            format!("{job}.2.0123456789abcdef.extra"),
            format!("{job}.2.>"),
            format!("{job}.*.0123456789abcdef"),
            job.to_string(),
        ] {
            assert!(upload_kind(&job, &bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn chunks_are_1_to_chunk_size_bytes_of_base64() {
        assert_eq!(decode_chunk("aGk=").unwrap(), b"hi");
        for bad in ["", "aGk", "a Gk=", "!!!!"] {
            assert_eq!(
                decode_chunk(bad).unwrap_err().kind,
                ErrorKind::Invalid,
                "{bad:?}"
            );
        }
        use base64::Engine as _;
        let b64 = |n| base64::engine::general_purpose::STANDARD.encode(vec![7u8; n]);
        assert_eq!(decode_chunk(&b64(CHUNK_SIZE)).unwrap().len(), CHUNK_SIZE);
        assert!(decode_chunk(&b64(CHUNK_SIZE + 1)).is_err());
    }

    #[test]
    fn a_commit_names_its_upload_digest_and_chunks() {
        let job = JobId::new();
        let commit = UploadCommitRequest {
            job_id: job,
            epoch: 1,
            worker_id: WorkerId::new("w1").unwrap(),
            upload: crate::names::artifact_nuid(&job, "1", "0123456789abcdef"),
            kind: BlobKind::Artifact,
            name: "a.txt".into(),
            size: CHUNK_SIZE as u64 + 1,
            chunks: 2,
            sha256: "AB".repeat(32),
        };
        assert_eq!(commit.checked(), Ok((BlobKind::Artifact, "ab".repeat(32))));
        let refused = |c: UploadCommitRequest| c.checked().unwrap_err().kind;
        assert_eq!(
            refused(UploadCommitRequest {
                kind: BlobKind::Checkpoint,
                ..commit.clone()
            }),
            ErrorKind::Invalid
        );
        assert_eq!(
            refused(UploadCommitRequest {
                chunks: 1,
                ..commit.clone()
            }),
            ErrorKind::Invalid
        );
        assert_eq!(
            refused(UploadCommitRequest {
                sha256: "g".repeat(64),
                ..commit.clone()
            }),
            ErrorKind::Invalid
        );
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

    /// Regression (fuzzing): the total an upload would leave was `total - replaced +
    /// size` in plain u64 arithmetic, so a declared size near `u64::MAX` panicked
    /// (debug) or wrapped to a small total that passed the cap (release).
    #[test]
    fn total_after_saturates() {
        let a = JobArtifacts {
            files: vec![ArtifactInfo {
                name: "x".into(),
                attempt: 1,
                epoch: 1,
                size: 10,
                sha256: String::new(),
                uploaded_at: Timestamp::from_unix_millis(0),
                nuid: String::new(),
                chunks: 1,
            }],
            total_bytes: 10,
            ..Default::default()
        };
        assert_eq!(a.total_after("x", 1, 4), 4);
        assert_eq!(a.total_after("x", 2, 4), 14);
        assert_eq!(a.total_after("y", 1, u64::MAX), u64::MAX);
        assert_eq!(a.total_after("x", 1, u64::MAX), u64::MAX);
        // An index whose total is behind its files (never written so) still counts.
        let behind = JobArtifacts {
            total_bytes: 0,
            ..a
        };
        assert_eq!(behind.total_after("x", 1, 4), 4);
    }
}
