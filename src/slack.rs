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
//! another channel: the first decision wins wherever it was made. Messages
//! come from a notifier task subscribed to the approvals service ([`start`]);
//! the state the routes need is `Gateway::slack`, made before the gateway
//! ([`prepare`]): no process-wide static.

pub mod confirm;
pub mod delivery;
pub mod interactions;
pub mod links;
pub mod message;
mod page;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::{get, post};

use crate::approvals::ApprovalEvent;
use crate::audit::{Audit, AuditError};
use crate::config::{Config, SlackConfig};
use crate::gateway::Gateway;
use crate::hold::PendingItem;

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

/// Why Slack could not start.
#[derive(Debug, thiserror::Error)]
pub enum SlackError {
    #[error("cannot read or keep the Slack link-signing key in the audit store: {0}")]
    LinkKey(#[from] AuditError),
}

/// The Slack integration's state, made before the gateway (which keeps it
/// as `Gateway::slack`, for the routes), when `[slack]` is set. The queue's
/// other end is returned for [`start`].
pub async fn prepare(
    config: &Config,
    audit: &Audit,
) -> Result<Option<(Arc<Slack>, delivery::Inbox)>, SlackError> {
    let Some(slack) = config.slack.clone() else {
        return Ok(None);
    };
    let key = Arc::new(links::LinkKey::load(audit, slack.link_key.as_deref()).await?);
    let (outbox, inbox) = delivery::queue();
    let slack = Arc::new(Slack {
        config: slack,
        key,
        outbox,
        forged_rows: Mutex::new((Instant::now(), 0)),
        redact: config.audit.redact.clone(),
        public_url: config.public_url.clone(),
        group_members: config
            .approvers
            .iter()
            .flat_map(|a| a.groups.iter().map(|g| (g.clone(), a.name.clone())))
            .collect(),
    });
    Ok(Some((slack, inbox)))
}

/// Starts the courier and the notifier: a task that subscribes to the
/// approvals service and queues a message per hold this replica owns (one
/// message per hold across replicas), its follow-up once decided, and the
/// follow-up of a dead replica's hold this replica's lease sweep abandoned.
pub fn start(gw: &Gateway, inbox: delivery::Inbox) {
    let Some(slack) = gw.slack.clone() else {
        return;
    };
    delivery::start(gw, slack.config.clone(), slack.key.clone(), inbox);
    let mode = match (&slack.config.bot_token, &slack.config.signing_secret) {
        (Some(_), _) => "bot (chat.postMessage)",
        (None, Some(_)) => "incoming webhook with Slack-app buttons",
        (None, None) => "incoming webhook with decision links",
    };
    tokio::spawn(notify(gw.clone(), slack, gw.approvals.subscribe()));
    tracing::info!("Slack notifications on: {mode}");
}

/// The notifier: approvals events in, Slack jobs out. Never blocks a hold
/// (the outbox is a bounded queue; a full one is a recorded failure).
async fn notify(
    gw: Gateway,
    slack: Arc<Slack>,
    mut events: tokio::sync::broadcast::Receiver<ApprovalEvent>,
) {
    use tokio::sync::broadcast::error::RecvError;
    let me = gw.approvals.replica().to_owned();
    loop {
        let job = match events.recv().await {
            Ok(ApprovalEvent::Created(a)) if a.owner == me => {
                delivery::Job::Held(slack.sanitized(&PendingItem::of(&a)))
            }
            Ok(ApprovalEvent::Resolved {
                approval,
                resolution,
            }) if approval.owner == me => {
                delivery::Job::Resolved(slack.sanitized(&PendingItem::of(&approval)), resolution)
            }
            Ok(ApprovalEvent::Orphaned {
                approval,
                resolution,
            }) => delivery::Job::Resolved(slack.sanitized(&PendingItem::of(&approval)), resolution),
            Ok(_) => continue,
            Err(RecvError::Lagged(n)) => {
                gw.metrics
                    .notification_failures
                    .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(
                    "Slack notifier fell {n} approval event(s) behind; their messages were not queued"
                );
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        slack.outbox.push(&gw, job);
    }
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

impl Slack {
    /// A message saying an approval counted toward a rule that needs several.
    pub(crate) fn vote(&self, gw: &Gateway, item: &PendingItem, approvals: &[String], needed: u32) {
        let item = self.sanitized(item);
        self.outbox.push(
            gw,
            delivery::Job::Notice {
                what: "approval-count message",
                body: message::vote(&item, approvals, needed),
            },
        );
    }

    /// A message calling `group` in, mentioning its members linked to a Slack user.
    pub(crate) fn escalated(&self, gw: &Gateway, item: &PendingItem, group: &str, after_s: u64) {
        let item = self.sanitized(item);
        let mentions: Vec<String> = self
            .config
            .users
            .iter()
            .filter(|(_, name)| {
                self.group_members
                    .iter()
                    .any(|(g, n)| g == group && n == name)
            })
            .map(|(user, _)| user.clone())
            .collect();
        self.outbox.push(
            gw,
            delivery::Job::Notice {
                what: "escalation message",
                body: message::escalated(&item, group, after_s, &mentions, &self.public_url),
            },
        );
    }

    /// A message saying a tool's definition changed since it was pinned.
    pub(crate) fn tool_changed(
        &self,
        gw: &Gateway,
        change: &crate::pins::Change,
        mode: crate::policy::OnToolChange,
    ) {
        self.outbox.push(
            gw,
            delivery::Job::Notice {
                what: "tool-changed message",
                body: message::tool_changed(change, mode, &self.public_url),
            },
        );
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
