//! Subjects the coordinators read the sender from: `gf.rpc.w.<factory>.<verb>` (a
//! factory's requests) and `gf.logs.<factory>.<job>` (its log lines). The server only
//! lets a factory publish under its own id, so these parsers decide who is speaking:
//! what they accept must name exactly one factory, and print back to itself.

use gf_schemas::names::{self, FactoryVerb};

pub fn run(data: &[u8]) {
    let Ok(subject) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(rpc) = names::parse_factory_rpc(subject) {
        assert_eq!(names::factory_rpc(&rpc.factory, rpc.verb), subject);
        assert_eq!(FactoryVerb::parse(rpc.verb.as_str()), Some(rpc.verb));
    }
    if let Some((factory, job)) = names::parse_logs(subject) {
        let own = names::logs(&factory, &job);
        assert_eq!(names::parse_logs(&own), Some((factory, job)));
    }
    // The span name and metric label of any subject: bounded, never a panic.
    let _ = names::rpc_name(subject);
    let _ = names::parse_archive(subject);
}
