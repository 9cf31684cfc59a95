//! Coordinator settings. Defaults suit a small production fleet; tests shorten the
//! timings.

use std::net::SocketAddr;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    pub nats_url: String,
    /// Unique per replica; shown in `/health` and as the leader's name.
    pub id: String,
    /// HTTP API and `/health`; `None` serves no HTTP.
    pub http_addr: Option<SocketAddr>,
    /// Routing dimensions in subject order (first must be `queue`).
    pub routing_dims: Vec<String>,
    /// Lease TTL when the job does not set one.
    pub lease_ttl: Duration,
    /// The start deadline: a job leased to a worker at dispatch whose start that worker
    /// has not confirmed (first renewal or completion) within this (or its lease TTL,
    /// if shorter) goes back to pending; so does a notice of an earlier coordinator
    /// nobody claimed.
    pub claim_timeout: Duration,
    /// How often the leader looks for expired leases and claims.
    pub reaper_period: Duration,
    /// Workers heartbeat this often…
    pub heartbeat_interval: Duration,
    /// …and are considered gone after this long without one.
    pub worker_timeout: Duration,
    /// Scheduler leader lease; a standby takes over within about this long.
    pub leader_ttl: Duration,
    /// Longest wait for a bucket watch (the leader's view, the stats task) to deliver
    /// what the bucket held when it was opened; one that does not is re-opened, after
    /// a backoff, from what it did deliver (`crate::watch`).
    pub watch_replay_timeout: Duration,
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// Ignored; kept so configurations that set it still load. It was the notices
    /// published per worker beyond its free slots. Since the lease is granted at
    /// dispatch a worker is never granted more jobs than it has free slots: a grant
    /// beyond them would wait on the worker behind a running job and lapse at its
    /// start deadline, costing the job a second dispatch and the worker its standing.
    pub dispatch_slack: u32,
    /// Largest submission accepted (bytes of JSON).
    pub max_submit_bytes: usize,
    /// Replicas for buckets and streams (3 on a clustered NATS).
    pub replicas: usize,
    /// Requests handled concurrently per coordinator.
    pub max_inflight_rpc: usize,
    /// Score weights (defaults, per product) and product weights.
    pub scoring: crate::score::ScoringConfig,
    /// Preemption: `Some(margin)` revokes a running job whose score is at least
    /// `margin` below that of a job that cannot be placed. Off (`None`) by default.
    pub preemption_margin: Option<f64>,
    /// Concurrency and rate limits keyed by a job label.
    pub limits: Vec<LimitRule>,
    /// Refuse submissions for a product over its budget (otherwise they wait).
    pub refuse_over_budget: bool,
    /// Who may use the HTTP API. Default (in code): disabled, for embedding and tests;
    /// `gf coordinator` refuses to start without tokens unless `--no-auth` is given.
    pub auth: AuthConfig,
    /// Named job templates (`[profiles.<name>]`), resolved at submission.
    pub profiles: std::collections::BTreeMap<String, gf_schemas::Profile>,
    /// The tracker bridge's sources and rules (`[bridge]`); none by default.
    pub bridge: gf_bridge::BridgeConfig,
    /// How long finished jobs stay in the live store (`[history]`, docs/history.md).
    pub history: crate::history::HistoryConfig,
    /// A secured NATS (issue #15): connect as the coordinators' nkey user and answer
    /// the auth callout. `None`: the URL's credentials, if any, and no callout.
    pub security: Option<crate::auth::Security>,
    /// Caps on artifacts and checkpoints (`[artifacts]`).
    pub artifacts: crate::artifacts::ArtifactsConfig,
}

/// A limit on jobs sharing a label value, e.g. `repo` with `max_running = 3`: at most
/// three jobs per repository run (or are dispatched) at once.
#[derive(Clone, Debug, PartialEq)]
pub struct LimitRule {
    pub label: String,
    pub max_running: Option<u32>,
    pub max_starts_per_minute: Option<u32>,
}

/// HTTP API authentication: bearer tokens with roles. Only the tokens' SHA-256 hashes
/// are kept, so the config file is not a secret store.
#[derive(Clone, Debug, Default)]
pub struct AuthConfig {
    /// `false` serves every route to anyone: for local development only.
    pub enabled: bool,
    pub tokens: Vec<ApiToken>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiToken {
    /// Who holds it (shown in logs, never the token).
    pub name: String,
    pub role: Role,
    /// Lowercase hex SHA-256 of the token as sent in `Authorization: Bearer <token>`.
    pub sha256_hex: String,
}

/// What a token may do. `Operator` includes everything `Viewer` may.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads: jobs, workers, events, stats, logs.
    Viewer,
    /// Also acts: submit, cancel, drain.
    Operator,
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            _ => Err(format!("unknown role `{s}` (viewer or operator)")),
        }
    }
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
        }
    }
}

impl ApiToken {
    /// Parses `NAME:ROLE:SHA256HEX` (the form `--api-token` and `GF_API_TOKENS` take).
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut parts = s.splitn(3, ':');
        let (Some(name), Some(role), Some(hash)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(format!("`{s}` is not NAME:ROLE:SHA256HEX"));
        };
        let hash = hash.trim().to_ascii_lowercase();
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "token `{name}`: the hash must be 64 hex digits (sha256 of the token)"
            ));
        }
        if name.is_empty() {
            return Err("a token needs a name".into());
        }
        Ok(Self {
            name: name.into(),
            role: role.parse()?,
            sha256_hex: hash,
        })
    }
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self {
            nats_url: "nats://127.0.0.1:4222".into(),
            id: format!("coord-{}", &uuid::Uuid::now_v7().simple().to_string()[24..]),
            http_addr: Some(([127, 0, 0, 1], 8080).into()),
            routing_dims: gf_schemas::names::DEFAULT_DIMS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            lease_ttl: Duration::from_secs(30),
            claim_timeout: Duration::from_secs(15),
            reaper_period: Duration::from_millis(500),
            heartbeat_interval: Duration::from_secs(2),
            worker_timeout: Duration::from_secs(10),
            leader_ttl: Duration::from_secs(5),
            watch_replay_timeout: Duration::from_secs(30),
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            dispatch_slack: 0,
            max_submit_bytes: 256 * 1024,
            replicas: 1,
            max_inflight_rpc: 512,
            scoring: Default::default(),
            preemption_margin: None,
            limits: Vec::new(),
            refuse_over_budget: false,
            auth: AuthConfig::default(),
            profiles: Default::default(),
            bridge: Default::default(),
            history: Default::default(),
            security: None,
            artifacts: Default::default(),
        }
    }
}
