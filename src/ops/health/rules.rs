//! From a sample to conditions, with the thresholds of `[health]`.

use super::GB;
use crate::config::HealthConfig;

use super::sample::Sample;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Critical,
}

/// The one-word verdict of `/health`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Healthy,
    Warning,
    Critical,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Healthy => "healthy",
            Status::Warning => "warning",
            Status::Critical => "critical",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConditionKind {
    DiskLow,
    MemoryHigh,
    CpuHigh,
    DownloadsDirLarge,
    StuckJob,
    Backlog,
    FailureSpike,
    ExtractorErrors,
}

impl ConditionKind {
    /// Stable name for alerts, logs and metrics.
    pub fn code(self) -> &'static str {
        match self {
            ConditionKind::DiskLow => "disk_low",
            ConditionKind::MemoryHigh => "memory_high",
            ConditionKind::CpuHigh => "cpu_high",
            ConditionKind::DownloadsDirLarge => "downloads_dir_large",
            ConditionKind::StuckJob => "stuck_job",
            ConditionKind::Backlog => "backlog",
            ConditionKind::FailureSpike => "failure_spike",
            ConditionKind::ExtractorErrors => "extractor_errors",
        }
    }

    /// A condition of one machine (its disk, memory, CPU, downloads folder,
    /// yt-dlp), rather than of the queue every node shares.
    pub fn is_per_node(self) -> bool {
        matches!(
            self,
            ConditionKind::DiskLow
                | ConditionKind::MemoryHigh
                | ConditionKind::CpuHigh
                | ConditionKind::DownloadsDirLarge
                | ConditionKind::ExtractorErrors
        )
    }

    /// What an admin can do about it.
    pub fn advice(self) -> &'static str {
        match self {
            ConditionKind::DiskLow => "new downloads are paused until space returns; free disk space or lower upload_limit_mb",
            ConditionKind::MemoryHigh => "check other processes on the machine; lower downloader.concurrency",
            ConditionKind::CpuHigh => "lower downloader.concurrency; check for runaway ffmpeg processes",
            ConditionKind::DownloadsDirLarge => "files are left behind or jobs are large; check /jobs and the downloads folder",
            ConditionKind::StuckJob => "inspect with /job <id>; /cancel it if it does not move",
            ConditionKind::Backlog => "jobs wait too long; raise downloader.concurrency if the machine allows",
            ConditionKind::FailureSpike => "many jobs fail; look at /jobs failed for the reasons",
            ConditionKind::ExtractorErrors => "sites may have changed: update yt-dlp (pip install -U yt-dlp)",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Condition {
    pub kind: ConditionKind,
    pub severity: Severity,
    pub detail: String,
}

impl Condition {
    fn new(kind: ConditionKind, severity: Severity, detail: String) -> Self {
        Condition {
            kind,
            severity,
            detail,
        }
    }
}

pub fn status(conditions: &[Condition]) -> Status {
    match conditions.iter().map(|c| c.severity).max() {
        None => Status::Healthy,
        Some(Severity::Warning) => Status::Warning,
        Some(Severity::Critical) => Status::Critical,
    }
}

/// Stateful only where a rule needs history: CPU must be high for more than
/// one sample in a row before it counts.
pub struct Rules {
    pub thresholds: HealthConfig,
    cpu_streak: u32,
}

impl Rules {
    pub fn new(thresholds: HealthConfig) -> Self {
        Rules {
            thresholds,
            cpu_streak: 0,
        }
    }

    pub fn evaluate(&mut self, s: &Sample) -> Vec<Condition> {
        use ConditionKind::*;
        use Severity::*;
        let t = &self.thresholds;
        let mut out = Vec::new();
        let free = s.system.disk_free_percent();
        if s.system.disk_total_bytes > 0 && free < t.disk_free_percent_critical {
            out.push(Condition::new(
                DiskLow,
                Critical,
                format!(
                    "free disk {:.1} % ({:.1} GB), below {} %",
                    free,
                    s.system.disk_free_bytes as f64 / GB,
                    t.disk_free_percent_critical
                ),
            ));
        }
        if s.system.memory_percent > t.memory_percent_warning {
            out.push(Condition::new(
                MemoryHigh,
                Warning,
                format!(
                    "memory {:.0} %, above {} %",
                    s.system.memory_percent, t.memory_percent_warning
                ),
            ));
        }
        if s.system.cpu_percent > t.cpu_percent_warning {
            self.cpu_streak += 1;
        } else {
            self.cpu_streak = 0;
        }
        if self.cpu_streak >= 2 {
            out.push(Condition::new(
                CpuHigh,
                Warning,
                format!(
                    "CPU {:.0} % for {} samples, above {} %",
                    s.system.cpu_percent, self.cpu_streak, t.cpu_percent_warning
                ),
            ));
        }
        let dir_gb = s.downloads_dir_bytes as f64 / GB;
        if dir_gb > t.downloads_dir_gb_warning {
            out.push(Condition::new(
                DownloadsDirLarge,
                Warning,
                format!(
                    "downloads folder {:.1} GB, above {} GB",
                    dir_gb, t.downloads_dir_gb_warning
                ),
            ));
        }
        if !s.stuck.is_empty() {
            let list: Vec<String> = s
                .stuck
                .iter()
                .map(|(id, state, secs)| format!("{id} {state} for {secs} s"))
                .collect();
            out.push(Condition::new(
                StuckJob,
                Warning,
                format!("stuck: {}", list.join(", ")),
            ));
        }
        if let Some(age) = s
            .oldest_queued_age_secs
            .filter(|a| *a > t.backlog_age_warning_secs)
        {
            out.push(Condition::new(
                Backlog,
                Warning,
                format!(
                    "oldest queued job waits {age} s, above {} s",
                    t.backlog_age_warning_secs
                ),
            ));
        }
        if s.failed_last_hour >= 5 && s.failure_rate() >= 0.5 {
            out.push(Condition::new(
                FailureSpike,
                Warning,
                format!(
                    "{} of {} jobs failed in the last hour",
                    s.failed_last_hour,
                    s.failed_last_hour + s.done_last_hour
                ),
            ));
        }
        if s.extractor_errors_last_hour >= 5 {
            out.push(Condition::new(
                ExtractorErrors,
                Warning,
                format!(
                    "{} extractor errors in the last hour",
                    s.extractor_errors_last_hour
                ),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::health::SystemSample;

    fn base() -> Sample {
        Sample {
            system: SystemSample {
                disk_total_bytes: 100 * GB as u64,
                disk_free_bytes: 50 * GB as u64,
                memory_percent: 20.0,
                cpu_percent: 10.0,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn kinds(c: &[Condition]) -> Vec<ConditionKind> {
        c.iter().map(|c| c.kind).collect()
    }

    #[test]
    fn a_normal_sample_is_healthy() {
        let mut r = Rules::new(HealthConfig::default());
        let c = r.evaluate(&base());
        assert!(c.is_empty(), "{c:?}");
        assert_eq!(status(&c), Status::Healthy);
    }

    #[test]
    fn low_disk_is_critical() {
        let mut r = Rules::new(HealthConfig::default());
        let mut s = base();
        s.system.disk_free_bytes = 5 * GB as u64;
        let c = r.evaluate(&s);
        assert_eq!(kinds(&c), vec![ConditionKind::DiskLow]);
        assert_eq!(status(&c), Status::Critical);
    }

    #[test]
    fn cpu_must_stay_high_for_two_samples() {
        let mut r = Rules::new(HealthConfig::default());
        let mut s = base();
        s.system.cpu_percent = 99.0;
        assert!(r.evaluate(&s).is_empty());
        assert_eq!(kinds(&r.evaluate(&s)), vec![ConditionKind::CpuHigh]);
        s.system.cpu_percent = 10.0;
        assert!(r.evaluate(&s).is_empty());
    }

    #[test]
    fn queue_conditions_are_warnings() {
        let mut r = Rules::new(HealthConfig::default());
        let mut s = base();
        s.oldest_queued_age_secs = Some(7200);
        s.failed_last_hour = 6;
        s.done_last_hour = 2;
        s.extractor_errors_last_hour = 5;
        s.stuck = vec![("abcd1234".into(), "downloading".into(), 4000)];
        s.system.memory_percent = 90.0;
        s.downloads_dir_bytes = 60 * GB as u64;
        let c = r.evaluate(&s);
        use ConditionKind::*;
        assert_eq!(
            kinds(&c),
            vec![
                MemoryHigh,
                DownloadsDirLarge,
                StuckJob,
                Backlog,
                FailureSpike,
                ExtractorErrors
            ]
        );
        assert_eq!(status(&c), Status::Warning);
    }
}
