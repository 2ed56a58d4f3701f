//! `airlock replay POLICY --audit PATH | --store URL`: runs a candidate policy against the
//! recorded calls of an audit store and lists those whose outcome would change.
//!
//! Each first decision of a call (`allowed`, `denied`, `hidden`,
//! `approval_requested`) is decided again with the recorded tool, arguments,
//! agent, upstream and session, spending no rate-limit budget. Rows that
//! depend on live state are skipped: `rate_limited`, the steps of a hold
//! after it was requested, and the retries of approved calls.

use std::path::Path;

use super::audit_cmd::Source;
use crate::audit;
use std::process::ExitCode;

use anyhow::Context;
use serde_json::json;

use crate::cli::CheckFormat;
use crate::gate::{self, CallDecision};
use crate::policy::{self, Facts};

/// One recorded call whose outcome the candidate policy changes.
struct Change {
    seq: i64,
    at: String,
    tool: String,
    agent: String,
    upstream: String,
    was: &'static str,
    now: &'static str,
    rule: String,
}

fn recorded(decision: &str) -> Option<&'static str> {
    Some(match decision {
        "allowed" => "allow",
        "denied" => "deny",
        "hidden" => "hidden",
        "approval_requested" => "require_approval",
        _ => return None,
    })
}

fn now_outcome(decision: &CallDecision) -> (&'static str, String) {
    match decision {
        CallDecision::Allow { rule } => ("allow", rule.clone()),
        CallDecision::Refuse(r) | CallDecision::DeniedByDefault(r) => ("deny", r.rule.clone()),
        CallDecision::Hidden => ("hidden", "hide".into()),
        CallDecision::NeedsApproval { rule, .. } => ("require_approval", rule.clone()),
    }
}

pub(super) fn run(
    policy_file: &Path,
    source: &Source,
    upstream: Option<&str>,
    format: CheckFormat,
) -> anyhow::Result<ExitCode> {
    let policy = policy::load_file(policy_file)?;
    let mut db = source.open()?;
    let (mut replayed, mut changes) = (0u64, Vec::new());
    let mut visit = |row: audit::Entry| {
        let text = |v: Option<String>| v.unwrap_or_default();
        let decision = row.decision;
        let Some(tool) = row.tool else {
            return true;
        };
        let (reason, pending) = (text(row.reason), text(row.pending_id));
        let row_upstream = text(row.upstream);
        // An approved hold's outcome and the retries it covers are not
        // first decisions.
        if (decision == "allowed" && (!pending.is_empty() || reason.contains("retry")))
            || upstream.is_some_and(|u| u != row_upstream)
        {
            return true;
        }
        let Some(was) = recorded(&decision) else {
            return true;
        };
        let arguments = row
            .arguments
            .as_ref()
            .map(audit::canonical_json)
            .unwrap_or_default();
        let (agent, session) = (text(row.agent), text(row.session));
        let args = (!arguments.is_empty()).then_some(arguments.as_str());
        let facts = Facts::new(&tool, args, &agent, &row_upstream, &session);
        let (now, rule) = now_outcome(&gate::decide_retry(&policy, &facts));
        replayed += 1;
        if now != was {
            changes.push(Change {
                seq: row.seq,
                at: row.at,
                tool,
                agent,
                upstream: row_upstream,
                was,
                now,
                rule,
            });
        }
        true
    };
    db.scan(1, &mut visit)
        .with_context(|| format!("cannot read the audit store {}", source.label()))?;
    match format {
        CheckFormat::Json => {
            let list: Vec<_> = changes
                .iter()
                .map(|c| {
                    json!({"seq": c.seq, "at": c.at, "tool": c.tool, "agent": c.agent,
                           "upstream": c.upstream, "recorded": c.was, "now": c.now, "rule": c.rule})
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&list)?);
        }
        CheckFormat::Table => {
            for c in &changes {
                println!(
                    "#{} {} {} (agent {}, upstream {}): {} -> {} (rule `{}`)",
                    c.seq, c.at, c.tool, c.agent, c.upstream, c.was, c.now, c.rule
                );
            }
        }
    }
    eprintln!(
        "{replayed} recorded call(s) replayed, {} would change",
        changes.len()
    );
    Ok(ExitCode::SUCCESS)
}
