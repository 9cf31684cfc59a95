//! Scheduling commands: explain, requeue, reject, dag, dead letters, budgets and
//! cron schedules. All go through the coordinators' RPC plane.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use gf_schemas::names::rpc;
use gf_schemas::rpc::{BudgetUpdate, CancelReply, Dag, JobAction, ScheduleName};
use gf_schemas::{Budget, Explanation, JobId, Schedule, Timestamp};
use gf_worker::RpcClient;

use crate::{connect, output};

async fn client(url: &str) -> anyhow::Result<RpcClient> {
    Ok(RpcClient::new(connect(url).await?, Duration::from_secs(30)))
}

#[derive(Args, Debug)]
pub struct ExplainArgs {
    pub id: JobId,
    #[arg(long)]
    pub json: bool,
}

/// Renders an explanation for a terminal.
pub fn render_explanation(e: &Explanation) -> String {
    let mut s = format!("{}  {}\n{}\n", e.job_id, e.state, e.summary);
    for w in &e.waiting_for {
        s.push_str(&format!("  waiting for: {w}\n"));
    }
    let terms: Vec<String> = e
        .score
        .terms
        .iter()
        .map(|(k, v)| format!("{k} {v:+}"))
        .collect();
    s.push_str(&format!("score {} = {}\n", e.score.total, terms.join(", ")));
    if e.workers.is_empty() {
        s.push_str("no live workers\n");
    }
    let rows: Vec<Vec<String>> = e
        .workers
        .iter()
        .map(|w| {
            vec![
                w.worker.to_string(),
                match &w.missing {
                    None => "fits".into(),
                    Some(m) => format!("lacks {m}"),
                },
                w.free_slots.to_string(),
                w.score
                    .as_ref()
                    .map(|s| {
                        let mut parts = vec![format!(
                            "affinity {:+}",
                            s.terms.get("affinity").copied().unwrap_or(0.0)
                        )];
                        for t in ["success", "speed", "failed_here"] {
                            if let Some(v) = s.terms.get(t) {
                                parts.push(format!("{t} {v:+}"));
                            }
                        }
                        format!("{} ({})", s.total, parts.join(", "))
                    })
                    .unwrap_or_default(),
                w.learned
                    .as_ref()
                    .map(|l| {
                        let secs = |s: Option<f64>| s.map_or("?".into(), |s| format!("{s:.1}s"));
                        format!(
                            "ok {:.0}% (kind {:.0}%), {} (kind {}), {:.0} runs",
                            l.success * 100.0,
                            l.kind_success * 100.0,
                            secs(l.secs),
                            secs(l.kind_secs),
                            l.observed
                        )
                    })
                    .unwrap_or_default(),
            ]
        })
        .collect();
    if !rows.is_empty() {
        s.push_str(&output::table(
            &["WORKER", "FIT", "FREE", "SCORE", "LEARNED"],
            &rows,
        ));
        s.push('\n');
    }
    s
}

pub async fn explain(url: &str, a: ExplainArgs) -> anyhow::Result<ExitCode> {
    let e: Explanation = client(url)
        .await?
        .call(
            rpc::EXPLAIN,
            &JobAction {
                job_id: a.id,
                reason: None,
            },
        )
        .await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&e)?);
    } else {
        print!("{}", render_explanation(&e));
        // Where the job's values came from (its profile, the submission, defaults).
        let rec: gf_schemas::JobRecord = client(url)
            .await?
            .call(
                rpc::GET_JOB,
                &gf_schemas::rpc::GetJobRequest { job_id: a.id },
            )
            .await?;
        let profile = rec
            .spec
            .profile
            .as_deref()
            .map_or("no profile".to_string(), |p| format!("profile {p}"));
        println!("kind {} ({profile})", gf_schemas::profile::kind(&rec.spec));
        print!("{}", output::provenance(&rec));
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct ActionArgs {
    pub id: JobId,
    /// Recorded with the job.
    #[arg(long)]
    pub reason: Option<String>,
}

/// `gf requeue` and `gf reject`: one job action over RPC, printing the new state.
pub async fn job_action(
    url: &str,
    subject: &'static str,
    a: ActionArgs,
) -> anyhow::Result<ExitCode> {
    let r: CancelReply = client(url)
        .await?
        .call(
            subject,
            &JobAction {
                job_id: a.id,
                reason: a.reason,
            },
        )
        .await?;
    println!("{} {}", a.id, r.state);
    Ok(ExitCode::SUCCESS)
}

pub async fn dag(url: &str, a: ExplainArgs) -> anyhow::Result<ExitCode> {
    let d: Dag = client(url)
        .await?
        .call(
            rpc::DAG,
            &JobAction {
                job_id: a.id,
                reason: None,
            },
        )
        .await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&d)?);
        return Ok(ExitCode::SUCCESS);
    }
    let short = |id: &JobId| id.to_string()[..13].to_string();
    let rows: Vec<Vec<String>> = d
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.job_id.to_string(),
                n.state.to_string(),
                n.depends_on.iter().map(short).collect::<Vec<_>>().join(","),
                n.children.iter().map(short).collect::<Vec<_>>().join(","),
                n.command.chars().take(40).collect(),
            ]
        })
        .collect();
    println!(
        "{}",
        output::table(
            &["JOB", "STATE", "DEPENDS ON", "CHILDREN", "COMMAND"],
            &rows
        )
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct BudgetsArgs {
    #[command(subcommand)]
    pub action: Option<BudgetAction>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum BudgetAction {
    /// Set a product's limits (absent options stay as they are).
    Set {
        product: String,
        /// Cost units per period (negative removes the limit).
        #[arg(long, allow_hyphen_values = true)]
        limit_cost: Option<f64>,
        /// Tokens per period (0 removes the limit).
        #[arg(long)]
        limit_tokens: Option<u64>,
        /// Period, e.g. `1d`, `30d`; `0s` never resets.
        #[arg(long, value_parser = humantime::parse_duration)]
        period: Option<Duration>,
        /// Worker-hours per period: attempts' wall time summed over workers (negative
        /// removes the limit).
        #[arg(long, allow_hyphen_values = true)]
        worker_hours: Option<f64>,
    },
    /// Stop dispatching the product's jobs.
    Pause { product: String },
    /// Dispatch the product's jobs again.
    Resume { product: String },
}

fn budget_rows(bs: &[Budget]) -> String {
    let rows: Vec<Vec<String>> = bs
        .iter()
        .map(|b| {
            vec![
                b.product.clone(),
                format!("{:.4}", b.spent_cost),
                b.limit_cost.map_or("-".into(), |l| format!("{l}")),
                b.spent_tokens.to_string(),
                b.limit_tokens.map_or("-".into(), |l| l.to_string()),
                match b.limit_worker_hours {
                    Some(l) => format!("{:.2}/{l}", b.spent_worker_hours),
                    None => format!("{:.2}/-", b.spent_worker_hours),
                },
                b.period_secs.map_or("none".into(), |p| {
                    humantime::format_duration(Duration::from_secs(p)).to_string()
                }),
                if b.paused {
                    "paused".into()
                } else {
                    b.blocked().map_or("ok".into(), |_| "at limit".into())
                },
            ]
        })
        .collect();
    output::table(
        &[
            "PRODUCT",
            "SPENT",
            "LIMIT",
            "TOKENS",
            "TOKEN LIMIT",
            "WORKER-H",
            "PERIOD",
            "STATUS",
        ],
        &rows,
    )
}

pub async fn budgets(url: &str, a: BudgetsArgs) -> anyhow::Result<ExitCode> {
    let c = client(url).await?;
    let update = match a.action {
        None => {
            let mut bs: Vec<Budget> = c.call(rpc::BUDGET_LIST, &serde_json::json!({})).await?;
            bs.sort_by(|x, y| x.product.cmp(&y.product));
            if a.json {
                println!("{}", serde_json::to_string_pretty(&bs)?);
            } else if bs.is_empty() {
                eprintln!("no budgets yet (a product gets one when it first reports usage, or with `gf budgets set`)");
            } else {
                println!("{}", budget_rows(&bs));
            }
            return Ok(ExitCode::SUCCESS);
        }
        Some(BudgetAction::Set {
            product,
            limit_cost,
            limit_tokens,
            period,
            worker_hours,
        }) => BudgetUpdate {
            product,
            limit_cost,
            limit_tokens,
            period_secs: period.map(|p| p.as_secs()),
            paused: None,
            limit_worker_hours: worker_hours,
        },
        Some(BudgetAction::Pause { product }) => BudgetUpdate {
            product,
            paused: Some(true),
            ..Default::default()
        },
        Some(BudgetAction::Resume { product }) => BudgetUpdate {
            product,
            paused: Some(false),
            ..Default::default()
        },
    };
    let b: Budget = c
        .call(rpc::BUDGET_SET, &update)
        .await
        .context("budget not changed")?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&b)?);
    } else {
        println!("{}", budget_rows(&[b]));
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct ScheduleArgs {
    #[command(subcommand)]
    pub action: ScheduleAction,
}

#[derive(Subcommand, Debug)]
pub enum ScheduleAction {
    /// Submit a job at every tick of CRON (`sec min hour day month weekday`, seconds
    /// optional): `gf schedule add nightly "0 0 3 * * *" -- ./build.sh`.
    Add {
        name: String,
        cron: String,
        #[command(flatten)]
        job: Box<crate::ops::SubmitArgs>,
    },
    /// List schedules.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove a schedule.
    Rm { name: String },
}

pub async fn schedule(url: &str, a: ScheduleArgs) -> anyhow::Result<ExitCode> {
    let c = client(url).await?;
    match a.action {
        ScheduleAction::Add { name, cron, job } => {
            let s = Schedule {
                name,
                cron,
                spec: job.spec()?,
                paused: false,
                last_tick: None,
            };
            let s: Schedule = c
                .call(rpc::SCHEDULE_ADD, &s)
                .await
                .context("schedule not added")?;
            println!("{} added ({})", s.name, s.cron);
        }
        ScheduleAction::List { json } => {
            let ss: Vec<Schedule> = c.call(rpc::SCHEDULE_LIST, &serde_json::json!({})).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&ss)?);
            } else {
                let now = Timestamp::now_local();
                let rows: Vec<Vec<String>> = ss
                    .iter()
                    .map(|s| {
                        vec![
                            s.name.clone(),
                            s.cron.clone(),
                            s.last_tick
                                .map_or("-".into(), |t| format!("{} ago", output::age(t, now))),
                            s.spec.command.join(" "),
                        ]
                    })
                    .collect();
                println!(
                    "{}",
                    output::table(&["NAME", "CRON", "LAST TICK", "COMMAND"], &rows)
                );
            }
        }
        ScheduleAction::Rm { name } => {
            let () = c
                .call(rpc::SCHEDULE_REMOVE, &ScheduleName { name: name.clone() })
                .await?;
            println!("{name} removed");
        }
    }
    Ok(ExitCode::SUCCESS)
}
