//! The upload stage: send the file (or the cached `file_id`) with the method
//! that fits it, under the lease; a 429 waits without counting an attempt.

use std::path::PathBuf;

use tokio_util::sync::CancellationToken;

use crate::botapi::keyboard::form_keyboard;
use crate::botapi::pacer::PaceError;
use crate::botapi::send::{self, Source, Upload};
use crate::botapi::{classify, TgFailure};
use crate::job::{Delivery, ErrorClass, FailureCode, Job, JobState};

use super::{Pipeline, StepOutcome, StepResult};

/// Files at least this large get the "sending the file" line.
const SHOW_SENDING_FROM: u64 = 8 << 20;

impl Pipeline {
    pub(super) async fn upload(&self, job: Job, cancel: &CancellationToken) -> StepResult {
        let id = job.id;
        let job = self.jobs.store.get(id).await?.unwrap_or(job);
        let source = match &job.file_path {
            // The file was checked against the upload limit when the download
            // ended; it vanished only if the disk or an operator removed it.
            Some(p) if std::path::Path::new(p).exists() => Source::File(PathBuf::from(p)),
            Some(_) => return self.requeue_now(&job).await,
            None => {
                let key = job.cache_key();
                match self.jobs.store.cache_get(&key).await? {
                    Some(c) => Source::Cached {
                        file_id: c.file_id,
                        sent_as: c.sent_as,
                    },
                    None => return self.requeue_now(&job).await,
                }
            }
        };
        // "Sending the file" only where an upload takes a while: for a small
        // file the line would take the chat's slot (about one call a second)
        // that the file itself needs next.
        if matches!(source, Source::File(_)) && job.file_size.unwrap_or(0) >= SHOW_SENDING_FROM {
            self.status(&job).uploading();
        }
        let (media, extras) = match &source {
            Source::File(p) => self.upload_extras(&job, p).await,
            Source::Cached { .. } => (job.media, Default::default()),
        };
        let up = Upload {
            chat_id: job.chat_id,
            reply_to: job.request_msg_id,
            kind: job.options.kind,
            source,
            caption: send::caption(job.title.as_deref(), &job.url),
            media,
            extras,
            by_path: self.jobs.config.telegram.local_api,
            // The other forms, one press away (see `pipeline::switch`); a
            // playlist's items answer to their parent's message.
            keyboard: job
                .parent
                .is_none()
                .then(|| form_keyboard(self.lang(&job), job.id)),
        };
        // A 429 is waited out inside the pacer, without counting an attempt.
        let sending = async {
            let send = send::send(&self.api, &up);
            tokio::pin!(send);
            tokio::select! {
                r = &mut send => Some(r),
                _ = cancel.cancelled() => {
                    if self.shutdown.is_cancelled() {
                        // Let an upload in flight finish if it can. (Given
                        // up, the job stays in uploading with its folder,
                        // and the next start sends it again.)
                        tokio::time::timeout(self.upload_grace, &mut send).await.ok()
                    } else if up.by_path {
                        // A local server reads the file by path after our
                        // request left: cleaning now would pull the file
                        // from under it. Telegram's answer comes first.
                        Some(send.await)
                    } else {
                        None
                    }
                }
            }
        };
        let Some(result) = self.with_lease(&job, sending).await else {
            return Ok(StepOutcome::Lost(job.id));
        };
        match result {
            Some(Ok(sent)) => {
                let delivery = Delivery {
                    message_id: sent.message_id,
                    file_id: sent.file_id,
                    sent_as: sent.sent_as,
                };
                self.advance(&job, JobState::Cleaning, move |j| {
                    j.delivery = Some(delivery.clone())
                })
                .await
            }
            // Cancelled, or shutdown while the pacer held the call.
            None | Some(Err(PaceError::Shutdown)) => self.stopped(&job).await,
            Some(Err(PaceError::Request(e))) => match classify(&e) {
                TgFailure::Permanent { code, text } => self.fail(&job, code, text).await,
                TgFailure::Retryable { code, text } => {
                    self.error(&job, ErrorClass::Retryable, code, text).await
                }
                // The pacer retries these itself; one that reaches here is
                // a bug, and retrying later is the safe answer.
                TgFailure::RetryAfter(_) => {
                    self.error(
                        &job,
                        ErrorClass::Retryable,
                        FailureCode::Http429,
                        e.to_string(),
                    )
                    .await
                }
            },
        }
    }
}
