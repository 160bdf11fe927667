//! The background side of a process: consumers, relays and schedulers, started together
//! and stopped together.

use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::Services;

pub struct Workers {
    tasks: JoinSet<()>,
}

/// Starts every background task; each one returns when `stop` is cancelled.
pub fn spawn(_services: &Services, _stop: CancellationToken) -> Workers {
    let tasks = JoinSet::new();
    Workers { tasks }
}

impl Workers {
    /// Waits up to `grace` for the tasks to finish their current message, then aborts the
    /// rest (an aborted consumer never acked, so its message is redelivered).
    pub async fn join(mut self, grace: Duration) {
        let drained = tokio::time::timeout(grace, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                "workers did not stop within {}s; aborting them",
                grace.as_secs()
            );
            self.tasks.abort_all();
        }
    }
}
