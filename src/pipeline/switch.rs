//! A user's choice of form (video, audio, document, a height) and how it
//! reaches a job at each stage.
//!
//! A link starts at once in the user's default form, with the buttons on its
//! status message. A press then lands in one of three places:
//! - the job still waits in `queued`: its options change in the store;
//! - its download runs here: the choice goes to the download's [`Slot`], and
//!   the worker stops yt-dlp and queues the job again in the new form;
//! - its download has ended: the chosen form becomes a job of its own (the
//!   media cache answers it when that form was delivered before).
//!
//! Why a slot rather than a store write while downloading: the worker holds
//! the download in the old form, and a file must never go out labelled with
//! options it was not downloaded with. The worker closes the slot when the
//! download ends, under the same lock a press takes, so each press is either
//! taken by the running download or finds no slot and becomes a new job.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::job::{JobId, JobOptions, MediaKind};

/// What the user picked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    Kind(MediaKind),
    /// Video at most this tall.
    Height(u32),
}

impl Choice {
    pub fn apply(self, options: &mut JobOptions) {
        match self {
            Choice::Kind(kind) => options.kind = kind,
            Choice::Height(h) => {
                options.kind = MediaKind::Video;
                options.max_height = Some(h);
            }
        }
    }

    /// Whether `options` already say what this choice would.
    pub fn is_in(self, options: &JobOptions) -> bool {
        let mut after = options.clone();
        self.apply(&mut after);
        after == *options
    }
}

/// The choice pressed while one download runs, and the wake-up for it.
#[derive(Default)]
pub struct Slot {
    pending: Mutex<Option<Choice>>,
    pressed: Notify,
}

impl Slot {
    /// Resolves once a choice was left here (at once if one already was).
    pub async fn pressed(&self) {
        self.pressed.notified().await
    }
}

/// Restarts one job may take in another form. Each restart throws away a
/// download in progress, so a press loop must not keep yt-dlp busy forever;
/// past this, another form is a new link (held to the limits).
pub const MAX_SWITCHES: u32 = 3;

/// What became of a press offered to a running download.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offer {
    /// The download will restart in the chosen form.
    Taken,
    /// No download of the job runs here (not started, or ended).
    NoSlot,
    /// The job already restarted [`MAX_SWITCHES`] times.
    Spent,
}

/// The open slots of the downloads this process runs.
#[derive(Default)]
pub struct Switches {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    slots: HashMap<JobId, Arc<Slot>>,
    /// Restarts taken per unfinished job (forgotten when it finishes; a
    /// restart of the process starts the count again).
    taken: HashMap<JobId, u32>,
}

impl Switches {
    /// A download of `id` starts: presses go to it from now on.
    pub fn open(&self, id: JobId) -> Arc<Slot> {
        self.lock().slots.entry(id).or_default().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Leave `choice` for the running download of `id`.
    pub fn offer(&self, id: JobId, choice: Choice) -> Offer {
        let inner = self.lock();
        let Some(slot) = inner.slots.get(&id) else {
            return Offer::NoSlot;
        };
        if inner.taken.get(&id).copied().unwrap_or(0) >= MAX_SWITCHES {
            return Offer::Spent;
        }
        *slot.pending.lock().unwrap_or_else(|e| e.into_inner()) = Some(choice);
        // A permit is stored if the worker is not waiting at this moment.
        slot.pressed.notify_one();
        Offer::Taken
    }

    /// The download of `id` ended (or stopped): later presses make new jobs.
    /// Returns the choice pressed meanwhile, which the worker acts on (and
    /// which counts as one of the job's restarts).
    pub fn close(&self, id: JobId) -> Option<Choice> {
        let mut inner = self.lock();
        let slot = inner.slots.remove(&id)?;
        let pending = slot
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if pending.is_some() {
            *inner.taken.entry(id).or_default() += 1;
        }
        pending
    }

    /// The job finished: its restart count goes.
    pub fn forget(&self, id: JobId) {
        self.lock().taken.remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn video() -> JobOptions {
        JobOptions {
            kind: MediaKind::Video,
            max_height: None,
        }
    }

    #[test]
    fn a_choice_knows_when_it_changes_nothing() {
        assert!(Choice::Kind(MediaKind::Video).is_in(&video()));
        assert!(!Choice::Kind(MediaKind::Audio).is_in(&video()));
        assert!(!Choice::Height(720).is_in(&video()));
        let tall = JobOptions {
            max_height: Some(720),
            ..video()
        };
        assert!(Choice::Height(720).is_in(&tall));
        assert!(Choice::Kind(MediaKind::Video).is_in(&tall));
    }

    #[tokio::test]
    async fn a_press_reaches_an_open_slot_and_none_after_it_closed() {
        let switches = Switches::default();
        let id = JobId::new();
        let audio = Choice::Kind(MediaKind::Audio);
        assert_eq!(switches.offer(id, audio), Offer::NoSlot);
        let slot = switches.open(id);
        assert_eq!(switches.offer(id, audio), Offer::Taken);
        // The permit was stored: the worker sees the press it was not yet
        // waiting for.
        slot.pressed().await;
        // The latest press wins.
        let document = Choice::Kind(MediaKind::Document);
        assert_eq!(switches.offer(id, document), Offer::Taken);
        assert_eq!(switches.close(id), Some(document));
        assert_eq!(switches.offer(id, audio), Offer::NoSlot);
        assert_eq!(switches.close(id), None);
    }

    #[test]
    fn a_job_restarts_at_most_max_switches_times_until_it_finishes() {
        let switches = Switches::default();
        let id = JobId::new();
        let audio = Choice::Kind(MediaKind::Audio);
        for _ in 0..MAX_SWITCHES {
            switches.open(id);
            assert_eq!(switches.offer(id, audio), Offer::Taken);
            assert_eq!(switches.close(id), Some(audio));
        }
        switches.open(id);
        assert_eq!(switches.offer(id, audio), Offer::Spent);
        // A run that ended without a press counts nothing.
        assert_eq!(switches.close(id), None);
        switches.forget(id);
        switches.open(id);
        assert_eq!(switches.offer(id, audio), Offer::Taken);
    }
}
