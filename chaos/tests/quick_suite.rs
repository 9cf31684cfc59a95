//! CI runs the quick chaos suite: a few fault scenarios with small N against a real
//! cluster of `nats-server`, `gf coordinator` and `gf worker` processes.

use std::time::Duration;

mod common;

/// `chaos suite --quick` passes: no invariant violation, every pass criterion met,
/// within a bounded time.
#[test]
fn quick_suite_passes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let report = dir.path().join("report.json");
    let args = ["suite", "--quick", "--report", common::utf8(&report)?];
    let (status, out) = common::run_chaos(args, Duration::from_secs(200))?;
    println!("{out}");
    assert!(
        status.success(),
        "chaos suite --quick failed ({status}):\n{out}"
    );
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report)?)?;
    let reports = json["reports"].as_array().expect("reports");
    assert_eq!(reports.len(), chaos::scenarios::QUICK.len());
    assert!(reports.iter().all(|r| r["passed"] == true));
    Ok(())
}

/// With `--secured` the process cluster runs as an operator deploys it (`gf admin
/// init`, the auth callout, workers enrolled with their own keys): a worker killed and
/// started again, and NATS restarted under the whole fleet, reconnect through the
/// callout and every invariant holds.
#[test]
fn secured_scenarios_pass() -> anyhow::Result<()> {
    for scenario in ["worker-kill", "nats-restart"] {
        let args = ["--secured", "scenario", scenario, "--jobs", "40"];
        let (status, out) = common::run_chaos(args, Duration::from_secs(120))?;
        println!("{out}");
        assert!(
            status.success(),
            "{scenario} secured failed ({status}):\n{out}"
        );
        assert!(
            out.contains("secured NATS: 3 workers enrolled as factories"),
            "{scenario} ran secured:\n{out}"
        );
    }
    Ok(())
}
