//! One job change: a closure that reads the store and records its writes,
//! then one record of them queued for the log (`wal.rs`), whose applier
//! applies them to sled once the record is durable.
//!
//! The closure runs under the commit lock, against its own writes, then the
//! changes queued but not yet in sled (the log's overlay), then sled: every
//! writer of the job trees holds that lock, so nothing changes underneath it
//! and no sled transaction is needed. A reader outside the lock may see a
//! change half applied to sled; the readers that matter re-check under the
//! lock (a claim re-reads the job it found in an index).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use sled::transaction::{ConflictableTransactionError as TxError, UnabortableTransactionError};
use sled::{IVec, Tree};

use super::handles::REOPEN_AFTER;
use super::keys;
use super::wal::{self, Wal, Write};
use super::{tree_number, SledStore, META_TREE, READY_TREE, TURNS_TREE};
use crate::job::{Job, JobId, JobState};
use crate::store::codec;
use crate::store::{StoreError, UserRecord};

/// How many trees [`Tx`] spans (see [`SledStore::job_trees`]).
pub(super) const JOB_TREES: usize = 10;

/// The writes of one change so far, by tree and key: the latest value of
/// each key (or its removal), which the change's own reads see. A key written
/// twice is logged and applied once.
#[derive(Default)]
pub(super) struct Writes(BTreeMap<(u8, Vec<u8>), Option<IVec>>);

impl Writes {
    /// The writes in key order, as a log record holds them.
    pub(super) fn into_vec(self) -> Vec<Write> {
        self.0
            .into_iter()
            .map(|((tree, key), value)| Write {
                tree,
                key,
                value: value.map(|v| v.to_vec()),
            })
            .collect()
    }
}

/// One tree as a change sees it: its own writes first, then sled.
pub(super) struct TxTree<'a> {
    tree: &'a Tree,
    index: u8,
    writes: &'a RefCell<Writes>,
    /// Changes queued for the log that sled may not hold yet.
    log: Option<&'a Wal>,
}

type ReadResult<T> = Result<T, UnabortableTransactionError>;

impl<'a> TxTree<'a> {
    /// Tree `i` of `trees`, writing into `writes`.
    pub(super) fn new(
        trees: &'a [Tree],
        i: usize,
        writes: &'a RefCell<Writes>,
        log: Option<&'a Wal>,
    ) -> Self {
        TxTree {
            tree: &trees[i],
            index: i as u8,
            writes,
            log,
        }
    }

    pub fn get<K: AsRef<[u8]>>(&self, key: K) -> ReadResult<Option<IVec>> {
        let k = (self.index, key.as_ref().to_vec());
        if let Some(v) = self.writes.borrow().0.get(&k) {
            return Ok(v.clone());
        }
        if let Some(v) = self.log.and_then(|l| l.pending(k.0, &k.1)) {
            return Ok(v);
        }
        self.tree
            .get(&k.1)
            .map_err(UnabortableTransactionError::Storage)
    }

    pub fn insert<K: AsRef<[u8]>, V: Into<IVec>>(&self, key: K, value: V) -> ReadResult<()> {
        self.writes
            .borrow_mut()
            .0
            .insert((self.index, key.as_ref().to_vec()), Some(value.into()));
        Ok(())
    }

    /// Remove `key`, returning what it held.
    pub fn remove<K: AsRef<[u8]>>(&self, key: K) -> ReadResult<Option<IVec>> {
        let old = self.get(key.as_ref())?;
        self.writes
            .borrow_mut()
            .0
            .insert((self.index, key.as_ref().to_vec()), None);
        Ok(old)
    }
}

/// Every tree a job change may touch.
pub(super) struct Tx<'a> {
    pub jobs: TxTree<'a>,
    pub by_state: TxTree<'a>,
    pub by_user: TxTree<'a>,
    pub users: TxTree<'a>,
    pub ready: TxTree<'a>,
    pub turns: TxTree<'a>,
    pub cache: TxTree<'a>,
    pub requests: TxTree<'a>,
    pub shorts: TxTree<'a>,
    pub meta: TxTree<'a>,
}

/// Whether [`SledStore::transact_with`] returns once the change is durable,
/// or at once (the change is logged and becomes durable with the next sync).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Durable {
    Now,
    Later,
}

pub(super) type TxResult<T> = Result<T, TxError<StoreError>>;

pub(super) fn abort<T>(e: StoreError) -> TxResult<T> {
    Err(TxError::Abort(e))
}

impl<'a> Tx<'a> {
    /// The view of `trees` ([`SledStore::job_trees`], plus any after them);
    /// every write through it lands in `writes`.
    pub(super) fn new(
        trees: &'a [Tree],
        writes: &'a RefCell<Writes>,
        log: Option<&'a Wal>,
    ) -> Self {
        let t = |i: usize| TxTree::new(trees, i, writes, log);
        Tx {
            jobs: t(const { tree_number("jobs") }),
            by_state: t(const { tree_number("by_state") }),
            by_user: t(const { tree_number("by_user") }),
            users: t(const { tree_number("users") }),
            ready: t(const { tree_number("ready") }),
            turns: t(const { tree_number("turns") }),
            cache: t(const { tree_number("cache") }),
            requests: t(const { tree_number("requests") }),
            shorts: t(const { tree_number("shorts") }),
            meta: t(const { tree_number("meta") }),
        }
    }
}

impl SledStore {
    /// Run `f` as one change of the job trees and make it durable.
    /// A job record that fails to decode aborts the change and is
    /// quarantined here.
    pub(super) fn transact<T>(&self, f: impl Fn(&Tx) -> TxResult<T>) -> Result<T, StoreError> {
        self.transact_with(Durable::Now, f)
    }

    /// [`SledStore::transact`], waiting for the sync or not.
    pub(super) fn transact_with<T>(
        &self,
        durable: Durable,
        f: impl Fn(&Tx) -> TxResult<T>,
    ) -> Result<T, StoreError> {
        // sled's handles before the commit lock, never after: a thread
        // that waits at a closing gate must not hold the lock (see
        // `handles.rs`).
        let h = self.h()?;
        let trees = &h.logged[..JOB_TREES];
        let mut rebuilt = false;
        loop {
            let writes = RefCell::new(Writes::default());
            let mut commit = self.commit.lock().unwrap_or_else(|e| e.into_inner());
            let res = f(&Tx::new(trees, &writes, Some(&self.wal)));
            return match res {
                Ok(v) => {
                    let seq = self.log_change(&mut commit, writes.into_inner(), durable)?;
                    drop(commit);
                    match durable {
                        Durable::Now => self.wait_durable(seq)?,
                        // The log's syncer thread makes it durable (unless
                        // a waiting committer's batch takes it first) and
                        // the applier applies it shortly; changes and point
                        // reads of jobs see it at once meanwhile.
                        Durable::Later => {}
                    }
                    Ok(v)
                }
                Err(TxError::Abort(StoreError::Corrupt { id, source })) => {
                    drop(commit);
                    self.quarantine_job(id, &source.to_string())?;
                    Err(StoreError::Corrupt { id, source })
                }
                // A user record is derived data: rebuild it from the jobs and
                // run the change again, once.
                Err(TxError::Abort(e)) if !rebuilt && corrupt_user(&e).is_some() => {
                    drop(commit);
                    let user = corrupt_user(&e).unwrap_or_default();
                    tracing::error!(user, "corrupt user record, rebuilding");
                    self.rebuild_user(user)?;
                    rebuilt = true;
                    continue;
                }
                Err(TxError::Abort(e)) => Err(e),
                // Only a sled transaction conflicts, and the reads of a change
                // run outside one, under the commit lock.
                Err(TxError::Conflict) => continue,
                Err(TxError::Storage(e)) => Err(e.into()),
            };
        }
    }

    /// Read the job trees as the latest change left them (queued changes
    /// included, durable or not), without the commit lock and without
    /// waiting for sled to have them: for counters, and for checks that a
    /// change re-makes under the lock (the limits before an enqueue). Each
    /// key is read as it is at that moment; `f` must not write.
    pub(super) fn view<T>(&self, f: impl FnOnce(&Tx) -> TxResult<T>) -> Result<T, StoreError> {
        let writes = RefCell::new(Writes::default());
        let h = self.h()?;
        let res = f(&Tx::new(&h.logged[..JOB_TREES], &writes, Some(&self.wal)));
        debug_assert!(writes.borrow().0.is_empty(), "a view wrote");
        match res {
            Ok(v) => Ok(v),
            Err(TxError::Abort(e)) => Err(e),
            Err(TxError::Storage(e)) => Err(e.into()),
            // Only a sled transaction conflicts, and a view runs none.
            Err(TxError::Conflict) => Err(StoreError::unavailable(std::io::Error::other(
                "a read of the job trees conflicted",
            ))),
        }
    }

    /// Queue `writes` (with the next sequence number, also written to sled
    /// with them) for the log, under the commit lock. Returns the sequence
    /// number to wait for: whoever syncs the record hands the writes to the
    /// log's applier, which puts them into sled. With [`Durable::Now`] the
    /// caller must wait for the number: the record is written when it does.
    pub(super) fn log_change(
        &self,
        commit: &mut u64,
        writes: Writes,
        durable: Durable,
    ) -> Result<u64, StoreError> {
        let seq = *commit + 1;
        let mut writes = writes;
        let queue = writes
            .0
            .keys()
            .any(|(tree, _)| matches!(*tree, READY_TREE | TURNS_TREE));
        writes.0.insert(
            (META_TREE, keys::META_WAL_SEQ.to_vec()),
            Some(IVec::from(&seq.to_be_bytes())),
        );
        let writes = writes.into_vec();
        let mut record = Vec::new();
        wal::encode_writes(seq, &writes, &mut record);
        *commit = seq;
        if record.len() > wal::MAX_RECORD {
            return self.apply_and_checkpoint(seq, &writes, queue);
        }
        if let Err(writes) = self.wal.append(seq, &record, writes, durable, queue) {
            return self.apply_and_checkpoint(seq, &writes, queue);
        }
        Ok(seq)
    }

    /// A change too large for the log, or that does not fit in what is left
    /// of it: apply it to sled directly and checkpoint, which makes it and
    /// every earlier change durable in sled itself.
    fn apply_and_checkpoint(
        &self,
        seq: u64,
        writes: &[Write],
        moves_queue: bool,
    ) -> Result<u64, StoreError> {
        self.wal.drain()?;
        let h = self.h()?;
        self.wal
            .write_directly(moves_queue, || wal::apply_change(&h.logged, writes))?;
        self.checkpoint_locked(seq)?;
        Ok(seq)
    }

    /// Log `writes` (to the inbox tree) as one change, which sled gets from
    /// the log's applier; with [`Durable::Now`], durable when this returns.
    pub(super) fn log_writes(
        &self,
        writes: Vec<Write>,
        durable: Durable,
    ) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        let mut w = Writes::default();
        for x in writes {
            w.0.insert((x.tree, x.key), x.value.map(IVec::from));
        }
        // Held before the commit lock, as in `transact_with`.
        let _h = self.h()?;
        let mut commit = self.commit.lock().unwrap_or_else(|e| e.into_inner());
        let seq = self.log_change(&mut commit, w, durable)?;
        drop(commit);
        match durable {
            Durable::Now => self.wait_durable(seq),
            Durable::Later => Ok(()),
        }
    }

    /// Wait until every change committed so far is in sled, durable or
    /// not yet (lazy updates too): before a flush of sled, the invariant
    /// check, an export and a read of the inbox.
    pub(super) fn settle(&self) -> Result<(), StoreError> {
        let seq = *self.commit.lock().unwrap_or_else(|e| e.into_inner());
        self.wait_for(seq, Mark::Applied)
    }

    /// Wait until every change whose committer could have been told it is
    /// durable is in sled, so that a walk of sled's trees sees it. Every
    /// reader that walks (or reads without the overlay) a tree a job change
    /// writes calls this first: a committer returns once its change is
    /// durable, before sled has it. Changes not yet durable were confirmed
    /// to no one, so the reader need not wait for their sync.
    pub(super) fn caught_up(&self) -> Result<(), StoreError> {
        self.wait_for(self.wal.durable(), Mark::Applied)
    }

    /// Wait until the change numbered `seq` is durable.
    fn wait_durable(&self, seq: u64) -> Result<(), StoreError> {
        self.wait_for(seq, Mark::Durable)
    }

    /// Wait until change `seq` reached `mark`. If the log cannot be written
    /// (or sled written from it), a checkpoint puts every queued change in
    /// sled and makes it durable there instead.
    fn wait_for(&self, seq: u64, mark: Mark) -> Result<(), StoreError> {
        let waited = match mark {
            Mark::Durable => self.wal.sync_to(seq),
            Mark::Applied => self.wal.applied_to(seq),
        };
        let Err(e) = waited else {
            return Ok(());
        };
        tracing::error!(error = %e, "the store's log could not be written; checkpointing");
        let _h = self.h()?;
        let commit = self.commit.lock().unwrap_or_else(|e| e.into_inner());
        self.checkpoint_locked(*commit).map_err(|_| e)
    }

    /// Make everything committed durable in sled's own files (flush and
    /// fdatasync), so the log's records up to `seq` are no longer needed,
    /// and start the log over. The caller holds the commit lock.
    pub(super) fn checkpoint_locked(&self, seq: u64) -> Result<(), StoreError> {
        self.wal.drain()?;
        self.sync(&*self.h()?)?;
        self.wal.restart(seq);
        if self.checkpoints.fetch_add(1, Ordering::Relaxed) + 1 >= REOPEN_AFTER {
            self.checkpoints.store(0, Ordering::Relaxed);
            self.reopener.ask();
        }
        Ok(())
    }
}

/// How far a change has gone.
#[derive(Clone, Copy)]
enum Mark {
    /// Its record is durable in the log: it survives a crash.
    Durable,
    /// sled holds it too: walks of sled's trees see it.
    Applied,
}

/// A user record that failed to decode: sled's own signal to
/// [`SledStore::transact`] to rebuild the record and run the change again.
/// It leaves the store only if the rebuilt record fails too.
#[derive(Debug, thiserror::Error)]
#[error("user record {0} is corrupt")]
pub(super) struct CorruptUser(pub u64);

pub(super) fn corrupt_user(e: &StoreError) -> Option<u64> {
    match e {
        StoreError::Unavailable(source) => source.downcast_ref::<CorruptUser>().map(|c| c.0),
        _ => None,
    }
}

pub(super) fn get_job(tx: &Tx, id: JobId) -> TxResult<Option<Job>> {
    match tx.jobs.get(id.as_bytes())? {
        None => Ok(None),
        Some(b) => match codec::decode::<Job>(&b) {
            Ok(j) => Ok(Some(j)),
            Err(source) => abort(StoreError::Corrupt { id, source }),
        },
    }
}

pub(super) fn get_user(tx: &Tx, user: u64) -> TxResult<UserRecord> {
    match tx.users.get(user.to_be_bytes())? {
        None => Ok(UserRecord::default()),
        Some(b) => match codec::decode::<UserRecord>(&b) {
            Ok(r) => Ok(r),
            Err(_) => abort(StoreError::unavailable(CorruptUser(user))),
        },
    }
}

pub(super) fn put_user(tx: &Tx, user: u64, rec: &UserRecord) -> TxResult<()> {
    let b = codec::encode(rec).map_err(|e| TxError::Abort(e.into()))?;
    tx.users.insert(user.to_be_bytes(), b)?;
    Ok(())
}

pub(super) fn get_count(tx: &Tx, s: JobState) -> TxResult<u64> {
    Ok(tx
        .meta
        .get(keys::count_key(s))?
        .and_then(|v| keys::u64_at(&v, 0))
        .unwrap_or(0))
}

pub(super) fn add_count(tx: &Tx, s: JobState, delta: i64) -> TxResult<()> {
    let v = get_count(tx, s)?.saturating_add_signed(delta);
    tx.meta.insert(keys::count_key(s), &v.to_be_bytes())?;
    Ok(())
}
