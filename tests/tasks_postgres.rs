//! The shared task store (`airlock::tasks::shared`) on a real PostgreSQL:
//! rows written, read back and pruned — finished ones after their
//! `forget_after`, any after `created_at + ttl_ms` (a task whose replica
//! died before finishing it is not kept for ever); a newer state is never
//! overwritten by an older one; a state written while PostgreSQL is down
//! lands once it is back.
//!
//! Starts its own throwaway cluster (tests/common/postgres.rs); skips, saying
//! so, when the PostgreSQL binaries are not installed.

mod common;

use airlock::approvals::PostgresStore;
use airlock::jsonrpc::Message;
use airlock::tasks::Tasks;
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
    let later = (chrono::Utc::now() + chrono::Duration::seconds(1)).to_rfc3339();
    let finished = TaskUpdate {
        status: "completed",
        status_message: "approved and completed",
        result: Some(&result),
        error: None,
        updated_at: &later,
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

#[tokio::test]
async fn an_older_state_never_overwrites_a_newer_one() {
    let Some(pg) = PgCluster::start("tasks-order") else {
        return;
    };
    let store = PostgresStore::connect(&pg.url()).await.expect("connect");
    let tasks = TaskStore::new(store.pool());
    tasks
        .insert(&row("t", "2026-12-05T10:00:00.000Z", 3_600_000))
        .await
        .unwrap();
    let result = json!({"content": [], "isError": false});
    let state = |status, updated_at| TaskUpdate {
        status,
        status_message: "",
        result: Some(&result),
        error: None,
        updated_at,
        forget_after_secs: None,
    };
    let newer = state("completed", "2026-12-05T10:00:02.000Z");
    assert!(tasks.update("t", &newer).await.unwrap());
    // A retry of an earlier state that lands late: refused.
    let older = state("input_required", "2026-12-05T10:00:01.000Z");
    assert!(!tasks.update("t", &older).await.unwrap());
    // The same state again changes nothing either.
    assert!(!tasks.update("t", &newer).await.unwrap());
    let read = tasks.get("t").await.unwrap().expect("row");
    assert_eq!(
        (read.status.as_str(), read.updated_at.as_str()),
        ("completed", "2026-12-05T10:00:02.000Z")
    );
}

/// A task finished while PostgreSQL was down reaches the shared store once
/// it is back (retried with backoff), so other replicas do not show it
/// `working` until its ttl.
#[tokio::test]
async fn a_state_written_while_postgresql_is_down_lands_once_it_is_back() {
    let Some(pg) = PgCluster::start("tasks-retry") else {
        return;
    };
    let store = PostgresStore::connect(&pg.url()).await.expect("connect");
    let shared = TaskStore::new(store.pool());
    let tasks = Tasks::new(Some(store.pool()));
    let call = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"x"}}"#;
    let call = Message::parse(bytes::Bytes::from(call)).unwrap();
    let (id, _) = tasks.create(
        &uuid::Uuid::now_v7().to_string(),
        "agent:bot",
        std::time::Duration::from_secs(60),
        &call,
    );
    tasks
        .share(&id, uuid::Uuid::now_v7(), "bot", "default", None)
        .await;
    assert_eq!(
        shared.get(&id).await.unwrap().expect("shared").status,
        "working"
    );

    pg.stop();
    let done = r#"{"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"ran"}],"isError":false}}"#;
    tasks.finish(&id, &Message::parse(bytes::Bytes::from(done)).unwrap());
    // Fails (the database is down) and is retried in the background.
    tokio::time::timeout(std::time::Duration::from_secs(10), tasks.persist(&id))
        .await
        .expect("persist does not wait for the database to come back");
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    pg.start_again();

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        if let Ok(Some(row)) = shared.get(&id).await
            && row.status == "completed"
        {
            assert_eq!(row.result.unwrap()["content"][0]["text"], "ran");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the finished state never reached the store"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
