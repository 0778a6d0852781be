//! The egress filter against the real yt-dlp (and the ffmpeg it runs).
//!
//! Two media servers stand for the internet and the operator's network: 127.0.0.2 is in
//! `allow_networks` ("a public host"), 127.0.0.1 is refused as loopback ("the LAN / metadata
//! service"). yt-dlp only knows the proxy URL of one session, and runs with a cleared
//! environment (PATH and a scratch HOME only), so no `NO_PROXY` or config can route around it.
//!
//! In every attack the refused server serves the very file asked for, so had a request gone
//! through, the download would have succeeded: the refused server's empty request log, yt-dlp's
//! failure and the session's refusal are each things that would be otherwise.

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use support::bot::TestBot;
use support::fake_telegram::FakeTelegram;
use support::media_server::MediaServer;
use tgdl::job::JobState;
use tgdl::net::egress::{
    parse_networks, scrub_proxy_env, AddressPolicy, BoundedResolver, EgressProxy, EgressSession,
    ProxyLimits, Refusal, RefusedRange, ResolveLimits,
};
use tgdl::store::JobStore;
use tokio_util::sync::CancellationToken;

const ALLOWED: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const REFUSED: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// A hung yt-dlp fails the test instead of hanging it.
const YTDLP_DEADLINE: Duration = Duration::from_secs(120);

struct World {
    proxy: EgressProxy,
    /// 127.0.0.2, allowed: pages, playlists, redirects, and `tiny.mp4` / `seg.ts`.
    allowed: MediaServer,
    /// 127.0.0.1, refused: the same `tiny.mp4` and `seg.ts`.
    refused: MediaServer,
    _dirs: Vec<tempfile::TempDir>,
    out: tempfile::TempDir,
    home: tempfile::TempDir,
}

/// A one-segment MPEG-TS cut from the committed fixture, so HLS needs no new fixture file.
fn make_segment(dir: &Path) {
    let status = std::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y", "-i"])
        .arg(support::fixtures_dir().join("tiny.mp4"))
        .args(["-c", "copy", "-f", "mpegts"])
        .arg(dir.join("seg.ts"))
        .status()
        .expect("ffmpeg runs");
    assert!(status.success(), "ffmpeg could not make the HLS segment");
}

fn media_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        support::fixtures_dir().join("tiny.mp4"),
        dir.path().join("tiny.mp4"),
    )
    .unwrap();
    make_segment(dir.path());
    dir
}

fn playlist(segment_url: &str) -> String {
    format!(
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n\
         #EXT-X-PLAYLIST-TYPE:VOD\n#EXTINF:2.0,\n{segment_url}\n#EXT-X-ENDLIST\n"
    )
}

async fn world() -> World {
    let (allowed_dir, refused_dir) = (media_dir(), media_dir());
    let allowed = MediaServer::start_on(allowed_dir.path(), ALLOWED).await;
    let refused = MediaServer::start_on(refused_dir.path(), REFUSED).await;
    // Playlists on the allowed host: one whose segment stays there, one whose segment is
    // on the refused host.
    std::fs::write(allowed_dir.path().join("ok.m3u8"), playlist("seg.ts")).unwrap();
    std::fs::write(
        allowed_dir.path().join("evil.m3u8"),
        playlist(&refused.url("seg.ts")),
    )
    .unwrap();
    let policy = AddressPolicy::new(false, parse_networks(&["127.0.0.2/32".into()]).unwrap())
        .expect("interfaces");
    let resolver = BoundedResolver::system(ResolveLimits::default()).expect("resolver");
    let proxy = EgressProxy::start(
        policy,
        resolver,
        ProxyLimits::default(),
        &CancellationToken::new(),
    )
    .await
    .expect("proxy");
    World {
        proxy,
        allowed,
        refused,
        _dirs: vec![allowed_dir, refused_dir],
        out: tempfile::tempdir().unwrap(),
        home: tempfile::tempdir().unwrap(),
    }
}

impl World {
    /// Runs yt-dlp for `url` through `session`, as the worker will: an argument list, no
    /// shell, `--ignore-config`, the link after `--`, and an environment of PATH and HOME.
    async fn ytdlp(&self, session: &EgressSession, url: &str, extra: &[&str]) -> Output {
        let mut cmd = tokio::process::Command::new("yt-dlp");
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.home.path());
        self.run(cmd, session, url, extra).await
    }

    async fn run(
        &self,
        mut cmd: tokio::process::Command,
        session: &EgressSession,
        url: &str,
        extra: &[&str],
    ) -> Output {
        let template = self.out.path().join("%(id)s.%(ext)s");
        cmd.args(["--ignore-config", "--no-playlist", "--no-cache-dir"])
            .args(["--proxy", &session.proxy_url()])
            .args(["--socket-timeout", "20", "--retries", "0"])
            .args(["--fragment-retries", "0", "--extractor-retries", "0"])
            .args(["--abort-on-unavailable-fragments"])
            .arg("-o")
            .arg(&template)
            .args(extra)
            .arg("--")
            .arg(url)
            .kill_on_drop(true);
        tokio::time::timeout(YTDLP_DEADLINE, cmd.output())
            .await
            .expect("yt-dlp finished in time")
            .expect("yt-dlp runs")
    }

    /// Nothing downloaded: yt-dlp may leave its resume state (`.ytdl`) and an empty `.part`
    /// after a refused fragment (the worker's cleanup removes those), but no media bytes.
    fn assert_no_media(&self) {
        let media: Vec<PathBuf> = self
            .files()
            .into_iter()
            .filter(|f| f.extension().is_none_or(|e| e != "ytdl"))
            .filter(|f| std::fs::metadata(f).unwrap().len() > 0)
            .collect();
        assert!(media.is_empty(), "media written: {media:?}");
    }

    fn files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.out.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files
    }

    /// The refused server got no request, yt-dlp failed on the proxy's 403, nothing was
    /// written, and the session says what was refused.
    fn assert_refused(&self, session: &EgressSession, out: &Output) {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            self.refused.requests().is_empty(),
            "the refused server was reached: {:#?}\n{stderr}",
            self.refused.requests()
        );
        assert!(!out.status.success(), "yt-dlp succeeded:\n{stderr}");
        assert!(
            stderr.contains("403"),
            "not failed by the filter:\n{stderr}"
        );
        self.assert_no_media();
        let refusal = Refusal::Address {
            host: "127.0.0.1".into(),
            addr: REFUSED,
            range: RefusedRange::Loopback,
        };
        assert!(
            session.refusals().contains(&refusal),
            "{:?}",
            session.refusals()
        );
        // The first hop went through the proxy to the allowed host.
        assert!(
            session.connections().iter().all(|c| c.addr.ip() == ALLOWED),
            "{:?}",
            session.connections()
        );
        assert!(session.connection_count() >= 1);
    }
}

#[tokio::test]
async fn positive_control_a_file_on_the_allowed_host_downloads_byte_identical() {
    let w = world().await;
    let session = w.proxy.session();
    let out = w.ytdlp(&session, &w.allowed.url("tiny.mp4"), &[]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let files = w.files();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(
        std::fs::read(&files[0]).unwrap(),
        support::fixture_bytes("tiny.mp4")
    );
    assert!(session.refusals().is_empty(), "{:?}", session.refusals());
    // It came through the proxy: the proxy made the connections the server answered.
    assert!(session.connection_count() >= 1);
    assert!(!w.allowed.requests().is_empty());
    assert!(w
        .allowed
        .requests()
        .iter()
        .all(|r| r.header("connection") == Some("close")
            && r.header("proxy-authorization").is_none()));
}

#[tokio::test]
async fn a_redirect_to_the_refused_host_is_not_followed() {
    let w = world().await;
    let session = w.proxy.session();
    // The media server answers `/redirect/<rest>` with `Location: /<rest>`; a `<rest>` that
    // starts with `/` makes it the protocol-relative `//127.0.0.1:PORT/tiny.mp4`.
    let target = format!("redirect//{}/tiny.mp4", w.refused.addr());
    let out = w.ytdlp(&session, &w.allowed.url(&target), &[]).await;
    w.assert_refused(&session, &out);
    // The redirect itself was served, so yt-dlp did try to follow it.
    assert!(w.allowed.requests().iter().any(|r| r.status == 302));
}

#[tokio::test]
async fn an_hls_segment_on_the_refused_host_is_not_fetched() {
    let w = world().await;
    // Positive control first: the same playlist shape with its segment on the allowed host
    // downloads, so a failure below is the filter, not HLS.
    let session = w.proxy.session();
    let out = w.ytdlp(&session, &w.allowed.url("ok.m3u8"), &[]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!w.allowed.requests_to("seg.ts").is_empty());
    for f in w.files() {
        std::fs::remove_file(f).unwrap();
    }
    drop(session);

    let session = w.proxy.session();
    let out = w.ytdlp(&session, &w.allowed.url("evil.m3u8"), &[]).await;
    w.assert_refused(&session, &out);
}

#[tokio::test]
async fn an_hls_segment_on_the_refused_host_is_not_fetched_by_ffmpeg() {
    // yt-dlp hands HLS to ffmpeg with `--downloader ffmpeg` (and for some live streams);
    // ffmpeg then makes its own requests, given the proxy through `http_proxy`.
    let w = world().await;
    let ffmpeg = ["--downloader", "m3u8:ffmpeg"];
    let session = w.proxy.session();
    let out = w.ytdlp(&session, &w.allowed.url("ok.m3u8"), &ffmpeg).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // ffmpeg fetched the playlist and the segment itself, through the proxy (with
    // credentials it sent after the proxy's 407 challenge).
    let lavf = |r: &support::media_server::MediaRequest| {
        r.header("user-agent").is_some_and(|ua| ua.contains("Lavf")) || r.path.ends_with(".ts")
    };
    assert!(
        w.allowed.requests().iter().any(lavf),
        "{:#?}",
        w.allowed.requests()
    );
    for f in w.files() {
        std::fs::remove_file(f).unwrap();
    }
    drop(session);

    let session = w.proxy.session();
    let out = w
        .ytdlp(&session, &w.allowed.url("evil.m3u8"), &ffmpeg)
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        w.refused.requests().is_empty(),
        "ffmpeg reached the refused server: {:#?}\n{stderr}",
        w.refused.requests()
    );
    assert!(!out.status.success(), "{stderr}");
    w.assert_no_media();
    assert!(
        session.refusals().iter().any(|r| r.addr() == Some(REFUSED)),
        "{:?}\n{stderr}",
        session.refusals()
    );
}

#[tokio::test]
async fn a_video_tag_pointing_at_the_refused_host_is_not_fetched() {
    let w = world().await;
    let session = w.proxy.session();
    let html = format!(
        "<!DOCTYPE html>\n<html><head><title>page</title></head><body>\n\
         <video controls src=\"{}\"></video>\n</body></html>\n",
        w.refused.url("tiny.mp4")
    );
    w.allowed.add_page("evil", &html);
    let out = w.ytdlp(&session, &w.allowed.url("page/evil"), &[]).await;
    w.assert_refused(&session, &out);
    assert!(!w.allowed.requests_to("page/evil").is_empty());
}

#[tokio::test]
async fn a_link_straight_to_the_refused_host_is_refused() {
    let w = world().await;
    let session = w.proxy.session();
    let out = w.ytdlp(&session, &w.refused.url("tiny.mp4"), &[]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(w.refused.requests().is_empty(), "{stderr}");
    assert!(!out.status.success(), "{stderr}");
    assert_eq!(session.connection_count(), 0);
    assert_eq!(session.refusals()[0].code(), "loopback");
}

#[tokio::test]
async fn an_https_link_to_the_refused_host_is_refused_at_connect() {
    // https goes through CONNECT: the tunnel is refused before any TLS, so no certificate is
    // needed to show that the refused server is never reached.
    let w = world().await;
    let session = w.proxy.session();
    let url = format!("https://{}/tiny.mp4", w.refused.addr());
    let out = w.ytdlp(&session, &url, &[]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(w.refused.requests().is_empty(), "{stderr}");
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("403"), "{stderr}");
    assert_eq!(session.connection_count(), 0);
    assert_eq!(
        session.refusals(),
        [Refusal::Address {
            host: "127.0.0.1".into(),
            addr: REFUSED,
            range: RefusedRange::Loopback,
        }]
    );
}

#[tokio::test]
async fn an_inherited_no_proxy_cannot_send_ffmpeg_around_the_proxy() {
    // ffmpeg honours `no_proxy` (yt-dlp's own requests do not once `--proxy` is given). With
    // the environment inherited and `no_proxy=*` in it, only `scrub_proxy_env` stands between
    // ffmpeg and the refused host; without it this test fails with a request on that host.
    let w = world().await;
    let session = w.proxy.session();
    let mut cmd = tokio::process::Command::new("yt-dlp");
    cmd.env("HOME", w.home.path())
        .env("no_proxy", "*")
        .env("NO_PROXY", "*")
        .env("No_Proxy", "*");
    scrub_proxy_env(&mut cmd);
    let out = w
        .run(
            cmd,
            &session,
            &w.allowed.url("evil.m3u8"),
            &["--downloader", "m3u8:ffmpeg"],
        )
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        w.refused.requests().is_empty(),
        "ffmpeg went around the proxy: {stderr}"
    );
    assert!(!out.status.success(), "{stderr}");
    assert!(session.refusals().iter().any(|r| r.addr() == Some(REFUSED)));
}

/// The bot itself, with 127.0.0.2 allowed and 127.0.0.1 refused: a link on the
/// allowed host whose media lives on the refused one fails with the reason,
/// and the refused server never receives a request.
async fn bot_refuses(w: &World, path: &str) {
    let api = FakeTelegram::start().await;
    let mut bot = TestBot::start(
        &api,
        "[security]\nallow_private_networks = false\nallow_networks = [\"127.0.0.2/32\"]",
    )
    .await;
    let user = 4100;
    api.push_text(user, user as u64, &w.allowed.url(path), None);
    let msgs = api
        .wait_for_messages(
            user,
            |m| {
                m.iter().any(|m| {
                    m.text
                        .as_deref()
                        .is_some_and(|t| t.contains("private or local network address"))
                })
            },
            YTDLP_DEADLINE,
        )
        .await;
    assert!(!msgs.is_empty());
    assert!(
        w.refused.requests().is_empty(),
        "the refused server was reached: {:?}",
        w.refused.requests()
    );
    bot.stop().await.unwrap();
    let store = bot.store();
    let jobs = store.list_state(JobState::Failed, 10).unwrap();
    assert_eq!(jobs.len(), 1, "the job ended failed");
    assert_eq!(
        jobs[0].failure.as_ref().unwrap().code,
        "destination_refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_bot_refuses_a_redirect_to_a_refused_host() {
    let w = world().await;
    let target = format!("redirect//{}/tiny.mp4", w.refused.addr());
    bot_refuses(&w, &target).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_bot_refuses_an_hls_segment_on_a_refused_host() {
    let w = world().await;
    bot_refuses(&w, "evil.m3u8").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_bot_refuses_a_page_whose_video_is_on_a_refused_host() {
    let w = world().await;
    let html = format!(
        "<!DOCTYPE html>\n<html><head><title>page</title></head><body>\n\
         <video controls src=\"{}\"></video>\n</body></html>\n",
        w.refused.url("tiny.mp4")
    );
    w.allowed.add_page("evil", &html);
    bot_refuses(&w, "page/evil").await;
}
