//! Calls waiting for a human: the hold, the decision, the release.
//!
//! A held call is an approval in the [`Approvals`] service (its store is the
//! single source of truth, shared by every replica on PostgreSQL) plus a
//! task on the replica holding the agent's request open, the *owner*. Exactly
//! one resolution wins, by a compare-and-set in the store; everyone after
//! gets the winner back (HTTP 409).
//!
//! **The owner records every end of its holds** — a human's decision taken on
//! any replica, its timeout, the agent's cancel, shutdown — in the audit
//! history, and only then releases the call upstream or refuses it. So each
//! hold gets exactly one outcome row, and nothing is released unrecorded. A
//! replica that died cannot record: the survivor whose lease sweep
//! abandoned its holds records them (see [`record_orphan`]).
//!
//! The agent's request stays open as a stream: progress notifications while
//! it waits (when it sent a `progressToken`), then the upstream's answer
//! (approved) or a refusal. If the agent goes away, the hold is cancelled —
//! in a handshake-era HTTP session only once it has not come back with
//! `Last-Event-ID` within a grace period (see [`stream`]).
//!
//! A rule may also ask the person driving the agent, in their own client
//! (`approval.via` with `agent_user`): see [`elicit`] (the questions and
//! answers) and `ask_user` (their answer as a decision; the stateless era's
//! `input_required` round trip). Their answer is one more decision through
//! the same compare-and-set.

mod ask_user;
pub mod elicit;
pub mod stream;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue};
use chrono::{DateTime, SecondsFormat, Utc};
use dashmap::DashMap;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};
use uuid::Uuid;

use crate::approvals::{self, NewApproval, PendingApproval, WaitError};
pub use crate::approvals::{Choice, Outcome, Resolution, Verdict};
use crate::audit::Record;
use crate::era;
use crate::gate::{self, Refusal};
use crate::gateway::{CallContext, Exchange, Gateway};
use crate::jsonrpc::{self, Id, Message};
use crate::policy::{Approval, OnTimeout, Via};
use crate::upstream::{Event, Reply, ReplyBody, UpstreamError};
pub use ask_user::elicit_retry;
use ask_user::{UserAsked, agent_user_only, can_ask_user, park, take_user_answer};
use stream::HeldStream;

/// A pending approval as the API, events and notifications show it.
#[derive(Debug, Clone, Serialize)]
pub struct PendingItem {
    pub id: String,
    pub tool: String,
    pub upstream: String,
    pub agent: String,
    pub session: String,
    pub arguments: Value,
    pub rule: String,
    pub reason: Option<String>,
    pub created_at: String,
    pub expires_at: String,
    /// Who is asked (`approval.via` of the rule in force), when not just the
    /// approvers: `["agent_user"]` or `["approvers", "agent_user"]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<Vec<&'static str>>,
}

impl PendingItem {
    pub fn of(approval: &PendingApproval) -> PendingItem {
        PendingItem {
            id: approval.id.to_string(),
            tool: approval.tool.clone(),
            upstream: approval.upstream.clone(),
            agent: approval.agent.clone(),
            session: approval.session.clone(),
            arguments: approval.arguments_value(),
            rule: approval.rule.clone(),
            reason: approval.reason.clone(),
            created_at: rfc3339(approval.created_at),
            expires_at: rfc3339(approval.expires_at),
            via: None,
        }
    }

    /// Adds who is asked, from the policy in force (shown by dashboards).
    fn with_via(mut self, gw: &Gateway) -> PendingItem {
        if self.rule == crate::power::RULE {
            return self;
        }
        let via = gw
            .upstreams
            .get(&self.upstream)
            .map(|up| up.policy().approval_for(&self.tool).0.via)
            .unwrap_or_default();
        if via.agent_user {
            let mut names = Vec::new();
            if via.approvers {
                names.push("approvers");
            }
            names.push("agent_user");
            self.via = Some(names);
        }
        self
    }
}

/// The audit `decision` of a resolution.
pub fn audit_decision(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Approved => "approved",
        Verdict::Denied => "denied_by_human",
        Verdict::TimedOut => "timed_out",
        Verdict::Cancelled => "cancelled",
        Verdict::Shutdown => "denied",
        Verdict::Abandoned => "abandoned",
    }
}

/// What a resolution says beyond its verdict: the approver's comment, or why
/// the agent's call was cancelled.
pub fn note(resolution: &Resolution) -> Option<&str> {
    match resolution.verdict {
        Verdict::Cancelled => resolution.reason.as_deref(),
        _ => resolution.comment.as_deref(),
    }
}

/// The held calls of this replica, and its view of every replica's.
#[derive(Default)]
pub struct Holds {
    /// Every open approval this replica knows of (its own and, with a shared
    /// store, the other replicas'), kept from the approvals service's events:
    /// what `/api/pending`, the websocket snapshot and `/metrics` show.
    view: DashMap<String, PendingItem>,
    /// The holds this replica owns: the agent request each one answers.
    owned: DashMap<String, Owned>,
    /// MRTR: `requestState` of approved calls that asked the client for input
    /// → (session, tool, arguments hash, until). The client's retry carrying
    /// that state, for the same tool and arguments, continues the approved
    /// call instead of being held again.
    continuations: DashMap<String, (String, String, String, Instant)>,
    /// Resumable held-call streams by pending id, open or finished less than
    /// [`stream::GRACE`] ago.
    streams: DashMap<String, Arc<HeldStream>>,
    /// Questions to the agents' own users (`approval.via` `agent_user`).
    pub elicit: elicit::Elicitations,
}

/// A hold this replica owns.
struct Owned {
    session_key: String,
    request_id: Id,
    /// Set once the owner has recorded the resolution: `Ok` when it is in
    /// the audit history, `Err` (why) when it could not be written.
    recorded: watch::Sender<Option<Result<(), String>>>,
}

/// The canonical hash of raw arguments (absent arguments hash like `{}`).
pub fn hash_arguments(arguments: Option<&str>) -> String {
    let value = arguments
        .and_then(|a| serde_json::from_str(a).ok())
        .unwrap_or_else(|| json!({}));
    crate::audit::arguments_hash(&value)
}

/// How long an approved call's `input_required` retry stays approved.
const CONTINUATION_TTL: Duration = Duration::from_secs(600);

/// How long a decider on the owning replica waits for the resolution to be
/// recorded before answering (the audit writer commits in milliseconds).
const RECORD_WAIT: Duration = Duration::from_secs(10);

impl Holds {
    /// Open holds on every replica this one knows of, oldest first.
    pub fn list(&self) -> Vec<PendingItem> {
        let mut items: Vec<PendingItem> = self.view.iter().map(|p| p.value().clone()).collect();
        // UUIDv7 ids sort by creation time.
        items.sort_by(|a, b| a.id.cmp(&b.id));
        items
    }

    pub fn get(&self, id: &str) -> Option<PendingItem> {
        self.view.get(id).map(|p| p.clone())
    }

    pub fn len(&self) -> usize {
        self.view.len()
    }

    pub fn is_empty(&self) -> bool {
        self.view.is_empty()
    }

    /// Forgets expired continuations.
    pub fn prune(&self) {
        let now = Instant::now();
        self.continuations.retain(|_, c| c.3 > now);
        self.elicit.prune();
    }

    /// Whether an approval covers this MRTR retry (single use): same
    /// session, tool and arguments as the approved call.
    pub fn continuation(
        &self,
        request_state: &str,
        session_key: &str,
        tool: &str,
        arguments: Option<&str>,
    ) -> bool {
        let Some((_, (session, approved_tool, args_hash, until))) =
            self.continuations.remove(request_state)
        else {
            return false;
        };
        session == session_key
            && approved_tool == tool
            && args_hash == hash_arguments(arguments)
            && until > Instant::now()
    }

    pub fn remember_continuation(
        &self,
        answer: &Message,
        session_key: &str,
        tool: &str,
        args_hash: &str,
    ) {
        if let Some(state) = era::input_required_state(answer) {
            let entry = (
                session_key.to_owned(),
                tool.to_owned(),
                args_hash.to_owned(),
                Instant::now() + CONTINUATION_TTL,
            );
            self.continuations.insert(state, entry);
        }
    }

    /// The ids of this replica's holds answering requests of `session_key`
    /// (all of `request_id` when given).
    fn owned_by(&self, session_key: &str, request_id: Option<&Id>) -> Vec<String> {
        self.owned
            .iter()
            .filter(|o| {
                o.session_key == session_key && request_id.is_none_or(|r| *r == o.request_id)
            })
            .map(|o| o.key().clone())
            .collect()
    }
}

/// How the API shows a resolution (`decision`, `outcome`, `decider`,
/// `channel`, `comment`, `at`).
pub fn resolution_json(resolution: &Resolution) -> Value {
    json!({
        "decision": resolution.verdict,
        "outcome": resolution.outcome,
        "decider": resolution.decider,
        "channel": resolution.channel,
        "comment": note(resolution),
        "at": resolution.at_rfc3339(),
    })
}

/// The resolution of a recently decided hold, from the store.
pub async fn resolution(gw: &Gateway, id: &str) -> Option<Resolution> {
    let uuid = Uuid::parse_str(id).ok()?;
    match gw.approvals.get(uuid).await {
        Ok(stored) => stored?.resolution,
        Err(e) => {
            tracing::warn!(pending = %id, "approval store: {e}");
            None
        }
    }
}

/// Why a decision was not taken.
#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    #[error("no pending call with id {0}")]
    NotFound(String),
    #[error("already {}", .0.describe())]
    AlreadyDecided(Box<Resolution>),
    #[error("the approval store cannot be reached ({0}); nothing was decided")]
    Store(String),
    #[error(
        "the decision could not be recorded in the audit store ({0}); the call was refused, nothing was released"
    )]
    Audit(String),
    #[error(
        "rule `{0}` lets only the agent's own user approve this call (approval.via = [\"agent_user\"]); approvers can deny it"
    )]
    AgentUserOnly(String),
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A human's decision about a held call, from any channel. Exactly one
/// resolution wins (see the module docs). When this replica holds the call,
/// answers once the decision is in the audit history.
pub async fn decide(
    gw: &Gateway,
    id: &str,
    choice: Choice,
    decider: Option<String>,
    channel: &str,
    comment: Option<String>,
) -> Result<Resolution, DecideError> {
    let Ok(uuid) = Uuid::parse_str(id) else {
        return Err(DecideError::NotFound(id.to_owned()));
    };
    if choice == Choice::Approve
        && channel != elicit::CHANNEL
        && let Some(rule) = agent_user_only(gw, id)
    {
        return Err(DecideError::AgentUserOnly(rule));
    }
    // Subscribed before deciding, so the owner's "recorded" cannot be missed.
    let mut recorded = gw.holds.owned.get(id).map(|o| o.recorded.subscribe());
    let decision = approvals::Decision {
        choice,
        decider,
        channel: channel.to_owned(),
        comment,
    };
    let resolved = match gw.approvals.decide(uuid, decision).await {
        Ok(resolved) => resolved,
        Err(approvals::DecideError::AlreadyDecided(winner)) => {
            return Err(DecideError::AlreadyDecided(winner));
        }
        Err(approvals::DecideError::NotFound(_)) => {
            return Err(DecideError::NotFound(id.to_owned()));
        }
        Err(approvals::DecideError::Store(e)) => return Err(DecideError::Store(e.to_string())),
    };
    if let Some(recorded) = recorded.as_mut() {
        let outcome = tokio::time::timeout(RECORD_WAIT, recorded.wait_for(Option::is_some)).await;
        if let Ok(Ok(state)) = outcome
            && let Some(Err(e)) = state.as_ref()
        {
            return Err(DecideError::Audit(e.clone()));
        }
    }
    Ok(resolved.resolution)
}

/// Holds a `tools/call` until a human decides. Returns at once with a stream
/// that carries progress while waiting and the final answer after.
#[allow(clippy::too_many_arguments)]
pub async fn hold_call(
    gw: &Gateway,
    ctx: &CallContext,
    message: Message,
    headers: Option<&HeaderMap>,
    tool: String,
    arguments: Option<String>,
    rule: String,
    reason: Option<String>,
    approval: Approval,
) -> Result<Exchange, UpstreamError> {
    // Kept until the decision: not as a slice of the connection's read buffer.
    let message = message.detached();
    let request_id = message.id().cloned().unwrap_or_else(Id::null);
    let refuse = |text: String, decision: &'static str| {
        crate::gateway::log_outcome(ctx, decision, &tool, &rule, Some(&text));
        let refusal = Refusal {
            decision,
            rule: rule.clone(),
            reason: reason.clone().unwrap_or_default(),
            text,
            retry_after: None,
        };
        Exchange::answer(
            gate::refusal_response(&request_id, &refusal, ctx.era),
            ctx.era,
        )
    };
    if gw.shutdown.is_cancelled() {
        return Ok(refuse(
            format!(
                "Airlock refused this call to `{tool}`: it needs human approval and the gateway is shutting down."
            ),
            "denied",
        ));
    }
    if !gw.audit.is_healthy() {
        return Ok(refuse(
            format!(
                "Airlock refused this call to `{tool}`: it needs human approval, but the audit store cannot be written ({}), so no approval can be recorded.",
                gw.audit
                    .last_error()
                    .unwrap_or_else(|| "unknown error".into())
            ),
            "audit_unavailable",
        ));
    }
    // A changed tool definition is for approvers to accept, never the agent's user.
    let approval = if rule == crate::power::RULE {
        Approval {
            via: Via::default(),
            ..approval
        }
    } else {
        approval
    };
    let ask_user = approval.via.agent_user && can_ask_user(gw, ctx, &message);
    if approval.via.agent_user_only() && !ask_user {
        let text = format!(
            "Airlock refused this call to `{tool}`: rule `{rule}` lets only the agent's own user approve it (approval.via = [\"agent_user\"]), but this client did not declare the elicitation capability (form mode), so nobody can be asked."
        );
        gw.record_outcome(
            ctx,
            "denied",
            &tool,
            arguments.as_deref(),
            &rule,
            Some(&text),
        )
        .await;
        let refusal = Refusal {
            decision: "denied",
            rule: rule.clone(),
            reason: reason.clone().unwrap_or_default(),
            text,
            retry_after: None,
        };
        return Ok(Exchange::answer(
            gate::refusal_response(&request_id, &refusal, ctx.era),
            ctx.era,
        ));
    }
    let uuid = Uuid::now_v7();
    let id = uuid.to_string();
    let args_hash = hash_arguments(arguments.as_deref());
    let requested = Record {
        decision: "approval_requested",
        session: Some(ctx.session_key.clone()),
        agent: Some(ctx.agent.clone()),
        upstream: Some(ctx.upstream.name.clone()),
        tool: Some(tool.clone()),
        arguments: arguments.clone(),
        rule: Some(rule.clone()),
        reason: reason.clone(),
        pending_id: Some(id.clone()),
        ..Default::default()
    };
    if let Err(e) = gw.audit.commit(requested).await {
        return Ok(refuse(
            format!(
                "Airlock refused this call to `{tool}`: it needs human approval, but the request could not be recorded ({e})."
            ),
            "audit_unavailable",
        ));
    }
    gw.holds.owned.insert(
        id.clone(),
        Owned {
            session_key: ctx.session_key.clone(),
            request_id: request_id.clone(),
            recorded: watch::channel(None).0,
        },
    );
    let (progress_token, as_task) = {
        let peek = era::peek(&message);
        // Asking the user by `input_required` ends the request at once: no task.
        let as_task =
            ctx.era == crate::era::Era::Stateless && !ask_user && crate::tasks::declared(&peek);
        (
            peek.meta
                .and_then(|m| m.progress_token.map(|t| t.get().to_owned())),
            as_task,
        )
    };
    let new = NewApproval {
        id: uuid,
        session: ctx.session_key.clone(),
        agent: ctx.agent.clone(),
        upstream: ctx.upstream.name.clone(),
        tool: tool.clone(),
        arguments: arguments.clone(),
        args_hash: args_hash.clone(),
        rule: rule.clone(),
        reason: reason.clone(),
        timeout: approval.timeout,
        on_timeout: match approval.on_timeout {
            OnTimeout::Allow => approvals::OnTimeout::Allow,
            OnTimeout::Deny => approvals::OnTimeout::Deny,
        },
        // A task needs no connection of this replica's: if it dies, a
        // survivor carries the task on (`tasks::adopt_orphans`).
        adoptable: as_task,
    };
    let created = match gw.approvals.create(new).await {
        Ok(created) => created,
        Err(e) => {
            gw.holds.owned.remove(&id);
            let text = format!(
                "Airlock refused this call to `{tool}`: it needs human approval, but the approval store cannot be reached ({e})."
            );
            record_unheld(gw, ctx, &id, &tool, &rule, &text).await;
            return Ok(refuse(text, "approval_store_unavailable"));
        }
    };
    // Registered before anything can resolve it (the store tells the pump).
    let resolution = gw.approvals.wait(uuid);
    gw.metrics.count("approval_requested");
    let item = PendingItem::of(&created);
    show_created(gw, &item);
    tracing::info!(
        pending = %id,
        %tool,
        upstream = %item.upstream,
        agent = %item.agent,
        outcome = %"held",
        rule = %item.rule,
        expires_at = %item.expires_at,
        "call held for approval"
    );

    // Only an HTTP upstream needs the agent's headers again.
    let headers = headers
        .filter(|_| matches!(ctx.link, crate::upstream::Link::Http(_)))
        .map(detached_headers);
    let question = ask_user.then(|| {
        elicit::request_params(
            &tool,
            arguments.as_deref(),
            &rule,
            reason.as_deref(),
            approval.timeout,
        )
    });
    let (sink, answer_now, out_rx) =
        if let (Some(question), era::Era::Stateless) = (&question, ctx.era) {
            let (parked, input_required) =
                park(gw, ctx, &message, &created, question.clone(), &approval);
            (Sink::Parked(parked), Some(input_required), None)
        } else if as_task {
            let (task_id, created) =
                gw.tasks
                    .create(&id, &ctx.session_key, approval.timeout, &message);
            let upstream = &ctx.upstream.name;
            gw.tasks
                .share(&task_id, uuid, &ctx.agent, upstream, headers.as_ref())
                .await;
            (
                Sink::Task(task_id),
                Some(jsonrpc::result_response(&request_id, created)),
                None,
            )
        } else {
            let resumable = resumable_session(gw, ctx);
            let (held, events) = HeldStream::open(&id, resumable);
            let held = Arc::new(held);
            if held.resumable() {
                gw.holds.streams.insert(id.clone(), held.clone());
            }
            (Sink::Stream(held), None, Some(events))
        };
    let waiter = Waiter {
        gw: gw.clone(),
        ctx: CallContext {
            upstream: ctx.upstream.clone(),
            link: ctx.link.clone(),
            era: ctx.era,
            session_key: ctx.session_key.clone(),
            agent: ctx.agent.clone(),
        },
        message,
        headers,
        approval: created,
        timeout: approval.timeout,
        progress_token,
        sink,
        question: question.filter(|_| ctx.era == era::Era::Handshake),
        via: approval.via,
    };
    tokio::spawn(waiter.run(Box::pin(resolution)));
    let (Some(out_rx), None) = (out_rx, &answer_now) else {
        let created = answer_now.expect("a task's or a parked call's answer is ready at once");
        return Ok(Exchange::answer(created, ctx.era));
    };
    Ok(Exchange {
        reply: Reply {
            status: 200,
            headers: HeaderMap::new(),
            body: ReplyBody::Stream(out_rx),
        },
        list_filter: None,
    })
}

/// The agent's headers a held call keeps for its release: those that go
/// upstream, copied into storage of their own. Values parsed by hyper are
/// slices of the connection's read buffer (8 KiB or more): kept as they are,
/// they would pin it for as long as the call is held, and the connection
/// would allocate a second buffer for its next read.
fn detached_headers(headers: &HeaderMap) -> HeaderMap {
    let kept = || {
        headers
            .iter()
            .filter(|(name, _)| crate::upstream::http::forwardable(name))
    };
    let mut out = HeaderMap::with_capacity(kept().count());
    for (name, value) in kept() {
        // The value was valid once, so the copy is too; a shared one otherwise.
        let mut copy = HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
        copy.set_sensitive(value.is_sensitive());
        out.append(name.clone(), copy);
    }
    out
}

/// Closes the `approval_requested` row of a call that could not be held
/// after all (the approval store failed), so it does not count as open.
async fn record_unheld(
    gw: &Gateway,
    ctx: &CallContext,
    id: &str,
    tool: &str,
    rule: &str,
    text: &str,
) {
    let record = Record {
        decision: "denied",
        session: Some(ctx.session_key.clone()),
        agent: Some(ctx.agent.clone()),
        upstream: Some(ctx.upstream.name.clone()),
        tool: Some(tool.to_owned()),
        rule: Some(rule.to_owned()),
        reason: Some(text.to_owned()),
        pending_id: Some(id.to_owned()),
        channel: Some("store".into()),
        ..Default::default()
    };
    if let Err(e) = gw.audit.commit(record).await {
        tracing::error!(pending = %id, "could not record the refusal: {e}");
    }
}

/// Adds a hold to this replica's view and tells dashboards. (Slack and
/// other notifiers subscribe to the approvals service themselves.)
pub fn show_created(gw: &Gateway, item: &PendingItem) {
    let item = item.clone().with_via(gw);
    gw.holds.view.insert(item.id.clone(), item.clone());
    gw.events
        .publish("pending.created", json!({ "pending": item }));
}

/// Removes a resolved hold from this replica's view and tells dashboards.
pub fn show_resolved(gw: &Gateway, approval: &PendingApproval, resolution: &Resolution) {
    let id = approval.id.to_string();
    let item = gw
        .holds
        .view
        .remove(&id)
        .map(|(_, item)| item)
        .unwrap_or_else(|| PendingItem::of(approval));
    let wait_ms = (resolution.at - approval.created_at)
        .num_milliseconds()
        .max(0);
    gw.events.publish(
        "pending.resolved",
        json!({
            "id": id,
            "decision": resolution.verdict,
            "outcome": resolution.outcome,
            "decider": resolution.decider,
            "channel": resolution.channel,
            "comment": note(resolution),
            "tool": item.tool,
            "wait_ms": wait_ms,
        }),
    );
}

/// The audit row of a hold's end.
fn outcome_record(approval: &PendingApproval, resolution: &Resolution) -> Record {
    let wait = (resolution.at - approval.created_at)
        .num_milliseconds()
        .max(0);
    Record {
        decision: audit_decision(resolution.verdict),
        session: Some(approval.session.clone()),
        agent: Some(approval.agent.clone()),
        upstream: Some(approval.upstream.clone()),
        tool: Some(approval.tool.clone()),
        arguments: approval.arguments.clone(),
        rule: Some(approval.rule.clone()),
        reason: match resolution.verdict {
            Verdict::Shutdown | Verdict::TimedOut | Verdict::Abandoned => resolution.reason.clone(),
            _ => approval.reason.clone(),
        },
        pending_id: Some(approval.id.to_string()),
        decider: resolution.decider.clone(),
        channel: Some(resolution.channel.clone()),
        comment: note(resolution).map(str::to_owned),
        wait_ms: Some(wait),
    }
}

/// Writes the audit row of a hold's end and counts it. `Err` when it could
/// not be written (then nothing may be released).
async fn record_outcome(
    gw: &Gateway,
    approval: &PendingApproval,
    resolution: &Resolution,
) -> Result<(), String> {
    let committed = gw
        .audit
        .commit(outcome_record(approval, resolution))
        .await
        .map(|_| ())
        .map_err(|e| e.to_string());
    gw.metrics.count(audit_decision(resolution.verdict));
    let wait = (resolution.at - approval.created_at)
        .to_std()
        .unwrap_or_default();
    if !matches!(
        resolution.verdict,
        Verdict::Cancelled | Verdict::Shutdown | Verdict::Abandoned
    ) {
        gw.metrics.approval_wait.observe(wait);
    }
    tracing::info!(
        pending = %approval.id,
        tool = %approval.tool,
        upstream = %approval.upstream,
        agent = %approval.agent,
        outcome = %audit_decision(resolution.verdict),
        released = %resolution.outcome.as_str(),
        decider = resolution.decider.as_deref().map(tracing::field::display),
        channel = %resolution.channel,
        wait_ms = wait.as_millis() as u64,
        "held call decided"
    );
    committed
}

/// Records a hold of a dead replica that this replica's lease sweep
/// abandoned or was handed (its owner cannot record it any more), or one an
/// earlier run of this replica left behind.
///
/// The audit row says "nothing was released". That is true of a task hold
/// (released only after the compare-and-set that marks it recorded, and
/// these are unrecorded), so its row is written even after an outcome row
/// of its owner's. A hold on a stream is released as soon as its outcome
/// row is committed: if that row is there, the call may have run, and no
/// second row contradicts it.
pub async fn record_orphan(gw: &Gateway, approval: &PendingApproval, resolution: &Resolution) {
    // An unreadable history: recorded as before (at worst a second row).
    let maybe_released =
        !approval.adoptable && outcome_recorded(gw, approval.id).await.unwrap_or(false);
    if maybe_released {
        tracing::warn!(pending = %approval.id, "a hold left unmarked by its replica was already recorded (and may have been released): not recorded again");
    } else if let Err(e) = record_outcome(gw, approval, resolution).await {
        tracing::error!(pending = %approval.id, "could not record the abandoned hold: {e}");
    }
    let why = format!(
        "Airlock did not run this call to `{}`: {}.",
        approval.tool,
        resolution
            .reason
            .clone()
            .unwrap_or_else(|| resolution.describe())
    );
    if let Err(e) = gw.tasks.end_orphaned(approval.id, &why).await {
        tracing::warn!(pending = %approval.id, "task of an orphaned hold not ended: {e}");
    }
}

/// Whether the audit history has the outcome row of hold `id` (any
/// replica's). `Err`: the history could not be read (the caller must not
/// release anything on a guess).
pub async fn outcome_recorded(gw: &Gateway, id: Uuid) -> Result<bool, crate::audit::AuditError> {
    let filter = crate::audit::Filter {
        pending_id: Some(id.to_string()),
        ..Default::default()
    };
    let rows = gw.audit.query(filter, false).await?;
    Ok(rows.iter().any(|r| {
        use Verdict::*;
        [Approved, Denied, TimedOut, Cancelled, Shutdown, Abandoned]
            .iter()
            .any(|v| audit_decision(*v) == r.decision)
    }))
}

/// Carries on a task hold adopted from a dead replica: this replica now
/// waits for the decision and, once approved, runs the call and completes
/// the task, as the dead replica's waiter would have.
pub fn carry_on(
    gw: &Gateway,
    approval: PendingApproval,
    task_id: &str,
    message: Message,
    headers: Option<HeaderMap>,
    timeout: Duration,
) {
    let Some(upstream) = gw.upstreams.get(&approval.upstream).cloned() else {
        let gw = gw.clone();
        tokio::spawn(async move { abandon_adopted(&gw, &approval).await });
        return;
    };
    let link = match upstream.stateless_link() {
        Ok(link) => link,
        Err(e) => {
            tracing::warn!(pending = %approval.id, "adopted task cannot reach its upstream: {e}");
            let gw = gw.clone();
            tokio::spawn(async move { abandon_adopted(&gw, &approval).await });
            return;
        }
    };
    let id = approval.id.to_string();
    gw.holds.owned.insert(
        id.clone(),
        Owned {
            session_key: approval.session.clone(),
            request_id: message.id().cloned().unwrap_or_else(Id::null),
            recorded: watch::channel(None).0,
        },
    );
    gw.holds.view.insert(id, PendingItem::of(&approval));
    let resolution = gw.approvals.wait(approval.id);
    let waiter = Waiter {
        gw: gw.clone(),
        ctx: CallContext {
            upstream,
            link,
            era: crate::era::Era::Stateless,
            session_key: approval.session.clone(),
            agent: approval.agent.clone(),
        },
        message,
        headers,
        approval,
        timeout,
        progress_token: None,
        sink: Sink::Task(task_id.to_owned()),
        // A task is never put to the agent's user (see `hold_call`).
        question: None,
        via: Via::default(),
    };
    tokio::spawn(waiter.run(Box::pin(resolution)));
}

/// Ends a hold adopted from a dead replica that cannot be carried on (its
/// task was never handed to the agent, or its upstream is gone): abandoned,
/// recorded once, its task (if any) refused.
pub async fn abandon_adopted(gw: &Gateway, approval: &PendingApproval) {
    let resolution = match gw.approvals.abandon(approval.id).await {
        Ok(resolved) => resolved.resolution,
        Err(approvals::DecideError::AlreadyDecided(winner)) => {
            (*winner).handed_over("that held it", "lease")
        }
        Err(e) => {
            tracing::warn!(pending = %approval.id, "adopted hold not abandoned: {e}");
            return;
        }
    };
    record_orphan(gw, approval, &resolution).await;
    if let Err(e) = gw.approvals.mark_recorded(approval.id).await {
        tracing::warn!(pending = %approval.id, "recorded, but the store was not told: {e}");
    }
}

/// Mirrors the approvals service into this replica: other replicas' holds
/// and decisions reach its dashboards; its own are shown by the holding
/// task. Runs until the service stops.
pub async fn follow_approvals(gw: Gateway) {
    use tokio::sync::broadcast::error::RecvError;
    let mut events = gw.approvals.subscribe();
    resync_view(&gw).await;
    let me = gw.approvals.replica().to_owned();
    loop {
        let event = tokio::select! {
            _ = gw.shutdown.cancelled() => return,
            event = events.recv() => event,
        };
        match event {
            Ok(approvals::ApprovalEvent::Created(a)) if a.owner != me => {
                show_created(&gw, &PendingItem::of(&a));
            }
            Ok(approvals::ApprovalEvent::Resolved {
                approval,
                resolution,
            }) if approval.owner != me => {
                show_resolved(&gw, &approval, &resolution);
            }
            Ok(approvals::ApprovalEvent::Orphaned {
                approval,
                resolution,
            }) => record_orphan(&gw, &approval, &resolution).await,
            Ok(approvals::ApprovalEvent::Resynced) | Err(RecvError::Lagged(_)) => {
                resync_view(&gw).await;
            }
            Ok(_) => {}
            Err(RecvError::Closed) => return,
        }
    }
}

/// Replaces this replica's view of other replicas' holds with the store's
/// open approvals and sends dashboards a fresh snapshot. Its own holds are
/// left to the tasks holding them (`hold_call` adds, `Waiter::run` removes):
/// a list read before one of them was resolved must not bring it back.
async fn resync_view(gw: &Gateway) {
    let open = match gw.approvals.list().await {
        Ok(open) => open,
        Err(e) => {
            tracing::warn!("pending approvals not refreshed: {e}");
            return;
        }
    };
    let me = gw.approvals.replica();
    let ids: std::collections::HashSet<String> = open.iter().map(|a| a.id.to_string()).collect();
    gw.holds
        .view
        .retain(|id, _| ids.contains(id) || gw.holds.owned.contains_key(id));
    for approval in open.iter().filter(|a| a.owner != me) {
        gw.holds.view.insert(
            approval.id.to_string(),
            PendingItem::of(approval).with_via(gw),
        );
    }
    gw.events.publish(
        "snapshot",
        json!({
            "pending": gw.holds.list(),
            "agents_connected": gw.agents_connected(),
            "policy_problems": gw.policy_problems(),
        }),
    );
}

/// The session a held call's stream may be resumed in: a handshake-era HTTP
/// session that negotiated 2025-11-25 or later (older clients cannot parse
/// the priming event, and their spec does not promise resumption).
fn resumable_session(gw: &Gateway, ctx: &CallContext) -> Option<String> {
    if ctx.era != crate::era::Era::Handshake {
        return None;
    }
    let session = gw.sessions.get(&ctx.session_key)?;
    let version = session.protocol_version()?;
    (version >= "2025-11-25").then(|| ctx.session_key.clone())
}

/// The task that waits for a decision on behalf of the held request.
struct Waiter {
    gw: Gateway,
    ctx: CallContext,
    message: Message,
    headers: Option<HeaderMap>,
    /// The approval as the store keeps it (id, tool, rule, reason, arguments
    /// hash, times): the hold keeps no second copy of them.
    approval: PendingApproval,
    timeout: Duration,
    progress_token: Option<String>,
    sink: Sink,
    /// Handshake era: the elicitation to put to the agent's user on the
    /// held stream (`approval.via` has `agent_user` and the client can be asked).
    question: Option<Value>,
    via: Via,
}

/// Where the held call's answer goes.
enum Sink {
    /// The agent's open request (SSE on HTTP, the pending line on stdio),
    /// resumable in a handshake-era HTTP session.
    Stream(Arc<HeldStream>),
    /// A task the agent polls (stateless era with the tasks extension).
    Task(String),
    /// Stateless era, the agent's user asked by `input_required`: the
    /// client's retry picks up the recorded outcome and answers it.
    Parked(Arc<elicit::Parked>),
}

/// The approvals service's answer for one hold.
type Resolving =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Resolution, WaitError>> + Send>>;

impl Waiter {
    fn id(&self) -> String {
        self.approval.id.to_string()
    }

    /// Passes a message to the agent; false when the agent is gone.
    async fn deliver(&self, message: Message) -> bool {
        self.relay(message, None).await
    }

    /// Passes a message to the agent, with the upstream's SSE event id and
    /// `retry` if it had them; false when the agent is gone for good.
    async fn relay(&self, message: Message, upstream: Option<&Event>) -> bool {
        if message.kind() == jsonrpc::Kind::Response {
            self.gw.holds.remember_continuation(
                &message,
                &self.ctx.scope(),
                &self.approval.tool,
                &self.approval.args_hash,
            );
        }
        match &self.sink {
            Sink::Stream(held) => {
                let (id, retry) = upstream.map_or((None, None), |e| (e.id.clone(), e.retry));
                held.send(message, id, retry).await
            }
            Sink::Task(task_id) => {
                if message.kind() == jsonrpc::Kind::Response {
                    self.gw.tasks.finish(task_id, &message);
                    self.gw.tasks.persist(task_id).await;
                }
                true
            }
            // The retry answers (see `elicit_retry`).
            Sink::Parked(_) => true,
        }
    }

    /// Withdraws the hold because the agent went away (a later decision
    /// then gets 409 "cancelled").
    async fn cancel(&self, why: String) {
        if let Err(e) = self.gw.approvals.cancel(self.approval.id, why).await {
            tracing::debug!(pending = %self.approval.id, "not cancelled: {e}");
        }
    }

    async fn run(self, mut resolving: Resolving) {
        let held = match &self.sink {
            Sink::Stream(held) => Some(held.clone()),
            Sink::Task(_) | Sink::Parked(_) => None,
        };
        // The agent's user, asked on the stream (handshake era).
        let mut asked = match (&self.question, &held) {
            (Some(question), Some(held)) => {
                let (eid, answer) = self.gw.holds.elicit.ask(&self.ctx.session_key);
                let request = elicit::request(&eid, question.clone());
                // Boxed, like every send below: this loop's state machine is
                // what each held call keeps in memory while it waits.
                Box::pin(held.send(request, None, None)).await;
                Some((eid, Some(answer)))
            }
            _ => None,
        };
        // Resolves when a streaming agent goes away; never for tasks.
        let mut gone_signal = held.as_ref().and_then(|h| h.take_gone());
        // While a resumable stream is detached: when the hold gives up on it.
        let mut detached_until: Option<tokio::time::Instant> = None;
        // The `cancel` and `deliver` futures below are boxed: this loop is
        // what a held call keeps in memory while it waits, and an async
        // state machine is as large as its largest await. Timeouts are the
        // approvals service's (its timer resolves the approval).
        let deadline = tokio::time::Instant::now() + self.timeout;
        let interval = self.gw.config.approval.progress_interval;
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        let mut sent = 0u64;
        let mut gone = false;
        let resolution = loop {
            tokio::select! {
                r = &mut resolving => match r {
                    Ok(r) => break r,
                    Err(e) => {
                        // The service stopped (shutdown): nobody can decide now.
                        tracing::warn!(pending = %self.approval.id, "held call ended without a decision: {e}");
                        self.end(held.as_ref());
                        return;
                    }
                },
                _ = stream_gone(&mut gone_signal), if !gone => {
                    gone_signal = None;
                    let grace = self.gw.config.approval.resume_grace;
                    if held.as_ref().is_some_and(|h| h.resumable()) && !grace.is_zero() {
                        tracing::info!(pending = %self.approval.id, "agent stream of a held call dropped; waiting {} s for it to resume", grace.as_secs_f64());
                        detached_until = Some(tokio::time::Instant::now() + grace);
                    } else {
                        gone = true;
                        Box::pin(self.cancel("the agent closed the connection".into())).await;
                    }
                }
                answer = user_answer(&mut asked) => {
                    Box::pin(self.user_decides(answer)).await;
                }
                _ = attached(held.as_deref()), if !gone => {
                    gone_signal = held.as_ref().and_then(|h| h.take_gone());
                    detached_until = None;
                }
                _ = tokio::time::sleep_until(detached_until.unwrap_or(deadline)), if detached_until.is_some() && !gone => {
                    gone = true;
                    detached_until = None;
                    let why = format!("the agent's stream dropped and was not resumed within {} s", self.gw.config.approval.resume_grace.as_secs_f64());
                    Box::pin(self.cancel(why)).await;
                }
                _ = ticker.tick(), if self.progress_token.is_some() && matches!(self.sink, Sink::Stream(..)) && detached_until.is_none() => {
                    sent += 1;
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    let note = self.progress(sent, left);
                    if !Box::pin(self.deliver(note)).await && !gone {
                        gone = true;
                        Box::pin(self.cancel("the agent closed the connection".into())).await;
                    }
                }
            }
        };
        // An adoptable hold (a task) may have been adopted by a survivor
        // while this replica only looked dead (its lease lapsed): then the
        // survivor records and releases it, not this replica.
        if self.approval.adoptable && !Box::pin(self.still_mine()).await {
            self.hand_off(held.as_ref());
            return;
        }
        // Recorded before anything is released (module docs).
        let recorded = Box::pin(record_outcome(&self.gw, &self.approval, &resolution)).await;
        if recorded.is_ok() && self.approval.adoptable {
            // The compare-and-set that makes the release exactly once.
            match self.gw.approvals.claim(self.approval.id).await {
                Ok(true) => {}
                outcome => {
                    tracing::warn!(pending = %self.approval.id, ?outcome, "adopted by another replica as it was decided; not released here");
                    self.hand_off(held.as_ref());
                    return;
                }
            }
        } else if recorded.is_ok() {
            // Off the release path: if this replica died before saying so,
            // a survivor would record an `abandoned` row after this one.
            let (approvals, id) = (self.gw.approvals.clone(), self.approval.id);
            tokio::spawn(async move {
                if let Err(e) = approvals.mark_recorded(id).await {
                    tracing::warn!(pending = %id, "recorded, but the store was not told: {e}");
                }
            });
        }
        show_resolved(&self.gw, &self.approval, &resolution);
        if let Some((_, owned)) = self.gw.holds.owned.remove(&self.id()) {
            owned.recorded.send_replace(Some(recorded.clone()));
        }
        if let Some((eid, unanswered)) = asked {
            self.gw.holds.elicit.finished(&eid);
            if unanswered.is_some() {
                // Decided elsewhere: the user's question is withdrawn.
                let why = format!("decided: {}", resolution.describe());
                Box::pin(self.deliver(elicit::cancelled(&eid, &why))).await;
            }
        }
        if let Sink::Parked(parked) = &self.sink {
            parked.outcome.send_replace(Some(elicit::Recorded {
                resolution: resolution.clone(),
                recorded: recorded.clone(),
            }));
            return;
        }
        // Boxed: only a decided call pays for the (large) release future;
        // a waiting one stays a small task (docs/benchmarks.md, Holds).
        let gw = self.gw.clone();
        let id = self.id();
        match recorded {
            Ok(()) => Box::pin(self.release(resolution, sent)).await,
            Err(e) => Box::pin(self.refuse_unrecorded(&resolution, e)).await,
        }
        if let Some(held) = held {
            finish_stream(&gw, &id, &held);
        }
    }

    /// Takes the agent's user's answer as a decision, through the approvals
    /// service's compare-and-set (a decision taken elsewhere first wins; the
    /// hold's resolution then arrives as usual).
    async fn user_decides(&self, answer: elicit::Answer) {
        let asker = UserAsked {
            pending_id: self.approval.id,
            upstream: &self.approval.upstream,
            tool: &self.approval.tool,
            agent: &self.ctx.agent,
            approvers_decide: self.via.approvers,
        };
        take_user_answer(&self.gw, &asker, answer).await;
    }

    /// The resolution could not be written to the audit history: whatever it
    /// was, nothing is released.
    async fn refuse_unrecorded(self, resolution: &Resolution, error: String) {
        tracing::error!(pending = %self.approval.id, "could not record {:?}: {error}; the call is refused", resolution.verdict);
        if resolution.verdict == Verdict::Cancelled {
            if let Sink::Task(task_id) = &self.sink {
                self.gw.tasks.mark_cancelled(task_id);
                self.gw.tasks.persist(task_id).await;
            }
            return;
        }
        let request_id = self.message.id().cloned().unwrap_or_else(Id::null);
        let text = format!(
            "Airlock refused this call to `{}`: the decision ({}) could not be recorded in the audit store ({error}), so nothing was released.",
            self.approval.tool,
            resolution.describe()
        );
        let refusal = Refusal {
            decision: "audit_unavailable",
            rule: self.approval.rule.clone(),
            reason: self.approval.reason.clone().unwrap_or_default(),
            text,
            retry_after: None,
        };
        let answer = gate::refusal_response(&request_id, &refusal, self.ctx.era);
        self.deliver(answer).await;
    }

    /// Whether this replica still owns the hold (a store that cannot be read
    /// counts as no: nothing is released on a guess).
    async fn still_mine(&self) -> bool {
        match self.gw.approvals.get(self.approval.id).await {
            Ok(Some(stored)) => stored.approval.owner == self.gw.approvals.replica(),
            _ => false,
        }
    }

    /// Leaves an adopted hold to the replica that adopted it: forgotten
    /// here, its task answered from the shared store from now on.
    fn hand_off(&self, held: Option<&Arc<HeldStream>>) {
        if let Sink::Task(task_id) = &self.sink {
            self.gw.tasks.forget_local(task_id);
        }
        self.end(held);
    }

    /// A hold that ended with no resolution to act on (the service stopped).
    fn end(&self, held: Option<&Arc<HeldStream>>) {
        self.gw.holds.owned.remove(&self.id());
        self.gw.holds.view.remove(&self.id());
        self.finish(held);
    }

    fn finish(&self, held: Option<&Arc<HeldStream>>) {
        if let Some(held) = held {
            finish_stream(&self.gw, &self.id(), held);
        }
    }

    fn progress(&self, n: u64, left: Duration) -> Message {
        let token: Value = self
            .progress_token
            .as_deref()
            .and_then(|t| serde_json::from_str(t).ok())
            .unwrap_or(Value::Null);
        let secs = left.as_secs();
        let message = format!(
            "waiting for human approval — {}m {:02}s left",
            secs / 60,
            secs % 60
        );
        Message::from_value(&json!({
            "jsonrpc": "2.0",
            "method": "notifications/progress",
            "params": { "progressToken": token, "progress": n, "message": message },
        }))
    }

    async fn release(self, resolution: Resolution, progress_sent: u64) {
        let request_id = self.message.id().cloned().unwrap_or_else(Id::null);
        if resolution.verdict == Verdict::Cancelled {
            // Nobody to answer on a stream; a task reads as cancelled.
            if let Sink::Task(task_id) = &self.sink {
                self.gw.tasks.mark_cancelled(task_id);
                self.gw.tasks.persist(task_id).await;
            }
            return;
        }
        if resolution.outcome == Outcome::Allowed {
            self.forward(progress_sent).await;
            return;
        }
        let refusal = refusal_of(
            &resolution,
            &self.approval.tool,
            &self.approval.rule,
            self.approval.reason.as_deref(),
            self.timeout,
        );
        let answer = gate::refusal_response(&request_id, &refusal, self.ctx.era);
        self.deliver(answer).await;
    }

    /// Sends the original request, byte for byte, and relays the answer.
    /// `progress_sent` keep-alives went out on the agent's progress token
    /// already; the upstream's own progress is shifted past them, because
    /// progress must keep increasing.
    async fn forward(self, progress_sent: u64) {
        let request_id = self.message.id().cloned().unwrap_or_else(Id::null);
        let started = Instant::now();
        // Message clones share their bytes: this is the exact request the
        // approver saw (less the tasks extension when Airlock answered with
        // its own task: the upstream must answer with a result).
        let message = match &self.sink {
            Sink::Task(_) => crate::tasks::without_extension(&self.message),
            Sink::Stream(..) | Sink::Parked(_) => self.message.clone(),
        };
        let reply = self
            .gw
            .upstream_request(&self.ctx.link, message, self.headers.as_ref())
            .await;
        self.gw.metrics.upstream_latency.observe(started.elapsed());
        match reply {
            Ok(reply) => match reply.body {
                ReplyBody::Json(m) => {
                    self.deliver(m).await;
                }
                ReplyBody::Stream(mut rx) => {
                    while let Some(mut event) = rx.recv().await {
                        let Some(message) = event.message.take() else {
                            // The upstream's priming event: its id resumes
                            // the upstream's stream.
                            if let Sink::Stream(held) = &self.sink {
                                held.push(None, event.id, event.retry);
                            }
                            continue;
                        };
                        let message = shift_progress(message, progress_sent);
                        if !self.relay(message, Some(&event)).await {
                            return;
                        }
                    }
                }
                ReplyBody::Empty | ReplyBody::Other { .. } => {
                    let text = format!(
                        "upstream answered HTTP {} without a JSON-RPC message",
                        reply.status
                    );
                    let m =
                        jsonrpc::error_response(&request_id, jsonrpc::code::UPSTREAM_ERROR, &text);
                    self.deliver(m).await;
                }
            },
            Err(e) => {
                let m = jsonrpc::error_response(
                    &request_id,
                    jsonrpc::code::UPSTREAM_ERROR,
                    &e.to_string(),
                );
                self.deliver(m).await;
            }
        }
    }
}

/// The refusal of a held call that was not released (denied, timed out,
/// ended by shutdown).
fn refusal_of(
    resolution: &Resolution,
    tool: &str,
    rule: &str,
    reason: Option<&str>,
    timeout: Duration,
) -> Refusal {
    let timeout = timeout.as_secs();
    let text = match resolution.verdict {
        Verdict::Denied => {
            let who = resolution.decider.as_deref().unwrap_or("an approver");
            match &resolution.comment {
                Some(c) => format!("Airlock: {who} denied this call to `{tool}`: {c}"),
                None => format!("Airlock: {who} denied this call to `{tool}`."),
            }
        }
        Verdict::TimedOut => format!(
            "Airlock: nobody approved this call to `{tool}` within {timeout} s; it timed out and was denied."
        ),
        Verdict::Cancelled => {
            format!("Airlock: this call to `{tool}` was cancelled before a decision.")
        }
        Verdict::Shutdown | Verdict::Abandoned | Verdict::Approved => {
            format!("Airlock denied this call to `{tool}`: gateway shutting down.")
        }
    };
    Refusal {
        decision: match resolution.verdict {
            Verdict::Denied => "approval_denied",
            Verdict::TimedOut => "approval_timed_out",
            _ => "denied",
        },
        rule: rule.to_owned(),
        reason: match resolution.verdict {
            Verdict::Shutdown | Verdict::Abandoned => "gateway shutting down".into(),
            Verdict::TimedOut => format!("no decision within {timeout} s"),
            _ => resolution
                .comment
                .clone()
                .or_else(|| reason.map(str::to_owned))
                .unwrap_or_default(),
        },
        text,
        retry_after: None,
    }
}

/// The agent's user's answer to the question on the held stream; never
/// when none is outstanding. Once answered, the slot is emptied (the
/// question itself stays, so the hold's end knows it was answered).
async fn user_answer(
    asked: &mut Option<(Id, Option<oneshot::Receiver<elicit::Answer>>)>,
) -> elicit::Answer {
    let Some((_, slot)) = asked else {
        return std::future::pending().await;
    };
    let Some(rx) = slot.as_mut() else {
        return std::future::pending().await;
    };
    let answer = rx.await;
    *slot = None;
    match answer {
        Ok(answer) => answer,
        // Dropped without an answer (cannot happen while the hold waits).
        Err(_) => std::future::pending().await,
    }
}

/// Resolves when the agent's current attachment goes away; never without one.
async fn stream_gone(signal: &mut Option<oneshot::Receiver<()>>) {
    match signal {
        Some(signal) => {
            let _ = signal.await;
        }
        None => std::future::pending().await,
    }
}

/// Resolves when an agent re-attached to a resumable stream; never otherwise.
async fn attached(held: Option<&HeldStream>) {
    match held {
        Some(held) if held.resumable() => held.attached.notified().await,
        _ => std::future::pending().await,
    }
}

/// Ends a held call's stream; a resumable one stays for `[approval]
/// resume_grace` so an agent whose stream dropped can still fetch the answer.
fn finish_stream(gw: &Gateway, id: &str, held: &Arc<HeldStream>) {
    held.finish();
    if held.resumable() {
        let gw = gw.clone();
        let id = id.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(gw.config.approval.resume_grace).await;
            gw.holds.streams.remove(&id);
        });
    }
}

/// Adds `by` to a progress notification's `progress` (and `total`).
fn shift_progress(message: Message, by: u64) -> Message {
    if by == 0 || message.method() != Some("notifications/progress") {
        return message;
    }
    let Ok(mut value) = serde_json::from_str::<Value>(message.text()) else {
        return message;
    };
    for key in ["progress", "total"] {
        let shifted = match value.pointer(&format!("/params/{key}")) {
            Some(Value::Number(n)) if n.is_u64() => {
                json!(n.as_u64().unwrap_or(0).saturating_add(by))
            }
            Some(Value::Number(n)) => json!(n.as_f64().unwrap_or(0.0) + by as f64),
            _ => continue,
        };
        value["params"][key] = shifted;
    }
    Message::from_value(&value)
}

/// Handles `notifications/cancelled` for a held call, and the agent's
/// answers to Airlock's own questions (never forwarded upstream); `None`
/// passes the message on.
pub fn intercept_notification(
    gw: &Gateway,
    ctx: &CallContext,
    message: &Message,
) -> Option<Exchange> {
    if message.kind() == jsonrpc::Kind::Response {
        return gw
            .holds
            .elicit
            .answer(&ctx.session_key, message)
            .then(|| Exchange {
                reply: Reply::accepted(),
                list_filter: None,
            });
    }
    if message.method() != Some("notifications/cancelled") {
        return None;
    }
    #[derive(serde::Deserialize)]
    struct Cancelled<'a> {
        #[serde(rename = "requestId", borrow)]
        request_id: &'a serde_json::value::RawValue,
    }
    let params = message.params::<Cancelled<'_>>()?;
    let target = Id::from_raw(params.request_id.get());
    let id = gw
        .holds
        .owned_by(&ctx.session_key, Some(&target))
        .into_iter()
        .next()?;
    let gw = gw.clone();
    tokio::spawn(async move {
        cancel(&gw, &id, "cancelled by the agent").await;
    });
    Some(Exchange {
        reply: Reply::accepted(),
        list_filter: None,
    })
}

/// Withdraws a hold this replica owns (the agent cancelled or went away).
pub async fn cancel(gw: &Gateway, id: &str, why: &str) -> bool {
    let Ok(uuid) = Uuid::parse_str(id) else {
        return false;
    };
    gw.approvals.cancel(uuid, why).await.is_ok()
}

/// Cancels every hold of an agent session that went away.
pub async fn agent_gone(gw: &Gateway, session_key: &str) {
    gw.holds.elicit.session_gone(session_key);
    for id in gw.holds.owned_by(session_key, None) {
        cancel(gw, &id, "the agent went away").await;
    }
}

/// Denies every hold this replica owns (graceful shutdown), and waits a
/// moment for their outcomes to be recorded and sent.
pub async fn deny_all_for_shutdown(gw: &Gateway) {
    if let Err(e) = gw.approvals.close_owned("gateway shutting down").await {
        tracing::error!("open holds not closed for shutdown: {e}");
    }
    let until = Instant::now() + Duration::from_secs(5);
    while !gw.holds.owned.is_empty() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Records holds left open by a previous run as `abandoned`.
pub async fn mark_abandoned(
    gw: &Gateway,
    company: crate::audit::users::Company,
) -> Result<usize, crate::audit::AuditError> {
    let mut open = gw.audit.read(|db| db.open_approvals()).await?;
    if company == crate::audit::users::Company::Shared {
        // Another live gateway may still be waiting on these: only holds older
        // than the longest possible wait are surely someone's leftovers.
        let longest = chrono::Duration::seconds(crate::policy::MAX_APPROVAL_TIMEOUT as i64 + 60);
        let cutoff = chrono::Utc::now() - longest;
        let before = open.len();
        open.retain(|e| chrono::DateTime::parse_from_rfc3339(&e.at).is_ok_and(|at| at < cutoff));
        if before > open.len() {
            tracing::info!(
                "{} hold(s) open in the audit file may belong to another running gateway; not marked abandoned",
                before - open.len()
            );
        }
    }
    for entry in &open {
        let record = Record {
            decision: "abandoned",
            session: entry.session.clone(),
            agent: entry.agent.clone(),
            upstream: entry.upstream.clone(),
            tool: entry.tool.clone(),
            arguments: entry.arguments.as_ref().map(|a| a.to_string()),
            rule: entry.rule.clone(),
            reason: Some("the gateway stopped before a decision".into()),
            pending_id: entry.pending_id.clone(),
            channel: Some("restart".into()),
            ..Default::default()
        };
        gw.audit.commit(record).await?;
        gw.metrics.count("abandoned");
    }
    Ok(open.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderName;
    use bytes::Bytes;

    #[test]
    fn detached_headers_own_their_values_and_keep_what_goes_upstream() {
        // Values as hyper parses them: slices of the connection's read buffer.
        let buffer = Bytes::from(format!(
            "application/json\r\nBearer secret\r\n{}",
            " ".repeat(8000)
        ));
        let mut headers = HeaderMap::new();
        let content_type = HeaderValue::from_maybe_shared(buffer.slice(0..16)).unwrap();
        let mut token = HeaderValue::from_maybe_shared(buffer.slice(18..31)).unwrap();
        token.set_sensitive(true);
        headers.insert(axum::http::header::CONTENT_TYPE, content_type);
        headers.insert(axum::http::header::AUTHORIZATION, token);
        let custom = HeaderName::from_static("x-trace");
        headers.append(custom.clone(), HeaderValue::from_static("a"));
        headers.append(custom.clone(), HeaderValue::from_static("b"));
        // Not forwarded upstream (nor is Content-Type), so not kept.
        headers.insert(axum::http::header::COOKIE, HeaderValue::from_static("c=1"));
        headers.insert(axum::http::header::HOST, HeaderValue::from_static("gw"));

        let copy = detached_headers(&headers);
        for gone in ["content-type", "cookie", "host"] {
            headers.remove(gone);
        }
        assert_eq!(copy, headers);
        let range = buffer.as_ptr_range();
        assert!(
            copy.values()
                .all(|v| !range.contains(&v.as_bytes().as_ptr()))
        );
        assert!(copy[axum::http::header::AUTHORIZATION].is_sensitive());
        let repeated: Vec<_> = copy.get_all(&custom).iter().collect();
        assert_eq!(repeated, ["a", "b"]);
    }
}
