//! Durable intake (issue 15): the real binary is SIGKILLed at the moment a
//! `getUpdates` confirms a burst of links to Telegram (0, 5 and 20 ms after
//! the fake Bot API sees the confirming offset), then restarted. Telegram
//! never sends a confirmed update again, so every link must come back from
//! the bot's own inbox: each becomes exactly one job, and gets one
//! acknowledgement. A second acknowledgement is only allowed where the kill
//! landed after the bot sent the first and before it recorded it (Telegram
//! has no idempotent send, so no bot can tell after a crash whether that one
//! arrived), and each is checked against the kill's instant.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::binary::{binary_config, write_config, BotProcess};
use support::fake_telegram::{Call, FakeTelegram};
use tgdl::job::JobState;
use tgdl::store::{JobStore, SledStore};

const T: Duration = Duration::from_secs(60);
/// Links per burst: 8 users, 5 messages each.
const USERS: i64 = 8;
const PER_USER: usize = 5;
const DELAYS_MS: [u64; 3] = [0, 5, 20];

/// Jobs wait 10 minutes for a choice (every user has "ask" on, seeded before
/// the bot starts), so nothing downloads: the test is about intake, and 40
/// links a round stay cheap.
const SETTINGS: &str = "[telegram]
choice_wait_secs = 600
[limits]
per_user_active = 1000
per_user_per_hour = 10000";

/// The bot to kill at the next confirmation, how long after it, and where to
/// say when the kill was done.
type Trap = Option<(i32, Duration, std::sync::mpsc::Sender<Instant>)>;

#[derive(Default, Debug)]
struct Round {
    links: usize,
    lost: usize,
    extra_jobs: usize,
    extra_acks: usize,
    unexplained_extra_acks: usize,
}

/// The acknowledgements of one user message: answered `sendMessage`s that
/// reply to it with "Accepted".
fn acks(calls: &[Call], chat: i64, msg: i32) -> Vec<Call> {
    calls
        .iter()
        .filter(|c| {
            c.is("sendMessage")
                && c.chat_id() == Some(chat)
                && c.reply_to() == Some(msg)
                && c.text().is_some_and(|t| t.contains("Accepted"))
                && c.succeeded()
        })
        .cloned()
        .collect()
}

async fn round(api: &FakeTelegram, trap: &Arc<Mutex<Trap>>, n: usize, delay: Duration) -> Round {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &binary_config(dir.path(), &api.url_string(), SETTINGS),
    );
    let log = dir.path().join("bot.log");
    // The burst is queued before the bot polls, so its first getUpdates
    // takes all of it and the second confirms all of it.
    let mut sent: Vec<(i64, i32)> = Vec::new();
    for u in 0..USERS {
        let chat = 5000 + u;
        for k in 0..PER_USER {
            let link = format!("http://127.0.0.1:9/r{n}/u{u}/clip-{k}.mp4");
            sent.push((chat, api.push_text(chat, chat as u64, &link, None)));
        }
    }
    let users: Vec<u64> = (0..USERS).map(|u| 5000 + u as u64).collect();
    support::bot::ask_on(&dir.path().join("data/db"), &users);
    let mut bot = BotProcess::start(&cfg, &log);
    let (tx, killed) = std::sync::mpsc::channel();
    *trap.lock().unwrap() = Some((bot.pid(), delay, tx));
    let status = bot.wait_timeout(T).expect("the trap killed the bot");
    assert!(!status.success(), "killed, not exited: {status:?}");
    killed.recv_timeout(T).expect("the trap fired");
    // The killed bot's last requests may still sit in the fake's socket
    // buffers: once its connections are closed, all of them are recorded,
    // so any call recorded later comes from the restarted bot.
    assert!(
        api.wait_connections_closed(T).await,
        "the killed bot's connections were never closed"
    );

    // Restart on the raw post-kill state; it handles its inbox first. Every
    // call the fake received before this instant came from the killed bot.
    let restarted_at = Instant::now();
    let mut bot = BotProcess::start(&cfg, &log);
    let all_acked = api
        .try_wait_for(
            |calls| sent.iter().all(|(c, m)| !acks(calls, *c, *m).is_empty()),
            T,
        )
        .await
        .is_some();
    bot.sigterm();
    assert!(
        bot.wait_timeout(T).is_some_and(|s| s.success()),
        "clean exit; log:\n{}",
        bot.log_text()
    );

    let store = SledStore::open(&dir.path().join("data/db")).unwrap();
    let jobs = store.list_state(JobState::Queued, 10_000).unwrap();
    let mut per_link: HashMap<(i64, i32), usize> = HashMap::new();
    for j in &jobs {
        *per_link.entry((j.chat_id, j.request_msg_id)).or_default() += 1;
    }
    let mut r = Round {
        links: sent.len(),
        ..Round::default()
    };
    for (chat, msg) in &sent {
        match per_link.get(&(*chat, *msg)).copied().unwrap_or(0) {
            0 => r.lost += 1,
            k => r.extra_jobs += k - 1,
        }
        let a = acks(&api.calls(), *chat, *msg);
        if a.len() > 1 {
            r.extra_acks += a.len() - 1;
            // The killed bot sent the first and died before recording it
            // (or before seeing the answer): no process can tell after a
            // crash. Two from the restarted bot would be a real double.
            if a[0].received_at >= restarted_at || a.len() > 2 {
                r.unexplained_extra_acks += a.len() - 1;
            }
        }
    }
    assert!(
        store.inbox_pending().unwrap().is_empty(),
        "every update left the inbox"
    );
    let report = store.check_invariants().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(all_acked || r.lost > 0, "some link was never acknowledged");
    r
}

async fn run(rounds: usize) -> Vec<(u64, Round)> {
    let api = FakeTelegram::start().await;
    let trap: Arc<Mutex<Trap>> = Arc::default();
    {
        let trap = trap.clone();
        api.on_confirm(move |_offset| {
            let Some((pid, delay, done)) = trap.lock().unwrap().take() else {
                return;
            };
            let kill = move || {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                let _ = done.send(Instant::now());
            };
            if delay.is_zero() {
                kill();
            } else {
                std::thread::spawn(move || {
                    std::thread::sleep(delay);
                    kill();
                });
            }
        });
    }
    let mut out = Vec::new();
    for n in 0..rounds {
        let delay = DELAYS_MS[n % DELAYS_MS.len()];
        out.push((
            delay,
            round(&api, &trap, n, Duration::from_millis(delay)).await,
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kill_when_telegram_forgets_a_burst_loses_no_link() {
    let rounds = run(21).await;
    let mut by_delay: HashMap<u64, (usize, usize, usize, usize)> = HashMap::new();
    for (delay, r) in &rounds {
        let e = by_delay.entry(*delay).or_default();
        e.0 += r.links;
        e.1 += r.lost;
        e.2 += r.extra_jobs;
        e.3 += r.extra_acks;
    }
    for d in DELAYS_MS {
        let (links, lost, extra_jobs, extra_acks) = by_delay[&d];
        println!(
            "kill {d} ms after the confirmation: {links} links, {lost} lost, {extra_jobs} duplicate jobs, {extra_acks} second acknowledgements"
        );
    }
    for (delay, r) in &rounds {
        assert_eq!(r.lost, 0, "kill at +{delay} ms lost links: {r:?}");
        assert_eq!(
            r.extra_jobs, 0,
            "kill at +{delay} ms duplicated jobs: {r:?}"
        );
        assert_eq!(
            r.unexplained_extra_acks, 0,
            "kill at +{delay} ms: a link acknowledged twice without a kill in its window: {r:?}"
        );
    }
}
