//! Downloading with yt-dlp.
//!
//! - [`args`]: the command line, built once from [`YtDlpArgs`] (no shell,
//!   `--ignore-config`, the link after `--`, output named from the job id and
//!   the media id only, a format under the upload limit).
//! - [`progress`]: parsing yt-dlp's stdout (our prefixed progress and meta
//!   lines, and the max-filesize notice it prints while exiting 0).
//! - [`classify`]: yt-dlp's stderr to a retryable or permanent
//!   [`DownloadFailure`] with a stable [`Reason`] code.
//! - [`process`]: running it in its own process group, in the job's folder,
//!   without `TGDL_*` in its environment, draining both pipes, and killing
//!   the whole group on cancel or timeout.
//! - [`install`], [`handle`], [`managed`], [`source`], [`selftest`]: which
//!   yt-dlp runs; the managed one lives in its own folders, is updated into a
//!   fresh folder, checked, and switched to with one symlink rename.
//! - [`media`]: after yt-dlp, the file made to look right in Telegram
//!   (streamable MP4, shape and length from ffprobe, thumbnail, tags).
//! - [`leftovers`]: finding and ending processes an earlier run left working
//!   in a job's folder (an ffmpeg after `kill -9` of the bot).
//!
//! The worker owns the policy (retries, backoff, cleaning); this module only
//! reports what happened.

pub mod args;
pub mod classify;
pub mod handle;
pub mod install;
pub mod leftovers;
pub mod managed;
pub mod media;
pub mod probe;
pub mod process;
pub mod progress;
pub mod selftest;
pub mod source;

pub use args::{job_dir, Want, YtDlpArgs};
pub use classify::{classify, DownloadFailure, Reason};
pub use handle::{Install, YtDlp};
pub use process::{run_ytdlp, ytdlp_version, DownloadError, DownloadOutput, CHILD_NICENESS};
pub use progress::{MediaMeta, Progress};
