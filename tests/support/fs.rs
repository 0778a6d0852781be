//! Looking at what the bot left on disk.

use std::path::{Path, PathBuf};

/// Every file and folder below `dir`, recursively (each folder before its contents); empty when
/// `dir` does not exist.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let path = e.path();
            out.push(path.clone());
            if path.is_dir() {
                out.extend(files_under(&path));
            }
        }
    }
    out
}
