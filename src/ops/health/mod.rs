//! Health: a sampler of the machine and the queue, rules that turn a sample
//! into conditions (healthy / warning / critical), alerts to admins when a
//! condition starts or ends, and the disk guard that pauses claiming.
//!
//! - `sample.rs`: [`Sample`] and the [`Probe`] trait (sysinfo behind it; tests
//!   feed samples through the same trait).
//! - `rules.rs`: thresholds -> [`Condition`]s.
//! - `alerts.rs`: per-condition start/resolve with a cooldown.
//! - `monitor.rs`: the task that ties them together every interval.

pub mod alerts;
pub mod monitor;
pub mod rules;
pub mod sample;

pub use monitor::{HealthState, Monitor};
pub use rules::{Condition, ConditionKind, Severity, Status};
pub use sample::{Probe, Sample, SharedProbe, SysinfoProbe, SystemSample};

/// Bytes in a gibibyte, for the thresholds and reports given in GB.
pub const GB: f64 = 1024.0 * 1024.0 * 1024.0;
