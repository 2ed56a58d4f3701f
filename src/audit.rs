//! The audit history: every `tools/call` outcome as a hash-chained row.
//!
//! One writer thread owns the write connection. Allowed-call rows are sent
//! without waiting (batched into one transaction per wake-up: never on the
//! hot path); approval decisions are sent with an acknowledgement and are
//! durable before the held call is released. A failed batch is rolled back
//! and retried, so nothing is recorded twice; while the store cannot be
//! written, [`Audit::is_healthy`] is false and approvals fail closed.

mod chain;
pub mod checkpoint;
mod postgres;
mod redact;
mod sqlite;
pub mod users;

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use serde::Serialize;
use serde_json::Value;
use sha2::Digest;
use tokio::sync::{mpsc, oneshot};

pub use chain::{GENESIS, arguments_hash, canonical_json, row_hash};
pub use postgres::{Postgres, redact_url};
pub use redact::{BadPattern, DEFAULT_PATTERNS, REDACTED, Redactor, redact};
pub use sqlite::Sqlite;

/// Why the audit store failed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot open audit store {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("audit store error: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("audit store is unavailable: {0}")]
    Unavailable(String),
}

/// A stored row, as the API and exports show it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Entry {
    pub seq: i64,
    pub id: String,
    pub at: String,
    pub decision: String,
    pub session: Option<String>,
    pub agent: Option<String>,
    pub upstream: Option<String>,
    pub tool: Option<String>,
    pub arguments: Option<Value>,
    pub args_hash: Option<String>,
    pub rule: Option<String>,
    pub reason: Option<String>,
    pub pending_id: Option<String>,
    pub decider: Option<String>,
    pub channel: Option<String>,
    pub comment: Option<String>,
    pub wait_ms: Option<i64>,
    pub prev_hash: String,
    pub hash: String,
}

/// What a caller records; the writer adds id, time, seq and hashes.
#[derive(Debug, Clone, Default)]
pub struct Record {
    pub decision: &'static str,
    pub session: Option<String>,
    pub agent: Option<String>,
    pub upstream: Option<String>,
    pub tool: Option<String>,
    /// Raw JSON text of the call's arguments (redacted and hashed by the writer).
    pub arguments: Option<String>,
    pub rule: Option<String>,
    pub reason: Option<String>,
    pub pending_id: Option<String>,
    pub decider: Option<String>,
    pub channel: Option<String>,
    pub comment: Option<String>,
    pub wait_ms: Option<i64>,
}

/// Filters of `GET /api/audit` and exports; all optional.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct Filter {
    pub tool: Option<String>,
    pub upstream: Option<String>,
    pub agent: Option<String>,
    pub decision: Option<String>,
    pub decider: Option<String>,
    pub pending_id: Option<String>,
    /// RFC 3339; inclusive.
    pub since: Option<String>,
    /// RFC 3339; exclusive.
    pub until: Option<String>,
    pub limit: Option<u32>,
    /// Continue after this `seq` (from `next_cursor`).
    pub cursor: Option<i64>,
}

/// A row ready to store: the entry and its arguments as canonical JSON text
/// (the form the hash covers and the store keeps).
pub struct Sealed {
    pub entry: Entry,
    pub arguments_text: Option<String>,
}

/// A storage backend: embedded SQLite, or PostgreSQL shared by replicas.
/// The row at `seq`, if there is one (one indexed read: the row after `seq - 1`).
pub fn row_at(db: &mut dyn AuditBackend, seq: i64) -> Result<Option<Entry>, AuditError> {
    // `seq - 1` would overflow for i64::MIN; no row has a seq below 1.
    if seq < 1 {
        return Ok(None);
    }
    let filter = Filter {
        cursor: Some(seq - 1),
        limit: Some(1),
        ..Default::default()
    };
    Ok(db
        .query(&filter, false)?
        .into_iter()
        .next()
        .filter(|e| e.seq == seq))
}

pub trait AuditBackend: Send {
    /// Appends `count` rows atomically (all or none). Reads the chain's tail
    /// inside the same write transaction and calls `seal(i, seq, prev_hash)`
    /// for row `i`, so several processes can share one store safely.
    fn append(
        &mut self,
        count: usize,
        seal: &mut dyn FnMut(usize, i64, &str) -> Sealed,
    ) -> Result<Vec<Entry>, AuditError>;
    /// Proves the store is writable (a tiny write), for health checks.
    fn probe(&mut self) -> Result<(), AuditError>;
    fn query(&mut self, filter: &Filter, newest_first: bool) -> Result<Vec<Entry>, AuditError>;
    /// Visits every row from `from_seq` on, in order, until `visit` returns false.
    fn scan(
        &mut self,
        from_seq: i64,
        visit: &mut dyn FnMut(Entry) -> bool,
    ) -> Result<(), AuditError>;
    /// `approval_requested` rows with no decision after them.
    fn open_approvals(&mut self) -> Result<Vec<Entry>, AuditError>;
    fn meta(&mut self, key: &str) -> Result<Option<String>, AuditError>;
    fn set_meta(&mut self, key: &str, value: &str) -> Result<(), AuditError>;
    /// Stores `value` under `key` unless a value is there already, and
    /// returns the stored one: replicas starting together on one store agree
    /// on one value (a generated key, say) instead of overwriting each other.
    fn init_meta(&mut self, key: &str, value: &str) -> Result<String, AuditError>;
    /// Every meta entry whose key starts with `prefix`.
    fn meta_prefixed(&mut self, prefix: &str) -> Result<Vec<(String, String)>, AuditError>;
    /// Deletes these meta entries (those already gone are skipped), so
    /// replicas sharing a store may all delete the same ones.
    fn delete_meta(&mut self, keys: &[String]) -> Result<(), AuditError>;
}

enum Command {
    Append(Box<Record>, Option<oneshot::Sender<Result<Entry, String>>>),
    Flush(oneshot::Sender<()>),
    /// Check that the store can still be written, even with no traffic.
    Probe,
}

/// Cheap-to-clone handle to the audit store.
#[derive(Clone)]
pub struct Audit(Arc<Shared>);

struct Shared {
    tx: mpsc::Sender<Command>,
    /// A second connection for reads (WAL lets them run beside the writer).
    reader: Mutex<Box<dyn AuditBackend>>,
    healthy: AtomicBool,
    last_error: Mutex<Option<String>>,
    written: AtomicU64,
    /// Heads the checkpoint publisher refused to sign (the history it signed
    /// before was changed), and why the last time: for `/metrics` and
    /// `/healthz`.
    checkpoint_refusals: AtomicU64,
    checkpoint_problem: Mutex<Option<String>>,
}

/// Rows kept for retry while the store cannot be written.
const MAX_RETRY_ROWS: usize = 100_000;
/// Rows per transaction.
const BATCH: usize = 1024;
/// How often an idle store is checked for writability, so that a full or
/// locked store shows on `/healthz` (and refuses approvals at once) before
/// the next call has to find out.
const PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// How long the writer lets fire-and-forget rows gather before a
/// transaction, when only a few are waiting: one commit per row would cost
/// more CPU than the row itself under load. Rows someone waits for (approval
/// decisions, flushes) are written at once.
const LINGER: Duration = Duration::from_millis(2);
/// How long a query waits for rows still queued before it reads.
const QUERY_FLUSH_WAIT: Duration = Duration::from_secs(1);

impl Audit {
    /// Opens (creating if needed) the SQLite store and starts the writer thread.
    pub fn open(path: &Path, redact: Redactor) -> Result<Audit, AuditError> {
        let writer = Sqlite::open(path)?;
        let reader = Sqlite::open(path)?;
        Ok(Audit::with_backends(
            Box::new(writer),
            Box::new(reader),
            redact,
        ))
    }

    /// Connects to the shared PostgreSQL store (`[store] url`), migrating
    /// its audit tables, and starts the writer thread: one connection writes,
    /// one reads. Every replica on that database appends to one chain.
    pub fn open_postgres(url: &str, redact: Redactor) -> Result<Audit, AuditError> {
        let writer = Postgres::connect(url)?;
        let reader = Postgres::connect(url)?;
        Ok(Audit::with_backends(
            Box::new(writer),
            Box::new(reader),
            redact,
        ))
    }

    pub fn with_backends(
        writer: Box<dyn AuditBackend>,
        reader: Box<dyn AuditBackend>,
        redact: Redactor,
    ) -> Audit {
        let (tx, rx) = mpsc::channel(65_536);
        let shared = Arc::new(Shared {
            tx,
            reader: Mutex::new(reader),
            healthy: AtomicBool::new(true),
            last_error: Mutex::new(None),
            written: AtomicU64::new(0),
            checkpoint_refusals: AtomicU64::new(0),
            checkpoint_problem: Mutex::new(None),
        });
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("airlock-audit".into())
            .spawn(move || write_loop(writer, rx, redact, weak))
            .expect("spawning the audit writer thread");
        // A weak sender: the prober must not keep the writer alive.
        let prober = shared.tx.downgrade();
        std::thread::Builder::new()
            .name("airlock-audit-probe".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(PROBE_INTERVAL);
                    match prober.upgrade() {
                        // A full queue means the writer is busy: no probe needed.
                        Some(tx) => {
                            let _ = tx.try_send(Command::Probe);
                        }
                        None => return,
                    }
                }
            })
            .expect("spawning the audit probe thread");
        Audit(shared)
    }

    /// Records a row without waiting (allowed calls and other fast-path outcomes).
    pub async fn record(&self, record: Record) {
        let _ = self
            .0
            .tx
            .send(Command::Append(Box::new(record), None))
            .await;
    }

    /// Records a row and waits until it is durable.
    pub async fn commit(&self, record: Record) -> Result<Entry, AuditError> {
        let (ack, done) = oneshot::channel();
        self.0
            .tx
            .send(Command::Append(Box::new(record), Some(ack)))
            .await
            .map_err(|_| AuditError::Unavailable("the writer has stopped".into()))?;
        match done.await {
            Ok(Ok(entry)) => Ok(entry),
            Ok(Err(e)) => Err(AuditError::Unavailable(e)),
            Err(_) => Err(AuditError::Unavailable("the writer has stopped".into())),
        }
    }

    /// Waits until every row sent so far is written (or failed).
    pub async fn flush(&self) {
        let (ack, done) = oneshot::channel();
        if self.0.tx.send(Command::Flush(ack)).await.is_ok() {
            let _ = done.await;
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.0.healthy.load(Ordering::Relaxed)
    }

    pub fn last_error(&self) -> Option<String> {
        self.0.last_error.lock().expect("lock").clone()
    }

    /// Called by the checkpoint publisher each time it refuses to sign.
    pub fn checkpoint_refused(&self, problem: String) {
        self.0.checkpoint_refusals.fetch_add(1, Ordering::Relaxed);
        *self.0.checkpoint_problem.lock().expect("lock") = Some(problem);
    }

    /// How many times a checkpoint was refused since start.
    pub fn checkpoint_refusals(&self) -> u64 {
        self.0.checkpoint_refusals.load(Ordering::Relaxed)
    }

    /// Why the last checkpoint was refused, if one was.
    pub fn checkpoint_problem(&self) -> Option<String> {
        self.0.checkpoint_problem.lock().expect("lock").clone()
    }

    pub fn rows_written(&self) -> u64 {
        self.0.written.load(Ordering::Relaxed)
    }

    /// Runs `f` on the read connection off the async threads.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn AuditBackend) -> Result<T, AuditError> + Send + 'static,
    ) -> Result<T, AuditError> {
        let shared = self.0.clone();
        tokio::task::spawn_blocking(move || {
            let mut reader = shared.reader.lock().expect("reader lock");
            f(reader.as_mut())
        })
        .await
        .map_err(|e| AuditError::Unavailable(e.to_string()))?
    }

    /// Rows recorded before the query are in its answer (the writer may be
    /// gathering them for a few ms); a failing store holds it up 1 s at most.
    pub async fn query(
        &self,
        filter: Filter,
        newest_first: bool,
    ) -> Result<Vec<Entry>, AuditError> {
        let _ = tokio::time::timeout(QUERY_FLUSH_WAIT, self.flush()).await;
        self.read(move |db| db.query(&filter, newest_first)).await
    }
}

pub(crate) fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A UUIDv7 for a row, drawing its random bits from the thread's generator
/// (no system call per row: the writer seals thousands of rows a second).
fn row_id() -> String {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let random: [u8; 10] = rand::RngExt::random(&mut rand::rng());
    uuid::Builder::from_unix_timestamp_millis(millis, &random)
        .into_uuid()
        .to_string()
}

/// Turns a record into the next chained row; also returns the canonical
/// JSON text of its (redacted) arguments, which the backend stores.
fn seal(record: &Record, seq: i64, prev_hash: &str, redact: &Redactor) -> Sealed {
    let parsed = record.arguments.as_deref().map(|raw| {
        serde_json::from_str::<Value>(raw).unwrap_or_else(|_| Value::String(raw.to_owned()))
    });
    // One canonical text serves the hash of the arguments as called, and,
    // unless redaction changes them, the stored column and the row hash.
    let mut arguments_text = parsed.as_ref().map(canonical_json);
    let args_hash = arguments_text.as_deref().map(|text| {
        let mut h = sha2::Sha256::new();
        h.update(text.as_bytes());
        chain::hex_digest(h)
    });
    let arguments = parsed.map(|mut v| {
        if redact.redact(&mut v) {
            arguments_text = Some(canonical_json(&v));
        }
        v
    });
    let mut entry = Entry {
        seq,
        id: row_id(),
        at: now_rfc3339(),
        decision: record.decision.to_owned(),
        session: record.session.clone(),
        agent: record.agent.clone(),
        upstream: record.upstream.clone(),
        tool: record.tool.clone(),
        arguments,
        args_hash,
        rule: record.rule.clone(),
        reason: record.reason.clone(),
        pending_id: record.pending_id.clone(),
        decider: record.decider.clone(),
        channel: record.channel.clone(),
        comment: record.comment.clone(),
        wait_ms: record.wait_ms,
        prev_hash: prev_hash.to_owned(),
        hash: String::new(),
    };
    entry.hash = chain::sealed_hash(prev_hash, &entry, arguments_text.as_deref());
    Sealed {
        entry,
        arguments_text,
    }
}

type Pending = (Box<Record>, Option<oneshot::Sender<Result<Entry, String>>>);

fn write_loop(
    mut db: Box<dyn AuditBackend>,
    mut rx: mpsc::Receiver<Command>,
    redact: Redactor,
    shared: std::sync::Weak<Shared>,
) {
    let mut retry: VecDeque<Pending> = VecDeque::new();
    loop {
        let mut batch: Vec<Pending> = Vec::new();
        let mut flushes = Vec::new();
        // Wait for work; while rows wait for a retry or the store is failing,
        // wake up every second to try again.
        let healthy = shared
            .upgrade()
            .is_none_or(|s| s.healthy.load(Ordering::Relaxed));
        let mut closed = false;
        let mut probe = false;
        let first = if retry.is_empty() && healthy {
            // About to wait: give back what the last batches freed (rate-limited).
            crate::memory::collect_when_idle();
            match rx.blocking_recv() {
                Some(command) => Some(command),
                None => return,
            }
        } else {
            match rx.try_recv() {
                Ok(command) => Some(command),
                Err(mpsc::error::TryRecvError::Empty) => {
                    std::thread::sleep(Duration::from_secs(1));
                    rx.try_recv().ok()
                }
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    closed = true;
                    None
                }
            }
        };
        match first {
            Some(Command::Append(r, ack)) => batch.push((r, ack)),
            Some(Command::Flush(ack)) => flushes.push(ack),
            Some(Command::Probe) => probe = true,
            None => {}
        }
        drain(&mut rx, &mut batch, &mut flushes);
        let waited_for = !flushes.is_empty() || batch.iter().any(|(_, ack)| ack.is_some());
        if !closed && !waited_for && !batch.is_empty() && batch.len() < BATCH / 4 {
            std::thread::sleep(LINGER);
            drain(&mut rx, &mut batch, &mut flushes);
        }
        let mut rows: Vec<Pending> = retry.drain(..).collect();
        rows.extend(batch);
        let unhealthy = shared
            .upgrade()
            .is_some_and(|s| !s.healthy.load(Ordering::Relaxed));
        if rows.is_empty() && !unhealthy && probe {
            // Idle and believed healthy: prove it (a tiny write).
            if let Err(e) = db.probe() {
                let message = e.to_string();
                tracing::error!("audit store cannot be written: {message}");
                if let Some(s) = shared.upgrade() {
                    s.healthy.store(false, Ordering::Relaxed);
                    *s.last_error.lock().expect("lock") = Some(message);
                }
            }
        }
        if rows.is_empty() && unhealthy {
            // Nothing to write, but the store was failing: is it back?
            if db.probe().is_ok()
                && let Some(s) = shared.upgrade()
            {
                tracing::info!("audit store writable again");
                s.healthy.store(true, Ordering::Relaxed);
                *s.last_error.lock().expect("lock") = None;
            }
        }
        if !rows.is_empty() {
            match db.append(rows.len(), &mut |i, seq, prev| {
                seal(&rows[i].0, seq, prev, &redact)
            }) {
                Ok(entries) => {
                    if let Some(s) = shared.upgrade() {
                        s.healthy.store(true, Ordering::Relaxed);
                        s.written.fetch_add(entries.len() as u64, Ordering::Relaxed);
                        *s.last_error.lock().expect("lock") = None;
                    }
                    for ((_, ack), entry) in rows.into_iter().zip(entries) {
                        if let Some(ack) = ack {
                            let _ = ack.send(Ok(entry));
                        }
                    }
                }
                Err(e) => {
                    let message = e.to_string();
                    tracing::error!("audit write failed: {message}");
                    if let Some(s) = shared.upgrade() {
                        s.healthy.store(false, Ordering::Relaxed);
                        *s.last_error.lock().expect("lock") = Some(message.clone());
                    }
                    for (record, ack) in rows {
                        match ack {
                            // The waiting caller fails closed; it does not retry.
                            Some(ack) => {
                                let _ = ack.send(Err(message.clone()));
                            }
                            None if retry.len() < MAX_RETRY_ROWS => retry.push_back((record, None)),
                            None => tracing::error!("audit retry buffer full: dropping a row"),
                        }
                    }
                }
            }
        }
        for ack in flushes {
            let _ = ack.send(());
        }
        if closed {
            // Shutting down: one last attempt was made above.
            return;
        }
    }
}

/// Moves waiting commands into the batch (up to [`BATCH`] rows) without blocking.
fn drain(
    rx: &mut mpsc::Receiver<Command>,
    batch: &mut Vec<Pending>,
    flushes: &mut Vec<oneshot::Sender<()>>,
) {
    while batch.len() < BATCH {
        match rx.try_recv() {
            Ok(Command::Append(r, ack)) => batch.push((r, ack)),
            Ok(Command::Flush(ack)) => flushes.push(ack),
            // Rows are about to be written: that proves the store anyway.
            Ok(Command::Probe) => {}
            Err(_) => break,
        }
    }
}

/// `airlock audit verify`: walks the chain; `Err` names the first broken row.
pub fn verify(db: &mut dyn AuditBackend) -> Result<u64, String> {
    walk_chain(db, 1, GENESIS, None)
}

/// Checks the chain from a head signed earlier (`seq`, `hash`) up to row
/// `to`, reading only those rows: the row at `seq` is still there with that
/// hash and its contents, and every later row up to `to` links to it.
/// `Err` names the first problem (the checkpoint publisher refuses to sign
/// on it).
pub fn verify_since(
    db: &mut dyn AuditBackend,
    (seq, hash): (i64, &str),
    to: i64,
) -> Result<u64, String> {
    if to < seq {
        return Err(format!(
            "the store ends at row {to}, but row {seq} was signed; rows were removed from the end"
        ));
    }
    let mut first = None;
    db.scan(seq, &mut |entry| {
        first = Some(entry);
        false
    })
    .map_err(|e| e.to_string())?;
    match first {
        Some(e) if e.seq != seq => Err(format!("row {seq}, signed earlier, is missing")),
        None => Err(format!("row {seq}, signed earlier, is missing")),
        Some(e) if e.hash != hash => Err(format!(
            "row {seq} has hash {}, but {hash} was signed; the history up to row {seq} was rewritten",
            e.hash
        )),
        Some(e) => walk_chain(db, seq, &e.prev_hash, Some(to)),
    }
}

/// Walks the rows from `from_seq` (whose `prev_hash` must be `prev`) up to
/// `to` (or the end); counts them or names the first broken one.
fn walk_chain(
    db: &mut dyn AuditBackend,
    from_seq: i64,
    prev: &str,
    to: Option<i64>,
) -> Result<u64, String> {
    let mut prev = prev.to_owned();
    let mut expected_seq = from_seq;
    let mut count = 0u64;
    let mut broken = None;
    db.scan(from_seq, &mut |entry| {
        if to.is_some_and(|to| entry.seq > to) {
            return false;
        }
        let problem = if entry.seq != expected_seq {
            Some(format!(
                "row {expected_seq} is missing (next row is {})",
                entry.seq
            ))
        } else if entry.prev_hash != prev {
            Some(format!(
                "row {} (id {}): prev_hash does not match the hash of row {}",
                entry.seq,
                entry.id,
                entry.seq - 1
            ))
        } else if row_hash(&entry.prev_hash, &entry) != entry.hash {
            Some(format!(
                "row {} (id {}): hash mismatch — the row was changed after it was written",
                entry.seq, entry.id
            ))
        } else {
            None
        };
        if problem.is_some() {
            broken = problem;
            return false;
        }
        prev = entry.hash.clone();
        expected_seq += 1;
        count += 1;
        true
    })
    .map_err(|e| e.to_string())?;
    if let Some(problem) = broken {
        return Err(problem);
    }
    match to {
        Some(to) if expected_seq <= to => Err(format!(
            "row {expected_seq} is missing (the store ends before row {to})"
        )),
        _ => Ok(count),
    }
}

/// Writes entries as JSON lines or CSV.
pub fn export(
    entries: &[Entry],
    format: ExportFormat,
    out: &mut dyn std::io::Write,
) -> std::io::Result<()> {
    match format {
        ExportFormat::Jsonl => {
            for e in entries {
                serde_json::to_writer(&mut *out, e)?;
                out.write_all(b"\n")?;
            }
        }
        ExportFormat::Csv => {
            let mut w = csv::Writer::from_writer(out);
            w.write_record(CSV_HEADER)?;
            for e in entries {
                // Every text cell may hold a client's words (agent name,
                // session, tool, arguments, reason, comment…); only the
                // numbers Airlock itself writes are left as they are.
                let text = |v: &str| csv_text_cell(v).into_owned();
                let opt = |v: &Option<String>| v.as_deref().map(text).unwrap_or_default();
                w.write_record([
                    e.seq.to_string(),
                    text(&e.id),
                    text(&e.at),
                    text(&e.decision),
                    opt(&e.session),
                    opt(&e.agent),
                    opt(&e.upstream),
                    opt(&e.tool),
                    e.arguments
                        .as_ref()
                        .map(|a| text(&canonical_json(a)))
                        .unwrap_or_default(),
                    opt(&e.args_hash),
                    opt(&e.rule),
                    opt(&e.reason),
                    opt(&e.pending_id),
                    opt(&e.decider),
                    opt(&e.channel),
                    opt(&e.comment),
                    e.wait_ms.map(|w| w.to_string()).unwrap_or_default(),
                    text(&e.prev_hash),
                    text(&e.hash),
                ])?;
            }
            w.flush()?;
        }
    }
    Ok(())
}

/// A text cell a spreadsheet will not run as a formula (CSV injection).
///
/// OWASP's guidance (<https://owasp.org/www-community/attacks/CSV_Injection>,
/// and ASVS 5.0 requirement 1.2.10): a cell must not begin with `=`, `+`,
/// `-`, `@`, tab, carriage return (ASVS adds the NUL character); prefix such
/// a cell with a single quote, which spreadsheets read as "this is text".
/// Some importers drop leading spaces and line breaks before they look at
/// the first character, so a trigger after leading whitespace counts too.
/// Quoting of separators and quotes is the CSV writer's (RFC 4180).
pub fn csv_text_cell(value: &str) -> std::borrow::Cow<'_, str> {
    const TRIGGERS: [char; 7] = ['=', '+', '-', '@', '\t', '\r', '\0'];
    let starts_with_trigger = value.starts_with(TRIGGERS)
        || value
            .trim_start_matches(|c: char| c.is_whitespace())
            .starts_with(TRIGGERS);
    if starts_with_trigger {
        std::borrow::Cow::Owned(format!("'{value}"))
    } else {
        std::borrow::Cow::Borrowed(value)
    }
}

pub const CSV_HEADER: [&str; 19] = [
    "seq",
    "id",
    "at",
    "decision",
    "session",
    "agent",
    "upstream",
    "tool",
    "arguments",
    "args_hash",
    "rule",
    "reason",
    "pending_id",
    "decider",
    "channel",
    "comment",
    "wait_ms",
    "prev_hash",
    "hash",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    Jsonl,
    Csv,
}

#[cfg(test)]
mod tests;
