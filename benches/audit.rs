//! Cost of one audit row on the writer thread: `Audit::record` for a batch of
//! allowed-call rows, then `flush` (sealing: redaction, argument hash, row
//! hash; SQLite insert with its indexes; WAL commit). The database lives in
//! a fresh file in the temp directory.
//!
//! `cargo bench --bench audit` (divan; one sample is 16,384 rows, so that
//! the writer's 2 ms linger before a small batch does not show; divan
//! reports the time per row). This is the CPU an allowed call costs when
//! `[audit] record_allowed = true` (docs/benchmarks.md, "Audit").

use airlock::audit::{Audit, Record};
use divan::Bencher;

fn main() {
    divan::main();
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

#[divan::bench(sample_count = 10, sample_size = 1)]
fn allowed_rows(bencher: Bencher) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let dir = std::env::temp_dir().join(format!("airlock-audit-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let audit = Audit::open(
        &dir.join("audit.db"),
        airlock::audit::Redactor::new(&["password"], false).unwrap(),
    )
    .expect("open");
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
    drop(audit);
    let _ = std::fs::remove_dir_all(&dir);
}
