//! Two approvals services ("replicas") on one real PostgreSQL: fan-out by
//! `LISTEN/NOTIFY`, exactly-once decisions and timeouts by compare-and-set,
//! abandonment of a dead replica's pendings by lease.
//!
//! Each test starts its own throwaway cluster (tests/common/postgres.rs) and
//! skips, saying so, when the PostgreSQL binaries are not installed
//! (`scripts/setup-test-env` installs them).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock::approvals::{
    ApprovalEvent, Approvals, Choice, Clock, Config, DecideError, Decision, NewApproval, OnTimeout,
    Outcome, PostgresStore, Resolution, Verdict,
};
use common::postgres::PgCluster;
use tokio::sync::broadcast;
use uuid::Uuid;

const HEARTBEAT: Duration = Duration::from_millis(200);
const LEASE: Duration = Duration::from_secs(1);

async fn replica(pg: &PgCluster, name: &str) -> Approvals {
    let store = PostgresStore::connect(&pg.url()).await.expect("connect");
    let config = Config {
        replica: name.into(),
        heartbeat: HEARTBEAT,
        lease: LEASE,
        clock: Clock::System,
    };
    Approvals::start(Arc::new(store), config)
        .await
        .expect("start")
}

fn held(tool: &str, timeout: Duration, on_timeout: OnTimeout) -> NewApproval {
    NewApproval {
        id: uuid::Uuid::now_v7(),
        session: "s1".into(),
        agent: "claude".into(),
        upstream: "default".into(),
        tool: tool.into(),
        arguments: Some(r#"{"path":"/etc/hosts","n":[1,2]}"#.into()),
        args_hash: "h".into(),
        rule: "fs_*".into(),
        reason: Some("destructive".into()),
        timeout,
        on_timeout,
        adoptable: false,
    }
}

fn by(who: &str, choice: Choice) -> Decision {
    Decision {
        choice,
        decider: Some(who.into()),
        channel: "api".into(),
        comment: Some(format!("{who} says so")),
    }
}

/// The next event about `id`, within 5 s.
async fn event_about(rx: &mut broadcast::Receiver<ApprovalEvent>, id: Uuid) -> ApprovalEvent {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let event = rx.recv().await.expect("event channel open");
            let about = match &event {
                ApprovalEvent::Created(a) => a.id,
                ApprovalEvent::Resolved { approval, .. } => approval.id,
                ApprovalEvent::Orphaned { .. } | ApprovalEvent::Resynced => continue,
            };
            if about == id {
                return event;
            }
        }
    })
    .await
    .expect("an event within 5 s")
}

/// Every resolution of `id` seen by `rx` within `window`.
async fn resolutions_of(
    rx: &mut broadcast::Receiver<ApprovalEvent>,
    id: Uuid,
    window: Duration,
) -> Vec<Resolution> {
    let mut seen = Vec::new();
    let _ = tokio::time::timeout(window, async {
        while let Ok(event) = rx.recv().await {
            if let ApprovalEvent::Resolved {
                approval,
                resolution,
            } = event
                && approval.id == id
            {
                seen.push(resolution);
            }
        }
    })
    .await;
    seen
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_created_on_a_is_listed_and_announced_on_b() {
    let Some(pg) = PgCluster::start("created") else {
        return;
    };
    let (a, b) = (replica(&pg, "a").await, replica(&pg, "b").await);
    let mut events_b = b.subscribe();

    let p = a
        .create(held("fs_delete", Duration::from_secs(300), OnTimeout::Deny))
        .await
        .unwrap();

    assert_eq!(
        event_about(&mut events_b, p.id).await,
        ApprovalEvent::Created(p.clone())
    );
    assert_eq!(b.list().await.unwrap(), vec![p.clone()]);
    assert_eq!(b.get(p.id).await.unwrap().unwrap().approval, p);
    assert_eq!(p.owner, "a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decision_on_b_releases_the_waiter_on_a() {
    let Some(pg) = PgCluster::start("release") else {
        return;
    };
    let (a, b) = (replica(&pg, "a").await, replica(&pg, "b").await);
    let mut events_a = a.subscribe();
    let mut latencies = Vec::new();
    for i in 0..50 {
        let p = a
            .create(held("fs_delete", Duration::from_secs(300), OnTimeout::Deny))
            .await
            .unwrap();
        let waiter = tokio::spawn(a.wait(p.id));
        // B has seen it (as an approver's dashboard would) before deciding.
        let mut events_b = b.subscribe();
        if !b.list().await.unwrap().iter().any(|x| x.id == p.id) {
            event_about(&mut events_b, p.id).await;
        }
        let choice = if i % 2 == 0 {
            Choice::Approve
        } else {
            Choice::Deny
        };
        let started = Instant::now();
        let decided = b.decide(p.id, by("bob", choice)).await.unwrap();
        let released = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("A's waiter resolves within 5 s")
            .unwrap()
            .unwrap();
        latencies.push(started.elapsed());
        assert_eq!(released, decided.resolution);
        assert_eq!(released.decider.as_deref(), Some("bob"));
        // A's subscribers hear of it too (Created, then Resolved).
        assert!(matches!(
            event_about(&mut events_a, p.id).await,
            ApprovalEvent::Created(_)
        ));
        assert!(matches!(
            event_about(&mut events_a, p.id).await,
            ApprovalEvent::Resolved { .. }
        ));
    }
    latencies.sort();
    let (p50, p99, max) = (
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1],
    );
    println!(
        "decision on B → waiter released on A, {} runs: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latencies.len(),
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    );
    assert!(p99 < Duration::from_millis(500), "p99 {p99:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_deciders_on_a_and_b_one_wins_each_time() {
    let Some(pg) = PgCluster::start("race") else {
        return;
    };
    let (a, b) = (replica(&pg, "a").await, replica(&pg, "b").await);
    for _ in 0..50 {
        let p = a
            .create(held("fs_delete", Duration::from_secs(300), OnTimeout::Deny))
            .await
            .unwrap();
        let (on_a, on_b) = tokio::join!(
            a.decide(p.id, by("alice", Choice::Approve)),
            b.decide(p.id, by("bob", Choice::Deny)),
        );
        let (won, lost) = match (on_a, on_b) {
            (Ok(won), Err(lost)) | (Err(lost), Ok(won)) => (won, lost),
            (a, b) => panic!("expected one winner: {a:?} / {b:?}"),
        };
        match lost {
            DecideError::AlreadyDecided(winner) => {
                assert_eq!(*winner, won.resolution);
            }
            other => panic!("{other:?}"),
        }
        let stored = a.get(p.id).await.unwrap().unwrap();
        assert_eq!(stored.resolution, Some(won.resolution));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_fires_once_with_both_replicas_alive() {
    let Some(pg) = PgCluster::start("timeout") else {
        return;
    };
    let (a, b) = (replica(&pg, "a").await, replica(&pg, "b").await);
    let (mut events_a, mut events_b) = (a.subscribe(), b.subscribe());
    let p = a
        .create(held(
            "fs_write",
            Duration::from_millis(700),
            OnTimeout::Allow,
        ))
        .await
        .unwrap();
    let waiter = tokio::spawn(b.wait(p.id));

    let r = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (r.verdict, r.outcome),
        (Verdict::TimedOut, Outcome::Allowed)
    );
    assert!(r.at >= p.expires_at);
    // Both replicas had a timer (and a sweep); the store let one win.
    let window = Duration::from_secs(2);
    let (seen_a, seen_b) = tokio::join!(
        resolutions_of(&mut events_a, p.id, window),
        resolutions_of(&mut events_b, p.id, window)
    );
    assert_eq!(seen_a, vec![r.clone()]);
    assert_eq!(seen_b, vec![r]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_replicas_pendings_are_abandoned_once_by_the_others() {
    let Some(pg) = PgCluster::start("abandon") else {
        return;
    };
    let (a, b, c) = (
        replica(&pg, "a").await,
        replica(&pg, "b").await,
        replica(&pg, "c").await,
    );
    let mut events_b = b.subscribe();
    let mut held_on_a = Vec::new();
    for _ in 0..3 {
        held_on_a.push(
            a.create(held(
                "fs_delete",
                Duration::from_secs(300),
                OnTimeout::Allow,
            ))
            .await
            .unwrap(),
        );
    }
    let on_b = b
        .create(held(
            "fs_delete",
            Duration::from_secs(300),
            OnTimeout::Allow,
        ))
        .await
        .unwrap();
    for p in &held_on_a {
        assert!(matches!(
            event_about(&mut events_b, p.id).await,
            ApprovalEvent::Created(_)
        ));
    }
    let stopped = Instant::now();
    a.shutdown().await; // no more heartbeats from a

    for p in &held_on_a {
        let seen = resolutions_of(&mut events_b, p.id, Duration::ZERO).await;
        assert!(seen.is_empty(), "not abandoned at once");
    }
    let mut abandoned_after = Duration::ZERO;
    for p in &held_on_a {
        match event_about(&mut events_b, p.id).await {
            ApprovalEvent::Resolved { resolution, .. } => {
                assert_eq!(resolution.verdict, Verdict::Abandoned);
                assert_eq!(resolution.outcome, Outcome::Refused);
                assert_eq!(
                    resolution.reason.as_deref(),
                    Some("replica a stopped heartbeating")
                );
            }
            other => panic!("{other:?}"),
        }
        abandoned_after = stopped.elapsed();
    }
    println!(
        "replica a's 3 pendings abandoned {abandoned_after:?} after its last heartbeat task stopped (lease {LEASE:?}, heartbeat {HEARTBEAT:?})"
    );
    assert!(
        abandoned_after >= LEASE - HEARTBEAT,
        "not before the lease lapsed: {abandoned_after:?}"
    );
    // Bounded: lease + a heartbeat, plus slack for a loaded CI machine.
    assert!(
        abandoned_after <= LEASE + HEARTBEAT + Duration::from_secs(2),
        "{abandoned_after:?}"
    );
    // Exactly once although b and c both look every heartbeat.
    for p in &held_on_a {
        assert!(
            resolutions_of(&mut events_b, p.id, Duration::from_secs(1))
                .await
                .is_empty()
        );
    }
    assert_eq!(c.list().await.unwrap(), vec![on_b]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_migrate_once() {
    let Some(pg) = PgCluster::start("migrate") else {
        return;
    };
    let url = pg.url();
    let stores = futures::future::join_all((0..4).map(|_| PostgresStore::connect(&url))).await;
    for store in stores {
        store.expect("connect and migrate");
    }
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let versions: Vec<i32> = client
        .query("SELECT version FROM airlock_schema ORDER BY version", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    // Each migration once, in order (the count grows with the schema).
    let expected: Vec<i32> = (1..=versions.len() as i32).collect();
    assert!(versions.len() >= 3, "{versions:?}");
    assert_eq!(versions, expected);
}
