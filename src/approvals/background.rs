//! The service's three background tasks. Each owns its loop and stops when
//! the service's `stop` token is cancelled.
//!
//! - [`pump`]: store changes → waiters, subscribers and the timer schedule.
//! - [`timers`]: resolves each pending as timed out at its `expires_at`.
//! - [`leases`]: renews this replica's lease, abandons dead replicas'
//!   pendings, sweeps expired pendings a timer missed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use uuid::Uuid;

use super::Shared;
use super::model::{ApprovalEvent, PendingApproval, Resolution};
use super::store::{ResolveError, StoreEvent, StoredApproval};

/// A change to the timer schedule.
pub(super) enum TimerCmd {
    /// Time this pending out at its `expires_at` (idempotent).
    Schedule(Box<PendingApproval>),
    /// It was resolved: forget its timer.
    Unschedule(Uuid),
}

/// Store changes → waiters, subscribers and timers, in the store's order.
pub(super) async fn pump(shared: Arc<Shared>, mut watch: BoxStream<'static, StoreEvent>) {
    loop {
        let event = tokio::select! {
            _ = shared.stop.cancelled() => break,
            event = watch.next() => event,
        };
        match event {
            Some(StoreEvent::Created(approval)) => {
                schedule(&shared, &approval);
                let _ = shared.events.send(ApprovalEvent::Created(approval));
            }
            Some(StoreEvent::Resolved(approval, resolution)) => {
                let _ = shared.timers.send(TimerCmd::Unschedule(approval.id));
                shared.wake(approval.id, &resolution);
                let _ = shared.events.send(ApprovalEvent::Resolved {
                    approval,
                    resolution,
                });
            }
            Some(StoreEvent::Resync) => {
                resync(&shared).await;
                let _ = shared.events.send(ApprovalEvent::Resynced);
            }
            None => {
                tracing::error!(
                    "the approval store's change stream ended; approvals decided elsewhere no longer reach this replica"
                );
                break;
            }
        }
    }
    // No one will wake them now: waiters get `WaitError::Closed` rather
    // than hang (also when the last handle is dropped without `shutdown`).
    shared.waiters().clear();
}

/// After missed changes: reschedule every open pending and wake the
/// waiters of those resolved meanwhile.
async fn resync(shared: &Shared) {
    let open = match shared.store.list_pending().await {
        Ok(open) => open,
        Err(e) => {
            tracing::warn!("approvals resync: {e}");
            return;
        }
    };
    let open_ids: HashSet<Uuid> = open.iter().map(|a| a.id).collect();
    for approval in &open {
        schedule(shared, approval);
    }
    let waiting: Vec<Uuid> = shared.waiters().keys().copied().collect();
    for id in waiting.into_iter().filter(|id| !open_ids.contains(id)) {
        if let Ok(Some(StoredApproval {
            resolution: Some(resolution),
            ..
        })) = shared.store.get(id).await
        {
            shared.wake(id, &resolution);
        }
    }
}

/// Schedules the timeout of `approval` when this replica owns it. Only the
/// owner times its approvals out: it holds the agent's request and records
/// the outcome. A dead owner's approvals are abandoned by the lease sweep.
pub(super) fn schedule(shared: &Shared, approval: &PendingApproval) {
    if approval.owner == shared.config.replica {
        let _ = shared
            .timers
            .send(TimerCmd::Schedule(Box::new(approval.clone())));
    }
}

/// Tries to resolve `approval` as timed out; losing to another resolution is fine.
async fn time_out(shared: &Shared, approval: &PendingApproval) {
    let resolution = Resolution::timed_out(approval, shared.now());
    match shared.store.resolve(approval.id, &resolution).await {
        Ok(_) => shared.wake(approval.id, &resolution),
        Err(ResolveError::AlreadyResolved(_) | ResolveError::NotFound(_)) => {}
        // The lease task's sweep retries.
        Err(ResolveError::Store(e)) => {
            tracing::warn!(pending = %approval.id, "timeout not recorded: {e}")
        }
    }
}

/// One timer per known pending, in a map ordered by deadline.
pub(super) async fn timers(shared: Arc<Shared>, mut commands: mpsc::UnboundedReceiver<TimerCmd>) {
    let mut due: BTreeMap<(Instant, Uuid), PendingApproval> = BTreeMap::new();
    let mut by_id: HashMap<Uuid, Instant> = HashMap::new();
    loop {
        let next = due.keys().next().map(|(at, _)| *at);
        tokio::select! {
            _ = shared.stop.cancelled() => break,
            command = commands.recv() => match command {
                Some(TimerCmd::Schedule(approval)) => {
                    let left = (approval.expires_at - shared.now()).to_std().unwrap_or_default();
                    let at = Instant::now() + left;
                    if let Some(old) = by_id.insert(approval.id, at) {
                        due.remove(&(old, approval.id));
                    }
                    due.insert((at, approval.id), *approval);
                }
                Some(TimerCmd::Unschedule(id)) => {
                    if let Some(at) = by_id.remove(&id) {
                        due.remove(&(at, id));
                    }
                }
                None => break,
            },
            _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                if let Some(((_, id), approval)) = due.pop_first() {
                    by_id.remove(&id);
                    time_out(&shared, &approval).await;
                }
            }
        }
    }
}

/// Lease renewal, dead replicas, missed timeouts: every heartbeat.
pub(super) async fn leases(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(shared.config.heartbeat);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let now = shared.now();
        let renewed = shared.store.heartbeat(&shared.config.replica, now).await;
        shared
            .healthy
            .store(renewed.is_ok(), std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = renewed {
            tracing::warn!(replica = %shared.config.replica, "lease not renewed: {e}");
        }
        match shared
            .store
            .abandon_dead_replicas(now, shared.config.lease)
            .await
        {
            Ok(abandoned) => {
                for (approval, resolution) in abandoned {
                    let resolution = resolution.handed_over(&approval.owner, "lease");
                    tracing::info!(
                        pending = %approval.id,
                        tool = %approval.tool,
                        owner = %approval.owner,
                        "held call abandoned: its replica stopped heartbeating"
                    );
                    shared.wake(approval.id, &resolution);
                    let _ = shared.events.send(ApprovalEvent::Orphaned {
                        approval,
                        resolution,
                    });
                }
            }
            Err(e) => tracing::warn!("dead replicas not checked: {e}"),
        }
        match shared.store.expired(now).await {
            Ok(expired) => {
                let mine = expired.iter().filter(|a| a.owner == shared.config.replica);
                for approval in mine {
                    time_out(&shared, approval).await;
                }
            }
            Err(e) => tracing::warn!("expired approvals not checked: {e}"),
        }
    }
}
