//! The shared rate-limit budgets (GCRA in one statement) against a real
//! PostgreSQL: two "replicas" (two pools on one database) spend one budget,
//! racing or taking turns; refusals say when the next call is free; a
//! database that is gone refuses instead of allowing.
//!
//! Each test starts its own throwaway cluster (tests/common/postgres.rs) and
//! skips, saying so, when the PostgreSQL binaries are not installed.

mod common;

use std::time::{Duration, Instant};

use airlock::approvals::PostgresStore;
use airlock::budgets::{Budget, SharedBudgets};
use common::postgres::PgCluster;

/// One replica's budgets: its own pool, migrated by the approvals store.
async fn replica(pg: &PgCluster) -> (PostgresStore, SharedBudgets) {
    let store = PostgresStore::connect(&pg.url()).await.expect("connect");
    let budgets = SharedBudgets::new(store.pool());
    (store, budgets)
}

fn budget<'a>(rule: &'a str, subject: &'a str) -> Budget<'a> {
    Budget {
        upstream: "everything",
        rule,
        subject,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_taking_turns_share_one_burst_then_say_when() {
    let Some(pg) = PgCluster::start("budget-turns") else {
        return;
    };
    let ((_sa, a), (_sb, b)) = (replica(&pg).await, replica(&pg).await);
    let window = Duration::from_secs(30); // 3 per 30 s: one every 10 s
    let mut answers = Vec::new();
    for i in 0..6 {
        let on = if i % 2 == 0 { &a } else { &b };
        answers.push(
            on.take(&budget("add", "agent:ci"), 3, window)
                .await
                .unwrap(),
        );
    }
    assert!(answers[..3].iter().all(Result::is_ok), "{answers:?}");
    for refused in &answers[3..] {
        let wait = refused.expect_err("over the burst");
        assert!(
            wait > Duration::from_secs(9) && wait <= Duration::from_secs(10),
            "the next call is free one emission interval (10 s) after the burst: {wait:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_replicas_allow_exactly_max() {
    let Some(pg) = PgCluster::start("budget-race") else {
        return;
    };
    let ((_sa, a), (_sb, b)) = (replica(&pg).await, replica(&pg).await);
    let calls = (0..40).map(|i| {
        let on = if i % 2 == 0 { a.clone() } else { b.clone() };
        tokio::spawn(async move {
            on.take(&budget("add", "agent:ci"), 5, Duration::from_secs(60))
                .await
                .unwrap()
        })
    });
    let answers = futures::future::join_all(calls).await;
    let allowed = answers.iter().filter(|r| matches!(r, Ok(Ok(())))).count();
    assert_eq!(allowed, 5, "{answers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_call_is_allowed_after_the_wait_it_was_told() {
    let Some(pg) = PgCluster::start("budget-refill") else {
        return;
    };
    let ((_sa, a), (_sb, b)) = (replica(&pg).await, replica(&pg).await);
    let window = Duration::from_secs(2); // 2 per 2 s: one every second
    let key = budget("add", "agent:ci");
    assert!(a.take(&key, 2, window).await.unwrap().is_ok());
    assert!(b.take(&key, 2, window).await.unwrap().is_ok());
    let wait = a.take(&key, 2, window).await.unwrap().unwrap_err();
    assert!(wait <= Duration::from_secs(1), "{wait:?}");
    tokio::time::sleep(wait + Duration::from_millis(20)).await;
    assert!(
        b.take(&key, 2, window).await.unwrap().is_ok(),
        "free again after {wait:?}"
    );
    assert!(
        a.take(&key, 2, window).await.unwrap().is_err(),
        "one call refilled, not the burst"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_are_per_rule_and_per_agent() {
    let Some(pg) = PgCluster::start("budget-keys") else {
        return;
    };
    let (_s, a) = replica(&pg).await;
    let window = Duration::from_secs(60);
    assert!(
        a.take(&budget("add", "agent:ci"), 1, window)
            .await
            .unwrap()
            .is_ok()
    );
    assert!(
        a.take(&budget("add", "agent:ci"), 1, window)
            .await
            .unwrap()
            .is_err()
    );
    assert!(
        a.take(&budget("add", "agent:other"), 1, window)
            .await
            .unwrap()
            .is_ok()
    );
    assert!(
        a.take(&budget("echo", "agent:ci"), 1, window)
            .await
            .unwrap()
            .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_deletes_full_budgets_and_keeps_spent_ones() {
    let Some(pg) = PgCluster::start("budget-purge") else {
        return;
    };
    let (store, a) = replica(&pg).await;
    a.take(&budget("quick", "agent:ci"), 1, Duration::from_millis(200))
        .await
        .unwrap()
        .unwrap();
    a.take(&budget("slow", "agent:ci"), 1, Duration::from_secs(600))
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(a.purge().await.unwrap(), 1);
    let client = store.pool().get().await.unwrap();
    let rules: Vec<String> = client
        .query("SELECT rule FROM airlock_rate_budgets", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(rules, ["slow"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_is_gone_refuses_within_seconds() {
    let Some(pg) = PgCluster::start("budget-gone") else {
        return;
    };
    let (_s, a) = replica(&pg).await;
    let key = budget("add", "agent:ci");
    assert!(
        a.take(&key, 5, Duration::from_secs(60))
            .await
            .unwrap()
            .is_ok()
    );
    drop(pg); // pg_ctl stop -m immediate
    let started = Instant::now();
    let error = a
        .take(&key, 5, Duration::from_secs(60))
        .await
        .expect_err("no answer is not an allowance");
    assert!(started.elapsed() < Duration::from_secs(3), "{error}");
    assert!(!error.to_string().is_empty());
}

/// What a rate-limited call pays for its shared budget: one statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_take_costs_one_round_trip() {
    let Some(pg) = PgCluster::start("budget-cost") else {
        return;
    };
    let (_s, a) = replica(&pg).await;
    let mut took = Vec::new();
    for i in 0..500 {
        let subject = format!("agent:{}", i % 10);
        let started = Instant::now();
        a.take(&budget("add", &subject), 1000, Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        took.push(started.elapsed());
    }
    took.sort();
    let (p50, p99) = (took[250], took[495]);
    eprintln!("shared budget take: p50 {p50:?}, p99 {p99:?} (500 calls, 10 agents)");
    assert!(p50 < Duration::from_millis(50), "p50 {p50:?}");
}
