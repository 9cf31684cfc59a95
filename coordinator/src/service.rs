//! The operations behind the RPC plane and the HTTP API. Each one validates its input,
//! applies a transition from [`crate::fsm`] through a revision-checked update, and
//! records an event. Transport layers only decode, call, and encode.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_nats::jetstream::kv;
use gf_schemas::names::{self, Routing};
use gf_schemas::rpc::{
    CancelReply, ClaimReply, ClaimRequest, CompleteReply, CompleteRequest, ControlMessage,
    HeartbeatReply, HeartbeatRequest, RegisterReply, RegisterRequest, ReleaseRequest, RenewReply,
    RenewRequest, Revocation, RevokeReason, SubmitReply,
};
use gf_schemas::{
    Capabilities, ErrorKind, EventKind, JobId, JobRecord, JobSpec, JobState, Level, RpcError,
    WorkerId, WorkerRecord, WorkerState,
};
use sha2::{Digest, Sha256};

use crate::clock::ServerClock;
use crate::config::CoordinatorConfig;
use crate::error::StoreError;
use crate::events::EventSink;
use crate::fsm;
use crate::metrics;
use crate::store::{encode, Store};

pub struct Service {
    pub store: Store,
    pub client: async_nats::Client,
    pub clock: ServerClock,
    pub events: EventSink,
    pub config: Arc<CoordinatorConfig>,
    pub routing: Routing,
    /// Capabilities never change for a worker id, so they are cached after the first
    /// read. A cache, not shared state: a miss just reads `gf_workers`.
    caps: Mutex<HashMap<WorkerId, Capabilities>>,
    /// Slots the leader's last pass left free, for dispatch at submission.
    pub lane: crate::lane::DirectLane,
    /// Records written here, for this process's leader view ([`crate::handoff`]).
    pub handoff: Arc<crate::handoff::Handoff>,
    /// The tracker bridge, set once at start (it submits through this service).
    pub bridge: std::sync::OnceLock<Arc<gf_bridge::Bridge>>,
    /// The jobs in the live store, for listing ([`crate::history::list`]); set at start.
    pub jobs_index: std::sync::OnceLock<crate::stats::StatsHandle>,
    /// Enrolled factories (a secured deployment): registration is narrowed to what
    /// enrollment approved. `None` on an open NATS.
    pub factories: Option<crate::auth::Factories>,
    /// Artifacts and checkpoints, set once at start.
    pub artifacts: std::sync::OnceLock<crate::artifacts::Artifacts>,
}

fn invalid(msg: impl Into<String>) -> RpcError {
    RpcError::new(ErrorKind::Invalid, msg)
}

/// Decodes a JSON request body, with an error that names what is wrong.
pub use gf_schemas::rpc::decode_request as decode;

impl Service {
    pub fn new(
        store: Store,
        client: async_nats::Client,
        clock: ServerClock,
        events: EventSink,
        config: Arc<CoordinatorConfig>,
    ) -> anyhow::Result<Self> {
        let routing = Routing::new(config.routing_dims.clone()).map_err(anyhow::Error::msg)?;
        Ok(Self {
            store,
            client,
            clock,
            events,
            config,
            routing,
            caps: Mutex::new(HashMap::new()),
            lane: crate::lane::DirectLane::default(),
            handoff: Arc::default(),
            bridge: std::sync::OnceLock::new(),
            jobs_index: std::sync::OnceLock::new(),
            factories: None,
            artifacts: std::sync::OnceLock::new(),
        })
    }

    /// Accepts a job. With an idempotency key, a repeat returns the first job.
    pub async fn submit(&self, body: &[u8]) -> Result<SubmitReply, RpcError> {
        self.submit_as(body, JobId::new()).await
    }

    /// [`Service::submit`], with `id` for the job if it is new. Separate so a test can
    /// put a racing submission's job in the store before this one creates it.
    async fn submit_as(&self, body: &[u8], id: JobId) -> Result<SubmitReply, RpcError> {
        let spec: JobSpec = decode("job spec", body, self.config.max_submit_bytes)?;
        self.submit_spec_as(spec, id).await
    }

    /// Accepts a decoded submission: resolves its profile, validates, and creates the
    /// job (or, for a repeated idempotency key, returns the first one).
    pub async fn submit_spec(&self, spec: JobSpec) -> Result<SubmitReply, RpcError> {
        self.submit_spec_as(spec, JobId::new()).await
    }

    async fn submit_spec_as(&self, spec: JobSpec, mut id: JobId) -> Result<SubmitReply, RpcError> {
        let (spec, provenance) = crate::profiles::apply(&self.config.profiles, spec)?;
        spec.validate().map_err(|e| invalid(e.to_string()))?;
        self.check_references(&spec).await?;
        if self.config.refuse_over_budget {
            if let Some(b) = self.budget(&spec.product).await? {
                if let Some(reason) = b.blocked() {
                    return Err(RpcError::new(
                        ErrorKind::WrongState,
                        format!("refused: {reason}"),
                    ));
                }
            }
        }
        let mut duplicate = false;
        if let Some(key) = &spec.idempotency_key {
            let hash = hex::encode(Sha256::digest(key.as_bytes()));
            let idem_key = names::idem_key(&spec.product, &hash);
            match self
                .store
                .idem
                .create(&idem_key, id.to_string().into())
                .await
            {
                Ok(_) => {}
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    let first = self
                        .store
                        .idem
                        .get(&idem_key)
                        .await
                        .map_err(|e| StoreError::Transport(e.to_string()))?
                        .ok_or_else(|| {
                            RpcError::new(
                                ErrorKind::Conflict,
                                "idempotency key is being written; retry",
                            )
                        })?;
                    id = std::str::from_utf8(&first)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| {
                            RpcError::new(ErrorKind::Internal, "corrupt idempotency entry")
                        })?;
                    duplicate = true;
                    if let Some((rec, _)) = self.store.load_job(&id).await? {
                        return Ok(SubmitReply {
                            job_id: id,
                            duplicate,
                            state: rec.state,
                        });
                    }
                    if let Some(rec) = crate::history::archive::find(&self.store.js, &id).await? {
                        return Ok(SubmitReply {
                            job_id: id,
                            duplicate,
                            state: rec.state,
                        });
                    }
                    if crate::history::may_have_expired(self.store.history(), &id, self.clock.now())
                    {
                        // The job may have finished and left the store: creating it
                        // again would run it twice.
                        return Err(RpcError::new(
                            ErrorKind::Conflict,
                            format!("idempotency key already used by job {id}, which has finished and left the live store"),
                        ));
                    }
                    // The first submission stored the key but not the job (it crashed in
                    // between): this repeat carries the same spec, so finish the job.
                }
                Err(e) => return Err(StoreError::Transport(e.to_string()).into()),
            }
        }
        let now = self.clock.now();
        let mut rec = JobRecord::new(id, spec, now);
        rec.provenance = provenance;
        rec.trace_parent = gf_telemetry::trace::current_traceparent();
        let rules = crate::lane::Rules {
            scoring: &self.config.scoring,
            limits: &self.config.limits,
        };
        let ticket = self
            .lane
            .take(&rec, &rules, now)
            .and_then(|(ticket, score)| {
                fsm::lease_at_dispatch(
                    &mut rec,
                    ticket.worker(),
                    self.config.lease_ttl,
                    self.config.claim_timeout,
                    now,
                )
                .ok()?;
                rec.score = Some(score);
                Some(ticket)
            });
        // The revision to hand the record over at, when it goes to the view that way.
        let mut created = None;
        let state = match self.store.create_job(&rec).await {
            Ok(rev) => {
                self.events.job(EventKind::JobSubmitted, &rec, "");
                match ticket {
                    Some(ticket) => self.dispatched_at_submit(ticket, &rec, rev).await,
                    None => created = Some(rev),
                }
                rec.state
            }
            // The job id came from the idempotency key, and a concurrent submission with
            // the same key created it first: a repeat finishing a half-written
            // submission, or, when this one wrote the key, a repeat that saw the key
            // before this one created the job and finished it. Either way the job is
            // there, and whether this submission is the duplicate stays as the key said.
            Err(StoreError::Conflict(_)) if rec.spec.idempotency_key.is_some() => {
                drop(ticket);
                match self.store.load_job(&id).await? {
                    Some((current, _)) => current.state,
                    None => JobState::Pending,
                }
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(parent) = rec.spec.parent {
            self.adopt(&parent, id).await?;
        }
        if !duplicate {
            metrics::submitted(&rec.spec.queue, &rec.spec.product);
        }
        if let Some(rev) = created {
            self.handoff.give(rec, rev);
        }
        Ok(SubmitReply {
            job_id: id,
            duplicate,
            state,
        })
    }

    /// The rest of a dispatch decided at submission ([`crate::lane`]): the grant to the
    /// worker, the event, and handing the record to the leader's view.
    async fn dispatched_at_submit(
        &self,
        ticket: crate::lane::Ticket<'_>,
        rec: &JobRecord,
        rev: u64,
    ) {
        if let Some(grant) = fsm::grant(rec) {
            crate::dispatch::send(&self.client, ticket.worker(), vec![grant]).await;
        }
        // The event names the worker (the lease's holder).
        self.events
            .job(EventKind::JobDispatched, rec, crate::lane::EVENT_MESSAGE);
        metrics::dispatched(&rec.spec.queue, metrics::DispatchedBy::Submission);
        self.lane.created(ticket, rec.clone(), rev);
    }

    /// Dependencies and the parent must exist (so a graph can never have a cycle: a
    /// job can only point at jobs created before it), and the parent must not be done.
    async fn check_references(&self, spec: &JobSpec) -> Result<(), RpcError> {
        for dep in &spec.depends_on {
            if self.store.find_job(dep).await?.is_none()
                && crate::history::archive::find(&self.store.js, dep)
                    .await?
                    .is_none()
            {
                return Err(invalid(format!("`depends_on`: no job {dep}")));
            }
        }
        if let Some(p) = &spec.parent {
            match self.store.find_job(p).await? {
                None => return Err(invalid(format!("`parent`: no job {p}"))),
                Some((rec, _)) if rec.state.is_terminal() => {
                    return Err(RpcError::new(
                        ErrorKind::WrongState,
                        format!("parent {p} already {}", rec.state),
                    ))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Records `child` under `parent`, so the parent's completion waits for it.
    async fn adopt(&self, parent: &JobId, child: JobId) -> Result<(), RpcError> {
        self.store
            .modify_job(parent, self.clock.now(), |rec| {
                if rec.children.contains(&child) {
                    return Ok(((), false));
                }
                if rec.state.is_terminal() {
                    return Err(RpcError::new(
                        ErrorKind::WrongState,
                        format!("parent {parent} already {}", rec.state),
                    ));
                }
                rec.children.push(child);
                Ok(((), true))
            })
            .await?;
        Ok(())
    }

    pub async fn submit_child(
        &self,
        req: gf_schemas::rpc::ChildRequest,
    ) -> Result<SubmitReply, RpcError> {
        let mut spec = req.spec;
        spec.parent = Some(req.parent);
        self.submit(&encode(&spec)).await
    }

    pub async fn requeue(&self, id: &JobId) -> Result<CancelReply, RpcError> {
        let rec = match self
            .store
            .modify_job(id, self.clock.now(), |rec| Ok((fsm::requeue(rec)?, true)))
            .await
        {
            Ok((_, rec, _)) => rec,
            // Past its grace period: back from the archive.
            Err(e) if e.kind == ErrorKind::NotFound => {
                crate::history::requeue_archived(&self.store, id).await?
            }
            Err(e) => return Err(e),
        };
        // Live again: its archived copy (if the archiver made one) no longer describes it.
        if let Err(e) = crate::history::archive::forget(&self.store.js, id).await {
            tracing::warn!(job = %id, error = %e, "requeued job's archived copy not removed");
        }
        self.events
            .job(EventKind::JobSubmitted, &rec, "requeued by operator");
        Ok(CancelReply { state: rec.state })
    }

    pub async fn reject(
        &self,
        id: &JobId,
        reason: Option<String>,
    ) -> Result<CancelReply, RpcError> {
        let reason = reason.unwrap_or_else(|| "rejected by operator".into());
        let (_, rec, _) = self
            .store
            .modify_job(id, self.clock.now(), |rec| {
                Ok((fsm::reject(rec, &reason)?, true))
            })
            .await?;
        self.events
            .job(EventKind::JobCancelled, &rec, format!("rejected: {reason}"));
        metrics::finished(&rec.spec.queue, JobState::Rejected);
        Ok(CancelReply { state: rec.state })
    }

    /// Why a job is where it is: score terms, every live worker's fit, what it waits for.
    pub async fn explain(&self, id: &JobId) -> Result<gf_schemas::Explanation, RpcError> {
        let rec = self.get_job(id).await?;
        let mut view = crate::plan::View {
            learned: crate::outcomes::warm(&self.store.js, &self.routing, self.clock.now()).await,
            ..Default::default()
        };
        let transport = |e: StoreError| RpcError::from(e);
        for (k, v) in crate::store::read_all(&self.store.workers)
            .await
            .map_err(transport)?
        {
            view.apply_worker(&k, kv::Operation::Put, &v);
        }
        for (k, v) in crate::store::read_all(&self.store.budgets)
            .await
            .map_err(transport)?
        {
            view.apply_budget(&k, kv::Operation::Put, &v);
        }
        for (k, v) in crate::store::read_all(&self.store.jobs)
            .await
            .map_err(transport)?
        {
            view.apply_job(&k, 1, kv::Operation::Put, &v);
        }
        let policy = crate::scheduler::policy(self);
        Ok(crate::plan::explain(
            &rec,
            &view,
            &policy,
            &crate::plan::StartLog::default(),
            self.clock.now(),
        ))
    }

    /// The job with its dependencies and children, transitively (at most 500 nodes).
    pub async fn dag(&self, id: &JobId) -> Result<gf_schemas::rpc::Dag, RpcError> {
        let mut nodes = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut queue = std::collections::VecDeque::from([*id]);
        while let Some(j) = queue.pop_front() {
            if !seen.insert(j) || nodes.len() >= 500 {
                continue;
            }
            let Some((rec, _)) = self.store.load_job(&j).await? else {
                if j == *id {
                    return Err(RpcError::new(ErrorKind::NotFound, format!("no job {id}")));
                }
                continue;
            };
            queue.extend(rec.spec.depends_on.iter().copied());
            queue.extend(rec.children.iter().copied());
            queue.extend(rec.spec.parent);
            nodes.push(gf_schemas::rpc::DagNode {
                job_id: rec.id,
                state: rec.state,
                command: rec.spec.command.join(" "),
                depends_on: rec.spec.depends_on.clone(),
                children: rec.children.clone(),
                parent: rec.spec.parent,
            });
        }
        Ok(gf_schemas::rpc::Dag { root: *id, nodes })
    }

    pub async fn budget(&self, product: &str) -> Result<Option<gf_schemas::Budget>, RpcError> {
        if !names::is_token(product) {
            return Ok(None);
        }
        let entry = self
            .store
            .budgets
            .entry(product)
            .await
            .map_err(|e| StoreError::Transport(e.to_string()))?;
        Ok(entry
            .filter(|e| e.operation == kv::Operation::Put)
            .and_then(|e| serde_json::from_slice(&e.value).ok()))
    }

    /// Read-modify-write of a product's budget (created on first use), revision-checked.
    pub async fn update_budget(
        &self,
        product: &str,
        mut f: impl FnMut(&mut gf_schemas::Budget) -> Result<bool, RpcError>,
    ) -> Result<gf_schemas::Budget, RpcError> {
        if !names::is_token(product) {
            return Err(invalid(format!("`{product}` is not a product name")));
        }
        for _ in 0..32 {
            let now = self.clock.now();
            let entry = self
                .store
                .budgets
                .entry(product)
                .await
                .map_err(|e| StoreError::Transport(e.to_string()))?;
            let (mut b, rev) = match entry.filter(|e| e.operation == kv::Operation::Put) {
                Some(e) => (crate::store::decode(product, &e.value)?, Some(e.revision)),
                None => (gf_schemas::Budget::new(product, now), None),
            };
            let rolled = b.roll_period(now);
            if !f(&mut b)? && !rolled && rev.is_some() {
                return Ok(b);
            }
            let written = match rev {
                Some(r) => self
                    .store
                    .budgets
                    .update(product, encode(&b), r)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                None => self
                    .store
                    .budgets
                    .create(product, encode(&b))
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
            };
            match written {
                Ok(()) => return Ok(b),
                Err(e) => tracing::debug!(product, error = %e, "budget write conflict; re-reading"),
            }
        }
        Err(RpcError::new(
            ErrorKind::Conflict,
            format!("budget {product} is being changed concurrently; retry"),
        ))
    }

    pub async fn budget_list(&self) -> Result<Vec<gf_schemas::Budget>, RpcError> {
        Ok(crate::store::read_all_as(&self.store.budgets).await?)
    }

    pub async fn budget_set(
        &self,
        u: gf_schemas::rpc::BudgetUpdate,
    ) -> Result<gf_schemas::Budget, RpcError> {
        if u.limit_cost.is_some_and(|c| !c.is_finite()) {
            return Err(invalid("`limit_cost` must be a number"));
        }
        if u.limit_worker_hours.is_some_and(|h| !h.is_finite()) {
            return Err(invalid("`limit_worker_hours` must be a number"));
        }
        if u.period_secs
            .is_some_and(|p| p > gf_schemas::budget::MAX_PERIOD_SECS)
        {
            return Err(invalid(format!(
                "`period_secs` must be at most {} (100 years); 0 means the budget never resets",
                gf_schemas::budget::MAX_PERIOD_SECS
            )));
        }
        let b = self
            .update_budget(&u.product, |b| {
                if let Some(c) = u.limit_cost {
                    b.limit_cost = (c >= 0.0).then_some(c);
                }
                if let Some(t) = u.limit_tokens {
                    b.limit_tokens = (t > 0).then_some(t);
                }
                if let Some(p) = u.period_secs {
                    b.period_secs = (p > 0).then_some(p);
                }
                if let Some(p) = u.paused {
                    b.paused = p;
                }
                if let Some(h) = u.limit_worker_hours {
                    b.limit_worker_hours = (h >= 0.0).then_some(h);
                }
                Ok(true)
            })
            .await?;
        metrics::budget(&b);
        Ok(b)
    }

    pub async fn schedule_add(
        &self,
        mut sched: gf_schemas::Schedule,
    ) -> Result<gf_schemas::Schedule, RpcError> {
        if !names::is_token(&sched.name) {
            return Err(invalid(
                "`name` must be 1-128 characters from A-Z a-z 0-9 _ -",
            ));
        }
        crate::cron::parse(&sched.cron).map_err(invalid)?;
        sched.spec.validate().map_err(|e| invalid(e.to_string()))?;
        // Only ticks from now on fire.
        sched.last_tick = Some(self.clock.now());
        self.store
            .schedules
            .create(&sched.name, encode(&sched))
            .await
            .map_err(|e| match e.kind() {
                kv::CreateErrorKind::AlreadyExists => RpcError::new(
                    ErrorKind::Conflict,
                    format!("schedule {} exists", sched.name),
                ),
                _ => StoreError::Transport(e.to_string()).into(),
            })?;
        Ok(sched)
    }

    pub async fn schedule_list(&self) -> Result<Vec<gf_schemas::Schedule>, RpcError> {
        Ok(crate::store::read_all_as(&self.store.schedules).await?)
    }

    pub async fn schedule_remove(&self, name: &str) -> Result<(), RpcError> {
        if !names::is_token(name) {
            return Err(RpcError::new(
                ErrorKind::NotFound,
                format!("no schedule {name}"),
            ));
        }
        if self
            .store
            .schedules
            .get(name)
            .await
            .map_err(|e| StoreError::Transport(e.to_string()))?
            .is_none()
        {
            return Err(RpcError::new(
                ErrorKind::NotFound,
                format!("no schedule {name}"),
            ));
        }
        self.store
            .schedules
            .purge(name)
            .await
            .map_err(|e| StoreError::Transport(e.to_string()))?;
        Ok(())
    }

    /// Publishes an attempt's usage for the budget accountant. Deduplicated by job and
    /// epoch, so a retried completion cannot count twice.
    async fn publish_usage(
        &self,
        rec: &JobRecord,
        epoch: u64,
        usage: &gf_schemas::Usage,
    ) -> Result<(), RpcError> {
        let entry = gf_schemas::budget::UsageEntry {
            job_id: rec.id,
            epoch,
            product: rec.spec.product.clone(),
            cost: usage.cost,
            tokens: usage.input_tokens + usage.output_tokens,
            worker_secs: 0.0,
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("{}:{epoch}", rec.id).as_str());
        let unavailable = |e: String| {
            RpcError::new(
                ErrorKind::Unavailable,
                format!("usage not recorded, retry: {e}"),
            )
        };
        self.store
            .js
            .publish_with_headers(names::usage(&rec.spec.product), headers, encode(&entry))
            .await
            .map_err(|e| unavailable(e.to_string()))?
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        Ok(())
    }

    /// A page of jobs: the live store's, then the archive's (docs/history.md).
    pub async fn list_jobs(
        &self,
        req: gf_schemas::rpc::JobListRequest,
    ) -> Result<gf_schemas::rpc::JobPage, RpcError> {
        let index = self.jobs_index.get().ok_or_else(|| {
            RpcError::new(ErrorKind::Unavailable, "the jobs index is not started yet")
        })?;
        crate::history::list::list(&self.store, index, &req).await
    }

    /// A job wherever it is: the live store (live or in its grace period), else the
    /// archive.
    pub async fn get_job(&self, id: &JobId) -> Result<JobRecord, RpcError> {
        // `find_job`, not a bare direct get: a replica behind the create (three NATS
        // nodes) must not make a job just submitted look missing; "no job" comes from
        // the stream leader's copy.
        if let Some((rec, _)) = self.store.find_job(id).await? {
            return Ok(rec);
        }
        match crate::history::archive::find(&self.store.js, id).await? {
            Some(rec) => Ok(rec),
            None => Err(RpcError::new(ErrorKind::NotFound, format!("no job {id}"))),
        }
    }

    pub async fn cancel(
        &self,
        id: &JobId,
        reason: Option<String>,
    ) -> Result<CancelReply, RpcError> {
        let reason = reason.unwrap_or_else(|| "cancelled by operator".into());
        self.cancel_with(id, reason, RevokeReason::Cancelled).await
    }

    async fn cancel_with(
        &self,
        id: &JobId,
        reason: String,
        why: RevokeReason,
    ) -> Result<CancelReply, RpcError> {
        let now = self.clock.now();
        let ((revocation, changed), rec, _) = self
            .store
            .modify_job(id, now, |rec| {
                let changed = rec.state != JobState::Cancelled;
                let r = fsm::cancel(rec, &reason, now)?;
                Ok(((r, changed), changed))
            })
            .await?;
        if changed {
            metrics::finished(&rec.spec.queue, JobState::Cancelled);
        }
        if let Some(mut rev) = revocation {
            rev.reason = why;
            metrics::revoked(rev.reason);
            let holder = rec
                .history
                .iter()
                .rev()
                .find(|a| a.epoch == rev.epoch)
                .map(|a| a.worker.clone());
            if let Some(worker) = holder {
                self.push_revocation(&worker, rev).await;
            }
        }
        self.events.job(EventKind::JobCancelled, &rec, reason);
        Ok(CancelReply { state: rec.state })
    }

    /// Tells a worker to stop a job now. Best effort: the worker also learns it from its
    /// next renew or heartbeat.
    pub async fn push_revocation(&self, worker: &WorkerId, revocation: Revocation) {
        let msg = ControlMessage::Revoke(revocation);
        if let Err(e) = self
            .client
            .publish(names::worker_control(worker), encode(&msg))
            .await
        {
            tracing::warn!(%worker, error = %e, "could not push revocation");
        }
    }

    pub async fn register(&self, mut req: RegisterRequest) -> Result<RegisterReply, RpcError> {
        if let Some(f) = &self.factories {
            req.capabilities = f.approve(&req.worker_id, &req.capabilities).await?;
        }
        req.validate()?;
        // The consumer first: a worker told to bind it must find it.
        let consumer =
            crate::consumers::ensure(&self.store.js, &self.routing, &req.capabilities).await?;
        // An enrolled factory may bind it from its next connection on (the worker
        // reconnects for a consumer its connection was not granted).
        if let Some(f) = &self.factories {
            f.grant(&req.worker_id, &consumer).await?;
        }
        let now = self.clock.now();
        let rec = WorkerRecord {
            id: req.worker_id.clone(),
            capabilities: req.capabilities.clone(),
            slots: req.slots,
            free_slots: req.slots,
            running: Vec::new(),
            // Active from its first heartbeat, once its consumer is bound.
            state: WorkerState::Starting,
            version: req.version,
            hostname: req.hostname,
            registered_at: now,
            last_heartbeat: now,
        };
        self.store
            .workers
            .put(req.worker_id.as_str(), encode(&rec))
            .await
            .map_err(|e| StoreError::Transport(e.to_string()))?;
        self.caps
            .lock()
            .expect("caps")
            .insert(req.worker_id.clone(), req.capabilities);
        self.events.emit(
            EventKind::WorkerRegistered,
            Level::Info,
            None,
            Some(&req.worker_id),
            format!("{} slots", req.slots),
        );
        Ok(RegisterReply {
            routing_dims: self.routing.dims().to_vec(),
            heartbeat_interval_ms: self.config.heartbeat_interval.as_millis() as u64,
            consumer,
        })
    }

    /// A worker's record: a direct get, or when that finds none the stream leader's
    /// copy (a replica may not have a registration made a moment ago on another
    /// coordinator; "unknown" sends the worker to register again).
    async fn load_worker(&self, id: &WorkerId) -> Result<Option<(WorkerRecord, u64)>, RpcError> {
        let entry = self
            .store
            .workers
            .entry(id.as_str())
            .await
            .map_err(|e| StoreError::Transport(e.to_string()))?;
        let found = match entry {
            Some(e) if e.operation == kv::Operation::Put => Some((e.value, e.revision)),
            _ => crate::store::latest_entry(&self.store.workers, id.as_str()).await?,
        };
        let Some((value, rev)) = found else {
            return Ok(None);
        };
        Ok(Some((crate::store::decode(id.as_str(), &value)?, rev)))
    }

    pub async fn heartbeat(&self, req: HeartbeatRequest) -> Result<HeartbeatReply, RpcError> {
        let Some((mut rec, _)) = self.load_worker(&req.worker_id).await? else {
            return Ok(HeartbeatReply {
                known: false,
                revoked: Vec::new(),
            });
        };
        let was_draining = rec.state == WorkerState::Draining;
        rec.last_heartbeat = self.clock.now();
        rec.free_slots = req.free_slots.min(rec.slots);
        rec.running = req.running.clone();
        rec.state = req.state;
        self.store
            .workers
            .put(req.worker_id.as_str(), encode(&rec))
            .await
            .map_err(|e| StoreError::Transport(e.to_string()))?;
        if req.state == WorkerState::Draining && !was_draining {
            self.events.emit(
                EventKind::WorkerDraining,
                Level::Info,
                None,
                Some(&req.worker_id),
                "",
            );
        }
        // Anything the worker runs that it no longer holds must stop (decided on the
        // leader's copy: a lagging replica must not stop a job it has not seen start).
        // All the worker's jobs at once: one round trip, not one per job.
        let worker = &req.worker_id;
        let checks = req.running.iter().map(|job| async move {
            let held = self.store.held_job(&job.job_id, job.epoch, worker).await;
            (job, held)
        });
        let mut revoked = Vec::new();
        for (job, held) in futures::future::join_all(checks).await {
            match held {
                Ok(_) => {}
                Err(e) if matches!(e.kind, ErrorKind::Unavailable | ErrorKind::Internal) => {
                    return Err(e)
                }
                Err(_) => {
                    metrics::revoked(RevokeReason::Superseded);
                    revoked.push(Revocation {
                        job_id: job.job_id,
                        epoch: job.epoch,
                        reason: RevokeReason::Superseded,
                    });
                }
            }
        }
        Ok(HeartbeatReply {
            known: true,
            revoked,
        })
    }

    async fn capabilities(&self, worker: &WorkerId) -> Result<Capabilities, RpcError> {
        if let Some(c) = self.caps.lock().expect("caps").get(worker) {
            return Ok(c.clone());
        }
        let Some((rec, _)) = self.load_worker(worker).await? else {
            return Err(RpcError::new(
                ErrorKind::NotEligible,
                format!("worker {worker} is not registered"),
            ));
        };
        self.caps
            .lock()
            .expect("caps")
            .insert(worker.clone(), rec.capabilities.clone());
        Ok(rec.capabilities)
    }

    pub async fn claim(&self, req: ClaimRequest) -> Result<ClaimReply, RpcError> {
        let caps = self.capabilities(&req.worker_id).await?;
        let ttl = self.config.lease_ttl;
        let now = self.clock.now();
        let claimed = self
            .store
            .modify_job(&req.job_id, now, |rec| {
                let first = rec.state == JobState::Dispatched;
                let reply = fsm::claim(rec, req.epoch, &req.worker_id, &caps, ttl, now)?;
                Ok((reply, first))
            })
            .await;
        metrics::claim(claimed.as_ref().map(|_| ()).map_err(|e| e.kind));
        let (reply, rec, _) = claimed?;
        self.started(&rec, req.epoch, now);
        Ok(reply)
    }

    /// A start confirmed (a claim, or the first renewal or completion of a lease
    /// granted at dispatch): the queue wait and the `job_claimed` event.
    fn started(&self, rec: &JobRecord, epoch: u64, now: gf_schemas::Timestamp) {
        let mut attempts = rec.history.iter().rev().skip_while(|a| a.epoch != epoch);
        let started_at = attempts.next().map_or(now, |a| a.started_at);
        // Waiting since submission, or since the previous attempt ended.
        let ready_since = attempts
            .next()
            .and_then(|a| a.ended_at)
            .unwrap_or(rec.submitted_at);
        metrics::queue_wait(&rec.spec.queue, started_at.since(ready_since));
        self.events.job(
            EventKind::JobClaimed,
            rec,
            format!("started, attempt {}", rec.attempts),
        );
    }

    pub async fn renew(&self, req: RenewRequest) -> Result<RenewReply, RpcError> {
        let now = self.clock.now();
        if let Some(usage) = &req.usage {
            let rec = self
                .store
                .held_job(&req.job_id, req.epoch, &req.worker_id)
                .await
                .inspect_err(|e| metrics::fenced("renew", e.kind))?;
            if let Some(cap) = rec.spec.max_cost.filter(|cap| usage.cost > *cap) {
                let reason = format!("budget_exceeded: spent {} of max_cost {cap}", usage.cost);
                self.publish_usage(&rec, req.epoch, usage).await?;
                self.cancel_with(
                    &req.job_id,
                    reason.clone(),
                    gf_schemas::rpc::RevokeReason::BudgetExceeded,
                )
                .await?;
                return Err(RpcError::new(ErrorKind::Revoked, reason));
            }
        }
        let ran = req.ran_ms.map(std::time::Duration::from_millis);
        let ((lease, first), rec, _) = self
            .store
            .modify_job(&req.job_id, now, |rec| {
                let first = rec.state == JobState::Dispatched;
                let lease = fsm::renew(rec, req.epoch, &req.worker_id, ran, now)?;
                Ok(((lease, first), true))
            })
            .await?;
        if first {
            metrics::claim(Ok(()));
            self.started(&rec, req.epoch, now);
        }
        Ok(RenewReply { lease })
    }

    pub async fn complete(&self, req: CompleteRequest) -> Result<CompleteReply, RpcError> {
        let now = self.clock.now();
        let cfg = &self.config;
        let ran = req.ran_ms.map(std::time::Duration::from_millis);
        let ((done, first), rec, rev) = self
            .store
            .modify_job(&req.job_id, now, |rec| {
                let first = rec.state == JobState::Dispatched;
                // The attempt being completed: not counted yet when this completion is
                // what confirms its start.
                let delay = fsm::backoff(
                    rec.attempts + u32::from(first),
                    cfg.retry_base,
                    cfg.retry_max,
                    rand::random::<f64>(),
                );
                let done = fsm::complete(
                    rec,
                    req.epoch,
                    &req.worker_id,
                    &req.outcome,
                    req.result.as_ref(),
                    req.usage.as_ref(),
                    delay,
                    ran,
                    now,
                )?;
                let changed = done != fsm::Completed::AlreadyApplied;
                Ok(((done, first), changed))
            })
            .await
            .inspect_err(|e| metrics::fenced("complete", e.kind))?;
        if let Some(u) = req
            .usage
            .as_ref()
            .filter(|u| u.cost > 0.0 || u.input_tokens + u.output_tokens > 0)
        {
            // Also on a repeat: the first try may have stopped before publishing.
            self.publish_usage(&rec, req.epoch, u).await?;
        }
        if first {
            metrics::claim(Ok(()));
            self.started(&rec, req.epoch, now);
        }
        let what = fsm::describe(&req.outcome);
        if done != fsm::Completed::AlreadyApplied {
            let queue = &rec.spec.queue;
            if let Some(a) = rec.history.iter().rev().find(|a| a.epoch == req.epoch) {
                metrics::attempt_finished(queue, &req.outcome, now.since(a.started_at));
            }
            if let Some(u) = &req.usage {
                metrics::usage(u);
            }
            match done {
                fsm::Completed::Retry { .. } => metrics::retry(queue),
                _ => metrics::finished(queue, rec.state),
            }
        }
        match done {
            fsm::Completed::Succeeded => self.events.job(EventKind::JobSucceeded, &rec, what),
            fsm::Completed::Retry { retry_at } => {
                self.events.job(EventKind::JobFailed, &rec, what.clone());
                self.events.job(
                    EventKind::JobRetryScheduled,
                    &rec,
                    format!("retry at {retry_at} after: {what}"),
                );
            }
            fsm::Completed::Dead => self.events.job(
                EventKind::JobDead,
                &rec,
                rec.reason.clone().unwrap_or_default(),
            ),
            fsm::Completed::AlreadyApplied => {}
        }
        let state = rec.state;
        if done != fsm::Completed::AlreadyApplied {
            self.handoff.give(rec, rev);
        }
        Ok(CompleteReply { state })
    }

    pub async fn release(&self, req: ReleaseRequest) -> Result<(), RpcError> {
        let now = self.clock.now();
        let (_, rec, _) = self
            .store
            .modify_job(&req.job_id, now, |rec| {
                fsm::release(rec, req.epoch, &req.worker_id, &req.reason, now)?;
                Ok(((), true))
            })
            .await?;
        self.events.job(EventKind::JobReleased, &rec, req.reason);
        Ok(())
    }

    /// Records a refused request in the audit trail (the requester gets the error too).
    pub fn rejected(&self, subject: &str, err: &RpcError) {
        if matches!(err.kind, ErrorKind::Invalid | ErrorKind::TooLarge) {
            self.events.emit(
                EventKind::RpcRejected,
                Level::Warn,
                None,
                None,
                format!("{subject}: {}", err.message),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use gf_schemas::Timestamp;

    use super::*;

    /// The race the chaos `idempotency` scenario found (1 run in 6): a first submission
    /// writes its key, a repeat reads the key, finds no job yet and creates it, and only
    /// then does the first submission create its job. Played here in that order: the
    /// first submission must answer with the job as the one that is not a duplicate
    /// (it failed with "conflict" before the fix), and `job_submitted` is left to the
    /// submission that created the job.
    #[tokio::test]
    async fn a_first_submission_whose_job_a_racing_repeat_created_still_succeeds(
    ) -> anyhow::Result<()> {
        let nats = gf_testkit::NatsServer::start()?;
        let client = async_nats::connect(nats.url()).await?;
        let js = async_nats::jetstream::new(client.clone());
        let store = Store::open(js.clone(), 1).await?;
        let (events, events_task) = EventSink::start(client.clone(), "test".into());
        let clock = ServerClock::anchored(Timestamp::now_local());
        let config = Arc::new(CoordinatorConfig::default());
        let service = Service::new(store.clone(), client, clock.clone(), events, config)?;

        let mut spec = JobSpec::command(["true"]);
        spec.idempotency_key = Some("ticket-42".into());
        let body = serde_json::to_vec(&spec)?;
        let id = JobId::new();
        // The racing repeat's job, with the id the first submission is about to use.
        let raced = JobRecord::new(id, spec.clone(), clock.now());
        store.create_job(&raced).await?;

        let first = service.submit_as(&body, id).await?;
        assert_eq!(first.job_id, id);
        assert!(
            !first.duplicate,
            "the submission that wrote the key is the first"
        );
        assert_eq!(first.state, raced.state);

        let repeat = service.submit(&body).await?;
        assert_eq!(repeat.job_id, id);
        assert!(repeat.duplicate);

        // A marker after the submissions: events reach the stream in the order they
        // were published, so once the marker is read, any job_submitted they emitted
        // has been read too (the stream stores plain publishes on its own schedule).
        service
            .events
            .emit(EventKind::JobSubmitted, Level::Info, None, None, "marker");
        drop(service);
        events_task.close().await;
        let marker = |events: &[gf_schemas::Event]| events.iter().any(|e| e.message == "marker");
        let read = crate::events::testing::read_until(&js, marker).await?;
        let for_job = read
            .iter()
            .flat_map(|(_, events)| events)
            .filter(|e| e.kind == EventKind::JobSubmitted && e.job_id == Some(id))
            .count();
        assert_eq!(
            for_job, 0,
            "job_submitted from a submission that created nothing"
        );
        Ok(())
    }
}
