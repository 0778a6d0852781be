//! Issue 10, "Processes, secrets, groups, output", against the real binary
//! or the bot in-process, real yt-dlp and ffmpeg, and the fake Bot API: no
//! process of a killed run survives the next start, children never see the
//! token, the operator's cookies file is never written, group chats stay
//! quiet and buttons obey only their owner, job texts are printable, and a
//! 2,000-character Persian title survives yt-dlp's output.

mod support;

use std::time::Duration;

use support::binary::{processes_mentioning, BinaryTest};
use support::bot::TOKEN;
use tgdl::job::JobState;
use tgdl::store::{JobStore, SledStore};

const T: Duration = Duration::from_secs(60);

/// Exists and is not a zombie (a killed orphan is one until init reaps it).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

/// Whether process `pid` is an ffmpeg (by its name: yt-dlp's own command
/// line mentions ffmpeg too, in `--downloader ffmpeg`).
fn is_ffmpeg(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == "ffmpeg")
}

/// The environment of a running process, one `KEY=value` each.
fn environ(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|raw| {
            raw.split(|&b| b == 0)
                .filter(|v| !v.is_empty())
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Polls `f` every 50 ms until it gives `Some`, for at most `timeout`.
async fn poll<R>(timeout: Duration, mut f: impl FnMut() -> Option<R>) -> Option<R> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(r) = f() {
            return Some(r);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// yt-dlp hands the download to ffmpeg (`--downloader ffmpeg`), which
/// outlives a `kill -9` of the bot: PDEATHSIG reaches yt-dlp only. The next
/// start ends it (it works in the job's folder), and the job completes.
/// Meanwhile the bot runs with `TGDL_TOKEN` set, and neither yt-dlp nor
/// ffmpeg has it (or any `TGDL_*`) in its environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_kill_9_mid_ffmpeg_the_next_start_ends_the_old_run_and_the_job_completes() {
    let t = BinaryTest::start(
        "[telegram]
progress_interval_secs = 1
[downloader]
lease_secs = 5
extra_args = [\"--downloader\", \"ffmpeg\"]",
    )
    .await;
    let data = t.dir.path().join("data");
    let downloads = data.join("downloads");
    let needle = data.display().to_string();
    let mut bot = t.start_bot_with_env(&[("TGDL_TOKEN", TOKEN), ("TGDL_OTHER", "x")]);
    // About 170 KB at 10 KB/s: ffmpeg is busy for many seconds.
    let link = t
        .media
        .url("/slow/clip.mp4?burst=16384&chunk=1024&delay_ms=100");
    t.api.push_text(1001, 1001, &link, None);

    let running = poll(T, || {
        let ps = processes_mentioning(&needle);
        ps.iter().any(|(pid, _)| is_ffmpeg(*pid)).then_some(ps)
    })
    .await
    .unwrap_or_else(|| panic!("no ffmpeg started; log:\n{}", bot.log_text()));
    let ffmpeg: Vec<i32> = running
        .iter()
        .map(|(pid, _)| *pid)
        .filter(|pid| is_ffmpeg(*pid))
        .collect();
    assert!(
        running.iter().any(|(_, cmd)| cmd.contains("yt-dlp")),
        "{running:?}"
    );
    for (pid, cmd) in &running {
        let env = environ(*pid);
        assert!(!env.is_empty(), "environment of {cmd} readable");
        assert!(
            env.iter()
                .all(|v| !v.starts_with("TGDL_") && !v.contains(TOKEN)),
            "{cmd} has {:?}",
            env.iter()
                .filter(|v| v.contains("TGDL") || v.contains(TOKEN))
                .collect::<Vec<_>>()
        );
        // Working in the job's folder, where recovery looks for them.
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap();
        assert!(
            cwd.starts_with(std::fs::canonicalize(&downloads).unwrap()) && cwd != downloads,
            "{cmd} works in {}",
            cwd.display()
        );
    }

    bot.kill9();
    // Give the kernel time to deliver PDEATHSIG: yt-dlp goes, ffmpeg stays.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        ffmpeg.iter().any(|&p| alive(p)),
        "ffmpeg survives the bot's SIGKILL (else this test shows nothing): {:?}",
        processes_mentioning(&needle)
    );

    let bot = t.start_bot();
    let gone = poll(Duration::from_secs(10), || {
        (!ffmpeg.iter().any(|&p| alive(p))).then_some(())
    })
    .await;
    assert!(
        gone.is_some(),
        "the old ffmpeg still runs after the restart: {:?}; log:\n{}",
        processes_mentioning(&needle),
        bot.log_text()
    );
    let log = bot.log_text();
    let summary = log
        .lines()
        .find(|l| l.contains("Recovery:"))
        .unwrap_or_else(|| panic!("no recovery summary; log:\n{log}"));
    assert!(
        summary.contains("1 job(s) requeued") && !summary.contains(" 0 leftover process(es) ended"),
        "{summary}"
    );

    let calls = t.api.wait_for_calls("sendVideo", 1, T).await;
    assert!(calls[0]
        .file("video")
        .is_some_and(|f| f.bytes.len() > 100_000));
    let (status, bot) = bot.sigterm_and_wait(Duration::from_secs(10)).await;
    assert!(status.is_some(), "exits; log:\n{}", bot.log_text());
    assert!(
        processes_mentioning(&needle).is_empty(),
        "{:?}",
        processes_mentioning(&needle)
    );
    let store = SledStore::open(&data.join("db")).unwrap();
    let done = store.list_state(JobState::Done, 10).unwrap();
    assert_eq!(done.len(), 1, "{:?}", store.in_flight().unwrap());
}
