//! Process-lifetime counters of the pipeline (since start, as Prometheus
//! expects). The `/metrics` endpoint in `ops::http` renders them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::job::{Job, JobState};

/// Upper bounds (seconds) of the stage-duration histogram buckets.
pub const BUCKETS: [f64; 12] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

#[derive(Default, Clone)]
pub struct Histogram {
    pub counts: [u64; BUCKETS.len()],
    pub sum: f64,
    pub count: u64,
}

/// Process-lifetime counters, updated by workers and recovery.
#[derive(Default)]
pub struct Metrics {
    pub(crate) transitions: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    pub(crate) rescues: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) downloaded_bytes: AtomicU64,
    pub(crate) uploaded_bytes: AtomicU64,
    pub(crate) stages: Mutex<BTreeMap<&'static str, Histogram>>,
}

impl Metrics {
    pub fn transition(&self, from: JobState, to: JobState) {
        *self
            .transitions
            .lock()
            .unwrap()
            .entry((from.name(), to.name()))
            .or_default() += 1;
    }

    pub fn rescues(&self, n: u64) {
        self.rescues.fetch_add(n, Ordering::Relaxed);
    }

    pub fn retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    pub fn downloaded(&self, bytes: u64) {
        self.downloaded_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn uploaded(&self, bytes: u64) {
        self.uploaded_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// How long a job spent in `stage`.
    pub fn stage_duration(&self, stage: JobState, secs: f64) {
        let mut stages = self.stages.lock().unwrap();
        let h = stages.entry(stage.name()).or_default();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
        h.sum += secs;
        h.count += 1;
    }

    /// Record what a change from `old` to `new` means: a transition, the time
    /// spent in the stage it left, a retry, bytes moved.
    pub fn record(&self, old: &Job, new: &Job) {
        if old.state == new.state {
            return;
        }
        self.transition(old.state, new.state);
        if let Some((_, entered)) = old.history.last() {
            self.stage_duration(
                old.state,
                new.updated_at.saturating_sub(*entered) as f64 / 1000.0,
            );
        }
        if new.state == JobState::Queued && new.attempts > old.attempts {
            self.retry();
        }
        if new.rescues > old.rescues {
            self.rescues(u64::from(new.rescues - old.rescues));
        }
        let size = new.file_size.unwrap_or(0);
        match (old.state, new.state) {
            (JobState::Downloading, JobState::Uploading) if new.file_path.is_some() => {
                self.downloaded(size)
            }
            (JobState::Uploading, JobState::Cleaning)
                if new.delivery.is_some() && old.file_path.is_some() =>
            {
                self.uploaded(size)
            }
            _ => {}
        }
    }
}
