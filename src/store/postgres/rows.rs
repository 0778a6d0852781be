//! Column conversions and the readers shared by the operations.
//!
//! PostgreSQL has no unsigned integers. Ids (users) are stored bit for bit
//! (`as`, a bijection), so any u64 round-trips; times and counts saturate,
//! since no real one reaches 2^63.

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use uuid::Uuid;

use super::tx::{Cached, Fail};
use crate::job::{Job, JobId, JobState, Millis};
use crate::store::codec;
use crate::store::{StateCounts, StoreError};

pub(super) fn user_db(user: u64) -> i64 {
    user as i64
}

pub(super) fn user_of(v: i64) -> u64 {
    v as u64
}

/// A time or a count as stored.
pub(super) fn int_db(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A stored time or count; a negative one (never written) reads as 0.
pub(super) fn int_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

pub(super) fn limit_db(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

pub(super) fn state_db(s: JobState) -> i16 {
    i16::from(s.as_u8())
}

pub(super) fn state_of(v: i16) -> Option<JobState> {
    u8::try_from(v).ok().and_then(JobState::from_u8)
}

/// Decode a job record read under `id`; a failure is [`StoreError::Corrupt`].
pub(super) fn decode_job(id: Uuid, bytes: &[u8]) -> Result<Job, StoreError> {
    codec::decode::<Job>(bytes).map_err(|source| StoreError::Corrupt {
        id: JobId(id),
        source,
    })
}

/// The job of a row whose columns 0 and 1 are `id` and `record`.
pub(super) fn job_of(row: &Row) -> Result<Job, StoreError> {
    let id: Uuid = row.get(0);
    let bytes: &[u8] = row.get(1);
    decode_job(id, bytes)
}

/// Every state counter.
pub(super) async fn counts(c: &impl GenericClient) -> Result<StateCounts, Fail> {
    let mut out = StateCounts::default();
    let sql = "SELECT state, sum(n)::bigint FROM state_counts GROUP BY state";
    for row in c.q(sql, &[]).await? {
        if let Some(s) = state_of(row.get(0)) {
            *out.get_mut(s) = int_of(row.get(1));
        }
    }
    Ok(out)
}

/// Jobs queued: an enqueue's position.
pub(super) async fn queued(c: &impl GenericClient) -> Result<u64, Fail> {
    let row = c
        .qopt(
            "SELECT coalesce(sum(n), 0)::bigint FROM state_counts WHERE state = $1",
            &[&state_db(JobState::Queued)],
        )
        .await?;
    Ok(row.map_or(0, |r| int_of(r.get(0))))
}

/// Enqueue times as stored (`users.recent`).
pub(super) fn recent_of(v: Vec<i64>) -> Vec<Millis> {
    v.into_iter().map(int_of).collect()
}
