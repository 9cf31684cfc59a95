//! Workflow routes: profiles, manifests, and the tracker bridge (the public, signed
//! webhook intake and the operator's view of outbound deliveries). Thin: each decodes,
//! calls the service or the bridge, and encodes.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use gf_schemas::bridge::{Delivery, DeliveryQuery, WebhookOutcome, WebhookReply};
use gf_schemas::{Manifest, ManifestStatus, NamedProfile};

use super::doc::{Created, JsonBody};
use super::{ApiError, AppState};

pub async fn profiles(State(st): State<AppState>) -> Result<Json<Vec<NamedProfile>>, ApiError> {
    Ok(Json(st.service.profile_list().await?))
}

/// `POST /api/manifests`: 201 when it created jobs, 200 when everything existed.
pub async fn submit_manifest(
    State(st): State<AppState>,
    body: JsonBody<Manifest>,
) -> Result<Created<ManifestStatus>, ApiError> {
    let m: Manifest =
        crate::service::decode("manifest", &body.0, st.service.config.max_submit_bytes)?;
    let status = st.service.manifest_submit(m).await?;
    Ok(Created(status.created > 0, status))
}

pub async fn manifest(
    State(st): State<AppState>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<ManifestStatus>, ApiError> {
    Ok(Json(st.service.manifest_get(&name?.0).await?))
}

fn bridge(st: &AppState) -> Result<&std::sync::Arc<gf_bridge::Bridge>, ApiError> {
    st.service
        .bridge
        .get()
        .ok_or_else(|| ApiError::unavailable("bridge not started"))
}

fn bridge_error(e: gf_bridge::BridgeError) -> ApiError {
    use gf_bridge::BridgeError as B;
    match e {
        B::Signature(s) => {
            let stale = matches!(s, gf_bridge::verify::SignatureError::Stale { .. });
            let (status, kind) = if stale {
                (StatusCode::BAD_REQUEST, "stale")
            } else {
                (StatusCode::UNAUTHORIZED, "unauthorized")
            };
            ApiError::new(status, kind, s.to_string())
        }
        B::NotFound(m) => ApiError::not_found(m),
        B::Invalid(m) => ApiError::invalid(m),
        B::Submit(r) => r.into(),
        B::Unavailable(m) => ApiError::unavailable(m),
        B::Internal(m) => ApiError::internal(m),
    }
}

/// `POST /api/bridge/{source}`: a tracker's webhook. Public (the signature is the
/// credential). 201 when it created a job, 200 otherwise.
pub async fn webhook(
    State(st): State<AppState>,
    source: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: JsonBody<serde_json::Value>,
) -> Result<Created<WebhookReply>, ApiError> {
    let source = source?.0;
    let reply: WebhookReply = bridge(&st)?
        .webhook(&source, &headers, &body.0)
        .await
        .map_err(bridge_error)?;
    Ok(Created(reply.outcome == WebhookOutcome::Created, reply))
}

pub async fn deliveries(
    State(st): State<AppState>,
    q: Result<Query<DeliveryQuery>, QueryRejection>,
) -> Result<Json<Vec<Delivery>>, ApiError> {
    let Query(q) = q?;
    Ok(Json(
        bridge(&st)?.deliveries(q).await.map_err(bridge_error)?,
    ))
}

pub async fn redeliver(
    State(st): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Delivery>, ApiError> {
    let id = id?.0;
    Ok(Json(
        bridge(&st)?.redeliver(&id).await.map_err(bridge_error)?,
    ))
}
