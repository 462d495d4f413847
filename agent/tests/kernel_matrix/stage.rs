//! The agent most cases share. Under emulation (the VMs of `cargo xtask
//! vmtest`) each agent start verifies every program again, 35 to 70 s a
//! time; one agent for every case that needs nothing but the defaults
//! keeps the matrix inside CI's time. Sharing hides nothing: each case
//! makes a pod of its own (its own cgroup, container id and token), waits
//! until the agent watches that pod's token, and judges only the alerts
//! naming its container, after its own settling read.
//!
//! Cases that need flags of their own (a tiny ring buffer, a policy) stop
//! the shared agent first ([`stop_shared`]), so one agent runs at a time,
//! as on a node; the next case that shares starts a fresh one.

use std::sync::{Arc, Mutex, Once, PoisonError};

use super::{connects::ApiServer, pod, support::agent::AgentProcess};

/// The shared agent (standalone, every event its own alert, told the
/// loopback API server) and that API server.
pub struct Stage {
    /// The agent.
    pub agent: AgentProcess,
    /// The listeners it knows as the API server.
    pub api: ApiServer,
}

/// The running shared stage, if any.
static SHARED: Mutex<Option<Arc<Stage>>> = Mutex::new(None);

/// The shared stage, started on first use (and again after
/// [`stop_shared`]). It is stopped when the test process exits.
pub fn shared() -> Arc<Stage> {
    static AT_EXIT: Once = Once::new();
    let mut slot = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(stage) = slot.as_ref() {
        return Arc::clone(stage);
    }
    AT_EXIT.call_once(|| {
        // SAFETY: registers a function that takes no arguments and does
        // not unwind (dropping the agent kills and reaps it).
        let registered = unsafe { libc::atexit(stop_at_exit) };
        assert_eq!(registered, 0, "atexit");
    });
    let api = ApiServer::start();
    let agent = api.start_agent(&[]);
    let stage = Arc::new(Stage { agent, api });
    *slot = Some(Arc::clone(&stage));
    stage
}

/// Stops the shared agent, if it runs, before a case starts an agent of
/// its own; like every agent a case stops, it must exit cleanly.
pub fn stop_shared() {
    let stage = SHARED.lock().unwrap_or_else(PoisonError::into_inner).take();
    if let Some(Stage { agent, api }) = stage.and_then(Arc::into_inner) {
        pod::stop(agent);
        drop(api);
    }
}

/// libtest returns from `main` or calls `exit`: either way the shared
/// agent must not outlive the tests (statics are never dropped). Dropping
/// it kills it: nothing may panic here.
extern "C" fn stop_at_exit() {
    let stage = SHARED.lock().unwrap_or_else(PoisonError::into_inner).take();
    drop(stage);
}
