//! The tracker bridge: tracker items become jobs, and each job's state changes go back
//! to the item.
//!
//! - Inbound ([`Bridge::webhook`], served at `POST /api/bridge/{source}`): a signed
//!   webhook (GitHub's `X-Hub-Signature-256`, or Standard Webhooks) is turned into a
//!   job by the source's rules, once per item (see [`inbound`]).
//! - Outbound (started by [`start`]): each state change of a bridged job is echoed to
//!   its item from a durable stream, in order, with retries (see [`outbound`]);
//!   [`Bridge::deliveries`] lists them and [`Bridge::redeliver`] sends one again.
//!
//! The bridge submits through the coordinator it runs in (a [`SubmitFn`]), so its
//! jobs get the same profile resolution and idempotency as every other submission.

pub mod config;
pub mod inbound;
pub mod outbound;
pub mod send;
pub mod template;
pub mod verify;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use futures::future::BoxFuture;
use gf_schemas::bridge::{Delivery, DeliveryQuery, WebhookReply};
use gf_schemas::rpc::SubmitReply;
use gf_schemas::{names, ErrorKind, JobSpec, RpcError};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::{BridgeConfig, BridgeSettings};

/// Submits a job the way the coordinator's own submissions go.
pub type SubmitFn =
    Arc<dyn Fn(JobSpec) -> BoxFuture<'static, Result<SubmitReply, RpcError>> + Send + Sync>;

/// Why a bridge operation failed. Callers map these to statuses and RPC errors.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("{0}")]
    NotFound(String),
    /// A missing, malformed or wrong signature, or a stale timestamp.
    #[error("{0}")]
    Signature(verify::SignatureError),
    #[error("{0}")]
    Invalid(String),
    #[error("{}", .0.message)]
    Submit(RpcError),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl BridgeError {
    pub(crate) fn store(e: impl std::fmt::Display) -> Self {
        BridgeError::Unavailable(e.to_string())
    }

    /// A short stable name, for metrics and error bodies.
    pub fn kind(&self) -> &'static str {
        match self {
            BridgeError::NotFound(_) => "not_found",
            BridgeError::Signature(verify::SignatureError::Stale { .. }) => "stale",
            BridgeError::Signature(_) => "unauthorized",
            BridgeError::Invalid(_) => "invalid",
            BridgeError::Submit(e) => e.kind.as_str(),
            BridgeError::Unavailable(_) => "unavailable",
            BridgeError::Internal(_) => "internal",
        }
    }
}

impl From<BridgeError> for RpcError {
    fn from(e: BridgeError) -> Self {
        let kind = match &e {
            BridgeError::NotFound(_) => ErrorKind::NotFound,
            BridgeError::Signature(_) | BridgeError::Invalid(_) => ErrorKind::Invalid,
            BridgeError::Submit(r) => r.kind,
            BridgeError::Unavailable(_) => ErrorKind::Unavailable,
            BridgeError::Internal(_) => ErrorKind::Internal,
        };
        RpcError::new(kind, e.to_string())
    }
}

/// The bridge's bucket (items' deliveries seen, outbound delivery records). Created
/// with the coordinator's other buckets, so `gf doctor` checks it too.
pub fn bucket_config(replicas: usize) -> kv::Config {
    kv::Config {
        bucket: names::BUCKET_BRIDGE.into(),
        description: "Gigafactory tracker bridge: webhook deliveries seen, outbound deliveries"
            .into(),
        history: 1,
        // The replay window for delivery ids, and how long deliveries are listed.
        max_age: Duration::from_secs(7 * 24 * 3600),
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// The outbound stream: state changes waiting to be echoed, deduplicated by echo id.
pub fn stream_config(replicas: usize) -> stream::Config {
    stream::Config {
        name: names::STREAM_BRIDGE.into(),
        subjects: vec![names::BRIDGE_OUT_ALL.into()],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        max_age: Duration::from_secs(7 * 24 * 3600),
        duplicate_window: Duration::from_secs(600),
        ..Default::default()
    }
}

/// The bridge handle: cheap to share.
pub struct Bridge {
    pub config: Arc<BridgeConfig>,
    pub(crate) js: jetstream::Context,
    pub(crate) client: async_nats::Client,
    pub(crate) kv: kv::Store,
    pub(crate) submit: SubmitFn,
    pub(crate) http: reqwest::Client,
    /// Who emits the bridge's events (the coordinator's id).
    pub(crate) id: String,
}

impl Bridge {
    /// Handles one webhook delivery to `source` (headers and the raw body).
    pub async fn webhook(
        &self,
        source: &str,
        headers: &http::HeaderMap,
        body: &[u8],
    ) -> Result<WebhookReply, BridgeError> {
        let r = inbound::webhook(self, source, headers, body).await;
        let outcome: &'static str = match &r {
            Ok(reply) => match reply.outcome {
                gf_schemas::bridge::WebhookOutcome::Created => "created",
                gf_schemas::bridge::WebhookOutcome::Existing => "existing",
                gf_schemas::bridge::WebhookOutcome::DuplicateDelivery => "duplicate_delivery",
                gf_schemas::bridge::WebhookOutcome::Ignored => "ignored",
            },
            Err(e) => e.kind(),
        };
        // A known source only: the label set stays bounded.
        let label = if self.config.sources.contains_key(source) {
            source.to_string()
        } else {
            "unknown".into()
        };
        metrics::counter!(gf_telemetry::names::BRIDGE_WEBHOOKS, "source" => label, "outcome" => outcome).increment(1);
        if let Err(e) = &r {
            if matches!(e, BridgeError::Signature(_) | BridgeError::Invalid(_)) {
                let ev = gf_schemas::Event {
                    time: gf_schemas::Timestamp::now_local(),
                    kind: gf_schemas::EventKind::WebhookRefused,
                    level: gf_schemas::Level::Warn,
                    job_id: None,
                    worker_id: None,
                    epoch: None,
                    state: None,
                    message: format!("webhook to source `{source}` refused: {e}"),
                    source: self.id.clone(),
                };
                let client = self.client.clone();
                tokio::spawn(async move {
                    let body = serde_json::to_vec(&ev).expect("serializes");
                    client
                        .publish(names::event(ev.kind), body.into())
                        .await
                        .ok();
                });
            }
        }
        r
    }

    pub async fn deliveries(&self, q: DeliveryQuery) -> Result<Vec<Delivery>, BridgeError> {
        outbound::list(self, q).await
    }

    pub async fn redeliver(&self, id: &str) -> Result<Delivery, BridgeError> {
        outbound::redeliver(self, id).await
    }
}

/// The bridge's background tasks (the echo producer and one deliverer per source).
pub struct BridgeTask {
    handles: Vec<JoinHandle<()>>,
}

impl BridgeTask {
    /// Waits for every task to end (they end on the shutdown token).
    pub async fn join(self) {
        for h in self.handles {
            if let Err(e) = h.await {
                tracing::warn!(error = %e, "bridge task ended abnormally");
            }
        }
    }
}

/// Starts the bridge: the handle for the HTTP and RPC layers, and the outbound tasks
/// (none when no source has an echo configured). The buckets and streams must exist
/// (the coordinator creates them).
pub async fn start(
    config: BridgeConfig,
    client: async_nats::Client,
    submit: SubmitFn,
    id: String,
    shutdown: CancellationToken,
) -> anyhow::Result<(Arc<Bridge>, BridgeTask)> {
    let js = jetstream::new(client.clone());
    let kv = js.get_key_value(names::BUCKET_BRIDGE).await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let bridge = Arc::new(Bridge {
        config: Arc::new(config),
        js,
        client,
        kv,
        submit,
        http,
        id,
    });
    let mut handles = Vec::new();
    let echoing: Vec<_> = bridge
        .config
        .sources
        .values()
        .filter(|s| s.echo.is_configured())
        .cloned()
        .collect();
    if !echoing.is_empty() {
        handles.push(tokio::spawn(outbound::produce(
            bridge.clone(),
            shutdown.clone(),
        )));
        for src in echoing {
            handles.push(tokio::spawn(outbound::deliver(
                bridge.clone(),
                src,
                shutdown.clone(),
            )));
        }
    }
    Ok((bridge, BridgeTask { handles }))
}
