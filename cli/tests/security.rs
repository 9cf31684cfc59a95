//! Least privilege on the broker (issue #15, phase A) against a real nats-server: a
//! factory's identity comes from its subject, and the grant
//! `gf_schemas::permissions::factory` is enough to run jobs end to end and no more.

mod common;

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use common::*;
use futures::StreamExt;
use gf_schemas::names::{self, js, rpc, FactoryVerb, Routing};
use gf_schemas::rpc::{ClaimReply, ClaimRequest, HeartbeatRequest, RegisterRequest};
use gf_schemas::{
    permissions, Capabilities, ConsumerName, ErrorKind, EventKind, JobState, Level, Reply,
    WorkerId, WorkerState,
};
use gf_testkit::{eventually, NatsServer};

const COORD_PASSWORD: &str = "coord-secret";
const FACTORY_PASSWORD: &str = "f1-secret";

/// Password users: `coord` (the coordinator and operators, who connect without
/// credentials as `no_auth_user`) may do anything; the factory has exactly its grant
/// for `consumer`, rendered by the function the auth callout will use.
fn server_config(factory: &WorkerId, consumer: &ConsumerName) -> String {
    let grant = permissions::factory(factory, std::slice::from_ref(consumer));
    format!(
        "no_auth_user: \"coord\"\nauthorization {{\n  users: [\n    {{user: \"coord\", password: \"{COORD_PASSWORD}\"}}\n    {{user: \"{factory}\", password: \"{FACTORY_PASSWORD}\", permissions: {}}}\n  ]\n}}\n",
        serde_json::to_string(&grant.server_config()).expect("json")
    )
}

/// A client whose server errors (permission violations arrive asynchronously as
/// `-ERR`) are collected for [`Violations::expect`].
struct Violations {
    rx: tokio::sync::mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

async fn connect_watched(
    url: &str,
    user: &str,
    password: &str,
) -> anyhow::Result<(async_nats::Client, Violations)> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::with_user_and_password(user.into(), password.into())
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    let _ = tx.send(e.to_string());
                }
            }
        })
        .connect(url)
        .await?;
    Ok((client, Violations { rx, seen: vec![] }))
}

impl Violations {
    /// Waits (at most 10 s) until the server has refused `what` (`Publish` or
    /// `Subscription`) on exactly `subject`.
    async fn expect(&mut self, what: &str, subject: &str) -> anyhow::Result<()> {
        let needle = format!("{what} to \"{subject}\"").to_lowercase();
        let found = |seen: &[String]| seen.iter().any(|e| e.to_lowercase().contains(&needle));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !found(&self.seen) {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(e)) => self.seen.push(e),
                _ => anyhow::bail!("no violation for {what} to {subject}; saw {:?}", self.seen),
            }
        }
        Ok(())
    }

    fn named(&mut self, subject: &str) -> bool {
        while let Ok(e) = self.rx.try_recv() {
            self.seen.push(e);
        }
        let quoted = format!("\"{subject}\"");
        self.seen.iter().any(|e| e.contains(&quoted))
    }
}

/// Sends each grant check on `probe`: allowed subscriptions and publishes first, as
/// controls (the server answers in order, so once every refusal of the denied ones has
/// arrived, a refusal of an allowed one would have too), then the denied ones; then
/// waits for each denied one's refusal and checks no allowed one was refused.
async fn check_grants(
    probe: &async_nats::Client,
    refused: &mut Violations,
    allowed_publish: &[String],
    allowed_subscribe: &[String],
    denied_publish: &[String],
    denied_subscribe: &[String],
) -> anyhow::Result<()> {
    let mut subs = Vec::new();
    for s in allowed_subscribe {
        subs.push(probe.subscribe(s.clone()).await?);
    }
    for s in allowed_publish {
        probe.publish(s.clone(), "".into()).await?;
    }
    for s in denied_publish {
        probe.publish(s.clone(), "{}".into()).await?;
    }
    for s in denied_subscribe {
        subs.push(probe.subscribe(s.clone()).await?);
    }
    probe.flush().await?;
    for s in denied_publish {
        refused.expect("Publish", s).await?;
    }
    for s in denied_subscribe {
        refused.expect("Subscription", s).await?;
    }
    for s in allowed_publish.iter().chain(allowed_subscribe) {
        assert!(!refused.named(s), "{s} refused: {:?}", refused.seen);
    }
    Ok(())
}

/// A real worker connected as a user holding only `permissions::factory` for its id and
/// its consumer runs jobs end to end (claims, renewals past a 1 s lease, log lines,
/// completions, notice acks in the server's default format, a drain request answered),
/// with no permission violation; and that user is refused everything else a factory
/// must not do: other factories' RPC and log subjects, operator RPCs, the stream and
/// consumer API, KV, and subscriptions to other inboxes, the RPC plane, dispatch and
/// other factories' control subjects.
#[tokio::test]
async fn factory_grant_runs_jobs_and_nothing_else() -> anyhow::Result<()> {
    init_tracing();
    let f1 = WorkerId::new("f1")?;
    let mut wcfg = worker_config("", 2);
    wcfg.id = Some(f1.clone());
    let routing = Routing::new(coordinator_config("").routing_dims).map_err(anyhow::Error::msg)?;
    let consumer = gf_coordinator::consumers::name_for(&routing, &gf_worker::capabilities(&wcfg));
    let nats = NatsServer::start_with_config(&server_config(&f1, &consumer))?;
    let coord_url = nats.url();
    let coord = Running::coordinator(coordinator_config(&coord_url)).await?;
    wcfg.nats_url = nats.url_as(f1.as_str(), FACTORY_PASSWORD);
    let worker = Running::worker(wcfg).await?;
    let client = Client::connect_url(&coord_url).await?;
    wait_workers(&client, 1).await?;

    let mut ids = Vec::new();
    for i in 0..4 {
        let mut spec = sh(&format!("echo out-{i}; echo err-{i} >&2; sleep 2.5"));
        // Outlived only by renewing (every third of the TTL).
        spec.lease_ttl_secs = Some(1);
        ids.push(client.submit(&spec).await?.job_id);
    }
    for id in &ids {
        let rec = client.wait_terminal(*id, Duration::from_secs(60)).await?;
        assert_eq!(rec.state, JobState::Succeeded, "{rec:?}");
        assert_eq!(rec.attempts, 1, "renewed, never expired: {rec:?}");
        assert_eq!(rec.history[0].worker, f1);
    }

    // The lines are on the factory's own subjects, and every reader's filter finds them.
    let logs = jetstream::new(client.nats.clone())
        .get_stream(names::STREAM_LOGS)
        .await?;
    for (i, id) in ids.iter().enumerate() {
        let mut lines = logs
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: names::job_logs(id),
                ..Default::default()
            })
            .await?
            .messages()
            .await?;
        let mut got = Vec::new();
        while got.len() < 2 {
            let m = tokio::time::timeout(Duration::from_secs(10), lines.next())
                .await?
                .expect("open")?;
            assert_eq!(names::parse_logs(&m.subject), Some((f1.clone(), *id)));
            let line: gf_schemas::LogLine = serde_json::from_slice(&m.payload)?;
            got.push(line.line);
        }
        got.sort();
        assert_eq!(got, [format!("err-{i}"), format!("out-{i}")]);
    }

    // The jobs came as leases granted at dispatch (on the factory's control subject):
    // nothing was left on the dispatch consumer the coordinator made, which the worker
    // binds and pulls from (for an earlier coordinator's notices).
    let js_coord = jetstream::new(client.nats.clone());
    eventually(
        Duration::from_secs(10),
        "nothing pending on the consumer",
        || async {
            let mut c: consumer::PullConsumer = js_coord
                .get_consumer_from_stream(consumer.as_str(), names::STREAM_DISPATCH)
                .await
                .ok()?;
            let info = c.info().await.ok()?;
            (info.num_pending == 0 && info.num_ack_pending == 0 && info.num_waiting > 0)
                .then_some(())
        },
    )
    .await?;

    // A control request is answered (the reply-subject allowance).
    let http = coord.http();
    for (action, state) in [("drain", "draining"), ("undrain", "active")] {
        let (code, body) =
            http_request("POST", &format!("{http}/api/workers/{f1}/{action}"), b"").await?;
        assert_eq!(code, 200, "{action}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body)?;
        assert_eq!(v["state"], state, "{body}");
    }

    let log = nats.log();
    let violations: Vec<&str> = log.lines().filter(|l| l.contains("Violation")).collect();
    assert!(
        violations.is_empty(),
        "the worker met permission violations: {violations:#?}"
    );
    worker.stop().await?;

    // Now as that user, everything it must not do.
    let (probe, mut refused) = connect_watched(&nats.url(), f1.as_str(), FACTORY_PASSWORD).await?;
    let f2 = WorkerId::new("f2")?;
    let denied_publish = [
        names::factory_rpc(&f2, FactoryVerb::Claim),
        names::factory_rpc(&f2, FactoryVerb::Register),
        names::logs(&f2, &ids[0]),
        rpc::SUBMIT.to_string(),
        rpc::CANCEL.to_string(),
        rpc::BUDGET_SET.to_string(),
        rpc::SCHEDULE_ADD.to_string(),
        js::stream_info(names::STREAM_DISPATCH),
        js::stream_info(&format!("KV_{}", names::BUCKET_JOBS)),
        js::consumer_create(names::STREAM_DISPATCH, consumer.as_str()),
        js::consumer_info(names::STREAM_DISPATCH, "gfw_someone_else"),
        js::consumer_next(names::STREAM_DISPATCH, "gfw_someone_else"),
        js::direct_get(&format!("KV_{}", names::BUCKET_JOBS)),
        js::kv(names::BUCKET_JOBS, &ids[0].to_string()),
        js::kv(names::BUCKET_WORKERS, f1.as_str()),
        "gf.dispatch.default._._".to_string(),
    ];
    let denied_subscribe = [
        "_INBOX.>".to_string(),
        format!("{}.>", names::factory_inbox_prefix(&f2)),
        rpc::ALL.to_string(),
        names::DISPATCH_ALL.to_string(),
        names::worker_control(&f2),
        js::kv_all(names::BUCKET_JOBS),
    ];
    // Granted, as controls, sent first: the server answers in order, so once every
    // refusal above has arrived, a refusal of one of these would have too. The acks
    // name no real delivery (the server ignores them); they show the explicit ack
    // grants in both formats, which a nak followed by an ack needs (the reply-subject
    // allowance covers one publish per message).
    let c = consumer.as_str();
    let allowed_publish = [
        names::factory_rpc(&f1, FactoryVerb::Heartbeat),
        js::consumer_info(names::STREAM_DISPATCH, c),
        format!(
            "$JS.ACK.{}.{c}.1.999.999.1700000000000000000.0",
            names::STREAM_DISPATCH
        ),
        format!(
            "$JS.ACK._.h4sh.{}.{c}.1.999.999.1700000000000000000.0.tok",
            names::STREAM_DISPATCH
        ),
    ];
    let allowed_subscribe = [
        names::worker_control(&f1),
        format!("{}.probe", names::factory_inbox_prefix(&f1)),
    ];
    check_grants(
        &probe,
        &mut refused,
        &allowed_publish,
        &allowed_subscribe,
        &denied_publish,
        &denied_subscribe,
    )
    .await?;
    coord.stop().await?;
    Ok(())
}

/// A factory request whose payload names another worker is refused with `forbidden`
/// (alone and as a batch item), changes nothing, is audited as an `rpc_forbidden` error
/// event naming the sending factory, and is counted by `gf_rpc_forbidden_total`.
#[tokio::test]
async fn payload_naming_another_worker_is_forbidden() -> anyhow::Result<()> {
    init_tracing();
    let nats = NatsServer::start()?;
    let mut cfg = coordinator_config(&nats.url());
    cfg.worker_timeout = Duration::from_secs(60);
    let coord = Running::coordinator(cfg).await?;
    let client = Client::connect(&nats).await?;
    let mut events = client
        .nats
        .subscribe(names::event(EventKind::RpcForbidden))
        .await?;
    client.nats.flush().await?;
    let (a, b) = (WorkerId::new("mallory")?, WorkerId::new("victim")?);
    for w in [&a, &b] {
        let _: gf_schemas::rpc::RegisterReply = client
            .rpc
            .call_factory(&RegisterRequest {
                worker_id: w.clone(),
                // Mallory serves another queue, so the job is leased at dispatch to
                // the victim whatever the planner's tie-break (it places by the
                // records, not by the free slots a heartbeat reports).
                capabilities: Capabilities {
                    queues: vec![if w == &b { "default" } else { "other" }.into()],
                    ..Default::default()
                },
                slots: 1,
                version: "test".into(),
                hostname: "test".into(),
            })
            .await?;
        let _: gf_schemas::rpc::HeartbeatReply = client
            .rpc
            .call_factory(&HeartbeatRequest {
                worker_id: w.clone(),
                state: WorkerState::Active,
                free_slots: 1,
                running: vec![],
            })
            .await?;
    }
    let id = client.submit(&sh("true")).await?.job_id;
    let rec = client
        .wait_state(id, JobState::Dispatched, Duration::from_secs(10))
        .await?;
    assert_eq!(
        rec.lease.as_ref().map(|l| &l.worker),
        Some(&b),
        "leased to the victim"
    );
    let as_victim = ClaimRequest {
        job_id: id,
        epoch: rec.epoch,
        worker_id: b.clone(),
    };
    let err = client
        .rpc
        .call::<_, ClaimReply>(&names::factory_rpc(&a, FactoryVerb::Claim), &as_victim)
        .await
        .expect_err("forbidden");
    assert_eq!(err.kind(), Some(ErrorKind::Forbidden), "{err}");
    let batch = serde_json::to_vec(&[&as_victim])?;
    let items: Vec<Reply<ClaimReply>> = client
        .rpc
        .call_raw(
            &names::factory_rpc(&a, FactoryVerb::ClaimBatch),
            batch.into(),
        )
        .await?;
    let kind = items[0].clone().into_result().err().map(|e| e.kind);
    assert_eq!(kind, Some(ErrorKind::Forbidden));
    let drain_victim = HeartbeatRequest {
        worker_id: b.clone(),
        state: WorkerState::Draining,
        free_slots: 0,
        running: vec![],
    };
    let err = client
        .rpc
        .call::<_, gf_schemas::rpc::HeartbeatReply>(
            &names::factory_rpc(&a, FactoryVerb::Heartbeat),
            &drain_victim,
        )
        .await
        .expect_err("forbidden");
    assert_eq!(err.kind(), Some(ErrorKind::Forbidden), "{err}");

    // Nothing was applied: the job waits for a claim, the victim is still active, and
    // the victim itself claims it.
    assert_eq!(client.job(id).await?.state, JobState::Dispatched);
    let js = jetstream::new(client.nats.clone());
    let workers = js.get_key_value(names::BUCKET_WORKERS).await?;
    let victim: gf_schemas::WorkerRecord =
        serde_json::from_slice(&workers.get(b.as_str()).await?.expect("registered"))?;
    assert_eq!(victim.state, WorkerState::Active);
    let claimed: ClaimReply = client.rpc.call_factory(&as_victim).await?;
    assert_eq!(claimed.lease.worker, b);

    let mut audited = Vec::new();
    while audited.len() < 3 {
        let msg = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await?
            .expect("subscribed");
        audited.extend(gf_schemas::decode_events(&msg.payload)?);
    }
    for e in &audited {
        assert_eq!(e.kind, EventKind::RpcForbidden);
        assert_eq!(e.level, Level::Error);
        assert_eq!(
            e.worker_id.as_ref(),
            Some(&a),
            "the sender, from the subject"
        );
        assert!(e.message.contains("victim"), "{}", e.message);
    }
    let (_, scrape) = http_request("GET", &format!("{}/metrics", coord.http()), b"").await?;
    for (operation, n) in [("claim", 2.0), ("heartbeat", 1.0)] {
        let series = format!(
            "gf_rpc_forbidden_total{{operation=\"{operation}\",reason=\"identity_mismatch\"}}"
        );
        assert_eq!(sample(&scrape, &series), n, "{series}");
    }
    coord.stop().await?;
    Ok(())
}

/// The coordinator owns the dispatch consumers: a worker only binds the one its
/// registration names, and when that consumer is removed (an operator, or the server
/// after `inactive_threshold`) the worker registers again, the coordinator creates it
/// again, and jobs keep running.
#[tokio::test]
async fn a_worker_whose_consumer_is_removed_registers_again() -> anyhow::Result<()> {
    init_tracing();
    let nats = NatsServer::start()?;
    let coord = Running::coordinator(coordinator_config(&nats.url())).await?;
    let wcfg = worker_config(&nats.url(), 1);
    let routing = Routing::new(coordinator_config("").routing_dims).map_err(anyhow::Error::msg)?;
    let consumer = gf_coordinator::consumers::name_for(&routing, &gf_worker::capabilities(&wcfg));
    let worker = Running::worker(wcfg).await?;
    let client = Client::connect(&nats).await?;
    wait_workers(&client, 1).await?;
    let first = client.submit(&sh("true")).await?.job_id;
    client.wait_terminal(first, Duration::from_secs(20)).await?;

    let stream = jetstream::new(client.nats.clone())
        .get_stream(names::STREAM_DISPATCH)
        .await?;
    assert!(stream.delete_consumer(consumer.as_str()).await?.success);
    eventually(
        Duration::from_secs(20),
        "the consumer to be made again",
        || async { stream.consumer_info(consumer.as_str()).await.ok() },
    )
    .await?;
    let after = client.submit(&sh("true")).await?.job_id;
    let rec = client.wait_terminal(after, Duration::from_secs(30)).await?;
    assert_eq!(rec.state, JobState::Succeeded);
    assert_eq!(rec.history.last().map(|a| &a.worker), Some(&worker.id()));
    worker.stop().await?;
    coord.stop().await?;
    Ok(())
}

/// A submit-only client (`gf admin user create --role submit`, a static user with
/// `permissions::submitter`) submits, follows and reads its jobs and their logs with
/// the real `gf` commands and the Python client, and the server refuses it everything
/// else: acting on jobs, operator RPCs, factories' subjects, the stream and KV API,
/// and other connections' replies.
// Multi-threaded: the `gf` commands block this thread while the coordinator answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_only_client_submits_reads_and_nothing_else() -> anyhow::Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let (code, _, err) = gf(
        "nats://unused:1",
        &["admin", "init", dir.path().to_str().unwrap()],
    )?;
    assert_eq!(code, 0, "{err}");
    let (code, url_out, err) = gf(
        "nats://unused:1",
        &[
            "admin",
            "user",
            "create",
            dir.path().to_str().unwrap(),
            "ci",
            "--role",
            "submit",
        ],
    )?;
    assert_eq!(code, 0, "{err}");
    assert!(url_out.trim().starts_with("nats://ci:"), "{url_out}");
    let (_, listed, _) = gf(
        "nats://unused:1",
        &["admin", "user", "list", dir.path().to_str().unwrap()],
    )?;
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("ci ") && l.contains("submit")),
        "{listed}"
    );
    let secrets = gf_auth::Secrets::read(dir.path())?;
    let nats =
        NatsServer::start_with_config(&std::fs::read_to_string(dir.path().join("nats.conf"))?)?;
    let ci_url = secrets.user_url("ci", &nats.url()).expect("ci");
    let admin = secrets.admin_url(&nats.url());
    let coord = Running::coordinator(gf_testkit::secured_coordinator_config(
        &nats.url(),
        &secrets,
    ))
    .await?;
    let store =
        gf_auth::Store::open(&jetstream::new(gf_testkit::connect(&admin).await?), 1).await?;
    let (token, _) = store
        .create_token(
            &gf_auth::TokenSpec {
                ttl: Duration::from_secs(600),
                uses: 1,
                ..Default::default()
            },
            gf_schemas::Timestamp::now_local(),
        )
        .await?;
    let keys = tempfile::tempdir()?;
    let mut w = worker_config(&nats.url(), 2);
    w.id = Some(WorkerId::new("f1")?);
    w.key_dir = Some(keys.path().to_path_buf());
    w.enroll = Some(token);
    let worker = Running::worker(w).await?;

    // Submit, follow, list and read the log as `ci`, with the real commands.
    let (code, out, err) = gf(
        &ci_url,
        &["submit", "--wait", "--", "sh", "-c", "echo from ci"],
    )?;
    assert_eq!(code, 0, "{err}");
    let id = out.lines().next().unwrap_or_default().trim().to_string();
    let (code, log, err) = gf(&ci_url, &["logs", &id])?;
    assert_eq!(code, 0, "{err}");
    assert_eq!(log.trim(), "from ci");
    let (code, jobs, err) = gf(&ci_url, &["jobs"])?;
    assert_eq!(code, 0, "{err}");
    assert!(
        jobs.contains(&id[id.len() - 8..]) || jobs.contains(&id),
        "{jobs}"
    );
    // The Python client with the same credential.
    let url = ci_url.clone();
    let py = tokio::task::spawn_blocking(move || {
        python_client(&url, &["--timeout", "30", "--", "echo", "from python"])
    })
    .await??;
    assert!(
        py.status.success(),
        "python client as ci: {}{}",
        String::from_utf8_lossy(&py.stdout),
        String::from_utf8_lossy(&py.stderr)
    );

    // Everything else is refused by the server.
    let job: gf_schemas::JobId = id.parse()?;
    let (probe, mut refused) =
        connect_watched(&nats.url(), "ci", &secrets.users[0].password).await?;
    let f1 = WorkerId::new("f1")?;
    let denied_publish = [
        rpc::CANCEL.to_string(),
        rpc::REQUEUE.to_string(),
        rpc::REJECT.to_string(),
        rpc::BUDGET_SET.to_string(),
        rpc::SCHEDULE_ADD.to_string(),
        names::factory_rpc(&f1, FactoryVerb::Complete),
        names::logs(&f1, &job),
        js::stream_info(names::STREAM_LOGS),
        js::consumer_create(names::STREAM_LOGS, "mine"),
        js::consumer_create(names::STREAM_DISPATCH, "mine"),
        js::direct_get(&format!("KV_{}", names::BUCKET_JOBS)),
        js::kv(names::BUCKET_JOBS, &id),
        "gf.dispatch.default._._".to_string(),
    ];
    let denied_subscribe = [
        "_INBOX.>".to_string(),
        format!("{}.>", names::factory_inbox_prefix(&f1)),
        format!("{}.>", names::client_inbox_prefix("other")),
        rpc::ALL.to_string(),
        names::LOGS_ALL.to_string(),
        names::EVENTS_ALL.to_string(),
        js::kv_all(names::BUCKET_JOBS),
    ];
    let allowed_publish = [js::direct_get(names::STREAM_LOGS)];
    let allowed_subscribe = [format!("{}.probe", names::client_inbox_prefix("ci"))];
    check_grants(
        &probe,
        &mut refused,
        &allowed_publish,
        &allowed_subscribe,
        &denied_publish,
        &denied_subscribe,
    )
    .await?;
    worker.stop().await?;
    coord.stop().await?;
    Ok(())
}
