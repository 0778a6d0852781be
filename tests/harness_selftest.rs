//! Tests of the test harness itself: the fake Telegram Bot API must speak teloxide's wire format
//! (so a bot that works against it works against Telegram), and the media server must behave
//! like an HTTP media host (ranges, slow and cut connections, 404).

mod support;

use std::time::Duration;

use serde_json::json;
use support::fake_telegram::{
    text_link_entity, url_entity, BodyKind, Failure, FakeTelegram, IncomingMessage, BOT_USERNAME,
    TEST_TOKEN,
};
use support::media_server::MediaServer;
use support::{fixture_bytes, fixtures_dir, free_port};
use teloxide::payloads::setters::*;
use teloxide::prelude::*;
use teloxide::types::{
    FileId, InlineKeyboardButton, InlineKeyboardMarkup, InputFile, MessageEntityKind, MessageId,
    ReplyParameters, UpdateKind,
};
use teloxide::{ApiError, RequestError};

/// Generous: only reached when something is broken; success returns as soon as the condition holds.
const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn get_me_has_every_field_teloxide_requires() {
    let fake = FakeTelegram::start().await;
    let me = fake
        .bot()
        .get_me()
        .await
        .expect("getMe parses as teloxide's Me");
    assert_eq!(me.username(), BOT_USERNAME);
    assert!(me.is_bot);
    assert_eq!(
        me.id.0, 123456,
        "the bot id is the token's prefix, as on Telegram"
    );

    let calls = fake.calls_to("getme");
    assert_eq!(calls.len(), 1);
    // teloxide spells methods in PascalCase; the fake must match them case-insensitively.
    assert_ne!(
        calls[0].method, "getMe",
        "teloxide is expected to send a differently cased name"
    );
    assert_eq!(calls[0].token, TEST_TOKEN);
}

#[tokio::test]
async fn send_and_edit_message_with_not_modified_error() {
    let fake = FakeTelegram::start().await;
    let bot = fake.bot();
    let user_msg = fake.push_text(42, 42, "hi bot", Some("en"));

    let sent = bot
        .send_message(ChatId(42), "queued")
        .reply_parameters(ReplyParameters::new(MessageId(user_msg)))
        .await
        .expect("sendMessage");
    assert_eq!(sent.text(), Some("queued"));
    assert_eq!(sent.chat.id, ChatId(42));
    assert_eq!(
        sent.reply_to_message().map(|m| m.id),
        Some(MessageId(user_msg))
    );
    assert_eq!(
        sent.id.0,
        user_msg + 1,
        "user and bot messages share the chat's id counter"
    );

    let edited = bot
        .edit_message_text(ChatId(42), sent.id, "50%")
        .await
        .expect("edit");
    assert_eq!(edited.text(), Some("50%"));
    assert!(edited.edit_date().is_some());

    let same = bot.edit_message_text(ChatId(42), sent.id, "50%").await;
    assert!(
        matches!(same, Err(RequestError::Api(ApiError::MessageNotModified))),
        "identical edit must map to MessageNotModified, got {same:?}"
    );

    let missing = bot.edit_message_text(ChatId(42), MessageId(999), "x").await;
    assert!(matches!(
        missing,
        Err(RequestError::Api(ApiError::MessageToEditNotFound))
    ));

    let msgs = fake.sent_messages(42);
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].text.as_deref(), Some("50%"));
    assert_eq!(msgs[0].history, vec!["queued", "50%"]);
    assert_eq!(msgs[0].reply_to, Some(user_msg));

    bot.delete_message(ChatId(42), sent.id)
        .await
        .expect("delete");
    assert!(fake.sent_messages(42)[0].deleted);
    assert!(fake.visible_messages(42).is_empty());
    let again = bot.delete_message(ChatId(42), sent.id).await;
    assert!(matches!(
        again,
        Err(RequestError::Api(ApiError::MessageToDeleteNotFound))
    ));
}

#[tokio::test]
async fn html_parse_mode_is_rendered_and_bad_html_refused() {
    let fake = FakeTelegram::start().await;
    let bot = fake.bot();
    bot.send_message(ChatId(7), "<b>Done</b> &lt;3 &amp; more")
        .parse_mode(teloxide::types::ParseMode::Html)
        .await
        .expect("valid HTML");
    assert_eq!(
        fake.sent_messages(7)[0].text.as_deref(),
        Some("Done <3 & more")
    );

    let bad = bot
        .send_message(ChatId(7), "title <script> here")
        .parse_mode(teloxide::types::ParseMode::Html)
        .await;
    assert!(
        matches!(&bad, Err(RequestError::Api(ApiError::CantParseEntities(_)))),
        "unescaped tag must be refused like Telegram does, got {bad:?}"
    );
}

#[tokio::test]
async fn send_video_records_every_uploaded_byte() {
    let fake = FakeTelegram::start().await;
    let bot = fake.bot();
    let bytes = fixture_bytes("tiny.mp4");

    let msg = bot
        .send_video(
            ChatId(5),
            InputFile::memory(bytes.clone()).file_name("tiny.mp4"),
        )
        .supports_streaming(true)
        .caption("Tiny")
        .width(160)
        .height(120)
        .await
        .expect("sendVideo");
    let video = msg.video().expect("the answer carries a video");
    assert_eq!(video.width, 160);
    assert_eq!(video.file.size as usize, bytes.len());
    assert_eq!(msg.caption(), Some("Tiny"));

    let call = fake.wait_for_call("sendVideo", WAIT).await;
    assert_eq!(call.body_kind, BodyKind::Multipart);
    assert_eq!(call.param("supports_streaming"), Some(&json!(true)));
    assert_eq!(call.chat_id(), Some(5));
    let file = call
        .file("video")
        .expect("video part resolved from attach://");
    assert_eq!(file.file_name.as_deref(), Some("tiny.mp4"));
    assert!(
        file.bytes == bytes,
        "uploaded bytes differ from the fixture"
    );
    assert_eq!(
        call.sent_file_id().as_deref(),
        Some(video.file.id.0.as_str())
    );
    assert_eq!(fake.file_bytes(&video.file.id.0), Some(bytes));
}

#[tokio::test]
async fn file_upload_streams_chunked_and_file_id_resend_is_recorded() {
    let fake = FakeTelegram::start().await;
    let bot = fake.bot();
    let path = fixtures_dir().join("blob.bin");

    let doc = bot
        .send_document(ChatId(9), InputFile::file(&path))
        .await
        .expect("sendDocument");
    let file_id = doc.document().expect("document").file.id.clone();
    let upload = fake.calls_to("senddocument").remove(0);
    assert!(
        upload.chunked,
        "a file upload is streamed with chunked transfer encoding"
    );
    assert!(upload.file("document").unwrap().bytes == fixture_bytes("blob.bin"));
    assert_eq!(upload.resent_file_id, None);

    let again = bot
        .send_document(ChatId(9), InputFile::file_id(file_id.clone()))
        .await
        .expect("re-send by file_id");
    assert_eq!(again.document().unwrap().file.id, file_id);
    let resend = fake.calls_to("senddocument").remove(1);
    assert!(
        resend.files.is_empty(),
        "no bytes are uploaded for a file_id"
    );
    assert_eq!(resend.resent_file_id.as_deref(), Some(file_id.0.as_str()));

    let unknown = bot
        .send_document(ChatId(9), InputFile::file_id(FileId("nope".into())))
        .await;
    assert!(matches!(
        unknown,
        Err(RequestError::Api(ApiError::WrongFileIdOrUrl))
    ));
}

#[tokio::test]
async fn upload_over_the_limit_gets_413() {
    let fake = FakeTelegram::start().await;
    fake.set_upload_limit(Some(1000));
    let res = fake
        .bot()
        .send_video(ChatId(5), InputFile::file(fixtures_dir().join("tiny.mp4")))
        .await;
    assert!(
        matches!(res, Err(RequestError::Api(ApiError::RequestEntityTooLarge))),
        "got {res:?}"
    );
    let call = fake.calls_to("sendvideo").remove(0);
    assert_eq!(call.status, Some(413));
    let file = call.file("video").unwrap();
    assert!(file.truncated);
    assert_eq!(file.size as usize, fixture_bytes("tiny.mp4").len());
}

#[tokio::test]
async fn injected_failures_map_to_teloxide_errors() {
    let fake = FakeTelegram::start().await;
    let bot = fake.bot();

    fake.fail_next("sendMessage", Failure::RetryAfter(2));
    let res = bot.send_message(ChatId(1), "x").await;
    match res {
        Err(RequestError::RetryAfter(secs)) => assert_eq!(secs.seconds(), 2),
        other => panic!("expected RetryAfter, got {other:?}"),
    }
    bot.send_message(ChatId(1), "x")
        .await
        .expect("one failure only");

    fake.fail_next("sendvideo", Failure::Forbidden);
    let res = bot
        .send_video(ChatId(1), InputFile::memory(&b"abc"[..]))
        .await;
    assert!(
        matches!(res, Err(RequestError::Api(ApiError::BotBlocked))),
        "got {res:?}"
    );

    fake.fail_next("SENDMESSAGE", Failure::BadRequest("chat not found".into()));
    let res = bot.send_message(ChatId(1), "x").await;
    assert!(
        matches!(res, Err(RequestError::Api(ApiError::ChatNotFound))),
        "got {res:?}"
    );
}

/// Sends `request` and returns its JSON answer.
async fn json_answer(request: reqwest::RequestBuilder) -> serde_json::Value {
    request.send().await.unwrap().json().await.unwrap()
}

/// POSTs the JSON body of a `sendMessage` to `url`; returns the HTTP status and the JSON answer.
async fn post_message(http: &reqwest::Client, url: &str) -> (u16, serde_json::Value) {
    let res = http
        .post(url)
        .json(&json!({"chat_id": 1, "text": "a"}))
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

#[tokio::test]
async fn wire_envelopes_match_telegram() {
    // teloxide waits 10 s before reading a 5xx answer, so the raw envelope is checked with reqwest.
    let fake = FakeTelegram::start().await;
    let http = reqwest::Client::new();
    let url = format!("{}bot{TEST_TOKEN}/sendMessage", fake.url());

    fake.fail_next("sendMessage", Failure::ServerError(502));
    let (status, body) = post_message(&http, &url).await;
    assert_eq!(status, 502);
    assert_eq!(
        body,
        json!({"ok": false, "error_code": 502, "description": "Bad Gateway"})
    );

    fake.fail_next("sendMessage", Failure::RetryAfter(2));
    let (status, body) = post_message(&http, &url).await;
    assert_eq!(status, 429);
    assert_eq!(
        body,
        json!({"ok": false, "error_code": 429, "description": "Too Many Requests: retry after 2",
               "parameters": {"retry_after": 2}})
    );

    fake.fail_next("sendMessage", Failure::Forbidden);
    let (_, body) = post_message(&http, &url).await;
    assert_eq!(
        body,
        json!({"ok": false, "error_code": 403, "description": "Forbidden: bot was blocked by the user"})
    );

    // Form-urlencoded body: numbers decoded, texts kept as strings.
    let body = json_answer(http.post(&url).form(&[("chat_id", "77"), ("text", "123")])).await;
    assert_eq!(body["ok"], json!(true));
    assert_eq!(body["result"]["text"], json!("123"));
    let call = fake.calls().pop().unwrap();
    assert_eq!(call.body_kind, BodyKind::Form);
    assert_eq!(call.chat_id(), Some(77));
    assert_eq!(call.text(), Some("123"));

    // Multipart with the file directly under its field (no attach:// indirection).
    let form = reqwest::multipart::Form::new().text("chat_id", "77").part(
        "audio",
        reqwest::multipart::Part::bytes(fixture_bytes("tiny.m4a")).file_name("tiny.m4a"),
    );
    let audio_url = format!("{}bot{TEST_TOKEN}/sendaudio", fake.url());
    let body = json_answer(http.post(&audio_url).multipart(form)).await;
    assert_eq!(body["ok"], json!(true), "{body}");
    assert_eq!(body["result"]["audio"]["mime_type"], json!("audio/mp4"));
    let call = fake.calls().pop().unwrap();
    assert!(call.file("audio").unwrap().bytes == fixture_bytes("tiny.m4a"));

    let res = http
        .post(format!("{}bot{TEST_TOKEN}/noSuchMethod", fake.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 404);
}

#[tokio::test]
async fn long_polling_waits_for_a_push_and_offset_confirms() {
    let fake = FakeTelegram::start().await;
    let bot = fake.bot();

    let poll = tokio::spawn({
        let bot = bot.clone();
        async move { bot.get_updates().timeout(10).await }
    });
    // Push only once the long poll is parked in the fake, so the update must wake it.
    fake.wait_for(
        |calls| {
            calls
                .iter()
                .any(|c| c.is("getUpdates") && c.status.is_none())
        },
        WAIT,
    )
    .await;
    let id = fake.push_text(10, 11, "https://example.com/v.mp4", Some("fa"));
    let updates = tokio::time::timeout(WAIT, poll)
        .await
        .expect("poll returns early")
        .unwrap()
        .unwrap();
    assert_eq!(updates.len(), 1);
    let UpdateKind::Message(msg) = &updates[0].kind else {
        panic!("not a message: {updates:?}")
    };
    assert_eq!(msg.id, MessageId(id));
    assert_eq!(msg.text(), Some("https://example.com/v.mp4"));
    let from = msg.from.as_ref().unwrap();
    assert_eq!(from.id.0, 11);
    assert_eq!(from.language_code.as_deref(), Some("fa"));
    let entities = msg.entities().unwrap();
    assert_eq!(entities.len(), 1, "Telegram marks the link as a url entity");
    assert_eq!(entities[0].kind, MessageEntityKind::Url);
    assert_eq!(entities[0].length, 25);

    // Without an offset the update is delivered again; with a higher offset it is confirmed.
    let again = bot.get_updates().await.unwrap();
    assert_eq!(again.len(), 1);
    let next = bot
        .get_updates()
        .offset(updates[0].id.0 as i32 + 1)
        .await
        .unwrap();
    assert!(next.is_empty());
    assert_eq!(fake.pending_updates(), 0);
}

#[tokio::test]
async fn entities_and_callback_queries_parse_in_teloxide() {
    let fake = FakeTelegram::start().await;
    let bot = fake.bot();

    // Persian text before the link: offsets are in UTF-16 code units.
    let text = "ویدیو https://a.example/x و این لینک";
    fake.push_text_with_entities(
        3,
        3,
        text,
        vec![
            url_entity(text, "https://a.example/x"),
            text_link_entity(text, "این لینک", "https://b.example/y"),
        ],
        Some("fa"),
    );
    let sent = bot
        .send_message(ChatId(3), "pick")
        .reply_markup(InlineKeyboardMarkup::new([[
            InlineKeyboardButton::callback("Cancel", "cancel:1"),
        ]]))
        .await
        .unwrap();
    let cq_id = fake.push_callback(3, 3, sent.id.0, "cancel:1");
    fake.push_message(IncomingMessage::new(3, 3, "/start").lang("en"));

    let updates = bot.get_updates().await.unwrap();
    assert_eq!(updates.len(), 3);
    let UpdateKind::Message(msg) = &updates[0].kind else {
        panic!("{updates:?}")
    };
    let entities = msg.entities().unwrap();
    assert_eq!(entities[0].kind, MessageEntityKind::Url);
    assert_eq!(entities[0].offset, 6);
    match &entities[1].kind {
        MessageEntityKind::TextLink { url } => assert_eq!(url.as_str(), "https://b.example/y"),
        other => panic!("expected text_link, got {other:?}"),
    }
    let UpdateKind::CallbackQuery(cq) = &updates[1].kind else {
        panic!("{updates:?}")
    };
    assert_eq!(cq.id.0, cq_id);
    assert_eq!(cq.data.as_deref(), Some("cancel:1"));
    assert_eq!(cq.regular_message().map(|m| m.id), Some(sent.id));
    let UpdateKind::Message(cmd) = &updates[2].kind else {
        panic!("{updates:?}")
    };
    assert_eq!(
        cmd.entities().unwrap()[0].kind,
        MessageEntityKind::BotCommand
    );

    bot.answer_callback_query(cq.id.clone())
        .await
        .expect("answerCallbackQuery");
}

#[tokio::test]
async fn teloxide_dispatcher_receives_pushed_messages() {
    let fake = FakeTelegram::start().await;
    let bot = fake.bot();
    let handler = Update::filter_message().endpoint(|bot: Bot, msg: Message| async move {
        bot.send_message(msg.chat.id, format!("echo: {}", msg.text().unwrap_or("")))
            .reply_parameters(ReplyParameters::new(msg.id))
            .await?;
        respond(())
    });
    let mut dispatcher = Dispatcher::builder(bot, handler).build();
    let running = tokio::spawn(async move { dispatcher.dispatch().await });

    let id = fake.push_text(20, 21, "hello", None);
    let call = fake.wait_for_call("sendMessage", WAIT).await;
    assert_eq!(call.text(), Some("echo: hello"));
    assert_eq!(call.reply_to(), Some(id));
    assert!(
        fake.wait_updates_confirmed(WAIT).await,
        "the dispatcher polls past handled updates"
    );
    running.abort();
}

#[tokio::test]
async fn api_can_be_down_and_come_back_on_the_same_port() {
    let fake = FakeTelegram::offline(free_port());
    let bot = fake.bot();
    let down = bot.get_me().await;
    assert!(
        matches!(down, Err(RequestError::Network(_))),
        "got {down:?}"
    );

    fake.go_online().await;
    bot.get_me().await.expect("API up");

    // The bot's client now has a pooled keep-alive connection; going offline must sever it too.
    fake.go_offline().await;
    let down = bot.get_me().await;
    assert!(
        matches!(down, Err(RequestError::Network(_))),
        "got {down:?}"
    );
    assert_eq!(fake.count("getMe"), 1);

    fake.go_online().await;
    bot.get_me().await.expect("API back");
}

#[tokio::test]
async fn held_upload_blocks_until_released() {
    let fake = FakeTelegram::start().await;
    let gate = fake.hold_next("sendVideo");
    let upload = tokio::spawn({
        let bot = fake.bot();
        async move {
            bot.send_video(ChatId(1), InputFile::memory(fixture_bytes("tiny.mp4")))
                .await
        }
    });
    assert!(gate.wait_arrived(1, WAIT).await);
    let call = fake.calls_to("sendVideo").remove(0);
    assert_eq!(call.status, None, "held: not answered yet");
    assert!(
        call.file("video").unwrap().bytes == fixture_bytes("tiny.mp4"),
        "the body was received"
    );

    gate.release();
    let msg = tokio::time::timeout(WAIT, upload)
        .await
        .unwrap()
        .unwrap()
        .expect("released upload succeeds");
    assert!(msg.video().is_some());

    // A client that goes away while held leaves the gate.
    let gate = fake.hold_next("sendMessage");
    let pending = tokio::spawn({
        let bot = fake.bot();
        async move { bot.send_message(ChatId(1), "x").await }
    });
    assert!(gate.wait_arrived(1, WAIT).await);
    pending.abort();
    assert!(gate.wait_empty(WAIT).await);
}

// ---- media server ----

/// The HTTP status of a GET of `url`.
async fn status_of(url: String) -> u16 {
    reqwest::get(url).await.unwrap().status().as_u16()
}

/// A GET of `url` with the header `Range: range`.
async fn get_range(http: &reqwest::Client, url: String, range: &str) -> reqwest::Response {
    http.get(url).header("Range", range).send().await.unwrap()
}

#[tokio::test]
async fn media_server_serves_files_with_headers() {
    let server = MediaServer::fixtures().await;
    let bytes = fixture_bytes("tiny.mp4");
    let res = reqwest::get(server.url("tiny.mp4")).await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let h = res.headers();
    assert_eq!(h["content-type"], "video/mp4");
    assert_eq!(h["accept-ranges"], "bytes");
    assert_eq!(h["content-length"], bytes.len().to_string().as_str());
    assert!(res.bytes().await.unwrap() == bytes);

    let res = reqwest::get(server.url("tiny.m4a")).await.unwrap();
    assert_eq!(res.headers()["content-type"], "audio/mp4");
    let res = reqwest::get(server.url("blob.bin")).await.unwrap();
    assert_eq!(res.headers()["content-type"], "application/octet-stream");
}

#[tokio::test]
async fn media_server_range_requests_return_the_slice() {
    let server = MediaServer::fixtures().await;
    let bytes = fixture_bytes("tiny.mp4");
    let http = reqwest::Client::new();

    let res = get_range(&http, server.url("tiny.mp4"), "bytes=100-199").await;
    assert_eq!(res.status().as_u16(), 206);
    assert_eq!(
        res.headers()["content-range"],
        format!("bytes 100-199/{}", bytes.len()).as_str()
    );
    assert!(res.bytes().await.unwrap() == bytes[100..200]);

    let res = get_range(&http, server.url("tiny.mp4"), "bytes=1000-").await;
    assert_eq!(res.status().as_u16(), 206);
    assert!(res.bytes().await.unwrap() == bytes[1000..]);

    let res = get_range(&http, server.url("tiny.mp4"), "bytes=-10").await;
    assert!(res.bytes().await.unwrap() == bytes[bytes.len() - 10..]);

    let res = get_range(
        &http,
        server.url("tiny.mp4"),
        &format!("bytes={}-", bytes.len()),
    )
    .await;
    assert_eq!(res.status().as_u16(), 416);

    let recorded = server.requests_to("tiny.mp4");
    assert_eq!(recorded.len(), 4);
    assert_eq!(recorded[1].range_start(), Some(1000));
    assert!(recorded[..3].iter().all(|r| r.complete && r.status == 206));
}

#[tokio::test]
async fn media_server_404_routes() {
    let server = MediaServer::fixtures().await;
    assert_eq!(status_of(server.url("404")).await, 404);
    assert_eq!(status_of(server.url("missing.mp4")).await, 404);
    assert_eq!(status_of(server.url("../Cargo.toml")).await, 404);
    assert_eq!(status_of(server.url("status/403")).await, 403);
    let res = reqwest::get(server.url("redirect/tiny.m4a")).await.unwrap();
    assert_eq!(res.status().as_u16(), 200, "redirect followed");
    assert!(res.bytes().await.unwrap() == fixture_bytes("tiny.m4a"));
}

#[tokio::test]
async fn media_server_slow_route_delivers_everything_in_chunks() {
    let server = MediaServer::fixtures().await;
    let bytes = fixture_bytes("tiny.mp4");
    let url = server.url("slow/tiny.mp4?chunk=4096&delay_ms=5");
    let got = reqwest::get(&url).await.unwrap().bytes().await.unwrap();
    assert!(got == bytes);
    let req = server.requests_to("slow/tiny.mp4").remove(0);
    assert!(req.complete);
    assert_eq!(req.bytes_sent as usize, bytes.len());

    // While a slow download is in progress its progress is observable.
    server.set_throttle(1024, Duration::from_millis(50));
    let download = tokio::spawn(reqwest::get(server.url("slow/tiny.mp4")));
    server
        .wait_for(
            |r| r.len() == 2 && r[1].bytes_sent > 0 && !r[1].complete,
            WAIT,
        )
        .await;
    let got = download.await.unwrap().unwrap().bytes().await.unwrap();
    assert!(got == bytes);
}

#[tokio::test]
async fn media_server_hold_and_drop_routes() {
    let server = MediaServer::fixtures().await;
    let bytes = fixture_bytes("tiny.mp4");

    let gate = server.hold_gate();
    let download = tokio::spawn(reqwest::get(server.url("hold/tiny.mp4")));
    assert!(gate.wait_arrived(1, WAIT).await);
    gate.release();
    let got = download.await.unwrap().unwrap().bytes().await.unwrap();
    assert!(got == bytes);

    // A fresh download is cut half way; a resume from where it stopped is served.
    let res = reqwest::get(server.url("drop/tiny.mp4")).await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert!(res.bytes().await.is_err(), "the body is cut short");
    let first = server.requests_to("drop/tiny.mp4").remove(0);
    assert!(!first.complete);
    let resume_at = first.bytes_sent;
    assert_eq!(resume_at as usize, bytes.len() / 2);
    let res = get_range(
        &reqwest::Client::new(),
        server.url("drop/tiny.mp4"),
        &format!("bytes={resume_at}-"),
    )
    .await;
    assert_eq!(res.status().as_u16(), 206);
    assert!(res.bytes().await.unwrap() == bytes[resume_at as usize..]);
    let resumed = server.requests_to("drop/tiny.mp4").remove(1);
    assert!(resumed.range_start().is_some_and(|s| s > 0));
}

#[tokio::test]
async fn media_server_pages_list_media() {
    let server = MediaServer::fixtures().await;
    let url = server.add_video_page("two", &["tiny.mp4", "slow/tiny.mp4"]);
    let res = reqwest::get(&url).await.unwrap();
    assert_eq!(res.headers()["content-type"], "text/html; charset=utf-8");
    let html = res.text().await.unwrap();
    assert!(html.contains("<video controls src=\"/tiny.mp4\">"));
    assert!(html.contains("<video controls src=\"/slow/tiny.mp4\">"));
    assert_eq!(status_of(server.url("page/none")).await, 404);
}

// ---- media server against the real yt-dlp ----

/// Runs yt-dlp from PATH (installed by `./scripts/test`) the way the bot does: no config, the link
/// after `--`, output named from the media id. Returns (success, stdout, stderr).
async fn ytdlp(dir: &std::path::Path, extra: &[&str], url: &str) -> (bool, String, String) {
    let out = tokio::process::Command::new("yt-dlp")
        .args(["--ignore-config", "--no-progress", "--retries", "3", "-o"])
        .arg(dir.join("%(id)s.%(ext)s"))
        .args(extra)
        .args(["--", url])
        .output()
        .await
        .expect("yt-dlp on PATH: run the tests with ./scripts/test, which installs it");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Downloads `url` with yt-dlp (`extra` options, then `--print after_move:filepath`), asserts it
/// succeeded and returns the bytes of the file it printed.
async fn ytdlp_fetch(dir: &std::path::Path, extra: &[&str], url: &str) -> Vec<u8> {
    let args = [extra, &["--print", "after_move:filepath"]].concat();
    let (ok, stdout, stderr) = ytdlp(dir, &args, url).await;
    assert!(ok, "yt-dlp failed: {stderr}");
    let path = stdout.lines().last().expect("printed file path");
    std::fs::read(path).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn ytdlp_downloads_fixture_media_byte_identical() {
    let server = MediaServer::fixtures().await;
    let dir = tempfile::tempdir().unwrap();
    let got = ytdlp_fetch(dir.path(), &["--no-playlist"], &server.url("tiny.mp4")).await;
    assert!(got == fixture_bytes("tiny.mp4"));
}

#[tokio::test(flavor = "multi_thread")]
async fn ytdlp_resumes_a_cut_download_with_a_range_request() {
    let server = MediaServer::fixtures().await;
    let dir = tempfile::tempdir().unwrap();
    let got = ytdlp_fetch(dir.path(), &["--no-playlist"], &server.url("drop/clip.mp4")).await;
    assert!(got == fixture_bytes("clip.mp4"));
    let requests = server.requests_to("drop/clip.mp4");
    assert!(
        requests
            .iter()
            .any(|r| r.range_start().is_some_and(|s| s > 0) && r.complete),
        "expected a resume past byte 0: {requests:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ytdlp_fetches_unknown_binaries_and_refuses_pages_without_media_and_404() {
    let server = MediaServer::fixtures().await;
    let dir = tempfile::tempdir().unwrap();
    // A binary that is not HTML is taken as a direct link: the bot's document fallback case.
    let got = ytdlp_fetch(dir.path(), &[], &server.url("blob.bin")).await;
    assert!(got == fixture_bytes("blob.bin"));

    let (ok, _, stderr) = ytdlp(dir.path(), &[], &server.url("nomedia.html")).await;
    assert!(!ok);
    assert!(stderr.contains("Unsupported URL"), "{stderr}");

    let (ok, _, stderr) = ytdlp(dir.path(), &[], &server.url("404")).await;
    assert!(!ok);
    assert!(stderr.contains("404"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ytdlp_sees_a_video_page_as_a_playlist() {
    let server = MediaServer::fixtures().await;
    let url = server.add_video_page("pair", &["tiny.mp4", "clip.mp4"]);
    let dir = tempfile::tempdir().unwrap();
    let (ok, stdout, stderr) =
        ytdlp(dir.path(), &["--flat-playlist", "--print", "url"], &url).await;
    assert!(ok, "yt-dlp failed: {stderr}");
    let urls: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        urls,
        vec![server.url("tiny.mp4"), server.url("clip.mp4")],
        "{stderr}"
    );
}
