//! Cost of one audit row on the writer thread: `Audit::record` for a batch of
//! allowed-call rows, then `flush` (sealing: redaction, argument hash, row
//! hash; SQLite insert with its indexes; WAL commit). The database lives in
//! a fresh file in the temp directory.
//!
//! `cargo bench --bench audit` (divan; one sample is 16,384 rows, so that
//! the writer's 2 ms linger before a small batch does not show; divan
//! reports the time per row). This is the CPU an allowed call costs when
//! `[audit] record_allowed = true` (docs/benchmarks.md, "Audit").
//!
//! The `postgres_*` benches do the same against the shared PostgreSQL store
//! (`[store] url`) on a throwaway local cluster started from the system's
//! binaries (tests/common/postgres.rs; skipped when `initdb` is absent), and
//! `committed_rows_*` measures a row someone waits for (an approval
//! decision: one transaction per row, acknowledged when durable).

use std::sync::Mutex;

use airlock::audit::{Audit, Record, Redactor};
use divan::Bencher;

#[path = "../tests/common/postgres.rs"]
#[allow(dead_code)]
mod pg;

fn main() {
    divan::main();
    drop(CLUSTER.lock().unwrap().take());
}

const ROWS: usize = 16_384;

fn record(i: usize) -> Record {
    Record {
        decision: "allowed",
        session: Some("7f1c9a52-2b7e-4c43-9d0e-4a7d1f3c2b10".into()),
        agent: Some("claude-code".into()),
        upstream: Some("default".into()),
        tool: Some("echo".into()),
        arguments: Some(format!(r#"{{"text":"hello {i}","n":{i}}}"#)),
        rule: Some("echo".into()),
        reason: None,
        ..Default::default()
    }
}

/// One cluster for every PostgreSQL bench of this run (None inside: not
/// installed); stopped at the end of `main` (statics are never dropped).
static CLUSTER: Mutex<Option<Option<pg::PgCluster>>> = Mutex::new(None);

/// The cluster's URL, starting it on first use.
fn cluster_url() -> Option<String> {
    let mut cluster = CLUSTER.lock().unwrap();
    cluster
        .get_or_insert_with(|| pg::PgCluster::start("bench-audit"))
        .as_ref()
        .map(|c| c.url())
}

fn redactor() -> Redactor {
    Redactor::new(&["password"], false).unwrap()
}

/// A fresh SQLite store in the temp directory, and that directory.
fn sqlite(name: &str) -> (Audit, std::path::PathBuf) {
    let dir =
        std::env::temp_dir().join(format!("airlock-audit-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let audit = Audit::open(&dir.join("audit.db"), redactor()).expect("open");
    (audit, dir)
}

fn postgres() -> Option<Audit> {
    let Some(url) = cluster_url() else {
        eprintln!("SKIPPED: no PostgreSQL binaries; the postgres_* numbers are meaningless");
        return None;
    };
    Some(Audit::open_postgres(&url, redactor()).expect("open postgres"))
}

#[divan::bench(sample_count = 10, sample_size = 1)]
fn allowed_rows(bencher: Bencher) {
    let (audit, dir) = sqlite("allowed");
    allowed(bencher, &audit);
    drop(audit);
    let _ = std::fs::remove_dir_all(&dir);
}

#[divan::bench(sample_count = 10, sample_size = 1)]
fn postgres_allowed_rows(bencher: Bencher) {
    if let Some(audit) = postgres() {
        allowed(bencher, &audit);
    }
}

#[divan::bench(sample_count = 10, sample_size = 1)]
fn committed_rows_sqlite(bencher: Bencher) {
    let (audit, dir) = sqlite("committed");
    committed(bencher, &audit);
    drop(audit);
    let _ = std::fs::remove_dir_all(&dir);
}

#[divan::bench(sample_count = 10, sample_size = 1)]
fn committed_rows_postgres(bencher: Bencher) {
    if let Some(audit) = postgres() {
        committed(bencher, &audit);
    }
}

/// Rows written one after another, each waited for (approval decisions).
fn committed(bencher: Bencher, audit: &Audit) {
    const COMMITTED: usize = 512;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let records: Vec<Record> = (0..COMMITTED).map(record).collect();
    bencher
        .counter(divan::counter::ItemsCount::new(COMMITTED))
        .with_inputs(|| records.clone())
        .bench_local_values(|batch| {
            runtime.block_on(async {
                for r in batch {
                    audit.commit(r).await.expect("commit");
                }
            })
        });
}

/// Fire-and-forget rows (allowed calls), then a flush.
fn allowed(bencher: Bencher, audit: &Audit) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let records: Vec<Record> = (0..ROWS).map(record).collect();
    bencher
        .counter(divan::counter::ItemsCount::new(ROWS))
        .with_inputs(|| records.clone())
        .bench_local_values(|batch| {
            runtime.block_on(async {
                for r in batch {
                    audit.record(r).await;
                }
                audit.flush().await;
            })
        });
}
