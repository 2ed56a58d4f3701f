//! Decision links: `{public_url}/approve/{token}`.
//!
//! A token is `base64url(claims) "." base64url(HMAC-SHA256(key, claims))`;
//! the claims bind one pending id, one action set and an expiry (the hold's).
//! Single use comes from the hold itself: exactly one decision wins, and the
//! confirm page answers every later use with who decided. The key comes from
//! `slack.link_key_env`, or is generated once and kept in the audit store's
//! meta table, so links survive restarts; replicas sharing a store (`[store]
//! url`) share it, so a link works on every replica, once.
//!
//! The confirm page carries a CSRF token, `issued "." HMAC(key, token,
//! issued, login csrf)`: only a POST with the token of a page this gateway
//! served (to this login, when links need one) decides.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use chrono::{DateTime, TimeZone, Utc};
use hmac::{Hmac, KeyInit, Mac};
use rand::RngExt;
use sha2::Sha256;

use crate::audit::{Audit, AuditError};

type HmacSha256 = Hmac<Sha256>;

/// Where a generated key is kept in the audit store.
const META_KEY: &str = "slack_link_key";
/// How long a confirm page's form stays valid.
const PAGE_LIFETIME_SECS: i64 = 3600;

/// What a link may do. The Deny button's link can never approve, so a
/// forwarded or leaked deny link is harmless.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actions {
    ApproveOrDeny,
    DenyOnly,
}

impl Actions {
    fn code(self) -> char {
        match self {
            Actions::ApproveOrDeny => 'a',
            Actions::DenyOnly => 'd',
        }
    }

    pub fn allows_approve(self) -> bool {
        self == Actions::ApproveOrDeny
    }
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq)]
pub struct Claims {
    pub pending_id: String,
    pub actions: Actions,
    pub expires: DateTime<Utc>,
}

/// The link-signing key. Never printed.
pub struct LinkKey(Vec<u8>);

impl std::fmt::Debug for LinkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkKey([secret])")
    }
}

impl LinkKey {
    pub fn new(key: Vec<u8>) -> LinkKey {
        LinkKey(key)
    }

    /// The configured key, else the one kept in the audit store (made on first use).
    pub async fn load(audit: &Audit, configured: Option<&[u8]>) -> Result<LinkKey, AuditError> {
        if let Some(key) = configured {
            return Ok(LinkKey(key.to_vec()));
        }
        // Replicas sharing a store share the key (a link works on any of
        // them); the first to start makes it, the others read it.
        let hex_key = audit
            .read(|db| {
                if let Some(existing) = db.meta(META_KEY)? {
                    return Ok(existing);
                }
                let bytes: [u8; 32] = rand::rng().random();
                db.init_meta(META_KEY, &hex::encode(bytes))
            })
            .await?;
        let key = hex::decode(&hex_key)
            .map_err(|_| AuditError::Unavailable(format!("meta `{META_KEY}` is not hex")))?;
        Ok(LinkKey(key))
    }

    fn mac(&self, domain: &[u8], parts: &[&[u8]]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(domain);
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac
    }

    /// A token for one pending call.
    pub fn sign(&self, pending_id: &str, actions: Actions, expires: DateTime<Utc>) -> String {
        let claims = format!("1.{}.{}.{pending_id}", actions.code(), expires.timestamp());
        let tag = self
            .mac(b"airlock-link", &[claims.as_bytes()])
            .finalize()
            .into_bytes();
        format!("{}.{}", B64.encode(claims), B64.encode(tag))
    }

    /// The claims of a token this key signed; `None` for anything else
    /// (the tag is checked in constant time before the claims are read).
    pub fn verify(&self, token: &str) -> Option<Claims> {
        let (claims, tag) = token.split_once('.')?;
        let claims = B64.decode(claims).ok()?;
        let tag = B64.decode(tag).ok()?;
        self.mac(b"airlock-link", &[&claims])
            .verify_slice(&tag)
            .ok()?;
        let claims = String::from_utf8(claims).ok()?;
        let mut parts = claims.splitn(4, '.');
        if parts.next()? != "1" {
            return None;
        }
        let actions = match parts.next()? {
            "a" => Actions::ApproveOrDeny,
            "d" => Actions::DenyOnly,
            _ => return None,
        };
        let expires = Utc.timestamp_opt(parts.next()?.parse().ok()?, 0).single()?;
        let pending_id = parts.next()?.to_owned();
        Some(Claims {
            pending_id,
            actions,
            expires,
        })
    }

    /// The CSRF token of a confirm page served now for `token` (and the
    /// login's own CSRF token, when links need a login).
    pub fn page_csrf(&self, token: &str, login_csrf: Option<&str>, now: DateTime<Utc>) -> String {
        let issued = now.timestamp().to_string();
        let tag = self
            .csrf_mac(token, &issued, login_csrf)
            .finalize()
            .into_bytes();
        format!("{issued}.{}", B64.encode(tag))
    }

    /// Whether `sent` is the CSRF token of a page served for this token (and
    /// login) within the last hour.
    pub fn check_csrf(
        &self,
        token: &str,
        login_csrf: Option<&str>,
        sent: &str,
        now: DateTime<Utc>,
    ) -> bool {
        let Some((issued, tag)) = sent.split_once('.') else {
            return false;
        };
        let Ok(at) = issued.parse::<i64>() else {
            return false;
        };
        let age = now.timestamp() - at;
        if !(-60..=PAGE_LIFETIME_SECS).contains(&age) {
            return false;
        }
        let Ok(tag) = B64.decode(tag) else {
            return false;
        };
        self.csrf_mac(token, issued, login_csrf)
            .verify_slice(&tag)
            .is_ok()
    }

    fn csrf_mac(&self, token: &str, issued: &str, login_csrf: Option<&str>) -> HmacSha256 {
        self.mac(
            b"airlock-link-csrf",
            &[
                token.as_bytes(),
                issued.as_bytes(),
                login_csrf.unwrap_or("").as_bytes(),
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> LinkKey {
        LinkKey::new(b"0123456789abcdef0123456789abcdef".to_vec())
    }

    fn expires() -> DateTime<Utc> {
        Utc.timestamp_opt(1_900_000_000, 0).unwrap()
    }

    #[test]
    fn a_signed_token_verifies_to_its_claims() {
        let token = key().sign("0190-abc", Actions::DenyOnly, expires());
        let claims = key().verify(&token).unwrap();
        assert_eq!(claims.pending_id, "0190-abc");
        assert_eq!(claims.actions, Actions::DenyOnly);
        assert_eq!(claims.expires, expires());
        assert!(!token.contains(['/', '+', '=', '?', '#']), "{token}");
    }

    #[test]
    fn any_changed_byte_is_refused() {
        let token = key().sign("0190-abc", Actions::ApproveOrDeny, expires());
        for i in 0..token.len() {
            let mut bytes = token.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let forged = String::from_utf8(bytes).unwrap();
            if forged != token {
                assert_eq!(key().verify(&forged), None, "byte {i} of {token}");
            }
        }
    }

    #[test]
    fn another_key_or_garbage_is_refused() {
        let token = key().sign("x", Actions::ApproveOrDeny, expires());
        let other = LinkKey::new(b"another-key-another-key-another-key".to_vec());
        assert_eq!(other.verify(&token), None);
        for garbage in ["", ".", "abc", "abc.def", "a.b.c"] {
            assert_eq!(key().verify(garbage), None, "{garbage}");
        }
    }

    #[test]
    fn csrf_is_tied_to_the_token_the_login_and_the_hour() {
        let k = key();
        let now = Utc::now();
        let csrf = k.page_csrf("tok", Some("login"), now);
        assert!(k.check_csrf("tok", Some("login"), &csrf, now));
        assert!(!k.check_csrf("other", Some("login"), &csrf, now));
        assert!(!k.check_csrf("tok", Some("someone-else"), &csrf, now));
        assert!(!k.check_csrf("tok", None, &csrf, now));
        assert!(!k.check_csrf(
            "tok",
            Some("login"),
            &csrf,
            now + chrono::Duration::hours(2)
        ));
        assert!(!k.check_csrf("tok", Some("login"), "garbage", now));
    }
}
