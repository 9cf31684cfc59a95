//! A secured deployment (issue #15): the coordinators connect as their static nkey
//! user, every replica answers the NATS auth callout (queue group), and a factory's
//! registration gets no more than its enrollment approved.
//!
//! The formats, the store and the callout itself live in `gf-auth`; this module wires
//! them into the coordinator: [`start`] opens the store and runs the responder on a
//! connection of its own (as the callout user), and [`Factories`] is what the RPC plane
//! asks at registration.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use gf_auth::{CalloutConfig, Outcome, Secrets, Store};
use gf_schemas::{Capabilities, ConsumerName, ErrorKind, EventKind, Level, RpcError, WorkerId};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::events::EventSink;

/// How a secured coordinator connects and what it issues.
#[derive(Clone, Debug)]
pub struct Security {
    pub secrets: Secrets,
    /// Lifetime of a factory's user JWT (±10 %); the factory reconnects and is
    /// authorised again when it ends.
    pub jwt_ttl: Duration,
    /// After a factory rotates its key, the old one still works this long.
    pub key_grace: Duration,
}

impl Security {
    pub fn new(secrets: Secrets) -> Self {
        Self {
            secrets,
            jwt_ttl: Duration::from_secs(3600),
            key_grace: Duration::from_secs(600),
        }
    }
}

/// The coordinator's main connection options: the static nkey user of a secured
/// deployment, or the URL's own credentials (if any).
pub fn connect_options(url: &str, security: Option<&Security>) -> async_nats::ConnectOptions {
    match security {
        Some(s) => async_nats::ConnectOptions::new().nkey(s.secrets.coordinator_seed.clone()),
        None => gf_auth::url::connect_options(url).0,
    }
}

/// What registration asks of enrollment.
#[derive(Clone)]
pub struct Factories {
    store: Store,
}

impl Factories {
    /// The capabilities factory `id` may register with, given those it asked for:
    /// narrowed to its enrollment's approval. A worker that is no enrolled factory (a
    /// static user: the coordinators' own, `gf dev`'s) keeps what it asked for.
    pub async fn approve(
        &self,
        id: &WorkerId,
        asked: &Capabilities,
    ) -> Result<Capabilities, RpcError> {
        match self.store.factory(id).await.map_err(unavailable)? {
            None => Ok(asked.clone()),
            Some(f) if f.state == gf_auth::store::FactoryState::Revoked => Err(RpcError::new(
                ErrorKind::Forbidden,
                format!("factory `{id}` was revoked"),
            )),
            Some(f) => Ok(f.approve(asked)),
        }
    }

    /// Lets factory `id` bind `consumer` from its next connection on.
    pub async fn grant(&self, id: &WorkerId, consumer: &ConsumerName) -> Result<(), RpcError> {
        self.store
            .grant_consumer(id, consumer)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }
}

fn unavailable(e: gf_auth::store::StoreError) -> RpcError {
    RpcError::new(ErrorKind::Unavailable, format!("factory store: {e}"))
}

/// The running callout responder and revocation watcher.
pub struct CalloutTask {
    callout: JoinHandle<anyhow::Result<()>>,
    kicker: JoinHandle<anyhow::Result<()>>,
}

impl CalloutTask {
    pub async fn join(self) -> anyhow::Result<()> {
        let kicked = self.kicker.await.context("revocation watcher panicked");
        self.callout.await.context("callout task panicked")??;
        kicked?
    }
}

/// Opens the enrollment store and starts answering the callout on a connection of
/// its own (the callout user, which the server never sends to the callout).
pub async fn start(
    security: &Security,
    url: &str,
    replicas: usize,
    js: &async_nats::jetstream::Context,
    client: async_nats::Client,
    events: EventSink,
    shutdown: CancellationToken,
) -> anyhow::Result<(Factories, CalloutTask)> {
    let store = Store::open(js, replicas)
        .await
        .context("cannot open the enrollment buckets")?;
    let callout_client = async_nats::ConnectOptions::new()
        .user_and_password(
            gf_auth::secrets::AUTH_USER.into(),
            security.secrets.auth_password.clone(),
        )
        .name("gf-coordinator auth callout")
        .retry_on_initial_connect()
        .connect(url)
        .await
        .context("cannot connect as the auth callout user")?;
    // The system account: closing a revoked factory's connection (KICK).
    let sys_client = async_nats::ConnectOptions::new()
        .user_and_password(
            gf_auth::secrets::SYS_USER.into(),
            security.secrets.sys_password.clone(),
        )
        .name("gf-coordinator revocations")
        .retry_on_initial_connect()
        .connect(url)
        .await
        .context("cannot connect as the system user")?;
    let mut cfg = CalloutConfig::new(security.secrets.issuer()?);
    cfg.jwt_ttl = security.jwt_ttl;
    cfg.key_grace = security.key_grace;
    let on_outcome: gf_auth::callout::OnOutcome = Arc::new(move |o: &Outcome| match o {
        Outcome::Enrolled { factory, token } => events.emit(
            EventKind::WorkerRegistered,
            Level::Info,
            None,
            Some(factory),
            format!("factory enrolled with token {token}"),
        ),
        Outcome::Refused {
            factory,
            reason,
            host,
        } => events.emit(
            if reason.is_enrollment() {
                EventKind::EnrollmentRefused
            } else {
                EventKind::ConnectionRefused
            },
            Level::Error,
            None,
            factory.as_ref(),
            format!(
                "{}: NATS connection from {host} refused: {reason}",
                reason.code()
            ),
        ),
        Outcome::Rotated(factory) => events.emit(
            EventKind::WorkerRegistered,
            Level::Info,
            None,
            Some(factory),
            "factory rotated its key".to_string(),
        ),
        Outcome::Connected(_) => {}
    });
    let kicker = tokio::spawn(gf_auth::kick::run(
        store.clone(),
        client,
        sys_client,
        shutdown.clone(),
    ));
    let callout = tokio::spawn(gf_auth::serve(
        callout_client,
        store.clone(),
        cfg,
        on_outcome,
        shutdown,
    ));
    Ok((Factories { store }, CalloutTask { callout, kicker }))
}
