//! Running handlers: the updates of one chat one at a time and in order (a
//! chat's messages are answered in the order they were sent), different
//! chats at once. When a handler returns, its update leaves the inbox: one
//! task takes the handled updates out in batches, so a burst of links costs
//! one store call per batch instead of one per update.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use teloxide::types::{Update, UpdateKind};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use super::{callbacks, messages, Deps};

/// At most this many updates leave the inbox in one store call: a bound on
/// one log record (about 20 bytes each).
const MAX_BATCH: usize = 1000;

pub(super) struct Dispatch {
    deps: Arc<Deps>,
    tracker: TaskTracker,
    /// The queue of each chat that has updates being handled.
    chats: Arc<Mutex<HashMap<i64, mpsc::UnboundedSender<Update>>>>,
    /// Handled updates, on their way out of the inbox (see [`clear_inbox`]);
    /// `None` when updates are not in the inbox (only for the benchmark that
    /// measures what the inbox costs).
    handled: Option<mpsc::UnboundedSender<u32>>,
}

impl Dispatch {
    pub fn new(deps: Arc<Deps>, tracker: TaskTracker, durable: bool) -> Self {
        let handled = durable.then(|| {
            let (handled, rx) = mpsc::unbounded_channel();
            tracker.spawn(clear_inbox(rx, deps.clone()));
            handled
        });
        Dispatch {
            deps,
            tracker,
            chats: Arc::default(),
            handled,
        }
    }

    /// Queue an update behind its chat's earlier ones.
    pub fn send(&self, update: Update) {
        let chat = update
            .chat()
            .map(|c| c.id.0)
            .or_else(|| update.from().map(|u| u.id.0 as i64))
            .unwrap_or(0);
        let mut chats = self.chats.lock().unwrap();
        let update = match chats.get(&chat) {
            Some(tx) => match tx.send(update) {
                Ok(()) => return,
                Err(e) => e.0,
            },
            None => update,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(update);
        chats.insert(chat, tx);
        let (deps, all, handled) = (self.deps.clone(), self.chats.clone(), self.handled.clone());
        self.tracker.spawn(serve_chat(chat, rx, deps, all, handled));
    }
}

/// Handle a chat's updates until its queue is empty. The emptiness check and
/// the removal happen under the map's lock, which `send` also holds, so an
/// update is never left in a queue nobody serves.
async fn serve_chat(
    chat: i64,
    mut rx: mpsc::UnboundedReceiver<Update>,
    deps: Arc<Deps>,
    chats: Arc<Mutex<HashMap<i64, mpsc::UnboundedSender<Update>>>>,
    handled: Option<mpsc::UnboundedSender<u32>>,
) {
    loop {
        let next = match rx.try_recv() {
            Ok(u) => u,
            Err(_) => {
                let mut map = chats.lock().unwrap();
                match rx.try_recv() {
                    Ok(u) => u,
                    Err(_) => {
                        map.remove(&chat);
                        return;
                    }
                }
            }
        };
        let id = next.id.0;
        handle(&deps, next).await;
        if let Some(h) = &handled {
            // Closed only once every handler is done: never here.
            let _ = h.send(id);
        }
    }
}

/// Take handled updates out of the inbox, as many at a time as have
/// finished meanwhile, until every sender is gone (polling stopped and
/// every handler returned), so none handled before a shutdown is left in.
async fn clear_inbox(mut handled: mpsc::UnboundedReceiver<u32>, deps: Arc<Deps>) {
    let mut batch = Vec::new();
    while handled.recv_many(&mut batch, MAX_BATCH).await > 0 {
        if let Err(e) = deps.jobs.store.inbox_done(std::mem::take(&mut batch)).await {
            // They stay in the inbox and are handled again after a restart;
            // every handler's effect is idempotent under that (see
            // ARCHITECTURE.md).
            tracing::error!(error = %e, "cannot mark updates handled");
        }
    }
}

async fn handle(deps: &Arc<Deps>, update: Update) {
    let id = update.id.0;
    // Who sent it: how an operator finds their own id for `admins`.
    let user_id = update.from().map(|u| u.id.0);
    tracing::debug!(update = id, user_id, "update received");
    let result = match update.kind {
        UpdateKind::Message(m) => messages::on_message(m, deps.clone()).await,
        UpdateKind::CallbackQuery(q) => callbacks::on_callback(q, deps.clone()).await,
        _ => Ok(()),
    };
    if let Err(e) = result {
        tracing::warn!(update = id, error = %e, "handler error");
    }
}
