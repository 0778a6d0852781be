//! The managed yt-dlp updates itself (issue 14), driven as an admin through
//! the fake Bot API. Releases come from a folder of stand-in wheels on this
//! machine (pip `--find-links`), never from the live registry; the stand-in
//! hands real runs to the real yt-dlp, so jobs really download from the
//! loopback media server.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use support::bot::{media, wait_for_text, TestBot, ADMIN};
use support::fake_telegram::{FakeTelegram, SentMessage};
use support::standin::{build_wheel, runs};
use tgdl::botapi::pacer::PacerConfig;
use tgdl::botapi::Api;
use tgdl::download::managed::{Attempt, Layout, ManagedError, Outcome, State};
use tgdl::download::source::Source;
use tgdl::download::YtDlp;
use tgdl::job::{now_ms, HOUR_MS};
use tgdl::ops::health::HealthState;
use tgdl::ops::update::{self, Request, UpdateTask};
use tgdl::pipeline::JobService;
use tgdl::store::SledStore;

/// Installs make a venv and run pip: generous on a shared 2-core machine.
const T: Duration = Duration::from_secs(180);
const USER: i64 = 4242;

/// The install folder a pointer (`current`, `previous`) names.
fn pointed(root: &Path, name: &str) -> PathBuf {
    root.join(std::fs::read_link(root.join(name)).unwrap_or_else(|e| panic!("{name}: {e}")))
}

fn installs(root: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("i-"))
        .collect();
    v.sort();
    v
}

/// The first message of the bot in `chat` after message `after` whose text
/// satisfies `pred`.
async fn bot_says_after(
    api: &FakeTelegram,
    chat: i64,
    after: i32,
    pred: impl Fn(&str) -> bool,
) -> String {
    let hit = |m: &SentMessage| {
        m.from_bot && m.message_id > after && m.text.as_deref().is_some_and(&pred)
    };
    let msgs = api
        .wait_for_messages(chat, |ms| ms.iter().any(hit), T)
        .await;
    msgs.iter()
        .find(|m| hit(m))
        .and_then(|m| m.text.clone())
        .unwrap()
}

/// The admin sends `text`; the bot's first answer after it that satisfies
/// `pred`, and the id of the admin's message (to wait for later ones).
async fn admin_says(api: &FakeTelegram, text: &str, pred: impl Fn(&str) -> bool) -> (String, i32) {
    let admin = ADMIN as i64;
    let sent = api.push_text(admin, ADMIN, text, Some("en"));
    (bot_says_after(api, admin, sent, pred).await, sent)
}

/// Polls until `path` no longer exists (nothing notifies a removal).
async fn wait_gone(path: &Path) {
    let deadline = tokio::time::Instant::now() + T;
    while path.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} still there",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The user sends `url`; the id of that message.
fn send_link(api: &FakeTelegram, url: &str) -> i32 {
    api.push_text(USER, USER as u64, url, Some("en"))
}

/// Waits until the video for the user's message `msg` is delivered.
async fn delivered(api: &FakeTelegram, msg: i32) {
    let video = |m: &SentMessage| m.from_bot && m.kind == "video" && m.reply_to == Some(msg);
    let msgs = api
        .wait_for_messages(USER, |ms| ms.iter().any(video), T)
        .await;
    assert!(
        msgs.iter().any(video),
        "the video for message {msg} was sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_update_switches_new_jobs_a_broken_release_is_refused_and_rollback_goes_back() {
    let api = FakeTelegram::start().await;
    let media = media().await;
    let wheels = tempfile::tempdir().unwrap();
    build_wheel(wheels.path(), "2026.1.1", false);
    let extra = format!(
        "[downloader]\nytdlp = \"managed\"\nytdlp_source = \"{}\"\nupdate_interval_hours = 0",
        wheels.path().display()
    );
    // First start: 2026.1.1 is installed and tested before the bot serves.
    let _bot = TestBot::start(&api, &extra).await;
    let root = _bot.config.tools_dir().join("ytdlp");
    let (health, _) = admin_says(&api, "/health", |t| t.contains("tgdl is")).await;
    assert!(health.contains("yt-dlp 2026.1.1"), "{health}");
    assert!(
        health.contains("yt-dlp managed by tgdl: installed"),
        "{health}"
    );
    assert!(
        health.contains("last update attempt: ") && health.contains("installed 2026.1.1"),
        "{health}"
    );
    let v1 = pointed(&root, "current");

    // Non-admins cannot update.
    api.push_text(USER, USER as u64, "/update", Some("en"));
    wait_for_text(&api, USER, |t| t.contains("admins only"), T).await;

    // A job is downloading with 2026.1.1 (held by the media server) when
    // the admin updates to 2026.2.1.
    let gate = media.hold_gate();
    let held = send_link(&api, &media.url("/hold/tiny.mp4?during"));
    assert!(gate.wait_arrived(1, T).await, "the held download started");
    build_wheel(wheels.path(), "2026.2.1", false);
    let (started, asked) =
        admin_says(&api, "/update", |t| t.starts_with("⏳ Updating yt-dlp")).await;
    assert!(started.contains("Admins get the result"), "{started}");
    let done = bot_says_after(&api, ADMIN as i64, asked, |t| {
        t.starts_with("✅ yt-dlp updated")
    })
    .await;
    assert_eq!(
        done,
        "✅ yt-dlp updated: 2026.1.1 → 2026.2.1. New downloads use 2026.2.1; running ones finish with 2026.1.1. /update rollback goes back."
    );
    let v2 = pointed(&root, "current");
    assert_ne!(v1, v2);
    assert_eq!(
        pointed(&root, "previous"),
        v1,
        "the old install is kept for rollback"
    );

    // The running job finishes with the old install; a new one uses the new.
    gate.release();
    delivered(&api, held).await;
    assert!(runs(&v1).contains("?during"), "{}", runs(&v1));
    assert!(!runs(&v2).contains("?during"), "{}", runs(&v2));
    delivered(&api, send_link(&api, &media.url("/tiny.mp4?after"))).await;
    assert!(runs(&v2).contains("?after"), "{}", runs(&v2));
    assert!(!runs(&v1).contains("?after"));

    // A broken release (its extractor fails the self-test) is refused:
    // nothing changes, and the admin is told why.
    build_wheel(wheels.path(), "2026.3.1", true);
    let (failed, _) = admin_says(&api, "/update", |t| {
        t.starts_with("⚠️ yt-dlp update failed")
    })
    .await;
    assert!(
        failed.contains("downloads keep using 2026.2.1")
            && failed.contains("2026.3.1 failed its self-test")
            && failed.contains("Unable to extract"),
        "{failed}"
    );
    assert_eq!(pointed(&root, "current"), v2);
    assert_eq!(pointed(&root, "previous"), v1);
    assert_eq!(
        installs(&root),
        vec![v1.clone(), v2.clone()],
        "the broken install's folder is gone"
    );
    let (health, _) = admin_says(&api, "/health", |t| t.contains("failed, nothing changed")).await;
    assert!(health.contains("yt-dlp 2026.2.1"), "{health}");

    // /update rollback goes back; new jobs run with 2026.1.1 again.
    let (back, _) = admin_says(&api, "/update rollback", |t| t.starts_with("↩️")).await;
    assert_eq!(
        back,
        "↩️ yt-dlp rolled back: 2026.2.1 → 2026.1.1. New downloads use 2026.1.1."
    );
    assert_eq!(pointed(&root, "current"), v1);
    delivered(&api, send_link(&api, &media.url("/tiny.mp4?rolledback"))).await;
    assert!(runs(&v1).contains("?rolledback"));
    assert!(!runs(&v2).contains("?rolledback"));

    // The next good release: the install before the previous one is removed.
    std::fs::remove_file(wheels.path().join("yt_dlp-2026.3.1-py3-none-any.whl")).unwrap();
    build_wheel(wheels.path(), "2026.4.1", false);
    admin_says(&api, "/update", |t| {
        t.contains("updated: 2026.1.1 → 2026.4.1")
    })
    .await;
    let v4 = pointed(&root, "current");
    assert_eq!(pointed(&root, "previous"), v1);
    // Removal follows the message (a venv takes seconds to delete).
    wait_gone(&v2).await;
    assert_eq!(
        installs(&root),
        vec![v1.clone(), v4.clone()],
        "2026.2.1 was removed"
    );
    let (health, _) = admin_says(&api, "/health", |t| t.contains("yt-dlp 2026.4.1")).await;
    assert!(health.contains("updated 2026.1.1 → 2026.4.1"), "{health}");
    assert!(
        health.contains("previous 2026.1.1 kept for /update rollback"),
        "{health}"
    );

    // Up to date: said so, nothing changes.
    admin_says(&api, "/update", |t| {
        t.contains("2026.4.1 is the newest release")
    })
    .await;
    assert_eq!(pointed(&root, "current"), v4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_from_an_unreachable_source_changes_nothing() {
    let wheels = tempfile::tempdir().unwrap();
    build_wheel(wheels.path(), "2026.1.1", false);
    let tools = tempfile::tempdir().unwrap();
    let layout = Layout::new(tools.path());
    let first = layout
        .update(&Source::Folder(wheels.path().into()))
        .await
        .unwrap();
    assert_eq!(
        first,
        Outcome::Installed {
            version: "2026.1.1".into()
        }
    );
    let before = installs(&layout.root);

    // No network: an index on a loopback port nobody listens on.
    let dead = format!("http://127.0.0.1:{}/simple", support::free_port());
    let err = layout.update(&Source::Index(dead)).await.unwrap_err();
    assert!(matches!(err, ManagedError::Install(_)), "{err}");
    assert_eq!(layout.current().unwrap().version, "2026.1.1");
    assert_eq!(
        installs(&layout.root),
        before,
        "the fresh folder was removed"
    );
    match layout.state().last_attempt.map(|a| a.outcome) {
        Some(Outcome::Failed { error }) => {
            assert!(error.contains("installing yt-dlp failed"), "{error}")
        }
        other => panic!("{other:?}"),
    }
    // Nothing to go back to after one install.
    assert!(matches!(
        layout.rollback().await,
        Err(ManagedError::NoPrevious)
    ));
}

/// The updater task over a fresh store, telling admins through the fake API.
fn updater_for(
    api: &FakeTelegram,
    dir: &Path,
    extra: &str,
    ytdlp: impl FnOnce(&tgdl::config::Config) -> YtDlp,
) -> (Arc<JobService>, Arc<HealthState>, UpdateTask) {
    let config = support::bot::test_config(dir, api, extra);
    let ytdlp = ytdlp(&config);
    let store =
        tgdl::store::OnBlockingPool::shared(Arc::new(SledStore::open(&config.db_dir()).unwrap()));
    let jobs = Arc::new(JobService::new(Arc::new(config), store, None).unwrap());
    let paced = Api::new(
        api.bot(),
        PacerConfig::default(),
        CancellationToken::new(),
        TaskTracker::new(),
    );
    let health = Arc::new(HealthState::default());
    let (_, task) = update::spawn_parts(jobs.clone(), Some(paced), ytdlp, health.clone());
    (jobs, health, task)
}

/// An install folder as the updater leaves one, with a shell script for
/// yt-dlp that only knows its version.
fn fake_install(root: &Path, name: &str, version: &str, installed_at: u64) {
    let bin = root.join(name).join("venv/bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = bin.join("yt-dlp");
    std::fs::write(&script, format!("#!/bin/sh\necho {version}\n")).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let meta = serde_json::json!({"version": version, "installed_at": installed_at});
    std::fs::write(root.join(name).join("installed.json"), meta.to_string()).unwrap();
}

/// The bot's messages in the admin's chat, in order.
fn admin_texts(api: &FakeTelegram) -> Vec<String> {
    api.sent_messages(ADMIN as i64)
        .into_iter()
        .filter(|m| m.from_bot)
        .filter_map(|m| m.text)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extractor_errors_on_an_old_release_update_at_once_and_right_after_an_update_offer_rollback(
) {
    let api = FakeTelegram::start().await;
    let dir = tempfile::tempdir().unwrap();
    let wheels = tempfile::tempdir().unwrap();
    build_wheel(wheels.path(), "2026.2.1", false);
    let extra = format!(
        "[downloader]\nytdlp = \"managed\"\nytdlp_source = \"{}\"\nupdate_interval_hours = 24",
        wheels.path().display()
    );
    // Installed a week ago; the last attempt an hour ago, so the interval
    // is not due: only the spike can start an update.
    let layout = Layout::new(&dir.path().join("data/tools"));
    let now = now_ms();
    fake_install(&layout.root, "i-1", "2026.1.1", now - 7 * 24 * HOUR_MS);
    std::os::unix::fs::symlink("i-1", layout.root.join("current")).unwrap();
    layout
        .save_state(&State {
            last_attempt: Some(Attempt {
                at: now - HOUR_MS,
                outcome: Outcome::UpToDate {
                    version: "2026.1.1".into(),
                },
            }),
            newest_known: None,
        })
        .unwrap();
    let (jobs, _, mut task) = updater_for(&api, dir.path(), &extra, |_| {
        YtDlp::managed(layout.clone()).unwrap()
    });

    // A quiet round changes nothing.
    task.tick().await;
    assert!(admin_texts(&api).is_empty());
    assert_eq!(layout.current().unwrap().version, "2026.1.1");

    for _ in 0..update::SPIKE {
        jobs.guard.note_extractor_error(now_ms());
    }
    task.tick().await;
    assert_eq!(
        admin_texts(&api),
        vec![
            "⚠️ 5 extractor errors in the last hour on yt-dlp 2026.1.1: sites may have changed, updating yt-dlp now.".to_string(),
            "✅ yt-dlp updated: 2026.1.1 → 2026.2.1. New downloads use 2026.2.1; running ones finish with 2026.1.1. /update rollback goes back.".to_string(),
        ]
    );
    assert_eq!(layout.current().unwrap().version, "2026.2.1");

    // The errors before the switch do not count against the new release.
    task.tick().await;
    assert_eq!(admin_texts(&api).len(), 2);
    for _ in 0..update::SPIKE {
        jobs.guard.note_extractor_error(now_ms());
    }
    task.tick().await;
    task.tick().await;
    let texts = admin_texts(&api);
    assert_eq!(texts.len(), 3, "offered once: {texts:?}");
    assert_eq!(
        texts[2],
        "⚠️ 5 extractor errors since yt-dlp was updated to 2026.2.1. If the new release is to blame, /update rollback goes back to 2026.1.1."
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_yt_dlp_is_never_changed_but_an_old_one_is_reported() {
    let api = FakeTelegram::start().await;
    let dir = tempfile::tempdir().unwrap();
    let wheels = tempfile::tempdir().unwrap();
    build_wheel(wheels.path(), "2026.3.1", false);
    let own = dir.path().join("own");
    fake_install(&own, "i-0", "2026.1.1", 0);
    let bin = own.join("i-0/venv/bin/yt-dlp");
    let extra = format!(
        "[downloader]\nytdlp = \"{}\"\nytdlp_source = \"{}\"\nstale_after_days = 14",
        bin.display(),
        wheels.path().display()
    );
    let (jobs, health, mut task) =
        updater_for(&api, dir.path(), &extra, |_| YtDlp::operator(bin.clone()));
    let before = std::fs::read(&bin).unwrap();

    task.tick().await;
    task.tick().await;
    let path = bin.display().to_string();
    assert_eq!(
        admin_texts(&api),
        vec![format!("🟠 yt-dlp 2026.1.1 ({path}, managed by the operator) is 59 days behind the newest release 2026.3.1. Sites break on old releases: please update it.")],
        "told once"
    );
    let detail = health.ytdlp_detail.read().unwrap().clone();
    assert!(
        detail.contains(&format!("managed by the operator ({path})"))
            && detail.contains("newest known release: 2026.3.1")
            && detail.contains("59 days newer"),
        "{detail}"
    );
    assert_eq!(*health.ytdlp_version.read().unwrap(), "2026.1.1");

    // /update and /update rollback change nothing and say why.
    task.handle(Request::Update).await;
    task.handle(Request::Rollback).await;
    let texts = admin_texts(&api);
    assert_eq!(texts.len(), 3, "{texts:?}");
    for t in &texts[1..] {
        assert!(t.contains("the bot never changes it"), "{t}");
    }
    assert_eq!(std::fs::read(&bin).unwrap(), before);
    assert!(!jobs.config.tools_dir().join("ytdlp/current").exists());
}

#[test]
fn tgdl_update_installs_reports_and_refuses_what_it_cannot_do() {
    use support::binary::{binary_config, run_tgdl, write_config};
    let dir = tempfile::tempdir().unwrap();
    let wheels = tempfile::tempdir().unwrap();
    build_wheel(wheels.path(), "2026.1.1", false);
    let extra = format!(
        "[downloader]\nytdlp = \"managed\"\nytdlp_source = \"{}\"",
        wheels.path().display()
    );
    let config = write_config(
        dir.path(),
        &binary_config(dir.path(), "http://127.0.0.1:9", &extra),
    );
    let text = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };

    // Nothing to go back to yet: a clear error, exit 1.
    let out = run_tgdl(&["update", "rollback"], &config);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("no previous yt-dlp install"),
        "{}",
        text(&out)
    );
    // A word that is not an action is a usage error.
    let out = run_tgdl(&["update", "downgrade"], &config);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    let out = run_tgdl(&["update"], &config);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "✅ yt-dlp 2026.1.1 installed."
    );
    let out = run_tgdl(&["update"], &config);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "✅ yt-dlp 2026.1.1 is the newest release; nothing changed."
    );
}
