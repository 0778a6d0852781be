//! [`Store`]: the asynchronous, backend-neutral contract the pipeline uses,
//! and [`Diagnostics`], what operators and tests ask of a backend besides.
//!
//! Every rule the pipeline relies on is an operation here or a guarantee
//! written on one, so a second backend knows exactly what to keep:
//!
//! - **Transactions.** Every method that changes a job is one transaction
//!   over everything it touches (record, indexes, counters, the user's
//!   bookkeeping, the media cache), durable before it returns `Ok`, and
//!   checked against the caller's [`Expect`]: a mismatch is
//!   [`StoreError::Conflict`] or [`StoreError::LeaseLost`], never a silent
//!   overwrite.
//! - **Limits** ([`Store::enqueue`], [`Store::reopen`]): the queue capacity
//!   (active jobs in all), then, unless exempt, the user's active jobs and
//!   the enqueues of the last hour, checked inside the transaction that makes
//!   the job active, so concurrent enqueues (from any node) never pass a
//!   limit together. An admitted job counts in the user's hourly window.
//! - **Dedupe.** One link of one message (chat, request message id, url) is
//!   one job, however often the update is delivered: a second enqueue
//!   returns the first job with `duplicate: true` until it is pruned.
//! - **Fairness** ([`Store::claim`]): among users with a due queued job, the
//!   least recently served user goes first; within a user, the job due
//!   first. A claim marks the user served.
//! - **Cache.** The transaction that moves a job out of `uploading` with a
//!   `delivery` also writes the media cache entry under the job's
//!   `cache_key` (file id, form, title, size), so a delivered file is never
//!   forgotten; [`Store::cache_get`] reads it.
//! - **Counts.** [`Store::counts`] is read from counters maintained in the
//!   same transactions (never a scan); [`Store::finished_since`] from
//!   per-minute counters of jobs entering done and failed.
//! - **Retention.** [`Store::prune_finished`] deletes done and failed jobs
//!   with everything derived from them, in bounded batches.
//! - **Leases.** A claim sets the owner and a lease; an update with an
//!   owner in its [`Expect`] fails with `LeaseLost` once another owner took
//!   the job.
//! - **Intake.** The inbox keeps raw updates durably until handled.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{
    CachedMedia, EnqueueLimits, Enqueued, Expect, FindError, IdPrefix, InFlight, InvariantReport,
    JobStore, QuarantineEntry, Refusal, StateCounts, StoreError, UserSettings,
};
use crate::job::{Job, JobId, JobState, Millis, NewJob};

/// A change to a job record, run inside the store's transaction. It may run
/// more than once (a backend retries on a conflict), so it must only touch
/// the job; it cannot move the job (the store does, to the state asked).
pub type Edit = Arc<dyn Fn(&mut Job) + Send + Sync>;

/// An edit that changes nothing: a plain state move.
pub fn no_edit() -> Edit {
    Arc::new(|_| {})
}

/// The store contract. See the module documentation for the guarantees.
#[async_trait]
pub trait Store: Send + Sync {
    /// Create a queued job, checking the limits in the same transaction.
    async fn enqueue(
        &self,
        new: NewJob,
        limits: EnqueueLimits,
        now: Millis,
    ) -> Result<Enqueued, StoreError>;

    /// Queue a failed job again (a retry), admitted by the limits of
    /// [`Store::enqueue`] in the same transaction. A job that is not `failed`
    /// is a [`StoreError::Conflict`].
    async fn reopen(
        &self,
        id: JobId,
        limits: EnqueueLimits,
        now: Millis,
        edit: Edit,
    ) -> Result<Job, StoreError>;

    /// Claim the next runnable job (queued, due by `now`), fair across users,
    /// moving it to `downloading` with `owner` and a lease of `lease_ms`.
    async fn claim(
        &self,
        owner: Uuid,
        lease_ms: u64,
        now: Millis,
    ) -> Result<Option<Job>, StoreError>;

    /// Change one job: check `expect`, apply `edit`, then move to `to` (when
    /// given) if the transition table allows it.
    async fn update(
        &self,
        id: JobId,
        expect: Expect,
        to: Option<JobState>,
        now: Millis,
        edit: Edit,
    ) -> Result<Job, StoreError>;

    /// [`Store::update`] without a move, for a change that may be lost in a
    /// crash because the caller can recover from losing it (the status
    /// message's id: without it a worker sends a new status message). It is
    /// as atomic and as checked as `update`, and is seen at once by every
    /// reader; it becomes durable with the next durable write, or within
    /// the backend's own flush interval. A backend that cannot defer its
    /// sync makes it durable now.
    async fn update_lazily(
        &self,
        id: JobId,
        expect: Expect,
        now: Millis,
        edit: Edit,
    ) -> Result<Job, StoreError> {
        self.update(id, expect, None, now, edit).await
    }

    async fn get(&self, id: JobId) -> Result<Option<Job>, StoreError>;

    /// Find a job by what a user typed: the short id users see or a prefix
    /// of the full id, parsed here, once, for every backend.
    async fn find(&self, input: &str) -> Result<Result<Job, FindError>, StoreError> {
        match IdPrefix::parse(input) {
            Ok(p) => self.find_prefix(&p).await,
            Err(e) => Ok(Err(e)),
        }
    }

    /// The one job [`IdPrefix::matches`]; `NotFound` or `Ambiguous` (named
    /// by the prefix's digits) otherwise.
    async fn find_prefix(&self, prefix: &IdPrefix) -> Result<Result<Job, FindError>, StoreError>;

    /// Jobs in one state, oldest first, at most `limit`.
    async fn list_state(&self, state: JobState, limit: usize) -> Result<Vec<Job>, StoreError>;

    /// Jobs in one state, newest first, at most `limit`.
    async fn list_state_rev(&self, state: JobState, limit: usize) -> Result<Vec<Job>, StoreError>;

    /// One user's jobs, newest first, at most `limit`.
    async fn list_user(&self, user_id: u64, limit: usize) -> Result<Vec<Job>, StoreError>;

    /// Jobs in downloading, uploading or cleaning: what recovery looks at.
    async fn in_flight(&self) -> Result<Vec<Job>, StoreError> {
        let mut out = Vec::new();
        for s in JobState::IN_FLIGHT {
            out.extend(self.list_state(s, usize::MAX).await?);
        }
        Ok(out)
    }

    /// Every in-flight job's id, state and when it entered the state
    /// ([`InFlight`]): the same jobs as [`Store::in_flight`], for a reader
    /// that needs no more (`/health`'s stuck-job check), so a backend can
    /// skip decoding whole records. A record that does not decode is
    /// quarantined and left out, as there.
    async fn in_flight_since(&self) -> Result<Vec<InFlight>, StoreError> {
        Ok(self.in_flight().await?.iter().map(InFlight::of).collect())
    }

    async fn counts(&self) -> Result<StateCounts, StoreError>;

    async fn cache_get(&self, key: &str) -> Result<Option<CachedMedia>, StoreError>;

    /// Delete done and failed jobs last updated before `older_than`, at most
    /// `batch` per call.
    async fn prune_finished(&self, older_than: Millis, batch: usize) -> Result<usize, StoreError>;

    /// Jobs that entered done and failed since `since` (minute resolution).
    async fn finished_since(&self, since: Millis) -> Result<(u64, u64), StoreError>;

    /// A durable write: `/healthz` answers 503 when this fails.
    async fn probe_write(&self) -> Result<(), StoreError>;

    /// Whether one more active job of `user` would be refused now, read
    /// without writing (the rule `enqueue` applies; `enqueue` decides).
    async fn would_refuse(
        &self,
        user: u64,
        limits: EnqueueLimits,
        now: Millis,
    ) -> Result<Option<Refusal>, StoreError>;

    /// Durable intake: store a batch of raw updates; an id already stored is
    /// left as it is.
    async fn inbox_put(&self, updates: Vec<(u32, Vec<u8>)>) -> Result<(), StoreError>;

    /// Every stored update not yet handled, oldest first.
    async fn inbox_pending(&self) -> Result<Vec<(u32, Vec<u8>)>, StoreError>;

    /// These updates' effects are durable: they leave the inbox. Need not be
    /// synced (a crash may put them back; handlers are idempotent under a
    /// second run), and an id not stored is no error.
    async fn inbox_done(&self, update_ids: Vec<u32>) -> Result<(), StoreError>;

    /// A user's saved settings, if they ever changed any.
    async fn settings(&self, user_id: u64) -> Result<Option<UserSettings>, StoreError>;

    async fn put_settings(&self, user_id: u64, settings: UserSettings) -> Result<(), StoreError>;

    /// Whether one process at a time owns the store. Then any lease not held
    /// by this process is an orphan; a shared backend answers `false` and
    /// waits for leases to lapse.
    fn is_exclusive(&self) -> bool;

    /// Tell the process that runs job `id` that a cancel was recorded on it
    /// (its failure), so it stops now rather than at its next lease renewal.
    /// Nothing to tell on an exclusive store: the process is this one.
    async fn announce_cancel(&self, _id: JobId) -> Result<(), StoreError> {
        Ok(())
    }

    /// The store's events for this process, from every process of a shared
    /// store: jobs that became due, cancels announced. `None` on an exclusive
    /// store (this process makes every event itself). Events are a fast path
    /// only: workers also poll, and leases carry cancels.
    async fn events(&self) -> Result<Option<mpsc::Receiver<StoreEvent>>, StoreError> {
        Ok(None)
    }

    /// Record this node's heartbeat on a shared store (what `/health` shows
    /// of each node). Nothing to record on an exclusive store.
    async fn heartbeat(&self, _beat: NodeBeat) -> Result<(), StoreError> {
        Ok(())
    }

    /// Every node's latest heartbeat, by name (empty on an exclusive store).
    async fn nodes(&self) -> Result<Vec<NodeBeat>, StoreError> {
        Ok(Vec::new())
    }

    /// Take the right to send alert `key` at `now`: granted to one node of
    /// the cluster per `cooldown_ms`, so admins hear of a condition once,
    /// not once per node. Always granted on an exclusive store (its one
    /// process keeps its own cooldown).
    async fn claim_alert(
        &self,
        _key: &str,
        _now: Millis,
        _cooldown_ms: u64,
    ) -> Result<bool, StoreError> {
        Ok(true)
    }

    /// Wait until this process may poll Telegram: exactly one process of a
    /// shared store does (Telegram answers two pollers with a conflict). An
    /// exclusive store has one process, which may at once.
    async fn poller_lease(&self) -> Result<PollerLease, StoreError> {
        Ok(PollerLease::for_good())
    }
}

/// One node's heartbeat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeBeat {
    /// `storage.node_name`.
    pub name: String,
    /// The process's lease owner id (new at every start).
    pub owner: Uuid,
    pub at: Millis,
    /// Jobs this node works on now.
    pub in_flight: u32,
    /// Free bytes on the disk of its downloads folder.
    pub disk_free_bytes: u64,
    /// Whether it polls Telegram.
    pub polling: bool,
}

/// What another process of a shared store tells this one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreEvent {
    /// A job was queued or requeued: idle workers should look.
    JobReady,
    /// A cancel was recorded on this job: stop it if it runs here.
    CancelAnnounced(JobId),
}

/// The right to poll Telegram, held until dropped (then released) or lost
/// (the backend could not keep it: [`PollerLease::lost`] resolves, and
/// polling must stop, since another process may take over).
pub struct PollerLease {
    lost: CancellationToken,
    /// Cancelled on drop: tells the backend's holder to give the right up.
    release: CancellationToken,
}

impl PollerLease {
    /// A right that is never lost (an exclusive store).
    pub fn for_good() -> Self {
        PollerLease {
            lost: CancellationToken::new(),
            release: CancellationToken::new(),
        }
    }

    /// A right a backend keeps: it cancels `lost` when it cannot keep it,
    /// and gives it up when `release` is cancelled.
    pub fn held(lost: CancellationToken, release: CancellationToken) -> Self {
        PollerLease { lost, release }
    }

    /// Resolves when the right was lost.
    pub async fn lost(&self) {
        self.lost.cancelled().await
    }
}

impl Drop for PollerLease {
    fn drop(&mut self) {
        self.release.cancel();
    }
}

/// What a backend answers besides the contract: for operators, tests and
/// shutdown, never on the hot path.
#[async_trait]
pub trait Diagnostics: Send + Sync {
    /// Every record checked against every invariant. Slow by design.
    async fn check_invariants(&self) -> Result<InvariantReport, StoreError>;

    /// Records that failed to decode, kept for an operator.
    async fn quarantined(&self) -> Result<Vec<QuarantineEntry>, StoreError>;

    /// Bytes the database takes on disk (0 when the backend cannot tell).
    async fn size_on_disk(&self) -> u64;

    /// Make everything written so far durable (every change already is;
    /// this is for shutdown).
    async fn flush(&self) -> Result<(), StoreError>;
}

/// A synchronous engine ([`JobStore`], sled's) served through the
/// contract: a call that may wait (for a sync, for sled to catch up with its
/// log, for a scan) runs on tokio's blocking pool, so that it does not stall
/// the runtime. The point reads that [`JobStore`] promises never wait run in
/// place ([`OnBlockingPool::at_once`]): handing one to a pool thread and
/// back costs two thread switches, more than the read.
#[derive(Clone)]
pub struct OnBlockingPool(pub Arc<dyn JobStore>);

impl OnBlockingPool {
    async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn JobStore) -> Result<T, StoreError> + Send + 'static,
    {
        let store = self.0.clone();
        match tokio::task::spawn_blocking(move || f(&*store)).await {
            Ok(r) => r,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// Run a read that never waits on the calling thread (see [`JobStore`]
    /// for which).
    fn at_once<T>(
        &self,
        f: impl FnOnce(&dyn JobStore) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        f(&*self.0)
    }
}

#[async_trait]
impl Store for OnBlockingPool {
    async fn enqueue(
        &self,
        new: NewJob,
        limits: EnqueueLimits,
        now: Millis,
    ) -> Result<Enqueued, StoreError> {
        self.run(move |s| s.enqueue(new, limits, now)).await
    }

    async fn reopen(
        &self,
        id: JobId,
        limits: EnqueueLimits,
        now: Millis,
        edit: Edit,
    ) -> Result<Job, StoreError> {
        self.run(move |s| s.reopen(id, limits, now, &*edit)).await
    }

    async fn claim(
        &self,
        owner: Uuid,
        lease_ms: u64,
        now: Millis,
    ) -> Result<Option<Job>, StoreError> {
        self.run(move |s| s.claim(owner, lease_ms, now)).await
    }

    async fn update(
        &self,
        id: JobId,
        expect: Expect,
        to: Option<JobState>,
        now: Millis,
        edit: Edit,
    ) -> Result<Job, StoreError> {
        self.run(move |s| s.update(id, expect, to, now, &*edit))
            .await
    }

    async fn update_lazily(
        &self,
        id: JobId,
        expect: Expect,
        now: Millis,
        edit: Edit,
    ) -> Result<Job, StoreError> {
        self.run(move |s| s.update_lazily(id, expect, now, &*edit))
            .await
    }

    async fn get(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        self.at_once(|s| s.get(id))
    }

    async fn find_prefix(&self, prefix: &IdPrefix) -> Result<Result<Job, FindError>, StoreError> {
        let hex = prefix.hex.clone();
        self.run(move |s| s.find(&hex)).await
    }

    async fn list_state(&self, state: JobState, limit: usize) -> Result<Vec<Job>, StoreError> {
        self.run(move |s| s.list_state(state, limit)).await
    }

    async fn list_state_rev(&self, state: JobState, limit: usize) -> Result<Vec<Job>, StoreError> {
        self.run(move |s| s.list_state_rev(state, limit)).await
    }

    async fn list_user(&self, user_id: u64, limit: usize) -> Result<Vec<Job>, StoreError> {
        self.run(move |s| s.list_user(user_id, limit)).await
    }

    async fn in_flight(&self) -> Result<Vec<Job>, StoreError> {
        self.run(|s| s.in_flight()).await
    }

    async fn in_flight_since(&self) -> Result<Vec<InFlight>, StoreError> {
        self.run(|s| s.in_flight_since()).await
    }

    async fn counts(&self) -> Result<StateCounts, StoreError> {
        self.at_once(|s| s.counts())
    }

    async fn cache_get(&self, key: &str) -> Result<Option<CachedMedia>, StoreError> {
        let key = key.to_string();
        self.run(move |s| s.cache_get(&key)).await
    }

    async fn prune_finished(&self, older_than: Millis, batch: usize) -> Result<usize, StoreError> {
        self.run(move |s| s.prune_finished(older_than, batch)).await
    }

    async fn finished_since(&self, since: Millis) -> Result<(u64, u64), StoreError> {
        self.run(move |s| s.finished_since(since)).await
    }

    async fn probe_write(&self) -> Result<(), StoreError> {
        self.run(|s| s.probe_write()).await
    }

    async fn would_refuse(
        &self,
        user: u64,
        limits: EnqueueLimits,
        now: Millis,
    ) -> Result<Option<Refusal>, StoreError> {
        self.at_once(|s| s.would_refuse(user, limits, now))
    }

    async fn inbox_put(&self, updates: Vec<(u32, Vec<u8>)>) -> Result<(), StoreError> {
        self.run(move |s| s.inbox_put(&updates)).await
    }

    async fn inbox_pending(&self) -> Result<Vec<(u32, Vec<u8>)>, StoreError> {
        self.run(|s| s.inbox_pending()).await
    }

    async fn inbox_done(&self, update_ids: Vec<u32>) -> Result<(), StoreError> {
        self.run(move |s| s.inbox_done(&update_ids)).await
    }

    async fn settings(&self, user_id: u64) -> Result<Option<UserSettings>, StoreError> {
        self.at_once(|s| s.settings(user_id))
    }

    async fn put_settings(&self, user_id: u64, settings: UserSettings) -> Result<(), StoreError> {
        self.run(move |s| s.put_settings(user_id, &settings)).await
    }

    fn is_exclusive(&self) -> bool {
        self.0.is_exclusive()
    }
}

#[async_trait]
impl Diagnostics for OnBlockingPool {
    async fn check_invariants(&self) -> Result<InvariantReport, StoreError> {
        self.run(|s| s.check_invariants()).await
    }

    async fn quarantined(&self) -> Result<Vec<QuarantineEntry>, StoreError> {
        self.run(|s| s.quarantined()).await
    }

    async fn size_on_disk(&self) -> u64 {
        let store = self.0.clone();
        tokio::task::spawn_blocking(move || store.size_on_disk())
            .await
            .unwrap_or(0)
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.run(|s| s.flush()).await
    }
}

/// What the pipeline holds: the contract and the diagnostics of one backend.
pub trait Backend: Store + Diagnostics {}

impl<T: Store + Diagnostics + ?Sized> Backend for T {}

impl OnBlockingPool {
    /// A synchronous engine as the pipeline's backend.
    pub fn shared(store: Arc<dyn JobStore>) -> Arc<dyn Backend> {
        Arc::new(OnBlockingPool(store))
    }
}
