//! Profiles, manifests and the tracker bridge end to end: a real `gf coordinator` and
//! `gf worker` (OS processes) on a real nats-server, a fake tracker (a local HTTP
//! server this test runs) receiving the echoes, and webhooks signed as GitHub and
//! Standard Webhooks senders sign them.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use gf_bridge::verify;
use gf_schemas::bridge::Echo;
use gf_schemas::{JobRecord, JobState};
use gf_testkit::{eventually, NatsServer};
use serde_json::{json, Value};

const GH_SECRET: &str = "gh-test-secret";
const STD_SECRET: &str = "whsec_c3RhbmRhcmQtdGVzdC1zZWNyZXQ=";
const ECHO_SECRET: &str = "whsec_ZWNoby10ZXN0LXNlY3JldC1rZXk=";

/// One request the fake tracker received.
#[derive(Clone, Debug)]
struct Received {
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

/// A tracker that records every POST, and answers 503 while "down".
#[derive(Clone, Default)]
struct Tracker {
    got: Arc<Mutex<Vec<Received>>>,
    down: Arc<AtomicBool>,
    refused: Arc<Mutex<u32>>,
}

impl Tracker {
    async fn start() -> anyhow::Result<(Self, String, tokio_util::sync::CancellationToken)> {
        use axum::http::{HeaderMap, StatusCode};
        let t = Tracker::default();
        let state = t.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let t = state.clone();
                async move {
                    if t.down.load(Ordering::SeqCst) {
                        *t.refused.lock().unwrap() += 1;
                        return StatusCode::SERVICE_UNAVAILABLE;
                    }
                    let headers = headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                        .collect();
                    t.got.lock().unwrap().push(Received {
                        headers,
                        body: body.to_vec(),
                    });
                    StatusCode::NO_CONTENT
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        let stop = tokio_util::sync::CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(s.cancelled_owned())
                .await
                .ok();
        });
        Ok((t, url, stop))
    }

    /// Every echo received for `item`, in arrival order, each checked as signed.
    fn echoes(&self, item: &str) -> Vec<(String, Echo)> {
        let key = verify::standard_key(ECHO_SECRET);
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter_map(|r| {
                let now = r.headers["webhook-timestamp"].parse().unwrap();
                verify::verify_standard(
                    &key,
                    r.headers.get("webhook-id").map(String::as_str),
                    r.headers.get("webhook-timestamp").map(String::as_str),
                    r.headers.get("webhook-signature").map(String::as_str),
                    &r.body,
                    now,
                    60,
                )
                .expect("every echo is signed");
                let v: Value = serde_json::from_slice(&r.body).unwrap();
                assert_eq!(v["type"], "job.state_changed");
                let e: Echo = serde_json::from_value(v["data"].clone()).unwrap();
                assert_eq!(r.headers["webhook-id"], e.id, "webhook-id is the echo's id");
                (e.item == item).then(|| (r.headers["webhook-id"].clone(), e))
            })
            .collect()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn config(dir: &Path, tracker: &str) -> std::path::PathBuf {
    let text = format!(
        r#"
[profiles.agent]
description = "an agent on a ticket"
command = ["sh", "-c", "sleep 1; echo working on $0"]
queue = "default"
max_attempts = 2
labels = {{ team = "core" }}

[bridge.sources.github]
secret_env = "GF_TEST_GH_SECRET"
[[bridge.sources.github.rules]]
events = ["issues.labeled"]
label = "agent"
profile = "agent"
command = ["{{issue.number}}"]
[bridge.sources.github.echo]
url = "{tracker}"
secret_env = "GF_TEST_ECHO_SECRET"
backoff = "200ms"
backoff_max = "1s"
max_attempts = 1000

[bridge.sources.tickets]
format = "standard"
secret_env = "GF_TEST_STD_SECRET"
tolerance = "1m"
[[bridge.sources.tickets.rules]]
events = ["ticket.ready"]
profile = "agent"
command = ["{{data.id}}"]
"#
    );
    let p = dir.join("gigafactory.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// A `gf coordinator` process with the test's config; killed on drop.
struct CoordinatorProcess(Child);

impl CoordinatorProcess {
    fn spawn(nats: &str, config: &Path, port: u16) -> anyhow::Result<Self> {
        let child = Command::new(env!("CARGO_BIN_EXE_gf"))
            .args(["coordinator", "--no-auth", "--http-addr"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--config")
            .arg(config)
            .args([
                "--lease-ttl",
                "3s",
                "--claim-timeout",
                "3s",
                "--reaper-period",
                "200ms",
            ])
            .env("GF_NATS_URL", nats)
            .env("GF_TEST_GH_SECRET", GH_SECRET)
            .env("GF_TEST_STD_SECRET", STD_SECRET)
            .env("GF_TEST_ECHO_SECRET", ECHO_SECRET)
            .env(
                "GF_LOG",
                std::env::var("GF_TEST_COORD_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .spawn()?;
        Ok(Self(child))
    }

    /// SIGTERM, then wait: the graceful shutdown hands back an echo in flight.
    fn stop(mut self) -> anyhow::Result<()> {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        self.0.wait()?;
        Ok(())
    }
}

impl Drop for CoordinatorProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// POSTs `body` with `headers`: (status, JSON body).
async fn post(url: &str, headers: &[(&str, String)], body: &[u8]) -> anyhow::Result<(u16, Value)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut s = tokio::net::TcpStream::connect(host).await?;
    let mut head = format!(
        "POST /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await?;
    s.write_all(body).await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    let out = String::from_utf8_lossy(&out).into_owned();
    let status = out.split_whitespace().nth(1).unwrap_or("0").parse()?;
    let body = out.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    // Small JSON bodies: take from the first brace (skips a chunk-size line).
    let json = body
        .find('{')
        .and_then(|i| {
            let j = body.rfind('}')?;
            serde_json::from_str(&body[i..=j]).ok()
        })
        .unwrap_or(Value::Null);
    Ok((status, json))
}

fn issue_event(number: u64, labels: &[&str]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "action": "labeled",
        "label": {"name": labels.first().copied().unwrap_or("")},
        "issue": {"number": number, "title": format!("Ticket {number}"),
                  "labels": labels.iter().map(|l| json!({"name": l})).collect::<Vec<_>>()},
        "repository": {"full_name": "acme/api"},
    }))
    .unwrap()
}

fn github_headers(delivery: &str, body: &[u8]) -> Vec<(&'static str, String)> {
    vec![
        ("X-GitHub-Event", "issues".into()),
        ("X-GitHub-Delivery", delivery.into()),
        (
            "X-Hub-Signature-256",
            verify::sign_github(GH_SECRET.as_bytes(), body),
        ),
    ]
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Bridged jobs in the store (labelled by the bridge), by item.
async fn bridged_jobs(nats: &NatsServer) -> anyhow::Result<Vec<JobRecord>> {
    let c = async_nats::connect(nats.url()).await?;
    let js = async_nats::jetstream::new(c);
    let bucket = js.get_key_value(gf_schemas::names::BUCKET_JOBS).await?;
    Ok(gf_coordinator::store::read_all_as::<JobRecord>(&bucket)
        .await?
        .into_iter()
        .filter(|r| r.spec.labels.contains_key("bridge.item"))
        .collect())
}

/// The order a job's states may be echoed in (each at most once per attempt).
fn rank(s: JobState) -> u8 {
    match s {
        JobState::Pending | JobState::Blocked => 0,
        JobState::Dispatched => 1,
        JobState::Running => 2,
        _ => 3,
    }
}

/// The echoes of one item: in order (revisions rising, states along the lifecycle),
/// ending in `succeeded`, with `running` among them; a repeated id carries the same
/// echo.
fn check_order(echoes: &[(String, Echo)]) {
    let mut first: BTreeMap<&str, &Echo> = BTreeMap::new();
    let mut distinct = Vec::new();
    for (id, e) in echoes {
        match first.get(id.as_str()) {
            Some(seen) => assert_eq!(*seen, e, "a duplicate carries the same echo"),
            None => {
                first.insert(id, e);
                distinct.push(e);
            }
        }
    }
    for w in distinct.windows(2) {
        assert!(
            w[0].revision < w[1].revision,
            "revisions rise: {distinct:?}"
        );
        assert!(
            rank(w[0].state) <= rank(w[1].state),
            "states in order: {distinct:?}"
        );
        assert_eq!(
            w[1].previous,
            Some(w[0].state),
            "each names the one before: {distinct:?}"
        );
    }
    let states: Vec<JobState> = distinct.iter().map(|e| e.state).collect();
    println!(
        "echoed {} ({} received): {states:?}",
        distinct[0].item,
        echoes.len()
    );
    assert_eq!(states.last(), Some(&JobState::Succeeded), "{states:?}");
    assert!(states.contains(&JobState::Running), "{states:?}");
}

/// Inbound: a signed webhook for a labelled item creates one job with the profile's
/// spec; the same delivery repeated and the same event re-sent create nothing; a bad
/// or missing signature, a stale (replayed) timestamp and a malformed body are refused
/// with clear errors and create nothing. Outbound: the tracker receives each state
/// change in order, signed; with the tracker down and the coordinator restarted
/// meanwhile, every change arrives once it is back (duplicates carry the same id); a
/// failed attempt shows in `gf bridge deliveries`, and a redelivery keeps the id.
#[tokio::test]
async fn webhooks_make_jobs_and_state_changes_reach_the_tracker() -> anyhow::Result<()> {
    init_tracing();
    let nats = NatsServer::start()?;
    let dir = tempfile::tempdir()?;
    let (tracker, tracker_url, tracker_stop) = Tracker::start().await?;
    let cfg = config(dir.path(), &tracker_url);
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut coord = CoordinatorProcess::spawn(&nats.url(), &cfg, port)?;
    eventually(Duration::from_secs(20), "the coordinator's API", || async {
        http_request("GET", &format!("{base}/health"), b"")
            .await
            .ok()
            .filter(|r| r.0 == 200)
    })
    .await?;
    let _worker = WorkerProcess::spawn(&nats.url(), "bridge-w1", &[])?;
    let hook = format!("{base}/api/bridge/github");

    // A labelled item: one job, with the profile's spec.
    let body = issue_event(42, &["agent", "bug"]);
    let (st, r) = post(&hook, &github_headers("d-1", &body), &body).await?;
    assert_eq!(st, 201, "{r}");
    assert_eq!(r["outcome"], "created");
    assert_eq!(r["item"], "acme/api#42");
    let job = r["job_id"].as_str().unwrap().to_string();

    // The same delivery again, and the same event re-sent (a new delivery id).
    let (st, r) = post(&hook, &github_headers("d-1", &body), &body).await?;
    assert_eq!(
        (st, r["outcome"].as_str(), r["job_id"].as_str()),
        (200, Some("duplicate_delivery"), Some(job.as_str()))
    );
    let (st, r) = post(&hook, &github_headers("d-2", &body), &body).await?;
    assert_eq!(
        (st, r["outcome"].as_str(), r["job_id"].as_str()),
        (200, Some("existing"), Some(job.as_str()))
    );

    // Refused, creating nothing: a bad signature, none, a malformed body, an
    // unlabelled item is ignored, a stale Standard Webhooks timestamp, an unknown source.
    let mut bad = github_headers("d-3", &body);
    bad[2].1 = verify::sign_github(b"wrong secret", &body);
    let (st, r) = post(&hook, &bad, &body).await?;
    assert_eq!(
        (st, r["error"]["kind"].as_str()),
        (401, Some("unauthorized")),
        "{r}"
    );
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("does not match"),
        "{r}"
    );
    let (st, r) = post(&hook, &github_headers("d-4", &body)[..2], &body).await?;
    assert_eq!(st, 401, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("X-Hub-Signature-256"),
        "{r}"
    );
    let junk = b"{not json".to_vec();
    let (st, r) = post(&hook, &github_headers("d-5", &junk), &junk).await?;
    assert_eq!(
        (st, r["error"]["kind"].as_str()),
        (400, Some("invalid")),
        "{r}"
    );
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("malformed body"),
        "{r}"
    );
    let other = issue_event(7, &["bug"]);
    let (st, r) = post(&hook, &github_headers("d-6", &other), &other).await?;
    assert_eq!((st, r["outcome"].as_str()), (200, Some("ignored")), "{r}");
    let std_hook = format!("{base}/api/bridge/tickets");
    let ticket = serde_json::to_vec(&json!({"type": "ticket.ready", "data": {"id": "T-9"}}))?;
    let key = verify::standard_key(STD_SECRET);
    let std_headers = |id: &str, ts: i64| {
        vec![
            ("webhook-id", id.to_string()),
            ("webhook-timestamp", ts.to_string()),
            (
                "webhook-signature",
                verify::sign_standard(&key, id, ts, &ticket),
            ),
        ]
    };
    let (st, r) = post(&std_hook, &std_headers("m-1", now_secs() - 600), &ticket).await?;
    assert_eq!(
        (st, r["error"]["kind"].as_str()),
        (400, Some("stale")),
        "{r}"
    );
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("tolerance"),
        "{r}"
    );
    let (st, r) = post(
        &format!("{base}/api/bridge/nope"),
        &std_headers("m-1", now_secs()),
        &ticket,
    )
    .await?;
    assert_eq!(st, 404, "{r}");
    assert_eq!(
        bridged_jobs(&nats).await?.len(),
        1,
        "only the first webhook made a job"
    );
    // A valid Standard Webhooks delivery makes its job.
    let (st, r) = post(&std_hook, &std_headers("m-2", now_secs()), &ticket).await?;
    assert_eq!((st, r["item"].as_str()), (201, Some("T-9")), "{r}");

    // The job is the profile's: command prefix + the item's number, its labels.
    let jobs = bridged_jobs(&nats).await?;
    let rec = jobs.iter().find(|j| j.id.to_string() == job).unwrap();
    assert_eq!(
        rec.spec.command,
        ["sh", "-c", "sleep 1; echo working on $0", "42"]
    );
    assert_eq!(rec.spec.profile.as_deref(), Some("agent"));
    assert_eq!(rec.spec.max_attempts, 2);
    assert_eq!(rec.spec.labels["team"], "core");
    assert_eq!(rec.spec.labels["bridge.item"], "acme/api#42");
    assert_eq!(rec.provenance["command"], gf_schemas::Provenance::Merged);
    assert_eq!(
        rec.provenance["max_attempts"],
        gf_schemas::Provenance::Profile
    );

    // Each state change reaches the tracker, in order and signed.
    eventually(
        Duration::from_secs(30),
        "the echo of 42's success",
        || async {
            let e = tracker.echoes("acme/api#42");
            e.iter()
                .any(|(_, e)| e.state == JobState::Succeeded)
                .then_some(())
        },
    )
    .await?;
    check_order(&tracker.echoes("acme/api#42"));

    // The tracker goes down; a second item runs to the end meanwhile, and the
    // coordinator restarts while the echoes wait.
    tracker.down.store(true, Ordering::SeqCst);
    let body = issue_event(43, &["agent"]);
    let (st, r) = post(&hook, &github_headers("d-43", &body), &body).await?;
    assert_eq!(st, 201, "{r}");
    let job43: gf_schemas::JobId = r["job_id"].as_str().unwrap().parse()?;
    let client = Client::connect(&nats).await?;
    client.wait_terminal(job43, Duration::from_secs(30)).await?;
    eventually(Duration::from_secs(20), "refused echo attempts", || async {
        (*tracker.refused.lock().unwrap() >= 2).then_some(())
    })
    .await?;
    let (code, out, err) = gf(
        &nats.url(),
        &["bridge", "deliveries", "--job", &job43.to_string()],
    )?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("pending") && out.contains("503"), "{out}");
    coord.stop()?;
    coord = CoordinatorProcess::spawn(&nats.url(), &cfg, port)?;
    tracker.down.store(false, Ordering::SeqCst);
    eventually(
        Duration::from_secs(40),
        "the echo of 43's success after the outage",
        || async {
            let e = tracker.echoes("acme/api#43");
            e.iter()
                .any(|(_, e)| e.state == JobState::Succeeded)
                .then_some(())
        },
    )
    .await?;
    let echoes43 = tracker.echoes("acme/api#43");
    check_order(&echoes43);
    assert!(tracker.echoes("acme/api#42").len() >= 3);

    // Delivered, with the attempts it took; a redelivery sends the same id again.
    let (code, out, _) = gf(
        &nats.url(),
        &[
            "bridge",
            "deliveries",
            "--job",
            &job43.to_string(),
            "--json",
        ],
    )?;
    assert_eq!(code, 0);
    let ds: Vec<gf_schemas::bridge::Delivery> = serde_json::from_str(&out)?;
    assert!(
        ds.iter()
            .all(|d| d.status == gf_schemas::bridge::DeliveryStatus::Delivered),
        "{out}"
    );
    assert!(
        ds.iter().any(|d| d.attempts > 1 && d.last_error.is_some()),
        "{out}"
    );
    let last = echoes43.last().unwrap().0.clone();
    let (code, _, err) = gf(&nats.url(), &["bridge", "redeliver", &last])?;
    assert_eq!(code, 0, "{err}");
    eventually(Duration::from_secs(20), "the redelivery", || async {
        let n = tracker
            .echoes("acme/api#43")
            .iter()
            .filter(|(id, _)| *id == last)
            .count();
        (n >= 2).then_some(())
    })
    .await?;
    check_order(&tracker.echoes("acme/api#43"));

    coord.stop()?;
    tracker_stop.cancel();
    Ok(())
}

/// A coordinator process with the test config and a worker process, ready.
async fn fleet(
    nats: &NatsServer,
    dir: &Path,
) -> anyhow::Result<(CoordinatorProcess, WorkerProcess)> {
    let cfg = config(dir, "http://127.0.0.1:9/unused");
    let port = free_port();
    let coord = CoordinatorProcess::spawn(&nats.url(), &cfg, port)?;
    eventually(Duration::from_secs(20), "the coordinator's API", || async {
        http_request("GET", &format!("http://127.0.0.1:{port}/health"), b"")
            .await
            .ok()
            .filter(|r| r.0 == 200)
    })
    .await?;
    let worker = WorkerProcess::spawn(&nats.url(), "wf-w1", &[])?;
    Ok((coord, worker))
}

fn manifest_file(
    dir: &Path,
    name: &str,
    jobs: &[(&str, &[&str])],
    order: &Path,
) -> std::path::PathBuf {
    let mut text = format!("name = \"{name}\"\n");
    for (job, deps) in jobs {
        let deps: Vec<String> = deps.iter().map(|d| format!("\"{d}\"")).collect();
        text.push_str(&format!(
            "\n[[jobs]]\nname = \"{job}\"\ndepends_on = [{}]\ncommand = [\"sh\", \"-c\", \"sleep 0.2; echo {job} >> {}\"]\n",
            deps.join(", "),
            order.display()
        ));
    }
    let p = dir.join(format!("{name}-{}.toml", jobs.len()));
    std::fs::write(&p, text).unwrap();
    p
}

/// A manifest of five jobs runs in dependency order; submitting it again creates
/// nothing; a manifest cut short (only its first jobs created) is completed, not
/// duplicated, by the full one; a cyclic manifest is refused whole, naming the cycle,
/// creating nothing. `gf manifest show` lists its jobs and their states.
#[tokio::test]
async fn manifests_run_in_dependency_order_once() -> anyhow::Result<()> {
    init_tracing();
    let nats = NatsServer::start()?;
    let dir = tempfile::tempdir()?;
    let (_coord, _worker) = fleet(&nats, dir.path()).await?;
    let order = dir.path().join("order.txt");
    let jobs: &[(&str, &[&str])] = &[
        ("build", &[]),
        ("lint", &[]),
        ("test", &["build"]),
        ("package", &["test", "lint"]),
        ("deploy", &["package"]),
    ];
    // "A crash midway": only the first two jobs were created.
    let first = manifest_file(dir.path(), "release", &jobs[..2], &order);
    let (code, _, err) = gf(&nats.url(), &["submit", "-f", first.to_str().unwrap()])?;
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("2 job(s) created, 0 existed"), "{err}");
    let full = manifest_file(dir.path(), "release", jobs, &order);
    let (code, out, err) = gf(
        &nats.url(),
        &["submit", "-f", full.to_str().unwrap(), "--wait", "--json"],
    )?;
    assert_eq!(code, 0, "{out}\n{err}");
    let status: gf_schemas::ManifestStatus = serde_json::from_str(&out)?;
    assert_eq!(status.jobs.len(), 5);
    assert!(
        status
            .jobs
            .iter()
            .all(|j| j.state == Some(JobState::Succeeded)),
        "{out}"
    );
    let lines: Vec<String> = std::fs::read_to_string(&order)?
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(lines.len(), 5, "each job ran once: {lines:?}");
    let pos = |n: &str| lines.iter().position(|l| l == n).unwrap();
    for (job, deps) in jobs {
        for d in *deps {
            assert!(pos(d) < pos(job), "{d} before {job}: {lines:?}");
        }
    }

    // Again: nothing new.
    let (code, _, err) = gf(&nats.url(), &["submit", "-f", full.to_str().unwrap()])?;
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("0 job(s) created, 5 existed"), "{err}");
    let (code, out, _) = gf(&nats.url(), &["manifest", "show", "release"])?;
    assert_eq!(code, 0);
    for (job, _) in jobs {
        assert!(
            out.lines()
                .any(|l| l.starts_with(job) && l.contains("succeeded")),
            "{out}"
        );
    }
    let before = gf(&nats.url(), &["jobs", "--json", "--limit", "500"])?.1;
    let count = |s: &str| {
        serde_json::from_str::<Vec<Value>>(s)
            .map(|v| v.len())
            .unwrap_or(0)
    };

    // A cycle: refused whole.
    let cyclic = manifest_file(
        dir.path(),
        "cyclic",
        &[("a", &["c"]), ("b", &["a"]), ("c", &["b"]), ("d", &[])],
        &order,
    );
    let (code, _, err) = gf(&nats.url(), &["submit", "-f", cyclic.to_str().unwrap()])?;
    assert_ne!(code, 0);
    assert!(err.contains("dependency cycle: a -> c -> b -> a"), "{err}");
    // The same refusal from the coordinator (a client that skips the local check).
    let m: gf_schemas::Manifest = gf_cli::ops_workflow::read_manifest(&full)?;
    let mut m = serde_json::to_value(m)?;
    m["name"] = json!("cyclic");
    m["jobs"][0]["depends_on"] = json!(["deploy"]);
    let client = Client::connect(&nats).await?;
    let e = client
        .rpc
        .call::<_, gf_schemas::ManifestStatus>(gf_schemas::names::rpc::MANIFEST_SUBMIT, &m)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("dependency cycle"), "{e}");
    let (code, _, err) = gf(&nats.url(), &["manifest", "show", "cyclic"])?;
    assert_ne!(code, 0);
    assert!(err.contains("no manifest cyclic"), "{err}");
    let after = gf(&nats.url(), &["jobs", "--json", "--limit", "500"])?.1;
    assert_eq!(count(&before), count(&after), "nothing created");
    assert_eq!(count(&after), 5);
    Ok(())
}

/// `gf submit --profile` applies the coordinators' profile (the submission wins where
/// it sets a value), `gf explain` and `gf job` say where each value came from, an
/// unknown profile is refused naming the known ones, and `gf profiles` lists them.
#[tokio::test]
async fn profiles_resolve_on_the_coordinator() -> anyhow::Result<()> {
    init_tracing();
    let nats = NatsServer::start()?;
    let dir = tempfile::tempdir()?;
    let (_coord, _worker) = fleet(&nats, dir.path()).await?;
    let (code, out, err) = gf(
        &nats.url(),
        &[
            "submit",
            "--profile",
            "agent",
            "--max-attempts",
            "5",
            "--wait",
            "--json",
            "--",
            "99",
        ],
    )?;
    assert_eq!(code, 0, "{err}");
    let rec: JobRecord = serde_json::from_str(&out)?;
    assert_eq!(
        rec.spec.command,
        ["sh", "-c", "sleep 1; echo working on $0", "99"]
    );
    assert_eq!(rec.spec.max_attempts, 5, "the submission wins");
    assert_eq!(
        rec.spec.labels["team"], "core",
        "the profile fills the rest"
    );
    let id = rec.id.to_string();
    let (code, out, _) = gf(&nats.url(), &["explain", &id])?;
    assert_eq!(code, 0);
    assert!(out.contains("kind agent (profile agent)"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("from profile") && l.contains("labels")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("from you") && l.contains("max_attempts")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("merged") && l.contains("command")),
        "{out}"
    );
    let (_, out, _) = gf(&nats.url(), &["job", &id])?;
    assert!(
        out.contains("profile") && out.contains("from profile"),
        "{out}"
    );
    let (code, _, err) = gf(&nats.url(), &["submit", "--profile", "agnt", "--", "1"])?;
    assert_ne!(code, 0);
    assert!(
        err.contains("unknown profile `agnt` (known: agent)"),
        "{err}"
    );
    let (code, out, _) = gf(&nats.url(), &["profiles"])?;
    assert_eq!(code, 0);
    assert!(
        out.contains("agent") && out.contains("an agent on a ticket"),
        "{out}"
    );
    Ok(())
}
