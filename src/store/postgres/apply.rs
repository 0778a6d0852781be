//! [`apply`]: the one place that derives every column, counter, cache entry
//! and per-user row from a job's before and after images (the PostgreSQL
//! twin of `sled/apply.rs`).

use deadpool_postgres::Transaction;

use super::rows::{int_db, state_db, user_db};
use super::tx::{Cached, Fail};
use crate::job::{Job, JobId, JobState, Millis};
use crate::store::codec;
use crate::store::CachedMedia;

/// Bring every derived row in line with a job going from `old` to `new`
/// (either may be absent: creation and deletion). `served_at` marks a
/// claim, which moves the user to the back of the fair scheduler's turns.
///
/// Writes in the lock order of the module documentation: the job row, the
/// user row, the counters in ascending state, then per-minute and cache rows.
/// A creation whose request already has a job fails with [`Fail::Raced`].
pub(super) async fn apply(
    tx: &Transaction<'_>,
    old: Option<&Job>,
    new: Option<&Job>,
    served_at: Option<Millis>,
) -> Result<(), Fail> {
    let Some(job) = new.or(old) else {
        return Ok(());
    };
    let old_state = old.map(|j| j.state);
    let new_state = new.map(|j| j.state);

    // Record and its columns. The request columns (chat, message, url) are
    // the dedupe key, fixed at creation like sled's request index.
    match (old, new) {
        (None, Some(j)) => {
            let n = tx
                .exec(
                    "INSERT INTO jobs (id, short, user_id, chat_id, request_msg_id, url, state,
                                       next_attempt_at, updated_at, lease_owner, lease_until, record)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                     ON CONFLICT DO NOTHING",
                    &[
                        &j.id.0,
                        &j.id.short(),
                        &user_db(j.user_id),
                        &j.chat_id,
                        &j.request_msg_id,
                        &j.url,
                        &state_db(j.state),
                        &int_db(j.next_attempt_at),
                        &int_db(j.updated_at),
                        &j.lease.map(|l| l.owner),
                        &j.lease.map(|l| int_db(l.until)),
                        &codec::encode(j)?,
                    ],
                )
                .await?;
            if n == 0 {
                return Err(Fail::Raced);
            }
        }
        (Some(_), Some(j)) => {
            tx.exec(
                "UPDATE jobs SET state = $2, next_attempt_at = $3, updated_at = $4,
                                 lease_owner = $5, lease_until = $6, record = $7
                 WHERE id = $1",
                &[
                    &j.id.0,
                    &state_db(j.state),
                    &int_db(j.next_attempt_at),
                    &int_db(j.updated_at),
                    &j.lease.map(|l| l.owner),
                    &j.lease.map(|l| int_db(l.until)),
                    &codec::encode(j)?,
                ],
            )
            .await?;
        }
        (Some(j), None) => {
            tx.exec("DELETE FROM jobs WHERE id = $1", &[&j.id.0])
                .await?;
        }
        (None, None) => {}
    }

    bookkeep(
        tx,
        job.user_id,
        shard(job.id),
        old_state,
        new_state,
        served_at,
    )
    .await?;

    // A job queued (new, requeued, retried, or due sooner): idle workers of
    // every node hear it at this transaction's commit.
    if let Some(n) = new.filter(|n| n.state == JobState::Queued) {
        let sooner = old
            .is_none_or(|o| o.state != JobState::Queued || n.next_attempt_at < o.next_attempt_at);
        if sooner {
            tx.exec("SELECT pg_notify($1, '')", &[&super::listen::JOBS_CHANNEL])
                .await?;
        }
    }

    // Finished-per-minute counters for the health report.
    if let Some(s) = new_state.filter(|s| s.is_finished() && old_state != new_state) {
        tx.exec(
            "INSERT INTO finished_minutes (state, minute, n) VALUES ($1, $2, 1)
             ON CONFLICT (state, minute) DO UPDATE SET n = finished_minutes.n + 1",
            &[&state_db(s), &int_db(job.updated_at / 60_000)],
        )
        .await?;
    }

    // Media cache: written in the same transaction that leaves `uploading`
    // with a delivery, so a delivered file is never forgotten.
    if let (Some(o), Some(n)) = (old, new) {
        if o.state == JobState::Uploading && n.state != JobState::Uploading {
            if let Some(d) = &n.delivery {
                let entry = CachedMedia {
                    file_id: d.file_id.clone(),
                    sent_as: d.sent_as,
                    title: n.title.clone(),
                    file_size: n.file_size,
                    cached_at: n.updated_at,
                };
                tx.exec(
                    "INSERT INTO cache (key, entry) VALUES ($1, $2)
                     ON CONFLICT (key) DO UPDATE SET entry = EXCLUDED.entry",
                    &[&n.cache_key(), &codec::encode(&entry)?],
                )
                .await?;
            }
        }
    }
    Ok(())
}

/// The counter shard of a job: from the random end of its id, so a job's
/// increments and decrements of a state meet in one row.
pub(super) fn shard(id: JobId) -> i16 {
    i16::from(id.as_bytes()[15] % 16)
}

/// The user's counts and turn, and the state counters, for a job of `user`
/// going from `old` to `new` state (absent: created or removed). Shared with
/// the quarantine, which removes a job whose record cannot be read.
pub(super) async fn bookkeep(
    tx: &Transaction<'_>,
    user: u64,
    shard: i16,
    old: Option<JobState>,
    new: Option<JobState>,
    served_at: Option<Millis>,
) -> Result<(), Fail> {
    let active = |s: Option<JobState>| i32::from(s.is_some_and(|s| s.is_active()));
    let queued = |s: Option<JobState>| i32::from(s == Some(JobState::Queued));
    let d_active = active(new) - active(old);
    let d_queued = queued(new) - queued(old);
    if d_active != 0 || d_queued != 0 || served_at.is_some() {
        // Counts never go below zero (as sled's saturating arithmetic);
        // `last_served` only moves forward.
        tx.exec(
            "INSERT INTO users (user_id, active, queued, last_served)
             VALUES ($1, GREATEST($2::int, 0), GREATEST($3::int, 0), COALESCE($4::bigint, 0))
             ON CONFLICT (user_id) DO UPDATE SET
                 active = GREATEST(users.active + $2::int, 0),
                 queued = GREATEST(users.queued + $3::int, 0),
                 last_served = GREATEST(users.last_served, COALESCE($4::bigint, 0))",
            &[&user_db(user), &d_active, &d_queued, &served_at.map(int_db)],
        )
        .await?;
    }
    if old != new {
        // Ascending state: the lock order.
        let mut deltas: Vec<(JobState, i64)> = Vec::with_capacity(2);
        deltas.extend(old.map(|s| (s, -1)));
        deltas.extend(new.map(|s| (s, 1)));
        deltas.sort_by_key(|d| d.0);
        for (s, d) in deltas {
            tx.exec(
                "UPDATE state_counts SET n = GREATEST(n + $2, 0) WHERE state = $1 AND shard = $3",
                &[&state_db(s), &d, &shard],
            )
            .await?;
        }
    }
    Ok(())
}
