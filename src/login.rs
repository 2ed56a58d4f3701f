//! Browser login for approvers: an approver token is exchanged for an
//! HttpOnly, SameSite=Strict session cookie plus a CSRF token the page sends
//! back on every unsafe request.

use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, header};
use dashmap::DashMap;
use rand::RngExt;

use crate::gateway::Gateway;

pub const COOKIE: &str = "airlock_session";
pub const CSRF_HEADER: &str = "x-airlock-csrf";
/// How long a login lasts.
const LIFETIME: Duration = Duration::from_secs(12 * 3600);

#[derive(Clone)]
pub struct LoginSession {
    pub approver: String,
    pub csrf: String,
    expires: Instant,
}

/// Open browser logins by cookie value.
#[derive(Default)]
pub struct Logins(DashMap<String, LoginSession>);

fn random_token() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    hex::encode(bytes)
}

fn secure(gw: &Gateway) -> bool {
    gw.config.public_url.starts_with("https://")
}

/// Starts a login; returns the `Set-Cookie` value and the session.
pub fn start(gw: &Gateway, approver: &str) -> (HeaderValue, LoginSession) {
    let id = random_token();
    let session = LoginSession {
        approver: approver.to_owned(),
        csrf: random_token(),
        expires: Instant::now() + LIFETIME,
    };
    gw.logins.0.retain(|_, s| s.expires > Instant::now());
    gw.logins.0.insert(id.clone(), session.clone());
    let cookie = format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        LIFETIME.as_secs(),
        if secure(gw) { "; Secure" } else { "" }
    );
    (HeaderValue::from_str(&cookie).expect("cookie is ASCII"), session)
}

pub fn clear_cookie(gw: &Gateway) -> HeaderValue {
    let cookie = format!(
        "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        if secure(gw) { "; Secure" } else { "" }
    );
    HeaderValue::from_str(&cookie).expect("cookie is ASCII")
}

fn cookie_value(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| kv.trim().strip_prefix(COOKIE).and_then(|rest| rest.strip_prefix('=')))
}

/// The live login named by the request's cookie.
pub fn from_cookie(gw: &Gateway, headers: &HeaderMap) -> Option<LoginSession> {
    let id = cookie_value(headers)?;
    let session = gw.logins.0.get(id)?.clone();
    (session.expires > Instant::now()).then_some(session)
}

pub fn end(gw: &Gateway, headers: &HeaderMap) {
    if let Some(id) = cookie_value(headers) {
        gw.logins.0.remove(id);
    }
}

pub fn csrf_matches(session: &LoginSession, sent: &str) -> bool {
    use subtle::ConstantTimeEq;
    sent.len() == session.csrf.len() && bool::from(sent.as_bytes().ct_eq(session.csrf.as_bytes()))
}

/// A browser request must come from the gateway's own pages: its `Origin`
/// (when sent) must be the gateway's origin as reached (`Host`), the public
/// URL's, or one configured in `allowed_origins`.
pub fn check_same_origin(gw: &Gateway, headers: &HeaderMap) -> Result<(), String> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().map_err(|_| "invalid Origin header".to_owned())?;
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    let own = [format!("http://{host}"), format!("https://{host}")];
    let public = gw.config.public_url.split('/').take(3).collect::<Vec<_>>().join("/");
    let ok = own.iter().any(|o| o.eq_ignore_ascii_case(origin))
        || public.eq_ignore_ascii_case(origin)
        || gw.config.allowed_origins.iter().any(|o| o.eq_ignore_ascii_case(origin));
    if ok {
        Ok(())
    } else {
        Err(format!("cross-origin request from `{origin}` refused"))
    }
}
