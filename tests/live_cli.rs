//! The command line while the bot runs and after it stopped: `tgdl jobs`,
//! `job`, `health`, `cancel` and `retry` through the running bot's admin
//! socket (`data/tgdl.sock`), and on the database directly once it is
//! stopped, with the same output; the socket's mode and its answers to bad
//! requests.

mod support;

use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::binary::{
    binary_config, processes_left, run_tgdl, wait_for_download, write_config, BinaryTest,
    BotProcess,
};
use support::fake_telegram::FakeTelegram;
use support::media_server::MediaServer;

const T: Duration = Duration::from_secs(60);

const SETTINGS: &str = "[telegram]
admins = [9000]
[downloader]
max_attempts = 1";

/// `tgdl ARGS` on the test's config: exit code, stdout, stderr.
fn tgdl(t: &BinaryTest, args: &[&str]) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = run_tgdl(args, &t.cfg);
    (
        status.code().unwrap_or(-1),
        String::from_utf8(stdout).unwrap(),
        String::from_utf8(stderr).unwrap(),
    )
}

/// `tgdl ARGS` that must succeed; its stdout.
fn tgdl_ok(t: &BinaryTest, args: &[&str]) -> String {
    let (code, out, err) = tgdl(t, args);
    assert_eq!(code, 0, "tgdl {args:?}: {err}\nlog:\n{}", log(t));
    out
}

fn log(t: &BinaryTest) -> String {
    std::fs::read_to_string(&t.log).unwrap_or_default()
}

fn socket(t: &BinaryTest) -> PathBuf {
    t.dir.path().join("data/tgdl.sock")
}

/// `tgdl jobs --json`, parsed.
fn jobs_json(t: &BinaryTest) -> Vec<Value> {
    serde_json::from_str::<Value>(&tgdl_ok(t, &["jobs", "--json"]))
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// Poll `tgdl job ID --json` until `pred` holds (the CLI is the only way to
/// watch a running bot's store from outside; nothing notifies a change).
async fn wait_job(t: &BinaryTest, id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + T;
    loop {
        let job: Value = serde_json::from_str(&tgdl_ok(t, &["job", id, "--json"])).unwrap();
        if pred(&job) {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "job never became {what}: {job:#}\nlog:\n{}",
            log(t)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait until the bot has bound its socket (it does so before it reaches
/// the Bot API); polled, as a file's appearance has no notification here.
async fn wait_socket(t: &BinaryTest) {
    let deadline = Instant::now() + T;
    while UnixStream::connect(socket(t)).is_err() {
        assert!(
            Instant::now() < deadline,
            "no admin socket; log:\n{}",
            log(t)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn stop(bot: BotProcess) {
    let (status, bot) = bot.sigterm_and_wait(Duration::from_secs(10)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "bot did not stop cleanly: {status:?}; log:\n{}",
        bot.log_text()
    );
}

fn state(job: &Value) -> &str {
    job["state"].as_str().unwrap()
}

/// Send `link` from user 1001 and wait until its job is `want`; its short id.
async fn job_for(t: &BinaryTest, link: &str, want: &str) -> String {
    let before = jobs_json(t).len();
    t.api.push_text(1001, 1001, link, None);
    let deadline = Instant::now() + T;
    let id = loop {
        let jobs = jobs_json(t);
        if jobs.len() > before {
            break jobs.last().unwrap()["short_id"]
                .as_str()
                .unwrap()
                .to_string();
        }
        assert!(Instant::now() < deadline, "no job; log:\n{}", log(t));
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    wait_job(t, &id, want, |j| state(j) == want).await;
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_job_and_health_print_the_same_running_and_stopped() {
    let t = BinaryTest::start(SETTINGS).await;
    let bot = t.start_bot();
    wait_socket(&t).await;
    let mode = std::fs::metadata(socket(&t)).unwrap();
    assert!(mode.file_type().is_socket());
    assert_eq!(mode.permissions().mode() & 0o777, 0o600, "socket mode");

    let id = job_for(&t, &t.media.url("/tiny.mp4"), "done").await;
    let commands: [&[&str]; 5] = [
        &["jobs"],
        &["jobs", "--json"],
        &["jobs", "--state", "done", "--json"],
        &["job", &id],
        &["job", &id, "--json"],
    ];
    // While the bot runs it holds the database: these answers came through
    // its socket (opening the store here would fail with "locked").
    let running: Vec<String> = commands.iter().map(|c| tgdl_ok(&t, c)).collect();
    let health_running = tgdl_ok(&t, &["health"]);
    stop(bot).await;
    assert!(!socket(&t).exists(), "the socket is removed at shutdown");

    let stopped: Vec<String> = commands.iter().map(|c| tgdl_ok(&t, c)).collect();
    for ((c, a), b) in commands.iter().zip(&running).zip(&stopped) {
        assert_eq!(a, b, "tgdl {c:?} running vs stopped");
    }
    assert!(running[3].contains("state    done"), "{}", running[3]);
    let rows: Value = serde_json::from_str(&running[1]).unwrap();
    assert_eq!(rows[0]["short_id"], id.as_str());

    // The health report is sampled at each call; its counts are the same.
    let health_stopped = tgdl_ok(&t, &["health"]);
    for h in [&health_running, &health_stopped] {
        assert!(
            h.contains("queue: 0 queued, 0 downloading, 0 uploading, 0 cleaning"),
            "{h}"
        );
        assert!(h.contains("all time: 1 done, 0 failed"), "{h}");
    }
}

/// Send `raw` on a fresh connection and read the reply line.
fn raw_request(t: &BinaryTest, raw: &[u8]) -> Value {
    let mut s = UnixStream::connect(socket(t)).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    // The bot may answer and close before it has read all of an oversized
    // request: a failed write is part of what is tested, not an error.
    let _ = s.write_all(raw);
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    serde_json::from_str(reply.trim())
        .unwrap_or_else(|e| panic!("reply {reply:?} is not JSON: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_requests_get_a_clear_error_and_the_bot_keeps_answering() {
    let t = BinaryTest::start(SETTINGS).await;
    let _bot = t.start_bot();
    wait_socket(&t).await;

    let cases: [(&[u8], &str); 5] = [
        (b"hello\n", "malformed request: expected value"),
        (b"{\"op\":\"rm\",\"id\":\"x\"}\n", "unknown variant `rm`"),
        (b"{\"op\":\"cancel\"}\n", "missing field `id`"),
        (b"\xff\xfe\n", "malformed request"),
        (&[b'x'; 100_000], "request longer than 4096 bytes"),
    ];
    for (raw, says) in cases {
        let reply = raw_request(&t, raw);
        let message = reply["error"]["usage"].as_str().unwrap_or_default();
        assert!(
            message.contains(says),
            "{reply} for {:?}",
            &raw[..raw.len().min(40)]
        );
    }
    // A client that connects and goes away without a word.
    drop(UnixStream::connect(socket(&t)).unwrap());

    let (code, _, err) = tgdl(&t, &["job", "zz"]);
    assert_eq!((code, err.trim()), (2, "tgdl: 'zz' is not a job id"));
    // Changes wait for the start-up recovery; the bot polls Telegram only
    // after it has run.
    t.api.wait_for_call("getUpdates", T).await;
    let (code, _, err) = tgdl(&t, &["cancel", "deadbeef"]);
    assert_eq!((code, err.trim()), (1, "tgdl: no job matches 'deadbeef'"));
    // Still serving, and still the same process.
    assert_eq!(
        tgdl_ok(&t, &["jobs"]),
        "ID        STATE                USER  ATT  UPDATED               URL\n0 job(s)\n"
    );
    assert!(log(&t).contains("admin socket"), "{}", log(&t));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_reaches_the_running_download_kills_ytdlp_and_removes_its_files() {
    let t = BinaryTest::start(SETTINGS).await;
    let _bot = t.start_bot();
    let downloads = t.dir.path().join("data/downloads");
    // About 15 s of download: 16 KB at once, then 1 KB every 100 ms.
    let link = t
        .media
        .url("/slow/clip.mp4?burst=16384&chunk=1024&delay_ms=100");
    t.api.push_text(1001, 1001, &link, None);
    wait_for_download(&t.media, &downloads).await;
    let jobs = jobs_json(&t);
    assert_eq!(state(&jobs[0]), "downloading");
    let (id, full) = (
        jobs[0]["short_id"].as_str().unwrap().to_string(),
        jobs[0]["id"].as_str().unwrap().to_string(),
    );
    let folder = std::fs::read_dir(&downloads)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().replace('-', "").ends_with(&full))
        .expect("the job's folder");

    let out = tgdl_ok(&t, &["cancel", &id]);
    assert_eq!(
        out.trim(),
        format!("job {id} cancelled (its download is stopped and its files removed)")
    );
    let job = wait_job(&t, &id, "failed", |j| state(j) == "failed").await;
    assert!(
        job["error"].as_str().unwrap().starts_with("cancelled"),
        "{job:#}"
    );
    let left = processes_left(&downloads.display().to_string(), Duration::from_secs(5));
    assert!(left.is_empty(), "yt-dlp outlived the cancel: {left:?}");
    assert!(!folder.exists(), "{} is left", folder.display());
    // Cancelling it again says it is finished.
    let (code, _, err) = tgdl(&t, &["cancel", &id]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        err.trim(),
        format!("tgdl: job {id} is already failed; nothing to cancel")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retry_and_cancel_running_and_stopped_held_to_the_queue_capacity() {
    let t = BinaryTest::start(&format!("{SETTINGS}\n[limits]\nqueue_capacity = 1")).await;
    let bot = t.start_bot();
    wait_socket(&t).await;
    let a = job_for(&t, &t.media.url("/404"), "failed").await;
    let b = job_for(&t, &t.media.url("/404?b"), "failed").await;

    // Running: the retry reaches the bot, which runs the job again.
    let out = tgdl_ok(&t, &["retry", &a]);
    assert!(out.starts_with(&format!("job {a} queued again")), "{out}");
    wait_job(&t, &a, "failed again", |j| {
        state(j) == "failed" && j["history"].as_array().unwrap().len() > 5
    })
    .await;
    let (code, _, err) = tgdl(&t, &["retry", "zz"]);
    assert_eq!((code, err.trim()), (2, "tgdl: 'zz' is not a job id"));
    stop(bot).await;

    // Stopped: straight on the store, with the same limits.
    tgdl_ok(&t, &["retry", &a]);
    let jobs = jobs_json(&t);
    assert_eq!(state(&jobs[0]), "queued", "{jobs:#?}");
    let (code, _, err) = tgdl(&t, &["retry", &b]);
    assert_eq!(
        (code, err.trim()),
        (1, "tgdl: retry refused: queue is full (1 jobs)")
    );
    let (code, _, err) = tgdl(&t, &["retry", &a]);
    assert_eq!(
        (code, err.trim().to_string()),
        (
            1,
            format!("tgdl: job {a} is queued; only a failed job can be retried")
        )
    );
    let out = tgdl_ok(&t, &["cancel", &a]);
    assert!(out.starts_with(&format!("job {a} cancelled")), "{out}");
    let job: Value = serde_json::from_str(&tgdl_ok(&t, &["job", &a, "--json"])).unwrap();
    assert_eq!(state(&job), "failed");
    assert!(job["error"].as_str().unwrap().starts_with("cancelled"));
    // The slot is free again.
    tgdl_ok(&t, &["retry", &b]);
    let (code, _, err) = tgdl(&t, &["cancel", "deadbeef"]);
    assert_eq!((code, err.trim()), (1, "tgdl: no job matches 'deadbeef'"));
}

/// A stopped bot's data folder with a database and `n` folders in
/// `downloads` that belong to no job (what `tgdl recover` deletes).
fn store_with_orphans(dir: &std::path::Path, n: usize) {
    drop(tgdl::store::SledStore::open(&dir.join("data/db")).unwrap());
    for i in 0..n {
        let d = dir.join(format!("data/downloads/orphan-{i}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("x.part"), b"partial").unwrap();
    }
}

#[test]
fn recover_draws_progress_on_a_terminal_and_nothing_when_piped() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &binary_config(dir.path(), "http://127.0.0.1:9", ""),
    );
    let has_codes = |s: &str| s.contains('\u{1b}') || s.contains('\r');

    store_with_orphans(dir.path(), 300);
    let piped = run_tgdl(&["recover"], &cfg);
    let (out, err) = (
        String::from_utf8_lossy(&piped.stdout),
        String::from_utf8_lossy(&piped.stderr),
    );
    assert!(piped.status.success(), "{err}");
    assert!(out.contains("300 orphan file(s) deleted"), "{out}");
    assert!(!has_codes(&out) && !has_codes(&err), "{out:?} {err:?}");

    // The same on a terminal: `script` gives the command a pty.
    store_with_orphans(dir.path(), 300);
    let command = format!(
        "{} recover --config {}",
        env!("CARGO_BIN_EXE_tgdl"),
        cfg.display()
    );
    let tty = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env_remove("TGDL_CONFIG")
        .output()
        .expect("script (util-linux) runs a command on a pty");
    let shown = String::from_utf8_lossy(&tty.stdout);
    assert!(tty.status.success(), "{shown}");
    assert!(shown.contains("300 orphan file(s) deleted"), "{shown}");
    assert!(
        has_codes(&shown),
        "no progress drawn on a terminal: {shown:?}"
    );
    assert!(shown.contains("downloads folder"), "{shown:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn before_the_bot_reaches_telegram_the_queue_reads_and_changes_are_refused() {
    let port = support::free_port();
    let dir = tempfile::tempdir().unwrap();
    let api_url = format!("http://127.0.0.1:{port}");
    let t = BinaryTest {
        api: FakeTelegram::offline(port),
        media: MediaServer::fixtures().await,
        cfg: write_config(dir.path(), &binary_config(dir.path(), &api_url, SETTINGS)),
        log: dir.path().join("bot.log"),
        dir,
    };
    let _bot = t.start_bot();
    wait_socket(&t).await;
    // The bot holds the store and waits for the Bot API; it reads already.
    assert!(tgdl_ok(&t, &["jobs"]).ends_with("0 job(s)\n"));
    for change in ["cancel", "retry"] {
        let (code, _, err) = tgdl(&t, &[change, "deadbeef"]);
        assert_eq!(
            (code, err.trim()),
            (
                1,
                "tgdl: the bot is starting (its recovery pass has not run yet); try again in a moment"
            )
        );
    }
    // Once it reached Telegram and recovered, the same request is answered.
    t.api.go_online().await;
    let deadline = Instant::now() + T;
    loop {
        let (code, _, err) = tgdl(&t, &["cancel", "deadbeef"]);
        if err.contains("no job matches") {
            assert_eq!(code, 1);
            break;
        }
        assert!(Instant::now() < deadline, "{err}\nlog:\n{}", log(&t));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
