//! The embedded SQLite backend (WAL): one table of hash-chained rows.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params_from_iter};

use super::{AuditBackend, AuditError, Entry, Filter, Sealed};

pub struct Sqlite {
    conn: Connection,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audit (
    seq        INTEGER PRIMARY KEY,
    id         TEXT NOT NULL,
    at         TEXT NOT NULL,
    decision   TEXT NOT NULL,
    session    TEXT,
    agent      TEXT,
    upstream   TEXT,
    tool       TEXT,
    arguments  TEXT,
    args_hash  TEXT,
    rule       TEXT,
    reason     TEXT,
    pending_id TEXT,
    decider    TEXT,
    channel    TEXT,
    comment    TEXT,
    wait_ms    INTEGER,
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_tool ON audit(tool);
CREATE INDEX IF NOT EXISTS audit_at ON audit(at);
-- Only rows of held calls have a pending_id: a partial index costs allowed
-- rows nothing. (Stores made by earlier versions had two more indexes, one on
-- decision and a full one on pending_id; each row paid for both.)
CREATE INDEX IF NOT EXISTS audit_pending_id ON audit(pending_id) WHERE pending_id IS NOT NULL;
DROP INDEX IF EXISTS audit_decision;
DROP INDEX IF EXISTS audit_pending;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
";

macro_rules! columns {
    () => {
        "seq, id, at, decision, session, agent, upstream, tool, arguments, args_hash, rule, reason, pending_id, decider, channel, comment, wait_ms, prev_hash, hash"
    };
}
const COLUMNS: &str = columns!();
/// The statements of every batch, compiled once per connection (rusqlite's
/// statement cache) rather than once per batch: compiling `BEGIN`, the tail
/// read and `COMMIT` anew cost more than storing a row.
const INSERT: &str = concat!(
    "INSERT INTO audit (",
    columns!(),
    ") VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18,?19)"
);
const TAIL: &str = "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1";

impl Sqlite {
    pub fn open(path: &Path) -> Result<Sqlite, AuditError> {
        let conn = Connection::open(path).map_err(|e| AuditError::Open {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(SCHEMA)?;
        Ok(Sqlite { conn })
    }

    /// Opens read-only, creating and changing nothing (for `airlock audit verify|export`).
    pub fn open_existing(path: &Path) -> Result<Sqlite, AuditError> {
        if !path.exists() {
            return Err(AuditError::Open {
                path: path.display().to_string(),
                reason: "no such file".into(),
            });
        }
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| AuditError::Open {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(Sqlite { conn })
    }

    /// The rows of one [`AuditBackend::append`], inside its transaction.
    fn insert_rows(
        &mut self,
        count: usize,
        seal: &mut dyn FnMut(usize, i64, &str) -> Sealed,
    ) -> Result<Vec<Entry>, AuditError> {
        let (mut seq, mut prev): (i64, String) = self
            .conn
            .prepare_cached(TAIL)?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?
            .unwrap_or((0, super::GENESIS.to_owned()));
        let mut out = Vec::with_capacity(count);
        let mut stmt = self.conn.prepare_cached(INSERT)?;
        for i in 0..count {
            seq += 1;
            let Sealed {
                entry: e,
                arguments_text,
            } = seal(i, seq, &prev);
            stmt.execute(rusqlite::params![
                e.seq,
                e.id,
                e.at,
                e.decision,
                e.session,
                e.agent,
                e.upstream,
                e.tool,
                arguments_text,
                e.args_hash,
                e.rule,
                e.reason,
                e.pending_id,
                e.decider,
                e.channel,
                e.comment,
                e.wait_ms,
                e.prev_hash,
                e.hash,
            ])?;
            prev.clone_from(&e.hash);
            out.push(e);
        }
        Ok(out)
    }
}

fn row_to_entry(row: &rusqlite::Row<'_>) -> rusqlite::Result<Entry> {
    let arguments: Option<String> = row.get(8)?;
    Ok(Entry {
        seq: row.get(0)?,
        id: row.get(1)?,
        at: row.get(2)?,
        decision: row.get(3)?,
        session: row.get(4)?,
        agent: row.get(5)?,
        upstream: row.get(6)?,
        tool: row.get(7)?,
        arguments: arguments
            .map(|a| serde_json::from_str(&a).unwrap_or(serde_json::Value::String(a))),
        args_hash: row.get(9)?,
        rule: row.get(10)?,
        reason: row.get(11)?,
        pending_id: row.get(12)?,
        decider: row.get(13)?,
        channel: row.get(14)?,
        comment: row.get(15)?,
        wait_ms: row.get(16)?,
        prev_hash: row.get(17)?,
        hash: row.get(18)?,
    })
}

impl AuditBackend for Sqlite {
    fn append(
        &mut self,
        count: usize,
        seal: &mut dyn FnMut(usize, i64, &str) -> Sealed,
    ) -> Result<Vec<Entry>, AuditError> {
        // IMMEDIATE takes the write lock before reading the tail, so another
        // process appending to the same file cannot interleave.
        self.conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        let written = self.insert_rows(count, seal).and_then(|out| {
            self.conn.prepare_cached("COMMIT")?.execute([])?;
            Ok(out)
        });
        if written.is_err() && !self.conn.is_autocommit() {
            // Nothing of the batch stays (a failed COMMIT leaves it open).
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        written
    }

    fn probe(&mut self) -> Result<(), AuditError> {
        self.set_meta("health_probe", &chrono::Utc::now().to_rfc3339())
    }

    fn query(&mut self, filter: &Filter, newest_first: bool) -> Result<Vec<Entry>, AuditError> {
        let mut sql = format!("SELECT {COLUMNS} FROM audit WHERE 1=1");
        let mut args: Vec<String> = Vec::new();
        // A value with `*` or `?` is a glob (SQLite GLOB: case-sensitive, `*`
        // any run, `?` one character); anything else matches exactly.
        let mut eq = |column: &str, value: &Option<String>, sql: &mut String| {
            if let Some(v) = value {
                args.push(v.clone());
                let op = if v.contains(['*', '?']) { "GLOB" } else { "=" };
                sql.push_str(&format!(" AND {column} {op} ?{}", args.len()));
            }
        };
        eq("tool", &filter.tool, &mut sql);
        eq("upstream", &filter.upstream, &mut sql);
        eq("agent", &filter.agent, &mut sql);
        eq("decision", &filter.decision, &mut sql);
        eq("decider", &filter.decider, &mut sql);
        eq("pending_id", &filter.pending_id, &mut sql);
        if let Some(since) = &filter.since {
            args.push(since.clone());
            sql.push_str(&format!(" AND at >= ?{}", args.len()));
        }
        if let Some(until) = &filter.until {
            args.push(until.clone());
            sql.push_str(&format!(" AND at < ?{}", args.len()));
        }
        if let Some(cursor) = filter.cursor {
            args.push(cursor.to_string());
            let op = if newest_first { "<" } else { ">" };
            sql.push_str(&format!(" AND seq {op} CAST(?{} AS INTEGER)", args.len()));
        }
        sql.push_str(if newest_first {
            " ORDER BY seq DESC"
        } else {
            " ORDER BY seq ASC"
        });
        if let Some(limit) = filter.limit {
            sql.push_str(&format!(" LIMIT {limit}"));
        }
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map(params_from_iter(args.iter()), row_to_entry)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn scan(
        &mut self,
        from_seq: i64,
        visit: &mut dyn FnMut(Entry) -> bool,
    ) -> Result<(), AuditError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {COLUMNS} FROM audit WHERE seq >= ?1 ORDER BY seq ASC"
        ))?;
        let mut rows = stmt.query([from_seq])?;
        while let Some(row) = rows.next()? {
            if !visit(row_to_entry(row)?) {
                break;
            }
        }
        Ok(())
    }

    fn open_approvals(&mut self) -> Result<Vec<Entry>, AuditError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {COLUMNS} FROM audit a WHERE a.pending_id IS NOT NULL AND decision = 'approval_requested' AND NOT EXISTS (
                SELECT 1 FROM audit b WHERE b.pending_id = a.pending_id AND b.seq > a.seq
                AND b.decision IN ('approved','denied','denied_by_human','timed_out','cancelled','abandoned'))
             ORDER BY seq ASC"
        ))?;
        let rows = stmt.query_map([], row_to_entry)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn meta(&mut self, key: &str) -> Result<Option<String>, AuditError> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    fn set_meta(&mut self, key: &str, value: &str) -> Result<(), AuditError> {
        self.conn.execute(
            "INSERT INTO meta(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [key, value],
        )?;
        Ok(())
    }

    fn meta_prefixed(&mut self, prefix: &str) -> Result<Vec<(String, String)>, AuditError> {
        let mut stmt = self
            .conn
            .prepare("SELECT key, value FROM meta WHERE substr(key, 1, length(?1)) = ?1")?;
        let rows = stmt.query_map([prefix], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn init_meta(&mut self, key: &str, value: &str) -> Result<String, AuditError> {
        self.conn.execute(
            "INSERT INTO meta(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO NOTHING",
            [key, value],
        )?;
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))?)
    }
}
