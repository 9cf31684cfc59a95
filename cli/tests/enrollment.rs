//! Factory enrollment on a secured NATS (issue #15, phase B), against a real
//! nats-server with the auth callout that the coordinators answer, real `gf`
//! commands and real workers.

mod common;

use std::time::Duration;

use common::*;
use gf_auth::store::Store;
use gf_auth::{FactoryKey, TokenSpec};
use gf_coordinator::{Coordinator, CoordinatorConfig};
use gf_schemas::{JobState, Timestamp, WorkerId};
use gf_testkit::{lagging_replica, secured_coordinator_config, NatsServer};
use gf_worker::Worker;

/// `gf factory token create ARGS` as an operator; the token it printed.
fn create_token(admin_url: &str, args: &[&str]) -> anyhow::Result<gf_auth::EnrollToken> {
    let mut all = vec!["factory", "token", "create"];
    all.extend_from_slice(args);
    let (code, out, err) = gf(admin_url, &all)?;
    anyhow::ensure!(code == 0, "token create failed: {err}");
    Ok(gf_auth::EnrollToken::parse(out.trim())?)
}

fn enrolling(
    url: &str,
    id: &str,
    dir: &std::path::Path,
    token: &gf_auth::EnrollToken,
) -> gf_worker::WorkerConfig {
    let mut w = worker_config(url, 2);
    w.id = Some(WorkerId::new(id).expect("id"));
    w.key_dir = Some(dir.to_path_buf());
    w.enroll = Some(token.clone());
    w
}

/// A secured nats-server (auth callout on) with one coordinator answering the callout,
/// and an operator connected to it as a static user (the server, the operator's URL,
/// the coordinator, the operator's client): where every test here starts.
async fn secured() -> anyhow::Result<(NatsServer, String, Running<Coordinator>, Client)> {
    secured_with(|_| {}).await
}

/// [`secured`], with the coordinator's config changed by `adjust` before it starts.
async fn secured_with(
    adjust: impl FnOnce(&mut CoordinatorConfig),
) -> anyhow::Result<(NatsServer, String, Running<Coordinator>, Client)> {
    init_tracing();
    let (nats, secrets) = NatsServer::start_secured()?;
    let admin = secrets.admin_url(&nats.url());
    let mut cfg = secured_coordinator_config(&nats.url(), &secrets);
    adjust(&mut cfg);
    let coord = Running::coordinator(cfg).await?;
    let client = Client::connect_url(&admin).await?;
    Ok((nats, admin, coord, client))
}

/// Factory `id` enrolling with `token`, its key in a fresh directory (returned with it:
/// the key stays there while the directory lives).
async fn enroll(
    url: &str,
    id: &str,
    token: &gf_auth::EnrollToken,
) -> anyhow::Result<(tempfile::TempDir, Running<Worker>)> {
    let dir = tempfile::tempdir()?;
    let worker = Running::worker(enrolling(url, id, dir.path(), token)).await?;
    Ok((dir, worker))
}

/// A factory enrolls once with a one-use token (its key generated on its side, 0600,
/// its id beside it), runs jobs, and from then on connects with its key alone; the
/// token's second use is refused and the refusal is on the token; the enrolled key's
/// connection holds only the factory grant; coordinators and operators connect as
/// static users.
#[tokio::test]
async fn factory_enrolls_once_then_connects_with_its_key() -> anyhow::Result<()> {
    // Coordinators and operators are static users: no callout needed to connect.
    let (nats, admin, coord, client) = secured().await?;
    // Without credentials nothing connects.
    // (async-nats may hand out the client before the server's refusal arrives; a
    // request is answered only on an authorised connection.)
    if let Ok(anonymous) = gf_testkit::connect(&nats.url()).await {
        let asked = tokio::time::timeout(
            Duration::from_secs(2),
            anonymous.request("$JS.API.INFO", "".into()),
        )
        .await;
        assert!(!matches!(asked, Ok(Ok(_))), "an anonymous client got in");
    }

    let token = create_token(&admin, &["--uses", "1", "--ttl", "10m"])?;
    let (dir, worker) = enroll(&nats.url(), "f1", &token).await?;
    wait_workers(&client, 1).await?;
    let job = client.submit(&sh("echo enrolled")).await?.job_id;
    let rec = client.wait_terminal(job, Duration::from_secs(30)).await?;
    assert_eq!(rec.state, JobState::Succeeded, "{rec:?}");
    assert_eq!(rec.history[0].worker.as_str(), "f1");

    // The key stays on the factory: a 0600 seed and the id beside it.
    let seed = dir.path().join(gf_auth::key::SEED_FILE);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&seed)?.permissions().mode() & 0o777,
            0o600
        );
    }
    assert_eq!(
        std::fs::read_to_string(dir.path().join(gf_auth::key::ID_FILE))?.trim(),
        "f1"
    );
    let (code, out, err) = gf(&admin, &["factory", "list"])?;
    assert_eq!(code, 0, "{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with("f1 "))
        .expect("f1 listed");
    assert!(line.contains("active") && line.contains("yes"), "{out}");

    // A second use of the one-use token (another host, another key) is refused, and
    // the worker says what to check; the token records why.
    let err = match enroll(&nats.url(), "f2", &token).await {
        Ok(_) => anyhow::bail!("a used-up token enrolled a second factory"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("refused to enroll factory `f2`"), "{err}");
    assert!(err.contains("gf factory token list"), "{err}");
    let (_, out, _) = gf(&admin, &["factory", "token", "list"])?;
    assert!(
        out.contains("used up") && out.contains("is used up"),
        "{out}"
    );
    assert!(out.contains(&token.id) && out.contains("f1"), "{out}");
    // The exact reason is an error event of its own kind, with a stable code.
    gf_testkit::eventually(
        Duration::from_secs(10),
        "the refusal as an event",
        || async {
            let (_, ev, _) = gf(&admin, &["events", "--level", "error"]).ok()?;
            ev.lines()
                .any(|l| l.contains("enrollment_refused") && l.contains("token_used_up"))
                .then_some(())
        },
    )
    .await?;

    // Restarted without the token, the key alone lets it in; it runs jobs again.
    worker.stop().await?;
    let mut again = worker_config(&nats.url(), 2);
    again.key_dir = Some(dir.path().to_path_buf());
    let worker = Running::worker(again).await?;
    assert_eq!(worker.id().as_str(), "f1");
    let job = client.submit(&sh("echo again")).await?.job_id;
    let rec = client.wait_terminal(job, Duration::from_secs(30)).await?;
    assert_eq!(rec.state, JobState::Succeeded, "{rec:?}");

    // The key's connection holds the factory grant, not more: the server refuses
    // other factories' subjects and everyone's inboxes.
    let key = FactoryKey::load_or_create(dir.path(), None, || unreachable!())?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let raw = key
        .connect_options()
        .custom_inbox_prefix(gf_schemas::names::factory_inbox_prefix(key.id()))
        .event_callback(move |e| {
            let tx = tx.clone();
            async move {
                if let async_nats::Event::ServerError(e) = e {
                    let _ = tx.send(e.to_string());
                }
            }
        })
        .connect(nats.url())
        .await?;
    let _sub = raw.subscribe("_INBOX.>").await?;
    raw.publish("gf.rpc.w.f2.claim", "{}".into()).await?;
    raw.flush().await?;
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !(seen.iter().any(|e: &String| e.contains("\"_INBOX.>\""))
        && seen.iter().any(|e| e.contains("\"gf.rpc.w.f2.claim\"")))
    {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(e)) => seen.push(e),
            _ => anyhow::bail!("expected two permission violations, saw {seen:?}"),
        }
    }
    worker.stop().await?;
    coord.stop().await?;
    Ok(())
}

/// A token is refused after its expiry, after `gf factory token revoke`, and from
/// outside its networks; `gf factory token list` says why; a factory that registers
/// with more than its token approved gets only what was approved.
#[tokio::test]
async fn tokens_refused_when_expired_revoked_or_outside_cidr() -> anyhow::Result<()> {
    let (nats, admin, coord, client) = secured().await?;
    let store = Store::open(&async_nats::jetstream::new(client.nats.clone()), 1).await?;

    // Expired: made an hour ago with a minute to live.
    let spec = TokenSpec {
        ttl: Duration::from_secs(60),
        uses: 5,
        ..Default::default()
    };
    let an_hour_ago = Timestamp::from_unix_millis(Timestamp::now_local().unix_millis() - 3_600_000);
    let (expired, _) = store.create_token(&spec, an_hour_ago).await?;
    let revoked = create_token(&admin, &["--uses", "5"])?;
    let (code, _, err) = gf(&admin, &["factory", "token", "revoke", &revoked.id])?;
    assert_eq!(code, 0, "{err}");
    let outside = create_token(&admin, &["--cidr", "10.0.0.0/8"])?;
    for (token, why) in [
        (&expired, "expired at"),
        (&revoked, "was revoked"),
        (&outside, "does not allow connections from 127.0.0.1"),
    ] {
        let r = enroll(&nats.url(), "fx", token).await;
        assert!(r.is_err(), "token {} enrolled", token.id);
        let (_, out, _) = gf(&admin, &["factory", "token", "list"])?;
        let line = out
            .lines()
            .find(|l| l.starts_with(&token.id))
            .expect("listed");
        assert!(line.contains(why), "{why}: {line}");
    }
    assert!(store.factories().await?.is_empty());

    // Approved: pool `ci`, engine=codex, tag big. The worker asks for more.
    let approved = create_token(
        &admin,
        &["--pool", "ci", "--cap", "engine=codex", "--tag", "big"],
    )?;
    let dir = tempfile::tempdir()?;
    let mut w = enrolling(&nats.url(), "f9", dir.path(), &approved);
    w.queues = vec!["default".into(), "gpu".into()];
    w.capabilities.insert("engine".into(), "claude".into());
    w.capabilities.insert("secret".into(), "x".into());
    w.tags = ["big", "gpu"].iter().map(|t| t.to_string()).collect();
    let worker = Running::worker(w).await?;
    wait_workers(&client, 1).await?;
    let rec: gf_schemas::WorkerRecord = serde_json::from_slice(
        &async_nats::jetstream::new(client.nats.clone())
            .get_key_value(gf_schemas::names::BUCKET_WORKERS)
            .await?
            .get("f9")
            .await?
            .expect("registered"),
    )?;
    assert_eq!(rec.capabilities.queues, ["ci"]);
    assert_eq!(
        rec.capabilities.values.get("engine").map(String::as_str),
        Some("codex")
    );
    assert!(!rec.capabilities.values.contains_key("secret"));
    assert!(
        rec.capabilities.values.contains_key("os"),
        "detected values stay"
    );
    assert_eq!(rec.capabilities.tags.iter().collect::<Vec<_>>(), ["big"]);
    // And it runs the pool's jobs.
    let mut spec = sh("echo in ci");
    spec.queue = "ci".into();
    let job = client.submit(&spec).await?.job_id;
    let done = client.wait_terminal(job, Duration::from_secs(30)).await?;
    assert_eq!(done.state, JobState::Succeeded, "{done:?}");
    worker.stop().await?;
    coord.stop().await?;
    Ok(())
}

/// `gf factory revoke` closes the factory's connection at once (a coordinator kicks
/// it through the system account), every reconnect is refused, and its running job
/// runs again on another factory. (Multi-threaded: the `gf` commands block their
/// thread while the in-process coordinator and workers must answer them.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_factory_is_kicked_refused_and_its_job_runs_elsewhere() -> anyhow::Result<()> {
    let (nats, admin, coord, client) = secured().await?;
    let token = create_token(&admin, &["--uses", "2"])?;
    let (d1, f1) = enroll(&nats.url(), "f1", &token).await?;
    wait_workers(&client, 1).await?;
    // Runs for good on f1; anywhere else it ends at once.
    let job = client
        .submit(&sh(
            r#"if [ "$GF_WORKER_ID" = f1 ]; then sleep 60; fi; echo ok"#,
        ))
        .await?
        .job_id;
    let running = client
        .wait_state(job, JobState::Running, Duration::from_secs(20))
        .await?;
    assert_eq!(running.history[0].worker.as_str(), "f1");
    let (_d2, f2) = enroll(&nats.url(), "f2", &token).await?;

    let (code, out, err) = gf(&admin, &["factory", "revoke", "f1"])?;
    assert_eq!(code, 0, "{err}");

    assert!(out.contains("connection was closed"), "{out}");
    let rec = client.wait_terminal(job, Duration::from_secs(60)).await?;
    assert_eq!(rec.state, JobState::Succeeded, "{rec:?}");
    assert_eq!(rec.history.last().expect("attempts").worker.as_str(), "f2");
    let (_, list, _) = gf(&admin, &["factory", "list"])?;
    let line = list.lines().find(|l| l.starts_with("f1 ")).expect("listed");
    assert!(line.contains("revoked") && line.contains(" no "), "{list}");

    // Its key is refused from now on.
    drop(f1);
    let mut again = worker_config(&nats.url(), 1);
    again.key_dir = Some(d1.path().to_path_buf());
    let err = match Running::worker(again).await {
        Ok(_) => anyhow::bail!("a revoked factory connected"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("revoked"), "{err}");
    f2.stop().await?;
    coord.stop().await?;
    Ok(())
}

/// `gf factory rotate` makes a running factory switch to a fresh key without
/// stopping: it keeps running jobs, the new key is the one on disk, and (with no
/// grace period) the old key is refused at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_keeps_running_and_retires_the_old_key() -> anyhow::Result<()> {
    let (nats, admin, coord, client) = secured_with(|cfg| {
        cfg.security.as_mut().expect("secured").key_grace = Duration::ZERO;
    })
    .await?;
    let token = create_token(&admin, &[])?;
    let (dir, worker) = enroll(&nats.url(), "f1", &token).await?;
    wait_workers(&client, 1).await?;
    let old_dir = tempfile::tempdir()?;
    for f in [gf_auth::key::SEED_FILE, gf_auth::key::ID_FILE] {
        std::fs::copy(dir.path().join(f), old_dir.path().join(f))?;
    }
    let old = FactoryKey::load_or_create(old_dir.path(), None, || unreachable!())?;

    let (code, out, err) = gf(&admin, &["factory", "rotate", "f1"])?;
    assert_eq!(code, 0, "{err}");
    let new = FactoryKey::load_or_create(dir.path(), None, || unreachable!())?;
    assert_ne!(new.public_key(), old.public_key());
    assert!(out.contains(&new.public_key()), "{out}");
    assert!(!dir.path().join(gf_auth::key::NEXT_SEED_FILE).exists());

    let job = client.submit(&sh("echo after rotation")).await?.job_id;
    let rec = client.wait_terminal(job, Duration::from_secs(30)).await?;
    assert_eq!(rec.state, JobState::Succeeded, "{rec:?}");

    let mut stale = worker_config(&nats.url(), 1);
    stale.key_dir = Some(old_dir.path().to_path_buf());
    assert!(
        Running::worker(stale).await.is_err(),
        "the old key still connects"
    );
    worker.stop().await?;
    coord.stop().await?;
    Ok(())
}

/// A factory may publish only under its own `gf.logs.<factory>.>`, but the job after it
/// is its to choose: an enrolled factory that never held a job writes into that job's
/// log subject (at the epoch the real holder ran, and at one nobody ran), and neither
/// `gf logs` nor the HTTP log stream (what the dashboard shows) shows its lines; `gf
/// logs` names it on stderr. The holder's own line is shown, its escape sequence
/// rendered visibly, not sent to the terminal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_factorys_lines_in_a_jobs_log_are_not_shown() -> anyhow::Result<()> {
    let (nats, admin, coord, client) = secured().await?;
    let token = create_token(&admin, &["--uses", "2"])?;
    // f2 enrolls, then leaves: it runs nothing, but its key is good.
    let (d2, f2) = enroll(&nats.url(), "f2", &token).await?;
    wait_workers(&client, 1).await?;
    f2.stop().await?;
    let (_d1, f1) = enroll(&nats.url(), "f1", &token).await?;
    let job = client
        .submit(&sh(r#"printf 'from f1 \033[31mred\n'"#))
        .await?
        .job_id;
    let rec = client.wait_terminal(job, Duration::from_secs(30)).await?;
    assert_eq!(rec.state, JobState::Succeeded, "{rec:?}");
    assert_eq!(rec.history.len(), 1);
    assert_eq!(rec.history[0].worker.as_str(), "f1");

    // f2, on its own key's connection: the server lets it publish on its log subject.
    let key = FactoryKey::load_or_create(d2.path(), None, || unreachable!())?;
    let raw = key
        .connect_options()
        .custom_inbox_prefix(gf_schemas::names::factory_inbox_prefix(key.id()))
        .connect(nats.url())
        .await?;
    let js = async_nats::jetstream::new(raw);
    for (epoch, text) in [
        (rec.history[0].epoch, "FORGED same epoch"),
        (99, "FORGED other epoch"),
    ] {
        let line = gf_schemas::LogLine {
            job_id: job,
            epoch,
            seq: 1,
            stream: gf_schemas::LogStream::Stdout,
            line: text.into(),
            time: Timestamp::now_local(),
        };
        js.publish(
            gf_schemas::names::logs(key.id(), &job),
            serde_json::to_vec(&line)?.into(),
        )
        .await?
        .await
        .map_err(|e| anyhow::anyhow!("the server refused f2's log line: {e}"))?;
    }

    let (code, out, err) = gf(&admin, &["logs", &job.to_string()])?;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "from f1 \\x1b[31mred\n", "stderr: {err}");
    assert!(
        err.contains("2 line(s)") && err.contains("factory f2"),
        "{err}"
    );
    let (raw_code, raw_out, _) = gf(&admin, &["logs", "--raw", &job.to_string()])?;
    assert_eq!(raw_code, 0);
    assert_eq!(raw_out, "from f1 \x1b[31mred\n");

    let url = format!("{}/api/jobs/{job}/logs/stream", coord.http());
    let (status, body) = http_request("GET", &url, b"").await?;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("from f1"), "{body}");
    assert!(!body.contains("FORGED"), "{body}");
    assert!(body.contains("event: end"), "{body}");
    f1.stop().await?;
    coord.stop().await?;
    Ok(())
}

/// The enrollment store decides on the stream leader's copy, never on a replica's
/// that may be behind: with every direct get of the tokens and factories buckets
/// answered by a replica holding each key's first revision, a second factory still
/// enrolls with a token the first one used (its use is taken by a compare-and-set on
/// the current revision), and each connection is recorded on the factory (before the
/// fix: the token's use lost every compare-and-set and the enrollment was refused, and
/// the coordinator warned "cannot record the factory's connection").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_decides_on_the_leaders_copy_not_a_lagging_replica() -> anyhow::Result<()> {
    let (nats, admin, coord, client) = secured().await?;
    let js = async_nats::jetstream::new(client.nats.clone());
    // The coordinator has opened both buckets (direct gets on) once it answers RPCs.
    let token = create_token(&admin, &["--uses", "2"])?;
    gf_testkit::eventually(Duration::from_secs(20), "the RPC plane", || async {
        client
            .nats
            .request(gf_schemas::names::rpc::BUDGET_LIST, "{}".into())
            .await
            .ok()
            .map(|_| ())
    })
    .await?;
    for bucket in [
        gf_schemas::names::auth::BUCKET_ENROLL,
        gf_schemas::names::auth::BUCKET_FACTORIES,
    ] {
        lagging_replica(client.nats.clone(), js.clone(), bucket).await?;
    }

    let limit = Duration::from_secs(30);
    let (d1, f1) = tokio::time::timeout(limit, enroll(&nats.url(), "f1", &token))
        .await
        .map_err(|_| anyhow::anyhow!("f1 did not enroll within {limit:?}"))??;
    let (_d2, f2) = tokio::time::timeout(limit, enroll(&nats.url(), "f2", &token))
        .await
        .map_err(|_| anyhow::anyhow!("f2 did not enroll within {limit:?}"))??;
    wait_workers(&client, 2).await?;
    let store = Store::open(&js, 1).await?;
    let connected = |id: &'static str| {
        let store = &store;
        async move {
            store
                .factory(&WorkerId::new(id).ok()?)
                .await
                .ok()
                .flatten()
                .and_then(|f| f.connection)
        }
    };
    let first = connected("f1").await.expect("f1's connection recorded");
    assert!(connected("f2").await.is_some(), "f2's connection recorded");
    let t = store
        .tokens()
        .await?
        .into_iter()
        .find(|t| t.id == token.id)
        .expect("token");
    assert_eq!((t.used, t.uses_left), (2, 0), "{t:?}");

    // A known key's reconnect is recorded too (its record is past its first revision).
    f1.stop().await?;
    let mut again = worker_config(&nats.url(), 1);
    again.key_dir = Some(d1.path().to_path_buf());
    let f1 = Running::worker(again).await?;
    let now = connected("f1").await.expect("f1 connected");
    assert!(
        (now.cid, now.at) != (first.cid, first.at),
        "the reconnect was recorded: {first:?} then {now:?}"
    );
    f1.stop().await?;
    f2.stop().await?;
    coord.stop().await?;
    Ok(())
}
