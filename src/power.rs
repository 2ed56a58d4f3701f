//! The gateway side of tool pins ([`crate::pins`]) and grants
//! ([`crate::grants`]): what a changed definition does to a call, the
//! events and audit rows of changes, acceptances and grants, and the
//! background task that ends grants on expiry and on policy reloads.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::audit::Record;
use crate::gate::{CallDecision, Refusal};
use crate::gateway::{Gateway, UpstreamRuntime};
use crate::grants::Grant;
use crate::jsonrpc::Message;
use crate::pins::Change;
use crate::policy::{Approval, OnToolChange};
use crate::power_store::Changed;

/// The rule name of decisions made because a definition changed.
pub const RULE: &str = "on_tool_change";

/// How often expired grants are looked for.
const EXPIRY_TICK: Duration = Duration::from_millis(500);

/// Observes the tools of a `tools/list` answer: pins new tools, announces changed ones.
pub fn observe_list(gw: &Gateway, upstream: &Arc<UpstreamRuntime>, message: &Message) {
    #[derive(serde::Deserialize)]
    struct Listed {
        tools: Vec<Value>,
    }
    if let Some(list) = message.result::<Listed>() {
        observe(gw, upstream, &list.tools);
    }
}

/// Pins new tools of `upstream` and announces changed ones.
pub fn observe(gw: &Gateway, upstream: &Arc<UpstreamRuntime>, tools: &[Value]) {
    let observed = gw.pins.observe(&upstream.name, tools);
    let Some(store) = gw.pins.store().cloned() else {
        let policy = upstream.policy();
        for change in observed.changes {
            announce_change(gw, &change, policy.on_tool_change(&change.tool));
        }
        return;
    };
    if observed.changes.is_empty() && observed.first.is_empty() && observed.cleared.is_empty() {
        return;
    }
    // Shared: recorded in the store first; each change is announced by the
    // one replica whose compare-and-set recorded it.
    let (gw, upstream) = (gw.clone(), upstream.clone());
    tokio::spawn(async move {
        if let Err(e) = share_observed(&gw, &upstream, &store, observed).await {
            tracing::warn!(upstream = %upstream.name, "tool pins not recorded in the store: {e}");
        }
    });
}

async fn share_observed(
    gw: &Gateway,
    upstream: &UpstreamRuntime,
    store: &crate::power_store::SharedPower,
    observed: crate::pins::Observed,
) -> Result<(), crate::approvals::StoreError> {
    let name = &upstream.name;
    let mut changes = observed.changes;
    for (tool, pin) in &observed.first {
        // Another replica pinned it first, as something else: a change.
        if let Some(existing) = store.pin_first(name, tool, pin).await? {
            changes.push(crate::pins::Change {
                upstream: name.clone(),
                tool: tool.clone(),
                old_fingerprint: existing.pinned.fingerprint.clone(),
                new_fingerprint: pin.pinned.fingerprint.clone(),
                diff: crate::pins::diff(&existing.pinned.definition, &pin.pinned.definition),
                changed: pin.pinned.clone(),
            });
        }
    }
    for (tool, pinned) in &observed.cleared {
        store.clear_change(name, tool, pinned).await?;
    }
    for change in changes {
        let recorded = store
            .record_change(name, &change.tool, &change.old_fingerprint, &change.changed)
            .await?;
        if recorded {
            announce_change(gw, &change, upstream.policy().on_tool_change(&change.tool));
        }
    }
    Ok(())
}

fn announce_change(gw: &Gateway, change: &Change, mode: OnToolChange) {
    tracing::warn!(upstream = %change.upstream, tool = %change.tool, on_tool_change = mode.as_str(),
        "a tool's definition changed since it was pinned:\n{}", change.diff);
    gw.events.publish(
        "tool.changed",
        json!({
            "upstream": change.upstream,
            "tool": change.tool,
            "old_fingerprint": change.old_fingerprint,
            "new_fingerprint": change.new_fingerprint,
            "diff": change.diff,
            "on_tool_change": mode.as_str(),
        }),
    );
    gw.notify_tool_changed(change, mode);
    let record = Record {
        decision: "tool.changed",
        upstream: Some(change.upstream.clone()),
        tool: Some(change.tool.clone()),
        rule: Some(RULE.to_owned()),
        reason: Some(format!(
            "definition changed since it was pinned (on_tool_change: {}); sha256 {} -> {}",
            mode.as_str(),
            change.old_fingerprint,
            change.new_fingerprint
        )),
        arguments: Some(json!({ "diff": change.diff }).to_string()),
        ..Default::default()
    };
    let audit = gw.audit.clone();
    tokio::spawn(async move { audit.record(record).await });
}

/// What a call to a tool whose definition changed (and was not accepted)
/// meets, given the policy's decision for it; None: the decision stands
/// (`warn`, or the policy refuses it anyway).
pub fn changed_call(
    mode: OnToolChange,
    tool: &str,
    decision: &CallDecision,
) -> Option<CallDecision> {
    let refused = matches!(
        decision,
        CallDecision::Refuse(_) | CallDecision::Hidden | CallDecision::DeniedByDefault(_)
    );
    if refused {
        return None;
    }
    let why = format!(
        "the definition of `{tool}` changed since it was reviewed; an approver must accept the new definition"
    );
    match mode {
        OnToolChange::Warn => None,
        OnToolChange::Hide => Some(CallDecision::Hidden),
        OnToolChange::Deny => Some(CallDecision::Refuse(Refusal {
            decision: "denied",
            text: format!("Airlock denied this call to `{tool}`: {why} (rule `{RULE}`)."),
            rule: RULE.to_owned(),
            reason: why,
            retry_after: None,
        })),
        OnToolChange::Hold => {
            let approval = match decision {
                CallDecision::NeedsApproval { approval, .. } => *approval,
                _ => Approval::default(),
            };
            Some(CallDecision::NeedsApproval {
                rule: RULE.to_owned(),
                reason: Some(why),
                approval,
            })
        }
    }
}

/// Accepts a tool's changed definition; audited and announced.
pub async fn accept(
    gw: &Gateway,
    upstream: &str,
    tool: &str,
    by: &str,
    channel: &str,
) -> Result<Value, crate::pins::PinError> {
    let pin = gw.pins.accept(upstream, tool, by).await?;
    gw.audit
        .record(Record {
            decision: "tool.accepted",
            upstream: Some(upstream.to_owned()),
            tool: Some(tool.to_owned()),
            rule: Some(RULE.to_owned()),
            decider: Some(by.to_owned()),
            channel: Some(channel.to_owned()),
            reason: Some(format!(
                "new definition accepted (sha256 {})",
                pin.pinned.fingerprint
            )),
            ..Default::default()
        })
        .await;
    let body = pin.to_json(upstream, tool);
    gw.events.publish(
        "tool.accepted",
        json!({ "upstream": upstream, "tool": tool, "by": by, "fingerprint": pin.pinned.fingerprint }),
    );
    Ok(body)
}

/// Records and announces a new grant.
pub async fn granted(gw: &Gateway, grant: &Grant, channel: &str) {
    gw.audit
        .record(Record {
            decision: "grant.created",
            upstream: Some(grant.upstream.clone()),
            tool: Some(grant.tool.clone()),
            agent: Some(grant.agent.clone()),
            session: grant.session.clone(),
            rule: Some(grant.rule.clone()),
            decider: Some(grant.granted_by.clone()),
            channel: Some(channel.to_owned()),
            pending_id: Some(grant.pending_id.clone()),
            reason: Some(format!(
                "grant {} for {} s ({} scope{}) until {}",
                grant.id,
                grant.seconds(),
                scope_name(grant),
                if grant.args_hash.is_some() {
                    ", exact arguments"
                } else {
                    ""
                },
                grant
                    .expires_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            )),
            arguments: grant.arguments.as_ref().map(Value::to_string),
            ..Default::default()
        })
        .await;
    gw.events
        .publish("grant.created", json!({ "grant": grant }));
}

fn scope_name(grant: &Grant) -> &'static str {
    match grant.scope {
        crate::grants::Scope::Agent => "agent",
        crate::grants::Scope::Session => "session",
    }
}

/// Records and announces grants that ended (`why`: revoked, expired, policy).
pub async fn ended(gw: &Gateway, grants: &[Grant], why: &str, by: Option<&str>) {
    for grant in grants {
        gw.audit
            .record(Record {
                decision: "grant.ended",
                upstream: Some(grant.upstream.clone()),
                tool: Some(grant.tool.clone()),
                agent: Some(grant.agent.clone()),
                rule: Some(grant.rule.clone()),
                decider: by.map(str::to_owned),
                pending_id: Some(grant.pending_id.clone()),
                reason: Some(format!("grant {} ended: {why}", grant.id)),
                ..Default::default()
            })
            .await;
        gw.events.publish(
            "grant.ended",
            json!({ "id": grant.id, "tool": grant.tool, "upstream": grant.upstream, "why": why, "by": by }),
        );
    }
}

/// Ends grants when they expire and when a reload of their upstream's policy
/// no longer allows them; with a shared store, also keeps this replica's
/// mirrors of grants and pins fresh (on every change heard, and every
/// heartbeat). Runs until shutdown.
pub async fn maintain_grants(gw: Gateway) {
    let mut watchers = tokio::task::JoinSet::new();
    for upstream in gw.upstreams.values() {
        watchers.spawn(follow_reloads(gw.clone(), upstream.clone()));
    }
    let mut changes = gw
        .power_store
        .as_ref()
        .map(|store| store.watch(gw.shutdown.clone()));
    if changes.is_some() {
        refresh(&gw, Changed::Everything).await;
        // The policy may have changed while no replica was running it.
        for upstream in gw.upstreams.values() {
            end_disallowed(&gw, upstream).await;
        }
    }
    let mut tick = tokio::time::interval(EXPIRY_TICK);
    let mut refreshed = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = gw.shutdown.cancelled() => break,
            _ = tick.tick() => {}
            Some(changed) = next_change(&mut changes) => {
                refresh(&gw, changed).await;
                announce_shared(&gw, changed);
                continue;
            }
        }
        // A lost notification costs at most one heartbeat.
        if changes.is_some() && refreshed.elapsed() >= gw.config.store.heartbeat {
            refresh(&gw, Changed::Everything).await;
            refreshed = tokio::time::Instant::now();
        }
        crate::quorum::tick(&gw).await;
        if !gw.grants.has_expired() {
            continue;
        }
        match gw.grants.take_expired().await {
            Ok(expired) if !expired.is_empty() => ended(&gw, &expired, "expired", None).await,
            Ok(_) => {}
            Err(e) => tracing::warn!("expired grants not ended yet: {e}"),
        }
    }
    watchers.abort_all();
}

async fn next_change(changes: &mut Option<mpsc::Receiver<Changed>>) -> Option<Changed> {
    match changes {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Re-reads the shared grants and pins this replica mirrors.
async fn refresh(gw: &Gateway, changed: Changed) {
    let all = changed == Changed::Everything;
    if (all || changed == Changed::Grants)
        && let Err(e) = gw.grants.refresh().await
    {
        tracing::warn!("grants not re-read from the store: {e}");
    }
    if (all || changed == Changed::Pins)
        && let Err(e) = gw.pins.refresh().await
    {
        tracing::warn!("tool pins not re-read from the store: {e}");
    }
}

/// Tells this replica's dashboards that another replica (or this one)
/// changed shared grants, pins or votes, so they re-read them.
fn announce_shared(gw: &Gateway, changed: Changed) {
    let what = match changed {
        Changed::Grants => "grants",
        Changed::Pins => "pins",
        Changed::Votes => "votes",
        Changed::Everything => "everything",
    };
    gw.events.publish("power.changed", json!({ "what": what }));
}

async fn follow_reloads(gw: Gateway, upstream: Arc<UpstreamRuntime>) {
    let mut reloads = upstream.policy_reloads();
    while reloads.changed().await.is_ok() {
        reloads.mark_unchanged();
        end_disallowed(&gw, &upstream).await;
    }
}

/// Ends the grants `upstream`'s policy in force no longer allows.
async fn end_disallowed(gw: &Gateway, upstream: &UpstreamRuntime) {
    let policy = upstream.policy();
    match gw.grants.retain_allowed(&upstream.name, &policy).await {
        Ok(gone) if !gone.is_empty() => {
            ended(gw, &gone, "the reloaded policy no longer allows it", None).await;
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(upstream = %upstream.name, "grants not checked against the reloaded policy: {e}")
        }
    }
}
