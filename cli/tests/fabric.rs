//! The job fabric against a real nats-server: what issue #2 must show.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use gf_schemas::names::{self, rpc, FactoryVerb};
use gf_schemas::rpc::{
    ClaimReply, ClaimRequest, CompleteReply, CompleteRequest, HeartbeatReply, HeartbeatRequest,
    RegisterReply, RegisterRequest, SubmitReply,
};
use gf_schemas::{
    AttemptOutcome, Capabilities, ErrorKind, JobId, JobState, Reply, WorkerId, WorkerState,
};
use gf_testkit::{eventually, NatsServer};
use tokio::sync::Barrier;

/// 200 jobs on 3 workers all succeed, and each one's effect happened exactly once.
#[tokio::test]
async fn two_hundred_jobs_three_workers_each_once() -> anyhow::Result<()> {
    init_tracing();
    let nats = NatsServer::start()?;
    let effects = tempfile::tempdir()?;
    let coord = Running::coordinator(coordinator_config(&nats.url())).await?;
    let mut workers = Vec::new();
    for _ in 0..3 {
        workers.push(Running::worker(worker_config(&nats.url(), 4)).await?);
    }
    let client = Client::connect(&nats).await?;
    let log = effects.path().join("effects.log");
    let mut ids = Vec::new();
    for i in 0..200 {
        let mut spec = sh(r#"echo "$GF_JOB_ID" >> "$EFFECTS""#);
        spec.env.insert("EFFECTS".into(), log.display().to_string());
        spec.labels.insert("n".into(), i.to_string());
        ids.push(client.submit(&spec).await?.job_id);
    }
    let mut ran_on: BTreeMap<WorkerId, usize> = BTreeMap::new();
    for id in &ids {
        let rec = client.wait_terminal(*id, Duration::from_secs(60)).await?;
        assert_eq!(rec.state, JobState::Succeeded, "{rec:?}");
        assert_eq!(rec.attempts, 1, "job {id} ran {} times", rec.attempts);
        *ran_on.entry(rec.history[0].worker.clone()).or_default() += 1;
    }
    let text = std::fs::read_to_string(&log)?;
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for line in text.lines() {
        *seen.entry(line).or_default() += 1;
    }
    assert_eq!(seen.len(), 200, "every job's effect is present");
    assert!(
        seen.values().all(|&n| n == 1),
        "an effect happened twice: {seen:?}"
    );
    assert_eq!(ran_on.len(), 3, "work spread over all workers: {ran_on:?}");
    for w in workers {
        w.stop().await?;
    }
    coord.stop().await?;
    Ok(())
}

/// A job needing `os=plan9` is reported unplaceable with the reason and runs nowhere;
/// a job needing a tag only one worker has runs only there.
#[tokio::test]
async fn routing_by_capability() -> anyhow::Result<()> {
    init_tracing();
    let nats = NatsServer::start()?;
    let coord = Running::coordinator(coordinator_config(&nats.url())).await?;
    let plain = Running::worker(worker_config(&nats.url(), 2)).await?;
    let mut gpu_cfg = worker_config(&nats.url(), 2);
    gpu_cfg.tags.insert("gpu".into());
    let gpu = Running::worker(gpu_cfg).await?;
    let client = Client::connect(&nats).await?;
    wait_workers(&client, 2).await?;

    let mut plan9 = sh("echo should not run");
    plan9.requires.insert("os".into(), "plan9".into());
    let plan9 = client.submit(&plan9).await?.job_id;
    let blocked = client
        .wait_state(plan9, JobState::Blocked, Duration::from_secs(10))
        .await?;
    assert_eq!(
        blocked.reason.as_deref(),
        Some("unplaceable: no live worker has os=plan9")
    );

    let mut tagged = Vec::new();
    for _ in 0..6 {
        let mut s = sh("true");
        s.tags.insert("gpu".into());
        tagged.push(client.submit(&s).await?.job_id);
    }
    for id in tagged {
        let rec = client.wait_terminal(id, Duration::from_secs(30)).await?;
        assert_eq!(rec.state, JobState::Succeeded);
        assert_eq!(rec.history.len(), 1);
        assert_eq!(
            rec.history[0].worker,
            gpu.id(),
            "tagged job ran on {}",
            rec.history[0].worker
        );
    }
    let still = client.job(plan9).await?;
    assert_eq!(
        (still.state, still.attempts, still.epoch),
        (JobState::Blocked, 0, 0),
        "plan9 job never dispatched"
    );
    gpu.stop().await?;
    plain.stop().await?;
    coord.stop().await?;
    Ok(())
}

/// Registers a worker over RPC that never pulls notices, so a test can claim by hand.
async fn fake_worker(client: &Client, id: &str) -> anyhow::Result<WorkerId> {
    fake_worker_with_slots(client, id, 1).await
}

async fn fake_worker_with_slots(client: &Client, id: &str, slots: u32) -> anyhow::Result<WorkerId> {
    let worker_id = WorkerId::new(id)?;
    let caps = Capabilities {
        queues: vec!["default".into()],
        ..Default::default()
    };
    let _: RegisterReply = client
        .rpc
        .call_factory(&RegisterRequest {
            worker_id: worker_id.clone(),
            capabilities: caps,
            slots,
            version: "test".into(),
            hostname: "test".into(),
        })
        .await?;
    let _: HeartbeatReply = client
        .rpc
        .call_factory(&HeartbeatRequest {
            worker_id: worker_id.clone(),
            state: WorkerState::Active,
            free_slots: slots,
            running: vec![],
        })
        .await?;
    Ok(worker_id)
}

/// A worker's report that its attempt at `epoch` succeeded.
fn success(job_id: JobId, epoch: u64, worker_id: WorkerId) -> CompleteRequest {
    CompleteRequest {
        job_id,
        epoch,
        worker_id,
        outcome: AttemptOutcome::Succeeded { exit_code: 0 },
        result: None,
        usage: None,
        ran_ms: None,
    }
}

/// A worker is leased at most as many jobs as it has slots through bursts of
/// submissions (each a run of plan passes), and the leader's view holds the rest as
/// pending. Under CPU load this caught the direct lane and a pass handing out the same
/// slot (4 leases on 3 slots: `DirectLane::suspend`).
#[tokio::test]
async fn a_worker_is_never_leased_more_jobs_than_it_has_slots() -> anyhow::Result<()> {
    init_tracing();
    let nats = NatsServer::start()?;
    // No start deadline within the test, and the fake worker (one heartbeat) stays
    // live throughout: the leases stay, and the others stay pending, not unplaceable.
    let config = gf_coordinator::config::CoordinatorConfig {
        lease_ttl: Duration::from_secs(60),
        claim_timeout: Duration::from_secs(60),
        worker_timeout: Duration::from_secs(120),
        ..coordinator_config(&nats.url())
    };
    let coord = Running::coordinator(config).await?;
    let client = Client::connect(&nats).await?;
    let worker = fake_worker_with_slots(&client, "three-slots", 3).await?;
    let bucket = async_nats::jetstream::new(client.nats.clone())
        .get_key_value(names::BUCKET_JOBS)
        .await?;
    let leased = || async {
        let jobs = gf_coordinator::store::list_jobs(&bucket, None, 1_000).await?;
        anyhow::Ok(
            jobs.iter()
                .filter(|r| r.state == JobState::Dispatched)
                .inspect(|r| {
                    assert_eq!(r.lease.as_ref().map(|l| &l.worker), Some(&worker), "{r:?}")
                })
                .count(),
        )
    };
    let most = std::cell::Cell::new(0);
    // Bursts of submissions, each a run of passes.
    for _ in 0..4 {
        for _ in 0..10 {
            client.submit(&sh("true")).await?;
        }
        most.set(most.get().max(leased().await?));
    }
    let url = format!("{}/metrics", coord.http());
    eventually(
        Duration::from_secs(10),
        "three leased, the other 37 pending in the leader's view",
        || async {
            let (_, body) = http_request("GET", &url, b"").await.ok()?;
            let n = leased().await.ok()?;
            most.set(most.get().max(n));
            (n == 3 && sample(&body, r#"gf_jobs{state="pending"}"#) == 37.0).then_some(())
        },
    )
    .await?;
    assert_eq!(
        most.get(),
        3,
        "a 3-slot worker held {} leases at once",
        most.get()
    );
    coord.stop().await?;
    Ok(())
}

/// Batch RPCs: each item is answered on its own, as if sent alone (a bad item fails
/// alone); only a batch that is not an array of at most `MAX_BATCH` items is refused.
#[tokio::test]
async fn batch_rpcs_answer_each_item() -> anyhow::Result<()> {
    init_tracing();
    let nats = NatsServer::start()?;
    let coord = Running::coordinator(coordinator_config(&nats.url())).await?;
    let client = Client::connect(&nats).await?;
    let worker = fake_worker_with_slots(&client, "batcher", 2).await?;
    let batch = |items: Vec<serde_json::Value>| -> Vec<u8> { serde_json::to_vec(&items).unwrap() };
    let spec = serde_json::to_value(sh("true"))?;
    let submitted: Vec<Reply<SubmitReply>> = client
        .rpc
        .call_raw(
            rpc::SUBMIT_BATCH,
            batch(vec![spec.clone(), serde_json::json!({"command": 5}), spec]).into(),
        )
        .await?;
    assert_eq!(submitted.len(), 3);
    let err = submitted[1].clone().into_result().expect_err("bad spec");
    assert_eq!(err.kind, ErrorKind::Invalid, "{err:?}");
    let ids: Vec<_> = [&submitted[0], &submitted[2]]
        .iter()
        .map(|r| (*r).clone().into_result().map(|r| r.job_id))
        .collect::<Result<_, _>>()?;
    let mut claims = Vec::new();
    for id in &ids {
        let rec = client
            .wait_state(*id, JobState::Dispatched, Duration::from_secs(10))
            .await?;
        claims.push(serde_json::to_value(ClaimRequest {
            job_id: *id,
            epoch: rec.epoch,
            worker_id: worker.clone(),
        })?);
    }
    let unknown = ClaimRequest {
        job_id: gf_schemas::JobId::new(),
        epoch: 1,
        worker_id: worker.clone(),
    };
    claims.push(serde_json::to_value(unknown)?);
    claims.push(serde_json::json!("garbage"));
    let claimed: Vec<Reply<ClaimReply>> = client
        .rpc
        .call_raw(
            &names::factory_rpc(&worker, FactoryVerb::ClaimBatch),
            batch(claims).into(),
        )
        .await?;
    let kinds: Vec<_> = claimed
        .iter()
        .map(|r| r.clone().into_result().err().map(|e| e.kind))
        .collect();
    assert_eq!(
        kinds,
        [
            None,
            None,
            Some(ErrorKind::NotFound),
            Some(ErrorKind::Invalid)
        ],
        "{claimed:?}"
    );
    let completions = claimed[..2]
        .iter()
        .zip(&ids)
        .map(|(c, id)| {
            let lease = c.clone().into_result().expect("claimed").lease;
            serde_json::to_value(success(*id, lease.epoch, worker.clone()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let completed: Vec<Reply<CompleteReply>> = client
        .rpc
        .call_raw(
            &names::factory_rpc(&worker, FactoryVerb::CompleteBatch),
            batch(completions).into(),
        )
        .await?;
    for (r, id) in completed.into_iter().zip(&ids) {
        assert_eq!(r.into_result()?.state, JobState::Succeeded);
        assert_eq!(client.job(*id).await?.state, JobState::Succeeded);
    }
    // More items than the coordinator handles at once: each still answered, in order.
    let submit_keyed = |keys: Vec<usize>| {
        let items = keys
            .into_iter()
            .map(|i| {
                let mut spec = sh("true");
                spec.idempotency_key = Some(format!("many-{i}"));
                serde_json::to_value(spec).unwrap()
            })
            .collect();
        let caller = &client.rpc;
        async move {
            let replies: Vec<Reply<SubmitReply>> = caller
                .call_raw(rpc::SUBMIT_BATCH, batch(items).into())
                .await?;
            replies
                .into_iter()
                .map(|r| Ok(r.into_result()?.job_id))
                .collect::<anyhow::Result<Vec<gf_schemas::JobId>>>()
        }
    };
    let first = submit_keyed((0..40).collect()).await?;
    assert_eq!(
        first
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        40
    );
    // The same keys again, reversed: each answer is the job of its own key.
    let again = submit_keyed((0..40).rev().collect()).await?;
    assert_eq!(again.into_iter().rev().collect::<Vec<_>>(), first);

    // Refused as a whole: too many items, or not an array.
    let too_many = batch(vec![serde_json::json!({}); gf_schemas::rpc::MAX_BATCH + 1]);
    let err = client
        .rpc
        .call_raw::<serde_json::Value>(
            &names::factory_rpc(&worker, FactoryVerb::ClaimBatch),
            too_many.into(),
        )
        .await
        .expect_err("too many");
    assert_eq!(err.kind(), Some(ErrorKind::TooLarge), "{err}");
    for subject in [
        rpc::SUBMIT_BATCH.to_string(),
        names::factory_rpc(&worker, FactoryVerb::ClaimBatch),
        names::factory_rpc(&worker, FactoryVerb::CompleteBatch),
    ] {
        let err = client
            .rpc
            .call_raw::<serde_json::Value>(&subject, "{\"trunc".into())
            .await
            .expect_err("not an array");
        assert_eq!(err.kind(), Some(ErrorKind::Invalid), "{subject}: {err}");
    }
    coord.stop().await?;
    Ok(())
}

/// Two workers claiming the same notice at the same moment: exactly one wins, the
/// other is told `conflict`.
#[tokio::test]
async fn claim_race_has_one_winner() -> anyhow::Result<()> {
    init_tracing();
    let nats = NatsServer::start()?;
    let coord = Running::coordinator(coordinator_config(&nats.url())).await?;
    let client = Arc::new(Client::connect(&nats).await?);
    let a = fake_worker(&client, "racer-a").await?;
    let b = fake_worker(&client, "racer-b").await?;
    for round in 0..10 {
        let id = client.submit(&sh("true")).await?.job_id;
        let rec = client
            .wait_state(id, JobState::Dispatched, Duration::from_secs(10))
            .await?;
        let barrier = Arc::new(Barrier::new(2));
        let claim = |w: WorkerId| {
            let (client, barrier) = (client.clone(), barrier.clone());
            let req = ClaimRequest {
                job_id: id,
                epoch: rec.epoch,
                worker_id: w,
            };
            tokio::spawn(async move {
                barrier.wait().await;
                client.rpc.call_factory::<_, ClaimReply>(&req).await
            })
        };
        let (ra, rb) = (claim(a.clone()), claim(b.clone()));
        let results = [ra.await?, rb.await?];
        let wins = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(wins, 1, "round {round}: {results:?}");
        let loser = results
            .iter()
            .find_map(|r| r.as_ref().err())
            .expect("one lost");
        assert_eq!(
            loser.kind(),
            Some(ErrorKind::Conflict),
            "round {round}: {loser}"
        );
        // Free the fake worker's slot for the next round.
        let winner = if results[0].is_ok() {
            a.clone()
        } else {
            b.clone()
        };
        let _: CompleteReply = client
            .rpc
            .call_factory(&success(id, rec.epoch, winner))
            .await?;
    }
    coord.stop().await?;
    Ok(())
}

/// With room on a live worker and nothing waiting, the submission itself dispatches
/// the job (epoch 1, its notice published, claimable at once); a job that would have
/// to overtake or find no room takes the planned way and is dispatched by a pass.
#[tokio::test]
async fn submission_dispatches_when_a_worker_has_room() -> anyhow::Result<()> {
    init_tracing();
    let nats = NatsServer::start()?;
    let mut cfg = coordinator_config(&nats.url());
    // No worker is judged gone while the test runs without heartbeats.
    cfg.worker_timeout = Duration::from_secs(60);
    let coord = Running::coordinator(cfg).await?;
    let service = coord.part.as_ref().expect("running").service.clone();
    let client = Client::connect(&nats).await?;
    let early = client.submit(&sh("true")).await?;
    assert_eq!(
        early.state,
        JobState::Pending,
        "no worker yet: the planned way"
    );
    let w = fake_worker(&client, "roomy").await?;
    let planned = client
        .wait_state(early.job_id, JobState::Dispatched, Duration::from_secs(10))
        .await?;
    let claim_and_finish = |id, epoch| {
        let (client, w) = (&client, w.clone());
        async move {
            let _: ClaimReply = client
                .rpc
                .call_factory(&ClaimRequest {
                    job_id: id,
                    epoch,
                    worker_id: w.clone(),
                })
                .await?;
            let _: CompleteReply = client.rpc.call_factory(&success(id, epoch, w)).await?;
            anyhow::Ok(())
        }
    };
    claim_and_finish(early.job_id, planned.epoch).await?;
    eventually(Duration::from_secs(10), "the lane to open", || async {
        (service.lane.free() == 1).then_some(())
    })
    .await?;

    let direct = client.submit(&sh("true")).await?;
    assert_eq!(
        direct.state,
        JobState::Dispatched,
        "dispatched by the submission"
    );
    let rec = client.job(direct.job_id).await?;
    assert_eq!((rec.state, rec.epoch), (JobState::Dispatched, 1));
    assert!(rec.score.is_some(), "the decision's breakdown is kept");
    assert_eq!(service.lane.free(), 0, "the one slot is taken");
    // The only slot is promised: the next job waits for a pass.
    let queued = client.submit(&sh("true")).await?;
    assert_eq!(queued.state, JobState::Pending);
    claim_and_finish(direct.job_id, 1).await?;
    let rec = client
        .wait_state(queued.job_id, JobState::Dispatched, Duration::from_secs(10))
        .await?;
    assert_eq!(rec.epoch, 1);
    claim_and_finish(queued.job_id, 1).await?;
    for id in [early.job_id, direct.job_id, queued.job_id] {
        let rec = client.job(id).await?;
        assert_eq!(rec.state, JobState::Succeeded);
        // Every write stamps its time: the operator counters key a finished job by it
        // and take its submit→done latency from it (it had stayed the time of the
        // dispatch, or of the submission for a job dispatched at submission).
        assert_eq!(
            Some(rec.updated_at),
            rec.history.last().and_then(|a| a.ended_at),
            "job {id}: updated when it ended"
        );
    }
    // Stopping does not wait for every service handle to go (this test still holds one).
    tokio::time::timeout(Duration::from_secs(30), coord.stop())
        .await
        .map_err(|_| anyhow::anyhow!("stop hung while a service handle was held"))??;
    drop(service);
    Ok(())
}

/// The same idempotency key submitted twice (and ten times at once) returns the first job.
#[tokio::test]
async fn idempotency_key_returns_first_job() -> anyhow::Result<()> {
    init_tracing();
    let nats = NatsServer::start()?;
    let coord = Running::coordinator(coordinator_config(&nats.url())).await?;
    let client = Arc::new(Client::connect(&nats).await?);
    let mut spec = sh("true");
    spec.idempotency_key = Some("ticket-42".into());
    let first = client.submit(&spec).await?;
    assert!(!first.duplicate);
    let second = client.submit(&spec).await?;
    assert_eq!(second.job_id, first.job_id);
    assert!(second.duplicate);

    spec.idempotency_key = Some("ticket-43".into());
    let barrier = Arc::new(Barrier::new(10));
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (client, barrier, spec) = (client.clone(), barrier.clone(), spec.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            client.submit(&spec).await
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await??);
    }
    assert!(ids.iter().all(|r| r.job_id == ids[0].job_id), "{ids:?}");
    assert_eq!(ids.iter().filter(|r| !r.duplicate).count(), 1);
    // Another product may use the same key for its own job.
    spec.product = "other".into();
    assert_ne!(client.submit(&spec).await?.job_id, ids[0].job_id);
    coord.stop().await?;
    Ok(())
}

/// A failing job is retried with growing backoff and ends `dead` after `max_attempts`.
#[tokio::test]
async fn failing_job_retries_with_backoff_then_dead() -> anyhow::Result<()> {
    init_tracing();
    let nats = NatsServer::start()?;
    let cfg = coordinator_config(&nats.url());
    let base = cfg.retry_base;
    let coord = Running::coordinator(cfg).await?;
    let worker = Running::worker(worker_config(&nats.url(), 2)).await?;
    let client = Client::connect(&nats).await?;
    let mut spec = sh("echo boom >&2; exit 7");
    spec.max_attempts = 3;
    let id = client.submit(&spec).await?.job_id;
    let rec = client.wait_terminal(id, Duration::from_secs(30)).await?;
    assert_eq!(rec.state, JobState::Dead, "{rec:?}");
    assert_eq!(rec.attempts, 3);
    assert_eq!(rec.history.len(), 3);
    assert!(
        rec.reason.as_deref().unwrap().contains("exit status 7"),
        "{:?}",
        rec.reason
    );
    for (i, pair) in rec.history.windows(2).enumerate() {
        let gap = pair[1].started_at.since(pair[0].ended_at.expect("ended"));
        // Attempt n waits base·2^(n-1), jittered down to at most half.
        let floor = base * (1 << i) / 2;
        assert!(
            gap >= floor,
            "retry {} came after {gap:?}, backoff floor {floor:?}",
            i + 1
        );
        assert_eq!(
            pair[0].outcome,
            Some(AttemptOutcome::Failed {
                exit_code: Some(7),
                error: "exit status 7".into()
            })
        );
    }
    worker.stop().await?;
    coord.stop().await?;
    Ok(())
}

/// Malformed, truncated, misspelt and oversized submissions get clear errors; jobs
/// accepted before and after are untouched and run.
#[tokio::test]
async fn bad_submissions_rejected_nothing_lost() -> anyhow::Result<()> {
    init_tracing();
    let nats = NatsServer::start()?;
    let coord = Running::coordinator(coordinator_config(&nats.url())).await?;
    let http = coord.http();
    let client = Client::connect(&nats).await?;
    let before = client.submit(&sh("true")).await?.job_id;
    let cases: Vec<(Vec<u8>, ErrorKind, &str)> = vec![
        (
            b"not json".to_vec(),
            ErrorKind::Invalid,
            "malformed job spec",
        ),
        (
            br#"{"command": ["echo", "hi""#.to_vec(),
            ErrorKind::Invalid,
            "EOF",
        ),
        (
            br#"{"command": ["x"], "max_attempt": 2}"#.to_vec(),
            ErrorKind::Invalid,
            "max_attempt",
        ),
        (
            br#"{"command": []}"#.to_vec(),
            ErrorKind::Invalid,
            "`command`",
        ),
        (
            br#"{"command": ["x"], "requires": {"os": "a.b"}}"#.to_vec(),
            ErrorKind::Invalid,
            "requires.os",
        ),
        (
            format!(r#"{{"command": ["x", "{}"]}}"#, "y".repeat(300 * 1024)).into_bytes(),
            ErrorKind::TooLarge,
            "limit",
        ),
    ];
    for (body, kind, needle) in &cases {
        let err = client
            .rpc
            .call_raw::<gf_schemas::rpc::SubmitReply>(rpc::SUBMIT, body.clone().into())
            .await
            .expect_err("refused");
        assert_eq!(err.kind(), Some(*kind), "{err}");
        assert!(
            err.to_string().contains(needle),
            "{err} should mention {needle}"
        );
    }
    // The same over HTTP: a status and a JSON error body.
    let h = http_request("POST", &format!("{http}/api/jobs"), b"{\"command\": 5}").await?;
    assert_eq!(h.0, 400, "{}", h.1);
    let v: serde_json::Value = serde_json::from_str(&h.1)?;
    assert_eq!(v["error"]["kind"], "invalid");
    // Garbage on every other RPC subject gets an error reply, not a crash.
    let someone = WorkerId::new("someone")?;
    let mut subjects: Vec<String> = FactoryVerb::ALL
        .into_iter()
        .map(|verb| names::factory_rpc(&someone, verb))
        .collect();
    subjects.extend([rpc::CANCEL.to_string(), rpc::GET_JOB.to_string()]);
    for subject in subjects {
        let err = client
            .rpc
            .call_raw::<serde_json::Value>(&subject, "{\"trunc".into())
            .await
            .expect_err("refused");
        assert_eq!(err.kind(), Some(ErrorKind::Invalid), "{subject}: {err}");
    }
    let after = client.submit(&sh("true")).await?.job_id;
    let worker = Running::worker(worker_config(&nats.url(), 2)).await?;
    for id in [before, after] {
        assert_eq!(
            client
                .wait_terminal(id, Duration::from_secs(20))
                .await?
                .state,
            JobState::Succeeded
        );
    }
    worker.stop().await?;
    coord.stop().await?;
    Ok(())
}

/// `gf cancel` on a running job stops its process within a couple of seconds.
#[tokio::test]
async fn cancel_stops_running_process() -> anyhow::Result<()> {
    init_tracing();
    let nats = NatsServer::start()?;
    let coord = Running::coordinator(coordinator_config(&nats.url())).await?;
    let worker = Running::worker(worker_config(&nats.url(), 1)).await?;
    let client = Client::connect(&nats).await?;
    let dir = tempfile::tempdir()?;
    let pidfile = dir.path().join("pid");
    let mut spec = sh(r#"echo $$ > "$PIDFILE"; exec sleep 60"#);
    spec.env
        .insert("PIDFILE".into(), pidfile.display().to_string());
    let id = client.submit(&spec).await?.job_id;
    client
        .wait_state(id, JobState::Running, Duration::from_secs(10))
        .await?;
    let pid: i32 = eventually(Duration::from_secs(10), "pid file", || async {
        std::fs::read_to_string(&pidfile).ok()?.trim().parse().ok()
    })
    .await?;
    assert!(alive(pid));
    let url = nats.url();
    let (code, out, err) =
        tokio::task::spawn_blocking(move || gf(&url, &["cancel", &id.to_string()])).await??;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("cancelled"), "{out}");
    eventually(
        Duration::from_secs(2),
        "the job's process to be gone",
        || async { (!alive(pid)).then_some(()) },
    )
    .await?;
    let rec = client.job(id).await?;
    assert_eq!(rec.state, JobState::Cancelled);
    assert!(
        rec.history[0].outcome.is_none(),
        "a cancelled attempt reports nothing"
    );
    worker.stop().await?;
    coord.stop().await?;
    Ok(())
}

/// Counts calls per job id, returns the job's argument as its result, and for
/// `test:hold` waits until dropped (reporting the drop).
struct TestHandler {
    calls: Arc<std::sync::Mutex<BTreeMap<gf_schemas::JobId, usize>>>,
    dropped: Arc<tokio::sync::Notify>,
}

struct DropSignal(Arc<tokio::sync::Notify>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        self.0.notify_one();
    }
}

impl gf_worker::Handler for TestHandler {
    fn call(&self, call: gf_worker::HandlerCall) -> gf_worker::HandlerFuture {
        *self
            .calls
            .lock()
            .expect("calls")
            .entry(call.job_id)
            .or_default() += 1;
        let dropped = self.dropped.clone();
        Box::pin(async move {
            if call.args.first().map(String::as_str) == Some("hold") {
                let _signal = DropSignal(dropped);
                std::future::pending::<()>().await;
            }
            Ok(gf_worker::HandlerOutput {
                result: Some(serde_json::json!({ "args": call.args })),
                usage: None,
            })
        })
    }
}

/// In-process handlers: each job runs once with its arguments and result; the
/// built-in `gf:noop` succeeds; an unknown `gf:` name fails naming what is there;
/// cancelling a job drops its handler's future.
#[tokio::test]
async fn in_process_handlers() -> anyhow::Result<()> {
    init_tracing();
    let nats = NatsServer::start()?;
    let coord = Running::coordinator(coordinator_config(&nats.url())).await?;
    let calls = Arc::new(std::sync::Mutex::new(BTreeMap::new()));
    let dropped = Arc::new(tokio::sync::Notify::new());
    let mut cfg = worker_config(&nats.url(), 8);
    cfg.handlers.insert(
        "test:handler",
        Arc::new(TestHandler {
            calls: calls.clone(),
            dropped: dropped.clone(),
        }),
    );
    let worker = Running::worker(cfg).await?;
    let client = Client::connect(&nats).await?;

    let mut ids = Vec::new();
    for i in 0..100 {
        let spec = gf_schemas::JobSpec::command(["test:handler".to_string(), i.to_string()]);
        ids.push((i, client.submit(&spec).await?.job_id));
    }
    for (i, id) in &ids {
        let rec = client.wait_terminal(*id, Duration::from_secs(30)).await?;
        assert_eq!(rec.state, JobState::Succeeded, "{rec:?}");
        assert_eq!(rec.attempts, 1);
        assert_eq!(
            rec.result,
            Some(serde_json::json!({ "args": [i.to_string()] })),
            "job {i}"
        );
    }
    {
        let calls = calls.lock().expect("calls");
        assert_eq!(calls.len(), 100);
        assert!(
            calls.values().all(|&n| n == 1),
            "a job ran twice: {calls:?}"
        );
    }

    let noop = client
        .submit(&gf_schemas::JobSpec::command(["gf:noop"]))
        .await?
        .job_id;
    let rec = client.wait_terminal(noop, Duration::from_secs(10)).await?;
    assert_eq!(rec.state, JobState::Succeeded, "{rec:?}");

    let mut unknown = gf_schemas::JobSpec::command(["gf:nope"]);
    unknown.max_attempts = 1;
    let id = client.submit(&unknown).await?.job_id;
    let rec = client.wait_terminal(id, Duration::from_secs(10)).await?;
    assert_eq!(rec.state, JobState::Dead, "{rec:?}");
    let error = match &rec.history[0].outcome {
        Some(AttemptOutcome::Failed { error, .. }) => error.clone(),
        other => panic!("expected a failure, got {other:?}"),
    };
    assert!(
        error.contains("gf:nope") && error.contains("gf:noop"),
        "{error}"
    );

    let held = gf_schemas::JobSpec::command(["test:handler", "hold"]);
    let id = client.submit(&held).await?.job_id;
    client
        .wait_state(id, JobState::Running, Duration::from_secs(10))
        .await?;
    let was_dropped = dropped.notified();
    let reply: gf_schemas::rpc::CancelReply = client
        .rpc
        .call(
            rpc::CANCEL,
            &gf_schemas::rpc::CancelRequest {
                job_id: id,
                reason: Some("test".into()),
            },
        )
        .await?;
    assert_eq!(reply.state, JobState::Cancelled);
    tokio::time::timeout(Duration::from_secs(5), was_dropped)
        .await
        .map_err(|_| anyhow::anyhow!("the held handler was not dropped after cancel"))?;
    worker.stop().await?;
    coord.stop().await?;
    Ok(())
}
