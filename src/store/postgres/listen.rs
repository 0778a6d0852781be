//! LISTEN/NOTIFY: what one node tells the others at once. A transaction
//! that queues a job notifies `tgdl_jobs` (delivered at its commit), and
//! a cancel of a job another node runs notifies `tgdl_cancel` with the
//! job's id. Notifications are a fast path only: workers also poll, and a
//! cancel is recorded on the job, which its owner's lease renewal reads.

use std::future::poll_fn;

use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};

use super::PgStore;
use crate::job::JobId;
use crate::store::{StoreError, StoreEvent};

/// The channel of queued jobs (no payload).
pub(super) const JOBS_CHANNEL: &str = "tgdl_jobs";
/// The channel of cancels (payload: the job id).
pub(super) const CANCEL_CHANNEL: &str = "tgdl_cancel";

/// Events buffered for a slow reader; more `JobReady` than this say
/// nothing new and are dropped.
const BUFFER: usize = 256;

impl PgStore {
    /// A session of its own that listens to both channels, for as long as
    /// the receiver is kept. The receiver ends when the session does (the
    /// caller subscribes again).
    pub(super) async fn listen(&self) -> Result<mpsc::Receiver<StoreEvent>, StoreError> {
        let (client, mut connection) = self
            .config
            .connect(NoTls)
            .await
            .map_err(StoreError::unavailable)?;
        let (tx, rx) = mpsc::channel(BUFFER);
        // The session's messages arrive only while the connection is polled,
        // so polling starts before LISTEN is sent.
        let listening = tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    m = poll_fn(|cx| connection.poll_message(cx)) => m,
                    _ = tx.closed() => return,
                };
                let event = match msg {
                    Some(Ok(AsyncMessage::Notification(n))) => match n.channel() {
                        JOBS_CHANNEL => StoreEvent::JobReady,
                        CANCEL_CHANNEL => match n.payload().parse() {
                            Ok(id) => StoreEvent::CancelAnnounced(JobId(id)),
                            Err(_) => continue,
                        },
                        _ => continue,
                    },
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "the LISTEN session ended");
                        return;
                    }
                    None => return,
                };
                match tx.try_send(event) {
                    Ok(()) | Err(mpsc::error::TrySendError::Full(StoreEvent::JobReady)) => {}
                    Err(mpsc::error::TrySendError::Full(e)) => {
                        if tx.send(e).await.is_err() {
                            return;
                        }
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                }
            }
        });
        let sql = format!("LISTEN {JOBS_CHANNEL}; LISTEN {CANCEL_CHANNEL}");
        if let Err(e) = client.batch_execute(&sql).await {
            listening.abort();
            return Err(StoreError::unavailable(e));
        }
        // The client must live as long as the session: it goes with the
        // task's lifetime, ended by the receiver's drop or the session's end.
        tokio::spawn(async move {
            let _client = client;
            let _ = listening.await;
        });
        Ok(rx)
    }

    /// Tell the node that runs `id` that a cancel was recorded on it.
    pub(super) async fn notify_cancel(&self, id: JobId) -> Result<(), StoreError> {
        let client = self.pool.get().await.map_err(StoreError::unavailable)?;
        client
            .execute(
                "SELECT pg_notify($1, $2)",
                &[&CANCEL_CHANNEL, &id.to_string()],
            )
            .await
            .map_err(StoreError::unavailable)?;
        Ok(())
    }
}
