//! A small real sled store built through the store's own API, with a job in
//! every state, a delivery (so the cache has an entry), settings and two
//! pending updates: what the invariant-checker tests corrupt and what the
//! export/import tests move.

use std::path::PathBuf;

use tgdl::job::{
    Delivery, ErrorClass, Job, JobError, JobId, JobOptions, JobState, MediaKind, NewJob,
};
use tgdl::store::{EnqueueLimits, Expect, JobStore, SledStore, UserSettings};
use uuid::Uuid;

pub const LOOSE: EnqueueLimits = EnqueueLimits {
    per_user_active: 1000,
    per_user_per_hour: 1000,
    queue_capacity: 100_000,
    exempt: false,
};
pub const LEASE: u64 = 60_000;

/// A `by_state` key as the store lays it out (`[state][id]`; the layout is
/// private to the crate), for tests that write sled's trees directly.
pub fn state_key(s: JobState, id: JobId) -> Vec<u8> {
    let mut k = vec![s.as_u8()];
    k.extend_from_slice(id.as_bytes());
    k
}
pub const LATER: u64 = 9_000_000_000_000;

/// A small store with a job in every state, a delivery (so the cache has an
/// entry), settings and two inbox updates.
pub struct Fixture {
    pub _dir: tempfile::TempDir,
    pub path: PathBuf,
    /// User 1: delivered and done.
    pub done: Job,
    /// User 1: queued and due.
    pub queued: Job,
    /// User 2: failed.
    pub failed: Job,
    /// User 2: downloading.
    pub downloading: Job,
    /// User 3: uploading.
    pub uploading: Job,
    /// User 3: queued, not before `LATER`.
    pub later: Job,
}

pub fn new_job(user: u64, url: &str, not_before: Option<u64>) -> NewJob {
    NewJob {
        chat_id: user as i64 * 10,
        user_id: user,
        request_msg_id: 5,
        lang: "en".into(),
        url: url.into(),
        options: JobOptions::default(),
        parent: None,
        not_before,
    }
}

pub fn build() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let store = SledStore::open(&path).unwrap();
    let owner = Uuid::now_v7();
    let enqueue = |user, url: &str, at, not_before| {
        store
            .enqueue(new_job(user, url, not_before), LOOSE, at)
            .unwrap()
            .job
    };
    let claim = |want: &Job, at| {
        let got = store.claim(owner, LEASE, at).unwrap().unwrap();
        assert_eq!(got.id, want.id, "claim takes the only due job");
        got
    };
    let step = |job: &Job, from, to, at, edit: &(dyn Fn(&mut Job) + Sync)| {
        store
            .update(job.id, Expect::state(from), Some(to), at, edit)
            .unwrap()
    };
    use JobState::*;

    let done = enqueue(1, "https://media.test/done", 1_000, None);
    claim(&done, 1_001);
    step(&done, Downloading, Uploading, 1_002, &|j| {
        j.file_path = Some("/d/done.mp4".into());
        j.file_size = Some(10);
        j.title = Some("done".into());
    });
    step(&done, Uploading, Cleaning, 1_003, &|j| {
        j.delivery = Some(Delivery {
            message_id: 77,
            file_id: "file-of-done".into(),
            sent_as: MediaKind::Video,
        });
    });
    let done = step(&done, Cleaning, Done, 1_004, &|j| j.file_path = None);

    let failed = enqueue(2, "https://media.test/failed", 1_010, None);
    claim(&failed, 1_011);
    step(&failed, Downloading, Cleaning, 1_012, &|j| {
        let e = JobError {
            class: ErrorClass::Permanent,
            code: "unsupported".into(),
            text: "no".into(),
        };
        j.failure = Some(e.clone());
        j.last_error = Some(e);
    });
    let failed = step(&failed, Cleaning, Failed, 1_013, &|_| {});

    let downloading = enqueue(2, "https://media.test/downloading", 1_020, None);
    let downloading = claim(&downloading, 1_021);

    let uploading = enqueue(3, "https://media.test/uploading", 1_030, None);
    claim(&uploading, 1_031);
    let uploading = step(&uploading, Downloading, Uploading, 1_032, &|j| {
        j.file_path = Some("/d/up.mp4".into());
    });

    let queued = enqueue(1, "https://media.test/queued", 1_040, None);
    let later = enqueue(3, "https://media.test/later", 1_041, Some(LATER));

    store
        .put_settings(
            1,
            &UserSettings {
                ask: false,
                ..Default::default()
            },
        )
        .unwrap();
    store
        .inbox_put(&[
            (7, update_json(7).into_bytes()),
            (8, update_json(8).into_bytes()),
        ])
        .unwrap();
    let report = store.check_invariants().unwrap();
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
    drop(store);
    Fixture {
        _dir: dir,
        path,
        done,
        queued,
        failed,
        downloading,
        uploading,
        later,
    }
}

pub fn update_json(id: u32) -> String {
    format!(
        r#"{{"update_id":{id},"message":{{"message_id":5,"date":1,"chat":{{"id":10,"type":"private"}},"text":"https://media.test/x"}}}}"#
    )
}
