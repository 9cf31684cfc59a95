//! Sending one echo to a tracker: a Standard Webhooks POST (signed, `webhook-id` = the
//! echo's id) and/or a GitHub-style issue comment (carrying the echo's id) plus a
//! commit status when the item has a `sha`.

use gf_schemas::bridge::Echo;
use gf_schemas::JobState;

use crate::config::Source;

/// The body of the Standard Webhooks POST.
pub fn standard_body(echo: &Echo) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "type": "job.state_changed",
        "timestamp": echo.time,
        "data": echo,
    }))
    .expect("serializes")
}

/// The text of the GitHub-style comment; the hidden marker carries the echo's id, so
/// a duplicate comment is recognisable as one.
pub fn comment(echo: &Echo) -> String {
    let mut s = format!(
        "Gigafactory job `{}` is **{}** (attempt {}).",
        echo.job_id, echo.state, echo.attempts
    );
    if let Some(r) = &echo.reason {
        s.push_str(&format!("\n\n> {r}"));
    }
    s.push_str(&format!("\n\n<!-- gf-echo:{} -->", echo.id));
    s
}

/// A GitHub commit status state for a job state.
pub fn status_state(state: JobState) -> &'static str {
    match state {
        JobState::Succeeded => "success",
        JobState::Dead => "failure",
        JobState::Cancelled | JobState::Rejected => "error",
        _ => "pending",
    }
}

async fn post(
    http: &reqwest::Client,
    url: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> Result<(), String> {
    let mut req = http
        .post(url)
        .header("content-type", "application/json")
        .header(
            "user-agent",
            concat!("gigafactory/", env!("CARGO_PKG_VERSION")),
        );
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let resp = req
        .body(body)
        .send()
        .await
        .map_err(|e| format!("POST {url}: {e}"))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let text = resp.text().await.unwrap_or_default();
    let text: String = text.chars().take(200).collect();
    Err(format!("POST {url}: HTTP {status}: {text}"))
}

pub(crate) async fn send(http: &reqwest::Client, src: &Source, echo: &Echo) -> Result<(), String> {
    if let Some(url) = &src.echo.url {
        let body = standard_body(echo);
        let ts = echo.time.unix_millis() / 1000;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(ts);
        // The time of sending (receivers refuse stale timestamps), not of the change.
        let sig = crate::verify::sign_standard(&src.echo.secret, &echo.id, now, &body);
        post(
            http,
            url,
            &[
                ("webhook-id", echo.id.clone()),
                ("webhook-timestamp", now.to_string()),
                ("webhook-signature", sig),
            ],
            body,
        )
        .await?;
    }
    if let Some(api) = &src.echo.github_api {
        let (repo, number) = echo
            .item
            .rsplit_once('#')
            .filter(|(r, n)| r.contains('/') && n.parse::<u64>().is_ok())
            .ok_or_else(|| format!("item `{}` is not OWNER/REPO#NUMBER", echo.item))?;
        let api = api.trim_end_matches('/');
        let mut headers = vec![("accept", "application/vnd.github+json".to_string())];
        if let Some(t) = &src.echo.token {
            headers.push(("authorization", format!("Bearer {t}")));
        }
        let body = serde_json::to_vec(&serde_json::json!({"body": comment(echo)})).expect("json");
        post(
            http,
            &format!("{api}/repos/{repo}/issues/{number}/comments"),
            &headers,
            body,
        )
        .await?;
        if let Some(sha) = echo.fields.get("sha") {
            let body = serde_json::to_vec(&serde_json::json!({
                "state": status_state(echo.state),
                "context": "gigafactory",
                "description": format!("job {} is {}", echo.job_id, echo.state),
            }))
            .expect("json");
            post(
                http,
                &format!("{api}/repos/{repo}/statuses/{sha}"),
                &headers,
                body,
            )
            .await?;
        }
    }
    Ok(())
}
