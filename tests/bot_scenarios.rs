//! The scenarios of issue 3 beyond plain delivery: limits, failures, cancel,
//! Telegram errors, security refusals, access rules, an API that is down at
//! boot, and progress. Each runs the real bot (library `run`) with real
//! yt-dlp, a loopback media server and the fake Bot API.

mod support;

use std::time::Duration;

use support::bot::{media, TestBot, ADMIN};
use support::fake_telegram::{text_link_entity, Call, Failure, FakeTelegram};
use support::media_server::MediaServer;
use support::{fixture_bytes, free_port};
use tgdl::job::{Job, JobState};
use tgdl::store::JobStore;

const T: Duration = Duration::from_secs(60);

/// A private chat: chat id and user id are the same number.
const USER: i64 = 1001;
const OTHER: i64 = 1002;

fn uid(chat: i64) -> u64 {
    chat as u64
}

fn is_reply_to(c: &Call, chat: i64, msg_id: i32) -> bool {
    c.is("sendMessage")
        && c.chat_id() == Some(chat)
        && c.reply_to() == Some(msg_id)
        && c.succeeded()
}

/// Waits for the bot's first answer to the user's message `msg_id`.
async fn reply(api: &FakeTelegram, chat: i64, msg_id: i32) -> Call {
    api.wait_for(
        |calls| calls.iter().any(|c| is_reply_to(c, chat, msg_id)),
        T,
    )
    .await
    .into_iter()
    .find(|c| is_reply_to(c, chat, msg_id))
    .unwrap()
}

async fn reply_text(api: &FakeTelegram, chat: i64, msg_id: i32) -> String {
    reply(api, chat, msg_id).await.text().unwrap().to_string()
}

/// A link message that must be accepted: returns the short job id and the
/// status message id from the acknowledgement.
async fn accepted(api: &FakeTelegram, chat: i64, text: &str) -> (String, i32) {
    let msg_id = api.push_text(chat, uid(chat), text, Some("en"));
    let ack = reply(api, chat, msg_id).await;
    let body = ack.text().unwrap();
    let rest = body
        .split("Accepted as job ")
        .nth(1)
        .unwrap_or_else(|| panic!("{text:?} was not accepted: {body:?}"));
    let short: String = rest.chars().take_while(char::is_ascii_hexdigit).collect();
    assert_eq!(short.len(), 8, "{body:?}");
    let status = ack.result().unwrap()["message_id"].as_i64().unwrap() as i32;
    (short, status)
}

/// Waits until the bot's message `message_id` in `chat` reads like `pred`;
/// returns that text.
async fn status_becomes(
    api: &FakeTelegram,
    chat: i64,
    message_id: i32,
    pred: impl Fn(&str) -> bool,
) -> String {
    let found = |ms: &[support::fake_telegram::SentMessage]| {
        ms.iter()
            .find(|m| m.message_id == message_id)
            .and_then(|m| m.text.clone())
            .filter(|t| pred(t))
    };
    let msgs = api
        .wait_for_messages(chat, |ms| found(ms).is_some(), T)
        .await;
    found(&msgs).unwrap()
}

/// Every job in the store, oldest first per state.
fn all_jobs(store: &dyn JobStore) -> Vec<Job> {
    JobState::ALL
        .into_iter()
        .flat_map(|s| store.list_state(s, usize::MAX).unwrap())
        .collect()
}

/// The one job of `user`, which must exist alone.
fn only_job_of(store: &dyn JobStore, user: i64) -> Job {
    let mut jobs = store.list_user(uid(user), 10).unwrap();
    assert_eq!(jobs.len(), 1, "jobs of {user}: {jobs:#?}");
    jobs.remove(0)
}

fn failure_code(job: &Job) -> &str {
    job.failure.as_ref().map(|f| f.code.as_str()).unwrap_or("")
}

/// Stops the bot and checks what every finished scenario must leave: no
/// files, consistent indexes.
async fn stop_clean(bot: &mut TestBot) -> tgdl::store::SledStore {
    bot.stop().await.unwrap();
    assert!(
        bot.leftover_files().is_empty(),
        "left behind: {:?}",
        bot.leftover_files()
    );
    let store = bot.store();
    let report = store.check_invariants().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    store
}

/// Command lines (arguments split at NUL) of live processes that mention
/// `needle`, e.g. a bot's downloads folder (yt-dlp's `-o` lies under it).
fn processes_mentioning(needle: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.iter().any(|a| a.contains(needle)) {
            out.push(args);
        }
    }
    out
}

/// A host name other than `localhost` that the system resolver maps to
/// 127.0.0.1. `./scripts/test` adds `tgdl-loopback.test` to /etc/hosts; elsewhere
/// any other loopback alias listed there serves the same purpose.
fn loopback_hostname() -> String {
    use std::net::ToSocketAddrs;
    let resolves_to_loopback = |name: &str| {
        (name, 80)
            .to_socket_addrs()
            .map(|mut a| a.any(|a| a.ip().is_loopback()))
            .unwrap_or(false)
    };
    if resolves_to_loopback("tgdl-loopback.test") {
        return "tgdl-loopback.test".into();
    }
    let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    hosts
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let ip = words.next()?;
            ip.starts_with("127.").then(|| words.map(str::to_owned))
        })
        .flatten()
        .find(|name| !name.eq_ignore_ascii_case("localhost") && !name.ends_with(".localhost"))
        .filter(|name| resolves_to_loopback(name))
        .expect("no loopback host name besides localhost: add `127.0.0.1 tgdl-loopback.test` to /etc/hosts (./scripts/test does)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_over_the_upload_limit_fails_with_a_message_naming_the_limit() {
    let api = FakeTelegram::start().await;
    // 1 MB is the smallest limit the config allows: serve a file above it.
    let dir = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(dir.path().join("big.bin"), &big).unwrap();
    let media = MediaServer::start(dir.path()).await;
    let mut bot = TestBot::start(&api, "[telegram]\nupload_limit_mb = 1").await;

    let (_, status) = accepted(&api, USER, &media.url("/big.bin")).await;
    let line = status_becomes(&api, USER, status, |t| t.contains("failed")).await;
    assert!(line.contains("1 MB upload limit"), "{line}");

    for method in ["sendVideo", "sendDocument", "sendAudio"] {
        assert_eq!(api.count(method), 0, "no upload is attempted ({method})");
    }
    let store = stop_clean(&mut bot).await;
    let job = only_job_of(&store, USER);
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(failure_code(&job), "too_large");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn telegram_413_is_a_permanent_failure_without_retries() {
    let api = FakeTelegram::start().await;
    // tiny.mp4 is ~19 KB: the fake refuses it with 413 Request Entity Too Large.
    api.set_upload_limit(Some(4 * 1024));
    let media = media().await;
    let mut bot = TestBot::start(&api, "").await;

    let (_, status) = accepted(&api, USER, &media.url("/tiny.mp4")).await;
    let line = status_becomes(&api, USER, status, |t| t.contains("failed")).await;
    assert!(line.contains("upload limit"), "{line}");

    let uploads = api.calls_to("sendVideo");
    assert_eq!(uploads.len(), 1, "one try, no retry loop");
    assert_eq!(uploads[0].status, Some(413));
    assert_eq!(
        api.count("sendDocument"),
        0,
        "a 413 is not retried as a document"
    );
    let store = stop_clean(&mut bot).await;
    let job = only_job_of(&store, USER);
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(failure_code(&job), "too_large");
    assert_eq!(job.attempts, 1);
    assert_eq!(
        api.count("sendVideo"),
        1,
        "nothing tried again later either"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missing_and_unsupported_links_fail_with_a_clear_message() {
    let api = FakeTelegram::start().await;
    let media = media().await;
    let mut bot = TestBot::start(&api, "").await;

    let (_, missing) = accepted(&api, USER, &media.url("/missing.mp4")).await;
    let (_, nomedia) = accepted(&api, OTHER, &media.url("/nomedia.html")).await;
    let line = status_becomes(&api, USER, missing, |t| t.contains("failed")).await;
    assert!(line.contains("unavailable"), "{line}");
    let line = status_becomes(&api, OTHER, nomedia, |t| t.contains("failed")).await;
    assert!(line.contains("not supported"), "{line}");

    let store = stop_clean(&mut bot).await;
    let job = only_job_of(&store, USER);
    assert_eq!(job.state, JobState::Failed);
    assert!(
        ["http_404", "unavailable"].contains(&failure_code(&job)),
        "{:?}",
        job.failure
    );
    assert_eq!(job.attempts, 1, "a 404 is not retried");
    let job = only_job_of(&store, OTHER);
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(failure_code(&job), "unsupported_url");
    assert_eq!(job.attempts, 1, "an unsupported link is not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_during_a_download_kills_ytdlp_and_removes_the_files() {
    let api = FakeTelegram::start().await;
    let media = media().await;
    // ~10 KB/s: clip.mp4 (~170 KB) would take about 17 s.
    media.set_throttle(1024, Duration::from_millis(100));
    let mut bot = TestBot::start(&api, "").await;
    let downloads = bot.downloads().display().to_string();

    let (short, status) = accepted(&api, USER, &media.url("/slow/clip.mp4")).await;
    // A percent in the status message: yt-dlp is receiving the file.
    status_becomes(&api, USER, status, |t| t.contains('%')).await;
    assert!(
        !processes_mentioning(&downloads).is_empty(),
        "yt-dlp runs while downloading"
    );

    let cancel = api.push_text(USER, uid(USER), &format!("/cancel {short}"), Some("en"));
    let answer = reply_text(&api, USER, cancel).await;
    assert!(
        answer.contains(&format!("Job {short} cancelled")),
        "{answer}"
    );
    // The worker's last word on the job: it has stopped yt-dlp and cleaned.
    status_becomes(&api, USER, status, |t| t.contains("cancelled")).await;
    assert_eq!(
        processes_mentioning(&downloads),
        Vec::<Vec<String>>::new(),
        "yt-dlp (and its group) is gone"
    );
    assert!(
        !media
            .requests_to("/slow/clip.mp4")
            .iter()
            .any(|r| r.complete && r.bytes_sent > 0),
        "the download was cut short"
    );
    assert_eq!(api.count("sendVideo"), 0);

    let store = stop_clean(&mut bot).await;
    let job = only_job_of(&store, USER);
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(failure_code(&job), "cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_429_on_upload_waits_and_delivers_once_without_counting_an_attempt() {
    let api = FakeTelegram::start().await;
    api.fail_next("sendVideo", Failure::RetryAfter(1));
    let media = media().await;
    let mut bot = TestBot::start(&api, "").await;

    accepted(&api, USER, &media.url("/tiny.mp4")).await;
    // The status message is deleted once the job is done.
    api.wait_for_call("deleteMessage", T).await;

    let uploads = api.calls_to("sendVideo");
    assert_eq!(uploads.len(), 2, "{}", api.describe_calls());
    assert_eq!(uploads[0].status, Some(429));
    assert!(uploads[1].succeeded());
    assert_eq!(
        uploads[1].file("video").unwrap().bytes,
        fixture_bytes("tiny.mp4")
    );
    let videos: Vec<_> = api
        .visible_messages(USER)
        .into_iter()
        .filter(|m| m.kind == "video")
        .collect();
    assert_eq!(videos.len(), 1, "exactly one delivery");

    let store = stop_clean(&mut bot).await;
    let job = only_job_of(&store, USER);
    assert_eq!(job.state, JobState::Done);
    assert_eq!(job.attempts, 0, "RetryAfter is not an attempt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_user_who_blocked_the_bot_fails_their_job_and_others_are_still_served() {
    let api = FakeTelegram::start().await;
    api.fail_next("sendVideo", Failure::Forbidden);
    let media = media().await;
    // One worker: the second job starts only after the first one has ended.
    let mut bot = TestBot::start(&api, "[downloader]\nconcurrency = 1").await;

    accepted(&api, USER, &media.url("/tiny.mp4")).await;
    let blocked = api.wait_for_call("sendVideo", T).await;
    assert_eq!(blocked.status, Some(403));

    let (_, status) = accepted(&api, OTHER, &media.url("/tiny.mp4?user=2")).await;
    // The other user's status message is deleted once their job is done.
    api.wait_for_messages(
        OTHER,
        |ms| ms.iter().any(|m| m.message_id == status && m.deleted),
        T,
    )
    .await;
    assert!(api
        .calls_to("sendVideo")
        .iter()
        .any(|c| c.chat_id() == Some(OTHER) && c.succeeded()));
    assert!(bot.is_running(), "the bot keeps running");
    let after_block: Vec<String> = api
        .calls()
        .iter()
        .filter(|c| c.seq > blocked.seq && c.chat_id() == Some(USER))
        .map(|c| c.method.clone())
        .collect();
    assert!(
        after_block.is_empty(),
        "nothing more is sent to a chat that blocked the bot: {after_block:?}"
    );

    let store = stop_clean(&mut bot).await;
    let job = only_job_of(&store, USER);
    assert_eq!(job.state, JobState::Failed);
    assert_eq!(failure_code(&job), "chat_unreachable");
    assert_eq!(only_job_of(&store, OTHER).state, JobState::Done);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn links_to_private_networks_are_refused_when_not_allowed() {
    let api = FakeTelegram::start().await;
    let media = media().await;
    let mut bot = TestBot::start(&api, "[security]\nallow_private_networks = false").await;
    let port = media.addr().port();
    let links = [
        format!("http://127.0.0.1:{port}/tiny.mp4"),
        format!("http://localhost:{port}/tiny.mp4"),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        format!("http://[::1]:{port}/tiny.mp4"),
        format!("http://{}:{port}/tiny.mp4", loopback_hostname()),
        format!("http://2130706433:{port}/tiny.mp4"),
        format!("http://0x7f000001:{port}/tiny.mp4"),
        "https://10.1.2.3/video.mp4".to_string(),
    ];
    for link in &links {
        let msg = api.push_text(USER, uid(USER), link, Some("en"));
        let text = reply_text(&api, USER, msg).await;
        assert!(
            text.contains("private or local network addresses are not allowed"),
            "{link}: {text}"
        );
        assert!(!text.contains("Accepted"), "{link}: {text}");
    }
    assert!(media.requests().is_empty(), "{:#?}", media.requests());

    let store = stop_clean(&mut bot).await;
    assert_eq!(store.counts().unwrap().total(), 0, "no job was created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn option_like_links_never_reach_ytdlp_as_options() {
    let api = FakeTelegram::start().await;
    let media = media().await;
    let gate = media.hold_gate();
    let mut bot = TestBot::start(&api, "").await;
    let marker_dir = tempfile::tempdir().unwrap();
    let marker = marker_dir.path().join("pwned");
    let exec = format!("--exec=touch {}", marker.display());

    // A text_link whose URL is an option (Telegram would not send one; a
    // forged update might): refused, no job. teloxide drops the entity as not
    // a URL, so the answer is "no link"; had it passed, `parse_link` refuses.
    let text = "my video";
    let msg = api.push_text_with_entities(
        USER,
        uid(USER),
        text,
        vec![text_link_entity(text, "video", &exec)],
        Some("en"),
    );
    let refusal = reply_text(&api, USER, msg).await;
    assert!(
        refusal.contains("did not find a link") || refusal.contains("not a valid link"),
        "{refusal}"
    );

    // An option typed before a real link: only the link is taken, and it
    // reaches yt-dlp after `--`.
    let link = media.url("/hold/tiny.mp4");
    accepted(&api, USER, &format!("{exec} {link}")).await;
    assert!(gate.wait_arrived(1, T).await, "yt-dlp asked for the link");
    let downloads = bot.downloads().display().to_string();
    let procs = processes_mentioning(&downloads);
    let ytdlp = procs
        .iter()
        .find(|args| args.iter().any(|a| a == "--ignore-config"))
        .unwrap_or_else(|| panic!("yt-dlp's command line: {procs:#?}"));
    assert_eq!(ytdlp[ytdlp.len() - 2..], ["--".to_string(), link.clone()]);
    assert!(
        !ytdlp
            .iter()
            .any(|a| a.contains("--exec") || a.contains("pwned")),
        "{ytdlp:?}"
    );
    gate.release();
    api.wait_for_call("deleteMessage", T).await;

    assert!(!marker.exists(), "yt-dlp ran the injected --exec");
    let store = stop_clean(&mut bot).await;
    let jobs = all_jobs(&store);
    assert_eq!(jobs.len(), 1, "{jobs:#?}");
    assert_eq!(jobs[0].url, link);
    assert_eq!(jobs[0].state, JobState::Done);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_active_jobs_limit_refuses_with_a_reason_and_exempts_admins() {
    let api = FakeTelegram::start().await;
    let media = media().await;
    let gate = media.hold_gate();
    let mut bot = TestBot::start(&api, "[limits]\nper_user_active = 1").await;
    let admin = ADMIN as i64;

    let (_, first) = accepted(&api, USER, &media.url("/hold/tiny.mp4")).await;
    let msg = api.push_text(USER, uid(USER), &media.url("/hold/clip.mp4"), Some("en"));
    let refusal = reply_text(&api, USER, msg).await;
    assert!(
        refusal.contains("already have 1 jobs waiting or running")
            && refusal.contains("Try again when one of them finishes"),
        "{refusal}"
    );
    accepted(&api, admin, &media.url("/hold/clip.mp4")).await;
    accepted(&api, admin, &media.url("/hold/tiny.mp4?again")).await;

    // Once the first job is done, the user may send another.
    gate.release();
    api.wait_for(
        |calls| {
            calls.iter().any(|c| {
                c.is("deleteMessage")
                    && c.chat_id() == Some(USER)
                    && c.param_i64("message_id") == Some(first as i64)
            })
        },
        T,
    )
    .await;
    accepted(&api, USER, &media.url("/tiny.mp4")).await;

    bot.stop().await.unwrap();
    let store = bot.store();
    assert_eq!(store.list_user(uid(USER), 10).unwrap().len(), 2);
    assert_eq!(store.list_user(ADMIN, 10).unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_hourly_limit_says_when_to_try_again_and_exempts_admins() {
    let api = FakeTelegram::start().await;
    let media = media().await;
    let mut bot = TestBot::start(&api, "[limits]\nper_user_per_hour = 2").await;
    let admin = ADMIN as i64;
    // Held links: the jobs stay queued or downloading, which is all a limit needs.
    let link = |n: u32| media.url(&format!("/hold/tiny.mp4?n={n}"));

    accepted(&api, USER, &link(1)).await;
    accepted(&api, USER, &link(2)).await;
    let msg = api.push_text(USER, uid(USER), &link(3), Some("en"));
    let refusal = reply_text(&api, USER, msg).await;
    assert!(refusal.contains("You reached 2 jobs per hour"), "{refusal}");
    let minutes: u64 = refusal
        .split("Try again in ")
        .nth(1)
        .and_then(|r| r.split(" minutes").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("says when to try again: {refusal}"));
    assert!((1..=60).contains(&minutes), "{refusal}");
    for n in 4..7 {
        accepted(&api, admin, &link(n)).await;
    }

    bot.stop().await.unwrap();
    let store = bot.store();
    assert_eq!(store.list_user(uid(USER), 10).unwrap().len(), 2);
    assert_eq!(store.list_user(ADMIN, 10).unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_allowed_users_and_admins_may_use_a_private_bot() {
    let api = FakeTelegram::start().await;
    let media = media().await;
    let mut bot = TestBot::start(&api, "[telegram]\nallowed_users = [5]").await;
    let link = media.url("/hold/tiny.mp4");

    for text in [link.as_str(), "/start"] {
        let msg = api.push_text(6, 6, text, Some("en"));
        assert_eq!(
            reply_text(&api, 6, msg).await,
            "Sorry, this bot is private."
        );
    }
    accepted(&api, 5, &link).await;
    accepted(&api, ADMIN as i64, &link).await;

    bot.stop().await.unwrap();
    let store = bot.store();
    assert!(store.list_user(6, 10).unwrap().is_empty());
    assert_eq!(store.counts().unwrap().total(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bot_started_while_telegram_is_unreachable_serves_once_it_is_back() {
    let port = free_port();
    let api = FakeTelegram::offline(port);
    let media = media().await;
    let mut bot = TestBot::start(&api, "").await;

    // The API is down: connections are accepted and dropped unanswered. Two
    // of them mean the bot failed once and tried again.
    let down = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    for _ in 0..2 {
        let (conn, _) = tokio::time::timeout(T, down.accept())
            .await
            .expect("the bot keeps trying to reach the API")
            .unwrap();
        drop(conn);
    }
    drop(down);
    assert!(bot.is_running(), "the bot did not give up");

    api.go_online().await;
    accepted(&api, USER, &media.url("/tiny.mp4")).await;
    assert!(api.calls_to("getMe").iter().any(Call::succeeded));
    api.wait_for_calls("sendVideo", 1, T).await;
    stop_clean(&mut bot).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn progress_edits_show_a_percent_and_are_rate_limited() {
    let api = FakeTelegram::start().await;
    let media = media().await;
    // ~30 KB/s: clip.mp4 (~170 KB) takes about 6 s; progress_interval_secs = 1.
    media.set_throttle(3072, Duration::from_millis(100));
    let mut bot = TestBot::start(&api, "").await;
    let interval = Duration::from_secs(bot.config.telegram.progress_interval_secs);

    let (_, status) = accepted(&api, USER, &media.url("/slow/clip.mp4")).await;
    let sent = api.wait_for_call("sendVideo", T).await;
    assert_eq!(sent.file("video").unwrap().bytes, fixture_bytes("clip.mp4"));
    api.wait_for_call("deleteMessage", T).await;

    let edits: Vec<Call> = api
        .calls_to("editMessageText")
        .into_iter()
        .filter(|c| c.chat_id() == Some(USER) && c.param_i64("message_id") == Some(status as i64))
        .collect();
    let texts: Vec<&str> = edits.iter().map(|c| c.text().unwrap()).collect();
    let progress: Vec<usize> = (0..edits.len())
        .filter(|&i| texts[i].contains('%'))
        .collect();
    assert!(progress.len() >= 2, "progress edits: {texts:#?}");
    for &i in &progress {
        assert!(texts[i].contains(" / "), "size of total: {}", texts[i]);
    }
    // Percents only grow.
    let percents: Vec<u32> = progress
        .iter()
        .map(|&i| {
            let head = texts[i].split('%').next().unwrap();
            let digits: String = head
                .chars()
                .rev()
                .take_while(char::is_ascii_digit)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            digits.parse().unwrap()
        })
        .collect();
    assert!(percents.windows(2).all(|w| w[0] <= w[1]), "{percents:?}");
    // A progress edit never follows the previous edit sooner than the interval
    // (with slack for the request's own travel time).
    for &i in progress.iter().filter(|&&i| i > 0) {
        let gap = edits[i].received_at - edits[i - 1].received_at;
        assert!(
            gap >= interval.mul_f64(0.9),
            "edit {i} came {gap:?} after the previous one: {texts:#?}"
        );
    }
    for w in edits.windows(2) {
        assert_ne!(w[0].text(), w[1].text(), "an identical edit was sent twice");
    }
    assert!(
        !edits
            .iter()
            .any(|c| c.error().is_some_and(|e| e.contains("not modified"))),
        "{texts:#?}"
    );
    stop_clean(&mut bot).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_is_refused_to_non_admins_with_a_short_message() {
    let api = FakeTelegram::start().await;
    let _bot = TestBot::start(&api, "").await;
    let msg = api.push_text(USER, uid(USER), "/health", Some("en"));
    let text = reply_text(&api, USER, msg).await;
    assert_eq!(text, "This command is for the bot's admins only.");
}
