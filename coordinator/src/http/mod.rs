//! HTTP API: `/health`, and jobs (`POST /api/jobs`, `GET /api/jobs`, `GET /api/jobs/{id}`,
//! `POST /api/jobs/{id}/cancel`). Errors are `{"error": {"kind", "message"}}` with a status
//! derived from the kind; internal details are not leaked.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use gf_schemas::rpc::CancelRequest;
use gf_schemas::{ErrorKind, JobId, JobRecord, JobState, RpcError};
use serde::{Deserialize, Serialize};

use crate::scheduler::LeaderStatus;
use crate::service::Service;

#[derive(Clone)]
pub struct AppState {
    pub service: Arc<Service>,
    pub leader: Arc<LeaderStatus>,
    pub started: Instant,
}

pub fn router(state: AppState) -> Router {
    let limit = state.service.config.max_submit_bytes * 2;
    Router::new()
        .route("/health", get(health))
        .route("/api/jobs", post(submit).get(list_jobs))
        .route("/api/jobs/{id}", get(get_job))
        .route("/api/jobs/{id}/cancel", post(cancel))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

pub struct ApiError(RpcError);

impl From<RpcError> for ApiError {
    fn from(e: RpcError) -> Self {
        Self(e)
    }
}

pub fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::Invalid => StatusCode::BAD_REQUEST,
        ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::StaleEpoch
        | ErrorKind::Revoked
        | ErrorKind::Conflict
        | ErrorKind::WrongState
        | ErrorKind::NotEligible => StatusCode::CONFLICT,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut e = self.0;
        if e.kind == ErrorKind::Internal {
            tracing::error!(error = %e.message, "internal error");
            e.message = "internal error; see the coordinator's log".into();
        }
        (status_of(e.kind), Json(serde_json::json!({"error": e}))).into_response()
    }
}

fn parse_id(id: &str) -> Result<JobId, ApiError> {
    id.parse().map_err(|e: gf_schemas::IdError| {
        ApiError(RpcError::new(ErrorKind::Invalid, e.to_string()))
    })
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
    coordinator: String,
    version: &'static str,
    uptime_secs: u64,
    components: Components,
}

#[derive(Serialize)]
struct Components {
    nats: bool,
    jetstream: bool,
    buckets: bool,
    is_leader: bool,
    leader: Option<String>,
}

async fn health(State(st): State<AppState>) -> impl IntoResponse {
    let svc = &st.service;
    let nats = svc.client.connection_state() == async_nats::connection::State::Connected;
    // A fresh stream info round trip (the KV handle's status is cached).
    let mut jobs_stream = svc.store.jobs.stream.clone();
    let js = tokio::time::timeout(Duration::from_secs(2), jobs_stream.info()).await;
    let buckets = matches!(js, Ok(Ok(_)));
    let jetstream = buckets || matches!(js, Ok(Err(_)));
    let leader = st.leader.leader.lock().expect("status").clone();
    let ok = nats && buckets;
    let body = Health {
        status: if ok { "ok" } else { "degraded" },
        coordinator: svc.config.id.clone(),
        version: env!("CARGO_PKG_VERSION"),
        uptime_secs: st.started.elapsed().as_secs(),
        components: Components {
            nats,
            jetstream,
            buckets,
            is_leader: st.leader.is_leader.load(Ordering::SeqCst),
            leader,
        },
    };
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}

async fn submit(State(st): State<AppState>, body: Bytes) -> Result<impl IntoResponse, ApiError> {
    let reply = st.service.submit(&body).await?;
    let code = if reply.duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((code, Json(reply)))
}

async fn get_job(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<JobRecord>, ApiError> {
    let id = parse_id(&id)?;
    Ok(Json(st.service.get_job(&id).await?))
}

#[derive(Deserialize, Default)]
struct CancelBody {
    reason: Option<String>,
}

async fn cancel(
    State(st): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_id(&id)?;
    let reason = if body.is_empty() {
        None
    } else {
        serde_json::from_slice::<CancelBody>(&body)
            .map_err(|e| {
                ApiError(RpcError::new(
                    ErrorKind::Invalid,
                    format!("malformed cancel body: {e}"),
                ))
            })?
            .reason
    };
    let req = CancelRequest { job_id: id, reason };
    Ok(Json(st.service.cancel(&req.job_id, req.reason).await?))
}

#[derive(Deserialize)]
struct ListQuery {
    state: Option<String>,
    limit: Option<usize>,
}

async fn list_jobs(
    State(st): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<JobRecord>>, ApiError> {
    let state = match q.state.as_deref() {
        Some(s) => Some(
            s.parse::<JobState>()
                .map_err(|e| ApiError(RpcError::new(ErrorKind::Invalid, e)))?,
        ),
        None => None,
    };
    let limit = q.limit.unwrap_or(100).min(10_000);
    let jobs = crate::store::list_jobs(&st.service.store.jobs, state, limit)
        .await
        .map_err(|e| ApiError(e.into()))?;
    Ok(Json(jobs))
}
