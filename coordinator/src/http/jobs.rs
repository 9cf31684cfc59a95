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
use serde::{Deserialize, Serialize};

use super::doc::{Created, JsonBody};
use super::{parse_job_id, ApiError, AppState};
use aide::NoApi;

/// Largest page.
pub const MAX_LIMIT: usize = 500;

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

/// One page of jobs, newest first.
#[derive(Serialize, Deserialize, JsonSchema)]
pub struct JobPage {
    pub jobs: Vec<JobRecord>,
    /// Jobs matching the filters, over all pages.
    pub total: usize,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Filters and pages jobs: newest first, those older than `cursor`. Pure, so the
/// paging rules are unit-tested.
pub fn page(
    mut jobs: Vec<JobRecord>,
    state: Option<JobState>,
    queue: Option<&str>,
    product: Option<&str>,
    cursor: Option<JobId>,
    limit: usize,
) -> JobPage {
    jobs.retain(|r| {
        state.is_none_or(|s| s == r.state)
            && queue.is_none_or(|q| q == r.spec.queue)
            && product.is_none_or(|p| p == r.spec.product)
    });
    let total = jobs.len();
    // Job ids are UUIDv7: by id is by submission time.
    jobs.sort_by_key(|r| std::cmp::Reverse(r.id));
    let start = match cursor {
        Some(c) => jobs.partition_point(|r| r.id >= c),
        None => 0,
    };
    let rest = jobs.len() - start;
    let page: Vec<JobRecord> = jobs.drain(start..).take(limit).collect();
    let next_cursor = (rest > page.len())
        .then(|| page.last().map(|r| r.id.to_string()))
        .flatten();
    JobPage {
        jobs: page,
        total,
        next_cursor,
    }
}

pub async fn list(
    State(st): State<AppState>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<JobPage>, ApiError> {
    let Query(q) = q?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::invalid(format!(
            "`limit` must be between 1 and {MAX_LIMIT}"
        )));
    }
    let cursor = q.cursor.as_deref().map(parse_job_id).transpose()?;
    let all = crate::store::list_jobs(&st.service.store.jobs, None, usize::MAX).await?;
    Ok(Json(page(
        all,
        q.state,
        q.queue.as_deref(),
        q.product.as_deref(),
        cursor,
        limit,
    )))
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
pub async fn logs_stream(
    State(st): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<NoApi<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>>, ApiError> {
    let id = parse_job_id(&id?.0)?;
    // 404 for a job that does not exist, rather than an endless empty stream.
    st.service.get_job(&id).await?;
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
    id: JobId,
    check: tokio::time::Interval,
    /// Lines the consumer said were still stored after the last one sent.
    pending: u64,
    end_seen: bool,
    finished: bool,
    shutdown: tokio_util::sync::CancellationToken,
}

impl LogFollow {
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

#[cfg(test)]
mod tests {
    use super::*;
    use gf_schemas::{JobSpec, Timestamp};

    fn rec(queue: &str, state: JobState) -> JobRecord {
        let mut s = JobSpec::command(["true"]);
        s.queue = queue.into();
        let mut r = JobRecord::new(JobId::new(), s, Timestamp::from_unix_millis(0));
        r.state = state;
        r
    }

    /// Pages cover every matching job once, newest first, and the last has no cursor.
    #[test]
    fn paging_covers_all_once() {
        let all: Vec<JobRecord> = (0..23)
            .map(|i| rec(if i % 2 == 0 { "a" } else { "b" }, JobState::Pending))
            .collect();
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let p = page(all.clone(), None, Some("a"), None, cursor, 5);
            assert_eq!(p.total, 12);
            seen.extend(p.jobs.iter().map(|r| r.id));
            match p.next_cursor {
                Some(c) => cursor = Some(c.parse().unwrap()),
                None => break,
            }
        }
        let mut want: Vec<JobId> = all
            .iter()
            .filter(|r| r.spec.queue == "a")
            .map(|r| r.id)
            .collect();
        want.sort_by(|a, b| b.cmp(a));
        assert_eq!(seen, want);
        let p = page(all, Some(JobState::Running), None, None, None, 5);
        assert_eq!((p.total, p.jobs.len(), p.next_cursor), (0, 0, None));
    }
}
