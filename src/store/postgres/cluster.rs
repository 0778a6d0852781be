//! What the nodes of one database share besides jobs: their heartbeats
//! (`/health` lists every node) and the alerts' cooldowns (admins hear of a
//! condition once per cooldown for the whole cluster).

use super::tx::{pg, Cached};
use super::PgStore;
use crate::job::Millis;
use crate::store::{NodeBeat, StoreError};

/// Millis as PostgreSQL's bigint (saturating: far-future times stay far).
fn db(ms: Millis) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

impl PgStore {
    pub(super) async fn put_heartbeat(&self, b: &NodeBeat) -> Result<(), StoreError> {
        let client = self.pool.get().await.map_err(StoreError::unavailable)?;
        client
            .exec(
                "INSERT INTO nodes (name, owner, at, in_flight, disk_free_bytes, polling)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (name) DO UPDATE SET owner = EXCLUDED.owner, at = EXCLUDED.at,
                     in_flight = EXCLUDED.in_flight, disk_free_bytes = EXCLUDED.disk_free_bytes,
                     polling = EXCLUDED.polling",
                &[
                    &b.name,
                    &b.owner,
                    &db(b.at),
                    &i32::try_from(b.in_flight).unwrap_or(i32::MAX),
                    &db(b.disk_free_bytes),
                    &b.polling,
                ],
            )
            .await
            .map_err(pg)?;
        Ok(())
    }

    pub(super) async fn list_nodes(&self) -> Result<Vec<NodeBeat>, StoreError> {
        let client = self.pool.get().await.map_err(StoreError::unavailable)?;
        let rows = client
            .q(
                "SELECT name, owner, at, in_flight, disk_free_bytes, polling FROM nodes ORDER BY name",
                &[],
            )
            .await
            .map_err(pg)?;
        Ok(rows
            .iter()
            .map(|r| NodeBeat {
                name: r.get(0),
                owner: r.get(1),
                at: u64::try_from(r.get::<_, i64>(2)).unwrap_or(0),
                in_flight: u32::try_from(r.get::<_, i32>(3)).unwrap_or(0),
                disk_free_bytes: u64::try_from(r.get::<_, i64>(4)).unwrap_or(0),
                polling: r.get(5),
            })
            .collect())
    }

    /// One statement: the row is written only when the last send is at
    /// least a cooldown old, and a written row is returned; two nodes asking
    /// at once serialize on the row, so one of them wins.
    pub(super) async fn take_alert(
        &self,
        key: &str,
        now: Millis,
        cooldown_ms: u64,
    ) -> Result<bool, StoreError> {
        let client = self.pool.get().await.map_err(StoreError::unavailable)?;
        let row = client
            .qopt(
                "INSERT INTO alerts (key, sent_at) VALUES ($1, $2)
                 ON CONFLICT (key) DO UPDATE SET sent_at = EXCLUDED.sent_at
                     WHERE alerts.sent_at + $3 <= EXCLUDED.sent_at
                 RETURNING 1",
                &[&key, &db(now), &db(cooldown_ms)],
            )
            .await
            .map_err(pg)?;
        Ok(row.is_some())
    }
}
