//! The store interface: where pending approvals live and where exactly-once
//! is decided.
//!
//! Every state change is one atomic statement on the pending row, so the same
//! service code is correct for one process and for many replicas on one
//! database:
//!
//! - [`Store::resolve`] is a compare-and-set: it succeeds only while the row
//!   is still pending (`UPDATE … WHERE id = $1 AND state = 'pending'`);
//!   everyone after gets the winner back as [`ResolveError::AlreadyResolved`].
//! - [`Store::abandon_dead_replicas`] uses the same guard, so a lapsed lease
//!   abandons each pending once even when several replicas notice at once.
//! - [`Store::watch`] streams every committed change (including this
//!   replica's own) in commit order; the service turns it into events and
//!   wakes waiters from it.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use uuid::Uuid;

use super::model::{PendingApproval, Resolution};

/// The store could not be read or written.
#[derive(Debug, Clone, thiserror::Error)]
#[error("approval store: {0}")]
pub struct StoreError(pub String);

/// Why a compare-and-set on a pending row did not apply.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ResolveError {
    #[error("already resolved ({})", .0.verdict.as_str())]
    AlreadyResolved(Box<Resolution>),
    #[error("no approval {0}")]
    NotFound(Uuid),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An approval and, once resolved, how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredApproval {
    pub approval: PendingApproval,
    pub resolution: Option<Resolution>,
}

/// A committed change, as [`Store::watch`] streams it.
#[derive(Debug, Clone)]
pub enum StoreEvent {
    Created(PendingApproval),
    Resolved(PendingApproval, Resolution),
    /// Changes may have been missed (the watch lagged or reconnected):
    /// re-read what you mirror.
    Resync,
}

/// Where pending approvals live. Implementations: [`super::MemoryStore`]
/// (one process) and [`super::PostgresStore`] (replicas sharing a database).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Records a new pending approval and announces it on [`Store::watch`].
    async fn insert_pending(&self, approval: &PendingApproval) -> Result<(), StoreError>;

    /// Resolves a pending approval if, and only if, it is still pending.
    /// Returns the approval that was resolved.
    async fn resolve(
        &self,
        id: Uuid,
        resolution: &Resolution,
    ) -> Result<PendingApproval, ResolveError>;

    /// Open approvals, oldest first.
    async fn list_pending(&self) -> Result<Vec<PendingApproval>, StoreError>;

    /// One approval, pending or resolved (resolved ones are kept for 409 answers).
    async fn get(&self, id: Uuid) -> Result<Option<StoredApproval>, StoreError>;

    /// Open approvals whose `expires_at` is at or before `now`.
    async fn expired(&self, now: DateTime<Utc>) -> Result<Vec<PendingApproval>, StoreError>;

    /// Renews `replica`'s lease.
    async fn heartbeat(&self, replica: &str, now: DateTime<Utc>) -> Result<(), StoreError>;

    /// Resolves as abandoned every pending owned by a replica whose last
    /// heartbeat is older than `lease`; each exactly once. Also hands over,
    /// once, the approvals such a replica had resolved (or someone resolved
    /// for it, say a decision taken on another replica before its lease ran
    /// out) but not recorded ([`Store::mark_recorded`]): nobody else will.
    /// Returns both, with the resolution each has in the store.
    async fn abandon_dead_replicas(
        &self,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<Vec<(PendingApproval, Resolution)>, StoreError>;

    /// Makes `replica` the owner of every adoptable approval
    /// ([`PendingApproval::adoptable`]) of a replica whose last heartbeat is
    /// older than `lease`, open or resolved but unrecorded, or recorded with
    /// its task still unfinished (a shared task store: the owner died after
    /// the decision, maybe mid-call); each is adopted once, by one caller
    /// (a compare-and-set on the owner). Adoptable
    /// approvals are never abandoned by [`Store::abandon_dead_replicas`].
    async fn adopt_dead_replicas(
        &self,
        replica: &str,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<Vec<StoredApproval>, StoreError>;

    /// The same for the approvals `replica` left behind in an earlier run
    /// (a replica restarting under the same name calls it before its first
    /// hold): its pendings are resolved as abandoned (channel `restart`).
    async fn abandon_leftovers(
        &self,
        replica: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<(PendingApproval, Resolution)>, StoreError>;

    /// The adoptable approvals `replica` recorded (and so may have released)
    /// in an earlier run whose task is still unfinished: that run died
    /// after the decision, maybe mid-call. Only a store that keeps tasks
    /// (PostgreSQL) has any.
    async fn unfinished_tasks_of(&self, _replica: &str) -> Result<Vec<StoredApproval>, StoreError> {
        Ok(Vec::new())
    }

    /// The owner has recorded this approval's resolution (its audit row is
    /// committed): the dead-replica sweep must not hand it over.
    async fn mark_recorded(&self, id: Uuid) -> Result<(), StoreError>;

    /// Marks approval `id` recorded if, and only if, `owner` still owns it
    /// and nobody marked it before: the compare-and-set that lets exactly
    /// one replica release an adoptable approval (its owner, or the survivor
    /// that adopted it while the owner only looked dead).
    async fn claim(&self, id: Uuid, owner: &str) -> Result<bool, StoreError>;

    /// Every committed change from now on, in commit order.
    fn watch(&self) -> BoxStream<'static, StoreEvent>;
}

/// A watch stream over a broadcast channel: a lagging watcher gets a
/// `Resync` instead of the events it missed.
pub(super) fn watch_broadcast(
    rx: tokio::sync::broadcast::Receiver<StoreEvent>,
) -> BoxStream<'static, StoreEvent> {
    use futures::StreamExt;
    use tokio::sync::broadcast::error::RecvError;
    futures::stream::unfold(rx, |mut rx| async move {
        match rx.recv().await {
            Ok(event) => Some((event, rx)),
            Err(RecvError::Lagged(_)) => Some((StoreEvent::Resync, rx)),
            Err(RecvError::Closed) => None,
        }
    })
    .boxed()
}
