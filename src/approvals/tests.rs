//! The lifecycle with paused time against the in-process store: no sockets,
//! no sleeping. Two services on one `MemoryStore` stand for two replicas.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::time::{advance, timeout};

use super::*;

/// Replicas sharing one store and one clock (as NTP-synced hosts would).
struct Cluster {
    store: Arc<MemoryStore>,
    clock: Clock,
}

impl Cluster {
    fn new() -> Cluster {
        Cluster {
            store: Arc::new(MemoryStore::new()),
            clock: Clock::tokio(),
        }
    }

    async fn replica(&self, name: &str) -> Approvals {
        let config = Config {
            replica: name.into(),
            heartbeat: Duration::from_secs(1),
            lease: Duration::from_secs(5),
            clock: self.clock,
        };
        Approvals::start(self.store.clone(), config).await.unwrap()
    }
}

fn held(tool: &str, secs: u64, on_timeout: OnTimeout) -> NewApproval {
    NewApproval {
        id: uuid::Uuid::now_v7(),
        session: "s1".into(),
        agent: "claude".into(),
        upstream: "default".into(),
        tool: tool.into(),
        arguments: Some(r#"{"id":7}"#.into()),
        args_hash: "h".into(),
        rule: tool.into(),
        reason: Some("destructive".into()),
        timeout: Duration::from_secs(secs),
        on_timeout,
        adoptable: false,
    }
}

fn by(who: &str, choice: Choice) -> Decision {
    Decision {
        choice,
        decider: Some(who.into()),
        channel: "api".into(),
        comment: Some("ok".into()),
    }
}

async fn next(rx: &mut broadcast::Receiver<ApprovalEvent>) -> ApprovalEvent {
    timeout(Duration::from_secs(1), rx.recv())
        .await
        .expect("an event within 1 s")
        .expect("an open channel")
}

/// Every `Resolved` event of `id` seen by `rx` within `window`.
async fn resolutions_of(
    rx: &mut broadcast::Receiver<ApprovalEvent>,
    id: Uuid,
    window: Duration,
) -> Vec<Resolution> {
    let mut seen = Vec::new();
    let _ = timeout(window, async {
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

#[tokio::test(start_paused = true)]
async fn second_decider_gets_already_decided_with_who_won() {
    let approvals = Cluster::new().replica("a").await;
    let p = approvals
        .create(held("delete", 300, OnTimeout::Deny))
        .await
        .unwrap();

    let won = approvals
        .decide(p.id, by("alice", Choice::Approve))
        .await
        .unwrap();
    assert_eq!(won.resolution.verdict, Verdict::Approved);
    assert_eq!(won.resolution.outcome, Outcome::Allowed);
    assert_eq!(won.approval, p);

    match approvals.decide(p.id, by("bob", Choice::Deny)).await {
        Err(DecideError::AlreadyDecided(winner)) => {
            assert_eq!(winner.decider.as_deref(), Some("alice"));
            assert_eq!(winner.verdict, Verdict::Approved);
            assert_eq!(winner.at, won.resolution.at);
        }
        other => panic!("expected AlreadyDecided, got {other:?}"),
    }
    assert!(approvals.list().await.unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn unknown_id_is_not_found() {
    let approvals = Cluster::new().replica("a").await;
    let id = Uuid::now_v7();
    assert!(matches!(
        approvals.decide(id, by("alice", Choice::Approve)).await,
        Err(DecideError::NotFound(_))
    ));
    assert!(matches!(
        approvals.wait(id).await,
        Err(WaitError::NotFound(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn timeout_fires_once_with_on_timeout_even_with_two_replicas() {
    let cluster = Cluster::new();
    let (a, b) = (cluster.replica("a").await, cluster.replica("b").await);
    let (mut events_a, mut events_b) = (a.subscribe(), b.subscribe());
    let allow = a.create(held("read", 30, OnTimeout::Allow)).await.unwrap();
    let deny = b.create(held("delete", 60, OnTimeout::Deny)).await.unwrap();

    let waited = a.wait(allow.id).await.unwrap();
    assert_eq!(waited.verdict, Verdict::TimedOut);
    assert_eq!(waited.outcome, Outcome::Allowed);
    assert_eq!(waited.channel, "timeout");
    assert_eq!(
        waited.at, allow.expires_at,
        "fires at expires_at, not later"
    );
    let waited = a.wait(deny.id).await.unwrap();
    assert_eq!(waited.outcome, Outcome::Refused);
    assert_eq!(waited.reason.as_deref(), Some("no decision within 60 s"));

    // Both replicas had a timer for each; each fired once in the store.
    let seen_a = resolutions_of(&mut events_a, allow.id, Duration::from_secs(120)).await;
    assert_eq!(seen_a.len(), 1);
    let seen_b = resolutions_of(&mut events_b, deny.id, Duration::from_secs(120)).await;
    assert_eq!(seen_b.len(), 1);
    assert!(matches!(
        b.decide(allow.id, by("late", Choice::Deny)).await,
        Err(DecideError::AlreadyDecided(w)) if w.verdict == Verdict::TimedOut && w.decider.is_none()
    ));
}

#[tokio::test(start_paused = true)]
async fn no_timeout_before_expiry() {
    let approvals = Cluster::new().replica("a").await;
    let p = approvals
        .create(held("delete", 300, OnTimeout::Deny))
        .await
        .unwrap();
    advance(Duration::from_secs(299)).await;
    assert_eq!(approvals.list().await.unwrap(), vec![p.clone()]);
    approvals
        .decide(p.id, by("alice", Choice::Deny))
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn cancel_resolves_the_waiter_as_cancelled() {
    let approvals = Cluster::new().replica("a").await;
    let p = approvals
        .create(held("delete", 300, OnTimeout::Allow))
        .await
        .unwrap();
    let waiter = tokio::spawn(approvals.wait(p.id));

    let cancelled = approvals.cancel(p.id, "agent went away").await.unwrap();
    let r = waiter.await.unwrap().unwrap();
    assert_eq!(r, cancelled.resolution);
    assert_eq!(r.verdict, Verdict::Cancelled);
    assert_eq!(
        r.outcome,
        Outcome::Refused,
        "cancel never releases, whatever on_timeout says"
    );
    assert_eq!(r.reason.as_deref(), Some("agent went away"));
    assert!(matches!(
        approvals.decide(p.id, by("alice", Choice::Approve)).await,
        Err(DecideError::AlreadyDecided(w)) if w.verdict == Verdict::Cancelled
    ));
}

#[tokio::test(start_paused = true)]
async fn many_concurrent_deciders_exactly_one_wins() {
    let cluster = Cluster::new();
    let replicas = [cluster.replica("a").await, cluster.replica("b").await];
    let mut events = replicas[0].subscribe();
    let p = replicas[0]
        .create(held("delete", 300, OnTimeout::Deny))
        .await
        .unwrap();

    let racers: Vec<_> = (0..64)
        .map(|i| {
            let approvals = replicas[i % 2].clone();
            let choice = if i % 3 == 0 {
                Choice::Deny
            } else {
                Choice::Approve
            };
            tokio::spawn(async move { approvals.decide(p.id, by(&format!("r{i}"), choice)).await })
        })
        .collect();
    let mut wins = Vec::new();
    let mut losers = Vec::new();
    for racer in racers {
        match racer.await.unwrap() {
            Ok(won) => wins.push(won),
            Err(DecideError::AlreadyDecided(w)) => losers.push(w.decider),
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(wins.len(), 1);
    assert_eq!(losers.len(), 63);
    let winner = wins[0].resolution.decider.clone();
    assert!(
        losers.iter().all(|l| *l == winner),
        "every loser is told who won"
    );
    let _created = next(&mut events).await;
    assert_eq!(
        resolutions_of(&mut events, p.id, Duration::from_secs(10))
            .await
            .len(),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn waiter_on_one_replica_is_woken_by_a_decision_on_another() {
    let cluster = Cluster::new();
    let (a, b) = (cluster.replica("a").await, cluster.replica("b").await);
    let p = a
        .create(held("delete", 300, OnTimeout::Deny))
        .await
        .unwrap();
    let waiter = tokio::spawn(a.wait(p.id));
    tokio::task::yield_now().await;

    assert_eq!(b.list().await.unwrap(), vec![p.clone()]);
    let decided = b.decide(p.id, by("bob", Choice::Approve)).await.unwrap();
    let r = waiter.await.unwrap().unwrap();
    assert_eq!(r, decided.resolution);
    assert_eq!(r.decider.as_deref(), Some("bob"));
}

#[tokio::test(start_paused = true)]
async fn wait_after_the_decision_returns_it_at_once() {
    let approvals = Cluster::new().replica("a").await;
    let p = approvals
        .create(held("delete", 300, OnTimeout::Deny))
        .await
        .unwrap();
    let decided = approvals
        .decide(p.id, by("alice", Choice::Deny))
        .await
        .unwrap();
    assert_eq!(approvals.wait(p.id).await.unwrap(), decided.resolution);
}

#[tokio::test(start_paused = true)]
async fn events_are_emitted_in_order() {
    let cluster = Cluster::new();
    let (a, b) = (cluster.replica("a").await, cluster.replica("b").await);
    let mut events = b.subscribe();
    let first = a.create(held("one", 300, OnTimeout::Deny)).await.unwrap();
    let second = a.create(held("two", 300, OnTimeout::Deny)).await.unwrap();
    a.decide(second.id, by("alice", Choice::Approve))
        .await
        .unwrap();
    a.cancel(first.id, "gone").await.unwrap();

    assert_eq!(
        next(&mut events).await,
        ApprovalEvent::Created(first.clone())
    );
    assert_eq!(
        next(&mut events).await,
        ApprovalEvent::Created(second.clone())
    );
    match next(&mut events).await {
        ApprovalEvent::Resolved {
            approval,
            resolution,
        } => {
            assert_eq!(approval.id, second.id);
            assert_eq!(resolution.verdict, Verdict::Approved);
        }
        other => panic!("{other:?}"),
    }
    match next(&mut events).await {
        ApprovalEvent::Resolved {
            approval,
            resolution,
        } => {
            assert_eq!(approval.id, first.id);
            assert_eq!(resolution.verdict, Verdict::Cancelled);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn list_is_oldest_first_across_replicas() {
    let cluster = Cluster::new();
    let (a, b) = (cluster.replica("a").await, cluster.replica("b").await);
    let mut made = Vec::new();
    for i in 0..6 {
        let replica = if i % 2 == 0 { &a } else { &b };
        made.push(
            replica
                .create(held(&format!("t{i}"), 300, OnTimeout::Deny))
                .await
                .unwrap(),
        );
        advance(Duration::from_millis(3)).await;
    }
    assert_eq!(a.list().await.unwrap(), made);
    assert_eq!(b.list().await.unwrap(), made);
}

#[tokio::test(start_paused = true)]
async fn dead_replicas_pendings_are_abandoned_once_within_the_lease() {
    let cluster = Cluster::new();
    let (a, b, c) = (
        cluster.replica("a").await,
        cluster.replica("b").await,
        cluster.replica("c").await,
    );
    let mut events = b.subscribe();
    let on_a = a
        .create(held("delete", 3600, OnTimeout::Allow))
        .await
        .unwrap();
    let on_b = b
        .create(held("delete", 3600, OnTimeout::Allow))
        .await
        .unwrap();
    let killed_at = tokio::time::Instant::now();
    a.shutdown().await; // a stops heartbeating: to b and c it is dead

    let seen = resolutions_of(&mut events, on_a.id, Duration::from_secs(10)).await;
    assert_eq!(
        seen.len(),
        1,
        "abandoned once although b and c both noticed"
    );
    assert_eq!(seen[0].verdict, Verdict::Abandoned);
    assert_eq!(seen[0].outcome, Outcome::Refused);
    assert_eq!(
        seen[0].reason.as_deref(),
        Some("replica a stopped heartbeating")
    );
    let after = (seen[0].at - on_a.created_at).to_std().unwrap();
    assert!(
        after <= Duration::from_secs(5 + 1 + 1),
        "within lease + heartbeat: {after:?}"
    );
    assert!(
        killed_at.elapsed() >= Duration::from_secs(5),
        "not before the lease lapsed"
    );
    // The live replica's pending is untouched.
    assert_eq!(c.list().await.unwrap(), vec![on_b]);
}

#[tokio::test(start_paused = true)]
async fn a_dead_replicas_adoptable_approvals_are_adopted_once_not_abandoned() {
    let cluster = Cluster::new();
    let (a, b, c) = (
        cluster.replica("a").await,
        cluster.replica("b").await,
        cluster.replica("c").await,
    );
    let task = a
        .create(NewApproval {
            adoptable: true,
            ..held("delete", 3600, OnTimeout::Deny)
        })
        .await
        .unwrap();
    let decided = a
        .create(NewApproval {
            adoptable: true,
            ..held("delete", 3600, OnTimeout::Deny)
        })
        .await
        .unwrap();
    // Decided through b while a is alive but, as far as the store knows, not recorded by a.
    b.decide(decided.id, by("alice", Choice::Approve))
        .await
        .unwrap();
    assert!(b.adopt_dead().await.unwrap().is_empty(), "a is alive");
    a.shutdown().await;
    tokio::time::sleep(Duration::from_secs(12)).await; // past the lease and sweeps
    let (by_b, by_c) = (b.adopt_dead().await.unwrap(), c.adopt_dead().await.unwrap());
    let adopted: Vec<_> = by_b.iter().chain(&by_c).collect();
    assert_eq!(
        adopted.len(),
        2,
        "each adopted once although b and c both swept"
    );
    let open = adopted.iter().find(|s| s.approval.id == task.id).unwrap();
    assert!(open.resolution.is_none(), "the sweeps did not abandon it");
    assert!(["b", "c"].contains(&open.approval.owner.as_str()));
    let was_decided = adopted
        .iter()
        .find(|s| s.approval.id == decided.id)
        .unwrap();
    assert_eq!(
        was_decided.resolution.as_ref().map(|r| r.verdict),
        Some(Verdict::Approved)
    );
    assert_eq!(c.list().await.unwrap()[0].id, task.id);
    assert!(b.adopt_dead().await.unwrap().is_empty() && c.adopt_dead().await.unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn only_the_owner_claims_a_release_and_only_once() {
    let cluster = Cluster::new();
    let (a, b) = (cluster.replica("a").await, cluster.replica("b").await);
    let held = a
        .create(NewApproval {
            adoptable: true,
            ..held("delete", 3600, OnTimeout::Deny)
        })
        .await
        .unwrap();
    b.decide(held.id, by("alice", Choice::Approve))
        .await
        .unwrap();
    assert!(!b.claim(held.id).await.unwrap(), "b does not own it");
    assert!(a.claim(held.id).await.unwrap());
    assert!(!a.claim(held.id).await.unwrap(), "once");
}

#[tokio::test(start_paused = true)]
async fn close_owned_ends_only_this_replicas_approvals() {
    let cluster = Cluster::new();
    let (a, b) = (cluster.replica("a").await, cluster.replica("b").await);
    let on_a = a
        .create(held("delete", 300, OnTimeout::Allow))
        .await
        .unwrap();
    let on_b = b
        .create(held("delete", 300, OnTimeout::Allow))
        .await
        .unwrap();
    let waiter = tokio::spawn(a.wait(on_a.id));

    let closed = a.close_owned("gateway shutting down").await.unwrap();
    assert_eq!(closed.len(), 1);
    let r = waiter.await.unwrap().unwrap();
    assert_eq!(
        (r.verdict, r.outcome),
        (Verdict::Shutdown, Outcome::Refused)
    );
    assert_eq!(b.list().await.unwrap(), vec![on_b]);
}

#[tokio::test(start_paused = true)]
async fn shutdown_closes_waiters() {
    let approvals = Cluster::new().replica("a").await;
    let p = approvals
        .create(held("delete", 300, OnTimeout::Deny))
        .await
        .unwrap();
    let waiter = tokio::spawn(approvals.wait(p.id));
    tokio::task::yield_now().await;
    approvals.shutdown().await;
    assert!(matches!(waiter.await.unwrap(), Err(WaitError::Closed)));
}

#[tokio::test(start_paused = true)]
async fn dropping_the_last_handle_closes_waiters() {
    let approvals = Cluster::new().replica("a").await;
    let p = approvals
        .create(held("delete", 300, OnTimeout::Deny))
        .await
        .unwrap();
    let waiter = tokio::spawn(approvals.wait(p.id));
    tokio::task::yield_now().await;
    drop(approvals);
    let closed = timeout(Duration::from_secs(1), waiter).await.unwrap();
    assert!(matches!(closed.unwrap(), Err(WaitError::Closed)));
}

/// Orphaned events for `id` seen on `rx` within `window`.
async fn orphans_of(
    rx: &mut broadcast::Receiver<ApprovalEvent>,
    id: Uuid,
    window: Duration,
) -> Vec<Resolution> {
    let mut seen = Vec::new();
    let _ = timeout(window, async {
        while let Ok(event) = rx.recv().await {
            if let ApprovalEvent::Orphaned {
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

#[tokio::test(start_paused = true)]
async fn a_decision_a_dead_owner_never_recorded_is_handed_over_once_as_abandoned() {
    let cluster = Cluster::new();
    let (a, b, c) = (
        cluster.replica("a").await,
        cluster.replica("b").await,
        cluster.replica("c").await,
    );
    let (mut on_b, mut on_c) = (b.subscribe(), c.subscribe());
    let held_on_a = a
        .create(held("delete", 3600, OnTimeout::Deny))
        .await
        .unwrap();
    let recorded_on_a = a
        .create(held("delete", 3600, OnTimeout::Deny))
        .await
        .unwrap();
    // a decides one and records it; then it dies before the other is decided.
    a.decide(recorded_on_a.id, by("bob", Choice::Deny))
        .await
        .unwrap();
    a.mark_recorded(recorded_on_a.id).await.unwrap();
    a.shutdown().await;
    // Within a's lease nobody can tell it is dead: the decision applies.
    b.decide(held_on_a.id, by("alice", Choice::Approve))
        .await
        .unwrap();

    let (seen_b, seen_c) = tokio::join!(
        orphans_of(&mut on_b, held_on_a.id, Duration::from_secs(10)),
        orphans_of(&mut on_c, held_on_a.id, Duration::from_secs(10)),
    );
    let seen: Vec<Resolution> = seen_b.into_iter().chain(seen_c).collect();
    assert_eq!(
        seen.len(),
        1,
        "handed over once although b and c both swept"
    );
    assert_eq!(
        (seen[0].verdict, seen[0].outcome, seen[0].decider.as_deref()),
        (Verdict::Abandoned, Outcome::Refused, Some("alice"))
    );
    assert_eq!(
        seen[0].reason.as_deref(),
        Some("approved by alice after replica a had stopped; nothing was released")
    );
    // The one a recorded is not handed over.
    let none = orphans_of(&mut on_b, recorded_on_a.id, Duration::from_secs(10)).await;
    assert!(none.is_empty(), "{none:?}");
}

#[tokio::test(start_paused = true)]
async fn a_restarted_replica_takes_back_what_its_earlier_run_left() {
    let cluster = Cluster::new();
    let first = cluster.replica("a").await;
    let open = first
        .create(held("delete", 3600, OnTimeout::Deny))
        .await
        .unwrap();
    let decided = first
        .create(held("delete", 3600, OnTimeout::Deny))
        .await
        .unwrap();
    first
        .decide(decided.id, by("bob", Choice::Approve))
        .await
        .unwrap();
    first.shutdown().await;
    let again = cluster.replica("a").await;
    let mut left = again.abandon_leftovers().await.unwrap();
    left.sort_by_key(|r| r.approval.id);
    let got: Vec<_> = left
        .iter()
        .map(|r| {
            (
                r.approval.id,
                r.resolution.verdict,
                r.resolution.channel.as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (open.id, Verdict::Abandoned, "restart"),
            (decided.id, Verdict::Abandoned, "restart"),
        ]
    );
    assert!(again.abandon_leftovers().await.unwrap().is_empty(), "once");
}
