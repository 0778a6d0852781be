//! A loopback HTTP/1.1 media server for yt-dlp to download from.
//!
//! It is written directly on a TCP socket rather than with axum so that it can do what real
//! media hosts do to a downloader and a framework makes awkward: trickle bytes slowly, hold a
//! response indefinitely, and cut a connection in the middle of a body (so yt-dlp resumes with a
//! `Range` request). Every response has `Connection: close`.
//!
//! Routes (files are looked up in the served directory; `<file>` may contain `/`):
//! - `/<file>`: the file, with `Content-Type`, `Content-Length`, `Accept-Ranges: bytes` and
//!   single-range `Range` support (206 + `Content-Range`, 416 when unsatisfiable); HEAD too.
//! - `/slow/<file>`: the same, sent in chunks with a pause between them (server defaults from
//!   [`MediaServer::set_throttle`] and [`MediaServer::set_burst`], or per request
//!   `?burst=<bytes>&chunk=<bytes>&delay_ms=<ms>`).
//! - `/hold/<file>`: waits until [`MediaServer::hold_gate`] is released, then serves the file.
//! - `/drop/<file>`: a request starting at byte 0 gets the headers of a full answer and then
//!   only the first part of the body (half, or `?after=<bytes>`) before the connection is
//!   closed; requests with a `Range` past zero are served normally, so a resume succeeds.
//! - `/redirect/<file>`: 302 to `/<file>`.
//! - `/status/<code>`: an empty answer with that status (403, 429, 500, ...).
//! - `/page/<name>`: an HTML page registered with [`MediaServer::add_page`] or
//!   [`MediaServer::add_video_page`].
//! - `/endless/<name>`: `200` with the `Content-Type` of `<name>` and no `Content-Length`, then
//!   a body that never ends (`?chunk=<bytes>` every `?delay_ms=<ms>`, 64 KiB every 10 ms by
//!   default) until the client goes away: a live stream, or a server that does not say.
//! - `/hls/<n>/index.m3u8`: an HLS media playlist of `n` two-second segments
//!   `/hls/seg/<i>.ts?size=<bytes>` (`?size=` on the playlist, 256 KiB by default), each that
//!   many pseudo-random bytes (yt-dlp's HLS downloader does not look inside).
//! - `/404` and anything missing: 404.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{wait_until, Gate};

/// One request the server received.
#[derive(Clone, Debug)]
pub struct MediaRequest {
    pub seq: usize,
    pub method: String,
    /// The path without the query string, e.g. `/slow/tiny.mp4`.
    pub path: String,
    pub query: Option<String>,
    /// The raw `Range` header, e.g. `bytes=1000-`.
    pub range: Option<String>,
    /// All request headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    pub status: u16,
    /// Body bytes written so far.
    pub bytes_sent: u64,
    /// The whole answer was written (false while sending, or when the client went away or the
    /// route cut the connection).
    pub complete: bool,
}

impl MediaRequest {
    /// The first byte asked for by a `Range: bytes=<start>-...` header.
    pub fn range_start(&self) -> Option<u64> {
        let spec = self.range.as_deref()?.trim().strip_prefix("bytes=")?;
        spec.split(['-', ',']).next()?.trim().parse().ok()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct State {
    requests: Vec<MediaRequest>,
    burst: usize,
    chunk: usize,
    delay: Duration,
    hold: Gate,
    pages: HashMap<String, String>,
}

struct Inner {
    dir: PathBuf,
    state: Mutex<State>,
    changed: Notify,
    shutdown: CancellationToken,
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The media server; dropping it stops it.
pub struct MediaServer {
    inner: Arc<Inner>,
    addr: SocketAddr,
}

impl Drop for MediaServer {
    fn drop(&mut self) {
        self.inner.shutdown.cancel();
    }
}

impl MediaServer {
    /// Serves `dir` on a free loopback port.
    pub async fn start(dir: impl Into<PathBuf>) -> Self {
        Self::start_on(dir, std::net::Ipv4Addr::LOCALHOST.into()).await
    }

    /// Serves `dir` on a free port of `ip`, e.g. 127.0.0.2 (Linux routes all of 127/8 to
    /// the loopback interface), for tests that need two hosts an address policy tells apart.
    pub async fn start_on(dir: impl Into<PathBuf>, ip: std::net::IpAddr) -> Self {
        let listener = TcpListener::bind((ip, 0))
            .await
            .expect("media server: bind");
        let addr = listener.local_addr().expect("local_addr");
        let inner = Arc::new(Inner {
            dir: dir.into(),
            state: Mutex::new(State {
                requests: Vec::new(),
                burst: 0,
                // ~10 KB/s: the 19 KB tiny.mp4 takes about two seconds.
                chunk: 1024,
                delay: Duration::from_millis(100),
                hold: Gate::new(),
                pages: HashMap::new(),
            }),
            changed: Notify::new(),
            shutdown: CancellationToken::new(),
        });
        let server = inner.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = server.shutdown.cancelled() => return,
                };
                let Ok((stream, _)) = accepted else { continue };
                let conn = server.clone();
                tokio::spawn(async move {
                    let shutdown = conn.shutdown.clone();
                    tokio::select! {
                        _ = serve_connection(&conn, stream) => {}
                        _ = shutdown.cancelled() => {}
                    }
                });
            }
        });
        Self { inner, addr }
    }

    /// Serves the committed fixtures in `tests/fixtures`.
    pub async fn fixtures() -> Self {
        Self::start(super::fixtures_dir()).await
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The URL of `path` on this server, e.g. `url("slow/tiny.mp4")`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{}", self.addr, path.trim_start_matches('/'))
    }

    /// Default pace of `/slow/`: `chunk` bytes, then a pause of `delay`.
    pub fn set_throttle(&self, chunk: usize, delay: Duration) {
        let mut st = self.inner.lock();
        st.chunk = chunk.max(1);
        st.delay = delay;
    }

    /// Default number of bytes `/slow/` sends at once before pacing starts (0 by default).
    /// A burst larger than yt-dlp's read buffer makes a partial file appear on disk at once.
    pub fn set_burst(&self, bytes: usize) {
        self.inner.lock().burst = bytes;
    }

    /// The gate `/hold/` requests wait on. Release it to let them through.
    pub fn hold_gate(&self) -> Gate {
        self.inner.lock().hold.clone()
    }

    /// Replaces a released hold gate with a closed one, for a second hold in the same test.
    pub fn reset_hold(&self) -> Gate {
        let gate = Gate::new();
        self.inner.lock().hold = gate.clone();
        gate
    }

    /// Serves `html` at `/page/<name>`.
    pub fn add_page(&self, name: &str, html: &str) {
        self.inner
            .lock()
            .pages
            .insert(name.to_owned(), html.to_owned());
    }

    /// Serves at `/page/<name>` an HTML page with one `<video src>` per file (a playlist to
    /// yt-dlp's generic extractor). Returns the page URL.
    pub fn add_video_page(&self, name: &str, files: &[&str]) -> String {
        let videos: String = files
            .iter()
            .map(|f| {
                format!(
                    "  <video controls src=\"/{}\"></video>\n",
                    f.trim_start_matches('/')
                )
            })
            .collect();
        let html = format!(
            "<!DOCTYPE html>\n<html>\n<head><title>{name}</title></head>\n<body>\n{videos}</body>\n</html>\n"
        );
        self.add_page(name, &html);
        self.url(&format!("page/{name}"))
    }

    pub fn requests(&self) -> Vec<MediaRequest> {
        self.inner.lock().requests.clone()
    }

    /// Requests whose path (without query) is `path` (leading `/` optional).
    pub fn requests_to(&self, path: &str) -> Vec<MediaRequest> {
        let path = format!("/{}", path.trim_start_matches('/'));
        self.inner
            .lock()
            .requests
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// Waits until `pred` holds over the recorded requests and returns them; panics with the
    /// requests seen after `timeout`.
    pub async fn wait_for(
        &self,
        mut pred: impl FnMut(&[MediaRequest]) -> bool,
        timeout: Duration,
    ) -> Vec<MediaRequest> {
        let met = wait_until(
            &self.inner.changed,
            || pred(&self.inner.lock().requests),
            timeout,
        )
        .await;
        let requests = self.requests();
        assert!(
            met,
            "media server: condition not met within {timeout:?}; requests: {requests:#?}"
        );
        requests
    }

    /// Like [`MediaServer::wait_for`], but `None` instead of a panic on timeout.
    pub async fn try_wait_for(
        &self,
        pred: impl FnMut(&[MediaRequest]) -> bool,
        timeout: Duration,
    ) -> Option<Vec<MediaRequest>> {
        let (notify, lock) = (&self.inner.changed, || self.inner.lock());
        super::wait_over(notify, lock, |s| &s.requests, pred, timeout).await
    }
}

fn content_type_for(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "mp4" | "m4v" => "video/mp4",
        "webm" => "video/webm",
        "mkv" => "video/x-matroska",
        "m4a" => "audio/mp4",
        "mp3" => "audio/mpeg",
        "ogg" | "opus" => "audio/ogg",
        "html" | "htm" => "text/html; charset=utf-8",
        "json" => "application/json",
        "txt" | "md" => "text/plain; charset=utf-8",
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        _ => "application/octet-stream",
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        410 => "Gone",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

struct Head {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
}

async fn read_head(stream: &mut TcpStream) -> Option<Head> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let text = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = text.split("\r\n");
    let mut first = lines.next()?.split_whitespace();
    let method = first.next()?.to_owned();
    let target = first.next()?.to_owned();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Some(Head {
        method,
        target,
        headers,
    })
}

/// Parses a single `bytes=` range against a body of `len` bytes: `Ok(None)` for no (or an
/// unsupported multi-) range, `Err(())` when unsatisfiable.
#[allow(clippy::result_unit_err)]
pub fn parse_range(header: Option<&str>, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Ok(None);
    };
    if spec.contains(',') {
        // Multiple ranges are optional in HTTP; answering with the whole body is allowed.
        return Ok(None);
    }
    let (start, end) = spec.split_once('-').ok_or(())?;
    let (start, end) = (start.trim(), end.trim());
    let range = if start.is_empty() {
        let suffix: u64 = end.parse().map_err(|_| ())?;
        if suffix == 0 || len == 0 {
            return Err(());
        }
        (len.saturating_sub(suffix), len - 1)
    } else {
        let start: u64 = start.parse().map_err(|_| ())?;
        let end = if end.is_empty() {
            len.saturating_sub(1)
        } else {
            end.parse().map_err(|_| ())?
        };
        if start >= len || end < start {
            return Err(());
        }
        (start, end.min(len - 1))
    };
    Ok(Some(range))
}

enum Pace {
    Full,
    /// `burst` bytes at once, then `chunk` bytes after each `delay`.
    Slow {
        burst: usize,
        chunk: usize,
        delay: Duration,
    },
    /// Send this many body bytes (default: half), then close.
    CutAfter(Option<u64>),
}

fn query_param(query: Option<&str>, key: &str) -> Option<u64> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| v.parse().ok())
}

async fn serve_connection(inner: &Inner, mut stream: TcpStream) {
    let Some(head) = read_head(&mut stream).await else {
        return;
    };
    let (path, query) = match head.target.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
        None => (head.target.clone(), None),
    };
    let range = head
        .headers
        .iter()
        .find(|(k, _)| k == "range")
        .map(|(_, v)| v.clone());
    let seq = {
        let mut st = inner.lock();
        let seq = st.requests.len();
        st.requests.push(MediaRequest {
            seq,
            method: head.method.clone(),
            path: path.clone(),
            query: query.clone(),
            range: range.clone(),
            headers: head.headers.clone(),
            status: 0,
            bytes_sent: 0,
            complete: false,
        });
        seq
    };
    inner.changed.notify_waiters();

    let (status, sent, complete) = route(
        inner,
        &mut stream,
        &head,
        &path,
        query.as_deref(),
        range.as_deref(),
        seq,
    )
    .await;
    {
        let mut st = inner.lock();
        let r = &mut st.requests[seq];
        r.status = status;
        r.bytes_sent = sent;
        r.complete = complete;
    }
    inner.changed.notify_waiters();
    let _ = stream.shutdown().await;
}

/// Answers one request; returns (status, body bytes sent, whether the answer was complete).
async fn route(
    inner: &Inner,
    stream: &mut TcpStream,
    head: &Head,
    path: &str,
    query: Option<&str>,
    range: Option<&str>,
    seq: usize,
) -> (u16, u64, bool) {
    if head.method != "GET" && head.method != "HEAD" {
        return simple(stream, 405, "text/plain", b"method not allowed\n", head).await;
    }
    let set_status = |status: u16| {
        inner.lock().requests[seq].status = status;
        inner.changed.notify_waiters();
    };
    if path == "/404" {
        return simple(stream, 404, "text/plain", b"not found\n", head).await;
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let code: u16 = code.parse().unwrap_or(500);
        let body = format!("status {code}\n");
        return simple(stream, code, "text/plain", body.as_bytes(), head).await;
    }
    if let Some(rest) = path.strip_prefix("/redirect/") {
        let header = format!(
            "HTTP/1.1 302 Found\r\nLocation: /{rest}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let ok = stream.write_all(header.as_bytes()).await.is_ok();
        return (302, 0, ok);
    }
    if let Some(rest) = path
        .strip_prefix("/endless/")
        .or(path.strip_prefix("/hls/"))
    {
        return generated(inner, stream, head, path, rest, query, seq).await;
    }
    if let Some(name) = path.strip_prefix("/page/") {
        let page = inner.lock().pages.get(name).cloned();
        return match page {
            Some(html) => {
                simple(
                    stream,
                    200,
                    "text/html; charset=utf-8",
                    html.as_bytes(),
                    head,
                )
                .await
            }
            None => simple(stream, 404, "text/plain", b"no such page\n", head).await,
        };
    }

    let (file, pace) = if let Some(rest) = path.strip_prefix("/slow/") {
        let (burst, chunk, delay) = {
            let st = inner.lock();
            (st.burst, st.chunk, st.delay)
        };
        let burst = query_param(query, "burst").map_or(burst, |b| b as usize);
        let chunk = query_param(query, "chunk")
            .map(|c| c.max(1) as usize)
            .unwrap_or(chunk);
        let delay = query_param(query, "delay_ms")
            .map(Duration::from_millis)
            .unwrap_or(delay);
        (
            rest,
            Pace::Slow {
                burst,
                chunk,
                delay,
            },
        )
    } else if let Some(rest) = path.strip_prefix("/hold/") {
        let gate = inner.lock().hold.clone();
        set_status(0);
        if !gate.pass(&inner.shutdown).await {
            return (0, 0, false);
        }
        (rest, Pace::Full)
    } else if let Some(rest) = path.strip_prefix("/drop/") {
        (rest, Pace::CutAfter(query_param(query, "after")))
    } else {
        (path.trim_start_matches('/'), Pace::Full)
    };

    // Only plain relative names inside the served directory.
    if file.is_empty()
        || file
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return simple(stream, 404, "text/plain", b"not found\n", head).await;
    }
    let full_path = inner.dir.join(file);
    let Ok(body) = tokio::fs::read(&full_path).await else {
        return simple(stream, 404, "text/plain", b"not found\n", head).await;
    };
    let len = body.len() as u64;
    let content_type = content_type_for(&full_path);

    let (status, start, end) = match parse_range(range, len) {
        Ok(Some((s, e))) => (206, s, e + 1),
        Ok(None) => (200, 0, len),
        Err(()) => {
            let header = format!(
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let ok = stream.write_all(header.as_bytes()).await.is_ok();
            return (416, 0, ok);
        }
    };
    let mut header = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n",
        reason(status),
        end - start
    );
    if status == 206 {
        header.push_str(&format!(
            "Content-Range: bytes {start}-{}/{len}\r\n",
            end - 1
        ));
    }
    header.push_str("\r\n");
    set_status(status);
    if stream.write_all(header.as_bytes()).await.is_err() {
        return (status, 0, false);
    }
    if head.method == "HEAD" {
        return (status, 0, true);
    }

    let slice = &body[start as usize..end as usize];
    let mut sent: u64 = 0;
    match pace {
        Pace::Full => {
            if stream.write_all(slice).await.is_err() {
                return (status, 0, false);
            }
            sent = slice.len() as u64;
        }
        Pace::Slow {
            burst,
            chunk,
            delay,
        } => {
            let burst = burst.min(slice.len());
            let (head_part, rest) = slice.split_at(burst);
            let parts = std::iter::once(head_part)
                .filter(|p| !p.is_empty())
                .chain(rest.chunks(chunk));
            for (i, part) in parts.enumerate() {
                // Pacing is the point of this route: the delay is the behaviour under test,
                // not a stand-in for synchronisation.
                if i > 0 {
                    tokio::time::sleep(delay).await;
                }
                if stream.write_all(part).await.is_err() || stream.flush().await.is_err() {
                    return (status, sent, false);
                }
                sent += part.len() as u64;
                inner.lock().requests[seq].bytes_sent = sent;
                inner.changed.notify_waiters();
            }
        }
        Pace::CutAfter(after) => {
            // Cut only fresh downloads; a resume (`Range` past zero) is served in full.
            let n = match after {
                _ if start > 0 => slice.len(),
                Some(after) => (after as usize).min(slice.len()),
                None => (slice.len() / 2).max(1),
            };
            if stream.write_all(&slice[..n]).await.is_err() {
                return (status, 0, false);
            }
            sent = n as u64;
            if n < slice.len() {
                let _ = stream.flush().await;
                return (status, sent, false);
            }
        }
    }
    (status, sent, true)
}

/// A complete small answer.
async fn simple(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &[u8],
    head: &Head,
) -> (u16, u64, bool) {
    let header = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reason(status),
        body.len()
    );
    if stream.write_all(header.as_bytes()).await.is_err() {
        return (status, 0, false);
    }
    if head.method == "HEAD" {
        return (status, 0, true);
    }
    let ok = stream.write_all(body).await.is_ok();
    (status, if ok { body.len() as u64 } else { 0 }, ok)
}

/// Bytes that do not compress and do not repeat within a segment.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The generated routes: `/endless/<name>` and `/hls/...` (see the module docs). `rest` is the
/// path after the route's prefix.
async fn generated(
    inner: &Inner,
    stream: &mut TcpStream,
    head: &Head,
    path: &str,
    rest: &str,
    query: Option<&str>,
    seq: usize,
) -> (u16, u64, bool) {
    if path.starts_with("/hls/") {
        if let Some(n) = rest
            .strip_suffix("/index.m3u8")
            .and_then(|n| n.parse::<u64>().ok())
        {
            let size = query_param(query, "size").unwrap_or(256 * 1024);
            let mut list = String::from(
                "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n",
            );
            for i in 0..n {
                list.push_str(&format!("#EXTINF:2.0,\n/hls/seg/{i}.ts?size={size}\n"));
            }
            list.push_str("#EXT-X-ENDLIST\n");
            return simple(
                stream,
                200,
                "application/vnd.apple.mpegurl",
                list.as_bytes(),
                head,
            )
            .await;
        }
        if let Some(i) = rest
            .strip_prefix("seg/")
            .and_then(|s| s.strip_suffix(".ts"))
            .and_then(|i| i.parse::<u64>().ok())
        {
            let size = query_param(query, "size").unwrap_or(256 * 1024) as usize;
            return simple(stream, 200, "video/mp2t", &noise(size, i + 1), head).await;
        }
        return simple(stream, 404, "text/plain", b"not found\n", head).await;
    }
    // /endless/<name>
    let chunk = query_param(query, "chunk").unwrap_or(64 * 1024).max(1) as usize;
    let delay = Duration::from_millis(query_param(query, "delay_ms").unwrap_or(10));
    let header = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nConnection: close\r\n\r\n",
        content_type_for(Path::new(rest))
    );
    inner.lock().requests[seq].status = 200;
    inner.changed.notify_waiters();
    if stream.write_all(header.as_bytes()).await.is_err() {
        return (200, 0, false);
    }
    if head.method == "HEAD" {
        return (200, 0, true);
    }
    let mut sent: u64 = 0;
    for n in 1u64.. {
        let part = noise(chunk, n);
        if stream.write_all(&part).await.is_err() || stream.flush().await.is_err() {
            break;
        }
        sent += part.len() as u64;
        inner.lock().requests[seq].bytes_sent = sent;
        inner.changed.notify_waiters();
        // Pacing is the behaviour under test (a stream's rate), not synchronisation.
        tokio::time::sleep(delay).await;
    }
    // The client went away: an endless answer is never complete.
    (200, sent, false)
}
