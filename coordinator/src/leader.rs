//! Scheduler leadership through the `gf_leader` bucket.
//!
//! One key holds `{holder, term}`. The leader renews it with a revision-checked update
//! every `ttl/3`; a standby takes it over when the entry's server timestamp is older
//! than `ttl`. A leader that cannot renew within `ttl` (paused, partitioned) stops
//! acting on its own monotonic clock before a standby can take over, and every job
//! write it makes is revision-checked anyway, so a zombie leader cannot undo work.

use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use gf_schemas::names::LEADER_KEY;
use gf_schemas::Timestamp;
use serde::{Deserialize, Serialize};

use crate::clock::ServerClock;
use crate::store::encode;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LeaderValue {
    pub holder: String,
    pub term: u64,
}

#[derive(Debug)]
pub struct LeaderLease {
    pub term: u64,
    revision: u64,
    renewed_at: Instant,
    ttl: Duration,
}

impl LeaderLease {
    /// Still safe to act: renewed less than `ttl` ago by our own monotonic clock.
    pub fn valid(&self) -> bool {
        self.renewed_at.elapsed() < self.ttl
    }

    /// When [`LeaderLease::valid`] turns false unless the lease is renewed first.
    pub fn valid_until(&self) -> Instant {
        self.renewed_at + self.ttl
    }
}

/// Whether the current holder's lease has lapsed at server time `now`.
pub fn lapsed(written_at: Timestamp, ttl: Duration, now: Timestamp) -> bool {
    written_at.plus(ttl) <= now
}

/// Reads the current leader, if any.
pub async fn current(bucket: &kv::Store) -> Option<(LeaderValue, Timestamp)> {
    let e = bucket.entry(LEADER_KEY).await.ok()??;
    if e.operation != kv::Operation::Put {
        return None;
    }
    let v = serde_json::from_slice(&e.value).ok()?;
    Some((v, Timestamp::from_datetime(e.created)))
}

/// Takes leadership if the key is free or its holder's lease lapsed.
pub async fn try_acquire(
    bucket: &kv::Store,
    me: &str,
    ttl: Duration,
    clock: &ServerClock,
) -> Option<LeaderLease> {
    let started = Instant::now();
    let entry = bucket.entry(LEADER_KEY).await.ok()?;
    let (term, revision) = match entry {
        Some(e) if e.operation == kv::Operation::Put => {
            let prev: Option<LeaderValue> = serde_json::from_slice(&e.value).ok();
            let ours = prev.as_ref().is_some_and(|p| p.holder == me);
            let stale = lapsed(Timestamp::from_datetime(e.created), ttl, clock.now());
            if !ours && !stale {
                return None;
            }
            let term = prev.map_or(1, |p| p.term + 1);
            let value = LeaderValue {
                holder: me.into(),
                term,
            };
            (
                term,
                bucket
                    .update(LEADER_KEY, encode(&value), e.revision)
                    .await
                    .ok()?,
            )
        }
        _ => {
            let value = LeaderValue {
                holder: me.into(),
                term: 1,
            };
            (1, bucket.create(LEADER_KEY, encode(&value)).await.ok()?)
        }
    };
    Some(LeaderLease {
        term,
        revision,
        renewed_at: started,
        ttl,
    })
}

/// Renews; `false` means leadership is lost and the caller must stop acting.
pub async fn renew(bucket: &kv::Store, me: &str, lease: &mut LeaderLease) -> bool {
    let started = Instant::now();
    let value = LeaderValue {
        holder: me.into(),
        term: lease.term,
    };
    match bucket
        .update(LEADER_KEY, encode(&value), lease.revision)
        .await
    {
        Ok(rev) => {
            lease.revision = rev;
            lease.renewed_at = started;
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "leader renew failed");
            false
        }
    }
}

/// How long a step-down may take: answered in milliseconds with NATS up; with NATS
/// down the lease expires by itself, so the stop does not wait out a request timeout.
const STEP_DOWN_WAIT: Duration = Duration::from_secs(1);

/// Gives leadership up at shutdown so a standby takes over at once.
pub async fn step_down(bucket: &kv::Store, lease: &LeaderLease) {
    match tokio::time::timeout(
        STEP_DOWN_WAIT,
        bucket.delete_expect_revision(LEADER_KEY, Some(lease.revision)),
    )
    .await
    {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "leader step-down"),
        Err(_) => tracing::warn!("leader step-down not answered; the lease will expire instead"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lapse_judged_on_server_time() {
        let w = Timestamp::from_unix_millis(10_000);
        let ttl = Duration::from_secs(5);
        assert!(!lapsed(w, ttl, Timestamp::from_unix_millis(14_999)));
        assert!(lapsed(w, ttl, Timestamp::from_unix_millis(15_000)));
    }
}
