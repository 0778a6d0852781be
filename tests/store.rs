//! The sled store on a real database in a temp dir: transitions, conflicts,
//! limits, fair claiming, counters, cache, retention and quarantine.

mod support;

use support::binary::{run_tgdl, write_config};
use support::store_fixture::state_key;
use tgdl::job::{
    Delivery, ErrorClass, Job, JobError, JobId, JobOptions, JobState, MediaKind, NewJob,
};
use tgdl::store::{EnqueueLimits, Expect, FindError, JobStore, Refusal, SledStore, StoreError};
use uuid::Uuid;

const LOOSE: EnqueueLimits = EnqueueLimits {
    per_user_active: 1000,
    per_user_per_hour: 1000,
    queue_capacity: 100_000,
    exempt: false,
};

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

fn open() -> (tempfile::TempDir, SledStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(&dir.path().join("db")).unwrap();
    (dir, store)
}

fn assert_consistent(store: &SledStore) {
    let r = store.check_invariants().unwrap();
    assert!(
        r.problems.is_empty(),
        "invariants broken: {:#?}",
        r.problems
    );
}

/// Drive one job through the happy path, as the pipeline does.
fn finish(store: &SledStore, owner: Uuid, job: &Job, now: u64) -> Job {
    let up = store
        .update(
            job.id,
            Expect::owned(JobState::Downloading, owner),
            Some(JobState::Uploading),
            now,
            &|j| {
                j.file_path = Some("/x/a.mp4".into());
                j.file_size = Some(10);
            },
        )
        .unwrap();
    let cl = store
        .update(
            up.id,
            Expect::owned(JobState::Uploading, owner),
            Some(JobState::Cleaning),
            now,
            &|j| {
                j.delivery = Some(Delivery {
                    message_id: 9,
                    file_id: "FILE".into(),
                    sent_as: MediaKind::Video,
                })
            },
        )
        .unwrap();
    step(store, cl.id, JobState::Cleaning, JobState::Done, now)
}

/// Move a job that needs no edit from `from` to `to`.
fn step(store: &SledStore, id: JobId, from: JobState, to: JobState, now: u64) -> Job {
    store
        .update(id, Expect::state(from), Some(to), now, &|_| {})
        .unwrap()
}

#[test]
fn full_lifecycle_updates_indexes_counts_and_cache() {
    let (_d, store) = open();
    let owner = Uuid::now_v7();
    let e = store
        .enqueue(new_job(1, "https://a/1"), LOOSE, 1000)
        .unwrap();
    assert_eq!(e.position, 1);
    assert_eq!(store.counts().unwrap().queued, 1);
    assert_consistent(&store);

    let claimed = store
        .claim(owner, 60_000, 1000)
        .unwrap()
        .expect("a job is due");
    assert_eq!(claimed.id, e.job.id);
    assert_eq!(claimed.state, JobState::Downloading);
    assert_eq!(claimed.lease.unwrap().owner, owner);
    assert_eq!(claimed.lease.unwrap().until, 61_000);
    assert!(store.claim(owner, 60_000, 1000).unwrap().is_none());
    assert_eq!(store.in_flight().unwrap().len(), 1);

    let done = finish(&store, owner, &claimed, 2000);
    assert_eq!(done.state, JobState::Done);
    assert!(done.lease.is_none(), "a finished job holds no lease");
    let states: Vec<JobState> = done.history.iter().map(|h| h.0).collect();
    use JobState::*;
    assert_eq!(states, vec![Queued, Downloading, Uploading, Cleaning, Done]);
    let c = store.counts().unwrap();
    assert_eq!((c.queued, c.downloading, c.done), (0, 0, 1));
    let cached = store.cache_get(&done.cache_key()).unwrap().expect("cached");
    assert_eq!(cached.file_id, "FILE");
    assert!(store.in_flight().unwrap().is_empty());
    assert_consistent(&store);
}

#[test]
fn stale_callers_get_a_conflict_not_an_overwrite() {
    let (_d, store) = open();
    let owner = Uuid::now_v7();
    let e = store.enqueue(new_job(1, "https://a/1"), LOOSE, 1).unwrap();
    let job = store.claim(owner, 1000, 1).unwrap().unwrap();
    // Someone expecting it still queued is told what it really is.
    let err = store
        .update(
            e.job.id,
            Expect::state(JobState::Queued),
            Some(JobState::Cleaning),
            2,
            &|_| {},
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Conflict {
                expected: JobState::Queued,
                actual: JobState::Downloading,
                ..
            }
        ),
        "{err:?}"
    );
    // Another owner cannot write over this one's work.
    let err = store
        .update(
            job.id,
            Expect::owned(JobState::Downloading, Uuid::now_v7()),
            Some(JobState::Uploading),
            2,
            &|_| {},
        )
        .unwrap_err();
    assert!(matches!(err, StoreError::LeaseLost { .. }), "{err:?}");
    // An illegal move is refused and changes nothing.
    let err = store
        .update(
            job.id,
            Expect::state(JobState::Downloading),
            Some(JobState::Done),
            2,
            &|_| {},
        )
        .unwrap_err();
    assert!(matches!(err, StoreError::Illegal(_)), "{err:?}");
    assert_eq!(
        store.get(job.id).unwrap().unwrap().state,
        JobState::Downloading
    );
    assert_consistent(&store);
}

#[test]
fn retry_requeues_with_backoff_and_claim_waits_for_it() {
    let (_d, store) = open();
    let owner = Uuid::now_v7();
    store.enqueue(new_job(1, "https://a/1"), LOOSE, 0).unwrap();
    let job = store.claim(owner, 1000, 0).unwrap().unwrap();
    store
        .update(
            job.id,
            Expect::owned(JobState::Downloading, owner),
            Some(JobState::Queued),
            10,
            &|j| {
                j.attempts += 1;
                j.next_attempt_at = 5000;
                j.last_error = Some(JobError {
                    class: ErrorClass::Retryable,
                    code: "network".into(),
                    text: "connection reset".into(),
                });
            },
        )
        .unwrap();
    assert_consistent(&store);
    assert!(
        store.claim(owner, 1000, 4999).unwrap().is_none(),
        "not before its time"
    );
    let again = store.claim(owner, 1000, 5000).unwrap().unwrap();
    assert_eq!(again.attempts, 1);
    assert_consistent(&store);
}

#[test]
fn claiming_is_fair_across_users() {
    let (_d, store) = open();
    let owner = Uuid::now_v7();
    // User 1 floods 50 links first; user 2 sends one after.
    for i in 0..50 {
        store
            .enqueue(new_job(1, &format!("https://a/{i}")), LOOSE, 1)
            .unwrap();
    }
    store.enqueue(new_job(2, "https://b/1"), LOOSE, 2).unwrap();
    let first = store.claim(owner, 1000, 10).unwrap().unwrap();
    let second = store.claim(owner, 1000, 11).unwrap().unwrap();
    let users = [first.user_id, second.user_id];
    assert!(users.contains(&2), "user 2 was starved: {users:?}");
    // Within a user, jobs run in the order they may run.
    let next = store.claim(owner, 1000, 12).unwrap().unwrap();
    assert_eq!(next.user_id, 1);
    assert!(next.id > first.id.min(second.id));
    assert_consistent(&store);
}

#[test]
fn enqueue_enforces_limits_atomically() {
    let (_d, store) = open();
    let limits = EnqueueLimits {
        per_user_active: 2,
        per_user_per_hour: 3,
        queue_capacity: 4,
        exempt: false,
    };
    store
        .enqueue(new_job(1, "https://a/1"), limits, 1000)
        .unwrap();
    store
        .enqueue(new_job(1, "https://a/2"), limits, 1001)
        .unwrap();
    let err = store
        .enqueue(new_job(1, "https://a/3"), limits, 1002)
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Refused(Refusal::UserActive { limit: 2 })),
        "{err:?}"
    );

    // Finish one: the active slot frees, but the hourly window remembers.
    let owner = Uuid::now_v7();
    let j = store.claim(owner, 1000, 1003).unwrap().unwrap();
    finish(&store, owner, &j, 1004);
    store
        .enqueue(new_job(1, "https://a/3"), limits, 1005)
        .unwrap();
    let j = store.claim(owner, 1000, 1006).unwrap().unwrap();
    finish(&store, owner, &j, 1007);
    let err = store
        .enqueue(new_job(1, "https://a/4"), limits, 1008)
        .unwrap_err();
    match err {
        StoreError::Refused(Refusal::UserHourly { limit: 3, retry_at }) => {
            assert_eq!(
                retry_at,
                1000 + 3_600_000,
                "the oldest enqueue leaves the window first"
            )
        }
        e => panic!("expected hourly refusal, got {e:?}"),
    }
    // An hour later it is accepted again.
    store
        .enqueue(new_job(1, "https://a/4"), limits, 1000 + 3_600_000)
        .unwrap();

    // Global capacity counts active jobs of everyone; admins are not exempt from it.
    let admin = EnqueueLimits {
        exempt: true,
        ..limits
    };
    store
        .enqueue(new_job(2, "https://b/1"), admin, 5_000_000)
        .unwrap();
    store
        .enqueue(new_job(2, "https://b/2"), admin, 5_000_001)
        .unwrap();
    // Active now: a/2, a/4, b/1, b/2.
    assert_eq!(store.counts().unwrap().active(), 4);
    let err = store
        .enqueue(new_job(2, "https://b/3"), admin, 5_000_003)
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Refused(Refusal::QueueFull { capacity: 4 })),
        "{err:?}"
    );
    assert_consistent(&store);
}

#[test]
fn concurrent_claimers_never_take_the_same_job() {
    let (_d, store) = open();
    let store = std::sync::Arc::new(store);
    for i in 0..40 {
        store
            .enqueue(new_job(i % 5, &format!("https://a/{i}")), LOOSE, 1)
            .unwrap();
    }
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            std::thread::spawn(move || {
                let owner = Uuid::now_v7();
                let mut got = Vec::new();
                while let Some(j) = store.claim(owner, 1000, 2).unwrap() {
                    got.push(j.id);
                }
                got
            })
        })
        .collect();
    let mut all: Vec<JobId> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    assert_eq!(all.len(), 40);
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 40, "a job was claimed twice");
    assert_eq!(store.counts().unwrap().downloading, 40);
    assert_consistent(&store);
}

/// A change is acknowledged once it is durable, before sled's trees have it
/// (the log's applier puts it there): every walk of those trees must still
/// see it the moment its call returned, whatever other writers do meanwhile.
#[test]
fn a_walk_sees_every_change_acknowledged_before_it() {
    let (_dir, store) = open();
    let owner = Uuid::new_v4();
    std::thread::scope(|scope| {
        for t in 0..4u64 {
            let store = &store;
            scope.spawn(move || {
                for i in 0..150u64 {
                    let user = 100 + t;
                    let job = store
                        .enqueue(new_job(user, &format!("https://a/{t}/{i}")), LOOSE, 1_000)
                        .unwrap()
                        .job;
                    let listed = store.list_user(user, 1).unwrap();
                    assert_eq!(
                        listed.first().map(|j| j.id),
                        Some(job.id),
                        "the newest job of user {user} right after its enqueue"
                    );
                    assert!(store.counts().unwrap().queued >= 1);
                    // Queued, or already claimed by another thread (it moves
                    // only that way, so it is in the second list if not in
                    // the first).
                    let in_state = |s: JobState| {
                        store
                            .list_state(s, usize::MAX)
                            .unwrap()
                            .iter()
                            .any(|j| j.id == job.id)
                    };
                    assert!(in_state(JobState::Queued) || in_state(JobState::Downloading));
                    // Claimed by someone, or still queued for a claim to find.
                    let claimed = store.claim(owner, 60_000, 2_000).unwrap();
                    assert!(
                        claimed.is_some(),
                        "a claim found nothing right after an enqueue"
                    );
                }
            });
        }
    });
    assert_eq!(store.counts().unwrap().downloading, 600);
    assert_consistent(&store);
}

#[test]
fn find_by_short_id_and_list_by_user() {
    let (_d, store) = open();
    let a = store
        .enqueue(new_job(7, "https://a/1"), LOOSE, 1)
        .unwrap()
        .job;
    std::thread::sleep(std::time::Duration::from_millis(2));
    let b = store
        .enqueue(new_job(7, "https://a/2"), LOOSE, 2)
        .unwrap()
        .job;
    assert_eq!(store.find(&a.id.to_string()).unwrap().unwrap().id, a.id);
    assert_eq!(
        store.find("zz").unwrap(),
        Err(FindError::Invalid("zz".into()))
    );
    assert_eq!(
        store.find("ffffffff").unwrap(),
        Err(FindError::NotFound("ffffffff".into()))
    );
    // The short id users see finds the job, as does a prefix of the full id.
    assert_eq!(store.find(&a.id.short()).unwrap().unwrap().id, a.id);
    assert_eq!(
        store.find(&b.id.to_string()[..12]).unwrap().unwrap().id,
        b.id
    );
    // Both full ids share their first digits (same minute): ambiguous.
    assert!(matches!(
        store.find(&a.id.to_string()[..9]).unwrap(),
        Err(FindError::Ambiguous(_))
    ));
    let mine = store.list_user(7, 10).unwrap();
    assert_eq!(
        mine.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![b.id, a.id],
        "newest first"
    );
    assert!(store.list_user(8, 10).unwrap().is_empty());
}

#[test]
fn retention_prunes_old_finished_jobs_in_bounded_batches() {
    let (_d, store) = open();
    let owner = Uuid::now_v7();
    for i in 0..5 {
        store
            .enqueue(new_job(1, &format!("https://a/{i}")), LOOSE, 1)
            .unwrap();
        let j = store.claim(owner, 1000, 1).unwrap().unwrap();
        finish(&store, owner, &j, 1);
    }
    let keep = store
        .enqueue(new_job(1, "https://a/live"), LOOSE, 2)
        .unwrap()
        .job;
    let cutoff = tgdl::job::now_ms() + 10_000;
    assert_eq!(store.prune_finished(cutoff, 2).unwrap(), 2);
    assert_eq!(store.counts().unwrap().done, 3);
    assert_consistent(&store);
    assert_eq!(store.prune_finished(cutoff, 100).unwrap(), 3);
    assert_eq!(store.counts().unwrap().done, 0);
    assert!(
        store.get(keep.id).unwrap().is_some(),
        "active jobs are never pruned"
    );
    assert_eq!(store.list_user(1, 100).unwrap().len(), 1);
    // Nothing is older than a cutoff in the past.
    assert_eq!(store.prune_finished(0, 100).unwrap(), 0);
    assert_consistent(&store);
}

#[test]
fn a_corrupt_record_is_quarantined_and_unlinked_without_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let (bad, good) = {
        let store = SledStore::open(&path).unwrap();
        let bad = store
            .enqueue(new_job(1, "https://a/bad"), LOOSE, 1)
            .unwrap()
            .job;
        let good = store
            .enqueue(new_job(1, "https://a/good"), LOOSE, 1)
            .unwrap()
            .job;
        (bad, good)
    };
    // Scribble over one record with sled directly, as a disk error would.
    {
        let db = support::reopen(|| sled::open(&path));
        db.open_tree("jobs")
            .unwrap()
            .insert(bad.id.as_bytes(), &[1u8, 0xff, 0xfe][..])
            .unwrap();
        db.flush().unwrap();
    }
    let store = support::reopen(|| SledStore::open(&path));
    let listed = store.list_state(JobState::Queued, 10).unwrap();
    assert_eq!(
        listed.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![good.id]
    );
    let q = store.quarantined().unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].key, bad.id.as_bytes().to_vec());
    assert_eq!(q[0].bytes, vec![1u8, 0xff, 0xfe]);
    assert_eq!(store.counts().unwrap().queued, 1);
    // The scheduler no longer offers the quarantined job.
    let owner = Uuid::now_v7();
    assert_eq!(store.claim(owner, 1000, 5).unwrap().unwrap().id, good.id);
    assert!(store.claim(owner, 1000, 5).unwrap().is_none());
    let r = store.check_invariants().unwrap();
    assert!(r.problems.is_empty(), "{:#?}", r.problems);
    assert_eq!(r.quarantined, 1);
}

/// Three jobs of user 1 taken to done at times 1, 2 and 3, in a store at
/// `path` that is closed again; their ids, oldest first.
fn three_done(path: &std::path::Path) -> Vec<JobId> {
    let store = SledStore::open(path).unwrap();
    let owner = Uuid::now_v7();
    (1..=3)
        .map(|t| {
            store
                .enqueue(new_job(1, &format!("https://a/{t}")), LOOSE, t)
                .unwrap();
            let j = store.claim(owner, 1000, t).unwrap().unwrap();
            finish(&store, owner, &j, t).id
        })
        .collect()
}

/// The `by_state` keys sled holds in the closed store at `path`, by state.
fn state_entries(path: &std::path::Path) -> Vec<(JobState, JobId)> {
    let db = support::reopen(|| sled::open(path));
    let tree = db.open_tree("by_state").unwrap();
    tree.iter()
        .keys()
        .map(|k| {
            let k = k.unwrap();
            let state = JobState::from_u8(k[0]).expect("a state byte");
            (state, JobId::from_slice(&k[1..]).expect("an id"))
        })
        .collect()
}

fn ids(jobs: &[Job]) -> Vec<JobId> {
    jobs.iter().map(|j| j.id).collect()
}

/// Done jobs get no `by_state` entry (schema 4: they are nearly all of a
/// store, and their entries cost disk): they are still listed in both
/// orders, counted and pruned, and the check is clean.
#[test]
fn done_jobs_are_listed_counted_and_pruned_without_a_state_entry() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let done = three_done(&path);
    let queued = {
        let store = SledStore::open(&path).unwrap();
        store
            .enqueue(new_job(2, "https://a/waits"), LOOSE, 10)
            .unwrap()
            .job
    };
    assert_eq!(
        state_entries(&path),
        vec![(JobState::Queued, queued.id)],
        "only the job that is not done has an entry"
    );
    let store = support::reopen(|| SledStore::open(&path));
    assert_eq!(ids(&store.list_state(JobState::Done, 10).unwrap()), done);
    assert_eq!(
        ids(&store.list_state_rev(JobState::Done, 2).unwrap()),
        vec![done[2], done[1]],
        "newest first, as many as asked"
    );
    assert_eq!(store.counts().unwrap().done, 3);
    assert_consistent(&store);
    let cutoff = tgdl::job::now_ms();
    assert_eq!(store.prune_finished(cutoff, 2).unwrap(), 2, "oldest first");
    assert_eq!(
        ids(&store.list_state(JobState::Done, 10).unwrap()),
        vec![done[2]]
    );
    assert_eq!(store.prune_finished(cutoff, 10).unwrap(), 1);
    assert_eq!(store.counts().unwrap().done, 0);
    assert!(
        store.get(queued.id).unwrap().is_some(),
        "not finished: kept"
    );
    assert_consistent(&store);
}

/// A store written by schema 3 holds a `by_state` entry for each done job.
/// Opened by this build it is marked 4, its check is clean, each done job
/// is listed once, and pruning takes the old entries with their jobs.
#[test]
fn a_schema_3_store_keeps_the_state_entries_of_its_done_jobs_until_they_go() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let done = three_done(&path);
    {
        // What schema 3 wrote: an entry per done job, saying its user.
        let db = support::reopen(|| sled::open(&path));
        let by_state = db.open_tree("by_state").unwrap();
        for id in &done {
            by_state
                .insert(state_key(JobState::Done, *id), &1u64.to_be_bytes())
                .unwrap();
        }
        db.open_tree("meta")
            .unwrap()
            .insert("schema_version", &3u32.to_be_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    {
        let store = support::reopen(|| SledStore::open(&path));
        assert_consistent(&store);
        assert_eq!(ids(&store.list_state(JobState::Done, 10).unwrap()), done);
        assert_eq!(store.counts().unwrap().done, 3);
        let cutoff = tgdl::job::now_ms();
        assert_eq!(store.prune_finished(cutoff, 10).unwrap(), 3);
        assert_consistent(&store);
    }
    assert!(
        state_entries(&path).is_empty(),
        "pruning took the old entries"
    );
    let db = support::reopen(|| sled::open(&path));
    let schema = db.open_tree("meta").unwrap().get("schema_version").unwrap();
    assert_eq!(schema.as_deref(), Some(&4u32.to_be_bytes()[..]));
}

/// A done record that does not decode has no `by_state` entry to say whose
/// it was: it is still quarantined and unlinked, from its user's list and
/// from the done counter, and the check is clean.
#[test]
fn a_corrupt_done_record_is_unlinked_though_no_state_entry_names_its_user() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let done = three_done(&path);
    {
        let db = support::reopen(|| sled::open(&path));
        db.open_tree("jobs")
            .unwrap()
            .insert(done[1].as_bytes(), &[1u8, 0xff, 0xfe][..])
            .unwrap();
        db.flush().unwrap();
    }
    let store = support::reopen(|| SledStore::open(&path));
    assert_eq!(
        ids(&store.list_state(JobState::Done, 10).unwrap()),
        vec![done[0], done[2]]
    );
    let q = store.quarantined().unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].key, done[1].as_bytes().to_vec());
    assert_eq!(store.counts().unwrap().done, 2);
    assert_eq!(
        ids(&store.list_user(1, 10).unwrap()),
        vec![done[2], done[0]],
        "its user's list no longer names it"
    );
    let r = store.check_invariants().unwrap();
    assert!(r.problems.is_empty(), "{:#?}", r.problems);
    assert_eq!(r.quarantined, 1);
}

/// `in_flight_since` reads only the head of each in-flight record; a record
/// that does not read is quarantined and left out, as `in_flight` does.
#[test]
fn in_flight_since_quarantines_a_corrupt_in_flight_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let owner = Uuid::now_v7();
    let (bad, good) = {
        let store = SledStore::open(&path).unwrap();
        for u in [1, 2] {
            store
                .enqueue(new_job(u, &format!("https://a/{u}")), LOOSE, 1)
                .unwrap();
        }
        let bad = store.claim(owner, 60_000, 5).unwrap().unwrap();
        let good = store.claim(owner, 60_000, 6).unwrap().unwrap();
        (bad, good)
    };
    {
        let db = support::reopen(|| sled::open(&path));
        db.open_tree("jobs")
            .unwrap()
            .insert(bad.id.as_bytes(), &[2u8, 0xff, 0xfe][..])
            .unwrap();
        db.flush().unwrap();
    }
    let store = support::reopen(|| SledStore::open(&path));
    let got = store.in_flight_since().unwrap();
    assert_eq!(
        got,
        vec![tgdl::store::InFlight {
            id: good.id,
            state: JobState::Downloading,
            since: 6
        }]
    );
    let q = store.quarantined().unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].key, bad.id.as_bytes().to_vec());
    assert_eq!(store.counts().unwrap().downloading, 1);
    let r = store.check_invariants().unwrap();
    assert!(r.problems.is_empty(), "{:#?}", r.problems);
}

#[test]
fn a_second_process_sees_the_database_as_locked() {
    let (dir, _store) = open();
    // sled's lock is per process; a child process must be refused. The
    // binary's `jobs` command is such a process.
    let cfg = write_config(
        dir.path(),
        &format!("[storage]\ndata_dir = {:?}\n", dir.path()),
    );
    let out = run_tgdl(&["jobs"], &cfg);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the bot is running"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

#[test]
fn failed_jobs_reopen_only_by_retry_and_done_never() {
    let (_d, store) = open();
    let owner = Uuid::now_v7();
    let e = store
        .enqueue(new_job(1, "https://a/1"), LOOSE, 1)
        .unwrap()
        .job;
    let f = fail_cancelled(&store, e.id, JobState::Queued, 3);
    assert_eq!(f.failure.as_ref().unwrap().code, "cancelled");
    let again = store
        .update(
            e.id,
            Expect::state(JobState::Failed),
            Some(JobState::Queued),
            4,
            &|j| {
                j.failure = None;
                j.attempts = 0;
            },
        )
        .unwrap();
    assert_eq!(again.state, JobState::Queued);
    let j = store.claim(owner, 1000, 5).unwrap().unwrap();
    let d = finish(&store, owner, &j, 6);
    for to in JobState::ALL {
        assert!(store
            .update(d.id, Expect::state(JobState::Done), Some(to), 7, &|_| {})
            .is_err());
    }
    assert_consistent(&store);
}

/// Take a queued or in-flight job to `failed` as a cancel does.
fn fail_cancelled(store: &SledStore, id: JobId, from: JobState, now: u64) -> Job {
    store
        .update(
            id,
            Expect::state(from),
            Some(JobState::Cleaning),
            now,
            &|j| {
                j.failure = Some(JobError {
                    class: ErrorClass::Permanent,
                    code: "cancelled".into(),
                    text: "cancelled".into(),
                })
            },
        )
        .unwrap();
    step(store, id, JobState::Cleaning, JobState::Failed, now)
}

#[test]
fn reopen_is_held_to_the_limits_of_enqueue_and_counts_in_the_hour() {
    let (_d, store) = open();
    let limits = EnqueueLimits {
        per_user_active: 1,
        per_user_per_hour: 3,
        queue_capacity: 100,
        exempt: false,
    };
    let refusal = |e: StoreError| match e {
        StoreError::Refused(r) => r,
        e => panic!("expected a refusal, got {e:?}"),
    };
    let a = store
        .enqueue(new_job(1, "https://a/1"), limits, 1000)
        .unwrap()
        .job;
    fail_cancelled(&store, a.id, JobState::Queued, 1001);
    let b = store
        .enqueue(new_job(1, "https://a/2"), limits, 1002)
        .unwrap()
        .job;
    // Active limit: the same refusal as a new link, and nothing changed.
    let by_retry = refusal(store.reopen(a.id, limits, 1003, &|_| {}).unwrap_err());
    let by_link = refusal(
        store
            .enqueue(new_job(1, "https://a/3"), limits, 1003)
            .unwrap_err(),
    );
    assert_eq!(by_retry, Refusal::UserActive { limit: 1 });
    assert_eq!(by_retry, by_link);
    assert_eq!(store.get(a.id).unwrap().unwrap().state, JobState::Failed);
    // Hourly: the retry counts as the third job of the hour...
    fail_cancelled(&store, b.id, JobState::Queued, 1004);
    let again = store
        .reopen(a.id, limits, 1005, &|j| j.failure = None)
        .unwrap();
    assert_eq!(
        (again.state, again.failure.clone()),
        (JobState::Queued, None)
    );
    fail_cancelled(&store, a.id, JobState::Queued, 1006);
    // ... so a fourth, by retry or by link, waits for the window.
    let by_retry = refusal(store.reopen(a.id, limits, 1007, &|_| {}).unwrap_err());
    let by_link = refusal(
        store
            .enqueue(new_job(1, "https://a/4"), limits, 1007)
            .unwrap_err(),
    );
    assert_eq!(
        by_retry,
        Refusal::UserHourly {
            limit: 3,
            retry_at: 1000 + 3_600_000
        }
    );
    assert_eq!(by_retry, by_link);
    // The queue's capacity binds admins' retries too.
    let full = EnqueueLimits {
        queue_capacity: 0,
        exempt: true,
        ..limits
    };
    assert_eq!(
        refusal(store.reopen(a.id, full, 1008, &|_| {}).unwrap_err()),
        Refusal::QueueFull { capacity: 0 }
    );
    // Only a failed job reopens.
    let done = store
        .enqueue(new_job(2, "https://b/1"), LOOSE, 1009)
        .unwrap()
        .job;
    assert!(matches!(
        store.reopen(done.id, LOOSE, 1010, &|_| {}),
        Err(StoreError::Conflict { .. })
    ));
    assert_consistent(&store);
}

#[test]
fn history_stays_bounded_over_many_retries() {
    let (_d, store) = open();
    let owner = Uuid::now_v7();
    let e = store
        .enqueue(new_job(1, "https://a/1"), LOOSE, 1)
        .unwrap()
        .job;
    let mut now = 2;
    let mut state = JobState::Queued;
    for _ in 0..200 {
        if state == JobState::Failed {
            store
                .reopen(e.id, LOOSE, now, &|j| j.failure = None)
                .unwrap();
            now += 1;
        }
        store.claim(owner, 1000, now).unwrap().unwrap();
        now += 1;
        fail_cancelled(&store, e.id, JobState::Downloading, now);
        now += 1;
        state = JobState::Failed;
    }
    let j = store.get(e.id).unwrap().unwrap();
    assert_eq!(j.history.len(), tgdl::job::HISTORY_MAX);
    assert_eq!(
        j.history[0],
        (JobState::Queued, 1),
        "the first entry is kept"
    );
    assert_eq!(j.history.last().unwrap().0, JobState::Failed);
    assert!(tgdl::store::codec::encode(&j).unwrap().len() < 2048);
    assert_consistent(&store);
}

/// A claim that returns `None` while a due job is queued leaves a worker
/// idle until its next poll (a second) with work waiting. Each thread
/// enqueues a job and then claims one, so every claim runs while at least
/// its own thread's job is queued and due: it must find a job, whichever
/// thread's, however the other threads' enqueues, claims and transitions
/// (which move users in `turns`) race its walk.
#[test]
fn a_claim_finds_a_due_job_while_others_change_the_queue() {
    const PER_THREAD: u64 = 400;
    let (_d, store) = open();
    std::thread::scope(|scope| {
        for t in 0..4u64 {
            let store = &store;
            scope.spawn(move || {
                let owner = Uuid::now_v7();
                for n in 0..PER_THREAD {
                    let user = t * 10 + n % 5;
                    store
                        .enqueue(new_job(user, &format!("https://a/{t}/{n}")), LOOSE, 1)
                        .unwrap();
                    let job = store.claim(owner, 60_000, 2).unwrap();
                    let job = job.unwrap_or_else(|| {
                        panic!("thread {t}, claim {n}: nothing found with a due job queued")
                    });
                    finish(store, owner, &job, 3);
                }
            });
        }
    });
    assert_eq!(store.counts().unwrap().done, 4 * PER_THREAD);
    assert_consistent(&store);
}
