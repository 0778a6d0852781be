//! What ffprobe reads from the delivered file: the picture's shape as a
//! player shows it (rotation applied), the length, the track's own title and
//! artist, and whether it carries a cover picture.

use std::path::Path;
use std::time::Duration;

use serde_json::{Map, Value};

use super::tool::{common_args, file_arg, run};
use super::MediaError;

/// ffprobe reads headers only; a file it needs longer for is not one to
/// trust its answer about.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Probed {
    /// Of the first video stream that is not a cover picture, as displayed.
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// Seconds.
    pub duration: Option<f64>,
    /// The `title` and `artist` tags (of the container, else of a stream).
    pub title: Option<String>,
    pub artist: Option<String>,
    /// A stream marked as an attached picture (an audio file's cover).
    pub cover: bool,
}

/// Runs ffprobe on `file`, in `cwd` (the job's folder).
pub async fn probe(ffprobe: &Path, file: &Path, cwd: &Path) -> Result<Probed, MediaError> {
    let mut args = common_args(false);
    for a in ["-print_format", "json", "-show_format", "-show_streams"] {
        args.push(a.into());
    }
    args.push(file_arg(file));
    let out = run("ffprobe", ffprobe, args, cwd, PROBE_TIMEOUT).await?;
    parse(&out)
}

/// Parses ffprobe's `-print_format json -show_format -show_streams` output.
pub fn parse(json: &[u8]) -> Result<Probed, MediaError> {
    let root: Value = serde_json::from_slice(json).map_err(|e| MediaError::Parse(e.to_string()))?;
    let streams = root
        .get("streams")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let format = root.get("format");
    let is_video = |s: &&Value| s.get("codec_type").and_then(Value::as_str) == Some("video");
    let is_cover = |s: &Value| {
        s.get("disposition")
            .and_then(|d| d.get("attached_pic"))
            .and_then(Value::as_i64)
            == Some(1)
    };
    let picture = streams.iter().filter(is_video).find(|s| !is_cover(s));
    let (mut width, mut height) = match picture {
        Some(s) => (dimension(s, "width"), dimension(s, "height")),
        None => (None, None),
    };
    // A phone's portrait video is usually stored landscape with a rotation
    // for the player: Telegram needs the shape as shown.
    if picture.and_then(rotation).is_some_and(|r| r % 180 == 90) {
        std::mem::swap(&mut width, &mut height);
    }
    let duration = format
        .and_then(|f| seconds(f.get("duration")?))
        .or_else(|| picture.and_then(|s| seconds(s.get("duration")?)));
    let tag = |key: &str| {
        std::iter::once(format)
            .flatten()
            .chain(streams)
            .find_map(|v| tag(v.get("tags")?.as_object()?, key))
    };
    Ok(Probed {
        width,
        height,
        duration,
        title: tag("title"),
        artist: tag("artist"),
        cover: streams.iter().filter(is_video).any(is_cover),
    })
}

fn dimension(stream: &Value, key: &str) -> Option<u32> {
    stream
        .get(key)?
        .as_u64()
        .and_then(|v| u32::try_from(v).ok())
        .filter(|v| *v > 0)
}

/// ffprobe writes durations as decimal strings.
fn seconds(v: &Value) -> Option<f64> {
    let d = match v {
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        v => v.as_f64()?,
    };
    (d.is_finite() && d >= 0.0).then_some(d)
}

/// The display rotation in degrees, 0 to 359: the display matrix's side
/// data (ffmpeg 5 and later) or the older `rotate` tag.
fn rotation(stream: &Value) -> Option<i64> {
    let from_side_data = stream
        .get("side_data_list")
        .and_then(Value::as_array)
        .and_then(|l| l.iter().find_map(|d| d.get("rotation")?.as_f64()));
    let from_tag = || {
        stream
            .get("tags")?
            .get("rotate")?
            .as_str()?
            .trim()
            .parse::<f64>()
            .ok()
    };
    let r = from_side_data.or_else(from_tag)?;
    r.is_finite().then(|| (r.round() as i64).rem_euclid(360))
}

/// A tag by name, any case (`TITLE` in Vorbis comments, `title` in MP4),
/// when it has text.
fn tag(tags: &Map<String, Value>, key: &str) -> Option<String> {
    tags.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .and_then(|(_, v)| v.as_str())
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotated_phone_video_is_portrait() {
        let json = br#"{"streams":[
            {"codec_type":"video","width":1920,"height":1080,
             "side_data_list":[{"side_data_type":"Display Matrix","rotation":-90}]},
            {"codec_type":"audio","tags":{"TITLE":"stream title"}}],
            "format":{"duration":"12.480000"}}"#;
        let p = parse(json).unwrap();
        assert_eq!((p.width, p.height), (Some(1080), Some(1920)));
        assert_eq!(p.duration, Some(12.48));
        assert_eq!(p.title.as_deref(), Some("stream title"));
        assert!(!p.cover);
    }

    #[test]
    fn a_cover_picture_is_not_the_video() {
        let json = br#"{"streams":[
            {"codec_type":"audio"},
            {"codec_type":"video","width":600,"height":600,"disposition":{"attached_pic":1}}],
            "format":{"duration":"N/A","tags":{"title":"Song","artist":" Singer "}}}"#;
        let p = parse(json).unwrap();
        assert_eq!((p.width, p.height, p.duration), (None, None, None));
        assert_eq!(p.title.as_deref(), Some("Song"));
        assert_eq!(p.artist.as_deref(), Some("Singer"));
        assert!(p.cover);
    }

    #[test]
    fn the_old_rotate_tag_counts_and_garbage_is_an_error() {
        let json = br#"{"streams":[{"codec_type":"video","width":640,"height":360,
            "tags":{"rotate":"270"}}],"format":{}}"#;
        let p = parse(json).unwrap();
        assert_eq!((p.width, p.height), (Some(360), Some(640)));
        assert!(matches!(parse(b"not json"), Err(MediaError::Parse(_))));
        assert_eq!(parse(b"{}").unwrap(), Probed::default());
    }
}
