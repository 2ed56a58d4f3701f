//! The in-process store: one `Mutex`'d map, for a single gateway process.
//!
//! A std `Mutex` (not tokio's): every critical section is a few map
//! operations and never awaits. Events are sent while the lock is held, so
//! the watch stream carries changes in exactly the order they were made.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use tokio::sync::broadcast;
use uuid::Uuid;

use super::model::{PendingApproval, Resolution};
use super::store::{ResolveError, Store, StoreError, StoreEvent, StoredApproval, watch_broadcast};

/// Resolved approvals kept for 409 answers; the oldest go first.
const KEEP_RESOLVED: usize = 10_000;

/// Events buffered per watcher before it lags (and gets a `Resync`).
const WATCH_BUFFER: usize = 4096;

pub struct MemoryStore {
    state: Mutex<State>,
    events: broadcast::Sender<StoreEvent>,
}

#[derive(Default)]
struct State {
    rows: HashMap<Uuid, StoredApproval>,
    /// Resolved ids in resolution order, to forget the oldest.
    resolved: VecDeque<Uuid>,
    leases: HashMap<String, DateTime<Utc>>,
    /// Resolved, and their owner has not said it recorded them.
    unrecorded: std::collections::HashSet<Uuid>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore {
            state: Mutex::new(State::default()),
            events: broadcast::channel(WATCH_BUFFER).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves only whole map operations
        // behind, so the data is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    /// Whether `owner`'s lease lapsed (a replica never seen is not dead).
    fn is_dead(&self, owner: &str, lease: chrono::Duration, now: DateTime<Utc>) -> bool {
        self.leases.get(owner).is_some_and(|t| *t + lease < now)
    }

    /// The compare-and-set: only a pending row takes a resolution.
    fn resolve(
        &mut self,
        id: Uuid,
        resolution: &Resolution,
    ) -> Result<PendingApproval, ResolveError> {
        let row = self.rows.get_mut(&id).ok_or(ResolveError::NotFound(id))?;
        if let Some(winner) = &row.resolution {
            return Err(ResolveError::AlreadyResolved(Box::new(winner.clone())));
        }
        row.resolution = Some(resolution.clone());
        let approval = row.approval.clone();
        self.resolved.push_back(id);
        while self.resolved.len() > KEEP_RESOLVED {
            if let Some(old) = self.resolved.pop_front() {
                self.rows.remove(&old);
                self.unrecorded.remove(&old);
            }
        }
        Ok(approval)
    }

    /// Takes `ids` out of the unrecorded set, with their resolutions.
    fn hand_over(&mut self, ids: &[Uuid]) -> Vec<(PendingApproval, Resolution)> {
        ids.iter()
            .filter(|id| self.unrecorded.remove(id))
            .filter_map(|id| {
                let row = self.rows.get(id)?;
                Some((row.approval.clone(), row.resolution.clone()?))
            })
            .collect()
    }

    fn pending(&self) -> impl Iterator<Item = &PendingApproval> {
        self.rows
            .values()
            .filter(|r| r.resolution.is_none())
            .map(|r| &r.approval)
    }
}

fn oldest_first(mut list: Vec<PendingApproval>) -> Vec<PendingApproval> {
    list.sort_by_key(|a| (a.created_at, a.id));
    list
}

#[async_trait]
impl Store for MemoryStore {
    async fn insert_pending(&self, approval: &PendingApproval) -> Result<(), StoreError> {
        let mut state = self.lock();
        if state.rows.contains_key(&approval.id) {
            return Err(StoreError(format!("approval {} exists", approval.id)));
        }
        state.rows.insert(
            approval.id,
            StoredApproval {
                approval: approval.clone(),
                resolution: None,
            },
        );
        let _ = self.events.send(StoreEvent::Created(approval.clone()));
        Ok(())
    }

    async fn resolve(
        &self,
        id: Uuid,
        resolution: &Resolution,
    ) -> Result<PendingApproval, ResolveError> {
        let mut state = self.lock();
        let approval = state.resolve(id, resolution)?;
        state.unrecorded.insert(id);
        let _ = self
            .events
            .send(StoreEvent::Resolved(approval.clone(), resolution.clone()));
        Ok(approval)
    }

    async fn list_pending(&self) -> Result<Vec<PendingApproval>, StoreError> {
        Ok(oldest_first(self.lock().pending().cloned().collect()))
    }

    async fn get(&self, id: Uuid) -> Result<Option<StoredApproval>, StoreError> {
        Ok(self.lock().rows.get(&id).cloned())
    }

    async fn expired(&self, now: DateTime<Utc>) -> Result<Vec<PendingApproval>, StoreError> {
        let state = self.lock();
        let due = state.pending().filter(|a| a.expires_at <= now).cloned();
        Ok(oldest_first(due.collect()))
    }

    async fn heartbeat(&self, replica: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.lock().leases.insert(replica.to_owned(), now);
        Ok(())
    }

    async fn abandon_dead_replicas(
        &self,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<Vec<(PendingApproval, Resolution)>, StoreError> {
        let lease = chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
        let mut state = self.lock();
        let dead: Vec<(Uuid, String)> = state
            .pending()
            .filter(|a| !a.adoptable && state.is_dead(&a.owner, lease, now))
            .map(|a| (a.id, a.owner.clone()))
            .collect();
        let mut abandoned = Vec::with_capacity(dead.len());
        for (id, owner) in dead {
            let resolution = Resolution::abandoned(&owner, now);
            if let Ok(approval) = state.resolve(id, &resolution) {
                let _ = self
                    .events
                    .send(StoreEvent::Resolved(approval.clone(), resolution.clone()));
                abandoned.push((approval, resolution));
            }
        }
        let dead: Vec<Uuid> = state
            .unrecorded
            .iter()
            .copied()
            .filter(|id| {
                state.rows.get(id).is_some_and(|r| {
                    !r.approval.adoptable && state.is_dead(&r.approval.owner, lease, now)
                })
            })
            .collect();
        abandoned.extend(state.hand_over(&dead));
        Ok(abandoned)
    }

    async fn adopt_dead_replicas(
        &self,
        replica: &str,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<Vec<StoredApproval>, StoreError> {
        let lease = chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
        let mut state = self.lock();
        let dead: Vec<Uuid> = state
            .rows
            .values()
            .filter(|r| {
                r.approval.adoptable
                    && r.approval.owner != replica
                    && (r.resolution.is_none() || state.unrecorded.contains(&r.approval.id))
                    && state.is_dead(&r.approval.owner, lease, now)
            })
            .map(|r| r.approval.id)
            .collect();
        let mut adopted = Vec::with_capacity(dead.len());
        for id in dead {
            if let Some(row) = state.rows.get_mut(&id) {
                row.approval.owner = replica.to_owned();
                adopted.push(row.clone());
            }
        }
        Ok(adopted)
    }

    async fn abandon_leftovers(
        &self,
        replica: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<(PendingApproval, Resolution)>, StoreError> {
        let mut state = self.lock();
        let open: Vec<Uuid> = state
            .pending()
            .filter(|a| a.owner == replica)
            .map(|a| a.id)
            .collect();
        let mut abandoned = Vec::with_capacity(open.len());
        for id in open {
            let resolution = Resolution::ended(
                super::model::Verdict::Abandoned,
                "restart",
                format!("replica {replica} restarted before a decision"),
                now,
            );
            if let Ok(approval) = state.resolve(id, &resolution) {
                let _ = self
                    .events
                    .send(StoreEvent::Resolved(approval.clone(), resolution.clone()));
                abandoned.push((approval, resolution));
            }
        }
        let mine: Vec<Uuid> = state
            .unrecorded
            .iter()
            .copied()
            .filter(|id| {
                state
                    .rows
                    .get(id)
                    .is_some_and(|r| r.approval.owner == replica)
            })
            .collect();
        abandoned.extend(state.hand_over(&mine));
        Ok(abandoned)
    }

    async fn mark_recorded(&self, id: Uuid) -> Result<(), StoreError> {
        self.lock().unrecorded.remove(&id);
        Ok(())
    }

    async fn claim(&self, id: Uuid, owner: &str) -> Result<bool, StoreError> {
        let mut state = self.lock();
        let owned = state
            .rows
            .get(&id)
            .is_some_and(|r| r.approval.owner == owner);
        Ok(owned && state.unrecorded.remove(&id))
    }

    fn watch(&self) -> BoxStream<'static, StoreEvent> {
        watch_broadcast(self.events.subscribe())
    }
}
