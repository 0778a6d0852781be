//! `tgdl export` and `tgdl import` on the real binary: a store with a job in
//! every state, a cache entry, settings, pending updates and finished-minute
//! counters moves to a new data dir and reads back the same, and every
//! damaged or misdirected import is refused with a clear line and leaves
//! the target as it was. The same file moves a stopped sled installation
//! into PostgreSQL (a fresh database per test) and back.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;

use support::binary::{run_tgdl, write_config};
use support::pg::TempDb;
use support::store_fixture::{build, new_job, Fixture, LEASE, LOOSE};
use tgdl::job::{now_ms, JobState};
use tgdl::store::{Diagnostics, JobStore, PgStore, SledStore, Store, UserSettings};
use uuid::Uuid;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A config whose data dir is `data` (the store is `data/db`), written in
/// its own folder so that source and target never share one.
fn config_for(data: &Path) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &format!("[storage]\ndata_dir = {data:?}\n"));
    (dir, cfg)
}

/// The fixture's data dir (its store is `<dir>/db`).
fn data_of(f: &Fixture) -> &Path {
    f.path.parent().unwrap()
}

fn export(data: &Path, to: &Path) -> Output {
    let (_c, cfg) = config_for(data);
    run_tgdl(&["export", "--output", to.to_str().unwrap()], &cfg)
}

fn import(data: &Path, from: &Path) -> Output {
    let (_c, cfg) = config_for(data);
    run_tgdl(&["import", from.to_str().unwrap()], &cfg)
}

/// The lines of an export without its header (which carries the time).
fn body(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    assert!(
        lines[0].starts_with("{\"tgdl_export\":{\"version\":1,"),
        "{}",
        lines[0]
    );
    lines.remove(0);
    lines
}

#[test]
fn export_then_import_moves_every_record_and_the_new_store_carries_on() {
    let f = build();
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("tgdl.jsonl");

    let out = export(data_of(&f), &file);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let said = stderr(&out);
    assert!(said.contains("exported 6 jobs"), "{said}");
    assert!(said.contains("2 pending updates"), "{said}");
    assert!(!work.path().join("tgdl.jsonl.partial").exists());
    let exported = body(&file);
    assert!(exported.last().unwrap().starts_with("{\"end\":"));

    let target = work.path().join("new-data");
    let out = import(&target, &file);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("imported 6 jobs"), "{said}");
    assert!(said.contains("counts match"), "{said}");

    // Exported again, the new store writes the same lines: jobs, users'
    // windows and turns, cache, settings, minute counters, pending updates.
    let again = work.path().join("again.jsonl");
    let out = export(&target, &again);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(body(&again), exported);

    // And through the store's own API.
    let old = support::reopen(|| SledStore::open(&f.path));
    let new = SledStore::open(&target.join("db")).unwrap();
    assert_eq!(new.counts().unwrap(), old.counts().unwrap());
    for s in JobState::ALL {
        assert_eq!(
            new.list_state(s, usize::MAX).unwrap(),
            old.list_state(s, usize::MAX).unwrap(),
            "{s}"
        );
    }
    let key = f.done.cache_key();
    assert!(new.cache_get(&key).unwrap().is_some());
    assert_eq!(new.cache_get(&key).unwrap(), old.cache_get(&key).unwrap());
    assert_eq!(new.settings(1).unwrap(), old.settings(1).unwrap());
    assert_eq!(new.inbox_pending().unwrap(), old.inbox_pending().unwrap());
    assert_eq!(
        new.finished_since(0).unwrap(),
        old.finished_since(0).unwrap()
    );
    assert_eq!(new.finished_since(0).unwrap(), (1, 1));
    let report = new.check_invariants().unwrap();
    assert!(report.problems.is_empty(), "{:#?}", report.problems);

    // The moved store works: the due queued job is claimed, the one not due
    // yet is not, and the user's hourly window came along.
    let claimed = new.claim(Uuid::now_v7(), LEASE, now_ms()).unwrap().unwrap();
    assert_eq!(claimed.id, f.queued.id);
    assert!(new
        .claim(Uuid::now_v7(), LEASE, now_ms())
        .unwrap()
        .is_none());
    let limits = tgdl::store::EnqueueLimits {
        per_user_active: 100,
        per_user_per_hour: 2,
        queue_capacity: 100,
        exempt: false,
    };
    // User 1 enqueued two links at 1,000 and 1,040 ms: at 2,000 ms both are
    // within the hour, so a third is refused on the new store as on the old.
    assert!(new.would_refuse(1, limits, 2_000).unwrap().is_some());
    assert_eq!(
        new.would_refuse(1, limits, 2_000).unwrap(),
        old.would_refuse(1, limits, 2_000).unwrap()
    );
}

#[test]
fn export_to_stdout_is_the_same_file() {
    let f = build();
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("a.jsonl");
    assert_eq!(export(data_of(&f), &file).status.code(), Some(0));
    let (_c, cfg) = config_for(data_of(&f));
    let out = run_tgdl(&["export"], &cfg);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let piped = work.path().join("b.jsonl");
    std::fs::write(&piped, &out.stdout).unwrap();
    assert_eq!(body(&piped), body(&file));
}

/// Import `text` into a new data dir: the exit code, stderr, and whether the
/// target store holds anything afterwards.
fn import_text(text: &str) -> (Option<i32>, String, bool) {
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("x.jsonl");
    std::fs::write(&file, text).unwrap();
    let target = work.path().join("data");
    let out = import(&target, &file);
    let held = target.join("db").exists() && {
        let s = SledStore::open(&target.join("db")).unwrap();
        s.counts().unwrap().total() > 0 || !s.inbox_pending().unwrap().is_empty()
    };
    (out.status.code(), stderr(&out), held)
}

fn good_export() -> (Fixture, String) {
    let f = build();
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("tgdl.jsonl");
    assert_eq!(export(data_of(&f), &file).status.code(), Some(0));
    (f, std::fs::read_to_string(&file).unwrap())
}

#[test]
fn a_damaged_file_is_refused_before_anything_is_written() {
    let (_f, text) = good_export();
    let lines: Vec<&str> = text.lines().collect();
    let n = lines.len();

    // The control: the file as exported imports.
    let (code, err, held) = import_text(&text);
    assert_eq!(code, Some(0), "{err}");
    assert!(held);

    // Cut short: the end line is missing.
    let cut = lines[..n - 1].join("\n");
    let (code, err, held) = import_text(&cut);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cut short"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!held, "nothing loaded from a cut file");

    // A line in the middle is damaged: named by its number.
    let mut damaged: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    let job_line = damaged
        .iter()
        .position(|l| l.starts_with("{\"job\":"))
        .unwrap();
    damaged[job_line] = damaged[job_line][..40].to_string();
    let (code, err, held) = import_text(&damaged.join("\n"));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&format!("line {}", job_line + 1)), "{err}");
    assert!(!held);

    // A job line removed: the end line's counts no longer match.
    let mut short: Vec<&str> = lines.clone();
    short.remove(job_line);
    let (code, err, held) = import_text(&short.join("\n"));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("end line says"), "{err}");
    assert!(!held);

    // Written by a newer tgdl.
    let newer = text.replacen("\"version\":1", "\"version\":2", 1);
    let (code, err, held) = import_text(&newer);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("format version 2"), "{err}");
    assert!(!held);

    // Not an export at all.
    let (code, err, held) = import_text("{\"jobs\":[]}\n");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("line 1"), "{err}");
    assert!(!held);
}

#[test]
fn import_into_a_store_that_holds_jobs_is_refused_and_changes_nothing() {
    let (f, text) = good_export();
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("tgdl.jsonl");
    std::fs::write(&file, &text).unwrap();
    let before = {
        let s = support::reopen(|| SledStore::open(&f.path));
        (s.counts().unwrap(), s.inbox_pending().unwrap())
    };
    let out = import(data_of(&f), &file);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("not empty"), "{err}");
    let s = support::reopen(|| SledStore::open(&f.path));
    assert_eq!((s.counts().unwrap(), s.inbox_pending().unwrap()), before);
}

#[test]
fn export_and_import_of_a_running_bots_store_say_stop_it_first() {
    let f = build();
    // This process holds the database, as a running bot does.
    let _held = support::reopen(|| SledStore::open(&f.path));
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("tgdl.jsonl");
    let out = export(data_of(&f), &file);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("stop it first"), "{err}");
    assert!(!file.exists());
}

#[test]
fn an_undecodable_record_moves_as_a_quarantined_one_and_is_not_lost() {
    let f = build();
    // Damage the failed job's record through raw sled.
    {
        let db = support::reopen(|| sled::open(&f.path));
        db.open_tree("jobs")
            .unwrap()
            .insert(f.failed.id.as_bytes(), b"\x02garbage".to_vec())
            .unwrap();
        db.flush().unwrap();
    }
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("tgdl.jsonl");
    let out = export(data_of(&f), &file);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("exported 5 jobs"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("1 quarantined records"),
        "{}",
        stderr(&out)
    );

    let target = work.path().join("new-data");
    let out = import(&target, &file);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let new = SledStore::open(&target.join("db")).unwrap();
    let q = new.quarantined().unwrap();
    assert_eq!(q.len(), 1, "{q:?}");
    assert_eq!(q[0].tree, "jobs");
    assert_eq!(q[0].key, f.failed.id.as_bytes().to_vec());
    assert_eq!(q[0].bytes, b"\x02garbage".to_vec());
    assert!(new.get(f.failed.id).unwrap().is_none());
    assert_eq!(new.counts().unwrap().total(), 5);
}

// PostgreSQL: the same file moves a stopped sled installation into a new
// database (and back), through the real binary.

/// A config for the PostgreSQL database at `url` (its own data dir beside).
fn pg_config_for(url: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = write_config(
        dir.path(),
        &format!(
            "[storage]\nbackend = \"postgres\"\npostgres_url = {url:?}\ndata_dir = {data:?}\n"
        ),
    );
    (dir, cfg)
}

fn pg_run(args: &[&str], url: &str) -> Output {
    let (_c, cfg) = pg_config_for(url);
    run_tgdl(args, &cfg)
}

/// The header line of an export.
fn header(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines().next().unwrap().to_string()
}

/// The fixture exported from sled through the binary: the file and its
/// data lines.
fn sled_export(f: &Fixture, work: &Path) -> (PathBuf, Vec<String>) {
    let file = work.join("from-sled.jsonl");
    let out = export(data_of(f), &file);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        header(&file).contains("\"backend\":\"sled\""),
        "{}",
        header(&file)
    );
    let lines = body(&file);
    (file, lines)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_sled_installation_moves_to_postgresql_by_export_then_import() {
    let f = build();
    let db = TempDb::create().await;
    let work = tempfile::tempdir().unwrap();
    let (file, exported) = sled_export(&f, work.path());

    let out = pg_run(&["import", file.to_str().unwrap()], &db.url);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("imported 6 jobs"), "{said}");
    assert!(said.contains("2 pending updates"), "{said}");
    assert!(
        said.contains(&format!("into postgres://127.0.0.1:5432/{}", db.name)),
        "{said}"
    );
    assert!(said.contains("counts match"), "{said}");

    // What the sled store holds, the PostgreSQL store holds.
    let old = support::reopen(|| SledStore::open(&f.path));
    let new = PgStore::connect(&db.url).await.unwrap();
    assert_eq!(new.counts().await.unwrap(), old.counts().unwrap());
    assert_eq!(new.counts().await.unwrap().total(), 6);
    for (s, n) in JobState::ALL.into_iter().zip([2, 1, 1, 0, 1, 1]) {
        let moved = new.list_state(s, usize::MAX).await.unwrap();
        assert_eq!(moved.len(), n, "{s}");
        assert_eq!(moved, old.list_state(s, usize::MAX).unwrap(), "{s}");
    }
    assert_eq!(new.get(f.done.id).await.unwrap().as_ref(), Some(&f.done));
    let key = f.done.cache_key();
    let cached = new
        .cache_get(&key)
        .await
        .unwrap()
        .expect("the delivery's cache entry");
    assert_eq!(cached.file_id, "file-of-done");
    assert_eq!(Some(cached), old.cache_get(&key).unwrap());
    let settings = new.settings(1).await.unwrap().expect("user 1's settings");
    assert!(!settings.ask);
    assert_eq!(Some(settings), old.settings(1).unwrap());
    assert_eq!(new.settings(2).await.unwrap(), None);
    let pending = new.inbox_pending().await.unwrap();
    assert_eq!(
        pending.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        vec![7, 8]
    );
    assert_eq!(pending, old.inbox_pending().unwrap());
    assert_eq!(new.finished_since(0).await.unwrap(), (1, 1));
    let report = new.check_invariants().await.unwrap();
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
    assert_eq!(report.jobs, 6);
    assert!(new.quarantined().await.unwrap().is_empty());

    // User 1's hourly window came along (enqueues at 1,000 and 1,040 ms).
    let limits = tgdl::store::EnqueueLimits {
        per_user_active: 100,
        per_user_per_hour: 2,
        queue_capacity: 100,
        exempt: false,
    };
    assert_eq!(
        new.would_refuse(1, limits, 2_000).await.unwrap(),
        Some(tgdl::store::Refusal::UserHourly {
            limit: 2,
            retry_at: 1_000 + tgdl::job::HOUR_MS
        })
    );
    assert_eq!(
        new.would_refuse(1, limits, 2_000).await.unwrap(),
        old.would_refuse(1, limits, 2_000).unwrap()
    );

    // Exported again from PostgreSQL: the same data lines, in the same
    // order; only the header (backend, time) differs.
    let again = work.path().join("from-pg.jsonl");
    let out = pg_run(&["export", "--output", again.to_str().unwrap()], &db.url);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("exported 6 jobs"), "{}", stderr(&out));
    assert!(
        header(&again).contains("\"backend\":\"postgres\""),
        "{}",
        header(&again)
    );
    assert_eq!(body(&again), exported);

    // The moved store works: the due queued job is claimed, the one not due
    // yet is not.
    let claimed = new
        .claim(Uuid::now_v7(), LEASE, now_ms())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claimed.id, f.queued.id);
    assert!(new
        .claim(Uuid::now_v7(), LEASE, now_ms())
        .await
        .unwrap()
        .is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn import_into_a_postgresql_database_that_holds_data_is_refused_and_changes_nothing() {
    let f = build();
    let work = tempfile::tempdir().unwrap();
    let (file, _) = sled_export(&f, work.path());
    let db = TempDb::create().await;
    let pg = PgStore::connect(&db.url).await.unwrap();
    let mine = pg
        .enqueue(new_job(9, "https://media.test/mine", None), LOOSE, 5_000)
        .await
        .unwrap()
        .job;
    pg.put_settings(
        9,
        UserSettings {
            ask: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let snapshot = || async {
        (
            pg.counts().await.unwrap(),
            pg.list_state(JobState::Queued, usize::MAX).await.unwrap(),
            pg.settings(9).await.unwrap(),
            pg.settings(1).await.unwrap(),
            pg.inbox_pending().await.unwrap(),
            pg.finished_since(0).await.unwrap(),
            pg.cache_get(&f.done.cache_key()).await.unwrap(),
        )
    };
    let before = snapshot().await;
    assert_eq!(before.1, vec![mine.clone()]);

    let out = pg_run(&["import", file.to_str().unwrap()], &db.url);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("not empty"), "{err}");
    assert!(err.contains(&db.name), "{err}");

    let after = snapshot().await;
    assert_eq!(after, before);
    assert_eq!(after.0.total(), 1);
    assert_eq!(after.3, None, "user 1's settings were not loaded");
    assert!(after.4.is_empty(), "no pending update was loaded");
    assert_eq!(after.6, None, "no cache entry was loaded");
    let report = pg.check_invariants().await.unwrap();
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_postgresql_store_moves_back_to_sled_unchanged() {
    let f = build();
    let db = TempDb::create().await;
    let work = tempfile::tempdir().unwrap();
    let (file, exported) = sled_export(&f, work.path());
    let out = pg_run(&["import", file.to_str().unwrap()], &db.url);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let from_pg = work.path().join("from-pg.jsonl");
    let out = pg_run(&["export", "--output", from_pg.to_str().unwrap()], &db.url);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let target = work.path().join("back-to-sled");
    let out = import(&target, &from_pg);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let back = work.path().join("back.jsonl");
    let out = export(&target, &back);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(body(&back), exported);

    let old = support::reopen(|| SledStore::open(&f.path));
    let new = SledStore::open(&target.join("db")).unwrap();
    assert_eq!(new.counts().unwrap(), old.counts().unwrap());
    for s in JobState::ALL {
        assert_eq!(
            new.list_state(s, usize::MAX).unwrap(),
            old.list_state(s, usize::MAX).unwrap(),
            "{s}"
        );
    }
    assert_eq!(new.finished_since(0).unwrap(), (1, 1));
    let report = new.check_invariants().unwrap();
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_undecodable_sled_record_moves_to_postgresql_as_a_quarantined_one() {
    let f = build();
    {
        let db = support::reopen(|| sled::open(&f.path));
        db.open_tree("jobs")
            .unwrap()
            .insert(f.failed.id.as_bytes(), b"\x02garbage".to_vec())
            .unwrap();
        db.flush().unwrap();
    }
    let work = tempfile::tempdir().unwrap();
    let (file, exported) = sled_export(&f, work.path());
    let db = TempDb::create().await;
    let out = pg_run(&["import", file.to_str().unwrap()], &db.url);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let pg = PgStore::connect(&db.url).await.unwrap();
    let q = pg.quarantined().await.unwrap();
    assert_eq!(q.len(), 1, "{q:?}");
    assert_eq!(q[0].tree, "jobs");
    assert_eq!(q[0].key, f.failed.id.as_bytes().to_vec());
    assert_eq!(q[0].bytes, b"\x02garbage".to_vec());
    assert!(pg.get(f.failed.id).await.unwrap().is_none());
    assert_eq!(pg.counts().await.unwrap().total(), 5);
    let report = pg.check_invariants().await.unwrap();
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
    assert_eq!(report.quarantined, 1);

    // The quarantined record (with the time it was set aside) exports again
    // as it came in: the same lines, the quarantine line last rather than
    // where sled met the damaged job.
    let again = work.path().join("from-pg.jsonl");
    let out = pg_run(&["export", "--output", again.to_str().unwrap()], &db.url);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let again = body(&again);
    assert!(
        again[again.len() - 2].starts_with("{\"quarantine\":"),
        "{again:#?}"
    );
    assert_eq!(sorted(again), sorted(exported));
}

/// More jobs than one import batch (512 lines) and one export page (512
/// rows): 600 jobs of 3 users made on PostgreSQL move to a second database
/// and to sled, and each exports the same lines again.
#[tokio::test(flavor = "multi_thread")]
async fn a_store_larger_than_one_batch_moves_between_postgresql_and_sled() {
    let db = TempDb::create().await;
    let pg = PgStore::connect(&db.url).await.unwrap();
    for i in 0..600u64 {
        let url = format!("https://media.test/{i}");
        pg.enqueue(new_job(1 + i % 3, &url, None), LOOSE, 10_000 + i)
            .await
            .unwrap();
    }
    // Two claims: their users' turns move, two jobs are downloading.
    let owner = Uuid::now_v7();
    for at in [20_000, 20_001] {
        pg.claim(owner, LEASE, at).await.unwrap().unwrap();
    }
    let work = tempfile::tempdir().unwrap();
    let first = work.path().join("first.jsonl");
    let out = pg_run(&["export", "--output", first.to_str().unwrap()], &db.url);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("exported 600 jobs (598 queued, 2 downloading), 3 users"),
        "{}",
        stderr(&out)
    );
    let exported = body(&first);
    assert_eq!(exported.len(), 3 + 600 + 1);

    let second_db = TempDb::create().await;
    let out = pg_run(&["import", first.to_str().unwrap()], &second_db.url);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let second = PgStore::connect(&second_db.url).await.unwrap();
    assert_eq!(second.counts().await.unwrap(), pg.counts().await.unwrap());
    assert_eq!(second.counts().await.unwrap().queued, 598);
    let report = second.check_invariants().await.unwrap();
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
    let again = work.path().join("again.jsonl");
    let out = pg_run(
        &["export", "--output", again.to_str().unwrap()],
        &second_db.url,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(body(&again), exported);
    // The fair turn came along: user 3 was never served, so goes next.
    let next = second.claim(owner, LEASE, 30_000).await.unwrap().unwrap();
    assert_eq!(next.user_id, 3);

    let target = work.path().join("sled-data");
    let out = import(&target, &first);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let back = work.path().join("back.jsonl");
    let out = export(&target, &back);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(body(&back), exported);
    let sled = SledStore::open(&target.join("db")).unwrap();
    assert_eq!(
        sled.claim(owner, LEASE, 30_000).unwrap().unwrap().user_id,
        3
    );
}
