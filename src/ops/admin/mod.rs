//! The operator's view of the bot from the shell: `tgdl jobs`, `job`,
//! `health`, `cancel` and `retry`.
//!
//! sled lets one process open the database, so while the bot runs it
//! answers these commands itself over a Unix socket in `data_dir`
//! ([`server`]); when it is stopped the CLI opens the database and calls the
//! same [`answer`]. One function answering both ways is what keeps the
//! output the same whether the bot runs or not.
//!
//! The protocol is one JSON line each way: a [`Request`], then a [`Reply`].

pub mod server;

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::health::HealthState;
use super::report;
use crate::config::Config;
use crate::i18n::operator;
use crate::job::{Job, JobState};
use crate::pipeline::service::{Asker, CancelOutcome, Lookup, RetryOutcome};
use crate::pipeline::JobService;
use crate::store::{FindError, StoreError};

/// The longest request line the socket reads. Requests are a command and
/// an id; anything longer is refused before it is parsed.
pub const MAX_REQUEST_BYTES: usize = 4096;

/// The socket a running bot answers on: `data_dir/tgdl.sock`.
pub fn socket_path(config: &Config) -> PathBuf {
    config.storage.data_dir.join("tgdl.sock")
}

/// One CLI command, as sent to the running bot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Jobs in `state` (every state if none), at most `limit` per state.
    Jobs {
        state: Option<JobState>,
        limit: usize,
    },
    Job {
        id: String,
    },
    Health {},
    Cancel {
        id: String,
    },
    Retry {
        id: String,
    },
}

impl Request {
    /// Whether it changes a job (held until the start-up recovery has run).
    pub fn changes_jobs(&self) -> bool {
        matches!(self, Request::Cancel { .. } | Request::Retry { .. })
    }
}

/// What a command found or did; the CLI renders it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// Sorted by id (creation order).
    Jobs(Vec<Job>),
    Job(Box<Job>),
    /// The `/health` text.
    Health(String),
    /// The job is stopped (or will be in a moment, when a worker runs it)
    /// and its files are removed.
    Cancelled(Box<Job>),
    /// The failed job is queued again.
    Requeued(Box<Job>),
}

/// Why a command did not do what was asked. The kind picks the exit code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminError {
    /// Bad usage: a malformed request, something that is not a job id.
    #[error("{0}")]
    Usage(String),
    /// Anything else: no such job, a refusal, a store error.
    #[error("{0}")]
    Failed(String),
}

/// The second line of the protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Ok(Answer),
    Error(AdminError),
}

impl From<Result<Answer, AdminError>> for Reply {
    fn from(r: Result<Answer, AdminError>) -> Self {
        match r {
            Ok(a) => Reply::Ok(a),
            Err(e) => Reply::Error(e),
        }
    }
}

impl From<Reply> for Result<Answer, AdminError> {
    fn from(r: Reply) -> Self {
        match r {
            Reply::Ok(a) => Ok(a),
            Reply::Error(e) => Err(e),
        }
    }
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        AdminError::Failed(e.to_string())
    }
}

/// Where the health report comes from.
pub enum HealthSource {
    /// The running bot's monitor.
    Live(Arc<HealthState>),
    /// Sampled now, for a stopped bot.
    Offline,
}

/// The operator acts as an admin (any job, limits as for an admin).
const OPERATOR: Asker = Asker {
    user_id: 0,
    admin: true,
};

/// Answer one request on `jobs`: the running bot's service, or one the CLI
/// built over the database of a stopped bot.
pub async fn answer(
    jobs: &Arc<JobService>,
    health: &HealthSource,
    req: Request,
) -> Result<Answer, AdminError> {
    match req {
        Request::Jobs { state, limit } => {
            let states: Vec<JobState> = match state {
                Some(s) => vec![s],
                None => JobState::ALL.to_vec(),
            };
            let mut list = Vec::new();
            for st in states {
                list.extend(jobs.store.list_state(st, limit).await?);
            }
            list.sort_by_key(|j| j.id);
            Ok(Answer::Jobs(list))
        }
        Request::Job { id } => Ok(Answer::Job(Box::new(find(jobs, &id).await?))),
        Request::Health {} => Ok(Answer::Health(match health {
            HealthSource::Live(state) => report::sampled_health(jobs, state).await?,
            HealthSource::Offline => report::offline_health(jobs).await?,
        })),
        // The same service calls as /cancel and /retry from an admin, by
        // the full id once the operator's id was resolved (so a typo gets
        // the same words as `tgdl job`).
        Request::Cancel { id } => {
            let id = find(jobs, &id).await?.id.to_string();
            match jobs.cancel(OPERATOR, &id).await? {
                CancelOutcome::Cancelled(j) => Ok(Answer::Cancelled(Box::new(j))),
                CancelOutcome::AlreadyFinished(j) => {
                    Err(AdminError::Failed(operator::already_finished(&j)))
                }
                CancelOutcome::Lookup(l) => Err(lookup_error(l, &id)),
            }
        }
        Request::Retry { id } => {
            let id = find(jobs, &id).await?.id.to_string();
            match jobs.retry(OPERATOR, &id).await? {
                RetryOutcome::Requeued(j) => Ok(Answer::Requeued(Box::new(j))),
                RetryOutcome::NotFailed(j) => Err(AdminError::Failed(operator::not_failed(&j))),
                RetryOutcome::Refused(r) => {
                    Err(AdminError::Failed(operator::refused(&r.to_string())))
                }
                RetryOutcome::Lookup(l) => Err(lookup_error(l, &id)),
            }
        }
    }
}

/// The job an operator's id names: something that is not an id is a usage
/// error; no match, or several, is a failure.
async fn find(jobs: &JobService, id: &str) -> Result<Job, AdminError> {
    let owned = id.to_string();
    match jobs.store.find(&owned).await? {
        Ok(j) => Ok(j),
        Err(e @ FindError::Invalid(_)) => Err(AdminError::Usage(e.to_string())),
        Err(e) => Err(AdminError::Failed(e.to_string())),
    }
}

/// A lookup that failed after [`find`] succeeded: the job vanished between
/// the two (pruned), or is ambiguous no more than it was.
fn lookup_error(l: Lookup, id: &str) -> AdminError {
    let e = match l {
        Lookup::Ambiguous => FindError::Ambiguous(id.into()),
        Lookup::NotFound | Lookup::NotYours | Lookup::Found(_) => FindError::NotFound(id.into()),
    };
    AdminError::Failed(e.to_string())
}
