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
//! | `users/<name>.pass`, `users/<name>.role` | a client's static user (`gf admin user create`): its password and role (`submit`) |
//! | `tls.paths` | with `--tls-cert/--tls-key`: the two paths, so a rewritten config keeps TLS |
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
/// Where `gf admin init --tls-cert/--tls-key` keeps the two paths.
pub const TLS_FILE: &str = "tls.paths";
/// The folder of clients' static users, inside the secrets folder.
pub const USERS_DIR: &str = "users";

/// What a client's static user may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientRole {
    /// Submit jobs, read them and their logs ([`gf_schemas::permissions::submitter`]).
    Submit,
}

impl ClientRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientRole::Submit => "submit",
        }
    }

    pub fn permissions(self, user: &str) -> gf_schemas::permissions::Permissions {
        match self {
            ClientRole::Submit => gf_schemas::permissions::submitter(user),
        }
    }
}

impl std::str::FromStr for ClientRole {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "submit" => Ok(ClientRole::Submit),
            other => Err(format!("`{other}` is not a client role (submit)")),
        }
    }
}

/// A client's static user in account `GF`, with its role's grant.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientUser {
    pub name: String,
    pub role: ClientRole,
    pub password: String,
}

impl std::fmt::Debug for ClientUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientUser({}, {})", self.name, self.role.as_str())
    }
}

/// The users the config itself defines: no client may take their names.
pub const RESERVED_USERS: [&str; 3] = [AUTH_USER, ADMIN_USER, SYS_USER];

/// Everything a secured deployment's coordinators and operators need.
#[derive(Clone)]
pub struct Secrets {
    pub issuer_seed: String,
    pub coordinator_seed: String,
    pub auth_password: String,
    pub admin_password: String,
    pub sys_password: String,
    /// Clients' static users, by name.
    pub users: Vec<ClientUser>,
    /// TLS on the client listener, as `gf admin init --tls-cert/--tls-key` set it
    /// (kept in `tls.paths`, so a config written again keeps it).
    pub tls: Option<ServerTls>,
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
            users: Vec::new(),
            tls: None,
        }
    }

    /// Adds client `name` with `role` and a fresh password (returned); the name must
    /// be a token (`A-Z a-z 0-9 _ -`), new, and not one of [`RESERVED_USERS`].
    pub fn add_user(&mut self, name: &str, role: ClientRole) -> anyhow::Result<String> {
        if !gf_schemas::names::is_token(name) || RESERVED_USERS.contains(&name) {
            anyhow::bail!(
                "`{name}` cannot be a user name (A-Z a-z 0-9 _ -, not {})",
                RESERVED_USERS.join(", ")
            );
        }
        if self.users.iter().any(|u| u.name == name) {
            anyhow::bail!("user `{name}` exists (remove it first to make a new password)");
        }
        let p = password();
        self.users.push(ClientUser {
            name: name.into(),
            role,
            password: p.clone(),
        });
        self.users.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(p)
    }

    /// Removes client `name`; whether it existed.
    pub fn remove_user(&mut self, name: &str) -> bool {
        let before = self.users.len();
        self.users.retain(|u| u.name != name);
        self.users.len() != before
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
        if let Some(t) = tls {
            write_secret(
                &dir.join(TLS_FILE),
                &format!("{}\n{}\n", t.cert_file, t.key_file),
            )?;
        }
        self.write_users(dir)?;
        write_secret(&dir.join("nats.conf"), &self.server_config(tls)?)?;
        Ok(())
    }

    /// Writes `users/` (one password and one role file per client; files of removed
    /// clients are deleted) and the server config, leaving the other secrets as they
    /// are. The server reads the config again on `nats-server --signal reload`.
    pub fn write_users_and_config(&self, dir: &Path) -> anyhow::Result<()> {
        self.write_users(dir)?;
        write_secret(
            &dir.join("nats.conf"),
            &self.server_config(self.tls.as_ref())?,
        )?;
        Ok(())
    }

    fn write_users(&self, dir: &Path) -> anyhow::Result<()> {
        let users = dir.join(USERS_DIR);
        for u in &self.users {
            write_secret(
                &users.join(format!("{}.pass", u.name)),
                &format!("{}\n", u.password),
            )?;
            write_secret(
                &users.join(format!("{}.role", u.name)),
                &format!("{}\n", u.role.as_str()),
            )?;
        }
        if let Ok(entries) = std::fs::read_dir(&users) {
            for e in entries.flatten() {
                let path = e.path();
                let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
                if stem.is_some_and(|n| !self.users.iter().any(|u| u.name == n)) {
                    std::fs::remove_file(&path)?;
                }
            }
        }
        Ok(())
    }

    fn read_users(dir: &Path) -> anyhow::Result<Vec<ClientUser>> {
        let users = dir.join(USERS_DIR);
        let Ok(entries) = std::fs::read_dir(&users) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().is_none_or(|x| x != "role") {
                continue;
            }
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let role: ClientRole = read_secret(&path)?
                .parse()
                .map_err(|e: String| anyhow::anyhow!("{}: {e}", path.display()))?;
            let password = read_secret(&users.join(format!("{name}.pass")))?;
            out.push(ClientUser {
                name,
                role,
                password,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Reads the secrets `write` left in `dir`.
    pub fn read(dir: &Path) -> anyhow::Result<Self> {
        let s = Self {
            issuer_seed: read_secret(&dir.join("issuer.nk"))?,
            coordinator_seed: read_secret(&dir.join("coordinator.nk"))?,
            auth_password: read_secret(&dir.join("auth.pass"))?,
            admin_password: read_secret(&dir.join("admin.pass"))?,
            sys_password: read_secret(&dir.join("sys.pass"))?,
            users: Self::read_users(dir)?,
            tls: match read_secret(&dir.join(TLS_FILE)) {
                Ok(text) => {
                    let mut lines = text.lines();
                    match (lines.next(), lines.next()) {
                        (Some(cert), Some(key)) => Some(ServerTls {
                            cert_file: cert.into(),
                            key_file: key.into(),
                        }),
                        _ => anyhow::bail!(
                            "{} is not two lines (certificate, key)",
                            dir.join(TLS_FILE).display()
                        ),
                    }
                }
                Err(_) => None,
            },
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
        // Each client's grant, rendered from `gf_schemas::permissions` (JSON is valid
        // server-config syntax).
        let clients: String = self
            .users
            .iter()
            .map(|u| {
                format!(
                    "      {{user: {}, password: {}, permissions: {}}}\n",
                    q(&u.name),
                    q(&u.password),
                    u.role.permissions(&u.name).server_config()
                )
            })
            .collect();
        let mut c = format!(
            "# Gigafactory secured NATS: written by gf admin init; keep it private (0600).\n\
             accounts {{\n\
             \x20 {AUTH_ACCOUNT}: {{ users: [ {{user: {auth_user}, password: {auth_pass}}} ] }}\n\
             \x20 GF: {{\n\
             \x20   jetstream: enabled\n\
             \x20   users: [\n\
             \x20     {{nkey: {coordinator}}}\n\
             \x20     {{user: {admin_user}, password: {admin_pass}}}\n\
             {clients}\
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

    /// `nats://<name>:<password>@host:port` for client `name`, from a server URL.
    pub fn user_url(&self, name: &str, server: &str) -> Option<String> {
        let u = self.users.iter().find(|u| u.name == name)?;
        Some(with_user(server, &u.name, &u.password))
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

    /// Client users are kept as files, rendered into the config with their grant,
    /// and removed from both.
    #[test]
    fn client_users() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Secrets::generate();
        s.write(dir.path(), None).unwrap();
        let pass = s.add_user("ci", ClientRole::Submit).unwrap();
        assert!(s.add_user("ci", ClientRole::Submit).is_err(), "twice");
        assert!(s.add_user(ADMIN_USER, ClientRole::Submit).is_err());
        assert!(s.add_user("a.b", ClientRole::Submit).is_err());
        s.write_users_and_config(dir.path()).unwrap();
        let back = Secrets::read(dir.path()).unwrap();
        assert_eq!(back.users, s.users);
        assert_eq!(back.users[0].password, pass);
        let conf = std::fs::read_to_string(dir.path().join("nats.conf")).unwrap();
        assert!(conf.contains("\"gf.rpc.submit\""), "{conf}");
        assert!(conf.contains("\"_CLIENT_ci.>\""), "{conf}");
        assert_eq!(
            back.user_url("ci", "nats://h:4222").unwrap(),
            format!("nats://ci:{pass}@h:4222")
        );
        let mut back = back;
        assert!(back.remove_user("ci"));
        back.write_users_and_config(dir.path()).unwrap();
        assert!(Secrets::read(dir.path()).unwrap().users.is_empty());
        assert!(!dir.path().join("users/ci.pass").exists());
        assert!(!std::fs::read_to_string(dir.path().join("nats.conf"))
            .unwrap()
            .contains("gf.rpc.submit"));
    }
}
