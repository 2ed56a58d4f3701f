//! Reading a policy file: serde `RawPolicy` → validated, compiled [`Policy`].
//!
//! Every error names the file, line, column and the key path
//! (`rules.odoo_unlink.acton`), and suggests the nearest known key or value.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use globset::{Glob, GlobBuilder, GlobSetBuilder};
use indexmap::IndexMap;
use serde::Deserialize;

use super::{Action, Approval, OnTimeout, Policy, RateLimit, Rule};
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
    version: String,
    #[serde(default)]
    default: Option<Action>,
    #[serde(default)]
    hide: Vec<String>,
    #[serde(default)]
    rules: IndexMap<String, RawRule>,
    /// Free text for humans; ignored.
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    action: Action,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    rate_limit: Option<RawRateLimit>,
    #[serde(default)]
    approval: Option<RawApproval>,
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
}

/// Longest approval wait a policy may ask for: one week.
pub const MAX_APPROVAL_TIMEOUT: u64 = 7 * 24 * 3600;

/// Reads and compiles a policy file.
pub fn load_file(path: &Path) -> Result<Policy, LoadError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        file: file.clone(),
        source,
    })?;
    parse_str(&text, &file)
}

/// Parses and compiles policy text; `file` is only used in error messages.
pub fn parse_str(text: &str, file: &str) -> Result<Policy, LoadError> {
    let raw = deserialize(text, file)?;
    compile(raw, text, file)
}

fn deserialize(text: &str, file: &str) -> Result<RawPolicy, LoadError> {
    let de = &mut serde_json::Deserializer::from_str(text);
    let result: Result<RawPolicy, _> = serde_path_to_error::deserialize(de);
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
fn explain_serde_error(path: &str, message: &str) -> String {
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

fn compile(raw: RawPolicy, text: &str, file: &str) -> Result<Policy, LoadError> {
    let invalid = |path: &[&str], message: String| {
        let (line, column) = locate(text, path);
        LoadError::Invalid {
            file: file.to_owned(),
            line,
            column,
            message,
        }
    };
    if raw.version != "1" {
        return Err(invalid(
            &["version"],
            format!("unsupported version `{}` (expected \"1\")", raw.version),
        ));
    }

    let mut hide_exact = HashSet::new();
    let mut hide_globs = GlobSetBuilder::new();
    for (i, entry) in raw.hide.iter().enumerate() {
        let path = format!("hide[{i}]");
        if entry.is_empty() {
            return Err(invalid(&["hide"], format!("{path} is empty")));
        }
        if is_glob(entry) {
            hide_globs.add(glob(entry).map_err(|e| invalid(&["hide"], format!("{path}: {e}")))?);
        } else {
            hide_exact.insert(entry.clone());
        }
    }

    let mut rules = Vec::with_capacity(raw.rules.len());
    let mut exact = HashMap::new();
    let mut glob_entries = Vec::new();
    for (index, (key, raw_rule)) in raw.rules.into_iter().enumerate() {
        let at = |field: &str| -> Vec<String> {
            let mut p = vec!["rules".to_owned(), key.clone()];
            if !field.is_empty() {
                p.extend(field.split('.').map(str::to_owned));
            }
            p
        };
        let err = |field: &str, message: String| {
            let path = at(field);
            let refs: Vec<&str> = path.iter().map(String::as_str).collect();
            invalid(&refs, message)
        };
        if key.is_empty() {
            return Err(err("", "rules: a rule key is empty".into()));
        }
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
        let approval = match raw_rule.approval {
            None => Approval::default(),
            Some(_) if raw_rule.action != Action::RequireApproval => {
                return Err(err(
                    "approval",
                    format!(
                        "rules.{key}.approval only applies to action \"require_approval\" (this rule's action is \"{}\")",
                        raw_rule.action.as_str()
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
                Approval {
                    timeout: Duration::from_secs(timeout),
                    on_timeout: a.on_timeout.unwrap_or(OnTimeout::Deny),
                }
            }
        };
        if is_glob(&key) {
            let compiled = glob(&key).map_err(|e| err("", format!("rules.{key}: {e}")))?;
            glob_entries.push((specificity(&key, index), compiled, rules.len()));
        } else {
            exact.insert(key.clone(), rules.len());
        }
        rules.push(Rule {
            key,
            action: raw_rule.action,
            reason: raw_rule.reason,
            rate_limit,
            approval,
        });
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
        b.build().map_err(|e| LoadError::Invalid {
            file: file.to_owned(),
            line: 1,
            column: 1,
            message: format!("{what}: {e}"),
        })
    };
    Ok(Policy {
        default: raw.default.unwrap_or(Action::Deny),
        hide_exact,
        hide_globs: build(hide_globs, "hide")?,
        exact,
        globs: build(globs, "rules")?,
        glob_rules,
        rules,
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

fn glob(pattern: &str) -> Result<Glob, String> {
    GlobBuilder::new(pattern)
        .literal_separator(false)
        .backslash_escape(true)
        .build()
        .map_err(|e| format!("bad glob `{pattern}`: {}", e.kind()))
}

/// Finds the line and column of a key path (`["rules", "x", "action"]`) in the
/// source text, walking forward one quoted key at a time. Falls back to the
/// last position found.
fn locate(text: &str, path: &[&str]) -> (usize, usize) {
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
