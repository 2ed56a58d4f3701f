//! `[oidc]`: single sign-on for approvers with an OpenID Connect provider
//! (see docs/config.md and [`crate::oidc`]). Raw keys → validated
//! [`OidcConfig`]; every error names the key and points at its line.

use std::path::{Path, PathBuf};
use std::time::Duration;

use indexmap::IndexMap;
use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Role, line_col, locate};

/// Scopes asked for when `scopes` is not set.
pub const DEFAULT_SCOPES: [&str; 3] = ["openid", "email", "profile"];
/// The claim read for group names when `groups_claim` is not set.
pub const DEFAULT_GROUPS_CLAIM: &str = "groups";
/// How long an SSO login lasts unless `session_ttl` says otherwise (8 h).
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// Longest `session_ttl` (30 days).
pub const MAX_SESSION_TTL: u64 = 30 * 24 * 3600;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOidc {
    issuer: Option<Spanned<String>>,
    client_id: Option<Spanned<String>>,
    client_secret_env: Option<Spanned<String>>,
    client_secret_file: Option<Spanned<PathBuf>>,
    redirect_url: Option<Spanned<String>>,
    scopes: Option<Spanned<Vec<String>>>,
    groups_claim: Option<Spanned<String>>,
    session_ttl: Option<Spanned<i64>>,
    provider_name: Option<Spanned<String>>,
    #[serde(default)]
    roles: IndexMap<String, Spanned<String>>,
}

/// `[oidc]`, validated. The client secret never appears in `Debug`.
#[derive(Clone)]
pub struct OidcConfig {
    /// The provider's issuer URL (discovery is `{issuer}/.well-known/openid-configuration`).
    pub issuer: String,
    pub client_id: String,
    /// From `client_secret_env` or `client_secret_file`.
    pub client_secret: String,
    /// Where the provider sends the browser back; None: `{public_url}/auth/oidc/callback`.
    pub redirect_url: Option<String>,
    /// Always includes `openid`.
    pub scopes: Vec<String>,
    /// The claim holding the user's groups; a dotted path reaches into
    /// nested objects (`realm_access.roles`).
    pub groups_claim: String,
    /// Group → role; a user gets the highest role of their groups.
    pub roles: Vec<(String, Role)>,
    /// How long a login lasts.
    pub session_ttl: Duration,
    /// The button says "Sign in with {provider_name}".
    pub provider_name: String,
}

impl OidcConfig {
    /// The highest role any of `groups` maps to (None: no group is mapped).
    pub fn role_for<'a>(&self, groups: impl IntoIterator<Item = &'a str>) -> Option<Role> {
        groups
            .into_iter()
            .filter_map(|g| self.roles.iter().find(|(name, _)| name == g).map(|r| r.1))
            .max()
    }
}

impl std::fmt::Debug for OidcConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcConfig")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("client_secret", &"[secret]")
            .field("redirect_url", &self.redirect_url)
            .field("scopes", &self.scopes)
            .field("groups_claim", &self.groups_claim)
            .field("roles", &self.roles)
            .field("session_ttl", &self.session_ttl)
            .field("provider_name", &self.provider_name)
            .finish()
    }
}

/// Whether `host` (from a URL) names this machine.
fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A URL that must be `https://` (or `http://` to a loopback host, for
/// trying things out on one machine).
fn web_url(value: &str, key: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(value)
        .map_err(|e| format!("oidc.{key}: `{value}` is not a valid URL: {e}"))?;
    match url.scheme() {
        "https" => {}
        "http" if url.host_str().is_some_and(is_loopback_host) => {}
        "http" => {
            return Err(format!(
                "oidc.{key}: `{value}` must use https:// (http:// is accepted only for localhost / 127.0.0.1)"
            ));
        }
        other => {
            return Err(format!(
                "oidc.{key}: `{value}` must start with https://, not {other}://"
            ));
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("oidc.{key}: `{value}` has no host"));
    }
    Ok(url)
}

pub(super) fn oidc(
    raw: RawOidc,
    text: &str,
    file: &str,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<OidcConfig, ConfigError> {
    let at = |offset: usize, message: String| {
        let (line, column) = line_col(text, offset);
        ConfigError::Invalid {
            file: file.to_owned(),
            line,
            column,
            message,
        }
    };
    let table = |message: String| {
        let (line, column) = locate(text, "[oidc]", 0);
        ConfigError::Invalid {
            file: file.to_owned(),
            line,
            column,
            message,
        }
    };

    let issuer = raw
        .issuer
        .ok_or_else(|| table("oidc.issuer is required (the provider's issuer URL, e.g. https://login.example.com/realms/acme)".into()))?;
    let mut issuer_url =
        web_url(issuer.get_ref().trim(), "issuer").map_err(|m| at(issuer.span().start, m))?;
    if issuer_url.query().is_some() || issuer_url.fragment().is_some() {
        return Err(at(
            issuer.span().start,
            format!(
                "oidc.issuer: `{}` must not have a query or fragment",
                issuer.get_ref()
            ),
        ));
    }
    issuer_url.set_query(None);
    // Issuer identifiers are compared as strings with the provider's own:
    // keep the configured spelling, minus a trailing slash after the host.
    let issuer_text = issuer.get_ref().trim();
    let issuer_text = if issuer_url.path() == "/" {
        issuer_text.trim_end_matches('/').to_owned()
    } else {
        issuer_text.to_owned()
    };

    let client_id = raw.client_id.ok_or_else(|| {
        table(
            "oidc.client_id is required (the client registered for Airlock at the provider)".into(),
        )
    })?;
    if client_id.get_ref().trim().is_empty() {
        return Err(at(
            client_id.span().start,
            "oidc.client_id must not be empty".into(),
        ));
    }

    let client_secret = match (raw.client_secret_env, raw.client_secret_file) {
        (Some(var), None) => match env(var.get_ref()).map(|v| v.trim().to_owned()) {
            Some(v) if !v.is_empty() => v,
            Some(_) => {
                return Err(at(
                    var.span().start,
                    format!(
                        "oidc.client_secret_env: environment variable `{}` is empty",
                        var.get_ref()
                    ),
                ));
            }
            None => {
                return Err(at(
                    var.span().start,
                    format!(
                        "oidc.client_secret_env names environment variable `{}`, which is not set",
                        var.get_ref()
                    ),
                ));
            }
        },
        (None, Some(path)) => {
            let full = base.join(path.get_ref());
            match std::fs::read_to_string(&full) {
                Ok(v) if !v.trim().is_empty() => v.trim().to_owned(),
                Ok(_) => {
                    return Err(at(
                        path.span().start,
                        format!("oidc.client_secret_file: {} is empty", full.display()),
                    ));
                }
                Err(e) => {
                    return Err(at(
                        path.span().start,
                        format!(
                            "oidc.client_secret_file: cannot read {}: {e}",
                            full.display()
                        ),
                    ));
                }
            }
        }
        (Some(var), Some(_)) => {
            return Err(at(
                var.span().start,
                "oidc: set one of client_secret_env and client_secret_file, not both".into(),
            ));
        }
        (None, None) => {
            return Err(table(
                "oidc needs client_secret_env or client_secret_file (Airlock is a confidential client; the secret also signs the login cookies)".into(),
            ));
        }
    };

    let redirect_url = match raw.redirect_url {
        None => None,
        Some(url) => {
            let parsed = web_url(url.get_ref().trim(), "redirect_url")
                .map_err(|m| at(url.span().start, m))?;
            if parsed.fragment().is_some() {
                return Err(at(
                    url.span().start,
                    format!(
                        "oidc.redirect_url: `{}` must not have a fragment",
                        url.get_ref()
                    ),
                ));
            }
            Some(parsed.to_string())
        }
    };

    let scopes = match raw.scopes {
        None => DEFAULT_SCOPES.iter().map(|s| (*s).to_owned()).collect(),
        Some(list) => {
            let mut scopes: Vec<String> = Vec::new();
            for scope in list.get_ref() {
                if scope.is_empty() || scope.chars().any(|c| c.is_whitespace() || c == '"') {
                    return Err(at(
                        list.span().start,
                        format!(
                            "oidc.scopes: `{scope}` is not a scope (one word each, e.g. [\"openid\", \"email\", \"groups\"])"
                        ),
                    ));
                }
                if !scopes.contains(scope) {
                    scopes.push(scope.clone());
                }
            }
            if !scopes.iter().any(|s| s == "openid") {
                scopes.insert(0, "openid".to_owned());
            }
            scopes
        }
    };

    let groups_claim = match raw.groups_claim {
        None => DEFAULT_GROUPS_CLAIM.to_owned(),
        Some(c) if c.get_ref().trim().is_empty() || c.get_ref().split('.').any(str::is_empty) => {
            return Err(at(
                c.span().start,
                format!(
                    "oidc.groups_claim: `{}` is not a claim name (e.g. \"groups\", or \"realm_access.roles\" for a nested one)",
                    c.get_ref()
                ),
            ));
        }
        Some(c) => c.get_ref().trim().to_owned(),
    };

    let session_ttl = match raw.session_ttl {
        None => DEFAULT_SESSION_TTL,
        Some(ttl) => match u64::try_from(*ttl.get_ref()) {
            Ok(s) if (1..=MAX_SESSION_TTL).contains(&s) => Duration::from_secs(s),
            _ => {
                return Err(at(
                    ttl.span().start,
                    format!(
                        "oidc.session_ttl must be between 1 and {MAX_SESSION_TTL} seconds (30 days), got {}",
                        ttl.get_ref()
                    ),
                ));
            }
        },
    };

    let provider_name = match raw.provider_name {
        None => issuer_url.host_str().unwrap_or("single sign-on").to_owned(),
        Some(n) if n.get_ref().trim().is_empty() || n.get_ref().chars().count() > 60 => {
            return Err(at(
                n.span().start,
                "oidc.provider_name must be 1 to 60 characters".into(),
            ));
        }
        Some(n) => n.get_ref().trim().to_owned(),
    };

    if raw.roles.is_empty() {
        return Err(table(
            "oidc.roles must map at least one group to a role, e.g. [oidc.roles] \"airlock-approvers\" = \"approver\" (users in no mapped group cannot log in)".into(),
        ));
    }
    let mut roles = Vec::new();
    for (group, role) in raw.roles {
        let parsed = match role.get_ref().as_str() {
            "viewer" => Role::Viewer,
            "approver" => Role::Approver,
            "admin" => Role::Admin,
            other => {
                return Err(at(
                    role.span().start,
                    format!(
                        "oidc.roles.\"{group}\": role `{other}` is not one of viewer, approver, admin"
                    ),
                ));
            }
        };
        if group.is_empty() {
            return Err(at(
                role.span().start,
                "oidc.roles: a group name must not be empty".into(),
            ));
        }
        roles.push((group, parsed));
    }

    Ok(OidcConfig {
        issuer: issuer_text,
        client_id: client_id.get_ref().trim().to_owned(),
        client_secret,
        redirect_url,
        scopes,
        groups_claim,
        roles,
        session_ttl,
        provider_name,
    })
}

#[cfg(test)]
mod tests;
