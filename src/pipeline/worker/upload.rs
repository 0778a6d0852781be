//! The upload stage: send the file (or the cached `file_id`) with the method
//! that fits it, under the lease; a 429 waits without counting an attempt.

use std::path::PathBuf;

use tokio_util::sync::CancellationToken;

use crate::botapi::send::{self, Source, Upload};
use crate::botapi::{classify, TgFailure};
use crate::job::{Delivery, ErrorClass, FailureCode, Job, JobState};

use super::{Pipeline, StepOutcome, StepResult};

/// How many 429s in a row one upload waits out before it counts an attempt.
const RETRY_AFTER_ROUNDS: usize = 10;

impl Pipeline {
    pub(super) async fn upload(&self, job: Job, cancel: &CancellationToken) -> StepResult {
        let id = job.id;
        let job = self.jobs.call(move |s| s.get(id)).await?.unwrap_or(job);
        let source = match &job.file_path {
            // The file was checked against the upload limit when the download
            // ended; it vanished only if the disk or an operator removed it.
            Some(p) if std::path::Path::new(p).exists() => Source::File(PathBuf::from(p)),
            Some(_) => return self.requeue_now(&job).await,
            None => {
                let key = job.cache_key();
                match self.jobs.call(move |s| s.cache_get(&key)).await? {
                    Some(c) => Source::Cached {
                        file_id: c.file_id,
                        sent_as: c.sent_as,
                    },
                    None => return self.requeue_now(&job).await,
                }
            }
        };
        self.status(&job).uploading().await;
        let up = Upload {
            chat_id: job.chat_id,
            reply_to: job.request_msg_id,
            kind: job.options.kind,
            source,
            caption: send::caption(job.title.as_deref(), &job.url),
            media: job.media,
        };
        for _ in 0..RETRY_AFTER_ROUNDS {
            let sending = async {
                let send = send::send(&self.bot, &up);
                tokio::pin!(send);
                tokio::select! {
                    r = &mut send => Some(r),
                    _ = cancel.cancelled() => {
                        if self.shutdown.is_cancelled() {
                            // Let an upload in flight finish if it can.
                            tokio::time::timeout(self.upload_grace, &mut send).await.ok()
                        } else {
                            None
                        }
                    }
                }
            };
            let Some(result) = self.with_lease(&job, sending).await else {
                return Ok(StepOutcome::Lost(job.id));
            };
            let Some(result) = result else {
                return self.stopped(&job).await;
            };
            let e = match result {
                Ok(sent) => {
                    let delivery = Delivery {
                        message_id: sent.message_id,
                        file_id: sent.file_id,
                        sent_as: sent.sent_as,
                    };
                    return self
                        .advance(&job, JobState::Cleaning, move |j| {
                            j.delivery = Some(delivery.clone())
                        })
                        .await;
                }
                Err(e) => e,
            };
            match classify(&e) {
                TgFailure::RetryAfter(d) => {
                    tracing::info!(job = %job.id, wait_s = d.as_secs(), "Telegram asked to wait");
                    tokio::select! {
                        _ = tokio::time::sleep(d) => {}
                        _ = cancel.cancelled() => {}
                    }
                }
                TgFailure::Permanent { code, text } => return self.fail(&job, code, text).await,
                TgFailure::Retryable { code, text } => {
                    return self.error(&job, ErrorClass::Retryable, code, text).await
                }
            }
        }
        self.error(
            &job,
            ErrorClass::Retryable,
            FailureCode::Http429,
            "rate limited too often".into(),
        )
        .await
    }
}
