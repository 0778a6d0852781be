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
//! - `inbox`: update id -> the raw update, until its effects are durable.
//! - `quarantine`: records that failed to decode.
//! - `meta`: schema version and counters.
//!
//! Every derived tree is maintained by one function, [`apply`], from the
//! before/after images of a job inside the same transaction. That is what
//! keeps the indexes, counters and records in agreement under crashes: there
//! is no second code path that could forget one of them.
//!
//! Files: `mod.rs` opens the database and names the trees; `sync.rs` makes a
//! commit durable (flush + fdatasync, shared by concurrent writers);
//! `tx.rs` runs one transaction over the job trees; `apply.rs` derives the
//! indexes; `ops.rs` is the [`JobStore`] implementation; `repair.rs`
//! quarantines undecodable records and rebuilds a user record; `check.rs` is
//! the full invariant check; `transfer.rs` reads and loads export files.

mod apply;
mod check;
mod ops;
mod repair;
mod sync;
mod transfer;
mod tx;
mod wal;

use std::path::Path;
use std::sync::Mutex;

use sled::{Db, Tree};

use super::keys;
use super::StoreError;
use sync::GroupSync;
pub use wal::LogSyncs;
use wal::{LogEnd, Wal};

/// Schema of the trees (not of the records, which carry their own version).
/// 2: records may be written by codec version 2, which a build of schema 1
/// cannot read (it would quarantine them); such a build refuses to open the
/// database instead. A database of schema 1 is marked 2 when opened.
/// 3: job changes are durable in the store's own log (`wal.rs`) before sled
/// writes them; a build of schema 2 would not replay that log and would lose
/// them, so it refuses the database instead.
pub const SCHEMA_VERSION: u32 = 3;

/// The log file, inside sled's directory so that copying the directory
/// copies a consistent image.
const WAL_FILE: &str = "tgdl.wal";

/// The trees a log record's writes name, by number (their place here): the
/// trees a job change may touch ([`tx::Tx`]), then the inbox. The log's
/// [`Wal::trees`] holds them in this order; nothing else lists them.
const LOGGED_TREES: [&str; tx::JOB_TREES + 1] = [
    "jobs", "by_state", "by_user", "users", "ready", "turns", "cache", "requests", "shorts",
    "meta", "inbox",
];

/// A logged tree's number in log records; a name not in [`LOGGED_TREES`]
/// fails the build.
pub(super) const fn tree_number(name: &str) -> usize {
    let mut i = 0;
    while i < LOGGED_TREES.len() {
        if same(LOGGED_TREES[i].as_bytes(), name.as_bytes()) {
            return i;
        }
        i += 1;
    }
    panic!("not a logged tree")
}

const fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// The inbox's tree number in log records: after the job trees.
const INBOX_TREE: u8 = tree_number("inbox") as u8;
/// meta's tree number: a record's own sequence number is written there.
pub(super) const META_TREE: u8 = tree_number("meta") as u8;
const _: () = assert!(INBOX_TREE as usize == tx::JOB_TREES);

pub struct SledStore {
    db: Db,
    sync: GroupSync,
    /// The redo log that makes a job change durable (see `wal.rs`).
    wal: Wal,
    /// The commit lock: held while a job change reads, its record is
    /// queued and sled applies its writes, so that sequence numbers, sled's
    /// commit order and the log's order agree, and so that a change's reads
    /// (outside any sled transaction) see nothing move underneath them.
    /// Every writer of the job trees holds it. Holds the last sequence
    /// number used.
    commit: Mutex<u64>,
    /// How many log records the open replayed into sled (for the operator's
    /// log and for tests).
    replayed: std::sync::atomic::AtomicU64,
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
    /// Updates Telegram handed over and the bot has not finished with.
    inbox: Tree,
    quarantine: Tree,
    meta: Tree,
}

impl SledStore {
    /// Open (or create) the database in `dir`. Fails with
    /// [`StoreError::InUse`] if another process has it open.
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
            // No background flusher: a job change is durable in the store's
            // log, and sled's flush holds a lock that every transaction's
            // commit waits for, for as long as the disk takes. sled writes
            // its files when a buffer fills and at each checkpoint instead.
            .flush_every_ms(None)
            .open()
            .map_err(|e| classify_open_error(&shown, e))?;
        let open = |name: &str| db.open_tree(name);
        let logged = LOGGED_TREES
            .map(open)
            .into_iter()
            .collect::<Result<Vec<Tree>, _>>()?;
        let Ok(
            [jobs, by_state, by_user, users, ready, turns, cache, requests, shorts, meta, inbox],
        ) = <[Tree; LOGGED_TREES.len()]>::try_from(logged.clone())
        else {
            unreachable!("one tree per name");
        };
        let (wal, records, end) =
            Wal::open(&dir.join(WAL_FILE), logged).map_err(|e| StoreError::Open {
                path: shown.clone(),
                reason: format!("cannot open the store's log {WAL_FILE}: {e}"),
            })?;
        let store = SledStore {
            wal,
            commit: Mutex::new(0),
            replayed: Default::default(),
            sync: GroupSync::open(&dir.join("db")).map_err(|e| StoreError::Open {
                path: shown.clone(),
                reason: format!("cannot open the data file for syncing: {e}"),
            })?,
            jobs,
            by_state,
            by_user,
            users,
            ready,
            turns,
            cache,
            requests,
            shorts,
            settings: open("settings")?,
            inbox,
            quarantine: open("quarantine")?,
            meta,
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
                if found < SCHEMA_VERSION {
                    // Older records keep decoding; newer ones will be written.
                    store
                        .meta
                        .insert(keys::META_SCHEMA, &SCHEMA_VERSION.to_be_bytes())?;
                    store.db.flush()?;
                }
            }
        }
        store.replay(records, end)?;
        Ok(store)
    }

    /// Apply the log's records that sled does not hold yet (those numbered
    /// after its [`keys::META_WAL_SEQ`]), each as one transaction, in order;
    /// then checkpoint, so the log starts empty.
    fn replay(&self, records: Vec<wal::Record>, end: LogEnd) -> Result<(), StoreError> {
        let have = self
            .meta
            .get(keys::META_WAL_SEQ)?
            .and_then(|v| keys::u64_at(&v, 0))
            .unwrap_or(0);
        let last = records.last().map_or(0, |r| r.seq).max(have);
        let todo: Vec<_> = records.into_iter().filter(|r| r.seq > have).collect();
        if let LogEnd::Damaged { offset } = end {
            // A torn last write is normal after a crash (that change was
            // never acknowledged); anything else is worth a look.
            tracing::warn!(
                offset,
                replayed = todo.len(),
                "the store's log ends in a damaged record; it and anything after it were not replayed"
            );
        }
        for r in &todo {
            wal::apply_change(self.wal.trees(), &r.writes)?;
        }
        if !todo.is_empty() {
            tracing::info!(
                records = todo.len(),
                from = todo[0].seq,
                to = last,
                "replayed job changes from the store's log"
            );
        }
        self.replayed
            .store(todo.len() as u64, std::sync::atomic::Ordering::SeqCst);
        let mut commit = self.commit.lock().unwrap_or_else(|e| e.into_inner());
        *commit = last;
        // Whatever was in the log is in sled now; make that durable and start
        // the log over, so the next crash replays only what follows.
        self.checkpoint_locked(last)
    }

    /// How many records of the store's log the open replayed into sled: not
    /// zero only after a crash that left acknowledged changes in the log
    /// alone.
    pub fn replayed_at_open(&self) -> u64 {
        self.replayed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How many `fdatasync`s of the store's log made changes durable since
    /// the open, and how many changes they held (the bench's view of group
    /// commit).
    pub fn log_syncs(&self) -> LogSyncs {
        self.wal.syncs()
    }

    /// The trees one job change may touch, in the order [`tx::Tx`] reads them.
    fn job_trees(&self) -> &[Tree] {
        &self.wal.trees()[..tx::JOB_TREES]
    }

    /// Make every change committed so far durable (see [`GroupSync`]).
    fn sync(&self) -> Result<(), StoreError> {
        self.sync.sync(&self.db)
    }
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::unavailable(e)
    }
}

fn classify_open_error(path: &str, e: sled::Error) -> StoreError {
    let text = e.to_string();
    if text.contains("could not acquire lock") || text.contains("WouldBlock") {
        StoreError::InUse {
            path: path.to_string(),
        }
    } else {
        StoreError::Open {
            path: path.to_string(),
            reason: text,
        }
    }
}
