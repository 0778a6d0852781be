//! Running yt-dlp: one child process in its own process group, both pipes
//! drained, progress fed to a callback, and a kill that takes the whole group
//! (yt-dlp and the ffmpeg it starts) on cancel or timeout.

use nix::sys::prctl::set_pdeathsig;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use super::args::YtDlpArgs;
use super::classify::{self, DownloadFailure, Reason};
use super::progress::{self, MediaMeta, Progress};
use crate::job::{ErrorClass, FailureCode};

/// How many stderr lines are kept for classification. yt-dlp's decisive
/// `ERROR:` line is at the end; the ring only bounds memory when a run is
/// chatty (a warning per fragment on a long HLS stream).
const STDERR_RING: usize = 50;

/// Longest stdout line kept, in bytes; the rest of a longer line is read and
/// dropped, never held. The meta line is JSON in ASCII, so a title costs up to
/// 6 bytes per character (`\uXXXX`, 12 for one outside the BMP): 256 KiB keeps
/// a title of tens of thousands of Persian characters whole.
const MAX_STDOUT_LINE: usize = 256 * 1024;

/// Longest stderr line kept: stderr is only classified and quoted in error
/// messages, and up to [`STDERR_RING`] of its lines are held at once.
const MAX_STDERR_LINE: usize = 8 * 1024;

/// Where a run keeps its private copy of the operator's cookies file, inside
/// the job's folder. yt-dlp writes the cookies back to the file it is given,
/// so it never gets the original. A subfolder: yt-dlp's output names are
/// `<job folder>/<media id>.<ext>`, so no download can land on the copy.
const COOKIES_COPY: &str = ".tgdl/cookies.txt";

/// After yt-dlp exits, how long its pipes may stay open. A grandchild that
/// inherited them (a stray ffmpeg) would otherwise keep us reading forever.
const PIPE_GRACE: Duration = Duration::from_secs(5);

/// A downloaded file ready for upload.
#[derive(Clone, Debug, PartialEq)]
pub struct DownloadOutput {
    /// Inside the job's output folder (checked).
    pub file_path: PathBuf,
    pub title: Option<String>,
    pub id: Option<String>,
    pub ext: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// Seconds.
    pub duration: Option<f64>,
    /// Bytes on disk, measured after the download.
    pub filesize: u64,
    /// The site's track title and artist (music sites), and the uploader:
    /// what an audio's title and performer fall back to.
    pub track: Option<String>,
    pub artist: Option<String>,
    pub uploader: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("download cancelled")]
    Cancelled,
    #[error("download timed out")]
    TimedOut,
    /// yt-dlp ran and failed; the text is its most relevant stderr line.
    #[error("yt-dlp failed ({0}): {1}")]
    Failed(DownloadFailure, String),
    #[error("cannot start yt-dlp: {0}")]
    Spawn(#[source] io::Error),
    /// Waiting for yt-dlp or inspecting its file failed.
    #[error("i/o error around yt-dlp: {0}")]
    Io(#[source] io::Error),
}

impl DownloadError {
    /// What the failure means for the job: whether another attempt may
    /// help, and the code the user is told. A timeout and a local i/o or
    /// spawn problem may pass; a cancellation is the user's decision (the
    /// worker handles it before asking).
    pub fn classify(&self) -> (ErrorClass, FailureCode) {
        match self {
            DownloadError::Failed(f, _) => (
                if f.is_retryable() {
                    ErrorClass::Retryable
                } else {
                    ErrorClass::Permanent
                },
                f.reason().failure_code(),
            ),
            DownloadError::TimedOut => (ErrorClass::Retryable, FailureCode::Timeout),
            DownloadError::Cancelled => (ErrorClass::Permanent, FailureCode::Cancelled),
            DownloadError::Spawn(_) | DownloadError::Io(_) => {
                (ErrorClass::Retryable, FailureCode::LocalError)
            }
        }
    }
}

/// Kills the child's process group when dropped while armed, so that a
/// download future dropped mid-flight (its task aborted) takes its ffmpeg
/// children with it; `kill_on_drop` alone reaches only yt-dlp itself.
///
/// It must be disarmed as soon as the child is reaped: after that the pid,
/// and with it the group id, may be reused by an unrelated process.
struct GroupKiller {
    pgid: Option<Pid>,
}

impl GroupKiller {
    fn kill(&mut self) {
        // The group is ours because its leader is our unreaped child; an
        // error (it is gone already) leaves nothing to do.
        if let Some(pgid) = self.pgid.take() {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }

    fn disarm(&mut self) {
        self.pgid = None;
    }
}

impl Drop for GroupKiller {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads lines of arbitrary bytes; yt-dlp's output is UTF-8 in practice, but
/// one stray byte must not stop the draining (a full pipe would block yt-dlp).
/// At most `max` bytes of a line are kept: the rest is read and dropped as it
/// arrives, so a line without end costs no memory and never blocks yt-dlp.
struct Lines<R> {
    reader: BufReader<R>,
    buf: Vec<u8>,
    max: usize,
    /// The line in `buf` was longer than `max`.
    cut: bool,
}

impl<R: AsyncRead + Unpin> Lines<R> {
    fn new(r: R, max: usize) -> Self {
        Lines {
            reader: BufReader::new(r),
            buf: Vec::new(),
            max,
            cut: false,
        }
    }

    /// The next line without its terminator; `None` at end of stream. Cancel
    /// safe: the only await is `fill_buf`, and a partial line stays in `buf`
    /// for the next call.
    async fn next(&mut self) -> io::Result<Option<String>> {
        loop {
            let available = self.reader.fill_buf().await?;
            if available.is_empty() {
                if self.buf.is_empty() && !self.cut {
                    return Ok(None);
                }
                return Ok(Some(self.take()));
            }
            let end = available.iter().position(|&b| b == b'\n');
            let used = end.map_or(available.len(), |i| i + 1);
            let room = self.max.saturating_sub(self.buf.len());
            self.cut |= used > room;
            self.buf.extend_from_slice(&available[..used.min(room)]);
            self.reader.consume(used);
            if end.is_some() {
                return Ok(Some(self.take()));
            }
        }
    }

    fn take(&mut self) -> String {
        let mut bytes = std::mem::take(&mut self.buf);
        if std::mem::take(&mut self.cut) {
            tracing::debug!(target: "tgdl::ytdlp", kept = bytes.len(), "output line over the limit cut");
        }
        while matches!(bytes.last(), Some(b'\n' | b'\r')) {
            bytes.pop();
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// What the stdout lines told us.
#[derive(Default)]
struct StdoutState {
    meta: Option<MediaMeta>,
    max_filesize_abort: Option<String>,
}

fn handle_stdout(line: &str, state: &mut StdoutState, on_progress: &mut impl FnMut(Progress)) {
    // Progress lines may be preceded by `\r` (yt-dlp's line reset) even with
    // --newline; every segment is a line of its own.
    for seg in line.split('\r').filter(|s| !s.trim().is_empty()) {
        if let Some(p) = progress::parse_progress(seg) {
            on_progress(p);
        } else if let Some(meta) = progress::parse_meta(seg) {
            state.meta = Some(meta);
        } else if progress::parse_max_filesize_abort(seg).is_some() {
            state.max_filesize_abort = Some(seg.trim().to_owned());
        } else {
            tracing::trace!(target: "tgdl::ytdlp", stdout = seg);
        }
    }
}

fn push_ring(ring: &mut VecDeque<String>, line: String) {
    if ring.len() == STDERR_RING {
        ring.pop_front();
    }
    ring.push_back(line);
}

/// Runs yt-dlp with `args` until it exits, `cancel` fires or `timeout` passes.
///
/// Progress reports go to `on_progress` as they arrive (from this task, so the
/// callback should be quick: e.g. store the latest value for a rate-limited
/// status editor). On cancel or timeout the whole process group is killed
/// with SIGKILL and reaped before this returns; partial `.part` files stay for
/// a later `--continue`.
pub async fn run_ytdlp(
    args: &YtDlpArgs,
    cancel: CancellationToken,
    timeout: Duration,
    mut on_progress: impl FnMut(Progress),
) -> Result<DownloadOutput, DownloadError> {
    if cancel.is_cancelled() {
        return Err(DownloadError::Cancelled);
    }
    // The job's folder is yt-dlp's working directory, and so that of every
    // ffmpeg it starts: recovery finds a run that outlived the bot by it.
    tokio::fs::create_dir_all(&args.output_dir)
        .await
        .map_err(DownloadError::Io)?;
    let cookies = match &args.cookies {
        Some(original) => Some(copy_cookies(original, &args.output_dir).await?),
        None => None,
    };
    let argv = match &cookies {
        Some(copy) => YtDlpArgs {
            cookies: Some(copy.clone()),
            ..args.clone()
        }
        .to_args(),
        None => args.to_args(),
    };
    let mut cmd = command(&args.binary);
    cmd.current_dir(&args.output_dir)
        .args(argv)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Python buffers a piped stdout; progress must arrive as it happens.
        .env("PYTHONUNBUFFERED", "1");
    tracing::debug!(target: "tgdl::ytdlp", binary = %args.binary.display(), url = %args.url, "starting yt-dlp");
    let mut child = cmd.spawn().map_err(DownloadError::Spawn)?;
    let pgid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw)
        .ok_or_else(|| DownloadError::Spawn(io::Error::other("spawned child has no pid")))?;
    let mut killer = GroupKiller { pgid: Some(pgid) };

    let mut stdout = Lines::new(
        child.stdout.take().expect("stdout is piped"),
        MAX_STDOUT_LINE,
    );
    let mut stderr = Lines::new(
        child.stderr.take().expect("stderr is piped"),
        MAX_STDERR_LINE,
    );
    let mut out_open = true;
    let mut err_open = true;
    let mut ring: VecDeque<String> = VecDeque::with_capacity(STDERR_RING);
    let mut state = StdoutState::default();
    let mut status: Option<ExitStatus> = None;

    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let grace = tokio::time::sleep(Duration::MAX / 4);
    tokio::pin!(grace);

    while out_open || err_open || status.is_none() {
        tokio::select! {
            // Cancellation and the deadline first, so a chatty child cannot
            // starve them.
            biased;
            _ = cancel.cancelled() => {
                stop(&mut child, &mut killer, status.is_some()).await;
                return Err(DownloadError::Cancelled);
            }
            _ = &mut deadline => {
                stop(&mut child, &mut killer, status.is_some()).await;
                return Err(DownloadError::TimedOut);
            }
            res = child.wait(), if status.is_none() => {
                killer.disarm();
                status = Some(res.map_err(DownloadError::Io)?);
                grace.as_mut().reset(tokio::time::Instant::now() + PIPE_GRACE);
            }
            line = stdout.next(), if out_open => match line {
                Ok(Some(line)) => handle_stdout(&line, &mut state, &mut on_progress),
                Ok(None) | Err(_) => out_open = false,
            },
            line = stderr.next(), if err_open => match line {
                Ok(Some(line)) => {
                    tracing::debug!(target: "tgdl::ytdlp", stderr = %line);
                    push_ring(&mut ring, line);
                }
                Ok(None) | Err(_) => err_open = false,
            },
            _ = &mut grace, if status.is_some() => {
                tracing::warn!(target: "tgdl::ytdlp", "yt-dlp exited but its pipes stayed open; not reading further");
                break;
            }
        }
    }
    let status = status.expect("loop ends only after the child was reaped");
    finish(args, status, &ring, state).await
}

/// A private copy of the operator's cookies file for one run, readable by
/// us only; the original is only ever read. Every run starts from the
/// original, so no site's cookies from an earlier run carry over.
async fn copy_cookies(original: &Path, job_dir: &Path) -> Result<PathBuf, DownloadError> {
    use std::os::unix::fs::OpenOptionsExt;
    let copy = job_dir.join(COOKIES_COPY);
    let bytes = tokio::fs::read(original).await.map_err(|e| {
        DownloadError::Io(io::Error::new(
            e.kind(),
            format!("cookies file {}: {e}", original.display()),
        ))
    })?;
    let write = {
        let copy = copy.clone();
        move || -> io::Result<()> {
            use std::io::Write;
            if let Some(dir) = copy.parent() {
                std::fs::create_dir_all(dir)?;
            }
            // Replace, never write through: a link left at the copy's place
            // must not redirect the write.
            let _ = std::fs::remove_file(&copy);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&copy)?;
            f.write_all(&bytes)
        }
    };
    tokio::task::spawn_blocking(write)
        .await
        .map_err(|e| DownloadError::Io(io::Error::other(e)))?
        .map_err(DownloadError::Io)?;
    Ok(copy)
}

/// Kills the group (only while the leader is unreaped, see [`GroupKiller`])
/// and reaps the leader so no zombie is left.
async fn stop(child: &mut Child, killer: &mut GroupKiller, reaped: bool) {
    if reaped {
        return;
    }
    killer.kill();
    if let Err(e) = child.wait().await {
        tracing::warn!(target: "tgdl::ytdlp", error = %e, "reaping killed yt-dlp failed");
    }
}

/// Turns a finished run into the file or a classified failure.
async fn finish(
    args: &YtDlpArgs,
    status: ExitStatus,
    ring: &VecDeque<String>,
    state: StdoutState,
) -> Result<DownloadOutput, DownloadError> {
    let lines = || ring.iter().map(String::as_str);
    if !status.success() {
        let failure = classify::classify(lines());
        let text = classify::summary(lines()).unwrap_or_else(|| format!("yt-dlp {status}"));
        return Err(DownloadError::Failed(failure, text));
    }
    let meta = match state.meta {
        Some(meta) => meta,
        None => {
            // Exit 0 without a file: yt-dlp's way of reporting --max-filesize.
            return Err(match state.max_filesize_abort {
                Some(line) => {
                    DownloadError::Failed(DownloadFailure::Permanent(Reason::TooLarge), line)
                }
                None => DownloadError::Failed(
                    DownloadFailure::Retryable(Reason::Unknown),
                    classify::summary(lines())
                        .unwrap_or_else(|| "yt-dlp exited without producing a file".to_owned()),
                ),
            });
        }
    };
    let unusable =
        |why: String| DownloadError::Failed(DownloadFailure::Retryable(Reason::Unknown), why);
    let reported = meta
        .filepath
        .clone()
        .ok_or_else(|| unusable("yt-dlp did not report the file path".to_owned()))?;
    let file_path = checked_path(&args.output_dir, &reported)
        .await
        .map_err(|e| unusable(format!("yt-dlp reported {}: {e}", reported.display())))?;
    let filesize = tokio::fs::metadata(&file_path)
        .await
        .map_err(DownloadError::Io)?
        .len();
    // --max-filesize only sees sizes announced up front; a merge or a
    // conversion can still end above the limit.
    if let Some(limit) = args.upload_limit {
        if filesize > limit {
            return Err(DownloadError::Failed(
                DownloadFailure::Permanent(Reason::TooLarge),
                format!("downloaded file is {filesize} bytes, over the {limit}-byte limit"),
            ));
        }
    }
    Ok(DownloadOutput {
        file_path,
        title: meta.title,
        id: meta.id,
        ext: meta.ext,
        width: meta.width,
        height: meta.height,
        duration: meta.duration,
        filesize,
        track: meta.track,
        artist: meta.artist,
        uploader: meta.uploader,
    })
}

/// The reported file, resolved, if it is a regular file inside the job's
/// folder: the path comes from another program's output, and we are about to
/// upload and later delete it.
async fn checked_path(dir: &Path, reported: &Path) -> io::Result<PathBuf> {
    let dir = tokio::fs::canonicalize(dir).await?;
    let file = tokio::fs::canonicalize(reported).await?;
    if !file.starts_with(&dir) {
        return Err(io::Error::other("outside the job folder"));
    }
    if !tokio::fs::metadata(&file).await?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    Ok(file)
}

/// How every yt-dlp process of the bot starts: no stdin, killed when its
/// handle is dropped, in its own process group (one killpg reaches yt-dlp
/// and everything it spawns, and a Ctrl-C at our terminal does not reach it
/// behind our back), and killed by the kernel if the bot dies without a
/// chance to kill it (SIGKILL, OOM). (PDEATHSIG fires when the spawning
/// thread exits: a runtime worker thread, which lives as long as the bot.)
/// A fork does not inherit PDEATHSIG, so the ffmpeg yt-dlp starts survives
/// the bot's SIGKILL; it shares yt-dlp's working directory (the job's
/// folder, set by the caller), and the recovery pass at the next start ends
/// every process working under the downloads folder.
///
/// Its environment is ours without `TGDL_*` (the token above all): a child
/// runs code we did not write (extractors, ffmpeg, `--exec` in `extra_args`).
///
/// It runs [`CHILD_NICENESS`] steps nicer than the bot and in the
/// `SCHED_IDLE` class, and so does what it starts (ffmpeg inherits both).
pub(super) fn command(binary: &Path) -> Command {
    let mut cmd = Command::new(binary);
    cmd.stdin(Stdio::null()).kill_on_drop(true).process_group(0);
    without_secrets(&mut cmd);
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe calls are allowed: it makes four system calls
    // (getpriority, setpriority, sched_setscheduler, prctl; no allocation,
    // no lock, no memory of the parent touched) and builds an io::Error from
    // errno, which does not allocate either.
    unsafe {
        cmd.pre_exec(|| {
            lower_priority();
            set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from)?;
            Ok(())
        });
    }
    cmd
}

/// How much nicer (nice(1)) than the bot every program it starts runs.
/// Downloads and conversions are batch work that can fill every core for
/// minutes; what users wait on is the bot's own work (acknowledgements,
/// replies, status), which takes little CPU but must not queue behind them.
/// On 2 cores, a yt-dlp starting (about half a second of CPU for Python and
/// its extractors) during a burst of links took a quarter of the machine
/// while the bot acknowledged them.
///
/// Niceness alone did not stop that: at nice 10 the yt-dlp starting during
/// a burst still took about a third of both cores (perf, 2 kHz), because a
/// bot thread that wakes (an answer from Telegram, a sync done) may wait
/// for the running child's time slice to end before it gets the core, and
/// a burst is a chain of such wake-ups. A `SCHED_IDLE` task is preempted at
/// once by any normal one. The child also keeps the niceness: it is what
/// `ps` and `top` show, and where the idle class is refused (a kernel
/// without it), the niceness still applies.
pub const CHILD_NICENESS: i32 = 10;

/// Lowers the calling process's priority: [`CHILD_NICENESS`] steps (up to
/// the lowest, 19), then the `SCHED_IDLE` class, which runs it only when no
/// normal task wants the core. On a machine that mostly runs the bot that
/// starves nothing (the bot's own work comes in short bursts), but where
/// other work keeps every core busy, downloads get only a small share
/// (README, "Choices"). Best effort: lowering one's own priority needs no
/// privilege, and a failure only leaves the child as urgent as the bot.
fn lower_priority() {
    // SAFETY: plain system calls on the calling process (who = 0, pid = 0).
    unsafe {
        // -1 is both a valid priority and the error value; either way the
        // sum below is a valid priority.
        let now = libc::getpriority(libc::PRIO_PROCESS, 0);
        libc::setpriority(libc::PRIO_PROCESS, 0, (now + CHILD_NICENESS).min(19));
        let idle = libc::sched_param { sched_priority: 0 };
        libc::sched_setscheduler(0, libc::SCHED_IDLE, &idle);
    }
}

/// Removes `TGDL_*` (`TGDL_TOKEN` above all) from what `cmd` inherits:
/// every program the bot starts runs code it did not write.
pub(super) fn without_secrets(cmd: &mut Command) {
    use std::os::unix::ffi::OsStrExt;
    for (key, _) in std::env::vars_os() {
        if key.as_bytes().starts_with(b"TGDL_") {
            cmd.env_remove(key);
        }
    }
    // systemd's socket and watchdog are the bot's; a child must not answer
    // for it (sd_notify(3) unsets them for the same reason).
    for key in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
        cmd.env_remove(key);
    }
}

/// The version yt-dlp reports (`yt-dlp --version`), for `/health`.
pub async fn ytdlp_version(binary: &Path) -> Result<String, DownloadError> {
    let mut cmd = command(binary);
    cmd.arg("--version");
    let out = match tokio::time::timeout(Duration::from_secs(30), cmd.output()).await {
        Ok(out) => out.map_err(DownloadError::Spawn)?,
        Err(_) => return Err(DownloadError::TimedOut),
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.lines().next().unwrap_or("").trim();
    if !out.status.success() || version.is_empty() {
        let err = String::from_utf8_lossy(&out.stderr);
        let reason = classify::summary(err.lines())
            .unwrap_or_else(|| format!("`{} --version` {}", binary.display(), out.status));
        return Err(DownloadError::Failed(
            DownloadFailure::Retryable(Reason::Unknown),
            reason,
        ));
    }
    Ok(version.to_owned())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::download::args::Want;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::{Arc, Mutex};
    use uuid::Uuid;

    /// A stand-in "yt-dlp": a shell script, so the process handling can be
    /// tested exactly (groups, pipes, exit codes) without the network.
    pub(in crate::download) fn fake_ytdlp(dir: &Path, body: &str) -> PathBuf {
        let path = dir.join("fake-yt-dlp");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// Run `a` to the end, expecting it to fail.
    async fn fails(a: &YtDlpArgs) -> DownloadError {
        run_ytdlp(a, CancellationToken::new(), Duration::from_secs(60), |_| {})
            .await
            .unwrap_err()
    }

    fn args_for(tmp: &Path, bin: PathBuf) -> YtDlpArgs {
        let a = YtDlpArgs::new(
            bin,
            "https://example.test/v",
            tmp,
            Uuid::now_v7(),
            Want::Video,
        );
        std::fs::create_dir_all(&a.output_dir).unwrap();
        a
    }

    /// Exists and is not a zombie (a killed orphan stays a zombie until
    /// whatever is pid 1 in this container gets round to reaping it).
    fn alive(pid: i32) -> bool {
        // No signal: only checks for existence.
        let exists = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(false);
        exists && !zombie
    }

    async fn wait_for_pids(file: &Path, n: usize) -> Vec<i32> {
        loop {
            if let Ok(text) = std::fs::read_to_string(file) {
                let pids: Vec<i32> = text
                    .split_whitespace()
                    .filter_map(|s| s.parse().ok())
                    .collect();
                if pids.len() >= n {
                    return pids;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn success_reads_meta_and_progress_while_draining_both_pipes() {
        let tmp = tempfile::tempdir().unwrap();
        let id = Uuid::now_v7();
        let dir = crate::download::args::job_dir(tmp.path(), id);
        // 2 MB on each pipe, far beyond a pipe buffer: if either were not
        // drained the script would block and never print the meta line.
        let script = format!(
            r#"mkdir -p '{dir}'
head -c 2000000 /dev/zero | tr '\0' 'e' | fold -w 100 >&2; echo >&2
echo 'tgdl-progress downloading 50 100 NA 10.0 5 50.0'
head -c 2000000 /dev/zero | tr '\0' 'o' | fold -w 100; echo
printf 'hello' > '{dir}/abc.mp4'
echo 'tgdl-progress finished 100 100 NA NA NA 100.0'
echo 'tgdl-meta {{"id": "abc", "title": "T", "ext": "mp4", "width": 160, "height": 120, "duration": 2.0, "filepath": "{dir}/abc.mp4"}}'
"#,
            dir = dir.display()
        );
        let bin = fake_ytdlp(tmp.path(), &script);
        let mut a = YtDlpArgs::new(bin, "https://example.test/v", tmp.path(), id, Want::Video);
        a.upload_limit = Some(1000);
        let mut seen = Vec::new();
        let out = run_ytdlp(&a, CancellationToken::new(), Duration::from_secs(60), |p| {
            seen.push(p)
        })
        .await
        .unwrap();
        assert_eq!(
            out.file_path,
            std::fs::canonicalize(dir.join("abc.mp4")).unwrap()
        );
        assert_eq!(out.filesize, 5);
        assert_eq!(
            (out.width, out.height, out.duration),
            (Some(160), Some(120), Some(2.0))
        );
        assert_eq!(out.title.as_deref(), Some("T"));
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].percent, Some(50.0));
        assert!(seen[1].finished);
    }

    #[tokio::test]
    async fn runs_in_the_job_folder_made_for_it() {
        let tmp = tempfile::tempdir().unwrap();
        let id = Uuid::now_v7();
        let dir = crate::download::args::job_dir(tmp.path(), id);
        let seen = tmp.path().join("cwd");
        let bin = fake_ytdlp(tmp.path(), &format!("pwd -P > '{}'", seen.display()));
        let a = YtDlpArgs::new(bin, "https://example.test/v", tmp.path(), id, Want::Video);
        assert!(!dir.exists());
        fails(&a).await;
        assert_eq!(
            std::fs::read_to_string(&seen).unwrap().trim_end(),
            std::fs::canonicalize(&dir).unwrap().to_str().unwrap()
        );
    }

    /// A meta line with a 2,000-character Persian title, as yt-dlp prints it
    /// (ASCII JSON, six bytes a character: 12 KB, over the old 8 KiB cut),
    /// after a line of 3 MB without an end that must be bounded, not held.
    #[tokio::test]
    async fn a_long_non_ascii_title_parses_and_an_endless_line_is_bounded() {
        let tmp = tempfile::tempdir().unwrap();
        let id = Uuid::now_v7();
        let dir = crate::download::args::job_dir(tmp.path(), id);
        let title: String = "سلام دنیا ".chars().cycle().take(2000).collect();
        let escaped: String = title
            .chars()
            .map(|c| format!("\\u{:04x}", c as u32))
            .collect();
        let script = format!(
            r#"mkdir -p '{dir}'
printf x > '{dir}/a.mp4'
head -c 3000000 /dev/zero | tr '\0' 'o'; echo
head -c 3000000 /dev/zero | tr '\0' 'e' >&2; echo >&2
echo 'tgdl-meta {{"id": "a", "title": "{escaped}", "filepath": "{dir}/a.mp4"}}'
"#,
            dir = dir.display()
        );
        let bin = fake_ytdlp(tmp.path(), &script);
        let a = YtDlpArgs::new(bin, "https://example.test/v", tmp.path(), id, Want::Video);
        let out = run_ytdlp(
            &a,
            CancellationToken::new(),
            Duration::from_secs(60),
            |_| {},
        )
        .await
        .unwrap();
        assert_eq!(out.title.as_deref(), Some(title.as_str()));
        assert_eq!(title.chars().count(), 2000);
    }

    #[tokio::test]
    async fn lines_keep_at_most_their_bound_and_resume_at_the_next_line() {
        let text = format!("{}\nshort\r\n{}", "x".repeat(100_000), "y".repeat(10));
        let mut lines = Lines::new(text.as_bytes(), 1000);
        assert_eq!(lines.next().await.unwrap().unwrap(), "x".repeat(1000));
        assert_eq!(lines.next().await.unwrap().unwrap(), "short");
        assert_eq!(lines.next().await.unwrap().unwrap(), "y".repeat(10));
        assert_eq!(lines.next().await.unwrap(), None);
    }

    #[tokio::test]
    async fn failure_is_classified_from_stderr() {
        let tmp = tempfile::tempdir().unwrap();
        let bin = fake_ytdlp(
            tmp.path(),
            "echo '[generic] Extracting URL: x'\necho 'WARNING: [generic] Falling back on generic information extractor' >&2\necho 'ERROR: Unsupported URL: https://example.test/v' >&2\nexit 1",
        );
        let a = args_for(tmp.path(), bin);
        let err = fails(&a).await;
        match err {
            DownloadError::Failed(f, line) => {
                assert_eq!(f, DownloadFailure::Permanent(Reason::UnsupportedUrl));
                assert_eq!(line, "ERROR: Unsupported URL: https://example.test/v");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn exit_zero_with_max_filesize_notice_is_too_large() {
        let tmp = tempfile::tempdir().unwrap();
        let bin = fake_ytdlp(
            tmp.path(),
            r"printf '\r[download] File is larger than max-filesize (26526 bytes > 10000 bytes). Aborting.\n'",
        );
        let a = args_for(tmp.path(), bin);
        let err = fails(&a).await;
        assert_eq!(
            err.classify(),
            (ErrorClass::Permanent, FailureCode::TooLarge)
        );
    }

    #[tokio::test]
    async fn exit_zero_without_a_file_is_retryable_unknown() {
        let tmp = tempfile::tempdir().unwrap();
        let bin = fake_ytdlp(tmp.path(), "echo '[download] nothing to do'");
        let a = args_for(tmp.path(), bin);
        let err = fails(&a).await;
        assert_eq!(
            err.classify(),
            (ErrorClass::Retryable, FailureCode::Unknown)
        );
    }

    #[tokio::test]
    async fn a_reported_file_outside_the_job_folder_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("elsewhere.mp4");
        std::fs::write(&outside, b"x").unwrap();
        let bin = fake_ytdlp(
            tmp.path(),
            &format!(
                r#"echo 'tgdl-meta {{"id": "x", "filepath": "{}"}}'"#,
                outside.display()
            ),
        );
        let a = args_for(tmp.path(), bin);
        let err = fails(&a).await;
        assert!(
            matches!(err, DownloadError::Failed(DownloadFailure::Retryable(Reason::Unknown), ref m) if m.contains("outside")),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_file_over_the_limit_after_download_is_too_large() {
        let tmp = tempfile::tempdir().unwrap();
        let id = Uuid::now_v7();
        let dir = crate::download::args::job_dir(tmp.path(), id);
        let bin = fake_ytdlp(
            tmp.path(),
            &format!(
                "mkdir -p '{d}'\nhead -c 2048 /dev/zero > '{d}/m.mp4'\necho 'tgdl-meta {{\"filepath\": \"{d}/m.mp4\"}}'",
                d = dir.display()
            ),
        );
        let mut a = YtDlpArgs::new(bin, "https://example.test/v", tmp.path(), id, Want::Video);
        a.upload_limit = Some(1024);
        let err = fails(&a).await;
        assert_eq!(
            err.classify(),
            (ErrorClass::Permanent, FailureCode::TooLarge)
        );
    }

    /// The script starts a grandchild (like yt-dlp starting ffmpeg) and
    /// records both pids; cancelling must kill both, not just the script.
    async fn group_is_killed(stop_by_cancel: bool) {
        let tmp = tempfile::tempdir().unwrap();
        let pids = tmp.path().join("pids");
        let bin = fake_ytdlp(
            tmp.path(),
            &format!(
                "sleep 300 &\necho $$ $! > '{}'\necho 'tgdl-progress downloading 1 10 NA NA NA 10.0'\nwait",
                pids.display()
            ),
        );
        let a = args_for(tmp.path(), bin);
        let cancel = CancellationToken::new();
        let (timeout, trigger) = if stop_by_cancel {
            (Duration::from_secs(300), Some(cancel.clone()))
        } else {
            (Duration::from_secs(3), None)
        };
        let progressed = Arc::new(Mutex::new(false));
        let p2 = progressed.clone();
        let run = tokio::spawn({
            let a = a.clone();
            async move { run_ytdlp(&a, cancel, timeout, move |_| *p2.lock().unwrap() = true).await }
        });
        let pids = wait_for_pids(&pids, 2).await;
        assert!(pids.iter().all(|&p| alive(p)));
        if let Some(t) = trigger {
            t.cancel();
        }
        let err = run.await.unwrap().unwrap_err();
        if stop_by_cancel {
            assert!(matches!(err, DownloadError::Cancelled), "{err:?}");
        } else {
            assert!(matches!(err, DownloadError::TimedOut), "{err:?}");
        }
        // The script itself was reaped by run_ytdlp; the orphaned sleep is
        // reaped by init once killed, which may take a moment.
        assert!(!alive(pids[0]), "yt-dlp stand-in survived");
        for _ in 0..500 {
            if !alive(pids[1]) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("grandchild {} survived", pids[1]);
    }

    #[tokio::test]
    async fn cancel_kills_the_whole_process_group() {
        group_is_killed(true).await;
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_process_group() {
        group_is_killed(false).await;
    }

    #[tokio::test]
    async fn already_cancelled_does_not_start() {
        let tmp = tempfile::tempdir().unwrap();
        let marker = tmp.path().join("ran");
        let bin = fake_ytdlp(tmp.path(), &format!("touch '{}'", marker.display()));
        let a = args_for(tmp.path(), bin);
        let cancel = CancellationToken::new();
        cancel.cancel();
        let err = run_ytdlp(&a, cancel, Duration::from_secs(5), |_| {})
            .await
            .unwrap_err();
        assert!(matches!(err, DownloadError::Cancelled));
        assert!(!marker.exists());
    }

    #[tokio::test]
    async fn missing_binary_is_a_spawn_error() {
        let tmp = tempfile::tempdir().unwrap();
        let a = args_for(tmp.path(), tmp.path().join("no-such-yt-dlp"));
        let err = run_ytdlp(&a, CancellationToken::new(), Duration::from_secs(5), |_| {})
            .await
            .unwrap_err();
        assert!(matches!(err, DownloadError::Spawn(_)), "{err:?}");
        assert!(matches!(
            ytdlp_version(&tmp.path().join("no-such-yt-dlp")).await,
            Err(DownloadError::Spawn(_))
        ));
    }

    #[tokio::test]
    async fn version_is_the_first_stdout_line() {
        let tmp = tempfile::tempdir().unwrap();
        let bin = fake_ytdlp(tmp.path(), "echo 2025.01.02\necho extra");
        assert_eq!(ytdlp_version(&bin).await.unwrap(), "2025.01.02");
        let bad = fake_ytdlp(tmp.path(), "echo 'boom' >&2\nexit 3");
        match ytdlp_version(&bad).await {
            Err(DownloadError::Failed(_, msg)) => assert_eq!(msg, "boom"),
            other => panic!("unexpected {other:?}"),
        }
    }
}
