//! Human-readable rendering for the CLI.

use gf_schemas::{JobRecord, JobState, Timestamp, WorkerRecord};

/// `3s`, `4m`, `2h`, `5d`.
pub fn age(since: Timestamp, now: Timestamp) -> String {
    let s = now.since(since).as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

fn cut(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(n.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

/// Renders rows as left-aligned columns.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let last = cells.len() - 1;
        cells
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                if i == last {
                    c
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    let mut out = line(header.iter().map(|s| s.to_string()).collect());
    for r in rows {
        out.push('\n');
        out.push_str(&line(r.clone()));
    }
    out
}

pub fn jobs_table(jobs: &[JobRecord], now: Timestamp) -> String {
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            vec![
                j.id.to_string(),
                j.state.to_string(),
                format!("{}/{}", j.attempts, j.spec.max_attempts),
                j.spec.queue.clone(),
                j.spec.priority.to_string(),
                age(j.submitted_at, now),
                cut(&j.spec.command.join(" "), 40),
                cut(j.reason.as_deref().unwrap_or(""), 60),
            ]
        })
        .collect();
    table(
        &[
            "ID", "STATE", "TRIES", "QUEUE", "PRIO", "AGE", "COMMAND", "REASON",
        ],
        &rows,
    )
}

pub fn job_detail(j: &JobRecord, now: Timestamp) -> String {
    let mut s = String::new();
    let mut kv = |k: &str, v: String| s.push_str(&format!("{k:<12}{v}\n"));
    kv("id", j.id.to_string());
    kv("state", j.state.to_string());
    if let Some(r) = &j.reason {
        kv("reason", r.clone());
    }
    kv("command", j.spec.command.join(" "));
    kv("kind", gf_schemas::profile::kind(&j.spec));
    if let Some(p) = &j.spec.profile {
        kv("profile", p.clone());
    }
    kv("queue", j.spec.queue.clone());
    kv("priority", j.spec.priority.to_string());
    if !j.spec.requires.is_empty() {
        let r: Vec<String> = j
            .spec
            .requires
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        kv("requires", r.join(" "));
    }
    if !j.spec.tags.is_empty() {
        kv(
            "tags",
            j.spec.tags.iter().cloned().collect::<Vec<_>>().join(" "),
        );
    }
    kv(
        "attempts",
        format!("{} of {}", j.attempts, j.spec.max_attempts),
    );
    kv("epoch", j.epoch.to_string());
    // Every step of the current attempt: dispatched to whom (the lease is granted at
    // dispatch), started, renewed; ended ones are in the attempt lines below.
    if let Some(l) = &j.lease {
        kv(
            "dispatched",
            format!("to {} at {} (epoch {})", l.worker, l.granted_at, l.epoch),
        );
        if j.state == JobState::Dispatched {
            kv("start by", l.expires_at.to_string());
        } else {
            // Each renewal (and the start) sets the expiry one TTL ahead.
            let renewed = Timestamp::from_unix_millis(l.expires_at.unix_millis() - l.ttl_ms as i64);
            kv(
                "lease",
                format!("renewed at {renewed}, until {}", l.expires_at),
            );
        }
    }
    if let Some(t) = j.retry_at {
        kv("retry at", t.to_string());
    }
    kv(
        "submitted",
        format!("{} ({} ago)", j.submitted_at, age(j.submitted_at, now)),
    );
    kv("updated", j.updated_at.to_string());
    if let Some(r) = &j.result {
        kv("result", r.to_string());
    }
    if let Some(u) = &j.usage {
        kv("usage", serde_json::to_string(u).unwrap_or_default());
    }
    for line in provenance(j).lines() {
        if let Some((k, v)) = line.split_at_checked(12) {
            kv(k.trim_end(), v.to_string());
        }
    }
    for a in &j.history {
        let end = match (&a.outcome, &a.ended_because) {
            (Some(o), _) => serde_json::to_value(o)
                .map(|v| v.to_string())
                .unwrap_or_default(),
            (None, Some(b)) => b.clone(),
            (None, None) => "running".into(),
        };
        let ended = a.ended_at.map_or(String::new(), |e| {
            format!(", ended {e} ({:.1}s)", e.since(a.started_at).as_secs_f64())
        });
        kv(
            &format!("attempt e{}", a.epoch),
            format!("{} started {}{ended}: {end}", a.worker, a.started_at),
        );
    }
    s
}

pub fn workers_table(ws: &[WorkerRecord], now: Timestamp) -> String {
    let rows: Vec<Vec<String>> = ws
        .iter()
        .map(|w| {
            let caps: Vec<String> = w
                .capabilities
                .values
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .chain(w.capabilities.tags.iter().map(|t| format!("+{t}")))
                .collect();
            vec![
                w.id.to_string(),
                format!("{:?}", w.state).to_lowercase(),
                format!("{}/{}", w.slots - w.free_slots.min(w.slots), w.slots),
                w.capabilities.queues.join(","),
                format!("{} ago", age(w.last_heartbeat, now)),
                caps.join(" "),
            ]
        })
        .collect();
    table(
        &["ID", "STATE", "BUSY", "QUEUES", "HEARTBEAT", "CAPABILITIES"],
        &rows,
    )
}

/// Where each resolved value of a job came from: a line per source (profile,
/// submission, merged), defaults left out. Without a profile, it follows from the spec.
pub fn provenance(j: &JobRecord) -> String {
    use gf_schemas::profile::{provenance_without_profile, Provenance, PROFILE_FIELDS};
    let from = if j.provenance.is_empty() {
        provenance_without_profile(&j.spec)
    } else {
        j.provenance.clone()
    };
    let mut s = String::new();
    for (label, p) in [
        ("from profile", Provenance::Profile),
        ("merged", Provenance::Merged),
        ("from you", Provenance::Submission),
    ] {
        let fields: Vec<&str> = PROFILE_FIELDS
            .iter()
            .copied()
            .filter(|f| from.get(*f) == Some(&p))
            .collect();
        if !fields.is_empty() {
            s.push_str(&format!("{label:<12}{}\n", fields.join(" ")));
        }
    }
    s
}

/// A job's output line made safe for a terminal: every control character but tab
/// (C0, DEL, and the C1 range, whose CSI U+009B starts escape sequences on some
/// terminals) is written as a visible escape (`\x1b`, `\r`, `\u{9b}`) instead of being
/// sent to the terminal, so a job (or whoever wrote into its log) cannot move the
/// cursor, recolour, retitle or clear the operator's terminal, or hide text with `\r`.
/// A line without any is returned as it is.
pub fn printable(line: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| c != '\t' && c != '\n' && c.is_control();
    if !line.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(line);
    }
    let mut out = String::with_capacity(line.len() + 8);
    for c in line.chars() {
        match c {
            '\r' => out.push_str("\\r"),
            c if unsafe_char(c) && (c as u32) < 0x80 => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if unsafe_char(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Escape sequences and other controls are shown, not sent; text, tabs, newlines
    /// and non-ASCII letters pass untouched.
    #[test]
    fn printable_lines() {
        assert!(matches!(
            printable("plain\ttext, é ✓"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(printable("a\nb"), "a\nb");
        assert_eq!(
            printable("\x1b[2J\x1b]0;pwned\x07red"),
            "\\x1b[2J\\x1b]0;pwned\\x07red"
        );
        assert_eq!(printable("ok\rFAKE"), "ok\\rFAKE");
        assert_eq!(printable("\u{9b}31m\u{7f}\0"), "\\u{9b}31m\\x7f\\x00");
    }

    #[test]
    fn ages() {
        let t0 = Timestamp::from_unix_millis(0);
        assert_eq!(age(t0, Timestamp::from_unix_millis(59_000)), "59s");
        assert_eq!(age(t0, Timestamp::from_unix_millis(125_000)), "2m");
        assert_eq!(age(t0, Timestamp::from_unix_millis(7_300_000)), "2h");
    }

    /// `gf job` shows every step: dispatched to whom and when, the start deadline of a
    /// grant, the start and last renewal of a running attempt, how each attempt ended.
    #[test]
    fn job_detail_shows_every_step() {
        use gf_schemas::{Attempt, AttemptOutcome, JobId, JobSpec, Lease, WorkerId};
        let at = Timestamp::from_unix_millis;
        let w = WorkerId::new("w7").unwrap();
        let mut j = JobRecord::new(JobId::new(), JobSpec::command(["true"]), at(0));
        j.state = JobState::Dispatched;
        j.epoch = 2;
        j.lease = Some(Lease {
            worker: w.clone(),
            epoch: 2,
            granted_at: at(1_000),
            expires_at: at(4_000),
            ttl_ms: 30_000,
        });
        j.history.push(Attempt {
            epoch: 1,
            worker: WorkerId::new("w3").unwrap(),
            started_at: at(100),
            ended_at: Some(at(600)),
            outcome: Some(AttemptOutcome::Failed {
                exit_code: Some(1),
                error: "exit 1".into(),
            }),
            ended_because: None,
            artifact_errors: Vec::new(),
        });
        let out = job_detail(&j, at(2_000));
        let line = |k: &str| {
            out.lines()
                .find(|l| l.starts_with(k))
                .unwrap_or_else(|| panic!("no `{k}` line in\n{out}"))
                .to_string()
        };
        assert!(line("dispatched").contains(&format!("to w7 at {} (epoch 2)", at(1_000))));
        assert!(line("start by").contains(&at(4_000).to_string()));
        let first = line("attempt e1");
        assert!(
            first.contains(&format!("w3 started {}", at(100))),
            "{first}"
        );
        assert!(
            first.contains(&format!("ended {} (0.5s)", at(600))),
            "{first}"
        );
        assert!(first.contains("exit 1"), "{first}");

        // Started (confirmed at 1,500) and renewed at 11,500.
        j.state = JobState::Running;
        j.lease.as_mut().unwrap().expires_at = at(41_500);
        j.history.push(Attempt {
            epoch: 2,
            worker: w,
            started_at: at(1_400),
            ended_at: None,
            outcome: None,
            ended_because: None,
            artifact_errors: Vec::new(),
        });
        let out = job_detail(&j, at(12_000));
        assert!(!out.contains("start by"), "{out}");
        let lease = out.lines().find(|l| l.starts_with("lease")).unwrap();
        assert!(
            lease.contains(&format!("renewed at {}, until {}", at(11_500), at(41_500))),
            "{lease}"
        );
        let second = out.lines().find(|l| l.starts_with("attempt e2")).unwrap();
        assert!(
            second.ends_with(&format!("w7 started {}: running", at(1_400))),
            "{second}"
        );
    }

    #[test]
    fn table_aligns() {
        let t = table(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "A    BB\nxxx  y");
    }
}
