//! Inbound: a webhook delivery becomes (at most) one job.
//!
//! In order: the source must exist; the signature must verify (and, for Standard
//! Webhooks, the timestamp be within the tolerance); a delivery id handled before is
//! answered with its first outcome and changes nothing; the body must be JSON; the
//! first rule whose events and label match decides the job. The job's idempotency key
//! is derived from the source, the item and (when the rule names one) the item's
//! revision, so a re-sent event finds the item's job instead of making a second one.
//! The delivery id is recorded only after the job exists: a delivery that failed
//! midway is completed by the sender's retry, not refused as a replay.

use gf_schemas::bridge::{WebhookOutcome, WebhookReply};
use gf_schemas::{names, JobSpec};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::{Format, Rule, Source};
use crate::template::lookup_str;
use crate::{Bridge, BridgeError};

/// Label keys every bridged job carries; the echo finds its jobs by them.
pub const LABEL_SOURCE: &str = "bridge.source";
pub const LABEL_ITEM: &str = "bridge.item";
pub const LABEL_EVENT: &str = "bridge.event";

fn header<'a>(h: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn sha_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// Verifies a delivery and returns its id. Pure and total over any headers and body
/// (fuzzed: `fuzz/`).
pub fn verify(src: &Source, headers: &http::HeaderMap, body: &[u8]) -> Result<String, BridgeError> {
    match src.format {
        Format::Github => {
            crate::verify::verify_github(&src.secret, header(headers, "x-hub-signature-256"), body)
                .map_err(BridgeError::Signature)?;
            header(headers, "x-github-delivery")
                .filter(|s| !s.is_empty())
                .map(String::from)
                .ok_or_else(|| BridgeError::Invalid("missing header `X-GitHub-Delivery`".into()))
        }
        Format::Standard => {
            crate::verify::verify_standard(
                &src.secret,
                header(headers, "webhook-id"),
                header(headers, "webhook-timestamp"),
                header(headers, "webhook-signature"),
                body,
                now_secs(),
                src.tolerance.as_secs(),
            )
            .map_err(BridgeError::Signature)?;
            Ok(header(headers, "webhook-id")
                .unwrap_or_default()
                .to_string())
        }
    }
}

/// The event's name: GitHub `<X-GitHub-Event>.<action>`, Standard the payload's `type`.
fn event_name(
    src: &Source,
    headers: &http::HeaderMap,
    payload: &Value,
) -> Result<String, BridgeError> {
    match src.format {
        Format::Github => {
            let ev = header(headers, "x-github-event")
                .filter(|s| !s.is_empty())
                .ok_or_else(|| BridgeError::Invalid("missing header `X-GitHub-Event`".into()))?;
            Ok(match payload.get("action").and_then(Value::as_str) {
                Some(a) => format!("{ev}.{a}"),
                None => ev.to_string(),
            })
        }
        Format::Standard => payload
            .get("type")
            .and_then(Value::as_str)
            .map(String::from)
            .ok_or_else(|| BridgeError::Invalid("the payload has no `type`".into())),
    }
}

/// The item's labels: an array of strings or of `{name}` objects at `labels_at`.
fn item_labels(src: &Source, payload: &Value) -> Vec<String> {
    src.labels_at
        .iter()
        .find_map(|p| lookup_str(payload, p).and_then(Value::as_array))
        .map(|a| {
            a.iter()
                .filter_map(|l| match l {
                    Value::String(s) => Some(s.clone()),
                    Value::Object(o) => o.get("name").and_then(Value::as_str).map(String::from),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

fn matches(rule: &Rule, event: &str, labels: &[String]) -> bool {
    (rule.events.is_empty() || rule.events.iter().any(|e| e == event))
        && rule.label.as_ref().is_none_or(|l| labels.contains(l))
}

/// The job a matching rule makes of an item.
fn job_spec(
    src: &Source,
    rule: &Rule,
    event: &str,
    payload: &Value,
) -> Result<(JobSpec, String), BridgeError> {
    let render = |what: &str, t: &crate::template::Template| {
        t.render(payload)
            .map_err(|e| BridgeError::Invalid(format!("{what} `{t}`: {e}")))
    };
    let item = render("item", &src.item)?;
    let args = rule
        .command
        .iter()
        .map(|t| render("command", t))
        .collect::<Result<Vec<_>, _>>()?;
    let mut spec = JobSpec::command(args);
    spec.profile = rule.profile.clone();
    for (k, t) in &rule.labels {
        spec.labels.insert(k.clone(), render("label", t)?);
    }
    spec.labels.insert(LABEL_SOURCE.into(), src.name.clone());
    spec.labels.insert(LABEL_ITEM.into(), item.clone());
    spec.labels.insert(LABEL_EVENT.into(), event.into());
    let mut key = format!("bridge:{}:{item}", src.name);
    if let Some(rev) = &rule.revision {
        key.push('@');
        key.push_str(&render("revision", rev)?);
    }
    // Keys are at most 256 characters; a long item or revision is hashed.
    if key.len() > 256 {
        key = format!("bridge:{}:{}", src.name, sha_hex(&key));
    }
    spec.idempotency_key = Some(key);
    Ok((spec, item))
}

/// What a verified delivery asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// No rule matches; why.
    Ignore(String),
    /// Submit this job for this item.
    Submit { spec: Box<JobSpec>, item: String },
}

/// Decides what a delivery (already verified) asks for, from its headers and body
/// alone: the body must be JSON, and the first rule whose events and label match
/// makes the job. Pure and total over any headers and body (fuzzed: `fuzz/`).
pub fn decide(
    src: &Source,
    headers: &http::HeaderMap,
    body: &[u8],
) -> Result<Decision, BridgeError> {
    let payload: Value = serde_json::from_slice(body)
        .map_err(|e| BridgeError::Invalid(format!("malformed body (not JSON): {e}")))?;
    let event = event_name(src, headers, &payload)?;
    let labels = item_labels(src, &payload);
    match src.rules.iter().find(|r| matches(r, &event, &labels)) {
        None => Ok(Decision::Ignore(format!(
            "no rule matches event `{event}` with labels [{}]",
            labels.join(", ")
        ))),
        Some(rule) => {
            let (spec, item) = job_spec(src, rule, &event, &payload)?;
            Ok(Decision::Submit {
                spec: Box::new(spec),
                item,
            })
        }
    }
}

pub(crate) async fn webhook(
    bridge: &Bridge,
    source: &str,
    headers: &http::HeaderMap,
    body: &[u8],
) -> Result<WebhookReply, BridgeError> {
    let Some(src) = bridge.config.sources.get(source) else {
        let known: Vec<&str> = bridge.config.sources.keys().map(String::as_str).collect();
        return Err(BridgeError::NotFound(format!(
            "no bridge source `{source}` (configured: {})",
            if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            }
        )));
    };
    let delivery = verify(src, headers, body)?;
    let seen_key = names::bridge_seen_key(source, &sha_hex(&delivery));
    if let Some(first) = bridge.kv.get(&seen_key).await.map_err(BridgeError::store)? {
        let mut reply: WebhookReply = serde_json::from_slice(&first)
            .map_err(|e| BridgeError::Internal(format!("corrupt seen entry: {e}")))?;
        reply.outcome = WebhookOutcome::DuplicateDelivery;
        return Ok(reply);
    }
    let reply = match decide(src, headers, body)? {
        Decision::Ignore(reason) => WebhookReply {
            outcome: WebhookOutcome::Ignored,
            job_id: None,
            item: None,
            reason: Some(reason),
        },
        Decision::Submit { spec, item } => {
            let r = (bridge.submit)(*spec).await.map_err(BridgeError::Submit)?;
            WebhookReply {
                outcome: if r.duplicate {
                    WebhookOutcome::Existing
                } else {
                    WebhookOutcome::Created
                },
                job_id: Some(r.job_id),
                item: Some(item),
                reason: None,
            }
        }
    };
    bridge
        .kv
        .put(
            &seen_key,
            serde_json::to_vec(&reply).expect("serializes").into(),
        )
        .await
        .map_err(BridgeError::store)?;
    Ok(reply)
}
