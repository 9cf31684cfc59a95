//! Who sent a factory request.
//!
//! A factory's requests travel on `gf.rpc.w.<factory>.<verb>`, and once the broker
//! enforces each factory's permissions it may publish only under its own prefix. So the
//! subject names the sender, authorised by the server; the payload's `worker_id` is only
//! what the sender says about itself. A request whose payload names another worker is
//! refused with `forbidden`, recorded as an `rpc_forbidden` event (with the sending
//! factory) and counted in `gf_rpc_forbidden_total`, before anything else reads it.

use gf_schemas::names::FactoryVerb;
use gf_schemas::{ErrorKind, EventKind, FactoryRequest, Level, RpcError, WorkerId};
use metrics::counter;

use crate::events::EventSink;

/// Why a factory request was forbidden: a bounded metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The payload named another worker than the subject's factory.
    IdentityMismatch,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::IdentityMismatch => "identity_mismatch",
        }
    }
}

/// `Ok` when `req` speaks for the factory that sent it.
pub fn check<R: FactoryRequest>(sender: &WorkerId, req: &R) -> Result<(), (Refusal, RpcError)> {
    let named = req.sender();
    if named == sender {
        return Ok(());
    }
    Err((
        Refusal::IdentityMismatch,
        RpcError::new(
            ErrorKind::Forbidden,
            format!(
                "the request names worker `{named}` but factory `{sender}` sent it: a factory may only act for itself"
            ),
        ),
    ))
}

/// Audits and counts a forbidden request.
pub fn refused(
    events: &EventSink,
    subject: &str,
    sender: &WorkerId,
    verb: FactoryVerb,
    why: Refusal,
    err: &RpcError,
) {
    tracing::warn!(%subject, factory = %sender, reason = why.as_str(), "{}", err.message);
    counter!(
        gf_telemetry::names::RPC_FORBIDDEN,
        "operation" => verb.as_str(),
        "reason" => why.as_str()
    )
    .increment(1);
    events.emit(
        EventKind::RpcForbidden,
        Level::Error,
        None,
        Some(sender),
        format!("{subject}: {}", err.message),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use gf_schemas::rpc::ClaimRequest;
    use gf_schemas::JobId;

    /// Only the subject's own factory may be named; the error is `forbidden` and names
    /// both ids.
    #[test]
    fn payload_must_name_the_sender() {
        let a = WorkerId::new("a").unwrap();
        let b = WorkerId::new("b").unwrap();
        let req = ClaimRequest {
            job_id: JobId::new(),
            epoch: 1,
            worker_id: b.clone(),
        };
        assert!(check(&b, &req).is_ok());
        let (why, err) = check(&a, &req).unwrap_err();
        assert_eq!(why, Refusal::IdentityMismatch);
        assert_eq!(err.kind, ErrorKind::Forbidden);
        assert!(
            err.message.contains("`b`") && err.message.contains("`a`"),
            "{}",
            err.message
        );
    }
}
