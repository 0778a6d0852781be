//! Records that fail to decode are moved to the `quarantine` table (kept for
//! an operator) instead of crashing a read, as in sled's `repair.rs`.

use deadpool_postgres::Transaction;

use super::apply::{bookkeep, shard};
use super::rows::{int_db, state_of, user_db, user_of};
use super::tx::{pg, Cached, Fail};
use super::PgStore;
use crate::job::{now_ms, JobId};
use crate::store::codec;
use crate::store::StoreError;

/// A non-job record: which table, under which key.
#[derive(Clone)]
pub(super) enum Record {
    Cache(String),
    Settings(u64),
}

impl PgStore {
    /// Move the record of job `id` to the quarantine if it still fails to
    /// decode, and unlink it from the counters and its user's counts, in one
    /// transaction. What the record said is unknown, so its columns (state,
    /// user) say it instead.
    pub(super) async fn quarantine_job(&self, id: JobId, reason: &str) -> Result<(), StoreError> {
        tracing::error!(job = %id, reason, "corrupt job record, quarantining");
        let reason = reason.to_string();
        self.transact_raw(move |tx| {
            let reason = reason.clone();
            Box::pin(async move {
                let Some(row) = tx
                    .qopt(
                        "SELECT user_id, state, record FROM jobs WHERE id = $1 FOR UPDATE",
                        &[&id.0],
                    )
                    .await?
                else {
                    return Ok(());
                };
                let bytes: Vec<u8> = row.get(2);
                if codec::decode::<crate::job::Job>(&bytes).is_ok() {
                    return Ok(()); // rewritten since: nothing to do
                }
                insert(tx, "jobs", id.as_bytes(), &bytes, &reason).await?;
                tx.exec("DELETE FROM jobs WHERE id = $1", &[&id.0]).await?;
                let state = state_of(row.get(1));
                bookkeep(tx, user_of(row.get(0)), shard(id), state, None, None).await?;
                Ok(())
            })
        })
        .await
    }

    /// Decode a cache or settings record; one that does not decode is moved
    /// to the quarantine and reads as absent (it costs a download or the
    /// user's defaults, nothing more).
    pub(super) async fn decode_or_quarantine<T: codec::Record>(
        &self,
        at: Record,
        bytes: Vec<u8>,
    ) -> Result<Option<T>, StoreError> {
        let reason = match codec::decode::<T>(&bytes) {
            Ok(v) => return Ok(Some(v)),
            Err(e) => e.to_string(),
        };
        // Quarantine keys as sled writes them: the cache key's bytes, the
        // user id big-endian.
        let (name, qkey) = match &at {
            Record::Cache(key) => ("cache", key.as_bytes().to_vec()),
            Record::Settings(user) => ("settings", user.to_be_bytes().to_vec()),
        };
        tracing::error!(table = name, key = ?qkey, reason, "corrupt record, quarantining");
        self.transact_raw(move |tx| {
            let (at, qkey, bytes, reason) =
                (at.clone(), qkey.clone(), bytes.clone(), reason.clone());
            Box::pin(async move {
                // Only the bytes that failed: a good record written since
                // stays.
                let n = match &at {
                    Record::Cache(key) => {
                        tx.exec(
                            "DELETE FROM cache WHERE key = $1 AND entry = $2",
                            &[key, &bytes],
                        )
                        .await?
                    }
                    Record::Settings(user) => {
                        tx.exec(
                            "DELETE FROM settings WHERE user_id = $1 AND entry = $2",
                            &[&user_db(*user), &bytes],
                        )
                        .await?
                    }
                };
                if n > 0 {
                    insert(tx, name, &qkey, &bytes, &reason).await?;
                }
                Ok(())
            })
        })
        .await?;
        Ok(None)
    }

    /// Every quarantined record, oldest first.
    pub(super) async fn quarantine_list(
        &self,
    ) -> Result<Vec<crate::store::QuarantineEntry>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .q(
                "SELECT tree, key, bytes, reason, at FROM quarantine ORDER BY seq",
                &[],
            )
            .await
            .map_err(pg)?;
        Ok(rows
            .iter()
            .map(|r| crate::store::QuarantineEntry {
                tree: r.get(0),
                key: r.get(1),
                bytes: r.get(2),
                reason: r.get(3),
                at: super::rows::int_of(r.get(4)),
            })
            .collect())
    }
}

async fn insert(
    tx: &Transaction<'_>,
    tree: &str,
    key: &[u8],
    bytes: &[u8],
    reason: &str,
) -> Result<(), Fail> {
    tx.exec(
        "INSERT INTO quarantine (tree, key, bytes, reason, at) VALUES ($1, $2, $3, $4, $5)",
        &[&tree, &key, &bytes, &reason, &int_db(now_ms())],
    )
    .await?;
    Ok(())
}
