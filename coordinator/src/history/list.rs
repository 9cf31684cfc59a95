//! Listing jobs without scanning history: `GET /api/jobs`, `gf.rpc.job.list` and
//! `gf jobs` all page here.
//!
//! - **Live store first.** The coordinator's counters ([`crate::stats`]) already hold a
//!   summary of every job in `gf_jobs` — the live jobs and the finished ones within
//!   their grace period, no more — so the ids of a page come from a pass over them,
//!   newest first, and only the page's records are read (one direct get each).
//!   Cursor: the last id of the page.
//! - **Then the archive**, for finished states (or no state filter): `GF_ARCHIVE` by
//!   creation day, newest day first, one batch direct get per day partition filtered
//!   by `gf.archive.<day>.<state|*>.<queue|*>.*` (the subject carries the filters,
//!   so a page reads what it returns, plus the product filter's misses). Jobs still in
//!   their grace period are in both and are listed only from the live store. Cursor:
//!   `a.<day>.<sequence>`. Within a day the archive pages in archive order.
//!
//! No step reads more than a page (plus one request per empty day, at most the archive
//! retention in days).

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use gf_schemas::rpc::{JobListRequest, JobPage};
use gf_schemas::{names, ErrorKind, JobId, JobRecord, RpcError};

use crate::stats::StatsHandle;
use crate::store::Store;

/// Largest page.
pub const MAX_LIMIT: usize = 500;
/// Default page.
pub const DEFAULT_LIMIT: usize = 50;

fn invalid(m: impl Into<String>) -> RpcError {
    RpcError::new(ErrorKind::Invalid, m)
}

/// Where a page starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cursor {
    /// The live store, after this id (newest first).
    Live(Option<JobId>),
    /// The archive, at this creation day (`yyyymmdd`) from this stream sequence.
    Archive { day: String, seq: u64 },
}

impl Cursor {
    pub fn parse(s: Option<&str>) -> Result<Self, RpcError> {
        let Some(s) = s.map(str::trim).filter(|s| !s.is_empty()) else {
            return Ok(Cursor::Live(None));
        };
        if let Some(rest) = s.strip_prefix("a.") {
            let (day, seq) = rest
                .split_once('.')
                .ok_or_else(|| invalid(format!("`cursor`: `{s}` is not a cursor this API gave")))?;
            let ok_day = day.len() == 8 && day.bytes().all(|b| b.is_ascii_digit());
            let seq =
                seq.parse::<u64>().ok().filter(|_| ok_day).ok_or_else(|| {
                    invalid(format!("`cursor`: `{s}` is not a cursor this API gave"))
                })?;
            return Ok(Cursor::Archive {
                day: day.to_string(),
                seq,
            });
        }
        s.parse::<JobId>()
            .map(|id| Cursor::Live(Some(id)))
            .map_err(|_| invalid(format!("`cursor`: `{s}` is not a cursor this API gave")))
    }

    pub fn render(&self) -> String {
        match self {
            Cursor::Live(Some(id)) => id.to_string(),
            Cursor::Live(None) => String::new(),
            Cursor::Archive { day, seq } => format!("a.{day}.{seq}"),
        }
    }
}

/// The day before `day` (`yyyymmdd`).
fn previous_day(day: &str) -> Option<String> {
    let d = chrono::NaiveDate::parse_from_str(day, "%Y%m%d").ok()?;
    Some(d.pred_opt()?.format("%Y%m%d").to_string())
}

fn today() -> String {
    chrono::Utc::now().format("%Y%m%d").to_string()
}

/// One page of jobs matching `req`.
pub async fn list(
    store: &Store,
    index: &StatsHandle,
    req: &JobListRequest,
) -> Result<JobPage, RpcError> {
    let limit = req.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(invalid(format!(
            "`limit` must be between 1 and {MAX_LIMIT}"
        )));
    }
    if let Some(q) = &req.queue {
        if !names::is_token(q) {
            return Err(invalid(format!("`queue`: `{q}` is not a queue name")));
        }
    }
    let cursor = Cursor::parse(req.cursor.as_deref())?;
    let (state, queue, product) = (req.state, req.queue.as_deref(), req.product.as_deref());
    // Finished jobs can be in the archive; live ones never are.
    let archive_too = state.is_none_or(|s| s.is_terminal());
    let (_, total) = index.matching(state, queue, product, None, 0);
    let mut jobs = Vec::new();
    let mut next = None;
    let mut archive_from = None;
    match cursor {
        Cursor::Live(before) => {
            let (ids, _) = index.matching(state, queue, product, before, limit + 1);
            let more = ids.len() > limit;
            let ids: Vec<JobId> = ids.into_iter().take(limit).collect();
            let last = ids.last().copied();
            jobs = read_records(store, &ids).await?;
            if more {
                next = last.map(|id| Cursor::Live(Some(id)));
            } else if archive_too {
                archive_from = Some((today(), 0));
            }
        }
        Cursor::Archive { day, seq } => archive_from = Some((day, seq)),
    }
    if let Some((day, seq)) = archive_from {
        if jobs.len() < limit {
            let (more, cursor) =
                from_archive(store, index, req, day, seq, limit - jobs.len()).await?;
            jobs.extend(more);
            next = cursor;
        } else {
            next = Some(Cursor::Archive { day, seq });
        }
    }
    Ok(JobPage {
        jobs,
        total,
        next_cursor: next.map(|c| c.render()),
    })
}

/// The records of `ids`, in that order; one that left the store since is skipped.
async fn read_records(store: &Store, ids: &[JobId]) -> Result<Vec<JobRecord>, RpcError> {
    let got: Vec<_> = futures::stream::iter(ids.to_vec())
        .map(|id| async move { store.load_job(&id).await })
        .buffered(32)
        .collect()
        .await;
    let mut out = Vec::with_capacity(ids.len());
    for r in got {
        if let Some((rec, _)) = r? {
            out.push(rec);
        }
    }
    Ok(out)
}

/// Up to `want` archived jobs from `day` (from stream sequence `seq`) backwards over
/// the archive's days, and the cursor after them (`None`: nothing older).
async fn from_archive(
    store: &Store,
    index: &StatsHandle,
    req: &JobListRequest,
    mut day: String,
    mut seq: u64,
    want: usize,
) -> Result<(Vec<JobRecord>, Option<Cursor>), RpcError> {
    let oldest = {
        let days = store.history().archive.as_secs().div_ceil(86_400) + 1;
        let mut d = today();
        for _ in 0..days {
            d = previous_day(&d).unwrap_or(d);
        }
        d
    };
    let client = store.js.client();
    let mut out = Vec::new();
    while day >= oldest {
        let filter = names::archive_day(&day, req.state, req.queue.as_deref());
        let batch = batch_get(&client, &filter, seq, want - out.len()).await?;
        for (_, payload) in &batch.messages {
            let Ok(rec) = serde_json::from_slice::<JobRecord>(payload) else {
                continue;
            };
            // Still in the live store: listed from there.
            if index.contains(&rec.id) {
                continue;
            }
            if req
                .product
                .as_deref()
                .is_some_and(|p| p != rec.spec.product)
            {
                continue;
            }
            out.push(rec);
        }
        if batch.pending > 0 {
            seq = batch.last_seq + 1;
            if out.len() >= want {
                return Ok((out, Some(Cursor::Archive { day, seq })));
            }
            continue;
        }
        let Some(prev) = previous_day(&day) else {
            break;
        };
        day = prev;
        seq = 0;
        if out.len() >= want {
            return Ok((out, (day >= oldest).then_some(Cursor::Archive { day, seq })));
        }
    }
    Ok((out, None))
}

struct Batch {
    messages: Vec<(u64, Bytes)>,
    /// Matching messages after this batch.
    pending: u64,
    last_seq: u64,
}

/// One batch direct get (ADR-31, nats-server ≥ 2.11) on the archive: up to `batch`
/// messages matching `filter` from stream sequence `seq`, ended by the server's EOB.
/// async-nats has no helper for it: a request on an inbox, read until a status.
async fn batch_get(
    client: &async_nats::Client,
    filter: &str,
    seq: u64,
    batch: usize,
) -> Result<Batch, RpcError> {
    let unavailable = |e: String| RpcError::new(ErrorKind::Unavailable, e);
    let inbox = client.new_inbox();
    let mut sub = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let body = serde_json::json!({"batch": batch, "seq": seq.max(1), "next_by_subj": filter});
    client
        .publish_with_reply(
            names::js::direct_get(names::STREAM_ARCHIVE),
            inbox,
            body.to_string().into(),
        )
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let mut out = Batch {
        messages: Vec::new(),
        pending: 0,
        last_seq: seq,
    };
    loop {
        let msg = match tokio::time::timeout(Duration::from_secs(5), sub.next()).await {
            Ok(Some(m)) => m,
            Ok(None) => return Err(unavailable("archive read ended".into())),
            Err(_) => return Err(unavailable("archive read timed out".into())),
        };
        let header = |name: &str| {
            msg.headers
                .as_ref()
                .and_then(|h| h.get(name))
                .and_then(|v| v.as_str().parse::<u64>().ok())
        };
        if let Some(status) = msg.status {
            match status.as_u16() {
                // End of batch: how many more match, and where this one ended.
                204 => {
                    out.pending = header("Nats-Num-Pending").unwrap_or(0);
                    if let Some(last) = header("Nats-Last-Sequence") {
                        out.last_seq = last;
                    }
                }
                // Nothing matches.
                404 => {}
                s => {
                    return Err(unavailable(format!(
                        "archive read refused: status {s} {}",
                        msg.description.as_deref().unwrap_or("")
                    )))
                }
            }
            return Ok(out);
        }
        let seq = header("Nats-Sequence").unwrap_or(0);
        out.last_seq = out.last_seq.max(seq);
        out.messages.push((seq, msg.payload));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_bad_ones_are_named() {
        let id = JobId::new();
        for c in [
            Cursor::Live(Some(id)),
            Cursor::Archive {
                day: "20261130".into(),
                seq: 42,
            },
        ] {
            assert_eq!(Cursor::parse(Some(&c.render())).unwrap(), c);
        }
        assert_eq!(Cursor::parse(None).unwrap(), Cursor::Live(None));
        for bad in ["a.2026.1", "a.20261130", "a.20261130.x", "nope"] {
            let e = Cursor::parse(Some(bad)).unwrap_err();
            assert!(
                e.message.contains("cursor") && e.message.contains(bad),
                "{e:?}"
            );
        }
    }

    #[test]
    fn days_step_back_across_months() {
        assert_eq!(previous_day("20260301").as_deref(), Some("20260228"));
        assert_eq!(previous_day("20270101").as_deref(), Some("20261231"));
        assert_eq!(previous_day("garbage"), None);
    }
}
