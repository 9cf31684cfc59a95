//! Wiring of the tracker bridge ([`gf_bridge`]) into the coordinator: it submits
//! through [`Service::submit_spec`], and the RPC plane and HTTP API reach it through
//! [`Service::bridge`].

use std::sync::{Arc, Weak};

use gf_schemas::bridge::{Delivery, DeliveryQuery, RedeliverRequest};
use gf_schemas::{ErrorKind, RpcError};
use tokio_util::sync::CancellationToken;

use crate::service::Service;

/// Starts the bridge for `service` and hands it to the service.
pub async fn start(
    service: &Arc<Service>,
    shutdown: CancellationToken,
) -> anyhow::Result<gf_bridge::BridgeTask> {
    // Weak: the service holds the bridge, and the bridge's submissions reach the
    // service; a strong handle both ways would keep both alive forever.
    let weak: Weak<Service> = Arc::downgrade(service);
    let submit: gf_bridge::SubmitFn = Arc::new(move |spec| {
        let weak = weak.clone();
        Box::pin(async move {
            match weak.upgrade() {
                Some(s) => s.submit_spec(spec).await,
                None => Err(RpcError::new(
                    ErrorKind::Unavailable,
                    "the coordinator is shutting down",
                )),
            }
        })
    });
    let (bridge, task) = gf_bridge::start(
        service.config.bridge.clone(),
        service.client.clone(),
        submit,
        service.config.id.clone(),
        shutdown,
    )
    .await?;
    let _ = service.bridge.set(bridge);
    Ok(task)
}

impl Service {
    fn the_bridge(&self) -> Result<&Arc<gf_bridge::Bridge>, RpcError> {
        self.bridge
            .get()
            .ok_or_else(|| RpcError::new(ErrorKind::Unavailable, "the bridge is not started"))
    }

    pub async fn bridge_deliveries(&self, q: DeliveryQuery) -> Result<Vec<Delivery>, RpcError> {
        Ok(self.the_bridge()?.deliveries(q).await?)
    }

    pub async fn bridge_redeliver(&self, r: RedeliverRequest) -> Result<Delivery, RpcError> {
        Ok(self.the_bridge()?.redeliver(&r.id).await?)
    }
}
