//! `gf dev`: a whole local fleet in one command.

mod secured;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Args;
use gf_schemas::names::rpc;
use gf_schemas::rpc::SubmitReply;
use gf_schemas::{JobSpec, WorkerId};
use gf_worker::RpcClient;
use tokio_util::sync::CancellationToken;

pub use secured::{DevSecrets, API_TOKEN_FILE};

use crate::nats_bin;

#[derive(Args, Debug)]
pub struct DevArgs {
    /// Workers to start.
    #[arg(long, default_value_t = 3)]
    pub workers: u32,
    /// Slots per worker.
    #[arg(long, default_value_t = 2)]
    pub slots: u32,
    /// HTTP address of the coordinator (API, /health); port 0 picks a free one.
    #[arg(long, env = "GF_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,
    /// Don't submit the demo jobs.
    #[arg(long)]
    pub no_demo: bool,
    /// Where `gf dev` keeps its secrets (`secrets/`), its factories' keys
    /// (`factories/`) and the data of a NATS it starts (`nats/`).
    #[arg(long, default_value = ".gf-dev")]
    pub data_dir: PathBuf,
    /// Run open, as before the fleet was secured: NATS without authentication and
    /// the HTTP API without a token. Anyone who reaches them can run commands here.
    #[arg(long)]
    pub insecure: bool,
}

fn loopback_port(url: &str) -> Option<u16> {
    let (host, port) = host_port(url)?;
    matches!(host.as_str(), "127.0.0.1" | "localhost").then_some(())?;
    Some(port)
}

/// `host` and `port` of a `nats://[user:password@]host:port` URL.
fn host_port(url: &str) -> Option<(String, u16)> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let (host, port) = rest.rsplit_once(':')?;
    Some((host.to_string(), port.parse().ok()?))
}

/// The URL without a `user:password@` part.
fn without_credentials(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("nats", url));
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    format!("{scheme}://{host}")
}

/// Something accepts TCP connections at the URL's address.
async fn listening(url: &str) -> bool {
    let Some((host, port)) = host_port(url).filter(|(_, p)| *p != 0) else {
        return false;
    };
    matches!(
        tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect((host.as_str(), port))
        )
        .await,
        Ok(Ok(_))
    )
}

pub async fn run(url: &str, a: DevArgs) -> anyhow::Result<ExitCode> {
    // SIGHUP included: the NATS it starts runs in a process group of its own and does
    // not get a closed terminal's hangup, so gf dev must live to stop it.
    let shutdown = crate::shutdown_on_signals();
    let secured = if a.insecure {
        eprintln!(
            "gf dev --insecure: NATS and the HTTP API are OPEN: anyone who reaches them can submit jobs (run commands on this machine), claim and complete them"
        );
        None
    } else {
        let dir = absolute(&a.data_dir.join("secrets"));
        let s = tokio::task::spawn_blocking(move || DevSecrets::load_or_init(&dir)).await??;
        if s.created {
            eprintln!("made the dev fleet's secrets in {}", s.dir.display());
        }
        // Who gf dev is comes from its secrets, not from the URL.
        Some(s)
    };
    let url = match &secured {
        Some(_) => without_credentials(url),
        None => url.to_string(),
    };
    let (nats_child, url) = ensure_nats(&url, &a, secured.as_ref()).await?;
    let result = run_fleet(&url, &a, secured.as_ref(), shutdown).await;
    // The fleet has stopped: now its NATS (the drop stops it, waiting for it).
    tokio::task::spawn_blocking(move || drop(nats_child)).await?;
    result
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// A NATS for the fleet: the one at `url` if it fits, else one started on its
/// loopback port with the secured config. Returns it (if started) and its URL.
async fn ensure_nats(
    url: &str,
    a: &DevArgs,
    secured: Option<&DevSecrets>,
) -> anyhow::Result<(Option<nats_bin::Spawned>, String)> {
    if listening(url).await {
        match secured {
            None => {
                crate::connect(url).await?;
            }
            Some(s) => reuse_secured(url, s).await?,
        }
        return Ok((None, url.to_string()));
    }
    let port = loopback_port(url).with_context(|| {
        format!("NATS at {url} is not reachable, and gf dev only starts one on 127.0.0.1")
    })?;
    let bin = tokio::task::spawn_blocking(nats_bin::ensure).await??;
    let dir = a.data_dir.join("nats");
    eprintln!(
        "starting {}{} (data in {})",
        bin.display(),
        if port == 0 {
            String::new()
        } else {
            format!(" on port {port}")
        },
        dir.display()
    );
    let conf = secured.map(|s| s.nats_conf());
    let spawned =
        tokio::task::spawn_blocking(move || nats_bin::spawn(&bin, port, &dir, conf.as_deref()))
            .await??;
    let url = format!("nats://127.0.0.1:{}", spawned.port);
    Ok((Some(spawned), url))
}

/// A NATS already running at `url` is used by a secured fleet only if it is the one
/// these secrets configure (an earlier `gf dev`'s): it requires authentication and
/// lets the operator in.
async fn reuse_secured(url: &str, s: &DevSecrets) -> anyhow::Result<()> {
    let refused = || {
        format!(
            "NATS at {url} does not accept the operator credential in {} (it is not the one gf dev started with these secrets): stop it, or pass --nats-url with a free port",
            s.dir.display()
        )
    };
    let client = crate::connect(&s.secrets.admin_url(url))
        .await
        .with_context(refused)?;
    if !client.server_info().auth_required {
        bail!(
            "NATS at {url} is open (it requires no authentication): stop it so gf dev can start a secured one, or run `gf dev --insecure` to use it as it is"
        );
    }
    tokio::time::timeout(
        Duration::from_secs(3),
        async_nats::jetstream::new(client).query_account(),
    )
    .await
    .map_err(|_| anyhow::anyhow!("{}", refused()))?
    .with_context(refused)?;
    Ok(())
}

async fn run_fleet(
    url: &str,
    a: &DevArgs,
    secured: Option<&DevSecrets>,
    shutdown: CancellationToken,
) -> anyhow::Result<ExitCode> {
    let mut config = gf_coordinator::CoordinatorConfig {
        nats_url: url.into(),
        http_addr: Some(a.http_addr),
        id: "dev-coordinator".into(),
        ..Default::default()
    };
    if let Some(s) = secured {
        config.security = Some(gf_coordinator::auth::Security::new(s.secrets.clone()));
        config.auth = s.api_auth();
    }
    let coordinator_token = CancellationToken::new();
    let coordinator = gf_coordinator::start(config, coordinator_token.clone()).await?;
    let http = coordinator.http_addr.expect("http on");
    let operator_url = match secured {
        Some(s) => s.secrets.admin_url(url),
        None => url.to_string(),
    };
    let client = crate::connect(&operator_url).await?;
    let ids = (1..=a.workers)
        .map(|i| WorkerId::new(format!("dev-worker-{i}")))
        .collect::<Result<Vec<_>, _>>()?;
    let factories_dir = absolute(&a.data_dir.join("factories"));
    let mut enrollments = match secured {
        Some(_) => secured::enrollments(&client, &factories_dir, &ids).await?,
        None => Vec::new(),
    };
    let workers_token = CancellationToken::new();
    let mut workers = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let mut cfg = gf_worker::WorkerConfig {
            nats_url: url.into(),
            id: Some(id.clone()),
            slots: a.slots,
            drain_grace: Duration::from_secs(5),
            ..Default::default()
        };
        if i == 0 {
            cfg.tags.insert("gpu".into());
        }
        if let Some(e) = enrollments.get_mut(i) {
            cfg.key_dir = Some(e.key_dir.clone());
            cfg.enroll = e.token.take();
        }
        workers.push(
            gf_worker::start(cfg, workers_token.clone())
                .await
                .with_context(|| format!("cannot start worker {id}"))?,
        );
    }
    let mut demo = Vec::new();
    if !a.no_demo {
        let rpc_client = RpcClient::new(client.clone(), Duration::from_secs(5));
        for spec in demo_jobs() {
            let r: SubmitReply = rpc_client.call(rpc::SUBMIT, &spec).await?;
            demo.push((r.job_id, spec.command.join(" ")));
        }
    }
    println!();
    println!(
        "Gigafactory dev fleet is up{}: 1 coordinator, {} workers × {} slots.",
        if secured.is_some() {
            " (secured)"
        } else {
            " (OPEN: --insecure)"
        },
        a.workers,
        a.slots
    );
    match secured {
        Some(s) => {
            println!(
                "  dashboard         http://{http}/#token={}  (the operator's API token, also in {})",
                s.api_token,
                s.dir.join(API_TOKEN_FILE).display()
            );
            println!("  API               curl -H \"Authorization: Bearer $(cat {})\" http://{http}/api/jobs", s.dir.join(API_TOKEN_FILE).display());
            println!(
                "  NATS              {url}  (every client authenticated; secrets in {})",
                s.dir.display()
            );
            println!(
                "  factories         {} enrolled with their own keys ({}); gf factory list",
                a.workers,
                factories_dir.display()
            );
            println!(
                "  operator          export GF_NATS_URL=\"nats://{}:$(cat {})@{}\"",
                gf_auth::secrets::ADMIN_USER,
                s.dir.join("admin.pass").display(),
                url.trim_start_matches("nats://")
            );
        }
        None => {
            println!("  dashboard & API   http://{http}/  (health: http://{http}/health, jobs: http://{http}/api/jobs)");
            println!("  NATS              {url}  (OPEN: no authentication)");
        }
    }
    if !demo.is_empty() {
        println!("  demo jobs:");
        for (id, cmd) in &demo {
            println!("    {id}  {}", cmd.chars().take(70).collect::<String>());
        }
    }
    println!(
        "Try: gf jobs · gf job ID · gf logs -f ID · gf workers · gf submit --wait -- echo hello"
    );
    println!("Ctrl-C stops everything.");
    shutdown.cancelled().await;
    eprintln!("stopping workers…");
    workers_token.cancel();
    for w in workers {
        w.join().await?;
    }
    eprintln!("stopping coordinator…");
    coordinator_token.cancel();
    coordinator.join().await?;
    Ok(ExitCode::SUCCESS)
}

fn sh(script: &str) -> JobSpec {
    JobSpec::command(["sh", "-c", script])
}

/// A few jobs that show the fabric at work: output, results and usage, a retry, tag
/// routing, and one job no worker can run.
pub fn demo_jobs() -> Vec<JobSpec> {
    let mut hello = sh("echo hello from $GF_WORKER_ID");
    hello.labels.insert("demo".into(), "hello".into());
    let mut agent = sh(
        r#"for i in 1 2 3 4 5; do echo "step $i of 5"; sleep 1; done; echo '{"summary":"done","usage":{"provider":"demo","model":"tiny","input_tokens":1200,"output_tokens":300,"calls":5,"cost":0.02}}' > "$GF_RESULT_FILE""#,
    );
    agent.labels.insert("demo".into(), "agent".into());
    let mut flaky = sh(
        r#"if [ "$GF_ATTEMPT" = 1 ]; then echo "first attempt fails" >&2; exit 3; fi; echo "second attempt works""#,
    );
    flaky.labels.insert("demo".into(), "retry".into());
    let mut gpu = sh("echo running on a gpu worker: $GF_WORKER_ID");
    gpu.tags.insert("gpu".into());
    let mut nowhere = sh("echo never runs");
    nowhere.requires.insert("os".into(), "plan9".into());
    vec![hello, agent, flaky, gpu, nowhere]
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_ports() {
        assert_eq!(super::loopback_port("nats://127.0.0.1:4222"), Some(4222));
        assert_eq!(super::loopback_port("nats://localhost:5000"), Some(5000));
        assert_eq!(super::loopback_port("nats://10.0.0.1:4222"), None);
        assert_eq!(super::loopback_port("nats://u:p@127.0.0.1:0"), Some(0));
        assert_eq!(super::without_credentials("nats://u:p@h:1"), "nats://h:1");
        assert_eq!(
            super::host_port("nats://u:p@nats:4333"),
            Some(("nats".into(), 4333))
        );
    }

    #[test]
    fn demo_jobs_are_valid() {
        for j in super::demo_jobs() {
            j.validate().unwrap();
        }
    }
}
