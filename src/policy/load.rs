//! Reading a policy file: the format is told by content (and a `.yaml` /
//! `.yml` name), then serde `Raw…` → validated, compiled [`Policy`].
//!
//! - JSON whose top level has `tools` or `all_tools`: PolicyLayer's document
//!   (see `formats.rs`);
//! - other JSON: Airlock's own shape (`rules`), read here;
//! - YAML: Intercept's `policy.yaml` (see `formats.rs`).
//!
//! Every error names the file, line, column and the key path
//! (`rules.odoo_unlink.acton`), and suggests the nearest known key or value.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use globset::{Glob, GlobBuilder, GlobSetBuilder};
use indexmap::IndexMap;
use serde::Deserialize;

use serde_json::Value;

use super::{
    Action, Approval, Branch, Cond, Format, OnTimeout, OnToolChange, Policy, Quorum, RateLimit,
    Rule, Via,
};
use crate::suggest::{parse_unknown, suggestion};

/// A policy file that cannot be used, with where and why.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{file}: cannot read policy: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}:{line}:{column}: {message}")]
    Invalid {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(deserialize_with = "version_text")]
    version: String,
    #[serde(default)]
    default: Option<Action>,
    #[serde(default)]
    hide: Vec<String>,
    #[serde(default)]
    rules: IndexMap<String, RawRule>,
    /// Tool annotation → action for tools no rule names (see `hints.rs`).
    #[serde(default)]
    annotations: IndexMap<String, Action>,
    /// Free text for humans; ignored.
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    /// What a changed tool definition does (default `warn`).
    #[serde(default)]
    on_tool_change: Option<OnToolChange>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    /// Required unless `when` is given; then it is what happens when no branch matches.
    #[serde(default)]
    action: Option<Action>,
    #[serde(default)]
    reason: Option<String>,
    /// Ordered branches: the first whose `if` holds picks the action.
    #[serde(default)]
    when: Option<Vec<RawBranch>>,
    #[serde(default)]
    rate_limit: Option<RawRateLimit>,
    #[serde(default)]
    approval: Option<RawApproval>,
    #[serde(default)]
    on_tool_change: Option<OnToolChange>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBranch {
    /// Conditions (ANDed); absent: the branch always matches.
    #[serde(rename = "if", default)]
    conditions: Option<Vec<Value>>,
    action: Action,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    max: u32,
    window: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApproval {
    #[serde(default)]
    timeout: Option<u64>,
    #[serde(default)]
    on_timeout: Option<OnTimeout>,
    /// Longest grant (standing approval) in seconds; 0 forbids grants.
    #[serde(default)]
    max_grant: Option<u64>,
    /// Distinct approvals needed (two-person rule).
    #[serde(default)]
    approvers: Option<u32>,
    /// Approver groups allowed to decide.
    #[serde(default)]
    groups: Option<Vec<String>>,
    /// Seconds without a decision before `escalate_to` is called in.
    #[serde(default)]
    escalate_after: Option<u64>,
    #[serde(default)]
    escalate_to: Option<String>,
    /// Who decides: `approvers`, `agent_user` (MCP elicitation), or both.
    #[serde(default)]
    via: Option<Vec<String>>,
}

/// Longest approval wait a policy may ask for: one week.
pub const MAX_APPROVAL_TIMEOUT: u64 = 7 * 24 * 3600;

/// Most distinct approvers a rule may require.
pub const MAX_APPROVERS: u32 = 10;

/// Longest grant (standing approval) anyone may give: one day, in seconds.
/// A rule's `approval.max_grant` can only lower it.
pub const MAX_GRANT: u64 = 24 * 3600;

/// Reads and compiles a policy file.
pub fn load_file(path: &Path) -> Result<Policy, LoadError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        file: file.clone(),
        source,
    })?;
    parse_str(&text, &file)
}

/// Parses and compiles policy text; `file` names it in error messages, and a
/// `.yaml` / `.yml` name means YAML.
pub fn parse_str(text: &str, file: &str) -> Result<Policy, LoadError> {
    let yaml_name = file.ends_with(".yaml") || file.ends_with(".yml");
    if yaml_name || !looks_like_json(text) {
        return super::formats::intercept(text, file);
    }
    let is_policylayer = serde_json::from_str::<Value>(text).is_ok_and(|v| {
        v.as_object()
            .is_some_and(|top| top.contains_key("tools") || top.contains_key("all_tools"))
    });
    if is_policylayer {
        return super::formats::policylayer(text, file);
    }
    let raw = deserialize(text, file)?;
    compile(raw, text, file)
}

/// JSON starts with `{` (after blanks); anything else is read as YAML.
fn looks_like_json(text: &str) -> bool {
    text.trim_start_matches('\u{feff}')
        .trim_start()
        .starts_with('{')
}

/// `version` as a string or a number (`"1"`, `1`).
pub(super) fn version_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Text {
        S(String),
        N(u64),
    }
    Ok(match Text::deserialize(d)? {
        Text::S(s) => s,
        Text::N(n) => n.to_string(),
    })
}

pub(super) fn deserialize<T: serde::de::DeserializeOwned>(
    text: &str,
    file: &str,
) -> Result<T, LoadError> {
    let de = &mut serde_json::Deserializer::from_str(text);
    let result: Result<T, _> = serde_path_to_error::deserialize(de);
    result.map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let message = inner.to_string();
        let (mut line, mut column) = (inner.line(), inner.column());
        // serde points just past an unknown key; point at the key itself.
        if let Some((key, _)) = parse_unknown(
            message.split(" at line ").next().unwrap_or(""),
            "unknown field `",
        ) && let Some(row) = text.lines().nth(line.saturating_sub(1))
            && let Some(at) = row
                .get(..column.min(row.len()))
                .and_then(|head| head.rfind(&format!("\"{key}\"")))
        {
            column = row[..at].chars().count() + 1;
        } else if line == 0 {
            line = 1;
            column = 1;
        }
        LoadError::Invalid {
            file: file.to_owned(),
            line,
            column,
            message: explain_serde_error(&path, &message),
        }
    })
}

/// Turns serde's wording into ours: names the key path and suggests a fix.
pub(super) fn explain_serde_error(path: &str, message: &str) -> String {
    // serde_json appends " at line X column Y"; we print the location ourselves.
    let message = message.split(" at line ").next().unwrap_or(message);
    if let Some((field, expected)) = parse_unknown(message, "unknown field `") {
        let container = path.strip_suffix(&format!(".{field}")).unwrap_or(path);
        let container = if container == field || container == "." || container.is_empty() {
            "the policy".to_owned()
        } else {
            container.to_owned()
        };
        return format!(
            "unknown key `{field}` in {container}{}",
            suggestion(&field, &expected)
        );
    }
    if let Some((variant, expected)) = parse_unknown(message, "unknown variant `") {
        return format!(
            "invalid value `{variant}` for {path}: expected one of {}{}",
            expected.join(", "),
            suggestion(&variant, &expected)
        );
    }
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
    {
        let within = if path == "." || path.is_empty() {
            "the policy".to_owned()
        } else {
            path.to_owned()
        };
        return format!("missing key `{field}` in {within}");
    }
    if path == "." || path == "?" || path.is_empty() {
        message.to_owned()
    } else {
        format!("{path}: {message}")
    }
}

/// Where errors of one file point: its text and name.
pub(super) struct Source<'a> {
    pub text: &'a str,
    pub file: &'a str,
    pub yaml: bool,
}

impl Source<'_> {
    /// An error at the key path `path` (found by walking the text).
    pub fn error(&self, path: &[&str], message: String) -> LoadError {
        let (line, column) = if self.yaml {
            locate_yaml(self.text, path)
        } else {
            locate(self.text, path)
        };
        self.error_at(line, column, message)
    }

    pub fn error_at(&self, line: usize, column: usize, message: String) -> LoadError {
        LoadError::Invalid {
            file: self.file.to_owned(),
            line,
            column,
            message,
        }
    }
}

fn compile(raw: RawPolicy, text: &str, file: &str) -> Result<Policy, LoadError> {
    let src = Source {
        text,
        file,
        yaml: false,
    };
    check_version(&raw.version, &src)?;
    let default = raw.default.unwrap_or(Action::Deny);
    let mut rules = Vec::with_capacity(raw.rules.len());
    for (key, raw_rule) in raw.rules {
        let err = |field: &str, message: String| {
            let mut path = vec!["rules", key.as_str()];
            path.extend(field.split('.').filter(|f| !f.is_empty()));
            src.error(&path, message)
        };
        if key.is_empty() {
            return Err(err("", "rules: a rule key is empty".into()));
        }
        let branches = match &raw_rule.when {
            None => Vec::new(),
            Some(list) => compile_when(&key, list, &src)?,
        };
        let action = match (raw_rule.action, &raw_rule.when) {
            (Some(action), _) => action,
            // No branch matched and the rule says nothing else: the default.
            (None, Some(_)) => default,
            (None, None) => {
                return Err(err(
                    "",
                    format!("missing key `action` in rules.{key} (or ordered branches in `when`)"),
                ));
            }
        };
        let rate_limit = match raw_rule.rate_limit {
            None => None,
            Some(rl) => {
                if rl.max == 0 {
                    return Err(err(
                        "rate_limit.max",
                        format!("rules.{key}.rate_limit.max must be at least 1"),
                    ));
                }
                if rl.window == 0 {
                    return Err(err(
                        "rate_limit.window",
                        format!("rules.{key}.rate_limit.window must be at least 1 (seconds)"),
                    ));
                }
                Some(RateLimit::new(rl.max, Duration::from_secs(rl.window)))
            }
        };
        let asks = action == Action::RequireApproval
            || branches.iter().any(|b| b.action == Action::RequireApproval);
        let mut quorum = Quorum::default();
        let approval = match raw_rule.approval {
            None => Approval::default(),
            Some(_) if !asks => {
                return Err(err(
                    "approval",
                    format!(
                        "rules.{key}.approval only applies to action \"require_approval\" (this rule's action is \"{}\")",
                        action.as_str()
                    ),
                ));
            }
            Some(a) => {
                let timeout = a.timeout.unwrap_or(300);
                if timeout == 0 || timeout > MAX_APPROVAL_TIMEOUT {
                    return Err(err(
                        "approval.timeout",
                        format!(
                            "rules.{key}.approval.timeout must be between 1 and {MAX_APPROVAL_TIMEOUT} seconds, got {timeout}"
                        ),
                    ));
                }
                if let Some(max) = a.max_grant
                    && max > MAX_GRANT
                {
                    return Err(err(
                        "approval.max_grant",
                        format!(
                            "rules.{key}.approval.max_grant must be between 0 (no grants) and {MAX_GRANT} seconds, got {max}"
                        ),
                    ));
                }
                quorum = compile_quorum(&a, timeout, &key, &err)?;
                Approval {
                    timeout: Duration::from_secs(timeout),
                    on_timeout: a.on_timeout.unwrap_or(OnTimeout::Deny),
                    max_grant: a.max_grant,
                    via: compile_via(&a, &key, &err)?,
                }
            }
        };
        rules.push(Rule {
            key,
            action,
            reason: raw_rule.reason,
            rate_limit,
            approval,
            branches,
            limits: Vec::new(),
            on_tool_change: raw_rule.on_tool_change,
            quorum,
        });
    }
    let mut policy = assemble(default, &raw.hide, rules, None, Format::Airlock, &src)?;
    policy.on_tool_change = raw.on_tool_change.unwrap_or_default();
    for (hint, action) in raw.annotations {
        if !super::HINTS.contains(&hint.as_str()) {
            let known: Vec<String> = super::HINTS.iter().map(|h| (*h).to_owned()).collect();
            return Err(src.error(
                &["annotations", hint.as_str()],
                format!(
                    "unknown annotation `{hint}`: expected one of {}{}",
                    super::HINTS.join(", "),
                    crate::suggest::suggestion(&hint, &known)
                ),
            ));
        }
        policy.annotations.push((hint, action));
    }
    Ok(policy)
}

/// `approvers`, `groups`, `escalate_after` / `escalate_to` of a rule's `approval`.
fn compile_quorum(
    a: &RawApproval,
    timeout: u64,
    key: &str,
    err: &dyn Fn(&str, String) -> LoadError,
) -> Result<Quorum, LoadError> {
    let approvers = a.approvers.unwrap_or(1);
    if approvers == 0 || approvers > MAX_APPROVERS {
        return Err(err(
            "approval.approvers",
            format!(
                "rules.{key}.approval.approvers must be between 1 and {MAX_APPROVERS}, got {approvers}"
            ),
        ));
    }
    let groups = a.groups.clone().unwrap_or_default();
    if a.groups.as_ref().is_some_and(Vec::is_empty) {
        return Err(err(
            "approval.groups",
            format!(
                "rules.{key}.approval.groups is empty: name at least one group, or leave it out to let any approver decide"
            ),
        ));
    }
    if let Some(bad) = groups.iter().find(|g| g.trim().is_empty()) {
        return Err(err(
            "approval.groups",
            format!("rules.{key}.approval.groups has an empty group name ({bad:?})"),
        ));
    }
    let escalate_after = match (a.escalate_after, &a.escalate_to) {
        (None, None) => None,
        (Some(_), None) => {
            return Err(err(
                "approval.escalate_after",
                format!(
                    "rules.{key}.approval.escalate_after needs escalate_to (the group to call in)"
                ),
            ));
        }
        (None, Some(_)) => {
            return Err(err(
                "approval.escalate_to",
                format!(
                    "rules.{key}.approval.escalate_to needs escalate_after (seconds without a decision)"
                ),
            ));
        }
        (Some(after), Some(to)) => {
            if after == 0 || after >= timeout {
                return Err(err(
                    "approval.escalate_after",
                    format!(
                        "rules.{key}.approval.escalate_after must be between 1 and the timeout ({timeout} s) minus one, got {after}"
                    ),
                ));
            }
            if to.trim().is_empty() {
                return Err(err(
                    "approval.escalate_to",
                    format!("rules.{key}.approval.escalate_to must name a group"),
                ));
            }
            Some(Duration::from_secs(after))
        }
    };
    Ok(Quorum {
        approvers,
        groups,
        escalate_after,
        escalate_to: a.escalate_to.clone(),
    })
}

/// The values `approval.via` may list.
const VIA: [&str; 2] = ["approvers", "agent_user"];

/// A rule's `approval.via`, and the combinations with the other approval
/// keys that cannot work (docs/policy.md, "approval.via").
fn compile_via(
    a: &RawApproval,
    key: &str,
    err: &dyn Fn(&str, String) -> LoadError,
) -> Result<Via, LoadError> {
    let Some(list) = &a.via else {
        return Ok(Via::default());
    };
    let bad = |message: String| Err(err("approval.via", message));
    if list.is_empty() {
        return bad(format!(
            "rules.{key}.approval.via is empty: list \"approvers\", \"agent_user\" or both (leave it out for [\"approvers\"])"
        ));
    }
    let mut via = Via {
        approvers: false,
        agent_user: false,
    };
    for item in list {
        let slot = match item.as_str() {
            "approvers" => &mut via.approvers,
            "agent_user" => &mut via.agent_user,
            other => {
                let known: Vec<String> = VIA.iter().map(|v| (*v).to_owned()).collect();
                return bad(format!(
                    "rules.{key}.approval.via has unknown value `{other}`: expected \"approvers\" or \"agent_user\"{}",
                    crate::suggest::suggestion(other, &known)
                ));
            }
        };
        if *slot {
            return bad(format!("rules.{key}.approval.via lists `{item}` twice"));
        }
        *slot = true;
    }
    if via.agent_user && a.approvers.is_some_and(|n| n > 1) {
        return bad(format!(
            "rules.{key}.approval.via includes \"agent_user\", which cannot be combined with approval.approvers > 1: the agent's user is one person deciding alone, so a two-person rule would be waived (remove agent_user, or set approvers to 1)"
        ));
    }
    if via.agent_user_only() {
        let approver_keys = [
            ("groups", a.groups.is_some()),
            ("escalate_after", a.escalate_after.is_some()),
            ("escalate_to", a.escalate_to.is_some()),
        ];
        if let Some((name, _)) = approver_keys.iter().find(|(_, set)| *set) {
            return bad(format!(
                "rules.{key}.approval.via is [\"agent_user\"] only, so approval.{name} has no one to apply to (approvers cannot approve these calls): add \"approvers\" to via, or remove {name}"
            ));
        }
    }
    Ok(via)
}

/// Compiles a rule's `when` list; each branch knows its line for `airlock check`.
fn compile_when(key: &str, list: &[RawBranch], src: &Source<'_>) -> Result<Vec<Branch>, LoadError> {
    let (when_line, when_column) = locate(src.text, &["rules", key, "when"]);
    let lines = array_item_lines(src.text, &["rules", key, "when"]);
    let mut branches = Vec::with_capacity(list.len());
    for (i, raw) in list.iter().enumerate() {
        let line = lines.get(i).copied().unwrap_or(when_line);
        let when = match &raw.conditions {
            None => Cond::All(Vec::new()),
            Some(items) => Cond::compile_list(items).map_err(|e| {
                let column = if lines.get(i).is_some() {
                    1
                } else {
                    when_column
                };
                src.error_at(line, column, format!("rules.{key}.when[{i}].if: {e}"))
            })?,
        };
        let label = format!("when {}: {}", i + 1, when.describe());
        branches.push(Branch {
            when,
            action: raw.action,
            reason: raw.reason.clone(),
            label,
            line,
        });
    }
    Ok(branches)
}

pub(super) fn check_version(version: &str, src: &Source<'_>) -> Result<(), LoadError> {
    if version != "1" {
        return Err(src.error(
            &["version"],
            format!("unsupported version `{version}` (expected \"1\")"),
        ));
    }
    Ok(())
}

/// Builds the lookup structures shared by every format: `hide`, exact names
/// and globs in precedence order.
pub(super) fn assemble(
    default: Action,
    hide: &[String],
    rules: Vec<Rule>,
    all_tools: Option<Rule>,
    format: Format,
    src: &Source<'_>,
) -> Result<Policy, LoadError> {
    let mut hide_exact = HashSet::new();
    let mut hide_globs = GlobSetBuilder::new();
    for (i, entry) in hide.iter().enumerate() {
        let path = format!("hide[{i}]");
        if entry.is_empty() {
            return Err(src.error(&["hide"], format!("{path} is empty")));
        }
        if is_glob(entry) {
            hide_globs.add(glob(entry).map_err(|e| src.error(&["hide"], format!("{path}: {e}")))?);
        } else {
            hide_exact.insert(entry.clone());
        }
    }
    let mut exact = HashMap::new();
    let mut glob_entries = Vec::new();
    for (index, rule) in rules.iter().enumerate() {
        if is_glob(&rule.key) {
            let compiled = glob(&rule.key)
                .map_err(|e| src.error(&[rule.key.as_str()], format!("{}: {e}", rule.key)))?;
            glob_entries.push((specificity(&rule.key, index), compiled, index));
        } else {
            exact.insert(rule.key.clone(), index);
        }
    }
    // Most specific first, so the lowest matching index wins (see `Policy::decide`).
    glob_entries.sort_by_key(|entry| entry.0);
    let mut globs = GlobSetBuilder::new();
    let mut glob_rules = Vec::with_capacity(glob_entries.len());
    for (_, compiled, rule) in glob_entries {
        globs.add(compiled);
        glob_rules.push(rule);
    }
    let build = |b: GlobSetBuilder, what: &str| {
        b.build()
            .map_err(|e| src.error_at(1, 1, format!("{what}: {e}")))
    };
    Ok(Policy {
        default,
        hide: hide.to_vec(),
        hide_exact,
        hide_globs: build(hide_globs, "hide")?,
        exact,
        globs: build(globs, "rules")?,
        glob_rules,
        rules,
        all_tools,
        format,
        annotations: Vec::new(),
        on_tool_change: OnToolChange::Warn,
    })
}

/// Sort key for glob precedence: more literal characters first, then fewer
/// wildcards, then earlier in the file.
pub(super) fn specificity(pattern: &str, index: usize) -> (std::cmp::Reverse<usize>, usize, usize) {
    let mut literals = 0;
    let mut wildcards = 0;
    let mut in_class = false;
    for c in pattern.chars() {
        match c {
            '[' if !in_class => {
                in_class = true;
                wildcards += 1;
            }
            ']' if in_class => in_class = false,
            _ if in_class => {}
            '*' | '?' | '{' | '}' | ',' => wildcards += 1,
            _ => literals += 1,
        }
    }
    (std::cmp::Reverse(literals), wildcards, index)
}

/// Whether a rule key is a glob rather than an exact tool name.
pub(super) fn is_glob(key: &str) -> bool {
    key.contains(['*', '?', '[', ']', '{', '}'])
}

pub(super) fn glob(pattern: &str) -> Result<Glob, String> {
    GlobBuilder::new(pattern)
        .literal_separator(false)
        .backslash_escape(true)
        .build()
        .map_err(|e| format!("bad glob `{pattern}`: {}", e.kind()))
}

/// Finds the line and column of a key path (`["rules", "x", "action"]`) in the
/// source text, walking forward one quoted key at a time. Falls back to the
/// last position found.
pub(super) fn locate(text: &str, path: &[&str]) -> (usize, usize) {
    let mut pos = 0;
    for segment in path {
        let quoted = serde_json::to_string(segment).unwrap_or_default();
        if let Some(found) = text[pos..].find(&quoted) {
            pos += found;
        } else {
            break;
        }
    }
    let before = &text[..pos];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, column)
}

/// Lines of the items of the JSON array at `path` (e.g. a rule's `when`),
/// found by scanning the text; empty when the array cannot be found.
fn array_item_lines(text: &str, path: &[&str]) -> Vec<usize> {
    let mut pos = 0;
    for segment in path {
        let quoted = serde_json::to_string(segment).unwrap_or_default();
        match text[pos..].find(&quoted) {
            Some(found) => pos += found + quoted.len(),
            None => return Vec::new(),
        }
    }
    let Some(open) = text[pos..].find('[') else {
        return Vec::new();
    };
    let (mut depth, mut in_string, mut escaped, mut expect_item) = (0usize, false, false, true);
    let mut lines = Vec::new();
    for (offset, c) in text[pos + open..].char_indices() {
        let at = pos + open + offset;
        if in_string {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        if depth == 1 && expect_item && !c.is_whitespace() && c != ']' {
            lines.push(text[..at].matches('\n').count() + 1);
            expect_item = false;
        }
        match c {
            '"' => in_string = true,
            '[' | '{' => depth += 1,
            ']' | '}' => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            ',' if depth == 1 => expect_item = true,
            _ => {}
        }
    }
    lines
}

/// Finds the line and column of a key path in YAML text: each segment is
/// looked for as `key:` (bare or quoted) after the previous one.
pub(super) fn locate_yaml(text: &str, path: &[&str]) -> (usize, usize) {
    let mut pos = 0;
    for segment in path {
        let candidates = [
            format!("{segment}:"),
            format!("\"{segment}\":"),
            format!("'{segment}':"),
        ];
        if let Some(found) = candidates
            .iter()
            .filter_map(|c| text[pos..].find(c.as_str()))
            .min()
        {
            pos += found;
        }
    }
    let before = &text[..pos];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, column)
}
