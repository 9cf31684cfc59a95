//! HTTP: the operator API under `/api` (described by `/api/openapi.json`), live streams
//! over SSE, the dashboard at `/`, and `/health`.
//!
//! Errors are always `{"error": {"kind", "message"}}` with a status derived from the
//! kind — also for unknown routes, wrong methods and malformed input rejected by an
//! extractor; internal details are logged, not sent.
//!
//! [`router`] is a plain function of [`AppState`], so tests drive it with
//! `tower::ServiceExt::oneshot`.

mod auth;
mod dashboard;
mod events;
mod jobs;
pub mod openapi;
mod sched;
mod stats;
mod workers;
mod workflow;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use gf_schemas::{ErrorKind, JobId, RpcError, WorkerId};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub use auth::Auth;

use crate::scheduler::LeaderStatus;
use crate::service::Service;
use crate::stats::StatsHandle;

#[derive(Clone)]
pub struct AppState {
    pub service: Arc<Service>,
    pub leader: Arc<LeaderStatus>,
    pub started: Instant,
    pub stats: StatsHandle,
    /// Fires at shutdown: live streams end on it, or the graceful HTTP drain would
    /// wait for them forever.
    pub shutdown: CancellationToken,
    pub auth: Arc<Auth>,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
}

pub fn router(state: AppState) -> Router {
    let limit = state.service.config.max_submit_bytes * 2;
    let api = Router::new()
        .route("/api/openapi.json", get(openapi::serve))
        .route("/api/whoami", get(auth::whoami))
        .route("/api/jobs", post(jobs::submit).get(jobs::list))
        .route("/api/jobs/{id}", get(jobs::get))
        .route("/api/jobs/{id}/cancel", post(jobs::cancel))
        .route("/api/jobs/{id}/logs/stream", get(jobs::logs_stream))
        .route("/api/workers", get(workers::list))
        .route("/api/workers/{id}/drain", post(workers::drain))
        .route("/api/workers/{id}/undrain", post(workers::undrain))
        .route("/api/events", get(events::recent))
        .route("/api/events/stream", get(events::stream))
        .route("/api/stats", get(stats::get))
        .route("/api/jobs/{id}/requeue", post(sched::requeue))
        .route("/api/jobs/{id}/reject", post(sched::reject))
        .route("/api/jobs/{id}/explain", get(sched::explain))
        .route("/api/jobs/{id}/dag", get(sched::dag))
        .route("/api/jobs/{id}/children", post(sched::child))
        .route("/api/budgets", get(sched::budgets))
        .route(
            "/api/budgets/{product}",
            get(sched::budget).put(sched::put_budget),
        )
        .route(
            "/api/schedules",
            get(sched::schedules).post(sched::add_schedule),
        )
        .route(
            "/api/schedules/{name}",
            axum::routing::delete(sched::remove_schedule),
        )
        .route("/api/profiles", get(workflow::profiles))
        .route("/api/manifests", post(workflow::submit_manifest))
        .route("/api/manifests/{name}", get(workflow::manifest))
        .route("/api/bridge/deliveries", get(workflow::deliveries))
        .route(
            "/api/bridge/deliveries/{id}/redeliver",
            post(workflow::redeliver),
        )
        .route("/api/bridge/{source}", post(workflow::webhook))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require,
        ));
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(render_metrics))
        .merge(dashboard::routes())
        .merge(api)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// An API failure: a status, a stable machine-readable `kind`, and a message for people.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
}

/// The body of every error response.
#[derive(Serialize, Deserialize, JsonSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, Deserialize, JsonSchema)]
pub struct ErrorDetail {
    /// Stable: clients branch on it. One of the RPC error kinds, or `unauthorized`,
    /// `forbidden`, `method_not_allowed`.
    pub kind: String,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    /// A failure of ours; the cause goes to the log, not to the client.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the coordinator's log",
        )
    }
    /// NATS or JetStream did not answer: worth retrying, and says nothing internal.
    pub fn unavailable(cause: impl std::fmt::Display) -> Self {
        tracing::warn!(error = %cause, "store unavailable");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the job store is not reachable right now; retry later",
        )
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
        ErrorKind::Forbidden => StatusCode::FORBIDDEN,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<RpcError> for ApiError {
    fn from(e: RpcError) -> Self {
        match e.kind {
            ErrorKind::Internal => ApiError::internal(e.message),
            // Transport messages name NATS internals; say only that it is unavailable.
            ErrorKind::Unavailable => ApiError::unavailable(e.message),
            k => ApiError::new(status_of(k), k.as_str(), e.message),
        }
    }
}

impl From<crate::StoreError> for ApiError {
    fn from(e: crate::StoreError) -> Self {
        RpcError::from(e).into()
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        ApiError::invalid(e.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> Self {
        ApiError::invalid(e.body_text())
    }
}

impl From<BytesRejection> for ApiError {
    fn from(e: BytesRejection) -> Self {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                "request body too large",
            )
        } else {
            ApiError::invalid(e.body_text())
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                kind: self.kind.into(),
                message: self.message,
            },
        };
        let mut resp = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    )
}

pub(crate) fn parse_job_id(id: &str) -> Result<JobId, ApiError> {
    id.parse()
        .map_err(|e: gf_schemas::IdError| ApiError::invalid(e.to_string()))
}

pub(crate) fn parse_worker_id(id: &str) -> Result<WorkerId, ApiError> {
    WorkerId::new(id).map_err(|e| ApiError::invalid(e.to_string()))
}

/// The stream sequence a reconnecting SSE client last saw (`Last-Event-ID`).
/// An ordered consumer over `stream` (only `filter`, if not empty) for an SSE stream:
/// right after the sequence a reconnecting client sent as `Last-Event-ID`, or from
/// `fresh` on a first connection. The event id is the stream sequence, so a resume is
/// exact on any coordinator.
pub(crate) async fn resume_after(
    st: &AppState,
    stream: &str,
    filter: String,
    headers: &HeaderMap,
    fresh: async_nats::jetstream::consumer::DeliverPolicy,
) -> Result<async_nats::jetstream::consumer::pull::Ordered, ApiError> {
    use async_nats::jetstream::consumer::{pull, DeliverPolicy};
    let deliver_policy = match last_event_id(headers)? {
        Some(seq) => DeliverPolicy::ByStartSequence {
            start_sequence: seq + 1,
        },
        None => fresh,
    };
    st.service
        .store
        .js
        .get_stream(stream)
        .await
        .map_err(ApiError::unavailable)?
        .create_consumer(pull::OrderedConfig {
            filter_subject: filter,
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(ApiError::unavailable)?
        .messages()
        .await
        .map_err(ApiError::unavailable)
}

pub(crate) fn last_event_id(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    match headers.get("last-event-id") {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .map(Some)
            .ok_or_else(|| ApiError::invalid("Last-Event-ID must be a stream sequence number")),
    }
}

#[derive(Serialize, JsonSchema)]
pub struct Health {
    status: &'static str,
    coordinator: String,
    version: &'static str,
    uptime_secs: u64,
    components: Components,
}

#[derive(Serialize, JsonSchema)]
pub struct Components {
    nats: bool,
    jetstream: bool,
    buckets: bool,
    is_leader: bool,
    leader: Option<String>,
}

/// Prometheus text exposition of this process' metrics (public, like `/health`).
async fn render_metrics(State(st): State<AppState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        st.metrics.render(),
    )
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
