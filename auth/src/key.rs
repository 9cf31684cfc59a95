//! A factory's own key: generated on the factory, kept beside its id, never sent.
//!
//! `<dir>/factory.nk` holds the nkey seed (0600, written atomically); `<dir>/factory.id`
//! the factory id it enrolled as. The worker signs each connection's nonce with it;
//! the first connection also carries the enrollment token.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use anyhow::{bail, Context as _};
use gf_schemas::WorkerId;
use nkeys::KeyPair;

use crate::files::{read_secret, write_secret};
use crate::token::EnrollToken;

pub const SEED_FILE: &str = "factory.nk";
/// A rotation's new seed, until the server accepted it.
pub const NEXT_SEED_FILE: &str = "factory.nk.next";
pub const ID_FILE: &str = "factory.id";

/// A factory's identity on this host.
#[derive(Clone)]
pub struct FactoryKey {
    dir: PathBuf,
    id: WorkerId,
    /// Swapped on rotation; read by every (re)connect.
    key: Arc<RwLock<Arc<KeyPair>>>,
    /// Sent with connections until one succeeded (then the key alone is enough).
    enroll: Arc<Mutex<Option<String>>>,
    /// A rotation in progress: connections use this key, proving the current one.
    next: Arc<Mutex<Option<Arc<KeyPair>>>>,
}

impl std::fmt::Debug for FactoryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FactoryKey({}, {})", self.id, self.public_key())
    }
}

impl FactoryKey {
    /// Loads the key and id in `dir`, creating what is missing: the id (from `id`, or
    /// `fallback_id()`) and a fresh key. An `id` that differs from the stored one is an
    /// error (one key directory is one factory).
    pub fn load_or_create(
        dir: &Path,
        id: Option<&WorkerId>,
        fallback_id: impl FnOnce() -> WorkerId,
    ) -> anyhow::Result<Self> {
        let id_path = dir.join(ID_FILE);
        let stored =
            if id_path.exists() {
                let raw = read_secret(&id_path)?;
                Some(WorkerId::new(raw.clone()).with_context(|| {
                    format!("{}: `{raw}` is not a factory id", id_path.display())
                })?)
            } else {
                None
            };
        let id = match (stored, id) {
            (Some(s), Some(asked)) if &s != asked => bail!(
                "{} holds the key of factory `{s}`, not `{asked}`: use another --key-dir, or drop --id",
                dir.display()
            ),
            (Some(s), _) => s,
            (None, Some(asked)) => asked.clone(),
            (None, None) => fallback_id(),
        };
        let seed_path = dir.join(SEED_FILE);
        let key = if seed_path.exists() {
            let seed = read_secret(&seed_path)?;
            let k = KeyPair::from_seed(&seed)
                .with_context(|| format!("{} is not an nkey seed", seed_path.display()))?;
            if k.key_pair_type() != nkeys::KeyPairType::User {
                bail!("{} is not a user nkey seed", seed_path.display());
            }
            k
        } else {
            let k = KeyPair::new_user();
            write_secret(&seed_path, &format!("{}\n", k.seed()?))
                .with_context(|| format!("cannot write {}", seed_path.display()))?;
            k
        };
        // The id after the key: a directory with an id has a key.
        if !id_path.exists() {
            write_secret(&id_path, &format!("{id}\n"))
                .with_context(|| format!("cannot write {}", id_path.display()))?;
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            id,
            key: Arc::new(RwLock::new(Arc::new(key))),
            enroll: Arc::new(Mutex::new(None)),
            next: Arc::new(Mutex::new(None)),
        })
    }

    /// Starts a rotation: a fresh key (saved as `factory.nk.next`, 0600) that the next
    /// connections use, each proving the current key too. Reconnect, then
    /// [`FactoryKey::commit_rotation`] once connected, or
    /// [`FactoryKey::abort_rotation`].
    pub fn begin_rotation(&self) -> anyhow::Result<String> {
        let next = KeyPair::new_user();
        let path = self.dir.join(NEXT_SEED_FILE);
        write_secret(&path, &format!("{}\n", next.seed()?))
            .with_context(|| format!("cannot write {}", path.display()))?;
        let public = next.public_key();
        *self.next.lock().expect("next") = Some(Arc::new(next));
        Ok(public)
    }

    /// The server took the new key: it becomes the key (`factory.nk`, atomically).
    pub fn commit_rotation(&self) -> anyhow::Result<()> {
        let Some(next) = self.next.lock().expect("next").take() else {
            bail!("no rotation in progress");
        };
        std::fs::rename(self.dir.join(NEXT_SEED_FILE), self.dir.join(SEED_FILE))
            .context("cannot install the new key")?;
        *self.key.write().expect("key") = next;
        Ok(())
    }

    /// The rotation did not go through: keep the current key.
    pub fn abort_rotation(&self) {
        self.next.lock().expect("next").take();
        let _ = std::fs::remove_file(self.dir.join(NEXT_SEED_FILE));
    }

    pub fn id(&self) -> &WorkerId {
        &self.id
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn public_key(&self) -> String {
        self.key.read().expect("key").public_key()
    }

    /// Sends `token` with the next connections, until [`FactoryKey::enrolled`].
    pub fn enroll_with(&self, token: &EnrollToken) {
        *self.enroll.lock().expect("enroll") = Some(token.reveal());
    }

    /// The key is known to the coordinators now: forget the token.
    pub fn enrolled(&self) {
        self.enroll.lock().expect("enroll").take();
    }

    /// Connection options that authenticate as this factory on every (re)connect:
    /// its public key and its signature over the server's nonce (plus the token
    /// while enrolling), named `gf-worker <id>`.
    pub fn connect_options(&self) -> async_nats::ConnectOptions {
        let (key, enroll, next) = (self.key.clone(), self.enroll.clone(), self.next.clone());
        async_nats::ConnectOptions::with_auth_callback(move |nonce| {
            let key = key.read().expect("key").clone();
            let token = enroll.lock().expect("enroll").clone();
            let next = next.lock().expect("next").clone();
            async move {
                let mut auth = async_nats::Auth::new();
                let signer = match &next {
                    Some(n) => {
                        auth.token = Some(
                            crate::callout::rotation_proof(&key, &nonce)
                                .map_err(async_nats::AuthError::new)?,
                        );
                        n.clone()
                    }
                    None => {
                        auth.token = token;
                        key
                    }
                };
                auth.nkey = Some(signer.public_key());
                auth.signature = Some(signer.sign(&nonce).map_err(async_nats::AuthError::new)?);
                Ok(auth)
            }
        })
        .name(format!("{}{}", crate::callout::CLIENT_NAME_PREFIX, self.id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let f1 = WorkerId::new("f1").unwrap();
        let k = FactoryKey::load_or_create(dir.path(), Some(&f1), || unreachable!()).unwrap();
        let again =
            FactoryKey::load_or_create(dir.path(), None, || WorkerId::new("x").unwrap()).unwrap();
        assert_eq!(again.id(), &f1);
        assert_eq!(again.public_key(), k.public_key());
        let other = WorkerId::new("f2").unwrap();
        let err = FactoryKey::load_or_create(dir.path(), Some(&other), || unreachable!())
            .unwrap_err()
            .to_string();
        assert!(err.contains("f1") && err.contains("f2"), "{err}");
        let seed = std::fs::read_to_string(dir.path().join(SEED_FILE)).unwrap();
        assert!(seed.starts_with("SU"));
    }
}
