//! Operations: what an admin or an operator sees of the running bot.
//!
//! - [`health`]: the sampler, the rules, alerts to admins, the disk guard's
//!   driver and retention pruning (the task that ties them together).
//! - [`report`]: the `/health` text, the admin `/jobs` views, `tgdl health`.
//! - [`http`]: the optional `/metrics` and `/healthz` listener.

pub mod health;
pub mod http;
pub mod report;
pub mod update;
