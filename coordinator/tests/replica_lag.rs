//! Two coordinators reading the jobs bucket through a replica that lags, against a
//! real nats-server: every job still runs once and finishes at once, nothing waits
//! for a start deadline or a lease to expire.
//!
//! With a NATS cluster (R3 buckets), a KV get is a direct get that any replica may
//! answer, in practice the one on the server the coordinator is connected to, and a
//! follower can be behind the last acknowledged write. A completion reaching the
//! coordinator that did not write the job last was read from such a replica, found
//! the job still `pending` (or not there at all), and was refused as `lease lost`; the
//! job then sat `dispatched` until its start deadline and ran again (the ~30 s tail of
//! the compose load runs). A heartbeat could revoke a running job the same way.
//!
//! The lag is made deterministic here: once both coordinators have opened the bucket
//! (and cached that it allows direct gets), the stream stops answering direct gets
//! itself, and a stand-in replica answers them instead with each key's first
//! revision, i.e. a follower that has applied nothing since a job was created.

use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream;
use gf_schemas::names::{self, rpc};
use gf_schemas::rpc::SubmitReply;
use gf_schemas::{JobRecord, JobSpec, JobState};
use gf_testkit::{
    coordinator_config, eventually, init_tracing, lagging_replica, worker_config, NatsServer,
    Running,
};
use gf_worker::RpcClient;

#[tokio::test]
async fn completions_on_a_coordinator_reading_a_lagging_replica_are_not_refused(
) -> anyhow::Result<()> {
    init_tracing();
    let nats = NatsServer::start()?;
    // A job stuck behind a refused completion would wait a minute (its start deadline).
    let config = |id: &str| {
        let mut c = coordinator_config(&nats.url());
        c.id = id.into();
        c.lease_ttl = Duration::from_secs(60);
        c.claim_timeout = Duration::from_secs(60);
        c
    };
    let _a = Running::coordinator(config("coord-a")).await?;
    let _b = Running::coordinator(config("coord-b")).await?;
    let client = gf_testkit::connect(&nats.url()).await?;
    let js = jetstream::new(client.clone());
    // Both coordinators have opened the bucket (with direct gets on) and one leads.
    eventually(Duration::from_secs(20), "a scheduler leader", || async {
        let bucket = js.get_key_value(names::BUCKET_LEADER).await.ok()?;
        gf_coordinator::leader::current(&bucket).await.map(|_| ())
    })
    .await?;
    let _w = Running::worker(worker_config(&nats.url(), 4)).await?;
    gf_testkit::wait_active_workers(&js, 1, Duration::from_secs(20)).await?;

    // From now on only the stand-in replica answers the coordinators' direct gets.
    let answered = lagging_replica(client.clone(), js.clone(), names::BUCKET_JOBS).await?;

    let rpc = RpcClient::new(client.clone(), Duration::from_secs(10));
    let mut ids = Vec::new();
    for _ in 0..40 {
        let r: SubmitReply = rpc
            .call(rpc::SUBMIT, &JobSpec::command(["gf:noop"]))
            .await?;
        ids.push(r.job_id);
    }
    let jobs = js.get_key_value(names::BUCKET_JOBS).await?;
    let records = eventually(
        Duration::from_secs(20),
        "every job succeeded (a refused completion leaves its job waiting a minute)",
        || async {
            let all: Vec<JobRecord> = gf_coordinator::store::read_all_as(&jobs).await.ok()?;
            let done: Vec<JobRecord> = all
                .into_iter()
                .filter(|r| ids.contains(&r.id) && r.state == JobState::Succeeded)
                .collect();
            (done.len() == ids.len()).then_some(done)
        },
    )
    .await?;
    for r in &records {
        assert_eq!(
            r.history.len(),
            1,
            "job {} ran once, nothing taken back: {:?}",
            r.id,
            r.history
        );
        assert_eq!(r.attempts, 1);
    }
    assert!(
        answered.load(Ordering::Relaxed) > 0,
        "the coordinators read through the lagging replica"
    );
    Ok(())
}
