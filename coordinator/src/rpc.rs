//! The RPC plane: one queue subscription on `gf.rpc.>` shared by every coordinator
//! replica. Each request is decoded, handed to [`Service`], and answered with a reply
//! envelope. Requests run concurrently up to `max_inflight_rpc`.
//!
//! A factory's own requests (`gf.rpc.w.<factory>.<verb>`) are first checked against
//! the sender the subject names ([`crate::identity`]); operator and client requests
//! keep their fixed subjects.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use gf_schemas::names::{self, rpc, FactoryRpc, FactorySubjectError, FactoryVerb};
use gf_schemas::rpc::{
    CancelRequest, ClaimRequest, CompleteRequest, GetJobRequest, HeartbeatRequest, RegisterRequest,
    ReleaseRequest, RenewRequest,
};
use gf_schemas::{ErrorKind, Reply, RpcError, WorkerId};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::service::{decode, Service};
use crate::store::encode;

/// Serves until `shutdown`, then stops taking requests and waits for those in flight.
pub async fn serve(service: Arc<Service>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut sub = service
        .client
        .queue_subscribe(rpc::ALL, names::RPC_QUEUE_GROUP.to_string())
        .await?;
    let inflight = Arc::new(Semaphore::new(service.config.max_inflight_rpc));
    let tracker = TaskTracker::new();
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => break,
            msg = sub.next() => match msg {
                Some(m) => m,
                None => break,
            },
        };
        let Some(reply_to) = msg.reply.clone() else {
            tracing::debug!(subject = %msg.subject, "RPC without a reply subject ignored");
            continue;
        };
        let permit = inflight.clone().acquire_owned().await?;
        let service = service.clone();
        // Boxed: the handler's future (every verb's, inlined) is large, and a task moves
        // its future on spawn and again when it ends; boxed, those copies move a pointer.
        tracker.spawn(Box::pin(async move {
            let subject = msg.subject.to_string();
            let started = std::time::Instant::now();
            let span = gf_telemetry::trace::rpc_server_span(
                &names::rpc_name(&subject),
                &subject,
                msg.headers.as_ref(),
            );
            let body = handle(&service, &subject, &msg.payload)
                .instrument(span)
                .await;
            crate::metrics::rpc(operation(&subject), started.elapsed(), result_kind(&body));
            if let Err(e) = service.client.publish(reply_to, body).await {
                tracing::warn!(%subject, error = %e, "could not send RPC reply");
            }
            drop(permit);
        }));
    }
    let _ = sub.unsubscribe().await;
    tracker.close();
    tracker.wait().await;
    Ok(())
}

/// Answers one request; the body is always a reply envelope.
pub async fn handle(service: &Service, subject: &str, payload: &[u8]) -> Bytes {
    match names::parse_factory_rpc(subject) {
        Ok(FactoryRpc { factory, verb }) => match verb.batched() {
            Some(single) => {
                let item_subject = names::factory_rpc(&factory, single);
                handle_batch(service, subject, payload, |item| {
                    handle_factory(service, &item_subject, &factory, single, item)
                })
                .await
            }
            None => handle_factory(service, subject, &factory, verb, payload).await,
        },
        Err(FactorySubjectError::NotFactory) => match rpc::batched(subject) {
            Some(single) => {
                handle_batch(service, subject, payload, |item| {
                    handle_one(service, single, item)
                })
                .await
            }
            None => handle_one(service, subject, payload).await,
        },
        Err(e) => reply::<()>(
            service,
            subject,
            Err(RpcError::new(ErrorKind::Invalid, e.to_string())),
        ),
    }
}

/// Items of one batch handled at once.
const BATCH_ITEMS_IN_FLIGHT: usize = 32;

/// A batch: each item goes through `one` as if it had come alone on the batch's single
/// subject (same checks, same audit of refusals), several at once so their store writes
/// are pipelined; the reply holds each item's envelope in order. Only a batch that is
/// not an array of 1 to `MAX_BATCH` items is refused as a whole.
async fn handle_batch<'a, F, Fut>(
    service: &Service,
    subject: &str,
    payload: &'a [u8],
    one: F,
) -> Bytes
where
    F: Fn(&'a [u8]) -> Fut,
    Fut: std::future::Future<Output = Bytes>,
{
    let items = match gf_schemas::rpc::batch_items(payload) {
        Ok(items) => items,
        Err(e) => return reply::<()>(service, subject, Err(e)),
    };
    // In order, `BATCH_ITEMS_IN_FLIGHT` at a time: a batch counts as one request
    // against `max_inflight_rpc`, so this keeps the store writes in flight bounded.
    let mut replies: Vec<Bytes> = Vec::with_capacity(items.len());
    for chunk in items.chunks(BATCH_ITEMS_IN_FLIGHT) {
        // Boxed, so `join_all` holds and moves pointers, not the items' large futures.
        let chunk = chunk
            .iter()
            .map(|item| Box::pin(one(item.get().as_bytes())));
        replies.extend(futures::future::join_all(chunk).await);
    }
    // `{"ok":[<envelope>,...]}` from the encoded envelopes, without decoding them again.
    let mut body = Vec::with_capacity(8 + replies.iter().map(|r| r.len() + 1).sum::<usize>());
    body.extend_from_slice(b"{\"ok\":");
    gf_schemas::rpc::append_json_array(&mut body, replies.iter().map(|r| r.as_ref()));
    body.push(b'}');
    body.into()
}

/// One request a factory sent on its own behalf, `sender` being the factory its
/// subject names: decoded, checked to speak for `sender`, then served.
async fn handle_factory(
    service: &Service,
    subject: &str,
    sender: &WorkerId,
    verb: FactoryVerb,
    payload: &[u8],
) -> Bytes {
    let max = service.config.max_submit_bytes;
    macro_rules! call {
        ($t:ty, $what:literal, $method:ident) => {
            match decode::<$t>($what, payload, max) {
                Err(e) => reply::<()>(service, subject, Err(e)),
                Ok(req) => match crate::identity::check(sender, &req) {
                    Ok(()) => reply(service, subject, service.$method(req).await),
                    Err((why, e)) => {
                        crate::identity::refused(&service.events, subject, sender, verb, why, &e);
                        reply::<()>(service, subject, Err(e))
                    }
                },
            }
        };
    }
    match verb {
        FactoryVerb::Register => call!(RegisterRequest, "register request", register),
        FactoryVerb::Heartbeat => call!(HeartbeatRequest, "heartbeat", heartbeat),
        FactoryVerb::Claim => call!(ClaimRequest, "claim request", claim),
        FactoryVerb::Renew => call!(RenewRequest, "renew request", renew),
        FactoryVerb::Complete => call!(CompleteRequest, "completion", complete),
        FactoryVerb::Release => call!(ReleaseRequest, "release request", release),
        FactoryVerb::UploadBegin
        | FactoryVerb::UploadChunk
        | FactoryVerb::UploadCommit
        | FactoryVerb::CheckpointRead => {
            crate::artifacts::serve(service, subject, sender, verb, payload).await
        }
        // `handle` unpacks batches; a batch verb here would be a batch inside a batch.
        FactoryVerb::ClaimBatch | FactoryVerb::CompleteBatch => reply::<()>(
            service,
            subject,
            Err(RpcError::new(
                ErrorKind::Invalid,
                "a batch cannot hold batches",
            )),
        ),
    }
}

async fn handle_one(service: &Service, subject: &str, payload: &[u8]) -> Bytes {
    let max = service.config.max_submit_bytes;
    macro_rules! call {
        ($what:literal, $method:ident) => {
            match decode($what, payload, max) {
                Ok(req) => reply(service, subject, service.$method(req).await),
                Err(e) => reply::<()>(service, subject, Err(e)),
            }
        };
    }
    match subject {
        rpc::SUBMIT => reply(service, subject, service.submit(payload).await),
        rpc::GET_JOB => match decode::<GetJobRequest>("get-job request", payload, max) {
            Ok(r) => reply(service, subject, service.get_job(&r.job_id).await),
            Err(e) => reply::<()>(service, subject, Err(e)),
        },
        rpc::LIST_JOBS => call!("job list request", list_jobs),
        rpc::CANCEL => match decode::<CancelRequest>("cancel request", payload, max) {
            Ok(r) => reply(service, subject, service.cancel(&r.job_id, r.reason).await),
            Err(e) => reply::<()>(service, subject, Err(e)),
        },
        rpc::SUBMIT_CHILD => call!("child request", submit_child),
        rpc::BUDGET_SET => call!("budget update", budget_set),
        rpc::SCHEDULE_ADD => call!("schedule", schedule_add),
        rpc::BUDGET_LIST => reply(service, subject, service.budget_list().await),
        rpc::MANIFEST_SUBMIT => call!("manifest", manifest_submit),
        rpc::MANIFEST_GET => {
            match decode::<gf_schemas::manifest::ManifestName>("manifest name", payload, max) {
                Ok(r) => reply(service, subject, service.manifest_get(&r.name).await),
                Err(e) => reply::<()>(service, subject, Err(e)),
            }
        }
        rpc::PROFILE_LIST => reply(service, subject, service.profile_list().await),
        rpc::BRIDGE_DELIVERIES => call!("delivery query", bridge_deliveries),
        rpc::BRIDGE_REDELIVER => call!("redeliver request", bridge_redeliver),
        rpc::ARTIFACT_LIST | rpc::ARTIFACT_READ => {
            crate::artifacts::serve_operator(service, subject, payload).await
        }
        rpc::SCHEDULE_LIST => reply(service, subject, service.schedule_list().await),
        rpc::SCHEDULE_REMOVE => {
            match decode::<gf_schemas::rpc::ScheduleName>("schedule name", payload, max) {
                Ok(r) => reply(service, subject, service.schedule_remove(&r.name).await),
                Err(e) => reply::<()>(service, subject, Err(e)),
            }
        }
        rpc::EXPLAIN | rpc::REQUEUE | rpc::REJECT | rpc::DAG => {
            match decode::<gf_schemas::rpc::JobAction>("job action", payload, max) {
                Ok(r) => match subject {
                    rpc::EXPLAIN => reply(service, subject, service.explain(&r.job_id).await),
                    rpc::REQUEUE => reply(service, subject, service.requeue(&r.job_id).await),
                    rpc::REJECT => {
                        reply(service, subject, service.reject(&r.job_id, r.reason).await)
                    }
                    _ => reply(service, subject, service.dag(&r.job_id).await),
                },
                Err(e) => reply::<()>(service, subject, Err(e)),
            }
        }
        legacy if rpc::LEGACY_FACTORY_SUBJECTS.contains(&legacy) => reply::<()>(
            service,
            subject,
            Err(RpcError::new(
                ErrorKind::Invalid,
                format!(
                    "`{legacy}` is no longer served: worker requests go to gf.rpc.w.<worker id>.<verb>; upgrade this worker"
                ),
            )),
        ),
        other => reply::<()>(
            service,
            subject,
            Err(RpcError::new(
                ErrorKind::Invalid,
                format!("unknown RPC subject `{other}`"),
            )),
        ),
    }
}

pub(crate) fn reply<T: serde::Serialize>(
    service: &Service,
    subject: &str,
    r: Result<T, RpcError>,
) -> Bytes {
    if let Err(e) = &r {
        service.rejected(subject, e);
    }
    encode(&Reply::from(r))
}

/// Bounded operation label for a subject.
fn operation(subject: &str) -> &'static str {
    if let Ok(FactoryRpc { verb, .. }) = names::parse_factory_rpc(subject) {
        return verb.as_str();
    }
    match subject {
        rpc::SUBMIT => "submit",
        rpc::GET_JOB => "get_job",
        rpc::LIST_JOBS => "list_jobs",
        rpc::CANCEL => "cancel",
        rpc::EXPLAIN => "explain",
        rpc::REQUEUE => "requeue",
        rpc::REJECT => "reject",
        rpc::SUBMIT_CHILD => "submit_child",
        rpc::DAG => "dag",
        rpc::BUDGET_LIST => "budget_list",
        rpc::BUDGET_SET => "budget_set",
        rpc::SCHEDULE_ADD => "schedule_add",
        rpc::SCHEDULE_LIST => "schedule_list",
        rpc::SCHEDULE_REMOVE => "schedule_remove",
        rpc::MANIFEST_SUBMIT => "manifest_submit",
        rpc::MANIFEST_GET => "manifest_get",
        rpc::PROFILE_LIST => "profile_list",
        rpc::BRIDGE_DELIVERIES => "bridge_deliveries",
        rpc::BRIDGE_REDELIVER => "bridge_redeliver",
        rpc::ARTIFACT_LIST => "artifact_list",
        rpc::ARTIFACT_READ => "artifact_read",
        rpc::SUBMIT_BATCH => "submit_batch",
        _ => "unknown",
    }
}

/// Reads the error kind back out of an encoded reply, for the request metric.
fn result_kind(body: &[u8]) -> Result<(), ErrorKind> {
    #[derive(serde::Deserialize)]
    struct Probe {
        error: Option<RpcError>,
    }
    match serde_json::from_slice::<Probe>(body) {
        Ok(Probe { error: Some(e) }) => Err(e.kind),
        _ => Ok(()),
    }
}
