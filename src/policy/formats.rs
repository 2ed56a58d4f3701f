//! The formats people already have, read unchanged and compiled into the same
//! rules as Airlock's own: PolicyLayer's JSON document and Intercept's YAML.
//!
//! Both say "every check must pass": a call is denied by the first check that
//! fails, in file order. That is an ordered list of deny branches, so:
//!
//! - PolicyLayer `deny_if` → branch `conditions → deny (on_deny)`; an empty
//!   `conditions` list always denies. `require` (shape not published; read as
//!   the mirror of `deny_if`) → branch `not(conditions) → deny (on_deny)`.
//!   The rule's own action is `allow`, so `{}` allows the tool under
//!   `default: deny`. `limits` and `all_tools.limits` → calendar-window counters.
//! - Intercept `evaluate` rule → `not(conditions) → deny (on_deny)`; `deny`
//!   rule → `conditions → deny` (no conditions: always). `rate_limit: "N/unit"`
//!   → a counter. A tool's rules come first, then the `"*"` rules, which
//!   also apply to tools no entry names (the policy-wide guard).

use indexmap::IndexMap;
use serde::Deserialize;
use serde_json::Value;

use super::load::{LoadError, Source, assemble, check_version, deserialize, version_text};
use super::window::{Scope, WindowLimit, window_seconds};
use super::{Action, Branch, Cond, Format, Policy, Rule};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicyLayer {
    #[serde(deserialize_with = "version_text")]
    version: String,
    #[serde(default)]
    default: Option<Action>,
    #[serde(default)]
    hide: Vec<String>,
    #[serde(default)]
    all_tools: Option<RawAllTools>,
    #[serde(default)]
    tools: IndexMap<String, RawPlTool>,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAllTools {
    #[serde(default)]
    limits: Vec<RawPlLimit>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPlTool {
    #[serde(default)]
    require: Vec<RawPlCheck>,
    #[serde(default)]
    deny_if: Vec<RawPlCheck>,
    #[serde(default)]
    limits: Vec<RawPlLimit>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlCheck {
    #[serde(default)]
    conditions: Vec<Value>,
    #[serde(default)]
    on_deny: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlLimit {
    #[serde(default)]
    counter: Option<String>,
    window: String,
    max: u32,
    #[serde(default)]
    scope: Option<String>,
}

/// Reads PolicyLayer's JSON document.
pub fn policylayer(text: &str, file: &str) -> Result<Policy, LoadError> {
    let raw: RawPolicyLayer = deserialize(text, file)?;
    let src = Source {
        text,
        file,
        yaml: false,
    };
    check_version(&raw.version, &src)?;
    let mut counters: Vec<WindowLimit> = Vec::new();
    let mut rules = Vec::with_capacity(raw.tools.len());
    for (name, tool) in &raw.tools {
        if name.is_empty() {
            return Err(src.error(&["tools"], "tools: a tool name is empty".into()));
        }
        let mut rule = Rule::plain(name.clone(), Action::Allow);
        for (kind, list) in [("deny_if", &tool.deny_if), ("require", &tool.require)] {
            for (i, check) in list.iter().enumerate() {
                let at = |message: String| src.error(&["tools", name, kind], message);
                let cond = Cond::compile_list(&check.conditions)
                    .map_err(|e| at(format!("tools.{name}.{kind}[{i}]: {e}")))?;
                let (when, label) = if kind == "deny_if" {
                    let label = format!("deny_if {}: {}", i + 1, cond.describe());
                    (cond, label)
                } else {
                    let label = format!("require {}: {}", i + 1, cond.describe());
                    (Cond::Not(Box::new(cond)), label)
                };
                let line = super::load::locate(text, &["tools", name, kind]).0;
                rule.branches.push(Branch {
                    when,
                    action: Action::Deny,
                    reason: Some(check.on_deny.clone().unwrap_or_else(|| match kind {
                        "deny_if" => format!("denied by policy ({label})"),
                        _ => format!("a required condition does not hold ({label})"),
                    })),
                    label,
                    line,
                });
            }
        }
        for (i, limit) in tool.limits.iter().enumerate() {
            let at = |message: String| src.error(&["tools", name, "limits"], message);
            let default_counter = format!("{name}.limits[{i}]");
            rule.limits.push(
                pl_limit(limit, default_counter, &mut counters)
                    .map_err(|e| at(format!("tools.{name}.limits[{i}]: {e}")))?,
            );
        }
        rules.push(rule);
    }
    let all_tools = match &raw.all_tools {
        None => None,
        Some(all) => {
            let mut guard = Rule::plain("all_tools".into(), Action::Allow);
            for (i, limit) in all.limits.iter().enumerate() {
                let at = |message: String| src.error(&["all_tools", "limits"], message);
                let default_counter = format!("all_tools.limits[{i}]");
                guard.limits.push(
                    pl_limit(limit, default_counter, &mut counters)
                        .map_err(|e| at(format!("all_tools.limits[{i}]: {e}")))?,
                );
            }
            Some(guard)
        }
    };
    let default = raw.default.unwrap_or(Action::Deny);
    assemble(
        default,
        &raw.hide,
        rules,
        all_tools,
        Format::PolicyLayer,
        &src,
    )
}

/// One PolicyLayer limit; limits naming the same `counter` share its count.
fn pl_limit(
    raw: &RawPlLimit,
    default_counter: String,
    counters: &mut Vec<WindowLimit>,
) -> Result<WindowLimit, String> {
    let window = window_seconds(&raw.window).ok_or_else(|| {
        format!(
            "unknown window `{}`: expected minute, hour or day",
            raw.window
        )
    })?;
    if raw.max == 0 {
        return Err("max must be at least 1".into());
    }
    let scope = match raw.scope.as_deref() {
        None => Scope::Agent,
        Some(text) => Scope::parse(text).ok_or_else(|| {
            format!("unknown scope `{text}`: expected grant (per agent), session or global")
        })?,
    };
    let counter = raw.counter.clone().unwrap_or(default_counter);
    if let Some(shared) = counters.iter().find(|c| c.counter == counter) {
        if (shared.max, shared.window, shared.scope) != (raw.max, window, scope) {
            return Err(format!(
                "counter `{counter}` is used with different max, window or scope"
            ));
        }
        return Ok(shared.clone());
    }
    let limit = WindowLimit::new(counter, raw.max, window, scope);
    counters.push(limit.clone());
    Ok(limit)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIntercept {
    #[serde(deserialize_with = "version_text")]
    version: String,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    #[serde(default)]
    default: Option<Action>,
    #[serde(default)]
    hide: Vec<String>,
    #[serde(default)]
    tools: IndexMap<String, RawInterceptTool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInterceptTool {
    #[serde(default)]
    rules: Vec<serde_saphyr::Spanned<RawInterceptRule>>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum InterceptAction {
    Evaluate,
    Deny,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInterceptRule {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    action: Option<InterceptAction>,
    #[serde(default)]
    conditions: Vec<Value>,
    #[serde(default)]
    on_deny: Option<String>,
    #[serde(default)]
    rate_limit: Option<String>,
}

/// Reads Intercept's YAML `policy.yaml`.
pub fn intercept(text: &str, file: &str) -> Result<Policy, LoadError> {
    let src = Source {
        text,
        file,
        yaml: true,
    };
    let raw: RawIntercept = serde_saphyr::from_str(text).map_err(|e| {
        let (line, column) = e
            .location()
            .map(|l| (l.line() as usize, l.column() as usize))
            .unwrap_or((1, 1));
        src.error_at(line.max(1), column.max(1), yaml_message(&e))
    })?;
    check_version(&raw.version, &src)?;
    let mut rules = Vec::new();
    let mut all_tools = None;
    for (name, tool) in &raw.tools {
        if name.is_empty() {
            return Err(src.error(&["tools"], "tools: a tool name is empty".into()));
        }
        let mut rule = Rule::plain(name.clone(), Action::Allow);
        for (i, spanned) in tool.rules.iter().enumerate() {
            let raw_rule = &spanned.value;
            let line = spanned.referenced.line() as usize;
            let column = spanned.referenced.column() as usize;
            let title = raw_rule
                .name
                .clone()
                .unwrap_or_else(|| format!("{}", i + 1));
            let at = |e: String| {
                src.error_at(
                    line.max(1),
                    column.max(1),
                    format!("tools.{name}.rules[{i}]: {e}"),
                )
            };
            let cond = Cond::compile_list(&raw_rule.conditions).map_err(at)?;
            let action = raw_rule.action.unwrap_or(InterceptAction::Evaluate);
            let label = format!("rule {title}: {}", cond.describe());
            let reason = raw_rule
                .on_deny
                .clone()
                .unwrap_or_else(|| format!("denied by policy rule `{title}`"));
            match action {
                InterceptAction::Deny => rule.branches.push(Branch {
                    when: cond,
                    action: Action::Deny,
                    reason: Some(reason),
                    label,
                    line,
                }),
                InterceptAction::Evaluate if !raw_rule.conditions.is_empty() => {
                    rule.branches.push(Branch {
                        when: Cond::Not(Box::new(cond)),
                        action: Action::Deny,
                        reason: Some(reason),
                        label,
                        line,
                    })
                }
                InterceptAction::Evaluate => {}
            }
            if let Some(rate) = &raw_rule.rate_limit {
                let (max, window) = parse_rate(rate).ok_or_else(|| {
                    at(format!(
                        "rate_limit `{rate}`: expected \"N/minute\", \"N/hour\" or \"N/day\""
                    ))
                })?;
                let counter = format!("{name}/{title}");
                rule.limits
                    .push(WindowLimit::new(counter, max, window, Scope::Agent));
            }
        }
        if name == "*" {
            rule.key = "*".into();
            all_tools = Some(rule);
        } else {
            rules.push(rule);
        }
    }
    let default = raw.default.unwrap_or(Action::Allow);
    assemble(
        default,
        &raw.hide,
        rules,
        all_tools,
        Format::Intercept,
        &src,
    )
}

/// `"5/minute"` → (5, 60).
fn parse_rate(text: &str) -> Option<(u32, u64)> {
    let (max, unit) = text.split_once('/')?;
    let max: u32 = max.trim().parse().ok().filter(|m| *m > 0)?;
    Some((max, window_seconds(unit.trim())?))
}

/// serde-saphyr's message without its own location suffix or snippet.
fn yaml_message(e: &serde_saphyr::Error) -> String {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or(&text);
    let first = first.split(" at line ").next().unwrap_or(first);
    first.trim_start_matches("error: ").to_owned()
}
