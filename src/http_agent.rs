//! The agent side over Streamable HTTP: `/mcp` and `/mcp/{upstream}`.
//!
//! Per request: check `Origin`/`Host` (DNS-rebinding protection), the agent's
//! token (when `[[agent]]` is configured), content type and size, then frame
//! the body and tell the eras apart: a `Mcp-Session-Id` or an `initialize`
//! means the handshake era; a request whose `_meta` carries a protocol
//! version is the stateless era, whose mirrored headers must match the body.

// Handlers return ready-made HTTP responses as their error type; boxing them
// would only add noise.
#![allow(clippy::result_large_err)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures::StreamExt;

use crate::auth;
use crate::era::{self, Era};
use crate::gate;
use crate::gateway::{CallContext, Exchange, Gateway, Session, UpstreamRuntime};
use crate::jsonrpc::{self, Id, Kind, Message, code};
use crate::upstream::{Event, Link, ReplyBody, UpstreamError};

mod media_type;

pub const SESSION_HEADER: &str = "mcp-session-id";

pub fn routes() -> Router<Gateway> {
    Router::new()
        .route(
            "/mcp",
            post(post_default).get(get_default).delete(delete_default),
        )
        .route(
            "/mcp/{upstream}",
            post(post_named).get(get_named).delete(delete_named),
        )
}

/// A JSON-RPC error as an HTTP response (id `null` unless known).
pub fn rpc_error(status: StatusCode, id: Option<&Id>, code: i64, message: &str) -> Response {
    let body = jsonrpc::error_response(id.unwrap_or(&Id::null()), code, message);
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.raw().clone(),
    )
        .into_response()
}

fn default_upstream(gw: &Gateway) -> Result<Arc<UpstreamRuntime>, Response> {
    if gw.upstreams.len() == 1 {
        Ok(gw.upstreams[0].clone())
    } else {
        Err(rpc_error(
            StatusCode::NOT_FOUND,
            None,
            code::INVALID_REQUEST,
            "several upstreams are configured: use /mcp/{name}",
        ))
    }
}

fn named_upstream(gw: &Gateway, name: &str) -> Result<Arc<UpstreamRuntime>, Response> {
    gw.upstreams.get(name).cloned().ok_or_else(|| {
        rpc_error(
            StatusCode::NOT_FOUND,
            None,
            code::INVALID_REQUEST,
            &format!("no upstream named `{name}` is configured"),
        )
    })
}

async fn post_default(
    State(gw): State<Gateway>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    match default_upstream(&gw) {
        Ok(up) => handle_post(gw, up, addr, request).await,
        Err(r) => r,
    }
}

async fn post_named(
    State(gw): State<Gateway>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    request: Request,
) -> Response {
    match named_upstream(&gw, &name) {
        Ok(up) => handle_post(gw, up, addr, request).await,
        Err(r) => r,
    }
}

async fn get_default(State(gw): State<Gateway>, headers: HeaderMap) -> Response {
    match default_upstream(&gw) {
        Ok(up) => handle_get(gw, up, headers).await,
        Err(r) => r,
    }
}

async fn get_named(
    State(gw): State<Gateway>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    match named_upstream(&gw, &name) {
        Ok(up) => handle_get(gw, up, headers).await,
        Err(r) => r,
    }
}

async fn delete_default(State(gw): State<Gateway>, headers: HeaderMap) -> Response {
    match default_upstream(&gw) {
        Ok(up) => handle_delete(gw, up, headers).await,
        Err(r) => r,
    }
}

async fn delete_named(
    State(gw): State<Gateway>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    match named_upstream(&gw, &name) {
        Ok(up) => handle_delete(gw, up, headers).await,
        Err(r) => r,
    }
}

/// Origin, Host and agent token checks shared by POST, GET and DELETE.
/// Returns the authenticated agent's name, if agents are configured.
fn admit(gw: &Gateway, headers: &HeaderMap) -> Result<Option<String>, Response> {
    if let Err(why) = auth::check_origin_and_host(&gw.config, headers) {
        return Err(rpc_error(
            StatusCode::FORBIDDEN,
            None,
            code::UPSTREAM_ERROR,
            &format!("Forbidden: {why}"),
        ));
    }
    if gw.config.agents.is_empty() {
        return Ok(None);
    }
    match auth::bearer(headers).and_then(|t| auth::find_credential(&gw.config.agents, t)) {
        Some(agent) => Ok(Some(agent.name.clone())),
        None => {
            let mut response = rpc_error(
                StatusCode::UNAUTHORIZED,
                None,
                code::UPSTREAM_ERROR,
                "Unauthorized: this gateway needs an agent token (Authorization: Bearer …)",
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"airlock\""),
            );
            Err(response)
        }
    }
}

/// The agent's headers as they may go upstream: without its Airlock token.
/// Borrowed as they are when no agent tokens are configured (no copy per request).
fn upstream_headers<'h>(gw: &Gateway, headers: &'h HeaderMap) -> std::borrow::Cow<'h, HeaderMap> {
    if gw.config.agents.is_empty() {
        return std::borrow::Cow::Borrowed(headers);
    }
    let mut out = headers.clone();
    out.remove(header::AUTHORIZATION);
    std::borrow::Cow::Owned(out)
}

async fn read_body(gw: &Gateway, body: Body) -> Result<Bytes, Response> {
    let limit = gw.config.max_body_bytes;
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        rpc_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            None,
            code::INVALID_REQUEST,
            &format!("request body exceeds the {limit}-byte limit"),
        )
    })
}

/// The `MCP-Protocol-Version` header, when it names a stateless-era version
/// (a `YYYY-MM-DD` date from 2026-07-28 on).
fn declared_stateless_version(headers: &HeaderMap) -> Option<&str> {
    let version = headers.get(era::PROTOCOL_VERSION_HEADER)?.to_str().ok()?;
    let is_date = version.len() == 10
        && version.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    (is_date && version >= "2026-07-28").then_some(version)
}

/// The most of a refused request's body Airlock reads to keep its connection.
const REFUSED_BODY_DRAIN: usize = 64 * 1024;

/// Answers a POST refused before its body was read. A response sent over an
/// unread body makes hyper close the connection, and a keep-alive client then
/// sees its next request fail with "server disconnected". A small body is read
/// (briefly) so the connection stays usable; anything larger, or slower, is not
/// worth buffering for a request that is refused anyway: the client is told
/// `Connection: close`, so it does not reuse the connection.
async fn refuse_unread(headers: &HeaderMap, body: Body, mut response: Response) -> Response {
    // A client waiting for `100 Continue` has not sent its body: reading it
    // would invite the upload being refused. (A body declared larger than
    // the drain limit fails at once, from its Content-Length.)
    let expects_continue = headers.contains_key(header::EXPECT);
    let drained = if expects_continue {
        false
    } else {
        let drain = axum::body::to_bytes(body, REFUSED_BODY_DRAIN);
        let drained = tokio::time::timeout(std::time::Duration::from_secs(1), drain).await;
        matches!(drained, Ok(Ok(_)))
    };
    if !drained {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

async fn handle_post(
    gw: Gateway,
    upstream: Arc<UpstreamRuntime>,
    addr: SocketAddr,
    request: Request,
) -> Response {
    // The headers are taken apart from the body, not copied.
    let (parts, body) = request.into_parts();
    let headers = parts.headers;
    let agent = match admit(&gw, &headers) {
        Ok(agent) => agent,
        Err(response) => return refuse_unread(&headers, body, response).await,
    };
    // Exactly one Content-Type, and it must say JSON (see `media_type`).
    let mut content_types = headers.get_all(header::CONTENT_TYPE).iter();
    let json = match (content_types.next(), content_types.next()) {
        (Some(value), None) => value.to_str().is_ok_and(media_type::is_json),
        _ => false,
    };
    if !json {
        let response = rpc_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            None,
            code::INVALID_REQUEST,
            "Unsupported Media Type: Content-Type must be application/json (a charset parameter, if any, utf-8)",
        );
        return refuse_unread(&headers, body, response).await;
    }
    let body = match read_body(&gw, body).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let message = match Message::parse_metered(body, &gw.metrics.body_parses) {
        Ok(m) => m,
        Err(e) => return rpc_error(StatusCode::BAD_REQUEST, e.id(), e.code(), &e.to_string()),
    };
    // Mirrored headers, whatever the era: never duplicated, never disagreeing
    // with the body (the stateless era additionally requires them below).
    // Like every check below, it reads what the one parse recorded.
    if let Err(mismatch) = era::check_mirrored_headers(&message, &headers) {
        return rpc_error(
            StatusCode::BAD_REQUEST,
            message.id(),
            code::HEADER_MISMATCH,
            &mismatch,
        );
    }
    let forwarded = upstream_headers(&gw, &headers);

    if let Some(sid) = headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok()) {
        let session = match find_session(&gw, &upstream, sid, agent.as_deref()).await {
            Ok(s) => s,
            Err(response) => return response,
        };
        if let Some(version) = headers
            .get(era::PROTOCOL_VERSION_HEADER)
            .and_then(|v| v.to_str().ok())
            && !session.accepts_protocol_version(version)
        {
            return rpc_error(
                StatusCode::BAD_REQUEST,
                message.id(),
                code::INVALID_REQUEST,
                &format!(
                    "Bad Request: unsupported MCP-Protocol-Version `{version}` for this session"
                ),
            );
        }
        let ctx = CallContext {
            upstream,
            link: session.link.clone(),
            era: Era::Handshake,
            session_key: session.id.clone(),
            agent: session.agent.clone(),
        };
        return dispatch(&gw, &ctx, message, &forwarded, Some(session), None).await;
    }

    if message.method() == Some("initialize") && message.is_request() {
        if gw.sessions.len() >= gw.config.max_sessions {
            return rpc_error(
                StatusCode::SERVICE_UNAVAILABLE,
                message.id(),
                code::UPSTREAM_ERROR,
                &format!(
                    "too many open sessions (max_sessions = {}); end unused sessions or raise the limit",
                    gw.config.max_sessions
                ),
            );
        }
        let peek = era::peek(&message);
        let who = agent
            .clone()
            .or_else(|| peek.client_info.as_ref().map(|c| c.label()))
            .unwrap_or_else(|| format!("unknown@{}", addr.ip()));
        drop(peek);
        let session = match gw.open_session(&upstream, who, agent.clone()) {
            Ok(s) => s,
            Err(e) => return upstream_failure(message.id(), &e, Era::Handshake),
        };
        let ctx = CallContext {
            upstream,
            link: session.link.clone(),
            era: Era::Handshake,
            session_key: session.id.clone(),
            agent: session.agent.clone(),
        };
        let sid = session.id.clone();
        let id = message.id().cloned();
        gw.holds.elicit.note_initialize(&sid, &message);
        // In flight from the start: the child's start-up can outlast a short
        // `session_idle_timeout`, and the reaper must not close it meanwhile.
        let busy = InFlight::new(&gw, Some(session.clone()));
        let exchange = match gw.forward(&ctx, message, Some(&forwarded)).await {
            Ok(exchange) => exchange,
            Err(e) => {
                gw.close_session(&sid).await;
                return upstream_failure(id.as_ref(), &e, Era::Handshake);
            }
        };
        let exchange = explain_http_failure(exchange, id.as_ref());
        // A refused initialize leaves no session (and no child) behind.
        let refused = exchange.reply.status >= 400
            || matches!(&exchange.reply.body, ReplyBody::Json(m) if jsonrpc::error_code(m).is_some());
        if refused {
            gw.close_session(&sid).await;
            return to_response(exchange, None, false, None);
        }
        let mut exchange = exchange;
        if let ReplyBody::Json(answer) = &exchange.reply.body {
            session.remember_protocol_version(answer);
        }
        let remember = session.clone();
        exchange.reply.body = exchange.reply.body.tap(move |answer| {
            if answer.kind() == Kind::Response {
                remember.remember_negotiated_version(answer);
            }
        });
        return to_response(exchange, Some(&sid), false, Some(busy));
    }

    // No session and no initialize: this must be a stateless-era request.
    if message.kind() != Kind::Request {
        return rpc_error(
            StatusCode::BAD_REQUEST,
            None,
            code::UPSTREAM_ERROR,
            "Bad Request: Mcp-Session-Id header is required",
        );
    }
    let peek = match era::peek_strict(&message) {
        Ok(peek) => peek.unwrap_or_default(),
        Err(e) => {
            return rpc_error(
                StatusCode::BAD_REQUEST,
                message.id(),
                code::INVALID_PARAMS,
                &format!("Invalid params: {e}"),
            );
        }
    };
    if era::stateless_version(&peek).is_none() {
        if let Some(version) = declared_stateless_version(&headers) {
            // The header says 2026-07-28 or later: a stateless request that
            // lacks a required key, not a handshake request without a session.
            return rpc_error(
                StatusCode::BAD_REQUEST,
                message.id(),
                code::INVALID_PARAMS,
                &format!(
                    "Invalid params: params._meta[\"{}\"] is required (MCP-Protocol-Version is {version})",
                    era::META_PROTOCOL_VERSION
                ),
            );
        }
        return rpc_error(
            StatusCode::BAD_REQUEST,
            message.id(),
            code::UPSTREAM_ERROR,
            "Bad Request: Mcp-Session-Id header is required (or, for protocol 2026-07-28 and later, params._meta[\"io.modelcontextprotocol/protocolVersion\"])",
        );
    }
    if let Err(mismatch) = era::check_headers(&message, &peek, &headers) {
        return rpc_error(
            StatusCode::BAD_REQUEST,
            message.id(),
            code::HEADER_MISMATCH,
            &mismatch,
        );
    }
    let who = agent
        .clone()
        .or_else(|| peek.meta.as_ref()?.client_info.as_ref().map(|c| c.label()));
    drop(peek);
    let session_key = match &agent {
        Some(name) => format!("agent:{name}"),
        None => format!("{}@{}", who.as_deref().unwrap_or("unknown"), addr.ip()),
    };
    let link = match upstream.stateless_link() {
        Ok(link) => link,
        Err(e) => return upstream_failure(message.id(), &e, Era::Stateless),
    };
    let ctx = CallContext {
        upstream,
        link,
        era: Era::Stateless,
        agent: who.unwrap_or_else(|| format!("unknown@{}", addr.ip())),
        session_key,
    };
    dispatch(&gw, &ctx, message, &forwarded, None, None).await
}

/// The live session `sid` of this upstream, opened by this same agent.
async fn find_session(
    gw: &Gateway,
    upstream: &UpstreamRuntime,
    sid: &str,
    agent: Option<&str>,
) -> Result<Arc<Session>, Response> {
    let found = gw.sessions.get(sid).map(|s| s.clone());
    match found {
        Some(session)
            if session.upstream.name == upstream.name && session.owner.as_deref() == agent =>
        {
            if let Some(why) = session.link.dead_error() {
                gw.close_session(sid).await;
                let message = match why {
                    UpstreamError::Broken { what } => format!(
                        "Session not found: its upstream server broke the protocol (it {what}) and was stopped; start a new session"
                    ),
                    _ => {
                        "Session not found: its upstream server exited; start a new session".into()
                    }
                };
                return Err(rpc_error(
                    StatusCode::NOT_FOUND,
                    None,
                    code::SESSION_NOT_FOUND,
                    &message,
                ));
            }
            session.touch(gw);
            Ok(session)
        }
        _ => Err(rpc_error(
            StatusCode::NOT_FOUND,
            None,
            code::SESSION_NOT_FOUND,
            "Session not found",
        )),
    }
}

/// An upstream failure as the agent sees it: a JSON-RPC error naming the cause.
fn upstream_failure(id: Option<&Id>, error: &UpstreamError, era: Era) -> Response {
    let status = match era {
        Era::Stateless => StatusCode::BAD_GATEWAY,
        Era::Handshake => StatusCode::OK,
    };
    rpc_error(status, id, code::UPSTREAM_ERROR, &error.to_string())
}

/// Forwards one message within a context and turns the answer into a response.
async fn dispatch(
    gw: &Gateway,
    ctx: &CallContext,
    message: Message,
    headers: &HeaderMap,
    session: Option<Arc<Session>>,
    new_session_id: Option<&str>,
) -> Response {
    let id = message.id().cloned();
    let busy = Some(InFlight::new(gw, session));
    let result = match message.kind() {
        Kind::Request => gw.forward(ctx, message, Some(headers)).await,
        Kind::Notification | Kind::Response => {
            if let Some(handled) = crate::hold::intercept_notification(gw, ctx, &message) {
                Ok(handled)
            } else {
                ctx.link
                    .notify(message, Some(headers))
                    .await
                    .map(|reply| Exchange {
                        reply,
                        list_filter: None,
                    })
            }
        }
    };
    // A stdio upstream has no HTTP status of its own: in the stateless era
    // its JSON-RPC errors get the status a 2026-07-28 server would send.
    let status_from_body = ctx.era == Era::Stateless && matches!(ctx.link, Link::Stdio(_));
    match result {
        Ok(exchange) => to_response(
            explain_http_failure(exchange, id.as_ref()),
            new_session_id,
            status_from_body,
            busy,
        ),
        Err(e) => {
            tracing::warn!(upstream = %ctx.upstream.name, "upstream failure: {e}");
            upstream_failure(id.as_ref(), &e, ctx.era)
        }
    }
}

/// An HTTP upstream's failure without a JSON-RPC body (e.g. a 500 page)
/// becomes a JSON-RPC error that says what happened.
fn explain_http_failure(exchange: Exchange, id: Option<&Id>) -> Exchange {
    let reply = &exchange.reply;
    let detail = match &reply.body {
        ReplyBody::Other { bytes, .. } if reply.status >= 400 => {
            String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                .trim()
                .to_owned()
        }
        ReplyBody::Empty if reply.status >= 500 => String::new(),
        _ => return exchange,
    };
    let Some(id) = id else { return exchange };
    let status = reply.status;
    let text = if detail.is_empty() {
        format!("upstream server answered HTTP {status}")
    } else {
        format!("upstream server answered HTTP {status}: {detail}")
    };
    Exchange {
        reply: crate::upstream::Reply {
            status: if status >= 500 { 502 } else { status },
            headers: HeaderMap::new(),
            body: ReplyBody::Json(jsonrpc::error_response(id, code::UPSTREAM_ERROR, &text)),
        },
        list_filter: None,
    }
}

/// Counts a request as in flight (for the gateway, and for its session if
/// any) until its response is fully sent.
struct InFlight(Gateway, Option<Arc<Session>>);

impl InFlight {
    fn new(gw: &Gateway, session: Option<Arc<Session>>) -> InFlight {
        gw.in_flight.fetch_add(1, Ordering::Relaxed);
        if let Some(s) = &session {
            s.in_flight.fetch_add(1, Ordering::Relaxed);
        }
        InFlight(gw.clone(), session)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Some(s) = &self.1 {
            // Idle time counts from the end of the last request, not its start.
            s.touch(&self.0);
            s.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

fn to_response(
    exchange: Exchange,
    new_session_id: Option<&str>,
    status_from_body: bool,
    busy: Option<InFlight>,
) -> Response {
    let Exchange { reply, list_filter } = exchange;
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut response = match reply.body {
        ReplyBody::Empty => status.into_response(),
        ReplyBody::Json(message) => {
            let message = match &list_filter {
                Some(filter) => filter.apply(message),
                None => message,
            };
            let status = if status_from_body && reply.status == 200 {
                StatusCode::from_u16(crate::gateway::stateless_status(&message)).unwrap_or(status)
            } else {
                status
            };
            (
                status,
                [(header::CONTENT_TYPE, "application/json")],
                message.raw().clone(),
            )
                .into_response()
        }
        ReplyBody::Other {
            content_type,
            bytes,
        } => (status, [(header::CONTENT_TYPE, content_type)], bytes).into_response(),
        ReplyBody::Stream(rx) => {
            let events = rx.map(move |event| {
                let _busy = &busy;
                let event = match (&list_filter, event.message) {
                    (Some(filter), Some(m))
                        if m.kind() == Kind::Response && gate::carries_tool_list(&m) =>
                    {
                        Event {
                            message: Some(filter.apply(m)),
                            ..event
                        }
                    }
                    (_, message) => Event { message, ..event },
                };
                Ok::<_, Infallible>(sse_frame(&event))
            });
            let mut r = Response::new(Body::from_stream(events));
            *r.status_mut() = status;
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            h.insert("x-accel-buffering", HeaderValue::from_static("no"));
            r
        }
    };
    // The upstream's headers, where Airlock has not set its own (content type,
    // stream cache control).
    for name in reply.headers.keys() {
        if !response.headers().contains_key(name) {
            for value in reply.headers.get_all(name) {
                response.headers_mut().append(name.clone(), value.clone());
            }
        }
    }
    if let Some(sid) = new_session_id
        && let Ok(v) = HeaderValue::from_str(sid)
    {
        response.headers_mut().insert(SESSION_HEADER, v);
    }
    response
}

/// One SSE frame with one `data:` line (empty for a priming event), after
/// the event's `id` and `retry` when it has them. SSE ends a line at LF, CR
/// or CRLF, so the message goes through [`line::to_line`] first: a raw CR
/// that JSON reads as whitespace would otherwise cut the event in two. An
/// id with a line break (never sent by a sane upstream) is dropped for the
/// same reason.
fn sse_frame(event: &Event) -> Bytes {
    let data = event
        .message
        .as_ref()
        .map(|m| crate::jsonrpc::line::to_line(m.raw()));
    let len = data.as_ref().map_or(0, |d| d.len());
    let mut out = Vec::with_capacity(len + 64);
    if let Some(id) = &event.id
        && !id.contains(['\r', '\n'])
    {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(id.as_bytes());
        out.push(b'\n');
    }
    if let Some(retry) = event.retry {
        out.extend_from_slice(format!("retry: {retry}\n").as_bytes());
    }
    match &data {
        Some(data) => {
            out.extend_from_slice(b"event: message\ndata: ");
            out.extend_from_slice(data);
            out.extend_from_slice(b"\n\n");
        }
        None => out.extend_from_slice(b"data: \n\n"),
    }
    Bytes::from(out)
}

async fn handle_get(gw: Gateway, upstream: Arc<UpstreamRuntime>, headers: HeaderMap) -> Response {
    let agent = match admit(&gw, &headers) {
        Ok(agent) => agent,
        Err(response) => return response,
    };
    let Some(sid) = headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok()) else {
        // Only handshake-era sessions have a standalone stream.
        let mut r = StatusCode::METHOD_NOT_ALLOWED.into_response();
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return r;
    };
    let session = match find_session(&gw, &upstream, sid, agent.as_deref()).await {
        Ok(s) => s,
        Err(response) => return response,
    };
    // A `Last-Event-ID` that Airlock issued resumes a held call's stream;
    // any other goes to the upstream, which replays its own stream.
    if let Some(last) = headers.get("last-event-id").and_then(|v| v.to_str().ok())
        && let Some(resumed) = crate::hold::stream::resume(&gw.holds, &session.id, last)
    {
        return match resumed {
            Ok(events) => to_response(
                Exchange {
                    reply: crate::upstream::Reply {
                        status: 200,
                        headers: HeaderMap::new(),
                        body: ReplyBody::Stream(events),
                    },
                    list_filter: None,
                },
                None,
                false,
                Some(InFlight::new(&gw, Some(session))),
            ),
            Err(e) => rpc_error(
                StatusCode::BAD_REQUEST,
                None,
                code::INVALID_REQUEST,
                &e.to_string(),
            ),
        };
    }
    let forwarded = upstream_headers(&gw, &headers);
    match session.link.listen(Some(&forwarded)).await {
        Ok(mut reply) => {
            // A policy reload may change the tool list: say so on this stream.
            if let ReplyBody::Stream(events) = reply.body {
                reply.body = ReplyBody::Stream(events.with_notices(
                    upstream.policy_reloads(),
                    gate::list_changed,
                    None,
                ));
            }
            // A resumed stream may replay an answer to `tools/list`: it is
            // filtered like the answer on the POST stream would have been.
            to_response(
                Exchange {
                    reply,
                    list_filter: Some(crate::gateway::ListFilter::new(&gw, &upstream)),
                },
                None,
                false,
                None,
            )
        }
        Err(e) => rpc_error(
            StatusCode::BAD_GATEWAY,
            None,
            code::UPSTREAM_ERROR,
            &e.to_string(),
        ),
    }
}

async fn handle_delete(
    gw: Gateway,
    upstream: Arc<UpstreamRuntime>,
    headers: HeaderMap,
) -> Response {
    let agent = match admit(&gw, &headers) {
        Ok(agent) => agent,
        Err(response) => return response,
    };
    let Some(sid) = headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok()) else {
        return rpc_error(
            StatusCode::BAD_REQUEST,
            None,
            code::UPSTREAM_ERROR,
            "Bad Request: Mcp-Session-Id header is required",
        );
    };
    if let Err(response) = find_session(&gw, &upstream, sid, agent.as_deref()).await {
        return response;
    }
    gw.close_session(sid).await;
    StatusCode::OK.into_response()
}
