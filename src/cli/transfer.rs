//! `tgdl export` and `tgdl import`: a store's contents as versioned JSON
//! lines ([`crate::store::transfer`]), and back into an empty store, on
//! either backend. Moving to another machine or backend is an export then
//! an import (the file is the same whichever backend wrote it).
//!
//! sled: the installation must be stopped (the bot holds the database).
//! PostgreSQL: an export may run while nodes run (it reads one consistent
//! snapshot); an import needs an empty database.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::progress::Bar;
use super::CliError;
use crate::config::{Config, StorageBackend};
use crate::job::now_ms;
use crate::pipeline::recovery::Progress;
use crate::store::transfer::{self, Transfer, TransferError};
use crate::store::{JobStore, PgStore, SledStore, StoreError};

fn failed(e: impl Into<anyhow::Error>) -> CliError {
    CliError::Other(e.into())
}

fn say(text: String) -> CliError {
    failed(anyhow::anyhow!(text))
}

/// The store of `config`, opened for a transfer.
enum Opened {
    Sled(Arc<SledStore>),
    Pg(Box<PgStore>),
}

impl Opened {
    fn transfer(&self) -> &dyn Transfer {
        match self {
            Opened::Sled(s) => s,
            Opened::Pg(s) => &**s,
        }
    }

    /// Where the store is, for messages.
    fn place(&self, config: &Config) -> String {
        match self {
            Opened::Sled(_) => config.db_dir().display().to_string(),
            Opened::Pg(s) => s.shown(),
        }
    }
}

/// The store of `config`; a sled database is created when `create` and
/// absent. "The bot holds it" is said as what to do.
async fn open(config: &Config, create: bool) -> Result<Opened, CliError> {
    if config.storage.backend == StorageBackend::Postgres {
        return PgStore::connect(&config.storage.postgres_url)
            .await
            .map(|s| Opened::Pg(Box::new(s)))
            .map_err(|e| say(format!("cannot reach PostgreSQL: {e}")));
    }
    let dir = config.db_dir();
    if !create && !dir.exists() {
        return Err(say(format!(
            "no database at {} (has the bot ever run with this config?)",
            dir.display()
        )));
    }
    let store = tokio::task::spawn_blocking(move || SledStore::open(&dir))
        .await
        .map_err(failed)?;
    store
        .map(|s| Opened::Sled(Arc::new(s)))
        .map_err(|e| match e {
            StoreError::InUse { path } => say(format!(
                "the bot is running and holds the database at {path}; stop it first \
             (an export or import is of a stopped installation)"
            )),
            e => failed(e),
        })
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(failed)
}

/// `tgdl export [--output FILE]`: to stdout, or to FILE by way of a
/// temporary file renamed into place once complete and synced, so a failed
/// export never leaves a file that looks whole.
pub(super) fn export(config: &Config, output: Option<PathBuf>) -> Result<(), CliError> {
    runtime()?.block_on(async {
        let store = open(config, false).await?;
        let store = store.transfer();
        let bar = Bar::on_terminal();
        bar.phase(
            "exporting jobs",
            store.state_counts().await.map_err(failed)?.total(),
        );
        let totals = match &output {
            None => {
                let mut out = BufWriter::new(std::io::stdout());
                transfer::export(store, &mut out, now_ms(), &mut || bar.advance()).await
            }
            Some(path) => export_to_file(store, path, &bar).await,
        }
        .map_err(failed)?;
        bar.finish();
        let whereto = output.map_or("stdout".to_string(), |p| p.display().to_string());
        eprintln!("exported {} to {whereto}", totals.describe());
        Ok(())
    })
}

async fn export_to_file(
    store: &dyn Transfer,
    path: &Path,
    bar: &Bar,
) -> Result<transfer::Totals, TransferError> {
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let result = async {
        let file = File::create(&partial)?;
        let mut out = BufWriter::new(file);
        let totals = transfer::export(store, &mut out, now_ms(), &mut || bar.advance()).await?;
        out.flush()?;
        out.get_ref().sync_all()?;
        std::fs::rename(&partial, path)?;
        Ok(totals)
    }
    .await;
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

/// `tgdl import FILE`: check the whole file, then load it into the empty
/// store of `config`, then verify the counts and the store's consistency.
pub(super) fn import(config: &Config, file: &Path) -> Result<(), CliError> {
    let reader = || {
        File::open(file)
            .map(BufReader::new)
            .map_err(|e| say(format!("cannot read {}: {e}", file.display())))
    };
    let what = |e: TransferError| say(format!("{}: {e}", file.display()));
    let totals = transfer::validate(reader()?).map_err(what)?;
    runtime()?.block_on(async {
        let opened = open(config, true).await?;
        let store = opened.transfer();
        let place = opened.place(config);
        if !store.is_empty().await.map_err(failed)? {
            return Err(say(match &opened {
                Opened::Sled(_) => format!(
                    "the database at {place} is not empty; import loads only into a new one \
                     (point storage.data_dir at an empty folder)"
                ),
                Opened::Pg(_) => format!(
                    "the PostgreSQL database {place} is not empty; import loads only into \
                     a new one (create an empty database and point storage.postgres_url at it)"
                ),
            }));
        }
        let bar = Bar::on_terminal();
        bar.phase("importing jobs", totals.jobs);
        let result = transfer::import(store, reader()?, &totals, &mut || bar.advance()).await;
        bar.finish();
        if let Err(e) = result {
            let undo = match &opened {
                Opened::Sled(_) => "remove that folder",
                Opened::Pg(_) => "drop and create that database again",
            };
            return Err(say(format!(
                "{}: {e}; the database at {place} now holds part of it: {undo} \
                 before importing again",
                file.display(),
            )));
        }
        if let Opened::Sled(s) = &opened {
            let s = s.clone();
            tokio::task::spawn_blocking(move || s.flush())
                .await
                .map_err(failed)?
                .map_err(failed)?;
        }
        println!(
            "imported {} into {place}; counts match and the consistency check is clean",
            totals.describe(),
        );
        Ok(())
    })
}
