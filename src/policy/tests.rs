use super::*;

fn policy(text: &str) -> Policy {
    parse_str(text, "test.json").unwrap_or_else(|e| panic!("{e}"))
}

fn error(text: &str) -> String {
    match parse_str(text, "p.json") {
        Ok(_) => panic!("expected an error for {text}"),
        Err(e) => e.to_string(),
    }
}

fn rule_of(p: &Policy, tool: &str) -> String {
    match p.decide(tool) {
        Verdict::Hidden => "hidden".into(),
        Verdict::Rule(r) => format!("{}:{}", r.key, r.action.as_str()),
        Verdict::Default(a) => format!("default:{}", a.as_str()),
    }
}

#[test]
fn policylayer_recommended_odoo_policy_loads_unchanged() {
    let p = policy(r#"{"version":"1","default":"deny","hide":["odoo_web_logout"]}"#);
    assert_eq!(rule_of(&p, "odoo_web_logout"), "hidden");
    assert_eq!(rule_of(&p, "odoo_search_read"), "default:deny");
    assert!(!p.lists("odoo_search_read"));
}

#[test]
fn exact_name_beats_any_glob() {
    let p = policy(
        r#"{"version":"1","default":"allow","rules":{
            "odoo_*_delete":{"action":"require_approval"},
            "odoo_partner_delete":{"action":"deny","reason":"never"},
            "*":{"action":"allow"}}}"#,
    );
    assert_eq!(
        rule_of(&p, "odoo_partner_delete"),
        "odoo_partner_delete:deny"
    );
    assert_eq!(
        rule_of(&p, "odoo_sale_delete"),
        "odoo_*_delete:require_approval"
    );
}

#[test]
fn most_specific_glob_wins_by_literal_characters_then_wildcards_then_order() {
    let p = policy(
        r#"{"version":"1","default":"deny","rules":{
            "*":{"action":"allow"},
            "odoo_*":{"action":"allow"},
            "odoo_*_delete":{"action":"require_approval"},
            "odoo_?ale_*":{"action":"deny"},
            "a*b":{"action":"allow"},
            "a?*b":{"action":"deny"},
            "x*":{"action":"allow"},
            "*x":{"action":"deny"}}}"#,
    );
    // 11 literal characters beat 5.
    assert_eq!(
        rule_of(&p, "odoo_partner_delete"),
        "odoo_*_delete:require_approval"
    );
    // "odoo_?ale_*" has 8 literals, "odoo_*_delete" 11: the latter wins.
    assert_eq!(
        rule_of(&p, "odoo_sale_delete"),
        "odoo_*_delete:require_approval"
    );
    assert_eq!(rule_of(&p, "odoo_sale_read"), "odoo_?ale_*:deny");
    assert_eq!(rule_of(&p, "odoo_read"), "odoo_*:allow");
    // Same literals: fewer wildcards wins.
    assert_eq!(rule_of(&p, "acb"), "a*b:allow");
    // Same literals and wildcards: the one written first wins.
    assert_eq!(rule_of(&p, "xx"), "x*:allow");
    assert_eq!(rule_of(&p, "anything"), "*:allow");
}

#[test]
fn hide_wins_over_rules_and_accepts_globs() {
    let p = policy(
        r#"{"version":"1","default":"allow","hide":["secret_*"],
            "rules":{"secret_tool":{"action":"allow"}}}"#,
    );
    assert_eq!(rule_of(&p, "secret_tool"), "hidden");
    assert!(!p.lists("secret_tool"));
    assert!(p.lists("echo"));
}

#[test]
fn listing_follows_default_deny_and_keeps_approval_tools() {
    let p = policy(
        r#"{"version":"1","default":"deny","rules":{
            "read_*":{"action":"allow"},
            "delete_*":{"action":"require_approval"},
            "drop":{"action":"deny","reason":"no"}}}"#,
    );
    assert!(p.lists("read_x"));
    assert!(p.lists("delete_x"));
    assert!(!p.lists("drop"));
    assert!(!p.lists("other"));
    let allow = policy(r#"{"version":"1","default":"allow","rules":{"drop":{"action":"deny"}}}"#);
    assert!(
        allow.lists("drop"),
        "an explicit deny stays listed when default is allow"
    );
}

#[test]
fn missing_default_means_deny() {
    let p = policy(r#"{"version":"1"}"#);
    assert_eq!(p.default, Action::Deny);
}

#[test]
fn approval_defaults_to_300_seconds_and_deny() {
    let p = policy(
        r#"{"version":"1","rules":{"a":{"action":"require_approval"},
        "b":{"action":"require_approval","approval":{"timeout":5,"on_timeout":"allow"}}}}"#,
    );
    let Verdict::Rule(a) = p.decide("a") else {
        panic!()
    };
    assert_eq!(a.approval, Approval::default());
    let Verdict::Rule(b) = p.decide("b") else {
        panic!()
    };
    assert_eq!(b.approval.timeout, Duration::from_secs(5));
    assert_eq!(b.approval.on_timeout, OnTimeout::Allow);
}

#[test]
fn unknown_key_names_the_rule_line_and_suggests() {
    let e = error(
        "{\n \"version\": \"1\",\n \"rules\": {\n  \"odoo_unlink\": {\"acton\": \"deny\"}\n }\n}",
    );
    assert!(e.starts_with("p.json:4:"), "{e}");
    assert!(
        e.contains("unknown key `acton` in rules.odoo_unlink, did you mean `action`?"),
        "{e}"
    );
    let top = error(r#"{"version":"1","defualt":"deny"}"#);
    assert!(
        top.contains("unknown key `defualt` in the policy, did you mean `default`?"),
        "{top}"
    );
}

#[test]
fn bad_action_value_is_named_with_its_path() {
    let e = error(r#"{"version":"1","rules":{"x":{"action":"alow"}}}"#);
    assert!(e.contains("invalid value `alow` for rules.x.action"), "{e}");
    assert!(e.contains("did you mean `allow`?"), "{e}");
}

#[test]
fn bad_numbers_and_globs_are_errors_with_locations() {
    let zero = error(
        "{\"version\":\"1\",\n\"rules\":{\"x\":{\"action\":\"allow\",\n\"rate_limit\":{\"max\":0,\"window\":60}}}}",
    );
    assert!(zero.starts_with("p.json:3:"), "{zero}");
    assert!(
        zero.contains("rules.x.rate_limit.max must be at least 1"),
        "{zero}"
    );
    let negative = error(
        r#"{"version":"1","rules":{"x":{"action":"allow","rate_limit":{"max":-1,"window":60}}}}"#,
    );
    assert!(negative.contains("rules.x.rate_limit.max"), "{negative}");
    let window = error(
        r#"{"version":"1","rules":{"x":{"action":"allow","rate_limit":{"max":1,"window":0}}}}"#,
    );
    assert!(window.contains("window must be at least 1"), "{window}");
    let glob = error(r#"{"version":"1","rules":{"odoo_[a":{"action":"allow"}}}"#);
    assert!(glob.contains("bad glob `odoo_[a`"), "{glob}");
    let timeout = error(
        r#"{"version":"1","rules":{"x":{"action":"require_approval","approval":{"timeout":0}}}}"#,
    );
    assert!(
        timeout.contains("approval.timeout must be between 1 and"),
        "{timeout}"
    );
    let misplaced =
        error(r#"{"version":"1","rules":{"x":{"action":"allow","approval":{"timeout":5}}}}"#);
    assert!(
        misplaced.contains("only applies to action \"require_approval\""),
        "{misplaced}"
    );
    let version = error(r#"{"version":"2"}"#);
    assert!(version.contains("unsupported version `2`"), "{version}");
    let missing = error(r#"{"default":"allow"}"#);
    assert!(missing.contains("missing key `version`"), "{missing}");
    let syntax = error("{\"version\":\"1\",\n}");
    assert!(syntax.starts_with("p.json:2:"), "{syntax}");
}

#[test]
fn lint_warns_on_unreachable_and_shadowed_rules() {
    let p = policy(
        r#"{"version":"1","default":"allow","hide":["secret_*"],"rules":{
            "secret_tool":{"action":"allow"},
            "odoo_*":{"action":"allow"},
            "odoo_**":{"action":"deny"},
            "gone":{"action":"deny","rate_limit":{"max":1,"window":1}}}}"#,
    );
    let warnings = lint(&p).join("\n");
    assert!(
        warnings.contains("rule `secret_tool` can never match"),
        "{warnings}"
    );
    assert!(
        warnings.contains("glob rule `odoo_**` looks shadowed"),
        "{warnings}"
    );
    assert!(
        warnings.contains("rule `gone` has a rate_limit that never applies"),
        "{warnings}"
    );
    assert!(!warnings.contains("`odoo_*` looks"), "{warnings}");
}

#[test]
fn rate_limit_allows_max_then_refuses_with_a_retry_time_per_session() {
    let p = policy(
        r#"{"version":"1","rules":{"x":{"action":"allow","rate_limit":{"max":2,"window":60}}}}"#,
    );
    let Verdict::Rule(rule) = p.decide("x") else {
        panic!()
    };
    let limit = rule.rate_limit.as_ref().unwrap();
    assert!(limit.check("s1").is_ok());
    assert!(limit.check("s1").is_ok());
    let wait = limit.check("s1").unwrap_err();
    assert!(
        wait > Duration::from_secs(25) && wait <= Duration::from_secs(30),
        "{wait:?}"
    );
    assert!(
        limit.check("s2").is_ok(),
        "another session has its own budget"
    );
}

#[test]
fn rate_limit_budget_refills_after_the_window_share() {
    let p = policy(
        r#"{"version":"1","rules":{"x":{"action":"allow","rate_limit":{"max":2,"window":1}}}}"#,
    );
    let Verdict::Rule(rule) = p.decide("x") else {
        panic!()
    };
    let limit = rule.rate_limit.as_ref().unwrap();
    assert!(limit.check("s").is_ok() && limit.check("s").is_ok());
    assert!(limit.check("s").is_err());
    std::thread::sleep(Duration::from_millis(550));
    assert!(
        limit.check("s").is_ok(),
        "one call refills every window/max"
    );
}

#[test]
fn reload_keeps_counters_of_unchanged_limits_only() {
    let text = r#"{"version":"1","rules":{"x":{"action":"allow","rate_limit":{"max":1,"window":60}},
        "y":{"action":"allow","rate_limit":{"max":1,"window":60}}}}"#;
    let old = policy(text);
    for t in ["x", "y"] {
        let Verdict::Rule(r) = old.decide(t) else {
            panic!()
        };
        r.rate_limit.as_ref().unwrap().check("s").unwrap();
    }
    let mut new = policy(&text.replace(
        r#""y":{"action":"allow","rate_limit":{"max":1"#,
        r#""y":{"action":"allow","rate_limit":{"max":2"#,
    ));
    new.inherit_limits(&old);
    let Verdict::Rule(x) = new.decide("x") else {
        panic!()
    };
    assert!(
        x.rate_limit.as_ref().unwrap().check("s").is_err(),
        "x kept its spent budget"
    );
    let Verdict::Rule(y) = new.decide("y") else {
        panic!()
    };
    assert!(
        y.rate_limit.as_ref().unwrap().check("s").is_ok(),
        "y changed, so it starts fresh"
    );
}

#[test]
fn a_thousand_glob_rules_still_decide_correctly() {
    let mut rules = Vec::new();
    for i in 0..1000 {
        rules.push(format!(r#""tool{i}_*":{{"action":"allow"}}"#));
    }
    let p = policy(&format!(
        r#"{{"version":"1","default":"deny","rules":{{{}}}}}"#,
        rules.join(",")
    ));
    assert_eq!(rule_of(&p, "tool999_x"), "tool999_*:allow");
    assert_eq!(rule_of(&p, "nope"), "default:deny");
}
