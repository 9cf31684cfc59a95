//! Outbound: each state change of a bridged job is echoed to its item.
//!
//! Two halves, joined by the `GF_BRIDGE` stream:
//! - the **producer** (every coordinator) watches `gf_jobs`; when a bridged job's
//!   state differs from the last one echoed, it publishes an [`Echo`] on
//!   `gf.bridge.out.<source>.<job>` with `Nats-Msg-Id` = the echo's id
//!   (`<job>.<record revision>`). Every coordinator sees the same revision and
//!   publishes the same id, so the stream keeps one; after a restart the watch replays
//!   every job's current record and only states not yet echoed (per the job's last
//!   message on the stream) are published. Changes made while no coordinator watched
//!   are coalesced into the job's current state.
//! - the **deliverer** (one durable consumer per source, shared by the coordinators,
//!   at most one message in flight) sends each echo in stream order — so a job's
//!   changes reach its item in order — and retries with backoff until it is
//!   delivered or its attempts are spent. Nothing is acknowledged before it is
//!   delivered or given up, so a coordinator restart, or a tracker down for a while,
//!   loses nothing. A failing echo is an event and a metric; the job never waits.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, AckKind};
use futures::StreamExt;
use gf_schemas::bridge::{Delivery, DeliveryQuery, DeliveryStatus, Echo};
use gf_schemas::{names, Event, EventKind, JobId, JobRecord, JobState, Level, Timestamp};
use tokio_util::sync::CancellationToken;

use crate::config::Source;
use crate::inbound::{LABEL_ITEM, LABEL_SOURCE};
use crate::{Bridge, BridgeError};

/// How long the deliverer's consumer waits for an ack before redelivering; the
/// deliverer sends progress acks while it waits between attempts.
const ACK_WAIT: Duration = Duration::from_secs(30);

fn delivery_key(id: &str) -> String {
    names::bridge_delivery_key(id)
}

/// The echo's id, stable for one state change: `<job>.<revision>`.
pub fn echo_id(job: &JobId, revision: u64) -> String {
    format!("{job}.{revision}")
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The producer: watches `gf_jobs` until `shutdown`.
pub(crate) async fn produce(bridge: Arc<Bridge>, shutdown: CancellationToken) {
    let mut last: HashMap<JobId, Option<JobState>> = HashMap::new();
    let mut resume_after = 0u64;
    while !shutdown.is_cancelled() {
        let jobs = match bridge.js.get_key_value(names::BUCKET_JOBS).await {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!(error = %e, "bridge: no jobs bucket yet");
                pause(&shutdown, Duration::from_secs(1)).await;
                continue;
            }
        };
        let watch = if resume_after == 0 {
            jobs.watch_with_history(">").await
        } else {
            jobs.watch_from_revision(">", resume_after + 1).await
        };
        let mut watch = match watch {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "bridge: cannot watch jobs; retrying");
                pause(&shutdown, Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            let entry = tokio::select! {
                _ = shutdown.cancelled() => return,
                e = watch.next() => e,
            };
            let entry = match entry {
                Some(Ok(e)) => e,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "bridge: jobs watch hiccup; re-creating it");
                    break;
                }
                None => break,
            };
            resume_after = resume_after.max(entry.revision);
            if entry.operation != kv::Operation::Put
                || !contains(&entry.value, LABEL_SOURCE.as_bytes())
            {
                continue;
            }
            let Ok(rec) = serde_json::from_slice::<JobRecord>(&entry.value) else {
                continue;
            };
            let Some(src) = rec
                .spec
                .labels
                .get(LABEL_SOURCE)
                .and_then(|s| bridge.config.sources.get(s))
            else {
                continue;
            };
            if !src.echo.is_configured() {
                continue;
            }
            // Publishing may wait for the stream; keep at it until done or shutdown,
            // or the change would only go out at the job's next write.
            while let Err(e) = echo_change(&bridge, src, &rec, entry.revision, &mut last).await {
                tracing::warn!(job = %rec.id, error = %e, "bridge: cannot queue an echo; retrying");
                if pause(&shutdown, Duration::from_secs(1)).await {
                    return;
                }
            }
        }
        pause(&shutdown, Duration::from_millis(200)).await;
    }
}

/// Sleeps `d` unless `shutdown` fires first; `true` if it did.
async fn pause(shutdown: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

/// Publishes an echo of `rec` at `revision` if its state is not the last one echoed.
async fn echo_change(
    bridge: &Bridge,
    src: &Source,
    rec: &JobRecord,
    revision: u64,
    last: &mut HashMap<JobId, Option<JobState>>,
) -> Result<(), BridgeError> {
    let subject = names::bridge_out(&src.name, &rec.id);
    let previous = match last.get(&rec.id) {
        Some(s) => *s,
        None => {
            let stream = bridge
                .js
                .get_stream(names::STREAM_BRIDGE)
                .await
                .map_err(BridgeError::store)?;
            match stream.get_last_raw_message_by_subject(&subject).await {
                Ok(m) => serde_json::from_slice::<Echo>(&m.payload)
                    .ok()
                    .map(|e| e.state),
                Err(e)
                    if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
                {
                    None
                }
                Err(e) => return Err(BridgeError::store(e)),
            }
        }
    };
    if previous == Some(rec.state) {
        last.insert(rec.id, previous);
        return Ok(());
    }
    let fields = rec
        .spec
        .labels
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("bridge.")?.to_string(), v.clone())))
        .filter(|(k, _)| k != "source" && k != "item")
        .collect();
    let echo = Echo {
        id: echo_id(&rec.id, revision),
        source: src.name.clone(),
        item: rec.spec.labels.get(LABEL_ITEM).cloned().unwrap_or_default(),
        job_id: rec.id,
        state: rec.state,
        previous,
        reason: rec.reason.clone(),
        epoch: rec.epoch,
        attempts: rec.attempts,
        revision,
        time: Timestamp::now_local(),
        fields,
    };
    // The delivery record first, so `gf bridge deliveries` lists it while it waits.
    let record = Delivery {
        echo: echo.clone(),
        status: DeliveryStatus::Pending,
        attempts: 0,
        last_error: None,
        updated_at: echo.time,
        delivered_at: None,
    };
    match bridge
        .kv
        .create(delivery_key(&echo.id), encode(&record))
        .await
    {
        Ok(_) => {}
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
        Err(e) => return Err(BridgeError::store(e)),
    }
    publish(bridge, &subject, &echo.id, &echo).await?;
    if rec.state.is_terminal() {
        // Bounded memory: a later change of a finished job looks its last echo up.
        last.remove(&rec.id);
    } else {
        last.insert(rec.id, Some(rec.state));
    }
    Ok(())
}

fn encode<T: serde::Serialize>(v: &T) -> bytes::Bytes {
    serde_json::to_vec(v).expect("wire types serialize").into()
}

async fn publish(
    bridge: &Bridge,
    subject: &str,
    msg_id: &str,
    echo: &Echo,
) -> Result<(), BridgeError> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", msg_id);
    bridge
        .js
        .publish_with_headers(subject.to_string(), headers, encode(echo))
        .await
        .map_err(BridgeError::store)?
        .await
        .map_err(BridgeError::store)?;
    Ok(())
}

/// The deliverer of one source, until `shutdown`.
pub(crate) async fn deliver(bridge: Arc<Bridge>, src: Source, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        match deliver_from_consumer(&bridge, &src, &shutdown).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(source = %src.name, error = %e, "bridge: deliverer restarting");
                if pause(&shutdown, Duration::from_secs(1)).await {
                    return;
                }
            }
        }
    }
}

async fn deliver_from_consumer(
    bridge: &Bridge,
    src: &Source,
    shutdown: &CancellationToken,
) -> Result<(), BridgeError> {
    let stream = bridge
        .js
        .get_stream(names::STREAM_BRIDGE)
        .await
        .map_err(BridgeError::store)?;
    let name = names::bridge_consumer(&src.name);
    let consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(
            &name,
            consumer::pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: names::bridge_out_source(&src.name),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: ACK_WAIT,
                // One in flight across every coordinator: strict order per source.
                max_ack_pending: 1,
                max_deliver: -1,
                ..Default::default()
            },
        )
        .await
        .map_err(BridgeError::store)?;
    let mut messages = consumer
        .stream()
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .map_err(BridgeError::store)?;
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            m = messages.next() => m,
        };
        let msg = match msg {
            Some(Ok(m)) => m,
            Some(Err(e)) => return Err(BridgeError::store(e)),
            None => return Err(BridgeError::Unavailable("consumer ended".into())),
        };
        let Ok(echo) = serde_json::from_slice::<Echo>(&msg.payload) else {
            tracing::warn!(subject = %msg.subject, "bridge: unreadable echo dropped");
            msg.ack().await.ok();
            continue;
        };
        if !deliver_one(bridge, src, &echo, &msg, shutdown).await {
            // Shutting down mid-retry: hand it back at once for whoever runs next.
            msg.ack_with(AckKind::Nak(None)).await.ok();
            return Ok(());
        }
    }
}

/// Sends one echo until delivered or given up (then acknowledged; `true`), or until
/// shutdown (`false`, not acknowledged).
async fn deliver_one(
    bridge: &Bridge,
    src: &Source,
    echo: &Echo,
    msg: &jetstream::Message,
    shutdown: &CancellationToken,
) -> bool {
    let key = delivery_key(&echo.id);
    let mut record = match bridge.kv.get(&key).await {
        Ok(Some(v)) => serde_json::from_slice::<Delivery>(&v).ok(),
        _ => None,
    }
    .unwrap_or(Delivery {
        echo: echo.clone(),
        status: DeliveryStatus::Pending,
        attempts: 0,
        last_error: None,
        updated_at: Timestamp::now_local(),
        delivered_at: None,
    });
    loop {
        if shutdown.is_cancelled() {
            return false;
        }
        let result = crate::send::send(&bridge.http, src, echo).await;
        record.attempts += 1;
        record.updated_at = Timestamp::now_local();
        let source = src.name.clone();
        match result {
            Ok(()) => {
                metrics::counter!(gf_telemetry::names::BRIDGE_DELIVERY_ATTEMPTS, "source" => source, "result" => "ok").increment(1);
                record.status = DeliveryStatus::Delivered;
                record.delivered_at = Some(record.updated_at);
                save(bridge, &key, &record).await;
                msg.ack().await.ok();
                return true;
            }
            Err(e) => {
                metrics::counter!(gf_telemetry::names::BRIDGE_DELIVERY_ATTEMPTS, "source" => source.clone(), "result" => "error").increment(1);
                record.last_error = Some(e.clone());
                let spent = record.attempts >= src.echo.max_attempts;
                let level = if spent { Level::Error } else { Level::Warn };
                let what = if spent { "given up" } else { "will retry" };
                bridge.event(
                    EventKind::EchoFailed,
                    level,
                    echo,
                    format!(
                        "echo {} of {} to {} failed (attempt {}, {what}): {e}",
                        echo.state, echo.item, src.name, record.attempts
                    ),
                );
                if spent {
                    metrics::counter!(gf_telemetry::names::BRIDGE_DELIVERIES_FAILED, "source" => source).increment(1);
                    record.status = DeliveryStatus::Failed;
                    save(bridge, &key, &record).await;
                    msg.ack().await.ok();
                    return true;
                }
                save(bridge, &key, &record).await;
                let delay = backoff(src, record.attempts);
                // Wait in slices, telling the server the message is still being worked
                // on, so it is not handed to another coordinator meanwhile.
                let mut left = delay;
                while !left.is_zero() {
                    msg.ack_with(AckKind::Progress).await.ok();
                    let slice = left.min(ACK_WAIT / 3);
                    if pause(shutdown, slice).await {
                        return false;
                    }
                    left = left.saturating_sub(slice);
                }
            }
        }
    }
}

/// Exponential from `backoff` to `backoff_max`, with up to 20% jitter.
fn backoff(src: &Source, attempt: u32) -> Duration {
    let base = src.echo.backoff.as_secs_f64() * 2f64.powi(attempt.saturating_sub(1).min(30) as i32);
    let capped = base.min(src.echo.backoff_max.as_secs_f64());
    Duration::from_secs_f64(capped * (1.0 + 0.2 * rand::random::<f64>()))
}

async fn save(bridge: &Bridge, key: &str, record: &Delivery) {
    if let Err(e) = bridge.kv.put(key, encode(record)).await {
        tracing::warn!(error = %e, "bridge: delivery record not saved");
    }
}

/// Deliveries, newest first.
pub(crate) async fn list(bridge: &Bridge, q: DeliveryQuery) -> Result<Vec<Delivery>, BridgeError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(BridgeError::Invalid(
            "`limit` must be between 1 and 1000".into(),
        ));
    }
    let mut out = Vec::new();
    let mut stream = bridge.kv.stream.clone();
    if stream
        .info()
        .await
        .map_err(BridgeError::store)?
        .state
        .messages
        > 0
    {
        let mut watch = bridge
            .kv
            .watch_with_history("delivery.>")
            .await
            .map_err(BridgeError::store)?;
        loop {
            let next = tokio::time::timeout(Duration::from_secs(2), watch.next()).await;
            let Ok(Some(Ok(entry))) = next else { break };
            if entry.operation == kv::Operation::Put {
                if let Ok(d) = serde_json::from_slice::<Delivery>(&entry.value) {
                    out.push(d);
                }
            }
            if entry.delta == 0 {
                break;
            }
        }
    }
    out.retain(|d| {
        q.status.is_none_or(|s| s == d.status) && q.job_id.is_none_or(|j| j == d.echo.job_id)
    });
    out.sort_by_key(|d| std::cmp::Reverse((d.echo.time, d.echo.revision)));
    out.truncate(limit);
    Ok(out)
}

/// Sends a delivery again (same echo, same id), at the end of its source's queue.
pub(crate) async fn redeliver(bridge: &Bridge, id: &str) -> Result<Delivery, BridgeError> {
    let not_found = || BridgeError::NotFound(format!("no delivery {id}"));
    if id.is_empty()
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err(not_found());
    }
    let key = delivery_key(id);
    let Some(v) = bridge.kv.get(&key).await.map_err(BridgeError::store)? else {
        return Err(not_found());
    };
    let mut record: Delivery = serde_json::from_slice(&v)
        .map_err(|e| BridgeError::Internal(format!("corrupt delivery {id}: {e}")))?;
    if !bridge.config.sources.contains_key(&record.echo.source) {
        return Err(BridgeError::Invalid(format!(
            "source `{}` of delivery {id} is no longer configured",
            record.echo.source
        )));
    }
    let subject = names::bridge_out(&record.echo.source, &record.echo.job_id);
    // A message id of its own, or the stream would drop it as a duplicate; the echo
    // (and so `webhook-id`) keeps its id.
    let msg_id = format!("{id}.redeliver.{}", Timestamp::now_local().unix_millis());
    record.status = DeliveryStatus::Pending;
    record.attempts = 0;
    record.updated_at = Timestamp::now_local();
    bridge
        .kv
        .put(&key, encode(&record))
        .await
        .map_err(BridgeError::store)?;
    publish(bridge, &subject, &msg_id, &record.echo).await?;
    Ok(record)
}

impl Bridge {
    /// Publishes an event on `GF_EVENTS` (plain publish, like the coordinator's).
    pub(crate) fn event(&self, kind: EventKind, level: Level, echo: &Echo, message: String) {
        let e = Event {
            time: Timestamp::now_local(),
            kind,
            level,
            job_id: Some(echo.job_id),
            worker_id: None,
            epoch: Some(echo.epoch),
            state: Some(echo.state),
            message,
            source: self.id.clone(),
        };
        let client = self.client.clone();
        tokio::spawn(async move {
            client.publish(names::event(kind), encode(&e)).await.ok();
        });
    }
}
