//! Artifacts and checkpoints from the outside: real `gf worker` processes on a real
//! nats-server. A job's worker is killed (SIGKILL) mid-count and the job finishes on
//! another worker from its last checkpoint; `gf artifacts` lists and downloads what a
//! job left, byte for byte. The coordinator runs in the test (on a multi-threaded
//! runtime, so it keeps answering while the test waits for a `gf` process).

mod common;

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use common::*;
use gf_schemas::artifact::{ArtifactReadReply, ArtifactReadRequest, JobArtifacts};
use gf_schemas::names::rpc;
use gf_schemas::{JobId, JobState};
use gf_testkit::{eventually, NatsServer};
use nix::sys::signal::Signal;

/// Counts to 100 from its checkpoint (0 without one), one step at a time, writing its
/// progress to `$GF_CHECKPOINT_DIR/progress` (atomically: write, then rename, since the
/// worker may save the directory at any moment) and each step to `$DIR/counted`. Its
/// first attempt stops at 60 and waits there, so the worker is killed at exactly 60;
/// `exec` keeps the waiting process the one the kernel kills with its worker.
const COUNT_TO_100: &str = r#"
i=0
if [ "$GF_CHECKPOINT_RESTORED" = 1 ]; then i=$(cat "$GF_CHECKPOINT_DIR/progress"); fi
start=$i
while [ "$i" -lt 100 ]; do
  i=$((i + 1))
  echo "$i" > "$GF_CHECKPOINT_DIR/progress.tmp"
  mv "$GF_CHECKPOINT_DIR/progress.tmp" "$GF_CHECKPOINT_DIR/progress"
  echo "$GF_ATTEMPT $i" >> "$DIR/counted"
  if [ "$i" = 60 ] && [ "$GF_ATTEMPT" = 1 ]; then exec sleep 600; fi
done
printf '{"started_from": %s, "reached": %s}' "$start" "$i" > "$GF_RESULT_FILE"
"#;

/// The job's saved checkpoint, read over the RPC plane as `gf artifacts` reads it.
async fn saved_checkpoint(client: &Client, id: JobId) -> anyhow::Result<Vec<u8>> {
    let mut req = ArtifactReadRequest {
        job_id: id,
        name: String::new(),
        attempt: None,
        checkpoint: true,
        after: None,
    };
    let mut out = Vec::new();
    let mut read = 0;
    loop {
        let r: ArtifactReadReply = client.rpc.call(rpc::ARTIFACT_READ, &req).await?;
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

/// The `progress` file in a checkpoint archive.
fn progress(archive: &[u8]) -> anyhow::Result<Option<u32>> {
    for entry in tar::Archive::new(archive).entries()? {
        let mut entry = entry?;
        if entry.path()?.file_name() == Some("progress".as_ref()) {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut entry, &mut s)?;
            return Ok(Some(s.trim().parse()?));
        }
    }
    Ok(None)
}

fn scratch_args(dir: &Path) -> Vec<String> {
    vec!["--scratch-dir".into(), dir.display().to_string()]
}

/// A job counting to 100 whose worker process is SIGKILLed at 60 (once its checkpoint
/// at 60 is saved, at a lease renewal) finishes on another worker, which started it
/// from 60: the second attempt counts 61..=100 and nothing before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_job_resumes_from_its_checkpoint_on_another_worker() -> anyhow::Result<()>
{
    init_tracing();
    let nats = NatsServer::start()?;
    // Lease 2 s: the worker renews (and saves a changed checkpoint) every ~0.7 s.
    let coord = Running::coordinator(coordinator_config(&nats.url())).await?;
    let client = Client::connect(&nats).await?;
    let dir = tempfile::tempdir()?;
    let scratch = dir.path().join("scratch");
    let args = scratch_args(&scratch);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let victim = WorkerProcess::spawn(&nats.url(), "victim", &args)?;
    wait_workers(&client, 1).await?;
    let mut spec = sh(COUNT_TO_100);
    spec.env
        .insert("DIR".into(), dir.path().display().to_string());
    let id = client.submit(&spec).await?.job_id;

    // Killed only once the checkpoint at 60 is stored: a renewal saved it.
    eventually(
        Duration::from_secs(30),
        "the checkpoint at 60 to be saved",
        || async {
            let archive = saved_checkpoint(&client, id).await.ok()?;
            (progress(&archive).ok()?? == 60).then_some(())
        },
    )
    .await?;
    let rec = client.job(id).await?;
    assert_eq!(rec.state, JobState::Running, "{rec:?}");
    assert_eq!(rec.history.last().unwrap().worker.as_str(), "victim");
    victim.signal(Signal::SIGKILL)?;

    let rescuer = WorkerProcess::spawn(&nats.url(), "rescuer", &args)?;
    let rec = client.wait_terminal(id, Duration::from_secs(60)).await?;
    assert_eq!(rec.state, JobState::Succeeded, "{rec:?}");
    assert_eq!(rec.history.len(), 2, "{rec:?}");
    assert_eq!(rec.history[0].worker.as_str(), "victim");
    assert!(
        rec.history[0]
            .ended_because
            .as_deref()
            .unwrap_or_default()
            .contains("lease expired"),
        "{rec:?}"
    );
    assert_eq!(rec.history[1].worker.as_str(), "rescuer");
    assert_eq!(
        rec.result,
        Some(serde_json::json!({"started_from": 60, "reached": 100}))
    );
    // Every step counted once: 1..=60 by the first attempt, 61..=100 by the second.
    let counted = std::fs::read_to_string(dir.path().join("counted"))?;
    let expected: Vec<String> = (1..=100)
        .map(|i| format!("{} {i}", if i <= 60 { 1 } else { 2 }))
        .collect();
    assert_eq!(counted.lines().collect::<Vec<_>>(), expected);

    // The checkpoint the second attempt left at its end, through `gf artifacts`.
    let tar_file = dir.path().join("checkpoint.tar");
    let (code, _, err) = gf(
        &nats.url(),
        &[
            "artifacts",
            &id.to_string(),
            "--checkpoint",
            "-o",
            tar_file.to_str().unwrap(),
        ],
    )?;
    assert_eq!(code, 0, "{err}");
    assert_eq!(progress(&std::fs::read(&tar_file)?)?, Some(100));
    let (_, out, _) = gf(&nats.url(), &["artifacts", &id.to_string(), "--json"])?;
    let listed: JobArtifacts = serde_json::from_str(&out)?;
    let ck = listed.checkpoint.expect("a checkpoint");
    assert_eq!((ck.attempt, ck.epoch), (2, rec.history[1].epoch));
    drop(rescuer);
    coord.stop().await?;
    Ok(())
}

/// `gf artifacts ID` lists what a job left (table and `--json`), `--get NAME -o FILE`
/// and `--get NAME` to standard output download it byte for byte, and an unknown name
/// or a job without a checkpoint is a clear error and a failing exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gf_artifacts_lists_and_downloads() -> anyhow::Result<()> {
    init_tracing();
    let nats = NatsServer::start()?;
    let coord = Running::coordinator(coordinator_config(&nats.url())).await?;
    let client = Client::connect(&nats).await?;
    let dir = tempfile::tempdir()?;
    let scratch = dir.path().join("scratch");
    let args = scratch_args(&scratch);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let _worker = WorkerProcess::spawn(&nats.url(), "w1", &args)?;
    wait_workers(&client, 1).await?;

    // Several chunks of every byte value, one small text file.
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("out"))?;
    let big: Vec<u8> = (0..400_000u32).map(|i| (i * 31 % 256) as u8).collect();
    std::fs::write(src.join("out/data.bin"), &big)?;
    std::fs::write(src.join("report.txt"), "all good\n")?;
    let id = client
        .submit(&sh(&format!(
            "cp -r {}/. \"$GF_ARTIFACTS_DIR\"/",
            src.display()
        )))
        .await?
        .job_id;
    let rec = client.wait_terminal(id, Duration::from_secs(30)).await?;
    assert_eq!(rec.state, JobState::Succeeded, "{rec:?}");
    let id = id.to_string();

    let (code, out, err) = gf(&nats.url(), &["artifacts", &id])?;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        row(&out, "NAME")[..3],
        ["NAME", "ATTEMPT", "BYTES"],
        "{out}"
    );
    assert_eq!(row(&out, "out/data.bin")[1..3], ["1", "400000"], "{out}");
    assert_eq!(row(&out, "report.txt")[1..3], ["1", "9"], "{out}");

    let (code, out, _) = gf(&nats.url(), &["artifacts", &id, "--json"])?;
    assert_eq!(code, 0);
    let listed: JobArtifacts = serde_json::from_str(&out)?;
    let names: Vec<&str> = listed.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["out/data.bin", "report.txt"]);
    assert_eq!(listed.total_bytes, 400_009);
    assert!(listed.checkpoint.is_none());

    let file = dir.path().join("data.bin");
    let (code, _, err) = gf(
        &nats.url(),
        &[
            "artifacts",
            &id,
            "--get",
            "out/data.bin",
            "-o",
            file.to_str().unwrap(),
        ],
    )?;
    assert_eq!(code, 0, "{err}");
    assert!(std::fs::read(&file)? == big, "out/data.bin differs");
    let (code, out, _) = gf(&nats.url(), &["artifacts", &id, "--get", "report.txt"])?;
    assert_eq!((code, out.as_str()), (0, "all good\n"));

    let (code, _, err) = gf(&nats.url(), &["artifacts", &id, "--get", "nope.txt"])?;
    assert_ne!(code, 0);
    assert!(err.contains("has no artifact `nope.txt`"), "{err}");
    let (code, _, err) = gf(&nats.url(), &["artifacts", &id, "--checkpoint"])?;
    assert_ne!(code, 0);
    assert!(err.contains("has no checkpoint"), "{err}");
    coord.stop().await?;
    Ok(())
}

/// The whitespace-separated cells of the table row naming `name`.
fn row<'a>(table: &'a str, name: &str) -> Vec<&'a str> {
    table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|r| r.first() == Some(&name))
        .unwrap_or_default()
}
