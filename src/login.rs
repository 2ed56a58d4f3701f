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
//! embedded store is read back at start, so a restart forgets none. Kept
//! rows are deleted once their cookie has expired ([`live_logouts`]).
//!
//! Single sign-on ([`crate::oidc`]) makes the same kind of cookie: its
//! first part then carries the provider's identity and the role its groups
//! mapped to (`oidc~role~subject~name~groups~issuer`, each base64url), the
//! key also covers the `[oidc]` client secret, and it lasts `[oidc]
//! session_ttl`. The issuer and subject are the user's voter identity
//! ([`crate::quorum::sso_voter`]); a cookie made before the issuer was
//! carried is refused, and the user signs in again.

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
    /// Single sign-on: the provider (issuer) and its subject, the role the
    /// user's groups mapped to at login, and those of the user's groups that
    /// the policies name as approver groups (both hold until the login ends).
    Sso {
        issuer: String,
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

    /// The stable identity this login's votes count as: the config name of
    /// a token approver, the issuer and subject of a single sign-on user
    /// (never the display name the provider sent).
    pub fn voter(&self) -> String {
        match &self.kind {
            LoginKind::Sso {
                issuer, subject, ..
            } => crate::quorum::sso_voter(issuer, subject),
            LoginKind::Token => crate::quorum::token_voter(&self.approver),
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
/// memory, and deletes those past their cookie's expiry: once at start and,
/// with a shared store, every `[store] heartbeat`. Every replica purges;
/// deleting a row another one already deleted is harmless. Runs until
/// shutdown.
pub async fn follow_logouts(gw: Gateway) {
    let every = gw.config.store.heartbeat;
    loop {
        match gw.audit.read(|db| live_logouts(db, unix_now())).await {
            Ok(live) => {
                for (nonce, expiry) in live {
                    gw.logins.remember(&nonce, expiry);
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

/// The logouts kept in `db` whose cookie has not expired at `now` (unix
/// seconds), as (nonce, expiry); deletes the expired ones, which can no
/// longer be presented.
pub fn live_logouts(
    db: &mut dyn crate::audit::AuditBackend,
    now: u64,
) -> Result<Vec<(String, u64)>, crate::audit::AuditError> {
    let mut live = Vec::new();
    let mut expired = Vec::new();
    for (key, expiry) in db.meta_prefixed(LOGOUT_META)? {
        let (Some(nonce), Ok(expiry)) = (key.strip_prefix(LOGOUT_META), expiry.parse::<u64>())
        else {
            continue;
        };
        if expiry > now {
            live.push((nonce.to_owned(), expiry));
        } else {
            expired.push(key);
        }
    }
    if !expired.is_empty() {
        db.delete_meta(&expired)?;
        tracing::debug!("{} expired logout(s) purged from the store", expired.len());
    }
    Ok(live)
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

/// Who signed in by single sign-on: the provider's identity of the user,
/// and what Airlock makes of it.
pub struct SsoUser<'a> {
    /// The provider's issuer (`[oidc] issuer`, as the ID token's `iss`).
    pub issuer: &'a str,
    /// The provider's stable subject (`sub`).
    pub subject: &'a str,
    /// The decider people read, e.g. `alice@example.com (oidc)`.
    pub name: &'a str,
    pub role: Role,
    /// Approver groups; see [`LoginKind::Sso`].
    pub groups: Vec<String>,
}

/// Starts a single sign-on login of `user` lasting `ttl`.
pub fn start_sso(gw: &Gateway, user: SsoUser<'_>, ttl: Duration) -> (HeaderValue, LoginSession) {
    start_sso_with(&gw.config, user, ttl)
}

fn start_sso_with(
    config: &Config,
    user: SsoUser<'_>,
    ttl: Duration,
) -> (HeaderValue, LoginSession) {
    let payload = sso_payload(&user);
    let kind = LoginKind::Sso {
        issuer: user.issuer.to_owned(),
        subject: user.subject.to_owned(),
        role: user.role,
        groups: user.groups,
    };
    issue(config, &payload, ttl, user.name, kind)
}

/// The first part of a single sign-on cookie:
/// `oidc~role~subject~name~groups~issuer` (groups joined by newlines).
fn sso_payload(user: &SsoUser<'_>) -> String {
    format!(
        "{SSO_MARK}{}~{}~{}~{}~{}",
        user.role.as_str(),
        B64.encode(user.subject.as_bytes()),
        B64.encode(user.name.as_bytes()),
        B64.encode(user.groups.join("\n").as_bytes()),
        B64.encode(user.issuer.as_bytes())
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
            let oidc = config.oidc.as_ref()?;
            let mut fields = sso.split('~');
            let (role, subject, display, groups, issuer) = (
                fields.next()?,
                fields.next()?,
                fields.next()?,
                fields.next()?,
                // Absent from cookies made before votes were keyed on the
                // issuer and subject: refused (sign in again), never given
                // a guessed identity.
                fields.next()?,
            );
            let role = match role {
                "viewer" => Role::Viewer,
                "approver" => Role::Approver,
                "admin" => Role::Admin,
                _ => return None,
            };
            let issuer = decode(issuer)?;
            if fields.next().is_some() || issuer != oidc.issuer {
                return None;
            }
            let groups = decode(groups)?
                .split('\n')
                .filter(|g| !g.is_empty())
                .map(str::to_owned)
                .collect();
            (
                decode(display)?,
                LoginKind::Sso {
                    issuer,
                    subject: decode(subject)?,
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
