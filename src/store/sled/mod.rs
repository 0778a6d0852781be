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

use std::path::Path;

use sled::{Db, Tree};

use super::keys;
use super::StoreError;
use sync::GroupSync;

/// Schema of the trees (not of the records, which carry their own version).
/// 2: records may be written by codec version 2, which a build of schema 1
/// cannot read (it would quarantine them); such a build refuses to open the
/// database instead. A database of schema 1 is marked 2 when opened.
pub const SCHEMA_VERSION: u32 = 2;

pub struct SledStore {
    db: Db,
    sync: GroupSync,
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
            .flush_every_ms(Some(500))
            .open()
            .map_err(|e| classify_open_error(&shown, e))?;
        let open = |name: &str| db.open_tree(name);
        let store = SledStore {
            sync: GroupSync::open(&dir.join("db")).map_err(|e| StoreError::Open {
                path: shown.clone(),
                reason: format!("cannot open the data file for syncing: {e}"),
            })?,
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
            inbox: open("inbox")?,
            quarantine: open("quarantine")?,
            meta: open("meta")?,
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
        Ok(store)
    }

    /// The trees one job change may touch, in the order [`tx::Tx`] reads them.
    fn job_trees(&self) -> [&Tree; tx::JOB_TREES] {
        [
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
        ]
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
