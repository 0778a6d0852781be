//! The store under SIGKILL: a child process hammers a real sled database with
//! enqueues and transitions; the parent kills it at random moments, reopens
//! the database and checks that nothing acknowledged was lost (every job the
//! child acknowledged is there, at least as far along as its last
//! acknowledged transition) and that every index and counter still agrees
//! with the records.
//!
//! The child acknowledges each enqueue, claim and update once it returned
//! `Ok`, in an append-only file it fsyncs before going on: what a caller
//! would act on (reply to the user, start a download) is what must survive.
//!
//! The child is this same test binary, re-run with `TGDL_CRASH_CHILD` set, so
//! it exercises exactly the library code the bot uses.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::Rng;
use tgdl::job::{
    now_ms, Delivery, ErrorClass, Job, JobError, JobId, JobOptions, JobState, MediaKind, NewJob,
};
use tgdl::store::{EnqueueLimits, Expect, JobStore, SledStore};
use uuid::Uuid;

const CHILD_ENV: &str = "TGDL_CRASH_CHILD";
/// The child's acknowledgement file (append-only, one line per call that
/// returned `Ok`, fsynced before the child goes on).
const ACKS_ENV: &str = "TGDL_CRASH_ACKS";
/// Set: the child reopens sled in a loop on a second thread, and appends a
/// byte to this file after each reopen.
const REOPENS_ENV: &str = "TGDL_CRASH_REOPENS";

fn cycles() -> usize {
    std::env::var("TGDL_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24)
}

/// How far along a job is, for "at least as far as acknowledged".
///
/// Every transition appends to the job's history, so the history's length
/// is a sequence number that only grows, across retries back to `queued`
/// too. Two positions compare by that number first, then by the state's
/// place on the forward path `queued < downloading < uploading < cleaning <
/// done | failed` (the same number with two states cannot happen in one job;
/// the order only makes the comparison total).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Progress {
    seq: usize,
    rank: u8,
}

impl Progress {
    fn new(state: JobState, seq: usize) -> Self {
        let rank = match state {
            JobState::Queued => 0,
            JobState::Downloading => 1,
            JobState::Uploading => 2,
            JobState::Cleaning => 3,
            JobState::Done | JobState::Failed => 4,
        };
        Progress { seq, rank }
    }

    fn of(job: &Job) -> Self {
        Progress::new(job.state, job.history.len())
    }
}

/// One acknowledged call: the job reached `state` as its `seq`-th history
/// entry, and the store said so durably.
#[derive(Clone, Copy, Debug)]
struct Ack {
    id: JobId,
    state: JobState,
    seq: usize,
}

impl Ack {
    fn line(job: &Job) -> String {
        format!("{} {} {}\n", job.id, job.state.name(), job.history.len())
    }

    fn parse(line: &str) -> Ack {
        let mut it = line.split(' ');
        let (Some(id), Some(state), Some(seq), None) = (it.next(), it.next(), it.next(), it.next())
        else {
            panic!("malformed acknowledgement {line:?}");
        };
        Ack {
            id: id.parse().unwrap(),
            state: state.parse().unwrap(),
            seq: seq.parse().unwrap(),
        }
    }
}

/// The parent's reader of the acknowledgement file.
struct AckLog {
    path: PathBuf,
    /// Bytes read so far (always at a line end).
    read: u64,
}

impl AckLog {
    /// Complete lines written since the last call. A line the kill cut short
    /// (no newline) is cut off the file, so the next child starts clean.
    fn take_new(&mut self) -> (Vec<Ack>, bool) {
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.path)
            .unwrap();
        f.seek(SeekFrom::Start(self.read)).unwrap();
        let mut text = String::new();
        f.read_to_string(&mut text).unwrap();
        let complete = text.rfind('\n').map_or(0, |i| i + 1);
        let torn = complete < text.len();
        if torn {
            f.set_len(self.read + complete as u64).unwrap();
        }
        self.read += complete as u64;
        let acks = text[..complete].lines().map(Ack::parse).collect();
        (acks, torn)
    }

    fn len(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
    }
}

#[test]
fn acknowledged_work_survives_sigkill() {
    kill_and_check(cycles(), false);
}

/// The same, while another thread of the child closes and opens sled again
/// as fast as it can (as the store does by itself every few hundred MB of
/// changes), so that kills land inside reopens: between the old handles'
/// flush and drop and the new open, and inside sled's open (which writes
/// its page table snapshot).
#[test]
fn acknowledged_work_survives_sigkill_during_sled_reopens() {
    let reopens = kill_and_check(cycles() / 2, true);
    assert!(reopens > 0, "the children reopened sled no time");
}

/// Run `cycles` kills of a child, checking the store after each; returns
/// how many reopens of sled the children acknowledged.
fn kill_and_check(cycles: usize, reopening: bool) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let reopen_log = dir.path().join("reopens");
    let db = dir.path().join("db");
    let mut log = AckLog {
        path: dir.path().join("acks"),
        read: 0,
    };
    // Each acknowledged job's furthest acknowledged position.
    let mut acked: HashMap<JobId, Ack> = HashMap::new();
    // Jobs seen done or failed at the last check: the next child may prune
    // them (it prunes only what finished before it started).
    let mut finished: HashSet<JobId> = HashSet::new();
    let (mut transitions, mut checked, mut checked_moved, mut torn) = (0usize, 0usize, 0usize, 0);
    let mut rng = rand::rng();
    let exe = std::env::current_exe().unwrap();
    for cycle in 0..cycles {
        let before = log.len();
        let mut child = Command::new(&exe);
        if reopening {
            child.env(REOPENS_ENV, &reopen_log);
        }
        let mut child = child
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &db)
            .env(ACKS_ENV, &log.path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Wait for the first acknowledgement (the child is open and working),
        // then let it run a random while so kills land anywhere in its loop.
        let deadline = Instant::now() + Duration::from_secs(30);
        while log.len() <= before {
            assert!(
                Instant::now() < deadline,
                "cycle {cycle}: child acknowledged nothing"
            );
            if let Some(status) = child.try_wait().unwrap() {
                panic!("cycle {cycle}: child exited by itself: {status}");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(0..250)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let (acks, cut) = log.take_new();
        torn += cut as usize;
        transitions += acks.len();
        for a in acks {
            let e = acked.entry(a.id).or_insert(a);
            assert!(
                a.seq >= e.seq,
                "cycle {cycle}: job {} acknowledged {} at {} after {} at {}",
                a.id,
                a.state,
                a.seq,
                e.state,
                e.seq
            );
            *e = a;
        }

        let store =
            SledStore::open(&db).unwrap_or_else(|e| panic!("cycle {cycle}: reopen failed: {e}"));
        let mut pruned = Vec::new();
        for (id, ack) in &acked {
            let job = match store.get(*id).unwrap() {
                Some(job) => job,
                None if finished.contains(id) => {
                    pruned.push(*id);
                    continue;
                }
                None => panic!("cycle {cycle}: acknowledged job {id} was lost"),
            };
            // At least as far as acknowledged, and on the same path: the
            // stored history has the acknowledged state at its position.
            let want = Progress::new(ack.state, ack.seq);
            assert!(
                Progress::of(&job) >= want,
                "cycle {cycle}: job {id} acknowledged {} (step {}), stored {} (step {}): {:?}",
                ack.state,
                ack.seq,
                job.state,
                job.history.len(),
                job.history
            );
            assert_eq!(
                job.history.get(ack.seq - 1).map(|h| h.0),
                Some(ack.state),
                "cycle {cycle}: job {id}'s history disagrees with its acknowledgement: {:?}",
                job.history
            );
            checked += 1;
            checked_moved += (ack.seq > 1) as usize;
            if job.state.is_finished() {
                finished.insert(*id);
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
        acked.len() >= cycles / 2,
        "too little work was done: {}",
        acked.len()
    );
    assert!(
        checked_moved > 0,
        "no acknowledged transition was ever checked"
    );
    let reopens = std::fs::read(&reopen_log).map_or(0, |b| b.len());
    eprintln!(
        "store_crash: {cycles} kills | {transitions} acknowledged calls | {} acknowledged jobs present | \
         {checked} positions checked, {checked_moved} of them past the enqueue | {torn} torn ack lines | \
         {reopens} reopens of sled",
        acked.len()
    );
    reopens
}

/// The child's acknowledgements: one line per call that returned `Ok`,
/// written and fsynced before the child makes its next call.
struct Acks(File);

impl Acks {
    fn open(path: &Path) -> Self {
        Acks(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap(),
        )
    }

    fn ack(&mut self, job: &Job) {
        // One write: a kill leaves a whole line or none (the parent cuts off
        // a torn one all the same).
        self.0.write_all(Ack::line(job).as_bytes()).unwrap();
        self.0.sync_data().unwrap();
    }
}

/// The child: runs until killed. Not a test on its own (returns at once
/// unless started by the parent above).
#[test]
fn crash_child() {
    let Some(db) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let store = std::sync::Arc::new(SledStore::open(Path::new(&db)).unwrap());
    if let Some(path) = std::env::var_os(REOPENS_ENV) {
        let store = store.clone();
        std::thread::spawn(move || {
            let mut log = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap();
            loop {
                if store.reopen_sled().unwrap() {
                    log.write_all(b"r").unwrap();
                }
            }
        });
    }
    let mut acks = Acks::open(Path::new(&std::env::var_os(ACKS_ENV).unwrap()));
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
        acks.ack(&e.job);
        // Move some jobs along, including ones a killed predecessor left in
        // flight (taken over as a recovery pass would).
        for _ in 0..rng.random_range(0..4) {
            if let Some(job) = store.claim(owner, 60_000, now_ms()).unwrap() {
                acks.ack(&job);
                let r: u8 = rng.random_range(0..10);
                let to = if r < 2 {
                    JobState::Queued
                } else if r < 3 {
                    JobState::Cleaning
                } else {
                    JobState::Uploading
                };
                let moved = store
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
                acks.ack(&moved);
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
                let moved = store
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
                acks.ack(&moved);
            }
        }
        if rng.random_range(0..20) == 0 {
            // Only what the parent saw finished (see the parent's check).
            store.prune_finished(started, 5).unwrap();
        }
    }
}
