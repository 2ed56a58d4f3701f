//! Live policy: each upstream's policy sits in a `watch` channel; a task polls
//! the file and swaps in a valid new version. An invalid edit keeps the old
//! policy running and says why (log and a `policy.reload_failed` event). Polling (not inotify) survives editors that
//! replace files by renaming.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// Why the policy in force is not what its file says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// The file's content was refused (the error went to the log and to
    /// dashboards as `policy.reload_failed`).
    Refused,
    /// The file cannot be read.
    Unreadable,
}

impl Problem {
    /// The short name dashboards get (`refused`, `unreadable`).
    pub fn name(self) -> &'static str {
        match self {
            Problem::Refused => "refused",
            Problem::Unreadable => "unreadable",
        }
    }

    /// What `/healthz` says: no details, since it needs no authentication and
    /// an error quotes the file.
    pub fn summary(self) -> &'static str {
        match self {
            Problem::Refused => {
                "stale: the last edit was refused (see the log); the previous policy is in force"
            }
            Problem::Unreadable => {
                "stale: the file cannot be read (see the log); the previous policy is in force"
            }
        }
    }
}

/// How an upstream's policy file is doing, for `/healthz` and `/metrics`.
#[derive(Default)]
pub struct ReloadStatus(Mutex<Option<Problem>>);

impl ReloadStatus {
    pub fn problem(&self) -> Option<Problem> {
        *self.0.lock().expect("reload status lock")
    }

    fn set(&self, problem: Option<Problem>) {
        *self.0.lock().expect("reload status lock") = problem;
    }
}

/// An upstream's policy: the one in force, and how its file is doing.
pub struct LivePolicy {
    pub policy: watch::Receiver<Arc<Policy>>,
    pub status: Arc<ReloadStatus>,
}

/// Loads the policy (or allow-all when `path` is None) and, for a file,
/// starts watching it.
pub fn watch_policy(
    upstream: &str,
    path: Option<PathBuf>,
    shutdown: CancellationToken,
    on_reload: OnReload,
) -> Result<LivePolicy, LoadError> {
    let status = Arc::new(ReloadStatus::default());
    let Some(path) = path else {
        // No file: the policy never changes (a receiver keeps the last value
        // after its sender is gone).
        let (_tx, policy) = watch::channel(Arc::new(Policy::allow_all()));
        return Ok(LivePolicy { policy, status });
    };
    // One read serves both the policy and the watcher's "last seen" copy, so
    // an edit landing between two reads cannot go unnoticed.
    let last_text = std::fs::read(&path).map_err(|source| LoadError::Read {
        file: path.display().to_string(),
        source,
    })?;
    let first = policy::parse_str(utf8(&last_text, &path)?, &path.display().to_string())?;
    let (tx, policy) = watch::channel(Arc::new(first));
    let watcher = Watcher {
        upstream: upstream.to_owned(),
        path,
        tx,
        status: status.clone(),
        on_reload,
        last_text,
        refused: false,
        unreadable_since: None,
    };
    tokio::spawn(watcher.run(shutdown));
    Ok(LivePolicy { policy, status })
}

/// The task that polls one policy file.
struct Watcher {
    upstream: String,
    path: PathBuf,
    tx: watch::Sender<Arc<Policy>>,
    status: Arc<ReloadStatus>,
    on_reload: OnReload,
    /// The file's content when last read.
    last_text: Vec<u8>,
    /// Whether that content was refused.
    refused: bool,
    /// Since when the file cannot be read (None: it can); logged once.
    unreadable_since: Option<(Instant, bool)>,
}

impl Watcher {
    async fn run(mut self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            match tokio::fs::read(&self.path).await {
                Ok(text) => self.check(text),
                Err(e) => self.unreadable(e),
            }
        }
    }

    fn check(&mut self, text: Vec<u8>) {
        if self.unreadable_since.take().is_some() {
            self.status.set(self.refused.then_some(Problem::Refused));
        }
        if text == self.last_text {
            return;
        }
        let upstream = &self.upstream;
        let parsed = utf8(&text, &self.path)
            .and_then(|t| policy::parse_str(t, &self.path.display().to_string()));
        match parsed {
            Ok(mut new) => {
                new.inherit_limits(&self.tx.borrow());
                self.tx.send_replace(Arc::new(new));
                tracing::info!(%upstream, file = %self.path.display(), "policy reloaded");
                self.refused = false;
                (self.on_reload)(upstream, Reload::Loaded);
            }
            Err(e) => {
                let why = e.to_string();
                tracing::error!(%upstream, "policy reload failed, keeping the previous policy: {why}");
                (self.on_reload)(upstream, Reload::Failed(&why));
                self.refused = true;
            }
        }
        self.status.set(self.refused.then_some(Problem::Refused));
        self.last_text = text;
    }

    /// Mid-rename or briefly missing: try again next tick; if it stays that
    /// way, say so once.
    fn unreadable(&mut self, e: std::io::Error) {
        let (since, told) = self
            .unreadable_since
            .get_or_insert_with(|| (Instant::now(), false));
        if !*told && since.elapsed() >= MISSING_GRACE {
            *told = true;
            let upstream = &self.upstream;
            tracing::warn!(%upstream, file = %self.path.display(), "cannot read the policy file ({e}); keeping the policy in force");
            self.status.set(Some(Problem::Unreadable));
        }
    }
}

/// The file's bytes as text; a file saved in another encoding is refused
/// like any other invalid edit (not taken for an unreadable file).
fn utf8<'a>(bytes: &'a [u8], path: &std::path::Path) -> Result<&'a str, LoadError> {
    std::str::from_utf8(bytes).map_err(|e| LoadError::Read {
        file: path.display().to_string(),
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not UTF-8 text ({e})"),
        ),
    })
}
