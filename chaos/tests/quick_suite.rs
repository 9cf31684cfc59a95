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
