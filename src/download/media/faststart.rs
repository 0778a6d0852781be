//! A streamable MP4: its index (`moov`) before the media data (`mdat`), so a
//! Telegram client can start playing before it has the whole file. Checked
//! by reading the top-level box headers (no ffprobe needed); fixed by a
//! remux that copies the streams (`-c copy -movflags +faststart`).

use std::ffi::OsString;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::tool::{common_args, file_arg, run};
use super::MediaError;

/// A remux copies bytes; even a 2 GB file takes well under this.
const REMUX_TIMEOUT: Duration = Duration::from_secs(900);

/// Top-level boxes read before giving up: real files have a handful.
const MAX_BOXES: usize = 4096;

/// Whether `path`'s index comes before its media data: `Some(true)` or
/// `Some(false)`; `None` when it is not an ISO media file (or has neither).
pub fn index_at_front(path: &Path) -> io::Result<Option<bool>> {
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let mut pos = 0u64;
    for n in 0..MAX_BOXES {
        if pos.saturating_add(8) > len {
            break;
        }
        f.seek(SeekFrom::Start(pos))?;
        let mut head = [0u8; 8];
        f.read_exact(&mut head)?;
        let kind = [head[4], head[5], head[6], head[7]];
        if n == 0 && !matches!(&kind, b"ftyp" | b"styp" | b"free" | b"skip" | b"wide") {
            return Ok(None);
        }
        let size = match u32::from_be_bytes([head[0], head[1], head[2], head[3]]) {
            // A 64-bit size follows the type.
            1 => {
                let mut big = [0u8; 8];
                f.read_exact(&mut big)?;
                u64::from_be_bytes(big)
            }
            // The box runs to the end of the file.
            0 => len - pos,
            n => u64::from(n),
        };
        match &kind {
            b"moov" => return Ok(Some(true)),
            b"mdat" => return Ok(Some(false)),
            _ if size < 8 => return Ok(None),
            _ => pos = pos.saturating_add(size),
        }
    }
    Ok(None)
}

/// Rewrites `file` with its index at the front, copying its video and audio
/// as they are (no re-encoding; subtitle and data streams, which the MP4
/// muxer may refuse, are left out): written in `work_dir` and renamed over
/// the original only when the result checks out, so a failed remux leaves
/// the original.
pub async fn remux(ffmpeg: &Path, file: &Path, work_dir: &Path) -> Result<(), MediaError> {
    let ext = file.extension().map(OsString::from).unwrap_or("mp4".into());
    let mut out = PathBuf::from(work_dir).join("faststart");
    out.set_extension(ext);
    let mut args = common_args(true);
    args.push("-i".into());
    args.push(file_arg(file));
    for a in [
        "-map",
        "0:v?",
        "-map",
        "0:a?",
        "-c",
        "copy",
        "-movflags",
        "+faststart",
    ] {
        args.push(a.into());
    }
    args.push(file_arg(&out));
    let cwd = file.parent().unwrap_or(work_dir);
    let result = async {
        run("ffmpeg", ffmpeg, args, cwd, REMUX_TIMEOUT).await?;
        match index_at_front(&out) {
            Ok(Some(true)) => tokio::fs::rename(&out, file).await.map_err(MediaError::Io),
            Ok(_) => Err(MediaError::Failed {
                tool: "ffmpeg",
                detail: "the remuxed file still has its index at the end".into(),
            }),
            Err(e) => Err(MediaError::Io(e)),
        }
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&out).await;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boxes(list: &[(&[u8; 4], usize)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (kind, body) in list {
            out.extend_from_slice(&((body + 8) as u32).to_be_bytes());
            out.extend_from_slice(*kind);
            out.extend(std::iter::repeat_n(0u8, *body));
        }
        out
    }

    fn check(bytes: &[u8]) -> Option<bool> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.mp4");
        std::fs::write(&p, bytes).unwrap();
        index_at_front(&p).unwrap()
    }

    #[test]
    fn finds_where_the_index_is() {
        assert_eq!(
            check(&boxes(&[(b"ftyp", 16), (b"moov", 40), (b"mdat", 100)])),
            Some(true)
        );
        assert_eq!(
            check(&boxes(&[
                (b"ftyp", 16),
                (b"free", 4),
                (b"mdat", 100),
                (b"moov", 40)
            ])),
            Some(false)
        );
    }

    #[test]
    fn not_mp4_or_broken_boxes_are_unknown() {
        assert_eq!(check(b"<html>not a video</html>"), None);
        assert_eq!(check(b""), None);
        // A box claiming to be smaller than its own header.
        let mut bad = boxes(&[(b"ftyp", 16)]);
        bad.extend_from_slice(&[0, 0, 0, 3]);
        bad.extend_from_slice(b"junk");
        assert_eq!(check(&bad), None);
    }

    #[test]
    fn a_64_bit_size_is_followed() {
        let mut bytes = boxes(&[(b"ftyp", 16)]);
        bytes.extend_from_slice(&1u32.to_be_bytes());
        bytes.extend_from_slice(b"free");
        bytes.extend_from_slice(&24u64.to_be_bytes());
        bytes.extend_from_slice(&[0u8; 8]);
        bytes.extend(boxes(&[(b"moov", 8)]));
        assert_eq!(check(&bytes), Some(true));
    }
}
