//! What the store's unit tests share: limits that refuse nothing, an
//! enqueue of a numbered link, and a copy of the store's files.

use std::path::Path;

use super::SledStore;
use crate::job::{Job, JobId, JobOptions, JobState, NewJob};
use crate::store::{EnqueueLimits, Expect, JobStore};

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
