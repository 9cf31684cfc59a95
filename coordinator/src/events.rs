//! Publishing to `GF_EVENTS` without making the caller wait.
//!
//! [`EventSink`] is a cheap handle; one task owns the publishes. They are plain NATS
//! publishes on subjects the `GF_EVENTS` stream captures, not acknowledged JetStream
//! publishes: a job's state lives in the jobs bucket, events only narrate it, and an
//! ack per event was a quarter of the server's replies per job under load. What that
//! gives up: an event published while the stream is unavailable (e.g. during a NATS
//! restart) is lost without a warning. Closing every handle ends the task after a
//! flush, so shutdown still hands every queued event to the server.

use gf_schemas::{names, Event, EventKind, JobId, JobState, Level, Timestamp, WorkerId};
use tokio::sync::mpsc;

const QUEUE: usize = 4096;

#[derive(Clone)]
pub struct EventSink {
    tx: mpsc::Sender<Event>,
    source: String,
}

impl EventSink {
    /// Starts the publishing task; it ends when every sink handle is dropped.
    pub fn start(
        client: async_nats::Client,
        source: String,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(publish_loop(client, rx));
        (Self { tx, source }, task)
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
        if let Err(e) = self.tx.try_send(event) {
            tracing::warn!(error = %e, "event queue full, dropping event");
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

async fn publish_loop(client: async_nats::Client, mut rx: mpsc::Receiver<Event>) {
    while let Some(ev) = rx.recv().await {
        let subject = names::event(ev.kind);
        let payload = crate::store::encode(&ev);
        if let Err(e) = client.publish(subject, payload).await {
            tracing::warn!(error = %e, "event publish failed");
        }
    }
    if let Err(e) = client.flush().await {
        tracing::warn!(error = %e, "events not flushed");
    }
}
