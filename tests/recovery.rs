//! The recovery pass on a real database: each in-flight state left by a dead
//! process is finished or requeued by the rules of SPEC "Crash recovery", and
//! files no live job owns are deleted.

use std::sync::Arc;

use tgdl::config::Config;
use tgdl::download::job_dir;
use tgdl::job::{now_ms, ErrorClass, Job, JobError, JobOptions, JobState, NewJob};
use tgdl::pipeline::recovery::{is_orphan, recover};
use tgdl::pipeline::JobService;
use tgdl::store::{EnqueueLimits, Expect, JobStore, OnBlockingPool, SledStore};
use uuid::Uuid;

const LOOSE: EnqueueLimits = EnqueueLimits {
    per_user_active: 100,
    per_user_per_hour: 100,
    queue_capacity: 1000,
    exempt: false,
};

fn setup(max_rescues: u32) -> (tempfile::TempDir, Arc<Core>) {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[storage]\ndata_dir = {:?}\n[downloader]\nmax_rescues = {max_rescues}\n",
        dir.path().join("data")
    );
    let config = Config::parse(&text, None).unwrap();
    std::fs::create_dir_all(config.downloads_dir()).unwrap();
    let store: Arc<dyn JobStore> = Arc::new(SledStore::open(&config.db_dir()).unwrap());
    let jobs = JobService::new(
        Arc::new(config),
        OnBlockingPool::shared(store.clone()),
        None,
    );
    (
        dir,
        Arc::new(Core {
            jobs: jobs.expect("job service"),
            store,
        }),
    )
}

/// The service the pass runs with, and the same sled store used directly
/// (synchronously) to set up and inspect what a dead process left.
struct Core {
    jobs: JobService,
    store: Arc<dyn JobStore>,
}

impl std::ops::Deref for Core {
    type Target = JobService;
    fn deref(&self) -> &JobService {
        &self.jobs
    }
}

/// Put a job in `state` as a dead process (another owner) would leave it.
fn leave(core: &Core, n: u32, state: JobState, file: Option<&[u8]>, rescues: u32) -> Job {
    let s = &core.store;
    let dead = Uuid::now_v7();
    let e = s
        .enqueue(
            NewJob {
                chat_id: 1,
                user_id: 1,
                request_msg_id: n as i32,
                lang: "en".into(),
                url: format!("https://example.com/{n}"),
                options: JobOptions::default(),
                parent: None,
                not_before: None,
            },
            LOOSE,
            now_ms(),
        )
        .unwrap()
        .job;
    let mut job = s.claim(dead, 60_000, now_ms()).unwrap().unwrap();
    assert_eq!(job.id, e.id);
    let dir = job_dir(&core.config.downloads_dir(), job.id.0);
    let path = dir.join("media.mp4");
    if let Some(bytes) = file {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&path, bytes).unwrap();
    }
    job = s
        .update(
            job.id,
            Expect::state(JobState::Downloading),
            None,
            now_ms(),
            &|j| j.rescues = rescues,
        )
        .unwrap();
    let p = path.display().to_string();
    if matches!(state, JobState::Uploading | JobState::Cleaning) {
        job = s
            .update(
                job.id,
                Expect::state(JobState::Downloading),
                Some(JobState::Uploading),
                now_ms(),
                &move |j| {
                    j.file_path = Some(p.clone());
                    j.file_size = Some(10);
                },
            )
            .unwrap();
    }
    if state == JobState::Cleaning {
        job = s
            .update(
                job.id,
                Expect::state(JobState::Uploading),
                Some(JobState::Cleaning),
                now_ms(),
                &|j| {
                    j.failure = Some(JobError {
                        class: ErrorClass::Permanent,
                        code: "unavailable".into(),
                        text: "gone".into(),
                    })
                },
            )
            .unwrap();
    }
    job
}

#[tokio::test]
async fn each_in_flight_state_is_finished_or_requeued() {
    let (_d, core) = setup(3);
    let downloading = leave(&core, 1, JobState::Downloading, Some(b"partial"), 0);
    let crashed = leave(&core, 2, JobState::Downloading, Some(b"partial"), 3);
    let upload_ok = leave(&core, 3, JobState::Uploading, Some(b"0123456789"), 0);
    let upload_short = leave(&core, 4, JobState::Uploading, Some(b"0123"), 0);
    let cleaning = leave(&core, 5, JobState::Cleaning, Some(b"0123456789"), 0);
    let downloads = core.config.downloads_dir();
    std::fs::write(downloads.join("stray.bin"), b"orphan").unwrap();
    std::fs::create_dir_all(downloads.join(Uuid::now_v7().hyphenated().to_string())).unwrap();

    let r = recover(&core, false).await.unwrap();
    let s = &core.store;
    // downloading -> queued, a rescue (not an attempt), partial file kept.
    let j = s.get(downloading.id).unwrap().unwrap();
    assert_eq!((j.state, j.rescues, j.attempts), (JobState::Queued, 1, 0));
    assert!(
        job_dir(&downloads, j.id.0).join("media.mp4").exists(),
        "partial kept for resume"
    );
    // Past the rescue cap: failed, "crashed repeatedly", files gone.
    let j = s.get(crashed.id).unwrap().unwrap();
    assert_eq!(j.state, JobState::Failed);
    assert_eq!(j.failure.unwrap().code, "crashed_repeatedly");
    assert!(!job_dir(&downloads, j.id.0).exists());
    // uploading with a complete file: taken over by this process, to resend.
    let j = s.get(upload_ok.id).unwrap().unwrap();
    assert_eq!(j.state, JobState::Uploading);
    assert_eq!(j.lease.unwrap().owner, core.owner);
    assert_eq!(
        r.resumed.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![upload_ok.id]
    );
    // uploading with an incomplete file: back to the queue.
    assert_eq!(
        s.get(upload_short.id).unwrap().unwrap().state,
        JobState::Queued
    );
    // cleaning: finished, ending as its failure says.
    let j = s.get(cleaning.id).unwrap().unwrap();
    assert_eq!(j.state, JobState::Failed);
    assert!(!job_dir(&downloads, j.id.0).exists());
    // Orphans: the stray file and the folder of an unknown job.
    assert_eq!(r.orphan_paths.len(), 2, "{:?}", r.orphan_paths);
    assert!(!downloads.join("stray.bin").exists());
    assert!(r.bytes_freed >= 6);
    assert_eq!(r.requeued.len(), 2);
    assert_eq!(r.failed, vec![crashed.id]);
    assert_eq!(r.cleaned, vec![cleaning.id]);
    assert!(s.check_invariants().unwrap().problems.is_empty());
    assert!(r.summary().contains("2 job(s) requeued"), "{}", r.summary());

    // A second pass finds nothing more to do.
    let again = recover(&core, false).await.unwrap();
    assert!(again.is_empty(), "{}", again.summary());
}

#[tokio::test]
async fn a_dry_run_changes_nothing() {
    let (_d, core) = setup(3);
    let j = leave(&core, 1, JobState::Downloading, Some(b"x"), 0);
    std::fs::write(core.config.downloads_dir().join("stray"), b"x").unwrap();
    let r = recover(&core, true).await.unwrap();
    assert_eq!(r.requeued, vec![j.id]);
    assert_eq!(r.orphan_paths.len(), 1);
    assert_eq!(
        core.store.get(j.id).unwrap().unwrap().state,
        JobState::Downloading
    );
    assert!(core.config.downloads_dir().join("stray").exists());
}

#[test]
fn orphan_rules_follow_owner_and_lease() {
    let me = Uuid::now_v7();
    let other = Uuid::now_v7();
    let mut job = Job::new(
        tgdl::job::JobId::new(),
        NewJob {
            chat_id: 1,
            user_id: 1,
            request_msg_id: 1,
            lang: "en".into(),
            url: "https://e/x".into(),
            options: JobOptions::default(),
            parent: None,
            not_before: None,
        },
        0,
    );
    assert!(is_orphan(&job, me, 100, false), "no lease: orphan");
    job.lease = Some(tgdl::job::Lease {
        owner: me,
        until: 50,
    });
    assert!(!is_orphan(&job, me, 100, false), "ours: never an orphan");
    job.lease = Some(tgdl::job::Lease {
        owner: other,
        until: 200,
    });
    assert!(
        !is_orphan(&job, me, 100, false),
        "shared store, live lease: not ours to take"
    );
    assert!(
        is_orphan(&job, me, 300, false),
        "shared store, expired lease: orphan"
    );
    assert!(
        is_orphan(&job, me, 100, true),
        "exclusive store: any other owner is dead"
    );
}

/// A new process starts and claims the requeued job again, then dies: the
/// job is left in `downloading` under a dead owner, as after a `kill -9`.
fn crash_again(core: &Core, id: tgdl::job::JobId) {
    let j = core
        .store
        .claim(Uuid::now_v7(), 60_000, now_ms())
        .unwrap()
        .expect("the requeued job is claimed again");
    assert_eq!(j.id, id);
}

#[tokio::test]
async fn a_download_that_resumes_further_after_every_crash_is_never_failed() {
    let (_d, core) = setup(2);
    let job = leave(&core, 1, JobState::Downloading, Some(b"partial"), 0);
    let part = job_dir(&core.config.downloads_dir(), job.id.0).join("media.mp4");
    for round in 1..=10u32 {
        let r = recover(&core, false).await.unwrap();
        assert_eq!(r.requeued, vec![job.id], "round {round}");
        let j = core.store.get(job.id).unwrap().unwrap();
        assert_eq!((j.state, j.rescues), (JobState::Queued, round));
        let mark = j.rescue_mark.unwrap();
        assert_eq!(mark.stalls, 0, "round {round}: progress every time");
        assert_eq!(mark.bytes, std::fs::metadata(&part).unwrap().len());
        // The restarted download resumes and writes more before the next crash.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&part)
            .unwrap();
        std::io::Write::write_all(&mut f, b"more bytes").unwrap();
        crash_again(&core, job.id);
    }
    assert!(core.store.check_invariants().unwrap().problems.is_empty());
}

#[tokio::test]
async fn a_job_that_crashes_at_the_same_point_still_fails_crashed_repeatedly() {
    let (_d, core) = setup(2);
    let job = leave(&core, 1, JobState::Downloading, Some(b"partial"), 0);
    // The first rescue finds bytes the job wrote since it started: progress.
    // Then every crash finds it exactly there: stalls 1 and 2 are within
    // max_rescues = 2, the third fails it.
    for stalls in 0..=2u32 {
        let r = recover(&core, false).await.unwrap();
        assert_eq!(r.requeued, vec![job.id]);
        let j = core.store.get(job.id).unwrap().unwrap();
        assert_eq!(j.rescue_mark.unwrap().stalls, stalls);
        crash_again(&core, job.id);
    }
    let r = recover(&core, false).await.unwrap();
    assert_eq!(r.failed, vec![job.id]);
    let j = core.store.get(job.id).unwrap().unwrap();
    assert_eq!(j.state, JobState::Failed);
    assert_eq!(j.failure.unwrap().code, "crashed_repeatedly");
    assert_eq!((j.rescues, j.rescue_mark.unwrap().stalls), (4, 3));
    assert!(!job_dir(&core.config.downloads_dir(), j.id.0).exists());
}

#[tokio::test]
async fn an_upload_that_crashes_the_bot_every_time_still_fails() {
    let (_d, core) = setup(2);
    // A complete file: each rescue takes the upload over again (resumed), and
    // each time it crashes at the same point.
    let job = leave(&core, 1, JobState::Uploading, Some(b"0123456789"), 0);
    let mut resumed = 0;
    loop {
        let r = recover(&core, false).await.unwrap();
        if !r.failed.is_empty() {
            break;
        }
        assert_eq!(r.resumed.len(), 1);
        resumed += 1;
        // The process that took it over dies too.
        core.store
            .update(
                job.id,
                tgdl::store::Expect::state(JobState::Uploading),
                None,
                now_ms(),
                &|j| j.lease.as_mut().unwrap().owner = Uuid::now_v7(),
            )
            .unwrap();
        assert!(resumed < 10, "never failed");
    }
    // First rescue: a later stage than the start (progress); then 1 and 2
    // stalls pass, the third fails.
    assert_eq!(resumed, 3);
    let j = core.store.get(job.id).unwrap().unwrap();
    assert_eq!(j.failure.unwrap().code, "crashed_repeatedly");
}
