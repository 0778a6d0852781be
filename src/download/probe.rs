//! One probe of a link before downloading it: is it a playlist (anything
//! yt-dlp reports as one, a web page with several media included), and what
//! are its items?
//!
//! `yt-dlp --flat-playlist -J --playlist-end N` lists at most `N` items of a
//! playlist without extracting them; the caller asks for one more than it
//! will take, so "there are more" is known without listing a whole channel.
//! Direct media links (by extension) skip the probe: it costs one yt-dlp
//! start-up, and a file cannot be a playlist.
//!
//! Both pipes are read to the end whatever their size (what is past
//! [`MAX_OUTPUT`] is read and dropped), so yt-dlp never blocks on a full
//! pipe. A probe that fails, times out or prints something that is not its
//! JSON is an error, classified from stderr like a download's.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::sync::CancellationToken;

use super::classify::{self, DownloadFailure, Reason};
use super::process::DownloadError;

/// Most bytes of the probe's JSON kept. Capped entries keep it far smaller
/// (a generic page's entry is about 3 KB, a flat channel entry less); more
/// than this is not a probe answer we can use.
pub const MAX_OUTPUT: usize = 64 << 20;

/// Bytes of the probe's stderr kept (the end, where yt-dlp's error is).
const STDERR_TAIL: usize = 64 << 10;

/// A playlist's items, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Playlist {
    pub title: Option<String>,
    /// The items listed, in order: at most what the probe asked for.
    pub items: Vec<PlaylistItem>,
    /// How many items the playlist has in all, when yt-dlp knows
    /// (`playlist_count`); it may be more than were listed.
    pub total: Option<u64>,
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
    playlist_count: Option<u64>,
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
/// video heights under `limit` bytes. Anything else is an error.
pub fn parse_probe(json: &[u8], limit: Option<u64>) -> Result<Probed, String> {
    let info = serde_json::from_slice::<Info>(json).map_err(|e| e.to_string())?;
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
    Ok(Probed {
        playlist: playlist_of(info),
        heights,
    })
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
        total: info.playlist_count,
        items,
    })
}

/// One probe run: which yt-dlp, which link, and its bounds.
#[derive(Clone, Copy, Debug)]
pub struct ProbeRun<'a> {
    pub ytdlp: &'a Path,
    pub url: &'a str,
    /// Video heights are offered only for formats under this many bytes.
    pub limit: Option<u64>,
    /// List at most this many items of a playlist.
    pub max_items: u32,
    pub timeout: Duration,
    /// The egress proxy session's URL (`--proxy`).
    pub proxy: Option<&'a str>,
    /// The working directory (the job's folder, made here), as for a
    /// download (see `process::command`).
    pub work_dir: &'a Path,
}

/// Run the probe.
pub async fn probe(run: ProbeRun<'_>, cancel: &CancellationToken) -> Result<Probed, DownloadError> {
    let ProbeRun {
        ytdlp,
        url,
        limit,
        max_items,
        timeout,
        proxy,
        work_dir,
    } = run;
    if cancel.is_cancelled() {
        return Err(DownloadError::Cancelled);
    }
    tokio::fs::create_dir_all(work_dir)
        .await
        .map_err(DownloadError::Io)?;
    let mut cmd = super::process::command(ytdlp);
    cmd.current_dir(work_dir);
    if let Some(p) = proxy {
        cmd.arg("--proxy").arg(p);
    }
    cmd.args([
        "--ignore-config",
        "--flat-playlist",
        "-J",
        "--no-warnings",
        "--playlist-end",
        &max_items.max(1).to_string(),
        "--",
    ])
    .arg(url)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .env("PYTHONUNBUFFERED", "1");
    let mut child = cmd.spawn().map_err(DownloadError::Spawn)?;
    let pgid = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .map(nix::unistd::Pid::from_raw);
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let ran = tokio::select! {
        r = async {
            let (out, err) = tokio::join!(read_capped(stdout, MAX_OUTPUT), read_tail(stderr, STDERR_TAIL));
            (out, err, child.wait().await)
        } => Ok(r),
        _ = cancel.cancelled() => Err(DownloadError::Cancelled),
        _ = tokio::time::sleep(timeout) => Err(DownloadError::TimedOut),
    };
    let ((out, overflow), err, status) = match ran {
        Ok(r) => r,
        Err(e) => {
            if let Some(pg) = pgid {
                // The process group we created; its leader is our child,
                // not yet reaped, so the id is not anyone else's.
                let _ = nix::sys::signal::killpg(pg, nix::sys::signal::Signal::SIGKILL);
            }
            let _ = child.wait().await;
            return Err(e);
        }
    };
    let status = status.map_err(DownloadError::Io)?;
    let err = String::from_utf8_lossy(&err);
    let lines = || err.lines();
    if !status.success() {
        let failure = classify::classify(lines());
        let text = classify::summary(lines()).unwrap_or_else(|| format!("yt-dlp probe {status}"));
        return Err(DownloadError::Failed(failure, text));
    }
    let unusable =
        |why: String| DownloadError::Failed(DownloadFailure::Retryable(Reason::Unknown), why);
    if overflow {
        return Err(unusable(format!(
            "the probe printed more than {MAX_OUTPUT} bytes"
        )));
    }
    parse_probe(&out, limit)
        .map_err(|e| unusable(format!("the probe's output is not its JSON: {e}")))
}

/// Everything `r` gives until its end, keeping the first `cap` bytes (and
/// whether there was more): reading on past the cap keeps the writer from
/// blocking on a full pipe.
async fn read_capped(mut r: impl AsyncRead + Unpin, cap: usize) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut overflow = false;
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => return (kept, overflow),
            Ok(n) => {
                let room = cap.saturating_sub(kept.len());
                kept.extend_from_slice(&chunk[..n.min(room)]);
                overflow |= n > room;
            }
        }
    }
}

/// The last `keep` bytes of everything `r` gives until its end.
async fn read_tail(mut r: impl AsyncRead + Unpin, keep: usize) -> Vec<u8> {
    let mut tail = Vec::new();
    let mut chunk = vec![0u8; 16 << 10];
    loop {
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => return tail,
            Ok(n) => {
                tail.extend_from_slice(&chunk[..n]);
                if tail.len() > 2 * keep {
                    tail.drain(..tail.len() - keep);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::download::process::tests::fake_ytdlp;

    async fn run(bin: &Path, max_items: u32, timeout: Duration) -> Result<Probed, DownloadError> {
        let dir = tempfile::tempdir().unwrap();
        let run = ProbeRun {
            ytdlp: bin,
            url: "https://example.test/p",
            limit: None,
            max_items,
            timeout,
            proxy: None,
            work_dir: dir.path(),
        };
        probe(run, &CancellationToken::new()).await
    }

    #[tokio::test]
    async fn the_probe_asks_for_at_most_max_items_and_reads_the_total() {
        let tmp = tempfile::tempdir().unwrap();
        let argv = tmp.path().join("argv");
        let bin = fake_ytdlp(
            tmp.path(),
            &format!(
                r#"echo "$@" > '{}'
echo '{{"_type":"playlist","title":"T","playlist_count":30,"entries":[{{"url":"http://h/1.mp4"}},{{"url":"http://h/2.mp4"}},{{"url":"http://h/3.mp4"}},{{"url":"http://h/4.mp4"}}]}}'"#,
                argv.display()
            ),
        );
        let p = run(&bin, 4, Duration::from_secs(30)).await.unwrap();
        let args = std::fs::read_to_string(&argv).unwrap();
        assert!(
            args.contains("--playlist-end 4 -- https://example.test/p"),
            "{args}"
        );
        let list = p.playlist.unwrap();
        assert_eq!((list.items.len(), list.total), (4, Some(30)));
    }

    #[tokio::test]
    async fn a_failing_probe_is_an_error_classified_from_stderr() {
        let tmp = tempfile::tempdir().unwrap();
        let line = "ERROR: [generic] p: Unable to download webpage: HTTP Error 404: Not Found";
        let bin = fake_ytdlp(tmp.path(), &format!("echo '{line}' >&2\nexit 1"));
        match run(&bin, 4, Duration::from_secs(30)).await {
            Err(DownloadError::Failed(f, text)) => {
                assert_eq!(f, DownloadFailure::Permanent(Reason::Http404));
                assert_eq!(text, line);
            }
            other => panic!("unexpected {other:?}"),
        }
        // Exit 0 with something that is not the JSON is no "single video".
        let bin = fake_ytdlp(tmp.path(), "echo 'half a {'");
        assert!(matches!(
            run(&bin, 4, Duration::from_secs(30)).await,
            Err(DownloadError::Failed(
                DownloadFailure::Retryable(Reason::Unknown),
                _
            ))
        ));
    }

    #[tokio::test]
    async fn a_probe_that_hangs_times_out_and_is_killed() {
        let tmp = tempfile::tempdir().unwrap();
        let pid = tmp.path().join("pid");
        let bin = fake_ytdlp(
            tmp.path(),
            &format!("echo $$ > '{}'\nexec sleep 300", pid.display()),
        );
        let started = std::time::Instant::now();
        let err = run(&bin, 4, Duration::from_secs(1)).await.unwrap_err();
        assert!(matches!(err, DownloadError::TimedOut), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
        let pid: i32 = std::fs::read_to_string(&pid)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // Reaped by the probe: the pid is gone, not a zombie.
        // No signal: only checks for existence.
        assert!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err(),
            "the probe's yt-dlp survived"
        );
    }

    #[tokio::test]
    async fn output_past_the_cap_is_drained_so_the_writer_never_blocks() {
        // Far more than a pipe holds: a reader that stopped at the cap would
        // leave the writer blocked and this test hanging.
        let (mut w, r) = tokio::io::duplex(4096);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for _ in 0..256 {
                w.write_all(&[b'x'; 4096]).await.unwrap();
            }
        });
        let (kept, overflow) = read_capped(r, 10_000).await;
        writer.await.unwrap();
        assert_eq!((kept.len(), overflow), (10_000, true));
        let (tx, rx) = tokio::io::duplex(4096);
        drop(tx);
        assert_eq!(read_capped(rx, 10).await, (Vec::new(), false));
    }

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
        let p = parse_probe(json, None).unwrap().playlist.unwrap();
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
        let p = parse_probe(json, Some(50_000_000)).unwrap();
        assert_eq!(p.heights, vec![720, 480]);
        assert!(p.playlist.is_none());
        assert!(parse_probe(b"garbage", None).is_err());
    }

    #[test]
    fn single_media_and_garbage_are_not_playlists() {
        assert_eq!(
            parse_probe(br#"{"_type":"video","url":"http://h/a.mp4"}"#, None)
                .unwrap()
                .playlist,
            None
        );
        assert_eq!(
            parse_probe(
                br#"{"_type":"playlist","entries":[{"url":"http://h/a.mp4"}]}"#,
                None
            )
            .unwrap()
            .playlist,
            None
        );
        assert!(parse_probe(b"not json", None).is_err());
    }
}
