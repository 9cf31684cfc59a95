//! Maps and sets keyed by [`JobId`], hashed with foldhash rather than std's SipHash.
//!
//! The leader's view, its planner, the operator counters and the recent-writes hint
//! each look a job up several times per job write; with SipHash the hashing of those
//! 16-byte keys was about 5 % of a loaded coordinator's CPU (BENCHMARKS.md, issue 20
//! phase F). foldhash is seeded at random per process, as std's hasher is, so which
//! ids collide is not known in advance to whoever names them.

use std::collections::{HashMap, HashSet};

use gf_schemas::JobId;

/// The maps' hasher.
pub type JobHasher = foldhash::fast::RandomState;

/// A map keyed by job id. Make one with `JobMap::default()`.
pub type JobMap<V> = HashMap<JobId, V, JobHasher>;

/// A set of job ids. Make one with `JobSet::default()`.
pub type JobSet = HashSet<JobId, JobHasher>;
