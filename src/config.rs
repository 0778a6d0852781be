//! Configuration: the TOML file of SPEC "Configuration", checked strictly.
//!
//! Key names are a contract with operators. A misspelt key must not be
//! silently ignored (the operator would run with a default they did not
//! choose), so every section refuses fields it does not have
//! (`deny_unknown_fields`) and `serde_path_to_error` names the full dotted
//! path of whatever is wrong: adding a field here is all it takes to make it
//! known. Unset optional values are `Option`s (`""` in the file also reads
//! as unset, as the specification writes them).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A config problem, always naming the key. Rendered as one line by the CLI,
/// which exits with code 2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("config: cannot read '{path}': {reason}")]
    Read { path: String, reason: String },
    /// Where the text stops being TOML, and why; never the text itself
    /// (the line may hold the token).
    #[error("config: invalid TOML at line {line}, column {column}: {message}")]
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("config: unknown key '{0}'")]
    UnknownKey(String),
    #[error("config: '{key}': {problem}")]
    Invalid { key: String, problem: String },
}

fn invalid(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        problem: problem.into(),
    }
}

/// The public Bot API's host, and the largest upload it takes.
const PUBLIC_API_HOST: &str = "api.telegram.org";
const PUBLIC_UPLOAD_LIMIT_MB: u64 = 50;

#[derive(Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub telegram: TelegramConfig,
    pub storage: StorageConfig,
    pub downloader: DownloaderConfig,
    pub limits: LimitsConfig,
    pub security: SecurityConfig,
    pub health: HealthConfig,
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelegramConfig {
    /// Bot token; `TGDL_TOKEN` overrides it. Never logged (see the Debug impl).
    pub token: String,
    pub api_url: String,
    pub admins: Vec<u64>,
    /// Empty: everyone may use the bot.
    pub allowed_users: Vec<u64>,
    /// Files above this are never uploaded; yt-dlp is asked for smaller ones.
    pub upload_limit_mb: u64,
    /// Default reply language when a user's `language_code` is unknown.
    pub language: String,
    /// Links taken from one message; the rest are ignored with a note.
    pub max_links_per_message: usize,
    /// Minimum seconds between two progress edits of one status message.
    pub progress_interval_secs: u64,
    /// HTTP timeout for Bot API calls, uploads included.
    pub request_timeout_secs: u64,
    /// Seconds a user who turned "ask on each link" on has to pick video,
    /// audio or document before their default applies (0: never ask).
    pub choice_wait_secs: u64,
    /// Outgoing Bot API calls a second, over all chats (Telegram: about 30).
    pub pace_per_sec: u32,
    /// Calls a second to one chat (Telegram: about 1).
    pub pace_per_chat_per_sec: u32,
    /// Calls a minute to one group (Telegram: 20).
    pub pace_per_group_per_min: u32,
    /// `api_url` is a `telegram-bot-api --local` server on this machine:
    /// files are sent by their absolute path (`file://`), which it reads
    /// itself, instead of in the request body.
    pub local_api: bool,
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Database in `data_dir/db`, files in `data_dir/downloads`. A relative
    /// path is relative to the config file's folder, so a service manager's
    /// working directory does not matter.
    pub data_dir: PathBuf,
    /// Done and failed jobs older than this are pruned. 0 keeps them forever.
    pub retention_days: u64,
    /// Where jobs live: the embedded sled database (one process), or a
    /// PostgreSQL server that several nodes share.
    pub backend: StorageBackend,
    /// The PostgreSQL server, for `backend = "postgres"`
    /// (`postgres://user@host/db`). Kept out of `Debug`: it may hold a
    /// password.
    pub postgres_url: String,
    /// This node's name among the nodes of one database; empty: the host
    /// name.
    pub node_name: String,
}

impl fmt::Debug for StorageConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may carry a password: say only whether it is set.
        let url = if self.postgres_url.is_empty() {
            "(unset)"
        } else {
            "(set)"
        };
        f.debug_struct("StorageConfig")
            .field("data_dir", &self.data_dir)
            .field("retention_days", &self.retention_days)
            .field("backend", &self.backend)
            .field("postgres_url", &url)
            .field("node_name", &self.node_name)
            .finish()
    }
}

/// `storage.backend`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    #[default]
    Sled,
    Postgres,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DownloaderConfig {
    /// A path to yt-dlp, or "auto": yt-dlp on PATH, else a managed install;
    /// "managed": always the managed install.
    pub ytdlp: String,
    /// Hours between updates of the managed yt-dlp; 0: never by itself.
    pub update_interval_hours: u64,
    /// An operator-managed yt-dlp this many days behind the newest release
    /// is an alert.
    pub stale_after_days: u64,
    /// Where releases come from: "" for PyPI, a PEP 503 index URL, or a
    /// folder of wheels.
    pub ytdlp_source: String,
    pub concurrency: usize,
    pub timeout_secs: u64,
    /// Attempts (errors) before a job fails for good.
    pub max_attempts: u32,
    /// Crash rescues before a job fails with "crashed repeatedly".
    pub max_rescues: u32,
    /// How long a claim holds without a heartbeat.
    pub lease_secs: u64,
    /// First retry delay; doubles per attempt, with jitter.
    pub retry_base_secs: u64,
    /// Optional cookies file passed to yt-dlp (`""` in the file: none).
    #[serde(with = "unset_is_empty")]
    pub cookies_file: Option<String>,
    /// Extra arguments appended before the link (never a shell string).
    pub extra_args: Vec<String>,
    /// Most bytes, in MB, a job's folder may hold while it downloads; a
    /// download that passes it is stopped. 0: twice the upload limit (room
    /// for the video and audio parts next to the merged file). See
    /// [`Config::max_download_bytes`].
    pub max_download_mb: u64,
    /// Where ffmpeg and ffprobe are: "auto" (PATH) or a folder holding them.
    /// yt-dlp is pointed at the same folder, so one setting decides which
    /// ffmpeg merges, remuxes and makes thumbnails.
    pub ffmpeg: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub per_user_active: u32,
    pub per_user_per_hour: u32,
    pub queue_capacity: u64,
    pub playlist_max_items: u32,
}

#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityConfig {
    /// Allow every destination, private ones included (a trusted LAN bot).
    pub allow_private_networks: bool,
    /// Networks allowed although private (an operator's own media host), as
    /// CIDRs; a bare address is one host.
    pub allow_networks: Vec<ipnet::IpNet>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    pub interval_secs: u64,
    pub alert_cooldown_secs: u64,
    pub disk_free_percent_critical: f64,
    pub memory_percent_warning: f64,
    pub cpu_percent_warning: f64,
    pub downloads_dir_gb_warning: f64,
    /// "" disables the HTTP listener.
    #[serde(with = "unset_is_empty")]
    pub metrics_listen: Option<SocketAddr>,
    /// A queued job older than this is a backlog warning.
    pub backlog_age_warning_secs: u64,
}

impl Default for TelegramConfig {
    fn default() -> Self {
        TelegramConfig {
            token: String::new(),
            api_url: "https://api.telegram.org".into(),
            admins: Vec::new(),
            allowed_users: Vec::new(),
            upload_limit_mb: 50,
            language: "en".into(),
            max_links_per_message: 5,
            progress_interval_secs: 3,
            request_timeout_secs: 600,
            choice_wait_secs: 5,
            pace_per_sec: 30,
            pace_per_chat_per_sec: 1,
            pace_per_group_per_min: 20,
            local_api: false,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            data_dir: PathBuf::from("data"),
            retention_days: 30,
            backend: StorageBackend::Sled,
            postgres_url: String::new(),
            node_name: String::new(),
        }
    }
}

impl Default for DownloaderConfig {
    fn default() -> Self {
        DownloaderConfig {
            ytdlp: "auto".into(),
            update_interval_hours: 24,
            stale_after_days: 14,
            ytdlp_source: String::new(),
            concurrency: 2,
            timeout_secs: 1800,
            max_attempts: 3,
            max_rescues: 5,
            lease_secs: 60,
            retry_base_secs: 10,
            cookies_file: None,
            extra_args: Vec::new(),
            max_download_mb: 0,
            ffmpeg: "auto".into(),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            per_user_active: 3,
            per_user_per_hour: 20,
            queue_capacity: 10_000,
            playlist_max_items: 50,
        }
    }
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval_secs: 60,
            alert_cooldown_secs: 300,
            disk_free_percent_critical: 10.0,
            memory_percent_warning: 85.0,
            cpu_percent_warning: 90.0,
            downloads_dir_gb_warning: 50.0,
            metrics_listen: None,
            backlog_age_warning_secs: 3600,
        }
    }
}

impl fmt::Debug for TelegramConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token is a credential: it never reaches a log.
        f.debug_struct("TelegramConfig")
            .field(
                "token",
                &if self.token.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .field("api_url", &self.api_url)
            .field("admins", &self.admins)
            .field("allowed_users", &self.allowed_users)
            .field("upload_limit_mb", &self.upload_limit_mb)
            .field("local_api", &self.local_api)
            .field("language", &self.language)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("telegram", &self.telegram)
            .field("storage", &self.storage)
            .field("downloader", &self.downloader)
            .field("limits", &self.limits)
            .field("security", &self.security)
            .field("health", &self.health)
            .finish()
    }
}

impl Config {
    /// Read, parse and check a config file. `TGDL_TOKEN` overrides the token.
    /// A relative `data_dir` is resolved against the file's folder.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let env_token = std::env::var("TGDL_TOKEN").ok().filter(|t| !t.is_empty());
        let mut config = Config::parse(&text, env_token)?;
        if config.storage.data_dir.is_relative() {
            let base = path.parent().unwrap_or(Path::new("."));
            config.storage.data_dir = base.join(&config.storage.data_dir);
        }
        Ok(config)
    }

    /// Parse and check config text; `env_token` stands for `TGDL_TOKEN`.
    pub fn parse(text: &str, env_token: Option<String>) -> Result<Config, ConfigError> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| syntax_error(text, &e))?;
        let mut config: Config = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| {
                // TOML allows an empty key (`[""]`); name it as TOML writes
                // it rather than as nothing.
                let key = match e.path().to_string() {
                    k if k.is_empty() || k == "." => "\"\"".to_string(),
                    k => k,
                };
                let problem = hide_strings(&one_line(&e.inner().to_string()));
                if problem.starts_with("unknown field") {
                    ConfigError::UnknownKey(key)
                } else {
                    invalid(&key, problem)
                }
            })?;
        if let Some(token) = env_token {
            config.telegram.token = token;
        }
        config.validate()?;
        Ok(config)
    }

    /// Range and shape checks that types alone cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let t = &self.telegram;
        let api = url::Url::parse(&t.api_url)
            .map_err(|e| invalid("telegram.api_url", format!("not a URL ({e})")))?;
        if !matches!(api.scheme(), "http" | "https") {
            return Err(invalid("telegram.api_url", "must be an http or https URL"));
        }
        if t.admins.contains(&0) || t.allowed_users.contains(&0) {
            let key = if t.admins.contains(&0) {
                "telegram.admins"
            } else {
                "telegram.allowed_users"
            };
            return Err(invalid(key, "user ids are positive numbers"));
        }
        // 2000 MB is the ceiling of a local telegram-bot-api server.
        range("telegram.upload_limit_mb", t.upload_limit_mb, 1, 2000)?;
        // Telegram's own server can neither read our files by path nor take
        // more than 50 MB: say so now rather than at the first big upload.
        if api.host_str() == Some(PUBLIC_API_HOST) {
            if t.local_api {
                return Err(invalid(
                    "telegram.local_api",
                    "files are sent by path, which only a local telegram-bot-api server (--local) can read; point telegram.api_url at it",
                ));
            }
            if t.upload_limit_mb > PUBLIC_UPLOAD_LIMIT_MB {
                return Err(invalid(
                    "telegram.upload_limit_mb",
                    format!("the public Bot API takes at most {PUBLIC_UPLOAD_LIMIT_MB} MB; more needs a local telegram-bot-api server (--local) at telegram.api_url"),
                ));
            }
        }
        if !matches!(t.language.as_str(), "en" | "fa") {
            return Err(invalid(
                "telegram.language",
                format!("'{}' is not supported (use \"en\" or \"fa\")", t.language),
            ));
        }
        range(
            "telegram.max_links_per_message",
            t.max_links_per_message as u64,
            1,
            50,
        )?;
        range(
            "telegram.progress_interval_secs",
            t.progress_interval_secs,
            1,
            3600,
        )?;
        range("telegram.choice_wait_secs", t.choice_wait_secs, 0, 600)?;
        range("telegram.pace_per_sec", t.pace_per_sec as u64, 0, 1000)?;
        range(
            "telegram.pace_per_chat_per_sec",
            t.pace_per_chat_per_sec as u64,
            0,
            100,
        )?;
        range(
            "telegram.pace_per_group_per_min",
            t.pace_per_group_per_min as u64,
            0,
            6000,
        )?;
        range(
            "telegram.request_timeout_secs",
            t.request_timeout_secs,
            5,
            86_400,
        )?;
        if self.storage.data_dir.as_os_str().is_empty() {
            return Err(invalid("storage.data_dir", "must not be empty"));
        }
        range(
            "storage.retention_days",
            self.storage.retention_days,
            0,
            36_500,
        )?;
        let url = self.storage.postgres_url.trim();
        if self.storage.backend == StorageBackend::Postgres {
            if url.is_empty() {
                return Err(invalid(
                    "storage.postgres_url",
                    "must be set when storage.backend = \"postgres\"",
                ));
            }
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(invalid(
                    "storage.postgres_url",
                    "must be a postgres:// or postgresql:// URL",
                ));
            }
        }
        let node = &self.storage.node_name;
        if node.chars().count() > 64
            || node
                .chars()
                .any(|c| c.is_control() || c.is_whitespace() || c == '/')
        {
            return Err(invalid(
                "storage.node_name",
                "must be at most 64 characters without spaces, control characters or '/'",
            ));
        }
        let d = &self.downloader;
        if d.ytdlp.trim().is_empty() {
            return Err(invalid(
                "downloader.ytdlp",
                "must be \"auto\", \"managed\" or a path to yt-dlp",
            ));
        }
        if d.ffmpeg.trim().is_empty() {
            return Err(invalid(
                "downloader.ffmpeg",
                "must be \"auto\" or a folder holding ffmpeg and ffprobe",
            ));
        }
        range(
            "downloader.update_interval_hours",
            d.update_interval_hours,
            0,
            24 * 365,
        )?;
        range("downloader.stale_after_days", d.stale_after_days, 1, 3650)?;
        range("downloader.concurrency", d.concurrency as u64, 1, 64)?;
        range("downloader.timeout_secs", d.timeout_secs, 1, 7 * 86_400)?;
        range("downloader.max_attempts", d.max_attempts as u64, 1, 100)?;
        range("downloader.max_rescues", d.max_rescues as u64, 1, 100)?;
        range("downloader.lease_secs", d.lease_secs, 5, 86_400)?;
        range("downloader.retry_base_secs", d.retry_base_secs, 1, 86_400)?;
        if d.max_download_mb != 0 {
            range(
                "downloader.max_download_mb",
                d.max_download_mb,
                t.upload_limit_mb,
                1_000_000,
            )?;
        }
        let l = &self.limits;
        range(
            "limits.per_user_active",
            l.per_user_active as u64,
            1,
            10_000,
        )?;
        range(
            "limits.per_user_per_hour",
            l.per_user_per_hour as u64,
            1,
            100_000,
        )?;
        range("limits.queue_capacity", l.queue_capacity, 1, 100_000_000)?;
        range(
            "limits.playlist_max_items",
            l.playlist_max_items as u64,
            1,
            10_000,
        )?;
        for net in &self.security.allow_networks {
            if net.trunc() != *net {
                return Err(invalid(
                    "security.allow_networks",
                    format!("{net} has host bits set (did you mean {}?)", net.trunc()),
                ));
            }
        }
        let h = &self.health;
        range("health.interval_secs", h.interval_secs, 1, 86_400)?;
        range(
            "health.alert_cooldown_secs",
            h.alert_cooldown_secs,
            0,
            86_400 * 7,
        )?;
        percent(
            "health.disk_free_percent_critical",
            h.disk_free_percent_critical,
        )?;
        percent("health.memory_percent_warning", h.memory_percent_warning)?;
        percent("health.cpu_percent_warning", h.cpu_percent_warning)?;
        if !(h.downloads_dir_gb_warning.is_finite() && h.downloads_dir_gb_warning > 0.0) {
            return Err(invalid(
                "health.downloads_dir_gb_warning",
                "must be a positive number of GB",
            ));
        }
        range(
            "health.backlog_age_warning_secs",
            h.backlog_age_warning_secs,
            1,
            86_400 * 30,
        )?;
        Ok(())
    }

    /// Only running the bot needs the token; reading the database does not.
    pub fn require_token(&self) -> Result<(), ConfigError> {
        let t = self.telegram.token.trim();
        if t.is_empty() {
            return Err(invalid(
                "telegram.token",
                "missing (set it in the file or in TGDL_TOKEN)",
            ));
        }
        // Bot tokens look like "123456:ABC-def"; catching a pasted wrong value
        // here beats a 401 loop later.
        let ok = t
            .split_once(':')
            .is_some_and(|(id, rest)| id.parse::<u64>().is_ok() && !rest.is_empty());
        if !ok {
            return Err(invalid(
                "telegram.token",
                "does not look like a bot token (expected \"<digits>:<secret>\")",
            ));
        }
        Ok(())
    }

    /// This node's name: `storage.node_name`, else the host name.
    pub fn node_name(&self) -> String {
        if !self.storage.node_name.is_empty() {
            return self.storage.node_name.clone();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "tgdl".to_string())
    }

    pub fn db_dir(&self) -> PathBuf {
        self.storage.data_dir.join("db")
    }

    pub fn downloads_dir(&self) -> PathBuf {
        self.storage.data_dir.join("downloads")
    }

    pub fn tools_dir(&self) -> PathBuf {
        self.storage.data_dir.join("tools")
    }

    pub fn is_admin(&self, user_id: u64) -> bool {
        self.telegram.admins.contains(&user_id)
    }

    pub fn upload_limit_bytes(&self) -> u64 {
        self.telegram.upload_limit_mb * 1024 * 1024
    }

    /// `downloader.max_download_mb` in effect: the configured value, or twice
    /// the upload limit when it is 0.
    pub fn max_download_mb(&self) -> u64 {
        match self.downloader.max_download_mb {
            0 => self.telegram.upload_limit_mb * 2,
            mb => mb,
        }
    }

    /// [`Config::max_download_mb`] in bytes: what one job may have on disk.
    pub fn max_download_bytes(&self) -> u64 {
        self.max_download_mb() * 1024 * 1024
    }
}

fn range(key: &str, v: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if v < min || v > max {
        return Err(invalid(
            key,
            format!("{v} is out of range ({min} to {max})"),
        ));
    }
    Ok(())
}

fn percent(key: &str, v: f64) -> Result<(), ConfigError> {
    if !(v.is_finite() && (0.0..=100.0).contains(&v)) {
        return Err(invalid(key, format!("{v} is not a percentage (0 to 100)")));
    }
    Ok(())
}

/// Any text (an error message) on one line, for the one-line error contract.
/// A TOML syntax error as line, column and toml's message. toml's own
/// `Display` quotes the offending line, which may be the token's.
fn syntax_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let mut at = e.span().map_or(0, |s| s.start).min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let before = &text[..at];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    ConfigError::Syntax {
        line: before.matches('\n').count() + 1,
        column: before[line_start..].chars().count() + 1,
        message: one_line(e.message()),
    }
}

/// serde quotes a string value it refused (`invalid type: string "…"`):
/// the value may be the token in the wrong place, the key alone is named.
fn hide_strings(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '"' {
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        chars.next();
                    }
                    '"' => break,
                    _ => {}
                }
            }
            out.push_str("…\"");
        }
    }
    out
}

pub(crate) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// An optional value written as a string, `""` meaning unset: the
/// specification writes unset optional keys as empty strings
/// (`metrics_listen = ""`), and the example config shows every key.
mod unset_is_empty {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer, T: Display>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.collect_str(v),
            None => s.serialize_str(""),
        }
    }

    pub fn deserialize<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: FromStr,
        T::Err: Display,
    {
        let s = String::deserialize(d)?;
        if s.trim().is_empty() {
            return Ok(None);
        }
        s.parse()
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("'{s}': {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_spec() {
        let c = Config::parse("", None).unwrap();
        assert_eq!(c.downloader.concurrency, 2);
        assert_eq!(c.telegram.upload_limit_mb, 50);
        assert_eq!(c.health.interval_secs, 60);
        assert_eq!(c.health.alert_cooldown_secs, 300);
        assert_eq!(c.limits.queue_capacity, 10_000);
    }

    #[test]
    fn a_syntax_error_names_line_and_column_but_never_prints_the_line() {
        for (text, line) in [
            // Unquoted, unterminated, trailing text, a key with no value, a
            // repeated key; the second after a line with a two-byte letter.
            ("[telegram]\ntoken = 123456:SECRETSECRET\n", 2),
            ("# é\n[telegram]\ntoken = \"123456:SECRETSECRET\n", 3),
            ("[telegram]\ntoken = '123456:SECRETSECRET' x\n", 2),
            ("[telegram]\n123456:SECRETSECRET\n", 2),
            (
                "[telegram]\ntoken = \"1:a\"\ntoken = \"123456:SECRETSECRET\"\n",
                3,
            ),
        ] {
            let err = Config::parse(text, None).unwrap_err();
            let shown = err.to_string();
            assert!(!shown.contains("SECRET"), "{shown}");
            assert!(!shown.contains('\n'), "{shown}");
            // toml's own report (which quotes the line) says where, too.
            let toml_says = text.parse::<toml::Table>().unwrap_err().to_string();
            let at = toml_says.lines().next().unwrap();
            assert!(toml_says.contains("SECRET"), "the case shows the leak");
            match &err {
                ConfigError::Syntax {
                    line: l,
                    column,
                    message,
                } => {
                    assert_eq!(*l, line, "{text:?}: {shown}");
                    assert_eq!(at, format!("TOML parse error at line {l}, column {column}"));
                    assert!(!message.is_empty());
                }
                other => panic!("{text:?}: {other:?}"),
            }
            assert!(
                shown.starts_with(&format!("config: invalid TOML at line {line}, column ")),
                "{shown}"
            );
        }
    }

    #[test]
    fn a_refused_string_value_is_not_quoted() {
        for text in [
            "[telegram]\nadmins = \"123456:SECRET\\\"SECRET\"",
            "[telegram]\nupload_limit_mb = \"123456:SECRET\"",
        ] {
            let err = Config::parse(text, None).unwrap_err().to_string();
            assert!(!err.contains("SECRET"), "{err}");
            assert!(
                err.contains("invalid type: string \"…\", expected"),
                "{err}"
            );
        }
    }

    /// Found by the config fuzz target: an empty table name is an unknown
    /// key, and the error still names it.
    #[test]
    fn an_empty_key_is_named() {
        let err = Config::parse("[\"\"]\n", None).unwrap_err();
        assert_eq!(err, ConfigError::UnknownKey("\"\"".into()));
        assert_eq!(err.to_string(), "config: unknown key '\"\"'");
    }

    /// 0 turns a pacing limit off (a Bot API stand-in); above Telegram's
    /// limits by far is refused as a typo.
    #[test]
    fn a_pacing_limit_of_zero_is_off_and_a_huge_one_is_refused() {
        let c = Config::parse(
            "[telegram]\npace_per_sec = 0\npace_per_chat_per_sec = 0\npace_per_group_per_min = 0\n",
            None,
        )
        .unwrap();
        let p = crate::botapi::pacer::PacerConfig::from_config(&c.telegram);
        assert_eq!(
            (p.global_per_sec, p.per_chat_per_sec, p.per_group_per_min),
            (0, 0, 0)
        );
        let err = Config::parse("[telegram]\npace_per_sec = 1001\n", None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "config: 'telegram.pace_per_sec': 1001 is out of range (0 to 1000)"
        );
    }

    #[test]
    fn debug_never_shows_the_token() {
        let c = Config::parse("[telegram]\ntoken = \"123:SECRETSECRET\"", None).unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("SECRETSECRET"), "{dbg}");
        assert!(dbg.contains("<redacted>"));
    }
}
