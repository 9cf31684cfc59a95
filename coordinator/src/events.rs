//! Publishing to `GF_EVENTS` without making the caller wait for each ack.
//!
//! [`EventSink`] is a cheap handle; one task owns the JetStream publishes and keeps up
//! to `MAX_PENDING_ACKS` acks in flight. Closing every handle ends the task after the
//! last ack, so shutdown flushes the audit trail.

use futures::stream::{FuturesOrdered, StreamExt};
use gf_schemas::{names, Event, EventKind, JobId, JobState, Level, Timestamp, WorkerId};
use tokio::sync::mpsc;

const MAX_PENDING_ACKS: usize = 256;
const QUEUE: usize = 4096;

#[derive(Clone)]
pub struct EventSink {
    tx: mpsc::Sender<Event>,
    source: String,
}

impl EventSink {
    /// Starts the publishing task; it ends when every sink handle is dropped.
    pub fn start(
        js: async_nats::jetstream::Context,
        source: String,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(publish_loop(js, rx));
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

async fn publish_loop(js: async_nats::jetstream::Context, mut rx: mpsc::Receiver<Event>) {
    let mut acks = FuturesOrdered::new();
    loop {
        tokio::select! {
            biased;
            Some(ack) = acks.next(), if !acks.is_empty() => {
                if let Err(e) = ack {
                    tracing::warn!(error = %e, "event not stored");
                }
            }
            ev = rx.recv(), if acks.len() < MAX_PENDING_ACKS => {
                let Some(ev) = ev else { break };
                let subject = names::event(ev.kind);
                let payload = crate::store::encode(&ev);
                match js.publish(subject, payload).await {
                    Ok(fut) => acks.push_back(std::future::IntoFuture::into_future(fut)),
                    Err(e) => tracing::warn!(error = %e, "event publish failed"),
                }
            }
        }
    }
    while let Some(ack) = acks.next().await {
        if let Err(e) = ack {
            tracing::warn!(error = %e, "event not stored");
        }
    }
}
