//! The media step, the end of the download stage: the downloaded file made
//! to look right in Telegram (`download::media::prepare`), under the lease
//! and the job's cancel token, and what the upload needs written beside it.
//! The upload side of the same: the file name, thumbnail and tags an upload
//! carries.

use std::path::Path;

use tokio_util::sync::CancellationToken;

use crate::botapi::filename::upload_name;
use crate::botapi::send::{self, Extras};
use crate::download::media::{self, Prepared};
use crate::download::DownloadOutput;
use crate::job::{Job, MediaInfo};

use super::Pipeline;

/// How the media step ended.
pub(super) enum Media {
    Ready(Prepared),
    /// The user cancelled, or shutdown came: the job stops as a cancelled
    /// download would.
    Stopped,
    /// Another owner has the job.
    Lost,
}

impl Pipeline {
    pub(super) async fn prepare_media(
        &self,
        job: &Job,
        out: &DownloadOutput,
        cancel: &CancellationToken,
    ) -> Media {
        let sent_as = send::method_for(job.options.kind, &out.file_path);
        let work = async {
            tokio::select! {
                p = media::prepare(&self.tools, out, sent_as) => Some(p),
                // Dropping `prepare` kills the ffmpeg it runs.
                _ = cancel.cancelled() => None,
            }
        };
        let prepared = match self.with_lease(job, work).await {
            None => return Media::Lost,
            Some(None) => return Media::Stopped,
            Some(Some(p)) => p,
        };
        if let Some(dir) = out.file_path.parent() {
            if let Err(e) = prepared.save(dir).await {
                // The upload then has only the job record's values.
                tracing::warn!(job = %job.id, error = %e, "cannot keep the prepared media facts");
            }
        }
        tracing::debug!(job = %job.id, ?prepared, "media prepared");
        Media::Ready(prepared)
    }

    /// What an upload of `file` sends besides it: the facts the media step
    /// kept, else the job record's (a file downloaded before that step
    /// existed), and a file name made from the title.
    pub(super) async fn upload_extras(
        &self,
        job: &Job,
        file: &Path,
    ) -> (Option<MediaInfo>, Extras) {
        let prepared = match file.parent() {
            Some(dir) => Prepared::load(dir).await,
            None => None,
        };
        let ext = file.extension().and_then(|e| e.to_str()).unwrap_or("");
        let fallback = send::method_for(job.options.kind, file).name();
        let file_name = Some(upload_name(job.title.as_deref(), ext, fallback));
        match prepared {
            Some(p) => (
                Some(p.media),
                Extras {
                    file_name,
                    thumbnail: p.thumbnail,
                    title: p.title,
                    performer: p.performer,
                },
            ),
            None => (
                job.media,
                Extras {
                    file_name,
                    ..Extras::default()
                },
            ),
        }
    }
}
