//! Factories on a secured NATS (issue #15), for operators only (even the reads: a
//! factory's address and a token's networks are not for viewers): enrolled factories
//! and their revocation, enrollment tokens (list, create — the token is shown once —
//! revoke). The same store and revocation as `gf factory …`.
//!
//! On an open NATS (a coordinator without `--secrets-dir`) there are no factories:
//! every route answers 404 `not_found` saying so.

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::Json;
use gf_auth::store::{FactoryRecord, StoreError, TokenRecord, TokenSpec};
use gf_schemas::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::doc::{Created, JsonBody};
use super::{parse_worker_id, ApiError, AppState};

fn store(st: &AppState) -> Result<&gf_auth::Store, ApiError> {
    st.service
        .factories
        .as_ref()
        .map(|f| f.store())
        .ok_or_else(|| {
            ApiError::not_found(
                "this coordinator runs on an open NATS (no --secrets-dir): there are no enrolled factories or enrollment tokens",
            )
        })
}

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound(what) => ApiError::not_found(what),
        other => ApiError::unavailable(other),
    }
}

/// An enrolled factory.
#[derive(Serialize, Deserialize, JsonSchema)]
pub struct FactoryView {
    pub id: String,
    /// The only queue it serves; `None`: whatever it registers.
    pub pool: Option<String>,
    /// Approved capability values (empty with no tags: whatever it registers).
    pub caps: BTreeMap<String, String>,
    pub tags: BTreeSet<String>,
    /// `active` or `revoked`.
    pub state: String,
    /// Its last connection: when and from where.
    pub last_seen: Option<Timestamp>,
    pub host: Option<String>,
    /// Active, and its last connection's credentials are still valid.
    pub connected: bool,
    /// Keys it may connect with (two during a rotation's grace period).
    pub keys: usize,
    /// The enrollment token it used.
    pub enrolled_via: String,
    pub created_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

impl FactoryView {
    fn new(f: FactoryRecord, now: Timestamp) -> Self {
        Self {
            connected: f.connected(now),
            id: f.id.to_string(),
            pool: f.pool,
            caps: f.caps,
            tags: f.tags,
            state: f.state.as_str().into(),
            last_seen: f.connection.as_ref().map(|c| c.at),
            host: f.connection.map(|c| c.host),
            keys: f.keys.len(),
            enrolled_via: f.enrolled_via,
            created_at: f.created_at,
            revoked_at: f.revoked_at,
        }
    }
}

/// An enrollment token, without its secret (only its hash is stored, and not shown).
#[derive(Serialize, Deserialize, JsonSchema)]
pub struct TokenView {
    /// The hex part after `gfe_`.
    pub id: String,
    /// `active`, `revoked`, `expired` or `used up`.
    pub state: String,
    pub used: u32,
    pub uses_left: u32,
    pub expires_at: Timestamp,
    pub created_at: Timestamp,
    pub pool: Option<String>,
    pub caps: BTreeMap<String, String>,
    pub tags: BTreeSet<String>,
    /// Networks it may be used from; empty: anywhere.
    pub cidrs: Vec<String>,
    /// Factories enrolled with it.
    pub factories: Vec<String>,
    /// Its latest refused enrollment: time, reason, address.
    pub last_refusal: Option<String>,
}

impl TokenView {
    fn new(t: TokenRecord, now: Timestamp) -> Self {
        Self {
            state: t.state(now).into(),
            id: t.id,
            used: t.used,
            uses_left: t.uses_left,
            expires_at: t.expires_at,
            created_at: t.created_at,
            pool: t.pool,
            caps: t.caps,
            tags: t.tags,
            cidrs: t.cidrs,
            factories: t.factories.iter().map(|f| f.to_string()).collect(),
            last_refusal: t.last_refusal,
        }
    }
}

/// What `POST /api/factory-tokens` makes.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// How long it may be used, e.g. `"1h"`, `"30m"` (default 1h).
    pub ttl: Option<String>,
    /// How many factories may enroll with it (default 1).
    pub uses: Option<u32>,
    /// The queue its factories serve (their only one).
    pub pool: Option<String>,
    /// Approved capability values; with any caps or tags a factory gets only these
    /// (plus its detected os, arch, cpus, memory_mb).
    #[serde(default)]
    pub caps: BTreeMap<String, String>,
    #[serde(default)]
    pub tags: BTreeSet<String>,
    /// Networks it may be used from, e.g. `10.0.0.0/8` (default: anywhere).
    #[serde(default)]
    pub cidrs: Vec<String>,
}

impl TokenRequest {
    fn spec(self) -> Result<TokenSpec, ApiError> {
        let ttl = match &self.ttl {
            Some(t) => humantime::parse_duration(t)
                .map_err(|e| ApiError::invalid(format!("ttl `{t}`: {e}")))?,
            None => std::time::Duration::from_secs(3600),
        };
        let cidrs = self
            .cidrs
            .iter()
            .map(|c| {
                c.parse()
                    .map_err(|e| ApiError::invalid(format!("cidrs: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let spec = TokenSpec {
            ttl,
            uses: self.uses.unwrap_or(1),
            pool: self.pool,
            caps: self.caps,
            tags: self.tags,
            cidrs,
        };
        spec.check().map_err(ApiError::invalid)?;
        Ok(spec)
    }
}

/// A new token: the only time its secret is shown.
#[derive(Serialize, Deserialize, JsonSchema)]
pub struct TokenCreated {
    /// `gfe_…`: give it to the factory (`gf worker --key-dir DIR --enroll TOKEN`).
    pub token: String,
    pub record: TokenView,
}

/// What a revocation did.
#[derive(Serialize, Deserialize, JsonSchema)]
pub struct FactoryRevoked {
    pub factory: String,
    /// Its last connection's credentials were still valid.
    pub was_connected: bool,
    /// A coordinator closed that connection; its reconnects are refused either way.
    pub kicked: bool,
}

pub async fn list(State(st): State<AppState>) -> Result<Json<Vec<FactoryView>>, ApiError> {
    let now = st.service.clock.now();
    let all = store(&st)?.factories().await.map_err(store_error)?;
    Ok(Json(
        all.into_iter().map(|f| FactoryView::new(f, now)).collect(),
    ))
}

pub async fn revoke(
    State(st): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<FactoryRevoked>, ApiError> {
    let id = parse_worker_id(&id?.0)?;
    let done = gf_auth::kick::revoke(store(&st)?, &st.service.client, &id)
        .await
        .map_err(|e| match e {
            StoreError::NotFound(_) => ApiError::not_found(format!("no enrolled factory `{id}`")),
            other => store_error(other),
        })?;
    Ok(Json(FactoryRevoked {
        factory: done.factory.to_string(),
        was_connected: done.was_connected,
        kicked: done.kicked,
    }))
}

pub async fn tokens(State(st): State<AppState>) -> Result<Json<Vec<TokenView>>, ApiError> {
    let now = st.service.clock.now();
    let all = store(&st)?.tokens().await.map_err(store_error)?;
    Ok(Json(
        all.into_iter().map(|t| TokenView::new(t, now)).collect(),
    ))
}

pub async fn create_token(
    State(st): State<AppState>,
    body: JsonBody<TokenRequest>,
) -> Result<Created<TokenCreated>, ApiError> {
    let req: TokenRequest = serde_json::from_slice(&body.0)
        .map_err(|e| ApiError::invalid(format!("malformed token request: {e}")))?;
    let spec = req.spec()?;
    let now = st.service.clock.now();
    let (token, rec) = store(&st)?
        .create_token(&spec, now)
        .await
        .map_err(store_error)?;
    Ok(Created(
        true,
        TokenCreated {
            token: token.reveal(),
            record: TokenView::new(rec, now),
        },
    ))
}

pub async fn revoke_token(
    State(st): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<TokenView>, ApiError> {
    let id = id?.0;
    if !gf_auth::token::valid_id(&id) {
        return Err(ApiError::invalid(format!(
            "`{id}` is not a token id (16 hex digits)"
        )));
    }
    let t = store(&st)?.revoke_token(&id).await.map_err(|e| match e {
        StoreError::NotFound(_) => ApiError::not_found(format!("no enrollment token `{id}`")),
        other => store_error(other),
    })?;
    Ok(Json(TokenView::new(t, st.service.clock.now())))
}

/// Operators only: the factory routes, reads included.
pub fn operator_only(path: &str) -> bool {
    path.starts_with("/api/factories") || path.starts_with("/api/factory-tokens")
}
