//! A deterministic synthetic history (`gf outcomes synth`): outcome rows of a small
//! fleet placed as before learned placement (any free worker that fits, at random), to
//! try `gf outcomes replay` on and to test it.
//!
//! The fleet: `flaky` fails 80 % of `build` jobs and runs `eval` fine; `steady1` is
//! sound; `steady2` is sound but 1.6× slower; `fast` (another profile, 2× faster)
//! joins 40 % of the way in; `gpu1` alone offers the `gpu` tag and the `ml` queue that
//! `train` jobs need. Products: `web` (builds, half the evals) and `ml` (trains, the
//! other evals). Each worker has two slots; a failed or preempted attempt is retried
//! once. About 1 % of attempts are preempted and 1 % lose their lease.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use gf_schemas::outcome::{OutcomeClass, OutcomeRow};
use gf_schemas::{JobId, Timestamp, WorkerId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const START_MS: i64 = 1_800_000_000_000;
const SLOTS: usize = 2;

struct Worker {
    id: &'static str,
    profile: &'static str,
    values: &'static [(&'static str, &'static str)],
    tags: &'static [&'static str],
    queues: &'static [&'static str],
    /// Duration factor.
    speed: f64,
    /// Joins this many milliseconds after the start.
    joins_ms: i64,
}

struct Kind {
    name: &'static str,
    product: fn(&mut StdRng) -> &'static str,
    queue: &'static str,
    tags: &'static [&'static str],
    priority: u8,
    secs: f64,
}

const KINDS: [Kind; 3] = [
    Kind {
        name: "build",
        product: |_| "web",
        queue: "default",
        tags: &[],
        priority: 5,
        secs: 90.0,
    },
    Kind {
        name: "eval",
        product: |r| if r.random_bool(0.5) { "web" } else { "ml" },
        queue: "default",
        tags: &[],
        priority: 3,
        secs: 40.0,
    },
    Kind {
        name: "train",
        product: |_| "ml",
        queue: "ml",
        tags: &["gpu"],
        priority: 4,
        secs: 300.0,
    },
];

fn fails(worker: &str, kind: &str) -> f64 {
    match (worker, kind) {
        ("flaky", "build") => 0.8,
        (_, "train") => 0.1,
        (_, "build") => 0.05,
        _ => 0.03,
    }
}

struct Job {
    id: JobId,
    kind: usize,
    product: &'static str,
    attempt: u32,
}

/// A new job of a random kind; its index in `jobs`.
fn new_job(rng: &mut StdRng, jobs: &mut Vec<Job>) -> usize {
    let roll: f64 = rng.random();
    let kind = if roll < 0.5 {
        0
    } else if roll < 0.85 {
        1
    } else {
        2
    };
    let product = (KINDS[kind].product)(rng);
    let id: JobId = uuid::Uuid::from_u128(rng.random())
        .to_string()
        .parse()
        .expect("a uuid is a job id");
    jobs.push(Job {
        id,
        kind,
        product,
        attempt: 1,
    });
    jobs.len() - 1
}

/// `rows` outcome rows (oldest end first) from `seed`; the same arguments give the same
/// rows.
pub fn synthetic(rows: usize, seed: u64) -> Vec<OutcomeRow> {
    // Arrivals every 30 s on average over the whole history.
    let span_ms = rows as i64 * 30_000;
    // Three workers of one profile.
    let linux = |id, speed| Worker {
        id,
        profile: "gfw_linux",
        values: &[("os", "linux")],
        tags: &[],
        queues: &["default"],
        speed,
        joins_ms: 0,
    };
    let workers = [
        linux("flaky", 1.0),
        linux("steady1", 1.0),
        linux("steady2", 1.6),
        Worker {
            id: "fast",
            profile: "gfw_linux_big",
            values: &[("cpus", "32"), ("os", "linux")],
            tags: &[],
            queues: &["default"],
            speed: 0.5,
            joins_ms: span_ms * 2 / 5,
        },
        Worker {
            id: "gpu1",
            profile: "gfw_gpu",
            values: &[("os", "linux")],
            tags: &["gpu"],
            queues: &["default", "ml"],
            speed: 1.0,
            joins_ms: 0,
        },
    ];
    let mut rng = StdRng::seed_from_u64(seed);
    // When each slot of each worker is free again.
    let mut free_at: Vec<[i64; SLOTS]> = workers
        .iter()
        .map(|w| [START_MS + w.joins_ms; SLOTS])
        .collect();
    // (ready at, sequence, job): fresh arrivals and retries in time order.
    let mut queue: BinaryHeap<Reverse<(i64, u64, usize)>> = BinaryHeap::new();
    let mut jobs: Vec<Job> = Vec::new();
    let mut seq = 0u64;
    let mut latest = new_job(&mut rng, &mut jobs);
    queue.push(Reverse((START_MS, seq, latest)));
    let mut fresh_at = START_MS;
    let mut out = Vec::with_capacity(rows);
    while out.len() < rows {
        let Some(Reverse((ready, _, j))) = queue.pop() else {
            break;
        };
        if j == latest {
            fresh_at += rng.random_range(0..60_000);
            latest = new_job(&mut rng, &mut jobs);
            seq += 1;
            queue.push(Reverse((fresh_at, seq, latest)));
        }
        let kind = &KINDS[jobs[j].kind];
        let fits = |w: &Worker| {
            w.queues.contains(&kind.queue) && kind.tags.iter().all(|t| w.tags.contains(t))
        };
        // Any fitting worker with a slot free at `ready`, else the first to free one.
        let open: Vec<(usize, usize)> = (0..workers.len())
            .filter(|&w| fits(&workers[w]))
            .flat_map(|w| (0..SLOTS).map(move |s| (w, s)))
            .filter(|&(w, s)| free_at[w][s] <= ready && workers[w].joins_ms + START_MS <= ready)
            .collect();
        let (w, s) = if open.is_empty() {
            (0..workers.len())
                .filter(|&w| fits(&workers[w]))
                .flat_map(|w| (0..SLOTS).map(move |s| (w, s)))
                .min_by_key(|&(w, s)| (free_at[w][s], w, s))
                .expect("every kind has a worker")
        } else {
            open[rng.random_range(0..open.len())]
        };
        let worker = &workers[w];
        let start = ready.max(free_at[w][s]);
        let full = kind.secs * worker.speed * rng.random_range(0.7..1.3);
        let roll: f64 = rng.random();
        let p_fail = fails(worker.id, kind.name);
        let (outcome, secs) = if roll < 0.01 {
            (OutcomeClass::Preempted, full * rng.random_range(0.1..0.9))
        } else if roll < 0.02 {
            (
                OutcomeClass::LeaseExpired,
                full * rng.random_range(0.1..0.9),
            )
        } else if rng.random_bool(p_fail) {
            (OutcomeClass::Failed, full * rng.random_range(0.2..1.0))
        } else {
            (OutcomeClass::Succeeded, full)
        };
        let end = start + (secs * 1000.0) as i64;
        free_at[w][s] = end;
        let job = &jobs[j];
        out.push(OutcomeRow {
            job_id: job.id,
            epoch: u64::from(job.attempt),
            attempt: job.attempt,
            kind: kind.name.to_string(),
            worker: WorkerId::new(worker.id).expect("a worker id"),
            worker_profile: Some(worker.profile.to_string()),
            capabilities: worker
                .values
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            worker_tags: worker
                .tags
                .iter()
                .map(|t| t.to_string())
                .collect::<BTreeSet<_>>(),
            queue: kind.queue.to_string(),
            product: job.product.to_string(),
            priority: kind.priority,
            requires: BTreeMap::new(),
            tags: kind.tags.iter().map(|t| t.to_string()).collect(),
            outcome,
            exit_code: match outcome {
                OutcomeClass::Succeeded => Some(0),
                OutcomeClass::Failed => Some(1),
                _ => None,
            },
            started_at: Timestamp::from_unix_millis(start),
            ended_at: Timestamp::from_unix_millis(end),
            duration_ms: (end - start) as u64,
            tokens: 0,
            cost: 0.0,
            why: match outcome {
                OutcomeClass::Failed => Some("exit 1".into()),
                OutcomeClass::Preempted => Some("preempted by a more urgent job".into()),
                OutcomeClass::LeaseExpired => {
                    Some(format!("lease expired on worker {}", worker.id))
                }
                _ => None,
            },
        });
        if outcome != OutcomeClass::Succeeded && job.attempt < 2 {
            jobs[j].attempt += 1;
            seq += 1;
            queue.push(Reverse((end + 10_000, seq, j)));
        }
    }
    out.sort_by_key(|r| (r.ended_at, r.job_id, r.epoch));
    out
}

/// Two builds on one one-slot worker: `a` runs 1 s; `b` is preempted once (a skipped
/// row) and then runs 20 s. Valued at their mean (10.5 s), `b` waits for `a`.
#[cfg(test)]
pub(super) fn two_jobs_one_worker() -> Vec<OutcomeRow> {
    let row = |job: JobId, epoch: u64, outcome, from: i64, to: i64| OutcomeRow {
        job_id: job,
        epoch,
        attempt: epoch as u32,
        kind: "build".into(),
        worker: WorkerId::new("solo").expect("id"),
        worker_profile: Some("p".into()),
        capabilities: BTreeMap::new(),
        worker_tags: BTreeSet::new(),
        queue: "default".into(),
        product: "web".into(),
        priority: 5,
        requires: BTreeMap::new(),
        tags: BTreeSet::new(),
        outcome,
        exit_code: None,
        started_at: Timestamp::from_unix_millis(from),
        ended_at: Timestamp::from_unix_millis(to),
        duration_ms: (to - from) as u64,
        tokens: 0,
        cost: 0.0,
        why: None,
    };
    let (a, b) = (JobId::new(), JobId::new());
    vec![
        row(a, 1, OutcomeClass::Succeeded, 0, 1000),
        row(b, 1, OutcomeClass::Preempted, 1000, 2000),
        row(b, 2, OutcomeClass::Succeeded, 2000, 22_000),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Same seed, same rows; the rows have the advertised shape.
    #[test]
    fn deterministic_and_shaped() {
        let a = synthetic(2000, 9);
        assert_eq!(a, synthetic(2000, 9));
        assert_ne!(a, synthetic(2000, 10));
        assert_eq!(a.len(), 2000);
        let rate = |w: &str, k: &str| {
            let of: Vec<_> = a
                .iter()
                .filter(|r| r.worker.as_str() == w && r.kind == k)
                .collect();
            let failed = of
                .iter()
                .filter(|r| r.outcome.verdict() == Some(false))
                .count();
            failed as f64 / of.len().max(1) as f64
        };
        assert!(rate("flaky", "build") > 0.6, "{}", rate("flaky", "build"));
        assert!(rate("steady1", "build") < 0.2);
        assert!(a
            .iter()
            .filter(|r| r.kind == "train")
            .all(|r| r.worker.as_str() == "gpu1"));
        assert!(a.iter().any(|r| r.outcome == OutcomeClass::Preempted));
        assert!(a.iter().any(|r| r.attempt == 2));
    }
}
