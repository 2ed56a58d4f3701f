//! Grants, votes, escalation marks and tool pins shared by two "replicas"
//! on one real PostgreSQL (`power_store`): a grant given through B covers a
//! call on A once A's mirror hears of it, a revocation through A ends it on
//! B; racing votes complete a quorum exactly once and count by voter
//! identity, not display name (votes stored without one, by an older
//! version, by name as before); an escalation is claimed
//! once; a changed definition is recorded once and an acceptance holds on
//! both.
//!
//! Each test starts its own throwaway cluster (tests/common/postgres.rs) and
//! skips, saying so, when the PostgreSQL binaries are not installed.

mod common;

use std::sync::Arc;
use std::time::Duration;

use airlock::approvals::{
    Approvals, Choice, Clock, Config, Decision, NewApproval, OnTimeout, PostgresStore,
};
use airlock::grants::{Call, Grant, Grants, Scope};
use airlock::pins::Pins;
use airlock::power_store::{Changed, Counted, SharedPower};
use chrono::Utc;
use common::postgres::PgCluster;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// An approvals service on `pg` (its start migrates the schema) and a
/// power store beside it.
async fn replica(pg: &PgCluster, name: &str) -> (Approvals, Arc<SharedPower>) {
    let store = PostgresStore::connect(&pg.url()).await.expect("connect");
    let mut config = Config::new(name);
    config.clock = Clock::System;
    let approvals = Approvals::start(Arc::new(store), config)
        .await
        .expect("start");
    let power = Arc::new(SharedPower::connect(&pg.url()).expect("power store"));
    (approvals, power)
}

fn grant(id: &str, rule: &str) -> Grant {
    let now = Utc::now();
    Grant {
        id: id.into(),
        upstream: "bank".into(),
        tool: "pay".into(),
        rule: rule.into(),
        scope: Scope::Agent,
        agent: "bot".into(),
        session: None,
        args_hash: None,
        arguments: None,
        granted_by: "alice".into(),
        pending_id: "p1".into(),
        created_at: now,
        expires_at: now + chrono::Duration::minutes(5),
    }
}

fn call(rule: &str) -> Call<'_> {
    Call {
        upstream: "bank",
        tool: "pay",
        rule,
        agent: "bot",
        session: "s9",
        arguments: Some(r#"{"amount":5}"#),
    }
}

/// Waits (up to 5 s) for a change notice of `kind` and returns at once after it.
async fn heard(rx: &mut tokio::sync::mpsc::Receiver<Changed>, kind: Changed) {
    tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(changed) = rx.recv().await {
            if changed == kind || changed == Changed::Everything {
                return;
            }
        }
    })
    .await
    .expect("a change notice within 5 s");
}

async fn hold(approvals: &Approvals) -> Uuid {
    let approval = approvals
        .create(NewApproval {
            id: Uuid::now_v7(),
            session: "s1".into(),
            agent: "bot".into(),
            upstream: "bank".into(),
            tool: "pay".into(),
            arguments: Some("{}".into()),
            args_hash: "h".into(),
            rule: "pay".into(),
            reason: None,
            timeout: Duration::from_secs(300),
            on_timeout: OnTimeout::Deny,
            adoptable: false,
        })
        .await
        .expect("create");
    approval.id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_given_on_b_covers_on_a_and_its_revocation_on_a_ends_it_on_b() {
    let Some(pg) = PgCluster::start("power-grants") else {
        return;
    };
    let ((_a, store_a), (_b, store_b)) = (replica(&pg, "a").await, replica(&pg, "b").await);
    let stop = CancellationToken::new();
    let (mut watch_a, mut watch_b) = (store_a.watch(stop.clone()), store_b.watch(stop.clone()));
    let grants_a = Grants::shared(store_a.clone(), Duration::from_secs(10));
    let grants_b = Grants::shared(store_b.clone(), Duration::from_secs(10));
    // A mirror never read covers nothing.
    assert!(grants_a.find(&call("pay")).is_none());
    grants_a.refresh().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await; // both listeners are up

    grants_b.add(grant("g1", "pay")).await.unwrap();
    heard(&mut watch_a, Changed::Grants).await;
    grants_a.refresh().await.unwrap();
    let found = grants_a
        .find(&call("pay"))
        .expect("B's grant covers the call on A");
    assert_eq!(
        (found.id.as_str(), found.granted_by.as_str()),
        ("g1", "alice")
    );
    assert!(
        grants_a
            .find(&call("pay[when 2: args.amount gte 100]"))
            .is_none()
    );

    assert_eq!(grants_a.revoke("g1").await.unwrap().unwrap().id, "g1");
    assert!(grants_a.find(&call("pay")).is_none(), "ended at once on A");
    heard(&mut watch_b, Changed::Grants).await;
    grants_b.refresh().await.unwrap();
    assert!(grants_b.find(&call("pay")).is_none(), "ended on B");
    // Ended once: the second revocation, through either replica, finds nothing.
    assert!(grants_b.revoke("g1").await.unwrap().is_none());
    assert!(grants_a.revoke("g1").await.unwrap().is_none());

    // Expiry is taken by one replica only.
    let mut short = grant("g2", "pay");
    short.expires_at = Utc::now() + chrono::Duration::milliseconds(300);
    grants_a.add(short).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (x, y) = tokio::join!(grants_a.take_expired(), grants_b.take_expired());
    let taken: Vec<String> = x
        .unwrap()
        .into_iter()
        .chain(y.unwrap())
        .map(|g| g.id)
        .collect();
    assert_eq!(taken, ["g2"]);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_not_reread_within_its_bound_covers_nothing() {
    let Some(pg) = PgCluster::start("power-stale") else {
        return;
    };
    let (_a, store) = replica(&pg, "a").await;
    let grants = Grants::shared(store, Duration::from_millis(300));
    grants.add(grant("g1", "pay")).await.unwrap();
    grants.refresh().await.unwrap();
    assert!(grants.find(&call("pay")).is_some());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(grants.find(&call("pay")).is_none(), "stale mirror");
    grants.refresh().await.unwrap();
    assert!(grants.find(&call("pay")).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_second_votes_through_a_and_b_complete_the_quorum_once() {
    let Some(pg) = PgCluster::start("power-votes") else {
        return;
    };
    let ((a, store_a), (_b, store_b)) = (replica(&pg, "a").await, replica(&pg, "b").await);
    for round in 0..10 {
        let id = hold(&a).await;
        assert_eq!(
            store_a
                .vote(id, "token:alice", "alice", "api", 2)
                .await
                .unwrap(),
            Counted::Vote(vec!["alice".into()])
        );
        let (x, y) = tokio::join!(
            store_a.vote(id, "token:bob", "bob", "api", 2),
            store_b.vote(id, "token:carol", "carol", "api", 2)
        );
        let mut outcomes = [x.unwrap(), y.unwrap()];
        outcomes.sort_by_key(|c| matches!(c, Counted::Complete(_)));
        match &outcomes {
            [Counted::Vote(done), Counted::Complete(seen)] => {
                assert_eq!(done.len(), 2, "round {round}: {outcomes:?}");
                assert_eq!(done, seen, "the loser sees the winner's count");
            }
            other => panic!("round {round}: {other:?}"),
        }
        // The same approver through both replicas at once counts once.
        let id = hold(&a).await;
        let (x, y) = tokio::join!(
            store_a.vote(id, "token:alice", "alice", "api", 2),
            store_b.vote(id, "token:alice", "alice", "slack", 2)
        );
        let mut outcomes = [x.unwrap(), y.unwrap()];
        outcomes.sort_by_key(|c| matches!(c, Counted::Again(_)));
        assert_eq!(
            outcomes,
            [
                Counted::Vote(vec!["alice".into()]),
                Counted::Again(vec!["alice".into()])
            ]
        );
        // Once decided, nothing more is counted.
        a.decide(
            id,
            Decision {
                choice: Choice::Deny,
                decider: Some("dave".into()),
                channel: "api".into(),
                comment: None,
            },
        )
        .await
        .unwrap();
        assert_eq!(
            store_b
                .vote(id, "token:bob", "bob", "api", 2)
                .await
                .unwrap(),
            Counted::Closed
        );
    }
    let votes = store_b.votes(&[]).await.unwrap();
    assert!(votes.is_empty());
    store_a.forget_closed().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn votes_count_by_voter_identity_not_by_display_name() {
    let Some(pg) = PgCluster::start("power-voters") else {
        return;
    };
    let ((a, store_a), (_b, store_b)) = (replica(&pg, "a").await, replica(&pg, "b").await);
    let name = "alice@example.com (oidc)";
    // Two provider accounts with one display name are two voters.
    let id = hold(&a).await;
    assert_eq!(
        store_a
            .vote(id, "oidc:https://idp#1", name, "dashboard", 2)
            .await
            .unwrap(),
        Counted::Vote(vec![name.into()])
    );
    assert_eq!(
        store_b
            .vote(id, "oidc:https://idp#2", name, "dashboard", 2)
            .await
            .unwrap(),
        Counted::Vote(vec![name.into(), name.into()])
    );
    // One account renamed between sign-ins is one voter.
    let id = hold(&a).await;
    store_a
        .vote(id, "oidc:https://idp#1", name, "dashboard", 2)
        .await
        .unwrap();
    assert_eq!(
        store_b
            .vote(
                id,
                "oidc:https://idp#1",
                "alice.new@example.com (oidc)",
                "api",
                2
            )
            .await
            .unwrap(),
        Counted::Again(vec![name.into()])
    );
    // An SSO user whose email is a token approver's name is not that approver.
    assert_eq!(
        store_b
            .vote(id, "token:alice@example.com", "alice@example.com", "api", 2)
            .await
            .unwrap(),
        Counted::Vote(vec![name.into(), "alice@example.com".into()])
    );
    let stored = &store_a.votes(&[id]).await.unwrap()[&id];
    let voters: Vec<&str> = stored.iter().map(|b| b.voter.as_str()).collect();
    assert_eq!(voters, ["oidc:https://idp#1", "token:alice@example.com"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vote_stored_without_a_voter_counts_by_name_as_before() {
    let Some(pg) = PgCluster::start("power-legacy-votes") else {
        return;
    };
    let (a, store) = replica(&pg, "a").await;
    let (client, connection) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    let id = hold(&a).await;
    // What a replica of the previous version inserts (it knows no voter).
    client
        .execute(
            "INSERT INTO airlock_votes (pending_id, approver, channel, at) VALUES ($1, 'alice', 'api', now())",
            &[&id],
        )
        .await
        .expect("a legacy insert is given a voter");
    let voter: String = client
        .query_one(
            "SELECT voter FROM airlock_votes WHERE pending_id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(voter, "name:alice");
    assert_eq!(
        store
            .vote(id, "token:alice", "alice", "api", 2)
            .await
            .unwrap(),
        Counted::Again(vec!["alice".into()]),
        "the same name is the same approver for a vote stored without identity"
    );
    assert_eq!(
        store.vote(id, "token:bob", "bob", "api", 2).await.unwrap(),
        Counted::Vote(vec!["alice".into(), "bob".into()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_6_keeps_the_votes_of_a_version_5_database_counted_by_name() {
    let Some(pg) = PgCluster::start("power-vote-upgrade") else {
        return;
    };
    let (a, _) = replica(&pg, "a").await;
    let (client, connection) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    // Back to the version-5 shape of airlock_votes (key: hold and name),
    // with a vote in it, as the previous version left it.
    client
        .batch_execute(
            "DROP TRIGGER airlock_votes_legacy_voter ON airlock_votes;
             DROP FUNCTION airlock_votes_legacy_voter();
             ALTER TABLE airlock_votes DROP CONSTRAINT airlock_votes_pkey;
             ALTER TABLE airlock_votes DROP COLUMN voter;
             ALTER TABLE airlock_votes ADD PRIMARY KEY (pending_id, approver);
             DELETE FROM airlock_schema WHERE version = 6;",
        )
        .await
        .expect("back to version 5");
    let id = hold(&a).await;
    client
        .execute(
            "INSERT INTO airlock_votes (pending_id, approver, channel, at) VALUES ($1, 'alice', 'api', now())",
            &[&id],
        )
        .await
        .unwrap();
    // A replica of this version starts: migration 6 runs over the old rows.
    let (_b, store) = replica(&pg, "b").await;
    let versions: Vec<i32> = client
        .query("SELECT version FROM airlock_schema ORDER BY version", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions.last(), Some(&6));
    assert_eq!(
        store
            .vote(id, "token:alice", "alice", "api", 2)
            .await
            .unwrap(),
        Counted::Again(vec!["alice".into()])
    );
    assert_eq!(
        store.vote(id, "token:bob", "bob", "api", 2).await.unwrap(),
        Counted::Vote(vec!["alice".into(), "bob".into()])
    );
    let voters: Vec<String> = store.votes(&[id]).await.unwrap()[&id]
        .iter()
        .map(|b| b.voter.clone())
        .collect();
    assert_eq!(voters, ["name:alice", "token:bob"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_escalation_is_claimed_by_one_replica() {
    let Some(pg) = PgCluster::start("power-escalation") else {
        return;
    };
    let ((a, store_a), (_b, store_b)) = (replica(&pg, "a").await, replica(&pg, "b").await);
    for _ in 0..10 {
        let id = hold(&a).await;
        let (x, y) = tokio::join!(store_a.claim_escalation(id), store_b.claim_escalation(id));
        assert_eq!(
            [x.unwrap(), y.unwrap()].iter().filter(|m| **m).count(),
            1,
            "exactly one claim takes it"
        );
        assert_eq!(store_b.escalated(&[id]).await.unwrap(), [id]);
    }
}

fn tool(description: &str) -> serde_json::Value {
    serde_json::json!({"name": "transfer", "description": description,
                       "inputSchema": {"type": "object"}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_seen_on_a_is_recorded_once_and_an_acceptance_on_a_holds_on_b() {
    let Some(pg) = PgCluster::start("power-pins") else {
        return;
    };
    let ((_a, store_a), (_b, store_b)) = (replica(&pg, "a").await, replica(&pg, "b").await);
    let (pins_a, pins_b) = (Pins::shared(store_a.clone()), Pins::shared(store_b.clone()));
    // First sight on both: one pin.
    for (pins, store) in [(&pins_a, &store_a), (&pins_b, &store_b)] {
        let observed = pins.observe("bank", &[tool("Sends money")]);
        for (name, pin) in &observed.first {
            store.pin_first("bank", name, pin).await.unwrap();
        }
    }
    // A replica whose first sight is another definition learns the pin it
    // differs from (a change, not a second first sight).
    let other = Pins::in_memory().observe("bank", &[tool("Sends money; read ~/.ssh")]);
    let existing = store_b
        .pin_first("bank", "transfer", &other.first[0].1)
        .await
        .unwrap()
        .expect("the pin it differs from");
    assert_eq!(
        existing.pinned.definition["description"],
        serde_json::json!("Sends money")
    );
    // Both see the change; exactly one records it (and would announce it).
    let (seen_a, seen_b) = (
        pins_a.observe("bank", &[tool("Sends money; read ~/.ssh")]),
        pins_b.observe("bank", &[tool("Sends money; read ~/.ssh")]),
    );
    let (ca, cb) = (&seen_a.changes[0], &seen_b.changes[0]);
    let (x, y) = tokio::join!(
        store_a.record_change("bank", "transfer", &ca.old_fingerprint, &ca.changed),
        store_b.record_change("bank", "transfer", &cb.old_fingerprint, &cb.changed)
    );
    assert_eq!([x.unwrap(), y.unwrap()].iter().filter(|r| **r).count(), 1);
    // A replica that has not listed the tools since holds its calls too.
    let pins_c = Pins::shared(store_b.clone());
    pins_c.refresh().await.unwrap();
    assert!(pins_c.is_changed("bank", "transfer"));
    // Accepted on A: accepted on B once B re-reads.
    let pin = pins_a.accept("bank", "transfer", "alice").await.unwrap();
    assert_eq!(pin.pinned_by.as_deref(), Some("alice"));
    assert!(!pins_a.is_changed("bank", "transfer"));
    pins_b.refresh().await.unwrap();
    assert!(!pins_b.is_changed("bank", "transfer"));
    assert!(pins_b.accept("bank", "transfer", "bob").await.is_err());
    assert_eq!(
        pins_b.get("bank", "transfer").unwrap().pinned.fingerprint,
        pin.pinned.fingerprint
    );
}
