//! One HTTP body as the gateway frames it: `Message::parse`, then everything
//! the gateway reads from a message it accepted (envelope, params peek,
//! derived stateless-era headers, error code, id rewriting, and the
//! `tools/list` filter that runs over upstream answers).
#![no_main]

use std::sync::OnceLock;

use airlock::jsonrpc::{self, Id, Message};
use airlock::policy::{Policy, parse_str};
use airlock::{era, gate};
use libfuzzer_sys::fuzz_target;

fn policy() -> &'static Policy {
    static POLICY: OnceLock<Policy> = OnceLock::new();
    POLICY.get_or_init(|| {
        parse_str(
            r#"{"version":"1","default":"allow","hide":["debug_*"],
                "rules":{"delete_*":{"action":"deny"},"write_*":{"action":"require_approval"}}}"#,
            "fuzz.json",
        )
        .expect("valid policy")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(message) = Message::parse(bytes::Bytes::copy_from_slice(data)) else {
        return;
    };
    // The one pass accepts only JSON, and reads what serde_json reads
    // (skipped without a depth limit, as the one pass skips what it does not
    // read; compared as values where serde_json's recursion limit allows).
    serde_json::from_slice::<Box<serde_json::value::RawValue>>(data)
        .expect("the one pass accepted text serde_json refuses");
    let value = serde_json::from_slice::<serde_json::Value>(data);
    if let (Ok(Some(call)), Ok(value)) = (era::call_peek(&message), value) {
        let params = &value["params"];
        assert_eq!(params["name"].as_str(), Some(call.name.as_ref()), "name differs");
        let args = call.arguments.map(|a| {
            serde_json::from_str::<serde_json::Value>(a.get()).expect("arguments are JSON")
        });
        let theirs = params.get("arguments").filter(|a| !a.is_null()).cloned();
        assert_eq!(args, theirs, "arguments differ");
    }
    // An id rewrite splices: what it records is what a fresh parse finds.
    let moved = message.with_id(&Id::from_raw("\"airlock-1\""));
    let reread = Message::parse(moved.raw().clone()).expect("an id rewrite made invalid JSON-RPC");
    assert_eq!(
        moved.param_facts().ok(),
        reread.param_facts().ok(),
        "the id rewrite lost the recorded params"
    );
    assert_eq!(
        era::peek(&moved).meta.and_then(|m| m.progress_token.map(|t| t.get().to_owned())),
        era::peek(&reread).meta.and_then(|m| m.progress_token.map(|t| t.get().to_owned()))
    );
    let _ = (
        message.kind(),
        message.id(),
        message.method(),
        message.text(),
    );
    let peek = era::peek(&message);
    let _ = era::stateless_version(&peek);
    let _ = airlock::tasks::declared(&peek);
    drop(peek);
    let mut headers = http::HeaderMap::new();
    era::derive_headers(&message, &mut headers);
    let _ = jsonrpc::error_code(&message);
    let _ = message.with_id(&Id::from_raw("7"));
    let filtered = gate::filter_tools_list(policy(), &airlock::policy::ToolHints::default(), message);
    // Whatever the filter returns must still be a valid message.
    Message::parse(filtered.raw().clone())
        .expect("the tools/list filter produced an invalid message");
});
