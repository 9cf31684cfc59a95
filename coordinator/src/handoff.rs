//! Job records this coordinator wrote, handed to its own leader's view so that the
//! view does not decode them again when the jobs watch delivers them.
//!
//! The leader's view takes in every write to `gf_jobs` from its watch and decoded each
//! one, also the creates and completions this very process had just encoded (with one
//! coordinator, or the one that took the RPC, all of them): two JSON decodes per job
//! of the three the view needs. Now the RPC handlers [`Handoff::give`] the record they
//! wrote, with the revision the server acknowledged, and the view
//! [`Handoff::take`]s it when the watch delivers that revision of that key.
//!
//! Invariants:
//! - Only a shortcut: a record is taken only for the exact (job, revision) it was
//!   written at, which is exactly what the watch delivers; when it is missing (another
//!   coordinator wrote it, the watch came first, the map was full) the view decodes, as
//!   before.
//! - Bounded: nothing is kept while the view is not following (not the leader, or
//!   between re-opened watches); nothing at or below the revision the view has already
//!   taken in; what the view passes without taking is dropped as it passes; and at most
//!   [`MAX_HELD`] records.

use std::collections::VecDeque;
use std::sync::Mutex;

use gf_schemas::{JobId, JobRecord};

use crate::jobmap::JobMap;

/// The most records held at once; past it the map starts over (the view decodes).
/// In a steady flow the view is a few hundred writes behind; in a flood (100,000
/// submitted at once) it falls far behind and the records would only wait there: at
/// 8,192 the coordinator's resident memory grew by ~20 MiB for no measurable gain.
pub const MAX_HELD: usize = 2_048;

#[derive(Default)]
pub struct Handoff {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Whether a leader's view is following the jobs watch in this process.
    open: bool,
    /// The view has taken in every job write up to this revision.
    seen: u64,
    held: JobMap<(u64, JobRecord)>,
    /// (revision, job) in the order given, to drop what the view passed by. Never
    /// shorter than `held`.
    order: VecDeque<(u64, JobId)>,
}

impl Handoff {
    /// A leader's view starts following the watch, having taken in every write up to
    /// `seen`.
    pub fn open(&self, seen: u64) {
        let mut inner = self.inner.lock().expect("handoff");
        inner.clear();
        inner.open = true;
        inner.seen = seen;
    }

    /// The view stopped following: nothing is kept until it opens again.
    pub fn close(&self) {
        let mut inner = self.inner.lock().expect("handoff");
        inner.clear();
        inner.open = false;
    }

    /// This coordinator wrote `rec` at revision `rev`.
    pub fn give(&self, rec: JobRecord, rev: u64) {
        let mut inner = self.inner.lock().expect("handoff");
        if !inner.open || rev <= inner.seen {
            return;
        }
        if inner.order.len() >= MAX_HELD {
            inner.clear();
        }
        inner.order.push_back((rev, rec.id));
        inner.held.insert(rec.id, (rev, rec));
    }

    /// The record written at revision `rev` of job `id`, if this coordinator gave it.
    pub fn take(&self, id: &JobId, rev: u64) -> Option<JobRecord> {
        let mut inner = self.inner.lock().expect("handoff");
        match inner.held.get(id) {
            Some((r, _)) if *r == rev => inner.held.remove(id).map(|(_, rec)| rec),
            _ => None,
        }
    }

    /// The view has taken in every job write up to `rev`: what it passed without
    /// taking will never be asked for.
    pub fn seen(&self, rev: u64) {
        let mut inner = self.inner.lock().expect("handoff");
        inner.seen = inner.seen.max(rev);
        while let Some(&(r, id)) = inner.order.front() {
            if r > rev {
                break;
            }
            inner.order.pop_front();
            if inner.held.get(&id).is_some_and(|(held, _)| *held == r) {
                inner.held.remove(&id);
            }
        }
    }
}

impl Inner {
    fn clear(&mut self) {
        self.held.clear();
        self.order.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gf_schemas::{JobSpec, Timestamp};

    fn record() -> JobRecord {
        JobRecord::new(
            JobId::new(),
            JobSpec::command(["true"]),
            Timestamp::from_unix_millis(0),
        )
    }

    #[test]
    fn a_record_is_taken_once_and_only_at_its_revision() {
        let h = Handoff::default();
        h.open(10);
        let rec = record();
        let id = rec.id;
        h.give(rec, 12);
        assert!(h.take(&id, 11).is_none(), "another revision");
        assert_eq!(h.take(&id, 12).map(|r| r.id), Some(id));
        assert!(h.take(&id, 12).is_none(), "taken already");
    }

    #[test]
    fn nothing_is_kept_while_closed_or_already_seen() {
        let h = Handoff::default();
        let rec = record();
        let id = rec.id;
        h.give(rec.clone(), 5);
        assert!(h.take(&id, 5).is_none(), "closed");
        h.open(5);
        h.give(rec.clone(), 5);
        assert!(h.take(&id, 5).is_none(), "the view is past it");
        h.give(rec.clone(), 6);
        h.close();
        assert!(h.take(&id, 6).is_none(), "dropped at close");
    }

    #[test]
    fn what_the_view_passed_is_dropped() {
        let h = Handoff::default();
        h.open(0);
        let (a, b) = (record(), record());
        let (ida, idb) = (a.id, b.id);
        h.give(a, 3);
        h.give(b, 7);
        h.seen(5);
        assert!(h.take(&ida, 3).is_none(), "passed at 5");
        assert_eq!(h.take(&idb, 7).map(|r| r.id), Some(idb));
        assert!(h.inner.lock().unwrap().order.len() == 1);
        h.seen(7);
        assert!(h.inner.lock().unwrap().order.is_empty());
    }

    #[test]
    fn it_holds_at_most_max_held() {
        let h = Handoff::default();
        h.open(0);
        for rev in 1..=(MAX_HELD as u64 + 1) {
            h.give(record(), rev);
        }
        let inner = h.inner.lock().unwrap();
        assert!(inner.held.len() <= MAX_HELD);
        assert!(inner.order.len() <= MAX_HELD);
    }
}
