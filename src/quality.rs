//! Offering quality on a new link. While the user's choice window is open, a
//! background task (never a handler: handlers do not spawn processes) probes
//! the link once with yt-dlp and, when more than one video height fits under
//! the upload limit, adds those heights as buttons to the status message.
//!
//! Best effort by design: if the probe is slow or the bot restarts, the
//! window simply closes and the user's default applies.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use teloxide::prelude::*;
use teloxide::types::MessageId;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::core::Core;
use crate::download::probe;
use crate::i18n::Lang;
use crate::job::{now_ms, JobId, JobState};
use crate::store;

/// Probes running at once: each is a Python process.
const PARALLEL: usize = 2;

/// Start the prober; returns where to send job ids to probe.
pub fn spawn(
    core: Arc<Core>,
    bot: Bot,
    ytdlp: PathBuf,
    tracker: &TaskTracker,
    stop: CancellationToken,
) -> mpsc::Sender<JobId> {
    let (tx, mut rx) = mpsc::channel::<JobId>(1024);
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
            let (core, bot, ytdlp, stop) = (core.clone(), bot.clone(), ytdlp.clone(), stop.clone());
            inner.spawn(async move {
                offer(&core, &bot, &ytdlp, id, &stop).await;
                drop(permit);
            });
        }
    });
    tx
}

async fn offer(
    core: &Core,
    bot: &Bot,
    ytdlp: &std::path::Path,
    id: JobId,
    stop: &CancellationToken,
) {
    let Ok(Some(job)) = store::blocking(&core.store, move |s| s.get(id)).await else {
        return;
    };
    let window = job.next_attempt_at.saturating_sub(now_ms());
    if job.state != JobState::Queued || window == 0 || probe::is_direct_media(&job.url) {
        return;
    }
    let limit = Some(core.config.upload_limit_bytes());
    let probed = match probe::probe(
        ytdlp,
        &job.url,
        limit,
        &stop.child_token(),
        Duration::from_millis(window),
    )
    .await
    {
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
    let Ok(Some(job)) = store::blocking(&core.store, move |s| s.get(id)).await else {
        return;
    };
    let (Some(msg), true) = (
        job.status_msg_id,
        job.state == JobState::Queued && job.next_attempt_at > now_ms(),
    ) else {
        return;
    };
    let lang = Lang::pick(Some(&job.lang), core.default_lang);
    let heights: Vec<u32> = probed.heights.into_iter().take(4).collect();
    let keyboard = crate::bot::choice_keyboard(lang, id, &heights);
    if let Err(e) = bot
        .edit_message_reply_markup(ChatId(job.chat_id), MessageId(msg))
        .reply_markup(keyboard)
        .await
    {
        tracing::debug!(job = %id, error = %e, "cannot add quality buttons");
    }
}
