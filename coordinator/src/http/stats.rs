//! `GET /api/stats`: the dashboard's counters in one call.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::Json;
use gf_schemas::WorkerState;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{workers::read_workers, ApiError, AppState};
use crate::stats::JobStats;

#[derive(Serialize, Deserialize, JsonSchema)]
pub struct WorkerStats {
    /// Heartbeating and not gone.
    pub online: u64,
    pub draining: u64,
    /// Slots of online workers.
    pub slots: u64,
    pub free_slots: u64,
}

#[derive(Serialize, Deserialize, JsonSchema)]
pub struct Stats {
    /// The coordinator answering (figures are its own view).
    pub coordinator: String,
    pub uptime_secs: u64,
    pub is_leader: bool,
    pub workers: WorkerStats,
    pub jobs: JobStats,
}

pub async fn get(State(st): State<AppState>) -> Result<Json<Stats>, ApiError> {
    let ws = read_workers(&st).await?;
    let online: Vec<_> = ws.iter().filter(|w| w.online).collect();
    let workers = WorkerStats {
        online: online.len() as u64,
        draining: online
            .iter()
            .filter(|w| w.record.state == WorkerState::Draining)
            .count() as u64,
        slots: online.iter().map(|w| u64::from(w.record.slots)).sum(),
        free_slots: online.iter().map(|w| u64::from(w.record.free_slots)).sum(),
    };
    Ok(Json(Stats {
        coordinator: st.service.config.id.clone(),
        uptime_secs: st.started.elapsed().as_secs(),
        is_leader: st.leader.is_leader.load(Ordering::SeqCst),
        workers,
        jobs: (*st.stats.current()).clone(),
    }))
}
