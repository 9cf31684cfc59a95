//! What a replay knows of the fleet from the rows alone: each worker's capabilities,
//! its slots (the most attempts it ever had open at once), when it was around, and a
//! model of how each worker does at each kind of job (the "truth" the replayed
//! placements are valued with).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use gf_schemas::outcome::OutcomeRow;
use gf_schemas::{Capabilities, JobSpec, WorkerId};

use crate::plan::learned::{PRIOR_SUCCESS, PRIOR_WEIGHT};

/// A worker as the rows show it.
#[derive(Clone, Debug)]
pub(super) struct Worker {
    pub id: WorkerId,
    pub profile: Option<String>,
    /// Values and tags of its newest row; queues: every queue it ran a job of.
    pub caps: Capabilities,
    /// The most attempts it had open at once (at least 1).
    pub slots: u32,
    /// From its first start to its last end (ms): a job arriving outside this window
    /// is not offered to it (it had not joined yet, or had left).
    pub first_ms: i64,
    pub last_ms: i64,
}

#[derive(Debug)]
pub(super) struct Fleet {
    /// Sorted by id, so every iteration order is fixed.
    pub workers: Vec<Worker>,
    index: HashMap<WorkerId, usize>,
}

impl Fleet {
    pub fn of(rows: &[&OutcomeRow]) -> Self {
        let mut by_id: BTreeMap<&WorkerId, Vec<&OutcomeRow>> = BTreeMap::new();
        for r in rows {
            by_id.entry(&r.worker).or_default().push(r);
        }
        let workers: Vec<Worker> = by_id
            .into_iter()
            .map(|(id, mut rs)| {
                rs.sort_by_key(|r| (r.ended_at, r.job_id, r.epoch));
                let newest = rs[rs.len() - 1];
                let queues: BTreeSet<&str> = rs.iter().map(|r| r.queue.as_str()).collect();
                Worker {
                    id: id.clone(),
                    profile: rs.iter().rev().find_map(|r| r.worker_profile.clone()),
                    caps: Capabilities {
                        values: newest.capabilities.clone(),
                        tags: newest.worker_tags.clone(),
                        queues: queues.into_iter().map(String::from).collect(),
                    },
                    slots: most_open(&rs),
                    first_ms: rs
                        .iter()
                        .map(|r| r.started_at.unix_millis())
                        .min()
                        .unwrap_or(0),
                    last_ms: rs
                        .iter()
                        .map(|r| r.ended_at.unix_millis())
                        .max()
                        .unwrap_or(0),
                }
            })
            .collect();
        let index = workers
            .iter()
            .enumerate()
            .map(|(i, w)| (w.id.clone(), i))
            .collect();
        Self { workers, index }
    }

    pub fn index(&self, w: &WorkerId) -> usize {
        self.index[w]
    }

    /// The workers that could have taken `spec` arriving at `at_ms`: around then, and
    /// offering its queue, requirements and tags. Always includes the worker that did
    /// take it (`recorded`), whatever the rows say of its capabilities.
    pub fn eligible(&self, spec: &JobSpec, at_ms: i64, recorded: usize) -> Vec<usize> {
        self.workers
            .iter()
            .enumerate()
            .filter(|(i, w)| {
                *i == recorded
                    || (w.first_ms <= at_ms && at_ms <= w.last_ms && w.caps.unmet(spec).is_none())
            })
            .map(|(i, _)| i)
            .collect()
    }
}

/// The most attempts open at once among `rows` (one worker's): a sweep over starts
/// and ends, an end before a start at the same instant.
fn most_open(rows: &[&OutcomeRow]) -> u32 {
    let mut events: Vec<(i64, i32)> = rows
        .iter()
        .flat_map(|r| {
            [
                (r.started_at.unix_millis(), 1),
                (r.ended_at.unix_millis(), -1),
            ]
        })
        .collect();
    events.sort();
    let (mut open, mut most) = (0i32, 1i32);
    for (_, d) in events {
        open += d;
        most = most.max(open);
    }
    most as u32
}

/// Decayless counts of one key: attempts with a verdict, successes, milliseconds.
#[derive(Clone, Debug, Default)]
struct Count {
    n: f64,
    ok: f64,
    ms: f64,
}

impl Count {
    fn add(&mut self, ok: bool, ms: u64) {
        self.n += 1.0;
        self.ok += f64::from(u8::from(ok));
        self.ms += ms as f64;
    }

    fn success(&self, prior: f64) -> f64 {
        (self.ok + PRIOR_WEIGHT * prior) / (self.n + PRIOR_WEIGHT)
    }

    fn mean_ms(&self, prior: f64) -> f64 {
        (self.ms + PRIOR_WEIGHT * prior) / (self.n + PRIOR_WEIGHT)
    }
}

/// How each worker does at each kind, over the whole file: success rate and mean
/// attempt duration (failures included: a failed attempt holds its slot too), with the
/// planner's shrinkage (worker → profile → kind → [`PRIOR_SUCCESS`]) so that a worker
/// that never ran a kind is valued like its profile. Unlike the planner's estimates it
/// does not decay and sees the future: it is the yardstick, not a policy.
#[derive(Debug, Default)]
pub(super) struct Oracle {
    kind: HashMap<String, Count>,
    profile: HashMap<(String, String), Count>,
    worker: HashMap<(String, usize), Count>,
}

impl Oracle {
    /// From rows that have a verdict.
    pub fn of(rows: &[&OutcomeRow], fleet: &Fleet) -> Self {
        let mut o = Self::default();
        for r in rows {
            let Some(ok) = r.outcome.verdict() else {
                continue;
            };
            let w = fleet.index(&r.worker);
            o.kind
                .entry(r.kind.clone())
                .or_default()
                .add(ok, r.duration_ms);
            if let Some(p) = &fleet.workers[w].profile {
                o.profile
                    .entry((r.kind.clone(), p.clone()))
                    .or_default()
                    .add(ok, r.duration_ms);
            }
            o.worker
                .entry((r.kind.clone(), w))
                .or_default()
                .add(ok, r.duration_ms);
        }
        o
    }

    fn levels(&self, kind: &str, w: &Worker, wi: usize) -> [Count; 3] {
        let get = |c: Option<&Count>| c.cloned().unwrap_or_default();
        [
            get(self.kind.get(kind)),
            get(w
                .profile
                .as_ref()
                .and_then(|p| self.profile.get(&(kind.to_string(), p.clone())))),
            get(self.worker.get(&(kind.to_string(), wi))),
        ]
    }

    /// Likely success of `kind` on worker `wi`.
    pub fn success(&self, fleet: &Fleet, kind: &str, wi: usize) -> f64 {
        let [k, p, w] = self.levels(kind, &fleet.workers[wi], wi);
        w.success(p.success(k.success(PRIOR_SUCCESS)))
    }

    /// Expected seconds of an attempt of `kind` on worker `wi` (at least 1 ms).
    pub fn secs(&self, fleet: &Fleet, kind: &str, wi: usize) -> f64 {
        let [k, p, w] = self.levels(kind, &fleet.workers[wi], wi);
        let kind_ms = if k.n > 0.0 { k.ms / k.n } else { 1.0 };
        (w.mean_ms(p.mean_ms(kind_ms)) / 1000.0).max(0.001)
    }

    /// The kind's mean attempt seconds over every worker (at least 1 ms).
    pub fn kind_secs(&self, kind: &str) -> f64 {
        self.kind
            .get(kind)
            .filter(|k| k.n > 0.0)
            .map_or(0.001, |k| (k.ms / k.n / 1000.0).max(0.001))
    }
}
