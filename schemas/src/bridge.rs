//! The tracker bridge: what a webhook delivery is answered with, the state changes
//! echoed back to a tracker item, and the outbound deliveries an operator inspects.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{JobId, JobState, Timestamp};

/// What an inbound webhook delivery did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WebhookOutcome {
    /// A rule matched and a new job was created.
    Created,
    /// A rule matched, but the item already has its job (a re-sent event, or the same
    /// revision of the item): nothing new.
    Existing,
    /// This delivery id was handled before: nothing new.
    DuplicateDelivery,
    /// Verified, but no rule matches the event: nothing to do.
    Ignored,
}

/// Reply to `POST /api/bridge/{source}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WebhookReply {
    pub outcome: WebhookOutcome,
    /// The item's job (created or existing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<JobId>,
    /// The item's key, e.g. `acme/api#42`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<String>,
    /// For `ignored`: why no rule matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One state change of a bridged job, echoed to its item: the body of the Standard
/// Webhooks POST (`type` = `job.state_changed`) and of the outbound stream's messages.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Echo {
    /// Stable per state change: `<job id>.<record revision>`. Redeliveries and
    /// duplicates carry the same id (also as `webhook-id`).
    pub id: String,
    pub source: String,
    /// The item's key, e.g. `acme/api#42`.
    pub item: String,
    pub job_id: JobId,
    pub state: JobState,
    /// The state echoed before this one, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<JobState>,
    /// Why the job is blocked, dead or cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub epoch: u64,
    pub attempts: u32,
    /// The job record's revision in `gf_jobs`: orders the changes of one job.
    pub revision: u64,
    /// When the change was seen.
    pub time: Timestamp,
    /// Fields of the item kept from the webhook that created the job (repository,
    /// number, url…), for the echo's templates.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub fields: std::collections::BTreeMap<String, String>,
}

/// Where an outbound delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Not delivered yet; being retried with backoff.
    Pending,
    Delivered,
    /// Given up after the last attempt (or refused for good by the tracker); an
    /// operator can redeliver it.
    Failed,
}

/// One outbound delivery with its attempts (value of `gf_bridge.delivery.<id>`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Delivery {
    pub echo: Echo,
    pub status: DeliveryStatus,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub updated_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<Timestamp>,
}

/// `gf.rpc.bridge.deliveries`, `GET /api/bridge/deliveries`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeliveryQuery {
    /// Only deliveries in this status.
    #[serde(default)]
    pub status: Option<DeliveryStatus>,
    /// Only this job's deliveries.
    #[serde(default)]
    pub job_id: Option<JobId>,
    /// At most this many, newest first (default 100, at most 1000).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// `gf.rpc.bridge.redeliver`, `POST /api/bridge/deliveries/{id}/redeliver`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedeliverRequest {
    pub id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The echo's JSON shape is pinned: trackers read these names.
    #[test]
    fn echo_shape() {
        let id: JobId = "019a0000-0000-7000-8000-000000000001".parse().unwrap();
        let e = Echo {
            id: format!("{id}.7"),
            source: "github".into(),
            item: "acme/api#42".into(),
            job_id: id,
            state: JobState::Running,
            previous: Some(JobState::Dispatched),
            reason: None,
            epoch: 1,
            attempts: 1,
            revision: 7,
            time: Timestamp::from_unix_millis(0),
            fields: Default::default(),
        };
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            serde_json::json!({"id": format!("{id}.7"), "source": "github", "item": "acme/api#42",
                "job_id": id.to_string(), "state": "running", "previous": "dispatched",
                "epoch": 1, "attempts": 1, "revision": 7, "time": "1970-01-01T00:00:00Z"})
        );
        assert_eq!(
            serde_json::to_value(WebhookOutcome::DuplicateDelivery).unwrap(),
            "duplicate_delivery"
        );
    }
}
