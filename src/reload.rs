//! Live policy: each upstream's policy sits in a `watch` channel; a task polls
//! the file and swaps in a valid new version. An invalid edit keeps the old
//! policy running and logs why. Polling (not inotify) survives editors that
//! replace files by renaming.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::policy::{self, LoadError, Policy};

/// How often policy files are checked for changes.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Called after a successful reload with the upstream's name.
pub type OnReload = Arc<dyn Fn(&str) + Send + Sync>;

/// Loads the policy (or allow-all when `path` is None) and, for a file,
/// starts watching it.
pub fn watch_policy(
    upstream: &str,
    path: Option<PathBuf>,
    shutdown: CancellationToken,
    on_reload: OnReload,
) -> Result<watch::Receiver<Arc<Policy>>, LoadError> {
    let Some(path) = path else {
        // No file: the policy never changes (a receiver keeps the last value
        // after its sender is gone).
        let (_tx, rx) = watch::channel(Arc::new(Policy::allow_all()));
        return Ok(rx);
    };
    let first = policy::load_file(&path)?;
    let mut last_text = std::fs::read_to_string(&path).unwrap_or_default();
    let (tx, rx) = watch::channel(Arc::new(first));
    let upstream = upstream.to_owned();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Ok(text) = tokio::fs::read_to_string(&path).await else {
                continue; // mid-rename or briefly missing: try again next tick
            };
            if text == last_text {
                continue;
            }
            last_text = text.clone();
            match policy::parse_str(&text, &path.display().to_string()) {
                Ok(mut new) => {
                    new.inherit_limits(&tx.borrow());
                    tx.send_replace(Arc::new(new));
                    tracing::info!(%upstream, file = %path.display(), "policy reloaded");
                    on_reload(&upstream);
                }
                Err(e) => {
                    tracing::error!(%upstream, "policy reload failed, keeping the previous policy: {e}")
                }
            }
        }
    });
    Ok(rx)
}
