//! Retention against a real `nats-server`: a finished job leaves `gf_jobs` when its
//! grace period ends, by the server's clock; a requeue within it brings the job back;
//! the terminal write stays revision-checked; an old bucket is converted in place.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use gf_schemas::{names, ErrorKind, JobId, JobRecord, JobSpec, JobState, Timestamp};

use super::*;
use crate::clock::ServerClock;
use crate::events::EventSink;
use crate::store::{encode, Store};
use crate::{CoordinatorConfig, Service};

/// Polls `cond` until it holds or `within` passes.
async fn eventually<F, Fut>(within: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if cond().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn short() -> HistoryConfig {
    HistoryConfig {
        succeeded: Some(Duration::from_secs(1)),
        cancelled: Some(Duration::from_secs(1)),
        rejected: Some(Duration::from_secs(1)),
        dead: None,
        archive: DAY,
        ..HistoryConfig::default()
    }
}

async fn service(
    nats: &gf_testkit::NatsServer,
    history: HistoryConfig,
) -> anyhow::Result<(Service, Store, jetstream::Context)> {
    let client = async_nats::connect(nats.url()).await?;
    let js = jetstream::new(client.clone());
    let store = Store::open(js.clone(), 1)
        .await?
        .with_history(history.clone());
    let (events, _task) = EventSink::start(client.clone(), "test".into());
    let clock = ServerClock::anchored(Timestamp::now_local());
    let config = Arc::new(CoordinatorConfig {
        history,
        ..Default::default()
    });
    let service = Service::new(store.clone(), client, clock, events, config)?;
    Ok((service, store, js))
}

/// A coordinator on `nats` with `history`, until the returned token is cancelled and
/// the task joined: alone, it leads, so its scheduler's view feeds the archiver.
async fn archiving_coordinator(
    nats: &gf_testkit::NatsServer,
    history: &HistoryConfig,
) -> anyhow::Result<(
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
)> {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let config = CoordinatorConfig {
        nats_url: nats.url(),
        http_addr: None,
        history: history.clone(),
        ..Default::default()
    };
    let coordinator = crate::start(config, shutdown.clone()).await?;
    Ok((shutdown, tokio::spawn(coordinator.join())))
}

/// Criterion 2 of issue 19 with a short grace: the store keeps only live jobs and
/// those inside their grace period. A cancelled job is removed by the server (a
/// watcher sees the removal); a requeue within the grace period makes it live again
/// and nothing removes it; an outcome kept `never` stays.
#[tokio::test]
async fn finished_jobs_leave_the_store_after_their_grace_period() -> anyhow::Result<()> {
    let nats = gf_testkit::NatsServer::start()?;
    let (service, store, _js) = service(&nats, short()).await?;
    let mut watch = store.jobs.watch_all().await?;

    let gone = service
        .submit_spec(JobSpec::command(["true"]))
        .await?
        .job_id;
    let back = service
        .submit_spec(JobSpec::command(["true"]))
        .await?
        .job_id;
    let live = service
        .submit_spec(JobSpec::command(["true"]))
        .await?
        .job_id;
    for id in [gone, back] {
        service.cancel(&id, None).await?;
    }
    // Within the grace period the finished records are still there, and a requeue
    // brings one back (an ordinary write: no TTL is left on it).
    assert_eq!(service.get_job(&back).await?.state, JobState::Cancelled);
    service.requeue(&back).await?;

    let expired = eventually(Duration::from_secs(15), || async {
        matches!(store.load_job(&gone).await, Ok(None))
    })
    .await;
    assert!(expired, "the cancelled job outlived its 1s grace period");
    // The watcher was told (the server's marker reads as a purge).
    let mut purged = false;
    while let Ok(Some(Ok(e))) = tokio::time::timeout(Duration::from_secs(5), watch.next()).await {
        if e.key == gone.to_string() && e.operation == kv::Operation::Purge {
            purged = true;
            break;
        }
    }
    assert!(purged, "no watcher saw the finished job leave");
    // Two grace periods later the requeued and the live job are still there.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(service.get_job(&back).await?.state, JobState::Pending);
    assert_eq!(service.get_job(&live).await?.state, JobState::Pending);
    let err = service.requeue(&gone).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound);
    Ok(())
}

/// The terminal write is revision-checked like any other: a stale revision is refused
/// as a conflict and changes nothing.
#[tokio::test]
async fn the_terminal_write_is_revision_checked() -> anyhow::Result<()> {
    let nats = gf_testkit::NatsServer::start()?;
    let (_service, store, js) = service(&nats, short()).await?;
    let mut rec = JobRecord::new(
        JobId::new(),
        JobSpec::command(["true"]),
        Timestamp::now_local(),
    );
    let rev = store.create_job(&rec).await?;
    rec.state = JobState::Succeeded;
    let key = names::job_key(&rec.id);
    let stale = write_terminal(&js, &key, encode(&rec), rev + 7, DAY).await;
    assert!(matches!(stale, Err(StoreError::Conflict(_))), "{stale:?}");
    assert_eq!(
        store.load_job(&rec.id).await?.map(|(r, _)| r.state),
        Some(JobState::Pending)
    );
    let new = store.update_job(&rec, rev).await?;
    assert!(new > rev);
    assert_eq!(
        store.load_job(&rec.id).await?.map(|(r, _)| r.state),
        Some(JobState::Succeeded)
    );
    Ok(())
}

/// A repeat of an idempotent submission after its job finished and left the store is
/// refused, not run again.
#[tokio::test]
async fn an_idempotent_repeat_after_expiry_does_not_run_the_job_again() -> anyhow::Result<()> {
    let nats = gf_testkit::NatsServer::start()?;
    let (service, store, _js) = service(&nats, short()).await?;
    let mut spec = JobSpec::command(["true"]);
    spec.idempotency_key = Some("ticket-7".into());
    let first = service.submit_spec(spec.clone()).await?;
    service.cancel(&first.job_id, None).await?;
    let expired = eventually(Duration::from_secs(15), || async {
        matches!(store.load_job(&first.job_id).await, Ok(None))
    })
    .await;
    assert!(expired);
    let err = service.submit_spec(spec).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Conflict, "{err:?}");
    assert!(err.message.contains(&first.job_id.to_string()));
    Ok(())
}

/// A bucket from the previous version (no per-message TTLs, no markers) is converted
/// when a coordinator of this version opens it; its records stay.
#[tokio::test]
async fn an_old_jobs_bucket_is_converted_in_place() -> anyhow::Result<()> {
    let nats = gf_testkit::NatsServer::start()?;
    let client = async_nats::connect(nats.url()).await?;
    let js = jetstream::new(client);
    let old = js
        .create_key_value(kv::Config {
            bucket: names::BUCKET_JOBS.into(),
            history: 1,
            ..Default::default()
        })
        .await?;
    let rec = JobRecord::new(
        JobId::new(),
        JobSpec::command(["true"]),
        Timestamp::now_local(),
    );
    old.create(names::job_key(&rec.id), encode(&rec)).await?;
    let cfg = js
        .get_stream("KV_gf_jobs")
        .await?
        .info()
        .await?
        .config
        .clone();
    assert!(!cfg.allow_message_ttl);

    let store = Store::open(js.clone(), 1).await?.with_history(short());
    let cfg = js
        .get_stream("KV_gf_jobs")
        .await?
        .info()
        .await?
        .config
        .clone();
    assert!(cfg.allow_message_ttl);
    assert_eq!(cfg.subject_delete_marker_ttl, Some(LIMIT_MARKER_TTL));
    assert_eq!(cfg.max_messages_per_subject, 1);
    assert!(
        !ensure_bucket_settings(&js).await?,
        "a second start changes nothing"
    );
    let (mut r, rev) = store.load_job(&rec.id).await?.expect("kept");
    r.state = JobState::Cancelled;
    store.update_job(&r, rev).await?;
    let expired = eventually(Duration::from_secs(15), || async {
        matches!(store.load_job(&rec.id).await, Ok(None))
    })
    .await;
    assert!(expired, "a converted bucket expires finished jobs");
    Ok(())
}

/// Criterion 3 of issue 19: jobs that finish while no archiver runs (no coordinator
/// leads, or this is the first start on an old store) are all archived once a leader
/// starts, within their grace period, from the position the last leader stored; after
/// they leave the live store they are found by id in the archive, and one can be
/// requeued from there.
#[tokio::test]
async fn the_archiver_catches_up_and_finished_jobs_are_found_after_expiry() -> anyhow::Result<()> {
    let nats = gf_testkit::NatsServer::start()?;
    let history = HistoryConfig {
        cancelled: Some(Duration::from_secs(4)),
        ..short()
    };
    let (service, store, js) = service(&nats, history.clone()).await?;
    archive::ensure_stream(&js, 1, history.archive).await?;

    // A first leader archives, then stops before the rest finish.
    let (first, task) = archiving_coordinator(&nats, &history).await?;
    let mut ids = Vec::new();
    for _ in 0..10 {
        let id = service
            .submit_spec(JobSpec::command(["true"]))
            .await?
            .job_id;
        service.cancel(&id, None).await?;
        ids.push(id);
    }
    let all_archived = |ids: Vec<JobId>| {
        let js = js.clone();
        async move {
            for id in &ids {
                if !matches!(archive::find(&js, id).await, Ok(Some(_))) {
                    return false;
                }
            }
            true
        }
    };
    assert!(eventually(Duration::from_secs(10), || all_archived(ids.clone())).await);
    first.cancel();
    task.await??;
    let position = archive::position(&js).await?;
    assert!(position > 0, "the first leader stored how far it archived");
    for _ in 0..20 {
        let id = service
            .submit_spec(JobSpec::command(["true"]))
            .await?
            .job_id;
        service.cancel(&id, None).await?;
        ids.push(id);
    }
    assert!(
        archive::lag(&js).await? > Duration::ZERO,
        "writes wait for the archiver"
    );
    let (second, task) = archiving_coordinator(&nats, &history).await?;
    assert!(
        eventually(Duration::from_secs(10), || all_archived(ids.clone())).await,
        "a finished job is missing from the archive"
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            archive::lag(&js).await.ok() == Some(Duration::ZERO)
        })
        .await
    );
    assert!(archive::position(&js).await? > position);

    // Past the grace period: gone from the live store, found in the archive.
    let gone = eventually(Duration::from_secs(20), || async {
        for id in &ids {
            if !matches!(store.load_job(id).await, Ok(None)) {
                return false;
            }
        }
        true
    })
    .await;
    assert!(gone);
    for id in &ids {
        assert_eq!(service.get_job(id).await?.state, JobState::Cancelled);
    }
    // One copy per job: the archive holds exactly these.
    let info = js
        .get_stream(names::STREAM_ARCHIVE)
        .await?
        .info()
        .await?
        .state
        .clone();
    assert_eq!(info.messages, ids.len() as u64);

    // No leader from here on: with no worker it would write the requeued job blocked.
    second.cancel();
    task.await??;
    // A requeue after the grace period brings the job back from the archive, and its
    // archived copy goes.
    let back = ids[0];
    assert_eq!(service.requeue(&back).await?.state, JobState::Pending);
    assert_eq!(
        store.load_job(&back).await?.map(|(r, _)| r.state),
        Some(JobState::Pending)
    );
    assert!(archive::find(&js, &back).await?.is_none());
    // A new job may depend on an archived one.
    let mut spec = JobSpec::command(["true"]);
    spec.depends_on = vec![ids[1]];
    service.submit_spec(spec).await?;
    Ok(())
}

#[test]
fn archive_subjects_partition_by_creation_day() {
    let id = JobId::new();
    let day = archive::day_of(&id);
    assert_eq!(day.len(), 8);
    assert_eq!(
        day,
        chrono::Utc::now().format("%Y%m%d").to_string(),
        "a new id was made today (UTC)"
    );
    let s = names::archive(&day, JobState::Dead, "gpu", &id);
    assert_eq!(s, format!("gf.archive.{day}.dead.gpu.{id}"));
    assert_eq!(
        names::parse_archive(&s),
        Some((day.as_str(), "dead", "gpu", id))
    );
    assert_eq!(
        names::archive_job(&day, &id),
        format!("gf.archive.{day}.*.*.{id}")
    );
}

/// Pages every matching job once: live ones from the live store, finished ones from it
/// within their grace period and from the archive after it, with a cursor across both.
#[tokio::test]
async fn listing_pages_the_live_store_then_the_archive() -> anyhow::Result<()> {
    use gf_schemas::rpc::JobListRequest;
    let nats = gf_testkit::NatsServer::start()?;
    // Long enough for the leader started below to archive them first.
    let history = HistoryConfig {
        cancelled: Some(Duration::from_secs(6)),
        ..short()
    };
    let (service, store, js) = service(&nats, history.clone()).await?;
    archive::ensure_stream(&js, 1, history.archive).await?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (index, _feed, stats_task) = crate::stats::start(
        store.jobs.clone(),
        Duration::from_secs(30),
        shutdown.clone(),
    );
    let _ = service.jobs_index.set(index.clone());

    let mut live = Vec::new();
    for _ in 0..5 {
        live.push(
            service
                .submit_spec(JobSpec::command(["true"]))
                .await?
                .job_id,
        );
    }
    let mut done = Vec::new();
    for _ in 0..6 {
        let id = service
            .submit_spec(JobSpec::command(["true"]))
            .await?
            .job_id;
        service.cancel(&id, None).await?;
        done.push(id);
    }
    let all_pages = |state: JobState, limit: usize| {
        let service = &service;
        async move {
            let mut seen = Vec::new();
            let mut cursor = None;
            let mut total = 0;
            for _ in 0..20 {
                let page = service
                    .list_jobs(JobListRequest {
                        state: Some(state),
                        cursor: cursor.clone(),
                        limit: Some(limit),
                        ..Default::default()
                    })
                    .await
                    .expect("page");
                total = page.total;
                assert!(page.jobs.len() <= limit);
                seen.extend(page.jobs.iter().map(|r| r.id));
                match page.next_cursor {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
            (seen, total)
        }
    };
    let sorted = |mut v: Vec<JobId>| {
        v.sort();
        v
    };
    assert!(
        eventually(Duration::from_secs(10), || async {
            all_pages(JobState::Pending, 2).await.0.len() == 5
        })
        .await
    );
    let (pending, total) = all_pages(JobState::Pending, 2).await;
    assert_eq!((sorted(pending.clone()), total), (sorted(live.clone()), 5));
    let mut newest_first = live.clone();
    newest_first.reverse();
    assert_eq!(pending, newest_first, "newest first");

    // A leader archives (started only now: with no worker it writes pending jobs
    // blocked, and the pages above are of pending ones).
    let (archiving, archiver) = archiving_coordinator(&nats, &history).await?;
    // Within the grace period: from the live store, each once (also archived by now).
    assert!(
        eventually(Duration::from_secs(10), || async {
            all_pages(JobState::Cancelled, 4).await.0.len() == 6
        })
        .await
    );
    let (cancelled, total) = all_pages(JobState::Cancelled, 4).await;
    assert_eq!((sorted(cancelled), total), (sorted(done.clone()), 6));
    // After it: from the archive, each once; none counted in the live store.
    let expired = eventually(Duration::from_secs(20), || async {
        index
            .matching(Some(JobState::Cancelled), None, None, None, 0)
            .1
            == 0
    })
    .await;
    assert!(expired);
    let (archived, total) = all_pages(JobState::Cancelled, 4).await;
    assert_eq!((sorted(archived), total), (sorted(done.clone()), 0));
    // Filters that match nothing in the archive end the paging.
    let none = service
        .list_jobs(JobListRequest {
            state: Some(JobState::Dead),
            ..Default::default()
        })
        .await?;
    assert!(none.jobs.is_empty() && none.next_cursor.is_none());
    let bad = service
        .list_jobs(JobListRequest {
            cursor: Some("a.x.1".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.kind, ErrorKind::Invalid);
    shutdown.cancel();
    archiving.cancel();
    archiver.await??;
    stats_task.await?;
    Ok(())
}
