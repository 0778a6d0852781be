//! The download's bound on disk: while yt-dlp runs, the job's folder may not
//! pass `downloader.max_download_mb`. `--max-filesize` only sees a length
//! announced up front; a response without one, a stream that never ends or
//! an HLS playlist of endless segments is caught here instead, by what is
//! actually on disk.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;

use super::super::cleanup::tree_size;
use crate::download::Progress;

/// How often the job's folder is measured. At 1 Gbit/s a download writes
/// about 30 MB between two looks; progress reports are checked as they come.
const EVERY: Duration = Duration::from_millis(250);

/// Resolves, with the bytes seen, once the job's folder `dir` holds more
/// than `limit` bytes, or yt-dlp reports more than that for the file it is
/// writing (which it does after every block, so a fast stream is caught
/// between two looks at the folder). Never resolves otherwise.
pub(super) async fn exceeded(
    dir: PathBuf,
    limit: u64,
    mut progress: watch::Receiver<Option<Progress>>,
) -> u64 {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reporting = true;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let d = dir.clone();
                let used = tokio::task::spawn_blocking(move || tree_size(&d))
                    .await
                    .unwrap_or(0);
                if used > limit {
                    return used;
                }
            }
            changed = progress.changed(), if reporting => {
                if changed.is_err() {
                    // yt-dlp is done; the folder is still watched.
                    reporting = false;
                    continue;
                }
                let reported = progress.borrow_and_update().as_ref().map_or(0, |p| p.downloaded);
                if reported > limit {
                    return reported;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_folder_or_a_progress_report_past_the_limit_trips_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("job");
        let (tx, rx) = watch::channel(None);
        let watch = tokio::spawn(exceeded(dir.clone(), 1000, rx));
        // Nothing yet (the folder does not even exist).
        tokio::time::sleep(EVERY * 2).await;
        assert!(!watch.is_finished());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.part"), vec![0u8; 600]).unwrap();
        std::fs::write(dir.join("b.part"), vec![0u8; 600]).unwrap();
        assert_eq!(watch.await.unwrap(), 1200);

        let (tx2, rx2) = watch::channel(None);
        let watch = tokio::spawn(exceeded(tmp.path().join("none"), 1000, rx2));
        tx2.send_replace(Some(Progress {
            downloaded: 5000,
            total: None,
            total_is_estimate: false,
            speed: None,
            eta: None,
            percent: None,
            finished: false,
        }));
        assert_eq!(watch.await.unwrap(), 5000);
        drop(tx);
    }
}
