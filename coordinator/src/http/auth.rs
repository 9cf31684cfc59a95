//! Bearer tokens with roles. Reads (`GET`) need `viewer`; anything else needs
//! `operator`. Tokens are compared by their SHA-256, the only form the config holds.
//! With auth disabled every caller is treated as an operator.

use std::collections::HashMap;

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{ApiError, AppState};
use crate::config::{AuthConfig, Role};

/// The token table, keyed by hash.
#[derive(Debug)]
pub struct Auth {
    enabled: bool,
    by_hash: HashMap<String, (String, Role)>,
}

/// Who is calling, as the middleware found out.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Identity {
    /// The token's name; `anonymous` when auth is disabled.
    pub name: String,
    /// `viewer` or `operator`.
    pub role: String,
    pub auth_enabled: bool,
}

impl Auth {
    pub fn new(cfg: &AuthConfig) -> Self {
        Self {
            enabled: cfg.enabled,
            by_hash: cfg
                .tokens
                .iter()
                .map(|t| (t.sha256_hex.to_ascii_lowercase(), (t.name.clone(), t.role)))
                .collect(),
        }
    }

    /// The identity a request's `Authorization` header value proves, if any.
    pub fn identify(&self, authorization: Option<&str>) -> Option<(String, Role)> {
        if !self.enabled {
            return Some(("anonymous".into(), Role::Operator));
        }
        let token = authorization?.strip_prefix("Bearer ")?.trim();
        if token.is_empty() {
            return None;
        }
        let hash = hex::encode(Sha256::digest(token.as_bytes()));
        self.by_hash.get(&hash).cloned()
    }
}

/// Routes served without a token: `/health`, the API's description, and trackers' webhooks
/// (`POST /api/bridge/{source}`, authenticated by their signature).
pub fn is_public(method: &Method, path: &str) -> bool {
    path == "/api/openapi.json"
        || path == "/health"
        || (method == Method::POST
            && path
                .strip_prefix("/api/bridge/")
                .is_some_and(|rest| !rest.is_empty() && !rest.contains('/')))
}

/// The role a request needs: reads are for viewers, everything else (and the
/// factory routes, reads included) for operators.
pub fn needed(method: &Method, path: &str) -> Role {
    if super::factories::operator_only(path) {
        Role::Operator
    } else if method == Method::GET || method == Method::HEAD {
        Role::Viewer
    } else {
        Role::Operator
    }
}

pub async fn require(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    // The API's description is public, like the dashboard's static files; a tracker's
    // webhook carries its own credential, the signature the bridge verifies.
    if is_public(req.method(), req.uri().path()) {
        return next.run(req).await;
    }
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let Some((name, role)) = st.auth.identify(header) else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid API token is required: Authorization: Bearer <token>",
        )
        .into_response();
    };
    if role < needed(req.method(), req.uri().path()) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "this needs the operator role; token `{name}` is a {}",
                role.as_str()
            ),
        )
        .into_response();
    }
    req.extensions_mut().insert(Identity {
        name,
        role: role.as_str().into(),
        auth_enabled: st.auth.enabled,
    });
    next.run(req).await
}

/// Who the caller is: the dashboard uses it to ask for a token and to hide actions a
/// viewer may not take.
pub async fn whoami(Extension(id): Extension<Identity>) -> Json<Identity> {
    Json(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ApiToken;

    fn auth() -> Auth {
        let hash = |s: &str| hex::encode(Sha256::digest(s.as_bytes()));
        Auth::new(&AuthConfig {
            enabled: true,
            tokens: vec![
                ApiToken {
                    name: "ann".into(),
                    role: Role::Viewer,
                    sha256_hex: hash("view-secret"),
                },
                ApiToken {
                    name: "op".into(),
                    role: Role::Operator,
                    sha256_hex: hash("op-secret").to_uppercase(),
                },
            ],
        })
    }

    /// Tokens are recognised by hash (case-insensitively), anything else is refused.
    #[test]
    fn identify_by_hash() {
        let a = auth();
        assert_eq!(
            a.identify(Some("Bearer view-secret")),
            Some(("ann".into(), Role::Viewer))
        );
        assert_eq!(
            a.identify(Some("Bearer op-secret")),
            Some(("op".into(), Role::Operator))
        );
        for bad in [
            None,
            Some(""),
            Some("Bearer "),
            Some("view-secret"),
            Some("Bearer nope"),
        ] {
            assert_eq!(a.identify(bad), None, "{bad:?}");
        }
        let off = Auth::new(&AuthConfig::default());
        assert_eq!(off.identify(None).map(|i| i.1), Some(Role::Operator));
    }

    /// Reads need a viewer, writes an operator; an operator may read.
    #[test]
    fn roles() {
        assert_eq!(needed(&Method::GET, "/api/jobs"), Role::Viewer);
        assert_eq!(needed(&Method::POST, "/api/jobs"), Role::Operator);
        // A factory's address and a token's networks are for operators only.
        assert_eq!(needed(&Method::GET, "/api/factories"), Role::Operator);
        assert_eq!(needed(&Method::GET, "/api/factory-tokens"), Role::Operator);
        assert!(Role::Operator >= Role::Viewer);
    }
}
