//! `cargo bench --bench health`: what the health monitor costs (issue 5).
//!
//! 1. The sampler's own cost: process CPU time (user + system, from
//!    `getrusage(RUSAGE_SELF)`, so the blocking-pool threads that read the
//!    store and walk the downloads folder are counted too) of N calls of
//!    `SysinfoProbe::system()` alone, of `Monitor::sample()` (which calls the
//!    probe, walks the downloads folder and reads the store's counters), and
//!    of `Monitor::tick()` (a sample plus rules, alerts and retention
//!    pruning), on a store with 10,000 jobs. Expressed as % of one core at
//!    the default `health.interval_secs` (60 s). Target: under 1 %.
//! 2. `/health` with 1,000,000 stored jobs (1,000 of them in flight):
//!    `tgdl::ops::report::health_text`, both as a running bot answers it (from the
//!    monitor's latest sample) and on a bot whose monitor has not sampled yet
//!    (a fresh `Monitor::sample` + rules + `render_health`). p50 and p99.
//!    Target: under 5 ms.
//!
//! 3. The same as 2 on PostgreSQL (`benches/health/pg.rs`): a fresh database
//!    on the local server holding as many jobs, the in-flight ones and a few
//!    thousand finished ones made through the store API and the rest of the
//!    finished ones copied in SQL with their counters, with the EXPLAIN of
//!    `counts()` and `list_state(in flight)`. Printed beside part 2's sled
//!    numbers from the same run.
//!
//! Seeds go through the public API (as in `benches/store.rs`) in `/dev/shm`
//! when it is tmpfs. The 1,000,000-job store of `benches/recovery.rs` is
//! reused when that bench has built it (the same layout); otherwise this
//! bench seeds its own and keeps it for later runs.
//!
//! Environment:
//! - `TGDL_BENCH_QUICK=1`: 10,000 jobs instead of 1,000,000 for part 2 and
//!   fewer repetitions, for a smoke run.
//! - `TGDL_BENCH_SEED_DIR=path`: where seeds are kept (default
//!   `/dev/shm/tgdl-bench-recovery` when tmpfs, else `target/tmp`).
//!
//! - `TGDL_BENCH_ONLY=pg`: part 3 alone; `=sled`: parts 1 and 2 alone.
//!   Unset: all three, part 3 only when the PostgreSQL server answers.
//! - `TGDL_TEST_PG=url`: the server's admin URL for part 3 (default
//!   `postgres://postgres@127.0.0.1:5432/postgres`, as the tests).
//!
//! Arguments (cargo passes `--bench`) are ignored.

mod common;
#[path = "health/pg.rs"]
mod pg;

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    copy_dir, describe_fs, fmt_dur, loadavg, new_job, seed_finished, seed_in_flight, time_reps,
    Stats, SEED_VERSION,
};
use tgdl::config::Config;
use tgdl::ops::health::HealthState;
use tgdl::ops::health::{Monitor, Probe, SysinfoProbe};
use tgdl::pipeline::JobService;
use tgdl::store::{JobStore, SledStore};
use uuid::Uuid;

struct Settings {
    quick: bool,
    /// Calls per CPU-time measurement.
    calls: u64,
    /// Stored jobs for the `/health` timing.
    big: u64,
    in_flight: u64,
    /// Timed `/health` calls.
    reps: usize,
}

/// Which parts run (`TGDL_BENCH_ONLY`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Only {
    All,
    Sled,
    Pg,
}

impl Only {
    fn from_env() -> Self {
        match std::env::var("TGDL_BENCH_ONLY").as_deref() {
            Err(_) | Ok("") => Only::All,
            Ok("sled") => Only::Sled,
            Ok("pg") => Only::Pg,
            Ok(other) => panic!("TGDL_BENCH_ONLY={other}: expected sled or pg"),
        }
    }
}

/// Part 2's (and 3's) timings on one backend.
struct Measured {
    cached: Stats,
    fresh: Stats,
    sample: Stats,
    in_flight: Stats,
    /// `store.in_flight_since()`, what the sample reads for its stuck-job
    /// check (ids, states and since when, not whole records).
    in_flight_since: Stats,
    counts: Stats,
    /// `store.size_on_disk()` and `store.finished_since(an hour ago)`, the
    /// sample's other store reads.
    size: Stats,
    finished: Stats,
    /// The first `/health` after opening the store (no sample yet).
    cold: Duration,
    /// The first `Monitor::tick`.
    tick: Duration,
    /// The first `/health` text.
    text: String,
}

impl Settings {
    fn from_env() -> Self {
        let quick = common::quick();
        if quick {
            Settings {
                quick,
                calls: 100,
                big: 10_000,
                in_flight: 100,
                reps: 200,
            }
        } else {
            Settings {
                quick,
                calls: 1_000,
                big: 1_000_000,
                in_flight: 1_000,
                reps: 2_000,
            }
        }
    }
}

fn main() {
    let started = Instant::now();
    let s = Settings::from_env();
    let only = Only::from_env();
    let root = common::seed_dir();
    std::fs::create_dir_all(&root).expect("create seed root");
    let scratch = tempfile::Builder::new()
        .prefix("health-")
        .tempdir_in(&root)
        .expect("scratch dir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");

    println!(
        "tgdl health benchmark ({} mode, {} CPUs, load average {})",
        if s.quick { "quick" } else { "full" },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg()
    );
    println!("stores in: {}", describe_fs(&root));
    println!();

    let sled = if only == Only::Pg {
        None
    } else {
        sled_cost(&rt, &s, scratch.path());
        Some(sled_health(&rt, &s, &root, scratch.path()))
    };

    // 3. The same on PostgreSQL.
    let pg = match only {
        Only::Sled => None,
        _ => match pg::server_up(&rt) {
            Ok(()) => Some(pg::run(&rt, &s, scratch.path())),
            Err(e) if only == Only::Pg => panic!(
                "PostgreSQL is not reachable ({e}); start it with \
                 `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`"
            ),
            Err(e) => {
                println!("part 3 skipped: PostgreSQL is not reachable ({e})");
                None
            }
        },
    };
    if let Some(m) = &pg {
        report(&s, "PostgreSQL", "first call after connect", m);
    }
    if let (Some(a), Some(b)) = (&sled, &pg) {
        compare(&s, a, b);
    }
    drop(rt);
    println!(
        "total bench time {:.0} s (load average now {})",
        started.elapsed().as_secs_f64(),
        loadavg()
    );
}

/// Part 1: the sampler's own cost, on a sled store with 10,000 jobs.
fn sled_cost(rt: &tokio::runtime::Runtime, s: &Settings, scratch: &Path) {
    let small = scratch.join("small");
    let t = Instant::now();
    seed_store(&small.join("data"), 10_000, 100);
    println!(
        "part 1 store: 10000 jobs (100 in flight) seeded in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let core = open_core(&small.join("data"));
    let interval = core.jobs.config.health.interval_secs;
    let mut rows = Vec::new();
    {
        let mut probe = SysinfoProbe::new(&core.jobs.config.downloads_dir());
        rows.push(cpu_cost("SysinfoProbe::system()", s.calls, || {
            black_box(probe.system());
        }));
    }
    {
        let mut m = monitor(&core);
        rows.push(cpu_cost(
            "Monitor::sample() (probe + store + folder)",
            s.calls,
            || {
                black_box(rt.block_on(m.sample()).expect("sample"));
            },
        ));
    }
    {
        let mut m = monitor(&core);
        rows.push(cpu_cost(
            "Monitor::tick() (sample + rules + prune)",
            s.calls,
            || {
                black_box(rt.block_on(m.tick()).expect("tick"));
            },
        ));
    }
    // What the process burns doing nothing for as long (sled's flusher,
    // tokio's idle workers): the noise floor of the numbers above.
    let idle = idle_cpu(Duration::from_secs(if s.quick { 1 } else { 3 }));
    println!();
    println!(
        "(1) the sampler's own cost: process CPU time (user + sys) of {} back-to-back calls, \
         store with 10000 jobs",
        s.calls
    );
    println!(
        "{:<44} | {:>12} | {:>13} | {:>26}",
        "what",
        "CPU per call",
        "wall per call",
        format!("% of one core every {interval} s")
    );
    println!("{}", "-".repeat(106));
    for r in &rows {
        let per = r.cpu / r.calls as u32;
        println!(
            "{:<44} | {:>12} | {:>13} | {:>24.5} %",
            r.what,
            fmt_dur(per),
            fmt_dur(r.wall / r.calls as u32),
            per.as_secs_f64() / interval as f64 * 100.0
        );
    }
    println!(
        "noise floor: the idle process burns {:.3} % of one core (measured over {} s)",
        idle * 100.0,
        if s.quick { 1 } else { 3 }
    );
    let tick_pct = rows
        .last()
        .map(|r| (r.cpu / r.calls as u32).as_secs_f64() / interval as f64 * 100.0)
        .unwrap_or(0.0);
    println!(
        "target: a full tick every {interval} s < 1 % of one core: {:.5} %: {}",
        tick_pct,
        if tick_pct < 1.0 { "PASS" } else { "FAIL" }
    );
    drop(core);
    let _ = std::fs::remove_dir_all(&small);
    println!();
}

/// Part 2: `/health` on a sled store with `s.big` jobs.
fn sled_health(
    rt: &tokio::runtime::Runtime,
    s: &Settings,
    root: &Path,
    scratch: &Path,
) -> Measured {
    let (src, how) = big_store(s, root);
    let big = scratch.join("big");
    copy_dir(&src, &big);
    println!("part 2 store: {} ({how})", src.display());
    let t = Instant::now();
    let core = open_core(&big.join("data"));
    let opened = t.elapsed();
    let counts = rt.block_on(core.jobs.store.counts()).expect("counts");
    assert_eq!(counts.total(), s.big);
    println!(
        "{} stored jobs, {} active, {:.0} MiB on disk; open took {}",
        counts.total(),
        counts.active(),
        rt.block_on(core.jobs.store.size_on_disk()) as f64 / (1 << 20) as f64,
        fmt_dur(opened)
    );

    // A bot whose monitor has not sampled yet: every call samples afresh.
    let t = Instant::now();
    let text = rt
        .block_on(tgdl::ops::report::health_text(&core.jobs, &core.health))
        .expect("health_text");
    let cold = t.elapsed();
    assert!(text.contains("tgdl is"), "{text}");
    let fresh = time_reps(s.reps, || {
        black_box(
            rt.block_on(tgdl::ops::report::health_text(&core.jobs, &core.health))
                .expect("health_text"),
        );
    });
    // A running bot: the monitor ticked, `/health` renders its sample.
    let mut m = monitor(&core);
    let t = Instant::now();
    rt.block_on(m.tick()).expect("tick");
    let tick = t.elapsed();
    let cached = time_reps(s.reps, || {
        black_box(
            rt.block_on(tgdl::ops::report::health_text(&core.jobs, &core.health))
                .expect("health_text"),
        );
    });
    let sample = time_reps(s.reps.min(500), || {
        black_box(rt.block_on(m.sample()).expect("sample"));
    });
    // Where a fresh sample's time goes: the in-flight jobs it reads (for
    // stuck-job detection; whole records for comparison) against the
    // maintained counters.
    let store = core.jobs.store.clone();
    let (in_flight, in_flight_since) = in_flight_reads(rt, s, &store);
    let counts = time_reps(s.reps, || {
        black_box(rt.block_on(store.counts()).expect("counts"));
    });
    let (size, finished) = other_reads(rt, s, &store);
    drop(m);
    drop(store);
    drop(core);
    let _ = std::fs::remove_dir_all(&big);
    let m = Measured {
        cached,
        fresh,
        sample,
        in_flight,
        in_flight_since,
        counts,
        size,
        finished,
        cold,
        tick,
        text,
    };
    report(s, "sled", "first call after open (cold sled cache)", &m);
    m
}

/// Part 2's (or 3's) table and the text measured.
fn report(s: &Settings, backend: &str, cold_what: &str, m: &Measured) {
    println!();
    println!(
        "({}) /health on {backend} with {} stored jobs ({} in flight): \
         tgdl::ops::report::health_text, {} calls each",
        if backend == "sled" { 2 } else { 3 },
        s.big,
        s.in_flight,
        s.reps
    );
    println!(
        "{:<58} | {:>10} | {:>10} | {:>10}",
        "path", "p50", "p99", "max"
    );
    println!("{}", "-".repeat(96));
    for (what, st) in rows(s, m) {
        println!(
            "{:<58} | {:>10} | {:>10} | {:>10}",
            what,
            fmt_dur(st.median),
            fmt_dur(st.p99),
            fmt_dur(st.max)
        );
    }
    println!(
        "{cold_what}: {}; first Monitor::tick: {}",
        fmt_dur(m.cold),
        fmt_dur(m.tick)
    );
    println!(
        "target < 5 ms at {} stored: running bot p99 {}: {}; no sample yet p99 {}: {}",
        s.big,
        fmt_dur(m.cached.p99),
        pass(m.cached.p99),
        fmt_dur(m.fresh.p99),
        pass(m.fresh.p99)
    );
    println!();
    // A dead owner's in-flight jobs are all "stuck", and the list makes the
    // text long; show its head only.
    let head: String = m.text.chars().take(900).collect();
    println!(
        "the text measured ({} characters; the bot cuts replies at 4096):\n{head}{}",
        m.text.chars().count(),
        if head.len() < m.text.len() { "…" } else { "" }
    );
}

fn pass(d: Duration) -> &'static str {
    if d < Duration::from_millis(5) {
        "PASS"
    } else {
        "FAIL"
    }
}

/// The rows of the /health table.
fn rows<'a>(s: &Settings, m: &'a Measured) -> Vec<(String, &'a Stats)> {
    vec![
        (
            "running bot: render the monitor's latest sample".into(),
            &m.cached,
        ),
        (
            "no sample yet: Monitor::sample + rules + render_health".into(),
            &m.fresh,
        ),
        (
            format!("Monitor::sample alone ({} calls)", m.sample.n),
            &m.sample,
        ),
        (
            format!("  of which store.in_flight_since() ({} jobs)", s.in_flight),
            &m.in_flight_since,
        ),
        (
            format!(
                "  (not read: store.in_flight(), {} whole records)",
                s.in_flight
            ),
            &m.in_flight,
        ),
        (
            "  of which store.counts() (maintained counters)".into(),
            &m.counts,
        ),
        ("  of which store.size_on_disk()".into(), &m.size),
        (
            "  of which store.finished_since(an hour ago)".into(),
            &m.finished,
        ),
    ]
}

/// `store.in_flight()` (whole records) and `store.in_flight_since()` (what
/// the sample reads), timed alone, after checking they name the same jobs.
fn in_flight_reads(
    rt: &tokio::runtime::Runtime,
    s: &Settings,
    store: &Arc<dyn tgdl::store::Backend>,
) -> (Stats, Stats) {
    let mut whole: Vec<tgdl::store::InFlight> = rt
        .block_on(store.in_flight())
        .expect("in_flight")
        .iter()
        .map(tgdl::store::InFlight::of)
        .collect();
    let mut heads = rt
        .block_on(store.in_flight_since())
        .expect("in_flight_since");
    whole.sort_by_key(|f| f.id);
    heads.sort_by_key(|f| f.id);
    assert_eq!(heads.len() as u64, s.in_flight);
    assert_eq!(heads, whole, "in_flight_since() and in_flight() differ");
    let in_flight = time_reps(s.reps.min(500), || {
        black_box(rt.block_on(store.in_flight()).expect("in_flight"));
    });
    let since = time_reps(s.reps.min(500), || {
        black_box(
            rt.block_on(store.in_flight_since())
                .expect("in_flight_since"),
        );
    });
    (in_flight, since)
}

/// The sample's other store reads, timed alone.
fn other_reads(
    rt: &tokio::runtime::Runtime,
    s: &Settings,
    store: &Arc<dyn tgdl::store::Backend>,
) -> (Stats, Stats) {
    let size = time_reps(s.reps.min(500), || {
        black_box(rt.block_on(store.size_on_disk()));
    });
    let finished = time_reps(s.reps.min(500), || {
        let since = tgdl::job::now_ms().saturating_sub(tgdl::job::HOUR_MS);
        black_box(
            rt.block_on(store.finished_since(since))
                .expect("finished_since"),
        );
    });
    (size, finished)
}

/// sled and PostgreSQL side by side.
fn compare(s: &Settings, sled: &Measured, pg: &Measured) {
    println!();
    println!(
        "/health with {} stored jobs ({} in flight), this run: sled | PostgreSQL",
        s.big, s.in_flight
    );
    println!(
        "{:<56} | {:>9} {:>9} {:>9} | {:>9} {:>9} {:>9}",
        "path", "sled p50", "p99", "max", "PG p50", "p99", "max"
    );
    println!("{}", "-".repeat(125));
    for ((what, a), (_, b)) in rows(s, sled).into_iter().zip(rows(s, pg)) {
        println!(
            "{:<56} | {:>9} {:>9} {:>9} | {:>9} {:>9} {:>9}",
            what,
            fmt_dur(a.median),
            fmt_dur(a.p99),
            fmt_dur(a.max),
            fmt_dur(b.median),
            fmt_dur(b.p99),
            fmt_dur(b.max)
        );
    }
    println!(
        "{:<56} | {:>29} | {:>29}",
        "first /health (no sample yet, fresh store handle)",
        fmt_dur(sled.cold),
        fmt_dur(pg.cold)
    );
    println!(
        "{:<56} | {:>29} | {:>29}",
        "first Monitor::tick",
        fmt_dur(sled.tick),
        fmt_dur(pg.tick)
    );
    println!(
        "target < 5 ms p99: sled running {} / no sample {}; PostgreSQL running {} / no sample {}",
        pass(sled.cached.p99),
        pass(sled.fresh.p99),
        pass(pg.cached.p99),
        pass(pg.fresh.p99)
    );
    println!();
}

/// The job service and the health state of one bot, as `app::run` wires them.
struct Core {
    jobs: Arc<JobService>,
    health: Arc<HealthState>,
}

fn open_core(data: &Path) -> Arc<Core> {
    let mut config = Config::default();
    config.storage.data_dir = data.to_path_buf();
    let store = tgdl::store::OnBlockingPool::shared(Arc::new(
        SledStore::open(&config.db_dir()).expect("open store"),
    ));
    let jobs = Arc::new(JobService::new(Arc::new(config), store, None).expect("job service"));
    let health = Arc::new(HealthState::default());
    *health.ytdlp_version.write().unwrap() = "2026.10.26".into();
    Arc::new(Core { jobs, health })
}

fn monitor(core: &Arc<Core>) -> Monitor {
    Monitor::new(
        core.jobs.clone(),
        core.health.clone(),
        None,
        Box::new(SysinfoProbe::new(&core.jobs.config.downloads_dir())),
    )
}

// ---------------------------------------------------------------------------
// CPU time

struct CpuRow {
    what: &'static str,
    calls: u64,
    cpu: Duration,
    wall: Duration,
}

/// Process CPU time (user + system, every thread).
fn process_cpu() -> Duration {
    // SAFETY: rusage is plain integers, for which all-zero bytes are valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid out pointer for getrusage.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    assert_eq!(rc, 0, "getrusage");
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn cpu_cost(what: &'static str, calls: u64, mut f: impl FnMut()) -> CpuRow {
    // One untimed call: the first refresh allocates sysinfo's tables.
    f();
    let (c0, w0) = (process_cpu(), Instant::now());
    for _ in 0..calls {
        f();
    }
    CpuRow {
        what,
        calls,
        cpu: process_cpu() - c0,
        wall: w0.elapsed(),
    }
}

/// The fraction of one core the process uses while idle for `d`.
fn idle_cpu(d: Duration) -> f64 {
    let c0 = process_cpu();
    std::thread::sleep(d);
    (process_cpu() - c0).as_secs_f64() / d.as_secs_f64()
}

// ---------------------------------------------------------------------------
// Stores

/// The big store's source: the recovery bench's restarted crash image when
/// it exists, else one of our own (seeded once and kept).
fn big_store(s: &Settings, root: &Path) -> (PathBuf, &'static str) {
    let mode = if s.quick { "quick" } else { "full" };
    let theirs = root
        .join(format!("{SEED_VERSION}-{mode}-{}", s.in_flight))
        .join(format!("seed-{}", s.big));
    if theirs.join("ready").exists() {
        return (
            theirs.join("restarted"),
            "seeded by benches/recovery.rs, reused",
        );
    }
    let ours = root.join(format!("health-{SEED_VERSION}-{}-{}", s.big, s.in_flight));
    if ours.join("ready").exists() {
        return (ours.join("image"), "seeded by an earlier run, reused");
    }
    let _ = std::fs::remove_dir_all(&ours);
    let t = Instant::now();
    println!(
        "seeding {} jobs through the public API (minutes at 1,000,000)...",
        s.big
    );
    seed_store(&ours.join("image").join("data"), s.big, s.in_flight);
    std::fs::write(ours.join("ready"), b"").expect("marker");
    println!("seeded in {:.0} s", t.elapsed().as_secs_f64());
    (ours.join("image"), "seeded now")
}

/// `n` jobs, `in_flight` of them in downloading/uploading/cleaning (a third
/// each) and the rest done, plus a downloads folder with two jobs' files.
fn seed_store(data: &Path, n: u64, in_flight: u64) {
    let store = SledStore::open(&data.join("db")).expect("open store");
    let ids = seed_in_flight(&store, in_flight, Uuid::now_v7(), |i| new_job(999, i));
    for (id, _) in ids.iter().take(2) {
        let d = data.join("downloads").join(id.hyphenated().to_string());
        std::fs::create_dir_all(&d).expect("job dir");
        std::fs::write(d.join("video.f137.mp4.part"), vec![0u8; 1 << 20]).expect("file");
        std::fs::write(d.join("video.f140.m4a"), vec![0u8; 1 << 18]).expect("file");
    }
    seed_finished(&store, n - in_flight, 2);
    store.flush().expect("flush");
}
