//! The PostgreSQL side of approval power, for replicas sharing one database
//! (`[store] url`): grants, votes toward a two-person rule, escalation marks
//! and tool pins. Without `[store]` none of this exists and each of
//! [`crate::grants::Grants`], [`crate::quorum::Votes`] and
//! [`crate::pins::Pins`] keeps its state in memory (pins: in a file), as
//! before.
//!
//! - **Grants** are rows of `airlock_grants`. Every replica mirrors the table
//!   in memory, so the call path looks a grant up without a query; the
//!   mirror is re-read on every change (a trigger sends `NOTIFY
//!   airlock_power`) and at least every heartbeat, and a mirror not re-read
//!   for a `lease` covers nothing (see [`crate::grants`]). Ending a grant
//!   (revoked, expired, policy) is a `DELETE … RETURNING`: the replica whose
//!   statement removed the row records its end, once.
//! - **Votes** are rows of `airlock_votes`, one per (hold, voter): the
//!   primary key makes the same voter count once (the approver's stable
//!   identity, see [`crate::quorum::Decider`]; the display name is kept
//!   beside it for people to read), and [`SharedPower::vote`]
//!   takes the hold's row lock in `airlock_approvals` first, so votes on one
//!   hold are counted one at a time across replicas and exactly one vote
//!   completes the count.
//! - **Escalations**: a row of `airlock_escalations` per escalated hold,
//!   claimed with `INSERT … ON CONFLICT DO NOTHING`; the replica whose insert
//!   took it announces it.
//! - **Pins** are rows of `airlock_tool_pins` (the pinned and the changed
//!   definition as JSON); first sight is `INSERT … ON CONFLICT DO NOTHING`,
//!   a change and an acceptance are compare-and-sets on the fingerprints, so
//!   each change is announced by one replica. Every replica mirrors the table
//!   like the grants.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Row};
use uuid::Uuid;

use crate::approvals::StoreError;
use crate::grants::{Grant, Scope};
use crate::pins::{Definition, Pin};

/// The `LISTEN/NOTIFY` channel of grant and pin changes.
pub const CHANNEL: &str = "airlock_power";

/// The schema (a migration of the approvals store, applied with the others).
pub const MIGRATION: &str = "
CREATE TABLE airlock_grants (
    id          text PRIMARY KEY,
    upstream    text NOT NULL,
    tool        text NOT NULL,
    rule        text NOT NULL,
    scope       text NOT NULL CHECK (scope IN ('agent', 'session')),
    agent       text NOT NULL,
    session     text,
    args_hash   text,
    arguments   text,
    granted_by  text NOT NULL,
    pending_id  text NOT NULL,
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL
);
CREATE INDEX airlock_grants_expiry ON airlock_grants (expires_at);
CREATE TABLE airlock_votes (
    pending_id  uuid NOT NULL,
    approver    text NOT NULL,
    channel     text NOT NULL,
    at          timestamptz NOT NULL,
    PRIMARY KEY (pending_id, approver)
);
CREATE TABLE airlock_escalations (
    pending_id  uuid PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE airlock_tool_pins (
    upstream    text NOT NULL,
    tool        text NOT NULL,
    pinned      jsonb NOT NULL,
    changed     jsonb,
    pinned_by   text,
    PRIMARY KEY (upstream, tool)
);
CREATE FUNCTION airlock_power_notify() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('airlock_power', json_build_object('kind', TG_ARGV[0])::text);
    RETURN NULL;
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER airlock_grants_notify AFTER INSERT OR UPDATE OR DELETE ON airlock_grants
    FOR EACH STATEMENT EXECUTE FUNCTION airlock_power_notify('grants');
CREATE TRIGGER airlock_tool_pins_notify AFTER INSERT OR UPDATE OR DELETE ON airlock_tool_pins
    FOR EACH STATEMENT EXECUTE FUNCTION airlock_power_notify('pins');
CREATE TRIGGER airlock_votes_notify AFTER INSERT ON airlock_votes
    FOR EACH STATEMENT EXECUTE FUNCTION airlock_power_notify('votes');
CREATE TRIGGER airlock_escalations_notify AFTER INSERT ON airlock_escalations
    FOR EACH STATEMENT EXECUTE FUNCTION airlock_power_notify('votes');
";

/// Votes keyed by the voter's stable identity (migration 6): a `voter`
/// column becomes the key beside the hold. Votes stored before it (and any
/// a replica of an older version still inserts without a voter, through the
/// trigger) get [`LEGACY_VOTER`] + their name, and are matched by name as
/// before until their hold ends.
pub const VOTER_MIGRATION: &str = "
ALTER TABLE airlock_votes ADD COLUMN voter text;
UPDATE airlock_votes SET voter = 'name:' || approver;
ALTER TABLE airlock_votes ALTER COLUMN voter SET NOT NULL;
ALTER TABLE airlock_votes DROP CONSTRAINT airlock_votes_pkey;
ALTER TABLE airlock_votes ADD PRIMARY KEY (pending_id, voter);
CREATE FUNCTION airlock_votes_legacy_voter() RETURNS trigger AS $$
BEGIN
    IF NEW.voter IS NULL THEN
        NEW.voter := 'name:' || NEW.approver;
    END IF;
    RETURN NEW;
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER airlock_votes_legacy_voter BEFORE INSERT ON airlock_votes
    FOR EACH ROW EXECUTE FUNCTION airlock_votes_legacy_voter();
";

/// The voter of a vote stored without one (before migration 6, or by a
/// replica of an older version): such a vote is matched by display name.
pub const LEGACY_VOTER: &str = "name:";

const GRANT_COLUMNS: &str = "id, upstream, tool, rule, scope, agent, session, args_hash, \
    arguments, granted_by, pending_id, created_at, expires_at";

/// Which mirror a notification says to re-read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Changed {
    Grants,
    Pins,
    /// A vote or an escalation (read on demand; dashboards re-read them).
    Votes,
    /// The listener reconnected: changes may have been missed.
    Everything,
}

/// What counting one approval toward a hold's quorum came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Counted {
    /// Counted; the approvers so far (in order), this one last.
    Vote(Vec<String>),
    /// This approver already approved this hold; the approvers so far.
    Again(Vec<String>),
    /// The count was already complete before this approval (another
    /// approver's vote completed it); this one is not counted.
    Complete(Vec<String>),
    /// The hold is no longer pending.
    Closed,
}

/// One vote as stored: who it counts as, and the name people read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ballot {
    /// The approver's stable identity (`token:NAME`, `oidc:ISSUER#SUBJECT`),
    /// or [`LEGACY_VOTER`] + name for a vote stored without one.
    pub voter: String,
    /// The display name (`alice`, `alice@example.com (oidc)`).
    pub name: String,
}

impl Ballot {
    /// Whether this vote was cast by `voter` (known as `name` now). A legacy
    /// vote has no identity but its name, so the name decides, as it did.
    pub fn is_by(&self, voter: &str, name: &str) -> bool {
        self.voter == voter || (self.voter.starts_with(LEGACY_VOTER) && self.name == name)
    }
}

/// Counts `voter` (known as `name`) toward `needed` given the votes so far;
/// the answer lists display names. Distinct voters count separately even
/// when their names are the same; one voter counts once under any name.
pub fn count(so_far: Vec<Ballot>, voter: &str, name: &str, needed: u32) -> (Counted, bool) {
    let again = so_far.iter().any(|b| b.is_by(voter, name));
    let mut names: Vec<String> = so_far.into_iter().map(|b| b.name).collect();
    if again {
        return (Counted::Again(names), false);
    }
    if names.len() >= needed as usize {
        return (Counted::Complete(names), false);
    }
    names.push(name.to_owned());
    (Counted::Vote(names), true)
}

/// The shared database, for grants, votes, escalations and pins.
pub struct SharedPower {
    pool: Pool,
    /// Where the `LISTEN` connection goes, with TLS as the URL says.
    target: crate::pgtls::Target,
}

fn db(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

impl SharedPower {
    /// On the approvals store's pool (its migrations created the tables);
    /// `url` is for the `LISTEN` connection.
    pub fn new(pool: Pool, url: &str) -> Result<SharedPower, StoreError> {
        let target = crate::pgtls::Target::parse(url).map_err(db)?;
        Ok(SharedPower { pool, target })
    }

    /// Connects to `url` with a pool of its own. The tables are created by
    /// the approvals store's migrations, which must have run.
    pub fn connect(url: &str) -> Result<SharedPower, StoreError> {
        let target = crate::pgtls::Target::parse(url).map_err(db)?;
        let manager = Manager::from_config(
            target.config.clone(),
            target.tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager).max_size(4).build().map_err(db)?;
        Ok(SharedPower { pool, target })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(db)
    }

    // --- grants -------------------------------------------------------------

    pub async fn add_grant(&self, g: &Grant) -> Result<(), StoreError> {
        let client = self.client().await?;
        let sql = format!(
            "INSERT INTO airlock_grants ({GRANT_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
        );
        let arguments = g.arguments.as_ref().map(|a| a.to_string());
        client
            .execute(
                &sql,
                &[
                    &g.id,
                    &g.upstream,
                    &g.tool,
                    &g.rule,
                    &scope_name(g.scope),
                    &g.agent,
                    &g.session,
                    &g.args_hash,
                    &arguments,
                    &g.granted_by,
                    &g.pending_id,
                    &g.created_at,
                    &g.expires_at,
                ],
            )
            .await
            .map_err(db)?;
        Ok(())
    }

    /// Every grant in the table (expired ones too, until someone ends them).
    pub async fn grants(&self) -> Result<Vec<Grant>, StoreError> {
        let client = self.client().await?;
        let sql = format!("SELECT {GRANT_COLUMNS} FROM airlock_grants ORDER BY expires_at, id");
        let rows = client.query(&sql, &[]).await.map_err(db)?;
        rows.iter().map(grant_of).collect()
    }

    /// Removes the live grant `id`; None when no live grant has it (already
    /// ended, here or on another replica).
    pub async fn revoke_grant(
        &self,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Grant>, StoreError> {
        let client = self.client().await?;
        let sql = format!(
            "DELETE FROM airlock_grants WHERE id = $1 AND expires_at > $2 RETURNING {GRANT_COLUMNS}"
        );
        let row = client.query_opt(&sql, &[&id, &now]).await.map_err(db)?;
        row.as_ref().map(grant_of).transpose()
    }

    /// Removes and returns the grants expired at `now`.
    pub async fn take_expired_grants(&self, now: DateTime<Utc>) -> Result<Vec<Grant>, StoreError> {
        let client = self.client().await?;
        let sql =
            format!("DELETE FROM airlock_grants WHERE expires_at <= $1 RETURNING {GRANT_COLUMNS}");
        let rows = client.query(&sql, &[&now]).await.map_err(db)?;
        rows.iter().map(grant_of).collect()
    }

    /// Removes and returns those of these grants still in the table.
    pub async fn end_grants(&self, ids: &[String]) -> Result<Vec<Grant>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let sql =
            format!("DELETE FROM airlock_grants WHERE id = ANY($1) RETURNING {GRANT_COLUMNS}");
        let rows = client.query(&sql, &[&ids]).await.map_err(db)?;
        rows.iter().map(grant_of).collect()
    }

    // --- votes and escalations ----------------------------------------------

    /// Counts the approval of hold `id` by `voter` (known as `name`) toward
    /// `needed`, one vote at a time per hold across replicas (the hold's row
    /// lock).
    pub async fn vote(
        &self,
        id: Uuid,
        voter: &str,
        name: &str,
        channel: &str,
        needed: u32,
    ) -> Result<Counted, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let open = tx
            .query_opt(
                "SELECT 1 FROM airlock_approvals WHERE id = $1 AND state = 'pending' FOR UPDATE",
                &[&id],
            )
            .await
            .map_err(db)?;
        if open.is_none() {
            return Ok(Counted::Closed);
        }
        let so_far: Vec<Ballot> = tx
            .query(
                "SELECT voter, approver FROM airlock_votes WHERE pending_id = $1 \
                 ORDER BY at, voter",
                &[&id],
            )
            .await
            .map_err(db)?
            .iter()
            .map(|r| Ballot {
                voter: r.get(0),
                name: r.get(1),
            })
            .collect();
        let (counted, insert) = count(so_far, voter, name, needed);
        if insert {
            tx.execute(
                "INSERT INTO airlock_votes (pending_id, voter, approver, channel, at) \
                 VALUES ($1, $2, $3, $4, now())",
                &[&id, &voter, &name, &channel],
            )
            .await
            .map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        Ok(counted)
    }

    /// The votes on each of these holds, in order.
    pub async fn votes(&self, ids: &[Uuid]) -> Result<HashMap<Uuid, Vec<Ballot>>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT pending_id, voter, approver FROM airlock_votes WHERE pending_id = ANY($1) \
                 ORDER BY at, voter",
                &[&ids],
            )
            .await
            .map_err(db)?;
        let mut out: HashMap<Uuid, Vec<Ballot>> = HashMap::new();
        for row in rows {
            out.entry(row.get(0)).or_default().push(Ballot {
                voter: row.get(1),
                name: row.get(2),
            });
        }
        Ok(out)
    }

    /// Claims the escalation of hold `id`: true for the one caller (on any
    /// replica) whose claim took it.
    pub async fn claim_escalation(&self, id: Uuid) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let n = client
            .execute(
                "INSERT INTO airlock_escalations (pending_id) VALUES ($1) ON CONFLICT DO NOTHING",
                &[&id],
            )
            .await
            .map_err(db)?;
        Ok(n == 1)
    }

    /// The holds among `ids` that were escalated.
    pub async fn escalated(&self, ids: &[Uuid]) -> Result<Vec<Uuid>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT pending_id FROM airlock_escalations WHERE pending_id = ANY($1)",
                &[&ids],
            )
            .await
            .map_err(db)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Forgets the votes and escalations of holds no longer pending.
    pub async fn forget_closed(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        for table in ["airlock_votes", "airlock_escalations"] {
            let sql = format!(
                "DELETE FROM {table} t WHERE NOT EXISTS (SELECT 1 FROM airlock_approvals a \
                 WHERE a.id = t.pending_id AND a.state = 'pending')"
            );
            client.execute(&sql, &[]).await.map_err(db)?;
        }
        Ok(())
    }

    // --- pins ---------------------------------------------------------------

    /// Every pin, by upstream then tool.
    pub async fn pins(&self) -> Result<HashMap<String, Vec<(String, Pin)>>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT upstream, tool, pinned, changed, pinned_by FROM airlock_tool_pins",
                &[],
            )
            .await
            .map_err(db)?;
        let mut out: HashMap<String, Vec<(String, Pin)>> = HashMap::new();
        for row in rows {
            let pin = Pin {
                pinned: definition(row.get("pinned"))?,
                changed: row
                    .get::<_, Option<serde_json::Value>>("changed")
                    .map(definition)
                    .transpose()?,
                pinned_by: row.get("pinned_by"),
            };
            out.entry(row.get("upstream"))
                .or_default()
                .push((row.get("tool"), pin));
        }
        Ok(out)
    }

    /// Pins a tool seen for the first time, unless another replica already
    /// did: then its pin stands, and is returned when it differs from `pin`
    /// (what this replica saw is then a change of it).
    pub async fn pin_first(
        &self,
        upstream: &str,
        tool: &str,
        pin: &Pin,
    ) -> Result<Option<Pin>, StoreError> {
        let client = self.client().await?;
        let inserted = client
            .execute(
                "INSERT INTO airlock_tool_pins (upstream, tool, pinned, pinned_by) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                &[&upstream, &tool, &json(&pin.pinned)?, &pin.pinned_by],
            )
            .await
            .map_err(db)?;
        if inserted == 1 {
            return Ok(None);
        }
        let row = client
            .query_opt(
                "SELECT pinned, pinned_by FROM airlock_tool_pins WHERE upstream = $1 AND tool = $2",
                &[&upstream, &tool],
            )
            .await
            .map_err(db)?;
        let Some(row) = row else { return Ok(None) };
        let existing = Pin {
            pinned: definition(row.get("pinned"))?,
            changed: None,
            pinned_by: row.get("pinned_by"),
        };
        Ok((existing.pinned.fingerprint != pin.pinned.fingerprint).then_some(existing))
    }

    /// Records a changed definition of a pin whose fingerprint is `pinned`;
    /// true for the one replica whose statement recorded it (it announces it).
    pub async fn record_change(
        &self,
        upstream: &str,
        tool: &str,
        pinned: &str,
        changed: &Definition,
    ) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let n = client
            .execute(
                "UPDATE airlock_tool_pins SET changed = $4 \
                 WHERE upstream = $1 AND tool = $2 AND pinned->>'fingerprint' = $3 \
                 AND (changed IS NULL OR changed->>'fingerprint' <> $5)",
                &[
                    &upstream,
                    &tool,
                    &pinned,
                    &json(changed)?,
                    &changed.fingerprint,
                ],
            )
            .await
            .map_err(db)?;
        Ok(n == 1)
    }

    /// The definition is back to its pin: nothing is pending any more.
    pub async fn clear_change(
        &self,
        upstream: &str,
        tool: &str,
        pinned: &str,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE airlock_tool_pins SET changed = NULL \
                 WHERE upstream = $1 AND tool = $2 AND pinned->>'fingerprint' = $3",
                &[&upstream, &tool, &pinned],
            )
            .await
            .map_err(db)?;
        Ok(())
    }

    /// Makes the changed definition the pin. None: the tool has no changed
    /// definition (unknown, or accepted already, maybe on another replica).
    pub async fn accept_pin(
        &self,
        upstream: &str,
        tool: &str,
        by: &str,
    ) -> Result<Option<Pin>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "UPDATE airlock_tool_pins SET pinned = changed, changed = NULL, pinned_by = $3 \
                 WHERE upstream = $1 AND tool = $2 AND changed IS NOT NULL \
                 RETURNING pinned, pinned_by",
                &[&upstream, &tool, &by],
            )
            .await
            .map_err(db)?;
        row.map(|row| {
            Ok(Pin {
                pinned: definition(row.get("pinned"))?,
                changed: None,
                pinned_by: row.get("pinned_by"),
            })
        })
        .transpose()
    }

    /// Pins this definition as it is (changed or not).
    pub async fn pin_now(&self, upstream: &str, tool: &str, pin: &Pin) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO airlock_tool_pins (upstream, tool, pinned, changed, pinned_by) \
                 VALUES ($1, $2, $3, NULL, $4) ON CONFLICT (upstream, tool) \
                 DO UPDATE SET pinned = $3, changed = NULL, pinned_by = $4",
                &[&upstream, &tool, &json(&pin.pinned)?, &pin.pinned_by],
            )
            .await
            .map_err(db)?;
        Ok(())
    }

    /// Changes committed by any replica, as they are heard; `Everything`
    /// after the listening connection was re-opened. Runs until `stop`.
    pub fn watch(&self, stop: tokio_util::sync::CancellationToken) -> mpsc::Receiver<Changed> {
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(listen(self.target.clone(), tx, stop));
        rx
    }
}

fn scope_name(scope: Scope) -> &'static str {
    match scope {
        Scope::Agent => "agent",
        Scope::Session => "session",
    }
}

fn grant_of(row: &Row) -> Result<Grant, StoreError> {
    let scope: String = row.get("scope");
    let arguments: Option<String> = row.get("arguments");
    Ok(Grant {
        id: row.get("id"),
        upstream: row.get("upstream"),
        tool: row.get("tool"),
        rule: row.get("rule"),
        scope: match scope.as_str() {
            "session" => Scope::Session,
            "agent" => Scope::Agent,
            other => return Err(StoreError(format!("bad grant scope {other:?}"))),
        },
        agent: row.get("agent"),
        session: row.get("session"),
        args_hash: row.get("args_hash"),
        arguments: arguments.and_then(|a| serde_json::from_str(&a).ok()),
        granted_by: row.get("granted_by"),
        pending_id: row.get("pending_id"),
        created_at: row.get("created_at"),
        expires_at: row.get("expires_at"),
    })
}

fn json(d: &Definition) -> Result<serde_json::Value, StoreError> {
    serde_json::to_value(d).map_err(db)
}

fn definition(v: serde_json::Value) -> Result<Definition, StoreError> {
    serde_json::from_value(v).map_err(|e| StoreError(format!("bad pin in airlock_tool_pins: {e}")))
}

#[derive(serde::Deserialize)]
struct Notice {
    kind: String,
}

/// `LISTEN airlock_power` on its own connection, re-opened with backoff.
async fn listen(
    target: crate::pgtls::Target,
    tx: mpsc::Sender<Changed>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    let mut first = true;
    loop {
        match target.config.connect(target.tls.clone()).await {
            Ok((client, mut connection)) => {
                let (notes_tx, mut notes) = mpsc::unbounded_channel();
                let driver = tokio::spawn(async move {
                    let mut messages =
                        futures::stream::poll_fn(move |cx| connection.poll_message(cx));
                    while let Some(Ok(message)) = messages.next().await {
                        if let AsyncMessage::Notification(n) = message
                            && notes_tx.send(n.payload().to_owned()).is_err()
                        {
                            break;
                        }
                    }
                });
                if client
                    .batch_execute(&format!("LISTEN {CHANNEL}"))
                    .await
                    .is_ok()
                {
                    backoff = Duration::from_millis(100);
                    if !first && tx.send(Changed::Everything).await.is_err() {
                        return;
                    }
                    loop {
                        let payload = tokio::select! {
                            _ = stop.cancelled() => { driver.abort(); return; }
                            p = notes.recv() => p,
                        };
                        let Some(payload) = payload else { break };
                        let changed = match serde_json::from_str::<Notice>(&payload) {
                            Ok(n) if n.kind == "pins" => Changed::Pins,
                            Ok(n) if n.kind == "grants" => Changed::Grants,
                            Ok(n) if n.kind == "votes" => Changed::Votes,
                            _ => Changed::Everything,
                        };
                        if tx.send(changed).await.is_err() {
                            driver.abort();
                            return;
                        }
                    }
                }
                driver.abort();
                tracing::warn!("grants and pins listener: connection lost; reconnecting");
            }
            Err(e) => tracing::warn!("grants and pins listener: {e}"),
        }
        first = false;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ballots(xs: &[(&str, &str)]) -> Vec<Ballot> {
        xs.iter()
            .map(|(voter, name)| Ballot {
                voter: voter.to_string(),
                name: name.to_string(),
            })
            .collect()
    }

    fn names(xs: &[&str]) -> Vec<String> {
        xs.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_vote_counts_once_per_voter_and_not_past_the_quorum() {
        let (a, b) = (("token:alice", "alice"), ("token:bob", "bob"));
        assert_eq!(
            count(ballots(&[]), a.0, a.1, 2),
            (Counted::Vote(names(&["alice"])), true)
        );
        assert_eq!(
            count(ballots(&[a]), a.0, a.1, 2),
            (Counted::Again(names(&["alice"])), false)
        );
        assert_eq!(
            count(ballots(&[a]), b.0, b.1, 2),
            (Counted::Vote(names(&["alice", "bob"])), true)
        );
        assert_eq!(
            count(ballots(&[a, b]), "token:carol", "carol", 2),
            (Counted::Complete(names(&["alice", "bob"])), false)
        );
    }

    #[test]
    fn voters_are_told_apart_by_identity_not_by_display_name() {
        let name = "alice@example.com (oidc)";
        let first = ("oidc:https://idp#1", name);
        // Another provider account under the same display name counts.
        assert_eq!(
            count(ballots(&[first]), "oidc:https://idp#2", name, 2),
            (Counted::Vote(names(&[name, name])), true)
        );
        // The same account under a new display name does not.
        assert_eq!(
            count(
                ballots(&[first]),
                first.0,
                "alice.new@example.com (oidc)",
                2
            ),
            (Counted::Again(names(&[name])), false)
        );
        // A token approver named like an SSO user's email is someone else.
        let sso = ("oidc:https://idp#1", "ops (oidc)");
        assert_eq!(
            count(ballots(&[("token:ops", "ops")]), sso.0, sso.1, 2),
            (Counted::Vote(names(&["ops", "ops (oidc)"])), true)
        );
    }

    #[test]
    fn a_vote_stored_without_identity_is_matched_by_name() {
        let legacy = ("name:alice", "alice");
        assert_eq!(
            count(ballots(&[legacy]), "token:alice", "alice", 2),
            (Counted::Again(names(&["alice"])), false)
        );
        assert_eq!(
            count(ballots(&[legacy]), "token:bob", "bob", 2),
            (Counted::Vote(names(&["alice", "bob"])), true)
        );
    }
}
