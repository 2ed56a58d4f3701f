//! Which gateways use an audit file. Several Airlock processes may share one
//! (one `airlock stdio` per client-spawned server, each with the same
//! config). A gateway that starts records the holds an earlier run left open
//! as `abandoned` — but only when no other process is using the file, since
//! an open hold may be another live process's. Each gateway holds a shared
//! lock on `<audit>.users` for its lifetime; a starting gateway that can take
//! it exclusively is alone. Start-ups take turns (`<audit>.startup`), so two
//! gateways starting at the same moment cannot both believe they are alone.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The lock file is kept open (and so locked) until the process exits.
static MEMBERSHIP: OnceLock<File> = OnceLock::new();

/// How long a start-up waits for another gateway's start-up to finish.
const STARTUP_WAIT: Duration = Duration::from_secs(10);

/// Whether other running gateways use the same audit file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Company {
    Alone,
    Shared,
}

/// This gateway's turn at start-up: while it is held, no other gateway on
/// the same file can decide whether it is alone.
pub struct StartupTurn {
    pub company: Company,
    _turn: Option<File>,
}

fn sibling(audit: &Path, suffix: &str) -> PathBuf {
    let mut name = audit.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn open(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
}

/// Joins the gateways using `audit` and says whether any other is running.
/// Keep the returned turn until the holds left open have been dealt with.
/// A file that cannot be locked (read-only folder, a filesystem without
/// locks) counts as shared: nothing is abandoned that might be alive.
pub fn join(audit: &Path) -> StartupTurn {
    let turn = take_turn(&sibling(audit, ".startup"));
    let path = sibling(audit, ".users");
    let company = match open(&path) {
        Ok(file) => membership(file, &path),
        Err(e) => {
            tracing::warn!(
                "cannot open {}: {e}; assuming other gateways use this audit file",
                path.display()
            );
            Company::Shared
        }
    };
    let company = if turn.is_some() {
        company
    } else {
        Company::Shared
    };
    StartupTurn {
        company,
        _turn: turn,
    }
}

/// Waits (bounded) for other start-ups on the same file; None if it could not.
fn take_turn(path: &Path) -> Option<File> {
    let file = open(path).ok()?;
    let started = Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => return Some(file),
            Err(TryLockError::WouldBlock) if started.elapsed() < STARTUP_WAIT => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(_) => {
                tracing::warn!(
                    "cannot take the start-up lock {}; assuming other gateways use this audit file",
                    path.display()
                );
                return None;
            }
        }
    }
}

fn membership(file: File, path: &Path) -> Company {
    let company = match file.try_lock() {
        Ok(()) => {
            // Alone: from now on only a shared hold, like every member.
            let _ = file.unlock();
            Company::Alone
        }
        Err(TryLockError::WouldBlock) => Company::Shared,
        Err(TryLockError::Error(e)) => {
            tracing::warn!(
                "cannot lock {}: {e}; assuming other gateways use this audit file",
                path.display()
            );
            Company::Shared
        }
    };
    if let Err(e) = file.lock_shared() {
        tracing::warn!("cannot lock {}: {e}", path.display());
    }
    let _ = MEMBERSHIP.set(file);
    company
}
