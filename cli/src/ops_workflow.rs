//! Workflow commands: manifests (`gf submit -f`, `gf manifest show`), profiles, and the
//! tracker bridge's deliveries. All go through the coordinators' RPC plane.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use gf_schemas::bridge::{Delivery, DeliveryQuery, DeliveryStatus, RedeliverRequest};
use gf_schemas::manifest::ManifestName;
use gf_schemas::names::rpc;
use gf_schemas::{JobId, JobState, Manifest, ManifestStatus, NamedProfile, Timestamp};
use gf_worker::RpcClient;

use crate::{connect, output};

async fn client(url: &str) -> anyhow::Result<RpcClient> {
    Ok(RpcClient::new(connect(url).await?, Duration::from_secs(30)))
}

/// Reads a manifest file: TOML (`.toml`) or JSON.
pub fn read_manifest(path: &Path) -> anyhow::Result<Manifest> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read manifest {}", path.display()))?;
    let json = path.extension().is_some_and(|e| e == "json");
    let value: serde_json::Value = if json {
        serde_json::from_str(&text).with_context(|| format!("{}", path.display()))?
    } else {
        toml::from_str::<toml::Value>(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
            .and_then(|t| Ok(serde_json::to_value(t)?))?
    };
    let m: Manifest =
        serde_json::from_value(value).with_context(|| format!("{}", path.display()))?;
    // Checked here too, so a bad file is refused before anything is sent.
    m.plan().with_context(|| format!("{}", path.display()))?;
    for j in &m.jobs {
        j.spec().with_context(|| format!("{}", path.display()))?;
    }
    Ok(m)
}

pub fn manifest_table(m: &ManifestStatus) -> String {
    let rows: Vec<Vec<String>> = m
        .jobs
        .iter()
        .map(|j| {
            vec![
                j.name.clone(),
                j.job_id.to_string(),
                j.state.map_or("(gone)".into(), |s| s.to_string()),
                j.depends_on.join(","),
                j.reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    output::table(&["JOB", "ID", "STATE", "AFTER", "REASON"], &rows)
}

/// One round of a manifest's submission (a copy every quarter of it while unanswered),
/// and how many rounds.
const MANIFEST_ROUND: Duration = Duration::from_secs(12);
const MANIFEST_ROUNDS: u32 = 3;

/// `gf submit -f FILE`.
pub async fn submit_manifest(
    url: &str,
    file: &Path,
    wait: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let m = read_manifest(file)?;
    let nats = connect(url).await?;
    // Hedged like `gf submit`: a repeated manifest creates nothing new (its jobs' keys
    // come from its and their names). A large manifest takes a while to create, so
    // copies are seconds apart.
    let status: ManifestStatus = crate::ops::call_repeatable(
        &nats,
        rpc::MANIFEST_SUBMIT,
        serde_json::to_vec(&m)?,
        MANIFEST_ROUND,
        MANIFEST_ROUNDS,
    )
    .await
    .context("manifest not submitted")?;
    if !json {
        eprintln!(
            "manifest {}: {} job(s) created, {} existed",
            status.name,
            status.created,
            status.jobs.len() - status.created
        );
    }
    if !wait {
        if json {
            println!("{}", serde_json::to_string_pretty(&status)?);
        } else {
            println!("{}", manifest_table(&status));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut ok = true;
    for j in &status.jobs {
        let rec = crate::ops::follow(&nats, j.job_id, !json).await?;
        ok &= rec.state == JobState::Succeeded;
    }
    let status: ManifestStatus = client(url)
        .await?
        .call(rpc::MANIFEST_GET, &ManifestName { name: status.name })
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        println!("{}", manifest_table(&status));
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[derive(Args, Debug)]
pub struct ManifestArgs {
    #[command(subcommand)]
    pub action: ManifestAction,
}

#[derive(Subcommand, Debug)]
pub enum ManifestAction {
    /// A manifest's jobs, dependencies first, with their states.
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
}

pub async fn manifest(url: &str, a: ManifestArgs) -> anyhow::Result<ExitCode> {
    let ManifestAction::Show { name, json } = a.action;
    let m: ManifestStatus = client(url)
        .await?
        .call(rpc::MANIFEST_GET, &ManifestName { name })
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&m)?);
    } else {
        println!("manifest {} (first submitted {})", m.name, m.submitted_at);
        println!("{}", manifest_table(&m));
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct ProfilesArgs {
    #[arg(long)]
    pub json: bool,
}

pub async fn profiles(url: &str, a: ProfilesArgs) -> anyhow::Result<ExitCode> {
    let ps: Vec<NamedProfile> = client(url)
        .await?
        .call(rpc::PROFILE_LIST, &serde_json::json!({}))
        .await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&ps)?);
    } else if ps.is_empty() {
        eprintln!("no profiles configured (see [profiles] in gigafactory.toml)");
    } else {
        let rows: Vec<Vec<String>> = ps
            .iter()
            .map(|p| {
                vec![
                    p.name.clone(),
                    p.profile.command.join(" "),
                    p.profile.queue.clone().unwrap_or_default(),
                    p.profile.description.clone().unwrap_or_default(),
                ]
            })
            .collect();
        println!(
            "{}",
            output::table(
                &["PROFILE", "COMMAND PREFIX", "QUEUE", "DESCRIPTION"],
                &rows
            )
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct BridgeArgs {
    #[command(subcommand)]
    pub action: BridgeAction,
}

#[derive(Subcommand, Debug)]
pub enum BridgeAction {
    /// Echoes of bridged jobs' state changes to their trackers: status, attempts, last
    /// error, newest first.
    Deliveries {
        /// Only `pending`, `delivered` or `failed` ones.
        #[arg(long, value_parser = parse_status)]
        status: Option<DeliveryStatus>,
        /// Only this job's.
        #[arg(long)]
        job: Option<JobId>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Send a delivery again (same id), e.g. after fixing the tracker.
    Redeliver { id: String },
}

fn parse_status(s: &str) -> Result<DeliveryStatus, String> {
    serde_json::from_value(serde_json::Value::String(s.into()))
        .map_err(|_| format!("`{s}`: one of pending, delivered, failed"))
}

pub fn deliveries_table(ds: &[Delivery], now: Timestamp) -> String {
    let rows: Vec<Vec<String>> = ds
        .iter()
        .map(|d| {
            vec![
                d.echo.id.clone(),
                d.echo.source.clone(),
                d.echo.item.clone(),
                d.echo.state.to_string(),
                serde_json::to_value(d.status)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default(),
                d.attempts.to_string(),
                format!("{} ago", output::age(d.updated_at, now)),
                d.last_error
                    .clone()
                    .unwrap_or_default()
                    .chars()
                    .take(60)
                    .collect(),
            ]
        })
        .collect();
    output::table(
        &[
            "ID",
            "SOURCE",
            "ITEM",
            "STATE",
            "STATUS",
            "ATTEMPTS",
            "UPDATED",
            "LAST ERROR",
        ],
        &rows,
    )
}

pub async fn bridge(url: &str, a: BridgeArgs) -> anyhow::Result<ExitCode> {
    let c = client(url).await?;
    match a.action {
        BridgeAction::Deliveries {
            status,
            job,
            limit,
            json,
        } => {
            let q = DeliveryQuery {
                status,
                job_id: job,
                limit: Some(limit),
            };
            let ds: Vec<Delivery> = c.call(rpc::BRIDGE_DELIVERIES, &q).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&ds)?);
            } else if ds.is_empty() {
                eprintln!("no deliveries");
            } else {
                println!("{}", deliveries_table(&ds, Timestamp::now_local()));
            }
        }
        BridgeAction::Redeliver { id } => {
            if id.is_empty() {
                bail!("name a delivery id (see `gf bridge deliveries`)");
            }
            let d: Delivery = c
                .call(rpc::BRIDGE_REDELIVER, &RedeliverRequest { id: id.clone() })
                .await
                .with_context(|| format!("cannot redeliver {id}"))?;
            println!(
                "{} queued again ({} to {})",
                d.echo.id, d.echo.state, d.echo.item
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
