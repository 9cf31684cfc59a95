//! Workers: list, and an operator's drain / undrain.

use std::time::Duration;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use gf_schemas::rpc::{ControlAck, ControlMessage};
use gf_schemas::{names, Reply, Timestamp, WorkerRecord, WorkerState};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{parse_worker_id, ApiError, AppState};

#[derive(Deserialize, JsonSchema)]
pub struct ListQuery {
    /// Include workers that are gone.
    pub all: Option<bool>,
}

/// A worker as recorded, with what the coordinator concludes from its heartbeat.
#[derive(Serialize, Deserialize, JsonSchema)]
pub struct WorkerView {
    #[serde(flatten)]
    pub record: WorkerRecord,
    /// Heartbeating within the worker timeout and not gone.
    pub online: bool,
    /// Milliseconds since the last heartbeat, by the coordinator's server clock.
    pub heartbeat_age_ms: u64,
}

pub(crate) async fn read_workers(st: &AppState) -> Result<Vec<WorkerView>, ApiError> {
    let now = st.service.clock.now();
    let timeout = st.service.config.worker_timeout;
    let mut ws: Vec<WorkerView> = crate::store::read_all(&st.service.store.workers)
        .await?
        .into_iter()
        .filter_map(|(_, v)| serde_json::from_slice::<WorkerRecord>(&v).ok())
        .map(|record| {
            let age = now.since(record.last_heartbeat);
            WorkerView {
                online: record.state != WorkerState::Gone && age < timeout,
                heartbeat_age_ms: age.as_millis() as u64,
                record,
            }
        })
        .collect();
    ws.sort_by(|a, b| a.record.id.cmp(&b.record.id));
    Ok(ws)
}

pub async fn list(
    State(st): State<AppState>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Vec<WorkerView>>, ApiError> {
    let Query(q) = q?;
    let all = q.all.unwrap_or(false);
    let ws = read_workers(&st)
        .await?
        .into_iter()
        .filter(|w| all || w.record.state != WorkerState::Gone)
        .collect();
    Ok(Json(ws))
}

/// The worker's answer to a drain or undrain.
#[derive(Serialize, Deserialize, JsonSchema)]
pub struct DrainReply {
    pub worker_id: String,
    /// `draining` or `active`, as the worker now reports.
    pub state: WorkerState,
    pub at: Timestamp,
}

pub async fn drain(
    st: State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<DrainReply>, ApiError> {
    set_drain(st, id, true).await
}

pub async fn undrain(
    st: State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<DrainReply>, ApiError> {
    set_drain(st, id, false).await
}

/// Asks the worker itself (request/reply on its control subject), so a success means
/// the worker has applied it; the worker then heartbeats its new state at once.
async fn set_drain(
    State(st): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    drain: bool,
) -> Result<Json<DrainReply>, ApiError> {
    let id = parse_worker_id(&id?.0)?;
    let rec = st
        .service
        .store
        .workers
        .get(id.as_str())
        .await
        .map_err(ApiError::unavailable)?
        .and_then(|v| serde_json::from_slice::<WorkerRecord>(&v).ok())
        .ok_or_else(|| ApiError::not_found(format!("no worker {id}")))?;
    if rec.state == WorkerState::Gone {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "wrong_state",
            format!("worker {id} is gone"),
        ));
    }
    let msg = ControlMessage::Drain { drain };
    let req = st
        .service
        .client
        .request(names::worker_control(&id), crate::store::encode(&msg));
    let unreachable = || {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("worker {id} did not answer; it may be stopping or unreachable"),
        )
    };
    let reply = match tokio::time::timeout(Duration::from_secs(3), req).await {
        Ok(Ok(m)) => m,
        Ok(Err(_)) | Err(_) => return Err(unreachable()),
    };
    let ack: Reply<ControlAck> =
        serde_json::from_slice(&reply.payload).map_err(|_| unreachable())?;
    let ack = ack.into_result()?;
    // The `worker_draining` event comes from the heartbeat that reports the change.
    Ok(Json(DrainReply {
        worker_id: id.to_string(),
        state: ack.state,
        at: st.service.clock.now(),
    }))
}
