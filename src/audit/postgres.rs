//! The shared audit backend: PostgreSQL, for several replicas on one chain.
//!
//! Same rows, same hash chain, same seal as the SQLite backend; only the
//! storage differs.
//!
//! - **One chain across replicas.** [`AuditBackend::append`] runs in one
//!   transaction that first takes a transaction-scoped advisory lock
//!   (`pg_advisory_xact_lock(AUDIT_LOCK)`), then reads the tail (`seq`,
//!   `hash`), seals and inserts its rows and commits, which releases the
//!   lock. Appends from every replica therefore take turns; a replica's
//!   batch is contiguous and links to whatever the previous holder wrote.
//!   An advisory lock (rather than `SELECT … FOR UPDATE` on the tail row)
//!   also serializes the very first append, when there is no row to lock.
//!   The `seq` primary key is the backstop: an interleaving that slipped
//!   past the lock would fail the transaction, not fork the chain.
//! - **Migrations** run on connect under another advisory lock and are
//!   recorded in `airlock_audit_schema` (separate from the approvals store's
//!   `airlock_schema`, so the two evolve independently).
//! - **Meta** (checkpoint head, health probe) lives in `airlock_audit_meta`.
//!
//! **Sync over async.** The [`AuditBackend`] trait is synchronous (the
//! writer is an OS thread). Each backend owns a current-thread tokio
//! runtime and one `tokio-postgres` connection driven by it — what the
//! `postgres` sync crate does, without another dependency. Calls run
//! `block_on` inside [`tokio::task::block_in_place`], so a backend can also
//! be used from a worker of the gateway's multi-thread runtime (the CLI),
//! from `spawn_blocking` (the reader) and from plain threads (the writer).
//! It must not be called from a current-thread runtime's task.
//!
//! TLS as the URL's `sslmode` says ([`crate::pgtls`]).

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row};

use crate::pgtls::Target;

use super::{AuditBackend, AuditError, Entry, Filter, Sealed};

/// Serializes appends from every replica (see the module doc).
const AUDIT_LOCK: i64 = 0x6169_726c_6f63_6b02; // "airlock" 2
/// Serializes migrations of the audit tables.
const MIGRATION_LOCK: i64 = 0x6169_726c_6f63_6b03; // "airlock" 3

/// Longest wait for the chain's lock (or any row lock) before a write fails.
const LOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Longest wait to connect, unless the URL sets `connect_timeout`.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Schema versions, applied in order, each once.
const MIGRATIONS: &[(i32, &str)] = &[(1, V1)];

/// `at` is the RFC 3339 text the hash covers; `COLLATE "C"` keeps its
/// comparisons byte-wise whatever the database's locale.
const V1: &str = r#"
CREATE TABLE airlock_audit (
    seq        bigint PRIMARY KEY,
    id         text NOT NULL,
    at         text COLLATE "C" NOT NULL,
    decision   text NOT NULL,
    session    text,
    agent      text,
    upstream   text,
    tool       text,
    arguments  text,
    args_hash  text,
    rule       text,
    reason     text,
    pending_id text,
    decider    text,
    channel    text,
    comment    text,
    wait_ms    bigint,
    prev_hash  text NOT NULL,
    hash       text NOT NULL
);
CREATE INDEX airlock_audit_tool ON airlock_audit (tool);
CREATE INDEX airlock_audit_at ON airlock_audit (at);
CREATE INDEX airlock_audit_pending_id ON airlock_audit (pending_id) WHERE pending_id IS NOT NULL;
CREATE TABLE airlock_audit_meta (key text PRIMARY KEY, value text NOT NULL);
"#;

const COLUMNS: &str = "seq, id, at, decision, session, agent, upstream, tool, arguments, args_hash, rule, reason, pending_id, decider, channel, comment, wait_ms, prev_hash, hash";

/// One connection to the shared audit tables.
pub struct Postgres {
    /// Drives `client`'s connection; `None` only while dropping.
    runtime: Option<tokio::runtime::Runtime>,
    client: Client,
    /// To connect again after the connection was lost (database restart,
    /// network); never shown (it may hold a password).
    config: Target,
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Does not block, so a backend may be dropped anywhere, even on an
        // async worker.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// `url` with any password replaced by `***`, for errors and logs.
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let rest = scheme_end + 3;
        let authority_end = out[rest..]
            .find(['/', '?', '#'])
            .map_or(out.len(), |i| rest + i);
        if let Some(at) = out[rest..authority_end].rfind('@').map(|i| rest + i)
            && let Some(colon) = out[rest..at].find(':').map(|i| rest + i)
        {
            out.replace_range(colon + 1..at, "***");
        }
    }
    // `?password=…` in a URL, `password=…` in key/value form.
    let re = regex::Regex::new(r"(?i)(password\s*=\s*)('[^']*'|[^&\s]+)").expect("valid regex");
    re.replace_all(&out, "${1}***").into_owned()
}

/// Connects, and drives the connection on the current (backend's) runtime.
async fn open_client(target: &Target) -> Result<Client, tokio_postgres::Error> {
    let mut config = target.config.clone();
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    let (client, connection) = config.connect(target.tls.clone()).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!("audit store connection ended: {e}");
        }
    });
    // A writer stuck behind another's lock (a replica frozen mid-append)
    // fails its batch after LOCK_TIMEOUT instead of hanging: the rows are
    // kept and retried, and /healthz says why, as for a locked SQLite file.
    client
        .batch_execute(&format!(
            "SET lock_timeout = '{}ms'",
            LOCK_TIMEOUT.as_millis()
        ))
        .await?;
    Ok(client)
}

/// A transaction holding the advisory lock `lock` until it ends (commit or
/// rollback release it), waiting at most the connection's `lock_timeout`.
async fn locked_transaction(
    client: &mut Client,
    lock: i64,
) -> Result<tokio_postgres::Transaction<'_>, AuditError> {
    let tx = client.transaction().await.map_err(sql)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock])
        .await
        .map_err(sql)?;
    Ok(tx)
}

fn sql(e: tokio_postgres::Error) -> AuditError {
    // tokio-postgres errors never carry the connection string.
    AuditError::Unavailable(match e.as_db_error() {
        Some(db) => format!("PostgreSQL: {}", db.message()),
        None => format!("PostgreSQL: {}", crate::pgtls::with_causes(&e)),
    })
}

impl Postgres {
    /// Connects to `url` (`postgres://user@host:port/db`) and migrates the
    /// audit tables. Errors name the URL without its password.
    pub fn connect(url: &str) -> Result<Postgres, AuditError> {
        let mut pg = Postgres::connect_only(url)?;
        pg.migrate().map_err(|e| AuditError::Open {
            path: redact_url(url),
            reason: e.to_string(),
        })?;
        Ok(pg)
    }

    /// Connects without creating or changing anything (for `airlock audit
    /// verify|export --store` and `replay --store`); fails when the
    /// database holds no audit chain.
    pub fn open_existing(url: &str) -> Result<Postgres, AuditError> {
        let mut pg = Postgres::connect_only(url)?;
        let found: bool = pg.block(async |client| {
            client
                .query_one("SELECT to_regclass('airlock_audit') IS NOT NULL", &[])
                .await
                .map(|r| r.get(0))
                .map_err(sql)
        })?;
        if !found {
            return Err(AuditError::Open {
                path: redact_url(url),
                reason: "this database holds no audit chain (no airlock_audit table)".into(),
            });
        }
        Ok(pg)
    }

    fn connect_only(url: &str) -> Result<Postgres, AuditError> {
        let open = |reason: String| AuditError::Open {
            path: redact_url(url),
            reason,
        };
        let config = Target::parse(url).map_err(|e| open(format!("not a PostgreSQL URL: {e}")))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| open(format!("cannot start a runtime: {e}")))?;
        let client = match tokio::task::block_in_place(|| runtime.block_on(open_client(&config))) {
            Ok(client) => client,
            Err(e) => {
                // Dropping a runtime inside the gateway's async start panics.
                runtime.shutdown_background();
                return Err(open(sql(e).to_string()));
            }
        };
        Ok(Postgres {
            runtime: Some(runtime),
            client,
            config,
        })
    }

    /// A lost connection is opened again before the next statement, so a
    /// database restart costs the writer one failed batch (kept and retried
    /// every second, like any failed write), not the rest of the process.
    fn reconnect_if_closed(&mut self) -> Result<(), AuditError> {
        if !self.client.is_closed() {
            return Ok(());
        }
        let runtime = self.runtime.as_ref().expect("runtime until drop");
        self.client = tokio::task::block_in_place(|| runtime.block_on(open_client(&self.config)))
            .map_err(sql)?;
        tracing::info!("audit store: connected again");
        Ok(())
    }

    /// Runs `f` to completion on this backend's runtime, after connecting
    /// again if the connection was lost.
    fn block<T>(
        &mut self,
        f: impl AsyncFnOnce(&mut Client) -> Result<T, AuditError>,
    ) -> Result<T, AuditError> {
        self.reconnect_if_closed()?;
        let runtime = self.runtime.as_ref().expect("runtime until drop");
        let client = &mut self.client;
        tokio::task::block_in_place(|| runtime.block_on(f(client)))
    }

    fn migrate(&mut self) -> Result<(), AuditError> {
        self.block(async |client| {
            let tx = locked_transaction(client, MIGRATION_LOCK).await?;
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS airlock_audit_schema (
                    version    integer PRIMARY KEY,
                    applied_at timestamptz NOT NULL DEFAULT now())",
            )
            .await
            .map_err(sql)?;
            let current: i32 = tx
                .query_one(
                    "SELECT COALESCE(max(version), 0) FROM airlock_audit_schema",
                    &[],
                )
                .await
                .map_err(sql)?
                .get(0);
            let known = MIGRATIONS.last().map_or(0, |(v, _)| *v);
            if current > known {
                return Err(AuditError::Unavailable(format!(
                    "the audit schema is at version {current}, newer than this Airlock knows ({known}): upgrade Airlock"
                )));
            }
            for (version, text) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
                tx.batch_execute(text).await.map_err(|e| {
                    AuditError::Unavailable(format!("audit migration {version}: {}", sql(e)))
                })?;
                tx.execute(
                    "INSERT INTO airlock_audit_schema (version) VALUES ($1)",
                    &[version],
                )
                .await
                .map_err(sql)?;
            }
            tx.commit().await.map_err(sql)
        })
    }

    /// Runs a read; one that failed because the connection was lost (a
    /// database restart) runs once more on a new connection.
    fn read<T>(
        &mut self,
        mut f: impl FnMut(&mut Postgres) -> Result<T, AuditError>,
    ) -> Result<T, AuditError> {
        match f(self) {
            Err(_) if self.client.is_closed() => f(self),
            done => done,
        }
    }

    fn select(
        &mut self,
        text: &str,
        args: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Entry>, AuditError> {
        let rows =
            self.read(|pg| pg.block(async |client| client.query(text, args).await.map_err(sql)))?;
        rows.iter().map(row_to_entry).collect()
    }
}

fn row_to_entry(row: &Row) -> Result<Entry, AuditError> {
    let get_err = |e: tokio_postgres::Error| AuditError::Unavailable(format!("bad audit row: {e}"));
    let arguments: Option<String> = row.try_get(8).map_err(get_err)?;
    Ok(Entry {
        seq: row.try_get(0).map_err(get_err)?,
        id: row.try_get(1).map_err(get_err)?,
        at: row.try_get(2).map_err(get_err)?,
        decision: row.try_get(3).map_err(get_err)?,
        session: row.try_get(4).map_err(get_err)?,
        agent: row.try_get(5).map_err(get_err)?,
        upstream: row.try_get(6).map_err(get_err)?,
        tool: row.try_get(7).map_err(get_err)?,
        arguments: arguments
            .map(|a| serde_json::from_str(&a).unwrap_or(serde_json::Value::String(a))),
        args_hash: row.try_get(9).map_err(get_err)?,
        rule: row.try_get(10).map_err(get_err)?,
        reason: row.try_get(11).map_err(get_err)?,
        pending_id: row.try_get(12).map_err(get_err)?,
        decider: row.try_get(13).map_err(get_err)?,
        channel: row.try_get(14).map_err(get_err)?,
        comment: row.try_get(15).map_err(get_err)?,
        wait_ms: row.try_get(16).map_err(get_err)?,
        prev_hash: row.try_get(17).map_err(get_err)?,
        hash: row.try_get(18).map_err(get_err)?,
    })
}

/// A filter value with `*` or `?` as a `LIKE` pattern (the SQLite backend's
/// GLOB: case-sensitive, `*` any run, `?` one character).
fn glob_to_like(glob: &str) -> String {
    let mut out = String::with_capacity(glob.len() + 4);
    for c in glob.chars() {
        match c {
            '*' => out.push('%'),
            '?' => out.push('_'),
            '%' | '_' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

impl AuditBackend for Postgres {
    fn append(
        &mut self,
        count: usize,
        seal: &mut dyn FnMut(usize, i64, &str) -> Sealed,
    ) -> Result<Vec<Entry>, AuditError> {
        self.block(async |client| {
            let tx = locked_transaction(client, AUDIT_LOCK).await?;
            let (mut seq, mut prev): (i64, String) = match tx
                .query_opt(
                    "SELECT seq, hash FROM airlock_audit ORDER BY seq DESC LIMIT 1",
                    &[],
                )
                .await
                .map_err(sql)?
            {
                Some(row) => (row.get(0), row.get(1)),
                None => (0, super::GENESIS.to_owned()),
            };
            let insert = tx
                .prepare(&format!(
                    "INSERT INTO airlock_audit ({COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19)"
                ))
                .await
                .map_err(sql)?;
            let mut sealed = Vec::with_capacity(count);
            for i in 0..count {
                seq += 1;
                let row = seal(i, seq, &prev);
                prev = row.entry.hash.clone();
                sealed.push(row);
            }
            // The inserts are sent without waiting for each answer
            // (tokio-postgres pipelines concurrent queries on a connection).
            let inserts = sealed.iter().map(|Sealed { entry: e, arguments_text }| {
                let tx = &tx;
                let insert = &insert;
                async move {
                    tx.execute(
                        insert,
                        &[
                            &e.seq,
                            &e.id,
                            &e.at,
                            &e.decision,
                            &e.session,
                            &e.agent,
                            &e.upstream,
                            &e.tool,
                            arguments_text,
                            &e.args_hash,
                            &e.rule,
                            &e.reason,
                            &e.pending_id,
                            &e.decider,
                            &e.channel,
                            &e.comment,
                            &e.wait_ms,
                            &e.prev_hash,
                            &e.hash,
                        ],
                    )
                    .await
                }
            });
            futures::future::try_join_all(inserts).await.map_err(sql)?;
            tx.commit().await.map_err(sql)?;
            Ok(sealed.into_iter().map(|s| s.entry).collect())
        })
    }

    /// Proves what an append needs: the chain's lock (within the same
    /// `lock_timeout`) and a write. A store that accepts writes while
    /// another replica is frozen holding the lock is not healthy for us:
    /// our next append would fail the same way.
    fn probe(&mut self) -> Result<(), AuditError> {
        let now = chrono::Utc::now().to_rfc3339();
        self.block(async |client| {
            let tx = locked_transaction(client, AUDIT_LOCK).await?;
            tx.execute(
                "INSERT INTO airlock_audit_meta (key, value) VALUES ('health_probe', $1) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                &[&now],
            )
            .await
            .map_err(sql)?;
            tx.commit().await.map_err(sql)
        })
    }

    fn query(&mut self, filter: &Filter, newest_first: bool) -> Result<Vec<Entry>, AuditError> {
        let mut text = format!("SELECT {COLUMNS} FROM airlock_audit WHERE true");
        let mut args: Vec<String> = Vec::new();
        let mut eq = |column: &str, value: &Option<String>, text: &mut String| {
            if let Some(v) = value {
                if v.contains(['*', '?']) {
                    args.push(glob_to_like(v));
                    text.push_str(&format!(" AND {column} LIKE ${}", args.len()));
                } else {
                    args.push(v.clone());
                    text.push_str(&format!(" AND {column} = ${}", args.len()));
                }
            }
        };
        eq("tool", &filter.tool, &mut text);
        eq("upstream", &filter.upstream, &mut text);
        eq("agent", &filter.agent, &mut text);
        eq("decision", &filter.decision, &mut text);
        eq("decider", &filter.decider, &mut text);
        eq("pending_id", &filter.pending_id, &mut text);
        if let Some(since) = &filter.since {
            args.push(since.clone());
            text.push_str(&format!(" AND at >= ${}", args.len()));
        }
        if let Some(until) = &filter.until {
            args.push(until.clone());
            text.push_str(&format!(" AND at < ${}", args.len()));
        }
        if let Some(cursor) = filter.cursor {
            args.push(cursor.to_string());
            let op = if newest_first { "<" } else { ">" };
            text.push_str(&format!(
                " AND seq {op} CAST(${}::text AS bigint)",
                args.len()
            ));
        }
        text.push_str(if newest_first {
            " ORDER BY seq DESC"
        } else {
            " ORDER BY seq ASC"
        });
        if let Some(limit) = filter.limit {
            text.push_str(&format!(" LIMIT {limit}"));
        }
        let params: Vec<&(dyn ToSql + Sync)> =
            args.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
        self.select(&text, &params)
    }

    fn scan(
        &mut self,
        from_seq: i64,
        visit: &mut dyn FnMut(Entry) -> bool,
    ) -> Result<(), AuditError> {
        // Pages of rows, so a long chain is never held in memory at once.
        const PAGE: i64 = 2048;
        let mut next = from_seq;
        loop {
            let page = self.select(
                &format!(
                    "SELECT {COLUMNS} FROM airlock_audit WHERE seq >= $1 ORDER BY seq ASC LIMIT {PAGE}"
                ),
                &[&next],
            )?;
            let full = page.len() as i64 == PAGE;
            for entry in page {
                next = entry.seq + 1;
                if !visit(entry) {
                    return Ok(());
                }
            }
            if !full {
                return Ok(());
            }
        }
    }

    fn open_approvals(&mut self) -> Result<Vec<Entry>, AuditError> {
        self.select(
            &format!(
                "SELECT {COLUMNS} FROM airlock_audit a WHERE a.pending_id IS NOT NULL AND decision = 'approval_requested' AND NOT EXISTS (
                    SELECT 1 FROM airlock_audit b WHERE b.pending_id = a.pending_id AND b.seq > a.seq
                    AND b.decision IN ('approved','denied','denied_by_human','timed_out','cancelled','abandoned'))
                 ORDER BY seq ASC"
            ),
            &[],
        )
    }

    fn meta(&mut self, key: &str) -> Result<Option<String>, AuditError> {
        self.read(|pg| {
            pg.block(async |client| {
                client
                    .query_opt(
                        "SELECT value FROM airlock_audit_meta WHERE key = $1",
                        &[&key],
                    )
                    .await
                    .map(|row| row.map(|r| r.get(0)))
                    .map_err(sql)
            })
        })
    }

    fn set_meta(&mut self, key: &str, value: &str) -> Result<(), AuditError> {
        self.block(async |client| {
            client
                .execute(
                    "INSERT INTO airlock_audit_meta (key, value) VALUES ($1, $2) \
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    &[&key, &value],
                )
                .await
                .map(|_| ())
                .map_err(sql)
        })
    }

    fn meta_prefixed(&mut self, prefix: &str) -> Result<Vec<(String, String)>, AuditError> {
        self.read(|pg| {
            pg.block(async |client| {
                client
                    .query(
                        "SELECT key, value FROM airlock_audit_meta \
                         WHERE left(key, length($1)) = $1",
                        &[&prefix],
                    )
                    .await
                    .map(|rows| rows.iter().map(|r| (r.get(0), r.get(1))).collect())
                    .map_err(sql)
            })
        })
    }

    fn delete_meta(&mut self, keys: &[String]) -> Result<(), AuditError> {
        self.block(async |client| {
            client
                .execute(
                    "DELETE FROM airlock_audit_meta WHERE key = ANY($1)",
                    &[&keys],
                )
                .await
                .map(|_| ())
                .map_err(sql)
        })
    }

    fn init_meta(&mut self, key: &str, value: &str) -> Result<String, AuditError> {
        // Two statements: under READ COMMITTED the read takes a fresh
        // snapshot, so an insert that lost a race sees the winner's value.
        self.block(async |client| {
            client
                .execute(
                    "INSERT INTO airlock_audit_meta (key, value) VALUES ($1, $2) \
                     ON CONFLICT (key) DO NOTHING",
                    &[&key, &value],
                )
                .await
                .map_err(sql)?;
            client
                .query_one(
                    "SELECT value FROM airlock_audit_meta WHERE key = $1",
                    &[&key],
                )
                .await
                .map(|row| row.get(0))
                .map_err(sql)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show_in_a_redacted_url() {
        assert_eq!(
            redact_url("postgres://airlock:s3cret@db:5432/airlock"),
            "postgres://airlock:***@db:5432/airlock"
        );
        assert_eq!(
            redact_url("postgres://airlock@db/airlock?password=s3cret&sslmode=disable"),
            "postgres://airlock@db/airlock?password=***&sslmode=disable"
        );
        assert_eq!(
            redact_url("host=db user=airlock password='a b' dbname=x"),
            "host=db user=airlock password=*** dbname=x"
        );
        assert_eq!(redact_url("postgres://db/airlock"), "postgres://db/airlock");
    }

    #[test]
    fn globs_become_like_patterns_with_wildcards_escaped() {
        assert_eq!(glob_to_like("delete_*"), "delete\\_%");
        assert_eq!(glob_to_like("a?c%"), "a_c\\%");
    }
}
