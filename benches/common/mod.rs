//! Helpers shared by the bench binaries (each includes this with
//! `mod common;`): settings from the environment, seeding stores through the
//! public API, timing and formatting, and which filesystem a path is on.
//! Each bench uses a subset, hence the `dead_code` allowance.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tgdl::job::{now_ms, Delivery, Job, JobId, JobOptions, JobState, MediaKind, Millis, NewJob};
use tgdl::store::{EnqueueLimits, Expect, JobStore, SledStore};
use uuid::Uuid;

// ---------------------------------------------------------------------------
// Environment

/// Whether `key` is set to something other than empty or `0`.
pub fn env_flag(key: &str) -> bool {
    std::env::var(key).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// `TGDL_BENCH_QUICK=1`: smaller sizes and shorter runs, for a smoke run.
pub fn quick() -> bool {
    env_flag("TGDL_BENCH_QUICK")
}

/// A positive count from `key`, if it is set to one.
pub fn env_count(key: &str) -> Option<usize> {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
}

/// Where seed stores are kept: `TGDL_BENCH_SEED_DIR`, else
/// `/dev/shm/tgdl-bench-recovery` when `/dev/shm` is tmpfs, else under
/// cargo's per-target temp dir. Seeding goes through the public API with a
/// flush per transaction, which would take far too long on a real disk.
pub fn seed_dir() -> PathBuf {
    let shm = Path::new("/dev/shm");
    match std::env::var_os("TGDL_BENCH_SEED_DIR") {
        Some(p) => PathBuf::from(p),
        None if is_tmpfs(shm) => shm.join("tgdl-bench-recovery"),
        None => PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("tgdl-bench-recovery"),
    }
}

/// The release binary next to this bench's own executable. Cargo builds every
/// binary of the package before its benches and points this variable at it
/// (`target/release/tgdl` under `cargo bench`).
pub fn tgdl_binary() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_tgdl"));
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "--release", "--bin", "tgdl"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build --release --bin tgdl failed");
    }
    path
}

/// The 1-minute load average: every number here is CPU-bound on a small
/// machine, so other work running alongside shows up in them.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

// ---------------------------------------------------------------------------
// Jobs and stores

/// Limits that never refuse: the benchmarks measure the work of checking
/// them, not refusals. `exempt` still leaves the capacity check in place.
pub const OPEN_LIMITS: EnqueueLimits = EnqueueLimits {
    per_user_active: u32::MAX,
    per_user_per_hour: 20,
    queue_capacity: u64::MAX,
    exempt: true,
};

pub const LEASE_MS: u64 = 30 * 60 * 1000;

/// Every job a bench creates is a distinct request (the store folds a
/// repeated chat + message + link into the job it already has).
static REQUEST: AtomicU64 = AtomicU64::new(1);

pub fn new_job(thread: u64, i: u64) -> NewJob {
    // A handful of users per worker so the fair scheduler has a turn list to
    // walk, as it would with real traffic.
    let user = thread * 100 + i % 8;
    let req = REQUEST.fetch_add(1, Ordering::Relaxed);
    NewJob {
        chat_id: user as i64,
        user_id: user,
        request_msg_id: req as i32,
        lang: "en".into(),
        url: format!("https://www.youtube.com/watch?v=bench{req:011}"),
        options: JobOptions::default(),
        parent: None,
        not_before: None,
    }
}

/// Enqueue through the store and insist it created a job: a request folded
/// into an existing job would make the bench measure less work than it says.
pub fn sled_enqueue(store: &SledStore, new: NewJob) -> Job {
    sled_enqueue_at(store, new, now_ms())
}

/// [`sled_enqueue`] at the time `now`.
pub fn sled_enqueue_at(store: &SledStore, new: NewJob, now: Millis) -> Job {
    let e = store.enqueue(new, OPEN_LIMITS, now).expect("enqueue");
    assert!(!e.duplicate, "bench requests must be distinct");
    e.job
}

/// What the downloader records before uploading.
pub fn downloaded(j: &mut Job) {
    j.file_path = Some(format!("/var/lib/tgdl/downloads/{}/video.mp4", j.id));
    j.file_size = Some(48_213_776);
    j.title = Some("A realistic video title of moderate length".into());
}

/// What the uploader records before cleaning.
pub fn delivered(j: &mut Job) {
    j.delivery = Some(Delivery {
        message_id: 4242,
        file_id: "BAACAgQAAxkDAAIBY2ZxQvbench_file_id_of_realistic_length_AAQ".into(),
        sent_as: MediaKind::Video,
    });
}

/// One flushed transition of job `id` from what `expect` says to `to`,
/// applying `edit` on the way.
pub fn advance(
    store: &SledStore,
    id: JobId,
    expect: Expect,
    to: JobState,
    edit: &(dyn Fn(&mut Job) + Sync),
) {
    advance_at(store, id, expect, to, now_ms(), edit)
}

/// [`advance`] at the time `now`.
pub fn advance_at(
    store: &SledStore,
    id: JobId,
    expect: Expect,
    to: JobState,
    now: Millis,
    edit: &(dyn Fn(&mut Job) + Sync),
) {
    if let Err(e) = store.update(id, expect, Some(to), now, edit) {
        panic!("to {to}: {e:?}");
    }
}

/// `n` jobs in flight, made by `make(i)` and claimed by `owner`: a third
/// each left in downloading, uploading and cleaning. Returns each job's id
/// and state, in the order they were claimed.
pub fn seed_in_flight(
    store: &SledStore,
    n: u64,
    owner: Uuid,
    make: impl Fn(u64) -> NewJob,
) -> Vec<(Uuid, JobState)> {
    for i in 0..n {
        sled_enqueue(store, make(i));
    }
    let mut out = Vec::new();
    while let Some(job) = store.claim(owner, LEASE_MS, now_ms()).expect("claim") {
        let k = out.len() as u64;
        let own = |s| Expect::owned(s, owner);
        let mut state = JobState::Downloading;
        if k % 3 >= 1 {
            state = JobState::Uploading;
            advance(
                store,
                job.id,
                own(JobState::Downloading),
                state,
                &downloaded,
            );
        }
        if k % 3 == 2 {
            state = JobState::Cleaning;
            advance(store, job.id, own(JobState::Uploading), state, &delivered);
        }
        out.push((job.id.0, state));
    }
    assert_eq!(out.len() as u64, n);
    out
}

/// The version of what [`seed_finished`] makes, part of the name of every
/// kept seed (`benches/recovery.rs`, reused by `benches/health.rs`), so a
/// changed seed is made again rather than reused.
/// - v1: every finished job at the real clock, so a 1M seed put 200 links
///   of each of its 5,000 users in the same few minutes.
/// - v2: finished jobs on a simulated clock ([`SEED_STEP_MS`] apart), and
///   their done records as the bot leaves them (no file path).
/// - v3: as v2, made by a store that opens sled again every 32 checkpoints
///   of its log (`src/store/sled/handles.rs`), so the crash image holds a
///   recent page table snapshot, as a running bot's would.
/// - v4: as v3, made by a store of schema 4: done jobs have no `by_state`
///   entry, and each job's id carries the simulated clock's time (the
///   store makes ids at the time it is given), so its short id, and its
///   place in the `shorts` index, follow the month the seed spans.
pub const SEED_VERSION: &str = "v4";

/// Simulated time between two finished jobs of a seed: 1,000,000 jobs in
/// 30 days, a busy public bot. Each user (5,000 of them) then sends a link
/// every few hours, as users of a bot that grew its history over a month
/// do, rather than 200 in the minutes a seed takes: what a user's record
/// holds (the enqueues of the last hour) and so what every change rewrites
/// depends on it.
pub const SEED_STEP_MS: u64 = 30 * 24 * 3600 * 1000 / 1_000_000;

/// The simulated clock of the finished jobs: the next job's enqueue time.
/// It starts 30 days back and moves [`SEED_STEP_MS`] per job, across every
/// [`seed_finished`] call of the process, so a seed grown in steps stays in
/// time order.
static SEED_CLOCK: AtomicU64 = AtomicU64::new(0);

/// Add `n` finished jobs through the public API. Each takes the short path
/// to done (queued -> cleaning -> done, what a cancel does), carrying the
/// fields a delivered job has, so records are full size; at done the file
/// path goes, as `pipeline::cleanup` clears it. Each job is enqueued at the
/// next time of the simulated clock ([`SEED_CLOCK`]) and finishes a second
/// later.
pub fn seed_finished(store: &SledStore, n: u64, threads: usize) {
    let _ = SEED_CLOCK.compare_exchange(
        0,
        now_ms().saturating_sub(30 * 24 * 3600 * 1000),
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    let next = AtomicU64::new(0);
    std::thread::scope(|sc| {
        for t in 0..threads as u64 {
            let next = &next;
            sc.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let at = SEED_CLOCK.fetch_add(SEED_STEP_MS, Ordering::Relaxed);
                // Many users, as a long-running bot accumulates.
                let mut nj = new_job(1000 + t, i);
                nj.user_id = 10_000 + i % 5_000;
                let job = sled_enqueue_at(store, nj, at);
                let both = |j: &mut Job| {
                    downloaded(j);
                    delivered(j);
                };
                advance_at(
                    store,
                    job.id,
                    Expect::state(JobState::Queued),
                    JobState::Cleaning,
                    at + 500,
                    &both,
                );
                advance_at(
                    store,
                    job.id,
                    Expect::state(JobState::Cleaning),
                    JobState::Done,
                    at + 1_000,
                    &|j| j.file_path = None,
                );
            });
        }
    });
}

// ---------------------------------------------------------------------------
// Timing

pub struct Stats {
    pub n: usize,
    pub median: Duration,
    pub p99: Duration,
    pub max: Duration,
}

/// `reps` timed calls of `f`, after one untimed call so the first timed one
/// is not paying for a cold cache.
pub fn time_reps(reps: usize, mut f: impl FnMut()) -> Stats {
    f();
    let v: Vec<Duration> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    stats(v)
}

pub fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort_unstable();
    Stats {
        n: v.len(),
        median: v[v.len() / 2],
        p99: v[(v.len() * 99 / 100).min(v.len() - 1)],
        max: v[v.len() - 1],
    }
}

pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

pub fn fmt_dur(d: Duration) -> String {
    let ns = d.as_nanos() as f64;
    if ns < 1e3 {
        format!("{ns:.0} ns")
    } else if ns < 1e6 {
        format!("{:.1} µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

// ---------------------------------------------------------------------------
// Files, and which filesystem a path is on, from /proc/self/mountinfo (Linux
// only; the output says "unknown" elsewhere).

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create copy dir");
    for e in std::fs::read_dir(from).expect("read dir") {
        let e = e.expect("dir entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("file type").is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copy file");
        }
    }
}

pub struct Mount {
    pub point: String,
    pub fstype: String,
    pub source: String,
}

pub fn fs_of(path: &Path) -> Option<Mount> {
    let path = path.canonicalize().ok()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut best: Option<Mount> = None;
    for line in info.lines() {
        // id parent major:minor root mountpoint options [optional...] - fstype source superopts
        let (left, right) = line.split_once(" - ")?;
        let point = left.split(' ').nth(4)?.replace("\\040", " ");
        let mut r = right.split(' ');
        let (fstype, source) = (r.next()?.to_string(), r.next()?.to_string());
        if path.starts_with(&point) && best.as_ref().is_none_or(|b| point.len() >= b.point.len()) {
            best = Some(Mount {
                point,
                fstype,
                source,
            });
        }
    }
    best
}

pub fn is_tmpfs(path: &Path) -> bool {
    fs_of(path).is_some_and(|f| f.fstype == "tmpfs")
}

pub fn describe_fs(path: &Path) -> String {
    match fs_of(path) {
        Some(m) => format!(
            "{} ({} on {}, mounted at {})",
            path.display(),
            m.fstype,
            m.source,
            m.point
        ),
        None => format!("{} (filesystem unknown)", path.display()),
    }
}

// ---------------------------------------------------------------------------
// What sled needs on disk for the data it holds (issue 16's disk floor)

/// The live data of a sled database beside the room it takes: what the
/// store's records and index entries weigh, what the database takes on
/// disk, and what a freshly written copy of the same items takes.
pub struct Footprint {
    /// Items in every tree (records and index entries).
    pub items: u64,
    /// Their keys and values, in bytes: the data itself.
    pub live: u64,
    /// The database's folder (sled's files and the store's log).
    pub on_disk: u64,
    /// Every item written once, in key order, into a new sled database
    /// with the store's settings, flushed: sled's own floor for this data
    /// (no history of rewrites behind it).
    pub fresh_copy: u64,
    /// Opening that copy with [`SledStore::open`] without a restart since
    /// it was written (sled reads its whole log): the start-up floor.
    pub fresh_open: Duration,
}

/// Measure `db` (a [`SledStore`] folder that is not open), writing the
/// fresh copy under `scratch` (removed after).
pub fn sled_footprint(db: &Path, scratch: &Path) -> Footprint {
    let on_disk = tgdl::pipeline::cleanup::tree_size(db);
    let from = sled::Config::new()
        .path(db)
        .cache_capacity(16 * 1024 * 1024)
        .flush_every_ms(None)
        .open()
        .expect("open the database raw");
    let copy = scratch.join("fresh-copy");
    let _ = std::fs::remove_dir_all(&copy);
    let (mut items, mut live) = (0u64, 0u64);
    {
        let to = sled::Config::new()
            .path(&copy)
            .cache_capacity(16 * 1024 * 1024)
            .flush_every_ms(None)
            .open()
            .expect("create the copy");
        for name in from.tree_names() {
            let (src, dst) = (
                from.open_tree(&name).expect("tree"),
                to.open_tree(&name).expect("tree"),
            );
            for kv in src.iter() {
                let (k, v) = kv.expect("read item");
                items += 1;
                live += (k.len() + v.len()) as u64;
                dst.insert(k, v).expect("copy item");
            }
        }
        to.flush().expect("flush the copy");
    }
    drop(from);
    let fresh_copy = tgdl::pipeline::cleanup::tree_size(&copy);
    let t = Instant::now();
    let opened = SledStore::open(&copy).expect("open the copy as a store");
    let fresh_open = t.elapsed();
    drop(opened);
    std::fs::remove_dir_all(&copy).expect("remove the copy");
    Footprint {
        items,
        live,
        on_disk,
        fresh_copy,
        fresh_open,
    }
}
