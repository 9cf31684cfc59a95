//! NATS JWTs (`alg: ed25519-nkey`): just what the auth callout reads and writes.
//!
//! The claim structs are our own, every field `#[serde(default)]`: the server omits
//! empty fields (Go `omitempty`), and a request missing one must still parse.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use nkeys::KeyPair;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

/// Why a JWT was not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwtError {
    #[error("not a JWT (header.claims.signature)")]
    Shape,
    #[error("JWT part is not base64url: {0}")]
    Base64(&'static str),
    #[error("JWT claims are not the expected JSON: {0}")]
    Claims(String),
    #[error("JWT issuer `{0}` is not a public nkey")]
    Issuer(String),
    #[error("JWT signature does not verify against its issuer")]
    Signature,
    #[error("cannot sign: {0}")]
    Sign(String),
}

/// The registered claims around a NATS-specific `nats` object.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct Claims<T> {
    pub jti: String,
    pub iat: i64,
    pub iss: String,
    pub sub: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub aud: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    pub nats: T,
}

fn b64(part: &str, what: &'static str) -> Result<Vec<u8>, JwtError> {
    // nats-server writes base64url without padding; accept the standard alphabet too.
    URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .or_else(|_| STANDARD.decode(part))
        .map_err(|_| JwtError::Base64(what))
}

/// Decodes a JWT and checks that its `iss` signed it. Nothing else is checked here
/// (audience, expiry and subject are the caller's business).
pub fn decode<T: DeserializeOwned + Default>(jwt: &str) -> Result<Claims<T>, JwtError> {
    let (signed, sig) = jwt.trim().rsplit_once('.').ok_or(JwtError::Shape)?;
    let mut parts = signed.split('.');
    let (Some(_header), Some(body), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(JwtError::Shape);
    };
    let claims: Claims<T> = serde_json::from_slice(&b64(body, "claims")?)
        .map_err(|e| JwtError::Claims(e.to_string()))?;
    let sig = b64(sig, "signature")?;
    let issuer =
        KeyPair::from_public_key(&claims.iss).map_err(|_| JwtError::Issuer(claims.iss.clone()))?;
    issuer
        .verify(signed.as_bytes(), &sig)
        .map_err(|_| JwtError::Signature)?;
    Ok(claims)
}

/// Signs `claims` as `signer` (which becomes `iss`), stamping `iat` and `jti`.
pub fn encode<T: Serialize>(mut claims: Claims<T>, signer: &KeyPair) -> Result<String, JwtError> {
    claims.iss = signer.public_key();
    claims.iat = time::OffsetDateTime::now_utc().unix_timestamp();
    claims.jti = String::new();
    let body = serde_json::to_vec(&claims).map_err(|e| JwtError::Claims(e.to_string()))?;
    claims.jti = data_encoding::BASE32_NOPAD.encode(&sha2::Sha256::digest(&body));
    let body = serde_json::to_vec(&claims).map_err(|e| JwtError::Claims(e.to_string()))?;
    let head = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let signed = format!("{head}.{}", URL_SAFE_NO_PAD.encode(body));
    let sig = signer
        .sign(signed.as_bytes())
        .map_err(|e| JwtError::Sign(e.to_string()))?;
    Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig)))
}

/// An authorization request's `nats` claims (what the server knows of the client).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct AuthRequest {
    /// The per-connection user key the response and the user JWT must name.
    pub user_nkey: String,
    pub server_id: ServerId,
    pub client_info: ClientInfo,
    pub connect_opts: ConnectOpts,
    #[serde(rename = "type")]
    pub kind: String,
    pub version: i64,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct ServerId {
    pub name: String,
    pub host: String,
    pub id: String,
    pub version: String,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct ClientInfo {
    pub host: String,
    /// The connection id on its server (for `KICK`).
    pub id: u64,
    pub user: String,
    pub name: String,
    pub kind: String,
    #[serde(rename = "type")]
    pub client_type: String,
    /// What the client had to sign (present when it sent a signature).
    pub nonce: String,
}

/// What the client sent in CONNECT. Secrets (`auth_token`, `pass`) are never logged.
#[derive(Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct ConnectOpts {
    pub jwt: String,
    pub nkey: String,
    pub sig: String,
    pub auth_token: String,
    pub user: String,
    pub pass: String,
    pub name: String,
    pub lang: String,
    pub version: String,
    pub protocol: i64,
}

impl std::fmt::Debug for ConnectOpts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOpts")
            .field("nkey", &self.nkey)
            .field("name", &self.name)
            .field("user", &self.user)
            .field("auth_token", &(!self.auth_token.is_empty()))
            .finish_non_exhaustive()
    }
}

/// The callout's answer: a user JWT, or why not.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct AuthResponse {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub jwt: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub version: i64,
}

/// A user's permissions, as a user JWT carries them.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct User {
    #[serde(rename = "pub")]
    pub publish: AllowList,
    #[serde(rename = "sub")]
    pub subscribe: AllowList,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resp: Option<ResponsePermission>,
    #[serde(rename = "type")]
    pub kind: String,
    pub version: i64,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct AllowList {
    pub allow: Vec<String>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct ResponsePermission {
    pub max: u32,
    /// Nanoseconds.
    pub ttl: u64,
}

impl User {
    /// A user JWT's permissions from a grant.
    pub fn from_grant(p: &gf_schemas::permissions::Permissions) -> Self {
        Self {
            publish: AllowList {
                allow: p.publish.clone(),
            },
            subscribe: AllowList {
                allow: p.subscribe.clone(),
            },
            resp: p.responses.map(|r| ResponsePermission {
                max: r.max,
                ttl: r.ttl.as_nanos() as u64,
            }),
            kind: "user".into(),
            version: 2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let issuer = KeyPair::new_account();
        let claims = Claims {
            sub: "UABC".into(),
            aud: "GF".into(),
            exp: Some(10),
            nats: User::default(),
            ..Default::default()
        };
        let jwt = encode(claims, &issuer).unwrap();
        let back: Claims<User> = decode(&jwt).unwrap();
        assert_eq!(back.iss, issuer.public_key());
        assert_eq!(back.sub, "UABC");
        assert!(!back.jti.is_empty());
        // Another claims body under the same signature does not verify.
        let (head, rest) = jwt.split_once('.').unwrap();
        let (_, sig) = rest.split_once('.').unwrap();
        let forged = format!(
            "{head}.{}.{sig}",
            URL_SAFE_NO_PAD.encode(format!(
                r#"{{"iss":"{}","sub":"UEVIL","nats":{{}}}}"#,
                issuer.public_key()
            ))
        );
        assert_eq!(decode::<User>(&forged).unwrap_err(), JwtError::Signature);
        assert_eq!(decode::<User>("abc").unwrap_err(), JwtError::Shape);
    }

    /// A request with most fields omitted (as the server omits empty ones) parses.
    #[test]
    fn sparse_request_parses() {
        let server = KeyPair::new_server();
        let claims: Claims<serde_json::Value> = Claims {
            sub: "AISSUER".into(),
            aud: "nats-authorization-request".into(),
            nats: serde_json::json!({"user_nkey": "UX", "server_id": {"id": server.public_key()}}),
            ..Default::default()
        };
        let jwt = encode(claims, &server).unwrap();
        let req: Claims<AuthRequest> = decode(&jwt).unwrap();
        assert_eq!(req.nats.user_nkey, "UX");
        assert_eq!(req.nats.client_info.nonce, "");
    }
}
