//! Which gateways use an audit file. Several Airlock processes may share one
//! (one `airlock stdio` per client-spawned server, each with the same
//! config). A gateway that starts records the holds an earlier run left open
//! as `abandoned` — but only when no other process is using the file, since
//! an open hold may be another live process's. Each gateway holds a shared
//! lock on `<audit>.users` for its lifetime; a starting gateway that can take
//! it exclusively is alone.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The lock file is kept open (and so locked) until the process exits.
static MEMBERSHIP: OnceLock<File> = OnceLock::new();

/// Whether other running gateways use the same audit file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Company {
    Alone,
    Shared,
}

fn lock_path(audit: &Path) -> PathBuf {
    let mut name = audit.as_os_str().to_owned();
    name.push(".users");
    PathBuf::from(name)
}

/// Joins the gateways using `audit` and says whether any other is running.
/// A file that cannot be locked (read-only folder, a filesystem without
/// locks) counts as shared: nothing is abandoned that might be alive.
pub fn join(audit: &Path) -> Company {
    let path = lock_path(audit);
    let file = match OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
    {
        Ok(file) => file,
        Err(e) => {
            tracing::warn!(
                "cannot open {}: {e}; assuming other gateways use this audit file",
                path.display()
            );
            return Company::Shared;
        }
    };
    let company = match file.try_lock() {
        Ok(()) => {
            // Alone: keep the file but only a shared hold on it from now on.
            let _ = file.unlock();
            Company::Alone
        }
        Err(TryLockError::WouldBlock) => Company::Shared,
        Err(TryLockError::Error(e)) => {
            tracing::warn!(
                "cannot lock {}: {e}; assuming other gateways use this audit file",
                path.display()
            );
            return Company::Shared;
        }
    };
    if let Err(e) = file.lock_shared() {
        tracing::warn!("cannot lock {}: {e}", path.display());
    }
    let _ = MEMBERSHIP.set(file);
    company
}
