//! Telegram's pacing (issue 13), with the fake Bot API enforcing it the way
//! Telegram does (429 past 30 calls a second overall, the third call within a
//! second to one chat, more than 20 a minute to a group): a hundred users
//! sending a link at the same moment each get their acknowledgement and
//! their file, and the bot paces itself so the fake seldom has to refuse.

mod support;

use std::time::Duration;

use support::bot::{media, TestBot};
use support::fake_telegram::FakeTelegram;
use support::service::{service_for, submit_link};
use tgdl::botapi::board::Boards;
use tgdl::botapi::board::MAX_LINES;
use tgdl::pipeline::recovery;
use tgdl::store::JobStore;

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
    // Which calls were refused, to tell the overall limit from a chat's.
    let first = calls.first().map(|c| c.received_at);
    for c in calls.iter().filter(|c| c.status == Some(429)) {
        let at = first.map(|f| c.received_at.duration_since(f));
        let to_chat = c.chat_id().map(|chat| {
            calls
                .iter()
                .filter(|o| o.chat_id() == Some(chat) && o.seq < c.seq)
                .map(|o| o.method.as_str())
                .collect::<Vec<_>>()
        });
        let window: Vec<String> = calls
            .iter()
            .filter(|o| {
                o.seq != c.seq
                    && !o.is("getUpdates")
                    && o.received_at <= c.received_at
                    && c.received_at.duration_since(o.received_at) < Duration::from_secs(1)
            })
            .map(|o| {
                format!(
                    "{}@{:?}",
                    o.method,
                    first.map(|f| o.received_at.duration_since(f))
                )
            })
            .collect();
        println!(
            "refused: {} to {:?} at {at:?}, after {to_chat:?}; {} calls in the second before: {window:?}",
            c.method,
            c.chat_id(),
            window.len()
        );
    }
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

/// In a group, links sent within a minute of another share one status
/// message (a line each), so the group's 20 calls a minute go to
/// acknowledgements and files instead of one message, stage line, edits and
/// deletion per link.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn links_sent_to_a_group_within_a_minute_share_one_status_message() {
    const GROUP: i64 = -100_777;
    const LINKS: i32 = 12;
    let api = FakeTelegram::start_paced().await;
    let media = media().await;
    let mut bot = TestBot::start(&api, "[limits]\nper_user_active = 5").await;
    let started = std::time::Instant::now();
    // Different users, different links: every one is downloaded.
    let sent: Vec<i32> = (1..=LINKS)
        .map(|u| {
            let link = media.url(&format!("/tiny.mp4?u={u}"));
            api.push_text(GROUP, u as u64, &link, None)
        })
        .collect();
    let delivered = api
        .try_wait_for(
            |calls| {
                sent.iter().all(|m| {
                    calls
                        .iter()
                        .any(|c| c.is("sendVideo") && c.reply_to() == Some(*m) && c.succeeded())
                })
            },
            T,
        )
        .await;
    let elapsed = started.elapsed();
    // The last delivery removes the shared messages.
    let _ = api
        .try_wait_for(
            |calls| {
                calls
                    .iter()
                    .filter(|c| c.is("deleteMessage") && c.chat_id() == Some(GROUP))
                    .count()
                    >= calls
                        .iter()
                        .filter(|c| c.is("sendMessage") && c.chat_id() == Some(GROUP))
                        .count()
            },
            Duration::from_secs(70),
        )
        .await;
    let calls = api.calls();
    let to_group: Vec<_> = calls
        .iter()
        .filter(|c| c.chat_id() == Some(GROUP))
        .collect();
    let count = |m: &str| to_group.iter().filter(|c| c.is(m)).count();
    println!(
        "{LINKS} links in one group: {} calls to it ({} sendMessage, {} edits, {} deleteMessage), \
         last file after {elapsed:?}, {} answered 429",
        to_group.len(),
        count("sendMessage"),
        count("editMessageText"),
        count("deleteMessage"),
        api.too_many_count()
    );
    assert!(delivered.is_some(), "not every link got its file");
    // Every job was acknowledged on the shared message: its id appears in a
    // line of it ("Accepted as job <id>").
    bot.stop().await.unwrap();
    let store = bot.store();
    let ids: Vec<String> = store
        .list_state(tgdl::job::JobState::Done, 100)
        .unwrap()
        .iter()
        .map(|j| j.id.short())
        .collect();
    assert_eq!(ids.len(), LINKS as usize);
    // Each job had a line on the shared message (its acknowledgement, or
    // already its next stage when edits were coalesced).
    for id in &ids {
        assert!(
            to_group
                .iter()
                .any(|c| !c.is("sendVideo") && c.text().unwrap_or("").contains(id.as_str())),
            "job {id} never appeared on a status message"
        );
    }
    // The first link found the group quiet: its own message (with the
    // choice buttons). The rest share boards of at most MAX_LINES jobs (a
    // delivered job's line leaves, so a later link may still join).
    let most = 1 + (LINKS as usize - 1).div_ceil(MAX_LINES);
    let messages = count("sendMessage");
    assert!((2..=most).contains(&messages), "{messages} status messages");
    assert_eq!(
        count("deleteMessage"),
        messages,
        "each removed after its last file"
    );
    assert_eq!(api.too_many_count(), 0);
}

/// After a restart the jobs of a group that still share a status message get
/// their board back, so each job's next line edits its own line on it instead
/// of the whole message; a message with one job left stays its own.
#[tokio::test]
async fn after_a_restart_jobs_sharing_a_group_message_get_their_board_back() {
    let api = FakeTelegram::start().await;
    let dir = tempfile::tempdir().unwrap();
    let core = service_for(&api, dir.path(), "");
    let mut ids = Vec::new();
    for user in 1..=4u64 {
        let job = submit_link(&core, -42, user, &format!("https://example.com/v{user}")).await;
        // Three share message 500; the fourth has its own.
        let message = if user <= 3 { 500 } else { 501 };
        core.attach_status(&job, message).await.unwrap();
        ids.push(job.id);
    }
    let boards = Boards::default();
    assert_eq!(recovery::adopt_boards(&core, &boards).await.unwrap(), 1);
    let board = boards
        .find(-42, 500)
        .expect("the shared message is a board");
    assert!(ids[..3].iter().all(|id| board.holds(*id)));
    assert!(boards.find(-42, 501).is_none());
    // Lines come back as the jobs report; nothing new joins an old board.
    assert!(board.set(ids[1], "second"));
    assert_eq!(board.text(), "second");
    assert!(boards
        .join(-42, tgdl::job::JobId::new(), "new".into())
        .is_none());
}
