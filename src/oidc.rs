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

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreClientAuthMethod, CoreErrorResponseType,
};
use openidconnect::{
    AccessTokenHash, AuthType, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndSessionUrl,
    EndpointMaybeSet, EndpointNotSet, EndpointSet, IssuerUrl, LogoutRequest, Nonce,
    OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, PostLogoutRedirectUrl,
    ProviderMetadataWithLogout, RedirectUrl, RequestTokenError, Scope, StandardErrorResponse,
    TokenResponse,
};
use serde_json::{Map, Value};

use crate::config::OidcConfig;
use crate::gateway::Gateway;
use crate::login;

mod claims;
mod page;

pub const LOGIN_PATH: &str = "/auth/oidc/login";
pub const CALLBACK_PATH: &str = "/auth/oidc/callback";
/// The cookie holding one sign-in's state, nonce and PKCE verifier.
const STATE_COOKIE: &str = "airlock_oidc";
/// How long a sign-in at the provider may take.
const STATE_LIFETIME: Duration = Duration::from_secs(600);
/// How long discovered metadata (endpoints, signing keys) is reused.
const METADATA_TTL: Duration = Duration::from_secs(3600);
/// Largest answer read from the provider.
const MAX_RESPONSE: usize = 1024 * 1024;

type OidcClient = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// The provider as discovered: a client for it and its optional endpoints.
struct Provider {
    client: OidcClient,
    end_session: Option<EndSessionUrl>,
    userinfo: Option<String>,
}

/// Single sign-on state shared by the gateway: the discovered provider
/// (fetched on first use, refreshed hourly or when an ID token is signed by
/// a key it does not list) and the HTTP client that talks to it.
#[derive(Default)]
pub struct Sso {
    /// A tokio mutex: discovery awaits while holding it, so concurrent
    /// logins wait for one discovery instead of starting their own.
    provider: tokio::sync::Mutex<Option<(Instant, Arc<Provider>)>>,
    http: OnceLock<reqwest::Client>,
}

/// Why a step of the sign-in failed (shown to the user on the error page).
#[derive(Debug, thiserror::Error)]
pub enum SsoError {
    #[error("cannot reach the identity provider: {0}")]
    Http(#[from] HttpError),
    #[error("the identity provider's discovery document at {issuer} cannot be used: {why}")]
    Discovery { issuer: String, why: String },
    #[error("`{0}` is not a valid URL: {1}")]
    Url(String, String),
}

/// A request to the provider that failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(transparent)]
    Reqwest(#[from] reqwest::Error),
    #[error("the answer is larger than {MAX_RESPONSE} bytes")]
    TooLarge,
    #[error("{0}")]
    Build(String),
}

impl Sso {
    fn http(&self) -> reqwest::Client {
        self.http
            .get_or_init(|| {
                // No redirects: a provider answering with one is misconfigured,
                // and following them could be steered elsewhere.
                reqwest::Client::builder()
                    .redirect(reqwest::redirect::Policy::none())
                    .timeout(Duration::from_secs(15))
                    .user_agent(concat!("airlock/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .unwrap_or_default()
            })
            .clone()
    }

    /// The discovered provider; `fresh` forces a new discovery.
    async fn provider(&self, gw: &Gateway, fresh: bool) -> Result<Arc<Provider>, SsoError> {
        let config = gw.config.oidc.as_ref().ok_or_else(|| SsoError::Discovery {
            issuer: String::new(),
            why: "[oidc] is not configured".into(),
        })?;
        let mut cached = self.provider.lock().await;
        if let Some((at, provider)) = cached.as_ref()
            && !fresh
            && at.elapsed() < METADATA_TTL
        {
            return Ok(provider.clone());
        }
        let provider = Arc::new(self.discover(config, &redirect_url(gw)).await?);
        *cached = Some((Instant::now(), provider.clone()));
        Ok(provider)
    }

    async fn discover(&self, config: &OidcConfig, redirect: &str) -> Result<Provider, SsoError> {
        let issuer = IssuerUrl::new(config.issuer.clone())
            .map_err(|e| SsoError::Url(config.issuer.clone(), e.to_string()))?;
        let http = self.http();
        let send = |request| send(http.clone(), request);
        let metadata = ProviderMetadataWithLogout::discover_async(issuer, &send)
            .await
            .map_err(|e| SsoError::Discovery {
                issuer: config.issuer.clone(),
                why: error_chain(&e),
            })?;
        let end_session = metadata.additional_metadata().end_session_endpoint.clone();
        let userinfo = metadata.userinfo_endpoint().map(|u| u.url().to_string());
        // client_secret_basic unless the provider only takes client_secret_post.
        let post_only = metadata
            .token_endpoint_auth_methods_supported()
            .is_some_and(|methods| {
                !methods.contains(&CoreClientAuthMethod::ClientSecretBasic)
                    && methods.contains(&CoreClientAuthMethod::ClientSecretPost)
            });
        let redirect = RedirectUrl::new(redirect.to_owned())
            .map_err(|e| SsoError::Url(redirect.to_owned(), e.to_string()))?;
        let mut client = CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(config.client_id.clone()),
            Some(ClientSecret::new(config.client_secret.clone())),
        )
        .set_redirect_uri(redirect);
        if post_only {
            client = client.set_auth_type(AuthType::RequestBody);
        }
        Ok(Provider {
            client,
            end_session,
            userinfo,
        })
    }
}

/// One HTTP exchange with the provider, through the gateway's reqwest.
async fn send(
    http: reqwest::Client,
    request: openidconnect::HttpRequest,
) -> Result<openidconnect::HttpResponse, HttpError> {
    let (parts, body) = request.into_parts();
    let mut response = http
        .request(parts.method, parts.uri.to_string())
        .headers(parts.headers)
        .body(body)
        .send()
        .await?;
    let mut builder = axum::http::Response::builder().status(response.status());
    for (name, value) in response.headers() {
        builder = builder.header(name, value);
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if bytes.len() + chunk.len() > MAX_RESPONSE {
            return Err(HttpError::TooLarge);
        }
        bytes.extend_from_slice(&chunk);
    }
    builder
        .body(bytes)
        .map_err(|e| HttpError::Build(e.to_string()))
}

/// An error and its sources, on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

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

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

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

type TokenError = RequestTokenError<HttpError, StandardErrorResponse<CoreErrorResponseType>>;

fn token_failure(e: &TokenError) -> Failure {
    let detail = match e {
        RequestTokenError::ServerResponse(r) => match r.error_description() {
            Some(d) => format!("{}: {d}", r.error()),
            None => r.error().to_string(),
        },
        other => error_chain(other),
    };
    tracing::warn!(error = %detail, "single sign-on: code exchange failed");
    Failure::new(
        StatusCode::BAD_GATEWAY,
        "Sign-in failed",
        "The identity provider did not accept Airlock's request for your tokens (check the [oidc] client_id and client secret).",
        Some(detail),
    )
}

/// Code → tokens → verified identity → role → login cookie.
async fn finish(
    gw: &Gateway,
    config: &OidcConfig,
    code: &str,
    started: Started,
) -> Result<Response, Failure> {
    let down = |e: SsoError| {
        Failure::new(
            StatusCode::BAD_GATEWAY,
            "Identity provider unavailable",
            "Airlock could not talk to the identity provider.",
            Some(e.to_string()),
        )
    };
    let mut provider = gw.sso.provider(gw, false).await.map_err(down)?;
    let http = gw.sso.http();
    let send_fn = |request| send(http.clone(), request);
    let token = provider
        .client
        .exchange_code(AuthorizationCode::new(code.to_owned()))
        .map_err(|e| {
            Failure::new(
                StatusCode::BAD_GATEWAY,
                "Sign-in failed",
                "The identity provider has no token endpoint.",
                Some(e.to_string()),
            )
        })?
        .set_pkce_verifier(PkceCodeVerifier::new(started.verifier))
        .request_async(&send_fn)
        .await
        .map_err(|e| token_failure(&e))?;
    let id_token = token.id_token().ok_or_else(|| {
        Failure::new(StatusCode::BAD_GATEWAY, "Sign-in failed", "The identity provider answered without an ID token (is `openid` among the client's scopes?).", None)
    })?;
    let nonce = Nonce::new(started.nonce);
    let invalid = |e: String| {
        tracing::warn!(error = %e, "single sign-on: ID token refused");
        Failure::new(
            StatusCode::UNAUTHORIZED,
            "Sign-in failed",
            "The identity provider's ID token did not pass Airlock's checks.",
            Some(e),
        )
    };
    // A signature by a key Airlock has not seen: the provider may have
    // rotated its keys since discovery; fetch them again once.
    let unknown_key = matches!(
        id_token.claims(&provider.client.id_token_verifier(), &nonce),
        Err(openidconnect::ClaimsVerificationError::SignatureVerification(_))
    );
    if unknown_key {
        provider = gw.sso.provider(gw, true).await.map_err(down)?;
    }
    let verifier = provider.client.id_token_verifier();
    let verified = id_token
        .claims(&verifier, &nonce)
        .map_err(|e| invalid(error_chain(&e)))?;
    let subject = verified.subject().to_string();
    if let Some(expected) = verified.access_token_hash() {
        let alg = id_token.signing_alg().map_err(|e| invalid(e.to_string()))?;
        let key = id_token
            .signing_key(&verifier)
            .map_err(|e| invalid(e.to_string()))?;
        let actual = AccessTokenHash::from_token(token.access_token(), alg, key)
            .map_err(|e| invalid(e.to_string()))?;
        if actual != *expected {
            return Err(invalid(
                "the access token does not match the ID token's at_hash".into(),
            ));
        }
    }

    let mut claims = id_token_payload(&id_token.to_string()).unwrap_or_default();
    let need_groups = claims::groups(&claims, &config.groups_claim).is_none();
    if (need_groups || !claims::has_name(&claims))
        && let Some(url) = &provider.userinfo
    {
        match userinfo(&http, url, token.access_token().secret()).await {
            Ok(info) if info.get("sub").and_then(Value::as_str) == Some(subject.as_str()) => {
                for (k, v) in info {
                    claims.entry(k).or_insert(v);
                }
            }
            Ok(_) => {
                return Err(invalid(
                    "the userinfo answer is about another subject".into(),
                ));
            }
            Err(e) => tracing::warn!(error = %e, "single sign-on: userinfo request failed"),
        }
    }

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
    let (cookie, _session) = login::start_sso(gw, &subject, &decider, role, config.session_ttl);
    let mut response = page::respond(StatusCode::OK, page::signed_in(&decider, role.as_str()));
    let h = response.headers_mut();
    h.append(header::SET_COOKIE, cookie);
    h.append(header::SET_COOKIE, state_cookie(gw, "", 0));
    Ok(response)
}

/// The claims of a JWS compact token whose signature was already verified.
fn id_token_payload(jwt: &str) -> Option<Map<String, Value>> {
    let payload = jwt.split('.').nth(1)?;
    serde_json::from_slice(&B64.decode(payload).ok()?).ok()
}

/// The userinfo endpoint's claims (JSON answers only).
async fn userinfo(
    http: &reqwest::Client,
    url: &str,
    access_token: &str,
) -> Result<Map<String, Value>, String> {
    let response = http
        .get(url)
        .bearer_auth(access_token)
        .header(header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()));
    }
    let bytes = response.bytes().await.map_err(|e| e.to_string())?;
    if bytes.len() > MAX_RESPONSE {
        return Err("answer too large".into());
    }
    serde_json::from_slice(&bytes).map_err(|e| format!("not a JSON object: {e}"))
}

/// Where to send the browser so the provider's session ends too (None: the
/// provider has no `end_session_endpoint`, or cannot be reached).
pub async fn end_session_url(gw: &Gateway) -> Option<String> {
    let config = gw.config.oidc.as_ref()?;
    let provider = gw.sso.provider(gw, false).await.ok()?;
    let endpoint = provider.end_session.clone()?;
    let mut request =
        LogoutRequest::from(endpoint).set_client_id(ClientId::new(config.client_id.clone()));
    if let Ok(back) = PostLogoutRedirectUrl::new(format!("{}/login", gw.config.public_url)) {
        request = request.set_post_logout_redirect_uri(back);
    }
    Some(request.http_get_url().to_string())
}
