//! Processes an earlier run of the bot left behind.
//!
//! yt-dlp dies with the bot (PDEATHSIG), but the ffmpeg it starts does not
//! inherit that, so after a `kill -9` of the bot an ffmpeg can keep writing
//! into a job's folder and race the download that resumes it. Every yt-dlp
//! (download and probe) runs with its job's folder as working directory, and
//! its children inherit it: a process working inside a job folder under the
//! downloads folder is one of ours from an earlier run, whatever its name or
//! parent. Recovery ends them before any work starts.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A process found working under the downloads folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leftover {
    pub pid: i32,
    /// Its name (`/proc/PID/comm`), for the report.
    pub name: String,
    pub cwd: PathBuf,
}

/// Processes of this user, other than this one, whose working directory is
/// strictly inside `downloads` (a job's folder or below). The folder itself
/// does not count: an operator's shell there is not ours.
pub fn find(downloads: &Path) -> Vec<Leftover> {
    let Ok(downloads) = std::fs::canonicalize(downloads) else {
        return Vec::new();
    };
    let me = std::process::id();
    let uid = nix::unistd::geteuid().as_raw();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me || e.metadata().map(|m| m.uid() != uid).unwrap_or(true) {
            continue;
        }
        // Unreadable for a process that just ended or a zombie: not a worry.
        let Ok(cwd) = std::fs::read_link(e.path().join("cwd")) else {
            continue;
        };
        let cwd = undeleted(cwd);
        if cwd.starts_with(&downloads) && cwd != downloads {
            let name = std::fs::read_to_string(e.path().join("comm"))
                .map(|s| s.trim_end().to_owned())
                .unwrap_or_default();
            out.push(Leftover {
                pid: pid as i32,
                name,
                cwd,
            });
        }
    }
    out.sort_by_key(|l| l.pid);
    out
}

/// The kernel marks a working directory that was removed with " (deleted)".
fn undeleted(p: PathBuf) -> PathBuf {
    match p.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
        Some(s) => PathBuf::from(s),
        None => p,
    }
}

/// Ends every process [`find`] reports with SIGKILL, again until none is
/// left (a process may start another between the scan and the signal) or
/// `patience` has passed; returns those it signalled. SIGKILL cannot be
/// caught, so a process signalled runs no more of its own code.
pub fn end_all(downloads: &Path, patience: Duration) -> Vec<Leftover> {
    let deadline = Instant::now() + patience;
    let mut ended: Vec<Leftover> = Vec::new();
    loop {
        let found = find(downloads);
        if found.is_empty() || Instant::now() >= deadline {
            return ended;
        }
        for l in found {
            let pid = nix::unistd::Pid::from_raw(l.pid);
            let sent = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).is_ok();
            if sent && !ended.iter().any(|e| e.pid == l.pid) {
                tracing::warn!(pid = l.pid, name = %l.name, cwd = %l.cwd.display(), "ended a process left by an earlier run");
                ended.push(l);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn processes_working_in_a_job_folder_are_found_and_ended() {
        let tmp = tempfile::tempdir().unwrap();
        let downloads = tmp.path().join("downloads");
        let job = downloads.join("job");
        std::fs::create_dir_all(&job).unwrap();
        let mut inside = Command::new("sleep")
            .arg("300")
            .current_dir(&job)
            .spawn()
            .unwrap();
        // In the downloads folder itself and elsewhere: not ours to end.
        let mut top = Command::new("sleep")
            .arg("300")
            .current_dir(&downloads)
            .spawn()
            .unwrap();
        let mut outside = Command::new("sleep")
            .arg("300")
            .current_dir(tmp.path())
            .spawn()
            .unwrap();
        let found = find(&downloads);
        assert_eq!(
            found.iter().map(|l| l.pid).collect::<Vec<_>>(),
            vec![inside.id() as i32],
            "{found:?}"
        );
        assert_eq!(found[0].name, "sleep");
        let ended = end_all(&downloads, Duration::from_secs(5));
        assert_eq!(ended.len(), 1);
        let status = inside.wait().unwrap();
        assert!(!status.success(), "killed: {status:?}");
        assert!(
            top.try_wait().unwrap().is_none(),
            "the folder itself is not a job's"
        );
        assert!(outside.try_wait().unwrap().is_none());
        // A folder removed under a process still counts as inside.
        let mut removed = Command::new("sleep")
            .arg("300")
            .current_dir(&job)
            .spawn()
            .unwrap();
        std::fs::remove_dir_all(&job).unwrap();
        assert_eq!(end_all(&downloads, Duration::from_secs(5)).len(), 1);
        assert!(!removed.wait().unwrap().success());
        for mut c in [top, outside] {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }
}
