//! The sled store's own log (`src/store/sled/wal.rs`) on crash images made
//! from real files: sled's files from one moment with the log from a later
//! one (a crash before sled wrote what was acknowledged), and the other way
//! round (sled wrote more than the log still holds after a checkpoint).

use std::path::{Path, PathBuf};

use tgdl::job::{Job, JobOptions, JobState, NewJob};
use tgdl::store::{EnqueueLimits, Expect, JobStore, SledStore};

const LOOSE: EnqueueLimits = EnqueueLimits {
    per_user_active: 1000,
    per_user_per_hour: 1000,
    queue_capacity: 100_000,
    exempt: false,
};

const LOG: &str = "tgdl.wal";

fn new_job(user: u64, url: &str) -> NewJob {
    NewJob {
        chat_id: user as i64,
        user_id: user,
        request_msg_id: 1,
        lang: "en".into(),
        url: url.into(),
        options: JobOptions::default(),
        parent: None,
        not_before: None,
    }
}

/// Copy a store's directory as it is on disk now (what `kill -9` leaves).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// A temporary folder with the paths of a live store and of its crash image.
fn live_and_image() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (live, image) = (dir.path().join("live"), dir.path().join("image"));
    (dir, live, image)
}

/// A store opened at `live` holding one queued job (user 1, enqueued at
/// 1 s): where every crash image here starts.
fn open_with_one_job(live: &Path) -> (SledStore, Job) {
    let store = SledStore::open(live).unwrap();
    let job = store
        .enqueue(new_job(1, "https://a/1"), LOOSE, 1_000)
        .unwrap()
        .job;
    (store, job)
}

fn assert_consistent(store: &SledStore) {
    let r = store.check_invariants().unwrap();
    assert!(r.problems.is_empty(), "{:#?}", r.problems);
}

#[test]
fn a_change_only_in_the_log_is_replayed_at_open() {
    let (_dir, live, image) = live_and_image();
    let (store, first) = open_with_one_job(&live);
    // sled's own files now hold the first job: the crash image's sled part.
    store.flush().unwrap();
    copy_dir(&live, &image);
    // The second job is acknowledged (durable in the log) after that.
    let second = store
        .enqueue(new_job(2, "https://a/2"), LOOSE, 2_000)
        .unwrap();
    std::fs::copy(live.join(LOG), image.join(LOG)).unwrap();

    let reopened = SledStore::open(&image).unwrap();
    assert_eq!(
        reopened.replayed_at_open(),
        1,
        "only the second job's record"
    );
    let got = reopened
        .get(second.job.id)
        .unwrap()
        .expect("acknowledged job");
    assert_eq!(got.state, JobState::Queued);
    assert!(reopened.get(first.id).unwrap().is_some());
    assert_eq!(reopened.counts().unwrap().queued, 2);
    assert_consistent(&reopened);
    drop(reopened);
    // The replay was checkpointed: a second open replays nothing.
    let again = SledStore::open(&image).unwrap();
    assert_eq!(again.replayed_at_open(), 0);
    assert_eq!(again.counts().unwrap().queued, 2);
}

#[test]
fn the_log_never_rolls_sled_back() {
    let (_dir, live, image) = live_and_image();
    let (store, job) = open_with_one_job(&live);
    // The log as it was when the job was only queued...
    let old_log = std::fs::read(live.join(LOG)).unwrap();
    let owner = uuid::Uuid::new_v4();
    let claimed = store.claim(owner, 60_000, 2_000).unwrap().expect("claim");
    assert_eq!(claimed.id, job.id);
    store
        .update(
            job.id,
            Expect::owned(JobState::Downloading, owner),
            Some(JobState::Uploading),
            3_000,
            &|_| {},
        )
        .unwrap();
    store.flush().unwrap();
    // ...beside sled's files that already hold the later moves.
    copy_dir(&live, &image);
    std::fs::write(image.join(LOG), &old_log).unwrap();

    let reopened = SledStore::open(&image).unwrap();
    assert_eq!(reopened.replayed_at_open(), 0);
    let got = reopened.get(job.id).unwrap().unwrap();
    assert_eq!(
        got.state,
        JobState::Uploading,
        "replay must not move it back"
    );
    assert_consistent(&reopened);
}

#[test]
fn a_damaged_record_ends_the_replay_and_the_store_still_opens() {
    let (_dir, live, image) = live_and_image();
    let (store, _) = open_with_one_job(&live);
    store.flush().unwrap();
    copy_dir(&live, &image);
    let lost = store
        .enqueue(new_job(2, "https://a/2"), LOOSE, 2_000)
        .unwrap();
    let mut log = std::fs::read(live.join(LOG)).unwrap();
    // The second record starts where the first ends; flip a byte in its body.
    let first_len = u32::from_le_bytes(log[..4].try_into().unwrap()) as usize + 8;
    log[first_len + 20] ^= 0xff;
    std::fs::write(image.join(LOG), &log).unwrap();

    let reopened = SledStore::open(&image).unwrap();
    assert_eq!(reopened.replayed_at_open(), 0);
    assert!(reopened.get(lost.job.id).unwrap().is_none());
    assert_eq!(reopened.counts().unwrap().queued, 1);
    assert_consistent(&reopened);
}

/// The log's sync counter, which the store bench prints as the group
/// commit's batch size: one thread waiting for each change gets one
/// `fdatasync` per change; concurrent threads have every change counted once,
/// in at most as many syncs.
#[test]
fn the_log_counts_each_durable_change_once_and_each_sync() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(&dir.path().join("db")).unwrap();
    assert_eq!(
        store.log_syncs().changes,
        0,
        "the open syncs nothing itself"
    );
    for i in 0..20 {
        store
            .enqueue(new_job(1, &format!("https://a/{i}")), LOOSE, 1_000)
            .unwrap();
    }
    let alone = store.log_syncs();
    assert_eq!((alone.syncs, alone.changes), (20, 20));

    std::thread::scope(|s| {
        for t in 0..8u64 {
            let store = &store;
            s.spawn(move || {
                for i in 0..25 {
                    let url = format!("https://b/{t}/{i}");
                    store.enqueue(new_job(10 + t, &url), LOOSE, 1_000).unwrap();
                }
            });
        }
    });
    let all = store.log_syncs();
    assert_eq!(all.changes, 20 + 200, "every change counted once");
    assert!(
        (21..=220).contains(&all.syncs),
        "between one sync for all and one per change: {all:?}"
    );
    assert_eq!(store.counts().unwrap().queued, 220);
}

/// A change whose committer does not wait for it (`update_lazily`, the
/// status message's id) is written to the log by the log's own syncer: a
/// waiting committer writes the records queued before it, and here none
/// comes after. The crash image holds sled's files from before the change
/// and the log from after it.
#[test]
fn a_change_nobody_waits_for_still_reaches_the_log() {
    let (_dir, live, image) = live_and_image();
    let (store, job) = open_with_one_job(&live);
    store.flush().unwrap();
    copy_dir(&live, &image);
    let before = store.log_syncs().changes;
    store
        .update_lazily(job.id, Expect::state(JobState::Queued), 2_000, &|j| {
            j.status_msg_id = Some(77)
        })
        .unwrap();
    // Nothing else is committed: only the syncer thread can write it. Wait
    // (at most 10 s) for its sync to count it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while store.log_syncs().changes == before {
        assert!(
            std::time::Instant::now() < deadline,
            "the lazy change never reached the log: {:?}",
            store.log_syncs()
        );
        std::thread::yield_now();
    }
    std::fs::copy(live.join(LOG), image.join(LOG)).unwrap();

    let reopened = SledStore::open(&image).unwrap();
    assert_eq!(reopened.replayed_at_open(), 1, "the lazy change's record");
    let got = reopened.get(job.id).unwrap().unwrap();
    assert_eq!(got.status_msg_id, Some(77));
    assert_consistent(&reopened);
}
