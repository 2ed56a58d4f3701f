//! A PolicyLayer or Intercept policy rewritten in Airlock's own JSON, so the
//! dashboard's visual builder can edit it (`GET /api/policy/{upstream}`
//! offers it; nothing is written until an admin saves it).
//!
//! Both formats compile to rules with ordered deny branches (see
//! `formats.rs`), which Airlock's `when` expresses directly. The policy-wide
//! guard (`all_tools`, Intercept's `"*"` rules) becomes deny branches put
//! first in every rule, and a `"*"` rule for tools no rule names when the
//! default lets them through: the same calls are denied (a call both the
//! tool's rule and the guard deny may name the guard's reason). What Airlock
//! JSON cannot say — calendar-window `limits` — is left out and listed in
//! [`Converted::dropped`].

use serde_json::{Map, Value, json};

use super::{Action, Policy, Rule};

/// The converted text and what could not be carried over.
pub struct Converted {
    /// Airlock JSON, pretty-printed.
    pub text: String,
    /// One line per piece of the original left out.
    pub dropped: Vec<String>,
}

pub fn to_airlock(policy: &Policy) -> Converted {
    let mut dropped = Vec::new();
    let guard: Vec<Value> = policy
        .all_tools
        .as_ref()
        .map(|g| {
            drop_limits(g, "all_tools", &mut dropped);
            g.branches.iter().map(branch).collect()
        })
        .unwrap_or_default();
    let mut rules = Map::new();
    for rule in policy.rules() {
        drop_limits(rule, &rule.key, &mut dropped);
        rules.insert(rule.key.clone(), rule_json(rule, &guard));
    }
    if !guard.is_empty() && policy.default != Action::Deny && !rules.contains_key("*") {
        let mut catch_all = json!({ "action": policy.default.as_str(), "when": guard });
        if policy.default == Action::RequireApproval {
            catch_all["approval"] = json!({ "timeout": 300, "on_timeout": "deny" });
        }
        rules.insert("*".into(), catch_all);
    }
    let mut out = Map::new();
    out.insert("version".into(), "1".into());
    out.insert(
        "description".into(),
        format!("Converted by Airlock from {}", policy.format.as_str()).into(),
    );
    out.insert("default".into(), policy.default.as_str().into());
    if !policy.hide.is_empty() {
        out.insert("hide".into(), json!(policy.hide));
    }
    out.insert("rules".into(), Value::Object(rules));
    let text = serde_json::to_string_pretty(&Value::Object(out)).unwrap_or_default() + "\n";
    Converted { text, dropped }
}

fn rule_json(rule: &Rule, guard: &[Value]) -> Value {
    let mut out = Map::new();
    out.insert("action".into(), rule.action.as_str().into());
    if let Some(reason) = &rule.reason {
        out.insert("reason".into(), reason.clone().into());
    }
    let when: Vec<Value> = guard
        .iter()
        .cloned()
        .chain(rule.branches.iter().map(branch))
        .collect();
    if !when.is_empty() {
        out.insert("when".into(), Value::Array(when));
    }
    if let Some(limit) = &rule.rate_limit {
        out.insert(
            "rate_limit".into(),
            json!({ "max": limit.max, "window": limit.window.as_secs() }),
        );
    }
    let asks = rule.action == Action::RequireApproval
        || rule
            .branches
            .iter()
            .any(|b| b.action == Action::RequireApproval);
    if asks {
        let on_timeout = match rule.approval.on_timeout {
            super::OnTimeout::Allow => "allow",
            super::OnTimeout::Deny => "deny",
        };
        out.insert(
            "approval".into(),
            json!({ "timeout": rule.approval.timeout.as_secs(), "on_timeout": on_timeout }),
        );
    }
    Value::Object(out)
}

fn branch(b: &super::Branch) -> Value {
    let mut out = Map::new();
    if !b.when.is_always() {
        out.insert("if".into(), json!([b.when.to_json()]));
    }
    out.insert("action".into(), b.action.as_str().into());
    if let Some(reason) = &b.reason {
        out.insert("reason".into(), reason.clone().into());
    }
    Value::Object(out)
}

fn drop_limits(rule: &Rule, key: &str, dropped: &mut Vec<String>) {
    for l in &rule.limits {
        dropped.push(format!(
            "{key}: limit `{}` ({} calls per {} s calendar window) — Airlock JSON has only rate_limit (a sliding budget); add one by hand if you want it",
            l.counter, l.max, l.window
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Facts, parse_str};

    fn decide(p: &Policy, tool: &str, args: &str) -> (Option<Action>, bool) {
        match p.decide(tool) {
            crate::policy::Verdict::Hidden => (None, true),
            crate::policy::Verdict::Default(a) => (Some(a), false),
            crate::policy::Verdict::Rule(r) => {
                let facts = Facts::new(tool, Some(args), "a", "u", "s");
                let mut action = r.choose(&facts).action;
                if action != Action::Deny
                    && let Some(g) = &p.all_tools
                    && g.choose(&facts).action == Action::Deny
                {
                    action = Action::Deny;
                }
                (Some(action), false)
            }
        }
    }

    #[test]
    fn policylayer_document_converts_to_the_same_decisions() {
        let original = parse_str(
            r#"{"version":"1","default":"deny","hide":["odoo_web_logout"],
                "tools":{"odoo_search_read":{},
                         "odoo_write":{"deny_if":[{"conditions":[{"path":"args.model","op":"eq","value":"res.users"}],"on_deny":"not users"}]}}}"#,
            "pl.json",
        )
        .unwrap();
        let converted = to_airlock(&original);
        assert!(converted.dropped.is_empty(), "{:?}", converted.dropped);
        let again = parse_str(&converted.text, "converted.json").unwrap();
        assert_eq!(again.format, crate::policy::Format::Airlock);
        for (tool, args) in [
            ("odoo_search_read", "{}"),
            ("odoo_write", r#"{"model":"res.users"}"#),
            ("odoo_write", r#"{"model":"res.partner"}"#),
            ("odoo_web_logout", "{}"),
            ("other", "{}"),
        ] {
            assert_eq!(
                decide(&original, tool, args),
                decide(&again, tool, args),
                "{tool} {args}"
            );
        }
    }

    #[test]
    fn intercept_yaml_converts_and_reports_window_limits() {
        let original = parse_str(
            "version: \"1\"\ndefault: allow\ntools:\n  delete_repo:\n    rules:\n      - name: never\n        action: deny\n  create_issue:\n    rules:\n      - name: cap\n        rate_limit: 5/hour\n",
            "policy.yaml",
        )
        .unwrap();
        let converted = to_airlock(&original);
        let again = parse_str(&converted.text, "converted.json").unwrap();
        assert_eq!(decide(&again, "delete_repo", "{}").0, Some(Action::Deny));
        assert_eq!(decide(&again, "create_issue", "{}").0, Some(Action::Allow));
        assert_eq!(converted.dropped.len(), 1, "{:?}", converted.dropped);
        assert!(
            converted.dropped[0].contains("create_issue"),
            "{:?}",
            converted.dropped
        );
    }
}
