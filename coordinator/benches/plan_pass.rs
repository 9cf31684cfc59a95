//! What one plan pass costs with a deep backlog: the full scan (`plan::plan_pass`,
//! which scores and heapifies every waiting job) against the incremental planner
//! (`plan::Planner`), at 5,000, 20,000, 50,000 and 100,000 waiting jobs.
//!
//! The fleet: 8 workers × 8 slots, all busy. Each measured pass follows
//! what a busy leader sees between two passes: 16 jobs finished (their slots freed),
//! 16 notices claimed, 16 jobs submitted; the pass then dispatches 16 jobs. Also the
//! incremental planner's full recomputation (its first pass, and after any change of
//! the live workers or budgets).
//!
//! `cargo bench -p gf-coordinator --bench plan_pass [-- SIZES]`, e.g. `-- 5000 100000`.

use std::time::{Duration, Instant};

use gf_coordinator::plan::{caps, plan_pass, Decision, Pass, Planner, Policy, StartLog, View};
use gf_coordinator::score::ScoringConfig;
use gf_schemas::{
    JobId, JobRecord, JobSpec, JobState, Lease, Timestamp, WorkerId, WorkerRecord, WorkerState,
};

const WORKERS: usize = 8;
const SLOTS: u32 = 8;
const CHURN: usize = 16;
const PASSES: usize = 30;

fn worker(i: usize, now: Timestamp) -> WorkerRecord {
    WorkerRecord {
        id: WorkerId::new(format!("w{i}")).expect("id"),
        capabilities: caps(&[("os", "linux")], &[]),
        slots: SLOTS,
        free_slots: 0,
        running: vec![],
        state: WorkerState::Active,
        version: "bench".into(),
        hostname: "h".into(),
        registered_at: now,
        last_heartbeat: now,
    }
}

/// `n` jobs submitted over the last `n / 30` ms (30,000 submissions/s, in batches of
/// 64 sharing a millisecond), as the load suite submits them.
fn backlog(n: usize, now_ms: i64) -> Vec<JobRecord> {
    (0..n)
        .map(|i| {
            let at = Timestamp::from_unix_millis(now_ms - (n - i) as i64 / 30 - 1);
            JobRecord::new(JobId::new(), JobSpec::command(["gf:noop"]), at)
        })
        .collect()
}

struct Fleet {
    view: View,
    now_ms: i64,
    /// Jobs running, per worker (to free slots), and dispatched (to be claimed).
    running: Vec<(JobId, usize)>,
    dispatched: Vec<JobId>,
    next_worker: usize,
}

impl Fleet {
    fn new(n: usize) -> Self {
        let now_ms = 1_800_000_000_000;
        let now = Timestamp::from_unix_millis(now_ms);
        let mut view = View::default();
        for i in 0..WORKERS {
            let w = worker(i, now);
            view.workers.insert(w.id.clone(), w);
        }
        let mut fleet = Self {
            view,
            now_ms,
            running: Vec::new(),
            dispatched: Vec::new(),
            next_worker: 0,
        };
        for rec in backlog(n, now_ms) {
            fleet.view.set_job(rec, 1);
        }
        fleet
    }

    fn now(&self) -> Timestamp {
        Timestamp::from_unix_millis(self.now_ms)
    }

    fn write(&mut self, id: JobId, f: impl FnOnce(&mut JobRecord)) {
        let (mut rec, rev) = self.view.jobs[&id].clone();
        f(&mut rec);
        self.view.set_job(rec, rev + 1);
    }

    /// Applies a pass's dispatches, as the scheduler's writes would.
    fn apply(&mut self, pass: &Pass) {
        for d in &pass.decisions {
            if let Decision::Dispatch(id, ..) = d {
                self.write(*id, |r| {
                    r.state = JobState::Dispatched;
                    r.epoch += 1;
                });
                self.dispatched.push(*id);
            }
        }
    }

    /// Between two passes: claims, completions and new submissions.
    fn churn(&mut self) {
        self.now_ms += 2;
        let now = self.now();
        for _ in 0..CHURN.min(self.running.len()) {
            let (id, _) = self.running.remove(0);
            self.write(id, |r| r.state = JobState::Succeeded);
        }
        for id in std::mem::take(&mut self.dispatched) {
            let w = self.next_worker % WORKERS;
            self.next_worker += 1;
            self.write(id, |r| {
                r.state = JobState::Running;
                r.lease = Some(Lease {
                    worker: WorkerId::new(format!("w{w}")).expect("id"),
                    epoch: r.epoch,
                    granted_at: now,
                    expires_at: now,
                    ttl_ms: 30_000,
                });
            });
            self.running.push((id, w));
        }
        for _ in 0..CHURN {
            let rec = JobRecord::new(JobId::new(), JobSpec::command(["gf:noop"]), now);
            self.view.set_job(rec, 1);
        }
        for w in self.view.workers.values_mut() {
            w.last_heartbeat = now;
        }
    }
}

/// Estimates from 1,000 outcomes per worker of the backlog's kind (`gf:noop`), each
/// worker with its own success rate and speed.
fn learned_model(now: Timestamp) -> gf_coordinator::plan::learned::Learned {
    use gf_schemas::outcome::OutcomeRow;
    let mut l = gf_coordinator::plan::learned::Learned::default();
    for i in 0..WORKERS {
        let w = worker(i, now);
        for k in 0..1_000usize {
            let mut rec = JobRecord::new(JobId::new(), JobSpec::command(["gf:noop"]), now);
            let ok = k % (i + 2) != 0;
            rec.history.push(gf_schemas::Attempt {
                epoch: 1,
                worker: w.id.clone(),
                started_at: now,
                ended_at: Some(Timestamp::from_unix_millis(
                    now.unix_millis() + 1_000 * (i as i64 + 1),
                )),
                outcome: Some(if ok {
                    gf_schemas::AttemptOutcome::Succeeded { exit_code: 0 }
                } else {
                    gf_schemas::AttemptOutcome::Failed {
                        exit_code: Some(1),
                        error: "exit 1".into(),
                    }
                }),
                ended_because: None,
                artifact_errors: Vec::new(),
            });
            let row: OutcomeRow = OutcomeRow::of(&rec, 0, (0, 0.0)).expect("closed");
            l.observe(&row);
        }
    }
    l
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![5_000, 20_000, 50_000, 100_000]
    } else {
        sizes
    };
    let scoring = ScoringConfig::default();
    let policy = Policy {
        worker_timeout: Duration::from_secs(30),
        scoring: &scoring,
        preemption_margin: None,
        limits: &[],
    };
    let starts = StartLog::default();
    println!(
        "{:>8}  {:>16}  {:>18}  {:>22}  {:>9}  {:>18}",
        "waiting",
        "full scan (ms)",
        "incremental (ms)",
        "incremental, full (ms)",
        "examined",
        "+ learned (ms)"
    );
    for n in sizes {
        // The full scan, in the same steady state.
        let mut fleet = Fleet::new(n);
        let mut full = Vec::new();
        for _ in 0..PASSES {
            let now = fleet.now();
            let t = Instant::now();
            let pass = plan_pass(&fleet.view, &policy, &starts, now);
            full.push(t.elapsed());
            fleet.apply(&pass);
            fleet.churn();
        }
        // The incremental planner: its first pass recomputes everything.
        let mut fleet = Fleet::new(n);
        let mut planner = Planner::new();
        let now = fleet.now();
        let t = Instant::now();
        let first = planner.pass(&mut fleet.view, &policy, &starts, now);
        let rebuild = t.elapsed();
        fleet.apply(&first);
        fleet.churn();
        let mut incremental = Vec::new();
        let mut examined = Vec::new();
        for _ in 0..PASSES {
            let now = fleet.now();
            let t = Instant::now();
            let pass = planner.pass(&mut fleet.view, &policy, &starts, now);
            incremental.push(t.elapsed());
            examined.push(planner.examined());
            fleet.apply(&pass);
            fleet.churn();
        }
        // The same with learned placement terms (issue 17): estimates for the jobs'
        // kind on every worker, so each placement scores them.
        let mut fleet = Fleet::new(n);
        fleet.view.learned = learned_model(fleet.now());
        let mut planner = Planner::new();
        let now = fleet.now();
        let first = planner.pass(&mut fleet.view, &policy, &starts, now);
        fleet.apply(&first);
        fleet.churn();
        let mut with_learned = Vec::new();
        for _ in 0..PASSES {
            let now = fleet.now();
            let t = Instant::now();
            let pass = planner.pass(&mut fleet.view, &policy, &starts, now);
            with_learned.push(t.elapsed());
            fleet.apply(&pass);
            fleet.churn();
        }
        examined.sort();
        println!(
            "{n:>8}  {:>16.3}  {:>18.3}  {:>22.1}  {:>9}  {:>18.3}",
            ms(median(full)),
            ms(median(incremental)),
            ms(rebuild),
            examined[examined.len() / 2],
            ms(median(with_learned))
        );
    }
}
