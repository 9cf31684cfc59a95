//! The archive: every finished job's record copied into `GF_ARCHIVE` before its grace
//! period in `gf_jobs` can end, and found there by id.
//!
//! A durable pull consumer (`gf_archiver`) on the jobs bucket's stream, shared by the
//! coordinators (JetStream hands each message to one of them), sees every job write.
//! For a terminal one it publishes the record to
//! `gf.archive.<created yyyymmdd>.<state>.<queue>.<id>` with `Nats-Msg-Id:
//! <id>.<revision>`, waits for the stream's ack, and only then acks the write: at least
//! once, and a repeat is dropped by the duplicate window and in any case replaces the
//! same subject (one message per subject).
//!
//! Invariant: a terminal revision stays in `gf_jobs` for its whole grace period, so the
//! archiver may lag by anything short of the shortest grace period and still miss
//! nothing. `gf_archive_lag_seconds` (age of the oldest job write not yet handled) is
//! exported and alerted on long before that.
//!
//! A write superseded before the archiver reached it (a requeue within the grace
//! period) is gone from the stream (one revision per key) and never delivered; a job
//! archived and then requeued has its archived copy removed at the requeue
//! ([`forget`]), so at most one copy per job exists once the archiver has caught up.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream, AckKind};
use async_nats::HeaderMap;
use futures::StreamExt;
use gf_schemas::{names, JobId, JobRecord, Timestamp};
use tokio_util::sync::CancellationToken;

use crate::error::StoreError;

/// Writes the archiver may have in flight (also its consumer's `max_ack_pending`).
const IN_FLIGHT: usize = 256;
/// How often the lag is measured.
const LAG_PERIOD: Duration = Duration::from_secs(10);

fn transport(e: impl std::fmt::Display) -> StoreError {
    StoreError::Transport(e.to_string())
}

/// The archive stream's settings: `retention` is how long a record is kept, counted
/// from when it was archived.
pub fn stream_config(replicas: usize, retention: Duration) -> stream::Config {
    stream::Config {
        name: names::STREAM_ARCHIVE.into(),
        description: Some("Gigafactory finished jobs, by creation day, state and queue".into()),
        subjects: vec![names::ARCHIVE_ALL.into()],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        max_age: retention,
        // One record per job and state: a repeat replaces, never adds.
        max_messages_per_subject: 1,
        discard: stream::DiscardPolicy::Old,
        allow_direct: true,
        compression: Some(stream::Compression::S2),
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    }
}

/// Creates the archive stream, or brings an existing one's retention to `retention`.
pub async fn ensure_stream(
    js: &jetstream::Context,
    replicas: usize,
    retention: Duration,
) -> Result<(), StoreError> {
    let want = stream_config(replicas, retention);
    match js.get_stream(names::STREAM_ARCHIVE).await {
        Ok(mut s) => {
            let have = s.info().await.map_err(transport)?.config.clone();
            if have.max_age != retention {
                let cfg = stream::Config {
                    max_age: retention,
                    ..have
                };
                js.update_stream(&cfg).await.map_err(transport)?;
            }
        }
        Err(_) => {
            js.create_stream(want).await.map_err(|e| {
                transport(format!("creating stream {}: {e}", names::STREAM_ARCHIVE))
            })?;
        }
    }
    Ok(())
}

/// The creation day of a job, `yyyymmdd` (UTC), from its UUIDv7 id.
pub fn day_of(id: &JobId) -> String {
    let ms = super::created_at(id).map_or(0, |t| t.unix_millis());
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y%m%d")
        .to_string()
}

/// The archived record of job `id`, if the archive holds it: one direct get of the
/// last message on `gf.archive.<day>.*.*.<id>`.
pub async fn find(js: &jetstream::Context, id: &JobId) -> Result<Option<JobRecord>, StoreError> {
    let stream = match js.get_stream_no_info(names::STREAM_ARCHIVE).await {
        Ok(s) => s,
        Err(e) => return Err(transport(e)),
    };
    match stream
        .direct_get_last_for_subject(names::archive_job(&day_of(id), id))
        .await
    {
        Ok(m) => serde_json::from_slice(&m.payload)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                key: m.subject.to_string(),
                error: e.to_string(),
            }),
        Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => Ok(None),
        Err(e) => Err(transport(e)),
    }
}

/// Removes job `id`'s archived copy (it was requeued: live again).
pub async fn forget(js: &jetstream::Context, id: &JobId) -> Result<(), StoreError> {
    let stream = js
        .get_stream_no_info(names::STREAM_ARCHIVE)
        .await
        .map_err(transport)?;
    stream
        .purge()
        .filter(names::archive_job(&day_of(id), id))
        .await
        .map_err(transport)?;
    Ok(())
}

/// Publishes `rec` (the job write at stream sequence `seq`) to the archive and waits
/// for the stream's ack.
async fn archive(js: &jetstream::Context, rec: &JobRecord, seq: u64) -> Result<(), StoreError> {
    let subject = names::archive(&day_of(&rec.id), rec.state, &rec.spec.queue, &rec.id);
    let mut headers = HeaderMap::new();
    headers.insert(
        async_nats::header::NATS_MESSAGE_ID,
        format!("{}.{seq}", rec.id).as_str(),
    );
    js.publish_with_headers(subject, headers, crate::store::encode(rec))
        .await
        .map_err(transport)?
        .await
        .map_err(transport)?;
    crate::metrics::archived(rec.state);
    Ok(())
}

/// What one job write asks of the archiver.
enum Work {
    /// Not a finished record (a live state, a deletion, an expiry marker): just ack.
    Skip,
    Archive(Box<JobRecord>),
}

fn classify(msg: &jetstream::Message) -> Work {
    let headers = msg.headers.as_ref();
    let op = headers.and_then(|h| h.get("KV-Operation"));
    let marker = headers.and_then(|h| h.get(async_nats::header::NATS_MARKER_REASON));
    if op.is_some_and(|o| o.as_str() != "PUT") || marker.is_some() {
        return Work::Skip;
    }
    match serde_json::from_slice::<JobRecord>(&msg.payload) {
        Ok(rec) if rec.state.is_terminal() => Work::Archive(Box::new(rec)),
        Ok(_) => Work::Skip,
        Err(e) => {
            tracing::error!(subject = %msg.subject, error = %e, "archiver: unreadable job record skipped");
            Work::Skip
        }
    }
}

/// Handles one job write; the write is acked only once its record is archived.
async fn handle(js: &jetstream::Context, msg: jetstream::Message) {
    let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
    if let Work::Archive(rec) = classify(&msg) {
        if let Err(e) = archive(js, &rec, seq).await {
            tracing::warn!(job = %rec.id, error = %e, "archiver: not archived; redelivered later");
            let _ = msg
                .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                .await;
            return;
        }
    }
    if let Err(e) = msg.ack().await {
        // Redelivered after the ack wait; archiving it again is harmless.
        tracing::debug!(error = %e, "archiver: ack failed");
    }
}

async fn consumer(
    js: &jetstream::Context,
) -> Result<consumer::Consumer<consumer::pull::Config>, StoreError> {
    let stream = js
        .get_stream_no_info(format!("KV_{}", names::BUCKET_JOBS))
        .await
        .map_err(transport)?;
    stream
        .get_or_create_consumer(
            names::ARCHIVER_CONSUMER,
            consumer::pull::Config {
                durable_name: Some(names::ARCHIVER_CONSUMER.into()),
                description: Some("Gigafactory archiver: finished jobs into GF_ARCHIVE".into()),
                // From the start: on an existing deployment the first run archives
                // what is already finished (the bucket holds one revision per job).
                deliver_policy: consumer::DeliverPolicy::All,
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                max_ack_pending: IN_FLIGHT as i64,
                filter_subject: names::js::kv_all(names::BUCKET_JOBS),
                ..Default::default()
            },
        )
        .await
        .map_err(transport)
}

/// How far behind the archiver is: the age (by the server's clock, from the stream's
/// timestamps) of the oldest job write not yet acked, 0 when it has caught up.
pub async fn lag(js: &jetstream::Context) -> Result<Duration, StoreError> {
    let stream = js
        .get_stream_no_info(format!("KV_{}", names::BUCKET_JOBS))
        .await
        .map_err(transport)?;
    // Only looks: `gf doctor` uses it too and must not create the consumer.
    let mut c: consumer::Consumer<consumer::pull::Config> = stream
        .get_consumer(names::ARCHIVER_CONSUMER)
        .await
        .map_err(|e| transport(format!("consumer {}: {e}", names::ARCHIVER_CONSUMER)))?;
    let info = c.info().await.map_err(transport)?;
    if info.num_pending == 0 && info.num_ack_pending == 0 {
        return Ok(Duration::ZERO);
    }
    let oldest = match stream
        .direct_get_next_for_subject(
            names::js::kv_all(names::BUCKET_JOBS),
            Some(info.ack_floor.stream_sequence + 1),
        )
        .await
    {
        Ok(m) => m.time,
        Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => return Ok(Duration::ZERO),
        Err(e) => return Err(transport(e)),
    };
    // The newest write's timestamp stands in for the server's "now".
    let newest = stream
        .direct_get_last_for_subject(names::js::kv_all(names::BUCKET_JOBS))
        .await
        .map(|m| m.time)
        .unwrap_or(oldest);
    let now = Timestamp::now_local().unix_millis();
    let newest_ms = (newest.unix_timestamp_nanos() / 1_000_000) as i64;
    let oldest_ms = (oldest.unix_timestamp_nanos() / 1_000_000) as i64;
    // Whichever is later: the local clock, or the newest write (a local clock behind
    // the server's must not hide lag).
    let now = now.max(newest_ms);
    Ok(Duration::from_millis(
        now.saturating_sub(oldest_ms).max(0) as u64
    ))
}

/// The archiver: runs on every coordinator until `shutdown`, sharing the durable
/// consumer; re-binds with backoff when the consumer or the connection fails.
pub async fn run(js: jetstream::Context, shutdown: CancellationToken) {
    let mut backoff = Duration::from_millis(250);
    let mut lag_tick = tokio::time::interval(LAG_PERIOD);
    lag_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let messages = match consumer(&js).await {
            Ok(c) => c.messages().await.map_err(transport),
            Err(e) => Err(e),
        };
        let messages = match messages {
            Ok(m) => {
                backoff = Duration::from_millis(250);
                m
            }
            Err(e) => {
                tracing::warn!(error = %e, "archiver: cannot bind its consumer; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        let js2 = js.clone();
        // Up to IN_FLIGHT writes handled at once; each acks its own message.
        let mut work = std::pin::pin!(messages
            .filter_map(|m| async move {
                match m {
                    Ok(m) => Some(m),
                    Err(e) => {
                        tracing::debug!(error = %e, "archiver: pull");
                        None
                    }
                }
            })
            .map(move |m| {
                let js = js2.clone();
                async move { handle(&js, m).await }
            })
            .buffer_unordered(IN_FLIGHT));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = lag_tick.tick() => {
                    match lag(&js).await {
                        Ok(l) => crate::metrics::archive_lag(l),
                        Err(e) => tracing::debug!(error = %e, "archiver: lag"),
                    }
                }
                done = work.next() => {
                    if done.is_none() {
                        break;
                    }
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
    }
}
