//! Approvals: a service that owns pending approvals and their lifecycle, and
//! knows nothing of transports or the gateway.
//!
//! # Target shape
//!
//! ```text
//! transport edge → gate → held? → approvals.create(NewApproval) ─┐
//!                                  approvals.wait(id).await  ◄────┤ store.watch()
//! API / dashboard / Slack / CLI → approvals.decide(id, …) ──► Store (CAS on the row)
//! notifiers (events, Slack)   ◄── approvals.subscribe()
//! ```
//!
//! - The [`Store`] is the single source of truth: [`MemoryStore`] for one
//!   process, [`PostgresStore`] for replicas sharing one database. Exactly
//!   one resolution wins because [`Store::resolve`] is a compare-and-set on
//!   the pending row, not because of a flag in this process's memory; the
//!   same code path serves one process and many.
//! - Every committed change reaches every replica through [`Store::watch`]
//!   (`LISTEN/NOTIFY` on PostgreSQL). One background task per service, the
//!   *pump*, turns it into [`ApprovalEvent`]s for subscribers, wakes
//!   waiters, and keeps the timer task's schedule; so a decision taken on
//!   replica B releases the call waiting on replica A.
//! - Timeouts: the owner of an approval (the replica holding the agent's
//!   request) times it out at `expires_at`; it is also the one that records
//!   the outcome. A dead owner's approvals are abandoned by the lease sweep.
//! - Liveness: each replica renews a lease in the store every
//!   [`Config::heartbeat`]; the same tick abandons the pendings of replicas
//!   whose lease is older than [`Config::lease`] (their agents' connections
//!   are gone with them), and sweeps expired pendings a timer missed.
//!
//! Audit rows, metrics and logs of outcomes are the caller's (`hold`): the
//! owner records each end of its approvals; see `docs/approvals-service.md`.

mod background;
mod memory;
mod model;
mod postgres;
mod store;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};
use uuid::Uuid;

pub use memory::MemoryStore;
pub use model::{
    ApprovalEvent, Choice, Decision, NewApproval, OnTimeout, Outcome, PendingApproval, Resolution,
    Verdict,
};
pub use postgres::PostgresStore;
pub use store::{ResolveError, Store, StoreError, StoreEvent, StoredApproval};

use background::TimerCmd;

/// Events buffered per subscriber before it lags.
const EVENT_BUFFER: usize = 1024;

/// Where "now" comes from.
#[derive(Debug, Clone, Copy)]
pub enum Clock {
    /// The system's wall clock.
    System,
    /// A wall-clock time advanced by tokio's clock, so that tests with paused
    /// time (`tokio::time::advance`) move both timers and timestamps.
    Tokio {
        utc: DateTime<Utc>,
        instant: tokio::time::Instant,
    },
}

impl Clock {
    /// A clock that starts at the current wall-clock time and runs with tokio's.
    pub fn tokio() -> Clock {
        Clock::Tokio {
            utc: Utc::now(),
            instant: tokio::time::Instant::now(),
        }
    }

    /// Now, to the microsecond (PostgreSQL's precision, so a time survives
    /// a round trip through the store unchanged).
    pub fn now(&self) -> DateTime<Utc> {
        let now = match self {
            Clock::System => Utc::now(),
            Clock::Tokio { utc, instant } => {
                *utc + chrono::Duration::from_std(instant.elapsed()).unwrap_or_default()
            }
        };
        now.trunc_subsecs(6)
    }
}

/// Settings of one service (one replica).
#[derive(Debug, Clone)]
pub struct Config {
    /// This replica's id: owner of the approvals it creates, name of its lease.
    pub replica: String,
    /// How often the lease is renewed (and dead replicas and missed timeouts
    /// are looked for).
    pub heartbeat: Duration,
    /// A replica silent for longer than this is dead; its pendings are
    /// abandoned. Keep it several heartbeats long.
    pub lease: Duration,
    pub clock: Clock,
}

impl Config {
    /// Heartbeat every 2 s, lease 10 s, system clock.
    pub fn new(replica: impl Into<String>) -> Config {
        Config {
            replica: replica.into(),
            heartbeat: Duration::from_secs(2),
            lease: Duration::from_secs(10),
            clock: Clock::System,
        }
    }
}

/// A decision that did not apply.
#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    /// Someone (or something: timeout, cancel) resolved it first (HTTP 409).
    #[error("already {} at {}", .0.describe(), .0.at_rfc3339())]
    AlreadyDecided(Box<Resolution>),
    #[error("no pending approval {0}")]
    NotFound(Uuid),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a waiter got no resolution.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("no approval {0}")]
    NotFound(Uuid),
    #[error("the approvals service stopped")]
    Closed,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A resolution this call made, with the approval it resolved.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub approval: PendingApproval,
    pub resolution: Resolution,
}

/// The service: a cheap-to-clone handle. Its background tasks stop when the
/// last handle is dropped, or on [`Approvals::shutdown`].
#[derive(Clone)]
pub struct Approvals {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Cancels the background tasks when the last handle goes.
    _stop: DropGuard,
}

/// What the background tasks share with the handle.
struct Shared {
    store: Arc<dyn Store>,
    config: Config,
    events: broadcast::Sender<ApprovalEvent>,
    /// Waiters by approval id. A std `Mutex`: held for map operations only.
    waiters: Mutex<HashMap<Uuid, Vec<oneshot::Sender<Resolution>>>>,
    timers: mpsc::UnboundedSender<TimerCmd>,
    stop: CancellationToken,
    /// Whether the last lease renewal reached the store (`/metrics`).
    healthy: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn now(&self) -> DateTime<Utc> {
        self.config.clock.now()
    }

    fn waiters(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<Uuid, Vec<oneshot::Sender<Resolution>>>> {
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands `resolution` to everyone waiting on `id` (at most once each).
    fn wake(&self, id: Uuid, resolution: &Resolution) {
        let senders = self.waiters().remove(&id).unwrap_or_default();
        for tx in senders {
            let _ = tx.send(resolution.clone());
        }
    }
}

impl Approvals {
    /// Renews this replica's lease, loads the open approvals and starts the
    /// pump, timer and lease tasks.
    pub async fn start(store: Arc<dyn Store>, config: Config) -> Result<Approvals, StoreError> {
        store.heartbeat(&config.replica, config.clock.now()).await?;
        // Watch before listing, so nothing falls between the two.
        let watch = store.watch();
        let open = store.list_pending().await?;
        let (timers, timer_rx) = mpsc::unbounded_channel();
        for approval in open.into_iter().filter(|a| a.owner == config.replica) {
            let _ = timers.send(TimerCmd::Schedule(Box::new(approval)));
        }
        let stop = CancellationToken::new();
        let shared = Arc::new(Shared {
            store,
            config,
            events: broadcast::channel(EVENT_BUFFER).0,
            waiters: Mutex::default(),
            timers,
            stop: stop.clone(),
            healthy: std::sync::atomic::AtomicBool::new(true),
        });
        let tasks = vec![
            tokio::spawn(background::pump(shared.clone(), watch)),
            tokio::spawn(background::timers(shared.clone(), timer_rx)),
            tokio::spawn(background::leases(shared.clone())),
        ];
        Ok(Approvals {
            inner: Arc::new(Inner {
                shared,
                tasks: Mutex::new(tasks),
                _stop: stop.drop_guard(),
            }),
        })
    }

    fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    /// Whether this replica's last lease renewal reached the store: while it
    /// does not, other replicas will soon count this one dead and abandon
    /// its holds.
    pub fn is_healthy(&self) -> bool {
        self.shared()
            .healthy
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// This replica's id.
    pub fn replica(&self) -> &str {
        &self.shared().config.replica
    }

    /// Records a new pending approval owned by this replica.
    pub async fn create(&self, new: NewApproval) -> Result<PendingApproval, StoreError> {
        let shared = self.shared();
        let now = shared.now();
        let approval = PendingApproval {
            id: new.id,
            session: new.session,
            agent: new.agent,
            upstream: new.upstream,
            tool: new.tool,
            arguments: new.arguments,
            args_hash: new.args_hash,
            rule: new.rule,
            reason: new.reason,
            created_at: now,
            expires_at: now
                + chrono::Duration::from_std(new.timeout).unwrap_or(chrono::Duration::MAX),
            on_timeout: new.on_timeout,
            owner: shared.config.replica.clone(),
            adoptable: new.adoptable,
        };
        shared.store.insert_pending(&approval).await?;
        // The pump schedules it too (from the store's event); scheduling
        // here as well means no window where a timer is missing.
        let _ = shared
            .timers
            .send(TimerCmd::Schedule(Box::new(approval.clone())));
        Ok(approval)
    }

    /// A human's decision. Exactly one resolution of an approval wins; a
    /// later one gets [`DecideError::AlreadyDecided`] with the winner.
    pub async fn decide(&self, id: Uuid, decision: Decision) -> Result<Resolved, DecideError> {
        let resolution = Resolution::decided(decision, self.shared().now());
        self.resolve(id, resolution).await
    }

    /// Ends an approval without a decision (the agent went away).
    pub async fn cancel(
        &self,
        id: Uuid,
        reason: impl Into<String>,
    ) -> Result<Resolved, DecideError> {
        let resolution = Resolution::ended(
            Verdict::Cancelled,
            "agent",
            reason.into(),
            self.shared().now(),
        );
        self.resolve(id, resolution).await
    }

    /// Ends an approval this replica adopted but cannot carry on, as
    /// [`Verdict::Abandoned`].
    pub async fn abandon(&self, id: Uuid) -> Result<Resolved, DecideError> {
        let resolution = Resolution::ended(
            Verdict::Abandoned,
            "lease",
            "the replica that held it stopped before the call could be handed on".into(),
            self.shared().now(),
        );
        self.resolve(id, resolution).await
    }

    /// Resolves every approval this replica owns as [`Verdict::Shutdown`]
    /// (graceful shutdown: their agents are about to be disconnected).
    pub async fn close_owned(&self, reason: &str) -> Result<Vec<Resolved>, StoreError> {
        let mut closed = Vec::new();
        for approval in self.list().await? {
            if approval.owner != self.replica() {
                continue;
            }
            let resolution = Resolution::ended(
                Verdict::Shutdown,
                "shutdown",
                reason.to_owned(),
                self.shared().now(),
            );
            match self.resolve(approval.id, resolution).await {
                Ok(resolved) => closed.push(resolved),
                Err(DecideError::Store(e)) => return Err(e),
                Err(_) => {}
            }
        }
        Ok(closed)
    }

    async fn resolve(&self, id: Uuid, resolution: Resolution) -> Result<Resolved, DecideError> {
        let shared = self.shared();
        match shared.store.resolve(id, &resolution).await {
            Ok(approval) => {
                // The fast path for waiters on this replica; the pump would
                // wake them too, one store round trip later.
                shared.wake(id, &resolution);
                Ok(Resolved {
                    approval,
                    resolution,
                })
            }
            Err(ResolveError::AlreadyResolved(winner)) => Err(DecideError::AlreadyDecided(winner)),
            Err(ResolveError::NotFound(id)) => Err(DecideError::NotFound(id)),
            Err(ResolveError::Store(e)) => Err(DecideError::Store(e)),
        }
    }

    /// The owner recorded the resolution of approval `id` (its audit row is
    /// committed), so no survivor will record it again if this replica dies.
    pub async fn mark_recorded(&self, id: Uuid) -> Result<(), StoreError> {
        self.shared().store.mark_recorded(id).await
    }

    /// The approvals this replica's name owned in an earlier run: open ones
    /// are resolved as abandoned, resolved but unrecorded ones handed over.
    /// Call once at start, before the first hold; the caller records them.
    pub async fn abandon_leftovers(&self) -> Result<Vec<Resolved>, StoreError> {
        let shared = self.shared();
        let left = shared
            .store
            .abandon_leftovers(&shared.config.replica, shared.now())
            .await?;
        Ok(left
            .into_iter()
            .map(|(approval, resolution)| {
                let resolution = resolution.handed_over(&approval.owner, "restart");
                Resolved {
                    approval,
                    resolution,
                }
            })
            .collect())
    }

    /// The task holds this replica's name recorded in an earlier run whose
    /// task never finished (see [`Store::unfinished_tasks_of`]): call once
    /// at start; the caller ends their tasks.
    pub async fn unfinished_tasks(&self) -> Result<Vec<StoredApproval>, StoreError> {
        let shared = self.shared();
        shared
            .store
            .unfinished_tasks_of(&shared.config.replica)
            .await
    }

    /// Claims the release of approval `id` for this replica (see
    /// [`Store::claim`]): `false` when another replica adopted it meanwhile.
    pub async fn claim(&self, id: Uuid) -> Result<bool, StoreError> {
        let shared = self.shared();
        shared.store.claim(id, &shared.config.replica).await
    }

    /// Takes over the adoptable approvals of replicas whose lease lapsed
    /// (each is adopted by exactly one survivor): open ones, and resolved
    /// ones their owner did not record. The caller carries them on.
    pub async fn adopt_dead(&self) -> Result<Vec<StoredApproval>, StoreError> {
        let shared = self.shared();
        shared
            .store
            .adopt_dead_replicas(&shared.config.replica, shared.now(), shared.config.lease)
            .await
    }

    /// Open approvals on every replica, oldest first.
    pub async fn list(&self) -> Result<Vec<PendingApproval>, StoreError> {
        self.shared().store.list_pending().await
    }

    /// One approval, open or recently resolved.
    pub async fn get(&self, id: Uuid) -> Result<Option<StoredApproval>, StoreError> {
        self.shared().store.get(id).await
    }

    /// Created / resolved events, from every replica, in the order this
    /// replica learns of them.
    pub fn subscribe(&self) -> broadcast::Receiver<ApprovalEvent> {
        self.shared().events.subscribe()
    }

    /// Resolves when approval `id` is resolved, wherever the resolution was
    /// made. Registers at once (before the first poll), so a resolution
    /// committed between this call and the first poll is not missed.
    pub fn wait(
        &self,
        id: Uuid,
    ) -> impl Future<Output = Result<Resolution, WaitError>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let shared = self.inner.shared.clone();
        shared.waiters().entry(id).or_default().push(tx);
        async move {
            match shared.store.get(id).await? {
                None => {
                    shared.waiters().remove(&id);
                    return Err(WaitError::NotFound(id));
                }
                Some(StoredApproval {
                    resolution: Some(resolution),
                    ..
                }) => return Ok(resolution),
                Some(_) => {}
            }
            rx.await.map_err(|_| WaitError::Closed)
        }
    }

    /// Stops the background tasks (heartbeats stop: to other replicas this
    /// replica is now dead) and waits for them. Open approvals are left as
    /// they are; see [`Approvals::close_owned`]. Waiters get
    /// [`WaitError::Closed`].
    pub async fn shutdown(&self) {
        self.shared().stop.cancel();
        let tasks =
            std::mem::take(&mut *self.inner.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for task in tasks {
            let _ = task.await;
        }
        self.shared().waiters().clear();
    }
}
