//! Outcome capture and worker-hour budgets (issue #17), against a real nats-server.

mod common;

use std::time::Duration;

use common::*;
use gf_schemas::names::rpc;
use gf_schemas::outcome::{OutcomeClass, OutcomeRow};
use gf_schemas::rpc::BudgetUpdate;
use gf_schemas::{Budget, JobState};
use gf_testkit::{eventually, NatsServer};

async fn budget_of(client: &Client, product: &str) -> anyhow::Result<Option<Budget>> {
    let all: Vec<Budget> = client
        .rpc
        .call(rpc::BUDGET_LIST, &serde_json::json!({}))
        .await?;
    Ok(all.into_iter().find(|b| b.product == product))
}

fn export(url: &str) -> anyhow::Result<Vec<OutcomeRow>> {
    let (code, out, err) = gf(url, &["outcomes", "export"])?;
    anyhow::ensure!(code == 0, "gf outcomes export failed: {err}");
    gf_coordinator::outcomes::export::read_jsonl(&out).map_err(anyhow::Error::msg)
}

/// Every finished attempt becomes one exported row with its features: a success, a
/// failure retried and then succeeded (two rows, attempts 1 and 2), with kind, worker,
/// profile, exit status and duration. A worker-hour budget holds the product's jobs
/// once its workers' time reaches the limit, like a cost budget, and lets them go when
/// raised.
#[tokio::test]
async fn outcome_rows_are_exported_and_worker_hours_are_budgeted() -> anyhow::Result<()> {
    init_tracing();
    let nats = NatsServer::start()?;
    let coord = Running::coordinator(coordinator_config(&nats.url())).await?;
    let mut wcfg = worker_config(&nats.url(), 2);
    wcfg.id = Some(gf_schemas::WorkerId::new("outcome-w1")?);
    let _worker = Running::worker(wcfg).await?;
    let client = Client::connect(&nats).await?;
    wait_workers(&client, 1).await?;

    let mut ok = sh("true");
    ok.labels.insert("kind".into(), "eval".into());
    let ok = client.submit(&ok).await?.job_id;
    // Fails on the first attempt (no marker yet), succeeds on the second.
    let dir = tempfile::tempdir()?;
    let marker = dir.path().join("marker");
    let mut flaky = sh(r#"if [ -f "$M" ]; then exit 0; else touch "$M"; exit 3; fi"#);
    flaky.env.insert("M".into(), marker.display().to_string());
    flaky.labels.insert("kind".into(), "build".into());
    flaky.max_attempts = 2;
    let flaky = client.submit(&flaky).await?.job_id;
    for id in [ok, flaky] {
        let r = client.wait_terminal(id, Duration::from_secs(20)).await?;
        assert_eq!(r.state, JobState::Succeeded, "{r:?}");
    }
    let rows = eventually(Duration::from_secs(10), "three outcome rows", || async {
        export(&nats.url()).ok().filter(|r| r.len() >= 3)
    })
    .await?;
    assert_eq!(rows.len(), 3, "{rows:#?}");
    let eval = rows.iter().find(|r| r.job_id == ok).expect("eval row");
    assert_eq!(
        (eval.kind.as_str(), eval.outcome),
        ("eval", OutcomeClass::Succeeded)
    );
    assert_eq!((eval.attempt, eval.exit_code), (1, Some(0)));
    assert_eq!(eval.worker.as_str(), "outcome-w1");
    assert!(
        eval.worker_profile
            .as_deref()
            .is_some_and(|p| p.starts_with("gfw_")),
        "{eval:?}"
    );
    assert_eq!(
        (eval.queue.as_str(), eval.product.as_str()),
        ("default", "default")
    );
    let mut builds: Vec<&OutcomeRow> = rows.iter().filter(|r| r.job_id == flaky).collect();
    builds.sort_by_key(|r| r.attempt);
    assert_eq!(builds.len(), 2);
    assert_eq!(builds[0].outcome, OutcomeClass::Failed);
    assert_eq!(builds[0].exit_code, Some(3));
    assert!(builds[0].why.is_some(), "{:?}", builds[0]);
    assert_eq!(
        (builds[1].attempt, builds[1].outcome),
        (2, OutcomeClass::Succeeded)
    );
    assert!(builds[1].epoch > builds[0].epoch);

    // Worker-hour budget: 1 second of worker time per period.
    let _: Budget = client
        .rpc
        .call(
            rpc::BUDGET_SET,
            &BudgetUpdate {
                product: "acme".into(),
                limit_worker_hours: Some(1.0 / 3600.0),
                ..Default::default()
            },
        )
        .await?;
    let mut slow = sh("sleep 1.2");
    slow.product = "acme".into();
    let first = client.submit(&slow).await?.job_id;
    client.wait_terminal(first, Duration::from_secs(20)).await?;
    eventually(
        Duration::from_secs(10),
        "acme at its worker-hour limit",
        || async {
            budget_of(&client, "acme")
                .await
                .ok()
                .flatten()
                .filter(|b| b.blocked().is_some())
        },
    )
    .await?;
    let held = client.submit(&slow).await?.job_id;
    let blocked = client
        .wait_state(held, JobState::Blocked, Duration::from_secs(10))
        .await?;
    let reason = blocked.reason.unwrap_or_default();
    assert!(reason.contains("worker-hours"), "{reason}");
    assert_eq!(blocked.attempts, 0, "never dispatched");
    let _: Budget = client
        .rpc
        .call(
            rpc::BUDGET_SET,
            &BudgetUpdate {
                product: "acme".into(),
                limit_worker_hours: Some(1.0),
                ..Default::default()
            },
        )
        .await?;
    let done = client.wait_terminal(held, Duration::from_secs(20)).await?;
    assert_eq!(done.state, JobState::Succeeded);
    drop(coord);
    Ok(())
}
