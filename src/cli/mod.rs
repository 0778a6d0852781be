//! The command line (SPEC "Command line"): parsing, dispatch and exit codes.
//!
//! Exit codes are a contract: 0 success, 2 bad usage or config, 1 anything
//! else, always with one clear line on stderr.

mod progress;
mod remote;
mod transfer;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use serde::Serialize;

use crate::config::{one_line, Config, ConfigError, StorageBackend};
use crate::i18n::printable;
use crate::job::{iso, Job, JobState};
use crate::pipeline::recovery;
use crate::store::{SledStore, StoreError};

#[derive(Debug, Parser)]
#[command(
    name = "tgdl",
    version,
    about = "Telegram media downloader bot (yt-dlp, crash-safe)"
)]
pub struct Cli {
    /// Config file (TOML). Defaults to $TGDL_CONFIG, else ./config.toml.
    #[arg(long, short, global = true, env = "TGDL_CONFIG")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the bot (the default when no command is given).
    Run,
    /// List jobs (from the running bot, or the database of a stopped one).
    Jobs {
        /// Only jobs in this state (queued, downloading, uploading, cleaning, done, failed).
        #[arg(long)]
        state: Option<JobState>,
        /// Print one JSON array instead of a table.
        #[arg(long)]
        json: bool,
        /// At most this many jobs per state.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Show one job (full id or a prefix of at least 4 hex digits) and its history.
    Job {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Run the recovery pass on the database of a stopped bot (the bot runs
    /// it at every start); with --dry-run, only print what it would do.
    Recover {
        #[arg(long)]
        dry_run: bool,
    },
    /// Print the health report (the same as /health).
    Health,
    /// Update the managed yt-dlp now (install the newest release beside the
    /// current one, test it, switch); `tgdl update rollback` goes back to the
    /// previous one. A running bot uses the result from its next job.
    Update {
        /// `rollback` to go back to the previous install.
        #[arg(value_parser = ["rollback"])]
        action: Option<String>,
    },
    /// Cancel a job as /cancel does for an admin: its download is stopped
    /// and its files removed (on a playlist, every item).
    Cancel { id: String },
    /// Queue a failed job again as /retry does for an admin.
    Retry { id: String },
    /// Write a stopped bot's store (every job, cache entry, user setting and
    /// counter) as versioned JSON lines, to stdout or --output FILE.
    Export {
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Load an export file into an empty store (a new data_dir), then verify
    /// the counts and the store's consistency.
    Import { file: PathBuf },
    /// Check a config file without starting anything (exit 0, or 2 naming the key).
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print a shell completion script (e.g. `tgdl completions bash > /etc/bash_completion.d/tgdl`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Parse and validate the config named by --config (or $TGDL_CONFIG, or ./config.toml).
    Check,
}

/// A failure with the exit code it maps to.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) | CliError::Config(_) => 2,
            CliError::Other(_) => 1,
        }
    }
}

/// Parse the command line, run the command, report and map to an exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        // --help and --version are successes, printed as clap writes them.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("tgdl: {}", usage_line(&e.render().to_string()));
            return ExitCode::from(2);
        }
    };
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tgdl: {}", one_line(&format!("{e:#}")));
            ExitCode::from(e.exit_code())
        }
    }
}

/// The config file named by `--config`, `TGDL_CONFIG`, or ./config.toml.
pub fn load_config(cli: &Cli) -> Result<Config, CliError> {
    let path = cli
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from("config.toml"));
    Ok(Config::load(&path)?)
}

/// clap's usage error as the one line the exit-code contract promises:
/// its message without the usage block, and where to read more.
fn usage_line(rendered: &str) -> String {
    let message: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty() && !l.starts_with("tip:"))
        .collect();
    let message = message.join(" ");
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    format!("{message} (see tgdl --help)")
}

fn dispatch(cli: Cli) -> Result<(), CliError> {
    // Commands that need no config, or check it themselves.
    match &cli.command {
        Some(Command::Completions { shell }) => {
            let mut cmd = Cli::command();
            clap_complete::generate(*shell, &mut cmd, "tgdl", &mut std::io::stdout());
            return Ok(());
        }
        Some(Command::Config(ConfigCommand::Check)) => return config_check(&cli),
        _ => {}
    }
    let config = load_config(&cli)?;
    let command = cli.command.unwrap_or(Command::Run);
    match command {
        Command::Completions { .. } | Command::Config(_) => unreachable!("handled above"),
        Command::Run => {
            config.require_token()?;
            let log_format = crate::app::LogFormat::from_env().map_err(CliError::Usage)?;
            crate::app::run_blocking(config, log_format).map_err(CliError::Other)
        }
        Command::Jobs { state, json, limit } => remote::jobs(&config, state, json, limit),
        Command::Recover { .. } if config.storage.backend == StorageBackend::Postgres => {
            Err(CliError::Other(anyhow::anyhow!(
                "tgdl recover is for the embedded database; on PostgreSQL every node \
                 rescues the jobs of nodes whose lease lapsed by itself"
            )))
        }
        Command::Recover { dry_run } => {
            let store = open_offline(&config, "let it be (it ran recovery when it started)")?;
            let report = recovery::recover_offline(
                std::sync::Arc::new(store),
                &config,
                dry_run,
                &progress::Bar::on_terminal(),
            )
            .map_err(anyhow::Error::from)?;
            if dry_run {
                println!("dry run: nothing was changed");
            }
            println!("{}", recovery::describe(&report));
            Ok(())
        }
        Command::Health => remote::health(&config),
        Command::Job { id, json } => remote::job(&config, id, json),
        Command::Cancel { id } => remote::cancel(&config, id),
        Command::Retry { id } => remote::retry(&config, id),
        Command::Export { output } => transfer::export(&config, output),
        Command::Import { file } => transfer::import(&config, &file),
        Command::Update { action } => {
            crate::app::init_logging();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)?;
            let rollback = action.is_some();
            match rt.block_on(crate::ops::update::run_cli(&config, rollback)) {
                Ok(text) => {
                    println!("{text}");
                    Ok(())
                }
                Err(text) => Err(CliError::Other(anyhow::anyhow!(text))),
            }
        }
    }
}

/// `tgdl config check`: what `tgdl run` would refuse, found without starting
/// anything (like `nginx -t`).
fn config_check(cli: &Cli) -> Result<(), CliError> {
    let config = load_config(cli)?;
    let path = cli.config.as_deref().unwrap_or("config.toml".as_ref());
    if config.telegram.token.trim().is_empty() {
        // systemd's EnvironmentFile may hold it where this shell does not.
        eprintln!("note: telegram.token is empty here; `tgdl run` needs it or TGDL_TOKEN");
    } else {
        config.require_token()?;
    }
    println!("{}: ok", path.display());
    Ok(())
}

/// Open the database for a read-only command, turning "the bot holds the
/// lock" into a sentence an operator understands; `ask` says what answers
/// the same question while the bot runs.
fn open_offline(config: &Config, ask: &str) -> Result<SledStore, CliError> {
    let dir = config.db_dir();
    if !dir.exists() {
        return Err(CliError::Other(anyhow::anyhow!(
            "no database at {} (has the bot ever run with this config?)",
            dir.display()
        )));
    }
    SledStore::open(&dir).map_err(|e| match e {
        StoreError::InUse { path } => CliError::Other(anyhow::anyhow!(
            "the bot is running and holds the database at {path}; stop it first, or {ask}"
        )),
        e => CliError::Other(e.into()),
    })
}

/// The `--json` shape of a job: a stable, documented contract.
#[derive(Debug, Serialize)]
pub struct JobRow {
    pub id: String,
    pub short_id: String,
    pub state: &'static str,
    pub url: String,
    pub chat_id: i64,
    pub user_id: u64,
    pub attempts: u32,
    pub rescues: u32,
    pub error: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub file_size: Option<u64>,
    pub title: Option<String>,
}

impl From<&Job> for JobRow {
    fn from(j: &Job) -> Self {
        JobRow {
            id: j.id.to_string(),
            short_id: j.id.short(),
            state: j.state.name(),
            url: j.url.clone(),
            chat_id: j.chat_id,
            user_id: j.user_id,
            attempts: j.attempts,
            rescues: j.rescues,
            error: j
                .failure
                .as_ref()
                .or(j.last_error.as_ref())
                .map(|e| format!("{}: {}", e.code, e.text)),
            created_at: iso(j.created_at),
            updated_at: iso(j.updated_at),
            file_size: j.file_size,
            title: j.title.clone(),
        }
    }
}

fn print_table(jobs: &[Job]) {
    println!(
        "{:<8}  {:<11}  {:>12}  {:>3}  {:<20}  URL",
        "ID", "STATE", "USER", "ATT", "UPDATED"
    );
    for j in jobs {
        println!(
            "{:<8}  {:<11}  {:>12}  {:>3}  {:<20}  {}",
            j.id.short(),
            j.state.name(),
            j.user_id,
            j.attempts,
            iso(j.updated_at),
            printable(&j.url)
        );
    }
    println!("{} job(s)", jobs.len());
}

/// `tgdl job ID`. Titles, links and error texts come from outside: no
/// terminal control characters or bidi overrides reach the operator's
/// terminal (`--json` writes them as `\uXXXX` escapes).
fn print_job(j: &Job) {
    print!("{}", job_text(j));
}

fn job_text(j: &Job) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let mut line = |args: std::fmt::Arguments| {
        let _ = out.write_fmt(args);
        out.push('\n');
    };
    line(format_args!("job      {}", j.id));
    line(format_args!("state    {}", j.state));
    line(format_args!("url      {}", printable(&j.url)));
    line(format_args!("user     {} in chat {}", j.user_id, j.chat_id));
    line(format_args!(
        "options  {} {}",
        j.options.kind.name(),
        j.options
            .max_height
            .map(|h| format!("≤{h}p"))
            .unwrap_or_default()
    ));
    line(format_args!(
        "attempts {} (rescues {})",
        j.attempts, j.rescues
    ));
    if let Some(e) = j.failure.as_ref().or(j.last_error.as_ref()) {
        line(format_args!(
            "error    {} ({:?}): {}",
            e.code,
            e.class,
            printable(&e.text)
        ));
    }
    if let Some(t) = &j.title {
        line(format_args!("title    {}", printable(t)));
    }
    line(format_args!("history"));
    for (s, t) in &j.history {
        line(format_args!("  {}  {}", iso(*t), s));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{FailureCode, JobError};

    #[test]
    fn job_text_has_no_control_characters_from_outside() {
        let mut j = crate::job::tests::sample();
        j.title = Some("Evil\u{1b}[2J\u{9b}31m\u{202E}txt.exe\nline\u{7}".into());
        j.url = "https://example.com/\u{1b}]0;x\u{7}".into();
        j.failure = Some(JobError::permanent(
            FailureCode::Unknown,
            "ERROR: \u{1b}[1mbold\rover\u{2066}",
        ));
        let text = job_text(&j);
        let bad = crate::i18n::leftovers_in_layout(&text);
        assert!(bad.is_empty(), "{bad:?} in {text}");
        assert!(text.contains("title    Evil[2J31mtxt.exe line"), "{text}");
        assert!(
            text.contains("error    unknown (Permanent): ERROR: [1mbold over"),
            "{text}"
        );
        // Our own lines only: job, state, url, user, options, attempts, error, title, history, 1 event.
        assert_eq!(text.lines().count(), 10, "{text}");
    }
}
