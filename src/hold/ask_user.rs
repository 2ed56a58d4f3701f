//! Asking the agent's own user about a held call (`approval.via` with
//! `agent_user`; docs/approvals.md): who can be asked, taking their answer
//! as a decision, and the stateless era's `input_required` round trip.
//! The handshake era's question rides on the held stream (`Waiter::run`).

use std::sync::Arc;
use std::time::Instant;

use axum::http::HeaderMap;
use serde_json::{Value, json};
use tokio::sync::watch;
use uuid::Uuid;

use super::{CONTINUATION_TTL, RECORD_WAIT, elicit, hash_arguments, refusal_of};
use crate::approvals::{self, Choice, Outcome, PendingApproval};
use crate::era;
use crate::gate::{self, Refusal};
use crate::gateway::{CallContext, Exchange, Gateway};
use crate::jsonrpc::{self, Id, Message};
use crate::policy::Approval;
use crate::upstream::UpstreamError;

/// The rule of an open hold when, in the policy in force, only the agent's
/// user may approve it.
pub(super) fn agent_user_only(gw: &Gateway, id: &str) -> Option<String> {
    let item = gw.holds.get(id).filter(|i| i.rule != crate::power::RULE)?;
    let upstream = gw.upstreams.get(&item.upstream)?;
    let policy = upstream.policy();
    let (approval, rule) = policy.approval_for(&item.tool);
    approval.via.agent_user_only().then(|| rule.to_owned())
}

/// Whether the agent's user can be asked about this call: the client
/// declared form elicitation (in `initialize`, or in this request's
/// `_meta` client capabilities in the stateless era).
pub(super) fn can_ask_user(gw: &Gateway, ctx: &CallContext, message: &Message) -> bool {
    match ctx.era {
        era::Era::Handshake => gw.holds.elicit.capable(&ctx.session_key),
        era::Era::Stateless => era::peek(message)
            .meta
            .and_then(|m| m.client_capabilities)
            .and_then(|c| serde_json::from_str::<Value>(c.get()).ok())
            .is_some_and(|c| elicit::declares_form(&c)),
    }
}

/// Parks a stateless-era held call for the agent's user: the
/// `input_required` answer asking them, and the parked call the retry finds
/// by its `requestState`.
pub(super) fn park(
    gw: &Gateway,
    ctx: &CallContext,
    message: &Message,
    approval: &PendingApproval,
    question: Value,
    rule: &Approval,
) -> (Arc<elicit::Parked>, Message) {
    let request_id = message.id().cloned().unwrap_or_else(Id::null);
    let (timeout, via) = (rule.timeout, rule.via);
    let until = Instant::now() + timeout + CONTINUATION_TTL;
    let (state, parked) = gw.holds.elicit.park(elicit::Parked {
        pending_id: approval.id,
        scope: ctx.scope(),
        tool: approval.tool.clone(),
        args_hash: approval.args_hash.clone(),
        agent: ctx.agent.clone(),
        rule: approval.rule.clone(),
        reason: approval.reason.clone(),
        timeout,
        approvers_decide: via.approvers,
        message: message.clone(),
        outcome: watch::channel(None).0,
        until,
    });
    let result = input_required(&state, question);
    (parked, jsonrpc::result_response(&request_id, result))
}

/// The client's retry of a parked call (stateless era), carrying its user's
/// answer in `inputResponses`. The answer is a decision (compare-and-set:
/// a decision taken elsewhere first wins); the retry then gets the hold's
/// recorded outcome: the approved call's upstream answer, or a refusal.
pub async fn elicit_retry(
    gw: &Gateway,
    ctx: &CallContext,
    message: Message,
    headers: Option<&HeaderMap>,
    state: &str,
    tool: &str,
    arguments: Option<String>,
) -> Result<Exchange, UpstreamError> {
    let request_id = message.id().cloned().unwrap_or_else(Id::null);
    let invalid = |why: &str| {
        let error = jsonrpc::error_response(&request_id, jsonrpc::code::INVALID_PARAMS, why);
        Ok(Exchange::answer(error, ctx.era))
    };
    let Some(parked) = gw.holds.elicit.parked(state) else {
        return invalid(
            "Invalid params: this requestState names no held call Airlock is waiting on (it was answered already, or expired); call the tool again without it",
        );
    };
    // The state is attacker-controlled input: it only counts for the same
    // agent session, tool and arguments it was handed out for.
    if parked.scope != ctx.scope()
        || parked.tool != tool
        || parked.args_hash != hash_arguments(arguments.as_deref())
    {
        return invalid(
            "Invalid params: this requestState belongs to another call (a retry must repeat the held call's tool and arguments, in the same agent session)",
        );
    }
    let mut outcome = parked.outcome.subscribe();
    let answer = elicit::retry_answer(&message);
    let open = outcome.borrow().is_none();
    if open {
        match answer {
            Some(answer) => {
                let asker = UserAsked {
                    pending_id: parked.pending_id,
                    upstream: &ctx.upstream.name,
                    tool,
                    agent: &parked.agent,
                    approvers_decide: parked.approvers_decide,
                };
                take_user_answer(gw, &asker, answer).await;
            }
            // No answer to Airlock's question: ask again (the spec's way of
            // saying that input is still missing).
            None => {
                let question = elicit::request_params(
                    tool,
                    arguments.as_deref(),
                    &parked.rule,
                    parked.reason.as_deref(),
                    parked.timeout,
                );
                let result = input_required(state, question);
                let answer = jsonrpc::result_response(&request_id, result);
                return Ok(Exchange::answer(answer, ctx.era));
            }
        }
    }
    let recorded = tokio::time::timeout(RECORD_WAIT, outcome.wait_for(Option::is_some))
        .await
        .ok()
        .and_then(|r| r.ok().and_then(|state| state.clone()));
    let Some(recorded) = recorded else {
        let error = jsonrpc::error_response(
            &request_id,
            jsonrpc::code::UPSTREAM_ERROR,
            "Airlock took the answer but the hold's outcome was not recorded in time; retry with the same requestState",
        );
        return Ok(Exchange::answer(error, ctx.era));
    };
    gw.holds.elicit.unpark(state);
    let resolution = recorded.resolution;
    let refusal = match recorded.recorded {
        Err(e) => Refusal {
            decision: "audit_unavailable",
            rule: parked.rule.clone(),
            reason: parked.reason.clone().unwrap_or_default(),
            text: format!(
                "Airlock refused this call to `{tool}`: the decision ({}) could not be recorded in the audit store ({e}), so nothing was released.",
                resolution.describe()
            ),
            retry_after: None,
        },
        Ok(()) if resolution.outcome == Outcome::Allowed => {
            return release_parked(gw, ctx, &parked, &request_id, headers).await;
        }
        Ok(()) => refusal_of(
            &resolution,
            tool,
            &parked.rule,
            parked.reason.as_deref(),
            parked.timeout,
        ),
    };
    let answer = gate::refusal_response(&request_id, &refusal, ctx.era);
    Ok(Exchange::answer(answer, ctx.era))
}

/// A held call whose agent's user was asked.
pub(super) struct UserAsked<'a> {
    pub pending_id: Uuid,
    pub upstream: &'a str,
    pub tool: &'a str,
    pub agent: &'a str,
    /// Approvers decide too: a client that failed to ask leaves it to them.
    pub approvers_decide: bool,
}

/// Takes the agent's user's answer as a decision, through the approvals
/// service's compare-and-set (a decision taken elsewhere first wins; the
/// hold's resolution then arrives as usual). The user cannot approve a call
/// whose tool definition changed while it was held (an approver must accept
/// the new definition, as `quorum::decide` requires of approvers).
pub(super) async fn take_user_answer(gw: &Gateway, asked: &UserAsked<'_>, answer: elicit::Answer) {
    let id = asked.pending_id;
    let (choice, comment) = match answer {
        elicit::Answer::Decided(Choice::Approve, _) if tool_changed(gw, asked) => {
            if asked.approvers_decide {
                tracing::info!(pending = %id, "the agent's user approved, but the tool's definition changed: approvers decide");
                return;
            }
            let why = format!(
                "the definition of `{}` changed after this call was held; the agent's user cannot approve it",
                asked.tool
            );
            (Choice::Deny, Some(why))
        }
        elicit::Answer::Decided(choice, comment) => (choice, comment),
        elicit::Answer::Failed(why) if !asked.approvers_decide => (
            Choice::Deny,
            Some(format!("the agent's client could not ask its user: {why}")),
        ),
        elicit::Answer::Failed(why) => {
            tracing::info!(pending = %id, "the agent's client could not ask its user ({why}); approvers decide");
            return;
        }
    };
    let decision = approvals::Decision {
        choice,
        decider: Some(elicit::decider(asked.agent)),
        channel: elicit::CHANNEL.into(),
        comment,
    };
    if let Err(e) = gw.approvals.decide(id, decision).await {
        tracing::info!(pending = %id, "the agent user's answer was not taken: {e}");
    }
}

/// Whether the held tool's definition changed and its policy does not just warn.
fn tool_changed(gw: &Gateway, asked: &UserAsked<'_>) -> bool {
    gw.pins.is_changed(asked.upstream, asked.tool)
        && gw.upstreams.get(asked.upstream).is_some_and(|up| {
            up.policy().on_tool_change(asked.tool) != crate::policy::OnToolChange::Warn
        })
}

/// Sends an approved parked call upstream as it was held (with the
/// retry's id) and passes the answer on; a further round of the upstream's
/// own questions stays covered by the approval.
async fn release_parked(
    gw: &Gateway,
    ctx: &CallContext,
    parked: &elicit::Parked,
    request_id: &Id,
    headers: Option<&HeaderMap>,
) -> Result<Exchange, UpstreamError> {
    let message = parked.message.with_id(request_id);
    let mut reply = gw.upstream_request(&ctx.link, message, headers).await?;
    let (gw, scope) = (gw.clone(), ctx.scope());
    let (tool, args_hash) = (parked.tool.clone(), parked.args_hash.clone());
    reply.body = reply.body.tap(move |answer| {
        if answer.kind() == jsonrpc::Kind::Response {
            gw.holds
                .remember_continuation(answer, &scope, &tool, &args_hash);
        }
    });
    Ok(Exchange::plain(reply))
}

/// An `input_required` result asking the agent's user (stateless era).
fn input_required(state: &str, question: Value) -> Value {
    json!({
        "resultType": "input_required",
        "inputRequests": {
            (elicit::INPUT_KEY): { "method": "elicitation/create", "params": question },
        },
        "requestState": state,
        "_meta": { (era::META_SERVER_INFO): era::airlock_server_info() },
    })
}
