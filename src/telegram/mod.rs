//! The Telegram side: thin handlers. Each one parses the update, calls one
//! operation of [`JobService`] (or a report), and replies. Long work never
//! runs here: teloxide handles a chat's updates one at a time, so a slow
//! handler would stall that chat.
//!
//! - `commands.rs`: the one list of commands (parse, menu, /help).
//! - `messages.rs`: links and commands in messages.
//! - `callbacks.rs`: inline buttons (the choice, cancel, `/settings`).
//! - `replies.rs`: outcomes of the service turned into catalogue messages.

mod callbacks;
pub mod commands;
mod messages;
mod replies;

use std::sync::Arc;

use teloxide::dispatching::UpdateFilterExt;
use teloxide::prelude::*;
use tokio_util::sync::CancellationToken;

use crate::ops::health::HealthState;
use crate::pipeline::JobService;

/// What every handler gets.
pub struct Deps {
    pub jobs: Arc<JobService>,
    pub health: Arc<HealthState>,
    /// This bot's username, to tell `/cmd@thisbot` from `/cmd@otherbot`.
    pub username: String,
}

/// Run long polling until `shutdown` fires. Updates in flight finish first,
/// so an accepted link is always answered.
pub async fn run_dispatcher(bot: Bot, deps: Arc<Deps>, shutdown: CancellationToken) {
    let handler = dptree::entry()
        .branch(Update::filter_message().endpoint(messages::on_message))
        .branch(Update::filter_callback_query().endpoint(callbacks::on_callback));
    let mut dispatcher = Dispatcher::builder(bot, handler)
        .dependencies(dptree::deps![deps])
        .default_handler(|_| async {})
        .error_handler(LoggingErrorHandler::with_custom_text("handler error"))
        .build();
    let token = dispatcher.shutdown_token();
    let stopper = tokio::spawn(async move {
        shutdown.cancelled().await;
        // `shutdown` refuses while the dispatcher is still starting; retry.
        for _ in 0..200 {
            match token.shutdown() {
                Ok(done) => {
                    done.await;
                    return;
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(25)).await,
            }
        }
    });
    dispatcher.dispatch().await;
    stopper.abort();
}
