//! The download module against the real yt-dlp (from PATH) and media served
//! over loopback by a small HTTP/1.1 server in this file.
//!
//! The media is generated at test time with ffmpeg, so nothing binary is
//! committed. yt-dlp's generic extractor handles direct media links, which is
//! all these tests need.

mod support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::binary::processes_mentioning;
use support::free_port;
use tgdl::download::{
    run_ytdlp, ytdlp_version, DownloadError, DownloadFailure, Progress, Reason, Want, YtDlpArgs,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Upper bound for any single wait, so a broken test fails instead of hanging.
const GUARD: Duration = Duration::from_secs(120);

/// A 4-second 320x240 H.264/AAC mp4, about 180 KB: big enough that a
/// cancelled download has written real bytes past Python's 8 KiB buffer.
fn make_clip(dir: &Path) -> Vec<u8> {
    let path = dir.join("clip.mp4");
    let status = std::process::Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-f", "lavfi", "-i"])
        .arg("testsrc2=size=320x240:rate=25")
        .args(["-f", "lavfi", "-i", "sine=frequency=440", "-t", "4"])
        .args([
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-shortest",
        ])
        .arg(&path)
        .status()
        .expect("ffmpeg must be installed for these tests");
    assert!(status.success(), "ffmpeg failed to make the fixture");
    std::fs::read(&path).unwrap()
}

/// One request as the server saw it.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    range: Option<String>,
}

struct MediaServer {
    base: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl MediaServer {
    /// The link to `path` (starting with `/`) on this server.
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// Routes:
/// - `/media/clip.mp4`: the clip at full speed, with `Range` support;
/// - `/slow/clip.mp4`: the same, throttled: 64 KiB at once, then 256 bytes
///   every 200 ms (minutes for the clip), so a test can act mid-download;
/// - `/page.html`: an HTML page without media (unsupported by yt-dlp);
/// - anything else: 404.
async fn serve(media: Vec<u8>) -> MediaServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let media = Arc::new(media);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let media = media.clone();
            let seen = seen2.clone();
            tokio::spawn(async move {
                // A client that goes away mid-response is normal here
                // (yt-dlp reads only the first bytes when probing).
                let _ = handle(stream, &media, &seen).await;
            });
        }
    });
    MediaServer { base, seen }
}

async fn handle(
    mut stream: TcpStream,
    media: &[u8],
    seen: &Mutex<Vec<Seen>>,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() > 16 * 1024 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_owned();
    let path = first.next().unwrap_or("").to_owned();
    let range = lines.find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("range")
            .then(|| value.trim().to_owned())
    });
    seen.lock().unwrap().push(Seen {
        path: path.clone(),
        range: range.clone(),
    });

    let (body, ctype, slow): (&[u8], &str, bool) = match path.as_str() {
        "/media/clip.mp4" => (media, "video/mp4", false),
        "/slow/clip.mp4" => (media, "video/mp4", true),
        "/page.html" => (
            b"<html><head><title>hi</title></head><body>no media</body></html>",
            "text/html",
            false,
        ),
        _ => {
            let msg = b"not found";
            let resp = format!(
                "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                msg.len()
            );
            stream.write_all(resp.as_bytes()).await?;
            return stream.write_all(msg).await;
        }
    };

    let total = body.len();
    let (status, start) = match range.as_deref().and_then(parse_range_start) {
        Some(start) if start >= total => {
            let resp = format!(
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{total}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            return stream.write_all(resp.as_bytes()).await;
        }
        Some(start) => ("206 Partial Content", start),
        None => ("200 OK", 0),
    };
    let part = &body[start..];
    let mut resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n",
        part.len()
    );
    if start > 0 {
        resp.push_str(&format!(
            "Content-Range: bytes {start}-{}/{total}\r\n",
            total - 1
        ));
    }
    resp.push_str("\r\n");
    stream.write_all(resp.as_bytes()).await?;
    if method == "HEAD" {
        return Ok(());
    }
    if !slow {
        return stream.write_all(part).await;
    }
    let (burst, rest) = part.split_at(part.len().min(64 * 1024));
    stream.write_all(burst).await?;
    for chunk in rest.chunks(256) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        stream.write_all(chunk).await?;
    }
    Ok(())
}

/// A fresh clip (see [`make_clip`]) made in `tmp` and a server serving it.
async fn serve_clip(tmp: &Path) -> (Vec<u8>, MediaServer) {
    let media = make_clip(tmp);
    let server = serve(media.clone()).await;
    (media, server)
}

/// The start of `bytes=START-` or `bytes=START-END` (the end is ignored:
/// yt-dlp asks for open-ended ranges when resuming).
fn parse_range_start(value: &str) -> Option<usize> {
    let spec = value.strip_prefix("bytes=")?;
    spec.split_once('-')?.0.trim().parse().ok()
}

/// Arguments for a job downloading `url` into `tmp/downloads`: ffmpeg
/// available, a 50 MiB upload limit.
fn ytdlp_args(tmp: &Path, url: String, want: Want) -> YtDlpArgs {
    let downloads = tmp.join("downloads");
    let mut a = YtDlpArgs::new("yt-dlp", url, &downloads, Uuid::now_v7(), want);
    a.has_ffmpeg = true;
    a.upload_limit = Some(50 * 1024 * 1024);
    a
}

async fn run(
    a: &YtDlpArgs,
) -> (
    Result<tgdl::download::DownloadOutput, DownloadError>,
    Vec<Progress>,
) {
    let mut seen = Vec::new();
    let res = tokio::time::timeout(
        GUARD,
        run_ytdlp(a, CancellationToken::new(), GUARD, |p| seen.push(p)),
    )
    .await
    .expect("yt-dlp run hung");
    (res, seen)
}

/// Runs `a`, which must fail with a classified failure; returns it and the
/// error line.
async fn failure_of(a: &YtDlpArgs) -> (DownloadFailure, String) {
    match run(a).await.0 {
        Err(DownloadError::Failed(f, line)) => (f, line),
        other => panic!("expected a classified failure, got {other:?}"),
    }
}

/// Pids of live processes whose command line mentions `needle` (the job's
/// unique output folder), i.e. the yt-dlp of that job and its children.
fn pids_mentioning(needle: &str) -> Vec<i32> {
    processes_mentioning(needle)
        .into_iter()
        .map(|(pid, _)| pid)
        .collect()
}

fn alive(pid: i32) -> bool {
    // No signal: only checks for existence.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd.flatten().map(|e| e.path()).collect(),
        Err(_) => Vec::new(),
    }
}

#[tokio::test]
async fn version_is_reported() {
    let v = ytdlp_version(Path::new("yt-dlp")).await.unwrap();
    // yt-dlp versions are dates: 2025.01.02 (optionally with a suffix).
    assert!(v.starts_with("20") && v.contains('.'), "odd version {v:?}");
}

#[tokio::test]
async fn video_is_downloaded_byte_identical_with_progress() {
    let tmp = tempfile::tempdir().unwrap();
    let (media, server) = serve_clip(tmp.path()).await;
    let mut a = ytdlp_args(tmp.path(), server.url("/media/clip.mp4"), Want::Video);
    a.max_height = Some(720);

    let (res, progress) = run(&a).await;
    let out = res.expect("download should succeed");

    assert_eq!(std::fs::read(&out.file_path).unwrap(), media);
    assert_eq!(out.filesize, media.len() as u64);
    assert_eq!(out.id.as_deref(), Some("clip"));
    assert_eq!(out.ext.as_deref(), Some("mp4"));
    // Named from the media id inside the job folder, nothing else.
    assert_eq!(
        out.file_path,
        std::fs::canonicalize(&a.output_dir)
            .unwrap()
            .join("clip.mp4")
    );
    let last = progress.last().expect("no progress reported");
    assert!(last.finished);
    assert_eq!(last.downloaded, media.len() as u64);
    assert_eq!(last.total, Some(media.len() as u64));
    assert!(progress.iter().any(|p| !p.finished && p.downloaded > 0));
}

#[tokio::test]
async fn audio_is_extracted_to_mp3() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, server) = serve_clip(tmp.path()).await;
    let a = ytdlp_args(tmp.path(), server.url("/media/clip.mp4"), Want::Audio);
    let (res, _) = run(&a).await;
    let out = res.expect("audio download should succeed");
    assert_eq!(out.ext.as_deref(), Some("mp3"));
    assert_eq!(out.file_path.extension().unwrap(), "mp3");
    let head = std::fs::read(&out.file_path).unwrap();
    // An MP3 from ffmpeg starts with an ID3 tag or an MPEG frame sync.
    assert!(
        head.starts_with(b"ID3") || (head[0] == 0xFF && head[1] & 0xE0 == 0xE0),
        "not an mp3"
    );
}

#[tokio::test]
async fn missing_media_is_a_permanent_404() {
    let tmp = tempfile::tempdir().unwrap();
    let server = serve(Vec::new()).await;
    let a = ytdlp_args(tmp.path(), server.url("/nope/missing.mp4"), Want::Video);
    let (f, line) = failure_of(&a).await;
    assert_eq!(f, DownloadFailure::Permanent(Reason::Http404), "{line}");
    assert!(line.starts_with("ERROR:"), "{line}");
}

#[tokio::test]
async fn a_page_without_media_is_unsupported() {
    let tmp = tempfile::tempdir().unwrap();
    let server = serve(Vec::new()).await;
    let a = ytdlp_args(tmp.path(), server.url("/page.html"), Want::Video);
    let (f, line) = failure_of(&a).await;
    assert_eq!(
        f,
        DownloadFailure::Permanent(Reason::UnsupportedUrl),
        "{line}"
    );
}

#[tokio::test]
async fn connection_refused_is_a_retryable_network_error() {
    let tmp = tempfile::tempdir().unwrap();
    // A port that was just free: bind, note it, close it.
    let port = free_port();
    let a = ytdlp_args(
        tmp.path(),
        format!("http://127.0.0.1:{port}/clip.mp4"),
        Want::Video,
    );
    let (f, line) = failure_of(&a).await;
    assert_eq!(f, DownloadFailure::Retryable(Reason::Network), "{line}");
}

#[tokio::test]
async fn option_looking_link_is_not_an_option() {
    let tmp = tempfile::tempdir().unwrap();
    let marker = tmp.path().join("pwned");
    let a = ytdlp_args(
        tmp.path(),
        format!("--exec=touch {}", marker.display()),
        Want::Video,
    );
    let (f, line) = failure_of(&a).await;
    // yt-dlp saw it as a (bad) URL, not as --exec.
    assert_eq!(
        f,
        DownloadFailure::Permanent(Reason::UnsupportedUrl),
        "{line}"
    );
    assert!(!marker.exists());
}

#[tokio::test]
async fn a_file_over_the_limit_is_too_large_and_not_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let (media, server) = serve_clip(tmp.path()).await;
    assert!(media.len() > 10_000);
    let mut a = ytdlp_args(tmp.path(), server.url("/media/clip.mp4"), Want::Video);
    a.upload_limit = Some(10_000);
    let (f, line) = failure_of(&a).await;
    assert_eq!(f, DownloadFailure::Permanent(Reason::TooLarge), "{line}");
    assert!(line.contains("max-filesize"), "{line}");
    assert!(
        !files_in(&a.output_dir)
            .iter()
            .any(|p| p.extension().is_some_and(|e| e == "mp4")),
        "a file over the limit was written"
    );
}

#[tokio::test]
async fn cancel_mid_download_kills_ytdlp_and_a_retry_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let (media, server) = serve_clip(tmp.path()).await;
    let mut a = ytdlp_args(tmp.path(), server.url("/slow/clip.mp4"), Want::Video);
    let needle = a.output_dir.to_string_lossy().into_owned();

    let cancel = CancellationToken::new();
    let (tx, mut rx) = mpsc::unbounded_channel::<Progress>();
    let task = tokio::spawn({
        let a = a.clone();
        let cancel = cancel.clone();
        async move { run_ytdlp(&a, cancel, GUARD, move |p| drop(tx.send(p))).await }
    });

    // Wait until the fast first 64 KiB are in (SIGKILL loses what yt-dlp
    // still buffers, at most 8 KiB) but the file is not complete.
    let total = media.len() as u64;
    let mid = tokio::time::timeout(GUARD, async {
        loop {
            let p = rx.recv().await.expect("run ended before any progress");
            if p.downloaded >= 32 * 1024 && p.downloaded < total {
                return p;
            }
        }
    })
    .await
    .expect("no mid-download progress");
    assert!(mid.percent.is_some_and(|x| x < 100.0));

    let pids = pids_mentioning(&needle);
    assert!(!pids.is_empty(), "yt-dlp process not found");
    assert!(pids.iter().all(|&p| alive(p)));

    cancel.cancel();
    let res = tokio::time::timeout(GUARD, task)
        .await
        .expect("cancel hung")
        .unwrap();
    assert!(matches!(res, Err(DownloadError::Cancelled)), "{res:?}");
    for pid in pids {
        assert!(!alive(pid), "pid {pid} survived the cancel");
    }
    // The partial download stays for the retry to continue.
    let part = a.output_dir.join("clip.mp4.part");
    let partial = std::fs::metadata(&part).expect("no .part file kept").len();
    assert!(partial > 0 && partial < total, "partial size {partial}");

    // The retry, at full speed, continues from the .part file.
    a.url = server.url("/media/clip.mp4");
    let (res, _) = run(&a).await;
    let out = res.expect("resumed download should succeed");
    assert_eq!(std::fs::read(&out.file_path).unwrap(), media);
    let resumed = server
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.path == "/media/clip.mp4")
        .filter_map(|s| s.range.as_deref().and_then(parse_range_start))
        .max();
    assert!(
        resumed.is_some_and(|start| start > 0),
        "no Range request: {:?}",
        server.seen.lock().unwrap()
    );
}

#[tokio::test]
async fn timeout_kills_ytdlp() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, server) = serve_clip(tmp.path()).await;
    let a = ytdlp_args(tmp.path(), server.url("/slow/clip.mp4"), Want::Video);
    let needle = a.output_dir.to_string_lossy().into_owned();
    // The slow route needs minutes; yt-dlp needs about 1 s to start.
    let started = Arc::new(Mutex::new(Vec::new()));
    let s2 = started.clone();
    let res = tokio::time::timeout(
        GUARD,
        run_ytdlp(
            &a,
            CancellationToken::new(),
            Duration::from_secs(8),
            move |_| {
                // Remember which processes belonged to the job while it ran.
                let mut s = s2.lock().unwrap();
                if s.is_empty() {
                    *s = pids_mentioning(&needle);
                }
            },
        ),
    )
    .await
    .expect("timeout did not fire");
    assert!(matches!(res, Err(DownloadError::TimedOut)), "{res:?}");
    let pids = started.lock().unwrap().clone();
    assert!(
        !pids.is_empty(),
        "yt-dlp never reported progress before the timeout"
    );
    for pid in pids {
        assert!(!alive(pid), "pid {pid} survived the timeout");
    }
}
