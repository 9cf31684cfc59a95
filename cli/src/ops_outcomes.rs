//! `gf outcomes`: the outcome rows scheduling learns from (one per finished attempt).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use gf_schemas::Timestamp;

use crate::connect;

#[derive(Args, Debug)]
pub struct OutcomesArgs {
    #[command(subcommand)]
    pub action: OutcomesAction,
}

#[derive(Subcommand, Debug)]
pub enum OutcomesAction {
    /// Print finished attempts as JSON Lines (oldest first), one feature row each:
    /// kind, worker, worker profile, capabilities, queue, product, outcome, exit
    /// status, duration, tokens, cost, attempt, why it ended.
    Export {
        /// Only attempts that ended within this long, e.g. `24h`, `7d`.
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<Duration>,
        /// At most this many rows (the newest).
        #[arg(long)]
        limit: Option<usize>,
        /// Write to FILE instead of standard output.
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

pub async fn outcomes(url: &str, a: OutcomesArgs) -> anyhow::Result<ExitCode> {
    match a.action {
        OutcomesAction::Export {
            since,
            limit,
            output,
        } => {
            let js = async_nats::jetstream::new(connect(url).await?);
            let since = since.map(|d| {
                let now = Timestamp::now_local();
                Timestamp::from_unix_millis(now.unix_millis() - d.as_millis() as i64)
            });
            let rows = gf_coordinator::outcomes::export::read(&js, since, limit)
                .await
                .context("reading outcomes: has a coordinator started against this NATS?")?;
            match output {
                Some(path) => {
                    let file = std::fs::File::create(&path)
                        .with_context(|| format!("creating {}", path.display()))?;
                    gf_coordinator::outcomes::export::write_jsonl(
                        &rows,
                        std::io::BufWriter::new(file),
                    )?;
                    eprintln!("{} outcome rows written to {}", rows.len(), path.display());
                }
                None => {
                    let stdout = std::io::stdout();
                    let mut lock = stdout.lock();
                    gf_coordinator::outcomes::export::write_jsonl(&rows, &mut lock)?;
                    lock.flush()?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
