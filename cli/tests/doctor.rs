//! `gf doctor` against real NATS: passes on a good setup, and fails with a clear line
//! for each broken part.

mod common;

use std::path::Path;
use std::time::Duration;

use async_nats::jetstream;
use common::*;
use gf_testkit::NatsServer;

/// Runs `gf doctor` in `dir` with `env`: (exit code, stdout).
fn doctor(dir: &Path, nats_url: &str, env: &[(&str, &str)]) -> anyhow::Result<(i32, String)> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gf"))
        .arg("doctor")
        .current_dir(dir)
        .env_remove("GF_ENV")
        .env("GF_NATS_URL", nats_url)
        .env("GF_LOG", "warn")
        // No coordinator's HTTP API unless a test names one (port 1: nothing there).
        .env("GF_HTTP_ADDR", "127.0.0.1:1")
        .envs(env.iter().copied())
        .output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

/// The line of check `name`, e.g. `("fail", "...")`.
fn line<'a>(out: &'a str, name: &str) -> Option<(&'a str, &'a str)> {
    out.lines().find_map(|l| {
        let (status, rest) = l.split_once(' ')?;
        let rest = rest.trim_start();
        rest.strip_prefix(name)
            .filter(|r| r.starts_with(' '))
            .map(|r| (status, r.trim()))
    })
}

async fn good_setup() -> anyhow::Result<(NatsServer, Running<gf_coordinator::Coordinator>)> {
    let nats = NatsServer::start()?;
    let coord = Running::coordinator(coordinator_config(&nats.url())).await?;
    Ok((nats, coord))
}

/// After a coordinator has started, every check passes (auth may warn) and the exit
/// code is 0. (Multi-threaded: `gf doctor` blocks this thread while the coordinator
/// answers its HTTP probe.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_on_a_good_setup() -> anyhow::Result<()> {
    init_tracing();
    let (nats, coord) = good_setup().await?;
    let dir = tempfile::tempdir()?;
    let http = coord.http();
    let http = http.trim_start_matches("http://");
    let (code, out) = doctor(dir.path(), &nats.url(), &[("GF_HTTP_ADDR", http)])?;
    assert_eq!(code, 0, "{out}");
    for name in [
        "config",
        "overlay",
        "nats",
        "nats version",
        "jetstream",
        "bucket gf_jobs",
        "bucket gf_workers",
        "bucket gf_idem",
        "bucket gf_leader",
        "stream GF_DISPATCH",
        "stream GF_EVENTS",
        "stream GF_LOGS",
        "clock skew",
    ] {
        assert_eq!(
            line(&out, name).map(|l| l.0),
            Some("pass"),
            "{name}:\n{out}"
        );
    }
    // The test coordinator serves its API without tokens, and NATS is open: loud
    // warnings, no failure outside a production profile.
    assert_eq!(line(&out, "api auth").map(|l| l.0), Some("warn"), "{out}");
    assert_eq!(line(&out, "nats auth").map(|l| l.0), Some("warn"), "{out}");
    assert!(
        out.contains("WARNING: this deployment is OPEN (nats auth, api auth)"),
        "{out}"
    );
    assert!(!out.lines().any(|l| l.starts_with("fail")), "{out}");
    coord.stop().await?;
    Ok(())
}

/// NATS down: a failing `nats` line naming the URL, dependent checks skipped, exit 1.
#[tokio::test]
async fn fails_when_nats_is_down() -> anyhow::Result<()> {
    let mut nats = NatsServer::start()?;
    let url = nats.url();
    nats.stop();
    let dir = tempfile::tempdir()?;
    let (code, out) = doctor(dir.path(), &url, &[])?;
    assert_eq!(code, 1, "{out}");
    let (status, detail) = line(&out, "nats").expect("nats line");
    assert_eq!(status, "fail", "{out}");
    assert!(detail.contains(&format!("cannot reach {url}")), "{out}");
    assert_eq!(line(&out, "jetstream").map(|l| l.0), Some("skip"), "{out}");
    Ok(())
}

/// A missing bucket and a bucket with other settings each get a failing line that
/// says what is wrong.
#[tokio::test]
async fn fails_on_missing_or_different_buckets() -> anyhow::Result<()> {
    init_tracing();
    let (nats, coord) = good_setup().await?;
    coord.stop().await?;
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    js.delete_key_value(gf_schemas::names::BUCKET_IDEM).await?;
    let mut cfg = js
        .get_stream("KV_gf_workers")
        .await?
        .info()
        .await?
        .config
        .clone();
    cfg.max_age = Duration::from_secs(60);
    cfg.duplicate_window = Duration::from_secs(30);
    js.update_stream(cfg).await?;
    let mut cfg = js
        .get_stream("GF_EVENTS")
        .await?
        .info()
        .await?
        .config
        .clone();
    cfg.max_bytes = 1 << 20;
    js.update_stream(cfg).await?;

    let dir = tempfile::tempdir()?;
    let (code, out) = doctor(dir.path(), &nats.url(), &[])?;
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        line(&out, "bucket gf_idem"),
        Some(("fail", "missing (a coordinator creates it at start)")),
        "{out}"
    );
    let (status, detail) = line(&out, "bucket gf_workers").expect("line");
    assert_eq!(status, "fail");
    assert!(
        detail.contains("max_age is 60s (expected 604800s)"),
        "{out}"
    );
    let (status, detail) = line(&out, "stream GF_EVENTS").expect("line");
    assert_eq!(status, "fail");
    assert!(detail.contains("max_bytes is 1048576"), "{out}");
    assert_eq!(
        line(&out, "bucket gf_jobs").map(|l| l.0),
        Some("pass"),
        "{out}"
    );
    Ok(())
}

/// A config file with an unknown key fails the `config` check naming file and key; an
/// overlay named by GF_ENV that does not exist fails the `overlay` check, saying so.
#[tokio::test]
async fn fails_on_bad_config_and_missing_overlay() -> anyhow::Result<()> {
    init_tracing();
    let (nats, coord) = good_setup().await?;
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("gigafactory.toml"),
        "[coordinator]\nlease_tl = \"5s\"\n",
    )?;
    let (code, out) = doctor(dir.path(), &nats.url(), &[])?;
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        line(&out, "config"),
        Some((
            "fail",
            "gigafactory.toml: unknown key `coordinator.lease_tl`"
        )),
        "{out}"
    );
    // NATS is still checked, with the URL from the environment.
    assert_eq!(line(&out, "nats").map(|l| l.0), Some("pass"), "{out}");

    std::fs::write(dir.path().join("gigafactory.toml"), "[worker]\nslots = 2\n")?;
    let (code, out) = doctor(dir.path(), &nats.url(), &[("GF_ENV", "staging")])?;
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        line(&out, "overlay"),
        Some((
            "fail",
            "GF_ENV=staging but gigafactory.staging.toml does not exist"
        )),
        "{out}"
    );
    std::fs::write(
        dir.path().join("gigafactory.staging.toml"),
        "[worker]\nslots = 3\n",
    )?;
    let (code, out) = doctor(dir.path(), &nats.url(), &[("GF_ENV", "staging")])?;
    assert_eq!(code, 0, "{out}");
    assert_eq!(line(&out, "overlay").map(|l| l.0), Some("pass"), "{out}");
    coord.stop().await?;
    Ok(())
}

/// The logs' and events' retention follow `[history]`: an existing logs stream with an
/// older version's 7 days is brought to the archive's retention at start (a job's logs
/// go with its archived record), a coordinator started with other settings applies
/// them, and `gf doctor` passes with the same settings and fails naming `max_age`
/// with others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_and_event_retention_follow_the_history_settings() -> anyhow::Result<()> {
    init_tracing();
    let nats = NatsServer::start()?;
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    let day = Duration::from_secs(86_400);
    let old = gf_coordinator::store::stream_configs(1)
        .into_iter()
        .find(|c| c.name == gf_schemas::names::STREAM_LOGS)
        .expect("logs stream");
    js.create_stream(jetstream::stream::Config {
        max_age: 7 * day,
        ..old
    })
    .await?;
    let max_age = |name: &'static str| {
        let js = js.clone();
        async move { anyhow::Ok(js.get_stream(name).await?.info().await?.config.max_age) }
    };

    let coord = Running::coordinator(coordinator_config(&nats.url())).await?;
    coord.stop().await?;
    assert_eq!(
        max_age("GF_LOGS").await?,
        30 * day,
        "the archive's retention"
    );
    assert_eq!(max_age("GF_EVENTS").await?, 7 * day);

    let mut cfg = coordinator_config(&nats.url());
    cfg.history.logs = Some(2 * day);
    cfg.history.events = day;
    let coord = Running::coordinator(cfg).await?;
    coord.stop().await?;
    assert_eq!(max_age("GF_LOGS").await?, 2 * day);
    assert_eq!(max_age("GF_EVENTS").await?, day);

    let dir = tempfile::tempdir()?;
    let same = [("GF_HISTORY_LOGS", "2d"), ("GF_HISTORY_EVENTS", "1d")];
    let (_, out) = doctor(dir.path(), &nats.url(), &same)?;
    for name in ["stream GF_LOGS", "stream GF_EVENTS"] {
        assert_eq!(
            line(&out, name).map(|l| l.0),
            Some("pass"),
            "{name}:\n{out}"
        );
    }
    let (code, out) = doctor(dir.path(), &nats.url(), &[])?;
    assert_eq!(code, 1, "{out}");
    let (status, detail) = line(&out, "stream GF_LOGS").expect("line");
    assert_eq!(status, "fail", "{out}");
    assert!(
        detail.contains("max_age is 172800s (expected 2592000s)"),
        "{out}"
    );
    let (status, detail) = line(&out, "stream GF_EVENTS").expect("line");
    assert_eq!(status, "fail", "{out}");
    assert!(
        detail.contains("max_age is 86400s (expected 604800s)"),
        "{out}"
    );
    Ok(())
}
