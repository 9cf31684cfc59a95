//! CLI parity with the dashboard: `gf drain`/`undrain`, `gf events`, `gf stats`,
//! `gf api-token`, and `gf coordinator` refusing to serve an unauthenticated API unless
//! told to.

mod common;

use std::time::Duration;

use common::*;
use gf_schemas::{JobState, WorkerState};
use gf_testkit::{eventually, NatsServer};

/// Drain and undrain through `gf`, seen in the worker's record; `gf events` shows the
/// error event of an unplaceable job; `gf stats --json` counts jobs and workers.
// Multi-threaded: `gf` runs as a blocking child process while the in-process worker
// must answer it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_events_stats() -> anyhow::Result<()> {
    init_tracing();
    let nats = NatsServer::start()?;
    let url = nats.url();
    let coord = Running::coordinator(coordinator_config(&url)).await?;
    let worker = Running::worker(worker_config(&url, 2)).await?;
    let client = Client::connect(&nats).await?;
    wait_workers(&client, 1).await?;
    let id = worker.id().to_string();

    let worker_state = || async {
        let (_, out, _) = gf(&url, &["workers", "--json"]).ok()?;
        let ws: Vec<gf_schemas::WorkerRecord> = serde_json::from_str(&out).ok()?;
        ws.into_iter()
            .find(|w| w.id.as_str() == id)
            .map(|w| w.state)
    };
    let (code, out, err) = gf(&url, &["drain", &id])?;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), format!("{id} draining"));
    eventually(Duration::from_secs(5), "draining", || async {
        (worker_state().await == Some(WorkerState::Draining)).then_some(())
    })
    .await?;
    let (code, out, _) = gf(&url, &["undrain", &id])?;
    assert_eq!((code, out.trim()), (0, format!("{id} active").as_str()));
    eventually(Duration::from_secs(5), "active", || async {
        (worker_state().await == Some(WorkerState::Active)).then_some(())
    })
    .await?;
    let (code, _, err) = gf(&url, &["drain", "nobody-here"])?;
    assert_ne!(code, 0);
    assert!(err.contains("did not answer"), "{err}");

    let mut spec = sh("true");
    spec.requires.insert("os".into(), "plan9".into());
    let blocked = client.submit(&spec).await?.job_id;
    let ok = client.submit(&sh("true")).await?.job_id;
    client
        .wait_state(blocked, JobState::Blocked, Duration::from_secs(10))
        .await?;
    client.wait_terminal(ok, Duration::from_secs(20)).await?;
    let (code, out, _) = gf(&url, &["events", "--level", "error", "--limit", "500"])?;
    assert_eq!(code, 0);
    assert!(
        out.lines()
            .any(|l| l.contains("job_unplaceable") && l.contains(&blocked.to_string())),
        "{out}"
    );
    assert!(out.lines().all(|l| l.contains("ERROR")), "{out}");

    let (code, out, _) = gf(&url, &["stats", "--json"])?;
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(v["jobs"]["total"], 2, "{v}");
    assert_eq!(v["jobs"]["by_state"]["succeeded"], 1);
    assert_eq!(v["jobs"]["by_state"]["blocked"], 1);
    assert_eq!(v["workers"]["online"], 1);
    let (code, out, _) = gf(&url, &["stats"])?;
    assert_eq!(code, 0);
    assert!(out.contains("1 online"), "{out}");

    worker.stop().await?;
    coord.stop().await?;
    Ok(())
}

/// `gf api-token` prints a token and the matching hash line; `gf coordinator` will not
/// start without a token unless `--no-auth`, and rejects a malformed one.
#[test]
fn tokens_and_coordinator_auth_flags() -> anyhow::Result<()> {
    let (code, out, _) = gf(
        "nats://127.0.0.1:1",
        &["api-token", "--name", "ci", "--role", "operator"],
    )?;
    assert_eq!(code, 0);
    let token = out
        .lines()
        .find_map(|l| l.split("shown once): ").nth(1))
        .expect("token line");
    let line = out
        .lines()
        .find_map(|l| l.split("--api-token ").nth(1))
        .expect("config line");
    let parsed = gf_coordinator::config::ApiToken::parse(line).map_err(anyhow::Error::msg)?;
    use sha2::Digest;
    assert_eq!(
        parsed.sha256_hex,
        hex::encode(sha2::Sha256::digest(token.as_bytes()))
    );
    assert_eq!(parsed.role, gf_coordinator::config::Role::Operator);

    // Unreachable NATS: a coordinator that passed its config checks fails on connect.
    let (code, _, err) = gf(
        "nats://127.0.0.1:1",
        &["coordinator", "--http-addr", "127.0.0.1:0"],
    )?;
    assert_ne!(code, 0);
    assert!(err.contains("--no-auth"), "{err}");
    let (code, _, err) = gf(
        "nats://127.0.0.1:1",
        &["coordinator", "--api-token", "x:admin:abc"],
    )?;
    assert_ne!(code, 0);
    assert!(err.contains("--api-token"), "{err}");
    let (code, _, err) = gf(
        "nats://127.0.0.1:1",
        &["coordinator", "--http-addr", "127.0.0.1:0", "--no-auth"],
    )?;
    assert_ne!(code, 0);
    assert!(err.contains("cannot connect to NATS"), "{err}");
    Ok(())
}
