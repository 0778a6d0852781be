//! A throwaway PostgreSQL database per test, on the local server.
//!
//! [`TempDb::create`] makes `tgdl_test_<random>` and hands out its URL; the
//! guard drops the database when it goes out of scope, also when the test
//! panics, forcing off any connection still open. The server is
//! `TGDL_TEST_PG` (an admin URL), by default the local trust-auth server.

#![allow(dead_code)]

use tokio_postgres::NoTls;

/// The admin connection used to create and drop test databases.
pub fn admin_url() -> String {
    std::env::var("TGDL_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database that exists for as long as this guard does.
pub struct TempDb {
    pub name: String,
    pub url: String,
}

impl TempDb {
    pub async fn create() -> TempDb {
        let admin = admin_url();
        let name = format!("tgdl_test_{}", uuid::Uuid::now_v7().simple());
        let (client, conn) = tokio_postgres::connect(&admin, NoTls)
            .await
            .unwrap_or_else(|e| {
                panic!("cannot reach the test PostgreSQL server at {admin}: {e} (is it running?)")
            });
        let task = tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        drop(client);
        let _ = task.await;
        let url = with_dbname(&admin, &name);
        TempDb { name, url }
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime (maybe while it unwinds), which
        // cannot be blocked on; a thread with its own runtime does the work.
        let (admin, name) = (admin_url(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async move {
                let (client, conn) = tokio_postgres::connect(&admin, NoTls)
                    .await
                    .map_err(|e| e.to_string())?;
                let task = tokio::spawn(conn);
                let res = client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
                    .map_err(|e| e.to_string());
                drop(client);
                let _ = task.await;
                res
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("could not drop test database {}: {e}", self.name),
            Err(_) => eprintln!(
                "could not drop test database {}: thread panicked",
                self.name
            ),
        }
    }
}

/// `url` with its database name replaced by `db`.
fn with_dbname(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let after_scheme = base.find("://").map_or(0, |i| i + 3);
    let base = match base[after_scheme..].find('/') {
        Some(i) => &base[..after_scheme + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}
