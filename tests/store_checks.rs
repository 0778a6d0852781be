//! The invariant checker can fail: for each derived tree, a small real store
//! is built through the store's own API, closed, corrupted in exactly that
//! tree through raw sled (an entry removed, a stray one added, a value
//! changed), reopened, and `check_invariants` must report a problem naming
//! the tree. The control: the same store, untouched, reports nothing.
//!
//! The crash harnesses (`store_crash`, `kill9`) rely on this checker as their
//! oracle after every kill; these tests are what make its silence mean
//! something.

mod support;

use std::path::Path;

use support::store_fixture::{
    build, new_job, state_key, update_json, Fixture, LATER, LEASE, LOOSE,
};
use tgdl::job::{Job, JobId, JobState, Lease, MediaKind};
use tgdl::store::codec;
use tgdl::store::{CachedMedia, JobStore, SledStore, UserRecord};
use uuid::Uuid;

/// Build a fresh fixture, let `corrupt` change the closed database through
/// raw sled, reopen it with the store and return what the check reports.
fn corrupted(corrupt: impl FnOnce(&sled::Db, &Fixture)) -> Vec<String> {
    let f = build();
    {
        let db = support::reopen(|| sled::open(&f.path));
        corrupt(&db, &f);
        db.flush().unwrap();
    }
    check(&f.path)
}

fn check(path: &Path) -> Vec<String> {
    let store = support::reopen(|| SledStore::open(path));
    let report = store.check_invariants().unwrap();
    eprintln!("{:#?}", report.problems);
    report.problems
}

/// Some problem names `tree` (problems start with the tree's name).
#[track_caller]
fn assert_names(tree: &str, what: &str, problems: &[String]) {
    assert!(
        problems.iter().any(|p| p.starts_with(&format!("{tree}: "))),
        "{what}: no problem names {tree}: {problems:#?}"
    );
}

fn tree(db: &sled::Db, name: &str) -> sled::Tree {
    db.open_tree(name).unwrap()
}

fn user_key(user: u64, id: JobId) -> Vec<u8> {
    let mut k = user.to_be_bytes().to_vec();
    k.extend_from_slice(id.as_bytes());
    k
}

fn ready_key(user: u64, next: u64, id: JobId) -> Vec<u8> {
    let mut k = user.to_be_bytes().to_vec();
    k.extend_from_slice(&next.to_be_bytes());
    k.extend_from_slice(id.as_bytes());
    k
}

fn turn_key(at: u64, user: u64) -> Vec<u8> {
    let mut k = at.to_be_bytes().to_vec();
    k.extend_from_slice(&user.to_be_bytes());
    k
}

fn request_key(job: &Job) -> Vec<u8> {
    let mut k = job.chat_id.to_be_bytes().to_vec();
    k.extend_from_slice(&job.request_msg_id.to_be_bytes());
    k.extend_from_slice(job.url.as_bytes());
    k
}

fn short_key(id: JobId) -> Vec<u8> {
    let mut k = id.as_bytes()[12..].to_vec();
    k.extend_from_slice(id.as_bytes());
    k
}

/// `count` and the state's byte (`keys::count_key`).
fn count_key(s: JobState) -> Vec<u8> {
    count_key_of(s.as_u8())
}

fn count_key_of(state_byte: u8) -> Vec<u8> {
    let mut k = b"count".to_vec();
    k.push(state_byte);
    k
}

fn user_record(db: &sled::Db, user: u64) -> UserRecord {
    codec::decode(&tree(db, "users").get(user.to_be_bytes()).unwrap().unwrap()).unwrap()
}

fn put_job(db: &sled::Db, job: &Job) {
    tree(db, "jobs")
        .insert(job.id.as_bytes(), codec::encode(job).unwrap())
        .unwrap();
}

#[test]
fn an_untouched_store_reports_nothing() {
    let f = build();
    // Reopened from disk, as the crash harnesses do.
    let problems = check(&f.path);
    assert!(problems.is_empty(), "{problems:#?}");
    let store = support::reopen(|| SledStore::open(&f.path));
    let r = store.check_invariants().unwrap();
    assert_eq!(r.jobs, 6);
    assert_eq!(r.counters, r.recount);
    assert_eq!(r.quarantined, 0);
    assert_eq!(r.recount.queued, 2);
    assert_eq!(r.recount.done, 1);
    // The fixture really has what the other tests corrupt.
    assert!(store.cache_get(&f.done.cache_key()).unwrap().is_some());
    assert_eq!(store.inbox_pending().unwrap().len(), 2);
    // Read-only: checking twice changes nothing and still finds nothing.
    let again = store.check_invariants().unwrap();
    assert!(again.problems.is_empty());
    assert_eq!(again.quarantined, 0);
}

#[test]
fn by_state_corruption_is_reported() {
    let p = corrupted(|db, f| {
        tree(db, "by_state")
            .remove(state_key(JobState::Failed, f.failed.id))
            .unwrap();
    });
    assert_names("by_state", "entry removed", &p);
    // A done job has no entry (schema 4); one that says done for a job that
    // is not is still a stray.
    let p = corrupted(|db, f| {
        tree(db, "by_state")
            .insert(
                state_key(JobState::Done, f.queued.id),
                &f.queued.user_id.to_be_bytes(),
            )
            .unwrap();
    });
    assert_names("by_state", "done entry for a queued job", &p);
    let p = corrupted(|db, f| {
        tree(db, "by_state")
            .insert(
                state_key(JobState::Queued, f.downloading.id),
                &2u64.to_be_bytes(),
            )
            .unwrap();
    });
    assert_names("by_state", "stray entry", &p);
    let p = corrupted(|db, f| {
        tree(db, "by_state")
            .insert(
                state_key(JobState::Queued, f.queued.id),
                &9u64.to_be_bytes(),
            )
            .unwrap();
    });
    assert_names("by_state", "value changed (user)", &p);
}

#[test]
fn by_user_corruption_is_reported() {
    let p = corrupted(|db, f| {
        tree(db, "by_user")
            .remove(user_key(2, f.failed.id))
            .unwrap();
    });
    assert_names("by_user", "entry removed", &p);
    let p = corrupted(|db, _| {
        tree(db, "by_user")
            .insert(user_key(2, JobId::new()), &[])
            .unwrap();
    });
    assert_names("by_user", "stray entry for a missing job", &p);
    let p = corrupted(|db, f| {
        let t = tree(db, "by_user");
        t.remove(user_key(1, f.done.id)).unwrap();
        t.insert(user_key(9, f.done.id), &[]).unwrap();
    });
    assert_names("by_user", "entry moved to another user", &p);
}

/// A user record that does not decode is rebuilt from the user's jobs by
/// the next change that reads it (the change then runs), the bad bytes kept
/// in the quarantine; the rebuilt record puts the user back in `turns`, so
/// their queued jobs are claimed again.
#[test]
fn an_undecodable_user_record_is_rebuilt_by_the_next_change() {
    let f = build();
    {
        let db = support::reopen(|| sled::open(&f.path));
        tree(&db, "users")
            .insert(1u64.to_be_bytes(), &[1u8, 0xff][..])
            .unwrap();
        db.flush().unwrap();
    }
    let store = support::reopen(|| SledStore::open(&f.path));
    let new = store
        .enqueue(new_job(1, "https://media.test/after", None), LOOSE, 50_000)
        .expect("the enqueue runs once the record is rebuilt")
        .job;
    let report = store.check_invariants().unwrap();
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
    assert!(
        store
            .quarantined()
            .unwrap()
            .iter()
            .any(|q| q.tree == "users"),
        "the bad bytes are kept"
    );
    let owner = Uuid::now_v7();
    let mut claimed: Vec<JobId> = std::iter::from_fn(|| store.claim(owner, LEASE, 60_000).unwrap())
        .map(|j| j.id)
        .collect();
    claimed.sort();
    let mut want = vec![f.queued.id, new.id];
    want.sort();
    assert_eq!(claimed, want, "user 1's queued jobs, and nothing not due");
}

#[test]
fn users_corruption_is_reported() {
    let p = corrupted(|db, _| {
        tree(db, "users").remove(1u64.to_be_bytes()).unwrap();
    });
    assert_names("users", "record removed", &p);
    let p = corrupted(|db, _| {
        let stray = UserRecord {
            active: 1,
            queued: 0,
            ..Default::default()
        };
        tree(db, "users")
            .insert(77u64.to_be_bytes(), codec::encode(&stray).unwrap())
            .unwrap();
    });
    assert_names("users", "stray record of a user with no jobs", &p);
    let p = corrupted(|db, _| {
        let mut rec = user_record(db, 2);
        rec.active += 1;
        tree(db, "users")
            .insert(2u64.to_be_bytes(), codec::encode(&rec).unwrap())
            .unwrap();
    });
    assert_names("users", "active count changed", &p);
    let p = corrupted(|db, _| {
        tree(db, "users")
            .insert(3u64.to_be_bytes(), &[1u8, 0xff][..])
            .unwrap();
    });
    assert_names("users", "undecodable record", &p);
}

#[test]
fn ready_corruption_is_reported() {
    let p = corrupted(|db, f| {
        tree(db, "ready")
            .remove(ready_key(1, f.queued.next_attempt_at, f.queued.id))
            .unwrap();
    });
    assert_names("ready", "entry removed", &p);
    let p = corrupted(|db, f| {
        tree(db, "ready")
            .insert(ready_key(1, 5, f.done.id), &[])
            .unwrap();
    });
    assert_names("ready", "stray entry for a done job", &p);
    let p = corrupted(|db, f| {
        let t = tree(db, "ready");
        t.remove(ready_key(3, LATER, f.later.id)).unwrap();
        t.insert(ready_key(3, 1, f.later.id), &[]).unwrap();
    });
    assert_names("ready", "entry moved to another time (backoff skipped)", &p);
}

#[test]
fn turns_corruption_is_reported() {
    let p = corrupted(|db, _| {
        let at = user_record(db, 1).last_served;
        tree(db, "turns").remove(turn_key(at, 1)).unwrap();
    });
    assert_names("turns", "entry removed", &p);
    let p = corrupted(|db, _| {
        tree(db, "turns").insert(turn_key(5, 77), &[]).unwrap();
    });
    assert_names("turns", "stray turn of a user with no jobs", &p);
    let p = corrupted(|db, _| {
        tree(db, "turns").insert(turn_key(5, 2), &[]).unwrap();
    });
    assert_names("turns", "stray turn of a user with nothing queued", &p);
    let p = corrupted(|db, _| {
        let at = user_record(db, 3).last_served;
        let t = tree(db, "turns");
        t.remove(turn_key(at, 3)).unwrap();
        t.insert(turn_key(at + 1, 3), &[]).unwrap();
    });
    assert_names("turns", "entry moved in the turn order", &p);
}

#[test]
fn cache_corruption_is_reported() {
    let p = corrupted(|db, f| {
        tree(db, "cache").remove(f.done.cache_key()).unwrap();
    });
    assert_names("cache", "delivered media forgotten", &p);
    let p = corrupted(|db, f| {
        let t = tree(db, "cache");
        let mut c: CachedMedia =
            codec::decode(&t.get(f.done.cache_key()).unwrap().unwrap()).unwrap();
        c.file_id = "someone-elses-file".into();
        t.insert(f.done.cache_key(), codec::encode(&c).unwrap())
            .unwrap();
    });
    assert_names("cache", "entry points at other media", &p);
    let p = corrupted(|db, f| {
        tree(db, "cache")
            .insert(f.queued.cache_key(), &[1u8, 2, 3][..])
            .unwrap();
    });
    assert_names("cache", "stray undecodable entry", &p);
    let p = corrupted(|db, _| {
        let c = CachedMedia {
            file_id: "x".into(),
            sent_as: MediaKind::Audio,
            title: None,
            file_size: None,
            cached_at: 1,
        };
        tree(db, "cache")
            .insert("not a cache key", codec::encode(&c).unwrap())
            .unwrap();
    });
    assert_names("cache", "stray entry under a malformed key", &p);
}

#[test]
fn requests_corruption_is_reported() {
    let p = corrupted(|db, f| {
        tree(db, "requests").remove(request_key(&f.done)).unwrap();
    });
    assert_names(
        "requests",
        "entry removed (a redelivery would make a second job)",
        &p,
    );
    let p = corrupted(|db, f| {
        let mut stray = f.done.clone();
        stray.url = "https://media.test/never".into();
        tree(db, "requests")
            .insert(request_key(&stray), JobId::new().as_bytes())
            .unwrap();
    });
    assert_names("requests", "stray entry for a missing job", &p);
    let p = corrupted(|db, f| {
        tree(db, "requests")
            .insert(request_key(&f.queued), f.done.id.as_bytes())
            .unwrap();
    });
    assert_names("requests", "entry points at another job", &p);
}

#[test]
fn shorts_corruption_is_reported() {
    let p = corrupted(|db, f| {
        tree(db, "shorts")
            .remove(short_key(f.uploading.id))
            .unwrap();
    });
    assert_names("shorts", "entry removed", &p);
    let p = corrupted(|db, _| {
        tree(db, "shorts")
            .insert(short_key(JobId::new()), &[])
            .unwrap();
    });
    assert_names("shorts", "stray entry for a missing job", &p);
    let p = corrupted(|db, f| {
        let mut k = short_key(f.queued.id);
        k[0] ^= 0xff;
        tree(db, "shorts").insert(k, &[]).unwrap();
    });
    assert_names("shorts", "entry under the wrong short id", &p);
}

#[test]
fn counter_corruption_is_reported() {
    let p = corrupted(|db, _| {
        tree(db, "meta")
            .insert(count_key(JobState::Queued), &5u64.to_be_bytes())
            .unwrap();
    });
    assert_names("counters", "queued counter changed", &p);
    let p = corrupted(|db, _| {
        tree(db, "meta").remove(count_key(JobState::Done)).unwrap();
    });
    assert_names("counters", "done counter removed", &p);
    let p = corrupted(|db, _| {
        tree(db, "meta")
            .insert(count_key_of(0), &1u64.to_be_bytes())
            .unwrap();
    });
    assert_names("counters", "stray counter of no state", &p);
}

#[test]
fn inbox_corruption_is_reported() {
    let p = corrupted(|db, _| {
        tree(db, "inbox")
            .insert(&[0u8, 9, 9][..], &b"{}"[..])
            .unwrap();
    });
    assert_names("inbox", "stray key that is no update id", &p);
    let p = corrupted(|db, _| {
        tree(db, "inbox").insert(7u32.to_be_bytes(), &[]).unwrap();
    });
    assert_names("inbox", "update emptied", &p);
    let p = corrupted(|db, _| {
        tree(db, "inbox")
            .insert(8u32.to_be_bytes(), &b"{\"update_id\":8,"[..])
            .unwrap();
    });
    assert_names("inbox", "update truncated (not JSON)", &p);
    let p = corrupted(|db, _| {
        tree(db, "inbox")
            .insert(9u32.to_be_bytes(), update_json(8).as_bytes())
            .unwrap();
    });
    assert_names("inbox", "update stored under another id", &p);
}

#[test]
fn lease_corruption_is_reported() {
    let p = corrupted(|db, f| {
        let mut j = f.downloading.clone();
        j.lease = None;
        put_job(db, &j);
    });
    assert_names("leases", "downloading job without a lease", &p);
    let p = corrupted(|db, f| {
        let mut j = f.uploading.clone();
        j.lease = None;
        put_job(db, &j);
    });
    assert_names("leases", "uploading job without a lease", &p);
    let p = corrupted(|db, f| {
        let mut j = f.failed.clone();
        j.lease = Some(Lease {
            owner: Uuid::now_v7(),
            until: LATER,
        });
        put_job(db, &j);
    });
    assert_names("leases", "failed job still leased", &p);
}

#[test]
fn a_record_changed_behind_the_indexes_is_reported() {
    // The record says done, every index still says queued.
    let p = corrupted(|db, f| {
        let mut j = f.queued.clone();
        j.state = JobState::Done;
        j.history.push((JobState::Done, 2_000));
        put_job(db, &j);
    });
    for t in ["by_state", "ready", "users", "turns", "counters"] {
        assert_names(t, "record moved to done behind the indexes", &p);
    }
    // A record whose state and history disagree.
    let p = corrupted(|db, f| {
        let mut j = f.queued.clone();
        j.history.push((JobState::Downloading, 2_000));
        put_job(db, &j);
    });
    assert_names("jobs", "history ends elsewhere", &p);
}
