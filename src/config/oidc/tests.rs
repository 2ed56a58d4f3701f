use std::path::Path;
use std::time::Duration;

use crate::config::{Config, Role, parse};

const UP: &str = "[[upstream]]\nname = \"a\"\ncommand = \"x\"\n";
const GOOD: &str = "[oidc]\nissuer = \"https://login.example.com/realms/acme\"\nclient_id = \"airlock\"\nclient_secret_env = \"OIDC_SECRET\"\n[oidc.roles]\n\"airlock-viewers\" = \"viewer\"\n\"airlock-approvers\" = \"approver\"\n\"airlock-admins\" = \"admin\"\n";

fn env(name: &str) -> Option<String> {
    match name {
        "OIDC_SECRET" => Some("s3cret-s3cret".into()),
        "EMPTY" => Some("  ".into()),
        _ => None,
    }
}

fn parse_ok(text: &str) -> Config {
    parse(
        &format!("{UP}{text}"),
        "a.toml",
        Path::new("/nonexistent"),
        &env,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn parse_err(text: &str) -> String {
    match parse(
        &format!("{UP}{text}"),
        "a.toml",
        Path::new("/nonexistent"),
        &env,
    ) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(e) => e.to_string(),
    }
}

/// `GOOD` with `key = value` lines set (replacing the line that starts
/// with `key =`, or added after `[oidc]`).
fn with(lines: &[(&str, &str)]) -> String {
    let mut text = GOOD.to_owned();
    for (key, value) in lines {
        let prefix = format!("{key} = ");
        let kept: Vec<&str> = text.lines().filter(|l| !l.starts_with(&prefix)).collect();
        text = kept.join("\n") + "\n";
        if !value.is_empty() {
            text = text.replacen("[oidc]\n", &format!("[oidc]\n{key} = {value}\n"), 1);
        }
    }
    text
}

#[test]
fn a_full_oidc_table_is_read_with_defaults() {
    let c = parse_ok(GOOD);
    let o = c.oidc.expect("oidc");
    assert_eq!(o.issuer, "https://login.example.com/realms/acme");
    assert_eq!(o.client_id, "airlock");
    assert_eq!(o.client_secret, "s3cret-s3cret");
    assert_eq!(o.scopes, ["openid", "email", "profile"]);
    assert_eq!(o.groups_claim, "groups");
    assert_eq!(o.session_ttl, Duration::from_secs(8 * 3600));
    assert_eq!(o.provider_name, "login.example.com");
    assert!(o.redirect_url.is_none());
    assert!(
        !format!("{o:?}").contains("s3cret"),
        "Debug must hide the secret"
    );
    assert!(parse_ok("").oidc.is_none());
}

#[test]
fn the_highest_mapped_role_wins_and_unmapped_groups_give_none() {
    let o = parse_ok(GOOD).oidc.unwrap();
    assert_eq!(o.role_for(["staff", "airlock-viewers"]), Some(Role::Viewer));
    assert_eq!(
        o.role_for(["airlock-admins", "airlock-viewers", "airlock-approvers"]),
        Some(Role::Admin)
    );
    assert_eq!(o.role_for(["staff", "contractors"]), None);
    assert_eq!(o.role_for([]), None);
}

#[test]
fn scopes_always_include_openid_once() {
    let o = parse_ok(&with(&[("scopes", "[\"email\", \"groups\", \"email\"]")]))
        .oidc
        .unwrap();
    assert_eq!(o.scopes, ["openid", "email", "groups"]);
    let e = parse_err(&with(&[("scopes", "[\"email profile\"]")]));
    assert!(
        e.contains("oidc.scopes") && e.contains("email profile"),
        "{e}"
    );
}

#[test]
fn optional_keys_are_validated() {
    let o = parse_ok(&with(&[
        (
            "redirect_url",
            "\"https://airlock.example.com/auth/oidc/callback\"",
        ),
        ("groups_claim", "\"realm_access.roles\""),
        ("session_ttl", "600"),
        ("provider_name", "\"Acme SSO\""),
    ]))
    .oidc
    .unwrap();
    assert_eq!(
        o.redirect_url.as_deref(),
        Some("https://airlock.example.com/auth/oidc/callback")
    );
    assert_eq!(o.groups_claim, "realm_access.roles");
    assert_eq!(o.session_ttl, Duration::from_secs(600));
    assert_eq!(o.provider_name, "Acme SSO");

    let e = parse_err(&with(&[("session_ttl", "0")]));
    assert!(e.contains("oidc.session_ttl") && e.contains("got 0"), "{e}");
    let e = parse_err(&with(&[("session_ttl", "-5")]));
    assert!(e.contains("oidc.session_ttl"), "{e}");
    let e = parse_err(&with(&[("groups_claim", "\"a..b\"")]));
    assert!(e.contains("oidc.groups_claim"), "{e}");
    let e = parse_err(&with(&[("redirect_url", "\"not a url\"")]));
    assert!(
        e.contains("oidc.redirect_url") && e.contains("not a valid URL"),
        "{e}"
    );
    let e = parse_err(&with(&[("provider_name", "\"\"")]));
    assert!(e.contains("oidc.provider_name"), "{e}");
}

#[test]
fn the_issuer_must_be_https_except_on_loopback() {
    let e = parse_err(&with(&[("issuer", "\"http://login.example.com\"")]));
    assert!(e.contains("oidc.issuer") && e.contains("https://"), "{e}");
    // The error points at the value's line (line 1-3 are the upstream).
    assert!(e.starts_with("a.toml:5:"), "{e}");
    let o = parse_ok(&with(&[("issuer", "\"http://127.0.0.1:9000/\"")]))
        .oidc
        .unwrap();
    assert_eq!(
        o.issuer, "http://127.0.0.1:9000",
        "a bare trailing slash is dropped"
    );
    assert!(
        parse_ok(&with(&[("issuer", "\"http://localhost:9000/oidc\"")]))
            .oidc
            .is_some()
    );
    let e = parse_err(&with(&[("issuer", "\"ftp://login.example.com\"")]));
    assert!(e.contains("oidc.issuer"), "{e}");
    let e = parse_err(&with(&[("issuer", "\"https://login.example.com/?x=1\"")]));
    assert!(e.contains("query"), "{e}");
    let e = parse_err(&with(&[("issuer", "")]));
    assert!(e.contains("oidc.issuer is required"), "{e}");
}

#[test]
fn the_client_needs_an_id_and_exactly_one_secret_source() {
    let e = parse_err(&with(&[("client_id", "")]));
    assert!(e.contains("oidc.client_id is required"), "{e}");
    let e = parse_err(&with(&[("client_id", "\" \"")]));
    assert!(e.contains("oidc.client_id must not be empty"), "{e}");
    let e = parse_err(&with(&[("client_secret_env", "\"NOPE\"")]));
    assert!(
        e.contains("oidc.client_secret_env") && e.contains("`NOPE`"),
        "{e}"
    );
    let e = parse_err(&with(&[("client_secret_env", "\"EMPTY\"")]));
    assert!(e.contains("is empty"), "{e}");
    let e = parse_err(&with(&[("client_secret_env", "")]));
    assert!(e.contains("client_secret_env or client_secret_file"), "{e}");
    let e = parse_err(&with(&[("client_secret_file", "\"secret.txt\"")]));
    assert!(e.contains("not both"), "{e}");
    let e = parse_err(&with(&[
        ("client_secret_env", ""),
        ("client_secret_file", "\"missing-secret.txt\""),
    ]));
    assert!(
        e.contains("oidc.client_secret_file") && e.contains("missing-secret.txt"),
        "{e}"
    );
}

#[test]
fn a_secret_file_is_read_relative_to_the_config() {
    let dir = std::env::temp_dir().join(format!("airlock-oidc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("secret.txt"), "from-file\n").unwrap();
    let text = format!(
        "{UP}{}",
        with(&[
            ("client_secret_env", ""),
            ("client_secret_file", "\"secret.txt\"")
        ])
    );
    let c = parse(&text, "a.toml", &dir, &env).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.oidc.unwrap().client_secret, "from-file");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn roles_must_exist_and_be_known() {
    let e = parse_err(
        "[oidc]\nissuer = \"https://x.example\"\nclient_id = \"a\"\nclient_secret_env = \"OIDC_SECRET\"\n",
    );
    assert!(e.contains("oidc.roles must map at least one group"), "{e}");
    let e = parse_err(&GOOD.replace("= \"admin\"", "= \"root\""));
    assert!(
        e.contains("oidc.roles.\"airlock-admins\"") && e.contains("`root`"),
        "{e}"
    );
    assert!(e.starts_with("a.toml:11:"), "{e}");
}

#[test]
fn unknown_oidc_keys_are_named() {
    let e = parse_err(&with(&[("client_secert_env", "\"X\"")]));
    assert!(
        e.contains("unknown key `client_secert_env`") && e.contains("client_secret_env"),
        "{e}"
    );
}
