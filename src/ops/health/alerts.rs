//! Alerts: a condition alerts when it starts, at most once per cooldown per
//! condition (a flapping condition does not spam), and sends "resolved" when
//! an alerted episode ends.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::rules::{Condition, ConditionKind};

#[derive(Clone, Debug, PartialEq)]
pub enum Alert {
    Started(Condition),
    Resolved(ConditionKind),
}

impl Alert {
    pub fn text(&self) -> String {
        match self {
            Alert::Started(c) => format!(
                "{} {}: {}\nWhat to do: {}",
                match c.severity {
                    super::Severity::Critical => "🔴 CRITICAL",
                    super::Severity::Warning => "🟠 WARNING",
                },
                c.kind.code(),
                c.detail,
                c.kind.advice()
            ),
            Alert::Resolved(k) => format!("🟢 resolved: {}", k.code()),
        }
    }
}

#[derive(Default)]
struct Track {
    active: bool,
    /// An alert was sent for the current episode (so it gets a "resolved").
    alerted: bool,
    last_sent: Option<Instant>,
}

pub struct Alerter {
    cooldown: Duration,
    tracks: HashMap<ConditionKind, Track>,
}

impl Alerter {
    pub fn new(cooldown: Duration) -> Self {
        Alerter {
            cooldown,
            tracks: HashMap::new(),
        }
    }

    /// Feed the conditions of one sample; returns the alerts to send.
    pub fn update(&mut self, conditions: &[Condition], now: Instant) -> Vec<Alert> {
        let mut out = Vec::new();
        for c in conditions {
            let t = self.tracks.entry(c.kind).or_default();
            let cooled = t
                .last_sent
                .is_none_or(|at| now.duration_since(at) >= self.cooldown);
            if (!t.active || !t.alerted) && cooled {
                t.alerted = true;
                t.last_sent = Some(now);
                out.push(Alert::Started(c.clone()));
            }
            t.active = true;
        }
        for (kind, t) in self.tracks.iter_mut() {
            if t.active && !conditions.iter().any(|c| c.kind == *kind) {
                t.active = false;
                if t.alerted {
                    t.alerted = false;
                    out.push(Alert::Resolved(*kind));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::health::Severity;

    fn disk() -> Condition {
        Condition {
            kind: ConditionKind::DiskLow,
            severity: Severity::Critical,
            detail: "low".into(),
        }
    }

    #[test]
    fn alerts_once_then_resolves() {
        let mut a = Alerter::new(Duration::from_secs(300));
        let t0 = Instant::now();
        assert_eq!(a.update(&[disk()], t0), vec![Alert::Started(disk())]);
        assert!(a.update(&[disk()], t0 + Duration::from_secs(10)).is_empty());
        assert_eq!(
            a.update(&[], t0 + Duration::from_secs(20)),
            vec![Alert::Resolved(ConditionKind::DiskLow)]
        );
        assert!(a.update(&[], t0 + Duration::from_secs(30)).is_empty());
    }

    #[test]
    fn a_flapping_condition_alerts_at_most_once_per_cooldown() {
        let mut a = Alerter::new(Duration::from_secs(300));
        let t0 = Instant::now();
        let s = |secs| t0 + Duration::from_secs(secs);
        assert_eq!(a.update(&[disk()], s(0)).len(), 1);
        assert_eq!(a.update(&[], s(10)).len(), 1, "resolved");
        assert!(
            a.update(&[disk()], s(20)).is_empty(),
            "within the cooldown: silent"
        );
        // Still active past the cooldown: the silent episode alerts now.
        assert_eq!(a.update(&[disk()], s(301)), vec![Alert::Started(disk())]);
    }
}
