//! What the deployment's monitoring says during a run: the alerts Alertmanager holds
//! (polled every second from its API, each with the time it was first and last seen)
//! and PromQL queries against Prometheus' HTTP API (the Grafana dashboard's panels).
//!
//! A plain HTTP/1.0 GET over TCP is all this needs, so no HTTP client is added.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use gf_schemas::Timestamp;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

/// GETs `base` (`http://host:port`) + `path`; the body of a 2xx answer.
pub async fn http_get(base: &str, path: &str) -> anyhow::Result<String> {
    http(base, "GET", path, None, &[]).await
}

/// POSTs a JSON body; the body of a 2xx answer.
pub async fn http_post(base: &str, path: &str, body: &str) -> anyhow::Result<String> {
    http(base, "POST", path, Some(body), &[]).await
}

/// POSTs a JSON body with extra headers; the body of a 2xx answer.
pub async fn http_post_with(
    base: &str,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<String> {
    http(base, "POST", path, Some(body), headers).await
}

async fn http(
    base: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> anyhow::Result<String> {
    let host = base
        .strip_prefix("http://")
        .with_context(|| format!("not an http:// URL: {base}"))?;
    let fetch = async {
        let mut conn = tokio::net::TcpStream::connect(host).await?;
        let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {host}\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(b) = body {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        req.push_str("\r\n");
        req.push_str(body.unwrap_or(""));
        conn.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        conn.read_to_end(&mut buf).await?;
        anyhow::Ok(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .with_context(|| format!("{method} {base}{path} timed out"))??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("{method} {base}{path}: no HTTP answer"))?;
    let status = head.lines().next().unwrap_or_default();
    let ok = status
        .split_whitespace()
        .nth(1)
        .is_some_and(|code| code.starts_with('2'));
    if !ok {
        bail!("{method} {base}{path}: {status}: {body}");
    }
    Ok(body.to_string())
}

/// Percent-encodes a query parameter.
pub fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One alert as Alertmanager held it: from the first poll that saw it to the first
/// that did not.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AlertSeen {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub fired: Timestamp,
    pub resolved: Option<Timestamp>,
}

/// Every alert seen during a run.
#[derive(Default)]
pub struct AlertLog {
    seen: Mutex<Vec<AlertSeen>>,
    polls: std::sync::atomic::AtomicU64,
    errors: Mutex<Option<String>>,
}

#[derive(serde::Deserialize)]
struct AmAlert {
    labels: BTreeMap<String, String>,
}

impl AlertLog {
    /// Polls Alertmanager's `/api/v2/alerts` every second until `stop`.
    pub fn watch(alertmanager: String, stop: CancellationToken) -> Arc<Self> {
        let log = Arc::new(Self::default());
        let l = log.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                match http_get(&alertmanager, "/api/v2/alerts")
                    .await
                    .and_then(|b| serde_json::from_str::<Vec<AmAlert>>(&b).context("alerts JSON"))
                {
                    Ok(alerts) => l.observe(alerts, Timestamp::now_local()),
                    Err(e) => *l.errors.lock().expect("errors") = Some(format!("{e:#}")),
                }
            }
        });
        log
    }

    fn observe(&self, alerts: Vec<AmAlert>, now: Timestamp) {
        self.polls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut seen = self.seen.lock().expect("alerts");
        for a in &alerts {
            let open = seen
                .iter()
                .any(|s| s.resolved.is_none() && s.labels == a.labels);
            if !open {
                seen.push(AlertSeen {
                    name: a.labels.get("alertname").cloned().unwrap_or_default(),
                    labels: a.labels.clone(),
                    fired: now,
                    resolved: None,
                });
            }
        }
        for s in seen.iter_mut().filter(|s| s.resolved.is_none()) {
            if !alerts.iter().any(|a| a.labels == s.labels) {
                s.resolved = Some(now);
            }
        }
    }

    pub fn all(&self) -> Vec<AlertSeen> {
        self.seen.lock().expect("alerts").clone()
    }

    /// How many polls were answered, and the last failure.
    pub fn health(&self) -> (u64, Option<String>) {
        (
            self.polls.load(std::sync::atomic::Ordering::Relaxed),
            self.errors.lock().expect("errors").clone(),
        )
    }

    /// Whether an alert of this name was seen firing after `since`.
    pub fn fired_since(&self, name: &str, since: Timestamp) -> bool {
        self.all()
            .iter()
            .any(|s| s.name == name && s.fired >= since)
    }

    /// Whether every alert of this name seen after `since` has resolved.
    pub fn resolved_since(&self, name: &str, since: Timestamp) -> bool {
        let all = self.all();
        let mine: Vec<_> = all
            .iter()
            .filter(|s| s.name == name && s.fired >= since)
            .collect();
        !mine.is_empty() && mine.iter().all(|s| s.resolved.is_some())
    }
}

/// The result of an instant query: how many series it returned.
pub async fn query_series(prometheus: &str, expr: &str) -> anyhow::Result<usize> {
    let body = http_get(prometheus, &format!("/api/v1/query?query={}", encode(expr))).await?;
    let v: serde_json::Value = serde_json::from_str(&body).context("query JSON")?;
    if v["status"] != "success" {
        bail!("query {expr}: {body}");
    }
    Ok(v["data"]["result"].as_array().map_or(0, |r| r.len()))
}

/// Evaluates every panel query of a Grafana dashboard (JSON) against Prometheus, with
/// `$__rate_interval` as `rate_interval`. Returns (panel title, queries, queries with
/// data); a panel with no data in any query is one that would be empty in Grafana.
pub async fn dashboard_panels(
    prometheus: &str,
    dashboard: &serde_json::Value,
    rate_interval: &str,
) -> anyhow::Result<Vec<(String, usize, usize)>> {
    let mut out = Vec::new();
    let panels = dashboard["panels"].as_array().context("no panels")?;
    for p in panels {
        let title = p["title"].as_str().unwrap_or("(untitled)").to_string();
        let Some(targets) = p["targets"].as_array() else {
            continue;
        };
        let mut with_data = 0;
        let mut total = 0;
        for t in targets {
            let Some(expr) = t["expr"].as_str() else {
                continue;
            };
            total += 1;
            let expr = expr.replace("$__rate_interval", rate_interval);
            if query_series(prometheus, &expr).await? > 0 {
                with_data += 1;
            }
        }
        if total > 0 {
            out.push((title, total, with_data));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(name: &str, instance: &str) -> AmAlert {
        AmAlert {
            labels: [
                ("alertname".to_string(), name.to_string()),
                ("instance".to_string(), instance.to_string()),
            ]
            .into(),
        }
    }

    #[test]
    fn alerts_fire_and_resolve_per_label_set() {
        let log = AlertLog::default();
        let t = |s: i64| Timestamp::from_unix_millis(s * 1000);
        log.observe(vec![alert("A", "c1")], t(1));
        log.observe(vec![alert("A", "c1"), alert("A", "c2")], t(2));
        log.observe(vec![alert("A", "c2")], t(3));
        assert!(log.fired_since("A", t(1)));
        assert!(!log.resolved_since("A", t(1)), "c2 still fires");
        log.observe(vec![], t(4));
        assert!(log.resolved_since("A", t(1)));
        // Firing again is a new entry.
        log.observe(vec![alert("A", "c1")], t(5));
        assert_eq!(log.all().len(), 3);
        assert!(!log.resolved_since("A", t(5)));
        assert!(!log.fired_since("B", t(0)));
    }

    #[test]
    fn queries_are_percent_encoded() {
        assert_eq!(
            encode("sum(x{a=\"b\"})[5m]"),
            "sum%28x%7Ba%3D%22b%22%7D%29%5B5m%5D"
        );
    }
}
