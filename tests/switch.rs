//! A link starts at once in the user's default form, and the buttons switch
//! it: through the fake Bot API, real yt-dlp and the media server. A press
//! of another form mid-download restarts the job in it; the form it already
//! has changes nothing; a press under the delivered file sends that form
//! too, once per message.

mod support;

use std::time::Duration;

use support::binary::{slow_link, wait_for_download};
use support::bot::{ack, answer_to, buttons, media, message_id, TestBot};
use support::fake_telegram::{Call, FakeTelegram};
use tgdl::job::{JobState, MediaKind};
use tgdl::store::JobStore;

const T: Duration = Duration::from_secs(60);
/// The choice window a user with "ask" on would get: long, so a delivery
/// within `T` shows the link did not wait for it.
const WINDOW: &str = "[telegram]\nchoice_wait_secs = 120";

/// The callback data of the button labelled `label`.
fn data(call: &Call, label: &str) -> String {
    buttons(call)
        .into_iter()
        .find(|(l, _)| l.contains(label))
        .map(|(_, d)| d)
        .unwrap_or_else(|| panic!("{label} in {:?}", buttons(call)))
}

async fn delivered(api: &FakeTelegram, method: &str, chat: i64) -> Call {
    let calls = api
        .wait_for(
            |c| {
                c.iter()
                    .any(|c| c.is(method) && c.chat_id() == Some(chat) && c.succeeded())
            },
            T,
        )
        .await;
    calls
        .into_iter()
        .find(|c| c.is(method) && c.chat_id() == Some(chat) && c.succeeded())
        .unwrap()
}

fn sent_to(api: &FakeTelegram, method: &str, chat: i64) -> usize {
    api.calls_to(method)
        .iter()
        .filter(|c| c.chat_id() == Some(chat) && c.succeeded())
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_link_starts_at_once_and_keeps_its_buttons_until_the_file_carries_them() {
    let api = FakeTelegram::start().await;
    let media = media().await;
    let _bot = TestBot::start(&api, WINDOW).await;
    // A download of a few seconds, so its status message gets progress edits.
    let a = ack(&api, 601, &slow_link(&media)).await;
    let labels: Vec<String> = buttons(&a).into_iter().map(|(l, _)| l).collect();
    for want in ["Video", "Audio", "Document", "Cancel"] {
        assert!(labels.iter().any(|l| l.contains(want)), "{labels:?}");
    }
    // Delivered well inside the 120 s window: nothing waited for a press.
    let video = delivered(&api, "sendVideo", 601).await;
    // Every edit of the status message kept the buttons (an edit without
    // them would remove them).
    let status = message_id(&a) as i64;
    let edits: Vec<Call> = api
        .calls_to("editMessageText")
        .into_iter()
        .filter(|c| c.chat_id() == Some(601) && c.param_i64("message_id") == Some(status))
        .collect();
    assert!(
        edits
            .iter()
            .any(|e| e.text().is_some_and(|t| t.contains('%'))),
        "progress was shown: {:?}",
        edits.iter().map(Call::text).collect::<Vec<_>>()
    );
    for e in &edits {
        assert_eq!(buttons(e), buttons(&a), "{:?}", e.text());
    }
    // The file carries the forms (no cancel: it is delivered).
    let forms: Vec<String> = buttons(&video).into_iter().map(|(l, _)| l).collect();
    assert_eq!(forms.len(), 3, "{forms:?}");
    assert!(!forms.iter().any(|l| l.contains("Cancel")), "{forms:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_form_pressed_mid_download_restarts_the_job_in_it() {
    let api = FakeTelegram::start().await;
    let media = media().await;
    let mut bot = TestBot::start(&api, "").await;
    let downloads = bot.config.downloads_dir();
    let a = ack(&api, 602, &slow_link(&media)).await;
    wait_for_download(&media, &downloads).await;

    let q = api.push_callback(602, 602, message_id(&a), &data(&a, "Audio"));
    let said = answer_to(&api, &q).await;
    assert!(said.contains("switching to audio"), "{said}");
    let audio = delivered(&api, "sendAudio", 602).await;
    assert!(audio.file("audio").is_some());
    assert_eq!(sent_to(&api, "sendVideo", 602), 0, "the video was not sent");
    // The status message said so.
    let status = message_id(&a) as i64;
    assert!(api.calls_to("editMessageText").iter().any(|c| {
        c.param_i64("message_id") == Some(status)
            && c.text().is_some_and(|t| t.contains("switching to audio"))
    }));

    bot.stop().await.unwrap();
    let store = bot.store();
    let done = store.list_state(JobState::Done, 10).unwrap();
    assert_eq!(store.counts().unwrap().total(), 1, "one job, restarted");
    assert_eq!(done[0].options.kind, MediaKind::Audio);
    assert_eq!(done[0].attempts, 0, "a switch is not a failed attempt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_form_it_already_has_changes_nothing() {
    let api = FakeTelegram::start().await;
    let media = media().await;
    let mut bot = TestBot::start(&api, "").await;
    let a = ack(&api, 603, &slow_link(&media)).await;
    wait_for_download(&media, &bot.config.downloads_dir()).await;
    let before = media.requests_to("/slow/clip.mp4").len();

    let q = api.push_callback(603, 603, message_id(&a), &data(&a, "Video"));
    let said = answer_to(&api, &q).await;
    assert!(said.contains("already downloading as video"), "{said}");
    delivered(&api, "sendVideo", 603).await;
    assert_eq!(
        media.requests_to("/slow/clip.mp4").len(),
        before,
        "the download was not started again"
    );
    bot.stop().await.unwrap();
    let store = bot.store();
    assert_eq!(store.counts().unwrap().total(), 1);
    assert_eq!(store.counts().unwrap().done, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_press_under_the_delivered_file_sends_that_form_too_once() {
    let api = FakeTelegram::start().await;
    let media = media().await;
    let mut bot = TestBot::start(&api, "").await;
    ack(&api, 604, &media.url("/tiny.mp4?again")).await;
    let video = delivered(&api, "sendVideo", 604).await;
    let on_file = message_id(&video);

    // The form it was sent in: nothing new.
    let q = api.push_callback(604, 604, on_file, &data(&video, "Video"));
    let said = answer_to(&api, &q).await;
    assert!(said.contains("already sent as video"), "{said}");

    // Audio: a job of its own, acknowledged under the file and delivered.
    let q = api.push_callback(604, 604, on_file, &data(&video, "Audio"));
    let said = answer_to(&api, &q).await;
    assert!(said.contains("Accepted"), "{said}");
    let audio = delivered(&api, "sendAudio", 604).await;
    assert_eq!(audio.reply_to(), Some(on_file), "replies under the file");

    // Pressed again on the same message: the same job, not a third.
    let q = api.push_callback(604, 604, on_file, &data(&video, "Audio"));
    let again = answer_to(&api, &q).await;
    let job_named = |t: &str| t.split("job ").nth(1).map(|r| r[..8].to_string());
    assert!(job_named(&said).is_some(), "{said}");
    assert_eq!(job_named(&again), job_named(&said), "the same job: {again}");
    bot.stop().await.unwrap();
    let store = bot.store();
    assert_eq!(
        store.counts().unwrap().total(),
        2,
        "the video and the audio"
    );
    assert_eq!(sent_to(&api, "sendAudio", 604), 1);
}
