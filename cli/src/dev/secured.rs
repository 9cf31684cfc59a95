//! What a secured `gf dev` makes for itself: the deployment's secrets (as `gf admin
//! init` writes them), an operator API token, and its workers' enrollment. Made once
//! under the data folder; a re-run reuses all of it (same credentials, same factory
//! keys, no new tokens).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use gf_auth::files::{read_secret, write_secret};
use gf_auth::store::FactoryState;
use gf_auth::{EnrollToken, FactoryKey, Secrets, Store, TokenSpec};
use gf_schemas::{Timestamp, WorkerId};
use sha2::Digest as _;

/// The HTTP API token `gf dev` gives its coordinator (operator role), beside the
/// NATS secrets.
pub const API_TOKEN_FILE: &str = "dev-api.token";

/// A secured dev fleet's credentials.
pub struct DevSecrets {
    pub dir: PathBuf,
    pub secrets: Secrets,
    /// The operator's HTTP API token (the coordinator holds only its hash).
    pub api_token: String,
    /// Made by this run (not found from an earlier one).
    pub created: bool,
}

impl DevSecrets {
    /// Reads the secrets in `dir`, making them first if there are none. The server
    /// config is written again each time, so a newer `gf` brings its own.
    pub fn load_or_init(dir: &Path) -> anyhow::Result<Self> {
        let created = !dir.join("issuer.nk").exists();
        let secrets = if created {
            let s = Secrets::generate();
            s.write(dir, None)
                .with_context(|| format!("cannot write secrets into {}", dir.display()))?;
            s
        } else {
            let s = Secrets::read(dir).with_context(|| {
                format!(
                    "{} holds unreadable secrets (delete it to start over)",
                    dir.display()
                )
            })?;
            s.write_users_and_config(dir)?;
            s
        };
        let token_path = dir.join(API_TOKEN_FILE);
        let api_token = if token_path.exists() {
            read_secret(&token_path)?
        } else {
            let t = format!("gf_{}", hex::encode(rand::random::<[u8; 24]>()));
            write_secret(&token_path, &format!("{t}\n"))?;
            t
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            secrets,
            api_token,
            created,
        })
    }

    pub fn nats_conf(&self) -> PathBuf {
        self.dir.join("nats.conf")
    }

    /// The coordinator's API token table: this one token, operator role.
    pub fn api_auth(&self) -> gf_coordinator::config::AuthConfig {
        gf_coordinator::config::AuthConfig {
            enabled: true,
            tokens: vec![gf_coordinator::config::ApiToken {
                name: "gf-dev".into(),
                role: gf_coordinator::config::Role::Operator,
                sha256_hex: hex::encode(sha2::Sha256::digest(self.api_token.as_bytes())),
            }],
        }
    }
}

/// A dev worker's key folder, and the token it enrolls with when it is not enrolled.
pub struct Enrollment {
    pub key_dir: PathBuf,
    pub token: Option<EnrollToken>,
}

/// Makes sure each factory in `ids` has a key under `dir` and, unless that key is
/// already enrolled, a one-use token to enroll it with (valid from loopback only).
pub async fn enrollments(
    admin: &async_nats::Client,
    dir: &Path,
    ids: &[WorkerId],
) -> anyhow::Result<Vec<Enrollment>> {
    let store = Store::open(&async_nats::jetstream::new(admin.clone()), 1)
        .await
        .context("cannot open the enrollment buckets")?;
    let mut out = Vec::new();
    for id in ids {
        let key_dir = dir.join(id.as_str());
        let key = FactoryKey::load_or_create(&key_dir, Some(id), || id.clone())?;
        let known = store.by_key(&key.public_key()).await?;
        let token = match known {
            Some(f) if &f.id == id && f.state == FactoryState::Active => None,
            _ => {
                if let Some(f) = store.factory(id).await? {
                    bail!(
                        "factory `{id}` is enrolled with another key or was revoked ({}): delete {} to start the dev fleet over",
                        f.state.as_str(),
                        dir.parent().unwrap_or(dir).display()
                    );
                }
                let spec = TokenSpec {
                    ttl: Duration::from_secs(600),
                    uses: 1,
                    cidrs: ["127.0.0.0/8", "::1/128"]
                        .iter()
                        .map(|c| c.parse().map_err(anyhow::Error::msg))
                        .collect::<anyhow::Result<_>>()?,
                    ..Default::default()
                };
                Some(store.create_token(&spec, Timestamp::now_local()).await?.0)
            }
        };
        out.push(Enrollment { key_dir, token });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Made once, then read back unchanged (a re-run keeps every credential).
    #[test]
    fn secrets_are_made_once() {
        let dir = tempfile::tempdir().unwrap();
        let first = DevSecrets::load_or_init(dir.path()).unwrap();
        assert!(first.created);
        let again = DevSecrets::load_or_init(dir.path()).unwrap();
        assert!(!again.created);
        assert_eq!(again.api_token, first.api_token);
        assert_eq!(again.secrets.admin_password, first.secrets.admin_password);
        assert!(std::fs::read_to_string(again.nats_conf())
            .unwrap()
            .contains("auth_callout"));
        let auth = again.api_auth();
        assert!(auth.enabled);
        assert_eq!(auth.tokens[0].sha256_hex.len(), 64);
    }
}
