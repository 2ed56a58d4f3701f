//! Single sign-on for approvers with OpenID Connect (`[oidc]`): the
//! authorization-code flow with PKCE, through the `openidconnect` crate.
//!
//! - `GET /auth/oidc/login` discovers the provider (cached for an hour),
//!   makes a state, a nonce and a PKCE verifier, keeps them in a short-lived
//!   signed cookie (`SameSite=Lax`, so it comes back with the provider's
//!   redirect; no server state, so any replica can finish the login), and
//!   sends the browser to the provider.
//! - `GET /auth/oidc/callback` checks the state against that cookie, trades
//!   the code (with the verifier and the client secret) for tokens, verifies
//!   the ID token (signature against the provider's keys, issuer, audience,
//!   expiry, nonce, and the access-token hash when present), reads the
//!   groups claim (from the ID token, else from the userinfo endpoint), and
//!   maps the groups to the highest role in `[oidc.roles]`. No mapped group:
//!   a page says so and no login is made. Otherwise the browser gets the same
//!   kind of login cookie token approvers get ([`crate::login::start_sso`]),
//!   naming the user as `email (oidc)`.
//! - Logout (`POST /api/logout`) ends the cookie and, when the provider has
//!   an `end_session_endpoint`, returns its URL for the page to follow.
//!
//! `provider` talks to the provider (discovery, code exchange, ID-token
//! checks, userinfo); `claims` reads groups and names; `page` renders.

use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use openidconnect::core::CoreAuthenticationFlow;
use openidconnect::{CsrfToken, Nonce, PkceCodeChallenge, Scope};

use crate::config::OidcConfig;
use crate::gateway::Gateway;
use crate::login;

mod claims;
mod page;
mod provider;

use provider::Identity;
pub use provider::{HttpError, Sso, SsoError, end_session_url};

pub const LOGIN_PATH: &str = "/auth/oidc/login";
pub const CALLBACK_PATH: &str = "/auth/oidc/callback";
/// The cookie holding one sign-in's state, nonce and PKCE verifier.
const STATE_COOKIE: &str = "airlock_oidc";
/// How long a sign-in at the provider may take.
const STATE_LIFETIME: Duration = Duration::from_secs(600);

/// Discovers the provider once at start-up, so a wrong issuer or an
/// unreachable provider shows in the log before anyone tries to sign in
/// (sign-ins discover again if this fails).
pub async fn check_provider(gw: Gateway) {
    match gw.sso.provider(&gw, false).await {
        Ok(p) => tracing::info!(
            end_session = p.end_session.is_some(),
            userinfo = p.userinfo.is_some(),
            "single sign-on: identity provider discovered"
        ),
        Err(e) => tracing::warn!(error = %e, "single sign-on: identity provider not usable yet"),
    }
}

/// Where the provider sends the browser back.
pub fn redirect_url(gw: &Gateway) -> String {
    gw.config
        .oidc
        .as_ref()
        .and_then(|o| o.redirect_url.clone())
        .unwrap_or_else(|| format!("{}{CALLBACK_PATH}", gw.config.public_url))
}

pub fn routes() -> Router<Gateway> {
    Router::new()
        .route(LOGIN_PATH, get(start))
        .route(CALLBACK_PATH, get(callback))
}

fn not_configured() -> Response {
    page::respond(
        StatusCode::NOT_FOUND,
        page::problem(
            "Single sign-on is off",
            "This gateway has no [oidc] section, so there is no identity provider to sign in with. Use an approver token.",
            None,
        ),
    )
}

fn provider_down(e: &SsoError) -> Response {
    tracing::warn!(error = %e, "single sign-on: identity provider unavailable");
    page::respond(
        StatusCode::BAD_GATEWAY,
        page::problem(
            "Identity provider unavailable",
            "Airlock could not talk to the identity provider. Try again in a moment; if it keeps failing, an admin can check the [oidc] issuer and the gateway's log.",
            Some(&e.to_string()),
        ),
    )
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn state_cookie(gw: &Gateway, value: &str, max_age: u64) -> HeaderValue {
    let cookie = format!(
        "{STATE_COOKIE}={value}; Path=/auth/oidc; HttpOnly; SameSite=Lax; Max-Age={max_age}{}",
        if login::secure(gw) { "; Secure" } else { "" }
    );
    HeaderValue::from_str(&cookie).unwrap_or(HeaderValue::from_static(""))
}

/// `GET /auth/oidc/login`: off to the provider.
async fn start(State(gw): State<Gateway>) -> Response {
    let Some(config) = gw.config.oidc.as_ref() else {
        return not_configured();
    };
    let provider = match gw.sso.provider(&gw, false).await {
        Ok(p) => p,
        Err(e) => return provider_down(&e),
    };
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let mut request = provider.client.authorize_url(
        CoreAuthenticationFlow::AuthorizationCode,
        CsrfToken::new_random,
        Nonce::new_random,
    );
    for scope in config.scopes.iter().filter(|s| *s != "openid") {
        request = request.add_scope(Scope::new(scope.clone()));
    }
    let (url, state, nonce) = request.set_pkce_challenge(challenge).url();
    // state.nonce.verifier.expiry.mac: random base64url values, never a dot.
    let expiry = (unix_now() + STATE_LIFETIME.as_secs()).to_string();
    let parts = [
        state.secret().as_str(),
        nonce.secret().as_str(),
        verifier.secret().as_str(),
        expiry.as_str(),
    ];
    let mac = login::mac(&login::key(&gw), &[&["oidc-state"], &parts[..]].concat());
    let value = format!("{}.{mac}", parts.join("."));
    let mut response = StatusCode::SEE_OTHER.into_response();
    let h = response.headers_mut();
    h.insert(
        header::SET_COOKIE,
        state_cookie(&gw, &value, STATE_LIFETIME.as_secs()),
    );
    if let Ok(location) = HeaderValue::from_str(url.as_str()) {
        h.insert(header::LOCATION, location);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The state, nonce and verifier of the sign-in this browser started.
struct Started {
    state: String,
    nonce: String,
    verifier: String,
}

fn started(gw: &Gateway, headers: &HeaderMap) -> Option<Started> {
    let value = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| kv.trim().strip_prefix(STATE_COOKIE)?.strip_prefix('='))?;
    let parts: Vec<&str> = value.split('.').collect();
    let [state, nonce, verifier, expiry, mac] = parts[..] else {
        return None;
    };
    let expected = login::mac(
        &login::key(gw),
        &["oidc-state", state, nonce, verifier, expiry],
    );
    if !constant_eq(&expected, mac) || expiry.parse::<u64>().ok()? <= unix_now() {
        return None;
    }
    Some(Started {
        state: state.to_owned(),
        nonce: nonce.to_owned(),
        verifier: verifier.to_owned(),
    })
}

fn constant_eq(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

#[derive(serde::Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// A failed sign-in: the page, and the state cookie cleared.
fn failed(
    gw: &Gateway,
    status: StatusCode,
    title: &str,
    message: &str,
    detail: Option<&str>,
) -> Response {
    let mut response = page::respond(status, page::problem(title, message, detail));
    response
        .headers_mut()
        .append(header::SET_COOKIE, state_cookie(gw, "", 0));
    response
}

/// `GET /auth/oidc/callback`: the provider sends the browser back here.
async fn callback(
    State(gw): State<Gateway>,
    headers: HeaderMap,
    query: Result<Query<CallbackQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Some(config) = gw.config.oidc.as_ref() else {
        return not_configured();
    };
    let Ok(Query(query)) = query else {
        return failed(
            &gw,
            StatusCode::BAD_REQUEST,
            "Sign-in failed",
            "The identity provider's answer could not be read.",
            None,
        );
    };
    if let Some(error) = &query.error {
        let detail = match &query.error_description {
            Some(d) => format!("{error}: {d}"),
            None => error.clone(),
        };
        tracing::info!(error = %detail, "single sign-on: the provider refused the sign-in");
        return failed(
            &gw,
            StatusCode::UNAUTHORIZED,
            "Sign-in refused",
            "The identity provider did not sign you in.",
            Some(&detail),
        );
    }
    let (Some(code), Some(state)) = (&query.code, &query.state) else {
        return failed(
            &gw,
            StatusCode::BAD_REQUEST,
            "Sign-in failed",
            "The identity provider's answer has no code or no state.",
            None,
        );
    };
    let Some(started) = started(&gw, &headers).filter(|s| constant_eq(&s.state, state)) else {
        return failed(
            &gw,
            StatusCode::BAD_REQUEST,
            "Sign-in expired or not started here",
            "This sign-in was not started in this browser, or took longer than 10 minutes. Start again from the login page.",
            None,
        );
    };
    match finish(&gw, config, code, started).await {
        Ok(response) => response,
        Err(Failure {
            status,
            title,
            message,
            detail,
        }) => failed(&gw, status, title, &message, detail.as_deref()),
    }
}

struct Failure {
    status: StatusCode,
    title: &'static str,
    message: String,
    detail: Option<String>,
}

impl Failure {
    fn new(
        status: StatusCode,
        title: &'static str,
        message: impl Into<String>,
        detail: Option<String>,
    ) -> Failure {
        Failure {
            status,
            title,
            message: message.into(),
            detail,
        }
    }
}

/// Code → verified identity → role → login cookie.
async fn finish(
    gw: &Gateway,
    config: &OidcConfig,
    code: &str,
    started: Started,
) -> Result<Response, Failure> {
    let Identity { subject, claims } = gw
        .sso
        .identify(gw, config, code, started.verifier, started.nonce)
        .await
        .map_err(|e| e.failure())?;
    let name = claims::display_name(&claims, &subject);
    let decider = format!("{name} (oidc)");
    let groups = claims::groups(&claims, &config.groups_claim).unwrap_or_default();
    let Some(role) = config.role_for(groups.iter().map(String::as_str)) else {
        tracing::warn!(%subject, user = %name, ?groups, "single sign-on: no group maps to a role");
        let listed = if groups.is_empty() {
            format!(
                "none (the `{}` claim is empty or missing)",
                config.groups_claim
            )
        } else {
            groups
                .iter()
                .take(20)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(Failure::new(
            StatusCode::FORBIDDEN,
            "No Airlock role",
            format!(
                "You signed in as {name}, but none of your groups is mapped to a role in Airlock's [oidc.roles], so you cannot use the dashboard. Ask an Airlock admin to map one of your groups."
            ),
            Some(format!("your groups: {listed}")),
        ));
    };
    tracing::info!(%subject, user = %name, role = role.as_str(), "single sign-on: signed in");
    let approver_groups = approver_groups(gw, &groups);
    let user = login::SsoUser {
        issuer: &config.issuer,
        subject: &subject,
        name: &decider,
        role,
        groups: approver_groups,
    };
    let (cookie, _session) = login::start_sso(gw, user, config.session_ttl);
    let mut response = page::respond(StatusCode::OK, page::signed_in(&decider, role.as_str()));
    let h = response.headers_mut();
    h.append(header::SET_COOKIE, cookie);
    h.append(header::SET_COOKIE, state_cookie(gw, "", 0));
    Ok(response)
}

/// The user's groups that some policy names as an approver group
/// (`approval.groups`, `escalate_to`): what the login cookie carries, so it
/// stays small whatever the provider sends. A group a policy starts naming
/// after the login counts from the user's next sign-in.
fn approver_groups(gw: &Gateway, groups: &[String]) -> Vec<String> {
    let named: std::collections::BTreeSet<String> = gw
        .upstreams
        .values()
        .flat_map(|up| {
            up.policy()
                .approver_groups()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    groups
        .iter()
        .filter(|g| named.contains(*g) && !g.contains('\n'))
        .cloned()
        .collect()
}
