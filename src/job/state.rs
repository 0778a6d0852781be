//! [`JobState`] and the one table of legal transitions.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a job is in its life. Stored as one byte in index keys, so the
/// discriminants are part of the on-disk format: never renumber them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum JobState {
    Queued = 1,
    Downloading = 2,
    Uploading = 3,
    Cleaning = 4,
    Done = 5,
    Failed = 6,
}

impl JobState {
    pub const ALL: [JobState; 6] = [
        JobState::Queued,
        JobState::Downloading,
        JobState::Uploading,
        JobState::Cleaning,
        JobState::Done,
        JobState::Failed,
    ];

    /// States a job can be found in after a crash with work half done.
    pub const IN_FLIGHT: [JobState; 3] = [
        JobState::Downloading,
        JobState::Uploading,
        JobState::Cleaning,
    ];

    /// The one table of legal transitions (SPEC "The job").
    ///
    /// - `queued -> downloading`: a worker claimed it.
    /// - `queued -> cleaning`: cancelled or failed permanently before it ran;
    ///   cleaning still runs because a retried job may have partial files.
    /// - `downloading -> queued`: retryable error, rescue after a crash, or
    ///   shutdown; partial files are kept for resume.
    /// - `downloading -> uploading`, `uploading -> cleaning`: progress.
    /// - `uploading -> queued`: retryable upload error whose file is gone.
    /// - `downloading -> cleaning`: permanent failure or cancel.
    /// - `cleaning -> done | failed`: the outcome, after files are removed.
    /// - `failed -> queued`: `/retry` of a failed job.
    ///
    /// `done` is final. `failed` is final for the pipeline; only an explicit
    /// retry reopens it, and that is a new attempt series, not a resurrection.
    pub fn can_become(self, to: JobState) -> bool {
        use JobState::*;
        matches!(
            (self, to),
            (Queued, Downloading)
                | (Queued, Cleaning)
                | (Downloading, Queued)
                | (Downloading, Uploading)
                | (Downloading, Cleaning)
                | (Uploading, Queued)
                | (Uploading, Cleaning)
                | (Cleaning, Done)
                | (Cleaning, Failed)
                | (Failed, Queued)
        )
    }

    /// Terminal for the pipeline: no worker will touch the job again.
    pub fn is_finished(self) -> bool {
        matches!(self, JobState::Done | JobState::Failed)
    }

    /// Counts against the queue capacity and the per-user active limit.
    pub fn is_active(self) -> bool {
        !self.is_finished()
    }

    pub fn as_u8(self) -> u8 {
        self as u8
    }

    pub fn from_u8(b: u8) -> Option<Self> {
        JobState::ALL.into_iter().find(|s| *s as u8 == b)
    }

    pub fn name(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Downloading => "downloading",
            JobState::Uploading => "uploading",
            JobState::Cleaning => "cleaning",
            JobState::Done => "done",
            JobState::Failed => "failed",
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for JobState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|st| st.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!("unknown state '{s}' (expected queued, downloading, uploading, cleaning, done or failed)")
            })
    }
}

/// A transition the graph does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("illegal transition {from} -> {to}")]
pub struct IllegalTransition {
    pub from: JobState,
    pub to: JobState,
}
