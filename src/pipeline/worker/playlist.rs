//! Playlist expansion: a link that is a playlist (or a page of several media)
//! becomes one child job per item, up to `limits.playlist_max_items`, and the
//! parent finishes with a summary naming what was skipped. A child is never
//! expanded again, and no download expands a playlist itself (`args.rs`:
//! `--no-playlist --playlist-items 1`).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::download::probe::{self, Playlist, Probed};
use crate::i18n::Msg;
use crate::job::{now_ms, FailureCode, Job, JobState, NewJob};
use crate::net;
use crate::store::{EnqueueLimits, StoreError};

use super::{Pipeline, StepResult};

impl Pipeline {
    /// Probe a top-level link; when it is a playlist, expand it and return
    /// the step's result. `None`: download it as one media. A probe that
    /// fails or times out is the step's error (retried or failed by its
    /// class), never a reason to download the link whole.
    pub(super) async fn expand_if_playlist(
        &self,
        job: &Job,
        cancel: &CancellationToken,
    ) -> Option<StepResult> {
        if job.parent.is_some() || probe::is_direct_media(&job.url) {
            return None;
        }
        let cfg = &self.jobs.config;
        let timeout = Duration::from_secs(120.min(cfg.downloader.timeout_secs));
        let limit = Some(cfg.upload_limit_bytes());
        // One more than will be taken: whether there are more is then known.
        let ask = cfg.limits.playlist_max_items.saturating_add(1);
        let dir = crate::download::job_dir(&cfg.downloads_dir(), job.id.0);
        let session = self.egress_session();
        let proxy = session.as_ref().map(|s| s.proxy_url());
        let ytdlp = self.ytdlp.current();
        let run = probe::ProbeRun {
            ytdlp: &ytdlp.bin,
            url: &job.url,
            limit,
            max_items: ask,
            timeout,
            proxy: proxy.as_deref(),
            work_dir: &dir,
        };
        let probed = probe::probe(run, cancel).await;
        if let (Err(_), Some(why)) = (&probed, Self::refused(&session)) {
            return Some(self.fail(job, FailureCode::DestinationRefused, why).await);
        }
        match probed {
            Ok(Probed {
                playlist: Some(playlist),
                ..
            }) => Some(self.expand_playlist(job.clone(), playlist).await),
            Ok(_) => None,
            Err(e) => Some(self.ytdlp_failed(job, e).await),
        }
    }

    /// Turn a playlist job into child jobs, then finish the parent.
    /// Idempotent: a rescued parent probes again and the request index
    /// returns the children already made.
    async fn expand_playlist(&self, job: Job, playlist: Playlist) -> StepResult {
        let cfg = &self.jobs.config;
        let max = cfg.limits.playlist_max_items as usize;
        let admin = cfg.is_admin(job.user_id);
        // The parent holds one of the user's active slots until it finishes.
        let mut limits = EnqueueLimits::from_config(&cfg.limits, admin);
        limits.per_user_active = limits.per_user_active.saturating_add(1);
        let mut taken = 0usize;
        let mut skipped: Vec<String> = Vec::new();
        // The probe listed at most one item past the limit; the playlist's
        // own count, when yt-dlp knows it, says how many more there are.
        let listed = playlist.items.len() as u64;
        let unlisted = playlist.total.unwrap_or(0).saturating_sub(listed);
        let more_unknown = playlist.total.is_none() && listed > max as u64;
        for (i, item) in playlist.items.iter().enumerate() {
            let name = item.title.clone().unwrap_or_else(|| item.url.clone());
            if i >= max {
                skipped.push(format!("{} ({})", name, "over the playlist limit"));
                continue;
            }
            let checked = match net::parse_link(&item.url) {
                Ok(url) => net::check_destination(&url, &self.jobs.destinations)
                    .await
                    .map(|()| url),
                Err(e) => Err(e),
            };
            let url = match checked {
                Ok(u) => u,
                Err(e) => {
                    skipped.push(format!("{name} ({})", e.code()));
                    continue;
                }
            };
            let new = NewJob {
                chat_id: job.chat_id,
                user_id: job.user_id,
                request_msg_id: job.request_msg_id,
                lang: job.lang.clone(),
                url: url.to_string(),
                options: job.options.clone(),
                parent: Some(job.id),
                not_before: None,
            };
            match self.jobs.store.enqueue(new, limits, now_ms()).await {
                Ok(_) => taken += 1,
                Err(StoreError::Refused(r)) => skipped.push(format!("{name} ({r})")),
                Err(e) => return Err(e.into()),
            }
        }
        self.jobs.wake_workers();
        let id = job.id;
        let fresh = self.jobs.store.get(id).await?.unwrap_or(job.clone());
        let mut status = self.status(&fresh);
        let summary = status.render(&Msg::Playlist {
            short_id: job.id.short(),
            title: playlist.title.clone().unwrap_or_default(),
            count: taken,
            skipped,
            limit: max as u64,
            unlisted,
            more_unknown,
        });
        if !status.message.force(&summary).await {
            self.reply(&job, summary).await;
        }
        let title = playlist.title;
        self.advance(&job, JobState::Cleaning, move |j| j.title = title.clone())
            .await
    }
}
