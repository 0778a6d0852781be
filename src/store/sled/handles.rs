//! sled's handles (the database and its trees) behind a gate, so that the
//! store can close sled and open it again while it runs.
//!
//! Why: sled 0.34 writes the snapshot of its page table only while it opens
//! a database, and an open after a crash reads every log segment written
//! since that snapshot. A bot that never restarts would replay its whole
//! history after a crash (sled's open took 2.1-2.2 s at a million stored
//! jobs in the recovery bench, and it grows with the history).
//! Opening sled again every [`REOPEN_AFTER`] checkpoints of the store's log
//! bounds what a crash leaves to replay; the reopen itself reads only what
//! was written since the last one.
//!
//! Every use of a tree takes a [`Held`] from the [`Gate`] (a clone of an
//! `Arc`, nothing more while no reopen is asked for). A reopen asks the gate
//! to close: new first holds on a thread wait (a thread that already holds
//! one goes on, so nothing waits for itself), and once no hold is left the
//! gate drops the old handles, opens sled again and lets everyone on. If the
//! holds do not drain within [`DRAIN_WAIT`] (a holder waits for something a
//! waiting thread would do), the reopen gives up and is tried again later:
//! a short stall, never a deadlock.

use std::cell::Cell;
use std::marker::PhantomData;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use sled::{Db, Tree};

use super::{tree_number, LOGGED_TREES};
use crate::store::StoreError;

/// How many checkpoints of the store's log (each one [`super::wal::WAL_BYTES`]
/// of job changes) between two opens of sled: 256 MiB of changes, which
/// sled's open after a crash reads in about a third of a second on the
/// bench machine (`benches/README.md`, the recovery benchmark).
pub(super) const REOPEN_AFTER: u64 = 32;

/// How long a reopen waits for the holds to drain before it gives up.
const DRAIN_WAIT: Duration = Duration::from_millis(200);

/// How long a reopen keeps trying to open sled again when its lock is not
/// free yet (sled's I/O threads let go of the old files a moment after the
/// last handle is dropped).
const OPEN_WAIT: Duration = Duration::from_secs(2);

thread_local! {
    /// How many [`Held`]s this thread has: a thread that holds one never
    /// waits at a closing gate for another. Counted per thread, not per
    /// gate: a thread holding one store's sled that takes another store's
    /// (two stores in one process, as some tests have) does not wait at
    /// that one's gate either; at worst its hold makes that reopen give up.
    static HELD: Cell<u32> = const { Cell::new(0) };
}

/// The open database and every tree the store uses, dropped together.
pub(super) struct Handles {
    pub db: Db,
    /// The trees a log record names, by number ([`LOGGED_TREES`]).
    pub logged: Vec<Tree>,
    pub settings: Tree,
    pub quarantine: Tree,
}

/// Remove what a process killed while sled wrote a snapshot left behind.
///
/// sled 0.34.7 writes its page-table snapshot (at every open) to
/// `snap.<lsn>.generating`, syncs it and renames it to `snap.<lsn>`. But
/// when it opens, it takes the snapshot file with the greatest name, and
/// its filter skips only an older suffix (`.in___motion`), not
/// `.generating`: a half-written `.generating` file from a kill during an
/// open is read as the snapshot, fails its checksum, and sled refuses the
/// whole database ("Read corrupted data at file offset None"). Such a file
/// never took effect (the rename is what makes a snapshot current), so the
/// previous snapshot and sled's log still describe the database.
fn remove_unfinished_snapshots(dir: &Path) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        // A new store: sled makes the folder.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            tracing::warn!(file = %name, "removing a snapshot sled did not finish writing");
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

impl Handles {
    fn open(dir: &Path) -> Result<Handles, sled::Error> {
        remove_unfinished_snapshots(dir)?;
        let db = sled::Config::new()
            .path(dir)
            // A small VPS has little memory to spare; the hot set (in-flight
            // jobs, indexes) is tiny.
            .cache_capacity(16 * 1024 * 1024)
            // No background flusher: a job change is durable in the store's
            // log, and sled's flush holds a lock that every transaction's
            // commit waits for, for as long as the disk takes. sled writes
            // its files when a buffer fills and at each checkpoint instead.
            .flush_every_ms(None)
            .open()?;
        let logged = LOGGED_TREES
            .iter()
            .map(|name| db.open_tree(name))
            .collect::<Result<Vec<Tree>, _>>()?;
        Ok(Handles {
            settings: db.open_tree("settings")?,
            quarantine: db.open_tree("quarantine")?,
            logged,
            db,
        })
    }

    /// A logged tree by its name in [`LOGGED_TREES`] (a name that is not
    /// one panics): for the invariant check, which walks them all.
    pub fn tree(&self, name: &str) -> &Tree {
        &self.logged[tree_number(name)]
    }

    // The trees the store's hot paths read, by a number fixed at build time.
    pub fn jobs(&self) -> &Tree {
        &self.logged[const { tree_number("jobs") }]
    }
    pub fn by_state(&self) -> &Tree {
        &self.logged[const { tree_number("by_state") }]
    }
    pub fn by_user(&self) -> &Tree {
        &self.logged[const { tree_number("by_user") }]
    }
    pub fn users(&self) -> &Tree {
        &self.logged[const { tree_number("users") }]
    }
    pub fn ready(&self) -> &Tree {
        &self.logged[const { tree_number("ready") }]
    }
    pub fn turns(&self) -> &Tree {
        &self.logged[const { tree_number("turns") }]
    }
    pub fn cache(&self) -> &Tree {
        &self.logged[const { tree_number("cache") }]
    }
    pub fn shorts(&self) -> &Tree {
        &self.logged[const { tree_number("shorts") }]
    }
    pub fn meta(&self) -> &Tree {
        &self.logged[const { tree_number("meta") }]
    }
    pub fn inbox(&self) -> &Tree {
        &self.logged[const { tree_number("inbox") }]
    }
}

/// Where the store's threads get sled's handles (see the module's text).
pub(super) struct Gate {
    dir: PathBuf,
    /// `None` only if opening sled again failed: every use then fails with
    /// [`StoreError::Unavailable`] until a later reopen succeeds.
    slot: RwLock<Option<Arc<Handles>>>,
    /// Set while a reopen waits for the holds to drain or opens sled.
    closing: AtomicBool,
    /// Guards the waits below (the flag itself is read without it).
    waits: Mutex<()>,
    /// First holds wait here for a reopen to end.
    reopened: Condvar,
    /// A reopen waits here for the last hold to go.
    released: Condvar,
    /// How many times sled was opened again since the store was opened.
    reopens: AtomicU64,
    /// The longest of those reopens, from asking the gate to close to
    /// opening it again, in microseconds: how long the store stalled.
    longest_us: AtomicU64,
}

/// Sled's handles, held: while any `Held` lives, sled is not closed. Not
/// `Send`: the count of holds is kept per thread.
pub(super) struct Held<'g> {
    handles: Arc<Handles>,
    gate: &'g Gate,
    _per_thread: PhantomData<*const ()>,
}

impl Deref for Held<'_> {
    type Target = Handles;

    fn deref(&self) -> &Handles {
        &self.handles
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        HELD.with(|h| h.set(h.get().saturating_sub(1)));
        if self.gate.closing.load(Ordering::Acquire) {
            let _w = self.gate.waits();
            self.gate.released.notify_all();
        }
    }
}

impl Gate {
    /// Open sled in `dir`.
    pub(super) fn open(dir: &Path) -> Result<Gate, sled::Error> {
        Ok(Gate {
            dir: dir.to_path_buf(),
            slot: RwLock::new(Some(Arc::new(Handles::open(dir)?))),
            closing: AtomicBool::new(false),
            waits: Mutex::new(()),
            reopened: Condvar::new(),
            released: Condvar::new(),
            reopens: AtomicU64::new(0),
            longest_us: AtomicU64::new(0),
        })
    }

    fn waits(&self) -> std::sync::MutexGuard<'_, ()> {
        self.waits.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// sled's handles; waits while a reopen is under way, unless this thread
    /// already holds them.
    pub(super) fn hold(&self) -> Result<Held<'_>, StoreError> {
        if self.closing.load(Ordering::Acquire) && HELD.with(Cell::get) == 0 {
            let mut w = self.waits();
            while self.closing.load(Ordering::Acquire) {
                w = self.reopened.wait(w).unwrap_or_else(|e| e.into_inner());
            }
        }
        self.hold_now()
    }

    /// sled's handles, without waiting for a reopen to be asked for: for the
    /// log's applier, which readers holding handles may be waiting for.
    pub(super) fn hold_now(&self) -> Result<Held<'_>, StoreError> {
        let slot = self.slot.read().unwrap_or_else(|e| e.into_inner());
        let Some(handles) = slot.as_ref() else {
            return Err(StoreError::unavailable(std::io::Error::other(
                "sled could not be opened again; see the log",
            )));
        };
        HELD.with(|h| h.set(h.get() + 1));
        Ok(Held {
            handles: handles.clone(),
            gate: self,
            _per_thread: PhantomData,
        })
    }

    /// How many times sled was opened again since the store was opened,
    /// and the longest of those reopens.
    pub(super) fn reopens(&self) -> (u64, Duration) {
        (
            self.reopens.load(Ordering::Relaxed),
            Duration::from_micros(self.longest_us.load(Ordering::Relaxed)),
        )
    }

    /// Close sled and open it again, which writes a snapshot of its page
    /// table. `Ok(false)`: the holds did not drain in time and nothing
    /// changed. The caller must not hold the handles (it would wait for
    /// itself until the time runs out).
    pub(super) fn reopen(&self) -> Result<bool, StoreError> {
        let started = Instant::now();
        {
            let _w = self.waits();
            self.closing.store(true, Ordering::Release);
        }
        let res = self.close_and_open();
        if let Ok(true) = res {
            let took = started.elapsed().as_micros() as u64;
            self.longest_us.fetch_max(took, Ordering::Relaxed);
        }
        {
            let _w = self.waits();
            self.closing.store(false, Ordering::Release);
            self.reopened.notify_all();
        }
        res
    }

    fn close_and_open(&self) -> Result<bool, StoreError> {
        let deadline = Instant::now() + DRAIN_WAIT;
        loop {
            {
                // Holds are taken under the read lock, so under the write
                // lock the count cannot grow.
                let mut slot = self.slot.write().unwrap_or_else(|e| e.into_inner());
                if slot.as_ref().is_none_or(|h| Arc::strong_count(h) == 1) {
                    // A failed flush keeps the old handles: nothing is lost
                    // (the store's log holds every change) and the store
                    // goes on as it was.
                    if let Some(old) = slot.as_ref() {
                        old.db.flush()?;
                    }
                    drop(slot.take());
                    let fresh = self.open_again()?;
                    *slot = Some(Arc::new(fresh));
                    self.reopens.fetch_add(1, Ordering::Relaxed);
                    return Ok(true);
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            let w = self.waits();
            // Woken by the drop of a hold; the timeout covers a hold dropped
            // between the count and this wait.
            let _ = self
                .released
                .wait_timeout(w, (deadline - now).min(Duration::from_millis(1)))
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Open sled in the same directory, retrying while its lock is still
    /// held by the handles just dropped.
    fn open_again(&self) -> Result<Handles, StoreError> {
        let deadline = Instant::now() + OPEN_WAIT;
        loop {
            match Handles::open(&self.dir) {
                Ok(h) => return Ok(h),
                Err(e) if Instant::now() < deadline && e.to_string().contains("lock") => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => {
                    tracing::error!(error = %e, "sled could not be opened again");
                    return Err(e.into());
                }
            }
        }
    }
}

/// The thread that reopens sled when the store asks (after every
/// [`REOPEN_AFTER`] checkpoints), so that no caller waits for it and the
/// one that asks need not let go of its handles.
pub(super) struct Reopener {
    shared: Arc<ReopenShared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct ReopenShared {
    gate: Arc<Gate>,
    /// (asked for, stop)
    state: Mutex<(bool, bool)>,
    cv: Condvar,
}

impl Reopener {
    pub(super) fn start(gate: Arc<Gate>) -> std::io::Result<Reopener> {
        let shared = Arc::new(ReopenShared {
            gate,
            state: Mutex::new((false, false)),
            cv: Condvar::new(),
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("tgdl-sled-reopen".into())
                .spawn(move || shared.run())?
        };
        Ok(Reopener {
            shared,
            thread: Some(thread),
        })
    }

    /// Ask for a reopen; it happens on the reopener's thread.
    pub(super) fn ask(&self) {
        let mut s = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        s.0 = true;
        self.shared.cv.notify_one();
    }
}

impl ReopenShared {
    fn run(&self) {
        let mut failed = false;
        loop {
            {
                let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
                while !s.0 && !s.1 {
                    if failed {
                        // The store cannot checkpoint (and so ask) without
                        // sled: try again on our own.
                        let (next, _) = self
                            .cv
                            .wait_timeout(s, Duration::from_secs(1))
                            .unwrap_or_else(|e| e.into_inner());
                        s = next;
                        s.0 |= !s.1;
                    } else {
                        s = self.cv.wait(s).unwrap_or_else(|e| e.into_inner());
                    }
                }
                if s.1 {
                    return;
                }
                s.0 = false;
            }
            let started = Instant::now();
            failed = false;
            match self.gate.reopen() {
                Ok(true) => tracing::info!(
                    ms = started.elapsed().as_millis() as u64,
                    "sled opened again, so that a crash replays only what follows"
                ),
                // Asked again at the next checkpoint.
                Ok(false) => tracing::debug!("sled reopen put off: the store was busy"),
                Err(e) => {
                    failed = true;
                    tracing::error!(error = %e, "sled reopen failed; trying again in a second");
                }
            }
        }
    }
}

impl Drop for Reopener {
    fn drop(&mut self) {
        {
            let mut s = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
            s.1 = true;
            self.shared.cv.notify_one();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    //! Reopening sled while the store runs: nothing acknowledged is lost, a
    //! new page table snapshot is written, a thread that holds sled is
    //! never made to wait for itself, and a reopen that cannot drain the
    //! holds gives up and leaves the store working.

    use std::path::Path;
    use std::sync::atomic::Ordering;
    use std::sync::mpsc;
    use std::sync::Arc;

    use uuid::Uuid;

    use super::super::testing::{crash_image, enqueue, finish, reopen};
    use super::super::SledStore;
    use crate::job::Job;
    use crate::store::JobStore;

    /// sled's page table snapshots in `dir` (`snap.<lsn>`).
    fn snapshots(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("snap."))
            .collect();
        v.sort();
        v
    }

    fn assert_whole(store: &SledStore) {
        let report = store.check_invariants().unwrap();
        assert!(report.problems.is_empty(), "{:#?}", report.problems);
        assert_eq!(report.counters, report.recount);
    }

    /// A kill while sled writes its snapshot (it does at every open, and
    /// the store opens sled again while it runs) leaves a half-written
    /// `snap.<lsn>.generating`, which sled 0.34.7 would read as the newest
    /// snapshot and refuse the database for.
    #[test]
    fn a_snapshot_cut_short_by_a_kill_does_not_stop_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let jobs: Vec<Job> = (0..20u32).map(|n| enqueue(&store, 1, n)).collect();
        drop(store);
        // Named after a newer point of sled's log than any snapshot there,
        // as the one an open was writing would be; cut short.
        let cut = dir.path().join("snap.7FFFFFFFFFFFFFFF.generating");
        std::fs::write(&cut, b"half of a snapshot, no checksum").unwrap();
        assert!(snapshots(dir.path())
            .last()
            .unwrap()
            .ends_with(".generating"));

        let store = reopen(dir.path());
        assert!(!cut.exists(), "the unfinished snapshot is gone");
        assert_whole(&store);
        for job in &jobs {
            assert_eq!(store.get(job.id).unwrap().map(|j| j.id), Some(job.id));
        }
    }

    #[test]
    fn a_reopen_writes_a_snapshot_and_keeps_every_change() {
        let dir = tempfile::tempdir().unwrap();
        let (live, image) = (dir.path().join("live"), dir.path().join("image"));
        let store = SledStore::open(&live).unwrap();
        let first: Vec<Job> = (0..200u32)
            .map(|n| enqueue(&store, u64::from(n % 7) + 1, n))
            .collect();
        store.settle().unwrap();
        // Durable in the log, not yet in sled, across the reopen.
        store.wal.pause_applier(true);
        let held_back: Vec<Job> = (0..50).map(|n| enqueue(&store, 9, n)).collect();
        let before = snapshots(&live);
        assert!(store.reopen_sled().unwrap(), "an idle store reopens");
        assert_eq!(store.sled_reopens(), 1);
        assert!(store.longest_sled_reopen() > std::time::Duration::ZERO);
        let after = snapshots(&live);
        assert_ne!(before, after, "the reopen wrote no new snapshot");
        store.wal.pause_applier(false);
        store.settle().unwrap();
        assert_whole(&store);
        assert_eq!(store.counts().unwrap().queued, 250);

        // What `kill -9` would leave now opens whole.
        crash_image(&live, &image);
        let crashed = SledStore::open(&image).unwrap();
        for job in first.iter().chain(&held_back) {
            assert_eq!(crashed.get(job.id).unwrap().map(|j| j.id), Some(job.id));
        }
        assert_whole(&crashed);
    }

    #[test]
    fn sled_is_opened_again_by_its_own_thread_after_reopen_after_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let job = enqueue(&store, 1, 1);
        let checkpoint = || {
            let commit = store.commit.lock().unwrap();
            store.checkpoint_locked(*commit).unwrap();
        };
        // The open checkpointed once (so that the log starts empty).
        for _ in 1..super::REOPEN_AFTER - 1 {
            checkpoint();
        }
        assert_eq!(store.sled_reopens(), 0, "reopened too early");
        checkpoint();
        // The reopener's thread does it; wait for it, a while at most.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while store.sled_reopens() == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "sled was not reopened"
            );
            std::thread::yield_now();
        }
        assert_eq!(store.get(job.id).unwrap().map(|j| j.id), Some(job.id));
        assert_whole(&store);
    }

    #[test]
    fn reopens_under_four_busy_workers_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(dir.path()).unwrap());
        const PER_WORKER: u32 = 100;
        // A job's life per tick; a reopen every 20 ticks, until the workers
        // are done (every sender dropped).
        let (tick, ticks) = mpsc::channel::<()>();
        let reopener = {
            let store = store.clone();
            std::thread::spawn(move || {
                let (mut done, mut put_off) = (0u32, 0u32);
                while ticks.iter().take(20).count() == 20 {
                    match store.reopen_sled().unwrap() {
                        true => done += 1,
                        false => put_off += 1,
                    }
                }
                (done, put_off)
            })
        };
        let workers: Vec<_> = (0..4u64)
            .map(|w| {
                let (store, tick) = (store.clone(), tick.clone());
                std::thread::spawn(move || {
                    let owner = Uuid::new_v4();
                    for n in 0..PER_WORKER {
                        enqueue(&store, w * 10 + u64::from(n % 5), n);
                        // This worker's job is queued and due until some
                        // claim takes it: a claim must find one.
                        let job = store
                            .claim(owner, 60_000, 2_000)
                            .unwrap()
                            .expect("a due job is queued");
                        finish(&store, job.id, owner, &|_| {});
                        tick.send(()).unwrap();
                    }
                })
            })
            .collect();
        drop(tick);
        for w in workers {
            w.join().unwrap();
        }
        let (done, put_off) = reopener.join().unwrap();
        assert!(done > 0, "no reopen happened ({put_off} put off)");
        assert_eq!(store.sled_reopens(), u64::from(done));
        assert_eq!(store.counts().unwrap().done, 4 * u64::from(PER_WORKER));
        assert_whole(&store);
    }

    #[test]
    fn a_thread_holding_sled_is_not_made_to_wait_and_the_reopen_waits_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let job = enqueue(&store, 1, 1);
        let (held_tx, held_rx) = mpsc::channel();
        std::thread::scope(|s| {
            let holder = s.spawn(|| {
                let h = store.h().unwrap();
                held_tx.send(()).unwrap();
                // Wait for the reopen to ask the gate to close.
                while !store.gate.closing.load(Ordering::Acquire) {
                    std::thread::yield_now();
                }
                // A read that takes sled again from this thread goes on.
                let read = store.get(job.id).unwrap().map(|j| j.id);
                let reopens_then = store.sled_reopens();
                drop(h);
                (read, reopens_then)
            });
            held_rx.recv().unwrap();
            let reopened = store.reopen_sled().unwrap();
            let (read, reopens_then) = holder.join().unwrap();
            assert_eq!(read, Some(job.id));
            assert_eq!(reopens_then, 0, "the read ran before the reopen");
            assert!(reopened, "the reopen went ahead once the hold was dropped");
        });
        assert_eq!(store.sled_reopens(), 1);
        assert_eq!(store.get(job.id).unwrap().map(|j| j.id), Some(job.id));
    }

    #[test]
    fn a_reopen_that_cannot_drain_gives_up_and_the_store_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let (held_tx, held_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        std::thread::scope(|s| {
            let store = &store;
            s.spawn(move || {
                let _h = store.h().unwrap();
                held_tx.send(()).unwrap();
                release_rx.recv().unwrap();
            });
            held_rx.recv().unwrap();
            assert!(!store.reopen_sled().unwrap(), "reopened under a hold");
            assert_eq!(store.sled_reopens(), 0);
            // The gate is open again: new work goes through.
            let job = enqueue(store, 1, 1);
            assert_eq!(store.get(job.id).unwrap().map(|j| j.id), Some(job.id));
            release_tx.send(()).unwrap();
        });
        assert!(store.reopen_sled().unwrap());
        assert_whole(&store);
    }
}
