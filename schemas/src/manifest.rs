//! Manifests: a named set of jobs with dependencies by name, submitted as one unit.
//!
//! Each job's idempotency key is derived from the manifest's name and the job's name
//! ([`idempotency_key`]), and jobs are created in dependency order ([`Manifest::plan`]),
//! so submitting the same manifest again creates nothing new, and a submission cut off
//! midway is completed, not duplicated, by the next one.

use std::borrow::Cow;
use std::collections::BTreeMap;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

use crate::names::is_token;
use crate::{JobId, JobSpec, JobState, Timestamp};

/// Most jobs one manifest may hold.
pub const MAX_JOBS: usize = 500;

/// A manifest: `gf submit -f jobs.toml`, `POST /api/manifests`, `gf.rpc.manifest.submit`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Names the unit: re-submitting a manifest of this name creates only the jobs
    /// that do not exist yet. 1-128 characters from A-Z a-z 0-9 _ -.
    pub name: String,
    pub jobs: Vec<ManifestJob>,
}

/// One job of a manifest: its name, the names of the jobs it runs after, and any
/// job spec field (`command`, `profile`, `queue`, `requires`, …). `command` may be left
/// out when the profile has one; `idempotency_key` and `parent` are not allowed (the
/// manifest sets the key).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ManifestJob {
    pub name: String,
    /// Names of jobs of this manifest that must succeed first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// The rest: job spec fields.
    #[serde(flatten)]
    pub spec: serde_json::Map<String, serde_json::Value>,
}

impl JsonSchema for ManifestJob {
    fn schema_name() -> Cow<'static, str> {
        "ManifestJob".into()
    }

    /// The job spec's schema with `name` (required) and `depends_on` as names.
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let mut schema = JobSpec::json_schema(generator);
        let obj = schema.ensure_object();
        obj.insert(
            "description".into(),
            "One job of a manifest: `name`, `depends_on` (names of jobs of this manifest), and any job spec field except `idempotency_key` and `parent`; `command` may be left out when the profile has one.".into(),
        );
        if let Some(serde_json::Value::Object(props)) = obj.get_mut("properties") {
            props.remove("idempotency_key");
            props.remove("parent");
            props.insert(
                "name".into(),
                serde_json::json!({"type": "string", "description": "Unique in the manifest; 1-128 characters from A-Z a-z 0-9 _ -."}),
            );
            props.insert(
                "depends_on".into(),
                serde_json::json!({"type": "array", "items": {"type": "string"}, "description": "Names of jobs of this manifest that must succeed first."}),
            );
        }
        obj.insert("required".into(), serde_json::json!(["name"]));
        schema
    }
}

/// Why a manifest is refused (before anything is created).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest name `{0}`: use 1-128 characters from A-Z a-z 0-9 _ -")]
    BadName(String),
    #[error("manifest `{0}` has no jobs")]
    Empty(String),
    #[error("manifest has {0} jobs; the limit is {MAX_JOBS}")]
    TooMany(usize),
    #[error("job name `{0}`: use 1-128 characters from A-Z a-z 0-9 _ -")]
    BadJobName(String),
    #[error("job `{0}` appears twice")]
    Duplicate(String),
    #[error("job `{job}` depends on `{missing}`, which is not in the manifest")]
    UnknownDependency { job: String, missing: String },
    /// The names along the cycle, the first repeated at the end.
    #[error("dependency cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
    #[error("job `{job}`: {problem}")]
    Job { job: String, problem: String },
}

/// The idempotency key of one job of a manifest.
pub fn idempotency_key(manifest: &str, job: &str) -> String {
    format!("manifest:{manifest}:{job}")
}

impl Manifest {
    /// Checks names and dependencies and returns the jobs' indices in creation order:
    /// every job after the jobs it depends on, otherwise in manifest order. Refuses
    /// an unknown dependency or a cycle, naming it.
    pub fn plan(&self) -> Result<Vec<usize>, ManifestError> {
        if !is_token(&self.name) {
            return Err(ManifestError::BadName(self.name.clone()));
        }
        if self.jobs.is_empty() {
            return Err(ManifestError::Empty(self.name.clone()));
        }
        if self.jobs.len() > MAX_JOBS {
            return Err(ManifestError::TooMany(self.jobs.len()));
        }
        let mut index = BTreeMap::new();
        for (i, j) in self.jobs.iter().enumerate() {
            if !is_token(&j.name) {
                return Err(ManifestError::BadJobName(j.name.clone()));
            }
            if index.insert(j.name.as_str(), i).is_some() {
                return Err(ManifestError::Duplicate(j.name.clone()));
            }
        }
        let mut deps: Vec<Vec<usize>> = Vec::with_capacity(self.jobs.len());
        for j in &self.jobs {
            let mut d = Vec::new();
            for name in &j.depends_on {
                let Some(&k) = index.get(name.as_str()) else {
                    return Err(ManifestError::UnknownDependency {
                        job: j.name.clone(),
                        missing: name.clone(),
                    });
                };
                d.push(k);
            }
            deps.push(d);
        }
        // Repeatedly take the first job (in manifest order) whose dependencies are all
        // placed: stable, and O(n²) at most for MAX_JOBS.
        let mut placed = vec![false; self.jobs.len()];
        let mut order = Vec::with_capacity(self.jobs.len());
        while order.len() < self.jobs.len() {
            let next =
                (0..self.jobs.len()).find(|&i| !placed[i] && deps[i].iter().all(|&d| placed[d]));
            match next {
                Some(i) => {
                    placed[i] = true;
                    order.push(i);
                }
                None => return Err(ManifestError::Cycle(self.cycle(&deps, &placed))),
            }
        }
        Ok(order)
    }

    /// A cycle among the jobs not placed (each of them waits on another unplaced one).
    fn cycle(&self, deps: &[Vec<usize>], placed: &[bool]) -> Vec<String> {
        let start = (0..placed.len()).find(|&i| !placed[i]).unwrap_or(0);
        let mut path = vec![start];
        let mut at = start;
        while let Some(&next) = deps[at].iter().find(|&&d| !placed[d]) {
            if let Some(pos) = path.iter().position(|&p| p == next) {
                let mut names: Vec<String> = path[pos..]
                    .iter()
                    .map(|&i| self.jobs[i].name.clone())
                    .collect();
                names.push(self.jobs[next].name.clone());
                return names;
            }
            path.push(next);
            at = next;
        }
        path.iter().map(|&i| self.jobs[i].name.clone()).collect()
    }
}

impl ManifestJob {
    /// The job's spec as submitted (before its profile is applied and its dependencies
    /// are turned into job ids).
    pub fn spec(&self) -> Result<JobSpec, ManifestError> {
        let bad = |problem: String| ManifestError::Job {
            job: self.name.clone(),
            problem,
        };
        for forbidden in ["idempotency_key", "parent"] {
            if self.spec.contains_key(forbidden) {
                return Err(bad(format!(
                    "`{forbidden}` is not allowed in a manifest (the manifest sets it)"
                )));
            }
        }
        let mut fields = self.spec.clone();
        fields
            .entry("command")
            .or_insert_with(|| serde_json::Value::Array(Vec::new()));
        let spec: JobSpec = serde_json::from_value(serde_json::Value::Object(fields))
            .map_err(|e| bad(e.to_string()))?;
        if spec.command.is_empty() && spec.profile.is_none() {
            return Err(bad("needs a `command` (or a `profile` that has one)".into()));
        }
        Ok(spec)
    }
}

/// What the store keeps per manifest (value of `gf_manifests.<name>`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ManifestRecord {
    pub name: String,
    /// The first submission's time.
    pub submitted_at: Timestamp,
    /// The last submission's time.
    pub updated_at: Timestamp,
    /// In creation order.
    pub jobs: Vec<ManifestEntry>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ManifestEntry {
    pub name: String,
    pub job_id: JobId,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
}

/// Reply to a manifest submission, and what `gf manifest show` prints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ManifestStatus {
    pub name: String,
    /// Jobs this submission created (0 when everything existed already).
    #[serde(default)]
    pub created: usize,
    pub submitted_at: Timestamp,
    /// In creation order (dependencies first).
    pub jobs: Vec<ManifestJobStatus>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ManifestJobStatus {
    pub name: String,
    pub job_id: JobId,
    /// `None` when the job is no longer in the store (removed after its retention).
    pub state: Option<JobState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
}

/// `gf.rpc.manifest.get`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ManifestName {
    pub name: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(jobs: &[(&str, &[&str])]) -> Manifest {
        Manifest {
            name: "m".into(),
            jobs: jobs
                .iter()
                .map(|(n, d)| ManifestJob {
                    name: n.to_string(),
                    depends_on: d.iter().map(|s| s.to_string()).collect(),
                    spec: serde_json::json!({"command": ["true"]})
                        .as_object()
                        .unwrap()
                        .clone(),
                })
                .collect(),
        }
    }

    /// Jobs come out after their dependencies, otherwise in manifest order.
    #[test]
    fn plan_orders_by_dependency() {
        let m = manifest(&[
            ("deploy", &["test", "docs"]),
            ("test", &["build"]),
            ("build", &[]),
            ("docs", &[]),
            ("notify", &["deploy"]),
        ]);
        let names: Vec<&str> = m
            .plan()
            .unwrap()
            .iter()
            .map(|&i| m.jobs[i].name.as_str())
            .collect();
        assert_eq!(names, ["build", "test", "docs", "deploy", "notify"]);
    }

    /// A cycle, an unknown name or a duplicate is refused, naming it.
    #[test]
    fn plan_refuses_bad_graphs() {
        let e = manifest(&[("a", &["c"]), ("b", &["a"]), ("c", &["b"]), ("d", &[])])
            .plan()
            .unwrap_err();
        assert_eq!(e.to_string(), "dependency cycle: a -> c -> b -> a");
        let e = manifest(&[("a", &["a"])]).plan().unwrap_err();
        assert_eq!(e.to_string(), "dependency cycle: a -> a");
        let e = manifest(&[("a", &["nope"])]).plan().unwrap_err();
        assert_eq!(
            e.to_string(),
            "job `a` depends on `nope`, which is not in the manifest"
        );
        assert!(matches!(
            manifest(&[("a", &[]), ("a", &[])]).plan(),
            Err(ManifestError::Duplicate(_))
        ));
        assert!(matches!(manifest(&[]).plan(), Err(ManifestError::Empty(_))));
    }

    /// A job's spec: the JobSpec rules (unknown fields refused), command optional with
    /// a profile, no idempotency key or parent of its own.
    #[test]
    fn job_spec_fields() {
        let job: ManifestJob = serde_json::from_value(serde_json::json!(
            {"name": "a", "depends_on": ["b"], "profile": "agent", "queue": "q"}
        ))
        .unwrap();
        let s = job.spec().unwrap();
        assert_eq!((s.queue.as_str(), s.command.len()), ("q", 0));
        let job: ManifestJob =
            serde_json::from_value(serde_json::json!({"name": "a", "comand": ["x"]})).unwrap();
        assert!(job.spec().unwrap_err().to_string().contains("comand"));
        let job: ManifestJob = serde_json::from_value(
            serde_json::json!({"name": "a", "command": ["x"], "idempotency_key": "k"}),
        )
        .unwrap();
        assert!(job
            .spec()
            .unwrap_err()
            .to_string()
            .contains("idempotency_key"));
        let job: ManifestJob = serde_json::from_value(serde_json::json!({"name": "a"})).unwrap();
        assert!(job.spec().unwrap_err().to_string().contains("command"));
    }

    /// The manifest's JSON shape is pinned.
    #[test]
    fn manifest_shape() {
        let m: Manifest = serde_json::from_value(serde_json::json!({
            "name": "release",
            "jobs": [{"name": "build", "command": ["make"]},
                     {"name": "test", "depends_on": ["build"], "command": ["make", "test"], "priority": 1}]
        }))
        .unwrap();
        assert_eq!(m.jobs[1].depends_on, ["build"]);
        assert_eq!(m.jobs[1].spec["priority"], 1);
        assert!(serde_json::from_value::<Manifest>(
            serde_json::json!({"name": "x", "jobs": [], "extra": 1})
        )
        .is_err());
        assert_eq!(
            idempotency_key("release", "build"),
            "manifest:release:build"
        );
    }
}
