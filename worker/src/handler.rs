//! In-process jobs: a [`Handler`] runs inside the worker instead of as a subprocess.
//!
//! A job whose command starts with a name registered in [`Handlers`] (by convention
//! `gf:…`, e.g. `gf submit -- gf:noop`) is handed to that handler with the rest of the
//! command as arguments. The lease is kept exactly as for a subprocess: renewed while
//! the handler runs, and the handler's future is dropped (so it stops at its next
//! `.await`) on revocation, timeout or give-back. Embedders register their own
//! handlers; every worker has the built-in `gf:noop` and `gf:sleep`.
//!
//! Why: a process per job costs about 2 ms of CPU (fork/exec, process group, pipes,
//! reaping). That is nothing for an agent run of minutes, but it caps short jobs at a
//! few hundred per second per core; handlers are how a fleet runs many small ones.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use gf_schemas::{JobId, Usage, WorkerId};

/// Prefix of the built-in handlers' names.
pub const BUILTIN_PREFIX: &str = "gf:";

/// What a handler is given for one attempt.
#[derive(Debug, Clone)]
pub struct HandlerCall {
    pub job_id: JobId,
    pub epoch: u64,
    pub attempt: u32,
    pub worker: WorkerId,
    /// The command after the handler's name.
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
}

/// A successful attempt's report.
#[derive(Debug, Default, Clone)]
pub struct HandlerOutput {
    pub result: Option<serde_json::Value>,
    pub usage: Option<Usage>,
}

pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<HandlerOutput, String>> + Send>>;

/// A job kind run in-process. An `Err` fails the attempt with that message (it is
/// retried like a failed process).
pub trait Handler: Send + Sync {
    fn call(&self, call: HandlerCall) -> HandlerFuture;
}

/// Handlers by command name.
#[derive(Clone)]
pub struct Handlers(BTreeMap<String, Arc<dyn Handler>>);

impl Default for Handlers {
    /// The built-ins: `gf:noop` (succeeds at once) and `gf:sleep SECONDS`.
    fn default() -> Self {
        let mut h = Self(BTreeMap::new());
        h.insert("gf:noop", Arc::new(Noop));
        h.insert("gf:sleep", Arc::new(Sleep));
        h
    }
}

impl fmt::Debug for Handlers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl Handlers {
    /// Registers (or replaces) the handler for command name `name`.
    pub fn insert(&mut self, name: impl Into<String>, handler: Arc<dyn Handler>) {
        self.0.insert(name.into(), handler);
    }

    pub fn names(&self) -> BTreeSet<String> {
        self.0.keys().cloned().collect()
    }

    /// The handler for a command, if its first word names one.
    pub fn for_command(&self, command: &[String]) -> Option<&Arc<dyn Handler>> {
        self.0.get(command.first()?)
    }

    /// A command that looks like a built-in but names none: fail it clearly rather
    /// than trying to exec a program called `gf:…`.
    pub fn unknown_builtin(&self, command: &[String]) -> Option<String> {
        let first = command.first()?;
        (first.starts_with(BUILTIN_PREFIX) && !self.0.contains_key(first)).then(|| {
            let known: Vec<_> = self.0.keys().map(String::as_str).collect();
            format!(
                "no in-process handler `{first}` on this worker (it has: {})",
                known.join(", ")
            )
        })
    }
}

/// Succeeds at once: the unit of the load suite, and a fleet smoke test.
pub struct Noop;

impl Handler for Noop {
    fn call(&self, _: HandlerCall) -> HandlerFuture {
        Box::pin(std::future::ready(Ok(HandlerOutput::default())))
    }
}

/// `gf:sleep SECONDS`: waits, then succeeds. For demos and drain tests without a shell.
pub struct Sleep;

impl Handler for Sleep {
    fn call(&self, call: HandlerCall) -> HandlerFuture {
        let secs = match call.args.as_slice() {
            [s] => s.parse::<f64>().ok().filter(|s| s.is_finite() && *s >= 0.0),
            _ => None,
        };
        Box::pin(async move {
            let Some(secs) = secs else {
                return Err(format!(
                    "gf:sleep takes one argument, seconds (≥ 0); got {:?}",
                    call.args
                ));
            };
            tokio::time::sleep(Duration::from_secs_f64(secs)).await;
            Ok(HandlerOutput::default())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(words: &[&str]) -> Vec<String> {
        words.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn routes_by_first_word_and_names_unknown_builtins() {
        let h = Handlers::default();
        assert!(h.for_command(&cmd(&["gf:noop"])).is_some());
        assert!(h.for_command(&cmd(&["true"])).is_none());
        assert!(h.unknown_builtin(&cmd(&["true"])).is_none());
        let err = h.unknown_builtin(&cmd(&["gf:nope"])).expect("unknown");
        assert!(err.contains("gf:nope") && err.contains("gf:noop"), "{err}");
    }

    #[tokio::test]
    async fn sleep_rejects_bad_arguments() {
        let call = |args: &[&str]| HandlerCall {
            job_id: JobId::new(),
            epoch: 1,
            attempt: 1,
            worker: WorkerId::new("w").expect("id"),
            args: cmd(args),
            env: BTreeMap::new(),
        };
        assert!(Sleep.call(call(&["x"])).await.is_err());
        assert!(Sleep.call(call(&[])).await.is_err());
        assert!(Sleep.call(call(&["0"])).await.is_ok());
    }
}
