//! `gf factory …` (enrollment tokens, enrolled factories) and `gf admin init` (the
//! secrets of a secured deployment). Operators act on the enrollment buckets directly:
//! they are static users with full rights in the `GF` account.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use gf_auth::store::{Cidr, Store};
use gf_auth::{Secrets, TokenSpec};
use gf_schemas::Timestamp;

use crate::output::{age, table};

#[derive(Args, Debug)]
pub struct FactoryArgs {
    #[command(subcommand)]
    pub command: FactoryCommand,
}

#[derive(Subcommand, Debug)]
pub enum FactoryCommand {
    /// Enrollment tokens: a factory enrolls with one (`gf worker --enroll TOKEN`).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Enrolled factories: id, pool, approved capabilities, state, last connection.
    List(FactoryListArgs),
    /// Revoke a factory: its connection is closed at once, every reconnect is refused,
    /// and its running jobs run again elsewhere once their leases lapse.
    Revoke(FactoryIdArgs),
    /// Ask a running factory to switch to a fresh key (no restart; the old key works
    /// for a grace period, 10 minutes by default).
    Rotate(FactoryIdArgs),
}

#[derive(Args, Debug)]
pub struct FactoryIdArgs {
    /// The factory's id (see `gf factory list`).
    pub id: gf_schemas::WorkerId,
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Make a token and print it once (only its hash is stored).
    Create(TokenCreateArgs),
    /// Every token: uses left, expiry, state, the factories it enrolled, and why its
    /// latest enrollment was refused.
    List(FactoryListArgs),
    /// Refuse every further enrollment with a token (factories it enrolled stay).
    Revoke(TokenRevokeArgs),
}

#[derive(Args, Debug)]
pub struct TokenCreateArgs {
    /// How long the token may be used.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// How many factories may enroll with it.
    #[arg(long, default_value_t = 1)]
    pub uses: u32,
    /// The queue its factories serve (their only one) [default: what they register].
    #[arg(long)]
    pub pool: Option<String>,
    /// Approved capability `key=value` (repeatable). With any `--cap` or `--tag`, a
    /// factory gets only these, plus its detected os, arch, cpus and memory_mb.
    #[arg(long = "cap", value_name = "KEY=VALUE", value_parser = crate::parse_kv)]
    pub caps: Vec<(String, String)>,
    /// Approved tag (repeatable).
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Network it may be used from, e.g. 10.0.0.0/8 (repeatable) [default: anywhere].
    #[arg(long = "cidr", value_name = "CIDR")]
    pub cidrs: Vec<Cidr>,
    /// Print JSON (the token and its record).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct TokenRevokeArgs {
    /// The token's id (the hex part after `gfe_`, as `gf factory token list` shows it).
    pub id: String,
}

#[derive(Args, Debug)]
pub struct FactoryListArgs {
    #[arg(long)]
    pub json: bool,
}

async fn store(url: &str) -> anyhow::Result<Store> {
    let client = crate::connect(url).await?;
    let js = async_nats::jetstream::new(client);
    Store::open(&js, 1)
        .await
        .context("cannot open the enrollment buckets (is this an operator's connection?)")
}

pub async fn run(url: &str, a: FactoryArgs) -> anyhow::Result<ExitCode> {
    match a.command {
        FactoryCommand::Token(TokenCommand::Create(t)) => create(url, t).await,
        FactoryCommand::Token(TokenCommand::List(l)) => tokens(url, l).await,
        FactoryCommand::Token(TokenCommand::Revoke(r)) => revoke_token(url, r).await,
        FactoryCommand::List(l) => factories(url, l).await,
        FactoryCommand::Revoke(r) => revoke(url, r).await,
        FactoryCommand::Rotate(r) => rotate(url, r).await,
    }
}

/// Polls `check` every 50 ms for at most `within`.
async fn poll<T>(
    within: Duration,
    mut check: impl AsyncFnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<Option<T>> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await? {
            return Ok(Some(v));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn revoke(url: &str, r: FactoryIdArgs) -> anyhow::Result<ExitCode> {
    let s = store(url).await?;
    let client = crate::connect(url).await?;
    let done = match gf_auth::kick::revoke(&s, &client, &r.id).await {
        Ok(d) => d,
        Err(gf_auth::store::StoreError::NotFound(_)) => {
            bail!("no enrolled factory `{}` (see `gf factory list`)", r.id)
        }
        Err(e) => return Err(e.into()),
    };
    match (done.was_connected, done.kicked) {
        (false, _) => println!("factory {} revoked (not connected)", r.id),
        (true, true) => println!(
            "factory {} revoked; its connection was closed and it cannot reconnect",
            r.id
        ),
        (true, false) => println!(
            "factory {} revoked; no coordinator closed its connection within 5s (is one running with --secrets-dir?); its access ends when its credentials expire",
            r.id
        ),
    }
    Ok(ExitCode::SUCCESS)
}

async fn rotate(url: &str, r: FactoryIdArgs) -> anyhow::Result<ExitCode> {
    use gf_schemas::rpc::{ControlAck, ControlMessage};
    let s = store(url).await?;
    let Some(before) = s.factory(&r.id).await? else {
        bail!("no enrolled factory `{}` (see `gf factory list`)", r.id);
    };
    let client = crate::connect(url).await?;
    let msg = serde_json::to_vec(&ControlMessage::RotateKey)?;
    let reply = tokio::time::timeout(
        Duration::from_secs(5),
        client.request(gf_schemas::names::worker_control(&r.id), msg.into()),
    )
    .await
    .map_err(|_| anyhow::anyhow!("factory {} did not answer within 5s (is it running?)", r.id))?
    .with_context(|| format!("factory {} did not answer (is it running?)", r.id))?;
    let ack: gf_schemas::Reply<ControlAck> =
        serde_json::from_slice(&reply.payload).context("unexpected answer from the factory")?;
    ack.into_result()?;
    let old: Vec<String> = before.keys.iter().map(|k| k.nkey.clone()).collect();
    let new = poll(Duration::from_secs(15), async || {
        Ok(s.factory(&r.id).await?.and_then(|f| {
            f.keys
                .iter()
                .find(|k| !old.contains(&k.nkey))
                .map(|k| k.nkey.clone())
        }))
    })
    .await?;
    match new {
        Some(k) => {
            println!("factory {} now connects with key {k}", r.id);
            Ok(ExitCode::SUCCESS)
        }
        None => bail!(
            "factory {} did not connect with a new key within 15s (see its log)",
            r.id
        ),
    }
}

async fn create(url: &str, t: TokenCreateArgs) -> anyhow::Result<ExitCode> {
    let spec = TokenSpec {
        ttl: t.ttl,
        uses: t.uses,
        pool: t.pool,
        caps: t.caps.into_iter().collect::<BTreeMap<_, _>>(),
        tags: t.tags.into_iter().collect::<BTreeSet<_>>(),
        cidrs: t.cidrs,
    };
    spec.check().map_err(|e| anyhow::anyhow!("{e}"))?;
    let (token, rec) = store(url)
        .await?
        .create_token(&spec, Timestamp::now_local())
        .await?;
    if t.json {
        println!(
            "{}",
            serde_json::json!({"token": token.reveal(), "record": rec})
        );
    } else {
        println!("{}", token.reveal());
        eprintln!(
            "token {} ({} use(s), expires {}): shown once; enroll with `gf worker --key-dir DIR --enroll TOKEN`",
            rec.id, rec.uses_left, rec.expires_at
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn tokens(url: &str, l: FactoryListArgs) -> anyhow::Result<ExitCode> {
    let all = store(url).await?.tokens().await?;
    if l.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(ExitCode::SUCCESS);
    }
    let now = Timestamp::now_local();
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|t| {
            let approved = approved(&t.pool, &t.caps, &t.tags);
            vec![
                t.id.clone(),
                t.state(now).into(),
                format!("{}/{}", t.used, t.used + t.uses_left),
                t.expires_at.to_string(),
                approved,
                if t.cidrs.is_empty() {
                    "any".into()
                } else {
                    t.cidrs.join(",")
                },
                t.factories
                    .iter()
                    .map(|f| f.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                t.last_refusal.clone().unwrap_or_default(),
            ]
        })
        .collect();
    println!(
        "{}",
        table(
            &[
                "ID",
                "STATE",
                "USED",
                "EXPIRES",
                "APPROVED",
                "FROM",
                "FACTORIES",
                "LAST REFUSAL"
            ],
            &rows
        )
    );
    Ok(ExitCode::SUCCESS)
}

fn approved(
    pool: &Option<String>,
    caps: &BTreeMap<String, String>,
    tags: &BTreeSet<String>,
) -> String {
    let mut parts: Vec<String> = pool.iter().map(|p| format!("pool={p}")).collect();
    parts.extend(caps.iter().map(|(k, v)| format!("{k}={v}")));
    parts.extend(tags.iter().map(|t| format!("+{t}")));
    if parts.is_empty() {
        "any".into()
    } else {
        parts.join(" ")
    }
}

async fn revoke_token(url: &str, r: TokenRevokeArgs) -> anyhow::Result<ExitCode> {
    let id = r.id.trim().trim_start_matches("gfe_");
    let id = id.split('_').next().unwrap_or_default();
    if !gf_auth::token::valid_id(id) {
        bail!(
            "`{}` is not a token id (16 hex digits; see `gf factory token list`)",
            r.id
        );
    }
    let t = store(url)
        .await?
        .revoke_token(id)
        .await
        .with_context(|| format!("cannot revoke token {id}"))?;
    println!("token {} revoked (it enrolled: {:?})", t.id, t.factories);
    Ok(ExitCode::SUCCESS)
}

async fn factories(url: &str, l: FactoryListArgs) -> anyhow::Result<ExitCode> {
    let s = store(url).await?;
    let all = s.factories().await?;
    if l.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(ExitCode::SUCCESS);
    }
    let now = Timestamp::now_local();
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|f| {
            let (seen, connected) = match &f.connection {
                Some(c) => (
                    format!("{} ago from {}", age(c.at, now), c.host),
                    if f.connected(now) { "yes" } else { "no" },
                ),
                None => ("never".into(), "no"),
            };
            vec![
                f.id.to_string(),
                f.pool.clone().unwrap_or_else(|| "any".into()),
                approved(&None, &f.caps, &f.tags),
                f.state.as_str().into(),
                seen,
                connected.into(),
                f.keys.len().to_string(),
            ]
        })
        .collect();
    println!(
        "{}",
        table(
            &[
                "ID",
                "POOL",
                "APPROVED",
                "STATE",
                "LAST SEEN",
                "CONNECTED",
                "KEYS"
            ],
            &rows
        )
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct AdminArgs {
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Write a secured deployment's secrets and nats-server config into a folder:
    /// the callout issuer key, the coordinators' nkey, the callout, operator and
    /// system users' passwords, and nats.conf (each file 0600).
    Init(AdminInitArgs),
    /// Clients' own credentials (static users with a role's grant): `create`, `list`,
    /// `remove`. Rewrites nats.conf; the server applies it on `nats-server --signal
    /// reload` (or a restart).
    #[command(subcommand)]
    User(UserCommand),
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Make client NAME with a role (`submit`: submit jobs, read them and their logs,
    /// nothing else) and print its URL once.
    Create(UserCreateArgs),
    /// The clients and their roles (no passwords).
    List(UserDirArgs),
    /// Remove client NAME (its connections end at the server's next reload).
    Remove(UserRemoveArgs),
}

#[derive(Args, Debug)]
pub struct UserDirArgs {
    /// The secrets folder `gf admin init` wrote.
    pub dir: PathBuf,
}

#[derive(Args, Debug)]
pub struct UserCreateArgs {
    /// The secrets folder `gf admin init` wrote.
    pub dir: PathBuf,
    /// The client's name (A-Z a-z 0-9 _ -), its NATS user.
    pub name: String,
    /// What it may do.
    #[arg(long, default_value = "submit", value_parser = |s: &str| s.parse::<gf_auth::secrets::ClientRole>())]
    pub role: gf_auth::secrets::ClientRole,
    /// The server's address, for the URL printed [default nats://127.0.0.1:4222].
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub server: String,
}

#[derive(Args, Debug)]
pub struct UserRemoveArgs {
    /// The secrets folder `gf admin init` wrote.
    pub dir: PathBuf,
    pub name: String,
}

#[derive(Args, Debug)]
pub struct AdminInitArgs {
    /// The secrets folder (give it to coordinators as --secrets-dir).
    pub dir: PathBuf,
    /// Replace secrets already there (every credential changes).
    #[arg(long)]
    pub force: bool,
    /// TLS on the client listener: the server's certificate file (PEM).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<String>,
    /// TLS on the client listener: the server's key file (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<String>,
}

pub fn admin(a: AdminArgs) -> anyhow::Result<ExitCode> {
    let a = match a.command {
        AdminCommand::Init(a) => a,
        AdminCommand::User(u) => return user(u),
    };
    if a.dir.join("issuer.nk").exists() && !a.force {
        bail!(
            "{} already holds secrets; pass --force to replace them all",
            a.dir.display()
        );
    }
    let tls = match (a.tls_cert, a.tls_key) {
        (Some(cert_file), Some(key_file)) => Some(gf_auth::secrets::ServerTls {
            cert_file,
            key_file,
        }),
        _ => None,
    };
    let mut secrets = Secrets::generate();
    secrets.tls = tls.clone();
    secrets.write(&a.dir, tls.as_ref())?;
    let d = a.dir.display();
    println!("wrote {d}/{{issuer.nk,coordinator.nk,auth.pass,admin.pass,sys.pass,nats.conf}}");
    println!("server:       nats-server -js -c {d}/nats.conf");
    println!("coordinator:  gf coordinator --secrets-dir {d} …");
    println!(
        "operators:    GF_NATS_URL=nats://{}:$(cat {d}/admin.pass)@HOST:4222 gf …",
        gf_auth::secrets::ADMIN_USER
    );
    println!("factories:    gf factory token create, then gf worker --key-dir DIR --enroll TOKEN");
    println!(
        "clients:      gf admin user create {d} NAME --role submit (submit and read jobs only)"
    );
    Ok(ExitCode::SUCCESS)
}

const RELOAD_HINT: &str = "the server applies it on `nats-server --signal reload` (or a restart)";

fn user(u: UserCommand) -> anyhow::Result<ExitCode> {
    match u {
        UserCommand::Create(c) => {
            let mut s = Secrets::read(&c.dir)
                .with_context(|| format!("{} (made by `gf admin init`)", c.dir.display()))?;
            let password = s.add_user(&c.name, c.role)?;
            s.write_users_and_config(&c.dir)?;
            let url = gf_auth::secrets::with_user(&c.server, &c.name, &password);
            println!("{url}");
            eprintln!(
                "client {} ({}): its URL is shown once (the password is also in {}); it uses the inbox prefix {}; {RELOAD_HINT}",
                c.name,
                c.role.as_str(),
                c.dir.join(gf_auth::secrets::USERS_DIR).display(),
                gf_schemas::names::client_inbox_prefix(&c.name)
            );
        }
        UserCommand::List(l) => {
            let s = Secrets::read(&l.dir)?;
            let rows: Vec<Vec<String>> = s
                .users
                .iter()
                .map(|u| vec![u.name.clone(), u.role.as_str().into()])
                .collect();
            println!("{}", table(&["USER", "ROLE"], &rows));
        }
        UserCommand::Remove(r) => {
            let mut s = Secrets::read(&r.dir)?;
            if !s.remove_user(&r.name) {
                bail!("no client `{}` in {}", r.name, r.dir.display());
            }
            s.write_users_and_config(&r.dir)?;
            println!("client {} removed; {RELOAD_HINT}", r.name);
        }
    }
    Ok(ExitCode::SUCCESS)
}
