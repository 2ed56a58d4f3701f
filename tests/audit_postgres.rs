//! The audit chain on a real PostgreSQL: two writers ("replicas") appending
//! at once make one gap-free chain that verifies; a changed or removed row
//! is found; meta keys are shared; errors never show the URL's password.
//!
//! Each test starts its own throwaway cluster (tests/common/postgres.rs) and
//! skips, saying so, when the PostgreSQL binaries are not installed.

mod common;

use std::collections::HashSet;

use airlock::audit::{self, Audit, AuditBackend, Filter, Postgres, Record, Redactor};
use common::postgres::PgCluster;

fn row(replica: &str, i: usize) -> Record {
    Record {
        decision: if i.is_multiple_of(3) {
            "denied"
        } else {
            "allowed"
        },
        session: Some(replica.into()),
        agent: Some(format!("agent-{replica}")),
        upstream: Some("default".into()),
        tool: Some(
            if i.is_multiple_of(2) {
                "fs_delete"
            } else {
                "echo"
            }
            .into(),
        ),
        arguments: Some(format!(r#"{{"n":{i},"password":"hunter2"}}"#)),
        rule: Some("r".into()),
        ..Default::default()
    }
}

async fn sql(pg: &PgCluster, text: &str) {
    let (client, connection) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client.batch_execute(text).await.expect(text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_appending_at_once_make_one_gap_free_chain() {
    let Some(pg) = PgCluster::start("audit-two-replicas") else {
        return;
    };
    let redact = Redactor::new(&["password"], false).unwrap();
    let a = Audit::open_postgres(&pg.url(), redact.clone()).expect("replica a");
    let b = Audit::open_postgres(&pg.url(), redact).expect("replica b");
    const ROWS: usize = 600;
    let write = |audit: Audit, name: &'static str| {
        tokio::spawn(async move {
            for i in 0..ROWS {
                if i.is_multiple_of(50) {
                    // Approval decisions wait until durable.
                    audit.commit(row(name, i)).await.expect("commit");
                } else {
                    audit.record(row(name, i)).await;
                }
            }
            audit.flush().await;
        })
    };
    let (ra, rb) = tokio::join!(write(a.clone(), "a"), write(b.clone(), "b"));
    ra.unwrap();
    rb.unwrap();
    assert!(a.is_healthy() && b.is_healthy(), "{:?}", a.last_error());

    let url = pg.url();
    let rows = tokio::task::spawn_blocking(move || {
        let mut db = Postgres::open_existing(&url).expect("open");
        let verified = audit::verify(&mut db).expect("one intact chain");
        let mut all = Vec::new();
        db.scan(1, &mut |e| {
            all.push(e);
            true
        })
        .unwrap();
        (verified, all)
    })
    .await
    .unwrap();
    let (verified, all) = rows;
    assert_eq!(verified, 2 * ROWS as u64);
    let seqs: Vec<i64> = all.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=2 * ROWS as i64).collect::<Vec<_>>(), "gap-free");
    // Every row of each replica is there once.
    for name in ["a", "b"] {
        let ns: HashSet<_> = all
            .iter()
            .filter(|e| e.session.as_deref() == Some(name))
            .map(|e| e.arguments.as_ref().unwrap()["n"].to_string())
            .collect();
        assert_eq!(ns.len(), ROWS, "rows of replica {name}");
    }
    // The two replicas' batches interleave: the chain really is shared.
    let switches = all
        .windows(2)
        .filter(|w| w[0].session != w[1].session)
        .count();
    assert!(switches >= 1, "rows of a and b never interleave");
    // Redaction applies on PostgreSQL too.
    assert!(
        all.iter()
            .all(|e| e.arguments.as_ref().unwrap()["password"] == audit::REDACTED)
    );

    // The history API's query: globs, filters, cursor, newest first.
    let page = a
        .query(
            Filter {
                tool: Some("fs_*".into()),
                agent: Some("agent-b".into()),
                limit: Some(10),
                ..Default::default()
            },
            true,
        )
        .await
        .unwrap();
    assert_eq!(page.len(), 10);
    assert!(page.windows(2).all(|w| w[0].seq > w[1].seq));
    assert!(
        page.iter().all(
            |e| e.tool.as_deref() == Some("fs_delete") && e.agent.as_deref() == Some("agent-b")
        )
    );
    let next = a
        .query(
            Filter {
                tool: Some("fs_*".into()),
                agent: Some("agent-b".into()),
                cursor: Some(page[9].seq),
                limit: Some(1),
                ..Default::default()
            },
            true,
        )
        .await
        .unwrap();
    assert!(next[0].seq < page[9].seq);
    let none = a
        .query(
            Filter {
                tool: Some("fs\\_*".into()),
                ..Default::default()
            },
            false,
        )
        .await
        .unwrap();
    assert!(none.is_empty(), "LIKE wildcards in a glob are literal");
    let since = all[100].at.clone();
    let later = a
        .query(
            Filter {
                since: Some(since.clone()),
                ..Default::default()
            },
            false,
        )
        .await
        .unwrap();
    assert!(!later.is_empty() && later.iter().all(|e| e.at >= since));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_or_removed_row_breaks_the_chain_at_that_row() {
    let Some(pg) = PgCluster::start("audit-tamper") else {
        return;
    };
    let audit = Audit::open_postgres(&pg.url(), Redactor::none()).unwrap();
    for i in 0..10 {
        audit.commit(row("a", i)).await.unwrap();
    }
    let verify = |url: String| {
        tokio::task::spawn_blocking(move || {
            audit::verify(&mut Postgres::open_existing(&url).unwrap())
        })
    };
    assert_eq!(verify(pg.url()).await.unwrap(), Ok(10));

    sql(
        &pg,
        "UPDATE airlock_audit SET tool = 'echo_harmless' WHERE seq = 4",
    )
    .await;
    let problem = verify(pg.url()).await.unwrap().unwrap_err();
    assert!(
        problem.contains("row 4") && problem.contains("hash mismatch"),
        "{problem}"
    );

    sql(&pg, "DELETE FROM airlock_audit WHERE seq = 4").await;
    let problem = verify(pg.url()).await.unwrap().unwrap_err();
    assert!(problem.contains("row 4 is missing"), "{problem}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_keys_are_shared_and_overwritten() {
    let Some(pg) = PgCluster::start("audit-meta") else {
        return;
    };
    let url = pg.url();
    tokio::task::spawn_blocking(move || {
        let mut a = Postgres::connect(&url).unwrap();
        // A second connect finds the schema migrated and changes nothing.
        let mut b = Postgres::connect(&url).unwrap();
        assert_eq!(a.meta("checkpoint").unwrap(), None);
        a.set_meta("checkpoint", "1 abc").unwrap();
        assert_eq!(b.meta("checkpoint").unwrap().as_deref(), Some("1 abc"));
        b.set_meta("checkpoint", "2 def").unwrap();
        assert_eq!(a.meta("checkpoint").unwrap().as_deref(), Some("2 def"));
        a.probe().expect("a writable store");
        assert!(a.open_approvals().unwrap().is_empty());
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_a_database_without_a_chain_fails_and_never_shows_the_password() {
    let Some(pg) = PgCluster::start("audit-errors") else {
        return;
    };
    let url = pg.url();
    tokio::task::spawn_blocking(move || {
        let missing = Postgres::open_existing(&url).err().expect("no chain yet");
        assert!(missing.to_string().contains("no audit chain"), "{missing}");
        // Nothing was created by looking.
        assert!(Postgres::open_existing(&url).is_err());

        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let closed = format!("postgres://airlock:hunter2@127.0.0.1:{port}/postgres");
        let refused = Postgres::connect(&closed).err().expect("nothing listens");
        let text = refused.to_string();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("airlock:***@127.0.0.1"), "{text}");
        let bad = Postgres::connect("postgres://x:hunter2@[::1/")
            .err()
            .unwrap();
        assert!(!bad.to_string().contains("hunter2"), "{bad}");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_is_opened_again_and_queued_rows_are_kept() {
    let Some(pg) = PgCluster::start("audit-reconnect") else {
        return;
    };
    let audit = Audit::open_postgres(&pg.url(), Redactor::none()).unwrap();
    audit.commit(row("a", 0)).await.unwrap();
    // Every other session is cut, as a database restart would.
    sql(
        &pg,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE pid <> pg_backend_pid() AND datname = current_database()",
    )
    .await;
    audit.record(row("a", 1)).await;
    audit.record(row("a", 2)).await;
    // The first write after the cut fails (rows kept), the retry reconnects.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        audit.flush().await;
        if audit.is_healthy() && audit.rows_written() == 3 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not written again: {:?}",
            audit.last_error()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let all = audit.query(Filter::default(), false).await.unwrap();
    assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
    let url = pg.url();
    let verified = tokio::task::spawn_blocking(move || {
        audit::verify(&mut Postgres::open_existing(&url).unwrap())
    })
    .await
    .unwrap();
    assert_eq!(verified, Ok(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_behind_a_held_chain_lock_fails_closed_then_recovers() {
    let Some(pg) = PgCluster::start("audit-lock") else {
        return;
    };
    let audit = Audit::open_postgres(&pg.url(), Redactor::none()).unwrap();
    audit.commit(row("a", 0)).await.unwrap();
    // Another "replica" frozen in the middle of an append: it holds the
    // chain's advisory lock (AUDIT_LOCK in src/audit/postgres.rs, 0x6169726c6f636b02)
    // in an open transaction.
    let (frozen, connection) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    frozen
        .batch_execute("BEGIN; SELECT pg_advisory_xact_lock(7019267304284449538)")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let refused = audit.commit(row("a", 1)).await.unwrap_err();
    let waited = started.elapsed();
    assert!(
        waited >= std::time::Duration::from_secs(4) && waited < std::time::Duration::from_secs(15),
        "{waited:?}"
    );
    assert!(refused.to_string().contains("lock"), "{refused}");
    assert!(!audit.is_healthy());
    // The writer probes a failing store every second. The probe must need
    // the chain lock as an append does: a plain write would succeed here
    // and report the store healthy while every append still fails.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert!(!audit.is_healthy(), "a probe ignored the held chain lock");
    frozen.batch_execute("ROLLBACK").await.unwrap();
    audit
        .commit(row("a", 2))
        .await
        .expect("written once the lock is free");
    assert!(audit.is_healthy());
}
