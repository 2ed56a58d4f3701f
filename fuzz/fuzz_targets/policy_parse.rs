//! Policy files: `parse_str`, then the linter and decisions on a few names
//! (including ones built from the input's own rule keys).
#![no_main]

use airlock::policy::{lint, parse_str};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(policy) = parse_str(text, "fuzz.json") else {
        return;
    };
    let _ = lint(&policy);
    let keys: Vec<String> = policy
        .rules()
        .iter()
        .map(|r| r.key.replace('*', "x"))
        .collect();
    for name in ["echo", "", "a*b", "delete_everything", "\u{0}"]
        .iter()
        .copied()
        .chain(keys.iter().map(String::as_str))
    {
        let verdict = policy.decide(name);
        let _ = (verdict.action(), verdict.rule_name());
        let _ = policy.lists(name);
        // Conditions read these: a number, a nested path, a string for regex/contains.
        let facts = airlock::policy::Facts::new(
            name,
            Some(r#"{"amount":150,"path":"/tmp/x","items":[{"id":"a"}]}"#),
            "fuzz-agent",
            "fuzz-upstream",
            "fuzz-session",
        );
        let _ = airlock::gate::decide_call(&policy, &facts);
    }
});
