//! The pacer against the paced fake Bot API, over real HTTP and the real clock (issue 13): what
//! the paused-clock unit tests in `src/pacer.rs` cannot show is that its margin absorbs the real
//! delay between a grant and the call reaching the API.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::fake_telegram::FakeTelegram;
use teloxide::prelude::*;
use teloxide::types::MessageId;
use tgdl::botapi::pacer::{Edited, MessageKey, PaceError, Pacer, PacerConfig, Priority};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_chats_at_once_all_get_their_replies_without_a_429() {
    let fake = FakeTelegram::start_paced().await;
    let bot = fake.bot();
    let pacer = Pacer::new(PacerConfig::default(), CancellationToken::new());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for chat in 1..=100i64 {
        let (bot, pacer) = (bot.clone(), pacer.clone());
        tasks.push(tokio::spawn(async move {
            let ack = pacer
                .call(chat, Priority::Urgent, || {
                    bot.send_message(ChatId(chat), "Accepted")
                })
                .await
                .expect("acknowledged");
            // Ten users also get a status edit and two more messages: the per-chat limit binds.
            if chat <= 10 {
                let key = MessageKey::new(chat, ack.id.0);
                let edited = pacer
                    .edit(key, Priority::Progress, || {
                        bot.edit_message_text(ChatId(chat), ack.id, "Downloading 10%")
                    })
                    .await
                    .expect("edited");
                assert!(matches!(edited, Edited::Sent(_)));
                for text in ["file", "done"] {
                    pacer
                        .call(chat, Priority::Urgent, || {
                            bot.send_message(ChatId(chat), text)
                        })
                        .await
                        .expect("sent");
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let took = started.elapsed();
    for chat in 1..=100 {
        let expected = if chat <= 10 { 3 } else { 1 };
        assert_eq!(fake.sent_messages(chat).len(), expected, "chat {chat}");
    }
    let calls = fake.calls();
    let t0 = calls[0].received_at;
    let timeline: Vec<String> = calls
        .iter()
        .map(|c| {
            let ms = c.received_at.duration_since(t0).as_millis();
            format!("{ms}ms {} {:?} {:?}", c.method, c.chat_id(), c.status)
        })
        .collect();
    assert_eq!(fake.too_many_count(), 0, "{}", timeline.join("\n"));
    assert_eq!(pacer.stats().retried_after_429, 0);
    // 130 calls at a little under 30 a second take 4.6 s; the ten status edits go last (they are
    // progress) at about 3.3 s, and their chats' last two messages follow 2 s later.
    assert!(took >= Duration::from_secs(4), "{took:?}");
    assert!(took < Duration::from_secs(7), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_progress_edit_storm_on_one_chat_never_delays_another_chats_ack() {
    let fake = FakeTelegram::start().await;
    let bot = fake.bot();
    // Chat 1 has five status messages (sent before pacing is switched on, to save the time),
    // each edited 20 times as fast as workers can.
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(bot.send_message(ChatId(1), "Queued").await.unwrap().id);
    }
    fake.set_pacing(true);
    let shutdown = CancellationToken::new();
    let pacer = Pacer::new(PacerConfig::default(), shutdown.clone());
    let storm: Vec<_> = (0..100)
        .map(|i| {
            let (bot, pacer) = (bot.clone(), pacer.clone());
            let id: MessageId = ids[i % 5];
            tokio::spawn(async move {
                let text = format!("{i}%");
                pacer
                    .edit(MessageKey::new(1, id.0), Priority::Progress, || {
                        bot.edit_message_text(ChatId(1), id, text.clone())
                    })
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Chat 2's acknowledgement goes out at once.
    let asked = Instant::now();
    pacer
        .call(2, Priority::Urgent, || {
            bot.send_message(ChatId(2), "Accepted")
        })
        .await
        .unwrap();
    let ack_latency = asked.elapsed();
    assert!(ack_latency < Duration::from_millis(300), "{ack_latency:?}");

    // The storm was coalesced: at most one waiting edit per message, the rest superseded.
    shutdown.cancel();
    let (mut sent, mut superseded, mut cut) = (0, 0, 0);
    for t in storm {
        match tokio::time::timeout(Duration::from_secs(2), t)
            .await
            .expect("shutdown ends every paced wait")
            .unwrap()
        {
            Ok(Edited::Sent(_)) => sent += 1,
            Ok(Edited::Superseded) => superseded += 1,
            Err(PaceError::Shutdown) => cut += 1,
            Err(e) => panic!("edit failed: {e}"),
        }
    }
    // Chat 1's burst of two went out; then one edit per message waited (cut by shutdown), and
    // every other edit was replaced by a newer one of its message.
    assert_eq!(sent, 2);
    assert!((4..=5).contains(&cut), "{cut} edits waited for 5 messages");
    assert_eq!(superseded, 98 - cut);
    assert_eq!(fake.too_many_count(), 0, "{}", fake.describe_calls());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_from_the_api_is_waited_out_and_the_message_delivered() {
    let fake = FakeTelegram::start_paced().await;
    let bot = fake.bot();
    let pacer = Arc::new(Pacer::new(PacerConfig::default(), CancellationToken::new()));
    // Something outside the pacer used up chat 5's second.
    bot.send_message(ChatId(5), "a").await.unwrap();
    bot.send_message(ChatId(5), "b").await.unwrap();
    let started = Instant::now();
    pacer
        .call(5, Priority::Urgent, || {
            bot.send_message(ChatId(5), "must arrive")
        })
        .await
        .expect("delivered after the wait");
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(fake.too_many_count(), 1);
    assert_eq!(pacer.stats().retried_after_429, 1);
    let texts: Vec<_> = fake
        .sent_messages(5)
        .into_iter()
        .filter_map(|m| m.text)
        .collect();
    assert_eq!(texts, ["a", "b", "must arrive"]);
}
