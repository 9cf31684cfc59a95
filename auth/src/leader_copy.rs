//! Reading a KV key as the bucket's stream leader has it (`STREAM.MSG.GET`, which only
//! the leader answers): every write acknowledged before the request is in it.
//!
//! Not a KV get: that is a direct get any replica may answer (with R3, the follower on
//! the server this client is connected to), and a follower can be behind the last
//! acknowledged write. A caller that decides on what it reads (a refusal, "no such
//! record", a compare-and-set right after a write made through another server) reads
//! the leader's copy to see its own and everyone's acknowledged writes; the cost is one
//! request to the leader per read. Shared by the enrollment store ([`crate::store`]) and
//! the coordinator's job store.

use async_nats::jetstream::kv;
use async_nats::jetstream::stream::{LastRawMessageError, LastRawMessageErrorKind};
use bytes::Bytes;

/// A key's raw value and its revision (the stream sequence of the last write).
#[derive(Debug, Clone)]
pub struct Entry {
    pub value: Bytes,
    pub revision: u64,
}

/// The leader did not answer or refused; retrying later may work.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct ReadError(#[from] LastRawMessageError);

/// `key`'s value and revision in the leader's copy of `bucket`; `None` if the key was
/// never written, deleted, purged, or expired (the marker the server left).
pub async fn get(bucket: &kv::Store, key: &str) -> Result<Option<Entry>, ReadError> {
    let subject = format!("{}{key}", bucket.prefix);
    let msg = match bucket
        .stream
        .get_last_raw_message_by_subject(&subject)
        .await
    {
        Ok(m) => m,
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    // A delete or a purge (the value is gone), or a marker the server left.
    if msg.headers.get("KV-Operation").is_some()
        || msg
            .headers
            .get(async_nats::header::NATS_MARKER_REASON)
            .is_some()
    {
        return Ok(None);
    }
    Ok(Some(Entry {
        value: msg.payload,
        revision: msg.sequence,
    }))
}
