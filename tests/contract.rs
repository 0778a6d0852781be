//! The store contract (`tgdl::store::Store`), written once and run against
//! every backend: sled (through `OnBlockingPool`, in a temp dir) and
//! PostgreSQL (`PgStore`, on a fresh database of the local server per
//! test). Each test ends with the backend's full invariant check.

#[path = "support/pg.rs"]
mod pg;

use std::any::Any;
use std::sync::Arc;

use tgdl::job::{
    now_ms, Delivery, FailureCode, IllegalTransition, Job, JobError, JobId, JobOptions, JobState,
    MediaKind, Millis, NewJob, HOUR_MS,
};
use tgdl::store::{
    no_edit, CachedMedia, Diagnostics, Edit, EnqueueLimits, Expect, FindError, InFlight,
    OnBlockingPool, PgStore, Refusal, SledStore, Store, StoreError, UserSettings,
};
use uuid::Uuid;

use JobState::*;

/// A store under test, and what must outlive it (its directory or
/// database), dropped after it.
struct Backend {
    store: Arc<dyn Store>,
    diag: Arc<dyn Diagnostics>,
    exclusive: bool,
    _keep: Box<dyn Any + Send>,
}

async fn sled_backend() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let engine = SledStore::open(&dir.path().join("db")).unwrap();
    let store = Arc::new(OnBlockingPool(Arc::new(engine)));
    Backend {
        store: store.clone(),
        diag: store,
        exclusive: true,
        _keep: Box::new(dir),
    }
}

async fn postgres_backend() -> Backend {
    let db = pg::TempDb::create().await;
    let store = Arc::new(PgStore::connect(&db.url).await.unwrap());
    Backend {
        store: store.clone(),
        diag: store,
        exclusive: false,
        _keep: Box::new(db),
    }
}

/// `contract_tests!({ backend => opener, ... } [test, ...])`: a module per
/// backend with one `#[tokio::test]` per test function, each given a fresh
/// store of that backend.
macro_rules! contract_tests {
    ({ $($backend:ident => $open:path),* $(,)? } $tests:tt) => {
        $( contract_tests!(@one $backend $open $tests); )*
    };
    (@one $backend:ident $open:path [ $($test:ident),* $(,)? ]) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let b = $open().await;
                    super::$test(&b).await;
                    super::assert_clean(&b).await;
                }
            )*
        }
    };
}

contract_tests!(
    {
        sled => super::sled_backend,
        postgres => super::postgres_backend,
    }
    [
        lifecycle_counts_lists_and_cache,
        wrong_state_conflicts_and_illegal_moves_change_nothing,
        another_owner_loses_the_lease,
        claims_are_fair_across_users_and_wait_for_due_time,
        per_user_active_limit,
        hourly_limit_and_its_retry_time,
        queue_capacity_binds_everyone,
        concurrent_enqueues_of_one_user_pass_the_limit_once,
        concurrent_enqueues_of_many_users_fill_the_capacity_exactly,
        a_claim_finds_a_due_job_while_others_change_the_queue,
        settings_round_trip,
        retention_prunes_old_finished_jobs_in_batches,
        same_request_is_one_job,
        reopen_of_a_failed_job,
        find_by_short_id_and_prefix,
        inbox_keeps_updates_until_done,
        finished_since_counts_per_minute,
        would_refuse_reads_without_writing,
        probes_and_backend_nature,
        a_lazy_update_is_checked_and_seen_at_once,
        in_flight_since_is_in_flight_without_whole_records,
    ]
);

// ---------------------------------------------------------------- helpers

const LOOSE: EnqueueLimits = EnqueueLimits {
    per_user_active: 1000,
    per_user_per_hour: 1000,
    queue_capacity: 100_000,
    exempt: false,
};

const LEASE: u64 = 60_000;

fn new_job(user: u64, msg: i32, url: &str) -> NewJob {
    NewJob {
        chat_id: user as i64,
        user_id: user,
        request_msg_id: msg,
        lang: "en".into(),
        url: url.into(),
        options: JobOptions::default(),
        parent: None,
        not_before: None,
    }
}

fn edit(f: impl Fn(&mut Job) + Send + Sync + 'static) -> Edit {
    Arc::new(f)
}

async fn assert_clean(b: &Backend) {
    let r = b.diag.check_invariants().await.unwrap();
    assert!(
        r.problems.is_empty(),
        "invariants broken: {:#?}",
        r.problems
    );
    assert_eq!(r.recount, r.counters);
    assert_eq!(r.counters, b.store.counts().await.unwrap());
}

async fn enqueue(b: &Backend, user: u64, msg: i32, url: &str, now: Millis) -> Job {
    let e = b
        .store
        .enqueue(new_job(user, msg, url), LOOSE, now)
        .await
        .unwrap();
    assert!(!e.duplicate);
    e.job
}

async fn step(b: &Backend, id: JobId, from: JobState, to: JobState, now: Millis) -> Job {
    b.store
        .update(id, Expect::state(from), Some(to), now, no_edit())
        .await
        .unwrap()
}

/// Claim the next job as `owner` and drive it to done with a delivery of
/// `file_id`, as the pipeline does.
async fn deliver(b: &Backend, owner: Uuid, now: Millis, file_id: &str) -> Job {
    let job = b
        .store
        .claim(owner, LEASE, now)
        .await
        .unwrap()
        .expect("a due job");
    let up = b
        .store
        .update(
            job.id,
            Expect::owned(Downloading, owner),
            Some(Uploading),
            now + 1,
            edit(|j| {
                j.file_path = Some("/x/a.mp4".into());
                j.file_size = Some(10);
                j.title = Some("A title".into());
            }),
        )
        .await
        .unwrap();
    let file = file_id.to_string();
    let cl = b
        .store
        .update(
            up.id,
            Expect::owned(Uploading, owner),
            Some(Cleaning),
            now + 2,
            edit(move |j| {
                j.delivery = Some(Delivery {
                    message_id: 9,
                    file_id: file.clone(),
                    sent_as: MediaKind::Video,
                })
            }),
        )
        .await
        .unwrap();
    step(b, cl.id, Cleaning, Done, now + 3).await
}

/// Move a queued job to failed (through cleaning, as cancel does).
async fn fail(b: &Backend, id: JobId, now: Millis) -> Job {
    b.store
        .update(
            id,
            Expect::state(Queued),
            Some(Cleaning),
            now,
            edit(|j| j.failure = Some(JobError::permanent(FailureCode::Cancelled, "cancelled"))),
        )
        .await
        .unwrap();
    step(b, id, Cleaning, Failed, now).await
}

fn ids(jobs: &[Job]) -> Vec<JobId> {
    jobs.iter().map(|j| j.id).collect()
}

// ------------------------------------------------------------------ tests

async fn lifecycle_counts_lists_and_cache(b: &Backend) {
    let t = now_ms();
    let owner = Uuid::now_v7();
    let e = b
        .store
        .enqueue(new_job(1, 1, "https://a/1"), LOOSE, t)
        .await
        .unwrap();
    assert_eq!((e.position, e.duplicate), (1, false));
    assert_eq!(e.job.state, Queued);
    let other = enqueue(b, 2, 1, "https://a/2", t + 1).await;
    assert_eq!(b.store.counts().await.unwrap().queued, 2);
    assert_eq!(b.store.get(e.job.id).await.unwrap(), Some(e.job.clone()));

    let claimed = b.store.claim(owner, LEASE, t + 10).await.unwrap().unwrap();
    assert_eq!(claimed.id, e.job.id);
    assert_eq!(claimed.state, Downloading);
    let lease = claimed.lease.unwrap();
    assert_eq!((lease.owner, lease.until), (owner, t + 10 + LEASE));
    assert_eq!(ids(&b.store.in_flight().await.unwrap()), vec![e.job.id]);

    let up = b
        .store
        .update(
            claimed.id,
            Expect::owned(Downloading, owner),
            Some(Uploading),
            t + 20,
            edit(|j| {
                j.file_size = Some(1234);
                j.title = Some("Clip".into());
            }),
        )
        .await
        .unwrap();
    assert_eq!(up.state, Uploading);
    // A change without a move keeps the state and stamps the time.
    let same = b
        .store
        .update(
            up.id,
            Expect::owned(Uploading, owner),
            None,
            t + 25,
            edit(|j| j.status_msg_id = Some(77)),
        )
        .await
        .unwrap();
    assert_eq!(
        (same.state, same.updated_at, same.status_msg_id),
        (Uploading, t + 25, Some(77))
    );
    assert_eq!(b.store.cache_get(&up.cache_key()).await.unwrap(), None);

    let cl = b
        .store
        .update(
            up.id,
            Expect::owned(Uploading, owner),
            Some(Cleaning),
            t + 30,
            edit(|j| {
                j.delivery = Some(Delivery {
                    message_id: 5,
                    file_id: "FILE-1".into(),
                    sent_as: MediaKind::Audio,
                })
            }),
        )
        .await
        .unwrap();
    // Leaving uploading with a delivery writes the cache in that change.
    assert_eq!(
        b.store.cache_get(&cl.cache_key()).await.unwrap(),
        Some(CachedMedia {
            file_id: "FILE-1".into(),
            sent_as: MediaKind::Audio,
            title: Some("Clip".into()),
            file_size: Some(1234),
            cached_at: t + 30,
        })
    );
    let done = step(b, cl.id, Cleaning, Done, t + 40).await;
    assert_eq!(done.state, Done);
    assert!(done.lease.is_none(), "a finished job holds no lease");
    let states: Vec<JobState> = done.history.iter().map(|h| h.0).collect();
    assert_eq!(states, vec![Queued, Downloading, Uploading, Cleaning, Done]);
    assert_eq!(b.store.get(done.id).await.unwrap(), Some(done.clone()));

    let c = b.store.counts().await.unwrap();
    assert_eq!(
        (
            c.queued,
            c.downloading,
            c.uploading,
            c.cleaning,
            c.done,
            c.failed
        ),
        (1, 0, 0, 0, 1, 0)
    );
    assert!(b.store.in_flight().await.unwrap().is_empty());

    // Lists: by state (oldest / newest first, limited), by user.
    let third = enqueue(b, 2, 2, "https://a/3", t + 50).await;
    let fourth = enqueue(b, 2, 3, "https://a/4", t + 51).await;
    assert_eq!(
        ids(&b.store.list_state(Queued, 10).await.unwrap()),
        vec![other.id, third.id, fourth.id]
    );
    assert_eq!(
        ids(&b.store.list_state(Queued, 2).await.unwrap()),
        vec![other.id, third.id]
    );
    assert_eq!(
        ids(&b.store.list_state_rev(Queued, 2).await.unwrap()),
        vec![fourth.id, third.id]
    );
    assert_eq!(
        ids(&b.store.list_state(Done, 10).await.unwrap()),
        vec![done.id]
    );
    assert_eq!(
        ids(&b.store.list_user(2, 10).await.unwrap()),
        vec![fourth.id, third.id, other.id]
    );
    assert_eq!(ids(&b.store.list_user(1, 10).await.unwrap()), vec![done.id]);
    assert!(b.store.list_user(3, 10).await.unwrap().is_empty());
    assert_eq!(b.store.get(JobId::new()).await.unwrap(), None);
}

async fn wrong_state_conflicts_and_illegal_moves_change_nothing(b: &Backend) {
    let t = now_ms();
    let job = enqueue(b, 1, 1, "https://a/1", t).await;
    let err = b
        .store
        .update(
            job.id,
            Expect::state(Downloading),
            Some(Uploading),
            t + 1,
            no_edit(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict { id, expected: Downloading, actual: Queued } if id == job.id),
        "{err:?}"
    );
    let err = b
        .store
        .update(
            job.id,
            Expect::state(Queued),
            Some(Done),
            t + 2,
            edit(|j| j.title = Some("should not stick".into())),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Illegal(IllegalTransition {
                from: Queued,
                to: Done
            })
        ),
        "{err:?}"
    );
    let missing = JobId::new();
    let err = b
        .store
        .update(
            missing,
            Expect::state(Queued),
            Some(Downloading),
            t + 3,
            no_edit(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound(id) if id == missing),
        "{err:?}"
    );
    // Nothing of the refused changes was written.
    assert_eq!(b.store.get(job.id).await.unwrap(), Some(job.clone()));
    let c = b.store.counts().await.unwrap();
    assert_eq!((c.queued, c.total()), (1, 1));
    // The edit cannot move the job: only the store does.
    let j = b
        .store
        .update(
            job.id,
            Expect::state(Queued),
            None,
            t + 4,
            edit(|j| j.state = Done),
        )
        .await
        .unwrap();
    assert_eq!(j.state, Queued);
    assert_eq!(b.store.counts().await.unwrap().queued, 1);
}

async fn another_owner_loses_the_lease(b: &Backend) {
    let t = now_ms();
    let (first, second) = (Uuid::now_v7(), Uuid::now_v7());
    let job = enqueue(b, 1, 1, "https://a/1", t).await;
    let claimed = b.store.claim(first, LEASE, t).await.unwrap().unwrap();
    assert_eq!(claimed.id, job.id);
    let err = b
        .store
        .update(
            job.id,
            Expect::owned(Downloading, second),
            Some(Uploading),
            t + 1,
            no_edit(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::LeaseLost { id } if id == job.id),
        "{err:?}"
    );

    // Recovery takes the job back (the lease lapsed); the second owner
    // claims it; the first owner's late write is refused.
    let back = b
        .store
        .update(
            job.id,
            Expect::state(Downloading),
            Some(Queued),
            t + LEASE + 1,
            no_edit(),
        )
        .await
        .unwrap();
    assert!(back.lease.is_none());
    let again = b
        .store
        .claim(second, LEASE, t + LEASE + 2)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((again.id, again.lease.unwrap().owner), (job.id, second));
    let err = b
        .store
        .update(
            job.id,
            Expect::owned(Downloading, first),
            Some(Uploading),
            t + LEASE + 3,
            no_edit(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::LeaseLost { .. }), "{err:?}");
    let up = b
        .store
        .update(
            job.id,
            Expect::owned(Downloading, second),
            Some(Uploading),
            t + LEASE + 4,
            no_edit(),
        )
        .await
        .unwrap();
    assert_eq!(up.lease.unwrap().owner, second);
}

async fn claims_are_fair_across_users_and_wait_for_due_time(b: &Backend) {
    let t = now_ms();
    let owner = Uuid::now_v7();
    let a1 = enqueue(b, 1, 1, "https://a/1", t).await;
    let a2 = enqueue(b, 1, 2, "https://a/2", t + 1).await;
    let a3 = enqueue(b, 1, 3, "https://a/3", t + 2).await;
    let b1 = enqueue(b, 2, 1, "https://b/1", t + 3).await;
    let mut order = Vec::new();
    for i in 0..4 {
        let j = b
            .store
            .claim(owner, LEASE, t + 10 + i)
            .await
            .unwrap()
            .unwrap();
        order.push(j.id);
    }
    assert_eq!(order, vec![a1.id, b1.id, a2.id, a3.id]);
    assert!(b.store.claim(owner, LEASE, t + 20).await.unwrap().is_none());

    // A job not yet due waits, and the due job of a served user goes first.
    let mut later = new_job(3, 1, "https://c/1");
    later.not_before = Some(t + 1000);
    let c1 = b.store.enqueue(later, LOOSE, t + 30).await.unwrap().job;
    assert_eq!(c1.next_attempt_at, t + 1000);
    assert!(b
        .store
        .claim(owner, LEASE, t + 999)
        .await
        .unwrap()
        .is_none());
    let a4 = enqueue(b, 1, 4, "https://a/4", t + 40).await;
    let j = b.store.claim(owner, LEASE, t + 999).await.unwrap().unwrap();
    assert_eq!(j.id, a4.id);
    let j = b
        .store
        .claim(owner, LEASE, t + 1000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(j.id, c1.id);
    assert_eq!(b.store.counts().await.unwrap().downloading, 6);
}

async fn per_user_active_limit(b: &Backend) {
    let t = now_ms();
    let limits = EnqueueLimits {
        per_user_active: 2,
        ..LOOSE
    };
    let first = b
        .store
        .enqueue(new_job(1, 1, "https://a/1"), limits, t)
        .await
        .unwrap();
    b.store
        .enqueue(new_job(1, 2, "https://a/2"), limits, t)
        .await
        .unwrap();
    let err = b
        .store
        .enqueue(new_job(1, 3, "https://a/3"), limits, t)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Refused(Refusal::UserActive { limit: 2 })),
        "{err:?}"
    );
    // Another user is not affected; an exempt (admin) enqueue passes.
    b.store
        .enqueue(new_job(2, 1, "https://b/1"), limits, t)
        .await
        .unwrap();
    let exempt = EnqueueLimits {
        exempt: true,
        ..limits
    };
    b.store
        .enqueue(new_job(1, 4, "https://a/4"), exempt, t)
        .await
        .unwrap();
    assert_eq!(b.store.counts().await.unwrap().queued, 4);
    // A finished job frees its slot... but user 1 still has 2 active.
    fail(b, first.job.id, t + 1).await;
    let err = b
        .store
        .enqueue(new_job(1, 5, "https://a/5"), limits, t + 2)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Refused(Refusal::UserActive { .. })),
        "{err:?}"
    );
    let second = b.store.list_user(1, 10).await.unwrap();
    let queued: Vec<&Job> = second.iter().filter(|j| j.state == Queued).collect();
    fail(b, queued[0].id, t + 3).await;
    b.store
        .enqueue(new_job(1, 5, "https://a/5"), limits, t + 4)
        .await
        .unwrap();
}

async fn hourly_limit_and_its_retry_time(b: &Backend) {
    let t = now_ms();
    let limits = EnqueueLimits {
        per_user_per_hour: 2,
        ..LOOSE
    };
    let j1 = b
        .store
        .enqueue(new_job(1, 1, "https://a/1"), limits, t)
        .await
        .unwrap();
    b.store
        .enqueue(new_job(1, 2, "https://a/2"), limits, t + 10)
        .await
        .unwrap();
    // Finished jobs still count in the hour.
    fail(b, j1.job.id, t + 15).await;
    let err = b
        .store
        .enqueue(new_job(1, 3, "https://a/3"), limits, t + 20)
        .await
        .unwrap_err();
    match err {
        StoreError::Refused(Refusal::UserHourly { limit, retry_at }) => {
            assert_eq!((limit, retry_at), (2, t + HOUR_MS));
        }
        other => panic!("expected the hourly refusal, got {other:?}"),
    }
    // A refused enqueue is not counted: once the first leaves the window,
    // one more fits, and the next waits for the second.
    b.store
        .enqueue(new_job(1, 3, "https://a/3"), limits, t + HOUR_MS)
        .await
        .unwrap();
    let err = b
        .store
        .enqueue(new_job(1, 4, "https://a/4"), limits, t + HOUR_MS + 1)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Refused(Refusal::UserHourly { retry_at, .. }) if retry_at == t + 10 + HOUR_MS),
        "{err:?}"
    );
}

async fn queue_capacity_binds_everyone(b: &Backend) {
    let t = now_ms();
    let limits = EnqueueLimits {
        queue_capacity: 2,
        ..LOOSE
    };
    let j1 = b
        .store
        .enqueue(new_job(1, 1, "https://a/1"), limits, t)
        .await
        .unwrap();
    b.store
        .enqueue(new_job(2, 1, "https://b/1"), limits, t)
        .await
        .unwrap();
    for l in [
        limits,
        EnqueueLimits {
            exempt: true,
            ..limits
        },
    ] {
        let err = b
            .store
            .enqueue(new_job(3, 1, "https://c/1"), l, t)
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::Refused(Refusal::QueueFull { capacity: 2 })),
            "{err:?}"
        );
    }
    // In-flight jobs count too; finished ones do not.
    let owner = Uuid::now_v7();
    b.store.claim(owner, LEASE, t + 1).await.unwrap().unwrap();
    let err = b
        .store
        .enqueue(new_job(3, 1, "https://c/1"), limits, t + 2)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Refused(Refusal::QueueFull { .. })),
        "{err:?}"
    );
    let still_queued = b.store.list_state(Queued, 10).await.unwrap();
    assert_eq!(still_queued.len(), 1);
    assert_ne!(still_queued[0].id, j1.job.id);
    fail(b, still_queued[0].id, t + 3).await;
    let e = b
        .store
        .enqueue(new_job(3, 1, "https://c/1"), limits, t + 4)
        .await
        .unwrap();
    assert_eq!(e.position, 1);
    assert_eq!(b.store.counts().await.unwrap().active(), 2);
}

async fn concurrent_enqueues_of_one_user_pass_the_limit_once(b: &Backend) {
    let t = now_ms();
    let limits = EnqueueLimits {
        per_user_active: 3,
        ..LOOSE
    };
    let mut tasks = Vec::new();
    for i in 0..20 {
        let store = b.store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .enqueue(new_job(7, i, &format!("https://a/{i}")), limits, t)
                .await
        }));
    }
    let (mut admitted, mut refused) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            Ok(e) => {
                assert!(!e.duplicate);
                admitted += 1;
            }
            Err(StoreError::Refused(Refusal::UserActive { limit: 3 })) => refused += 1,
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!((admitted, refused), (3, 17));
    assert_eq!(b.store.counts().await.unwrap().queued, 3);
    assert_eq!(b.store.list_user(7, 100).await.unwrap().len(), 3);
}

async fn concurrent_enqueues_of_many_users_fill_the_capacity_exactly(b: &Backend) {
    let t = now_ms();
    let limits = EnqueueLimits {
        queue_capacity: 5,
        ..LOOSE
    };
    let mut tasks = Vec::new();
    for user in 0..20u64 {
        let store = b.store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .enqueue(new_job(100 + user, 1, "https://x/1"), limits, t)
                .await
        }));
    }
    let (mut admitted, mut refused) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => admitted += 1,
            Err(StoreError::Refused(Refusal::QueueFull { capacity: 5 })) => refused += 1,
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!((admitted, refused), (5, 15));
    assert_eq!(b.store.counts().await.unwrap().queued, 5);
}

/// Each task enqueues a job and then claims one, so every claim runs while
/// at least its own task's job is queued and due: it must find a job,
/// whichever task's, however the others' enqueues, claims and transitions
/// race it. A claim that comes up empty with work due leaves a worker idle
/// until its next poll.
async fn a_claim_finds_a_due_job_while_others_change_the_queue(b: &Backend) {
    const PER_TASK: i32 = 300;
    let t = now_ms();
    let mut tasks = Vec::new();
    for task in 0..4u64 {
        let store = b.store.clone();
        tasks.push(tokio::spawn(async move {
            let owner = Uuid::now_v7();
            for n in 0..PER_TASK {
                let user = 500 + task * 10 + (n % 5) as u64;
                let url = format!("https://q/{task}/{n}");
                store
                    .enqueue(new_job(user, n, &url), LOOSE, t)
                    .await
                    .unwrap();
                let Some(job) = store.claim(owner, LEASE, t + 1).await.unwrap() else {
                    panic!("task {task}, claim {n}: nothing found with a due job queued");
                };
                let mut state = Downloading;
                for to in [Uploading, Cleaning, Done] {
                    let expect = Expect::owned(state, owner);
                    store
                        .update(job.id, expect, Some(to), t + 2, no_edit())
                        .await
                        .unwrap();
                    state = to;
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(b.store.counts().await.unwrap().done, 4 * PER_TASK as u64);
}

async fn settings_round_trip(b: &Backend) {
    assert_eq!(b.store.settings(1).await.unwrap(), None);
    let s = UserSettings {
        kind: MediaKind::Audio,
        max_height: Some(720),
        ask: true,
        lang: Some("fa".into()),
    };
    b.store.put_settings(1, s.clone()).await.unwrap();
    assert_eq!(b.store.settings(1).await.unwrap(), Some(s.clone()));
    assert_eq!(b.store.settings(2).await.unwrap(), None);
    let s2 = UserSettings { lang: None, ..s };
    b.store.put_settings(1, s2.clone()).await.unwrap();
    assert_eq!(b.store.settings(1).await.unwrap(), Some(s2));
    // Ids beyond i64 are user ids too.
    b.store
        .put_settings(u64::MAX, UserSettings::default())
        .await
        .unwrap();
    assert_eq!(
        b.store.settings(u64::MAX).await.unwrap(),
        Some(UserSettings::default())
    );
}

async fn retention_prunes_old_finished_jobs_in_batches(b: &Backend) {
    let t = now_ms();
    let owner = Uuid::now_v7();
    enqueue(b, 1, 1, "https://a/1", t).await;
    let done = deliver(b, owner, t, "F").await;
    let failed = enqueue(b, 1, 2, "https://a/2", t + 10).await;
    let failed = fail(b, failed.id, t + 10).await;
    let active = enqueue(b, 1, 3, "https://a/3", t + 20).await;

    assert_eq!(
        b.store.prune_finished(done.updated_at, 10).await.unwrap(),
        0
    );
    let cutoff = t + 10 * 60_000;
    assert_eq!(b.store.prune_finished(cutoff, 1).await.unwrap(), 1);
    assert_eq!(b.store.prune_finished(cutoff, 1).await.unwrap(), 1);
    assert_eq!(b.store.prune_finished(cutoff, 1).await.unwrap(), 0);
    assert_eq!(b.store.get(done.id).await.unwrap(), None);
    assert_eq!(b.store.get(failed.id).await.unwrap(), None);
    assert!(b.store.get(active.id).await.unwrap().is_some());
    let c = b.store.counts().await.unwrap();
    assert_eq!((c.queued, c.done, c.failed), (1, 0, 0));
    assert_eq!(
        ids(&b.store.list_user(1, 10).await.unwrap()),
        vec![active.id]
    );
    // The cache outlives its job; the request is free again.
    assert!(b
        .store
        .cache_get(&done.cache_key())
        .await
        .unwrap()
        .is_some());
    let again = b
        .store
        .enqueue(new_job(1, 1, "https://a/1"), LOOSE, t + 200)
        .await
        .unwrap();
    assert!(!again.duplicate);
    assert_ne!(again.job.id, done.id);
}

async fn same_request_is_one_job(b: &Backend) {
    let t = now_ms();
    let first = b
        .store
        .enqueue(new_job(1, 5, "https://a/1"), LOOSE, t)
        .await
        .unwrap();
    let second = b
        .store
        .enqueue(new_job(1, 5, "https://a/1"), LOOSE, t + 1)
        .await
        .unwrap();
    assert!(second.duplicate);
    assert_eq!(second.job, first.job);
    assert_eq!(second.position, 1);
    // Other links of the message, or the same link in another message, are
    // other jobs; a very long link dedupes too.
    let long = format!("https://a/{}", "x".repeat(5000));
    let a = enqueue(b, 1, 5, &long, t + 2).await;
    let dup = b
        .store
        .enqueue(new_job(1, 5, &long), LOOSE, t + 3)
        .await
        .unwrap();
    assert!(dup.duplicate);
    assert_eq!(dup.job.id, a.id);
    enqueue(b, 1, 6, "https://a/1", t + 4).await;
    assert_eq!(b.store.counts().await.unwrap().queued, 3);
    // A duplicate is still one after the job moved on, and is not counted
    // in the hour.
    let limits = EnqueueLimits {
        per_user_per_hour: 3,
        ..LOOSE
    };
    fail(b, first.job.id, t + 5).await;
    let third = b
        .store
        .enqueue(new_job(1, 5, "https://a/1"), limits, t + 6)
        .await
        .unwrap();
    assert!(third.duplicate);
    assert_eq!((third.job.id, third.job.state), (first.job.id, Failed));
}

async fn reopen_of_a_failed_job(b: &Backend) {
    let t = now_ms();
    let job = enqueue(b, 1, 1, "https://a/1", t).await;
    let err = b
        .store
        .reopen(job.id, LOOSE, t + 1, no_edit())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Conflict {
                expected: Failed,
                actual: Queued,
                ..
            }
        ),
        "{err:?}"
    );
    let failed = fail(b, job.id, t + 2).await;
    assert!(failed.failure.is_some());
    assert_eq!(b.store.counts().await.unwrap().failed, 1);

    // Refused as a new link would be: the job stays failed.
    let hourly = EnqueueLimits {
        per_user_per_hour: 1,
        ..LOOSE
    };
    let err = b
        .store
        .reopen(job.id, hourly, t + 3, no_edit())
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Refused(Refusal::UserHourly { .. })),
        "{err:?}"
    );
    assert_eq!(b.store.get(job.id).await.unwrap().unwrap().state, Failed);

    let again = b
        .store
        .reopen(
            job.id,
            LOOSE,
            t + 4,
            edit(|j| {
                j.failure = None;
                j.attempts = 0;
            }),
        )
        .await
        .unwrap();
    assert_eq!((again.state, again.failure.clone()), (Queued, None));
    assert_eq!(again.history.last(), Some(&(Queued, t + 4)));
    let c = b.store.counts().await.unwrap();
    assert_eq!((c.queued, c.failed), (1, 0));
    // Admitted, it counts in the hour (2 enqueues now).
    let two = EnqueueLimits {
        per_user_per_hour: 2,
        ..LOOSE
    };
    let err = b
        .store
        .enqueue(new_job(1, 2, "https://a/2"), two, t + 5)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Refused(Refusal::UserHourly { .. })),
        "{err:?}"
    );
    let claimed = b
        .store
        .claim(Uuid::now_v7(), LEASE, t + 6)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claimed.id, job.id);
}

async fn find_by_short_id_and_prefix(b: &Backend) {
    let t = now_ms();
    // Ids made back to back share their leading (time) digits.
    let mut jobs = Vec::new();
    let (x, y, common) = loop {
        jobs.push(
            enqueue(
                b,
                1,
                jobs.len() as i32,
                &format!("https://a/{}", jobs.len()),
                t,
            )
            .await,
        );
        let n = jobs.len();
        if n >= 2 {
            let (p, q) = (jobs[n - 2].id.to_string(), jobs[n - 1].id.to_string());
            let common = p.chars().zip(q.chars()).take_while(|(a, b)| a == b).count();
            if common >= 9 {
                break (jobs[n - 2].clone(), jobs[n - 1].clone(), common);
            }
        }
        assert!(n < 10, "ids made back to back share no 9-digit prefix");
    };

    let found = b.store.find(&x.id.short()).await.unwrap().unwrap();
    assert_eq!(found.id, x.id);
    let upper = y.id.short().to_uppercase();
    assert_eq!(b.store.find(&upper).await.unwrap().unwrap().id, y.id);
    let full = x.id.to_string();
    assert_eq!(b.store.find(&full).await.unwrap().unwrap().id, x.id);
    let dashed = x.id.0.hyphenated().to_string();
    assert_eq!(b.store.find(&dashed).await.unwrap().unwrap().id, x.id);
    let distinct = &y.id.to_string()[..common + 1];
    assert_eq!(b.store.find(distinct).await.unwrap().unwrap().id, y.id);
    let shared = &x.id.to_string()[..9];
    assert_eq!(
        b.store.find(shared).await.unwrap(),
        Err(FindError::Ambiguous(shared.to_string()))
    );
    assert_eq!(
        b.store.find("00000000000").await.unwrap(),
        Err(FindError::NotFound("00000000000".into()))
    );
    for bad in [
        "xyz",
        "12",
        "not-an-id",
        "0123456789abcdef0123456789abcdef0",
    ] {
        assert_eq!(
            b.store.find(bad).await.unwrap(),
            Err(FindError::Invalid(bad.to_string())),
            "{bad}"
        );
    }
}

async fn inbox_keeps_updates_until_done(b: &Backend) {
    let body = |id: u32| format!("{{\"update_id\":{id}}}").into_bytes();
    assert!(b.store.inbox_pending().await.unwrap().is_empty());
    b.store.inbox_put(vec![]).await.unwrap();
    b.store
        .inbox_put(vec![(2, body(2)), (1, body(1))])
        .await
        .unwrap();
    // A re-put id is left as it is.
    let other = b"{\"update_id\":2,\"changed\":true}".to_vec();
    b.store
        .inbox_put(vec![(2, other), (u32::MAX, body(u32::MAX))])
        .await
        .unwrap();
    assert_eq!(
        b.store.inbox_pending().await.unwrap(),
        vec![(1, body(1)), (2, body(2)), (u32::MAX, body(u32::MAX))]
    );
    // Several at once; an id not stored (7), or no longer (1), is no error.
    b.store.inbox_done(vec![1, 7]).await.unwrap();
    b.store.inbox_done(vec![1]).await.unwrap();
    assert_eq!(
        b.store.inbox_pending().await.unwrap(),
        vec![(2, body(2)), (u32::MAX, body(u32::MAX))]
    );
}

async fn finished_since_counts_per_minute(b: &Backend) {
    // Whole minutes, so the expectations do not depend on the clock.
    let m = now_ms() / 60_000 * 60_000;
    let owner = Uuid::now_v7();
    assert_eq!(b.store.finished_since(0).await.unwrap(), (0, 0));
    enqueue(b, 1, 1, "https://a/1", m).await;
    deliver(b, owner, m, "F").await;
    let f1 = enqueue(b, 1, 2, "https://a/2", m).await;
    fail(b, f1.id, m + 2 * 60_000).await;
    let f2 = enqueue(b, 1, 3, "https://a/3", m).await;
    fail(b, f2.id, m + 2 * 60_000 + 5).await;
    assert_eq!(b.store.finished_since(m).await.unwrap(), (1, 2));
    assert_eq!(b.store.finished_since(m + 60_000).await.unwrap(), (0, 2));
    assert_eq!(
        b.store.finished_since(m + 3 * 60_000).await.unwrap(),
        (0, 0)
    );
    // Minute resolution: a time inside the minute counts the whole minute.
    assert_eq!(b.store.finished_since(m + 59_999).await.unwrap(), (1, 2));
}

async fn would_refuse_reads_without_writing(b: &Backend) {
    let t = now_ms();
    let limits = EnqueueLimits {
        per_user_active: 1,
        per_user_per_hour: 1000,
        queue_capacity: 2,
        exempt: false,
    };
    assert_eq!(b.store.would_refuse(1, limits, t).await.unwrap(), None);
    // Asking does not use up the hour or create anything.
    for _ in 0..5 {
        b.store.would_refuse(1, limits, t).await.unwrap();
    }
    assert_eq!(b.store.counts().await.unwrap().total(), 0);
    b.store
        .enqueue(new_job(1, 1, "https://a/1"), limits, t)
        .await
        .unwrap();
    assert_eq!(
        b.store.would_refuse(1, limits, t).await.unwrap(),
        Some(Refusal::UserActive { limit: 1 })
    );
    let exempt = EnqueueLimits {
        exempt: true,
        ..limits
    };
    assert_eq!(b.store.would_refuse(1, exempt, t).await.unwrap(), None);
    assert_eq!(b.store.would_refuse(2, limits, t).await.unwrap(), None);
    b.store
        .enqueue(new_job(2, 1, "https://b/1"), limits, t)
        .await
        .unwrap();
    assert_eq!(
        b.store.would_refuse(3, limits, t).await.unwrap(),
        Some(Refusal::QueueFull { capacity: 2 })
    );
    let hourly = EnqueueLimits {
        per_user_active: 10,
        per_user_per_hour: 1,
        queue_capacity: 10,
        exempt: false,
    };
    assert_eq!(
        b.store.would_refuse(1, hourly, t + 5).await.unwrap(),
        Some(Refusal::UserHourly {
            limit: 1,
            retry_at: t + HOUR_MS
        })
    );
    assert_eq!(
        b.store.would_refuse(1, hourly, t + HOUR_MS).await.unwrap(),
        None
    );
}

async fn probes_and_backend_nature(b: &Backend) {
    b.store.probe_write().await.unwrap();
    b.store.probe_write().await.unwrap();
    b.diag.flush().await.unwrap();
    assert_eq!(b.store.is_exclusive(), b.exclusive);
    assert!(b.diag.quarantined().await.unwrap().is_empty());
    assert!(b.diag.size_on_disk().await > 0);
}

/// `in_flight_since`: the jobs of `in_flight`, each with its state and when
/// it entered it (a change that keeps the state does not move that time;
/// a rescue to queued and a new claim does).
async fn in_flight_since_is_in_flight_without_whole_records(b: &Backend) {
    let t = now_ms();
    let owner = Uuid::now_v7();
    assert!(b.store.in_flight_since().await.unwrap().is_empty());
    for (u, msg) in [(1, 1), (2, 1), (3, 1), (4, 1)] {
        enqueue(b, u, msg, &format!("https://f/{u}"), t).await;
    }
    let mut claimed = Vec::new();
    for i in 0..4 {
        claimed.push(
            b.store
                .claim(owner, LEASE, t + 10 + i)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let own = |s| Expect::owned(s, owner);
    // Downloading since t + 10; a progress write later keeps that time.
    let downloading = b
        .store
        .update(
            claimed[0].id,
            own(Downloading),
            None,
            t + 500,
            edit(|j| {
                j.status_msg_id = Some(9);
                j.title = Some("a long title that the head decoder never reads".into());
            }),
        )
        .await
        .unwrap();
    let uploading = b
        .store
        .update(
            claimed[1].id,
            own(Downloading),
            Some(Uploading),
            t + 100,
            no_edit(),
        )
        .await
        .unwrap();
    let up2 = b
        .store
        .update(
            claimed[2].id,
            own(Downloading),
            Some(Uploading),
            t + 110,
            no_edit(),
        )
        .await
        .unwrap();
    let cleaning = b
        .store
        .update(
            up2.id,
            own(Uploading),
            Some(Cleaning),
            t + 200,
            edit(|j| j.failure = Some(JobError::permanent(FailureCode::TooLarge, "too large"))),
        )
        .await
        .unwrap();
    // Back to queued (a rescue) and claimed again: in flight since the new claim.
    b.store
        .update(
            claimed[3].id,
            own(Downloading),
            Some(Queued),
            t + 300,
            no_edit(),
        )
        .await
        .unwrap();
    let reclaimed = b.store.claim(owner, LEASE, t + 400).await.unwrap().unwrap();
    assert_eq!(reclaimed.id, claimed[3].id);

    let mut got = b.store.in_flight_since().await.unwrap();
    got.sort_by_key(|f| f.id);
    let mut want = vec![
        InFlight {
            id: downloading.id,
            state: Downloading,
            since: t + 10,
        },
        InFlight {
            id: uploading.id,
            state: Uploading,
            since: t + 100,
        },
        InFlight {
            id: cleaning.id,
            state: Cleaning,
            since: t + 200,
        },
        InFlight {
            id: reclaimed.id,
            state: Downloading,
            since: t + 400,
        },
    ];
    want.sort_by_key(|f| f.id);
    assert_eq!(got, want);
    // The same as the whole records say.
    let mut whole: Vec<InFlight> = b
        .store
        .in_flight()
        .await
        .unwrap()
        .iter()
        .map(InFlight::of)
        .collect();
    whole.sort_by_key(|f| f.id);
    assert_eq!(got, whole);
    // Finished and queued jobs are not in flight.
    step(b, cleaning.id, Cleaning, Failed, t + 600).await;
    let left: Vec<JobId> = b
        .store
        .in_flight_since()
        .await
        .unwrap()
        .iter()
        .map(|f| f.id)
        .collect();
    assert_eq!(left.len(), 3);
    assert!(!left.contains(&cleaning.id));
}

/// What only PostgreSQL has: several processes on one database, and
/// records that can be damaged behind the store's back with SQL.
mod postgres_only {
    use super::*;

    async fn raw(url: &str) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nodes_starting_at_once_migrate_once() {
        let db = pg::TempDb::create().await;
        let connects: Vec<_> = (0..4)
            .map(|_| {
                let url = db.url.clone();
                tokio::spawn(async move { PgStore::connect(&url).await })
            })
            .collect();
        let mut stores = Vec::new();
        for c in connects {
            stores.push(c.await.unwrap().unwrap());
        }
        let versions: Vec<i32> = raw(&db.url)
            .await
            .query(
                "SELECT version FROM schema_migrations ORDER BY version",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(versions, vec![1]);
        // Two nodes share one queue: a job enqueued on one is claimed once.
        let t = now_ms();
        let job = stores[0]
            .enqueue(new_job(1, 1, "https://a/1"), LOOSE, t)
            .await
            .unwrap()
            .job;
        let (a, b) = tokio::join!(
            stores[1].claim(Uuid::now_v7(), LEASE, t),
            stores[2].claim(Uuid::now_v7(), LEASE, t)
        );
        let claimed: Vec<Job> = [a.unwrap(), b.unwrap()].into_iter().flatten().collect();
        assert_eq!(ids(&claimed), vec![job.id]);
        assert_eq!(stores[3].counts().await.unwrap().downloading, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_newer_schema_is_refused() {
        let db = pg::TempDb::create().await;
        drop(PgStore::connect(&db.url).await.unwrap());
        raw(&db.url)
            .await
            .execute("INSERT INTO schema_migrations (version) VALUES (99)", &[])
            .await
            .unwrap();
        match PgStore::connect(&db.url).await {
            Err(StoreError::NewerSchema {
                found: 99,
                known: 1,
            }) => {}
            Err(e) => panic!("expected NewerSchema, got {e:?}"),
            Ok(_) => panic!("expected NewerSchema, got a store"),
        }
    }

    /// `in_flight_since` reads the head of each in-flight record; one that
    /// does not read is quarantined and left out, as `in_flight` does.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn in_flight_since_quarantines_a_corrupt_in_flight_record() {
        let db = pg::TempDb::create().await;
        let store = Arc::new(PgStore::connect(&db.url).await.unwrap());
        let b = Backend {
            store: store.clone(),
            diag: store,
            exclusive: false,
            _keep: Box::new(()),
        };
        let t = now_ms();
        let owner = Uuid::now_v7();
        enqueue(&b, 1, 1, "https://a/1", t).await;
        enqueue(&b, 2, 1, "https://b/1", t).await;
        let bad = b.store.claim(owner, LEASE, t + 1).await.unwrap().unwrap();
        let good = b.store.claim(owner, LEASE, t + 2).await.unwrap().unwrap();
        raw(&db.url)
            .await
            .execute(
                "UPDATE jobs SET record = $2 WHERE id = $1",
                &[&bad.id.0, &vec![2u8, 0xff, 0xfe]],
            )
            .await
            .unwrap();
        assert_eq!(
            b.store.in_flight_since().await.unwrap(),
            vec![InFlight {
                id: good.id,
                state: Downloading,
                since: t + 2
            }]
        );
        let q = b.diag.quarantined().await.unwrap();
        assert_eq!(q.len(), 1);
        assert_eq!(q[0].key, bad.id.as_bytes().to_vec());
        assert_eq!(b.store.counts().await.unwrap().downloading, 1);
        super::assert_clean(&b).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn corrupt_records_are_quarantined_and_unlinked() {
        let db = pg::TempDb::create().await;
        let store = Arc::new(PgStore::connect(&db.url).await.unwrap());
        let b = Backend {
            store: store.clone(),
            diag: store,
            exclusive: false,
            _keep: Box::new(()),
        };
        let sql = raw(&db.url).await;
        let t = now_ms();
        let owner = Uuid::now_v7();
        enqueue(&b, 1, 1, "https://a/1", t).await;
        let delivered = deliver(&b, owner, t, "F").await;
        let read = enqueue(&b, 1, 2, "https://a/2", t).await;
        let changed = enqueue(&b, 1, 3, "https://a/3", t).await;
        let claimed = enqueue(&b, 2, 1, "https://b/1", t).await;
        let good = enqueue(&b, 3, 1, "https://c/1", t).await;
        let bad = vec![2u8, 0xff, 0xff];
        for id in [read.id, changed.id, claimed.id] {
            sql.execute("UPDATE jobs SET record = $2 WHERE id = $1", &[&id.0, &bad])
                .await
                .unwrap();
        }
        sql.execute(
            "UPDATE cache SET entry = $1 WHERE key = $2",
            &[&bad, &delivered.cache_key()],
        )
        .await
        .unwrap();

        b.store
            .put_settings(5, UserSettings::default())
            .await
            .unwrap();
        sql.execute("UPDATE settings SET entry = $1 WHERE user_id = 5", &[&bad])
            .await
            .unwrap();
        assert_eq!(b.store.settings(5).await.unwrap(), None);

        // A read quarantines and answers nothing.
        assert_eq!(b.store.get(read.id).await.unwrap(), None);
        // A change answers Corrupt, after quarantining.
        let err = b
            .store
            .update(
                changed.id,
                Expect::state(Queued),
                Some(Cleaning),
                t,
                no_edit(),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::Corrupt { id, .. } if id == changed.id),
            "{err:?}"
        );
        // A claim passes over the damaged job (user 2 was served least
        // recently) to a good one.
        let next = b.store.claim(owner, LEASE, t + 1).await.unwrap().unwrap();
        assert_eq!(next.id, good.id);
        assert_eq!(
            b.store.cache_get(&delivered.cache_key()).await.unwrap(),
            None
        );

        let q = b.diag.quarantined().await.unwrap();
        let mut trees: Vec<(&str, Vec<u8>)> =
            q.iter().map(|e| (e.tree.as_str(), e.key.clone())).collect();
        trees.sort();
        let mut want = vec![
            ("cache", delivered.cache_key().into_bytes()),
            ("jobs", read.id.as_bytes().to_vec()),
            ("jobs", changed.id.as_bytes().to_vec()),
            ("jobs", claimed.id.as_bytes().to_vec()),
            ("settings", 5u64.to_be_bytes().to_vec()),
        ];
        want.sort();
        assert_eq!(trees, want);
        assert!(q.iter().all(|e| e.bytes == bad && !e.reason.is_empty()));
        let c = b.store.counts().await.unwrap();
        assert_eq!((c.queued, c.downloading, c.done), (0, 1, 1));
        let r = b.diag.check_invariants().await.unwrap();
        assert!(r.problems.is_empty(), "{:#?}", r.problems);
        assert_eq!((r.jobs, r.quarantined), (2, 5));
        // The user's counts follow: user 1 has no active job left.
        assert_eq!(
            b.store
                .would_refuse(
                    1,
                    EnqueueLimits {
                        per_user_active: 1,
                        ..LOOSE
                    },
                    t
                )
                .await
                .unwrap(),
            None
        );
    }
}

async fn a_lazy_update_is_checked_and_seen_at_once(b: &Backend) {
    let t = now_ms();
    let job = enqueue(b, 1, 1, "https://a/lazy", t).await;
    // The expected state is checked as by `update`.
    let err = b
        .store
        .update_lazily(
            job.id,
            Expect::state(Downloading),
            t + 1,
            edit(|j| j.status_msg_id = Some(7)),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    assert_eq!(
        b.store.get(job.id).await.unwrap().unwrap().status_msg_id,
        None
    );
    let got = b
        .store
        .update_lazily(
            job.id,
            Expect::state(Queued),
            t + 2,
            edit(|j| j.status_msg_id = Some(42)),
        )
        .await
        .unwrap();
    assert_eq!((got.state, got.status_msg_id), (Queued, Some(42)));
    // Seen at once by a reader, and nothing derived disagrees.
    assert_eq!(
        b.store.get(job.id).await.unwrap().unwrap().status_msg_id,
        Some(42)
    );
    assert_clean(b).await;
}
