//! The Gigafactory coordinator.
//!
//! Accepts jobs (NATS `gf.rpc.submit`, HTTP `POST /api/jobs`), keeps job state in the
//! `gf_jobs` bucket with revision-checked writes, schedules and dispatches ready jobs
//! to capability subjects (one leader among replicas), reaps expired leases by server
//! time, and serves the RPC plane workers use (claim, renew, complete, release).
//!
//! [`start`] builds and starts every part; [`run`] also waits for it to stop.

pub mod artifacts;
pub mod auth;
pub mod bridged;
pub mod clock;
pub mod config;
pub mod consumers;
pub mod cron;
pub mod dispatch;
pub mod error;
pub mod events;
pub mod fsm;
pub mod handoff;
pub mod history;
pub mod http;
pub mod identity;
pub mod jobmap;
pub mod lane;
pub mod leader;
pub mod manifest;
pub mod memory;
pub mod metrics;
pub mod outcomes;
pub mod plan;
pub mod profiles;
pub mod recommend;
pub mod rpc;
pub mod scheduler;
pub mod score;
pub mod service;
pub mod stats;
pub mod store;
pub mod watch;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use gf_schemas::Timestamp;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::CoordinatorConfig;
pub use error::StoreError;
pub use service::Service;

/// A started coordinator.
pub struct Coordinator {
    pub http_addr: Option<SocketAddr>,
    /// What the HTTP router is built from, so tests can drive `http::router` directly.
    pub http_state: Option<http::AppState>,
    pub service: Arc<Service>,
    pub leader: Arc<scheduler::LeaderStatus>,
    shutdown: CancellationToken,
    rpc: JoinHandle<anyhow::Result<()>>,
    http: Option<JoinHandle<anyhow::Result<()>>>,
    scheduler: JoinHandle<()>,
    events: events::EventTask,
    stats: JoinHandle<()>,
    archiver: JoinHandle<()>,
    outcomes: JoinHandle<()>,
    bridge: gf_bridge::BridgeTask,
    callout: Option<auth::CalloutTask>,
    artifact_sweep: JoinHandle<()>,
}

/// Connects to NATS, creates or checks buckets and streams, and starts the RPC plane,
/// the scheduler/reaper and the HTTP API. Everything stops when `shutdown` fires; call
/// [`Coordinator::join`] to wait for the ordered shutdown to finish.
pub async fn start(
    config: CoordinatorConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<Coordinator> {
    let config = Arc::new(config);
    // The recorder goes in before any part starts: a metric recorded earlier goes to
    // no recorder and is lost, and a fresh leader sets `gf_scheduler_leader` once, as
    // soon as the scheduler task wins the (empty) leader key.
    let metrics_handle = config.http_addr.map(|_| {
        let handle = gf_telemetry::install("coordinator");
        metrics::init_counters();
        handle
    });
    let (reconnect_tx, reconnect_rx) = tokio::sync::watch::channel(0u64);
    let client = auth::connect_options(&config.nats_url, config.security.as_ref())
        .name(format!("gf-coordinator {}", config.id))
        .event_callback(move |event| {
            let tx = reconnect_tx.clone();
            async move {
                tracing::info!(%event, "nats");
                if matches!(event, async_nats::Event::Connected) {
                    tx.send_modify(|n| *n += 1);
                }
            }
        })
        .connect(&config.nats_url)
        .await
        .with_context(|| format!("cannot connect to NATS at {}", config.nats_url))?;
    let js = async_nats::jetstream::new(client.clone());
    let store = store::Store::open(js.clone(), config.replicas)
        .await
        .context("cannot create or open the JetStream buckets and streams")?
        .with_history(config.history.clone());
    history::archive::ensure_stream(&js, config.replicas, config.history.archive)
        .await
        .context("cannot create or update the archive stream")?;
    history::ensure_log_retention(&js, &config.history)
        .await
        .context("cannot set the retention of the logs and events streams")?;
    let clock = clock::ServerClock::anchored(Timestamp::now_local());
    if let Err(e) = clock
        .sync(&store.leader, &format!("clock.{}", config.id))
        .await
    {
        tracing::warn!(error = %e, "first clock sync failed; retrying in the scheduler loop");
    }
    let (events, events_task) = events::EventSink::start(client.clone(), config.id.clone());
    let (factories, callout) = match &config.security {
        Some(security) => {
            let (f, task) = auth::start(
                security,
                &config.nats_url,
                config.replicas,
                &js,
                client.clone(),
                events.clone(),
                shutdown.clone(),
            )
            .await?;
            (Some(f), Some(task))
        }
        None => (None, None),
    };
    let mut service = Service::new(store, client, clock, events, config.clone())?;
    service.factories = factories;
    let service = Arc::new(service);
    let leader = Arc::new(scheduler::LeaderStatus::default());
    let artifacts =
        artifacts::Artifacts::open(js.clone(), config.replicas, config.artifacts.clone())
            .await
            .context("cannot create or open the artifact store")?;
    let _ = service.artifacts.set(artifacts);
    let artifact_sweep = tokio::spawn(artifacts::sweep(
        service.clone(),
        leader.clone(),
        shutdown.clone(),
    ));

    let bridge = bridged::start(&service, shutdown.clone())
        .await
        .context("cannot start the tracker bridge")?;
    let (stats, stats_feed, stats_task) = stats::start(
        service.store.jobs.clone(),
        config.watch_replay_timeout,
        shutdown.clone(),
    );
    let (archiver, archiver_task) = history::archive::start(js.clone(), shutdown.clone());
    let (outcomes, outcomes_task) = outcomes::start(js.clone(), shutdown.clone());
    let _ = service.jobs_index.set(stats.clone());
    let rpc = tokio::spawn(rpc::serve(service.clone(), shutdown.clone()));
    let scheduler = tokio::spawn(scheduler::run(
        service.clone(),
        leader.clone(),
        stats_feed,
        archiver,
        outcomes,
        reconnect_rx,
        shutdown.clone(),
    ));
    // Both or neither: the handle exists exactly when there is an address.
    let (http_addr, http, http_state) = match config.http_addr.zip(metrics_handle) {
        Some((addr, handle)) => {
            let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
                format!("cannot listen on {addr} (set --http-addr or GF_HTTP_ADDR)")
            })?;
            let bound = listener.local_addr()?;
            let state = http::AppState {
                service: service.clone(),
                leader: leader.clone(),
                started: Instant::now(),
                metrics: handle,
                stats,
                shutdown: shutdown.clone(),
                auth: Arc::new(http::Auth::new(&config.auth)),
            };
            if !config.auth.enabled {
                tracing::warn!(
                    "HTTP API authentication is disabled: anyone who can reach {bound} may act"
                );
            }
            let token = shutdown.clone();
            let router = http::router(state.clone());
            let task = tokio::spawn(async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(token.cancelled_owned())
                    .await
                    .map_err(anyhow::Error::from)
            });
            (Some(bound), Some(task), Some(state))
        }
        None => {
            drop(stats);
            (None, None, None)
        }
    };
    tracing::info!(id = %config.id, http = ?http_addr, nats = %config.nats_url, "coordinator started");
    Ok(Coordinator {
        http_addr,
        http_state,
        service,
        leader,
        shutdown,
        rpc,
        http,
        scheduler,
        events: events_task,
        stats: stats_task,
        archiver: archiver_task,
        outcomes: outcomes_task,
        bridge,
        callout,
        artifact_sweep,
    })
}

impl Coordinator {
    /// Waits for the shutdown, in order: intake (RPC, HTTP) drains first, then the
    /// scheduler steps down, then the bridge's echo tasks stop, then the audit trail
    /// is flushed.
    pub async fn join(self) -> anyhow::Result<()> {
        self.shutdown.cancelled().await;
        // The router's state holds the service; nothing serves with it any more.
        drop(self.http_state);
        let rpc = self.rpc.await;
        let http = match self.http {
            Some(h) => Some(h.await),
            None => None,
        };
        self.scheduler.await.ok();
        self.stats.await.ok();
        if let Some(c) = self.callout {
            if let Err(e) = c.join().await {
                tracing::warn!(error = %e, "the auth callout responder failed");
            }
        }
        self.archiver.await.ok();
        // After the scheduler: its last flush is published (bounded).
        self.outcomes.await.ok();
        self.artifact_sweep.await.ok();
        // The bridge's echo tasks hand back a message in flight (nak) and stop.
        self.bridge.join().await;
        drop(self.service);
        // Every part that narrates has stopped; a service handle someone still holds
        // must not keep the publisher (and this join) waiting. The publisher ends by
        // flushing the connection every part published on (bounded, for NATS
        // unreachable): the last write of this coordinator.
        self.events.close().await;
        rpc??;
        if let Some(h) = http {
            h??;
        }
        Ok(())
    }
}

/// Starts a coordinator and runs it until `shutdown`.
pub async fn run(config: CoordinatorConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    start(config, shutdown).await?.join().await
}
