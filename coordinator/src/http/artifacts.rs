//! A job's artifacts and checkpoint over HTTP: the list, and each file's bytes
//! streamed from the object store (checked against its SHA-256 as it goes: a
//! mismatch breaks the transfer rather than delivering a wrong file).

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use gf_schemas::artifact::JobArtifacts;
use schemars::JsonSchema;
use serde::Deserialize;

use super::{parse_job_id, ApiError, AppState};

fn store(st: &AppState) -> Result<&crate::artifacts::Artifacts, ApiError> {
    st.service
        .artifacts
        .get()
        .ok_or_else(|| ApiError::unavailable("artifact store not open"))
}

/// `GET /api/jobs/{id}/artifacts`
pub async fn list(
    State(st): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<JobArtifacts>, ApiError> {
    let id = parse_job_id(&id?.0)?;
    Ok(Json(crate::artifacts::list(&st.service, &id).await?))
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AttemptQuery {
    /// Which attempt's file (1 for the first); default the latest that left one.
    pub attempt: Option<u32>,
}

/// `GET /api/jobs/{id}/artifacts/{name}`: the file's bytes. A name with directories
/// is sent URL-encoded (`out%2Freport.html`).
pub async fn get(
    State(st): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<AttemptQuery>, QueryRejection>,
) -> Result<aide::NoApi<Response>, ApiError> {
    let (id, name) = path?.0;
    let id = parse_job_id(&id)?;
    let Query(q) = q?;
    let (info, body) = store(&st)?.download(&id, &name, q.attempt).await?;
    let file: String = name
        .rsplit('/')
        .next()
        .unwrap_or(&name)
        .chars()
        .filter(|c| c.is_ascii_graphic() && *c != '"' && *c != '\\')
        .collect();
    Ok(aide::NoApi(bytes_response(
        body,
        info.size,
        &info.sha256,
        "application/octet-stream",
        &file,
    )))
}

/// `GET /api/jobs/{id}/checkpoint`: the job's last checkpoint, a tar archive.
pub async fn checkpoint(
    State(st): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<aide::NoApi<Response>, ApiError> {
    let id = parse_job_id(&id?.0)?;
    let store = store(&st)?;
    let Some(c) = store.list(&id).await?.checkpoint else {
        return Err(ApiError::not_found(format!("job {id} has no checkpoint")));
    };
    let body = store.read(c.nuid.clone(), c.chunks, c.sha256.clone());
    Ok(aide::NoApi(bytes_response(
        body,
        c.size,
        &c.sha256,
        "application/x-tar",
        &format!("{id}-checkpoint.tar"),
    )))
}

fn bytes_response(
    body: impl futures::Stream<Item = Result<bytes::Bytes, gf_schemas::RpcError>> + Send + 'static,
    size: u64,
    sha256: &str,
    content_type: &'static str,
    file: &str,
) -> Response {
    let body = Body::from_stream(body.map(|r| r.map_err(|e| std::io::Error::other(e.message))));
    (
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (header::CONTENT_LENGTH, size.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file}\""),
            ),
            (
                header::HeaderName::from_static("x-gf-sha256"),
                sha256.to_string(),
            ),
        ],
        body,
    )
        .into_response()
}
