//! The last stage: remove the job's files, settle `done` or `failed`, and
//! leave the status message saying how it ended.

use crate::job::{FailureCode, Job};

use super::super::cleanup;
use super::{Pipeline, StepOutcome, StepResult};

impl Pipeline {
    pub(super) async fn clean(&self, job: Job) -> StepResult {
        let done = cleanup::finish_cleaning(&self.jobs, job).await?;
        let mut status = self.status(&done);
        match &done.failure {
            // A playlist parent: its status message carries the summary.
            None if done.delivery.is_none() => {}
            None => status.message.delete(),
            Some(f) if f.code == FailureCode::ChatUnreachable => {}
            Some(f) => {
                let cfg = &self.jobs.config;
                let limit_mb = match f.code {
                    FailureCode::DownloadTooLarge => cfg.max_download_mb(),
                    _ => cfg.telegram.upload_limit_mb,
                };
                let text = status.failed_text(f.code, limit_mb);
                if !status.message.force(&text).await && status.message.message_id().is_none() {
                    self.reply(&done, text).await;
                }
            }
        }
        Ok(StepOutcome::Finished(done))
    }
}
