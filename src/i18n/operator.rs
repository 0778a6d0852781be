//! What the command line tells the operator about `tgdl cancel` and
//! `tgdl retry`. English only: the shell has no Telegram language, and the
//! words match the rest of the command line's output.

use crate::job::{iso, Job};

pub fn cancelled(j: &Job) -> String {
    format!(
        "job {} cancelled (its download is stopped and its files removed)",
        j.id.short()
    )
}

pub fn requeued(j: &Job) -> String {
    format!(
        "job {} queued again (attempts start over; due {})",
        j.id.short(),
        iso(j.next_attempt_at)
    )
}

pub fn already_finished(j: &Job) -> String {
    format!(
        "job {} is already {}; nothing to cancel",
        j.id.short(),
        j.state
    )
}

pub fn not_failed(j: &Job) -> String {
    format!(
        "job {} is {}; only a failed job can be retried",
        j.id.short(),
        j.state
    )
}

/// A retry refused by the limits a new link meets; `why` is the store's
/// reason ("queue is full (10000 jobs)").
pub fn refused(why: &str) -> String {
    format!("retry refused: {why}")
}

/// The running bot has not finished its start-up recovery yet.
pub fn starting() -> String {
    "the bot is starting (its recovery pass has not run yet); try again in a moment".into()
}
