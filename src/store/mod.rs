//! The durable job store: the [`Store`] contract and its backends.
//!
//! The pipeline talks only to [`Store`] (async, backend-neutral; its
//! guarantees are written in `contract.rs`) and, for operators and tests, to
//! [`Diagnostics`]. The store knows nothing about Telegram or yt-dlp: it
//! keeps jobs, their indexes, counters, leases, the media cache and
//! quarantine.
//!
//! sled is synchronous and every change ends in an fsync, so its engine
//! implements the synchronous [`JobStore`], and [`OnBlockingPool`] serves
//! that through the contract with each call on tokio's blocking pool.

pub mod codec;
mod contract;
mod keys;
mod postgres;
mod sled;
pub mod transfer;

pub use self::contract::{
    no_edit, Backend, Diagnostics, Edit, NodeBeat, OnBlockingPool, PollerLease, Store, StoreEvent,
};
pub use self::postgres::PgStore;
pub use self::sled::{LogSyncs, SledStore};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::job::{IllegalTransition, Job, JobId, JobState, MediaKind, Millis, NewJob};
use codec::CodecError;

/// Limits checked atomically with an enqueue or a reopen (SPEC "Access").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EnqueueLimits {
    pub per_user_active: u32,
    pub per_user_per_hour: u32,
    pub queue_capacity: u64,
    /// Admins are exempt from the per-user limits, not from the capacity.
    pub exempt: bool,
}

impl EnqueueLimits {
    pub fn from_config(l: &crate::config::LimitsConfig, exempt: bool) -> Self {
        EnqueueLimits {
            per_user_active: l.per_user_active,
            per_user_per_hour: l.per_user_per_hour,
            queue_capacity: l.queue_capacity,
            exempt,
        }
    }
}

/// Why an enqueue was refused. Each carries what the user needs to hear.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("user already has {limit} active jobs")]
    UserActive { limit: u32 },
    #[error("user reached {limit} jobs per hour; next slot at {retry_at}")]
    UserHourly { limit: u32, retry_at: Millis },
    #[error("queue is full ({capacity} jobs)")]
    QueueFull { capacity: u64 },
}

/// What the caller expects of the job it is changing. A mismatch is a
/// [`StoreError::Conflict`], never a silent overwrite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expect {
    pub state: JobState,
    /// When set, the job's lease must belong to this owner: a worker whose
    /// lease was taken over must not write over the new owner's work.
    pub owner: Option<Uuid>,
}

impl Expect {
    pub fn state(state: JobState) -> Self {
        Expect { state, owner: None }
    }

    pub fn owned(state: JobState, owner: Uuid) -> Self {
        Expect {
            state,
            owner: Some(owner),
        }
    }
}

/// A job accepted by [`JobStore::enqueue`].
#[derive(Clone, Debug)]
pub struct Enqueued {
    pub job: Job,
    /// Jobs waiting in `queued`, this one included.
    pub position: u64,
    /// The same link of the same message was enqueued before; `job` is that
    /// earlier job and nothing new was created.
    pub duplicate: bool,
}

/// An in-flight job as `/health` sees it: which, in what state, since when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InFlight {
    pub id: JobId,
    pub state: JobState,
    /// When the job entered `state`: its latest history entry, else its
    /// `updated_at`.
    pub since: Millis,
}

impl InFlight {
    pub fn of(job: &Job) -> Self {
        InFlight {
            id: job.id,
            state: job.state,
            since: job.history.last().map(|h| h.1).unwrap_or(job.updated_at),
        }
    }
}

/// Number of jobs per state, read in O(1) from maintained counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateCounts {
    pub queued: u64,
    pub downloading: u64,
    pub uploading: u64,
    pub cleaning: u64,
    pub done: u64,
    pub failed: u64,
}

impl StateCounts {
    pub fn get(&self, s: JobState) -> u64 {
        match s {
            JobState::Queued => self.queued,
            JobState::Downloading => self.downloading,
            JobState::Uploading => self.uploading,
            JobState::Cleaning => self.cleaning,
            JobState::Done => self.done,
            JobState::Failed => self.failed,
        }
    }

    pub fn get_mut(&mut self, s: JobState) -> &mut u64 {
        match s {
            JobState::Queued => &mut self.queued,
            JobState::Downloading => &mut self.downloading,
            JobState::Uploading => &mut self.uploading,
            JobState::Cleaning => &mut self.cleaning,
            JobState::Done => &mut self.done,
            JobState::Failed => &mut self.failed,
        }
    }

    /// Jobs that count against the queue capacity.
    pub fn active(&self) -> u64 {
        self.queued + self.downloading + self.uploading + self.cleaning
    }

    pub fn total(&self) -> u64 {
        self.active() + self.done + self.failed
    }
}

/// A delivered media's Telegram handle, keyed by link + options.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedMedia {
    pub file_id: String,
    pub sent_as: MediaKind,
    pub title: Option<String>,
    pub file_size: Option<u64>,
    pub cached_at: Millis,
}

/// A record that failed to decode, kept for an operator instead of crashing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineEntry {
    pub tree: String,
    pub key: Vec<u8>,
    pub bytes: Vec<u8>,
    pub reason: String,
    pub at: Millis,
}

/// Durable per-user bookkeeping used by the limits and the fair scheduler.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// Jobs in queued, downloading, uploading or cleaning.
    pub active: u32,
    /// Jobs in queued (the scheduler's turn list holds users with any).
    pub queued: u32,
    /// Enqueue times within the last hour, oldest first (bounded by the
    /// hourly limit, so the record stays small).
    pub recent: Vec<Millis>,
    /// When a job of this user was last claimed: the fair scheduler serves the
    /// least recently served user first.
    pub last_served: Millis,
}

impl UserRecord {
    /// The admission rule every backend applies inside the transaction that
    /// makes a job active (an enqueue, a retry): forget enqueues older than
    /// an hour, then refuse by [`UserRecord::refusal`], else count `now` in
    /// the window (in time order, even when enqueues commit out of the
    /// order of their clocks: concurrent enqueues, several nodes), kept to
    /// twice the hourly limit, exempt users too.
    pub fn admit(
        &mut self,
        active: u64,
        limits: EnqueueLimits,
        now: Millis,
    ) -> Result<(), Refusal> {
        self.recent.retain(|t| *t + crate::job::HOUR_MS > now);
        if let Some(r) = self.refusal(active, limits) {
            return Err(r);
        }
        let at = self.recent.partition_point(|t| *t <= now);
        self.recent.insert(at, now);
        let keep = (limits.per_user_per_hour as usize).max(1) * 2;
        if self.recent.len() > keep {
            let cut = self.recent.len() - keep;
            self.recent.drain(..cut);
        }
        Ok(())
    }

    /// Why one more active job would be refused: the queue's capacity
    /// (`active` jobs in all), then, unless `limits.exempt`, this user's
    /// active and hourly limits (`recent` already cut to the last hour).
    pub fn refusal(&self, active: u64, limits: EnqueueLimits) -> Option<Refusal> {
        if active >= limits.queue_capacity {
            return Some(Refusal::QueueFull {
                capacity: limits.queue_capacity,
            });
        }
        if limits.exempt {
            return None;
        }
        if self.active >= limits.per_user_active {
            return Some(Refusal::UserActive {
                limit: limits.per_user_active,
            });
        }
        if self.recent.len() as u64 >= limits.per_user_per_hour as u64 {
            // The oldest enqueue in the window leaves it first.
            let idx = self.recent.len() - limits.per_user_per_hour as usize;
            return Some(Refusal::UserHourly {
                limit: limits.per_user_per_hour,
                retry_at: self.recent[idx] + crate::job::HOUR_MS,
            });
        }
        None
    }
}

/// What a full check finds wrong with a job's lease: a job a worker holds
/// (downloading, uploading) has one; a queued or finished job has none.
/// Both backends' checks ask this.
pub fn lease_problem(job: &Job) -> Option<String> {
    match (job.state, job.lease) {
        (JobState::Downloading | JobState::Uploading, None) => {
            Some(format!("job {} is {} without a lease", job.id, job.state))
        }
        (JobState::Queued | JobState::Done | JobState::Failed, Some(l)) => Some(format!(
            "job {} is {} but leased to {}",
            job.id, job.state, l.owner
        )),
        _ => None,
    }
}

/// What a full check finds wrong with the cache entry `c` under `key`,
/// given the deliveries of jobs with that key (`writers`: when each left
/// `uploading`, and the job): an entry older than a delivery, or one that
/// holds another file than the delivery of its very moment. Both backends'
/// checks ask this.
pub fn cache_entry_problem(
    key: &str,
    c: &CachedMedia,
    writers: &[(Millis, &Job)],
) -> Option<String> {
    if let Some((at, job)) = writers.iter().find(|(at, _)| *at > c.cached_at) {
        return Some(format!(
            "entry {key:?} cached at {} is older than job {}'s delivery at {at}",
            c.cached_at, job.id
        ));
    }
    let same_moment: Vec<&Job> = writers
        .iter()
        .filter(|(at, _)| *at == c.cached_at)
        .map(|(_, j)| *j)
        .collect();
    let matches = |j: &&Job| {
        j.delivery
            .as_ref()
            .is_some_and(|d| d.file_id == c.file_id && d.sent_as == c.sent_as)
    };
    if !same_moment.is_empty() && !same_moment.iter().any(matches) {
        return Some(format!(
            "entry {key:?} holds file {:?}, job {} delivered {:?} at that moment",
            c.file_id,
            same_moment[0].id,
            same_moment[0].delivery.as_ref().map(|d| &d.file_id)
        ));
    }
    None
}

/// A user's defaults (`/settings`), kept durably.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSettings {
    pub kind: MediaKind,
    /// Preferred maximum video height; `None` for the best that fits.
    pub max_height: Option<u32>,
    /// Hold each link for `choice_wait_secs` until a form is pressed. Off
    /// by default: a link starts at once in the default form, and the
    /// buttons under its status message switch it while it runs.
    pub ask: bool,
    /// Reply language; `None` follows Telegram's `language_code`.
    pub lang: Option<String>,
}

impl Default for UserSettings {
    fn default() -> Self {
        UserSettings {
            kind: MediaKind::Video,
            max_height: None,
            ask: false,
            lang: None,
        }
    }
}

/// What a full consistency check found (used by tests, the crash harness and
/// `tgdl` diagnostics). Empty `problems` means every invariant holds.
#[derive(Clone, Debug, Default)]
pub struct InvariantReport {
    pub jobs: u64,
    pub recount: StateCounts,
    pub counters: StateCounts,
    pub quarantined: u64,
    pub problems: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An exclusive backend (sled) is held by another process.
    #[error("the database at {path} is in use by another tgdl process (is the bot running?)")]
    InUse { path: String },
    #[error("cannot open the database at {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("the database was written by a newer tgdl (schema {found}, this build knows {known})")]
    NewerSchema { found: u32, known: u32 },
    #[error("job {0} not found")]
    NotFound(JobId),
    #[error("job {id} is {actual}, expected {expected}")]
    Conflict {
        id: JobId,
        expected: JobState,
        actual: JobState,
    },
    #[error("job {id} is owned by another worker")]
    LeaseLost { id: JobId },
    #[error(transparent)]
    Illegal(#[from] IllegalTransition),
    #[error("refused: {0}")]
    Refused(#[from] Refusal),
    #[error("record of job {id} is corrupt and was quarantined: {source}")]
    Corrupt { id: JobId, source: CodecError },
    #[error("codec: {0}")]
    Codec(#[from] CodecError),
    /// The backend failed or cannot be reached (I/O, a lost connection);
    /// its own error is the source.
    #[error("storage unavailable: {0}")]
    Unavailable(#[source] BoxError),
}

/// A backend's own error, carried as [`StoreError::Unavailable`]'s source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

impl StoreError {
    pub fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        StoreError::Unavailable(Box::new(e))
    }
}

/// Looking a job up by the short id users see.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FindError {
    #[error("no job matches '{0}'")]
    NotFound(String),
    #[error("'{0}' matches several jobs; give more of the id")]
    Ambiguous(String),
    #[error("'{0}' is not a job id")]
    Invalid(String),
}

/// A job id as a user types it, parsed once for every backend: the short
/// id users see (up to 8 hex digits, the id's last ones) or a prefix of the
/// full id (more digits). Dashes and case are ignored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdPrefix {
    /// Lowercase hex digits, 4 to 32 of them.
    pub hex: String,
    /// Matched against [`JobId::short`] rather than the full id.
    pub short: bool,
}

impl IdPrefix {
    pub fn parse(input: &str) -> Result<IdPrefix, FindError> {
        let hex: String = input
            .trim()
            .chars()
            .filter(|c| *c != '-')
            .collect::<String>()
            .to_ascii_lowercase();
        if hex.len() < 4 || hex.len() > 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(FindError::Invalid(input.to_string()));
        }
        let short = hex.len() <= 8;
        Ok(IdPrefix { hex, short })
    }

    /// Whether `id` is what the user meant.
    pub fn matches(&self, id: JobId) -> bool {
        if self.short {
            id.short().starts_with(&self.hex)
        } else {
            id.to_string().starts_with(&self.hex)
        }
    }
}

/// The synchronous engine interface sled implements (the pipeline uses the
/// async [`Store`] contract, which [`OnBlockingPool`] serves from this).
/// Every method that changes a job is one atomic transaction over every tree
/// it touches, flushed to disk before it returns `Ok`.
///
/// **Never waits:** [`JobStore::get`], [`JobStore::counts`],
/// [`JobStore::would_refuse`] and [`JobStore::settings`] run on the async
/// runtime's own threads, so they read what is there (a change not yet
/// durable included) and never wait for a sync or for another thread,
/// beyond a short lock. (Quarantining a record that does not decode is the
/// one exception: once per bad record.)
pub trait JobStore: Send + Sync {
    /// Create a queued job, checking the limits in the same transaction.
    fn enqueue(
        &self,
        new: NewJob,
        limits: EnqueueLimits,
        now: Millis,
    ) -> Result<Enqueued, StoreError>;

    /// Queue a failed job again (a retry), admitting it by the limits of
    /// [`JobStore::enqueue`] in the same transaction: refused as a new link
    /// would be, and counted in the user's hourly window when admitted.
    /// `edit` resets what a new run needs (it may run more than once).
    /// A job that is not `failed` is a [`StoreError::Conflict`].
    fn reopen(
        &self,
        id: JobId,
        limits: EnqueueLimits,
        now: Millis,
        edit: &(dyn Fn(&mut Job) + Sync),
    ) -> Result<Job, StoreError>;

    /// Claim the next runnable job (queued, `next_attempt_at <= now`), fair
    /// across users, moving it to `downloading` with `owner` and a lease.
    fn claim(&self, owner: Uuid, lease_ms: u64, now: Millis) -> Result<Option<Job>, StoreError>;

    /// Change one job: check `expect`, apply `edit`, then move to `to` (when
    /// given) if the transition table allows it. `edit` may run more than once
    /// (the transaction retries on conflict), so it must only touch the job.
    fn update(
        &self,
        id: JobId,
        expect: Expect,
        to: Option<JobState>,
        now: Millis,
        edit: &(dyn Fn(&mut Job) + Sync),
    ) -> Result<Job, StoreError>;

    /// [`JobStore::update`] without a move, not waiting for the sync (see
    /// `Store::update_lazily`). By default it syncs.
    fn update_lazily(
        &self,
        id: JobId,
        expect: Expect,
        now: Millis,
        edit: &(dyn Fn(&mut Job) + Sync),
    ) -> Result<Job, StoreError> {
        self.update(id, expect, None, now, edit)
    }

    fn get(&self, id: JobId) -> Result<Option<Job>, StoreError>;

    /// Find a job by a prefix of its id (the short id users see).
    fn find(&self, prefix: &str) -> Result<Result<Job, FindError>, StoreError>;

    /// Jobs in one state, oldest first, at most `limit`. Reads the state
    /// index only.
    fn list_state(&self, state: JobState, limit: usize) -> Result<Vec<Job>, StoreError>;

    /// Jobs in one state, newest first, at most `limit`.
    fn list_state_rev(&self, state: JobState, limit: usize) -> Result<Vec<Job>, StoreError>;

    /// One user's jobs, newest first, at most `limit`.
    fn list_user(&self, user_id: u64, limit: usize) -> Result<Vec<Job>, StoreError>;

    /// Jobs in downloading, uploading or cleaning: what recovery looks at.
    fn in_flight(&self) -> Result<Vec<Job>, StoreError> {
        let mut out = Vec::new();
        for s in JobState::IN_FLIGHT {
            out.extend(self.list_state(s, usize::MAX)?);
        }
        Ok(out)
    }

    /// [`InFlight`] of every job in downloading, uploading or cleaning:
    /// what [`JobStore::in_flight`] gives, without decoding whole records
    /// where a backend can avoid it. A record that does not decode is
    /// quarantined and left out, as there.
    fn in_flight_since(&self) -> Result<Vec<InFlight>, StoreError> {
        Ok(self.in_flight()?.iter().map(InFlight::of).collect())
    }

    fn counts(&self) -> Result<StateCounts, StoreError>;

    fn cache_get(&self, key: &str) -> Result<Option<CachedMedia>, StoreError>;

    /// Delete done and failed jobs last updated before `older_than`, at most
    /// `batch` per call so a large backlog never blocks the store.
    fn prune_finished(&self, older_than: Millis, batch: usize) -> Result<usize, StoreError>;

    /// Jobs that entered done and failed since `since` (minute resolution),
    /// from counters maintained as jobs finish.
    fn finished_since(&self, since: Millis) -> Result<(u64, u64), StoreError>;

    /// Write and flush a marker: `/healthz` answers 503 when this fails.
    fn probe_write(&self) -> Result<(), StoreError>;

    /// Whether one more active job of `user` would be refused now, read
    /// without writing: the same rule `enqueue` applies inside its
    /// transaction, checked before a link costs a DNS lookup. The answer can
    /// be stale by the time `enqueue` runs; `enqueue` decides.
    fn would_refuse(
        &self,
        user: u64,
        limits: EnqueueLimits,
        now: Millis,
    ) -> Result<Option<Refusal>, StoreError>;

    /// Durable intake: store a batch of updates (id, raw bytes) in one
    /// synced write, before the `getUpdates` offset that confirms them is
    /// sent. An id already stored is left as it is.
    fn inbox_put(&self, updates: &[(u32, Vec<u8>)]) -> Result<(), StoreError>;

    /// Every stored update not yet handled, oldest first: what a start
    /// handles before it polls again.
    fn inbox_pending(&self) -> Result<Vec<(u32, Vec<u8>)>, StoreError>;

    /// These updates' effects are durable: they leave the inbox. Need not
    /// be synced: one a crash puts back is handled again, and every
    /// handler's effect is idempotent under that. An id not stored is no
    /// error.
    fn inbox_done(&self, update_ids: &[u32]) -> Result<(), StoreError>;

    /// Bytes the database takes on disk.
    fn size_on_disk(&self) -> u64 {
        0
    }

    fn quarantined(&self) -> Result<Vec<QuarantineEntry>, StoreError>;

    /// A user's saved settings, if they ever changed any.
    fn settings(&self, user_id: u64) -> Result<Option<UserSettings>, StoreError>;

    fn put_settings(&self, user_id: u64, settings: &UserSettings) -> Result<(), StoreError>;

    /// Full scan of every tree checking every invariant. Slow by design; for
    /// tests and diagnostics, never on the hot path.
    fn check_invariants(&self) -> Result<InvariantReport, StoreError>;

    /// Whether one process at a time owns the store (sled holds a file
    /// lock). Then any lease not held by this process is an orphan; a shared
    /// backend would answer `false` and wait for leases to expire.
    fn is_exclusive(&self) -> bool {
        true
    }

    /// Make everything written so far durable (every change already is; this
    /// is for shutdown).
    fn flush(&self) -> Result<(), StoreError>;
}
