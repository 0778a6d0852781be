//! The Telegram side: thin handlers. Each one parses the update, calls one
//! operation of [`JobService`] (or a report), and replies. Long work never
//! runs here: teloxide handles a chat's updates one at a time, so a slow
//! handler would stall that chat.
//!
//! - `intake.rs`: `getUpdates` -> the inbox (durable) -> the dispatcher.
//! - `dispatch.rs`: a chat's updates one at a time, chats at once.
//! - `commands.rs`: the one list of commands (parse, menu, /help).
//! - `messages.rs`: links and commands in messages.
//! - `callbacks.rs`: inline buttons (the choice, cancel, `/settings`).
//! - `replies.rs`: outcomes of the service turned into catalogue messages.

mod callbacks;
pub mod commands;
mod dispatch;
pub mod intake;
mod messages;
mod replies;

use std::sync::Arc;

use crate::botapi::Api;
use crate::ops::health::HealthState;
use crate::ops::update::Updater;
use crate::pipeline::JobService;

/// What every handler gets.
pub struct Deps {
    /// Every Bot API call goes through it (paced).
    pub api: Api,
    pub jobs: Arc<JobService>,
    pub health: Arc<HealthState>,
    /// Where `/update` sends its request (the updater task does the work).
    pub updater: Updater,
    /// This bot's username, to tell `/cmd@thisbot` from `/cmd@otherbot`.
    pub username: String,
}
