//! [`apply`]: the one place that derives every index, counter, cache entry
//! and per-user record from a job's before and after images.

use sled::transaction::ConflictableTransactionError as TxError;

use super::keys;
use super::tx::{add_count, get_user, put_user, Tx, TxResult};
use crate::job::{Job, JobState, Millis};
use crate::store::codec;
use crate::store::CachedMedia;

/// Bring every derived tree in line with a job going from `old` to `new`
/// (either may be absent: creation and deletion). `served_at` marks a claim,
/// which moves the user to the back of the fair-scheduling turn list.
pub(super) fn apply(
    tx: &Tx,
    old: Option<&Job>,
    new: Option<&Job>,
    served_at: Option<Millis>,
) -> TxResult<()> {
    let job = new.or(old).expect("apply needs a job");
    let (id, user) = (job.id, job.user_id);
    let old_state = old.map(|j| j.state);
    let new_state = new.map(|j| j.state);

    // Record.
    match new {
        Some(j) => {
            let b = codec::encode(j).map_err(|e| TxError::Abort(e.into()))?;
            tx.jobs.insert(id.as_bytes(), b)?;
        }
        None => {
            tx.jobs.remove(id.as_bytes())?;
        }
    }

    // State index and counters.
    if old_state != new_state {
        if let Some(s) = old_state {
            tx.by_state.remove(keys::state_key(s, id))?;
            add_count(tx, s, -1)?;
        }
        if let Some(s) = new_state {
            if keys::indexed_by_state(s) {
                tx.by_state
                    .insert(keys::state_key(s, id), &user.to_be_bytes())?;
            }
            add_count(tx, s, 1)?;
        }
    }

    // Finished-per-minute counters for the health report.
    if let Some(s) = new_state.filter(|s| s.is_finished() && old_state != new_state) {
        let k = keys::finished_key(s, job.updated_at / 60_000);
        let n = tx
            .meta
            .get(k)?
            .and_then(|v| keys::u64_at(&v, 0))
            .unwrap_or(0);
        tx.meta.insert(k, &(n + 1).to_be_bytes())?;
    }

    // Per-user index, and the request index that makes intake idempotent.
    match (old.is_some(), new.is_some()) {
        (false, true) => {
            tx.by_user.insert(keys::user_key(user, id), &[])?;
            tx.requests.insert(keys::request_key(job), id.as_bytes())?;
            tx.shorts.insert(keys::short_key(id), &[])?;
        }
        (true, false) => {
            tx.by_user.remove(keys::user_key(user, id))?;
            tx.shorts.remove(keys::short_key(id))?;
            let k = keys::request_key(job);
            // Only unlink the request if it still points at this job.
            if tx.requests.get(&k)?.as_deref() == Some(id.as_bytes().as_slice()) {
                tx.requests.remove(k)?;
            }
        }
        _ => {}
    }

    // Scheduler queue: a queued job sits in `ready` under its next attempt.
    if let Some(o) = old.filter(|j| j.state == JobState::Queued) {
        tx.ready
            .remove(keys::ready_key(user, o.next_attempt_at, id))?;
    }
    if let Some(n) = new.filter(|j| j.state == JobState::Queued) {
        tx.ready
            .insert(keys::ready_key(user, n.next_attempt_at, id), &[])?;
    }

    // User bookkeeping and the turn list.
    let active = |s: Option<JobState>| s.is_some_and(|s| s.is_active()) as i64;
    let queued = |s: Option<JobState>| (s == Some(JobState::Queued)) as i64;
    let d_active = active(new_state) - active(old_state);
    let d_queued = queued(new_state) - queued(old_state);
    if d_active != 0 || d_queued != 0 || served_at.is_some() {
        let mut rec = get_user(tx, user)?;
        let had_turn = rec.queued > 0;
        let old_turn = keys::turn_key(rec.last_served, user);
        rec.active = rec.active.saturating_add_signed(d_active as i32);
        rec.queued = rec.queued.saturating_add_signed(d_queued as i32);
        if let Some(at) = served_at {
            rec.last_served = rec.last_served.max(at);
        }
        let new_turn = keys::turn_key(rec.last_served, user);
        if had_turn {
            tx.turns.remove(old_turn)?;
        }
        if rec.queued > 0 {
            tx.turns.insert(new_turn, &[])?;
        }
        put_user(tx, user, &rec)?;
    }

    // Media cache: written in the same transaction that leaves `uploading`
    // with a delivery, so a delivered file is never forgotten.
    if let (Some(o), Some(n)) = (old, new) {
        if o.state == JobState::Uploading && n.state != JobState::Uploading {
            if let Some(d) = &n.delivery {
                let c = CachedMedia {
                    file_id: d.file_id.clone(),
                    sent_as: d.sent_as,
                    title: n.title.clone(),
                    file_size: n.file_size,
                    cached_at: n.updated_at,
                };
                let b = codec::encode(&c).map_err(|e| TxError::Abort(e.into()))?;
                tx.cache.insert(n.cache_key().as_bytes(), b)?;
            }
        }
    }
    Ok(())
}
