//! Tasks kept in PostgreSQL (`[store] url`), beside the approvals they wait
//! for: any replica answers `tasks/get` and `tasks/cancel` for any task, and
//! when the replica that accepted a task dies, the survivor that adopts its
//! approval ([`crate::approvals::Approvals::adopt_dead`]) finds here the call
//! to run and goes on with the task.
//!
//! Only the agent's `Mcp-*` headers are kept with the call (what an HTTP
//! upstream reads to route a stateless-era request); credentials the agent
//! passed through are not written to the database, so an adopted task runs
//! without them.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use deadpool_postgres::Pool;
use serde_json::Value;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::approvals::StoreError;

/// One task as the database keeps it.
#[derive(Debug, Clone)]
pub struct TaskRow {
    pub id: String,
    pub pending_id: Uuid,
    pub session_key: String,
    pub agent: String,
    pub upstream: String,
    /// The call as the upstream gets it (without the tasks extension).
    pub request: String,
    /// The agent's `Mcp-*` headers, as a JSON object.
    pub headers: Option<Value>,
    pub status: String,
    pub status_message: String,
    pub result: Option<Value>,
    pub error: Option<Value>,
    pub created_at: String,
    pub updated_at: String,
    pub ttl_ms: i64,
}

/// A task's state after a change.
pub struct TaskUpdate<'a> {
    pub status: &'a str,
    pub status_message: &'a str,
    pub result: Option<&'a Value>,
    pub error: Option<&'a Value>,
    pub updated_at: &'a str,
    /// Finished: the row may be deleted after this many seconds.
    pub forget_after_secs: Option<f64>,
}

pub struct TaskStore {
    pool: Pool,
}

/// With its causes: tokio-postgres says only "db error" on its own.
fn db(e: impl std::error::Error) -> StoreError {
    StoreError(crate::pgtls::with_causes(&e))
}

const COLUMNS: &str = "id, pending_id, session_key, agent, upstream, request, headers, status, \
    status_message, result, error, created_at, updated_at, ttl_ms";

impl TaskStore {
    pub fn new(pool: Pool) -> TaskStore {
        TaskStore { pool }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(db)
    }

    pub async fn insert(&self, t: &TaskRow) -> Result<(), StoreError> {
        let client = self.client().await?;
        let sql = format!(
            "INSERT INTO airlock_tasks ({COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
        );
        let statement = client.prepare_cached(&sql).await.map_err(db)?;
        client
            .execute(
                &statement,
                &[
                    &t.id,
                    &t.pending_id,
                    &t.session_key,
                    &t.agent,
                    &t.upstream,
                    &t.request,
                    &t.headers,
                    &t.status,
                    &t.status_message,
                    &t.result,
                    &t.error,
                    &t.created_at,
                    &t.updated_at,
                    &t.ttl_ms,
                ],
            )
            .await
            .map_err(db)?;
        Ok(())
    }

    /// Writes a task's new state, unless the row has a newer one (a later
    /// `updated_at`: a retried write must not undo a newer state). A
    /// cancelled task stays cancelled (the agent's `tasks/cancel` may have
    /// reached another replica first). `Ok(false)`: nothing changed.
    pub async fn update(&self, id: &str, u: &TaskUpdate<'_>) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "UPDATE airlock_tasks SET status = $2, status_message = $3, result = $4, \
                 error = $5, updated_at = $6, \
                 forget_after = now() + make_interval(secs => $7::float8) \
                 WHERE id = $1 AND status <> 'cancelled' \
                 AND updated_at::timestamptz < $6::text::timestamptz",
            )
            .await
            .map_err(db)?;
        let result = u.result.cloned();
        let error = u.error.cloned();
        // NULL interval: not finished, never forgotten.
        let changed = client
            .execute(
                &statement,
                &[
                    &id,
                    &u.status,
                    &u.status_message,
                    &result,
                    &error,
                    &u.updated_at,
                    &u.forget_after_secs,
                ],
            )
            .await
            .map_err(db)?;
        Ok(changed == 1)
    }

    pub async fn get(&self, id: &str) -> Result<Option<TaskRow>, StoreError> {
        self.one(
            &format!("SELECT {COLUMNS} FROM airlock_tasks WHERE id = $1"),
            id,
        )
        .await
    }

    /// The task holding approval `pending_id`, if the hold became a task.
    pub async fn of_pending(&self, pending_id: Uuid) -> Result<Option<TaskRow>, StoreError> {
        let client = self.client().await?;
        let sql = format!("SELECT {COLUMNS} FROM airlock_tasks WHERE pending_id = $1");
        let statement = client.prepare_cached(&sql).await.map_err(db)?;
        let row = client
            .query_opt(&statement, &[&pending_id])
            .await
            .map_err(db)?;
        row.as_ref().map(from_row).transpose()
    }

    async fn one(&self, sql: &str, id: &str) -> Result<Option<TaskRow>, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await.map_err(db)?;
        let row = client.query_opt(&statement, &[&id]).await.map_err(db)?;
        row.as_ref().map(from_row).transpose()
    }

    /// Deletes finished tasks whose time is up.
    pub async fn prune(&self) -> Result<u64, StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM airlock_tasks WHERE forget_after < now() \
                 OR created_at::timestamptz + ttl_ms * interval '1 millisecond' < now()",
                &[],
            )
            .await
            .map_err(db)
    }
}

fn from_row(row: &Row) -> Result<TaskRow, StoreError> {
    Ok(TaskRow {
        id: row.try_get("id").map_err(db)?,
        pending_id: row.try_get("pending_id").map_err(db)?,
        session_key: row.try_get("session_key").map_err(db)?,
        agent: row.try_get("agent").map_err(db)?,
        upstream: row.try_get("upstream").map_err(db)?,
        request: row.try_get("request").map_err(db)?,
        headers: row.try_get("headers").map_err(db)?,
        status: row.try_get("status").map_err(db)?,
        status_message: row.try_get("status_message").map_err(db)?,
        result: row.try_get("result").map_err(db)?,
        error: row.try_get("error").map_err(db)?,
        created_at: row.try_get("created_at").map_err(db)?,
        updated_at: row.try_get("updated_at").map_err(db)?,
        ttl_ms: row.try_get("ttl_ms").map_err(db)?,
    })
}

/// The `Mcp-*` headers of a request, as kept with its task.
pub fn mcp_headers(headers: &HeaderMap) -> Value {
    let kept: serde_json::Map<String, Value> = headers
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("mcp-"))
        .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.into())))
        .collect();
    Value::Object(kept)
}

/// Headers kept with a task, back as a header map (unreadable ones dropped).
pub fn header_map(kept: &Value) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in kept.as_object().into_iter().flatten() {
        if let (Ok(name), Some(Ok(value))) = (
            HeaderName::from_bytes(name.as_bytes()),
            value.as_str().map(HeaderValue::from_str),
        ) {
            map.insert(name, value);
        }
    }
    map
}
