//! Finding yt-dlp (`downloader.ytdlp`): a configured path, else `yt-dlp` on
//! PATH, else a managed install in `data_dir/tools` (a Python venv + pip),
//! made once on first start and reused after.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use tokio::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("downloader.ytdlp: '{0}' does not exist or is not executable")]
    NotExecutable(String),
    #[error("yt-dlp is not on PATH and Python 3 (needed to install it) was not found; install yt-dlp or python3, or set downloader.ytdlp")]
    NoPython,
    #[error("installing yt-dlp into {dir} failed: {detail}")]
    Failed { dir: String, detail: String },
}

/// Resolve the yt-dlp executable for `setting` ("auto" or a path).
pub async fn resolve(setting: &str, tools_dir: &Path) -> Result<PathBuf, InstallError> {
    if setting != "auto" {
        let p = PathBuf::from(setting);
        return if is_executable(&p) {
            Ok(p)
        } else {
            Err(InstallError::NotExecutable(setting.to_string()))
        };
    }
    if let Some(p) = find_on_path("yt-dlp") {
        return Ok(p);
    }
    managed(tools_dir).await
}

/// The yt-dlp `resolve` would use, without installing anything: for
/// `tgdl health` on a stopped bot, which reports the version the bot runs.
pub fn locate(setting: &str, tools_dir: &Path) -> Option<PathBuf> {
    if setting != "auto" {
        let p = PathBuf::from(setting);
        return is_executable(&p).then_some(p);
    }
    find_on_path("yt-dlp").or_else(|| {
        let bin = managed_bin(tools_dir);
        is_executable(&bin).then_some(bin)
    })
}

fn managed_bin(tools_dir: &Path) -> PathBuf {
    tools_dir.join("venv").join("bin").join("yt-dlp")
}

/// The managed install: `tools_dir/venv/bin/yt-dlp`, created when missing.
pub async fn managed(tools_dir: &Path) -> Result<PathBuf, InstallError> {
    let venv = tools_dir.join("venv");
    let bin = managed_bin(tools_dir);
    if is_executable(&bin) {
        return Ok(bin);
    }
    let python = ["python3", "python"]
        .into_iter()
        .find_map(find_on_path)
        .ok_or(InstallError::NoPython)?;
    let failed = |detail: String| InstallError::Failed {
        dir: venv.display().to_string(),
        detail,
    };
    std::fs::create_dir_all(tools_dir).map_err(|e| failed(e.to_string()))?;
    tracing::info!(dir = %venv.display(), "installing yt-dlp (first start)");
    run(
        &python,
        ["-m", "venv", "--clear"]
            .map(OsStr::new)
            .into_iter()
            .chain([venv.as_os_str()]),
    )
    .await
    .map_err(failed)?;
    let pip = venv.join("bin").join("pip");
    run(
        &pip,
        [
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "yt-dlp",
        ]
        .map(OsStr::new),
    )
    .await
    .map_err(failed)?;
    if is_executable(&bin) {
        Ok(bin)
    } else {
        Err(failed("pip finished but bin/yt-dlp is missing".into()))
    }
}

async fn run<'a>(program: &Path, args: impl IntoIterator<Item = &'a OsStr>) -> Result<(), String> {
    let mut cmd = Command::new(program);
    super::process::without_secrets(&mut cmd);
    let out = cmd
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| format!("{}: {e}", program.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        Err(format!(
            "{} exited with {}: {last}",
            program.display(),
            out.status
        ))
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
        let err = resolve(missing.to_str().unwrap(), dir.path())
            .await
            .unwrap_err();
        assert!(matches!(err, InstallError::NotExecutable(_)));
        assert!(err.to_string().contains("downloader.ytdlp"));
    }

    #[test]
    fn which_finds_sh() {
        assert!(find_on_path("sh").is_some());
        assert!(find_on_path("surely-not-a-program-tgdl").is_none());
    }
}
