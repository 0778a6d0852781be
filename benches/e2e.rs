//! `cargo bench --bench e2e`: what the whole bot costs per job, how fast it
//! acknowledges a burst of links, and how much memory it holds.
//!
//! Three measurements, each printed as rows of one table at the end:
//!
//! 1. End to end. The real bot (`tgdl::app::run`, in this process) takes
//!    small `tiny.mp4` links from several users through the fake Bot API and
//!    real yt-dlp against the loopback media server. Every link has its own
//!    query string so the bot's media cache cannot answer from an earlier
//!    upload. The bot's own overhead is its worker time per job minus yt-dlp's
//!    own run time. yt-dlp's run time is measured twice: inside the bot, by a
//!    wrapper script that times the real yt-dlp (same load as the bot's jobs),
//!    and standalone, by running exactly the argument list the bot builds
//!    (`YtDlpArgs::to_args`) at the same concurrency against the same server
//!    just before the bot runs.
//! 2. Acknowledgement latency. The release binary runs as a child process (as
//!    it is deployed) against the fake API in this process; a burst of links
//!    is pushed at once and each link's latency is from the moment it was
//!    queued in the fake until the fake received the bot's "Accepted" reply.
//!    Links point at the media server's hold route and the bot runs one
//!    download at a time, so yt-dlp does not dominate the burst.
//! 3. Resident memory of that child process (`/proc/<pid>/status`): idle
//!    after start, sampled during the burst, and its high-water mark. Memory of
//!    the yt-dlp child it spawns is not included (it is a separate process).
//! 4. Link to file. One link at a time through the in-process bot with the
//!    shipped settings (`choice_wait_secs = 5`, a user who never opened
//!    `/settings`): from the link's update queued in the fake to the fake
//!    holding the whole `sendVideo`, beside bare yt-dlp run on the same URL,
//!    one at a time, in the same run.
//! 5. One node against two (`e2e/cluster.rs`). The same links, slow and
//!    quick media from several users pushed at once, through the release
//!    binary as (a) one node on a fresh PostgreSQL database, (b) two nodes on
//!    one fresh database and (c) one node on sled, back to back: wall time
//!    until every file arrived, jobs per minute, p50 / p95 link to file, and
//!    the jobs each node ran (from each node's own log).
//!
//! A plain `main` rather than criterion: each number is one long run of a
//! whole system, not a micro-benchmark to sample.
//!
//! Environment:
//! - `TGDL_BENCH_QUICK=1`: 20 jobs and a 200-link burst, for a smoke run.
//! - `TGDL_BENCH_JOBS=n`, `TGDL_BENCH_BURST=n`: override the two sizes.
//! - `TGDL_BENCH_ONLY=e2e`, `burst`, `link` or `nodes`: run one part only
//!   (the burst part reports both latency and memory).
//! - `TGDL_BENCH_NODE_LINKS=n`: links of the nodes part (24, quick 12). It
//!   needs PostgreSQL (`TGDL_TEST_PG`, by default the local trust-auth
//!   server); when it is down the part is skipped, unless it was asked for.
//!
//! Arguments (cargo passes `--bench`) are ignored.

#[path = "e2e/cluster.rs"]
mod cluster;
mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{loadavg, tgdl_binary};
use support::bot::{TestBot, TOKEN};
use support::fake_telegram::{Call, FakeTelegram};
use support::media_server::MediaServer;
use tgdl::download::{install, Want, YtDlpArgs};
use tgdl::job::JobState;
use tgdl::store::JobStore;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Users the end-to-end jobs come from (round robin).
const E2E_USERS: u64 = 20;
/// `downloader.concurrency` for the end-to-end run, and the parallelism of
/// the standalone yt-dlp runs it is compared with.
const CONCURRENCY: usize = 2;
/// Users the burst comes from (round robin).
const BURST_USERS: u64 = 200;
/// How often the child's RSS is read during the burst. Short enough to catch
/// a peak that lasts a fraction of a second; reading /proc costs microseconds.
const RSS_SAMPLE_EVERY: Duration = Duration::from_millis(10);

/// Limits raised so that no link of the benchmark is refused: the benchmark
/// measures accepted work, not refusals.
const LIMITS: &str = "[limits]\nper_user_active = 1000\nper_user_per_hour = 100000\n";

const ACCEPTED_PREFIX: &str = "✅ Accepted";
const DOWNLOADING_MARK: &str = "downloading";
const UPLOADING_MARK: &str = "sending the file";

struct Settings {
    jobs: usize,
    burst: usize,
    /// Standalone yt-dlp runs for the baseline. Fewer than the jobs: the mean
    /// of a few dozen runs is stable, and every run costs seconds.
    baseline_runs: usize,
    run_e2e: bool,
    run_burst: bool,
    /// Links sent one at a time for "link to file", and bare yt-dlp runs.
    link_runs: usize,
    run_link: bool,
    /// Links of the one-node-against-two part.
    node_links: usize,
    run_nodes: bool,
    /// The nodes part was asked for by name (it then needs PostgreSQL).
    nodes_asked: bool,
}

impl Settings {
    fn from_env() -> Self {
        let quick = common::quick();
        let num = |key: &str, default: usize| common::env_count(key).unwrap_or(default);
        let only = std::env::var("TGDL_BENCH_ONLY")
            .ok()
            .filter(|o| !o.is_empty());
        let jobs = num("TGDL_BENCH_JOBS", if quick { 20 } else { 100 });
        Settings {
            jobs,
            burst: num("TGDL_BENCH_BURST", if quick { 200 } else { 1000 }),
            baseline_runs: (jobs / 2).clamp(CONCURRENCY, 40),
            run_e2e: only.as_deref().is_none_or(|o| o == "e2e"),
            run_burst: only.as_deref().is_none_or(|o| o == "burst"),
            link_runs: num("TGDL_BENCH_LINKS", if quick { 5 } else { 15 }),
            run_link: only.as_deref().is_none_or(|o| o == "link"),
            node_links: num("TGDL_BENCH_NODE_LINKS", if quick { 12 } else { 24 }),
            run_nodes: only.as_deref().is_none_or(|o| o == "nodes"),
            nodes_asked: only.as_deref() == Some("nodes"),
        }
    }
}

/// One printed row: what, how much, and the target it is held against.
struct Row {
    name: String,
    value: String,
    target: String,
}

fn row(name: &str, value: String, target: &str) -> Row {
    Row {
        name: name.to_owned(),
        value,
        target: target.to_owned(),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn mb(kb: u64) -> String {
    format!("{:.1} MB", kb as f64 / 1024.0)
}

/// "ok" or "MISSED" after a target, so a reader sees the verdict at once.
fn verdict(ok: bool, target: &str) -> String {
    format!("{target} {}", if ok { "ok" } else { "MISSED" })
}

fn mean(ds: &[Duration]) -> Duration {
    if ds.is_empty() {
        return Duration::ZERO;
    }
    ds.iter().sum::<Duration>() / ds.len() as u32
}

/// Nearest-rank percentile of sorted durations.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn main() {
    let settings = Settings::from_env();
    let load_before = loadavg();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let sections = rt.block_on(async {
        let ytdlp = install::find_on_path("yt-dlp").expect("yt-dlp on PATH (pip install yt-dlp)");
        let mut sections = Vec::new();
        if settings.run_e2e {
            sections.push(end_to_end(&settings, &ytdlp).await);
        }
        if settings.run_burst {
            // Same run, three ways: as deployed; without the inbox (what it
            // costs per update); against a fake that paces like Telegram.
            let (ack, mem) = burst(&settings, Burst::Stored).await;
            sections.extend([ack, mem]);
            sections.push(burst(&settings, Burst::Unstored).await.0);
            sections.push(burst(&settings, Burst::Paced).await.0);
        }
        if settings.run_link {
            sections.push(link_to_file(&settings, &ytdlp).await);
        }
        if settings.run_nodes {
            sections
                .push(cluster::one_against_two(settings.node_links, settings.nodes_asked).await);
        }
        sections
    });
    print_table(&sections, &load_before, &loadavg());
}

/// One block of the printed table, with the notes that say how it was measured.
struct Section {
    title: String,
    rows: Vec<Row>,
    notes: Vec<String>,
}

fn print_table(sections: &[Section], load_before: &str, load_after: &str) {
    let w_name = sections
        .iter()
        .flat_map(|s| s.rows.iter().map(|r| r.name.chars().count()))
        .max()
        .unwrap_or(10);
    let w_value = sections
        .iter()
        .flat_map(|s| s.rows.iter().map(|r| r.value.chars().count()))
        .max()
        .unwrap_or(10);
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!(
        "tgdl end-to-end benchmark ({cpus} CPUs; 1-min load average {load_before} at start, {load_after} at end)"
    );
    for s in sections {
        println!();
        println!("{}", s.title);
        println!(
            "  {:<w_name$}  {:>w_value$}  target",
            "measurement", "value"
        );
        for r in &s.rows {
            println!("  {:<w_name$}  {:>w_value$}  {}", r.name, r.value, r.target);
        }
        for n in &s.notes {
            println!("  * {n}");
        }
    }
    println!();
}

// ---------------------------------------------------------------------------
// 1. End to end
// ---------------------------------------------------------------------------

/// Runs the very argument list the bot builds for a video job, `runs` times
/// in `lanes` parallel lanes, and returns each run's duration and the wall
/// time of all of them. Blocking threads: the media server answering these
/// runs lives on the async runtime's workers.
async fn ytdlp_standalone(
    ytdlp: &Path,
    media: &MediaServer,
    out_dir: &Path,
    runs: usize,
    lanes: usize,
) -> (Vec<Duration>, Duration) {
    let has_ffmpeg = install::find_on_path("ffmpeg").is_some();
    let upload_limit = tgdl::config::Config::default().upload_limit_bytes();
    let start = Instant::now();
    let mut handles = Vec::new();
    for lane in 0..lanes {
        let ytdlp = ytdlp.to_path_buf();
        let out_dir = out_dir.to_path_buf();
        let urls: Vec<String> = (lane..runs)
            .step_by(lanes)
            .map(|i| media.url(&format!("/tiny.mp4?baseline={i}")))
            .collect();
        handles.push(tokio::task::spawn_blocking(move || {
            urls.into_iter()
                .map(|url| {
                    let mut args =
                        YtDlpArgs::new(&ytdlp, url, &out_dir, Uuid::now_v7(), Want::Video);
                    args.upload_limit = Some(upload_limit);
                    args.has_ffmpeg = has_ffmpeg;
                    let t = Instant::now();
                    // Same pipes and environment as the bot's `run_ytdlp`:
                    // both pipes read to the end, unbuffered Python output.
                    let out = std::process::Command::new(&args.binary)
                        .args(args.to_args())
                        .stdin(Stdio::null())
                        .env("PYTHONUNBUFFERED", "1")
                        .output()
                        .expect("spawn yt-dlp");
                    let took = t.elapsed();
                    assert!(
                        out.status.success(),
                        "standalone yt-dlp failed: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    took
                })
                .collect::<Vec<_>>()
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.expect("yt-dlp lane"));
    }
    (all, start.elapsed())
}

/// What the fake saw of one job, keyed by the user's link message.
#[derive(Default, Clone, Copy)]
struct Timeline {
    pushed: Option<Instant>,
    acked: Option<Instant>,
    status_msg: Option<i64>,
    downloading: Option<Instant>,
    uploading: Option<Instant>,
    video_answered: Option<Instant>,
    /// The status message's deletion: the last thing a successful job does.
    ended: Option<Instant>,
}

/// Rebuilds each job's timeline from the recorded calls: the acknowledgement
/// replies to the link message and names the status message, whose edits and
/// deletion then belong to the same job.
fn timelines(calls: &[Call], pushed: &HashMap<(i64, i32), Instant>) -> Vec<Timeline> {
    let mut jobs: HashMap<(i64, i32), Timeline> = pushed
        .iter()
        .map(|(k, at)| {
            (
                *k,
                Timeline {
                    pushed: Some(*at),
                    ..Timeline::default()
                },
            )
        })
        .collect();
    let mut by_status: HashMap<(i64, i64), (i64, i32)> = HashMap::new();
    for c in calls.iter().filter(|c| c.succeeded()) {
        let (Some(chat), reply_to) = (c.chat_id(), c.reply_to()) else {
            continue;
        };
        let status = || c.param_i64("message_id").map(|m| (chat, m));
        let job = |by_status: &HashMap<_, _>| status().and_then(|k| by_status.get(&k).copied());
        if c.is("sendMessage") && c.text().is_some_and(|t| t.starts_with(ACCEPTED_PREFIX)) {
            let Some(key) = reply_to.map(|r| (chat, r)) else {
                continue;
            };
            if let Some(t) = jobs.get_mut(&key) {
                t.acked = Some(c.received_at);
                t.status_msg = c
                    .result()
                    .and_then(|r| r.get("message_id"))
                    .and_then(|m| m.as_i64());
                if let Some(m) = t.status_msg {
                    by_status.insert((chat, m), key);
                }
            }
        } else if c.is("editMessageText") {
            let Some(t) = job(&by_status).and_then(|k| jobs.get_mut(&k)) else {
                continue;
            };
            let text = c.text().unwrap_or("");
            if text.contains(DOWNLOADING_MARK) {
                t.downloading.get_or_insert(c.received_at);
            } else if text.contains(UPLOADING_MARK) {
                t.uploading.get_or_insert(c.received_at);
            }
        } else if c.is("sendVideo") {
            if let Some(t) = reply_to.and_then(|r| jobs.get_mut(&(chat, r))) {
                t.video_answered = c.answered_at;
            }
        } else if c.is("deleteMessage") {
            if let Some(t) = job(&by_status).and_then(|k| jobs.get_mut(&k)) {
                t.ended = Some(c.received_at);
            }
        }
    }
    jobs.into_values().collect()
}

/// The mean of `to - from` over the jobs where the fake saw both.
fn mean_span(
    jobs: &[Timeline],
    from: impl Fn(&Timeline) -> Option<Instant>,
    to: impl Fn(&Timeline) -> Option<Instant>,
) -> (Duration, usize) {
    let spans: Vec<Duration> = jobs
        .iter()
        .filter_map(|t| Some(to(t)?.saturating_duration_since(from(t)?)))
        .collect();
    (mean(&spans), spans.len())
}

/// Each job's wait between the end of the job its worker finished before and
/// its own first status edit: claiming, reloading the job, the cache lookup
/// and the edit's round trip. Workers are not visible to the fake, so the
/// lanes are rebuilt: a job belongs to the lane that became free last before
/// it started (a worker takes its next job as soon as it is free).
///
/// Returns the gaps, each lane's last end, and how many jobs were placed.
fn lanes(jobs: &[Timeline], lanes: usize) -> (Vec<Duration>, Vec<Instant>, usize) {
    let mut spans: Vec<(Instant, Instant)> = jobs
        .iter()
        .filter_map(|t| Some((t.downloading?, t.ended?)))
        .collect();
    spans.sort();
    let mut lane_end: Vec<Option<Instant>> = vec![None; lanes];
    let mut gaps = Vec::new();
    let mut placed = 0;
    for (start, end) in spans {
        let free = lane_end
            .iter()
            .enumerate()
            .filter(|(_, e)| e.is_none_or(|e| e <= start))
            .max_by_key(|(_, e)| **e)
            .map(|(i, _)| i);
        // No free lane means a job without a visible start ran in between;
        // skip rather than invent a gap.
        let Some(i) = free else { continue };
        if let Some(prev) = lane_end[i] {
            gaps.push(start - prev);
        }
        lane_end[i] = Some(end);
        placed += 1;
    }
    (gaps, lane_end.into_iter().flatten().collect(), placed)
}

fn stddev(ds: &[Duration]) -> f64 {
    if ds.len() < 2 {
        return 0.0;
    }
    let m = mean(ds).as_secs_f64();
    let var = ds
        .iter()
        .map(|d| (d.as_secs_f64() - m).powi(2))
        .sum::<f64>()
        / (ds.len() - 1) as f64;
    var.sqrt()
}

/// A wrapper the bot is configured to run instead of yt-dlp: it runs the real
/// one with the same arguments and appends its start and end time to a log.
/// That is yt-dlp's own run time inside the bot, under exactly the load the
/// bot's jobs see, which a standalone run at another moment cannot give on a
/// machine where other work comes and goes. Bash's `$EPOCHREALTIME` reads the
/// clock without forking, so the wrapper adds only its own start (measured by
/// [`wrapper_cost`]). The first argument is logged to tell downloads (which
/// start with `--ignore-config`) from the `--version` call at start.
fn write_wrapper(dir: &Path, real: &Path, log: &Path) -> PathBuf {
    let path = dir.join("yt-dlp-timed");
    let script = format!(
        "#!/bin/bash\n\
         s=$EPOCHREALTIME\n\
         \"${{TGDL_BENCH_REAL:-{real}}}\" \"$@\"\n\
         rc=$?\n\
         e=$EPOCHREALTIME\n\
         echo \"$s $e $1\" >> \"${{TGDL_BENCH_TIMES:-{log}}}\"\n\
         exit $rc\n",
        real = real.display(),
        log = log.display(),
    );
    std::fs::write(&path, script).expect("write wrapper");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// The downloads the wrapper logged: each run's duration.
fn wrapped_runs(log: &Path) -> Vec<Duration> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (s, e) = (
                f.next()?.parse::<f64>().ok()?,
                f.next()?.parse::<f64>().ok()?,
            );
            (f.next() == Some("--ignore-config")).then(|| Duration::from_secs_f64((e - s).max(0.0)))
        })
        .collect()
}

/// What the wrapper itself adds to a run: its wall time around `/bin/true`
/// minus the interval it logged, averaged over a few runs.
fn wrapper_cost(wrapper: &Path, dir: &Path) -> Duration {
    let log = dir.join("wrapper-calibration.log");
    let mut walls = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let status = std::process::Command::new(wrapper)
            .arg("--ignore-config")
            .env("TGDL_BENCH_REAL", "/bin/true")
            .env("TGDL_BENCH_TIMES", &log)
            .status()
            .expect("run wrapper");
        walls.push(t.elapsed());
        assert!(status.success(), "wrapper around /bin/true failed");
    }
    mean(&walls).saturating_sub(mean(&wrapped_runs(&log)))
}

async fn end_to_end(settings: &Settings, ytdlp: &Path) -> Section {
    let n = settings.jobs;
    let media = MediaServer::fixtures().await;
    let scratch = tempfile::tempdir().expect("temp dir");

    // The first run is untimed: the first start of Python reads yt-dlp's
    // modules from disk; later runs (the bot's included) find them cached.
    eprintln!("e2e: warming up yt-dlp ({})", ytdlp.display());
    ytdlp_standalone(ytdlp, &media, scratch.path(), 1, 1).await;
    // A few runs one at a time show what the parallel runs cost each other
    // on this machine's cores.
    let (serial, _) = ytdlp_standalone(ytdlp, &media, scratch.path(), 5, 1).await;
    eprintln!(
        "e2e: {} standalone yt-dlp runs, {CONCURRENCY} at a time",
        settings.baseline_runs
    );
    let (runs, runs_wall) = ytdlp_standalone(
        ytdlp,
        &media,
        scratch.path(),
        settings.baseline_runs,
        CONCURRENCY,
    )
    .await;
    // What a worker would spend per job if the bot added nothing.
    let ytdlp_mean = mean(&runs);

    eprintln!("e2e: {n} jobs from {E2E_USERS} users through the bot, concurrency {CONCURRENCY}");
    let api = FakeTelegram::start().await;
    let times_log = scratch.path().join("ytdlp-times.log");
    let wrapper = write_wrapper(scratch.path(), ytdlp, &times_log);
    let wrapper_overhead = wrapper_cost(&wrapper, scratch.path());
    let extra = format!(
        "[downloader]\nconcurrency = {CONCURRENCY}\nytdlp = \"{}\"\n{LIMITS}",
        wrapper.display()
    );
    let mut bot = TestBot::start(&api, &extra).await;
    // Start the clock once the bot polls, so start-up is not counted as work.
    api.try_wait_for(
        |c| c.iter().any(|c| c.is("getUpdates")),
        Duration::from_secs(60),
    )
    .await
    .expect("the bot starts polling within 60 s");

    let start = Instant::now();
    let mut pushed = HashMap::new();
    for i in 0..n {
        let user = 10_000 + i as u64 % E2E_USERS;
        let link = media.url(&format!("/tiny.mp4?n={i}"));
        let msg = api.push_text(user as i64, user, &link, Some("en"));
        pushed.insert((user as i64, msg), Instant::now());
    }
    // Generous: ten times what yt-dlp alone needs, and at least two minutes.
    let timeout = (ytdlp_mean * n as u32 / CONCURRENCY as u32 * 10).max(Duration::from_secs(120));
    let finished = api
        .try_wait_for(
            |c| {
                c.iter()
                    .filter(|c| c.is("deleteMessage") && c.status.is_some())
                    .count()
                    >= n
            },
            timeout,
        )
        .await;
    let calls = api.calls();
    if finished.is_none() {
        let count = |m: &str| calls.iter().filter(|c| c.is(m)).count();
        panic!(
            "only {} of {n} jobs finished within {timeout:?} (sendVideo calls: {}); run with TGDL_LOG=debug for the bot's log",
            count("deleteMessage"),
            count("sendVideo")
        );
    }
    let jobs = timelines(&calls, &pushed);
    let last_end = jobs.iter().filter_map(|t| t.ended).max().expect("ends");
    let wall = last_end.saturating_duration_since(start);
    bot.stop().await.expect("bot stops cleanly");

    // Proof that every job really downloaded and uploaded: a cache hit would
    // make a job look cheap and the overhead meaningless.
    let store = bot.store();
    let done = store.list_state(JobState::Done, n + 10).expect("list done");
    let uploads = calls
        .iter()
        .filter(|c| c.is("sendVideo") && c.succeeded() && !c.files.is_empty())
        .count();
    let fetched = media
        .requests_to("/tiny.mp4")
        .iter()
        .filter_map(|r| r.query.clone().filter(|q| q.starts_with("n=")))
        .collect::<std::collections::HashSet<_>>()
        .len();
    assert_eq!(done.len(), n, "every job done");
    assert_eq!(uploads, n, "every job uploaded its own bytes");
    assert_eq!(fetched, n, "every link fetched from the media server");

    let (mut gaps, lane_ends, placed) = lanes(&jobs, CONCURRENCY);
    gaps.sort();
    // Worker time per job: each worker's time from the first link to the end
    // of its last job, summed, over the jobs. Wall time x workers would also
    // count the tail where one worker has no job left and waits for the
    // other's last one, which is not the bot's cost; that is the fallback only
    // when some job's start was not visible to place it on a worker.
    let slot = if placed == n && lane_ends.len() == CONCURRENCY {
        lane_ends
            .iter()
            .map(|e| e.saturating_duration_since(start))
            .sum::<Duration>()
            / n as u32
    } else {
        wall * CONCURRENCY as u32 / n as u32
    };
    // yt-dlp's own run time inside the bot, measured by the wrapper.
    let inside = wrapped_runs(&times_log);
    assert_eq!(inside.len(), n, "the wrapper timed every download");
    let inside_mean = mean(&inside);
    let overhead = slot.saturating_sub(inside_mean);
    let signed_ms = |a: Duration, b: Duration| (a.as_secs_f64() - b.as_secs_f64()) * 1000.0;
    // A - B compares means of runs that vary by hundreds of ms; this is the
    // 95 % interval of that difference from the run-to-run spread alone.
    let sd = stddev(&runs);
    let noise_ms = 1.96 * sd * (1.0 / runs.len() as f64 + 1.0 / n as f64).sqrt() * 1000.0;

    // Where a job's time goes inside the bot, from the fake's timestamps.
    let (ack, _) = mean_span(&jobs, |t| t.pushed, |t| t.acked);
    let (dl, dl_n) = mean_span(&jobs, |t| t.downloading, |t| t.uploading);
    let (up, _) = mean_span(&jobs, |t| t.uploading, |t| t.video_answered);
    let (fin, _) = mean_span(&jobs, |t| t.video_answered, |t| t.ended);

    let a_method = if placed == n {
        "(per-worker spans)"
    } else {
        "(wall x workers: jobs unplaced)"
    };
    let rows = vec![
        row(
            "jobs (tiny.mp4, distinct URLs)",
            format!("{n} from {E2E_USERS} users"),
            "",
        ),
        row(
            "wall time, first link in -> last job done",
            format!("{:.2} s", wall.as_secs_f64()),
            "",
        ),
        row(
            "throughput through the bot",
            format!("{:.1} jobs/min", n as f64 / wall.as_secs_f64() * 60.0),
            "",
        ),
        row(
            "yt-dlp alone, same args, 2 at a time",
            format!(
                "{:.1} jobs/min",
                runs.len() as f64 / runs_wall.as_secs_f64() * 60.0
            ),
            "(upper bound)",
        ),
        row("A: worker time per job in the bot", ms(slot), a_method),
        row(
            "C: yt-dlp's own run inside the bot, mean",
            format!("{} ({} runs)", ms(inside_mean), inside.len()),
            "",
        ),
        row(
            "bot overhead per job (A - C)",
            format!("{:.1} ms", signed_ms(slot, inside_mean)),
            &verdict(overhead < Duration::from_millis(50), "< 50 ms"),
        ),
        row(
            "  of which the timing wrapper's own start",
            ms(wrapper_overhead),
            "",
        ),
        row(
            "B: yt-dlp alone, mean run, 2 at a time",
            format!(
                "{} (sd {:.0} ms, {} runs)",
                ms(ytdlp_mean),
                sd * 1000.0,
                runs.len()
            ),
            "",
        ),
        row(
            "yt-dlp alone, mean run, 1 at a time",
            format!("{} ({} runs)", ms(mean(&serial)), serial.len()),
            "",
        ),
        row(
            "A - B (overhead + yt-dlp slowed by the bot)",
            format!("{:.1} ms ± {noise_ms:.0} ms", signed_ms(slot, ytdlp_mean)),
            "",
        ),
        row("where a job's time goes (fake's clock):", String::new(), ""),
        row("  link in -> Accepted reply, mean", ms(ack), ""),
        row(
            "  'downloading' edit -> 'sending' edit",
            format!("{} ({dl_n} jobs)", ms(dl)),
            "(yt-dlp + store)",
        ),
        row(
            "    minus C (yt-dlp inside the bot)",
            format!("{:.1} ms", signed_ms(dl, inside_mean)),
            "",
        ),
        row("  'sending' edit -> sendVideo answered", ms(up), "(upload)"),
        row(
            "  sendVideo answered -> status deleted",
            ms(fin),
            "(cleaning, done)",
        ),
        row(
            "  previous job's end -> 'downloading' edit",
            format!(
                "{} median, {} mean",
                ms(percentile(&gaps, 50.0)),
                ms(mean(&gaps))
            ),
            "(claim, reload, edit)",
        ),
    ];
    let notes = vec![
        format!(
            "A = for each of the {CONCURRENCY} workers, first link in -> end of its last job \
             (status message deleted), summed, / {n} jobs: the time one job occupies one worker. \
             Workers are placed from the fake's timestamps (a job goes to the worker that became \
             free last before its 'downloading' edit)."
        ),
        "C = yt-dlp's run time as the bot runs it: downloader.ytdlp points at a bash wrapper \
         that runs the real yt-dlp and logs its start and end ($EPOCHREALTIME, no fork). \
         A - C is the bot's own cost per job under the same load."
            .to_owned(),
        format!(
            "B = the mean of {} standalone runs of the exact argument list the bot builds \
             (YtDlpArgs::to_args, {}), {CONCURRENCY} at a time against the same media server, \
             just before the bot ran. A - B also counts yt-dlp running slower because the bot \
             (and, in this process, the fake API) uses CPU; its ± is the 95 % interval from the \
             spread of run times.",
            runs.len(),
            ytdlp.display()
        ),
        "The bot runs in this process (tgdl::app::run) with the fake Bot API and the media \
         server on the same 2-thread runtime; every job is checked done, uploaded and fetched."
            .to_owned(),
    ];
    Section {
        title: format!(
            "1. End to end: {n} jobs, {E2E_USERS} users, downloader.concurrency = {CONCURRENCY}"
        ),
        rows,
        notes,
    }
}

// ---------------------------------------------------------------------------
// 4. Link to file, with the shipped settings
// ---------------------------------------------------------------------------

/// One link at a time: how long a user waits for the file with the shipped
/// settings, against bare yt-dlp on the same URL (one run at a time too,
/// the argument list the bot builds, the same media server).
async fn link_to_file(settings: &Settings, ytdlp: &Path) -> Section {
    let n = settings.link_runs;
    let media = MediaServer::fixtures().await;
    let scratch = tempfile::tempdir().expect("temp dir");
    eprintln!("link: warming up yt-dlp, then {n} bare runs and {n} links through the bot");
    ytdlp_standalone(ytdlp, &media, scratch.path(), 1, 1).await;
    let (mut bare, _) = ytdlp_standalone(ytdlp, &media, scratch.path(), n, 1).await;
    bare.sort();

    let api = FakeTelegram::start().await;
    // `test_config` turns the choice window off; put back what ships.
    let shipped = tgdl::config::Config::default();
    let extra = format!(
        "[telegram]\nchoice_wait_secs = {}\nprogress_interval_secs = {}\n{LIMITS}",
        shipped.telegram.choice_wait_secs, shipped.telegram.progress_interval_secs
    );
    // Users from 77,000 never opened /settings; those from 78,000 turned
    // "ask" on (the default before links started at once), as the baseline
    // of the change. Each link comes from a user (a private chat) of its
    // own: a link sent the moment the previous file arrived in the same chat
    // would wait for that chat's pacing (Telegram's one call a second: the
    // previous job's file and status deletion), which is Telegram's limit,
    // not the bot's overhead.
    let users: Vec<u64> = (0..n as u64).map(|i| 77_000 + i).collect();
    let asking: Vec<u64> = (0..n as u64).map(|i| 78_000 + i).collect();
    let mut bot = TestBot::start_asking(&api, &extra, &asking).await;
    api.try_wait_for(
        |c| c.iter().any(|c| c.is("getUpdates")),
        Duration::from_secs(60),
    )
    .await
    .expect("the bot starts polling within 60 s");
    let (mut through_bot, pushed) = links_one_at_a_time(&api, &media, &users).await;
    let (mut with_window, _) = links_one_at_a_time(&api, &media, &asking).await;
    with_window.sort();
    // Where the time of the default links went, from the fake's view.
    let jobs = timelines(&api.calls(), &pushed);
    bot.stop().await.expect("bot stops cleanly");
    through_bot.sort();
    let median = |v: &[Duration]| percentile(v, 0.5);
    let overhead = median(&through_bot).saturating_sub(median(&bare));
    let phase = |from: fn(&Timeline) -> Option<Instant>, to: fn(&Timeline) -> Option<Instant>| {
        let mut spans: Vec<Duration> = jobs
            .iter()
            .filter_map(|t| Some(to(t)?.saturating_duration_since(from(t)?)))
            .collect();
        spans.sort();
        if spans.is_empty() {
            "n/a".to_owned()
        } else {
            ms(median(&spans))
        }
    };
    Section {
        title: "4. Link to file, one link at a time, shipped settings".to_owned(),
        rows: vec![
            row("bare yt-dlp, median", ms(median(&bare)), ""),
            row(
                "link to file through the bot, median",
                ms(median(&through_bot)),
                "",
            ),
            row(
                "link to file, max",
                ms(*through_bot.last().expect("runs")),
                "",
            ),
            row(
                "the bot's overhead (median - median)",
                ms(overhead),
                &verdict(overhead < Duration::from_millis(300), "< 300 ms"),
            ),
            row(
                "with \"ask\" on (the old default), median",
                ms(median(&with_window)),
                "",
            ),
            row(
                "  link -> Accepted, median",
                phase(|t| t.pushed, |t| t.acked),
                "",
            ),
            row(
                "  Accepted -> \"downloading\" edit",
                phase(|t| t.acked, |t| t.downloading),
                "",
            ),
            row(
                "  \"downloading\" -> \"sending\" edit",
                phase(|t| t.downloading, |t| t.uploading),
                "",
            ),
            row(
                "  \"sending\" -> sendVideo answered",
                phase(|t| t.uploading, |t| t.video_answered),
                "",
            ),
        ],
        notes: vec![
            format!(
                "{n} links (tiny.mp4, each with its own query string so the cache never \
                 answers), sent one after the other's file; bare yt-dlp ran the same URL \
                 form {n} times just before, one at a time."
            ),
            "Through the bot: from the update queued in the fake to the fake having read \
             the whole sendVideo request (long-poll delivery, acknowledgement, download, \
             media step and upload included)."
                .to_owned(),
        ],
    }
}

/// One link from each of `users`, each sent once the previous one's file
/// arrived; how long each took from its update to its `sendVideo`, and when
/// each link message was pushed (for [`timelines`]).
async fn links_one_at_a_time(
    api: &FakeTelegram,
    media: &MediaServer,
    users: &[u64],
) -> (Vec<Duration>, HashMap<(i64, i32), Instant>) {
    let mut took = Vec::new();
    let mut pushed_at = HashMap::new();
    for (i, &user) in users.iter().enumerate() {
        let videos = |c: &[Call]| {
            c.iter()
                .filter(|c| c.is("sendVideo") && c.succeeded())
                .count()
        };
        let before = videos(&api.calls());
        let link = media.url(&format!("/tiny.mp4?user={user}&link={i}"));
        let pushed = Instant::now();
        let msg = api.push_text(user as i64, user, &link, Some("en"));
        pushed_at.insert((user as i64, msg), pushed);
        let calls = api
            .try_wait_for(|c| videos(c) > before, Duration::from_secs(120))
            .await
            .expect("the file arrives within 120 s");
        let sent = calls
            .iter()
            .filter(|c| c.is("sendVideo") && c.succeeded())
            .nth(before)
            .expect("the new sendVideo");
        took.push(sent.received_at.saturating_duration_since(pushed));
    }
    (took, pushed_at)
}

// ---------------------------------------------------------------------------
// 2 and 3. Burst against the release binary
// ---------------------------------------------------------------------------

/// The lines of `/proc/<pid>/status` this benchmark reports.
#[derive(Clone, Copy, Default)]
struct ProcStatus {
    /// Resident set, kB.
    rss: u64,
    /// The resident set's high-water mark since the process started, kB.
    hwm: u64,
    threads: u64,
}

fn proc_status(pid: u32) -> Option<ProcStatus> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some(ProcStatus {
        rss: field("VmRSS:")?,
        hwm: field("VmHWM:")?,
        threads: field("Threads:")?,
    })
}

/// CPU time (user + system) a process has used so far, all its threads
/// included and its children not.
fn cpu_time(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name, which may contain spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of the file, 12 and 13 here.
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// How the burst is run.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Burst {
    /// As deployed: durable intake, an unpaced fake.
    Stored,
    /// Updates confirmed without being stored (the bench-only switch), to
    /// show what the inbox costs per update.
    Unstored,
    /// Durable intake against a fake that answers 429 like Telegram.
    Paced,
}

/// The earliest each acknowledgement could have arrived under Telegram's
/// limits (30 a second overall; per chat two at once, then one a second),
/// in arrival order: what no bot could beat, whatever its speed.
fn pacing_floor(acks: &[(i64, Duration)]) -> Vec<Duration> {
    let mut per_chat: HashMap<i64, u32> = HashMap::new();
    acks.iter()
        .enumerate()
        .map(|(i, (chat, _))| {
            let k = per_chat.entry(*chat).or_default();
            *k += 1;
            let overall = Duration::from_secs_f64(i as f64 / 30.0);
            let chat = Duration::from_secs(u64::from(k.saturating_sub(2)));
            overall.max(chat)
        })
        .collect()
}

async fn burst(settings: &Settings, how: Burst) -> (Section, Section) {
    let n = settings.burst;
    let binary = tgdl_binary();
    let api = FakeTelegram::start().await;
    api.set_pacing(how == Burst::Paced);
    let media = MediaServer::fixtures().await;
    // Downloads park at the hold route until the run is over, so the one
    // running yt-dlp waits on its socket instead of competing for the CPU.
    let gate = media.hold_gate();
    let dir = tempfile::tempdir().expect("temp dir");
    let config_path = dir.path().join("config.toml");
    let log_path = dir.path().join("tgdl.log");
    // Against the unpaced fake the bot's own pacer is off (0), so the figures
    // show the bot's speed; against the paced fake it keeps Telegram's
    // limits, as deployed. (Opened to its largest setting, 1,000 calls a
    // second, the pacer alone held a 1,000-link burst to about a second.)
    let pacing = match how {
        Burst::Paced => "",
        _ => "pace_per_sec = 0\npace_per_chat_per_sec = 0\npace_per_group_per_min = 0\n",
    };
    let config = format!(
        "[telegram]\ntoken = \"{TOKEN}\"\napi_url = \"{api}\"\n{pacing}\
         [storage]\ndata_dir = \"{data}\"\n\
         [downloader]\nconcurrency = 1\nytdlp_source = \"{data}/no-releases\"\n\
         {LIMITS}\
         [security]\nallow_private_networks = true\n\
         [health]\ndisk_free_percent_critical = 0.5\n",
        api = api.url_string(),
        data = dir.path().join("data").display(),
    );
    std::fs::write(&config_path, config).expect("write config");

    eprintln!("burst: starting {}", binary.display());
    let mut cmd = tokio::process::Command::new(&binary);
    if how == Burst::Unstored {
        cmd.env(tgdl::telegram::intake::UNSTORED_ENV, "1");
    }
    let mut child = cmd
        .arg("run")
        .arg("--config")
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).expect("log file"))
        .kill_on_drop(true)
        .spawn()
        .expect("spawn tgdl");
    let pid = child.id().expect("child pid");
    if api
        .try_wait_for(
            |c| c.iter().any(|c| c.is("getUpdates")),
            Duration::from_secs(60),
        )
        .await
        .is_none()
    {
        panic!(
            "tgdl did not start polling; its log:\n{}",
            tail(&log_path, 30)
        );
    }
    // "Idle" means started and polling with nothing to do; a few seconds let
    // start-up allocations settle (the allocator returns freed pages lazily).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = proc_status(pid).expect("read /proc status");

    // Sample RSS while the burst runs, in its own task so the sampling rate
    // does not depend on how busy the waiting below is.
    let stop_sampling = CancellationToken::new();
    let max_rss = Arc::new(AtomicU64::new(idle.rss));
    let max_threads = Arc::new(AtomicU64::new(idle.threads));
    let sampler = {
        let stop = stop_sampling.clone();
        let (max_rss, max_threads) = (max_rss.clone(), max_threads.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RSS_SAMPLE_EVERY);
            while !stop.is_cancelled() {
                tick.tick().await;
                if let Some(st) = proc_status(pid) {
                    max_rss.fetch_max(st.rss, Ordering::Relaxed);
                    max_threads.fetch_max(st.threads, Ordering::Relaxed);
                }
            }
        })
    };

    eprintln!("burst: {n} links from {BURST_USERS} users");
    let (bot_cpu0, harness_cpu0) = (cpu_time(&pid.to_string()), cpu_time("self"));
    let start = Instant::now();
    let mut pushed = HashMap::with_capacity(n);
    for i in 0..n {
        let user = 20_000 + i as u64 % BURST_USERS;
        let link = media.url(&format!("/hold/tiny.mp4?n={i}"));
        let msg = api.push_text(user as i64, user, &link, Some("en"));
        pushed.insert((user as i64, msg), Instant::now());
    }
    let push_time = start.elapsed();
    let is_ack = |c: &Call| {
        c.is("sendMessage")
            && c.succeeded()
            && c.text().is_some_and(|t| t.starts_with(ACCEPTED_PREFIX))
    };
    // Each call is looked at once, after its answer. Scanning every call at
    // every new one is quadratic: in a 6,000-link burst under perf it took a
    // third of the machine's CPU, and the fake holds its lock meanwhile, so it
    // slowed the fake's answers to the bot it measures.
    let (mut looked_at, mut acks) = (0, 0);
    let acked = api
        .try_wait_for(
            |c| {
                while let Some(call) = c.get(looked_at).filter(|c| c.status.is_some()) {
                    acks += usize::from(is_ack(call));
                    looked_at += 1;
                }
                acks >= n
            },
            Duration::from_secs(120),
        )
        .await;
    let bot_cpu = cpu_time(&pid.to_string()).saturating_sub(bot_cpu0);
    let harness_cpu = cpu_time("self").saturating_sub(harness_cpu0);
    stop_sampling.cancel();
    let _ = sampler.await;
    let after = proc_status(pid).unwrap_or_default();
    let calls = api.calls();
    if acked.is_none() {
        panic!(
            "only {} of {n} links acknowledged within 120 s; tgdl log:\n{}",
            calls.iter().filter(|c| is_ack(c)).count(),
            tail(&log_path, 30)
        );
    }

    let mut latencies: Vec<Duration> = calls
        .iter()
        .filter(|c| is_ack(c))
        .filter_map(|c| {
            let at = pushed.get(&(c.chat_id()?, c.reply_to()?))?;
            Some(c.received_at.saturating_duration_since(*at))
        })
        .collect();
    assert_eq!(latencies.len(), n, "every acknowledgement matched its link");
    latencies.sort();
    let last_ack = calls
        .iter()
        .filter(|c| is_ack(c))
        .map(|c| c.received_at)
        .max()
        .expect("acks");
    let drain = last_ack.saturating_duration_since(start);
    let p50 = percentile(&latencies, 50.0);
    let p99 = percentile(&latencies, 99.0);
    // The bot's own share: each acknowledgement's latency above the pacing
    // floor of its place in the order they arrived.
    let mut arrivals: Vec<(i64, Duration)> = calls
        .iter()
        .filter(|c| is_ack(c))
        .filter_map(|c| Some((c.chat_id()?, c.received_at.saturating_duration_since(start))))
        .collect();
    arrivals.sort_by_key(|a| a.1);
    let floor = pacing_floor(&arrivals);
    let mut share: Vec<Duration> = arrivals
        .iter()
        .zip(&floor)
        .map(|((_, at), f)| at.saturating_sub(*f))
        .collect();
    share.sort();
    // How long the bot took to take the burst in (the last getUpdates answer
    // that carried updates), beside how long it took to answer it: whether
    // the drain waits on the intake loop or on the handlers behind it.
    let (rounds, taken_in) = calls
        .iter()
        .filter(|c| c.is("getUpdates"))
        .filter(|c| {
            c.result()
                .and_then(serde_json::Value::as_array)
                .is_some_and(|a| !a.is_empty())
        })
        .filter_map(|c| c.answered_at)
        .fold((0, start), |(k, last), at| (k + 1, last.max(at)));
    let taken_in = taken_in.saturating_duration_since(start);
    let refused = api.too_many_count();

    // Whether the memory the burst took is given back once it is over.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let settled = proc_status(pid).unwrap_or_default();

    // SIGTERM is how a service manager stops the bot; it must exit by itself.
    // The pid of a child we spawned and have not reaped.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    gate.release();
    match tokio::time::timeout(Duration::from_secs(30), child.wait()).await {
        Ok(Ok(status)) if status.success() => {}
        other => eprintln!(
            "burst: tgdl did not stop cleanly on SIGTERM ({other:?}); log:\n{}",
            tail(&log_path, 20)
        ),
    }

    let ack_rows = vec![
        row(
            "links (burst, pushed at once)",
            format!("{n} from {BURST_USERS} users"),
            "",
        ),
        row("time to queue them in the fake", ms(push_time), ""),
        row("min link in -> Accepted reply", ms(latencies[0]), ""),
        row("p50 link in -> Accepted reply", ms(p50), ""),
        row(
            "p99 link in -> Accepted reply",
            ms(p99),
            &verdict(p99 < Duration::from_millis(200), "< 200 ms"),
        ),
        row("max", ms(*latencies.last().expect("latencies")), ""),
        row(
            "pacing floor of the last reply (30/s overall, 1/s per chat)",
            ms(*floor.last().expect("floor")),
            "",
        ),
        row(
            "p99 above the pacing floor (the bot's own share)",
            ms(percentile(&share, 99.0)),
            &verdict(
                percentile(&share, 99.0) < Duration::from_millis(200),
                "< 200 ms",
            ),
        ),
        row("answered 429 by the fake", refused.to_string(), ""),
        row(
            "tgdl CPU time during the burst",
            format!(
                "{} ({:.2} ms per link)",
                ms(bot_cpu),
                bot_cpu.as_secs_f64() * 1000.0 / n as f64
            ),
            "",
        ),
        row(
            "bench process CPU (fake API, media server)",
            ms(harness_cpu),
            "",
        ),
        row(
            "first link in -> last reply",
            format!(
                "{:.2} s ({:.0} acks/s)",
                drain.as_secs_f64(),
                n as f64 / drain.as_secs_f64()
            ),
            "",
        ),
        row(
            "first link in -> last update handed to tgdl",
            format!("{} ({rounds} getUpdates answers)", ms(taken_in)),
            "",
        ),
    ];
    let peak = max_rss.load(Ordering::Relaxed);
    let mem_rows = vec![
        row(
            "idle (3 s after it started polling)",
            mb(idle.rss),
            &verdict(idle.rss < 30 * 1024, "< 30 MB"),
        ),
        row("high-water mark before the burst", mb(idle.hwm), ""),
        row(
            "during the burst, highest sample",
            mb(peak),
            &verdict(peak < 80 * 1024, "< 80 MB"),
        ),
        row(
            "high-water mark after the burst",
            mb(after.hwm),
            &verdict(after.hwm < 80 * 1024, "< 80 MB"),
        ),
        row("right after the last reply", mb(after.rss), ""),
        row("5 s after the last reply", mb(settled.rss), ""),
        row(
            "threads: idle / burst peak / 5 s after",
            format!(
                "{} / {} / {}",
                idle.threads,
                max_threads.load(Ordering::Relaxed),
                settled.threads
            ),
            "",
        ),
    ];
    let ack = Section {
        title: format!(
            "2{}. Acknowledgement latency: burst of {n} links, {BURST_USERS} users, {}",
            match how {
                Burst::Stored => "a",
                Burst::Unstored => "b",
                Burst::Paced => "c",
            },
            match how {
                Burst::Stored => "durable intake, unpaced fake, bot pacing off",
                Burst::Unstored =>
                    "intake NOT stored (the inbox's cost), unpaced fake, bot pacing off",
                Burst::Paced => "durable intake, fake paced like Telegram",
            }
        ),
        rows: ack_rows,
        notes: vec![
            "The release binary runs as a child process (tgdl run --config ...), talking to \
             the fake Bot API in this process over loopback."
                .to_owned(),
            "Latency: from the link's update being queued in the fake to the fake receiving \
             the bot's 'Accepted' sendMessage replying to it (long-poll delivery included)."
                .to_owned(),
            "Links point at the media server's hold route and downloader.concurrency = 1: \
             one yt-dlp starts during the burst and then waits, as a busy bot's would."
                .to_owned(),
            "Last update handed to tgdl: when the fake answered the last getUpdates that \
             carried updates. At most 100 come per answer, and the bot asks for the next \
             batch only once it has taken in the last (stored it, but in 2b), so a burst comes \
             in one batch after another; acknowledgements after that moment wait on the \
             handlers, not on intake."
                .to_owned(),
        ],
    };
    let mem = Section {
        title: "3. Resident memory of the tgdl process".to_owned(),
        rows: mem_rows,
        notes: vec![format!(
            "VmRSS / VmHWM from /proc/<pid>/status of the child, sampled every {} ms during \
             the burst; the yt-dlp process it spawns is not included.",
            RSS_SAMPLE_EVERY.as_millis()
        )],
    };
    (ack, mem)
}
