//! The job: one link from one chat, and the state machine it moves through.
//!
//! Everything here is pure data and pure functions. The store persists these
//! types; the workers decide which transition to ask for; the legal graph lives
//! in exactly one place, [`JobState::can_become`].

mod failure;
mod id;
mod state;
mod time;

pub use failure::{ErrorClass, FailureCode, JobError};
pub use id::JobId;
pub use state::{IllegalTransition, JobState};
pub use time::{iso, now_ms, Millis, HOUR_MS};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What the user asked to receive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum MediaKind {
    #[default]
    Video,
    Audio,
    Document,
}

impl MediaKind {
    pub fn name(self) -> &'static str {
        match self {
            MediaKind::Video => "video",
            MediaKind::Audio => "audio",
            MediaKind::Document => "document",
        }
    }
}

/// Options chosen for a job. Part of the media-cache key: the same link with
/// other options is other media.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct JobOptions {
    pub kind: MediaKind,
    /// Maximum video height, when the user picked one.
    pub max_height: Option<u32>,
}

/// What Telegram gave back after a successful upload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub message_id: i32,
    pub file_id: String,
    pub sent_as: MediaKind,
}

/// Dimensions and length of downloaded media, when yt-dlp reported them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaInfo {
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub duration_secs: Option<u32>,
}

/// Who is working on a job and until when that claim holds. A lease that has
/// expired, or an owner that is not a live process, makes the job an orphan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub owner: Uuid,
    pub until: Millis,
}

/// How far a job had got when a crash last took it from a worker: the
/// recovery pass counts a rescue toward `downloader.max_rescues` only when
/// the job got no further since the one before (no more bytes in its
/// folder, no later stage), so a slow download that resumes further after
/// every restart is not taken for a job that crashes the bot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RescueMark {
    /// The furthest stage a rescue found the job in (downloading or
    /// uploading).
    pub stage: JobState,
    /// The most bytes a rescue found in the job's folder.
    pub bytes: u64,
    /// Rescues that found no progress: what `max_rescues` limits.
    pub stalls: u32,
}

/// The durable record of one job. Field order is the bincode layout of the
/// codec (`store/codec.rs`): add fields only at the end and together with a
/// new codec version that still decodes the old layout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    pub chat_id: i64,
    pub user_id: u64,
    /// The user's message that carried the link; replies point at it.
    pub request_msg_id: i32,
    /// The bot's status message, once sent.
    pub status_msg_id: Option<i32>,
    /// The user's language code, so workers can answer in it long after the
    /// handler returned.
    pub lang: String,
    pub url: String,
    pub options: JobOptions,
    pub state: JobState,
    /// Attempts that ended in an error (retryable or not).
    pub attempts: u32,
    /// Times a crash or shutdown took the job back to `queued`; not attempts.
    pub rescues: u32,
    /// States entered, with when: the first (creation) and the latest,
    /// at most [`HISTORY_MAX`] in all.
    pub history: Vec<(JobState, Millis)>,
    pub created_at: Millis,
    pub updated_at: Millis,
    /// Not claimed before this time (backoff).
    pub next_attempt_at: Millis,
    pub last_error: Option<JobError>,
    /// Set when cleaning should end in `failed`; its reason is the user's.
    pub failure: Option<JobError>,
    pub file_path: Option<String>,
    pub file_size: Option<u64>,
    pub title: Option<String>,
    /// What the downloaded media looks like, for `sendVideo`'s fields.
    pub media: Option<MediaInfo>,
    pub delivery: Option<Delivery>,
    pub lease: Option<Lease>,
    /// A playlist's parent job, for its children.
    pub parent: Option<JobId>,
    /// Where the last rescue found the job (codec version 2).
    pub rescue_mark: Option<RescueMark>,
}

/// Most history entries a job keeps: the first, and the latest after it.
/// Each retry or rescue adds entries, and a record must stay small (the
/// codec refuses records over 1 MiB, and every change rewrites the record).
pub const HISTORY_MAX: usize = 32;

/// What a caller supplies to create a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewJob {
    pub chat_id: i64,
    pub user_id: u64,
    pub request_msg_id: i32,
    pub lang: String,
    pub url: String,
    pub options: JobOptions,
    pub parent: Option<JobId>,
    /// Not claimed before this time: the short wait in which a user may
    /// pick video, audio or document before their default applies.
    pub not_before: Option<Millis>,
}

impl Job {
    /// A fresh queued job.
    pub fn new(id: JobId, n: NewJob, now: Millis) -> Self {
        Job {
            id,
            chat_id: n.chat_id,
            user_id: n.user_id,
            request_msg_id: n.request_msg_id,
            status_msg_id: None,
            lang: n.lang,
            url: n.url,
            options: n.options,
            state: JobState::Queued,
            attempts: 0,
            rescues: 0,
            history: vec![(JobState::Queued, now)],
            created_at: now,
            updated_at: now,
            next_attempt_at: n.not_before.unwrap_or(now).max(now),
            last_error: None,
            failure: None,
            file_path: None,
            file_size: None,
            title: None,
            media: None,
            delivery: None,
            lease: None,
            parent: n.parent,
            rescue_mark: None,
        }
    }

    /// Move to `to` if the table allows it, recording when. The store calls
    /// this inside its transaction; nobody else sets `state`.
    pub fn enter(&mut self, to: JobState, now: Millis) -> Result<(), IllegalTransition> {
        if !self.state.can_become(to) {
            return Err(IllegalTransition {
                from: self.state,
                to,
            });
        }
        self.state = to;
        self.updated_at = now;
        self.history.push((to, now));
        if self.history.len() > HISTORY_MAX {
            // Keep the creation entry; drop the oldest after it.
            let cut = self.history.len() - HISTORY_MAX;
            self.history.drain(1..1 + cut);
        }
        // A job that is not being worked on has no lease.
        if !matches!(
            to,
            JobState::Downloading | JobState::Uploading | JobState::Cleaning
        ) {
            self.lease = None;
        }
        Ok(())
    }

    /// The key of this job's media in the file-id cache.
    pub fn cache_key(&self) -> String {
        cache_key(&self.url, &self.options)
    }
}

/// Media-cache key: link + options. Kept textual so an operator can read it.
pub fn cache_key(url: &str, options: &JobOptions) -> String {
    let h = options
        .max_height
        .map(|h| h.to_string())
        .unwrap_or_else(|| "best".into());
    format!("{}|{}|{}", options.kind.name(), h, url.trim())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use JobState::*;

    const LEGAL: [(JobState, JobState); 10] = [
        (Queued, Downloading),
        (Queued, Cleaning),
        (Downloading, Queued),
        (Downloading, Uploading),
        (Downloading, Cleaning),
        (Uploading, Queued),
        (Uploading, Cleaning),
        (Cleaning, Done),
        (Cleaning, Failed),
        (Failed, Queued),
    ];

    #[test]
    fn every_pair_is_legal_exactly_when_listed() {
        for from in JobState::ALL {
            for to in JobState::ALL {
                let expected = LEGAL.contains(&(from, to));
                assert_eq!(from.can_become(to), expected, "{from} -> {to}");
            }
        }
    }

    #[test]
    fn done_is_final_and_failed_only_reopens_by_retry() {
        for to in JobState::ALL {
            assert!(!Done.can_become(to), "done -> {to}");
            assert_eq!(Failed.can_become(to), to == Queued, "failed -> {to}");
        }
    }

    #[test]
    fn finishing_always_goes_through_cleaning() {
        for from in JobState::ALL {
            for to in [Done, Failed] {
                assert_eq!(from.can_become(to), from == Cleaning, "{from} -> {to}");
            }
        }
    }

    #[test]
    fn enter_records_history_and_refuses_illegal_moves() {
        let mut job = sample();
        job.enter(Downloading, 10).unwrap();
        let err = job.enter(Done, 11).unwrap_err();
        assert_eq!(
            err,
            IllegalTransition {
                from: Downloading,
                to: Done
            }
        );
        assert_eq!(job.state, Downloading);
        assert_eq!(job.history, vec![(Queued, 1), (Downloading, 10)]);
    }

    #[test]
    fn history_keeps_the_first_entry_and_the_latest() {
        let mut job = sample();
        let mut now = 1;
        for _ in 0..100 {
            for to in [Downloading, Queued] {
                now += 1;
                job.enter(to, now).unwrap();
            }
        }
        assert_eq!(job.history.len(), HISTORY_MAX);
        assert_eq!(job.history[0], (Queued, 1));
        assert_eq!(*job.history.last().unwrap(), (Queued, now));
        // The kept tail is the latest entries, in order and contiguous.
        for w in job.history[1..].windows(2) {
            assert_eq!(w[1].1, w[0].1 + 1);
        }
    }

    #[test]
    fn state_bytes_round_trip_and_names_parse() {
        for s in JobState::ALL {
            assert_eq!(JobState::from_u8(s.as_u8()), Some(s));
            assert_eq!(s.name().parse::<JobState>(), Ok(s));
        }
        assert_eq!(JobState::from_u8(0), None);
        assert!("finished".parse::<JobState>().is_err());
    }

    #[test]
    fn ids_sort_by_creation_and_expose_their_time() {
        let a = JobId::new();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = JobId::new();
        assert!(a < b);
        assert!(a.as_bytes() < b.as_bytes());
        assert!(b.created_ms() > a.created_ms());
        assert_eq!(a.short().len(), 8);
        assert_eq!(a.to_string().parse::<JobId>().unwrap(), a);
    }

    #[test]
    fn cache_key_differs_by_options() {
        let v = JobOptions::default();
        let a = JobOptions {
            kind: MediaKind::Audio,
            max_height: None,
        };
        let h = JobOptions {
            kind: MediaKind::Video,
            max_height: Some(720),
        };
        let u = "https://example.com/v";
        assert_ne!(cache_key(u, &v), cache_key(u, &a));
        assert_ne!(cache_key(u, &v), cache_key(u, &h));
    }

    pub(crate) fn sample() -> Job {
        Job::new(
            JobId::new(),
            NewJob {
                chat_id: 1,
                user_id: 2,
                request_msg_id: 3,
                lang: "en".into(),
                url: "https://example.com/a".into(),
                options: JobOptions::default(),
                parent: None,
                not_before: None,
            },
            1,
        )
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn state() -> impl Strategy<Value = JobState> {
            proptest::sample::select(JobState::ALL.to_vec())
        }

        proptest! {
            /// Any sequence of requested moves, applied through `enter`, keeps
            /// the job on the legal graph, and nothing leaves `done`.
            #[test]
            fn random_moves_never_leave_the_graph(moves in proptest::collection::vec(state(), 0..64)) {
                let mut job = sample();
                let mut now = 1;
                for to in moves {
                    let from = job.state;
                    now += 1;
                    match job.enter(to, now) {
                        Ok(()) => {
                            prop_assert!(from.can_become(to));
                            prop_assert_ne!(from, Done);
                            prop_assert_eq!(job.state, to);
                        }
                        Err(e) => {
                            prop_assert!(!from.can_become(to));
                            prop_assert_eq!(e.from, from);
                            prop_assert_eq!(job.state, from);
                        }
                    }
                }
                // The history is a walk on the graph starting at queued
                // (once capped, a walk from the first entry kept after it).
                prop_assert_eq!(job.history[0].0, Queued);
                prop_assert!(job.history.len() <= HISTORY_MAX);
                let walk = if job.history.len() == HISTORY_MAX {
                    &job.history[1..]
                } else {
                    &job.history[..]
                };
                for w in walk.windows(2) {
                    prop_assert!(w[0].0.can_become(w[1].0));
                }
                // Reaching done or failed is only possible through cleaning.
                for w in walk.windows(2) {
                    if w[1].0.is_finished() {
                        prop_assert_eq!(w[0].0, Cleaning);
                    }
                }
            }
        }
    }
}
