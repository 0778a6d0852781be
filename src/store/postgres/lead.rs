//! The one poller of a cluster: the node that holds a session advisory lock
//! polls Telegram. The lock lives as long as the session that took it, so a
//! node that dies (or loses its connection) frees it at once, and a waiting
//! node takes it at its next try.

use std::time::Duration;

use deadpool_postgres::{ClientWrapper, Object};
use tokio_util::sync::CancellationToken;

use super::PgStore;
use crate::store::{PollerLease, StoreError};

/// The advisory lock's key: "tgdl" and "poll" in ASCII, so it is unlikely to
/// meet another application's key on a shared server.
const POLLER_LOCK: i64 = 0x7467_646c_706f_6c6c;

/// How often a waiting node tries the lock, and how often the holder checks
/// its session is alive: a dead poller is replaced within about this long
/// (plus the server's notice of the dead session).
const TRY_EVERY: Duration = Duration::from_secs(2);

impl PgStore {
    /// Wait for the lock on a session of its own, taken out of the pool so
    /// the lock is never handed to another caller with the connection.
    pub(super) async fn lead(&self) -> Result<PollerLease, StoreError> {
        loop {
            let client = self.pool.get().await.map_err(StoreError::unavailable)?;
            let client = Object::take(client);
            let got: bool = client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&POLLER_LOCK])
                .await
                .map_err(StoreError::unavailable)?
                .get(0);
            if got {
                let (lost, release) = (CancellationToken::new(), CancellationToken::new());
                tokio::spawn(hold(client, lost.clone(), release.clone()));
                return Ok(PollerLease::held(lost, release));
            }
            drop(client);
            tokio::time::sleep(TRY_EVERY).await;
        }
    }
}

/// Keep the session (and so the lock) until released; a session that stops
/// answering means the lock may be gone: say so.
async fn hold(client: ClientWrapper, lost: CancellationToken, release: CancellationToken) {
    loop {
        tokio::select! {
            _ = release.cancelled() => {
                // Closing the session releases the lock; unlocking first
                // frees it without waiting for the server to notice.
                let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&POLLER_LOCK]).await;
                return;
            }
            _ = tokio::time::sleep(TRY_EVERY) => {}
        }
        if client.simple_query("SELECT 1").await.is_err() {
            tracing::error!("lost the PostgreSQL session that holds the poller lock");
            lost.cancel();
            return;
        }
    }
}
