//! Moving a store's contents between installations and backends
//! (`tgdl export` / `tgdl import`): a versioned JSON-lines format, the
//! [`Transfer`] trait a backend implements to read and load it, and the
//! drivers that stream it.
//!
//! The format (version 1), one JSON object per line:
//! - first, `{"tgdl_export":{"version":1,"backend":"sled","created_at":...}}`;
//! - then data lines, each an object with one key naming its kind: `user`
//!   (the hourly window and fairness turn of a user), `job` (the job record,
//!   its fields as in [`Job`]), `cache`, `settings`, `finished` (a per-minute
//!   counter of finished jobs), `inbox` (an update received and not yet
//!   handled, base64) and `quarantine` (a record that could not be decoded,
//!   base64, kept so that nothing is dropped silently);
//! - last, `{"end":{...}}` with the number of lines of each kind and the jobs
//!   per state. A file without it was cut short and is refused.
//!
//! Why two passes on import: the whole file is read and checked before the
//! first write, so a truncated or damaged file is refused with its line
//! number and the target store stays empty.
//!
//! The format is the same for every backend: a file exported from sled
//! imports into PostgreSQL and back. The drivers ([`export`], [`import`])
//! are async and backend-neutral; sled runs its synchronous part on tokio's
//! blocking pool.

use std::collections::HashSet;
use std::io::{BufRead, Write};

use async_trait::async_trait;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::job::{Job, JobState, Millis};
use crate::store::{
    CachedMedia, InvariantReport, QuarantineEntry, StateCounts, StoreError, UserSettings,
};

/// The format version this build writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;

/// Data lines loaded per backend transaction on import: large enough that a
/// million jobs are not a million syncs, small enough that one transaction
/// stays a few hundred KB.
pub const IMPORT_BATCH: usize = 512;

/// One line of an export file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Line {
    TgdlExport(Header),
    User(UserLine),
    Job(Box<Job>),
    Cache(CacheLine),
    Settings(SettingsLine),
    Finished(FinishedLine),
    Inbox(InboxLine),
    Quarantine(QuarantineLine),
    End(Totals),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub version: u32,
    /// The backend the file was exported from (informative).
    pub backend: String,
    pub created_at: Millis,
}

/// What the limits and the fair scheduler keep per user beyond the jobs
/// themselves (the counts of active and queued jobs are derived from the
/// jobs on import).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserLine {
    pub user_id: u64,
    /// Enqueue times within the last hour (the hourly limit's window).
    pub recent: Vec<Millis>,
    /// When a job of this user was last claimed (the fair turn).
    pub last_served: Millis,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheLine {
    pub key: String,
    pub media: CachedMedia,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingsLine {
    pub user_id: u64,
    pub settings: UserSettings,
}

/// Jobs that entered `state` (done or failed) during one minute, for the
/// health report's "last hour" figures.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinishedLine {
    pub state: JobState,
    pub minute: u64,
    pub count: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxLine {
    pub update_id: u32,
    /// The update as Telegram sent it, base64.
    pub update: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineLine {
    pub tree: String,
    /// The record's key and bytes, base64.
    pub key: String,
    pub bytes: String,
    pub reason: String,
    pub at: Millis,
}

/// The last line: how many lines of each kind came before it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub jobs: u64,
    pub states: StateCounts,
    pub users: u64,
    pub cache: u64,
    pub settings: u64,
    pub finished: u64,
    pub inbox: u64,
    pub quarantine: u64,
}

impl Totals {
    fn count(&mut self, line: &Line) {
        match line {
            Line::Job(j) => {
                self.jobs += 1;
                *self.states.get_mut(j.state) += 1;
            }
            Line::User(_) => self.users += 1,
            Line::Cache(_) => self.cache += 1,
            Line::Settings(_) => self.settings += 1,
            Line::Finished(_) => self.finished += 1,
            Line::Inbox(_) => self.inbox += 1,
            Line::Quarantine(_) => self.quarantine += 1,
            Line::TgdlExport(_) | Line::End(_) => {}
        }
    }

    /// "12 jobs (3 queued, 9 done), 4 cache entries, ..." for the operator.
    pub fn describe(&self) -> String {
        let states: Vec<String> = JobState::ALL
            .iter()
            .filter(|s| self.states.get(**s) > 0)
            .map(|s| format!("{} {}", self.states.get(*s), s.name()))
            .collect();
        let states = if states.is_empty() {
            String::new()
        } else {
            format!(" ({})", states.join(", "))
        };
        format!(
            "{} jobs{states}, {} users, {} cache entries, {} settings, {} minute counters, \
             {} pending updates, {} quarantined records",
            self.jobs,
            self.users,
            self.cache,
            self.settings,
            self.finished,
            self.inbox,
            self.quarantine
        )
    }
}

impl QuarantineLine {
    pub fn from_entry(e: &QuarantineEntry) -> Self {
        QuarantineLine {
            tree: e.tree.clone(),
            key: b64(&e.key),
            bytes: b64(&e.bytes),
            reason: e.reason.clone(),
            at: e.at,
        }
    }

    pub fn to_entry(&self) -> Result<QuarantineEntry, String> {
        Ok(QuarantineEntry {
            tree: self.tree.clone(),
            key: unb64(&self.key)?,
            bytes: unb64(&self.bytes)?,
            reason: self.reason.clone(),
            at: self.at,
        })
    }
}

impl InboxLine {
    pub fn new(update_id: u32, raw: &[u8]) -> Self {
        InboxLine {
            update_id,
            update: b64(raw),
        }
    }

    pub fn raw(&self) -> Result<Vec<u8>, String> {
        unb64(&self.update)
    }
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(text: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| format!("bad base64: {e}"))
}

/// Where [`Transfer::export_lines`] hands each data line.
pub type Sink<'a> = dyn FnMut(Line) -> Result<(), TransferError> + Send + 'a;

/// What a backend does for export and import. Kept apart from the
/// [`crate::store::Store`] contract: the pipeline never moves a whole store.
#[async_trait]
pub trait Transfer: Send + Sync {
    /// The backend's name, written in the header.
    fn backend(&self) -> &'static str;

    /// Hand every data line to `sink`, in this order: users, jobs, cache,
    /// settings, finished counters, pending updates, quarantine (so an
    /// import meets a user's window before the user's jobs, and the same
    /// contents export as the same lines from any backend). A record that
    /// cannot be decoded goes out as a `quarantine` line, never silently
    /// dropped. An error from `sink` stops the export and is returned.
    async fn export_lines(&self, sink: &mut Sink<'_>) -> Result<(), TransferError>;

    /// Whether the store holds no job, cache entry, setting, user, pending
    /// update or quarantined record (import loads only into such a store).
    async fn is_empty(&self) -> Result<bool, StoreError>;

    /// Load data lines (never a header or end line) in one durable
    /// transaction, deriving every index and counter as the store's own
    /// changes do. `finished` lines are not passed here: see
    /// [`Transfer::import_finished`].
    async fn import_lines(&self, lines: Vec<Line>) -> Result<(), TransferError>;

    /// Set the per-minute finished counters to exactly these (loading jobs
    /// counted each finished job once; the exported counts replace that).
    async fn import_finished(&self, counters: Vec<FinishedLine>) -> Result<(), TransferError>;

    /// The jobs per state, from the store's counters (what an import is
    /// verified against).
    async fn state_counts(&self) -> Result<StateCounts, StoreError>;

    /// The backend's full consistency check.
    async fn check(&self) -> Result<InvariantReport, StoreError>;
}

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("line {line}: {reason}")]
    Format { line: u64, reason: String },
    #[error("the file ends without its end line after line {0}: it was cut short")]
    Truncated(u64),
    #[error("the file is export format version {found}; this build reads up to {FORMAT_VERSION}")]
    NewerVersion { found: u32 },
    #[error("the file's end line says {claimed}, but it holds {found}")]
    CountMismatch { claimed: String, found: String },
    #[error("the target store is not empty; import loads only into an empty store")]
    NotEmpty,
    #[error("after the import the store counts {found}, the file {expected}")]
    Verify { expected: String, found: String },
    #[error("the imported store fails its consistency check: {0}")]
    Inconsistent(String),
    #[error("a record cannot be loaded: {0}")]
    Record(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Write the store as an export file to `out`; `tick` is called per job.
pub async fn export(
    store: &dyn Transfer,
    out: &mut (dyn Write + Send),
    now: Millis,
    tick: &mut (dyn FnMut() + Send),
) -> Result<Totals, TransferError> {
    fn write(out: &mut (dyn Write + Send), line: &Line) -> Result<(), TransferError> {
        serde_json::to_writer(&mut *out, line).map_err(std::io::Error::from)?;
        out.write_all(b"\n")?;
        Ok(())
    }
    let mut totals = Totals::default();
    write(
        out,
        &Line::TgdlExport(Header {
            version: FORMAT_VERSION,
            backend: store.backend().to_string(),
            created_at: now,
        }),
    )?;
    store
        .export_lines(&mut |line| {
            totals.count(&line);
            write(out, &line)?;
            if matches!(line, Line::Job(_)) {
                tick();
            }
            Ok(())
        })
        .await?;
    write(out, &Line::End(totals.clone()))?;
    out.flush()?;
    Ok(totals)
}

/// Read and check a whole export file without loading anything: every line
/// parses, the header comes first with a known version, the end line comes
/// last and its totals match, and no job appears twice.
pub fn validate(input: impl BufRead) -> Result<Totals, TransferError> {
    let mut seen = Totals::default();
    let mut ids = HashSet::new();
    let mut ended = None;
    let mut n = 0u64;
    for_each_line(input, &mut |number, line| {
        n = number;
        if ended.is_some() {
            return Err(format_error(number, "a line after the end line"));
        }
        match (&line, number) {
            (Line::TgdlExport(h), 1) if h.version > FORMAT_VERSION => {
                return Err(TransferError::NewerVersion { found: h.version })
            }
            (Line::TgdlExport(_), 1) => {}
            (_, 1) => return Err(format_error(1, "not a tgdl export (no header line)")),
            (Line::TgdlExport(_), _) => return Err(format_error(number, "a second header")),
            (Line::End(t), _) => ended = Some(t.clone()),
            (Line::Job(j), _) if !ids.insert(j.id) => {
                return Err(format_error(number, format!("job {} appears twice", j.id)))
            }
            _ => {}
        }
        seen.count(&line);
        Ok(())
    })?;
    let claimed = ended.ok_or(TransferError::Truncated(n))?;
    if claimed != seen {
        return Err(TransferError::CountMismatch {
            claimed: claimed.describe(),
            found: seen.describe(),
        });
    }
    Ok(seen)
}

/// Load a file that [`validate`] accepted into an empty store, a batch of
/// [`IMPORT_BATCH`] lines per transaction, then check that the store counts
/// what the file holds and is consistent. `tick` is called per job.
pub async fn import(
    store: &dyn Transfer,
    input: impl BufRead,
    expected: &Totals,
    tick: &mut dyn FnMut(),
) -> Result<(), TransferError> {
    if !store.is_empty().await? {
        return Err(TransferError::NotEmpty);
    }
    let mut lines = Lines::new(input);
    let mut batch = Vec::with_capacity(IMPORT_BATCH);
    let mut finished = Vec::new();
    while let Some((_, line)) = lines.next_line()? {
        match line {
            Line::TgdlExport(_) | Line::End(_) => continue,
            Line::Finished(f) => finished.push(f),
            Line::Job(j) => {
                batch.push(Line::Job(j));
                tick();
            }
            line => batch.push(line),
        }
        if batch.len() >= IMPORT_BATCH {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(IMPORT_BATCH));
            store.import_lines(full).await?;
        }
    }
    if !batch.is_empty() {
        store.import_lines(batch).await?;
    }
    store.import_finished(finished).await?;
    let counts = store.state_counts().await?;
    if counts != expected.states {
        let total = |c: &StateCounts| Totals {
            jobs: c.total(),
            states: *c,
            ..Totals::default()
        };
        return Err(TransferError::Verify {
            expected: total(&expected.states).describe(),
            found: total(&counts).describe(),
        });
    }
    let problems = store.check().await?.problems;
    if !problems.is_empty() {
        return Err(TransferError::Inconsistent(problems.join("; ")));
    }
    Ok(())
}

fn format_error(line: u64, reason: impl Into<String>) -> TransferError {
    TransferError::Format {
        line,
        reason: reason.into(),
    }
}

/// Parse each line (numbered from 1) and hand it to `f`.
fn for_each_line(
    input: impl BufRead,
    f: &mut dyn FnMut(u64, Line) -> Result<(), TransferError>,
) -> Result<(), TransferError> {
    let mut lines = Lines::new(input);
    while let Some((number, line)) = lines.next_line()? {
        f(number, line)?;
    }
    Ok(())
}

/// The parsed lines of a file, numbered from 1; blank lines are skipped (an
/// editor may add one at the end).
struct Lines<R> {
    input: R,
    text: String,
    number: u64,
}

impl<R: BufRead> Lines<R> {
    fn new(input: R) -> Self {
        Lines {
            input,
            text: String::new(),
            number: 0,
        }
    }

    fn next_line(&mut self) -> Result<Option<(u64, Line)>, TransferError> {
        loop {
            self.text.clear();
            if self.input.read_line(&mut self.text)? == 0 {
                return Ok(None);
            }
            self.number += 1;
            let trimmed = self.text.trim_end_matches(['\n', '\r']);
            if trimmed.is_empty() {
                continue;
            }
            let line: Line = serde_json::from_str(trimmed).map_err(|e| {
                format_error(self.number, format!("not a record of this format ({e})"))
            })?;
            return Ok(Some((self.number, line)));
        }
    }
}
