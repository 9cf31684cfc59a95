//! The auth callout's request (`$SYS.REQ.USER.AUTH`): a JWT the server signs around
//! what the client sent in CONNECT, all of which a connecting client chooses except
//! the signature. Runs what a coordinator runs before the store
//! (`auth/src/callout.rs`): [`callout::parse_request`], then the proof of the client's
//! key, the rotation proof or the enrollment token, and the factory id of its name.
//!
//! The first byte picks the mode. Even: the rest is the payload as received (mostly
//! refused at the signature). Odd: the rest is the request's `nats` claims as JSON,
//! which the target signs as the server would, so the fuzzer reaches the checks past
//! the signature; its bits also put in a valid server id (2), a valid key proof (4),
//! another issuer (8) and a valid rotation proof (16), each of which must then decide
//! the outcome as it says.

use std::sync::OnceLock;

use gf_auth::callout::{self, REQUEST_AUDIENCE};
use gf_auth::jwt::{self, Claims, User};
use gf_auth::EnrollToken;
use nkeys::KeyPair;
use serde_json::{json, Value};

/// Fixed, so a corpus file means the same thing every run.
struct Keys {
    server: KeyPair,
    issuer: KeyPair,
    user: KeyPair,
    old_user: KeyPair,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys {
        server: KeyPair::new_from_raw(nkeys::KeyPairType::Server, [1; 32]).expect("key"),
        issuer: KeyPair::new_from_raw(nkeys::KeyPairType::Account, [2; 32]).expect("key"),
        user: KeyPair::new_from_raw(nkeys::KeyPairType::User, [3; 32]).expect("key"),
        old_user: KeyPair::new_from_raw(nkeys::KeyPairType::User, [4; 32]).expect("key"),
    })
}

/// "Now" for expiry checks: fixed for the same reason.
pub const NOW: i64 = 1_800_000_000;

pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let k = keys();
    if mode & 1 == 0 {
        let _ = callout::parse_request(rest, &k.issuer.public_key(), NOW);
        let _ = jwt::decode::<User>(&String::from_utf8_lossy(rest));
        return;
    }
    let Ok(mut nats) = serde_json::from_slice::<Value>(rest) else {
        return;
    };
    let with_server = mode & 2 != 0;
    let with_proof = mode & 4 != 0;
    let other_issuer = mode & 8 != 0;
    let with_rotation = mode & 16 != 0;
    let nonce = nats
        .pointer("/client_info/nonce")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if let Value::Object(o) = &mut nats {
        if with_server {
            o.insert("server_id".into(), json!({"id": k.server.public_key()}));
        }
        if with_proof || with_rotation {
            let co = o.entry("connect_opts").or_insert_with(|| json!({}));
            if !co.is_object() {
                *co = json!({});
            }
            if with_proof {
                let sig = k.user.sign(nonce.as_bytes()).expect("signs");
                co["nkey"] = json!(k.user.public_key());
                co["sig"] = json!(base64_url(&sig));
            }
            if with_rotation {
                let proof = callout::rotation_proof(&k.old_user, nonce.as_bytes()).expect("signs");
                co["auth_token"] = json!(proof);
            }
        }
    }
    let issuer = if other_issuer {
        k.server.public_key()
    } else {
        k.issuer.public_key()
    };
    let signed = signed_request(nats, issuer);
    let Ok(req) = callout::parse_request(signed.as_bytes(), &k.issuer.public_key(), NOW) else {
        return;
    };
    // Accepted: for our issuer, from the server it names, naming a user key.
    assert!(!other_issuer, "accepted a request for another issuer");
    assert_eq!(req.iss, k.server.public_key());
    assert_eq!(req.nats.server_id.id, k.server.public_key());
    assert!(!req.nats.user_nkey.is_empty());
    let proof = callout::verify_proof(&req.nats);
    if with_proof && !nonce.is_empty() {
        assert_eq!(proof, Ok(k.user.public_key()), "a valid proof refused");
    }
    if let Ok(key) = &proof {
        assert_eq!(key, &req.nats.connect_opts.nkey);
    }
    let token = &req.nats.connect_opts.auth_token;
    let client_nonce = &req.nats.client_info.nonce;
    if token.starts_with(callout::ROTATE_PREFIX) {
        let rotated = callout::verify_rotation(token, client_nonce);
        if with_rotation {
            assert_eq!(
                rotated,
                Ok(k.old_user.public_key()),
                "a valid rotation refused"
            );
        }
    } else {
        let _ = EnrollToken::parse(token);
    }
    if let Some(id) = callout::factory_id(&req.nats.connect_opts.name) {
        assert!(gf_schemas::names::is_token(id.as_str()));
    }
}

/// An authorization request for `issuer` around `nats`, signed by the (fixed) server
/// as nats-server would: what a coordinator receives.
pub fn signed_request(nats: Value, issuer: String) -> String {
    let claims = Claims {
        sub: issuer,
        aud: REQUEST_AUDIENCE.into(),
        exp: Some(NOW + 60),
        nats,
        ..Default::default()
    };
    jwt::encode(claims, &keys().server).expect("signs")
}

/// The fixed keys' public halves: (server, issuer, user).
pub fn public_keys() -> (String, String, String) {
    let k = keys();
    (
        k.server.public_key(),
        k.issuer.public_key(),
        k.user.public_key(),
    )
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
