//! Workers: claim a job and move it through downloading -> uploading ->
//! cleaning -> done/failed, one store transition per step.
//!
//! [`Pipeline::step`] performs exactly one stage of one job and returns a
//! [`StepOutcome`], so tests can drive a job stage by stage; the worker loop
//! is just `claim` then `step` until the job leaves the pipeline.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use teloxide::prelude::*;
use teloxide::types::{MessageId, ReplyParameters};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cleanup::{self, CleanupError};
use crate::core::{cancelled_error, Core};
use crate::download::{self, DownloadError, Want, YtDlpArgs};
use crate::i18n::{render, Lang, Msg};
use crate::job::{
    now_ms, ErrorClass, Job, JobError, JobId, JobState, Lease, MediaInfo, MediaKind, Millis,
};
use crate::store::{self, Expect, StoreError};
use crate::telegram::{classify, StatusMessage, TgFailure};
use crate::upload::{self, Source, Upload};

/// Everything a worker needs.
pub struct Pipeline {
    pub core: Arc<Core>,
    pub bot: Bot,
    pub ytdlp: PathBuf,
    pub has_ffmpeg: bool,
    /// Fired at shutdown: running downloads stop and their jobs go back to
    /// `queued` without counting an attempt.
    pub shutdown: CancellationToken,
    /// How long an upload in flight may go on after shutdown starts.
    pub upload_grace: Duration,
}

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

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Cleanup(#[from] CleanupError),
}

type StepResult = Result<StepOutcome, WorkerError>;

/// Exponential backoff with ±20 % jitter, capped at an hour.
pub fn backoff(base_secs: u64, attempt: u32) -> Duration {
    let exp = base_secs.saturating_mul(1u64 << attempt.saturating_sub(1).min(16));
    let secs = exp.min(3600) as f64;
    let jitter = rand::rng().random_range(0.8..1.2);
    Duration::from_secs_f64(secs * jitter)
}

fn want(kind: MediaKind) -> Want {
    match kind {
        MediaKind::Video => Want::Video,
        MediaKind::Audio => Want::Audio,
        MediaKind::Document => Want::Document,
    }
}

impl Pipeline {
    fn lang(&self, job: &Job) -> Lang {
        Lang::pick(Some(&job.lang), self.core.default_lang)
    }

    fn status(&self, job: &Job) -> StatusMessage {
        StatusMessage::new(
            self.bot.clone(),
            job.chat_id,
            job.status_msg_id,
            Duration::from_secs(self.core.config.telegram.progress_interval_secs),
        )
    }

    async fn store<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn store::JobStore) -> Result<T, StoreError> + Send + 'static,
    {
        store::blocking(&self.core.store, f).await
    }

    /// Change the job we own; a conflict or lost lease means it is not ours.
    async fn transition(
        &self,
        job: &Job,
        to: Option<JobState>,
        edit: impl Fn(&mut Job) + Send + Sync + 'static,
    ) -> Result<Option<Job>, StoreError> {
        let (id, state, owner) = (job.id, job.state, self.core.boot_id);
        let expect = if state == JobState::Cleaning {
            Expect::state(state)
        } else {
            Expect::owned(state, owner)
        };
        match self
            .store(move |s| s.update(id, expect, to, now_ms(), &edit))
            .await
        {
            Ok(j) => {
                self.core.metrics.record(job, &j);
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

    /// Claim the next due job (queued -> downloading).
    pub async fn claim(&self) -> StepResult {
        // The disk guard: while free disk is critical, jobs wait in `queued`
        // (none fails for lack of space) until the monitor sees space again.
        if self.core.health.is_paused() {
            return Ok(StepOutcome::Idle);
        }
        let owner = self.core.boot_id;
        let lease = self.core.config.downloader.lease_secs * 1000;
        Ok(
            match self.store(move |s| s.claim(owner, lease, now_ms())).await? {
                Some(job) => {
                    self.core
                        .metrics
                        .transition(JobState::Queued, JobState::Downloading);
                    StepOutcome::Advanced(job)
                }
                None => StepOutcome::Idle,
            },
        )
    }

    /// Run one stage of a job this process owns.
    pub async fn step(&self, job: Job) -> StepResult {
        let id = job.id;
        let token = self.job_token(id);
        let out = match job.state {
            JobState::Downloading => self.download(job, &token).await,
            JobState::Uploading => self.upload(job, &token).await,
            JobState::Cleaning => self.clean(job).await,
            _ => Ok(StepOutcome::Lost(job.id)),
        };
        if !matches!(out, Ok(StepOutcome::Advanced(_))) {
            self.core.running.lock().unwrap().remove(&id);
        }
        out
    }

    /// Step a claimed job until it leaves the pipeline.
    pub async fn run_job(&self, mut job: Job) -> StepResult {
        let id = job.id;
        let res = loop {
            match self.step(job).await {
                Ok(StepOutcome::Advanced(next)) => job = next,
                other => break other,
            }
        };
        self.core.running.lock().unwrap().remove(&id);
        res
    }

    /// The job's cancel token, registered so `/cancel` can reach it; a child
    /// of the shutdown token so shutdown reaches every job.
    fn job_token(&self, id: JobId) -> CancellationToken {
        self.core
            .running
            .lock()
            .unwrap()
            .entry(id)
            .or_insert_with(|| self.shutdown.child_token())
            .clone()
    }

    async fn renew_lease(&self, job: &Job) -> bool {
        let until = now_ms() + self.core.config.downloader.lease_secs * 1000;
        let owner = self.core.boot_id;
        matches!(
            self.transition(job, None, move |j| j.lease = Some(Lease { owner, until }))
                .await,
            Ok(Some(_))
        )
    }

    async fn download(&self, job: Job, cancel: &CancellationToken) -> StepResult {
        // A playlist becomes one child job per item; a child is never
        // expanded again.
        if job.parent.is_none() && !crate::download::probe::is_direct_media(&job.url) {
            let timeout = Duration::from_secs(120.min(self.core.config.downloader.timeout_secs));
            let limit = Some(self.core.config.upload_limit_bytes());
            match crate::download::probe::probe(&self.ytdlp, &job.url, limit, cancel, timeout).await
            {
                Ok(crate::download::probe::Probed {
                    playlist: Some(playlist),
                    ..
                }) => return self.expand_playlist(job, playlist).await,
                Ok(_)
                | Err(DownloadError::TimedOut | DownloadError::Io(_) | DownloadError::Failed(..)) =>
                    {}
                Err(DownloadError::Cancelled) if self.shutdown.is_cancelled() => {
                    return self.requeue_for_shutdown(&job).await
                }
                Err(DownloadError::Cancelled) => return self.cancelled(&job).await,
                Err(DownloadError::Spawn(e)) => {
                    let mut status = self.status(&job);
                    return self
                        .error(
                            &job,
                            ErrorClass::Retryable,
                            "local_error",
                            e.to_string(),
                            &mut status,
                        )
                        .await;
                }
            }
        }
        let key = job.cache_key();
        if let Some(_hit) = self.store(move |s| s.cache_get(&key)).await? {
            // Delivered before: skip the download, upload by file_id.
            return Ok(
                match self
                    .transition(&job, Some(JobState::Uploading), |j| j.file_path = None)
                    .await?
                {
                    Some(j) => StepOutcome::Advanced(j),
                    None => StepOutcome::Lost(job.id),
                },
            );
        }
        // Reload: the handler may have attached the status message since.
        let id = job.id;
        let job = self.store(move |s| s.get(id)).await?.unwrap_or(job);
        let lang = self.lang(&job);
        let short = job.id.short();
        let mut status = self.status(&job);
        status
            .force(&render(
                lang,
                &Msg::Downloading {
                    short_id: short.clone(),
                },
            ))
            .await;

        let cfg = &self.core.config;
        let mut args = YtDlpArgs::new(
            &self.ytdlp,
            job.url.clone(),
            &cfg.downloads_dir(),
            job.id.0,
            want(job.options.kind),
        );
        args.max_height = job.options.max_height;
        args.upload_limit = Some(cfg.upload_limit_bytes());
        args.has_ffmpeg = self.has_ffmpeg;
        args.extra_args = cfg.downloader.extra_args.clone();
        if !cfg.downloader.cookies_file.is_empty() {
            args.cookies = Some(PathBuf::from(&cfg.downloader.cookies_file));
        }
        let (tx, rx) = watch::channel(None);
        let run = download::run_ytdlp(
            &args,
            cancel.clone(),
            Duration::from_secs(cfg.downloader.timeout_secs),
            move |p| {
                tx.send_replace(Some(p));
            },
        );
        tokio::pin!(run);
        // Tick at half the edit interval: `StatusMessage` enforces the
        // interval itself, and a tick that lands just short of it would
        // otherwise wait a whole extra interval.
        let mut progress_tick = tokio::time::interval(Duration::from_millis(
            (cfg.telegram.progress_interval_secs * 500).max(250),
        ));
        let mut lease_tick =
            tokio::time::interval(Duration::from_millis(cfg.downloader.lease_secs * 1000 / 3));
        lease_tick.tick().await;
        let result = loop {
            tokio::select! {
                r = &mut run => break r,
                _ = progress_tick.tick() => {
                    if status.message_id().is_none() {
                        // Claimed before the handler recorded its
                        // acknowledgement: look for it again.
                        let id = job.id;
                        if let Ok(Some(j)) = self.store(move |s| s.get(id)).await {
                            if let Some(m) = j.status_msg_id {
                                status.attach(m);
                            }
                        }
                    }
                    let latest = rx.borrow().clone();
                    let text = match latest {
                        Some(p) => render(lang, &Msg::Progress {
                            short_id: short.clone(),
                            percent: p.percent,
                            downloaded: p.downloaded,
                            total: p.total,
                            speed: p.speed,
                            eta: p.eta,
                        }),
                        None => render(lang, &Msg::Downloading {
                            short_id: short.clone(),
                        }),
                    };
                    status.update(&text).await;
                }
                _ = lease_tick.tick() => {
                    if !self.renew_lease(&job).await {
                        cancel.cancel();
                        let _ = (&mut run).await;
                        return Ok(StepOutcome::Lost(job.id));
                    }
                }
            }
        };
        match result {
            Ok(out) => {
                let limit = cfg.upload_limit_bytes();
                if out.filesize > limit {
                    return self
                        .fail(
                            &job,
                            "too_large",
                            format!("{} bytes over the {limit} byte limit", out.filesize),
                        )
                        .await;
                }
                let path = out.file_path.display().to_string();
                let media = MediaInfo {
                    width: out.width,
                    height: out.height,
                    duration_secs: out.duration.map(|d| d.round() as u32),
                };
                let title = out.title.clone();
                let size = out.filesize;
                Ok(
                    match self
                        .transition(&job, Some(JobState::Uploading), move |j| {
                            j.file_path = Some(path.clone());
                            j.file_size = Some(size);
                            j.title = title.clone();
                            j.media = Some(media);
                        })
                        .await?
                    {
                        Some(j) => StepOutcome::Advanced(j),
                        None => StepOutcome::Lost(job.id),
                    },
                )
            }
            Err(DownloadError::Cancelled) if self.shutdown.is_cancelled() => {
                self.requeue_for_shutdown(&job).await
            }
            Err(DownloadError::Cancelled) => self.cancelled(&job).await,
            Err(e) => {
                // An error yt-dlp could not name often means a site changed
                // and the extractor is out of date: the health task counts them.
                if matches!(&e, DownloadError::Failed(f, _) if f.reason() == crate::download::Reason::Unknown)
                {
                    self.core.health.note_extractor_error(now_ms());
                }
                let (class, code) = match &e {
                    DownloadError::Failed(f, _) => (
                        if f.is_retryable() {
                            ErrorClass::Retryable
                        } else {
                            ErrorClass::Permanent
                        },
                        f.code(),
                    ),
                    DownloadError::TimedOut => (ErrorClass::Retryable, "timeout"),
                    _ => (ErrorClass::Retryable, "local_error"),
                };
                self.error(&job, class, code, e.to_string(), &mut status)
                    .await
            }
        }
    }

    async fn upload(&self, job: Job, cancel: &CancellationToken) -> StepResult {
        let id = job.id;
        let job = self.store(move |s| s.get(id)).await?.unwrap_or(job);
        let lang = self.lang(&job);
        let mut status = self.status(&job);
        let source = match &job.file_path {
            Some(p) => {
                let size = std::fs::metadata(p).map(|m| m.len());
                match size {
                    Ok(n) if n > self.core.config.upload_limit_bytes() => {
                        return self.fail(&job, "too_large", format!("{n} bytes")).await;
                    }
                    Ok(_) => Source::File(PathBuf::from(p)),
                    // The file vanished (disk trouble, operator): download again.
                    Err(_) => return self.requeue(&job, None).await,
                }
            }
            None => {
                let key = job.cache_key();
                match self.store(move |s| s.cache_get(&key)).await? {
                    Some(c) => Source::Cached {
                        file_id: c.file_id,
                        sent_as: c.sent_as,
                    },
                    None => return self.requeue(&job, None).await,
                }
            }
        };
        status
            .force(&render(
                lang,
                &Msg::Uploading {
                    short_id: job.id.short(),
                },
            ))
            .await;
        let up = Upload {
            chat_id: job.chat_id,
            reply_to: job.request_msg_id,
            kind: job.options.kind,
            source,
            caption: upload::caption(job.title.as_deref(), &job.url),
            media: job.media,
        };
        let mut lease_tick = tokio::time::interval(Duration::from_millis(
            self.core.config.downloader.lease_secs * 1000 / 3,
        ));
        lease_tick.tick().await;
        for _ in 0..10 {
            let send = upload::send(&self.bot, &up);
            tokio::pin!(send);
            let result = loop {
                tokio::select! {
                    r = &mut send => break Some(r),
                    _ = cancel.cancelled() => {
                        if self.shutdown.is_cancelled() {
                            // Let an upload in flight finish if it can.
                            match tokio::time::timeout(self.upload_grace, &mut send).await {
                                Ok(r) => break Some(r),
                                Err(_) => break None,
                            }
                        }
                        break None;
                    }
                    _ = lease_tick.tick() => {
                        if !self.renew_lease(&job).await {
                            return Ok(StepOutcome::Lost(job.id));
                        }
                    }
                }
            };
            let Some(result) = result else {
                return if self.shutdown.is_cancelled() {
                    self.requeue_for_shutdown(&job).await
                } else {
                    self.cancelled(&job).await
                };
            };
            match result {
                Ok(sent) => {
                    let delivery = crate::job::Delivery {
                        message_id: sent.message_id,
                        file_id: sent.file_id,
                        sent_as: sent.sent_as,
                    };
                    return Ok(
                        match self
                            .transition(&job, Some(JobState::Cleaning), move |j| {
                                j.delivery = Some(delivery.clone())
                            })
                            .await?
                        {
                            Some(j) => StepOutcome::Advanced(j),
                            None => StepOutcome::Lost(job.id),
                        },
                    );
                }
                Err(e) => match classify(&e) {
                    TgFailure::RetryAfter(d) => {
                        tracing::info!(job = %job.id, wait_s = d.as_secs(), "Telegram asked to wait");
                        tokio::select! {
                            _ = tokio::time::sleep(d) => continue,
                            _ = cancel.cancelled() => continue,
                        }
                    }
                    TgFailure::Permanent { code, text } => {
                        return self.fail(&job, code, text).await
                    }
                    TgFailure::Retryable { code, text } => {
                        return self
                            .error(&job, ErrorClass::Retryable, code, text, &mut status)
                            .await
                    }
                },
            }
        }
        self.error(
            &job,
            ErrorClass::Retryable,
            "http_429",
            "rate limited too often".into(),
            &mut status,
        )
        .await
    }

    /// Turn a playlist job into child jobs, one per item up to
    /// `limits.playlist_max_items`, then finish the parent. Idempotent: a
    /// rescued parent probes again and the request index returns the
    /// children already made.
    async fn expand_playlist(
        &self,
        job: Job,
        playlist: crate::download::probe::Playlist,
    ) -> StepResult {
        let cfg = &self.core.config;
        let max = cfg.limits.playlist_max_items as usize;
        let admin = cfg.is_admin(job.user_id);
        // The parent holds one of the user's active slots until it finishes.
        let mut limits = crate::store::EnqueueLimits::from_config(&cfg.limits, admin);
        limits.per_user_active = limits.per_user_active.saturating_add(1);
        let mut taken = 0usize;
        let mut skipped: Vec<String> = Vec::new();
        for (i, item) in playlist.items.iter().enumerate() {
            let name = item.title.clone().unwrap_or_else(|| item.url.clone());
            if i >= max {
                skipped.push(format!("{} ({})", name, "over the playlist limit"));
                continue;
            }
            let url = match crate::netguard::parse_link(&item.url) {
                Ok(u) => u,
                Err(e) => {
                    skipped.push(format!("{name} ({})", e.code()));
                    continue;
                }
            };
            if let Err(e) =
                crate::netguard::check_destination(&url, cfg.security.allow_private_networks).await
            {
                skipped.push(format!("{name} ({})", e.code()));
                continue;
            }
            let new = crate::job::NewJob {
                chat_id: job.chat_id,
                user_id: job.user_id,
                request_msg_id: job.request_msg_id,
                lang: job.lang.clone(),
                url: url.to_string(),
                options: job.options.clone(),
                parent: Some(job.id),
                not_before: None,
            };
            match self.store(move |s| s.enqueue(new, limits, now_ms())).await {
                Ok(_) => taken += 1,
                Err(StoreError::Refused(r)) => skipped.push(format!("{name} ({r})")),
                Err(e) => return Err(e.into()),
            }
        }
        self.core.wake.notify_waiters();
        let lang = self.lang(&job);
        let summary = render(
            lang,
            &Msg::Playlist {
                short_id: job.id.short(),
                title: playlist.title.clone().unwrap_or_default(),
                count: taken,
                skipped,
            },
        );
        let id = job.id;
        let fresh = self.store(move |s| s.get(id)).await?.unwrap_or(job.clone());
        let mut status = self.status(&fresh);
        if !status.force(&summary).await {
            let _ = self
                .bot
                .send_message(ChatId(job.chat_id), summary)
                .reply_parameters(
                    ReplyParameters::new(MessageId(job.request_msg_id))
                        .allow_sending_without_reply(),
                )
                .await;
        }
        let title = playlist.title;
        Ok(
            match self
                .transition(&job, Some(JobState::Cleaning), move |j| {
                    j.title = title.clone()
                })
                .await?
            {
                Some(j) => StepOutcome::Advanced(j),
                None => StepOutcome::Lost(job.id),
            },
        )
    }

    async fn clean(&self, job: Job) -> StepResult {
        let done = cleanup::finish_cleaning(&self.core, job).await?;
        let lang = self.lang(&done);
        let mut status = self.status(&done);
        match &done.failure {
            // A playlist parent: its status message carries the summary.
            None if done.delivery.is_none() => {}
            None => status.delete().await,
            Some(f) if f.code == "chat_unreachable" => {}
            Some(f) => {
                let text = if f.code == "cancelled" {
                    render(
                        lang,
                        &Msg::Cancelled {
                            short_id: done.id.short(),
                        },
                    )
                } else {
                    render(
                        lang,
                        &Msg::Failed {
                            short_id: done.id.short(),
                            code: f.code.clone(),
                            limit_mb: self.core.config.telegram.upload_limit_mb,
                        },
                    )
                };
                if !status.force(&text).await && status.message_id().is_none() {
                    let _ = self
                        .bot
                        .send_message(ChatId(done.chat_id), text)
                        .reply_parameters(
                            ReplyParameters::new(MessageId(done.request_msg_id))
                                .allow_sending_without_reply(),
                        )
                        .await;
                }
            }
        }
        Ok(StepOutcome::Finished(done))
    }

    /// A failure: retry with backoff if it may pass and attempts remain, else
    /// fail for good.
    async fn error(
        &self,
        job: &Job,
        class: ErrorClass,
        code: &'static str,
        text: String,
        status: &mut StatusMessage,
    ) -> StepResult {
        let attempts = job.attempts + 1;
        let max = self.core.config.downloader.max_attempts;
        tracing::warn!(job = %job.id, code, attempts, error = %text, "job error");
        if class == ErrorClass::Permanent || attempts >= max {
            let (code, text) = (code, text);
            return self.fail_counted(job, code, text, attempts).await;
        }
        let delay = backoff(self.core.config.downloader.retry_base_secs, attempts);
        let err = JobError {
            class,
            code: code.into(),
            text,
        };
        let out = self
            .requeue(
                job,
                Some((attempts, now_ms() + delay.as_millis() as Millis, err)),
            )
            .await?;
        let lang = self.lang(job);
        status
            .force(&render(
                lang,
                &Msg::WaitingRetry {
                    short_id: job.id.short(),
                    attempt: attempts + 1,
                    max,
                },
            ))
            .await;
        Ok(out)
    }

    async fn fail(&self, job: &Job, code: &'static str, text: String) -> StepResult {
        self.fail_counted(job, code, text, job.attempts + 1).await
    }

    async fn fail_counted(
        &self,
        job: &Job,
        code: &'static str,
        text: String,
        attempts: u32,
    ) -> StepResult {
        let err = JobError {
            class: ErrorClass::Permanent,
            code: code.into(),
            text,
        };
        Ok(
            match self
                .transition(job, Some(JobState::Cleaning), move |j| {
                    j.attempts = attempts;
                    j.last_error = Some(err.clone());
                    j.failure = Some(err.clone());
                })
                .await?
            {
                Some(j) => StepOutcome::Advanced(j),
                None => StepOutcome::Lost(job.id),
            },
        )
    }

    async fn cancelled(&self, job: &Job) -> StepResult {
        Ok(
            match self
                .transition(job, Some(JobState::Cleaning), |j| {
                    j.failure = Some(cancelled_error())
                })
                .await?
            {
                Some(j) => StepOutcome::Advanced(j),
                None => StepOutcome::Lost(job.id),
            },
        )
    }

    /// Back to `queued`: with `(attempts, next time, error)` after a failure,
    /// or at once and uncounted when the file vanished.
    async fn requeue(&self, job: &Job, retry: Option<(u32, Millis, JobError)>) -> StepResult {
        Ok(
            match self
                .transition(job, Some(JobState::Queued), move |j| {
                    if let Some((attempts, next, err)) = &retry {
                        j.attempts = *attempts;
                        j.next_attempt_at = *next;
                        j.last_error = Some(err.clone());
                    } else {
                        j.next_attempt_at = now_ms();
                    }
                })
                .await?
            {
                Some(j) => StepOutcome::Requeued(j),
                None => StepOutcome::Lost(job.id),
            },
        )
    }

    async fn requeue_for_shutdown(&self, job: &Job) -> StepResult {
        tracing::info!(job = %job.id, "shutdown: back to queued");
        self.requeue(job, None).await
    }
}

/// Start `downloader.concurrency` worker loops on `tracker`.
pub fn spawn_workers(pipeline: Arc<Pipeline>, tracker: &TaskTracker) {
    for n in 0..pipeline.core.config.downloader.concurrency {
        let p = pipeline.clone();
        tracker.spawn(async move {
            tracing::debug!(worker = n, "worker started");
            loop {
                if p.shutdown.is_cancelled() {
                    break;
                }
                // Listen before claiming so a job queued in between wakes us.
                let woken = p.core.wake.notified();
                tokio::pin!(woken);
                woken.as_mut().enable();
                match p.claim().await {
                    Ok(StepOutcome::Advanced(job)) => {
                        let id = job.id;
                        match p.run_job(job).await {
                            Ok(out) => tracing::info!(job = %id, outcome = ?OutcomeName(&out), "job step ended"),
                            Err(e) => tracing::error!(job = %id, error = %e, "job error"),
                        }
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

struct OutcomeName<'a>(&'a StepOutcome);

impl std::fmt::Debug for OutcomeName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            StepOutcome::Idle => f.write_str("idle"),
            StepOutcome::Advanced(j) => write!(f, "advanced to {}", j.state),
            StepOutcome::Finished(j) => write!(f, "finished {}", j.state),
            StepOutcome::Requeued(_) => f.write_str("requeued"),
            StepOutcome::Lost(_) => f.write_str("lost"),
        }
    }
}
