//! End to end: the real bot (library `run`) with real yt-dlp, a loopback
//! media server and the fake Bot API speaking Telegram's wire format.

mod support;

use std::time::Duration;

use support::bot::{media, TestBot, ADMIN};
use support::fake_telegram::FakeTelegram;
use support::fixture_bytes;
use tgdl::job::JobState;
use tgdl::store::JobStore;

const T: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_video_link_is_delivered_byte_identical_and_cleaned_up() {
    let api = FakeTelegram::start().await;
    let media = media().await;
    let mut bot = TestBot::start(&api, "").await;
    let link = media.url("/tiny.mp4");
    let msg_id = api.push_text(1001, 1001, &link, Some("en"));

    let calls = api.wait_for_calls("sendVideo", 1, T).await;
    let video = &calls[0];
    assert!(video.succeeded(), "{:?}", video.error());
    let file = video.file("video").expect("an uploaded file");
    assert_eq!(
        file.bytes,
        fixture_bytes("tiny.mp4"),
        "bytes identical to the source"
    );
    assert_eq!(
        video.reply_to(),
        Some(msg_id),
        "replies to the user's message"
    );
    assert_eq!(
        video.param("supports_streaming").and_then(|v| v.as_bool()),
        Some(true)
    );
    assert!(
        video.caption().unwrap().contains(&link),
        "caption names the source"
    );

    // The acknowledgement came first, replying to the message, with the short id.
    let first = api
        .calls_to("sendMessage")
        .into_iter()
        .next()
        .expect("an acknowledgement");
    assert_eq!(first.reply_to(), Some(msg_id));
    assert!(
        first.text().unwrap().contains("Accepted"),
        "{:?}",
        first.text()
    );

    // The status message is removed after delivery.
    api.wait_for_call("deleteMessage", T).await;
    bot.stop().await.unwrap();
    let store = bot.store();
    let done = store.list_state(JobState::Done, 10).unwrap();
    assert_eq!(done.len(), 1);
    let states: Vec<JobState> = done[0].history.iter().map(|h| h.0).collect();
    assert_eq!(
        states,
        [
            JobState::Queued,
            JobState::Downloading,
            JobState::Uploading,
            JobState::Cleaning,
            JobState::Done
        ]
    );
    assert!(done[0].delivery.as_ref().unwrap().file_id.len() > 3);
    assert!(
        bot.leftover_files().is_empty(),
        "left behind: {:?}",
        bot.leftover_files()
    );
    assert!(store.check_invariants().unwrap().problems.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_request_is_answered_from_the_cache_without_downloading() {
    let api = FakeTelegram::start().await;
    let media = media().await;
    let _bot = TestBot::start(&api, "").await;
    let link = media.url("/tiny.mp4");
    api.push_text(1001, 1001, &link, None);
    let first = api.wait_for_calls("sendVideo", 1, T).await;
    let file_id = first[0].sent_file_id().unwrap();
    // The first job's acknowledgement goes once its delivery (and with it
    // the cache entry) is recorded: only then is there a cache to answer
    // from. A link sent while the first upload is still being recorded is
    // downloaded again, which is not what this test is about.
    acknowledgement_gone(&api, 1001).await;
    let downloads_before = media.requests_to("/tiny.mp4").len();

    api.push_text(1002, 1002, &link, None);
    let calls = api.wait_for_calls("sendVideo", 2, T).await;
    assert_eq!(
        calls[1].resent_file_id.as_deref(),
        Some(file_id.as_str()),
        "sent by file_id"
    );
    assert!(calls[1].files.is_empty(), "no bytes uploaded again");
    assert_eq!(
        media.requests_to("/tiny.mp4").len(),
        downloads_before,
        "no second download"
    );
    // However fast the cache hit finished, the acknowledgement does not
    // linger: it is removed once the file is there.
    acknowledgement_gone(&api, 1002).await;
}

/// Wait until no "Accepted" message from the bot is left in `chat`.
async fn acknowledgement_gone(api: &FakeTelegram, chat: i64) {
    api.wait_for_messages(
        chat,
        |m| {
            !m.iter().any(|m| {
                !m.deleted
                    && m.from_bot
                    && m.text.as_deref().is_some_and(|t| t.contains("Accepted"))
            })
        },
        T,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn audio_is_sent_with_send_audio() {
    let api = FakeTelegram::start().await;
    let media = media().await;
    let _bot = TestBot::start(&api, "").await;
    api.push_text(
        1001,
        1001,
        &format!("/audio {}", media.url("/tiny.m4a")),
        None,
    );
    let calls = api.wait_for_calls("sendAudio", 1, T).await;
    assert!(calls[0].succeeded(), "{:?}", calls[0].error());
    assert!(calls[0].file("audio").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_that_is_not_media_goes_as_a_document() {
    let api = FakeTelegram::start().await;
    let media = media().await;
    let _bot = TestBot::start(&api, "").await;
    api.push_text(1001, 1001, &media.url("/blob.bin"), None);
    let calls = api.wait_for_calls("sendDocument", 1, T).await;
    assert_eq!(
        calls[0].file("document").unwrap().bytes,
        fixture_bytes("blob.bin")
    );
    assert_eq!(api.count("sendVideo"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn persian_users_get_persian_replies() {
    let api = FakeTelegram::start().await;
    let _bot = TestBot::start(&api, "").await;
    api.push_text(1001, 1001, "سلام", Some("fa"));
    let c = api.wait_for_calls("sendMessage", 1, T).await;
    assert!(c[0].text().unwrap().contains("لینکی"), "{:?}", c[0].text());
    api.push_text(1002, 1002, "hello", Some("en"));
    let c = api.wait_for_calls("sendMessage", 2, T).await;
    assert!(
        c[1].text().unwrap().contains("did not find a link"),
        "{:?}",
        c[1].text()
    );
    let _ = ADMIN;
}
