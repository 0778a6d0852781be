//! 5. One node against two nodes on the same links (`TGDL_BENCH_ONLY=nodes`).
//!
//! The same links (slow and quick media, several users, all pushed at once)
//! go through three setups back to back, each with a fresh fake Bot API and
//! media server of the same settings and the release binary as child
//! processes (`tgdl run`, as deployed):
//!
//! a. one node on a fresh PostgreSQL database;
//! b. two nodes on one fresh PostgreSQL database, each with its own data
//!    folder and `node_name`, the same config otherwise (the same
//!    `downloader.concurrency` per node, so twice the workers in all);
//! c. one node on sled, for reference.
//!
//! Per setup: the wall time from the first link pushed until every link's
//! file was received by the fake, jobs per minute, p50 / p95 link-to-file
//! latency, and which node ran how many jobs. A node's jobs are read from its
//! own log: the worker that claimed a job runs it to its end and then logs
//! `job step ended job=<id> outcome=finished done`; distinct ids per log are
//! counted, and the counts are checked to cover every job with no id in two
//! logs (and, on PostgreSQL, the database's done count to equal the links).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tgdl::store::{PgStore, Store};

use crate::support::binary::{binary_config, write_config, BotProcess};
use crate::support::fake_telegram::{Call, FakeTelegram};
use crate::support::media_server::MediaServer;
use crate::support::pg::{admin_url, TempDb};
use crate::{cpu_time, ms, percentile, row, Row, Section, LIMITS};

/// Users the links come from (round robin).
const USERS: u64 = 6;
/// `downloader.concurrency` of every node.
const PER_NODE: usize = 2;
/// How long one setup may take to deliver every link.
const DELIVER_TIMEOUT: Duration = Duration::from_secs(300);
/// After every node's workers started: time for the start-up work that runs
/// beside serving (the updater's `yt-dlp --version`, the first health
/// sample) to end, so it is not counted against the first jobs.
const SETTLE: Duration = Duration::from_secs(3);

/// The bot's pacer off, as in the unpaced burst (2a): every node paces on
/// its own, so under Telegram's limits two nodes would also have twice the
/// per-chat budget; unpaced, the setups compare the work.
const PACING: &str =
    "[telegram]\npace_per_sec = 0\npace_per_chat_per_sec = 0\npace_per_group_per_min = 0\n";

/// What the worker logs when a job it ran ended done.
const FINISHED_MARK: &str = "job step ended";
const FINISHED_OUTCOME: &str = "outcome=finished done";
/// The (debug) line each worker loop logs when it starts.
const WORKER_STARTED: &str = "worker started";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Setup {
    PgOne,
    PgTwo,
    Sled,
}

impl Setup {
    fn label(self) -> &'static str {
        match self {
            Setup::PgOne => "a) PostgreSQL, 1 node",
            Setup::PgTwo => "b) PostgreSQL, 2 nodes",
            Setup::Sled => "c) sled, 1 node",
        }
    }

    fn nodes(self) -> usize {
        if self == Setup::PgTwo {
            2
        } else {
            1
        }
    }
}

/// One link of the set: the user who sends it and its path on the media server.
struct Link {
    user: u64,
    path: String,
}

/// Half slow (clip.mp4, about 170 KB trickled in 4 KB chunks every 40 ms,
/// as in tests/cluster.rs), half quick (tiny.mp4 at once); each link has its
/// own query string so no cache answers.
fn links(n: usize) -> Vec<Link> {
    (0..n)
        .map(|i| Link {
            user: 30_001 + i as u64 % USERS,
            path: if i % 2 == 0 {
                format!("/slow/clip.mp4?burst=16384&chunk=4096&delay_ms=40&n={i}")
            } else {
                format!("/tiny.mp4?n={i}")
            },
        })
        .collect()
}

struct Node {
    name: String,
    _dir: tempfile::TempDir,
    log: PathBuf,
    bot: BotProcess,
}

impl Node {
    fn start(api: &FakeTelegram, db: Option<&TempDb>, name: &str) -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        let storage = match db {
            Some(db) => format!(
                "[storage]\nbackend = \"postgres\"\npostgres_url = \"{}\"\nnode_name = \"{name}\"\n",
                db.url
            ),
            None => String::new(),
        };
        let extra = format!("{PACING}{storage}[downloader]\nconcurrency = {PER_NODE}\n{LIMITS}");
        let cfg = write_config(
            dir.path(),
            &binary_config(dir.path(), &api.url_string(), &extra),
        );
        let log = dir.path().join("bot.log");
        let bot = BotProcess::start(&cfg, &log);
        Node {
            name: name.to_owned(),
            _dir: dir,
            log,
            bot,
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn cpu(&self) -> Duration {
        cpu_time(&self.bot.pid().to_string())
    }

    fn polls(&self) -> bool {
        self.log_text().contains("this node polls Telegram")
    }
}

/// The ids of the jobs this node's workers ran to done, from its log.
fn finished_jobs(log: &str) -> HashSet<String> {
    log.lines()
        .filter(|l| l.contains(FINISHED_MARK) && l.contains(FINISHED_OUTCOME))
        .filter_map(|l| {
            let at = l.find(" job=")? + " job=".len();
            l[at..].split_whitespace().next().map(str::to_owned)
        })
        .collect()
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

fn logs(nodes: &[Node]) -> String {
    nodes
        .iter()
        .map(|n| format!("--- {} log:\n{}", n.name, tail(&n.log_text())))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Polls `check` every 50 ms for at most `timeout` (a condition in another
/// process's log file or database has no notification to wait on).
async fn poll_until<F: std::future::Future<Output = bool>>(
    timeout: Duration,
    mut check: impl FnMut() -> F,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What one setup gave.
struct Outcome {
    setup: Setup,
    wall: Duration,
    /// Link to file, sorted.
    latencies: Vec<Duration>,
    /// Per node: name, whether it polled, jobs it ran to done.
    per_node: Vec<(String, bool, usize)>,
    /// Files sent more than once for one link.
    duplicates: usize,
    /// CPU time of the tgdl processes during the run (not their yt-dlp children).
    cpu: Duration,
    /// The 1-minute load average when the links were pushed.
    load: String,
}

fn successful_videos(calls: &[Call]) -> impl Iterator<Item = &Call> {
    calls.iter().filter(|c| c.is("sendVideo") && c.succeeded())
}

async fn run_setup(setup: Setup, links: &[Link]) -> Outcome {
    let n = links.len();
    let api = FakeTelegram::start().await;
    let media = MediaServer::fixtures().await;
    let db = match setup {
        Setup::Sled => None,
        _ => Some(TempDb::create().await),
    };
    eprintln!("nodes: {} ({n} links)", setup.label());

    // The first node starts and polls; a second starts once it does, so the
    // poller is known (node-a), and works beside it.
    let mut nodes = vec![Node::start(&api, db.as_ref(), "node-a")];
    if api
        .try_wait_for(
            |c| c.iter().any(|c| c.is("getUpdates")),
            Duration::from_secs(60),
        )
        .await
        .is_none()
    {
        panic!("node-a did not start polling\n{}", logs(&nodes));
    }
    for k in 1..setup.nodes() {
        let name = format!("node-{}", (b'a' + k as u8) as char);
        nodes.push(Node::start(&api, db.as_ref(), &name));
    }
    let ready = poll_until(Duration::from_secs(60), || {
        let all = nodes
            .iter()
            .all(|n| n.log_text().matches(WORKER_STARTED).count() >= PER_NODE);
        async move { all }
    })
    .await;
    assert!(ready, "not every node's workers started\n{}", logs(&nodes));
    tokio::time::sleep(SETTLE).await;

    let load = crate::common::loadavg();
    let cpu0: Duration = nodes.iter().map(Node::cpu).sum();
    let start = Instant::now();
    let mut pushed: HashMap<(i64, i32), Instant> = HashMap::with_capacity(n);
    for l in links {
        let msg = api.push_text(l.user as i64, l.user, &media.url(&l.path), Some("en"));
        pushed.insert((l.user as i64, msg), Instant::now());
    }
    let delivered = api
        .try_wait_for(
            |calls| {
                let got: HashSet<(i64, i32)> = successful_videos(calls)
                    .filter_map(|c| Some((c.chat_id()?, c.reply_to()?)))
                    .collect();
                pushed.keys().all(|k| got.contains(k))
            },
            DELIVER_TIMEOUT,
        )
        .await;
    let cpu = nodes
        .iter()
        .map(Node::cpu)
        .sum::<Duration>()
        .saturating_sub(cpu0);
    let Some(calls) = delivered else {
        panic!(
            "{}: not every link delivered within {DELIVER_TIMEOUT:?}\n{}",
            setup.label(),
            logs(&nodes)
        );
    };

    // Each link's first file, from its update queued to the fake having read
    // the whole sendVideo.
    let mut first: HashMap<(i64, i32), Instant> = HashMap::new();
    let mut sends = 0;
    for c in successful_videos(&calls) {
        let Some(key) = c.chat_id().zip(c.reply_to()) else {
            continue;
        };
        if pushed.contains_key(&key) {
            sends += 1;
            first.entry(key).or_insert(c.received_at);
        }
    }
    let mut latencies: Vec<Duration> = first
        .iter()
        .map(|(k, at)| at.saturating_duration_since(pushed[k]))
        .collect();
    latencies.sort();
    let last = first.values().max().copied().expect("files");
    let wall = last.saturating_duration_since(start);

    // Done is recorded after the file (cleaning comes last): wait for every
    // job's end in the logs, then read the database's count.
    let all_logged = poll_until(Duration::from_secs(30), || {
        let total: usize = nodes
            .iter()
            .map(|n| finished_jobs(&n.log_text()).len())
            .sum();
        async move { total >= n }
    })
    .await;
    let per_job: Vec<HashSet<String>> =
        nodes.iter().map(|n| finished_jobs(&n.log_text())).collect();
    let mut union = HashSet::new();
    let mut in_two = 0;
    for set in &per_job {
        for id in set {
            if !union.insert(id.clone()) {
                in_two += 1;
            }
        }
    }
    assert!(
        all_logged && union.len() == n && in_two == 0,
        "{}: the nodes' logs show {} distinct finished jobs of {n} ({in_two} in two logs)\n{}",
        setup.label(),
        union.len(),
        logs(&nodes)
    );
    if let Some(db) = &db {
        let store = PgStore::connect(&db.url)
            .await
            .expect("connect to the bench database");
        let counts = store.counts().await.expect("counts");
        assert_eq!(
            counts.done as usize,
            n,
            "{}: done jobs in the database: {counts:?}",
            setup.label()
        );
    }
    let per_node = nodes
        .iter()
        .zip(&per_job)
        .map(|(node, jobs)| (node.name.clone(), node.polls(), jobs.len()))
        .collect();

    for node in nodes {
        let name = node.name.clone();
        let (status, _bot) = node.bot.sigterm_and_wait(Duration::from_secs(30)).await;
        if !status.is_some_and(|s| s.success()) {
            eprintln!("nodes: {name} did not stop cleanly on SIGTERM ({status:?})");
        }
    }
    drop(db);
    Outcome {
        setup,
        wall,
        latencies,
        per_node,
        duplicates: sends - n,
        cpu,
        load,
    }
}

/// Whether the PostgreSQL server the bench databases are made on answers.
async fn postgres_reachable() -> Result<(), String> {
    let url = admin_url();
    match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
        Ok((client, conn)) => {
            let task = tokio::spawn(conn);
            drop(client);
            let _ = task.await;
            Ok(())
        }
        Err(e) => Err(format!("{url}: {e}")),
    }
}

fn jobs_per_min(n: usize, wall: Duration) -> f64 {
    n as f64 / wall.as_secs_f64() * 60.0
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

pub async fn one_against_two(n: usize, explicit: bool) -> Section {
    let title = format!(
        "5. One node against two: {n} links, {USERS} users, downloader.concurrency = {PER_NODE} per node"
    );
    if let Err(e) = postgres_reachable().await {
        if explicit {
            panic!(
                "no PostgreSQL for the nodes part ({e}); start it with \
                 pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
            );
        }
        return Section {
            title,
            rows: Vec::new(),
            notes: vec![format!(
                "skipped: no PostgreSQL server ({e}); TGDL_TEST_PG names it"
            )],
        };
    }
    let links = links(n);
    let mut outcomes = Vec::new();
    for setup in [Setup::PgOne, Setup::PgTwo, Setup::Sled] {
        outcomes.push(run_setup(setup, &links).await);
    }

    let mut rows: Vec<Row> = Vec::new();
    for o in &outcomes {
        rows.push(row(
            &format!("{}: first link in -> last file", o.setup.label()),
            secs(o.wall),
            "",
        ));
        rows.push(row(
            "  throughput",
            format!("{:.1} jobs/min", jobs_per_min(n, o.wall)),
            "",
        ));
        rows.push(row(
            "  link -> file, p50 / p95",
            format!(
                "{} / {}",
                secs(percentile(&o.latencies, 50.0)),
                secs(percentile(&o.latencies, 95.0))
            ),
            "",
        ));
        let names: Vec<String> = o
            .per_node
            .iter()
            .map(|(name, polls, _)| {
                if *polls && o.per_node.len() > 1 {
                    format!("{name} (polls)")
                } else {
                    name.clone()
                }
            })
            .collect();
        rows.push(row(
            &format!("  jobs run by {}", names.join(" / ")),
            o.per_node
                .iter()
                .map(|(_, _, jobs)| jobs.to_string())
                .collect::<Vec<_>>()
                .join(" / "),
            "(each node's log)",
        ));
        rows.push(row(
            "  tgdl CPU, all nodes (yt-dlp not counted)",
            format!(
                "{} ({:.0} ms per job)",
                ms(o.cpu),
                o.cpu.as_secs_f64() * 1000.0 / n as f64
            ),
            "",
        ));
        rows.push(row(
            "  1-min load average when the links went in",
            o.load.clone(),
            "",
        ));
        if o.duplicates > 0 {
            rows.push(row("  files sent twice", o.duplicates.to_string(), ""));
        }
    }
    let tput = |s: Setup| {
        outcomes
            .iter()
            .find(|o| o.setup == s)
            .map_or(0.0, |o| jobs_per_min(n, o.wall))
    };
    rows.push(row(
        "two nodes / one node (PostgreSQL), throughput",
        format!("x {:.2}", tput(Setup::PgTwo) / tput(Setup::PgOne)),
        "",
    ));
    rows.push(row(
        "PostgreSQL / sled (one node), throughput",
        format!("x {:.2}", tput(Setup::PgOne) / tput(Setup::Sled)),
        "",
    ));
    let cpus = std::thread::available_parallelism().map_or(0, |c| c.get());
    Section {
        title,
        rows,
        notes: vec![
            format!(
                "This machine has {cpus} CPUs, shared by every node, their yt-dlp runs, PostgreSQL \
                 and this process (fake Bot API, media server): two nodes mean {} workers on the \
                 same cores, not twice the machine. The point is that the cluster works and how \
                 its throughput compares, not a scale-out claim.",
                2 * PER_NODE
            ),
            format!(
                "The same {n} links in each setup, pushed at once: every other one slow (clip.mp4, \
                 about 170 KB trickled in 4 KB chunks every 40 ms), the rest tiny.mp4; each with its \
                 own query string. Setups ran back to back (a, b, c), each with a fresh fake Bot API \
                 (unpaced) and media server, fresh data folders and, on PostgreSQL, a fresh database \
                 (TempDb, dropped after)."
            ),
            "The release binary as child processes (tgdl run), the same config but for [storage]; \
             the bot's pacer opened wide as in 2a (each node paces on its own, so under Telegram's \
             limits two nodes would also have twice the per-chat budget). node-a starts first \
             and polls; node-b starts once it does; the clock starts once every node's workers \
             have started and 3 s more have passed."
                .to_owned(),
            "Wall time: the first link pushed -> the fake having read the last link's sendVideo. \
             Link -> file: per link, its update queued -> its sendVideo read (queueing behind the \
             other links included). More workers on the same cores run more yt-dlp processes at \
             once, each slower: jobs finish later but closer together, so the median can rise \
             while the wall time stays."
                .to_owned(),
            "Jobs per node: distinct job ids in each node's own log line 'job step ended ... \
             outcome=finished done' (the worker that claims a job runs it to its end); checked to \
             cover every link with no id in two logs, and the database's done count to equal the \
             links."
                .to_owned(),
        ],
    }
}
