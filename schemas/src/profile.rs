//! Profiles: named job templates from the coordinators' configuration, and the one rule
//! that resolves a submission against its profile ([`resolve`]), so every client, in any
//! language, gets the same job for the same submission.
//!
//! Also [`kind`]: the one definition of a job's kind (used to group outcomes).

use std::collections::{BTreeMap, BTreeSet};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::job::{DEFAULT_MAX_ATTEMPTS, DEFAULT_PRIORITY, DEFAULT_PRODUCT, DEFAULT_QUEUE};
use crate::names::is_token;
use crate::{JobSpec, ScoreWeights, SpecError};

/// A named job template (`[profiles.<name>]` in `gigafactory.toml`). Every field is
/// optional; a submission naming the profile fills what it does not set from here.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// One line for people (shown by `gf profiles` and the dashboard).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Command prefix: the submission's command is appended to it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requires: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub tags: BTreeSet<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 9))]
    pub priority: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ttl_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub prefer: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<ScoreWeights>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost: Option<f64>,
}

/// A profile with its name, as listed by the API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NamedProfile {
    pub name: String,
    #[serde(flatten)]
    pub profile: Profile,
}

/// Where one resolved value of a job came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Provenance {
    /// Neither the submission nor the profile set it: the built-in default.
    Default,
    Profile,
    Submission,
    /// Both contributed: a command prefix plus arguments, or maps and tags merged key
    /// by key (the submission's value wins on a shared key).
    Merged,
}

/// The fields a profile can set, in the order they are shown.
pub const PROFILE_FIELDS: [&str; 14] = [
    "command",
    "queue",
    "requires",
    "tags",
    "priority",
    "timeout_secs",
    "max_attempts",
    "lease_ttl_secs",
    "env",
    "product",
    "labels",
    "prefer",
    "weights",
    "max_cost",
];

impl Profile {
    /// Checks the profile as it would be applied: a job made of only this profile (with
    /// a placeholder command if it has none) must be valid.
    pub fn validate(&self) -> Result<(), SpecError> {
        let mut spec = JobSpec::command(["placeholder"]);
        spec.profile = Some("check".into());
        let (resolved, _) = resolve("check", self, &spec);
        resolved.validate()
    }
}

fn pick<T: Clone + PartialEq>(
    field: &'static str,
    submitted: &T,
    default: &T,
    profile: Option<&T>,
    out: &mut T,
    from: &mut BTreeMap<String, Provenance>,
) {
    let (value, p) = if submitted != default {
        (submitted.clone(), Provenance::Submission)
    } else if let Some(v) = profile {
        (v.clone(), Provenance::Profile)
    } else {
        (default.clone(), Provenance::Default)
    };
    *out = value;
    from.insert(field.into(), p);
}

fn merge_map(
    field: &'static str,
    submitted: &BTreeMap<String, String>,
    profile: &BTreeMap<String, String>,
    out: &mut BTreeMap<String, String>,
    from: &mut BTreeMap<String, Provenance>,
) {
    let mut m = profile.clone();
    m.extend(submitted.iter().map(|(k, v)| (k.clone(), v.clone())));
    *out = m;
    from.insert(
        field.into(),
        both(!submitted.is_empty(), !profile.is_empty()),
    );
}

fn both(submission: bool, profile: bool) -> Provenance {
    match (submission, profile) {
        (true, true) => Provenance::Merged,
        (true, false) => Provenance::Submission,
        (false, true) => Provenance::Profile,
        (false, false) => Provenance::Default,
    }
}

/// Resolves `spec` against `profile` (named `name`): the submission overrides the
/// profile, and the profile overrides the built-in defaults. The rule, per field:
/// - `command`: the profile's command is a prefix; the submission's is appended.
/// - `requires`, `env`, `labels`, `prefer`: merged key by key, the submission's value
///   winning on a shared key; `tags`: the union; `weights`: field by field.
/// - every other field: the submission's value when it differs from the built-in
///   default (or is set, for optional fields), else the profile's, else the default.
///
/// So a submission cannot set a field back to its built-in default over a profile
/// that sets it (the field shows as `profile` in the provenance): such a job wants
/// another profile. Returns the resolved spec (its `profile` kept) and where each of
/// [`PROFILE_FIELDS`] came from.
pub fn resolve(
    name: &str,
    profile: &Profile,
    spec: &JobSpec,
) -> (JobSpec, BTreeMap<String, Provenance>) {
    let mut out = spec.clone();
    out.profile = Some(name.to_string());
    let mut from = BTreeMap::new();

    out.command = profile
        .command
        .iter()
        .chain(spec.command.iter())
        .cloned()
        .collect();
    from.insert(
        "command".into(),
        both(!spec.command.is_empty(), !profile.command.is_empty()),
    );
    let d_queue = DEFAULT_QUEUE.to_string();
    pick(
        "queue",
        &spec.queue,
        &d_queue,
        profile.queue.as_ref(),
        &mut out.queue,
        &mut from,
    );
    let d_product = DEFAULT_PRODUCT.to_string();
    pick(
        "product",
        &spec.product,
        &d_product,
        profile.product.as_ref(),
        &mut out.product,
        &mut from,
    );
    pick(
        "priority",
        &spec.priority,
        &DEFAULT_PRIORITY,
        profile.priority.as_ref(),
        &mut out.priority,
        &mut from,
    );
    pick(
        "max_attempts",
        &spec.max_attempts,
        &DEFAULT_MAX_ATTEMPTS,
        profile.max_attempts.as_ref(),
        &mut out.max_attempts,
        &mut from,
    );
    let some = |v: &Option<u64>| v.map(Some);
    pick(
        "timeout_secs",
        &spec.timeout_secs,
        &None,
        some(&profile.timeout_secs).as_ref(),
        &mut out.timeout_secs,
        &mut from,
    );
    pick(
        "lease_ttl_secs",
        &spec.lease_ttl_secs,
        &None,
        some(&profile.lease_ttl_secs).as_ref(),
        &mut out.lease_ttl_secs,
        &mut from,
    );
    pick(
        "max_cost",
        &spec.max_cost,
        &None,
        profile.max_cost.map(Some).as_ref(),
        &mut out.max_cost,
        &mut from,
    );
    merge_map(
        "requires",
        &spec.requires,
        &profile.requires,
        &mut out.requires,
        &mut from,
    );
    merge_map("env", &spec.env, &profile.env, &mut out.env, &mut from);
    merge_map(
        "labels",
        &spec.labels,
        &profile.labels,
        &mut out.labels,
        &mut from,
    );
    merge_map(
        "prefer",
        &spec.prefer,
        &profile.prefer,
        &mut out.prefer,
        &mut from,
    );
    out.tags = profile.tags.union(&spec.tags).cloned().collect();
    from.insert(
        "tags".into(),
        both(!spec.tags.is_empty(), !profile.tags.is_empty()),
    );
    out.weights = match (profile.weights.as_ref(), spec.weights.as_deref()) {
        (None, w) | (w, None) => w.cloned().map(Box::new),
        (Some(p), Some(s)) => Some(Box::new(ScoreWeights {
            priority: s.priority.or(p.priority),
            waiting: s.waiting.or(p.waiting),
            retry: s.retry.or(p.retry),
            product: s.product.or(p.product),
            affinity: s.affinity.or(p.affinity),
            cost: s.cost.or(p.cost),
            success: s.success.or(p.success),
            speed: s.speed.or(p.speed),
            failed_here: s.failed_here.or(p.failed_here),
        })),
    };
    from.insert(
        "weights".into(),
        both(spec.weights.is_some(), profile.weights.is_some()),
    );
    (out, from)
}

/// Where each value of a job without a profile came from: the submission where it
/// differs from the built-in default, else the default. (Not stored: it follows from
/// the spec.)
pub fn provenance_without_profile(spec: &JobSpec) -> BTreeMap<String, Provenance> {
    resolve("", &Profile::default(), spec).1
}

/// A job's kind, the key outcomes are grouped by: the profile's name if the job used
/// one, else its `kind` label, else the file name of the program it runs
/// (`./bin/run-agent.sh --fast` → `run-agent.sh`).
pub fn kind(spec: &JobSpec) -> String {
    if let Some(p) = spec.profile.as_ref().filter(|p| !p.is_empty()) {
        return p.clone();
    }
    if let Some(k) = spec.labels.get("kind").filter(|k| !k.is_empty()) {
        return k.clone();
    }
    let program = spec.command.first().map(String::as_str).unwrap_or_default();
    let base = program
        .rsplit(['/', '\\'])
        .find(|s| !s.is_empty())
        .unwrap_or(program);
    base.to_string()
}

/// Checks a profile name: a token, like queues and products.
pub fn check_name(name: &str) -> Result<(), String> {
    if is_token(name) {
        Ok(())
    } else {
        Err(format!(
            "profile name `{name}`: use 1-128 characters from A-Z a-z 0-9 _ -"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent() -> Profile {
        Profile {
            command: vec!["run-agent".into(), "--repo".into(), "acme/api".into()],
            queue: Some("agents".into()),
            requires: [("os".to_string(), "linux".to_string())].into(),
            tags: ["repo-cache".to_string()].into(),
            timeout_secs: Some(7200),
            max_attempts: Some(2),
            env: [("MODEL".to_string(), "big".to_string())].into(),
            product: Some("acme".into()),
            labels: [("team".to_string(), "core".to_string())].into(),
            max_cost: Some(5.0),
            weights: Some(ScoreWeights {
                priority: Some(2.0),
                waiting: Some(1.0),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The profile fills what the submission leaves at its default; the submission
    /// wins where it sets a value; maps merge; the command is prefix + arguments; and
    /// the provenance says which is which.
    #[test]
    fn submission_overrides_profile() {
        let mut s = JobSpec::command(["TICKET-42"]);
        s.max_attempts = 5;
        s.env.insert("MODEL".into(), "small".into());
        s.env.insert("DEBUG".into(), "1".into());
        s.tags.insert("gpu".into());
        s.weights = Some(Box::new(ScoreWeights {
            waiting: Some(3.0),
            ..Default::default()
        }));
        let (r, from) = resolve("agent", &agent(), &s);
        assert_eq!(r.command, ["run-agent", "--repo", "acme/api", "TICKET-42"]);
        assert_eq!(r.profile.as_deref(), Some("agent"));
        assert_eq!(r.queue, "agents");
        assert_eq!(r.max_attempts, 5);
        assert_eq!(r.timeout_secs, Some(7200));
        assert_eq!(r.product, "acme");
        assert_eq!(r.priority, DEFAULT_PRIORITY);
        assert_eq!(r.env["MODEL"], "small");
        assert_eq!(r.env["DEBUG"], "1");
        assert_eq!(r.requires["os"], "linux");
        assert_eq!(r.tags.len(), 2);
        let w = r.weights.clone().unwrap();
        assert_eq!((w.priority, w.waiting), (Some(2.0), Some(3.0)));
        assert_eq!(r.max_cost, Some(5.0));
        let p = |f: &str| from[f];
        assert_eq!(p("command"), Provenance::Merged);
        assert_eq!(p("queue"), Provenance::Profile);
        assert_eq!(p("max_attempts"), Provenance::Submission);
        assert_eq!(p("priority"), Provenance::Default);
        assert_eq!(p("env"), Provenance::Merged);
        assert_eq!(p("requires"), Provenance::Profile);
        assert_eq!(p("prefer"), Provenance::Default);
        assert_eq!(p("weights"), Provenance::Merged);
        assert_eq!(from.len(), PROFILE_FIELDS.len());
        for f in PROFILE_FIELDS {
            assert!(from.contains_key(f), "{f}");
        }
        r.validate().unwrap();
    }

    /// A profile that would make an invalid job is refused, naming the field.
    #[test]
    fn profile_validation() {
        agent().validate().unwrap();
        let bad = Profile {
            queue: Some("no spaces".into()),
            ..Default::default()
        };
        assert_eq!(bad.validate().unwrap_err().field, "queue");
        let bad = Profile {
            max_attempts: Some(0),
            ..Default::default()
        };
        assert_eq!(bad.validate().unwrap_err().field, "max_attempts");
        assert!(check_name("agent").is_ok());
        assert!(check_name("a.b").is_err());
    }

    /// The kind: the profile, else the `kind` label, else the program's file name.
    #[test]
    fn kind_of_a_job() {
        let mut s = JobSpec::command(["./bin/run-agent.sh", "--fast"]);
        assert_eq!(kind(&s), "run-agent.sh");
        s.labels.insert("kind".into(), "triage".into());
        assert_eq!(kind(&s), "triage");
        s.profile = Some("agent".into());
        assert_eq!(kind(&s), "agent");
        assert_eq!(kind(&JobSpec::command(["gf:noop"])), "gf:noop");
        assert_eq!(
            kind(&JobSpec::command([r"C:\tools\build.exe"])),
            "build.exe"
        );
    }

    /// Without a profile every value is the submission's or the default.
    #[test]
    fn provenance_of_a_plain_job() {
        let mut s = JobSpec::command(["true"]);
        s.queue = "batch".into();
        let from = provenance_without_profile(&s);
        assert_eq!(from["queue"], Provenance::Submission);
        assert_eq!(from["product"], Provenance::Default);
        assert_eq!(from["command"], Provenance::Submission);
    }
}
