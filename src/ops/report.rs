//! Text reports for admins: `/health` (and `tgdl health`), and the admin
//! view of `/jobs`. Rendered from the latest health sample and the store's
//! maintained counters, never from a scan of all jobs.

use std::sync::Arc;

use super::health::{rules, Condition, HealthState, Monitor, Sample};
use crate::download::install::existing;
use crate::job::{now_ms, Job, JobState};
use crate::pipeline::JobService;
use crate::store::StoreError;

use super::health::GB;
const MB: f64 = 1024.0 * 1024.0;

/// Render a sample and its conditions.
pub fn render_health(s: &Sample, conditions: &[Condition]) -> String {
    let status = rules::status(conditions);
    let icon = match status {
        rules::Status::Healthy => "🟢",
        rules::Status::Warning => "🟠",
        rules::Status::Critical => "🔴",
    };
    let c = &s.counts;
    let mut out = format!("{icon} tgdl is {}\n\n", status.name());
    out.push_str(&format!(
        "disk free: {:.1} GB ({:.1} %)\nmemory: {:.0} %  cpu: {:.0} %\ndownloads folder: {:.1} MB  database: {:.1} MB\nbot: {:.1} MB resident, {} threads, {} open files\n",
        s.system.disk_free_bytes as f64 / GB,
        s.system.disk_free_percent(),
        s.system.memory_percent,
        s.system.cpu_percent,
        s.downloads_dir_bytes as f64 / MB,
        s.db_bytes as f64 / MB,
        s.system.process_rss_bytes as f64 / MB,
        s.system.threads,
        s.system.open_files,
    ));
    out.push_str(&format!(
        "queue: {} queued, {} downloading, {} uploading, {} cleaning\n",
        c.queued, c.downloading, c.uploading, c.cleaning
    ));
    if let Some(age) = s.oldest_queued_age_secs {
        out.push_str(&format!("oldest queued: {age} s\n"));
    }
    out.push_str(&format!(
        "last hour: {} done, {} failed ({:.0} % failures)\nall time: {} done, {} failed\n",
        s.done_last_hour,
        s.failed_last_hour,
        s.failure_rate() * 100.0,
        c.done,
        c.failed
    ));
    let found = |present: bool| if present { "present" } else { "missing" };
    out.push_str(&format!(
        "yt-dlp {}, ffmpeg {}, ffprobe {}\n",
        s.ytdlp_version,
        found(s.ffmpeg),
        found(s.ffprobe),
    ));
    if !s.ytdlp_detail.is_empty() {
        out.push_str(&s.ytdlp_detail);
        out.push('\n');
    }
    // What a missing tool costs, so the admin knows whether to install it.
    if !s.ffmpeg {
        out.push_str(
            "without ffmpeg: no merged formats, no thumbnails, no remux to a streamable MP4\n",
        );
    }
    if !s.ffprobe {
        out.push_str("without ffprobe: video size and length as yt-dlp reported them\n");
    }
    out.push_str(&format!("uptime: {} s\n", s.uptime_secs));
    if !s.nodes.is_empty() {
        out.push_str(&format!("\nnodes ({}):\n", s.nodes.len()));
        for n in &s.nodes {
            out.push_str(&format!(
                "• {}: heartbeat {} s ago, {} in flight, {:.1} GB free{}\n",
                n.name,
                s.at_ms.saturating_sub(n.at) / 1000,
                n.in_flight,
                n.disk_free_bytes as f64 / GB,
                if n.polling { ", polls Telegram" } else { "" }
            ));
        }
    }
    if !conditions.is_empty() {
        out.push_str("\nwarnings:\n");
        for cond in conditions {
            out.push_str(&format!(
                "• {}: {}\n  → {}\n",
                cond.kind.code(),
                cond.detail,
                cond.kind.advice()
            ));
        }
    }
    out
}

/// The `/health` text: the monitor's latest sample, or a fresh one if the
/// monitor has not run yet.
pub async fn health_text(
    jobs: &Arc<JobService>,
    state: &Arc<HealthState>,
) -> Result<String, StoreError> {
    if let Some((mut s, c)) = state.latest() {
        // yt-dlp changes between samples (an update): show it as it is now.
        s.ytdlp_version = state.ytdlp_version.read().unwrap().clone();
        s.ytdlp_detail = state.ytdlp_detail.read().unwrap().clone();
        return Ok(render_health(&s, &c));
    }
    sampled_health(jobs, state).await
}

/// The `/health` text from a sample taken now (`tgdl health` on a running
/// bot: the monitor's latest may be an interval old, and the shell expects
/// the queue as it is).
pub async fn sampled_health(
    jobs: &Arc<JobService>,
    state: &Arc<HealthState>,
) -> Result<String, StoreError> {
    let mut m = Monitor::new(
        jobs.clone(),
        state.clone(),
        None,
        state.fresh_probe.handle(&jobs.config.downloads_dir()),
    );
    let s = m.sample().await?;
    let c = rules::Rules::new(jobs.config.health.clone()).evaluate(&s);
    Ok(render_health(&s, &c))
}

/// `tgdl health` on a stopped bot's database: the tools are looked up here
/// since no running bot has recorded them; yt-dlp the way the bot finds it
/// (a configured path, PATH, or the managed install in `data_dir/tools`).
pub async fn offline_health(jobs: &Arc<JobService>) -> Result<String, StoreError> {
    let state = Arc::new(HealthState::default());
    let cfg = &jobs.config;
    match existing(&cfg.downloader.ytdlp, &cfg.tools_dir()) {
        Some(ytdlp) => {
            let (version, detail) = super::update::describe(&ytdlp, cfg).await;
            *state.ytdlp_version.write().unwrap() = version;
            *state.ytdlp_detail.write().unwrap() = detail;
        }
        None => {
            *state.ytdlp_detail.write().unwrap() =
                "yt-dlp not installed yet (the bot installs it at its first start)".into();
        }
    }
    state.set_tools(&crate::download::media::MediaTools::resolve(
        &jobs.config.downloader.ffmpeg,
    ));
    let text = health_text(jobs, &state).await?;
    Ok(format!(
        "{text}\n(sampled by `tgdl health`; the bot is not running)"
    ))
}

/// `/jobs` for an admin: counts per state and every active job.
pub async fn admin_jobs(jobs: &JobService) -> Result<String, StoreError> {
    let mut active = Vec::new();
    for st in [
        JobState::Downloading,
        JobState::Uploading,
        JobState::Cleaning,
        JobState::Queued,
    ] {
        active.extend(jobs.store.list_state(st, 50).await?);
    }
    let counts = jobs.store.counts().await?;
    let mut out = format!(
        "jobs: {} queued, {} downloading, {} uploading, {} cleaning, {} done, {} failed\n",
        counts.queued,
        counts.downloading,
        counts.uploading,
        counts.cleaning,
        counts.done,
        counts.failed
    );
    if active.is_empty() {
        out.push_str("no active jobs");
    }
    let now = now_ms();
    for j in active {
        out.push_str(&format!(
            "\n{} · user {} · {} · {} s · {}",
            j.id.short(),
            j.user_id,
            j.state,
            now.saturating_sub(j.created_at) / 1000,
            j.url
        ));
    }
    Ok(out)
}

/// `/jobs failed` for an admin: the most recent failures with reasons.
pub async fn admin_failures(jobs: &JobService, limit: usize) -> Result<String, StoreError> {
    // The failed index is in id (creation) order; read it from the end.
    let failed: Vec<Job> = jobs.store.list_state_rev(JobState::Failed, limit).await?;
    if failed.is_empty() {
        return Ok("no failed jobs".into());
    }
    let mut out = String::from("recent failures:");
    for j in failed {
        let why = j
            .failure
            .as_ref()
            .map(|e| format!("{}: {}", e.code, e.text))
            .unwrap_or_default();
        out.push_str(&format!(
            "\n{} · user {} · {} · {}",
            j.id.short(),
            j.user_id,
            j.url,
            why
        ));
    }
    Ok(out)
}
