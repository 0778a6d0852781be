//! What one step did ([`StepOutcome`]), and the one way a step turns the
//! store's answer to its transition into an outcome.

use crate::job::{Job, JobId, JobState};
use crate::store::StoreError;

use super::super::cleanup::CleanupError;
use super::Pipeline;

/// What one step did.
#[derive(Debug)]
pub enum StepOutcome {
    /// Nothing was due.
    Idle,
    /// The job moved to its next in-flight state (claimed, downloaded,
    /// delivered).
    Advanced(Job),
    /// The job reached `done` or `failed`.
    Finished(Job),
    /// The job went back to `queued` (retryable error, or shutdown).
    Requeued(Job),
    /// Another owner holds the job now, or it changed under us; this worker
    /// lets go of it.
    Lost(JobId),
}

impl StepOutcome {
    /// A short name for logs.
    pub fn name(&self) -> String {
        match self {
            StepOutcome::Idle => "idle".into(),
            StepOutcome::Advanced(j) => format!("advanced to {}", j.state),
            StepOutcome::Finished(j) => format!("finished {}", j.state),
            StepOutcome::Requeued(_) => "requeued".into(),
            StepOutcome::Lost(_) => "lost".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Cleanup(#[from] CleanupError),
}

pub type StepResult = Result<StepOutcome, WorkerError>;

impl Pipeline {
    /// Change the job this worker owns (`to`: the next state, or `None` to
    /// only edit it); a conflict or a lost lease means it is not ours any
    /// more, and is `None`.
    pub(super) async fn transition(
        &self,
        job: &Job,
        to: Option<JobState>,
        edit: impl Fn(&mut Job) + Send + Sync + 'static,
    ) -> Result<Option<Job>, StoreError> {
        let (id, state, owner) = (job.id, job.state, self.jobs.owner);
        let expect = if state == JobState::Cleaning {
            crate::store::Expect::state(state)
        } else {
            crate::store::Expect::owned(state, owner)
        };
        match self
            .jobs
            .store
            .update(
                id,
                expect,
                to,
                crate::job::now_ms(),
                std::sync::Arc::new(edit),
            )
            .await
        {
            Ok(j) => {
                self.jobs.metrics.record(job, &j);
                Ok(Some(j))
            }
            Err(StoreError::Conflict { .. })
            | Err(StoreError::LeaseLost { .. })
            | Err(StoreError::NotFound(_)) => {
                tracing::warn!(job = %id, "job changed under this worker; letting go");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Move the job to `to` and say what that was: the next step
    /// ([`StepOutcome::Advanced`]), back in the queue
    /// ([`StepOutcome::Requeued`]), or not ours any more.
    pub(super) async fn advance(
        &self,
        job: &Job,
        to: JobState,
        edit: impl Fn(&mut Job) + Send + Sync + 'static,
    ) -> StepResult {
        Ok(match self.transition(job, Some(to), edit).await? {
            Some(j) if to == JobState::Queued => StepOutcome::Requeued(j),
            Some(j) => StepOutcome::Advanced(j),
            None => StepOutcome::Lost(job.id),
        })
    }
}
