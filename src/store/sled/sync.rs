//! Durability of a commit: sled's `flush`, then an `fdatasync` of its data
//! file, shared by concurrent writers (group commit).

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Mutex;

use sled::Db;

use crate::store::StoreError;

/// sled's `flush` writes with `sync_file_range`, which does not reach the
/// drive's cache or file metadata; an `fdatasync` on the data file after it
/// makes a flushed change survive power loss, not only a crash.
///
/// Group commit: every committed write takes a ticket; a sync covers every
/// ticket issued before it started, so concurrent writers share one flush and
/// one fdatasync instead of queueing one each.
pub(super) struct GroupSync {
    data_file: File,
    tickets: AtomicU64,
    synced: AtomicU64,
    lock: Mutex<()>,
}

impl GroupSync {
    /// Opening the data file is part of opening the store: without it no
    /// change would be durable, so failing here is a start-up error, never a
    /// silently weaker store.
    pub(super) fn open(data_file: &Path) -> std::io::Result<Self> {
        Ok(GroupSync {
            data_file: File::open(data_file)?,
            tickets: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            lock: Mutex::new(()),
        })
    }

    /// Flush sled, then fdatasync its data file.
    ///
    /// Called after the caller's write is committed in memory. Writers that
    /// arrive while a sync runs wait for the lock and usually find their
    /// ticket already covered by the next one.
    pub(super) fn sync(&self, db: &Db) -> Result<(), StoreError> {
        let mine = self.tickets.fetch_add(1, SeqCst) + 1;
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if self.synced.load(SeqCst) >= mine {
            return Ok(());
        }
        // Everything committed before this read is in what we flush now.
        let covered = self.tickets.load(SeqCst);
        db.flush()?;
        self.data_file
            .sync_data()
            .map_err(StoreError::unavailable)?;
        self.synced.store(covered, SeqCst);
        Ok(())
    }
}
