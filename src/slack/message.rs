//! Block Kit: the message for a held call, and what became of it.
//!
//! Everything an agent controls (tool, agent name, arguments, reason) is
//! untrusted. In `mrkdwn` text it is escaped (`&`, `<`, `>`), so arguments
//! holding `<!channel>` or `<https://evil|click>` can neither ping a channel
//! nor disguise a link; runs of backticks inside a code block are broken up
//! with a zero-width space so they cannot close it. Every text is cut to
//! Slack's limits (3,000 characters per section, 150 per header, 50 blocks)
//! and says how much was cut; the confirm page always shows the whole call.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::hold::{Outcome, PendingItem, Resolution, Verdict};

/// Slack's limit on a section's text.
pub const SECTION_LIMIT: usize = 3000;
/// Slack's limit on a header's text.
pub const HEADER_LIMIT: usize = 150;
/// Slack's limit on blocks per message.
pub const BLOCK_LIMIT: usize = 50;
/// Arguments get at most this many sections; the rest is cut.
const ARGUMENT_SECTIONS: usize = 3;
/// Short untrusted values (agent, reason) are cut here to keep the message scannable.
const SHORT_LIMIT: usize = 300;

/// The decision buttons of a held-call message.
pub enum Buttons {
    /// Incoming webhook: URL buttons that open the confirm page.
    Links {
        approve: String,
        deny: String,
        details: String,
    },
    /// Slack-app mode: interactive buttons (`action_id` approve/deny,
    /// `value` = pending id) answered at `POST /slack/interactions`.
    Interactive { details: String },
}

/// Escapes text for `mrkdwn` (Slack's three control characters).
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        push_escaped(&mut out, c, false, None);
    }
    out
}

/// Appends one character escaped; in code, a backtick after a backtick gets a
/// zero-width space first so "```" cannot end the block.
fn push_escaped(out: &mut String, c: char, in_code: bool, prev: Option<char>) {
    match c {
        '&' => out.push_str("&amp;"),
        '<' => out.push_str("&lt;"),
        '>' => out.push_str("&gt;"),
        '`' if in_code && prev == Some('`') => out.push_str("\u{200b}`"),
        c => out.push(c),
    }
}

/// Length as Slack counts it (UTF-16 code units; never less than characters).
fn slack_len(text: &str) -> usize {
    text.encode_utf16().count()
}

/// Escapes as much of `raw` as fits in `budget`; returns the text and how
/// many characters of `raw` it covers. Escapes are never split. When it has
/// to cut and a line break lies in the second half, it cuts there.
fn escape_within(raw: &str, budget: usize, in_code: bool) -> (String, usize) {
    let mut out = String::new();
    let mut used = 0;
    let mut taken = 0;
    let mut prev = None;
    let mut last_newline: Option<(usize, usize)> = None; // (out byte len, chars taken) after a '\n'
    let mut piece = String::new();
    for c in raw.chars() {
        piece.clear();
        push_escaped(&mut piece, c, in_code, prev);
        let cost = slack_len(&piece);
        if used + cost > budget {
            if let Some((bytes, chars)) = last_newline.filter(|(_, chars)| *chars * 2 >= taken) {
                out.truncate(bytes);
                return (out, chars);
            }
            return (out, taken);
        }
        out.push_str(&piece);
        used += cost;
        taken += 1;
        prev = Some(c);
        if c == '\n' {
            last_newline = Some((out.len(), taken));
        }
    }
    (out, taken)
}

/// Escapes and cuts a short value, saying how much was cut.
fn clip(raw: &str, limit: usize) -> String {
    let total = raw.chars().count();
    let (all, taken) = escape_within(raw, limit, false);
    if taken == total {
        return all;
    }
    let note = |cut: usize| format!("… ({} more characters)", group(cut));
    let room = limit.saturating_sub(slack_len(&note(total)));
    let (text, taken) = escape_within(raw, room, false);
    format!("{text}{}", note(total - taken))
}

/// Cuts plain text (no escaping: Slack does not parse `plain_text`).
fn clip_plain(text: &str, limit: usize) -> String {
    if slack_len(text) <= limit {
        return text.to_owned();
    }
    let mut out = String::new();
    for c in text.chars() {
        if slack_len(&out) + c.len_utf16() + 1 > limit {
            break;
        }
        out.push(c);
    }
    out.push('…');
    out
}

/// An identifier in inline code: backticks (which would end it) become `ˋ`.
fn code(raw: &str, limit: usize) -> String {
    format!("`{}`", clip(&raw.replace('`', "ˋ"), limit))
}

/// 12345 → "12,345".
fn group(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// "42 s", "5 min", "5 min 3 s", "2 h 5 min".
pub fn human_duration(secs: i64) -> String {
    let secs = secs.max(0);
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 if secs % 60 == 0 => format!("{} min", secs / 60),
        60..3600 => format!("{} min {} s", secs / 60, secs % 60),
        _ if secs % 3600 < 60 => format!("{} h", secs / 3600),
        _ => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
    }
}

fn parse_time(t: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(t)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn mrkdwn(text: String) -> Value {
    json!({ "type": "mrkdwn", "text": text })
}

fn plain(text: &str) -> Value {
    json!({ "type": "plain_text", "text": text, "emoji": true })
}

/// The header both messages share: "delete_record on test needs approval".
fn header_text(item: &PendingItem) -> String {
    clip_plain(
        &format!("{} on {} needs approval", item.tool, item.upstream),
        HEADER_LIMIT,
    )
}

/// Agent, rule, reason and expiry as section fields.
fn facts(item: &PendingItem) -> Value {
    let expires = match (parse_time(&item.expires_at), parse_time(&item.created_at)) {
        (Some(expires), Some(created)) => format!(
            "<!date^{}^{{date_short_pretty}} at {{time_secs}}|{}> (after {})",
            expires.timestamp(),
            expires.format("%Y-%m-%d %H:%M:%S UTC"),
            human_duration((expires - created).num_seconds())
        ),
        _ => escape(&item.expires_at),
    };
    let reason = item
        .reason
        .as_deref()
        .filter(|r| !r.is_empty())
        .map(|r| clip(r, SHORT_LIMIT));
    json!({
        "type": "section",
        "fields": [
            mrkdwn(format!("*Agent*\n{}", clip(&item.agent, SHORT_LIMIT))),
            mrkdwn(format!("*Rule*\n{}", code(&item.rule, SHORT_LIMIT))),
            mrkdwn(format!("*Reason*\n{}", reason.unwrap_or_else(|| "_none given_".into()))),
            mrkdwn(format!("*Expires*\n{expires}")),
        ]
    })
}

/// The arguments as code-block sections, plus a note saying how much was cut.
fn arguments(item: &PendingItem) -> Vec<Value> {
    let raw = serde_json::to_string_pretty(&item.arguments)
        .unwrap_or_else(|_| item.arguments.to_string());
    let total = raw.chars().count();
    let mut blocks = Vec::new();
    let mut rest: &str = &raw;
    let mut shown = 0;
    for i in 0..ARGUMENT_SECTIONS {
        let head = if i == 0 { "*Arguments*\n" } else { "" };
        let overhead = slack_len(head) + 6; // the fences
        let (text, taken) = escape_within(rest, SECTION_LIMIT - overhead, true);
        blocks.push(json!({
            "type": "section",
            "text": mrkdwn(format!("{head}```{text}```")),
        }));
        shown += taken;
        let cut_at = rest
            .char_indices()
            .nth(taken)
            .map(|(b, _)| b)
            .unwrap_or(rest.len());
        rest = &rest[cut_at..];
        if rest.is_empty() {
            break;
        }
    }
    if shown < total {
        blocks.push(json!({
            "type": "context",
            "elements": [mrkdwn(format!(
                "✂️ {} of {} characters of arguments not shown here: the confirm page shows the whole call.",
                group(total - shown),
                group(total)
            ))],
        }));
    }
    blocks
}

fn button(text: &str, action_id: &str) -> Value {
    json!({ "type": "button", "text": plain(text), "action_id": action_id })
}

fn actions(item: &PendingItem, buttons: &Buttons) -> Value {
    let elements = match buttons {
        Buttons::Links {
            approve,
            deny,
            details,
        } => {
            let mut a = button("Approve", "approve_link");
            a["style"] = "primary".into();
            a["url"] = approve.as_str().into();
            let mut d = button("Deny", "deny_link");
            d["style"] = "danger".into();
            d["url"] = deny.as_str().into();
            let mut more = button("Details", "details_link");
            more["url"] = details.as_str().into();
            user_decides(item, vec![a, d, more])
        }
        Buttons::Interactive { details } => {
            let mut a = button("Approve", "approve");
            a["style"] = "primary".into();
            a["value"] = item.id.as_str().into();
            a["confirm"] = json!({
                "title": plain("Approve this call?"),
                "text": mrkdwn(format!(
                    "{} on {} runs with the arguments shown.",
                    code(&item.tool, SHORT_LIMIT),
                    code(&item.upstream, SHORT_LIMIT)
                )),
                "confirm": plain("Approve"),
                "deny": plain("Cancel"),
            });
            let mut d = button("Deny", "deny");
            d["style"] = "danger".into();
            d["value"] = item.id.as_str().into();
            let mut more = button("Details", "details_link");
            more["url"] = details.as_str().into();
            user_decides(item, vec![a, d, more])
        }
    };
    json!({ "type": "actions", "block_id": "airlock_decide", "elements": elements })
}

/// Whether only the agent's user may approve this call (`approval.via`
/// without `approvers`): approvers may still deny it.
fn only_user_approves(item: &PendingItem) -> bool {
    item.via
        .as_ref()
        .is_some_and(|via| !via.contains(&"approvers"))
}

/// The buttons an approver may use: no Approve when only the agent's user
/// may approve.
fn user_decides(item: &PendingItem, buttons: Vec<Value>) -> Vec<Value> {
    if !only_user_approves(item) {
        return buttons;
    }
    buttons
        .into_iter()
        .filter(|b| !matches!(b["action_id"].as_str(), Some("approve" | "approve_link")))
        .collect()
}

/// The message posted when a tool's definition changed since it was pinned:
/// what changed (the diff, escaped, in a code block) and what its calls meet.
pub fn tool_changed(
    change: &crate::pins::Change,
    mode: crate::policy::OnToolChange,
    public_url: &str,
) -> Value {
    let one_line = |s: &str| -> String {
        s.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect()
    };
    let (tool, upstream) = (one_line(&change.tool), one_line(&change.upstream));
    let meets = match mode {
        crate::policy::OnToolChange::Hold => "its calls wait for approval",
        crate::policy::OnToolChange::Deny => "its calls are refused",
        crate::policy::OnToolChange::Hide => "it is hidden from agents",
        crate::policy::OnToolChange::Warn => "its calls still pass (warn)",
    };
    let (diff, _) = escape_within(&change.diff, SECTION_LIMIT - 20, true);
    json!({
        "text": format!("Tool definition changed: {} on {}", escape(&tool), escape(&upstream)),
        "blocks": [
            { "type": "header", "text": plain(&clip_plain(&format!("Tool definition changed: {tool}"), HEADER_LIMIT)) },
            { "type": "section", "text": mrkdwn(format!(
                "{} on {} changed since it was pinned; until an admin accepts the new definition, {meets} (`on_tool_change: {}`).",
                code(&tool, SHORT_LIMIT), code(&upstream, SHORT_LIMIT), mode.as_str())) },
            { "type": "section", "text": mrkdwn(format!("```{diff}```")) },
            { "type": "context", "elements": [mrkdwn(format!(
                "Accept it on the dashboard ({}/) or with `airlock tools accept`.", escape(public_url)))] },
        ],
    })
}

/// "1 of 2 approvals" for a held call that needs several approvers.
pub fn vote(item: &PendingItem, approvals: &[String], needed: u32) -> Value {
    let text = format!(
        "{} on {}: {} of {needed} approvals ({}). It stays held until {needed} different approvers approve; one deny ends it.",
        code(&item.tool, SHORT_LIMIT),
        code(&item.upstream, SHORT_LIMIT),
        approvals.len(),
        clip(&approvals.join(", "), SHORT_LIMIT)
    );
    json!({
        "text": format!("{} of {needed} approvals: {}", approvals.len(), escape(&item.tool)),
        "blocks": [
            { "type": "section", "text": mrkdwn(text) },
            { "type": "context", "elements": [mrkdwn(format!("Request `{}`", escape(&item.id)))] },
        ],
    })
}

/// Nobody decided a held call in time: the escalation group is called in.
pub fn escalated(
    item: &PendingItem,
    group: &str,
    after_s: u64,
    mentions: &[String],
    public_url: &str,
) -> Value {
    let who = if mentions.is_empty() {
        format!("group {}", code(group, SHORT_LIMIT))
    } else {
        let users: Vec<String> = mentions
            .iter()
            .filter(|u| u.chars().all(|c| c.is_ascii_alphanumeric()))
            .map(|u| format!("<@{u}>"))
            .collect();
        format!("{} (group {})", users.join(" "), code(group, SHORT_LIMIT))
    };
    json!({
        "text": format!("Escalated: {} waits for a decision", escape(&item.tool)),
        "blocks": [
            { "type": "header", "text": plain(&clip_plain(&format!("Escalated: {} waits for a decision", item.tool), HEADER_LIMIT)) },
            { "type": "section", "text": mrkdwn(format!(
                "Nobody decided {} on {} (agent {}) within {}. {who}: you may decide it now, before it times out at {}.",
                code(&item.tool, SHORT_LIMIT), code(&item.upstream, SHORT_LIMIT), code(&item.agent, SHORT_LIMIT),
                human_duration(after_s as i64), escape(&item.expires_at))) },
            { "type": "context", "elements": [mrkdwn(format!("Request `{}` · {}/", escape(&item.id), escape(public_url)))] },
        ],
    })
}

/// The message posted for a held call.
pub fn held(item: &PendingItem, buttons: &Buttons) -> Value {
    let mut blocks = vec![
        json!({ "type": "header", "text": plain(&header_text(item)) }),
        facts(item),
    ];
    blocks.extend(arguments(item));
    blocks.push(actions(item, buttons));
    let note = match buttons {
        Buttons::Links { .. } => {
            "Approve and Deny open a confirm page on Airlock; nothing is decided until you confirm there."
        }
        Buttons::Interactive { .. } => "Only approvers linked to a Slack user can decide here.",
    };
    let note = if only_user_approves(item) {
        "Only the agent's user can approve this call, in their own client; approvers can deny it."
    } else {
        note
    };
    blocks.push(json!({
        "type": "context",
        "elements": [mrkdwn(format!("Request `{}` · {note}", escape(&item.id)))],
    }));
    blocks.truncate(BLOCK_LIMIT);
    json!({
        "text": format!("Approval needed: {} on {} (agent {})", escape(&item.tool), escape(&item.upstream), escape(&item.agent)),
        "blocks": blocks,
    })
}

/// How a channel reads after "approved by alice": "via dashboard", "in Slack", ….
fn via(channel: &str) -> Option<&'static str> {
    match channel {
        "dashboard" => Some("via dashboard"),
        "cli" => Some("via CLI"),
        "api" => Some("via API"),
        "slack" => Some("in Slack"),
        _ => None,
    }
}

/// One line saying what became of a held call, e.g.
/// "✅ approved by alice via dashboard after 42 s" or "⌛ timed out after 5 min — denied".
pub fn outcome_line(item: &PendingItem, resolution: &Resolution) -> String {
    let waited = parse_time(&item.created_at)
        .map(|created| human_duration((resolution.at - created).num_seconds()))
        .unwrap_or_else(|| "a while".into());
    let by = |verb: &str| {
        let mut line = verb.to_owned();
        if let Some(who) = &resolution.decider {
            line.push_str(&format!(" by {}", clip(who, SHORT_LIMIT)));
        }
        if let Some(via) = via(&resolution.channel) {
            line.push_str(&format!(" {via}"));
        }
        format!("{line} after {waited}")
    };
    match resolution.verdict {
        Verdict::Approved => format!("✅ {}", by("approved")),
        Verdict::Denied => format!("❌ {}", by("denied")),
        Verdict::TimedOut if resolution.outcome == Outcome::Allowed => {
            format!("⌛ timed out after {waited} — allowed by policy")
        }
        Verdict::TimedOut => format!("⌛ timed out after {waited} — denied"),
        Verdict::Cancelled => format!("🚫 cancelled after {waited}"),
        Verdict::Shutdown => "⛔ denied: the gateway shut down".to_owned(),
        Verdict::Abandoned => "⛔ abandoned: the gateway holding it stopped".to_owned(),
    }
}

/// The outcome line, the comment (or why it was cancelled, quoted), and
/// which call it was.
fn outcome_blocks(item: &PendingItem, resolution: &Resolution) -> Vec<Value> {
    let mut text = outcome_line(item, resolution);
    if let Some(comment) = crate::hold::note(resolution).filter(|c| !c.is_empty()) {
        text.push_str(&format!(
            "\n>{}",
            clip(comment, SHORT_LIMIT * 2).replace('\n', "\n>")
        ));
    }
    vec![
        json!({ "type": "section", "text": mrkdwn(text) }),
        json!({
            "type": "context",
            "elements": [mrkdwn(format!(
                "{} on {} · agent {} · request `{}`",
                code(&item.tool, SHORT_LIMIT),
                code(&item.upstream, SHORT_LIMIT),
                clip(&item.agent, SHORT_LIMIT),
                escape(&item.id)
            ))],
        }),
    ]
}

fn fallback(item: &PendingItem, resolution: &Resolution) -> String {
    format!(
        "{} on {}: {}",
        escape(&item.tool),
        escape(&item.upstream),
        outcome_line(item, resolution)
    )
}

/// The follow-up posted when a call is decided (an incoming webhook cannot
/// edit its earlier message).
pub fn followup(item: &PendingItem, resolution: &Resolution) -> Value {
    json!({ "text": fallback(item, resolution), "blocks": outcome_blocks(item, resolution) })
}

/// The held-call message as it reads once decided: the call without its
/// buttons, then the outcome (for `chat.update` and `response_url`).
pub fn decided(item: &PendingItem, resolution: &Resolution) -> Value {
    let mut blocks = vec![
        json!({ "type": "header", "text": plain(&clip_plain(&format!("{} on {}", item.tool, item.upstream), HEADER_LIMIT)) }),
        facts(item),
    ];
    blocks.extend(arguments(item));
    blocks.extend(outcome_blocks(item, resolution));
    blocks.truncate(BLOCK_LIMIT);
    json!({ "text": fallback(item, resolution), "blocks": blocks })
}

#[cfg(test)]
mod tests;
