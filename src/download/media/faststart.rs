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

/// The movie's length from its index (`moov` > `mvhd`: duration over
/// timescale), read from the box headers; `None` when the file is not an
/// ISO media file or does not say. Lets the thumbnail's frame be chosen
/// without waiting for ffprobe.
pub fn movie_duration(path: &Path) -> io::Result<Option<f64>> {
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let Some((moov, moov_end)) = find_box(&mut f, 0, len, b"moov")? else {
        return Ok(None);
    };
    let Some((mvhd, mvhd_end)) = find_box(&mut f, moov, moov_end, b"mvhd")? else {
        return Ok(None);
    };
    f.seek(SeekFrom::Start(mvhd))?;
    let mut version = [0u8; 4];
    f.read_exact(&mut version)?;
    // Version 1 has 64-bit times and duration; version 0 32-bit ones.
    let (skip, wide) = match version[0] {
        0 => (8, false),
        1 => (16, true),
        _ => return Ok(None),
    };
    let need = 4 + skip + 4 + if wide { 8 } else { 4 };
    if mvhd.saturating_add(need) > mvhd_end {
        return Ok(None);
    }
    f.seek(SeekFrom::Current(skip as i64))?;
    let mut scale = [0u8; 4];
    f.read_exact(&mut scale)?;
    let timescale = u32::from_be_bytes(scale);
    let duration = if wide {
        let mut d = [0u8; 8];
        f.read_exact(&mut d)?;
        u64::from_be_bytes(d)
    } else {
        let mut d = [0u8; 4];
        f.read_exact(&mut d)?;
        u64::from(u32::from_be_bytes(d))
    };
    // All ones: the length is not known.
    let unknown = duration == u64::MAX || (!wide && duration == u64::from(u32::MAX));
    Ok((timescale > 0 && duration > 0 && !unknown).then(|| duration as f64 / f64::from(timescale)))
}

/// The body (start, end) of the first `kind` box among the boxes between
/// `start` and `end`.
fn find_box(
    f: &mut std::fs::File,
    start: u64,
    end: u64,
    kind: &[u8; 4],
) -> io::Result<Option<(u64, u64)>> {
    let mut pos = start;
    for _ in 0..MAX_BOXES {
        if pos.saturating_add(8) > end {
            break;
        }
        f.seek(SeekFrom::Start(pos))?;
        let mut head = [0u8; 8];
        f.read_exact(&mut head)?;
        let (size, header) = match u32::from_be_bytes([head[0], head[1], head[2], head[3]]) {
            1 => {
                let mut big = [0u8; 8];
                f.read_exact(&mut big)?;
                (u64::from_be_bytes(big), 16)
            }
            0 => (end - pos, 8),
            n => (u64::from(n), 8),
        };
        if size < header || pos.saturating_add(size) > end {
            return Ok(None);
        }
        if &head[4..8] == kind {
            return Ok(Some((pos + header, pos + size)));
        }
        pos += size;
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

    fn with_mvhd(version: u8, timescale: u32, duration: u64) -> Vec<u8> {
        let mut mvhd = vec![version, 0, 0, 0];
        let times = if version == 1 { 16 } else { 8 };
        mvhd.extend(std::iter::repeat_n(0u8, times));
        mvhd.extend_from_slice(&timescale.to_be_bytes());
        if version == 1 {
            mvhd.extend_from_slice(&duration.to_be_bytes());
        } else {
            mvhd.extend_from_slice(&(duration as u32).to_be_bytes());
        }
        mvhd.extend(std::iter::repeat_n(0u8, 80));
        let mut moov_body = boxes(&[(b"udta", 4)]);
        moov_body.extend_from_slice(&((mvhd.len() + 8) as u32).to_be_bytes());
        moov_body.extend_from_slice(b"mvhd");
        moov_body.extend(mvhd);
        let mut out = boxes(&[(b"ftyp", 16), (b"mdat", 32)]);
        out.extend_from_slice(&((moov_body.len() + 8) as u32).to_be_bytes());
        out.extend_from_slice(b"moov");
        out.extend(moov_body);
        out
    }

    fn duration_of(bytes: &[u8]) -> Option<f64> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.mp4");
        std::fs::write(&p, bytes).unwrap();
        movie_duration(&p).unwrap()
    }

    #[test]
    fn reads_the_length_from_the_index() {
        assert_eq!(duration_of(&with_mvhd(0, 1000, 2500)), Some(2.5));
        assert_eq!(duration_of(&with_mvhd(1, 90_000, 180_000)), Some(2.0));
        // Unknown or nonsense lengths, and files without an index.
        assert_eq!(duration_of(&with_mvhd(0, 1000, u64::from(u32::MAX))), None);
        assert_eq!(duration_of(&with_mvhd(0, 0, 2500)), None);
        assert_eq!(duration_of(&boxes(&[(b"ftyp", 16), (b"mdat", 32)])), None);
        assert_eq!(duration_of(b"<html>not a video</html>"), None);
        // A moov cut short: no panic, no length.
        let mut cut = with_mvhd(0, 1000, 2500);
        cut.truncate(cut.len() - 90);
        assert_eq!(duration_of(&cut), None);
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
