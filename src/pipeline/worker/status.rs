//! What a job's status message says at each stage, rendered from the
//! catalogue in the job's language. The stages say which line to show; this
//! file is the only place in the pipeline that turns a job into text.

use std::time::Duration;

use crate::botapi::keyboard::choice_keyboard;
use crate::botapi::StatusMessage;
use crate::download::Progress;
use crate::i18n::{render, Lang, Msg};
use crate::job::{FailureCode, Job};

use super::Pipeline;

/// A job's status message and the language to write it in.
pub(super) struct JobStatus {
    pub message: StatusMessage,
    lang: Lang,
    short_id: String,
}

impl Pipeline {
    pub(super) fn status(&self, job: &Job) -> JobStatus {
        let lang = self.lang(job);
        let mut message = StatusMessage::new(
            self.api.clone(),
            job.chat_id,
            job.status_msg_id,
            Duration::from_secs(self.jobs.config.telegram.progress_interval_secs),
        )
        .for_job(job.id);
        // The form buttons stay under a job's own status message until it
        // is delivered (a press switches the download or sends that form
        // too). A playlist's items answer to their parent's message.
        if job.parent.is_none() {
            message = message.with_keyboard(choice_keyboard(lang, job.id, &[]));
        }
        JobStatus {
            message,
            lang,
            short_id: job.id.short(),
        }
    }

    pub(super) fn lang(&self, job: &Job) -> Lang {
        Lang::pick(Some(&job.lang), self.jobs.default_lang())
    }

    /// Reply to the user's message with `text` (when there is no status
    /// message to edit).
    pub(super) async fn reply(&self, job: &Job, text: String) {
        if let Err(e) = self
            .api
            .send(job.chat_id, Some(job.request_msg_id), &text, None)
            .await
        {
            tracing::warn!(job = %job.id, error = %e, "cannot reply");
        }
    }
}

impl JobStatus {
    pub fn render(&self, msg: &Msg) -> String {
        render(self.lang, msg)
    }

    /// The download starts: the first line waits one edit interval and then
    /// shows progress. A chat takes about one call a second, so a "now
    /// downloading" edit sent at once would take the slot a small file's
    /// upload needs a moment later; the acknowledgement already said the job
    /// is accepted.
    pub fn downloading(&mut self) {
        self.message.hold();
    }

    /// The latest progress, at most once per edit interval.
    pub fn progress(&mut self, p: Option<Progress>) {
        let text = match p {
            Some(p) => self.render(&Msg::Progress {
                short_id: self.short_id.clone(),
                percent: p.percent,
                downloaded: p.downloaded,
                total: p.total,
                speed: p.speed,
                eta: p.eta,
            }),
            None => self.render(&Msg::Downloading {
                short_id: self.short_id.clone(),
            }),
        };
        self.message.update(&text);
    }

    /// "Sending the file" (for large files only, see `upload.rs`): in the
    /// background like progress, never awaited, so the edit never stands
    /// between the user and the file in the chat's budget (about one call a
    /// second). On a group's shared message it is one more line change,
    /// coalesced with the others.
    pub fn uploading(&mut self) {
        let text = self.render(&Msg::Uploading {
            short_id: self.short_id.clone(),
        });
        self.message.show(&text);
    }

    pub async fn waiting_retry(&mut self, attempt: u32, max: u32) {
        let text = self.render(&Msg::WaitingRetry {
            short_id: self.short_id.clone(),
            attempt,
            max,
        });
        self.message.force(&text).await;
    }

    /// Stopped to start again in the form the user switched to.
    pub async fn switching(&mut self, options: &crate::job::JobOptions) {
        let text = self.render(&Msg::Switching {
            short_id: self.short_id.clone(),
            kind: options.kind,
            max_height: options
                .max_height
                .filter(|_| options.kind == crate::job::MediaKind::Video),
        });
        self.message.force(&text).await;
    }

    /// Back in the queue until the disk has room again.
    pub async fn waiting_for_disk(&mut self) {
        let text = self.render(&Msg::WaitingForDisk {
            short_id: self.short_id.clone(),
        });
        self.message.force(&text).await;
    }

    /// The last line of a failed or cancelled job.
    pub fn failed_text(&self, code: FailureCode, limit_mb: u64) -> String {
        let short_id = self.short_id.clone();
        self.render(&match code {
            FailureCode::Cancelled => Msg::Cancelled { short_id },
            code => Msg::Failed {
                short_id,
                code,
                limit_mb,
            },
        })
    }
}
