//! Scheduling that operators can trust and explain (issue #3), against a real
//! nats-server.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::*;
use gf_coordinator::config::LimitRule;
use gf_schemas::names::rpc;
use gf_schemas::rpc::{BudgetUpdate, CompleteReply, CompleteRequest, JobAction};
use gf_schemas::{
    AttemptOutcome, Budget, Explanation, JobId, JobRecord, JobSpec, JobState, Schedule, Usage,
};
use gf_testkit::{eventually, NatsServer};

/// A job that waits until `gate` exists (a barrier the test opens), then appends its
/// name to `order`.
fn gated(gate: &Path, order: &Path, name: &str) -> JobSpec {
    let mut s = sh(r#"while [ ! -f "$GATE" ]; do sleep 0.02; done; echo "$NAME" >> "$ORDER""#);
    s.env.insert("GATE".into(), gate.display().to_string());
    s.env.insert("ORDER".into(), order.display().to_string());
    s.env.insert("NAME".into(), name.into());
    s
}

fn recorder(order: &Path, name: &str) -> JobSpec {
    let mut s = sh(r#"echo "$NAME" >> "$ORDER""#);
    s.env.insert("ORDER".into(), order.display().to_string());
    s.env.insert("NAME".into(), name.into());
    s
}

async fn all_jobs(client: &Client) -> anyhow::Result<Vec<JobRecord>> {
    let bucket = async_nats::jetstream::new(client.nats.clone())
        .get_key_value(gf_schemas::names::BUCKET_JOBS)
        .await?;
    Ok(gf_coordinator::store::list_jobs(&bucket, None, 100_000).await?)
}

/// Waits until the leader's own view (its `gf_jobs` gauge, derived from the view it
/// plans from) holds `n` pending jobs: a job the view lacks cannot be placed by the
/// pass a freed slot triggers, so an order test opens its gate only after this.
async fn leader_sees_pending(
    coord: &Running<gf_coordinator::Coordinator>,
    n: usize,
) -> anyhow::Result<()> {
    let url = format!("{}/metrics", coord.http());
    eventually(
        Duration::from_secs(10),
        &format!("the leader's view to hold {n} pending jobs"),
        || async {
            let (_, body) = http_request("GET", &url, b"").await.ok()?;
            (sample(&body, r#"gf_jobs{state="pending"}"#) == n as f64).then_some(())
        },
    )
    .await
}

/// A P0 job submitted behind 100 queued P5 jobs on a full fleet starts before any
/// further P5 job. The two blockers end one at a time (a gate each): two slots freed
/// by one completion batch would let one pass place the P0 job and a P5 job together,
/// and which of those two runs first is up to the worker's processes, not the planner.
#[tokio::test]
async fn urgent_job_overtakes_queue() -> anyhow::Result<()> {
    init_tracing();
    let nats = NatsServer::start()?;
    let cfg = coordinator_config(&nats.url());
    let coord = Running::coordinator(cfg).await?;
    let worker = Running::worker(worker_config(&nats.url(), 2)).await?;
    let client = Client::connect(&nats).await?;
    let dir = tempfile::tempdir()?;
    let order = dir.path().join("order");
    let gates = [dir.path().join("gate0"), dir.path().join("gate1")];
    let mut blockers = Vec::new();
    for (i, gate) in gates.iter().enumerate() {
        blockers.push(
            client
                .submit(&gated(gate, &order, &format!("blocker{i}")))
                .await?
                .job_id,
        );
    }
    for id in &blockers {
        client
            .wait_state(*id, JobState::Running, Duration::from_secs(10))
            .await?;
    }
    let mut low = Vec::new();
    for i in 0..100 {
        low.push(
            client
                .submit(&recorder(&order, &format!("p5-{i}")))
                .await?
                .job_id,
        );
    }
    let mut urgent = recorder(&order, "p0");
    urgent.priority = 0;
    let urgent = client.submit(&urgent).await?.job_id;
    leader_sees_pending(&coord, 101).await?;
    std::fs::write(&gates[0], "")?;
    client
        .wait_all_succeeded([&urgent], Duration::from_secs(30))
        .await?;
    std::fs::write(&gates[1], "")?;
    client
        .wait_all_succeeded(low.iter().chain(&blockers), Duration::from_secs(60))
        .await?;
    let text = std::fs::read_to_string(&order)?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with("blocker")).collect();
    assert_eq!(lines.len(), 101);
    assert_eq!(lines[0], "p0", "order: {:?}", &lines[..5]);
    let rec = client.job(urgent).await?;
    assert_eq!(
        rec.score.as_ref().unwrap().terms["priority"],
        90.0,
        "the dispatch decision's breakdown is kept"
    );
    worker.stop().await?;
    coord.stop().await?;
    Ok(())
}

/// Issue 17's one-slot scenario with the default configuration (dispatch slack
/// included): one worker with one slot busy with a long job, ten priority-5 jobs, then
/// one priority-0 job. The urgent job runs second, right after the busy one: no
/// priority-5 job was promised to the busy worker ahead of it, and none spent an attempt.
#[tokio::test]
async fn urgent_job_runs_next_on_a_busy_one_slot_worker() -> anyhow::Result<()> {
    init_tracing();
    let nats = NatsServer::start()?;
    let coord = Running::coordinator(coordinator_config(&nats.url())).await?;
    let worker = Running::worker(worker_config(&nats.url(), 1)).await?;
    let client = Client::connect(&nats).await?;
    let dir = tempfile::tempdir()?;
    let (gate, order) = (dir.path().join("gate"), dir.path().join("order"));
    let busy = client.submit(&gated(&gate, &order, "busy")).await?.job_id;
    client
        .wait_state(busy, JobState::Running, Duration::from_secs(10))
        .await?;
    let mut low = Vec::new();
    for i in 0..10 {
        let mut spec = recorder(&order, &format!("p5-{i}"));
        spec.priority = 5;
        low.push(client.submit(&spec).await?.job_id);
    }
    let mut urgent = recorder(&order, "p0");
    urgent.priority = 0;
    let urgent = client.submit(&urgent).await?.job_id;
    leader_sees_pending(&coord, 11).await?;
    std::fs::write(&gate, "")?;
    client
        .wait_all_succeeded(low.iter().chain([&urgent, &busy]), Duration::from_secs(60))
        .await?;
    let text = std::fs::read_to_string(&order)?;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 12, "order: {lines:?}");
    assert_eq!(&lines[..2], ["busy", "p0"], "order: {lines:?}");
    for id in &low {
        assert_eq!(client.job(*id).await?.attempts, 1, "{id}: no attempt spent");
    }
    worker.stop().await?;
    coord.stop().await?;
    Ok(())
}

/// `explain` names a missing capability right after submission, and for two eligible
/// workers shows every score term (affinity differs by worker).
#[tokio::test]
async fn explain_missing_capability_and_terms() -> anyhow::Result<()> {
    init_tracing();
    let nats = NatsServer::start()?;
    let coord = Running::coordinator(coordinator_config(&nats.url())).await?;
    let mut eu = worker_config(&nats.url(), 1);
    eu.capabilities.insert("region".into(), "eu".into());
    let eu = Running::worker(eu).await?;
    let us = Running::worker(worker_config(&nats.url(), 1)).await?;
    let client = Client::connect(&nats).await?;
    wait_workers(&client, 2).await?;
    let mut gpu = sh("true");
    gpu.tags.insert("gpu".into());
    let gpu = client.submit(&gpu).await?.job_id;
    let e: Explanation = client
        .rpc
        .call(
            rpc::EXPLAIN,
            &JobAction {
                job_id: gpu,
                reason: None,
            },
        )
        .await?;
    assert!(
        e.waiting_for
            .iter()
            .any(|w| w == "unplaceable: no live worker has tag gpu"),
        "{e:?}"
    );
    assert!(e
        .workers
        .iter()
        .all(|w| w.missing.as_deref() == Some("tag gpu")));

    let mut pref = sh("true");
    pref.prefer.insert("region".into(), "eu".into());
    pref.priority = 2;
    let pref = client.submit(&pref).await?.job_id;
    let e: Explanation = client
        .rpc
        .call(
            rpc::EXPLAIN,
            &JobAction {
                job_id: pref,
                reason: None,
            },
        )
        .await?;
    assert_eq!(e.workers.len(), 2);
    for w in &e.workers {
        let s = w.score.as_ref().expect("eligible");
        for term in [
            "priority", "waiting", "retry", "product", "affinity", "cost",
        ] {
            assert!(
                s.terms.contains_key(term),
                "{term} missing for {}",
                w.worker
            );
        }
        assert_eq!(s.terms["priority"], 70.0);
        let expected = if w.worker == eu.id() { 5.0 } else { 0.0 };
        assert_eq!(s.terms["affinity"], expected, "{}", w.worker);
    }
    let url = nats.url();
    let (code, out, _) =
        tokio::task::spawn_blocking(move || gf(&url, &["explain", &gpu.to_string()])).await??;
    assert_eq!(code, 0);
    assert!(out.contains("no live worker has tag gpu"), "{out}");
    us.stop().await?;
    eu.stop().await?;
    coord.stop().await?;
    Ok(())
}

/// With preemption on and the fleet full of low-priority jobs, a P0 job starts within
/// a few seconds; the victim is requeued with its attempt count unchanged and later
/// succeeds.
#[tokio::test]
async fn preemption_makes_room() -> anyhow::Result<()> {
    init_tracing();
    let nats = NatsServer::start()?;
    let mut cfg = coordinator_config(&nats.url());
    cfg.preemption_margin = Some(30.0);
    let coord = Running::coordinator(cfg).await?;
    let worker = Running::worker(worker_config(&nats.url(), 2)).await?;
    let client = Client::connect(&nats).await?;
    let dir = tempfile::tempdir()?;
    let (gate, order) = (dir.path().join("gate"), dir.path().join("order"));
    let mut low = Vec::new();
    for i in 0..2 {
        let mut s = gated(&gate, &order, &format!("low{i}"));
        s.priority = 9;
        low.push(client.submit(&s).await?.job_id);
    }
    for id in &low {
        client
            .wait_state(*id, JobState::Running, Duration::from_secs(10))
            .await?;
    }
    let mut urgent = recorder(&order, "urgent");
    urgent.priority = 0;
    let urgent = client.submit(&urgent).await?.job_id;
    let done = client
        .wait_terminal(urgent, Duration::from_secs(10))
        .await?;
    assert_eq!(done.state, JobState::Succeeded);
    std::fs::write(&gate, "")?;
    let mut victims = 0;
    for id in &low {
        let rec = client.wait_terminal(*id, Duration::from_secs(30)).await?;
        assert_eq!(rec.state, JobState::Succeeded);
        if rec.history.len() == 2 {
            victims += 1;
            assert!(
                rec.history[0]
                    .ended_because
                    .as_deref()
                    .unwrap()
                    .contains(&format!("preempted by {urgent}")),
                "{rec:?}"
            );
            assert_eq!(rec.attempts, 1, "preemption spent no attempt");
        }
    }
    assert_eq!(victims, 1);
    assert_eq!(
        std::fs::read_to_string(&order)?.lines().next(),
        Some("urgent")
    );
    worker.stop().await?;
    coord.stop().await?;
    Ok(())
}

/// A diamond A → (B, C) → D runs in dependency order; when B fails for good, D is
/// cancelled with the reason.
#[tokio::test]
async fn diamond_dag() -> anyhow::Result<()> {
    init_tracing();
    let nats = NatsServer::start()?;
    let coord = Running::coordinator(coordinator_config(&nats.url())).await?;
    let worker = Running::worker(worker_config(&nats.url(), 4)).await?;
    let client = Client::connect(&nats).await?;
    for fail_b in [false, true] {
        let a = client.submit(&sh("sleep 0.1")).await?.job_id;
        let mut b = sh(if fail_b { "exit 1" } else { "sleep 0.1" });
        b.max_attempts = 1;
        b.depends_on = vec![a];
        let b = client.submit(&b).await?.job_id;
        let mut c = sh("sleep 0.2");
        c.depends_on = vec![a];
        let c = client.submit(&c).await?.job_id;
        let mut d = sh("true");
        d.depends_on = vec![b, c];
        let d = client.submit(&d).await?.job_id;
        let recs: Vec<JobRecord> = futures::future::try_join_all(
            [a, b, c, d].map(|id| client.wait_terminal(id, Duration::from_secs(30))),
        )
        .await?;
        let [ra, rb, rc, rd] = <[JobRecord; 4]>::try_from(recs).unwrap();
        let started = |r: &JobRecord| r.history[0].started_at;
        let ended = |r: &JobRecord| r.history.last().unwrap().ended_at.unwrap();
        assert!(started(&rb) >= ended(&ra) && started(&rc) >= ended(&ra));
        if fail_b {
            assert_eq!(rb.state, JobState::Dead);
            assert_eq!(rd.state, JobState::Cancelled);
            assert_eq!(rd.reason, Some(format!("dependency {b} ended dead")));
            assert!(rd.history.is_empty(), "D never ran");
        } else {
            assert_eq!(rd.state, JobState::Succeeded);
            assert!(started(&rd) >= ended(&rb).max(ended(&rc)));
        }
    }
    // A dependency must exist: graphs can only point backwards, so no cycle can form.
    let mut bad = sh("true");
    bad.depends_on = vec![JobId::new()];
    let err = client.submit(&bad).await.expect_err("refused");
    assert!(err.to_string().contains("depends_on"), "{err}");
    worker.stop().await?;
    coord.stop().await?;
    Ok(())
}

/// A parent's completion waits for the children it created; a failed child makes the
/// parent dead.
#[tokio::test]
async fn parent_waits_for_children() -> anyhow::Result<()> {
    init_tracing();
    let nats = NatsServer::start()?;
    let coord = Running::coordinator(coordinator_config(&nats.url())).await?;
    let worker = Running::worker(worker_config(&nats.url(), 4)).await?;
    let client = Client::connect(&nats).await?;
    for child_fails in [false, true] {
        let script = format!(
            r#""$GF" submit --parent "$GF_JOB_ID" --max-attempts 1 -- sh -c 'sleep 0.5; exit {}'"#,
            if child_fails { 3 } else { 0 }
        );
        let mut parent = sh(&script);
        parent
            .env
            .insert("GF".into(), env!("CARGO_BIN_EXE_gf").into());
        parent.env.insert("GF_NATS_URL".into(), nats.url());
        let p = client.submit(&parent).await?.job_id;
        let waiting = client
            .wait_state(p, JobState::Waiting, Duration::from_secs(20))
            .await?;
        assert_eq!(waiting.children.len(), 1);
        let child = waiting.children[0];
        let done = client.wait_terminal(p, Duration::from_secs(20)).await?;
        let c = client.job(child).await?;
        assert!(c.state.is_terminal(), "parent ended before its child");
        if child_fails {
            assert_eq!(done.state, JobState::Dead);
            assert_eq!(done.reason, Some(format!("child {child} ended dead")));
        } else {
            assert_eq!(done.state, JobState::Succeeded);
            assert_eq!(c.spec.parent, Some(p));
        }
    }
    worker.stop().await?;
    coord.stop().await?;
    Ok(())
}

fn costly(cost: f64, tokens: u64, product: &str) -> JobSpec {
    let mut s = sh(&format!(
        r#"echo '{{"usage":{{"provider":"p","model":"m","input_tokens":{tokens},"output_tokens":0,"calls":1,"cost":{cost}}}}}' > "$GF_RESULT_FILE""#
    ));
    s.product = product.into();
    s
}

async fn budget_of(client: &Client, product: &str) -> anyhow::Result<Option<Budget>> {
    let all: Vec<Budget> = client
        .rpc
        .call(rpc::BUDGET_LIST, &serde_json::json!({}))
        .await?;
    Ok(all.into_iter().find(|b| b.product == product))
}

/// A product at its budget gets no new dispatches until the budget is raised; spend
/// equals the sum of reported usage exactly under concurrent completions, and a
/// repeated completion does not count twice.
#[tokio::test]
async fn budgets_gate_and_account_exactly() -> anyhow::Result<()> {
    init_tracing();
    let nats = NatsServer::start()?;
    let coord = Running::coordinator(coordinator_config(&nats.url())).await?;
    let mut workers = Vec::new();
    for _ in 0..3 {
        workers.push(Running::worker(worker_config(&nats.url(), 4)).await?);
    }
    let client = Client::connect(&nats).await?;

    // Exact totals under concurrency: 60 jobs, costs exact in binary.
    let mut ids = Vec::new();
    let (mut cost, mut tokens) = (0.0, 0);
    for i in 0..60u64 {
        let c = ((i % 5) + 1) as f64 * 0.125;
        cost += c;
        tokens += 10 + i;
        ids.push(client.submit(&costly(c, 10 + i, "bulk")).await?.job_id);
    }
    client
        .wait_all_succeeded(&ids, Duration::from_secs(60))
        .await?;
    let b = eventually(Duration::from_secs(10), "all usage accounted", || async {
        budget_of(&client, "bulk")
            .await
            .ok()
            .flatten()
            .filter(|b| b.spent_tokens == tokens)
    })
    .await?;
    assert_eq!(b.spent_cost, cost);
    // A completion repeated after its reply was lost changes nothing.
    let first = client.job(ids[0]).await?;
    let again = CompleteRequest {
        job_id: first.id,
        epoch: first.epoch,
        worker_id: first.history[0].worker.clone(),
        outcome: AttemptOutcome::Succeeded { exit_code: 0 },
        result: None,
        usage: Some(Usage {
            provider: Some("p".into()),
            model: Some("m".into()),
            input_tokens: 10,
            output_tokens: 0,
            calls: 1,
            cost: 0.125,
        }),
        ran_ms: None,
    };
    let r: CompleteReply = client.rpc.call_factory(&again).await?;
    assert_eq!(r.state, JobState::Succeeded);
    let marker = client.submit(&costly(0.5, 1, "bulk")).await?.job_id;
    client
        .wait_terminal(marker, Duration::from_secs(20))
        .await?;
    let b = eventually(Duration::from_secs(10), "marker accounted", || async {
        budget_of(&client, "bulk")
            .await
            .ok()
            .flatten()
            .filter(|b| b.spent_tokens == tokens + 1)
    })
    .await?;
    assert_eq!(
        b.spent_cost,
        cost + 0.5,
        "the repeated completion was counted again"
    );

    // Gating: limit 1.0; jobs of 0.5 each, one at a time.
    let _: Budget = client
        .rpc
        .call(
            rpc::BUDGET_SET,
            &BudgetUpdate {
                product: "acme".into(),
                limit_cost: Some(1.0),
                ..Default::default()
            },
        )
        .await?;
    let mut acme = Vec::new();
    for _ in 0..2 {
        let id = client.submit(&costly(0.5, 1, "acme")).await?.job_id;
        client.wait_terminal(id, Duration::from_secs(20)).await?;
        acme.push(id);
    }
    eventually(Duration::from_secs(10), "acme at its limit", || async {
        budget_of(&client, "acme")
            .await
            .ok()
            .flatten()
            .filter(|b| b.blocked().is_some())
    })
    .await?;
    let waiting = client.submit(&costly(0.5, 1, "acme")).await?.job_id;
    let blocked = client
        .wait_state(waiting, JobState::Blocked, Duration::from_secs(10))
        .await?;
    assert!(
        blocked
            .reason
            .as_deref()
            .unwrap()
            .starts_with("budget: product acme spent"),
        "{:?}",
        blocked.reason
    );
    assert_eq!(
        (blocked.epoch, blocked.attempts),
        (0, 0),
        "never dispatched"
    );
    let _: Budget = client
        .rpc
        .call(
            rpc::BUDGET_SET,
            &BudgetUpdate {
                product: "acme".into(),
                limit_cost: Some(5.0),
                ..Default::default()
            },
        )
        .await?;
    assert_eq!(
        client
            .wait_terminal(waiting, Duration::from_secs(20))
            .await?
            .state,
        JobState::Succeeded
    );
    for w in workers {
        w.stop().await?;
    }
    coord.stop().await?;
    Ok(())
}

/// A running job that crosses its own `max_cost` is cancelled with `budget_exceeded`.
#[tokio::test]
async fn job_over_its_cost_cap_is_cancelled() -> anyhow::Result<()> {
    init_tracing();
    let nats = NatsServer::start()?;
    let coord = Running::coordinator(coordinator_config(&nats.url())).await?;
    let worker = Running::worker(worker_config(&nats.url(), 1)).await?;
    let client = Client::connect(&nats).await?;
    let mut s = sh(r#"echo '{"cost": 3.5, "input_tokens": 7}' > "$GF_USAGE_FILE"; exec sleep 60"#);
    s.max_cost = Some(1.0);
    s.lease_ttl_secs = Some(1);
    let id = client.submit(&s).await?.job_id;
    let rec = client.wait_terminal(id, Duration::from_secs(15)).await?;
    assert_eq!(rec.state, JobState::Cancelled);
    assert!(
        rec.reason
            .as_deref()
            .unwrap()
            .starts_with("budget_exceeded"),
        "{:?}",
        rec.reason
    );
    let b = eventually(
        Duration::from_secs(10),
        "partial usage accounted",
        || async { budget_of(&client, "default").await.ok().flatten() },
    )
    .await?;
    assert_eq!(b.spent_cost, 3.5);
    worker.stop().await?;
    coord.stop().await?;
    Ok(())
}

/// A job that reports its usage only in `$GF_USAGE_FILE` and ends before any renewal:
/// that usage is the job's, and its product's budget is charged with it (it was
/// dropped before: only the result file's `usage` counted at the end).
#[tokio::test]
async fn usage_file_alone_is_the_jobs_usage() -> anyhow::Result<()> {
    init_tracing();
    let nats = NatsServer::start()?;
    let coord = Running::coordinator(coordinator_config(&nats.url())).await?;
    let worker = Running::worker(worker_config(&nats.url(), 1)).await?;
    let client = Client::connect(&nats).await?;
    let s = sh(
        r#"echo '{"provider": "p", "model": "m", "cost": 1.25, "input_tokens": 7, "calls": 1}' > "$GF_USAGE_FILE""#,
    );
    let id = client.submit(&s).await?.job_id;
    let rec = client.wait_terminal(id, Duration::from_secs(15)).await?;
    assert_eq!(rec.state, JobState::Succeeded);
    let usage = rec.usage.clone().expect("the job's usage");
    assert_eq!(
        (
            usage.model.as_deref(),
            usage.cost,
            usage.input_tokens,
            usage.calls
        ),
        (Some("m"), 1.25, 7, 1)
    );
    let b = eventually(Duration::from_secs(10), "usage accounted", || async {
        budget_of(&client, "default")
            .await
            .ok()
            .flatten()
            .filter(|b| b.spent_cost > 0.0)
    })
    .await?;
    assert_eq!(b.spent_cost, 1.25);
    worker.stop().await?;
    coord.stop().await?;
    Ok(())
}

/// With a limit of 2 per `repo`, 50 concurrent jobs on one repo never run more than 2
/// at a time (and do use both).
#[tokio::test]
async fn concurrency_limit_per_key() -> anyhow::Result<()> {
    init_tracing();
    let nats = NatsServer::start()?;
    let mut cfg = coordinator_config(&nats.url());
    cfg.limits = vec![LimitRule {
        label: "repo".into(),
        max_running: Some(2),
        max_starts_per_minute: None,
    }];
    let coord = Running::coordinator(cfg).await?;
    let mut workers = Vec::new();
    for _ in 0..3 {
        workers.push(Running::worker(worker_config(&nats.url(), 8)).await?);
    }
    let client = Client::connect(&nats).await?;
    let mut ids = Vec::new();
    for _ in 0..50 {
        let mut s = sh("sleep 0.05");
        s.labels.insert("repo".into(), "gigafactory".into());
        ids.push(client.submit(&s).await?.job_id);
    }
    let mut intervals = Vec::new();
    for id in &ids {
        let r = client.wait_terminal(*id, Duration::from_secs(120)).await?;
        assert_eq!(r.state, JobState::Succeeded);
        intervals.push((r.history[0].started_at, r.history[0].ended_at.unwrap()));
    }
    let mut edges: Vec<(gf_schemas::Timestamp, i32)> = intervals
        .iter()
        .flat_map(|(s, e)| [(*s, 1), (*e, -1)])
        .collect();
    edges.sort_by_key(|(t, d)| (*t, *d));
    let (mut now, mut max) = (0, 0);
    for (_, d) in edges {
        now += d;
        max = max.max(now);
    }
    assert_eq!(max, 2, "at most 2 at once, and the limit is used");
    for w in workers {
        w.stop().await?;
    }
    coord.stop().await?;
    Ok(())
}

/// A cron schedule fires once per tick with two coordinators running, also across a
/// change of leader.
#[tokio::test]
async fn cron_fires_once_per_tick_with_two_coordinators() -> anyhow::Result<()> {
    init_tracing();
    let nats = NatsServer::start()?;
    let first = Running::coordinator(coordinator_config(&nats.url())).await?;
    let second = Running::coordinator(coordinator_config(&nats.url())).await?;
    let client = Client::connect(&nats).await?;
    let sched = Schedule {
        name: "tick".into(),
        cron: "* * * * * *".into(),
        spec: sh("true"),
        paused: false,
        last_tick: None,
    };
    let _: Schedule = client.rpc.call(rpc::SCHEDULE_ADD, &sched).await?;
    let fired = |n: usize| {
        let client = &client;
        async move {
            eventually(Duration::from_secs(20), &format!("{n} ticks"), || async {
                let jobs = all_jobs(client).await.ok()?;
                let ticks = jobs
                    .iter()
                    .filter(|j| j.spec.labels.get("schedule").map(String::as_str) == Some("tick"))
                    .count();
                (ticks >= n).then_some(jobs)
            })
            .await
        }
    };
    fired(3).await?;
    first.stop().await?;
    let jobs = fired(6).await?;
    let mut per_tick: BTreeMap<String, usize> = BTreeMap::new();
    for j in jobs
        .iter()
        .filter(|j| j.spec.labels.get("schedule").map(String::as_str) == Some("tick"))
    {
        *per_tick.entry(j.spec.labels["tick"].clone()).or_default() += 1;
    }
    assert!(per_tick.len() >= 6);
    assert!(
        per_tick.values().all(|&n| n == 1),
        "a tick fired twice: {per_tick:?}"
    );
    second.stop().await?;
    Ok(())
}

/// Operator actions: reject a pending job; requeue a dead one (attempts reset, new
/// epoch) which then succeeds; dead letters are listed.
#[tokio::test]
async fn requeue_and_reject() -> anyhow::Result<()> {
    init_tracing();
    let nats = NatsServer::start()?;
    let coord = Running::coordinator(coordinator_config(&nats.url())).await?;
    let worker = Running::worker(worker_config(&nats.url(), 2)).await?;
    let client = Client::connect(&nats).await?;
    let dir = tempfile::tempdir()?;
    let mut flaky = sh(r#"[ -f "$FIXED" ]"#);
    flaky.env.insert(
        "FIXED".into(),
        dir.path().join("fixed").display().to_string(),
    );
    flaky.max_attempts = 1;
    let id = client.submit(&flaky).await?.job_id;
    let dead = client.wait_terminal(id, Duration::from_secs(20)).await?;
    assert_eq!(dead.state, JobState::Dead);
    let url = nats.url();
    let (code, out, _) = {
        let u = url.clone();
        tokio::task::spawn_blocking(move || gf(&u, &["dead"])).await??
    };
    assert_eq!(code, 0);
    assert!(out.contains(&id.to_string()), "{out}");
    std::fs::write(dir.path().join("fixed"), "")?;
    let (code, out, err) = {
        let u = url.clone();
        tokio::task::spawn_blocking(move || gf(&u, &["requeue", &id.to_string()])).await??
    };
    assert_eq!(code, 0, "{out}{err}");
    let done = client.wait_terminal(id, Duration::from_secs(20)).await?;
    assert_eq!((done.state, done.attempts), (JobState::Succeeded, 1));
    assert!(done.epoch > dead.epoch);

    let mut nowhere = sh("true");
    nowhere.requires.insert("os".into(), "plan9".into());
    let nowhere = client.submit(&nowhere).await?.job_id;
    client
        .wait_state(nowhere, JobState::Blocked, Duration::from_secs(10))
        .await?;
    let (code, _, _) = tokio::task::spawn_blocking(move || {
        gf(
            &url,
            &["reject", &nowhere.to_string(), "--reason", "no plan9 boxes"],
        )
    })
    .await??;
    assert_eq!(code, 0);
    let r = client.job(nowhere).await?;
    assert_eq!(
        (r.state, r.reason.as_deref()),
        (JobState::Rejected, Some("no plan9 boxes"))
    );
    worker.stop().await?;
    coord.stop().await?;
    Ok(())
}

/// A job's lease TTL is independent of its run time: a job with a 1 s lease runs for
/// 3 s on one attempt, renewed throughout; `not_before` holds a job back.
#[tokio::test]
async fn short_lease_long_job_and_not_before() -> anyhow::Result<()> {
    init_tracing();
    let nats = NatsServer::start()?;
    let coord = Running::coordinator(coordinator_config(&nats.url())).await?;
    let worker = Running::worker(worker_config(&nats.url(), 2)).await?;
    let client = Client::connect(&nats).await?;
    let mut long = sh("sleep 3");
    long.lease_ttl_secs = Some(1);
    long.timeout_secs = Some(6 * 3600);
    let long = client.submit(&long).await?.job_id;
    let mut later = sh("true");
    let at = gf_schemas::Timestamp::now_local().plus(Duration::from_secs(2));
    later.not_before = Some(at);
    let later = client.submit(&later).await?.job_id;
    let blocked = client
        .wait_state(later, JobState::Blocked, Duration::from_secs(5))
        .await?;
    assert!(blocked.reason.unwrap().starts_with("not before"));
    let l = client.wait_terminal(later, Duration::from_secs(20)).await?;
    assert!(l.history[0].started_at >= at);
    let r = client.wait_terminal(long, Duration::from_secs(20)).await?;
    assert_eq!((r.state, r.attempts), (JobState::Succeeded, 1));
    assert_eq!(r.history[0].ended_because, None);
    worker.stop().await?;
    coord.stop().await?;
    Ok(())
}
