//! The process backend: every part is an OS process on loopback.
//!
//! NATS nodes are `nats-server` processes (client ports chosen by the server itself and
//! read from its ports file; cluster ports, which the nodes must know of each other
//! before they start, are drawn below the kernel's ephemeral range so they cannot
//! collide with ports handed out by `-p -1`/port 0 elsewhere, and a start that finds
//! one taken is retried with another). Coordinators and workers are `gf coordinator`
//! and `gf worker` processes. Everything is killed when the cluster is dropped.
//!
//! Secured ([`ClusterSpec::secured`]), the cluster is set up the way an operator sets up
//! a deployment (docs/security.md): `gf admin init` writes the secrets into the run's
//! folder, each node's config carries the `nats.conf` it wrote (accounts, the auth
//! callout), coordinators run with `--secrets-dir`, `gf factory token create` (as the
//! operators' user) makes one token every worker enrolls with (`--key-dir`, the token
//! in `GF_ENROLL_TOKEN`, never on a command line), and the suite's own clients connect
//! as `gf-admin`.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::cluster::{Cluster, ClusterSpec, Fault, Part, WorkerSpec};
use crate::proxy::Proxy;

/// How to run the `gf` binary: a program and the arguments that come before `gf`'s own.
#[derive(Clone, Debug)]
pub struct GfCommand {
    pub program: PathBuf,
    pub prefix: Vec<String>,
    /// Run the cluster on docker-compose instead (coordinators and workers are
    /// containers of the gf image; `program` is then unused).
    pub compose: Option<crate::compose::ComposeOptions>,
    /// Run every scenario's process cluster secured ([`ClusterSpec::secured`]; `chaos
    /// --secured`). The compose deployment is always secured.
    pub secured: bool,
}

impl GfCommand {
    /// The `chaos` binary itself, whose hidden `gf` subcommand is the `gf` CLI built
    /// from the same sources (so a stale `gf` next to it can never be tested by mistake).
    pub fn self_exec() -> anyhow::Result<Self> {
        Ok(Self {
            program: std::env::current_exe()?,
            prefix: vec!["gf".into()],
            compose: None,
            secured: false,
        })
    }
    /// An external `gf` binary.
    pub fn external(path: PathBuf) -> Self {
        Self {
            program: path,
            prefix: Vec::new(),
            compose: None,
            secured: false,
        }
    }
}

/// A process we can kill, pause and start again with the same command line.
struct Proc {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = File::options().create(true).append(true).open(&self.log)?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {} ({})", self.name, self.program.display()))?;
        self.child = Some(child);
        Ok(())
    }
    fn pid(&self) -> Option<Pid> {
        self.child.as_ref().map(|c| Pid::from_raw(c.id() as i32))
    }
    fn signal(&self, sig: Signal) -> anyhow::Result<()> {
        let pid = self
            .pid()
            .with_context(|| format!("{} is not running", self.name))?;
        kill(pid, sig).with_context(|| format!("{sig} to {}", self.name))?;
        Ok(())
    }
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGCONT);
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    fn stop(&mut self, grace: Duration) -> anyhow::Result<()> {
        self.signal(Signal::SIGTERM)?;
        let deadline = Instant::now() + grace;
        while self.alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        Ok(())
    }
    fn alive(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

struct NatsNode {
    proc: Proc,
    conf: PathBuf,
    dir: PathBuf,
    client_port: Option<u16>,
    monitor_port: Option<u16>,
}

/// What a secured cluster keeps: the secrets `gf admin init` wrote, and the workers'
/// enrollment token once made.
struct Secured {
    dir: PathBuf,
    secrets: gf_auth::Secrets,
    token: Option<String>,
}

struct WorkerEntry {
    proc: Proc,
    id: String,
    proxy: Option<Proxy>,
}

pub struct ProcessCluster {
    spec: ClusterSpec,
    gf: GfCommand,
    dir: tempfile::TempDir,
    nats: Vec<NatsNode>,
    cluster_ports: Vec<u16>,
    coordinators: Vec<(Proc, String)>,
    workers: Vec<WorkerEntry>,
    log_level: String,
    secured: Option<Secured>,
}

/// Client and monitoring ports from a ports file
/// (`{"nats": ["nats://127.0.0.1:PORT"], "monitoring": ["http://127.0.0.1:PORT"]}`).
fn read_ports_file(path: &Path) -> Option<(u16, Option<u16>)> {
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let port = |key: &str| -> Option<u16> { v[key][0].as_str()?.rsplit(':').next()?.parse().ok() };
    Some((port("nats")?, port("monitoring")))
}

/// Three free ports below the ephemeral range (see the module docs).
fn pick_cluster_ports(n: usize) -> Vec<u16> {
    loop {
        let base = 20_000 + rand::random_range(0..12_000u16);
        let ports: Vec<u16> = (0..n as u16).map(|i| base + i).collect();
        if ports
            .iter()
            .all(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        {
            return ports;
        }
    }
}

impl ProcessCluster {
    /// Starts the NATS node(s) and waits until each accepts connections. Coordinators
    /// and workers are added with [`Cluster::add_coordinator`] / [`Cluster::add_worker`].
    pub fn start(spec: ClusterSpec, gf: GfCommand) -> anyhow::Result<Self> {
        // CHAOS_KEEP=1 keeps the logs and NATS stores for a post-mortem.
        let keep = std::env::var_os("CHAOS_KEEP").is_some();
        let dir = tempfile::Builder::new()
            .prefix("gf-chaos-")
            .disable_cleanup(keep)
            .tempdir()?;
        if keep {
            eprintln!("chaos: keeping {}", dir.path().display());
        }
        let mut c = Self {
            spec,
            gf,
            dir,
            nats: Vec::new(),
            cluster_ports: Vec::new(),
            coordinators: Vec::new(),
            workers: Vec::new(),
            log_level: std::env::var("CHAOS_GF_LOG").unwrap_or_else(|_| "warn".into()),
            secured: None,
        };
        if c.spec.secured {
            c.secured = Some(c.admin_init()?);
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            match c.start_nats() {
                Ok(()) => break,
                Err(e) if attempt < 4 => {
                    eprintln!("chaos: NATS did not start ({e:#}); retrying with other ports");
                    c.nats.clear();
                }
                Err(e) => return Err(e),
            }
        }
        Ok(c)
    }

    /// `gf admin init` into the run's folder, and the secrets it wrote.
    fn admin_init(&self) -> anyhow::Result<Secured> {
        let dir = self.dir.path().join("secrets");
        let dir_arg = dir.display().to_string();
        self.gf_output("gf admin init", &["admin", "init", &dir_arg], None)?;
        let secrets = gf_auth::Secrets::read(&dir)
            .with_context(|| format!("gf admin init wrote no secrets into {dir_arg}"))?;
        Ok(Secured {
            dir,
            secrets,
            token: None,
        })
    }

    /// Runs a short `gf` command to its end (as the operator when `nats_url` is given)
    /// and returns what it printed on stdout.
    fn gf_output(
        &self,
        what: &str,
        args: &[&str],
        nats_url: Option<String>,
    ) -> anyhow::Result<String> {
        let mut cmd = Command::new(&self.gf.program);
        cmd.args(&self.gf.prefix)
            .args(args)
            .env("GF_LOG", "warn")
            .stdin(Stdio::null());
        if let Some(url) = nats_url {
            cmd.env("GF_NATS_URL", url);
        }
        let out = cmd
            .output()
            .with_context(|| format!("cannot run {what} ({})", self.gf.program.display()))?;
        if !out.status.success() {
            bail!(
                "{what} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The workers' enrollment token, made (once) by `gf factory token create` as the
    /// operator: one token with enough uses for every worker of the run, as the
    /// compose deployment's `enroll` service makes one for its fleet.
    fn enrollment_token(&mut self) -> anyhow::Result<Option<String>> {
        let Some(s) = &self.secured else {
            return Ok(None);
        };
        if let Some(t) = &s.token {
            return Ok(Some(t.clone()));
        }
        if self.coordinators.is_empty() {
            bail!("secured workers enroll through a coordinator's auth callout: add one first");
        }
        let url = s.secrets.admin_url(&self.node_url(0));
        let out = self.gf_output(
            "gf factory token create",
            &[
                "factory", "token", "create", "--ttl", "24h", "--uses", "100000",
            ],
            Some(url),
        )?;
        let token = out.trim().to_string();
        if !token.starts_with("gfe_") {
            bail!("gf factory token create printed no token: {out:?}");
        }
        if let Some(s) = &mut self.secured {
            s.token = Some(token.clone());
        }
        Ok(Some(token))
    }

    fn start_nats(&mut self) -> anyhow::Result<()> {
        let n = self.spec.nats_nodes;
        if n != 1 && n != 3 {
            bail!("NATS nodes must be 1 or 3, not {n}");
        }
        self.cluster_ports = if n > 1 {
            pick_cluster_ports(n)
        } else {
            Vec::new()
        };
        for i in 0..n {
            let dir = self.dir.path().join(format!("nats-{i}"));
            std::fs::create_dir_all(dir.join("ports"))?;
            self.nats.push(NatsNode {
                proc: Proc {
                    name: format!("nats-{i}"),
                    program: gf_testkit::nats_server_bin(),
                    args: Vec::new(),
                    env: Vec::new(),
                    log: dir.join("nats.log"),
                    child: None,
                },
                conf: dir.join("nats.conf"),
                dir,
                client_port: None,
                monitor_port: None,
            });
        }
        for i in 0..n {
            self.spawn_nats(i)?;
        }
        for i in 0..n {
            self.wait_nats_port(i)?;
        }
        Ok(())
    }

    fn write_nats_conf(&self, i: usize) -> anyhow::Result<()> {
        let node = &self.nats[i];
        let port = node
            .client_port
            .map(|p| p.to_string())
            .unwrap_or_else(|| "-1".into());
        let http = node
            .monitor_port
            .map(|p| p.to_string())
            .unwrap_or_else(|| "-1".into());
        let mut conf = format!(
            "server_name: n{i}\nlisten: \"127.0.0.1:{port}\"\nhttp: \"127.0.0.1:{http}\"\n\
             ports_file_dir: \"{}\"\n\
             jetstream {{\n  store_dir: \"{}\"\n{}}}\n",
            node.dir.join("ports").display(),
            node.dir.join("js").display(),
            if self.spec.durable {
                "  sync_interval: always\n"
            } else {
                ""
            }
        );
        if !self.cluster_ports.is_empty() {
            let routes: Vec<String> = self
                .cluster_ports
                .iter()
                .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
                .collect();
            conf.push_str(&format!(
                "cluster {{\n  name: gfchaos\n  listen: \"127.0.0.1:{}\"\n  routes: [{}]\n}}\n",
                self.cluster_ports[i],
                routes.join(", ")
            ));
        }
        if let Some(s) = &self.secured {
            // What `gf admin init` wrote: the accounts, static users and auth callout.
            let secured = std::fs::read_to_string(s.dir.join("nats.conf"))
                .context("the secrets folder has no nats.conf")?;
            conf.push_str(&secured);
        }
        std::fs::write(&node.conf, conf)?;
        Ok(())
    }

    fn spawn_nats(&mut self, i: usize) -> anyhow::Result<()> {
        self.write_nats_conf(i)?;
        let node = &mut self.nats[i];
        // Stale ports files from an earlier run of this node would be misread.
        for e in std::fs::read_dir(node.dir.join("ports"))?.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
        node.proc.args = vec!["-c".into(), node.conf.display().to_string()];
        node.proc.spawn()
    }

    fn wait_nats_port(&mut self, i: usize) -> anyhow::Result<()> {
        let node = &mut self.nats[i];
        let pid = node.proc.pid().context("not started")?;
        let ports_file = node
            .dir
            .join("ports")
            .join(format!("nats-server_{pid}.ports"));
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if !node.proc.alive() {
                bail!("nats-{i} exited: {}", node.proc.log_tail());
            }
            if let Some((port, monitor)) = read_ports_file(&ports_file) {
                node.client_port = Some(port);
                node.monitor_port = monitor;
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "nats-{i} did not report its port within 15s: {}",
            node.proc.log_tail()
        )
    }

    /// Monitoring endpoint (`/varz`, …) of one node.
    pub fn monitor_url(&self, i: usize) -> Option<String> {
        let p = self.nats.get(i)?.monitor_port?;
        Some(format!("http://127.0.0.1:{p}"))
    }

    /// Process id of a part, if it runs.
    pub fn pid(&self, part: Part) -> Option<u32> {
        let proc = match part {
            Part::Nats(i) => &self.nats.get(i)?.proc,
            Part::Coordinator(i) => &self.coordinators.get(i)?.0,
            Part::Worker(i) => &self.workers.get(i)?.proc,
        };
        proc.child.as_ref().map(|c| c.id())
    }

    fn gf_proc(&self, name: String, args: Vec<String>, nats_url: String) -> Proc {
        let mut full = self.gf.prefix.clone();
        full.extend(args);
        Proc {
            log: self.dir.path().join(format!("{name}.log")),
            name,
            program: self.gf.program.clone(),
            args: full,
            env: vec![
                ("GF_NATS_URL".into(), nats_url),
                ("GF_LOG".into(), self.log_level.clone()),
            ],
            child: None,
        }
    }
}

impl Cluster for ProcessCluster {
    fn nats_url(&self) -> String {
        (0..self.nats.len())
            .map(|i| self.node_url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn node_url(&self, i: usize) -> String {
        format!(
            "nats://127.0.0.1:{}",
            self.nats[i].client_port.unwrap_or_default()
        )
    }

    fn work_dir(&self) -> &Path {
        self.dir.path()
    }

    fn spec(&self) -> &ClusterSpec {
        &self.spec
    }

    fn add_coordinator(&mut self) -> anyhow::Result<(Part, String)> {
        let i = self.coordinators.len();
        let id = format!("coord-{i}");
        let t = &self.spec.timings;
        let args = vec![
            "coordinator".into(),
            "--id".into(),
            id.clone(),
            "--http-addr".into(),
            "127.0.0.1:0".into(),
            "--lease-ttl".into(),
            format!("{}ms", t.lease_ttl.as_millis()),
            "--claim-timeout".into(),
            format!("{}ms", t.claim_timeout.as_millis()),
            "--reaper-period".into(),
            format!("{}ms", t.reaper_period.as_millis()),
            "--replicas".into(),
            self.spec.nats_nodes.to_string(),
            // The suite drives the fleet over NATS; its HTTP API is loopback-only here.
            "--no-auth".into(),
        ];
        let mut args = args;
        if let Some(s) = &self.secured {
            // The coordinators' nkey user, and the auth callout answered by each.
            args.extend(["--secrets-dir".into(), s.dir.display().to_string()]);
        }
        // One server URL per process, spread over the nodes: `gf` takes a single URL,
        // and the client learns the other nodes from the server and fails over to them.
        let url = self.node_url(i % self.nats.len());
        let mut p = self.gf_proc(id.clone(), args, url);
        p.env.extend(self.spec.coordinator_env());
        p.spawn()?;
        self.coordinators.push((p, id.clone()));
        Ok((Part::Coordinator(i), id))
    }

    fn add_worker(&mut self, spec: WorkerSpec) -> anyhow::Result<Part> {
        let i = self.workers.len();
        let token = self.enrollment_token()?;
        let proxy = if spec.via_proxy {
            let target = self.node_url(0).trim_start_matches("nats://").to_string();
            Some(Proxy::start_blocking(target)?)
        } else {
            None
        };
        let url = match &proxy {
            Some(p) => p.url(),
            None => self.node_url(i % self.nats.len()),
        };
        let scratch = self.dir.path().join(format!("scratch-{}", spec.id));
        let args = vec![
            "worker".into(),
            "--id".into(),
            spec.id.clone(),
            "--slots".into(),
            spec.slots.to_string(),
            "--drain-grace".into(),
            "2s".into(),
            "--scratch-dir".into(),
            scratch.display().to_string(),
        ];
        let mut args = args;
        if token.is_some() {
            // Its own key, made at its first start and kept across restarts: the
            // token enrolls it once, then the key alone lets it in.
            let key_dir = self.dir.path().join("factories").join(&spec.id);
            args.extend(["--key-dir".into(), key_dir.display().to_string()]);
        }
        let mut p = self.gf_proc(format!("worker-{}", spec.id), args, url);
        if let Some(token) = token {
            p.env.push(("GF_ENROLL_TOKEN".into(), token));
        }
        if let Some(offset) = &spec.clock_offset {
            // libfaketime, preloaded into the worker itself (not the `faketime`
            // wrapper, whose child would outlive a kill -9 of the wrapper), shifts the
            // wall clock the worker and its jobs see.
            let lib = libfaketime().context("libfaketime not found (scripts/install-chaos-deps.sh, or apt-get install faketime)")?;
            p.env.push(("LD_PRELOAD".into(), lib.display().to_string()));
            p.env.push(("FAKETIME".into(), offset.clone()));
            p.env
                .push(("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()));
        }
        p.spawn()?;
        self.workers.push(WorkerEntry {
            proc: p,
            id: spec.id,
            proxy,
        });
        Ok(Part::Worker(i))
    }

    fn inject(&mut self, part: Part, fault: Fault) -> anyhow::Result<()> {
        if let Part::Nats(i) = part {
            let node = self.nats.get_mut(i).context("no such NATS node")?;
            return match fault {
                Fault::Kill => {
                    node.proc.kill();
                    Ok(())
                }
                Fault::Pause => node.proc.signal(Signal::SIGSTOP),
                Fault::Resume => node.proc.signal(Signal::SIGCONT),
                Fault::Stop => node.proc.stop(Duration::from_secs(30)),
                Fault::Start => {
                    node.proc.kill();
                    self.spawn_nats(i)?;
                    self.wait_nats_port(i)
                }
                Fault::Cut | Fault::Heal => bail!("{fault:?} applies to workers behind a proxy"),
            };
        }
        if let Part::Worker(i) = part {
            let w = self.workers.get(i).context("no such worker")?;
            match fault {
                Fault::Cut => {
                    w.proxy.as_ref().context("worker not behind a proxy")?.cut();
                    return Ok(());
                }
                Fault::Heal => {
                    w.proxy
                        .as_ref()
                        .context("worker not behind a proxy")?
                        .heal();
                    return Ok(());
                }
                _ => {}
            }
        }
        let proc = match part {
            Part::Coordinator(i) => {
                &mut self
                    .coordinators
                    .get_mut(i)
                    .context("no such coordinator")?
                    .0
            }
            Part::Worker(i) => &mut self.workers.get_mut(i).context("no such worker")?.proc,
            Part::Nats(_) => unreachable!(),
        };
        match fault {
            Fault::Kill => {
                proc.signal(Signal::SIGKILL)?;
                proc.kill();
                Ok(())
            }
            Fault::Pause => proc.signal(Signal::SIGSTOP),
            Fault::Resume => proc.signal(Signal::SIGCONT),
            Fault::Stop => proc.stop(Duration::from_secs(30)),
            Fault::Start => {
                proc.kill();
                proc.spawn()
            }
            Fault::Cut | Fault::Heal => bail!("{fault:?} applies to workers behind a proxy"),
        }
    }

    fn alive(&mut self, part: Part) -> bool {
        match part {
            Part::Nats(i) => self.nats.get_mut(i).is_some_and(|n| n.proc.alive()),
            Part::Coordinator(i) => self.coordinators.get_mut(i).is_some_and(|c| c.0.alive()),
            Part::Worker(i) => self.workers.get_mut(i).is_some_and(|w| w.proc.alive()),
        }
    }

    fn name(&self, part: Part) -> Option<String> {
        match part {
            Part::Nats(i) => (i < self.nats.len()).then(|| format!("n{i}")),
            Part::Coordinator(i) => self.coordinators.get(i).map(|c| c.1.clone()),
            Part::Worker(i) => self.workers.get(i).map(|w| w.id.clone()),
        }
    }

    fn parts(&self) -> Vec<Part> {
        let mut v: Vec<Part> = (0..self.nats.len()).map(Part::Nats).collect();
        v.extend((0..self.coordinators.len()).map(Part::Coordinator));
        v.extend((0..self.workers.len()).map(Part::Worker));
        v
    }

    fn log_tail(&self, part: Part) -> String {
        match part {
            Part::Nats(i) => self.nats.get(i).map(|n| n.proc.log_tail()),
            Part::Coordinator(i) => self.coordinators.get(i).map(|c| c.0.log_tail()),
            Part::Worker(i) => self.workers.get(i).map(|w| w.proc.log_tail()),
        }
        .unwrap_or_default()
    }

    fn operator_url(&self, i: usize) -> String {
        match &self.secured {
            Some(s) => s.secrets.admin_url(&self.node_url(i)),
            None => self.node_url(i),
        }
    }

    fn connect_options(&self) -> anyhow::Result<async_nats::ConnectOptions> {
        Ok(match &self.secured {
            Some(s) => async_nats::ConnectOptions::new().user_and_password(
                gf_auth::secrets::ADMIN_USER.into(),
                s.secrets.admin_password.clone(),
            ),
            None => async_nats::ConnectOptions::new(),
        })
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        // Workers first (their jobs die with them), then coordinators, then NATS.
        for w in &mut self.workers {
            w.proc.kill();
        }
        for c in &mut self.coordinators {
            c.0.kill();
        }
        for n in &mut self.nats {
            n.proc.kill();
        }
    }
}

/// The multi-threaded libfaketime (`$CHAOS_LIBFAKETIME`, or Debian's path).
pub fn libfaketime() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHAOS_LIBFAKETIME") {
        return Some(PathBuf::from(p));
    }
    [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/faketime/libfaketimeMT.so.1",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// Worker ids by part, for reports.
pub fn worker_ids(c: &dyn Cluster) -> HashMap<String, Part> {
    c.parts()
        .into_iter()
        .filter(|p| matches!(p, Part::Worker(_)))
        .filter_map(|p| c.name(p).map(|n| (n, p)))
        .collect()
}
