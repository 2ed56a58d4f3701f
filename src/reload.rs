//! Live policy: each upstream's policy sits in a `watch` channel; a task polls
//! the file and swaps in a valid new version. An invalid edit keeps the old
//! policy running and says why (log and a `policy.reload_failed` event). Polling (not inotify) survives editors that
//! replace files by renaming.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::policy::{self, LoadError, Policy};

/// How often policy files are checked for changes.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// How long a policy file may be unreadable (an editor's rename) before it is logged.
const MISSING_GRACE: Duration = Duration::from_secs(2);

/// What happened to a changed policy file.
pub enum Reload<'a> {
    /// The new version is in force.
    Loaded,
    /// The new version was refused (the error names file, line and key); the
    /// previous policy stays in force.
    Failed(&'a str),
}

/// Called after each reload attempt with the upstream's name.
pub type OnReload = Arc<dyn Fn(&str, Reload<'_>) + Send + Sync>;

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
        let mut unreadable_since: Option<std::time::Instant> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let text = match tokio::fs::read_to_string(&path).await {
                Ok(text) => {
                    unreadable_since = None;
                    text
                }
                Err(e) => {
                    // Mid-rename or briefly missing: try again next tick, and
                    // say so once if it stays that way.
                    let since = *unreadable_since.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() >= MISSING_GRACE
                        && since.elapsed() < MISSING_GRACE + POLL_INTERVAL
                    {
                        tracing::warn!(%upstream, file = %path.display(), "cannot read the policy file ({e}); keeping the policy in force");
                    }
                    continue;
                }
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
                    on_reload(&upstream, Reload::Loaded);
                }
                Err(e) => {
                    tracing::error!(%upstream, "policy reload failed, keeping the previous policy: {e}");
                    on_reload(&upstream, Reload::Failed(&e.to_string()));
                }
            }
        }
    });
    Ok(rx)
}
