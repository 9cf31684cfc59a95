//! Subject, bucket and stream names. No subject string is built anywhere else.
//!
//! Dispatch routing: the configured routing dimensions (default `queue`, `os`, `arch`)
//! become subject tokens, `gf.dispatch.<queue>.<os>.<arch>`, with [`ANY`] (`_`) where the
//! job accepts any value. A worker listens on every combination of "its own value" and
//! `_` per dimension, so a notice reaches exactly the workers whose dimension values fit.

use std::collections::BTreeMap;

use crate::{JobId, JobSpec, WorkerId};

/// Token meaning "any value" in a dispatch subject.
pub const ANY: &str = "_";

pub const BUCKET_JOBS: &str = "gf_jobs";
pub const BUCKET_WORKERS: &str = "gf_workers";
pub const BUCKET_IDEM: &str = "gf_idem";
pub const BUCKET_LEADER: &str = "gf_leader";
pub const BUCKET_BUDGETS: &str = "gf_budgets";
pub const BUCKET_SCHEDULES: &str = "gf_schedules";
pub const STREAM_USAGE: &str = "GF_USAGE";
pub const USAGE_ALL: &str = "gf.usage.>";
pub const STREAM_DISPATCH: &str = "GF_DISPATCH";
pub const STREAM_EVENTS: &str = "GF_EVENTS";
pub const STREAM_LOGS: &str = "GF_LOGS";

/// KV key (in [`BUCKET_LEADER`]) holding the scheduler leader's lease.
pub const LEADER_KEY: &str = "scheduler";

pub const DISPATCH_ALL: &str = "gf.dispatch.>";
pub const EVENTS_ALL: &str = "gf.events.>";
pub const LOGS_ALL: &str = "gf.logs.>";

/// Queue group every coordinator replica serves the RPC plane in.
pub const RPC_QUEUE_GROUP: &str = "gf-coordinators";

/// The RPC plane: request/reply subjects served by the coordinators.
pub mod rpc {
    /// Wildcard covering every RPC subject (what coordinators subscribe to).
    pub const ALL: &str = "gf.rpc.>";
    pub const SUBMIT: &str = "gf.rpc.submit";
    pub const GET_JOB: &str = "gf.rpc.job.get";
    pub const CANCEL: &str = "gf.rpc.job.cancel";
    pub const REGISTER: &str = "gf.rpc.register";
    pub const HEARTBEAT: &str = "gf.rpc.heartbeat";
    pub const CLAIM: &str = "gf.rpc.claim";
    pub const RENEW: &str = "gf.rpc.renew";
    pub const COMPLETE: &str = "gf.rpc.complete";
    pub const RELEASE: &str = "gf.rpc.release";
    pub const EXPLAIN: &str = "gf.rpc.job.explain";
    pub const REQUEUE: &str = "gf.rpc.job.requeue";
    pub const REJECT: &str = "gf.rpc.job.reject";
    pub const SUBMIT_CHILD: &str = "gf.rpc.job.child";
    pub const DAG: &str = "gf.rpc.job.dag";
    pub const BUDGET_LIST: &str = "gf.rpc.budget.list";
    pub const BUDGET_SET: &str = "gf.rpc.budget.set";
    pub const SCHEDULE_ADD: &str = "gf.rpc.schedule.add";
    pub const SCHEDULE_LIST: &str = "gf.rpc.schedule.list";
    pub const SCHEDULE_REMOVE: &str = "gf.rpc.schedule.remove";
    /// Batches: the body is a JSON array of the single subject's requests (at most
    /// [`crate::rpc::MAX_BATCH`]); the reply is `{"ok": [...]}` holding each item's own
    /// envelope, in order. Each item is applied exactly as if sent alone.
    pub const SUBMIT_BATCH: &str = "gf.rpc.batch.submit";
    pub const CLAIM_BATCH: &str = "gf.rpc.batch.claim";
    pub const COMPLETE_BATCH: &str = "gf.rpc.batch.complete";

    /// The single-request subject a batch subject carries items of.
    pub fn batched(subject: &str) -> Option<&'static str> {
        match subject {
            SUBMIT_BATCH => Some(SUBMIT),
            CLAIM_BATCH => Some(CLAIM),
            COMPLETE_BATCH => Some(COMPLETE),
            _ => None,
        }
    }
}

/// Subject a product's usage entries are published on.
pub fn usage(product: &str) -> String {
    format!("gf.usage.{product}")
}

/// `true` when `s` is usable as a subject token, KV key part and capability value:
/// non-empty, only `A-Z a-z 0-9 _ -`.
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Subject of one job's log lines.
pub fn logs(job: &JobId) -> String {
    format!("gf.logs.{job}")
}

/// Subject an event is published on: `gf.events.<kind>`.
pub fn event(kind: crate::EventKind) -> String {
    format!("gf.events.{}", kind.as_str())
}

/// Control subject a worker listens on for revocations pushed by coordinators.
pub fn worker_control(worker: &WorkerId) -> String {
    format!("gf.ctl.worker.{worker}")
}

/// KV key of a job in [`BUCKET_JOBS`].
pub fn job_key(job: &JobId) -> String {
    job.to_string()
}

/// KV key of an idempotency key in [`BUCKET_IDEM`]: `<product>.<sha256-hex of key>`.
/// Hashing keeps arbitrary client keys inside the KV key alphabet.
pub fn idem_key(product: &str, key_hash_hex: &str) -> String {
    format!("{product}.{key_hash_hex}")
}

/// The routing dimensions, in subject order. `queue` is the job's queue; every other
/// dimension is read from the job's `requires` and a worker's capabilities.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routing {
    dims: Vec<String>,
}

pub const DEFAULT_DIMS: [&str; 3] = ["queue", "os", "arch"];

impl Default for Routing {
    fn default() -> Self {
        Self::new(DEFAULT_DIMS.iter().map(|s| s.to_string()).collect()).expect("valid")
    }
}

impl Routing {
    /// Dimensions must be distinct tokens and start with `queue`.
    pub fn new(dims: Vec<String>) -> Result<Self, String> {
        if dims.first().map(String::as_str) != Some("queue") {
            return Err("routing dimensions must start with `queue`".into());
        }
        if dims.len() > 6 {
            return Err("at most 6 routing dimensions (workers bind 2^n filters)".into());
        }
        for (i, d) in dims.iter().enumerate() {
            if !is_token(d) || dims[..i].contains(d) {
                return Err(format!("routing dimension `{d}` is not a distinct token"));
            }
        }
        Ok(Self { dims })
    }
    pub fn dims(&self) -> &[String] {
        &self.dims
    }

    /// The route a job's notices go to.
    pub fn route_of(&self, spec: &JobSpec) -> Route {
        let tokens = self
            .dims
            .iter()
            .map(|d| {
                if d == "queue" {
                    spec.queue.clone()
                } else {
                    spec.requires
                        .get(d)
                        .cloned()
                        .unwrap_or_else(|| ANY.to_string())
                }
            })
            .collect();
        Route { tokens }
    }

    /// Filter subjects for a worker serving `queues` with `caps`: for each dimension,
    /// its own value or `_`. A worker lacking a dimension only matches `_` there.
    pub fn worker_filters(
        &self,
        queues: &[String],
        caps: &BTreeMap<String, String>,
    ) -> Vec<String> {
        let mut acc: Vec<Vec<String>> = queues.iter().map(|q| vec![q.clone()]).collect();
        for d in self.dims.iter().skip(1) {
            let mut next = Vec::with_capacity(acc.len() * 2);
            for prefix in &acc {
                if let Some(v) = caps.get(d) {
                    let mut p = prefix.clone();
                    p.push(v.clone());
                    next.push(p);
                }
                let mut p = prefix.clone();
                p.push(ANY.to_string());
                next.push(p);
            }
            acc = next;
        }
        acc.into_iter()
            .map(|tokens| Route { tokens }.subject())
            .collect()
    }
}

/// A dispatch route: one token per routing dimension.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    tokens: Vec<String>,
}

impl Route {
    pub fn subject(&self) -> String {
        format!("gf.dispatch.{}", self.tokens.join("."))
    }
    pub fn tokens(&self) -> &[String] {
        &self.tokens
    }
    /// Short label, e.g. `default/linux/_`.
    pub fn label(&self) -> String {
        self.tokens.join("/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(queue: &str, requires: &[(&str, &str)]) -> JobSpec {
        let mut s = JobSpec::command(["true"]);
        s.queue = queue.into();
        s.requires = requires
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        s
    }

    /// A job's route uses `_` for dimensions it does not constrain.
    #[test]
    fn route_of_job() {
        let r = Routing::default();
        assert_eq!(
            r.route_of(&spec("default", &[])).subject(),
            "gf.dispatch.default._._"
        );
        assert_eq!(
            r.route_of(&spec("gpu", &[("os", "linux"), ("gpu", "a100")]))
                .subject(),
            "gf.dispatch.gpu.linux._"
        );
    }

    /// A worker's filters cover its own values and `_` for every dimension, and the
    /// route of every job it could run is among them.
    #[test]
    fn worker_filters_cover_matching_routes() {
        let r = Routing::default();
        let caps: BTreeMap<_, _> = [("os", "linux"), ("arch", "x86_64")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let f = r.worker_filters(&["default".into()], &caps);
        assert_eq!(
            f,
            vec![
                "gf.dispatch.default.linux.x86_64",
                "gf.dispatch.default.linux._",
                "gf.dispatch.default._.x86_64",
                "gf.dispatch.default._._",
            ]
        );
        for job in [
            spec("default", &[]),
            spec("default", &[("os", "linux")]),
            spec("default", &[("arch", "x86_64"), ("os", "linux")]),
        ] {
            assert!(f.contains(&r.route_of(&job).subject()));
        }
        assert!(!f.contains(&r.route_of(&spec("default", &[("os", "plan9")])).subject()));
        assert!(!f.contains(&r.route_of(&spec("other", &[])).subject()));
    }

    #[test]
    fn routing_dims_validated() {
        assert!(Routing::new(vec!["os".into()]).is_err());
        assert!(Routing::new(vec!["queue".into(), "os".into(), "os".into()]).is_err());
        assert!(Routing::new(vec!["queue".into(), "a.b".into()]).is_err());
        assert!(Routing::new(vec!["queue".into(), "gpu".into()]).is_ok());
    }
}
