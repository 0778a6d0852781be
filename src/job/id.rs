//! [`JobId`]: a UUIDv7, and the short form users see.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::Millis;

/// A job id: a UUIDv7, so ids sort by creation time and sled keys sort by age.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct JobId(pub Uuid);

impl JobId {
    /// A new time-ordered id.
    pub fn new() -> Self {
        JobId(Uuid::now_v7())
    }

    /// The 16 bytes used as the key in every tree (big-endian, so byte order is
    /// time order).
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    pub fn from_slice(b: &[u8]) -> Option<Self> {
        Uuid::from_slice(b).ok().map(JobId)
    }

    /// What users see: the last 8 hex digits. They come from the random
    /// part of the v7 id (the first digits are the timestamp, shared by every
    /// job of the same minute); the store keeps an index of them, and a
    /// rare collision is reported as ambiguous instead of guessed.
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
