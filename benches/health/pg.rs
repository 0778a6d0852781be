//! Part 3 of `cargo bench --bench health`: the same `/health` calls as part 2
//! on PostgreSQL, in a fresh database (`tests/support/pg.rs`'s `TempDb`,
//! dropped at the end) holding as many jobs as part 2's sled store.
//!
//! Seeding. The in-flight jobs and a few thousand finished ones are made
//! through the store API (`enqueue`, `claim`, `update`, each one committed
//! transaction, so a few hundred jobs per second). The rest of the finished
//! jobs are copies of those, made by one SQL statement in the same schema,
//! which also brings every derived row in line the way
//! `src/store/postgres/apply.rs` keeps it: the job's counter shard in
//! `state_counts` (`id` byte 15 % 16) and the per-minute `finished_minutes`.
//! `users` needs nothing: a finished job counts in no user's active or
//! queued jobs, and the copies keep the users of their originals. After the
//! copy, `ANALYZE`, then the counters are checked against a recount.

#[path = "../../tests/support/pg.rs"]
mod temp_db;

use std::hint::black_box;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tgdl::config::Config;
use tgdl::job::{now_ms, Job, JobError, JobState, NewJob};
use tgdl::ops::health::HealthState;
use tgdl::pipeline::JobService;
use tgdl::store::{Edit, Expect, PgStore, Store};
use tokio::runtime::Runtime;
use tokio_postgres::NoTls;
use uuid::Uuid;

use super::common::{delivered, downloaded, new_job, time_reps, LEASE_MS, OPEN_LIMITS};
use super::{monitor, Core, Measured, Settings};
use temp_db::{admin_url, TempDb};

/// Finished jobs made through the API (the copies' originals), a quarter of
/// them failed.
const API_FINISHED: u64 = 4_000;
const API_FINISHED_QUICK: u64 = 1_000;
/// Concurrent API callers while seeding (the pool holds 16 connections).
const SEEDERS: u64 = 8;
/// The copies' request message ids start here, above any the API jobs get
/// (the dedupe key is chat + message + url, and copies keep their url).
const COPY_MSG_BASE: i64 = 1_500_000_000;

/// Whether the local server answers (within a few seconds).
pub fn server_up(rt: &Runtime) -> Result<(), String> {
    let url = admin_url();
    rt.block_on(async {
        match tokio::time::timeout(Duration::from_secs(5), tokio_postgres::connect(&url, NoTls))
            .await
        {
            Ok(Ok((client, conn))) => {
                let task = tokio::spawn(conn);
                drop(client);
                let _ = task.await;
                Ok(())
            }
            Ok(Err(e)) => Err(format!("{url}: {e}")),
            Err(_) => Err(format!("{url}: no answer in 5 s")),
        }
    })
}

/// Seed, check, explain and time. `scratch` is for the bot's data dir (the
/// downloads folder the sample walks).
pub fn run(rt: &Runtime, s: &Settings, scratch: &Path) -> Measured {
    let db = rt.block_on(TempDb::create());
    println!("part 3 database: {} (fresh, dropped at the end)", db.name);
    let store = Arc::new(rt.block_on(PgStore::connect(&db.url)).expect("connect"));
    let admin = rt.block_on(connect(&db.url));

    // Through the API: the in-flight jobs, then the finished originals.
    let api_finished = if s.quick {
        API_FINISHED_QUICK
    } else {
        API_FINISHED
    }
    .min(s.big - s.in_flight);
    let t = Instant::now();
    let ids = rt.block_on(seed_in_flight(&store, s.in_flight));
    let api_failed = api_finished / 4;
    let mut finished = rt.block_on(seed_finished(&store, api_finished - api_failed, api_failed));
    let through_api = t.elapsed();
    println!(
        "{} in flight + {} finished ({} failed) jobs through the store API in {:.1} s ({:.0} jobs/s)",
        s.in_flight,
        api_finished,
        api_failed,
        through_api.as_secs_f64(),
        (s.in_flight + api_finished) as f64 / through_api.as_secs_f64()
    );

    // The copies, then ANALYZE.
    let copies = s.big - s.in_flight - api_finished;
    let t = Instant::now();
    rt.block_on(multiply(&admin, copies, api_finished));
    let copied = t.elapsed();
    let t = Instant::now();
    rt.block_on(admin.batch_execute("ANALYZE"))
        .expect("ANALYZE");
    println!(
        "{copies} finished jobs copied in SQL in {:.1} s; ANALYZE {:.1} s",
        copied.as_secs_f64(),
        t.elapsed().as_secs_f64()
    );

    // Check: the counters hold what was inserted, shard by shard. Copy g
    // copies the finished original number g % api_finished in id order.
    finished.sort_unstable();
    let failed_copies = (0..copies)
        .filter(|g| finished[(g % api_finished) as usize].1)
        .count() as u64;
    let want_failed = api_failed + failed_copies;
    let want_done = s.big - s.in_flight - want_failed;
    let counts = rt.block_on(store.counts()).expect("counts");
    let third = s.in_flight / 3;
    assert_eq!(counts.get(JobState::Queued), 0);
    assert_eq!(
        counts.get(JobState::Downloading),
        s.in_flight - 2 * third,
        "{counts:?}"
    );
    assert_eq!(counts.get(JobState::Uploading), third, "{counts:?}");
    assert_eq!(counts.get(JobState::Cleaning), third, "{counts:?}");
    assert_eq!(counts.get(JobState::Done), want_done, "{counts:?}");
    assert_eq!(counts.get(JobState::Failed), want_failed, "{counts:?}");
    assert_eq!(counts.total(), s.big);
    let off: i64 = rt
        .block_on(admin.query_one(
            "SELECT count(*) FROM state_counts sc
             FULL JOIN (SELECT state, (get_byte(uuid_send(id), 15) % 16)::smallint AS shard,
                               count(*) AS n
                        FROM jobs GROUP BY 1, 2) r USING (state, shard)
             WHERE coalesce(sc.n, 0) <> coalesce(r.n, 0)",
            &[],
        ))
        .expect("recount")
        .get(0);
    assert_eq!(off, 0, "state_counts shards differ from a recount");
    let in_flight = rt.block_on(store.in_flight()).expect("in_flight");
    assert_eq!(in_flight.len() as u64, s.in_flight);
    let table: i64 = rt
        .block_on(admin.query_one("SELECT pg_total_relation_size('jobs')", &[]))
        .expect("size")
        .get(0);
    println!(
        "checked: counts() = {} done + {} failed + {} in flight = {} (every shard equals a recount); \
         in_flight() = {}; jobs table with indexes {:.0} MiB",
        want_done,
        want_failed,
        s.in_flight,
        counts.total(),
        in_flight.len(),
        table as f64 / (1 << 20) as f64
    );

    explain(rt, &admin);

    // The bot: a data dir whose downloads folder holds two in-flight jobs'
    // files, as part 2's store.
    let data = scratch.join("pg-data");
    for id in ids.iter().take(2) {
        let d = data.join("downloads").join(id.hyphenated().to_string());
        std::fs::create_dir_all(&d).expect("job dir");
        std::fs::write(d.join("video.f137.mp4.part"), vec![0u8; 1 << 20]).expect("file");
        std::fs::write(d.join("video.f140.m4a"), vec![0u8; 1 << 18]).expect("file");
    }
    let core = open_core(rt, &data, store.clone());
    let measured = measure(rt, s, &core);
    drop(core);
    drop(store);
    drop(admin);
    let _ = std::fs::remove_dir_all(&data);
    drop(db);
    measured
}

fn open_core(rt: &Runtime, data: &Path, store: Arc<PgStore>) -> Arc<Core> {
    let _in_rt = rt.enter();
    let mut config = Config::default();
    config.storage.data_dir = data.to_path_buf();
    let jobs = Arc::new(JobService::new(Arc::new(config), store, None).expect("job service"));
    let health = Arc::new(HealthState::default());
    *health.ytdlp_version.write().unwrap() = "2026.10.26".into();
    Arc::new(Core { jobs, health })
}

/// The calls part 2 times, in the same order.
fn measure(rt: &Runtime, s: &Settings, core: &Arc<Core>) -> Measured {
    let health = || {
        rt.block_on(tgdl::ops::report::health_text(&core.jobs, &core.health))
            .expect("health_text")
    };
    let t = Instant::now();
    let text = health();
    let cold = t.elapsed();
    assert!(text.contains("tgdl is"), "{text}");
    let fresh = time_reps(s.reps, || {
        black_box(health());
    });
    let mut m = monitor(core);
    let t = Instant::now();
    rt.block_on(m.tick()).expect("tick");
    let tick = t.elapsed();
    let cached = time_reps(s.reps, || {
        black_box(health());
    });
    let sample = time_reps(s.reps.min(500), || {
        black_box(rt.block_on(m.sample()).expect("sample"));
    });
    let store = core.jobs.store.clone();
    let (in_flight, in_flight_since) = super::in_flight_reads(rt, s, &store);
    let counts = time_reps(s.reps, || {
        black_box(rt.block_on(store.counts()).expect("counts"));
    });
    let (size, finished) = super::other_reads(rt, s, &store);
    Measured {
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
    }
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    tokio::spawn(conn);
    client
}

// ---------------------------------------------------------------------------
// Seeding through the API

async fn enqueue(store: &PgStore, new: NewJob) -> Job {
    let e = store
        .enqueue(new, OPEN_LIMITS, now_ms())
        .await
        .expect("enqueue");
    assert!(!e.duplicate, "bench requests must be distinct");
    e.job
}

async fn advance(store: &PgStore, job: &Job, expect: Expect, to: JobState, edit: Edit) {
    if let Err(e) = store.update(job.id, expect, Some(to), now_ms(), edit).await {
        panic!("to {to}: {e:?}");
    }
}

/// `n` jobs claimed by one owner, a third each left in downloading,
/// uploading and cleaning (as `common::seed_in_flight`). Returns their ids.
async fn seed_in_flight(store: &Arc<PgStore>, n: u64) -> Vec<Uuid> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..SEEDERS {
        let (store, next) = (store.clone(), next.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                enqueue(&store, new_job(999, i)).await;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("enqueue task");
    }
    let owner = Uuid::now_v7();
    let claimed = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..SEEDERS {
        let (store, claimed) = (store.clone(), claimed.clone());
        tasks.spawn(async move {
            let mut ids = Vec::new();
            while let Some(job) = store.claim(owner, LEASE_MS, now_ms()).await.expect("claim") {
                let k = claimed.fetch_add(1, Ordering::Relaxed);
                let own = |s| Expect::owned(s, owner);
                if k % 3 >= 1 {
                    let edit: Edit = Arc::new(downloaded);
                    advance(
                        &store,
                        &job,
                        own(JobState::Downloading),
                        JobState::Uploading,
                        edit,
                    )
                    .await;
                }
                if k % 3 == 2 {
                    let edit: Edit = Arc::new(delivered);
                    advance(
                        &store,
                        &job,
                        own(JobState::Uploading),
                        JobState::Cleaning,
                        edit,
                    )
                    .await;
                }
                ids.push(job.id.0);
            }
            ids
        });
    }
    let mut ids = Vec::new();
    while let Some(r) = tasks.join_next().await {
        ids.extend(r.expect("claim task"));
    }
    ids.sort();
    assert_eq!(ids.len() as u64, n);
    ids
}

/// `done` + `failed` finished jobs, each queued -> cleaning -> done or
/// failed (the short path a cancel takes), with a delivered job's fields
/// (done) or a failure (failed), so records are full size. Returns each
/// job's id and whether it failed.
async fn seed_finished(store: &Arc<PgStore>, done: u64, failed: u64) -> Vec<(Uuid, bool)> {
    let n = done + failed;
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..SEEDERS {
        let (store, next) = (store.clone(), next.clone());
        tasks.spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                // Many users, as a long-running bot accumulates.
                let mut nj = new_job(1000, i);
                nj.user_id = 10_000 + i % 5_000;
                let job = enqueue(&store, nj).await;
                let fail = i >= done;
                let (edit, to): (Edit, _) = if fail {
                    (
                        Arc::new(|j: &mut Job| {
                            j.failure = Some(JobError::permanent(
                                "cancelled".into(),
                                "cancelled by the user",
                            ));
                        }),
                        JobState::Failed,
                    )
                } else {
                    (
                        Arc::new(|j: &mut Job| {
                            downloaded(j);
                            delivered(j);
                        }),
                        JobState::Done,
                    )
                };
                advance(
                    &store,
                    &job,
                    Expect::state(JobState::Queued),
                    JobState::Cleaning,
                    edit,
                )
                .await;
                let none: Edit = Arc::new(|_: &mut Job| {});
                advance(&store, &job, Expect::state(JobState::Cleaning), to, none).await;
                out.push((job.id.0, fail));
            }
            out
        });
    }
    let mut out = Vec::new();
    while let Some(r) = tasks.join_next().await {
        out.extend(r.expect("finish task"));
    }
    assert_eq!(out.len() as u64, n);
    out
}

// ---------------------------------------------------------------------------
// Multiplying in SQL

/// `copies` more finished jobs, copy g of the finished original number
/// g % `originals` (in id order), in one statement that also updates the
/// copies' counter shards and per-minute counters as `apply.rs` would have.
///
/// A copy gets a fresh random UUID (`gen_random_uuid()`), the short id of
/// that UUID, its own request message id (the dedupe key must stay unique)
/// and every other column of its original, the `record` bytes included.
/// Those bytes still encode the original's id and message id: nothing on the
/// `/health` path decodes a finished job's record (`counts()` reads the
/// counter rows, `in_flight()` and the oldest queued job read states 1 to
/// 4, `finished_since` the per-minute rows), so the copies weigh on `/health`
/// exactly as real finished jobs do: as rows in the table and its indexes.
async fn multiply(c: &tokio_postgres::Client, copies: u64, originals: u64) {
    let copies = copies as i64;
    let originals = originals as i64;
    c.batch_execute("SET synchronous_commit = off; SET maintenance_work_mem = '256MB'")
        .await
        .expect("session settings");
    let sql = "
        WITH src AS (
            SELECT row_number() OVER (ORDER BY id) - 1 AS k,
                   user_id, chat_id, url, state, next_attempt_at, updated_at, record
            FROM jobs WHERE state IN (5, 6)
        ), fresh AS (
            -- A volatile select list keeps this subquery from being flattened:
            -- one gen_random_uuid() per row.
            SELECT gen_random_uuid() AS id, g, src.*
            FROM generate_series(0::bigint, $1::bigint - 1) AS g
            JOIN src ON src.k = g % $2::bigint
        ), ins AS (
            INSERT INTO jobs (id, short, user_id, chat_id, request_msg_id, url, state,
                              next_attempt_at, updated_at, lease_owner, lease_until, record)
            SELECT id, right(replace(id::text, '-', ''), 8), user_id, chat_id,
                   ($3::bigint + g)::integer, url, state, next_attempt_at, updated_at,
                   NULL, NULL, record
            FROM fresh
            RETURNING id, state, updated_at
        ), shards AS (
            UPDATE state_counts sc SET n = sc.n + d.n
            FROM (SELECT state, (get_byte(uuid_send(id), 15) % 16)::smallint AS shard,
                         count(*) AS n
                  FROM ins GROUP BY 1, 2) d
            WHERE sc.state = d.state AND sc.shard = d.shard
            RETURNING 1
        )
        INSERT INTO finished_minutes (state, minute, n)
        SELECT state, updated_at / 60000, count(*) FROM ins GROUP BY 1, 2
        ON CONFLICT (state, minute) DO UPDATE SET n = finished_minutes.n + EXCLUDED.n";
    let have: i64 = c
        .query_one("SELECT count(*) FROM jobs WHERE state IN (5, 6)", &[])
        .await
        .expect("count originals")
        .get(0);
    assert_eq!(have, originals);
    c.execute(sql, &[&copies, &originals, &COPY_MSG_BASE])
        .await
        .expect("copy finished jobs");
    let total: i64 = c
        .query_one("SELECT count(*) FROM jobs", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(total, have + copies + in_flight_rows(c).await);
}

async fn in_flight_rows(c: &tokio_postgres::Client) -> i64 {
    c.query_one("SELECT count(*) FROM jobs WHERE state IN (1, 2, 3, 4)", &[])
        .await
        .expect("count")
        .get(0)
}

// ---------------------------------------------------------------------------
// Plans

/// EXPLAIN ANALYZE of what `counts()` and `list_state(in flight)` run, with
/// literals (the custom plan) and as prepared with parameters under
/// `plan_cache_mode = force_generic_plan` (the plan a pooled connection
/// settles on after a few executions).
fn explain(rt: &Runtime, c: &tokio_postgres::Client) {
    let show = |title: &str, sql: &str| {
        let rows = rt.block_on(c.query(sql, &[])).expect("EXPLAIN");
        println!("EXPLAIN {title}:");
        for r in rows {
            let line: String = r.get(0);
            println!("    {line}");
        }
    };
    println!();
    show(
        "counts(): SELECT state, sum(n)::bigint FROM state_counts GROUP BY state",
        "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT state, sum(n)::bigint FROM state_counts GROUP BY state",
    );
    show(
        "list_state(downloading, usize::MAX), custom plan (literals)",
        "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) SELECT id, record FROM jobs WHERE state = 2 \
         ORDER BY id LIMIT 9223372036854775807",
    );
    rt.block_on(c.batch_execute(
        "SET plan_cache_mode = force_generic_plan;
         PREPARE list_state(smallint, bigint) AS
             SELECT id, record FROM jobs WHERE state = $1 ORDER BY id LIMIT $2",
    ))
    .expect("PREPARE");
    show(
        "list_state(downloading, usize::MAX), generic plan (prepared, $1 $2)",
        "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) EXECUTE list_state(2, 9223372036854775807)",
    );
    rt.block_on(c.batch_execute("DEALLOCATE list_state; RESET plan_cache_mode"))
        .expect("DEALLOCATE");
    println!();
}
