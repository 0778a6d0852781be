//! Issue 6 through the fake Bot API, real yt-dlp and the media server: the
//! Video / Audio / Document buttons, "don't ask", settings that survive a
//! restart, and playlists (in order, capped, and surviving kill -9).

mod support;

use std::time::Duration;

use support::binary::BinaryTest;
use support::bot::{ack, buttons, media, message_id, wait_for_text, TestBot};
use support::fake_telegram::{Call, FakeTelegram};
use support::fixture_bytes;
use tgdl::job::JobState;
use tgdl::store::JobStore;

const T: Duration = Duration::from_secs(60);
/// Long enough that the default never applies before the test presses.
const ASK: &str = "[telegram]\nchoice_wait_secs = 120";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_button_leads_to_its_upload_method() {
    let api = FakeTelegram::start().await;
    let media = media().await;
    let _bot = TestBot::start_asking(&api, ASK, &[501, 502, 503]).await;
    for (chat, label, method, field) in [
        (501i64, "Video", "sendVideo", "video"),
        (502, "Audio", "sendAudio", "audio"),
        (503, "Document", "sendDocument", "document"),
    ] {
        let a = ack(&api, chat, &media.url(&format!("/tiny.mp4?{label}"))).await;
        let b = buttons(&a);
        let labels: Vec<&str> = b.iter().map(|(t, _)| t.as_str()).collect();
        assert!(labels.iter().any(|l| l.contains("Cancel")), "{labels:?}");
        let (_, data) = b
            .iter()
            .find(|(t, _)| t.contains(label))
            .unwrap_or_else(|| panic!("{label} in {labels:?}"));
        api.push_callback(chat, chat as u64, message_id(&a), data);
        api.wait_for(|c| c.iter().any(|c| c.is("answerCallbackQuery")), T)
            .await;
        let sent = api
            .wait_for(
                |c| {
                    c.iter()
                        .any(|c| c.is(method) && c.chat_id() == Some(chat) && c.succeeded())
                },
                T,
            )
            .await;
        let call = sent
            .iter()
            .find(|c| c.is(method) && c.chat_id() == Some(chat))
            .unwrap();
        let file = call
            .file(field)
            .unwrap_or_else(|| panic!("{method} uploads a {field}"));
        if method != "sendAudio" {
            assert_eq!(file.bytes, fixture_bytes("tiny.mp4"), "{method} bytes");
        } else {
            assert!(
                file.file_name
                    .as_deref()
                    .is_some_and(|n| n.ends_with(".mp3")),
                "extracted audio: {:?}",
                file.file_name
            );
        }
        for other in ["sendVideo", "sendAudio", "sendDocument"]
            .into_iter()
            .filter(|m| *m != method)
        {
            assert!(
                !api.calls_to(other)
                    .iter()
                    .any(|c| c.chat_id() == Some(chat)),
                "{other} not used for {label}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cancel_button_cancels_the_waiting_job() {
    let api = FakeTelegram::start().await;
    let media = media().await;
    let mut bot = TestBot::start_asking(&api, ASK, &[504]).await;
    let a = ack(&api, 504, &media.url("/tiny.mp4?c")).await;
    let (_, data) = buttons(&a)
        .into_iter()
        .find(|(t, _)| t.contains("Cancel"))
        .unwrap();
    api.push_callback(504, 504, message_id(&a), &data);
    wait_for_text(&api, 504, |t| t.contains("cancelled"), T).await;
    bot.stop().await.unwrap();
    let failed = bot.store().list_state(JobState::Failed, 10).unwrap();
    assert_eq!(failed[0].failure.as_ref().unwrap().code, "cancelled");
    assert_eq!(api.count("sendVideo"), 0);
}

/// Open /settings and press a button by its callback data.
async fn press_setting(api: &FakeTelegram, chat: i64, data: &str) {
    let n = api.count("answerCallbackQuery");
    api.push_text(chat, chat as u64, "/settings", None);
    let views = |c: &[Call]| {
        c.iter()
            .filter(|c| {
                c.is("sendMessage")
                    && c.succeeded()
                    && c.text().is_some_and(|t| t.starts_with("Your settings"))
            })
            .count()
    };
    let before = views(&api.calls());
    let calls = api.wait_for(|c| views(c) > before, T).await;
    let view = calls
        .iter()
        .rev()
        .find(|c| {
            c.is("sendMessage")
                && c.succeeded()
                && c.text().is_some_and(|t| t.starts_with("Your settings"))
        })
        .unwrap();
    assert!(
        buttons(view).iter().any(|(_, d)| d == data),
        "{data} offered: {:?}",
        buttons(view)
    );
    api.push_callback(chat, chat as u64, message_id(view), data);
    api.wait_for(
        |c| c.iter().filter(|c| c.is("answerCallbackQuery")).count() > n,
        T,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_user_who_turns_ask_on_gets_the_window() {
    let api = FakeTelegram::start().await;
    let media = media().await;
    let mut bot = TestBot::start(&api, ASK).await;
    press_setting(&api, 505, "s:505:a:1").await;
    let a = ack(&api, 505, &media.url("/tiny.mp4?ask")).await;
    assert!(!buttons(&a).is_empty());
    bot.stop().await.unwrap();
    // Not started: it waits out the 120 s window for a press.
    let queued = bot.store().list_state(JobState::Queued, 10).unwrap();
    assert_eq!(queued.len(), 1, "{queued:?}");
    assert!(
        queued[0].next_attempt_at >= queued[0].created_at + 100_000,
        "{:?}",
        queued[0]
    );
    assert_eq!(api.count("sendVideo"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn settings_survive_a_restart_and_apply_to_new_links() {
    let api = FakeTelegram::start().await;
    let media = media().await;
    let mut bot = TestBot::start(&api, ASK).await;
    press_setting(&api, 506, "s:506:k:a").await;
    bot.stop().await.unwrap();
    bot.launch();
    api.push_text(506, 506, "/settings", None);
    api.wait_for(
        |c| {
            c.iter().any(|c| {
                c.is("sendMessage")
                    && c.text().is_some_and(|t| {
                        t.contains("format: audio") && t.contains("ask on each link: no")
                    })
            })
        },
        T,
    )
    .await;
    // The saved default applies: audio, without asking.
    api.push_text(506, 506, &media.url("/tiny.mp4?after-restart"), None);
    api.wait_for(
        |c| {
            c.iter()
                .any(|c| c.is("sendAudio") && c.chat_id() == Some(506) && c.succeeded())
        },
        T,
    )
    .await;
}

fn deliveries(api: &FakeTelegram, chat: i64) -> Vec<Vec<u8>> {
    api.calls_to("sendVideo")
        .iter()
        .filter(|c| c.chat_id() == Some(chat) && c.succeeded())
        .map(|c| c.file("video").unwrap().bytes.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_page_with_three_videos_is_delivered_as_three_items_in_order() {
    let api = FakeTelegram::start().await;
    let media = media().await;
    let mut bot = TestBot::start(&api, "[downloader]\nconcurrency = 1").await;
    let page = media.add_video_page("three", &["clip.mp4", "tiny.mp4", "clip.mp4?second"]);
    api.push_text(507, 507, &page, None);
    api.wait_for(
        |c| {
            c.iter()
                .filter(|c| c.is("sendVideo") && c.chat_id() == Some(507) && c.succeeded())
                .count()
                >= 3
        },
        T,
    )
    .await;
    let got = deliveries(&api, 507);
    assert_eq!(
        got,
        vec![
            fixture_bytes("clip.mp4"),
            fixture_bytes("tiny.mp4"),
            fixture_bytes("clip.mp4")
        ]
    );
    let summary = api
        .calls()
        .into_iter()
        .filter(|c| c.chat_id() == Some(507))
        .filter_map(|c| c.text().map(str::to_string))
        .find(|t| t.contains("Playlist"))
        .expect("the user is told how many items will come");
    assert!(summary.contains("3 item(s)"), "{summary}");
    bot.stop().await.unwrap();
    let store = bot.store();
    let done = store.list_state(JobState::Done, 10).unwrap();
    assert_eq!(done.len(), 4, "a parent and three children");
    let parent = done.iter().find(|j| j.parent.is_none()).unwrap();
    assert!(done.iter().filter(|j| j.parent == Some(parent.id)).count() == 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_playlist_over_the_maximum_names_what_it_skipped() {
    let api = FakeTelegram::start().await;
    let media = media().await;
    let _bot = TestBot::start(
        &api,
        "[downloader]\nconcurrency = 1\n[limits]\nplaylist_max_items = 2",
    )
    .await;
    let page = media.add_video_page("capped", &["tiny.mp4?1", "tiny.mp4?2", "clip.mp4?3"]);
    api.push_text(508, 508, &page, None);
    api.wait_for(
        |c| {
            c.iter()
                .filter(|c| c.is("sendVideo") && c.chat_id() == Some(508) && c.succeeded())
                .count()
                >= 2
        },
        T,
    )
    .await;
    let summary = api
        .calls()
        .into_iter()
        .filter(|c| c.chat_id() == Some(508))
        .filter_map(|c| c.text().map(str::to_string))
        .find(|t| t.contains("Playlist"))
        .unwrap();
    assert!(
        summary.contains("2 item(s)")
            && summary.contains("Skipped 1")
            && summary.contains("capped (3)"),
        "{summary}"
    );
    assert_eq!(
        deliveries(&api, 508),
        vec![fixture_bytes("tiny.mp4"), fixture_bytes("tiny.mp4")]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_bot_mid_playlist_loses_no_item() {
    let t = BinaryTest::start("[downloader]\nconcurrency = 1").await;
    let (api, media) = (&t.api, &t.media);
    let slow = "slow/clip.mp4?burst=16384&chunk=4096&delay_ms=30";
    let page = media.add_video_page("killed", &["tiny.mp4?k1", slow, "tiny.mp4?k3"]);
    let mut bot = t.start_bot();
    api.push_text(509, 509, &page, None);
    // Kill while the second item downloads.
    media
        .wait_for(
            |r| {
                r.iter()
                    .any(|r| r.path == "/slow/clip.mp4" && r.bytes_sent > 20_000)
            },
            T,
        )
        .await;
    bot.kill9();
    let bot = t.start_bot();
    api.wait_for(
        |c| {
            c.iter()
                .filter(|c| c.is("sendVideo") && c.chat_id() == Some(509) && c.succeeded())
                .count()
                >= 3
        },
        T,
    )
    .await;
    let got = deliveries(api, 509);
    for fixture in ["tiny.mp4", "clip.mp4"] {
        assert!(got.contains(&fixture_bytes(fixture)), "{fixture} delivered");
    }
    bot.sigterm_and_wait(Duration::from_secs(10)).await;
    let store = tgdl::store::SledStore::open(&t.dir.path().join("data/db")).unwrap();
    let children: Vec<_> = store
        .list_state(JobState::Done, 10)
        .unwrap()
        .into_iter()
        .filter(|j| j.parent.is_some())
        .collect();
    assert_eq!(children.len(), 3, "every item became a job and finished");
}

/// Two HLS renditions (240p and 120p) behind one master playlist, made with
/// ffmpeg in a temp dir: a link with more than one quality on offer.
fn two_quality_hls(dir: &std::path::Path) {
    let status = std::process::Command::new("ffmpeg")
        .current_dir(dir)
        .args([
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=320x240:rate=10",
            "-t",
            "2",
        ])
        .args([
            "-filter_complex",
            "[0:v]split=2[a][b];[b]scale=160:120[b2]",
            "-map",
            "[a]",
            "-map",
            "[b2]",
        ])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "10",
            "-f",
            "hls",
            "-hls_time",
            "1",
        ])
        .args([
            "-hls_playlist_type",
            "vod",
            "-var_stream_map",
            "v:0 v:1",
            "out_%v.m3u8",
        ])
        .status()
        .expect("ffmpeg runs (./scripts/test installs it)");
    assert!(status.success());
    std::fs::write(
        dir.join("master.m3u8"),
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-STREAM-INF:BANDWIDTH=300000,RESOLUTION=320x240\nout_0.m3u8\n#EXT-X-STREAM-INF:BANDWIDTH=100000,RESOLUTION=160x120\nout_1.m3u8\n",
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quality_buttons_offer_the_heights_and_the_choice_is_used() {
    let api = FakeTelegram::start().await;
    let dir = tempfile::tempdir().unwrap();
    two_quality_hls(dir.path());
    let media = support::media_server::MediaServer::start(dir.path()).await;
    let mut bot = TestBot::start_asking(&api, ASK, &[510]).await;
    let a = ack(&api, 510, &media.url("/master.m3u8")).await;
    // The probe adds a row of heights to the status message.
    let calls = api
        .wait_for(
            |c| {
                c.iter()
                    .any(|c| c.is("editMessageReplyMarkup") && c.chat_id() == Some(510))
            },
            T,
        )
        .await;
    let edit = calls
        .iter()
        .find(|c| c.is("editMessageReplyMarkup") && c.chat_id() == Some(510))
        .unwrap();
    let offered = buttons(edit);
    let labels: Vec<&str> = offered.iter().map(|(t, _)| t.as_str()).collect();
    assert!(
        labels.contains(&"240p") && labels.contains(&"120p"),
        "{labels:?}"
    );
    let (_, data) = offered.iter().find(|(t, _)| t == "120p").unwrap();
    api.push_callback(510, 510, message_id(&a), data);
    let sent = api
        .wait_for(
            |c| {
                c.iter()
                    .any(|c| c.is("sendVideo") && c.chat_id() == Some(510) && c.succeeded())
            },
            T,
        )
        .await;
    let video = sent
        .iter()
        .find(|c| c.is("sendVideo") && c.chat_id() == Some(510))
        .unwrap();
    assert_eq!(
        video.param_i64("height"),
        Some(120),
        "the 120p rendition was downloaded"
    );
    bot.stop().await.unwrap();
    let done = bot.store().list_state(JobState::Done, 10).unwrap();
    assert_eq!(done[0].options.max_height, Some(120));
}
