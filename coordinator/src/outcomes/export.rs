//! Reading outcome rows back from `GF_OUTCOMES` (for `gf outcomes export`, `gf
//! recommend`, and a new leader warming its estimates).

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use gf_schemas::names;
use gf_schemas::outcome::{decode_rows, OutcomeRow};
use gf_schemas::Timestamp;

use crate::error::StoreError;

fn transport(e: impl std::fmt::Display) -> StoreError {
    StoreError::Transport(e.to_string())
}

/// Every row in the stream (oldest first, the first per job and epoch), from `since`
/// if given, at most the newest `limit`.
pub async fn read(
    js: &jetstream::Context,
    since: Option<Timestamp>,
    limit: Option<usize>,
) -> Result<Vec<OutcomeRow>, StoreError> {
    let mut stream = js
        .get_stream(names::STREAM_OUTCOMES)
        .await
        .map_err(|e| transport(format!("no {} stream: {e}", names::STREAM_OUTCOMES)))?;
    let info = stream.info().await.map_err(transport)?;
    if info.state.messages == 0 {
        return Ok(Vec::new());
    }
    let last = info.state.last_sequence;
    let deliver_policy = match since {
        Some(t) => consumer::DeliverPolicy::ByStartTime {
            start_time: t.datetime(),
        },
        None => consumer::DeliverPolicy::All,
    };
    let mut messages = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(transport)?
        .messages()
        .await
        .map_err(transport)?;
    let mut rows = Vec::new();
    loop {
        let next = match tokio::time::timeout(Duration::from_secs(5), messages.next()).await {
            Ok(Some(m)) => m.map_err(transport)?,
            // Nothing at or after `since`.
            Ok(None) | Err(_) => break,
        };
        let info = next.info().map_err(transport)?;
        let (seq, pending) = (info.stream_sequence, info.pending);
        match decode_rows(&next.payload) {
            Ok(r) => rows.extend(r),
            Err(e) => tracing::warn!(seq, error = %e, "unreadable outcome rows skipped"),
        }
        if pending == 0 || seq >= last {
            break;
        }
    }
    let mut rows = super::dedup(rows);
    if let Some(t) = since {
        rows.retain(|r| r.ended_at >= t);
    }
    if let Some(n) = limit {
        let skip = rows.len().saturating_sub(n);
        rows.drain(..skip);
    }
    Ok(rows)
}

/// Writes rows as JSON Lines.
pub fn write_jsonl(rows: &[OutcomeRow], mut out: impl std::io::Write) -> std::io::Result<()> {
    for r in rows {
        serde_json::to_writer(&mut out, r)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// Reads JSON Lines of rows; blank lines are skipped, a bad line is an error naming it.
pub fn read_jsonl(text: &str) -> Result<Vec<OutcomeRow>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| format!("line {}: not an outcome row: {e}", i + 1))
        })
        .collect()
}
