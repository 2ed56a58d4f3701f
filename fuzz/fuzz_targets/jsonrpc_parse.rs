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
