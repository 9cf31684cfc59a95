//! Coalescing the worker's claims and completions into batch RPCs
//! (`gf.rpc.w.<worker>.claim_batch`, `…complete_batch`).
//!
//! There is no timer and no background task: a caller queues its request, then either
//! finds a send permit free and sends everything queued (its own request and any that
//! came in meanwhile, up to `MAX_BATCH`), or waits for a sender to answer it. With
//! nothing in flight a lone request goes out at once, so an idle worker pays no latency;
//! under load, requests that arrive while a batch is in flight ride the next one.
//!
//! Each item keeps the single RPC's meaning: the coordinator applies it exactly as if it
//! came alone and answers it with its own envelope, so callers branch on the same
//! [`CallError`]s as before. A batch that times out or cannot be sent fails every item
//! with that error (all are safe to retry). A coordinator that does not know the batch
//! subject (an older one, during a rolling upgrade) is detected once and from then on
//! every item is sent on the single subject.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use gf_schemas::names::{self, FactoryVerb};
use gf_schemas::rpc::MAX_BATCH;
use gf_schemas::{ErrorKind, Reply, WorkerId};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{oneshot, Semaphore};

use crate::client::{CallError, RpcClient};

/// Batches in flight at once per batcher. With one, everything that comes while a batch
/// is answered fills the next; with two the load suite's batches were smaller (server
/// messages per job 15.2 in / 20.6 out against 14.2 / 19.7) at the same throughput.
const SENDERS: usize = 1;

type Answer<Resp> = oneshot::Sender<Result<Resp, CallError>>;

struct Queued<Resp> {
    body: bytes::Bytes,
    timeout: Duration,
    answer: Answer<Resp>,
}

pub struct Batcher<Resp> {
    rpc: RpcClient,
    single: String,
    batch: String,
    queue: Mutex<Vec<Queued<Resp>>>,
    senders: Semaphore,
    /// Set when a coordinator refused the batch subject as unknown.
    unsupported: AtomicBool,
    /// Requests go out as [`RpcClient::call_raw_hedged`] (only for verbs whose repeat
    /// is answered like the first).
    hedged: bool,
}

impl<Resp: DeserializeOwned + Send + 'static> Batcher<Resp> {
    /// Sends `verb` requests of `factory` (a single verb with a batch form: claim,
    /// complete), batched on the verb's batch subject.
    pub fn new(rpc: RpcClient, factory: &WorkerId, verb: FactoryVerb) -> Self {
        let batch = FactoryVerb::ALL
            .into_iter()
            .find(|b| b.batched() == Some(verb))
            .expect("a verb with a batch form");
        Self::on_subjects(
            rpc,
            names::factory_rpc(factory, verb),
            names::factory_rpc(factory, batch),
        )
    }

    fn on_subjects(rpc: RpcClient, single: String, batch: String) -> Self {
        Self {
            rpc,
            single,
            batch,
            queue: Mutex::new(Vec::new()),
            senders: Semaphore::new(SENDERS),
            unsupported: AtomicBool::new(false),
            hedged: false,
        }
    }

    /// Sends every request and batch hedged ([`RpcClient::call_raw_hedged`]): for a
    /// verb whose repeat the coordinator answers like the first (completions). With one
    /// batch in flight at a time, a batch stuck on a stalled coordinator would otherwise
    /// hold up every request queued behind it for a whole timeout.
    pub fn hedged(mut self) -> Self {
        self.hedged = true;
        self
    }

    async fn call_raw<T: DeserializeOwned>(
        &self,
        subject: &str,
        body: bytes::Bytes,
        timeout: Duration,
    ) -> Result<T, CallError> {
        let rpc = self.rpc.with_timeout(timeout);
        if self.hedged {
            rpc.call_raw_hedged(subject, body).await
        } else {
            rpc.call_raw(subject, body).await
        }
    }

    /// Sends `req` (in a batch when others are waiting too) and returns its own answer.
    /// `timeout` bounds this request; a batch waits as long as the shortest of its items.
    pub async fn call<Req: Serialize>(
        &self,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        let body: bytes::Bytes = serde_json::to_vec(req)
            .expect("wire types serialize")
            .into();
        if self.unsupported.load(Ordering::Relaxed) {
            return self.call_raw(&self.single, body, timeout).await;
        }
        let (answer, mut answered) = oneshot::channel();
        self.queue.lock().expect("batch queue").push(Queued {
            body,
            timeout,
            answer,
        });
        loop {
            tokio::select! {
                biased;
                r = &mut answered => {
                    // A sender that was dropped mid-batch (its caller cancelled) leaves
                    // the outcome unknown, like a lost reply.
                    return r.unwrap_or_else(|_| Err(CallError::Transport("batch abandoned".into())));
                }
                permit = self.senders.acquire() => {
                    let permit = permit.expect("never closed");
                    let items = self.take();
                    if items.is_empty() {
                        // Another sender took this request: only its answer is left.
                        drop(permit);
                        return answered.await.unwrap_or_else(|_| Err(CallError::Transport("batch abandoned".into())));
                    }
                    self.send(items).await;
                }
            }
        }
    }

    fn take(&self) -> Vec<Queued<Resp>> {
        let mut queue = self.queue.lock().expect("batch queue");
        let n = queue.len().min(MAX_BATCH);
        queue.drain(..n).collect()
    }

    async fn send(&self, items: Vec<Queued<Resp>>) {
        if items.len() == 1 || self.unsupported.load(Ordering::Relaxed) {
            // One request alone goes on the single subject: same bytes, no batch framing.
            let calls = items.into_iter().map(|q| async move {
                let r = self.call_raw(&self.single, q.body, q.timeout).await;
                let _ = q.answer.send(r);
            });
            futures::future::join_all(calls).await;
            return;
        }
        let timeout = items.iter().map(|q| q.timeout).min().expect("not empty");
        let mut body =
            Vec::with_capacity(2 + items.iter().map(|q| q.body.len() + 1).sum::<usize>());
        gf_schemas::rpc::append_json_array(&mut body, items.iter().map(|q| q.body.as_ref()));
        let reply = self
            .call_raw::<Vec<Reply<Resp>>>(&self.batch, body.into(), timeout)
            .await;
        match reply {
            Ok(replies) if replies.len() == items.len() => {
                for (q, r) in items.into_iter().zip(replies) {
                    let _ = q.answer.send(r.into_result().map_err(CallError::Refused));
                }
            }
            Ok(replies) => {
                let e = CallError::BadReply {
                    subject: self.batch.clone(),
                    error: format!("{} answers for {} requests", replies.len(), items.len()),
                };
                for q in items {
                    let _ = q.answer.send(Err(e.clone()));
                }
            }
            Err(CallError::Refused(e)) if e.kind == ErrorKind::Invalid => {
                // Only a coordinator without batch subjects refuses a well-formed batch
                // as a whole: fall back to single requests for good.
                tracing::info!(subject = %self.batch, error = %e.message, "batches refused; sending requests one by one");
                self.unsupported.store(true, Ordering::Relaxed);
                Box::pin(self.send(items)).await;
            }
            Err(e) => {
                for q in items {
                    let _ = q.answer.send(Err(e.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use gf_schemas::names::{parse_factory_rpc, rpc};
    use gf_schemas::RpcError;
    use std::sync::Arc;

    fn factory() -> WorkerId {
        WorkerId::new("batcher").unwrap()
    }

    fn claim_batch() -> String {
        names::factory_rpc(&factory(), FactoryVerb::ClaimBatch)
    }

    /// A stand-in coordinator on a real NATS server: answers each claim with its own
    /// job id as text (so answers can be matched to requests), batch or single, and
    /// records the subjects and item counts it saw. With `knows_batches` false it
    /// refuses batch subjects the way a coordinator without them does.
    async fn fake_coordinator(
        client: async_nats::Client,
        knows_batches: bool,
    ) -> anyhow::Result<(
        tokio::task::JoinHandle<()>,
        Arc<Mutex<Vec<(String, usize)>>>,
    )> {
        let mut sub = client.subscribe(rpc::ALL).await?;
        client.flush().await?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let task = tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                let answer = |v: &serde_json::Value| Reply::<String>::Ok(v["job_id"].to_string());
                let verb = parse_factory_rpc(&msg.subject).map(|f| f.verb);
                let body = match verb {
                    Ok(FactoryVerb::ClaimBatch) if knows_batches => {
                        let items: Vec<serde_json::Value> =
                            serde_json::from_slice(&msg.payload).unwrap();
                        log.lock()
                            .unwrap()
                            .push((msg.subject.to_string(), items.len()));
                        serde_json::to_vec(&Reply::Ok(items.iter().map(answer).collect::<Vec<_>>()))
                    }
                    Ok(FactoryVerb::Claim) => {
                        log.lock().unwrap().push((msg.subject.to_string(), 1));
                        let item: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
                        serde_json::to_vec(&answer(&item))
                    }
                    _ => {
                        let other = msg.subject.to_string();
                        log.lock().unwrap().push((other.clone(), 0));
                        serde_json::to_vec(&Reply::<()>::Error(RpcError::new(
                            ErrorKind::Invalid,
                            format!("unknown RPC subject `{other}`"),
                        )))
                    }
                };
                client
                    .publish(msg.reply.unwrap(), body.unwrap().into())
                    .await
                    .unwrap();
            }
        });
        Ok((task, seen))
    }

    /// Twenty claims at once, as a worker's batch of notices makes them.
    async fn twenty_claims(batcher: &Batcher<String>) -> Vec<(String, Result<String, CallError>)> {
        let calls = (0..20).map(|i| async move {
            let id = format!("job-{i}");
            let r = batcher
                .call(
                    &serde_json::json!({ "job_id": id }),
                    Duration::from_secs(10),
                )
                .await;
            (format!("\"{id}\""), r)
        });
        futures::future::join_all(calls).await
    }

    /// Twenty claims at once against a fake coordinator: each gets its own answer.
    /// Returns the batcher and what the coordinator saw.
    async fn twenty_claims_answered(
        knows_batches: bool,
    ) -> anyhow::Result<(Batcher<String>, Vec<(String, usize)>)> {
        let nats = gf_testkit::NatsServer::start()?;
        let client = async_nats::connect(nats.url()).await?;
        let (task, seen) = fake_coordinator(client.clone(), knows_batches).await?;
        let batcher = Batcher::new(
            RpcClient::new(client, Duration::from_secs(10)),
            &factory(),
            FactoryVerb::Claim,
        );
        for (want, got) in twenty_claims(&batcher).await {
            assert_eq!(got.expect("answered"), want);
        }
        task.abort();
        let seen = seen.lock().unwrap().clone();
        Ok((batcher, seen))
    }

    #[tokio::test]
    async fn concurrent_calls_share_batches_and_each_gets_its_answer() -> anyhow::Result<()> {
        let (_, seen) = twenty_claims_answered(true).await?;
        // The first goes out alone (the sender is free); the other 19 queue behind it
        // and leave together.
        assert_eq!(seen.iter().map(|s| s.1).sum::<usize>(), 20, "{seen:?}");
        assert!(
            seen.iter().any(|(s, n)| *s == claim_batch() && *n > 1),
            "{seen:?}"
        );
        assert!(seen.len() < 20, "{seen:?}");
        Ok(())
    }

    #[tokio::test]
    async fn falls_back_to_single_requests_when_batches_are_refused() -> anyhow::Result<()> {
        let (batcher, seen) = twenty_claims_answered(false).await?;
        assert!(batcher.unsupported.load(Ordering::Relaxed));
        let refused = seen.iter().filter(|(s, _)| *s == claim_batch()).count();
        assert_eq!(refused, 1, "one refusal is enough: {seen:?}");
        assert_eq!(
            seen.iter()
                .filter(|(s, _)| *s == names::factory_rpc(&factory(), FactoryVerb::Claim))
                .count(),
            20,
            "{seen:?}"
        );
        Ok(())
    }
}
