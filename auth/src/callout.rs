//! The auth callout: nats-server asks on `$SYS.REQ.USER.AUTH` who a connecting client
//! is, and a coordinator replica (queue group `gf-auth`) answers with a short-lived
//! user JWT carrying exactly that factory's grant, or with why not.
//!
//! A client proves it holds its nkey by signing the server's nonce; an unknown key
//! enrolls when the CONNECT also carries an enrollment token (`auth_token`) and names
//! its factory id (client name `gf-worker <id>`). Everything else is refused.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use futures::StreamExt as _;
use gf_schemas::names::auth as names;
use gf_schemas::{permissions, Timestamp, WorkerId};
use nkeys::KeyPair;
use rand::Rng as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::jwt::{self, AuthRequest, AuthResponse, Claims, User};
use crate::store::{Connection, FactoryRecord, FactoryState, Refusal, Store};
use crate::token::EnrollToken;

/// The audience of every authorization request.
pub const REQUEST_AUDIENCE: &str = "nats-authorization-request";
/// What a worker names its connection: `gf-worker <factory id>`.
pub const CLIENT_NAME_PREFIX: &str = "gf-worker ";
/// A key rotation rides in CONNECT's `auth_token`: `gfr_<old public key>.<the old key's
/// signature over this connection's nonce, base64url>`, while `nkey`/`sig` prove the
/// new key. Bound to the nonce, so it cannot be replayed.
pub const ROTATE_PREFIX: &str = "gfr_";

/// The rotation proof for a connection whose nonce is `nonce`, signed by `old`.
pub fn rotation_proof(old: &KeyPair, nonce: &[u8]) -> Result<String, nkeys::error::Error> {
    Ok(format!(
        "{ROTATE_PREFIX}{}.{}",
        old.public_key(),
        URL_SAFE_NO_PAD.encode(old.sign(nonce)?)
    ))
}

/// Checks a rotation proof against this request's nonce; the old public key.
pub fn verify_rotation(token: &str, nonce: &str) -> Result<String, Refusal> {
    let bad = |w: &str| Refusal::BadRotation(w.to_string());
    let rest = token
        .strip_prefix(ROTATE_PREFIX)
        .ok_or_else(|| bad("not a rotation"))?;
    let (old, sig) = rest.split_once('.').ok_or_else(|| bad("malformed proof"))?;
    let sig = URL_SAFE_NO_PAD
        .decode(sig)
        .map_err(|_| bad("malformed signature"))?;
    let key = KeyPair::from_public_key(old).map_err(|_| bad("the old key is not an nkey"))?;
    if key.key_pair_type() != nkeys::KeyPairType::User {
        return Err(bad("the old key is not a user nkey"));
    }
    key.verify(nonce.as_bytes(), &sig)
        .map_err(|_| bad("the old key's signature does not verify"))?;
    Ok(old.to_string())
}

/// How the responders sign and how long what they issue lives.
#[derive(Clone)]
pub struct CalloutConfig {
    pub issuer: Arc<KeyPair>,
    /// A user JWT lives this long, ±10 % (so a fleet's reconnects spread out).
    pub jwt_ttl: Duration,
    /// After a rotation the old key still works this long.
    pub key_grace: Duration,
    /// Requests answered at once per replica (a reconnect storm queues, it does not
    /// flood the store).
    pub max_inflight: usize,
}

impl CalloutConfig {
    pub fn new(issuer: KeyPair) -> Self {
        Self {
            issuer: Arc::new(issuer),
            jwt_ttl: Duration::from_secs(3600),
            key_grace: Duration::from_secs(600),
            max_inflight: 64,
        }
    }

    fn ttl_with_jitter(&self) -> Duration {
        let base = self.jwt_ttl.as_millis() as f64;
        let factor = rand::rng().random_range(0.9..=1.1);
        Duration::from_millis((base * factor).max(1000.0) as u64)
    }
}

/// What happened to one connection attempt (for the coordinator's events and logs).
#[derive(Clone, Debug)]
pub enum Outcome {
    /// A known key connected.
    Connected(WorkerId),
    /// A new factory enrolled with a token.
    Enrolled { factory: WorkerId, token: String },
    /// A factory connected with a new key, proving the old one.
    Rotated(WorkerId),
    /// Refused; `factory` when it is known.
    Refused {
        factory: Option<WorkerId>,
        reason: Refusal,
        host: String,
    },
}

/// Called with every outcome (after the answer is sent).
pub type OnOutcome = Arc<dyn Fn(&Outcome) + Send + Sync>;

/// Checks an authorization request as received: signed by the server it names,
/// addressed to callouts, for our issuer, not expired. Pure and total (fuzzed).
pub fn parse_request(
    payload: &[u8],
    issuer: &str,
    now_secs: i64,
) -> Result<Claims<AuthRequest>, Refusal> {
    let text = std::str::from_utf8(payload).map_err(|_| {
        Refusal::BadRequest("not UTF-8 (an encrypted request? no xkey is configured)".into())
    })?;
    let req: Claims<AuthRequest> =
        jwt::decode(text).map_err(|e| Refusal::BadRequest(e.to_string()))?;
    if req.iss != req.nats.server_id.id {
        return Err(Refusal::BadRequest(
            "not signed by the server it names".into(),
        ));
    }
    if req.aud != REQUEST_AUDIENCE {
        return Err(Refusal::BadRequest(format!("audience `{}`", req.aud)));
    }
    if req.sub != issuer {
        return Err(Refusal::BadRequest("for another issuer".into()));
    }
    if req.exp.is_some_and(|e| e < now_secs) {
        return Err(Refusal::BadRequest("expired".into()));
    }
    if req.nats.user_nkey.is_empty() {
        return Err(Refusal::BadRequest("no user_nkey".into()));
    }
    Ok(req)
}

/// The client's public nkey, once its signature over the nonce verifies.
pub fn verify_proof(req: &AuthRequest) -> Result<String, Refusal> {
    let co = &req.connect_opts;
    if co.nkey.is_empty() || co.sig.is_empty() {
        return Err(Refusal::NoProof("connect with a factory key (nkey)".into()));
    }
    if req.client_info.nonce.is_empty() {
        return Err(Refusal::NoProof(
            "the server sent no nonce (its config needs a static nkey user)".into(),
        ));
    }
    let sig = URL_SAFE_NO_PAD
        .decode(co.sig.trim_end_matches('='))
        .or_else(|_| STANDARD.decode(&co.sig))
        .map_err(|_| Refusal::BadSignature)?;
    let key = KeyPair::from_public_key(&co.nkey)
        .map_err(|_| Refusal::NoProof("not a public nkey".into()))?;
    if key.key_pair_type() != nkeys::KeyPairType::User {
        return Err(Refusal::NoProof("not a user nkey".into()));
    }
    key.verify(req.client_info.nonce.as_bytes(), &sig)
        .map_err(|_| Refusal::BadSignature)?;
    Ok(co.nkey.clone())
}

/// The factory id an enrolling worker names in its client name
/// (`gf-worker <id>`), if it is one.
pub fn factory_id(client_name: &str) -> Option<WorkerId> {
    client_name
        .strip_prefix(CLIENT_NAME_PREFIX)
        .and_then(|id| WorkerId::new(id.trim()).ok())
}

/// How a client got in.
enum Admitted {
    Known,
    Enrolled(String),
    Rotated,
}

/// Decides who the client is: a known key's factory, a factory rotating to a new key,
/// or a new one enrolled now.
async fn authorize(
    cfg: &CalloutConfig,
    store: &Store,
    req: &AuthRequest,
    now: Timestamp,
) -> Result<(FactoryRecord, Admitted), (Option<WorkerId>, Refusal)> {
    let nkey = verify_proof(req).map_err(|r| (None, r))?;
    if let Some(f) = store.by_key(&nkey).await.map_err(|e| (None, e.into()))? {
        if f.state == FactoryState::Revoked {
            return Err((Some(f.id.clone()), Refusal::FactoryRevoked(f.id)));
        }
        if !f.accepts(&nkey, now) {
            return Err((Some(f.id.clone()), Refusal::UnknownKey));
        }
        return Ok((f, Admitted::Known));
    }
    let raw = &req.connect_opts.auth_token;
    if raw.is_empty() {
        return Err((None, Refusal::UnknownKey));
    }
    if raw.starts_with(ROTATE_PREFIX) {
        let old = verify_rotation(raw, &req.client_info.nonce).map_err(|r| (None, r))?;
        let Some(f) = store.by_key(&old).await.map_err(|e| (None, e.into()))? else {
            return Err((None, Refusal::BadRotation("the old key is unknown".into())));
        };
        let rec = store
            .rotate_key(&f.id, &old, &nkey, cfg.key_grace, now)
            .await
            .map_err(|r| (Some(f.id.clone()), r))?;
        return Ok((rec, Admitted::Rotated));
    }
    let token = EnrollToken::parse(raw).map_err(|e| (None, Refusal::BadToken(e.to_string())))?;
    let name = &req.connect_opts.name;
    let id = factory_id(name).ok_or_else(|| (None, Refusal::NoFactoryId(format!("`{name}`"))))?;
    let rec = store
        .enroll(&token, &nkey, &id, &req.client_info.host, now)
        .await
        .map_err(|r| (Some(id.clone()), r))?;
    Ok((rec, Admitted::Enrolled(token.id)))
}

fn respond(
    issuer: &KeyPair,
    req: &Claims<AuthRequest>,
    outcome: Result<String, String>,
) -> Result<String, jwt::JwtError> {
    let mut resp = AuthResponse {
        kind: "authorization_response".into(),
        version: 2,
        ..Default::default()
    };
    match outcome {
        Ok(user_jwt) => resp.jwt = user_jwt,
        Err(e) => resp.error = e,
    }
    jwt::encode(
        Claims {
            sub: req.nats.user_nkey.clone(),
            aud: req.nats.server_id.id.clone(),
            nats: resp,
            ..Default::default()
        },
        issuer,
    )
}

/// The user JWT for factory `f` on this connection.
fn user_jwt(
    cfg: &CalloutConfig,
    req: &AuthRequest,
    f: &FactoryRecord,
    expires: i64,
) -> Result<String, jwt::JwtError> {
    let grant = permissions::factory(&f.id, &f.consumers);
    jwt::encode(
        Claims {
            sub: req.user_nkey.clone(),
            aud: names::ACCOUNT.into(),
            name: f.id.to_string(),
            exp: Some(expires),
            nats: User::from_grant(&grant),
            ..Default::default()
        },
        &cfg.issuer,
    )
}

/// Answers one request; returns the response JWT (if the request was ours to answer)
/// and the outcome.
pub async fn answer(
    cfg: &CalloutConfig,
    store: &Store,
    payload: &[u8],
) -> Option<(String, Outcome, Option<(WorkerId, Connection)>)> {
    let now = Timestamp::now_local();
    let now_secs = now.unix_millis() / 1000;
    let req = match parse_request(payload, &cfg.issuer.public_key(), now_secs) {
        Ok(r) => r,
        Err(e) => {
            // Not answerable (no trustworthy user key or server id to address); the
            // server times the client out.
            tracing::warn!(error = %e, "ignoring an authorization request");
            return None;
        }
    };
    let host = req.nats.client_info.host.clone();
    match authorize(cfg, store, &req.nats, now).await {
        Ok((f, how)) => {
            let ttl = cfg.ttl_with_jitter();
            let expires = now.plus(ttl);
            let signed = user_jwt(cfg, &req.nats, &f, expires.unix_millis() / 1000)
                .and_then(|u| respond(&cfg.issuer, &req, Ok(u)));
            let signed = match signed {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot sign a user JWT");
                    return None;
                }
            };
            let conn = Connection {
                server_id: req.nats.server_id.id.clone(),
                cid: req.nats.client_info.id,
                host,
                at: now,
                expires_at: expires,
            };
            let outcome = match how {
                Admitted::Enrolled(token) => Outcome::Enrolled {
                    factory: f.id.clone(),
                    token,
                },
                Admitted::Rotated => Outcome::Rotated(f.id.clone()),
                Admitted::Known => Outcome::Connected(f.id.clone()),
            };
            Some((signed, outcome, Some((f.id, conn))))
        }
        Err((factory, reason)) => {
            let signed = respond(&cfg.issuer, &req, Err(reason.to_string())).ok()?;
            Some((
                signed,
                Outcome::Refused {
                    factory,
                    reason,
                    host,
                },
                None,
            ))
        }
    }
}

/// Serves the callout on `client` (connected as the callout user) until `shutdown`.
pub async fn serve(
    client: async_nats::Client,
    store: Store,
    cfg: CalloutConfig,
    on_outcome: OnOutcome,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut sub = client
        .queue_subscribe(names::CALLOUT, names::CALLOUT_GROUP.into())
        .await?;
    let tracker = TaskTracker::new();
    let permits = Arc::new(tokio::sync::Semaphore::new(cfg.max_inflight.max(1)));
    tracing::info!(issuer = %cfg.issuer.public_key(), "answering the auth callout");
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => break,
            m = sub.next() => match m { Some(m) => m, None => break },
        };
        let Some(reply) = msg.reply.clone() else {
            continue;
        };
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let (client, store, cfg, on_outcome) = (
            client.clone(),
            store.clone(),
            cfg.clone(),
            on_outcome.clone(),
        );
        tracker.spawn(async move {
            let _permit = permit;
            let Some((signed, outcome, conn)) = answer(&cfg, &store, &msg.payload).await else {
                return;
            };
            // Recorded before the answer: when the client learns the outcome, the
            // token's refusal and the factory's connection are readable.
            match &outcome {
                Outcome::Refused { reason, host, factory } => {
                    tracing::warn!(%reason, %host, factory = ?factory.as_ref().map(|f| f.as_str()), "connection refused");
                    if let Some(t) = reason.token_id() {
                        let now = Timestamp::now_local();
                        store.note_refusal(t, &format!("{now}: {reason} (from {host})")).await;
                    }
                }
                Outcome::Enrolled { factory, token } => {
                    tracing::info!(%factory, token, "factory enrolled");
                }
                Outcome::Rotated(f) => tracing::info!(factory = %f, "factory key rotated"),
                Outcome::Connected(f) => tracing::debug!(factory = %f, "factory authorised"),
            }
            if let Some((id, conn)) = conn {
                store.note_connection(&id, conn).await;
            }
            if let Err(e) = client.publish(reply, signed.into()).await {
                tracing::warn!(error = %e, "cannot answer an authorization request");
            }
            on_outcome(&outcome);
        });
    }
    sub.unsubscribe().await.ok();
    tracker.close();
    tracker.wait().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(server: &KeyPair, issuer: &str, nats: serde_json::Value) -> String {
        jwt::encode(
            Claims {
                sub: issuer.into(),
                aud: REQUEST_AUDIENCE.into(),
                exp: Some(i64::MAX / 2),
                nats,
                ..Default::default()
            },
            server,
        )
        .unwrap()
    }

    /// A request must come from the server it names, for our issuer; the proof must
    /// be the client key's signature over this nonce.
    #[test]
    fn requests_and_proofs() {
        let server = KeyPair::new_server();
        let issuer = KeyPair::new_account().public_key();
        let client = KeyPair::new_user();
        let nonce = "abcNONCE";
        let sig = URL_SAFE_NO_PAD.encode(client.sign(nonce.as_bytes()).unwrap());
        let body = serde_json::json!({
            "user_nkey": "UCONN",
            "server_id": {"id": server.public_key()},
            "client_info": {"host": "127.0.0.1", "id": 7, "nonce": nonce},
            "connect_opts": {"nkey": client.public_key(), "sig": sig, "name": "gf-worker f1"},
        });
        let ok = request(&server, &issuer, body.clone());
        let req = parse_request(ok.as_bytes(), &issuer, 0).unwrap();
        assert_eq!(verify_proof(&req.nats).unwrap(), client.public_key());
        // Another issuer's request.
        let other = KeyPair::new_account().public_key();
        assert!(parse_request(ok.as_bytes(), &other, 0).is_err());
        // Signed by a key that is not the named server.
        let forged = request(&KeyPair::new_server(), &issuer, body.clone());
        assert!(parse_request(forged.as_bytes(), &issuer, 0).is_err());
        // Expired.
        assert!(parse_request(ok.as_bytes(), &issuer, i64::MAX).is_err());
        // A signature over another nonce.
        let mut wrong = body.clone();
        wrong["client_info"]["nonce"] = "other".into();
        let req = parse_request(request(&server, &issuer, wrong).as_bytes(), &issuer, 0).unwrap();
        assert_eq!(verify_proof(&req.nats), Err(Refusal::BadSignature));
        // No nonce.
        let mut none = body;
        none["client_info"]["nonce"] = "".into();
        let req = parse_request(request(&server, &issuer, none).as_bytes(), &issuer, 0).unwrap();
        assert!(matches!(verify_proof(&req.nats), Err(Refusal::NoProof(_))));
        assert!(parse_request(b"\xff", &issuer, 0).is_err());
    }

    /// A rotation proof is the old key's signature over this connection's nonce.
    #[test]
    fn rotation_proofs() {
        let old = KeyPair::new_user();
        let proof = rotation_proof(&old, b"nonce1").unwrap();
        assert_eq!(verify_rotation(&proof, "nonce1").unwrap(), old.public_key());
        assert!(
            verify_rotation(&proof, "nonce2").is_err(),
            "bound to the nonce"
        );
        assert!(verify_rotation("gfr_x.y", "nonce1").is_err());
        assert!(verify_rotation("gfe_abc", "nonce1").is_err());
        let account = KeyPair::new_account();
        let forged = rotation_proof(&account, b"n").unwrap();
        assert!(verify_rotation(&forged, "n").is_err(), "user keys only");
    }
}
