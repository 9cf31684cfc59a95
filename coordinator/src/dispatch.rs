//! Sending leases granted at dispatch to the workers they name.
//!
//! The leader writes a dispatched record leased to the worker the planner chose
//! ([`crate::fsm::lease_at_dispatch`]), then tells that worker with a
//! [`ControlMessage::Start`] on its control subject (`gf.ctl.worker.<id>`, which only it
//! subscribes to): one message per worker per plan pass, carrying every grant of the
//! pass for it. Plain publishes, not stored: the record is the truth, and a grant the
//! worker never hears of is taken back at its start deadline by the reaper, as an
//! unclaimed notice was by the claim timeout. What the worker must do to hold the job
//! is on `ControlMessage::Start`.

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt as _, StreamExt as _};
use gf_schemas::names;
use gf_schemas::rpc::{ControlMessage, LeaseGrant};
use gf_schemas::{JobRecord, WorkerId};

use crate::error::StoreError;
use crate::service::Service;
use crate::store::encode;

/// Dispatch writes awaiting their answer at most; a pass that would start more waits
/// for answers first.
pub const WRITES_IN_FLIGHT: usize = 256;

/// A dispatch write and its answer: the record as written, and its new revision.
pub type Written = (JobRecord, Result<u64, StoreError>);

/// The leader's dispatch writes in flight across turns of its loop.
///
/// Why: the leader awaited every write of a pass before it took in anything else, and
/// under load that wait was half of its loop's time (`chaos load --backlog 50000`: the
/// pass arm 59 % of the wall time, 51 % of it awaiting acks, ~3.4 ms a pass), so
/// completions queued in its watch while it waited and each slot's cycle grew by it.
/// Now a pass starts its writes and the loop goes on; each answer is applied as it
/// comes (`scheduler`), and the grants of the writes that landed go out then.
///
/// Invariants: a job's write is started only after the view took in the record as
/// written (so the planner counts its slot at once and never decides on it twice);
/// a grant goes out only after its write landed; a write that failed has its job read
/// again from the store (or, if that fails too, sent back by its start deadline).
#[derive(Default)]
pub struct InFlight {
    writes: FuturesUnordered<BoxFuture<'static, Written>>,
}

impl InFlight {
    pub fn len(&self) -> usize {
        self.writes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    /// Starts writing `rec`, decided on the view's revision `rev`.
    pub fn start(&mut self, service: &Arc<Service>, rec: JobRecord, rev: u64) {
        let service = service.clone();
        self.writes.push(
            async move {
                let written = service.store.update_job(&rec, rev).await;
                (rec, written)
            }
            .boxed(),
        );
    }

    /// The next answer; pending while none is in flight.
    pub async fn next(&mut self) -> Written {
        match self.writes.next().await {
            Some(w) => w,
            None => std::future::pending().await,
        }
    }

    /// An answer already there, without waiting.
    pub fn ready(&mut self) -> Option<Written> {
        self.writes.next().now_or_never().flatten()
    }
}

/// Grants per message at most, and the payload size a message is cut at: far under
/// NATS' default 1 MiB limit whatever the specs hold (a spec is < 64 KiB in practice;
/// one larger goes alone).
const GRANTS_PER_MESSAGE: usize = 256;
const MESSAGE_BYTES: usize = 256 * 1024;

/// The grants of one pass, by worker.
#[derive(Default)]
pub struct Grants {
    by_worker: HashMap<WorkerId, Vec<LeaseGrant>>,
}

impl Grants {
    pub fn add(&mut self, grant: LeaseGrant) {
        self.by_worker
            .entry(grant.lease.worker.clone())
            .or_default()
            .push(traced(grant));
    }

    pub fn is_empty(&self) -> bool {
        self.by_worker.is_empty()
    }

    /// Publishes every worker's grants (a message per worker, more only past the size
    /// limits). A publish that fails only costs its jobs a start deadline.
    pub async fn send(self, client: &async_nats::Client) {
        for (worker, grants) in self.by_worker {
            publish(client, &worker, grants).await;
        }
    }
}

/// The grant with the dispatch's own span in its trace context: a `send` span (child
/// of the submission's stored context) per grant, since one message carries several
/// jobs' traces; the worker's `process` span is its child.
fn traced(mut grant: LeaseGrant) -> LeaseGrant {
    if grant.trace_parent.is_some() {
        let span = gf_telemetry::trace::publish_span(
            names::WORKER_CONTROL_ANY,
            &grant.job_id.to_string(),
            grant.trace_parent.as_deref(),
        );
        grant.trace_parent = gf_telemetry::trace::span_traceparent(&span).or(grant.trace_parent);
    }
    grant
}

/// Publishes `grants` to `worker`, cut into messages of bounded size.
pub async fn send(client: &async_nats::Client, worker: &WorkerId, grants: Vec<LeaseGrant>) {
    publish(client, worker, grants.into_iter().map(traced).collect()).await;
}

async fn publish(client: &async_nats::Client, worker: &WorkerId, grants: Vec<LeaseGrant>) {
    let subject = names::worker_control(worker);
    for body in messages(grants) {
        if let Err(e) = client.publish(subject.clone(), body).await {
            tracing::warn!(%worker, error = %e, "lease grants not sent; their start deadline sends the jobs back");
        }
    }
}

/// The encoded `Start` messages for `grants`, in order, each within the limits.
fn messages(grants: Vec<LeaseGrant>) -> Vec<bytes::Bytes> {
    let mut out = Vec::new();
    let mut batch: Vec<LeaseGrant> = Vec::new();
    let mut bytes = 0;
    for g in grants {
        // A spec's size dominates a grant's; estimated from its command and env.
        let size = 512
            + g.spec.command.iter().map(String::len).sum::<usize>()
            + g.spec
                .env
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        if !batch.is_empty() && (batch.len() == GRANTS_PER_MESSAGE || bytes + size > MESSAGE_BYTES)
        {
            out.push(encode(&ControlMessage::Start {
                grants: std::mem::take(&mut batch),
            }));
            bytes = 0;
        }
        bytes += size;
        batch.push(g);
    }
    if !batch.is_empty() {
        out.push(encode(&ControlMessage::Start { grants: batch }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use gf_schemas::{JobId, JobSpec, Lease, Timestamp};

    fn grant(arg_len: usize) -> LeaseGrant {
        let t = Timestamp::from_unix_millis(0);
        LeaseGrant {
            job_id: JobId::new(),
            spec: JobSpec::command(["x".repeat(arg_len)]),
            lease: Lease {
                worker: WorkerId::new("w1").unwrap(),
                epoch: 1,
                granted_at: t,
                expires_at: t,
                ttl_ms: 1000,
            },
            attempt: 1,
            trace_parent: None,
        }
    }

    fn decoded(body: &[u8]) -> Vec<LeaseGrant> {
        match serde_json::from_slice(body).unwrap() {
            ControlMessage::Start { grants } => grants,
            other => panic!("not a start message: {other:?}"),
        }
    }

    /// A pass's grants for one worker go as one message; past the count or the size
    /// limit they are cut, in order, and none is lost; a single oversized one goes alone.
    #[test]
    fn grants_are_cut_into_bounded_messages() {
        let few: Vec<_> = (0..10).map(|_| grant(10)).collect();
        let ids: Vec<_> = few.iter().map(|g| g.job_id).collect();
        let m = messages(few);
        assert_eq!(m.len(), 1);
        assert_eq!(
            decoded(&m[0]).iter().map(|g| g.job_id).collect::<Vec<_>>(),
            ids
        );

        let many: Vec<_> = (0..600).map(|_| grant(10)).collect();
        let ids: Vec<_> = many.iter().map(|g| g.job_id).collect();
        let m = messages(many);
        assert_eq!(m.len(), 3, "256 + 256 + 88");
        let back: Vec<_> = m
            .iter()
            .flat_map(|b| decoded(b))
            .map(|g| g.job_id)
            .collect();
        assert_eq!(back, ids);

        let big: Vec<_> = (0..5).map(|_| grant(100 * 1024)).collect();
        let m = messages(big);
        assert_eq!(
            m.len(),
            3,
            "two of 100 KiB fit under 256 KiB, a third does not"
        );
        assert!(m.iter().all(|b| b.len() < 512 * 1024));
        let huge = messages(vec![grant(600 * 1024)]);
        assert_eq!(huge.len(), 1);
        assert_eq!(decoded(&huge[0]).len(), 1);
    }
}
