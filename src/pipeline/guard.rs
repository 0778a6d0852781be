//! What the health task tells the pipeline: pause claiming while the disk is
//! critically full, and how many downloads failed in a way that suggests a
//! broken extractor (the health task turns a spike into an alert).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::job::Millis;

#[derive(Default)]
pub struct Guard {
    /// Set while free disk is below the critical threshold: workers claim
    /// nothing, jobs wait in `queued`.
    paused: AtomicBool,
    extractor_errors: Mutex<VecDeque<Millis>>,
}

impl Guard {
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst)
    }

    /// A download failed in a way that suggests a broken extractor.
    pub fn note_extractor_error(&self, at: Millis) {
        let mut q = self.extractor_errors.lock().unwrap();
        q.push_back(at);
        while q.len() > 10_000 {
            q.pop_front();
        }
    }

    /// Extractor errors noted since `since` (older ones are forgotten).
    pub fn extractor_errors_since(&self, since: Millis) -> u64 {
        let mut q = self.extractor_errors.lock().unwrap();
        while q.front().is_some_and(|t| *t < since) {
            q.pop_front();
        }
        q.len() as u64
    }
}
