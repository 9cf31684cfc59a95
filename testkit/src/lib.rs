//! Dev-only test support: a real `nats-server` with JetStream per test (free port, fresh
//! store directory, stopped on drop), and helpers to run coordinators and workers
//! in-process with test timings.
//!
//! The server binary is `$GF_NATS_SERVER` or `nats-server` on `PATH`
//! (`scripts/install-nats.sh` installs it).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use gf_coordinator::{Coordinator, CoordinatorConfig};
use gf_worker::{Worker, WorkerConfig};
use tokio_util::sync::CancellationToken;

/// A running `nats-server` owned by a test.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: tempfile::TempDir,
    log: PathBuf,
    /// A config file (`-c`) the server reads, e.g. users and their permissions.
    config: Option<PathBuf>,
}

/// The client port from a ports file (`{"nats": ["nats://127.0.0.1:PORT"], …}`).
fn read_ports_file(path: &Path) -> Option<u16> {
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["nats"][0].as_str()?.rsplit(':').next()?.parse().ok()
}

/// Path of the `nats-server` binary to use.
pub fn nats_server_bin() -> PathBuf {
    std::env::var_os("GF_NATS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("nats-server"))
}

impl NatsServer {
    /// Starts a server with JetStream on a loopback port of its own choosing and waits
    /// until it accepts connections.
    ///
    /// The server picks the port (`-p -1`) and reports it in its ports file, which is
    /// named by its pid: probing a port we guessed could reach another test's server.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(None)
    }

    /// Like [`NatsServer::start`], with `config` (nats-server config syntax, e.g. an
    /// `authorization { users: [...] }` block) written to a file the server reads. The
    /// port, listen address and store stay the ones this harness picks.
    pub fn start_with_config(config: &str) -> anyhow::Result<Self> {
        Self::start_with(Some(config))
    }

    /// A secured server (issue #15): fresh secrets, static users for the coordinators
    /// (nkey), operators (`gf-admin`) and the callout (`gf-auth`), and every other
    /// client sent to the auth callout the coordinators answer. Use
    /// [`secured_coordinator_config`] and `secrets.admin_url(&server.url())`.
    pub fn start_secured() -> anyhow::Result<(Self, gf_auth::Secrets)> {
        let secrets = gf_auth::Secrets::generate();
        let server = Self::start_with_config(&secrets.server_config(None)?)?;
        Ok((server, secrets))
    }

    fn start_with(config: Option<&str>) -> anyhow::Result<Self> {
        let store = tempfile::Builder::new().prefix("gf-nats-").tempdir()?;
        let log = store.path().join("nats.log");
        let config = match config {
            Some(text) => {
                let path = store.path().join("nats.conf");
                std::fs::write(&path, text)?;
                Some(path)
            }
            None => None,
        };
        let mut s = Self {
            child: None,
            port: 0,
            store,
            log,
            config,
        };
        s.spawn()?;
        Ok(s)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let ports_dir = self.store.path().join("ports");
        std::fs::create_dir_all(&ports_dir)?;
        let port = if self.port == 0 {
            "-1".to_string()
        } else {
            self.port.to_string()
        };
        let mut command = Command::new(nats_server_bin());
        if let Some(config) = &self.config {
            command.arg("-c").arg(config);
        }
        let child = command
            .args(["-js", "-a", "127.0.0.1", "-p", &port, "--ports_file_dir"])
            .arg(&ports_dir)
            .arg("-sd")
            .arg(self.store.path().join("js"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {} (run scripts/install-nats.sh, or set GF_NATS_SERVER)",
                    nats_server_bin().display()
                )
            })?;
        let ports_file = ports_dir.join(format!("nats-server_{}.ports", child.id()));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("nats-server exited with {status}: {}", self.log_tail());
            }
            if let Some(port) = read_ports_file(&ports_file) {
                self.port = port;
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "nats-server did not report a port within 10s: {}",
            self.log_tail()
        )
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The URL with a user's name and password in it (for a server started with
    /// [`NatsServer::start_with_config`] that has password users).
    pub fn url_as(&self, user: &str, password: &str) -> String {
        format!("nats://{user}:{password}@127.0.0.1:{}", self.port)
    }

    /// The server's log so far (permission violations are logged with user and subject).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn store_dir(&self) -> &Path {
        self.store.path()
    }

    /// Stops the server (as a crash would: SIGKILL).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port with the same store.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn()
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Logs for tests: `RUST_LOG=debug cargo nextest run …` shows them.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Coordinator settings for tests: short leases and periods, HTTP on a free port.
pub fn coordinator_config(nats_url: &str) -> CoordinatorConfig {
    CoordinatorConfig {
        nats_url: nats_url.into(),
        http_addr: Some(([127, 0, 0, 1], 0).into()),
        lease_ttl: Duration::from_secs(2),
        claim_timeout: Duration::from_secs(3),
        reaper_period: Duration::from_millis(200),
        heartbeat_interval: Duration::from_millis(500),
        worker_timeout: Duration::from_secs(3),
        leader_ttl: Duration::from_secs(2),
        retry_base: Duration::from_millis(200),
        retry_max: Duration::from_secs(2),
        ..Default::default()
    }
}

/// [`coordinator_config`] on a secured server: the coordinator connects as its nkey
/// user and answers the auth callout.
pub fn secured_coordinator_config(nats_url: &str, secrets: &gf_auth::Secrets) -> CoordinatorConfig {
    CoordinatorConfig {
        security: Some(gf_coordinator::auth::Security::new(secrets.clone())),
        ..coordinator_config(nats_url)
    }
}

/// A client of `url`, logged in as the URL's user if it names one.
pub async fn connect(url: &str) -> anyhow::Result<async_nats::Client> {
    Ok(gf_auth::url::connect_options(url).0.connect(url).await?)
}

pub fn worker_config(nats_url: &str, slots: u32) -> WorkerConfig {
    WorkerConfig {
        nats_url: nats_url.into(),
        slots,
        drain_grace: Duration::from_secs(5),
        rpc_timeout: Duration::from_secs(2),
        ..Default::default()
    }
}

/// An in-process part with its own shutdown token.
pub struct Running<T> {
    pub part: Option<T>,
    pub shutdown: CancellationToken,
}

impl Running<Coordinator> {
    pub async fn coordinator(config: CoordinatorConfig) -> anyhow::Result<Self> {
        let shutdown = CancellationToken::new();
        let part = gf_coordinator::start(config, shutdown.clone()).await?;
        Ok(Self {
            part: Some(part),
            shutdown,
        })
    }
    pub fn http(&self) -> String {
        format!(
            "http://{}",
            self.part
                .as_ref()
                .and_then(|c| c.http_addr)
                .expect("http on")
        )
    }
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.part.take().expect("running").join().await
    }
}

impl Running<Worker> {
    pub async fn worker(config: WorkerConfig) -> anyhow::Result<Self> {
        let shutdown = CancellationToken::new();
        let part = gf_worker::start(config, shutdown.clone()).await?;
        Ok(Self {
            part: Some(part),
            shutdown,
        })
    }
    pub fn id(&self) -> gf_schemas::WorkerId {
        self.part.as_ref().expect("running").id.clone()
    }
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.part.take().expect("running").join().await
    }
}

impl<T> Drop for Running<T> {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Polls `check` until it returns `Some`, or fails after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until at least `n` workers are `active` in the workers bucket (registered,
/// consumer bound, heartbeating), or fails after `timeout`.
pub async fn wait_active_workers(
    js: &async_nats::jetstream::Context,
    n: usize,
    timeout: Duration,
) -> anyhow::Result<()> {
    let bucket = js.get_key_value(gf_schemas::names::BUCKET_WORKERS).await?;
    eventually(timeout, &format!("{n} active workers"), || async {
        let all = gf_coordinator::store::read_all(&bucket).await.ok()?;
        let active = all
            .iter()
            .filter_map(|(_, v)| serde_json::from_slice::<gf_schemas::WorkerRecord>(v).ok())
            .filter(|w| w.state == gf_schemas::WorkerState::Active)
            .count();
        (active >= n).then_some(())
    })
    .await
}

/// Stands in for a follower replica of KV `bucket` that has applied only the first write
/// of each key: from the moment this returns, the bucket's own servers answer no direct
/// get (its stream's `allow_direct` is turned off) and this answers every direct get of
/// the bucket's stream with the key's first revision (waiting for that write to arrive
/// on a watch). What a client connected to another server of an R3 cluster can read
/// right after a write, made deterministic; a client must have opened the bucket (and
/// cached that it allows direct gets) before, or it never sends a direct get. Returns
/// how many gets the stand-in answered.
pub async fn lagging_replica(
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    bucket: &str,
) -> anyhow::Result<std::sync::Arc<std::sync::atomic::AtomicUsize>> {
    use async_nats::jetstream::kv::Entry;
    use futures::StreamExt as _;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    // key subject -> its first write
    let first: Arc<Mutex<std::collections::HashMap<String, Entry>>> = Arc::default();
    let kv = js.get_key_value(bucket).await?;
    let stream = format!("KV_{bucket}");
    let mut watch = kv.watch_with_history(">").await?;
    let (seen, prefix) = (first.clone(), kv.prefix.clone());
    tokio::spawn(async move {
        while let Some(Ok(e)) = watch.next().await {
            seen.lock()
                .unwrap()
                .entry(format!("{prefix}{}", e.key))
                .or_insert(e);
        }
    });
    let request_prefix = format!("$JS.API.DIRECT.GET.{stream}.");
    let mut gets = client.subscribe(format!("{request_prefix}>")).await?;
    let answered = Arc::new(AtomicUsize::new(0));
    let (count, stream_name) = (answered.clone(), stream.clone());
    tokio::spawn(async move {
        while let Some(msg) = gets.next().await {
            let (Some(reply), Some(subject)) = (
                msg.reply.clone(),
                msg.subject
                    .strip_prefix(&request_prefix)
                    .map(str::to_string),
            ) else {
                continue;
            };
            let (first, client, stream, count) = (
                first.clone(),
                client.clone(),
                stream_name.clone(),
                count.clone(),
            );
            tokio::spawn(async move {
                // The key was written (acknowledged) before anyone could ask for it:
                // the watch delivers it shortly.
                for _ in 0..200 {
                    let found = first.lock().unwrap().get(&subject).cloned();
                    if let Some(e) = found {
                        let mut headers = async_nats::HeaderMap::new();
                        headers.insert("Nats-Stream", stream.as_str());
                        headers.insert("Nats-Subject", subject.as_str());
                        headers.insert("Nats-Sequence", e.revision.to_string().as_str());
                        // RFC 3339, as the server writes it.
                        let at = gf_schemas::Timestamp::from_datetime(e.created).to_string();
                        headers.insert("Nats-Time-Stamp", at.as_str());
                        let _ = client.publish_with_headers(reply, headers, e.value).await;
                        count.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            });
        }
    });
    // From now on the bucket's own servers answer no direct get: only the stand-in.
    let mut s = js.get_stream(&stream).await?;
    let mut cfg = s.info().await?.config.clone();
    cfg.allow_direct = false;
    js.update_stream(cfg).await?;
    Ok(answered)
}
