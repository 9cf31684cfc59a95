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

/// `gf outcomes replay` on a synthetic history of 12,000 rows (`gf outcomes synth`)
/// compares the default weights (from a TOML file) against the learned terms off: the
/// learned weights avoid expected failures, mostly in `build` (the flaky builder),
/// every job is placed in both, and two runs print the same report. Bad weights are
/// refused naming what is wrong.
#[test]
fn replay_compares_two_weight_sets_deterministically() -> anyhow::Result<()> {
    // No NATS: replay and synth read and write files only.
    let url = "nats://127.0.0.1:1";
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("rows.jsonl");
    let rows = file.to_str().expect("utf-8 path");
    let (code, _, err) = gf(
        url,
        &[
            "outcomes", "synth", "--rows", "12000", "--seed", "7", "-o", rows,
        ],
    )?;
    assert_eq!(code, 0, "{err}");
    let toml = dir.path().join("a.toml");
    std::fs::write(&toml, "success = 1.0\nspeed = 0.5\nfailed_here = 1.0\n")?;
    let a = toml.to_str().expect("utf-8 path");
    let args = [
        "outcomes",
        "replay",
        rows,
        "--weights",
        a,
        "--against-set",
        "success=0,speed=0,failed_here=0",
    ];
    let (code, first, err) = gf(url, &args)?;
    assert_eq!(code, 0, "{err}");
    assert!(
        first.starts_with("replayed ") && first.contains("expected failures avoided"),
        "{first}"
    );
    let (_, second, _) = gf(url, &args)?;
    assert_eq!(first, second, "a replay is deterministic");

    let (code, json, err) = gf(url, &[&args[..], &["--json"]].concat())?;
    assert_eq!(code, 0, "{err}");
    let c: serde_json::Value = serde_json::from_str(&json)?;
    assert_eq!(c["rows"], 12000);
    let replayed = c["replayed"].as_f64().expect("replayed");
    assert!(replayed > 11_500.0, "{json}");
    assert_eq!(c["a"]["total"]["jobs"].as_f64(), Some(replayed));
    assert_eq!(c["b"]["total"]["jobs"].as_f64(), Some(replayed));
    let avoided = c["failures_avoided"].as_f64().expect("failures_avoided");
    assert!(avoided > 0.05 * replayed, "{first}");
    let build_failures = |set: &str| {
        c[set]["per_kind"]["build"]["expected_failures"]
            .as_f64()
            .expect("build")
    };
    assert!(build_failures("a") < build_failures("b") * 0.7, "{first}");
    assert_eq!(c["a"]["weights"]["speed"], 0.5);
    assert_eq!(c["b"]["weights"]["success"], 0.0);

    let (code, _, err) = gf(url, &["outcomes", "replay", rows, "--set", "sucess=2"])?;
    assert_ne!(code, 0);
    assert!(err.contains("sucess"), "{err}");
    let (code, _, err) = gf(url, &["outcomes", "replay", a])?;
    assert_ne!(code, 0);
    assert!(err.contains("line 1"), "{err}");
    Ok(())
}

/// The issue's recommendation scenario on a real fleet: `flaky-w` fails every build it
/// runs while `good-w` succeeds, and a job needs a tag (`gpu`) no live worker offers.
/// `gf recommend` (and `GET /api/recommendations`) names the flaky worker for `build`
/// and the missing capability, and nothing about `good-w`.
#[tokio::test]
async fn recommend_names_the_flaky_worker_and_the_missing_capability() -> anyhow::Result<()> {
    init_tracing();
    let nats = NatsServer::start()?;
    let coord = Running::coordinator(coordinator_config(&nats.url())).await?;
    let mut workers = Vec::new();
    for name in ["flaky-w", "good-w"] {
        let mut wcfg = worker_config(&nats.url(), 2);
        wcfg.id = Some(gf_schemas::WorkerId::new(name)?);
        wcfg.capabilities.insert("host".into(), name.into());
        workers.push(Running::worker(wcfg).await?);
    }
    let client = Client::connect(&nats).await?;
    wait_workers(&client, 2).await?;
    let mut ids = Vec::new();
    for i in 0..20 {
        // Pinned by capability, so each worker runs ten builds whatever the claims.
        let host = if i % 2 == 0 { "flaky-w" } else { "good-w" };
        let mut spec = sh(r#"[ "$GF_WORKER_ID" != flaky-w ]"#);
        spec.labels.insert("kind".into(), "build".into());
        spec.requires.insert("host".into(), host.into());
        spec.max_attempts = 1;
        ids.push(client.submit(&spec).await?.job_id);
    }
    for id in ids {
        client.wait_terminal(id, Duration::from_secs(30)).await?;
    }
    let mut gpu = sh("true");
    gpu.tags.insert("gpu".into());
    let gpu = client.submit(&gpu).await?.job_id;
    client
        .wait_state(gpu, JobState::Blocked, Duration::from_secs(10))
        .await?;

    let topics = |v: &serde_json::Value| -> Vec<(String, String)> {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                (
                    r["topic"].as_str().unwrap_or_default().to_string(),
                    r["subject"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    };
    let want = [
        ("flaky_worker".to_string(), "flaky-w".to_string()),
        ("missing_capability".to_string(), "tag gpu".to_string()),
    ];
    // The rows reach the stream within a flush of the leader: wait for all ten of the
    // flaky worker's (the recommendation may show before the last row is in).
    let text = eventually(
        Duration::from_secs(10),
        "all ten rows recommended",
        || async {
            let (code, text, _) = gf(&nats.url(), &["recommend"]).ok()?;
            (code == 0
                && text
                    .lines()
                    .any(|l| l.starts_with("flaky_worker") && l.contains("(10 of 10)")))
            .then_some(text)
        },
    )
    .await?;
    assert!(
        text.lines()
            .any(|l| l.starts_with("flaky_worker") && l.contains("100 % of build (10 of 10)")),
        "{text}"
    );
    let (code, out, err) = gf(&nats.url(), &["recommend", "--json"])?;
    assert_eq!(code, 0, "{err}");
    let got = topics(&serde_json::from_str(&out)?);
    assert!(want.iter().all(|w| got.contains(w)), "{got:?}");
    assert!(!got.iter().any(|(_, s)| s == "good-w"), "{got:?}");
    let (status, body) =
        http_request("GET", &format!("{}/api/recommendations", coord.http()), b"").await?;
    assert_eq!(status, 200, "{body}");
    let t = topics(&serde_json::from_str(&body)?);
    assert!(want.iter().all(|w| t.contains(w)), "{body}");
    drop(workers);
    drop(coord);
    Ok(())
}
