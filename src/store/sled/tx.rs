//! One transaction over every tree a job change touches, and the small
//! readers and writers used inside it.

use std::cell::RefCell;

use sled::transaction::{
    ConflictableTransactionError as TxError, TransactionError, TransactionalTree,
    UnabortableTransactionError,
};
use sled::{IVec, Transactional};

use super::keys;
use super::wal::{self, Write};
use super::SledStore;
use crate::job::{Job, JobId, JobState};
use crate::store::codec;
use crate::store::{StoreError, UserRecord};

/// How many trees [`Tx`] spans (see [`SledStore::job_trees`]).
pub(super) const JOB_TREES: usize = 10;

/// One tree of a transaction. Reads go to sled; every write is also recorded,
/// so that the committed transaction can be logged for replay (`wal.rs`).
pub(super) struct TxTree<'a> {
    tree: &'a TransactionalTree,
    index: u8,
    log: &'a RefCell<Vec<Write>>,
}

impl<'a> TxTree<'a> {
    pub fn get<K: AsRef<[u8]>>(&self, key: K) -> Result<Option<IVec>, UnabortableTransactionError> {
        self.tree.get(key)
    }

    pub fn insert<K, V>(
        &self,
        key: K,
        value: V,
    ) -> Result<Option<IVec>, UnabortableTransactionError>
    where
        K: AsRef<[u8]> + Into<IVec>,
        V: Into<IVec>,
    {
        let value: IVec = value.into();
        self.log.borrow_mut().push(Write {
            tree: self.index,
            key: key.as_ref().to_vec(),
            value: Some(value.to_vec()),
        });
        self.tree.insert(key, value)
    }

    pub fn remove<K>(&self, key: K) -> Result<Option<IVec>, UnabortableTransactionError>
    where
        K: AsRef<[u8]> + Into<IVec>,
    {
        self.log.borrow_mut().push(Write {
            tree: self.index,
            key: key.as_ref().to_vec(),
            value: None,
        });
        self.tree.remove(key)
    }
}

/// The transactional view of every tree a job change may touch.
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
    /// The view of [`SledStore::job_trees`], plus any trees after them;
    /// every write through it is recorded in `log`.
    pub(super) fn new(view: &'a [TransactionalTree], log: &'a RefCell<Vec<Write>>) -> Self {
        let t = |i: usize| TxTree {
            tree: &view[i],
            index: i as u8,
            log,
        };
        Tx {
            jobs: t(0),
            by_state: t(1),
            by_user: t(2),
            users: t(3),
            ready: t(4),
            turns: t(5),
            cache: t(6),
            requests: t(7),
            shorts: t(8),
            meta: t(9),
        }
    }
}

impl SledStore {
    /// Run `f` as one transaction over every job tree and make it durable.
    /// A job record that fails to decode aborts the transaction and is
    /// quarantined here, outside it.
    ///
    /// Durability: the transaction's writes are logged (`wal.rs`) under the
    /// commit lock, which also gives the transaction its sequence number;
    /// the log's group commit then syncs it, outside the lock, together with
    /// whatever other committers logged meanwhile.
    pub(super) fn transact<T>(&self, f: impl Fn(&Tx) -> TxResult<T>) -> Result<T, StoreError> {
        self.transact_with(Durable::Now, f)
    }

    /// [`SledStore::transact`], waiting for the sync or not.
    pub(super) fn transact_with<T>(
        &self,
        durable: Durable,
        f: impl Fn(&Tx) -> TxResult<T>,
    ) -> Result<T, StoreError> {
        let trees = self.job_trees();
        let mut rebuilt = false;
        loop {
            let log = RefCell::new(Vec::new());
            let mut commit = self.commit.lock().unwrap_or_else(|e| e.into_inner());
            let seq = *commit + 1;
            let res = trees[..].transaction(|view| {
                log.borrow_mut().clear();
                let tx = Tx::new(view, &log);
                let out = f(&tx)?;
                tx.meta.insert(keys::META_WAL_SEQ, &seq.to_be_bytes())?;
                Ok(out)
            });
            return match res {
                Ok(v) => {
                    *commit = seq;
                    let mut record = Vec::new();
                    wal::encode_writes(seq, &log.borrow(), &mut record);
                    if record.len() > wal::MAX_RECORD || !self.wal.append(seq, &record) {
                        // Too large for the log, or the log is full: a
                        // checkpoint makes this and every earlier change
                        // durable in sled itself.
                        self.checkpoint_locked(seq)?;
                    }
                    drop(commit);
                    match durable {
                        Durable::Now => self.wal.sync_to(seq)?,
                        // The record waits in the log's buffer for the next
                        // committer's sync; sled's own flusher writes the
                        // change within `flush_every_ms` meanwhile.
                        Durable::Later => {}
                    }
                    Ok(v)
                }
                Err(TransactionError::Abort(StoreError::Corrupt { id, source })) => {
                    drop(commit);
                    self.quarantine_job(id, &source.to_string())?;
                    Err(StoreError::Corrupt { id, source })
                }
                // A user record is derived data: rebuild it from the jobs and
                // run the change again, once.
                Err(TransactionError::Abort(e)) if !rebuilt && corrupt_user(&e).is_some() => {
                    drop(commit);
                    let user = corrupt_user(&e).unwrap_or_default();
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

    /// Apply `writes` to one tree outside a transaction (`apply` gets them
    /// as a sled batch, which is atomic for that tree) and log them as one
    /// record, durable when this returns. The sequence number is written to
    /// sled right after the batch, as a job transaction writes it.
    pub(super) fn log_writes(
        &self,
        writes: Vec<Write>,
        apply: impl FnOnce(sled::Batch) -> sled::Result<()>,
    ) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for w in &writes {
            match &w.value {
                Some(v) => batch.insert(w.key.as_slice(), v.as_slice()),
                None => batch.remove(w.key.as_slice()),
            }
        }
        let mut commit = self.commit.lock().unwrap_or_else(|e| e.into_inner());
        let seq = *commit + 1;
        apply(batch)?;
        // After the batch in sled's own order: once sled holds this number,
        // it holds the batch, and replay skips the record (it must not undo
        // a later unlogged change, such as an update marked handled).
        self.meta.insert(keys::META_WAL_SEQ, &seq.to_be_bytes())?;
        *commit = seq;
        let mut record = Vec::new();
        wal::encode_writes(seq, &writes, &mut record);
        if record.len() > wal::MAX_RECORD || !self.wal.append(seq, &record) {
            self.checkpoint_locked(seq)?;
        }
        drop(commit);
        self.wal.sync_to(seq)
    }

    /// Make everything committed durable in sled's own files (flush and
    /// fdatasync), so the log's records up to `seq` are no longer needed,
    /// and start the log over. The caller holds the commit lock.
    pub(super) fn checkpoint_locked(&self, seq: u64) -> Result<(), StoreError> {
        self.sync()?;
        self.wal.restart(seq);
        Ok(())
    }
}

/// A user record that failed to decode: sled's own signal to
/// [`SledStore::transact`] to rebuild the record and run the change again.
/// It leaves the store only if the rebuilt record fails too.
#[derive(Debug, thiserror::Error)]
#[error("user record {0} is corrupt")]
pub(super) struct CorruptUser(pub u64);

fn corrupt_user(e: &StoreError) -> Option<u64> {
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
    tx.users.insert(&user.to_be_bytes(), b)?;
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
    tx.meta.insert(&keys::count_key(s), &v.to_be_bytes())?;
    Ok(())
}
