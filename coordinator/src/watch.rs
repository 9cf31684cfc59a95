//! Resumable KV watches: the views the coordinator keeps from buckets (the scheduler
//! leader's jobs, workers and budgets; the stats task's jobs) pick up where they left
//! off after a watch breaks or NATS reconnects, instead of replaying the bucket.
//!
//! A [`Resumable`] remembers the highest revision its view has applied. Re-opened, it
//! watches from the next revision (`watch_all_from_revision`): on a `history = 1`
//! bucket that delivers only the keys written since, each once, with their latest
//! value (or the delete, purge or limit marker that removed them), so the view is kept
//! and only the gap is applied. It replays the whole bucket (`watch_with_history`)
//! instead, and the view must be rebuilt, when a resume could miss a removal:
//! - the view has nothing yet, or the last watch timed out before delivering anything;
//! - the watch has been down for longer than [`MAX_RESUME_GAP`]: the markers a finished
//!   job's expiry leaves live [`crate::history::LIMIT_MARKER_TTL`], so one written at the
//!   start of a longer outage may be gone by the time the watch is back;
//! - the stream no longer holds the range from the resume point on: its first sequence
//!   is past it (a purge cut into it, or everything up to it was rewritten; the two
//!   cannot be told apart cheaply, so both replay), its last sequence is below what the
//!   view saw (the stream was re-created), or it is empty.
//!
//! (A filtered stream purge that leaves later messages, e.g. `nats stream purge
//! --subject`, removes keys without a trace and is not detected: remove jobs through
//! the KV API, which writes markers.)
//!
//! Opening a watch waits at most `watch_replay_timeout` for it to deliver what the
//! bucket held when it was opened; a watch that does not is dropped and re-opened
//! (resuming from what it did deliver). Re-opening waits an exponential backoff with
//! jitter, capped at [`BACKOFF_MAX`] and reset once a watch is current (or timed out
//! after making progress: its re-opens are spaced by the timeout already), so a NATS
//! outage or a watch that keeps failing does not turn into a storm of consumers
//! (OpenObserve saw 587 consumers on one stream from a 1 s re-create loop).
//!
//! `gf_watch_resumes_total{watch}` and `gf_watch_replays_total{watch}` count which way
//! each watch was opened; `gf_watch_replay_timeouts_total{watch}` the timeouts.

use std::time::Duration;

use async_nats::jetstream::kv;
use rand::Rng;
use tokio::time::Instant;

/// Longest outage after which a watch still resumes: half the limit markers' lifetime,
/// leaving the other half for a watch that stalled before it was seen to break.
pub const MAX_RESUME_GAP: Duration =
    Duration::from_secs(crate::history::LIMIT_MARKER_TTL.as_secs() / 2);
/// First pause before re-opening a watch.
pub const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Longest pause before re-opening a watch.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// How a watch was opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// Every key of the bucket is delivered: the view must be rebuilt from nothing
    /// (and whatever it held that the replay does not deliver is gone).
    Replay {
        /// The stream's last sequence just before the watch was made: what a key the
        /// replay did not deliver must be older than to be stale.
        upto: u64,
    },
    /// Only what changed after the view's last revision is delivered: keep the view.
    Resume,
}

/// A freshly opened watch.
pub struct Opened {
    pub watch: kv::Watch,
    pub start: Start,
    /// Nothing to wait for: the bucket held nothing to deliver when it was opened.
    pub current: bool,
}

/// Exponential backoff with jitter: `base·2^n`, capped, each pause drawn from its
/// upper half.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(BACKOFF_BASE, BACKOFF_MAX)
    }
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            failures: 0,
        }
    }

    /// The pause before the next attempt; each call doubles the next one, up to the cap.
    pub fn next_pause(&mut self) -> Duration {
        let full = self
            .base
            .saturating_mul(1u32 << self.failures.min(20))
            .min(self.max);
        self.failures = self.failures.saturating_add(1);
        // Jitter over the upper half, so coordinators that lost NATS together do not
        // come back in step.
        full.mul_f64(rand::rng().random_range(0.5..=1.0))
    }

    /// A success: the next pause starts from the base again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Where a view got to in one bucket, and how to open its next watch.
#[derive(Debug)]
pub struct Resumable {
    /// The metric label: which watch (never an id).
    which: &'static str,
    /// The highest revision the view applied; 0: nothing (the next open replays).
    last: u64,
    /// When the watch was found broken, while it is down.
    down_since: Option<Instant>,
    /// Whether the open watch delivered anything.
    delivered: bool,
    /// The next open replays whatever else holds.
    force_replay: bool,
}

impl Resumable {
    pub fn new(which: &'static str) -> Self {
        Self {
            which,
            last: 0,
            down_since: None,
            delivered: false,
            force_replay: false,
        }
    }

    /// The highest revision applied (0: none).
    pub fn last(&self) -> u64 {
        self.last
    }

    /// The view applied the entry at `revision`.
    pub fn seen(&mut self, revision: u64) {
        self.delivered = true;
        self.last = self.last.max(revision);
    }

    /// The watch ended, failed, or is dropped to be opened again.
    pub fn broke(&mut self) {
        self.down_since.get_or_insert_with(Instant::now);
    }

    /// The watch did not deliver what the bucket held within its time. One that
    /// delivered nothing at all is not trusted to resume: the next open replays.
    /// Returns whether it made progress (delivered something): then the caller
    /// re-opens it after the shortest pause, since its re-opens are already spaced by
    /// the timeout and each one resumes further on.
    pub fn timed_out(&mut self) -> bool {
        crate::metrics::watch_replay_timeout(self.which);
        if !self.delivered {
            self.force_replay = true;
        }
        self.broke();
        self.delivered
    }

    /// Forget the position: the next open replays (the view was dropped).
    pub fn forget(&mut self) {
        self.last = 0;
    }

    /// Takes over the position of another watch of the same bucket that fed the same
    /// view up to `revision` and was following it until now (the leader's jobs watch
    /// feeding the counters, for the stats task): every entry up to either position
    /// was applied, so resuming from the later one misses nothing.
    pub fn adopt(&mut self, revision: u64) {
        if revision > self.last {
            self.last = revision;
            self.down_since = Some(Instant::now());
        }
    }

    /// Whether the next open may resume, before asking the server.
    fn may_resume(&self) -> bool {
        self.last > 0
            && !self.force_replay
            && self.down_since.is_none_or(|t| t.elapsed() < MAX_RESUME_GAP)
    }

    /// Opens the next watch on `bucket`: a resume from the revision after the last one
    /// applied if that cannot miss anything (see the module documentation), else a
    /// replay of the whole bucket, after which the caller rebuilds its view.
    pub async fn open(&mut self, bucket: &kv::Store) -> Result<Opened, async_nats::Error> {
        let state = bucket.stream.clone().info().await?.state.clone();
        let from = self.last + 1;
        let resume = self.may_resume()
            && state.messages > 0
            && state.first_sequence <= from
            && state.last_sequence >= self.last;
        let opened = if resume {
            Opened {
                watch: bucket.watch_all_from_revision(from).await?,
                start: Start::Resume,
                current: state.last_sequence < from,
            }
        } else {
            Opened {
                watch: bucket.watch_with_history(">").await?,
                start: Start::Replay {
                    upto: state.last_sequence,
                },
                current: state.messages == 0,
            }
        };
        match opened.start {
            Start::Resume => crate::metrics::watch_opened(self.which, true),
            Start::Replay { .. } => {
                crate::metrics::watch_opened(self.which, false);
                self.last = 0;
            }
        }
        if opened.current {
            // Nothing to deliver: everything up to the stream's end is accounted for.
            self.last = self.last.max(state.last_sequence);
        }
        tracing::debug!(watch = self.which, start = ?opened.start, from, "watch opened");
        self.down_since = None;
        self.delivered = false;
        self.force_replay = false;
        Ok(opened)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pauses double up to the cap, stay in the upper half of each step, and start over
    /// after a reset.
    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut full = Duration::from_millis(100);
        for _ in 0..8 {
            let p = b.next_pause();
            assert!(
                p >= full / 2 && p <= full,
                "{p:?} within [{:?}, {full:?}]",
                full / 2
            );
            full = (full * 2).min(Duration::from_secs(2));
        }
        assert!(b.next_pause() <= Duration::from_secs(2));
        b.reset();
        assert!(b.next_pause() <= Duration::from_millis(100));
    }

    /// A watch resumes only from a position, within the gap, and not after a timeout
    /// that delivered nothing.
    #[test]
    fn when_a_watch_may_resume() {
        let mut r = Resumable::new("test");
        assert!(!r.may_resume(), "nothing applied yet");
        r.seen(42);
        r.seen(7);
        assert_eq!(r.last(), 42);
        assert!(r.may_resume());
        r.broke();
        assert!(r.may_resume(), "a short outage");
        if let Some(long_ago) = Instant::now().checked_sub(MAX_RESUME_GAP + Duration::from_secs(1))
        {
            r.down_since = Some(long_ago);
            assert!(!r.may_resume(), "markers may have expired since");
        }
        r.down_since = None;
        r.delivered = false;
        assert!(!r.timed_out(), "no progress");
        assert!(!r.may_resume(), "timed out without delivering anything");
        let mut r = Resumable::new("test");
        r.seen(5);
        assert!(r.timed_out(), "progress");
        assert!(
            r.may_resume(),
            "timed out after delivering some: resume from there"
        );
        r.forget();
        assert!(!r.may_resume());
    }
}
