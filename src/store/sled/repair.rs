//! Repairs: a record that does not decode is moved to the quarantine tree
//! (kept for the operator) and unlinked; a corrupt user record is rebuilt
//! from that user's jobs.

use std::cell::RefCell;

use sled::transaction::ConflictableTransactionError as TxError;
use sled::Tree;

use super::keys;
use super::tx::{add_count, get_user, put_user, Tx, TxResult, TxTree, Writes, JOB_TREES};
use super::wal;
use super::SledStore;
use crate::job::{now_ms, Job, JobId, JobState, HOUR_MS};
use crate::store::codec;
use crate::store::{QuarantineEntry, StoreError, UserRecord};

impl SledStore {
    pub(super) fn decode_job(&self, key: &[u8], bytes: &[u8]) -> Result<Option<Job>, StoreError> {
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

    pub(super) fn load(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        // A change queued for the log is seen at once, before sled has it.
        let bytes = match self.wal.pending(0, id.as_bytes()) {
            Some(v) => v,
            None => self.h()?.jobs().get(id.as_bytes())?,
        };
        match bytes {
            None => Ok(None),
            Some(b) => self.decode_job(id.as_bytes(), &b),
        }
    }

    /// Move a job record that cannot be decoded to `quarantine` and unlink it
    /// from every index and counter, in one transaction. What the record said
    /// is unknown, so the indexes (which carry state and user) say it instead.
    pub(super) fn quarantine_job(&self, id: JobId, reason: &str) -> Result<(), StoreError> {
        // Under the commit lock, as every change of the job trees, and with
        // every queued change in sled first, so that the scans below read
        // what is current; not logged: quarantining ends in a checkpoint, so
        // replay never brings the record back.
        let h = self.h()?;
        let commit = self.commit.lock().unwrap_or_else(|e| e.into_inner());
        self.wal.drain()?;
        let mut user_of: Option<u64> = None;
        let mut indexed = false;
        for s in JobState::ALL {
            if let Some(v) = h.by_state().get(keys::state_key(s, id))? {
                user_of = keys::u64_at(&v, 0);
                indexed = true;
            }
        }
        // No entry: a done job ([`keys::indexed_by_state`]). Its user is
        // found in `by_user`, by a walk of the whole tree: rare (a record
        // sled returns damaged) and once per record.
        let unindexed_user = if indexed {
            None
        } else {
            h.by_user()
                .iter()
                .keys()
                .filter_map(Result::ok)
                .find(|k| k.len() == 8 + keys::ID_LEN && k.ends_with(id.as_bytes()))
                .and_then(|k| keys::u64_at(&k, 0))
        };
        let ready_keys: Vec<Vec<u8>> = match user_of {
            Some(u) => h
                .ready()
                .scan_prefix(u.to_be_bytes())
                .keys()
                .filter_map(Result::ok)
                .filter(|k| k.ends_with(id.as_bytes()))
                .map(|k| k.to_vec())
                .collect(),
            None => Vec::new(),
        };
        let mut trees = h.logged[..JOB_TREES].to_vec();
        trees.push(h.quarantine.clone());
        let writes = RefCell::new(Writes::default());
        let tx = Tx::new(&trees, &writes, None);
        let quarantine = TxTree::new(&trees, JOB_TREES, &writes, None);
        let unlink = || -> TxResult<()> {
            let Some(raw) = tx.jobs.get(id.as_bytes())? else {
                return Ok(());
            };
            let entry = QuarantineEntry {
                tree: "jobs".into(),
                key: id.as_bytes().to_vec(),
                bytes: raw.to_vec(),
                reason: reason.to_string(),
                at: now_ms(),
            };
            let entry = codec::encode(&entry).map_err(|e| TxError::Abort(e.into()))?;
            quarantine.insert(qkey("jobs", id.as_bytes()), entry)?;
            tx.jobs.remove(id.as_bytes())?;
            tx.shorts.remove(keys::short_key(id))?;
            if !indexed {
                add_count(&tx, JobState::Done, -1)?;
                if let Some(user) = unindexed_user {
                    tx.by_user.remove(keys::user_key(user, id))?;
                }
            }
            for s in JobState::ALL {
                let Some(v) = tx.by_state.remove(keys::state_key(s, id))? else {
                    continue;
                };
                add_count(&tx, s, -1)?;
                let Some(user) = keys::u64_at(&v, 0) else {
                    continue;
                };
                tx.by_user.remove(keys::user_key(user, id))?;
                let mut rec = get_user(&tx, user)?;
                if s.is_active() {
                    rec.active = rec.active.saturating_sub(1);
                }
                if s == JobState::Queued {
                    for k in &ready_keys {
                        if tx.ready.remove(k.as_slice())?.is_some() {
                            rec.queued = rec.queued.saturating_sub(1);
                        }
                    }
                    if rec.queued == 0 {
                        tx.turns.remove(keys::turn_key(rec.last_served, user))?;
                    }
                }
                put_user(&tx, user, &rec)?;
            }
            Ok(())
        };
        unlink().map_err(|e| match e {
            TxError::Abort(e) => e,
            TxError::Storage(e) => e.into(),
            TxError::Conflict => StoreError::unavailable(std::io::Error::other("conflict")),
        })?;
        wal::apply_change(&trees, &writes.into_inner().into_vec())?;
        self.checkpoint_locked(*commit)
    }

    /// Recompute one user's record from their jobs, after it failed to
    /// decode. The recent-enqueue window is rebuilt from creation times.
    pub(super) fn rebuild_user(&self, user: u64) -> Result<(), StoreError> {
        // Read what every queued change wrote, from sled (draining takes the
        // commit lock, so that nothing is queued meanwhile).
        let h = self.h()?;
        {
            let _commit = self.commit.lock().unwrap_or_else(|e| e.into_inner());
            self.wal.drain()?;
        }
        let raw = h.users().get(user.to_be_bytes())?;
        let mut rec = UserRecord::default();
        let since = now_ms().saturating_sub(HOUR_MS);
        for k in h.by_user().scan_prefix(user.to_be_bytes()).keys() {
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
        // The writes below, under the commit lock as every change of the job
        // trees (the scan above may quarantine a job, which takes it too),
        // after every queued change, and ending in a checkpoint.
        let commit = self.commit.lock().unwrap_or_else(|e| e.into_inner());
        self.wal.drain()?;
        if let Some(raw) = raw {
            let entry = QuarantineEntry {
                tree: "users".into(),
                key: user.to_be_bytes().to_vec(),
                bytes: raw.to_vec(),
                reason: "undecodable user record (rebuilt)".into(),
                at: now_ms(),
            };
            h.quarantine
                .insert(qkey("users", &user.to_be_bytes()), codec::encode(&entry)?)?;
        }
        // The turn list may reference this user under an unknown key. A
        // claim walking `turns` meanwhile is told to walk again.
        self.wal
            .write_directly(true, || -> Result<(), StoreError> {
                for k in h.turns().iter().keys() {
                    let k = k?;
                    if keys::u64_at(&k, 8) == Some(user) {
                        h.turns().remove(k)?;
                    }
                }
                if rec.queued > 0 {
                    h.turns()
                        .insert(keys::turn_key(rec.last_served, user), &[])?;
                }
                Ok(())
            })?;
        h.users().insert(user.to_be_bytes(), codec::encode(&rec)?)?;
        self.checkpoint_locked(*commit)
    }

    /// Read a non-job record; one that does not decode is moved to the
    /// quarantine (kept for the operator) and reads as absent.
    pub(super) fn get_or_quarantine<T: codec::Record>(
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
                    at: now_ms(),
                };
                // Under the commit lock, as every change of the job trees;
                // only if no change replaced the record meanwhile.
                let h = self.h()?;
                let commit = self.commit.lock().unwrap_or_else(|e| e.into_inner());
                self.wal.drain()?;
                if tree.get(key)?.as_ref() == Some(&b) {
                    h.quarantine
                        .insert(qkey(name, key), codec::encode(&entry)?)?;
                    tree.remove(key)?;
                    self.checkpoint_locked(*commit)?;
                }
                Ok(None)
            }
        }
    }

    pub(super) fn jobs_from_index(
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

    /// Up to `limit` jobs in `state`, from a walk of `jobs` (in the order
    /// `walk` gives): how jobs of a state without a `by_state` index are
    /// listed ([`keys::indexed_by_state`]). Undecodable records are
    /// quarantined on the way, as every full read does.
    pub(super) fn jobs_in_state(
        &self,
        walk: impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>,
        state: JobState,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        let mut out = Vec::new();
        for kv in walk {
            if out.len() >= limit {
                break;
            }
            let (k, v) = kv?;
            if let Some(job) = self.decode_job(&k, &v)?.filter(|j| j.state == state) {
                out.push(job);
            }
        }
        Ok(out)
    }
}

pub(super) fn qkey(tree: &str, key: &[u8]) -> Vec<u8> {
    let mut k = tree.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(key);
    k
}
