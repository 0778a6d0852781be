//! Bounds a hostile link cannot step around (issue 10): a download's files on
//! disk stay under `downloader.max_download_mb` (an endless response without
//! a length, an HLS playlist), a playlist is listed and fetched only up to
//! `limits.playlist_max_items`, a download never expands a playlist, a probe
//! that fails is the job's error, `/retry` is held to the limits of a new
//! link, and a server answering 416 cannot make a job start over for ever.
//! The real bot (library `run`) with real yt-dlp, the loopback media server
//! and the fake Bot API.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::binary::processes_mentioning;
use support::bot::{accept_link, media, message_becomes, reply_text, TestBot};
use support::fake_telegram::FakeTelegram;
use support::fs::files_under;
use support::media_server::MediaServer;
use tgdl::job::{Job, JobState};
use tgdl::store::JobStore;

const T: Duration = Duration::from_secs(60);
const USER: i64 = 1101;

fn bytes_under(dir: &Path) -> u64 {
    files_under(dir)
        .iter()
        .filter_map(|p| std::fs::symlink_metadata(p).ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

fn only_job(store: &dyn JobStore, user: i64) -> Job {
    let mut jobs = store.list_user(user as u64, 10).unwrap();
    assert_eq!(jobs.len(), 1, "{jobs:#?}");
    jobs.remove(0)
}

fn failure_code(job: &Job) -> String {
    job.failure
        .as_ref()
        .map(|f| f.code.to_string())
        .unwrap_or_default()
}

/// Stops the bot; nothing may be left on disk and the store must be
/// consistent.
async fn stop_clean(bot: &mut TestBot) -> tgdl::store::SledStore {
    bot.stop().await.unwrap();
    let left = bot.leftover_files();
    assert!(left.is_empty(), "left behind: {left:?}");
    let store = bot.store();
    let report = store.check_invariants().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    store
}

/// What a link that failed left behind: the status message's last text, the
/// job as the stopped store has it, the media server (its request log) and
/// the stopped bot (its config).
struct Failed {
    line: String,
    job: Job,
    media: MediaServer,
    bot: TestBot,
}

/// `USER` sends the media server's `path` to a fresh bot with `extra`
/// settings; once the status message says the job failed, the bot stops
/// clean (see [`stop_clean`]).
async fn fails(extra: &str, path: &str) -> Failed {
    let api = FakeTelegram::start().await;
    let media = media().await;
    let mut bot = TestBot::start(&api, extra).await;
    let (_, status) = accept_link(&api, USER, &media.url(path), T).await;
    let line = message_becomes(&api, USER, status, |t| t.contains("failed"), T).await;
    let store = stop_clean(&mut bot).await;
    let job = only_job(&store, USER);
    Failed {
        line,
        job,
        media,
        bot,
    }
}

/// 1 MB upload limit, 3 MB download limit.
const LIMITS: &str = "[telegram]\nupload_limit_mb = 1\n[downloader]\nmax_download_mb = 3";
const LIMIT: u64 = 3 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_endless_response_without_a_length_is_stopped_at_max_download_mb() {
    let api = FakeTelegram::start().await;
    let media = media().await;
    let mut bot = TestBot::start(&api, LIMITS).await;
    let downloads = bot.downloads();
    let needle = downloads.display().to_string();
    // 64 KiB every 10 ms: several MB a second, and never an end.
    let path = "/endless/live.mp4";
    let (_, status) = accept_link(&api, USER, &media.url(path), T).await;

    // Measure, every 10 ms: what the server has sent on the stream, what is
    // on disk, and whether yt-dlp still runs.
    let sent = || {
        media
            .requests_to(path)
            .iter()
            .map(|r| r.bytes_sent)
            .max()
            .unwrap_or(0)
    };
    let start = Instant::now();
    let mut crossed: Option<Instant> = None;
    let mut most_on_disk = 0;
    let stopped = loop {
        most_on_disk = most_on_disk.max(bytes_under(&downloads));
        if crossed.is_none() && sent() >= LIMIT {
            crossed = Some(Instant::now());
        }
        if crossed.is_some() && processes_mentioning(&needle).is_empty() {
            break Instant::now();
        }
        assert!(start.elapsed() < T, "never stopped; sent {}", sent());
        // A measurement's sampling period, not a wait for an event.
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let line = message_becomes(&api, USER, status, |t| t.contains("failed"), T).await;
    assert!(line.contains("3 MB limit"), "{line}");
    let stop_ms = stopped.duration_since(crossed.unwrap()).as_millis();
    let total_sent = sent();
    println!(
        "endless download: limit {LIMIT} B; stopped {stop_ms} ms after the server had sent the limit; \
         server sent {total_sent} B in all; at most {most_on_disk} B on disk; {} B left",
        bytes_under(&downloads)
    );
    assert!(stop_ms < 3000, "stopped within a few seconds: {stop_ms} ms");
    assert!(
        most_on_disk < 2 * LIMIT,
        "bounded on disk: {most_on_disk} B"
    );

    let store = stop_clean(&mut bot).await;
    let job = only_job(&store, USER);
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(failure_code(&job), "download_too_large");
    assert_eq!(job.attempts, 1, "not retried");
    for method in ["sendVideo", "sendDocument"] {
        assert_eq!(api.count(method), 0, "nothing uploaded ({method})");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_hls_playlist_is_bounded_the_same_way() {
    // 400 segments of 256 KiB: 100 MiB if nothing stopped it.
    let Failed {
        line, job, media, ..
    } = fails(LIMITS, "/hls/400/index.m3u8").await;
    assert!(line.contains("3 MB limit"), "{line}");
    let segments: Vec<_> = media
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/hls/seg/"))
        .collect();
    let fetched: u64 = segments.iter().map(|r| r.bytes_sent).sum();
    println!(
        "hls download: limit {LIMIT} B; {} of 400 segments requested, {fetched} B sent",
        segments.len()
    );
    assert!(segments.len() >= 12, "it did download: {}", segments.len());
    assert!(fetched < 2 * LIMIT, "bounded: {fetched} B");
    assert_eq!(failure_code(&job), "download_too_large");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_page_of_thirty_fetches_the_limit_and_names_the_rest_as_skipped() {
    let api = FakeTelegram::start().await;
    let media = media().await;
    let mut bot = TestBot::start(
        &api,
        "[downloader]\nconcurrency = 1\n[limits]\nplaylist_max_items = 3",
    )
    .await;
    let items: Vec<String> = (0..30).map(|i| format!("tiny.mp4?item={i}")).collect();
    let refs: Vec<&str> = items.iter().map(String::as_str).collect();
    let page = media.add_video_page("thirty", &refs);
    api.push_text(USER, USER as u64, &page, Some("en"));
    let delivered = |calls: &[support::fake_telegram::Call]| {
        calls
            .iter()
            .filter(|c| c.is("sendVideo") && c.chat_id() == Some(USER) && c.succeeded())
            .count()
    };
    api.wait_for(|c| delivered(c) >= 3, T).await;
    let summary = api
        .calls()
        .into_iter()
        .filter(|c| c.chat_id() == Some(USER))
        .filter_map(|c| c.text().map(str::to_string))
        .find(|t| t.contains("Playlist"))
        .expect("the user is told what comes and what not");
    assert!(
        summary.contains("3 item(s) will come")
            && summary.contains("Skipped 27:")
            && summary.contains("thirty (4)")
            && summary.contains("26 more over the playlist limit of 3"),
        "{summary}"
    );
    bot.stop().await.unwrap();
    // Exactly the first three items were fetched, nothing of the others.
    let mut fetched: Vec<String> = media
        .requests_to("/tiny.mp4")
        .into_iter()
        .filter_map(|r| r.query)
        .collect();
    fetched.sort();
    fetched.dedup();
    assert_eq!(fetched, ["item=0", "item=1", "item=2"]);
    assert_eq!(delivered(&api.calls()), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_probe_that_fails_is_the_jobs_error_not_a_single_video() {
    let Failed {
        line, job, media, ..
    } = fails("", "/page/missing").await;
    assert!(line.contains("unavailable"), "{line}");
    assert_eq!(failure_code(&job), "http_404");
    assert_eq!(job.attempts, 1, "a 404 is not retried");
    assert_eq!(
        media.requests_to("/page/missing").len(),
        1,
        "the probe's request only: no download was started after it failed"
    );
}

#[tokio::test]
async fn a_download_of_a_playlist_link_takes_its_first_item_only() {
    use tgdl::download::{run_ytdlp, Want, YtDlpArgs};
    let media = media().await;
    let page = media.add_video_page("three", &["tiny.mp4?a", "tiny.mp4?b", "tiny.mp4?c"]);
    let tmp = tempfile::tempdir().unwrap();
    let ytdlp = support::ytdlp();
    let args = YtDlpArgs::new(
        ytdlp,
        page,
        tmp.path(),
        uuid::Uuid::now_v7(),
        Want::Document,
    );
    let out = run_ytdlp(&args, tokio_util::sync::CancellationToken::new(), T, |_| {})
        .await
        .expect("the first item downloads");
    assert_eq!(
        std::fs::read(&out.file_path).unwrap(),
        support::fixture_bytes("tiny.mp4")
    );
    let queries: Vec<String> = media
        .requests_to("/tiny.mp4")
        .into_iter()
        .filter_map(|r| r.query)
        .collect();
    assert!(queries.iter().all(|q| q == "a"), "{queries:?}");
    assert_eq!(files_under(&args.output_dir).len(), 1);
}

/// `/cancel` then waits until the job's status message says it is cancelled
/// (the job is `failed` by then), after it first said something else.
async fn cancel(api: &FakeTelegram, short: &str, status: i32) {
    message_becomes(api, USER, status, |t| !t.contains("cancelled"), T).await;
    let msg = api.push_text(USER, USER as u64, &format!("/cancel {short}"), Some("en"));
    reply_text(api, USER, msg, T).await;
    message_becomes(api, USER, status, |t| t.contains("cancelled"), T).await;
}

/// What the bot answers the user's message `text`.
async fn answer(api: &FakeTelegram, text: &str) -> String {
    let msg = api.push_text(USER, USER as u64, text, Some("en"));
    reply_text(api, USER, msg, T).await
}

/// The minutes in "Try again in N minutes" may tick between two answers.
fn without_digits(s: &str) -> String {
    s.chars().filter(|c| !c.is_ascii_digit()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_then_retry_is_held_to_the_limits_of_a_new_link() {
    let api = FakeTelegram::start().await;
    let media = media().await;
    // Held downloads: jobs stay active until cancelled.
    let _gate = media.hold_gate();
    let mut bot =
        TestBot::start(&api, "[limits]\nper_user_active = 1\nper_user_per_hour = 3").await;
    let link = |n: &str| media.url(&format!("/hold/tiny.mp4?{n}"));

    let (a, a_status) = accept_link(&api, USER, &link("a"), T).await; // 1st of the hour
    cancel(&api, &a, a_status).await;
    let (b, b_status) = accept_link(&api, USER, &link("b"), T).await; // 2nd

    // One active job: a retry is refused as a new link is.
    let by_link = answer(&api, &link("c")).await;
    let by_retry = answer(&api, &format!("/retry {a}")).await;
    assert!(
        by_link.contains("already have 1 jobs waiting or running"),
        "{by_link}"
    );
    assert_eq!(by_retry, by_link);

    // A free slot: the retry is admitted, and counts as the 3rd of the hour.
    cancel(&api, &b, b_status).await;
    let ok = answer(&api, &format!("/retry {a}")).await;
    assert!(ok.contains("queued again"), "{ok}");
    cancel(&api, &a, a_status).await;
    let by_retry = answer(&api, &format!("/retry {a}")).await;
    let by_link = answer(&api, &link("d")).await;
    assert!(
        by_retry.contains("You reached 3 jobs per hour"),
        "{by_retry}"
    );
    assert_eq!(without_digits(&by_retry), without_digits(&by_link));

    bot.stop().await.unwrap();
    let store = bot.store();
    let jobs = store.list_user(USER as u64, 10).unwrap();
    assert_eq!(jobs.len(), 2, "no job was made by the refused links");
    assert!(jobs.iter().all(|j| j.state == JobState::Failed));
    assert!(store.check_invariants().unwrap().problems.is_empty());
}

#[test]
fn max_download_mb_defaults_to_twice_the_upload_limit() {
    use tgdl::config::Config;
    let parse = |text: &str| Config::parse(text, None);
    let c = parse("").unwrap();
    assert_eq!(c.max_download_mb(), 100, "twice the default 50 MB");
    let c = parse("[telegram]\nupload_limit_mb = 20\n[downloader]\nmax_download_mb = 0").unwrap();
    assert_eq!(
        (c.max_download_mb(), c.max_download_bytes()),
        (40, 40 << 20)
    );
    let c = parse("[downloader]\nmax_download_mb = 500").unwrap();
    assert_eq!(c.max_download_mb(), 500);
    // Below the upload limit no file that may be sent would fit.
    let err = parse("[downloader]\nmax_download_mb = 10")
        .unwrap_err()
        .to_string();
    assert!(err.contains("downloader.max_download_mb"), "{err}");
}

/// The start-over after a 416 (a kept `.part` the server will not extend) is
/// free only once in a row: a server that answers 416 to a fresh request too
/// gets the ordinary retries (3 attempts here) and the job fails, rather than
/// starting over for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_that_always_answers_416_starts_over_once_then_fails() {
    let Failed {
        line,
        job,
        media,
        bot,
    } = fails("", "/status/416").await;
    let max = bot.config.downloader.max_attempts;
    assert!(line.contains("would not serve the file"), "{line}");
    assert_eq!(failure_code(&job), "range_not_satisfiable");
    assert_eq!(job.attempts, max, "every 416 after the first was counted");
    assert_eq!(
        media.requests_to("/status/416").len(),
        max as usize + 1,
        "one run per attempt, and one start-over"
    );
}
