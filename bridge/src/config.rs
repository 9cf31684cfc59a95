//! The bridge's configuration: `[bridge.sources.<name>]` in `gigafactory.toml` as
//! written ([`BridgeSettings`], secrets named by environment variable, never written
//! in the file), and as used ([`BridgeConfig`]: secrets read, templates parsed,
//! durations checked), produced by [`BridgeSettings::resolve`] at load time so a bad
//! template or a missing secret stops the coordinator from starting with a clear error.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::template::Template;

/// How a source signs and shapes its webhooks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// GitHub: `X-Hub-Signature-256`, `X-GitHub-Event` (+ the payload's `action`),
    /// `X-GitHub-Delivery`.
    #[default]
    Github,
    /// Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature`; the
    /// event is the payload's `type`.
    Standard,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BridgeSettings {
    pub sources: BTreeMap<String, SourceSettings>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SourceSettings {
    pub format: Format,
    /// Environment variable holding the webhook secret (required).
    pub secret_env: String,
    /// Standard Webhooks: how far a delivery's timestamp may be from now.
    pub tolerance: String,
    /// The item's key, e.g. `{repository.full_name}#{issue.number}`. Default by format.
    pub item: Option<String>,
    /// Where the item's labels are (an array of strings or of `{name}` objects), e.g.
    /// `issue.labels`; alternatives with `|`. Default by format.
    pub labels_at: Option<String>,
    /// Rules, first match wins.
    pub rules: Vec<RuleSettings>,
    pub echo: EchoSettings,
}

impl Default for SourceSettings {
    fn default() -> Self {
        Self {
            format: Format::Github,
            secret_env: String::new(),
            tolerance: "5m".into(),
            item: None,
            labels_at: None,
            rules: Vec::new(),
            echo: EchoSettings::default(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuleSettings {
    /// Events that match, e.g. `issues.labeled` (GitHub: header event `.` action) or
    /// `ticket.created` (Standard: the payload's `type`). Empty: any.
    pub events: Vec<String>,
    /// The item must carry this label.
    pub label: Option<String>,
    /// The profile of the job (a `[profiles.<name>]`).
    pub profile: Option<String>,
    /// Arguments appended to the profile's command, each a template:
    /// `["{issue.number}", "{issue.title}"]` (one argument each, never a shell).
    pub command: Vec<String>,
    /// A template naming the item's revision (e.g. `{pull_request.head.sha}`): a new
    /// revision makes a new job. Unset: one job per item, whatever changes.
    pub revision: Option<String>,
    /// Extra labels on the job, values as templates.
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EchoSettings {
    /// Standard Webhooks POST of each state change to this URL (http).
    pub url: Option<String>,
    /// Environment variable holding the signing secret of `url` (`whsec_…`).
    pub secret_env: Option<String>,
    /// GitHub-style API base (e.g. `http://github.internal/api/v3`): a comment on
    /// the item per state change, and a commit status when the item has a `sha`.
    pub github_api: Option<String>,
    /// Environment variable holding the API token (`Authorization: Bearer`).
    pub token_env: Option<String>,
    /// Attempts per state change before it is given up (then shown as failed; an
    /// operator can redeliver it).
    pub max_attempts: u32,
    /// Backoff between attempts: doubles from `backoff` up to `backoff_max`, jittered.
    pub backoff: String,
    pub backoff_max: String,
}

impl Default for EchoSettings {
    fn default() -> Self {
        Self {
            url: None,
            secret_env: None,
            github_api: None,
            token_env: None,
            max_attempts: 20,
            backoff: "1s".into(),
            backoff_max: "1m".into(),
        }
    }
}

/// The bridge as it runs. Empty (no sources): the bridge does nothing.
#[derive(Clone, Debug, Default)]
pub struct BridgeConfig {
    pub sources: BTreeMap<String, Source>,
}

#[derive(Clone, Debug)]
pub struct Source {
    pub name: String,
    pub format: Format,
    pub secret: Vec<u8>,
    pub tolerance: Duration,
    pub item: Template,
    /// Alternatives, each a dotted path.
    pub labels_at: Vec<String>,
    pub rules: Vec<Rule>,
    pub echo: Echo,
}

#[derive(Clone, Debug)]
pub struct Rule {
    pub events: Vec<String>,
    pub label: Option<String>,
    pub profile: Option<String>,
    pub command: Vec<Template>,
    pub revision: Option<Template>,
    pub labels: BTreeMap<String, Template>,
}

#[derive(Clone, Debug)]
pub struct Echo {
    pub url: Option<String>,
    pub secret: Vec<u8>,
    pub github_api: Option<String>,
    pub token: Option<String>,
    pub max_attempts: u32,
    pub backoff: Duration,
    pub backoff_max: Duration,
}

impl Echo {
    pub fn is_configured(&self) -> bool {
        self.url.is_some() || self.github_api.is_some()
    }
}

/// A configuration error: the key (`bridge.sources.github.rules.0.command`) and what
/// is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key `{key}`: {problem}")]
pub struct ConfigError {
    pub key: String,
    pub problem: String,
}

fn dur(key: &str, text: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(text).map_err(|e| ConfigError {
        key: key.into(),
        problem: format!("`{text}` is not a duration ({e})"),
    })
}

impl BridgeSettings {
    /// Checks everything and reads the secrets from `env`. With `require_secrets`
    /// false (checking a file for a command that runs no coordinator), a secret whose
    /// variable is not set is left empty instead of being an error.
    pub fn resolve(
        &self,
        env: &BTreeMap<String, String>,
        require_secrets: bool,
    ) -> Result<BridgeConfig, ConfigError> {
        let mut sources = BTreeMap::new();
        for (name, s) in &self.sources {
            let at = |k: &str| format!("bridge.sources.{name}.{k}");
            let bad = |k: &str, problem: String| ConfigError {
                key: at(k),
                problem,
            };
            if !gf_schemas::names::is_token(name) {
                return Err(bad("", "a source name uses A-Z a-z 0-9 _ -".into()));
            }
            let secret_of = |key: &str, var: &str| -> Result<String, ConfigError> {
                match env.get(var).filter(|v| !v.is_empty()) {
                    Some(v) => Ok(v.clone()),
                    None if !require_secrets => Ok(String::new()),
                    None => Err(bad(key, format!("environment variable `{var}` is not set"))),
                }
            };
            if s.secret_env.is_empty() {
                return Err(bad(
                    "secret_env",
                    "name the environment variable holding the webhook secret".into(),
                ));
            }
            let secret = secret_of("secret_env", &s.secret_env)?;
            let secret = match s.format {
                Format::Github => secret.into_bytes(),
                Format::Standard => crate::verify::standard_key(&secret),
            };
            let default_item = match s.format {
                Format::Github => "{repository.full_name}#{issue.number|pull_request.number}",
                Format::Standard => "{data.id}",
            };
            let item = Template::parse(s.item.as_deref().unwrap_or(default_item))
                .map_err(|e| bad("item", e))?;
            let labels_at = s
                .labels_at
                .clone()
                .unwrap_or_else(|| match s.format {
                    Format::Github => "issue.labels|pull_request.labels".into(),
                    Format::Standard => "data.labels".into(),
                })
                .split('|')
                .map(|p| p.trim().to_string())
                .collect();
            let mut rules = Vec::new();
            for (i, r) in s.rules.iter().enumerate() {
                let rk = |k: &str| format!("rules.{i}.{k}");
                if let Some(p) = &r.profile {
                    gf_schemas::profile::check_name(p).map_err(|e| bad(&rk("profile"), e))?;
                }
                let parse = |k: &str, t: &str| Template::parse(t).map_err(|e| bad(&rk(k), e));
                rules.push(Rule {
                    events: r.events.clone(),
                    label: r.label.clone(),
                    profile: r.profile.clone(),
                    command: r
                        .command
                        .iter()
                        .map(|t| parse("command", t))
                        .collect::<Result<_, _>>()?,
                    revision: r
                        .revision
                        .as_deref()
                        .map(|t| parse("revision", t))
                        .transpose()?,
                    labels: r
                        .labels
                        .iter()
                        .map(|(k, t)| Ok((k.clone(), parse("labels", t)?)))
                        .collect::<Result<_, ConfigError>>()?,
                });
                if r.profile.is_none() && r.command.is_empty() {
                    return Err(bad(
                        &rk("command"),
                        "a rule needs a `profile` or a `command`".into(),
                    ));
                }
            }
            let e = &s.echo;
            for (k, url) in [("echo.url", &e.url), ("echo.github_api", &e.github_api)] {
                if let Some(u) = url {
                    if !u.starts_with("http://") && !u.starts_with("https://") {
                        return Err(bad(k, format!("`{u}` is not an http(s) URL")));
                    }
                }
            }
            let echo_secret = match (&e.url, &e.secret_env) {
                (Some(_), Some(var)) => {
                    crate::verify::standard_key(&secret_of("echo.secret_env", var)?)
                }
                (Some(_), None) => {
                    return Err(bad(
                        "echo.secret_env",
                        "`echo.url` needs a signing secret: name its environment variable".into(),
                    ))
                }
                _ => Vec::new(),
            };
            let token = match (&e.github_api, &e.token_env) {
                (Some(_), Some(var)) => Some(secret_of("echo.token_env", var)?),
                _ => None,
            };
            if e.max_attempts == 0 {
                return Err(bad("echo.max_attempts", "must be at least 1".into()));
            }
            sources.insert(
                name.clone(),
                Source {
                    name: name.clone(),
                    format: s.format,
                    secret,
                    tolerance: dur(&at("tolerance"), &s.tolerance)?,
                    item,
                    labels_at,
                    rules,
                    echo: Echo {
                        url: e.url.clone(),
                        secret: echo_secret,
                        github_api: e.github_api.clone(),
                        token,
                        max_attempts: e.max_attempts,
                        backoff: dur(&at("echo.backoff"), &e.backoff)?,
                        backoff_max: dur(&at("echo.backoff_max"), &e.backoff_max)?,
                    },
                },
            );
        }
        Ok(BridgeConfig { sources })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> BTreeMap<String, String> {
        [("GH_SECRET".to_string(), "s3cret".to_string())].into()
    }

    fn source() -> SourceSettings {
        SourceSettings {
            secret_env: "GH_SECRET".into(),
            rules: vec![RuleSettings {
                events: vec!["issues.labeled".into()],
                label: Some("agent".into()),
                profile: Some("agent".into()),
                command: vec!["{issue.number}".into()],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    /// A valid source resolves with its secret read and templates parsed.
    #[test]
    fn resolves() {
        let s = BridgeSettings {
            sources: [("github".to_string(), source())].into(),
        };
        let c = s.resolve(&env(), true).unwrap();
        let g = &c.sources["github"];
        assert_eq!(g.secret, b"s3cret");
        assert_eq!(g.tolerance, Duration::from_secs(300));
        assert_eq!(g.labels_at, ["issue.labels", "pull_request.labels"]);
    }

    /// A bad template, a missing secret or an echo URL without a secret name the key.
    #[test]
    fn errors_name_the_key() {
        let mut s = source();
        s.rules[0].command = vec!["{issue.number".into()];
        let e = BridgeSettings {
            sources: [("github".to_string(), s)].into(),
        }
        .resolve(&env(), true)
        .unwrap_err();
        assert_eq!(e.key, "bridge.sources.github.rules.0.command");
        let e = BridgeSettings {
            sources: [("github".to_string(), source())].into(),
        }
        .resolve(&BTreeMap::new(), true)
        .unwrap_err();
        assert_eq!(e.key, "bridge.sources.github.secret_env");
        assert!(e.problem.contains("GH_SECRET"), "{e}");
        let mut s = source();
        s.echo.url = Some("http://tracker/hook".into());
        let e = BridgeSettings {
            sources: [("github".to_string(), s)].into(),
        }
        .resolve(&env(), true)
        .unwrap_err();
        assert_eq!(e.key, "bridge.sources.github.echo.secret_env");
    }
}
