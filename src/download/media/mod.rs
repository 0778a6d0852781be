//! Making a downloaded file look right in Telegram, after yt-dlp is done and
//! before the upload: a video streamable (index at the front, remuxed when
//! not), its shape and length as ffprobe reads them from the file, an
//! audio's title and performer, and a thumbnail that meets Telegram's rules.
//!
//! - [`probe`]: ffprobe's reading of the file.
//! - [`faststart`]: where the MP4 index is, and the remux that moves it.
//! - [`thumb`]: the thumbnail, from the source's picture, a cover or a frame.
//!
//! Every step is optional: without ffmpeg or ffprobe (or when one fails on
//! a file) the upload goes out with what yt-dlp reported, never fails for it.
//! What the upload needs is written beside the file ([`Prepared::save`]), so
//! an upload after a restart finds it without a new record layout.

pub mod faststart;
pub mod probe;
pub mod thumb;
mod tool;

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::install;
use super::process::DownloadOutput;
use crate::job::{MediaInfo, MediaKind};

/// Our own files in a job's folder (yt-dlp names its files after the media
/// id, never this), removed with the folder by the clean stage.
const WORK_DIR: &str = ".tgdl";
const PREPARED_FILE: &str = "media.json";
const THUMB_FILE: &str = "thumb.jpg";

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("cannot start {tool}: {source}")]
    Spawn {
        tool: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{tool} timed out")]
    TimedOut { tool: &'static str },
    #[error("{tool} failed: {detail}")]
    Failed { tool: &'static str, detail: String },
    #[error("unreadable ffprobe output: {0}")]
    Parse(String),
    #[error("i/o error around ffmpeg: {0}")]
    Io(#[source] io::Error),
}

/// The ffmpeg and ffprobe the bot uses (`downloader.ffmpeg`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MediaTools {
    pub ffmpeg: Option<PathBuf>,
    pub ffprobe: Option<PathBuf>,
    /// The configured folder, for yt-dlp's `--ffmpeg-location`; `None` for
    /// "auto" (yt-dlp looks on PATH as we did).
    pub location: Option<PathBuf>,
}

impl MediaTools {
    /// `setting` is "auto" (PATH) or a folder holding ffmpeg and ffprobe.
    pub fn resolve(setting: &str) -> Self {
        if setting == "auto" {
            return MediaTools {
                ffmpeg: install::find_on_path("ffmpeg"),
                ffprobe: install::find_on_path("ffprobe"),
                location: None,
            };
        }
        let dir = PathBuf::from(setting);
        let found = |name: &str| Some(dir.join(name)).filter(|p| install::is_executable(p));
        MediaTools {
            ffmpeg: found("ffmpeg"),
            ffprobe: found("ffprobe"),
            location: Some(dir),
        }
    }

    /// The tools that were not found, for `/health` and the start-up log.
    pub fn missing(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.ffmpeg.is_none() {
            out.push("ffmpeg");
        }
        if self.ffprobe.is_none() {
            out.push("ffprobe");
        }
        out
    }
}

/// What the upload sends besides the file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prepared {
    pub media: MediaInfo,
    /// An audio's track title and performer.
    pub title: Option<String>,
    pub performer: Option<String>,
    /// A JPEG within Telegram's limits, in the job's folder.
    pub thumbnail: Option<PathBuf>,
}

impl Prepared {
    /// Only what yt-dlp reported: the answer without ffmpeg and ffprobe.
    pub fn reported(out: &DownloadOutput, sent_as: MediaKind) -> Self {
        let audio = sent_as == MediaKind::Audio;
        Prepared {
            media: MediaInfo {
                width: out.width,
                height: out.height,
                duration_secs: out.duration.map(whole_seconds),
            },
            title: audio
                .then(|| out.track.clone().or_else(|| out.title.clone()))
                .flatten(),
            performer: audio
                .then(|| out.artist.clone().or_else(|| out.uploader.clone()))
                .flatten(),
            thumbnail: None,
        }
    }

    /// Writes this beside the media in `job_dir`.
    pub async fn save(&self, job_dir: &Path) -> io::Result<()> {
        let dir = job_dir.join(WORK_DIR);
        tokio::fs::create_dir_all(&dir).await?;
        let json = serde_json::to_vec(self).map_err(io::Error::other)?;
        tokio::fs::write(dir.join(PREPARED_FILE), json).await
    }

    /// What [`Prepared::save`] wrote in `job_dir`; `None` when there is
    /// nothing readable (a file downloaded by an older version). A
    /// thumbnail that has gone is left out.
    pub async fn load(job_dir: &Path) -> Option<Self> {
        let bytes = tokio::fs::read(job_dir.join(WORK_DIR).join(PREPARED_FILE))
            .await
            .ok()?;
        let mut p: Prepared = serde_json::from_slice(&bytes).ok()?;
        if p.thumbnail.as_deref().is_some_and(|t| !t.is_file()) {
            p.thumbnail = None;
        }
        Some(p)
    }
}

/// Telegram takes whole seconds; a clip under half a second is still one.
fn whole_seconds(d: f64) -> u32 {
    let s = d.round().min(u32::MAX as f64) as u32;
    if s == 0 && d > 0.0 {
        1
    } else {
        s
    }
}

/// Everything this module does to a downloaded file that goes out as
/// `sent_as`: remux a video that is not streamable, read the shape, length
/// and tags, make the thumbnail. Each step that cannot run or fails leaves
/// yt-dlp's values (and a warning in the log).
pub async fn prepare(tools: &MediaTools, out: &DownloadOutput, sent_as: MediaKind) -> Prepared {
    let mut prepared = Prepared::reported(out, sent_as);
    let file = out.file_path.as_path();
    let Some(job_dir) = file.parent() else {
        return prepared;
    };
    let work = job_dir.join(WORK_DIR);
    if let Err(e) = tokio::fs::create_dir_all(&work).await {
        tracing::warn!(dir = %work.display(), error = %e, "cannot prepare media");
        return prepared;
    }
    let warn = |step: &str, e: MediaError| {
        tracing::warn!(file = %file.display(), step, error = %e, "media step skipped");
    };
    if sent_as == MediaKind::Video {
        match (faststart::index_at_front(file), &tools.ffmpeg) {
            (Ok(Some(false)), Some(ffmpeg)) => {
                if let Err(e) = faststart::remux(ffmpeg, file, &work).await {
                    warn("faststart", e);
                }
            }
            (Ok(Some(false)), None) => {
                tracing::warn!(file = %file.display(), "video not streamable and no ffmpeg to remux it")
            }
            (Err(e), _) => warn("faststart", MediaError::Io(e)),
            _ => {}
        }
    }
    let probe = async {
        match &tools.ffprobe {
            Some(ffprobe) => probe::probe(ffprobe, file, job_dir)
                .await
                .map_err(|e| warn("ffprobe", e))
                .unwrap_or_default(),
            None => probe::Probed::default(),
        }
    };
    let thumb_out = work.join(THUMB_FILE);
    let picture = tools
        .ffmpeg
        .as_ref()
        .and_then(|_| thumb::source_picture(file));
    // A video's thumbnail needs only its length (for the frame), which
    // yt-dlp or the file's index usually tell: ffprobe and ffmpeg then run
    // side by side. Otherwise (an audio file's cover is known from ffprobe)
    // the thumbnail waits for the probe.
    let early = match sent_as {
        MediaKind::Video if tools.ffmpeg.is_some() => out
            .duration
            .or_else(|| faststart::movie_duration(file).ok().flatten()),
        _ => None,
    };
    let (probed, thumbnail) = match early {
        Some(length) => {
            let looks = Looks {
                file,
                sent_as,
                picture: picture.as_deref(),
                duration: Some(length),
                cover: false,
            };
            tokio::join!(probe, thumbnail(tools, looks, &thumb_out, job_dir))
        }
        None => {
            let probed = probe.await;
            let looks = Looks {
                file,
                sent_as,
                picture: picture.as_deref(),
                duration: probed.duration.or(out.duration),
                cover: probed.cover,
            };
            let t = thumbnail(tools, looks, &thumb_out, job_dir).await;
            (probed, t)
        }
    };
    if let (Some(w), Some(h)) = (probed.width, probed.height) {
        prepared.media.width = Some(w);
        prepared.media.height = Some(h);
    }
    let duration = probed.duration.or(out.duration);
    prepared.media.duration_secs = duration.map(whole_seconds);
    if sent_as == MediaKind::Audio {
        prepared.title = probed.title.clone().or(prepared.title);
        prepared.performer = probed.artist.clone().or(prepared.performer);
    }
    prepared.thumbnail = thumbnail;
    prepared
}

/// What the thumbnail is made from.
struct Looks<'a> {
    file: &'a Path,
    sent_as: MediaKind,
    /// yt-dlp's `--write-thumbnail` picture, tried first.
    picture: Option<&'a Path>,
    /// The length, for a video's frame.
    duration: Option<f64>,
    /// An audio file carries a cover picture.
    cover: bool,
}

/// The thumbnail from the first source that gives one (no ffmpeg: none).
async fn thumbnail(
    tools: &MediaTools,
    looks: Looks<'_>,
    out: &Path,
    job_dir: &Path,
) -> Option<PathBuf> {
    let ffmpeg = tools.ffmpeg.as_ref()?;
    let mut sources = Vec::new();
    if let Some(p) = looks.picture {
        sources.push(thumb::Source::Picture(p));
    }
    match looks.sent_as {
        MediaKind::Video => sources.push(thumb::Source::Frame {
            video: looks.file,
            at: thumb::frame_time(looks.duration),
        }),
        MediaKind::Audio if looks.cover => sources.push(thumb::Source::Cover(looks.file)),
        MediaKind::Audio => {}
        // A document goes as it is.
        MediaKind::Document => sources.clear(),
    }
    for from in sources {
        match thumb::make(ffmpeg, from, out, job_dir).await {
            Ok(t) => return Some(t),
            Err(e) => {
                tracing::warn!(file = %looks.file.display(), step = "thumbnail", error = %e, "media step skipped")
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_whole_seconds_and_never_zero_for_a_clip() {
        assert_eq!(whole_seconds(2.02), 2);
        assert_eq!(whole_seconds(2.5), 3);
        assert_eq!(whole_seconds(0.2), 1);
        assert_eq!(whole_seconds(0.0), 0);
    }

    #[test]
    fn a_folder_without_the_tools_has_them_missing() {
        let dir = tempfile::tempdir().unwrap();
        let t = MediaTools::resolve(dir.path().to_str().unwrap());
        assert_eq!(t.missing(), ["ffmpeg", "ffprobe"]);
        assert_eq!(t.location.as_deref(), Some(dir.path()));
    }
}
