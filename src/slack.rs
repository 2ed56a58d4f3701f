//! Slack: a message per held call, decision links, Slack-app buttons.
//!
//! - [`message`]: Block Kit for a held call and for what became of it
//!   (escaping and Slack's limits).
//! - [`delivery`]: the notifier task: bounded queue, retries with backoff,
//!   giving up, failures counted and recorded. Holds never wait for Slack.
//! - [`links`]: signed, expiring decision-link tokens; the confirm page's CSRF token.
//! - [`confirm`]: `GET /approve/{token}` shows the call, only `POST` decides
//!   (link unfurlers and mail scanners prefetch GETs); `page` renders HTML.
//! - [`interactions`]: `POST /slack/interactions` (Slack-app mode): signature
//!   first, then the user's approver, then the decision.
//!
//! Every decision goes through [`crate::hold::decide`], so Slack is just
//! another channel: the first decision wins wherever it was made.

pub mod confirm;
pub mod delivery;
pub mod interactions;
pub mod links;
pub mod message;
mod page;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::{get, post};

use crate::audit::AuditError;
use crate::config::SlackConfig;
use crate::gateway::{Gateway, Notifier};
use crate::hold::{PendingItem, Resolution};

/// The Slack side of a running gateway.
pub struct Slack {
    pub config: SlackConfig,
    pub key: Arc<links::LinkKey>,
    pub outbox: delivery::Outbox,
    /// Audit rows for forged links are rate-limited (window start, rows in it):
    /// a scanner hammering the route must not flood the history.
    forged_rows: Mutex<(Instant, u32)>,
    /// `[audit] redact`: the same keys are hidden from Slack (a third party).
    redact: crate::audit::Redactor,
    /// Base of the dashboard link in notices.
    public_url: String,
    /// (group, approver name) of every `[[approver]] groups` entry, for mentions.
    group_members: Vec<(String, String)>,
}

/// Forged-link audit rows per minute; more are only logged.
const FORGED_ROWS_PER_MINUTE: u32 = 30;

impl Slack {
    /// Whether one more forged-link row may be written now.
    fn may_record_forgery(&self) -> bool {
        let mut window = self.forged_rows.lock().expect("forged rows lock");
        if window.0.elapsed() > Duration::from_secs(60) {
            *window = (Instant::now(), 0);
        }
        window.1 += 1;
        window.1 <= FORGED_ROWS_PER_MINUTE
    }
}

/// The running Slack integration. `Gateway` has no slot for per-feature
/// state, and the routes are built without it, so it lives here; there is one
/// gateway per process.
static SLACK: OnceLock<Arc<Slack>> = OnceLock::new();

/// The Slack integration, when `[slack]` is configured.
pub fn current() -> Option<Arc<Slack>> {
    SLACK.get().cloned()
}

/// Why Slack could not start.
#[derive(Debug, thiserror::Error)]
pub enum SlackError {
    #[error("cannot read or keep the Slack link-signing key in the audit store: {0}")]
    LinkKey(#[from] AuditError),
    #[error("the Slack integration is already installed in this process")]
    AlreadyInstalled,
}

/// Starts the delivery task and installs the notifier, when `[slack]` is set.
pub async fn install(gw: &Gateway) -> Result<(), SlackError> {
    let Some(config) = gw.config.slack.clone() else {
        return Ok(());
    };
    let key = Arc::new(links::LinkKey::load(&gw.audit, config.link_key.as_deref()).await?);
    let outbox = delivery::start(gw, config.clone(), key.clone());
    let mode = match (&config.bot_token, &config.signing_secret) {
        (Some(_), _) => "bot (chat.postMessage)",
        (None, Some(_)) => "incoming webhook with Slack-app buttons",
        (None, None) => "incoming webhook with decision links",
    };
    let slack = Arc::new(Slack {
        config,
        key,
        outbox,
        forged_rows: Mutex::new((Instant::now(), 0)),
        redact: gw.config.audit.redact.clone(),
        public_url: gw.config.public_url.clone(),
        group_members: gw
            .config
            .approvers
            .iter()
            .flat_map(|a| a.groups.iter().map(|g| (g.clone(), a.name.clone())))
            .collect(),
    });
    SLACK
        .set(slack.clone())
        .map_err(|_| SlackError::AlreadyInstalled)?;
    gw.set_notifiers(vec![Arc::new(SlackNotifier(slack))]);
    tracing::info!("Slack notifications on: {mode}");
    Ok(())
}

/// The routes: decision links, their stylesheet, and Slack-app interactions.
/// Without `[slack]` they answer 404.
/// Both are open to anyone (their auth is in the body or the link), so
/// their bodies are read under small limits.
pub fn routes() -> Router<Gateway> {
    use crate::api::reading_bodies_first;
    let approve = Router::new()
        .route("/approve/{token}", get(confirm::show).post(confirm::decide))
        .route("/slack/confirm.css", get(confirm::stylesheet));
    let interactions = Router::new().route("/slack/interactions", post(interactions::handle));
    reading_bodies_first(approve, APPROVE_MAX_BODY)
        .merge(reading_bodies_first(interactions, INTERACTIONS_MAX_BODY))
}

/// Largest decision-page form (`POST /approve/{token}`): a comment at most.
pub const APPROVE_MAX_BODY: usize = 64 * 1024;
/// Largest Slack interaction payload (Slack's own are a few KB).
pub const INTERACTIONS_MAX_BODY: usize = 256 * 1024;

/// Queues Slack messages for holds and decisions; never blocks.
struct SlackNotifier(Arc<Slack>);

impl Slack {
    /// The item as Slack may see it: redacted arguments, and one-line short
    /// fields (an agent-chosen name must not fake extra lines in the message).
    pub(crate) fn sanitized(&self, item: &PendingItem) -> PendingItem {
        let one_line = |s: &str| -> String {
            s.chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect()
        };
        let mut item = item.clone();
        self.redact.redact(&mut item.arguments);
        item.agent = one_line(&item.agent);
        item.tool = one_line(&item.tool);
        item.rule = one_line(&item.rule);
        item.reason = item.reason.as_deref().map(one_line);
        item
    }
}

impl Notifier for SlackNotifier {
    fn created(&self, item: &PendingItem) {
        self.0
            .outbox
            .push(delivery::Job::Held(self.0.sanitized(item)));
    }

    fn resolved(&self, item: &PendingItem, resolution: &Resolution) {
        self.0.outbox.push(delivery::Job::Resolved(
            self.0.sanitized(item),
            resolution.clone(),
        ));
    }

    fn vote(&self, item: &PendingItem, approvals: &[String], needed: u32) {
        let item = self.0.sanitized(item);
        self.0.outbox.push(delivery::Job::Notice {
            what: "approval-count message",
            body: message::vote(&item, approvals, needed),
        });
    }

    fn escalated(&self, item: &PendingItem, group: &str, after_s: u64) {
        let item = self.0.sanitized(item);
        // Mention the group's members who are linked to a Slack user.
        let mentions: Vec<String> = self
            .0
            .config
            .users
            .iter()
            .filter(|(_, name)| {
                self.0
                    .group_members
                    .iter()
                    .any(|(g, n)| g == group && n == name)
            })
            .map(|(user, _)| user.clone())
            .collect();
        self.0.outbox.push(delivery::Job::Notice {
            what: "escalation message",
            body: message::escalated(&item, group, after_s, &mentions, &self.0.public_url),
        });
    }

    fn tool_changed(&self, change: &crate::pins::Change, mode: crate::policy::OnToolChange) {
        self.0.outbox.push(delivery::Job::Notice {
            what: "tool-changed message",
            body: message::tool_changed(change, mode, &self.0.public_url),
        });
    }
}

/// `application/x-www-form-urlencoded` pairs (forms and Slack's payloads).
pub(crate) fn form_pairs(body: &[u8]) -> Vec<(String, String)> {
    fn decode(part: &str) -> String {
        let bytes = part.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    match u8::from_str_radix(
                        std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"),
                        16,
                    ) {
                        Ok(b) => {
                            out.push(b);
                            i += 2;
                        }
                        Err(_) => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// The first value of a form field.
pub(crate) fn form_value<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// "just now", "12 s ago", "2 min ago", "3 h ago", "on 2026-11-25".
pub(crate) fn ago(
    when: chrono::DateTime<chrono::Utc>,
    now: chrono::DateTime<chrono::Utc>,
) -> String {
    let secs = (now - when).num_seconds();
    match secs {
        ..5 => "just now".into(),
        5..60 => format!("{secs} s ago"),
        60..3600 => format!("{} min ago", secs / 60),
        3600..86_400 => format!("{} h ago", secs / 3600),
        _ => format!("on {}", when.format("%Y-%m-%d")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_decode_plus_and_percent() {
        let pairs = form_pairs(b"a=1+2&b=%3C%21channel%3E&c=&d&e=%zz%4");
        assert_eq!(form_value(&pairs, "a"), Some("1 2"));
        assert_eq!(form_value(&pairs, "b"), Some("<!channel>"));
        assert_eq!(form_value(&pairs, "c"), Some(""));
        assert_eq!(form_value(&pairs, "d"), Some(""));
        assert_eq!(form_value(&pairs, "e"), Some("%zz%4"));
        assert_eq!(form_value(&pairs, "f"), None);
    }

    #[test]
    fn ago_reads_naturally() {
        let now = chrono::Utc::now();
        assert_eq!(ago(now, now), "just now");
        assert_eq!(ago(now - chrono::Duration::seconds(125), now), "2 min ago");
        assert_eq!(ago(now - chrono::Duration::hours(3), now), "3 h ago");
    }
}
