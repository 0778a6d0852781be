//! tgdl: a Telegram bot that downloads media links with yt-dlp and sends the
//! files back, with every job a durable state machine in sled.
//!
//! # Layout
//!
//! Dependencies run one way, from the top of this list down (CI checks that
//! no two top-level modules import each other in a circle):
//!
//! - [`cli`]: the command line and its exit codes; `main.rs` only calls it.
//! - [`app`]: `run(config, shutdown)`, the wiring of the running bot.
//! - [`telegram`]: thin handlers (messages, commands, buttons) and the dispatcher.
//! - [`ops`]: health sampling, alerts, the disk guard's driver, reports, `/metrics`.
//! - [`pipeline`]: the job service handlers call, the workers and their stages,
//!   cleanup, crash recovery, the quality probe.
//! - [`botapi`]: the Bot API client, its errors, status messages, uploads, keyboards.
//! - [`download`]: running yt-dlp: arguments, progress, errors, processes, install.
//! - [`store`]: the [`store::JobStore`] contract, the record codec, the sled backend.
//! - [`net`]: links from messages, and refusing private destinations.
//! - [`i18n`]: every user-facing text, in English and Persian.
//! - [`job`]: the job record, its state machine, failure codes, time.
//! - [`config`]: the TOML configuration, checked strictly.
//!
//! ARCHITECTURE.md has the bird's-eye view, the codemap and the invariants.

pub mod app;
pub mod botapi;
pub mod cli;
pub mod config;
pub mod download;
pub mod i18n;
pub mod job;
pub mod net;
pub mod ops;
pub mod pipeline;
pub mod store;
pub mod telegram;
