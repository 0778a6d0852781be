//! What the health task tells the pipeline: pause claiming while the disk is
//! critically full or a download met ENOSPC, and how many downloads failed in a way that suggests a
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
    /// Set when a download met ENOSPC: claims stay held, whatever the
    /// percentage threshold says, until the health task sees room for one
    /// more download ([`Guard::settle`]).
    out_of_space: AtomicBool,
    extractor_errors: Mutex<VecDeque<Millis>>,
}

impl Guard {
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst)
    }

    /// A download ran out of disk space (ENOSPC): hold claims now, and keep
    /// holding them until [`Guard::settle`] is told there is room again.
    pub fn hold_for_space(&self) {
        self.out_of_space.store(true, Ordering::SeqCst);
        self.paused.store(true, Ordering::SeqCst);
    }

    /// Whether an ENOSPC hold is in force.
    pub fn is_out_of_space(&self) -> bool {
        self.out_of_space.load(Ordering::SeqCst)
    }

    /// The health task's verdict of one round: `low_disk` (free space under
    /// the critical percentage) and `room` (free space fits one more
    /// download of `downloader.max_download_mb`). Room ends an ENOSPC hold;
    /// claims stay paused while the disk is low or the hold lasts. Returns
    /// whether they are paused.
    pub fn settle(&self, low_disk: bool, room: bool) -> bool {
        if room {
            self.out_of_space.store(false, Ordering::SeqCst);
        }
        let paused = low_disk || self.is_out_of_space();
        self.set_paused(paused);
        paused
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_enospc_hold_lasts_until_there_is_room() {
        let g = Guard::default();
        assert!(!g.settle(false, true));
        g.hold_for_space();
        assert!(g.is_paused());
        // The percentage alone is fine, but not one download fits yet.
        assert!(g.settle(false, false));
        assert!(g.is_paused() && g.is_out_of_space());
        // Room again: released (unless the disk is low by percentage).
        assert!(g.settle(true, true));
        assert!(!g.is_out_of_space());
        assert!(!g.settle(false, true));
        assert!(!g.is_paused());
    }
}
