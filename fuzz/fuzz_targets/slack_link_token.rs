//! Decision-link tokens and confirm-page CSRF tokens (`slack::links`):
//! arbitrary tokens never verify unless this key signed them, and every token
//! this key signs (for any pending id) verifies to the same claims.
#![no_main]

use airlock::slack::links::{Actions, LinkKey};
use chrono::{TimeZone, Utc};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let key = LinkKey::new(b"0123456789abcdef0123456789abcdef".to_vec());
    let now = Utc
        .timestamp_opt(1_800_000_000, 0)
        .single()
        .expect("valid time");
    let expires = Utc
        .timestamp_opt(1_800_000_300, 0)
        .single()
        .expect("valid time");

    if let Some(claims) = key.verify(text) {
        let again = key.sign(&claims.pending_id, claims.actions, claims.expires);
        assert_eq!(again, text, "a token verified that this key did not sign");
    }
    assert!(!key.check_csrf(text, Some("login-csrf"), text, now) || text.contains('.'));

    for actions in [Actions::ApproveOrDeny, Actions::DenyOnly] {
        let token = key.sign(text, actions, expires);
        let claims = key
            .verify(&token)
            .expect("a token this key signed must verify");
        assert_eq!(claims.pending_id, text);
        assert_eq!(claims.actions, actions);
        assert_eq!(claims.expires, expires);
        let other = LinkKey::new(b"another key, 32 bytes long......".to_vec());
        assert!(
            other.verify(&token).is_none(),
            "a token verified under another key"
        );
    }
    let csrf = key.page_csrf(text, Some("login-csrf"), now);
    assert!(key.check_csrf(text, Some("login-csrf"), &csrf, now));
    assert!(!key.check_csrf(text, Some("another-login"), &csrf, now));
});
