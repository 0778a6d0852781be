//! One transaction over every tree a job change touches, and the small
//! readers and writers used inside it.

use sled::transaction::{
    ConflictableTransactionError as TxError, TransactionError, TransactionalTree,
};
use sled::Transactional;

use super::keys;
use super::SledStore;
use crate::job::{Job, JobId, JobState};
use crate::store::codec;
use crate::store::{StoreError, UserRecord};

/// How many trees [`Tx`] spans (see [`SledStore::job_trees`]).
pub(super) const JOB_TREES: usize = 10;

/// The transactional view of every tree a job change may touch.
pub(super) struct Tx<'a> {
    pub jobs: &'a TransactionalTree,
    pub by_state: &'a TransactionalTree,
    pub by_user: &'a TransactionalTree,
    pub users: &'a TransactionalTree,
    pub ready: &'a TransactionalTree,
    pub turns: &'a TransactionalTree,
    pub cache: &'a TransactionalTree,
    pub requests: &'a TransactionalTree,
    pub shorts: &'a TransactionalTree,
    pub meta: &'a TransactionalTree,
}

pub(super) type TxResult<T> = Result<T, TxError<StoreError>>;

pub(super) fn abort<T>(e: StoreError) -> TxResult<T> {
    Err(TxError::Abort(e))
}

impl<'a> Tx<'a> {
    /// The view of [`SledStore::job_trees`], plus any trees after them.
    pub(super) fn new(view: &'a [TransactionalTree]) -> Self {
        Tx {
            jobs: &view[0],
            by_state: &view[1],
            by_user: &view[2],
            users: &view[3],
            ready: &view[4],
            turns: &view[5],
            cache: &view[6],
            requests: &view[7],
            shorts: &view[8],
            meta: &view[9],
        }
    }
}

impl SledStore {
    /// Run `f` as one transaction over every job tree, then flush. A job
    /// record that fails to decode aborts the transaction and is quarantined
    /// here, outside it.
    pub(super) fn transact<T>(&self, f: impl Fn(&Tx) -> TxResult<T>) -> Result<T, StoreError> {
        let trees = self.job_trees();
        let mut rebuilt = false;
        loop {
            let res = trees[..].transaction(|view| f(&Tx::new(view)));
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
                Err(TransactionError::Abort(e)) if !rebuilt && corrupt_user(&e).is_some() => {
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
