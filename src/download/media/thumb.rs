//! The thumbnail Telegram shows before a video plays (or an audio's cover):
//! a JPEG of at most 320 px on its long side and under 200 kB, Telegram's
//! rules. Made by ffmpeg from the picture yt-dlp fetched, the cover inside
//! an audio file, or a frame of the video.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::tool::{common_args, file_arg, run};
use super::MediaError;

/// Telegram's limits for a thumbnail.
pub const MAX_SIDE: u32 = 320;
pub const MAX_BYTES: u64 = 200_000;

const THUMB_TIMEOUT: Duration = Duration::from_secs(60);

/// What `--write-thumbnail` may have written.
const PICTURE_EXT: &[&str] = &["jpg", "jpeg", "png", "webp", "gif", "avif", "bmp"];

/// Where the thumbnail comes from.
#[derive(Clone, Copy, Debug)]
pub enum Source<'a> {
    /// An image file: the source's thumbnail as yt-dlp fetched it.
    Picture(&'a Path),
    /// The picture attached to an audio file.
    Cover(&'a Path),
    /// A frame of a video, `at` seconds in.
    Frame { video: &'a Path, at: f64 },
}

/// The picture yt-dlp's `--write-thumbnail` left beside `media`: the same
/// name with an image extension.
pub fn source_picture(media: &Path) -> Option<PathBuf> {
    let dir = media.parent()?;
    let stem = media.file_stem()?;
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p != media && p.file_stem() == Some(stem))
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| PICTURE_EXT.contains(&e.to_ascii_lowercase().as_str()))
        })
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found.into_iter().next()
}

/// A frame a little way in (the first is often black), within the video.
pub fn frame_time(duration: Option<f64>) -> f64 {
    duration.map_or(0.0, |d| (d / 4.0).min(5.0))
}

/// Writes the thumbnail to `out`; returns `out` when it meets the limits.
pub async fn make(
    ffmpeg: &Path,
    from: Source<'_>,
    out: &Path,
    cwd: &Path,
) -> Result<PathBuf, MediaError> {
    // A frame past a short video's end gives nothing: try its start then.
    let attempts: &[(u8, bool)] = match from {
        Source::Frame { at, .. } if at > 0.0 => &[(4, true), (4, false)],
        _ => &[(4, false)],
    };
    let mut last = MediaError::Failed {
        tool: "ffmpeg",
        detail: "no thumbnail written".into(),
    };
    for &(quality, seek) in attempts.iter().chain(&[(20, false)]) {
        let _ = tokio::fs::remove_file(out).await;
        match run(
            "ffmpeg",
            ffmpeg,
            args(from, out, quality, seek),
            cwd,
            THUMB_TIMEOUT,
        )
        .await
        {
            Ok(_) => match check(out).await {
                Ok(()) => return Ok(out.to_path_buf()),
                Err(e) => last = e,
            },
            Err(e) => last = e,
        }
    }
    let _ = tokio::fs::remove_file(out).await;
    Err(last)
}

fn args(from: Source<'_>, out: &Path, quality: u8, seek: bool) -> Vec<OsString> {
    let mut a = common_args(true);
    let (input, stream) = match from {
        Source::Picture(p) => (p, "0:v:0"),
        Source::Cover(p) => (p, "0:v:0"),
        Source::Frame { video, at } => {
            if seek {
                a.push("-ss".into());
                a.push(format!("{at:.3}").into());
            }
            // `V`: a video stream that is not an attached picture.
            (video, "0:V:0")
        }
    };
    a.push("-i".into());
    a.push(file_arg(input));
    let scale = format!(
        "scale=w='min({MAX_SIDE},iw)':h='min({MAX_SIDE},ih)':force_original_aspect_ratio=decrease"
    );
    for s in [
        "-map",
        stream,
        "-frames:v",
        "1",
        "-vf",
        &scale,
        "-q:v",
        &quality.to_string(),
        "-f",
        "mjpeg",
    ] {
        a.push(s.into());
    }
    a.push(file_arg(out));
    a
}

/// A JPEG, not empty, under the byte limit.
async fn check(out: &Path) -> Result<(), MediaError> {
    let bytes = tokio::fs::read(out).await.map_err(MediaError::Io)?;
    let fail = |detail: String| MediaError::Failed {
        tool: "ffmpeg",
        detail,
    };
    if !bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return Err(fail(format!(
            "thumbnail is not a JPEG ({} bytes)",
            bytes.len()
        )));
    }
    if bytes.len() as u64 >= MAX_BYTES {
        return Err(fail(format!("thumbnail is {} bytes", bytes.len())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_picture_beside_the_media_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let media = dir.path().join("abc.mp4");
        std::fs::write(&media, b"v").unwrap();
        assert_eq!(source_picture(&media), None);
        std::fs::write(dir.path().join("other.jpg"), b"x").unwrap();
        std::fs::write(dir.path().join("abc.info.json"), b"{}").unwrap();
        assert_eq!(source_picture(&media), None);
        std::fs::write(dir.path().join("abc.webp"), b"x").unwrap();
        assert_eq!(source_picture(&media), Some(dir.path().join("abc.webp")));
    }

    #[test]
    fn frames_are_taken_inside_the_video() {
        assert_eq!(frame_time(None), 0.0);
        assert_eq!(frame_time(Some(2.0)), 0.5);
        assert_eq!(frame_time(Some(3600.0)), 5.0);
    }
}
