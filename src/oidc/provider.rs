//! The identity provider as Airlock sees it: discovery (cached), the HTTP
//! client that talks to it, and one sign-in's code exchange and ID-token
//! verification, ending in a verified [`Identity`].

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::http::{StatusCode, header};
use base64::Engine;
use openidconnect::core::{CoreClient, CoreClientAuthMethod, CoreErrorResponseType};
use openidconnect::{
    AccessTokenHash, AuthType, AuthorizationCode, ClientId, ClientSecret, EndSessionUrl,
    EndpointMaybeSet, EndpointNotSet, EndpointSet, IssuerUrl, LogoutRequest, Nonce,
    OAuth2TokenResponse, PkceCodeVerifier, PostLogoutRedirectUrl, ProviderMetadataWithLogout,
    RedirectUrl, RequestTokenError, StandardErrorResponse, TokenResponse,
};
use serde_json::{Map, Value};

use super::{Failure, claims, redirect_url};
use crate::config::OidcConfig;
use crate::gateway::Gateway;

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
pub(super) struct Provider {
    pub(super) client: OidcClient,
    pub(super) end_session: Option<EndSessionUrl>,
    pub(super) userinfo: Option<String>,
}

/// Single sign-on state shared by the gateway: the discovered provider
/// (fetched on first use, refreshed hourly or when an ID token is signed by
/// a key it does not list) and the HTTP client that talks to it.
#[derive(Default)]
pub struct Sso {
    /// A tokio mutex: discovery awaits while holding it, so concurrent
    /// logins wait for one discovery instead of starting their own.
    provider: tokio::sync::Mutex<Discovered>,
    http: OnceLock<reqwest::Client>,
}

/// What discovery has found so far.
#[derive(Default)]
struct Discovered {
    /// The last good discovery, and when.
    good: Option<(Instant, Arc<Provider>)>,
    /// The last failed discovery: when, and why. Within [`RETRY_AFTER`] of
    /// it, sign-ins get the same answer without asking the provider again.
    failed: Option<(Instant, String)>,
}

/// How long a failed discovery is not retried.
const RETRY_AFTER: Duration = Duration::from_secs(5);

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
    pub(super) fn http(&self) -> reqwest::Client {
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
    pub(super) async fn provider(
        &self,
        gw: &Gateway,
        fresh: bool,
    ) -> Result<Arc<Provider>, SsoError> {
        let config = gw.config.oidc.as_ref().ok_or_else(|| SsoError::Discovery {
            issuer: String::new(),
            why: "[oidc] is not configured".into(),
        })?;
        let mut cached = self.provider.lock().await;
        // Past its hour, a good discovery still serves while the provider
        // cannot be reached (but not when its keys are known to be stale).
        let stale = cached.good.as_ref().filter(|_| !fresh).map(|g| g.1.clone());
        if let Some((at, provider)) = &cached.good
            && !fresh
            && at.elapsed() < METADATA_TTL
        {
            return Ok(provider.clone());
        }
        if let Some((at, why)) = &cached.failed
            && at.elapsed() < RETRY_AFTER
        {
            return stale.ok_or_else(|| SsoError::Discovery {
                issuer: config.issuer.clone(),
                why: why.clone(),
            });
        }
        match self.discover(config, &redirect_url(gw)).await {
            Ok(provider) => {
                let provider = Arc::new(provider);
                cached.good = Some((Instant::now(), provider.clone()));
                cached.failed = None;
                Ok(provider)
            }
            Err(e) => {
                let why = match &e {
                    SsoError::Discovery { why, .. } => why.clone(),
                    other => other.to_string(),
                };
                cached.failed = Some((Instant::now(), why));
                match stale {
                    Some(provider) => {
                        tracing::warn!(error = %e, "single sign-on: rediscovery failed; using the last good one");
                        Ok(provider)
                    }
                    None => Err(e),
                }
            }
        }
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

/// Who signed in: the verified subject and every claim Airlock could read
/// (the ID token's, completed from userinfo).
pub(super) struct Identity {
    pub subject: String,
    pub claims: Map<String, Value>,
}

/// Why a sign-in could not be verified.
#[derive(Debug, thiserror::Error)]
pub(super) enum IdentifyError {
    #[error(transparent)]
    Provider(#[from] SsoError),
    #[error("the identity provider has no token endpoint: {0}")]
    NoTokenEndpoint(String),
    #[error("code exchange refused: {0}")]
    Exchange(String),
    #[error("the token answer has no ID token")]
    NoIdToken,
    #[error("ID token refused: {0}")]
    Invalid(String),
}

type TokenError = RequestTokenError<HttpError, StandardErrorResponse<CoreErrorResponseType>>;

impl IdentifyError {
    fn exchange(e: &TokenError) -> IdentifyError {
        IdentifyError::Exchange(match e {
            RequestTokenError::ServerResponse(r) => match r.error_description() {
                Some(d) => format!("{}: {d}", r.error()),
                None => r.error().to_string(),
            },
            other => error_chain(other),
        })
    }

    /// The page the user sees.
    pub(super) fn failure(self) -> Failure {
        tracing::warn!(error = %self, "single sign-on: sign-in failed");
        let (status, title, message) = match &self {
            IdentifyError::Provider(_) => (
                StatusCode::BAD_GATEWAY,
                "Identity provider unavailable",
                "Airlock could not talk to the identity provider.",
            ),
            IdentifyError::NoTokenEndpoint(_) => (
                StatusCode::BAD_GATEWAY,
                "Sign-in failed",
                "The identity provider publishes no token endpoint.",
            ),
            IdentifyError::Exchange(_) => (
                StatusCode::BAD_GATEWAY,
                "Sign-in failed",
                "The identity provider did not accept Airlock's request for your tokens (check the [oidc] client_id and client secret).",
            ),
            IdentifyError::NoIdToken => (
                StatusCode::BAD_GATEWAY,
                "Sign-in failed",
                "The identity provider answered without an ID token.",
            ),
            IdentifyError::Invalid(_) => (
                StatusCode::UNAUTHORIZED,
                "Sign-in failed",
                "The identity provider's ID token did not pass Airlock's checks.",
            ),
        };
        let detail = match self {
            IdentifyError::NoIdToken => None,
            IdentifyError::Exchange(d) | IdentifyError::Invalid(d) => Some(d),
            other => Some(other.to_string()),
        };
        Failure::new(status, title, message, detail)
    }
}

impl Sso {
    /// Trades `code` (with the PKCE `verifier` and the client secret) for
    /// tokens, verifies the ID token (signature, issuer, audience, expiry,
    /// `nonce`, at_hash) and reads the claims, from userinfo too when the ID
    /// token lacks the groups claim or a name.
    pub(super) async fn identify(
        &self,
        gw: &Gateway,
        config: &OidcConfig,
        code: &str,
        verifier: String,
        nonce: String,
    ) -> Result<Identity, IdentifyError> {
        let mut provider = self.provider(gw, false).await?;
        let http = self.http();
        let send_fn = |request| send(http.clone(), request);
        let token = provider
            .client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|e| IdentifyError::NoTokenEndpoint(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(verifier))
            .request_async(&send_fn)
            .await
            .map_err(|e| IdentifyError::exchange(&e))?;
        let id_token = token.id_token().ok_or(IdentifyError::NoIdToken)?;
        let nonce = Nonce::new(nonce);
        let invalid = |e: String| IdentifyError::Invalid(e);
        // A signature by a key Airlock has not seen: the provider may have
        // rotated its keys since discovery; fetch them again once.
        let unknown_key = matches!(
            id_token.claims(&provider.client.id_token_verifier(), &nonce),
            Err(openidconnect::ClaimsVerificationError::SignatureVerification(_))
        );
        if unknown_key {
            provider = self.provider(gw, true).await?;
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
        Ok(Identity { subject, claims })
    }
}

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

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
