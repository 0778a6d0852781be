//! The running bot's side of the admin socket: `data_dir/tgdl.sock`, mode
//! 0600, one request line and one reply line per connection.
//!
//! It is the owner's door into the bot (it can cancel any job), so it is
//! made unreachable for other users before it exists under its name, each
//! peer's uid is checked, requests are bounded in size and time, and
//! nothing a client sends can stop the bot: a bad request gets an error
//! line and the connection ends.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{answer, AdminError, HealthSource, Reply, Request, MAX_REQUEST_BYTES};
use crate::i18n::operator;
use crate::pipeline::JobService;

/// A client has this long to send its request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// After the reply, what of the client's input is read and dropped so the
/// close does not reset the connection before the client read the reply.
const DRAIN_BYTES: u64 = 1024 * 1024;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);
/// Connections served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 16;

/// What the socket answers with.
pub struct Served {
    pub jobs: Arc<JobService>,
    pub health: HealthSource,
    /// Set once the start-up recovery has run: until then cancel and retry
    /// are refused ("the bot is starting"), so they never race the pass
    /// over the same jobs. Reading works from the moment the store is open.
    pub ready: AtomicBool,
}

/// The bound socket; [`AdminSocket::serve`] answers on it.
pub struct AdminSocket {
    listener: UnixListener,
    path: PathBuf,
    /// Our uid, the only one (with root) allowed to talk to us.
    uid: u32,
}

impl AdminSocket {
    /// Bind `path` with mode 0600. The socket is bound in a fresh 0700
    /// folder beside it, chmodded, and only then renamed to `path`, so no
    /// other user can connect in the moment between bind and chmod (the
    /// umask is process-wide and cannot be changed safely with threads).
    /// A socket left at `path` by a killed run is replaced: the database
    /// lock we hold proves no other bot serves this data folder.
    pub fn bind(path: &Path) -> io::Result<AdminSocket> {
        let parent = path.parent().unwrap_or(Path::new("."));
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ));
            }
            std::fs::remove_file(path)?;
        }
        let private = parent.join(format!(".tgdl.sock.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&private);
        std::fs::DirBuilder::new().mode(0o700).create(&private)?;
        let bound = (|| {
            let tmp = private.join("s");
            let listener = std::os::unix::net::UnixListener::bind(&tmp)?;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
            std::fs::rename(&tmp, path)?;
            Ok::<_, io::Error>(listener)
        })();
        let _ = std::fs::remove_dir_all(&private);
        let listener = bound?;
        listener.set_nonblocking(true)?;
        let uid = std::fs::metadata(path)?.uid();
        Ok(AdminSocket {
            listener: UnixListener::from_std(listener)?,
            path: path.to_path_buf(),
            uid,
        })
    }

    /// Answer until `stop`, each connection a tracked task; the socket file
    /// is removed at the end so a stopped bot leaves nothing to connect to.
    pub async fn serve(self, served: Arc<Served>, stop: CancellationToken, tracker: TaskTracker) {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let permit = tokio::select! {
                _ = stop.cancelled() => break,
                p = slots.clone().acquire_owned() => p.expect("never closed"),
            };
            let accepted = tokio::select! {
                _ = stop.cancelled() => break,
                a = self.listener.accept() => a,
            };
            match accepted {
                Ok((stream, _)) => {
                    let (served, stop, uid) = (served.clone(), stop.clone(), self.uid);
                    tracker.spawn(async move {
                        if let Err(e) = handle(stream, &served, &stop, uid).await {
                            tracing::debug!(error = %e, "admin connection ended");
                        }
                        drop(permit);
                    });
                }
                Err(e) => {
                    // Out of file descriptors, typically: back off a little
                    // instead of spinning on the same error.
                    tracing::warn!(error = %e, "admin socket: accept failed");
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            }
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Bind the socket and serve it as a tracked task. A socket that cannot be
/// bound (a data folder path too long for a socket name, 107 bytes) costs
/// the shell its live view, not the bot its start: a warning says so.
pub fn start(served: Arc<Served>, path: &Path, stop: &CancellationToken, tracker: &TaskTracker) {
    match AdminSocket::bind(path) {
        Ok(socket) => {
            tracing::info!(path = %path.display(), "admin socket");
            tracker.spawn(socket.serve(served, stop.clone(), tracker.clone()));
        }
        Err(e) => tracing::warn!(
            path = %path.display(),
            error = %e,
            "no admin socket: tgdl jobs, job, health, cancel and retry need the bot stopped"
        ),
    }
}

/// One connection: check the peer, read one bounded line, answer, close.
async fn handle(
    mut stream: UnixStream,
    served: &Served,
    stop: &CancellationToken,
    uid: u32,
) -> io::Result<()> {
    let peer = stream.peer_cred()?.uid();
    if peer != uid && peer != 0 {
        tracing::warn!(peer, "admin socket: refused a connection from another user");
        return Ok(());
    }
    let (mut read, mut write) = stream.split();
    let reply: Reply = match read_request(&mut read).await {
        Err(e) => Reply::Error(e),
        Ok(req) if req.changes_jobs() && !served.ready.load(Ordering::Acquire) => {
            Reply::Error(AdminError::Failed(operator::starting()))
        }
        Ok(req) => {
            tracing::info!(request = ?req, "admin socket");
            tokio::select! {
                r = answer(&served.jobs, &served.health, req) => r.into(),
                _ = stop.cancelled() => return Ok(()),
            }
        }
    };
    let mut line = serde_json::to_vec(&reply).map_err(io::Error::other)?;
    line.push(b'\n');
    write.write_all(&line).await?;
    write.shutdown().await?;
    // Closing with unread input resets the connection, and the client
    // would lose the reply (an oversized request is still being written):
    // read what follows, up to a bound, until the client closes.
    let (mut rest, mut sink) = (read.take(DRAIN_BYTES), tokio::io::sink());
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, tokio::io::copy(&mut rest, &mut sink)).await;
    Ok(())
}

async fn read_request(read: impl tokio::io::AsyncRead + Unpin) -> Result<Request, AdminError> {
    let mut line = Vec::new();
    let mut limited = BufReader::new(read.take(MAX_REQUEST_BYTES as u64 + 1));
    match tokio::time::timeout(REQUEST_TIMEOUT, limited.read_until(b'\n', &mut line)).await {
        Err(_) => {
            return Err(AdminError::Usage(format!(
                "no request line within {} s",
                REQUEST_TIMEOUT.as_secs()
            )))
        }
        Ok(Err(e)) => return Err(AdminError::Usage(format!("cannot read the request: {e}"))),
        Ok(Ok(_)) => {}
    }
    if line.len() > MAX_REQUEST_BYTES {
        return Err(AdminError::Usage(format!(
            "request longer than {MAX_REQUEST_BYTES} bytes"
        )));
    }
    parse_request(&line)
}

/// One request line, or a usage error that says what is wrong with it.
pub fn parse_request(line: &[u8]) -> Result<Request, AdminError> {
    serde_json::from_slice(line.trim_ascii())
        .map_err(|e| AdminError::Usage(format!("malformed request: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_bad_ones_say_why() {
        assert_eq!(
            parse_request(b"{\"op\":\"cancel\",\"id\":\"abcd1234\"}\n").unwrap(),
            Request::Cancel {
                id: "abcd1234".into()
            }
        );
        for (bad, says) in [
            (&b"not json"[..], "malformed request: expected"),
            (b"{\"op\":\"drop_table\"}", "unknown variant `drop_table`"),
            (b"{\"op\":\"job\"}", "missing field `id`"),
            (b"{\"op\":\"health\",\"x\":1}", "unknown field `x`"),
            (b"", "malformed request: EOF"),
        ] {
            match parse_request(bad) {
                Err(AdminError::Usage(m)) => assert!(m.contains(says), "{m}"),
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }
}
