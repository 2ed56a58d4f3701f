//! The nouns of approvals: a pending approval, a decision, a resolution and
//! the events subscribers see. Plain data; no I/O.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use uuid::Uuid;

/// What a timeout means for the held call (the rule's `approval.on_timeout`).
///
/// A type of its own rather than `policy::OnTimeout`, so that `approvals`
/// depends on nothing above it; the gateway converts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnTimeout {
    Allow,
    Deny,
}

impl OnTimeout {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            OnTimeout::Allow => "allow",
            OnTimeout::Deny => "deny",
        }
    }

    pub fn parse(s: &str) -> Option<OnTimeout> {
        match s {
            "allow" => Some(OnTimeout::Allow),
            "deny" => Some(OnTimeout::Deny),
            _ => None,
        }
    }
}

/// What the gateway asks for when it holds a call. The service adds the id,
/// the times and its own replica id, making a [`PendingApproval`].
#[derive(Debug, Clone)]
pub struct NewApproval {
    /// Chosen by the caller (a UUIDv7, so ids sort by creation time), so it
    /// can be written to the audit history before the approval exists.
    pub id: Uuid,
    pub session: String,
    /// Configured agent name, else the client's `clientInfo`.
    pub agent: String,
    pub upstream: String,
    pub tool: String,
    /// The call's `params.arguments` as raw JSON text (None when absent).
    pub arguments: Option<String>,
    /// Canonical hash of the arguments (`hold::hash_arguments`).
    pub args_hash: String,
    pub rule: String,
    pub reason: Option<String>,
    pub timeout: Duration,
    pub on_timeout: OnTimeout,
    /// See [`PendingApproval::adoptable`].
    pub adoptable: bool,
}

/// One approval as the store keeps it, while pending and after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PendingApproval {
    /// UUIDv7: sorts by creation time.
    pub id: Uuid,
    pub session: String,
    pub agent: String,
    pub upstream: String,
    pub tool: String,
    pub arguments: Option<String>,
    pub args_hash: String,
    pub rule: String,
    pub reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub on_timeout: OnTimeout,
    /// The replica holding the agent's request open; when its lease lapses
    /// the pending is recorded as abandoned (unless it is adoptable).
    pub owner: String,
    /// Needs no connection of the owner's: when the owner dies, a survivor
    /// adopts it ([`super::Store::adopt_dead_replicas`]) and carries on,
    /// rather than abandoning it. A stateless-era call held as a task: the
    /// agent polls `tasks/get` through any replica.
    #[serde(skip)]
    pub adoptable: bool,
}

impl PendingApproval {
    /// The arguments as JSON (a string when they are not valid JSON, null
    /// when absent), as the API and events show them.
    pub fn arguments_value(&self) -> serde_json::Value {
        match self.arguments.as_deref() {
            Some(a) => serde_json::from_str(a).unwrap_or(serde_json::Value::String(a.to_owned())),
            None => serde_json::Value::Null,
        }
    }
}

/// How an approval ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Approved,
    Denied,
    TimedOut,
    /// The agent went away (or cancelled) before anyone decided.
    Cancelled,
    /// Denied because the owning replica is shutting down.
    Shutdown,
    /// The owning replica died (its lease lapsed) with the call held.
    Abandoned,
}

impl Verdict {
    /// The name stored in the database (and the audit `decision` family).
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Approved => "approved",
            Verdict::Denied => "denied",
            Verdict::TimedOut => "timed_out",
            Verdict::Cancelled => "cancelled",
            Verdict::Shutdown => "shutdown",
            Verdict::Abandoned => "abandoned",
        }
    }

    pub fn parse(s: &str) -> Option<Verdict> {
        Some(match s {
            "approved" => Verdict::Approved,
            "denied" => Verdict::Denied,
            "timed_out" => Verdict::TimedOut,
            "cancelled" => Verdict::Cancelled,
            "shutdown" => Verdict::Shutdown,
            "abandoned" => Verdict::Abandoned,
            _ => return None,
        })
    }
}

/// Whether the held call goes upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Allowed,
    Refused,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Refused => "refused",
        }
    }

    pub fn parse(s: &str) -> Option<Outcome> {
        match s {
            "allowed" => Some(Outcome::Allowed),
            "refused" => Some(Outcome::Refused),
            _ => None,
        }
    }
}

/// A human's choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    Approve,
    Deny,
}

/// A human's decision, as a channel (API, dashboard, Slack, CLI) submits it.
#[derive(Debug, Clone)]
pub struct Decision {
    pub choice: Choice,
    pub decider: Option<String>,
    /// `api`, `dashboard`, `slack`, `cli`, …
    pub channel: String,
    pub comment: Option<String>,
}

/// The one decision that won.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resolution {
    pub verdict: Verdict,
    pub outcome: Outcome,
    pub decider: Option<String>,
    /// Who resolved it: a human channel, or `timeout`, `agent`, `lease`, `shutdown`.
    pub channel: String,
    pub comment: Option<String>,
    /// Why, for resolutions no human made ("no decision within 300 s", …).
    pub reason: Option<String>,
    pub at: DateTime<Utc>,
}

impl Resolution {
    /// A human's decision.
    pub fn decided(decision: Decision, at: DateTime<Utc>) -> Resolution {
        let (verdict, outcome) = match decision.choice {
            Choice::Approve => (Verdict::Approved, Outcome::Allowed),
            Choice::Deny => (Verdict::Denied, Outcome::Refused),
        };
        Resolution {
            verdict,
            outcome,
            decider: decision.decider,
            channel: decision.channel,
            comment: decision.comment.filter(|c| !c.trim().is_empty()),
            reason: None,
            at,
        }
    }

    /// No decision in time: the rule's `on_timeout` decides.
    pub fn timed_out(approval: &PendingApproval, at: DateTime<Utc>) -> Resolution {
        let waited = (approval.expires_at - approval.created_at).num_seconds();
        Resolution {
            verdict: Verdict::TimedOut,
            outcome: match approval.on_timeout {
                OnTimeout::Allow => Outcome::Allowed,
                OnTimeout::Deny => Outcome::Refused,
            },
            decider: None,
            channel: "timeout".into(),
            comment: None,
            reason: Some(format!("no decision within {waited} s")),
            at,
        }
    }

    /// Ended without a decision: the agent left, or its replica is stopping.
    pub fn ended(verdict: Verdict, channel: &str, reason: String, at: DateTime<Utc>) -> Resolution {
        Resolution {
            verdict,
            outcome: Outcome::Refused,
            decider: None,
            channel: channel.into(),
            comment: None,
            reason: Some(reason),
            at,
        }
    }

    /// What a hold handed over by the dead-replica sweep (or a restart)
    /// amounts to: abandoned, whatever its resolution said, since its owner
    /// released nothing. A decision taken meanwhile stays named (decider,
    /// comment, and the reason says what it was).
    pub fn handed_over(self, owner: &str, channel: &str) -> Resolution {
        if self.verdict == Verdict::Abandoned {
            return self;
        }
        Resolution {
            verdict: Verdict::Abandoned,
            outcome: Outcome::Refused,
            reason: Some(format!(
                "{} after replica {owner} had stopped; nothing was released",
                self.describe()
            )),
            channel: channel.into(),
            ..self
        }
    }

    /// The owning replica's lease lapsed.
    pub fn abandoned(owner: &str, at: DateTime<Utc>) -> Resolution {
        Resolution::ended(
            Verdict::Abandoned,
            "lease",
            format!("replica {owner} stopped heartbeating"),
            at,
        )
    }

    /// "approved by alice", "timed out", … for 409 messages and notifications.
    pub fn describe(&self) -> String {
        let done = match self.verdict {
            Verdict::Approved => "approved",
            Verdict::Denied | Verdict::Shutdown => "denied",
            Verdict::TimedOut => "timed out",
            Verdict::Cancelled => "cancelled",
            Verdict::Abandoned => "abandoned",
        };
        match &self.decider {
            Some(who) => format!("{done} by {who}"),
            None => done.to_owned(),
        }
    }

    /// RFC 3339 time of the decision, as the API shows it.
    pub fn at_rfc3339(&self) -> String {
        self.at.to_rfc3339_opts(SecondsFormat::Millis, true)
    }
}

/// What subscribers (websocket events, Slack, metrics) see, in commit order
/// as this replica learns of it.
#[derive(Debug, Clone, PartialEq)]
pub enum ApprovalEvent {
    Created(PendingApproval),
    Resolved {
        approval: PendingApproval,
        resolution: Resolution,
    },
    /// This replica's lease sweep abandoned an approval of a dead replica:
    /// sent on this replica only (once across replicas), so that the
    /// abandonment is recorded once — its owner cannot record it any more.
    Orphaned {
        approval: PendingApproval,
        resolution: Resolution,
    },
    /// The service may have missed events (store reconnect, lag): a
    /// subscriber that mirrors the pending list should fetch it afresh.
    Resynced,
}
