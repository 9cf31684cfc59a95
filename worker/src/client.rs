//! Request/reply to the coordinators, with typed outcomes.
//!
//! Callers branch on [`CallError`]: a lost lease (`stale_epoch`, `revoked`) means stop
//! and report nothing; a timeout or transport failure means the request may or may not
//! have been applied, and every RPC is safe to retry.

use std::time::Duration;

use gf_schemas::names::rpc_name;
use gf_schemas::{ErrorKind, FactoryRequest, Reply, RpcError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::Instrument;

pub use gf_auth::url::connect_options;

#[derive(Clone, Debug, thiserror::Error)]
pub enum CallError {
    /// The coordinator answered and refused; branch on `.0.kind`.
    #[error("{}", .0.message)]
    Refused(RpcError),
    #[error("no coordinator answered {subject} within {timeout:?}")]
    Timeout { subject: String, timeout: Duration },
    #[error("no coordinator is serving {0} (is `gf coordinator` running?)")]
    NoResponders(String),
    #[error("NATS: {0}")]
    Transport(String),
    #[error("unreadable reply on {subject}: {error}")]
    BadReply { subject: String, error: String },
}

impl CallError {
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            CallError::Refused(e) => Some(e.kind),
            _ => None,
        }
    }
    /// The caller no longer holds the lease: stop work, nothing it reports counts.
    pub fn lost_lease(&self) -> bool {
        matches!(
            self.kind(),
            Some(ErrorKind::StaleEpoch | ErrorKind::Revoked)
        )
    }
    /// Worth retrying: the request may not have arrived (or its answer was lost).
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            CallError::Timeout { .. } | CallError::NoResponders(_) | CallError::Transport(_)
        ) || matches!(
            self.kind(),
            Some(ErrorKind::Unavailable | ErrorKind::Conflict)
        )
    }
}

#[derive(Clone)]
pub struct RpcClient {
    client: async_nats::Client,
    timeout: Duration,
}

impl RpcClient {
    pub fn new(client: async_nats::Client, timeout: Duration) -> Self {
        Self { client, timeout }
    }

    /// The longest a request waits for its answer.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn nats(&self) -> &async_nats::Client {
        &self.client
    }

    /// The same client with a per-request timeout of at most `timeout`. Lease traffic
    /// uses a fraction of the lease TTL: a request that went to a stalled coordinator
    /// (a queue-group member that stopped answering) is retried, likely reaching another
    /// replica, while the lease is still valid.
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        Self {
            client: self.client.clone(),
            timeout: timeout.min(self.timeout),
        }
    }

    /// Sends `req` as JSON and decodes the reply envelope.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        subject: &str,
        req: &Req,
    ) -> Result<Resp, CallError> {
        let body = serde_json::to_vec(req).expect("wire types serialize");
        self.call_raw(subject, body.into()).await
    }

    /// Sends a factory's own request on its sender's subject,
    /// `gf.rpc.w.<worker>.<verb>`.
    pub async fn call_factory<Req: FactoryRequest, Resp: DeserializeOwned>(
        &self,
        req: &Req,
    ) -> Result<Resp, CallError> {
        self.call(&req.subject(), req).await
    }

    /// Like [`RpcClient::call`] with a pre-encoded body.
    pub async fn call_raw<Resp: DeserializeOwned>(
        &self,
        subject: &str,
        body: bytes::Bytes,
    ) -> Result<Resp, CallError> {
        let span = gf_telemetry::trace::rpc_client_span(&rpc_name(subject), subject);
        let result = self.send(subject, body).instrument(span.clone()).await;
        if result.is_err() {
            span.record("otel.status_code", "ERROR");
        }
        result
    }

    async fn send<Resp: DeserializeOwned>(
        &self,
        subject: &str,
        body: bytes::Bytes,
    ) -> Result<Resp, CallError> {
        // The request carries this span's context (W3C `traceparent`) to the server.
        let mut headers = async_nats::HeaderMap::new();
        gf_telemetry::trace::inject(&mut headers);
        let request = self
            .client
            .request_with_headers(subject.to_string(), headers, body);
        let msg = match tokio::time::timeout(self.timeout, request).await {
            Err(_) => {
                return Err(CallError::Timeout {
                    subject: subject.into(),
                    timeout: self.timeout,
                })
            }
            Ok(Err(e)) => {
                return Err(match e.kind() {
                    async_nats::RequestErrorKind::NoResponders => {
                        CallError::NoResponders(subject.into())
                    }
                    async_nats::RequestErrorKind::TimedOut => CallError::Timeout {
                        subject: subject.into(),
                        timeout: self.timeout,
                    },
                    _ => CallError::Transport(e.to_string()),
                })
            }
            Ok(Ok(m)) => m,
        };
        let reply: Reply<Resp> =
            serde_json::from_slice(&msg.payload).map_err(|e| CallError::BadReply {
                subject: subject.into(),
                error: e.to_string(),
            })?;
        reply.into_result().map_err(CallError::Refused)
    }
}
