//! The operator surface from the outside: the dashboard in real headless Chromium
//! (Python Playwright driving Debian's `chromium`), and schemathesis fuzzing the API
//! from its OpenAPI document. Both run against a real nats-server and coordinator.
//! `scripts/install-browser-deps.sh` installs the tools.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;
use gf_coordinator::config::{ApiToken, AuthConfig, Role};
use gf_testkit::NatsServer;
use sha2::{Digest, Sha256};

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn with_token(cfg: &mut gf_coordinator::CoordinatorConfig, token: &str) {
    cfg.auth = AuthConfig {
        enabled: true,
        tokens: vec![ApiToken {
            name: "tester".into(),
            role: Role::Operator,
            sha256_hex: hex::encode(Sha256::digest(token.as_bytes())),
        }],
    };
}

const WEBHOOK_SECRET: &str = "browser-webhook-secret";

/// A profile, and a GitHub bridge source whose echoes go to a port nothing listens on
/// (so its deliveries show attempts and an error).
fn with_workflow(cfg: &mut gf_coordinator::CoordinatorConfig) -> anyhow::Result<()> {
    let settings: gf_cli::config::Settings = toml::from_str(
        r#"
[profiles.agent]
description = "an agent on a ticket"
command = ["sh", "-c", "echo agent on $0"]
labels = { team = "core" }

[bridge.sources.github]
secret_env = "SECRET"
[[bridge.sources.github.rules]]
label = "agent"
profile = "agent"
command = ["{issue.number}"]
[bridge.sources.github.echo]
url = "http://127.0.0.1:9/hook"
secret_env = "SECRET"
backoff = "500ms"
backoff_max = "2s"
"#,
    )?;
    for (name, p) in &settings.profiles {
        cfg.profiles.insert(
            name.clone(),
            p.profile().map_err(|e| anyhow::anyhow!("{e:?}"))?,
        );
    }
    let env = [("SECRET".to_string(), WEBHOOK_SECRET.to_string())].into();
    cfg.bridge = settings.bridge.resolve(&env, true)?;
    Ok(())
}

/// Runs a command with a deadline, returning its exit status and output.
async fn run(mut cmd: Command, limit: Duration) -> anyhow::Result<(bool, String)> {
    let out = tokio::time::timeout(limit, tokio::task::spawn_blocking(move || cmd.output()))
        .await
        .map_err(|_| anyhow::anyhow!("did not finish within {limit:?}"))???;
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

fn python_has(module: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// In a real browser: the token prompt; a submitted job appears and the processed
/// counter moves; a job page shows live log lines; the cancel button cancels; an
/// unplaceable job shows as an error event; the drain button drains and undrains;
/// profiles are listed and a job page shows where its values came from; a job's
/// artifacts and checkpoint are listed on its page and each link downloads its file
/// byte for byte; a tracker delivery shows its attempts and error, and can be
/// redelivered.
#[tokio::test]
async fn dashboard_in_headless_chromium() -> anyhow::Result<()> {
    init_tracing();
    anyhow::ensure!(
        python_has("playwright"),
        "Python playwright is missing: run scripts/install-browser-deps.sh"
    );
    let nats = NatsServer::start()?;
    let token = "browser-test-token";
    let mut cfg = coordinator_config(&nats.url());
    with_token(&mut cfg, token);
    with_workflow(&mut cfg)?;
    let coord = Running::coordinator(cfg).await?;
    let worker = Running::worker(worker_config(&nats.url(), 4)).await?;
    let shots = workspace().join("target/screenshots");
    let mut cmd = Command::new("python3");
    cmd.arg(workspace().join("tests/browser/dashboard.py"))
        .arg(coord.http())
        .arg(token)
        .arg(&shots)
        .arg(WEBHOOK_SECRET);
    let (ok, out) = run(cmd, Duration::from_secs(150)).await?;
    println!("{out}");
    assert!(ok, "browser scenarios failed:\n{out}");
    assert!(shots.join("overview.png").exists());
    worker.stop().await?;
    coord.stop().await?;
    Ok(())
}

/// schemathesis, generating requests from `/api/openapi.json` (examples, coverage and
/// fuzzing phases, bounded), finds no server error (5xx) on any route.
#[tokio::test]
async fn openapi_fuzz_finds_no_server_error() -> anyhow::Result<()> {
    init_tracing();
    anyhow::ensure!(
        python_has("schemathesis"),
        "schemathesis is missing: run scripts/install-browser-deps.sh"
    );
    let nats = NatsServer::start()?;
    let token = "fuzz-token";
    let mut cfg = coordinator_config(&nats.url());
    with_token(&mut cfg, token);
    // No worker on purpose: generated job specs are queued, never run.
    let coord = Running::coordinator(cfg).await?;
    let report = workspace().join("target/schemathesis");
    let mut cmd = Command::new("schemathesis");
    cmd.arg("run")
        .arg(format!("{}/api/openapi.json", coord.http()))
        .args(["--checks", "not_a_server_error"])
        .args(["--max-examples", "12", "--seed", "4"])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--request-timeout", "10"])
        // Live streams never end by themselves; they are tested in http_api.rs.
        .args(["--exclude-path-regex", "/stream$"])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .arg("--no-color")
        .env("SCHEMATHESIS_HOOKS", "")
        .current_dir(workspace().join("target"));
    std::fs::create_dir_all(&report)?;
    let (ok, out) = run(cmd, Duration::from_secs(150)).await?;
    println!("{out}");
    assert!(ok, "schemathesis found failures:\n{out}");
    coord.stop().await?;
    Ok(())
}
