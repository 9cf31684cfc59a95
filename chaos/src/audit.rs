//! The audit log a run records, and the invariants checked against it.
//!
//! Sources, each with the time it happened:
//! - every submission the suite made and its answer (recorded here);
//! - every fault injected (recorded here);
//! - every job revision the suite saw on a live watch of `gf_jobs` (claims, renewals,
//!   completions, re-leases as the store took them);
//! - the `GF_EVENTS` audit trail (claims, completions, expiries as the coordinators
//!   announced them), read in full at the end;
//! - the final job records with their `history` of attempts, from `gf_jobs` or, for a
//!   job whose grace period there ended, from the archive (`GF_ARCHIVE`);
//! - the side-effect file every chaos job appends `<job id> <epoch>` to.
//!
//! A violation names the invariant and the job ids.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use gf_schemas::names;
use gf_schemas::{Event, EventKind, JobId, JobRecord, JobState, Timestamp};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::cluster::{Fault, Part};

#[derive(Clone, Debug, Serialize)]
pub struct SubmitEntry {
    pub time: Timestamp,
    pub key: Option<String>,
    /// The job id answered, or the error.
    pub job_id: Option<JobId>,
    pub duplicate: bool,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct FaultEntry {
    pub time: Timestamp,
    pub part: Part,
    /// Coordinator or worker id.
    pub name: Option<String>,
    pub fault: Fault,
}

#[derive(Clone, Debug, Serialize)]
pub struct Violation {
    pub invariant: &'static str,
    pub jobs: Vec<JobId>,
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown: Vec<String> = self.jobs.iter().take(10).map(|j| j.to_string()).collect();
        let more = self.jobs.len().saturating_sub(10);
        write!(
            f,
            "VIOLATION [{}] {} — jobs: {}{}",
            self.invariant,
            self.detail,
            shown.join(", "),
            if more > 0 {
                format!(" (+{more} more)")
            } else {
                String::new()
            }
        )
    }
}

/// What the live watch of `gf_jobs` learnt.
#[derive(Default)]
struct KvView {
    latest: HashMap<JobId, JobRecord>,
    revisions: u64,
    violations: Vec<Violation>,
}

impl KvView {
    /// Checks one revision against the previous one seen for the same job.
    fn observe(&mut self, rec: JobRecord) {
        self.revisions += 1;
        if let Some(prev) = self.latest.get(&rec.id) {
            if rec.epoch < prev.epoch {
                self.violations.push(Violation {
                    invariant: "epochs only rise",
                    jobs: vec![rec.id],
                    detail: format!("epoch went from {} to {}", prev.epoch, rec.epoch),
                });
            }
            if prev.state.is_terminal() && rec.state != prev.state {
                self.violations.push(Violation {
                    invariant: "terminal is final",
                    jobs: vec![rec.id],
                    detail: format!("state went from {} to {}", prev.state, rec.state),
                });
            }
            let had: HashMap<u64, bool> = prev
                .history
                .iter()
                .map(|a| (a.epoch, a.outcome.is_some()))
                .collect();
            for a in &rec.history {
                if a.outcome.is_some() && !had.get(&a.epoch).copied().unwrap_or(false) {
                    // A completion was accepted in this revision: it must be from the
                    // epoch the job is at, i.e. not superseded.
                    if a.epoch != rec.epoch {
                        self.violations.push(Violation {
                            invariant: "no completion from a superseded epoch",
                            jobs: vec![rec.id],
                            detail: format!(
                                "outcome recorded for epoch {} while the job is at epoch {}",
                                a.epoch, rec.epoch
                            ),
                        });
                    }
                }
            }
        }
        self.latest.insert(rec.id, rec);
    }
}

/// The audit log of one run.
#[derive(Default)]
pub struct Audit {
    submits: Mutex<Vec<SubmitEntry>>,
    faults: Mutex<Vec<FaultEntry>>,
    view: Mutex<KvView>,
}

impl Audit {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn submitted(&self, e: SubmitEntry) {
        self.submits.lock().expect("audit").push(e);
    }

    pub fn fault(&self, part: Part, name: Option<String>, fault: Fault) -> Timestamp {
        let time = Timestamp::now_local();
        eprintln!(
            "chaos: {time} fault {fault:?} -> {part} ({})",
            name.as_deref().unwrap_or("-")
        );
        self.faults.lock().expect("audit").push(FaultEntry {
            time,
            part,
            name,
            fault,
        });
        time
    }

    pub fn faults(&self) -> Vec<FaultEntry> {
        self.faults.lock().expect("audit").clone()
    }

    pub fn submits(&self) -> Vec<SubmitEntry> {
        self.submits.lock().expect("audit").clone()
    }

    /// The latest state the watch saw of each of `ids` (missing ones are not listed).
    pub fn states(&self, ids: &[JobId]) -> Vec<(JobId, JobState)> {
        let v = self.view.lock().expect("audit");
        ids.iter()
            .filter_map(|id| v.latest.get(id).map(|r| (*id, r.state)))
            .collect()
    }

    pub fn latest(&self, id: &JobId) -> Option<JobRecord> {
        self.view.lock().expect("audit").latest.get(id).cloned()
    }

    /// How many of `ids` the watch has seen terminal.
    pub fn terminal_count(&self, ids: &[JobId]) -> usize {
        let v = self.view.lock().expect("audit");
        ids.iter()
            .filter(|id| v.latest.get(id).is_some_and(|r| r.state.is_terminal()))
            .count()
    }

    /// Watches every revision of `gf_jobs` until `stop`. The watch is re-created
    /// from the next revision whenever it goes quiet or fails (a watcher can hang
    /// across a server restart).
    pub fn spawn_watch(self: &Arc<Self>, js: jetstream::Context, stop: CancellationToken) {
        let audit = self.clone();
        tokio::spawn(async move {
            let mut next_rev = 1u64;
            while !stop.is_cancelled() {
                let bucket = match js.get_key_value(names::BUCKET_JOBS).await {
                    Ok(b) => b,
                    Err(_) => {
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
                        }
                    }
                };
                let mut watch = match bucket.watch_all_from_revision(next_rev).await {
                    Ok(w) => w,
                    Err(_) => {
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
                        }
                    }
                };
                loop {
                    let next = tokio::select! {
                        _ = stop.cancelled() => return,
                        n = tokio::time::timeout(Duration::from_secs(2), watch.next()) => n,
                    };
                    let entry = match next {
                        Ok(Some(Ok(e))) => e,
                        _ => break,
                    };
                    next_rev = entry.revision + 1;
                    if entry.operation != kv::Operation::Put {
                        continue;
                    }
                    if let Ok(rec) = serde_json::from_slice::<JobRecord>(&entry.value) {
                        audit.view.lock().expect("audit").observe(rec);
                    }
                }
            }
        });
    }

    /// Violations found on the live watch so far.
    pub fn watch_violations(&self) -> Vec<Violation> {
        self.view.lock().expect("audit").violations.clone()
    }

    pub fn revisions_seen(&self) -> u64 {
        self.view.lock().expect("audit").revisions
    }
}

/// Reads the whole `GF_EVENTS` stream.
pub async fn read_events(js: &jetstream::Context) -> anyhow::Result<Vec<Event>> {
    use jetstream::consumer::{pull, DeliverPolicy};
    let stream = js.get_stream(names::STREAM_EVENTS).await?;
    let last = stream.get_info().await?.state.last_sequence;
    let mut out = Vec::new();
    if last == 0 {
        return Ok(out);
    }
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            deliver_policy: DeliverPolicy::All,
            filter_subject: names::EVENTS_ALL.into(),
            ..Default::default()
        })
        .await?;
    let mut msgs = consumer.messages().await?;
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), msgs.next()).await;
        let Ok(Some(Ok(m))) = m else { break };
        let seq = m.info().map(|i| i.stream_sequence).unwrap_or(last);
        out.extend(gf_schemas::decode_events(&m.payload).unwrap_or_default());
        if seq >= last {
            break;
        }
    }
    Ok(out)
}

/// Reads every record of `gf_jobs`.
pub async fn read_jobs(js: &jetstream::Context) -> anyhow::Result<Vec<JobRecord>> {
    let bucket = js.get_key_value(names::BUCKET_JOBS).await?;
    let all = gf_coordinator::store::read_all(&bucket).await?;
    Ok(all
        .into_iter()
        .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
        .collect())
}

/// The records of `gf_jobs`, and of each of `ids` that is not there (its grace period
/// ended) its archived record: every job wherever it is. What is in neither is missing.
pub async fn read_jobs_anywhere(
    js: &jetstream::Context,
    ids: &BTreeSet<JobId>,
) -> anyhow::Result<Vec<JobRecord>> {
    let mut records = read_jobs(js).await?;
    let live: BTreeSet<JobId> = records.iter().map(|r| r.id).collect();
    for id in ids.difference(&live) {
        if let Some(rec) = gf_coordinator::history::archive::find(js, id).await? {
            records.push(rec);
        }
    }
    Ok(records)
}

/// Side effects: how many times each (job, epoch) appended its line.
pub fn read_effects(path: &Path) -> BTreeMap<(JobId, u64), u32> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let (Some(id), Some(epoch)) = (it.next(), it.next()) else {
            continue;
        };
        if let (Ok(id), Ok(epoch)) = (id.parse::<JobId>(), epoch.parse::<u64>()) {
            *out.entry((id, epoch)).or_insert(0) += 1;
        }
    }
    out
}

/// What the checks measured besides violations.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Findings {
    pub jobs: usize,
    pub succeeded: usize,
    pub attempts: u64,
    /// Attempts that ended without an accepted outcome (lease expired, revoked…).
    pub attempts_without_outcome: u64,
    /// Side effects of attempts whose result was not accepted (a fenced zombie whose
    /// process finished anyway): an epoch-checking sink would refuse them.
    pub fenced_effects: u64,
    pub events: usize,
    /// `job_claimed` events, and how many of them repeat a (job, epoch) already
    /// claimed by the same worker (a claim retried after a lost reply or redelivery).
    pub claim_events: u64,
    pub claim_events_repeated: u64,
    pub kv_revisions_seen: u64,
    /// Longest time from a worker fault to the re-lease of a job it held, in ms.
    pub max_recovery_ms: Option<u64>,
}

/// Everything the invariant checks need.
pub struct Evidence<'a> {
    pub submits: &'a [SubmitEntry],
    pub faults: &'a [FaultEntry],
    pub records: &'a [JobRecord],
    pub events: &'a [Event],
    pub effects: &'a BTreeMap<(JobId, u64), u32>,
    /// Jobs the scenario expects to have succeeded (all chaos jobs unless noted).
    pub expect_success: bool,
    /// Jobs whose side effect is checked (those running the effect command).
    pub effect_jobs: &'a BTreeSet<JobId>,
    pub recovery_bound: Duration,
}

/// Checks every invariant; returns the violations and what was measured.
pub fn check(ev: &Evidence<'_>) -> (Vec<Violation>, Findings) {
    let mut v = Vec::new();
    let mut f = Findings {
        jobs: ev.records.len(),
        events: ev.events.len(),
        ..Default::default()
    };
    let by_id: HashMap<JobId, &JobRecord> = ev.records.iter().map(|r| (r.id, r)).collect();

    // 1. No accepted job lost: every accepted submission's job exists and is terminal.
    let accepted: BTreeSet<JobId> = ev.submits.iter().filter_map(|s| s.job_id).collect();
    let missing: Vec<JobId> = accepted
        .iter()
        .filter(|id| !by_id.contains_key(id))
        .copied()
        .collect();
    if !missing.is_empty() {
        v.push(Violation {
            invariant: "no accepted job lost",
            detail: format!("{} accepted jobs have no record", missing.len()),
            jobs: missing,
        });
    }
    let unfinished: Vec<JobId> = accepted
        .iter()
        .filter(|id| by_id.get(id).is_some_and(|r| !r.state.is_terminal()))
        .copied()
        .collect();
    if !unfinished.is_empty() {
        v.push(Violation {
            invariant: "no accepted job lost",
            detail: format!(
                "{} accepted jobs are not terminal at the end",
                unfinished.len()
            ),
            jobs: unfinished,
        });
    }
    if ev.expect_success {
        let bad: Vec<JobId> = accepted
            .iter()
            .filter(|id| {
                by_id
                    .get(id)
                    .is_some_and(|r| r.state.is_terminal() && r.state != JobState::Succeeded)
            })
            .copied()
            .collect();
        if !bad.is_empty() {
            v.push(Violation {
                invariant: "every job succeeds",
                detail: format!("{} jobs ended dead or cancelled", bad.len()),
                jobs: bad,
            });
        }
    }

    // 2. Per record: epochs rise through the history, at most one accepted outcome
    //    per epoch, exactly one success for a succeeded job, at its last epoch.
    let mut not_rising = Vec::new();
    let mut double_success = Vec::new();
    let mut success_not_last = Vec::new();
    for r in ev.records {
        f.attempts += r.history.len() as u64;
        f.attempts_without_outcome +=
            r.history.iter().filter(|a| a.outcome.is_none()).count() as u64;
        if r.state == JobState::Succeeded {
            f.succeeded += 1;
        }
        if r.history.windows(2).any(|w| w[0].epoch >= w[1].epoch)
            || r.history.last().is_some_and(|a| a.epoch > r.epoch)
        {
            not_rising.push(r.id);
        }
        let wins: Vec<u64> = r
            .history
            .iter()
            .filter(|a| a.outcome.as_ref().is_some_and(|o| o.is_success()))
            .map(|a| a.epoch)
            .collect();
        if wins.len() > 1 || (r.state == JobState::Succeeded && wins.len() != 1) {
            double_success.push(r.id);
        }
        if r.state == JobState::Succeeded && wins.first() != Some(&r.epoch) {
            success_not_last.push(r.id);
        }
    }
    if !not_rising.is_empty() {
        v.push(Violation {
            invariant: "epochs only rise",
            detail: "attempt epochs do not strictly rise, or exceed the job's epoch".into(),
            jobs: not_rising,
        });
    }
    if !double_success.is_empty() {
        v.push(Violation {
            invariant: "at most one accepted completion per job",
            detail: "not exactly one accepted successful attempt".into(),
            jobs: double_success,
        });
    }
    if !success_not_last.is_empty() {
        v.push(Violation {
            invariant: "no completion from a superseded epoch",
            detail: "the accepted success is not at the job's current epoch".into(),
            jobs: success_not_last,
        });
    }

    // 3. The audit trail agrees: at most one success event per job, one claim event
    //    per (job, epoch).
    let mut success_events: HashMap<JobId, u32> = HashMap::new();
    let mut claim_events: HashMap<(JobId, u64), BTreeSet<String>> = HashMap::new();
    for e in ev.events {
        let Some(job) = e.job_id else { continue };
        match e.kind {
            EventKind::JobSucceeded => *success_events.entry(job).or_default() += 1,
            EventKind::JobClaimed => {
                let worker = e.worker_id.as_ref().map(|w| w.as_str().to_string());
                claim_events
                    .entry((job, e.epoch.unwrap_or(0)))
                    .or_default()
                    .insert(worker.unwrap_or_default());
                f.claim_events += 1;
            }
            _ => {}
        }
    }
    let twice: Vec<JobId> = success_events
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(j, _)| *j)
        .collect();
    if !twice.is_empty() {
        v.push(Violation {
            invariant: "at most one accepted completion per job",
            detail: "more than one job_succeeded event".into(),
            jobs: twice,
        });
    }
    // A holder repeating its claim (a lost reply, a redelivered notice) gets the same
    // lease back and a second event; two different workers at one epoch is a split.
    let split_claims: Vec<JobId> = claim_events
        .iter()
        .filter(|(_, w)| w.len() > 1)
        .map(|((j, _), _)| *j)
        .collect();
    if !split_claims.is_empty() {
        v.push(Violation {
            invariant: "one holder per job and epoch",
            detail: "job_claimed events from two workers for the same epoch".into(),
            jobs: split_claims,
        });
    }
    f.claim_events_repeated = f.claim_events.saturating_sub(claim_events.len() as u64);

    // 4. Side effect once per accepted successful attempt.
    let mut effect_missing_or_twice = Vec::new();
    for id in ev.effect_jobs {
        let Some(r) = by_id.get(id) else { continue };
        let accepted_epoch = r
            .history
            .iter()
            .find(|a| a.outcome.as_ref().is_some_and(|o| o.is_success()))
            .map(|a| a.epoch);
        for a in &r.history {
            let n = ev.effects.get(&(*id, a.epoch)).copied().unwrap_or(0);
            if Some(a.epoch) == accepted_epoch {
                if n != 1 {
                    effect_missing_or_twice.push(*id);
                }
            } else if n > 1 {
                effect_missing_or_twice.push(*id);
            } else {
                f.fenced_effects += n as u64;
            }
        }
    }
    let known: HashMap<JobId, BTreeSet<u64>> = ev
        .records
        .iter()
        .map(|r| (r.id, r.history.iter().map(|a| a.epoch).collect()))
        .collect();
    let phantom: Vec<JobId> = ev
        .effects
        .keys()
        .filter(|(j, e)| !known.get(j).is_some_and(|s| s.contains(e)))
        .map(|(j, _)| *j)
        .collect();
    if !effect_missing_or_twice.is_empty() {
        effect_missing_or_twice.dedup();
        v.push(Violation {
            invariant: "side effect once per accepted successful attempt",
            detail: "the accepted attempt's effect is missing or repeated".into(),
            jobs: effect_missing_or_twice,
        });
    }
    if !phantom.is_empty() {
        v.push(Violation {
            invariant: "side effect once per accepted successful attempt",
            detail: "an effect from an epoch with no attempt in the history".into(),
            jobs: phantom,
        });
    }

    // 5. One job per idempotency key.
    let mut per_key: BTreeMap<&str, BTreeSet<JobId>> = BTreeMap::new();
    for s in ev.submits {
        if let (Some(k), Some(id)) = (&s.key, s.job_id) {
            per_key.entry(k.as_str()).or_default().insert(id);
        }
    }
    for r in ev.records {
        if let Some(k) = &r.spec.idempotency_key {
            per_key.entry(k.as_str()).or_default().insert(r.id);
        }
    }
    let split: Vec<JobId> = per_key
        .values()
        .filter(|ids| ids.len() > 1)
        .flat_map(|ids| ids.iter().copied())
        .collect();
    if !split.is_empty() {
        v.push(Violation {
            invariant: "one job per idempotency key",
            detail: "an idempotency key maps to more than one job".into(),
            jobs: split,
        });
    }

    // 6. Recovery: a job held by a worker that was killed, paused or cut off is
    //    re-leased within lease TTL + reaper period + 2 s of the fault.
    let mut slow = Vec::new();
    let mut max_ms: Option<u64> = None;
    for fault in ev.faults {
        if !matches!(fault.part, Part::Worker(_))
            || !matches!(fault.fault, Fault::Kill | Fault::Pause | Fault::Cut)
        {
            continue;
        }
        let Some(worker) = &fault.name else { continue };
        for r in ev.records {
            for a in &r.history {
                if a.worker.as_str() != worker || a.outcome.is_some() {
                    continue;
                }
                let Some(end) = a.ended_at else { continue };
                if end < fault.time || a.started_at > fault.time.plus(Duration::from_secs(1)) {
                    continue;
                }
                let from = if a.started_at > fault.time {
                    a.started_at
                } else {
                    fault.time
                };
                let took = end.since(from);
                max_ms = Some(max_ms.unwrap_or(0).max(took.as_millis() as u64));
                if took > ev.recovery_bound {
                    slow.push(r.id);
                }
            }
        }
    }
    f.max_recovery_ms = max_ms;
    if !slow.is_empty() {
        v.push(Violation {
            invariant: "recovery within lease TTL + reaper period + 2 s",
            detail: format!(
                "re-leased later than {:?} after the fault",
                ev.recovery_bound
            ),
            jobs: slow,
        });
    }
    (v, f)
}
