//! Who may talk to the gateway: `Origin`/`Host` checks (DNS-rebinding
//! protection) and token lookup in constant time.

use axum::http::{HeaderMap, header};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{Config, Credential};

const LOOPBACK_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "[::1]"];

/// The host part of `scheme://host[:port][/…]`, lower-cased, without the port.
fn origin_host(origin: &str) -> Option<String> {
    let rest = origin.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    Some(strip_port(authority).to_ascii_lowercase())
}

fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority.split_inclusive(']').next().unwrap_or(authority);
    }
    authority
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(authority)
}

fn public_origin(config: &Config) -> String {
    let url = &config.public_url;
    let scheme_end = url.find("://").map(|i| i + 3).unwrap_or(0);
    match url[scheme_end..].find('/') {
        Some(i) => url[..scheme_end + i].to_owned(),
        None => url.clone(),
    }
}

/// Rejects browsers on other sites (`Origin`) and DNS-rebound names (`Host`).
pub fn check_origin_and_host(config: &Config, headers: &HeaderMap) -> Result<(), String> {
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin
            .to_str()
            .map_err(|_| "invalid Origin header".to_owned())?;
        let allowed = origin_host(origin).is_some_and(|h| LOOPBACK_HOSTS.contains(&h.as_str()))
            || origin.eq_ignore_ascii_case(&public_origin(config))
            || config
                .allowed_origins
                .iter()
                .any(|o| o.eq_ignore_ascii_case(origin));
        if !allowed {
            return Err(format!("Origin `{origin}` is not allowed"));
        }
    }
    if config.listen.ip().is_loopback()
        && let Some(host) = headers.get(header::HOST)
    {
        let host = host
            .to_str()
            .map_err(|_| "invalid Host header".to_owned())?;
        let name = strip_port(host).to_ascii_lowercase();
        let public_host = origin_host(&config.public_url);
        let allowed = LOOPBACK_HOSTS.contains(&name.as_str())
            || public_host.as_deref() == Some(name.as_str())
            || config
                .allowed_hosts
                .iter()
                .any(|h| h.eq_ignore_ascii_case(host) || h.eq_ignore_ascii_case(&name));
        if !allowed {
            return Err(format!("Host `{host}` is not allowed"));
        }
    }
    Ok(())
}

/// The token of an `Authorization: Bearer …` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Finds the credential whose token equals `token`, comparing every
/// candidate in constant time (over SHA-256 digests, so lengths do not leak).
pub fn find_credential<'a>(credentials: &'a [Credential], token: &str) -> Option<&'a Credential> {
    let presented = Sha256::digest(token.as_bytes());
    let mut found = None;
    for credential in credentials {
        let expected = Sha256::digest(credential.token.as_bytes());
        if bool::from(presented.as_slice().ct_eq(expected.as_slice())) {
            found = Some(credential);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn config() -> Config {
        crate::config::parse(
            "[[upstream]]\nname = \"a\"\ncommand = \"x\"\n",
            "t.toml",
            std::path::Path::new("."),
            &|_| None,
        )
        .unwrap()
    }

    fn with(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn loopback_origins_and_hosts_pass() {
        let c = config();
        assert!(
            check_origin_and_host(&c, &with(&[(header::ORIGIN, "http://localhost:3000")])).is_ok()
        );
        assert!(check_origin_and_host(&c, &with(&[(header::HOST, "127.0.0.1:8080")])).is_ok());
        assert!(check_origin_and_host(&c, &HeaderMap::new()).is_ok());
    }

    #[test]
    fn foreign_origins_and_rebound_hosts_are_refused() {
        let c = config();
        let e = check_origin_and_host(&c, &with(&[(header::ORIGIN, "http://evil.example")]))
            .unwrap_err();
        assert!(e.contains("evil.example"), "{e}");
        let e =
            check_origin_and_host(&c, &with(&[(header::HOST, "evil.example:8080")])).unwrap_err();
        assert!(e.contains("Host"), "{e}");
        assert!(
            check_origin_and_host(
                &c,
                &with(&[(header::ORIGIN, "http://localhost.evil.example")])
            )
            .is_err()
        );
    }

    #[test]
    fn credentials_match_exactly() {
        let creds = vec![Credential {
            name: "a".into(),
            token: "token-aaaaaaaaaaaaaaaa".into(),
            role: Default::default(),
            groups: Vec::new(),
        }];
        assert_eq!(
            find_credential(&creds, "token-aaaaaaaaaaaaaaaa").map(|c| c.name.as_str()),
            Some("a")
        );
        assert!(find_credential(&creds, "token-aaaaaaaaaaaaaaab").is_none());
        assert!(find_credential(&creds, "").is_none());
    }
}
