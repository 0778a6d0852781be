//! tgdl: a Telegram bot that downloads media links with yt-dlp and sends the
//! files back, with every job a durable state machine in sled.
//!
//! # Layout
//!
//! - [`cli`]: the command line, exit codes; `main.rs` only calls it.
//! - [`app`]: `run(config, shutdown)`, the wiring of the running bot.
//! - [`config`]: the TOML configuration, checked strictly.
//! - [`job`]: the job record and its state machine (the legal transitions).
//! - [`codec`]: the versioned encoding of every stored record.
//! - [`store`]: the [`store::JobStore`] boundary and its sled backend.
//! - [`netguard`]: links from messages, and refusing private destinations.
//! - [`download`]: running yt-dlp: arguments, progress, errors, processes.
//!
//! ARCHITECTURE.md has the bird's-eye view and the invariants.

pub mod app;
pub mod cli;
pub mod codec;
pub mod config;
pub mod download;
pub mod job;
pub mod netguard;
pub mod store;
