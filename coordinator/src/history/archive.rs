//! The archive: every finished job's record copied into `GF_ARCHIVE` before its grace
//! period in `gf_jobs` can end, and found there by id.
//!
//! The scheduler leader archives: its view already takes in, decodes and orders every
//! job write (its watch of `gf_jobs`), so it hands each finished record to the
//! [`Archiver`] task, which publishes it to
//! `gf.archive.<created yyyymmdd>.<state>.<queue>.<id>` with `Nats-Msg-Id:
//! <id>.<revision>` (a repeat is dropped by the duplicate window and in any case
//! replaces the same subject: one message per subject). A durable consumer of its own
//! (what this was until issue 20's phase E) cost three deliveries, three decodes and
//! three acks per job — a third of the server's messages per job — for records the
//! leader had decoded already.
//!
//! At least once, across crashes and leader changes, by a position: the task keeps
//! `through`, the highest revision such that every finished write at or below it is
//! archived (or was superseded before the view saw it), and stores it in
//! `gf_archive_position` (compare-and-set, only ever raised, about once a second). A
//! new term's view replays the bucket and hands over the finished records above the
//! stored position, so whatever a killed leader had not archived is archived by the
//! next. A record handed over twice is harmless (the message id, the subject).
//!
//! Invariants:
//! - A finished revision stays in `gf_jobs` for its whole grace period, so the archive
//!   may lag by anything short of the shortest grace period and still miss nothing.
//!   `gf_archive_lag_seconds` (age of the oldest job write above the position) is
//!   exported and alerted on long before that.
//! - The position only claims what this task archived or saw superseded: a write is
//!   below it only once the view delivered everything up to it and every finished
//!   record up to it was acknowledged by the archive stream.
//! - A write superseded before the view reached it (a requeue within the grace
//!   period) is never delivered; a job archived and then requeued has its archived
//!   copy removed at the requeue ([`forget`]), so at most one copy per job exists once
//!   the archive has caught up.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use gf_schemas::{names, JobId, JobRecord, Timestamp};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::StoreError;

/// Archive publishes awaiting their ack at once.
const IN_FLIGHT: usize = 256;
/// Finished records handed over and not yet taken by the task; a feed that finds the
/// queue full reports [`Feed::overflowed`] and the leader's view replays.
const QUEUED: usize = 50_000;
/// How often the position is stored (when it moved) and failed publishes retried.
const STORE_PERIOD: Duration = Duration::from_secs(1);
/// A failed publish is tried again after at least this long.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// At shutdown, the longest wait for publishes in flight before the position is
/// stored for the last time (what is left is archived again by the next leader).
const DRAIN: Duration = Duration::from_secs(2);
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
    // Not `format("%Y%m%d")`: that parses its pattern on every call, and this runs for
    // every finished job on the leader.
    use chrono::Datelike;
    let d = chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .date_naive();
    format!("{:04}{:02}{:02}", d.year(), d.month(), d.day())
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

/// The stored position (`None` when its value does not parse) and its entry's
/// revision; `None` when none is stored yet.
async fn read_stored(bucket: &kv::Store) -> Result<Option<(Option<u64>, u64)>, StoreError> {
    match bucket
        .entry(names::ARCHIVE_POSITION_KEY)
        .await
        .map_err(transport)?
    {
        Some(e) if e.operation == kv::Operation::Put => {
            let through = std::str::from_utf8(&e.value)
                .ok()
                .and_then(|t| t.parse().ok());
            Ok(Some((through, e.revision)))
        }
        _ => Ok(None),
    }
}

/// The stored position and its entry's revision; `None` when none is stored yet.
async fn read_position(bucket: &kv::Store) -> Result<Option<(u64, u64)>, StoreError> {
    match read_stored(bucket).await? {
        Some((Some(through), revision)) => Ok(Some((through, revision))),
        Some((None, _)) => Err(StoreError::Corrupt {
            key: format!(
                "{}.{}",
                names::BUCKET_ARCHIVE_POSITION,
                names::ARCHIVE_POSITION_KEY
            ),
            error: "not a revision".into(),
        }),
        None => Ok(None),
    }
}

/// The archive's position: every finished job write up to this `gf_jobs` revision is
/// archived. 0 when none is stored yet (nothing is known to be archived).
pub async fn position(js: &jetstream::Context) -> Result<u64, StoreError> {
    let bucket = js
        .get_key_value(names::BUCKET_ARCHIVE_POSITION)
        .await
        .map_err(|e| transport(format!("bucket {}: {e}", names::BUCKET_ARCHIVE_POSITION)))?;
    Ok(read_position(&bucket)
        .await?
        .map_or(0, |(through, _)| through))
}

/// Raises the stored position to `through`; never lowers it (another coordinator's
/// archiver may have stored a higher one, as true as this). Returns what is stored.
///
/// A stored value that does not parse is replaced: a view that read it began from 0
/// (see [`Archiver::feed`]) and handed over every finished record, one that began
/// before read a true position, so `through` is true; left alone, every later view
/// would archive the whole bucket again.
async fn raise_position(bucket: &kv::Store, through: u64) -> Result<u64, StoreError> {
    let key = names::ARCHIVE_POSITION_KEY;
    for _ in 0..3 {
        let value = bytes::Bytes::from(through.to_string());
        let written = match read_stored(bucket).await? {
            Some((Some(stored), _)) if stored >= through => return Ok(stored),
            Some((stored, revision)) => {
                if stored.is_none() {
                    tracing::warn!(
                        through,
                        "archiver: the stored position did not parse; replacing it"
                    );
                }
                bucket.update(key, value, revision).await.is_ok()
            }
            None => bucket.create(key, value).await.is_ok(),
        };
        if written {
            return Ok(through);
        }
    }
    Err(StoreError::Conflict(format!(
        "{}.{key}",
        names::BUCKET_ARCHIVE_POSITION
    )))
}

/// Publishes `rec` (the job write at revision `rev`, `body` as stored) to the archive
/// and waits for the stream's ack; hands the record back with the result.
fn publish(
    js: &jetstream::Context,
    rec: Box<JobRecord>,
    rev: u64,
    body: Bytes,
) -> impl Future<Output = (u64, Box<JobRecord>, Bytes, Result<(), StoreError>)> {
    let js = js.clone();
    async move {
        let subject = names::archive(&day_of(&rec.id), rec.state, &rec.spec.queue, &rec.id);
        let mut headers = HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            format!("{}.{rev}", rec.id).as_str(),
        );
        let sent = async {
            js.publish_with_headers(subject, headers, body.clone())
                .await
                .map_err(transport)?
                .await
                .map_err(transport)?;
            Ok(())
        }
        .await;
        (rev, rec, body, sent)
    }
}

/// What the leader's view hands the archiver, in the order it took it in.
enum Handed {
    /// A finished record, at its revision, and as stored when the view had that.
    Finished(Box<JobRecord>, u64, Option<Bytes>),
    /// The view has taken in every job write up to this revision.
    Seen(u64),
}

/// The leader's end of the archiver for one view (a term, or a replay within one):
/// the finished records it takes in above the position stored when it started, and
/// how far it got. Never blocks the leader: when the task's queue is full the feed
/// reports [`Feed::overflowed`] and hands over nothing more.
pub struct Feed {
    tx: mpsc::Sender<Handed>,
    /// Finished writes at or below this revision were archived before the view began.
    from: u64,
    overflowed: bool,
}

impl Feed {
    /// The view took in `rec` (finished) at revision `rev`; `raw` is the record as
    /// the watch delivered it, if it came that way (else the archiver encodes it).
    pub fn finished(&mut self, rec: JobRecord, rev: u64, raw: Option<Bytes>) {
        if rev > self.from && rec.state.is_terminal() {
            self.hand(Handed::Finished(Box::new(rec), rev, raw));
        }
    }

    /// The view took in every job write up to revision `rev`.
    pub fn seen(&mut self, rev: u64) {
        self.hand(Handed::Seen(rev));
    }

    /// Something could not be handed over: the view must be built again (a replay
    /// hands over everything above the stored position once more).
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    fn hand(&mut self, h: Handed) {
        if self.overflowed {
            return;
        }
        if self.tx.try_send(h).is_err() {
            tracing::warn!(
                queued = QUEUED,
                "archiver: its queue is full (is GF_ARCHIVE writable?); the leader's view replays"
            );
            self.overflowed = true;
        }
    }
}

/// Hands out [`Feed`]s to the scheduler leader's views.
#[derive(Clone)]
pub struct Archiver {
    tx: mpsc::Sender<Handed>,
    js: jetstream::Context,
}

impl Archiver {
    /// A feed for a view about to replay the jobs bucket: it hands over finished
    /// records above the stored position (all of them when the position cannot be
    /// read: a repeat is harmless).
    pub async fn feed(&self) -> Feed {
        let from = position(&self.js).await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "archiver: position unreadable; archiving every finished job in the bucket again");
            0
        });
        Feed {
            tx: self.tx.clone(),
            from,
            overflowed: false,
        }
    }
}

/// Starts the archiver task on this coordinator (it archives what the leader's views
/// hand it, so only while this coordinator leads, and finishes what it has after a
/// term ends). It stops when `shutdown` fires, after up to [`DRAIN`] for the publishes
/// in flight and a last store of its position.
pub fn start(js: jetstream::Context, shutdown: CancellationToken) -> (Archiver, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(QUEUED);
    let task = tokio::spawn(run(js.clone(), rx, shutdown));
    (Archiver { tx, js }, task)
}

/// Revisions handed over and not archived yet (in flight, or waiting for a retry),
/// each with how many copies are open (a replay can hand a record over again).
#[derive(Default)]
struct Open(BTreeMap<u64, u32>);

impl Open {
    fn add(&mut self, rev: u64) {
        *self.0.entry(rev).or_default() += 1;
    }

    fn done(&mut self, rev: u64) {
        if let std::collections::btree_map::Entry::Occupied(mut e) = self.0.entry(rev) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }

    /// The position these allow when the views have seen everything up to `seen`.
    fn through(&self, seen: u64) -> u64 {
        self.0
            .keys()
            .next()
            // Stream revisions start at 1; saturating all the same.
            .map_or(seen, |&lowest| seen.min(lowest.saturating_sub(1)))
    }
}

async fn run(js: jetstream::Context, mut rx: mpsc::Receiver<Handed>, shutdown: CancellationToken) {
    // The consumer that fed the archive before it was the leader's: nothing reads it.
    if let Ok(s) = js
        .get_stream_no_info(format!("KV_{}", names::BUCKET_JOBS))
        .await
    {
        if s.delete_consumer(names::ARCHIVER_CONSUMER).await.is_ok() {
            tracing::info!(
                consumer = names::ARCHIVER_CONSUMER,
                "archiver: removed the consumer earlier versions archived from"
            );
        }
    }
    let mut bucket: Option<kv::Store> = None;
    let mut acks = FuturesUnordered::new();
    let mut open = Open::default();
    let mut retry: VecDeque<(Instant, u64, Box<JobRecord>, Bytes)> = VecDeque::new();
    let (mut seen, mut stored) = (0u64, 0u64);
    let mut store_tick = tokio::time::interval(STORE_PERIOD);
    store_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut lag_tick = tokio::time::interval(LAG_PERIOD);
    lag_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some((rev, rec, body, sent)) = acks.next(), if !acks.is_empty() => {
                let rec: Box<JobRecord> = rec;
                match sent {
                    Ok(()) => {
                        open.done(rev);
                        crate::metrics::archived(rec.state);
                    }
                    Err(e) => {
                        tracing::warn!(job = %rec.id, error = %e, "archiver: not archived; trying again");
                        retry.push_back((Instant::now() + RETRY_AFTER, rev, rec, body));
                    }
                }
            }
            handed = rx.recv(), if acks.len() < IN_FLIGHT => match handed {
                Some(Handed::Finished(rec, rev, raw)) => {
                    open.add(rev);
                    let body = raw.unwrap_or_else(|| crate::store::encode(&rec));
                    acks.push(publish(&js, rec, rev, body));
                }
                Some(Handed::Seen(rev)) => seen = seen.max(rev),
                None => break,
            },
            _ = store_tick.tick() => {
                while acks.len() < IN_FLIGHT && retry.front().is_some_and(|(at, ..)| *at <= Instant::now()) {
                    let (_, rev, rec, body) = retry.pop_front().expect("front checked");
                    acks.push(publish(&js, rec, rev, body));
                }
                // Bounded, like the lag below: with NATS unreachable these requests
                // wait out their timeouts, and nothing here may hold up a shutdown.
                let through = open.through(seen);
                let _ = tokio::time::timeout(STORE_PERIOD, store(&js, &mut bucket, through, &mut stored)).await;
            }
            _ = lag_tick.tick() => {
                match tokio::time::timeout(STORE_PERIOD, lag(&js)).await {
                    Ok(Ok(l)) => crate::metrics::archive_lag(l),
                    Ok(Err(e)) => tracing::debug!(error = %e, "archiver: lag"),
                    Err(_) => tracing::debug!("archiver: lag not measured in time"),
                }
            }
        }
    }
    // What was handed over and already sent gets its ack if it comes soon; what is
    // still queued is left to the next leader's replay (above the stored position).
    let _ = tokio::time::timeout(DRAIN, async {
        while let Some((rev, _, _, sent)) = acks.next().await {
            if sent.is_ok() {
                open.done(rev);
            }
        }
    })
    .await;
    while let Ok(h) = rx.try_recv() {
        match h {
            Handed::Seen(rev) => seen = seen.max(rev),
            // Not archived: it holds the position below it.
            Handed::Finished(_, rev, _) => open.add(rev),
        }
    }
    let _ = tokio::time::timeout(
        DRAIN,
        store(&js, &mut bucket, open.through(seen), &mut stored),
    )
    .await;
}

/// Stores `through` when it is above what this task stored last.
async fn store(
    js: &jetstream::Context,
    bucket: &mut Option<kv::Store>,
    through: u64,
    stored: &mut u64,
) {
    if through <= *stored {
        return;
    }
    if bucket.is_none() {
        *bucket = js.get_key_value(names::BUCKET_ARCHIVE_POSITION).await.ok();
    }
    let Some(b) = bucket else { return };
    match raise_position(b, through).await {
        Ok(now) => *stored = now,
        Err(e) => tracing::debug!(error = %e, through, "archiver: position not stored; next time"),
    }
}

/// How far behind the archive is: the age (by the server's clock, from the stream's
/// timestamps) of the oldest job write above the stored position, 0 when there is none.
pub async fn lag(js: &jetstream::Context) -> Result<Duration, StoreError> {
    let through = position(js).await?;
    let stream = js
        .get_stream_no_info(format!("KV_{}", names::BUCKET_JOBS))
        .await
        .map_err(transport)?;
    let oldest = match stream
        .direct_get_next_for_subject(names::js::kv_all(names::BUCKET_JOBS), Some(through + 1))
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

#[cfg(test)]
mod unit {
    use super::{Feed, Handed, Open};
    use gf_schemas::{JobId, JobRecord, JobSpec, JobState, Timestamp};

    fn finished() -> JobRecord {
        let mut rec = JobRecord::new(
            JobId::new(),
            JobSpec::command(["true"]),
            Timestamp::from_unix_millis(0),
        );
        rec.state = JobState::Succeeded;
        rec
    }

    /// A full queue never blocks the leader: the feed says it overflowed (the view
    /// must replay) and hands over nothing more, not even what would fit again.
    #[test]
    fn a_full_queue_makes_the_feed_overflow_and_stop() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(2);
        let mut feed = Feed {
            tx,
            from: 10,
            overflowed: false,
        };
        feed.finished(finished(), 9, None);
        let mut live = finished();
        live.state = JobState::Running;
        feed.finished(live, 11, None);
        assert!(
            rx.try_recv().is_err(),
            "at or below `from`, or not finished: not handed"
        );
        feed.finished(finished(), 11, None);
        feed.seen(11);
        assert!(!feed.overflowed());
        feed.finished(finished(), 12, None);
        assert!(feed.overflowed(), "the third did not fit");
        assert!(matches!(rx.try_recv(), Ok(Handed::Finished(_, 11, _))));
        assert!(matches!(rx.try_recv(), Ok(Handed::Seen(11))));
        feed.seen(12);
        assert!(rx.try_recv().is_err(), "nothing after an overflow");
    }

    #[test]
    fn the_position_stops_below_the_lowest_open_revision() {
        let mut open = Open::default();
        assert_eq!(open.through(10), 10, "nothing open: everything seen");
        open.add(4);
        open.add(7);
        open.add(4);
        assert_eq!(open.through(10), 3);
        open.done(4);
        assert_eq!(open.through(10), 3, "a second copy of 4 is still open");
        open.done(4);
        assert_eq!(open.through(10), 6);
        assert_eq!(open.through(5), 5, "never above what the views have seen");
        open.done(7);
        open.done(7);
        assert_eq!(open.through(12), 12);
    }
}

#[cfg(test)]
mod position_store {
    use super::*;

    /// Against a real `nats-server`: the position only rises, and a value that does not
    /// parse is reported by `position` and replaced by the next raise.
    #[tokio::test]
    async fn the_position_only_rises_and_an_unreadable_one_is_replaced() -> anyhow::Result<()> {
        let nats = gf_testkit::NatsServer::start()?;
        let js = jetstream::new(async_nats::connect(nats.url()).await?);
        crate::store::Store::open(js.clone(), 1).await?;
        let bucket = js.get_key_value(names::BUCKET_ARCHIVE_POSITION).await?;
        assert_eq!(position(&js).await?, 0, "nothing stored yet");
        assert_eq!(raise_position(&bucket, 7).await?, 7);
        assert_eq!(raise_position(&bucket, 5).await?, 7, "never lowered");
        assert_eq!(position(&js).await?, 7);
        bucket
            .put(names::ARCHIVE_POSITION_KEY, "not a revision".into())
            .await?;
        assert!(
            matches!(position(&js).await, Err(StoreError::Corrupt { .. })),
            "an unreadable value is an error, not 0"
        );
        assert_eq!(raise_position(&bucket, 3).await?, 3);
        assert_eq!(position(&js).await?, 3, "replaced by the raise");
        Ok(())
    }
}
