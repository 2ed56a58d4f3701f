//! The approvers' HTTP API (`/api/*`), the event websocket and metrics.
//!
//! Approvers authenticate with `Authorization: Bearer <token>` (scripts, the
//! CLI) or with the login cookie (browser). Cookie-authenticated unsafe
//! requests must carry the CSRF token in `X-Airlock-CSRF`, and browsers on
//! other origins are refused. Agent tokens never grant approval rights.
//! Tokens are never read from query strings.

use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::body::Bytes;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use crate::audit::{self, ExportFormat, Filter};
use crate::auth;
use crate::config::Role;
use crate::gateway::Gateway;
use crate::hold::{self, Choice, DecideError};
use crate::login::{self, CSRF_HEADER};

mod history;
mod policy_edit;
mod power;
mod tools;

pub fn routes() -> Router<Gateway> {
    // Login is open to anyone: its bodies are read under a small limit.
    let login = Router::new().route("/api/login", get(login_options).post(login_handler));
    let api = Router::new()
        .route("/api/logout", post(logout_handler))
        .route("/api/me", get(me))
        .route("/api/status", get(status))
        .route("/api/pending", get(list_pending))
        .route("/api/pending/{id}", get(get_pending))
        .route("/api/pending/{id}/approve", post(approve))
        .route("/api/pending/{id}/deny", post(deny))
        .route("/api/audit", get(audit_query))
        .route("/api/audit/export", get(audit_export))
        .route("/api/audit/entries/{seq}", get(history::entry))
        .route("/api/audit/verify", post(history::verify))
        .route("/api/tools", get(tools::list_tools))
        .route("/api/tools/refresh", post(tools::refresh_tools))
        .route("/api/pins", get(power::list_pins))
        .route("/api/tools/{upstream}/pin", post(power::pin_upstream))
        .route(
            "/api/tools/{upstream}/{tool}/accept",
            post(power::accept_tool),
        )
        .route("/api/quorum", get(power::quorum))
        .route("/api/grants", get(power::list_grants))
        .route(
            "/api/grants/{id}",
            axum::routing::delete(power::revoke_grant),
        )
        .route(
            "/api/policy/{upstream}",
            get(policy_edit::get_policy).put(policy_edit::put_policy),
        )
        .route(
            "/api/policy/{upstream}/check",
            post(policy_edit::check_policy),
        )
        .route("/api/ws", get(websocket))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics));
    reading_bodies_first(api, MAX_BODY).merge(reading_bodies_first(login, LOGIN_MAX_BODY))
}

/// Largest request body the API accepts.
const MAX_BODY: usize = 2 * 1024 * 1024;
/// Largest `POST /api/login` body: `{"token": "…"}`, read before any auth.
pub const LOGIN_MAX_BODY: usize = 16 * 1024;

/// `router` with every request body read first, at most `limit` bytes
/// ([`read_body_first`]); axum's extractors are told the same limit.
pub fn reading_bodies_first(router: Router<Gateway>, limit: usize) -> Router<Gateway> {
    router
        .layer(axum::middleware::from_fn_with_state(limit, read_body_first))
        .layer(axum::extract::DefaultBodyLimit::max(limit))
}

/// Reads the whole request body, at most `limit` bytes, before any handler
/// (or auth check) runs. A request refused before its body was read (401,
/// 403 CSRF) would leave the connection half-read, and hyper then closes it:
/// a client reusing that keep-alive connection for its next request would
/// see "server disconnected" instead of an answer. API bodies are small, so
/// reading them first is cheap. A body that does not arrive within
/// `[server] body_timeout` is answered 408.
pub async fn read_body_first(
    State(limit): State<usize>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let (parts, body) = request.into_parts();
    match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => {
            next.run(axum::extract::Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Err(e) if crate::listener::is_body_timeout(&e) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "request body not received in time",
        )
        .into_response(),
        Err(_) => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body exceeds {limit} bytes (or could not be read)"),
        )
        .into_response(),
    }
}

/// Unknown `/api/…` paths answer in the API's error format.
pub fn not_found(path: &str) -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no API endpoint at {path}"),
    )
    .into_response()
}

/// An API error: `{"error": {"code", "message"}}` with a status.
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    extra: Option<serde_json::Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            extra: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({ "code": self.code, "message": self.message });
        if let (Some(obj), Some(serde_json::Value::Object(extra))) =
            (error.as_object_mut(), self.extra)
        {
            obj.extend(extra);
        }
        (self.status, Json(json!({ "error": error }))).into_response()
    }
}

/// How the approver proved who they are.
#[derive(Debug, Clone, PartialEq)]
pub enum Via {
    Bearer,
    Cookie,
}

/// An authenticated approver (extractor).
pub struct Approver {
    /// The name people read (audit rows, events, the dashboard, Slack).
    pub name: String,
    /// The stable identity votes count as: `token:NAME` for a token
    /// approver, `oidc:ISSUER#SUBJECT` for a single sign-on login
    /// ([`crate::quorum::Decider::voter`]).
    pub voter: String,
    pub via: Via,
    /// Looked up in the config on every request for token approvers, so a
    /// changed role takes effect at once (their login cookie carries only the
    /// name); a single sign-on login carries the role its groups mapped to.
    pub role: Role,
    /// Approver groups (`approval.groups`): from the config for token
    /// approvers, from the identity provider for single sign-on logins.
    pub groups: Vec<String>,
}

impl Approver {
    /// `Ok` when this approver's role is at least `needed`; else a 403 that
    /// says which role the action takes.
    pub fn require(&self, needed: Role, action: &str) -> Result<(), ApiError> {
        if self.role >= needed {
            return Ok(());
        }
        let mut err = ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden_role",
            format!(
                "{action} needs the {} role; approver `{}` is a {}",
                needed.as_str(),
                self.name,
                self.role.as_str()
            ),
        );
        err.extra = Some(json!({ "role": self.role, "needed": needed }));
        Err(err)
    }

    /// This approver as a decider of held calls (name, voter, groups).
    pub fn decider(&self) -> crate::quorum::Decider {
        crate::quorum::Decider {
            name: self.name.clone(),
            voter: Some(self.voter.clone()),
            groups: self.groups.clone(),
        }
    }

    /// The channel a decision by this approver is recorded under.
    fn channel(&self, headers: &HeaderMap) -> &'static str {
        let cli = headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ua| ua.starts_with("airlock-cli"));
        match self.via {
            Via::Cookie => "dashboard",
            Via::Bearer if cli => "cli",
            Via::Bearer => "api",
        }
    }
}

impl FromRequestParts<Gateway> for Approver {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, gw: &Gateway) -> Result<Approver, ApiError> {
        authenticate(gw, &parts.method, &parts.headers, parts.uri.query())
    }
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

/// The whole approver check; see the module docs.
pub fn authenticate(
    gw: &Gateway,
    method: &Method,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Approver, ApiError> {
    let unsafe_method = !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    if let Some(token) = auth::bearer(headers) {
        if let Some(approver) = auth::find_credential(&gw.config.approvers, token) {
            return Ok(Approver {
                name: approver.name.clone(),
                voter: crate::quorum::token_voter(&approver.name),
                via: Via::Bearer,
                role: approver.role,
                groups: approver.groups.clone(),
            });
        }
        if auth::find_credential(&gw.config.agents, token).is_some() {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "agent tokens cannot use the approval API",
            ));
        }
        return Err(unauthorized("invalid approver token"));
    }
    if let Some(session) = login::from_cookie(gw, headers) {
        if unsafe_method || headers.contains_key(header::UPGRADE) {
            login::check_same_origin(gw, headers)
                .map_err(|m| ApiError::new(StatusCode::FORBIDDEN, "forbidden", m))?;
        }
        if unsafe_method {
            let sent = headers
                .get(CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !login::csrf_matches(&session, sent) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "csrf",
                    format!("missing or wrong CSRF token (send the {CSRF_HEADER} header)"),
                ));
            }
        }
        let role = session.role(&gw.config);
        let groups = session.groups(&gw.config);
        return Ok(Approver {
            voter: session.voter(),
            name: session.approver,
            via: Via::Cookie,
            role,
            groups,
        });
    }
    if query.is_some_and(|q| {
        q.split('&')
            .any(|kv| matches!(kv.split('=').next(), Some("token" | "access_token")))
    }) {
        return Err(unauthorized(
            "tokens in query strings are not accepted; send Authorization: Bearer <token>",
        ));
    }
    Err(unauthorized(
        "approver authentication required (Authorization: Bearer <token> or the login cookie)",
    ))
}

#[derive(Deserialize)]
struct LoginBody {
    token: String,
}

/// A JSON body, with extraction failures answered as API errors.
fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(v)| v)
        .map_err(|e| ApiError::new(e.status(), "bad_request", e.body_text()))
}

/// Query parameters, with bad values answered as API errors.
fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(v)| v)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))
}

async fn login_handler(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    body: Result<Json<LoginBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    login::check_same_origin(&gw, &headers)
        .map_err(|m| ApiError::new(StatusCode::FORBIDDEN, "forbidden", m))?;
    let body = json_body(body)?;
    let Some(approver) = auth::find_credential(&gw.config.approvers, body.token.trim()) else {
        return Err(unauthorized("invalid approver token"));
    };
    let (cookie, session) = login::start(&gw, &approver.name);
    let mut response =
        Json(json!({ "approver": approver.name, "role": approver.role, "csrf": session.csrf }))
            .into_response();
    response.headers_mut().insert(header::SET_COOKIE, cookie);
    Ok(response)
}

/// `GET /api/login` (open): how this gateway lets approvers log in, for the
/// login page.
async fn login_options(State(gw): State<Gateway>) -> Json<serde_json::Value> {
    let sso = gw
        .config
        .oidc
        .as_ref()
        .map(|o| json!({ "provider": o.provider_name, "login_url": crate::oidc::LOGIN_PATH }));
    Json(json!({ "token": !gw.config.approvers.is_empty(), "sso": sso }))
}

/// Ends the login. A single sign-on login whose provider has an
/// `end_session_endpoint` answers 200 with `{"logout_url"}`: the page sends
/// the browser there so the provider's session ends too.
async fn logout_handler(
    State(gw): State<Gateway>,
    _approver: Approver,
    headers: HeaderMap,
) -> Response {
    let session = login::from_cookie(&gw, &headers);
    login::end(&gw, &headers);
    let sso = session.is_some_and(|s| matches!(s.kind, login::LoginKind::Sso { .. }));
    let logout_url = if sso {
        crate::oidc::end_session_url(&gw).await
    } else {
        None
    };
    let mut response = match logout_url {
        Some(url) => Json(json!({ "logout_url": url })).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    };
    response
        .headers_mut()
        .insert(header::SET_COOKIE, login::clear_cookie(&gw));
    response
}

async fn me(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    approver: Approver,
) -> Json<serde_json::Value> {
    let session = login::from_cookie(&gw, &headers);
    let sso = session
        .as_ref()
        .is_some_and(|s| matches!(s.kind, login::LoginKind::Sso { .. }));
    let csrf = session.map(|s| s.csrf);
    Json(json!({ "approver": approver.name, "role": approver.role, "csrf": csrf, "sso": sso }))
}

async fn status(State(gw): State<Gateway>, _approver: Approver) -> Json<serde_json::Value> {
    Json(json!({
        "agents_connected": gw.agents_connected(),
        "pending": gw.holds.len(),
        "audit_healthy": gw.audit.is_healthy(),
        "upstreams": gw.upstreams.keys().collect::<Vec<_>>(),
        "policy_problems": gw.policy_problems(),
    }))
}

async fn list_pending(State(gw): State<Gateway>, _approver: Approver) -> Json<serde_json::Value> {
    Json(json!({ "pending": gw.holds.list() }))
}

async fn get_pending(
    State(gw): State<Gateway>,
    _approver: Approver,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if let Some(item) = gw.holds.get(&id) {
        return Ok(Json(json!({ "pending": item, "status": "pending" })));
    }
    match hold::resolution(&gw, &id).await {
        Some(r) => Ok(Json(
            json!({ "id": id, "status": "decided", "resolution": hold::resolution_json(&r) }),
        )),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no pending call with id {id}"),
        )),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    #[serde(default)]
    comment: Option<String>,
    /// With an approval: a standing approval for later calls (`grants.rs`).
    #[serde(default)]
    grant: Option<crate::grants::GrantRequest>,
}

async fn approve(
    state: State<Gateway>,
    approver: Approver,
    headers: HeaderMap,
    id: Path<String>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    decide_http(state, approver, headers, id, body, Choice::Approve).await
}

async fn deny(
    state: State<Gateway>,
    approver: Approver,
    headers: HeaderMap,
    id: Path<String>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    decide_http(state, approver, headers, id, body, Choice::Deny).await
}

async fn decide_http(
    State(gw): State<Gateway>,
    approver: Approver,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
    choice: Choice,
) -> Result<Json<serde_json::Value>, ApiError> {
    approver.require(Role::Approver, "deciding a held call")?;
    // The body is optional; when present it must be `{"comment": "…"}`
    // (and, approving, optionally `"grant": {…}`).
    let DecisionBody { comment, grant } = if body.iter().all(u8::is_ascii_whitespace) {
        DecisionBody::default()
    } else {
        serde_json::from_slice::<DecisionBody>(&body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!(
                    "body must be {{\"comment\": \"…\", \"grant\": {{\"minutes\": N, \"scope\": \"agent\"|\"session\", \"exact_arguments\": bool}}}}: {e}"
                ),
            )
        })?
    };
    let grant = match grant {
        None => None,
        Some(_) if choice == Choice::Deny => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "a grant can only come with an approval",
            ));
        }
        Some(request) => Some(check_grant(&gw, &id, request)?),
    };
    if comment.as_ref().is_some_and(|c| c.len() > 4096) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "comment is longer than 4096 bytes",
        ));
    }
    let channel = approver.channel(&headers);
    let decider = approver.decider();
    match crate::quorum::decide_as(&gw, &id, choice, decider, channel, comment).await {
        Ok(crate::quorum::Decided::Vote { approvals, needed }) => Ok(Json(json!({
            "id": id,
            "decision": "vote",
            "approvals": approvals,
            "needed": needed,
            "message": format!("{} of {needed} approvals; the call stays held until {needed} different approvers approve", approvals.len()),
        }))),
        Ok(crate::quorum::Decided::Final(r)) => {
            let mut body = hold::resolution_json(&r);
            body["id"] = id.clone().into();
            if let Some((item, request)) = grant {
                let grant = crate::grants::new_grant(&item, &request, &approver.name);
                match gw.grants.add(grant.clone()).await {
                    Ok(()) => {
                        crate::power::granted(&gw, &grant, channel).await;
                        body["grant"] = json!(grant);
                    }
                    // The approval stands; only the standing approval is missing.
                    Err(e) => {
                        tracing::error!(pending = %id, "grant not kept: {e}");
                        body["grant_error"] =
                            format!("the call was approved, but the grant could not be kept ({e}); later calls will be held").into();
                    }
                }
            }
            Ok(Json(body))
        }
        Err(crate::quorum::QuorumError::Decide(e)) => Err(decide_error(e)),
        Err(e @ crate::quorum::QuorumError::SameApprover { .. }) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "same_approver",
            e.to_string(),
        )),
        Err(e @ crate::quorum::QuorumError::ToolChanged { .. }) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "tool_changed",
            e.to_string(),
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden_group",
            e.to_string(),
        )),
    }
}

/// Checks a grant asked for with the approval of held call `id` against the
/// policy in force, before anything is decided (a refused grant decides nothing).
fn check_grant(
    gw: &Gateway,
    id: &str,
    request: crate::grants::GrantRequest,
) -> Result<(hold::PendingItem, crate::grants::GrantRequest), ApiError> {
    let unprocessable =
        |message: String| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "grant_refused", message);
    let Some(item) = gw.holds.get(id) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no pending call with id {id} on this gateway to grant from"),
        ));
    };
    if item.rule == crate::power::RULE {
        return Err(unprocessable(
            "this call is held because the tool's definition changed: accept the definition instead of granting".into(),
        ));
    }
    let Some(upstream) = gw.upstreams.get(&item.upstream) else {
        return Err(unprocessable(format!(
            "upstream `{}` is no longer configured",
            item.upstream
        )));
    };
    crate::grants::check(&upstream.policy(), &item.tool, &item.rule, &request)
        .map_err(|e| unprocessable(e.to_string()))?;
    Ok((item, request))
}

/// Maps a decision failure to its HTTP answer (409 names the winner).
pub fn decide_error(e: DecideError) -> ApiError {
    match e {
        DecideError::NotFound(id) => ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no pending call with id {id}"),
        ),
        DecideError::AlreadyDecided(r) => {
            let mut err = ApiError::new(
                StatusCode::CONFLICT,
                "already_decided",
                format!("already {}", r.describe()),
            );
            err.extra = Some(
                json!({ "decided_by": r.decider, "decision": r.verdict, "channel": r.channel, "at": r.at_rfc3339() }),
            );
            err
        }
        e @ DecideError::AgentUserOnly(_) => {
            ApiError::new(StatusCode::FORBIDDEN, "agent_user_only", e.to_string())
        }
        e @ DecideError::Audit(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit_unavailable",
            e.to_string(),
        ),
        e @ DecideError::Store(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            e.to_string(),
        ),
    }
}

const MAX_PAGE: u32 = 1000;

fn checked_filter(mut filter: Filter) -> Result<Filter, ApiError> {
    for (name, value) in [("since", &filter.since), ("until", &filter.until)] {
        if let Some(v) = value
            && chrono::DateTime::parse_from_rfc3339(v).is_err()
        {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("`{name}` must be an RFC 3339 time like 2026-11-25T10:00:00Z, got `{v}`"),
            ));
        }
    }
    // Stored times are UTC with a `Z`; compare like with like.
    let to_utc = |v: &Option<String>| {
        v.as_ref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| {
                t.with_timezone(&chrono::Utc)
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            })
    };
    filter.since = to_utc(&filter.since);
    filter.until = to_utc(&filter.until);
    Ok(filter)
}

async fn audit_query(
    State(gw): State<Gateway>,
    _approver: Approver,
    filter: Result<Query<Filter>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let mut filter = checked_filter(query(filter)?)?;
    let limit = filter.limit.unwrap_or(100).clamp(1, MAX_PAGE);
    filter.limit = Some(limit);
    let entries = gw.audit.query(filter, true).await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit_unavailable",
            e.to_string(),
        )
    })?;
    let next_cursor = (entries.len() as u32 == limit)
        .then(|| entries.last().map(|e| e.seq.to_string()))
        .flatten();
    Ok(Json(
        json!({ "entries": entries, "next_cursor": next_cursor }),
    ))
}

#[derive(Deserialize)]
struct ExportQuery {
    #[serde(default)]
    format: Option<String>,
    #[serde(flatten)]
    filter: Filter,
}

async fn audit_export(
    State(gw): State<Gateway>,
    _approver: Approver,
    q: Result<Query<ExportQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let format = match q.format.as_deref().unwrap_or("jsonl") {
        "jsonl" => ExportFormat::Jsonl,
        "csv" => ExportFormat::Csv,
        other => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("format must be jsonl or csv, got `{other}`"),
            ));
        }
    };
    let filter = checked_filter(q.filter)?;
    let entries = gw.audit.query(filter, false).await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit_unavailable",
            e.to_string(),
        )
    })?;
    let mut out = Vec::new();
    audit::export(&entries, format, &mut out)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "export", e.to_string()))?;
    let (content_type, ext) = match format {
        ExportFormat::Jsonl => ("application/x-ndjson", "jsonl"),
        ExportFormat::Csv => ("text/csv; charset=utf-8", "csv"),
    };
    let disposition = format!("attachment; filename=\"airlock-audit.{ext}\"");
    Ok((
        [
            (header::CONTENT_TYPE, content_type.to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        Body::from(out),
    )
        .into_response())
}

/// `/healthz` and `/metrics` need no login, but a page on another site
/// reaching a loopback gateway through a rebound DNS name gets nothing.
fn refuse_rebound(gw: &Gateway, headers: &HeaderMap) -> Option<Response> {
    auth::check_origin_and_host(&gw.config, headers)
        .err()
        .map(|why| ApiError::new(StatusCode::FORBIDDEN, "forbidden", why).into_response())
}

async fn healthz(State(gw): State<Gateway>, headers: HeaderMap) -> Response {
    if let Some(refused) = refuse_rebound(&gw, &headers) {
        return refused;
    }
    let healthy = gw.audit.is_healthy();
    let body = json!({
        "status": if healthy { "ok" } else { "degraded" },
        "audit": if healthy { "ok".to_owned() } else { format!("cannot write: {}", gw.audit.last_error().unwrap_or_default()) },
        // A refused checkpoint: the store can still be written (calls go on),
        // but the history signed before was changed behind the gateway.
        "audit_checkpoints": gw.audit.checkpoint_problem().map_or("ok".to_owned(), |p| format!("refused: {p}")),
        "pending": gw.holds.len(),
        "sessions": gw.sessions.len(),
        // A refused policy edit does not make the gateway unhealthy (the
        // previous policy is in force), but whoever edited it should see it.
        "policies": gw.upstreams.values().map(|up| {
            let state = up.policy_status.problem().map_or("ok", |p| p.summary());
            (up.name.clone(), serde_json::Value::from(state))
        }).collect::<serde_json::Map<_, _>>(),
        // An upstream that broke the protocol lately (a bad line on stdout).
        // Not the gateway's health: its other calls and upstreams still work.
        "upstreams": gw.upstreams.values().map(|up| {
            (up.name.clone(), serde_json::Value::from(up.health.summary()))
        }).collect::<serde_json::Map<_, _>>(),
    });
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// One gauge per upstream: 1 while its policy file is not what is in force.
fn policy_metrics(gw: &Gateway) -> String {
    let mut out = String::from(
        "# HELP airlock_policy_stale 1 when an upstream's policy file is not the policy in force (a refused edit, an unreadable file).\n# TYPE airlock_policy_stale gauge\n",
    );
    for up in gw.upstreams.values() {
        let stale = u8::from(up.policy_status.problem().is_some());
        out.push_str(&format!(
            "airlock_policy_stale{{upstream=\"{}\"}} {stale}\n",
            up.name
        ));
    }
    out
}

/// Per upstream: bad lines from its stdio children, and children stopped for one.
fn upstream_metrics(gw: &Gateway) -> String {
    let mut out = String::new();
    per_upstream_counter(
        &mut out,
        "airlock_upstream_protocol_errors_total",
        "Lines a stdio upstream wrote that are not UTF-8, not JSON-RPC or over the size limit.",
        gw.upstreams
            .values()
            .map(|up| (up.name.as_str(), Some(up.health.protocol_errors()))),
    );
    per_upstream_counter(
        &mut out,
        "airlock_upstream_children_stopped_total",
        "Session children Airlock stopped because they broke the protocol.",
        gw.upstreams
            .values()
            .map(|up| (up.name.as_str(), Some(up.health.broken_links()))),
    );
    per_upstream_counter(
        &mut out,
        "airlock_upstream_connections_opened_total",
        "TCP connections opened to an HTTP upstream (a warmed-up sequential client reuses one and adds none).",
        gw.upstreams
            .values()
            .map(|up| (up.name.as_str(), up.connections_opened())),
    );
    out
}

/// One Prometheus counter with a sample per upstream (`None`: no sample).
fn per_upstream_counter<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    samples: impl Iterator<Item = (&'a str, Option<u64>)>,
) {
    out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n"));
    for (upstream, value) in samples {
        if let Some(value) = value {
            out.push_str(&format!("{name}{{upstream=\"{upstream}\"}} {value}\n"));
        }
    }
}

async fn metrics(State(gw): State<Gateway>, headers: HeaderMap) -> Response {
    if let Some(refused) = refuse_rebound(&gw, &headers) {
        return refused;
    }
    let mut text = gw.metrics.render(
        gw.holds.len(),
        gw.sessions.len(),
        gw.audit.is_healthy(),
        gw.audit.rows_written(),
        gw.audit.checkpoint_refusals(),
        crate::metrics::Resources::now(),
    );
    text.push_str(&policy_metrics(&gw));
    text.push_str(&upstream_metrics(&gw));
    text.push_str(&format!(
        "# HELP airlock_store_healthy 1 when this replica's last lease renewal reached the approvals store.\n# TYPE airlock_store_healthy gauge\nairlock_store_healthy {}\n",
        u8::from(gw.approvals.is_healthy())
    ));
    if let Some(age) = gw.grants.mirror_age() {
        text.push_str(&format!(
            "# HELP airlock_grants_mirror_age_seconds Seconds since this replica last read the shared grants (above [store] lease: it honours none).\n# TYPE airlock_grants_mirror_age_seconds gauge\nairlock_grants_mirror_age_seconds {:.3}\n",
            age.as_secs_f64()
        ));
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        text,
    )
        .into_response()
}

/// How long a websocket send may take before the client counts as too slow.
const WS_SEND_TIMEOUT: Duration = Duration::from_secs(5);

async fn websocket(
    State(gw): State<Gateway>,
    approver: Approver,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    // Browsers always send Origin on websockets; a foreign one is refused
    // even with a Bearer token (cookies are checked in `authenticate`).
    if headers.contains_key(header::ORIGIN) {
        login::check_same_origin(&gw, &headers)
            .map_err(|m| ApiError::new(StatusCode::FORBIDDEN, "forbidden", m))?;
    }
    tracing::debug!(approver = %approver.name, "websocket connected");
    // A cookie login's socket closes when the login ends (the page then
    // finds the login gone and shows the login view).
    let ends = match approver.via {
        Via::Cookie => login::from_cookie(&gw, &headers).map(|s| {
            let left = s.expires.saturating_sub(login::unix_now());
            tokio::time::Instant::now() + Duration::from_secs(left)
        }),
        Via::Bearer => None,
    };
    Ok(upgrade.on_upgrade(move |socket| serve_events(gw, socket, ends)))
}

/// Close code sent when the login behind a websocket has ended.
const WS_LOGIN_ENDED: u16 = 4401;

async fn serve_events(gw: Gateway, mut socket: WebSocket, ends: Option<tokio::time::Instant>) {
    let login_ended = async {
        match ends {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(login_ended);
    let (snapshot, mut rx) = gw.events.subscribe_with_snapshot(|| {
        json!({
            "pending": gw.holds.list(),
            "agents_connected": gw.agents_connected(),
            "policy_problems": gw.policy_problems(),
        })
    });
    if socket.send(WsMessage::Text(snapshot.into())).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            event = rx.recv() => match event {
                Ok(text) => {
                    let send = socket.send(WsMessage::Text(text.as_ref().into()));
                    match tokio::time::timeout(WS_SEND_TIMEOUT, send).await {
                        Ok(Ok(())) => {}
                        _ => return, // too slow or gone
                    }
                }
                Err(RecvError::Lagged(_)) => {
                    // Fell behind: drop it; it reconnects and gets a fresh snapshot.
                    let _ = socket
                        .send(WsMessage::Close(Some(axum::extract::ws::CloseFrame {
                            code: 1013,
                            reason: "too slow; reconnect for a fresh snapshot".into(),
                        })))
                        .await;
                    return;
                }
                Err(RecvError::Closed) => return,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {} // pings are answered by axum; other input is ignored
            },
            _ = &mut login_ended => {
                let _ = socket
                    .send(WsMessage::Close(Some(axum::extract::ws::CloseFrame {
                        code: WS_LOGIN_ENDED,
                        reason: "login ended; log in again".into(),
                    })))
                    .await;
                return;
            }
            _ = gw.shutdown.cancelled() => return,
        }
    }
}
