//! `cargo bench --bench recovery`: what a restart costs as history grows
//! (issue 4, "Benchmark"): the recovery pass, and the time from process start
//! of the real binary to its first `getUpdates`, with 10,000, 100,000 and
//! 1,000,000 stored jobs of which 1,000 are in flight (downloading, uploading
//! or cleaning, leased by a process that is gone). Target: flat across sizes,
//! under 1 s at 1,000,000.
//!
//! A plain `main` (`harness = false`): every number is one restart of a whole
//! store, which criterion's sampling model does not fit.
//!
//! How the stores are made: one working store gets the in-flight jobs first
//! (enqueued, claimed by a random "dead" owner, a third each left in
//! downloading, uploading and cleaning), then finished jobs through the public
//! API (as `benches/store.rs` seeds them). When it reaches a size, it is
//! flushed and its files are copied while it stays open: the copy is exactly
//! what a `kill -9` at that moment leaves on disk. Seeds live in `/dev/shm`
//! when it is tmpfs (seeding a million jobs with a flush per transaction would
//! take far too long on a real disk) and are reused by later runs. Every
//! measurement runs on a fresh copy of a seed, because recovery changes it.
//!
//! Two images per size, because sled 0.34 writes its page-table snapshot only
//! while opening a database (`advance_snapshot` at start) and replays every
//! log segment written since the last snapshot:
//! - "crash, no restart since seeding": what the log holds after the last
//!   snapshot is what the seeding store wrote since it last opened sled
//!   (itself, every 256 MiB of changes: `src/store/sled/handles.rs`). A bot
//!   that ran without a restart while its history grew is in this case.
//! - "crash after a restart": the seed opened and closed once more (its
//!   snapshot moved to the end of the log), then the in-flight jobs' owner
//!   renews their leases (1,000 writes after the snapshot) before it "dies".
//!
//! Environment:
//! - `TGDL_BENCH_QUICK=1`: 1,000 and 10,000 stored with 100 in flight, one
//!   repetition, for a smoke run.
//! - `TGDL_BENCH_SEED_DIR=path`: where seeds are kept (default
//!   `/dev/shm/tgdl-bench-recovery` when tmpfs, else `target/tmp`).
//! - `TGDL_BENCH_RESEED=1`: throw existing seeds away and build them again.
//! - `TGDL_BENCH_REPS=n`: repetitions of each measurement (default 3).
//!
//! Arguments (cargo passes `--bench`) are ignored.

mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use common::{
    copy_dir, describe_fs, fmt_dur, is_tmpfs, loadavg, median, new_job, seed_finished,
    seed_in_flight, tgdl_binary, LEASE_MS, SEED_VERSION,
};
use support::bot::TOKEN;
use support::fake_telegram::FakeTelegram;
use tgdl::config::Config;
use tgdl::download::install;
use tgdl::job::{now_ms, JobState, Lease};
use tgdl::store::{Expect, JobStore, SledStore};
use uuid::Uuid;

struct Settings {
    quick: bool,
    sizes: Vec<u64>,
    in_flight: u64,
    reps: usize,
    seed_threads: usize,
    reseed: bool,
}

impl Settings {
    fn from_env() -> Self {
        let quick = common::quick();
        let reps = common::env_count("TGDL_BENCH_REPS").unwrap_or(if quick { 1 } else { 3 });
        let reseed = common::env_flag("TGDL_BENCH_RESEED");
        Settings {
            quick,
            sizes: if quick {
                vec![1_000, 10_000]
            } else {
                vec![10_000, 100_000, 1_000_000]
            },
            in_flight: if quick { 100 } else { 1_000 },
            reps,
            seed_threads: 2,
            reseed,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Image {
    /// Crash image with the whole history after sled's last snapshot.
    NoRestart,
    /// Crash image of a store that was reopened (snapshot at the end of the
    /// log) and then had its in-flight leases renewed.
    Restarted,
}

impl Image {
    fn label(self) -> &'static str {
        match self {
            Image::NoRestart => "crash, no restart since seeding",
            Image::Restarted => "crash after a restart",
        }
    }
    fn short(self) -> &'static str {
        match self {
            Image::NoRestart => "no-restart",
            Image::Restarted => "restarted",
        }
    }
}

fn main() {
    let started = Instant::now();
    let s = Settings::from_env();
    let seed_root = common::seed_dir().join(format!(
        "{SEED_VERSION}-{}-{}",
        if s.quick { "quick" } else { "full" },
        s.in_flight
    ));
    if s.reseed {
        let _ = std::fs::remove_dir_all(&seed_root);
    }
    std::fs::create_dir_all(&seed_root).expect("create seed dir");
    // Runs (copies of seeds) sit next to the seeds, on the same filesystem.
    let runs = tempfile::Builder::new()
        .prefix("runs-")
        .tempdir_in(&seed_root)
        .expect("temp dir for runs");

    println!(
        "tgdl recovery benchmark ({} mode, {} repetitions, {} CPUs, load average {})",
        if s.quick { "quick" } else { "full" },
        s.reps,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg()
    );
    println!("seeds and runs in: {}", describe_fs(&seed_root));
    if is_tmpfs(&seed_root) {
        println!(
            "NOTE: tmpfs: reads and fsync cost nothing here; on a disk the first open also \
             reads the whole log (cold page cache) and each recovered job costs an fsync"
        );
    }

    let ytdlp = ytdlp_path();
    let ytdlp_version = time_ytdlp_version(&ytdlp);
    println!(
        "yt-dlp: {} (`--version` takes {} p50 of 5; `tgdl run` asks it beside its start, not before getMe)",
        ytdlp.display(),
        fmt_dur(ytdlp_version)
    );
    println!();

    // 1. Seeds.
    let seeds = ensure_seeds(&s, &seed_root);
    println!();

    // 2. The measurements.
    let binary = tgdl_binary();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let api = rt.block_on(FakeTelegram::start());

    let mut rows = Vec::new();
    for seed in &seeds {
        for image in [Image::NoRestart, Image::Restarted] {
            let src = seed.image(image);
            let mut pass = Vec::new();
            for rep in 0..s.reps {
                let dir = runs
                    .path()
                    .join(format!("pass-{}-{}-{rep}", seed.n, image.short()));
                copy_dir(&src, &dir);
                pass.push(recovery_pass(&dir, s.in_flight));
                std::fs::remove_dir_all(&dir).expect("remove run copy");
            }
            let mut start = Vec::new();
            for rep in 0..s.reps {
                let dir = runs
                    .path()
                    .join(format!("bin-{}-{}-{rep}", seed.n, image.short()));
                copy_dir(&src, &dir);
                start.push(rt.block_on(binary_start(&api, &binary, &ytdlp, &dir)));
                std::fs::remove_dir_all(&dir).expect("remove run copy");
            }
            rows.push(Row {
                n: seed.n,
                image,
                db_bytes: dir_size(&src.join("data").join("db")),
                pass,
                start,
            });
        }
    }
    drop(api);
    drop(rt);

    print_tables(&s, &rows);
    println!();
    footprints(&seeds, runs.path());
    println!();
    println!(
        "total bench time {:.0} s (load average now {})",
        started.elapsed().as_secs_f64(),
        loadavg()
    );
}

// ---------------------------------------------------------------------------
// Seeds

struct Seed {
    n: u64,
    dir: PathBuf,
}

impl Seed {
    /// `<dir>/<image>/data/{db,downloads}`.
    fn image(&self, image: Image) -> PathBuf {
        self.dir.join(image.short())
    }
}

fn ensure_seeds(s: &Settings, root: &Path) -> Vec<Seed> {
    let seeds: Vec<Seed> = s
        .sizes
        .iter()
        .map(|&n| Seed {
            n,
            dir: root.join(format!("seed-{n}")),
        })
        .collect();
    let ready = |seed: &Seed| seed.dir.join("ready").exists();
    if seeds.iter().all(ready) {
        println!(
            "seeds: reusing {} (TGDL_BENCH_RESEED=1 rebuilds them)",
            root.display()
        );
        return seeds;
    }
    for seed in &seeds {
        let _ = std::fs::remove_dir_all(&seed.dir);
    }
    let work = root.join("work");
    let _ = std::fs::remove_dir_all(&work);
    let data = work.join("data");
    let store = SledStore::open(&data.join("db")).expect("open work store");
    let dead_owner = Uuid::now_v7();

    let t0 = Instant::now();
    // In flight: claimed by the dead owner, a third each left in downloading,
    // uploading and cleaning. Links point at a closed loopback port, so a bot
    // that retries them after recovery never reaches the network.
    let ids = seed_in_flight(&store, s.in_flight, dead_owner, |i| {
        let mut nj = new_job(999, i);
        nj.url = format!("http://127.0.0.1:9/bench/{i}.mp4");
        nj
    });
    // Partial files of the jobs that were downloading (kept by recovery), and
    // a few folders that belong to no job (deleted by it).
    let downloads = data.join("downloads");
    for (id, state) in &ids {
        if *state == JobState::Downloading {
            let d = downloads.join(id.hyphenated().to_string());
            std::fs::create_dir_all(&d).expect("job dir");
            std::fs::write(d.join("video.f137.mp4.part"), [0u8; 4096]).expect("partial");
        }
    }
    for i in 0..10 {
        let d = downloads.join(format!("orphan-{i}"));
        std::fs::create_dir_all(&d).expect("orphan dir");
        std::fs::write(d.join("leftover.part"), [0u8; 4096]).expect("orphan file");
    }
    let mut stored = s.in_flight;
    println!(
        "seeding {} (in flight first, then finished jobs; {} threads, a flushed transaction per step)",
        root.display(),
        s.seed_threads
    );
    for seed in &seeds {
        let t = Instant::now();
        seed_finished(&store, seed.n - stored, s.seed_threads);
        stored = seed.n;
        let c = store.counts().expect("counts");
        assert_eq!(c.total(), stored);
        assert_eq!(c.active(), s.in_flight);
        store.flush().expect("flush");
        // A copy of the files of a flushed, idle, still open store: what a
        // kill -9 right now would leave (not in the middle of one of the
        // store's own reopens of sled, which a copy could tear).
        let no_restart = seed.image(Image::NoRestart);
        let restarted = seed.image(Image::Restarted);
        store
            .with_sled_held(|| {
                copy_dir(&work, &no_restart);
                copy_dir(&work, &restarted);
            })
            .expect("hold sled");
        // The restarted image: open once (sled writes its snapshot at the
        // end of the log), then the owner renews its leases and dies.
        let t_open = Instant::now();
        let reopened = SledStore::open(&restarted.join("data").join("db")).expect("reopen copy");
        let first_open = t_open.elapsed();
        drop(reopened);
        let reopened = SledStore::open(&restarted.join("data").join("db")).expect("reopen copy");
        renew_leases(&reopened, &ids, dead_owner);
        reopened.flush().expect("flush");
        // Dropping a sled Db flushes; it does not write a snapshot (only
        // opening does), so the renewals stay in the log after it.
        drop(reopened);
        std::fs::write(seed.dir.join("ready"), b"").expect("marker");
        println!(
            "  {:>9} stored: seeded in {:>6.1} s (total {:>6.1} s), {:>5.0} MiB on disk; \
             first open of the crash image {}; sled reopened {} times so far (longest {})",
            seed.n,
            t.elapsed().as_secs_f64(),
            t0.elapsed().as_secs_f64(),
            dir_size(&no_restart.join("data").join("db")) as f64 / (1 << 20) as f64,
            fmt_dur(first_open),
            store.sled_reopens(),
            fmt_dur(store.longest_sled_reopen()),
        );
    }
    drop(store);
    let _ = std::fs::remove_dir_all(&work);
    seeds
}

/// The heartbeat of the owner: one flushed write per in-flight job.
fn renew_leases(store: &SledStore, ids: &[(Uuid, JobState)], owner: Uuid) {
    for (id, state) in ids {
        store
            .update(
                tgdl::job::JobId(*id),
                Expect::owned(*state, owner),
                None,
                now_ms(),
                &|j| {
                    j.lease = Some(Lease {
                        owner,
                        until: now_ms() + LEASE_MS,
                    })
                },
            )
            .expect("renew lease");
    }
}

// ---------------------------------------------------------------------------
// (a) The recovery pass in this process

struct Pass {
    open: Duration,
    recover: Duration,
}

fn recovery_pass(dir: &Path, in_flight: u64) -> Pass {
    let data = dir.join("data");
    let mut config = Config::default();
    config.storage.data_dir = data.clone();
    let t = Instant::now();
    let store: std::sync::Arc<dyn tgdl::store::JobStore> =
        std::sync::Arc::new(SledStore::open(&config.db_dir()).expect("open copy"));
    let open = t.elapsed();
    let t = Instant::now();
    let r = tgdl::pipeline::recovery::recover_offline(
        store.clone(),
        &config,
        false,
        &tgdl::pipeline::recovery::Quiet,
    )
    .expect("recover");
    let recover = t.elapsed();
    let handled = (r.resumed.len() + r.requeued.len() + r.failed.len() + r.cleaned.len()) as u64;
    assert_eq!(handled, in_flight, "{}", r.summary());
    assert_eq!(r.orphan_paths.len(), 10, "{}", r.summary());
    assert_eq!(store.counts().expect("counts").active() as usize, {
        // Cleaning jobs finished; the others are queued or resumed.
        (in_flight as usize) - r.cleaned.len()
    });
    drop(store);
    Pass { open, recover }
}

// ---------------------------------------------------------------------------
// (b) Process start of the release binary to its first getUpdates

#[derive(Default)]
struct Start {
    /// From spawn to the first getUpdates the fake received.
    first_updates: Duration,
    /// From spawn to the "store open" log line.
    store_open: Option<Duration>,
    /// From spawn to the "downloader ready" log line (yt-dlp found; its
    /// version is asked later, beside the start).
    downloader_ready: Option<Duration>,
    /// From spawn to the first getMe.
    get_me: Duration,
}

async fn binary_start(api: &FakeTelegram, binary: &Path, ytdlp: &Path, dir: &Path) -> Start {
    use std::os::unix::process::CommandExt;
    let config_path = dir.join("config.toml");
    let log_path = dir.join("tgdl.log");
    let config = format!(
        "[telegram]\ntoken = \"{TOKEN}\"\napi_url = \"{api}\"\nadmins = [1]\n\
         [storage]\ndata_dir = \"{data}\"\nretention_days = 0\n\
         [downloader]\nytdlp = \"{ytdlp}\"\nytdlp_source = \"{data}/no-releases\"\n",
        api = api.url_string(),
        data = dir.join("data").display(),
        ytdlp = ytdlp.display(),
    );
    std::fs::write(&config_path, config).expect("write config");
    let base = api.calls().len();

    let wall = SystemTime::now();
    let spawned = Instant::now();
    let mut child = std::process::Command::new(binary)
        .arg("run")
        .arg("--config")
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).expect("log file"))
        .process_group(0)
        .spawn()
        .expect("spawn tgdl");
    let pid = child.id() as i32;
    let calls = api
        .try_wait_for(
            |c| c[base..].iter().any(|c| c.is("getUpdates")),
            Duration::from_secs(120),
        )
        .await;
    // The whole group: the bot and any yt-dlp it started for a requeued job.
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = child.wait();
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let Some(calls) = calls else {
        panic!("tgdl did not call getUpdates within 120 s; its log:\n{log}");
    };
    let first = |m: &str| {
        calls[base..]
            .iter()
            .find(|c| c.is(m))
            .map(|c| c.received_at.duration_since(spawned))
    };
    let at_line = |needle: &str| {
        log.lines().find(|l| l.contains(needle)).and_then(|l| {
            let ts = l.split_whitespace().next()?;
            let t = humantime::parse_rfc3339_weak(ts).ok()?;
            t.duration_since(wall).ok()
        })
    };
    assert!(
        log.contains("Recovery:"),
        "the bot logged no recovery summary:\n{log}"
    );
    Start {
        first_updates: first("getUpdates").expect("getUpdates"),
        get_me: first("getMe").unwrap_or_default(),
        store_open: at_line("store open"),
        downloader_ready: at_line("downloader ready"),
    }
}

/// yt-dlp from PATH, as an absolute path so the bot installs nothing. A
/// pyenv shim is a shell script that adds its own start-up to every call;
/// the interpreter's own entry point is used instead when pyenv names it.
fn ytdlp_path() -> PathBuf {
    let found = install::find_on_path("yt-dlp").expect("yt-dlp on PATH");
    if found.to_string_lossy().contains("/shims/") {
        if let Ok(out) = std::process::Command::new("pyenv")
            .args(["which", "yt-dlp"])
            .output()
        {
            let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if out.status.success() && p.is_absolute() && p.exists() {
                return p;
            }
        }
    }
    std::fs::canonicalize(&found).unwrap_or(found)
}

fn time_ytdlp_version(ytdlp: &Path) -> Duration {
    let v: Vec<Duration> = (0..5)
        .map(|_| {
            let t = Instant::now();
            let out = std::process::Command::new(ytdlp)
                .arg("--version")
                .stdin(Stdio::null())
                .output()
                .expect("run yt-dlp --version");
            assert!(out.status.success());
            t.elapsed()
        })
        .collect();
    median(v)
}

// ---------------------------------------------------------------------------
// Output

struct Row {
    n: u64,
    image: Image,
    db_bytes: u64,
    pass: Vec<Pass>,
    start: Vec<Start>,
}

fn max(v: impl IntoIterator<Item = Duration>) -> Duration {
    v.into_iter().max().unwrap_or_default()
}

fn opt_median(v: Vec<Option<Duration>>) -> String {
    let v: Vec<Duration> = v.into_iter().flatten().collect();
    if v.is_empty() {
        "?".into()
    } else {
        fmt_dur(median(v))
    }
}

fn print_tables(s: &Settings, rows: &[Row]) {
    println!(
        "(a) recovery pass in this process ({} in flight; median of {}, max in brackets)",
        s.in_flight, s.reps
    );
    println!(
        "{:<32} | {:>9} | {:>8} | {:>20} | {:>20} | {:>20}",
        "image", "stored", "db", "SledStore::open", "recover_offline", "open + recover"
    );
    println!("{}", "-".repeat(124));
    for r in rows {
        let open: Vec<Duration> = r.pass.iter().map(|p| p.open).collect();
        let rec: Vec<Duration> = r.pass.iter().map(|p| p.recover).collect();
        let both: Vec<Duration> = r.pass.iter().map(|p| p.open + p.recover).collect();
        println!(
            "{:<32} | {:>9} | {:>4.0} MiB | {:>9} [{:>8}] | {:>9} [{:>8}] | {:>9} [{:>8}]",
            r.image.label(),
            r.n,
            r.db_bytes as f64 / (1 << 20) as f64,
            fmt_dur(median(open.clone())),
            fmt_dur(max(open)),
            fmt_dur(median(rec.clone())),
            fmt_dur(max(rec)),
            fmt_dur(median(both.clone())),
            fmt_dur(max(both)),
        );
    }
    println!();
    println!(
        "(b) `tgdl run` (release binary) from spawn to its first getUpdates on the fake Bot API \
         (median of {}; phases from its log and the fake's calls)",
        s.reps
    );
    println!(
        "{:<32} | {:>9} | {:>11} | {:>16} | {:>9} | {:>20}",
        "image", "stored", "store open", "downloader ready", "getMe", "first getUpdates"
    );
    println!("{}", "-".repeat(112));
    for r in rows {
        let first: Vec<Duration> = r.start.iter().map(|p| p.first_updates).collect();
        println!(
            "{:<32} | {:>9} | {:>11} | {:>16} | {:>9} | {:>9} [{:>8}]",
            r.image.label(),
            r.n,
            opt_median(r.start.iter().map(|p| p.store_open).collect()),
            opt_median(r.start.iter().map(|p| p.downloader_ready).collect()),
            fmt_dur(median(r.start.iter().map(|p| p.get_me).collect())),
            fmt_dur(median(first.clone())),
            fmt_dur(max(first)),
        );
    }
    println!();
    let verdict = |ok: bool| if ok { "PASS" } else { "FAIL" };
    for image in [Image::NoRestart, Image::Restarted] {
        let mine: Vec<&Row> = rows.iter().filter(|r| r.image == image).collect();
        let (Some(first), Some(last)) = (mine.first(), mine.last()) else {
            continue;
        };
        let pass = |r: &Row| median(r.pass.iter().map(|p| p.open + p.recover).collect());
        let start = |r: &Row| median(r.start.iter().map(|p| p.first_updates).collect());
        println!(
            "{}: at {} stored, open + recover {} < 1 s: {}; start to getUpdates {} < 1 s: {}; \
             growth from {} to {}: open + recover x{:.2}, start x{:.2}",
            image.label(),
            last.n,
            fmt_dur(pass(last)),
            verdict(pass(last) < Duration::from_secs(1)),
            fmt_dur(start(last)),
            verdict(start(last) < Duration::from_secs(1)),
            first.n,
            last.n,
            pass(last).as_secs_f64() / pass(first).as_secs_f64(),
            start(last).as_secs_f64() / start(first).as_secs_f64(),
        );
    }
}

// ---------------------------------------------------------------------------
// (c) What sled needs for the same data

/// Each seed's crash image beside its live data and a freshly written copy
/// of that data: the floor sled 0.34 puts under bytes per job and under a
/// start-up that reads the whole log (benches/README.md, "Floors").
fn footprints(seeds: &[Seed], runs: &Path) {
    println!(
        "(c) bytes per stored job, and sled's floor: every item written once into a new \
         database (in key order, flushed), then opened as a store without a restart"
    );
    println!(
        "{:>9} | {:>7} | {:>12} | {:>11} | {:>13} | {:>10} | {:>17}",
        "stored",
        "items",
        "live data/job",
        "on disk/job",
        "fresh copy/job",
        "disk/live",
        "open fresh copy"
    );
    println!("{}", "-".repeat(98));
    for seed in seeds {
        let dir = runs.join(format!("footprint-{}", seed.n));
        copy_dir(&seed.image(Image::NoRestart), &dir);
        let f = common::sled_footprint(&dir.join("data").join("db"), &dir);
        std::fs::remove_dir_all(&dir).expect("remove footprint copy");
        let per = |b: u64| b as f64 / seed.n as f64;
        println!(
            "{:>9} | {:>7} | {:>10.0} B | {:>9.0} B | {:>11.0} B | {:>9.1}x | {:>17}",
            seed.n,
            f.items,
            per(f.live),
            per(f.on_disk),
            per(f.fresh_copy),
            f.on_disk as f64 / f.live as f64,
            fmt_dur(f.fresh_open),
        );
    }
}

// ---------------------------------------------------------------------------
// Files

fn dir_size(p: &Path) -> u64 {
    tgdl::pipeline::cleanup::tree_size(p)
}
