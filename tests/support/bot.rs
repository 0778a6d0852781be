//! Running the real bot in-process against the fake Bot API and the media
//! server: `TestBot::start` writes a config into a temp dir, starts
//! `tgdl::app::run` with a shutdown trigger the test holds, and gives access
//! to the same sled database (after stop) and the downloads folder.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::fake_telegram::{FakeTelegram, SentMessage};
use super::media_server::MediaServer;

pub const TOKEN: &str = "123456:TEST-token";
pub const ADMIN: u64 = 9000;

/// The disk guard's threshold in test configs. The guard measures the host's
/// real disk, and a CI machine may well have under 10 % free (one had 8.6 %,
/// 21.6 GB, and every download test waited paused). Tests of the guard use a
/// scripted probe and set the threshold they test; the rest must not depend
/// on how full the machine running them is. For the same reason the test
/// configs set the memory and CPU warnings to 100 % (never): a busy CI host
/// would otherwise add admin alerts to the calls a test reads.
pub const HOST_DISK_CRITICAL: f64 = 0.5;

pub struct TestBot {
    pub dir: tempfile::TempDir,
    pub config: tgdl::config::Config,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

/// A config for tests: loopback allowed (the media server is on 127.0.0.1),
/// fast retries, one-second progress edits, the admin above, the disk guard
/// at [`HOST_DISK_CRITICAL`], and yt-dlp
/// releases looked up in an empty local folder, never the live registry.
pub fn test_config(dir: &Path, api: &FakeTelegram, extra: &str) -> tgdl::config::Config {
    let text = format!(
        r#"
[telegram]
token = "{TOKEN}"
api_url = "{api}"
admins = [{ADMIN}]
progress_interval_secs = 1
choice_wait_secs = 0
[storage]
data_dir = "{data}"
[downloader]
ytdlp = "{ytdlp}"
ytdlp_source = "{data}/no-releases"
retry_base_secs = 1
max_attempts = 3
[security]
allow_private_networks = true
[health]
disk_free_percent_critical = {HOST_DISK_CRITICAL}
memory_percent_warning = 100
cpu_percent_warning = 100
{extra}
"#,
        api = api.url_string(),
        data = dir.join("data").display(),
        ytdlp = super::ytdlp().display(),
    );
    // Later sections in `extra` may repeat a table; merge them instead.
    let text = merge_tables(&text);
    tgdl::config::Config::parse(&text, None).unwrap_or_else(|e| panic!("test config: {e}\n{text}"))
}

/// TOML forbids a table twice; tests append overrides, so fold repeats.
pub(super) fn merge_tables(text: &str) -> String {
    let mut order: Vec<String> = Vec::new();
    let mut tables: std::collections::HashMap<String, Vec<String>> = Default::default();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            current = t.to_string();
            if !tables.contains_key(&current) {
                order.push(current.clone());
                tables.insert(current.clone(), Vec::new());
            }
        } else if !t.is_empty() {
            let key = t.split('=').next().unwrap_or("").trim().to_string();
            let lines = tables.entry(current.clone()).or_default();
            lines.retain(|l| l.split('=').next().unwrap_or("").trim() != key);
            lines.push(t.to_string());
        }
    }
    let mut out = String::new();
    for name in order {
        out.push_str(&name);
        out.push('\n');
        for l in &tables[&name] {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// Turn "ask on each link" on for `users` in the store at `db` while no bot
/// runs, as their own `/settings` press would: for tests of the choice
/// window (a link otherwise starts at once).
pub fn ask_on(db: &Path, users: &[u64]) {
    use tgdl::store::JobStore;
    let store = tgdl::store::SledStore::open(db).expect("open the store to seed settings");
    for user in users {
        let settings = tgdl::store::UserSettings {
            ask: true,
            ..Default::default()
        };
        store.put_settings(*user, &settings).unwrap();
    }
}

/// Wait until nothing holds sled's lock on the database in `db` (at most
/// 5 s). A store this process just closed (the test's own, or a stopped
/// bot's) is let go by sled's background I/O threads a moment later, and a
/// bot started meanwhile would fail to open it. The probe takes the same
/// `flock(2)` sled takes, on a descriptor of its own, which closing releases
/// at once; opening the store to test it would leave the same race behind.
/// There is nothing to be notified by, so the probe is repeated.
fn wait_until_unlocked(db: &Path) {
    use nix::fcntl::{Flock, FlockArg};
    const WITHIN: Duration = Duration::from_secs(5);
    let deadline = std::time::Instant::now() + WITHIN;
    loop {
        // No data file: no database yet, nobody to wait for.
        let Ok(file) = std::fs::File::open(db.join("db")) else {
            return;
        };
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(_released_on_drop) => return,
            Err((_, e)) if std::time::Instant::now() < deadline => {
                assert_eq!(e, nix::errno::Errno::EWOULDBLOCK, "flock {}", db.display());
                std::thread::sleep(Duration::from_millis(20));
            }
            Err((_, e)) => panic!(
                "the database in {} is still locked after {WITHIN:?}: {e}",
                db.display()
            ),
        }
    }
}

impl TestBot {
    pub async fn start(api: &FakeTelegram, extra: &str) -> TestBot {
        Self::start_asking(api, extra, &[]).await
    }

    /// [`TestBot::start`] with "ask on each link" on for `users`.
    pub async fn start_asking(api: &FakeTelegram, extra: &str, users: &[u64]) -> TestBot {
        let dir = tempfile::tempdir().unwrap();
        let config = test_config(dir.path(), api, extra);
        if !users.is_empty() {
            ask_on(&config.db_dir(), users);
        }
        let mut bot = TestBot {
            dir,
            config,
            stop: None,
            handle: None,
        };
        bot.launch();
        bot
    }

    /// Start (again) on the same data directory.
    pub fn launch(&mut self) {
        if std::env::var_os("TGDL_LOG").is_some() {
            tgdl::app::init_logging();
        }
        wait_until_unlocked(&self.config.db_dir());
        let (tx, rx) = oneshot::channel::<()>();
        let config = self.config.clone();
        self.stop = Some(tx);
        self.handle = Some(tokio::spawn(async move {
            let result = tgdl::app::run(config, async {
                let _ = rx.await;
            })
            .await;
            // A test waiting for the bot's calls would otherwise only say
            // that none came.
            if let Err(e) = &result {
                eprintln!("tgdl::app::run ended with an error: {e:#}");
            }
            result
        }));
    }

    /// Trigger shutdown and wait for `run` to return.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.handle.take() {
            Some(h) => tokio::time::timeout(Duration::from_secs(20), h)
                .await
                .expect("bot stops within 20 s")
                .expect("bot task"),
            None => Ok(()),
        }
    }

    /// Whether `run` is still going (it has not returned, with an error or
    /// otherwise). A bot that crashed or gave up is not running.
    pub fn is_running(&self) -> bool {
        self.handle.as_ref().is_some_and(|h| !h.is_finished())
    }

    pub fn downloads(&self) -> PathBuf {
        self.config.downloads_dir()
    }

    /// Files left under the downloads folder (recursively).
    pub fn leftover_files(&self) -> Vec<PathBuf> {
        super::fs::files_under(&self.downloads())
    }

    /// Open the database (the bot must be stopped: sled allows one opener),
    /// once sled has let go of it ([`wait_until_unlocked`]).
    pub fn store(&self) -> tgdl::store::SledStore {
        wait_until_unlocked(&self.config.db_dir());
        tgdl::store::SledStore::open(&self.config.db_dir())
            .unwrap_or_else(|e| panic!("open db after stop: {e:?}"))
    }
}

impl Drop for TestBot {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Waits until one of the bot's messages in `chat` has a text that satisfies `pred`, and returns
/// the bot's messages there; panics with them after `timeout`.
pub async fn wait_for_text(
    api: &FakeTelegram,
    chat: i64,
    pred: impl Fn(&str) -> bool,
    timeout: Duration,
) -> Vec<SentMessage> {
    api.wait_for_messages(
        chat,
        |m| m.iter().any(|m| m.text.as_deref().is_some_and(&pred)),
        timeout,
    )
    .await
}

/// The callback data of every button on a sent message, with its label.
pub fn buttons(call: &super::fake_telegram::Call) -> Vec<(String, String)> {
    call.param("reply_markup")
        .map(super::keyboard_buttons)
        .unwrap_or_default()
}

/// The id of the message a successful send made.
pub fn message_id(call: &super::fake_telegram::Call) -> i32 {
    call.result().unwrap()["message_id"].as_i64().unwrap() as i32
}

/// User `chat` sends `link` in their private chat; the bot's "Accepted"
/// acknowledgement (with its buttons), within 60 s.
pub async fn ack(api: &FakeTelegram, chat: i64, link: &str) -> super::fake_telegram::Call {
    let accepted = |c: &super::fake_telegram::Call| {
        c.is("sendMessage")
            && c.succeeded()
            && c.chat_id() == Some(chat)
            && c.text().is_some_and(|t| t.contains("Accepted"))
    };
    let n = api.calls().iter().filter(|c| accepted(c)).count();
    api.push_text(chat, chat as u64, link, None);
    let calls = api
        .wait_for(
            |c| c.iter().filter(|c| accepted(c)).count() > n,
            Duration::from_secs(60),
        )
        .await;
    calls.into_iter().rfind(accepted).unwrap()
}

/// What the bot answered to the button press `query` (within 60 s).
pub async fn answer_to(api: &FakeTelegram, query: &str) -> String {
    let answered = |c: &super::fake_telegram::Call| {
        c.is("answerCallbackQuery") && c.param_str("callback_query_id") == Some(query)
    };
    let calls = api
        .wait_for(|c| c.iter().any(answered), Duration::from_secs(60))
        .await;
    calls
        .iter()
        .find(|c| answered(c))
        .and_then(|c| c.param_str("text"))
        .unwrap_or_default()
        .to_string()
}

/// Media server with the committed fixtures.
pub async fn media() -> MediaServer {
    MediaServer::fixtures().await
}

/// The bot's first answer to the user's message `msg_id` in `chat`: its text.
pub async fn reply_text(api: &FakeTelegram, chat: i64, msg_id: i32, timeout: Duration) -> String {
    let is_reply = |c: &super::fake_telegram::Call| {
        c.is("sendMessage")
            && c.chat_id() == Some(chat)
            && c.reply_to() == Some(msg_id)
            && c.succeeded()
    };
    api.wait_for(|calls| calls.iter().any(is_reply), timeout)
        .await
        .into_iter()
        .find(is_reply)
        .and_then(|c| c.text().map(str::to_owned))
        .unwrap()
}

/// Sends `text` (a link) as the user of private chat `chat` and expects it accepted: the job's
/// short id and its status message id.
pub async fn accept_link(
    api: &FakeTelegram,
    chat: i64,
    text: &str,
    timeout: Duration,
) -> (String, i32) {
    let msg_id = api.push_text(chat, chat as u64, text, Some("en"));
    let is_ack = |c: &super::fake_telegram::Call| {
        c.is("sendMessage")
            && c.chat_id() == Some(chat)
            && c.reply_to() == Some(msg_id)
            && c.succeeded()
    };
    let ack = api
        .wait_for(|calls| calls.iter().any(is_ack), timeout)
        .await
        .into_iter()
        .find(is_ack)
        .unwrap();
    let body = ack.text().unwrap().to_owned();
    let short: String = body
        .split("Accepted as job ")
        .nth(1)
        .unwrap_or_else(|| panic!("{text:?} was not accepted: {body:?}"))
        .chars()
        .take_while(char::is_ascii_hexdigit)
        .collect();
    let status = ack.result().unwrap()["message_id"].as_i64().unwrap() as i32;
    (short, status)
}

/// Waits until the bot's message `message_id` in `chat` reads like `pred`; returns that text.
pub async fn message_becomes(
    api: &FakeTelegram,
    chat: i64,
    message_id: i32,
    pred: impl Fn(&str) -> bool,
    timeout: Duration,
) -> String {
    let found = |ms: &[SentMessage]| {
        ms.iter()
            .find(|m| m.message_id == message_id)
            .and_then(|m| m.text.clone())
            .filter(|t| pred(t))
    };
    let msgs = api
        .wait_for_messages(chat, |ms| found(ms).is_some(), timeout)
        .await;
    found(&msgs).unwrap()
}
