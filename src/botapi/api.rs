//! [`Api`]: the Bot API as the bot uses it. Every call passes one [`Pacer`],
//! so the bot stays within Telegram's limits before Telegram has to refuse,
//! a 429 is waited out and retried (never dropped), and replies a user must
//! see go before progress edits.

use std::sync::Arc;

use teloxide::payloads::SendMessage;
use teloxide::prelude::*;
use teloxide::types::{CallbackQueryId, InlineKeyboardMarkup, MessageId, ReplyParameters};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::board::{Board, Boards};
use super::pacer::{Edited, MessageKey, PaceError, Pacer, PacerConfig, Priority, Target};
use super::sent_id;
use super::text::{truncate_utf16, TEXT_MAX};

#[derive(Clone)]
pub struct Api {
    pub bot: Bot,
    pub pacer: Pacer,
    /// Where calls nobody waits for run (a status edit, a deletion), so
    /// shutdown can wait for them too.
    tracker: TaskTracker,
    /// The shared status messages of groups.
    pub boards: Arc<Boards>,
}

impl Api {
    /// Must be called within the runtime (the pacer spawns its driver).
    pub fn new(
        bot: Bot,
        config: PacerConfig,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) -> Self {
        Api {
            bot,
            pacer: Pacer::new(config, shutdown),
            tracker,
            boards: Arc::default(),
        }
    }

    /// Run a call nobody waits for (its failure is only logged by `call`).
    pub fn in_background<F>(&self, call: F) -> JoinHandle<()>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(call)
    }

    /// A text to a chat, replying to `reply_to` when given (and still sent
    /// if that message is gone), cut to Telegram's limit. The new message's
    /// id: the answer is read for nothing else (see `sent_id.rs`).
    pub async fn send(
        &self,
        chat: i64,
        reply_to: Option<i32>,
        text: &str,
        markup: Option<InlineKeyboardMarkup>,
    ) -> Result<i32, PaceError> {
        let text = truncate_utf16(text, TEXT_MAX);
        let sent = self
            .pacer
            .call(chat, Priority::Urgent, || {
                let mut p = SendMessage::new(ChatId(chat), text.clone());
                p.reply_parameters = reply_to
                    .map(|m| ReplyParameters::new(MessageId(m)).allow_sending_without_reply());
                p.reply_markup = markup.clone().map(Into::into);
                sent_id::request(&self.bot, p)
            })
            .await?;
        Ok(sent.message_id)
    }

    /// Replace a message's text (and keyboard, when given). Edits of one
    /// message are coalesced: a waiting edit gives way to a newer one.
    pub async fn edit(
        &self,
        chat: i64,
        message_id: i32,
        text: &str,
        markup: Option<InlineKeyboardMarkup>,
        priority: Priority,
    ) -> Result<Edited<Message>, PaceError> {
        let text = truncate_utf16(text, TEXT_MAX);
        self.pacer
            .edit(MessageKey::new(chat, message_id), priority, || {
                let mut req =
                    self.bot
                        .edit_message_text(ChatId(chat), MessageId(message_id), text.clone());
                if let Some(k) = &markup {
                    req = req.reply_markup(k.clone());
                }
                req
            })
            .await
    }

    /// Replace a message's keyboard only (quality buttons added later).
    pub async fn edit_markup(
        &self,
        chat: i64,
        message_id: i32,
        markup: InlineKeyboardMarkup,
    ) -> Result<(), PaceError> {
        self.pacer
            .call(chat, Priority::Progress, || {
                self.bot
                    .edit_message_reply_markup(ChatId(chat), MessageId(message_id))
                    .reply_markup(markup.clone())
            })
            .await
            .map(|_| ())
    }

    pub async fn delete(&self, chat: i64, message_id: i32) -> Result<(), PaceError> {
        self.pacer
            .call(chat, Priority::Urgent, || {
                self.bot.delete_message(ChatId(chat), MessageId(message_id))
            })
            .await
            .map(|_| ())
    }

    /// The small notice a button press gets.
    pub async fn answer_callback(&self, id: &CallbackQueryId, text: &str) -> Result<(), PaceError> {
        self.pacer
            .call(Target::NoChat, Priority::Urgent, || {
                self.bot
                    .answer_callback_query(id.clone())
                    .text(text.to_string())
            })
            .await
            .map(|_| ())
    }

    /// Edit a board with its text at the moment the pacer lets the edit go,
    /// in the background. Progress edits coalesce in the pacer; an urgent one
    /// (a new job's acknowledgement) is skipped while another waits, since
    /// that one will carry this change too.
    pub fn refresh_board(&self, board: &Arc<Board>, priority: Priority) {
        if priority == Priority::Urgent && !board.claim_urgent() {
            return;
        }
        let (api, board) = (self.clone(), board.clone());
        self.in_background(async move {
            if let Err(e) = api.edit_board(&board, priority).await {
                tracing::debug!(error = %e, "board edit failed");
            }
        });
    }

    /// Edit a board now with its latest text (a final line), waiting for
    /// Telegram's answer.
    pub async fn edit_board(
        &self,
        board: &Board,
        priority: Priority,
    ) -> Result<Edited<Message>, PaceError> {
        let (chat, id) = (board.chat, board.message);
        self.pacer
            .edit(MessageKey::new(chat, id), priority, || {
                if priority == Priority::Urgent {
                    board.urgent_sent();
                }
                let text = truncate_utf16(&board.text(), TEXT_MAX);
                self.bot
                    .edit_message_text(ChatId(chat), MessageId(id), text)
            })
            .await
    }

    /// A board's last line left: forget it and delete its message, in the
    /// background.
    pub fn close_board(&self, board: &Board) {
        self.boards.forget(board);
        let (api, chat, id) = (self.clone(), board.chat, board.message);
        self.in_background(async move {
            if let Err(e) = api.delete(chat, id).await {
                tracing::debug!(error = %e, "board delete failed");
            }
        });
    }
}
