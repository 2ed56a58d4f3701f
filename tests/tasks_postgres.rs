//! The shared task store (`airlock::tasks::shared`) on a real PostgreSQL:
//! rows written, read back and pruned — finished ones after their
//! `forget_after`, any after `created_at + ttl_ms` (a task whose replica
//! died before finishing it is not kept for ever).
//!
//! Starts its own throwaway cluster (tests/common/postgres.rs); skips, saying
//! so, when the PostgreSQL binaries are not installed.

mod common;

use airlock::approvals::PostgresStore;
use airlock::tasks::shared::{TaskRow, TaskStore, TaskUpdate};
use common::postgres::PgCluster;
use serde_json::json;

fn row(id: &str, created_at: &str, ttl_ms: i64) -> TaskRow {
    TaskRow {
        id: id.into(),
        pending_id: uuid::Uuid::now_v7(),
        session_key: "agent:bot".into(),
        agent: "bot".into(),
        upstream: "default".into(),
        request: r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}"#.into(),
        headers: Some(json!({"mcp-method": "tools/call"})),
        status: "working".into(),
        status_message: "waiting for human approval".into(),
        result: None,
        error: None,
        created_at: created_at.into(),
        updated_at: created_at.into(),
        ttl_ms,
    }
}

#[tokio::test]
async fn tasks_are_shared_updated_and_pruned_when_finished_or_past_their_ttl() {
    let Some(pg) = PgCluster::start("tasks") else {
        return;
    };
    let store = PostgresStore::connect(&pg.url()).await.expect("connect");
    let tasks = TaskStore::new(store.pool());
    let now = chrono::Utc::now().to_rfc3339();
    let long_ago = (chrono::Utc::now() - chrono::Duration::hours(3)).to_rfc3339();
    tasks.insert(&row("live", &now, 3_600_000)).await.unwrap();
    tasks
        .insert(&row("stale", &long_ago, 3_600_000))
        .await
        .unwrap();
    tasks.insert(&row("done", &now, 3_600_000)).await.unwrap();
    let result = json!({"content": [], "isError": false});
    let finished = TaskUpdate {
        status: "completed",
        status_message: "approved and completed",
        result: Some(&result),
        error: None,
        updated_at: &now,
        forget_after_secs: Some(0.0),
    };
    tasks.update("done", &finished).await.unwrap();
    let read = tasks.get("done").await.unwrap().expect("row");
    assert_eq!(
        (read.status.as_str(), read.result),
        ("completed", Some(result))
    );
    let live = tasks.get("live").await.unwrap().expect("row");
    assert_eq!(live.headers, Some(json!({"mcp-method": "tools/call"})));
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(
        tasks.prune().await.unwrap(),
        2,
        "the finished row and the one past its ttl"
    );
    assert!(tasks.get("live").await.unwrap().is_some());
    assert!(tasks.get("stale").await.unwrap().is_none());
    assert!(tasks.get("done").await.unwrap().is_none());
    assert!(tasks.of_pending(live.pending_id).await.unwrap().is_some());
}
