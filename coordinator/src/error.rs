//! Store errors. Callers branch on the kind: a conflict means re-read and decide again.

use gf_schemas::{ErrorKind, RpcError};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The revision changed since it was read (or the key already exists).
    #[error("conflict: {0} was changed concurrently")]
    Conflict(String),
    #[error("not found: {0}")]
    NotFound(String),
    /// NATS or JetStream did not answer or refused; retrying later may work.
    #[error("store unavailable: {0}")]
    Transport(String),
    /// A stored value does not parse: a bug or a foreign writer.
    #[error("corrupt value at {key}: {error}")]
    Corrupt { key: String, error: String },
}

impl From<StoreError> for RpcError {
    fn from(e: StoreError) -> Self {
        let kind = match &e {
            StoreError::Conflict(_) => ErrorKind::Conflict,
            StoreError::NotFound(_) => ErrorKind::NotFound,
            StoreError::Transport(_) => ErrorKind::Unavailable,
            StoreError::Corrupt { .. } => ErrorKind::Internal,
        };
        RpcError::new(kind, e.to_string())
    }
}
