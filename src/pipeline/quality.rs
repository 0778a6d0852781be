//! Offering quality on a new link. While the user's choice window is open, a
//! background task (never a handler: handlers do not spawn processes) probes
//! the link once with yt-dlp and, when more than one video height fits under
//! the upload limit, adds those heights as buttons to the status message.
//!
//! Best effort by design: if the probe is slow or the bot restarts, the
//! window simply closes and the user's default applies.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::JobService;
use crate::botapi::keyboard::choice_keyboard;
use crate::botapi::Api;
use crate::download::{probe, YtDlp};
use crate::i18n::Lang;
use crate::job::{now_ms, JobId, JobState};
use crate::net::egress::EgressProxy;

/// Probes running at once: each is a Python process.
const PARALLEL: usize = 2;

/// The queue of jobs to probe: the sender goes to [`JobService::new`], the
/// receiver to [`spawn`]. Bounded: when it is full a job just keeps its
/// default.
pub fn queue() -> (mpsc::Sender<JobId>, mpsc::Receiver<JobId>) {
    mpsc::channel(1024)
}

/// Start the prober on the jobs sent to `rx`.
pub fn spawn(
    jobs: Arc<JobService>,
    api: Api,
    ytdlp: YtDlp,
    egress: Option<Arc<EgressProxy>>,
    mut rx: mpsc::Receiver<JobId>,
    tracker: &TaskTracker,
    stop: CancellationToken,
) {
    let inner = tracker.clone();
    tracker.spawn(async move {
        let slots = Arc::new(tokio::sync::Semaphore::new(PARALLEL));
        loop {
            let id = tokio::select! {
                id = rx.recv() => match id { Some(id) => id, None => return },
                _ = stop.cancelled() => return,
            };
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let (jobs, api, ytdlp, stop) = (jobs.clone(), api.clone(), ytdlp.clone(), stop.clone());
            let session = egress.as_ref().map(|p| p.session());
            inner.spawn(async move {
                let proxy = session.as_ref().map(|s| s.proxy_url());
                offer(
                    &jobs,
                    &api,
                    &ytdlp.current().bin,
                    proxy.as_deref(),
                    id,
                    &stop,
                )
                .await;
                drop(permit);
            });
        }
    });
}

async fn offer(
    jobs: &JobService,
    api: &Api,
    ytdlp: &std::path::Path,
    proxy: Option<&str>,
    id: JobId,
    stop: &CancellationToken,
) {
    let Ok(Some(job)) = jobs.store.get(id).await else {
        return;
    };
    let window = job.next_attempt_at.saturating_sub(now_ms());
    if job.state != JobState::Queued || window == 0 || probe::is_direct_media(&job.url) {
        return;
    }
    let limit = Some(jobs.config.upload_limit_bytes());
    let dir = crate::download::job_dir(&jobs.config.downloads_dir(), id.0);
    let run = probe::ProbeRun {
        ytdlp,
        url: &job.url,
        limit,
        // Two items tell a playlist, which gets no quality buttons.
        max_items: 2,
        timeout: Duration::from_millis(window),
        proxy,
        work_dir: &dir,
    };
    let probed = match probe::probe(run, &stop.child_token()).await {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(job = %id, error = %e, "quality probe gave nothing");
            return;
        }
    };
    if probed.heights.len() < 2 || probed.playlist.is_some() {
        return;
    }
    // Still waiting for the user? (They may have chosen meanwhile.)
    let Ok(Some(job)) = jobs.store.get(id).await else {
        return;
    };
    let (Some(msg), true) = (
        job.status_msg_id,
        job.state == JobState::Queued && job.next_attempt_at > now_ms(),
    ) else {
        return;
    };
    let lang = Lang::pick(Some(&job.lang), jobs.default_lang());
    let heights: Vec<u32> = probed.heights.into_iter().take(4).collect();
    let keyboard = choice_keyboard(lang, id, &heights);
    if let Err(e) = api.edit_markup(job.chat_id, msg, keyboard).await {
        tracing::debug!(job = %id, error = %e, "cannot add quality buttons");
    }
}
