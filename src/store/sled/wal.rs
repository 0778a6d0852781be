//! The store's own redo log: what makes a job change durable on sled.
//!
//! sled makes a change durable only by flushing its whole log
//! (`sync_file_range`) and then, for power loss, an `fdatasync` of its data
//! file; and every sled transaction or batch writes out sled's buffers
//! twice (with `sync_file_range`). Instead, each job change queues one record
//! of its writes (tree, key, value or removal) here. The first committer
//! to wait while no batch is being written takes whatever is queued, makes it
//! durable with one `fdatasync` (group commit) and wakes the others; one
//! whose change came too late for that batch leads the next, after waiting
//! briefly for the last batch's committers to bring their next changes
//! ([`LINGER`]) when there were others in it. A committer
//! that finds a batch being synced polls briefly for its end ([`SPIN`])
//! before it sleeps, since a batch's sync is short against a sleep and
//! wake-up on a small machine. A syncer thread
//! does the same for changes nobody waits for. An applier thread then
//! applies the writes to sled as plain inserts and removals, each key once
//! for all the durable changes it takes at a time. It lets them gather
//! until a quarter of the log is durable ([`APPLY_AFTER`]), a reader needs
//! sled to have them, or a checkpoint comes: a job whose whole life falls
//! between two applies is written into sled once, as it ends, and sled
//! 0.34 keeps every page version it writes until its segment is cleaned.
//! Only the writes to the queue's trees (`ready`, `turns`), which every
//! claim walks merged with the overlay, go into sled as soon as they are
//! durable, so that the merge stays short.
//! sled writes its own files when its buffers fill, and at a checkpoint.
//! Until sled has a queued change, later changes and point reads of jobs see
//! it in the overlay, the claim's walk merges it into sled's keys
//! ([`Wal::keys`]), and any other reader that walks sled's trees first waits
//! for sled to have every change acknowledged before it ([`Wal::applied_to`]).
//!
//! **Ordering.** Every change carries a sequence number, assigned under the
//! commit lock and written into sled (`meta`, [`keys::META_WAL_SEQ`]) as the
//! change's last write. sled is written only after the record is durable,
//! and after a crash sled holds a prefix of what it was given: every change
//! up to that key's number, and perhaps some writes of later ones (those
//! of a batch cut short, and the queue's trees, which are written ahead).
//! Replay applies, in order, every record after that number, each write of
//! it, so it completes a change sled holds part of and ends with every key
//! as the last durable record left it.
//!
//! **The file.** A fixed-size file, zero-filled when made, so that a commit is
//! an overwrite and its `fdatasync` writes no metadata. Records run from
//! offset 0: `[len u32][crc32 u32][seq u64][writes]`. A reader stops at the
//! first record that is short, fails its checksum, or does not continue the
//! sequence; what lies behind it is an older pass over the file. When a
//! record does not fit, a checkpoint (sled flush + `fdatasync` of sled's data
//! file, under the commit lock) makes everything in the file redundant and
//! writing starts again at offset 0.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use sled::{IVec, Tree};

use super::handles::{Gate, Held};
use super::keys;
use super::tx::Durable;
use super::{META_TREE, READY_TREE, TURNS_TREE};
use crate::store::StoreError;

/// Size of the log file. Large enough that a checkpoint (a few ms to tens of
/// ms) comes every few thousand job changes, small enough that replaying a
/// full file at start takes well under a second.
pub(super) const WAL_BYTES: u64 = 8 * 1024 * 1024;

/// A record larger than this is not logged: its transaction is made durable
/// by a checkpoint instead (an import batch can be this large).
pub(super) const MAX_RECORD: usize = (WAL_BYTES / 4) as usize;

const HEADER: usize = 4 + 4 + 8;

/// How many bytes of durable records the applier lets gather before it puts
/// them into sled, unless a reader or a checkpoint needs them sooner. Each
/// key is written into sled once per batch however many changes wrote it,
/// and sled 0.34 leaves every written page version on disk until its
/// segment is cleaned: a job that goes from the queue to done inside one
/// batch is written once, not once per state, and its queue entries never
/// reach sled. A quarter of the log: the overlay and the queued writes
/// (what this bounds) stay a few MiB.
pub(super) const APPLY_AFTER: usize = (WAL_BYTES / 4) as usize;

/// One write of a transaction, as recorded and replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Write {
    /// Index into [`super::SledStore::job_trees`].
    pub tree: u8,
    pub key: Vec<u8>,
    /// `None`: the key was removed.
    pub value: Option<Vec<u8>>,
}

/// A record read back from the file.
#[derive(Debug)]
pub(super) struct Record {
    pub seq: u64,
    pub writes: Vec<Write>,
}

/// Encode the body of a record (everything after `len` and `crc`).
pub(super) fn encode_writes(seq: u64, writes: &[Write], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; 8]);
    out.extend_from_slice(&seq.to_le_bytes());
    for w in writes {
        out.push(w.tree);
        out.push(w.value.is_some() as u8);
        out.extend_from_slice(&(w.key.len() as u32).to_le_bytes());
        out.extend_from_slice(&w.key);
        if let Some(v) = &w.value {
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
            out.extend_from_slice(v);
        }
    }
    let body = &out[start + 8..];
    let len = body.len() as u32;
    let crc = crc32fast::hash(body);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if b.len() < n {
        return None;
    }
    let (head, rest) = b.split_at(n);
    *b = rest;
    Some(head)
}

fn take_u32(b: &mut &[u8]) -> Option<u32> {
    take(b, 4).map(|s| u32::from_le_bytes(s.try_into().unwrap_or_default()))
}

fn decode_body(mut b: &[u8]) -> Option<Record> {
    let seq = u64::from_le_bytes(take(&mut b, 8)?.try_into().ok()?);
    let mut writes = Vec::new();
    while !b.is_empty() {
        let head = take(&mut b, 2)?;
        let (tree, op) = (head[0], head[1]);
        let klen = take_u32(&mut b)? as usize;
        let key = take(&mut b, klen)?.to_vec();
        let value = match op {
            0 => None,
            1 => {
                let vlen = take_u32(&mut b)? as usize;
                Some(take(&mut b, vlen)?.to_vec())
            }
            _ => return None,
        };
        writes.push(Write { tree, key, value });
    }
    Some(Record { seq, writes })
}

/// Why reading the log stopped before the end of the file: the normal end
/// of what was written in this pass, or a record that is damaged.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum LogEnd {
    /// Zeroes, or a record of an older pass (its number does not follow).
    Clean,
    /// A record whose length or checksum is wrong: a torn last write, or a
    /// damaged file.
    Damaged { offset: u64 },
}

/// Read every record of the current pass, in order.
pub(super) fn read_all(bytes: &[u8]) -> (Vec<Record>, LogEnd) {
    let mut out: Vec<Record> = Vec::new();
    let mut at = 0usize;
    loop {
        let Some(head) = bytes.get(at..at + 8) else {
            return (out, LogEnd::Clean);
        };
        let len = u32::from_le_bytes(head[..4].try_into().unwrap_or_default()) as usize;
        let crc = u32::from_le_bytes(head[4..8].try_into().unwrap_or_default());
        if len == 0 && crc == 0 {
            return (out, LogEnd::Clean);
        }
        let damaged = LogEnd::Damaged { offset: at as u64 };
        let Some(body) = bytes.get(at + 8..at + 8 + len).filter(|_| len >= 8) else {
            return (out, damaged);
        };
        let seq = u64::from_le_bytes(body[..8].try_into().unwrap_or_default());
        if let Some(prev) = out.last() {
            // A valid record that does not continue the sequence is from an
            // older pass over the file: the end of this one.
            if seq != prev.seq + 1 && crc32fast::hash(body) == crc {
                return (out, LogEnd::Clean);
            }
        }
        if crc32fast::hash(body) != crc {
            return (out, damaged);
        }
        match decode_body(body) {
            Some(r) => out.push(r),
            None => return (out, damaged),
        }
        at += 8 + len;
    }
}

/// Records queued but not yet written, where they go, and what is durable.
struct State {
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    offset: u64,
    /// Sequence number of the last record in `buf`.
    last_seq: u64,
    /// The writes of each queued change, in order: sled gets them once their
    /// records are durable, never before, so sled never holds part of a
    /// change the log could lose.
    changes: Vec<(u64, Vec<Write>)>,
    /// Changes durable in the file that the applier has not taken yet, in
    /// order (every one before those in `changes`), without their writes to
    /// the queue's trees: the applier lets these gather ([`APPLY_AFTER`]).
    durable_changes: Vec<(u64, Vec<Write>)>,
    /// The writes to the queue's trees (`ready`, `turns`) of durable
    /// changes, in order: the applier puts them into sled at once. Every
    /// claim walks those trees merged with the overlay, so their part of the
    /// overlay is kept short; the rest of a change is read by key.
    queue_changes: Vec<(u64, Vec<Write>)>,
    /// Highest sequence number durable (in this file, or in sled after a
    /// checkpoint): what a committer waits for.
    durable: u64,
    /// Highest sequence number applied to sled: what a reader of sled's
    /// indexes waits for ([`Wal::applied_to`]). At most `durable`.
    applied: u64,
    /// What has been made durable so far: how many batches (one
    /// `fdatasync` each) and changes in them. Their ratio is the group
    /// commit's batch size, which the store bench prints beside SQLite's.
    synced: LogSyncs,
    /// A batch taken from `buf` is being written and synced, by a waiting
    /// committer or the syncer. One at a time: `durable` then only ever
    /// covers a prefix of the sequence.
    writing: bool,
    /// How many changes the next batch may expect soon: the last batch's,
    /// whose committers may come back with their next change, and those
    /// queued when it ended. A leader waits for them, briefly ([`LINGER`]).
    expect: usize,
    /// A committer is waiting for more changes before it writes the next
    /// batch: others leave the batch to it.
    lingering: bool,
    /// `buf` holds a change whose committer does not wait for it (a lazy
    /// update): the syncer thread writes it, since no committer will.
    unled: bool,
    /// The applier is applying a batch taken from `durable_changes`.
    applying: bool,
    /// Bytes of log records in `durable_changes`: the applier takes them
    /// once this reaches [`APPLY_AFTER`].
    unapplied_bytes: usize,
    /// A drain waits for the batch being written to end: the writer wakes
    /// it, since no applier's news will (the applier may have nothing to do).
    draining: bool,
    /// The highest sequence number a reader waits to see in sled
    /// ([`Wal::applied_to`]): the applier takes what is durable at once
    /// while this is ahead of `applied`.
    wanted: u64,
    /// Why the last write or sync of the file failed; cleared by a
    /// checkpoint ([`Wal::restart`]). Until then nothing more is durable in
    /// the file: a batch missing from it would end the log early.
    failed: Option<String>,
    /// Set at drop: the syncer writes what is queued and ends.
    stop: bool,
    /// Set at drop once the syncer ended: the applier applies what is
    /// durable and ends.
    stop_applying: bool,
    /// The applier leaves durable changes alone (`Wal::pause_applier`,
    /// test-only): the moment between a change's sync and sled having it,
    /// held still for a test. Never set outside tests.
    paused: bool,
}

impl State {
    /// How many queued changes a leader waits for ([`LINGER`]): those
    /// expected, but no more than [`LINGER_BATCH`].
    fn linger_for(&self) -> usize {
        self.expect.min(LINGER_BATCH)
    }

    /// The applier should take `durable_changes` now: a quarter of the log
    /// has gathered, or a reader waits for sled to have a change.
    fn apply_now(&self) -> bool {
        self.unapplied_bytes >= APPLY_AFTER || self.wanted > self.applied
    }

    /// Some durable change has writes outside the queue's trees that sled
    /// has not got (each change has at least its sequence number there).
    fn has_rest(&self) -> bool {
        !self.durable_changes.is_empty()
    }

    /// Every change sled may not have got, in the log's order, taken out of
    /// the lists that hold them: `taken`, those already taken by an applier
    /// whose apply failed, then the queue's writes and the gathered changes
    /// (merged by sequence number: a key's last write must win), then the
    /// changes not yet durable, which come after all of them.
    fn take_unapplied(&mut self, mut taken: Vec<(u64, Vec<Write>)>) -> Vec<(u64, Vec<Write>)> {
        taken.append(&mut self.queue_changes);
        taken.append(&mut self.durable_changes);
        taken.sort_by_key(|c| c.0);
        taken.append(&mut self.changes);
        self.unapplied_bytes = 0;
        taken
    }
}

/// A tree of the queue, whose writes the applier puts into sled at once.
fn is_queue(tree: u8) -> bool {
    tree == READY_TREE || tree == TURNS_TREE
}

/// How long a committer waiting for its change to be durable polls for the
/// batch being synced to end before it sleeps on [`Shared::synced`], once
/// per batch. A sleep costs a futex wake-up and the scheduler's latency on
/// the way back, tens of µs on a small VM against a `fdatasync` of about
/// 80-150 µs, and a woken committer then queues for a CPU behind the
/// others that were woken with it. The window covers a whole sync on such
/// a disk (their p99 was 115-157 µs on the bench machine), so a committer
/// that arrives while one runs sees it end without having slept, and
/// returns (or writes the next batch) at once. It yields the CPU between
/// polls, so a busy machine runs other threads meanwhile; on a slower disk
/// the committer sleeps once the window has passed, so a sync of
/// milliseconds costs it at most this much polling. What it gained in the
/// store and e2e benches, and what the polling costs in CPU, is in
/// `benches/README.md` (30 µs before: a committer that came early in a
/// sync slept).
const SPIN: std::time::Duration = std::time::Duration::from_micros(250);

/// How long a committer about to write a batch waits, at most, for the
/// changes the last batch's committers are expected to bring back
/// ([`State::expect`]), as PostgreSQL's `commit_delay` does when enough
/// others are at work. Without it, busy committers split into two halves
/// that take turns: one half's changes are synced while the other's queue,
/// and the half that wakes finds the next batch already on its way, about
/// 2.4 changes per sync with 4 committers. Waiting for them costs the
/// batch the time they take to come back (tens of µs), and saves each of
/// them a whole sync (about 110 µs) of waiting. A committer whose last
/// batch was its alone (one worker; the bot between downloads) never
/// waits. What it gained in the store and e2e benches is in
/// `benches/README.md`.
const LINGER: std::time::Duration = std::time::Duration::from_micros(60);

/// A leader waits ([`LINGER`]) only while its batch holds fewer changes
/// than this. A batch this large already shares its sync four ways, and
/// one that is larger comes from more committers than the CPUs run at
/// once: the wait (a thread polling) would take CPU from the committers
/// it waits for, and the disk would stand idle meanwhile. With 16
/// committers, waiting for every expected change cost about 5% in the
/// store bench.
const LINGER_BATCH: usize = 4;

/// How many batches the log made durable, one `fdatasync` each,
/// and how many changes they held, since the store was opened. Changes a
/// checkpoint made durable instead (the record did not fit, or the log could
/// not be written) are not counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogSyncs {
    pub syncs: u64,
    pub changes: u64,
    /// Batches whose leader first waited for the last batch's committers
    /// to come back ([`LINGER`]).
    pub lingered: u64,
}

impl LogSyncs {
    /// Changes per `fdatasync`: the group commit's mean batch.
    pub fn per_sync(&self) -> f64 {
        self.changes as f64 / self.syncs.max(1) as f64
    }
}

/// The latest value of every key a queued change writes, by tree and key,
/// with the change's number, until sled holds it: what later changes (and
/// point reads of jobs) see before sled does. Ordered, so that a walk of a
/// tree can merge its entries into sled's in key order ([`Wal::keys`]).
type OverlayMap = BTreeMap<(u8, Vec<u8>), (u64, Option<IVec>)>;

struct Shared {
    /// How many batches have been written and synced (or failed) since the
    /// open: what a committer polling for a batch's end ([`SPIN`]) reads,
    /// without the lock.
    batches_ended: AtomicU64,
    /// Twice the number of changes so far that moved the queue (wrote
    /// `ready` or `turns`), plus one while such a change is being written
    /// into sled directly ([`Wal::write_directly`]). A logged change adds 2
    /// while it holds the overlay's lock, so its writes are in the overlay
    /// the moment the count shows it, and before any batch can carry them
    /// into sled. See [`Wal::queue_moves`].
    queue_moves: AtomicU64,
    file: File,
    state: Mutex<State>,
    overlay: Mutex<OverlayMap>,
    /// sled's handles; a record's writes name trees by their number in
    /// [`super::handles::Handles::logged`].
    gate: Arc<Gate>,
    /// The syncer waits here for changes nobody waits for.
    work: Condvar,
    /// The applier waits here for durable changes.
    apply_work: Condvar,
    /// Committers wait here for their change to be durable. Notified when a
    /// batch has been synced (or failed).
    synced: Condvar,
    /// Readers wait here for sled to have a change, and a drain for the
    /// log to be idle. Notified when the applier has applied a batch, and on
    /// a failure. Two condition variables, not one: each wake-up is a
    /// context switch, and a committer has no use for the applier's news,
    /// nor a reader for the syncer's.
    applied_cv: Condvar,
}

/// The open log file and its two threads. Whoever waits for a change while
/// no batch is being written (or the syncer, for changes nobody waits for)
/// writes whatever records are queued, makes them durable with one fdatasync
/// (group commit) and wakes the others; the applier then puts their writes
/// into sled, while the next batch is synced.
pub(super) struct Wal {
    shared: Arc<Shared>,
    syncer: Option<std::thread::JoinHandle<()>>,
    applier: Option<std::thread::JoinHandle<()>>,
}

/// Apply one change's writes to sled, the sequence number last. Not a sled
/// transaction (each one makes sled write out its buffers): a crash in the
/// middle leaves sled a prefix of the writes, with the previous number, and
/// replay applies the whole change again.
pub(super) fn apply_change(trees: &[Tree], writes: &[Write]) -> Result<(), StoreError> {
    put_seq_last(
        trees,
        writes
            .iter()
            .map(|w| (w.tree, w.key.as_slice(), w.value.as_deref())),
    )
}

/// Write `(tree, key, value or removal)` into sled, in the order given but
/// the log's sequence number ([`keys::META_WAL_SEQ`]) last.
fn put_seq_last<'a>(
    trees: &[Tree],
    writes: impl Iterator<Item = (u8, &'a [u8], Option<&'a [u8]>)> + Clone,
) -> Result<(), StoreError> {
    let is_seq = |w: &(u8, &[u8], Option<&[u8]>)| w.0 == META_TREE && w.1 == keys::META_WAL_SEQ;
    for (t, key, value) in writes
        .clone()
        .filter(|w| !is_seq(w))
        .chain(writes.filter(is_seq))
    {
        let Some(tree) = trees.get(t as usize) else {
            continue;
        };
        match value {
            Some(v) => tree.insert(key, v)?,
            None => tree.remove(key)?,
        };
    }
    Ok(())
}

/// The last write of each key in a batch of changes, by tree and key: the
/// number of the change that wrote it, and the value (`None`: removed).
type LastWrites<'a> = BTreeMap<(u8, &'a [u8]), (u64, Option<&'a [u8]>)>;

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn overlay(&self) -> MutexGuard<'_, OverlayMap> {
        self.overlay.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Apply `changes` to sled as one set of writes, then drop their
    /// overlay entries (unless a later change wrote the key again).
    ///
    /// Each key gets only the value of the last change in `changes` that
    /// wrote it, and the sequence number (the last change's) goes in last:
    /// the counters, the sequence number, a user's record or a job moving
    /// through several states are written once per batch, not once per
    /// change. A crash in the middle leaves sled with the previous batch's
    /// number and some of this batch's final values; replay then applies
    /// every change of the batch again, in order, which rewrites each key
    /// the batch wrote and ends where the batch ends.
    fn apply(&self, changes: &[(u64, Vec<Write>)]) -> Result<(), StoreError> {
        let mut last: LastWrites = BTreeMap::new();
        for (seq, writes) in changes {
            for w in writes {
                last.insert((w.tree, &w.key), (*seq, w.value.as_deref()));
            }
        }
        // Not `hold`: readers that hold sled's handles may be waiting for
        // this very batch, and a reopen waits for them.
        put_seq_last(
            &self.gate.hold_now()?.logged,
            last.iter().map(|(&(t, key), &(_, value))| (t, key, value)),
        )?;
        let mut o = self.overlay();
        for (&(tree, key), &(seq, _)) in &last {
            let k = (tree, key.to_vec());
            if o.get(&k).is_some_and(|(s, _)| *s == seq) {
                o.remove(&k);
            }
        }
        Ok(())
    }

    /// Take what is queued, write it and make it durable with one
    /// `fdatasync`, outside the lock, then hand it to the applier and wake
    /// whoever waits. The caller checked that no batch is being written and
    /// that `buf` holds one.
    fn write_batch<'a>(&'a self, mut s: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        let buf = std::mem::take(&mut s.buf);
        let mut changes = std::mem::take(&mut s.changes);
        let (offset, last) = (s.offset, s.last_seq);
        s.offset += buf.len() as u64;
        s.writing = true;
        s.unled = false;
        s.lingering = false;
        drop(s);
        let res = self
            .file
            .write_all_at(&buf, offset)
            .and_then(|()| self.file.sync_data());
        let mut s = self.lock();
        s.writing = false;
        self.batches_ended.fetch_add(1, Ordering::Release);
        match res {
            // The committers go on as soon as their changes are durable;
            // sled gets them meanwhile, and later changes (and point reads)
            // see them in the overlay until it has.
            Ok(()) => {
                s.expect = changes.len() + s.changes.len();
                s.durable = s.durable.max(last);
                s.synced.syncs += 1;
                s.synced.changes += changes.len() as u64;
                for (seq, writes) in changes {
                    let (queue, rest): (Vec<Write>, Vec<Write>) =
                        writes.into_iter().partition(|w| is_queue(w.tree));
                    if !queue.is_empty() {
                        s.queue_changes.push((seq, queue));
                    }
                    s.durable_changes.push((seq, rest));
                }
                s.unapplied_bytes += buf.len();
                if s.apply_now() || !s.queue_changes.is_empty() {
                    self.apply_work.notify_one();
                }
            }
            Err(e) => {
                // Kept for the checkpoint that recovers (see `drain`).
                changes.append(&mut s.changes);
                s.changes = changes;
                s.failed = Some(e.to_string());
                self.applied_cv.notify_all();
            }
        }
        self.synced.notify_all();
        if s.draining {
            self.applied_cv.notify_all();
        }
        if s.unled || s.stop {
            self.work.notify_one();
        }
        s
    }

    /// Wait on `cv` until `reached`, writing the next batch whenever none is
    /// being written: a waiter that finds records queued and the file idle
    /// syncs them itself rather than waking a thread to do it and waiting to
    /// be woken back.
    fn lead_until<'a>(
        &'a self,
        mut s: MutexGuard<'a, State>,
        cv: &Condvar,
        reached: impl Fn(&State) -> bool,
    ) -> MutexGuard<'a, State> {
        // Only a committer polls: readers and drains wait for the applier,
        // whose batches take as long as sled does.
        let committer = std::ptr::eq(cv, &self.synced);
        // The batch this waiter last polled for: at most once per batch.
        let mut polled = None;
        // Until when this waiter, about to write a batch, waits for more
        // changes ([`LINGER`]); `State::lingering` tells the others.
        let mut linger: Option<std::time::Instant> = None;
        loop {
            if linger.is_some() && !s.lingering {
                // Another thread took the batch: the syncer, for a change
                // nobody waits for.
                linger = None;
            }
            if reached(&s) {
                if linger.is_some() {
                    // Others left the batch to this waiter, and sleep.
                    s.lingering = false;
                    self.synced.notify_all();
                }
                return s;
            }
            let may_lead = !s.writing && !s.buf.is_empty() && s.failed.is_none();
            if may_lead && (linger.is_some() || !s.lingering) {
                if committer && linger.is_none() && s.changes.len() < s.linger_for() {
                    s.lingering = true;
                    linger = Some(std::time::Instant::now() + LINGER);
                }
                if let Some(until) = linger {
                    if s.changes.len() < s.linger_for() && std::time::Instant::now() < until {
                        drop(s);
                        std::thread::yield_now();
                        s = self.lock();
                        continue;
                    }
                    linger = None;
                    s.synced.lingered += 1;
                }
                s = self.write_batch(s);
            } else if committer && s.writing && polled != Some(self.ended()) {
                // Read under the lock that ends a batch, so `ended` names
                // the batch being written now.
                let ended = self.ended();
                polled = Some(ended);
                drop(s);
                self.poll_batch_end(ended);
                s = self.lock();
            } else {
                s = cv.wait(s).unwrap_or_else(|e| e.into_inner());
            }
        }
    }

    /// How many batches have ended (see [`Shared::batches_ended`]).
    fn ended(&self) -> u64 {
        self.batches_ended.load(Ordering::Acquire)
    }

    /// Poll, for at most [`SPIN`], until the batch being written when
    /// `ended` batches had ended has ended too.
    fn poll_batch_end(&self, ended: u64) {
        let until = std::time::Instant::now() + SPIN;
        while self.ended() == ended && std::time::Instant::now() < until {
            std::thread::yield_now();
        }
    }

    /// The syncer thread: write the changes nobody waits for, until told to
    /// stop, and then whatever is still queued.
    fn run(&self) {
        let mut s = self.lock();
        loop {
            while (!s.unled || s.writing || s.failed.is_some()) && !s.stop {
                s = self.work.wait(s).unwrap_or_else(|e| e.into_inner());
            }
            if s.stop {
                drop(self.lead_until(s, &self.synced, |s| s.buf.is_empty() || s.failed.is_some()));
                return;
            }
            s = self.write_batch(s);
        }
    }

    /// The applier thread: put durable changes into sled, in order, until
    /// told to stop, and then whatever is still durable.
    fn run_applier(&self) {
        let mut s = self.lock();
        loop {
            let idle = |s: &State| {
                s.paused || (s.queue_changes.is_empty() && !(s.apply_now() && s.has_rest()))
            };
            while !s.stop_applying && idle(&s) {
                s = self.apply_work.wait(s).unwrap_or_else(|e| e.into_inner());
            }
            if s.stop_applying && s.queue_changes.is_empty() && !s.has_rest() {
                return;
            }
            let queue = std::mem::take(&mut s.queue_changes);
            let rest = if s.apply_now() || s.stop_applying {
                s.unapplied_bytes = 0;
                std::mem::take(&mut s.durable_changes)
            } else {
                Vec::new()
            };
            let last = rest.last().map(|c| c.0);
            s.applying = true;
            drop(s);
            // The queue's writes first: they may belong to changes newer
            // than any in `rest`, but they touch other trees, and a walk of
            // the queue merges the overlay anyway.
            let res = self.apply(&queue).and_then(|()| self.apply(&rest));
            s = self.lock();
            s.applying = false;
            match res {
                Ok(()) => s.applied = s.applied.max(last.unwrap_or(0)),
                Err(e) => {
                    // Kept, in order, for the checkpoint that recovers (see
                    // `drain`); applying a change twice gives the same
                    // result.
                    let mut taken = queue;
                    taken.extend(rest);
                    s.changes = s.take_unapplied(taken);
                    s.failed = Some(e.to_string());
                    self.synced.notify_all();
                }
            }
            self.applied_cv.notify_all();
        }
    }
}

/// Sled's keys of a tree merged with the overlay's, both in key order:
/// see [`Wal::keys`]. `queued` holds each key a queued change wrote, and
/// whether it wrote a value (`false`: removed it).
struct Merged<'g, S: Iterator<Item = sled::Result<IVec>>> {
    sled: std::iter::Peekable<S>,
    queued: std::iter::Peekable<std::vec::IntoIter<(Vec<u8>, bool)>>,
    /// sled's iterator keeps its tree open: sled is not reopened under it.
    _held: Held<'g>,
}

impl<S: Iterator<Item = sled::Result<IVec>>> Iterator for Merged<'_, S> {
    type Item = sled::Result<IVec>;

    fn next(&mut self) -> Option<Self::Item> {
        use std::cmp::Ordering;
        loop {
            let order = match (self.sled.peek(), self.queued.peek()) {
                (Some(Err(_)), _) => return self.sled.next(),
                (None, None) => return None,
                (Some(Ok(_)), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some(Ok(have)), Some((q, _))) => have.as_ref().cmp(q.as_slice()),
            };
            // A key in both: the queued change's word is the newer one.
            if order == Ordering::Equal {
                self.sled.next();
            }
            if order == Ordering::Less {
                return self.sled.next();
            }
            let (key, written) = self.queued.next()?;
            if written {
                return Some(Ok(IVec::from(key)));
            }
        }
    }
}

impl Wal {
    /// Open the log at `path`, making (and zero-filling) it if it does not
    /// exist, and return it with what it holds.
    pub(super) fn open(
        path: &Path,
        gate: Arc<Gate>,
    ) -> std::io::Result<(Wal, Vec<Record>, LogEnd)> {
        let fresh = !path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        if fresh || file.metadata()?.len() < WAL_BYTES {
            // Real zeroes, not a sparse or preallocated extent: overwriting
            // them later changes no metadata, so each commit's fdatasync
            // writes only the data.
            let chunk = vec![0u8; 1 << 20];
            let have = file.metadata()?.len();
            let mut at = have;
            while at < WAL_BYTES {
                let n = chunk.len().min((WAL_BYTES - at) as usize);
                file.write_all_at(&chunk[..n], at)?;
                at += n as u64;
            }
            file.sync_all()?;
            if let Some(dir) = path.parent() {
                File::open(dir)?.sync_all()?;
            }
        }
        let mut bytes = vec![0u8; WAL_BYTES as usize];
        file.read_exact_at(&mut bytes, 0)?;
        let (records, end) = read_all(&bytes);
        let shared = Arc::new(Shared {
            batches_ended: AtomicU64::new(0),
            queue_moves: AtomicU64::new(0),
            file,
            state: Mutex::new(State {
                buf: Vec::new(),
                offset: 0,
                last_seq: 0,
                changes: Vec::new(),
                durable_changes: Vec::new(),
                queue_changes: Vec::new(),
                durable: 0,
                applied: 0,
                synced: LogSyncs::default(),
                writing: false,
                expect: 0,
                lingering: false,
                unled: false,
                applying: false,
                unapplied_bytes: 0,
                wanted: 0,
                draining: false,
                failed: None,
                stop: false,
                stop_applying: false,
                paused: false,
            }),
            overlay: Mutex::new(BTreeMap::new()),
            gate,
            work: Condvar::new(),
            apply_work: Condvar::new(),
            synced: Condvar::new(),
            applied_cv: Condvar::new(),
        });
        let syncer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("tgdl-wal-sync".into())
                .spawn(move || shared.run())?
        };
        let applier = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("tgdl-wal-apply".into())
                .spawn(move || shared.run_applier())?
        };
        let wal = Wal {
            shared,
            syncer: Some(syncer),
            applier: Some(applier),
        };
        Ok((wal, records, end))
    }

    /// Queue change `seq`: its encoded record (from [`encode_writes`]) for
    /// the file, its writes for sled and, until sled has them, for the
    /// overlay. Gives the writes back if the record does not fit: the
    /// caller checkpoints instead. A committer that will wait for the change
    /// ([`Durable::Now`]) writes it then, or a waiter before it does; one that
    /// will not leaves it to the syncer thread.
    pub(super) fn append(
        &self,
        seq: u64,
        record: &[u8],
        writes: Vec<Write>,
        durable: Durable,
        moves_queue: bool,
    ) -> Result<(), Vec<Write>> {
        let mut s = self.shared.lock();
        let end = s.offset + s.buf.len() as u64 + record.len() as u64;
        if end + HEADER as u64 > WAL_BYTES {
            return Err(writes);
        }
        {
            let mut o = self.shared.overlay();
            for w in &writes {
                o.insert(
                    (w.tree, w.key.clone()),
                    (seq, w.value.clone().map(IVec::from)),
                );
            }
            if moves_queue {
                self.shared.queue_moves.fetch_add(2, Ordering::SeqCst);
            }
        }
        s.buf.extend_from_slice(record);
        s.last_seq = seq;
        s.changes.push((seq, writes));
        if durable == Durable::Later {
            s.unled = true;
            self.shared.work.notify_one();
        }
        Ok(())
    }

    /// Run `write`, which writes straight into sled, not through the log (a
    /// change too large for it, a repair). `moves_queue`: it writes `ready`
    /// or `turns`, and [`Wal::queue_moves`] is odd while it runs.
    pub(super) fn write_directly<T>(&self, moves_queue: bool, write: impl FnOnce() -> T) -> T {
        let step = u64::from(moves_queue);
        self.shared.queue_moves.fetch_add(step, Ordering::SeqCst);
        let written = write();
        self.shared.queue_moves.fetch_add(step, Ordering::SeqCst);
        written
    }

    /// A count that grows whenever a change moves the queue (writes `ready`
    /// or `turns`), and is odd while one is being written into sled
    /// directly. A walk of those trees that reads it before it starts and
    /// the same even number after it ends ran while nothing moved them, so
    /// it saw them whole: a walk is not a snapshot, and one that raced such
    /// a change could pass over a user the change moved (read the old place
    /// after the change, the new one before it).
    pub(super) fn queue_moves(&self) -> u64 {
        self.shared.queue_moves.load(Ordering::SeqCst)
    }

    /// What queued changes wrote to `key` of tree `tree`, if any: `Some(None)`
    /// for a removal.
    pub(super) fn pending(&self, tree: u8, key: &[u8]) -> Option<Option<IVec>> {
        let o = self.shared.overlay();
        o.get(&(tree, key.to_vec())).map(|(_, v)| v.clone())
    }

    /// The keys of tree number `tree` ([`Wal::trees`]) that start with
    /// `prefix`, in order, as they are with every queued change applied: sled's,
    /// without those a queued change removed, merged with those a queued
    /// change wrote. A walk through it never waits for sled to catch up.
    ///
    /// The overlay's entries are copied before sled's iterator starts. The
    /// applier writes a change into sled before it drops the change's
    /// entries from the overlay, so a change is in the copy, or in sled
    /// before the walk began, or it was queued after the copy (and then
    /// the walk may or may not see it, as with any change racing a read).
    pub(super) fn keys(
        &self,
        tree: u8,
        prefix: &[u8],
    ) -> Result<impl Iterator<Item = sled::Result<IVec>> + '_, StoreError> {
        let held = self.shared.gate.hold()?;
        let queued: Vec<(Vec<u8>, bool)> = {
            let o = self.shared.overlay();
            o.range((tree, prefix.to_vec())..)
                .take_while(|((t, k), _)| *t == tree && k.starts_with(prefix))
                .map(|((_, k), (_, v))| (k.clone(), v.is_some()))
                .collect()
        };
        let sled = held.logged[tree as usize]
            .scan_prefix(prefix)
            .keys()
            .peekable();
        Ok(Merged {
            sled,
            queued: queued.into_iter().peekable(),
            _held: held,
        })
    }

    /// Make the overlay say that a queued change wrote `value` to `key` of
    /// tree `tree` (`None`: removed it), one that sled never gets: the
    /// moment between a change's commit and sled having it, held still for
    /// a test.
    #[cfg(test)]
    pub(super) fn hold(&self, tree: u8, key: &[u8], value: Option<&[u8]>) {
        let mut o = self.shared.overlay();
        o.insert((tree, key.to_vec()), (u64::MAX, value.map(IVec::from)));
    }

    /// Every write the overlay holds, in key order: what the applier's next
    /// batch would write into sled.
    #[cfg(test)]
    pub(super) fn queued_writes(&self) -> Vec<Write> {
        let o = self.shared.overlay();
        o.iter()
            .map(|((tree, key), (_, value))| Write {
                tree: *tree,
                key: key.clone(),
                value: value.as_ref().map(|v| v.to_vec()),
            })
            .collect()
    }

    /// How many bytes of records have been written to the file since it
    /// last started over.
    #[cfg(test)]
    pub(super) fn written(&self) -> u64 {
        self.shared.lock().offset
    }

    /// Stop (or restart) applying durable changes to sled: committers go
    /// on as their changes become durable, and sled does not get them
    /// until the applier is let go (or the log is dropped).
    #[cfg(test)]
    pub(super) fn pause_applier(&self, paused: bool) {
        self.shared.lock().paused = paused;
        self.shared.apply_work.notify_one();
    }

    /// Make the next batch expect `n` changes ([`State::expect`]), as if
    /// the last one had held that many: a leader that finds fewer waits.
    #[cfg(test)]
    pub(super) fn expect_next(&self, n: usize) {
        self.shared.lock().expect = n;
    }

    /// Wait until change `seq` (and every earlier one) is durable.
    pub(super) fn sync_to(&self, seq: u64) -> Result<(), StoreError> {
        self.wait_until(&self.shared.synced, |s| s.durable >= seq)
    }

    /// What the log has made durable since it was opened.
    pub(super) fn syncs(&self) -> LogSyncs {
        self.shared.lock().synced
    }

    /// The highest sequence number durable now.
    pub(super) fn durable(&self) -> u64 {
        self.shared.lock().durable
    }

    /// Wait until change `seq` (and every earlier one) is in sled, so that
    /// a walk of sled's trees sees it.
    pub(super) fn applied_to(&self, seq: u64) -> Result<(), StoreError> {
        {
            let mut s = self.shared.lock();
            if s.wanted < seq {
                s.wanted = seq;
                self.shared.apply_work.notify_one();
            }
        }
        self.wait_until(&self.shared.applied_cv, |s| s.applied >= seq)
    }

    fn wait_until(&self, cv: &Condvar, reached: impl Fn(&State) -> bool) -> Result<(), StoreError> {
        let s = self.shared.lock();
        let s = self
            .shared
            .lead_until(s, cv, |s| reached(s) || s.failed.is_some());
        match &s.failed {
            Some(e) if !reached(&s) => {
                Err(StoreError::unavailable(std::io::Error::other(e.clone())))
            }
            _ => Ok(()),
        }
    }

    /// Put every queued change into sled, durable or not: the first half of
    /// a checkpoint, whose sled flush then makes them durable. The caller
    /// holds the commit lock, so nothing is queued meanwhile.
    pub(super) fn drain(&self) -> Result<(), StoreError> {
        let mut s = self.shared.lock();
        s.draining = true;
        let mut s = self.shared.lead_until(s, &self.shared.applied_cv, |s| {
            !s.writing && !s.applying && (s.buf.is_empty() || s.failed.is_some())
        });
        s.draining = false;
        let changes = s.take_unapplied(Vec::new());
        if let Err(e) = self.shared.apply(&changes) {
            // Kept for the checkpoint that recovers, as after a failed
            // batch: the log still holds them, sled may not.
            s.changes = changes;
            s.failed = Some(e.to_string());
            return Err(e);
        }
        if let Some(&(last, _)) = changes.last() {
            s.applied = s.applied.max(last);
        }
        self.shared.applied_cv.notify_all();
        Ok(())
    }

    /// After a checkpoint made every change up to `seq` durable in sled:
    /// forget what is queued and write from the start of the file again.
    /// The caller holds the commit lock and has drained the log.
    pub(super) fn restart(&self, seq: u64) {
        let mut s = self.shared.lock();
        s.buf.clear();
        s.changes.clear();
        s.durable_changes.clear();
        s.queue_changes.clear();
        s.unapplied_bytes = 0;
        s.offset = 0;
        s.last_seq = seq;
        s.durable = s.durable.max(seq);
        s.applied = s.applied.max(seq);
        s.failed = None;
        self.shared.synced.notify_all();
        self.shared.applied_cv.notify_all();
    }
}

impl Drop for Wal {
    /// Stop the syncer once it has written what is queued, then the applier
    /// once sled has what is durable.
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.work.notify_one();
        if let Some(t) = self.syncer.take() {
            let _ = t.join();
        }
        self.shared.lock().stop_applying = true;
        self.shared.apply_work.notify_one();
        if let Some(t) = self.applier.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(tree: u8, key: &[u8], value: Option<&[u8]>) -> Write {
        Write {
            tree,
            key: key.to_vec(),
            value: value.map(<[u8]>::to_vec),
        }
    }

    fn file_of(records: &[(u64, Vec<Write>)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (seq, writes) in records {
            encode_writes(*seq, writes, &mut out);
        }
        out.resize(4096, 0);
        out
    }

    #[test]
    fn records_read_back_in_order() {
        let a = vec![w(0, b"k1", Some(b"v1")), w(9, b"k2", None)];
        let b = vec![w(3, b"", Some(b""))];
        let bytes = file_of(&[(7, a.clone()), (8, b.clone())]);
        let (recs, end) = read_all(&bytes);
        assert_eq!(end, LogEnd::Clean);
        assert_eq!(recs.len(), 2);
        assert_eq!((recs[0].seq, &recs[0].writes), (7, &a));
        assert_eq!((recs[1].seq, &recs[1].writes), (8, &b));
    }

    #[test]
    fn a_flipped_byte_is_reported_at_its_record() {
        let mut bytes = file_of(&[
            (1, vec![w(0, b"a", Some(b"x"))]),
            (2, vec![w(0, b"b", None)]),
        ]);
        let second = {
            let mut one = Vec::new();
            encode_writes(1, &[w(0, b"a", Some(b"x"))], &mut one);
            one.len()
        };
        bytes[second + 12] ^= 0x40;
        let (recs, end) = read_all(&bytes);
        assert_eq!(recs.len(), 1);
        assert_eq!(
            end,
            LogEnd::Damaged {
                offset: second as u64
            }
        );
    }

    #[test]
    fn a_torn_last_record_ends_the_log_as_damaged() {
        let mut one = Vec::new();
        encode_writes(1, &[w(0, b"a", Some(b"x"))], &mut one);
        let mut two = Vec::new();
        encode_writes(2, &[w(0, b"b", Some(&[7u8; 300]))], &mut two);
        let mut bytes = one.clone();
        bytes.extend_from_slice(&two[..two.len() / 2]);
        bytes.resize(4096, 0);
        let (recs, end) = read_all(&bytes);
        assert_eq!(recs.len(), 1);
        assert_eq!(
            end,
            LogEnd::Damaged {
                offset: one.len() as u64
            }
        );
    }

    #[test]
    fn an_older_pass_behind_the_current_one_is_not_read() {
        // A new pass wrote records 10 and 11 over the start of an older pass
        // (records 3, 4, 5), ending exactly where old record 5 starts: the
        // reader meets a valid record that does not continue the sequence.
        let big = |n: u8| vec![w(0, &[n], Some(&[n; 40]))];
        let mut bytes = file_of(&[(3, big(3)), (4, big(4)), (5, big(5))]);
        let mut one_old = Vec::new();
        encode_writes(3, &big(3), &mut one_old);
        let mut eleven = Vec::new();
        encode_writes(11, &[w(1, b"y", None)], &mut eleven);
        // Record 10: a removal whose key pads the pair to two old records.
        let klen = 2 * one_old.len() - eleven.len() - (HEADER + 6);
        let mut new = Vec::new();
        encode_writes(10, &[w(1, &vec![1u8; klen], None)], &mut new);
        new.extend_from_slice(&eleven);
        assert_eq!(new.len(), 2 * one_old.len());
        bytes[..new.len()].copy_from_slice(&new);
        let (recs, end) = read_all(&bytes);
        assert_eq!(end, LogEnd::Clean);
        assert_eq!(recs.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![10, 11]);
    }
}
