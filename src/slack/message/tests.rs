use chrono::TimeZone;
use serde_json::json;

use super::*;

fn item(arguments: Value) -> PendingItem {
    PendingItem {
        id: "0193a1b2-0000-7000-8000-000000000001".into(),
        tool: "delete_record".into(),
        upstream: "odoo".into(),
        agent: "claude-desktop".into(),
        session: "s1".into(),
        arguments,
        rule: "delete_*".into(),
        reason: Some("destructive".into()),
        created_at: "2026-11-25T10:00:00.000Z".into(),
        expires_at: "2026-11-25T10:05:00.000Z".into(),
        via: None,
    }
}

fn links() -> Buttons {
    Buttons::Links {
        approve: "https://airlock.example/approve/A".into(),
        deny: "https://airlock.example/approve/D".into(),
        details: "https://airlock.example/".into(),
    }
}

fn resolution(
    decision: Verdict,
    decider: Option<&str>,
    channel: &str,
    after_secs: i64,
) -> Resolution {
    let when = Utc.with_ymd_and_hms(2026, 11, 25, 10, 0, 0).unwrap()
        + chrono::Duration::seconds(after_secs);
    Resolution {
        verdict: decision,
        outcome: if decision == Verdict::Approved {
            Outcome::Allowed
        } else {
            Outcome::Refused
        },
        decider: decider.map(str::to_owned),
        channel: channel.into(),
        comment: None,
        reason: None,
        at: when,
    }
}

/// Every text in a message, with where it is.
fn texts(message: &Value) -> Vec<(String, String)> {
    fn walk(v: &Value, path: String, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(map) => {
                if let (Some(Value::String(kind)), Some(Value::String(text))) =
                    (map.get("type"), map.get("text"))
                {
                    out.push((format!("{path}:{kind}"), text.clone()));
                }
                for (k, v) in map {
                    walk(v, format!("{path}/{k}"), out);
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    walk(v, format!("{path}/{i}"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(message, String::new(), &mut out);
    out
}

#[test]
fn held_message_snapshot() {
    let m = held(&item(json!({ "id": 42 })), &links());
    let expected = json!({
        "text": "Approval needed: delete_record on odoo (agent claude-desktop)",
        "blocks": [
            { "type": "header", "text": { "type": "plain_text", "text": "delete_record on odoo needs approval", "emoji": true } },
            { "type": "section", "fields": [
                { "type": "mrkdwn", "text": "*Agent*\nclaude-desktop" },
                { "type": "mrkdwn", "text": "*Rule*\n`delete_*`" },
                { "type": "mrkdwn", "text": "*Reason*\ndestructive" },
                { "type": "mrkdwn", "text": "*Expires*\n<!date^1795601100^{date_short_pretty} at {time_secs}|2026-11-25 10:05:00 UTC> (after 5 min)" }
            ] },
            { "type": "section", "text": { "type": "mrkdwn", "text": "*Arguments*\n```{\n  \"id\": 42\n}```" } },
            { "type": "actions", "block_id": "airlock_decide", "elements": [
                { "type": "button", "text": { "type": "plain_text", "text": "Approve", "emoji": true }, "action_id": "approve_link", "style": "primary", "url": "https://airlock.example/approve/A" },
                { "type": "button", "text": { "type": "plain_text", "text": "Deny", "emoji": true }, "action_id": "deny_link", "style": "danger", "url": "https://airlock.example/approve/D" },
                { "type": "button", "text": { "type": "plain_text", "text": "Details", "emoji": true }, "action_id": "details_link", "url": "https://airlock.example/" }
            ] },
            { "type": "context", "elements": [
                { "type": "mrkdwn", "text": "Request `0193a1b2-0000-7000-8000-000000000001` · Approve and Deny open a confirm page on Airlock; nothing is decided until you confirm there." }
            ] }
        ]
    });
    assert_eq!(m, expected, "{}", serde_json::to_string_pretty(&m).unwrap());
}

#[test]
fn hostile_arguments_cannot_ping_or_disguise_links() {
    let mut it = item(
        json!({ "note": "<!channel> see <https://evil.example|click here> & ```break out```" }),
    );
    it.agent = "<@U123> agent".into();
    it.reason = Some("<!here>".into());
    let m = held(&it, &links());
    for (path, text) in texts(&m) {
        if path.ends_with(":mrkdwn") {
            let outside_date = text.replace("<!date^", "");
            assert!(!outside_date.contains("<!"), "{path}: {text}");
            assert!(!text.contains("<https://evil"), "{path}: {text}");
            assert!(!text.contains("<@"), "{path}: {text}");
        }
    }
    let args = &m["blocks"][2]["text"]["text"];
    let args = args.as_str().unwrap();
    assert!(args.contains("&lt;!channel&gt;"), "{args}");
    assert!(args.contains("&amp;"), "{args}");
    assert_eq!(
        args.matches("```").count(),
        2,
        "only our own fences: {args}"
    );
}

#[test]
fn huge_arguments_stay_within_slack_limits_and_say_what_was_cut() {
    let huge = "x<".repeat(50_000);
    let mut it = item(json!({ "blob": huge }));
    it.tool = "t".repeat(400);
    it.reason = Some("r".repeat(5000));
    let m = held(&it, &links());
    let blocks = m["blocks"].as_array().unwrap();
    assert!(blocks.len() <= BLOCK_LIMIT);
    let header = blocks[0]["text"]["text"].as_str().unwrap();
    assert!(
        header.encode_utf16().count() <= HEADER_LIMIT,
        "{}",
        header.len()
    );
    for (path, text) in texts(&m) {
        assert!(
            text.encode_utf16().count() <= SECTION_LIMIT,
            "{path}: {}",
            text.len()
        );
        assert!(
            !text.ends_with("&l") && !text.ends_with("&lt"),
            "escape split at {path}"
        );
    }
    let all: String = texts(&m)
        .into_iter()
        .map(|(_, t)| t)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        all.contains("of 100,016 characters of arguments not shown"),
        "{all}"
    );
    assert!(
        all.contains("more characters)"),
        "the reason says it was cut"
    );
    assert!(
        blocks.iter().any(|b| b["type"] == "actions"),
        "buttons survive the cut"
    );
}

#[test]
fn interactive_buttons_carry_the_pending_id_and_a_confirm_step() {
    let it = item(json!({}));
    let m = held(
        &it,
        &Buttons::Interactive {
            details: "https://a.example/".into(),
        },
    );
    let actions = m["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["type"] == "actions")
        .unwrap();
    let approve = &actions["elements"][0];
    assert_eq!(approve["action_id"], "approve");
    assert_eq!(approve["value"], it.id.as_str());
    assert_eq!(approve["confirm"]["confirm"]["text"], "Approve");
    assert_eq!(actions["elements"][1]["action_id"], "deny");
    assert!(approve.get("url").is_none());
}

#[test]
fn outcome_lines_read_like_sentences() {
    let it = item(json!({}));
    assert_eq!(
        outcome_line(
            &it,
            &resolution(Verdict::Approved, Some("alice"), "dashboard", 42)
        ),
        "✅ approved by alice via dashboard after 42 s"
    );
    assert_eq!(
        outcome_line(
            &it,
            &resolution(Verdict::Denied, Some("bob (Slack link)"), "slack-link", 125)
        ),
        "❌ denied by bob (Slack link) after 2 min 5 s"
    );
    assert_eq!(
        outcome_line(&it, &resolution(Verdict::TimedOut, None, "timeout", 300)),
        "⌛ timed out after 5 min — denied"
    );
    assert_eq!(
        outcome_line(&it, &resolution(Verdict::Cancelled, None, "agent", 3)),
        "🚫 cancelled after 3 s"
    );
    let mut r = resolution(Verdict::Denied, Some("<!channel>"), "api", 1);
    r.comment = Some("no <https://x|way>".into());
    let f = followup(&it, &r);
    let text = f["blocks"][0]["text"]["text"].as_str().unwrap();
    assert_eq!(
        text,
        "❌ denied by &lt;!channel&gt; via API after 1 s\n>no &lt;https://x|way&gt;"
    );
}

#[test]
fn a_call_only_the_agents_user_may_approve_offers_approvers_deny_only() {
    let mut only_user = item(json!({"id": 7}));
    only_user.via = Some(vec!["agent_user"]);
    for buttons in [
        links(),
        Buttons::Interactive {
            details: "https://airlock.example/".into(),
        },
    ] {
        let message = held(&only_user, &buttons);
        let ids: Vec<&str> = message["blocks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["type"] == "actions")
            .flat_map(|b| b["elements"].as_array().unwrap())
            .filter_map(|e| e["action_id"].as_str())
            .collect();
        assert!(!ids.iter().any(|id| id.starts_with("approve")), "{ids:?}");
        assert!(ids.iter().any(|id| id.starts_with("deny")), "{ids:?}");
        assert!(
            message
                .to_string()
                .contains("Only the agent's user can approve this call")
        );
    }
    // Both asked: approvers keep Approve.
    let mut both = item(json!({"id": 7}));
    both.via = Some(vec!["approvers", "agent_user"]);
    assert!(held(&both, &links()).to_string().contains("approve_link"));
}
