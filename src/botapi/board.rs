//! Shared status messages in groups.
//!
//! Telegram allows a group about 20 messages a minute, edits included. One
//! status message per link spends that budget fast: an acknowledgement, a
//! stage line, progress edits and a deletion for every link, so in a busy
//! group every user's reply waits behind everyone's percentages. Instead, the
//! links a group sends within [`WINDOW`] share one message (a *board*): one
//! line per job, each line the text that job's own status message would have.
//! Changes to a board are rendered when the pacer grants the edit, so any
//! number of changes while an edit waits cost one call, and a board is
//! deleted when its last delivered job leaves it.
//!
//! Boards live in memory. After a restart, recovery adopts the boards of the
//! jobs still in flight (jobs that share a status message id), so their
//! lines do not overwrite each other.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::job::JobId;

/// How long a new board takes new links: Telegram's group limit is per minute.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Lines a board holds at most, so it stays short and far below Telegram's
/// text limit; the next link opens a new board.
pub const MAX_LINES: usize = 10;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves only display text behind.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One shared status message and the lines of the jobs on it.
pub struct Board {
    pub chat: i64,
    pub message: i32,
    opened: Instant,
    state: Mutex<Lines>,
}

#[derive(Default)]
struct Lines {
    lines: Vec<(JobId, String)>,
    /// The last line left: the message is gone (or going), nobody joins.
    closed: bool,
    /// An urgent edit waits in the pacer and will render the latest lines
    /// when it goes, so another urgent change needs no call of its own.
    urgent_waiting: bool,
}

impl Board {
    fn new(chat: i64, message: i32, opened: Instant, lines: Vec<(JobId, String)>) -> Self {
        Board {
            chat,
            message,
            opened,
            state: Mutex::new(Lines {
                lines,
                ..Lines::default()
            }),
        }
    }

    /// The message's text now: one line per job, in the order they came.
    pub fn text(&self) -> String {
        let s = lock(&self.state);
        // An adopted job's line is empty until its next update.
        let lines: Vec<&str> = s
            .lines
            .iter()
            .map(|(_, l)| l.as_str())
            .filter(|l| !l.is_empty())
            .collect();
        lines.join("\n")
    }

    /// Add a job's line; false when the board is closed or full.
    fn join(&self, job: JobId, line: String) -> bool {
        let mut s = lock(&self.state);
        if s.closed || s.lines.len() >= MAX_LINES {
            return false;
        }
        s.lines.push((job, line));
        true
    }

    /// Set the line of a job on the board; whether the text changed.
    pub fn set(&self, job: JobId, line: &str) -> bool {
        let mut s = lock(&self.state);
        match s.lines.iter_mut().find(|(j, _)| *j == job) {
            Some((_, l)) if l == line => false,
            Some((_, l)) => {
                *l = line.to_string();
                true
            }
            // Its line was taken off (delivered): a late update must not
            // bring it back.
            None => false,
        }
    }

    /// Take a job's line off; true when it was the last one (the board is
    /// then closed and its message should go).
    pub fn remove(&self, job: JobId) -> bool {
        let mut s = lock(&self.state);
        s.lines.retain(|(j, _)| *j != job);
        if s.lines.is_empty() && !s.closed {
            s.closed = true;
            return true;
        }
        false
    }

    pub fn holds(&self, job: JobId) -> bool {
        lock(&self.state).lines.iter().any(|(j, _)| *j == job)
    }

    /// Mark an urgent edit as waiting; false if one already waits.
    pub(super) fn claim_urgent(&self) -> bool {
        !std::mem::replace(&mut lock(&self.state).urgent_waiting, true)
    }

    /// The waiting urgent edit is being sent (with the text of this moment).
    pub(super) fn urgent_sent(&self) {
        lock(&self.state).urgent_waiting = false;
    }
}

/// The boards of every group, by the group (the one taking new links) and by
/// message (for the jobs on it).
#[derive(Default)]
pub struct Boards {
    inner: Mutex<Registry>,
}

#[derive(Default)]
struct Registry {
    open: HashMap<i64, Arc<Board>>,
    by_message: HashMap<(i64, i32), Arc<Board>>,
    /// When each group last had a link acknowledged.
    last_ack: HashMap<i64, Instant>,
}

/// Whether a chat id is a group's (Telegram: groups and channels are negative).
pub fn is_group(chat: i64) -> bool {
    chat < 0
}

impl Boards {
    /// Whether a group had a link acknowledged within [`WINDOW`]: then the
    /// next one shares a status message instead of getting its own with
    /// choice buttons.
    pub fn busy(&self, chat: i64) -> bool {
        lock(&self.inner)
            .last_ack
            .get(&chat)
            .is_some_and(|at| at.elapsed() < WINDOW)
    }

    /// A link of the group was acknowledged now.
    pub fn acknowledged(&self, chat: i64) {
        let mut reg = lock(&self.inner);
        let now = Instant::now();
        reg.last_ack
            .retain(|_, at| now.duration_since(*at) < WINDOW);
        reg.last_ack.insert(chat, now);
    }

    /// Put a new job's line on the group's open board, if it has one that is
    /// recent and not full; the board's message id, or `None` to send a new
    /// message (and then [`Boards::open`] it).
    pub fn join(&self, chat: i64, job: JobId, line: String) -> Option<Arc<Board>> {
        let reg = lock(&self.inner);
        let board = reg.open.get(&chat)?;
        if board.opened.elapsed() >= WINDOW || !board.join(job, line) {
            return None;
        }
        Some(board.clone())
    }

    /// A group's new status message becomes its open board, with the job it
    /// acknowledged as the first line.
    pub fn open(&self, chat: i64, message: i32, job: JobId, line: String) -> Arc<Board> {
        let board = Arc::new(Board::new(chat, message, Instant::now(), vec![(job, line)]));
        let mut reg = lock(&self.inner);
        reg.open.insert(chat, board.clone());
        reg.by_message.insert((chat, message), board.clone());
        board
    }

    /// After a restart: the jobs that share `message` get their board back
    /// (closed to new links; their lines return with their next update).
    pub fn adopt(&self, chat: i64, message: i32, jobs: &[JobId]) {
        let lines = jobs.iter().map(|j| (*j, String::new())).collect();
        let board = Board::new(chat, message, Instant::now() - WINDOW, lines);
        lock(&self.inner)
            .by_message
            .insert((chat, message), Arc::new(board));
    }

    /// The board a status message is, if it is one.
    pub fn find(&self, chat: i64, message: i32) -> Option<Arc<Board>> {
        lock(&self.inner).by_message.get(&(chat, message)).cloned()
    }

    /// Drop a closed board.
    pub fn forget(&self, board: &Board) {
        let mut reg = lock(&self.inner);
        reg.by_message.remove(&(board.chat, board.message));
        if reg
            .open
            .get(&board.chat)
            .is_some_and(|b| b.message == board.message)
        {
            reg.open.remove(&board.chat);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_within_the_window_share_the_open_board_until_it_is_full() {
        let boards = Boards::default();
        let first = JobId::new();
        boards.open(-5, 77, first, "a".into());
        let mut joined = 1;
        for i in 0..MAX_LINES + 3 {
            match boards.join(-5, JobId::new(), format!("line {i}")) {
                Some(b) => {
                    assert_eq!(b.message, 77);
                    joined += 1;
                }
                None => break,
            }
        }
        assert_eq!(joined, MAX_LINES);
        // Another group has no board yet.
        assert!(boards.join(-6, JobId::new(), "x".into()).is_none());
        assert!(boards.find(-5, 77).unwrap().text().starts_with("a\nline 0"));
    }

    #[test]
    fn the_last_line_closes_the_board_and_nobody_joins_it_after() {
        let boards = Boards::default();
        let (a, b) = (JobId::new(), JobId::new());
        let board = boards.open(-5, 77, a, "a".into());
        assert!(boards.join(-5, b, "b".into()).is_some());
        assert!(!board.remove(a));
        assert!(board.set(b, "b 50%"));
        assert!(!board.set(b, "b 50%"), "unchanged text is no change");
        assert_eq!(board.text(), "b 50%");
        assert!(board.remove(b));
        assert!(boards.join(-5, JobId::new(), "c".into()).is_none());
        boards.forget(&board);
        assert!(boards.find(-5, 77).is_none());
    }

    #[test]
    fn an_adopted_board_takes_its_jobs_lines_but_no_new_links() {
        let boards = Boards::default();
        let (a, b) = (JobId::new(), JobId::new());
        boards.adopt(-5, 9, &[a, b]);
        let board = boards.find(-5, 9).unwrap();
        assert!(board.holds(a) && board.holds(b));
        assert!(board.set(a, "a"));
        assert!(boards.join(-5, JobId::new(), "c".into()).is_none());
    }

    #[test]
    fn a_group_is_busy_for_a_minute_after_an_acknowledgement() {
        let boards = Boards::default();
        assert!(!boards.busy(-5));
        boards.acknowledged(-5);
        assert!(boards.busy(-5));
        assert!(!boards.busy(-6));
    }

    #[test]
    fn only_one_urgent_edit_waits_per_board() {
        let boards = Boards::default();
        let board = boards.open(-5, 1, JobId::new(), "a".into());
        assert!(board.claim_urgent());
        assert!(!board.claim_urgent());
        board.urgent_sent();
        assert!(board.claim_urgent());
    }
}
