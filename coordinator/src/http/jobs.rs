//! Jobs: list (filters, cursor paging), get, submit, cancel, and the live log stream.

use std::convert::Infallible;
use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::Json;
use futures::{Stream, StreamExt};
use gf_schemas::{names, JobId, JobRecord, JobState};
use schemars::JsonSchema;
use serde::Deserialize;

use super::doc::{Created, JsonBody};
use super::{parse_job_id, ApiError, AppState};
use aide::NoApi;

#[derive(Deserialize, JsonSchema)]
pub struct ListQuery {
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// Only jobs of this queue.
    pub queue: Option<String>,
    /// Only jobs of this product.
    pub product: Option<String>,
    /// Page size, 1 to 500 (default 50).
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page: continue after that job (newest first).
    pub cursor: Option<String>,
}

pub use gf_schemas::rpc::JobPage;

/// Lists jobs from the live store, then (finished states) the archive, never scanning
/// history ([`crate::history::list`]).
pub async fn list(
    State(st): State<AppState>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<JobPage>, ApiError> {
    let Query(q) = q?;
    let req = gf_schemas::rpc::JobListRequest {
        state: q.state,
        queue: q.queue,
        product: q.product,
        cursor: q.cursor,
        limit: q.limit,
    };
    Ok(Json(
        crate::history::list::list(&st.service.store, &st.stats, &req).await?,
    ))
}

pub async fn submit(
    State(st): State<AppState>,
    body: JsonBody<gf_schemas::JobSpec>,
) -> Result<Created<gf_schemas::rpc::SubmitReply>, ApiError> {
    let reply = st.service.submit(&body.0).await?;
    Ok(Created(!reply.duplicate, reply))
}

pub async fn get(
    State(st): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<JobRecord>, ApiError> {
    let id = parse_job_id(&id?.0)?;
    Ok(Json(st.service.get_job(&id).await?))
}

#[derive(Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct CancelBody {
    /// Recorded with the job and in the event.
    pub reason: Option<String>,
}

pub async fn cancel(
    State(st): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    body: JsonBody<CancelBody>,
) -> Result<Json<gf_schemas::rpc::CancelReply>, ApiError> {
    let id = parse_job_id(&id?.0)?;
    let body = body.0;
    let reason = if body.is_empty() {
        None
    } else {
        serde_json::from_slice::<CancelBody>(&body)
            .map_err(|e| ApiError::invalid(format!("malformed cancel body: {e}")))?
            .reason
    };
    Ok(Json(st.service.cancel(&id, reason).await?))
}

/// `GET /api/jobs/{id}/logs/stream`: every line of the job's log from the start (or
/// after `Last-Event-ID`), then new lines as they are written. Each SSE event is
/// `event: log`, `id: <GF_LOGS stream sequence>`, `data: <LogLine JSON>`; once the job
/// has ended and every line was sent, one `event: end` (data: the final state) closes
/// the stream. Because the id is the stream's own sequence, a reconnect resumes exactly
/// after the last line received, on any coordinator.
///
/// Only lines from a factory that held the job at the line's epoch are sent
/// ([`gf_schemas::LogOrigins`]; docs/security.md): a factory may publish under any job
/// id on its own log subjects, and such lines are dropped here, so the dashboard never
/// shows them.
pub async fn logs_stream(
    State(st): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<NoApi<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>>, ApiError> {
    let id = parse_job_id(&id?.0)?;
    // 404 for a job that does not exist, rather than an endless empty stream.
    let rec = st.service.get_job(&id).await?;
    let mut origins = gf_schemas::LogOrigins::new(id);
    origins.learn(&rec);
    let messages = super::resume_after(
        &st,
        names::STREAM_LOGS,
        names::job_logs(&id),
        &headers,
        DeliverPolicy::All,
    )
    .await?;
    let follow = LogFollow {
        messages: Box::pin(messages),
        jobs: st.service.store.clone(),
        service: st.service.clone(),
        origins,
        foreign: 0,
        id,
        check: tokio::time::interval(Duration::from_millis(500)),
        pending: 0,
        end_seen: false,
        finished: false,
        shutdown: st.shutdown.clone(),
    };
    let events = futures::stream::unfold(follow, |mut f| async move {
        let ev = f.next_event().await?;
        Some((Ok(ev), f))
    });
    Ok(NoApi(Sse::new(events).keep_alive(KeepAlive::default())))
}

type Messages = std::pin::Pin<
    Box<
        dyn Stream<
                Item = Result<
                    async_nats::jetstream::Message,
                    async_nats::jetstream::consumer::pull::OrderedError,
                >,
            > + Send,
    >,
>;

struct LogFollow {
    messages: Messages,
    jobs: crate::store::Store,
    /// To read the job again (live or archived) when a line's factory and epoch are
    /// not in the record yet.
    service: std::sync::Arc<crate::service::Service>,
    origins: gf_schemas::LogOrigins,
    /// Lines not sent: from a factory that did not hold the job at their epoch.
    foreign: u64,
    id: JobId,
    check: tokio::time::Interval,
    /// Lines the consumer said were still stored after the last one sent.
    pending: u64,
    end_seen: bool,
    finished: bool,
    shutdown: tokio_util::sync::CancellationToken,
}

impl LogFollow {
    /// Whether the line was written by a factory that held the job at its epoch.
    async fn by_holder(&mut self, m: &async_nats::jetstream::Message) -> bool {
        use gf_schemas::LineOrigin;
        let Ok(line) = serde_json::from_slice::<gf_schemas::LogLine>(&m.payload) else {
            return false;
        };
        let mut origin = self.origins.check(m.subject.as_str(), &line);
        if origin == LineOrigin::Unknown {
            if let Ok(rec) = self.service.get_job(&self.id).await {
                self.origins.learn(&rec);
            }
            origin = self.origins.check(m.subject.as_str(), &line);
        }
        if origin == LineOrigin::Holder {
            return true;
        }
        if self.foreign == 0 {
            tracing::warn!(job = %self.id, subject = %m.subject, epoch = line.epoch, "log line from a factory that did not hold the job at that epoch: not shown");
        }
        self.foreign += 1;
        false
    }

    async fn next_event(&mut self) -> Option<SseEvent> {
        if self.finished {
            return None;
        }
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return None,
                m = self.messages.next() => match m {
                    Some(Ok(m)) => {
                        let Ok(info) = m.info() else { continue };
                        self.pending = info.pending;
                        let seq = info.stream_sequence;
                        if !self.by_holder(&m).await {
                            continue;
                        }
                        let data = String::from_utf8_lossy(&m.payload).into_owned();
                        return Some(SseEvent::default().event("log").id(seq.to_string()).data(data));
                    }
                    Some(Err(e)) => {
                        tracing::debug!(job = %self.id, error = %e, "log stream hiccup");
                    }
                    None => return None,
                },
                _ = self.check.tick() => {
                    let state = self.jobs.load_job(&self.id).await.ok().flatten().map(|(r, _)| r.state);
                    if state.is_some_and(JobState::is_terminal) && self.pending == 0 {
                        // One more tick first: lines written just before the end arrive.
                        if self.end_seen {
                            self.finished = true;
                            let s = state.map(|s| s.as_str()).unwrap_or_default();
                            return Some(SseEvent::default().event("end").data(s));
                        }
                        self.end_seen = true;
                    }
                }
            }
        }
    }
}
