//! The shared store: PostgreSQL, for several replicas on one database.
//!
//! - Migrations run on connect, under an advisory lock (replicas starting
//!   together take turns), recorded in `airlock_schema`.
//! - Exactly once: every resolution is `UPDATE … WHERE id = $1 AND state =
//!   'pending' RETURNING …`. Row locks serialize racing updates; the loser
//!   re-reads the row, no longer matches, and gets the winner back.
//! - Fan-out: a trigger on `airlock_approvals` sends `NOTIFY
//!   airlock_approvals` with `{"kind":"created"|"resolved","id":…}` in the
//!   writing transaction, so any writer (any replica, a future CLI) is
//!   heard. A dedicated connection `LISTEN`s, reads the row and streams it
//!   to [`Store::watch`]; after a reconnect it streams `Resync`.
//! - Leases: `airlock_replica_leases` keeps each replica's last heartbeat in
//!   the database's clock (`now()`), so replicas' clock skew cannot make a
//!   live replica look dead.
//!
//! TLS as the URL's `sslmode` says ([`crate::pgtls`]).

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::{broadcast, mpsc};
use tokio_postgres::{AsyncMessage, Row};
use tokio_util::sync::{CancellationToken, DropGuard};
use uuid::Uuid;

use super::model::{OnTimeout, Outcome, PendingApproval, Resolution, Verdict};
use super::store::{ResolveError, Store, StoreError, StoreEvent, StoredApproval, watch_broadcast};

/// The `LISTEN/NOTIFY` channel.
pub const CHANNEL: &str = "airlock_approvals";

/// Key of the advisory lock that serializes migrations.
const MIGRATION_LOCK: i64 = 0x6169_726c_6f63_6b01; // "airlock" 1

/// Schema versions, applied in order, each once.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, V1),
    (2, V2),
    (3, V3),
    (4, crate::budgets::SCHEMA),
    (5, crate::power_store::MIGRATION),
    (6, crate::power_store::VOTER_MIGRATION),
];

/// Adoptable approvals (a survivor takes them over instead of abandoning
/// them) and the stateless-era tasks that hold them (`crate::tasks`).
const V3: &str = "
ALTER TABLE airlock_approvals ADD COLUMN adoptable boolean NOT NULL DEFAULT false;
CREATE TABLE airlock_tasks (
    id             text PRIMARY KEY,
    pending_id     uuid NOT NULL,
    session_key    text NOT NULL,
    agent          text NOT NULL,
    upstream       text NOT NULL,
    request        text NOT NULL,
    headers        jsonb,
    status         text NOT NULL,
    status_message text NOT NULL,
    result         jsonb,
    error          jsonb,
    created_at     text NOT NULL,
    updated_at     text NOT NULL,
    ttl_ms         bigint NOT NULL,
    forget_after   timestamptz
);
CREATE INDEX airlock_tasks_pending ON airlock_tasks (pending_id);
";

/// Whether the owner recorded the resolution. Rows from before are taken as
/// recorded (they were, or were abandoned at a restart).
const V2: &str = "
ALTER TABLE airlock_approvals ADD COLUMN recorded boolean NOT NULL DEFAULT true;
ALTER TABLE airlock_approvals ALTER COLUMN recorded SET DEFAULT false;
CREATE INDEX airlock_approvals_unrecorded ON airlock_approvals (owner)
    WHERE state = 'resolved' AND NOT recorded;
";

/// Owners whose lease ran out (`$lease` is the parameter number of the lease in seconds).
fn dead_owners(lease: &str) -> String {
    format!(
        "owner IN (SELECT replica FROM airlock_replica_leases \
         WHERE heartbeat_at < now() - make_interval(secs => {lease}::float8))"
    )
}

const V1: &str = "
CREATE TABLE airlock_approvals (
    id             uuid PRIMARY KEY,
    session        text NOT NULL,
    agent          text NOT NULL,
    upstream       text NOT NULL,
    tool           text NOT NULL,
    arguments      text,
    args_hash      text NOT NULL,
    rule           text NOT NULL,
    reason         text,
    created_at     timestamptz NOT NULL,
    expires_at     timestamptz NOT NULL,
    on_timeout     text NOT NULL CHECK (on_timeout IN ('allow', 'deny')),
    owner          text NOT NULL,
    state          text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'resolved')),
    verdict        text,
    outcome        text,
    decider        text,
    channel        text,
    comment        text,
    resolve_reason text,
    resolved_at    timestamptz
);
CREATE INDEX airlock_approvals_open ON airlock_approvals (created_at, id) WHERE state = 'pending';
CREATE INDEX airlock_approvals_open_owner ON airlock_approvals (owner) WHERE state = 'pending';
CREATE TABLE airlock_replica_leases (
    replica      text PRIMARY KEY,
    heartbeat_at timestamptz NOT NULL
);
CREATE FUNCTION airlock_approvals_notify() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('airlock_approvals', json_build_object(
        'kind', CASE WHEN TG_OP = 'INSERT' THEN 'created' ELSE 'resolved' END,
        'id', NEW.id)::text);
    RETURN NULL;
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER airlock_approvals_notify
    AFTER INSERT OR UPDATE OF state ON airlock_approvals
    FOR EACH ROW EXECUTE FUNCTION airlock_approvals_notify();
";

const COLUMNS: &str = "id, session, agent, upstream, tool, arguments, args_hash, rule, reason, \
    created_at, expires_at, on_timeout, owner, adoptable, verdict, outcome, decider, channel, \
    comment, resolve_reason, resolved_at";

/// Events buffered per watcher before it lags (and gets a `Resync`).
const WATCH_BUFFER: usize = 4096;

pub struct PostgresStore {
    pool: Pool,
    events: broadcast::Sender<StoreEvent>,
    /// Stops the listener task when the store is dropped.
    _stop: DropGuard,
}

fn db(e: impl std::error::Error) -> StoreError {
    StoreError(crate::pgtls::with_causes(&e))
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user@host:port/db`), migrates the
    /// schema, and starts listening for changes before returning.
    pub async fn connect(url: &str) -> Result<PostgresStore, StoreError> {
        let config = crate::pgtls::Target::parse(url).map_err(db)?;
        let manager = Manager::from_config(
            config.config.clone(),
            config.tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager).max_size(8).build().map_err(db)?;
        migrate(&pool).await?;
        let events = broadcast::channel(WATCH_BUFFER).0;
        let stop = CancellationToken::new();
        let listener = Listener::open(&config).await?;
        tokio::spawn(listen(
            config,
            listener,
            pool.clone(),
            events.clone(),
            stop.clone(),
        ));
        Ok(PostgresStore {
            pool,
            events,
            _stop: stop.drop_guard(),
        })
    }

    /// The connection pool, for other tables in the same database: the
    /// tasks (`crate::tasks`) and the rate-limit budgets (`crate::budgets`).
    pub fn pool(&self) -> Pool {
        self.pool.clone()
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(db)
    }
}

async fn migrate(pool: &Pool) -> Result<(), StoreError> {
    let mut client = pool.get().await.map_err(db)?;
    let tx = client.transaction().await.map_err(db)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(db)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS airlock_schema (
            version    integer PRIMARY KEY,
            applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await
    .map_err(db)?;
    let current: i32 = tx
        .query_one("SELECT COALESCE(max(version), 0) FROM airlock_schema", &[])
        .await
        .map_err(db)?
        .get(0);
    let known = MIGRATIONS.last().map_or(0, |(v, _)| *v);
    if current > known {
        return Err(StoreError(format!(
            "the database schema is at version {current}, newer than this Airlock knows ({known}): upgrade Airlock"
        )));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tx.batch_execute(sql)
            .await
            .map_err(|e| StoreError(format!("migration {version}: {e}")))?;
        tx.execute(
            "INSERT INTO airlock_schema (version) VALUES ($1)",
            &[version],
        )
        .await
        .map_err(db)?;
    }
    tx.commit().await.map_err(db)
}

fn from_row(row: &Row) -> Result<StoredApproval, StoreError> {
    let bad =
        |what: &str, value: &str| StoreError(format!("bad {what} {value:?} in airlock_approvals"));
    let on_timeout: String = row.get("on_timeout");
    let approval = PendingApproval {
        id: row.get("id"),
        session: row.get("session"),
        agent: row.get("agent"),
        upstream: row.get("upstream"),
        tool: row.get("tool"),
        arguments: row.get("arguments"),
        args_hash: row.get("args_hash"),
        rule: row.get("rule"),
        reason: row.get("reason"),
        created_at: row.get("created_at"),
        expires_at: row.get("expires_at"),
        on_timeout: OnTimeout::parse(&on_timeout).ok_or_else(|| bad("on_timeout", &on_timeout))?,
        owner: row.get("owner"),
        adoptable: row.get("adoptable"),
    };
    let resolution = match row.get::<_, Option<String>>("verdict") {
        None => None,
        Some(verdict) => {
            let outcome: String = row.get("outcome");
            Some(Resolution {
                verdict: Verdict::parse(&verdict).ok_or_else(|| bad("verdict", &verdict))?,
                outcome: Outcome::parse(&outcome).ok_or_else(|| bad("outcome", &outcome))?,
                decider: row.get("decider"),
                channel: row.get("channel"),
                comment: row.get("comment"),
                reason: row.get("resolve_reason"),
                at: row.get("resolved_at"),
            })
        }
    };
    Ok(StoredApproval {
        approval,
        resolution,
    })
}

fn pending_rows(rows: Vec<Row>) -> Result<Vec<PendingApproval>, StoreError> {
    rows.iter()
        .map(|r| from_row(r).map(|s| s.approval))
        .collect()
}

/// Reads one approval with `client`.
async fn get(
    client: &tokio_postgres::Client,
    id: Uuid,
) -> Result<Option<StoredApproval>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM airlock_approvals WHERE id = $1");
    let row = client.query_opt(&sql, &[&id]).await.map_err(db)?;
    row.as_ref().map(from_row).transpose()
}

#[async_trait]
impl Store for PostgresStore {
    async fn insert_pending(&self, a: &PendingApproval) -> Result<(), StoreError> {
        let client = self.client().await?;
        let sql = "INSERT INTO airlock_approvals (id, session, agent, upstream, tool, arguments, \
            args_hash, rule, reason, created_at, expires_at, on_timeout, owner, adoptable) \
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)";
        let statement = client.prepare_cached(sql).await.map_err(db)?;
        client
            .execute(
                &statement,
                &[
                    &a.id,
                    &a.session,
                    &a.agent,
                    &a.upstream,
                    &a.tool,
                    &a.arguments,
                    &a.args_hash,
                    &a.rule,
                    &a.reason,
                    &a.created_at,
                    &a.expires_at,
                    &a.on_timeout.as_str(),
                    &a.owner,
                    &a.adoptable,
                ],
            )
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn resolve(&self, id: Uuid, r: &Resolution) -> Result<PendingApproval, ResolveError> {
        let client = self.client().await?;
        let sql = format!(
            "UPDATE airlock_approvals SET state = 'resolved', verdict = $2, outcome = $3, \
             decider = $4, channel = $5, comment = $6, resolve_reason = $7, resolved_at = $8 \
             WHERE id = $1 AND state = 'pending' RETURNING {COLUMNS}"
        );
        let statement = client.prepare_cached(&sql).await.map_err(db)?;
        let row = client
            .query_opt(
                &statement,
                &[
                    &id,
                    &r.verdict.as_str(),
                    &r.outcome.as_str(),
                    &r.decider,
                    &r.channel,
                    &r.comment,
                    &r.reason,
                    &r.at,
                ],
            )
            .await
            .map_err(db)?;
        if let Some(row) = row {
            return Ok(from_row(&row)?.approval);
        }
        match get(&client, id).await? {
            None => Err(ResolveError::NotFound(id)),
            Some(StoredApproval {
                resolution: Some(winner),
                ..
            }) => Err(ResolveError::AlreadyResolved(Box::new(winner))),
            Some(_) => Err(StoreError(format!(
                "approval {id} is pending but could not be resolved"
            ))
            .into()),
        }
    }

    async fn list_pending(&self) -> Result<Vec<PendingApproval>, StoreError> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT {COLUMNS} FROM airlock_approvals WHERE state = 'pending' ORDER BY created_at, id"
        );
        pending_rows(client.query(&sql, &[]).await.map_err(db)?)
    }

    async fn get(&self, id: Uuid) -> Result<Option<StoredApproval>, StoreError> {
        get(&*self.client().await?, id).await
    }

    async fn expired(&self, now: DateTime<Utc>) -> Result<Vec<PendingApproval>, StoreError> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT {COLUMNS} FROM airlock_approvals WHERE state = 'pending' AND expires_at <= $1 \
             ORDER BY created_at, id"
        );
        pending_rows(client.query(&sql, &[&now]).await.map_err(db)?)
    }

    async fn heartbeat(&self, replica: &str, _now: DateTime<Utc>) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO airlock_replica_leases (replica, heartbeat_at) VALUES ($1, now()) \
                 ON CONFLICT (replica) DO UPDATE SET heartbeat_at = now()",
                &[&replica],
            )
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn abandon_dead_replicas(
        &self,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<Vec<(PendingApproval, Resolution)>, StoreError> {
        let client = self.client().await?;
        let abandon = format!(
            "UPDATE airlock_approvals SET state = 'resolved', verdict = 'abandoned', \
             outcome = 'refused', channel = 'lease', recorded = true, \
             resolve_reason = 'replica ' || owner || ' stopped heartbeating', resolved_at = $1 \
             WHERE state = 'pending' AND NOT adoptable AND {} RETURNING {COLUMNS}",
            dead_owners("$2")
        );
        let unrecorded = format!(
            "UPDATE airlock_approvals SET recorded = true \
             WHERE state = 'resolved' AND NOT recorded AND NOT adoptable AND {} \
             RETURNING {COLUMNS}",
            dead_owners("$1")
        );
        let lease = lease.as_secs_f64();
        let mut rows = client.query(&abandon, &[&now, &lease]).await.map_err(db)?;
        rows.extend(client.query(&unrecorded, &[&lease]).await.map_err(db)?);
        resolved_rows(&rows)
    }

    async fn adopt_dead_replicas(
        &self,
        replica: &str,
        _now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<Vec<StoredApproval>, StoreError> {
        let client = self.client().await?;
        // One statement: the owner is compared and set, so of several
        // survivors sweeping at once each row goes to exactly one. Recorded
        // ones too while their task is unfinished (the owner died after the
        // decision, maybe mid-call): the survivor ends that task.
        let adopt = format!(
            "UPDATE airlock_approvals SET owner = $1 \
             WHERE adoptable AND owner <> $1 AND (state = 'pending' OR NOT recorded \
               OR id IN (SELECT pending_id FROM airlock_tasks \
                         WHERE status IN ('working', 'input_required'))) \
             AND {} RETURNING {COLUMNS}",
            dead_owners("$2")
        );
        let rows = client
            .query(&adopt, &[&replica, &lease.as_secs_f64()])
            .await
            .map_err(db)?;
        rows.iter().map(from_row).collect()
    }

    async fn abandon_leftovers(
        &self,
        replica: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<(PendingApproval, Resolution)>, StoreError> {
        let client = self.client().await?;
        let abandon = format!(
            "UPDATE airlock_approvals SET state = 'resolved', verdict = 'abandoned', \
             outcome = 'refused', channel = 'restart', recorded = true, \
             resolve_reason = 'replica ' || owner || ' restarted before a decision', \
             resolved_at = $1 WHERE state = 'pending' AND owner = $2 RETURNING {COLUMNS}"
        );
        let unrecorded = format!(
            "UPDATE airlock_approvals SET recorded = true \
             WHERE state = 'resolved' AND NOT recorded AND owner = $1 RETURNING {COLUMNS}"
        );
        let mut rows = client
            .query(&abandon, &[&now, &replica])
            .await
            .map_err(db)?;
        rows.extend(client.query(&unrecorded, &[&replica]).await.map_err(db)?);
        resolved_rows(&rows)
    }

    async fn unfinished_tasks_of(&self, replica: &str) -> Result<Vec<StoredApproval>, StoreError> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT {COLUMNS} FROM airlock_approvals \
             WHERE adoptable AND owner = $1 AND state = 'resolved' AND recorded \
             AND id IN (SELECT pending_id FROM airlock_tasks \
                        WHERE status IN ('working', 'input_required'))"
        );
        let rows = client.query(&sql, &[&replica]).await.map_err(db)?;
        rows.iter().map(from_row).collect()
    }

    async fn mark_recorded(&self, id: Uuid) -> Result<(), StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached("UPDATE airlock_approvals SET recorded = true WHERE id = $1")
            .await
            .map_err(db)?;
        client.execute(&statement, &[&id]).await.map_err(db)?;
        Ok(())
    }

    async fn claim(&self, id: Uuid, owner: &str) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "UPDATE airlock_approvals SET recorded = true \
                 WHERE id = $1 AND owner = $2 AND NOT recorded",
            )
            .await
            .map_err(db)?;
        let changed = client
            .execute(&statement, &[&id, &owner])
            .await
            .map_err(db)?;
        Ok(changed == 1)
    }

    fn watch(&self) -> BoxStream<'static, StoreEvent> {
        watch_broadcast(self.events.subscribe())
    }
}

/// Resolved rows with their resolutions.
fn resolved_rows(rows: &[Row]) -> Result<Vec<(PendingApproval, Resolution)>, StoreError> {
    rows.iter()
        .map(|row| {
            let stored = from_row(row)?;
            let resolution = stored
                .resolution
                .ok_or_else(|| StoreError("resolved row without a verdict".into()))?;
            Ok((stored.approval, resolution))
        })
        .collect()
}

/// A connection that has run `LISTEN`, and its notification payloads.
struct Listener {
    /// Kept so the connection stays open.
    _client: tokio_postgres::Client,
    payloads: mpsc::UnboundedReceiver<String>,
}

impl Listener {
    async fn open(target: &crate::pgtls::Target) -> Result<Listener, StoreError> {
        let (client, mut connection) = target
            .config
            .connect(target.tls.clone())
            .await
            .map_err(db)?;
        let (tx, payloads) = mpsc::unbounded_channel();
        // Driving the connection is what delivers notifications; the task
        // ends (and `payloads` closes) when the connection does.
        tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(n)) => {
                        if tx.send(n.payload().to_owned()).is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!("approval store listener: {e}");
                        break;
                    }
                }
            }
        });
        client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .await
            .map_err(db)?;
        Ok(Listener {
            _client: client,
            payloads,
        })
    }
}

#[derive(serde::Deserialize)]
struct Notice {
    kind: String,
    id: Uuid,
}

/// Notifications → rows → [`StoreEvent`]s, in notification (commit) order;
/// reconnects with backoff and then announces a `Resync`.
async fn listen(
    config: crate::pgtls::Target,
    mut listener: Listener,
    pool: Pool,
    events: broadcast::Sender<StoreEvent>,
    stop: CancellationToken,
) {
    loop {
        loop {
            let payload = tokio::select! {
                _ = stop.cancelled() => return,
                payload = listener.payloads.recv() => payload,
            };
            let Some(payload) = payload else { break };
            match to_event(&pool, &payload).await {
                Ok(Some(event)) => {
                    let _ = events.send(event);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!("approval store notification {payload:?}: {e}");
                    let _ = events.send(StoreEvent::Resync);
                }
            }
        }
        let mut backoff = Duration::from_millis(100);
        listener = loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            match Listener::open(&config).await {
                Ok(listener) => break listener,
                Err(e) => {
                    tracing::warn!("approval store listener reconnect: {e}");
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        };
        let _ = events.send(StoreEvent::Resync);
    }
}

async fn to_event(pool: &Pool, payload: &str) -> Result<Option<StoreEvent>, StoreError> {
    let notice: Notice = serde_json::from_str(payload).map_err(db)?;
    let client = pool.get().await.map_err(db)?;
    let Some(stored) = get(&client, notice.id).await? else {
        return Ok(None);
    };
    Ok(match (notice.kind.as_str(), stored.resolution) {
        ("created", _) => Some(StoreEvent::Created(stored.approval)),
        ("resolved", Some(resolution)) => Some(StoreEvent::Resolved(stored.approval, resolution)),
        _ => None,
    })
}
