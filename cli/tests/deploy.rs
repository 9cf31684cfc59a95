//! The deployment files under `deploy/` and `docker-compose.yml`: alert rules pass their
//! `promtool` unit tests, the Prometheus and Alertmanager configs are valid, every metric
//! the dashboard and the alerts query is one the binaries export, and a live `/metrics`
//! scrape passes `promtool check metrics`.
//!
//! promtool and amtool come from Debian's `prometheus` and `prometheus-alertmanager`
//! packages (`scripts/install-promtool.sh`); `GF_PROMTOOL` / `GF_AMTOOL` name other
//! binaries.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _};
use common::*;
use gf_telemetry::{Kind, METRICS};
use gf_testkit::NatsServer;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

fn tool(var: &str, name: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| name.to_string())
}

/// Runs a tool from the repo root; fails with its output unless it exits 0.
fn run_tool(var: &str, name: &str, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    use std::io::Write as _;
    let mut child = Command::new(tool(var, name))
        .args(args)
        .current_dir(repo())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {name} (run scripts/install-promtool.sh)"))?;
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.unwrap_or("").as_bytes())?;
    drop(input);
    let out = child.wait_with_output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("{name} {args:?} failed ({}):\n{text}", out.status);
    }
    Ok(text)
}

/// `gf_*` identifiers in a PromQL expression.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let bytes = expr.as_bytes();
    let mut out = BTreeSet::new();
    let mut i = 0;
    while i < bytes.len() {
        let boundary = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if boundary && expr[i..].starts_with("gf_") {
            let end = expr[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(expr.len(), |n| i + n);
            out.insert(expr[i..end].to_string());
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

/// Every name in `exprs` that is not an exported series: a declared counter or gauge,
/// or a declared histogram's `_bucket`, `_count` or `_sum`.
fn unknown_metrics<'a>(exprs: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut series = BTreeSet::new();
    for (name, kind, _, _) in METRICS {
        match kind {
            Kind::Histogram => {
                for suffix in ["_bucket", "_count", "_sum"] {
                    series.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                series.insert(name.to_string());
            }
        }
    }
    exprs
        .into_iter()
        .flat_map(metric_names)
        .filter(|n| !series.contains(n))
        .collect()
}

/// The `expr` of every rule in a rules file (one-line or `|` block).
fn alert_exprs(yaml: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut lines = yaml.lines().peekable();
    while let Some(line) = lines.next() {
        let Some((indent, rest)) = line
            .find("expr:")
            .map(|i| (i, line[i + 5..].trim().to_string()))
        else {
            continue;
        };
        if rest == "|" || rest == ">" {
            let mut block = String::new();
            while let Some(next) = lines.peek() {
                let depth = next.len() - next.trim_start().len();
                if !next.trim().is_empty() && depth <= indent {
                    break;
                }
                block.push_str(next.trim());
                block.push(' ');
                lines.next();
            }
            out.push(block);
        } else {
            out.push(rest);
        }
    }
    out
}

/// Every `expr` in a Grafana dashboard, however deeply nested.
fn dashboard_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

fn read(rel: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(repo().join(rel)).with_context(|| format!("reading {rel}"))
}

/// The metric-name check finds names the binaries do not export, and accepts
/// histogram series only with their `_bucket`/`_count`/`_sum` suffixes.
#[test]
fn metric_name_check_can_fail() {
    assert_eq!(
        unknown_metrics(["rate(gf_jobs_submitted_total[5m]) + gf_no_such_thing"]),
        vec!["gf_no_such_thing"]
    );
    assert_eq!(
        unknown_metrics([
            "rate(gf_job_run_seconds_bucket[5m])",
            "gf_job_run_seconds_sum"
        ]),
        Vec::<String>::new()
    );
    assert_eq!(
        unknown_metrics(["gf_job_run_seconds", "gf_jobs_bucket"]),
        vec!["gf_job_run_seconds", "gf_jobs_bucket"]
    );
    let exprs = alert_exprs("  - alert: A\n    expr: |\n      gf_a > 0\n      and gf_b\n    for: 1m\n  - alert: B\n    expr: gf_c == 0\n");
    assert_eq!(exprs, vec!["gf_a > 0 and gf_b ", "gf_c == 0"]);
}

/// Every metric the Grafana dashboard queries is one the binaries export, and the
/// dashboard shows every exported metric.
#[test]
fn dashboard_uses_only_exported_metrics() -> anyhow::Result<()> {
    let dash: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/dashboards/gigafactory.json")?)?;
    let mut exprs = Vec::new();
    dashboard_exprs(&dash, &mut exprs);
    assert!(exprs.len() > 30, "only {} queries found", exprs.len());
    let unknown = unknown_metrics(exprs.iter().map(String::as_str));
    assert!(
        unknown.is_empty(),
        "dashboard queries unknown metrics: {unknown:?}"
    );
    let used: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    let unshown: Vec<&str> = METRICS
        .iter()
        .map(|m| m.0)
        .filter(|n| !used.iter().any(|u| u.starts_with(n)))
        .collect();
    assert!(
        unshown.is_empty(),
        "metrics not on the dashboard: {unshown:?}"
    );
    // Latency panels are percentiles over histogram buckets.
    assert!(exprs
        .iter()
        .any(|e| e.contains("histogram_quantile(0.99") && e.contains("gf_job_run_seconds_bucket")));
    Ok(())
}

/// Every alert queries only exported metrics and carries a runbook line.
#[test]
fn alerts_use_only_exported_metrics_and_have_runbooks() -> anyhow::Result<()> {
    let rules = read("deploy/prometheus/alerts.yml")?;
    let exprs = alert_exprs(&rules);
    let alerts = rules.matches("- alert:").count();
    assert_eq!(exprs.len(), alerts);
    assert!(alerts >= 8, "{alerts} alerts");
    assert_eq!(
        rules.matches("runbook:").count(),
        alerts,
        "every alert has one runbook annotation"
    );
    let unknown = unknown_metrics(exprs.iter().map(String::as_str));
    assert!(
        unknown.is_empty(),
        "alerts query unknown metrics: {unknown:?}"
    );
    Ok(())
}

/// The alert rules load and pass their unit tests (a firing and a silent case each).
#[test]
fn alert_rules_pass_promtool_tests() -> anyhow::Result<()> {
    run_tool(
        "GF_PROMTOOL",
        "promtool",
        &["check", "rules", "deploy/prometheus/alerts.yml"],
        None,
    )?;
    let mut tests: Vec<String> = std::fs::read_dir(repo().join("deploy/prometheus/tests"))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yml"))
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    tests.sort();
    assert!(!tests.is_empty());
    // Each alert has at least one case expecting it and one expecting silence.
    let rules = read("deploy/prometheus/alerts.yml")?;
    let all_tests: String = tests
        .iter()
        .map(std::fs::read_to_string)
        .collect::<Result<_, _>>()?;
    for name in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        let cases: Vec<&str> = all_tests
            .split("- eval_time:")
            .filter(|c| c.contains(&format!("alertname: {name}\n")))
            .collect();
        assert!(
            cases.iter().any(|c| c.contains("exp_alerts: []")),
            "{name} has no silent case"
        );
        assert!(
            cases.iter().any(|c| c.contains("exp_labels:")),
            "{name} has no firing case"
        );
    }
    let mut args = vec!["test", "rules"];
    args.extend(tests.iter().map(String::as_str));
    let out = run_tool("GF_PROMTOOL", "promtool", &args, None)?;
    assert!(out.contains("SUCCESS"), "{out}");
    Ok(())
}

/// The Prometheus config (with its rule file) and the Alertmanager config are valid.
#[test]
fn prometheus_and_alertmanager_configs_are_valid() -> anyhow::Result<()> {
    run_tool(
        "GF_PROMTOOL",
        "promtool",
        &["check", "config", "deploy/prometheus/prometheus.yml"],
        None,
    )?;
    run_tool(
        "GF_AMTOOL",
        "amtool",
        &["check-config", "deploy/alertmanager/alertmanager.yml"],
        None,
    )?;
    Ok(())
}

/// `docker-compose.yml` validates (when docker-compose is installed).
#[test]
fn compose_file_validates() -> anyhow::Result<()> {
    let Ok(out) = Command::new("docker-compose")
        .args(["-f", "docker-compose.yml", "config", "-q"])
        .current_dir(repo())
        .output()
    else {
        eprintln!("docker-compose not installed: compose file not checked");
        return Ok(());
    };
    assert!(
        out.status.success(),
        "docker-compose config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// After a small real run, the coordinator's and the worker's `/metrics` pass
/// `promtool check metrics` without a single lint complaint.
#[tokio::test]
async fn live_scrape_passes_promtool_check_metrics() -> anyhow::Result<()> {
    init_tracing();
    let nats = NatsServer::start()?;
    let (coord, worker, worker_url) = coordinator_and_metrics_worker(&nats).await?;
    let client = Client::connect(&nats).await?;
    let ok = client
        .submit(&sh(
            r#"echo '{"usage":{"provider":"acme","model":"m1","input_tokens":3,"calls":1,"cost":0.25}}' > "$GF_RESULT_FILE""#,
        ))
        .await?
        .job_id;
    let mut bad = sh("exit 3");
    bad.max_attempts = 1;
    let bad = client.submit(&bad).await?.job_id;
    for id in [ok, bad] {
        client.wait_terminal(id, Duration::from_secs(30)).await?;
    }
    for url in [format!("{}/metrics", coord.http()), worker_url] {
        let (code, body) = http_request("GET", &url, b"").await?;
        assert_eq!(code, 200, "{url}");
        assert!(body.contains("gf_job_run_seconds_bucket"), "{url}: {body}");
        let out = run_tool(
            "GF_PROMTOOL",
            "promtool",
            &["check", "metrics"],
            Some(&body),
        )?;
        assert!(
            out.trim().is_empty(),
            "promtool check metrics on {url}:\n{out}"
        );
    }
    worker.stop().await?;
    coord.stop().await?;
    Ok(())
}
