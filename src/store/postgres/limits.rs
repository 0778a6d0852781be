//! Admitting one more active job of a user against [`EnqueueLimits`], inside
//! the transaction that makes it active (the rule of `sled/ops.rs`).

use deadpool_postgres::GenericClient;
use deadpool_postgres::Transaction;

use super::rows::{int_db, int_of, recent_of, state_db, user_db};
use super::tx::{Cached, Fail};
use crate::job::{JobState, Millis};
use crate::store::{EnqueueLimits, StoreError, UserRecord};

/// The advisory lock every admission holds until its commit ("tgdladmt").
const ADMISSION_LOCK: i64 = 0x7467_646c_6164_6d74;

/// Lock `user`'s row (created if missing) for the rest of the transaction
/// and read it. Concurrent enqueues of one user wait here for each other.
pub(super) async fn lock_user(tx: &Transaction<'_>, user: u64) -> Result<UserRecord, Fail> {
    tx.exec(
        "INSERT INTO users (user_id) VALUES ($1) ON CONFLICT DO NOTHING",
        &[&user_db(user)],
    )
    .await?;
    let row = tx
        .q1(
            "SELECT active, queued, recent, last_served FROM users WHERE user_id = $1 FOR UPDATE",
            &[&user_db(user)],
        )
        .await?;
    Ok(user_record(&row))
}

/// A user's row without locking it (absent: a user with no history).
pub(super) async fn read_user(c: &impl GenericClient, user: u64) -> Result<UserRecord, Fail> {
    let row = c
        .qopt(
            "SELECT active, queued, recent, last_served FROM users WHERE user_id = $1",
            &[&user_db(user)],
        )
        .await?;
    Ok(row.map(|r| user_record(&r)).unwrap_or_default())
}

fn user_record(row: &tokio_postgres::Row) -> UserRecord {
    UserRecord {
        active: u32::try_from(row.get::<_, i32>(0)).unwrap_or(0),
        queued: u32::try_from(row.get::<_, i32>(1)).unwrap_or(0),
        recent: recent_of(row.get(2)),
        last_served: int_of(row.get(3)),
    }
}

/// Admit one more active job of `user` (a new one, or a failed one
/// reopened): see [`UserRecord::admit`]. Admitted, it counts in the user's hourly
/// window. Locks the user's row, then the active counters, so the numbers
/// checked hold until commit (see the module documentation of `postgres`).
pub(super) async fn admit(
    tx: &Transaction<'_>,
    user: u64,
    limits: EnqueueLimits,
    now: Millis,
) -> Result<(), Fail> {
    let mut rec = lock_user(tx, user).await?;
    let active_states: Vec<i16> = JobState::ALL
        .into_iter()
        .filter(|s| s.is_active())
        .map(state_db)
        .collect();
    // Only an admission (enqueue, reopen) makes a job active, and every
    // admission takes this lock: no other can pass between this read and
    // this commit. Whatever else runs meanwhile only moves jobs between
    // active states or ends them, which leaves the committed sum read here
    // at or above the truth: the capacity is never exceeded, across nodes.
    tx.exec("SELECT pg_advisory_xact_lock($1)", &[&ADMISSION_LOCK])
        .await?;
    let active: u64 = tx
        .q1(
            "SELECT coalesce(sum(n), 0)::bigint FROM state_counts WHERE state = ANY($1)",
            &[&active_states],
        )
        .await
        .map(|r| int_of(r.get(0)))?;
    if let Err(r) = rec.admit(active, limits, now) {
        return Err(Fail::Store(StoreError::Refused(r)));
    }
    let recent: Vec<i64> = rec.recent.iter().map(|t| int_db(*t)).collect();
    tx.exec(
        "UPDATE users SET recent = $2 WHERE user_id = $1",
        &[&user_db(user), &recent],
    )
    .await?;
    Ok(())
}
