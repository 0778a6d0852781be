//! The pipeline: what happens to a job from the moment it is accepted.
//!
//! - [`service`]: [`JobService`], the job operations handlers, the CLI and
//!   workers share (submit, cancel, retry, choose, settings, look up).
//! - [`worker`]: [`Pipeline`], the stages a claimed job goes through.
//! - [`cleanup`]: removing a job's folder and settling its outcome.
//! - [`recovery`]: the pass at start that finishes what a crash left.
//! - [`quality`]: the background probe that offers video heights as buttons.
//! - [`switch`]: a press of another form, reaching a job at whatever stage.
//! - [`guard`]: the disk guard and extractor-error count the health task sets.
//! - [`metrics`]: the pipeline's counters.

pub mod cleanup;
pub mod guard;
pub mod metrics;
pub mod quality;
pub mod recovery;
pub mod service;
pub mod switch;
pub mod worker;

pub use service::JobService;
pub use worker::{spawn_workers, Pipeline, StepOutcome};
