//! The policy engine: three file formats, compiled once into one [`Policy`],
//! evaluated per call.
//!
//! Airlock's JSON (`rules`), PolicyLayer's JSON document (`tools` with
//! `require` / `deny_if` / `limits`) and Intercept's YAML (`tools` with
//! `rules`) all compile to the same rules with ordered condition
//! [`Branch`]es, so the gate has one decision path (see docs/policy.md).
//!
//! A [`Policy`] is immutable once built. Matching order for a tool name:
//! 1. `hide` (exact or glob) → [`Verdict::Hidden`];
//! 2. a rule whose key is exactly the name;
//! 3. the most specific matching glob rule: most literal characters, then
//!    fewest wildcards, then the one written first in the file;
//! 4. `default`.
//!
//! Within the rule, the first branch whose condition holds picks the action
//! ([`Rule::choose`]); then the policy-wide guard (`all_tools` / Intercept's
//! `"*"` rules) may still deny.
//!
//! Rate-limit state lives in the compiled rule (a keyed `governor` limiter,
//! or calendar-window counters), so a reload that keeps a rule's key and
//! limit keeps its counters.

mod cond;
pub mod convert;
mod formats;
mod hints;
mod lint;
mod load;
mod window;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use globset::GlobSet;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

pub use cond::{Cond, Facts};
pub use hints::{HINTS, Hints, ToolHints};
pub use lint::lint;
pub use load::{LoadError, MAX_APPROVAL_TIMEOUT, MAX_GRANT, load_file, parse_str};
pub use window::{Scope, WindowLimit};

/// Which file format a policy was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Airlock's JSON: `rules` with `action` / `when` / `rate_limit`.
    Airlock,
    /// PolicyLayer's JSON document: `tools` with `require` / `deny_if` / `limits`.
    PolicyLayer,
    /// Intercept's YAML: `tools` with `rules` of `conditions`.
    Intercept,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Airlock => "Airlock JSON",
            Format::PolicyLayer => "PolicyLayer JSON",
            Format::Intercept => "Intercept YAML",
        }
    }
}

/// What a rule (or the default) does with a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Allow,
    Deny,
    RequireApproval,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
            Action::RequireApproval => "require_approval",
        }
    }
}

/// What a timed-out approval turns into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnTimeout {
    Allow,
    Deny,
}

/// What happens to calls of a tool whose definition changed since it was
/// pinned (`on_tool_change`, see `crate::pins`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnToolChange {
    /// Calls wait for a human until an approver accepts the new definition.
    Hold,
    /// Calls are refused until the new definition is accepted.
    Deny,
    /// The tool vanishes from `tools/list` and calls are answered like an unknown tool.
    Hide,
    /// Calls pass; the change is audited and announced (no surprise for existing policies).
    #[default]
    Warn,
}

impl OnToolChange {
    pub fn as_str(self) -> &'static str {
        match self {
            OnToolChange::Hold => "hold",
            OnToolChange::Deny => "deny",
            OnToolChange::Hide => "hide",
            OnToolChange::Warn => "warn",
        }
    }
}

/// Approval settings of a `require_approval` rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Approval {
    pub timeout: Duration,
    pub on_timeout: OnTimeout,
    /// Longest standing approval (grant) an approver may give, in seconds;
    /// `Some(0)` forbids grants, `None` caps them at [`MAX_GRANT`].
    pub max_grant: Option<u64>,
    /// Who is asked to decide (`approval.via`).
    pub via: Via,
}

/// Who decides a rule's held calls (`approval.via`): the approvers
/// (dashboard, Slack, API, CLI), the person driving the agent, asked in
/// their own client by MCP elicitation (`agent_user`), or both — then the
/// first decision wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Via {
    pub approvers: bool,
    pub agent_user: bool,
}

impl Default for Via {
    fn default() -> Self {
        Via {
            approvers: true,
            agent_user: false,
        }
    }
}

impl Via {
    /// Only the agent's user decides (approvers may still deny).
    pub fn agent_user_only(self) -> bool {
        self.agent_user && !self.approvers
    }
}

impl Approval {
    /// The longest grant this rule allows, in seconds (0: none).
    pub fn grant_cap(&self) -> u64 {
        self.max_grant.unwrap_or(MAX_GRANT).min(MAX_GRANT)
    }
}

impl Default for Approval {
    fn default() -> Self {
        Approval {
            timeout: Duration::from_secs(300),
            on_timeout: OnTimeout::Deny,
            max_grant: None,
            via: Via::default(),
        }
    }
}

/// Who must decide a rule's held calls: how many distinct approvers, from
/// which groups, and whom to call in when nobody decided in time
/// (`approval.approvers`, `groups`, `escalate_after`, `escalate_to`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quorum {
    /// Distinct approvals needed (1: the usual single approval).
    pub approvers: u32,
    /// Groups whose members may decide (empty: any approver).
    pub groups: Vec<String>,
    /// After this long without a decision, `escalate_to` is notified and may decide.
    pub escalate_after: Option<Duration>,
    pub escalate_to: Option<String>,
}

impl Default for Quorum {
    fn default() -> Self {
        Quorum {
            approvers: 1,
            groups: Vec::new(),
            escalate_after: None,
            escalate_to: None,
        }
    }
}

/// `rate_limit {max, window}` as written, plus its live limiter.
#[derive(Clone)]
pub struct RateLimit {
    pub max: u32,
    pub window: Duration,
    /// Keyed by agent session; shared with the rule's successor across reloads.
    limiter: Arc<DefaultKeyedRateLimiter<String>>,
}

impl RateLimit {
    fn new(max: u32, window: Duration) -> RateLimit {
        let quota = quota_for(max, window);
        RateLimit {
            max,
            window,
            limiter: Arc::new(RateLimiter::keyed(quota)),
        }
    }

    /// Takes one call from `session`'s budget, or says how long until one is free.
    pub fn check(&self, session: &str) -> Result<(), Duration> {
        use governor::clock::{Clock, DefaultClock};
        // `check_key` needs an owned key only when the session is new; the
        // dashmap lookup itself borrows.
        match self.limiter.check_key(&session.to_owned()) {
            Ok(()) => Ok(()),
            Err(not_until) => Err(not_until.wait_time_from(DefaultClock::default().now())),
        }
    }

    /// Drops state for sessions whose budget is full again (called by the reaper).
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
    }
}

/// `max` calls in a burst, refilled at `max` per `window` (GCRA, see docs/policy.md).
fn quota_for(max: u32, window: Duration) -> Quota {
    let max = std::num::NonZeroU32::new(max.max(1)).expect("max is at least 1");
    let period = window / max.get();
    Quota::with_period(period.max(Duration::from_nanos(1)))
        .expect("period is non-zero")
        .allow_burst(max)
}

/// One compiled rule.
#[derive(Clone)]
pub struct Rule {
    /// The key as written in `rules` (exact name or glob).
    pub key: String,
    /// The action when no branch matches (the rule's `action`).
    pub action: Action,
    pub reason: Option<String>,
    pub rate_limit: Option<RateLimit>,
    pub approval: Approval,
    /// Checked in order; the first whose condition holds picks the action.
    pub branches: Vec<Branch>,
    /// Calendar-window counters every call this rule lets through spends.
    pub limits: Vec<WindowLimit>,
    /// `on_tool_change` of this rule (None: the policy's).
    pub on_tool_change: Option<OnToolChange>,
    /// Who must decide its held calls.
    pub quorum: Quorum,
}

/// One ordered, conditional choice of a rule.
#[derive(Clone)]
pub struct Branch {
    pub when: Cond,
    pub action: Action,
    pub reason: Option<String>,
    /// Names the branch in the audit row and the hold:
    /// `when 2: args.amount gte 100`, `deny_if 1: …`, `rule max-amount: …`.
    pub label: String,
    /// Line of the branch in the policy file (0: unknown).
    pub line: usize,
}

/// What a rule picked for one call.
pub struct Choice<'a> {
    pub action: Action,
    pub reason: Option<&'a str>,
    pub branch: Option<&'a Branch>,
}

impl Rule {
    /// The first branch whose condition holds, else the rule's own action.
    /// Arguments are parsed only if a branch reads them.
    pub fn choose<'a>(&'a self, facts: &Facts<'_>) -> Choice<'a> {
        for branch in &self.branches {
            if branch.when.holds(facts) {
                return Choice {
                    action: branch.action,
                    reason: branch.reason.as_deref().or(self.reason.as_deref()),
                    branch: Some(branch),
                };
            }
        }
        Choice {
            action: self.action,
            reason: self.reason.as_deref(),
            branch: None,
        }
    }

    /// Whether every call to this rule's tools ends in `action`, whatever the arguments.
    pub fn always(&self, action: Action) -> bool {
        for branch in &self.branches {
            if branch.action != action {
                return false;
            }
            if branch.when.is_always() {
                return true; // later branches and the rule's action are never reached
            }
        }
        self.action == action
    }

    /// A rule that names a tool and decides nothing itself (PolicyLayer's `{}`).
    pub(crate) fn plain(key: String, action: Action) -> Rule {
        Rule {
            key,
            action,
            reason: None,
            rate_limit: None,
            approval: Approval::default(),
            branches: Vec::new(),
            limits: Vec::new(),
            on_tool_change: None,
            quorum: Quorum::default(),
        }
    }

    /// Whether some call to this rule's tools can end in `action`.
    pub fn may(&self, action: Action) -> bool {
        self.action == action || self.branches.iter().any(|b| b.action == action)
    }
}

/// The outcome of matching a tool name.
#[derive(Clone, Copy)]
pub enum Verdict<'a> {
    /// Listed in `hide`: the tool does not exist as far as the agent knows.
    Hidden,
    /// Decided by a rule.
    Rule(&'a Rule),
    /// No rule names the tool; `default` applies.
    Default(Action),
}

impl Verdict<'_> {
    /// The action this verdict leads to when no condition matches (before
    /// rate limits).
    pub fn action(&self) -> Option<Action> {
        match self {
            Verdict::Hidden => None,
            Verdict::Rule(rule) => Some(rule.action),
            Verdict::Default(action) => Some(*action),
        }
    }

    /// The rule key for audit and messages (`default` when none matched).
    pub fn rule_name(&self) -> &str {
        match self {
            Verdict::Hidden => "hide",
            Verdict::Rule(rule) => &rule.key,
            Verdict::Default(_) => "default",
        }
    }
}

/// A compiled, immutable policy.
pub struct Policy {
    pub default: Action,
    /// `hide` as written (names and globs), for conversion and display.
    pub hide: Vec<String>,
    hide_exact: std::collections::HashSet<String>,
    hide_globs: GlobSet,
    /// Exact tool name → index into `rules`.
    exact: HashMap<String, usize>,
    /// Globs in rank order (most specific first); `glob_rules[i]` is the rule of glob `i`.
    globs: GlobSet,
    glob_rules: Vec<usize>,
    rules: Vec<Rule>,
    /// Applies after the tool's own rule to every call it does not deny:
    /// PolicyLayer's `all_tools`, Intercept's `"*"` rules (deny branches and limits).
    pub all_tools: Option<Rule>,
    pub format: Format,
    /// `annotations`: hint name → action for tools no rule names.
    pub annotations: Vec<(String, Action)>,
    /// What a changed tool definition does (policy level; rules may override).
    pub on_tool_change: OnToolChange,
}

impl Policy {
    /// A policy that allows everything (used when a config names no policy).
    pub fn allow_all() -> Policy {
        parse_str(
            r#"{"version":"1","default":"allow"}"#,
            "<built-in allow-all>",
        )
        .expect("built-in policy is valid")
    }

    /// Matches a tool name; see the module docs for the order.
    pub fn decide(&self, tool: &str) -> Verdict<'_> {
        if self.hide_exact.contains(tool) || self.hide_globs.is_match(tool) {
            return Verdict::Hidden;
        }
        if let Some(&i) = self.exact.get(tool) {
            return Verdict::Rule(&self.rules[i]);
        }
        if !self.glob_rules.is_empty() {
            // `matches` returns indices in ascending order, and globs are stored
            // most specific first, so the first match is the winner.
            if let Some(&first) = self.globs.matches(tool).first() {
                return Verdict::Rule(&self.rules[self.glob_rules[first]]);
            }
        }
        Verdict::Default(self.default)
    }

    /// Whether calls to this tool are rate-limited.
    pub fn rate_limited(&self, tool: &str) -> bool {
        let all = self
            .all_tools
            .as_ref()
            .is_some_and(|r| !r.limits.is_empty());
        match self.decide(tool) {
            Verdict::Rule(r) => all || r.rate_limit.is_some() || !r.limits.is_empty(),
            Verdict::Default(_) => all,
            Verdict::Hidden => false,
        }
    }

    /// Whether `tools/list` should show this tool to agents: not hidden, and
    /// not denied whatever its arguments under `default: deny`.
    pub fn lists(&self, tool: &str) -> bool {
        self.lists_with(tool, None)
    }

    /// [`Policy::lists`] for a tool whose server declared `hints`.
    pub fn lists_with(&self, tool: &str, hints: Option<&Hints>) -> bool {
        match self.decide(tool) {
            Verdict::Hidden => false,
            Verdict::Rule(rule) => !(self.default == Action::Deny && rule.always(Action::Deny)),
            Verdict::Default(action) => {
                self.by_annotations(hints).map_or(action, |a| a.0) != Action::Deny
            }
        }
    }

    /// Whether every call to this tool waits for a human, whatever its arguments.
    pub fn always_held(&self, tool: &str, hints: Option<&Hints>) -> bool {
        match self.decide(tool) {
            Verdict::Rule(rule) => rule.always(Action::RequireApproval),
            Verdict::Default(action) => {
                self.by_annotations(hints).map_or(action, |a| a.0) == Action::RequireApproval
            }
            Verdict::Hidden => false,
        }
    }

    /// The action `annotations` gives a tool no rule names, from the hints
    /// its server declared, and the hint that decided.
    pub fn by_annotations(&self, hints: Option<&Hints>) -> Option<(Action, &'static str)> {
        if self.annotations.is_empty() {
            return None;
        }
        hints::decide(&self.annotations, hints?)
    }

    /// `on_tool_change` for this tool: its rule's, else the policy's.
    pub fn on_tool_change(&self, tool: &str) -> OnToolChange {
        match self.decide(tool) {
            Verdict::Rule(rule) => rule.on_tool_change.unwrap_or(self.on_tool_change),
            _ => self.on_tool_change,
        }
    }

    /// The approval settings that govern a held call to this tool (its
    /// rule's, else the defaults), and the key of the rule (`default`).
    pub fn approval_for(&self, tool: &str) -> (Approval, &str) {
        match self.decide(tool) {
            Verdict::Rule(rule) => (rule.approval, &rule.key),
            Verdict::Hidden => (Approval::default(), "hide"),
            Verdict::Default(_) => (Approval::default(), "default"),
        }
    }

    /// Who must decide a held call to this tool (its rule's quorum, else one approver).
    pub fn quorum_for(&self, tool: &str) -> Quorum {
        match self.decide(tool) {
            Verdict::Rule(rule) => rule.quorum.clone(),
            _ => Quorum::default(),
        }
    }

    /// Whether a call to this tool may still be held for approval under this
    /// policy (a rule or branch that asks, or a default / annotation that does).
    pub fn may_hold(&self, tool: &str) -> bool {
        match self.decide(tool) {
            Verdict::Hidden => false,
            Verdict::Rule(rule) => rule.may(Action::RequireApproval),
            Verdict::Default(action) => {
                action == Action::RequireApproval
                    || self
                        .annotations
                        .iter()
                        .any(|(_, a)| *a == Action::RequireApproval)
            }
        }
    }

    /// Whether a call to this tool may still be held under `label`, the rule
    /// label a hold carries (`pay`, `pay[when 1: args.amount lt 100]`,
    /// `default`, `annotations.destructiveHint`): the rule or branch still
    /// exists, unchanged, and still asks for approval.
    pub fn holds_under(&self, tool: &str, label: &str) -> bool {
        match self.decide(tool) {
            Verdict::Hidden => false,
            Verdict::Rule(rule) => {
                if label == rule.key {
                    return rule.action == Action::RequireApproval;
                }
                rule.branches.iter().any(|b| {
                    b.action == Action::RequireApproval
                        && crate::gate::rule_label(&rule.key, Some(b)) == label
                })
            }
            Verdict::Default(action) => match label.strip_prefix("annotations.") {
                Some(hint) => self
                    .annotations
                    .iter()
                    .any(|(h, a)| h == hint && *a == Action::RequireApproval),
                None => label == "default" && action == Action::RequireApproval,
            },
        }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Every approver group the policy names (`approval.groups` and
    /// `escalate_to` of any rule): what a single sign-on login keeps of the
    /// user's groups.
    pub fn approver_groups(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().chain(&self.all_tools).flat_map(|rule| {
            let q = &rule.quorum;
            q.groups.iter().chain(&q.escalate_to).map(String::as_str)
        })
    }

    /// Forgets idle rate-limit state of every rule.
    pub fn forget_idle(&self) {
        for rule in self.rules.iter().chain(&self.all_tools) {
            if let Some(rate) = &rule.rate_limit {
                rate.forget_idle();
            }
            for limit in &rule.limits {
                limit.forget_idle();
            }
        }
    }

    /// Carries live rate-limit counters over from `old` for rules whose key
    /// and limit did not change, so a reload does not reset anyone's budget.
    pub fn inherit_limits(&mut self, old: &Policy) {
        let old_limits: HashMap<&str, &RateLimit> = old
            .rules
            .iter()
            .filter_map(|r| r.rate_limit.as_ref().map(|l| (r.key.as_str(), l)))
            .collect();
        for rule in &mut self.rules {
            if let (Some(new), Some(old)) =
                (&mut rule.rate_limit, old_limits.get(rule.key.as_str()))
                && new.max == old.max
                && new.window == old.window
            {
                new.limiter = old.limiter.clone();
            }
        }
        let old_windows: HashMap<&str, &WindowLimit> = old
            .rules
            .iter()
            .chain(&old.all_tools)
            .flat_map(|r| &r.limits)
            .map(|l| (l.counter.as_str(), l))
            .collect();
        for rule in self.rules.iter_mut().chain(&mut self.all_tools) {
            for limit in &mut rule.limits {
                if let Some(old) = old_windows.get(limit.counter.as_str()) {
                    limit.inherit(old);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
