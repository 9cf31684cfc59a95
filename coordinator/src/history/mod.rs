//! History at scale: how long a finished job stays in `gf_jobs`, and the one write
//! that starts that clock.
//!
//! A job that turns terminal is written with a per-message TTL (its outcome's grace
//! period) on the `history = 1` jobs bucket, so the **server** removes it when the
//! grace period ends: by the server's clock, with no janitor and no scan. At expiry the
//! server leaves a limit marker (`Nats-Marker-Reason: MaxAge`, which watchers see as a
//! purge) that itself disappears after [`LIMIT_MARKER_TTL`]; so the bucket, every
//! replay of it and every view fed by a watch follow the live jobs plus the grace
//! window, not the whole history.
//!
//! Invariants this rests on (`docs/history.md`):
//! - `gf_jobs` keeps one revision per key (`history = 1`) and the terminal write also
//!   carries `Nats-Rollup: sub`: when the TTL'd revision expires nothing older can
//!   come back (ADR-48 allows a TTL on a put only under these conditions).
//! - The terminal write is revision-checked like every other job write.
//! - A requeue within the grace period is an ordinary (un-TTL'd) revision-checked
//!   write; with one revision per key it replaces the TTL'd one, so the job is live
//!   again and nothing of the old revision's TTL is left.
//! - The TTL is never a lease or any other clock the scheduler decides on.
//!
//! The one hook into the job lifecycle is [`crate::store::Store::update_job`] (and
//! `create_job` for a record created terminal): when the record it writes is
//! terminal and its outcome has a grace period, the write goes through
//! [`write_terminal`].

use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind, stream};
use async_nats::{header, HeaderMap};
use bytes::Bytes;
use gf_schemas::names;
use gf_schemas::JobState;

use crate::error::StoreError;

pub mod archive;
pub mod list;

/// How long the marker a server leaves when a finished job expires stays visible. A
/// watcher away for less than this sees the removal when it resumes; one away longer
/// replays the (small) bucket instead.
pub const LIMIT_MARKER_TTL: Duration = Duration::from_secs(3600);

/// Retention of finished jobs in the live store, per outcome. `None` keeps a job of
/// that outcome in `gf_jobs` for ever (`never` in the config file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryConfig {
    pub succeeded: Option<Duration>,
    pub cancelled: Option<Duration>,
    pub rejected: Option<Duration>,
    pub dead: Option<Duration>,
    /// How long a finished job's record is kept in the archive (`GF_ARCHIVE`),
    /// counted from when it was archived.
    pub archive: Duration,
    /// How long job logs (`GF_LOGS`) are kept, counted from when each line was
    /// written. `None`: as long as the archive keeps a job ([`HistoryConfig::logs`]).
    pub logs: Option<Duration>,
    /// How long events (`GF_EVENTS`) are kept.
    pub events: Duration,
}

pub const DAY: Duration = Duration::from_secs(24 * 3600);

impl Default for HistoryConfig {
    /// River's defaults: successes, cancellations and rejections stay a day, dead jobs
    /// (the ones someone may want to look at and requeue) a week.
    fn default() -> Self {
        Self {
            succeeded: Some(DAY),
            cancelled: Some(DAY),
            rejected: Some(DAY),
            dead: Some(7 * DAY),
            archive: 30 * DAY,
            logs: None,
            events: 7 * DAY,
        }
    }
}

impl HistoryConfig {
    /// Every outcome kept for ever: the behaviour before retention existed.
    pub fn keep_forever() -> Self {
        Self {
            succeeded: None,
            cancelled: None,
            rejected: None,
            dead: None,
            ..Self::default()
        }
    }

    /// The grace period of a job in `state`: `None` for a live state or an outcome
    /// kept for ever.
    pub fn grace(&self, state: JobState) -> Option<Duration> {
        match state {
            JobState::Succeeded => self.succeeded,
            JobState::Cancelled => self.cancelled,
            JobState::Rejected => self.rejected,
            JobState::Dead => self.dead,
            _ => None,
        }
    }

    /// How long `GF_LOGS` keeps a line: the `logs` setting, else the archive's
    /// retention, so a job's logs go with its archived record (both counted from when
    /// they were written: the first lines of a job that ran for hours go that much
    /// before its record).
    pub fn logs(&self) -> Duration {
        self.logs.unwrap_or(self.archive)
    }

    /// The shortest grace period of any outcome, if any outcome expires.
    pub fn shortest(&self) -> Option<Duration> {
        [self.succeeded, self.cancelled, self.rejected, self.dead]
            .into_iter()
            .flatten()
            .min()
    }
}

/// When the job was created, from its UUIDv7 id (`None` for an id of another kind).
pub fn created_at(id: &gf_schemas::JobId) -> Option<gf_schemas::Timestamp> {
    let (secs, nanos) = id.as_uuid().get_timestamp()?.to_unix();
    Some(gf_schemas::Timestamp::from_unix_millis(
        (secs as i64) * 1000 + i64::from(nanos / 1_000_000),
    ))
}

/// Whether the job `id` may have finished and left `gf_jobs` by `now`: it was created
/// longer ago than the shortest grace period. A repeat of an idempotent submission
/// that finds its key but no job must not create the job again in that case.
pub fn may_have_expired(
    cfg: &HistoryConfig,
    id: &gf_schemas::JobId,
    now: gf_schemas::Timestamp,
) -> bool {
    match (cfg.shortest(), created_at(id)) {
        (Some(grace), Some(created)) => created.plus(grace) <= now,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// Requeues a finished job that has left `gf_jobs`, from its archived record: the
/// record is requeued as within the grace period and created again under its id.
pub async fn requeue_archived(
    store: &crate::store::Store,
    id: &gf_schemas::JobId,
) -> Result<gf_schemas::JobRecord, gf_schemas::RpcError> {
    let Some(mut rec) = archive::find(&store.js, id).await? else {
        return Err(StoreError::NotFound(format!("job {id}")).into());
    };
    crate::fsm::requeue(&mut rec)?;
    store.create_job(&rec).await?;
    Ok(rec)
}

/// Looks up, in the live store and then the archive, the finished jobs that live jobs
/// of the leader's `view` name but the view does not know (they left `gf_jobs` before
/// this leader saw them), so dependents and parents can be decided. Run by the leader
/// on its reaper tick; a bounded number per tick.
pub async fn resolve_references(store: &crate::store::Store, view: &mut crate::plan::View) {
    for id in view.unknown_references(64) {
        let state = match store.load_job(&id).await {
            // Live, or finished within its grace: the watch brings it.
            Ok(Some(_)) => continue,
            Ok(None) => match archive::find(&store.js, &id).await {
                Ok(Some(rec)) => rec.state,
                Ok(None) => continue,
                Err(e) => {
                    tracing::debug!(job = %id, error = %e, "archive lookup");
                    continue;
                }
            },
            Err(_) => continue,
        };
        view.resolve_finished(id, state);
    }
}

/// Parses a grace period as written in the config file: a duration (`"24h"`, `"7d"`,
/// `"90s"`) of at least a second, or `never`.
pub fn parse_grace(s: &str) -> Result<Option<Duration>, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("never") {
        return Ok(None);
    }
    let d = humantime_like(s)?;
    if d < Duration::from_secs(1) {
        return Err(format!("`{s}`: a grace period is at least 1s (or `never`)"));
    }
    Ok(Some(d))
}

/// `<n><unit>` with units s, m, h, d (what the grace keys need; the CLI's own
/// duration parser accepts more and hands over the result).
fn humantime_like(s: &str) -> Result<Duration, String> {
    let bad = || format!("`{s}` is not a duration such as 90s, 30m, 24h, 7d, or `never`");
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let secs = match unit.trim() {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    n.checked_mul(secs).map(Duration::from_secs).ok_or_else(bad)
}

/// The `Nats-TTL` value for a grace period: whole seconds, rounded up, at least 1.
pub fn ttl_header(grace: Duration) -> String {
    let secs = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
    secs.max(1).to_string()
}

/// Writes the terminal record `value` of the job at `key`, only if the key's last
/// revision is still `revision` (0: only if the key does not exist), with the
/// outcome's grace period as its TTL. Returns the new revision.
///
/// One publish with three headers: `Nats-Expected-Last-Subject-Sequence` (the
/// revision check, refused by the server as a wrong last sequence),
/// `Nats-Rollup: sub` (nothing older of this key survives it) and `Nats-TTL`.
pub async fn write_terminal(
    js: &jetstream::Context,
    key: &str,
    value: Bytes,
    revision: u64,
    grace: Duration,
) -> Result<u64, StoreError> {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
        revision.to_string().as_str(),
    );
    headers.insert(header::NATS_ROLLUP, "sub");
    headers.insert(header::NATS_MESSAGE_TTL, ttl_header(grace).as_str());
    let subject = names::js::kv(names::BUCKET_JOBS, key);
    let conflict_or = |kind: PublishErrorKind, e: String| match kind {
        PublishErrorKind::WrongLastSequence => StoreError::Conflict(key.to_string()),
        _ => StoreError::Transport(e),
    };
    let ack = js
        .publish_with_headers(subject, headers, value)
        .await
        .map_err(|e| conflict_or(e.kind(), e.to_string()))?;
    let ack = ack
        .await
        .map_err(|e| conflict_or(e.kind(), e.to_string()))?;
    Ok(ack.sequence)
}

/// Brings the jobs bucket of an existing deployment to the settings retention needs:
/// per-message TTLs allowed and limit markers on (both can be turned on for a live
/// stream and never off). Returns whether it changed anything. Idempotent; every
/// coordinator runs it at start, so a fleet converts as soon as one new coordinator
/// starts, without stopping.
pub async fn ensure_bucket_settings(js: &jetstream::Context) -> Result<bool, StoreError> {
    let name = format!("KV_{}", names::BUCKET_JOBS);
    let mut s = js
        .get_stream(&name)
        .await
        .map_err(|e| StoreError::Transport(format!("stream {name}: {e}")))?;
    let info = s
        .info()
        .await
        .map_err(|e| StoreError::Transport(format!("stream {name}: {e}")))?;
    let mut cfg: stream::Config = info.config.clone();
    if cfg.allow_message_ttl
        && cfg.subject_delete_marker_ttl.is_some()
        && cfg.max_messages_per_subject == 1
    {
        return Ok(false);
    }
    cfg.allow_message_ttl = true;
    cfg.subject_delete_marker_ttl = Some(cfg.subject_delete_marker_ttl.unwrap_or(LIMIT_MARKER_TTL));
    // One revision per key: a TTL'd revision must have nothing older behind it, and
    // batch reads over the bucket must not see old revisions.
    cfg.max_messages_per_subject = 1;
    js.update_stream(&cfg)
        .await
        .map_err(|e| StoreError::Transport(format!("updating stream {name}: {e}")))?;
    tracing::info!(stream = %name, "jobs bucket converted for retention: per-message TTLs, limit markers, one revision per key");
    Ok(true)
}

/// Brings the retention (`max_age`) of the logs and events streams to `cfg`'s, on a
/// stream created by an earlier version or under other settings. Returns the streams
/// it changed. Every coordinator runs it at start; coordinators started with different
/// settings would undo each other's, so a fleet shares one `[history]` (`gf doctor`
/// reports a difference).
pub async fn ensure_log_retention(
    js: &jetstream::Context,
    cfg: &HistoryConfig,
) -> Result<Vec<&'static str>, StoreError> {
    let mut changed = Vec::new();
    for (name, max_age) in [
        (names::STREAM_LOGS, cfg.logs()),
        (names::STREAM_EVENTS, cfg.events),
    ] {
        let mut s = js
            .get_stream(name)
            .await
            .map_err(|e| StoreError::Transport(format!("stream {name}: {e}")))?;
        let have = s
            .info()
            .await
            .map_err(|e| StoreError::Transport(format!("stream {name}: {e}")))?
            .config
            .clone();
        if have.max_age == max_age {
            continue;
        }
        let was = have.max_age;
        js.update_stream(stream::Config { max_age, ..have })
            .await
            .map_err(|e| StoreError::Transport(format!("updating stream {name}: {e}")))?;
        tracing::info!(stream = name, was = ?was, now = ?max_age, "retention updated");
        changed.push(name);
    }
    Ok(changed)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn grace_periods_parse_with_never_and_a_floor() {
        assert_eq!(parse_grace("24h"), Ok(Some(DAY)));
        assert_eq!(parse_grace("7d"), Ok(Some(7 * DAY)));
        assert_eq!(parse_grace(" 90s "), Ok(Some(Duration::from_secs(90))));
        assert_eq!(parse_grace("never"), Ok(None));
        assert_eq!(parse_grace("NEVER"), Ok(None));
        assert!(parse_grace("0s").unwrap_err().contains("at least 1s"));
        assert!(parse_grace("soon").unwrap_err().contains("not a duration"));
        assert!(parse_grace("5w").is_err());
        assert!(parse_grace("").is_err());
    }

    #[test]
    fn grace_follows_the_outcome_and_live_states_have_none() {
        let c = HistoryConfig::default();
        assert_eq!(c.grace(JobState::Succeeded), Some(DAY));
        assert_eq!(c.grace(JobState::Dead), Some(7 * DAY));
        for s in JobState::ALL.iter().filter(|s| !s.is_terminal()) {
            assert_eq!(c.grace(*s), None, "{s:?}");
        }
        assert_eq!(c.shortest(), Some(DAY));
        assert_eq!(HistoryConfig::keep_forever().shortest(), None);
    }

    #[test]
    fn a_job_may_have_expired_only_after_the_shortest_grace() {
        let cfg = HistoryConfig {
            succeeded: Some(Duration::from_secs(60)),
            ..HistoryConfig::keep_forever()
        };
        let id = gf_schemas::JobId::new();
        let made = created_at(&id).expect("v7");
        let now = gf_schemas::Timestamp::now_local();
        assert!(made <= now && now.since(made) < Duration::from_secs(5));
        assert!(!may_have_expired(
            &cfg,
            &id,
            made.plus(Duration::from_secs(59))
        ));
        assert!(may_have_expired(
            &cfg,
            &id,
            made.plus(Duration::from_secs(61))
        ));
        let forever = HistoryConfig::keep_forever();
        assert!(!may_have_expired(&forever, &id, made.plus(365 * DAY)));
    }

    #[test]
    fn ttl_is_whole_seconds_rounded_up() {
        assert_eq!(ttl_header(Duration::from_millis(1500)), "2");
        assert_eq!(ttl_header(Duration::from_secs(86_400)), "86400");
        assert_eq!(ttl_header(Duration::from_millis(1)), "1");
    }
}
