//! Test harness shared by the integration tests: an in-process fake of the Telegram Bot API
//! ([`fake_telegram::FakeTelegram`]) and a loopback media server ([`media_server::MediaServer`])
//! serving the committed fixtures in `tests/fixtures`.
//!
//! Both servers run as tasks on the test's tokio runtime. A test that blocks its thread (for
//! example `std::process::Command::output()` on the bot binary) must use
//! `#[tokio::test(flavor = "multi_thread")]` or `tokio::process`, otherwise the servers cannot
//! answer while the thread is blocked.
//!
//! Every wait in here is on a condition signalled through [`tokio::sync::Notify`], never a fixed
//! sleep, so tests are as fast as the code under test allows and fail with a clear message at
//! their own timeout.

// Each test binary includes this module with `mod support;` and uses a different subset of it.
#![allow(dead_code)]

pub mod binary;
pub mod bot;
pub mod fake_telegram;
pub mod fs;
pub mod media_server;
pub mod pg;
pub mod service;
pub mod standin;
pub mod store_fixture;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// The directory holding the committed media fixtures (`tiny.mp4`, `tiny.m4a`, `blob.bin`).
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
}

/// The yt-dlp every test uses: the one on PATH, which `./scripts/test` puts
/// there (one pinned install per machine). Tests name it explicitly instead
/// of `ytdlp = "auto"`, so no test ever installs its own copy.
pub fn ytdlp() -> PathBuf {
    tgdl::download::install::find_on_path("yt-dlp")
        .expect("yt-dlp on PATH: run the tests with ./scripts/test, which installs it")
}

/// The bytes of one fixture file; panics with the path when it is missing.
pub fn fixture_bytes(name: &str) -> Vec<u8> {
    let path = fixtures_dir().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading fixture {}: {e}", path.display()))
}

/// A loopback port that was free a moment ago, for servers that must be addressed before they
/// listen (a bot started while the API is still down).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// Waits until `check` returns true, re-checking each time `notify` fires. Returns whether the
/// condition held before `timeout`.
///
/// The `Notified` future is enabled before the check so a notification sent between the check
/// and the await is not lost.
pub async fn wait_until(
    notify: &Notify,
    mut check: impl FnMut() -> bool,
    timeout: Duration,
) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if check() {
            return true;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return check();
        }
    }
}

/// Waits until `pred` holds over the list `items` picks from the state behind
/// `lock`, re-checking at each `notify`; the list as it was then, or `None`
/// on timeout. The fake servers' `try_wait_for` are this.
pub async fn wait_over<'a, S: 'a, T: Clone>(
    notify: &Notify,
    lock: impl Fn() -> std::sync::MutexGuard<'a, S>,
    items: impl Fn(&S) -> &[T],
    mut pred: impl FnMut(&[T]) -> bool,
    timeout: Duration,
) -> Option<Vec<T>> {
    let met = wait_until(notify, || pred(items(&lock())), timeout).await;
    met.then(|| items(&lock()).to_vec())
}

/// Every button of an inline keyboard (`reply_markup`, as an object or as the
/// JSON text a multipart call carries): its label and callback data.
pub fn keyboard_buttons(markup: &serde_json::Value) -> Vec<(String, String)> {
    let markup = match markup {
        serde_json::Value::String(s) => serde_json::from_str(s).unwrap_or_default(),
        v => v.clone(),
    };
    markup
        .get("inline_keyboard")
        .and_then(|k| k.as_array())
        .into_iter()
        .flatten()
        .flat_map(|row| row.as_array().cloned().unwrap_or_default())
        .filter_map(|b| {
            Some((
                b["text"].as_str()?.to_string(),
                b["callback_data"].as_str()?.to_string(),
            ))
        })
        .collect()
}

/// A barrier that requests of the fake servers can be parked on ("hold this upload", "hold this
/// download") until the test releases it. Cloning shares the gate.
#[derive(Clone, Default)]
pub struct Gate {
    inner: Arc<GateInner>,
}

#[derive(Default)]
struct GateInner {
    state: Mutex<GateState>,
    notify: Notify,
}

#[derive(Default)]
struct GateState {
    released: bool,
    /// Requests that arrived at the gate so far (including those already let through).
    arrived: usize,
    /// Requests parked at the gate right now.
    waiting: usize,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.inner.state.lock().unwrap();
        f.debug_struct("Gate")
            .field("released", &st.released)
            .field("arrived", &st.arrived)
            .field("waiting", &st.waiting)
            .finish()
    }
}

impl Gate {
    pub fn new() -> Self {
        Self::default()
    }

    /// Lets every parked and future request through.
    pub fn release(&self) {
        self.inner.state.lock().unwrap().released = true;
        self.inner.notify.notify_waiters();
    }

    pub fn is_released(&self) -> bool {
        self.inner.state.lock().unwrap().released
    }

    /// How many requests have reached the gate so far.
    pub fn arrived(&self) -> usize {
        self.inner.state.lock().unwrap().arrived
    }

    /// How many requests are parked at the gate now (a client that disconnects leaves).
    pub fn waiting(&self) -> usize {
        self.inner.state.lock().unwrap().waiting
    }

    /// Waits until at least `n` requests have reached the gate.
    pub async fn wait_arrived(&self, n: usize, timeout: Duration) -> bool {
        wait_until(&self.inner.notify, || self.arrived() >= n, timeout).await
    }

    /// Waits until no request is parked at the gate, e.g. because the client was killed.
    pub async fn wait_empty(&self, timeout: Duration) -> bool {
        wait_until(&self.inner.notify, || self.waiting() == 0, timeout).await
    }

    /// Parks the calling request until [`Gate::release`] or until `shutdown` fires. Returns false
    /// when it was cut short by shutdown.
    pub(crate) async fn pass(&self, shutdown: &CancellationToken) -> bool {
        {
            let mut st = self.inner.state.lock().unwrap();
            st.arrived += 1;
            st.waiting += 1;
        }
        self.inner.notify.notify_waiters();
        // Decrements `waiting` even when the request future is dropped (client went away).
        struct Leave<'a>(&'a Gate);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                self.0.inner.state.lock().unwrap().waiting -= 1;
                self.0.inner.notify.notify_waiters();
            }
        }
        let _leave = Leave(self);
        loop {
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_released() {
                return true;
            }
            tokio::select! {
                _ = notified => {}
                _ = shutdown.cancelled() => return false,
            }
        }
    }
}

/// A TCP listener whose accepted connections can all be severed at once, so "the API went away"
/// means refused and reset connections, not a server that still answers on pooled keep-alive
/// connections.
pub(crate) struct KillableListener {
    pub(crate) inner: TcpListener,
    pub(crate) shutdown: CancellationToken,
    /// Connections accepted and not yet closed.
    pub(crate) open: Arc<OpenConnections>,
}

/// How many accepted connections are still open, and a wake-up when one
/// closes: once a killed client's connections are closed, the server has
/// read every byte it sent.
#[derive(Default)]
pub(crate) struct OpenConnections {
    count: std::sync::atomic::AtomicUsize,
    closed: Notify,
}

impl OpenConnections {
    pub(crate) fn count(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until no accepted connection is open; whether it happened in time.
    pub(crate) async fn wait_all_closed(&self, timeout: Duration) -> bool {
        wait_until(&self.closed, || self.count() == 0, timeout).await
    }
}

/// Counts one open connection while it lives.
struct OpenGuard(Arc<OpenConnections>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0
            .count
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        self.0.closed.notify_waiters();
    }
}

impl axum::serve::Listener for KillableListener {
    type Io = KillableStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    let cancelled = Box::pin(self.shutdown.clone().cancelled_owned());
                    self.open
                        .count
                        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    return (
                        KillableStream {
                            inner: stream,
                            cancelled,
                            _open: OpenGuard(self.open.clone()),
                        },
                        addr,
                    );
                }
                // Accept errors (EMFILE, aborted handshakes) are transient for a test server.
                Err(_) => tokio::task::yield_now().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection that fails every read and write once its server's shutdown token fires; hyper
/// then drops it, which closes the socket under the client.
pub(crate) struct KillableStream {
    inner: TcpStream,
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
    _open: OpenGuard,
}

impl KillableStream {
    fn check(&mut self, cx: &mut Context<'_>) -> Result<(), std::io::Error> {
        // Polling the cancellation future also registers this task's waker with it, so an idle
        // keep-alive connection is woken and torn down when the server stops.
        match self.cancelled.as_mut().poll(cx) {
            Poll::Ready(()) => Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "test server stopped",
            )),
            Poll::Pending => Ok(()),
        }
    }
}

impl AsyncRead for KillableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Err(e) = self.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if let Err(e) = self.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if let Err(e) = self.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Open a sled database just closed in this process. sled finishes writes
/// on background threads that hold its file lock for a moment after the
/// last handle is dropped (seen under load, in CI): wait for the lock, for
/// at most 10 s, rather than fail on a closed store still being released.
pub fn reopen<T, E: std::fmt::Debug>(open: impl Fn() -> Result<T, E>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match open() {
            Ok(v) => return v,
            Err(e) if std::time::Instant::now() < deadline && is_lock_error(&format!("{e:?}")) => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("cannot reopen the database: {e:?}"),
        }
    }
}

/// sled's own lock error, or the store's name for it.
fn is_lock_error(debug: &str) -> bool {
    debug.contains("could not acquire lock") || debug.contains("InUse")
}
