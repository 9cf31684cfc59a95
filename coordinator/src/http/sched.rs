//! Scheduling routes: requeue, reject, explain, DAG, children, recommendations,
//! budgets, schedules.
//! Thin: each decodes, calls the service, and encodes.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use gf_schemas::rpc::{BudgetUpdate, CancelReply, ChildRequest, Dag, SubmitReply};
use gf_schemas::{Budget, Explanation, JobSpec, Schedule};
use schemars::JsonSchema;
use serde::Deserialize;

use super::doc::{Created, JsonBody};
use super::{parse_job_id, ApiError, AppState};

/// Optional body of requeue and reject.
#[derive(Deserialize, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReasonBody {
    /// Recorded with the job.
    pub reason: Option<String>,
}

fn reason(body: &[u8]) -> Result<Option<String>, ApiError> {
    if body.is_empty() {
        return Ok(None);
    }
    Ok(serde_json::from_slice::<ReasonBody>(body)
        .map_err(|e| ApiError::invalid(format!("malformed body: {e}")))?
        .reason)
}

pub async fn requeue(
    State(st): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<CancelReply>, ApiError> {
    let id = parse_job_id(&id?.0)?;
    Ok(Json(st.service.requeue(&id).await?))
}

pub async fn reject(
    State(st): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    body: JsonBody<ReasonBody>,
) -> Result<Json<CancelReply>, ApiError> {
    let id = parse_job_id(&id?.0)?;
    let reason = reason(&body.0)?;
    Ok(Json(st.service.reject(&id, reason).await?))
}

pub async fn explain(
    State(st): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Explanation>, ApiError> {
    let id = parse_job_id(&id?.0)?;
    Ok(Json(st.service.explain(&id).await?))
}

pub async fn dag(
    State(st): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Dag>, ApiError> {
    let id = parse_job_id(&id?.0)?;
    Ok(Json(st.service.dag(&id).await?))
}

pub async fn child(
    State(st): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    body: JsonBody<JobSpec>,
) -> Result<Created<SubmitReply>, ApiError> {
    let parent = parse_job_id(&id?.0)?;
    let spec: JobSpec = serde_json::from_slice(&body.0)
        .map_err(|e| ApiError::invalid(format!("malformed job spec: {e}")))?;
    let reply: SubmitReply = st
        .service
        .submit_child(ChildRequest { parent, spec })
        .await?;
    Ok(Created(!reply.duplicate, reply))
}

pub async fn recommendations(
    State(st): State<AppState>,
) -> Result<Json<Vec<crate::recommend::Recommendation>>, ApiError> {
    let s = &st.service;
    let now = s.clock.now();
    Ok(Json(
        crate::recommend::gather(&s.store.js, s.config.worker_timeout, now).await?,
    ))
}

pub async fn budgets(State(st): State<AppState>) -> Result<Json<Vec<Budget>>, ApiError> {
    let mut all = st.service.budget_list().await?;
    all.sort_by(|a, b| a.product.cmp(&b.product));
    Ok(Json(all))
}

pub async fn budget(
    State(st): State<AppState>,
    product: Result<Path<String>, PathRejection>,
) -> Result<Json<Budget>, ApiError> {
    let product = product?.0;
    match st.service.budget(&product).await? {
        Some(b) => Ok(Json(b)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no budget for product {product}"),
        )),
    }
}

/// Body of `PUT /api/budgets/{product}`: changes; absent fields stay.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetBody {
    /// Cost units per period; negative removes the limit.
    pub limit_cost: Option<f64>,
    /// Tokens per period; 0 removes the limit.
    pub limit_tokens: Option<u64>,
    /// Period in seconds; 0 never resets.
    pub period_secs: Option<u64>,
    pub paused: Option<bool>,
    /// Worker-hours per period; negative removes the limit.
    pub limit_worker_hours: Option<f64>,
}

pub async fn put_budget(
    State(st): State<AppState>,
    product: Result<Path<String>, PathRejection>,
    body: JsonBody<BudgetBody>,
) -> Result<Json<Budget>, ApiError> {
    let product = product?.0;
    let b: BudgetBody = serde_json::from_slice(&body.0)
        .map_err(|e| ApiError::invalid(format!("malformed budget: {e}")))?;
    let update = BudgetUpdate {
        product,
        limit_cost: b.limit_cost,
        limit_tokens: b.limit_tokens,
        period_secs: b.period_secs,
        paused: b.paused,
        limit_worker_hours: b.limit_worker_hours,
    };
    Ok(Json(st.service.budget_set(update).await?))
}

pub async fn schedules(State(st): State<AppState>) -> Result<Json<Vec<Schedule>>, ApiError> {
    Ok(Json(st.service.schedule_list().await?))
}

pub async fn add_schedule(
    State(st): State<AppState>,
    body: JsonBody<Schedule>,
) -> Result<Created<Schedule>, ApiError> {
    let s: Schedule = serde_json::from_slice(&body.0)
        .map_err(|e| ApiError::invalid(format!("malformed schedule: {e}")))?;
    Ok(Created(true, st.service.schedule_add(s).await?))
}

pub async fn remove_schedule(
    State(st): State<AppState>,
    name: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    st.service.schedule_remove(&name?.0).await?;
    Ok(StatusCode::NO_CONTENT)
}
