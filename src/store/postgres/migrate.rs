//! The embedded, versioned migrations, applied at connect.
//!
//! Each missing version is applied in its own transaction holding a
//! transaction-scoped advisory lock, so two nodes starting at once apply it
//! once: the second waits for the lock, then sees the version recorded.

use tokio_postgres::Client;

use super::tx::pg;
use crate::store::StoreError;

/// Every migration, in order. Append only: an applied version never changes.
const MIGRATIONS: &[(i32, &str)] = &[(1, include_str!("migrations/0001_init.sql"))];

/// The versions this build applies, in order (for the invariant check).
pub(super) fn known_versions() -> Vec<i32> {
    MIGRATIONS.iter().map(|m| m.0).collect()
}

/// The advisory lock key of tgdl's migrations ("tgdlmigr" in ASCII).
const LOCK_KEY: i64 = 0x7467_646c_6d69_6772;

pub(super) async fn run(client: &mut Client) -> Result<(), StoreError> {
    // The version table itself is created under the lock too: two sessions
    // creating it at once would collide in the catalog.
    let tx = client.transaction().await.map_err(pg)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
        .await
        .map_err(pg)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    integer     PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await
    .map_err(pg)?;
    let newest: Option<i32> = tx
        .query_one("SELECT max(version) FROM schema_migrations", &[])
        .await
        .map_err(pg)?
        .get(0);
    tx.commit().await.map_err(pg)?;

    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    if let Some(found) = newest.filter(|v| *v > known) {
        return Err(StoreError::NewerSchema {
            found: u32::try_from(found).unwrap_or(u32::MAX),
            known: u32::try_from(known).unwrap_or(0),
        });
    }

    for &(version, sql) in MIGRATIONS {
        let tx = client.transaction().await.map_err(pg)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
            .await
            .map_err(pg)?;
        let applied = tx
            .query_opt(
                "SELECT 1 FROM schema_migrations WHERE version = $1",
                &[&version],
            )
            .await
            .map_err(pg)?
            .is_some();
        if !applied {
            tracing::info!(version, "applying PostgreSQL migration");
            tx.batch_execute(sql).await.map_err(pg)?;
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, now())",
                &[&version],
            )
            .await
            .map_err(pg)?;
        }
        tx.commit().await.map_err(pg)?;
    }
    Ok(())
}
