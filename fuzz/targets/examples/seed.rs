//! Writes the seed inputs of every fuzz target (valid requests of each kind) into
//! `fuzz/corpus/<target>/seed-*`: `cargo run -p gf-fuzz-targets --example seed`.
//! Each seed is a valid request of its kind, so fuzzing starts deep in the parsers.

use std::path::{Path, PathBuf};

use gf_schemas::names::{self, FactoryVerb};
use gf_schemas::JobId;
use serde_json::{json, Value};

fn corpus(target: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../corpus")
        .join(target);
    std::fs::create_dir_all(&dir).expect("corpus dir");
    dir
}

fn write(target: &str, name: &str, data: &[u8]) {
    std::fs::write(corpus(target).join(format!("seed-{name}")), data).expect("written");
}

fn with_byte(b: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![b];
    v.extend_from_slice(body);
    v
}

fn verb_byte(v: FactoryVerb) -> u8 {
    FactoryVerb::ALL
        .iter()
        .position(|x| *x == v)
        .expect("a verb") as u8
}

fn main() {
    let job: JobId = "019a0000-0000-7000-8000-000000000001".parse().expect("id");
    let w = "fz-factory";
    let upload = names::artifact_nuid(&job, "1", "0123456789abcdef");
    let claim = json!({"job_id": job, "epoch": 1, "worker_id": w});
    let complete = json!({"job_id": job, "epoch": 1, "worker_id": w,
        "outcome": {"status": "succeeded", "exit_code": 0}, "result": {"answer": 42},
        "usage": {"model": "m", "input_tokens": 10, "output_tokens": 5, "calls": 1, "cost": 0.25}});
    let factory: Vec<(FactoryVerb, Value)> = vec![
        (
            FactoryVerb::Register,
            json!({"worker_id": w, "capabilities": {"values": {"os": "linux", "arch": "x86_64"}, "tags": ["gpu"], "queues": ["default", "build"]}, "slots": 4, "version": "0.1.0", "hostname": "host-1"}),
        ),
        (
            FactoryVerb::Heartbeat,
            json!({"worker_id": w, "state": "active", "free_slots": 3, "running": [{"job_id": job, "epoch": 1}]}),
        ),
        (FactoryVerb::Claim, claim.clone()),
        (
            FactoryVerb::Renew,
            json!({"job_id": job, "epoch": 1, "worker_id": w, "usage": {"input_tokens": 3, "cost": 0.5}}),
        ),
        (FactoryVerb::Complete, complete.clone()),
        (
            FactoryVerb::Release,
            json!({"job_id": job, "epoch": 1, "worker_id": w, "reason": "shutting down"}),
        ),
        (FactoryVerb::ClaimBatch, json!([claim.clone(), claim])),
        (
            FactoryVerb::CompleteBatch,
            json!([complete, {"job_id": job, "epoch": 2, "worker_id": w, "outcome": {"status": "failed", "exit_code": 1, "error": "boom"}}]),
        ),
        (
            FactoryVerb::UploadBegin,
            json!({"job_id": job, "epoch": 1, "worker_id": w, "kind": "artifact", "name": "out/report.txt", "size": 5}),
        ),
        (
            FactoryVerb::UploadChunk,
            json!({"job_id": job, "epoch": 1, "worker_id": w, "upload": upload, "seq": 0, "data": "aGVsbG8="}),
        ),
        (
            FactoryVerb::UploadCommit,
            json!({"job_id": job, "epoch": 1, "worker_id": w, "upload": upload, "kind": "artifact", "name": "out/report.txt", "size": 5, "chunks": 1, "sha256": "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"}),
        ),
        (
            FactoryVerb::CheckpointRead,
            json!({"job_id": job, "epoch": 1, "worker_id": w, "after": 2}),
        ),
    ];
    for (verb, body) in factory {
        let data = with_byte(verb_byte(verb), body.to_string().as_bytes());
        write("factory_rpc", verb.as_str(), &data);
    }

    let spec = json!({"command": ["python3", "-c", "print(1)"], "env": {"A": "1"}, "queue": "default",
        "requires": {"os": "linux"}, "tags": ["gpu"], "priority": 3, "timeout_secs": 60, "max_attempts": 2,
        "idempotency_key": "k-1", "product": "demo", "labels": {"team": "x"}, "lease_ttl_secs": 30,
        "prefer": {"region": "eu"}, "weights": {}, "depends_on": [job], "not_before": "2026-01-01T00:00:00Z", "max_cost": 1.5});
    let client: Vec<(&str, Value)> = vec![
        ("submit", spec.clone()),
        ("submit_batch", json!([spec.clone(), {"command": ["true"]}])),
        ("get_job", json!({"job_id": job})),
        (
            "list_jobs",
            json!({"state": "pending", "queue": "default", "limit": 10, "cursor": "abc"}),
        ),
        (
            "cancel",
            json!({"job_id": job, "reason": "no longer needed"}),
        ),
        ("job_action", json!({"job_id": job, "reason": "r"})),
        (
            "child",
            json!({"parent": job, "spec": {"command": ["echo", "child"]}}),
        ),
        (
            "budget_set",
            json!({"product": "demo", "limit_cost": 10.0, "limit_tokens": 1000, "period_secs": 3600, "paused": false, "limit_worker_hours": 2.5}),
        ),
        (
            "schedule_add",
            json!({"name": "nightly", "cron": "0 0 3 * * *", "spec": {"command": ["backup"]}}),
        ),
        ("schedule_name", json!({"name": "nightly"})),
        (
            "manifest",
            json!({"name": "release", "jobs": [{"name": "build", "command": ["make"]}, {"name": "test", "depends_on": ["build"], "command": ["make", "test"], "queue": "default"}]}),
        ),
        ("manifest_name", json!({"name": "release"})),
        (
            "artifact_read",
            json!({"job_id": job, "name": "out/report.txt", "attempt": 1, "after": 0}),
        ),
        ("bridge_deliveries", json!({"status": "failed", "limit": 5})),
        ("bridge_redeliver", json!({"id": "d-1"})),
    ];
    for (i, (name, body)) in client.into_iter().enumerate() {
        write(
            "client_rpc",
            name,
            &with_byte(i as u8, body.to_string().as_bytes()),
        );
    }

    for (name, s) in [
        (
            "factory",
            names::factory_rpc(&w.parse().expect("id"), FactoryVerb::Claim),
        ),
        ("logs", names::logs(&w.parse().expect("id"), &job)),
        ("submit", names::rpc::SUBMIT.to_string()),
        (
            "archive",
            names::archive(
                "2026-01-01",
                gf_schemas::JobState::Succeeded,
                "default",
                &job,
            ),
        ),
    ] {
        write("subjects", name, s.as_bytes());
    }

    let line = json!({"job_id": job, "epoch": 1, "seq": 1, "stream": "stdout", "line": "hello \u{1b}[31mred", "time": "2026-01-01T00:00:00.123Z"});
    write(
        "log_line",
        "stdout",
        format!("{}\n{line}", names::logs(&w.parse().expect("id"), &job)).as_bytes(),
    );

    let token = format!("gfe_0123456789abcdef_{}", "a2".repeat(26));
    assert!(gf_auth::EnrollToken::parse(&token).is_ok());
    write("enroll_token", "valid", token.as_bytes());
    write("enroll_token", "padded", format!("  {token}\n").as_bytes());

    let (server, issuer, user) = gf_fuzz_targets::callout::public_keys();
    let nats = json!({"user_nkey": user, "server_id": {"id": server, "name": "n1"},
        "client_info": {"host": "10.0.0.7", "id": 12, "nonce": "bm9uY2U", "kind": "Client", "type": "nats"},
        "connect_opts": {"name": "gf-worker fz-1", "auth_token": token, "lang": "rust", "version": "0.51", "protocol": 1},
        "type": "authorization_request", "version": 2});
    let raw = gf_fuzz_targets::callout::signed_request(nats.clone(), issuer);
    write("callout", "raw", &with_byte(0, raw.as_bytes()));
    for (mode, name) in [
        (1u8, "plain"),
        (3, "server"),
        (7, "proof"),
        (23, "rotation"),
        (15, "other-issuer"),
    ] {
        write(
            "callout",
            name,
            &with_byte(mode, nats.to_string().as_bytes()),
        );
    }

    let gh = json!({"action": "labeled", "issue": {"number": 7, "title": "Fix it", "labels": [{"name": "gf"}], "updated_at": "2026-01-01T00:00:00Z"}, "repository": {"full_name": "o/r"}});
    let std_body =
        json!({"type": "ticket.created", "data": {"id": "T-1", "title": "x", "labels": ["gf"]}});
    write(
        "webhook",
        "github",
        &with_byte(0, format!("issues\n{gh}").as_bytes()),
    );
    write(
        "webhook",
        "standard",
        &with_byte(1, format!("\n{std_body}").as_bytes()),
    );
    write(
        "webhook",
        "github-unsigned",
        &with_byte(2, format!("sha256=00\n{gh}").as_bytes()),
    );

    // Every seed runs clean through its target.
    for (name, run) in gf_fuzz_targets::TARGETS {
        for e in std::fs::read_dir(corpus(name)).expect("dir") {
            run(&std::fs::read(e.expect("entry").path()).expect("read"));
        }
    }
    println!("seeds written under fuzz/corpus/");
}
