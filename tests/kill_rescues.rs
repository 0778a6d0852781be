//! Rescue counting with the real binary (issue 10): a loop SIGKILLs the bot
//! while four slow downloads run, more often than `max_rescues` allows, and
//! restarts it. Every restart resumes each download further (HTTP Range), so
//! no rescue is a stall and every job ends `done`. Without the progress rule
//! each job would fail "crashed repeatedly" at its third kill. (That a job
//! crashing at the same point still fails is in `tests/recovery.rs`.)

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::Rng;
use support::binary::{processes_left, processes_mentioning, BinaryTest};
use support::fixture_bytes;
use support::fs::files_under;
use tgdl::job::JobState;
use tgdl::store::{JobStore, SledStore};

const JOBS: i64 = 4;
const KILLS: usize = 5;
const MAX_RESCUES: u32 = 2;

/// Bytes in each job folder under `downloads`.
fn folder_sizes(downloads: &Path) -> HashMap<PathBuf, u64> {
    let Ok(rd) = std::fs::read_dir(downloads) else {
        return HashMap::new();
    };
    rd.flatten()
        .map(|e| {
            let size = files_under(&e.path())
                .iter()
                .filter_map(|p| std::fs::metadata(p).ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum();
            (e.path(), size)
        })
        .collect()
}

/// Waits until a yt-dlp process runs for each of the `n` jobs and each job's
/// folder holds more than it did at the last kill: then a kill now finds
/// progress in every job. `false` after `timeout`.
fn all_progressed(
    downloads: &Path,
    n: usize,
    at_last_kill: &HashMap<PathBuf, u64>,
    timeout: Duration,
) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let sizes = folder_sizes(downloads);
        let running: Vec<&PathBuf> = sizes
            .keys()
            .filter(|dir| !processes_mentioning(&dir.display().to_string()).is_empty())
            .collect();
        let grown = running
            .iter()
            .filter(|dir| sizes[**dir] > at_last_kill.get(**dir).copied().unwrap_or(0))
            .count();
        if running.len() == n && grown == n {
            return true;
        }
        // Nothing notifies a file's growth or a process's start to another
        // process: re-read /proc and the folders.
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_downloads_killed_more_often_than_max_rescues_all_end_done() {
    let t = BinaryTest::start(&format!(
        "[telegram]\nprogress_interval_secs = 1\n\
         [downloader]\nconcurrency = {JOBS}\nmax_rescues = {MAX_RESCUES}\nmax_attempts = 10\nlease_secs = 5\n"
    ))
    .await;
    let data = t.dir.path().join("data");
    let downloads = data.join("downloads");
    let needle = data.display().to_string();
    let mut rng = rand::rng();

    // About 5 KB/s: clip.mp4 (170 KB) takes over half a minute without a
    // kill, so every kill below lands in the middle of all four downloads.
    for user in 0..JOBS {
        let link = t
            .media
            .url(&format!("/slow/clip.mp4?chunk=512&delay_ms=100&job={user}"));
        t.api
            .push_text(3001 + user, (3001 + user) as u64, &link, None);
    }

    let mut at_last_kill: HashMap<PathBuf, u64> = HashMap::new();
    for kill in 0..KILLS {
        let mut bot = t.start_bot();
        let d = downloads.clone();
        let last = at_last_kill.clone();
        let ready = tokio::task::spawn_blocking(move || {
            all_progressed(&d, JOBS as usize, &last, Duration::from_secs(60))
        })
        .await
        .unwrap();
        assert!(
            ready,
            "kill {kill}: not every download resumed; log:\n{}",
            bot.log_text()
        );
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1500))).await;
        bot.kill9();
        let left = processes_left(&needle, Duration::from_secs(5));
        assert!(left.is_empty(), "kill {kill}: left behind: {left:?}");
        at_last_kill = folder_sizes(&downloads);
        assert_eq!(
            at_last_kill.len(),
            JOBS as usize,
            "kill {kill}: every job still downloading: {at_last_kill:?}"
        );
    }

    // Now let them finish.
    let bot = t.start_bot();
    let delivered = t
        .api
        .try_wait_for(
            |calls| {
                calls
                    .iter()
                    .filter(|c| c.is("sendVideo") && c.succeeded())
                    .count()
                    >= JOBS as usize
            },
            Duration::from_secs(180),
        )
        .await;
    assert!(
        delivered.is_some(),
        "not all delivered; log:\n{}",
        bot.log_text()
    );
    // The last step of each job deletes its status message.
    let _ = t
        .api
        .wait_succeeded("deleteMessage", JOBS as usize, Duration::from_secs(30))
        .await;
    let (status, bot) = bot.sigterm_and_wait(Duration::from_secs(20)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "log:\n{}",
        bot.log_text()
    );

    for c in t.api.calls_to("sendVideo").iter().filter(|c| c.succeeded()) {
        assert_eq!(c.file("video").unwrap().bytes, fixture_bytes("clip.mp4"));
    }
    let store = SledStore::open(&data.join("db")).unwrap();
    let mut jobs = Vec::new();
    for s in JobState::ALL {
        jobs.extend(store.list_state(s, usize::MAX).unwrap());
    }
    assert_eq!(jobs.len(), JOBS as usize);
    let mut summary = Vec::new();
    for j in &jobs {
        let mark = j.rescue_mark.expect("rescued");
        summary.push(format!("rescues {} stalls {}", j.rescues, mark.stalls));
        assert_eq!(j.state, JobState::Done, "{:?}: {:?}", j.id, j.failure);
        assert!(
            j.rescues > MAX_RESCUES,
            "killed more often than max_rescues allows: {}",
            j.rescues
        );
        assert!(mark.stalls <= MAX_RESCUES);
    }
    println!("kill_rescues: {KILLS} kills, max_rescues {MAX_RESCUES}: {summary:?}");
    assert!(store.check_invariants().unwrap().problems.is_empty());
    assert!(files_under(&downloads).is_empty());
}
