//! `chaos load --auth open,secured` makes the same fleet run on an open NATS and on a
//! secured one (`gf admin init`, the auth callout, workers enrolled as factories), and
//! reports both side by side.

use std::time::Duration;

mod common;

#[test]
fn fixed_rate_open_and_secured() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let json = dir.path().join("load.json");
    let args = [
        "load",
        "--rate",
        "200",
        "--jobs",
        "100",
        "--workers",
        "2",
        "--slots",
        "4",
        "--auth",
        "open,secured",
        "--json",
        common::utf8(&json)?,
    ];
    let (status, out) = common::run_chaos(args, Duration::from_secs(240))?;
    assert!(status.success(), "load run failed ({status}):\n{out}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json)?)?;
    let runs = report["runs"].as_array().expect("runs");
    let modes: Vec<&str> = runs.iter().filter_map(|r| r["auth"].as_str()).collect();
    assert_eq!(modes, ["open", "secured"], "{report}");
    for r in runs {
        assert_eq!(r["jobs"], 100, "{r}");
        assert_eq!(r["succeeded"], 100, "every job ran: {r}");
        assert_eq!(r["workers"], 2, "{r}");
    }
    assert!(runs[0].get("factories").is_none(), "open: no factories");
    assert_eq!(
        runs[1]["factories"], 2,
        "secured: both workers ran as enrolled factories"
    );
    assert!(
        out.contains("open vs secured NATS"),
        "the side-by-side table:\n{out}"
    );
    Ok(())
}
