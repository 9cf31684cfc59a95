//! Publishing to `GF_EVENTS` without making the caller wait.
//!
//! [`EventSink`] is a cheap handle; one task owns the publishes. They are plain NATS
//! publishes on subjects the `GF_EVENTS` stream captures, not acknowledged JetStream
//! publishes: a job's state lives in the jobs bucket, events only narrate it, and an
//! ack per event was a quarter of the server's replies per job under load. What that
//! gives up: an event published while the stream is unavailable (e.g. during a NATS
//! restart) is lost without a warning. Dropping every handle, or [`EventTask::close`],
//! ends the task after a flush, so shutdown still hands every queued event to the
//! server.

use gf_schemas::{names, Event, EventKind, JobId, JobState, Level, Timestamp, WorkerId};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Events waiting to be published; beyond this they are dropped with a warning.
const QUEUE: usize = 16_384;

#[derive(Clone)]
pub struct EventSink {
    tx: mpsc::Sender<Event>,
    source: String,
}

/// The publishing task behind the [`EventSink`]s.
pub struct EventTask {
    handle: tokio::task::JoinHandle<()>,
    closing: CancellationToken,
}

impl EventTask {
    /// Publishes what is queued and ends the task, also while sink handles are still
    /// held (a caller embedding the coordinator may keep its service): events emitted
    /// after this are dropped. Call it once everything that must be narrated has been
    /// emitted.
    pub async fn close(self) {
        self.closing.cancel();
        if let Err(e) = self.handle.await {
            tracing::warn!(error = %e, "event publisher ended abnormally");
        }
    }
}

impl EventSink {
    /// Starts the publishing task; it ends when every sink handle is dropped, or at
    /// [`EventTask::close`].
    pub fn start(client: async_nats::Client, source: String) -> (Self, EventTask) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let closing = CancellationToken::new();
        let handle = tokio::spawn(publish_loop(client, rx, closing.clone()));
        (Self { tx, source }, EventTask { handle, closing })
    }

    /// Queues an event. Never blocks the caller on JetStream; if the queue is full the
    /// event is dropped with a warning (the KV state stays the truth).
    pub fn emit(
        &self,
        kind: EventKind,
        level: Level,
        job: Option<(&JobId, u64, JobState)>,
        worker: Option<&WorkerId>,
        message: impl Into<String>,
    ) {
        let event = Event {
            time: Timestamp::now_local(),
            kind,
            level,
            job_id: job.map(|j| *j.0),
            epoch: job.map(|j| j.1),
            state: job.map(|j| j.2),
            worker_id: worker.cloned(),
            message: message.into(),
            source: self.source.clone(),
        };
        match self.tx.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!("event queue full, dropping event")
            }
            Err(mpsc::error::TrySendError::Closed(e)) => {
                tracing::debug!(kind = e.kind.as_str(), "coordinator stopped; event dropped")
            }
        }
    }

    pub fn job(&self, kind: EventKind, rec: &gf_schemas::JobRecord, message: impl Into<String>) {
        let level = match kind {
            EventKind::JobDead | EventKind::JobUnplaceable => Level::Error,
            EventKind::JobFailed | EventKind::JobLeaseExpired | EventKind::JobRevoked => {
                Level::Warn
            }
            _ => Level::Info,
        };
        let worker = rec.lease.as_ref().map(|l| &l.worker);
        self.emit(
            kind,
            level,
            Some((&rec.id, rec.epoch, rec.state)),
            worker,
            message,
        );
    }
}

/// How long the first event of a message waits for company, and how many events one
/// message holds at most (512 events of a few hundred bytes stay far below NATS' 1 MB).
/// 20 ms is below what a person watching the dashboard notices, and long enough that at
/// a few hundred jobs/s a job's events share messages with other jobs' (with 2 ms, at
/// 800 jobs/s, events were still 1.4 stored messages per job; with 20 ms, 0.23).
/// Nothing on a job's path waits for its events.
const BATCH_WINDOW: std::time::Duration = std::time::Duration::from_millis(20);
const MAX_PER_FLUSH: usize = 512;
/// How long a stopping coordinator waits to flush what it published last.
const FLUSH_ON_EXIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Publishes what is queued, grouping the events that arrive within [`BATCH_WINDOW`] of
/// each other into one message per kind (a JSON array; a lone event stays an object,
/// see [`gf_schemas::decode_events`]). Under load a job's four or so events had been
/// four stored messages, as many as its record writes; batched they are a small
/// fraction. An event is at most `BATCH_WINDOW` later on the stream, and within one
/// window events of different kinds may be stored out of order (each carries its time).
/// The loop drains up to `MAX_PER_FLUSH` events per window, far more than a coordinator
/// emits, so the queue does not fill and drop events.
async fn publish_loop(
    client: async_nats::Client,
    mut rx: mpsc::Receiver<Event>,
    closing: CancellationToken,
) {
    let mut batch: Vec<Event> = Vec::with_capacity(MAX_PER_FLUSH);
    loop {
        let received = tokio::select! {
            n = rx.recv_many(&mut batch, MAX_PER_FLUSH) => n,
            // Closing the channel keeps what is queued: `recv_many` hands it over, then
            // answers 0.
            _ = closing.cancelled(), if !rx.is_closed() => {
                rx.close();
                continue;
            }
        };
        if received == 0 {
            break;
        }
        if batch.len() < MAX_PER_FLUSH {
            tokio::time::sleep(BATCH_WINDOW).await;
            while batch.len() < MAX_PER_FLUSH {
                match rx.try_recv() {
                    Ok(e) => batch.push(e),
                    Err(_) => break,
                }
            }
        }
        let mut by_kind: Vec<(EventKind, Vec<Event>)> = Vec::new();
        for e in batch.drain(..) {
            match by_kind.iter_mut().find(|(k, _)| *k == e.kind) {
                Some((_, same)) => same.push(e),
                None => by_kind.push((e.kind, vec![e])),
            }
        }
        for (kind, events) in by_kind {
            let payload = match events.as_slice() {
                [one] => crate::store::encode(one),
                many => crate::store::encode(&many),
            };
            if let Err(e) = client.publish(names::event(kind), payload).await {
                tracing::warn!(error = %e, "event publish failed");
            }
        }
    }
    // Bounded: with NATS unreachable a flush waits for a reconnect that may never come.
    match tokio::time::timeout(FLUSH_ON_EXIT, client.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "events not flushed"),
        Err(_) => tracing::warn!("events not flushed: NATS unreachable"),
    }
}

/// Reading `GF_EVENTS` back in tests.
#[cfg(test)]
pub(crate) mod testing {
    use futures::StreamExt;
    use gf_schemas::{names, Event};

    /// Reads `GF_EVENTS` from the start, one stored message at a time as
    /// `(subject, its events)`, until `enough` holds for every event read so far; fails
    /// if the stream goes 10 s without a message first. Events are plain publishes that
    /// the stream stores on its own schedule, even after the publisher flushed, so a
    /// test waits for what it expects rather than trusting a count taken at once.
    pub(crate) async fn read_until(
        js: &async_nats::jetstream::Context,
        enough: impl Fn(&[Event]) -> bool,
    ) -> anyhow::Result<Vec<(String, Vec<Event>)>> {
        let mut msgs = js
            .get_stream(names::STREAM_EVENTS)
            .await?
            .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
            .await?
            .messages()
            .await?;
        let mut read = Vec::new();
        let mut events = Vec::new();
        while !enough(&events) {
            let m = tokio::time::timeout(std::time::Duration::from_secs(10), msgs.next())
                .await
                .map_err(|_| anyhow::anyhow!("no more events after {}", events.len()))?
                .expect("an ordered consumer's messages do not end")?;
            let batch = gf_schemas::decode_events(&m.payload)?;
            events.extend(batch.iter().cloned());
            read.push((m.subject.to_string(), batch));
        }
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A burst of events becomes a few messages, one kind per message, and reading them
    /// back gives every event once.
    #[tokio::test]
    async fn a_burst_is_batched_by_kind_and_nothing_is_lost() -> anyhow::Result<()> {
        let nats = gf_testkit::NatsServer::start()?;
        let client = async_nats::connect(nats.url()).await?;
        let js = async_nats::jetstream::new(client.clone());
        crate::store::Store::open(js.clone(), 1).await?;
        let (sink, task) = EventSink::start(client, "test".into());
        let kinds = [EventKind::JobSubmitted, EventKind::JobSucceeded];
        for i in 0..300 {
            sink.emit(kinds[i % 2], Level::Info, None, None, format!("event {i}"));
        }
        drop(sink);
        task.close().await;
        let read = testing::read_until(&js, |events| events.len() >= 300).await?;
        let mut seen = Vec::new();
        for (subject, events) in &read {
            for e in events {
                assert_eq!(
                    subject.as_str(),
                    names::event(e.kind),
                    "kind of its subject"
                );
                seen.push(e.message.clone());
            }
        }
        seen.sort();
        let mut want: Vec<String> = (0..300).map(|i| format!("event {i}")).collect();
        want.sort();
        assert_eq!(seen, want);
        let stored = read.len() as u64;
        let mut stream = js.get_stream(names::STREAM_EVENTS).await?;
        assert_eq!(
            stream.info().await?.state.messages,
            stored,
            "nothing else stored"
        );
        assert!(stored < 300, "{stored} messages for 300 events");
        Ok(())
    }
}
