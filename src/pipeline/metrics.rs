//! Process-lifetime counters of the pipeline (since start, as Prometheus
//! expects). The `/metrics` endpoint in `ops::http` renders them.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

use crate::job::{Job, JobState};

/// Upper bounds (seconds) of the stage-duration histogram buckets.
pub const BUCKETS: [f64; 12] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// Labels of `tgdl_transitions_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Transition {
    pub from: &'static str,
    pub to: &'static str,
}

/// Labels of `tgdl_stage_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Stage {
    pub stage: &'static str,
}

fn stage_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// Process-lifetime counters, updated by workers and recovery. The handles
/// are shared (cloning one counts into the same value), so `ops::http`
/// registers clones of them for each scrape.
pub struct Metrics {
    pub transitions: Family<Transition, Counter>,
    pub rescues: Counter,
    pub retries: Counter,
    pub downloaded_bytes: Counter,
    pub uploaded_bytes: Counter,
    pub stages: Family<Stage, Histogram, fn() -> Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            transitions: Family::default(),
            rescues: Counter::default(),
            retries: Counter::default(),
            downloaded_bytes: Counter::default(),
            uploaded_bytes: Counter::default(),
            stages: Family::new_with_constructor(stage_histogram),
        }
    }
}

impl Metrics {
    pub fn transition(&self, from: JobState, to: JobState) {
        self.transitions
            .get_or_create(&Transition {
                from: from.name(),
                to: to.name(),
            })
            .inc();
    }

    pub fn rescues(&self, n: u64) {
        self.rescues.inc_by(n);
    }

    pub fn retry(&self) {
        self.retries.inc();
    }

    pub fn downloaded(&self, bytes: u64) {
        self.downloaded_bytes.inc_by(bytes);
    }

    pub fn uploaded(&self, bytes: u64) {
        self.uploaded_bytes.inc_by(bytes);
    }

    /// How long a job spent in `stage`.
    pub fn stage_duration(&self, stage: JobState, secs: f64) {
        self.stages
            .get_or_create(&Stage {
                stage: stage.name(),
            })
            .observe(secs);
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
