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
//!
//! Single sign-on ([`crate::oidc`]) makes the same kind of cookie: its
//! first part then carries the provider's identity and the role its groups
//! mapped to (`oidc~role~subject~name`, each base64url), the key also covers
//! the `[oidc]` client secret, and it lasts `[oidc] session_ttl`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderValue, header};
use base64::Engine;
use dashmap::DashMap;
use hmac::{Hmac, KeyInit, Mac};
use rand::RngExt;
use sha2::{Digest, Sha256};

use crate::config::{Config, Role};
use crate::gateway::Gateway;

pub const COOKIE: &str = "airlock_session";
pub const CSRF_HEADER: &str = "x-airlock-csrf";
/// How long a login lasts.
const LIFETIME: Duration = Duration::from_secs(12 * 3600);

type HmacSha256 = Hmac<Sha256>;

#[derive(Clone)]
pub struct LoginSession {
    /// Who decides: the `[[approver]]` name, or for single sign-on the
    /// provider's identity, e.g. `alice@example.com (oidc)`.
    pub approver: String,
    pub csrf: String,
    pub kind: LoginKind,
    /// When the login ends (unix seconds).
    pub expires: u64,
}

/// How a login was made.
#[derive(Clone, Debug, PartialEq)]
pub enum LoginKind {
    /// An `[[approver]]` token; its role is looked up in the config on every
    /// request, so a changed role takes effect at once.
    Token,
    /// Single sign-on: the provider's subject, the role the user's groups
    /// mapped to at login, and those of the user's groups that the policies
    /// name as approver groups (both hold until the login ends).
    Sso {
        subject: String,
        role: Role,
        groups: Vec<String>,
    },
}

impl LoginSession {
    /// What this login may do.
    pub fn role(&self, config: &Config) -> Role {
        match &self.kind {
            LoginKind::Sso { role, .. } => *role,
            LoginKind::Token => config.approver_role(&self.approver).unwrap_or(Role::Viewer),
        }
    }

    /// The approver groups this login decides as (`approval.groups`).
    pub fn groups(&self, config: &Config) -> Vec<String> {
        match &self.kind {
            LoginKind::Sso { groups, .. } => groups.clone(),
            LoginKind::Token => config.approver_groups(&self.approver).to_vec(),
        }
    }
}

/// First part of a single sign-on cookie (never in base64url's alphabet).
const SSO_MARK: &str = "oidc~";

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

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The signing key: changes whenever any approver token (or the `[oidc]`
/// client secret) changes.
pub(crate) fn key(gw: &Gateway) -> Vec<u8> {
    key_of(&gw.config)
}

fn key_of(config: &Config) -> Vec<u8> {
    let mut tokens: Vec<(&str, &str)> = config
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
    if let Some(oidc) = &config.oidc {
        for part in [&oidc.issuer, &oidc.client_id, &oidc.client_secret] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
    }
    h.finalize().to_vec()
}

pub(crate) fn mac(key: &[u8], parts: &[&str]) -> String {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        m.update(p.as_bytes());
        m.update(b"\n");
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(m.finalize().into_bytes())
}

pub(crate) fn secure(gw: &Gateway) -> bool {
    secure_url(&gw.config)
}

fn secure_url(config: &Config) -> bool {
    config.public_url.starts_with("https://")
}

/// Starts a login; returns the `Set-Cookie` value and the session.
pub fn start(gw: &Gateway, approver: &str) -> (HeaderValue, LoginSession) {
    let name = B64.encode(approver.as_bytes());
    issue(&gw.config, &name, LIFETIME, approver, LoginKind::Token)
}

/// Starts a single sign-on login of `name` (the decider, e.g.
/// `alice@example.com (oidc)`) lasting `ttl`, deciding as a member of
/// `groups` (approver groups; see [`LoginKind::Sso`]).
pub fn start_sso(
    gw: &Gateway,
    subject: &str,
    name: &str,
    role: Role,
    groups: Vec<String>,
    ttl: Duration,
) -> (HeaderValue, LoginSession) {
    let payload = sso_payload(subject, name, role, &groups);
    let kind = LoginKind::Sso {
        subject: subject.to_owned(),
        role,
        groups,
    };
    issue(&gw.config, &payload, ttl, name, kind)
}

/// The first part of a single sign-on cookie:
/// `oidc~role~subject~name~groups` (groups joined by newlines; a login made
/// before groups were carried has no fifth field and no groups).
fn sso_payload(subject: &str, name: &str, role: Role, groups: &[String]) -> String {
    format!(
        "{SSO_MARK}{}~{}~{}~{}",
        role.as_str(),
        B64.encode(subject.as_bytes()),
        B64.encode(name.as_bytes()),
        B64.encode(groups.join("\n").as_bytes())
    )
}

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

fn issue(
    config: &Config,
    payload: &str,
    lifetime: Duration,
    approver: &str,
    kind: LoginKind,
) -> (HeaderValue, LoginSession) {
    let nonce: [u8; 16] = rand::rng().random();
    let nonce = hex::encode(nonce);
    let expiry = (unix_now() + lifetime.as_secs()).to_string();
    let key = key_of(config);
    let signature = mac(&key, &["session", payload, &expiry, &nonce]);
    let value = format!("{payload}.{expiry}.{nonce}.{signature}");
    let cookie = format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        lifetime.as_secs(),
        if secure_url(config) { "; Secure" } else { "" }
    );
    let session = LoginSession {
        approver: approver.to_owned(),
        csrf: mac(&key, &["csrf", &value]),
        kind,
        expires: unix_now() + lifetime.as_secs(),
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
    session_of(&gw.config, &gw.logins, headers)
}

fn session_of(config: &Config, logins: &Logins, headers: &HeaderMap) -> Option<LoginSession> {
    let value = cookie_value(headers)?;
    let mut parts = value.split('.');
    let (name, expiry, nonce, signature) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let key = key_of(config);
    if !constant_eq(&mac(&key, &["session", name, expiry, nonce]), signature) {
        return None;
    }
    let expires = expiry.parse::<u64>().ok()?;
    if expires <= unix_now() || logins.0.contains_key(nonce) {
        return None;
    }
    let decode = |part: &str| String::from_utf8(B64.decode(part).ok()?).ok();
    let (approver, kind) = match name.strip_prefix(SSO_MARK) {
        Some(sso) => {
            // A single sign-on login: valid while [oidc] is configured (the
            // key covers its client secret).
            config.oidc.as_ref()?;
            let mut fields = sso.split('~');
            let (role, subject, display) = (fields.next()?, fields.next()?, fields.next()?);
            let role = match role {
                "viewer" => Role::Viewer,
                "approver" => Role::Approver,
                "admin" => Role::Admin,
                _ => return None,
            };
            let subject = decode(subject)?;
            let groups = match fields.next() {
                Some(groups) => decode(groups)?
                    .split('\n')
                    .filter(|g| !g.is_empty())
                    .map(str::to_owned)
                    .collect(),
                None => Vec::new(),
            };
            if fields.next().is_some() {
                return None;
            }
            (
                decode(display)?,
                LoginKind::Sso {
                    subject,
                    role,
                    groups,
                },
            )
        }
        None => {
            let approver = decode(name)?;
            if !config.approvers.iter().any(|a| a.name == approver) {
                return None;
            }
            (approver, LoginKind::Token)
        }
    };
    Some(LoginSession {
        approver,
        csrf: mac(&key, &["csrf", value]),
        kind,
        expires,
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

#[cfg(test)]
mod tests;
