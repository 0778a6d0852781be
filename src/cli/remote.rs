//! `tgdl jobs`, `job`, `health`, `cancel` and `retry`, whether the bot runs
//! or not: ask the running bot over its admin socket, else open the
//! database and answer here with the same function
//! ([`crate::ops::admin::answer`]). Either way the answer is printed by the
//! same code below, so the output is the same.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use super::{open_offline, print_job, print_table, CliError, JobRow};
use crate::config::Config;
use crate::config::StorageBackend;
use crate::i18n::{json_printable, operator};
use crate::job::{iso, Job, JobState};
use crate::ops::admin::{self, AdminError, Answer, HealthSource, Reply, Request};
use crate::pipeline::JobService;
use crate::store::{Backend, OnBlockingPool, PgStore};

/// The longest reply read from the bot (a `jobs` list of thousands of jobs
/// is a few MB); a longer one is an error, not an allocation without end.
const MAX_REPLY_BYTES: u64 = 256 * 1024 * 1024;
/// How long the bot may take to answer (cancelling a playlist of many
/// items removes many folders).
const REPLY_TIMEOUT: Duration = Duration::from_secs(120);

pub(super) fn jobs(
    config: &Config,
    state: Option<JobState>,
    json: bool,
    limit: usize,
) -> Result<(), CliError> {
    let Answer::Jobs(jobs) = ask(config, Request::Jobs { state, limit })? else {
        return Err(unexpected());
    };
    if json {
        let rows: Vec<JobRow> = jobs.iter().map(JobRow::from).collect();
        let text = serde_json::to_string_pretty(&rows).map_err(anyhow::Error::from)?;
        println!("{}", json_printable(&text));
    } else {
        print_table(&jobs);
    }
    Ok(())
}

pub(super) fn job(config: &Config, id: String, json: bool) -> Result<(), CliError> {
    let Answer::Job(job) = ask(config, Request::Job { id })? else {
        return Err(unexpected());
    };
    if json {
        println!("{}", job_json(&job)?);
    } else {
        print_job(&job);
    }
    Ok(())
}

pub(super) fn health(config: &Config) -> Result<(), CliError> {
    let Answer::Health(text) = ask(config, Request::Health {})? else {
        return Err(unexpected());
    };
    println!("{text}");
    Ok(())
}

pub(super) fn cancel(config: &Config, id: String) -> Result<(), CliError> {
    let Answer::Cancelled(job) = ask(config, Request::Cancel { id })? else {
        return Err(unexpected());
    };
    println!("{}", operator::cancelled(&job));
    Ok(())
}

pub(super) fn retry(config: &Config, id: String) -> Result<(), CliError> {
    let Answer::Requeued(job) = ask(config, Request::Retry { id })? else {
        return Err(unexpected());
    };
    println!("{}", operator::requeued(&job));
    Ok(())
}

/// `tgdl job ID --json`: the `tgdl jobs --json` object with its history.
fn job_json(job: &Job) -> Result<String, CliError> {
    let mut row = serde_json::to_value(JobRow::from(job)).map_err(anyhow::Error::from)?;
    row["history"] = job
        .history
        .iter()
        .map(|(s, t)| serde_json::json!({"state": s.name(), "at": iso(*t)}))
        .collect();
    let text = serde_json::to_string_pretty(&row).map_err(anyhow::Error::from)?;
    Ok(json_printable(&text).into_owned())
}

fn unexpected() -> CliError {
    CliError::Other(anyhow::anyhow!(
        "the bot answered with something else than asked (is it the same version as this tgdl?)"
    ))
}

/// Ask the running bot, or answer from the database when no bot listens.
fn ask(config: &Config, req: Request) -> Result<Answer, CliError> {
    let path = admin::socket_path(config);
    let answer = match UnixStream::connect(&path) {
        Ok(stream) => ask_bot(stream, &req).map_err(|e| {
            CliError::Other(anyhow::anyhow!(
                "the bot's admin socket {} did not answer: {e}",
                path.display()
            ))
        })?,
        // No socket, or one a killed run left behind: no bot serves this
        // data folder (if one holds the database anyway, opening it says so).
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            answer_offline(config, req)?
        }
        Err(e) => {
            return Err(CliError::Other(anyhow::anyhow!(
                "cannot reach the bot at {}: {e}",
                path.display()
            )))
        }
    };
    answer.map_err(|e| match e {
        AdminError::Usage(m) => CliError::Usage(m),
        AdminError::Failed(m) => CliError::Other(anyhow::anyhow!(m)),
    })
}

fn ask_bot(mut stream: UnixStream, req: &Request) -> std::io::Result<Result<Answer, AdminError>> {
    stream.set_write_timeout(Some(REPLY_TIMEOUT))?;
    stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
    let mut line = serde_json::to_vec(req).map_err(std::io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut reply = Vec::new();
    BufReader::new((&mut stream).take(MAX_REPLY_BYTES)).read_until(b'\n', &mut reply)?;
    if reply.is_empty() {
        return Err(std::io::Error::other(
            "the connection closed without a reply",
        ));
    }
    let reply: Reply = serde_json::from_slice(&reply)
        .map_err(|e| std::io::Error::other(format!("unreadable reply ({e})")))?;
    Ok(reply.into())
}

/// What to tell an operator whose bot holds the database but does not
/// answer on its socket yet (it is starting): wait, or ask in Telegram.
fn starting_hint(req: &Request) -> &'static str {
    match req {
        Request::Health {} => {
            "try again in a moment (it answers on its socket once it has started), or ask it with /health in Telegram"
        }
        Request::Jobs { .. } | Request::Job { .. } => {
            "try again in a moment (it answers on its socket once it has started), or ask it with /jobs or /job in Telegram"
        }
        Request::Cancel { .. } | Request::Retry { .. } => {
            "try again in a moment (it answers on its socket once it has started)"
        }
    }
}

/// The bot is stopped: open its database and answer here.
fn answer_offline(config: &Config, req: Request) -> Result<Result<Answer, AdminError>, CliError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)?;
    // PostgreSQL is shared: this answers while nodes run. sled is held by
    // a running bot, which answers on its socket instead.
    let store: Arc<dyn Backend> = match config.storage.backend {
        StorageBackend::Sled => {
            OnBlockingPool::shared(Arc::new(open_offline(config, starting_hint(&req))?))
        }
        StorageBackend::Postgres => Arc::new(
            rt.block_on(PgStore::connect(&config.storage.postgres_url))
                .map_err(|e| anyhow::anyhow!("cannot reach PostgreSQL: {e}"))?,
        ),
    };
    let jobs = Arc::new(
        JobService::new(Arc::new(config.clone()), store, None).map_err(anyhow::Error::from)?,
    );
    let answer = rt.block_on(admin::answer(&jobs, &HealthSource::Offline, req));
    // Make what cancel or retry changed durable before the process ends.
    rt.block_on(jobs.store.flush())
        .map_err(anyhow::Error::from)?;
    Ok(answer)
}
