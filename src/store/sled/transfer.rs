//! [`Transfer`] for [`SledStore`] (shared as `Arc<SledStore>`): export walks
//! the trees; import loads jobs through [`apply`] (so the indexes, counters
//! and user records are derived exactly as the store's own changes derive
//! them), a batch per transaction. The work is synchronous, as sled is, and
//! runs on tokio's blocking pool; an export streams its lines to the caller
//! through a bounded channel.

use std::sync::Arc;

use ::sled::Tree;
use async_trait::async_trait;

use super::apply::apply;
use super::keys;
use super::repair::qkey;
use super::tx::{get_user, put_user, TxResult};
use super::SledStore;
use crate::job::{now_ms, Job, JobState};
use crate::store::codec;
use crate::store::transfer::{
    CacheLine, FinishedLine, InboxLine, Line, QuarantineLine, SettingsLine, Sink, Transfer,
    TransferError, UserLine,
};
use crate::store::{
    CachedMedia, InvariantReport, JobStore, QuarantineEntry, StateCounts, StoreError, UserRecord,
};

/// Lines an export reads ahead of the writer.
const EXPORT_AHEAD: usize = 256;

impl SledStore {
    /// A record of `tree` that does not decode: exported as a quarantine line.
    fn undecodable(tree: &str, key: &[u8], bytes: &[u8], reason: String) -> Line {
        Line::Quarantine(QuarantineLine::from_entry(&QuarantineEntry {
            tree: tree.to_string(),
            key: key.to_vec(),
            bytes: bytes.to_vec(),
            reason: format!("undecodable at export: {reason}"),
            at: now_ms(),
        }))
    }

    fn export_users(&self, sink: &mut Sink) -> Result<(), TransferError> {
        let h = self.h()?;
        for kv in h.users().iter() {
            let (k, v) = kv.map_err(StoreError::from)?;
            let line = match (keys::u64_at(&k, 0), codec::decode::<UserRecord>(&v)) {
                (Some(user_id), Ok(r)) => Line::User(UserLine {
                    user_id,
                    recent: r.recent,
                    last_served: r.last_served,
                }),
                (_, Err(e)) => Self::undecodable("users", &k, &v, e.to_string()),
                (None, Ok(_)) => Self::undecodable("users", &k, &v, "bad key".into()),
            };
            sink(line)?;
        }
        Ok(())
    }

    fn export_jobs(&self, sink: &mut Sink) -> Result<(), TransferError> {
        let h = self.h()?;
        for kv in h.jobs().iter() {
            let (k, v) = kv.map_err(StoreError::from)?;
            sink(match codec::decode::<Job>(&v) {
                Ok(job) => Line::Job(Box::new(job)),
                Err(e) => Self::undecodable("jobs", &k, &v, e.to_string()),
            })?;
        }
        Ok(())
    }

    fn export_cache_and_settings(&self, sink: &mut Sink) -> Result<(), TransferError> {
        let h = self.h()?;
        for kv in h.cache().iter() {
            let (k, v) = kv.map_err(StoreError::from)?;
            let key = String::from_utf8(k.to_vec());
            sink(match (key, codec::decode::<CachedMedia>(&v)) {
                (Ok(key), Ok(media)) => Line::Cache(CacheLine { key, media }),
                (Err(e), _) => Self::undecodable("cache", &k, &v, e.to_string()),
                (_, Err(e)) => Self::undecodable("cache", &k, &v, e.to_string()),
            })?;
        }
        for kv in h.settings.iter() {
            let (k, v) = kv.map_err(StoreError::from)?;
            sink(match (keys::u64_at(&k, 0), codec::decode(&v)) {
                (Some(user_id), Ok(settings)) => Line::Settings(SettingsLine { user_id, settings }),
                (_, Err(e)) => Self::undecodable("settings", &k, &v, e.to_string()),
                (None, Ok(_)) => Self::undecodable("settings", &k, &v, "bad key".into()),
            })?;
        }
        Ok(())
    }

    fn export_rest(&self, sink: &mut Sink) -> Result<(), TransferError> {
        let h = self.h()?;
        for state in [JobState::Done, JobState::Failed] {
            let from = keys::finished_key(state, 0);
            let to = keys::finished_key(state, u64::MAX);
            for kv in h.meta().range(from..=to) {
                let (k, v) = kv.map_err(StoreError::from)?;
                if let (Some(minute), Some(count)) = (keys::u64_at(&k, 5), keys::u64_at(&v, 0)) {
                    sink(Line::Finished(FinishedLine {
                        state,
                        minute,
                        count,
                    }))?;
                }
            }
        }
        for (update_id, raw) in self.inbox_pending()? {
            sink(Line::Inbox(InboxLine::new(update_id, &raw)))?;
        }
        for kv in h.quarantine.iter() {
            let (k, v) = kv.map_err(StoreError::from)?;
            sink(match codec::decode::<QuarantineEntry>(&v) {
                Ok(e) => Line::Quarantine(QuarantineLine::from_entry(&e)),
                Err(e) => Self::undecodable("quarantine", &k, &v, e.to_string()),
            })?;
        }
        Ok(())
    }

    /// Lines that live outside the job transaction: settings, pending
    /// updates, quarantine. Written before the batch's transaction, synced
    /// with it.
    fn import_side_trees(&self, lines: &[Line]) -> Result<(), TransferError> {
        let h = self.h()?;
        for line in lines {
            match line {
                Line::Settings(s) => h.settings.insert(
                    s.user_id.to_be_bytes(),
                    codec::encode(&s.settings).map_err(StoreError::from)?,
                ),
                Line::Inbox(i) => {
                    let raw = i.raw().map_err(TransferError::Record)?;
                    h.inbox().insert(i.update_id.to_be_bytes(), raw)
                }
                Line::Quarantine(q) => {
                    let e = q.to_entry().map_err(TransferError::Record)?;
                    h.quarantine.insert(
                        qkey(&e.tree, &e.key),
                        codec::encode(&e).map_err(StoreError::from)?,
                    )
                }
                _ => continue,
            }
            .map_err(StoreError::from)?;
        }
        Ok(())
    }
}

/// A user's window and turn, keeping the active and queued counts the
/// jobs loaded so far gave the record (and moving its turn with it).
fn import_user(tx: &super::tx::Tx, u: &UserLine) -> TxResult<()> {
    let mut rec = get_user(tx, u.user_id)?;
    if rec.queued > 0 {
        tx.turns
            .remove(keys::turn_key(rec.last_served, u.user_id))?;
        tx.turns
            .insert(keys::turn_key(u.last_served, u.user_id), &[])?;
    }
    rec.recent = u.recent.clone();
    rec.last_served = u.last_served;
    put_user(tx, u.user_id, &rec)
}

/// The synchronous halves of [`Transfer`].
impl SledStore {
    fn export_all(&self, sink: &mut Sink) -> Result<(), TransferError> {
        self.settle()?;
        self.export_users(sink)?;
        self.export_jobs(sink)?;
        self.export_cache_and_settings(sink)?;
        self.export_rest(sink)
    }

    fn is_empty_now(&self) -> bool {
        // A store that cannot say what it holds is not known to be empty.
        if self.caught_up().is_err() {
            return false;
        }
        let Ok(h) = self.h() else {
            return false;
        };
        let empty = [
            h.jobs(),
            h.users(),
            h.cache(),
            &h.settings,
            h.inbox(),
            &h.quarantine,
        ]
        .into_iter()
        .all(Tree::is_empty);
        empty
    }

    fn import_batch(&self, lines: &[Line]) -> Result<(), TransferError> {
        self.import_side_trees(lines)?;
        let cache: Vec<(&str, Vec<u8>)> = lines
            .iter()
            .filter_map(|l| match l {
                Line::Cache(c) => Some(codec::encode(&c.media).map(|b| (c.key.as_str(), b))),
                _ => None,
            })
            .collect::<Result<_, _>>()
            .map_err(StoreError::from)?;
        // One transaction (and one sync) for the batch: jobs through `apply`,
        // then the user lines over the records those jobs derived.
        self.transact(|tx| {
            for line in lines {
                if let Line::Job(job) = line {
                    apply(tx, None, Some(job), None)?;
                }
            }
            for line in lines {
                if let Line::User(u) = line {
                    import_user(tx, u)?;
                }
            }
            for (key, bytes) in &cache {
                tx.cache.insert(key.as_bytes(), bytes.as_slice())?;
            }
            Ok(())
        })?;
        Ok(())
    }

    fn replace_finished(&self, counters: &[FinishedLine]) -> Result<(), TransferError> {
        let h = self.h()?;
        let mut batch = ::sled::Batch::default();
        for state in [JobState::Done, JobState::Failed] {
            let from = keys::finished_key(state, 0);
            let to = keys::finished_key(state, u64::MAX);
            for k in h.meta().range(from..=to).keys() {
                batch.remove(k.map_err(StoreError::from)?);
            }
        }
        for c in counters.iter().filter(|c| c.state.is_finished()) {
            batch.insert(
                &keys::finished_key(c.state, c.minute),
                &c.count.to_be_bytes(),
            );
        }
        h.meta().apply_batch(batch).map_err(StoreError::from)?;
        self.sync(&h)?;
        Ok(())
    }
}

/// Run `f` on the store on tokio's blocking pool (each sled write ends in
/// an fsync, which must not stall the runtime).
async fn blocking<T, F>(store: &Arc<SledStore>, f: F) -> T
where
    T: Send + 'static,
    F: FnOnce(&SledStore) -> T + Send + 'static,
{
    let store = store.clone();
    match tokio::task::spawn_blocking(move || f(&store)).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

#[async_trait]
impl Transfer for Arc<SledStore> {
    fn backend(&self) -> &'static str {
        "sled"
    }

    async fn export_lines(&self, sink: &mut Sink<'_>) -> Result<(), TransferError> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Line>(EXPORT_AHEAD);
        let store = self.clone();
        let reader = tokio::task::spawn_blocking(move || {
            store.export_all(&mut |line| {
                tx.blocking_send(line).map_err(|_| {
                    TransferError::Io(std::io::Error::other("the export's writer stopped"))
                })
            })
        });
        let mut written = Ok(());
        while let Some(line) = rx.recv().await {
            if let Err(e) = sink(line) {
                written = Err(e);
                break;
            }
        }
        // Closing the channel stops a reader still sending.
        drop(rx);
        let read = match reader.await {
            Ok(r) => r,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        written.and(read)
    }

    async fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(blocking(self, |s| s.is_empty_now()).await)
    }

    async fn import_lines(&self, lines: Vec<Line>) -> Result<(), TransferError> {
        blocking(self, move |s| s.import_batch(&lines)).await
    }

    async fn import_finished(&self, counters: Vec<FinishedLine>) -> Result<(), TransferError> {
        blocking(self, move |s| s.replace_finished(&counters)).await
    }

    async fn state_counts(&self) -> Result<StateCounts, StoreError> {
        blocking(self, JobStore::counts).await
    }

    async fn check(&self) -> Result<InvariantReport, StoreError> {
        blocking(self, JobStore::check_invariants).await
    }
}
