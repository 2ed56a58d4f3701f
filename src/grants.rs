//! Standing approvals ("approve for a while").
//!
//! An approver who approves a held call may also grant: "this tool, on this
//! upstream, for this agent (or this agent session), for N minutes,
//! optionally only with these exact arguments". Later calls that the policy
//! would hold and that the grant covers pass without a hold; each is audited
//! (`granted`) with the grant's id. A grant ends when it expires, when an
//! approver revokes it, or when a policy reload no longer holds the tool
//! under the same rule or caps grants below its length
//! ([`Grants::retain_allowed`]).
//!
//! Grants are kept in memory by the replica that holds the call: a restart
//! ends them (the safe direction), and replicas sharing a PostgreSQL store do
//! not share them (see `docs/approvals.md`).

use std::sync::Mutex;

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::policy::Policy;

/// Whom a grant covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Every session of the agent (configured agent name, else `clientInfo`).
    Agent,
    /// Only the agent session of the approved call.
    Session,
}

/// What an approver asks for with an approval (`"grant"` in the decide body).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantRequest {
    /// May be fractional (`0.5`: 30 s); rounded up to whole seconds.
    pub minutes: f64,
    #[serde(default = "agent_scope")]
    pub scope: Scope,
    #[serde(default)]
    pub exact_arguments: bool,
}

impl GrantRequest {
    /// The length asked for, in whole seconds (rounded up).
    pub fn seconds(&self) -> u64 {
        (self.minutes * 60.0).ceil().min(u64::MAX as f64) as u64
    }
}

fn agent_scope() -> Scope {
    Scope::Agent
}

/// One standing approval.
#[derive(Debug, Clone, Serialize)]
pub struct Grant {
    pub id: String,
    pub upstream: String,
    pub tool: String,
    /// The key of the policy rule that held the approved call (`default` …).
    pub rule: String,
    pub scope: Scope,
    pub agent: String,
    /// Set for `scope: session`.
    pub session: Option<String>,
    /// Set when only the exact arguments are covered (their canonical hash).
    pub args_hash: Option<String>,
    /// The approved call's arguments, for people reading the list.
    pub arguments: Option<Value>,
    pub granted_by: String,
    /// The held call whose approval created it.
    pub pending_id: String,
    #[serde(serialize_with = "rfc3339")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "rfc3339")]
    pub expires_at: DateTime<Utc>,
}

fn rfc3339<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

impl Grant {
    /// Length in seconds as granted.
    pub fn seconds(&self) -> i64 {
        (self.expires_at - self.created_at).num_seconds()
    }

    fn covers(&self, call: &Call<'_>, now: DateTime<Utc>) -> bool {
        self.expires_at > now
            && self.upstream == call.upstream
            && self.tool == call.tool
            && self.agent == call.agent
            && self.session.as_deref().is_none_or(|s| s == call.session)
            && self
                .args_hash
                .as_deref()
                .is_none_or(|h| h == crate::hold::hash_arguments(call.arguments))
    }
}

/// The call a grant may cover.
pub struct Call<'a> {
    pub upstream: &'a str,
    pub tool: &'a str,
    pub agent: &'a str,
    pub session: &'a str,
    pub arguments: Option<&'a str>,
}

/// Why a grant cannot be given.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum GrantError {
    #[error(
        "the policy rule `{rule}` needs {needed} approvers for each call (approval.approvers), so no single approver may grant standing approvals"
    )]
    SeveralApprovers { rule: String, needed: u32 },
    #[error("grant.minutes must be a number of minutes above 0, got {0}")]
    Zero(f64),
    #[error("the policy rule `{rule}` does not allow grants (approval.max_grant is 0)")]
    Forbidden { rule: String },
    #[error(
        "a grant of {minutes} minutes is longer than the policy rule `{rule}` allows (approval.max_grant = {cap} s)"
    )]
    TooLong {
        rule: String,
        minutes: f64,
        cap: u64,
    },
}

/// Checks a requested grant against the policy in force for the tool.
/// Returns the key of the rule that governs it.
pub fn check(policy: &Policy, tool: &str, request: &GrantRequest) -> Result<String, GrantError> {
    let (approval, rule) = policy.approval_for(tool);
    let cap = approval.grant_cap();
    if cap == 0 {
        return Err(GrantError::Forbidden {
            rule: rule.to_owned(),
        });
    }
    // One approver's grant would let later calls skip the second person.
    let needed = policy.quorum_for(tool).approvers;
    if needed > 1 {
        return Err(GrantError::SeveralApprovers {
            rule: rule.to_owned(),
            needed,
        });
    }
    if !request.minutes.is_finite() || request.minutes <= 0.0 {
        return Err(GrantError::Zero(request.minutes));
    }
    if request.seconds() > cap {
        return Err(GrantError::TooLong {
            rule: rule.to_owned(),
            minutes: request.minutes,
            cap,
        });
    }
    Ok(rule.to_owned())
}

/// Every live grant of this replica.
#[derive(Default)]
pub struct Grants(Mutex<Vec<Grant>>);

impl Grants {
    pub fn add(&self, grant: Grant) {
        self.0.lock().expect("grants lock").push(grant);
    }

    /// The grant that covers this call, if any (expired grants never do).
    pub fn find(&self, call: &Call<'_>) -> Option<Grant> {
        let now = Utc::now();
        let grants = self.0.lock().expect("grants lock");
        grants.iter().find(|g| g.covers(call, now)).cloned()
    }

    /// Live grants, soonest to expire first.
    pub fn list(&self) -> Vec<Grant> {
        let now = Utc::now();
        let mut out: Vec<Grant> = self
            .0
            .lock()
            .expect("grants lock")
            .iter()
            .filter(|g| g.expires_at > now)
            .cloned()
            .collect();
        out.sort_by_key(|g| g.expires_at);
        out
    }

    /// Ends a grant now; None when no live grant has this id.
    pub fn revoke(&self, id: &str) -> Option<Grant> {
        let now = Utc::now();
        let mut grants = self.0.lock().expect("grants lock");
        let at = grants
            .iter()
            .position(|g| g.id == id && g.expires_at > now)?;
        Some(grants.remove(at))
    }

    /// Removes and returns the grants that have expired.
    pub fn take_expired(&self) -> Vec<Grant> {
        let now = Utc::now();
        self.take(|g| g.expires_at <= now)
    }

    /// After a reload of `upstream`'s policy: removes and returns the grants
    /// the new policy no longer allows (the tool is no longer held under the
    /// same rule, or grants there are capped below the grant's length).
    pub fn retain_allowed(&self, upstream: &str, policy: &Policy) -> Vec<Grant> {
        self.take(|g| {
            if g.upstream != upstream {
                return false;
            }
            let (approval, rule) = policy.approval_for(&g.tool);
            !policy.may_hold(&g.tool)
                || rule != g.rule
                || policy.quorum_for(&g.tool).approvers > 1
                || u64::try_from(g.seconds()).unwrap_or(u64::MAX) > approval.grant_cap()
        })
    }

    fn take(&self, mut gone: impl FnMut(&Grant) -> bool) -> Vec<Grant> {
        let mut grants = self.0.lock().expect("grants lock");
        let mut ended = Vec::new();
        grants.retain(|g| {
            if gone(g) {
                ended.push(g.clone());
                false
            } else {
                true
            }
        });
        ended
    }
}

/// A new grant for an approved held call.
pub fn new_grant(
    item: &crate::hold::PendingItem,
    request: &GrantRequest,
    rule: String,
    granted_by: &str,
) -> Grant {
    let now = Utc::now();
    let seconds = i64::try_from(request.seconds()).unwrap_or(i64::MAX / 2000);
    let raw = item.arguments.to_string();
    let exact = request.exact_arguments;
    Grant {
        id: format!("grant-{}", uuid::Uuid::now_v7()),
        upstream: item.upstream.clone(),
        tool: item.tool.clone(),
        rule,
        scope: request.scope,
        agent: item.agent.clone(),
        session: (request.scope == Scope::Session).then(|| item.session.clone()),
        args_hash: exact.then(|| {
            crate::hold::hash_arguments((!item.arguments.is_null()).then_some(raw.as_str()))
        }),
        arguments: exact.then(|| item.arguments.clone()),
        granted_by: granted_by.to_owned(),
        pending_id: item.id.clone(),
        created_at: now,
        expires_at: now + Duration::seconds(seconds),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::parse_str;

    fn policy(max: &str) -> Policy {
        parse_str(
            &format!(
                r#"{{"version":"1","default":"deny","rules":{{"pay":{{"action":"require_approval","approval":{{{max}}}}}}}}}"#
            ),
            "t.json",
        )
        .unwrap()
    }

    fn request(minutes: f64) -> GrantRequest {
        GrantRequest {
            minutes,
            scope: Scope::Agent,
            exact_arguments: false,
        }
    }

    #[test]
    fn the_rule_caps_or_forbids_grants() {
        let capped = policy(r#""max_grant": 900"#);
        assert_eq!(check(&capped, "pay", &request(15.0)), Ok("pay".into()));
        assert!(matches!(
            check(&capped, "pay", &request(16.0)),
            Err(GrantError::TooLong { cap: 900, .. })
        ));
        assert!(matches!(
            check(&policy(r#""max_grant": 0"#), "pay", &request(1.0)),
            Err(GrantError::Forbidden { .. })
        ));
        assert_eq!(
            check(&policy(""), "pay", &request(0.0)),
            Err(GrantError::Zero(0.0))
        );
        assert!(check(&policy(""), "pay", &request(1440.0)).is_ok());
        assert!(check(&policy(""), "pay", &request(1440.5)).is_err());
        assert!(matches!(
            check(&policy(r#""approvers": 2"#), "pay", &request(1.0)),
            Err(GrantError::SeveralApprovers { needed: 2, .. })
        ));
    }

    #[test]
    fn a_grant_covers_only_its_scope_and_arguments() {
        let grants = Grants::default();
        let now = Utc::now();
        let grant = || Grant {
            id: "g1".into(),
            upstream: "up".into(),
            tool: "pay".into(),
            rule: "pay".into(),
            scope: Scope::Session,
            agent: "bot".into(),
            session: Some("s1".into()),
            args_hash: Some(crate::hold::hash_arguments(Some(r#"{"a":1,"b":2}"#))),
            arguments: None,
            granted_by: "alice".into(),
            pending_id: "p".into(),
            created_at: now,
            expires_at: now + Duration::minutes(5),
        };
        grants.add(grant());
        let call = |session, args| Call {
            upstream: "up",
            tool: "pay",
            agent: "bot",
            session,
            arguments: Some(args),
        };
        assert!(grants.find(&call("s1", r#"{"b":2, "a":1}"#)).is_some());
        assert!(grants.find(&call("s1", r#"{"a":2,"b":2}"#)).is_none());
        assert!(grants.find(&call("s2", r#"{"a":1,"b":2}"#)).is_none());
        let two_person = policy(r#""approvers": 2"#);
        assert_eq!(grants.retain_allowed("up", &two_person).len(), 1);
        assert!(grants.list().is_empty());
        grants.add(grant());
        let narrower = policy(r#""max_grant": 60"#);
        assert_eq!(grants.retain_allowed("up", &narrower).len(), 1);
        assert!(grants.list().is_empty());
    }
}
