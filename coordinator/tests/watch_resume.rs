//! Watches resume instead of replaying (issue 19), against a real nats-server: the
//! scheduler leader keeps its view across a NATS restart and applies only what changed
//! (an expiry marker included), replays when the stream no longer holds its resume
//! point, and the stats task resumes when the leader's view stops feeding it.
//!
//! What happened is read from the coordinator's own metrics:
//! `gf_watch_resumes_total{watch}` and `gf_watch_replays_total{watch}`. The recorder
//! is process-wide, so each test needs a process of its own (cargo-nextest, as
//! `scripts/test.sh` runs them).

use std::time::Duration;

use gf_coordinator::history::HistoryConfig;
use gf_coordinator::Coordinator;
use gf_schemas::{JobId, JobSpec, JobState};
use gf_testkit::{coordinator_config, eventually, init_tracing, NatsServer, Running};

/// The value of a counter or gauge series in the coordinator's `/metrics` text (0 when
/// absent). `labels` is the exact label set as rendered, e.g. `watch="leader_jobs"`.
fn metric(coord: &Running<Coordinator>, name: &str, labels: &str) -> f64 {
    let text = coord
        .part
        .as_ref()
        .and_then(|c| c.http_state.as_ref())
        .expect("http on")
        .metrics
        .render();
    let series = format!("{name}{{{labels}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Live (non-terminal) jobs in the leader's view, from the gauges it publishes.
fn live_in_view(coord: &Running<Coordinator>) -> f64 {
    JobState::ALL
        .iter()
        .filter(|s| !s.is_terminal())
        .map(|s| metric(coord, "gf_jobs", &format!("state=\"{}\"", s.as_str())))
        .sum()
}

fn leading(coord: &Running<Coordinator>) -> bool {
    coord
        .part
        .as_ref()
        .expect("running")
        .leader
        .is_leader
        .load(std::sync::atomic::Ordering::SeqCst)
}

async fn submit(coord: &Running<Coordinator>, n: usize) -> anyhow::Result<Vec<JobId>> {
    let service = &coord.part.as_ref().expect("running").service;
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(
            service
                .submit_spec(JobSpec::command(["true"]))
                .await?
                .job_id,
        );
    }
    Ok(ids)
}

/// The `/api/stats` counters (fed by the leader's view on the leader).
fn stats(coord: &Running<Coordinator>) -> gf_coordinator::stats::JobStats {
    let state = coord
        .part
        .as_ref()
        .and_then(|c| c.http_state.as_ref())
        .expect("http on");
    (*state.stats.current()).clone()
}

const RESUMES: &str = "gf_watch_resumes_total";
const REPLAYS: &str = "gf_watch_replays_total";

/// A NATS restart (same store) makes the leader re-open its watches: the jobs watch
/// resumes from the last revision its view applied, keeps the view, and applies what
/// changed meanwhile — new jobs and the expiry marker of a cancelled one — without a
/// second replay. After the stream is purged under it (no markers), the resume point
/// is gone: it replays, and the view drops the jobs that went.
#[tokio::test]
async fn leader_view_resumes_after_a_nats_restart_and_replays_when_the_stream_was_purged(
) -> anyhow::Result<()> {
    init_tracing();
    let mut nats = NatsServer::start()?;
    let mut cfg = coordinator_config(&nats.url());
    // Long enough that the lease outlives a restart of the server: the same term
    // re-opens its watches (a lost term would replay, by design).
    cfg.leader_ttl = Duration::from_secs(15);
    cfg.history = HistoryConfig {
        cancelled: Some(Duration::from_secs(2)),
        ..HistoryConfig::default()
    };
    let coord = Running::coordinator(cfg).await?;
    eventually(Duration::from_secs(30), "leadership", || async {
        leading(&coord).then_some(())
    })
    .await?;
    let ids = submit(&coord, 20).await?;
    eventually(
        Duration::from_secs(20),
        "20 live jobs in the view",
        || async { (live_in_view(&coord) == 20.0).then_some(()) },
    )
    .await?;
    let jobs = "watch=\"leader_jobs\"";
    assert_eq!(metric(&coord, REPLAYS, jobs), 1.0, "the term's first open");
    assert_eq!(metric(&coord, RESUMES, jobs), 0.0);

    nats.restart()?;
    eventually(
        Duration::from_secs(30),
        "the jobs watch to resume",
        || async { (metric(&coord, RESUMES, jobs) >= 1.0).then_some(()) },
    )
    .await?;
    assert!(leading(&coord), "the term survived the restart");
    // Changes after the resume point reach the kept view.
    submit(&coord, 5).await?;
    let service = &coord.part.as_ref().expect("running").service;
    service.cancel(&ids[0], None).await?;
    eventually(
        Duration::from_secs(20),
        "24 live jobs in the view",
        || async { (live_in_view(&coord) == 24.0).then_some(()) },
    )
    .await?;
    // The cancelled job's grace ends: its limit marker removes it from the counters.
    eventually(
        Duration::from_secs(20),
        "the cancelled job's expiry",
        || async {
            let s = stats(&coord);
            (s.by_state["cancelled"] == 0 && s.total == 24).then_some(())
        },
    )
    .await?;
    assert_eq!(
        metric(&coord, REPLAYS, jobs),
        1.0,
        "resumed, not replayed: {} resumes",
        metric(&coord, RESUMES, jobs)
    );
    assert_eq!(metric(&coord, "gf_watch_replay_timeouts_total", jobs), 0.0);

    // Every job removed from under the view with no marker: the stream no longer holds
    // the resume point, so the next open replays and the view follows the bucket.
    let client = async_nats::connect(nats.url()).await?;
    let js = async_nats::jetstream::new(client);
    js.get_stream("KV_gf_jobs").await?.purge().await?;
    assert_eq!(
        live_in_view(&coord),
        24.0,
        "a purge leaves no trace to watch"
    );
    nats.restart()?;
    eventually(
        Duration::from_secs(30),
        "a replay of the purged bucket",
        || async { (metric(&coord, REPLAYS, jobs) >= 2.0).then_some(()) },
    )
    .await?;
    eventually(Duration::from_secs(20), "an empty view", || async {
        (live_in_view(&coord) == 0.0 && stats(&coord).total == 0).then_some(())
    })
    .await?;
    coord.stop().await?;
    Ok(())
}

/// When the leader's view stops feeding the counters (the term is lost), the stats
/// task's own watch resumes from where it got to before the term instead of replaying,
/// and the counters stay right.
#[tokio::test]
async fn stats_watch_resumes_after_the_leader_stops_feeding_it() -> anyhow::Result<()> {
    init_tracing();
    let nats = NatsServer::start()?;
    let cfg = coordinator_config(&nats.url());
    let ttl = cfg.leader_ttl;
    let coord = Running::coordinator(cfg).await?;
    eventually(Duration::from_secs(30), "leadership", || async {
        leading(&coord).then_some(())
    })
    .await?;
    submit(&coord, 10).await?;
    eventually(Duration::from_secs(20), "10 jobs counted", || async {
        (stats(&coord).total == 10).then_some(())
    })
    .await?;
    let watch = "watch=\"stats_jobs\"";
    assert_eq!(metric(&coord, RESUMES, watch), 0.0);
    let replays = metric(&coord, REPLAYS, watch);
    assert!(replays <= 1.0, "{replays}");

    // Someone else takes the lease: the term ends at the next renewal and the stats
    // task watches on its own until the lease lapses and this coordinator leads again.
    let client = async_nats::connect(nats.url()).await?;
    let js = async_nats::jetstream::new(client);
    let leader = js.get_key_value(gf_schemas::names::BUCKET_LEADER).await?;
    let entry = leader
        .entry(gf_schemas::names::LEADER_KEY)
        .await?
        .expect("a leader");
    let mut value: serde_json::Value = serde_json::from_slice(&entry.value)?;
    value["holder"] = "intruder".into();
    leader
        .update(
            gf_schemas::names::LEADER_KEY,
            serde_json::to_vec(&value)?.into(),
            entry.revision,
        )
        .await?;
    // The term ends at the next renewal (every ttl/3); generous for a loaded machine.
    eventually(ttl * 10, "the stats watch to resume", || async {
        (metric(&coord, RESUMES, watch) >= 1.0).then_some(())
    })
    .await?;
    assert_eq!(metric(&coord, REPLAYS, watch), replays, "no second replay");
    submit(&coord, 3).await?;
    eventually(Duration::from_secs(20), "13 jobs counted", || async {
        (stats(&coord).total == 13).then_some(())
    })
    .await?;
    coord.stop().await?;
    Ok(())
}

/// A watch that cannot deliver its bucket within `watch_replay_timeout` is dropped and
/// re-opened after a backoff, resuming from what it delivered: with a timeout far
/// shorter than the replay of a few thousand jobs, the leader still ends up with all
/// of them in its view, through timeouts and resumes rather than endless replays.
#[tokio::test]
async fn a_slow_replay_times_out_and_resumes_where_it_got_to() -> anyhow::Result<()> {
    init_tracing();
    let nats = NatsServer::start()?;
    let n = 3000;
    {
        let client = async_nats::connect(nats.url()).await?;
        let js = async_nats::jetstream::new(client);
        let store = gf_coordinator::store::Store::open(js, 1).await?;
        let now = gf_schemas::Timestamp::now_local();
        let writes = (0..n).map(|_| {
            let rec = gf_schemas::JobRecord::new(JobId::new(), JobSpec::command(["true"]), now);
            let store = store.clone();
            async move { store.create_job(&rec).await }
        });
        let written: Vec<_> = futures::StreamExt::collect(futures::StreamExt::buffer_unordered(
            futures::stream::iter(writes),
            64,
        ))
        .await;
        assert!(written.iter().all(|w| w.is_ok()));
    }
    let mut cfg = coordinator_config(&nats.url());
    cfg.watch_replay_timeout = Duration::from_millis(20);
    let coord = Running::coordinator(cfg).await?;
    let jobs = "watch=\"leader_jobs\"";
    // Each attempt delivers ~20 ms worth and resumes after the shortest pause.
    eventually(Duration::from_secs(60), "every job in the view", || async {
        (live_in_view(&coord) == n as f64).then_some(())
    })
    .await?;
    let timeouts = metric(&coord, "gf_watch_replay_timeouts_total", jobs);
    let resumes = metric(&coord, RESUMES, jobs);
    assert!(timeouts >= 1.0, "the replay was not cut short: {timeouts}");
    assert!(resumes >= 1.0, "a timed-out watch resumes: {resumes}");
    assert!(
        metric(&coord, REPLAYS, jobs) <= 1.0,
        "only the first open replays"
    );
    coord.stop().await?;
    Ok(())
}
