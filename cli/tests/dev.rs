//! `gf dev` as a real process (issue #15, "secure by default"): it makes its own
//! secrets, starts a secured nats-server, enrolls its workers with tokens and prints
//! how an operator connects; a re-run reuses every credential and key; `--insecure`
//! keeps the open mode, which `gf doctor` reports loudly, and fails under a production
//! profile.

mod common;

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use common::*;
use gf_schemas::{JobId, JobState};

/// A running `gf dev` and what it printed up to "Ctrl-C stops everything.".
struct Dev {
    child: Child,
    out: String,
    nats: String,
    http: String,
}

impl Dev {
    fn start(data: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        Self::start_with(data, extra, |_| {})
    }

    /// [`Dev::start`], with `configure` changing the command before it is spawned.
    fn start_with(
        data: &Path,
        extra: &[&str],
        configure: impl FnOnce(&mut Command),
    ) -> anyhow::Result<Self> {
        let mut command = Command::new(env!("CARGO_BIN_EXE_gf"));
        command
            .args([
                "dev",
                "--workers",
                "2",
                "--nats-url",
                "nats://127.0.0.1:0",
                "--http-addr",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(data)
            .args(extra)
            .env_remove("GF_NATS_URL")
            .env_remove("GF_ENV")
            .env("GF_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        configure(&mut command);
        let mut child = command.spawn()?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut out = String::new();
        let mut dev = Self {
            child,
            out: String::new(),
            nats: String::new(),
            http: String::new(),
        };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    out.push_str(&line);
                    out.push('\n');
                    if line.starts_with("Ctrl-C stops everything") {
                        break;
                    }
                }
                Err(_) => anyhow::bail!("gf dev did not come up within 60s:\n{out}"),
            }
        }
        dev.nats = out
            .lines()
            .find_map(|l| l.trim_start().strip_prefix("NATS"))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or("")
            .to_string();
        // The dashboard's line: the first http:// address in it.
        dev.http = out
            .lines()
            .find(|l| l.trim_start().starts_with("dashboard"))
            .and_then(|l| l.split("http://").nth(1))
            .and_then(|rest| rest.split('/').next())
            .unwrap_or("")
            .to_string();
        dev.out = out;
        anyhow::ensure!(
            dev.nats.starts_with("nats://127.0.0.1:") && !dev.http.is_empty(),
            "unexpected summary:\n{}",
            dev.out
        );
        Ok(dev)
    }

    /// SIGTERM, as Ctrl-C: it stops its workers, coordinator and NATS, and exits 0.
    fn stop(mut self) -> anyhow::Result<()> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        let status = self
            .exited_within(Duration::from_secs(30))?
            .context("gf dev did not stop within 30s of SIGTERM")?;
        anyhow::ensure!(status.success(), "gf dev exited with {status}");
        Ok(())
    }

    /// Its exit status once it has exited, waiting up to `within`; `None` if it still runs.
    fn exited_within(&mut self, within: Duration) -> anyhow::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            if !matches!(self.exited_within(Duration::from_secs(15)), Ok(Some(_))) {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// The operator's URL, from the password file `gf dev` names in its summary.
fn operator_url(dev: &Dev, secrets: &Path) -> anyhow::Result<String> {
    let pass = secrets.join("admin.pass");
    anyhow::ensure!(
        dev.out.contains(&format!(
            "export GF_NATS_URL=\"nats://gf-admin:$(cat {})@",
            pass.display()
        )),
        "no operator credential printed:\n{}",
        dev.out
    );
    let password = std::fs::read_to_string(&pass)?;
    Ok(format!(
        "nats://gf-admin:{}@{}",
        password.trim(),
        dev.nats.trim_start_matches("nats://")
    ))
}

/// Whether a client without credentials gets anything done on `url`.
async fn anonymous_gets_in(url: &str) -> bool {
    let Ok(c) = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .connect(url)
        .await
    else {
        return false;
    };
    matches!(
        tokio::time::timeout(
            Duration::from_secs(2),
            async_nats::jetstream::new(c).query_account()
        )
        .await,
        Ok(Ok(_))
    )
}

/// `GET path` with an optional bearer token: the status.
async fn http_status(addr: &str, path: &str, token: Option<&str>) -> anyhow::Result<u16> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    Ok(String::from_utf8_lossy(&out)
        .split_whitespace()
        .nth(1)
        .unwrap_or("0")
        .parse()?)
}

/// The job ids of the demo jobs in the summary.
fn demo_ids(out: &str) -> Vec<JobId> {
    out.lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

/// `gf doctor` with the fleet's addresses; (exit code, stdout).
fn doctor(
    dir: &Path,
    nats_url: &str,
    http: &str,
    env: Option<&str>,
) -> anyhow::Result<(i32, String)> {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gf"));
    c.arg("doctor")
        .current_dir(dir)
        .env_remove("GF_ENV")
        .env("GF_NATS_URL", nats_url)
        .env("GF_HTTP_ADDR", http)
        .env("GF_LOG", "warn");
    if let Some(e) = env {
        std::fs::write(dir.join(format!("gigafactory.{e}.toml")), "")?;
        c.env("GF_ENV", e);
    }
    let out = c.output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

fn line<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find(|l| {
            l.split_once(' ')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with(&format!("{name} ")))
        })
        .unwrap_or("")
}

fn tokens(url: &str) -> anyhow::Result<usize> {
    let (code, out, err) = gf(url, &["factory", "token", "list", "--json"])?;
    anyhow::ensure!(code == 0, "{err}");
    Ok(serde_json::from_str::<Vec<serde_json::Value>>(&out)?.len())
}

/// Secured by default: anonymous clients are refused, the operator credential it
/// prints works, its workers are enrolled factories that run the demo jobs, the HTTP
/// API wants the token it prints, and `gf doctor` passes under a production profile.
/// Stopped and started again, it reuses its secrets and keys (no new tokens).
#[tokio::test]
async fn dev_is_secured_and_reruns_with_the_same_credentials() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let secrets: PathBuf = std::path::absolute(data.path().join("secrets"))?;
    let dev = Dev::start(data.path(), &[])?;
    assert!(dev.out.contains("(secured)"), "{}", dev.out);
    assert!(
        !anonymous_gets_in(&dev.nats).await,
        "an anonymous client got in"
    );
    let admin = operator_url(&dev, &secrets)?;
    let client = Client::connect_url(&admin).await?;

    // The demo jobs run on the enrolled factories.
    let demo = demo_ids(&dev.out);
    assert_eq!(demo.len(), 5, "{}", dev.out);
    let hello = client
        .wait_terminal(demo[0], Duration::from_secs(60))
        .await?;
    assert_eq!(hello.state, JobState::Succeeded, "{hello:?}");
    let (code, out, err) = gf(&admin, &["factory", "list"])?;
    assert_eq!(code, 0, "{err}");
    for id in ["dev-worker-1", "dev-worker-2"] {
        let l = out
            .lines()
            .find(|l| l.starts_with(&format!("{id} ")))
            .unwrap_or_else(|| panic!("{id} not enrolled:\n{out}"));
        assert!(l.contains("active") && l.contains("yes"), "{out}");
    }
    let (code, _, err) = gf(&admin, &["submit", "--wait", "--", "echo", "hello"])?;
    assert_eq!(code, 0, "{err}");

    // The HTTP API wants the token gf dev printed.
    let token = std::fs::read_to_string(secrets.join(gf_cli::dev::API_TOKEN_FILE))?;
    assert!(dev.out.contains(&format!("#token={}", token.trim())));
    assert_eq!(http_status(&dev.http, "/api/jobs", None).await?, 401);
    assert_eq!(
        http_status(&dev.http, "/api/jobs", Some(token.trim())).await?,
        200
    );

    // `gf doctor` as the operator, under a production profile: auth passes.
    let cwd = tempfile::tempdir()?;
    let (code, out) = doctor(cwd.path(), &admin, &dev.http, Some("production"))?;
    assert!(line(&out, "nats auth").starts_with("pass"), "{out}");
    assert!(line(&out, "api auth").starts_with("pass"), "{out}");
    assert!(!out.contains("OPEN"), "{out}");
    assert_eq!(code, 0, "{out}");

    let before = std::fs::read_to_string(secrets.join("admin.pass"))?;
    let tokens_before = tokens(&admin)?;
    assert_eq!(tokens_before, 2, "one token per worker");
    drop(client);
    dev.stop()?;

    // Again: same secrets, same keys, no new token; the fleet works.
    let dev = Dev::start(data.path(), &[])?;
    assert_eq!(std::fs::read_to_string(secrets.join("admin.pass"))?, before);
    let admin = operator_url(&dev, &secrets)?;
    assert_eq!(tokens(&admin)?, tokens_before, "a re-run made new tokens");
    let (code, _, err) = gf(&admin, &["submit", "--wait", "--", "echo", "again"])?;
    assert_eq!(code, 0, "{err}");
    dev.stop()?;
    Ok(())
}

/// The processes whose command line names `dir` (a `gf dev`'s data folder: its
/// nats-server's store is under it), with their pids.
fn processes_under(dir: &Path) -> Vec<(i32, String)> {
    let dir = dir.display().to_string();
    let inside = format!("{dir}/");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline);
        // An argument naming the folder or a path in it (not a longer name).
        if cmdline
            .split('\0')
            .any(|arg| arg == dir || arg.contains(&inside))
        {
            found.push((pid, cmdline.replace('\0', " ")));
        }
    }
    found
}

/// Kills, when dropped, whatever still runs with the folder in its command line, so a
/// failed check leaves no server behind.
struct KillUnder(PathBuf);

impl Drop for KillUnder {
    fn drop(&mut self) {
        for (pid, _) in processes_under(&self.0) {
            let pid = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Ctrl-C in a terminal signals the whole foreground process group. `gf dev` stops
/// its workers and coordinator while its NATS is still up (they drain and flush), then
/// the NATS it started, and exits 0 with nothing left running. (Before, the server
/// took the signal too and stopped first: the workers stopped "without flushing" and
/// the coordinator's events were "not flushed".)
#[tokio::test]
async fn ctrl_c_stops_the_fleet_before_its_nats() -> anyhow::Result<()> {
    stops_in_order(nix::sys::signal::Signal::SIGINT)
}

/// A closed terminal (SIGHUP to the foreground group) stops it the same way: the NATS
/// it started, in a process group of its own, is not left running.
#[tokio::test]
async fn a_closed_terminal_stops_the_fleet_and_its_nats() -> anyhow::Result<()> {
    stops_in_order(nix::sys::signal::Signal::SIGHUP)
}

/// Starts `gf dev` in a process group of its own, as a shell starts a foreground job,
/// sends `signal` to the whole group as a terminal does, and checks the fleet stopped
/// before its NATS and nothing is left.
fn stops_in_order(signal: nix::sys::signal::Signal) -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let data_dir = std::path::absolute(data.path())?;
    let stderr_path = data_dir.join("gf-dev.stderr");
    let stderr = std::fs::File::create(&stderr_path)?;
    let _cleanup = KillUnder(data_dir.clone());
    let mut dev = Dev::start_with(&data_dir, &[], |c| {
        std::os::unix::process::CommandExt::process_group(c, 0);
        c.stderr(stderr);
    })?;
    assert!(
        !processes_under(&data_dir).is_empty(),
        "no nats-server with its store under {}",
        data_dir.display()
    );
    let group = nix::unistd::Pid::from_raw(dev.child.id() as i32);
    nix::sys::signal::killpg(group, signal)?;
    let status = dev
        .exited_within(Duration::from_secs(60))?
        .with_context(|| format!("gf dev did not stop within 60s of {signal}"))?;
    let err = std::fs::read_to_string(&stderr_path)?;
    assert!(
        status.success(),
        "gf dev exited with {status} on {signal}:\n{err}"
    );
    for said in ["NATS unreachable", "not flushed"] {
        assert!(
            !err.contains(said),
            "the fleet stopped after its NATS:\n{err}"
        );
    }
    let left = processes_under(&data_dir);
    assert!(left.is_empty(), "left running after {signal}: {left:?}");
    Ok(())
}

/// `gf dev` killed outright (SIGKILL, the OOM killer: no chance to stop anything) does
/// not leave the NATS it started running: the kernel tells the server to stop when
/// the thread that started it dies with the process. (Before, the server, in a process
/// group of its own, kept running with its port and store.)
#[tokio::test]
async fn a_killed_gf_dev_does_not_leave_its_nats_running() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let data_dir = std::path::absolute(data.path())?;
    let _cleanup = KillUnder(data_dir.clone());
    let mut dev = Dev::start(&data_dir, &[])?;
    assert!(
        !processes_under(&data_dir).is_empty(),
        "no nats-server with its store under {}",
        data_dir.display()
    );
    dev.child.kill()?;
    dev.child.wait()?;
    // A bound on a hang, not a speed target: the server's own SIGTERM shutdown.
    gf_testkit::eventually(
        Duration::from_secs(30),
        "the nats-server of a killed gf dev to stop",
        || async { processes_under(&data_dir).is_empty().then_some(()) },
    )
    .await
    .with_context(|| format!("left running: {:?}", processes_under(&data_dir)))?;
    Ok(())
}

/// `--insecure` is today's open mode; `gf doctor` warns loudly about it, and fails
/// when a production profile runs that way.
#[tokio::test]
async fn insecure_dev_is_open_and_doctor_says_so() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let dev = Dev::start(data.path(), &["--insecure", "--no-demo"])?;
    assert!(dev.out.contains("OPEN"), "{}", dev.out);
    assert!(anonymous_gets_in(&dev.nats).await);
    assert!(!data.path().join("secrets").exists());

    let cwd = tempfile::tempdir()?;
    let (code, out) = doctor(cwd.path(), &dev.nats, &dev.http, None)?;
    assert!(line(&out, "nats auth").starts_with("warn"), "{out}");
    assert!(line(&out, "nats auth").contains("OPEN"), "{out}");
    assert!(line(&out, "api auth").starts_with("warn"), "{out}");
    assert!(out.contains("WARNING: this deployment is OPEN"), "{out}");
    assert_eq!(code, 0, "{out}");

    let (code, out) = doctor(cwd.path(), &dev.nats, &dev.http, Some("prod"))?;
    assert_eq!(code, 1, "{out}");
    assert!(line(&out, "nats auth").starts_with("fail"), "{out}");
    assert!(line(&out, "nats auth").contains("GF_ENV=prod"), "{out}");
    assert!(line(&out, "api auth").starts_with("fail"), "{out}");
    dev.stop()?;
    Ok(())
}
