//! Metrics for every Gigafactory process.
//!
//! Every metric is declared once in [`METRICS`] with its kind and help text; code
//! records through the `metrics` facade using the constants in [`names`]. Names follow
//! Prometheus conventions: `gf_` prefix, base units (seconds), `_total` on counters.
//! Labels are bounded sets only (queue, product, route, outcome, operation, reason,
//! provider, model) — never a job or worker id.

pub mod trace;

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Metric names, one constant each.
pub mod names {
    pub const BUILD_INFO: &str = "gf_build_info";
    pub const JOBS_SUBMITTED: &str = "gf_jobs_submitted_total";
    pub const JOBS_FINISHED: &str = "gf_jobs_finished_total";
    pub const ATTEMPTS_FINISHED: &str = "gf_job_attempts_finished_total";
    pub const JOB_RETRIES: &str = "gf_job_retries_total";
    pub const DEAD_LETTERS: &str = "gf_dead_letters_total";
    pub const JOBS: &str = "gf_jobs";
    pub const QUEUE_DEPTH: &str = "gf_queue_depth";
    pub const ROUTE_QUEUE_DEPTH: &str = "gf_route_queue_depth";
    pub const QUEUE_WAIT: &str = "gf_job_queue_wait_seconds";
    pub const RUN_TIME: &str = "gf_job_run_seconds";
    pub const CLAIMS: &str = "gf_claims_total";
    pub const LEASES_EXPIRED: &str = "gf_leases_expired_total";
    pub const LEASES_REVOKED: &str = "gf_leases_revoked_total";
    pub const FENCED_WRITES: &str = "gf_fenced_writes_total";
    pub const DISPATCHES: &str = "gf_dispatches_total";
    pub const UNPLACEABLE: &str = "gf_jobs_unplaceable_total";
    pub const WORKERS: &str = "gf_workers";
    pub const WORKER_SLOTS: &str = "gf_worker_slots";
    pub const SCHEDULER_LEADER: &str = "gf_scheduler_leader";
    pub const WORKERS_LOST: &str = "gf_workers_lost_total";
    pub const STORE_REPLICAS: &str = "gf_store_replicas";
    pub const LEADER_CHANGES: &str = "gf_scheduler_leader_changes_total";
    pub const RPC_DURATION: &str = "gf_rpc_request_duration_seconds";
    pub const RPC_REQUESTS: &str = "gf_rpc_requests_total";
    pub const RPC_FORBIDDEN: &str = "gf_rpc_forbidden_total";
    pub const MODEL_TOKENS: &str = "gf_model_tokens_total";
    pub const MODEL_CALLS: &str = "gf_model_calls_total";
    pub const MODEL_COST: &str = "gf_model_cost_microunits_total";
    pub const WORKER_RUNNING: &str = "gf_worker_running_jobs";
    pub const WORKER_CAPACITY: &str = "gf_worker_capacity_slots";
    pub const WORKER_RUNS: &str = "gf_worker_runs_total";
    pub const WORKER_RENEWALS: &str = "gf_worker_lease_renewals_total";
    pub const WORKER_RPC_HEDGES: &str = "gf_worker_rpc_hedges_total";
    pub const WORKER_LOG_LINES: &str = "gf_worker_log_lines_total";
    pub const BUDGET_SPENT: &str = "gf_budget_spent";
    pub const BUDGET_LIMIT: &str = "gf_budget_limit";
    pub const BRIDGE_WEBHOOKS: &str = "gf_bridge_webhooks_total";
    pub const BRIDGE_DELIVERY_ATTEMPTS: &str = "gf_bridge_delivery_attempts_total";
    pub const BRIDGE_DELIVERIES_FAILED: &str = "gf_bridge_deliveries_failed_total";
    pub const ARCHIVED: &str = "gf_archived_jobs_total";
    pub const ARCHIVE_LAG: &str = "gf_archive_lag_seconds";
    pub const ARTIFACT_BYTES: &str = "gf_artifact_bytes_total";
    pub const WATCH_RESUMES: &str = "gf_watch_resumes_total";
    pub const WATCH_REPLAYS: &str = "gf_watch_replays_total";
    pub const WATCH_REPLAY_TIMEOUTS: &str = "gf_watch_replay_timeouts_total";
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric the binaries export: (name, kind, labels, help).
pub const METRICS: &[(&str, Kind, &[&str], &str)] = {
    use names::*;
    use Kind::*;
    &[
        (
            BUILD_INFO,
            Gauge,
            &["version", "component"],
            "Always 1; labels carry the version.",
        ),
        (
            JOBS_SUBMITTED,
            Counter,
            &["queue", "product"],
            "Jobs accepted (duplicates by idempotency key not counted).",
        ),
        (
            JOBS_FINISHED,
            Counter,
            &["queue", "state"],
            "Jobs that reached a terminal state (succeeded, dead, cancelled).",
        ),
        (
            ATTEMPTS_FINISHED,
            Counter,
            &["queue", "outcome"],
            "Attempts reported by workers, by outcome (succeeded, failed, timed_out).",
        ),
        (
            JOB_RETRIES,
            Counter,
            &["queue"],
            "Failed attempts scheduled for a retry.",
        ),
        (
            DEAD_LETTERS,
            Counter,
            &["queue"],
            "Jobs that ran out of attempts.",
        ),
        (
            JOBS,
            Gauge,
            &["state"],
            "Non-terminal jobs by state, as the scheduler leader sees them.",
        ),
        (
            QUEUE_DEPTH,
            Gauge,
            &["queue"],
            "Jobs waiting to be dispatched (pending or blocked) per queue.",
        ),
        (
            ROUTE_QUEUE_DEPTH,
            Gauge,
            &["route"],
            "Jobs waiting per dispatch route (queue/os/arch): demand an autoscaler can read.",
        ),
        (
            QUEUE_WAIT,
            Histogram,
            &["queue"],
            "Seconds from submission (or retry time) to claim.",
        ),
        (
            RUN_TIME,
            Histogram,
            &["queue", "outcome"],
            "Seconds from claim to the reported end of an attempt.",
        ),
        (
            CLAIMS,
            Counter,
            &["result"],
            "Starts by result: `won` counts every confirmed start (a claim, or the first renewal or completion of a lease granted at dispatch); the others count refused claims (conflict, stale_epoch, not_eligible, error).",
        ),
        (
            LEASES_EXPIRED,
            Counter,
            &[],
            "Leases the reaper found expired.",
        ),
        (
            LEASES_REVOKED,
            Counter,
            &["reason"],
            "Leases taken away, by reason (lease_expired, cancelled, superseded).",
        ),
        (
            FENCED_WRITES,
            Counter,
            &["operation", "kind"],
            "Worker writes refused by fencing (stale_epoch, revoked).",
        ),
        (
            DISPATCHES,
            Counter,
            &["queue", "by"],
            "Dispatch notices published, by what decided them (pass: the leader's plan pass; submission: the submission itself, when a worker had room).",
        ),
        (
            UNPLACEABLE,
            Counter,
            &["queue"],
            "Jobs found that no live worker can run.",
        ),
        (
            WORKERS,
            Gauge,
            &["state"],
            "Workers by state (starting, active, draining, gone).",
        ),
        (
            WORKER_SLOTS,
            Gauge,
            &["state"],
            "Slots of live workers: total and free.",
        ),
        (
            SCHEDULER_LEADER,
            Gauge,
            &[],
            "1 while this coordinator leads the scheduler.",
        ),
        (
            WORKERS_LOST,
            Counter,
            &[],
            "Workers the scheduler leader marked gone (no heartbeat within worker_timeout).",
        ),
        (
            STORE_REPLICAS,
            Gauge,
            &["state"],
            "Replicas of the jobs bucket's stream as its NATS leader reports them at each scrape: current (leader included), lagging (up but behind the leader) or unavailable (offline, or not heard from for 10 s: a NATS node down or cut off).",
        ),
        (
            LEADER_CHANGES,
            Counter,
            &[],
            "Times this coordinator became scheduler leader.",
        ),
        (
            RPC_DURATION,
            Histogram,
            &["operation"],
            "Seconds to serve an RPC request.",
        ),
        (
            RPC_REQUESTS,
            Counter,
            &["operation", "result"],
            "RPC requests by operation and result (ok or error kind).",
        ),
        (
            RPC_FORBIDDEN,
            Counter,
            &["operation", "reason"],
            "Factory requests refused as forbidden, by operation and reason (identity_mismatch: the payload named another worker than the subject's factory).",
        ),
        (
            MODEL_TOKENS,
            Counter,
            &["provider", "model", "direction"],
            "Model tokens reported by jobs (direction: input, output).",
        ),
        (
            MODEL_CALLS,
            Counter,
            &["provider", "model"],
            "Model calls reported by jobs.",
        ),
        (
            MODEL_COST,
            Counter,
            &["provider", "model"],
            "Model cost reported by jobs, in millionths of a budget unit (counters are integers).",
        ),
        (WORKER_RUNNING, Gauge, &[], "Jobs this worker runs now."),
        (WORKER_CAPACITY, Gauge, &[], "Slots this worker has."),
        (
            WORKER_RUNS,
            Counter,
            &["result"],
            "Runs on this worker by result (succeeded, failed, timed_out, revoked, released).",
        ),
        (
            WORKER_RENEWALS,
            Counter,
            &["result"],
            "Lease renewals by result (ok, lost, error).",
        ),
        (
            WORKER_RPC_HEDGES,
            Counter,
            &[],
            "Copies of a completion or renewal sent again because no coordinator answered the first in time (a stalled coordinator).",
        ),
        (
            WORKER_LOG_LINES,
            Counter,
            &[],
            "Log lines published by this worker's jobs.",
        ),
        (
            BUDGET_SPENT,
            Gauge,
            &["product"],
            "Budget spent in the current period, in cost units.",
        ),
        (
            BUDGET_LIMIT,
            Gauge,
            &["product"],
            "Budget limit for the current period, in cost units.",
        ),
        (
            BRIDGE_WEBHOOKS,
            Counter,
            &["source", "outcome"],
            "Tracker webhooks received by outcome (created, existing, duplicate_delivery, ignored, or why refused).",
        ),
        (
            BRIDGE_DELIVERY_ATTEMPTS,
            Counter,
            &["source", "result"],
            "Attempts to echo a bridged job's state change to its tracker (ok, error).",
        ),
        (
            BRIDGE_DELIVERIES_FAILED,
            Counter,
            &["source"],
            "Echoes given up after their last attempt (an operator can redeliver them).",
        ),
        (
            ARCHIVED,
            Counter,
            &["state"],
            "Finished job records this coordinator copied into the archive (GF_ARCHIVE).",
        ),
        (
            ARCHIVE_LAG,
            Gauge,
            &[],
            "Age of the oldest job write the archiver has not handled yet (0 when caught up); a finished job is lost from history if this exceeds its grace period.",
        ),
        (
            ARTIFACT_BYTES,
            Counter,
            &["kind"],
            "Bytes of committed uploads stored in the gf_artifacts object store, by kind (artifact, checkpoint).",
        ),
        (
            WATCH_RESUMES,
            Counter,
            &["watch"],
            "Bucket watches re-opened from the last revision their view applied (only the changes since are delivered), by watch (leader_jobs, leader_workers, leader_budgets, stats_jobs).",
        ),
        (
            WATCH_REPLAYS,
            Counter,
            &["watch"],
            "Bucket watches opened with a replay of every key (the first one, and when a resume could miss a removal), by watch.",
        ),
        (
            WATCH_REPLAY_TIMEOUTS,
            Counter,
            &["watch"],
            "Watches that did not deliver what the bucket held within coordinator.watch_replay_timeout and were re-opened, by watch.",
        ),
    ]
};

/// Histogram buckets in seconds: from queue hops of a millisecond to six-hour jobs.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 900.0, 3600.0, 21600.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Whether [`install`] ran in this process: from then on the global recorder stays
/// the same, so a handle taken from it may be kept.
pub fn installed() -> bool {
    HANDLE.get().is_some()
}

/// Installs the process-wide recorder once and returns the handle that renders
/// `/metrics`. Safe to call from every part started in one process.
pub fn install(component: &'static str) -> PrometheusHandle {
    let handle = HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .expect("valid buckets");
            match builder.install_recorder() {
                Ok(h) => {
                    for (name, kind, _, help) in METRICS {
                        match kind {
                            Kind::Counter => metrics::describe_counter!(*name, *help),
                            Kind::Gauge => metrics::describe_gauge!(*name, *help),
                            Kind::Histogram => {
                                metrics::describe_histogram!(*name, metrics::Unit::Seconds, *help)
                            }
                        }
                    }
                    h
                }
                // Another recorder is installed (e.g. by an embedding program): render
                // an empty registry rather than fail.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone();
    metrics::gauge!(names::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "component" => component).set(1.0);
    handle
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names follow Prometheus conventions and are declared once.
    #[test]
    fn names_follow_conventions() {
        let mut seen = std::collections::BTreeSet::new();
        for (name, kind, labels, help) in METRICS {
            assert!(name.starts_with("gf_"), "{name}");
            assert!(seen.insert(*name), "{name} declared twice");
            assert!(!help.is_empty());
            assert_eq!(
                *kind == Kind::Counter,
                name.ends_with("_total"),
                "{name}: counters and only counters end in _total"
            );
            if *kind == Kind::Histogram {
                assert!(
                    name.ends_with("_seconds"),
                    "{name}: histograms are in seconds"
                );
            }
            for l in *labels {
                assert!(
                    !["job", "job_id", "worker", "worker_id"].contains(l),
                    "{name} has unbounded label {l}"
                );
            }
        }
    }
}
