//! `/metrics` after a real run: counters, gauges and histograms by name and value.
//! Its own test binary, so the process-wide registry holds only this run.

mod common;

use std::time::Duration;

use common::*;
use gf_schemas::JobState;
use gf_testkit::{eventually, NatsServer};

/// Three jobs that succeed and one that fails twice then is dead leave exactly the
/// expected counts on the coordinator's and the worker's `/metrics`.
#[tokio::test]
async fn run_leaves_expected_metrics() -> anyhow::Result<()> {
    init_tracing();
    let nats = NatsServer::start()?;
    let (coord, worker, worker_metrics) = coordinator_and_metrics_worker(&nats).await?;
    let client = Client::connect(&nats).await?;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let mut s = sh(
            r#"echo '{"usage":{"provider":"acme","model":"m1","input_tokens":100,"output_tokens":20,"calls":2,"cost":0.5}}' > "$GF_RESULT_FILE""#,
        );
        s.product = "agents".into();
        ids.push(client.submit(&s).await?.job_id);
    }
    let mut bad = sh("exit 1");
    bad.max_attempts = 2;
    ids.push(client.submit(&bad).await?.job_id);
    for id in &ids {
        client.wait_terminal(*id, Duration::from_secs(30)).await?;
    }
    assert_eq!(client.job(ids[3]).await?.state, JobState::Dead);

    let url = format!("{}/metrics", coord.http());
    // Gauges follow the scheduler's view, which trails the last write slightly.
    let m = eventually(Duration::from_secs(10), "gauges to settle", || async {
        let (code, body) = http_request("GET", &url, b"").await.ok()?;
        (code == 200
            && sample(&body, r#"gf_jobs{state="running"}"#) == 0.0
            && sample(&body, r#"gf_jobs{state="pending"}"#) == 0.0
            && sample(&body, r#"gf_workers{state="active"}"#) == 1.0)
            .then_some(body)
    })
    .await?;
    let expect = [
        (
            r#"gf_jobs_submitted_total{queue="default",product="agents"}"#,
            3.0,
        ),
        (
            r#"gf_jobs_submitted_total{queue="default",product="default"}"#,
            1.0,
        ),
        (
            r#"gf_jobs_finished_total{queue="default",state="succeeded"}"#,
            3.0,
        ),
        (
            r#"gf_jobs_finished_total{queue="default",state="dead"}"#,
            1.0,
        ),
        (r#"gf_dead_letters_total{queue="default"}"#, 1.0),
        (r#"gf_job_retries_total{queue="default"}"#, 1.0),
        (
            r#"gf_job_attempts_finished_total{queue="default",outcome="succeeded"}"#,
            3.0,
        ),
        (
            r#"gf_job_attempts_finished_total{queue="default",outcome="failed"}"#,
            2.0,
        ),
        (r#"gf_claims_total{result="won"}"#, 5.0),
        (
            r#"gf_job_run_seconds_count{queue="default",outcome="succeeded"}"#,
            3.0,
        ),
        (r#"gf_job_queue_wait_seconds_count{queue="default"}"#, 5.0),
        (
            r#"gf_rpc_requests_total{operation="complete",result="ok"}"#,
            5.0,
        ),
        (
            r#"gf_rpc_requests_total{operation="submit",result="ok"}"#,
            4.0,
        ),
        (
            r#"gf_model_tokens_total{provider="acme",model="m1",direction="input"}"#,
            300.0,
        ),
        (
            r#"gf_model_tokens_total{provider="acme",model="m1",direction="output"}"#,
            60.0,
        ),
        (r#"gf_model_calls_total{provider="acme",model="m1"}"#, 6.0),
        (
            r#"gf_model_cost_microunits_total{provider="acme",model="m1"}"#,
            1_500_000.0,
        ),
        (r#"gf_scheduler_leader"#, 1.0),
        (r#"gf_jobs{state="pending"}"#, 0.0),
        (r#"gf_worker_slots{state="total"}"#, 2.0),
        (
            r#"gf_build_info{version="0.1.0",component="coordinator"}"#,
            1.0,
        ),
    ];
    for (series, value) in expect {
        assert_eq!(sample(&m, series), value, "{series}\n{m}");
    }
    // Which way each dispatch went depends on timing; together they are every attempt.
    let dispatches = ["pass", "submission"].map(|by| {
        sample(
            &m,
            &format!(r#"gf_dispatches_total{{queue="default",by="{by}"}}"#),
        )
    });
    assert_eq!(dispatches.iter().sum::<f64>(), 5.0, "{dispatches:?}\n{m}");
    assert!(m.contains("# TYPE gf_job_run_seconds histogram"));
    assert!(
        !m.contains(&ids[0].to_string()),
        "a job id leaked into a label"
    );

    let (code, w) = http_request("GET", &worker_metrics, b"").await?;
    assert_eq!(code, 200);
    assert_eq!(
        sample(&w, r#"gf_worker_runs_total{result="succeeded"}"#),
        3.0,
        "{w}"
    );
    assert_eq!(sample(&w, r#"gf_worker_runs_total{result="failed"}"#), 2.0);
    assert_eq!(sample(&w, "gf_worker_capacity_slots"), 2.0);
    assert_eq!(sample(&w, "gf_worker_running_jobs"), 0.0);
    worker.stop().await?;
    coord.stop().await?;
    Ok(())
}
