//! Telegram's pacing (issue 13), with the fake Bot API enforcing it the way
//! Telegram does (429 past 30 calls a second overall, the third call within a
//! second to one chat, more than 20 a minute to a group): a hundred users
//! sending a link at the same moment each get their acknowledgement and
//! their file, and the bot paces itself so the fake seldom has to refuse.

mod support;

use std::time::Duration;

use support::bot::{media, TestBot};
use support::fake_telegram::FakeTelegram;

const USERS: i64 = 100;
const T: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_users_at_once_each_get_the_acknowledgement_and_the_file() {
    let api = FakeTelegram::start_paced().await;
    let media = media().await;
    // Everyone sends the same clip: the first delivery fills the cache, the
    // rest are sent by file_id, so the test is about Telegram calls.
    let link = media.url("/tiny.mp4");
    let mut bot = TestBot::start(&api, "[limits]\nper_user_active = 5").await;
    let sent: Vec<(i64, i32)> = (1..=USERS)
        .map(|chat| (chat, api.push_text(chat, chat as u64, &link, None)))
        .collect();
    let done = api
        .try_wait_for(
            |calls| {
                sent.iter().all(|(chat, msg)| {
                    let to_this = |method: &str| {
                        calls.iter().any(|c| {
                            c.is(method)
                                && c.chat_id() == Some(*chat)
                                && c.reply_to() == Some(*msg)
                                && c.succeeded()
                        })
                    };
                    to_this("sendMessage") && to_this("sendVideo")
                })
            },
            T,
        )
        .await;
    let calls = api.calls();
    let missing: Vec<i64> = sent
        .iter()
        .filter(|(chat, msg)| {
            !calls.iter().any(|c| {
                c.is("sendVideo")
                    && c.chat_id() == Some(*chat)
                    && c.reply_to() == Some(*msg)
                    && c.succeeded()
            })
        })
        .map(|(chat, _)| *chat)
        .collect();
    let refused = api.too_many_count();
    let mut methods = std::collections::BTreeMap::<String, usize>::new();
    for c in &calls {
        *methods.entry(c.method.clone()).or_default() += 1;
    }
    println!("calls by method: {methods:?}");
    println!(
        "{USERS} users: {} Bot API calls, {refused} answered 429 by the paced fake",
        calls.len()
    );
    assert!(
        done.is_some(),
        "users without an acknowledgement and a file: {missing:?}"
    );
    // The bot paces itself below the limits; a 429 may still happen when a
    // call reaches the fake later than the bot let it go (a busy machine),
    // and then it is retried, never dropped.
    assert!(refused <= 5, "{refused} calls were refused with 429");
    bot.stop().await.unwrap();
}
