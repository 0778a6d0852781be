//! The sled backend of [`JobStore`].
//!
//! Trees (see `keys.rs` for layouts):
//! - `jobs`: id -> [`Job`] record (through [`crate::codec`]).
//! - `by_state`: one index per state but `done`, so a state's jobs are read
//!   without scanning all jobs; counters per state live in `meta`.
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
//! Files: `mod.rs` opens the database and names the trees; `handles.rs`
//! holds sled's handles and opens sled again while the store runs; `sync.rs` makes a
//! commit durable (flush + fdatasync, shared by concurrent writers);
//! `tx.rs` runs one transaction over the job trees; `apply.rs` derives the
//! indexes; `ops.rs` is the [`JobStore`] implementation; `repair.rs`
//! quarantines undecodable records and rebuilds a user record; `check.rs` is
//! the full invariant check; `transfer.rs` reads and loads export files.

mod apply;
mod check;
mod handles;
mod ops;
mod repair;
mod sync;
#[cfg(test)]
mod testing;
mod transfer;
mod tx;
mod wal;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use handles::{Gate, Handles, Held, Reopener};

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
/// 4: done jobs have no `by_state` entry ([`keys::indexed_by_state`]); a
/// build of schema 3 would miss them in its lists and retention, and its
/// check would call every one of them corrupt. A database of schema 3 is
/// marked 4 when opened; its done jobs keep their entries until they go.
pub const SCHEMA_VERSION: u32 = 4;

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
/// The log's numbers of the two trees a claim walks.
const READY_TREE: u8 = tree_number("ready") as u8;
const TURNS_TREE: u8 = tree_number("turns") as u8;
/// The cache's number: its point reads look in the log's overlay first.
const CACHE_TREE: u8 = tree_number("cache") as u8;
const _: () = assert!(INBOX_TREE as usize == tx::JOB_TREES);

pub struct SledStore {
    /// Opens sled again every [`handles::REOPEN_AFTER`] checkpoints. First,
    /// so that it stops before the log and the handles go.
    reopener: Reopener,
    sync: GroupSync,
    /// The redo log that makes a job change durable (see `wal.rs`).
    wal: Wal,
    /// The commit lock: held while a job change reads and its record is
    /// queued, so that sequence numbers, the log's order and the order in
    /// which sled gets the changes agree, and so that a change's reads
    /// (outside any sled transaction) see nothing move underneath them.
    /// Every writer of the job trees holds it. Holds the last sequence
    /// number used.
    commit: Mutex<u64>,
    /// How many log records the open replayed into sled (for the operator's
    /// log and for tests).
    replayed: AtomicU64,
    /// Checkpoints since sled was last asked to open again.
    checkpoints: AtomicU64,
    /// sled's database and trees (see `handles.rs`): every use holds them.
    gate: Arc<Gate>,
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
        let gate = Arc::new(Gate::open(dir).map_err(|e| classify_open_error(&shown, e))?);
        let (wal, records, end) =
            Wal::open(&dir.join(WAL_FILE), gate.clone()).map_err(|e| StoreError::Open {
                path: shown.clone(),
                reason: format!("cannot open the store's log {WAL_FILE}: {e}"),
            })?;
        let store = SledStore {
            reopener: Reopener::start(gate.clone()).map_err(|e| StoreError::Open {
                path: shown.clone(),
                reason: format!("cannot start the thread that reopens sled: {e}"),
            })?,
            wal,
            commit: Mutex::new(0),
            replayed: Default::default(),
            checkpoints: Default::default(),
            sync: GroupSync::open(&dir.join("db")).map_err(|e| StoreError::Open {
                path: shown.clone(),
                reason: format!("cannot open the data file for syncing: {e}"),
            })?,
            gate,
        };
        let h = store.h()?;
        match h.meta().get(keys::META_SCHEMA)? {
            None => {
                h.meta()
                    .insert(keys::META_SCHEMA, &SCHEMA_VERSION.to_be_bytes())?;
                h.db.flush()?;
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
                    h.meta()
                        .insert(keys::META_SCHEMA, &SCHEMA_VERSION.to_be_bytes())?;
                    h.db.flush()?;
                }
            }
        }
        drop(h);
        store.replay(records, end)?;
        Ok(store)
    }

    /// Apply the log's records that sled does not hold yet (those numbered
    /// after its [`keys::META_WAL_SEQ`]), each as one transaction, in order;
    /// then checkpoint, so the log starts empty.
    fn replay(&self, records: Vec<wal::Record>, end: LogEnd) -> Result<(), StoreError> {
        let h = self.h()?;
        let have = h
            .meta()
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
            wal::apply_change(&h.logged, &r.writes)?;
        }
        if !todo.is_empty() {
            tracing::info!(
                records = todo.len(),
                from = todo[0].seq,
                to = last,
                "replayed job changes from the store's log"
            );
        }
        drop(h);
        self.replayed.store(todo.len() as u64, Ordering::SeqCst);
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
        self.replayed.load(Ordering::SeqCst)
    }

    /// How many `fdatasync`s of the store's log made changes durable since
    /// the open, and how many changes they held (the bench's view of group
    /// commit).
    pub fn log_syncs(&self) -> LogSyncs {
        self.wal.syncs()
    }

    /// How many times sled was opened again while the store ran (see
    /// `handles.rs`).
    pub fn sled_reopens(&self) -> u64 {
        self.gate.reopens().0
    }

    /// The longest time a reopen of sled held the store still, from asking
    /// every user to let go of sled until it was open again.
    pub fn longest_sled_reopen(&self) -> std::time::Duration {
        self.gate.reopens().1
    }

    /// Close sled and open it again now, as the store does by itself every
    /// [`handles::REOPEN_AFTER`] checkpoints: `Ok(false)` if the store was
    /// too busy to let go of sled in time. For tests and benches.
    #[doc(hidden)]
    pub fn reopen_sled(&self) -> Result<bool, StoreError> {
        self.gate.reopen()
    }

    /// Run `f` with sled held open, so that no reopen runs meanwhile: a
    /// bench copies the store's files in it, as `kill -9` would leave them,
    /// and not halfway through a reopen. For tests and benches.
    #[doc(hidden)]
    pub fn with_sled_held<T>(&self, f: impl FnOnce() -> T) -> Result<T, StoreError> {
        let _h = self.h()?;
        Ok(f())
    }

    /// sled's handles, held for as long as the result lives.
    fn h(&self) -> Result<Held<'_>, StoreError> {
        self.gate.hold()
    }

    /// Make every change committed so far durable (see [`GroupSync`]).
    fn sync(&self, h: &Handles) -> Result<(), StoreError> {
        self.sync.sync(&h.db)
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
