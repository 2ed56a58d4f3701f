//! Who may decide a held call, and how many must approve: the two-person
//! rule, approver groups and escalation (`approval.approvers`, `groups`,
//! `escalate_after`, `escalate_to` of a policy rule).
//!
//! Every human decision (API, dashboard, CLI, Slack) goes through
//! [`decide`]. A deny ends the hold at once. An approval of a rule that needs
//! N distinct approvers is a *vote* (audit row `approval.vote`, event
//! `pending.approval`) until the N-th distinct approver's vote, which becomes
//! the approval in [`crate::hold::decide`] — whose compare-and-set in the
//! approvals store keeps it exactly-once when two approvers race for the last
//! vote. Votes live in the memory of the replica that took them.
//!
//! The requirement is read from the policy in force when the decision is
//! made (the rule that governs the tool now).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::audit::Record;
use crate::gateway::Gateway;
use crate::hold::{self, Choice, DecideError, PendingItem, Resolution};
use crate::policy::Quorum;

/// Votes and escalations of open holds, by pending id.
#[derive(Default)]
pub struct Votes {
    votes: Mutex<HashMap<String, Vec<Vote>>>,
    escalated: Mutex<HashSet<String>>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Vote {
    pub approver: String,
    pub channel: String,
    #[serde(serialize_with = "rfc3339")]
    pub at: DateTime<Utc>,
}

fn rfc3339<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

impl Votes {
    fn approvers(&self, id: &str) -> Vec<String> {
        let votes = self.votes.lock().expect("votes lock");
        votes
            .get(id)
            .map(|v| v.iter().map(|v| v.approver.clone()).collect())
            .unwrap_or_default()
    }

    fn is_escalated(&self, id: &str) -> bool {
        self.escalated.lock().expect("votes lock").contains(id)
    }

    /// Forgets holds that are no longer open.
    fn retain(&self, open: &HashSet<String>) {
        self.votes
            .lock()
            .expect("votes lock")
            .retain(|id, _| open.contains(id));
        self.escalated
            .lock()
            .expect("votes lock")
            .retain(|id| open.contains(id));
    }
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

/// A human's decision about a held call, from any channel, by an approver
/// whose groups are configured (`[[approver]] groups`); see [`decide_as`].
pub async fn decide(
    gw: &Gateway,
    id: &str,
    choice: Choice,
    decider: Option<String>,
    channel: &str,
    comment: Option<String>,
) -> Result<Decided, QuorumError> {
    let groups = decider
        .as_deref()
        .map(|name| gw.config.approver_groups(name).to_vec())
        .unwrap_or_default();
    decide_as(gw, id, choice, decider, &groups, channel, comment).await
}

/// A human's decision about a held call by an approver in `groups` (a
/// single sign-on login's groups come from the identity provider): checks
/// the groups, counts approvals toward the rule's quorum, and decides once it
/// is reached (or at once on a deny).
pub async fn decide_as(
    gw: &Gateway,
    id: &str,
    choice: Choice,
    decider: Option<String>,
    groups: &[String],
    channel: &str,
    comment: Option<String>,
) -> Result<Decided, QuorumError> {
    let Some(item) = gw.holds.get(id) else {
        // Not open here: the store answers (decided elsewhere: 409, unknown: 404).
        return Ok(Decided::Final(
            hold::decide(gw, id, choice, decider, channel, comment).await?,
        ));
    };
    let (quorum, rule) = requirement(gw, &item);
    let name = decider.clone().unwrap_or_default();
    if !may_decide(gw, id, &quorum, groups) {
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
    let approvals = {
        let mut votes = gw.votes.votes.lock().expect("votes lock");
        let list = votes.entry(id.to_owned()).or_default();
        if list.iter().any(|v| v.approver == name) {
            return Err(QuorumError::SameApprover {
                approver: name,
                needed,
                have: list.len(),
            });
        }
        list.push(Vote {
            approver: name.clone(),
            channel: channel.to_owned(),
            at: Utc::now(),
        });
        list.iter().map(|v| v.approver.clone()).collect::<Vec<_>>()
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
/// escalated, and whether an approver in `groups` may decide it.
pub fn overview(gw: &Gateway, groups: &[String]) -> Value {
    let mut out = serde_json::Map::new();
    for item in gw.holds.list() {
        let (quorum, rule) = requirement(gw, &item);
        out.insert(
            item.id.clone(),
            json!({
                "rule": rule,
                "needed": quorum.approvers,
                "approvals": gw.votes.approvers(&item.id),
                "groups": quorum.groups,
                "escalate_to": quorum.escalate_to,
                "escalated": gw.votes.is_escalated(&item.id),
                "may_decide": may_decide(gw, &item.id, &quorum, groups),
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
    gw.votes.retain(&open);
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
        if now < due
            || !gw
                .votes
                .escalated
                .lock()
                .expect("votes lock")
                .insert(item.id.clone())
        {
            continue;
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
