//! What the health task measures.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

use crate::store::StateCounts;

/// The machine's side of a sample. Produced by a [`Probe`]; tests produce
/// their own (a full disk cannot be made on demand).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SystemSample {
    pub disk_total_bytes: u64,
    pub disk_free_bytes: u64,
    pub memory_percent: f64,
    pub cpu_percent: f64,
    pub process_rss_bytes: u64,
    pub threads: u64,
    pub open_files: u64,
}

impl SystemSample {
    pub fn disk_free_percent(&self) -> f64 {
        if self.disk_total_bytes == 0 {
            return 100.0;
        }
        self.disk_free_bytes as f64 * 100.0 / self.disk_total_bytes as f64
    }
}

/// Everything `/health` shows, from one sampling.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub at_ms: u64,
    pub system: SystemSample,
    pub downloads_dir_bytes: u64,
    pub db_bytes: u64,
    pub counts: StateCounts,
    pub oldest_queued_age_secs: Option<u64>,
    /// In-flight jobs past their stage timeout: (short id, state, seconds).
    pub stuck: Vec<(String, String, u64)>,
    pub done_last_hour: u64,
    pub failed_last_hour: u64,
    /// Download failures that look like extractor breakage in the last hour.
    pub extractor_errors_last_hour: u64,
    pub ytdlp_version: String,
    /// Managed or not, installed when, the last update attempt.
    pub ytdlp_detail: String,
    pub ffmpeg: bool,
    pub ffprobe: bool,
    pub uptime_secs: u64,
    /// Every node's latest heartbeat (a shared store; empty on sled).
    pub nodes: Vec<crate::store::NodeBeat>,
}

impl Sample {
    /// Failures among finished jobs in the last hour, 0..=1.
    pub fn failure_rate(&self) -> f64 {
        let n = self.done_last_hour + self.failed_last_hour;
        if n == 0 {
            0.0
        } else {
            self.failed_last_hour as f64 / n as f64
        }
    }
}

/// A source of [`SystemSample`]s.
pub trait Probe: Send + Sync {
    fn system(&mut self) -> SystemSample;
}

/// The real probe: refreshes only memory, global CPU and this process (never
/// every process on the machine), and asks the kernel for the free space of
/// the downloads volume directly.
pub struct SysinfoProbe {
    sys: System,
    pid: Pid,
    downloads: PathBuf,
    _started: Instant,
}

impl SysinfoProbe {
    pub fn new(downloads: &Path) -> Self {
        let mut sys = System::new();
        // CPU usage is a difference between two refreshes: prime it.
        sys.refresh_cpu_usage();
        SysinfoProbe {
            sys,
            pid: Pid::from_u32(std::process::id()),
            downloads: downloads.to_path_buf(),
            _started: Instant::now(),
        }
    }
}

impl Probe for SysinfoProbe {
    fn system(&mut self) -> SystemSample {
        self.sys.refresh_memory();
        self.sys.refresh_cpu_usage();
        self.sys.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[self.pid]),
            true,
            ProcessRefreshKind::nothing().with_memory(),
        );
        let total = self.sys.total_memory();
        let (disk_total, disk_free) = disk_space(&self.downloads).unwrap_or((0, 0));
        SystemSample {
            disk_total_bytes: disk_total,
            disk_free_bytes: disk_free,
            memory_percent: if total == 0 {
                0.0
            } else {
                self.sys.used_memory() as f64 * 100.0 / total as f64
            },
            cpu_percent: self.sys.global_cpu_usage() as f64,
            process_rss_bytes: self.sys.process(self.pid).map(|p| p.memory()).unwrap_or(0),
            threads: proc_threads().unwrap_or(0),
            open_files: std::fs::read_dir("/proc/self/fd")
                .map(|d| d.count() as u64)
                .unwrap_or(0),
        }
    }
}

/// One [`SysinfoProbe`] for the samples taken outside the monitor's ticks
/// (`/health` before the first tick, `tgdl health` on a running bot), kept
/// between them in [`super::HealthState`]. A probe made per call would
/// parse `/proc/cpuinfo` every time (sysinfo's first CPU refresh), and its
/// CPU percentage would be the average since boot: a percentage is the
/// difference of two readings, and a new probe has only the one. Kept, the
/// CPU figure covers the time since the previous such sample (issue 16).
#[derive(Clone, Default)]
pub struct SharedProbe(Arc<Mutex<Option<SysinfoProbe>>>);

impl SharedProbe {
    /// A [`Probe`] on the kept probe, made (for `downloads`) at first use.
    pub fn handle(&self, downloads: &Path) -> Box<dyn Probe> {
        Box::new(SharedHandle {
            probe: self.0.clone(),
            downloads: downloads.to_path_buf(),
        })
    }
}

struct SharedHandle {
    probe: Arc<Mutex<Option<SysinfoProbe>>>,
    downloads: PathBuf,
}

impl Probe for SharedHandle {
    fn system(&mut self) -> SystemSample {
        let mut kept = self.probe.lock().unwrap_or_else(|p| p.into_inner());
        let probe = match &mut *kept {
            Some(p) if p.downloads == self.downloads => p,
            other => other.insert(SysinfoProbe::new(&self.downloads)),
        };
        probe.system()
    }
}

/// Total and available bytes of the file system holding `path`.
pub fn disk_space(path: &Path) -> Option<(u64, u64)> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    let frag = st.fragment_size() as u64;
    Some((
        st.blocks() as u64 * frag,
        st.blocks_available() as u64 * frag,
    ))
}

fn proc_threads() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_real_probe_reads_plausible_values() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = SysinfoProbe::new(dir.path());
        let s = p.system();
        assert!(s.disk_total_bytes > 0 && s.disk_free_bytes <= s.disk_total_bytes);
        assert!((0.0..=100.0).contains(&s.memory_percent));
        assert!(s.process_rss_bytes > 0);
        assert!(s.threads >= 1);
        assert!(s.open_files >= 3);
    }

    #[test]
    fn a_shared_probe_is_made_once_and_kept_between_samples() {
        let dir = tempfile::tempdir().unwrap();
        let shared = SharedProbe::default();
        assert!(shared.0.lock().unwrap().is_none());
        let s = shared.handle(dir.path()).system();
        assert!(s.disk_total_bytes > 0 && s.process_rss_bytes > 0);
        let made = shared.0.lock().unwrap().as_ref().map(|p| p._started);
        assert!(made.is_some());
        // Another sample (another `/health`) reads through the same probe.
        let again = shared.clone().handle(dir.path()).system();
        assert!(again.threads >= 1);
        assert_eq!(shared.0.lock().unwrap().as_ref().map(|p| p._started), made);
    }
}
