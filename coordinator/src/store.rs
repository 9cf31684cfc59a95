//! JetStream state: bucket and stream definitions (in one place), and the job store
//! whose every write is a `create` or a revision-checked `update`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use gf_schemas::names::{
    self, BUCKET_BUDGETS, BUCKET_IDEM, BUCKET_JOBS, BUCKET_LEADER, BUCKET_SCHEDULES, BUCKET_WORKERS,
};
use gf_schemas::{JobId, JobRecord, JobState, RpcError, Timestamp};

use crate::error::StoreError;

/// Attempts of a read-modify-write before giving up on a hot key.
const MAX_CAS_ATTEMPTS: usize = 32;

/// The buckets this project uses, with their settings. `gf doctor` compares against
/// these.
pub fn bucket_configs(replicas: usize) -> Vec<kv::Config> {
    let base = |bucket: &str, description: &str| kv::Config {
        bucket: bucket.into(),
        description: description.into(),
        history: 1,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    };
    vec![
        kv::Config {
            max_value_size: 1024 * 1024,
            // Finished jobs are written with a TTL (their grace period); the marker the
            // server leaves when one expires lives this long (crate::history).
            limit_markers: Some(crate::history::LIMIT_MARKER_TTL),
            ..base(BUCKET_JOBS, "Gigafactory jobs: spec, state, lease, result")
        },
        kv::Config {
            // Liveness comes from heartbeats; this only cleans up long-gone workers.
            max_age: Duration::from_secs(7 * 24 * 3600),
            ..base(
                BUCKET_WORKERS,
                "Gigafactory workers: capabilities, slots, heartbeat",
            )
        },
        kv::Config {
            // The idempotency window: a key expires this long after it was written
            // (docs/history.md).
            max_age: Duration::from_secs(7 * 24 * 3600),
            ..base(BUCKET_IDEM, "Gigafactory idempotency keys -> job id")
        },
        kv::Config {
            max_age: Duration::from_secs(60),
            ..base(
                BUCKET_LEADER,
                "Gigafactory scheduler leader lease and clock probes",
            )
        },
        base(
            BUCKET_BUDGETS,
            "Gigafactory budgets per product: limits, spend, history",
        ),
        base(BUCKET_SCHEDULES, "Gigafactory cron schedules"),
        base(
            names::BUCKET_MANIFESTS,
            "Gigafactory manifests: their jobs' names and ids",
        ),
        gf_bridge::bucket_config(replicas),
        crate::artifacts::index_config(replicas),
        base(
            names::BUCKET_ARCHIVE_POSITION,
            "Gigafactory archive position: every finished job write up to this gf_jobs revision is archived",
        ),
    ]
}

/// [`stream_configs_with`] the default retention.
pub fn stream_configs(replicas: usize) -> Vec<stream::Config> {
    stream_configs_with(replicas, &crate::history::HistoryConfig::default())
}

/// The streams this project uses, with their settings; the logs' and events'
/// retention come from `history` (`[history]`, docs/history.md).
pub fn stream_configs_with(
    replicas: usize,
    history: &crate::history::HistoryConfig,
) -> Vec<stream::Config> {
    let base = |name: &str, subject: &str, max_age_secs: u64| stream::Config {
        name: name.into(),
        subjects: vec![subject.into()],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        max_age: Duration::from_secs(max_age_secs),
        ..Default::default()
    };
    vec![
        // Limits retention (not work-queue): consumers of different worker profiles
        // have overlapping filters and each must see every matching notice.
        base(names::STREAM_DISPATCH, names::DISPATCH_ALL, 3600),
        stream::Config {
            max_bytes: 1 << 30,
            ..base(
                names::STREAM_EVENTS,
                names::EVENTS_ALL,
                history.events.as_secs(),
            )
        },
        // Direct gets: log readers (submit-only clients included) read by subject
        // without making a consumer. Kept as long as the archive keeps a job unless
        // set otherwise; the byte cap still applies (oldest lines go first).
        stream::Config {
            max_bytes: 4 << 30,
            allow_direct: true,
            ..base(
                names::STREAM_LOGS,
                names::LOGS_ALL,
                history.logs().as_secs(),
            )
        },
        // Usage entries, deduplicated by job and epoch over the window, added to
        // budgets by the leader in order.
        stream::Config {
            duplicate_window: Duration::from_secs(600),
            ..base(names::STREAM_USAGE, names::USAGE_ALL, 30 * 24 * 3600)
        },
        // Outcome rows (one per finished attempt), kept for learning and export.
        stream::Config {
            max_bytes: 1 << 30,
            ..base(names::STREAM_OUTCOMES, names::OUTCOMES_ALL, 30 * 24 * 3600)
        },
        gf_bridge::stream_config(replicas),
    ]
}

/// Handles on every bucket, created (or checked) at start.
#[derive(Clone)]
pub struct Store {
    pub js: jetstream::Context,
    pub jobs: kv::Store,
    pub workers: kv::Store,
    pub idem: kv::Store,
    pub leader: kv::Store,
    pub budgets: kv::Store,
    pub schedules: kv::Store,
    /// The last record this coordinator wrote for each live job, with its revision.
    recent: Arc<Mutex<RecentJobs>>,
    /// How long a finished job stays in `gf_jobs` ([`crate::history`]).
    history: Arc<crate::history::HistoryConfig>,
}

/// Most entries [`RecentJobs`] keeps; past it the map starts over (it is only a hint).
const RECENT_JOBS: usize = 16_384;

/// Records this coordinator wrote last, so the next update of the same job (dispatch →
/// claim → complete usually all pass through one coordinator) can be a
/// compare-and-set at the known revision instead of a read and then a write.
///
/// Invariant: only a hint. A write from it is revision-checked, so an entry that is
/// behind costs one failed write and a read; and a decision taken on it that writes
/// nothing (a refusal, an idempotent repeat) is taken again on the stream leader's
/// copy, since only a successful write proves the entry was current.
#[derive(Default)]
struct RecentJobs(crate::jobmap::JobMap<(JobRecord, u64)>);

impl RecentJobs {
    fn remember(&mut self, rec: &JobRecord, rev: u64) {
        if !matches!(rec.state, JobState::Dispatched | JobState::Running) {
            // Only jobs whose next write is likely an RPC's (claim, renew, complete);
            // the leader writes the others from its own view. This keeps the map to
            // the jobs in flight, not the backlog.
            self.0.remove(&rec.id);
            return;
        }
        if self.0.len() >= RECENT_JOBS {
            self.0.clear();
        }
        match self.0.get_mut(&rec.id) {
            Some(e) if e.1 >= rev => {}
            Some(e) => *e = (rec.clone(), rev),
            None => {
                self.0.insert(rec.id, (rec.clone(), rev));
            }
        }
    }
}

fn transport(e: impl std::fmt::Display) -> StoreError {
    StoreError::Transport(e.to_string())
}

impl Store {
    /// Creates missing buckets and streams; existing ones are left as they are (a
    /// difference is logged, and `gf doctor` reports it).
    pub async fn open(js: jetstream::Context, replicas: usize) -> Result<Self, StoreError> {
        for cfg in stream_configs(replicas) {
            match js.get_stream(&cfg.name).await {
                // A stream made by an earlier version: turn on direct gets if they
                // are wanted (readers depend on them; nothing else is changed).
                Ok(mut s) if cfg.allow_direct => {
                    let have = s
                        .info()
                        .await
                        .map_err(|e| transport(format!("reading stream {}: {e}", cfg.name)))?
                        .config
                        .clone();
                    if !have.allow_direct {
                        js.update_stream(stream::Config {
                            allow_direct: true,
                            ..have
                        })
                        .await
                        .map_err(|e| transport(format!("updating stream {}: {e}", cfg.name)))?;
                    }
                }
                Ok(_) => {}
                Err(_) => {
                    js.create_stream(cfg.clone())
                        .await
                        .map_err(|e| transport(format!("creating stream {}: {e}", cfg.name)))?;
                }
            }
        }
        let mut stores = Vec::new();
        let mut jobs_existed = false;
        for cfg in bucket_configs(replicas) {
            let name = cfg.bucket.clone();
            let store = match js.get_key_value(&name).await {
                Ok(s) => {
                    jobs_existed |= name == BUCKET_JOBS;
                    s
                }
                Err(_) => js
                    .create_key_value(cfg)
                    .await
                    .map_err(|e| transport(format!("creating bucket {name}: {e}")))?,
            };
            stores.push(store);
        }
        // The archive (its retention is set by the coordinator's config at start).
        if js.get_stream(names::STREAM_ARCHIVE).await.is_err() {
            crate::history::archive::ensure_stream(&js, replicas, 30 * crate::history::DAY).await?;
        }
        if jobs_existed {
            // A bucket made by an earlier version: turn on what retention needs.
            crate::history::ensure_bucket_settings(&js).await?;
        }
        let mut it = stores.into_iter();
        Ok(Self {
            js,
            jobs: it.next().expect("jobs"),
            workers: it.next().expect("workers"),
            idem: it.next().expect("idem"),
            leader: it.next().expect("leader"),
            budgets: it.next().expect("budgets"),
            schedules: it.next().expect("schedules"),
            recent: Arc::default(),
            history: Arc::default(),
        })
    }

    /// The same store, writing finished jobs with `history`'s grace periods.
    pub fn with_history(mut self, history: crate::history::HistoryConfig) -> Self {
        self.history = Arc::new(history);
        self
    }

    pub fn history(&self) -> &crate::history::HistoryConfig {
        &self.history
    }

    /// A job's record by a direct get: cheap, answered by any replica of the bucket
    /// (with a cluster, the one on the server this coordinator is connected to), so it
    /// may be behind the last write by milliseconds or more: good to show, or to start
    /// a revision-checked write from, never enough to refuse on. See
    /// [`Store::load_job_latest`].
    pub async fn load_job(&self, id: &JobId) -> Result<Option<(JobRecord, u64)>, StoreError> {
        let key = names::job_key(id);
        let Some(entry) = self.jobs.entry(key.clone()).await.map_err(transport)? else {
            return Ok(None);
        };
        if entry.operation != kv::Operation::Put {
            return Ok(None);
        }
        Ok(Some((decode(&key, &entry.value)?, entry.revision)))
    }

    /// A job's record as the bucket's stream leader has it (`STREAM.MSG.GET`, which only
    /// the leader answers): every write acknowledged before the request is in it. What
    /// a decision that writes nothing (a refusal, a revocation, "no such job") must be
    /// taken on: a replica answering a direct get ([`Store::load_job`]) can be behind,
    /// and with two coordinators on different NATS nodes a worker's completion often
    /// reaches the coordinator whose local replica has not applied the dispatch yet.
    pub async fn load_job_latest(
        &self,
        id: &JobId,
    ) -> Result<Option<(JobRecord, u64)>, StoreError> {
        let key = names::job_key(id);
        let Some((value, rev)) = latest_entry(&self.jobs, &key).await? else {
            return Ok(None);
        };
        Ok(Some((decode(&key, &value)?, rev)))
    }

    /// A job's record by a direct get or, when that finds none, the leader's copy: "no
    /// such job" is never decided on a replica, which may not have the job yet.
    pub async fn find_job(&self, id: &JobId) -> Result<Option<(JobRecord, u64)>, StoreError> {
        if let Ok(Some(found)) = self.load_job(id).await {
            return Ok(Some(found));
        }
        self.load_job_latest(id).await
    }

    /// The job's record if `worker` holds its lease at `epoch` ([`crate::fsm::check_holder`]).
    /// Accepted on a direct get; refused only on the leader's copy
    /// ([`Store::load_job_latest`]), so a lagging replica never revokes a lease.
    pub async fn held_job(
        &self,
        id: &JobId,
        epoch: u64,
        worker: &gf_schemas::WorkerId,
    ) -> Result<JobRecord, RpcError> {
        if let Ok(Some((rec, _))) = self.load_job(id).await {
            if crate::fsm::check_holder(&rec, epoch, worker).is_ok() {
                return Ok(rec);
            }
        }
        match self.load_job_latest(id).await? {
            Some((rec, _)) => crate::fsm::check_holder(&rec, epoch, worker).map(|()| rec),
            None => Err(StoreError::NotFound(format!("job {id}")).into()),
        }
    }

    pub async fn create_job(&self, rec: &JobRecord) -> Result<u64, StoreError> {
        let key = names::job_key(&rec.id);
        let rev = match self.history.grace(rec.state) {
            // Created already finished: only if the key has never been written.
            Some(grace) => {
                crate::history::write_terminal(&self.js, &key, encode(rec), 0, grace).await?
            }
            None => self
                .jobs
                .create(&key, encode(rec))
                .await
                .map_err(|e| match e.kind() {
                    kv::CreateErrorKind::AlreadyExists => StoreError::Conflict(key.clone()),
                    _ => transport(e),
                })?,
        };
        // A job dispatched at submission is claimed next, usually here.
        if rec.state == JobState::Dispatched {
            self.recent.lock().expect("recent").remember(rec, rev);
        }
        Ok(rev)
    }

    /// Writes `rec` only if the stored revision is still `revision`. A finished
    /// record is written with its outcome's grace period as TTL (the one hook of
    /// [`crate::history`] into the lifecycle): the server removes it when that ends.
    pub async fn update_job(&self, rec: &JobRecord, revision: u64) -> Result<u64, StoreError> {
        let key = names::job_key(&rec.id);
        let new_rev = match self.history.grace(rec.state) {
            Some(grace) => {
                crate::history::write_terminal(&self.js, &key, encode(rec), revision, grace).await?
            }
            None => self
                .jobs
                .update(&key, encode(rec), revision)
                .await
                // Any failure of a revision-checked update may be a conflict (also under
                // load on R3 buckets), and a timeout may have been applied: callers re-read.
                .map_err(|e| match e.kind() {
                    kv::UpdateErrorKind::WrongLastRevision => StoreError::Conflict(key.clone()),
                    _ => transport(e),
                })?,
        };
        self.recent.lock().expect("recent").remember(rec, new_rev);
        Ok(new_rev)
    }

    /// Takes the hint out rather than copying it: the write it leads to remembers the
    /// new record, and a read that writes nothing falls back to a direct get.
    fn take_recent_job(&self, id: &JobId) -> Option<(JobRecord, u64)> {
        self.recent.lock().expect("recent").0.remove(id)
    }

    /// Read-modify-write of one job: takes the record (from [`RecentJobs`] if this
    /// coordinator wrote it last, else a direct get), applies `f`, writes it back
    /// revision-checked, and on a conflict starts over from the leader's copy. `f` sees
    /// the record read every time, so a retry decides again rather than replaying.
    ///
    /// A record `f` changes is stamped `updated_at = now` (the caller's server-anchored
    /// time), so every write says when it happened: the operator counters key a finished
    /// job by it and measure its submit→done latency from it.
    ///
    /// Returns `f`'s output, the record as written and its revision. When `f` returns
    /// `Ok((out, false))` nothing is written; that answer, any error and "no such job"
    /// always come from the leader's copy ([`Store::load_job_latest`]): only a
    /// successful write proves a hint or a direct get was current.
    pub async fn modify_job<T>(
        &self,
        id: &JobId,
        now: Timestamp,
        mut f: impl FnMut(&mut JobRecord) -> Result<(T, bool), RpcError>,
    ) -> Result<(T, JobRecord, u64), RpcError> {
        #[derive(PartialEq)]
        enum Source {
            Hint,
            Replica,
            Leader,
        }
        let mut hint = self.take_recent_job(id);
        let mut source = if hint.is_some() {
            Source::Hint
        } else {
            Source::Replica
        };
        for _ in 0..MAX_CAS_ATTEMPTS {
            let read = match source {
                Source::Hint => hint.take(),
                // Only a first guess: whatever goes wrong, the leader is asked next.
                Source::Replica => self.load_job(id).await.unwrap_or_else(|e| {
                    tracing::debug!(job = %id, error = %e, "direct get failed");
                    None
                }),
                Source::Leader => self.load_job_latest(id).await?,
            };
            let trusted = source == Source::Leader;
            // Whatever happens next, the next read is the leader's.
            source = Source::Leader;
            let Some((mut rec, rev)) = read else {
                if trusted {
                    return Err(StoreError::NotFound(format!("job {id}")).into());
                }
                continue;
            };
            let (out, changed) = match f(&mut rec) {
                Ok(decided) => decided,
                Err(_) if !trusted => continue,
                Err(e) => return Err(e),
            };
            if !changed {
                if !trusted {
                    continue;
                }
                return Ok((out, rec, rev));
            }
            rec.updated_at = now;
            match self.update_job(&rec, rev).await {
                Ok(new_rev) => return Ok((out, rec, new_rev)),
                Err(StoreError::Conflict(_)) => continue,
                Err(StoreError::Transport(e)) => {
                    tracing::debug!(job = %id, error = %e, "update failed, re-reading");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(
            StoreError::Conflict(format!("job {id} (gave up after {MAX_CAS_ATTEMPTS} tries)"))
                .into(),
        )
    }
}

/// A key's value and revision as the bucket's stream leader has it (`STREAM.MSG.GET`,
/// answered by the leader only, unlike a KV get's direct get: [`gf_auth::leader_copy`]);
/// `None` if the key was never written, deleted, purged, or expired (the marker left).
pub async fn latest_entry(
    bucket: &kv::Store,
    key: &str,
) -> Result<Option<(Bytes, u64)>, StoreError> {
    let entry = gf_auth::leader_copy::get(bucket, key)
        .await
        .map_err(transport)?;
    Ok(entry.map(|e| (e.value, e.revision)))
}

/// A stored value decoded; a value that does not decode is `Corrupt`, naming its key.
pub fn decode<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: key.into(),
        error: e.to_string(),
    })
}

pub fn encode<T: serde::Serialize>(v: &T) -> Bytes {
    let mut buf = Vec::with_capacity(ENCODE_CAPACITY);
    serde_json::to_writer(&mut buf, v).expect("wire types serialize");
    Bytes::from(buf)
}

/// The buffer [`encode`] starts with: a job record is ~300 bytes as JSON when
/// submitted and ~700 once finished, and `serde_json::to_vec` starts at 128 bytes, so
/// most records were copied two or three times as the buffer doubled (reallocation
/// and `memmove` were ~5 % of a loaded coordinator).
const ENCODE_CAPACITY: usize = 1024;

/// Reads the current value of every key in a bucket with one ordered consumer, rather
/// than a request per key.
pub async fn read_all(bucket: &kv::Store) -> Result<Vec<(String, Bytes)>, StoreError> {
    use futures::StreamExt;
    // `kv::Store::status` is cached from when the handle was made; ask the server.
    let mut stream = bucket.stream.clone();
    if stream.info().await.map_err(transport)?.state.messages == 0 {
        return Ok(Vec::new());
    }
    let mut watch = bucket.watch_with_history(">").await.map_err(transport)?;
    let mut out = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(5), watch.next())
            .await
            .map_err(|_| transport(format!("timed out reading bucket {}", bucket.name)))?;
        let Some(entry) = next else { break };
        let entry = entry.map_err(transport)?;
        if entry.operation == kv::Operation::Put {
            out.push((entry.key, entry.value));
        }
        if entry.delta == 0 {
            break;
        }
    }
    Ok(out)
}

/// Every value in a bucket that parses as `T` (others are skipped).
pub async fn read_all_as<T: serde::de::DeserializeOwned>(
    bucket: &kv::Store,
) -> Result<Vec<T>, StoreError> {
    Ok(read_all(bucket)
        .await?
        .into_iter()
        .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
        .collect())
}

/// Every job (newest first), optionally only those in `state`, at most `limit`.
pub async fn list_jobs(
    jobs: &kv::Store,
    state: Option<gf_schemas::JobState>,
    limit: usize,
) -> Result<Vec<JobRecord>, StoreError> {
    let mut out: Vec<JobRecord> = read_all_as::<JobRecord>(jobs)
        .await?
        .into_iter()
        .filter(|r| state.is_none_or(|s| s == r.state))
        .collect();
    out.sort_by_key(|r| std::cmp::Reverse(r.id));
    out.truncate(limit);
    Ok(out)
}
