//! Outcome capture: a feature row per finished attempt ([`OutcomeRow`]), derived by the
//! scheduler leader from the job records its view takes in, published to
//! `GF_OUTCOMES`, and read back by `gf outcomes export` and at the start of a term (to
//! warm the learned placement estimates).
//!
//! Why the leader and not the completion RPC: every way an attempt ends (a reported
//! outcome, an expired lease, a preemption, a release, a cancellation) is a record
//! write the leader's watch sees, while the RPCs each see only some of them; and the
//! leader already decodes every record, so a row costs a comparison of two histories
//! and no read. Rows are batched (one JetStream message per product per flush), so
//! they add no message per job on the hot path.
//!
//! Invariant: a row is made only when the view held the job's previous record and the
//! attempt was open in it, so a new leader's first snapshot repeats nothing; attempts
//! that end while no leader watches (a leader change) are not captured. Readers keep
//! the first row per (job, epoch) all the same ([`dedup`]).
//!
//! The same rows feed worker-hour budgets: the seconds of every ended attempt of a
//! product that has a budget are summed and published as usage entries (one per
//! product per flush), which the budget accountant adds like cost.

pub mod export;
pub mod replay;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use gf_schemas::budget::UsageEntry;
use gf_schemas::names::{self, Routing};
use gf_schemas::outcome::OutcomeRow;
use gf_schemas::{Budget, JobId, JobRecord, WorkerId, WorkerRecord};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::plan::learned::Learned;
use crate::store::encode;

/// How often the leader publishes what it captured.
pub const FLUSH_PERIOD: Duration = Duration::from_millis(250);
/// Rows per stream message (a row is well under 1 KiB).
const ROWS_PER_MESSAGE: usize = 200;
/// Rows kept waiting for a flush at most; past it the oldest are dropped (NATS is
/// unreachable and the view keeps moving: outcomes are statistics, not state).
const MAX_BUFFERED: usize = 100_000;
/// Publish acknowledgements awaited at most; a flush with more outstanding waits.
const MAX_ACKS: usize = 64;

/// Flushes handed to the publisher and not taken yet; a flush that finds the queue
/// full keeps its rows for the next one.
const QUEUED_FLUSHES: usize = 16;
/// At shutdown, the longest wait for what is queued and its acknowledgements.
const DRAIN: Duration = Duration::from_secs(2);

type Ack = <jetstream::context::PublishAckFuture as std::future::IntoFuture>::IntoFuture;

/// Captures rows from the records the leader's view takes in.
pub struct Recorder {
    routing: Routing,
    rows: Vec<OutcomeRow>,
    /// Worker seconds per product not published yet (products with a budget only).
    worker_secs: BTreeMap<String, f64>,
    publisher: Option<Publisher>,
}

/// One flush's capture, on its way to the publisher task.
struct Flushed {
    rows: Vec<OutcomeRow>,
    worker_secs: BTreeMap<String, f64>,
}

/// The way to the task that publishes captured rows ([`start`]).
#[derive(Clone)]
pub struct Publisher(mpsc::Sender<Flushed>);

/// Starts the task that encodes and publishes what the leader's recorder captures, so
/// that the leader's loop only hands rows over: encoding and publishing a flush on the
/// loop held it 3 to 13 ms every 250 ms at 2,500 jobs/s (probed, issue 20), and every
/// job waiting for a pass waited that much longer. Ends at `shutdown`, after
/// publishing what was handed over (bounded by [`DRAIN`]).
pub fn start(js: jetstream::Context, shutdown: CancellationToken) -> (Publisher, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(QUEUED_FLUSHES);
    (Publisher(tx), tokio::spawn(publish_loop(js, rx, shutdown)))
}

async fn publish_loop(
    js: jetstream::Context,
    mut rx: mpsc::Receiver<Flushed>,
    shutdown: CancellationToken,
) {
    let mut acks = futures::stream::FuturesUnordered::new();
    let checked = |ack: Result<_, jetstream::context::PublishError>| {
        if let Err(e) = ack {
            tracing::warn!(error = %e, "outcome rows not acknowledged; they are lost");
        }
    };
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some(ack) = acks.next(), if !acks.is_empty() => checked(ack),
            flushed = rx.recv(), if acks.len() < MAX_ACKS => match flushed {
                Some(f) => publish(&js, f, &mut acks).await,
                None => break,
            },
        }
    }
    let _ = tokio::time::timeout(DRAIN, async {
        while let Ok(f) = rx.try_recv() {
            publish(&js, f, &mut acks).await;
        }
        while let Some(ack) = acks.next().await {
            checked(ack);
        }
    })
    .await;
}

/// Publishes one flush: rows as JSON arrays per product, worker time as usage entries.
/// Acknowledgements are pushed to `acks`, not awaited.
async fn publish(
    js: &jetstream::Context,
    flushed: Flushed,
    acks: &mut futures::stream::FuturesUnordered<Ack>,
) {
    let mut by_product: BTreeMap<String, Vec<OutcomeRow>> = BTreeMap::new();
    for row in flushed.rows {
        by_product.entry(row.product.clone()).or_default().push(row);
    }
    for (product, rows) in by_product {
        for chunk in rows.chunks(ROWS_PER_MESSAGE) {
            match js.publish(names::outcomes(&product), encode(&chunk)).await {
                Ok(ack) => acks.push(std::future::IntoFuture::into_future(ack)),
                Err(e) => tracing::warn!(error = %e, "outcome rows not published"),
            }
        }
    }
    for (product, secs) in flushed.worker_secs {
        let id = JobId::new();
        let entry = UsageEntry {
            job_id: id,
            epoch: 0,
            product: product.clone(),
            cost: 0.0,
            tokens: 0,
            worker_secs: secs,
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("worker-time:{id}").as_str());
        match js
            .publish_with_headers(names::usage(&product), headers, encode(&entry))
            .await
        {
            Ok(ack) => acks.push(std::future::IntoFuture::into_future(ack)),
            Err(e) => tracing::warn!(error = %e, %product, "worker time not published"),
        }
    }
}

impl Recorder {
    /// A recorder that only captures; [`Recorder::publishing_to`] gives it somewhere
    /// to flush to.
    pub fn new(routing: Routing) -> Self {
        Self {
            routing,
            rows: Vec::new(),
            worker_secs: BTreeMap::new(),
            publisher: None,
        }
    }

    pub fn publishing_to(self, publisher: Publisher) -> Self {
        Self {
            publisher: Some(publisher),
            ..self
        }
    }

    /// Rows for the attempts of `new` that `old` held open, buffered for the next
    /// flush; returns them (for the learned estimates).
    pub fn observe(
        &mut self,
        old: Option<&JobRecord>,
        new: &JobRecord,
        workers: &HashMap<WorkerId, WorkerRecord>,
        budgets: &HashMap<String, Budget>,
        learned: &Learned,
    ) -> &[OutcomeRow] {
        let Some(old) = old else { return &[] };
        let rows = rows_between(old, new, workers, &self.routing, learned);
        if rows.is_empty() {
            return &[];
        }
        if self.rows.len() + rows.len() > MAX_BUFFERED {
            let drop = self.rows.len().min(MAX_BUFFERED / 10);
            self.rows.drain(..drop);
        }
        let start = self.rows.len();
        for row in rows {
            if budgets.contains_key(&row.product) {
                *self.worker_secs.entry(row.product.clone()).or_default() +=
                    row.duration_ms as f64 / 1000.0;
            }
            self.rows.push(row);
        }
        &self.rows[start..]
    }

    /// Rows captured and not yet published.
    pub fn pending(&self) -> usize {
        self.rows.len()
    }

    /// Hands what was captured to the publisher task ([`start`]) without waiting for
    /// anything; with its queue full (NATS slow or unreachable) the rows stay here for
    /// the next flush, bounded by [`MAX_BUFFERED`].
    pub fn flush(&mut self) {
        let Some(publisher) = &self.publisher else {
            return;
        };
        match publisher.0.try_reserve() {
            Ok(permit) => permit.send(Flushed {
                rows: std::mem::take(&mut self.rows),
                worker_secs: std::mem::take(&mut self.worker_secs),
            }),
            Err(mpsc::error::TrySendError::Full(())) => {}
            // Shutting down: nothing publishes any more.
            Err(mpsc::error::TrySendError::Closed(())) => {
                self.rows.clear();
                self.worker_secs.clear();
            }
        }
    }
}

/// Rows a new leader (or an explanation) learns from: at most this many, the newest.
pub const WARM_ROWS: usize = 20_000;
/// ...from at most this far back.
pub const WARM_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Learned estimates from the newest rows in the stream; empty (and a warning) when
/// the stream cannot be read, so a leader never waits on it to schedule.
pub async fn warm(
    js: &jetstream::Context,
    routing: &Routing,
    now: gf_schemas::Timestamp,
) -> crate::plan::learned::Learned {
    let mut learned = crate::plan::learned::Learned::new(routing.clone());
    let since =
        gf_schemas::Timestamp::from_unix_millis(now.unix_millis() - WARM_AGE.as_millis() as i64);
    match tokio::time::timeout(
        Duration::from_secs(10),
        export::read(js, Some(since), Some(WARM_ROWS)),
    )
    .await
    {
        Ok(Ok(rows)) => rows.iter().for_each(|r| learned.observe(r)),
        Ok(Err(e)) => tracing::warn!(error = %e, "outcome rows not read; learning from scratch"),
        Err(_) => tracing::warn!("outcome rows not read in 10 s; learning from scratch"),
    }
    learned
}

/// The rows of the attempts closed between two records of one job. The usage the
/// record gained in between is this attempt's (a completion writes both at once); if
/// several attempts closed, it goes to the last one that reported an outcome. A
/// worker's profile name is the one `learned` keeps for its capabilities (worked out
/// once per worker, not once per finished job), else worked out here.
pub fn rows_between(
    old: &JobRecord,
    new: &JobRecord,
    workers: &HashMap<WorkerId, WorkerRecord>,
    routing: &Routing,
    learned: &Learned,
) -> Vec<OutcomeRow> {
    let closed: Vec<usize> = new
        .history
        .iter()
        .enumerate()
        .filter(|(i, a)| {
            // Open in the old record, or not in it at all: a lease granted at dispatch
            // opens its attempt when the start is confirmed, and a completion that
            // confirms it opens and closes the attempt in one write.
            a.ended_at.is_some()
                && old
                    .history
                    .get(*i)
                    .is_none_or(|o| o.epoch == a.epoch && o.ended_at.is_none())
        })
        .map(|(i, _)| i)
        .collect();
    if closed.is_empty() {
        return Vec::new();
    }
    let used = |r: &JobRecord| {
        r.usage
            .as_ref()
            .map_or((0, 0.0), |u| (u.input_tokens + u.output_tokens, u.cost))
    };
    let (t_new, c_new) = used(new);
    let (t_old, c_old) = used(old);
    let delta = (t_new.saturating_sub(t_old), (c_new - c_old).max(0.0));
    let billed = closed
        .iter()
        .rev()
        .find(|i| new.history[**i].outcome.is_some())
        .copied();
    closed
        .into_iter()
        .filter_map(|i| {
            let usage = if Some(i) == billed { delta } else { (0, 0.0) };
            let mut row = OutcomeRow::of(new, i, usage)?;
            if let Some(w) = workers.get(&row.worker) {
                row.worker_profile = Some(learned.profile_for(w).map_or_else(
                    || crate::consumers::name_for(routing, &w.capabilities).to_string(),
                    str::to_string,
                ));
                row.capabilities = w.capabilities.values.clone();
                row.worker_tags = w.capabilities.tags.clone();
            }
            Some(row)
        })
        .collect()
}

/// Keeps the first row per (job, epoch), in order.
pub fn dedup(rows: Vec<OutcomeRow>) -> Vec<OutcomeRow> {
    let mut seen = HashSet::new();
    rows.into_iter()
        .filter(|r| seen.insert((r.job_id, r.epoch)))
        .collect()
}

#[cfg(test)]
mod tests {
    use gf_schemas::outcome::OutcomeClass;
    use gf_schemas::{
        Attempt, AttemptOutcome, Capabilities, JobSpec, Timestamp, Usage, WorkerState,
    };

    use super::*;

    fn t(ms: i64) -> Timestamp {
        Timestamp::from_unix_millis(ms)
    }

    fn worker(id: &str) -> WorkerRecord {
        WorkerRecord {
            id: WorkerId::new(id).unwrap(),
            capabilities: Capabilities {
                values: [("os".to_string(), "linux".to_string())].into(),
                tags: ["gpu".to_string()].into(),
                queues: vec!["default".into()],
            },
            slots: 1,
            free_slots: 1,
            running: vec![],
            state: WorkerState::Active,
            version: "0".into(),
            hostname: "h".into(),
            registered_at: t(0),
            last_heartbeat: t(0),
        }
    }

    fn running(rec: &mut JobRecord, epoch: u64, w: &str, at: i64) {
        rec.history.push(Attempt {
            epoch,
            worker: WorkerId::new(w).unwrap(),
            started_at: t(at),
            ended_at: None,
            outcome: None,
            ended_because: None,
            artifact_errors: Vec::new(),
        });
    }

    /// A completion closes the open attempt: one row with the worker's features and
    /// the usage the completion added; records that close nothing make none; an
    /// attempt already closed in the old record is not repeated.
    #[test]
    fn a_row_per_attempt_closed_between_two_records() {
        let w = worker("w1");
        let workers: HashMap<_, _> = [(w.id.clone(), w.clone())].into();
        let routing = Routing::default();
        let mut spec = JobSpec::command(["eval"]);
        spec.labels.insert("kind".into(), "eval".into());
        let mut old = JobRecord::new(JobId::new(), spec, t(0));
        old.usage = Some(Box::new(Usage {
            input_tokens: 10,
            cost: 0.1,
            ..Default::default()
        }));
        running(&mut old, 1, "w1", 100);
        let mut new = old.clone();
        assert!(rows_between(&old, &new, &workers, &routing, &Learned::default()).is_empty());
        new.history[0].ended_at = Some(t(1100));
        new.history[0].outcome = Some(AttemptOutcome::Succeeded { exit_code: 0 });
        new.usage = Some(Box::new(Usage {
            input_tokens: 40,
            output_tokens: 5,
            cost: 0.4,
            ..Default::default()
        }));
        let rows = rows_between(&old, &new, &workers, &routing, &Learned::default());
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!(
            (r.kind.as_str(), r.outcome),
            ("eval", OutcomeClass::Succeeded)
        );
        assert_eq!((r.tokens, r.duration_ms), (35, 1000));
        assert!((r.cost - 0.3).abs() < 1e-9);
        assert_eq!(
            r.worker_profile.as_deref(),
            Some(crate::consumers::name_for(&routing, &w.capabilities).as_str())
        );
        assert_eq!(r.capabilities["os"], "linux");
        assert!(r.worker_tags.contains("gpu"));
        assert!(rows_between(&new, &new, &workers, &routing, &Learned::default()).is_empty());
        // Leased at dispatch: the completion confirms the start and ends the attempt
        // in one write, so the old record has no attempt at all.
        let mut leased = JobRecord::new(JobId::new(), JobSpec::command(["eval"]), t(0));
        leased.state = gf_schemas::JobState::Dispatched;
        let mut done = leased.clone();
        running(&mut done, 1, "w1", 100);
        done.history[0].ended_at = Some(t(150));
        done.history[0].outcome = Some(AttemptOutcome::Succeeded { exit_code: 0 });
        let rows = rows_between(&leased, &done, &workers, &routing, &Learned::default());
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].outcome, rows[0].duration_ms),
            (OutcomeClass::Succeeded, 50)
        );
    }

    /// A row's profile name is the one the learned estimates keep for the worker's
    /// current capabilities; once they changed (registered again) it is worked out
    /// afresh rather than taken stale.
    #[test]
    fn a_rows_profile_is_the_learned_one_while_the_capabilities_match() {
        let routing = Routing::default();
        // Another routing names the same capabilities differently, which tells where a
        // name came from.
        let other = Routing::new(vec!["queue".into(), "os".into()]).unwrap();
        let mut learned = Learned::new(other.clone());
        let mut w = worker("w1");
        learned.note_worker(&w);
        let mut old = JobRecord::new(JobId::new(), JobSpec::command(["eval"]), t(0));
        running(&mut old, 1, "w1", 100);
        let mut new = old.clone();
        new.history[0].ended_at = Some(t(150));
        new.history[0].outcome = Some(AttemptOutcome::Succeeded { exit_code: 0 });
        let profile = |w: &WorkerRecord, learned: &Learned| {
            let workers = HashMap::from([(w.id.clone(), w.clone())]);
            rows_between(&old, &new, &workers, &routing, learned)[0]
                .worker_profile
                .clone()
        };
        assert_eq!(
            profile(&w, &learned).as_deref(),
            Some(crate::consumers::name_for(&other, &w.capabilities).as_str())
        );
        w.capabilities.tags.insert("big".into());
        assert_eq!(
            profile(&w, &learned).as_deref(),
            Some(crate::consumers::name_for(&routing, &w.capabilities).as_str())
        );
    }

    /// The recorder makes nothing from a first sighting (a new term's snapshot), sums
    /// worker time only for products with a budget, and `dedup` keeps first rows.
    #[test]
    fn recorder_and_dedup() {
        let workers = HashMap::new();
        let mut budgets = HashMap::new();
        budgets.insert("web".to_string(), Budget::new("web", t(0)));
        let mut rec = Recorder::new(Routing::default());
        let mut old = JobRecord::new(JobId::new(), JobSpec::command(["x"]), t(0));
        old.spec.product = "web".into();
        running(&mut old, 1, "w9", 0);
        let mut new = old.clone();
        new.history[0].ended_at = Some(t(4000));
        new.history[0].ended_because = Some("lease expired on worker w9".into());
        rec.observe(None, &new, &workers, &budgets, &Learned::default());
        assert_eq!(rec.pending(), 0, "first sighting");
        rec.observe(Some(&old), &new, &workers, &budgets, &Learned::default());
        assert_eq!(rec.pending(), 1);
        assert_eq!(rec.rows[0].outcome, OutcomeClass::LeaseExpired);
        assert_eq!(rec.rows[0].worker_profile, None, "unknown worker");
        assert_eq!(rec.worker_secs.get("web"), Some(&4.0));
        let mut other = old.clone();
        other.spec.product = "nobudget".into();
        let mut other_new = new.clone();
        other_new.spec.product = "nobudget".into();
        rec.observe(
            Some(&other),
            &other_new,
            &workers,
            &budgets,
            &Learned::default(),
        );
        assert!(!rec.worker_secs.contains_key("nobudget"));
        let rows = dedup(rec.rows.clone());
        assert_eq!(rows.len(), 1, "same job and epoch twice");
    }
}
