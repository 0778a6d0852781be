//! The store under SIGKILL: a child process hammers a real sled database with
//! enqueues and transitions; the parent kills it at random moments, reopens
//! the database and checks that nothing acknowledged was lost and that every
//! index and counter still agrees with the records.
//!
//! The child is this same test binary, re-run with `TGDL_CRASH_CHILD` set, so
//! it exercises exactly the library code the bot uses.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use rand::Rng;
use tgdl::job::{
    now_ms, Delivery, ErrorClass, JobError, JobId, JobOptions, JobState, MediaKind, NewJob,
};
use tgdl::store::{EnqueueLimits, Expect, JobStore, SledStore};
use uuid::Uuid;

const CHILD_ENV: &str = "TGDL_CRASH_CHILD";

fn cycles() -> usize {
    std::env::var("TGDL_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24)
}

#[test]
fn acknowledged_work_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let mut acked: HashSet<JobId> = HashSet::new();
    // Jobs seen done or failed at the last check: the next child may prune
    // them (it prunes only what finished before it started).
    let mut finished: HashSet<JobId> = HashSet::new();
    let mut rng = rand::rng();
    let exe = std::env::current_exe().unwrap();
    for cycle in 0..cycles() {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &db)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        // Read acknowledgements on a thread; kill when the child is busy.
        let (tx, rx) = std::sync::mpsc::channel::<JobId>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(id) = line.strip_prefix("ACK ") {
                    let _ = tx.send(id.parse().unwrap());
                }
            }
        });
        // Wait for the first acknowledgement (the child is open and working),
        // then let it run a random while so kills land anywhere in its loop.
        let first = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("child acknowledged nothing");
        acked.insert(first);
        std::thread::sleep(Duration::from_millis(rng.random_range(0..250)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        acked.extend(rx.try_iter());

        let store =
            SledStore::open(&db).unwrap_or_else(|e| panic!("cycle {cycle}: reopen failed: {e}"));
        let mut pruned = Vec::new();
        for id in &acked {
            match store.get(*id).unwrap() {
                Some(job) if job.state.is_finished() => {
                    finished.insert(*id);
                }
                Some(_) => {}
                None if finished.contains(id) => pruned.push(*id),
                None => panic!("cycle {cycle}: acknowledged job {id} was lost"),
            }
        }
        for id in pruned {
            acked.remove(&id);
            finished.remove(&id);
        }
        let report = store.check_invariants().unwrap();
        assert!(
            report.problems.is_empty(),
            "cycle {cycle}: {:#?}",
            report.problems
        );
        assert_eq!(report.counters, report.recount, "cycle {cycle}");
        assert_eq!(
            report.quarantined, 0,
            "cycle {cycle}: records were quarantined"
        );
        assert_eq!(report.jobs, report.recount.total());
    }
    assert!(
        acked.len() >= cycles() / 2,
        "too little work was done: {}",
        acked.len()
    );
    eprintln!(
        "{} cycles, {} acknowledged jobs present",
        cycles(),
        acked.len()
    );
}

/// The child: runs until killed. Not a test on its own (returns at once
/// unless started by the parent above).
#[test]
fn crash_child() {
    let Some(db) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let store = SledStore::open(std::path::Path::new(&db)).unwrap();
    let owner = Uuid::now_v7();
    let limits = EnqueueLimits {
        per_user_active: 1_000_000,
        per_user_per_hour: 1_000_000,
        queue_capacity: 1_000_000,
        exempt: true,
    };
    let mut rng = rand::rng();
    let started = now_ms();
    loop {
        let user = rng.random_range(1..6u64);
        let e = store
            .enqueue(
                NewJob {
                    chat_id: user as i64,
                    user_id: user,
                    request_msg_id: 1,
                    lang: "en".into(),
                    url: format!("https://example.com/{}", rng.random::<u32>()),
                    options: JobOptions::default(),
                    parent: None,
                    not_before: None,
                },
                limits,
                now_ms(),
            )
            .unwrap();
        // The enqueue returned, so it is flushed: acknowledge it.
        println!("ACK {}", e.job.id);
        // Move some jobs along, including ones a killed predecessor left in
        // flight (taken over as a recovery pass would).
        for _ in 0..rng.random_range(0..4) {
            if let Some(job) = store.claim(owner, 60_000, now_ms()).unwrap() {
                let r: u8 = rng.random_range(0..10);
                let to = if r < 2 {
                    JobState::Queued
                } else if r < 3 {
                    JobState::Cleaning
                } else {
                    JobState::Uploading
                };
                store
                    .update(
                        job.id,
                        Expect::owned(JobState::Downloading, owner),
                        Some(to),
                        now_ms(),
                        &|j| {
                            if to == JobState::Queued {
                                j.attempts += 1;
                                j.last_error = Some(JobError {
                                    class: ErrorClass::Retryable,
                                    code: "network".into(),
                                    text: "reset".into(),
                                });
                            }
                        },
                    )
                    .unwrap();
            }
        }
        for state in JobState::IN_FLIGHT {
            for job in store.list_state(state, 2).unwrap() {
                let next = match state {
                    JobState::Downloading => JobState::Queued,
                    JobState::Uploading => JobState::Cleaning,
                    _ => {
                        if rng.random_bool(0.8) {
                            JobState::Done
                        } else {
                            JobState::Failed
                        }
                    }
                };
                store
                    .update(job.id, Expect::state(state), Some(next), now_ms(), &|j| {
                        if state == JobState::Uploading {
                            j.delivery = Some(Delivery {
                                message_id: 1,
                                file_id: format!("f{}", j.id),
                                sent_as: MediaKind::Video,
                            });
                        }
                        if state == JobState::Downloading {
                            j.rescues += 1;
                        }
                    })
                    .unwrap();
            }
        }
        if rng.random_range(0..20) == 0 {
            // Only what the parent saw finished (see the parent's check).
            store.prune_finished(started, 5).unwrap();
        }
    }
}
