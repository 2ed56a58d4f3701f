//! `airlock replay POLICY --audit PATH`: runs a candidate policy against the
//! recorded calls of an audit store and lists those whose outcome would change.
//!
//! Each first decision of a call (`allowed`, `denied`, `hidden`,
//! `approval_requested`) is decided again with the recorded tool, arguments,
//! agent, upstream and session, spending no rate-limit budget. Rows that
//! depend on live state are skipped: `rate_limited`, the steps of a hold
//! after it was requested, and the retries of approved calls.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use rusqlite::{Connection, OpenFlags};
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
    audit: &Path,
    upstream: Option<&str>,
    format: CheckFormat,
) -> anyhow::Result<ExitCode> {
    let policy = policy::load_file(policy_file)?;
    let conn = Connection::open_with_flags(audit, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .with_context(|| format!("cannot open the audit store {}", audit.display()))?;
    let mut statement = conn.prepare(
        "SELECT seq, at, decision, session, agent, upstream, tool, arguments, reason, pending_id \
         FROM audit WHERE decision IN ('allowed', 'denied', 'hidden', 'approval_requested') \
         AND tool IS NOT NULL ORDER BY seq",
    )?;
    let mut rows = statement.query([])?;
    let (mut replayed, mut changes) = (0u64, Vec::new());
    while let Some(row) = rows.next()? {
        let text = |i: usize| -> rusqlite::Result<String> {
            Ok(row.get::<_, Option<String>>(i)?.unwrap_or_default())
        };
        let (decision, reason, pending) = (text(2)?, text(8)?, text(9)?);
        let row_upstream = text(5)?;
        // An approved hold's outcome and the retries it covers are not
        // first decisions.
        if (decision == "allowed" && (!pending.is_empty() || reason.contains("retry")))
            || upstream.is_some_and(|u| u != row_upstream)
        {
            continue;
        }
        let Some(was) = recorded(&decision) else {
            continue;
        };
        let (tool, arguments, agent, session) = (text(6)?, text(7)?, text(4)?, text(3)?);
        let args = (!arguments.is_empty()).then_some(arguments.as_str());
        let facts = Facts::new(&tool, args, &agent, &row_upstream, &session);
        let (now, rule) = now_outcome(&gate::decide_retry(&policy, &facts));
        replayed += 1;
        if now != was {
            changes.push(Change {
                seq: row.get(0)?,
                at: text(1)?,
                tool,
                agent,
                upstream: row_upstream,
                was,
                now,
                rule,
            });
        }
    }
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
