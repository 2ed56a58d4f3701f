//! The open-file budget behind `[server] max_connections`.
//!
//! Each connection is a descriptor. A soft `RLIMIT_NOFILE` of 1024 (a common
//! default) under the default cap of 16,384 would let accept fail with
//! `EMFILE` long before the cap is reached, and the audit store or an
//! upstream pipe could fail with it. So at start the soft limit is raised to
//! the hard one, and the cap is kept below it with a reserve for the
//! gateway's own descriptors.

use nix::sys::resource::{RLIM_INFINITY, Resource, getrlimit, setrlimit};

/// The soft limit we ask for when the hard limit is "unlimited" (Linux
/// refuses more than `fs.nr_open`, 1,048,576 by default).
const UNLIMITED_TARGET: u64 = 1 << 20;

/// Descriptors kept out of the connection cap for the gateway itself: the
/// audit store, upstream pipes and connections, Slack, the runtime. A tenth
/// of the limit, at least 128, but never more than half of it.
pub(super) fn reserve(soft_limit: u64) -> u64 {
    (soft_limit / 10).max(128).min(soft_limit / 2)
}

/// The cap in force: `configured`, but at most the soft limit minus the
/// [`reserve`], and at least 1.
pub(super) fn connection_cap(configured: usize, soft_limit: u64) -> usize {
    let budget = soft_limit.saturating_sub(reserve(soft_limit)).max(1);
    configured.min(usize::try_from(budget).unwrap_or(usize::MAX))
}

/// Raises the soft open-file limit to the hard one; returns the soft limit
/// in force afterwards, or None if it cannot be read.
pub(super) fn raise_open_file_limit() -> Option<u64> {
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(e) => {
            tracing::debug!("cannot read the open-file limit: {e}");
            return None;
        }
    };
    let target = if hard == RLIM_INFINITY {
        UNLIMITED_TARGET.max(soft)
    } else {
        hard
    };
    if soft == RLIM_INFINITY || soft >= target {
        return Some(soft);
    }
    match setrlimit(Resource::RLIMIT_NOFILE, target, hard) {
        Ok(()) => Some(target),
        Err(e) => {
            tracing::debug!("cannot raise the open-file limit from {soft} to {target}: {e}");
            Some(soft)
        }
    }
}

/// Raises the limit and returns the connection cap it allows, logging the
/// cap (a warning when it is below the configured one).
pub(super) fn effective_cap(configured: usize) -> usize {
    let Some(soft) = raise_open_file_limit() else {
        tracing::info!("accepting up to {configured} connections at once");
        return configured;
    };
    let cap = connection_cap(configured, soft);
    if cap < configured {
        tracing::warn!(
            "server.max_connections is {configured} but the open-file limit is {soft}: accepting up to {cap} connections at once ({} descriptors kept for the gateway itself); raise the hard limit (ulimit -Hn, systemd LimitNOFILE=) for more",
            reserve(soft)
        );
    } else {
        tracing::info!("accepting up to {cap} connections at once (open-file limit {soft})");
    }
    cap
}
