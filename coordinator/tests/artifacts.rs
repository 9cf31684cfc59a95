//! Artifacts against a real nats-server, a real coordinator and a real worker: files a
//! job leaves are listed and downloaded byte for byte (HTTP and RPC), a file over the
//! per-job cap is refused clearly and the job's record says so, only the lease holder
//! may write, and the artifacts go when the job goes.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine as _;
use gf_coordinator::http;
use gf_schemas::artifact::{
    ArtifactReadReply, ArtifactReadRequest, BlobKind, JobArtifacts, UploadBeginReply,
    UploadBeginRequest,
};
use gf_schemas::names::{self, rpc};
use gf_schemas::rpc::GetJobRequest;
use gf_schemas::{ErrorKind, JobId, JobRecord, JobSpec, JobState, WorkerId};
use gf_testkit::{
    coordinator_config, eventually, init_tracing, worker_config, NatsServer, Running,
};
use gf_worker::{CallError, RpcClient};
use http_body_util::BodyExt;
use tower::ServiceExt;

async fn get(router: &axum::Router, uri: &str) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let req = Request::builder().uri(uri).body(Body::empty()).unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, headers, body)
}

async fn finished(rpc: &RpcClient, id: JobId) -> anyhow::Result<JobRecord> {
    eventually(Duration::from_secs(30), "the job to finish", || async {
        let rec: JobRecord = rpc
            .call(rpc::GET_JOB, &GetJobRequest { job_id: id })
            .await
            .ok()?;
        rec.state.is_terminal().then_some(rec)
    })
    .await
}

/// Downloads an artifact over the RPC plane, a chunk at a time.
async fn read_rpc(rpc: &RpcClient, job: JobId, name: &str) -> anyhow::Result<Vec<u8>> {
    let mut req = ArtifactReadRequest {
        job_id: job,
        name: name.into(),
        attempt: None,
        checkpoint: false,
        after: None,
    };
    let mut out = Vec::new();
    let mut read = 0;
    loop {
        let r: ArtifactReadReply = rpc.call(rpc::ARTIFACT_READ, &req).await?;
        if r.chunks == 0 {
            return Ok(out);
        }
        out.extend(base64::engine::general_purpose::STANDARD.decode(r.data)?);
        read += 1;
        if read == r.chunks {
            return Ok(out);
        }
        req.after = Some(r.next);
    }
}

#[tokio::test]
async fn artifacts_are_kept_capped_fenced_and_removed_with_the_job() -> anyhow::Result<()> {
    init_tracing();
    let nats = NatsServer::start()?;
    let mut cfg = coordinator_config(&nats.url());
    cfg.artifacts.max_job_bytes = 1024 * 1024;
    let coord = Running::coordinator(cfg).await?;
    let scratch = tempfile::tempdir()?;
    let mut wcfg = worker_config(&nats.url(), 2);
    wcfg.scratch_dir = Some(scratch.path().to_path_buf());
    let worker = Running::worker(wcfg).await?;
    let client = async_nats::connect(nats.url()).await?;
    let rpc = RpcClient::new(client.clone(), Duration::from_secs(5));
    let router = http::router(coord.part.as_ref().unwrap().http_state.clone().unwrap());

    // Three files, one of them several chunks long, one in a subdirectory.
    let src = tempfile::tempdir()?;
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::create_dir_all(src.path().join("out"))?;
    std::fs::write(src.path().join("report.txt"), "all good\n")?;
    std::fs::write(src.path().join("empty.log"), "")?;
    std::fs::write(src.path().join("out/data.bin"), &big)?;
    let copy = format!("cp -r {}/. \"$GF_ARTIFACTS_DIR\"/", src.path().display());
    let reply: gf_schemas::rpc::SubmitReply = rpc
        .call(rpc::SUBMIT, &JobSpec::command(["sh", "-c", &copy]))
        .await?;
    let id = reply.job_id;
    let rec = finished(&rpc, id).await?;
    assert_eq!(rec.state, JobState::Succeeded, "{rec:?}");

    let (status, _, body) = get(&router, &format!("/api/jobs/{id}/artifacts")).await;
    assert_eq!(status, StatusCode::OK);
    let listed: JobArtifacts = serde_json::from_slice(&body)?;
    let names: Vec<&str> = listed.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["empty.log", "out/data.bin", "report.txt"]);
    assert!(listed.files.iter().all(|f| f.attempt == 1));
    assert_eq!(listed.total_bytes, 300_000 + 9);
    assert!(listed.errors.is_empty(), "{:?}", listed.errors);

    // Byte for byte, over HTTP (a nested name URL-encoded) and over the RPC plane.
    let (status, headers, body) =
        get(&router, &format!("/api/jobs/{id}/artifacts/out%2Fdata.bin")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, big);
    assert_eq!(headers["content-length"], "300000");
    let (_, _, body) = get(&router, &format!("/api/jobs/{id}/artifacts/report.txt")).await;
    assert_eq!(body, b"all good\n");
    let (status, _, body) = get(&router, &format!("/api/jobs/{id}/artifacts/empty.log")).await;
    assert_eq!((status, body.len()), (StatusCode::OK, 0));
    assert_eq!(read_rpc(&rpc, id, "out/data.bin").await?, big);
    let (status, _, body) = get(&router, &format!("/api/jobs/{id}/artifacts/nope.txt")).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let (status, _, _) = get(
        &router,
        &format!("/api/jobs/{id}/artifacts/report.txt?attempt=2"),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Any object store client reads them too.
    let js = async_nats::jetstream::new(client.clone());
    let objects = js.get_object_store(names::OBJECT_ARTIFACTS).await?;
    let mut obj = objects.get(format!("{id}/1/out/data.bin")).await?;
    let mut via_store = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut obj, &mut via_store).await?;
    assert_eq!(via_store, big);

    // Over the cap: the small file is kept, the big one refused, the job's outcome
    // stands and its record says why.
    std::fs::write(src.path().join("huge.bin"), vec![1u8; 2 * 1024 * 1024])?;
    let reply: gf_schemas::rpc::SubmitReply = rpc
        .call(rpc::SUBMIT, &JobSpec::command(["sh", "-c", &copy]))
        .await?;
    let over = reply.job_id;
    let rec = finished(&rpc, over).await?;
    assert_eq!(rec.state, JobState::Succeeded);
    let errors = &rec.history.last().unwrap().artifact_errors;
    assert!(
        errors
            .iter()
            .any(|e| e.contains("huge.bin") && e.contains("over the job's artifact cap")),
        "{errors:?}"
    );
    let listed: JobArtifacts = rpc
        .call(rpc::ARTIFACT_LIST, &GetJobRequest { job_id: over })
        .await?;
    assert!(listed.find("huge.bin", None).is_none());
    assert!(listed.find("report.txt", None).is_some());
    assert!(
        listed.errors.iter().any(|e| e.name == "huge.bin"),
        "{listed:?}"
    );
    assert!(listed.total_bytes <= 1024 * 1024);

    // Only the lease holder writes: the finished job's lease is gone, and a request
    // naming another worker than its subject is forbidden.
    let me = worker.id();
    let begin = UploadBeginRequest {
        job_id: id,
        epoch: rec.epoch,
        worker_id: me.clone(),
        kind: BlobKind::Artifact,
        name: "late.txt".into(),
        size: 3,
    };
    let late: Result<UploadBeginReply, CallError> = rpc.call_factory(&begin).await;
    assert!(
        matches!(
            late.as_ref().map_err(|e| e.kind()),
            Err(Some(ErrorKind::Revoked | ErrorKind::StaleEpoch))
        ),
        "{late:?}"
    );
    let other = WorkerId::new("impostor")?;
    let spoofed: Result<UploadBeginReply, CallError> = rpc
        .call(
            &names::factory_rpc(&other, names::FactoryVerb::UploadBegin),
            &begin,
        )
        .await;
    assert_eq!(spoofed.unwrap_err().kind(), Some(ErrorKind::Forbidden));

    // Removed with the job: once the job is gone from gf_jobs, the sweep removes its
    // chunks, its object infos and its index entry.
    let service = coord.part.as_ref().unwrap().service.clone();
    assert_eq!(gf_coordinator::artifacts::sweep_once(&service).await?, 0);
    service.store.jobs.purge(names::job_key(&id)).await?;
    assert_eq!(gf_coordinator::artifacts::sweep_once(&service).await?, 1);
    // (The job itself may still be found in the archive: it lists nothing.)
    let (status, _, body) = get(&router, &format!("/api/jobs/{id}/artifacts")).await;
    if status == StatusCode::OK {
        assert_eq!(
            serde_json::from_slice::<JobArtifacts>(&body)?,
            JobArtifacts::default()
        );
    } else {
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    let stream = js
        .get_stream(format!("OBJ_{}", names::OBJECT_ARTIFACTS))
        .await?;
    let left = futures::TryStreamExt::try_collect::<Vec<(String, usize)>>(
        stream
            .info_with_subjects(format!("$O.{}.C.{id}.>", names::OBJECT_ARTIFACTS))
            .await?,
    )
    .await?;
    assert!(left.is_empty(), "chunks left: {left:?}");
    assert!(objects.get(format!("{id}/1/report.txt")).await.is_err());
    // The other job's artifacts are untouched.
    assert_eq!(read_rpc(&rpc, over, "report.txt").await?, b"all good\n");

    worker.stop().await?;
    coord.stop().await?;
    Ok(())
}

/// A checkpoint written by a failed attempt is restored into the next attempt's
/// directory (with `GF_CHECKPOINT_RESTORED=1`), and is listed and downloadable.
#[tokio::test]
async fn the_next_attempt_starts_from_the_checkpoint() -> anyhow::Result<()> {
    init_tracing();
    let nats = NatsServer::start()?;
    let coord = Running::coordinator(coordinator_config(&nats.url())).await?;
    let scratch = tempfile::tempdir()?;
    let mut wcfg = worker_config(&nats.url(), 1);
    wcfg.scratch_dir = Some(scratch.path().to_path_buf());
    let worker = Running::worker(wcfg).await?;
    let rpc = RpcClient::new(
        async_nats::connect(nats.url()).await?,
        Duration::from_secs(5),
    );
    let router = http::router(coord.part.as_ref().unwrap().http_state.clone().unwrap());

    let script = r#"
if [ "$GF_CHECKPOINT_RESTORED" = 1 ]; then
  printf '{"resumed": "%s"}' "$(cat "$GF_CHECKPOINT_DIR/deep/state")" > "$GF_RESULT_FILE"
  exit 0
fi
mkdir -p "$GF_CHECKPOINT_DIR/deep" && echo 42 > "$GF_CHECKPOINT_DIR/deep/state"
exit 1
"#;
    let mut spec = JobSpec::command(["sh", "-c", script]);
    spec.max_attempts = 2;
    let reply: gf_schemas::rpc::SubmitReply = rpc.call(rpc::SUBMIT, &spec).await?;
    let id = reply.job_id;
    let rec = finished(&rpc, id).await?;
    assert_eq!(rec.state, JobState::Succeeded, "{rec:?}");
    assert_eq!(rec.attempts, 2);
    assert_eq!(rec.result, Some(serde_json::json!({"resumed": "42"})));

    let listed: JobArtifacts = rpc
        .call(rpc::ARTIFACT_LIST, &GetJobRequest { job_id: id })
        .await?;
    let ck = listed.checkpoint.expect("a checkpoint");
    // The second attempt restored it unchanged, so the first attempt's save stands.
    assert_eq!(ck.attempt, 1);
    let (status, headers, body) = get(&router, &format!("/api/jobs/{id}/checkpoint")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/x-tar");
    let mut archive = tar::Archive::new(&body[..]);
    let mut found = false;
    for entry in archive.entries()? {
        let mut entry = entry?;
        if entry.path()?.ends_with("deep/state") {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut entry, &mut s)?;
            assert_eq!(s, "42\n");
            found = true;
        }
    }
    assert!(found, "deep/state in the checkpoint archive");

    worker.stop().await?;
    coord.stop().await?;
    Ok(())
}
