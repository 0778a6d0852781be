//! Several nodes on one PostgreSQL database (issue 11), with the real
//! binary, the fake Bot API, real yt-dlp against media served over
//! loopback, and a fresh database per test.
//!
//! - Two `tgdl run` processes share the work of links from several users;
//!   the polling node is killed with SIGKILL in the middle. Every link is
//!   delivered, no job is lost, every request message is one job (the
//!   dedupe holds across nodes), a second delivery needs the kill to have
//!   landed after that job's first one, and links sent after the kill are
//!   acknowledged by the surviving node, which took over polling.
//! - Eight workers in two processes claim 10,000 jobs: none is claimed
//!   twice, every one is finished, and the invariant check is clean.
//! - `tgdl jobs` and `tgdl health` answer while a node runs, and `/health`
//!   lists the nodes.

mod support;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use support::binary::{run_tgdl, write_config, BotProcess};
use support::fake_telegram::FakeTelegram;
use support::media_server::MediaServer;
use support::pg::TempDb;
use tgdl::job::{now_ms, JobOptions, JobState, NewJob};
use tgdl::store::{no_edit, Diagnostics, EnqueueLimits, Expect, PgStore, Store};
use uuid::Uuid;

fn node_config(dir: &Path, api: &str, db: &str, node: &str) -> String {
    format!(
        r#"[telegram]
token = "123456:TEST-token"
api_url = "{api}"
admins = [9000]
progress_interval_secs = 1
choice_wait_secs = 0
[storage]
data_dir = "{}"
backend = "postgres"
postgres_url = "{db}"
node_name = "{node}"
[downloader]
concurrency = 2
retry_base_secs = 1
max_attempts = 10
max_rescues = 100
lease_secs = 5
[limits]
per_user_active = 100
per_user_per_hour = 1000
[security]
allow_private_networks = true
[health]
interval_secs = 1
disk_free_percent_critical = {}
memory_percent_warning = 100
cpu_percent_warning = 100
"#,
        dir.join("data").display(),
        support::bot::HOST_DISK_CRITICAL,
    )
}

/// A node: its own folder (config, data, log) and its process.
struct Node {
    dir: tempfile::TempDir,
    bot: Option<BotProcess>,
}

impl Node {
    fn start(api: &FakeTelegram, db: &TempDb, name: &str) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let text = node_config(dir.path(), &api.url_string(), &db.url, name);
        let cfg = write_config(dir.path(), &text);
        let bot = BotProcess::start(&cfg, &dir.path().join("bot.log"));
        Node {
            dir,
            bot: Some(bot),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("bot.log")).unwrap_or_default()
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// The counts once no job is active any more (cleaning is the last step
/// after a delivery). The condition lives in another process's database, so
/// it is read again until it holds, for at most 30 s.
async fn settled(store: &PgStore) -> tgdl::store::StateCounts {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let counts = store.counts().await.unwrap();
        if counts.active() == 0 || tokio::time::Instant::now() > deadline {
            return counts;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends and successful `sendVideo` answers per request (chat, message).
fn deliveries(api: &FakeTelegram) -> HashMap<(i64, i32), Vec<usize>> {
    let mut out: HashMap<(i64, i32), Vec<usize>> = HashMap::new();
    for (i, c) in api.calls().iter().enumerate() {
        if c.is("sendVideo") && c.succeeded() {
            if let (Some(chat), Some(msg)) = (c.chat_id(), c.reply_to()) {
                out.entry((chat, msg)).or_default().push(i);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_deliver_everything_when_the_polling_node_is_killed() {
    let api = FakeTelegram::start().await;
    let media = MediaServer::fixtures().await;
    let db = TempDb::create().await;

    // A starts first and polls; B starts once A polls, and works.
    let mut a = Node::start(&api, &db, "node-a");
    api.wait_for(
        |c| c.iter().any(|c| c.is("getUpdates")),
        Duration::from_secs(60),
    )
    .await;
    let b = Node::start(&api, &db, "node-b");

    // 4 users x 3 links, slow and quick; each link its own job.
    let mut sent: HashSet<(i64, i32)> = HashSet::new();
    for n in 0..12u32 {
        let user = 3001 + (n % 4) as i64;
        let link = if n % 2 == 0 {
            media.url(&format!(
                "/slow/clip.mp4?burst=16384&chunk=4096&delay_ms=40&n={n}"
            ))
        } else {
            media.url(&format!("/tiny.mp4?n={n}"))
        };
        let id = api.push_text(user, user as u64, &link, None);
        sent.insert((user, id));
    }

    // Kill the poller once some work is done and some is in flight.
    api.wait_for(
        |c| {
            c.iter()
                .filter(|c| c.is("sendVideo") && c.succeeded())
                .count()
                >= 2
        },
        Duration::from_secs(120),
    )
    .await;
    let kill_at = api.calls().len();
    a.bot.as_mut().unwrap().kill9();

    // Links sent after the kill: the surviving node polls and answers them.
    let mut after: HashSet<(i64, i32)> = HashSet::new();
    for n in 0..4u32 {
        let user = 3101 + n as i64;
        let id = api.push_text(
            user,
            user as u64,
            &media.url(&format!("/tiny.mp4?late={n}")),
            None,
        );
        after.insert((user, id));
    }
    sent.extend(after.iter().copied());

    let all = api
        .try_wait_for(
            |calls| {
                let got: HashSet<(i64, i32)> = calls
                    .iter()
                    .filter(|c| c.is("sendVideo") && c.succeeded())
                    .filter_map(|c| Some((c.chat_id()?, c.reply_to()?)))
                    .collect();
                sent.iter().all(|k| got.contains(k))
            },
            Duration::from_secs(240),
        )
        .await;
    assert!(
        all.is_some(),
        "not every link was delivered; node-b log:\n{}\nnode-a log:\n{}",
        tail(&b.log()),
        tail(&a.log())
    );
    // Each late link was acknowledged (the status reply) after the kill.
    let calls = api.calls();
    for (chat, msg) in &after {
        assert!(
            calls.iter().skip(kill_at).any(|c| c.is("sendMessage")
                && c.chat_id() == Some(*chat)
                && c.reply_to() == Some(*msg)),
            "late link of chat {chat} was not acknowledged"
        );
    }
    assert!(
        b.log().contains("this node polls Telegram"),
        "node-b took over polling:\n{}",
        tail(&b.log())
    );

    // The database: one job per request, all done, invariants hold.
    let store = PgStore::connect(&db.url).await.unwrap();
    let counts = settled(&store).await;
    assert_eq!(counts.active(), 0, "{counts:?}");
    assert_eq!(
        counts.done as usize,
        sent.len(),
        "every request is one job: {counts:?}"
    );
    assert_eq!(counts.total() as usize, sent.len());
    let report = store.check_invariants().await.unwrap();
    assert!(report.problems.is_empty(), "{:#?}", report.problems);

    // A job delivered twice was first delivered by the killed node before
    // the kill (the window between Telegram's answer and the commit).
    let d = deliveries(&api);
    let mut duplicates = 0;
    for (key, at) in &d {
        if at.len() > 1 {
            duplicates += at.len() - 1;
            assert!(
                at[0] < kill_at,
                "job {key:?} was delivered {} times without a kill in its window",
                at.len()
            );
        }
    }
    assert!(duplicates <= 1, "{duplicates} duplicates for 1 kill");
    println!(
        "cluster: jobs {} | lost 0 | duplicates {duplicates} | late links acknowledged by node-b {}",
        sent.len(),
        after.len()
    );
    // Node-b's files are gone with its jobs; node-a's folder is its own.
    let left: Vec<_> = std::fs::read_dir(b.dir.path().join("data/downloads"))
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "node-b left files: {left:?}");
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_answers_while_a_node_runs_and_health_lists_the_nodes() {
    let api = FakeTelegram::start().await;
    let media = MediaServer::fixtures().await;
    let db = TempDb::create().await;
    let node = Node::start(&api, &db, "node-x");
    api.wait_for(
        |c| c.iter().any(|c| c.is("getUpdates")),
        Duration::from_secs(60),
    )
    .await;
    let id = api.push_text(41, 41, &media.url("/tiny.mp4"), None);
    api.wait_for(
        |c| {
            c.iter()
                .any(|c| c.is("sendVideo") && c.succeeded() && c.reply_to() == Some(id))
        },
        Duration::from_secs(60),
    )
    .await;

    // Another folder, the same database: the shell reads PostgreSQL itself.
    let other = tempfile::tempdir().unwrap();
    let text = node_config(other.path(), &api.url_string(), &db.url, "shell");
    let cfg = write_config(other.path(), &text);
    let cfg2 = cfg.clone();
    let out = tokio::task::spawn_blocking(move || run_tgdl(&["jobs", "--json"], &cfg2))
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 1, "{rows}");
    assert_eq!(rows[0]["url"], media.url("/tiny.mp4"));

    // /health from an admin lists the node, with its heartbeat.
    api.push_text(9000, 9000, "/health", None);
    let calls = api
        .wait_for(
            |c| {
                c.iter().any(|c| {
                    c.is("sendMessage")
                        && c.chat_id() == Some(9000)
                        && c.text().is_some_and(|t| t.contains("nodes (1)"))
                })
            },
            Duration::from_secs(30),
        )
        .await;
    let text = calls
        .iter()
        .rev()
        .find(|c| c.is("sendMessage") && c.chat_id() == Some(9000))
        .and_then(|c| c.text().map(str::to_owned))
        .unwrap();
    assert!(text.contains("node-x: heartbeat"), "{text}");
    assert!(text.contains("polls Telegram"), "{text}");

    let out = tokio::task::spawn_blocking(move || run_tgdl(&["health"], &cfg))
        .await
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(printed.contains("node-x"), "{printed}");
    drop(node);
}

/// The child side of the claim race: `TGDL_CLAIM_DB` names the database,
/// `TGDL_CLAIM_OUT` the file for the ids this process claimed. Four workers
/// claim and finish jobs until none is left. Run only as a child.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "run by eight_workers_in_two_processes_claim_every_job_once"]
async fn claim_worker_process() {
    let (Ok(url), Ok(out)) = (
        std::env::var("TGDL_CLAIM_DB"),
        std::env::var("TGDL_CLAIM_OUT"),
    ) else {
        return;
    };
    let store = Arc::new(PgStore::connect(&url).await.unwrap());
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let owner = Uuid::now_v7();
            let mut mine = Vec::new();
            while let Some(job) = store.claim(owner, 60_000, now_ms()).await.unwrap() {
                let expect = Expect::owned(JobState::Downloading, owner);
                let j = store
                    .update(
                        job.id,
                        expect,
                        Some(JobState::Cleaning),
                        now_ms(),
                        no_edit(),
                    )
                    .await
                    .unwrap();
                store
                    .update(
                        j.id,
                        Expect::state(JobState::Cleaning),
                        Some(JobState::Done),
                        now_ms(),
                        no_edit(),
                    )
                    .await
                    .unwrap();
                mine.push(job.id.to_string());
            }
            mine
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.extend(t.await.unwrap());
    }
    std::fs::write(out, ids.join("\n")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_workers_in_two_processes_claim_every_job_once() {
    const JOBS: usize = 10_000;
    let db = TempDb::create().await;
    let store = Arc::new(PgStore::connect(&db.url).await.unwrap());
    let limits = EnqueueLimits {
        per_user_active: u32::MAX,
        per_user_per_hour: u32::MAX,
        queue_capacity: u64::MAX,
        exempt: false,
    };
    // 100 users' jobs, enqueued by 16 tasks at once.
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for t in 0..16usize {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for n in (t..JOBS).step_by(16) {
                let new = NewJob {
                    chat_id: (n % 100) as i64 + 1,
                    user_id: (n % 100) as u64 + 1,
                    request_msg_id: n as i32,
                    lang: "en".into(),
                    url: format!("https://example.com/v/{n}"),
                    options: JobOptions::default(),
                    parent: None,
                    not_before: None,
                };
                store.enqueue(new, limits, now_ms()).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(store.counts().await.unwrap().queued as usize, JOBS);
    let enqueued = started.elapsed();

    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut children = Vec::new();
    for p in 0..2 {
        let out = dir.path().join(format!("claimed-{p}"));
        let child = tokio::process::Command::new(&exe)
            .args([
                "--exact",
                "claim_worker_process",
                "--ignored",
                "--nocapture",
            ])
            .env("TGDL_CLAIM_DB", &db.url)
            .env("TGDL_CLAIM_OUT", &out)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        children.push((child, out));
    }
    let mut claimed: HashMap<String, usize> = HashMap::new();
    let mut per_process = Vec::new();
    for (mut child, out) in children {
        let status = child.wait().await.unwrap();
        assert!(status.success(), "a claiming process failed");
        let text = std::fs::read_to_string(&out).unwrap();
        let ids: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
        per_process.push(ids.len());
        for id in ids {
            *claimed.entry(id.to_string()).or_default() += 1;
        }
    }
    let twice: Vec<_> = claimed.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "claimed twice: {twice:?}");
    assert_eq!(claimed.len(), JOBS, "every job claimed");
    assert!(
        per_process.iter().all(|n| *n > 0),
        "both processes claimed: {per_process:?}"
    );
    let counts = store.counts().await.unwrap();
    assert_eq!(counts.done as usize, JOBS, "{counts:?}");
    assert_eq!(counts.active(), 0);
    let report = store.check_invariants().await.unwrap();
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
    println!(
        "claims per process: {per_process:?}; enqueue {:.1} s, claim and finish {:.1} s",
        enqueued.as_secs_f64(),
        (started.elapsed() - enqueued).as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_from_another_process_stops_the_download_on_the_node_running_it() {
    let api = FakeTelegram::start().await;
    let media = MediaServer::fixtures().await;
    let db = TempDb::create().await;
    let node = Node::start(&api, &db, "node-c");
    api.wait_for(
        |c| c.iter().any(|c| c.is("getUpdates")),
        Duration::from_secs(60),
    )
    .await;
    // A download slow enough to still run when the cancel comes.
    let link = media.url("/slow/clip.mp4?burst=4096&chunk=1024&delay_ms=200");
    api.push_text(51, 51, &link, None);
    media
        .try_wait_for(
            |reqs| {
                reqs.iter()
                    .any(|r| r.path == "/slow/clip.mp4" && r.bytes_sent > 4096)
            },
            Duration::from_secs(60),
        )
        .await
        .expect("the download started");
    let store = PgStore::connect(&db.url).await.unwrap();
    let job = store
        .list_state(JobState::Downloading, 10)
        .await
        .unwrap()
        .pop()
        .expect("the job downloads");

    // `tgdl cancel` from another folder: another process on the same
    // database, so the running node hears it through the store.
    let shell = tempfile::tempdir().unwrap();
    let text = node_config(shell.path(), &api.url_string(), &db.url, "shell");
    let cfg = write_config(shell.path(), &text);
    let id = job.id.to_string();
    let out = tokio::task::spawn_blocking(move || run_tgdl(&["cancel", &id], &cfg))
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The node stops its yt-dlp, cleans up and records the cancel.
    let data = node.dir.path().join("data");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let finished = loop {
        let j = store.get(job.id).await.unwrap().unwrap();
        if j.state == JobState::Failed || tokio::time::Instant::now() > deadline {
            break j;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(finished.state, JobState::Failed, "{finished:?}");
    assert_eq!(
        finished.failure.as_ref().map(|f| f.code),
        Some(tgdl::job::FailureCode::Cancelled)
    );
    assert!(
        node.log().contains("cancel announced by another node"),
        "the node heard the announcement:\n{}",
        tail(&node.log())
    );
    let left = support::binary::processes_left(
        &data.join("downloads").display().to_string(),
        Duration::from_secs(10),
    );
    assert!(left.is_empty(), "yt-dlp still runs: {left:?}");
    let files: Vec<_> = std::fs::read_dir(data.join("downloads"))
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(files.is_empty(), "files left: {files:?}");
    let report = store.check_invariants().await.unwrap();
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_waits_for_its_database_and_starts_once_it_is_there() {
    let api = FakeTelegram::start().await;
    // The database this node names does not exist yet; the guard drops it
    // at the end (if it was created).
    let base = TempDb::create().await;
    let later = TempDb {
        name: format!("{}_later", base.name),
        url: format!("{}_later", base.url),
    };
    let node = Node::start(&api, &later, "node-w");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !node.log().contains("cannot reach PostgreSQL; retrying") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no retry reported:\n{}",
            tail(&node.log())
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(api.count("getUpdates"), 0, "no polling without the store");
    let (admin, conn) = tokio_postgres::connect(&support::pg::admin_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(conn);
    admin
        .batch_execute(&format!("CREATE DATABASE {}", later.name))
        .await
        .unwrap();
    drop(admin);
    let _ = task.await;
    // Backoff doubles from 1 s up to 30 s: within a minute it is there.
    api.wait_for(
        |c| c.iter().any(|c| c.is("getUpdates")),
        Duration::from_secs(60),
    )
    .await;
    drop(node);
}

#[tokio::test]
async fn an_alert_is_sent_once_per_cooldown_for_the_whole_cluster() {
    let db = TempDb::create().await;
    let a = Arc::new(PgStore::connect(&db.url).await.unwrap());
    let b = Arc::new(PgStore::connect(&db.url).await.unwrap());
    const COOLDOWN: u64 = 300_000;
    // Two nodes see the same condition at the same moment: one sends.
    let (x, y) = tokio::join!(
        a.claim_alert("backlog:started", 1_000, COOLDOWN),
        b.claim_alert("backlog:started", 1_000, COOLDOWN)
    );
    assert_eq!(
        [x.unwrap(), y.unwrap()].iter().filter(|g| **g).count(),
        1,
        "exactly one node sends"
    );
    assert!(!b
        .claim_alert("backlog:started", 200_000, COOLDOWN)
        .await
        .unwrap());
    assert!(a
        .claim_alert("backlog:resolved", 200_000, COOLDOWN)
        .await
        .unwrap());
    assert!(b
        .claim_alert("backlog:started", 301_000, COOLDOWN)
        .await
        .unwrap());
}
