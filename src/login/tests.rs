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

fn sso_login(c: &Config, role: Role, ttl: Duration) -> (HeaderValue, LoginSession) {
    let name = "alice@example.com (oidc)";
    let groups = vec!["finance".to_owned(), "on call".to_owned()];
    let payload = sso_payload("sub-1", name, role, &groups);
    let kind = LoginKind::Sso {
        subject: "sub-1".into(),
        role,
        groups,
    };
    issue(c, &payload, ttl, name, kind)
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
fn an_sso_login_made_before_groups_were_carried_has_none() {
    let c = config(&format!("{OPS}{}", oidc("SECRET_A")));
    let name = "alice@example.com (oidc)";
    let old = format!(
        "{SSO_MARK}approver~{}~{}",
        B64.encode("sub-1"),
        B64.encode(name)
    );
    let kind = LoginKind::Sso {
        subject: "sub-1".into(),
        role: Role::Approver,
        groups: Vec::new(),
    };
    let (cookie, _) = issue(&c, &old, LIFETIME, name, kind);
    let s = session_of(&c, &Logins::default(), &sent(&cookie)).expect("valid login");
    assert!(s.groups(&c).is_empty());
    assert_eq!(s.role(&c), Role::Approver);
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
