//! Recommendations for operators (`gf recommend`, `GET /api/recommendations`, the
//! dashboard's panel): what the outcome rows, the fleet, the waiting jobs and the
//! budgets say needs a person.
//!
//! - **flaky worker**: a worker whose failure rate for a kind stands out — at least
//!   [`MIN_RUNS`] attempts of the kind on it, failing at least [`FLAKY_RATE`] and
//!   [`FLAKY_MARGIN`] above the other workers' rate for that kind.
//! - **hard kind**: a kind no worker runs well — at least [`MIN_RUNS`] attempts and
//!   every worker with any of them failing at least half.
//! - **missing capability**: what blocked-unplaceable jobs require (queue, `key=value`,
//!   tag) that no live worker offers, with how many jobs wait for it.
//! - **budget burn**: a product whose spend this period, at the rate so far, reaches a
//!   limit (cost, tokens or worker-hours) before the period ends; or already has.
//!
//! [`recommend`] is pure; [`gather`] reads its inputs from JetStream.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_nats::jetstream;
use gf_schemas::outcome::OutcomeRow;
use gf_schemas::{names, Budget, JobRecord, JobState, Timestamp, WorkerRecord, WorkerState};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::StoreError;

/// Attempts of a kind on a worker before its rate is judged.
pub const MIN_RUNS: usize = 8;
/// A worker failing at least this share of a kind...
pub const FLAKY_RATE: f64 = 0.5;
/// ...and this much more than the other workers is flaky for it.
pub const FLAKY_MARGIN: f64 = 0.3;

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Topic {
    FlakyWorker,
    HardKind,
    MissingCapability,
    BudgetBurn,
}

impl Topic {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FlakyWorker => "flaky_worker",
            Self::HardKind => "hard_kind",
            Self::MissingCapability => "missing_capability",
            Self::BudgetBurn => "budget_burn",
        }
    }
}

/// One thing to look at.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Recommendation {
    pub topic: Topic,
    /// What it is about: a worker, a kind, a capability (`tag gpu`, `os=plan9`,
    /// `queue=ml`), a product.
    pub subject: String,
    /// What was seen and what to do, in a sentence.
    pub text: String,
}

/// What recommendations are made from.
pub struct Inputs<'a> {
    /// Finished attempts (any order).
    pub rows: &'a [OutcomeRow],
    /// Live workers.
    pub workers: &'a [WorkerRecord],
    /// Jobs waiting blocked (those blocked as unplaceable count).
    pub blocked: &'a [JobRecord],
    pub budgets: &'a [Budget],
    pub now: Timestamp,
}

fn pct(x: f64) -> String {
    format!("{:.0} %", x * 100.0)
}

/// Every recommendation, by topic then subject.
pub fn recommend(inp: &Inputs) -> Vec<Recommendation> {
    let mut out = Vec::new();
    out.extend(by_outcomes(inp.rows));
    out.extend(missing(inp.workers, inp.blocked));
    out.extend(inp.budgets.iter().filter_map(|b| burn(b, inp.now)));
    out.sort_by(|a, b| (a.topic, &a.subject).cmp(&(b.topic, &b.subject)));
    out
}

/// (attempts with a verdict, failed) per kind and worker.
type Counts<'r> = BTreeMap<&'r str, BTreeMap<&'r str, (usize, usize)>>;

fn by_outcomes(rows: &[OutcomeRow]) -> Vec<Recommendation> {
    let mut counts: Counts = BTreeMap::new();
    for r in rows {
        let Some(ok) = r.outcome.verdict() else {
            continue;
        };
        let c = counts
            .entry(r.kind.as_str())
            .or_default()
            .entry(r.worker.as_str())
            .or_default();
        c.0 += 1;
        c.1 += usize::from(!ok);
    }
    let mut out = Vec::new();
    for (kind, workers) in &counts {
        let (n, failed) = workers
            .values()
            .fold((0, 0), |(n, f), (a, b)| (n + a, f + b));
        if n >= MIN_RUNS && workers.values().all(|(a, b)| *b * 2 >= *a) {
            out.push(Recommendation {
                topic: Topic::HardKind,
                subject: kind.to_string(),
                text: format!(
                    "kind {kind} fails on every worker that ran it ({failed} of {n} attempts, \
                     {} workers): look at the job or its inputs, not the fleet",
                    workers.len()
                ),
            });
            continue;
        }
        for (worker, (a, f)) in workers {
            if *a < MIN_RUNS {
                continue;
            }
            let (rest_n, rest_f) = (n - a, failed - f);
            let rate = *f as f64 / *a as f64;
            let rest = if rest_n == 0 {
                0.0
            } else {
                rest_f as f64 / rest_n as f64
            };
            if rest_n > 0 && rate >= FLAKY_RATE && rate - rest >= FLAKY_MARGIN {
                out.push(Recommendation {
                    topic: Topic::FlakyWorker,
                    subject: worker.to_string(),
                    text: format!(
                        "worker {worker} fails {} of {kind} ({f} of {a}) against {} on the \
                         other workers ({rest_f} of {rest_n}): check it, or drain it \
                         (learned placement already steers {kind} away)",
                        pct(rate),
                        pct(rest)
                    ),
                });
            }
        }
    }
    out
}

/// What blocked-unplaceable jobs require that no live worker offers.
fn missing(workers: &[WorkerRecord], blocked: &[JobRecord]) -> Vec<Recommendation> {
    let live: Vec<&WorkerRecord> = workers
        .iter()
        .filter(|w| w.state != WorkerState::Gone)
        .collect();
    // Capability → (jobs, queues they wait in).
    let mut wanted: BTreeMap<String, (usize, BTreeSet<&str>)> = BTreeMap::new();
    for rec in blocked.iter().filter(|r| {
        r.state == JobState::Blocked
            && r.reason
                .as_deref()
                .is_some_and(|x| x.starts_with("unplaceable"))
    }) {
        let spec = &rec.spec;
        let mut lacks = Vec::new();
        if !live
            .iter()
            .any(|w| w.capabilities.queues.contains(&spec.queue))
        {
            lacks.push(format!("queue={}", spec.queue));
        }
        for (k, v) in &spec.requires {
            if !live.iter().any(|w| w.capabilities.values.get(k) == Some(v)) {
                lacks.push(format!("{k}={v}"));
            }
        }
        for t in &spec.tags {
            if !live.iter().any(|w| w.capabilities.tags.contains(t)) {
                lacks.push(format!("tag {t}"));
            }
        }
        for l in lacks {
            let e = wanted.entry(l).or_default();
            e.0 += 1;
            e.1.insert(spec.queue.as_str());
        }
    }
    wanted
        .into_iter()
        .map(|(cap, (jobs, queues))| Recommendation {
            topic: Topic::MissingCapability,
            text: format!(
                "{jobs} job(s) in queue {} wait for {cap}, which no live worker offers: \
                 start a worker with it, or change the jobs' requirements",
                queues.into_iter().collect::<Vec<_>>().join(", ")
            ),
            subject: cap,
        })
        .collect()
}

fn hours(d: Duration) -> String {
    format!("{:.1} h", d.as_secs_f64() / 3600.0)
}

/// Whether `b`'s spend, at its rate since the period started, reaches a limit before
/// the period ends (or already has).
fn burn(b: &Budget, now: Timestamp) -> Option<Recommendation> {
    let limits = [
        ("cost", b.spent_cost, b.limit_cost, "cost units"),
        (
            "tokens",
            b.spent_tokens as f64,
            b.limit_tokens.map(|t| t as f64),
            "tokens",
        ),
        (
            "worker-hours",
            b.spent_worker_hours,
            b.limit_worker_hours,
            "worker-hours",
        ),
    ];
    let period = b.period_secs.map(Duration::from_secs);
    let elapsed = now.since(b.period_start);
    let left = period.map(|p| p.saturating_sub(elapsed));
    for (what, spent, limit, unit) in limits {
        let Some(limit) = limit else { continue };
        let when_resets = left.map_or("it never resets".to_string(), |l| {
            format!("the period ends in {}", hours(l))
        });
        if spent >= limit {
            return Some(Recommendation {
                topic: Topic::BudgetBurn,
                subject: b.product.clone(),
                text: format!(
                    "product {} has used its {what} budget ({spent:.2} of {limit} {unit}): \
                     its jobs are held and {when_resets}; raise it or wait",
                    b.product
                ),
            });
        }
        // A rate over less than a minute says nothing yet.
        let (Some(left), true) = (left, elapsed >= Duration::from_secs(60)) else {
            continue;
        };
        if spent <= 0.0 {
            continue;
        }
        let rate = spent / elapsed.as_secs_f64();
        let until = Duration::from_secs_f64((limit - spent) / rate);
        if until < left {
            return Some(Recommendation {
                topic: Topic::BudgetBurn,
                subject: b.product.clone(),
                text: format!(
                    "product {} will use up its {what} budget in about {} at the current \
                     rate ({spent:.2} of {limit} {unit} so far), {} before the period ends: \
                     raise the limit or slow its jobs",
                    b.product,
                    hours(until),
                    hours(left - until)
                ),
            });
        }
    }
    None
}

/// Reads the inputs (outcome rows of the last 7 days, at most the newest 20,000; the
/// live workers; blocked jobs; budgets) and recommends. Reads every job record: meant
/// for an operator's question, not a hot path.
pub async fn gather(
    js: &jetstream::Context,
    worker_timeout: Duration,
    now: Timestamp,
) -> Result<Vec<Recommendation>, StoreError> {
    use crate::outcomes::{export, WARM_AGE, WARM_ROWS};
    let since = Timestamp::from_unix_millis(now.unix_millis() - WARM_AGE.as_millis() as i64);
    let rows = export::read(js, Some(since), Some(WARM_ROWS)).await?;
    let bucket = |name: &'static str| async move {
        js.get_key_value(name)
            .await
            .map_err(|e| StoreError::Transport(format!("no {name} bucket: {e}")))
    };
    let workers: Vec<WorkerRecord> =
        crate::store::read_all_as::<WorkerRecord>(&bucket(names::BUCKET_WORKERS).await?)
            .await?
            .into_iter()
            .filter(|w| crate::plan::worker_live(w, worker_timeout, now))
            .collect();
    let blocked = crate::store::list_jobs(
        &bucket(names::BUCKET_JOBS).await?,
        Some(JobState::Blocked),
        usize::MAX,
    )
    .await?;
    let budgets: Vec<Budget> =
        crate::store::read_all_as::<Budget>(&bucket(names::BUCKET_BUDGETS).await?).await?;
    Ok(recommend(&Inputs {
        rows: &rows,
        workers: &workers,
        blocked: &blocked,
        budgets: &budgets,
        now,
    }))
}

#[cfg(test)]
mod tests {
    use gf_schemas::outcome::OutcomeClass;
    use gf_schemas::{Capabilities, JobId, JobSpec, WorkerId};

    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_unix_millis(1_800_000_000_000 + s * 1000)
    }

    fn rows(kind: &str, worker: &str, n: usize, failed: usize) -> Vec<OutcomeRow> {
        let mut all = crate::outcomes::replay::synthetic::synthetic(1, 1);
        let base = all.remove(0);
        (0..n)
            .map(|i| OutcomeRow {
                job_id: JobId::new(),
                kind: kind.into(),
                worker: WorkerId::new(worker).unwrap(),
                outcome: if i < failed {
                    OutcomeClass::Failed
                } else {
                    OutcomeClass::Succeeded
                },
                ..base.clone()
            })
            .collect()
    }

    fn worker(id: &str, tags: &[&str]) -> WorkerRecord {
        WorkerRecord {
            id: WorkerId::new(id).unwrap(),
            capabilities: Capabilities {
                values: [("os".to_string(), "linux".to_string())].into(),
                tags: tags.iter().map(|s| s.to_string()).collect(),
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

    fn topics(r: &[Recommendation]) -> Vec<(Topic, &str)> {
        r.iter().map(|r| (r.topic, r.subject.as_str())).collect()
    }

    /// A worker failing most builds is named; one failing a few is not; a kind failing
    /// everywhere is named as the kind, not its workers; too few runs say nothing.
    #[test]
    fn flaky_workers_and_hard_kinds() {
        let mut all = rows("build", "flaky", 10, 8);
        all.extend(rows("build", "good", 20, 2));
        all.extend(rows("eval", "flaky", 10, 0));
        all.extend(rows("lint", "a", 5, 5));
        all.extend(rows("lint", "b", 5, 4));
        all.extend(rows("docs", "flaky", 7, 7));
        all.extend(rows("docs", "good", 7, 0));
        let r = recommend(&Inputs {
            rows: &all,
            workers: &[],
            blocked: &[],
            budgets: &[],
            now: t(0),
        });
        assert_eq!(
            topics(&r),
            [(Topic::FlakyWorker, "flaky"), (Topic::HardKind, "lint")],
            "{r:#?}"
        );
        assert!(
            r[0].text.contains("80 % of build (8 of 10)"),
            "{}",
            r[0].text
        );
    }

    /// Unplaceable jobs name what no live worker offers, counted; a gone worker does
    /// not count as offering it; a job blocked for another reason is not counted.
    #[test]
    fn missing_capabilities() {
        let mut gone = worker("old-gpu", &["gpu"]);
        gone.state = WorkerState::Gone;
        let workers = [worker("w1", &[]), gone];
        let job = |tag: Option<&str>, os: &str, reason: &str| {
            let mut s = JobSpec::command(["x"]);
            s.requires.insert("os".into(), os.into());
            s.tags.extend(tag.map(String::from));
            let mut r = JobRecord::new(JobId::new(), s, t(0));
            r.state = JobState::Blocked;
            r.reason = Some(reason.into());
            r
        };
        let blocked = [
            job(
                Some("gpu"),
                "linux",
                "unplaceable: no live worker has tag gpu",
            ),
            job(
                Some("gpu"),
                "linux",
                "unplaceable: no live worker has tag gpu",
            ),
            job(None, "plan9", "unplaceable: no live worker has os=plan9"),
            job(Some("tpu"), "linux", "waiting for 1 of 1 dependencies"),
        ];
        let r = recommend(&Inputs {
            rows: &[],
            workers: &workers,
            blocked: &blocked,
            budgets: &[],
            now: t(0),
        });
        assert_eq!(
            topics(&r),
            [
                (Topic::MissingCapability, "os=plan9"),
                (Topic::MissingCapability, "tag gpu")
            ]
        );
        assert!(
            r[1].text.starts_with("2 job(s) in queue default"),
            "{}",
            r[1].text
        );
    }

    /// Spend at a rate that reaches the limit before the period ends is named with when;
    /// a slow burn is not; an exhausted budget is named; a budget without limits never.
    #[test]
    fn budget_burn() {
        let mut fast = Budget::new("fast", t(0));
        fast.limit_cost = Some(100.0);
        fast.period_secs = Some(10 * 3600);
        fast.spent_cost = 50.0; // in 1 h: 100 in 2 h, 8 h early
        let mut slow = fast.clone();
        slow.product = "slow".into();
        slow.spent_cost = 5.0;
        let mut hours = Budget::new("hours", t(0));
        hours.limit_worker_hours = Some(4.0);
        hours.spent_worker_hours = 4.5;
        let free = Budget::new("free", t(0));
        let r = recommend(&Inputs {
            rows: &[],
            workers: &[],
            blocked: &[],
            budgets: &[fast, slow, hours, free],
            now: t(3600),
        });
        assert_eq!(
            topics(&r),
            [(Topic::BudgetBurn, "fast"), (Topic::BudgetBurn, "hours")],
            "{r:#?}"
        );
        assert!(r[0].text.contains("in about 1.0 h"), "{}", r[0].text);
        assert!(
            r[0].text.contains("8.0 h before the period ends"),
            "{}",
            r[0].text
        );
        assert!(r[1].text.contains("worker-hours budget"), "{}", r[1].text);
    }
}
