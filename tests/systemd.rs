//! The real binary under a stand-in for systemd: the test binds the datagram
//! socket a `Type=notify` service talks to, names it in `NOTIFY_SOCKET` with
//! a watchdog in `WATCHDOG_USEC`, and reads what the bot says: `READY=1`
//! only after the recovery pass, `STATUS=` lines with the queue, `WATCHDOG=1`
//! again and again, `STOPPING=1` on SIGTERM.

mod support;

use std::time::Duration;

use support::binary::BinaryTest;
use tokio::net::UnixDatagram;

const T: Duration = Duration::from_secs(60);

const SETTINGS: &str = "[telegram]
admins = [9000]
[downloader]
lease_secs = 5";

/// What the bot sent so far, one entry per `KEY=value` line.
struct Systemd {
    socket: UnixDatagram,
    lines: Vec<String>,
}

impl Systemd {
    fn bind(path: &std::path::Path) -> Systemd {
        Systemd {
            socket: UnixDatagram::bind(path).unwrap(),
            lines: Vec::new(),
        }
    }

    /// Reads datagrams until one read during this call has a line that
    /// satisfies `pred`; that line.
    async fn wait_for(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + T;
        let mut buf = vec![0u8; 4096];
        let mut seen = self.lines.len();
        loop {
            if let Some(l) = self.lines[seen..].iter().find(|l| pred(l)) {
                return l.clone();
            }
            seen = self.lines.len();
            let n = tokio::time::timeout_at(deadline, self.socket.recv(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("no {what} within {T:?}; got {:#?}", self.lines))
                .unwrap();
            let text = String::from_utf8(buf[..n].to_vec()).unwrap();
            self.lines
                .extend(text.lines().filter(|l| !l.is_empty()).map(String::from));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_bot_tells_systemd_ready_status_watchdog_and_stopping() {
    let t = BinaryTest::start(SETTINGS).await;
    // A first run killed mid-download leaves a job for the recovery pass.
    let mut first = t.start_bot();
    let link = t
        .media
        .url("/slow/clip.mp4?burst=16384&chunk=2048&delay_ms=50");
    t.api.push_text(1001, 1001, &link, None);
    t.media
        .wait_for(
            |reqs| {
                reqs.iter()
                    .filter(|r| r.path == "/slow/clip.mp4")
                    .nth(1)
                    .is_some_and(|r| r.bytes_sent > 20_000)
            },
            T,
        )
        .await;
    first.kill9();

    let sock = t.dir.path().join("notify.sock");
    let mut systemd = Systemd::bind(&sock);
    let bot = t.start_bot_with_env(&[
        ("NOTIFY_SOCKET", sock.to_str().unwrap()),
        // A ping every 150 ms.
        ("WATCHDOG_USEC", "300000"),
    ]);

    systemd.wait_for("READY=1", |l| l == "READY=1").await;
    // By then the recovery pass has run and said so.
    let log = bot.log_text();
    assert!(
        log.contains("Recovery:") && log.contains("1 job(s) requeued"),
        "READY=1 before recovery; log:\n{log}"
    );
    // The status line follows the queue: the requeued job downloads again.
    systemd
        .wait_for("STATUS with 1 downloading", |l| {
            l.starts_with("STATUS=serving; queue:") && l.contains(" 1 downloading")
        })
        .await;
    // Pings keep coming while it runs, not only once.
    for _ in 0..5 {
        systemd.wait_for("WATCHDOG=1", |l| l == "WATCHDOG=1").await;
    }

    let (status, bot) = bot.sigterm_and_wait(Duration::from_secs(10)).await;
    systemd.wait_for("STOPPING=1", |l| l == "STOPPING=1").await;
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}; log:\n{}",
        bot.log_text()
    );
}
