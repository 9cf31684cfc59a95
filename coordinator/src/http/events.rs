//! The audit trail: recent events (paged back by stream sequence) and the live stream.

use std::convert::Infallible;
use std::time::Duration;

use async_nats::jetstream::consumer::{self, DeliverPolicy};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::Json;
use futures::{Stream, StreamExt};
use gf_schemas::{names, Event, Level};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{ApiError, AppState};

pub const MAX_LIMIT: u64 = 1000;

#[derive(Deserialize, JsonSchema)]
pub struct RecentQuery {
    /// How many of the latest `GF_EVENTS` messages to look at, 1 to 1000 (default 100).
    /// A message is one event, or under load a batch of events of one kind, so a page
    /// can hold more events than this.
    pub limit: Option<u64>,
    /// Only events older than this stream sequence (the previous page's `next_before`).
    pub before: Option<u64>,
    /// Only events at this level (the `limit` events looked at are filtered).
    pub level: Option<Level>,
}

/// An event with its `GF_EVENTS` stream sequence.
#[derive(Serialize, Deserialize, JsonSchema)]
pub struct SeqEvent {
    pub seq: u64,
    #[serde(flatten)]
    pub event: Event,
}

#[derive(Serialize, Deserialize, JsonSchema)]
pub struct EventPage {
    /// Newest first.
    pub events: Vec<SeqEvent>,
    /// Pass as `before` for older events; absent when the oldest stored was reached.
    pub next_before: Option<u64>,
}

pub async fn recent(
    State(st): State<AppState>,
    q: Result<Query<RecentQuery>, QueryRejection>,
) -> Result<Json<EventPage>, ApiError> {
    let Query(q) = q?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::invalid(format!(
            "`limit` must be between 1 and {MAX_LIMIT}"
        )));
    }
    let mut stream = st
        .service
        .store
        .js
        .get_stream(names::STREAM_EVENTS)
        .await
        .map_err(ApiError::unavailable)?;
    let info = stream.info().await.map_err(ApiError::unavailable)?;
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    // The window [start, end] of stream sequences to read.
    let end = q.before.map_or(last, |b| b.saturating_sub(1).min(last));
    if info.state.messages == 0 || end < first || end == 0 {
        return Ok(Json(EventPage {
            events: Vec::new(),
            next_before: None,
        }));
    }
    let start = end.saturating_sub(limit - 1).max(first);
    let mut messages = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            ..Default::default()
        })
        .await
        .map_err(ApiError::unavailable)?
        .messages()
        .await
        .map_err(ApiError::unavailable)?;
    let mut events = Vec::new();
    loop {
        let m = match tokio::time::timeout(Duration::from_secs(3), messages.next()).await {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => return Err(ApiError::unavailable(e)),
            Ok(None) => break,
            Err(_) => return Err(ApiError::unavailable("timed out reading events")),
        };
        let Ok(info) = m.info() else { break };
        let (seq, pending) = (info.stream_sequence, info.pending);
        if seq > end {
            break;
        }
        for event in gf_schemas::decode_events(&m.payload).unwrap_or_default() {
            if q.level.is_none_or(|l| l == event.level) {
                events.push(SeqEvent { seq, event });
            }
        }
        if seq >= end || pending == 0 {
            break;
        }
    }
    events.reverse();
    Ok(Json(EventPage {
        events,
        next_before: (start > first).then_some(start),
    }))
}

/// `GET /api/events/stream`: every event as it is published (`event: event`,
/// `id: <GF_EVENTS sequence>`, `data: <Event JSON>`). Without `Last-Event-ID` it starts
/// with new events; with it, right after that sequence.
pub async fn stream(
    State(st): State<AppState>,
    headers: HeaderMap,
) -> Result<aide::NoApi<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>>, ApiError> {
    let messages = super::resume_after(
        &st,
        names::STREAM_EVENTS,
        String::new(),
        &headers,
        DeliverPolicy::New,
    )
    .await?;
    // One SSE event per event; those of one batched message share its sequence.
    let events = messages
        .take_until(st.shutdown.clone().cancelled_owned())
        .filter_map(|m| async move {
            let m = m.ok()?;
            let seq = m.info().ok()?.stream_sequence;
            let events = gf_schemas::decode_events(&m.payload).ok()?;
            let sse: Vec<Result<SseEvent, Infallible>> = events
                .iter()
                .filter_map(|e| serde_json::to_string(e).ok())
                .map(|data| {
                    Ok(SseEvent::default()
                        .event("event")
                        .id(seq.to_string())
                        .data(data))
                })
                .collect();
            Some(futures::stream::iter(sse))
        })
        .flatten();
    Ok(aide::NoApi(
        Sse::new(events).keep_alive(KeepAlive::default()),
    ))
}
