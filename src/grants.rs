//! Standing approvals ("approve for a while").
//!
//! An approver who approves a held call may also grant: "this tool, on this
//! upstream, for this agent (or this agent session), for N minutes,
//! optionally only with these exact arguments". Later calls that the policy
//! would hold *under the same rule label* (the rule, and the `when` branch
//! that held the approved call) and that the grant covers pass without a
//! hold; each is audited (`granted`) with the grant's id. A grant ends when
//! it expires, when an approver revokes it, or when a policy reload no
//! longer holds the tool under that label or caps grants below its length
//! ([`Grants::retain_allowed`]).
//!
//! Without `[store]`, grants live in memory: a restart ends them (the safe
//! direction). With `[store] url` they are rows in PostgreSQL
//! ([`crate::power_store`]) shared by every replica: each keeps a mirror of
//! the table for the call path (no query per call), re-read on every change
//! (`NOTIFY`) and every heartbeat. A mirror that could not be re-read for
//! `[store] lease` covers nothing, so a revocation reaches every replica
//! within milliseconds normally, one heartbeat when a notification is lost,
//! and at worst one lease for a replica cut off from the database.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Duration, SecondsFormat, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::approvals::StoreError;
use crate::policy::Policy;
use crate::power_store::SharedPower;

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
    /// The rule label of the approved call's hold: the rule's key, plus the
    /// `when` branch that held it (`pay[when 1: args.amount lt 100]`).
    /// Only calls held under the same label are covered.
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
            && self.rule == call.rule
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
    /// The rule label the policy holds this call under.
    pub rule: &'a str,
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
    #[error(
        "the policy in force no longer holds `{tool}` under `{label}` (the rule or its branch changed since the call was held): approve without a grant"
    )]
    LabelGone { tool: String, label: String },
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

/// Checks a requested grant against the policy in force for the tool, for
/// a call held under rule label `label`.
pub fn check(
    policy: &Policy,
    tool: &str,
    label: &str,
    request: &GrantRequest,
) -> Result<(), GrantError> {
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
    if !policy.holds_under(tool, label) {
        return Err(GrantError::LabelGone {
            tool: tool.to_owned(),
            label: label.to_owned(),
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
    Ok(())
}

/// Every live grant: this process's (memory), or the mirror of the shared
/// table (`[store] url`).
#[derive(Default)]
pub struct Grants {
    /// What the call path reads. A std `Mutex`: held for a scan, never across `.await`.
    live: Mutex<Mirror>,
    /// None: in memory only.
    shared: Option<Shared>,
}

#[derive(Default)]
struct Mirror {
    grants: Vec<Grant>,
    /// Shared mode: ids this replica ended, with their expiry, so that a
    /// table read that started before the end cannot bring them back.
    ended: HashMap<String, DateTime<Utc>>,
    /// Shared mode: when the table was last read.
    read_at: Option<Instant>,
}

struct Shared {
    store: Arc<SharedPower>,
    /// A mirror older than this covers nothing (`[store] lease`).
    stale_after: StdDuration,
}

impl Grants {
    /// Grants kept in PostgreSQL, mirrored here; `stale_after`: how old the
    /// mirror may get before it covers nothing.
    pub fn shared(store: Arc<SharedPower>, stale_after: StdDuration) -> Grants {
        Grants {
            live: Mutex::default(),
            shared: Some(Shared { store, stale_after }),
        }
    }

    fn mirror(&self) -> std::sync::MutexGuard<'_, Mirror> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a new grant (in the shared table first, when there is one).
    pub async fn add(&self, grant: Grant) -> Result<(), StoreError> {
        if let Some(shared) = &self.shared {
            shared.store.add_grant(&grant).await?;
        }
        self.mirror().grants.push(grant);
        Ok(())
    }

    /// The grant that covers this call, if any (expired grants never do,
    /// nor a shared mirror too old to trust).
    pub fn find(&self, call: &Call<'_>) -> Option<Grant> {
        let now = Utc::now();
        let mirror = self.mirror();
        if let Some(shared) = &self.shared
            && mirror
                .read_at
                .is_none_or(|at| at.elapsed() > shared.stale_after)
        {
            return None;
        }
        mirror.grants.iter().find(|g| g.covers(call, now)).cloned()
    }

    /// Shared mode: how long ago the table was last read (None in memory,
    /// or before the first read).
    pub fn mirror_age(&self) -> Option<StdDuration> {
        self.shared.as_ref()?;
        self.mirror().read_at.map(|at| at.elapsed())
    }

    /// Whether some grant here has expired (and is to be ended).
    pub fn has_expired(&self) -> bool {
        let now = Utc::now();
        self.mirror().grants.iter().any(|g| g.expires_at <= now)
    }

    /// Live grants, soonest to expire first.
    pub fn list(&self) -> Vec<Grant> {
        let now = Utc::now();
        let mut out: Vec<Grant> = self
            .mirror()
            .grants
            .iter()
            .filter(|g| g.expires_at > now)
            .cloned()
            .collect();
        out.sort_by_key(|g| g.expires_at);
        out
    }

    /// Ends a grant now; None when no live grant has this id (on any replica).
    pub async fn revoke(&self, id: &str) -> Result<Option<Grant>, StoreError> {
        let now = Utc::now();
        if let Some(shared) = &self.shared {
            let gone = shared.store.revoke_grant(id, now).await?;
            self.forget(gone.iter());
            return Ok(gone);
        }
        let mut mirror = self.mirror();
        let Some(at) = mirror
            .grants
            .iter()
            .position(|g| g.id == id && g.expires_at > now)
        else {
            return Ok(None);
        };
        Ok(Some(mirror.grants.remove(at)))
    }

    /// Removes and returns the grants that have expired (shared: those this
    /// replica was the one to remove from the table).
    pub async fn take_expired(&self) -> Result<Vec<Grant>, StoreError> {
        let now = Utc::now();
        if let Some(shared) = &self.shared {
            let gone = shared.store.take_expired_grants(now).await?;
            self.forget(gone.iter());
            self.mirror().grants.retain(|g| g.expires_at > now);
            return Ok(gone);
        }
        Ok(self.take(|g| g.expires_at <= now))
    }

    /// After a reload of `upstream`'s policy: removes and returns the grants
    /// the new policy no longer allows (the tool is no longer held under the
    /// grant's rule label, or grants there are capped below the grant's
    /// length, or the rule now needs several approvers).
    pub async fn retain_allowed(
        &self,
        upstream: &str,
        policy: &Policy,
    ) -> Result<Vec<Grant>, StoreError> {
        let gone = |g: &Grant| {
            if g.upstream != upstream {
                return false;
            }
            let (approval, _) = policy.approval_for(&g.tool);
            !policy.holds_under(&g.tool, &g.rule)
                || policy.quorum_for(&g.tool).approvers > 1
                || u64::try_from(g.seconds()).unwrap_or(u64::MAX) > approval.grant_cap()
        };
        let Some(shared) = &self.shared else {
            return Ok(self.take(gone));
        };
        let all = shared.store.grants().await?;
        let ids: Vec<String> = all
            .iter()
            .filter(|g| gone(g))
            .map(|g| g.id.clone())
            .collect();
        let ended = shared.store.end_grants(&ids).await?;
        self.forget(ended.iter());
        Ok(ended)
    }

    /// Shared mode: re-reads the table into the mirror (the call path's
    /// view). In memory: nothing to do.
    pub async fn refresh(&self) -> Result<(), StoreError> {
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        let started = Instant::now();
        let all = shared.store.grants().await?;
        let now = Utc::now();
        let mut mirror = self.mirror();
        mirror.ended.retain(|_, until| *until > now);
        let ended = std::mem::take(&mut mirror.ended);
        mirror.grants = all
            .into_iter()
            .filter(|g| !ended.contains_key(&g.id))
            .collect();
        mirror.ended = ended;
        // Fresh as of when the read started, not when it ended.
        mirror.read_at = Some(started);
        Ok(())
    }

    fn forget<'a>(&self, gone: impl Iterator<Item = &'a Grant>) {
        let mut mirror = self.mirror();
        for g in gone {
            mirror.ended.insert(g.id.clone(), g.expires_at);
            mirror.grants.retain(|m| m.id != g.id);
        }
    }

    fn take(&self, mut gone: impl FnMut(&Grant) -> bool) -> Vec<Grant> {
        let mut mirror = self.mirror();
        let mut ended = Vec::new();
        mirror.grants.retain(|g| {
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

/// A new grant for an approved held call; it covers calls held under the
/// same rule label as `item` (`item.rule`).
pub fn new_grant(
    item: &crate::hold::PendingItem,
    request: &GrantRequest,
    granted_by: &str,
) -> Grant {
    let now = Utc::now().trunc_subsecs(6);
    let seconds = i64::try_from(request.seconds()).unwrap_or(i64::MAX / 2000);
    let raw = item.arguments.to_string();
    let exact = request.exact_arguments;
    Grant {
        id: format!("grant-{}", uuid::Uuid::now_v7()),
        upstream: item.upstream.clone(),
        tool: item.tool.clone(),
        rule: item.rule.clone(),
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

    /// `pay` held by one of two branches (small and large amounts).
    fn branched(large: &str) -> Policy {
        parse_str(
            &format!(
                r#"{{"version":"1","default":"deny","rules":{{"pay":{{"action":"allow","when":[
                {{"if":[{{"path":"args.amount","op":"lt","value":100}}],"action":"require_approval","reason":"small"}},
                {{"if":[{{"path":"args.amount","op":"gte","value":{large}}}],"action":"require_approval","reason":"large"}}]}}}}}}"#
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

    fn grant(rule: &str) -> Grant {
        let now = Utc::now();
        Grant {
            id: "g1".into(),
            upstream: "up".into(),
            tool: "pay".into(),
            rule: rule.into(),
            scope: Scope::Session,
            agent: "bot".into(),
            session: Some("s1".into()),
            args_hash: Some(crate::hold::hash_arguments(Some(r#"{"a":1,"b":2}"#))),
            arguments: None,
            granted_by: "alice".into(),
            pending_id: "p".into(),
            created_at: now,
            expires_at: now + Duration::minutes(5),
        }
    }

    /// The label the gate holds a call to `pay` with these arguments under.
    fn label(policy: &Policy, args: &str) -> String {
        let facts = crate::policy::Facts::new("pay", Some(args), "bot", "up", "s1");
        match crate::gate::decide_call(policy, &facts) {
            crate::gate::CallDecision::NeedsApproval { rule, .. } => rule,
            _ => panic!("not held: {args}"),
        }
    }

    #[test]
    fn the_rule_caps_or_forbids_grants() {
        let capped = policy(r#""max_grant": 900"#);
        assert_eq!(check(&capped, "pay", "pay", &request(15.0)), Ok(()));
        assert!(matches!(
            check(&capped, "pay", "pay", &request(16.0)),
            Err(GrantError::TooLong { cap: 900, .. })
        ));
        assert!(matches!(
            check(&policy(r#""max_grant": 0"#), "pay", "pay", &request(1.0)),
            Err(GrantError::Forbidden { .. })
        ));
        assert_eq!(
            check(&policy(""), "pay", "pay", &request(0.0)),
            Err(GrantError::Zero(0.0))
        );
        assert!(check(&policy(""), "pay", "pay", &request(1440.0)).is_ok());
        assert!(check(&policy(""), "pay", "pay", &request(1440.5)).is_err());
        assert!(matches!(
            check(&policy(r#""approvers": 2"#), "pay", "pay", &request(1.0)),
            Err(GrantError::SeveralApprovers { needed: 2, .. })
        ));
        assert!(matches!(
            check(&policy(""), "pay", "pay[when 1: gone]", &request(1.0)),
            Err(GrantError::LabelGone { .. })
        ));
    }

    #[tokio::test]
    async fn a_grant_covers_only_its_scope_and_arguments() {
        let grants = Grants::default();
        grants.add(grant("pay")).await.unwrap();
        let call = |session, args| Call {
            upstream: "up",
            tool: "pay",
            rule: "pay",
            agent: "bot",
            session,
            arguments: Some(args),
        };
        assert!(grants.find(&call("s1", r#"{"b":2, "a":1}"#)).is_some());
        assert!(grants.find(&call("s1", r#"{"a":2,"b":2}"#)).is_none());
        assert!(grants.find(&call("s2", r#"{"a":1,"b":2}"#)).is_none());
        let two_person = policy(r#""approvers": 2"#);
        assert_eq!(
            grants
                .retain_allowed("up", &two_person)
                .await
                .unwrap()
                .len(),
            1
        );
        assert!(grants.list().is_empty());
        grants.add(grant("pay")).await.unwrap();
        let narrower = policy(r#""max_grant": 60"#);
        assert_eq!(
            grants.retain_allowed("up", &narrower).await.unwrap().len(),
            1
        );
        assert!(grants.list().is_empty());
    }

    #[tokio::test]
    async fn a_grant_from_one_branch_does_not_cover_calls_held_by_another() {
        let policy = branched("100");
        let small = label(&policy, r#"{"amount":5}"#);
        let large = label(&policy, r#"{"amount":500}"#);
        assert_eq!(small, "pay[when 1: args.amount lt 100]");
        assert_ne!(small, large);
        let grants = Grants::default();
        let mut g = grant(&small);
        g.args_hash = None;
        grants.add(g).await.unwrap();
        let call = |rule, args| Call {
            upstream: "up",
            tool: "pay",
            rule,
            agent: "bot",
            session: "s1",
            arguments: Some(args),
        };
        assert!(grants.find(&call(&small, r#"{"amount":7}"#)).is_some());
        assert!(grants.find(&call(&large, r#"{"amount":500}"#)).is_none());
        // A reload that keeps the branch keeps the grant ...
        let same = branched("100");
        assert!(grants.retain_allowed("up", &same).await.unwrap().is_empty());
        assert!(check(&same, "pay", &small, &request(1.0)).is_ok());
        // ... one that rewrites the other branch too; one that drops the
        // grant's branch (here: the rule no longer holds small amounts) ends it.
        assert!(
            grants
                .retain_allowed("up", &branched("200"))
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            grants
                .retain_allowed("up", &policy_with_one_branch())
                .await
                .unwrap()
                .len(),
            1
        );
        assert!(grants.list().is_empty());
    }

    fn policy_with_one_branch() -> Policy {
        parse_str(
            r#"{"version":"1","default":"deny","rules":{"pay":{"action":"allow","when":[
            {"if":[{"path":"args.amount","op":"gte","value":100}],"action":"require_approval"}]}}}"#,
            "t.json",
        )
        .unwrap()
    }
}
