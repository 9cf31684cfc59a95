//! The secrets of a secured deployment and the nats-server config they go with.
//!
//! One folder (`gf admin init`, the testkit's secured mode, `gf dev`) holds:
//!
//! | file | what |
//! | --- | --- |
//! | `issuer.nk` | the callout issuer's account seed: signs every factory's user JWT |
//! | `coordinator.nk` | the coordinators' user seed (a static nkey user of account `GF`) |
//! | `auth.pass` | password of `gf-auth`, the user the callout responders connect as |
//! | `admin.pass` | password of `gf-admin`, the operators' user (full rights in `GF`) |
//! | `sys.pass` | password of `gf-sys` (system account: kicks revoked factories) |
//! | `nats.conf` | the server's config, rendered from the above |
//!
//! Each file is written atomically with mode 0600. The server config keeps the static
//! users off the callout (`allowed_accounts`), so coordinators and operators connect
//! while no callout responder runs, and has one static nkey user (the coordinator),
//! without which the server sends no nonce and a factory's signature would be a
//! replayable bearer token.

use std::path::Path;

use anyhow::Context as _;
use nkeys::KeyPair;
use rand::RngCore as _;

use crate::files::{read_secret, write_secret};

pub const AUTH_USER: &str = "gf-auth";
pub const ADMIN_USER: &str = "gf-admin";
pub const SYS_USER: &str = "gf-sys";
/// The account the callout responders live in.
pub const AUTH_ACCOUNT: &str = "AUTH";

/// Everything a secured deployment's coordinators and operators need.
#[derive(Clone)]
pub struct Secrets {
    pub issuer_seed: String,
    pub coordinator_seed: String,
    pub auth_password: String,
    pub admin_password: String,
    pub sys_password: String,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("issuer", &self.issuer().map(|k| k.public_key()).ok())
            .finish_non_exhaustive()
    }
}

fn password() -> String {
    let mut b = [0u8; 24];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// TLS for the server's client listener (files the server reads).
#[derive(Clone, Debug, Default)]
pub struct ServerTls {
    pub cert_file: String,
    pub key_file: String,
}

impl Secrets {
    /// Fresh keys and passwords.
    pub fn generate() -> Self {
        let seed = |k: KeyPair| k.seed().expect("a generated key has a seed");
        Self {
            issuer_seed: seed(KeyPair::new_account()),
            coordinator_seed: seed(KeyPair::new_user()),
            auth_password: password(),
            admin_password: password(),
            sys_password: password(),
        }
    }

    pub fn issuer(&self) -> anyhow::Result<KeyPair> {
        KeyPair::from_seed(&self.issuer_seed).context("issuer.nk is not an account seed")
    }

    pub fn coordinator(&self) -> anyhow::Result<KeyPair> {
        KeyPair::from_seed(&self.coordinator_seed).context("coordinator.nk is not a user seed")
    }

    /// Writes every secret and `nats.conf` into `dir` (0600 each).
    pub fn write(&self, dir: &Path, tls: Option<&ServerTls>) -> anyhow::Result<()> {
        for (file, text) in [
            ("issuer.nk", &self.issuer_seed),
            ("coordinator.nk", &self.coordinator_seed),
            ("auth.pass", &self.auth_password),
            ("admin.pass", &self.admin_password),
            ("sys.pass", &self.sys_password),
        ] {
            write_secret(&dir.join(file), &format!("{text}\n"))
                .with_context(|| format!("cannot write {}", dir.join(file).display()))?;
        }
        write_secret(&dir.join("nats.conf"), &self.server_config(tls)?)?;
        Ok(())
    }

    /// Reads the secrets `write` left in `dir`.
    pub fn read(dir: &Path) -> anyhow::Result<Self> {
        let s = Self {
            issuer_seed: read_secret(&dir.join("issuer.nk"))?,
            coordinator_seed: read_secret(&dir.join("coordinator.nk"))?,
            auth_password: read_secret(&dir.join("auth.pass"))?,
            admin_password: read_secret(&dir.join("admin.pass"))?,
            sys_password: read_secret(&dir.join("sys.pass"))?,
        };
        s.issuer()?;
        s.coordinator()?;
        Ok(s)
    }

    /// The nats-server config (without listen address, port or store: those stay on
    /// the command line, or are appended by the deployment).
    pub fn server_config(&self, tls: Option<&ServerTls>) -> anyhow::Result<String> {
        let q = |s: &str| serde_json::to_string(s).expect("a string");
        let coordinator = self.coordinator()?.public_key();
        let issuer = self.issuer()?.public_key();
        let mut c = format!(
            "# Gigafactory secured NATS: written by gf admin init; keep it private (0600).\n\
             accounts {{\n\
             \x20 {AUTH_ACCOUNT}: {{ users: [ {{user: {auth_user}, password: {auth_pass}}} ] }}\n\
             \x20 GF: {{\n\
             \x20   jetstream: enabled\n\
             \x20   users: [\n\
             \x20     {{nkey: {coordinator}}}\n\
             \x20     {{user: {admin_user}, password: {admin_pass}}}\n\
             \x20   ]\n\
             \x20 }}\n\
             \x20 SYS: {{ users: [ {{user: {sys_user}, password: {sys_pass}}} ] }}\n\
             }}\n\
             system_account: SYS\n\
             authorization {{\n\
             \x20 # Seconds a connecting client (and the callout answering for it) may take.\n\
             \x20 timeout: 5\n\
             \x20 auth_callout {{\n\
             \x20   issuer: {issuer}\n\
             \x20   auth_users: [ {auth_user} ]\n\
             \x20   account: {AUTH_ACCOUNT}\n\
             \x20   # Only unknown users (factories) go to the callout; static users never wait on it.\n\
             \x20   allowed_accounts: [ {AUTH_ACCOUNT} ]\n\
             \x20 }}\n\
             }}\n",
            auth_user = q(AUTH_USER),
            auth_pass = q(&self.auth_password),
            admin_user = q(ADMIN_USER),
            admin_pass = q(&self.admin_password),
            sys_user = q(SYS_USER),
            sys_pass = q(&self.sys_password),
        );
        if let Some(t) = tls {
            c.push_str(&format!(
                "tls {{\n  cert_file: {}\n  key_file: {}\n  timeout: 5\n}}\n",
                q(&t.cert_file),
                q(&t.key_file)
            ));
        }
        Ok(c)
    }

    /// `nats://gf-admin:<password>@host:port` for an operator, from a server URL.
    pub fn admin_url(&self, server: &str) -> String {
        with_user(server, ADMIN_USER, &self.admin_password)
    }
}

/// `url` with `user:password@` put in (replacing any there).
pub fn with_user(url: &str, user: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("nats", url));
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    format!("{scheme}://{user}:{password}@{host}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_read_and_config() {
        let dir = tempfile::tempdir().unwrap();
        let s = Secrets::generate();
        s.write(dir.path(), None).unwrap();
        let back = Secrets::read(dir.path()).unwrap();
        assert_eq!(back.issuer_seed, s.issuer_seed);
        let conf = std::fs::read_to_string(dir.path().join("nats.conf")).unwrap();
        assert!(conf.contains(&s.coordinator().unwrap().public_key()));
        assert!(conf.contains("allowed_accounts"));
        assert!(
            !conf.contains(&s.issuer_seed),
            "only the issuer's public key"
        );
        assert_eq!(
            with_user("nats://x:y@h:4222", "a", "b"),
            "nats://a:b@h:4222"
        );
        assert_eq!(with_user("h:1", "a", "b"), "nats://a:b@h:1");
    }
}
