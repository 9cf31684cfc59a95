//! `gf dev`: a whole local fleet in one command.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use gf_schemas::names::rpc;
use gf_schemas::rpc::SubmitReply;
use gf_schemas::JobSpec;
use gf_worker::RpcClient;
use tokio_util::sync::CancellationToken;

use crate::nats_bin;

#[derive(Args, Debug)]
pub struct DevArgs {
    /// Workers to start.
    #[arg(long, default_value_t = 3)]
    pub workers: u32,
    /// Slots per worker.
    #[arg(long, default_value_t = 2)]
    pub slots: u32,
    /// HTTP address of the coordinator (API, /health).
    #[arg(long, env = "GF_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,
    /// Don't submit the demo jobs.
    #[arg(long)]
    pub no_demo: bool,
    /// Where a NATS started by `gf dev` keeps its data.
    #[arg(long, default_value = ".gf-dev")]
    pub data_dir: PathBuf,
}

fn loopback_port(url: &str) -> Option<u16> {
    let rest = url.strip_prefix("nats://").unwrap_or(url);
    let (host, port) = rest.rsplit_once(':')?;
    matches!(host, "127.0.0.1" | "localhost").then_some(())?;
    port.parse().ok()
}

pub async fn run(url: &str, a: DevArgs) -> anyhow::Result<ExitCode> {
    let shutdown = crate::shutdown_on_signals();
    let mut nats_child = None;
    if crate::connect(url).await.is_err() {
        let port = loopback_port(url).with_context(|| {
            format!("NATS at {url} is not reachable, and gf dev only starts one on 127.0.0.1")
        })?;
        let bin = tokio::task::spawn_blocking(nats_bin::ensure).await??;
        eprintln!(
            "starting {} on port {port} (data in {})",
            bin.display(),
            a.data_dir.display()
        );
        let dir = a.data_dir.join("nats");
        nats_child =
            Some(tokio::task::spawn_blocking(move || nats_bin::spawn(&bin, port, &dir)).await??);
    }
    let result = run_fleet(url, &a, shutdown).await;
    if let Some(mut c) = nats_child {
        let _ = c.kill();
        let _ = c.wait();
    }
    result
}

async fn run_fleet(
    url: &str,
    a: &DevArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<ExitCode> {
    let coordinator_token = CancellationToken::new();
    let coordinator = gf_coordinator::start(
        gf_coordinator::CoordinatorConfig {
            nats_url: url.into(),
            http_addr: Some(a.http_addr),
            id: "dev-coordinator".into(),
            ..Default::default()
        },
        coordinator_token.clone(),
    )
    .await?;
    let http = coordinator.http_addr.expect("http on");
    let workers_token = CancellationToken::new();
    let mut workers = Vec::new();
    for i in 1..=a.workers {
        let mut cfg = gf_worker::WorkerConfig {
            nats_url: url.into(),
            id: Some(gf_schemas::WorkerId::new(format!("dev-worker-{i}"))?),
            slots: a.slots,
            drain_grace: Duration::from_secs(5),
            ..Default::default()
        };
        if i == 1 {
            cfg.tags.insert("gpu".into());
        }
        workers.push(gf_worker::start(cfg, workers_token.clone()).await?);
    }
    let client = crate::connect(url).await?;
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
        "Gigafactory dev fleet is up: 1 coordinator, {} workers × {} slots.",
        a.workers, a.slots
    );
    println!("  dashboard & API   http://{http}/  (health: http://{http}/health, jobs: http://{http}/api/jobs)");
    println!("  NATS              {url}");
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
    }

    #[test]
    fn demo_jobs_are_valid() {
        for j in super::demo_jobs() {
            j.validate().unwrap();
        }
    }
}
