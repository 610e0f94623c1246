//! The platform's background work, for the platform itself and for
//! embedders who mount the front ends in their own server: the send-task
//! worker drains queued send tasks through the core's `MessageGateway`, and
//! the lease sweeper settles ended leases (releasing holds of leases that
//! received no SMS) and, once a minute, applies the pool's retention
//! (`PoolService::purge_expired`: old unfetched codes, device texts and
//! mailbox entries).

use std::time::Duration;

use sms_core::Core;
use tokio::task::JoinHandle;

/// Whether the background workers still run (cheap to clone).
#[derive(Debug, Clone)]
pub struct WorkersHealth(Vec<tokio::task::AbortHandle>);

impl WorkersHealth {
    /// True while every worker task runs.
    pub fn running(&self) -> bool {
        self.0.iter().all(|t| !t.is_finished())
    }
}

/// The running background tasks; [`stop`](Self::stop) them on shutdown.
///
/// Without them send tasks stay queued and ended leases keep their holds
/// (until the next start that runs them): an embedder serving `sendapi` or
/// the `hub` WebSocket must spawn them once per process.
#[derive(Debug)]
#[must_use = "dropping the handle leaves the workers running without a way to stop them"]
pub struct BackgroundWorkers {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl BackgroundWorkers {
    /// Spawns the send-task worker (woken by new tasks, and every second
    /// for retries) and the lease sweeper (every second; retention at its
    /// start and every minute) on the current Tokio runtime.
    pub fn spawn(core: Core) -> Self {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let sender_core = core.clone();
        let mut sender_stop = stop_rx.clone();
        let sending = tokio::spawn(async move {
            loop {
                // Cancellable: a stop drops the pass mid-flight; what was not
                // recorded is pending in the store and resumes at next start.
                let pass = tokio::select! {
                    r = sender_core.sending.work_once() => r,
                    _ = sender_stop.changed() => break,
                };
                match pass {
                    Ok(r) if r.sent + r.failed > 0 => {
                        tracing::info!(
                            sent = r.sent,
                            failed = r.failed,
                            finished = r.finished,
                            "send tasks progressed"
                        );
                    }
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "send worker"),
                }
                tokio::select! {
                    () = sender_core.sending.work_queued() => {}
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = sender_stop.changed() => break,
                }
            }
        });
        let mut sweep_stop = stop_rx;
        let sweeper = tokio::spawn(async move {
            for tick in 0u64.. {
                if let Err(e) = core.pool.settle_due(1_000).await {
                    tracing::error!(error = %e, "lease sweeper");
                }
                // The pool gauge, from the store's counters (no scan).
                if let Err(e) = core.pool.record_census().await {
                    tracing::error!(error = %e, "pool gauge");
                }
                if tick % 60 == 0 {
                    if let Err(e) = core.pool.purge_expired().await {
                        tracing::error!(error = %e, "retention sweeper");
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = sweep_stop.changed() => break,
                }
            }
        });
        BackgroundWorkers {
            stop: stop_tx,
            tasks: vec![sending, sweeper],
        }
    }

    /// A handle that tells whether the workers still run (for `/readyz`).
    pub fn health(&self) -> WorkersHealth {
        WorkersHealth(self.tasks.iter().map(JoinHandle::abort_handle).collect())
    }

    /// Stops both workers and waits for them. A send pass cut short leaves
    /// its unrecorded recipients pending in the store; the next start resumes
    /// them.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
