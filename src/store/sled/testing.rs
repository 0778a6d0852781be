//! What the store's unit tests share: limits that refuse nothing, an
//! enqueue of a numbered link, and a copy of the store's files.

use std::path::Path;

use super::SledStore;
use crate::job::{Job, JobId, JobOptions, JobState, NewJob};
use crate::store::{EnqueueLimits, Expect, JobStore, StoreError};

/// Limits no test here reaches (tests that need tighter ones start from these).
pub(super) const LOOSE: EnqueueLimits = EnqueueLimits {
    per_user_active: 100_000,
    per_user_per_hour: 100_000,
    queue_capacity: 100_000,
    exempt: false,
};

/// Enqueue link number `n` of `user`, at time 1,000.
pub(super) fn enqueue(store: &SledStore, user: u64, n: u32) -> Job {
    let new = NewJob {
        chat_id: user as i64,
        user_id: user,
        request_msg_id: n as i32,
        lang: "en".into(),
        url: format!("https://a/{user}/{n}"),
        options: JobOptions::default(),
        parent: None,
        not_before: None,
    };
    store.enqueue(new, LOOSE, 1_000).unwrap().job
}

/// Take job `id`, claimed by `owner`, from downloading to done at time
/// 3,000, one flushed change per state, applying `edit` at each.
pub(super) fn finish(
    store: &SledStore,
    id: JobId,
    owner: uuid::Uuid,
    edit: &(dyn Fn(&mut Job) + Sync),
) {
    for (from, to) in [
        (JobState::Downloading, JobState::Uploading),
        (JobState::Uploading, JobState::Cleaning),
        (JobState::Cleaning, JobState::Done),
    ] {
        store
            .update(id, Expect::owned(from, owner), Some(to), 3_000, edit)
            .unwrap();
    }
}

/// Wait until `reached` holds, for something a store's own thread does
/// (the log's applier); fail with `what` if it has not after 30 s.
pub(super) fn wait_until(what: &str, reached: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !reached() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Open the store at `dir` again after the last handle to it was dropped.
/// Dropping a store does not wait for sled's own background thread, which
/// still holds the folder's lock for a moment: a reopen at once may find
/// it [`StoreError::InUse`] and is retried for up to 10 s, as
/// `tests/support`'s `reopen` does for the integration tests.
pub(super) fn reopen(dir: &Path) -> SledStore {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match SledStore::open(dir) {
            Ok(store) => return store,
            Err(StoreError::InUse { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("cannot reopen the store: {e:?}"),
        }
    }
}

/// Copy the store's folder `live` to `image` as it is on disk now: what
/// `kill -9` would leave.
pub(super) fn crash_image(live: &Path, image: &Path) {
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(live)
        .arg(image)
        .status()
        .unwrap();
    assert!(copied.success());
}
