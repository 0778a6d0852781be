//! One probe of a link before downloading it: is it a playlist (anything
//! yt-dlp reports as one, a web page with several media included), and what
//! are its items?
//!
//! `yt-dlp --flat-playlist -J` lists a playlist without extracting every
//! item. Direct media links (by extension) skip the probe: it costs one
//! yt-dlp start-up, and a file cannot be a playlist.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use super::process::DownloadError;

/// A playlist's items, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Playlist {
    pub title: Option<String>,
    pub items: Vec<PlaylistItem>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlaylistItem {
    pub url: String,
    pub title: Option<String>,
}

/// What one probe learned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Probed {
    pub playlist: Option<Playlist>,
    /// Video heights on offer (highest first) that fit under the upload
    /// limit as far as the sizes are known.
    pub heights: Vec<u32>,
}

#[derive(Deserialize)]
struct Info {
    #[serde(rename = "_type")]
    kind: Option<String>,
    title: Option<String>,
    #[serde(default)]
    entries: Vec<Option<Entry>>,
    #[serde(default)]
    formats: Vec<Format>,
}

#[derive(Deserialize)]
struct Format {
    height: Option<u32>,
    vcodec: Option<String>,
    filesize: Option<u64>,
    filesize_approx: Option<u64>,
}

#[derive(Deserialize)]
struct Entry {
    url: Option<String>,
    webpage_url: Option<String>,
    title: Option<String>,
}

const MEDIA_EXT: &[&str] = &[
    "mp4", "m4v", "mov", "webm", "mkv", "avi", "mp3", "m4a", "aac", "ogg", "opus", "flac", "wav",
];

/// Whether the link's path names a media file (no probe needed).
pub fn is_direct_media(url: &str) -> bool {
    url::Url::parse(url)
        .ok()
        .and_then(|u| {
            u.path()
                .rsplit('.')
                .next()
                .map(|e| MEDIA_EXT.contains(&e.to_ascii_lowercase().as_str()))
        })
        .unwrap_or(false)
}

/// Parse `-J` output: a playlist (two or more items), or a single media's
/// video heights under `limit` bytes.
pub fn parse_probe(json: &[u8], limit: Option<u64>) -> Probed {
    let Ok(info) = serde_json::from_slice::<Info>(json) else {
        return Probed::default();
    };
    let mut heights: Vec<u32> = info
        .formats
        .iter()
        .filter(|f| f.vcodec.as_deref() != Some("none"))
        .filter(|f| match (limit, f.filesize.or(f.filesize_approx)) {
            (Some(l), Some(size)) => size <= l,
            _ => true,
        })
        .filter_map(|f| f.height.filter(|h| *h > 0))
        .collect();
    heights.sort_unstable_by(|a, b| b.cmp(a));
    heights.dedup();
    Probed {
        playlist: playlist_of(info),
        heights,
    }
}

fn playlist_of(info: Info) -> Option<Playlist> {
    if info.kind.as_deref() != Some("playlist") {
        return None;
    }
    let items: Vec<PlaylistItem> = info
        .entries
        .into_iter()
        .flatten()
        .filter_map(|e| {
            Some(PlaylistItem {
                url: e.url.or(e.webpage_url)?,
                title: e.title,
            })
        })
        .collect();
    (items.len() >= 2).then_some(Playlist {
        title: info.title,
        items,
    })
}

/// Run the probe. An empty result for a probe that failed: the download
/// that follows reports the real error. `work_dir` (the job's folder, made
/// here) is its working directory, as for a download (see `process::command`).
pub async fn probe(
    ytdlp: &Path,
    url: &str,
    limit: Option<u64>,
    cancel: &CancellationToken,
    timeout: Duration,
    work_dir: &Path,
) -> Result<Probed, DownloadError> {
    tokio::fs::create_dir_all(work_dir)
        .await
        .map_err(DownloadError::Io)?;
    let mut cmd = super::process::command(ytdlp);
    cmd.current_dir(work_dir);
    cmd.args([
        "--ignore-config",
        "--flat-playlist",
        "-J",
        "--no-warnings",
        "--",
    ])
    .arg(url)
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    let mut child = cmd.spawn().map_err(DownloadError::Spawn)?;
    let pgid = child.id().map(|p| p as i32);
    let mut stdout = child.stdout.take().expect("piped");
    let read = async {
        let mut buf = Vec::new();
        // Bounded: a page that lists thousands of formats is still a few MB.
        (&mut stdout).take(64 << 20).read_to_end(&mut buf).await?;
        child.wait().await.map(|status| (status, buf))
    };
    let kill = || {
        if let Some(pg) = pgid {
            // SAFETY: signalling a process group we created.
            unsafe {
                libc::killpg(pg, libc::SIGKILL);
            }
        }
    };
    tokio::select! {
        r = read => {
            let (status, buf) = r.map_err(DownloadError::Io)?;
            Ok(if status.success() { parse_probe(&buf, limit) } else { Probed::default() })
        }
        _ = cancel.cancelled() => { kill(); Err(DownloadError::Cancelled) }
        _ = tokio::time::sleep(timeout) => { kill(); Err(DownloadError::TimedOut) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_media_links_skip_the_probe() {
        assert!(is_direct_media("http://h/a/clip.MP4?x=1"));
        assert!(is_direct_media("https://h/song.m4a"));
        assert!(!is_direct_media("https://www.youtube.com/watch?v=x"));
        assert!(!is_direct_media("http://h/page.html"));
    }

    #[test]
    fn a_generic_page_with_three_videos_is_a_playlist() {
        let json = br#"{"_type":"playlist","title":"Three clips","entries":[
            {"url":"http://h/a.mp4","title":"Three clips (1)","webpage_url":"http://h/p"},
            {"url":"http://h/b.mp4","title":"Three clips (2)"},
            {"_type":"url","url":"https://www.youtube.com/watch?v=x","title":"yt"}]}"#;
        let p = parse_probe(json, None).playlist.unwrap();
        assert_eq!(p.title.as_deref(), Some("Three clips"));
        let urls: Vec<&str> = p.items.iter().map(|i| i.url.as_str()).collect();
        assert_eq!(
            urls,
            [
                "http://h/a.mp4",
                "http://h/b.mp4",
                "https://www.youtube.com/watch?v=x"
            ]
        );
    }

    #[test]
    fn heights_on_offer_fit_the_limit_highest_first() {
        let json = br#"{"_type":"video","formats":[
            {"height":1080,"vcodec":"avc1","filesize":900000000},
            {"height":720,"vcodec":"avc1","filesize_approx":40000000},
            {"height":480,"vcodec":"avc1"},
            {"height":480,"vcodec":"vp9"},
            {"vcodec":"none","filesize":1000}]}"#;
        let p = parse_probe(json, Some(50_000_000));
        assert_eq!(p.heights, vec![720, 480]);
        assert!(p.playlist.is_none());
        assert_eq!(parse_probe(b"garbage", None), Probed::default());
    }

    #[test]
    fn single_media_and_garbage_are_not_playlists() {
        assert_eq!(
            parse_probe(br#"{"_type":"video","url":"http://h/a.mp4"}"#, None).playlist,
            None
        );
        assert_eq!(
            parse_probe(
                br#"{"_type":"playlist","entries":[{"url":"http://h/a.mp4"}]}"#,
                None
            )
            .playlist,
            None
        );
        assert_eq!(parse_probe(b"not json", None).playlist, None);
    }
}
