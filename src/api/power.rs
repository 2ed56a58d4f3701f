//! Tool pins and grants over the API:
//!
//! - `GET /api/pins[?upstream=]`: every pinned tool, `status` `pinned` or
//!   `changed` (with the new definition and a readable `diff`);
//! - `POST /api/tools/{upstream}/{tool}/accept` (admin): the changed
//!   definition becomes the pin;
//! - `POST /api/tools/{upstream}/pin` (admin): lists the upstream now and
//!   pins every tool's current definition;
//! - `GET /api/grants`, `DELETE /api/grants/{id}` (approver): standing
//!   approvals and their revocation. Grants are given with an approval
//!   (`POST /api/pending/{id}/approve` with `grant`, see `api.rs`).

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, Approver};
use crate::config::Role;
use crate::gateway::Gateway;
use crate::pins::PinError;

#[derive(Deserialize, Default)]
pub(super) struct PinsQuery {
    upstream: Option<String>,
}

pub(super) async fn list_pins(
    State(gw): State<Gateway>,
    _approver: Approver,
    q: Result<Query<PinsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = super::query(q)?;
    if let Some(name) = q.upstream.as_deref()
        && !gw.upstreams.contains_key(name)
    {
        return Err(super::tools::unknown_upstream(&gw, name));
    }
    Ok(Json(json!({ "pins": gw.pins.list(q.upstream.as_deref()) })))
}

pub(super) async fn accept_tool(
    State(gw): State<Gateway>,
    approver: Approver,
    headers: HeaderMap,
    Path((upstream, tool)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    approver.require(Role::Admin, "accepting a changed tool definition")?;
    if !gw.upstreams.contains_key(&upstream) {
        return Err(super::tools::unknown_upstream(&gw, &upstream));
    }
    let channel = approver.channel(&headers);
    match crate::power::accept(&gw, &upstream, &tool, &approver.name, channel).await {
        Ok(pin) => Ok(Json(json!({ "accepted": true, "pin": pin }))),
        Err(e) => Err(pin_error(e)),
    }
}

pub(super) async fn pin_upstream(
    State(gw): State<Gateway>,
    approver: Approver,
    headers: HeaderMap,
    Path(upstream): Path<String>,
) -> Result<Json<Value>, ApiError> {
    approver.require(Role::Admin, "pinning tool definitions")?;
    let Some(up) = gw.upstreams.get(&upstream).cloned() else {
        return Err(super::tools::unknown_upstream(&gw, &upstream));
    };
    crate::catalog::refresh(&gw, &up).await;
    let listing = gw.catalog.get(&upstream);
    if let Some(error) = listing.error {
        return Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "upstream_unavailable",
            format!("cannot list the tools of `{upstream}`: {error}"),
        ));
    }
    let count = gw
        .pins
        .pin_all(&upstream, &listing.tools, &approver.name)
        .await
        .map_err(pin_error)?;
    gw.audit
        .record(crate::audit::Record {
            decision: "tool.pinned",
            upstream: Some(upstream.clone()),
            decider: Some(approver.name.clone()),
            channel: Some(approver.channel(&headers).to_owned()),
            rule: Some(crate::power::RULE.to_owned()),
            reason: Some(format!(
                "{count} of {} tool definitions pinned anew",
                listing.tools.len()
            )),
            ..Default::default()
        })
        .await;
    gw.events.publish(
        "tool.pinned",
        json!({ "upstream": upstream, "count": count, "by": approver.name }),
    );
    Ok(Json(json!({
        "pinned": count,
        "pins": gw.pins.list(Some(&upstream)),
    })))
}

fn pin_error(e: PinError) -> ApiError {
    let (status, code) = match &e {
        PinError::Unknown { .. } => (StatusCode::NOT_FOUND, "unknown_tool"),
        PinError::Unchanged { .. } => (StatusCode::CONFLICT, "unchanged"),
        PinError::Store(_) => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "pins_unavailable"),
    };
    ApiError::new(status, code, e.to_string())
}

/// `GET /api/quorum`: each open hold's approvals needed and given, the
/// groups that may decide it, and whether the caller may.
pub(super) async fn quorum(State(gw): State<Gateway>, approver: Approver) -> Json<Value> {
    let who = approver.decider();
    Json(json!({ "quorum": crate::quorum::overview(&gw, &who).await }))
}

pub(super) async fn list_grants(State(gw): State<Gateway>, _approver: Approver) -> Json<Value> {
    Json(json!({ "grants": gw.grants.list() }))
}

pub(super) async fn revoke_grant(
    State(gw): State<Gateway>,
    approver: Approver,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    approver.require(Role::Approver, "revoking a grant")?;
    match gw.grants.revoke(&id).await {
        Err(e) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            format!("the grant could not be revoked: {e}"),
        )),
        Ok(Some(grant)) => {
            crate::power::ended(
                &gw,
                std::slice::from_ref(&grant),
                &format!("revoked by {}", approver.name),
                Some(&approver.name),
            )
            .await;
            Ok(Json(json!({ "revoked": grant })))
        }
        Ok(None) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no live grant with id {id} (it may have expired or been revoked)"),
        )),
    }
}
