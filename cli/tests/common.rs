//! Shared fixtures for the fabric tests: a real NATS, a coordinator, workers, and a
//! client that speaks the RPC plane.
#![allow(dead_code, unused_imports)]

use std::time::Duration;

use gf_schemas::names::rpc;
use gf_schemas::rpc::{GetJobRequest, SubmitReply};
use gf_schemas::{JobId, JobRecord, JobSpec, JobState};
use gf_testkit::{eventually, NatsServer};
use gf_worker::RpcClient;

pub use gf_testkit::{coordinator_config, init_tracing, worker_config, Running};

pub struct Client {
    pub rpc: RpcClient,
    pub nats: async_nats::Client,
}

impl Client {
    pub async fn connect(nats: &NatsServer) -> anyhow::Result<Self> {
        Self::connect_url(&nats.url()).await
    }

    /// Connects with a URL of its own (e.g. one carrying a user and password).
    pub async fn connect_url(url: &str) -> anyhow::Result<Self> {
        let c = gf_testkit::connect(url).await?;
        Ok(Self {
            rpc: RpcClient::new(c.clone(), Duration::from_secs(5)),
            nats: c,
        })
    }

    pub async fn submit(&self, spec: &JobSpec) -> anyhow::Result<SubmitReply> {
        Ok(self.rpc.call(rpc::SUBMIT, spec).await?)
    }

    pub async fn job(&self, id: JobId) -> anyhow::Result<JobRecord> {
        Ok(self
            .rpc
            .call(rpc::GET_JOB, &GetJobRequest { job_id: id })
            .await?)
    }

    /// Waits until the job is in a terminal state and returns it.
    pub async fn wait_terminal(&self, id: JobId, timeout: Duration) -> anyhow::Result<JobRecord> {
        eventually(timeout, &format!("job {id} to finish"), || async {
            self.job(id).await.ok().filter(|r| r.state.is_terminal())
        })
        .await
    }

    /// Waits for each job in turn to finish and asserts it succeeded.
    pub async fn wait_all_succeeded<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a JobId>,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        for id in ids {
            let rec = self.wait_terminal(*id, timeout).await?;
            assert_eq!(rec.state, JobState::Succeeded, "{rec:?}");
        }
        Ok(())
    }

    pub async fn wait_state(
        &self,
        id: JobId,
        state: JobState,
        timeout: Duration,
    ) -> anyhow::Result<JobRecord> {
        eventually(timeout, &format!("job {id} to be {state}"), || async {
            self.job(id).await.ok().filter(|r| r.state == state)
        })
        .await
    }
}

/// `sh -c SCRIPT` as a job.
pub fn sh(script: &str) -> JobSpec {
    JobSpec::command(["sh", "-c", script])
}

/// A `gf worker` OS process (so tests can SIGKILL or SIGSTOP it). Killed on drop.
pub struct WorkerProcess {
    pub child: std::process::Child,
    pub id: String,
}

impl WorkerProcess {
    pub fn spawn(nats_url: &str, id: &str, extra: &[&str]) -> anyhow::Result<Self> {
        Self::spawn_under(None, nats_url, id, extra)
    }

    /// [`WorkerProcess::spawn`], run by `wrapper` (e.g. `nohup`, which execs it: the
    /// pid is the worker's) when given.
    pub fn spawn_under(
        wrapper: Option<&str>,
        nats_url: &str,
        id: &str,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let gf = env!("CARGO_BIN_EXE_gf");
        let mut command = match wrapper {
            Some(w) => {
                let mut c = std::process::Command::new(w);
                c.arg(gf);
                c
            }
            None => std::process::Command::new(gf),
        };
        let child = command
            .args(["worker", "--id", id, "--slots", "2", "--drain-grace", "2s"])
            .args(extra)
            .env("GF_NATS_URL", nats_url)
            .env(
                "GF_LOG",
                std::env::var("GF_TEST_WORKER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(std::process::Stdio::null())
            .spawn()?;
        Ok(Self {
            child,
            id: id.to_string(),
        })
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) -> anyhow::Result<()> {
        nix::sys::signal::kill(self.pid(), sig)?;
        Ok(())
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.signal(nix::sys::signal::Signal::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the Python client (`clients/python/gf_submit.py`) against `url` with `args`
/// (blocking: call it from `spawn_blocking`).
pub fn python_client(url: &str, args: &[&str]) -> std::io::Result<std::process::Output> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf();
    std::process::Command::new("python3")
        .arg(root.join("clients/python/gf_submit.py"))
        .args(["--nats-url", url])
        .args(args)
        .output()
}

/// Whether a process is still alive.
pub fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// Runs `gf ARGS` against `nats_url` and returns (exit code, stdout, stderr).
pub fn gf(nats_url: &str, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gf"))
        .args(args)
        .env("GF_NATS_URL", nats_url)
        .env("GF_LOG", "warn")
        .output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Waits until the coordinators list `n` active workers.
pub async fn wait_workers(client: &Client, n: usize) -> anyhow::Result<()> {
    let js = async_nats::jetstream::new(client.nats.clone());
    gf_testkit::wait_active_workers(&js, n, Duration::from_secs(20)).await
}

/// Minimal HTTP/1.1 request over a TCP stream: (status, body). Keeps the tests free of
/// an HTTP client dependency.
pub async fn http_request(method: &str, url: &str, body: &[u8]) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut s = tokio::net::TcpStream::connect(host).await?;
    let head = format!(
        "{method} /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(body).await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    let out = String::from_utf8_lossy(&out).into_owned();
    let status = out.split_whitespace().nth(1).unwrap_or("0").parse()?;
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    // Undo chunked transfer encoding if the server used it.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut rest = body;
        let mut plain = String::new();
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || tail.len() < n {
                break;
            }
            plain.push_str(&tail[..n]);
            rest = tail[n..].trim_start_matches("\r\n");
        }
        plain
    } else {
        body.to_string()
    };
    Ok((status, body))
}

/// The value of one sample in a Prometheus text scrape, by name and exact label set
/// (labels in the order the exporter writes them), 0 when absent.
pub fn sample(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// A coordinator and one 2-slot worker that serves `/metrics` on a free port, with
/// that URL.
pub async fn coordinator_and_metrics_worker(
    nats: &NatsServer,
) -> anyhow::Result<(
    Running<gf_coordinator::Coordinator>,
    Running<gf_worker::Worker>,
    String,
)> {
    let coord = Running::coordinator(coordinator_config(&nats.url())).await?;
    let mut wcfg = worker_config(&nats.url(), 2);
    wcfg.metrics_addr = Some(([127, 0, 0, 1], 0).into());
    let worker = Running::worker(wcfg).await?;
    let url = format!(
        "http://{}/metrics",
        worker.part.as_ref().unwrap().metrics_addr.unwrap()
    );
    Ok((coord, worker, url))
}
