//! What a NATS user may do, as data: the least-privilege grants of each role.
//!
//! One pure function per role builds its grant from the subject constructors in
//! [`crate::names`]; a server config (static users) or a user JWT (the auth callout)
//! is rendered from it, never written by hand. Anything not granted is denied: a grant
//! is an allow list.

use std::time::Duration;

use crate::names::{self, js, STREAM_DISPATCH};
use crate::{ConsumerName, WorkerId};

/// A user's grant: the subjects it may publish and subscribe to, and whether it may
/// answer requests it received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permissions {
    /// Subjects (wildcards allowed) the user may publish to.
    pub publish: Vec<String>,
    /// Subjects (wildcards allowed) the user may subscribe to.
    pub subscribe: Vec<String>,
    /// Publishing to the reply subject of a message the user received.
    pub responses: Option<Responses>,
}

/// The server's `allow_responses`: up to `max` replies to each request received, within
/// `ttl` of receiving it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Responses {
    pub max: u32,
    pub ttl: Duration,
}

/// Everything a factory needs, and nothing more.
///
/// Publish:
/// - `gf.rpc.w.<factory>.>`: its own RPCs, so the coordinator can take the sender from
///   the subject;
/// - `gf.logs.<factory>.>`: its jobs' log lines (a JetStream publish; the ack comes
///   back to its inbox);
/// - per approved dispatch consumer `c`: `$JS.API.CONSUMER.INFO.GF_DISPATCH.<c>` (bind),
///   `$JS.API.CONSUMER.MSG.NEXT.GF_DISPATCH.<c>` (pull), and acks in both formats,
///   `$JS.ACK.GF_DISPATCH.<c>.>` and `$JS.ACK.*.*.GF_DISPATCH.<c>.>` (the reply-subject
///   allowance covers one publish per message, and a notice may get a nak and then an
///   ack).
///
/// Subscribe:
/// - `_INBOX_<factory>.>`: its own inbox prefix (every reply it waits for);
/// - `gf.ctl.worker.<factory>`: revocations and drain requests.
///
/// Responses: one reply per control request, within a minute.
///
/// Deliberately absent: any `$KV`, any `$JS.API.STREAM.*`, `CONSUMER.CREATE` (a
/// consumer's creator picks its filter and reads the whole stream), `gf.dispatch.>`,
/// `_INBOX.>`, `gf.rpc.>` and every other factory's subjects.
pub fn factory(factory: &WorkerId, consumers: &[ConsumerName]) -> Permissions {
    let mut publish = vec![
        names::factory_rpc_all(factory),
        names::factory_logs_all(factory),
    ];
    for c in consumers {
        let c = c.as_str();
        publish.push(js::consumer_info(STREAM_DISPATCH, c));
        publish.push(js::consumer_next(STREAM_DISPATCH, c));
        publish.push(js::acks(STREAM_DISPATCH, c));
        publish.push(js::acks_v2(STREAM_DISPATCH, c));
    }
    Permissions {
        publish,
        subscribe: vec![
            format!("{}.>", names::factory_inbox_prefix(factory)),
            names::worker_control(factory),
        ],
        responses: Some(Responses {
            max: 1,
            ttl: Duration::from_secs(60),
        }),
    }
}

/// A submit-only client (static user `user`, `gf admin user create --role submit`):
/// it may submit jobs, read them and their logs, and nothing else.
///
/// Publish:
/// - submissions: `gf.rpc.submit`, `gf.rpc.batch.submit`, `gf.rpc.job.child` (a job
///   making a child with the credential it was given), `gf.rpc.manifest.submit`;
/// - reads through the coordinators: `gf.rpc.job.get`, `gf.rpc.job.list`,
///   `gf.rpc.manifest.get`;
/// - a job's log lines: `$JS.API.DIRECT.GET.GF_LOGS` (a direct get by subject and
///   sequence: read only; no consumer, whose creator could name where the server
///   delivers).
///
/// Subscribe: `_CLIENT_<user>.>`, its own inbox prefix (replies).
///
/// Deliberately absent: cancel, requeue, reject, budgets, schedules, drains,
/// `$KV`, every other `$JS.API` subject, `gf.rpc.w.>` (factories), `gf.logs.>`
/// publishes, `gf.dispatch.>`, `_INBOX.>`.
pub fn submitter(user: &str) -> Permissions {
    Permissions {
        publish: vec![
            names::rpc::SUBMIT.to_string(),
            names::rpc::SUBMIT_BATCH.to_string(),
            names::rpc::SUBMIT_CHILD.to_string(),
            names::rpc::MANIFEST_SUBMIT.to_string(),
            names::rpc::GET_JOB.to_string(),
            names::rpc::LIST_JOBS.to_string(),
            names::rpc::MANIFEST_GET.to_string(),
            js::direct_get(names::STREAM_LOGS),
        ],
        subscribe: vec![format!("{}.>", names::client_inbox_prefix(user))],
        responses: None,
    }
}

impl Permissions {
    /// The grant as a nats-server config `permissions` block, in JSON (which the
    /// server's config format accepts as is): for a static user.
    pub fn server_config(&self) -> serde_json::Value {
        let mut block = serde_json::json!({
            "publish": {"allow": self.publish},
            "subscribe": {"allow": self.subscribe},
        });
        if let Some(r) = self.responses {
            block["allow_responses"] = serde_json::json!({
                "max": r.max,
                "expires": format!("{}ms", r.ttl.as_millis()),
            });
        }
        block
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject_matches(pattern: &str, subject: &str) -> bool {
        let (mut p, mut s) = (pattern.split('.'), subject.split('.'));
        loop {
            match (p.next(), s.next()) {
                (Some(">"), Some(_)) => return true,
                (Some("*"), Some(_)) => {}
                (Some(a), Some(b)) if a == b => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }

    fn allows(list: &[String], subject: &str) -> bool {
        list.iter().any(|p| subject_matches(p, subject))
    }

    /// The exact grant (what the end-to-end test runs a real worker under), and that
    /// it reaches the factory's own subjects and no one else's.
    #[test]
    fn factory_grant_is_exact_and_own() {
        let f = WorkerId::new("f1").unwrap();
        let c = ConsumerName::new("gfw_abc").unwrap();
        let p = factory(&f, std::slice::from_ref(&c));
        assert_eq!(
            p.publish,
            [
                "gf.rpc.w.f1.>",
                "gf.logs.f1.>",
                "$JS.API.CONSUMER.INFO.GF_DISPATCH.gfw_abc",
                "$JS.API.CONSUMER.MSG.NEXT.GF_DISPATCH.gfw_abc",
                "$JS.ACK.GF_DISPATCH.gfw_abc.>",
                "$JS.ACK.*.*.GF_DISPATCH.gfw_abc.>",
            ]
        );
        assert_eq!(p.subscribe, ["_INBOX_f1.>", "gf.ctl.worker.f1"]);
        assert_eq!(
            p.responses,
            Some(Responses {
                max: 1,
                ttl: Duration::from_secs(60)
            })
        );

        let other = WorkerId::new("f2").unwrap();
        let job = crate::JobId::new();
        let own_pub = [
            names::factory_rpc(&f, names::FactoryVerb::Claim),
            names::factory_rpc(&f, names::FactoryVerb::CompleteBatch),
            names::logs(&f, &job),
            "$JS.ACK.GF_DISPATCH.gfw_abc.1.2.3.1700000000.0".to_string(),
            "$JS.ACK._.h4sh.GF_DISPATCH.gfw_abc.1.2.3.1700000000.0.tok".to_string(),
        ];
        for s in own_pub {
            assert!(allows(&p.publish, &s), "{s} not granted");
        }
        let denied_pub = [
            names::factory_rpc(&other, names::FactoryVerb::Claim),
            names::logs(&other, &job),
            names::rpc::SUBMIT.to_string(),
            names::rpc::CANCEL.to_string(),
            names::rpc::BUDGET_SET.to_string(),
            js::consumer_create(STREAM_DISPATCH, "gfw_abc"),
            js::stream_info(STREAM_DISPATCH),
            js::consumer_info(STREAM_DISPATCH, "gfw_other"),
            js::consumer_next(STREAM_DISPATCH, "gfw_other"),
            "$JS.ACK.GF_DISPATCH.gfw_other.1.2.3.4.0".to_string(),
            "$KV.gf_jobs.x".to_string(),
            "$JS.API.DIRECT.GET.KV_gf_jobs".to_string(),
            "gf.dispatch.default._._".to_string(),
        ];
        for s in denied_pub {
            assert!(!allows(&p.publish, &s), "{s} granted");
        }
        for s in [
            "_INBOX.x",
            "_INBOX_f2.x",
            "gf.ctl.worker.f2",
            "gf.rpc.w.f1.claim",
            "$KV.gf_jobs.x",
        ] {
            assert!(!allows(&p.subscribe, s), "subscribe {s} granted");
        }
        assert!(allows(&p.subscribe, "_INBOX_f1.abc.def"));
    }

    /// A submitter submits and reads jobs and logs; it cannot act on jobs, reach the
    /// store or stream API, act as a factory, or read others' replies.
    #[test]
    fn submitter_grant() {
        let p = submitter("ci");
        for s in [
            names::rpc::SUBMIT,
            names::rpc::GET_JOB,
            names::rpc::LIST_JOBS,
            names::rpc::MANIFEST_SUBMIT,
            "$JS.API.DIRECT.GET.GF_LOGS",
        ] {
            assert!(allows(&p.publish, s), "{s} not granted");
        }
        let f = WorkerId::new("f1").unwrap();
        for s in [
            names::rpc::CANCEL.to_string(),
            names::rpc::REQUEUE.to_string(),
            names::rpc::BUDGET_SET.to_string(),
            names::rpc::SCHEDULE_ADD.to_string(),
            names::factory_rpc(&f, names::FactoryVerb::Claim),
            names::logs(&f, &crate::JobId::new()),
            "$KV.gf_jobs.x".to_string(),
            "$JS.API.DIRECT.GET.KV_gf_jobs".to_string(),
            js::consumer_create(names::STREAM_LOGS, "c"),
            js::stream_info(names::STREAM_LOGS),
            "gf.dispatch.default._._".to_string(),
        ] {
            assert!(!allows(&p.publish, &s), "{s} granted");
        }
        assert_eq!(p.subscribe, ["_CLIENT_ci.>"]);
        assert!(p.responses.is_none());
    }

    /// The server-config rendering carries every grant.
    #[test]
    fn server_config_block() {
        let f = WorkerId::new("f1").unwrap();
        let p = factory(&f, &[]);
        let v = p.server_config();
        assert_eq!(v["publish"]["allow"][0], "gf.rpc.w.f1.>");
        assert_eq!(v["subscribe"]["allow"][1], "gf.ctl.worker.f1");
        assert_eq!(v["allow_responses"]["max"], 1);
        assert_eq!(v["allow_responses"]["expires"], "60000ms");
    }
}
