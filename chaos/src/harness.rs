//! What every scenario uses: a cluster, a NATS client, the audit log, submission with
//! bounded concurrency, waits with deadlines, and the final check.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use async_nats::jetstream;
use futures::StreamExt;
use gf_schemas::names::{self, rpc};
use gf_schemas::rpc::SubmitReply;
use gf_schemas::{JobId, JobSpec, Timestamp, WorkerRecord, WorkerState};
use gf_worker::RpcClient;
use tokio_util::sync::CancellationToken;

use crate::audit::{self, Audit, Evidence, Findings, SubmitEntry, Violation};
use crate::cluster::{Cluster, ClusterSpec, Fault, Part, WorkerSpec};
use crate::compose::ComposeCluster;
use crate::process::{GfCommand, ProcessCluster};

pub use gf_testkit::eventually;

/// Connects to the cluster's NATS (every node) as the suite's own client, with
/// retries, following reconnects for as long as the run lasts.
pub async fn connect(cluster: &dyn Cluster) -> anyhow::Result<async_nats::Client> {
    let url = cluster.nats_url();
    let addrs: Vec<async_nats::ServerAddr> = url
        .split(',')
        .map(|u| u.parse())
        .collect::<Result<_, _>>()
        .with_context(|| format!("bad NATS url {url}"))?;
    cluster
        .connect_options()?
        .name("gf-chaos")
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(2))
        .connect(addrs)
        .await
        .with_context(|| format!("cannot connect to {url}"))
}

/// The outcome of one scenario.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub scenario: String,
    pub passed: bool,
    pub seconds: f64,
    pub violations: Vec<Violation>,
    /// Scenario-specific pass criteria that failed (not audit invariants).
    pub failures: Vec<String>,
    pub findings: Findings,
    pub faults: Vec<audit::FaultEntry>,
    /// Scenario-specific figures (e.g. takeover time).
    pub notes: Vec<String>,
}

pub struct Harness {
    pub name: String,
    pub cluster: Box<dyn Cluster>,
    pub nats: async_nats::Client,
    pub js: jetstream::Context,
    pub rpc: RpcClient,
    pub audit: Arc<Audit>,
    /// The side-effect file chaos jobs append `<job id> <epoch>` to.
    pub effects: PathBuf,
    pub effect_jobs: BTreeSet<JobId>,
    pub failures: Vec<String>,
    pub notes: Vec<String>,
    stop: CancellationToken,
    started: Instant,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Harness {
    /// Starts NATS and `coordinators` coordinators, waits until the buckets exist and
    /// a leader is elected, and starts the audit watch.
    pub async fn start(
        name: &str,
        spec: ClusterSpec,
        gf: GfCommand,
        coordinators: usize,
    ) -> anyhow::Result<Self> {
        let started = Instant::now();
        // `chaos --secured`: the process cluster too (compose always is).
        let spec = ClusterSpec {
            secured: spec.secured || (gf.secured && gf.compose.is_none()),
            ..spec
        };
        let spec2 = spec.clone();
        let cluster: Box<dyn Cluster> = match gf.compose.clone() {
            Some(opts) => Box::new(
                tokio::task::spawn_blocking(move || ComposeCluster::start(spec2, opts)).await??,
            ),
            None => Box::new(
                tokio::task::spawn_blocking(move || ProcessCluster::start(spec2, gf)).await??,
            ),
        };
        let nats = connect(&*cluster).await?;
        let js = jetstream::new(nats.clone());
        let effects = cluster.work_dir().join("effects");
        let mut h = Self {
            name: name.into(),
            cluster,
            rpc: RpcClient::new(nats.clone(), Duration::from_secs(5)),
            nats,
            js,
            audit: Audit::new(),
            effects,
            effect_jobs: BTreeSet::new(),
            failures: Vec::new(),
            notes: Vec::new(),
            stop: CancellationToken::new(),
            started,
        };
        for _ in 0..coordinators {
            h.cluster.add_coordinator()?;
        }
        h.wait_leader(Duration::from_secs(30)).await?;
        h.audit.spawn_watch(h.js.clone(), h.stop.clone());
        Ok(h)
    }

    /// Starts workers and waits until every one of them is active.
    pub async fn add_workers(&mut self, specs: Vec<WorkerSpec>) -> anyhow::Result<Vec<Part>> {
        let ids: Vec<String> = specs.iter().map(|s| s.id.clone()).collect();
        let mut parts = Vec::new();
        for s in specs {
            parts.push(self.cluster.add_worker(s)?);
        }
        self.wait_workers_active(
            &ids,
            Timestamp::from_unix_millis(0),
            Duration::from_secs(30),
        )
        .await?;
        Ok(parts)
    }

    /// Waits until each of `ids` is active with a heartbeat after `since`.
    pub async fn wait_workers_active(
        &self,
        ids: &[String],
        since: Timestamp,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let bucket = self.js.get_key_value(names::BUCKET_WORKERS).await?;
        eventually(timeout, &format!("workers {ids:?} active"), || async {
            let all = gf_coordinator::store::read_all(&bucket).await.ok()?;
            let active: BTreeSet<String> = all
                .iter()
                .filter_map(|(_, v)| serde_json::from_slice::<WorkerRecord>(v).ok())
                .filter(|w| w.state == WorkerState::Active && w.last_heartbeat >= since)
                .map(|w| w.id.as_str().to_string())
                .collect();
            ids.iter().all(|i| active.contains(i)).then_some(())
        })
        .await
    }

    /// The coordinator holding the scheduler lease, as a part, and its id.
    pub async fn leader(&self) -> Option<(Part, String)> {
        let bucket = self.js.get_key_value(names::BUCKET_LEADER).await.ok()?;
        let (value, _) = gf_coordinator::leader::current(&bucket).await?;
        self.cluster
            .parts()
            .into_iter()
            .find(|p| self.cluster.name(*p).as_deref() == Some(value.holder.as_str()))
            .map(|p| (p, value.holder))
    }

    pub async fn wait_leader(&self, timeout: Duration) -> anyhow::Result<(Part, String)> {
        eventually(timeout, "a scheduler leader", || async {
            // The stream must exist too, or workers cannot bind.
            self.js.get_stream(names::STREAM_DISPATCH).await.ok()?;
            self.leader().await
        })
        .await
    }

    /// Injects a fault and records it (with its time) in the audit log.
    pub fn fault(&mut self, part: Part, fault: Fault) -> anyhow::Result<Timestamp> {
        let t = self.audit.fault(part, self.cluster.name(part), fault);
        // A fault may block for seconds (a graceful stop, a compose start waiting for
        // health): keep the audit watch running on the other threads meanwhile.
        let cluster = &mut self.cluster;
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => {
                tokio::task::block_in_place(|| cluster.inject(part, fault))?
            }
            _ => cluster.inject(part, fault)?,
        }
        Ok(t)
    }

    /// Submits `n` jobs built by `make` with up to 32 in flight. Each carries a unique
    /// idempotency key, so a submission whose answer was lost is retried safely.
    pub async fn submit_many(
        &mut self,
        n: usize,
        make: impl Fn(usize) -> JobSpec,
    ) -> anyhow::Result<Vec<JobId>> {
        let run = uuid_like();
        let specs: Vec<JobSpec> = (0..n)
            .map(|i| {
                let mut s = make(i);
                if s.env.get("EFFECTS").is_some_and(|v| v.is_empty()) {
                    s.env
                        .insert("EFFECTS".into(), self.effects.display().to_string());
                }
                if s.idempotency_key.is_none() {
                    s.idempotency_key = Some(format!("{}-{run}-{i}", self.name));
                }
                s
            })
            .collect();
        let effect_flags: Vec<bool> = specs
            .iter()
            .map(|s| s.env.contains_key("EFFECTS"))
            .collect();
        let rpc = self.rpc.clone();
        let audit = self.audit.clone();
        let results: Vec<anyhow::Result<JobId>> = futures::stream::iter(specs)
            .map(|spec| {
                let rpc = rpc.clone();
                let audit = audit.clone();
                async move { submit_retrying(&rpc, &audit, &spec, Duration::from_secs(60)).await }
            })
            .buffered(32)
            .collect()
            .await;
        let ids: Vec<JobId> = results.into_iter().collect::<anyhow::Result<_>>()?;
        for (id, has_effect) in ids.iter().zip(effect_flags) {
            if has_effect {
                self.effect_jobs.insert(*id);
            }
        }
        Ok(ids)
    }

    /// Waits until the live watch has seen every one of `ids` terminal.
    pub async fn wait_terminal(&self, ids: &[JobId], timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let done = self.audit.terminal_count(ids);
            if done == ids.len() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "only {done} of {} jobs terminal after {timeout:?}",
                    ids.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until at least `k` of `ids` are terminal.
    pub async fn wait_some_terminal(
        &self,
        ids: &[JobId],
        k: usize,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        eventually(timeout, &format!("{k} jobs terminal"), || async {
            (self.audit.terminal_count(ids) >= k).then_some(())
        })
        .await
    }

    /// Waits until worker `id` holds at least one job (per the watch): running, or
    /// leased to it at dispatch (a short job may finish before anything confirms its
    /// start, so it is never seen `running`).
    pub async fn wait_worker_running(
        &self,
        ids: &[JobId],
        worker: &str,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        eventually(timeout, &format!("{worker} to run a job"), || async {
            ids.iter()
                .any(|id| {
                    self.audit.latest(id).is_some_and(|r| {
                        matches!(
                            r.state,
                            gf_schemas::JobState::Running | gf_schemas::JobState::Dispatched
                        ) && r
                            .lease
                            .as_ref()
                            .is_some_and(|l| l.worker.as_str() == worker)
                    })
                })
                .then_some(())
        })
        .await
    }

    /// A token cancelled when the harness is dropped, for watchers a scenario starts.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    pub fn fail(&mut self, what: impl Into<String>) {
        let what = what.into();
        eprintln!("chaos: {}: FAILED: {what}", self.name);
        self.failures.push(what);
    }

    pub fn note(&mut self, what: impl Into<String>) {
        let what = what.into();
        eprintln!("chaos: {}: {what}", self.name);
        self.notes.push(what);
    }

    /// Reads the final records, the events and the side effects, checks every
    /// invariant, and reports.
    pub async fn finish(mut self, expect_success: bool) -> anyhow::Result<Report> {
        let submits = self.audit.submits();
        let accepted: BTreeSet<JobId> = submits.iter().filter_map(|s| s.job_id).collect();
        // Give the event publishers a moment to flush their last batch.
        let records = eventually(Duration::from_secs(20), "the final job records", || async {
            audit::read_jobs_anywhere(&self.js, &accepted).await.ok()
        })
        .await?;
        let events = audit::read_events(&self.js).await.unwrap_or_default();
        let effects = audit::read_effects(&self.effects);
        let faults = self.audit.faults();
        let bound = self.cluster.spec().timings.recovery_bound();
        let (mut violations, mut findings) = audit::check(&Evidence {
            submits: &submits,
            faults: &faults,
            records: &records,
            events: &events,
            effects: &effects,
            expect_success,
            effect_jobs: &self.effect_jobs,
            recovery_bound: bound,
        });
        violations.extend(self.audit.watch_violations());
        findings.kv_revisions_seen = self.audit.revisions_seen();
        if self.cluster.spec().secured {
            // Evidence that the run was secured: its workers are enrolled factories.
            let enrolled = match gf_auth::store::Store::open(&self.js, 1).await {
                Ok(s) => s.factories().await.map(|f| f.len()).unwrap_or(0),
                Err(_) => 0,
            };
            self.notes.push(format!(
                "secured NATS: {enrolled} workers enrolled as factories"
            ));
        }
        for p in self.cluster.parts() {
            if matches!(p, Part::Coordinator(_)) && !self.cluster.alive(p) {
                let killed = faults.iter().any(|f| f.part == p && f.fault == Fault::Kill);
                if !killed {
                    let tail = self.cluster.log_tail(p);
                    self.fail(format!("{p} died without being killed:\n{tail}"));
                }
            }
        }
        let passed = violations.is_empty() && self.failures.is_empty();
        // Fail loudly: the evidence for the first violating jobs.
        let mut shown = BTreeSet::new();
        for v in &violations {
            for id in v.jobs.iter().take(3) {
                if !shown.insert(*id) {
                    continue;
                }
                if let Some(r) = records.iter().find(|r| r.id == *id) {
                    eprintln!(
                        "chaos: evidence for {id} ({}): record {}",
                        v.invariant,
                        serde_json::to_string(r).unwrap_or_default()
                    );
                }
                let fx: Vec<_> = effects.iter().filter(|((j, _), _)| j == id).collect();
                eprintln!("chaos: evidence for {id}: effects (epoch -> count) {fx:?}");
                for e in events.iter().filter(|e| e.job_id == Some(*id)) {
                    eprintln!(
                        "chaos: evidence for {id}: event {}",
                        serde_json::to_string(e).unwrap_or_default()
                    );
                }
            }
        }
        if !passed {
            for p in self.cluster.parts() {
                eprintln!("--- {p} log tail ---\n{}", self.cluster.log_tail(p));
            }
        }
        Ok(Report {
            scenario: self.name.clone(),
            passed,
            seconds: self.started.elapsed().as_secs_f64(),
            violations,
            failures: std::mem::take(&mut self.failures),
            findings,
            faults,
            notes: std::mem::take(&mut self.notes),
        })
    }
}

fn uuid_like() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Submits until answered (retrying transport failures and timeouts), recording every
/// attempt's answer in the audit log.
pub async fn submit_retrying(
    rpc: &RpcClient,
    audit: &Audit,
    spec: &JobSpec,
    timeout: Duration,
) -> anyhow::Result<JobId> {
    let deadline = Instant::now() + timeout;
    loop {
        let time = Timestamp::now_local();
        match rpc.call::<_, SubmitReply>(rpc::SUBMIT, spec).await {
            Ok(r) => {
                audit.submitted(SubmitEntry {
                    time,
                    key: spec.idempotency_key.clone(),
                    job_id: Some(r.job_id),
                    duplicate: r.duplicate,
                    error: None,
                });
                return Ok(r.job_id);
            }
            Err(e) => {
                audit.submitted(SubmitEntry {
                    time,
                    key: spec.idempotency_key.clone(),
                    job_id: None,
                    duplicate: false,
                    error: Some(e.to_string()),
                });
                if !e.retryable() || Instant::now() >= deadline {
                    bail!("submission refused: {e}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
