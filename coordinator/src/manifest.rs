//! Manifests: a named set of jobs with dependencies by name, submitted as one unit.
//!
//! Everything is checked before anything is created: the graph (unknown names,
//! cycles), every job's spec and profile. Jobs are then created in dependency order,
//! each with the idempotency key derived from the manifest's and the job's names, so a
//! repeated submission creates nothing new and a submission cut off midway (a crash,
//! a lost connection) is completed, not duplicated, by the next one. The manifest's
//! record (job names → ids) is written last and rewritten by every submission.

use async_nats::jetstream::kv;
use gf_schemas::manifest::{
    idempotency_key, ManifestEntry, ManifestJobStatus, ManifestRecord, ManifestStatus,
};
use gf_schemas::{names, ErrorKind, JobId, Manifest, RpcError};

use crate::error::StoreError;
use crate::service::Service;
use crate::store::encode;

/// Labels every job of a manifest carries.
pub const LABEL_MANIFEST: &str = "manifest";
pub const LABEL_MANIFEST_JOB: &str = "manifest.job";

fn invalid(msg: impl Into<String>) -> RpcError {
    RpcError::new(ErrorKind::Invalid, msg)
}

fn transport(e: impl std::fmt::Display) -> RpcError {
    StoreError::Transport(e.to_string()).into()
}

impl Service {
    async fn manifests(&self) -> Result<kv::Store, RpcError> {
        self.store
            .js
            .get_key_value(names::BUCKET_MANIFESTS)
            .await
            .map_err(transport)
    }

    /// Submits a manifest (see the module's documentation).
    pub async fn manifest_submit(&self, m: Manifest) -> Result<ManifestStatus, RpcError> {
        let order = m.plan().map_err(|e| invalid(e.to_string()))?;
        // Every job is checked before the first is created.
        let mut specs = Vec::with_capacity(m.jobs.len());
        for job in &m.jobs {
            let spec = job.spec().map_err(|e| invalid(e.to_string()))?;
            let (resolved, _) = crate::profiles::apply(&self.config.profiles, spec.clone())
                .map_err(|e| invalid(format!("job `{}`: {}", job.name, e.message)))?;
            resolved
                .validate()
                .map_err(|e| invalid(format!("job `{}`: {e}", job.name)))?;
            specs.push(spec);
        }
        let mut ids: Vec<Option<JobId>> = vec![None; m.jobs.len()];
        let mut statuses = Vec::with_capacity(m.jobs.len());
        let mut created = 0;
        for &i in &order {
            let job = &m.jobs[i];
            let mut spec = specs[i].clone();
            spec.idempotency_key = Some(idempotency_key(&m.name, &job.name));
            spec.depends_on = job
                .depends_on
                .iter()
                .map(|d| {
                    let k = m.jobs.iter().position(|j| &j.name == d).expect("planned");
                    ids[k].expect("created in dependency order")
                })
                .collect();
            spec.labels.insert(LABEL_MANIFEST.into(), m.name.clone());
            spec.labels
                .insert(LABEL_MANIFEST_JOB.into(), job.name.clone());
            let reply = self.submit_spec(spec).await.map_err(|e| {
                RpcError::new(
                    e.kind,
                    format!(
                        "job `{}`: {} (jobs before it were created; submit the manifest again to complete it)",
                        job.name, e.message
                    ),
                )
            })?;
            if !reply.duplicate {
                created += 1;
            }
            ids[i] = Some(reply.job_id);
            statuses.push(ManifestJobStatus {
                name: job.name.clone(),
                job_id: reply.job_id,
                state: Some(reply.state),
                reason: None,
                depends_on: job.depends_on.clone(),
            });
        }
        let bucket = self.manifests().await?;
        let now = self.clock.now();
        let first = match bucket.get(&m.name).await.map_err(transport)? {
            Some(v) => serde_json::from_slice::<ManifestRecord>(&v)
                .map(|r| r.submitted_at)
                .unwrap_or(now),
            None => now,
        };
        let record = ManifestRecord {
            name: m.name.clone(),
            submitted_at: first,
            updated_at: now,
            jobs: statuses
                .iter()
                .map(|s| ManifestEntry {
                    name: s.name.clone(),
                    job_id: s.job_id,
                    depends_on: s.depends_on.clone(),
                })
                .collect(),
        };
        bucket
            .put(&m.name, encode(&record))
            .await
            .map_err(transport)?;
        Ok(ManifestStatus {
            name: m.name,
            created,
            submitted_at: first,
            jobs: statuses,
        })
    }

    /// A manifest's jobs (in creation order) with their current states.
    pub async fn manifest_get(&self, name: &str) -> Result<ManifestStatus, RpcError> {
        let not_found = || RpcError::new(ErrorKind::NotFound, format!("no manifest {name}"));
        if !names::is_token(name) {
            return Err(not_found());
        }
        let bucket = self.manifests().await?;
        let Some(v) = bucket.get(name).await.map_err(transport)? else {
            return Err(not_found());
        };
        let record: ManifestRecord = serde_json::from_slice(&v).map_err(|e| {
            RpcError::from(StoreError::Corrupt {
                key: name.into(),
                error: e.to_string(),
            })
        })?;
        let mut jobs = Vec::with_capacity(record.jobs.len());
        for e in record.jobs {
            let rec = self.store.load_job(&e.job_id).await?.map(|(r, _)| r);
            jobs.push(ManifestJobStatus {
                name: e.name,
                job_id: e.job_id,
                state: rec.as_ref().map(|r| r.state),
                reason: rec.and_then(|r| r.reason),
                depends_on: e.depends_on,
            });
        }
        Ok(ManifestStatus {
            name: record.name,
            created: 0,
            submitted_at: record.submitted_at,
            jobs,
        })
    }

    /// The configured profiles.
    pub async fn profile_list(&self) -> Result<Vec<gf_schemas::NamedProfile>, RpcError> {
        Ok(crate::profiles::list(&self.config.profiles))
    }
}
