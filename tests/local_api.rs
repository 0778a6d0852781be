//! `telegram.local_api = true`: files go to a `telegram-bot-api --local`
//! server by absolute path (`file://`), which reads them from disk, for
//! video, audio, documents and the document fallback; and the job's folder
//! stays until the server has answered, even when the job is cancelled
//! meanwhile.

mod support;

use std::path::Path;
use std::time::Duration;

use support::bot::{media, TestBot};
use support::fake_telegram::{Call, Failure, FakeTelegram};
use support::fixture_bytes;

const T: Duration = Duration::from_secs(60);
const LOCAL: &str = "[telegram]\nlocal_api = true";

/// The one file `call` carried under `field`: read by the server from a
/// path under `downloads`, none in the body; the fixture's bytes when the
/// file is the fixture as downloaded (`None` for audio yt-dlp converted).
fn assert_sent_by_path(call: &Call, field: &str, downloads: &Path, fixture: Option<&str>) {
    assert!(call.succeeded(), "{:?}", call.error());
    let files: Vec<_> = call.files.iter().filter(|f| f.field == field).collect();
    assert_eq!(files.len(), 1, "{:#?}", call.files);
    let path = files[0]
        .by_path
        .as_ref()
        .expect("sent by path, not in the body");
    assert!(
        path.is_absolute() && path.starts_with(downloads),
        "{path:?}"
    );
    assert!(!files[0].bytes.is_empty(), "{path:?} was empty");
    if let Some(name) = fixture {
        assert!(
            files[0].bytes == fixture_bytes(name),
            "{path:?} is not {name}"
        );
    }
    assert_eq!(
        call.param_str(field),
        Some(format!("file://{}", path.display()).as_str())
    );
}

/// The downloads folder as the bot names it, with symlinks (/tmp) resolved.
fn downloads(bot: &TestBot) -> std::path::PathBuf {
    std::fs::canonicalize(bot.dir.path())
        .unwrap()
        .join("data/downloads")
}

async fn local_bot(api: &FakeTelegram) -> TestBot {
    api.set_local_mode(true);
    TestBot::start(api, LOCAL).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn video_audio_and_documents_go_by_path() {
    let api = FakeTelegram::start().await;
    let media = media().await;
    let bot = local_bot(&api).await;
    let downloads = downloads(&bot);

    api.push_text(1001, 1001, &media.url("/tiny.mp4"), None);
    let video = api.wait_for_calls("sendVideo", 1, T).await;
    assert_sent_by_path(&video[0], "video", &downloads, Some("tiny.mp4"));

    api.push_text(
        1001,
        1001,
        &format!("/audio {}", media.url("/tiny.m4a")),
        None,
    );
    let audio = api.wait_for_calls("sendAudio", 1, T).await;
    assert_sent_by_path(&audio[0], "audio", &downloads, None);

    api.push_text(1001, 1001, &media.url("/blob.bin"), None);
    let doc = api.wait_for_calls("sendDocument", 1, T).await;
    assert_sent_by_path(&doc[0], "document", &downloads, Some("blob.bin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_video_goes_again_as_a_document_by_path() {
    let api = FakeTelegram::start().await;
    let media = media().await;
    let bot = local_bot(&api).await;
    let downloads = downloads(&bot);
    api.fail_next(
        "sendVideo",
        Failure::BadRequest("VIDEO_CONTENT_TYPE_INVALID".into()),
    );

    api.push_text(1001, 1001, &media.url("/tiny.mp4"), None);
    let doc = api.wait_for_calls("sendDocument", 1, T).await;
    assert_sent_by_path(&doc[0], "document", &downloads, Some("tiny.mp4"));
    let video = api.calls_to("sendVideo");
    assert_eq!(video.len(), 1);
    assert!(!video[0].succeeded());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_folder_stays_until_the_local_server_answered_even_when_cancelled() {
    let api = FakeTelegram::start().await;
    let media = media().await;
    let bot = local_bot(&api).await;
    // The server takes the request and holds it before it reads the file.
    let gate = api.hold_next("sendVideo");
    api.push_text(1001, 1001, &media.url("/tiny.mp4"), None);
    assert!(gate.wait_arrived(1, T).await, "no sendVideo");

    let folder = std::fs::read_dir(bot.downloads())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .next()
        .expect("the job's folder");
    let name = folder.file_name().unwrap().to_string_lossy().into_owned();
    let short = &name[name.len() - 8..];
    api.push_text(1001, 1001, &format!("/cancel {short}"), None);
    api.wait_for_messages(
        1001,
        |m| {
            m.iter()
                .any(|m| m.text.as_deref().is_some_and(|t| t.contains("cancelled")))
        },
        T,
    )
    .await;
    assert!(
        folder.exists(),
        "the folder went while the server held the request"
    );

    gate.release();
    let downloads = downloads(&bot);
    assert!(api.wait_succeeded("sendVideo", 1, T).await);
    assert_sent_by_path(
        &api.calls_to("sendVideo")[0],
        "video",
        &downloads,
        Some("tiny.mp4"),
    );
    // Telegram has the file: the job is done after all, and cleaned.
    let deadline = std::time::Instant::now() + T;
    while folder.exists() {
        assert!(std::time::Instant::now() < deadline, "folder never removed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
