//! Key layouts of the sled trees. All integers are big-endian so that sled's
//! byte order is numeric order, and job ids are UUIDv7 so id order is age.

use crate::job::{JobId, JobState, Millis};

pub const ID_LEN: usize = 16;

/// `by_state`: `[state][job id]` -> user id (8 bytes), for every job in a
/// state [`indexed_by_state`]. The user id lets a corrupt record be unlinked
/// from the per-user trees without decoding it.
pub fn state_key(state: JobState, id: JobId) -> [u8; 1 + ID_LEN] {
    let mut k = [0u8; 1 + ID_LEN];
    k[0] = state.as_u8();
    k[1..].copy_from_slice(id.as_bytes());
    k
}

/// Whether jobs in `state` have a `by_state` entry: all but `done`.
///
/// Done jobs are nearly all of a store, and nothing asks for them by state
/// but an admin's list and retention, which walk `jobs` in id order instead
/// (nearly every record they meet is done). Their entries cost 173 B of
/// sled's disk per job at 100,000 jobs (`benches/README.md`). A store
/// written before schema 4 may still hold some: they are removed with their
/// job, and nothing reads them.
pub fn indexed_by_state(state: JobState) -> bool {
    state != JobState::Done
}

/// `by_user`: `[user][job id]` -> empty.
pub fn user_key(user: u64, id: JobId) -> [u8; 8 + ID_LEN] {
    let mut k = [0u8; 8 + ID_LEN];
    k[..8].copy_from_slice(&user.to_be_bytes());
    k[8..].copy_from_slice(id.as_bytes());
    k
}

/// `ready`: `[user][next attempt][job id]` -> empty. Queued jobs per user in
/// the order they may run.
pub fn ready_key(user: u64, next: Millis, id: JobId) -> [u8; 16 + ID_LEN] {
    let mut k = [0u8; 16 + ID_LEN];
    k[..8].copy_from_slice(&user.to_be_bytes());
    k[8..16].copy_from_slice(&next.to_be_bytes());
    k[16..].copy_from_slice(id.as_bytes());
    k
}

/// `turns`: `[last served][user]` -> empty. Users with queued jobs, least
/// recently served first: the fair scheduler walks this.
pub fn turn_key(last_served: Millis, user: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&last_served.to_be_bytes());
    k[8..].copy_from_slice(&user.to_be_bytes());
    k
}

/// `requests`: `[chat][request message][url]` -> job id. One link of one
/// message is one job, however often the update arrives. (Not the options:
/// the user may still change them after the job exists.)
pub fn request_key(job: &crate::job::Job) -> Vec<u8> {
    let mut k = Vec::with_capacity(12 + job.url.len());
    k.extend_from_slice(&job.chat_id.to_be_bytes());
    k.extend_from_slice(&job.request_msg_id.to_be_bytes());
    k.extend_from_slice(job.url.as_bytes());
    k
}

pub fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_be_bytes)
}

/// `meta` keys.
pub const META_SCHEMA: &[u8] = b"schema_version";
/// The sequence number of the last job transaction (8 bytes), written by
/// that transaction: how far the store's log is already in sled.
pub const META_WAL_SEQ: &[u8] = b"wal_seq";

pub fn count_key(state: JobState) -> [u8; 6] {
    let mut k = *b"count\0";
    k[5] = state.as_u8();
    k
}

/// `meta`: `fin\0[state][minute]` -> count of jobs that entered `state`
/// (done or failed) in that minute. Read for "done and failed in the last
/// hour" without scanning jobs; old minutes are pruned with retention.
pub fn finished_key(state: JobState, minute: u64) -> [u8; 13] {
    let mut k = [0u8; 13];
    k[..4].copy_from_slice(b"fin\0");
    k[4] = state.as_u8();
    k[5..].copy_from_slice(&minute.to_be_bytes());
    k
}

/// `shorts`: `[last 4 bytes of the id][id]` -> empty. Finds a job by the
/// short id users see (its last 8 hex digits).
pub fn short_key(id: JobId) -> [u8; 4 + ID_LEN] {
    let mut k = [0u8; 4 + ID_LEN];
    k[..4].copy_from_slice(&id.as_bytes()[12..]);
    k[4..].copy_from_slice(id.as_bytes());
    k
}
