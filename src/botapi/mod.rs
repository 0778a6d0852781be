//! The Bot API side that the pipeline and the handlers share: the client,
//! what its errors mean, the status message, sending files, keyboards and
//! Telegram's text limits. Nothing here decides what a job does next.
//!
//! teloxide's defaults are wrong for this bot in three ways (SPEC "Parts"): a
//! 17 s timeout breaks uploads, a failed `getMe` at start panics the
//! dispatcher, and nothing paces the calls. `client.rs` fixes the first two;
//! `api.rs` sends every call through `pacer.rs` (Telegram's limits, 429s
//! waited out, urgent before progress, edits coalesced).

mod api;
pub mod board;
mod client;
mod errors;
pub mod filename;
pub mod keyboard;
pub mod pacer;
pub mod send;
mod sent_id;
mod status;
pub mod text;

pub use api::Api;
pub use client::{build_bot, notify_admins, wait_for_api};
pub use errors::{classify, TgFailure};
pub use status::StatusMessage;
