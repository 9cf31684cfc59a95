//! `gf doctor`: checks a deployment from the operator's seat and prints one line per
//! check (`pass`, `warn`, `fail` or `skip`), exiting non-zero when any check fails.
//!
//! Checks, in order: the configuration parses; the overlay `GF_ENV` names exists; NATS
//! is reachable; its version is at least [`MIN_SERVER_VERSION`]; JetStream is on; every
//! bucket and stream exists with the settings of
//! [`gf_coordinator::store::bucket_configs`] / [`stream_configs_with`](gf_coordinator::store::stream_configs_with)
//! (the logs' and events' retention from this configuration's `[history]`);
//! NATS and HTTP API authentication (an open deployment warns, and fails under a
//! production profile, `GF_ENV=prod|production`); the local clock against the server's (a KV write's timestamp).

use std::fmt;
use std::process::ExitCode;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use clap::Args;

use crate::config::{ConfigError, Loaded, Loader};

/// The oldest NATS server the design accepts ([`crate::nats_bin::MIN_VERSION`]: state in
/// JetStream, and the security fixes least-privilege factories rely on).
pub const MIN_SERVER_VERSION: (u64, u64, u64) = {
    let (major, minor, patch) = crate::nats_bin::MIN_VERSION;
    (major as u64, minor as u64, patch as u64)
};

#[derive(Args, Debug, Clone)]
pub struct DoctorArgs {
    /// Warn when the local clock is off the server's by more than this; fail at 5 times.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    pub max_skew: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Pass,
    Warn,
    Fail,
    Skip,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "fail",
            Status::Skip => "skip",
        })
    }
}

/// One check's outcome.
#[derive(Clone, Debug)]
pub struct Check {
    pub status: Status,
    pub name: String,
    pub detail: String,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<5} {:<22} {}", self.status, self.name, self.detail)
    }
}

/// Collects checks and prints each as it is made.
#[derive(Default)]
struct Report {
    checks: Vec<Check>,
}

impl Report {
    fn add(&mut self, status: Status, name: impl Into<String>, detail: impl Into<String>) {
        let c = Check {
            status,
            name: name.into(),
            detail: detail.into(),
        };
        println!("{c}");
        self.checks.push(c);
    }
    fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.status == Status::Fail)
    }
}

pub async fn run(loader: Loader, args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let report = check(loader, args).await;
    let (fails, warns) = report
        .checks
        .iter()
        .fold((0, 0), |(f, w), c| match c.status {
            Status::Fail => (f + 1, w),
            Status::Warn => (f, w + 1),
            _ => (f, w),
        });
    println!(
        "{} checks: {fails} failed, {warns} warnings",
        report.checks.len()
    );
    let open: Vec<&str> = report
        .checks
        .iter()
        .filter(|c| c.status != Status::Pass && c.detail.starts_with("OPEN"))
        .map(|c| c.name.as_str())
        .collect();
    if !open.is_empty() {
        println!(
            "WARNING: this deployment is OPEN ({}): anyone who reaches it can run commands on your factories. See docs/security.md.",
            open.join(", ")
        );
    }
    Ok(if report.failed() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Parses `v2.12.3`, `2.12.3-RC.1` and the like.
pub fn parse_version(v: &str) -> Option<(u64, u64, u64)> {
    let v = v.trim().trim_start_matches('v');
    let core = v.split(['-', '+']).next()?;
    let mut it = core.split('.').map(|p| p.parse::<u64>().ok());
    Some((it.next()??, it.next()??, it.next().flatten().unwrap_or(0)))
}

async fn check(loader: Loader, args: DoctorArgs) -> Report {
    let mut r = Report::default();

    // Configuration and overlay.
    let loaded = match loader.load() {
        Ok(l) => {
            let base = l.base.as_ref().map_or_else(
                || format!("no {} (defaults)", loader.base.display()),
                |b| format!("parsed {}", b.display()),
            );
            r.add(Status::Pass, "config", base);
            match (&l.overlay, loader.overlay_path()) {
                (Some(o), Some((env, _))) => r.add(
                    Status::Pass,
                    "overlay",
                    format!("GF_ENV={env}: merged {}", o.display()),
                ),
                _ => r.add(Status::Pass, "overlay", "none (GF_ENV is not set)"),
            }
            l
        }
        Err(e) => {
            match &e {
                ConfigError::OverlayMissing { env, file } => {
                    r.add(
                        Status::Pass,
                        "config",
                        format!("parsed {}", loader.base.display()),
                    );
                    r.add(
                        Status::Fail,
                        "overlay",
                        format!("GF_ENV={env} but {} does not exist", file.display()),
                    );
                }
                other => r.add(Status::Fail, "config", other.to_string()),
            }
            // Go on with what the environment and flags say, so NATS is still checked.
            let mut fallback = loader.clone();
            fallback.base = loader.base.with_file_name(".gf-doctor-no-such-file.toml");
            fallback.base_required = false;
            fallback.env.remove("GF_ENV");
            match fallback.load() {
                Ok(l) => l,
                Err(_) => {
                    fallback.env.clear();
                    fallback.flags.clear();
                    fallback.load().expect("defaults load")
                }
            }
        }
    };
    let (status, detail) = tracing_check(loaded.settings.tracing.otlp_endpoint.as_deref()).await;
    r.add(status, "tracing", detail);
    let replicas = loaded.settings.coordinator.replicas;
    let production = production_profile(loader.env.get("GF_ENV").map(String::as_str));
    let api = match loaded.settings.coordinator.http_addr {
        Some(addr) => api_probe(addr).await,
        None => ApiProbe::Off,
    };
    let url = loaded.settings.nats.url.clone();
    let shown_url = crate::config::mask_url(&url);

    // NATS.
    // The URL's user, if any (the operator's, on a secured NATS).
    let client = match gf_auth::url::connect_options(&url)
        .0
        .name("gf doctor")
        .connection_timeout(Duration::from_secs(3))
        .connect(&url)
        .await
    {
        Ok(c) => match tokio::time::timeout(Duration::from_secs(5), c.flush()).await {
            Ok(Ok(())) => Some(c),
            Ok(Err(e)) => {
                r.add(
                    Status::Fail,
                    "nats",
                    format!("cannot reach {shown_url}: {e}"),
                );
                None
            }
            Err(_) => {
                r.add(
                    Status::Fail,
                    "nats",
                    format!("cannot reach {shown_url}: timed out after 5s"),
                );
                None
            }
        },
        Err(e) => {
            r.add(
                Status::Fail,
                "nats",
                format!("cannot reach {shown_url}: {e}"),
            );
            None
        }
    };
    let Some(client) = client else {
        for name in [
            "nats version",
            "jetstream",
            "buckets",
            "streams",
            "clock skew",
        ] {
            r.add(Status::Skip, name, "NATS is not reachable");
        }
        auth_checks(&mut r, &loaded, None, production.as_deref(), &api);
        return r;
    };
    let info = client.server_info();
    r.add(
        Status::Pass,
        "nats",
        format!("reachable at {shown_url} (server {})", info.server_name),
    );
    match parse_version(&info.version) {
        Some(v) if v >= MIN_SERVER_VERSION => r.add(
            Status::Pass,
            "nats version",
            format!("{} (>= {})", info.version, fmt_version(MIN_SERVER_VERSION)),
        ),
        _ => r.add(
            Status::Fail,
            "nats version",
            format!(
                "{} is older than {} (upgrade: earlier servers can lose acknowledged writes and miss security fixes)",
                info.version,
                fmt_version(MIN_SERVER_VERSION)
            ),
        ),
    }

    let js = jetstream::new(client.clone());
    let js_ok = match js.query_account().await {
        Ok(acct) => {
            r.add(
                Status::Pass,
                "jetstream",
                format!("enabled ({} streams in this account)", acct.streams),
            );
            true
        }
        Err(e) => {
            r.add(
                Status::Fail,
                "jetstream",
                format!("not available ({e}): start nats-server with -js or a jetstream block"),
            );
            false
        }
    };
    if js_ok {
        check_storage(&mut r, &js, replicas, &loaded.coordinator_policy().history).await;
        check_archive(&mut r, &js).await;
        check_clock(&mut r, &js, args.max_skew).await;
    } else {
        r.add(Status::Skip, "buckets", "JetStream is off");
        r.add(Status::Skip, "streams", "JetStream is off");
        r.add(Status::Skip, "clock skew", "JetStream is off");
    }
    auth_checks(&mut r, &loaded, Some(&info), production.as_deref(), &api);
    r
}

fn fmt_version(v: (u64, u64, u64)) -> String {
    format!("{}.{}.{}", v.0, v.1, v.2)
}

/// Settings of a stream that `gf doctor` compares, by name.
fn stream_settings(c: &stream::Config) -> Vec<(&'static str, String)> {
    vec![
        ("subjects", format!("{:?}", c.subjects)),
        ("retention", format!("{:?}", c.retention)),
        ("storage", format!("{:?}", c.storage)),
        ("replicas", c.num_replicas.to_string()),
        ("max_age", format!("{:?}", c.max_age)),
        ("max_bytes", limit(c.max_bytes)),
    ]
}

/// A size limit: 0 in a config and -1 from the server both mean none.
fn limit(n: i64) -> String {
    if n <= 0 {
        "unlimited".into()
    } else {
        n.to_string()
    }
}

fn differences(want: &[(&'static str, String)], have: &[(&'static str, String)]) -> Vec<String> {
    want.iter()
        .zip(have)
        .filter(|(w, h)| w.1 != h.1)
        .map(|(w, h)| format!("{} is {} (expected {})", w.0, h.1, w.1))
        .collect()
}

async fn check_storage(
    r: &mut Report,
    js: &jetstream::Context,
    replicas: usize,
    history: &gf_coordinator::history::HistoryConfig,
) {
    for want in gf_coordinator::store::bucket_configs(replicas) {
        let name = format!("bucket {}", want.bucket);
        let mut stream = match js.get_stream(format!("KV_{}", want.bucket)).await {
            Ok(s) => s,
            Err(_) => {
                r.add(
                    Status::Fail,
                    name,
                    "missing (a coordinator creates it at start)",
                );
                continue;
            }
        };
        let have = match stream.info().await {
            Ok(i) => i.config.clone(),
            Err(e) => {
                r.add(Status::Fail, name, format!("cannot read its settings: {e}"));
                continue;
            }
        };
        let w = [
            ("history", want.history.to_string()),
            ("max_age", format!("{:?}", want.max_age)),
            ("max_value_size", limit(want.max_value_size.into())),
            ("storage", format!("{:?}", want.storage)),
            ("replicas", want.num_replicas.to_string()),
            // Retention of finished jobs needs them (docs/history.md).
            ("limit_markers", format!("{:?}", want.limit_markers)),
        ];
        let h = [
            ("history", have.max_messages_per_subject.to_string()),
            ("max_age", format!("{:?}", have.max_age)),
            ("max_value_size", limit(have.max_message_size.into())),
            ("storage", format!("{:?}", have.storage)),
            ("replicas", have.num_replicas.to_string()),
            (
                "limit_markers",
                format!(
                    "{:?}",
                    have.subject_delete_marker_ttl
                        .filter(|_| have.allow_message_ttl)
                ),
            ),
        ];
        report_diff(r, name, &differences(&w, &h));
    }
    // The logs' and events' retention are the configured ones (`[history]`).
    for want in gf_coordinator::store::stream_configs_with(replicas, history) {
        let name = format!("stream {}", want.name);
        let have = match js.get_stream(&want.name).await {
            Ok(mut s) => match s.info().await {
                Ok(i) => i.config.clone(),
                Err(e) => {
                    r.add(Status::Fail, name, format!("cannot read its settings: {e}"));
                    continue;
                }
            },
            Err(_) => {
                r.add(
                    Status::Fail,
                    name,
                    "missing (a coordinator creates it at start)",
                );
                continue;
            }
        };
        report_diff(
            r,
            name,
            &differences(&stream_settings(&want), &stream_settings(&have)),
        );
    }
}

/// The archive of finished jobs and its archiver (docs/history.md).
async fn check_archive(r: &mut Report, js: &jetstream::Context) {
    use gf_coordinator::history::archive;
    let name = format!("stream {}", gf_schemas::names::STREAM_ARCHIVE);
    match js.get_stream(gf_schemas::names::STREAM_ARCHIVE).await {
        Ok(mut s) => match s.info().await {
            Ok(i) => {
                let c = &i.config;
                let mut diffs = Vec::new();
                if c.max_messages_per_subject != 1 {
                    diffs.push(format!(
                        "max_msgs_per_subject is {} (expected 1)",
                        c.max_messages_per_subject
                    ));
                }
                if !c.allow_direct {
                    diffs.push("allow_direct is off (lookups by id need it)".into());
                }
                if diffs.is_empty() {
                    r.add(
                        Status::Pass,
                        name,
                        format!(
                            "{} finished jobs, kept {}",
                            i.state.messages,
                            humantime::format_duration(c.max_age)
                        ),
                    );
                } else {
                    r.add(Status::Fail, name, diffs.join("; "));
                }
            }
            Err(e) => r.add(Status::Fail, name, format!("cannot read its settings: {e}")),
        },
        Err(_) => r.add(
            Status::Fail,
            name,
            "missing (a coordinator creates it at start)",
        ),
    }
    match archive::lag(js).await {
        Ok(lag) if lag < Duration::from_secs(3600) => r.add(
            Status::Pass,
            "archiver lag",
            format!(
                "{}",
                humantime::format_duration(Duration::from_secs(lag.as_secs()))
            ),
        ),
        Ok(lag) => r.add(
            Status::Warn,
            "archiver lag",
            format!(
                "{} behind: finished jobs past their grace period before being archived are lost",
                humantime::format_duration(Duration::from_secs(lag.as_secs()))
            ),
        ),
        Err(e) => r.add(Status::Warn, "archiver lag", format!("cannot measure: {e}")),
    }
}

fn report_diff(r: &mut Report, name: String, diffs: &[String]) {
    if diffs.is_empty() {
        r.add(Status::Pass, name, "present with the expected settings");
    } else {
        r.add(Status::Fail, name, diffs.join("; "));
    }
}

/// Writes a key in the leader bucket and compares the server's timestamp on it with
/// the local clock (as [`gf_coordinator::clock::ServerClock`] does for leases).
async fn check_clock(r: &mut Report, js: &jetstream::Context, max_skew: Duration) {
    let bucket = match js.get_key_value(gf_schemas::names::BUCKET_LEADER).await {
        Ok(b) => b,
        Err(_) => {
            r.add(
                Status::Skip,
                "clock skew",
                format!("bucket {} is missing", gf_schemas::names::BUCKET_LEADER),
            );
            return;
        }
    };
    let clock = gf_coordinator::clock::ServerClock::anchored(gf_schemas::Timestamp::now_local());
    let key = format!("clock.doctor-{}", uuid::Uuid::now_v7().simple());
    let result = clock.sync(&bucket, &key).await;
    let _ = bucket.purge(&key).await;
    match result {
        Ok(skew) if skew <= max_skew => r.add(
            Status::Pass,
            "clock skew",
            format!("{skew:?} from the server's clock"),
        ),
        Ok(skew) if skew <= max_skew * 5 => r.add(
            Status::Warn,
            "clock skew",
            format!(
                "{skew:?} from the server's clock (leases use server time; logs will disagree)"
            ),
        ),
        Ok(skew) => r.add(
            Status::Fail,
            "clock skew",
            format!("{skew:?} from the server's clock: fix NTP on this host"),
        ),
        Err(e) => r.add(
            Status::Fail,
            "clock skew",
            format!("cannot write a probe key: {e}"),
        ),
    }
}

/// `GF_ENV` when it names a production profile (`prod` or `production`, any case):
/// there an open NATS or HTTP API is a failure, not a warning.
pub fn production_profile(env: Option<&str>) -> Option<String> {
    env.filter(|e| matches!(e.to_ascii_lowercase().as_str(), "prod" | "production"))
        .map(str::to_string)
}

/// What the coordinator's HTTP API says to a caller without a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiProbe {
    /// `coordinator.http_addr` is not set: no API to check.
    Off,
    /// Nothing answered there.
    Unreachable(String),
    /// 401: a token is required.
    Guarded(String),
    /// 200: anyone is served (`--no-auth`).
    Open(String),
}

/// Asks `GET /api/whoami` at `addr` (loopback for an unspecified address) without a
/// token.
async fn api_probe(addr: std::net::SocketAddr) -> ApiProbe {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut addr = addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let ask = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(
            format!("GET /api/whoami HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
        let mut head = vec![0u8; 64];
        let n = s.read(&mut head).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&head[..n]).into_owned())
    };
    let shown = format!("http://{addr}");
    match tokio::time::timeout(Duration::from_secs(3), ask).await {
        Ok(Ok(head)) => match head.split_whitespace().nth(1) {
            Some("401") => ApiProbe::Guarded(shown),
            Some("200") => ApiProbe::Open(shown),
            other => ApiProbe::Unreachable(format!(
                "{shown} answered {} (not a Gigafactory coordinator?)",
                other.unwrap_or("nothing")
            )),
        },
        Ok(Err(e)) => ApiProbe::Unreachable(format!("{shown}: {e}")),
        Err(_) => ApiProbe::Unreachable(format!("{shown}: no answer within 3s")),
    }
}

fn auth_checks(
    r: &mut Report,
    loaded: &Loaded,
    info: Option<&async_nats::ServerInfo>,
    production: Option<&str>,
    api: &ApiProbe,
) {
    let url_has_creds = loaded
        .settings
        .nats
        .url
        .split("://")
        .nth(1)
        .is_some_and(|rest| rest.contains('@'));
    // An open deployment is a warning anywhere, a failure in production.
    let open = match production {
        Some(_) => Status::Fail,
        None => Status::Warn,
    };
    let in_production = production
        .map(|env| format!(" in production (GF_ENV={env})"))
        .unwrap_or_default();
    match info {
        Some(i) if i.auth_required => r.add(
            Status::Pass,
            "nats auth",
            "the server requires authentication",
        ),
        Some(_) => r.add(
            open,
            "nats auth",
            format!(
                "OPEN{in_production}: the server accepts anyone: whoever reaches it can submit jobs (run commands on every factory), claim and complete them, and read every job{}; secure it with `gf admin init` (docs/security.md)",
                if url_has_creds {
                    " (credentials are configured but the server does not ask for them)"
                } else {
                    ""
                }
            ),
        ),
        None => r.add(Status::Skip, "nats auth", "NATS is not reachable"),
    }
    match api {
        ApiProbe::Off => r.add(Status::Pass, "api auth", "no HTTP API (coordinator.http_addr is not set)"),
        ApiProbe::Unreachable(why) => r.add(
            Status::Skip,
            "api auth",
            format!("no coordinator answers at coordinator.http_addr ({why})"),
        ),
        ApiProbe::Guarded(at) => r.add(
            Status::Pass,
            "api auth",
            format!("the HTTP API at {at} requires a token"),
        ),
        ApiProbe::Open(at) => r.add(
            open,
            "api auth",
            format!(
                "OPEN{in_production}: the HTTP API at {at} serves everyone as an operator (--no-auth); give the coordinator --api-token (make one with `gf api-token`)"
            ),
        ),
    }
}

/// The OTLP endpoint parses as plain HTTP and something listens there.
async fn tracing_check(endpoint: Option<&str>) -> (Status, String) {
    let Some(endpoint) = endpoint else {
        return (
            Status::Pass,
            "off (tracing.otlp_endpoint is not set)".into(),
        );
    };
    let url = gf_telemetry::trace::traces_url(endpoint);
    let addr = match gf_telemetry::trace::http_authority(endpoint) {
        Ok(a) => a,
        Err(e) => return (Status::Fail, format!("tracing.otlp_endpoint: {e}")),
    };
    match tokio::time::timeout(
        Duration::from_secs(3),
        tokio::net::TcpStream::connect(addr.as_str()),
    )
    .await
    {
        Ok(Ok(_)) => (
            Status::Pass,
            format!("exporting spans over OTLP/HTTP to {url}"),
        ),
        Ok(Err(e)) => (
            Status::Warn,
            format!("collector at {addr} is not reachable ({e}); spans will be dropped"),
        ),
        Err(_) => (
            Status::Warn,
            format!("collector at {addr} did not answer within 3s; spans will be dropped"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tracing_check_lines() {
        assert_eq!(tracing_check(None).await.0, Status::Pass);
        let (s, d) = tracing_check(Some("https://collector:4318")).await;
        assert_eq!(s, Status::Fail, "{d}");
        assert!(d.contains("plain http"), "{d}");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (s, d) = tracing_check(Some(&format!("http://127.0.0.1:{port}"))).await;
        assert_eq!(s, Status::Pass, "{d}");
        drop(listener);
        let (s, d) = tracing_check(Some(&format!("http://127.0.0.1:{port}"))).await;
        assert_eq!(s, Status::Warn, "{d}");
    }

    /// `prod` and `production` (any case) are production profiles; nothing else is.
    #[test]
    fn production_profiles() {
        assert_eq!(production_profile(Some("Prod")).as_deref(), Some("Prod"));
        assert!(production_profile(Some("production")).is_some());
        assert!(production_profile(Some("staging")).is_none());
        assert!(production_profile(Some("preprod")).is_none());
        assert!(production_profile(None).is_none());
    }

    /// Server versions compare numerically, release candidates by their core.
    #[test]
    fn versions() {
        assert_eq!(parse_version("2.12.3"), Some((2, 12, 3)));
        assert_eq!(parse_version("v2.15.1"), Some((2, 15, 1)));
        assert_eq!(parse_version("2.12.3-RC.2"), Some((2, 12, 3)));
        assert!(parse_version("2.9.25").unwrap() < MIN_SERVER_VERSION);
        assert!(parse_version("2.12.10").unwrap() > MIN_SERVER_VERSION);
        assert!(
            parse_version("2.12.6").unwrap() < MIN_SERVER_VERSION,
            "pre security fixes"
        );
        assert_eq!(MIN_SERVER_VERSION, (2, 12, 7));
        assert_eq!(parse_version("nonsense"), None);
    }
}
