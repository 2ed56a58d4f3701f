//! `POST /slack/interactions`: the Approve / Deny buttons of Slack-app mode.
//!
//! Nothing in the request is read before its signature checks out: Slack
//! signs `v0:{timestamp}:{body}` with the app's signing secret
//! (HMAC-SHA256, compared in constant time), and a timestamp more than five
//! minutes away is refused, so a captured request cannot be replayed later.
//! The Slack user must be an approver's `slack_user_id`; anyone else gets an
//! ephemeral refusal. The outcome replaces the message through `response_url`
//! (queued in [`super::delivery`], with its retries). Slack wants an answer
//! within 3 s, so this handler only decides and queues.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;

use super::delivery::{Job, ephemeral};
use super::{Slack, ago, form_pairs, form_value, message};
use crate::gateway::Gateway;
use crate::hold::{Choice, DecideError};

/// Slack's replay window.
const MAX_SKEW_SECS: i64 = 5 * 60;

/// Why a request is not from Slack.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadSignature {
    #[error("missing or malformed X-Slack-Request-Timestamp")]
    Timestamp,
    #[error("request timestamp is more than 5 minutes away")]
    Stale,
    #[error("missing or malformed X-Slack-Signature")]
    Malformed,
    #[error("signature does not match")]
    Mismatch,
}

/// Checks Slack's v0 signature of `body` at time `now` (Unix seconds).
pub fn verify(
    headers: &HeaderMap,
    body: &[u8],
    secret: &str,
    now: i64,
) -> Result<(), BadSignature> {
    let timestamp = headers
        .get("x-slack-request-timestamp")
        .and_then(|v| v.to_str().ok())
        .ok_or(BadSignature::Timestamp)?;
    let at: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| BadSignature::Timestamp)?;
    if (now - at).abs() > MAX_SKEW_SECS {
        return Err(BadSignature::Stale);
    }
    let signature = headers
        .get("x-slack-signature")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("v0="))
        .and_then(|hex_sig| hex::decode(hex_sig).ok())
        .ok_or(BadSignature::Malformed)?;
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(b"v0:");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    mac.verify_slice(&signature)
        .map_err(|_| BadSignature::Mismatch)
}

/// The handler.
pub async fn handle(State(gw): State<Gateway>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(slack) = gw.slack.clone() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let Some(secret) = slack.config.signing_secret.as_deref() else {
        return (
            StatusCode::NOT_FOUND,
            "Slack-app mode is off (set slack.signing_secret_env)",
        )
            .into_response();
    };
    if let Err(e) = verify(&headers, &body, secret, chrono::Utc::now().timestamp()) {
        tracing::warn!("refused a Slack interaction: {e}");
        return (
            StatusCode::UNAUTHORIZED,
            format!("invalid Slack request: {e}"),
        )
            .into_response();
    }
    let form = form_pairs(&body);
    let Some(payload) =
        form_value(&form, "payload").and_then(|p| serde_json::from_str::<Value>(p).ok())
    else {
        return (StatusCode::BAD_REQUEST, "no `payload`").into_response();
    };
    act(&gw, &slack, &payload).await;
    StatusCode::OK.into_response()
}

/// Acts on a verified `block_actions` payload; other payloads are ignored.
async fn act(gw: &Gateway, slack: &Slack, payload: &Value) {
    if payload.get("type").and_then(Value::as_str) != Some("block_actions") {
        return;
    }
    let Some(action) = payload.pointer("/actions/0") else {
        return;
    };
    let verdict = match action.get("action_id").and_then(Value::as_str) {
        Some("approve") => Choice::Approve,
        Some("deny") => Choice::Deny,
        _ => return, // URL buttons (details, links) report clicks too
    };
    let Some(id) = action.get("value").and_then(Value::as_str) else {
        return;
    };
    let Some(response_url) = payload.get("response_url").and_then(Value::as_str) else {
        return;
    };
    let user = payload
        .pointer("/user/id")
        .and_then(Value::as_str)
        .unwrap_or("");
    let item = gw.holds.get(id).map(|item| slack.sanitized(&item));
    let reply = |body: Value| {
        slack.outbox.push(
            gw,
            Job::Respond {
                url: response_url.to_owned(),
                body,
                item: item.clone(),
            },
        )
    };
    let Some(approver) = slack
        .config
        .users
        .iter()
        .find(|(u, _)| u == user)
        .map(|(_, a)| a.clone())
    else {
        tracing::warn!(slack_user = %user, pending = %id, "Slack user is not an approver");
        reply(ephemeral(&format!(
            "You are not an Airlock approver, so nothing was decided. An admin can add `slack_user_id = \"{}\"` to your `[[approver]]` entry.",
            message::escape(user)
        )));
        return;
    };
    if gw.config.approver_role(&approver) == Some(crate::config::Role::Viewer) {
        tracing::warn!(%approver, pending = %id, "a viewer tried to decide from Slack");
        reply(ephemeral(
            "Your Airlock role is viewer: you can see held calls but not decide them, so nothing was decided.",
        ));
        return;
    }
    let decided = match crate::quorum::decide(gw, id, verdict, &approver, "slack", None).await {
        Ok(crate::quorum::Decided::Vote { approvals, needed }) => {
            reply(ephemeral(&format!(
                "Your approval counts: {} of {needed} approvals ({}). The call stays held until {needed} different approvers approve.",
                approvals.len(),
                message::escape(&approvals.join(", "))
            )));
            return;
        }
        Ok(crate::quorum::Decided::Final(r)) => Ok(r),
        Err(crate::quorum::QuorumError::Decide(e)) => Err(e),
        Err(e) => {
            reply(ephemeral(&format!(
                "{}; nothing was decided.",
                message::escape(&e.to_string())
            )));
            return;
        }
    };
    match decided {
        Ok(resolution) => {
            if let Some(item) = &item {
                let mut body = message::decided(item, &resolution);
                body["replace_original"] = true.into();
                reply(body);
            }
        }
        Err(DecideError::AlreadyDecided(r)) => reply(ephemeral(&format!(
            "Already {} {}; nothing was changed.",
            message::escape(&r.describe()),
            ago(r.at, chrono::Utc::now())
        ))),
        Err(DecideError::NotFound(_)) => reply(ephemeral(
            "This request is no longer pending (it expired, or the gateway restarted); nothing was decided.",
        )),
        Err(e @ DecideError::AgentUserOnly(_)) => reply(ephemeral(&format!(
            "{}. Nothing was decided.",
            message::escape(&e.to_string())
        ))),
        Err(e @ (DecideError::Audit(_) | DecideError::Store(_))) => reply(ephemeral(&format!(
            "{}. Try again in a moment.",
            message::escape(&e.to_string())
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    // Slack's documented example request.
    const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
    const BODY: &str = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    const TS: &str = "1531420618";
    const SIG: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";

    fn headers(ts: &str, sig: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            "x-slack-request-timestamp",
            HeaderValue::from_str(ts).unwrap(),
        );
        h.insert("x-slack-signature", HeaderValue::from_str(sig).unwrap());
        h
    }

    #[test]
    fn slacks_example_verifies() {
        assert_eq!(
            verify(
                &headers(TS, SIG),
                BODY.as_bytes(),
                SECRET,
                1_531_420_618 + 10
            ),
            Ok(())
        );
    }

    #[test]
    fn changed_body_stale_time_and_bad_headers_are_refused() {
        let now = 1_531_420_618;
        let altered = BODY.replace("roadrunner", "coyote");
        assert_eq!(
            verify(&headers(TS, SIG), altered.as_bytes(), SECRET, now),
            Err(BadSignature::Mismatch)
        );
        assert_eq!(
            verify(&headers(TS, SIG), BODY.as_bytes(), SECRET, now + 6 * 60),
            Err(BadSignature::Stale)
        );
        assert_eq!(
            verify(&headers(TS, SIG), BODY.as_bytes(), "other", now),
            Err(BadSignature::Mismatch)
        );
        assert_eq!(
            verify(&headers(TS, "a2114d"), BODY.as_bytes(), SECRET, now),
            Err(BadSignature::Malformed)
        );
        assert_eq!(
            verify(&headers("soon", SIG), BODY.as_bytes(), SECRET, now),
            Err(BadSignature::Timestamp)
        );
        assert_eq!(
            verify(&HeaderMap::new(), BODY.as_bytes(), SECRET, now),
            Err(BadSignature::Timestamp)
        );
    }
}
