//! Running the real `tgdl` binary as a child process, in its own process
//! group so a test can SIGKILL or SIGTERM it the way an operator (or the
//! kernel) would.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use super::bot::{merge_tables, TOKEN};

/// How long a test of the binary waits for one thing.
const WAIT: Duration = Duration::from_secs(60);
use super::fake_telegram::FakeTelegram;
use super::fs::files_under;
use super::media_server::MediaServer;

pub struct BotProcess {
    pub child: Child,
    pub log: PathBuf,
}

/// Write `config` (TOML text) to `dir/config.toml` and return its path.
pub fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Config text for the binary with its data in `dir/data`, talking to the Bot API at `api_url`:
/// the test token, loopback media allowed, one-second retries, no wait for a format choice,
/// the disk guard at [`super::bot::HOST_DISK_CRITICAL`] (the host's disk may be fuller than 90 %),
/// yt-dlp releases looked up in an empty local folder (never the live registry).
/// `extra` adds or overrides keys; a table it repeats is merged into the one above.
pub fn binary_config(dir: &Path, api_url: &str, extra: &str) -> String {
    let text = format!(
        r#"[telegram]
token = "{TOKEN}"
api_url = "{api_url}"
choice_wait_secs = 0
[storage]
data_dir = "{data}"
[downloader]
ytdlp = "{ytdlp}"
retry_base_secs = 1
ytdlp_source = "{data}/no-releases"
[security]
allow_private_networks = true
[health]
disk_free_percent_critical = {critical}
memory_percent_warning = 100
cpu_percent_warning = 100
{extra}
"#,
        critical = super::bot::HOST_DISK_CRITICAL,
        data = dir.join("data").display(),
        ytdlp = super::ytdlp().display(),
    );
    merge_tables(&text)
}

/// What a test of the real binary works with: a fake Bot API, the media server with the
/// fixtures, and a temp dir holding the binary's config (`config.toml`), data (`data/`) and log
/// (`bot.log`).
pub struct BinaryTest {
    pub api: FakeTelegram,
    pub media: MediaServer,
    pub dir: tempfile::TempDir,
    pub cfg: PathBuf,
    pub log: PathBuf,
}

impl BinaryTest {
    /// Starts the two servers and writes [`binary_config`] with `extra` for them.
    pub async fn start(extra: &str) -> BinaryTest {
        let api = FakeTelegram::start().await;
        let media = MediaServer::fixtures().await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_config(
            dir.path(),
            &binary_config(dir.path(), &api.url_string(), extra),
        );
        let log = dir.path().join("bot.log");
        BinaryTest {
            api,
            media,
            dir,
            cfg,
            log,
        }
    }

    /// Starts the bot on this config; its log is appended to `bot.log`.
    pub fn start_bot(&self) -> BotProcess {
        BotProcess::start(&self.cfg, &self.log)
    }

    /// [`BinaryTest::start_bot`] with `env` added to the bot's environment.
    pub fn start_bot_with_env(&self, env: &[(&str, &str)]) -> BotProcess {
        BotProcess::start_with_env(&self.cfg, &self.log, env)
    }
}

/// Run `tgdl ARGS --config CONFIG` to the end, with no token or config path from the
/// environment, and return what it printed and its exit status.
pub fn run_tgdl(args: &[&str], config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tgdl"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("TGDL_TOKEN")
        .env_remove("TGDL_CONFIG")
        .output()
        .unwrap()
}

impl BotProcess {
    /// Start `tgdl run --config PATH`; its log goes to `log` (appended).
    pub fn start(config: &Path, log: &Path) -> BotProcess {
        Self::start_with_env(config, log, &[])
    }

    /// [`BotProcess::start`] with `env` added to (or overriding) the bot's environment.
    pub fn start_with_env(config: &Path, log: &Path, env: &[(&str, &str)]) -> BotProcess {
        use std::os::unix::process::CommandExt;
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_tgdl"))
            .args(["run", "--config"])
            .arg(config)
            .env(
                "TGDL_LOG",
                "info,tgdl=debug,sled=warn,hyper=warn,reqwest=warn",
            )
            .env_remove("TGDL_TOKEN")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .process_group(0)
            .spawn()
            .expect("start tgdl");
        BotProcess {
            child,
            log: log.to_path_buf(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGKILL the whole process group, as `kill -9 -PGID` would.
    pub fn kill9(&mut self) {
        let _ = killpg(Pid::from_raw(self.pid()), Signal::SIGKILL);
        let _ = self.child.wait();
    }

    pub fn sigterm(&self) {
        let _ = kill(Pid::from_raw(self.pid()), Signal::SIGTERM);
    }

    /// Wait for exit, polling `try_wait` (a child's exit has no async signal
    /// here); `None` on timeout.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            if start.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM the bot and wait up to `timeout` for it to exit, off the async runtime (the fake
    /// servers keep answering meanwhile); `None` on timeout. Gives the process back for its log.
    pub async fn sigterm_and_wait(mut self, timeout: Duration) -> (Option<ExitStatus>, BotProcess) {
        self.sigterm();
        tokio::task::spawn_blocking(move || (self.wait_timeout(timeout), self))
            .await
            .unwrap()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for BotProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = killpg(Pid::from_raw(self.pid()), Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// A slow link to clip.mp4 (about 170 KB): 16 KB at once, then 2 KB every
/// 50 ms, so a download is in progress for several seconds.
pub fn slow_link(media: &MediaServer) -> String {
    media.url("/slow/clip.mp4?burst=16384&chunk=2048&delay_ms=50")
}

/// Wait until yt-dlp is writing the media: its generic extractor first reads
/// the start of the link to sniff it (one request), then downloads (a second
/// request); the partial file appears under the job's folder.
pub async fn wait_for_download(media: &MediaServer, downloads: &Path) {
    media
        .wait_for(
            |reqs| {
                reqs.iter()
                    .filter(|r| r.path == "/slow/clip.mp4")
                    .nth(1)
                    .is_some_and(|r| r.bytes_sent > 24_000)
            },
            WAIT,
        )
        .await;
    // The file system has no change notification here: poll for the part
    // file the download is writing.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let part = files_under(downloads).into_iter().any(|p| {
            p.to_string_lossy().ends_with(".part")
                && std::fs::metadata(&p).map(|m| m.len() > 0).unwrap_or(false)
        });
        if part {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no partial file appeared"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Processes whose command line contains `needle` (e.g. a data dir path):
/// used to prove no yt-dlp or ffmpeg outlives the bot.
/// The processes still mentioning `needle` once they had `timeout` to exit.
/// A process killed by the kernel (PDEATHSIG, killpg) is gone a moment after
/// the signal, not at it; nothing notifies its end to an unrelated process,
/// so this re-reads /proc until the list is empty or time is up.
pub fn processes_left(needle: &str, timeout: Duration) -> Vec<(i32, String)> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = processes_mentioning(needle);
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn processes_mentioning(needle: &str) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == std::process::id() as i32 {
            continue;
        }
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
        // Zombies have an empty cmdline; they are gone for our purpose.
        if cmd.contains(needle) {
            out.push((pid, cmd));
        }
    }
    out
}
