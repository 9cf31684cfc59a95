//! `gf artifacts ID [--get NAME]`: a job's stored artifacts and checkpoint, and
//! downloading one, through the coordinators' RPC plane (a chunk per request, the
//! whole checked against its SHA-256).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use base64::Engine as _;
use clap::Args;
use gf_schemas::artifact::{ArtifactReadReply, ArtifactReadRequest, JobArtifacts};
use gf_schemas::names::rpc;
use gf_schemas::rpc::GetJobRequest;
use gf_schemas::JobId;
use gf_worker::RpcClient;
use sha2::{Digest, Sha256};

use crate::{connect, output};

#[derive(Args, Debug)]
pub struct ArtifactsArgs {
    /// The job.
    pub id: JobId,
    /// Download this artifact (its path as listed) instead of listing.
    #[arg(long, value_name = "NAME", conflicts_with = "checkpoint")]
    pub get: Option<String>,
    /// Download the job's last checkpoint (a tar archive) instead of listing.
    #[arg(long)]
    pub checkpoint: bool,
    /// With --get: which attempt's file (default: the latest attempt that left one).
    #[arg(long)]
    pub attempt: Option<u32>,
    /// With --get or --checkpoint: write here instead of to standard output.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Print the listing as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn artifacts(url: &str, a: ArtifactsArgs) -> anyhow::Result<ExitCode> {
    let client = RpcClient::new(connect(url).await?, Duration::from_secs(30));
    if a.get.is_some() || a.checkpoint {
        return download(&client, &a).await;
    }
    let all: JobArtifacts = client
        .call(rpc::ARTIFACT_LIST, &GetJobRequest { job_id: a.id })
        .await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(ExitCode::SUCCESS);
    }
    if all.files.is_empty() {
        eprintln!("job {} has no artifacts", a.id);
    } else {
        let rows: Vec<Vec<String>> = all
            .files
            .iter()
            .map(|f| {
                vec![
                    f.name.clone(),
                    f.attempt.to_string(),
                    f.size.to_string(),
                    f.sha256[..12.min(f.sha256.len())].to_string(),
                    f.uploaded_at.to_string(),
                ]
            })
            .collect();
        println!(
            "{}",
            output::table(&["NAME", "ATTEMPT", "BYTES", "SHA-256", "UPLOADED"], &rows)
        );
    }
    if let Some(c) = &all.checkpoint {
        println!(
            "checkpoint: {} bytes from attempt {} (epoch {}), saved {}",
            c.size, c.attempt, c.epoch, c.saved_at
        );
    }
    for e in &all.errors {
        println!("refused (attempt {}): {}", e.attempt, e.message);
    }
    Ok(ExitCode::SUCCESS)
}

async fn download(client: &RpcClient, a: &ArtifactsArgs) -> anyhow::Result<ExitCode> {
    let mut req = ArtifactReadRequest {
        job_id: a.id,
        name: a.get.clone().unwrap_or_default(),
        attempt: a.attempt,
        checkpoint: a.checkpoint,
        after: None,
    };
    let mut out: Box<dyn std::io::Write> = match &a.output {
        Some(p) => Box::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut hash = Sha256::new();
    let mut read = 0u32;
    let mut bytes = 0u64;
    loop {
        let r: ArtifactReadReply = client.call(rpc::ARTIFACT_READ, &req).await?;
        if r.chunks == 0 {
            break;
        }
        let data = base64::engine::general_purpose::STANDARD
            .decode(r.data.as_bytes())
            .context("a chunk is not base64")?;
        hash.update(&data);
        out.write_all(&data)?;
        bytes += data.len() as u64;
        read += 1;
        if read >= r.chunks {
            if bytes != r.size || hex::encode(hash.clone().finalize()) != r.sha256 {
                bail!("the download does not match the stored size and SHA-256");
            }
            break;
        }
        req.after = Some(r.next);
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
