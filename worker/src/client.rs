//! Request/reply to the coordinators, with typed outcomes.
//!
//! Callers branch on [`CallError`]: a lost lease (`stale_epoch`, `revoked`) means stop
//! and report nothing; a timeout or transport failure means the request may or may not
//! have been applied, and every RPC is safe to retry.

use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
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
    /// No coordinator answered (the request may still have been applied).
    fn unanswered(&self) -> bool {
        matches!(
            self,
            CallError::Timeout { .. } | CallError::NoResponders(_) | CallError::Transport(_)
        )
    }
    /// Worth retrying: the request may not have arrived (or its answer was lost).
    pub fn retryable(&self) -> bool {
        self.unanswered()
            || matches!(
                self.kind(),
                Some(ErrorKind::Unavailable | ErrorKind::Conflict)
            )
    }
}

/// Copies of one hedged request at most: the first and up to three more.
pub const HEDGE_COPIES: u32 = 4;

/// Copies of a hedged request are never closer together than this, so a short timeout
/// does not turn into a burst.
const MIN_HEDGE_GAP: Duration = Duration::from_millis(50);

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

    /// [`RpcClient::call_factory`], hedged ([`RpcClient::call_raw_hedged`]): only for a
    /// request whose repeat is answered like the first.
    pub async fn call_factory_hedged<Req: FactoryRequest, Resp: DeserializeOwned>(
        &self,
        req: &Req,
    ) -> Result<Resp, CallError> {
        let body = serde_json::to_vec(req).expect("wire types serialize");
        self.call_raw_hedged(&req.subject(), body.into()).await
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

    /// Like [`RpcClient::call_raw`], for a request whose repeat is answered like the
    /// first (a completion, a renewal): while no answer has come, the same request goes
    /// out again every [`HEDGE_COPIES`]th of the timeout, up to that many copies, and the
    /// first answer wins. The whole call still ends within the timeout.
    ///
    /// Why: the coordinators are one queue group and NATS gives each request to one
    /// member, which may be stalled (paused, cut off from its clients, stuck in a GC of
    /// the host) while still subscribed. A plain try that lands there costs its whole
    /// timeout, and the worker's batcher sends one batch at a time, so every completion
    /// queued behind it waits too; a few unlucky tries in a row cost a lease granted at
    /// dispatch its start deadline, and the job runs again elsewhere (the chaos suite's
    /// `leader-pause`). A copy reaches a member NATS picks afresh, so with one of two
    /// coordinators stalled each copy is answered with even odds. A copy is sent only
    /// when an answer is late, so a healthy fleet sends none (`gf_worker_rpc_hedges_total`
    /// counts them).
    pub async fn call_raw_hedged<Resp: DeserializeOwned>(
        &self,
        subject: &str,
        body: bytes::Bytes,
    ) -> Result<Resp, CallError> {
        let start = tokio::time::Instant::now();
        let deadline = start + self.timeout;
        let gap = (self.timeout / HEDGE_COPIES).max(MIN_HEDGE_GAP);
        let copy = |timeout: Duration| {
            let client = Self {
                client: self.client.clone(),
                timeout,
            };
            let body = body.clone();
            async move { client.call_raw::<Resp>(subject, body).await }
        };
        let mut copies = FuturesUnordered::new();
        copies.push(copy(self.timeout));
        let mut sent = 1;
        let mut next = start + gap;
        loop {
            let more = sent < HEDGE_COPIES && next < deadline;
            tokio::select! {
                Some(result) = copies.next() => match result {
                    // Another copy may still be answered.
                    Err(e) if e.unanswered() && !copies.is_empty() => {}
                    Err(CallError::Timeout { subject, .. }) => {
                        return Err(CallError::Timeout { subject, timeout: self.timeout })
                    }
                    answered => return answered,
                },
                _ = tokio::time::sleep_until(next), if more => {
                    metrics::counter!(gf_telemetry::names::WORKER_RPC_HEDGES).increment(1);
                    copies.push(copy(deadline.saturating_duration_since(next)));
                    sent += 1;
                    next += gap;
                }
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    const SUBJECT: &str = "gf.test.hedged";

    /// A coordinator on `SUBJECT` that counts the requests it gets and answers them
    /// with their own body, except the first `ignore` (as a stalled coordinator in the
    /// queue group would: NATS gave them to it and nothing comes back).
    async fn coordinator(
        client: &async_nats::Client,
        ignore: usize,
    ) -> anyhow::Result<(tokio::task::JoinHandle<()>, Arc<AtomicUsize>)> {
        let mut sub = client
            .queue_subscribe(SUBJECT, "coordinators".into())
            .await?;
        client.flush().await?;
        let seen = Arc::new(AtomicUsize::new(0));
        let count = seen.clone();
        let client = client.clone();
        let task = tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                if count.fetch_add(1, Ordering::SeqCst) < ignore {
                    continue;
                }
                let body: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
                let answer = serde_json::to_vec(&Reply::Ok(body)).unwrap();
                client
                    .publish(msg.reply.unwrap(), answer.into())
                    .await
                    .unwrap();
            }
        });
        Ok((task, seen))
    }

    /// Waits until `seen` reaches `n` (a copy's delivery may trail the call's end).
    async fn until_seen(seen: &AtomicUsize, n: usize) {
        let until = tokio::time::Instant::now() + Duration::from_secs(10);
        while seen.load(Ordering::SeqCst) < n && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn body(i: usize) -> bytes::Bytes {
        serde_json::to_vec(&i).unwrap().into()
    }

    #[tokio::test]
    async fn a_copy_answers_when_the_first_requests_went_unanswered() -> anyhow::Result<()> {
        let nats = gf_testkit::NatsServer::start()?;
        let server = async_nats::connect(nats.url()).await?;
        let ignored = HEDGE_COPIES as usize - 1;
        let (task, seen) = coordinator(&server, ignored).await?;
        let rpc = RpcClient::new(
            async_nats::connect(nats.url()).await?,
            Duration::from_secs(2),
        );
        let got: usize = rpc.call_raw_hedged(SUBJECT, body(7)).await?;
        assert_eq!(got, 7, "the last copy's answer");
        assert_eq!(seen.load(Ordering::SeqCst), HEDGE_COPIES as usize);
        task.abort();
        Ok(())
    }

    #[tokio::test]
    async fn a_prompt_answer_sends_no_copy() -> anyhow::Result<()> {
        let nats = gf_testkit::NatsServer::start()?;
        let server = async_nats::connect(nats.url()).await?;
        let (healthy, answered) = coordinator(&server, 0).await?;
        // Copies would go out 5 s apart: far beyond an answer from a local server.
        let rpc = RpcClient::new(
            async_nats::connect(nats.url()).await?,
            Duration::from_secs(20),
        );
        for i in 0..5 {
            let got: usize = rpc.call_raw_hedged(SUBJECT, body(i)).await?;
            assert_eq!(got, i);
        }
        assert_eq!(answered.load(Ordering::SeqCst), 5, "one copy per call");
        healthy.abort();
        Ok(())
    }

    #[tokio::test]
    async fn a_hedged_call_with_nobody_answering_times_out_within_its_timeout() -> anyhow::Result<()>
    {
        let nats = gf_testkit::NatsServer::start()?;
        let server = async_nats::connect(nats.url()).await?;
        let (stalled, stuck) = coordinator(&server, usize::MAX).await?;
        let timeout = Duration::from_millis(800);
        let rpc = RpcClient::new(async_nats::connect(nats.url()).await?, timeout);
        let err = rpc
            .call_raw_hedged::<usize>(SUBJECT, body(1))
            .await
            .expect_err("nobody answers");
        assert!(
            matches!(&err, CallError::Timeout { timeout: t, .. } if *t == timeout),
            "the whole call's timeout is reported: {err:?}"
        );
        until_seen(&stuck, HEDGE_COPIES as usize).await;
        assert_eq!(
            stuck.load(Ordering::SeqCst),
            HEDGE_COPIES as usize,
            "every copy went out, and no more"
        );
        stalled.abort();
        Ok(())
    }
}
