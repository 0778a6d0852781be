//! Workers: claim a job and move it through downloading -> uploading ->
//! cleaning -> done/failed, one store transition per step.
//!
//! [`Pipeline::step`] performs exactly one stage of one job and returns a
//! [`StepOutcome`], so tests can drive a job stage by stage; the worker loop
//! is just `claim` then `step` until the job leaves the pipeline.
//!
//! - `policy.rs`: claiming, backoff, and what an error means (retry or fail).
//! - `download.rs`, `upload.rs`, `clean.rs`: one stage each.
//! - `media.rs`: the end of a download (streamable file, shape, thumbnail)
//!   and what an upload carries besides the file.
//! - `budget.rs`: the bound on a download's files on disk.
//! - `playlist.rs`: a playlist link becomes child jobs.
//! - `lease.rs`: the one lease keeper every stage runs under.
//! - `outcome.rs`: [`StepOutcome`] and the transition helper.
//! - `status.rs`: the status message's text at each stage.

mod budget;
mod clean;
mod download;
mod lease;
mod media;
mod outcome;
mod playlist;
mod policy;
mod status;
mod upload;

pub use outcome::{StepOutcome, StepResult, WorkerError};
pub use policy::backoff;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::JobService;
use crate::botapi::Api;
use crate::download::media::MediaTools;
use crate::download::YtDlp;
use crate::job::{Job, JobId, JobState};
use crate::net::egress::{EgressProxy, EgressSession};

/// Everything a worker needs.
pub struct Pipeline {
    pub jobs: Arc<JobService>,
    pub api: Api,
    /// Read once per job: a switch moves new jobs, running ones keep theirs.
    pub ytdlp: YtDlp,
    /// ffmpeg and ffprobe (`downloader.ffmpeg`); either may be missing.
    pub tools: MediaTools,
    /// Fired at shutdown: running downloads stop and their jobs go back to
    /// `queued` without counting an attempt.
    pub shutdown: CancellationToken,
    /// How long an upload in flight may go on after shutdown starts.
    pub upload_grace: Duration,
    /// The egress filter every yt-dlp run goes through; `None` when the
    /// operator allows every destination (`allow_private_networks`).
    pub egress: Option<Arc<EgressProxy>>,
}

impl Pipeline {
    /// A fresh egress session for one yt-dlp run.
    fn egress_session(&self) -> Option<EgressSession> {
        self.egress.as_ref().map(|p| p.session())
    }

    /// The first request the egress filter refused during a run that failed:
    /// the reason to give the user, rather than yt-dlp's "connection refused".
    fn refused(session: &Option<EgressSession>) -> Option<String> {
        session
            .as_ref()
            .and_then(|s| s.refusals().into_iter().next())
            .map(|r| r.to_string())
    }
}

impl Pipeline {
    /// Run one stage of a job this process owns.
    pub async fn step(&self, job: Job) -> StepResult {
        let id = job.id;
        let token = self.jobs.register(id, &self.shutdown);
        let out = match job.state {
            JobState::Downloading => self.download(job, &token).await,
            JobState::Uploading => self.upload(job, &token).await,
            JobState::Cleaning => self.clean(job).await,
            _ => Ok(StepOutcome::Lost(job.id)),
        };
        if !matches!(out, Ok(StepOutcome::Advanced(_))) {
            self.jobs.unregister(id);
        }
        out
    }

    /// Step a claimed job until it leaves the pipeline. Everything logged
    /// meanwhile is in the job's span (its id and user as fields).
    pub async fn run_job(&self, mut job: Job) -> StepResult {
        let id: JobId = job.id;
        let span = job_span(&job);
        let res = async {
            loop {
                match self.step(job).await {
                    Ok(StepOutcome::Advanced(next)) => job = next,
                    other => break other,
                }
            }
        }
        .instrument(span)
        .await;
        self.jobs.unregister(id);
        res
    }
}

/// The span every line about a job is logged in: `TGDL_LOG_FORMAT=json`
/// writes its fields with each line.
pub fn job_span(job: &Job) -> tracing::Span {
    tracing::info_span!("job", job_id = %job.id, user_id = job.user_id)
}

/// Start `downloader.concurrency` worker loops on `tracker`.
pub fn spawn_workers(pipeline: Arc<Pipeline>, tracker: &TaskTracker) {
    for n in 0..pipeline.jobs.config.downloader.concurrency {
        let p = pipeline.clone();
        tracker.spawn(async move {
            tracing::debug!(worker = n, "worker started");
            loop {
                if p.shutdown.is_cancelled() {
                    break;
                }
                // Listen before claiming so a job queued in between wakes us.
                let woken = p.jobs.woken();
                tokio::pin!(woken);
                woken.as_mut().enable();
                match p.claim().await {
                    Ok(StepOutcome::Advanced(job)) => {
                        let (id, span) = (job.id, job_span(&job));
                        let out = p.run_job(job).await;
                        span.in_scope(|| match out {
                            Ok(out) => {
                                tracing::info!(job = %id, outcome = %out.name(), "job step ended")
                            }
                            Err(e) => tracing::error!(job = %id, error = %e, "job error"),
                        });
                    }
                    Ok(_) => {
                        // Nothing due: wait for new work, a backoff to pass
                        // (polled), or shutdown.
                        tokio::select! {
                            _ = &mut woken => {}
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                            _ = p.shutdown.cancelled() => break,
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "claim failed");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                            _ = p.shutdown.cancelled() => break,
                        }
                    }
                }
            }
            tracing::debug!(worker = n, "worker stopped");
        });
    }
}
