//! [`JobStore`] for [`SledStore`]: every change is one [`SledStore::transact`]
//! call whose derived writes come from [`apply`].

use uuid::Uuid;

use super::apply::apply;
use super::keys::{self, ID_LEN};
use super::tx::Durable;
use super::tx::{abort, corrupt_user, get_count, get_job, get_user, put_user, Tx, TxResult};
use super::wal::Write;
use super::INBOX_TREE;
use super::{SledStore, CACHE_TREE, READY_TREE, TURNS_TREE};
use crate::job::{now_ms, Job, JobId, JobState, Lease, Millis, NewJob, HOUR_MS};
use crate::store::codec;
use crate::store::{
    CachedMedia, EnqueueLimits, Enqueued, Expect, FindError, InFlight, InvariantReport, JobStore,
    QuarantineEntry, Refusal, StateCounts, StoreError, UserRecord, UserSettings,
};
use ::sled::transaction::ConflictableTransactionError as TxError;

impl JobStore for SledStore {
    fn enqueue(
        &self,
        new: NewJob,
        limits: EnqueueLimits,
        now: Millis,
    ) -> Result<Enqueued, StoreError> {
        let id = JobId::at(now);
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
            admit(tx, job.user_id, limits, now)?;
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
        // earliest queued job is due. The walk sees the trees as they are
        // with every queued change (`Wal::keys`): an enqueue acknowledged a
        // moment ago is there before sled has it, and a job another claim
        // just took, or a user it just served, is gone or at the end. So it
        // never waits for sled. A claimer that raced this one to the same
        // job surfaces as a conflict, and the walk starts again. A walk that
        // finds nothing counts as an answer only if no change to `ready` or
        // `turns` came while it ran (`Wal::queue_moves`): otherwise it may
        // have passed over a user that change moved, and it walks again.
        'restart: for _ in 0..64 {
            let moves = self.wal.queue_moves();
            for turn in self.wal.keys(TURNS_TREE, &[])? {
                let turn = turn?;
                let Some(user) = keys::u64_at(&turn, 8) else {
                    continue;
                };
                let Some(head) = self.wal.keys(READY_TREE, &user.to_be_bytes())?.next() else {
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
                    // Another change moved the job after the walk read its
                    // entry; the next walk sees that change.
                    Err(StoreError::Conflict { .. }) | Err(StoreError::NotFound(_)) => {
                        continue 'restart
                    }
                    // Quarantined and unlinked: the indexes no longer name it.
                    Err(StoreError::Corrupt { .. }) => continue 'restart,
                    Err(e) => return Err(e),
                }
            }
            // The walk found nothing due. If a change to `ready` or `turns`
            // came while it ran, it may have passed over a user the change
            // moved (the old place read after the change, the new one
            // before it): walk again. Otherwise nothing is due.
            let now_moves = self.wal.queue_moves();
            if now_moves != moves || now_moves % 2 == 1 {
                continue 'restart;
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
        let c = Change {
            expect,
            admit: None,
            to,
            now,
            edit,
        };
        self.transact(|tx| change(tx, id, &c))
    }

    fn update_lazily(
        &self,
        id: JobId,
        expect: Expect,
        now: Millis,
        edit: &(dyn Fn(&mut Job) + Sync),
    ) -> Result<Job, StoreError> {
        let c = Change {
            expect,
            admit: None,
            to: None,
            now,
            edit,
        };
        self.transact_with(Durable::Later, |tx| change(tx, id, &c))
    }

    fn reopen(
        &self,
        id: JobId,
        limits: EnqueueLimits,
        now: Millis,
        edit: &(dyn Fn(&mut Job) + Sync),
    ) -> Result<Job, StoreError> {
        let c = Change {
            expect: Expect::state(JobState::Failed),
            admit: Some(limits),
            to: Some(JobState::Queued),
            now,
            edit,
        };
        self.transact(|tx| change(tx, id, &c))
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
        self.caught_up()?;
        let h = self.h()?;
        let (tree, id_at) = if short {
            (h.shorts(), 4)
        } else {
            (h.jobs(), 0)
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
        self.caught_up()?;
        let h = self.h()?;
        if !keys::indexed_by_state(state) {
            return self.jobs_in_state(h.jobs().iter(), state, limit);
        }
        self.jobs_from_index(h.by_state().scan_prefix([state.as_u8()]).keys(), 1, limit)
    }

    fn list_state_rev(&self, state: JobState, limit: usize) -> Result<Vec<Job>, StoreError> {
        self.caught_up()?;
        let h = self.h()?;
        if !keys::indexed_by_state(state) {
            return self.jobs_in_state(h.jobs().iter().rev(), state, limit);
        }
        self.jobs_from_index(
            h.by_state().scan_prefix([state.as_u8()]).keys().rev(),
            1,
            limit,
        )
    }

    fn list_user(&self, user_id: u64, limit: usize) -> Result<Vec<Job>, StoreError> {
        self.caught_up()?;
        let h = self.h()?;
        self.jobs_from_index(
            h.by_user().scan_prefix(user_id.to_be_bytes()).keys().rev(),
            8,
            limit,
        )
    }

    fn in_flight_since(&self) -> Result<Vec<InFlight>, StoreError> {
        self.caught_up()?;
        let h = self.h()?;
        let mut out = Vec::new();
        for s in JobState::IN_FLIGHT {
            for k in h.by_state().scan_prefix([s.as_u8()]).keys() {
                let k = k?;
                let Some(id) = JobId::from_slice(&k[1..]) else {
                    continue;
                };
                let Some(bytes) = h.jobs().get(id.as_bytes())? else {
                    continue;
                };
                // The record's head only; one whose head does not read gets
                // the full decode, which quarantines it as `in_flight` does.
                match codec::decode_in_flight(&bytes) {
                    Ok(f) => out.push(f),
                    Err(_) => {
                        out.extend(self.decode_job(&k[1..], &bytes)?.as_ref().map(InFlight::of))
                    }
                }
            }
        }
        Ok(out)
    }

    fn counts(&self) -> Result<StateCounts, StoreError> {
        // The counters as the latest changes left them: no wait for sled.
        self.view(|tx| {
            let mut c = StateCounts::default();
            for s in JobState::ALL {
                *c.get_mut(s) = get_count(tx, s)?;
            }
            Ok(c)
        })
    }

    fn cache_get(&self, key: &str) -> Result<Option<CachedMedia>, StoreError> {
        // An entry a queued change wrote is read from the log's overlay, so
        // the lookup every link makes does not wait for sled to catch up
        // (which would make the log's applier write out its batch early).
        if let Some(queued) = self.wal.pending(CACHE_TREE, key.as_bytes()) {
            if let Ok(entry) = queued.map(|b| codec::decode(&b)).transpose() {
                return Ok(entry);
            }
        }
        // A corrupt cache entry costs one download, nothing more.
        self.caught_up()?;
        let h = self.h()?;
        self.get_or_quarantine(h.cache(), "cache", key.as_bytes())
    }

    fn prune_finished(&self, older_than: Millis, batch: usize) -> Result<usize, StoreError> {
        self.caught_up()?;
        let h = self.h()?;
        // Minute counters older than a day are of no use to the report.
        let day_ago = now_ms().saturating_sub(24 * HOUR_MS) / 60_000;
        for state in [JobState::Done, JobState::Failed] {
            let from = keys::finished_key(state, 0);
            let to = keys::finished_key(state, day_ago);
            let old: Vec<::sled::IVec> = h
                .meta()
                .range(from..to)
                .keys()
                .take(batch)
                .collect::<Result<_, _>>()?;
            for k in old {
                h.meta().remove(k)?;
            }
        }
        let mut pruned = 0;
        for state in [JobState::Done, JobState::Failed] {
            // Ids sort by creation, and a job finishes after it is created:
            // once creation passes the cutoff, nothing later can qualify.
            let mut victims = Vec::new();
            let full = |victims: &Vec<JobId>| victims.len() + pruned >= batch;
            if keys::indexed_by_state(state) {
                for k in h.by_state().scan_prefix([state.as_u8()]).keys() {
                    let k = k?;
                    let Some(id) = JobId::from_slice(&k[1..]) else {
                        continue;
                    };
                    if id.created_ms() >= older_than || full(&victims) {
                        break;
                    }
                    victims.push(id);
                }
            } else {
                // No index (done): the records in id order, by the state in
                // their heads. A head that does not read is left to the
                // reads that quarantine.
                for kv in h.jobs().iter() {
                    let (k, v) = kv?;
                    let Some(id) = JobId::from_slice(&k) else {
                        continue;
                    };
                    if id.created_ms() >= older_than || full(&victims) {
                        break;
                    }
                    if codec::decode_in_flight(&v).is_ok_and(|head| head.state == state) {
                        victims.push(id);
                    }
                }
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
        self.caught_up()?;
        let h = self.h()?;
        let mut out = [0u64; 2];
        for (i, state) in [JobState::Done, JobState::Failed].into_iter().enumerate() {
            let from = keys::finished_key(state, since / 60_000);
            let to = keys::finished_key(state, u64::MAX);
            for kv in h.meta().range(from..=to) {
                let (_, v) = kv?;
                out[i] += keys::u64_at(&v, 0).unwrap_or(0);
            }
        }
        Ok((out[0], out[1]))
    }

    fn probe_write(&self) -> Result<(), StoreError> {
        let h = self.h()?;
        h.meta().insert(b"healthz", &now_ms().to_be_bytes())?;
        self.sync(&h)
    }

    fn inbox_put(&self, updates: &[(u32, Vec<u8>)]) -> Result<(), StoreError> {
        if updates.is_empty() {
            return Ok(());
        }
        let h = self.h()?;
        let mut writes = Vec::new();
        for (id, bytes) in updates {
            // A queued change's word first: sled gets it only after the
            // overlay has it, and drops it from the overlay only after.
            let stored = match self.wal.pending(INBOX_TREE, &id.to_be_bytes()) {
                Some(queued) => queued.is_some(),
                None => h.inbox().contains_key(id.to_be_bytes())?,
            };
            if !stored {
                writes.push(Write {
                    tree: INBOX_TREE,
                    key: id.to_be_bytes().to_vec(),
                    value: Some(bytes.clone()),
                });
            }
        }
        // Logged like a job change, so the updates are durable with one
        // shared sync of the log. A replayed batch that sled already holds
        // only stores the same updates again.
        self.log_writes(writes, Durable::Now)
    }

    fn inbox_pending(&self) -> Result<Vec<(u32, Vec<u8>)>, StoreError> {
        // Every removal in sled too, though nobody waited for their sync.
        self.settle()?;
        let mut out = Vec::new();
        for kv in self.h()?.inbox().iter() {
            let (k, v) = kv?;
            match <[u8; 4]>::try_from(k.as_ref()) {
                Ok(id) => out.push((u32::from_be_bytes(id), v.to_vec())),
                Err(_) => tracing::error!(key = ?k, "malformed inbox key, skipped"),
            }
        }
        Ok(out)
    }

    fn inbox_done(&self, update_ids: &[u32]) -> Result<(), StoreError> {
        // Logged after the batch that stored them, so sled's applier removes
        // them after it put them there, and nothing waits: not for a sync
        // (if a crash loses the removal, the update is handled again after
        // the restart, and every handler's effect is idempotent under that:
        // ARCHITECTURE.md), nor for sled to have the batch.
        let writes = update_ids
            .iter()
            .map(|id| Write {
                tree: INBOX_TREE,
                key: id.to_be_bytes().to_vec(),
                value: None,
            })
            .collect();
        self.log_writes(writes, Durable::Later)
    }

    fn size_on_disk(&self) -> u64 {
        self.h().and_then(|h| Ok(h.db.size_on_disk()?)).unwrap_or(0)
    }

    fn settings(&self, user_id: u64) -> Result<Option<UserSettings>, StoreError> {
        // Settings are a convenience: a corrupt record falls back to defaults.
        let h = self.h()?;
        self.get_or_quarantine(&h.settings, "settings", &user_id.to_be_bytes())
    }

    fn put_settings(&self, user_id: u64, settings: &UserSettings) -> Result<(), StoreError> {
        let h = self.h()?;
        h.settings
            .insert(user_id.to_be_bytes(), codec::encode(settings)?)?;
        self.sync(&h)
    }

    fn quarantined(&self) -> Result<Vec<QuarantineEntry>, StoreError> {
        let mut out = Vec::new();
        for v in self.h()?.quarantine.iter().values() {
            let v = v?;
            // The quarantine must not itself be a way to crash.
            if let Ok(e) = codec::decode::<QuarantineEntry>(&v) {
                out.push(e);
            }
        }
        Ok(out)
    }

    fn flush(&self) -> Result<(), StoreError> {
        // sled's own files then hold every change committed before.
        self.settle()?;
        self.sync(&*self.h()?)?;
        Ok(())
    }

    fn check_invariants(&self) -> Result<InvariantReport, StoreError> {
        // Lazy updates included: on a quiet store sled then holds every
        // change whole.
        self.settle()?;
        self.full_check()
    }

    fn would_refuse(
        &self,
        user: u64,
        limits: EnqueueLimits,
        now: Millis,
    ) -> Result<Option<Refusal>, StoreError> {
        // A first look, without the commit lock or a wait for sled: the
        // enqueue checks the limits again in its own change.
        let looked = self.view(|tx| Ok((get_active(tx)?, get_user(tx, user)?)));
        let (active, mut rec) = match looked {
            Ok(v) => v,
            // The enqueue's change rebuilds a corrupt user record; until
            // then it reads as a user with nothing active.
            Err(e) if corrupt_user(&e).is_some() => {
                (self.counts()?.active(), UserRecord::default())
            }
            Err(e) => return Err(e),
        };
        rec.recent.retain(|t| *t + HOUR_MS > now);
        Ok(rec.refusal(active, limits))
    }
}

/// What [`change`] does to one job.
struct Change<'a> {
    expect: Expect,
    /// Admit the job as one more active job of its user (a reopen).
    admit: Option<EnqueueLimits>,
    to: Option<JobState>,
    now: Millis,
    edit: &'a (dyn Fn(&mut Job) + Sync),
}

/// Change one job inside a transaction: check what the caller expects
/// (state, and the lease's owner when given), admit it against the limits
/// when asked, apply the edit (which may not move the job: only `enter`
/// does), move it, and derive every index through [`apply`].
fn change(tx: &Tx, id: JobId, c: &Change) -> TxResult<Job> {
    let Some(old) = get_job(tx, id)? else {
        return abort(StoreError::NotFound(id));
    };
    if old.state != c.expect.state {
        return abort(StoreError::Conflict {
            id,
            expected: c.expect.state,
            actual: old.state,
        });
    }
    if let Some(owner) = c.expect.owner {
        if old.lease.map(|l| l.owner) != Some(owner) {
            return abort(StoreError::LeaseLost { id });
        }
    }
    if let Some(limits) = c.admit {
        admit(tx, old.user_id, limits, c.now)?;
    }
    let mut new = old.clone();
    (c.edit)(&mut new);
    new.state = old.state;
    new.id = old.id;
    new.user_id = old.user_id;
    match c.to {
        Some(to) => new.enter(to, c.now).map_err(|e| TxError::Abort(e.into()))?,
        None => new.updated_at = c.now,
    }
    apply(tx, Some(&old), Some(&new), None)?;
    Ok(new)
}

/// Admit one more active job of `user` (a new one, or a failed one reopened)
/// inside the transaction that makes it active: see [`UserRecord::admit`]. Admitted,
/// it counts in the user's hourly window. `enqueue` and `reopen` both pass
/// here, so a retry is held to exactly what a new link is.
fn admit(tx: &Tx, user: u64, limits: EnqueueLimits, now: Millis) -> TxResult<()> {
    let active = get_active(tx)?;
    let mut rec = get_user(tx, user)?;
    if let Err(r) = rec.admit(active, limits, now) {
        return abort(r.into());
    }
    put_user(tx, user, &rec)
}

/// Jobs in an active state, from the counters.
fn get_active(tx: &Tx) -> TxResult<u64> {
    JobState::ALL
        .into_iter()
        .filter(|s| s.is_active())
        .map(|s| get_count(tx, s))
        .sum()
}

#[cfg(test)]
mod tests {
    //! Reads while a change is queued but not yet in sled, held there with
    //! [`Wal::hold`]: the claim's walk of sled's indexes, and the reads
    //! that never wait for sled.

    use super::super::testing::{crash_image, enqueue, finish, reopen, wait_until, LOOSE};
    use super::super::{tree_number, META_TREE};
    use super::*;
    use std::path::Path;

    fn claim(store: &SledStore) -> Option<Job> {
        claim_as(store, Uuid::new_v4())
    }

    fn claim_as(store: &SledStore, owner: Uuid) -> Option<Job> {
        store.claim(owner, 60_000, 2_000).unwrap()
    }

    /// A store whose applier is paused once `users` (user, link number) are
    /// enqueued and in sled: every change after that is durable and in the
    /// log's overlay, but not in sled.
    fn store_with_sled_behind(dir: &Path, users: &[(u64, u32)]) -> (SledStore, Vec<Job>) {
        let store = SledStore::open(dir).unwrap();
        let jobs = users.iter().map(|&(u, n)| enqueue(&store, u, n)).collect();
        store.settle().unwrap();
        store.wal.pause_applier(true);
        (store, jobs)
    }

    /// Let sled catch up, and check that what the claims did is whole.
    fn catch_up_and_check(store: &SledStore) {
        store.wal.pause_applier(false);
        store.settle().unwrap();
        let report = store.check_invariants().unwrap();
        assert!(report.problems.is_empty(), "{:#?}", report.problems);
    }

    /// A leader that expects the last batch's committers back waits for
    /// them only briefly: alone, its change is still made durable, in a
    /// batch of its own. A change whose last batch held it alone (one
    /// worker) does not wait at all.
    #[test]
    fn a_leader_waits_for_expected_changes_only_briefly() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(SledStore::open(dir.path()).unwrap());
        enqueue(&store, 1, 1);
        assert_eq!(
            store.log_syncs().lingered,
            0,
            "a batch of one waits for nobody"
        );
        store.wal.expect_next(3);
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let alone = store.clone();
        let leader = std::thread::spawn(move || {
            let _ = done_tx.send(enqueue(&alone, 1, 2).id);
        });
        let id = done_rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("a leader waited for changes that never came");
        leader.join().unwrap();
        let syncs = store.log_syncs();
        assert_eq!((syncs.syncs, syncs.changes, syncs.lingered), (2, 2, 1));
        enqueue(&store, 1, 3);
        let syncs = store.log_syncs();
        assert_eq!(
            (syncs.syncs, syncs.lingered),
            (3, 1),
            "after a batch of one, the next leader does not wait"
        );
        let reopened = {
            drop(store);
            reopen(dir.path())
        };
        assert_eq!(reopened.get(id).unwrap().map(|j| j.id), Some(id));
    }

    #[test]
    fn an_enqueue_sled_has_not_got_is_claimed() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = store_with_sled_behind(dir.path(), &[]);
        let job = enqueue(&store, 1, 1);
        assert!(
            store.h().unwrap().turns().is_empty(),
            "sled has not got the enqueue"
        );
        assert_eq!(claim(&store).map(|j| j.id), Some(job.id));
        assert_eq!(claim(&store), None, "the one job is taken");
        catch_up_and_check(&store);
    }

    #[test]
    fn a_user_just_served_goes_after_one_who_waits() {
        let dir = tempfile::tempdir().unwrap();
        let (store, jobs) = store_with_sled_behind(dir.path(), &[(1, 1), (1, 2), (2, 1)]);
        assert_eq!(claim(&store).map(|j| j.id), Some(jobs[0].id));
        // sled still lists user 1 first, with their first job at the head;
        // the claim that served them is in the overlay alone.
        assert_eq!(claim(&store).map(|j| j.id), Some(jobs[2].id));
        assert_eq!(claim(&store).map(|j| j.id), Some(jobs[1].id));
        catch_up_and_check(&store);
    }

    #[test]
    fn a_user_just_served_is_still_served_when_nobody_else_waits() {
        let dir = tempfile::tempdir().unwrap();
        let (store, jobs) = store_with_sled_behind(dir.path(), &[(1, 1), (1, 2)]);
        assert_eq!(claim(&store).map(|j| j.id), Some(jobs[0].id));
        assert_eq!(claim(&store).map(|j| j.id), Some(jobs[1].id));
        assert_eq!(claim(&store), None);
        catch_up_and_check(&store);
    }

    /// The applier writes a batch of changes into sled as one set of writes
    /// (each key's last value, the sequence number last). A crash halfway
    /// through leaves sled with values from the end of the batch beside
    /// older ones, under the number from before it; replay must end where
    /// the batch ends.
    #[test]
    fn a_crash_halfway_through_a_batch_is_completed_by_replay() {
        let dir = tempfile::tempdir().unwrap();
        let (live, image) = (dir.path().join("live"), dir.path().join("image"));
        let store = SledStore::open(&live).unwrap();
        let job = enqueue(&store, 1, 1);
        enqueue(&store, 2, 1);
        store.flush().unwrap();
        store.wal.pause_applier(true);
        // Five durable changes sled has not got: a job's whole life, and a
        // new one.
        let owner = Uuid::new_v4();
        let claimed = store.claim(owner, 60_000, 2_000).unwrap().unwrap();
        assert_eq!(claimed.id, job.id);
        finish(&store, job.id, owner, &|_| {});
        let third = enqueue(&store, 3, 1);
        // The first half of what the batch writes reaches sled's files.
        let writes = store.wal.queued_writes();
        let is_seq = |w: &Write| w.tree == META_TREE && w.key == keys::META_WAL_SEQ;
        let half: Vec<Write> = writes.into_iter().filter(|w| !is_seq(w)).collect();
        let half = &half[..half.len() / 2];
        assert!(
            half.iter().any(|w| w.key == job.id.as_bytes()),
            "the job's final record"
        );
        let h = store.h().unwrap();
        super::super::wal::apply_change(&h.logged, half).unwrap();
        h.db.flush().unwrap();
        drop(h);
        // The folder as it is on disk now: what `kill -9` leaves.
        crash_image(&live, &image);
        store.wal.pause_applier(false);

        let reopened = SledStore::open(&image).unwrap();
        assert_eq!(reopened.replayed_at_open(), 5);
        let report = reopened.check_invariants().unwrap();
        assert!(report.problems.is_empty(), "{:#?}", report.problems);
        assert_eq!(reopened.get(job.id).unwrap().unwrap().state, JobState::Done);
        assert_eq!(
            reopened.get(third.id).unwrap().unwrap().state,
            JobState::Queued
        );
        let counts = reopened.counts().unwrap();
        assert_eq!((counts.queued, counts.done), (2, 1));
    }

    /// A job that goes from the queue to done while nobody walks sled's
    /// trees reaches sled only as done: the applier waits for a quarter of
    /// the log or a reader, and then writes each key once. Only the queue's
    /// trees, which every claim walks, get their writes at once. The lookups
    /// every link makes (the cache, the inbox) read the overlay and do not
    /// make sled catch up.
    #[test]
    fn a_life_lived_between_two_applies_reaches_sled_only_as_its_end() {
        use crate::job::{Delivery, MediaKind};
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let job = enqueue(&store, 1, 1);
        wait_until("the queue's writes never reached sled", || {
            !store.h().unwrap().turns().is_empty()
        });
        assert!(
            store.h().unwrap().jobs().is_empty(),
            "the job's record waits"
        );
        let owner = Uuid::new_v4();
        assert_eq!(claim_as(&store, owner).map(|j| j.id), Some(job.id));
        let delivered = |j: &mut Job| {
            j.delivery = Some(Delivery {
                message_id: 9,
                file_id: "file-9".into(),
                sent_as: MediaKind::Video,
            })
        };
        finish(&store, job.id, owner, &delivered);
        let sled_is_empty = |store: &SledStore| {
            let h = store.h().unwrap();
            [h.jobs(), h.by_state(), h.by_user(), h.cache()]
                .iter()
                .all(|t| t.is_empty())
        };
        assert!(sled_is_empty(&store), "sled has none of it yet");
        assert_eq!(store.get(job.id).unwrap().unwrap().state, JobState::Done);
        let cached = store.cache_get(&job.cache_key()).unwrap();
        assert_eq!(cached.map(|c| c.file_id), Some("file-9".to_string()));
        store.inbox_put(&[(7, b"{}".to_vec())]).unwrap();
        assert!(
            sled_is_empty(&store),
            "the lookups did not make sled catch up"
        );

        store.settle().unwrap();
        let h = store.h().unwrap();
        assert!(
            h.by_state().is_empty(),
            "a done job has no state entry, and the states it passed left none"
        );
        assert!(
            h.ready().is_empty() && h.turns().is_empty(),
            "no queue left"
        );
        let record = h.jobs().get(job.id.as_bytes()).unwrap().unwrap();
        assert_eq!(codec::decode::<Job>(&record).unwrap().state, JobState::Done);
        assert!(h.cache().contains_key(job.cache_key().as_bytes()).unwrap());
        drop(h);
        catch_up_and_check(&store);
    }

    /// The queue's trees go into sled ahead of the rest of their changes. A
    /// crash image in which sled's `ready` and `turns` already hold a claim
    /// that its `jobs` has not got must open to a whole store, the job
    /// claimed and the other still queued.
    #[test]
    fn a_crash_with_the_queue_ahead_of_the_jobs_is_made_whole_by_replay() {
        let dir = tempfile::tempdir().unwrap();
        let (live, image) = (dir.path().join("live"), dir.path().join("image"));
        let store = SledStore::open(&live).unwrap();
        let first = enqueue(&store, 1, 1);
        let second = enqueue(&store, 2, 1);
        assert_eq!(claim(&store).map(|j| j.id), Some(first.id));
        let ahead = |store: &SledStore| {
            let h = store.h().unwrap();
            let queued: Vec<_> = h.ready().iter().keys().map(Result::unwrap).collect();
            queued.len() == 1 && queued[0].ends_with(second.id.as_bytes()) && h.jobs().is_empty()
        };
        wait_until("the claim never reached sled's queue", || ahead(&store));
        store.h().unwrap().db.flush().unwrap();
        crash_image(&live, &image);

        let reopened = SledStore::open(&image).unwrap();
        assert_eq!(reopened.replayed_at_open(), 3);
        let report = reopened.check_invariants().unwrap();
        assert!(report.problems.is_empty(), "{:#?}", report.problems);
        let state = |id| reopened.get(id).unwrap().unwrap().state;
        assert_eq!(state(first.id), JobState::Downloading);
        assert_eq!(state(second.id), JobState::Queued);
        assert_eq!(claim(&reopened).map(|j| j.id), Some(second.id));
    }

    /// With no reader, sled still gets the changes once a quarter of the log
    /// has gathered: what the overlay and the applier's queue hold stays
    /// bounded.
    #[test]
    fn sled_gets_the_changes_once_a_quarter_of_the_log_has_gathered() {
        use super::super::wal::APPLY_AFTER;
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let first = enqueue(&store, 1, 0);
        let in_sled = |store: &SledStore| {
            let h = store.h().unwrap();
            h.jobs().contains_key(first.id.as_bytes()).unwrap()
        };
        let mut n = 1;
        while store.wal.written() < APPLY_AFTER as u64 {
            assert!(
                !in_sled(&store),
                "applied after {n} enqueues, before a quarter of the log"
            );
            enqueue(&store, 2 + u64::from(n % 50), n);
            n += 1;
        }
        wait_until("sled never got the changes", || in_sled(&store));
        catch_up_and_check(&store);
    }

    /// Writers that fill the log while others commit: each checkpoint
    /// drains the log while another committer may be writing a batch, and
    /// must be woken when that batch ends even though the applier, waiting
    /// for a quarter of the log, has nothing to say. A drain left asleep
    /// holds the commit lock, and every writer stops behind it.
    #[test]
    fn checkpoints_under_busy_writers_never_wait_for_the_applier() {
        use super::super::wal::WAL_BYTES;
        use std::io::Write as _;
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(SledStore::open(dir.path()).unwrap());
        let (checkpoints, stop) = (AtomicU64::new(0), AtomicBool::new(false));
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::scope(|sc| {
            for t in 0..6u64 {
                let (store, stop, done_tx) = (&store, &stop, done_tx.clone());
                sc.spawn(move || {
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        enqueue(store, 1 + t, n);
                        n += 1;
                    }
                    done_tx.send(n).unwrap();
                });
            }
            let (checkpoints, stop, store) = (&checkpoints, &stop, &store);
            sc.spawn(move || {
                let mut last = 0;
                while checkpoints.load(Ordering::Relaxed) < 3 {
                    let now = store.wal.written();
                    if now < last {
                        checkpoints.fetch_add(1, Ordering::Relaxed);
                    }
                    last = now;
                    std::thread::yield_now();
                }
                stop.store(true, Ordering::Relaxed);
            });
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
            for _ in 0..6 {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if done_rx.recv_timeout(left).is_err() {
                    // Straight to stderr: the test harness's capture is
                    // lost with the abort.
                    let _ = writeln!(
                        std::io::stderr(),
                        "stuck after {} checkpoints ({} B in the log of {WAL_BYTES})",
                        checkpoints.load(Ordering::Relaxed),
                        store.wal.written()
                    );
                    std::process::abort();
                }
            }
        });
        catch_up_and_check(&store);
    }

    #[test]
    fn counts_and_the_limit_check_see_a_change_sled_has_not_got() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        enqueue(&store, 1, 1);
        store.settle().unwrap();
        let tight = |capacity, per_user| EnqueueLimits {
            per_user_active: per_user,
            queue_capacity: capacity,
            ..LOOSE
        };
        assert_eq!(store.counts().unwrap().queued, 1);
        assert_eq!(store.would_refuse(1, tight(3, 2), 2_000).unwrap(), None);
        // Queued changes say there are now 3 queued jobs, 2 of them user 1's.
        let queued = keys::count_key(JobState::Queued);
        store
            .wal
            .hold(META_TREE, &queued, Some(&3u64.to_be_bytes()));
        let user = UserRecord {
            active: 2,
            queued: 2,
            recent: vec![1_000, 1_000],
            last_served: 0,
        };
        let user = codec::encode(&user).unwrap();
        store
            .wal
            .hold(tree_number("users") as u8, &1u64.to_be_bytes(), Some(&user));
        assert_eq!(store.counts().unwrap().queued, 3);
        assert_eq!(
            store.would_refuse(2, tight(3, 2), 2_000).unwrap(),
            Some(Refusal::QueueFull { capacity: 3 })
        );
        assert_eq!(
            store.would_refuse(1, tight(4, 2), 2_000).unwrap(),
            Some(Refusal::UserActive { limit: 2 })
        );
    }
}
