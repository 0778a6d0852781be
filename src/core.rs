//! The core: what handlers call. Each function is one user intent (submit
//! links, cancel, retry, list, show) expressed on the store, returning a typed
//! outcome the handler renders. Nothing here knows Telegram's types, and
//! nothing here runs long: downloads happen in workers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::Config;
use crate::i18n::Lang;
use crate::job::{now_ms, ErrorClass, Job, JobError, JobId, JobOptions, JobState, NewJob};
use crate::netguard::{self, LinkEntity, LinkError};
use crate::store::{self, EnqueueLimits, Expect, FindError, JobStore, Refusal, StoreError};

/// Shared state of one running bot process.
pub struct Core {
    pub config: Arc<Config>,
    pub store: Arc<dyn JobStore>,
    /// This process's identity as a lease owner. New at every start, so a
    /// job leased by a previous run is recognisably an orphan.
    pub boot_id: Uuid,
    /// Jobs this process is working on, with the token that cancels each.
    pub running: Mutex<HashMap<JobId, CancellationToken>>,
    /// Wakes idle workers when a job is queued.
    pub wake: Notify,
    pub default_lang: Lang,
    /// Latest health sample and the disk guard.
    pub health: crate::health::HealthState,
    pub metrics: crate::metrics::Metrics,
    /// Where to ask for a quality probe of a job waiting for its choice
    /// (set when the bot runs; absent in tools and some tests).
    pub quality_probe: std::sync::OnceLock<tokio::sync::mpsc::Sender<JobId>>,
}

impl Core {
    pub fn new(config: Arc<Config>, store: Arc<dyn JobStore>) -> Self {
        let default_lang = Lang::from_config(&config.telegram.language);
        Core {
            config,
            store,
            boot_id: Uuid::now_v7(),
            running: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            default_lang,
            health: crate::health::HealthState::default(),
            metrics: crate::metrics::Metrics::default(),
            quality_probe: std::sync::OnceLock::new(),
        }
    }

    pub fn access(&self, user_id: u64) -> Access {
        if self.config.is_admin(user_id) {
            Access::Admin
        } else if self.config.telegram.allowed_users.is_empty()
            || self.config.telegram.allowed_users.contains(&user_id)
        {
            Access::User
        } else {
            Access::Denied
        }
    }

    async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn JobStore) -> Result<T, StoreError> + Send + 'static,
    {
        store::blocking(&self.store, f).await
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Admin,
    User,
    Denied,
}

/// A message that may carry links.
#[derive(Clone, Debug)]
pub struct LinkRequest {
    pub chat_id: i64,
    pub user_id: u64,
    pub message_id: i32,
    pub lang: Lang,
    pub text: String,
    pub entities: Vec<LinkEntity>,
    pub options: JobOptions,
    /// Hold the jobs until then (the choice window).
    pub not_before: Option<crate::job::Millis>,
}

#[derive(Clone, Debug)]
pub enum Submission {
    /// `duplicate`: this message's link was taken before (a redelivered
    /// update); `job` is the earlier job.
    Accepted {
        job: Box<Job>,
        position: u64,
        duplicate: bool,
    },
    BadLink {
        link: String,
        error: LinkError,
    },
    Refused {
        link: String,
        refusal: Refusal,
    },
}

#[derive(Clone, Debug, Default)]
pub struct SubmitReport {
    pub outcomes: Vec<Submission>,
    /// More links were present than `max_links_per_message`.
    pub extra_ignored: bool,
}

/// Take the links of a message and make one job per acceptable link.
pub async fn submit(core: &Core, req: LinkRequest) -> Result<SubmitReport, StoreError> {
    let max = core.config.telegram.max_links_per_message;
    let mut links = netguard::extract_links(&req.text, &req.entities, max + 1);
    let extra_ignored = links.len() > max;
    links.truncate(max);
    let admin = core.access(req.user_id) == Access::Admin;
    let limits = EnqueueLimits::from_config(&core.config.limits, admin);
    let mut outcomes = Vec::new();
    for link in links {
        let url = match netguard::parse_link(&link) {
            Ok(u) => u,
            Err(error) => {
                outcomes.push(Submission::BadLink { link, error });
                continue;
            }
        };
        if let Err(error) =
            netguard::check_destination(&url, core.config.security.allow_private_networks).await
        {
            outcomes.push(Submission::BadLink { link, error });
            continue;
        }
        let new = NewJob {
            chat_id: req.chat_id,
            user_id: req.user_id,
            request_msg_id: req.message_id,
            lang: req.lang.code().to_string(),
            url: url.to_string(),
            options: req.options.clone(),
            parent: None,
            not_before: req.not_before,
        };
        match core.call(move |s| s.enqueue(new, limits, now_ms())).await {
            Ok(e) => {
                core.wake.notify_waiters();
                outcomes.push(Submission::Accepted {
                    job: Box::new(e.job),
                    position: e.position,
                    duplicate: e.duplicate,
                })
            }
            Err(StoreError::Refused(refusal)) => {
                outcomes.push(Submission::Refused { link, refusal })
            }
            Err(e) => return Err(e),
        }
    }
    Ok(SubmitReport {
        outcomes,
        extra_ignored,
    })
}

/// Record the status message the handler sent for a job, whatever state the
/// job has reached meanwhile (a worker may already hold it).
/// Returns the job as recorded: a fast job (a cache hit, an early failure)
/// may already be finished, and then the caller settles the message itself.
pub async fn attach_status(
    core: &Core,
    id: JobId,
    message_id: i32,
) -> Result<Option<Job>, StoreError> {
    core.call(move |s| {
        for _ in 0..8 {
            let Some(job) = s.get(id)? else {
                return Ok(None);
            };
            match s.update(id, Expect::state(job.state), None, now_ms(), &|j| {
                j.status_msg_id = Some(message_id)
            }) {
                Ok(j) => return Ok(Some(j)),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    })
    .await
}

/// Who is asking about a job.
#[derive(Clone, Copy, Debug)]
pub struct Asker {
    pub user_id: u64,
    pub admin: bool,
}

#[derive(Debug)]
pub enum Lookup {
    Found(Box<Job>),
    NotFound,
    Ambiguous,
    NotYours,
}

async fn lookup(core: &Core, asker: Asker, id: &str) -> Result<Lookup, StoreError> {
    let id = id.to_string();
    let found = core.call(move |s| s.find(&id)).await?;
    Ok(match found {
        Ok(job) if asker.admin || job.user_id == asker.user_id => Lookup::Found(Box::new(job)),
        // Say plainly that it is someone else's: the asker learns nothing
        // but that an id they typed exists, and the refusal is honest.
        Ok(_) => Lookup::NotYours,
        Err(FindError::Ambiguous(_)) => Lookup::Ambiguous,
        Err(FindError::NotFound(_)) | Err(FindError::Invalid(_)) => Lookup::NotFound,
    })
}

pub async fn find_job(core: &Core, asker: Asker, id: &str) -> Result<Lookup, StoreError> {
    lookup(core, asker, id).await
}

#[derive(Debug)]
pub enum CancelOutcome {
    /// The job was stopped (or will be within moments, if it was running
    /// here) and its files removed.
    Cancelled(Job),
    AlreadyFinished(Job),
    Lookup(Lookup),
}

/// The failure recorded on a cancelled job.
pub fn cancelled_error() -> JobError {
    JobError {
        class: ErrorClass::Permanent,
        code: "cancelled".into(),
        text: "cancelled by request".into(),
    }
}

/// Cancel a job. A job running in this process is signalled and its worker
/// finishes it (kills yt-dlp, cleans, marks failed); any other job is moved to
/// cleaning here and its folder removed.
pub async fn cancel(core: &Core, asker: Asker, id: &str) -> Result<CancelOutcome, StoreError> {
    let job = match lookup(core, asker, id).await? {
        Lookup::Found(j) => *j,
        other => return Ok(CancelOutcome::Lookup(other)),
    };
    // A playlist: cancelling the parent cancels every child still active.
    let children = playlist_children(core, &job).await?;
    if !children.is_empty() {
        for child in &children {
            Box::pin(cancel_one(core, child.clone())).await?;
        }
        if job.state.is_finished() || job.state == JobState::Cleaning {
            return Ok(CancelOutcome::Cancelled(job));
        }
    }
    if job.state.is_finished() || job.state == JobState::Cleaning {
        return Ok(CancelOutcome::AlreadyFinished(job));
    }
    cancel_one(core, job).await
}

/// Active children of a playlist job (read from the user's own index).
async fn playlist_children(core: &Core, parent: &Job) -> Result<Vec<Job>, StoreError> {
    let (user, id) = (parent.user_id, parent.id);
    let jobs = core.call(move |s| s.list_user(user, 10_000)).await?;
    Ok(jobs
        .into_iter()
        .filter(|j| j.parent == Some(id) && j.state.is_active() && j.state != JobState::Cleaning)
        .collect())
}

/// Stop one job: signal its worker if it runs here, else move it to
/// cleaning and clean it now.
async fn cancel_one(core: &Core, job: Job) -> Result<CancelOutcome, StoreError> {
    let token = core.running.lock().unwrap().get(&job.id).cloned();
    if let Some(token) = token {
        token.cancel();
        return Ok(CancelOutcome::Cancelled(job));
    }
    let id = job.id;
    let state = job.state;
    let res = core
        .call(move |s| {
            s.update(
                id,
                Expect::state(state),
                Some(JobState::Cleaning),
                now_ms(),
                &|j| j.failure = Some(cancelled_error()),
            )
        })
        .await;
    match res {
        Ok(cleaning) => match crate::cleanup::finish_cleaning(core, cleaning.clone()).await {
            Ok(done) => Ok(CancelOutcome::Cancelled(done)),
            // Cancelled all the same: the job is in `cleaning`, which the
            // next start finishes.
            Err(crate::cleanup::CleanupError::Io(_)) => Ok(CancelOutcome::Cancelled(cleaning)),
            Err(crate::cleanup::CleanupError::Store(e)) => Err(e),
        },
        // It moved meanwhile (a worker claimed it): signal that worker.
        Err(StoreError::Conflict { .. }) => {
            let token = core.running.lock().unwrap().get(&id).cloned();
            match token {
                Some(t) => {
                    t.cancel();
                    Ok(CancelOutcome::Cancelled(job))
                }
                None => {
                    let now = core.call(move |s| s.get(id)).await?;
                    Ok(CancelOutcome::AlreadyFinished(now.unwrap_or(job)))
                }
            }
        }
        Err(e) => Err(e),
    }
}

#[derive(Debug)]
pub enum RetryOutcome {
    Requeued(Job),
    NotFailed(Job),
    Lookup(Lookup),
}

/// Queue a failed job again, with a fresh attempt count.
pub async fn retry(core: &Core, asker: Asker, id: &str) -> Result<RetryOutcome, StoreError> {
    let job = match lookup(core, asker, id).await? {
        Lookup::Found(j) => *j,
        other => return Ok(RetryOutcome::Lookup(other)),
    };
    if job.state != JobState::Failed {
        return Ok(RetryOutcome::NotFailed(job));
    }
    let id = job.id;
    let res = core
        .call(move |s| {
            let now = now_ms();
            s.update(
                id,
                Expect::state(JobState::Failed),
                Some(JobState::Queued),
                now,
                &|j| {
                    j.attempts = 0;
                    j.rescues = 0;
                    j.failure = None;
                    j.next_attempt_at = now;
                    j.delivery = None;
                },
            )
        })
        .await;
    match res {
        Ok(j) => {
            core.wake.notify_waiters();
            Ok(RetryOutcome::Requeued(j))
        }
        Err(StoreError::Conflict { actual, .. }) => Ok(RetryOutcome::NotFailed(Job {
            state: actual,
            ..job
        })),
        Err(e) => Err(e),
    }
}

/// A user's most recent jobs.
pub async fn user_jobs(core: &Core, user_id: u64, limit: usize) -> Result<Vec<Job>, StoreError> {
    core.call(move |s| s.list_user(user_id, limit)).await
}

/// A user's settings (defaults when never changed).
pub async fn user_settings(
    core: &Core,
    user_id: u64,
) -> Result<crate::store::UserSettings, StoreError> {
    Ok(core
        .call(move |s| s.settings(user_id))
        .await?
        .unwrap_or_default())
}

/// Change a user's settings and return the new ones.
pub async fn change_settings(
    core: &Core,
    user_id: u64,
    change: impl FnOnce(&mut crate::store::UserSettings) + Send + 'static,
) -> Result<crate::store::UserSettings, StoreError> {
    core.call(move |s| {
        let mut settings = s.settings(user_id)?.unwrap_or_default();
        change(&mut settings);
        s.put_settings(user_id, &settings)?;
        Ok(settings)
    })
    .await
}

#[derive(Debug)]
pub enum ChooseOutcome {
    /// The job will run with the chosen kind, now.
    Chosen(Job),
    /// A worker already started it with the default.
    TooLate(Job),
    Lookup(Lookup),
}

/// What the user picked for a waiting job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    Kind(crate::job::MediaKind),
    /// Video at most this tall.
    Height(u32),
}

/// The user pressed a button on a waiting job: store the choice and start
/// it now. A job a worker already took keeps its default ("too late").
pub async fn choose(
    core: &Core,
    asker: Asker,
    id: JobId,
    choice: Choice,
) -> Result<ChooseOutcome, StoreError> {
    let job = match lookup(core, asker, &id.to_string()).await? {
        Lookup::Found(j) => *j,
        other => return Ok(ChooseOutcome::Lookup(other)),
    };
    if job.state != JobState::Queued {
        return Ok(ChooseOutcome::TooLate(job));
    }
    let res = core
        .call(move |s| {
            let now = now_ms();
            s.update(id, Expect::state(JobState::Queued), None, now, &|j| {
                match choice {
                    Choice::Kind(kind) => j.options.kind = kind,
                    Choice::Height(h) => {
                        j.options.kind = crate::job::MediaKind::Video;
                        j.options.max_height = Some(h);
                    }
                }
                j.next_attempt_at = j.next_attempt_at.min(now);
            })
        })
        .await;
    match res {
        Ok(j) => {
            core.wake.notify_waiters();
            Ok(ChooseOutcome::Chosen(j))
        }
        Err(StoreError::Conflict { actual, .. }) => Ok(ChooseOutcome::TooLate(Job {
            state: actual,
            ..job
        })),
        Err(e) => Err(e),
    }
}

/// Ask the background prober to offer quality buttons for a waiting job.
/// Never blocks: when the prober is busy, the job just gets its default.
pub fn offer_quality(core: &Core, id: JobId) {
    if let Some(tx) = core.quality_probe.get() {
        let _ = tx.try_send(id);
    }
}
