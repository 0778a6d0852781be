//! Parsing what yt-dlp prints on stdout: our prefixed progress and meta lines,
//! and the one plain-text notice that matters (max-filesize).
//!
//! Everything else on stdout is ignored, so the parsers return `None` for any
//! line that is not ours rather than failing.

use std::path::PathBuf;

use serde_json::{Map, Value};

use super::args::{META_PREFIX, PROGRESS_PREFIX};

/// One progress report of the file being downloaded.
///
/// A job may download more than one file (video then audio before a merge);
/// the counters start again for each.
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    pub downloaded: u64,
    /// Exact total, or yt-dlp's estimate when only that is known (see
    /// `total_is_estimate`).
    pub total: Option<u64>,
    pub total_is_estimate: bool,
    /// Bytes per second.
    pub speed: Option<f64>,
    /// Seconds left.
    pub eta: Option<u64>,
    /// 0.0 to 100.0.
    pub percent: Option<f64>,
    /// yt-dlp reported this file complete.
    pub finished: bool,
}

/// What yt-dlp knows about the final file, from the `after_move` print.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MediaMeta {
    pub id: Option<String>,
    pub title: Option<String>,
    pub ext: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// Seconds.
    pub duration: Option<f64>,
    pub filesize: Option<u64>,
    pub filepath: Option<PathBuf>,
    /// The site's track metadata (music sites), when it has any.
    pub track: Option<String>,
    pub artist: Option<String>,
    pub uploader: Option<String>,
}

/// A number from the template, or `None` for yt-dlp's placeholders (`NA`,
/// `None`) and anything else that is not a finite, non-negative number.
fn number(token: &str) -> Option<f64> {
    sane(token.parse().ok()?)
}

fn sane(v: f64) -> Option<f64> {
    (v.is_finite() && v >= 0.0).then_some(v)
}

/// Parses a line printed through our `--progress-template`.
pub fn parse_progress(line: &str) -> Option<Progress> {
    let rest = line.trim().strip_prefix(PROGRESS_PREFIX.trim_end())?;
    // Require the separator so "tgdl-progressive" is not ours.
    if !rest.starts_with([' ', '\t']) {
        return None;
    }
    let mut fields = rest.split_whitespace();
    let status = fields.next()?;
    let downloaded = number(fields.next()?);
    let total_bytes = number(fields.next().unwrap_or("NA"));
    let estimate = number(fields.next().unwrap_or("NA"));
    let speed = number(fields.next().unwrap_or("NA"));
    let eta = number(fields.next().unwrap_or("NA"));
    let percent = number(fields.next().unwrap_or("NA")).map(|p| p.min(100.0));

    let finished = status == "finished";
    let (total, total_is_estimate) = match (total_bytes, estimate) {
        (Some(t), _) => (Some(t as u64), false),
        (None, Some(e)) => (Some(e as u64), true),
        (None, None) => (None, false),
    };
    // yt-dlp leaves downloaded_bytes out of some "finished" reports (e.g. a
    // file already on disk); the total is then what we have.
    let downloaded = match downloaded {
        Some(d) => d as u64,
        None if finished => total?,
        None => return None,
    };
    let percent = percent.or_else(|| {
        total
            .filter(|&t| t > 0)
            .map(|t| (downloaded as f64 * 100.0 / t as f64).min(100.0))
    });
    Some(Progress {
        downloaded,
        total,
        total_is_estimate,
        speed,
        eta: eta.map(|e| e as u64),
        percent,
        finished,
    })
}

fn json_u64(map: &Map<String, Value>, key: &str) -> Option<u64> {
    let v = map.get(key)?;
    v.as_u64()
        .or_else(|| v.as_f64().and_then(sane).map(|f| f.round() as u64))
}

fn json_str(map: &Map<String, Value>, key: &str) -> Option<String> {
    map.get(key)?.as_str().map(str::to_owned)
}

/// Parses the `after_move` meta line. Unknown or odd-typed fields become
/// `None` rather than failing the whole line: only the path is essential, and
/// the caller checks for it.
pub fn parse_meta(line: &str) -> Option<MediaMeta> {
    let rest = line.trim().strip_prefix(META_PREFIX.trim_end())?;
    let json = rest.strip_prefix([' ', '\t'])?;
    let map = match serde_json::from_str::<Value>(json.trim()).ok()? {
        Value::Object(map) => map,
        _ => return None,
    };
    Some(MediaMeta {
        id: json_str(&map, "id"),
        title: json_str(&map, "title"),
        ext: json_str(&map, "ext"),
        width: json_u64(&map, "width").and_then(|w| u32::try_from(w).ok()),
        height: json_u64(&map, "height").and_then(|h| u32::try_from(h).ok()),
        duration: map.get("duration").and_then(Value::as_f64).and_then(sane),
        filesize: json_u64(&map, "filesize"),
        filepath: json_str(&map, "filepath").map(PathBuf::from),
        track: json_str(&map, "track"),
        artist: json_str(&map, "artist"),
        uploader: json_str(&map, "uploader"),
    })
}

/// Sizes from yt-dlp's stdout notice that it refused a file over
/// `--max-filesize`: `(file size, limit)`.
///
/// yt-dlp prints this notice (to stdout, not stderr), skips the file and still
/// exits with status 0, so a run can "succeed" without producing anything.
pub fn parse_max_filesize_abort(line: &str) -> Option<(u64, u64)> {
    // Real line: "\r[download] File is larger than max-filesize (26526 bytes > 10000 bytes). Aborting."
    let rest = line
        .trim_matches(|c: char| c.is_whitespace() || c == '\r')
        .strip_prefix("[download] File is larger than max-filesize (")?;
    let (size, rest) = rest.split_once(" bytes > ")?;
    let (limit, _) = rest.split_once(" bytes)")?;
    Some((size.trim().parse().ok()?, limit.trim().parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from yt-dlp 2026.10.26 downloading a 26526-byte mp4 from a
    // loopback server with our exact template.
    const REAL: [&str; 6] = [
        "tgdl-progress downloading 1024 26526 NA NA NA 3.860363417024806",
        "tgdl-progress downloading 3072 26526 NA 2742051.9021068313 0 11.581090251074418",
        "tgdl-progress downloading 7168 26526 NA 3783159.817792878 0 27.02254391917364",
        "tgdl-progress downloading 15360 26526 NA 5764540.930565498 0 57.905451255372085",
        "tgdl-progress downloading 26526 26526 NA 7620418.349589041 0 100.0",
        "tgdl-progress finished 26526 26526 NA 3697388.1859692265 NA 100.0",
    ];

    #[test]
    fn parses_real_progress_lines() {
        let all: Vec<Progress> = REAL.iter().map(|l| parse_progress(l).unwrap()).collect();
        assert_eq!(
            all[0],
            Progress {
                downloaded: 1024,
                total: Some(26526),
                total_is_estimate: false,
                speed: None,
                eta: None,
                percent: Some(3.860363417024806),
                finished: false,
            }
        );
        assert_eq!(all[1].speed, Some(2742051.9021068313));
        assert_eq!(all[1].eta, Some(0));
        assert!(all.windows(2).all(|w| w[0].downloaded <= w[1].downloaded));
        assert!(all[5].finished && !all[4].finished);
        assert_eq!(all[5].percent, Some(100.0));
    }

    #[test]
    fn estimate_is_used_when_total_is_unknown() {
        let p = parse_progress("tgdl-progress downloading 500 NA 2000.0 100.5 15 25.0").unwrap();
        assert_eq!(p.total, Some(2000));
        assert!(p.total_is_estimate);
        assert_eq!(p.eta, Some(15));
    }

    #[test]
    fn unknown_everything_but_bytes() {
        let p = parse_progress("tgdl-progress downloading 4096 NA NA NA NA NA").unwrap();
        assert_eq!(p.downloaded, 4096);
        assert_eq!(
            (p.total, p.speed, p.eta, p.percent),
            (None, None, None, None)
        );
        let p = parse_progress("tgdl-progress downloading 4096 None None None None None").unwrap();
        assert_eq!(p.total, None);
    }

    #[test]
    fn percent_is_computed_when_missing() {
        let p = parse_progress("tgdl-progress downloading 250 1000 NA NA NA NA").unwrap();
        assert_eq!(p.percent, Some(25.0));
    }

    #[test]
    fn finished_without_downloaded_bytes_uses_the_total() {
        let p = parse_progress("tgdl-progress finished NA 26526 NA NA NA 100.0").unwrap();
        assert_eq!(p.downloaded, 26526);
        assert!(p.finished);
        assert_eq!(
            parse_progress("tgdl-progress downloading NA 10 NA NA NA NA"),
            None
        );
    }

    #[test]
    fn other_lines_are_not_progress() {
        for line in [
            "[download]  57.9% of   25.90KiB at   12.87MiB/s ETA 00:00",
            "[download] Destination: /tmp/x/clip.mp4",
            "tgdl-progressive downloading 1 2 3 4 5 6",
            "tgdl-meta {\"id\": \"x\"}",
            "",
            "tgdl-progress",
        ] {
            assert_eq!(parse_progress(line), None, "{line:?}");
        }
    }

    #[test]
    fn parses_real_meta_line() {
        let m = parse_meta(
            r#"tgdl-meta {"id": "clip", "title": "clip", "ext": "mp4", "filepath": "/tmp/ytx/out/clip.mp4"}"#,
        )
        .unwrap();
        assert_eq!(m.id.as_deref(), Some("clip"));
        assert_eq!(m.ext.as_deref(), Some("mp4"));
        assert_eq!(m.filepath, Some(PathBuf::from("/tmp/ytx/out/clip.mp4")));
        assert_eq!((m.width, m.height, m.duration), (None, None, None));
        assert_eq!((m.track, m.artist, m.uploader), (None, None, None));
    }

    #[test]
    fn meta_carries_track_artist_and_uploader() {
        let m = parse_meta(
            r#"tgdl-meta {"id": "a", "track": "Song", "artist": "Singer", "uploader": "Channel", "filepath": "/d/j/a.mp3"}"#,
        )
        .unwrap();
        assert_eq!(m.track.as_deref(), Some("Song"));
        assert_eq!(m.artist.as_deref(), Some("Singer"));
        assert_eq!(m.uploader.as_deref(), Some("Channel"));
    }

    #[test]
    fn meta_with_escaped_title_and_numbers() {
        let m = parse_meta(
            r#"tgdl-meta {"id": "dQw4w9WgXcQ", "title": "Line\nbreak \u00e9 \"q\"", "ext": "mp4", "width": 1280, "height": 720.0, "duration": 212.5, "filesize": 11534336, "filepath": "/d/j/dQw4w9WgXcQ.mp4"}"#,
        )
        .unwrap();
        assert_eq!(m.title.as_deref(), Some("Line\nbreak é \"q\""));
        assert_eq!((m.width, m.height), (Some(1280), Some(720)));
        assert_eq!(m.duration, Some(212.5));
        assert_eq!(m.filesize, Some(11534336));
    }

    #[test]
    fn broken_meta_is_none() {
        assert_eq!(parse_meta("tgdl-meta {not json"), None);
        assert_eq!(parse_meta("tgdl-meta [1,2]"), None);
        assert_eq!(parse_meta("[info] tgdl-meta {}"), None);
    }

    #[test]
    fn recognises_the_real_max_filesize_notice() {
        let line =
            "\r[download] File is larger than max-filesize (26526 bytes > 10000 bytes). Aborting.";
        assert_eq!(parse_max_filesize_abort(line), Some((26526, 10000)));
        assert_eq!(
            parse_max_filesize_abort(
                "[download] File is smaller than min-filesize (1 bytes < 2 bytes). Aborting."
            ),
            None
        );
    }
}
