//! `gf submit` while a coordinator in the RPC queue group takes requests and does not
//! answer them (paused, or cut off before NATS drops its connection).

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt;
use gf_coordinator::Coordinator;
use gf_schemas::names::{self, rpc};
use gf_schemas::rpc::SubmitReply;
use gf_schemas::{ManifestStatus, Reply};
use gf_testkit::NatsServer;

/// Runs `client` (blocking, given the NATS URL) while the only member of the RPC queue
/// group on `subject` is a stalled coordinator. Once that one holds the first copy of
/// the request it leaves the group (as NATS drops a stalled member) and a healthy
/// coordinator starts. Returns the held copy, the healthy coordinator and the client,
/// still running.
async fn past_a_stalled_coordinator<T: Send + 'static>(
    nats: &NatsServer,
    subject: &'static str,
    client: impl FnOnce(String) -> T + Send + 'static,
) -> anyhow::Result<(
    async_nats::Message,
    Running<Coordinator>,
    tokio::task::JoinHandle<T>,
)> {
    let stalled = async_nats::connect(nats.url()).await?;
    let mut held = stalled
        .queue_subscribe(subject, names::RPC_QUEUE_GROUP.into())
        .await?;
    stalled.flush().await?;
    let url = nats.url();
    let running = tokio::task::spawn_blocking(move || client(url));
    let first = tokio::time::timeout(Duration::from_secs(20), held.next())
        .await?
        .expect("the first copy reached the stalled coordinator");
    held.unsubscribe().await?;
    stalled.flush().await?;
    let coord = Running::coordinator(coordinator_config(&nats.url())).await?;
    Ok((first, coord, running))
}

/// The submission's first copy goes to a stalled coordinator (the only member of the
/// queue group then), which NATS afterwards drops while a healthy one starts: a later
/// copy is answered, and when the stalled one wakes and handles the copy it held, the
/// key `gf submit` gave the submission makes it the same job, not a second one.
#[tokio::test]
async fn gf_submit_gets_past_a_stalled_coordinator_and_makes_one_job() -> anyhow::Result<()> {
    init_tracing();
    let nats = NatsServer::start()?;
    let (first, coord, submit) = past_a_stalled_coordinator(&nats, rpc::SUBMIT, |url| {
        gf(&url, &["submit", "--json", "--", "true"])
    })
    .await?;

    let (code, out, err) = submit.await??;
    assert_eq!(code, 0, "gf submit failed: {err}");
    let reply: SubmitReply = serde_json::from_str(out.trim())?;
    assert!(
        !reply.duplicate,
        "a key made by gf submit is never reported seen before"
    );

    // The stalled coordinator wakes and applies the copy it held.
    let client = Client::connect(&nats).await?;
    let late: SubmitReply = client
        .rpc
        .call_raw(rpc::SUBMIT, first.payload.clone())
        .await?;
    assert_eq!(late.job_id, reply.job_id, "the held copy made a second job");
    assert!(late.duplicate);
    let rec = client.job(reply.job_id).await?;
    let key = rec.spec.idempotency_key.unwrap_or_default();
    assert!(key.starts_with("gf-submit-"), "{key}");
    coord.stop().await?;
    Ok(())
}

/// `gf submit -f` the same way: its first copy reaches a stalled coordinator, a later
/// copy is answered by a healthy one, and the held copy, applied when the stalled one
/// wakes, creates nothing new (a manifest's jobs are keyed by its and their names).
#[tokio::test]
async fn gf_submit_manifest_gets_past_a_stalled_coordinator_and_makes_each_job_once(
) -> anyhow::Result<()> {
    init_tracing();
    let nats = NatsServer::start()?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("pair.toml");
    std::fs::write(
        &file,
        "name = \"pair\"\n\n[[jobs]]\nname = \"first\"\ncommand = [\"true\"]\n\n\
         [[jobs]]\nname = \"second\"\ndepends_on = [\"first\"]\ncommand = [\"true\"]\n",
    )?;
    let path = file.to_str().unwrap().to_string();
    let (first, coord, submit) =
        past_a_stalled_coordinator(&nats, rpc::MANIFEST_SUBMIT, move |url| {
            gf(&url, &["submit", "-f", &path, "--json"])
        })
        .await?;

    let (code, out, err) = submit.await??;
    assert_eq!(code, 0, "gf submit -f failed: {err}");
    let status: ManifestStatus = serde_json::from_str(out.trim())?;
    assert_eq!((status.created, status.jobs.len()), (2, 2), "{status:?}");

    // The stalled coordinator wakes and applies the copy it held.
    let client = Client::connect(&nats).await?;
    let late: Reply<ManifestStatus> = serde_json::from_slice(
        &client
            .nats
            .request(rpc::MANIFEST_SUBMIT, first.payload.clone())
            .await?
            .payload,
    )?;
    let late = late.into_result()?;
    assert_eq!(
        late.created, 0,
        "the held copy created jobs again: {late:?}"
    );
    let ids = |s: &ManifestStatus| s.jobs.iter().map(|j| j.job_id).collect::<Vec<_>>();
    assert_eq!(ids(&late), ids(&status));
    coord.stop().await?;
    Ok(())
}

/// The Python contract client (`clients/python/gf_submit.py`) the same way: it hedges
/// its requests and keys its submission, so the copy a stalled coordinator held makes
/// no second job when it is applied late.
#[tokio::test]
async fn python_client_gets_past_a_stalled_coordinator_and_makes_one_job() -> anyhow::Result<()> {
    init_tracing();
    let nats = NatsServer::start()?;
    let (first, coord, submit) = past_a_stalled_coordinator(&nats, rpc::SUBMIT, |url| {
        python_client(
            &url,
            &["--timeout", "30", "--timeout-per-try", "4", "--", "true"],
        )
    })
    .await?;
    let worker = Running::worker(worker_config(&nats.url(), 1)).await?;

    let out = submit.await??;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "python client failed ({}): {stdout}{stderr}\n(needs scripts/install-test-deps.sh)",
        out.status
    );
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or("{}"))?;
    assert_eq!(last["state"], "succeeded", "{stdout}{stderr}");
    let id: gf_schemas::JobId = last["job_id"].as_str().unwrap_or_default().parse()?;

    let client = Client::connect(&nats).await?;
    let late: SubmitReply = client
        .rpc
        .call_raw(rpc::SUBMIT, first.payload.clone())
        .await?;
    assert_eq!(late.job_id, id, "the held copy made a second job");
    assert!(late.duplicate);
    let key = client
        .job(id)
        .await?
        .spec
        .idempotency_key
        .unwrap_or_default();
    assert!(key.starts_with("py-submit-"), "{key}");
    worker.stop().await?;
    coord.stop().await?;
    Ok(())
}
