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

// ----------------------------------------------------------------- formats and conditions

fn facts<'a>(tool: &'a str, args: &'a str) -> Facts<'a> {
    Facts::new(tool, Some(args), "agent-a", "up", "sess-1")
}

/// `action` or `action@label` of the rule that decides `tool` with `args`.
fn choose(p: &Policy, tool: &str, args: &str) -> String {
    let f = facts(tool, args);
    let own = match p.decide(tool) {
        Verdict::Hidden => return "hidden".into(),
        Verdict::Default(a) => (a, None),
        Verdict::Rule(r) => {
            let c = r.choose(&f);
            (c.action, c.branch.map(|b| b.label.clone()))
        }
    };
    let (action, label) = match (&p.all_tools, own.0) {
        (Some(guard), a) if a != Action::Deny => {
            let c = guard.choose(&f);
            if c.action == Action::Deny {
                (c.action, c.branch.map(|b| b.label.clone()))
            } else {
                own
            }
        }
        _ => own,
    };
    match label {
        Some(l) => format!("{}@{l}", action.as_str()),
        None => action.as_str().to_owned(),
    }
}

fn shipped(name: &str) -> Policy {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("policies")
        .join(name);
    load_file(&path).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn policylayer_example_reads_as_policylayer_and_decides_by_arguments() {
    let p = shipped("policylayer-example.json");
    assert_eq!(p.format, Format::PolicyLayer);
    assert_eq!(p.default, Action::Deny);
    assert_eq!(choose(&p, "secret_tool", "{}"), "hidden");
    assert_eq!(choose(&p, "echo", r#"{"text":"hi"}"#), "allow");
    assert!(p.lists("echo"), "`{{}}` allows the tool under default deny");
    assert_eq!(choose(&p, "add", r#"{"a":1,"b":2}"#), "allow");
    assert_eq!(
        choose(&p, "add", r#"{"a":1000.5,"b":2}"#),
        "deny@deny_if 1: args.a gt 1000"
    );
    assert_eq!(choose(&p, "delete_record", r#"{"id":"tmp-1"}"#), "allow");
    assert_eq!(
        choose(&p, "delete_record", r#"{"id":"prod-1"}"#),
        r#"deny@require 1: args.id regex "^tmp-""#
    );
    assert_eq!(
        choose(&p, "delete_record", "{}"),
        r#"deny@require 1: args.id regex "^tmp-""#,
        "a missing argument fails the required condition"
    );
    assert_eq!(choose(&p, "crash", "{}"), "deny@deny_if 1: always");
    assert!(
        !p.lists("crash"),
        "always denied under default deny: not listed"
    );
    assert_eq!(choose(&p, "other", "{}"), "deny");
    let Verdict::Rule(add) = p.decide("add") else {
        panic!()
    };
    assert_eq!(add.limits[0].max, 5);
    assert_eq!(add.limits[0].window, 3600);
    assert_eq!(p.all_tools.as_ref().unwrap().limits[0].counter, "all-calls");
}

#[test]
fn intercept_example_reads_as_intercept_with_tool_rules_then_star_rules() {
    let p = shipped("intercept-example.yaml");
    assert_eq!(p.format, Format::Intercept);
    assert_eq!(p.default, Action::Allow, "Intercept's default is allow");
    assert_eq!(choose(&p, "secret_tool", "{}"), "hidden");
    assert_eq!(choose(&p, "add", r#"{"a":3,"b":4}"#), "allow");
    assert_eq!(
        choose(&p, "add", r#"{"a":1001,"b":4}"#),
        "deny@rule small-sums: args.a lte 1000"
    );
    assert_eq!(
        choose(&p, "delete_record", r#"{"id":"x"}"#),
        "deny@rule never-delete: always"
    );
    assert_eq!(
        choose(&p, "echo", r#"{"text":"x; DROP TABLE users"}"#),
        r#"deny@rule no-sql-in-text: args.text contains "DROP TABLE""#,
        "`*` rules apply to tools no entry names"
    );
    assert_eq!(choose(&p, "echo", r#"{"text":"hello"}"#), "allow");
    let Verdict::Rule(add) = p.decide("add") else {
        panic!()
    };
    assert_eq!((add.limits[0].max, add.limits[0].window), (5, 3600));
}

#[test]
fn every_operator_and_a_missing_argument_fails_all_but_exists() {
    let p = policy(
        r#"{"version":"1","default":"allow","rules":{"t":{"when":[
            {"if":[{"path":"args.missing","op":"exists","value":false},{"path":"args.n","op":"eq","value":3}],"action":"deny","reason":"1"},
            {"if":[{"path":"args.items.1","op":"eq","value":"b"}],"action":"deny","reason":"2"},
            {"if":[{"any":[{"path":"args.s","op":"regex","value":"^x+$"},{"path":"agent","op":"in","value":["root"]}]}],"action":"deny","reason":"3"},
            {"if":[{"not":{"path":"upstream","op":"eq","value":"up"}}],"action":"deny","reason":"4"},
            {"if":[{"path":"args.tags","op":"contains","value":"red"}],"action":"require_approval"},
            {"if":[{"path":"args.n","op":"gte","value":100},{"path":"args.n","op":"lt","value":10000}],"action":"require_approval"},
            {"if":[{"path":"args.nope","op":"neq","value":1}],"action":"deny","reason":"neq on a missing argument fails"},
            {"if":[{"path":"args.nope","op":"not_in","value":[1]}],"action":"deny"},
            {"if":[{"path":"session","op":"neq","value":"sess-1"}],"action":"deny"},
            {"action":"allow"}]}}}"#,
    );
    let why = |args: &str| choose(&p, "t", args);
    assert!(
        why(r#"{"n":3.0}"#).starts_with("deny@when 1:"),
        "{}",
        why(r#"{"n":3.0}"#)
    );
    assert!(why(r#"{"n":4,"items":["a","b"]}"#).starts_with("deny@when 2:"));
    assert!(why(r#"{"s":"xxx"}"#).starts_with("deny@when 3:"));
    assert!(why(r#"{"s":"xyx"}"#).starts_with("allow@when 10"));
    assert!(why(r#"{"tags":["blue","red"]}"#).starts_with("require_approval@when 5:"));
    assert_eq!(
        why(r#"{"n":100}"#),
        "require_approval@when 6: args.n gte 100 and args.n lt 10000"
    );
    assert!(why(r#"{"n":10000}"#).starts_with("allow@when 10"));
    assert!(
        why("not json").starts_with("allow@when 10"),
        "unreadable arguments are missing"
    );
    let root = Facts::new("t", Some("{}"), "root", "up", "sess-1");
    let Verdict::Rule(r) = p.decide("t") else {
        panic!()
    };
    assert_eq!(r.choose(&root).reason, Some("3"), "facts: agent");
    let elsewhere = Facts::new("t", Some("{}"), "a", "other", "sess-1");
    assert_eq!(r.choose(&elsewhere).reason, Some("4"), "facts: upstream");
}

#[test]
fn airlock_when_branches_choose_the_action_first_match_wins() {
    let p = policy(
        r#"{"version":"1","default":"deny","rules":{"create_refund":{"reason":"refunds","when":[
            {"if":[{"path":"args.amount","op":"gt","value":10000}],"action":"deny","reason":"too large"},
            {"if":[{"path":"args.amount","op":"gte","value":100}],"action":"require_approval"},
            {"action":"allow"}],
            "approval":{"timeout":60}}}}"#,
    );
    assert_eq!(
        choose(&p, "create_refund", r#"{"amount":5}"#),
        "allow@when 3: always"
    );
    assert_eq!(
        choose(&p, "create_refund", r#"{"amount":100}"#),
        "require_approval@when 2: args.amount gte 100"
    );
    assert_eq!(
        choose(&p, "create_refund", r#"{"amount":20000}"#),
        "deny@when 1: args.amount gt 10000"
    );
    assert!(p.lists("create_refund"));
    assert!(!p.always_held("create_refund", None));
    let Verdict::Rule(r) = p.decide("create_refund") else {
        panic!()
    };
    assert_eq!(r.branches[0].reason.as_deref(), Some("too large"));
    assert_eq!(
        r.choose(&facts("create_refund", r#"{"amount":100}"#))
            .reason,
        Some("refunds")
    );
    assert_eq!(r.approval.timeout, Duration::from_secs(60));
}

#[test]
fn when_without_a_final_branch_falls_back_to_the_default() {
    let p = policy(
        r#"{"version":"1","default":"require_approval","rules":{"t":{"when":[
            {"if":[{"path":"args.x","op":"eq","value":1}],"action":"allow"}]}}}"#,
    );
    assert_eq!(choose(&p, "t", r#"{"x":2}"#), "require_approval");
}

#[test]
fn condition_errors_name_the_branch_and_the_problem() {
    let bad_op = error(
        "{\"version\":\"1\",\"rules\":{\"t\":{\"when\":[\n {\"action\":\"allow\"},\n {\"if\":[{\"path\":\"args.a\",\"op\":\"gtt\",\"value\":1}],\"action\":\"deny\"}]}}}",
    );
    assert!(bad_op.starts_with("p.json:3:"), "{bad_op}");
    assert!(
        bad_op.contains("rules.t.when[1].if: conditions[0]: unknown op `gtt`"),
        "{bad_op}"
    );
    assert!(bad_op.contains("did you mean `gt`?"), "{bad_op}");
    let bad_regex = error(
        r#"{"version":"1","rules":{"t":{"when":[{"if":[{"path":"args.a","op":"regex","value":"("}],"action":"deny"}]}}}"#,
    );
    assert!(bad_regex.contains("bad regex `(`"), "{bad_regex}");
    let bad_path = error(
        r#"{"version":"1","rules":{"t":{"when":[{"if":[{"path":"arguments.a","op":"exists"}],"action":"deny"}]}}}"#,
    );
    assert!(
        bad_path.contains("unknown path `arguments.a`"),
        "{bad_path}"
    );
    let no_action = error(r#"{"version":"1","rules":{"t":{"reason":"x"}}}"#);
    assert!(
        no_action.contains("missing key `action` in rules.t"),
        "{no_action}"
    );
    let in_needs_list = error(
        r#"{"version":"1","rules":{"t":{"when":[{"if":[{"path":"agent","op":"in","value":"a"}],"action":"deny"}]}}}"#,
    );
    assert!(in_needs_list.contains("needs a list"), "{in_needs_list}");
}

#[test]
fn policylayer_errors_have_line_and_column() {
    let e = error("{\n \"version\": \"1\",\n \"tools\": {\n  \"add\": {\"deny_iff\": []}\n }\n}");
    assert!(e.starts_with("p.json:4:"), "{e}");
    assert!(
        e.contains("unknown key `deny_iff` in tools.add, did you mean `deny_if`?"),
        "{e}"
    );
    let window = error(
        "{\"version\":\"1\",\n\"tools\":{\"add\":{\n\"limits\":[{\"window\":\"fortnight\",\"max\":1}]}}}",
    );
    assert!(window.starts_with("p.json:3:"), "{window}");
    assert!(window.contains("unknown window `fortnight`"), "{window}");
}

#[test]
fn intercept_errors_have_line_and_column() {
    let yaml = |text: &str| match parse_str(text, "policy.yaml") {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    };
    let e = yaml("version: 1\ntools:\n  add:\n    rules:\n      - name: x\n        acton: deny\n");
    assert!(e.starts_with("policy.yaml:6:"), "{e}");
    assert!(e.contains("acton"), "{e}");
    let op = yaml(
        "version: 1\ntools:\n  add:\n    rules:\n      - name: x\n        conditions:\n          - {path: args.a, op: bigger, value: 1}\n",
    );
    assert!(op.starts_with("policy.yaml:5:"), "{op}");
    assert!(op.contains("unknown op `bigger`"), "{op}");
    let rate = yaml("version: 1\ntools:\n  add:\n    rules:\n      - rate_limit: 5/fortnight\n");
    assert!(rate.contains("rate_limit `5/fortnight`"), "{rate}");
    let syntax = yaml("version: 1\ntools: [\n");
    assert!(syntax.starts_with("policy.yaml:"), "{syntax}");
}

#[test]
fn lint_warns_about_branches_after_an_unconditional_one_with_lines() {
    let p = parse_str(
        "{\"version\":\"1\",\"rules\":{\"r\":{\"when\":[\n{\"if\":[{\"path\":\"args.a\",\"op\":\"gt\",\"value\":1}],\"action\":\"deny\"},\n{\"action\":\"allow\"},\n{\"if\":[{\"path\":\"args.a\",\"op\":\"gt\",\"value\":1}],\"action\":\"require_approval\"}]}}}",
        "p.json",
    )
    .unwrap();
    let warnings = lint(&p).join("\n");
    assert!(
        warnings.contains("rule `r`: branch `when 3: args.a gt 1` (line 4) is never reached: `when 2: always` (line 3) has no condition and always matches"),
        "{warnings}"
    );
}

#[test]
fn approval_via_defaults_to_approvers_and_reads_both_orders() {
    let via = |v: &str| {
        let p = policy(&format!(
            r#"{{"version":"1","rules":{{"d":{{"action":"require_approval","approval":{{"via":{v}}}}}}}}}"#
        ));
        p.approval_for("d").0.via
    };
    let p = policy(r#"{"version":"1","rules":{"d":{"action":"require_approval"}}}"#);
    assert_eq!(p.approval_for("d").0.via, Via::default());
    assert!(!Via::default().agent_user && Via::default().approvers);
    assert!(via(r#"["agent_user"]"#).agent_user_only());
    for both in [
        r#"["approvers","agent_user"]"#,
        r#"["agent_user","approvers"]"#,
    ] {
        let v = via(both);
        assert!(
            v.agent_user && v.approvers && !v.agent_user_only(),
            "{both}"
        );
    }
}

#[test]
fn approval_via_rejects_what_cannot_work() {
    let rule = |approval: &str| {
        error(&format!(
            r#"{{"version":"1","rules":{{"d":{{"action":"require_approval","approval":{approval}}}}}}}"#
        ))
    };
    assert!(rule(r#"{"via":["agent"]}"#).contains("unknown value `agent`"));
    assert!(rule(r#"{"via":[]}"#).contains("is empty"));
    assert!(rule(r#"{"via":["agent_user","agent_user"]}"#).contains("twice"));
    assert!(rule(r#"{"via":["agent_user"],"approvers":3}"#).contains("approvers > 1"));
    assert!(
        rule(r#"{"via":["agent_user"],"escalate_after":10,"escalate_to":"oncall"}"#)
            .contains("no one to apply to")
    );
    // With approvers too, groups still limit which approvers decide.
    let p = policy(
        r#"{"version":"1","rules":{"d":{"action":"require_approval","approval":{"via":["approvers","agent_user"],"groups":["ops"]}}}}"#,
    );
    assert!(p.approval_for("d").0.via.agent_user);
}
