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

pub struct TestBot {
    pub dir: tempfile::TempDir,
    pub config: tgdl::config::Config,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

/// A config for tests: loopback allowed (the media server is on 127.0.0.1),
/// fast retries, one-second progress edits, the admin above.
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
ytdlp = "auto"
retry_base_secs = 1
max_attempts = 3
[security]
allow_private_networks = true
{extra}
"#,
        api = api.url_string(),
        data = dir.join("data").display(),
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

impl TestBot {
    pub async fn start(api: &FakeTelegram, extra: &str) -> TestBot {
        let dir = tempfile::tempdir().unwrap();
        let config = test_config(dir.path(), api, extra);
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
        let (tx, rx) = oneshot::channel::<()>();
        let config = self.config.clone();
        self.stop = Some(tx);
        self.handle = Some(tokio::spawn(async move {
            tgdl::app::run(config, async {
                let _ = rx.await;
            })
            .await
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

    /// Open the database (the bot must be stopped: sled allows one opener).
    ///
    /// sled releases its file lock when the last of its background I/O
    /// threads lets go of the database, which can be a moment after the bot's
    /// last handle is dropped; there is nothing to be notified by, so a
    /// `Locked` answer is retried for a few seconds.
    pub fn store(&self) -> tgdl::store::SledStore {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            match tgdl::store::SledStore::open(&self.config.db_dir()) {
                Ok(store) => return store,
                Err(tgdl::store::StoreError::Locked { .. })
                    if std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => panic!("open db after stop: {e:?}"),
            }
        }
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

/// Media server with the committed fixtures.
pub async fn media() -> MediaServer {
    MediaServer::fixtures().await
}
