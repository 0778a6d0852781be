//! The self-test a new yt-dlp must pass before jobs use it: probe a small
//! MP4 that the bot serves itself on loopback, and expect yt-dlp to describe
//! it. A release that cannot even read a plain file link is refused.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The same 18 KB clip the tests use: H.264 + AAC, one second.
const CLIP: &[u8] = include_bytes!("../../tests/fixtures/tiny.mp4");

/// Run `bin` on the clip; `Err` says why it failed.
pub async fn check(bin: &Path) -> Result<(), String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("cannot listen on loopback: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let server = tokio::spawn(serve(listener));
    let result = probe(bin, &format!("http://{addr}/tgdl-selftest.mp4")).await;
    server.abort();
    result
}

async fn probe(bin: &Path, url: &str) -> Result<(), String> {
    let mut cmd = super::process::command(bin);
    // Straight to our own server: no proxy from the environment.
    cmd.args([
        "--ignore-config",
        "--no-playlist",
        "--proxy",
        "",
        "-J",
        "--",
        url,
    ]);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .map_err(|_| "no answer within 60 s".to_string())?
        .map_err(|e| format!("cannot start it: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = super::classify::summary(err.lines())
            .unwrap_or_else(|| format!("exited with {}", out.status));
        return Err(last);
    }
    let info: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("its -J output is not JSON: {e}"))?;
    match info.get("ext").and_then(|e| e.as_str()) {
        Some("mp4") => Ok(()),
        other => Err(format!("it described the test clip as {other:?}, not mp4")),
    }
}

/// A minimal HTTP/1.1 server: the clip for every GET or HEAD.
async fn serve(listener: TcpListener) {
    while let Ok((mut conn, _)) = listener.accept().await {
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            let mut got = 0;
            // Read the request head (yt-dlp sends no body).
            while !buf[..got].windows(4).any(|w| w == b"\r\n\r\n") && got < buf.len() {
                match conn.read(&mut buf[got..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got += n,
                }
            }
            let head = buf[..got].starts_with(b"HEAD ");
            let header = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: video/mp4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                CLIP.len()
            );
            let _ = conn.write_all(header.as_bytes()).await;
            if !head {
                let _ = conn.write_all(CLIP).await;
            }
            let _ = conn.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::download::process::tests::fake_ytdlp;

    #[tokio::test]
    async fn a_yt_dlp_that_cannot_read_the_clip_fails() {
        let tmp = tempfile::tempdir().unwrap();
        let bad = fake_ytdlp(
            tmp.path(),
            "echo 'ERROR: [generic] Unable to extract title' >&2\nexit 1",
        );
        let err = check(&bad).await.unwrap_err();
        assert!(err.contains("Unable to extract"), "{err}");
        let wrong = fake_ytdlp(tmp.path(), "echo '{\"ext\": \"html\"}'");
        assert!(check(&wrong).await.unwrap_err().contains("html"));
    }

    #[tokio::test]
    async fn the_real_yt_dlp_passes() {
        let bin = crate::download::install::find_on_path("yt-dlp").expect("yt-dlp on PATH");
        check(&bin).await.unwrap();
    }
}
