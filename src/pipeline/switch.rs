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

/// The open slots of the downloads this process runs.
#[derive(Default)]
pub struct Switches {
    slots: Mutex<HashMap<JobId, Arc<Slot>>>,
}

impl Switches {
    /// A download of `id` starts: presses go to it from now on.
    pub fn open(&self, id: JobId) -> Arc<Slot> {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id)
            .or_default()
            .clone()
    }

    /// Leave `choice` for the running download of `id`; `false` when none
    /// runs here (it has not started, or it has ended).
    pub fn offer(&self, id: JobId, choice: Choice) -> bool {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let Some(slot) = slots.get(&id) else {
            return false;
        };
        *slot.pending.lock().unwrap_or_else(|e| e.into_inner()) = Some(choice);
        // A permit is stored if the worker is not waiting at this moment.
        slot.pressed.notify_one();
        true
    }

    /// The download of `id` ended (or stopped): later presses make new jobs.
    /// Returns the choice pressed meanwhile, which the worker acts on.
    pub fn close(&self, id: JobId) -> Option<Choice> {
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id)?;
        let pending = slot
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        pending
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
        assert!(!switches.offer(id, Choice::Kind(MediaKind::Audio)));
        let slot = switches.open(id);
        assert!(switches.offer(id, Choice::Kind(MediaKind::Audio)));
        // The permit was stored: the worker sees the press it was not yet
        // waiting for.
        slot.pressed().await;
        // The latest press wins.
        assert!(switches.offer(id, Choice::Kind(MediaKind::Document)));
        assert_eq!(switches.close(id), Some(Choice::Kind(MediaKind::Document)));
        assert!(!switches.offer(id, Choice::Kind(MediaKind::Audio)));
        assert_eq!(switches.close(id), None);
    }
}
