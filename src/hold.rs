//! Pending approvals (placeholder until the approval channel lands).

use axum::http::HeaderMap;

use crate::gate::{self, Refusal};
use crate::gateway::{CallContext, Exchange, Gateway};
use crate::jsonrpc::{Id, Message};
use crate::policy::Approval;
use crate::upstream::UpstreamError;

/// The set of calls waiting for a human.
#[derive(Default)]
pub struct Holds;

#[allow(clippy::too_many_arguments)]
pub async fn hold_call(
    _gateway: &Gateway,
    ctx: &CallContext,
    message: Message,
    _headers: Option<&HeaderMap>,
    _tool: String,
    _arguments: Option<String>,
    rule: String,
    reason: Option<String>,
    _approval: Approval,
) -> Result<Exchange, UpstreamError> {
    let id = message.id().cloned().unwrap_or_else(Id::null);
    let refusal = Refusal {
        decision: "approval_required",
        rule,
        reason: reason.unwrap_or_default(),
        text: "approval required: this gateway has no approval channel yet".into(),
        retry_after: None,
    };
    Ok(Exchange::answer(gate::refusal_response(&id, &refusal, ctx.era), ctx.era))
}

/// Handles agent notifications that concern held calls; `None` passes them on.
pub fn intercept_notification(_gateway: &Gateway, _ctx: &CallContext, _message: &Message) -> Option<Exchange> {
    None
}

/// Ends the holds of an agent that went away (stdio agent exited).
pub fn agent_gone(_gateway: &Gateway, _session_key: &str) {}
