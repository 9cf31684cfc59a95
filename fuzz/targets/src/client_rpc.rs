//! What a client (a submit-only credential, or an operator) sends on the fixed
//! `gf.rpc.*` subjects: the first byte picks the request, the rest is the body. Runs
//! the decode with its size limit (`coordinator/src/rpc.rs`) and the checks that need
//! no store: a job spec's validation and its dispatch route, a manifest's plan.

use std::fmt::Debug;

use gf_schemas::artifact::ArtifactReadRequest;
use gf_schemas::bridge::{DeliveryQuery, RedeliverRequest};
use gf_schemas::manifest::{Manifest, ManifestName};
use gf_schemas::names::{self, Routing};
use gf_schemas::rpc::{
    self, BudgetUpdate, CancelRequest, ChildRequest, GetJobRequest, JobAction, JobListRequest,
    ScheduleName,
};
use gf_schemas::{JobSpec, Schedule};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::check::{plain_subject, round_trip, MAX_BODY};

/// The requests, in the order the first byte picks them.
const REQUESTS: u8 = 15;

pub fn run(data: &[u8]) {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    match pick % REQUESTS {
        0 => submit(body),
        1 => {
            // `gf.rpc.batch.submit`: each item as if it had come alone.
            if let Ok(items) = rpc::batch_items(body) {
                assert!((1..=rpc::MAX_BATCH).contains(&items.len()));
                for item in items {
                    submit(item.get().as_bytes());
                }
            }
        }
        2 => drop(decode::<GetJobRequest>(body)),
        3 => drop(decode::<JobListRequest>(body)),
        4 => drop(decode::<CancelRequest>(body)),
        5 => drop(decode::<JobAction>(body)),
        6 => {
            if let Some(c) = decode::<ChildRequest>(body) {
                spec_checked(&c.spec);
            }
        }
        7 => drop(decode::<BudgetUpdate>(body)),
        8 => {
            if let Some(s) = decode::<Schedule>(body) {
                spec_checked(&s.spec);
            }
        }
        9 => drop(decode::<ScheduleName>(body)),
        10 => {
            if let Some(m) = decode::<Manifest>(body) {
                manifest(&m);
            }
        }
        11 => drop(decode::<ManifestName>(body)),
        12 => drop(decode::<ArtifactReadRequest>(body)),
        13 => drop(decode::<DeliveryQuery>(body)),
        _ => drop(decode::<RedeliverRequest>(body)),
    }
}

fn decode<T>(body: &[u8]) -> Option<T>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let v: T = rpc::decode_request("request", body, MAX_BODY).ok()?;
    round_trip(&v);
    Some(v)
}

/// `gf.rpc.submit`: a job spec.
fn submit(body: &[u8]) {
    if let Some(spec) = decode::<JobSpec>(body) {
        spec_checked(&spec);
    }
}

/// A spec that validates routes to plain subjects only: its queue and required
/// capabilities become tokens of its dispatch subject, its product of its usage
/// subject.
fn spec_checked(spec: &JobSpec) {
    if spec.validate().is_err() {
        return;
    }
    let routing = Routing::default();
    let route = routing.route_of(spec);
    assert_eq!(route.tokens().len(), routing.dims().len());
    plain_subject(&route.subject());
    plain_subject(&names::usage(&spec.product));
}

/// A manifest whose plan is accepted orders every job once, after its dependencies.
fn manifest(m: &Manifest) {
    let Ok(order) = m.plan() else {
        return;
    };
    assert_eq!(order.len(), m.jobs.len());
    let mut placed = vec![false; m.jobs.len()];
    for &i in &order {
        assert!(!placed[i], "job {i} planned twice");
        for dep in &m.jobs[i].depends_on {
            let d = m.jobs.iter().position(|j| &j.name == dep).expect("known");
            assert!(placed[d], "job {i} planned before its dependency {d}");
        }
        placed[i] = true;
        if let Ok(spec) = m.jobs[i].spec() {
            spec_checked(&spec);
        }
    }
}
