//! Self-tests of the fake Bot API's pacing (issue 13): it must refuse exactly where Telegram
//! does, with Telegram's 429 envelope, over real HTTP, so that a bot that keeps within it keeps
//! within Telegram. Time is moved with `shift_pacing_clock` instead of sleeping; the calls
//! between two shifts take milliseconds, far inside the one-second window.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::fake_telegram::{FakeTelegram, TEST_TOKEN};
use teloxide::prelude::*;
use teloxide::types::InputFile;
use teloxide::RequestError;

/// Sends `method` with a JSON body straight over HTTP; returns the status and the JSON answer.
async fn raw(fake: &FakeTelegram, method: &str, body: Value) -> (u16, Value) {
    let url = format!("{}bot{TEST_TOKEN}/{method}", fake.url_string());
    let res = reqwest::Client::new()
        .post(url)
        .json(&body)
        .send()
        .await
        .expect("the fake answers");
    let status = res.status().as_u16();
    (status, res.json().await.expect("a JSON answer"))
}

async fn send(fake: &FakeTelegram, chat: i64) -> (u16, Value) {
    raw(fake, "sendMessage", json!({"chat_id": chat, "text": "hi"})).await
}

fn too_many(secs: u32) -> Value {
    json!({
        "ok": false,
        "error_code": 429,
        "description": format!("Too Many Requests: retry after {secs}"),
        "parameters": {"retry_after": secs},
    })
}

#[tokio::test]
async fn pacing_is_off_by_default() {
    let fake = FakeTelegram::start().await;
    for _ in 0..40 {
        assert_eq!(send(&fake, 1).await.0, 200);
    }
    assert_eq!(fake.too_many_count(), 0);
    assert_eq!(fake.sent_messages(1).len(), 40);
}

#[tokio::test]
async fn the_third_call_within_a_second_to_one_chat_is_refused() {
    let fake = FakeTelegram::start_paced().await;
    assert_eq!(send(&fake, 1).await.0, 200);
    assert_eq!(send(&fake, 1).await.0, 200);
    // The third is refused exactly as Telegram refuses it, and not handled.
    assert_eq!(send(&fake, 1).await, (429, too_many(1)));
    assert_eq!(fake.sent_messages(1).len(), 2);
    // Another chat is not affected.
    assert_eq!(send(&fake, 2).await.0, 200);
    // Edits count like sends: they are calls to the chat.
    let edit = json!({"chat_id": 1, "message_id": 1, "text": "edited"});
    assert_eq!(raw(&fake, "editMessageText", edit.clone()).await.0, 429);
    // The refused calls are recorded with their answer, and counted.
    assert_eq!(fake.too_many_count(), 2);
    let refused: Vec<_> = fake
        .calls()
        .into_iter()
        .filter(|c| c.status == Some(429))
        .collect();
    assert_eq!(refused.len(), 2);
    assert_eq!(refused[0].response.as_ref(), Some(&too_many(1)));
    // A second later there is room again (the refused calls did not use any).
    fake.shift_pacing_clock(Duration::from_secs(1));
    assert_eq!(raw(&fake, "editMessageText", edit).await.0, 200);
    assert_eq!(send(&fake, 1).await.0, 200);
    assert_eq!(send(&fake, 1).await.0, 429);
    assert_eq!(fake.too_many_count(), 3);
}

#[tokio::test]
async fn the_31st_call_within_a_second_overall_is_refused() {
    let fake = FakeTelegram::start_paced().await;
    for chat in 1..=29 {
        assert_eq!(send(&fake, chat).await.0, 200, "chat {chat}");
    }
    // A call to no chat counts toward the overall limit: this is the 30th.
    assert_eq!(raw(&fake, "getMe", json!({})).await.0, 200);
    // getUpdates is neither counted nor refused.
    for _ in 0..3 {
        let (status, body) = raw(&fake, "getUpdates", json!({"timeout": 0})).await;
        assert_eq!((status, body["ok"].clone()), (200, json!(true)));
    }
    // The 31st, to a chat that had nothing yet, and one to no chat.
    assert_eq!(send(&fake, 31).await, (429, too_many(1)));
    assert_eq!(raw(&fake, "getMe", json!({})).await, (429, too_many(1)));
    assert_eq!(fake.too_many_count(), 2);
    fake.shift_pacing_clock(Duration::from_secs(1));
    assert_eq!(send(&fake, 31).await.0, 200);
}

#[tokio::test]
async fn a_group_gets_20_calls_a_minute_and_a_private_chat_more() {
    let fake = FakeTelegram::start_paced().await;
    let (group, private) = (-100_555, 555);
    // Two calls a second (the per-chat limit) for ten seconds: 20 calls.
    for second in 0..10 {
        for chat in [group, group, private, private] {
            assert_eq!(send(&fake, chat).await.0, 200, "second {second}");
        }
        fake.shift_pacing_clock(Duration::from_secs(1));
    }
    // The group's 21st waits until the first call is a minute old: 50 s from now.
    assert_eq!(send(&fake, group).await, (429, too_many(50)));
    assert_eq!(send(&fake, private).await.0, 200);
    assert_eq!(fake.too_many_count(), 1);
    fake.shift_pacing_clock(Duration::from_secs(49));
    assert_eq!(send(&fake, group).await, (429, too_many(1)));
    fake.shift_pacing_clock(Duration::from_secs(1));
    assert_eq!(send(&fake, group).await.0, 200);
    assert_eq!(fake.sent_messages(group).len(), 21);
}

#[tokio::test]
async fn teloxide_reads_the_429_as_retry_after_for_messages_and_uploads() {
    let fake = FakeTelegram::start_paced().await;
    let bot = fake.bot();
    bot.send_message(ChatId(7), "one").await.unwrap();
    let doc = || InputFile::memory(b"hello".to_vec()).file_name("a.txt");
    // A multipart upload is paced by its chat_id like any call.
    bot.send_document(ChatId(7), doc()).await.unwrap();
    match bot.send_document(ChatId(7), doc()).await {
        Err(RequestError::RetryAfter(s)) => assert_eq!(s.seconds(), 1),
        other => panic!("expected RetryAfter, got {other:?}"),
    }
    match bot.send_message(ChatId(7), "three").await {
        Err(RequestError::RetryAfter(s)) => assert_eq!(s.seconds(), 1),
        other => panic!("expected RetryAfter, got {other:?}"),
    }
    assert_eq!(fake.too_many_count(), 2);
    fake.set_pacing(false);
    bot.send_message(ChatId(7), "unpaced").await.unwrap();
    assert_eq!(fake.too_many_count(), 2, "switching off keeps the count");
}
