use std::path::Path;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, header};

use super::*;

const UP: &str = "[[upstream]]\nname = \"a\"\ncommand = \"x\"\n";
const OPS: &str = "[[approver]]\nname = \"ops\"\ntoken_env = \"OPS\"\nrole = \"viewer\"\n";

fn oidc(secret_var: &str) -> String {
    format!(
        "[oidc]\nissuer = \"https://login.example.com\"\nclient_id = \"airlock\"\nclient_secret_env = \"{secret_var}\"\n[oidc.roles]\n\"staff\" = \"approver\"\n"
    )
}

fn config(text: &str) -> Config {
    let env = |name: &str| match name {
        "OPS" => Some("ops-token-0123456789abcdef".to_owned()),
        "SECRET_A" => Some("client-secret-a".to_owned()),
        "SECRET_B" => Some("client-secret-b".to_owned()),
        _ => None,
    };
    crate::config::parse(&format!("{UP}{text}"), "t.toml", Path::new("."), &env)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The request headers a browser sends back for `set_cookie`.
fn sent(set_cookie: &HeaderValue) -> HeaderMap {
    let pair = set_cookie
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let mut h = HeaderMap::new();
    h.insert(header::COOKIE, HeaderValue::from_str(&pair).unwrap());
    h
}

const ISSUER: &str = "https://login.example.com";

fn sso_user(subject: &str, role: Role) -> SsoUser<'_> {
    SsoUser {
        issuer: ISSUER,
        subject,
        name: "alice@example.com (oidc)",
        role,
        groups: vec!["finance".to_owned(), "on call".to_owned()],
    }
}

fn sso_login(c: &Config, role: Role, ttl: Duration) -> (HeaderValue, LoginSession) {
    start_sso_with(c, sso_user("sub-1", role), ttl)
}

#[test]
fn an_sso_login_carries_its_identity_and_role() {
    let c = config(&format!("{OPS}{}", oidc("SECRET_A")));
    let (cookie, issued) = sso_login(&c, Role::Approver, Duration::from_secs(60));
    let text = cookie.to_str().unwrap();
    assert!(
        text.contains("HttpOnly")
            && text.contains("SameSite=Strict")
            && text.contains("Max-Age=60")
    );
    let s = session_of(&c, &Logins::default(), &sent(&cookie)).expect("valid login");
    assert_eq!(s.approver, "alice@example.com (oidc)");
    assert_eq!(
        s.kind,
        LoginKind::Sso {
            issuer: ISSUER.into(),
            subject: "sub-1".into(),
            role: Role::Approver,
            groups: vec!["finance".into(), "on call".into()],
        }
    );
    assert_eq!(s.role(&c), Role::Approver);
    assert_eq!(s.groups(&c), ["finance", "on call"]);
    assert_eq!(s.csrf, issued.csrf);
    assert!(s.expires > unix_now() && s.expires <= unix_now() + 60);
}

#[test]
fn an_sso_login_votes_as_its_issuer_and_subject_not_its_display_name() {
    let c = config(&format!("{OPS}{}", oidc("SECRET_A")));
    let (one, _) = sso_login(&c, Role::Approver, Duration::from_secs(60));
    let (twin, _) = start_sso_with(&c, sso_user("sub-2", Role::Approver), LIFETIME);
    let one = session_of(&c, &Logins::default(), &sent(&one)).expect("valid login");
    let twin = session_of(&c, &Logins::default(), &sent(&twin)).expect("valid login");
    assert_eq!(one.approver, twin.approver, "the same display name");
    assert_eq!(one.voter(), "oidc:https://login.example.com#sub-1");
    assert_eq!(twin.voter(), "oidc:https://login.example.com#sub-2");
    let renamed = SsoUser {
        name: "alice.new@example.com (oidc)",
        ..sso_user("sub-1", Role::Approver)
    };
    let (renamed, _) = start_sso_with(&c, renamed, LIFETIME);
    let renamed = session_of(&c, &Logins::default(), &sent(&renamed)).expect("valid login");
    assert_eq!(renamed.voter(), one.voter(), "a new name is the same voter");
    let (token, _) = issue(&c, &B64.encode("ops"), LIFETIME, "ops", LoginKind::Token);
    let token = session_of(&c, &Logins::default(), &sent(&token)).expect("valid login");
    assert_eq!(token.voter(), "token:ops");
}

#[test]
fn an_sso_login_made_before_the_issuer_was_carried_is_refused() {
    let c = config(&format!("{OPS}{}", oidc("SECRET_A")));
    let name = "alice@example.com (oidc)";
    let kind = LoginKind::Sso {
        issuer: ISSUER.into(),
        subject: "sub-1".into(),
        role: Role::Approver,
        groups: Vec::new(),
    };
    // Validly signed cookies of the two older layouts (no groups; groups
    // but no issuer): the user signs in again, nobody is guessed.
    for old in [
        format!(
            "{SSO_MARK}approver~{}~{}",
            B64.encode("sub-1"),
            B64.encode(name)
        ),
        format!(
            "{SSO_MARK}approver~{}~{}~{}",
            B64.encode("sub-1"),
            B64.encode(name),
            B64.encode("finance")
        ),
    ] {
        let (cookie, _) = issue(&c, &old, LIFETIME, name, kind.clone());
        assert!(
            session_of(&c, &Logins::default(), &sent(&cookie)).is_none(),
            "{old}"
        );
    }
}

#[test]
fn an_sso_login_of_another_issuer_is_refused() {
    let c = config(&format!("{OPS}{}", oidc("SECRET_A")));
    let other = SsoUser {
        issuer: "https://other.example.com",
        ..sso_user("sub-1", Role::Approver)
    };
    let (cookie, _) = start_sso_with(&c, other, LIFETIME);
    assert!(session_of(&c, &Logins::default(), &sent(&cookie)).is_none());
}

#[test]
fn a_token_login_still_reads_its_role_from_the_config() {
    let c = config(&format!("{OPS}{}", oidc("SECRET_A")));
    let (cookie, _) = issue(&c, &B64.encode("ops"), LIFETIME, "ops", LoginKind::Token);
    let s = session_of(&c, &Logins::default(), &sent(&cookie)).expect("valid login");
    assert_eq!(s.kind, LoginKind::Token);
    assert_eq!(s.role(&c), Role::Viewer);
}

#[test]
fn a_forged_role_breaks_the_signature() {
    let c = config(&oidc("SECRET_A"));
    let (cookie, _) = sso_login(&c, Role::Viewer, Duration::from_secs(60));
    let forged = cookie
        .to_str()
        .unwrap()
        .replacen("oidc~viewer~", "oidc~admin~", 1);
    let forged = HeaderValue::from_str(&forged).unwrap();
    assert!(session_of(&c, &Logins::default(), &sent(&forged)).is_none());
}

#[test]
fn sso_logins_end_with_the_ttl_the_client_secret_or_the_oidc_section() {
    let c = config(&format!("{OPS}{}", oidc("SECRET_A")));
    let (expired, _) = sso_login(&c, Role::Approver, Duration::ZERO);
    assert!(session_of(&c, &Logins::default(), &sent(&expired)).is_none());

    let (cookie, _) = sso_login(&c, Role::Approver, Duration::from_secs(60));
    let other_secret = config(&format!("{OPS}{}", oidc("SECRET_B")));
    assert!(session_of(&other_secret, &Logins::default(), &sent(&cookie)).is_none());
    let without_oidc = config(OPS);
    assert!(
        session_of(&without_oidc, &Logins::default(), &sent(&cookie)).is_none(),
        "an SSO login needs [oidc] (and its secret in the key)"
    );
}

#[test]
fn a_logged_out_sso_cookie_is_refused() {
    let c = config(&oidc("SECRET_A"));
    let (cookie, _) = sso_login(&c, Role::Admin, Duration::from_secs(60));
    let logins = Logins::default();
    let nonce = cookie
        .to_str()
        .unwrap()
        .split('.')
        .nth(2)
        .unwrap()
        .to_owned();
    logins.0.insert(nonce, unix_now() + 60);
    assert!(session_of(&c, &logins, &sent(&cookie)).is_none());
}

#[test]
fn expired_logouts_are_purged_from_the_store_and_live_ones_kept() {
    use crate::audit::{AuditBackend, Sqlite};
    // Deleted, with the store's -wal and -shm, when `dir` drops at the end of the test.
    let dir = tempfile::Builder::new()
        .prefix("airlock-logouts-")
        .tempdir()
        .unwrap();
    let path = dir.path().join("logouts.db");
    let mut db = Sqlite::open(&path).unwrap();
    db.set_meta("logout:old", "1000").unwrap();
    db.set_meta("logout:live", "3000").unwrap();
    db.set_meta("slack_key", "unrelated").unwrap();

    let live = live_logouts(&mut db, 2000).unwrap();

    assert_eq!(live, [("live".to_owned(), 3000)]);
    assert_eq!(db.meta("logout:old").unwrap(), None);
    assert_eq!(db.meta("logout:live").unwrap().as_deref(), Some("3000"));
    assert_eq!(db.meta("slack_key").unwrap().as_deref(), Some("unrelated"));
    assert_eq!(live_logouts(&mut db, 2000).unwrap().len(), 1, "idempotent");
}
