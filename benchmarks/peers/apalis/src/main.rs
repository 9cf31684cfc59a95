//! The load suite's apalis + Redis peer (see BENCHMARKS.md, "Peers"): `N` no-op tasks
//! pushed by a pipelined producer (batches of 64, 64 in flight) and run by `W` apalis
//! workers, each with its own Redis connection and `C` tasks at once, with
//! apalis-redis's defaults: task locking (leases, re-enqueued when a worker stops
//! heartbeating) and results persisted. The workers are woken by Redis pub/sub when
//! tasks are pushed (`RedisStorageFactory`, as apalis-redis's README shows).
//!
//! Two settings differ from the defaults, both because apalis-redis 1.0.0 needs them
//! to run a burst at all: a worker fetches only once registered by its first
//! heartbeat, so the heartbeat is every second (default 30 s; the workers start 1.5 s
//! before the measurement), and at most 4,096 tasks are outstanding (see
//! [`OUTSTANDING`]).
//!
//! `gf-peer-apalis REDIS_URL JOBS WORKERS CONCURRENCY` prints one JSON line:
//! `{"jobs":…,"seconds":…,"jobs_per_sec":…}`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apalis::prelude::*;
use apalis_redis::factory::RedisStorageFactory;
use apalis_redis::{Client, Config, RedisStorage};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, Semaphore};

#[derive(Debug, Clone, Deserialize, Serialize)]
struct Noop {
    n: u64,
}

/// Tasks per push (a pipelined batch, as the Gigafactory submitter sends 64 per request).
const BATCH: usize = 64;
/// Pushes in flight at once.
const IN_FLIGHT: usize = 64;

/// Tasks pushed and not yet run, at most: apalis-redis 1.0.0 moves every due task
/// from its scheduled set to the queue in one Lua `unpack` (each push is scheduled
/// "now"), which fails past about 8,000 and stops the workers for good, so the
/// producer keeps at most this many outstanding (the Gigafactory submitter has 4,096
/// in flight too: 64 requests of 64).
const OUTSTANDING: usize = 4096;

/// Completions so far, the signal for the last one, how many to expect, and the
/// producer's room (one permit per task it may push).
type Done = (Arc<AtomicUsize>, Arc<Notify>, usize, Arc<Semaphore>);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: gf-peer-apalis REDIS_URL JOBS WORKERS CONCURRENCY");
        std::process::exit(2);
    }
    let url = args[1].clone();
    let jobs: usize = args[2].parse()?;
    let workers: usize = args[3].parse()?;
    let concurrency: usize = args[4].parse()?;
    let config = Config::default().queue("gf-peer");
    let worker_config = config.clone().heartbeat_interval(Duration::from_secs(1));
    let done: Done = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(Notify::new()),
        jobs,
        Arc::new(Semaphore::new(OUTSTANDING)),
    );
    let finished = done.1.clone();
    let finished = finished.notified();
    let mut running = Vec::new();
    for i in 0..workers {
        // A factory per worker: its own (RESP3) connection, woken by Redis pub/sub
        // when tasks are pushed, as apalis-redis's README shows.
        let mut factory =
            RedisStorageFactory::new(Client::open(format!("{url}?protocol=resp3"))?).await?;
        let storage =
            BackendFactory::<Noop>::create_with_config(&mut factory, worker_config.clone())?;
        let worker = WorkerBuilder::new(format!("peer-{}-{i}", std::process::id()))
            .backend(storage)
            .data(done.clone())
            .concurrency(concurrency)
            .build(noop);
        running.push(tokio::spawn(worker.run()));
    }
    // A worker fetches only once registered (its first heartbeat).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let conn = apalis_redis::connect(url.clone()).await?;
    let producer: RedisStorage<Noop> = RedisStorage::new(conn).with_config(config.clone());
    let started = Instant::now();
    let batches: Vec<Vec<Noop>> = (0..jobs as u64)
        .collect::<Vec<_>>()
        .chunks(BATCH)
        .map(|c| c.iter().map(|n| Noop { n: *n }).collect())
        .collect();
    let pushed: Vec<Result<(), String>> = futures::stream::iter(batches)
        .map(|batch| {
            let mut producer = producer.clone();
            let room = done.3.clone();
            async move {
                room.acquire_many(batch.len() as u32)
                    .await
                    .map_err(|e| e.to_string())?
                    .forget();
                producer
                    .push_bulk(batch)
                    .await
                    .map_err(|e| format!("push: {e:?}"))
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    if let Some(Err(e)) = pushed.into_iter().find(|r| r.is_err()) {
        return Err(e.into());
    }
    if tokio::time::timeout(Duration::from_secs(120), finished)
        .await
        .is_err()
    {
        return Err(format!(
            "only {} of {jobs} tasks ran in 120 s",
            done.0.load(Ordering::Relaxed)
        )
        .into());
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{{\"jobs\":{jobs},\"seconds\":{seconds:.3},\"jobs_per_sec\":{:.1}}}",
        jobs as f64 / seconds
    );
    for r in running {
        r.abort();
    }
    Ok(())
}

async fn noop(_task: Noop, done: Data<Done>) -> Result<(), BoxDynError> {
    let (count, all_done, jobs, room) = &*done;
    room.add_permits(1);
    if count.fetch_add(1, Ordering::Relaxed) + 1 == *jobs {
        all_done.notify_one();
    }
    Ok(())
}
