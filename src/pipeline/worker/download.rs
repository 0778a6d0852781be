//! The download stage: a link already delivered goes straight to upload from
//! the cache; anything else runs yt-dlp with progress edits, under the lease.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::download::{self, DownloadError, Want, YtDlpArgs};
use crate::job::{FailureCode, Job, JobState, MediaKind};

use super::media::Media;
use super::{budget, Pipeline, StepOutcome, StepResult};

/// Closes the download's switch slot on every way out of the stage.
struct CloseSwitch<'a>(&'a crate::pipeline::switch::Switches, crate::job::JobId);

impl Drop for CloseSwitch<'_> {
    fn drop(&mut self) {
        self.0.close(self.1);
    }
}

fn want(kind: MediaKind) -> Want {
    match kind {
        MediaKind::Video => Want::Video,
        MediaKind::Audio => Want::Audio,
        MediaKind::Document => Want::Document,
    }
}

impl Pipeline {
    pub(super) async fn download(&self, job: Job, cancel: &CancellationToken) -> StepResult {
        if let Some(done) = self.expand_if_playlist(&job, cancel).await {
            return done;
        }
        let key = job.cache_key();
        if self.jobs.store.cache_get(&key).await?.is_some() {
            // Delivered before: skip the download, upload by file_id.
            return self
                .advance(&job, JobState::Uploading, |j| j.file_path = None)
                .await;
        }
        // From here a press of another form reaches this download (see
        // `pipeline::switch`); opened before the reload, so a press before
        // it is in the reloaded options and one after it is in the slot.
        let switch = self.jobs.switches.open(job.id);
        let _closed = CloseSwitch(&self.jobs.switches, job.id);
        // Reload: the handler may have attached the status message since.
        let id = job.id;
        let job = self.jobs.store.get(id).await?.unwrap_or(job);
        let mut status = self.status(&job);
        status.downloading();

        let cfg = &self.jobs.config;
        // Held until the run ends: an update meanwhile leaves this job on
        // the install it started with (and keeps that folder on disk).
        let ytdlp = self.ytdlp.current();
        let mut args = YtDlpArgs::new(
            &ytdlp.bin,
            job.url.clone(),
            &cfg.downloads_dir(),
            job.id.0,
            want(job.options.kind),
        );
        args.max_height = job.options.max_height;
        args.upload_limit = Some(cfg.upload_limit_bytes());
        args.has_ffmpeg = self.tools.ffmpeg.is_some();
        args.ffmpeg_location = self.tools.location.clone();
        args.extra_args = cfg.downloader.extra_args.clone();
        args.cookies = cfg.downloader.cookies_file.clone().map(PathBuf::from);
        let session = self.egress_session();
        args.proxy = session.as_ref().map(|s| s.proxy_url());
        let (tx, rx) = watch::channel(None);
        // Its own token: stopping a download over the limit is not a cancel.
        let run_cancel = cancel.child_token();
        let run = download::run_ytdlp(
            &args,
            run_cancel.clone(),
            Duration::from_secs(cfg.downloader.timeout_secs),
            move |p| {
                tx.send_replace(Some(p));
            },
        );
        let budget = cfg.max_download_bytes();
        let over = budget::exceeded(args.output_dir.clone(), budget, rx.clone());
        let mut stopped_at: Option<u64> = None;
        let mut switching = false;
        // Tick at half the edit interval: `StatusMessage` enforces the
        // interval itself, and a tick that lands just short of it would
        // otherwise wait a whole extra interval.
        let mut progress_tick = tokio::time::interval(Duration::from_millis(
            (cfg.telegram.progress_interval_secs * 500).max(250),
        ));
        let work = async {
            tokio::pin!(run);
            tokio::pin!(over);
            loop {
                tokio::select! {
                    r = &mut run => break r,
                    _ = switch.pressed(), if !switching => {
                        tracing::info!(job = %job.id, "another form was chosen; stopping this download");
                        switching = true;
                        run_cancel.cancel();
                    }
                    used = &mut over, if stopped_at.is_none() => {
                        tracing::warn!(job = %job.id, used, budget, "download passed max_download_mb; stopping it");
                        stopped_at = Some(used);
                        run_cancel.cancel();
                    }
                    _ = progress_tick.tick() => {
                        if status.message.message_id().is_none() {
                            // Claimed before the handler recorded its
                            // acknowledgement: look for it again.
                            let id = job.id;
                            if let Ok(Some(m)) = self.jobs.store.get(id).await.map(|j| j.and_then(|j| j.status_msg_id)) {
                                status.message.attach(m);
                            }
                        }
                        let latest = rx.borrow().clone();
                        status.progress(latest);
                    }
                }
            }
        };
        let Some(result) = self.with_lease(&job, work).await else {
            cancel.cancel();
            return Ok(StepOutcome::Lost(job.id));
        };
        // The download has ended: a later press makes a job of its own. One
        // pressed until now wins over what this run produced, unless the job
        // was cancelled or the process is stopping.
        if let Some(choice) = self.jobs.switches.close(job.id) {
            if !cancel.is_cancelled() {
                return self.switch_form(&job, choice, &mut status).await;
            }
        }
        if let Some(used) = stopped_at {
            // The clean stage deletes what it wrote.
            let text =
                format!("stopped with {used} bytes on disk, over the {budget}-byte download limit");
            return self.fail(&job, FailureCode::DownloadTooLarge, text).await;
        }
        match result {
            // `run_ytdlp` refused a file over `args.upload_limit` already.
            Ok(out) => {
                let media = match self.prepare_media(&job, &out, cancel).await {
                    Media::Ready(p) => p.media,
                    Media::Stopped => return self.stopped(&job).await,
                    Media::Lost => return Ok(StepOutcome::Lost(job.id)),
                };
                let path = out.file_path.display().to_string();
                // A remux moves the index, which can change the size a little.
                let size = tokio::fs::metadata(&out.file_path)
                    .await
                    .map_or(out.filesize, |m| m.len());
                let title = out.title;
                self.advance(&job, JobState::Uploading, move |j| {
                    j.file_path = Some(path.clone());
                    j.file_size = Some(size);
                    j.title = title.clone();
                    j.media = Some(media);
                })
                .await
            }
            Err(e)
                if !matches!(e, DownloadError::Cancelled) && Self::refused(&session).is_some() =>
            {
                let why = Self::refused(&session).unwrap_or_default();
                self.fail(&job, FailureCode::DestinationRefused, why).await
            }
            Err(e) => self.ytdlp_failed(&job, e).await,
        }
    }
}
