//! `chaos`: the fault-injection and load suites against a real cluster of OS processes.
//!
//! `chaos suite [--quick]`, `chaos scenario NAME`, `chaos load`, `chaos list`; each
//! with `--backend compose` on the docker-compose deployment instead of processes.
//! Exits 1 on any invariant violation or failed pass criterion.

use std::path::PathBuf;
use std::process::ExitCode;

use chaos::harness::Report;
use chaos::process::GfCommand;
use chaos::scenarios::{self, Scale};
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "chaos",
    about = "Gigafactory chaos and load suites (real nats-server, real processes)."
)]
struct Cli {
    /// Use this `gf` binary for coordinators and workers (default: this binary's
    /// built-in `gf`, compiled from the same sources).
    #[arg(long, global = true, env = "CHAOS_GF_BIN")]
    gf_bin: Option<PathBuf>,
    /// Where the cluster runs: `process` (OS processes on loopback) or `compose` (the
    /// repository's docker-compose.yml, one project per scenario; build the images
    /// first with scripts/docker-images.sh). Compose reads GF_IMAGE (the gf image,
    /// default gigafactory/gf:local), CHAOS_COMPOSE_FILE and CHAOS_COMPOSE_PREFIX
    /// (project names' prefix, default gfchaos).
    #[arg(long, global = true, value_enum, default_value_t = Backend::Process, env = "CHAOS_BACKEND")]
    backend: Backend,
    /// Run the scenarios' process clusters secured, as an operator deploys it: `gf admin
    /// init`, NATS with the auth callout, coordinators with the secrets, workers
    /// enrolled as factories with their own keys (the compose backend is always
    /// secured; for `load`, see its `--auth`).
    #[arg(long, global = true)]
    secured: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Process,
    Compose,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run every scenario (or, with --quick, a few with small N). On compose: the
    /// compose scenario set (--quick: worker-kill only).
    Suite {
        #[arg(long)]
        quick: bool,
        /// Jobs per scenario (default 2000, or 40 with --quick).
        #[arg(long)]
        jobs: Option<usize>,
        /// Write the reports as JSON here.
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Run one scenario.
    Scenario {
        name: String,
        #[arg(long, default_value_t = 2000)]
        jobs: usize,
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// List the scenarios and what each proves.
    List,
    /// The load suite: throughput, latency, scale-out, durable mode, raw ceiling.
    Load(chaos::load::LoadArgs),
}

fn main() -> ExitCode {
    // The allocator is `gf`'s (gf_cli::allocator), set up the same way.
    gf_cli::allocator::configure();
    let args: Vec<String> = std::env::args().collect();
    // `chaos gf …` is the `gf` CLI itself: the cluster runs coordinators and workers
    // as processes of this binary.
    if args.get(1).map(String::as_str) == Some("gf") {
        let cli = <gf_cli::Cli as Parser>::parse_from(
            std::iter::once("gf".to_string()).chain(args.into_iter().skip(2)),
        );
        let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
        return match runtime.block_on(gf_cli::run(cli)) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    // On Ctrl-C or SIGTERM the run is dropped, so every cluster it started is taken
    // down (processes killed, compose projects removed) before the exit.
    let interruptible = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = run(cli) => r,
            _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted"),
            _ = term.recv() => anyhow::bail!("terminated"),
        }
    };
    match runtime.block_on(interruptible) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("chaos: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<bool> {
    let mut gf = match &cli.gf_bin {
        Some(p) => GfCommand::external(p.clone()),
        None => GfCommand::self_exec()?,
    };
    gf.secured = cli.secured;
    let compose = cli.backend == Backend::Compose;
    if compose {
        gf.compose = Some(chaos::compose::ComposeOptions::from_env());
    }
    match cli.command {
        Cmd::List => {
            for name in scenarios::ALL.iter().chain(&scenarios::COMPOSE_ONLY) {
                println!("{name:28} {}", scenarios::describe(name));
            }
            Ok(true)
        }
        Cmd::Suite {
            quick,
            jobs,
            report,
        } => {
            let scale = Scale {
                jobs: jobs.unwrap_or(if quick { 40 } else { 2000 }),
                quick,
            };
            let names: Vec<&str> = match (compose, quick) {
                (true, true) => vec!["worker-kill"],
                (true, false) => scenarios::COMPOSE.to_vec(),
                (false, true) => scenarios::QUICK.to_vec(),
                (false, false) => scenarios::ALL.to_vec(),
            };
            run_many(&names, &scale, &gf, report).await
        }
        Cmd::Scenario { name, jobs, report } => {
            let scale = Scale { jobs, quick: false };
            run_many(&[name.as_str()], &scale, &gf, report).await
        }
        Cmd::Load(mut args) => {
            if cli.secured {
                args.auth = vec![chaos::load::AuthMode::Secured];
            }
            if compose {
                // Scale-out on containers beside processes (docs/chaos-and-load.md).
                return chaos::compose_load::run(args, &gf).await;
            }
            chaos::load::run(args, &gf).await
        }
    }
}

async fn run_many(
    names: &[&str],
    scale: &Scale,
    gf: &GfCommand,
    report: Option<PathBuf>,
) -> anyhow::Result<bool> {
    let mut reports: Vec<Report> = Vec::new();
    let mut errors: Vec<(String, String)> = Vec::new();
    for name in names {
        match scenarios::run(name, scale, gf).await {
            Ok(r) => {
                print_report(&r);
                reports.push(r);
            }
            Err(e) => {
                println!("FAIL {name}: could not complete: {e:#}");
                errors.push((name.to_string(), format!("{e:#}")));
            }
        }
    }
    println!(
        "\n{:<28} {:>6} {:>7} {:>9} {:>8} {:>7} {:>9}",
        "scenario", "result", "jobs", "attempts", "fenced", "secs", "recovery"
    );
    for r in &reports {
        println!(
            "{:<28} {:>6} {:>7} {:>9} {:>8} {:>7.1} {:>9}",
            r.scenario,
            if r.passed { "pass" } else { "FAIL" },
            r.findings.jobs,
            r.findings.attempts,
            r.findings.fenced_effects,
            r.seconds,
            r.findings
                .max_recovery_ms
                .map(|m| format!("{m} ms"))
                .unwrap_or_else(|| "-".into())
        );
    }
    for (name, e) in &errors {
        println!("{name:<28} {:>6}  {e}", "ERROR");
    }
    if let Some(path) = report {
        let json = serde_json::json!({
            "reports": reports,
            "errors": errors.iter().map(|(n, e)| serde_json::json!({"scenario": n, "error": e})).collect::<Vec<_>>(),
        });
        std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    }
    Ok(errors.is_empty() && reports.iter().all(|r| r.passed))
}

fn print_report(r: &Report) {
    println!(
        "{} {} in {:.1} s: {} jobs, {} succeeded, {} attempts ({} without outcome), {} fenced effects, {} events, {} KV revisions watched",
        if r.passed { "PASS" } else { "FAIL" },
        r.scenario,
        r.seconds,
        r.findings.jobs,
        r.findings.succeeded,
        r.findings.attempts,
        r.findings.attempts_without_outcome,
        r.findings.fenced_effects,
        r.findings.events,
        r.findings.kv_revisions_seen
    );
    for n in &r.notes {
        println!("  note: {n}");
    }
    for v in &r.violations {
        println!("  {v}");
    }
    for f in &r.failures {
        println!("  FAILED: {f}");
    }
}
