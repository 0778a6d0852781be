//! `cargo bench --bench store`: what the durable job store costs on sled, what
//! the obvious alternative (SQLite) would cost, and what the store's own
//! PostgreSQL backend costs, on the same machine in the same run.
//!
//! A plain `main` rather than criterion's harness: the interesting numbers are
//! throughputs of fsync-bound work over a fixed time and medians of reads at
//! sizes that take minutes to build, which criterion's sampling model does not
//! fit. Every measurement prints as one row of a table with its unit.
//!
//! Environment:
//! - `TGDL_BENCH_QUICK=1`: smaller sizes and shorter runs, for a CI smoke run.
//! - `TGDL_BENCH_DIR=path`: where the durability measurements write (default:
//!   cargo's per-target temp dir under `target/`, i.e. the real disk).
//! - `TGDL_BENCH_SECS=n`: seconds per throughput measurement.
//! - `TGDL_TEST_PG=url`: the PostgreSQL server's admin URL (default: the
//!   local trust-auth server, `postgres://postgres@127.0.0.1:5432/postgres`);
//!   each PostgreSQL measurement runs in a database of its own there.
//! - `TGDL_BENCH_PG=0`: skip the PostgreSQL rows (no server at hand).
//! - `TGDL_BENCH_LIFECYCLE=n`: run only sled's lifecycle with `n` workers,
//!   three times, and print its batch size and CPU time
//!   ([`lifecycle_only`]).
//!
//! Arguments (cargo passes `--bench`) are ignored.

mod common;
#[path = "../tests/support/pg.rs"]
mod pg;
#[path = "store/pg.rs"]
mod postgres;
#[path = "store/sqlite.rs"]
mod sqlite;
#[path = "store/sqlite_writer.rs"]
mod sqlite_writer;

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{
    advance, delivered, describe_fs, downloaded, fmt_dur, is_tmpfs, new_job, seed_finished,
    seed_in_flight, stats, time_reps, Stats, LEASE_MS,
};
use postgres::Pg;
use sqlite::{Variant, Work};
use sqlite_writer::Batches;
use tgdl::job::{now_ms, Job, JobState, NewJob};
use tgdl::store::{EnqueueLimits, Expect, JobStore, LogSyncs, SledStore};
use uuid::Uuid;

struct Settings {
    quick: bool,
    /// Wall time of each throughput measurement.
    secs: f64,
    /// Stored-job totals at which the reads are timed.
    sizes: Vec<u64>,
    /// Jobs kept in downloading/uploading/cleaning at every size.
    in_flight: u64,
    seed_threads: usize,
}

impl Settings {
    fn from_env() -> Self {
        let quick = common::quick();
        let secs = std::env::var("TGDL_BENCH_SECS")
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(if quick { 1.0 } else { 8.0 });
        if quick {
            Settings {
                quick,
                secs,
                sizes: vec![1_000, 10_000],
                in_flight: 100,
                seed_threads: 2,
            }
        } else {
            Settings {
                quick,
                secs,
                sizes: vec![10_000, 100_000, 1_000_000],
                in_flight: 1_000,
                seed_threads: 2,
            }
        }
    }
}

fn main() {
    // harness = false: cargo hands us `--bench` (and maybe a filter); there is
    // nothing to select, so every argument is ignored on purpose.
    let started = Instant::now();
    let s = Settings::from_env();
    let disk_root = std::env::var_os("TGDL_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    std::fs::create_dir_all(&disk_root).expect("create bench dir");
    let disk = tempfile::Builder::new()
        .prefix("tgdl-bench-")
        .tempdir_in(&disk_root)
        .expect("temp dir on disk");
    // Seeding a million jobs with an fsync per transaction would take far too
    // long on a real disk; tmpfs makes fsync nearly free and changes nothing
    // about what the reads do.
    let shm = Path::new("/dev/shm");
    let seed_root = if is_tmpfs(shm) {
        shm.to_path_buf()
    } else {
        disk_root.clone()
    };
    let seed = tempfile::Builder::new()
        .prefix("tgdl-bench-seed-")
        .tempdir_in(&seed_root)
        .expect("temp dir for seeding");

    if let Ok(n) = std::env::var("TGDL_BENCH_LIFECYCLE") {
        let threads = n
            .parse()
            .unwrap_or_else(|_| panic!("TGDL_BENCH_LIFECYCLE={n:?}: not a number of workers"));
        lifecycle_only(disk.path(), threads, Duration::from_secs_f64(s.secs));
        return;
    }
    println!(
        "tgdl store benchmarks ({} mode, {} s per throughput run, {} CPUs)",
        if s.quick { "quick" } else { "full" },
        s.secs,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("durability runs in: {}", describe_fs(disk.path()));
    let pg = (!std::env::var("TGDL_BENCH_PG").is_ok_and(|v| v == "0")).then(Pg::start);
    match &pg {
        Some(pg) => {
            let s = &pg.server;
            println!(
                "postgres: {} at {}; data in {}",
                s.version,
                pg::admin_url(),
                s.data_directory
                    .as_deref()
                    .map_or_else(|| "(not shown)".into(), |d| describe_fs(Path::new(d)))
            );
            println!("postgres commits with: {}", s.durability);
        }
        None => println!("postgres: skipped (TGDL_BENCH_PG=0)"),
    }
    println!("read-scale seeding: {}", describe_fs(seed.path()));
    if is_tmpfs(disk.path()) {
        println!("WARNING: the durability directory is on tmpfs; fsync costs nothing there");
    }
    println!();

    // 0. What one fsync costs here: every durable number below is a small
    // multiple of it, so it is what makes runs on different disks comparable.
    let fsync = fsync_probe(disk.path(), Duration::from_secs_f64(s.secs.min(2.0)));
    println!(
        "disk: write 4 KiB + fdatasync: p50 {}, p99 {} ({} samples)",
        fmt_dur(fsync.median),
        fmt_dur(fsync.p99),
        fsync.n
    );
    println!();

    println!("load average (1 min): {}", common::loadavg());
    let mut rows: Vec<Row> = Vec::new();
    let mut batches: Vec<(&str, u64, Batches)> = Vec::new();
    // The store's group commit, beside the SQLite writer's batches.
    let mut sled_syncs: Vec<(&str, u64, LogSyncs)> = Vec::new();
    let dur = Duration::from_secs_f64(s.secs);
    let disk_dir = disk.path();
    let mut sqlite_run = |what, v: Variant, work, threads, rows: &mut Vec<Row>| {
        let run = sqlite::run(disk_dir, v, work, threads, dur);
        if let Some(b) = run.batches {
            batches.push((what, threads, b));
        }
        rows.push(Row::new(what, v.label(), threads, run.r));
    };

    // 1. Durable enqueue with 1, 4 and 16 workers: sled, SQLite FULL,
    // PostgreSQL, each worker count back to back, each on a fresh store.
    for threads in WORKERS {
        let dir = disk_dir.join(format!("enqueue{threads}.sled"));
        let store = SledStore::open(&dir).expect("open sled");
        let r = run_threads(threads, dur, |t| {
            let store = &store;
            move |i| {
                sled_enqueue(store, store_job(t, i));
                true
            }
        });
        sled_syncs.push((ENQUEUE, threads, store.log_syncs()));
        let report = store.check_invariants().expect("check invariants");
        assert!(report.problems.is_empty(), "{:#?}", report.problems);
        assert_eq!(report.counters.queued, r.ops, "every counted job is queued");
        rows.push(Row::new(ENQUEUE, "sled", threads, r));
        for v in [Variant::FULL_PER_CONNECTION, Variant::FULL_WRITER] {
            sqlite_run(ENQUEUE, v, Work::Enqueue, threads, &mut rows);
        }
        if let Some(pg) = &pg {
            let r = pg.run(Work::Enqueue, threads, dur);
            rows.push(Row::new(ENQUEUE, postgres::LABEL, threads, r));
        }
    }

    // 2. The lifecycle with 1, 4 and 16 workers: sled (one store shared by
    // the workers), then SQLite, then PostgreSQL (`PgStore`, one store shared
    // by the workers' tasks). SQLite FULL is the baseline, at the same
    // durability as the store: both fdatasync before a change counts as done,
    // as PostgreSQL does with synchronous_commit and fsync on (printed in the
    // header). NORMAL (WAL synced only at checkpoints) is the cheaper, weaker
    // option, shown for reference. Each worker count runs every backend back
    // to back, so they see the same load on this shared machine.
    for threads in WORKERS {
        let dir = disk_dir.join(format!("life{threads}.sled"));
        let store = SledStore::open(&dir).expect("open sled");
        let r = run_sled_lifecycle(&store, threads, dur);
        sled_syncs.push((LIFECYCLE, threads, store.log_syncs()));
        assert_lifecycle_whole(&store, r.ops);
        rows.push(Row::new(LIFECYCLE, "sled", threads, r));
        for v in [
            Variant::FULL_PER_CONNECTION,
            Variant::FULL_WRITER,
            Variant::NORMAL_PER_CONNECTION,
        ] {
            sqlite_run(LIFECYCLE, v, Work::Lifecycle, threads, &mut rows);
        }
        if let Some(pg) = &pg {
            let r = pg.run(Work::Lifecycle, threads, dur);
            rows.push(Row::new(LIFECYCLE, postgres::LABEL, threads, r));
        }
    }
    print_throughput(&rows);
    println!();
    let workers = |n: u64| format!("{n} worker{}", if n == 1 { "" } else { "s" });
    for (what, threads, l) in &sled_syncs {
        println!(
            "sled: {what}, {}: {:.2} changes per log fdatasync ({} syncs, {} after a wait \
             for more)",
            workers(*threads),
            l.per_sync(),
            l.syncs,
            l.lingered
        );
    }
    for (what, threads, b) in &batches {
        println!(
            "{}: {what}, {}: {:.2} changes per commit ({} commits)",
            Variant::FULL_WRITER.label(),
            workers(*threads),
            b.per_commit(),
            b.commits
        );
    }
    println!();
    println!("sled / SQLite throughput ratio (>1: sled is faster)");
    print_ratios(&rows, |b| b != "sled" && b != postgres::LABEL);
    if pg.is_some() {
        println!("sled / PostgreSQL throughput ratio (>1: sled is faster)");
        print_ratios(&rows, |b| b == postgres::LABEL);
    }
    println!(
        "  note: SledStore makes each change durable with an fdatasync of its own log \
         (tgdl.wal, group-committed across threads); sled's flush alone only calls \
         sync_file_range(2), so a checkpoint adds an fdatasync of sled's data file. SQLite FULL \
         fdatasyncs its WAL at each commit (built with HAVE_FDATASYNC, see .cargo/config.toml)."
    );
    if let Some(pg) = &pg {
        println!(
            "  note: PostgreSQL runs at the server's settings ({}): each COMMIT returns once \
             the WAL is flushed, concurrent commits sharing one flush; it runs on this machine \
             beside the bench, over TCP on 127.0.0.1, so its CPU time counts against it.",
            pg.server.durability
        );
    }
    println!("load average (1 min): {}", common::loadavg());
    println!();
    drop(disk);

    // 4. Reads against a growing history.
    read_scale(&s, seed.path());
    drop(seed);

    println!();
    println!("total bench time: {:.1} s", started.elapsed().as_secs_f64());
}

/// `TGDL_BENCH_LIFECYCLE=n`: only sled's lifecycle with `n` workers, three
/// runs on fresh stores, each with its batch size and the CPU time the
/// process used: what a change to the log's group commit moves, without
/// the minutes of the whole bench.
fn lifecycle_only(dir: &Path, threads: u64, dur: Duration) {
    // utime and stime of this process, in clock ticks (fields 14 and 15 of
    // /proc/self/stat, counted after the command's closing parenthesis).
    let cpu = || -> (u64, u64) {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let after = stat.rsplit(')').next().unwrap_or_default();
        let mut f = after
            .split_whitespace()
            .skip(11)
            .map(|v| v.parse().unwrap_or(0));
        (f.next().unwrap_or(0), f.next().unwrap_or(0))
    };
    println!(
        "sled lifecycle only, {threads} workers, {} s per run",
        dur.as_secs_f64()
    );
    println!("disk: {}", describe_fs(dir));
    for run in 1..=3 {
        let store = SledStore::open(&dir.join(format!("only{run}.sled"))).expect("open");
        let before = cpu();
        let r = run_sled_lifecycle(&store, threads, dur);
        let after = cpu();
        assert_lifecycle_whole(&store, r.ops);
        let secs = r.elapsed.as_secs_f64();
        let l = store.log_syncs();
        println!(
            "run {run}: {:.0} jobs/s; {:.2} changes per log fdatasync, {:.0} syncs/s, {} of them \
             after a wait for more; CPU user {} sys {} ticks",
            r.ops as f64 / secs,
            l.per_sync(),
            l.syncs as f64 / secs,
            l.lingered,
            after.0 - before.0,
            after.1 - before.1,
        );
    }
}

// ---------------------------------------------------------------------------
// Workloads

/// The limits every enqueue of the durability runs is checked against, on
/// both backends. Not exempt: an admin's enqueue (`exempt`) skips the per-user
/// checks, a user's runs them, and SQLite runs the same checks as queries.
/// Nothing may be refused (a refusal would be less work than a job): the
/// per-user active limit is as high as it goes because the enqueue-only run
/// never finishes a job, and [`store_job`] keeps every user under the hourly
/// limit, the shipped default, which also bounds the store's per-user window
/// of recent enqueues as it does in production.
const LIMITS: EnqueueLimits = EnqueueLimits {
    per_user_active: u32::MAX,
    per_user_per_hour: 20,
    queue_capacity: u64::MAX,
    exempt: false,
};

/// Links each bench user sends, under the hourly limit of [`LIMITS`].
const JOBS_PER_USER: u64 = 10;

/// Job `i` of worker `t`. Users come and go: each worker serves 8 users at a
/// time, so the fair scheduler has a turn list to walk, and every user sends
/// [`JOBS_PER_USER`] links before a new one takes its place.
fn store_job(t: u64, i: u64) -> NewJob {
    let mut n = new_job(t, i);
    let user = (t << 32) + i / (8 * JOBS_PER_USER) * 8 + i % 8;
    n.user_id = user;
    n.chat_id = user as i64;
    n
}

/// Enqueue on sled under [`LIMITS`], insisting on a new job: a request
/// folded into an existing job would be less work than the bench says.
fn sled_enqueue(store: &SledStore, new: NewJob) {
    let e = store.enqueue(new, LIMITS, now_ms()).expect("enqueue");
    assert!(!e.duplicate, "bench requests must be distinct");
}

/// [`sled_lifecycle`] on one store shared by `threads` workers, for `dur`.
fn run_sled_lifecycle(store: &SledStore, threads: u64, dur: Duration) -> Throughput {
    run_threads(threads, dur, |t| {
        let owner = Uuid::now_v7();
        move |i| sled_lifecycle(store, owner, t, i)
    })
}

/// A benchmark that corrupted the store would be measuring a bug: after a
/// lifecycle run, the store's invariants hold and every job counted is done.
fn assert_lifecycle_whole(store: &SledStore, done: u64) {
    let report = store.check_invariants().expect("check invariants");
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
    assert_eq!(report.counters.done, done, "every counted job is done");
}

/// Enqueue one job, then claim whatever is due and drive it to done, as a
/// worker does. Returns whether a job reached done.
fn sled_lifecycle(store: &SledStore, owner: Uuid, t: u64, i: u64) -> bool {
    sled_enqueue(store, store_job(t, i));
    // Another worker may have taken the job just enqueued, and every queued
    // one: then this worker has nothing to do this round.
    let Some(job) = store.claim(owner, LEASE_MS, now_ms()).expect("claim") else {
        return false;
    };
    let step = |from, to, edit: &(dyn Fn(&mut Job) + Sync)| {
        advance(store, job.id, Expect::owned(from, owner), to, edit);
    };
    step(JobState::Downloading, JobState::Uploading, &downloaded);
    step(JobState::Uploading, JobState::Cleaning, &delivered);
    step(JobState::Cleaning, JobState::Done, &|_| {});
    true
}

const ENQUEUE: &str = "durable enqueue";
/// Worker counts of every throughput measurement.
const WORKERS: [u64; 3] = [1, 4, 16];
const LIFECYCLE: &str = "lifecycle, 5 flushed tx/job";

// ---------------------------------------------------------------------------
// Read scale: counts() and in_flight() as finished jobs pile up.

fn read_scale(s: &Settings, dir: &Path) {
    let path = dir.join("scale.sled");
    let mut store = SledStore::open(&path).expect("open sled");
    let owner = Uuid::now_v7();

    // The in-flight set comes first and stays the same at every size: a third
    // each in downloading, uploading and cleaning.
    let t0 = Instant::now();
    seed_in_flight(&store, s.in_flight, owner, |i| new_job(999, i));
    let mut seed_time = t0.elapsed();
    let mut stored = s.in_flight;

    println!(
        "reads with {} jobs in flight as finished jobs accumulate (sled)",
        s.in_flight
    );
    println!(
        "{:>10} | {:>12} | {:>14} | {:>16} | {:>18} | {:>10} | {:>11}",
        "stored",
        "seeded in",
        "counts() p50",
        "counts() p99",
        "in_flight() p50",
        "max",
        "size on disk"
    );
    println!("{}", "-".repeat(110));
    let mut results = Vec::new();
    for &target in &s.sizes {
        let t = Instant::now();
        seed_finished(&store, target - stored, s.seed_threads);
        seed_time += t.elapsed();
        stored = target;

        let c = store.counts().expect("counts");
        assert_eq!(c.total(), stored);
        assert_eq!(c.active(), s.in_flight);

        let counts = time_reps(2001, || {
            black_box(store.counts().expect("counts"));
        });
        let inflight = time_reps(if s.quick { 21 } else { 51 }, || {
            let v = store.in_flight().expect("in_flight");
            assert_eq!(v.len() as u64, s.in_flight);
            black_box(v);
        });
        println!(
            "{:>10} | {:>10.1} s | {:>14} | {:>16} | {:>18} | {:>10} | {:>8.0} MiB",
            stored,
            seed_time.as_secs_f64(),
            fmt_dur(counts.median),
            fmt_dur(counts.p99),
            fmt_dur(inflight.median),
            fmt_dur(inflight.max),
            store.size_on_disk() as f64 / (1 << 20) as f64,
        );
        results.push((stored, counts, inflight));
    }

    // Recovery reads in_flight() right after opening: time the reopen (sled
    // replays its log) and the first, cold call.
    drop(store);
    let t = Instant::now();
    store = SledStore::open(&path).expect("reopen");
    let reopen = t.elapsed();
    let t = Instant::now();
    let v = store.in_flight().expect("in_flight");
    let cold = t.elapsed();
    assert_eq!(v.len() as u64, s.in_flight);
    let t = Instant::now();
    black_box(store.counts().expect("counts"));
    let cold_counts = t.elapsed();
    println!(
        "after reopen at {stored} stored: open {}, first in_flight() {}, first counts() {}",
        fmt_dur(reopen),
        fmt_dur(cold),
        fmt_dur(cold_counts)
    );
    println!(
        "seeding: {} finished jobs, 3 flushed transactions each (enqueue, queued->cleaning, \
         cleaning->done), {} threads, {:.0} jobs/s",
        stored - s.in_flight,
        s.seed_threads,
        (stored - s.in_flight) as f64 / seed_time.as_secs_f64()
    );

    let (_, first_c, first_f) = &results[0];
    let (last_n, last_c, last_f) = results.last().expect("a size");
    let verdict = |ok: bool| if ok { "PASS" } else { "FAIL" };
    println!();
    println!(
        "targets at {last_n} stored: counts() p50 {} < 1 ms: {}; in_flight() p50 {} < 10 ms: {}",
        fmt_dur(last_c.median),
        verdict(last_c.median < Duration::from_millis(1)),
        fmt_dur(last_f.median),
        verdict(last_f.median < Duration::from_millis(10)),
    );
    println!(
        "growth from {} to {last_n} stored: counts() x{:.2}, in_flight() x{:.2}",
        results[0].0,
        last_c.median.as_secs_f64() / first_c.median.as_secs_f64(),
        last_f.median.as_secs_f64() / first_f.median.as_secs_f64(),
    );
}

// ---------------------------------------------------------------------------
// Measurement plumbing

#[derive(Clone, Copy)]
struct Throughput {
    ops: u64,
    elapsed: Duration,
}

impl Throughput {
    fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
}

/// Run `threads` workers until `dur` has passed, each calling its closure
/// with a sequence number; the closure says whether it completed an op.
fn run_threads<F, M>(threads: u64, dur: Duration, mut make: M) -> Throughput
where
    M: FnMut(u64) -> F,
    F: FnMut(u64) -> bool + Send,
{
    let done = AtomicU64::new(0);
    let start = Instant::now();
    let deadline = start + dur;
    std::thread::scope(|sc| {
        for t in 0..threads {
            let mut f = make(t);
            let done = &done;
            sc.spawn(move || {
                let mut i = 0;
                while Instant::now() < deadline {
                    if f(i) {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                }
            });
        }
    });
    Throughput {
        ops: done.into_inner(),
        elapsed: start.elapsed(),
    }
}

/// [`run_threads`] for workers that each own a value (a SQLite connection).
fn run_threads_with<C: Send>(
    conns: Vec<C>,
    dur: Duration,
    step: impl Fn(C, u64, u64) -> (C, bool) + Sync,
) -> Throughput {
    let threads = conns.len() as u64;
    let mut conns = conns.into_iter();
    let step = &step;
    run_threads(threads, dur, |t| {
        let mut conn = conns.next();
        move |i| {
            let (c, ok) = step(conn.take().expect("conn"), t, i);
            conn = Some(c);
            ok
        }
    })
}

struct Row {
    what: &'static str,
    backend: &'static str,
    threads: u64,
    r: Throughput,
}

impl Row {
    fn new(what: &'static str, backend: &'static str, threads: u64, r: Throughput) -> Self {
        Row {
            what,
            backend,
            threads,
            r,
        }
    }
}

/// Sled's throughput over that of each row whose backend `other` picks, for
/// the same measurement and worker count.
fn print_ratios(rows: &[Row], other: impl Fn(&str) -> bool) {
    for r in rows.iter().filter(|r| other(r.backend)) {
        let sled = rows
            .iter()
            .find(|s| s.backend == "sled" && s.what == r.what && s.threads == r.threads)
            .expect("a sled row for every other row");
        println!(
            "  {:<28} {:>2} worker{} vs {:<26} {:>6.2}x",
            r.what,
            r.threads,
            if r.threads == 1 { " " } else { "s" },
            r.backend,
            sled.r.rate() / r.r.rate()
        );
    }
}

fn print_throughput(rows: &[Row]) {
    println!(
        "{:<28} | {:<26} | {:>7} | {:>8} | {:>14} | {:>18}",
        "measurement", "backend", "workers", "jobs", "throughput", "wall time per job"
    );
    println!("{}", "-".repeat(115));
    for r in rows {
        println!(
            "{:<28} | {:<26} | {:>7} | {:>8} | {:>8.0} jobs/s | {:>18}",
            r.what,
            r.backend,
            r.threads,
            r.r.ops,
            r.r.rate(),
            fmt_dur(Duration::from_secs_f64(1.0 / r.r.rate().max(1e-9)))
        );
    }
}

/// Time `write 4 KiB + fdatasync` on a file in `dir` for about `dur`.
fn fsync_probe(dir: &Path, dur: Duration) -> Stats {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::File::create(dir.join("fsync-probe")).expect("probe file");
    let block = [7u8; 4096];
    let deadline = Instant::now() + dur;
    let mut v = Vec::new();
    while Instant::now() < deadline || v.is_empty() {
        let t = Instant::now();
        f.seek(SeekFrom::Start(0)).expect("seek");
        f.write_all(&block).expect("write");
        f.sync_data().expect("fdatasync");
        v.push(t.elapsed());
    }
    stats(v)
}
