//! `load --backend compose`: throughput and latency of the docker-compose deployment
//! with 1, 2, 4, 8 worker containers (`--scale worker=N`), and the same measurement on
//! the process backend in the same run, with the same shape: three NATS nodes (R3,
//! `sync_interval: always`), two coordinators, N workers with `--slots` slots, no-op
//! jobs (`gf:noop`, run in the worker's process) submitted as fast as possible.
//!
//! After the largest compose run, every panel of the Grafana dashboard is evaluated
//! against that deployment's Prometheus; each panel is listed, and one whose queries
//! all return nothing fails the run with its title.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use gf_schemas::{names, JobId, JobSpec};
use gf_worker::RpcClient;
use serde::Serialize;

use crate::cluster::{Cluster, ClusterSpec, WorkerSpec};
use crate::compose::ComposeCluster;
use crate::harness::connect;
use crate::load::{
    count_successes, latencies, load_timings, percentiles, submit_fast, Latencies, LoadArgs,
    Percentiles,
};
use crate::process::{GfCommand, ProcessCluster};

#[derive(Clone, Debug, Serialize)]
pub struct Measured {
    pub backend: &'static str,
    pub workers: usize,
    pub slots: u32,
    pub jobs: usize,
    pub succeeded: usize,
    pub seconds: f64,
    pub jobs_per_sec: f64,
    pub submit_to_done: Option<Percentiles>,
    pub submit_to_claim: Option<Percentiles>,
}

#[derive(Debug, Serialize)]
struct Report {
    machine: String,
    command: String,
    runs: Vec<Measured>,
    /// (panel title, queries, queries with data) after the largest compose run.
    dashboard: Vec<(String, usize, usize)>,
}

fn spec() -> ClusterSpec {
    ClusterSpec {
        nats_nodes: 3,
        durable: true,
        timings: load_timings(),
        ..Default::default()
    }
}

pub async fn run(args: LoadArgs, gf: &GfCommand) -> anyhow::Result<bool> {
    let opts = gf
        .compose
        .clone()
        .context("load on compose needs --backend compose")?;
    let process_gf = GfCommand {
        compose: None,
        ..gf.clone()
    };
    let largest = args.workers.iter().copied().max().unwrap_or(1);
    let mut report = Report {
        machine: crate::load::machine(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        runs: Vec::new(),
        dashboard: Vec::new(),
    };
    // CHAOS_LOAD_ONLY=process|compose measures one side only (to look into one).
    let only = std::env::var("CHAOS_LOAD_ONLY").unwrap_or_default();
    for &w in &args.workers {
        if only != "process" {
            let (s, o) = (spec(), opts.clone());
            let mut c = tokio::task::spawn_blocking(move || ComposeCluster::start(s, o)).await??;
            c.add_coordinator()?;
            c.add_coordinator()?;
            let slots = args.slots;
            let c = tokio::task::spawn_blocking(move || c.scale_workers(w, slots).map(|()| c))
                .await??;
            let m = measure(&c, "compose", w, &args).await;
            if m.is_ok() && w == largest {
                if let Some(mon) = c.monitoring() {
                    exercise(&c).await?;
                    report.dashboard = dashboard(&mon.prometheus).await?;
                }
            }
            tokio::task::spawn_blocking(move || drop(c)).await?;
            let m = m?;
            print(&m);
            report.runs.push(m);
        }
        if only == "compose" {
            continue;
        }
        let (s, g) = (spec(), process_gf.clone());
        let mut p = tokio::task::spawn_blocking(move || ProcessCluster::start(s, g)).await??;
        p.add_coordinator()?;
        p.add_coordinator()?;
        for i in 0..w {
            p.add_worker(WorkerSpec::new(format!("load{i}"), args.slots))?;
        }
        let m = measure(&p, "process", w, &args).await;
        drop(p);
        let m = m?;
        print(&m);
        report.runs.push(m);
    }
    println!(
        "\n{:>7} {:>5} | {:>10} {:>9} {:>9} | {:>10} {:>9} {:>9}",
        "workers", "slots", "compose/s", "p50 ms", "p99 ms", "process/s", "p50 ms", "p99 ms"
    );
    for &w in &args.workers {
        let get = |b: &str| {
            report
                .runs
                .iter()
                .find(|r| r.workers == w && r.backend == b)
        };
        let cell = |r: Option<&Measured>| match r {
            Some(r) => format!(
                "{:>10.0} {:>9.0} {:>9.0}",
                r.jobs_per_sec,
                r.submit_to_done.as_ref().map_or(f64::NAN, |p| p.p50_ms),
                r.submit_to_done.as_ref().map_or(f64::NAN, |p| p.p99_ms)
            ),
            None => format!("{:>10} {:>9} {:>9}", "-", "-", "-"),
        };
        println!(
            "{w:>7} {:>5} | {} | {}",
            args.slots,
            cell(get("compose")),
            cell(get("process"))
        );
    }
    println!("\ndashboard after the {largest}-worker compose run (queries with data / queries):");
    for (title, queries, data) in &report.dashboard {
        let verdict = if *data == 0 { "EMPTY" } else { "ok" };
        println!("    {verdict:5} {data}/{queries}  {title}");
    }
    let empty: Vec<&str> = report
        .dashboard
        .iter()
        .filter(|(_, _, data)| *data == 0)
        .map(|(t, _, _)| t.as_str())
        .collect();
    let checked = only != "process";
    if checked && report.dashboard.is_empty() {
        println!("dashboard: not evaluated (the largest compose run failed)");
    }
    println!(
        "dashboard: {} of {} panels return data",
        report.dashboard.len() - empty.len(),
        report.dashboard.len()
    );
    if !empty.is_empty() {
        println!("dashboard: EMPTY panels: {}", empty.join(", "));
    }
    let json = args.json.with_file_name("load-compose.json");
    std::fs::write(&json, serde_json::to_string_pretty(&report)?)?;
    println!("written to {}", json.display());
    let all_done = report.runs.iter().all(|r| r.succeeded == r.jobs);
    let dashboard_ok = !checked || (!report.dashboard.is_empty() && empty.is_empty());
    Ok(all_done && dashboard_ok)
}

fn print(m: &Measured) {
    println!(
        "{} {}w x {}: {:.0} jobs/s ({} of {} in {:.1} s), submit→done {:?}",
        m.backend,
        m.workers,
        m.slots,
        m.jobs_per_sec,
        m.succeeded,
        m.jobs,
        m.seconds,
        m.submit_to_done
    );
}

/// After the no-op load, what the rest of the dashboard shows: a job that leaves an
/// artifact, a budget with spend, jobs that report model usage and hold their lease
/// long enough to renew it, a job that runs out of attempts, one that no worker can
/// run, a webhook for a source nobody configured, and a signed tracker webhook whose
/// job's state changes are echoed to a tracker that is down (attempts, then given up).
async fn exercise(c: &ComposeCluster) -> anyhow::Result<()> {
    let client = connect(c).await?;
    let js = jetstream::new(client.clone());
    let rpc = RpcClient::new(client, Duration::from_secs(30));
    let budget = gf_schemas::rpc::BudgetUpdate {
        product: "dashboard".into(),
        limit_cost: Some(100.0),
        limit_tokens: None,
        limit_worker_hours: None,
        period_secs: Some(3600),
        paused: None,
    };
    let _: serde_json::Value = rpc.call(names::rpc::BUDGET_SET, &budget).await?;
    // A file left in $GF_ARTIFACTS_DIR: stored by the coordinators, so the panel
    // "Artifact and checkpoint bytes stored" has data.
    let mut specs = vec![JobSpec::command([
        "sh",
        "-c",
        r#"echo "stored by the load exercise" > "$GF_ARTIFACTS_DIR/exercise.txt""#,
    ])];
    for _ in 0..4 {
        // Longer than a third of the load timings' 30 s lease: renewed once.
        let mut s = JobSpec::command([
            "sh",
            "-c",
            r#"printf '{"provider":"demo","model":"m1","input_tokens":1000,"output_tokens":200,"calls":2,"cost":0.25}' > "$GF_USAGE_FILE"; sleep 12"#,
        ]);
        s.product = "dashboard".into();
        specs.push(s);
    }
    let mut dead = JobSpec::command(["false"]);
    dead.max_attempts = 1;
    specs.push(dead);
    let mut nowhere = JobSpec::command(["true"]);
    nowhere.requires.insert("os".into(), "plan9".into());
    let mut wait_for = Vec::new();
    for (i, s) in specs.iter().enumerate() {
        let r: gf_schemas::rpc::SubmitReply = rpc.call(names::rpc::SUBMIT, s).await?;
        if i < specs.len() - 1 {
            wait_for.push(r.job_id);
        }
    }
    let _: gf_schemas::rpc::SubmitReply = rpc.call(names::rpc::SUBMIT, &nowhere).await?;
    let api = format!(
        "http://{}:8080",
        c.address(crate::cluster::Part::Coordinator(0))
            .context("coordinator-1 address")?
    );
    // Refused (no such source), and counted as such.
    let _ = crate::monitor::http_post(&api, "/api/bridge/nosuch", "{}").await;
    // An issue labelled for an agent: a job, and echoes of its state changes.
    let issue = serde_json::json!({
        "action": "labeled",
        "issue": {"number": 7, "labels": [{"name": "agent"}]},
        "repository": {"full_name": "acme/dashboard"},
    })
    .to_string();
    let signature =
        gf_bridge::verify::sign_github(crate::compose::WEBHOOK_SECRET.as_bytes(), issue.as_bytes());
    let delivery = format!("load-{:08x}", rand::random::<u32>());
    crate::monitor::http_post_with(
        &api,
        &format!("/api/bridge/{}", crate::compose::WEBHOOK_SOURCE),
        &issue,
        &[
            ("X-GitHub-Event", "issues"),
            ("X-GitHub-Delivery", &delivery),
            ("X-Hub-Signature-256", &signature),
        ],
    )
    .await
    .context("the tracker webhook was refused")?;
    crate::harness::eventually(Duration::from_secs(90), "the dashboard jobs", || async {
        let records = crate::audit::read_jobs(&js).await.ok()?;
        wait_for
            .iter()
            .all(|id| records.iter().any(|r| r.id == *id && r.state.is_terminal()))
            .then_some(())
    })
    .await
}

/// Every panel of the dashboard against `prometheus`, rates over the last 5 minutes:
/// evaluated until every panel has data (Prometheus scrapes every 3 s on a chaos
/// project, and the last echoes are given up a little after the jobs end), for at
/// most a minute; the last evaluation.
async fn dashboard(prometheus: &str) -> anyhow::Result<Vec<(String, usize, usize)>> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/grafana/dashboards/gigafactory.json");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?,
    )?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let panels = crate::monitor::dashboard_panels(prometheus, &dashboard, "5m").await?;
        if panels.iter().all(|(_, _, data)| *data > 0) || Instant::now() >= deadline {
            return Ok(panels);
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
}

/// `args.jobs` no-op jobs through a running cluster whose workers are starting.
async fn measure(
    cluster: &dyn Cluster,
    backend: &'static str,
    workers: usize,
    args: &LoadArgs,
) -> anyhow::Result<Measured> {
    let client = connect(cluster).await?;
    let js = jetstream::new(client.clone());
    // A fresh JetStream cluster answers its API once it has a meta leader, and the
    // buckets exist once a coordinator made them.
    crate::harness::eventually(Duration::from_secs(90), "the workers bucket", || async {
        js.get_key_value(names::BUCKET_WORKERS).await.ok()
    })
    .await?;
    gf_testkit::wait_active_workers(&js, workers, Duration::from_secs(90)).await?;
    // The RPC plane of both coordinators answers once a leader is elected.
    crate::harness::eventually(Duration::from_secs(60), "a scheduler leader", || async {
        let bucket = js.get_key_value(names::BUCKET_LEADER).await.ok()?;
        gf_coordinator::leader::current(&bucket).await.map(|_| ())
    })
    .await?;
    let n = args.jobs;
    let rpc = RpcClient::new(client.clone(), Duration::from_secs(30));
    let waiter = count_successes(&client, n, Duration::from_secs(60)).await?;
    let started = Instant::now();
    let body: bytes::Bytes = serde_json::to_vec(&JobSpec::command(["gf:noop"]))?.into();
    let ids = submit_fast(&rpc, &body, n, args).await?;
    let finished = waiter.await?;
    let seconds = finished.duration_since(started).as_secs_f64();
    let records = crate::audit::read_jobs(&js).await?;
    let by_id: HashMap<JobId, &gf_schemas::JobRecord> = records.iter().map(|r| (r.id, r)).collect();
    let Latencies {
        succeeded,
        to_done,
        to_claim,
    } = latencies(&ids, &by_id);
    Ok(Measured {
        backend,
        workers,
        slots: args.slots,
        jobs: n,
        succeeded,
        seconds,
        jobs_per_sec: succeeded as f64 / seconds,
        submit_to_done: percentiles(to_done),
        submit_to_claim: percentiles(to_claim),
    })
}
