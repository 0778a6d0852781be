//! The status message of one job, edited with progress.
//!
//! Only a failure's final line is awaited (its caller replies instead when it
//! cannot be shown); progress, stage lines and the deletion after delivery
//! go out in the background, so a worker never waits on a chat's pacing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use teloxide::types::InlineKeyboardMarkup;
use teloxide::{ApiError, RequestError};
use tokio::task::JoinHandle;

use super::board::Board;
use super::pacer::{Edited, PaceError, Priority};
use super::Api;
use crate::job::JobId;

/// The bot's status message for one job: progress edits at most once per
/// interval, never with unchanged text, sent in the background through the
/// pacer (a waiting one is replaced by the next, and the download never
/// waits for Telegram); stage changes and final lines are urgent and awaited.
/// "Message is not modified" counts as success.
///
/// In a group the message may be a [`Board`] shared with other jobs: then
/// this job's text is its line on the board, and the board is edited.
pub struct StatusMessage {
    api: Api,
    chat: i64,
    message: Option<i32>,
    /// The job this message is about, to find its line on a board.
    job: Option<JobId>,
    board: Option<Arc<Board>>,
    interval: Duration,
    last_text: String,
    next_allowed: Instant,
    /// When the latest background edit actually went out: it may have
    /// waited in the pacer, and the interval counts from there too.
    sent_at: Arc<std::sync::Mutex<Option<Instant>>>,
    /// The latest background edit still on its way.
    in_flight: Option<JoinHandle<()>>,
    /// Buttons kept under the text: an edit without them would remove them.
    keyboard: Option<InlineKeyboardMarkup>,
}

fn edited(r: Result<Edited<teloxide::types::Message>, PaceError>) -> bool {
    match r {
        Ok(_) | Err(PaceError::Request(RequestError::Api(ApiError::MessageNotModified))) => true,
        Err(e) => {
            tracing::debug!(error = %e, "status edit failed");
            false
        }
    }
}

impl StatusMessage {
    pub fn new(api: Api, chat_id: i64, message_id: Option<i32>, interval: Duration) -> Self {
        StatusMessage {
            api,
            chat: chat_id,
            message: message_id,
            job: None,
            board: None,
            interval,
            last_text: String::new(),
            next_allowed: Instant::now(),
            sent_at: Arc::default(),
            in_flight: None,
            keyboard: None,
        }
    }

    /// Keep `keyboard` under every edit of this message's own text (a
    /// group's shared board has no buttons, so it is not used there).
    pub fn with_keyboard(mut self, keyboard: InlineKeyboardMarkup) -> Self {
        self.keyboard = Some(keyboard);
        self
    }

    /// The status message of `job`: when it is a group's shared board, this
    /// job's text goes to its line there.
    pub fn for_job(mut self, job: JobId) -> Self {
        self.job = Some(job);
        self.find_board();
        self
    }

    fn find_board(&mut self) {
        if let (Some(id), Some(job)) = (self.message, self.job) {
            self.board = self.api.boards.find(self.chat, id).filter(|b| b.holds(job));
        }
    }

    /// A progress edit, if the interval allows one now; returns whether one
    /// was started.
    pub fn update(&mut self, text: &str) -> bool {
        let now = Instant::now();
        let sent = *self.sent_at.lock().unwrap_or_else(|e| e.into_inner());
        if now < self.next_allowed || sent.is_some_and(|t| now < t + self.interval) {
            return false;
        }
        self.show(text)
    }

    /// No progress edit before one interval from now (stage lines and
    /// forced edits still go).
    pub fn hold(&mut self) {
        self.next_allowed = Instant::now() + self.interval;
    }

    /// A stage line ("downloading", "sending"), whatever the interval; sent
    /// in the background like progress, replacing a progress edit still
    /// waiting. Returns whether one was started.
    pub fn show(&mut self, text: &str) -> bool {
        let Some(id) = self.message else {
            return false;
        };
        if text == self.last_text {
            return false;
        }
        self.next_allowed = Instant::now() + self.interval;
        self.last_text = text.to_string();
        if let (Some(board), Some(job)) = (&self.board, self.job) {
            if board.set(job, text) {
                self.api.refresh_board(board, Priority::Progress);
            }
            return true;
        }
        let (api, chat, text) = (self.api.clone(), self.chat, text.to_string());
        let sent_at = self.sent_at.clone();
        let keyboard = self.keyboard.clone();
        self.in_flight = Some(self.api.in_background(async move {
            let result = api
                .edit(chat, id, &text, keyboard, Priority::Progress)
                .await;
            if matches!(result, Ok(Edited::Sent(_))) {
                *sent_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
            }
            edited(result);
        }));
        true
    }

    /// An edit regardless of the interval (stage changes, final lines),
    /// still skipping unchanged text; a waiting progress edit is dropped.
    pub async fn force(&mut self, text: &str) -> bool {
        let Some(id) = self.message else {
            return false;
        };
        if text == self.last_text {
            return false;
        }
        if let (Some(board), Some(job)) = (&self.board, self.job) {
            board.set(job, text);
            let shown = edited(self.api.edit_board(board, Priority::Urgent).await);
            if shown {
                self.last_text = text.to_string();
                self.next_allowed = Instant::now() + self.interval;
            }
            return shown;
        }
        if edited(
            self.api
                .edit(self.chat, id, text, self.keyboard.clone(), Priority::Urgent)
                .await,
        ) {
            self.last_text = text.to_string();
            self.next_allowed = Instant::now() + self.interval;
            true
        } else {
            false
        }
    }

    /// Remove the status message (after a successful delivery), in the
    /// background.
    pub fn delete(&mut self) {
        if let (Some(board), Some(job)) = (self.board.take(), self.job) {
            self.message = None;
            // Others still on the board keep it; the last one out removes it.
            if board.remove(job) {
                self.api.close_board(&board);
            } else {
                self.api.refresh_board(&board, Priority::Progress);
            }
            return;
        }
        if let Some(id) = self.message.take() {
            let (api, chat) = (self.api.clone(), self.chat);
            // A stage line still waiting would fail on a deleted message.
            if let Some(h) = self.in_flight.take() {
                h.abort();
            }
            self.api.in_background(async move {
                if let Err(e) = api.delete(chat, id).await {
                    tracing::debug!(error = %e, "status delete failed");
                }
            });
        }
    }

    /// Whether this is a line on a group's shared status message.
    pub fn is_shared(&self) -> bool {
        self.board.is_some()
    }

    pub fn message_id(&self) -> Option<i32> {
        self.message
    }

    /// Start editing `message_id` when it became known only after this was
    /// built (a worker can claim a job before the handler has recorded its
    /// acknowledgement).
    pub fn attach(&mut self, message_id: i32) {
        if self.message.is_none() {
            self.message = Some(message_id);
            self.find_board();
        }
    }
}
