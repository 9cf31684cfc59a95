//! Enrollment tokens and enrolled factories in KV (`gf_enroll`, `gf_factories`).
//!
//! Every change is a compare-and-set on the entry's revision, so coordinator replicas
//! answering callouts at once never lose a use count or a key. A factory is stored as
//! `f.<id>` with an index entry `k.<nkey>` → id per key it may connect with; the index
//! is created before the record at enrollment (and removed again if the record cannot
//! be created), so a key never maps to a factory someone else holds.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::TryStreamExt as _;
use gf_schemas::names::auth as names;
use gf_schemas::{Capabilities, ConsumerName, Timestamp, WorkerId};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::token::EnrollToken;

/// The store failed (not a refusal: the callout answers nothing and the client retries).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("NATS KV: {0}")]
    Transport(String),
    #[error("corrupt record {key}: {error}")]
    Corrupt { key: String, error: String },
    #[error("too many concurrent changes to {0}; try again")]
    Contended(String),
    #[error("{0}")]
    NotFound(String),
}

fn transport(e: impl std::fmt::Display) -> StoreError {
    StoreError::Transport(e.to_string())
}

/// Why a connecting client was not let in. The server only tells the client
/// "Authorization Violation"; this is what the coordinators log, record on the token and
/// show in `gf factory token list`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("malformed authorization request: {0}")]
    BadRequest(String),
    #[error("no nkey signature over the server's nonce: {0}")]
    NoProof(String),
    #[error("the nkey signature over the nonce does not verify")]
    BadSignature,
    #[error("unknown key and no enrollment token")]
    UnknownKey,
    #[error("the enrollment token is malformed: {0}")]
    BadToken(String),
    #[error("enrollment token {0} does not exist")]
    UnknownToken(String),
    #[error("enrollment token {0}: wrong secret")]
    WrongSecret(String),
    #[error("enrollment token {0} was revoked")]
    TokenRevoked(String),
    #[error("enrollment token {0} expired at {1}")]
    TokenExpired(String, Timestamp),
    #[error("enrollment token {0} is used up")]
    TokenUsedUp(String),
    #[error("enrollment token {0} does not allow connections from {1}")]
    OutsideCidr(String, String),
    #[error("the client name must be `gf-worker <factory id>` to enroll: {0}")]
    NoFactoryId(String),
    #[error("factory id {0} is already enrolled with another key")]
    IdTaken(WorkerId),
    #[error("factory {0} was revoked")]
    FactoryRevoked(WorkerId),
    #[error("key rotation refused: {0}")]
    BadRotation(String),
    #[error("store unavailable: {0}")]
    Store(String),
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        Refusal::Store(e.to_string())
    }
}

impl Refusal {
    /// A stable code for the reason (events start their message with it).
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::BadRequest(_) => "bad_request",
            Refusal::NoProof(_) => "no_proof",
            Refusal::BadSignature => "bad_signature",
            Refusal::UnknownKey => "unknown_key",
            Refusal::BadToken(_) => "bad_token",
            Refusal::UnknownToken(_) => "unknown_token",
            Refusal::WrongSecret(_) => "wrong_secret",
            Refusal::TokenRevoked(_) => "token_revoked",
            Refusal::TokenExpired(..) => "token_expired",
            Refusal::TokenUsedUp(_) => "token_used_up",
            Refusal::OutsideCidr(..) => "outside_cidr",
            Refusal::NoFactoryId(_) => "no_factory_id",
            Refusal::IdTaken(_) => "id_taken",
            Refusal::FactoryRevoked(_) => "factory_revoked",
            Refusal::BadRotation(_) => "bad_rotation",
            Refusal::Store(_) => "store_unavailable",
        }
    }

    /// About an enrollment (its token, or the id it asked for), not about a key.
    pub fn is_enrollment(&self) -> bool {
        matches!(
            self,
            Refusal::BadToken(_)
                | Refusal::UnknownToken(_)
                | Refusal::WrongSecret(_)
                | Refusal::TokenRevoked(_)
                | Refusal::TokenExpired(..)
                | Refusal::TokenUsedUp(_)
                | Refusal::OutsideCidr(..)
                | Refusal::NoFactoryId(_)
                | Refusal::IdTaken(_)
        )
    }

    /// The token a refusal concerns, to record it there.
    pub fn token_id(&self) -> Option<&str> {
        match self {
            Refusal::UnknownToken(_) => None,
            Refusal::WrongSecret(t)
            | Refusal::TokenRevoked(t)
            | Refusal::TokenExpired(t, _)
            | Refusal::TokenUsedUp(t)
            | Refusal::OutsideCidr(t, _) => Some(t),
            _ => None,
        }
    }
}

/// What a token allows, as the operator asked for it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenSpec {
    pub ttl: Duration,
    pub uses: u32,
    /// The queue its factories serve (their only one); `None`: whatever they register.
    pub pool: Option<String>,
    /// Approved capability values; with `tags`, when either is non-empty a factory
    /// gets only these (plus its detected `os`, `arch`, `cpus`, `memory_mb`).
    pub caps: BTreeMap<String, String>,
    pub tags: BTreeSet<String>,
    /// Networks it may enroll from (`10.0.0.0/8`, `::1/128`); empty: anywhere.
    pub cidrs: Vec<Cidr>,
}

impl TokenSpec {
    /// What an operator asked for, checked: at least one use and one second, the pool
    /// a queue name, capabilities and tags made of `A-Z a-z 0-9 _ -`. The error names
    /// what is wrong (`gf factory token create`, `POST /api/factory-tokens`).
    pub fn check(&self) -> Result<(), String> {
        if self.uses == 0 {
            return Err("uses must be at least 1".into());
        }
        if self.ttl < Duration::from_secs(1) {
            return Err("ttl must be at least 1s".into());
        }
        if let Some(p) = &self.pool {
            if !gf_schemas::names::is_token(p) || p == gf_schemas::names::ANY {
                return Err(format!("pool `{p}` is not a queue name (A-Z a-z 0-9 _ -)"));
            }
        }
        if let Some(t) = self.tags.iter().find(|t| !gf_schemas::names::is_token(t)) {
            return Err(format!("tag `{t}` is not made of A-Z a-z 0-9 _ -"));
        }
        if let Some((k, v)) = self
            .caps
            .iter()
            .find(|(k, v)| !gf_schemas::names::is_token(k) || !gf_schemas::names::is_token(v))
        {
            return Err(format!(
                "capability `{k}={v}`: key and value must be made of A-Z a-z 0-9 _ -"
            ));
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: String,
    pub secret_sha256: String,
    #[serde(default)]
    pub pool: Option<String>,
    #[serde(default)]
    pub caps: BTreeMap<String, String>,
    #[serde(default)]
    pub tags: BTreeSet<String>,
    #[serde(default)]
    pub cidrs: Vec<String>,
    pub uses_left: u32,
    #[serde(default)]
    pub used: u32,
    pub expires_at: Timestamp,
    pub created_at: Timestamp,
    #[serde(default)]
    pub revoked: bool,
    /// Factories enrolled with it.
    #[serde(default)]
    pub factories: Vec<WorkerId>,
    /// The latest refusal of an enrollment with it (time, reason, client host).
    #[serde(default)]
    pub last_refusal: Option<String>,
}

impl TokenRecord {
    /// `active`, `revoked`, `expired` or `used up`, at `now`.
    pub fn state(&self, now: Timestamp) -> &'static str {
        if self.revoked {
            "revoked"
        } else if now >= self.expires_at {
            "expired"
        } else if self.uses_left == 0 {
            "used up"
        } else {
            "active"
        }
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FactoryState {
    Active,
    Revoked,
}

impl FactoryState {
    pub fn as_str(self) -> &'static str {
        match self {
            FactoryState::Active => "active",
            FactoryState::Revoked => "revoked",
        }
    }
}

/// A key a factory may connect with.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyEntry {
    pub nkey: String,
    pub added_at: Timestamp,
    /// After this a key being rotated out is refused (`None`: no end).
    #[serde(default)]
    pub valid_until: Option<Timestamp>,
}

/// Where a factory was last connected (for `KICK`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Connection {
    pub server_id: String,
    pub cid: u64,
    pub host: String,
    pub at: Timestamp,
    /// When the user JWT issued for it expires.
    pub expires_at: Timestamp,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FactoryRecord {
    pub id: WorkerId,
    pub state: FactoryState,
    #[serde(default)]
    pub pool: Option<String>,
    #[serde(default)]
    pub caps: BTreeMap<String, String>,
    #[serde(default)]
    pub tags: BTreeSet<String>,
    pub keys: Vec<KeyEntry>,
    /// The dispatch consumers its JWT lets it bind (the coordinators add the one its
    /// registration names).
    #[serde(default)]
    pub consumers: Vec<ConsumerName>,
    pub enrolled_via: String,
    pub created_at: Timestamp,
    #[serde(default)]
    pub connection: Option<Connection>,
    #[serde(default)]
    pub revoked_at: Option<Timestamp>,
    /// When a coordinator closed its connection after the revocation.
    #[serde(default)]
    pub kicked_at: Option<Timestamp>,
}

/// Capability keys a worker detects itself; kept even under a restricted approval.
pub const DETECTED: [&str; 4] = ["os", "arch", "cpus", "memory_mb"];

/// A consumer list in a JWT stays short: the newest this many.
const MAX_CONSUMERS: usize = 8;

impl FactoryRecord {
    /// Active, and the credentials of its last connection are still valid at `now`:
    /// it may be on.
    pub fn connected(&self, now: Timestamp) -> bool {
        self.state == FactoryState::Active
            && self.connection.as_ref().is_some_and(|c| now < c.expires_at)
    }

    /// Whether the enrollment approved specific capabilities (then only those count).
    pub fn restricted(&self) -> bool {
        !self.caps.is_empty() || !self.tags.is_empty()
    }

    /// What a registration asking for `asked` gets: its queues narrowed to the pool,
    /// and under a restricted approval only the approved values and tags (plus the
    /// detected ones); approved values always win.
    pub fn approve(&self, asked: &Capabilities) -> Capabilities {
        let mut out = asked.clone();
        if let Some(pool) = &self.pool {
            out.queues.retain(|q| q == pool);
            if out.queues.is_empty() {
                out.queues.push(pool.clone());
            }
        }
        if self.restricted() {
            out.values.retain(|k, _| DETECTED.contains(&k.as_str()));
            out.tags = asked.tags.intersection(&self.tags).cloned().collect();
        }
        out.values
            .extend(self.caps.iter().map(|(k, v)| (k.clone(), v.clone())));
        out
    }

    /// Whether `nkey` may connect as this factory at `now`.
    pub fn accepts(&self, nkey: &str, now: Timestamp) -> bool {
        self.keys
            .iter()
            .any(|k| k.nkey == nkey && k.valid_until.is_none_or(|t| now < t))
    }
}

/// An IP network (`10.0.0.0/8`, `192.168.1.7`, `fd00::/8`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    bits: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("`{s}` is not an IP network (e.g. 10.0.0.0/8)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            Some(b) => b
                .parse::<u8>()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| format!("`{s}`: the prefix length must be 0..={max}"))?,
            None => max,
        };
        Ok(Self { addr, bits })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.bits)
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (net, ip, len) = match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => (
                u128::from(u32::from(n)) << 96,
                u128::from(u32::from(i)) << 96,
                self.bits,
            ),
            (IpAddr::V6(n), IpAddr::V6(i)) => (u128::from(n), u128::from(i), self.bits),
            (IpAddr::V4(n), IpAddr::V6(i)) => match i.to_ipv4_mapped() {
                Some(i) => (
                    u128::from(u32::from(n)) << 96,
                    u128::from(u32::from(i)) << 96,
                    self.bits,
                ),
                None => return false,
            },
            (IpAddr::V6(_), IpAddr::V4(_)) => return false,
        };
        let mask = if len == 0 {
            0
        } else {
            u128::MAX << (128 - u32::from(len))
        };
        net & mask == ip & mask
    }
}

/// The two buckets.
#[derive(Clone)]
pub struct Store {
    pub enroll: kv::Store,
    pub factories: kv::Store,
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: key.into(),
        error: e.to_string(),
    })
}

fn encode<T: Serialize>(v: &T) -> bytes::Bytes {
    serde_json::to_vec(v).expect("serializes").into()
}

impl Store {
    /// Opens the buckets, creating them if absent.
    pub async fn open(js: &jetstream::Context, replicas: usize) -> Result<Self, StoreError> {
        let open = |bucket: &'static str| {
            let js = js.clone();
            async move {
                match js.get_key_value(bucket).await {
                    Ok(s) => Ok(s),
                    Err(_) => js
                        .create_key_value(kv::Config {
                            bucket: bucket.into(),
                            history: 1,
                            num_replicas: replicas.max(1),
                            ..Default::default()
                        })
                        .await
                        .map_err(|e| transport(format!("creating bucket {bucket}: {e}"))),
                }
            }
        };
        Ok(Self {
            enroll: open(names::BUCKET_ENROLL).await?,
            factories: open(names::BUCKET_FACTORIES).await?,
        })
    }

    /// A key's value and revision as the bucket's stream leader has it
    /// (`STREAM.MSG.GET`, which only the leader answers, [`crate::leader_copy`]): every
    /// write acknowledged before the request is in it.
    ///
    /// Not a KV get: that is a direct get any replica may answer (with R3, the follower
    /// on the server this client is connected to), and a follower can be behind the
    /// last acknowledged write. This store decides on what it reads: a refusal (unknown
    /// token, unknown key, used up) or a compare-and-set, often right after a write made
    /// through another server (a token made by `gf factory token create`, the factory
    /// record the callout has just created). Read from a follower, a fresh token was
    /// refused as unknown or its use lost every compare-and-set, and recording the
    /// connection of a factory enrolled a moment before found no record (the warning
    /// "cannot record the factory's connection: f.<id> not found"). The cost is one
    /// request to the leader per read; this store is read per connection attempt,
    /// registration and operator command, never per job.
    async fn get<T: DeserializeOwned>(
        kv: &kv::Store,
        key: &str,
    ) -> Result<Option<(T, u64)>, StoreError> {
        let Some(entry) = crate::leader_copy::get(kv, key).await.map_err(transport)? else {
            return Ok(None);
        };
        Ok(Some((decode(key, &entry.value)?, entry.revision)))
    }

    /// Read, change, compare-and-set; retried on a concurrent change. `change` returns
    /// `Ok(false)` to leave the entry as it is.
    async fn update<T, E>(
        kv: &kv::Store,
        key: &str,
        mut change: impl FnMut(&mut T) -> Result<bool, E>,
    ) -> Result<Result<T, E>, StoreError>
    where
        T: Serialize + DeserializeOwned,
    {
        for _ in 0..16 {
            let Some((mut v, rev)) = Self::get::<T>(kv, key).await? else {
                return Err(StoreError::NotFound(format!("{key} not found")));
            };
            match change(&mut v) {
                Err(e) => return Ok(Err(e)),
                Ok(false) => return Ok(Ok(v)),
                Ok(true) => {}
            }
            match kv.update(key, encode(&v), rev).await {
                Ok(_) => return Ok(Ok(v)),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(transport(e)),
            }
        }
        Err(StoreError::Contended(key.into()))
    }

    /// Every record whose key starts with `prefix`.
    async fn scan<T: DeserializeOwned>(kv: &kv::Store, prefix: &str) -> Result<Vec<T>, StoreError> {
        let keys: Vec<String> = match kv.keys().await {
            Ok(k) => k.try_collect().await.map_err(transport)?,
            Err(e) => return Err(transport(e)),
        };
        let mut out = Vec::new();
        for k in keys.iter().filter(|k| k.starts_with(prefix)) {
            if let Some((v, _)) = Self::get(kv, k).await? {
                out.push(v);
            }
        }
        Ok(out)
    }

    /// Makes a token; the returned [`EnrollToken`] is the only copy of its secret.
    pub async fn create_token(
        &self,
        spec: &TokenSpec,
        now: Timestamp,
    ) -> Result<(EnrollToken, TokenRecord), StoreError> {
        let token = EnrollToken::generate();
        let rec = TokenRecord {
            id: token.id.clone(),
            secret_sha256: token.secret_hash(),
            pool: spec.pool.clone(),
            caps: spec.caps.clone(),
            tags: spec.tags.clone(),
            cidrs: spec.cidrs.iter().map(|c| c.to_string()).collect(),
            uses_left: spec.uses,
            used: 0,
            expires_at: now.plus(spec.ttl),
            created_at: now,
            revoked: false,
            factories: Vec::new(),
            last_refusal: None,
        };
        self.enroll
            .create(&rec.id, encode(&rec))
            .await
            .map_err(transport)?;
        Ok((token, rec))
    }

    pub async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let mut v: Vec<TokenRecord> = Self::scan(&self.enroll, "").await?;
        v.sort_by_key(|t| t.created_at);
        Ok(v)
    }

    /// Revokes a token: no further enrollment with it. Factories it enrolled stay.
    pub async fn revoke_token(&self, id: &str) -> Result<TokenRecord, StoreError> {
        Self::update::<TokenRecord, ()>(&self.enroll, id, |t| {
            let changed = !t.revoked;
            t.revoked = true;
            Ok(changed)
        })
        .await
        .map(|r| r.expect("infallible"))
    }

    /// Records why an enrollment with token `id` was refused (best effort).
    pub async fn note_refusal(&self, id: &str, why: &str) {
        let why = why.chars().take(300).collect::<String>();
        let r = Self::update::<TokenRecord, ()>(&self.enroll, id, |t| {
            t.last_refusal = Some(why.clone());
            Ok(true)
        })
        .await;
        if let Err(e) = r {
            tracing::debug!(token = id, error = %e, "cannot record a refusal");
        }
    }

    pub async fn factory(&self, id: &WorkerId) -> Result<Option<FactoryRecord>, StoreError> {
        Ok(Self::get(&self.factories, &names::factory_key(id))
            .await?
            .map(|(f, _)| f))
    }

    pub async fn factories(&self) -> Result<Vec<FactoryRecord>, StoreError> {
        let mut v: Vec<FactoryRecord> = Self::scan(&self.factories, names::FACTORY_PREFIX).await?;
        v.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(v)
    }

    /// The factory `nkey` belongs to, if any.
    pub async fn by_key(&self, nkey: &str) -> Result<Option<FactoryRecord>, StoreError> {
        let Some((id, _)) = Self::get::<WorkerId>(&self.factories, &names::nkey_key(nkey)).await?
        else {
            return Ok(None);
        };
        self.factory(&id).await
    }

    /// Enrolls `nkey` as factory `id` with `token`, from `host`: checks the token,
    /// takes one use, then binds the key and creates the record.
    pub async fn enroll(
        &self,
        token: &EnrollToken,
        nkey: &str,
        id: &WorkerId,
        host: &str,
        now: Timestamp,
    ) -> Result<FactoryRecord, Refusal> {
        let ip: Option<IpAddr> = host.parse().ok();
        let taken = Self::update::<TokenRecord, Refusal>(&self.enroll, &token.id, |t| {
            if !token.matches(&t.secret_sha256) {
                return Err(Refusal::WrongSecret(t.id.clone()));
            }
            if t.revoked {
                return Err(Refusal::TokenRevoked(t.id.clone()));
            }
            if now >= t.expires_at {
                return Err(Refusal::TokenExpired(t.id.clone(), t.expires_at));
            }
            if t.uses_left == 0 {
                return Err(Refusal::TokenUsedUp(t.id.clone()));
            }
            if !t.cidrs.is_empty() {
                let inside = ip.is_some_and(|ip| {
                    t.cidrs
                        .iter()
                        .filter_map(|c| c.parse::<Cidr>().ok())
                        .any(|c| c.contains(ip))
                });
                if !inside {
                    return Err(Refusal::OutsideCidr(t.id.clone(), host.to_string()));
                }
            }
            t.uses_left -= 1;
            t.used += 1;
            t.factories.push(id.clone());
            Ok(true)
        })
        .await;
        let t = match taken {
            Err(StoreError::NotFound(_)) => return Err(Refusal::UnknownToken(token.id.clone())),
            Err(e) => return Err(e.into()),
            Ok(r) => r?,
        };
        let index = names::nkey_key(nkey);
        if self.factories.create(&index, encode(id)).await.is_err() {
            return Err(Refusal::IdTaken(id.clone()));
        }
        let rec = FactoryRecord {
            id: id.clone(),
            state: FactoryState::Active,
            pool: t.pool.clone(),
            caps: t.caps.clone(),
            tags: t.tags.clone(),
            keys: vec![KeyEntry {
                nkey: nkey.into(),
                added_at: now,
                valid_until: None,
            }],
            consumers: Vec::new(),
            enrolled_via: t.id.clone(),
            created_at: now,
            connection: None,
            revoked_at: None,
            kicked_at: None,
        };
        if self
            .factories
            .create(names::factory_key(id), encode(&rec))
            .await
            .is_err()
        {
            let _ = self.factories.delete(&index).await;
            return Err(Refusal::IdTaken(id.clone()));
        }
        Ok(rec)
    }

    /// Records where factory `id` is connected now (best effort: a missed record only
    /// means a revocation waits for the JWT to expire instead of kicking at once).
    pub async fn note_connection(&self, id: &WorkerId, conn: Connection) {
        let r = Self::update::<FactoryRecord, ()>(&self.factories, &names::factory_key(id), |f| {
            f.connection = Some(conn.clone());
            Ok(true)
        })
        .await;
        if let Err(e) = r {
            tracing::warn!(factory = %id, error = %e, "cannot record the factory's connection");
        }
    }

    /// Revokes factory `id`: every later connection is refused, and the coordinators
    /// close its current one (they watch the bucket, see [`crate::kick`]).
    pub async fn revoke_factory(
        &self,
        id: &WorkerId,
        now: Timestamp,
    ) -> Result<FactoryRecord, StoreError> {
        Self::update::<FactoryRecord, ()>(&self.factories, &names::factory_key(id), |f| {
            if f.state == FactoryState::Revoked {
                return Ok(false);
            }
            f.state = FactoryState::Revoked;
            f.revoked_at = Some(now);
            Ok(true)
        })
        .await
        .map(|r| r.expect("infallible"))
    }

    /// Records that the revoked factory's connection was closed.
    pub async fn note_kicked(&self, id: &WorkerId, now: Timestamp) -> Result<(), StoreError> {
        Self::update::<FactoryRecord, ()>(&self.factories, &names::factory_key(id), |f| {
            f.kicked_at = Some(now);
            Ok(true)
        })
        .await
        .map(|_| ())
    }

    /// Rotates factory `id` from `old` to `new`: `new` is indexed and accepted from now
    /// on, `old` until `now + grace`.
    pub async fn rotate_key(
        &self,
        id: &WorkerId,
        old: &str,
        new: &str,
        grace: Duration,
        now: Timestamp,
    ) -> Result<FactoryRecord, Refusal> {
        if self
            .factories
            .create(names::nkey_key(new), encode(id))
            .await
            .is_err()
        {
            return Err(Refusal::BadRotation("the new key is already in use".into()));
        }
        let r =
            Self::update::<FactoryRecord, Refusal>(&self.factories, &names::factory_key(id), |f| {
                if f.state == FactoryState::Revoked {
                    return Err(Refusal::FactoryRevoked(f.id.clone()));
                }
                if !f.accepts(old, now) {
                    return Err(Refusal::BadRotation(
                        "the old key is no longer valid".into(),
                    ));
                }
                let until = now.plus(grace);
                for k in f.keys.iter_mut().filter(|k| k.nkey == old) {
                    k.valid_until = Some(k.valid_until.map_or(until, |t| t.min(until)));
                }
                // Keys past their end are forgotten (their index entries stay refused).
                f.keys
                    .retain(|k| k.valid_until.is_none_or(|t| now < t) || k.nkey == old);
                f.keys.push(KeyEntry {
                    nkey: new.into(),
                    added_at: now,
                    valid_until: None,
                });
                Ok(true)
            })
            .await;
        match r {
            Ok(Ok(f)) => Ok(f),
            Ok(Err(refusal)) => {
                let _ = self.factories.delete(names::nkey_key(new)).await;
                Err(refusal)
            }
            Err(e) => {
                let _ = self.factories.delete(names::nkey_key(new)).await;
                Err(e.into())
            }
        }
    }

    /// Adds `consumer` to what factory `id` may bind; `true` if it was not there (its
    /// current connection's JWT does not grant it yet). `false` also when `id` is no
    /// enrolled factory (a static user: nothing to grant).
    pub async fn grant_consumer(
        &self,
        id: &WorkerId,
        consumer: &ConsumerName,
    ) -> Result<bool, StoreError> {
        let mut added = false;
        let r = Self::update::<FactoryRecord, ()>(&self.factories, &names::factory_key(id), |f| {
            added = !f.consumers.contains(consumer);
            if added {
                f.consumers.push(consumer.clone());
                let excess = f.consumers.len().saturating_sub(MAX_CONSUMERS);
                f.consumers.drain(..excess);
            }
            Ok(added)
        })
        .await;
        match r {
            Ok(_) => Ok(added),
            Err(StoreError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.0.0.1".parse().unwrap()));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert_eq!(one.to_string(), "127.0.0.1/32");
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nope".parse::<Cidr>().is_err());
    }

    fn record(pool: Option<&str>, caps: &[(&str, &str)], tags: &[&str]) -> FactoryRecord {
        let now = Timestamp::now_local();
        FactoryRecord {
            id: WorkerId::new("f1").unwrap(),
            state: FactoryState::Active,
            pool: pool.map(Into::into),
            caps: caps
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            keys: vec![],
            consumers: vec![],
            enrolled_via: "t".into(),
            created_at: now,
            connection: None,
            revoked_at: None,
            kicked_at: None,
        }
    }

    /// A registration gets no more than its enrollment approved.
    #[test]
    fn approval_narrows_registrations() {
        let asked = Capabilities {
            values: [("os", "linux"), ("engine", "claude"), ("gpu", "a100")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            tags: ["gpu", "big"].iter().map(|t| t.to_string()).collect(),
            queues: vec!["default".into(), "batch".into()],
        };
        // Open approval: only the pool narrows.
        let open = record(Some("batch"), &[], &[]).approve(&asked);
        assert_eq!(open.queues, ["batch"]);
        assert_eq!(open.values.len(), 3);
        // A pool it did not ask for is the one it gets.
        assert_eq!(record(Some("ci"), &[], &[]).approve(&asked).queues, ["ci"]);
        // Restricted: approved values win, unapproved ones and tags go.
        let r = record(None, &[("engine", "codex")], &["big"]).approve(&asked);
        assert_eq!(r.values.get("engine").map(String::as_str), Some("codex"));
        assert_eq!(r.values.get("os").map(String::as_str), Some("linux"));
        assert!(!r.values.contains_key("gpu"));
        assert_eq!(r.tags.iter().collect::<Vec<_>>(), ["big"]);
        assert_eq!(r.queues, asked.queues);
    }
}
