//! The tool inventory behind the dashboard's Tools page: every upstream's
//! tools as its `tools/list` gives them, unfiltered by the policy.
//!
//! Airlock lists an upstream's tools itself, as a plain handshake-era MCP
//! client over a connection of its own (for a stdio upstream: a child of its
//! own), the first time someone asks (`GET /api/tools`), again on
//! `POST /api/tools/refresh`, and whenever the server sends
//! `notifications/tools/list_changed` on that connection. Nothing is started
//! before the page is first opened, so a gateway nobody looks at costs no
//! extra child.
//!
//! The risk class is read from the tool's annotations (the server's own
//! claims, see [`crate::inspect::risk`]); what the policy does to each tool is computed per
//! request in `api::tools` from the policy in force.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};

use crate::gateway::{Gateway, UpstreamRuntime};
use crate::jsonrpc::Message;
use crate::policy::Hints;
use crate::upstream::{Link, Reply, ReplyBody};

/// How long one listing may take (a stdio upstream started by `npx` may
/// first download its package).
const LIST_TIMEOUT: Duration = Duration::from_secs(60);
/// Pages of `tools/list` followed at most (a server that keeps handing out
/// cursors must not keep Airlock busy forever).
const MAX_PAGES: usize = 100;
/// The protocol version Airlock's own client asks for.
const PROTOCOL: &str = "2025-11-25";

/// The tools of every upstream, by upstream name.
#[derive(Default)]
pub struct Catalog(Mutex<HashMap<String, Listing>>);

/// What is known of one upstream's tools.
#[derive(Clone, Default)]
pub struct Listing {
    /// The `tools` entries as the server wrote them.
    pub tools: Arc<Vec<Value>>,
    /// When they were listed (RFC 3339), None: never.
    pub listed_at: Option<String>,
    /// Why the last listing failed (the tools above are from before).
    pub error: Option<String>,
    /// The connection kept open to hear `list_changed`.
    link: Option<Link>,
}

impl Catalog {
    /// The listing of `upstream` as it stands (no I/O).
    pub fn get(&self, upstream: &str) -> Listing {
        self.0
            .lock()
            .expect("catalog lock")
            .get(upstream)
            .cloned()
            .unwrap_or_default()
    }

    fn store(&self, upstream: &str, f: impl FnOnce(&mut Listing)) {
        let mut map = self.0.lock().expect("catalog lock");
        f(map.entry(upstream.to_owned()).or_default());
    }

    /// Closes every connection the catalog opened (shutdown).
    pub async fn close(&self) {
        let links: Vec<Link> = self
            .0
            .lock()
            .expect("catalog lock")
            .values_mut()
            .filter_map(|l| l.link.take())
            .collect();
        for link in links {
            link.close().await;
        }
    }
}

/// Lists `upstream`'s tools unless they were listed before.
pub async fn ensure(gw: &Gateway, upstream: &Arc<UpstreamRuntime>) {
    if gw.catalog.get(&upstream.name).listed_at.is_none() {
        refresh(gw, upstream).await;
    }
}

/// Lists `upstream`'s tools now; a failure is kept in [`Listing::error`].
///
/// Boxed with its `Send` bound spelled out: it (through `connect`) spawns
/// the task that calls it again on `list_changed`, and the compiler cannot
/// infer `Send` around that cycle.
pub fn refresh<'a>(
    gw: &'a Gateway,
    upstream: &'a Arc<UpstreamRuntime>,
) -> futures::future::BoxFuture<'a, ()> {
    Box::pin(refresh_now(gw, upstream))
}

async fn refresh_now(gw: &Gateway, upstream: &Arc<UpstreamRuntime>) {
    let existing = gw.catalog.get(&upstream.name).link;
    let outcome = tokio::time::timeout(LIST_TIMEOUT, list(gw, upstream, existing)).await;
    let outcome = match outcome {
        Ok(r) => r,
        Err(_) => Err(format!(
            "no tools/list answer within {} s",
            LIST_TIMEOUT.as_secs()
        )),
    };
    match outcome {
        Ok((tools, link)) => {
            for tool in &tools {
                if let Some(name) = tool.get("name").and_then(Value::as_str) {
                    upstream.hints.remember(name, hints_of(tool));
                }
            }
            crate::power::observe(gw, upstream, &tools);
            let count = tools.len();
            gw.catalog.store(&upstream.name, |l| {
                l.tools = Arc::new(tools);
                l.listed_at = Some(crate::audit::now_rfc3339());
                l.error = None;
                l.link = Some(link);
            });
            tracing::debug!(upstream = %upstream.name, count, "tool catalog listed");
            gw.events.publish(
                "tools.listed",
                json!({ "upstream": upstream.name, "count": count }),
            );
        }
        Err(e) => {
            tracing::warn!(upstream = %upstream.name, "cannot list the upstream's tools: {e}");
            gw.catalog.store(&upstream.name, |l| {
                l.error = Some(e);
                l.link = None;
            });
        }
    }
}

/// The annotations of one `tools/list` entry (absent or malformed: none).
pub fn hints_of(tool: &Value) -> Hints {
    tool.get("annotations")
        .and_then(|a| serde::Deserialize::deserialize(a).ok())
        .unwrap_or_default()
}

/// Connects (or reuses the connection) and follows every `tools/list` page.
async fn list(
    gw: &Gateway,
    upstream: &Arc<UpstreamRuntime>,
    existing: Option<Link>,
) -> Result<(Vec<Value>, Link), String> {
    let link = match existing.filter(|l| !l.is_dead()) {
        Some(link) => link,
        None => connect(gw, upstream).await?,
    };
    let mut tools = Vec::new();
    let mut cursor: Option<String> = None;
    for page in 0..MAX_PAGES {
        let mut params = json!({});
        if let Some(c) = &cursor {
            params["cursor"] = c.clone().into();
        }
        let request = json!({"jsonrpc": "2.0", "id": format!("airlock-catalog-{page}"),
                             "method": "tools/list", "params": params});
        let answer = call(&link, &request).await?;
        let result = answer
            .get("result")
            .ok_or("tools/list answer has no result")?;
        if let Some(list) = result.get("tools").and_then(Value::as_array) {
            tools.extend(list.iter().filter(|t| t.get("name").is_some()).cloned());
        }
        cursor = result
            .get("nextCursor")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if cursor.is_none() {
            break;
        }
    }
    Ok((tools, link))
}

/// A new connection: `initialize`, `notifications/initialized`, and a task
/// that re-lists on `notifications/tools/list_changed`.
async fn connect(gw: &Gateway, upstream: &Arc<UpstreamRuntime>) -> Result<Link, String> {
    let link = upstream.session_link().map_err(|e| e.to_string())?;
    let init = json!({"jsonrpc": "2.0", "id": "airlock-catalog-init", "method": "initialize",
        "params": {"protocolVersion": PROTOCOL, "capabilities": {},
                   "clientInfo": {"name": "airlock-catalog", "version": env!("CARGO_PKG_VERSION")}}});
    call(&link, &init).await?;
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    link.notify(message(&initialized), None)
        .await
        .map_err(|e| e.to_string())?;
    if let Ok(reply) = link.listen(None).await {
        tokio::spawn(follow_changes(gw.clone(), upstream.clone(), reply));
    }
    Ok(link)
}

/// Re-lists when the server says its tools changed; ends with the stream.
async fn follow_changes(gw: Gateway, upstream: Arc<UpstreamRuntime>, reply: Reply) {
    let ReplyBody::Stream(mut events) = reply.body else {
        return;
    };
    loop {
        let event = tokio::select! {
            e = events.recv() => e,
            _ = gw.shutdown.cancelled() => return,
        };
        let Some(event) = event else { return };
        if event
            .message
            .as_ref()
            .is_some_and(|m| m.method() == Some("notifications/tools/list_changed"))
        {
            tracing::info!(upstream = %upstream.name, "tools changed upstream: listing them again");
            refresh(&gw, &upstream).await;
        }
    }
}

fn message(value: &Value) -> Message {
    Message::from_value(value)
}

/// Sends one request and reads its answer (a JSON body or the response at
/// the end of a stream); a JSON-RPC error becomes `Err`.
async fn call(link: &Link, request: &Value) -> Result<Value, String> {
    let reply = link
        .request(message(request), None)
        .await
        .map_err(|e| e.to_string())?;
    let answer = match reply.body {
        ReplyBody::Json(m) => m,
        ReplyBody::Stream(mut events) => loop {
            match events.recv().await {
                Some(e) if e.is_response() => match e.message {
                    Some(m) => break m,
                    None => continue,
                },
                Some(_) => continue,
                None => return Err("the stream ended before the answer".into()),
            }
        },
        ReplyBody::Empty => return Err(format!("HTTP {} with no answer", reply.status)),
        ReplyBody::Other { content_type, .. } => {
            return Err(format!(
                "HTTP {} with a {content_type} body instead of JSON-RPC",
                reply.status
            ));
        }
    };
    let value: Value = serde_json::from_slice(Bytes::clone(answer.raw()).as_ref())
        .map_err(|e| format!("unreadable answer: {e}"))?;
    if let Some(error) = value.get("error") {
        let method = request.get("method").and_then(Value::as_str).unwrap_or("");
        return Err(format!("{method} failed: {error}"));
    }
    Ok(value)
}
