//! `chaos load --ceilings-only` measures the raw JetStream ceiling and every protocol
//! ceiling against its own `nats-server`, and each lifecycle sends the messages it
//! claims to (so the BENCHMARKS figures compare what they say they compare).

use std::time::Duration;

mod common;

#[test]
fn ceilings_only_measures_every_lifecycle() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let json = dir.path().join("ceilings.json");
    let args = [
        "load",
        "--ceilings-only",
        "--raw-jobs",
        "400",
        "--json",
        common::utf8(&json)?,
    ];
    let (status, out) = common::run_chaos(args, Duration::from_secs(120))?;
    assert!(status.success(), "ceilings run failed ({status}):\n{out}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json)?)?;
    assert_eq!(report["raw"].as_array().map(Vec::len), Some(2), "{report}");
    assert!(
        report["runs"].as_array().is_some_and(Vec::is_empty),
        "no fleet run with --ceilings-only: {report}"
    );
    let protocol = report["protocol"].as_array().expect("protocol ceilings");
    // (label, record writes, server messages in per job): in = the requests,
    // publishes, acks and pulls each lifecycle sends, plus a little monitoring traffic.
    let expected = [
        ("the design's lifecycle", 4, 12.0),
        ("dispatch as a notice only", 3, 11.0),
        ("lease at dispatch", 3, 9.0),
        ("dispatch as a notice only, no claim", 2, 8.0),
        ("lease at dispatch, granted on the worker's subject", 3, 8.0),
        ("lease granted on the worker's subject, archived", 4, 9.0),
        (
            "workers write the records (no coordinator on the path)",
            3,
            5.0,
        ),
    ];
    assert_eq!(protocol.len(), expected.len(), "{report}");
    for (p, (label, writes, msgs_in)) in protocol.iter().zip(expected) {
        let name = p["lifecycle"].as_str().expect("label");
        assert_eq!(name, label);
        assert_eq!(p["jobs"], 400, "{name}");
        assert_eq!(p["writes_per_job"], writes, "{name}");
        assert!(
            p["jobs_per_sec"].as_f64().is_some_and(|r| r > 0.0),
            "{name}"
        );
        let got = p["server_msgs_in_per_job"].as_f64().expect("msgs in");
        assert!(
            (msgs_in..msgs_in + 1.0).contains(&got),
            "{name}: {got} messages in per job, expected about {msgs_in}"
        );
    }
    Ok(())
}
