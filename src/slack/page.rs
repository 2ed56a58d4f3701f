//! HTML of the confirm page and its notices. Same look as the dashboard (its
//! `/app.css` plus the small `/slack/confirm.css`), phone-first, and CSP-clean:
//! no script at all, no inline style. Every untrusted value is escaped.

use chrono::{DateTime, Utc};

use super::links::Actions;
use crate::hold::PendingItem;

pub use crate::html::esc;

fn layout(title: &str, head_extra: &str, main: &str) -> String {
    const FOOT: &str = r#"
    <p class="confirm-foot muted"><a href="/">Open the dashboard</a></p>"#;
    crate::html::page(title, head_extra, main, "same-origin", FOOT)
}

/// What the confirm page needs.
pub struct Confirm<'a> {
    pub item: &'a PendingItem,
    pub actions: Actions,
    /// The form's target (this page's path).
    pub action_path: &'a str,
    pub csrf: &'a str,
    /// Links without login ask for an optional name.
    pub ask_name: bool,
    /// The logged-in approver, when links need a login.
    pub approver: Option<&'a str>,
    pub now: DateTime<Utc>,
}

fn expires_text(expires_at: &str, now: DateTime<Utc>) -> String {
    match DateTime::parse_from_rfc3339(expires_at) {
        Ok(t) => {
            let t = t.with_timezone(&Utc);
            let left = (t - now).num_seconds().max(0);
            format!(
                "{} (in {})",
                t.format("%Y-%m-%d %H:%M:%S UTC"),
                super::message::human_duration(left)
            )
        }
        Err(_) => expires_at.to_owned(),
    }
}

/// The page a decision link opens: the whole call, then the buttons.
pub fn confirm(c: &Confirm<'_>) -> String {
    let item = c.item;
    let arguments = serde_json::to_string_pretty(&item.arguments)
        .unwrap_or_else(|_| item.arguments.to_string());
    let reason = match item.reason.as_deref().filter(|r| !r.is_empty()) {
        Some(r) => format!(
            r#"<p class="card-reason"><span class="reason-label">Reason:</span> {}</p>"#,
            esc(r)
        ),
        None => String::new(),
    };
    let mut form = format!(
        r#"<input type="hidden" name="csrf" value="{}">"#,
        esc(c.csrf)
    );
    if c.ask_name {
        form.push_str(
            r#"
        <label for="name">Your name <span class="muted">(optional, recorded with the decision)</span></label>
        <input type="text" id="name" name="name" maxlength="64" autocomplete="name">"#,
        );
    }
    form.push_str(
        r#"
        <label for="comment">Comment <span class="muted">(optional)</span></label>
        <textarea id="comment" name="comment" rows="2" maxlength="4096"></textarea>"#,
    );
    if let Some(who) = c.approver {
        form.push_str(&format!(
            r#"
        <p class="confirm-as muted">Deciding as <strong>{}</strong></p>"#,
            esc(who)
        ));
    }
    let buttons = if c.actions.allows_approve() {
        r#"<div class="confirm-actions">
          <button type="submit" name="action" value="approve" class="btn btn-approve" id="approve">Approve</button>
          <button type="submit" name="action" value="deny" class="btn btn-deny" id="deny">Deny</button>
        </div>"#
    } else {
        r#"<div class="confirm-actions single">
          <button type="submit" name="action" value="deny" class="btn btn-deny" id="deny">Deny</button>
        </div>
        <p class="muted confirm-note">This link can only deny. Use the Approve link, or the dashboard, to approve.</p>"#
    };
    let main = format!(
        r#"    <article class="card confirm-card" aria-labelledby="call-title">
      <p class="confirm-kicker">Approval needed</p>
      <h1 class="card-tool" id="call-title"><code>{tool}</code> on <code>{upstream}</code></h1>
      <dl class="card-meta">
        <div><dt>Agent</dt><dd>{agent}</dd></div>
        <div><dt>Rule</dt><dd><code>{rule}</code></dd></div>
        <div><dt>Expires</dt><dd>{expires}</dd></div>
        <div class="meta-minor"><dt>Request</dt><dd>{id}</dd></div>
      </dl>
      {reason}
      <section class="card-args" aria-label="Arguments">
        <h3>Arguments</h3>
        <pre class="confirm-args" id="arguments">{arguments}</pre>
      </section>
      <form method="post" action="{action}" class="confirm-form">
        {form}
        {buttons}
      </form>
    </article>"#,
        tool = esc(&item.tool),
        upstream = esc(&item.upstream),
        agent = esc(&item.agent),
        rule = esc(&item.rule),
        expires = esc(&expires_text(&item.expires_at, c.now)),
        id = esc(&item.id),
        arguments = esc(&arguments),
        action = esc(c.action_path),
    );
    layout(&format!("Approve {}?", item.tool), "", &main)
}

/// How a notice reads.
#[derive(Clone, Copy)]
pub enum Tone {
    Ok,
    Bad,
    Warn,
    Info,
}

/// A page that only says something ("this link has expired", "approved").
pub fn notice(tone: Tone, heading: &str, details: &[String]) -> String {
    let (class, icon) = match tone {
        Tone::Ok => ("notice-ok", "✅"),
        Tone::Bad => ("notice-bad", "⛔"),
        Tone::Warn => ("notice-warn", "⌛"),
        Tone::Info => ("notice-info", "ℹ️"),
    };
    let paragraphs: String = details
        .iter()
        .map(|d| format!("\n      <p>{}</p>", esc(d)))
        .collect();
    let main = format!(
        r#"    <article class="card confirm-card notice {class}" role="status">
      <h1 id="notice"><span aria-hidden="true">{icon}</span> {heading}</h1>{paragraphs}
    </article>"#,
        heading = esc(heading),
    );
    layout(heading, "", &main)
}

/// A page that reloads itself at once (so a `SameSite=Strict` login cookie,
/// withheld on the navigation from Slack, is sent on the second request).
pub fn reload(to: &str) -> String {
    let main = format!(
        r#"    <article class="card confirm-card notice notice-info">
      <h1>Checking your login…</h1>
      <p><a href="{to}">Continue</a></p>
    </article>"#,
        to = esc(to)
    );
    layout(
        "Checking your login",
        &format!(
            r#"<meta http-equiv="refresh" content="0; url={}">"#,
            esc(to)
        ),
        &main,
    )
}

/// A notice with a login link (links that need an approver login).
pub fn login_needed() -> String {
    let main = r#"    <article class="card confirm-card notice notice-info">
      <h1 id="notice">Log in to decide</h1>
      <p>Decision links on this gateway need an approver login. Log in on the dashboard in this browser, then open the link from Slack again.</p>
      <p><a class="btn btn-primary" href="/login">Log in</a></p>
    </article>"#;
    layout("Log in to decide", "", main)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untrusted_text_is_escaped_and_nothing_is_inline() {
        let item = PendingItem {
            id: "id-1".into(),
            tool: "<script>alert(1)</script>".into(),
            upstream: "up".into(),
            agent: "\"><img src=x onerror=alert(1)>".into(),
            session: "s".into(),
            arguments: serde_json::json!({ "q": "</pre><script>x</script>" }),
            rule: "r".into(),
            reason: Some("<b>".into()),
            created_at: "2026-01-01T00:00:00Z".into(),
            expires_at: "2026-01-01T00:05:00Z".into(),
            via: None,
        };
        let html = confirm(&Confirm {
            item: &item,
            actions: Actions::ApproveOrDeny,
            action_path: "/approve/t",
            csrf: "c",
            ask_name: true,
            approver: None,
            now: Utc::now(),
        });
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("<img src=x"), "{html}");
        assert!(!html.contains("<b>"), "{html}");
        assert!(!html.contains("style="), "{html}");
        assert!(!html.contains("</pre><script"), "{html}");
    }
}
