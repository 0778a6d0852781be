//! `tgdl export` and `tgdl import`: a stopped installation's store as
//! versioned JSON lines ([`crate::store::transfer`]), and back into an empty
//! store. Moving to another machine or backend is an export then an import.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use super::progress::Bar;
use super::CliError;
use crate::config::Config;
use crate::job::now_ms;
use crate::pipeline::recovery::Progress;
use crate::store::transfer::{self, Transfer, TransferError};
use crate::store::{JobStore, SledStore, StoreError};

fn failed(e: impl Into<anyhow::Error>) -> CliError {
    CliError::Other(e.into())
}

/// The store of `config`, created when `create` and absent; "the bot holds
/// it" said as what to do.
fn open(config: &Config, create: bool) -> Result<SledStore, CliError> {
    let dir = config.db_dir();
    if !create && !dir.exists() {
        return Err(failed(anyhow::anyhow!(
            "no database at {} (has the bot ever run with this config?)",
            dir.display()
        )));
    }
    SledStore::open(&dir).map_err(|e| match e {
        StoreError::Locked { path } => failed(anyhow::anyhow!(
            "the bot is running and holds the database at {path}; stop it first \
             (an export or import is of a stopped installation)"
        )),
        e => failed(e),
    })
}

/// `tgdl export [--output FILE]`: to stdout, or to FILE by way of a
/// temporary file renamed into place once complete and synced, so a failed
/// export never leaves a file that looks whole.
pub(super) fn export(config: &Config, output: Option<PathBuf>) -> Result<(), CliError> {
    let store = open(config, false)?;
    let bar = Bar::on_terminal();
    bar.phase("exporting jobs", store.counts().map_err(failed)?.total());
    let totals = match &output {
        None => {
            let stdout = std::io::stdout();
            let mut out = BufWriter::new(stdout.lock());
            transfer::export(&store, &mut out, now_ms(), &mut || bar.advance())
        }
        Some(path) => export_to_file(&store, path, &bar),
    }
    .map_err(failed)?;
    bar.finish();
    let whereto = output.map_or("stdout".to_string(), |p| p.display().to_string());
    eprintln!("exported {} to {whereto}", totals.describe());
    Ok(())
}

fn export_to_file(
    store: &SledStore,
    path: &Path,
    bar: &Bar,
) -> Result<transfer::Totals, TransferError> {
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let result = (|| {
        let file = File::create(&partial)?;
        let mut out = BufWriter::new(file);
        let totals = transfer::export(store, &mut out, now_ms(), &mut || bar.advance())?;
        out.flush()?;
        out.get_ref().sync_all()?;
        std::fs::rename(&partial, path)?;
        Ok(totals)
    })();
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
            .map_err(|e| failed(anyhow::anyhow!("cannot read {}: {e}", file.display())))
    };
    let what = |e: TransferError| failed(anyhow::anyhow!("{}: {e}", file.display()));
    let totals = transfer::validate(reader()?).map_err(what)?;
    let store = open(config, true)?;
    if !store.is_empty().map_err(failed)? {
        return Err(failed(anyhow::anyhow!(
            "the database at {} is not empty; import loads only into a new one \
             (point storage.data_dir at an empty folder)",
            config.db_dir().display()
        )));
    }
    let bar = Bar::on_terminal();
    bar.phase("importing jobs", totals.jobs);
    let result = transfer::import(&store, reader()?, &totals, &mut || bar.advance());
    bar.finish();
    if let Err(e) = result {
        return Err(failed(anyhow::anyhow!(
            "{}: {e}; the database at {} now holds part of it: remove that folder \
             before importing again",
            file.display(),
            config.db_dir().display()
        )));
    }
    store.flush().map_err(failed)?;
    println!(
        "imported {} into {}; counts match and the consistency check is clean",
        totals.describe(),
        config.db_dir().display()
    );
    Ok(())
}
