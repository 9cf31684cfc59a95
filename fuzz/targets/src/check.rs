//! Invariants shared by the targets.

use std::fmt::Debug;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The coordinators' default `max_submit_bytes`: the largest request body they decode.
pub const MAX_BODY: usize = 256 * 1024;

/// What the server decoded serializes, and decodes again to the same value: nothing
/// it accepted is lost or changed when it is stored or forwarded.
pub fn round_trip<T>(value: &T)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let text = serde_json::to_vec(value).expect("a decoded value serializes");
    let back: T = serde_json::from_slice(&text)
        .unwrap_or_else(|e| panic!("re-decoding {} failed: {e}", String::from_utf8_lossy(&text)));
    assert_eq!(&back, value, "changed by a round trip through JSON");
}

/// `subject` is a NATS subject of plain tokens: no wildcard, no empty token, nothing
/// a publisher or subscriber could use to reach more than it names.
pub fn plain_subject(subject: &str) {
    for token in subject.split('.') {
        assert!(
            gf_schemas::names::is_token(token),
            "subject `{subject}` has the token `{token}`"
        );
    }
}
