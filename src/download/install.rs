//! Finding yt-dlp (`downloader.ytdlp`): a configured path, else `yt-dlp` on
//! PATH, else the managed install in `data_dir/tools/ytdlp` (made on first
//! start; [`super::managed`] keeps it current). "managed" skips PATH.

use std::path::{Path, PathBuf};

use super::handle::YtDlp;
use super::managed::{Layout, ManagedError};
use super::source::Source;

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("downloader.ytdlp: '{0}' does not exist or is not executable")]
    NotExecutable(String),
    #[error("yt-dlp is not on PATH and the managed install failed: {0}")]
    Managed(#[from] ManagedError),
}

/// Resolve the yt-dlp to run for `setting` ("auto", "managed" or a path).
/// The managed install is made on first start from `source`.
pub async fn resolve(
    setting: &str,
    tools_dir: &Path,
    source: &Source,
) -> Result<YtDlp, InstallError> {
    match setting {
        "auto" => {
            if let Some(p) = find_on_path("yt-dlp") {
                return Ok(YtDlp::operator(p));
            }
        }
        "managed" => {}
        path => {
            let p = PathBuf::from(path);
            return if is_executable(&p) {
                Ok(YtDlp::operator(p))
            } else {
                Err(InstallError::NotExecutable(setting.to_string()))
            };
        }
    }
    let layout = Layout::new(tools_dir);
    if layout.current().is_err() {
        tracing::info!(dir = %layout.root.display(), "no managed yt-dlp yet: installing (first start)");
        layout.update(source).await?;
    }
    Ok(YtDlp::managed(layout)?)
}

/// The yt-dlp `setting` names, without installing anything (for `tgdl
/// health` and `tgdl update` beside or without a running bot). `None`: the
/// managed install is meant but not made yet, or the path is not there.
pub fn existing(setting: &str, tools_dir: &Path) -> Option<YtDlp> {
    let on_path = (setting == "auto")
        .then(|| find_on_path("yt-dlp"))
        .flatten();
    match setting {
        "auto" | "managed" if on_path.is_none() => YtDlp::managed(Layout::new(tools_dir)).ok(),
        "auto" => on_path.map(YtDlp::operator),
        path => {
            let p = PathBuf::from(path);
            is_executable(&p).then(|| YtDlp::operator(p))
        }
    }
}

/// `which`, without a dependency.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| is_executable(p))
    })
}

pub fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_configured_path_must_be_executable() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = resolve(
            missing.to_str().unwrap(),
            dir.path(),
            &Source::from_setting(""),
        )
        .await
        .err()
        .unwrap();
        assert!(matches!(err, InstallError::NotExecutable(_)));
        assert!(err.to_string().contains("downloader.ytdlp"));
    }

    #[test]
    fn which_finds_sh() {
        assert!(find_on_path("sh").is_some());
        assert!(find_on_path("surely-not-a-program-tgdl").is_none());
    }
}
