//! Who may decide a held call, and how many must approve: the two-person
//! rule, approver groups and escalation (`approval.approvers`, `groups`,
//! `escalate_after`, `escalate_to` of a policy rule).
//!
//! Every human decision (API, dashboard, CLI, Slack) goes through
//! [`decide`]. A deny ends the hold at once. An approval of a rule that needs
//! N distinct approvers is a *vote* (audit row `approval.vote`, event
//! `pending.approval`) until the N-th distinct approver's vote, which becomes
//! the approval in [`crate::hold::decide`] — whose compare-and-set in the
//! approvals store keeps it exactly-once.
//!
//! Votes count by the approver's stable identity ([`Decider::voter`]), not
//! by the name people read: a token approver is its `[[approver]] name`
//! (`token:NAME`), a single sign-on user the provider's issuer and subject
//! (`oidc:ISSUER#SUBJECT`), whatever email or name the provider sends. Two
//! provider accounts with one display name are two voters; one account
//! renamed between sign-ins is one. Without `[store]`, votes and
//! escalation marks live in memory; with `[store] url` they are rows in
//! PostgreSQL shared by every replica ([`crate::power_store`]): votes on one
//! hold are counted one at a time (the hold's row lock), an approver counts
//! once (primary key), exactly one vote completes the count, and one
//! replica's claim announces an escalation.
//!
//! The requirement is read from the policy in force when the decision is
//! made (the rule that governs the tool now).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::approvals::StoreError;
use crate::audit::Record;
use crate::gateway::Gateway;
use crate::hold::{self, Choice, DecideError, PendingItem, Resolution};
use crate::policy::Quorum;
use crate::power_store::{Ballot, Counted, SharedPower};
use uuid::Uuid;

/// Votes and escalations of open holds, by pending id: in memory, or in
/// the shared store.
#[derive(Default)]
pub struct Votes {
    /// In memory only (without `[store]`).
    votes: Mutex<HashMap<String, Vec<Vote>>>,
    /// Holds known to be escalated (by this replica, or, shared, by any:
    /// every replica tries to claim a due escalation and notes it either way).
    escalated: Mutex<HashSet<String>>,
    shared: Option<Arc<SharedPower>>,
    /// Ticks since the shared store last forgot closed holds' votes.
    ticks: AtomicU32,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Vote {
    /// The display name.
    pub approver: String,
    /// The stable identity the vote counts as ([`Decider::voter`]).
    pub voter: String,
    pub channel: String,
    #[serde(serialize_with = "rfc3339")]
    pub at: DateTime<Utc>,
}

impl Vote {
    fn ballot(&self) -> Ballot {
        Ballot {
            voter: self.voter.clone(),
            name: self.approver.clone(),
        }
    }
}

fn rfc3339<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// Ticks (of `power`'s 500 ms loop) between sweeps of closed holds' votes
/// in the shared store.
const FORGET_EVERY: u32 = 120;

/// How long an approval that found the count already complete waits for
/// the vote that completed it to decide, before deciding itself (the
/// completing replica may have died in between).
const COMPLETE_WAIT: Duration = Duration::from_secs(2);

impl Votes {
    /// Votes and escalations kept in PostgreSQL.
    pub fn shared(store: Arc<SharedPower>) -> Votes {
        Votes {
            shared: Some(store),
            ..Votes::default()
        }
    }

    /// Counts the approval of hold `id` by `voter` (known as `name`)
    /// toward `needed`.
    async fn count(
        &self,
        id: &str,
        voter: &str,
        name: &str,
        channel: &str,
        needed: u32,
    ) -> Result<Counted, DecideError> {
        if let Some(store) = &self.shared {
            let uuid = Uuid::parse_str(id).map_err(|_| DecideError::NotFound(id.to_owned()))?;
            return store
                .vote(uuid, voter, name, channel, needed)
                .await
                .map_err(|e| DecideError::Store(e.to_string()));
        }
        let mut votes = self.votes.lock().expect("votes lock");
        let list = votes.entry(id.to_owned()).or_default();
        let so_far = list.iter().map(Vote::ballot).collect();
        let (counted, insert) = crate::power_store::count(so_far, voter, name, needed);
        if insert {
            list.push(Vote {
                approver: name.to_owned(),
                voter: voter.to_owned(),
                channel: channel.to_owned(),
                at: Utc::now(),
            });
        }
        Ok(counted)
    }

    /// The votes on each of these holds so far.
    async fn ballots(&self, ids: &[String]) -> HashMap<String, Vec<Ballot>> {
        let Some(store) = &self.shared else {
            let votes = self.votes.lock().expect("votes lock");
            return ids
                .iter()
                .filter_map(|id| {
                    let list = votes.get(id)?;
                    Some((id.clone(), list.iter().map(Vote::ballot).collect()))
                })
                .collect();
        };
        let uuids: Vec<Uuid> = ids.iter().filter_map(|i| Uuid::parse_str(i).ok()).collect();
        match store.votes(&uuids).await {
            Ok(by_id) => by_id
                .into_iter()
                .map(|(id, v)| (id.to_string(), v))
                .collect(),
            Err(e) => {
                tracing::warn!("votes not read from the store: {e}");
                HashMap::new()
            }
        }
    }

    fn is_escalated(&self, id: &str) -> bool {
        self.escalated.lock().expect("votes lock").contains(id)
    }

    /// Claims the escalation of hold `id`: true for the one claim (on any
    /// replica) that takes it. Either way it is escalated from now on.
    async fn claim_escalation(&self, id: &str) -> Result<bool, StoreError> {
        let mine = match &self.shared {
            Some(store) => {
                let uuid = Uuid::parse_str(id).map_err(|e| StoreError(e.to_string()))?;
                store.claim_escalation(uuid).await?
            }
            None => !self.is_escalated(id),
        };
        self.escalated
            .lock()
            .expect("votes lock")
            .insert(id.to_owned());
        Ok(mine)
    }

    /// Forgets holds that are no longer open.
    async fn retain(&self, open: &HashSet<String>) {
        self.votes
            .lock()
            .expect("votes lock")
            .retain(|id, _| open.contains(id));
        self.escalated
            .lock()
            .expect("votes lock")
            .retain(|id| open.contains(id));
        if let Some(store) = &self.shared
            && self
                .ticks
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(FORGET_EVERY)
            && let Err(e) = store.forget_closed().await
        {
            tracing::warn!("votes of closed holds not forgotten yet: {e}");
        }
    }
}

/// Who decides: the name people read (audit rows, events, the dashboard,
/// Slack), the stable identity votes count by, and the approver groups.
#[derive(Debug, Clone)]
pub struct Decider {
    pub name: String,
    /// [`token_voter`] or [`sso_voter`]; None for someone not signed in (a
    /// decision link's clicker, known only by the name they typed), who can
    /// decide but never vote toward `approvers: N`.
    pub voter: Option<String>,
    pub groups: Vec<String>,
}

impl Decider {
    /// The `[[approver]]` named `name`, with its configured groups.
    pub fn token(gw: &Gateway, name: &str) -> Decider {
        Decider {
            name: name.to_owned(),
            voter: Some(token_voter(name)),
            groups: gw.config.approver_groups(name).to_vec(),
        }
    }
}

/// The voter identity of a token approver: its config name, namespaced so
/// no single sign-on identity can equal it.
pub fn token_voter(name: &str) -> String {
    format!("token:{name}")
}

/// The voter identity of a single sign-on user: the provider (issuer) and
/// its stable subject, never the display claims a user may be able to edit.
pub fn sso_voter(issuer: &str, subject: &str) -> String {
    format!("oidc:{issuer}#{subject}")
}

/// What a human decision came to.
pub enum Decided {
    /// The hold ended (as [`hold::decide`] says).
    Final(Resolution),
    /// An approval counted; more distinct approvers are needed.
    Vote { approvals: Vec<String>, needed: u32 },
}

/// Why a human may not decide (before anything is recorded).
#[derive(Debug, thiserror::Error)]
pub enum QuorumError {
    #[error(
        "approver `{approver}` is not in a group allowed to decide calls of rule `{rule}` (allowed: {allowed})"
    )]
    NotInGroup {
        approver: String,
        rule: String,
        allowed: String,
    },
    #[error(
        "the definition of `{tool}` changed after this call was held (on_tool_change: {mode}); an admin must accept the new definition before it can be approved (it can still be denied)"
    )]
    ToolChanged { tool: String, mode: &'static str },
    #[error(
        "`{approver}` already approved this call; it needs {needed} different approvers ({have} so far)"
    )]
    SameApprover {
        approver: String,
        needed: u32,
        have: usize,
    },
    #[error(
        "`{approver}` is not signed in; this call needs {needed} approvers signed in by name, so nothing was counted"
    )]
    NotSignedIn { approver: String, needed: u32 },
    #[error(transparent)]
    Decide(#[from] DecideError),
}

/// The requirement of an open hold, from the policy in force.
pub fn requirement(gw: &Gateway, item: &PendingItem) -> (Quorum, String) {
    match gw.upstreams.get(&item.upstream) {
        Some(up) => {
            let policy = up.policy();
            let (_, rule) = policy.approval_for(&item.tool);
            (policy.quorum_for(&item.tool), rule.to_owned())
        }
        None => (Quorum::default(), item.rule.clone()),
    }
}

/// Whether deciding this open hold takes approvers known by name (several
/// approvers, or groups): an unauthenticated decision link cannot take part.
pub fn needs_named_approvers(gw: &Gateway, id: &str) -> bool {
    gw.holds.get(id).is_some_and(|item| {
        let (quorum, _) = requirement(gw, &item);
        quorum.approvers > 1 || !quorum.groups.is_empty()
    })
}

/// Whether an approver in groups `mine` may decide this hold now: in an
/// allowed group, or in the escalation group once it was called in.
pub fn may_decide(gw: &Gateway, id: &str, quorum: &Quorum, mine: &[String]) -> bool {
    if quorum.groups.is_empty() {
        return true;
    }
    let allowed = |g: &String| mine.contains(g);
    quorum.groups.iter().any(allowed)
        || (gw.votes.is_escalated(id) && quorum.escalate_to.as_ref().is_some_and(allowed))
}

/// A human's decision about a held call, from any channel, by the token
/// approver named `approver` (`[[approver]]`, with its groups); see
/// [`decide_as`].
pub async fn decide(
    gw: &Gateway,
    id: &str,
    choice: Choice,
    approver: &str,
    channel: &str,
    comment: Option<String>,
) -> Result<Decided, QuorumError> {
    decide_as(
        gw,
        id,
        choice,
        Decider::token(gw, approver),
        channel,
        comment,
    )
    .await
}

/// A human's decision about a held call by `who` (a single sign-on login's
/// groups come from the identity provider): checks the groups, counts
/// approvals by voter identity toward the rule's quorum, and decides once it
/// is reached (or at once on a deny).
pub async fn decide_as(
    gw: &Gateway,
    id: &str,
    choice: Choice,
    who: Decider,
    channel: &str,
    comment: Option<String>,
) -> Result<Decided, QuorumError> {
    let Decider {
        name,
        voter,
        groups,
    } = who;
    let decider = Some(name.clone());
    let Some(item) = open_hold(gw, id).await else {
        // Not open: the store answers (decided elsewhere: 409, unknown: 404).
        return Ok(Decided::Final(
            hold::decide(gw, id, choice, decider, channel, comment).await?,
        ));
    };
    let (quorum, rule) = requirement(gw, &item);
    if !may_decide(gw, id, &quorum, &groups) {
        let mut allowed = quorum.groups.clone();
        if let Some(to) = &quorum.escalate_to {
            allowed.push(format!(
                "{to} (after {} s)",
                quorum.escalate_after.map_or(0, |d| d.as_secs())
            ));
        }
        return Err(QuorumError::NotInGroup {
            approver: name,
            rule,
            allowed: allowed.join(", "),
        });
    }
    if choice == Choice::Approve && item.rule != crate::power::RULE {
        // Held under its own rule, then the server changed the tool: the
        // approver reviewed the call, not the new definition.
        if let Some(up) = gw.upstreams.get(&item.upstream)
            && gw.pins.is_changed(&item.upstream, &item.tool)
        {
            let mode = up.policy().on_tool_change(&item.tool);
            if mode != crate::policy::OnToolChange::Warn {
                return Err(QuorumError::ToolChanged {
                    tool: item.tool.clone(),
                    mode: mode.as_str(),
                });
            }
        }
    }
    if choice == Choice::Deny || quorum.approvers <= 1 {
        return Ok(Decided::Final(
            hold::decide(gw, id, choice, decider, channel, comment).await?,
        ));
    }
    let needed = quorum.approvers;
    // Checked before anything else too (`needs_named_approvers`); here the
    // policy in force decides, should it have changed in between.
    let Some(voter) = voter else {
        return Err(QuorumError::NotSignedIn {
            approver: name,
            needed,
        });
    };
    let approvals = match gw.votes.count(id, &voter, &name, channel, needed).await? {
        Counted::Again(so_far) => {
            return Err(QuorumError::SameApprover {
                approver: name,
                needed,
                have: so_far.len(),
            });
        }
        // Decided meanwhile: the store names the winner (409).
        Counted::Closed => {
            return Ok(Decided::Final(
                hold::decide(gw, id, choice, decider, channel, comment).await?,
            ));
        }
        Counted::Complete(so_far) => {
            return complete_elsewhere(gw, id, so_far, needed, decider, channel).await;
        }
        Counted::Vote(so_far) => so_far,
    };
    if approvals.len() < needed as usize {
        record_vote(gw, &item, &name, channel, comment, &approvals, needed).await;
        return Ok(Decided::Vote { approvals, needed });
    }
    // The last vote: the approval names everyone who approved.
    let together = format!(
        "approved by {} ({} of {needed})",
        approvals.join(", "),
        approvals.len()
    );
    let comment = Some(match comment {
        Some(c) if !c.trim().is_empty() => format!("{c} — {together}"),
        _ => together,
    });
    Ok(Decided::Final(
        hold::decide(gw, id, Choice::Approve, decider, channel, comment).await?,
    ))
}

/// An approval that found the count already complete: another approver's
/// vote completed it and is deciding. Answers with that decision (409, as
/// for any decided call) once it lands; if it does not land within
/// [`COMPLETE_WAIT`] (the completing replica died in between), decides the
/// approval the votes already make.
async fn complete_elsewhere(
    gw: &Gateway,
    id: &str,
    approvals: Vec<String>,
    needed: u32,
    decider: Option<String>,
    channel: &str,
) -> Result<Decided, QuorumError> {
    if let Ok(uuid) = Uuid::parse_str(id)
        && let Ok(Ok(winner)) = tokio::time::timeout(COMPLETE_WAIT, gw.approvals.wait(uuid)).await
    {
        return Err(QuorumError::Decide(DecideError::AlreadyDecided(Box::new(
            winner,
        ))));
    }
    let comment = format!(
        "approved by {} ({} of {needed}; completed by {})",
        approvals.join(", "),
        approvals.len(),
        decider.as_deref().unwrap_or("?")
    );
    Ok(Decided::Final(
        hold::decide(gw, id, Choice::Approve, decider, channel, Some(comment)).await?,
    ))
}

/// The open hold `id`: from this replica's view, else from the store (a
/// hold created on another replica a moment ago may not have reached the
/// view yet; deciding it must still count toward its quorum).
async fn open_hold(gw: &Gateway, id: &str) -> Option<PendingItem> {
    if let Some(item) = gw.holds.get(id) {
        return Some(item);
    }
    let uuid = Uuid::parse_str(id).ok()?;
    match gw.approvals.get(uuid).await {
        Ok(Some(stored)) if stored.resolution.is_none() => Some(PendingItem::of(&stored.approval)),
        _ => None,
    }
}

async fn record_vote(
    gw: &Gateway,
    item: &PendingItem,
    approver: &str,
    channel: &str,
    comment: Option<String>,
    approvals: &[String],
    needed: u32,
) {
    gw.audit
        .record(Record {
            decision: "approval.vote",
            session: Some(item.session.clone()),
            agent: Some(item.agent.clone()),
            upstream: Some(item.upstream.clone()),
            tool: Some(item.tool.clone()),
            rule: Some(item.rule.clone()),
            pending_id: Some(item.id.clone()),
            decider: Some(approver.to_owned()),
            channel: Some(channel.to_owned()),
            comment,
            reason: Some(format!("{} of {needed} approvals", approvals.len())),
            ..Default::default()
        })
        .await;
    gw.events.publish(
        "pending.approval",
        json!({ "id": item.id, "tool": item.tool, "approvals": approvals, "needed": needed, "by": approver }),
    );
    gw.notify_vote(item, approvals, needed);
}

/// Each open hold's requirement and progress, for the dashboard: how many
/// approvals it needs and has, which groups may decide, whether it was
/// escalated, whether `who` may decide it, and whether `who` (by voter
/// identity, not name) already approved it.
pub async fn overview(gw: &Gateway, who: &Decider) -> Value {
    let items = gw.holds.list();
    let ids: Vec<String> = items.iter().map(|i| i.id.clone()).collect();
    let mut votes = gw.votes.ballots(&ids).await;
    let mut out = serde_json::Map::new();
    for item in items {
        let (quorum, rule) = requirement(gw, &item);
        let ballots = votes.remove(&item.id).unwrap_or_default();
        let you_approved = who
            .voter
            .as_deref()
            .is_some_and(|voter| ballots.iter().any(|b| b.is_by(voter, &who.name)));
        let approvals: Vec<String> = ballots.into_iter().map(|b| b.name).collect();
        out.insert(
            item.id.clone(),
            json!({
                "rule": rule,
                "needed": quorum.approvers,
                "approvals": approvals,
                "you_approved": you_approved,
                "groups": quorum.groups,
                "escalate_to": quorum.escalate_to,
                "escalated": gw.votes.is_escalated(&item.id),
                "may_decide": may_decide(gw, &item.id, &quorum, &who.groups),
            }),
        );
    }
    Value::Object(out)
}

/// Escalates holds nobody decided within their rule's `escalate_after`
/// (once each), and forgets the votes of holds that ended. Called by the
/// background task in `power`.
pub async fn tick(gw: &Gateway) {
    let items = gw.holds.list();
    let open: HashSet<String> = items.iter().map(|i| i.id.clone()).collect();
    gw.votes.retain(&open).await;
    let now = Utc::now();
    for item in items {
        let (quorum, _) = requirement(gw, &item);
        let (Some(after), Some(to)) = (quorum.escalate_after, quorum.escalate_to.as_ref()) else {
            continue;
        };
        let Ok(created) = DateTime::parse_from_rfc3339(&item.created_at) else {
            continue;
        };
        let due = created.with_timezone(&Utc)
            + chrono::Duration::from_std(after).unwrap_or(chrono::Duration::zero());
        if now < due || gw.votes.is_escalated(&item.id) {
            continue;
        }
        match gw.votes.claim_escalation(&item.id).await {
            Ok(true) => {}
            Ok(false) => continue, // another replica announces it
            Err(e) => {
                tracing::warn!(pending = %item.id, "escalation not claimed yet: {e}");
                continue;
            }
        }
        let members: Vec<String> = gw
            .config
            .group_members(to)
            .iter()
            .map(|c| c.name.clone())
            .collect();
        tracing::warn!(pending = %item.id, tool = %item.tool, group = %to,
            "nobody decided within {} s: escalated", after.as_secs());
        gw.audit
            .record(Record {
                decision: "approval.escalated",
                session: Some(item.session.clone()),
                agent: Some(item.agent.clone()),
                upstream: Some(item.upstream.clone()),
                tool: Some(item.tool.clone()),
                rule: Some(item.rule.clone()),
                pending_id: Some(item.id.clone()),
                reason: Some(format!(
                    "no decision within {} s: escalated to group {to} ({})",
                    after.as_secs(),
                    if members.is_empty() {
                        "no members".to_owned()
                    } else {
                        members.join(", ")
                    }
                )),
                ..Default::default()
            })
            .await;
        gw.events.publish(
            "pending.escalated",
            json!({ "id": item.id, "tool": item.tool, "to": to, "members": members, "after_s": after.as_secs() }),
        );
        gw.notify_escalated(&item, to, after.as_secs());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The in-memory votes (no `[store]`) count by voter, not by name.
    #[tokio::test]
    async fn votes_in_memory_count_by_voter_identity() {
        let votes = Votes::default();
        let name = "alice@example.com (oidc)";
        let count = |voter: &'static str, name: &'static str| {
            votes.count("h1", voter, name, "dashboard", 2)
        };
        assert_eq!(
            count("oidc:https://idp#1", name).await.unwrap(),
            Counted::Vote(vec![name.into()])
        );
        assert_eq!(
            count("oidc:https://idp#1", "renamed@example.com (oidc)")
                .await
                .unwrap(),
            Counted::Again(vec![name.into()]),
            "one account under a new name"
        );
        assert_eq!(
            count("oidc:https://idp#2", name).await.unwrap(),
            Counted::Vote(vec![name.into(), name.into()]),
            "another account under the same name"
        );
        let stored = votes.ballots(&["h1".to_owned()]).await;
        let kept: Vec<(&str, &str)> = stored["h1"]
            .iter()
            .map(|b| (b.voter.as_str(), b.name.as_str()))
            .collect();
        assert_eq!(
            kept,
            [("oidc:https://idp#1", name), ("oidc:https://idp#2", name)]
        );
    }

    #[test]
    fn token_and_sso_voters_live_in_separate_namespaces() {
        assert_eq!(token_voter("alice@example.com"), "token:alice@example.com");
        assert_eq!(
            sso_voter("https://idp.example.com", "alice@example.com"),
            "oidc:https://idp.example.com#alice@example.com"
        );
        assert_ne!(
            token_voter("alice@example.com"),
            sso_voter("https://idp.example.com", "alice@example.com")
        );
    }
}
