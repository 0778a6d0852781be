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
//! - [`download`]: running yt-dlp: arguments, progress, errors, processes,
//!   and finding or installing it.
//! - [`core`]: what handlers call: submit links, cancel, retry, look up.
//! - [`bot`]: the thin Telegram handlers and the dispatcher.
//! - [`telegram`]: the Bot API client, its errors, the status message.
//! - [`worker`]: claim a job and move it through the stages, one step each.
//! - [`quality`]: the background probe that offers video heights as buttons.
//! - [`upload`]: send a file or a cached `file_id` back to the chat.
//! - [`cleanup`]: remove a job's folder and settle its outcome.
//! - [`recovery`]: the pass at start that finishes what a crash left.
//! - [`health`]: the sampler, alert rules, alerts and the disk guard.
//! - [`metrics`]: Prometheus counters and the `/metrics`, `/healthz` listener.
//! - [`report`]: admin reports (`/health`, `/jobs` for admins).
//! - [`i18n`]: every user-facing text, in English and Persian.
//!
//! ARCHITECTURE.md has the bird's-eye view and the invariants.

pub mod app;
pub mod bot;
pub mod cleanup;
pub mod cli;
pub mod codec;
pub mod config;
pub mod core;
pub mod download;
pub mod egress;
pub mod health;
pub mod i18n;
pub mod job;
pub mod metrics;
pub mod netguard;
pub mod quality;
pub mod recovery;
pub mod report;
pub mod store;
pub mod telegram;
pub mod upload;
pub mod worker;
