//! The Gigafactory worker.
//!
//! Registers its capabilities through the coordinators, runs the jobs the leader leases
//! to it at dispatch ([`ControlMessage::Start`] on its control subject: no claim, the
//! first renewal or the completion confirms the start; a grant waits here for a free
//! slot, and one that cannot start before its start deadline is dropped, the reaper
//! taking it back), runs them ([`runner`]), heartbeats, and on shutdown drains: grants
//! still waiting are given back at once, running jobs finish within the grace period or
//! are given back. It also binds the durable pull consumer a coordinator created for its
//! profile and claims what arrives there (notices of an earlier coordinator, which
//! leased nothing at dispatch).
//!
//! A worker never writes the KV store and never creates a consumer; it asks on its own
//! RPC subjects (`gf.rpc.w.<id>.<verb>`), publishes its jobs' lines on its own log
//! subjects, and waits for replies on its own inbox prefix (`_INBOX_<id>`): exactly what
//! [`gf_schemas::permissions::factory`] grants a factory.

pub mod artifacts;
mod batch;
pub mod caps;
pub mod client;
pub mod handler;
pub mod runner;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use gf_schemas::names::{self, FactoryVerb};
use gf_schemas::rpc::{
    ClaimReply, ClaimRequest, CompleteReply, CompleteRequest, ControlAck, ControlMessage,
    DispatchNotice, HeartbeatReply, HeartbeatRequest, LeaseGrant, RegisterReply, RegisterRequest,
    ReleaseRequest,
};
use gf_schemas::{Capabilities, ErrorKind, JobId, RunningJob, WorkerId, WorkerState};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub use client::{CallError, RpcClient};
pub use handler::{Handler, HandlerCall, HandlerFuture, HandlerOutput, Handlers};

/// How long a stopping worker waits to flush what it sent last (its `gone` heartbeat).
const FLUSH_ON_EXIT: Duration = Duration::from_secs(2);

#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub nats_url: String,
    /// Default: host name plus a random suffix.
    pub id: Option<WorkerId>,
    pub queues: Vec<String>,
    /// Added to (and overriding) the detected `os`, `arch`, `cpus`, `memory_mb`.
    pub capabilities: BTreeMap<String, String>,
    pub tags: BTreeSet<String>,
    /// Jobs run at once.
    pub slots: u32,
    /// At shutdown, how long running jobs may take before they are given back.
    pub drain_grace: Duration,
    /// Where jobs without a `cwd` get their working directory; default: a temp dir.
    pub scratch_dir: Option<PathBuf>,
    pub rpc_timeout: Duration,
    /// Serve Prometheus metrics on `http://ADDR/metrics`; `None` serves nothing.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// In-process job kinds by command name (default: the built-in `gf:noop` and
    /// `gf:sleep`); every other command runs as a subprocess.
    pub handlers: Handlers,
    /// A secured NATS: the folder with this factory's key and id (created, with a
    /// fresh key, if empty). The worker then connects with its key alone.
    pub key_dir: Option<PathBuf>,
    /// Enroll with this token (the key in `key_dir` is registered by its first
    /// connection).
    pub enroll: Option<gf_auth::EnrollToken>,
    /// Once started, switch to a fresh key (the old one stays valid for the
    /// coordinators' grace period): no restart, no downtime.
    pub rotate_key: bool,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            nats_url: "nats://127.0.0.1:4222".into(),
            id: None,
            queues: vec![gf_schemas::DEFAULT_QUEUE.into()],
            capabilities: BTreeMap::new(),
            tags: BTreeSet::new(),
            slots: 4,
            drain_grace: Duration::from_secs(30),
            scratch_dir: None,
            rpc_timeout: Duration::from_secs(5),
            metrics_addr: None,
            handlers: Handlers::default(),
            key_dir: None,
            enroll: None,
            rotate_key: false,
        }
    }
}

struct RunningEntry {
    epoch: u64,
    revoked: CancellationToken,
}

/// What holds this worker's slots: jobs running, and notices being claimed (claims of
/// one batch go out at once, so each reserves its slot until answered).
#[derive(Default)]
struct Slots {
    running: HashMap<JobId, RunningEntry>,
    claiming: std::collections::HashSet<JobId>,
}

struct Shared {
    id: WorkerId,
    rpc: RpcClient,
    /// Claims and completions, coalesced into batch RPCs under load.
    claims: batch::Batcher<ClaimReply>,
    completions: batch::Batcher<CompleteReply>,
    js: jetstream::Context,
    slots: u32,
    /// Jobs running here. With `claiming`, under one lock: a job is in at most one.
    running: Mutex<Slots>,
    slot_freed: Notify,
    /// The same, for the loop that starts granted jobs (a `Notify` wakes one waiter).
    slot_freed_for_grants: Notify,
    /// Leases granted at dispatch, from the control subject to [`start_loop`], each
    /// with the local instant its start deadline passes.
    grants: tokio::sync::mpsc::UnboundedSender<(LeaseGrant, tokio::time::Instant)>,
    /// Grants received and not started yet (waiting for a slot a completion is about
    /// to free): they hold slots the heartbeat must not report free, and that the
    /// notices of the pull consumer must not take.
    grants_waiting: std::sync::atomic::AtomicU32,
    /// Fired when the drain grace runs out: running jobs are killed and released.
    give_back: CancellationToken,
    scratch: PathBuf,
    handlers: Handlers,
    register: RegisterRequest,
    /// Set by an operator's drain (`ControlMessage::Drain`): claim nothing new until
    /// undrained. Unlike shutdown, it can be undone and the worker keeps running.
    drained: tokio::sync::watch::Sender<bool>,
    /// An enrolled factory's connection renewal (see [`Reauth`]).
    reauth: Option<Arc<Reauth>>,
    /// An enrolled factory's key.
    key: Option<gf_auth::FactoryKey>,
}

impl Shared {
    fn running_jobs(&self) -> Vec<RunningJob> {
        let slots = self.running.lock().expect("running");
        slots
            .running
            .iter()
            .map(|(id, e)| RunningJob {
                job_id: *id,
                epoch: e.epoch,
            })
            .collect()
    }
    fn is_drained(&self) -> bool {
        *self.drained.borrow()
    }
    fn slot_freed(&self) {
        self.slot_freed.notify_one();
        self.slot_freed_for_grants.notify_one();
    }
    fn free_slots(&self) -> u32 {
        let held = self.running.lock().expect("running");
        self.slots
            .saturating_sub((held.running.len() + held.claiming.len()) as u32)
    }
    /// A grant left the start loop's queue (started, lapsed or given back).
    fn grant_left(&self) {
        self.grants_waiting
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
    /// Free slots no grant received is waiting for.
    fn unpromised_slots(&self) -> u32 {
        self.free_slots().saturating_sub(
            self.grants_waiting
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }
    /// Stops a job if it still runs at `epoch`.
    fn revoke(&self, job: &JobId, epoch: u64) {
        if let Some(e) = self.running.lock().expect("running").running.get(job) {
            if e.epoch == epoch {
                tracing::warn!(%job, epoch, "lease revoked; stopping the job");
                e.revoked.cancel();
            }
        }
    }
}

/// A started worker.
pub struct Worker {
    pub id: WorkerId,
    /// Where `/metrics` is served, if it is.
    pub metrics_addr: Option<std::net::SocketAddr>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Worker {
    /// Waits until the worker has drained and stopped.
    pub async fn join(self) -> anyhow::Result<()> {
        self.task.await.context("worker task panicked")?
    }
}

/// What a worker with `config` offers: the detected `os`, `arch`, `cpus`, `memory_mb`,
/// overridden and extended by the configured values, with its tags and queues.
pub fn capabilities(config: &WorkerConfig) -> Capabilities {
    let mut values = caps::detect();
    values.extend(config.capabilities.clone());
    Capabilities {
        values,
        tags: config.tags.clone(),
        queues: config.queues.clone(),
    }
}

/// Connects, registers and binds the consumer, then runs until `shutdown`.
pub async fn start(config: WorkerConfig, shutdown: CancellationToken) -> anyhow::Result<Worker> {
    let host = caps::hostname();
    let key = match &config.key_dir {
        Some(dir) => {
            let key = gf_auth::FactoryKey::load_or_create(dir, config.id.as_ref(), || {
                WorkerId::generate(&host)
            })?;
            if let Some(token) = &config.enroll {
                key.enroll_with(token);
            }
            Some(key)
        }
        None if config.enroll.is_some() => {
            anyhow::bail!("enrolling needs a folder for the factory's key (--key-dir)")
        }
        None => None,
    };
    let id = match &key {
        Some(k) => k.id().clone(),
        None => config
            .id
            .clone()
            .unwrap_or_else(|| WorkerId::generate(&host)),
    };
    let (options, shown_url) = match &key {
        Some(k) => (
            k.connect_options(),
            client::connect_options(&config.nats_url).1,
        ),
        None => client::connect_options(&config.nats_url),
    };
    let (connected_tx, connected) = tokio::sync::watch::channel(0u64);
    let client = options
        .name(format!("gf-worker {id}"))
        // Every reply this worker waits for (RPC, JetStream API, pulls, publish acks)
        // comes to its own prefix, the only inbox a factory may subscribe to.
        .custom_inbox_prefix(names::factory_inbox_prefix(&id))
        .event_callback(move |event| {
            let tx = connected_tx.clone();
            async move {
                tracing::info!(%event, "nats");
                if matches!(event, async_nats::Event::Connected) {
                    tx.send_modify(|n| *n += 1);
                }
            }
        })
        .connect(&config.nats_url)
        .await
        .map_err(|e| refused_hint(e, key.as_ref(), config.enroll.as_ref()))
        .with_context(|| format!("cannot connect to NATS at {shown_url}"))?;
    let reauth = key.as_ref().map(|k: &gf_auth::FactoryKey| {
        // Enrolled: from now on the key alone.
        k.enrolled();
        Arc::new(Reauth {
            client: client.clone(),
            connected,
            granted: Mutex::new(None),
        })
    });
    let rpc = RpcClient::new(client.clone(), config.rpc_timeout);
    let register = RegisterRequest {
        worker_id: id.clone(),
        capabilities: capabilities(&config),
        slots: config.slots,
        version: env!("CARGO_PKG_VERSION").into(),
        hostname: host,
    };
    let js = jetstream::new(client.clone());
    let (reply, consumer) =
        register_and_bind(&rpc, &js, &register, reauth.as_deref(), &shutdown).await?;
    let scratch = match &config.scratch_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("gf-worker-{id}")),
    };
    tokio::fs::create_dir_all(&scratch)
        .await
        .with_context(|| format!("cannot create scratch directory {}", scratch.display()))?;
    let (grants_tx, grants_rx) = tokio::sync::mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        id: id.clone(),
        claims: batch::Batcher::new(rpc.clone(), &id, FactoryVerb::Claim),
        completions: batch::Batcher::new(rpc.clone(), &id, FactoryVerb::Complete).hedged(),
        rpc,
        js,
        slots: config.slots,
        running: Mutex::new(Slots::default()),
        slot_freed: Notify::new(),
        slot_freed_for_grants: Notify::new(),
        grants: grants_tx,
        grants_waiting: Default::default(),
        give_back: CancellationToken::new(),
        scratch,
        handlers: config.handlers.clone(),
        register,
        drained: tokio::sync::watch::Sender::new(false),
        reauth,
        key,
    });
    if config.rotate_key {
        rotate_key(&shared).await?;
    }
    let control = client.subscribe(names::worker_control(&id)).await?;
    let heartbeat_every = Duration::from_millis(reply.heartbeat_interval_ms.max(100));
    let metrics = gf_telemetry::install("worker");
    let (metrics_addr, metrics_server) = match config.metrics_addr {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot serve metrics on {addr}"))?;
            let bound = listener.local_addr()?;
            let app = axum::Router::new().route(
                "/metrics",
                axum::routing::get(move || {
                    let m = metrics.clone();
                    async move { m.render() }
                }),
            );
            let token = shutdown.clone();
            let server = tokio::spawn(async move {
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(token.cancelled_owned())
                    .await;
            });
            (Some(bound), Some(server))
        }
        None => (None, None),
    };
    // Increments, not sets: several workers may share one process (gf dev, tests).
    metrics::gauge!(gf_telemetry::names::WORKER_CAPACITY).increment(f64::from(config.slots));
    let slots = config.slots;
    let task = tokio::spawn(async move {
        let r = run_worker(
            shared,
            consumer,
            grants_rx,
            control,
            heartbeat_every,
            config.drain_grace,
            shutdown,
        )
        .await;
        metrics::gauge!(gf_telemetry::names::WORKER_CAPACITY).decrement(f64::from(slots));
        if let Some(s) = metrics_server {
            let _ = s.await;
        }
        r
    });
    tracing::info!(worker = %id, slots, metrics = ?metrics_addr, "worker started");
    Ok(Worker {
        id,
        metrics_addr,
        task,
    })
}

/// Starts a worker and runs it until `shutdown`, then drains.
pub async fn run(config: WorkerConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    start(config, shutdown).await?.join().await
}

async fn register_until_answered(
    rpc: &RpcClient,
    req: &RegisterRequest,
    shutdown: &CancellationToken,
) -> anyhow::Result<RegisterReply> {
    let mut wait = Duration::from_millis(200);
    loop {
        match rpc.call_factory::<_, RegisterReply>(req).await {
            Ok(r) => return Ok(r),
            Err(e) if e.retryable() => {
                tracing::warn!(error = %e, "registration not answered; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => anyhow::bail!("stopped before registering"),
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e).context("registration refused"),
        }
    }
}

/// Registers, then binds the dispatch consumer the coordinator named (`CONSUMER.INFO`
/// only: a worker never creates one). A consumer that is gone by the time the worker
/// looks (removed by the server or an operator) is made again by registering again.
async fn register_and_bind(
    rpc: &RpcClient,
    js: &jetstream::Context,
    req: &RegisterRequest,
    reauth: Option<&Reauth>,
    shutdown: &CancellationToken,
) -> anyhow::Result<(RegisterReply, consumer::PullConsumer)> {
    let mut tries = 0;
    loop {
        let reply = register_until_answered(rpc, req, shutdown).await?;
        if let Some(r) = reauth {
            r.granted(&reply.consumer).await?;
        }
        match bind_consumer(js, &reply).await {
            Ok(c) => return Ok((reply, c)),
            Err(e) if consumer_missing(&e) && tries < 5 => {
                tries += 1;
                tracing::warn!(consumer = %reply.consumer, "dispatch consumer missing; registering again");
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot bind dispatch consumer {}", reply.consumer))
            }
        }
    }
}

/// An enrolled factory's user JWT grants the dispatch consumers its record named when
/// it connected. A registration that names one this connection was not granted (the
/// first one, or a new profile) is followed by a reconnect: the coordinator recorded
/// the grant before answering, so the new connection's JWT carries it.
struct Reauth {
    client: async_nats::Client,
    /// Counts `Connected` events.
    connected: tokio::sync::watch::Receiver<u64>,
    /// The consumer the current connection was granted, once known.
    granted: Mutex<Option<gf_schemas::ConsumerName>>,
}

impl Reauth {
    async fn granted(&self, consumer: &gf_schemas::ConsumerName) -> anyhow::Result<()> {
        if self.granted.lock().expect("granted").as_ref() == Some(consumer) {
            return Ok(());
        }
        self.reconnect(Duration::from_secs(30)).await?;
        *self.granted.lock().expect("granted") = Some(consumer.clone());
        Ok(())
    }

    /// Closes the connection and waits (at most `within`) for a new one.
    async fn reconnect(&self, within: Duration) -> anyhow::Result<()> {
        let mut connected = self.connected.clone();
        let before = *connected.borrow_and_update();
        self.client
            .force_reconnect()
            .await
            .context("cannot reconnect")?;
        tokio::time::timeout(within, connected.wait_for(|n| *n > before))
            .await
            .with_context(|| {
                format!(
                    "no new connection within {within:?} (is a coordinator answering the auth callout?)"
                )
            })?
            .context("connection closed")?;
        Ok(())
    }
}

/// Switches an enrolled factory to a fresh key without stopping: the next connection
/// uses the new key and proves the old one; the coordinators accept both for a grace
/// period. If the new key is not accepted, the old one stays.
async fn rotate_key(shared: &Shared) -> anyhow::Result<()> {
    let (Some(key), Some(reauth)) = (&shared.key, &shared.reauth) else {
        anyhow::bail!("this worker has no factory key to rotate (it runs without --key-dir)");
    };
    let public = key.begin_rotation()?;
    match reauth.reconnect(Duration::from_secs(10)).await {
        Ok(()) => {
            key.commit_rotation()?;
            tracing::info!(key = %public, "factory key rotated");
            Ok(())
        }
        Err(e) => {
            key.abort_rotation();
            let _ = reauth.client.force_reconnect().await;
            Err(e.context("the new key was not accepted; keeping the old one"))
        }
    }
}

/// The server says only "authorization violation"; say what to check.
fn refused_hint(
    e: async_nats::ConnectError,
    key: Option<&gf_auth::FactoryKey>,
    token: Option<&gf_auth::EnrollToken>,
) -> anyhow::Error {
    let Some(key) = key else {
        return e.into();
    };
    if e.kind() != async_nats::ConnectErrorKind::AuthorizationViolation {
        return e.into();
    }
    let why = match token {
        Some(t) => format!(
            "the server refused to enroll factory `{}` with token {} (NATS says only \"authorization violation\"): check that the token is not expired, revoked or used up, that it is valid from this address (its --cidr), and that no other factory has this id; the exact reason is in `gf factory token list` (LAST REFUSAL) and `gf events --level error` (enrollment_refused)",
            key.id(),
            t.id
        ),
        None => format!(
            "the server refused factory `{}` (key {} in {}; NATS says only \"authorization violation\"): check that it is enrolled (first run with --enroll TOKEN), that it was not revoked (`gf factory list`), and that a coordinator with --secrets-dir is running to let factories in; the exact reason is in `gf events --level error` (connection_refused)",
            key.id(),
            key.public_key(),
            key.dir().display()
        ),
    };
    anyhow::Error::new(e).context(why)
}

async fn bind_consumer(
    js: &jetstream::Context,
    reply: &RegisterReply,
) -> Result<consumer::PullConsumer, jetstream::stream::ConsumerError> {
    js.get_consumer_from_stream::<consumer::pull::Config, _, _>(
        reply.consumer.as_str(),
        names::STREAM_DISPATCH,
    )
    .await
}

/// The server says the consumer does not exist (as opposed to not answering).
fn consumer_missing(e: &jetstream::stream::ConsumerError) -> bool {
    matches!(
        e.kind(),
        jetstream::stream::ConsumerErrorKind::JetStream(err)
            if err.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND
    )
}

async fn run_worker(
    shared: Arc<Shared>,
    consumer: consumer::PullConsumer,
    grants: tokio::sync::mpsc::UnboundedReceiver<(LeaseGrant, tokio::time::Instant)>,
    control: async_nats::Subscriber,
    heartbeat_every: Duration,
    drain_grace: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let background = CancellationToken::new();
    let draining = CancellationToken::new();
    let jobs = TaskTracker::new();
    let control_task = tokio::spawn(control_loop(shared.clone(), control, background.clone()));
    let heartbeat_task = tokio::spawn(heartbeat_loop(
        shared.clone(),
        heartbeat_every,
        draining.clone(),
        background.clone(),
    ));
    // Become active at once rather than a heartbeat later.
    heartbeat(&shared, WorkerState::Active).await;

    tokio::join!(
        fetch_loop(&shared, consumer, &jobs, &shutdown),
        start_loop(&shared, grants, &jobs, &shutdown),
    );

    // Drain: no new claims; running jobs get the grace period, then are given back.
    draining.cancel();
    heartbeat(&shared, WorkerState::Draining).await;
    jobs.close();
    let running = shared.running.lock().expect("running").running.len();
    if running > 0 {
        tracing::info!(running, grace = ?drain_grace, "draining");
    }
    if tokio::time::timeout(drain_grace, jobs.wait())
        .await
        .is_err()
    {
        tracing::warn!("drain grace over; giving running jobs back");
        shared.give_back.cancel();
        jobs.wait().await;
    }
    heartbeat(&shared, WorkerState::Gone).await;
    background.cancel();
    let _ = control_task.await;
    let _ = heartbeat_task.await;
    // Bounded: with NATS unreachable a flush waits for a reconnect that may never come,
    // and a worker told to stop must stop (what it would flush is lost either way).
    if tokio::time::timeout(FLUSH_ON_EXIT, shared.rpc.nats().flush())
        .await
        .is_err()
    {
        tracing::warn!("NATS unreachable: stopping without flushing");
    }
    tracing::info!(worker = %shared.id, "worker stopped");
    Ok(())
}

async fn fetch_loop(
    shared: &Arc<Shared>,
    mut consumer: consumer::PullConsumer,
    jobs: &TaskTracker,
    shutdown: &CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    let mut drained = shared.drained.subscribe();
    while !shutdown.is_cancelled() {
        if *drained.borrow_and_update() {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = drained.changed() => {}
            }
            continue;
        }
        let free = shared.unpromised_slots();
        if free == 0 {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = shared.slot_freed.notified() => {}
                // Belt and braces: re-check even if a notification was missed.
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        }
        // A fresh short pull each round: a pull that went quiet after a reconnect can't
        // stall the worker for longer than its expiry.
        let batch = consumer
            .batch()
            .max_messages(free as usize)
            .expires(Duration::from_secs(1))
            .messages()
            .await;
        let mut batch = match batch {
            Ok(b) => {
                backoff = Duration::from_millis(100);
                b
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot pull notices; retrying");
                rebind_if_gone(shared, &mut consumer, shutdown).await;
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        loop {
            let msg = tokio::select! {
                _ = shutdown.cancelled() => break,
                m = batch.next() => m,
            };
            let Some(msg) = msg else { break };
            match msg {
                Ok(m) => {
                    let span = gf_telemetry::trace::consume_span(&m.subject, m.headers.as_ref());
                    on_notice(shared, jobs, m, shutdown).instrument(span).await
                }
                Err(e) => {
                    // A pull ends in an error status when its consumer was deleted
                    // (409) or does not exist (503): check which before pulling again.
                    tracing::debug!(error = %e, "pull ended");
                    rebind_if_gone(shared, &mut consumer, shutdown).await;
                    break;
                }
            }
        }
    }
}

/// After a failed pull: if the server says the consumer no longer exists, registers
/// again (the coordinator creates it again) and binds what the reply names. Anything
/// else (a reconnect, a slow server) is left to the next pull.
async fn rebind_if_gone(
    shared: &Shared,
    consumer: &mut consumer::PullConsumer,
    shutdown: &CancellationToken,
) {
    let name = consumer.cached_info().name.clone();
    match shared
        .js
        .get_consumer_from_stream::<consumer::pull::Config, _, _>(&name, names::STREAM_DISPATCH)
        .await
    {
        Err(e) if consumer_missing(&e) => {}
        _ => return,
    }
    tracing::warn!(consumer = %name, "dispatch consumer gone; registering again");
    match register_and_bind(
        &shared.rpc,
        &shared.js,
        &shared.register,
        shared.reauth.as_deref(),
        shutdown,
    )
    .await
    {
        Ok((_, bound)) => *consumer = bound,
        Err(e) => tracing::warn!(error = %e, "could not bind a dispatch consumer; retrying"),
    }
}

/// Takes one notice: decides at once whether it is spent, and otherwise reserves a
/// slot and claims it in the background, so the claims of one batch go out together.
async fn on_notice(
    shared: &Arc<Shared>,
    jobs: &TaskTracker,
    msg: jetstream::Message,
    shutdown: &CancellationToken,
) {
    let notice: DispatchNotice = match serde_json::from_slice(&msg.payload) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(subject = %msg.subject, error = %e, "malformed dispatch notice dropped");
            let _ = msg.ack_with(jetstream::AckKind::Term).await;
            return;
        }
    };
    if shutdown.is_cancelled() || shared.is_drained() {
        // Give the notice back at once so an active worker can claim it.
        let _ = msg.ack_with(jetstream::AckKind::Nak(None)).await;
        return;
    }
    // A notice redelivered for a job this worker already runs or is claiming (its ack
    // was lost, e.g. across a NATS restart) is spent: a repeated claim by the holder is
    // answered with the same lease, and running the job again would repeat its effect.
    let fresh = {
        let mut held = shared.running.lock().expect("running");
        !held.running.contains_key(&notice.job_id) && held.claiming.insert(notice.job_id)
    };
    if !fresh {
        tracing::debug!(job = %notice.job_id, epoch = notice.epoch, "notice for a job already here");
        let _ = msg.ack().await;
        return;
    }
    let shared = shared.clone();
    let tracker = jobs.clone();
    // On the jobs tracker: the drain waits for claims in flight and the jobs they start.
    jobs.spawn(
        async move {
            let job_id = notice.job_id;
            let claimed = claim(&shared, &msg, &notice).await;
            match claimed {
                Some(claim) => spawn_job(&shared, &tracker, job_id, claim),
                None => {
                    shared
                        .running
                        .lock()
                        .expect("running")
                        .claiming
                        .remove(&job_id);
                    shared.slot_freed();
                }
            }
        }
        .in_current_span(),
    );
}

/// Claims a notice's job and settles the notice; `Some` when this worker holds it.
async fn claim(
    shared: &Shared,
    msg: &jetstream::Message,
    notice: &DispatchNotice,
) -> Option<ClaimReply> {
    let req = ClaimRequest {
        job_id: notice.job_id,
        epoch: notice.epoch,
        worker_id: shared.id.clone(),
    };
    match shared.claims.call(&req, shared.rpc.timeout()).await {
        Ok(claim) => {
            let _ = msg.ack().await;
            Some(claim)
        }
        Err(e) if e.retryable() && e.kind() != Some(ErrorKind::Conflict) => {
            tracing::warn!(job = %notice.job_id, error = %e, "claim not answered; notice will come back");
            let _ = msg
                .ack_with(jetstream::AckKind::Nak(Some(Duration::from_millis(500))))
                .await;
            None
        }
        Err(e) => {
            // Stale, taken, or not for us: the notice is spent.
            tracing::debug!(job = %notice.job_id, error = %e, "claim refused");
            let _ = msg.ack().await;
            None
        }
    }
}

/// Starts the jobs leased to this worker at dispatch, in the order granted, as slots
/// free up. Grants that arrive while drained or stopping, or still wait when that
/// begins, are given back at once (a release, so the job is dispatched again without
/// waiting for its start deadline); one whose start deadline passed while it waited is
/// dropped (the reaper has taken it back, or is about to).
async fn start_loop(
    shared: &Arc<Shared>,
    mut grants: tokio::sync::mpsc::UnboundedReceiver<(LeaseGrant, tokio::time::Instant)>,
    jobs: &TaskTracker,
    shutdown: &CancellationToken,
) {
    let mut waiting: std::collections::VecDeque<(LeaseGrant, tokio::time::Instant)> =
        Default::default();
    let mut drained = shared.drained.subscribe();
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        if *drained.borrow_and_update() {
            for (g, _) in waiting.drain(..) {
                shared.grant_left();
                give_back_grant(shared, jobs, g, "worker drained");
            }
        }
        while !waiting.is_empty() && shared.free_slots() > 0 {
            let (g, start_by) = waiting.pop_front().expect("not empty");
            shared.grant_left();
            if tokio::time::Instant::now() >= start_by {
                tracing::warn!(job = %g.job_id, epoch = g.lease.epoch, "no slot before the start deadline; the grant lapses");
                continue;
            }
            start_grant(shared, jobs, g, start_by);
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = drained.changed() => {}
            g = grants.recv() => match g {
                Some((g, _)) if shared.is_drained() => {
                    shared.grant_left();
                    give_back_grant(shared, jobs, g, "worker drained");
                }
                Some(g) => waiting.push_back(g),
                None => break,
            },
            _ = shared.slot_freed_for_grants.notified(), if !waiting.is_empty() => {}
            // Belt and braces: re-check even if a notification was missed.
            _ = tokio::time::sleep(Duration::from_secs(1)), if !waiting.is_empty() => {}
        }
    }
    grants.close();
    while let Ok((g, _)) = grants.try_recv() {
        waiting.push_back((g, tokio::time::Instant::now()));
    }
    for (g, _) in waiting {
        shared.grant_left();
        give_back_grant(shared, jobs, g, "worker shutting down");
    }
}

/// Runs a job leased to this worker at dispatch, unless it is already here (a repeated
/// grant).
fn start_grant(
    shared: &Arc<Shared>,
    jobs: &TaskTracker,
    grant: LeaseGrant,
    start_by: tokio::time::Instant,
) {
    let here = {
        let held = shared.running.lock().expect("running");
        held.running.contains_key(&grant.job_id) || held.claiming.contains(&grant.job_id)
    };
    if here {
        tracing::debug!(job = %grant.job_id, "grant for a job already here");
        return;
    }
    let span = gf_telemetry::trace::consume_item_span(
        names::WORKER_CONTROL_ANY,
        grant.trace_parent.as_deref(),
    );
    let _entered = span.enter();
    let claim = ClaimReply {
        spec: grant.spec,
        lease: grant.lease,
        attempt: grant.attempt,
    };
    start_job(shared, jobs, grant.job_id, claim, Some(start_by));
}

/// Gives a granted job back without starting it, in the background (on the jobs
/// tracker, so the drain waits for it).
fn give_back_grant(shared: &Arc<Shared>, jobs: &TaskTracker, grant: LeaseGrant, reason: &str) {
    let req = ReleaseRequest {
        job_id: grant.job_id,
        epoch: grant.lease.epoch,
        worker_id: shared.id.clone(),
        reason: reason.into(),
    };
    let rpc = shared.rpc.clone();
    jobs.spawn(async move {
        if let Err(e) = release(&rpc, &req).await {
            tracing::debug!(job = %req.job_id, error = %e, "grant not given back; its start deadline sends it back");
        }
    });
}

/// Gives a job back, hedged ([`client::RpcClient::call_raw_hedged`]): a copy may reach
/// another coordinator when the first is stalled, so a draining worker does not leave
/// the job to its start deadline or lease. A copy that lands after the first was
/// applied is refused as revoked (the holder check fences it: the release cleared the
/// lease, and the epoch rules out any later lease), which is what the worker asked
/// for: it no longer holds the job. So a lost lease counts as given back.
async fn release(rpc: &client::RpcClient, req: &ReleaseRequest) -> Result<(), CallError> {
    given_back(req, rpc.call_factory_hedged::<_, ()>(req).await)
}

/// A release's answer as the worker reads it: refused for a lost lease is given back.
fn given_back(req: &ReleaseRequest, answer: Result<(), CallError>) -> Result<(), CallError> {
    match answer {
        Err(e) if e.lost_lease() => {
            tracing::debug!(job = %req.job_id, epoch = req.epoch, error = %e, "already given back, or no longer ours");
            Ok(())
        }
        other => other,
    }
}

fn spawn_job(shared: &Arc<Shared>, jobs: &TaskTracker, job_id: JobId, claim: ClaimReply) {
    start_job(shared, jobs, job_id, claim, None)
}

/// Runs a job this worker holds: claimed (`start_by` is `None`), or leased at dispatch,
/// to be confirmed by its first renewal (due before `start_by`) or its completion.
fn start_job(
    shared: &Arc<Shared>,
    jobs: &TaskTracker,
    job_id: JobId,
    claim: ClaimReply,
    start_by: Option<tokio::time::Instant>,
) {
    let epoch = claim.lease.epoch;
    let revoked = CancellationToken::new();
    {
        let mut held = shared.running.lock().expect("running");
        held.claiming.remove(&job_id);
        held.running.insert(
            job_id,
            RunningEntry {
                epoch,
                revoked: revoked.clone(),
            },
        );
    }
    let shared = shared.clone();
    metrics::gauge!(gf_telemetry::names::WORKER_RUNNING).increment(1.0);
    // Boxed: the job's future (every way of running one, inlined) is large, and a task
    // moves its future on spawn and again when it ends; these copies were most of the
    // worker's `memmove`, a tenth of its CPU in the load suite (under `spawn`,
    // `Cell::new`, `set_stage`). Boxed, they move a pointer.
    jobs.spawn(Box::pin(async move {
        let job = runner::Job {
            id: job_id,
            claim,
            worker: shared.id.clone(),
            revoked,
            give_back: shared.give_back.clone(),
            start_by,
        };
        let began = tokio::time::Instant::now();
        tracing::info!(job = %job_id, epoch, "running");
        let lease_ttl = Duration::from_millis(job.claim.lease.ttl_ms);
        let end = runner::run(job, shared.rpc.clone(), shared.js.clone(), &shared.scratch, &shared.handlers).await;
        let result = match &end {
            runner::RunEnd::Finished { outcome, .. } => match outcome {
                gf_schemas::AttemptOutcome::Succeeded { .. } => "succeeded",
                gf_schemas::AttemptOutcome::Failed { .. } => "failed",
                gf_schemas::AttemptOutcome::TimedOut { .. } => "timed_out",
            },
            runner::RunEnd::Revoked(_) => "revoked",
            runner::RunEnd::GivenBack => "released",
        };
        metrics::counter!(gf_telemetry::names::WORKER_RUNS, "result" => result).increment(1);
        match end {
            runner::RunEnd::Finished { outcome, result, usage } => {
                // How long it ran: a completion that confirms a start dates it from this.
                let ran_ms = start_by.map(|_| began.elapsed().as_millis() as u64);
                let req = CompleteRequest { job_id, epoch, worker_id: shared.id.clone(), outcome, result, usage, ran_ms };
                report(&shared, &req, lease_ttl).await;
            }
            runner::RunEnd::Revoked(why) => {
                tracing::warn!(job = %job_id, epoch, %why, "job stopped; its result does not count");
            }
            runner::RunEnd::GivenBack => {
                let req = ReleaseRequest { job_id, epoch, worker_id: shared.id.clone(), reason: "worker shutting down".into() };
                if let Err(e) = release(&shared.rpc, &req).await {
                    tracing::warn!(job = %job_id, error = %e, "release failed; the lease will expire instead");
                }
            }
        }
        shared.running.lock().expect("running").running.remove(&job_id);
        metrics::gauge!(gf_telemetry::names::WORKER_RUNNING).decrement(1.0);
        shared.slot_freed();
    }.instrument(tracing::info_span!("run", otel.name = "run", gf.job_id = %job_id, gf.epoch = epoch))));
}

/// Sends a completion until it is answered. Retrying is safe: the coordinator answers a
/// repeat of an applied completion with the same result.
async fn report(shared: &Shared, req: &CompleteRequest, lease_ttl: Duration) {
    let mut wait = Duration::from_millis(100);
    // Each try gets a third of the lease and is hedged (`Batcher::hedged`), so a
    // stalled coordinator costs a copy a quarter of a try later, not the lease.
    let timeout = (lease_ttl / 3).max(Duration::from_millis(200));
    for _ in 0..30 {
        match shared.completions.call(req, timeout).await {
            Ok(r) => {
                tracing::info!(job = %req.job_id, epoch = req.epoch, state = %r.state, "reported");
                return;
            }
            Err(e) if e.lost_lease() => {
                tracing::warn!(job = %req.job_id, epoch = req.epoch, error = %e, "result refused: lease lost");
                return;
            }
            Err(e) if e.retryable() => {
                // Past the drain grace the operator's bound on stopping wins: the
                // result is lost, and the job runs again once its lease expires, as a
                // job given back does. (Up to 30 tries of a third of the lease each
                // kept a worker stopping with NATS down for minutes.)
                if shared.give_back.is_cancelled() {
                    tracing::error!(job = %req.job_id, error = %e, "completion not answered and the drain grace is over; stopping without it: the lease will expire and the job run again");
                    return;
                }
                tracing::warn!(job = %req.job_id, error = %e, "completion not answered; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    // One more try, then stop (above).
                    _ = shared.give_back.cancelled() => {}
                }
                wait = (wait * 2).min(Duration::from_secs(3));
            }
            Err(e) => {
                tracing::error!(job = %req.job_id, error = %e, "completion refused");
                return;
            }
        }
    }
    tracing::error!(job = %req.job_id, "gave up reporting; the lease will expire and the job run again");
}

async fn heartbeat(shared: &Shared, state: WorkerState) {
    let req = HeartbeatRequest {
        worker_id: shared.id.clone(),
        state,
        free_slots: shared.unpromised_slots(),
        running: shared.running_jobs(),
    };
    // Hedged: requests are spread over the coordinators, and one that is paused (or
    // stalled) took every other heartbeat, so under `leader-pause` workers looked gone
    // to the leader and their jobs unplaceable. A repeat is answered like the first
    // (the worker's record written again, the same revocations).
    match shared
        .rpc
        .call_factory_hedged::<_, HeartbeatReply>(&req)
        .await
    {
        Ok(reply) => {
            for r in reply.revoked {
                shared.revoke(&r.job_id, r.epoch);
            }
            if !reply.known && state != WorkerState::Gone {
                tracing::warn!("coordinators do not know this worker; registering again");
                if shared
                    .rpc
                    .call_factory::<_, RegisterReply>(&shared.register)
                    .await
                    .is_ok()
                {
                    Box::pin(heartbeat(shared, state)).await;
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "heartbeat not answered"),
    }
}

async fn heartbeat_loop(
    shared: Arc<Shared>,
    every: Duration,
    draining: CancellationToken,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let state = if draining.is_cancelled() || shared.is_drained() {
            WorkerState::Draining
        } else {
            WorkerState::Active
        };
        heartbeat(&shared, state).await;
    }
}

async fn control_loop(shared: Arc<Shared>, sub: async_nats::Subscriber, stop: CancellationToken) {
    // Grants that arrive after the start loop ended are given back from here.
    let late = TaskTracker::new();
    control_messages(&shared, sub, &stop, &late).await;
    late.close();
    late.wait().await;
}

async fn control_messages(
    shared: &Arc<Shared>,
    mut sub: async_nats::Subscriber,
    stop: &CancellationToken,
    late: &TaskTracker,
) {
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => return,
            m = sub.next() => match m { Some(m) => m, None => return },
        };
        match ControlMessage::from_json(&msg.payload) {
            Ok(ControlMessage::Revoke(r)) => shared.revoke(&r.job_id, r.epoch),
            Ok(ControlMessage::Start { grants }) => {
                let received = tokio::time::Instant::now();
                for g in grants {
                    if g.lease.worker != shared.id {
                        tracing::warn!(job = %g.job_id, holder = %g.lease.worker, "grant for another worker ignored");
                        continue;
                    }
                    // The start deadline by this worker's clock: the lease's window
                    // (server time) from when the grant arrived.
                    let window = g.lease.expires_at.since(g.lease.granted_at);
                    shared
                        .grants_waiting
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if let Err(e) = shared.grants.send((g, received + window)) {
                        shared.grant_left();
                        give_back_grant(shared, late, e.0 .0, "worker shutting down");
                    }
                }
            }
            Ok(ControlMessage::Drain { drain }) => {
                shared.drained.send_replace(drain);
                let state = if drain {
                    WorkerState::Draining
                } else {
                    WorkerState::Active
                };
                tracing::info!(?state, "operator drain request");
                if let Some(reply) = msg.reply {
                    let ack = gf_schemas::Reply::Ok(ControlAck { state });
                    let body = serde_json::to_vec(&ack).expect("serializes");
                    let _ = shared.rpc.nats().publish(reply, body.into()).await;
                }
                // Report the new state now rather than at the next tick, so the
                // record (and the scheduler) see it at once.
                heartbeat(shared, state).await;
            }
            Ok(ControlMessage::RotateKey) => {
                // Answered before rotating: the answer is allowed only on the
                // connection the request came in on, which the rotation replaces.
                // The operator sees the new key in the factory's record.
                let reply = if shared.key.is_some() {
                    gf_schemas::Reply::Ok(ControlAck {
                        state: if shared.is_drained() {
                            WorkerState::Draining
                        } else {
                            WorkerState::Active
                        },
                    })
                } else {
                    gf_schemas::Reply::Error(gf_schemas::RpcError::new(
                        ErrorKind::Invalid,
                        "this worker has no factory key to rotate (it runs without --key-dir)",
                    ))
                };
                if let Some(to) = msg.reply {
                    let body = serde_json::to_vec(&reply).expect("serializes");
                    let _ = shared.rpc.nats().publish(to, body.into()).await;
                    let _ = shared.rpc.nats().flush().await;
                }
                if let Err(e) = rotate_key(shared).await {
                    tracing::warn!(error = %format!("{e:#}"), "key rotation failed");
                }
            }
            Err(e) => tracing::warn!(error = %e, "malformed control message ignored"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gf_schemas::RpcError;

    /// A hedged release's copy that lands after the first was applied is refused for a
    /// lost lease: the job is given back all the same. A release nobody answered is
    /// not.
    #[test]
    fn a_release_refused_for_a_lost_lease_is_given_back() {
        let req = ReleaseRequest {
            job_id: JobId::new(),
            epoch: 1,
            worker_id: WorkerId::new("w").unwrap(),
            reason: "worker shutting down".into(),
        };
        let refused = |kind| Err(CallError::Refused(RpcError::new(kind, "no longer holds")));
        assert!(given_back(&req, Ok(())).is_ok());
        assert!(given_back(&req, refused(ErrorKind::Revoked)).is_ok());
        assert!(given_back(&req, refused(ErrorKind::StaleEpoch)).is_ok());
        assert!(given_back(&req, refused(ErrorKind::Unavailable)).is_err());
        let timeout = CallError::Timeout {
            subject: "gf.rpc".into(),
            timeout: Duration::from_secs(1),
        };
        assert!(given_back(&req, Err(timeout)).is_err());
    }
}
