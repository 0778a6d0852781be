//! Running ffmpeg or ffprobe once: started like yt-dlp (own process group,
//! no `TGDL_*` in its environment, dies with the bot), in the job's folder
//! so the recovery pass finds it there after a crash, and killed with its
//! group when it overstays its time or the stage is dropped.

use std::ffi::OsString;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use super::MediaError;

/// Runs `bin` with `args` in `cwd`; its stdout when it exits with success.
pub(super) async fn run(
    tool: &'static str,
    bin: &Path,
    args: Vec<OsString>,
    cwd: &Path,
    timeout: Duration,
) -> Result<Vec<u8>, MediaError> {
    let mut cmd = crate::download::process::command(bin);
    cmd.current_dir(cwd)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd
        .spawn()
        .map_err(|source| MediaError::Spawn { tool, source })?;
    let pgid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(nix::unistd::Pid::from_raw);
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) if out.status.success() => Ok(out.stdout),
        Ok(Ok(out)) => {
            let err = String::from_utf8_lossy(&out.stderr);
            let last = err.lines().rev().find(|l| !l.trim().is_empty());
            Err(MediaError::Failed {
                tool,
                detail: last.map_or_else(|| out.status.to_string(), |l| l.trim().to_owned()),
            })
        }
        Ok(Err(e)) => Err(MediaError::Io(e)),
        Err(_) => {
            // The leader is not reaped yet (its handle was only just
            // dropped), so the group id is still ours to kill.
            if let Some(pgid) = pgid {
                let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            }
            Err(MediaError::TimedOut { tool })
        }
    }
}

/// `file:<path>`: ffmpeg reads a path with a colon in it as a protocol
/// otherwise.
pub(super) fn file_arg(path: &Path) -> OsString {
    let mut s = OsString::from("file:");
    s.push(path.as_os_str());
    s
}

/// Arguments every ffmpeg and ffprobe run starts with (ffmpeg also gets
/// `-nostdin`, which ffprobe does not know). The file came from the
/// internet: a "video" that is really an HLS playlist or a concat list would
/// make ffmpeg fetch what it names, around the egress filter, so only local
/// files may be opened.
pub(super) fn common_args(ffmpeg: bool) -> Vec<OsString> {
    let first: &[&str] = if ffmpeg { &["-nostdin", "-y"] } else { &[] };
    first
        .iter()
        .chain(&["-v", "error", "-protocol_whitelist", "file"])
        .map(OsString::from)
        .collect()
}
