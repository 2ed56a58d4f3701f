//! Browser login for approvers: an approver token is exchanged for an
//! HttpOnly, SameSite=Strict session cookie plus a CSRF token the page sends
//! back on every unsafe request.
//!
//! The cookie is self-contained and HMAC-signed (`approver.expiry.nonce.mac`)
//! with a key derived from the configured approver tokens, so logins survive
//! a gateway restart and end when an approver's token changes. The CSRF token
//! is an HMAC of the cookie, so it needs no server state either. Logouts are
//! remembered in memory until the cookie would have expired, and kept in the
//! audit store's meta table: replicas sharing a store (`[store] url`) pick
//! up each other's logouts within a heartbeat ([`follow_logouts`]). An
//! embedded store is read back at start, so a restart forgets none.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderValue, header};
use base64::Engine;
use dashmap::DashMap;
use hmac::{Hmac, KeyInit, Mac};
use rand::RngExt;
use sha2::{Digest, Sha256};

use crate::gateway::Gateway;

pub const COOKIE: &str = "airlock_session";
pub const CSRF_HEADER: &str = "x-airlock-csrf";
/// How long a login lasts.
const LIFETIME: Duration = Duration::from_secs(12 * 3600);

type HmacSha256 = Hmac<Sha256>;

#[derive(Clone)]
pub struct LoginSession {
    pub approver: String,
    pub csrf: String,
}

/// Logged-out cookies (nonce → expiry, unix seconds).
#[derive(Default)]
pub struct Logins(DashMap<String, u64>);

/// Where logouts are kept in the audit store's meta table: `logout:<nonce>`.
const LOGOUT_META: &str = "logout:";

impl Logins {
    /// Remembers a logged-out cookie until it would have expired.
    fn remember(&self, nonce: &str, expiry: u64) {
        let now = unix_now();
        self.0.retain(|_, exp| *exp > now);
        if expiry > now {
            self.0.insert(nonce.to_owned(), expiry);
        }
    }
}

/// Reads the logouts kept in the store (every replica's) into this one's
/// memory: once at start and, with a shared store, every `[store]
/// heartbeat`. Runs until shutdown.
pub async fn follow_logouts(gw: Gateway) {
    let every = gw.config.store.heartbeat;
    loop {
        match gw.audit.read(|db| db.meta_prefixed(LOGOUT_META)).await {
            Ok(kept) => {
                for (key, expiry) in kept {
                    if let (Some(nonce), Ok(expiry)) =
                        (key.strip_prefix(LOGOUT_META), expiry.parse::<u64>())
                    {
                        gw.logins.remember(nonce, expiry);
                    }
                }
            }
            Err(e) => tracing::warn!("logouts of other replicas not read: {e}"),
        }
        if gw.config.store.url.is_none() {
            return;
        }
        tokio::select! {
            _ = gw.shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The signing key: changes whenever any approver token changes.
fn key(gw: &Gateway) -> Vec<u8> {
    let mut tokens: Vec<(&str, &str)> = gw
        .config
        .approvers
        .iter()
        .map(|a| (a.name.as_str(), a.token.as_str()))
        .collect();
    tokens.sort();
    let mut h = Sha256::new();
    h.update(b"airlock login cookie v1");
    for (name, token) in tokens {
        h.update((name.len() as u64).to_be_bytes());
        h.update(name.as_bytes());
        h.update((token.len() as u64).to_be_bytes());
        h.update(token.as_bytes());
    }
    h.finalize().to_vec()
}

fn mac(key: &[u8], parts: &[&str]) -> String {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        m.update(p.as_bytes());
        m.update(b"\n");
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(m.finalize().into_bytes())
}

fn secure(gw: &Gateway) -> bool {
    gw.config.public_url.starts_with("https://")
}

/// Starts a login; returns the `Set-Cookie` value and the session.
pub fn start(gw: &Gateway, approver: &str) -> (HeaderValue, LoginSession) {
    let nonce: [u8; 16] = rand::rng().random();
    let nonce = hex::encode(nonce);
    let expiry = (unix_now() + LIFETIME.as_secs()).to_string();
    let name = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(approver.as_bytes());
    let key = key(gw);
    let signature = mac(&key, &["session", &name, &expiry, &nonce]);
    let value = format!("{name}.{expiry}.{nonce}.{signature}");
    let cookie = format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        LIFETIME.as_secs(),
        if secure(gw) { "; Secure" } else { "" }
    );
    let session = LoginSession {
        approver: approver.to_owned(),
        csrf: mac(&key, &["csrf", &value]),
    };
    (
        HeaderValue::from_str(&cookie).expect("cookie is ASCII"),
        session,
    )
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
        .find_map(|kv| {
            kv.trim()
                .strip_prefix(COOKIE)
                .and_then(|rest| rest.strip_prefix('='))
        })
        .filter(|v| !v.is_empty())
}

fn constant_eq(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The live login named by the request's cookie: signature valid, not
/// expired, not logged out, and the approver still configured.
pub fn from_cookie(gw: &Gateway, headers: &HeaderMap) -> Option<LoginSession> {
    let value = cookie_value(headers)?;
    let mut parts = value.split('.');
    let (name, expiry, nonce, signature) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let key = key(gw);
    if !constant_eq(&mac(&key, &["session", name, expiry, nonce]), signature) {
        return None;
    }
    if expiry.parse::<u64>().ok()? <= unix_now() || gw.logins.0.contains_key(nonce) {
        return None;
    }
    let approver = String::from_utf8(
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(name)
            .ok()?,
    )
    .ok()?;
    if !gw.config.approvers.iter().any(|a| a.name == approver) {
        return None;
    }
    Some(LoginSession {
        approver,
        csrf: mac(&key, &["csrf", value]),
    })
}

/// Logs the cookie out (until it would have expired anyway).
pub fn end(gw: &Gateway, headers: &HeaderMap) {
    let Some(value) = cookie_value(headers) else {
        return;
    };
    let mut parts = value.split('.');
    let (_, expiry, nonce) = (parts.next(), parts.next(), parts.next());
    if let (Some(expiry), Some(nonce)) = (expiry.and_then(|e| e.parse::<u64>().ok()), nonce) {
        gw.logins.remember(nonce, expiry);
        // Kept for the other replicas (and the next start); best effort.
        let key = format!("{LOGOUT_META}{nonce}");
        let audit = gw.audit.clone();
        tokio::spawn(async move {
            if let Err(e) = audit
                .read(move |db| db.set_meta(&key, &expiry.to_string()))
                .await
            {
                tracing::warn!("logout not kept in the store: {e}");
            }
        });
    }
}

pub fn csrf_matches(session: &LoginSession, sent: &str) -> bool {
    constant_eq(&session.csrf, sent)
}

/// A browser request must come from the gateway's own pages: its `Origin`
/// (when sent) must be the gateway's origin as reached (`Host`), the public
/// URL's, or one configured in `allowed_origins`.
pub fn check_same_origin(gw: &Gateway, headers: &HeaderMap) -> Result<(), String> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin
        .to_str()
        .map_err(|_| "invalid Origin header".to_owned())?;
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let own = [format!("http://{host}"), format!("https://{host}")];
    let public = gw
        .config
        .public_url
        .split('/')
        .take(3)
        .collect::<Vec<_>>()
        .join("/");
    let ok = own.iter().any(|o| o.eq_ignore_ascii_case(origin))
        || public.eq_ignore_ascii_case(origin)
        || gw
            .config
            .allowed_origins
            .iter()
            .any(|o| o.eq_ignore_ascii_case(origin));
    if ok {
        Ok(())
    } else {
        Err(format!("cross-origin request from `{origin}` refused"))
    }
}
