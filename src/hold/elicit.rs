//! Asking the agent's own user: MCP elicitation for held calls
//! (`"approval": {"via": ["agent_user"]}`, docs/approvals.md).
//!
//! When a rule lets the person driving the agent decide, and their client
//! declared form elicitation, Airlock asks them in their own client:
//!
//! - handshake era (HTTP session or `airlock stdio`): an `elicitation/create`
//!   request on the held call's stream, with an id of Airlock's own
//!   (`airlock-elicit-<random uuid>`, which an upstream cannot predict); the
//!   client's answer comes back as a response that [`Elicitations::answer`]
//!   takes and never forwards upstream;
//! - stateless era (2026-07-28): the held call answers at once with
//!   `input_required` carrying the elicitation and a `requestState` of
//!   Airlock's own; the client's retry brings the answer (see
//!   `hold::elicit_retry`).
//!
//! The user's answer is a decision like any approver's: it goes through the
//! approvals service's compare-and-set, so racing a dashboard decision gives
//! one outcome and one audit row.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};
use uuid::Uuid;

use crate::approvals::{Choice, Resolution};
use crate::jsonrpc::{Id, Message};

/// The channel of decisions taken by the agent's user (audit, events).
pub const CHANNEL: &str = "elicitation";

/// The key of Airlock's question in an `input_required`'s `inputRequests`.
pub const INPUT_KEY: &str = "airlock_approval";

/// The form field the user answers with, and its two values.
const FIELD: &str = "decision";
const APPROVE: &str = "approve";
const DENY: &str = "deny";

const ID_PREFIX: &str = "airlock-elicit-";
const STATE_PREFIX: &str = "airlock-elicit:";

/// How long a late answer to a finished elicitation is still recognised
/// as Airlock's (and swallowed rather than forwarded upstream).
const LATE_ANSWERS: Duration = Duration::from_secs(120);

/// Longest argument text shown to the user; the rest is cut with a note.
const MAX_ARGS_SHOWN: usize = 2000;

/// The decider an agent user's decision is recorded under.
pub fn decider(agent: &str) -> String {
    format!("agent_user:{agent}")
}

/// What the user answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A decision (accept + approve, or decline / cancel / accept + deny).
    Decided(Choice, Option<String>),
    /// The client failed to ask (a JSON-RPC error): no decision.
    Failed(String),
}

/// Elicitations of this replica: who may be asked, what was asked.
#[derive(Default)]
pub struct Elicitations {
    /// Handshake-era sessions (and stdio agents) whose client declared form
    /// elicitation in `initialize`.
    capable: DashMap<String, ()>,
    /// Requests sent on held streams, by id: the session that may answer,
    /// and the waiting hold (taken by the first answer).
    asked: DashMap<String, Asked>,
    /// Stateless era: held calls waiting for the client's retry, by
    /// `requestState`.
    parked: DashMap<String, Arc<Parked>>,
}

struct Asked {
    session_key: String,
    answer: Option<oneshot::Sender<Answer>>,
    /// Set when the hold ended: late answers are swallowed until then.
    forget_at: Option<Instant>,
}

/// A stateless-era held call whose client was asked by `input_required`.
pub struct Parked {
    pub pending_id: Uuid,
    /// Upstream and agent session of the call (see `CallContext::scope`).
    pub scope: String,
    pub tool: String,
    pub args_hash: String,
    pub agent: String,
    pub rule: String,
    pub reason: Option<String>,
    pub timeout: Duration,
    /// Approvers decide too (`via` has `approvers`): a client that failed
    /// to ask its user leaves the decision to them.
    pub approvers_decide: bool,
    /// The held request as the agent sent it (the approved call is this).
    pub message: Message,
    /// The hold's recorded end, once its owner has written it.
    pub outcome: watch::Sender<Option<Recorded>>,
    /// Forgotten after this (nobody retried).
    pub until: Instant,
}

/// A hold's resolution and whether it is in the audit history.
#[derive(Clone)]
pub struct Recorded {
    pub resolution: Resolution,
    pub recorded: Result<(), String>,
}

impl Elicitations {
    /// Remembers whether the client of `session_key` can be asked, from its
    /// `initialize` request.
    pub fn note_initialize(&self, session_key: &str, initialize: &Message) {
        #[derive(serde::Deserialize)]
        struct Init {
            #[serde(default)]
            capabilities: Option<Value>,
        }
        let declared = initialize
            .params::<Init>()
            .and_then(|p| p.capabilities)
            .is_some_and(|c| declares_form(&c));
        if declared {
            self.capable.insert(session_key.to_owned(), ());
        } else {
            self.capable.remove(session_key);
        }
    }

    /// Whether a handshake-era session's client declared form elicitation.
    pub fn capable(&self, session_key: &str) -> bool {
        self.capable.contains_key(session_key)
    }

    /// Forgets a session that ended.
    pub fn session_gone(&self, session_key: &str) {
        self.capable.remove(session_key);
    }

    /// Registers a question about to be sent on a held stream: its id, and
    /// where the answer goes.
    pub fn ask(&self, session_key: &str) -> (Id, oneshot::Receiver<Answer>) {
        let id = format!("{ID_PREFIX}{}", Uuid::new_v4());
        // Keyed by the id's JSON text, as responses carry it.
        let raw = serde_json::to_string(&id).unwrap_or_default();
        let (tx, rx) = oneshot::channel();
        self.asked.insert(
            raw.clone(),
            Asked {
                session_key: session_key.to_owned(),
                answer: Some(tx),
                forget_at: None,
            },
        );
        (Id::from_raw(&raw), rx)
    }

    /// The hold that asked `id` ended: later answers are swallowed for a while.
    pub fn finished(&self, id: &Id) {
        if let Some(mut asked) = self.asked.get_mut(id.raw()) {
            asked.answer = None;
            asked.forget_at = Some(Instant::now() + LATE_ANSWERS);
        }
    }

    /// Takes a response from the agent if it answers one of Airlock's own
    /// questions for this session: `true` means it was Airlock's (never
    /// forward it upstream), whether or not a hold still waited for it.
    pub fn answer(&self, session_key: &str, message: &Message) -> bool {
        let Some(id) = message.id() else {
            return false;
        };
        let Some(mut asked) = self.asked.get_mut(id.raw()) else {
            return false;
        };
        if asked.session_key != session_key {
            // Another session cannot answer (nor probe) this question.
            return false;
        }
        if let Some(tx) = asked.answer.take() {
            let _ = tx.send(answer_of(message));
        }
        true
    }

    /// Parks a stateless-era held call until the client's retry; returns
    /// the `requestState` to hand the client (random: only the client
    /// that got it can present it).
    pub fn park(&self, parked: Parked) -> (String, Arc<Parked>) {
        let state = format!("{STATE_PREFIX}{}", Uuid::new_v4());
        let parked = Arc::new(parked);
        self.parked.insert(state.clone(), parked.clone());
        (state, parked)
    }

    /// Forgets a parked call (its final answer went out).
    pub fn unpark(&self, state: &str) {
        self.parked.remove(state);
    }

    /// The parked call a retry's `requestState` names (it stays parked: a
    /// retry may be repeated, e.g. after a dropped connection).
    pub fn parked(&self, state: &str) -> Option<Arc<Parked>> {
        self.parked.get(state).map(|p| p.clone())
    }

    /// Whether a `requestState` is one of Airlock's (never the upstream's).
    pub fn is_ours(state: &str) -> bool {
        state.starts_with(STATE_PREFIX)
    }

    /// Forgets finished questions and unclaimed parked calls.
    pub fn prune(&self) {
        let now = Instant::now();
        self.asked
            .retain(|_, a| a.forget_at.is_none_or(|t| t > now));
        self.parked.retain(|_, p| p.until > now);
    }
}

/// Whether client capabilities declare form-mode elicitation: `elicitation:
/// {}` (form implied) or with `form` (2025-11-25 and later).
pub fn declares_form(capabilities: &Value) -> bool {
    match capabilities.get("elicitation") {
        Some(Value::Object(e)) => e.is_empty() || e.contains_key("form"),
        _ => false,
    }
}

/// The `elicitation/create` params asking the user about a held call: a
/// message naming the tool, its arguments and the rule's reason, and a flat
/// form with one enum field (what form mode allows).
pub fn request_params(
    tool: &str,
    arguments: Option<&str>,
    rule: &str,
    reason: Option<&str>,
    timeout: Duration,
) -> Value {
    let args = arguments_text(arguments);
    let why = reason.map(|r| format!(" Reason: {r}.")).unwrap_or_default();
    let message = format!(
        "Airlock is holding your agent's call to `{tool}` until someone approves it (policy rule `{rule}`).{why}\nArguments: {args}\nChoose approve to let it run, or deny to refuse it. Without an answer within {} s it is refused.",
        timeout.as_secs()
    );
    json!({
        "mode": "form",
        "message": message,
        "requestedSchema": {
            "type": "object",
            "properties": {
                FIELD: {
                    "type": "string",
                    "title": "Decision",
                    "description": format!("approve or deny this call to {tool}"),
                    "enum": [APPROVE, DENY],
                }
            },
            "required": [FIELD],
        }
    })
}

/// The elicitation request sent on a held stream.
pub fn request(id: &Id, params: Value) -> Message {
    let id: Value = serde_json::from_str(id.raw()).unwrap_or(Value::Null);
    Message::from_value(&json!({
        "jsonrpc": "2.0",
        "id": id,
        "method": "elicitation/create",
        "params": params,
    }))
}

/// Withdraws a question the user no longer needs to answer (the hold was
/// decided elsewhere, timed out or ended).
pub fn cancelled(id: &Id, reason: &str) -> Message {
    let id: Value = serde_json::from_str(id.raw()).unwrap_or(Value::Null);
    Message::from_value(&json!({
        "jsonrpc": "2.0",
        "method": "notifications/cancelled",
        "params": { "requestId": id, "reason": reason },
    }))
}

/// Arguments as the user sees them: compact JSON, cut when long.
fn arguments_text(arguments: Option<&str>) -> String {
    let text = arguments
        .and_then(|a| serde_json::from_str::<Value>(a).ok())
        .map(|v| v.to_string())
        .unwrap_or_else(|| "{}".into());
    if text.len() <= MAX_ARGS_SHOWN {
        return text;
    }
    let mut cut = MAX_ARGS_SHOWN;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}… ({} bytes in all)", &text[..cut], text.len())
}

/// A response to an elicitation (handshake era).
fn answer_of(message: &Message) -> Answer {
    if let Some(result) = message.result::<Value>() {
        return decision_of(&result);
    }
    let why = serde_json::from_str::<Value>(message.text())
        .ok()
        .and_then(|v| v.pointer("/error/message").cloned())
        .and_then(|m| m.as_str().map(str::to_owned))
        .unwrap_or_else(|| "no result".into());
    Answer::Failed(why)
}

/// An `ElicitResult` as a decision: only accept with `decision: "approve"`
/// approves; anything else the user did (decline, cancel, deny, an answer
/// Airlock did not ask for) denies.
pub fn decision_of(result: &Value) -> Answer {
    let action = result.get("action").and_then(Value::as_str).unwrap_or("");
    let chose = result
        .pointer(&format!("/content/{FIELD}"))
        .and_then(Value::as_str);
    match (action, chose) {
        ("accept", Some(APPROVE)) => Answer::Decided(Choice::Approve, None),
        ("accept", Some(DENY)) => Answer::Decided(Choice::Deny, None),
        ("accept", _) => Answer::Decided(
            Choice::Deny,
            Some("the agent's user accepted without choosing approve".into()),
        ),
        ("decline", _) => Answer::Decided(Choice::Deny, Some("the agent's user declined".into())),
        ("cancel", _) => Answer::Decided(
            Choice::Deny,
            Some("the agent's user dismissed the question".into()),
        ),
        _ => Answer::Failed(format!(
            "the elicitation result has no valid action ({})",
            if action.is_empty() { "none" } else { action }
        )),
    }
}

/// The `inputResponses[airlock_approval]` of a stateless-era retry.
pub fn retry_answer(message: &Message) -> Option<Answer> {
    #[derive(serde::Deserialize)]
    struct Retry {
        #[serde(rename = "inputResponses", default)]
        input_responses: Option<Value>,
    }
    let responses = message.params::<Retry>()?.input_responses?;
    responses.get(INPUT_KEY).map(decision_of)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_capability_is_read_like_the_spec_says() {
        assert!(declares_form(&json!({"elicitation": {}})));
        assert!(declares_form(&json!({"elicitation": {"form": {}}})));
        assert!(declares_form(
            &json!({"elicitation": {"form": {}, "url": {}}})
        ));
        assert!(!declares_form(&json!({"elicitation": {"url": {}}})));
        assert!(!declares_form(&json!({"sampling": {}})));
        assert!(!declares_form(&json!({"elicitation": true})));
    }

    #[test]
    fn only_accept_with_approve_approves() {
        let approve = json!({"action": "accept", "content": {"decision": "approve"}});
        assert_eq!(
            decision_of(&approve),
            Answer::Decided(Choice::Approve, None)
        );
        for denies in [
            json!({"action": "accept", "content": {"decision": "deny"}}),
            json!({"action": "accept", "content": {"decision": "APPROVE"}}),
            json!({"action": "accept", "content": {"answer": "yes"}}),
            json!({"action": "accept"}),
            json!({"action": "decline"}),
            json!({"action": "cancel"}),
        ] {
            assert!(
                matches!(decision_of(&denies), Answer::Decided(Choice::Deny, _)),
                "{denies}"
            );
        }
        assert!(matches!(
            decision_of(&json!({"content": {"decision": "approve"}})),
            Answer::Failed(_)
        ));
    }

    #[test]
    fn the_form_is_flat_and_names_the_call() {
        let p = request_params(
            "delete_file",
            Some(r#"{"path":"/tmp/x"}"#),
            "delete_*",
            Some("destructive"),
            Duration::from_secs(60),
        );
        let message = p["message"].as_str().unwrap();
        assert!(message.contains("`delete_file`") && message.contains("/tmp/x"));
        assert!(message.contains("destructive") && message.contains("delete_*"));
        for (_, field) in p["requestedSchema"]["properties"].as_object().unwrap() {
            assert!(field["type"].is_string() && field.get("properties").is_none());
        }
    }

    #[test]
    fn answers_only_count_from_the_session_asked() {
        let e = Elicitations::default();
        let (id, mut rx) = e.ask("s1");
        let response = Message::from_value(&json!({
            "jsonrpc": "2.0",
            "id": serde_json::from_str::<Value>(id.raw()).unwrap(),
            "result": {"action": "decline"},
        }));
        assert!(!e.answer("s2", &response));
        assert!(rx.try_recv().is_err());
        assert!(e.answer("s1", &response));
        assert!(matches!(
            rx.try_recv(),
            Ok(Answer::Decided(Choice::Deny, _))
        ));
        // A repeated answer is still Airlock's, and goes nowhere.
        assert!(e.answer("s1", &response));
        let other = Message::from_value(&json!({"jsonrpc": "2.0", "id": 7, "result": {}}));
        assert!(!e.answer("s1", &other));
    }
}
