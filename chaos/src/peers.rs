//! The load suite's peers: the same no-op load through other job systems on the same
//! machine, each started and stopped here on its own ports and in its own temporary
//! folder (`benchmarks/peers/`, installed by `scripts/install-peers.sh`):
//!
//! - **taskiq + taskiq-nats**: the JetStream pull broker on a `nats-server` of its own
//!   (the same binary and settings as ours), 8 worker processes (`taskiq worker
//!   --workers 8`) with 8 tasks at once each, a pipelined producer (256 in flight);
//! - **Celery + Redis**: one worker node with 8 prefork processes, late
//!   acknowledgement and re-queue on a lost worker, results ignored;
//! - **apalis + Redis**: 8 apalis workers (each its own Redis connection, 8 tasks at
//!   once) with apalis-redis's defaults (task locking, results kept), pushes of 64 in
//!   flight 64 at a time.
//!
//! Redis runs with its append-only file synced every second (the closest to
//! JetStream's file store with its default sync). Each measurement runs a warm-up of
//! 200 tasks first, then `jobs` tasks; the figure is first submission to last
//! completion, as for Gigafactory. CPU is counted per process tree.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::Serialize;

/// Tasks run before each measurement, so every process has started and connected.
const WARM_UP: usize = 200;

/// Where the peers live and what they were built into.
pub struct Installed {
    pub redis_server: PathBuf,
    pub venv: PathBuf,
    pub apalis: PathBuf,
    pub dir: PathBuf,
}

impl Installed {
    /// The peers as `scripts/install-peers.sh` leaves them, under the repository
    /// root; `None` (with the reason) when something is missing.
    pub fn find(root: &Path) -> Result<Self, String> {
        let dir = root.join("benchmarks/peers");
        let venv = dir.join(".venv");
        let apalis = dir.join("apalis/target/release/gf-peer-apalis");
        let redis_server = which("redis-server").ok_or("redis-server is not installed")?;
        if !venv.join("bin/taskiq").exists() || !venv.join("bin/celery").exists() {
            return Err(format!("no taskiq and celery in {}", venv.display()));
        }
        if !apalis.exists() {
            return Err(format!("{} is not built", apalis.display()));
        }
        Ok(Self {
            redis_server,
            venv,
            apalis,
            dir,
        })
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// One peer's measurement.
#[derive(Clone, Debug, Serialize)]
pub struct PeerRun {
    pub system: String,
    /// What "8 workers" means for it.
    pub workers: String,
    pub jobs: usize,
    pub seconds: f64,
    pub jobs_per_sec: f64,
    /// CPU milliseconds per task by process kind (broker, workers, producer).
    pub cpu_ms_per_job: HashMap<String, f64>,
}

/// A process started here, in a process group of its own, killed (the whole group)
/// when dropped.
struct Spawned {
    name: String,
    child: Child,
}

impl Spawned {
    fn start(name: &str, cmd: &mut Command, log: &Path) -> anyhow::Result<Self> {
        use std::os::unix::process::CommandExt;
        let out = std::fs::File::create(log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        Ok(Self {
            name: name.into(),
            child,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails with the log's tail if the process has already exited.
    fn check(&mut self, log: &Path) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            bail!(
                "{} exited ({status}):\n{}",
                self.name,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        Ok(())
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        use nix::sys::signal::{killpg, Signal};
        use nix::unistd::Pid;
        // The group is the child's own (process_group(0)): only what we started.
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// CPU ms of a process and all its descendants alive now (utime + stime, and the
/// children it reaped).
fn tree_cpu_ms(root: u32) -> f64 {
    let mut parent_of: HashMap<u32, u32> = HashMap::new();
    let mut cpu: HashMap<u32, f64> = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(close) = s.rfind(')') else { continue };
        let f: Vec<&str> = s[close + 2..].split_whitespace().collect();
        let (Some(ppid), Some(times)) = (f.get(1).and_then(|p| p.parse().ok()), f.get(11..15))
        else {
            continue;
        };
        parent_of.insert(pid, ppid);
        let ticks: f64 = times.iter().filter_map(|x| x.parse::<f64>().ok()).sum();
        cpu.insert(pid, ticks * 10.0); // USER_HZ = 100
    }
    cpu.iter()
        .filter(|(pid, _)| {
            let mut p = **pid;
            for _ in 0..64 {
                if p == root {
                    return true;
                }
                match parent_of.get(&p) {
                    Some(&pp) if pp != p && pp != 0 => p = pp,
                    _ => return false,
                }
            }
            false
        })
        .map(|(_, ms)| ms)
        .sum()
}

/// CPU ms of the children this process has reaped (a finished producer's, say).
fn reaped_children_cpu_ms() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let Some(close) = s.rfind(')') else {
        return 0.0;
    };
    let f: Vec<&str> = s[close + 2..].split_whitespace().collect();
    f.get(13..15)
        .map(|t| t.iter().filter_map(|x| x.parse::<f64>().ok()).sum::<f64>() * 10.0)
        .unwrap_or(0.0)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits until `ready` holds (checked every 50 ms), failing after `within`.
fn wait_for(
    what: &str,
    within: Duration,
    mut ready: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while !ready()? {
        if Instant::now() > deadline {
            bail!("{what} not ready after {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Runs a producer (or a self-contained peer) to the end and reads its JSON line.
fn run_json(cmd: &mut Command, what: &str) -> anyhow::Result<serde_json::Value> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .rev()
                .take(10)
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .with_context(|| format!("{what} printed no figures: {text}"))?;
    Ok(serde_json::from_str(line)?)
}

/// A Redis server of the suite's own: its port, its folder, append-only file synced
/// every second.
fn redis(installed: &Installed, dir: &Path) -> anyhow::Result<(Spawned, u16)> {
    let port = free_port()?;
    let log = dir.join("redis.log");
    let mut server = Spawned::start(
        "redis-server",
        Command::new(&installed.redis_server)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--dir", &dir.to_string_lossy()])
            .args(["--appendonly", "yes", "--appendfsync", "everysec"])
            .args(["--save", "", "--protected-mode", "yes"]),
        &log,
    )?;
    wait_for("redis-server", Duration::from_secs(20), || {
        server.check(&log)?;
        Ok(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok())
    })?;
    Ok((server, port))
}

/// Measures every peer with `jobs` no-op tasks and 8 workers (`workers`, `slots`).
pub fn run_all(
    installed: &Installed,
    jobs: usize,
    workers: usize,
    slots: u32,
) -> anyhow::Result<Vec<PeerRun>> {
    let mut out = Vec::new();
    for (name, run) in [
        ("taskiq", taskiq as PeerFn),
        ("celery", |i, j, w, _| celery(i, j, w)),
        ("apalis", apalis),
    ] {
        let r = run(installed, jobs, workers, slots).with_context(|| format!("peer {name}"))?;
        println!(
            "peer {:<52} {:>7.0} jobs/s ({} jobs in {:.1} s; {})",
            r.system, r.jobs_per_sec, r.jobs, r.seconds, r.workers
        );
        out.push(r);
    }
    Ok(out)
}

type PeerFn = fn(&Installed, usize, usize, u32) -> anyhow::Result<PeerRun>;

fn per_job(cpu: &[(&str, f64)], jobs: usize) -> HashMap<String, f64> {
    cpu.iter()
        .map(|(k, ms)| (k.to_string(), ms / jobs as f64))
        .collect()
}

fn figures(v: &serde_json::Value, what: &str) -> anyhow::Result<(f64, f64)> {
    match (v["seconds"].as_f64(), v["jobs_per_sec"].as_f64()) {
        (Some(s), Some(r)) => Ok((s, r)),
        _ => bail!("{what}: unexpected figures {v}"),
    }
}

/// What a Python peer did with `jobs` tasks: its figures and the CPU time per job of
/// its broker, its worker pool and its producer.
struct Measured {
    seconds: f64,
    jobs_per_sec: f64,
    cpu_ms_per_job: HashMap<String, f64>,
}

impl Measured {
    fn run(self, system: &str, workers: String, jobs: usize) -> PeerRun {
        PeerRun {
            system: system.into(),
            workers,
            jobs,
            seconds: self.seconds,
            jobs_per_sec: self.jobs_per_sec,
            cpu_ms_per_job: self.cpu_ms_per_job,
        }
    }
}

/// Runs a Python peer's producer against its running worker pool: a warm-up batch
/// (the pool must still be alive after it), then `jobs` tasks, over which the CPU time
/// of the broker, the pool and the producer (a reaped child of this process) is taken.
fn measure_pool(
    produce: impl Fn(usize) -> anyhow::Result<serde_json::Value>,
    pool: &mut Spawned,
    pool_log: &Path,
    (broker_name, broker): (&str, &Spawned),
    jobs: usize,
    what: &str,
) -> anyhow::Result<Measured> {
    produce(WARM_UP)?;
    pool.check(pool_log)?;
    let cpu = || {
        (
            tree_cpu_ms(broker.pid()),
            tree_cpu_ms(pool.pid()),
            reaped_children_cpu_ms(),
        )
    };
    let before = cpu();
    let v = produce(jobs)?;
    let after = cpu();
    let (seconds, jobs_per_sec) = figures(&v, what)?;
    Ok(Measured {
        seconds,
        jobs_per_sec,
        cpu_ms_per_job: per_job(
            &[
                (broker_name, after.0 - before.0),
                ("workers", after.1 - before.1),
                ("producer", after.2 - before.2),
            ],
            jobs,
        ),
    })
}

fn taskiq(
    installed: &Installed,
    jobs: usize,
    workers: usize,
    slots: u32,
) -> anyhow::Result<PeerRun> {
    let dir = tempfile::Builder::new()
        .prefix("gf-peer-taskiq-")
        .tempdir()?;
    let port = free_port()?;
    let log = dir.path().join("nats.log");
    let mut nats = Spawned::start(
        "nats-server",
        Command::new(gf_testkit::nats_server_bin())
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js"])
            .args(["-sd", &dir.path().join("js").to_string_lossy()]),
        &log,
    )?;
    wait_for("nats-server", Duration::from_secs(20), || {
        nats.check(&log)?;
        Ok(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok())
    })?;
    let url = format!("nats://127.0.0.1:{port}");
    let bin = installed.venv.join("bin");
    let wlog = dir.path().join("workers.log");
    let mut pool = Spawned::start(
        "taskiq workers",
        Command::new(bin.join("taskiq"))
            .current_dir(&installed.dir)
            .env("GF_PEER_NATS_URL", &url)
            .env("GF_PEER_PULL_BATCH", slots.to_string())
            .args([
                "worker",
                "taskiq_peer:broker",
                "--workers",
                &workers.to_string(),
            ])
            .args([
                "--max-async-tasks",
                &slots.to_string(),
                "--log-level",
                "WARNING",
            ]),
        &wlog,
    )?;
    let produce = |n: usize| {
        let mut cmd = Command::new(bin.join("python"));
        cmd.current_dir(&installed.dir)
            .env("GF_PEER_NATS_URL", &url)
            .args(["taskiq_peer.py", "produce", &n.to_string()]);
        run_json(&mut cmd, "the taskiq producer")
    };
    let m = measure_pool(
        produce,
        &mut pool,
        &wlog,
        ("nats-server", &nats),
        jobs,
        "taskiq",
    )?;
    Ok(m.run(
        "taskiq 0.13 + taskiq-nats 0.7 (JetStream pull broker)",
        format!("{workers} worker processes × {slots} async tasks"),
        jobs,
    ))
}

fn celery(installed: &Installed, jobs: usize, workers: usize) -> anyhow::Result<PeerRun> {
    let dir = tempfile::Builder::new()
        .prefix("gf-peer-celery-")
        .tempdir()?;
    let (redis, port) = redis(installed, dir.path())?;
    let url = format!("redis://127.0.0.1:{port}/0");
    let bin = installed.venv.join("bin");
    let wlog = dir.path().join("workers.log");
    let mut pool = Spawned::start(
        "celery worker",
        Command::new(bin.join("celery"))
            .current_dir(&installed.dir)
            .env("GF_PEER_REDIS_URL", &url)
            .args(["-A", "celery_peer", "worker", "--pool", "prefork"])
            .args([
                "--concurrency",
                &workers.to_string(),
                "--loglevel",
                "WARNING",
            ])
            .args([
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ]),
        &wlog,
    )?;
    let produce = |n: usize| {
        let mut cmd = Command::new(bin.join("python"));
        cmd.current_dir(&installed.dir)
            .env("GF_PEER_REDIS_URL", &url)
            .args(["celery_peer.py", "produce", &n.to_string()]);
        run_json(&mut cmd, "the Celery producer")
    };
    let m = measure_pool(
        produce,
        &mut pool,
        &wlog,
        ("redis-server", &redis),
        jobs,
        "celery",
    )?;
    Ok(m.run(
        "Celery 5.7 + Redis 7.0",
        format!("1 worker node × {workers} prefork processes"),
        jobs,
    ))
}

fn apalis(
    installed: &Installed,
    jobs: usize,
    workers: usize,
    slots: u32,
) -> anyhow::Result<PeerRun> {
    let dir = tempfile::Builder::new()
        .prefix("gf-peer-apalis-")
        .tempdir()?;
    let (redis, port) = redis(installed, dir.path())?;
    let url = format!("redis://127.0.0.1:{port}/");
    let run = |n: usize| {
        let mut cmd = Command::new(&installed.apalis);
        cmd.args([
            &url,
            &n.to_string(),
            &workers.to_string(),
            &slots.to_string(),
        ]);
        run_json(&mut cmd, "the apalis peer")
    };
    run(WARM_UP)?;
    let before = (tree_cpu_ms(redis.pid()), reaped_children_cpu_ms());
    let v = run(jobs)?;
    let after = (tree_cpu_ms(redis.pid()), reaped_children_cpu_ms());
    let (seconds, rate) = figures(&v, "apalis")?;
    Ok(PeerRun {
        system: "apalis 1.0 + apalis-redis 1.0 (task locking on)".into(),
        workers: format!("{workers} apalis workers × {slots} tasks, one process"),
        jobs,
        seconds,
        jobs_per_sec: rate,
        cpu_ms_per_job: per_job(
            &[
                ("redis-server", after.0 - before.0),
                ("workers and producer (one process)", after.1 - before.1),
            ],
            jobs,
        ),
    })
}
