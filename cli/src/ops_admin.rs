//! Operator commands matching the dashboard's actions: drain and undrain a worker,
//! follow the event stream, print the fleet's counters, and make API tokens.
//!
//! Like the rest of `gf`, they talk to NATS directly (the worker's control subject, the
//! `GF_EVENTS` stream, the buckets), so they work without the HTTP API.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use async_nats::jetstream::{self, consumer};
use clap::Args;
use futures::StreamExt;
use gf_coordinator::stats::{Aggregator, JobStats};
use gf_schemas::rpc::{ControlAck, ControlMessage};
use gf_schemas::{
    names, Event, JobRecord, Level, Reply, Timestamp, WorkerId, WorkerRecord, WorkerState,
};
use sha2::{Digest, Sha256};

use crate::connect;

#[derive(Args, Debug)]
pub struct DrainArgs {
    /// The worker's id (see `gf workers`).
    pub worker: WorkerId,
}

/// Asks the worker itself to drain (`true`) or undrain; it answers with its new state.
pub async fn drain(url: &str, a: DrainArgs, on: bool) -> anyhow::Result<ExitCode> {
    let client = connect(url).await?;
    let msg = serde_json::to_vec(&ControlMessage::Drain { drain: on })?;
    let reply = match tokio::time::timeout(
        Duration::from_secs(5),
        client.request(names::worker_control(&a.worker), msg.into()),
    )
    .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => bail!(
            "worker {} did not answer ({e}; is it running? see `gf workers`)",
            a.worker
        ),
        Err(_) => bail!(
            "worker {} did not answer within 5s (is it running? see `gf workers`)",
            a.worker
        ),
    };
    let ack: Reply<ControlAck> =
        serde_json::from_slice(&reply.payload).context("unexpected answer from the worker")?;
    let ack = ack.into_result()?;
    println!(
        "{} {}",
        a.worker,
        match ack.state {
            WorkerState::Draining => "draining",
            WorkerState::Active => "active",
            WorkerState::Starting => "starting",
            WorkerState::Gone => "gone",
        }
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct EventsArgs {
    /// Keep printing new events as they are published.
    #[arg(short, long)]
    pub follow: bool,
    /// How many of the latest events to print first.
    #[arg(long, default_value_t = 50)]
    pub limit: u64,
    /// Only events at this level (info, warn, error).
    #[arg(long, value_parser = parse_level)]
    pub level: Option<Level>,
    /// One JSON event per line, with its stream sequence as `seq`.
    #[arg(long)]
    pub json: bool,
}

fn parse_level(s: &str) -> Result<Level, String> {
    serde_json::from_value(serde_json::Value::String(s.into()))
        .map_err(|_| format!("`{s}`: one of info, warn, error"))
}

fn print_event(seq: u64, e: &Event, json: bool) -> anyhow::Result<()> {
    if json {
        let mut v = serde_json::to_value(e)?;
        v["seq"] = seq.into();
        println!("{v}");
        return Ok(());
    }
    let level = match e.level {
        Level::Info => "info ",
        Level::Warn => "WARN ",
        Level::Error => "ERROR",
    };
    let mut ctx = Vec::new();
    if let Some(j) = e.job_id {
        ctx.push(format!("job {j}"));
    }
    if let Some(w) = &e.worker_id {
        ctx.push(format!("worker {w}"));
    }
    if let Some(s) = e.state {
        ctx.push(format!("-> {s}"));
    }
    if !e.message.is_empty() {
        ctx.push(e.message.clone());
    }
    println!(
        "{} {level} {:<20} {}",
        e.time,
        e.kind.as_str(),
        ctx.join(" · ")
    );
    Ok(())
}

pub async fn events(url: &str, a: EventsArgs) -> anyhow::Result<ExitCode> {
    let client = connect(url).await?;
    let js = jetstream::new(client);
    let mut stream = js
        .get_stream(names::STREAM_EVENTS)
        .await
        .context("no events stream: has a coordinator started against this NATS?")?;
    let info = stream.info().await?;
    let last = info.state.last_sequence;
    let start = last
        .saturating_sub(a.limit.saturating_sub(1))
        .max(info.state.first_sequence)
        .max(1);
    if info.state.messages == 0 && !a.follow {
        return Ok(ExitCode::SUCCESS);
    }
    let deliver_policy = if info.state.messages == 0 || a.limit == 0 {
        consumer::DeliverPolicy::New
    } else {
        consumer::DeliverPolicy::ByStartSequence {
            start_sequence: start,
        }
    };
    let mut messages = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy,
            ..Default::default()
        })
        .await?
        .messages()
        .await?;
    loop {
        let next = if a.follow {
            messages.next().await
        } else {
            match tokio::time::timeout(Duration::from_secs(3), messages.next()).await {
                Ok(m) => m,
                Err(_) => break,
            }
        };
        let Some(m) = next else { break };
        let m = m?;
        let info = m.info().map_err(|e| anyhow::anyhow!("{e}"))?;
        let (seq, pending) = (info.stream_sequence, info.pending);
        for e in gf_schemas::decode_events(&m.payload).unwrap_or_default() {
            if a.level.is_none_or(|l| l == e.level) {
                print_event(seq, &e, a.json)?;
            }
        }
        if !a.follow && (pending == 0 || seq >= last) {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct StatsArgs {
    #[arg(long)]
    pub json: bool,
}

/// The counters the dashboard shows, computed from the buckets by the same
/// aggregator the coordinators run.
pub async fn stats(url: &str, a: StatsArgs) -> anyhow::Result<ExitCode> {
    let client = connect(url).await?;
    let js = jetstream::new(client);
    let jobs = js
        .get_key_value(names::BUCKET_JOBS)
        .await
        .context("no jobs bucket: has a coordinator started against this NATS?")?;
    let workers = js.get_key_value(names::BUCKET_WORKERS).await?;
    let now = Timestamp::now_local();
    let mut agg = Aggregator::new();
    for (_, v) in gf_coordinator::store::read_all(&jobs).await? {
        if let Ok(rec) = serde_json::from_slice::<JobRecord>(&v) {
            agg.ingest(&rec, now);
        }
    }
    let stats = agg.snapshot(true, now);
    let ws: Vec<WorkerRecord> = gf_coordinator::store::read_all(&workers)
        .await?
        .into_iter()
        .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
        .collect();
    // Online by the coordinator's default worker timeout, judged on this machine's clock.
    let online: Vec<&WorkerRecord> = ws
        .iter()
        .filter(|w| {
            w.state != WorkerState::Gone && now.since(w.last_heartbeat) < Duration::from_secs(10)
        })
        .collect();
    if a.json {
        let v = serde_json::json!({
            "jobs": stats,
            "workers": {
                "online": online.len(),
                "draining": online.iter().filter(|w| w.state == WorkerState::Draining).count(),
                "slots": online.iter().map(|w| w.slots).sum::<u32>(),
                "free_slots": online.iter().map(|w| w.free_slots).sum::<u32>(),
            }
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", render_stats(&stats, &online));
    Ok(ExitCode::SUCCESS)
}

fn render_stats(s: &JobStats, online: &[&WorkerRecord]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let slots: u32 = online.iter().map(|w| w.slots).sum();
    let free: u32 = online.iter().map(|w| w.free_slots).sum();
    let _ = writeln!(
        out,
        "jobs        {} total, {} processed, {} running",
        s.total, s.processed, s.running
    );
    let states: Vec<String> = s.by_state.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let _ = writeln!(out, "by state    {}", states.join(" · "));
    let depth: Vec<String> = s
        .queue_depth
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    let _ = writeln!(
        out,
        "queued      {}",
        if depth.is_empty() {
            "none".into()
        } else {
            depth.join(" · ")
        }
    );
    let _ = writeln!(
        out,
        "workers     {} online, {}/{} slots busy",
        online.len(),
        slots - free.min(slots),
        slots
    );
    // 30 buckets of 10 s: the last five minutes.
    let last5: Vec<_> = s.series.iter().rev().take(30).collect();
    let done: u64 = last5
        .iter()
        .map(|p| p.succeeded + p.dead + p.cancelled)
        .sum();
    let ok: u64 = last5.iter().map(|p| p.succeeded).sum();
    let lat: u64 = last5
        .iter()
        .filter_map(|p| p.latency_ms_avg.map(|l| l * p.succeeded))
        .sum();
    let _ = writeln!(
        out,
        "last 5 min  {done} finished ({:.1}/min), mean latency {}",
        done as f64 / 5.0,
        lat.checked_div(ok)
            .map_or_else(|| "–".into(), |l| format!("{l} ms"))
    );
    for m in &s.models {
        let _ = writeln!(
            out,
            "model       {}/{}: {} jobs, {} calls, {} in / {} out tokens, cost {:.4}",
            m.provider, m.model, m.jobs, m.calls, m.input_tokens, m.output_tokens, m.cost
        );
    }
    out
}

#[derive(Args, Debug)]
pub struct ApiTokenArgs {
    /// Who will hold the token (shown in the coordinator's logs and `/api/whoami`).
    #[arg(long)]
    pub name: String,
    /// `viewer` (reads) or `operator` (also acts).
    #[arg(long, default_value = "viewer")]
    pub role: String,
}

/// Makes a random API token and prints it with the line to give `gf coordinator
/// --api-token` (or `GF_API_TOKENS`), which holds only its hash.
pub fn api_token(a: ApiTokenArgs) -> anyhow::Result<ExitCode> {
    let role: gf_coordinator::config::Role = a.role.parse().map_err(anyhow::Error::msg)?;
    if a.name.is_empty() || a.name.contains(':') || a.name.contains(',') {
        bail!("--name must be non-empty, without `:` or `,`");
    }
    let token = format!("gf_{}", hex::encode(rand::random::<[u8; 24]>()));
    let hash = hex::encode(Sha256::digest(token.as_bytes()));
    println!("token (give to {}; shown once): {token}", a.name);
    println!(
        "coordinator:  --api-token {}:{}:{hash}",
        a.name,
        role.as_str()
    );
    Ok(ExitCode::SUCCESS)
}
