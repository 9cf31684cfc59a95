//! Removing artifacts with their jobs: whatever removes a job from `gf_jobs` (its
//! retention, an operator), the leader's periodic sweep finds index entries whose job
//! is gone and removes what they hold. Reading the index is a background task's work,
//! never a request's.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::TryStreamExt;
use gf_schemas::JobId;
use tokio_util::sync::CancellationToken;

use crate::scheduler::LeaderStatus;
use crate::service::Service;

/// Sweeps every `sweep_interval` while this coordinator leads, until `shutdown`.
pub async fn run(service: Arc<Service>, leader: Arc<LeaderStatus>, shutdown: CancellationToken) {
    let Some(store) = service.artifacts.get() else {
        return;
    };
    let mut tick = tokio::time::interval(store.config.sweep_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !leader.is_leader.load(Ordering::SeqCst) {
            continue;
        }
        match sweep_once(&service).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(jobs = n, "removed the artifacts of jobs that are gone"),
            Err(e) => tracing::warn!(error = %e, "artifact sweep failed; next round retries"),
        }
    }
}

/// One pass: removes the artifacts of every job no longer in `gf_jobs`. Returns how
/// many jobs' artifacts it removed.
pub async fn sweep_once(service: &Service) -> anyhow::Result<usize> {
    let Some(store) = service.artifacts.get() else {
        return Ok(0);
    };
    let keys: Vec<String> = store.index.keys().await?.try_collect().await?;
    let mut removed = 0;
    for key in keys {
        let Ok(job) = key.parse::<JobId>() else {
            continue;
        };
        // The leader's copy: a lagging replica may not have a job created moments ago.
        if service.store.find_job(&job).await?.is_none() {
            store.remove_job(&job).await?;
            removed += 1;
        }
    }
    Ok(removed)
}
