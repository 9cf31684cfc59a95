//! The text `gf outcomes replay` prints: fixed precision, fixed order (maps are
//! sorted), so two runs print the same bytes.

use std::fmt::Write as _;

use super::{Comparison, Tally, Valued};

fn hours(s: f64) -> String {
    format!("{:.1}", s / 3600.0)
}

fn pct(x: f64) -> String {
    format!("{:.1} %", x * 100.0)
}

fn weights(v: &Valued) -> String {
    v.weights
        .iter()
        .map(|(k, w)| format!("{k}={w}"))
        .collect::<Vec<_>>()
        .join(" ")
}

pub(super) fn render(c: &Comparison) -> String {
    let (r, a, b) = (&c.recorded, &c.a, &c.b);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "replayed {} of {} outcome rows ({} preempted, released or cancelled skipped): \
         {} workers, {} kinds, {} products",
        c.replayed, c.rows, c.skipped, c.workers, c.kinds, c.products
    );
    let _ = writeln!(s, "A = {}: {}", a.label, weights(a));
    let _ = writeln!(s, "B = {}: {}", b.label, weights(b));
    let _ = writeln!(s);
    let _ = writeln!(s, "{:<32}{:>12}{:>12}{:>12}", "", "recorded", "A", "B");
    let row = |s: &mut String, name: &str, f: &dyn Fn(&Valued) -> String, rec: bool| {
        let first = if rec { f(r) } else { "-".to_string() };
        let _ = writeln!(s, "{name:<32}{first:>12}{:>12}{:>12}", f(a), f(b));
    };
    row(
        &mut s,
        "expected failures",
        &|v| format!("{:.1}", v.total.expected_failures),
        true,
    );
    row(
        &mut s,
        "failure rate",
        &|v| pct(v.total.failure_rate()),
        true,
    );
    row(&mut s, "run hours", &|v| hours(v.total.run_secs), true);
    row(&mut s, "wait hours", &|v| hours(v.total.wait_secs), false);
    row(
        &mut s,
        "wall hours (wait + run)",
        &|v| hours(v.total.wall_secs()),
        false,
    );
    row(
        &mut s,
        "moved off the recorded worker",
        &|v| v.moved.to_string(),
        false,
    );
    row(
        &mut s,
        "fairness between products",
        &|v| format!("{:.3}", v.fairness),
        true,
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "A against B: {:.1} expected failures avoided ({} of jobs), {} wall hours saved \
         ({} of B's), fairness {:.3} against {:.3}",
        c.failures_avoided,
        pct(c.failures_avoided / c.replayed.max(1) as f64),
        hours(c.wall_secs_saved),
        pct(c.wall_secs_saved / b.total.wall_secs().max(1e-9)),
        a.fairness,
        b.fairness
    );
    let table = |s: &mut String, title: &str, pick: &dyn Fn(&Valued) -> Vec<(&String, &Tally)>| {
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "{title:<16}{:>8}{:>22}{:>22}{:>20}",
            "jobs", "failure rate A / B", "mean stretch A / B", "wait hours A / B"
        );
        for ((name, ta), (_, tb)) in pick(a).into_iter().zip(pick(b)) {
            let _ = writeln!(
                s,
                "{name:<16}{:>8}{:>22}{:>22}{:>20}",
                ta.jobs,
                format!("{} / {}", pct(ta.failure_rate()), pct(tb.failure_rate())),
                format!("{:.2} / {:.2}", ta.mean_stretch(), tb.mean_stretch()),
                format!("{} / {}", hours(ta.wait_secs), hours(tb.wait_secs)),
            );
        }
    };
    table(&mut s, "product", &|v| v.per_product.iter().collect());
    table(&mut s, "kind", &|v| v.per_kind.iter().collect());
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "recorded failures (counted): {}. Expected values come from a model fitted on the \
         whole file (see docs/scheduling.md, \"Replaying outcomes\").",
        c.recorded_failures
    );
    s
}
