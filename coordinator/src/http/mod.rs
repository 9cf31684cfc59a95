//! HTTP: the operator API under `/api` (described by `/api/openapi.json`), live streams
//! over SSE, the dashboard at `/`, and `/health`.
//!
//! Errors are always `{"error": {"kind", "message"}}` with a status derived from the
//! kind — also for unknown routes, wrong methods and malformed input rejected by an
//! extractor; internal details are logged, not sent.
//!
//! [`router`] is a plain function of [`AppState`], so tests drive it with
//! `tower::ServiceExt::oneshot`.

mod artifacts;
mod auth;
mod dashboard;
pub mod doc;
mod events;
mod factories;
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
use axum::routing::get;
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
    Router::new()
        .route("/metrics", get(render_metrics))
        .merge(dashboard::routes())
        .merge(api(state.clone()))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Every route of the API (and `/health`), each with its summary: the OpenAPI document
/// is generated from these registrations (see [`openapi`]).
fn api(state: AppState) -> Router<AppState> {
    use aide::axum::routing::{delete_with, get_with, post_with};
    use aide::axum::ApiRouter;
    let mut doc = aide::openapi::OpenApi::default();
    let router = ApiRouter::new()
        .api_route("/health", get_with(health, |o| o.summary("Status, uptime and readiness of NATS, JetStream, buckets and the scheduler leader")))
        .api_route("/api/openapi.json", get_with(openapi::serve, |o| o.summary("This document")))
        .api_route("/api/whoami", get_with(auth::whoami, |o| o.summary("The caller's token name and role")))
        .api_route(
            "/api/jobs",
            post_with(jobs::submit, |o| o.summary("Submit a job (body: a job spec; `profile` names a template); 201, or 200 for a repeat of an idempotency key"))
                .get_with(jobs::list, |o| o.summary("List jobs, newest first, filtered and paged")),
        )
        .api_route("/api/jobs/{id}", get_with(jobs::get, |o| o.summary("One job: spec, state, lease, epoch, attempts, provenance of a profiled job")))
        .api_route("/api/jobs/{id}/cancel", post_with(jobs::cancel, |o| o.summary("Cancel a job; a running process is killed")))
        .api_route("/api/jobs/{id}/logs/stream", get_with(jobs::logs_stream, |o| o.summary("A job's log over SSE: replays from the start (or after Last-Event-ID), then follows; id = GF_LOGS stream sequence; `end` event when the job is over")))
        .api_route("/api/workers", get_with(workers::list, |o| o.summary("List workers with capabilities, slots and heartbeat")))
        .api_route("/api/workers/{id}/drain", post_with(workers::drain, |o| o.summary("Drain a worker: it finishes running jobs and claims nothing new")))
        .api_route("/api/workers/{id}/undrain", post_with(workers::undrain, |o| o.summary("Undrain a worker: it claims jobs again")))
        .api_route("/api/events", get_with(events::recent, |o| o.summary("Recent events from GF_EVENTS, newest first")))
        .api_route("/api/events/stream", get_with(events::stream, |o| o.summary("Every event as it is published, over SSE; id = GF_EVENTS stream sequence")))
        .api_route("/api/stats", get_with(stats::get, |o| o.summary("Counters, throughput and latency series, model usage")))
        .api_route("/api/jobs/{id}/artifacts", get_with(artifacts::list, |o| o.summary("The files the job's attempts left (name, attempt, size, SHA-256), its checkpoint, and uploads that were refused")))
        .api_route("/api/jobs/{id}/artifacts/{name}", get_with(artifacts::get, |o| o.summary("One artifact's bytes (a name with directories URL-encoded; `attempt` picks an attempt, default the latest)")))
        .api_route("/api/jobs/{id}/checkpoint", get_with(artifacts::checkpoint, |o| o.summary("The job's last checkpoint, a tar archive of its GF_CHECKPOINT_DIR")))
        .api_route("/api/jobs/{id}/requeue", post_with(sched::requeue, |o| o.summary("Send a dead, cancelled or rejected job round again (attempts reset, new epoch)")))
        .api_route("/api/jobs/{id}/reject", post_with(sched::reject, |o| o.summary("Refuse a pending or blocked job: it ends rejected with the reason")))
        .api_route("/api/jobs/{id}/explain", get_with(sched::explain, |o| o.summary("Why the job is where it is: score terms, each live worker's fit, what it waits for")))
        .api_route("/api/jobs/{id}/dag", get_with(sched::dag, |o| o.summary("The job with its dependencies and children, transitively")))
        .api_route("/api/jobs/{id}/children", post_with(sched::child, |o| o.summary("Submit a child job under this one; the parent's completion waits for it")))
        .api_route("/api/recommendations", get_with(sched::recommendations, |o| o.summary("What needs an operator: flaky workers per kind, kinds no worker runs well, capabilities unplaceable jobs wait for, budgets burning out before their period ends")))
        .api_route("/api/budgets", get_with(sched::budgets, |o| o.summary("Budgets of every product: limits, spend, history")))
        .api_route(
            "/api/budgets/{product}",
            get_with(sched::budget, |o| o.summary("One product's budget"))
                .put_with(sched::put_budget, |o| o.summary("Change a product's limits, period or pause")),
        )
        .api_route(
            "/api/schedules",
            get_with(sched::schedules, |o| o.summary("Cron schedules"))
                .post_with(sched::add_schedule, |o| o.summary("Add a cron schedule")),
        )
        .api_route("/api/schedules/{name}", delete_with(sched::remove_schedule, |o| o.summary("Remove a cron schedule")))
        .api_route("/api/profiles", get_with(workflow::profiles, |o| o.summary("Job profiles (named templates) from the coordinators' configuration")))
        .api_route("/api/manifests", post_with(workflow::submit_manifest, |o| o.summary("Submit a manifest: named jobs with dependencies by name, as one unit; 201 if it created jobs, 200 if all existed")))
        .api_route("/api/manifests/{name}", get_with(workflow::manifest, |o| o.summary("A manifest's jobs (dependencies first) and their states")))
        .api_route("/api/bridge/deliveries", get_with(workflow::deliveries, |o| o.summary("Echoes of bridged jobs' state changes to their trackers, with attempts and last error")))
        .api_route("/api/bridge/deliveries/{id}/redeliver", post_with(workflow::redeliver, |o| o.summary("Send a delivery again (same id), at the end of its source's queue")))
        .api_route("/api/factories", get_with(factories::list, |o| o.summary("Enrolled factories (secured NATS; operators only): pool, approved capabilities, state, last seen, connected now")))
        .api_route("/api/factories/{id}/revoke", post_with(factories::revoke, |o| o.summary("Revoke a factory: its connection is closed at once, every reconnect refused; its running jobs run again elsewhere")))
        .api_route(
            "/api/factory-tokens",
            get_with(factories::tokens, |o| o.summary("Enrollment tokens (operators only): uses, expiry, state, factories enrolled, the latest refusal and why"))
                .post_with(factories::create_token, |o| o.summary("Make an enrollment token; 201 with the token, shown this once (only its hash is stored)")),
        )
        .api_route("/api/factory-tokens/{id}/revoke", post_with(factories::revoke_token, |o| o.summary("Refuse every further enrollment with a token (factories it enrolled stay)")))
        .api_route("/api/bridge/{source}", post_with(workflow::webhook, |o| o.summary("A tracker's webhook (public: authenticated by its signature, GitHub X-Hub-Signature-256 or Standard Webhooks); 201 if it created a job")))
        .route_layer(axum::middleware::from_fn_with_state(state, auth::require))
        .finish_api(&mut doc);
    router.layer(axum::Extension(Arc::new(openapi::finish(doc))))
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

/// `/health`: 200 when NATS and the buckets answer, 503 (same body) when not.
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
    // Scraped, not pushed: the store's replica health is read when someone asks.
    let mut jobs_stream = st.service.store.jobs.stream.clone();
    crate::metrics::store_replicas(&mut jobs_stream).await;
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        st.metrics.render(),
    )
}

async fn health(State(st): State<AppState>) -> (StatusCode, Json<Health>) {
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
