//! Job state transitions as pure functions on a [`JobRecord`].
//!
//! Every RPC and scheduler decision that changes a job goes through one of these, on a
//! freshly read record, and the result is written back with a revision-checked update
//! (see `store::Store::modify_job`). They take the current server-anchored time as a
//! parameter so tests can pin it.
//!
//! The lifecycle: the leader grants the lease at dispatch ([`lease_at_dispatch`]: the
//! record becomes `dispatched` at a new epoch, leased to the worker the planner chose,
//! until a short start deadline); the worker's first renewal or its completion
//! confirms the start (`dispatched` → `running`, the attempt opens, the lease runs for
//! its TTL); a grant not confirmed by the deadline is taken back ([`expire_start`]).
//! No claim round trip and no claim write. A claim ([`claim`]) is still answered: by the
//! lease holder it confirms the start, and a record dispatched without a lease (an
//! earlier coordinator's notice) is claimed as before.
//!
//! What `dispatched` means (for whoever builds on it):
//! - with a lease: granted to `lease.worker` at `lease.epoch` (= the record's epoch),
//!   the start not confirmed yet; `lease.granted_at` is the dispatch, `lease.expires_at`
//!   the start deadline. The worker may already be running it (its confirmation is in
//!   flight), so it is not free to hand to someone else: it comes back only through
//!   [`take_back_grant`] (the reaper's [`expire_start`] at the deadline, a release by
//!   the holder, a cancellation), which revokes the holder and fences it by epoch;
//! - without a lease: a notice of an earlier coordinator on the pull consumer, any
//!   fitting worker's claim takes it ([`expire_claim`] at the claim timeout).
//!
//! The leader never grants a worker more jobs than it has slots (running ones and
//! unconfirmed grants both count, see `plan`): a grant is started on arrival, so the
//! start deadline only has to cover the grant's trip and a short stall of the worker
//! (its first renewal is due a quarter of the window after the start), never a wait
//! for a slot.
//!
//! Invariants kept here:
//! - `epoch` only rises, and only in [`dispatch`];
//! - a job has a lease iff it is `running`, or `dispatched` with a grant not yet
//!   confirmed; the lease's epoch is the record's epoch;
//! - a write from a worker is accepted only if it holds the lease at the record's epoch
//!   ([`check_holder`]); otherwise the worker is told `stale_epoch` or `revoked`;
//! - an attempt is counted (`attempts`, an entry in `history`) when its start is
//!   confirmed; a grant taken back unconfirmed leaves a history entry without an
//!   outcome (the worker may have run it: its effects stay attributable) and no count;
//! - retries of a claim or completion whose reply was lost get the same answer again.

use std::time::Duration;

use gf_schemas::rpc::{ClaimReply, LeaseGrant, Revocation, RevokeReason};
use gf_schemas::{
    Attempt, AttemptOutcome, Capabilities, ErrorKind, JobRecord, JobState, Lease, RpcError,
    Timestamp, Usage, WorkerId,
};

fn err(kind: ErrorKind, msg: impl Into<String>) -> RpcError {
    RpcError::new(kind, msg)
}

/// Refuses a write unless `worker` holds the lease at the record's current epoch.
pub fn check_holder(rec: &JobRecord, epoch: u64, worker: &WorkerId) -> Result<(), RpcError> {
    if epoch < rec.epoch {
        return Err(err(
            ErrorKind::StaleEpoch,
            format!(
                "job {} is at epoch {}, request carries {epoch}",
                rec.id, rec.epoch
            ),
        ));
    }
    if epoch > rec.epoch {
        return Err(err(
            ErrorKind::StaleEpoch,
            format!(
                "job {} has no epoch {epoch} (current {})",
                rec.id, rec.epoch
            ),
        ));
    }
    match (&rec.lease, rec.state) {
        (Some(l), JobState::Running | JobState::Dispatched)
            if &l.worker == worker && l.epoch == epoch =>
        {
            Ok(())
        }
        _ => Err(err(
            ErrorKind::Revoked,
            format!(
                "worker {worker} no longer holds job {} (state {}{})",
                rec.id,
                rec.state,
                rec.reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ),
        )),
    }
}

/// Pending (or blocked) → dispatched at a new epoch.
pub fn dispatch(rec: &mut JobRecord, now: Timestamp) -> Result<u64, RpcError> {
    if !matches!(rec.state, JobState::Pending | JobState::Blocked) {
        return Err(err(ErrorKind::WrongState, format!("job is {}", rec.state)));
    }
    rec.epoch += 1;
    rec.state = JobState::Dispatched;
    rec.dispatched_at = Some(now);
    rec.retry_at = None;
    rec.reason = None;
    Ok(rec.epoch)
}

/// Pending (or blocked) → dispatched at a new epoch and leased to `worker` until the
/// start deadline (`start_within`, at most the lease's TTL). The grant to send it is
/// [`grant`].
pub fn lease_at_dispatch(
    rec: &mut JobRecord,
    worker: &WorkerId,
    default_ttl: Duration,
    start_within: Duration,
    now: Timestamp,
) -> Result<u64, RpcError> {
    let epoch = dispatch(rec, now)?;
    let ttl = lease_ttl(rec, default_ttl);
    rec.lease = Some(Lease {
        worker: worker.clone(),
        epoch,
        granted_at: now,
        expires_at: now.plus(start_within.min(ttl)),
        ttl_ms: ttl.as_millis() as u64,
    });
    Ok(epoch)
}

/// What the worker a job was leased to at dispatch is sent; `None` unless the record
/// is dispatched under a lease.
pub fn grant(rec: &JobRecord) -> Option<LeaseGrant> {
    let lease = rec
        .lease
        .as_ref()
        .filter(|l| rec.state == JobState::Dispatched && l.epoch == rec.epoch)?;
    Some(LeaseGrant {
        job_id: rec.id,
        spec: rec.spec.clone(),
        lease: lease.clone(),
        attempt: rec.attempts + 1,
        trace_parent: rec.trace_parent.clone(),
    })
}

fn lease_ttl(rec: &JobRecord, default_ttl: Duration) -> Duration {
    rec.spec
        .lease_ttl_secs
        .map(Duration::from_secs)
        .unwrap_or(default_ttl)
}

/// The holder of a lease granted at dispatch confirms the start (its first renewal, its
/// completion, or a claim): dispatched → running, the attempt opens (dated `ran`
/// before `now`, not before the grant), the lease runs for its TTL from `now`. `true`
/// when this call started it; `false` (and nothing changed) otherwise.
pub fn confirm_start(
    rec: &mut JobRecord,
    epoch: u64,
    worker: &WorkerId,
    ran: Option<Duration>,
    now: Timestamp,
) -> bool {
    if rec.state != JobState::Dispatched || rec.epoch != epoch {
        return false;
    }
    let Some(lease) = rec
        .lease
        .as_mut()
        .filter(|l| &l.worker == worker && l.epoch == epoch)
    else {
        return false;
    };
    // Not before the grant, not after now (`max` then `min`: a clock resynced between
    // the grant and now must not make this panic as `clamp` would).
    let started_at = ran
        .map(|r| Timestamp::from_unix_millis(now.unix_millis() - r.as_millis() as i64))
        .unwrap_or(now)
        .max(lease.granted_at)
        .min(now);
    lease.expires_at = now.plus(Duration::from_millis(lease.ttl_ms));
    rec.state = JobState::Running;
    rec.attempts += 1;
    rec.dispatched_at = None;
    rec.history.push(Attempt {
        epoch,
        worker: worker.clone(),
        started_at,
        ended_at: None,
        outcome: None,
        ended_because: None,
        artifact_errors: Vec::new(),
    });
    true
}

/// Marks a job blocked with a reason; `false` when nothing changed.
pub fn block(rec: &mut JobRecord, reason: &str) -> bool {
    if !matches!(rec.state, JobState::Pending | JobState::Blocked) {
        return false;
    }
    if rec.state == JobState::Blocked && rec.reason.as_deref() == Some(reason) {
        return false;
    }
    rec.state = JobState::Blocked;
    rec.reason = Some(reason.to_string());
    true
}

/// Dispatched → running: grants the lease. `caps` are the claiming worker's.
pub fn claim(
    rec: &mut JobRecord,
    epoch: u64,
    worker: &WorkerId,
    caps: &Capabilities,
    default_ttl: Duration,
    now: Timestamp,
) -> Result<ClaimReply, RpcError> {
    if epoch != rec.epoch {
        return Err(err(
            ErrorKind::StaleEpoch,
            format!(
                "notice for epoch {epoch}, job {} is at epoch {}",
                rec.id, rec.epoch
            ),
        ));
    }
    // Leased at dispatch: the holder's claim confirms the start; anyone else's lost.
    if let (JobState::Dispatched, Some(l)) = (rec.state, &rec.lease) {
        if &l.worker != worker {
            return Err(err(
                ErrorKind::Conflict,
                format!("job {} is dispatched to {}", rec.id, l.worker),
            ));
        }
        confirm_start(rec, epoch, worker, None, now);
    }
    // A retried claim (reply lost) by the holder gets the same lease back.
    if let (JobState::Running, Some(l)) = (rec.state, &rec.lease) {
        if &l.worker == worker && l.epoch == epoch {
            return Ok(ClaimReply {
                spec: rec.spec.clone(),
                lease: l.clone(),
                attempt: rec.attempts,
            });
        }
    }
    if rec.state != JobState::Dispatched {
        let holder = rec
            .lease
            .as_ref()
            .map(|l| format!(" by {}", l.worker))
            .unwrap_or_default();
        return Err(err(
            ErrorKind::Conflict,
            format!("job {} is {}{holder}", rec.id, rec.state),
        ));
    }
    if let Some(missing) = caps.unmet(&rec.spec) {
        return Err(err(
            ErrorKind::NotEligible,
            format!("worker {worker} lacks {missing} required by job {}", rec.id),
        ));
    }
    let ttl = lease_ttl(rec, default_ttl);
    let lease = Lease {
        worker: worker.clone(),
        epoch,
        granted_at: now,
        expires_at: now.plus(ttl),
        ttl_ms: ttl.as_millis() as u64,
    };
    rec.state = JobState::Running;
    rec.attempts += 1;
    rec.dispatched_at = None;
    rec.lease = Some(lease.clone());
    rec.history.push(Attempt {
        epoch,
        worker: worker.clone(),
        started_at: now,
        ended_at: None,
        outcome: None,
        ended_because: None,
        artifact_errors: Vec::new(),
    });
    Ok(ClaimReply {
        spec: rec.spec.clone(),
        lease,
        attempt: rec.attempts,
    })
}

/// Extends the holder's lease by its TTL from `now`; the first renewal of a lease
/// granted at dispatch confirms the start (the job ran `ran` so far).
pub fn renew(
    rec: &mut JobRecord,
    epoch: u64,
    worker: &WorkerId,
    ran: Option<Duration>,
    now: Timestamp,
) -> Result<Lease, RpcError> {
    check_holder(rec, epoch, worker)?;
    confirm_start(rec, epoch, worker, ran, now);
    let lease = rec.lease.as_mut().expect("holder has a lease");
    lease.expires_at = now.plus(Duration::from_millis(lease.ttl_ms));
    Ok(lease.clone())
}

/// Exponential backoff with jitter: `base · 2^(attempt-1)`, capped at `max`, then scaled
/// by a factor in [0.5, 1.0) from `jitter` ∈ [0, 1).
pub fn backoff(attempt: u32, base: Duration, max: Duration, jitter: f64) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    exp.min(max).mul_f64(0.5 + jitter.clamp(0.0, 1.0) / 2.0)
}

fn close_attempt(
    rec: &mut JobRecord,
    epoch: u64,
    now: Timestamp,
    outcome: Option<AttemptOutcome>,
    because: Option<String>,
) {
    if let Some(a) = rec.attempt_mut(epoch) {
        a.ended_at = Some(now);
        a.outcome = outcome;
        a.ended_because = because;
    }
}

fn add_usage(rec: &mut JobRecord, usage: Option<&Usage>) {
    let Some(u) = usage else { return };
    let total = rec.usage.get_or_insert_with(Box::default);
    total.provider = u.provider.clone().or(total.provider.take());
    total.model = u.model.clone().or(total.model.take());
    total.input_tokens += u.input_tokens;
    total.output_tokens += u.output_tokens;
    total.calls += u.calls;
    total.cost += u.cost;
}

/// What a completion did.
#[derive(Debug, Clone, PartialEq)]
pub enum Completed {
    Succeeded,
    /// Failed; retried after `retry_at`.
    Retry {
        retry_at: Timestamp,
    },
    Dead,
    /// The same completion was already applied (its reply was lost): nothing changed.
    AlreadyApplied,
}

/// Running → succeeded, pending (retry with backoff) or dead. A completion of a job
/// leased at dispatch whose start nothing confirmed yet confirms it first (it ran
/// `ran`).
#[allow(clippy::too_many_arguments)]
pub fn complete(
    rec: &mut JobRecord,
    epoch: u64,
    worker: &WorkerId,
    outcome: &AttemptOutcome,
    result: Option<&serde_json::Value>,
    usage: Option<&Usage>,
    retry_delay: Duration,
    ran: Option<Duration>,
    now: Timestamp,
) -> Result<Completed, RpcError> {
    let already = rec
        .history
        .iter()
        .any(|a| a.epoch == epoch && &a.worker == worker && a.outcome.as_ref() == Some(outcome));
    if already && epoch == rec.epoch {
        return Ok(Completed::AlreadyApplied);
    }
    check_holder(rec, epoch, worker)?;
    confirm_start(rec, epoch, worker, ran, now);
    close_attempt(rec, epoch, now, Some(outcome.clone()), None);
    add_usage(rec, usage);
    rec.lease = None;
    let done = if outcome.is_success() && !rec.children.is_empty() {
        // Its own part is done; it ends when its children do (see `finish_parent`).
        rec.state = JobState::Waiting;
        rec.result = result.cloned();
        rec.reason = Some(format!("waiting for {} children", rec.children.len()));
        Completed::Succeeded
    } else if outcome.is_success() {
        rec.state = JobState::Succeeded;
        rec.result = result.cloned();
        rec.reason = None;
        Completed::Succeeded
    } else if rec.attempts >= rec.spec.max_attempts {
        rec.state = JobState::Dead;
        rec.reason = Some(format!(
            "failed {} of {} attempts; last: {}",
            rec.attempts,
            rec.spec.max_attempts,
            describe(outcome)
        ));
        Completed::Dead
    } else {
        let retry_at = now.plus(retry_delay);
        rec.state = JobState::Pending;
        rec.retry_at = Some(retry_at);
        rec.reason = Some(format!("retrying after: {}", describe(outcome)));
        Completed::Retry { retry_at }
    };
    Ok(done)
}

pub fn describe(outcome: &AttemptOutcome) -> String {
    match outcome {
        AttemptOutcome::Succeeded { exit_code } => format!("exit {exit_code}"),
        AttemptOutcome::Failed { error, .. } => error.clone(),
        AttemptOutcome::TimedOut { after_secs } => format!("timed out after {after_secs}s"),
    }
}

/// Revokes a running job to make room for a more urgent one (or takes back a grant not
/// started yet, see [`take_back_grant`]): pending again, the attempt not counted.
pub fn preempt(
    rec: &mut JobRecord,
    epoch: u64,
    by: &gf_schemas::JobId,
    now: Timestamp,
) -> Option<Revocation> {
    if rec.state == JobState::Dispatched {
        // Granted but not started: taken back, no attempt spent (the first victim).
        rec.lease.as_ref().filter(|l| l.epoch == epoch)?;
        return take_back_grant(
            rec,
            format!("taken back for {by}"),
            RevokeReason::Preempted,
            now,
        );
    }
    let holder = rec
        .lease
        .as_ref()
        .filter(|l| rec.state == JobState::Running && l.epoch == epoch)?
        .worker
        .clone();
    close_attempt(rec, epoch, now, None, Some(format!("preempted by {by}")));
    rec.attempts = rec.attempts.saturating_sub(1);
    rec.lease = None;
    rec.state = JobState::Pending;
    rec.reason = Some(format!("preempted on {holder} by {by}"));
    Some(Revocation {
        job_id: rec.id,
        epoch,
        reason: RevokeReason::Preempted,
    })
}

/// An operator sends a finished job round again: pending, attempts reset; the next
/// dispatch gives it a new epoch.
pub fn requeue(rec: &mut JobRecord) -> Result<(), RpcError> {
    if !matches!(
        rec.state,
        JobState::Dead | JobState::Cancelled | JobState::Rejected
    ) {
        return Err(err(
            ErrorKind::WrongState,
            format!(
                "job {} is {}; only dead, cancelled or rejected jobs can be requeued",
                rec.id, rec.state
            ),
        ));
    }
    rec.state = JobState::Pending;
    rec.attempts = 0;
    rec.lease = None;
    rec.retry_at = None;
    rec.dispatched_at = None;
    rec.reason = Some("requeued by operator".into());
    Ok(())
}

/// An operator refuses a job that has not run yet: terminal, with the reason.
pub fn reject(rec: &mut JobRecord, reason: &str) -> Result<(), RpcError> {
    if !matches!(rec.state, JobState::Pending | JobState::Blocked) {
        return Err(err(
            ErrorKind::WrongState,
            format!(
                "job {} is {}; only pending or blocked jobs can be rejected",
                rec.id, rec.state
            ),
        ));
    }
    rec.state = JobState::Rejected;
    rec.reason = Some(reason.to_string());
    rec.retry_at = None;
    Ok(())
}

/// A parent whose children all ended: succeeded if they all succeeded, else dead.
pub fn finish_parent(
    rec: &mut JobRecord,
    failed_child: Option<(gf_schemas::JobId, JobState)>,
) -> bool {
    if rec.state != JobState::Waiting {
        return false;
    }
    match failed_child {
        None => {
            rec.state = JobState::Succeeded;
            rec.reason = None;
        }
        Some((child, state)) => {
            rec.state = JobState::Dead;
            rec.reason = Some(format!("child {child} ended {state}"));
        }
    }
    true
}

/// The holder gives the job back (e.g. draining): pending again, attempt not counted.
pub fn release(
    rec: &mut JobRecord,
    epoch: u64,
    worker: &WorkerId,
    reason: &str,
    now: Timestamp,
) -> Result<(), RpcError> {
    check_holder(rec, epoch, worker)?;
    if rec.state == JobState::Dispatched {
        // Given back before it started (a draining worker): no attempt to close.
        rec.lease = None;
        rec.dispatched_at = None;
        rec.state = JobState::Pending;
        rec.reason = Some(format!("released by {worker} before starting: {reason}"));
        return Ok(());
    }
    close_attempt(rec, epoch, now, None, Some(format!("released: {reason}")));
    rec.attempts = rec.attempts.saturating_sub(1);
    rec.lease = None;
    rec.state = JobState::Pending;
    rec.reason = Some(format!("released by {worker}: {reason}"));
    Ok(())
}

/// Any non-terminal state → cancelled. Returns the revocation to push to the holder.
/// Cancelling a cancelled job is a no-op; other terminal states refuse.
pub fn cancel(
    rec: &mut JobRecord,
    reason: &str,
    now: Timestamp,
) -> Result<Option<Revocation>, RpcError> {
    if rec.state == JobState::Cancelled {
        return Ok(None);
    }
    if rec.state.is_terminal() {
        return Err(err(
            ErrorKind::WrongState,
            format!("job {} already {}", rec.id, rec.state),
        ));
    }
    let revocation = rec.lease.take().map(|l| {
        close_attempt(
            rec,
            l.epoch,
            now,
            None,
            Some(format!("cancelled: {reason}")),
        );
        Revocation {
            job_id: rec.id,
            epoch: l.epoch,
            reason: RevokeReason::Cancelled,
        }
    });
    rec.state = JobState::Cancelled;
    rec.reason = Some(reason.to_string());
    rec.dispatched_at = None;
    rec.retry_at = None;
    Ok(revocation)
}

/// `true` when the lease has run out at server time `now`.
pub fn lease_expired(lease: &Lease, now: Timestamp) -> bool {
    lease.expires_at <= now
}

/// Running with an expired lease → pending (or dead if that was the last attempt).
/// Returns the revocation for the former holder, `None` if the lease is still valid.
pub fn expire_lease(rec: &mut JobRecord, now: Timestamp) -> Option<Revocation> {
    let lease = rec
        .lease
        .as_ref()
        .filter(|l| rec.state == JobState::Running && lease_expired(l, now))?;
    let revocation = Revocation {
        job_id: rec.id,
        epoch: lease.epoch,
        reason: RevokeReason::LeaseExpired,
    };
    let because = format!("lease expired on worker {}", lease.worker);
    close_attempt(rec, revocation.epoch, now, None, Some(because.clone()));
    rec.lease = None;
    if rec.attempts >= rec.spec.max_attempts {
        rec.state = JobState::Dead;
        rec.reason = Some(format!(
            "{because} on the last of {} attempts",
            rec.spec.max_attempts
        ));
    } else {
        rec.state = JobState::Pending;
        rec.reason = Some(because);
    }
    Some(revocation)
}

/// Leased at dispatch but the start not confirmed by the start deadline → pending
/// again, no attempt counted. The history keeps an entry without an outcome (the
/// holder may have started it unconfirmed: whatever it did is attributable and
/// fenced). Returns the revocation for the holder.
pub fn expire_start(rec: &mut JobRecord, now: Timestamp) -> Option<Revocation> {
    let lease = rec
        .lease
        .as_ref()
        .filter(|l| rec.state == JobState::Dispatched && lease_expired(l, now))?;
    let because = format!(
        "not started by {} within {}s of dispatch",
        lease.worker,
        lease.expires_at.since(lease.granted_at).as_secs_f32()
    );
    take_back_grant(rec, because, RevokeReason::LeaseExpired, now)
}

/// Takes back a lease granted at dispatch whose start is not confirmed (the record is
/// `dispatched` under a lease): pending again at the same epoch, no attempt counted,
/// the history keeping an entry without an outcome (`because`) that names the holder.
/// The holder is fenced from then on: its confirmation (renewal, completion, claim) is
/// refused as revoked, and as stale once the job is dispatched again (a new epoch).
/// Returns the revocation to push to the holder; `None` (and nothing changed) when the
/// record is not such a grant. The reaper's [`expire_start`] is this at the deadline;
/// anything else that must take a job back before it starts (a more urgent job wants
/// the slot) goes through here too, so a grant has one way back.
pub fn take_back_grant(
    rec: &mut JobRecord,
    because: String,
    reason: RevokeReason,
    now: Timestamp,
) -> Option<Revocation> {
    if rec.state != JobState::Dispatched {
        return None;
    }
    let lease = rec.lease.take()?;
    rec.history.push(Attempt {
        epoch: lease.epoch,
        worker: lease.worker,
        started_at: lease.granted_at,
        ended_at: Some(now),
        outcome: None,
        ended_because: Some(because.clone()),
        artifact_errors: Vec::new(),
    });
    rec.state = JobState::Pending;
    rec.dispatched_at = None;
    rec.reason = Some(because);
    Some(Revocation {
        job_id: rec.id,
        epoch: lease.epoch,
        reason,
    })
}

/// Dispatched without a lease (an earlier coordinator's notice) and not claimed within
/// `timeout` → pending again (no attempt spent).
pub fn expire_claim(rec: &mut JobRecord, timeout: Duration, now: Timestamp) -> bool {
    match (rec.state, rec.dispatched_at, &rec.lease) {
        (JobState::Dispatched, Some(at), None) if at.plus(timeout) <= now => {
            rec.state = JobState::Pending;
            rec.dispatched_at = None;
            rec.reason = Some(format!("not claimed within {}s", timeout.as_secs_f32()));
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gf_schemas::{JobId, JobSpec};

    fn t(ms: i64) -> Timestamp {
        Timestamp::from_unix_millis(1_800_000_000_000 + ms)
    }
    fn w(s: &str) -> WorkerId {
        WorkerId::new(s).unwrap()
    }
    fn caps() -> Capabilities {
        Capabilities {
            queues: vec!["default".into()],
            ..Default::default()
        }
    }
    fn job(max_attempts: u32) -> JobRecord {
        let mut spec = JobSpec::command(["true"]);
        spec.max_attempts = max_attempts;
        JobRecord::new(JobId::new(), spec, t(0))
    }
    fn running(max_attempts: u32, worker: &str) -> JobRecord {
        let mut r = job(max_attempts);
        let e = dispatch(&mut r, t(1)).unwrap();
        claim(
            &mut r,
            e,
            &w(worker),
            &caps(),
            Duration::from_secs(10),
            t(2),
        )
        .unwrap();
        r
    }
    const OK: AttemptOutcome = AttemptOutcome::Succeeded { exit_code: 0 };
    fn failed() -> AttemptOutcome {
        AttemptOutcome::Failed {
            exit_code: Some(1),
            error: "exit 1".into(),
        }
    }

    /// Dispatch raises the epoch; claim grants a lease with the server-time deadline.
    #[test]
    fn dispatch_then_claim() {
        let r = running(3, "a");
        assert_eq!(r.epoch, 1);
        assert_eq!(r.state, JobState::Running);
        assert_eq!(r.attempts, 1);
        let l = r.lease.unwrap();
        assert_eq!(l.expires_at, t(10_002));
        assert_eq!(l.worker, w("a"));
    }

    /// Of two claims on one notice, the second gets `conflict`; a stale notice gets
    /// `stale_epoch`; the winner retrying gets its lease back.
    #[test]
    fn claim_races() {
        let mut r = running(3, "a");
        let e = claim(&mut r, 1, &w("b"), &caps(), Duration::from_secs(10), t(3)).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Conflict);
        let e = claim(&mut r, 0, &w("b"), &caps(), Duration::from_secs(10), t(3)).unwrap_err();
        assert_eq!(e.kind, ErrorKind::StaleEpoch);
        let again = claim(&mut r, 1, &w("a"), &caps(), Duration::from_secs(10), t(3)).unwrap();
        assert_eq!(again.lease.granted_at, t(2));
        assert_eq!(r.attempts, 1);
    }

    /// A worker without a required capability cannot claim.
    #[test]
    fn claim_checks_capabilities() {
        let mut r = job(3);
        r.spec.tags.insert("gpu".into());
        let e = dispatch(&mut r, t(1)).unwrap();
        let err = claim(&mut r, e, &w("a"), &caps(), Duration::from_secs(1), t(2)).unwrap_err();
        assert_eq!(err.kind, ErrorKind::NotEligible);
        assert!(err.message.contains("tag gpu"));
        assert_eq!(r.state, JobState::Dispatched);
    }

    /// Lease expiry is judged strictly by the given server time.
    #[test]
    fn lease_expiry_by_server_time() {
        let mut r = running(3, "a");
        assert!(expire_lease(&mut r, t(10_001)).is_none());
        renew(&mut r, 1, &w("a"), None, t(5_000)).unwrap();
        assert!(expire_lease(&mut r, t(10_002)).is_none());
        let rev = expire_lease(&mut r, t(15_000)).unwrap();
        assert_eq!(rev.reason, RevokeReason::LeaseExpired);
        assert_eq!(r.state, JobState::Pending);
        assert!(r.lease.is_none());
        // The former holder is now refused everything.
        assert_eq!(
            renew(&mut r, 1, &w("a"), None, t(15_001)).unwrap_err().kind,
            ErrorKind::Revoked
        );
        let e = complete(
            &mut r,
            1,
            &w("a"),
            &OK,
            None,
            None,
            Duration::ZERO,
            None,
            t(15_001),
        )
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Revoked);
        // After the next dispatch, the old epoch is stale.
        dispatch(&mut r, t(16_000)).unwrap();
        let e = complete(
            &mut r,
            1,
            &w("a"),
            &OK,
            None,
            None,
            Duration::ZERO,
            None,
            t(16_001),
        )
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::StaleEpoch);
        assert_eq!(r.state, JobState::Dispatched);
    }

    /// Failures retry with a delay until attempts run out, then the job is dead.
    #[test]
    fn failures_retry_then_dead() {
        let mut r = running(2, "a");
        let c = complete(
            &mut r,
            1,
            &w("a"),
            &failed(),
            None,
            None,
            Duration::from_secs(4),
            None,
            t(100),
        )
        .unwrap();
        assert_eq!(c, Completed::Retry { retry_at: t(4_100) });
        assert_eq!(r.state, JobState::Pending);
        let e = dispatch(&mut r, t(5_000)).unwrap();
        claim(
            &mut r,
            e,
            &w("b"),
            &caps(),
            Duration::from_secs(10),
            t(5_001),
        )
        .unwrap();
        let c = complete(
            &mut r,
            2,
            &w("b"),
            &failed(),
            None,
            None,
            Duration::from_secs(4),
            None,
            t(6_000),
        )
        .unwrap();
        assert_eq!(c, Completed::Dead);
        assert_eq!(r.state, JobState::Dead);
        assert!(r.reason.as_deref().unwrap().contains("2 of 2"));
        assert_eq!(r.history.len(), 2);
    }

    /// A completion retried after a lost reply is acknowledged and changes nothing.
    #[test]
    fn completion_is_idempotent() {
        let mut r = running(3, "a");
        let usage = Usage {
            cost: 1.5,
            input_tokens: 10,
            ..Default::default()
        };
        complete(
            &mut r,
            1,
            &w("a"),
            &OK,
            None,
            Some(&usage),
            Duration::ZERO,
            None,
            t(50),
        )
        .unwrap();
        let before = r.clone();
        let again = complete(
            &mut r,
            1,
            &w("a"),
            &OK,
            None,
            Some(&usage),
            Duration::ZERO,
            None,
            t(60),
        )
        .unwrap();
        assert_eq!(again, Completed::AlreadyApplied);
        assert_eq!(r, before);
        assert_eq!(r.usage.unwrap().cost, 1.5);
    }

    /// Cancel revokes the running holder; cancelling again is a no-op.
    #[test]
    fn cancel_revokes() {
        let mut r = running(3, "a");
        let rev = cancel(&mut r, "operator", t(10)).unwrap().unwrap();
        assert_eq!((rev.epoch, rev.reason), (1, RevokeReason::Cancelled));
        assert_eq!(r.state, JobState::Cancelled);
        assert_eq!(cancel(&mut r, "again", t(11)).unwrap(), None);
        let mut done = running(3, "a");
        complete(
            &mut done,
            1,
            &w("a"),
            &OK,
            None,
            None,
            Duration::ZERO,
            None,
            t(5),
        )
        .unwrap();
        assert_eq!(
            cancel(&mut done, "x", t(6)).unwrap_err().kind,
            ErrorKind::WrongState
        );
    }

    /// Requeue resets attempts; reject only applies before running; preemption does not
    /// spend an attempt.
    #[test]
    fn operator_actions() {
        let mut r = running(1, "a");
        assert_eq!(requeue(&mut r).unwrap_err().kind, ErrorKind::WrongState);
        complete(
            &mut r,
            1,
            &w("a"),
            &failed(),
            None,
            None,
            Duration::ZERO,
            None,
            t(5),
        )
        .unwrap();
        assert_eq!(r.state, JobState::Dead);
        requeue(&mut r).unwrap();
        assert_eq!((r.state, r.attempts), (JobState::Pending, 0));
        reject(&mut r, "not today").unwrap();
        assert_eq!(r.state, JobState::Rejected);
        assert!(r.state.is_terminal());
        let mut v = running(3, "a");
        let by = gf_schemas::JobId::new();
        let rev = preempt(&mut v, 1, &by, t(9)).unwrap();
        assert_eq!(rev.reason, RevokeReason::Preempted);
        assert_eq!((v.state, v.attempts), (JobState::Pending, 0));
        assert!(
            preempt(&mut v, 1, &by, t(9)).is_none(),
            "only a running job at that epoch"
        );
    }

    /// A parent with children waits after its own success, then ends with them.
    #[test]
    fn parent_waits_for_children() {
        let mut p = running(3, "a");
        let child = gf_schemas::JobId::new();
        p.children.push(child);
        complete(
            &mut p,
            1,
            &w("a"),
            &OK,
            None,
            None,
            Duration::ZERO,
            None,
            t(5),
        )
        .unwrap();
        assert_eq!(p.state, JobState::Waiting);
        assert!(finish_parent(&mut p, Some((child, JobState::Dead))));
        assert_eq!(p.state, JobState::Dead);
        assert!(p.reason.unwrap().contains(&child.to_string()));
    }

    /// Release returns the job without spending an attempt.
    #[test]
    fn release_keeps_attempts() {
        let mut r = running(1, "a");
        release(&mut r, 1, &w("a"), "draining", t(5)).unwrap();
        assert_eq!((r.state, r.attempts), (JobState::Pending, 0));
    }

    /// A repeat of an applied release (a hedged copy, a retry whose first answer was
    /// lost) is refused as revoked and changes nothing, whether the job had started or
    /// not: the worker reads the refusal as "given back", and the attempt it gave back
    /// is not refunded twice.
    #[test]
    fn a_repeated_release_is_refused_and_changes_nothing() {
        for mut r in [running(1, "a"), leased("a")] {
            release(&mut r, 1, &w("a"), "draining", t(5)).unwrap();
            let once = r.clone();
            let e = release(&mut r, 1, &w("a"), "draining", t(6)).unwrap_err();
            assert_eq!(e.kind, ErrorKind::Revoked, "{e:?}");
            assert_eq!(r, once);
        }
    }

    /// An unclaimed notice times out back to pending.
    #[test]
    fn claim_timeout() {
        let mut r = job(3);
        dispatch(&mut r, t(0)).unwrap();
        assert!(!expire_claim(&mut r, Duration::from_secs(5), t(4_999)));
        assert!(expire_claim(&mut r, Duration::from_secs(5), t(5_000)));
        assert_eq!(r.state, JobState::Pending);
    }

    fn leased(worker: &str) -> JobRecord {
        let mut r = job(3);
        let e = lease_at_dispatch(
            &mut r,
            &w(worker),
            Duration::from_secs(30),
            Duration::from_secs(5),
            t(1_000),
        )
        .unwrap();
        assert_eq!(e, 1);
        r
    }

    /// Leasing at dispatch: the record is dispatched under the chosen worker's lease
    /// until the start deadline, no attempt counted; the grant carries what a claim's
    /// reply did. The holder's first renewal confirms the start (dated by how long the
    /// job ran, never before the grant) and extends the lease by its TTL.
    #[test]
    fn lease_at_dispatch_then_renewal_confirms_the_start() {
        let mut r = leased("a");
        assert_eq!((r.state, r.attempts, r.epoch), (JobState::Dispatched, 0, 1));
        let l = r.lease.clone().unwrap();
        assert_eq!((l.worker.as_str(), l.epoch), ("a", 1));
        assert_eq!(
            (l.granted_at, l.expires_at, l.ttl_ms),
            (t(1_000), t(6_000), 30_000)
        );
        let g = grant(&r).unwrap();
        assert_eq!((g.job_id, g.attempt, &g.lease), (r.id, 1, &l));
        // The start window is never longer than the lease's TTL.
        let mut short = job(3);
        short.spec.lease_ttl_secs = Some(1);
        lease_at_dispatch(
            &mut short,
            &w("a"),
            Duration::from_secs(30),
            Duration::from_secs(5),
            t(0),
        )
        .unwrap();
        assert_eq!(short.lease.unwrap().expires_at, t(1_000));
        // Someone else, or another epoch, is refused and changes nothing.
        assert_eq!(
            renew(&mut r, 1, &w("b"), None, t(2_000)).unwrap_err().kind,
            ErrorKind::Revoked
        );
        assert_eq!(
            renew(&mut r, 2, &w("a"), None, t(2_000)).unwrap_err().kind,
            ErrorKind::StaleEpoch
        );
        assert_eq!(r.state, JobState::Dispatched);
        let lease = renew(&mut r, 1, &w("a"), Some(Duration::from_secs(9)), t(3_000)).unwrap();
        assert_eq!(lease.expires_at, t(33_000));
        assert_eq!((r.state, r.attempts), (JobState::Running, 1));
        assert_eq!(r.dispatched_at, None);
        assert_eq!(r.history.len(), 1);
        assert_eq!(r.history[0].started_at, t(1_000), "not before the grant");
        assert!(grant(&r).is_none(), "only a dispatched record has a grant");
        // Later renewals only extend.
        renew(&mut r, 1, &w("a"), Some(Duration::from_secs(10)), t(4_000)).unwrap();
        assert_eq!((r.attempts, r.history.len()), (1, 1));
    }

    /// A completion confirms the start and ends the attempt in the same write.
    #[test]
    fn completion_confirms_and_completes() {
        let mut r = leased("a");
        let c = complete(
            &mut r,
            1,
            &w("a"),
            &OK,
            None,
            None,
            Duration::ZERO,
            Some(Duration::from_millis(200)),
            t(1_500),
        )
        .unwrap();
        assert_eq!(c, Completed::Succeeded);
        assert_eq!(
            (r.state, r.attempts, r.lease.clone()),
            (JobState::Succeeded, 1, None)
        );
        let a = &r.history[0];
        assert_eq!((a.started_at, a.ended_at), (t(1_300), Some(t(1_500))));
        assert_eq!(a.outcome, Some(OK));
        // Repeated after a lost reply: the same answer, nothing changes.
        let before = r.clone();
        let again = complete(
            &mut r,
            1,
            &w("a"),
            &OK,
            None,
            None,
            Duration::ZERO,
            None,
            t(1_600),
        )
        .unwrap();
        assert_eq!((again, &r), (Completed::AlreadyApplied, &before));
    }

    /// A grant nobody confirmed by the start deadline goes back to pending, no attempt
    /// counted, with a history entry naming the holder (whatever it did is fenced);
    /// the holder is then refused, and after the next dispatch it is stale.
    #[test]
    fn unconfirmed_grant_is_taken_back_at_the_start_deadline() {
        let mut r = leased("a");
        assert!(expire_start(&mut r, t(5_999)).is_none());
        assert!(
            expire_lease(&mut r, t(7_000)).is_none(),
            "not a running lease"
        );
        assert!(
            !expire_claim(&mut r, Duration::ZERO, t(7_000)),
            "not a bare notice"
        );
        let rev = expire_start(&mut r, t(6_000)).unwrap();
        assert_eq!(
            (rev.job_id, rev.epoch, rev.reason),
            (r.id, 1, RevokeReason::LeaseExpired)
        );
        assert_eq!(
            (r.state, r.attempts, r.lease.clone()),
            (JobState::Pending, 0, None)
        );
        let a = &r.history[0];
        assert_eq!(
            (a.epoch, a.worker.as_str(), a.outcome.clone()),
            (1, "a", None)
        );
        assert!(a
            .ended_because
            .as_deref()
            .unwrap()
            .contains("not started by a"));
        let late = |r: &mut JobRecord| {
            complete(
                r,
                1,
                &w("a"),
                &OK,
                None,
                None,
                Duration::ZERO,
                None,
                t(6_100),
            )
            .unwrap_err()
            .kind
        };
        assert_eq!(late(&mut r), ErrorKind::Revoked);
        lease_at_dispatch(
            &mut r,
            &w("b"),
            Duration::from_secs(30),
            Duration::from_secs(5),
            t(7_000),
        )
        .unwrap();
        assert_eq!(late(&mut r), ErrorKind::StaleEpoch);
        assert_eq!(r.epoch, 2);
    }

    /// Taking a grant back before its deadline (what a more urgent job would do):
    /// the holder is revoked with the reason given and fenced; a started job or a
    /// pending one is not a grant, so nothing changes.
    #[test]
    fn a_grant_is_taken_back_only_before_its_start() {
        let mut r = leased("a");
        let rev = take_back_grant(
            &mut r,
            "made room".into(),
            RevokeReason::Preempted,
            t(1_500),
        )
        .unwrap();
        assert_eq!((rev.epoch, rev.reason), (1, RevokeReason::Preempted));
        assert_eq!(
            (r.state, r.attempts, r.reason.as_deref()),
            (JobState::Pending, 0, Some("made room"))
        );
        assert_eq!(
            renew(&mut r, 1, &w("a"), None, t(1_600)).unwrap_err().kind,
            ErrorKind::Revoked
        );
        let before = r.clone();
        assert!(take_back_grant(&mut r, "x".into(), RevokeReason::Preempted, t(1_700)).is_none());
        assert_eq!(r, before);
        let mut started = leased("a");
        renew(&mut started, 1, &w("a"), None, t(1_200)).unwrap();
        let before = started.clone();
        assert!(
            take_back_grant(&mut started, "x".into(), RevokeReason::Preempted, t(1_700)).is_none()
        );
        assert_eq!(started, before);
    }

    /// Preempting a grant not started yet takes it back (no attempt spent, the holder
    /// revoked); a stale epoch changes nothing.
    #[test]
    fn preempting_an_unstarted_grant_takes_it_back() {
        let by = gf_schemas::JobId::new();
        let mut r = leased("a");
        let before = r.clone();
        assert!(preempt(&mut r, 7, &by, t(1_500)).is_none());
        assert_eq!(r, before);
        let rev = preempt(&mut r, 1, &by, t(1_500)).unwrap();
        assert_eq!((rev.epoch, rev.reason), (1, RevokeReason::Preempted));
        assert_eq!((r.state, r.attempts), (JobState::Pending, 0));
        assert!(r.reason.unwrap().contains(&by.to_string()));
    }

    /// A claim on a job leased at dispatch: the holder's confirms the start (and a
    /// repeat gets the same lease), anyone else's is a conflict.
    #[test]
    fn claims_on_a_leased_job() {
        let mut r = leased("a");
        let ttl = Duration::from_secs(30);
        let e = claim(&mut r, 1, &w("b"), &caps(), ttl, t(2_000)).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Conflict);
        assert!(e.message.contains("dispatched to a"), "{e:?}");
        let c = claim(&mut r, 1, &w("a"), &caps(), ttl, t(2_000)).unwrap();
        assert_eq!((c.attempt, c.lease.expires_at), (1, t(32_000)));
        assert_eq!((r.state, r.attempts), (JobState::Running, 1));
        let again = claim(&mut r, 1, &w("a"), &caps(), ttl, t(2_500)).unwrap();
        assert_eq!(again.lease, c.lease);
        assert_eq!(r.attempts, 1);
    }

    /// Given back before it started (a draining worker): pending at once, nothing
    /// counted; cancelling a leased job revokes its holder.
    #[test]
    fn release_and_cancel_before_the_start() {
        let mut r = leased("a");
        assert_eq!(
            release(&mut r, 1, &w("b"), "x", t(2_000)).unwrap_err().kind,
            ErrorKind::Revoked
        );
        release(&mut r, 1, &w("a"), "draining", t(2_000)).unwrap();
        assert_eq!(
            (r.state, r.attempts, r.lease.clone()),
            (JobState::Pending, 0, None)
        );
        assert!(r.history.is_empty());
        let mut c = leased("a");
        let rev = cancel(&mut c, "operator", t(2_000)).unwrap().unwrap();
        assert_eq!((rev.epoch, rev.reason), (1, RevokeReason::Cancelled));
        assert_eq!((c.state, c.lease), (JobState::Cancelled, None));
    }

    /// Backoff doubles per attempt, is capped, and jitter keeps it in [d/2, d).
    #[test]
    fn backoff_grows_and_caps() {
        let b = Duration::from_secs(1);
        let m = Duration::from_secs(30);
        assert_eq!(backoff(1, b, m, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(3, b, m, 1.0), Duration::from_secs(4));
        assert_eq!(backoff(3, b, m, 0.0), Duration::from_secs(2));
        assert_eq!(backoff(10, b, m, 1.0), m);
        assert_eq!(backoff(40, b, m, 1.0), m);
    }
}
