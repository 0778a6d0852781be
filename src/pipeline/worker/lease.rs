//! The one lease keeper: while a stage works on a job, the lease is renewed
//! every third of its length; a renewal that fails means another owner took
//! the job, and the stage's work is dropped.

use std::future::Future;
use std::time::Duration;

use crate::job::{now_ms, Job, Lease};

use super::Pipeline;

impl Pipeline {
    /// Run `work` while keeping `job`'s lease. `None` when the lease was
    /// lost: `work` has been dropped (a download's process group is killed
    /// with it) and the job is no longer this worker's.
    pub(super) async fn with_lease<F: Future>(&self, job: &Job, work: F) -> Option<F::Output> {
        let lease_ms = self.jobs.config.downloader.lease_secs * 1000;
        let mut tick = tokio::time::interval(Duration::from_millis(lease_ms / 3));
        tick.tick().await;
        tokio::pin!(work);
        loop {
            tokio::select! {
                out = &mut work => return Some(out),
                _ = tick.tick() => {
                    if !self.renew_lease(job, lease_ms).await {
                        return None;
                    }
                }
            }
        }
    }

    async fn renew_lease(&self, job: &Job, lease_ms: u64) -> bool {
        let until = now_ms() + lease_ms;
        let owner = self.jobs.owner;
        match self
            .transition(job, None, move |j| j.lease = Some(Lease { owner, until }))
            .await
        {
            Ok(Some(j)) => {
                // A cancel asked on another node of a shared store: the job
                // carries it as its failure. Stop as for a local /cancel.
                if j.failure.is_some() {
                    self.jobs.cancel_running(j.id);
                }
                true
            }
            _ => false,
        }
    }
}
