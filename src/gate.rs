//! The interception: `tools/call` enforcement and `tools/list` filtering.
//!
//! Everything here is synchronous and allocation-light: it runs on the hot
//! path of every allowed call. It decides; the caller forwards or answers.

use std::borrow::Cow;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::era::Era;
use crate::jsonrpc::{self, Id, Message};
use crate::policy::{
    Action, Approval, Branch, Facts, Hints, Policy, RateLimit, ToolHints, Verdict, WindowLimit,
};

/// What the gate decided about one `tools/call`.
pub enum CallDecision {
    /// Forward the original bytes upstream.
    Allow { rule: String },
    /// Answer the agent with a refusal; the call never reaches the upstream.
    Refuse(Refusal),
    /// The tool is hidden: answer exactly as the upstream answers an unknown tool.
    Hidden,
    /// No rule names the tool and `default` is `deny`: the tool is not listed,
    /// so it is answered like a tool that does not exist (the refusal is what
    /// the audit records).
    DeniedByDefault(Refusal),
    /// A human must decide first.
    NeedsApproval {
        rule: String,
        reason: Option<String>,
        approval: Approval,
    },
}

/// A policy refusal, ready to become a `CallToolResult`.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// Machine-readable outcome: `denied`, `rate_limited`, `approval_denied`, …
    pub decision: &'static str,
    pub rule: String,
    pub reason: String,
    /// Shown to the agent; names the outcome and the reason.
    pub text: String,
    pub retry_after: Option<Duration>,
}

/// Decides a `tools/call`; `facts` name the tool, its raw arguments, the
/// agent, upstream and session (whose rate-limit budget the call spends).
pub fn decide_call(policy: &Policy, facts: &Facts<'_>) -> CallDecision {
    decide(policy, facts, true)
}

/// Decides the retry of a call that was already allowed and asked the client
/// for input (MRTR): the same rules apply, but it does not spend rate-limit
/// budget a second time.
pub fn decide_retry(policy: &Policy, facts: &Facts<'_>) -> CallDecision {
    decide(policy, facts, false)
}

/// `spend`: whether the call counts against rate limits.
fn decide(policy: &Policy, facts: &Facts<'_>, spend: bool) -> CallDecision {
    let admitted = match judge(policy, facts) {
        Ok(admitted) => admitted,
        Err(decided) => return decided,
    };
    if !spend {
        return admitted.unspent();
    }
    let rate = admitted
        .rate
        .map_or(Ok(()), |(_, limit)| limit.check(facts.session));
    admitted.spend(facts.tool, facts.agent, facts.session, rate)
}

/// A call the policy lets through or holds, before it spends its budgets:
/// the rule's `rate_limit` (taken here, or by the shared store for
/// stateless-era agents of replicas, [`crate::budgets`]) and its window limits.
pub struct Admitted<'p> {
    action: Action,
    reason: Option<String>,
    rule: String,
    approval: Approval,
    /// The matched rule's key and its `rate_limit`: a budget is per rule.
    pub rate: Option<(&'p str, &'p RateLimit)>,
    limits: &'p [WindowLimit],
    guard_limits: &'p [WindowLimit],
}

impl Admitted<'_> {
    /// The rule as audit rows name it.
    pub fn rule(&self) -> &str {
        &self.rule
    }

    /// The decision once `rate` (the rate limit's answer: allowed, or how
    /// long until a call is free) is known; spends the window limits.
    pub fn spend(
        self,
        tool: &str,
        agent: &str,
        session: &str,
        rate: Result<(), Duration>,
    ) -> CallDecision {
        if let (Err(wait), Some((_, limit))) = (rate, self.rate) {
            let reason = budget_text(limit.max, limit.window);
            return rate_limited(tool, self.rule, reason, wait);
        }
        for limit in self.limits.iter().chain(self.guard_limits) {
            if let Err(wait) = limit.take(agent, session) {
                return rate_limited(tool, self.rule, limit.describe(), wait);
            }
        }
        self.unspent()
    }

    /// The decision without spending any budget (the retry of an MRTR call).
    pub fn unspent(self) -> CallDecision {
        if self.action == Action::Allow {
            CallDecision::Allow { rule: self.rule }
        } else {
            CallDecision::NeedsApproval {
                rule: self.rule,
                reason: self.reason,
                approval: self.approval,
            }
        }
    }
}

/// What the policy says before any budget is spent: a refusal (or hidden
/// tool) decided outright, or a call admitted pending its budgets.
pub fn judge<'p>(policy: &'p Policy, facts: &Facts<'_>) -> Result<Admitted<'p>, CallDecision> {
    let tool = facts.tool;
    let verdict = policy.decide(tool);
    let (mut action, mut reason, mut rule, rate, approval, limits) = match verdict {
        Verdict::Hidden => return Err(CallDecision::Hidden),
        Verdict::Default(action) => match policy.by_annotations(facts.hints.as_ref()) {
            // Annotations decide tools no rule names (docs/policy.md).
            Some((action, hint)) => (
                action,
                Some(format!("the server declares `{hint}` for this tool")),
                format!("annotations.{hint}"),
                None,
                Approval::default(),
                &[][..],
            ),
            None => (
                action,
                None,
                "default".to_owned(),
                None,
                Approval::default(),
                &[][..],
            ),
        },
        Verdict::Rule(r) => {
            let choice = r.choose(facts);
            (
                choice.action,
                choice.reason.map(str::to_owned),
                rule_label(&r.key, choice.branch),
                r.rate_limit.as_ref().map(|l| (r.key.as_str(), l)),
                r.approval,
                &r.limits[..],
            )
        }
    };
    // The policy-wide guard (PolicyLayer `all_tools`, Intercept `"*"` rules)
    // can still deny what the tool's own rule lets through.
    let by_default = matches!(verdict, Verdict::Default(_));
    let guard = policy.all_tools.as_ref();
    if action != Action::Deny
        && let Some(guard) = guard
    {
        let choice = guard.choose(facts);
        if choice.action == Action::Deny {
            action = Action::Deny;
            reason = choice.reason.map(str::to_owned);
            rule = rule_label(&guard.key, choice.branch);
        }
    }
    if action != Action::Deny {
        return Ok(Admitted {
            action,
            reason,
            rule,
            approval,
            rate,
            limits,
            guard_limits: guard.map(|g| &g.limits[..]).unwrap_or_default(),
        });
    }
    let reason = reason.unwrap_or_else(|| {
        if by_default {
            "no rule allows this tool (policy default: deny)".into()
        } else {
            format!("denied by policy rule `{rule}`")
        }
    });
    let refusal = Refusal {
        decision: "denied",
        text: format!("Airlock denied this call to `{tool}`: {reason} (rule `{rule}`)."),
        rule,
        reason,
        retry_after: None,
    };
    // Not listed, so answered like a tool that does not exist.
    if by_default && (refusal.rule == "default" || refusal.rule.starts_with("annotations.")) {
        Err(CallDecision::DeniedByDefault(refusal))
    } else {
        Err(CallDecision::Refuse(refusal))
    }
}

/// The refusal of a rate-limited call whose shared budget (PostgreSQL)
/// could not be read: never let it through unlimited. The database's own
/// error goes to the log, not to the agent.
pub fn budget_unavailable(tool: &str, rule: String) -> CallDecision {
    let reason = "the shared rate-limit store (PostgreSQL) cannot be reached".to_owned();
    CallDecision::Refuse(Refusal {
        decision: "budget_unavailable",
        text: format!(
            "Airlock refused this call to `{tool}`: its rate limit (rule `{rule}`) is counted in the shared store, which cannot be reached; the call was not forwarded."
        ),
        reason,
        rule,
        retry_after: None,
    })
}

/// The rule as audit rows and holds name it: its key, plus the branch that
/// decided (`create_refund[when 2: args.amount gte 100]`).
pub(crate) fn rule_label(key: &str, branch: Option<&Branch>) -> String {
    match branch {
        None => key.to_owned(),
        Some(b) => format!("{key}[{}]", b.label),
    }
}

fn rate_limited(tool: &str, rule: String, reason: String, wait: Duration) -> CallDecision {
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    CallDecision::Refuse(Refusal {
        decision: "rate_limited",
        text: format!(
            "Airlock rate-limited this call to `{tool}`: {reason} (rule `{rule}`). Retry in {secs} s."
        ),
        rule,
        reason,
        retry_after: Some(Duration::from_secs(secs)),
    })
}

/// The `CallToolResult` (`isError: true`) that tells the agent about a refusal.
pub fn refusal_response(id: &Id, refusal: &Refusal, era: Era) -> Message {
    let mut meta = json!({
        "airlock.decision": refusal.decision,
        "airlock.reason": refusal.reason,
        "airlock.rule": refusal.rule,
    });
    if let Some(wait) = refusal.retry_after {
        meta["airlock.retry_after_s"] = json!(wait.as_secs());
    }
    let mut result = json!({
        "content": [{ "type": "text", "text": refusal.text }],
        "isError": true,
        "_meta": meta,
    });
    if era == Era::Stateless {
        result["resultType"] = json!("complete");
        result["_meta"][crate::era::META_SERVER_INFO] = crate::era::airlock_server_info();
    }
    jsonrpc::result_response(id, result)
}

/// The note appended to the description of tools that need approval.
pub const APPROVAL_NOTE: &str =
    "[Airlock: a human must approve each call to this tool; the call waits for their decision.]";

#[derive(Deserialize)]
struct ListPeek<'a> {
    #[serde(borrow)]
    tools: Vec<ToolPeek<'a>>,
}

#[derive(Deserialize)]
struct ToolPeek<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(default)]
    annotations: Option<Hints>,
}

/// Sent to handshake-era sessions when their upstream's policy is reloaded:
/// what `tools/list` shows may have changed (hidden, denied-by-default or
/// approval-annotated tools), so clients list again.
pub fn list_changed() -> Message {
    Message::parse(bytes::Bytes::from_static(
        br#"{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}"#,
    ))
    .expect("a valid notification")
}

/// [`list_changed`] on a stateless-era `subscriptions/listen` stream, which
/// names the subscription (the listen request's id) on every notification.
pub fn list_changed_for(subscription: &Id) -> Message {
    let id: Value = serde_json::from_str(subscription.raw()).unwrap_or(Value::Null);
    Message::from_value(&json!({
        "jsonrpc": "2.0",
        "method": "notifications/tools/list_changed",
        "params": { "_meta": { "io.modelcontextprotocol/subscriptionId": id } },
    }))
}

/// Whether a message acknowledges a subscription that includes tool-list changes.
pub fn acknowledges_tool_list_changes(message: &Message) -> bool {
    #[derive(serde::Deserialize)]
    struct Ack {
        notifications: Option<Filter>,
    }
    #[derive(serde::Deserialize)]
    struct Filter {
        #[serde(rename = "toolsListChanged")]
        tools_list_changed: Option<bool>,
    }
    message.method() == Some("notifications/subscriptions/acknowledged")
        && message
            .params::<Ack>()
            .and_then(|a| a.notifications?.tools_list_changed)
            == Some(true)
}

/// Whether a response carries a tool list (`result.tools`): what a stream
/// that may replay any earlier answer (a resumed `GET`) must filter.
pub fn carries_tool_list(response: &Message) -> bool {
    #[derive(Deserialize)]
    struct HasTools<'a> {
        #[serde(borrow)]
        #[allow(dead_code)]
        tools: &'a serde_json::value::RawValue,
    }
    response.result::<HasTools<'_>>().is_some()
}

/// Filters a `tools/list` response: drops tools the agent may not see and
/// notes the ones that need approval. Returns the message untouched (same
/// bytes) when nothing changes. Also remembers the annotations each tool
/// declared in `hints`, for the policy's `annotations` defaults.
pub fn filter_tools_list(policy: &Policy, hints: &ToolHints, response: Message) -> Message {
    filter_tools_list_hiding(policy, hints, &|_| false, response)
}

/// [`filter_tools_list`] that also drops the tools `hidden` names (a changed
/// definition under `on_tool_change: hide`).
pub fn filter_tools_list_hiding(
    policy: &Policy,
    hints: &ToolHints,
    hidden: &dyn Fn(&str) -> bool,
    response: Message,
) -> Message {
    if response.result::<serde::de::IgnoredAny>().is_none() {
        return response; // an error answer: nothing to filter
    }
    // Fast path: every entry has a plain name and nothing changes.
    if let Some(list) = response.result::<ListPeek<'_>>() {
        for tool in &list.tools {
            hints.remember(&tool.name, tool.annotations.unwrap_or_default());
        }
        let changes = list.tools.iter().any(|t| {
            let declared = t.annotations.as_ref();
            !policy.lists_with(&t.name, declared)
                || policy.always_held(&t.name, declared)
                || hidden(&t.name)
        });
        if !changes {
            return response;
        }
    }
    // Otherwise (changes, or entries the peek could not read) rebuild the
    // list; an entry without a string name is dropped, never passed on.
    let Ok(mut value) = serde_json::from_str::<Value>(response.text()) else {
        return response;
    };
    if let Some(tools) = value
        .pointer_mut("/result/tools")
        .and_then(Value::as_array_mut)
    {
        let declared = |t: &Value| {
            t.get("annotations")
                .and_then(|a| Hints::deserialize(a).ok())
        };
        tools.retain(|t| {
            t.get("name")
                .and_then(Value::as_str)
                .is_some_and(|n| policy.lists_with(n, declared(t).as_ref()) && !hidden(n))
        });
        for tool in tools.iter_mut() {
            let hinted = declared(tool);
            let name = tool.get("name").and_then(Value::as_str).unwrap_or_default();
            hints.remember(name, hinted.unwrap_or_default());
            if policy.always_held(name, hinted.as_ref()) {
                let described = match tool.get("description").and_then(Value::as_str) {
                    Some(d) if !d.is_empty() => format!("{d}\n\n{APPROVAL_NOTE}"),
                    _ => APPROVAL_NOTE.to_owned(),
                };
                tool["description"] = Value::String(described);
            }
        }
    }
    Message::from_value(&value)
}

/// The rate limit as the agent reads it. GCRA allows a burst of `max` and then
/// one call every `window / max`, so "at most `max` per window" would be untrue.
fn budget_text(max: u32, window: std::time::Duration) -> String {
    let every = window.as_secs_f64() / f64::from(max.max(1));
    let every = if every.fract() == 0.0 {
        format!("{every:.0}")
    } else {
        format!("{every:.1}")
    };
    format!(
        "{max} calls per {} s per session (a burst of {max}, then one every {every} s)",
        window.as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::parse_str;
    use bytes::Bytes;

    fn call(policy: &Policy, tool: &str) -> CallDecision {
        decide_call(policy, &Facts::new(tool, None, "agent", "up", "s"))
    }

    fn policy() -> Policy {
        parse_str(
            r#"{"version":"1","default":"deny","hide":["secret_tool"],"rules":{
                "echo":{"action":"allow"},
                "add":{"action":"allow","rate_limit":{"max":1,"window":60}},
                "delete_*":{"action":"require_approval","reason":"destructive"},
                "crash":{"action":"deny","reason":"it breaks things"}}}"#,
            "t.json",
        )
        .unwrap()
    }

    #[test]
    fn budget_text_says_the_burst_and_the_refill() {
        let minute = std::time::Duration::from_secs(60);
        assert_eq!(
            budget_text(2, minute),
            "2 calls per 60 s per session (a burst of 2, then one every 30 s)"
        );
        assert!(budget_text(7, minute).ends_with("then one every 8.6 s)"));
    }

    #[test]
    fn denied_call_names_the_tool_rule_and_reason() {
        let CallDecision::Refuse(r) = call(&policy(), "crash") else {
            panic!()
        };
        assert_eq!(r.decision, "denied");
        assert_eq!(
            r.text,
            "Airlock denied this call to `crash`: it breaks things (rule `crash`)."
        );
        let CallDecision::DeniedByDefault(d) = call(&policy(), "other") else {
            panic!()
        };
        assert!(
            d.text
                .contains("no rule allows this tool (policy default: deny)"),
            "{}",
            d.text
        );
    }

    #[test]
    fn a_budget_spent_elsewhere_decides_with_its_wait_and_a_missing_store_refuses() {
        let p = policy();
        let facts = Facts::new("add", None, "agent", "up", "s");
        let admitted = judge(&p, &facts).ok().unwrap();
        assert_eq!(
            admitted.rate.map(|(rule, l)| (rule, l.max)),
            Some(("add", 1))
        );
        let wait = Duration::from_millis(9_200);
        let CallDecision::Refuse(r) = admitted.spend("add", "agent", "s", Err(wait)) else {
            panic!()
        };
        assert_eq!(
            (r.decision, r.retry_after),
            ("rate_limited", Some(Duration::from_secs(10)))
        );
        let admitted = judge(&p, &facts).ok().unwrap();
        assert!(matches!(
            admitted.spend("add", "agent", "s", Ok(())),
            CallDecision::Allow { .. }
        ));
        assert!(judge(&p, &Facts::new("crash", None, "a", "up", "s")).is_err());
        let CallDecision::Refuse(r) = budget_unavailable("add", "add".into()) else {
            panic!()
        };
        assert_eq!((r.decision, r.retry_after), ("budget_unavailable", None));
    }

    #[test]
    fn rate_limited_call_says_when_to_retry() {
        let p = policy();
        assert!(matches!(call(&p, "add"), CallDecision::Allow { .. }));
        let CallDecision::Refuse(r) = call(&p, "add") else {
            panic!()
        };
        assert_eq!(r.decision, "rate_limited");
        assert!(r.text.contains("Retry in 60 s."), "{}", r.text);
        let m = refusal_response(&Id::from_raw("4"), &r, Era::Stateless);
        let v: Value = serde_json::from_str(m.text()).unwrap();
        assert_eq!(v["result"]["isError"], true);
        assert_eq!(v["result"]["_meta"]["airlock.decision"], "rate_limited");
        assert_eq!(v["result"]["_meta"]["airlock.retry_after_s"], 60);
        assert_eq!(v["result"]["resultType"], "complete");
    }

    #[test]
    fn hidden_and_approval_decisions() {
        assert!(matches!(
            call(&policy(), "secret_tool"),
            CallDecision::Hidden
        ));
        let CallDecision::NeedsApproval { rule, reason, .. } = call(&policy(), "delete_x") else {
            panic!()
        };
        assert_eq!(
            (rule.as_str(), reason.as_deref()),
            ("delete_*", Some("destructive"))
        );
    }

    #[test]
    fn list_filter_drops_hidden_and_unallowed_tools_and_notes_approval() {
        let raw = r#"{"jsonrpc":"2.0","id":2,"result":{"tools":[{"name":"echo","description":"Echo"},{"name":"secret_tool"},{"name":"delete_record","description":"Deletes"},{"name":"other"}],"ttlMs":5}}"#;
        let out = filter_tools_list(
            &policy(),
            &ToolHints::default(),
            Message::parse(Bytes::from(raw)).unwrap(),
        );
        let v: Value = serde_json::from_str(out.text()).unwrap();
        let names: Vec<&str> = v["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["echo", "delete_record"]);
        assert!(
            v["result"]["tools"][1]["description"]
                .as_str()
                .unwrap()
                .ends_with(APPROVAL_NOTE)
        );
        assert_eq!(v["result"]["ttlMs"], 5, "other result fields are kept");
    }

    #[test]
    fn list_filter_keeps_the_original_bytes_when_nothing_changes() {
        let raw = r#"{"jsonrpc":"2.0","id":2,"result":{"tools":[{"name":"echo",  "description":"Echo"}]}}"#;
        let out = filter_tools_list(
            &policy(),
            &ToolHints::default(),
            Message::parse(Bytes::from(raw)).unwrap(),
        );
        assert_eq!(out.text(), raw);
    }

    #[test]
    fn a_branch_names_the_condition_in_the_rule_and_holds_with_it() {
        let p = parse_str(
            r#"{"version":"1","default":"deny","rules":{"create_refund":{"when":[
                {"if":[{"path":"args.amount","op":"gt","value":10000}],"action":"deny","reason":"too large"},
                {"if":[{"path":"args.amount","op":"gte","value":100}],"action":"require_approval"},
                {"action":"allow"}]}}}"#,
            "t.json",
        )
        .unwrap();
        let at = |args: &str| {
            decide_call(
                &p,
                &Facts::new("create_refund", Some(args), "agent", "up", "s"),
            )
        };
        let CallDecision::NeedsApproval { rule, .. } = at(r#"{"amount":150}"#) else {
            panic!()
        };
        assert_eq!(rule, "create_refund[when 2: args.amount gte 100]");
        let CallDecision::Refuse(r) = at(r#"{"amount":20000}"#) else {
            panic!()
        };
        assert_eq!(
            r.text,
            "Airlock denied this call to `create_refund`: too large (rule `create_refund[when 1: args.amount gt 10000]`)."
        );
        assert!(matches!(at(r#"{"amount":1}"#), CallDecision::Allow { .. }));
    }

    #[test]
    fn window_limits_and_the_all_tools_guard_refuse_visibly() {
        let p = parse_str(
            r#"{"version":"1","default":"allow","all_tools":{"limits":[{"window":"day","max":2}]},
                "tools":{"echo":{}}}"#,
            "t.json",
        )
        .unwrap();
        assert!(matches!(call(&p, "echo"), CallDecision::Allow { .. }));
        assert!(matches!(call(&p, "other"), CallDecision::Allow { .. }));
        let CallDecision::Refuse(r) = call(&p, "echo") else {
            panic!()
        };
        assert_eq!(r.decision, "rate_limited");
        assert!(
            r.reason
                .starts_with("2 calls per day (UTC calendar day, per agent"),
            "{}",
            r.reason
        );
        let y = crate::policy::parse_str(
            "version: 1\ntools:\n  \"*\":\n    rules:\n      - name: no-x\n        action: deny\n        conditions: [{path: args.x, op: exists}]\n",
            "p.yaml",
        )
        .unwrap();
        let f = Facts::new("anything", Some(r#"{"x":1}"#), "a", "u", "s");
        let CallDecision::Refuse(r) = decide_call(&y, &f) else {
            panic!()
        };
        assert_eq!(r.rule, "*[rule no-x: args.x exists true]");
    }

    #[test]
    fn annotations_decide_only_tools_no_rule_names() {
        let p = parse_str(
            r#"{"version":"1","default":"deny",
                "annotations":{"destructiveHint":"require_approval","readOnlyHint":"allow"},
                "rules":{"drop_all":{"action":"deny"}}}"#,
            "t.json",
        )
        .unwrap();
        let destructive = Hints {
            destructive_hint: Some(true),
            read_only_hint: Some(true),
            ..Hints::default()
        };
        let read_only = Hints {
            read_only_hint: Some(true),
            ..Hints::default()
        };
        let with =
            |tool, hints| decide_call(&p, &Facts::new(tool, None, "a", "u", "s").with_hints(hints));
        let CallDecision::NeedsApproval { rule, reason, .. } = with("wipe", Some(destructive))
        else {
            panic!()
        };
        assert_eq!(
            rule, "annotations.destructiveHint",
            "the most restrictive hint wins"
        );
        assert_eq!(
            reason.as_deref(),
            Some("the server declares `destructiveHint` for this tool")
        );
        assert!(matches!(
            with("read", Some(read_only)),
            CallDecision::Allow { .. }
        ));
        assert!(matches!(
            with("read", None),
            CallDecision::DeniedByDefault(_)
        ));
        assert!(
            matches!(with("drop_all", Some(read_only)), CallDecision::Refuse(_)),
            "a hint never allows what a rule denies"
        );
        assert!(p.lists_with("read", Some(&read_only)));
        assert!(!p.lists_with("other", Some(&Hints::default())));
        assert!(p.always_held("wipe", Some(&destructive)));
        let warnings = crate::policy::lint(&p).join("\n");
        assert!(warnings.contains("self-declared"), "{warnings}");
    }

    #[test]
    fn list_filter_remembers_annotations_and_applies_them() {
        let p = parse_str(
            r#"{"version":"1","default":"deny","annotations":{"destructiveHint":"require_approval"}}"#,
            "t.json",
        )
        .unwrap();
        let hints = ToolHints::default();
        let raw = r#"{"jsonrpc":"2.0","id":2,"result":{"tools":[{"name":"echo"},{"name":"delete_record","annotations":{"destructiveHint":true}}]}}"#;
        let out = filter_tools_list(&p, &hints, Message::parse(Bytes::from(raw)).unwrap());
        let v: Value = serde_json::from_str(out.text()).unwrap();
        assert_eq!(v["result"]["tools"].as_array().unwrap().len(), 1);
        assert_eq!(v["result"]["tools"][0]["description"], APPROVAL_NOTE);
        assert_eq!(
            hints.get("delete_record").unwrap().destructive_hint,
            Some(true)
        );
    }
}
