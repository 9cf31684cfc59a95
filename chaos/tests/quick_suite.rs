//! CI runs the quick chaos suite: a few fault scenarios with small N against a real
//! cluster of `nats-server`, `gf coordinator` and `gf worker` processes.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `chaos suite --quick` passes: no invariant violation, every pass criterion met,
/// within a bounded time.
#[test]
fn quick_suite_passes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let report = dir.path().join("report.json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_chaos"))
        .args(["suite", "--quick", "--report"])
        .arg(&report)
        .stdout(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(200);
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("the quick chaos suite did not finish within 200 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().expect("piped"), &mut out)?;
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
