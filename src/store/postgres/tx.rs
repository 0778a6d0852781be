//! One transaction with retries, and how its failures become [`StoreError`]s.

use std::future::Future;
use std::pin::Pin;

use deadpool_postgres::Object;
use deadpool_postgres::Transaction;
use tokio_postgres::error::SqlState;

use super::PgStore;
use crate::store::StoreError;

/// Why a transaction body stopped. Everything but [`Fail::Store`] may be
/// retried; the body runs again from the start in a new transaction.
pub(super) enum Fail {
    /// The answer for the caller (a conflict, a refusal, a corrupt record).
    Store(StoreError),
    /// The database failed; retried when it was a serialization failure or
    /// a deadlock, which roll back only the victim.
    Pg(tokio_postgres::Error),
    /// Another transaction created the same request's job after this one
    /// looked: run again, to find and return that job.
    Raced,
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Self {
        Fail::Store(e)
    }
}

impl From<tokio_postgres::Error> for Fail {
    fn from(e: tokio_postgres::Error) -> Self {
        Fail::Pg(e)
    }
}

impl From<crate::job::IllegalTransition> for Fail {
    fn from(e: crate::job::IllegalTransition) -> Self {
        Fail::Store(e.into())
    }
}

impl From<crate::store::codec::CodecError> for Fail {
    fn from(e: crate::store::codec::CodecError) -> Self {
        Fail::Store(e.into())
    }
}

/// A transaction body: it borrows the transaction, so it is boxed.
pub(super) type TxFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, Fail>> + Send + 'a>>;

/// Runs of one transaction body before contention is reported as an error.
const ATTEMPTS: usize = 8;

/// A database error as the contract reports it.
pub(super) fn pg(e: tokio_postgres::Error) -> StoreError {
    StoreError::unavailable(e)
}

/// Transactions kept failing on conflicts with other transactions.
#[derive(Debug, thiserror::Error)]
#[error("gave up after {0} attempts: concurrent transactions kept conflicting")]
struct Contention(usize);

fn retryable(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
    )
}

impl PgStore {
    pub(super) async fn client(&self) -> Result<Object, StoreError> {
        self.pool.get().await.map_err(StoreError::unavailable)
    }

    /// Run `body` in one transaction and commit it; roll back on any
    /// failure. Retries conflicts with other transactions a few times. A job
    /// record found corrupt is quarantined after the rollback, and the call
    /// answers [`StoreError::Corrupt`], as sled does.
    pub(super) async fn transact<T, F>(&self, body: F) -> Result<T, StoreError>
    where
        T: Send,
        F: for<'a> Fn(&'a Transaction<'a>) -> TxFuture<'a, T> + Send + Sync,
    {
        match self.transact_raw(body).await {
            Err(StoreError::Corrupt { id, source }) => {
                self.quarantine_job(id, &source.to_string()).await?;
                Err(StoreError::Corrupt { id, source })
            }
            other => other,
        }
    }

    /// [`PgStore::transact`] without the quarantine (which itself runs here).
    pub(super) async fn transact_raw<T, F>(&self, body: F) -> Result<T, StoreError>
    where
        T: Send,
        F: for<'a> Fn(&'a Transaction<'a>) -> TxFuture<'a, T> + Send + Sync,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg)?;
            let res = match body(&tx).await {
                Ok(v) => tx.commit().await.map(|()| v).map_err(Fail::Pg),
                Err(e) => {
                    // The rollback's own failure changes nothing: the
                    // transaction did not commit either way.
                    let _ = tx.rollback().await;
                    Err(e)
                }
            };
            match res {
                Ok(v) => return Ok(v),
                Err(Fail::Store(e)) => return Err(e),
                Err(Fail::Pg(e)) if retryable(&e) && attempt < ATTEMPTS => continue,
                Err(Fail::Pg(e)) => return Err(pg(e)),
                Err(Fail::Raced) if attempt < ATTEMPTS => continue,
                Err(Fail::Raced) => return Err(StoreError::unavailable(Contention(attempt))),
            }
        }
    }
}

/// Statements prepared once per connection, in deadpool's statement cache.
/// A statement given as text costs tokio-postgres a prepare round trip on
/// every call; the hot paths (a claim, a state change) run the same few
/// statements over and over.
#[async_trait::async_trait]
pub(super) trait Cached: deadpool_postgres::GenericClient + Sync {
    async fn exec(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error> {
        let st = self.prepare_cached(sql).await?;
        self.execute(&st, params).await
    }

    async fn q(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
        let st = self.prepare_cached(sql).await?;
        self.query(&st, params).await
    }

    async fn q1(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<tokio_postgres::Row, tokio_postgres::Error> {
        let st = self.prepare_cached(sql).await?;
        self.query_one(&st, params).await
    }

    async fn qopt(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Option<tokio_postgres::Row>, tokio_postgres::Error> {
        let st = self.prepare_cached(sql).await?;
        self.query_opt(&st, params).await
    }
}

impl<T: deadpool_postgres::GenericClient + Sync> Cached for T {}
