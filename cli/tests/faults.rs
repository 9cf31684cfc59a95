//! Faults against a real nats-server: worker crash, worker pause past its lease, NATS
//! restart; and a client in another language.

mod common;

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;

use common::*;
use gf_schemas::rpc::{CompleteReply, CompleteRequest};
use gf_schemas::{AttemptOutcome, ErrorKind, JobState, Timestamp, WorkerId};
use gf_testkit::{eventually, NatsServer};
use nix::sys::signal::Signal;

/// A job that, at epoch 1 only, records its pid and hangs; at later epochs records its
/// effect and ends. So the first holder is always mid-job when the fault hits.
fn hang_first_attempt(dir: &Path) -> gf_schemas::JobSpec {
    let mut spec = sh(
        r#"echo $$ > "$DIR/pid.$GF_EPOCH"; if [ "$GF_EPOCH" = 1 ]; then exec sleep 60; fi; echo "$GF_WORKER_ID" >> "$DIR/effects""#,
    );
    spec.env.insert("DIR".into(), dir.display().to_string());
    spec
}

async fn read_pid(dir: &Path, epoch: u64) -> anyhow::Result<i32> {
    let f = dir.join(format!("pid.{epoch}"));
    eventually(
        Duration::from_secs(15),
        &format!("{}", f.display()),
        || async { std::fs::read_to_string(&f).ok()?.trim().parse().ok() },
    )
    .await
}

/// A worker killed mid-job: the job is re-leased within lease TTL + reaper period (+2 s)
/// and succeeds elsewhere; the dead worker's process is gone too; a completion sent
/// with the old epoch is refused as stale and changes nothing.
#[tokio::test]
async fn killed_worker_job_recovers_elsewhere() -> anyhow::Result<()> {
    init_tracing();
    let nats = NatsServer::start()?;
    let cfg = coordinator_config(&nats.url());
    let bound = cfg.lease_ttl + cfg.reaper_period + Duration::from_secs(2);
    let coord = Running::coordinator(cfg).await?;
    let client = Client::connect(&nats).await?;
    let dir = tempfile::tempdir()?;
    let victim = WorkerProcess::spawn(&nats.url(), "victim", &[])?;
    wait_workers(&client, 1).await?;
    let id = client.submit(&hang_first_attempt(dir.path())).await?.job_id;
    client
        .wait_state(id, JobState::Running, Duration::from_secs(10))
        .await?;
    let orphan = read_pid(dir.path(), 1).await?;

    let killed_at = Timestamp::now_local();
    victim.signal(Signal::SIGKILL)?;
    let rescuer = Running::worker(worker_config(&nats.url(), 2)).await?;
    let rec = client.wait_terminal(id, Duration::from_secs(30)).await?;
    assert_eq!(rec.state, JobState::Succeeded, "{rec:?}");
    assert_eq!(rec.history.len(), 2);
    assert_eq!(rec.history[0].worker.as_str(), "victim");
    assert!(rec.history[0].outcome.is_none());
    assert!(rec.history[0]
        .ended_because
        .as_deref()
        .unwrap()
        .contains("lease expired"));
    assert_eq!(rec.history[1].worker, rescuer.id());
    let reaped_after = rec.history[0].ended_at.unwrap().since(killed_at);
    assert!(
        reaped_after <= bound,
        "re-leased {reaped_after:?} after the kill, bound {bound:?}"
    );
    assert!(
        !alive(orphan),
        "the killed worker's job process survived it"
    );

    let stale = CompleteRequest {
        job_id: id,
        epoch: 1,
        worker_id: WorkerId::new("victim")?,
        outcome: AttemptOutcome::Succeeded { exit_code: 0 },
        result: Some(serde_json::json!({"late": true})),
        usage: None,
        ran_ms: None,
    };
    let err = client
        .rpc
        .call_factory::<_, CompleteReply>(&stale)
        .await
        .expect_err("refused");
    assert_eq!(err.kind(), Some(ErrorKind::StaleEpoch), "{err}");
    assert_eq!(
        client.job(id).await?,
        rec,
        "a refused completion changed the record"
    );
    let effects = std::fs::read_to_string(dir.path().join("effects"))?;
    assert_eq!(effects.lines().count(), 1, "{effects}");
    rescuer.stop().await?;
    coord.stop().await?;
    Ok(())
}

/// A worker paused (SIGSTOP) past its lease, then resumed: the job runs elsewhere
/// meanwhile; on waking, the worker learns it was revoked and kills its process, and
/// nothing it reports is accepted.
#[tokio::test]
async fn paused_worker_is_fenced_on_wake() -> anyhow::Result<()> {
    init_tracing();
    let nats = NatsServer::start()?;
    let coord = Running::coordinator(coordinator_config(&nats.url())).await?;
    let client = Client::connect(&nats).await?;
    let dir = tempfile::tempdir()?;
    let zombie = WorkerProcess::spawn(&nats.url(), "zombie", &[])?;
    wait_workers(&client, 1).await?;
    let id = client.submit(&hang_first_attempt(dir.path())).await?.job_id;
    client
        .wait_state(id, JobState::Running, Duration::from_secs(10))
        .await?;
    let first = read_pid(dir.path(), 1).await?;

    zombie.signal(Signal::SIGSTOP)?;
    let other = Running::worker(worker_config(&nats.url(), 2)).await?;
    let done = client.wait_terminal(id, Duration::from_secs(30)).await?;
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(done.history[1].worker, other.id());
    assert!(
        alive(first),
        "the paused worker's process runs on until the worker wakes"
    );

    zombie.signal(Signal::SIGCONT)?;
    eventually(
        Duration::from_secs(5),
        "the woken worker to kill its revoked job",
        || async { (!alive(first)).then_some(()) },
    )
    .await?;
    let after = client.job(id).await?;
    assert_eq!(after, done, "the zombie's late report changed the job");
    assert!(
        after.history[0].outcome.is_none(),
        "zombie attempt has no accepted outcome"
    );
    let effects = std::fs::read_to_string(dir.path().join("effects"))?;
    assert_eq!(effects.lines().count(), 1);
    other.stop().await?;
    coord.stop().await?;
    Ok(())
}

/// Restarting the NATS server in the middle of a run loses no job.
#[tokio::test]
async fn nats_restart_loses_no_job() -> anyhow::Result<()> {
    init_tracing();
    let mut nats = NatsServer::start()?;
    let coord = Running::coordinator(coordinator_config(&nats.url())).await?;
    let w1 = Running::worker(worker_config(&nats.url(), 3)).await?;
    let w2 = Running::worker(worker_config(&nats.url(), 3)).await?;
    let client = Client::connect(&nats).await?;
    let mut ids = Vec::new();
    for _ in 0..50 {
        ids.push(client.submit(&sh("sleep 0.2")).await?.job_id);
    }
    eventually(Duration::from_secs(30), "some jobs to finish", || async {
        let mut n = 0;
        for id in &ids[..10] {
            if client.job(*id).await.ok()?.state == JobState::Succeeded {
                n += 1;
            }
        }
        (n >= 3).then_some(())
    })
    .await?;
    nats.restart()?;
    for id in &ids {
        let rec = client.wait_terminal(*id, Duration::from_secs(90)).await?;
        assert_eq!(rec.state, JobState::Succeeded, "{rec:?}");
    }
    // And the fleet still takes new work.
    let late = client.submit(&sh("true")).await?.job_id;
    assert_eq!(
        client
            .wait_terminal(late, Duration::from_secs(30))
            .await?
            .state,
        JobState::Succeeded
    );
    w1.stop().await?;
    w2.stop().await?;
    coord.stop().await?;
    Ok(())
}

/// With NATS gone for good, a coordinator and a worker told to stop still stop: their
/// last flush used to wait for a reconnect that never came, so they hung until killed.
#[tokio::test]
async fn coordinator_and_worker_stop_while_nats_is_down() -> anyhow::Result<()> {
    init_tracing();
    let mut nats = NatsServer::start()?;
    let coord = Running::coordinator(coordinator_config(&nats.url())).await?;
    let worker = Running::worker(worker_config(&nats.url(), 2)).await?;
    let client = Client::connect(&nats).await?;
    let id = client.submit(&sh("true")).await?.job_id;
    client.wait_terminal(id, Duration::from_secs(30)).await?;
    nats.stop();
    // A bound on a hang, not a speed target: each stop sends what it can and gives up
    // on what it cannot (heartbeats of a few seconds, a 2 s flush).
    let bound = Duration::from_secs(60);
    tokio::time::timeout(bound, worker.stop())
        .await
        .map_err(|_| {
            anyhow::anyhow!("the worker did not stop within {bound:?} with NATS down")
        })??;
    tokio::time::timeout(bound, coord.stop())
        .await
        .map_err(|_| {
            anyhow::anyhow!("the coordinator did not stop within {bound:?} with NATS down")
        })??;
    Ok(())
}

/// A worker whose job ends while NATS is down, told to stop, stops once its drain grace
/// is over: the completion it cannot send is given up (the lease expires and the job
/// runs again) instead of being tried for minutes (30 tries of a third of the lease).
#[tokio::test]
async fn a_worker_stops_after_its_drain_grace_with_a_completion_unsent() -> anyhow::Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let mut nats = NatsServer::start()?;
    let coord = Running::coordinator(coordinator_config(&nats.url())).await?;
    let mut config = worker_config(&nats.url(), 2);
    config.drain_grace = Duration::from_secs(1);
    let worker = Running::worker(config).await?;
    let client = Client::connect(&nats).await?;
    let mut spec = sh(
        r#"touch "$DIR/started"; while [ ! -e "$DIR/go" ]; do sleep 0.05; done; touch "$DIR/ended""#,
    );
    spec.env
        .insert("DIR".into(), dir.path().display().to_string());
    client.submit(&spec).await?;
    let (started, go, ended) = (
        dir.path().join("started"),
        dir.path().join("go"),
        dir.path().join("ended"),
    );
    eventually(Duration::from_secs(30), "the job started", || async {
        started.exists().then_some(())
    })
    .await?;
    nats.stop();
    std::fs::write(&go, b"")?;
    eventually(Duration::from_secs(30), "the job ended", || async {
        ended.exists().then_some(())
    })
    .await?;
    // A bound on a hang, not a speed target: the drain grace (1 s), the try in flight
    // (a third of the 2 s lease, hedged), a heartbeat and the 2 s flush.
    let bound = Duration::from_secs(30);
    tokio::time::timeout(bound, worker.stop())
        .await
        .map_err(|_| anyhow::anyhow!("the worker did not stop within {bound:?}"))??;
    tokio::time::timeout(Duration::from_secs(60), coord.stop())
        .await
        .map_err(|_| anyhow::anyhow!("the coordinator did not stop"))??;
    Ok(())
}

/// A worker told to stop with a job still running after its drain grace kills the
/// job and gives it back (hedged; a copy refused because the first was applied counts
/// as given back): the job is pending at once, its attempt not spent, and runs again
/// elsewhere; nothing waits for the lease to expire.
#[tokio::test]
async fn a_stopping_worker_gives_back_what_outlasts_its_drain_grace() -> anyhow::Result<()> {
    init_tracing();
    let nats = NatsServer::start()?;
    let coord = Running::coordinator(coordinator_config(&nats.url())).await?;
    let client = Client::connect(&nats).await?;
    let dir = tempfile::tempdir()?;
    let mut config = worker_config(&nats.url(), 2);
    config.drain_grace = Duration::from_secs(1);
    let leaver = Running::worker(config).await?;
    let leaver_id = leaver.id();
    let id = client.submit(&hang_first_attempt(dir.path())).await?.job_id;
    client
        .wait_state(id, JobState::Running, Duration::from_secs(10))
        .await?;
    let orphan = read_pid(dir.path(), 1).await?;
    // A bound on a hang: the 1 s drain grace, the kill, the release.
    tokio::time::timeout(Duration::from_secs(30), leaver.stop())
        .await
        .map_err(|_| anyhow::anyhow!("the worker did not stop"))??;
    let rec = client.job(id).await?;
    // Pending, or already blocked for want of a live worker.
    assert!(
        matches!(rec.state, JobState::Pending | JobState::Blocked) && rec.attempts == 0,
        "{rec:?}"
    );
    assert_eq!(rec.history.len(), 1, "{rec:?}");
    assert_eq!(rec.history[0].worker, leaver_id);
    let why = rec.history[0].ended_because.as_deref().unwrap_or_default();
    assert!(why.contains("released"), "{why}");
    assert!(!alive(orphan), "the given-back job's process survived");

    let rescuer = Running::worker(worker_config(&nats.url(), 2)).await?;
    let rec = client.wait_terminal(id, Duration::from_secs(30)).await?;
    assert_eq!(rec.state, JobState::Succeeded, "{rec:?}");
    assert_eq!((rec.history.len(), rec.attempts), (2, 1), "{rec:?}");
    assert_eq!(rec.history[1].worker, rescuer.id());
    rescuer.stop().await?;
    coord.stop().await?;
    Ok(())
}

/// A worker run in a terminal that closes (SIGHUP) drains as for SIGTERM: the job it
/// is running may finish within the drain grace and is reported, and the worker exits
/// cleanly. SIGHUP's default action would kill it at once and leave the job to its
/// lease.
#[tokio::test]
async fn a_closed_terminal_drains_a_worker() -> anyhow::Result<()> {
    init_tracing();
    let nats = NatsServer::start()?;
    let coord = Running::coordinator(coordinator_config(&nats.url())).await?;
    let client = Client::connect(&nats).await?;
    let dir = tempfile::tempdir()?;
    // Its drain grace is 2 s: the job ends within 50 ms of being let go.
    let mut worker = WorkerProcess::spawn(&nats.url(), "terminal", &[])?;
    wait_workers(&client, 1).await?;
    let mut spec = sh(
        r#"touch "$DIR/started"; while [ ! -e "$DIR/go" ]; do sleep 0.05; done; echo "$GF_EPOCH" >> "$DIR/effects""#,
    );
    spec.env
        .insert("DIR".into(), dir.path().display().to_string());
    let id = client.submit(&spec).await?.job_id;
    let started = dir.path().join("started");
    eventually(Duration::from_secs(30), "the job started", || async {
        started.exists().then_some(())
    })
    .await?;

    worker.signal(Signal::SIGHUP)?;
    // The job ends only after the hangup: a worker killed by it could not report it.
    std::fs::write(dir.path().join("go"), b"")?;
    let status = eventually(Duration::from_secs(60), "the worker to exit", || {
        let exited = worker.child.try_wait().ok().flatten();
        async move { exited }
    })
    .await?;
    assert!(status.success(), "the worker exited with {status}");
    let rec = client.wait_terminal(id, Duration::from_secs(30)).await?;
    assert_eq!(rec.state, JobState::Succeeded, "{rec:?}");
    assert_eq!(rec.history.len(), 1, "ran once: {rec:?}");
    assert_eq!(rec.history[0].worker.as_str(), "terminal");
    let effects = std::fs::read_to_string(dir.path().join("effects"))?;
    assert_eq!(effects.trim(), "1", "{effects}");
    coord.stop().await?;
    Ok(())
}

/// A worker started with SIGHUP ignored (`nohup gf worker`) was asked to outlive its
/// terminal: it keeps ignoring SIGHUP, and goes on claiming and running jobs after one.
#[tokio::test]
async fn a_worker_started_with_nohup_outlives_its_terminal() -> anyhow::Result<()> {
    init_tracing();
    let nats = NatsServer::start()?;
    let coord = Running::coordinator(coordinator_config(&nats.url())).await?;
    let client = Client::connect(&nats).await?;
    let mut worker = WorkerProcess::spawn_under(Some("nohup"), &nats.url(), "nohup", &[])?;
    wait_workers(&client, 1).await?;
    // Registered: its signal handlers are in place. SIGHUP (signal 1) is still ignored.
    let status = std::fs::read_to_string(format!("/proc/{}/status", worker.child.id()))?;
    let ignored = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .context("SigIgn in /proc/PID/status")?;
    assert_eq!(
        ignored & 1,
        1,
        "SIGHUP no longer ignored: SigIgn {ignored:x}"
    );

    worker.signal(Signal::SIGHUP)?;
    let id = client.submit(&sh("true")).await?.job_id;
    let rec = client.wait_terminal(id, Duration::from_secs(30)).await?;
    assert_eq!(rec.state, JobState::Succeeded, "{rec:?}");
    assert_eq!(rec.history[0].worker.as_str(), "nohup");
    assert!(
        worker.child.try_wait()?.is_none(),
        "the worker exited on SIGHUP"
    );
    coord.stop().await?;
    Ok(())
}

/// A coordinator that lost its leadership to a NATS outage stops when asked, without
/// waiting for its attempts to lead again (each waits out NATS request timeouts: CI saw
/// one take over 60 s to stop).
#[tokio::test]
async fn a_coordinator_that_lost_its_leadership_to_an_outage_stops() -> anyhow::Result<()> {
    use std::sync::atomic::Ordering::SeqCst;
    init_tracing();
    let mut nats = NatsServer::start()?;
    let coord = Running::coordinator(coordinator_config(&nats.url())).await?;
    let status = coord.part.as_ref().expect("running").leader.clone();
    eventually(Duration::from_secs(30), "leadership", || {
        let status = status.clone();
        async move { status.is_leader.load(SeqCst).then_some(()) }
    })
    .await?;
    nats.stop();
    eventually(Duration::from_secs(60), "leadership lost", || {
        let status = status.clone();
        async move { (!status.is_leader.load(SeqCst)).then_some(()) }
    })
    .await?;
    // A bound on a hang, not a speed target: what is left to give up on is the event
    // flush and the tasks' own short drains.
    let bound = Duration::from_secs(30);
    tokio::time::timeout(bound, coord.stop())
        .await
        .map_err(|_| anyhow::anyhow!("the coordinator did not stop within {bound:?}"))??;
    Ok(())
}

/// A Python client (nats-py) submits over `gf.rpc.submit` using only the published
/// JSON Schemas, and sees its job succeed.
#[tokio::test]
async fn python_client_submits_with_published_schema() -> anyhow::Result<()> {
    init_tracing();
    let nats = NatsServer::start()?;
    let coord = Running::coordinator(coordinator_config(&nats.url())).await?;
    let worker = Running::worker(worker_config(&nats.url(), 2)).await?;
    let url = nats.url();
    let out = tokio::task::spawn_blocking(move || {
        python_client(
            &url,
            &["--timeout", "30", "--", "sh", "-c", "echo from python"],
        )
    })
    .await??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python client failed ({}): {stdout}{stderr}\n(needs scripts/install-test-deps.sh)",
        out.status
    );
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or("{}"))?;
    assert_eq!(last["state"], "succeeded");
    let id = last["job_id"].as_str().unwrap().parse()?;
    let client = Client::connect(&nats).await?;
    assert_eq!(client.job(id).await?.state, JobState::Succeeded);
    worker.stop().await?;
    coord.stop().await?;
    Ok(())
}
