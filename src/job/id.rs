//! [`JobId`]: a UUIDv7, and the short form users see.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::Millis;

/// A job id: a UUIDv7, so ids sort by creation time and sled keys sort by age.
///
/// Made by [`JobId::at`]: the timestamp, then a counter of this process
/// (ids of the same millisecond sort in the order they were made), then the
/// short id users see ([`JobId::short`]): the minute of creation and 16
/// random bits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct JobId(pub Uuid);

/// Bits of the per-process counter in an id, after its timestamp (what
/// RFC 9562 allows a v7 counter: `rand_a` and the top of `rand_b`).
const COUNTER_BITS: u8 = 42;

/// The per-process counter: starts at a random point in the lower half of
/// its range, so that two processes (nodes sharing a PostgreSQL database)
/// do not count through the same values, and never wraps in practice.
fn next_count() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static COUNTER: OnceLock<AtomicU64> = OnceLock::new();
    let c = COUNTER.get_or_init(|| AtomicU64::new(rand::random::<u64>() >> (65 - COUNTER_BITS)));
    c.fetch_add(1, Ordering::Relaxed) & ((1 << COUNTER_BITS) - 1)
}

impl JobId {
    /// A new time-ordered id, at the current time.
    pub fn new() -> Self {
        Self::at(super::now_ms())
    }

    /// A new id created at `ms` (the store's clock, so that the id's time is
    /// the job's `created_at`).
    ///
    /// Its last 8 hex digits, the short id, are the minute of `ms` (16
    /// bits, wrapping every 45 days) and 16 random bits. Why not all random:
    /// the store indexes short ids (sled's `shorts` tree, keyed by them), and
    /// random keys make every new job rewrite a page somewhere in the middle
    /// of a large tree, whose old versions then fill sled's log segments
    /// for as long as the tree lives. Keys that start with the minute are
    /// written next to each other, as the time-ordered ids are. At 100,000
    /// jobs that was 179 B of disk per job (`benches/README.md`). A
    /// short id still takes a guess among 65,536 for each job of a minute,
    /// as one among 4 billion did among the million jobs of a month.
    pub fn at(ms: Millis) -> Self {
        let ts = uuid::Timestamp::from_unix_time(
            ms / 1000,
            (ms % 1000) as u32 * 1_000_000,
            u128::from(next_count()),
            COUNTER_BITS,
        );
        let mut b = *Uuid::new_v7(ts).as_bytes();
        // Bytes 12-15 are random in a v7 id with a 42-bit counter.
        let minute = ((ms / 60_000) as u16).to_be_bytes();
        b[12..14].copy_from_slice(&minute);
        JobId(Uuid::from_bytes(b))
    }

    /// The 16 bytes used as the key in every tree (big-endian, so byte order is
    /// time order).
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    pub fn from_slice(b: &[u8]) -> Option<Self> {
        Uuid::from_slice(b).ok().map(JobId)
    }

    /// What users see: the last 8 hex digits (the minute the job was
    /// created and 16 random bits, see [`JobId::at`]); the store keeps an
    /// index of them, and a rare collision is reported as ambiguous instead
    /// of guessed.
    pub fn short(&self) -> String {
        self.0.simple().to_string()[24..].to_string()
    }

    /// Creation time encoded in the UUIDv7.
    pub fn created_ms(&self) -> Millis {
        let b = self.0.as_bytes();
        let mut ms = [0u8; 8];
        ms[2..].copy_from_slice(&b[..6]);
        u64::from_be_bytes(ms)
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.simple())
    }
}

impl fmt::Debug for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JobId({})", self.0.simple())
    }
}

impl FromStr for JobId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(JobId)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-05 01:02:03.456 UTC.
    const T: Millis = 1_764_896_523_456;

    #[test]
    fn an_id_made_at_a_time_carries_that_time_as_a_v7_uuid() {
        let id = JobId::at(T);
        assert_eq!(id.created_ms(), T);
        assert_eq!(id.0.get_version_num(), 7);
        assert_eq!(id.0.get_variant(), uuid::Variant::RFC4122);
    }

    #[test]
    fn ids_of_one_millisecond_sort_in_the_order_they_were_made() {
        let ids: Vec<JobId> = (0..10_000).map(|_| JobId::at(T)).collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "ids of the same millisecond out of order"
        );
        // A later millisecond sorts after, whatever the counter says.
        assert!(JobId::at(T + 1) > *ids.last().unwrap());
        assert!(JobId::at(T - 1) < ids[0]);
    }

    #[test]
    fn a_short_id_starts_with_the_minute_so_the_index_grows_at_its_end() {
        let minute = T / 60_000;
        let id = JobId::at(T);
        assert_eq!(id.short().len(), 8);
        assert_eq!(&id.short()[..4], format!("{:04x}", minute as u16));
        // Jobs of later minutes sort after in the shorts index (keyed by the
        // id's last 4 bytes, then the id), as they do in every other tree:
        // sled writes them next to each other.
        let keys: Vec<[u8; 4]> = (0..200)
            .map(|m| {
                JobId::at(T + m * 60_000).as_bytes()[12..]
                    .try_into()
                    .unwrap()
            })
            .collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        // The last 4 digits are random: a minute's jobs do not share them.
        let lows: std::collections::HashSet<String> = (0..64)
            .map(|_| JobId::at(T).short()[4..].to_string())
            .collect();
        assert!(
            lows.len() > 48,
            "the random half of short ids repeats: {lows:?}"
        );
    }
}
