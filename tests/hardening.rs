//! Issue 10, "Processes, secrets, groups, output", against the real binary
//! or the bot in-process, real yt-dlp and ffmpeg, and the fake Bot API: no
//! process of a killed run survives the next start, children never see the
//! token, the operator's cookies file is never written, group chats stay
//! quiet and buttons obey only their owner, job texts are printable, and a
//! 2,000-character Persian title survives yt-dlp's output.

mod support;

use std::time::Duration;

use support::binary::{processes_mentioning, run_tgdl, write_config, BinaryTest};
use support::bot::{answer_to, media, wait_for_text, TestBot, TOKEN};
use support::fake_telegram::{FakeTelegram, SentMessage};
use support::fixture_bytes;
use tgdl::download::{run_ytdlp, Want, YtDlpArgs};
use tgdl::job::JobState;
use tgdl::store::{JobStore, SledStore};
use tokio_util::sync::CancellationToken;

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

/// The nice value of a process, field 19 of its stat.
fn niceness(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at 3.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19 - 3)?.parse().ok()
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
/// ffmpeg has it (or any `TGDL_*`) in its environment; both run 10 steps
/// nicer than the bot, in the `SCHED_IDLE` class.
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
        // Batch work: the scheduler favours the bot's replies over it.
        let (bot_nice, child_nice) = (niceness(bot.pid()).unwrap(), niceness(*pid));
        assert_eq!(
            child_nice,
            Some((bot_nice + tgdl::download::CHILD_NICENESS).min(19)),
            "{cmd} runs at the bot's niceness {bot_nice}"
        );
        // And in the idle class, so a waking bot thread takes the core at once.
        // SAFETY: a plain system call on another process's id.
        let policy = unsafe { libc::sched_getscheduler(*pid) };
        assert_eq!(
            policy,
            libc::SCHED_IDLE,
            "{cmd} runs in scheduling class {policy}"
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
    // The leftover process is ended during recovery, before its summary
    // line is written: wait for the line, not just for the process to go.
    let summary = poll(T, || {
        bot.log_text()
            .lines()
            .find(|l| l.contains("Recovery:"))
            .map(str::to_owned)
    })
    .await
    .unwrap_or_else(|| panic!("no recovery summary; log:\n{}", bot.log_text()));
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

/// The callback data of every button on a message the bot sent.
fn buttons(m: &SentMessage) -> Vec<(String, String)> {
    m.reply_markup
        .as_ref()
        .map(support::keyboard_buttons)
        .unwrap_or_default()
}

/// The bot's message in `chat` whose text satisfies `pred` (waiting for it).
async fn bot_message(api: &FakeTelegram, chat: i64, pred: impl Fn(&str) -> bool) -> SentMessage {
    wait_for_text(api, chat, &pred, T)
        .await
        .into_iter()
        .rfind(|m| m.from_bot && m.text.as_deref().is_some_and(&pred))
        .unwrap()
}

const GROUP: i64 = -100_777;
const ALICE: u64 = 7001;
const BOB: u64 = 7002;

/// In a group, chatter without a link (plain text, a command we do not
/// know, a command for another bot) gets no reply; our commands and links do.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_a_group_only_links_and_our_commands_are_answered() {
    let api = FakeTelegram::start().await;
    let media = media().await;
    let _bot = TestBot::start(&api, "").await;
    for text in [
        "hello everyone",
        "/frobnicate",
        "/help@otherbot",
        "/start@otherbot now",
    ] {
        api.push_text(GROUP, ALICE, text, None);
    }
    // Handled in order after those: once it is answered, they were seen.
    let help = api.push_text(GROUP, ALICE, "/help", None);
    let link = api.push_text(GROUP, BOB, &media.url("/tiny.mp4?group"), None);
    api.wait_for(
        |c| {
            c.iter()
                .any(|c| c.is("sendVideo") && c.chat_id() == Some(GROUP) && c.succeeded())
        },
        T,
    )
    .await;
    let replied_to: Vec<Option<i32>> = api
        .calls_to("sendMessage")
        .iter()
        .filter(|c| c.chat_id() == Some(GROUP))
        .map(|c| c.reply_to())
        .collect();
    assert_eq!(
        replied_to,
        vec![Some(help), Some(link)],
        "{}",
        api.describe_calls()
    );
    // A private chat still hears that a message had no link.
    api.push_text(ALICE as i64, ALICE, "hello bot", None);
    bot_message(&api, ALICE as i64, |t| t.contains("link")).await;
}

/// Alice's `/settings` panel in a group: Bob's press is refused and changes
/// nothing (neither her settings, nor his, nor her message); hers works.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn settings_buttons_act_only_for_the_user_they_were_shown_to() {
    let api = FakeTelegram::start().await;
    let _bot = TestBot::start(&api, "").await;
    api.push_text(GROUP, ALICE, "/settings", None);
    let panel = bot_message(&api, GROUP, |t| t.starts_with("Your settings")).await;
    let (_, audio) = buttons(&panel)
        .into_iter()
        .find(|(label, _)| label == "audio")
        .unwrap_or_else(|| panic!("{:?}", buttons(&panel)));
    assert_eq!(audio, format!("s:{ALICE}:k:a"));
    assert!(buttons(&panel).iter().all(|(_, d)| d.len() <= 64));

    let q = api.push_callback(GROUP, BOB, panel.message_id, &audio);
    let said = answer_to(&api, &q).await;
    assert!(said.contains("someone else's settings"), "{said}");
    let after = api.message(GROUP, panel.message_id).unwrap();
    assert_eq!(after.history.len(), 1, "not edited: {:?}", after.history);
    for user in [ALICE, BOB] {
        api.push_text(user as i64, user, "/settings", None);
        let view = bot_message(&api, user as i64, |t| t.starts_with("Your settings")).await;
        assert!(
            view.text.as_deref().unwrap().contains("format: video"),
            "{view:?}"
        );
    }

    let q = api.push_callback(GROUP, ALICE, panel.message_id, &audio);
    assert_eq!(answer_to(&api, &q).await, "Saved.");
    let after = api.message(GROUP, panel.message_id).unwrap();
    assert!(
        after.text.as_deref().unwrap().contains("format: audio"),
        "{after:?}"
    );
}

/// The choice buttons under Alice's link: Bob's press is refused by the
/// job lookup ("not yours") and chooses nothing; Alice's choice is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn job_buttons_act_only_for_the_user_they_were_shown_to() {
    let api = FakeTelegram::start().await;
    let media = media().await;
    let _bot = TestBot::start_asking(&api, "[telegram]\nchoice_wait_secs = 120", &[ALICE]).await;
    api.push_text(GROUP, ALICE, &media.url("/tiny.mp4?buttons"), None);
    let ack = bot_message(&api, GROUP, |t| t.contains("Accepted")).await;
    let data = |label: &str| {
        buttons(&ack)
            .into_iter()
            .find(|(l, _)| l.contains(label))
            .map(|(_, d)| d)
            .unwrap_or_else(|| panic!("{label} in {:?}", buttons(&ack)))
    };
    for label in ["Audio", "Cancel"] {
        let q = api.push_callback(GROUP, BOB, ack.message_id, &data(label));
        let said = answer_to(&api, &q).await;
        assert!(said.contains("is not yours"), "{label}: {said}");
    }
    assert_eq!(api.message(GROUP, ack.message_id).unwrap().history.len(), 1);
    let q = api.push_callback(GROUP, ALICE, ack.message_id, &data("Video"));
    answer_to(&api, &q).await;
    api.wait_for(
        |c| {
            c.iter()
                .any(|c| c.is("sendVideo") && c.chat_id() == Some(GROUP) && c.succeeded())
        },
        T,
    )
    .await;
    assert_eq!(api.count("sendAudio"), 0);
}

/// Whether `c` is a character no job text may show: a control character
/// other than our own line breaks, or a bidi embedding, override or isolate.
fn unprintable(c: char) -> bool {
    (c.is_control() && c != '\n')
        || ('\u{202A}'..='\u{202E}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

/// A page whose title carries terminal escapes, a C1 CSI, a bell and a
/// right-to-left override: yt-dlp keeps them, the job stores them, and
/// neither `/job` nor `tgdl job` (plain or `--json`) shows them raw.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn job_and_tgdl_job_show_a_hostile_title_without_control_characters() {
    let api = FakeTelegram::start().await;
    let media = media().await;
    let mut bot = TestBot::start(&api, "").await;
    let hostile = "Evil\u{1b}[2J\u{1b}]0;owned\u{7} \u{9b}31m \u{202E}4pm.exe\u{202C}";
    media.add_page(
        "evil",
        &format!(
            "<!DOCTYPE html><html><head><title>{hostile}</title></head>\
             <body><video src=\"/tiny.mp4\"></video></body></html>"
        ),
    );
    let chat = 811;
    api.push_text(chat, chat as u64, &media.url("page/evil"), None);
    let ack = bot_message(&api, chat, |t| t.contains("Accepted")).await;
    let ack = ack.text.unwrap();
    let short = ack
        .split("job ")
        .nth(1)
        .and_then(|r| r.split('.').next())
        .unwrap_or_else(|| panic!("{ack}"))
        .to_string();
    api.wait_for(
        |c| {
            c.iter()
                .any(|c| c.is("sendVideo") && c.chat_id() == Some(chat) && c.succeeded())
        },
        T,
    )
    .await;
    api.push_text(chat, chat as u64, &format!("/job {short}"), None);
    let details = bot_message(&api, chat, |t| t.contains("title:")).await;
    let details = details.text.unwrap();
    assert!(!details.chars().any(unprintable), "{details:?}");
    assert!(details.contains("Evil[2J]0;owned"), "{details}");

    bot.stop().await.unwrap();
    let store = bot.store();
    let job = store.list_state(JobState::Done, 10).unwrap().remove(0);
    let title = job.title.clone().unwrap();
    assert!(
        title.contains('\u{1b}') && title.contains('\u{202E}') && title.contains('\u{9b}'),
        "the hostile characters reached the job: {title:?}"
    );
    drop(store);
    let cfg = write_config(
        bot.dir.path(),
        &format!("[storage]\ndata_dir = {:?}\n", bot.config.storage.data_dir),
    );
    let id = job.id.to_string();
    let out = run_tgdl(&["job", &id], &cfg);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.chars().any(unprintable), "{text:?}");
    assert!(text.contains("title    Evil[2J]0;owned"), "{text}");
    let out = run_tgdl(&["job", &id, "--json"], &cfg);
    let json = String::from_utf8(out.stdout).unwrap();
    assert!(!json.chars().any(unprintable), "{json:?}");
    let row: serde_json::Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(
        row["title"].as_str(),
        Some(title.as_str()),
        "--json keeps the value"
    );
}

/// Real yt-dlp from PATH downloading `url` into `tmp/downloads`, ffmpeg on.
fn ytdlp_args(tmp: &std::path::Path, url: String) -> YtDlpArgs {
    let mut a = YtDlpArgs::new(
        "yt-dlp",
        url,
        &tmp.join("downloads"),
        uuid::Uuid::now_v7(),
        Want::Video,
    );
    a.has_ffmpeg = true;
    a.upload_limit = Some(50 * 1024 * 1024);
    a
}

async fn download(a: &YtDlpArgs) -> tgdl::download::DownloadOutput {
    run_ytdlp(a, CancellationToken::new(), T, |_| {})
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// yt-dlp writes its cookies back to the file it is given when it exits:
/// it gets a copy in the job's folder, and the operator's file keeps its
/// bytes and its mtime. The cookie still reaches the site.
#[tokio::test]
async fn the_cookies_file_is_copied_for_each_run_and_never_written() {
    use std::os::unix::fs::PermissionsExt;
    let media = media().await;
    let tmp = tempfile::tempdir().unwrap();
    let cookies = tmp.path().join("cookies.txt");
    std::fs::write(
        &cookies,
        "# Netscape HTTP Cookie File\n127.0.0.1\tFALSE\t/\tFALSE\t0\tsession\tsecret-value\n",
    )
    .unwrap();
    // An mtime long past, so that any rewrite shows, even of equal bytes.
    let past = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    std::fs::File::options()
        .write(true)
        .open(&cookies)
        .unwrap()
        .set_modified(past)
        .unwrap();
    let before = std::fs::read(&cookies).unwrap();

    for run in 0..2 {
        let mut a = ytdlp_args(tmp.path(), media.url(&format!("/tiny.mp4?cookies{run}")));
        a.cookies = Some(cookies.clone());
        download(&a).await;
        assert_eq!(std::fs::read(&cookies).unwrap(), before, "run {run}");
        assert_eq!(
            std::fs::metadata(&cookies).unwrap().modified().unwrap(),
            past,
            "run {run}"
        );
        let copy = a.output_dir.join(".tgdl/cookies.txt");
        let written = std::fs::read_to_string(&copy).unwrap();
        assert!(
            written.contains("secret-value") && written.as_bytes() != before,
            "yt-dlp wrote its copy back: {written}"
        );
        assert_eq!(
            std::fs::metadata(&copy).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let sent = media.requests_to("/tiny.mp4");
    assert!(
        sent.iter()
            .filter(|r| r
                .header("cookie")
                .is_some_and(|c| c.contains("session=secret-value")))
            .count()
            >= 2,
        "{sent:?}"
    );
}

/// A page titled with 2,000 Persian characters: yt-dlp prints the title as
/// `\uXXXX` escapes (a 12 KB meta line, past the old 8 KiB cut), and the
/// download still yields the file and the whole title.
#[tokio::test]
async fn a_2000_character_persian_title_survives_a_real_download() {
    let media = media().await;
    let tmp = tempfile::tempdir().unwrap();
    let letters: Vec<char> = "ابپتثجچحخدذرزژسشصضطظعغفقکگلمنوهی".chars().collect();
    let title: String = (0..2000)
        .map(|i| {
            if i % 7 == 6 {
                ' '
            } else {
                letters[i % letters.len()]
            }
        })
        .collect();
    assert_eq!(title.chars().count(), 2000);
    media.add_page(
        "persian",
        &format!(
            "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{title}</title></head>\
             <body><video src=\"/tiny.mp4\"></video></body></html>"
        ),
    );
    let a = ytdlp_args(tmp.path(), media.url("page/persian"));
    let out = download(&a).await;
    assert_eq!(
        std::fs::read(&out.file_path).unwrap(),
        fixture_bytes("tiny.mp4")
    );
    let got = out.title.unwrap();
    // The generic extractor numbers a page's media: "<title> (1)".
    assert!(
        got.starts_with(&title),
        "{} characters: {got}",
        got.chars().count()
    );
}
