//! Calls waiting for a human: the hold, the decision, the release.
//!
//! A held call is a [`Pending`] in a map keyed by its id, plus a `oneshot`
//! that its waiting task listens on. Exactly one decision wins: the first
//! decider flips the pending's state under its lock; everyone after gets the
//! winner back (HTTP 409). The winner's decision is committed to the audit
//! store before the waiting task is told, so nothing is released unrecorded.
//!
//! The agent's request stays open as a stream: progress notifications while
//! it waits (when it sent a `progressToken`), then the upstream's answer
//! (approved) or a refusal. If the agent goes away, the hold is cancelled —
//! in a handshake-era HTTP session only once it has not come back with
//! `Last-Event-ID` within a grace period (see [`stream`]).

pub mod stream;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use chrono::{DateTime, SecondsFormat, Utc};
use dashmap::DashMap;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::audit::Record;
use crate::era;
use crate::gate::{self, Refusal};
use crate::gateway::{CallContext, Exchange, Gateway};
use crate::jsonrpc::{self, Id, Message};
use crate::policy::{Approval, OnTimeout};
use crate::upstream::{Event, Reply, ReplyBody, UpstreamError};
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
}

/// How a hold ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Approved,
    Denied,
    TimedOut,
    Cancelled,
    /// Denied because the gateway is shutting down.
    Shutdown,
}

impl Verdict {
    /// The audit `decision` of this verdict.
    pub fn audit_decision(self) -> &'static str {
        match self {
            Verdict::Approved => "approved",
            Verdict::Denied => "denied_by_human",
            Verdict::TimedOut => "timed_out",
            Verdict::Cancelled => "cancelled",
            Verdict::Shutdown => "denied",
        }
    }

    fn past_tense(self) -> &'static str {
        match self {
            Verdict::Approved => "approved",
            Verdict::Denied | Verdict::Shutdown => "denied",
            Verdict::TimedOut => "timed out",
            Verdict::Cancelled => "cancelled",
        }
    }
}

/// The winning decision about a pending call.
#[derive(Debug, Clone, Serialize)]
pub struct Resolution {
    pub decision: Verdict,
    /// `allowed` when the call goes upstream, else `refused`.
    pub outcome: &'static str,
    pub decider: Option<String>,
    pub channel: String,
    pub comment: Option<String>,
    pub at: String,
    #[serde(skip)]
    pub when: DateTime<Utc>,
}

impl Resolution {
    /// "approved by alice", "timed out", … for 409 messages and notifications.
    pub fn describe(&self) -> String {
        match &self.decider {
            Some(who) => format!("{} by {who}", self.decision.past_tense()),
            None => self.decision.past_tense().to_owned(),
        }
    }
}

/// One held call.
pub struct Pending {
    pub item: PendingItem,
    session_key: String,
    request_id: Id,
    created: Instant,
    on_timeout: OnTimeout,
    /// None while open; the first decision sets it.
    state: Mutex<Option<Resolution>>,
    wake: Mutex<Option<oneshot::Sender<Resolution>>>,
}

/// The set of calls waiting for a human, plus recently decided ones (for 409s).
#[derive(Default)]
pub struct Holds {
    pending: DashMap<String, Arc<Pending>>,
    /// Recent decisions by pending id, to answer a late decider with 409.
    /// Bounded by age (an hour) and by count (see `remember_resolution`).
    resolved: DashMap<String, Resolution>,
    /// MRTR: `requestState` of approved calls that asked the client for input
    /// → (session, tool, arguments hash, until). The client's retry carrying
    /// that state, for the same tool and arguments, continues the approved
    /// call instead of being held again.
    continuations: DashMap<String, (String, String, String, Instant)>,
    /// Resumable held-call streams by pending id, open or finished less than
    /// [`stream::GRACE`] ago.
    streams: DashMap<String, Arc<HeldStream>>,
}

/// The canonical hash of raw arguments (absent arguments hash like `{}`).
pub fn hash_arguments(arguments: Option<&str>) -> String {
    let value = arguments
        .and_then(|a| serde_json::from_str(a).ok())
        .unwrap_or_else(|| json!({}));
    crate::audit::arguments_hash(&value)
}

/// Decisions kept for 409 answers before the window starts shrinking.
const MAX_RESOLVED: usize = 10_000;

/// How long an approved call's `input_required` retry stays approved.
const CONTINUATION_TTL: Duration = Duration::from_secs(600);

impl Holds {
    /// Open holds, oldest first.
    pub fn list(&self) -> Vec<PendingItem> {
        let mut items: Vec<(Instant, PendingItem)> = self
            .pending
            .iter()
            .filter(|p| p.state.lock().expect("state lock").is_none())
            .map(|p| (p.created, p.item.clone()))
            .collect();
        items.sort_by_key(|(created, _)| *created);
        items.into_iter().map(|(_, item)| item).collect()
    }

    pub fn get(&self, id: &str) -> Option<PendingItem> {
        self.pending.get(id).map(|p| p.item.clone())
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The decision about a call decided recently, if any.
    pub fn resolution(&self, id: &str) -> Option<Resolution> {
        if let Some(p) = self.pending.get(id)
            && let Some(r) = p.state.lock().expect("state lock").clone()
        {
            return Some(r);
        }
        self.resolved.get(id).map(|r| r.clone())
    }

    /// Keeps a decision for late deciders. Past twice `MAX_RESOLVED` entries
    /// (pruning is amortised), the window shrinks (an hour, then a minute, then ten seconds) so memory
    /// stays bounded under any decision rate.
    fn remember_resolution(&self, id: &str, resolution: &Resolution) {
        self.resolved.insert(id.to_owned(), resolution.clone());
        if self.resolved.len() > 2 * MAX_RESOLVED {
            for window in [chrono::Duration::minutes(1), chrono::Duration::seconds(10)] {
                let cutoff = Utc::now() - window;
                self.resolved.retain(|_, r| r.when > cutoff);
                if self.resolved.len() <= MAX_RESOLVED {
                    break;
                }
            }
        }
    }

    /// Forgets decided holds older than an hour and expired continuations.
    pub fn prune(&self) {
        let cutoff = Utc::now() - chrono::Duration::hours(1);
        self.resolved.retain(|_, r| r.when > cutoff);
        let now = Instant::now();
        self.continuations.retain(|_, c| c.3 > now);
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
}

/// Why a decision was not taken.
#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    #[error("no pending call with id {0}")]
    NotFound(String),
    #[error("already {}", .0.describe())]
    AlreadyDecided(Resolution),
    #[error("the decision could not be recorded in the audit store ({0}); nothing was released")]
    Audit(String),
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Decides a pending call. Exactly one caller wins; see the module docs.
pub async fn decide(
    gw: &Gateway,
    id: &str,
    decision: Verdict,
    decider: Option<String>,
    channel: &str,
    comment: Option<String>,
) -> Result<Resolution, DecideError> {
    let Some(pending) = gw.holds.pending.get(id).map(|p| p.clone()) else {
        return match gw.holds.resolved.get(id) {
            Some(r) => Err(DecideError::AlreadyDecided(r.clone())),
            None => Err(DecideError::NotFound(id.to_owned())),
        };
    };
    let now = Utc::now();
    let outcome = match decision {
        Verdict::Approved => "allowed",
        Verdict::TimedOut if pending.on_timeout == OnTimeout::Allow => "allowed",
        _ => "refused",
    };
    let resolution = Resolution {
        decision,
        outcome,
        decider,
        channel: channel.to_owned(),
        comment: comment.filter(|c| !c.trim().is_empty()),
        at: rfc3339(now),
        when: now,
    };
    {
        let mut state = pending.state.lock().expect("state lock");
        if let Some(winner) = state.as_ref() {
            return Err(DecideError::AlreadyDecided(winner.clone()));
        }
        *state = Some(resolution.clone());
    }
    let wait = pending.created.elapsed();
    let record = Record {
        decision: decision.audit_decision(),
        session: Some(pending.item.session.clone()),
        agent: Some(pending.item.agent.clone()),
        upstream: Some(pending.item.upstream.clone()),
        tool: Some(pending.item.tool.clone()),
        arguments: Some(pending.item.arguments.to_string()),
        rule: Some(pending.item.rule.clone()),
        reason: match decision {
            Verdict::Shutdown => Some("gateway shutting down".into()),
            Verdict::TimedOut => Some(format!(
                "no decision within {} s",
                (now - parse_time(&pending.item.created_at)).num_seconds()
            )),
            _ => pending.item.reason.clone(),
        },
        pending_id: Some(id.to_owned()),
        decider: resolution.decider.clone(),
        channel: Some(channel.to_owned()),
        comment: resolution.comment.clone(),
        wait_ms: Some(wait.as_millis() as i64),
    };
    if let Err(e) = gw.audit.commit(record).await {
        // Never release a call whose release is not on record.
        let must_record =
            matches!(decision, Verdict::Approved | Verdict::Denied) || outcome == "allowed";
        if must_record {
            // Reopen: a human may retry once the store is back.
            *pending.state.lock().expect("state lock") = None;
            return Err(DecideError::Audit(e.to_string()));
        }
        tracing::error!(pending = %id, "could not record {decision:?}: {e}");
    }
    gw.holds.remember_resolution(id, &resolution);
    gw.holds.pending.remove(id);
    gw.metrics.count(decision.audit_decision());
    if decision != Verdict::Cancelled && decision != Verdict::Shutdown {
        gw.metrics.approval_wait.observe(wait);
    }
    if let Some(wake) = pending.wake.lock().expect("wake lock").take() {
        let _ = wake.send(resolution.clone());
    }
    gw.events.publish(
        "pending.resolved",
        json!({
            "id": id,
            "decision": resolution.decision,
            "outcome": resolution.outcome,
            "decider": resolution.decider,
            "channel": resolution.channel,
            "comment": resolution.comment,
            "tool": pending.item.tool,
            "wait_ms": wait.as_millis() as u64,
        }),
    );
    gw.notify_resolved(&pending.item, &resolution);
    tracing::info!(
        pending = %id,
        tool = %pending.item.tool,
        upstream = %pending.item.upstream,
        agent = %pending.item.agent,
        outcome = %decision.audit_decision(),
        released = %resolution.outcome,
        decider = resolution.decider.as_deref().map(tracing::field::display),
        %channel,
        wait_ms = wait.as_millis() as u64,
        "held call decided"
    );
    Ok(resolution)
}

fn parse_time(t: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(t)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|_| Utc::now())
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
    let now = Utc::now();
    let id = uuid::Uuid::now_v7().to_string();
    let arguments_value = arguments
        .as_deref()
        .map(|a| serde_json::from_str(a).unwrap_or(Value::String(a.to_owned())))
        .unwrap_or(Value::Null);
    let args_hash = hash_arguments(arguments.as_deref());
    let item = PendingItem {
        id: id.clone(),
        tool: tool.clone(),
        upstream: ctx.upstream.name.clone(),
        agent: ctx.agent.clone(),
        session: ctx.session_key.clone(),
        arguments: arguments_value,
        rule: rule.clone(),
        reason: reason.clone(),
        created_at: rfc3339(now),
        expires_at: rfc3339(now + chrono::Duration::from_std(approval.timeout).unwrap_or_default()),
    };
    let requested = Record {
        decision: "approval_requested",
        session: Some(item.session.clone()),
        agent: Some(item.agent.clone()),
        upstream: Some(item.upstream.clone()),
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
    gw.metrics.count("approval_requested");
    let (wake_tx, wake_rx) = oneshot::channel();
    let pending = Arc::new(Pending {
        item: item.clone(),
        session_key: ctx.session_key.clone(),
        request_id: request_id.clone(),
        created: Instant::now(),
        on_timeout: approval.on_timeout,
        state: Mutex::new(None),
        wake: Mutex::new(Some(wake_tx)),
    });
    gw.holds.pending.insert(id.clone(), pending);
    gw.events
        .publish("pending.created", json!({ "pending": item }));
    gw.notify_created(&item);
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

    let (progress_token, as_task) = {
        let peek = era::peek(&message);
        let as_task = ctx.era == crate::era::Era::Stateless && crate::tasks::declared(&peek);
        (
            peek.meta
                .and_then(|m| m.progress_token.map(|t| t.get().to_owned())),
            as_task,
        )
    };
    let (sink, answer_now, out_rx) = if as_task {
        let (task_id, created) = gw.tasks.create(&id, &ctx.session_key, approval.timeout);
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
        // Only an HTTP upstream needs the agent's headers again.
        headers: headers
            .filter(|_| matches!(ctx.link, crate::upstream::Link::Http(_)))
            .cloned(),
        id,
        tool,
        args_hash,
        rule,
        reason,
        approval,
        progress_token,
        sink,
    };
    tokio::spawn(waiter.run(wake_rx));
    let (Some(out_rx), None) = (out_rx, &answer_now) else {
        let created = answer_now.expect("a task's answer is ready at once");
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
    id: String,
    tool: String,
    /// Binds MRTR continuations to these exact arguments.
    args_hash: String,
    rule: String,
    reason: Option<String>,
    approval: Approval,
    progress_token: Option<String>,
    sink: Sink,
}

/// Where the held call's answer goes.
enum Sink {
    /// The agent's open request (SSE on HTTP, the pending line on stdio),
    /// resumable in a handshake-era HTTP session.
    Stream(Arc<HeldStream>),
    /// A task the agent polls (stateless era with the tasks extension).
    Task(String),
}

impl Waiter {
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
                &self.tool,
                &self.args_hash,
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
                }
                true
            }
        }
    }

    async fn run(self, mut wake: oneshot::Receiver<Resolution>) {
        let held = match &self.sink {
            Sink::Stream(held) => Some(held.clone()),
            Sink::Task(_) => None,
        };
        // Resolves when a streaming agent goes away; never for tasks.
        let mut gone_signal = held.as_ref().and_then(|h| h.take_gone());
        // While a resumable stream is detached: when the hold gives up on it.
        let mut detached_until: Option<tokio::time::Instant> = None;
        // The `decide` and `deliver` futures below are boxed: this loop is
        // what a held call keeps in memory while it waits, and an async
        // state machine is as large as its largest await.
        let deadline = tokio::time::Instant::now() + self.approval.timeout;
        let interval = self.gw.config.approval.progress_interval;
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        let mut sent = 0u64;
        let mut deadline = deadline;
        let mut timed_out = false;
        let mut gone = false;
        let resolution = loop {
            tokio::select! {
                r = &mut wake => match r {
                    Ok(r) => break r,
                    Err(_) => {
                        self.finish(held.as_ref());
                        return;
                    }
                },
                _ = tokio::time::sleep_until(deadline), if !timed_out => {
                    // Latch only when the timeout itself won. If another
                    // decision is being committed (or is rolled back because
                    // the store failed), look again in a second.
                    timed_out = Box::pin(decide(&self.gw, &self.id, Verdict::TimedOut, None, "timeout", None)).await.is_ok();
                    if !timed_out {
                        deadline = tokio::time::Instant::now() + Duration::from_secs(1);
                    }
                }
                _ = stream_gone(&mut gone_signal), if !gone => {
                    gone_signal = None;
                    let grace = self.gw.config.approval.resume_grace;
                    if held.as_ref().is_some_and(|h| h.resumable()) && !grace.is_zero() {
                        tracing::info!(pending = %self.id, "agent stream of a held call dropped; waiting {} s for it to resume", grace.as_secs_f64());
                        detached_until = Some(tokio::time::Instant::now() + grace);
                    } else {
                        gone = true;
                        let _ = Box::pin(decide(&self.gw, &self.id, Verdict::Cancelled, None, "agent", Some("the agent closed the connection".into()))).await;
                    }
                }
                _ = attached(held.as_deref()), if !gone => {
                    gone_signal = held.as_ref().and_then(|h| h.take_gone());
                    detached_until = None;
                }
                _ = tokio::time::sleep_until(detached_until.unwrap_or(deadline)), if detached_until.is_some() && !gone => {
                    gone = true;
                    detached_until = None;
                    let _ = Box::pin(decide(&self.gw, &self.id, Verdict::Cancelled, None, "agent", Some(format!("the agent's stream dropped and was not resumed within {} s", self.gw.config.approval.resume_grace.as_secs_f64())))).await;
                }
                _ = ticker.tick(), if self.progress_token.is_some() && matches!(self.sink, Sink::Stream(..)) && detached_until.is_none() => {
                    sent += 1;
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    let note = self.progress(sent, left);
                    if !Box::pin(self.deliver(note)).await && !gone {
                        gone = true;
                        let _ = Box::pin(decide(&self.gw, &self.id, Verdict::Cancelled, None, "agent", Some("the agent closed the connection".into()))).await;
                    }
                }
            }
        };
        // Boxed: only a decided call pays for the (large) release future;
        // a waiting one stays a small task (docs/benchmarks.md, Holds).
        let gw = self.gw.clone();
        let id = self.id.clone();
        Box::pin(self.release(resolution, sent)).await;
        if let Some(held) = held {
            finish_stream(&gw, &id, &held);
        }
    }

    fn finish(&self, held: Option<&Arc<HeldStream>>) {
        if let Some(held) = held {
            finish_stream(&self.gw, &self.id, held);
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
        let text = match resolution.decision {
            Verdict::Cancelled => {
                // Nobody to answer on a stream; a task reads as cancelled.
                if let Sink::Task(task_id) = &self.sink {
                    self.gw.tasks.mark_cancelled(task_id);
                }
                return;
            }
            _ if resolution.outcome == "allowed" => {
                self.forward(progress_sent).await;
                return;
            }
            Verdict::Denied => {
                let who = resolution.decider.as_deref().unwrap_or("an approver");
                match &resolution.comment {
                    Some(c) => format!("Airlock: {who} denied this call to `{}`: {c}", self.tool),
                    None => format!("Airlock: {who} denied this call to `{}`.", self.tool),
                }
            }
            Verdict::TimedOut => format!(
                "Airlock: nobody approved this call to `{}` within {} s; it timed out and was denied.",
                self.tool,
                self.approval.timeout.as_secs()
            ),
            Verdict::Shutdown => format!(
                "Airlock denied this call to `{}`: gateway shutting down.",
                self.tool
            ),
            Verdict::Approved => unreachable!("approved calls are forwarded"),
        };
        let refusal = Refusal {
            decision: match resolution.decision {
                Verdict::Denied => "approval_denied",
                Verdict::TimedOut => "approval_timed_out",
                _ => "denied",
            },
            rule: self.rule.clone(),
            reason: match resolution.decision {
                Verdict::Shutdown => "gateway shutting down".into(),
                Verdict::TimedOut => {
                    format!("no decision within {} s", self.approval.timeout.as_secs())
                }
                _ => resolution
                    .comment
                    .clone()
                    .or_else(|| self.reason.clone())
                    .unwrap_or_default(),
            },
            text,
            retry_after: None,
        };
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
            Sink::Stream(..) => self.message.clone(),
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

/// Handles `notifications/cancelled` for a held call; `None` passes the message on.
pub fn intercept_notification(
    gw: &Gateway,
    ctx: &CallContext,
    message: &Message,
) -> Option<Exchange> {
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
        .pending
        .iter()
        .find(|p| p.session_key == ctx.session_key && p.request_id == target)
        .map(|p| p.item.id.clone())?;
    let gw = gw.clone();
    tokio::spawn(async move {
        let _ = decide(
            &gw,
            &id,
            Verdict::Cancelled,
            None,
            "agent",
            Some("cancelled by the agent".into()),
        )
        .await;
    });
    Some(Exchange {
        reply: Reply::accepted(),
        list_filter: None,
    })
}

/// Cancels every hold of an agent session that went away.
pub async fn agent_gone(gw: &Gateway, session_key: &str) {
    let ids: Vec<String> = gw
        .holds
        .pending
        .iter()
        .filter(|p| p.session_key == session_key)
        .map(|p| p.item.id.clone())
        .collect();
    for id in ids {
        let _ = decide(
            gw,
            &id,
            Verdict::Cancelled,
            None,
            "agent",
            Some("the agent went away".into()),
        )
        .await;
    }
}

/// Denies every open hold (graceful shutdown).
pub async fn deny_all_for_shutdown(gw: &Gateway) {
    let ids: Vec<String> = gw.holds.pending.iter().map(|p| p.item.id.clone()).collect();
    for id in ids {
        let _ = decide(gw, &id, Verdict::Shutdown, None, "shutdown", None).await;
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
