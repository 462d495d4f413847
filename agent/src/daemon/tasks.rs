//! The agent's tasks: each started with its own clone of the one shutdown
//! token and a name, and supervised so that the first failure stops the
//! rest and is returned.

use std::future::Future;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::DaemonError;

/// The running tasks and the token they obey.
pub struct Tasks {
    set: JoinSet<(&'static str, Result<(), DaemonError>)>,
    cancel: CancellationToken,
}

impl Tasks {
    /// No tasks yet; those spawned obey `cancel`.
    pub fn new(cancel: &CancellationToken) -> Self {
        Tasks { set: JoinSet::new(), cancel: cancel.clone() }
    }

    /// Starts `task`, handing it the shutdown token.
    pub fn spawn<F, E>(&mut self, name: &'static str, task: impl FnOnce(CancellationToken) -> F)
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<DaemonError>,
    {
        let running = task(self.cancel.clone());
        self.set.spawn(async move { (name, running.await.map_err(Into::into)) });
    }

    /// Waits for every task; the first failure cancels the rest and is
    /// returned.
    pub async fn supervise(mut self) -> Option<DaemonError> {
        let mut first_error = None;
        while let Some(joined) = self.set.join_next().await {
            let (name, result) = match joined {
                Ok(done) => done,
                Err(error) => ("?", Err(DaemonError::Panic(error.to_string()))),
            };
            if let Err(error) = result {
                tracing::error!(task = name, %error, "task failed; shutting down");
                self.cancel.cancel();
                first_error.get_or_insert(error);
            }
        }
        first_error
    }
}
