//! `GET /api/tools` and `POST /api/tools/refresh`: every upstream's tools
//! with their risk class, what the policy in force does to each and the rule
//! (and conditions) that decide, and their calls in the last 24 hours.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, Approver};
use crate::catalog;
use crate::gateway::{Gateway, UpstreamRuntime};
use crate::policy::{Policy, Verdict};

/// Rows of the last 24 h read to count calls per tool (a busier gateway
/// shows counts of the newest rows, and says so).
const COUNT_ROWS: u32 = 100_000;

#[derive(Deserialize, Default)]
pub(super) struct ToolsQuery {
    upstream: Option<String>,
}

pub(super) async fn list_tools(
    State(gw): State<Gateway>,
    _approver: Approver,
    q: Result<Query<ToolsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    answer(gw, q, false).await
}

pub(super) async fn refresh_tools(
    State(gw): State<Gateway>,
    _approver: Approver,
    q: Result<Query<ToolsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    answer(gw, q, true).await
}

/// The inventory of the selected upstreams, listed first where not yet
/// known (or afresh when `refresh`).
async fn answer(
    gw: Gateway,
    q: Result<Query<ToolsQuery>, axum::extract::rejection::QueryRejection>,
    refresh: bool,
) -> Result<Json<Value>, ApiError> {
    let q = super::query(q)?;
    let upstreams = selected(&gw, q.upstream.as_deref())?;
    futures::future::join_all(upstreams.iter().map(|up| async {
        if refresh {
            catalog::refresh(&gw, up).await
        } else {
            catalog::ensure(&gw, up).await
        }
    }))
    .await;
    Ok(Json(inventory(&gw, &upstreams).await?))
}

/// The named upstream, or all of them.
fn selected(
    gw: &Gateway,
    name: Option<&str>,
) -> Result<Vec<std::sync::Arc<UpstreamRuntime>>, ApiError> {
    match name.filter(|n| !n.is_empty()) {
        None => Ok(gw.upstreams.values().cloned().collect()),
        Some(name) => gw
            .upstreams
            .get(name)
            .map(|u| vec![u.clone()])
            .ok_or_else(|| unknown_upstream(gw, name)),
    }
}

pub(super) fn unknown_upstream(gw: &Gateway, name: &str) -> ApiError {
    let known: Vec<&str> = gw.upstreams.keys().map(String::as_str).collect();
    ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown_upstream",
        format!(
            "no upstream named `{name}` (configured: {})",
            known.join(", ")
        ),
    )
}

async fn inventory(
    gw: &Gateway,
    upstreams: &[std::sync::Arc<UpstreamRuntime>],
) -> Result<Value, ApiError> {
    let (counts, capped) = calls_last_day(gw).await?;
    let mut out = Vec::new();
    for up in upstreams {
        let listing = gw.catalog.get(&up.name);
        let policy = up.policy();
        let tools: Vec<Value> = listing
            .tools
            .iter()
            .filter_map(|t| tool_row(&policy, &up.name, t, &counts))
            .map(|mut row| {
                // Pinned or changed since first seen (`pins`); null: not pinned yet.
                let name = row["name"].as_str().unwrap_or_default().to_owned();
                row["pin"] = json!(gw.pins.get(&up.name, &name).map(|p| {
                    if p.changed.is_some() {
                        "changed"
                    } else {
                        "pinned"
                    }
                }));
                row
            })
            .collect();
        out.push(json!({
            "name": up.name,
            "policy_file": policy_file(gw, &up.name),
            "policy_format": policy.format.as_str(),
            "default": policy.default.as_str(),
            "listed_at": listing.listed_at,
            "error": listing.error,
            "tools": tools,
        }));
    }
    Ok(json!({
        "upstreams": out,
        "counts_capped": capped,
        "risk_classes": RISK_EXPLAINED,
    }))
}

/// How the risk class is derived, for the page (and API users) to show.
const RISK_EXPLAINED: &str = "From the tool's annotations, first match wins: readOnlyHint true → read-only; destructiveHint true → destructive; openWorldHint true → open-world; otherwise unknown. Annotations are the server's own claims, and a hint the server does not declare is not assumed.";

pub(super) fn policy_file(gw: &Gateway, upstream: &str) -> Option<String> {
    gw.config
        .upstreams
        .iter()
        .find(|u| u.name == upstream)
        .and_then(|u| u.policy.as_ref())
        .map(|p| p.display().to_string())
}

/// One tool as the page shows it; None for an entry without a name.
fn tool_row(
    policy: &Policy,
    upstream: &str,
    tool: &Value,
    counts: &HashMap<(String, String), HashMap<String, u64>>,
) -> Option<Value> {
    let name = tool.get("name")?.as_str()?;
    let hints = catalog::hints_of(tool);
    let (outcome, rule) = crate::inspect::outcome(policy, name, &hints);
    let (conditions, reason, rate_limit) = match policy.decide(name) {
        Verdict::Rule(r) => (
            r.branches
                .iter()
                .map(|b| json!({"label": b.label, "action": b.action.as_str(), "line": b.line}))
                .collect::<Vec<_>>(),
            r.reason.clone(),
            r.rate_limit
                .as_ref()
                .map(|l| json!({"max": l.max, "window": l.window.as_secs()})),
        ),
        _ => (Vec::new(), None, None),
    };
    let calls = counts
        .get(&(upstream.to_owned(), name.to_owned()))
        .cloned()
        .unwrap_or_default();
    Some(json!({
        "name": name,
        "title": tool.get("title").and_then(Value::as_str),
        "description": tool.get("description").and_then(Value::as_str),
        "annotations": tool.get("annotations").filter(|a| a.is_object()),
        "risk": crate::inspect::risk(&hints),
        "outcome": outcome,
        "rule": rule,
        "reason": reason,
        "rate_limit": rate_limit,
        "conditions": conditions,
        "calls_24h": calls,
    }))
}

/// Calls per (upstream, tool) and outcome over the last 24 hours; `true`
/// when more rows than [`COUNT_ROWS`] were there (the newest were counted).
async fn calls_last_day(
    gw: &Gateway,
) -> Result<(HashMap<(String, String), HashMap<String, u64>>, bool), ApiError> {
    let since = (chrono::Utc::now() - chrono::Duration::hours(24))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let filter = crate::audit::Filter {
        since: Some(since),
        limit: Some(COUNT_ROWS),
        ..Default::default()
    };
    let rows = gw.audit.query(filter, true).await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit_unavailable",
            e.to_string(),
        )
    })?;
    let capped = rows.len() as u32 == COUNT_ROWS;
    let mut counts: HashMap<(String, String), HashMap<String, u64>> = HashMap::new();
    for e in rows {
        let (Some(up), Some(tool)) = (e.upstream, e.tool) else {
            continue;
        };
        *counts
            .entry((up, tool))
            .or_default()
            .entry(e.decision)
            .or_default() += 1;
    }
    Ok((counts, capped))
}
