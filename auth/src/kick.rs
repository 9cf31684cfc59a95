//! Closing a revoked factory's connection at once.
//!
//! `gf factory revoke` only marks the record; every coordinator replica watches the
//! factories bucket and, for a revoked factory whose recorded connection was not yet
//! closed, asks that connection's server to close it (`$SYS.REQ.SERVER.<id>.KICK`,
//! system account). Kicking is idempotent (a gone connection id is never reused), so
//! replicas racing each other do no harm. The factory's reconnects are then refused by
//! the callout; a missed kick is still bounded by the JWT's expiry.
//!
//! `gf factory revoke` also asks on [`names::KICK_REQUEST`] and gets the answer once
//! the connection is closed; the watch is the backstop for a request nobody answered.

use std::time::Duration;

use futures::StreamExt as _;
use gf_schemas::names::auth as names;
use gf_schemas::Timestamp;
use tokio_util::sync::CancellationToken;

use crate::store::{FactoryRecord, FactoryState, Store};

/// Answers kick requests on `client` (the coordinator's own connection) and watches for
/// revocations, kicking on `sys` (a system-account connection), until `shutdown`.
pub async fn run(
    store: Store,
    client: async_nats::Client,
    sys: async_nats::Client,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let requests = client
        .queue_subscribe(names::KICK_REQUEST, names::CALLOUT_GROUP.into())
        .await?;
    let (a, b) = tokio::join!(
        answer_requests(&store, &client, &sys, requests, &shutdown),
        watch(&store, &sys, &shutdown)
    );
    a.and(b)
}

#[derive(serde::Deserialize)]
struct KickRequest {
    factory: gf_schemas::WorkerId,
}

async fn answer_requests(
    store: &Store,
    client: &async_nats::Client,
    sys: &async_nats::Client,
    mut requests: async_nats::Subscriber,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            m = requests.next() => match m { Some(m) => m, None => return Ok(()) },
        };
        let Some(reply) = msg.reply else { continue };
        let kicked = match serde_json::from_slice::<KickRequest>(&msg.payload) {
            Ok(r) => match store.factory(&r.factory).await {
                Ok(Some(f)) => match needs_kick(&f) {
                    Some((server, cid)) => {
                        kick(store, sys, &f, &server, cid).await;
                        true
                    }
                    None => false,
                },
                _ => false,
            },
            Err(_) => false,
        };
        let body = serde_json::json!({ "kicked": kicked }).to_string();
        let _ = client.publish(reply, body.into()).await;
    }
}

async fn watch(
    store: &Store,
    sys: &async_nats::Client,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    loop {
        let mut watch = match store
            .factories
            .watch_with_history(format!("{}>", names::FACTORY_PREFIX))
            .await
        {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the factories; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        loop {
            let entry = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                e = watch.next() => e,
            };
            let Some(Ok(entry)) = entry else { break };
            let Ok(f) = serde_json::from_slice::<FactoryRecord>(&entry.value) else {
                continue;
            };
            if let Some(server) = needs_kick(&f) {
                kick(store, sys, &f, &server.0, server.1).await;
            }
        }
    }
}

/// The (server id, connection id) to close, when `f` is revoked and its last
/// connection was not closed since.
pub fn needs_kick(f: &FactoryRecord) -> Option<(String, u64)> {
    if f.state != FactoryState::Revoked {
        return None;
    }
    let c = f.connection.as_ref()?;
    if f.kicked_at.is_some_and(|k| k >= c.at) {
        return None;
    }
    Some((c.server_id.clone(), c.cid))
}

async fn kick(store: &Store, sys: &async_nats::Client, f: &FactoryRecord, server: &str, cid: u64) {
    let body = serde_json::json!({ "cid": cid }).to_string();
    match tokio::time::timeout(
        Duration::from_secs(3),
        sys.request(names::server_kick(server), body.into()),
    )
    .await
    {
        Ok(Ok(reply)) => {
            let gone = serde_json::from_slice::<serde_json::Value>(&reply.payload)
                .map(|v| v.get("error").is_some())
                .unwrap_or(false);
            if gone {
                tracing::debug!(factory = %f.id, server, cid, "revoked factory's connection already closed");
            } else {
                tracing::info!(factory = %f.id, server, cid, "revoked factory's connection closed");
            }
        }
        Ok(Err(e)) => tracing::warn!(factory = %f.id, error = %e, "kick not answered"),
        Err(_) => tracing::warn!(factory = %f.id, "kick not answered within 3s"),
    }
    if let Err(e) = store.note_kicked(&f.id, Timestamp::now_local()).await {
        tracing::warn!(factory = %f.id, error = %e, "cannot record the kick");
    }
}

/// What [`revoke`] did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Revoked {
    pub factory: gf_schemas::WorkerId,
    /// Its last connection's credentials were still valid: it may have been on.
    pub was_connected: bool,
    /// A coordinator closed that connection (`false` when none did within 5 s; its
    /// access then ends with its credentials, within the JWT's lifetime).
    pub kicked: bool,
}

/// Revokes factory `id` and has a coordinator close its connection: the record is
/// marked revoked (every later connection refused), the coordinators are asked on
/// [`names::KICK_REQUEST`] (`client` must be allowed to publish there), and the record
/// is polled until one says it closed the connection. `gf factory revoke` and the
/// HTTP API both come here.
pub async fn revoke(
    store: &Store,
    client: &async_nats::Client,
    id: &gf_schemas::WorkerId,
) -> Result<Revoked, crate::store::StoreError> {
    let now = Timestamp::now_local();
    let f = store.revoke_factory(id, now).await?;
    let was_connected = f.connection.as_ref().is_some_and(|c| now < c.expires_at);
    let mut done = Revoked {
        factory: id.clone(),
        was_connected,
        kicked: false,
    };
    if !was_connected {
        return Ok(done);
    }
    // Asked now, or (if no one answers) the coordinators' watch of the bucket.
    let ask = serde_json::json!({ "factory": id }).to_string();
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        client.request(names::KICK_REQUEST, ask.into()),
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if store.factory(id).await?.and_then(|f| f.kicked_at).is_some() {
            done.kicked = true;
            return Ok(done);
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(done);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
