//! Claiming the next job and deciding what an error means for it: retry
//! with backoff while attempts remain, or fail for good; a stop by shutdown
//! or by the user.

use std::time::Duration;

use rand::Rng;

use crate::download::DownloadError;
use crate::job::{now_ms, ErrorClass, FailureCode, Job, JobError, JobState, Millis};

use super::super::cleanup;
use super::super::switch::Choice;
use super::{Pipeline, StepOutcome, StepResult};

/// Exponential backoff with ±20 % jitter, capped at an hour.
pub fn backoff(base_secs: u64, attempt: u32) -> Duration {
    let exp = base_secs.saturating_mul(1u64 << attempt.saturating_sub(1).min(16));
    let secs = exp.min(3600) as f64;
    let jitter = rand::rng().random_range(0.8..1.2);
    Duration::from_secs_f64(secs * jitter)
}

impl Pipeline {
    /// Claim the next due job (queued -> downloading).
    pub async fn claim(&self) -> StepResult {
        // The disk guard: while free disk is critical, jobs wait in `queued`
        // (none fails for lack of space) until the monitor sees space again.
        if self.jobs.guard.is_paused() {
            return Ok(StepOutcome::Idle);
        }
        let owner = self.jobs.owner;
        let lease = self.jobs.config.downloader.lease_secs * 1000;
        Ok(match self.jobs.store.claim(owner, lease, now_ms()).await? {
            Some(job) => {
                self.jobs
                    .metrics
                    .transition(JobState::Queued, JobState::Downloading);
                StepOutcome::Advanced(job)
            }
            None => StepOutcome::Idle,
        })
    }

    /// A failure: retry with backoff if it may pass and attempts remain, else
    /// fail for good.
    pub(super) async fn error(
        &self,
        job: &Job,
        class: ErrorClass,
        code: FailureCode,
        text: String,
    ) -> StepResult {
        let attempts = job.attempts + 1;
        let max = self.jobs.config.downloader.max_attempts;
        tracing::warn!(job = %job.id, %code, attempts, error = %text, "job error");
        if class == ErrorClass::Permanent || attempts >= max {
            return self.fail_counted(job, code, text, attempts).await;
        }
        let delay = backoff(self.jobs.config.downloader.retry_base_secs, attempts);
        let err = JobError { class, code, text };
        let next = now_ms() + delay.as_millis() as Millis;
        let out = self
            .advance(job, JobState::Queued, move |j| {
                j.attempts = attempts;
                j.next_attempt_at = next;
                j.last_error = Some(err.clone());
            })
            .await?;
        self.status(job).waiting_retry(attempts + 1, max).await;
        Ok(out)
    }

    /// yt-dlp (the probe or the download) did not deliver: stopped by
    /// shutdown or the user, out of disk space, a kept partial file the
    /// server will not extend, or an error to retry or fail by its class.
    pub(super) async fn ytdlp_failed(&self, job: &Job, e: DownloadError) -> StepResult {
        if let DownloadError::Cancelled = e {
            return self.stopped(job).await;
        }
        let (class, code) = e.classify();
        // A 416 right after a start-over is the server's, not the `.part`'s.
        let again = job
            .last_error
            .as_ref()
            .is_some_and(|last| last.code == FailureCode::RangeNotSatisfiable);
        match code {
            FailureCode::NoSpace => self.out_of_space(job, e.to_string()).await,
            FailureCode::RangeNotSatisfiable if !again => {
                let text = e.to_string();
                self.start_over(job, JobError { class, code, text }).await
            }
            code => {
                // An error yt-dlp could not name often means a site changed
                // and the extractor is out of date: the health task counts them.
                if code == FailureCode::Unknown {
                    self.jobs.guard.note_extractor_error(now_ms());
                }
                self.error(job, class, code, e.to_string()).await
            }
        }
    }

    /// The disk filled up under the download (ENOSPC). Nothing is wrong with
    /// the job, and retrying now would only fill the disk again: hold claims
    /// (the health task lets them go once a download fits again), delete the
    /// job's partial files, and put it back in the queue at once without
    /// counting an attempt.
    async fn out_of_space(&self, job: &Job, text: String) -> StepResult {
        self.jobs.guard.hold_for_space();
        tracing::error!(job = %job.id, error = %text, "disk full: job requeued, claims held until space returns");
        let err = JobError {
            class: ErrorClass::Retryable,
            code: FailureCode::NoSpace,
            text,
        };
        let out = self.requeue_from_start(job, err).await?;
        self.status(job).waiting_for_disk().await;
        Ok(out)
    }

    /// The server would not serve the rest of a kept partial file (416): a
    /// `.part` already complete, left by a kill between yt-dlp's last write
    /// and its rename, or one the file no longer extends. Resuming it again
    /// would fail the same way, so its files go and the job is queued again
    /// at once, no attempt counted: the next run downloads from the start.
    /// Only the first 416 in a row is free (the job's last error says so): a
    /// server that answers 416 to a fresh download too is retried by the
    /// ordinary rules, so it cannot hold a worker for ever.
    async fn start_over(&self, job: &Job, err: JobError) -> StepResult {
        tracing::warn!(job = %job.id, error = %err.text, "the partial file cannot be resumed: downloading again from the start");
        let out = self.requeue_from_start(job, err).await?;
        self.jobs.wake_workers();
        Ok(out)
    }

    /// Delete the job's files and put it back in the queue at once, no
    /// attempt counted, with `err` as its last error.
    async fn requeue_from_start(&self, job: &Job, err: JobError) -> StepResult {
        self.remove_partial_files(job).await;
        self.advance(job, JobState::Queued, move |j| {
            j.next_attempt_at = now_ms();
            j.last_error = Some(err.clone());
            // Its files are gone: bytes count from zero again.
            if let Some(m) = &mut j.rescue_mark {
                m.bytes = 0;
            }
        })
        .await
    }

    /// Fail for good: to cleaning, with the reason the user will read.
    pub(super) async fn fail(&self, job: &Job, code: FailureCode, text: String) -> StepResult {
        self.fail_counted(job, code, text, job.attempts + 1).await
    }

    async fn fail_counted(
        &self,
        job: &Job,
        code: FailureCode,
        text: String,
        attempts: u32,
    ) -> StepResult {
        let err = JobError::permanent(code, text);
        self.advance(job, JobState::Cleaning, move |j| {
            j.attempts = attempts;
            j.last_error = Some(err.clone());
            j.failure = Some(err.clone());
        })
        .await
    }

    /// The job's work was stopped: by shutdown (back to `queued`, no attempt
    /// counted, partial files kept for resume) or by the user (cancelled).
    pub(super) async fn stopped(&self, job: &Job) -> StepResult {
        if self.shutdown.is_cancelled() {
            tracing::info!(job = %job.id, "shutdown: back to queued");
            self.requeue_now(job).await
        } else {
            self.advance(job, JobState::Cleaning, |j| {
                j.failure = Some(JobError::cancelled())
            })
            .await
        }
    }

    /// The user chose another form while the download ran: its files go,
    /// and the job is queued again at once in that form, no attempt counted.
    pub(super) async fn switch_form(
        &self,
        job: &Job,
        choice: Choice,
        status: &mut super::status::JobStatus,
    ) -> StepResult {
        tracing::info!(job = %job.id, ?choice, "switching form: requeued");
        self.remove_partial_files(job).await;
        let out = self
            .advance(job, JobState::Queued, move |j| {
                choice.apply(&mut j.options);
                j.next_attempt_at = now_ms();
                if let Some(m) = &mut j.rescue_mark {
                    m.bytes = 0;
                }
            })
            .await?;
        let mut options = job.options.clone();
        choice.apply(&mut options);
        status.switching(&options).await;
        self.jobs.wake_workers();
        Ok(out)
    }

    /// Delete a job's folder (what a stopped run left), logging what it cost.
    async fn remove_partial_files(&self, job: &Job) {
        let downloads = self.jobs.config.downloads_dir();
        let j = job.clone();
        match tokio::task::spawn_blocking(move || cleanup::remove_job_dir(&downloads, &j)).await {
            Ok(Ok(freed)) => tracing::info!(job = %job.id, freed, "partial files deleted"),
            Ok(Err(e)) => tracing::warn!(job = %job.id, error = %e, "cannot delete partial files"),
            Err(e) => tracing::warn!(job = %job.id, error = %e, "cannot delete partial files"),
        }
    }

    /// Back to `queued` at once and uncounted (shutdown, or the file vanished).
    pub(super) async fn requeue_now(&self, job: &Job) -> StepResult {
        self.advance(job, JobState::Queued, |j| j.next_attempt_at = now_ms())
            .await
    }
}
