//! Webhook signatures, both ways: GitHub's `X-Hub-Signature-256` and Standard Webhooks
//! (`webhook-id`, `webhook-timestamp`, `webhook-signature`). Pure functions; every
//! comparison of a signature is constant-time.

use base64::Engine as _;
use sha2::{Digest, Sha256};

/// HMAC-SHA256 (RFC 2104).
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| -> [u8; BLOCK] {
        let mut p = [0u8; BLOCK];
        for (o, k) in p.iter_mut().zip(k.iter()) {
            *o = k ^ byte;
        }
        p
    };
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// Equal in time independent of where the inputs differ (lengths are not secret).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Why a signature is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing header `{0}`")]
    Missing(&'static str),
    #[error("malformed header `{0}`: {1}")]
    Malformed(&'static str, String),
    #[error("signature does not match (wrong secret, or the body was changed)")]
    Mismatch,
    #[error("timestamp {ts} is {off}s away from now; the tolerance is {tolerance}s (a stale or replayed delivery)")]
    Stale { ts: i64, off: i64, tolerance: u64 },
}

/// GitHub: `X-Hub-Signature-256: sha256=<hex of HMAC-SHA256(secret, body)>`.
pub fn verify_github(
    secret: &[u8],
    header: Option<&str>,
    body: &[u8],
) -> Result<(), SignatureError> {
    const H: &str = "X-Hub-Signature-256";
    let header = header.ok_or(SignatureError::Missing(H))?;
    let hex_sig = header
        .trim()
        .strip_prefix("sha256=")
        .ok_or_else(|| SignatureError::Malformed(H, "expected `sha256=<hex>`".into()))?;
    let given = hex::decode(hex_sig).map_err(|_| SignatureError::Malformed(H, "not hex".into()))?;
    if constant_time_eq(&given, &hmac_sha256(secret, body)) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// The signature header value GitHub would send for `body`.
pub fn sign_github(secret: &[u8], body: &[u8]) -> String {
    format!("sha256={}", hex::encode(hmac_sha256(secret, body)))
}

/// A Standard Webhooks secret: `whsec_<base64>` (the key is the decoded bytes); any
/// other text is used as the key as it is.
pub fn standard_key(secret: &str) -> Vec<u8> {
    match secret.strip_prefix("whsec_") {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap_or_else(|_| secret.as_bytes().to_vec()),
        None => secret.as_bytes().to_vec(),
    }
}

/// The `webhook-signature` value for a message: `v1,<base64 of HMAC-SHA256(key,
/// "{id}.{timestamp}.{body}")>`.
pub fn sign_standard(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut signed = format!("{id}.{timestamp}.").into_bytes();
    signed.extend_from_slice(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(hmac_sha256(key, &signed))
    )
}

/// Standard Webhooks: the timestamp within `tolerance_secs` of `now` (either way),
/// and one of the space-separated `v1,<base64>` signatures matching.
pub fn verify_standard(
    key: &[u8],
    id: Option<&str>,
    timestamp: Option<&str>,
    signatures: Option<&str>,
    body: &[u8],
    now: i64,
    tolerance_secs: u64,
) -> Result<(), SignatureError> {
    let id = id
        .filter(|s| !s.is_empty())
        .ok_or(SignatureError::Missing("webhook-id"))?;
    let ts_text = timestamp.ok_or(SignatureError::Missing("webhook-timestamp"))?;
    let ts: i64 = ts_text.trim().parse().map_err(|_| {
        SignatureError::Malformed("webhook-timestamp", "not seconds since the epoch".into())
    })?;
    let signatures = signatures.ok_or(SignatureError::Missing("webhook-signature"))?;
    // The signature first: a stale message with a forged signature is "forged".
    let expected = sign_standard(key, id, ts, body);
    let expected = expected.as_bytes();
    let matched = signatures
        .split_whitespace()
        .filter(|s| s.starts_with("v1,"))
        .any(|s| constant_time_eq(s.as_bytes(), expected));
    if !matched {
        return Err(SignatureError::Mismatch);
    }
    let off = now - ts;
    if off.unsigned_abs() > tolerance_secs {
        return Err(SignatureError::Stale {
            ts,
            off,
            tolerance: tolerance_secs,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231 test cases 1 and 6 (a key longer than the block).
    #[test]
    fn hmac_matches_rfc_4231() {
        let mac = hmac_sha256(&[0x0b; 20], b"Hi There");
        assert_eq!(
            hex::encode(mac),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        let mac = hmac_sha256(
            &[0xaa; 131],
            b"Test Using Larger Than Block-Size Key - Hash Key First",
        );
        assert_eq!(
            hex::encode(mac),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    /// GitHub's documented example: secret "It's a Secret to Everybody", payload
    /// "Hello, World!".
    #[test]
    fn github_signature() {
        let secret = b"It's a Secret to Everybody";
        let header = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        verify_github(secret, Some(header), b"Hello, World!").unwrap();
        assert_eq!(sign_github(secret, b"Hello, World!"), header);
        assert_eq!(
            verify_github(secret, Some(header), b"Hello, World?"),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_github(secret, None, b""),
            Err(SignatureError::Missing("X-Hub-Signature-256"))
        );
        assert!(matches!(
            verify_github(secret, Some("md5=00"), b""),
            Err(SignatureError::Malformed(..))
        ));
    }

    /// Standard Webhooks: signed `id.timestamp.body`, several signatures allowed, a
    /// timestamp outside the tolerance refused, a wrong key refused.
    #[test]
    fn standard_signature() {
        let key = standard_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let body = br#"{"test": 2432232314}"#;
        let sig = sign_standard(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        // The specification's published example.
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        let ok = |sigs: &str, now: i64| {
            verify_standard(
                &key,
                Some("msg_p5jXN8AQM9LWM0D4loKWxJek"),
                Some("1614265330"),
                Some(sigs),
                body,
                now,
                300,
            )
        };
        ok(&sig, 1614265330).unwrap();
        ok(&format!("v1,bm9wZQ== {sig}"), 1614265330 + 299).unwrap();
        assert!(matches!(
            ok(&sig, 1614265330 + 301),
            Err(SignatureError::Stale { .. })
        ));
        assert_eq!(ok("v1,bm9wZQ==", 1614265330), Err(SignatureError::Mismatch));
        let other = standard_key("whsec_dGhhdCBpcyBub3QgaXQ=");
        assert_eq!(
            verify_standard(
                &other,
                Some("msg_p5jXN8AQM9LWM0D4loKWxJek"),
                Some("1614265330"),
                Some(&sig),
                body,
                1614265330,
                300
            ),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_standard(&key, None, Some("1"), Some(&sig), body, 1, 300),
            Err(SignatureError::Missing("webhook-id"))
        );
    }

    #[test]
    fn constant_time_eq_works() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
