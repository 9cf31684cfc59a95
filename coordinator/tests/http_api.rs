//! The HTTP API against a real nats-server: every route, error statuses and bodies,
//! role checks, worker drain, and the SSE streams (resume with `Last-Event-ID` across a
//! coordinator restart; streams end at shutdown).

use std::collections::BTreeSet;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use gf_coordinator::config::{ApiToken, AuthConfig, Role};
use gf_coordinator::http;
use gf_schemas::{JobState, WorkerState};
use gf_testkit::{
    coordinator_config, eventually, init_tracing, worker_config, NatsServer, Running,
};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tower::ServiceExt;

struct Api {
    router: axum::Router,
    token: Option<String>,
}

impl Api {
    fn of(coord: &Running<gf_coordinator::Coordinator>) -> Self {
        let state = coord.part.as_ref().unwrap().http_state.clone().unwrap();
        Self {
            router: http::router(state),
            token: None,
        }
    }

    fn request(&self, method: &str, uri: &str, body: Option<Value>) -> Request<Body> {
        let mut b = Request::builder().method(method).uri(uri);
        if let Some(t) = &self.token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        match body {
            Some(v) => b
                .header("content-type", "application/json")
                .body(Body::from(v.to_string()))
                .unwrap(),
            None => b.body(Body::empty()).unwrap(),
        }
    }

    async fn raw(&self, req: Request<Body>) -> (StatusCode, Value) {
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, v)
    }

    async fn call(&self, method: &str, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.raw(self.request(method, uri, body)).await
    }
}

/// Asserts an error response has the stable shape and the expected kind.
fn assert_error(resp: &(StatusCode, Value), status: StatusCode, kind: &str) {
    assert_eq!(resp.0, status, "{:?}", resp.1);
    assert_eq!(resp.1["error"]["kind"], kind, "{:?}", resp.1);
    assert!(resp.1["error"]["message"].is_string(), "{:?}", resp.1);
}

fn sha(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// API auth on, with a viewer token `v-token` and an operator token `o-token`.
fn viewer_and_operator() -> AuthConfig {
    AuthConfig {
        enabled: true,
        tokens: vec![
            ApiToken {
                name: "viewer".into(),
                role: Role::Viewer,
                sha256_hex: sha("v-token"),
            },
            ApiToken {
                name: "op".into(),
                role: Role::Operator,
                sha256_hex: sha("o-token"),
            },
        ],
    }
}

/// Every route: jobs (submit, get, list with filters and cursor paging, cancel),
/// workers, events, stats, openapi; errors are JSON with the right status.
#[tokio::test]
async fn routes_and_errors() -> anyhow::Result<()> {
    init_tracing();
    let nats = NatsServer::start()?;
    let coord = Running::coordinator(coordinator_config(&nats.url())).await?;
    let api = Api::of(&coord);

    // The document is derived from the router: every route in it is served (neither
    // the 404 fallback nor a 405), with its role or as public, and every `$ref` resolves.
    let doc = api.call("GET", "/api/openapi.json", None).await;
    assert_eq!(doc.0, StatusCode::OK);
    assert!(
        doc.1["openapi"].as_str().unwrap().starts_with("3."),
        "{}",
        doc.1["openapi"]
    );
    let paths = doc.1["paths"].as_object().unwrap().clone();
    for want in [
        "/api/jobs",
        "/api/jobs/{id}/logs/stream",
        "/api/manifests",
        "/api/bridge/{source}",
        "/api/profiles",
        "/api/factories",
        "/api/factories/{id}/revoke",
        "/api/factory-tokens",
        "/api/factory-tokens/{id}/revoke",
        "/health",
    ] {
        assert!(paths.contains_key(want), "{want} documented");
    }
    for (path, item) in &paths {
        for (method, op) in item.as_object().unwrap() {
            assert!(op["summary"].is_string(), "{method} {path} has a summary");
            let public = op["security"] == json!([]);
            assert!(
                public || op["x-required-role"].is_string(),
                "{method} {path} names its role"
            );
            if path.ends_with("/stream") {
                continue;
            }
            let uri = path
                .replace("{id}", "019a0000-0000-7000-8000-000000000001")
                .replace("{product}", "p")
                .replace("{name}", "n")
                .replace("{source}", "s");
            let r = api.call(&method.to_uppercase(), &uri, None).await;
            assert_ne!(r.0, StatusCode::METHOD_NOT_ALLOWED, "{method} {uri}");
            assert_ne!(r.1["error"]["message"], "no such route", "{method} {uri}");
        }
    }
    assert_eq!(paths["/api/bridge/{source}"]["post"]["security"], json!([]));
    assert_eq!(paths["/api/jobs"]["post"]["x-required-role"], "operator");
    assert_eq!(paths["/api/jobs"]["get"]["x-required-role"], "viewer");
    assert_eq!(
        paths["/api/factories"]["get"]["x-required-role"],
        "operator"
    );
    let schemas = doc.1["components"]["schemas"].as_object().unwrap().clone();
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(o) => {
                if let Some(Value::String(r)) = o.get("$ref") {
                    out.push(r.clone());
                }
                o.values().for_each(|x| refs(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&doc.1, &mut all);
    let dangling: Vec<&String> = all
        .iter()
        .filter(|r| !schemas.contains_key(r.trim_start_matches("#/components/schemas/")))
        .collect();
    assert!(dangling.is_empty(), "dangling refs: {dangling:?}");
    assert!(schemas.contains_key("JobRecord") && schemas.contains_key("ErrorBody"));
    assert!(paths["/api/jobs"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "state"));
    assert_eq!(
        paths["/api/jobs/{id}"]["get"]["parameters"][0]["name"], "id",
        "path parameters come from the route"
    );

    // Submit, get, errors.
    let mut ids = Vec::new();
    for i in 0..5 {
        let queue = if i < 3 { "alpha" } else { "beta" };
        let r = api
            .call(
                "POST",
                "/api/jobs",
                Some(json!({"command": ["true"], "queue": queue, "requires": {"os": "plan9"}})),
            )
            .await;
        assert_eq!(r.0, StatusCode::CREATED, "{:?}", r.1);
        ids.push(r.1["job_id"].as_str().unwrap().to_string());
    }
    let got = api
        .call("GET", &format!("/api/jobs/{}", ids[0]), None)
        .await;
    assert_eq!(got.0, StatusCode::OK);
    assert_eq!(got.1["spec"]["queue"], "alpha");
    assert_error(
        &api.call("GET", "/api/jobs/not-a-uuid", None).await,
        StatusCode::BAD_REQUEST,
        "invalid",
    );
    assert_error(
        &api.call(
            "GET",
            "/api/jobs/019a0000-0000-7000-8000-000000000001",
            None,
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &api.call(
            "POST",
            "/api/jobs",
            Some(json!({"command": ["x"], "max_attempt": 2})),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid",
    );
    assert_error(
        &api.call("POST", "/api/jobs", Some(json!({"command": []})))
            .await,
        StatusCode::BAD_REQUEST,
        "invalid",
    );
    let huge = json!({"command": ["x"], "labels": {"a": "y".repeat(600 * 1024)}});
    assert_error(
        &api.call("POST", "/api/jobs", Some(huge)).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
    );
    assert_error(
        &api.call("GET", "/api/jobs?state=zombie", None).await,
        StatusCode::BAD_REQUEST,
        "invalid",
    );
    assert_error(
        &api.call("GET", "/api/jobs?limit=0", None).await,
        StatusCode::BAD_REQUEST,
        "invalid",
    );
    assert_error(
        &api.call("GET", "/api/nope", None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &api.call("DELETE", "/api/jobs", None).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );

    // Filters and paging: every alpha job exactly once, newest first.
    let mut seen = Vec::new();
    let mut uri = "/api/jobs?queue=alpha&limit=2".to_string();
    loop {
        let page = api.call("GET", &uri, None).await;
        assert_eq!(page.0, StatusCode::OK, "{:?}", page.1);
        assert_eq!(page.1["total"], 3);
        for j in page.1["jobs"].as_array().unwrap() {
            seen.push(j["id"].as_str().unwrap().to_string());
        }
        match page.1["next_cursor"].as_str() {
            Some(c) => uri = format!("/api/jobs?queue=alpha&limit=2&cursor={c}"),
            None => break,
        }
    }
    let mut want: Vec<String> = ids[..3].to_vec();
    want.reverse();
    assert_eq!(seen, want);
    // The unplaceable jobs become blocked; the state filter finds them.
    eventually(Duration::from_secs(10), "jobs blocked", || async {
        let r = api
            .call("GET", "/api/jobs?state=blocked&product=default", None)
            .await;
        (r.1["total"] == 5).then_some(())
    })
    .await?;

    // Cancel, and a cancel body that is not JSON.
    let c = api
        .call(
            "POST",
            &format!("/api/jobs/{}/cancel", ids[4]),
            Some(json!({"reason": "test"})),
        )
        .await;
    assert_eq!(
        (c.0, c.1["state"].clone()),
        (StatusCode::OK, json!("cancelled"))
    );
    let bad = Request::builder()
        .method("POST")
        .uri(format!("/api/jobs/{}/cancel", ids[3]))
        .body(Body::from("{nope"))?;
    assert_error(&api.raw(bad).await, StatusCode::BAD_REQUEST, "invalid");

    // Events: the submissions and the error event of an unplaceable job are there (the
    // coordinator publishes events a moment later, in batches).
    let ev = eventually(Duration::from_secs(10), "the cancel's event", || async {
        let ev = api.call("GET", "/api/events?limit=200", None).await;
        assert_eq!(ev.0, StatusCode::OK);
        let kinds: BTreeSet<String> = ev.1["events"]
            .as_array()?
            .iter()
            .filter_map(|e| e["kind"].as_str().map(String::from))
            .collect();
        (kinds.contains("job_submitted") && kinds.contains("job_cancelled")).then_some(ev)
    })
    .await?;
    let errors = api.call("GET", "/api/events?level=error", None).await;
    let errs = errors.1["events"].as_array().unwrap();
    assert!(!errs.is_empty() && errs.iter().all(|e| e["level"] == "error"));
    assert!(errs.iter().any(|e| e["kind"] == "job_unplaceable"));
    let seqs: Vec<u64> = ev.1["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    // Events batched into one message share its sequence.
    assert!(
        seqs.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {seqs:?}"
    );
    assert_error(
        &api.call("GET", "/api/events?limit=0", None).await,
        StatusCode::BAD_REQUEST,
        "invalid",
    );

    // Stats follow the jobs bucket.
    let stats = eventually(Duration::from_secs(10), "stats to count 5 jobs", || async {
        let r = api.call("GET", "/api/stats", None).await;
        (r.1["jobs"]["total"] == 5 && r.1["jobs"]["by_state"]["cancelled"] == 1).then_some(r.1)
    })
    .await?;
    assert_eq!(stats["jobs"]["queue_depth"]["alpha"], 3);
    assert_eq!(stats["jobs"]["queue_depth"]["beta"], 1);
    assert_eq!(stats["jobs"]["processed"], 1);

    // Workers: none yet; draining an unknown one is a 404, a bad id a 400.
    let w = api.call("GET", "/api/workers", None).await;
    assert_eq!((w.0, w.1.clone()), (StatusCode::OK, json!([])));
    assert_error(
        &api.call("POST", "/api/workers/nobody/drain", None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &api.call("POST", "/api/workers/a.b/drain", None).await,
        StatusCode::BAD_REQUEST,
        "invalid",
    );
    drop(api); // the router holds the coordinator's service
    coord.stop().await?;
    Ok(())
}

/// A drained worker claims nothing and reports `draining`; undrained, it runs the
/// waiting job.
#[tokio::test]
async fn drain_and_undrain_worker() -> anyhow::Result<()> {
    init_tracing();
    let nats = NatsServer::start()?;
    let coord = Running::coordinator(coordinator_config(&nats.url())).await?;
    let worker = Running::worker(worker_config(&nats.url(), 2)).await?;
    let api = Api::of(&coord);
    let wid = worker.id().to_string();
    let state_of = |v: &Value| {
        v.as_array()
            .and_then(|a| a.iter().find(|w| w["id"] == wid.as_str()))
            .map(|w| w["state"].clone())
    };
    eventually(Duration::from_secs(10), "worker active", || async {
        let r = api.call("GET", "/api/workers", None).await;
        (state_of(&r.1) == Some(json!("active"))).then_some(())
    })
    .await?;

    let d = api
        .call("POST", &format!("/api/workers/{wid}/drain"), None)
        .await;
    assert_eq!(
        (d.0, d.1["state"].clone()),
        (StatusCode::OK, json!("draining")),
        "{:?}",
        d.1
    );
    eventually(Duration::from_secs(5), "record says draining", || async {
        let r = api.call("GET", "/api/workers", None).await;
        (state_of(&r.1) == Some(json!("draining"))).then_some(())
    })
    .await?;
    let job = api
        .call("POST", "/api/jobs", Some(json!({"command": ["true"]})))
        .await;
    let id = job.1["job_id"].as_str().unwrap().to_string();
    // The only worker is draining: the job must not start. It waits for capacity
    // (blocked) rather than running; check for a while that it never runs.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < deadline {
        let j = api.call("GET", &format!("/api/jobs/{id}"), None).await;
        let st: JobState = serde_json::from_value(j.1["state"].clone())?;
        assert!(
            !matches!(st, JobState::Running | JobState::Succeeded),
            "a draining worker ran a job"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let u = api
        .call("POST", &format!("/api/workers/{wid}/undrain"), None)
        .await;
    assert_eq!(
        (u.0, u.1["state"].clone()),
        (StatusCode::OK, json!("active"))
    );
    eventually(
        Duration::from_secs(15),
        "job to succeed after undrain",
        || async {
            let j = api.call("GET", &format!("/api/jobs/{id}"), None).await;
            (j.1["state"] == "succeeded").then_some(())
        },
    )
    .await?;
    let stats = api.call("GET", "/api/stats", None).await;
    assert_eq!(stats.1["workers"]["online"], 1);
    let _ = WorkerState::Active;
    worker.stop().await?;
    drop(api); // the router holds the coordinator's service
    coord.stop().await?;
    Ok(())
}

/// The factories of a secured NATS in the API, operators only (reads included): an
/// enrollment token made over HTTP (shown once) enrolls a real worker, which is listed
/// with its pool, state and connection; revoking it closes its connection; tokens are
/// listed without their secret and revoked; bad requests name what is wrong. On an
/// open NATS the routes say there are no factories.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn factories_and_tokens_for_operators() -> anyhow::Result<()> {
    init_tracing();
    let (nats, secrets) = NatsServer::start_secured()?;
    let mut cfg = gf_testkit::secured_coordinator_config(&nats.url(), &secrets);
    cfg.auth = viewer_and_operator();
    let coord = Running::coordinator(cfg).await?;
    let mut api = Api::of(&coord);

    // Viewers may not even read them.
    api.token = Some("v-token".into());
    for uri in ["/api/factories", "/api/factory-tokens"] {
        assert_error(
            &api.call("GET", uri, None).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        );
    }
    api.token = Some("o-token".into());
    assert_eq!(api.call("GET", "/api/factories", None).await.1, json!([]));

    // Bad token requests are refused with what is wrong.
    for (body, says) in [
        (json!({"uses": 0}), "uses must be at least 1"),
        (json!({"pool": "a.b"}), "pool `a.b`"),
        (json!({"ttl": "soon"}), "ttl `soon`"),
        (json!({"cidrs": ["10.0.0.0/99"]}), "cidrs"),
        (json!({"colour": "red"}), "unknown field"),
    ] {
        let r = api.call("POST", "/api/factory-tokens", Some(body)).await;
        assert_error(&r, StatusCode::BAD_REQUEST, "invalid");
        assert!(
            r.1["error"]["message"].as_str().unwrap().contains(says),
            "{r:?}"
        );
    }

    // A token made over HTTP enrolls a real worker.
    let made = api
        .call(
            "POST",
            "/api/factory-tokens",
            Some(json!({"uses": 1, "ttl": "10m", "pool": "default"})),
        )
        .await;
    assert_eq!(made.0, StatusCode::CREATED, "{:?}", made.1);
    let token = gf_auth::EnrollToken::parse(made.1["token"].as_str().unwrap())?;
    assert_eq!(made.1["record"]["state"], "active");
    let listed = api.call("GET", "/api/factory-tokens", None).await.1;
    assert_eq!(listed[0]["id"], token.id.as_str());
    assert!(
        !listed.to_string().contains(&token.secret_hash()),
        "a token's hash is not shown"
    );
    let keys = tempfile::tempdir()?;
    let mut w = worker_config(&nats.url(), 1);
    w.id = Some(gf_schemas::WorkerId::new("f1")?);
    w.key_dir = Some(keys.path().to_path_buf());
    w.enroll = Some(token.clone());
    let worker = Running::worker(w).await?;
    let f = &api.call("GET", "/api/factories", None).await.1[0];
    assert_eq!(f["id"], "f1");
    assert_eq!(f["state"], "active");
    assert_eq!(f["pool"], "default");
    assert_eq!(f["connected"], true);
    assert_eq!(f["enrolled_via"], token.id.as_str());
    assert!(f["last_seen"].is_string() && f["host"].is_string(), "{f}");
    let t = &api.call("GET", "/api/factory-tokens", None).await.1[0];
    assert_eq!(t["state"], "used up");
    assert_eq!(t["factories"], json!(["f1"]));

    // Revoked over HTTP: its connection is closed at once.
    let r = api.call("POST", "/api/factories/f1/revoke", None).await;
    assert_eq!(r.0, StatusCode::OK, "{:?}", r.1);
    assert_eq!(
        r.1,
        json!({"factory": "f1", "was_connected": true, "kicked": true})
    );
    let f = &api.call("GET", "/api/factories", None).await.1[0];
    assert_eq!(f["state"], "revoked");
    assert_eq!(f["connected"], false);
    assert_error(
        &api.call("POST", "/api/factories/nobody/revoke", None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );

    // Tokens are revoked by id; an unknown or malformed id is said so.
    let spare = api
        .call("POST", "/api/factory-tokens", Some(json!({})))
        .await
        .1["record"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = api
        .call("POST", &format!("/api/factory-tokens/{spare}/revoke"), None)
        .await;
    assert_eq!(r.1["state"], "revoked", "{:?}", r.1);
    assert_error(
        &api.call("POST", "/api/factory-tokens/0123456789abcdef/revoke", None)
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &api.call("POST", "/api/factory-tokens/xyz/revoke", None)
            .await,
        StatusCode::BAD_REQUEST,
        "invalid",
    );
    // Revoked, it cannot reconnect to give its work back: dropped, not stopped.
    drop(worker);
    drop(api);
    coord.stop().await?;

    // An open NATS has no factories.
    let open = NatsServer::start()?;
    let coord = Running::coordinator(coordinator_config(&open.url())).await?;
    let api = Api::of(&coord);
    assert_error(
        &api.call("GET", "/api/factories", None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    drop(api);
    coord.stop().await?;
    Ok(())
}

/// With auth on: no token is 401, a viewer reads but may not act (403), an operator
/// acts; the API description, the dashboard and /health stay public.
#[tokio::test]
async fn auth_roles() -> anyhow::Result<()> {
    init_tracing();
    let nats = NatsServer::start()?;
    let mut cfg = coordinator_config(&nats.url());
    cfg.auth = viewer_and_operator();
    let coord = Running::coordinator(cfg).await?;
    let mut api = Api::of(&coord);
    let spec = json!({"command": ["true"]});

    let resp = api
        .router
        .clone()
        .oneshot(api.request("GET", "/api/jobs", None))
        .await?;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    for (m, uri) in [
        ("GET", "/api/stats"),
        ("GET", "/api/events"),
        ("POST", "/api/jobs"),
    ] {
        assert_error(
            &api.call(m, uri, Some(spec.clone())).await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        );
    }
    for uri in ["/api/openapi.json", "/health", "/", "/assets/app.js"] {
        assert_eq!(api.call("GET", uri, None).await.0, StatusCode::OK, "{uri}");
    }
    api.token = Some("wrong".into());
    assert_error(
        &api.call("GET", "/api/jobs", None).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );

    api.token = Some("v-token".into());
    assert_eq!(api.call("GET", "/api/jobs", None).await.0, StatusCode::OK);
    let me = api.call("GET", "/api/whoami", None).await;
    assert_eq!(
        me.1,
        json!({"name": "viewer", "role": "viewer", "auth_enabled": true})
    );
    assert_error(
        &api.call("POST", "/api/jobs", Some(spec.clone())).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_error(
        &api.call("POST", "/api/workers/w1/drain", None).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );

    api.token = Some("o-token".into());
    let r = api.call("POST", "/api/jobs", Some(spec)).await;
    assert_eq!(r.0, StatusCode::CREATED);
    let id = r.1["job_id"].as_str().unwrap();
    let c = api
        .call("POST", &format!("/api/jobs/{id}/cancel"), None)
        .await;
    assert_eq!(c.0, StatusCode::OK);
    drop(api); // the router holds the coordinator's service
    coord.stop().await?;
    Ok(())
}

/// Reads SSE events from a response body.
struct Sse {
    body: Body,
    buf: String,
}

#[derive(Debug, Default)]
struct SseEvent {
    event: String,
    id: Option<String>,
    data: String,
}

impl Sse {
    async fn open(router: &axum::Router, uri: &str, last_id: Option<&str>) -> anyhow::Result<Self> {
        let mut b = Request::builder().uri(uri);
        if let Some(id) = last_id {
            b = b.header("last-event-id", id);
        }
        let resp = router.clone().oneshot(b.body(Body::empty())?).await?;
        anyhow::ensure!(resp.status() == StatusCode::OK, "status {}", resp.status());
        Ok(Self {
            body: resp.into_body(),
            buf: String::new(),
        })
    }

    /// The next event (comments skipped), or `None` when the stream ended.
    async fn next(&mut self, timeout: Duration) -> anyhow::Result<Option<SseEvent>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut ev = SseEvent::default();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        ev.event = v.trim().into();
                    } else if let Some(v) = line.strip_prefix("id:") {
                        ev.id = Some(v.trim().into());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        ev.data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    }
                }
                if ev.event.is_empty() && ev.data.is_empty() {
                    continue; // keep-alive comment
                }
                return Ok(Some(ev));
            }
            let frame = tokio::time::timeout_at(deadline, self.body.frame())
                .await
                .map_err(|_| anyhow::anyhow!("no SSE event within {timeout:?}"))?;
            match frame {
                None => return Ok(None),
                Some(f) => {
                    if let Ok(data) = f?.into_data() {
                        self.buf.push_str(&String::from_utf8_lossy(&data));
                    }
                }
            }
        }
    }
}

/// An SSE log client dropped mid-log and reconnected with `Last-Event-ID` — to another
/// coordinator, after the first one stopped — receives every line exactly once.
#[tokio::test]
async fn log_stream_resumes_exactly_once_across_restart() -> anyhow::Result<()> {
    init_tracing();
    let nats = NatsServer::start()?;
    let a = Running::coordinator(coordinator_config(&nats.url())).await?;
    let b = Running::coordinator(coordinator_config(&nats.url())).await?;
    let worker = Running::worker(worker_config(&nats.url(), 1)).await?;
    let api_a = Api::of(&a);
    let api_b = Api::of(&b);
    let n = 60;
    let script = format!("for i in $(seq 1 {n}); do echo line $i; sleep 0.02; done");
    let r = api_a
        .call(
            "POST",
            "/api/jobs",
            Some(json!({"command": ["sh", "-c", script]})),
        )
        .await;
    let id = r.1["job_id"].as_str().unwrap().to_string();
    let uri = format!("/api/jobs/{id}/logs/stream");

    let mut lines = Vec::new();
    let mut last_id = None;
    {
        let mut sse = Sse::open(&api_a.router, &uri, None).await?;
        while lines.len() < 15 {
            let ev = sse
                .next(Duration::from_secs(20))
                .await?
                .expect("stream open");
            assert_eq!(ev.event, "log");
            let line: Value = serde_json::from_str(&ev.data)?;
            lines.push(line["line"].as_str().unwrap().to_string());
            last_id = ev.id;
        }
    } // dropped mid-log
    drop(api_a);
    a.stop().await?;

    let mut sse = Sse::open(&api_b.router, &uri, last_id.as_deref()).await?;
    loop {
        let ev = sse
            .next(Duration::from_secs(30))
            .await?
            .expect("ends with `end`");
        if ev.event == "end" {
            assert_eq!(ev.data, "succeeded");
            break;
        }
        let line: Value = serde_json::from_str(&ev.data)?;
        lines.push(line["line"].as_str().unwrap().to_string());
    }
    assert!(
        sse.next(Duration::from_secs(5)).await?.is_none(),
        "closed after end"
    );
    let want: Vec<String> = (1..=n).map(|i| format!("line {i}")).collect();
    assert_eq!(lines, want, "every line exactly once, in order");
    worker.stop().await?;
    drop(api_b);
    b.stop().await?;
    Ok(())
}

/// The live event stream delivers new events with their stream sequence as id, and
/// ends when the coordinator shuts down (so the graceful HTTP drain finishes).
#[tokio::test]
async fn event_stream_live_and_ends_at_shutdown() -> anyhow::Result<()> {
    init_tracing();
    let nats = NatsServer::start()?;
    let coord = Running::coordinator(coordinator_config(&nats.url())).await?;
    let api = Api::of(&coord);
    let mut sse = Sse::open(&api.router, "/api/events/stream", None).await?;
    let r = api
        .call(
            "POST",
            "/api/jobs",
            Some(json!({"command": ["true"], "queue": "nobody"})),
        )
        .await;
    let id = r.1["job_id"].as_str().unwrap().to_string();
    let mut got_error = false;
    let mut last_seq = 0u64;
    while !got_error {
        let ev = sse.next(Duration::from_secs(10)).await?.expect("open");
        let seq: u64 = ev.id.as_deref().unwrap().parse()?;
        assert!(seq > last_seq, "ids are increasing stream sequences");
        last_seq = seq;
        let e: Value = serde_json::from_str(&ev.data)?;
        got_error =
            e["job_id"] == id.as_str() && e["kind"] == "job_unplaceable" && e["level"] == "error";
    }
    // Resuming after a sequence starts right after it.
    let mut again = Sse::open(
        &api.router,
        "/api/events/stream",
        Some(&(last_seq - 1).to_string()),
    )
    .await?;
    let ev = again.next(Duration::from_secs(5)).await?.unwrap();
    assert_eq!(ev.id.as_deref(), Some(last_seq.to_string().as_str()));

    coord.shutdown.cancel();
    let end = sse.next(Duration::from_secs(5)).await?;
    assert!(end.is_none(), "stream ended at shutdown");
    drop((api, again));
    tokio::time::timeout(Duration::from_secs(10), coord.stop()).await??;
    Ok(())
}
