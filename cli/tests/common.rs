//! Shared fixtures for the fabric tests: a real NATS, a coordinator, workers, and a
//! client that speaks the RPC plane.
#![allow(dead_code)]

use std::time::Duration;

use gf_schemas::names::rpc;
use gf_schemas::rpc::{GetJobRequest, SubmitReply};
use gf_schemas::{JobId, JobRecord, JobSpec, JobState};
use gf_testkit::{eventually, NatsServer};
use gf_worker::RpcClient;

pub use gf_testkit::{coordinator_config, init_tracing, worker_config, Running};

pub struct Client {
    pub rpc: RpcClient,
    pub nats: async_nats::Client,
}

impl Client {
    pub async fn connect(nats: &NatsServer) -> anyhow::Result<Self> {
        let c = async_nats::connect(nats.url()).await?;
        Ok(Self {
            rpc: RpcClient::new(c.clone(), Duration::from_secs(5)),
            nats: c,
        })
    }

    pub async fn submit(&self, spec: &JobSpec) -> anyhow::Result<SubmitReply> {
        Ok(self.rpc.call(rpc::SUBMIT, spec).await?)
    }

    pub async fn job(&self, id: JobId) -> anyhow::Result<JobRecord> {
        Ok(self
            .rpc
            .call(rpc::GET_JOB, &GetJobRequest { job_id: id })
            .await?)
    }

    /// Waits until the job is in a terminal state and returns it.
    pub async fn wait_terminal(&self, id: JobId, timeout: Duration) -> anyhow::Result<JobRecord> {
        eventually(timeout, &format!("job {id} to finish"), || async {
            self.job(id).await.ok().filter(|r| r.state.is_terminal())
        })
        .await
    }

    pub async fn wait_state(
        &self,
        id: JobId,
        state: JobState,
        timeout: Duration,
    ) -> anyhow::Result<JobRecord> {
        eventually(timeout, &format!("job {id} to be {state}"), || async {
            self.job(id).await.ok().filter(|r| r.state == state)
        })
        .await
    }
}

/// `sh -c SCRIPT` as a job.
pub fn sh(script: &str) -> JobSpec {
    JobSpec::command(["sh", "-c", script])
}
