//! Dispatch consumers belong to the coordinators.
//!
//! A worker only binds the durable pull consumer a coordinator created for it and
//! named in its `RegisterReply` (`CONSUMER.INFO`, then `MSG.NEXT` and acks): whoever
//! creates a consumer picks its filter, so a factory allowed `CONSUMER.CREATE` could
//! read every notice of the stream, whatever its subscribe permissions say.
//!
//! Sharing is by profile: workers with the same queues, capabilities, tags and routing
//! get the same consumer name and so compete for its notices; differing profiles each
//! get their own copy of every notice that matches them. [`ensure`] creates or updates
//! the consumer at every registration, which also brings back one the server removed
//! (after `inactive_threshold`, or by an operator): a worker that finds its consumer
//! gone registers again.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use gf_schemas::names::{self, Routing};
use gf_schemas::{Capabilities, ConsumerName, ErrorKind, RpcError};
use sha2::{Digest, Sha256};

/// A consumer nobody pulled from for this long is removed by the server.
pub const INACTIVE_THRESHOLD: Duration = Duration::from_secs(3600);

/// The consumer name of a worker profile: `gfw_` and 16 hex digits of the profile's
/// hash. Deterministic, so every coordinator replica names the same profile alike (and
/// workers of a release that named their own consumers keep theirs).
pub fn name_for(routing: &Routing, caps: &Capabilities) -> ConsumerName {
    let profile = serde_json::to_string(&(routing.dims(), caps)).expect("serializes");
    let digest = hex::encode(Sha256::digest(profile.as_bytes()));
    ConsumerName::new(format!("gfw_{}", &digest[..16])).expect("a token")
}

/// The consumer's configuration: filtered on the dispatch subjects the profile can
/// serve (its own value or `_` per routing dimension).
pub fn config_for(routing: &Routing, caps: &Capabilities) -> consumer::pull::Config {
    let name = name_for(routing, caps);
    let filters = routing.worker_filters(&caps.queues, &caps.values);
    consumer::pull::Config {
        durable_name: Some(name.to_string()),
        description: Some(format!("gigafactory workers: {}", filters.join(" "))),
        filter_subjects: filters,
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(30),
        max_deliver: 10,
        deliver_policy: consumer::DeliverPolicy::New,
        inactive_threshold: INACTIVE_THRESHOLD,
        ..Default::default()
    }
}

/// Creates the profile's consumer, or updates it to the current configuration; one
/// JetStream request (`CONSUMER.CREATE` with create-or-update), idempotent.
pub async fn ensure(
    js: &jetstream::Context,
    routing: &Routing,
    caps: &Capabilities,
) -> Result<ConsumerName, RpcError> {
    let name = name_for(routing, caps);
    js.create_consumer_on_stream(config_for(routing, caps), names::STREAM_DISPATCH)
        .await
        .map_err(|e| {
            RpcError::new(
                ErrorKind::Unavailable,
                format!("cannot create dispatch consumer {name}: {e}"),
            )
        })?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(queue: &str, os: &str) -> Capabilities {
        Capabilities {
            values: [("os".to_string(), os.to_string())].into(),
            tags: Default::default(),
            queues: vec![queue.into()],
        }
    }

    /// Identical profiles share a name; any difference (capability, queue, routing)
    /// gives another.
    #[test]
    fn names_follow_the_profile() {
        let r = Routing::default();
        let a = name_for(&r, &caps("default", "linux"));
        assert_eq!(a, name_for(&r, &caps("default", "linux")));
        assert!(a.as_str().starts_with("gfw_") && a.as_str().len() == 20);
        assert_ne!(a, name_for(&r, &caps("default", "macos")));
        assert_ne!(a, name_for(&r, &caps("gpu", "linux")));
        let r2 = Routing::new(vec!["queue".into(), "os".into()]).unwrap();
        assert_ne!(a, name_for(&r2, &caps("default", "linux")));
        let cfg = config_for(&r, &caps("default", "linux"));
        assert_eq!(cfg.durable_name.as_deref(), Some(a.as_str()));
        assert!(cfg
            .filter_subjects
            .contains(&"gf.dispatch.default.linux._".to_string()));
    }

    /// A registration creates the consumer; a second one of the same profile finds it
    /// and changes nothing; one removed meanwhile is created again.
    #[tokio::test]
    async fn ensure_creates_and_recreates() -> anyhow::Result<()> {
        let nats = gf_testkit::NatsServer::start()?;
        let client = async_nats::connect(nats.url()).await?;
        let js = jetstream::new(client);
        crate::store::Store::open(js.clone(), 1).await?;
        let r = Routing::default();
        let c = caps("default", "linux");
        let name = ensure(&js, &r, &c).await?;
        let stream = js.get_stream(names::STREAM_DISPATCH).await?;
        let info = stream.consumer_info(name.as_str()).await?;
        assert_eq!(info.config.filter_subjects.len(), 2, "os and `_`, arch `_`");
        assert_eq!(ensure(&js, &r, &c).await?, name);
        assert!(stream.delete_consumer(name.as_str()).await?.success);
        assert_eq!(ensure(&js, &r, &c).await?, name);
        stream.consumer_info(name.as_str()).await?;
        Ok(())
    }
}
