//! Text reports for admins (`/health`, `tgdl health`). Rendered from
//! counters the store maintains, never from a scan of all jobs.

use crate::core::Core;
use crate::job::JobState;
use crate::store::{self, StoreError};

/// The `/health` text.
pub async fn health_text(core: &Core) -> Result<String, StoreError> {
    let counts = store::blocking(&core.store, |s| s.counts()).await?;
    let mut out = String::from("tgdl health\n");
    for s in JobState::ALL {
        out.push_str(&format!("{:<12}{}\n", s.name(), counts.get(s)));
    }
    Ok(out)
}

/// `tgdl health` on a stopped bot's database.
pub fn offline_health(
    _config: &crate::config::Config,
    store: &dyn store::JobStore,
) -> Result<String, StoreError> {
    let counts = store.counts()?;
    let mut out = String::from("tgdl health\n");
    for s in JobState::ALL {
        out.push_str(&format!("{:<12}{}\n", s.name(), counts.get(s)));
    }
    Ok(out)
}
