//! SQLite's best writer model for concurrent writers: one thread owns the
//! only connection; workers send it their changes over a channel, and it
//! commits every change waiting when it gets to them in one transaction
//! (group commit). Concurrent workers share one WAL append and one
//! fdatasync, as the store's `GroupSync` lets concurrent writers share one
//! fdatasync, and nobody sleeps in SQLite's busy handler: there is no second
//! connection to be busy.

use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::thread::JoinHandle;

use rusqlite::{Connection, TransactionBehavior};
use tgdl::job::{Job, JobId, JobState, Millis, NewJob};
use tgdl::store::Expect;
use uuid::Uuid;

use super::sqlite::{self, Committer};
use crate::LIMITS;

/// The most changes one transaction takes. Only a bound: with a handful of
/// workers a batch is whatever arrived during the previous commit.
const MAX_BATCH: usize = 256;

enum Op {
    Enqueue(NewJob),
    Claim(Uuid),
    Update {
        id: JobId,
        expect: Expect,
        to: JobState,
        edit: fn(&mut Job),
    },
}

enum Out {
    Enqueued(u64),
    Claimed(Option<Box<Job>>),
    Updated(Box<Job>),
}

struct Request {
    op: Op,
    now: Millis,
    /// Answered once the transaction holding the change is committed.
    reply: SyncSender<Out>,
}

/// How the writer grouped changes into transactions.
#[derive(Clone, Copy, Default)]
pub struct Batches {
    pub commits: u64,
    pub changes: u64,
}

impl Batches {
    pub fn per_commit(self) -> f64 {
        self.changes as f64 / self.commits.max(1) as f64
    }
}

pub struct Writer {
    requests: Sender<Request>,
    thread: JoinHandle<Batches>,
}

impl Writer {
    pub fn start(conn: Connection) -> Self {
        let (requests, rx) = channel();
        let thread = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || write(conn, rx))
            .expect("spawn writer");
        Writer { requests, thread }
    }

    pub fn client(&self) -> Client {
        Client {
            requests: self.requests.clone(),
        }
    }

    /// Wait for the writer to finish, once every client is gone.
    pub fn stop(self) -> Batches {
        drop(self.requests);
        self.thread.join().expect("writer panicked")
    }
}

/// The writer's loop: wait for a change, take every other change already
/// waiting (those that arrived while the last commit synced), apply them in
/// one transaction, commit, then answer each.
fn write(mut conn: Connection, rx: Receiver<Request>) -> Batches {
    let mut stats = Batches::default();
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .expect("begin");
        // Every operation checks before it writes, so a real writer would
        // answer a change that fails its checks with its error and commit
        // the rest; the bench's changes never fail.
        let answers: Vec<(SyncSender<Out>, Out)> = batch
            .drain(..)
            .map(|r| {
                let out = match r.op {
                    Op::Enqueue(n) => Out::Enqueued(sqlite::enqueue(&tx, &n, LIMITS, r.now)),
                    Op::Claim(owner) => {
                        Out::Claimed(sqlite::claim(&tx, owner, r.now).map(Box::new))
                    }
                    Op::Update {
                        id,
                        expect,
                        to,
                        edit,
                    } => Out::Updated(Box::new(sqlite::update(&tx, id, expect, to, r.now, edit))),
                };
                (r.reply, out)
            })
            .collect();
        tx.commit().expect("commit");
        stats.commits += 1;
        stats.changes += answers.len() as u64;
        // Only now is each change durable: the same promise the store makes
        // when its call returns.
        for (reply, out) in answers {
            // A worker that stopped waiting has nothing to be told.
            let _ = reply.send(out);
        }
    }
    stats
}

/// A worker's handle on the writer.
pub struct Client {
    requests: Sender<Request>,
}

impl Client {
    fn call(&self, op: Op, now: Millis) -> Out {
        // A fresh reply channel per call: if the writer dies, the worker
        // sees its channel close instead of waiting for ever.
        let (reply, answer) = sync_channel(1);
        self.requests
            .send(Request { op, now, reply })
            .expect("writer gone");
        answer.recv().expect("writer gone")
    }
}

/// [`sqlite::Model::Writer`]: each change goes through the writer thread.
impl Committer for Client {
    fn enqueue(&mut self, n: NewJob, now: Millis) -> u64 {
        match self.call(Op::Enqueue(n), now) {
            Out::Enqueued(position) => position,
            _ => unreachable!("answer to an enqueue"),
        }
    }

    fn claim(&mut self, owner: Uuid, now: Millis) -> Option<Job> {
        match self.call(Op::Claim(owner), now) {
            Out::Claimed(job) => job.map(|j| *j),
            _ => unreachable!("answer to a claim"),
        }
    }

    fn update(
        &mut self,
        id: JobId,
        expect: Expect,
        to: JobState,
        now: Millis,
        edit: fn(&mut Job),
    ) -> Job {
        let op = Op::Update {
            id,
            expect,
            to,
            edit,
        };
        match self.call(op, now) {
            Out::Updated(job) => *job,
            _ => unreachable!("answer to an update"),
        }
    }
}
