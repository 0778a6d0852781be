//! Operations: what an admin or an operator sees of the running bot.
//!
//! - [`health`]: the sampler, the rules, alerts to admins, the disk guard's
//!   driver and retention pruning (the task that ties them together).
//! - [`report`]: the `/health` text, the admin `/jobs` views, `tgdl health`.
//! - [`http`]: the optional `/metrics` and `/healthz` listener.
//! - [`admin`]: the CLI's questions to the running bot (a Unix socket), and
//!   the one function that answers them running or stopped.
//! - [`systemd`]: readiness, status, watchdog and stopping for systemd.
//! - [`update`]: the managed yt-dlp's updater task and the one update
//!   operation `/update` and `tgdl update` both call.

pub mod admin;
pub mod health;
pub mod http;
pub mod report;
pub mod systemd;
pub mod update;
