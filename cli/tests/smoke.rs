mod common;

use std::time::Duration;

use common::*;
use gf_schemas::JobState;
use gf_testkit::NatsServer;

/// One job submitted over NATS runs on the one worker and succeeds with its result.
#[tokio::test]
async fn one_job_end_to_end() -> anyhow::Result<()> {
    init_tracing();
    let nats = NatsServer::start()?;
    let coord = Running::coordinator(coordinator_config(&nats.url())).await?;
    let worker = Running::worker(worker_config(&nats.url(), 2)).await?;
    let client = Client::connect(&nats).await?;
    let reply = client
        .submit(&sh(
            r#"echo hello; echo '{"answer": 42}' > "$GF_RESULT_FILE""#,
        ))
        .await?;
    let rec = client
        .wait_terminal(reply.job_id, Duration::from_secs(20))
        .await?;
    assert_eq!(rec.state, JobState::Succeeded, "{rec:?}");
    assert_eq!(rec.result, Some(serde_json::json!({"answer": 42})));
    assert_eq!(rec.attempts, 1);
    assert_eq!(rec.history[0].worker, worker.id());
    worker.stop().await?;
    coord.stop().await?;
    Ok(())
}
