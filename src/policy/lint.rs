//! Warnings about policies that load but probably do not say what was meant:
//! rules that can never match, globs shadowed by other rules, and condition
//! branches that can never be reached.

use super::{Action, Policy, Verdict, load::is_glob};

/// Human-readable warnings for `airlock check`; empty when nothing looks off.
pub fn lint(policy: &Policy) -> Vec<String> {
    let mut warnings = Vec::new();
    for rule in policy.rules() {
        let samples = sample_names(&rule.key);
        let winners: Vec<Verdict<'_>> = samples.iter().map(|s| policy.decide(s)).collect();
        if winners.iter().all(|v| matches!(v, Verdict::Hidden)) {
            warnings.push(format!(
                "rule `{}` can never match: `hide` hides every tool it names",
                rule.key
            ));
            continue;
        }
        if is_glob(&rule.key) {
            let own = |v: &Verdict<'_>| matches!(v, Verdict::Rule(r) if r.key == rule.key);
            if !winners.iter().any(own) {
                let mut by: Vec<&str> = winners
                    .iter()
                    .filter_map(|v| match v {
                        Verdict::Rule(r) => Some(r.key.as_str()),
                        _ => None,
                    })
                    .collect();
                by.dedup();
                warnings.push(format!(
                    "glob rule `{}` looks shadowed: the names it matches are decided by {}",
                    rule.key,
                    by.iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        warnings.extend(shadowed_branches(rule));
        if rule.always(Action::Deny) && rule.rate_limit.is_some() {
            warnings.push(format!(
                "rule `{}` has a rate_limit that never applies: its action is deny",
                rule.key
            ));
        }
    }
    for (hint, action) in &policy.annotations {
        warnings.push(format!(
            "annotations: `{hint}: {}` trusts what the server says about its own tools (annotations are self-declared hints); it decides only tools no rule names",
            action.as_str()
        ));
    }
    warnings
}

/// Branches after one that always matches, and branches whose condition
/// repeats an earlier one: first match wins, so neither is ever reached.
fn shadowed_branches(rule: &super::Rule) -> Vec<String> {
    let mut warnings = Vec::new();
    let line = |l: usize| {
        if l == 0 {
            String::new()
        } else {
            format!(" (line {l})")
        }
    };
    for (i, branch) in rule.branches.iter().enumerate() {
        let earlier = &rule.branches[..i];
        let by = earlier
            .iter()
            .find(|e| e.when.is_always())
            .map(|e| (e, "has no condition and always matches"))
            .or_else(|| {
                earlier
                    .iter()
                    .find(|e| e.when.describe() == branch.when.describe())
                    .map(|e| (e, "has the same condition"))
            });
        if let Some((first, why)) = by {
            let contradicts = if first.action == branch.action {
                String::new()
            } else {
                format!(
                    "; it would {} where `{}` does {}",
                    branch.action.as_str(),
                    first.label,
                    first.action.as_str()
                )
            };
            warnings.push(format!(
                "rule `{}`: branch `{}`{} is never reached: `{}`{} {why}{contradicts}",
                rule.key,
                branch.label,
                line(branch.line),
                first.label,
                line(first.line),
            ));
        }
    }
    warnings
}

/// A few concrete tool names a pattern matches (the pattern itself when exact).
fn sample_names(pattern: &str) -> Vec<String> {
    if !is_glob(pattern) {
        return vec![pattern.to_owned()];
    }
    ["", "x", "_zz9_"]
        .iter()
        .map(|star| expand(pattern, star))
        .collect()
}

fn expand(pattern: &str, star: &str) -> String {
    let mut out = String::new();
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' => out.push_str(star),
            '?' => out.push('q'),
            '\\' => out.extend(chars.next()),
            '[' => {
                let mut first = None;
                for c in chars.by_ref() {
                    if c == ']' && first.is_some() {
                        break;
                    }
                    if first.is_none() && c != '!' && c != '^' {
                        first = Some(c);
                    }
                }
                out.extend(first);
            }
            '{' => {
                let mut taken = false;
                for c in chars.by_ref() {
                    match c {
                        '}' => break,
                        ',' => taken = true,
                        _ if !taken => out.push(c),
                        _ => {}
                    }
                }
            }
            _ => out.push(c),
        }
    }
    out
}
