//! The sled backend of [`JobStore`].
//!
//! Trees (see `keys.rs` for layouts):
//! - `jobs`: id -> [`Job`] record (through [`crate::codec`]).
//! - `by_state`: one index per state, so a state's jobs are read without
//!   scanning all jobs; counters per state live in `meta`.
//! - `by_user`: a user's jobs, for `/jobs`.
//! - `users`: [`UserRecord`] (limits and fairness bookkeeping).
//! - `ready` and `turns`: the fair scheduler's queues.
//! - `cache`: link + options -> [`CachedMedia`].
//! - `quarantine`: records that failed to decode.
//! - `meta`: schema version and counters.
//!
//! Every derived tree is maintained by one function, [`apply`], from the
//! before/after images of a job inside the same transaction. That is what
//! keeps the indexes, counters and records in agreement under crashes: there
//! is no second code path that could forget one of them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use sled::transaction::{
    ConflictableTransactionError as TxError, TransactionError, TransactionalTree,
};
use sled::{Db, Transactional, Tree};
use uuid::Uuid;

use super::keys::{self, ID_LEN};
use super::*;
use crate::codec;
use crate::job::{Job, JobId, JobState, Lease, Millis, NewJob};

/// Schema of the trees (not of the records, which carry their own version).
pub const SCHEMA_VERSION: u32 = 1;

const HOUR_MS: Millis = 3_600_000;

pub struct SledStore {
    db: Db,
    /// sled's `flush` writes with `sync_file_range`, which does not reach
    /// the drive's cache or file metadata; an `fdatasync` on the data file
    /// after it makes a flushed change survive power loss, not only a crash.
    data_file: Option<std::fs::File>,
    /// Group commit: every committed write takes a ticket; a sync covers
    /// every ticket issued before it started, so concurrent writers share
    /// one flush and one fdatasync instead of queueing one each.
    tickets: std::sync::atomic::AtomicU64,
    synced: std::sync::atomic::AtomicU64,
    sync_lock: std::sync::Mutex<()>,
    path: PathBuf,
    jobs: Tree,
    by_state: Tree,
    by_user: Tree,
    users: Tree,
    ready: Tree,
    turns: Tree,
    cache: Tree,
    requests: Tree,
    shorts: Tree,
    settings: Tree,
    quarantine: Tree,
    meta: Tree,
}

/// The transactional view of every tree a job change may touch.
struct Tx<'a> {
    jobs: &'a TransactionalTree,
    by_state: &'a TransactionalTree,
    by_user: &'a TransactionalTree,
    users: &'a TransactionalTree,
    ready: &'a TransactionalTree,
    turns: &'a TransactionalTree,
    cache: &'a TransactionalTree,
    requests: &'a TransactionalTree,
    shorts: &'a TransactionalTree,
    meta: &'a TransactionalTree,
}

type TxResult<T> = Result<T, TxError<StoreError>>;

fn abort<T>(e: StoreError) -> TxResult<T> {
    Err(TxError::Abort(e))
}

impl SledStore {
    /// Open (or create) the database in `dir`. Fails with
    /// [`StoreError::Locked`] if another process has it open.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let shown = dir.display().to_string();
        if let Some(parent) = dir.parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent).map_err(|e| StoreError::Open {
                    path: shown.clone(),
                    reason: e.to_string(),
                })?;
            }
        }
        let db = sled::Config::new()
            .path(dir)
            // A small VPS has little memory to spare; the hot set (in-flight
            // jobs, indexes) is tiny.
            .cache_capacity(16 * 1024 * 1024)
            .flush_every_ms(Some(500))
            .open()
            .map_err(|e| classify_open_error(&shown, e))?;
        let open = |name: &str| db.open_tree(name);
        let store = SledStore {
            path: dir.to_path_buf(),
            jobs: open("jobs")?,
            by_state: open("by_state")?,
            by_user: open("by_user")?,
            users: open("users")?,
            ready: open("ready")?,
            turns: open("turns")?,
            cache: open("cache")?,
            requests: open("requests")?,
            shorts: open("shorts")?,
            settings: open("settings")?,
            quarantine: open("quarantine")?,
            meta: open("meta")?,
            data_file: std::fs::File::open(dir.join("db")).ok(),
            tickets: std::sync::atomic::AtomicU64::new(0),
            synced: std::sync::atomic::AtomicU64::new(0),
            sync_lock: std::sync::Mutex::new(()),
            db,
        };
        match store.meta.get(keys::META_SCHEMA)? {
            None => {
                store
                    .meta
                    .insert(keys::META_SCHEMA, &SCHEMA_VERSION.to_be_bytes())?;
                store.db.flush()?;
            }
            Some(v) => {
                let found = v
                    .as_ref()
                    .try_into()
                    .map(u32::from_be_bytes)
                    .unwrap_or(u32::MAX);
                if found > SCHEMA_VERSION {
                    return Err(StoreError::NewerSchema {
                        found,
                        known: SCHEMA_VERSION,
                    });
                }
            }
        }
        Ok(store)
    }

    /// Flush sled, then fdatasync its data file (see `data_file`).
    ///
    /// Called after the caller's write is committed in memory. Writers that
    /// arrive while a sync runs wait for the lock and usually find their
    /// ticket already covered by the next one.
    fn sync(&self) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering::SeqCst;
        let mine = self.tickets.fetch_add(1, SeqCst) + 1;
        let _guard = self.sync_lock.lock().unwrap_or_else(|e| e.into_inner());
        if self.synced.load(SeqCst) >= mine {
            return Ok(());
        }
        // Everything committed before this read is in what we flush now.
        let covered = self.tickets.load(SeqCst);
        self.db.flush()?;
        if let Some(f) = &self.data_file {
            f.sync_data()
                .map_err(|e| StoreError::Sled(sled::Error::Io(e)))?;
        }
        self.synced.store(covered, SeqCst);
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Run `f` as one transaction over every job tree, then flush. A job
    /// record that fails to decode aborts the transaction and is quarantined
    /// here, outside it.
    fn transact<T>(&self, f: impl Fn(&Tx) -> TxResult<T>) -> Result<T, StoreError> {
        let trees = (
            &self.jobs,
            &self.by_state,
            &self.by_user,
            &self.users,
            &self.ready,
            &self.turns,
            &self.cache,
            &self.requests,
            &self.shorts,
            &self.meta,
        );
        let mut rebuilt = false;
        loop {
            let res = trees.transaction(
                |(jobs, by_state, by_user, users, ready, turns, cache, requests, shorts, meta)| {
                    f(&Tx {
                        jobs,
                        by_state,
                        by_user,
                        users,
                        ready,
                        turns,
                        cache,
                        requests,
                        shorts,
                        meta,
                    })
                },
            );
            return match res {
                Ok(v) => {
                    self.sync()?;
                    Ok(v)
                }
                Err(TransactionError::Abort(StoreError::Corrupt { id, source })) => {
                    self.quarantine_job(id, &source.to_string())?;
                    Err(StoreError::Corrupt { id, source })
                }
                // A user record is derived data: rebuild it from the jobs and
                // run the change again, once.
                Err(TransactionError::Abort(StoreError::CorruptUser(user))) if !rebuilt => {
                    tracing::error!(user, "corrupt user record, rebuilding");
                    self.rebuild_user(user)?;
                    rebuilt = true;
                    continue;
                }
                Err(TransactionError::Abort(e)) => Err(e),
                Err(TransactionError::Storage(e)) => Err(e.into()),
            };
        }
    }

    fn decode_job(&self, key: &[u8], bytes: &[u8]) -> Result<Option<Job>, StoreError> {
        match codec::decode::<Job>(bytes) {
            Ok(j) => Ok(Some(j)),
            Err(e) => {
                let Some(id) = JobId::from_slice(key) else {
                    return Ok(None);
                };
                tracing::error!(job = %id, error = %e, "corrupt job record, quarantining");
                self.quarantine_job(id, &e.to_string())?;
                Ok(None)
            }
        }
    }

    fn load(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        match self.jobs.get(id.as_bytes())? {
            None => Ok(None),
            Some(b) => self.decode_job(id.as_bytes(), &b),
        }
    }

    /// Move a job record that cannot be decoded to `quarantine` and unlink it
    /// from every index and counter, in one transaction. What the record said
    /// is unknown, so the indexes (which carry state and user) say it instead.
    fn quarantine_job(&self, id: JobId, reason: &str) -> Result<(), StoreError> {
        // Ready keys are found by scan, outside the transaction; the
        // transaction re-checks each before removing it.
        let mut user_of: Option<u64> = None;
        for s in JobState::ALL {
            if let Some(v) = self.by_state.get(keys::state_key(s, id))? {
                user_of = keys::u64_at(&v, 0);
            }
        }
        let ready_keys: Vec<Vec<u8>> = match user_of {
            Some(u) => self
                .ready
                .scan_prefix(u.to_be_bytes())
                .keys()
                .filter_map(Result::ok)
                .filter(|k| k.ends_with(id.as_bytes()))
                .map(|k| k.to_vec())
                .collect(),
            None => Vec::new(),
        };
        let reason = reason.to_string();
        let trees = (
            &self.jobs,
            &self.by_state,
            &self.by_user,
            &self.users,
            &self.ready,
            &self.turns,
            &self.cache,
            &self.requests,
            &self.shorts,
            &self.meta,
            &self.quarantine,
        );
        trees
            .transaction(
                |(
                    jobs,
                    by_state,
                    by_user,
                    users,
                    ready,
                    turns,
                    cache,
                    requests,
                    shorts,
                    meta,
                    quarantine,
                )| {
                    let tx = Tx {
                        jobs,
                        by_state,
                        by_user,
                        users,
                        ready,
                        turns,
                        cache,
                        requests,
                        shorts,
                        meta,
                    };
                    let Some(raw) = jobs.get(id.as_bytes())? else {
                        return Ok(());
                    };
                    let entry = QuarantineEntry {
                        tree: "jobs".into(),
                        key: id.as_bytes().to_vec(),
                        bytes: raw.to_vec(),
                        reason: reason.clone(),
                        at: crate::job::now_ms(),
                    };
                    let entry = codec::encode(&entry).map_err(|e| TxError::Abort(e.into()))?;
                    quarantine.insert(qkey("jobs", id.as_bytes()), entry)?;
                    jobs.remove(id.as_bytes())?;
                    shorts.remove(&keys::short_key(id))?;
                    for s in JobState::ALL {
                        let Some(v) = by_state.remove(&keys::state_key(s, id))? else {
                            continue;
                        };
                        add_count(&tx, s, -1)?;
                        let Some(user) = keys::u64_at(&v, 0) else {
                            continue;
                        };
                        by_user.remove(&keys::user_key(user, id))?;
                        let mut rec = get_user(&tx, user)?;
                        if s.is_active() {
                            rec.active = rec.active.saturating_sub(1);
                        }
                        if s == JobState::Queued {
                            for k in &ready_keys {
                                if ready.remove(k.as_slice())?.is_some() {
                                    rec.queued = rec.queued.saturating_sub(1);
                                }
                            }
                            if rec.queued == 0 {
                                turns.remove(&keys::turn_key(rec.last_served, user))?;
                            }
                        }
                        put_user(&tx, user, &rec)?;
                    }
                    Ok(())
                },
            )
            .map_err(|e: TransactionError<StoreError>| match e {
                TransactionError::Abort(e) => e,
                TransactionError::Storage(e) => e.into(),
            })?;
        self.sync()?;
        Ok(())
    }

    /// Recompute one user's record from their jobs, after it failed to
    /// decode. The recent-enqueue window is rebuilt from creation times.
    fn rebuild_user(&self, user: u64) -> Result<(), StoreError> {
        let raw = self.users.get(user.to_be_bytes())?;
        let mut rec = UserRecord::default();
        let since = crate::job::now_ms().saturating_sub(HOUR_MS);
        for k in self.by_user.scan_prefix(user.to_be_bytes()).keys() {
            let k = k?;
            let Some(id) = JobId::from_slice(&k[8..]) else {
                continue;
            };
            if let Some(job) = self.load(id)? {
                if job.state.is_active() {
                    rec.active += 1;
                }
                if job.state == JobState::Queued {
                    rec.queued += 1;
                }
                if job.created_at >= since {
                    rec.recent.push(job.created_at);
                }
            }
        }
        rec.recent.sort_unstable();
        if let Some(raw) = raw {
            let entry = QuarantineEntry {
                tree: "users".into(),
                key: user.to_be_bytes().to_vec(),
                bytes: raw.to_vec(),
                reason: "undecodable user record (rebuilt)".into(),
                at: crate::job::now_ms(),
            };
            self.quarantine
                .insert(qkey("users", &user.to_be_bytes()), codec::encode(&entry)?)?;
        }
        // The turn list may reference this user under an unknown key.
        for k in self.turns.iter().keys() {
            let k = k?;
            if keys::u64_at(&k, 8) == Some(user) {
                self.turns.remove(k)?;
            }
        }
        if rec.queued > 0 {
            self.turns
                .insert(keys::turn_key(rec.last_served, user), &[])?;
        }
        self.users
            .insert(user.to_be_bytes(), codec::encode(&rec)?)?;
        self.sync()?;
        Ok(())
    }

    /// Read a non-job record; one that does not decode is moved to the
    /// quarantine (kept for the operator) and reads as absent.
    fn get_or_quarantine<T: serde::de::DeserializeOwned>(
        &self,
        tree: &Tree,
        name: &str,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        let Some(b) = tree.get(key)? else {
            return Ok(None);
        };
        match codec::decode::<T>(&b) {
            Ok(v) => Ok(Some(v)),
            Err(e) => {
                tracing::error!(tree = name, error = %e, "corrupt record, quarantining");
                let entry = QuarantineEntry {
                    tree: name.into(),
                    key: key.to_vec(),
                    bytes: b.to_vec(),
                    reason: e.to_string(),
                    at: crate::job::now_ms(),
                };
                self.quarantine
                    .insert(qkey(name, key), codec::encode(&entry)?)?;
                tree.remove(key)?;
                self.sync()?;
                Ok(None)
            }
        }
    }

    fn jobs_from_index(
        &self,
        keys_iter: impl Iterator<Item = sled::Result<sled::IVec>>,
        id_at: usize,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        let mut out = Vec::new();
        for k in keys_iter {
            if out.len() >= limit {
                break;
            }
            let k = k?;
            let Some(id) = JobId::from_slice(&k[id_at..]) else {
                continue;
            };
            if let Some(job) = self.load(id)? {
                out.push(job);
            }
        }
        Ok(out)
    }
}

fn classify_open_error(path: &str, e: sled::Error) -> StoreError {
    let text = e.to_string();
    if text.contains("could not acquire lock") || text.contains("WouldBlock") {
        StoreError::Locked {
            path: path.to_string(),
        }
    } else {
        StoreError::Open {
            path: path.to_string(),
            reason: text,
        }
    }
}

fn qkey(tree: &str, key: &[u8]) -> Vec<u8> {
    let mut k = tree.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(key);
    k
}

fn get_job(tx: &Tx, id: JobId) -> TxResult<Option<Job>> {
    match tx.jobs.get(id.as_bytes())? {
        None => Ok(None),
        Some(b) => match codec::decode::<Job>(&b) {
            Ok(j) => Ok(Some(j)),
            Err(source) => abort(StoreError::Corrupt { id, source }),
        },
    }
}

fn get_user(tx: &Tx, user: u64) -> TxResult<UserRecord> {
    match tx.users.get(user.to_be_bytes())? {
        None => Ok(UserRecord::default()),
        Some(b) => match codec::decode::<UserRecord>(&b) {
            Ok(r) => Ok(r),
            Err(_) => abort(StoreError::CorruptUser(user)),
        },
    }
}

fn put_user(tx: &Tx, user: u64, rec: &UserRecord) -> TxResult<()> {
    let b = codec::encode(rec).map_err(|e| TxError::Abort(e.into()))?;
    tx.users.insert(&user.to_be_bytes(), b)?;
    Ok(())
}

fn get_count(tx: &Tx, s: JobState) -> TxResult<u64> {
    Ok(tx
        .meta
        .get(keys::count_key(s))?
        .and_then(|v| keys::u64_at(&v, 0))
        .unwrap_or(0))
}

fn add_count(tx: &Tx, s: JobState, delta: i64) -> TxResult<()> {
    let v = get_count(tx, s)?.saturating_add_signed(delta);
    tx.meta.insert(&keys::count_key(s), &v.to_be_bytes())?;
    Ok(())
}

/// Bring every derived tree in line with a job going from `old` to `new`
/// (either may be absent: creation and deletion). `served_at` marks a claim,
/// which moves the user to the back of the fair-scheduling turn list.
fn apply(tx: &Tx, old: Option<&Job>, new: Option<&Job>, served_at: Option<Millis>) -> TxResult<()> {
    let job = new.or(old).expect("apply needs a job");
    let (id, user) = (job.id, job.user_id);
    let old_state = old.map(|j| j.state);
    let new_state = new.map(|j| j.state);

    // Record.
    match new {
        Some(j) => {
            let b = codec::encode(j).map_err(|e| TxError::Abort(e.into()))?;
            tx.jobs.insert(id.as_bytes(), b)?;
        }
        None => {
            tx.jobs.remove(id.as_bytes())?;
        }
    }

    // State index and counters.
    if old_state != new_state {
        if let Some(s) = old_state {
            tx.by_state.remove(&keys::state_key(s, id))?;
            add_count(tx, s, -1)?;
        }
        if let Some(s) = new_state {
            tx.by_state
                .insert(&keys::state_key(s, id), &user.to_be_bytes())?;
            add_count(tx, s, 1)?;
        }
    }

    // Finished-per-minute counters for the health report.
    if let Some(s) = new_state.filter(|s| s.is_finished() && old_state != new_state) {
        let k = keys::finished_key(s, job.updated_at / 60_000);
        let n = tx
            .meta
            .get(k)?
            .and_then(|v| keys::u64_at(&v, 0))
            .unwrap_or(0);
        tx.meta.insert(&k, &(n + 1).to_be_bytes())?;
    }

    // Per-user index, and the request index that makes intake idempotent.
    match (old.is_some(), new.is_some()) {
        (false, true) => {
            tx.by_user.insert(&keys::user_key(user, id), &[])?;
            tx.requests.insert(keys::request_key(job), id.as_bytes())?;
            tx.shorts.insert(&keys::short_key(id), &[])?;
        }
        (true, false) => {
            tx.by_user.remove(&keys::user_key(user, id))?;
            tx.shorts.remove(&keys::short_key(id))?;
            let k = keys::request_key(job);
            // Only unlink the request if it still points at this job.
            if tx.requests.get(&k)?.as_deref() == Some(id.as_bytes().as_slice()) {
                tx.requests.remove(k)?;
            }
        }
        _ => {}
    }

    // Scheduler queue: a queued job sits in `ready` under its next attempt.
    if let Some(o) = old.filter(|j| j.state == JobState::Queued) {
        tx.ready
            .remove(&keys::ready_key(user, o.next_attempt_at, id))?;
    }
    if let Some(n) = new.filter(|j| j.state == JobState::Queued) {
        tx.ready
            .insert(&keys::ready_key(user, n.next_attempt_at, id), &[])?;
    }

    // User bookkeeping and the turn list.
    let active = |s: Option<JobState>| s.is_some_and(|s| s.is_active()) as i64;
    let queued = |s: Option<JobState>| (s == Some(JobState::Queued)) as i64;
    let d_active = active(new_state) - active(old_state);
    let d_queued = queued(new_state) - queued(old_state);
    if d_active != 0 || d_queued != 0 || served_at.is_some() {
        let mut rec = get_user(tx, user)?;
        let had_turn = rec.queued > 0;
        let old_turn = keys::turn_key(rec.last_served, user);
        rec.active = rec.active.saturating_add_signed(d_active as i32);
        rec.queued = rec.queued.saturating_add_signed(d_queued as i32);
        if let Some(at) = served_at {
            rec.last_served = rec.last_served.max(at);
        }
        let new_turn = keys::turn_key(rec.last_served, user);
        if had_turn {
            tx.turns.remove(&old_turn)?;
        }
        if rec.queued > 0 {
            tx.turns.insert(&new_turn, &[])?;
        }
        put_user(tx, user, &rec)?;
    }

    // Media cache: written in the same transaction that leaves `uploading`
    // with a delivery, so a delivered file is never forgotten.
    if let (Some(o), Some(n)) = (old, new) {
        if o.state == JobState::Uploading && n.state != JobState::Uploading {
            if let Some(d) = &n.delivery {
                let c = CachedMedia {
                    file_id: d.file_id.clone(),
                    sent_as: d.sent_as,
                    title: n.title.clone(),
                    file_size: n.file_size,
                    cached_at: n.updated_at,
                };
                let b = codec::encode(&c).map_err(|e| TxError::Abort(e.into()))?;
                tx.cache.insert(n.cache_key().as_bytes(), b)?;
            }
        }
    }
    Ok(())
}

impl JobStore for SledStore {
    fn enqueue(
        &self,
        new: NewJob,
        limits: EnqueueLimits,
        now: Millis,
    ) -> Result<Enqueued, StoreError> {
        let id = JobId::new();
        let job = Job::new(id, new, now);
        self.transact(|tx| {
            // The same link of the same message again (Telegram redelivers
            // updates that were not confirmed before a crash): the same job.
            if let Some(existing) = tx.requests.get(keys::request_key(&job))? {
                if let Some(prev) = JobId::from_slice(&existing) {
                    if let Some(prev) = get_job(tx, prev)? {
                        let position = get_count(tx, JobState::Queued)?;
                        return Ok(Enqueued {
                            job: prev,
                            position,
                            duplicate: true,
                        });
                    }
                }
            }
            let active = JobState::ALL
                .into_iter()
                .filter(|s| s.is_active())
                .map(|s| get_count(tx, s))
                .sum::<TxResult<u64>>()?;
            if active >= limits.queue_capacity {
                return abort(
                    Refusal::QueueFull {
                        capacity: limits.queue_capacity,
                    }
                    .into(),
                );
            }
            let mut rec = get_user(tx, job.user_id)?;
            rec.recent.retain(|t| *t + HOUR_MS > now);
            if !limits.exempt {
                if rec.active >= limits.per_user_active {
                    return abort(
                        Refusal::UserActive {
                            limit: limits.per_user_active,
                        }
                        .into(),
                    );
                }
                if rec.recent.len() as u64 >= limits.per_user_per_hour as u64 {
                    // The oldest enqueue in the window leaves it first.
                    let idx = rec.recent.len() - limits.per_user_per_hour as usize;
                    return abort(
                        Refusal::UserHourly {
                            limit: limits.per_user_per_hour,
                            retry_at: rec.recent[idx] + HOUR_MS,
                        }
                        .into(),
                    );
                }
            }
            rec.recent.push(now);
            // Bound the window for exempt users too.
            let keep = (limits.per_user_per_hour as usize).max(1) * 2;
            if rec.recent.len() > keep {
                let cut = rec.recent.len() - keep;
                rec.recent.drain(..cut);
            }
            put_user(tx, job.user_id, &rec)?;
            apply(tx, None, Some(&job), None)?;
            let position = get_count(tx, JobState::Queued)?;
            Ok(Enqueued {
                job: job.clone(),
                position,
                duplicate: false,
            })
        })
    }

    fn claim(&self, owner: Uuid, lease_ms: u64, now: Millis) -> Result<Option<Job>, StoreError> {
        // Walk users least recently served first; take the first user whose
        // earliest queued job is due. Races with other claimers surface as
        // conflicts and simply restart the walk.
        'restart: for _ in 0..64 {
            for turn in self.turns.iter().keys() {
                let turn = turn?;
                let Some(user) = keys::u64_at(&turn, 8) else {
                    continue;
                };
                let Some(head) = self.ready.scan_prefix(user.to_be_bytes()).keys().next() else {
                    continue;
                };
                let head = head?;
                let next = keys::u64_at(&head, 8).unwrap_or(u64::MAX);
                if next > now {
                    continue;
                }
                let Some(id) = JobId::from_slice(&head[16..16 + ID_LEN]) else {
                    continue;
                };
                let res = self.transact(|tx| {
                    let Some(old) = get_job(tx, id)? else {
                        return abort(StoreError::NotFound(id));
                    };
                    if old.state != JobState::Queued || old.next_attempt_at > now {
                        return abort(StoreError::Conflict {
                            id,
                            expected: JobState::Queued,
                            actual: old.state,
                        });
                    }
                    let mut new = old.clone();
                    new.enter(JobState::Downloading, now)
                        .map_err(|e| TxError::Abort(e.into()))?;
                    new.lease = Some(Lease {
                        owner,
                        until: now + lease_ms,
                    });
                    apply(tx, Some(&old), Some(&new), Some(now))?;
                    Ok(new)
                });
                match res {
                    Ok(job) => return Ok(Some(job)),
                    Err(StoreError::Conflict { .. })
                    | Err(StoreError::NotFound(_))
                    | Err(StoreError::Corrupt { .. }) => continue 'restart,
                    Err(e) => return Err(e),
                }
            }
            return Ok(None);
        }
        Ok(None)
    }

    fn update(
        &self,
        id: JobId,
        expect: Expect,
        to: Option<JobState>,
        now: Millis,
        edit: &(dyn Fn(&mut Job) + Sync),
    ) -> Result<Job, StoreError> {
        self.transact(|tx| {
            let Some(old) = get_job(tx, id)? else {
                return abort(StoreError::NotFound(id));
            };
            if old.state != expect.state {
                return abort(StoreError::Conflict {
                    id,
                    expected: expect.state,
                    actual: old.state,
                });
            }
            if let Some(owner) = expect.owner {
                if old.lease.map(|l| l.owner) != Some(owner) {
                    return abort(StoreError::LeaseLost { id });
                }
            }
            let mut new = old.clone();
            edit(&mut new);
            // The edit may not move the job itself: only `enter` does.
            new.state = old.state;
            new.id = old.id;
            new.user_id = old.user_id;
            match to {
                Some(to) => new.enter(to, now).map_err(|e| TxError::Abort(e.into()))?,
                None => new.updated_at = now,
            }
            apply(tx, Some(&old), Some(&new), None)?;
            Ok(new)
        })
    }

    fn get(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        self.load(id)
    }

    fn find(&self, prefix: &str) -> Result<Result<Job, FindError>, StoreError> {
        let p: String = prefix
            .trim()
            .chars()
            .filter(|c| *c != '-')
            .collect::<String>()
            .to_ascii_lowercase();
        if p.len() < 4 || p.len() > 32 || !p.chars().all(|c| c.is_ascii_hexdigit()) {
            return Ok(Err(FindError::Invalid(prefix.to_string())));
        }
        let bytes: Vec<u8> = (0..p.len() / 2)
            .map(|i| u8::from_str_radix(&p[2 * i..2 * i + 2], 16).unwrap_or(0))
            .collect();
        // Up to 8 digits: the short id users see (the id's last digits), or a
        // prefix of it. Longer: a prefix of the full id.
        let short = p.len() <= 8;
        let (tree, id_at) = if short {
            (&self.shorts, 4)
        } else {
            (&self.jobs, 0)
        };
        let mut found: Option<JobId> = None;
        for k in tree.scan_prefix(&bytes).keys() {
            let k = k?;
            let Some(id) = JobId::from_slice(&k[id_at..]) else {
                continue;
            };
            let matches = if short {
                id.short().starts_with(&p)
            } else {
                id.to_string().starts_with(&p)
            };
            if !matches {
                continue;
            }
            if found.is_some() {
                return Ok(Err(FindError::Ambiguous(prefix.to_string())));
            }
            found = Some(id);
        }
        match found {
            None => Ok(Err(FindError::NotFound(prefix.to_string()))),
            Some(id) => Ok(self
                .load(id)?
                .ok_or_else(|| FindError::NotFound(prefix.to_string()))),
        }
    }

    fn list_state(&self, state: JobState, limit: usize) -> Result<Vec<Job>, StoreError> {
        self.jobs_from_index(self.by_state.scan_prefix([state.as_u8()]).keys(), 1, limit)
    }

    fn list_state_rev(&self, state: JobState, limit: usize) -> Result<Vec<Job>, StoreError> {
        self.jobs_from_index(
            self.by_state.scan_prefix([state.as_u8()]).keys().rev(),
            1,
            limit,
        )
    }

    fn list_user(&self, user_id: u64, limit: usize) -> Result<Vec<Job>, StoreError> {
        self.jobs_from_index(
            self.by_user.scan_prefix(user_id.to_be_bytes()).keys().rev(),
            8,
            limit,
        )
    }

    fn counts(&self) -> Result<StateCounts, StoreError> {
        let mut c = StateCounts::default();
        for s in JobState::ALL {
            *c.get_mut(s) = self
                .meta
                .get(keys::count_key(s))?
                .and_then(|v| keys::u64_at(&v, 0))
                .unwrap_or(0);
        }
        Ok(c)
    }

    fn cache_get(&self, key: &str) -> Result<Option<CachedMedia>, StoreError> {
        // A corrupt cache entry costs one download, nothing more.
        self.get_or_quarantine(&self.cache, "cache", key.as_bytes())
    }

    fn prune_finished(&self, older_than: Millis, batch: usize) -> Result<usize, StoreError> {
        // Minute counters older than a day are of no use to the report.
        let day_ago = crate::job::now_ms().saturating_sub(24 * HOUR_MS) / 60_000;
        for state in [JobState::Done, JobState::Failed] {
            let from = keys::finished_key(state, 0);
            let to = keys::finished_key(state, day_ago);
            let old: Vec<sled::IVec> = self
                .meta
                .range(from..to)
                .keys()
                .take(batch)
                .collect::<Result<_, _>>()?;
            for k in old {
                self.meta.remove(k)?;
            }
        }
        let mut pruned = 0;
        for state in [JobState::Done, JobState::Failed] {
            // Ids sort by creation, and a job finishes after it is created:
            // once creation passes the cutoff, nothing later can qualify.
            let mut victims = Vec::new();
            for k in self.by_state.scan_prefix([state.as_u8()]).keys() {
                let k = k?;
                let Some(id) = JobId::from_slice(&k[1..]) else {
                    continue;
                };
                if id.created_ms() >= older_than || victims.len() + pruned >= batch {
                    break;
                }
                victims.push(id);
            }
            for id in victims {
                let gone = self.transact(|tx| {
                    let Some(old) = get_job(tx, id)? else {
                        return Ok(false);
                    };
                    if old.state != state || old.updated_at >= older_than {
                        return Ok(false);
                    }
                    apply(tx, Some(&old), None, None)?;
                    Ok(true)
                });
                match gone {
                    Ok(true) => pruned += 1,
                    Ok(false) | Err(StoreError::Corrupt { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(pruned)
    }

    fn finished_since(&self, since: Millis) -> Result<(u64, u64), StoreError> {
        let mut out = [0u64; 2];
        for (i, state) in [JobState::Done, JobState::Failed].into_iter().enumerate() {
            let from = keys::finished_key(state, since / 60_000);
            let to = keys::finished_key(state, u64::MAX);
            for kv in self.meta.range(from..=to) {
                let (_, v) = kv?;
                out[i] += keys::u64_at(&v, 0).unwrap_or(0);
            }
        }
        Ok((out[0], out[1]))
    }

    fn probe_write(&self) -> Result<(), StoreError> {
        self.meta
            .insert(b"healthz", &crate::job::now_ms().to_be_bytes())?;
        self.sync()
    }

    fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    fn settings(&self, user_id: u64) -> Result<Option<UserSettings>, StoreError> {
        // Settings are a convenience: a corrupt record falls back to defaults.
        self.get_or_quarantine(&self.settings, "settings", &user_id.to_be_bytes())
    }

    fn put_settings(&self, user_id: u64, settings: &UserSettings) -> Result<(), StoreError> {
        self.settings
            .insert(user_id.to_be_bytes(), codec::encode(settings)?)?;
        self.sync()
    }

    fn quarantined(&self) -> Result<Vec<QuarantineEntry>, StoreError> {
        let mut out = Vec::new();
        for v in self.quarantine.iter().values() {
            let v = v?;
            // The quarantine must not itself be a way to crash.
            if let Ok(e) = codec::decode::<QuarantineEntry>(&v) {
                out.push(e);
            }
        }
        Ok(out)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.sync()?;
        Ok(())
    }

    fn check_invariants(&self) -> Result<InvariantReport, StoreError> {
        let mut r = InvariantReport {
            counters: self.counts()?,
            quarantined: self.quarantine.len() as u64,
            ..Default::default()
        };
        let mut users: HashMap<u64, UserRecord> = HashMap::new();
        let mut jobs: HashMap<JobId, Job> = HashMap::new();
        for kv in self.jobs.iter() {
            let (k, v) = kv?;
            r.jobs += 1;
            match (JobId::from_slice(&k), codec::decode::<Job>(&v)) {
                (Some(id), Ok(job)) if job.id == id => {
                    *r.recount.get_mut(job.state) += 1;
                    let u = users.entry(job.user_id).or_default();
                    u.active += job.state.is_active() as u32;
                    u.queued += (job.state == JobState::Queued) as u32;
                    jobs.insert(id, job);
                }
                _ => r
                    .problems
                    .push(format!("undecodable record under key {k:?}")),
            }
        }
        if r.recount != r.counters {
            r.problems.push(format!(
                "counters {:?} differ from recount {:?}",
                r.counters, r.recount
            ));
        }
        let mut indexed: HashMap<JobId, u32> = HashMap::new();
        for k in self.by_state.iter().keys() {
            let k = k?;
            let state = JobState::from_u8(k[0]);
            let id = JobId::from_slice(&k[1..]);
            match (state, id) {
                (Some(s), Some(id)) => {
                    *indexed.entry(id).or_default() += 1;
                    match jobs.get(&id) {
                        Some(j) if j.state == s => {}
                        Some(j) => r
                            .problems
                            .push(format!("job {id} indexed as {s} but is {}", j.state)),
                        None => r
                            .problems
                            .push(format!("index {s} points at missing job {id}")),
                    }
                }
                _ => r.problems.push(format!("malformed state index key {k:?}")),
            }
        }
        for (id, job) in &jobs {
            if indexed.get(id).copied().unwrap_or(0) != 1 {
                r.problems.push(format!(
                    "job {id} ({}) is in {} state indexes",
                    job.state,
                    indexed.get(id).copied().unwrap_or(0)
                ));
            }
            if !self
                .by_user
                .contains_key(keys::user_key(job.user_id, *id))?
            {
                r.problems
                    .push(format!("job {id} missing from its user index"));
            }
            if job.state == JobState::Queued
                && !self.ready.contains_key(keys::ready_key(
                    job.user_id,
                    job.next_attempt_at,
                    *id,
                ))?
            {
                r.problems
                    .push(format!("queued job {id} missing from the ready queue"));
            }
        }
        if self.by_user.len() != jobs.len() {
            r.problems.push(format!(
                "user index has {} entries for {} jobs",
                self.by_user.len(),
                jobs.len()
            ));
        }
        let queued = r.recount.queued as usize;
        if self.ready.len() != queued {
            r.problems.push(format!(
                "ready queue has {} entries for {queued} queued jobs",
                self.ready.len()
            ));
        }
        let mut turn_users = Vec::new();
        for k in self.turns.iter().keys() {
            turn_users.push(keys::u64_at(&k?, 8).unwrap_or(0));
        }
        for (user, want) in &users {
            let have = match self.users.get(user.to_be_bytes())? {
                Some(b) => codec::decode::<UserRecord>(&b).unwrap_or_default(),
                None => UserRecord::default(),
            };
            if have.active != want.active || have.queued != want.queued {
                r.problems.push(format!(
                    "user {user}: record says active {} queued {}, jobs say {} and {}",
                    have.active, have.queued, want.active, want.queued
                ));
            }
            let turns = turn_users.iter().filter(|u| *u == user).count();
            if turns != (want.queued > 0) as usize {
                r.problems.push(format!(
                    "user {user} has {turns} turn entries with {} queued",
                    want.queued
                ));
            }
        }
        Ok(r)
    }
}
