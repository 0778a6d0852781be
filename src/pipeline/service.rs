//! [`JobService`]: the operations on jobs that handlers, the CLI and the
//! workers share. Each public method is one user intent (submit links,
//! cancel, retry, choose, settings, look up) expressed on the store, returning
//! a typed outcome the caller renders. Nothing here knows Telegram's types,
//! and nothing here runs long: downloads happen in workers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::cleanup::{self, CleanupError};
use super::guard::Guard;
use super::metrics::Metrics;
pub use super::switch::Choice;
use super::switch::{Offer, Switches};
use crate::config::Config;
use crate::i18n::Lang;
use crate::job::{now_ms, Job, JobError, JobId, JobOptions, JobState, Millis, NewJob};
use crate::net::egress::EgressError;
use crate::net::{self, Destinations, LinkEntity, LinkError};
use crate::store::{
    Backend, Edit, EnqueueLimits, Expect, FindError, Refusal, StoreError, UserSettings,
};

/// The job operations of one process, and what they share with the workers.
pub struct JobService {
    pub config: Arc<Config>,
    pub store: Arc<dyn Backend>,
    /// This process's identity as a lease owner. New at every start, so a
    /// job leased by a previous run is recognisably an orphan.
    pub owner: Uuid,
    /// Jobs this process is working on, with the token that cancels each:
    /// how `/cancel` reaches a running download.
    running: Mutex<HashMap<JobId, CancellationToken>>,
    /// Wakes idle workers when a job becomes due.
    wake: Notify,
    /// The disk guard and the extractor-error count, set by the health task.
    pub guard: Guard,
    pub metrics: Metrics,
    /// Where to ask for a quality probe of a job waiting for its choice
    /// (absent in the CLI and in tests without a prober).
    quality_probe: Option<mpsc::Sender<JobId>>,
    /// Which destinations links (and yt-dlp's requests) may reach.
    pub destinations: Destinations,
    /// The running downloads a press of another form can reach.
    pub switches: Switches,
}

impl JobService {
    pub fn new(
        config: Arc<Config>,
        store: Arc<dyn Backend>,
        quality_probe: Option<mpsc::Sender<JobId>>,
    ) -> Result<Self, EgressError> {
        let destinations = Destinations::new(
            config.security.allow_private_networks,
            config.security.allow_networks.clone(),
        )?;
        Ok(JobService {
            config,
            store,
            owner: Uuid::now_v7(),
            running: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            guard: Guard::default(),
            metrics: Metrics::default(),
            quality_probe,
            destinations,
            switches: Switches::default(),
        })
    }

    /// The language of replies when a user's is unknown.
    pub fn default_lang(&self) -> Lang {
        Lang::from_config(&self.config.telegram.language)
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

    /// Tell idle workers that a job may be due.
    pub fn wake_workers(&self) {
        self.wake.notify_waiters();
    }

    /// A future that resolves at the next [`JobService::wake_workers`].
    pub fn woken(&self) -> tokio::sync::futures::Notified<'_> {
        self.wake.notified()
    }

    /// The cancel token of a job this process works on, registered so
    /// `/cancel` can reach it; a child of `shutdown` so shutdown reaches
    /// every job.
    pub fn register(&self, id: JobId, shutdown: &CancellationToken) -> CancellationToken {
        self.running
            .lock()
            .unwrap()
            .entry(id)
            .or_insert_with(|| shutdown.child_token())
            .clone()
    }

    /// Jobs this process works on now.
    pub fn running_count(&self) -> u32 {
        self.running.lock().unwrap().len() as u32
    }

    /// Cancel a job if this process runs it; whether it did.
    pub fn cancel_running(&self, id: JobId) -> bool {
        let token = self.running.lock().unwrap().get(&id).cloned();
        token.map(|t| t.cancel()).is_some()
    }

    /// Whether another process holds a live lease on the job (only possible
    /// on a shared store).
    fn runs_elsewhere(&self, job: &Job) -> bool {
        !self.store.is_exclusive()
            && matches!(job.state, JobState::Downloading | JobState::Uploading)
            && job
                .lease
                .is_some_and(|l| l.owner != self.owner && l.until > now_ms())
    }

    pub fn unregister(&self, id: JobId) {
        self.running.lock().unwrap().remove(&id);
    }

    /// Take the links of a message and make one job per acceptable link.
    pub async fn submit(&self, req: LinkRequest) -> Result<SubmitReport, StoreError> {
        let max = self.config.telegram.max_links_per_message;
        let mut links = net::extract_links(&req.text, &req.entities, max + 1);
        let extra_ignored = links.len() > max;
        links.truncate(max);
        let admin = self.access(req.user_id) == Access::Admin;
        let limits = EnqueueLimits::from_config(&self.config.limits, admin);
        let mut outcomes = Vec::new();
        for link in links {
            let url = match net::parse_link(&link) {
                Ok(u) => u,
                Err(error) => {
                    outcomes.push(Submission::BadLink { link, error });
                    continue;
                }
            };
            // The limits first: a refused user costs no DNS lookup.
            let user = req.user_id;
            if let Some(refusal) = self.store.would_refuse(user, limits, now_ms()).await? {
                outcomes.push(Submission::Refused { link, refusal });
                continue;
            }
            if let Err(error) = net::check_destination(&url, &self.destinations).await {
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
            match self.store.enqueue(new, limits, now_ms()).await {
                Ok(e) => {
                    self.wake_workers();
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
    /// job has reached meanwhile (a worker may already hold it). Not waited
    /// for to be durable: if a crash loses it, the worker sends a new status
    /// message, and the user's acknowledgement is not held up by a second
    /// synced write.
    /// Returns the job as recorded: a fast job (a cache hit, an early failure)
    /// may already be finished, and then the caller settles the message itself.
    /// `job` is the job as the caller last saw it: its state is what the
    /// change expects first, then the state a conflict reports.
    pub async fn attach_status(
        &self,
        job: &Job,
        message_id: i32,
    ) -> Result<Option<Job>, StoreError> {
        let id = job.id;
        let edit: Edit = Arc::new(move |j| j.status_msg_id = Some(message_id));
        let mut state = job.state;
        for _ in 0..8 {
            let res = self
                .store
                .update_lazily(id, Expect::state(state), now_ms(), edit.clone())
                .await;
            match res {
                Ok(j) => return Ok(Some(j)),
                Err(StoreError::Conflict { actual, .. }) => state = actual,
                Err(StoreError::NotFound(_)) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    pub async fn lookup(&self, asker: Asker, id: &str) -> Result<Lookup, StoreError> {
        let id = id.to_string();
        let found = self.store.find(&id).await?;
        Ok(match found {
            Ok(job) if asker.admin || job.user_id == asker.user_id => Lookup::Found(Box::new(job)),
            // Say plainly that it is someone else's: the asker learns nothing
            // but that an id they typed exists, and the refusal is honest.
            Ok(_) => Lookup::NotYours,
            Err(FindError::Ambiguous(_)) => Lookup::Ambiguous,
            Err(FindError::NotFound(_)) | Err(FindError::Invalid(_)) => Lookup::NotFound,
        })
    }

    /// Cancel a job. A job running in this process is signalled and its worker
    /// finishes it (kills yt-dlp, cleans, marks failed); any other job is moved to
    /// cleaning here and its folder removed.
    pub async fn cancel(&self, asker: Asker, id: &str) -> Result<CancelOutcome, StoreError> {
        let job = match self.lookup(asker, id).await? {
            Lookup::Found(j) => *j,
            other => return Ok(CancelOutcome::Lookup(other)),
        };
        // A playlist: cancelling the parent cancels every child still active.
        let children = self.playlist_children(&job).await?;
        if !children.is_empty() {
            for child in &children {
                Box::pin(self.cancel_one(child.clone())).await?;
            }
            if job.state.is_finished() || job.state == JobState::Cleaning {
                return Ok(CancelOutcome::Cancelled(job));
            }
        }
        if job.state.is_finished() || job.state == JobState::Cleaning {
            return Ok(CancelOutcome::AlreadyFinished(job));
        }
        self.cancel_one(job).await
    }

    /// Active children of a playlist job (read from the user's own index).
    async fn playlist_children(&self, parent: &Job) -> Result<Vec<Job>, StoreError> {
        let (user, id) = (parent.user_id, parent.id);
        let jobs = self.store.list_user(user, 10_000).await?;
        Ok(jobs
            .into_iter()
            .filter(|j| {
                j.parent == Some(id) && j.state.is_active() && j.state != JobState::Cleaning
            })
            .collect())
    }

    /// Stop one job: signal its worker if it runs here, else move it to
    /// cleaning and clean it now.
    async fn cancel_one(&self, job: Job) -> Result<CancelOutcome, StoreError> {
        if self.cancel_running(job.id) {
            return Ok(CancelOutcome::Cancelled(job));
        }
        let id = job.id;
        let state = job.state;
        if self.runs_elsewhere(&job) {
            // Another node of a shared store runs it: ask that node, which
            // stops its yt-dlp and removes its files. The request is durable
            // (the failure the job carries, which the owner's lease renewal
            // and any rescue of the job honour); the announcement reaches the
            // owner at once.
            let res = self
                .store
                .update(
                    id,
                    Expect::state(state),
                    None,
                    now_ms(),
                    Arc::new(|j| j.failure = Some(JobError::cancelled())),
                )
                .await;
            match res {
                Ok(j) => {
                    if let Err(e) = self.store.announce_cancel(id).await {
                        tracing::warn!(job = %id, error = %e, "cancel not announced; the owner sees it at its next lease renewal");
                    }
                    return Ok(CancelOutcome::Cancelled(j));
                }
                Err(StoreError::Conflict { .. }) => {
                    let now = self.store.get(id).await?;
                    return Ok(CancelOutcome::AlreadyFinished(now.unwrap_or(job)));
                }
                Err(e) => return Err(e),
            }
        }
        let res = self
            .store
            .update(
                id,
                Expect::state(state),
                Some(JobState::Cleaning),
                now_ms(),
                Arc::new(|j| j.failure = Some(JobError::cancelled())),
            )
            .await;
        match res {
            Ok(cleaning) => match cleanup::finish_cleaning(self, cleaning.clone()).await {
                Ok(done) => Ok(CancelOutcome::Cancelled(done)),
                // Cancelled all the same: the job is in `cleaning`, which the
                // next start finishes.
                Err(CleanupError::Io(_)) => Ok(CancelOutcome::Cancelled(cleaning)),
                Err(CleanupError::Store(e)) => Err(e),
            },
            // It moved meanwhile (a worker claimed it): signal that worker.
            Err(StoreError::Conflict { .. }) => {
                let token = self.running.lock().unwrap().get(&id).cloned();
                match token {
                    Some(t) => {
                        t.cancel();
                        Ok(CancelOutcome::Cancelled(job))
                    }
                    None => {
                        let now = self.store.get(id).await?;
                        Ok(CancelOutcome::AlreadyFinished(now.unwrap_or(job)))
                    }
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Queue a failed job again, with a fresh attempt count. It is admitted
    /// exactly as a new link would be (the per-user active and hourly limits
    /// and the queue's capacity, in the same transaction), and refused with
    /// the same [`Refusal`].
    pub async fn retry(&self, asker: Asker, id: &str) -> Result<RetryOutcome, StoreError> {
        let job = match self.lookup(asker, id).await? {
            Lookup::Found(j) => *j,
            other => return Ok(RetryOutcome::Lookup(other)),
        };
        if job.state != JobState::Failed {
            return Ok(RetryOutcome::NotFailed(job));
        }
        let id = job.id;
        // The job's owner is held to the limits, unless an admin asks (as
        // for a link an admin sends).
        let exempt = asker.admin || self.config.is_admin(job.user_id);
        let limits = EnqueueLimits::from_config(&self.config.limits, exempt);
        let now = now_ms();
        let res = self
            .store
            .reopen(
                id,
                limits,
                now,
                Arc::new(move |j| {
                    j.attempts = 0;
                    j.rescues = 0;
                    j.rescue_mark = None;
                    j.failure = None;
                    j.next_attempt_at = now;
                    j.delivery = None;
                }),
            )
            .await;
        match res {
            Ok(j) => {
                self.wake_workers();
                Ok(RetryOutcome::Requeued(j))
            }
            Err(StoreError::Refused(refusal)) => Ok(RetryOutcome::Refused(refusal)),
            Err(StoreError::Conflict { actual, .. }) => Ok(RetryOutcome::NotFailed(Job {
                state: actual,
                ..job
            })),
            Err(e) => Err(e),
        }
    }

    /// A user's most recent jobs.
    pub async fn user_jobs(&self, user_id: u64, limit: usize) -> Result<Vec<Job>, StoreError> {
        self.store.list_user(user_id, limit).await
    }

    /// A user's settings (defaults when never changed).
    pub async fn user_settings(&self, user_id: u64) -> Result<UserSettings, StoreError> {
        Ok(self.store.settings(user_id).await?.unwrap_or_default())
    }

    /// Change a user's settings and return the new ones.
    pub async fn change_settings(
        &self,
        user_id: u64,
        change: impl FnOnce(&mut UserSettings) + Send + 'static,
    ) -> Result<UserSettings, StoreError> {
        let mut settings = self.store.settings(user_id).await?.unwrap_or_default();
        change(&mut settings);
        self.store.put_settings(user_id, settings.clone()).await?;
        Ok(settings)
    }

    /// The user pressed a form on a job's status message (see
    /// [`super::switch`]): a waiting job takes it and starts now; a download
    /// running here restarts in it, unless it is already that form; a job
    /// whose download has ended gets the form as a job of its own, replying
    /// to `on_message` (the message with the button), under the limits of a
    /// new link.
    pub async fn choose(
        &self,
        asker: Asker,
        id: JobId,
        choice: Choice,
        on_message: Option<i32>,
    ) -> Result<ChooseOutcome, StoreError> {
        let mut job = match self.lookup(asker, &id.to_string()).await? {
            Lookup::Found(j) => *j,
            other => return Ok(ChooseOutcome::Lookup(other)),
        };
        if job.state == JobState::Queued {
            let now = now_ms();
            let edit: Edit = Arc::new(move |j| {
                choice.apply(&mut j.options);
                j.next_attempt_at = j.next_attempt_at.min(now);
            });
            let res = self
                .store
                .update(id, Expect::state(JobState::Queued), None, now, edit)
                .await;
            match res {
                Ok(j) => {
                    self.wake_workers();
                    return Ok(ChooseOutcome::Chosen(j));
                }
                // Claimed meanwhile: the download's slot takes it below.
                Err(StoreError::Conflict { actual, .. }) => job.state = actual,
                Err(e) => return Err(e),
            }
        }
        // The form it already has: nothing to do while it downloads or is
        // sent, nor once it was delivered (the file can reach the user a
        // moment before the job is marked done).
        let this_run = match job.state {
            JobState::Downloading | JobState::Uploading => true,
            JobState::Cleaning | JobState::Done => job.delivery.is_some(),
            JobState::Queued | JobState::Failed => false,
        };
        if this_run && choice.is_in(&job.options) {
            return Ok(ChooseOutcome::Unchanged(job));
        }
        if job.state == JobState::Downloading {
            match self.switches.offer(id, choice) {
                Offer::Taken => return Ok(ChooseOutcome::Switching(job)),
                Offer::Spent => return Ok(ChooseOutcome::TooManySwitches(job)),
                Offer::NoSlot => {}
            }
        }
        let mut options = job.options.clone();
        choice.apply(&mut options);
        let admin = asker.admin || self.config.is_admin(job.user_id);
        let limits = EnqueueLimits::from_config(&self.config.limits, admin);
        let new = NewJob {
            chat_id: job.chat_id,
            user_id: job.user_id,
            request_msg_id: on_message.unwrap_or(job.request_msg_id),
            lang: job.lang.clone(),
            url: job.url.clone(),
            options,
            parent: None,
            not_before: None,
        };
        match self.store.enqueue(new, limits, now_ms()).await {
            Ok(e) => {
                self.wake_workers();
                Ok(ChooseOutcome::Again {
                    job: Box::new(e.job),
                    position: e.position,
                    duplicate: e.duplicate,
                })
            }
            Err(StoreError::Refused(r)) => Ok(ChooseOutcome::Refused(r)),
            Err(e) => Err(e),
        }
    }

    /// Ask the background prober to offer quality buttons for a waiting job.
    /// Never blocks: when the prober is busy, the job just gets its default.
    pub fn offer_quality(&self, id: JobId) {
        if let Some(tx) = &self.quality_probe {
            let _ = tx.try_send(id);
        }
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
    pub not_before: Option<Millis>,
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

#[derive(Debug)]
pub enum CancelOutcome {
    /// The job was stopped (or will be within moments, if it was running
    /// here) and its files removed.
    Cancelled(Job),
    AlreadyFinished(Job),
    Lookup(Lookup),
}

#[derive(Debug)]
pub enum RetryOutcome {
    Requeued(Job),
    NotFailed(Job),
    /// Over a limit, as a new link would be.
    Refused(Refusal),
    Lookup(Lookup),
}

#[derive(Debug)]
pub enum ChooseOutcome {
    /// The waiting job will run with the chosen form, now.
    Chosen(Job),
    /// Its download stops and starts again in the chosen form.
    Switching(Job),
    /// It is already downloading in that form, or was delivered in it.
    Unchanged(Job),
    /// Its download had ended: the chosen form is this new job (or, for a
    /// press repeated on the same message, the job the first press made).
    Again {
        job: Box<Job>,
        position: u64,
        duplicate: bool,
    },
    /// It restarted in other forms too often already (`MAX_SWITCHES`).
    TooManySwitches(Job),
    /// The new job would pass a limit, as a new link would.
    Refused(Refusal),
    Lookup(Lookup),
}
