//! `gf outcomes`: the outcome rows scheduling learns from (one per finished attempt).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use gf_coordinator::outcomes::export;
use gf_coordinator::outcomes::replay::{self, Policy};
use gf_coordinator::score::Weights;
use gf_schemas::outcome::OutcomeRow;
use gf_schemas::{ScoreWeights, Timestamp};

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
    /// Replay exported rows through the planner's choice of worker with two sets of
    /// weights (A and B) and report what each changes: expected failures, wall time
    /// (wait + run), fairness between products. Deterministic: the same file and
    /// weights print the same report. A defaults to the coordinator's weights; B, when
    /// neither `--against` nor `--against-set` is given, to the learned terms off.
    Replay {
        /// JSON Lines from `gf outcomes export`.
        file: PathBuf,
        /// Weights A from a TOML file of score weights, e.g. `success = 2.0`.
        #[arg(long, value_name = "TOML")]
        weights: Option<PathBuf>,
        /// Weights A as `NAME=VALUE,...` (over `--weights`), e.g. `success=2,speed=0`.
        #[arg(long, value_name = "NAME=VALUE,...")]
        set: Option<String>,
        /// Weights B from a TOML file (over the coordinator's defaults).
        #[arg(long, value_name = "TOML")]
        against: Option<PathBuf>,
        /// Weights B as `NAME=VALUE,...` (over `--against`, else the defaults).
        #[arg(long, value_name = "NAME=VALUE,...")]
        against_set: Option<String>,
        /// Print the comparison as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a synthetic history (JSON Lines of outcome rows) to try `replay` on: a
    /// small fleet with a worker failing most builds, a slow one, a fast one joining
    /// late and a GPU worker, placed at random. The same seed writes the same rows.
    Synth {
        #[arg(long, default_value_t = 10_000)]
        rows: usize,
        #[arg(long, default_value_t = 17)]
        seed: u64,
        /// Write to FILE instead of standard output.
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
pub struct RecommendArgs {
    /// Print them as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `gf recommend`: one line per recommendation (topic, subject, what to do); exit 0
/// with "nothing to recommend" when there is none.
pub async fn recommend(url: &str, a: RecommendArgs) -> anyhow::Result<ExitCode> {
    let js = async_nats::jetstream::new(connect(url).await?);
    let timeout = gf_coordinator::config::CoordinatorConfig::default().worker_timeout;
    let all = gf_coordinator::recommend::gather(&js, timeout, Timestamp::now_local())
        .await
        .context("reading outcomes, workers, jobs and budgets: has a coordinator started against this NATS?")?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
    } else if all.is_empty() {
        eprintln!("nothing to recommend");
    } else {
        for r in &all {
            println!("{:<20} {:<16} {}", r.topic.as_str(), r.subject, r.text);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A weight set from a TOML file and/or `NAME=VALUE,...` over the defaults; `None`
/// when neither is given.
fn policy(file: Option<&Path>, set: Option<&str>) -> anyhow::Result<Option<Policy>> {
    if file.is_none() && set.is_none() {
        return Ok(None);
    }
    let mut weights = Weights::default();
    let mut label = Vec::new();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading weights from {}", path.display()))?;
        let w: ScoreWeights = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: not a set of score weights: {e}", path.display()))?;
        weights = weights.overlay(&w);
        label.push(path.display().to_string());
    }
    if let Some(set) = set {
        let mut map = serde_json::Map::new();
        for pair in set.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .with_context(|| format!("weights `{pair}`: write NAME=VALUE"))?;
            let v: f64 = v
                .trim()
                .parse()
                .map_err(|_| anyhow::anyhow!("weights `{pair}`: `{v}` is not a number"))?;
            map.insert(k.trim().to_string(), serde_json::json!(v));
        }
        let w: ScoreWeights = serde_json::from_value(serde_json::Value::Object(map))
            .map_err(|e| anyhow::anyhow!("weights `{set}`: {e}"))?;
        weights = weights.overlay(&w);
        label.push(set.to_string());
    }
    Ok(Some(Policy {
        label: label.join(" + "),
        weights,
    }))
}

fn write_rows(rows: &[OutcomeRow], output: Option<PathBuf>) -> anyhow::Result<()> {
    match output {
        Some(path) => {
            let file = std::fs::File::create(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            export::write_jsonl(rows, std::io::BufWriter::new(file))?;
            eprintln!("{} outcome rows written to {}", rows.len(), path.display());
        }
        None => {
            let stdout = std::io::stdout();
            let mut lock = stdout.lock();
            export::write_jsonl(rows, &mut lock)?;
            lock.flush()?;
        }
    }
    Ok(())
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
            let rows = export::read(&js, since, limit)
                .await
                .context("reading outcomes: has a coordinator started against this NATS?")?;
            write_rows(&rows, output)?;
            Ok(ExitCode::SUCCESS)
        }
        OutcomesAction::Replay {
            file,
            weights,
            set,
            against,
            against_set,
            json,
        } => {
            let a = policy(weights.as_deref(), set.as_deref())?.unwrap_or_else(Policy::defaults);
            let b = policy(against.as_deref(), against_set.as_deref())?
                .unwrap_or_else(Policy::unlearned);
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let rows = export::read_jsonl(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let c = replay::compare(&rows, &a, &b)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&c)?);
            } else {
                print!("{}", c.render());
            }
            Ok(ExitCode::SUCCESS)
        }
        OutcomesAction::Synth { rows, seed, output } => {
            write_rows(&replay::synthetic::synthetic(rows, seed), output)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
