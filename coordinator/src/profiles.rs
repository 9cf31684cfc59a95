//! Profiles at submission: the named templates of this coordinator's configuration,
//! applied with the one rule in [`gf_schemas::profile::resolve`].

use std::collections::BTreeMap;

use gf_schemas::profile::{resolve, Provenance};
use gf_schemas::{ErrorKind, JobSpec, NamedProfile, Profile, RpcError};

/// Applies the submission's profile, if it names one: the resolved spec and where each
/// value came from (empty without a profile). An unknown profile is an `invalid` error
/// naming the known ones.
pub fn apply(
    profiles: &BTreeMap<String, Profile>,
    spec: JobSpec,
) -> Result<(JobSpec, BTreeMap<String, Provenance>), RpcError> {
    let Some(name) = spec.profile.clone() else {
        return Ok((spec, BTreeMap::new()));
    };
    let Some(profile) = profiles.get(&name) else {
        let known: Vec<&str> = profiles.keys().map(String::as_str).collect();
        let known = if known.is_empty() {
            "none are configured".to_string()
        } else {
            format!("known: {}", known.join(", "))
        };
        return Err(RpcError::new(
            ErrorKind::Invalid,
            format!("unknown profile `{name}` ({known})"),
        ));
    };
    Ok(resolve(&name, profile, &spec))
}

/// Every profile, by name.
pub fn list(profiles: &BTreeMap<String, Profile>) -> Vec<NamedProfile> {
    profiles
        .iter()
        .map(|(name, profile)| NamedProfile {
            name: name.clone(),
            profile: profile.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No profile: the spec as it is. An unknown profile: an error naming the known.
    #[test]
    fn unknown_profile_names_the_known_ones() {
        let mut profiles = BTreeMap::new();
        let (s, from) = apply(&profiles, JobSpec::command(["x"])).unwrap();
        assert_eq!((s, from.len()), (JobSpec::command(["x"]), 0));
        let mut spec = JobSpec::command(["x"]);
        spec.profile = Some("agnt".into());
        let e = apply(&profiles, spec.clone()).unwrap_err();
        assert!(e.message.contains("none are configured"), "{e}");
        profiles.insert("agent".into(), Profile::default());
        profiles.insert("build".into(), Profile::default());
        let e = apply(&profiles, spec).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Invalid);
        assert_eq!(e.message, "unknown profile `agnt` (known: agent, build)");
    }
}
