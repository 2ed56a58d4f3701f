//! Differential: what the policy read of a message is exactly what a
//! line-framed upstream reads (issue 11, the stdio smuggling bypass).
//!
//! For any bytes the gateway accepts as a message (`Message::parse`, the same
//! call the HTTP and stdio agents make), the bytes written to a stdio peer
//! (`jsonrpc::line::to_terminated_line`, the one writer of both stdio sides:
//! the line and its `\n`) must be one
//! line for every common line reader — LF, CR, CRLF, and everything Python's
//! `str.splitlines` splits on — and that line must read back as the same
//! message: same kind, method and id, the same tool name and arguments as the
//! gate's `CallPeek`, and the same JSON value as a whole.
//!
//! Two targets run it, one per era's path to the child:
//! `line_framing_handshake` (own child per session: the agent's bytes go as
//! they are) and `line_framing_stateless` (the shared child: the id and any
//! progress token are first rewritten to the gateway's own, as
//! `StdioChild::request` does). Seeds: fuzz/corpus/line_framing_* (see
//! docs/reliability.md).

use airlock::era::{self, CallPeek};
use airlock::jsonrpc::line::{is_one_line, to_terminated_line};
use airlock::jsonrpc::{Id, Message};
use bytes::Bytes;
use serde_json::Value;

/// Checks one input; `shared_child` takes the stateless era's shared-child path.
pub fn check(data: &[u8], shared_child: bool) {
    let Ok(accepted) = Message::parse(Bytes::copy_from_slice(data)) else {
        return;
    };
    let sent = if shared_child && accepted.is_request() {
        let ours = accepted.with_id(&Id::from_raw("\"airlock-7\""));
        ours.with_progress_token("\"airlock-p-8\"")
    } else {
        accepted.clone()
    };
    let written = to_terminated_line(sent.raw());
    let Some((b'\n', line)) = written.split_last() else {
        panic!("a written message does not end with its newline: {written:?}");
    };
    let line = Bytes::copy_from_slice(line);
    let text = std::str::from_utf8(&line).expect("UTF-8 in, UTF-8 out");
    let pieces = text
        .split(|c| {
            matches!(
                c,
                '\n' | '\r' | '\u{b}' | '\u{c}' | '\u{1c}' | '\u{1d}' | '\u{1e}' | '\u{85}'
                    | '\u{2028}' | '\u{2029}'
            )
        })
        .count();
    assert_eq!(pieces, 1, "one accepted message became {pieces} lines: {text:?}");
    assert!(is_one_line(&line));

    let read = Message::parse(line.clone()).expect("the upstream's line is a message");
    assert_eq!(read.kind(), sent.kind());
    assert_eq!(read.method(), accepted.method());
    // Ids are compared as values: `to_line` may escape U+0085/U+2028/U+2029
    // inside a string id, which is the same id to the child.
    let id_value = |m: &Message| {
        m.id()
            .map(|id| serde_json::from_str::<Value>(id.raw()).expect("an id is JSON"))
    };
    assert_eq!(id_value(&read), id_value(&sent));
    let whole = |raw: &[u8]| serde_json::from_slice::<Value>(raw).expect("valid JSON");
    assert_eq!(whole(&line), whole(sent.raw()), "the line is another JSON value");

    // What the gate read (tool name and arguments, from the one pass) is
    // what the upstream reads: serde_json's value of the line it gets, and
    // the one pass over that line again. A call the gate cannot read is
    // refused, whatever others would read in it.
    if let Ok(Some(policy_saw)) = era::call_peek(&accepted) {
        let value = whole(&line);
        let params = &value["params"];
        assert_eq!(
            params["name"].as_str(),
            Some(policy_saw.name.as_ref()),
            "tool name differs"
        );
        let args = |p: &CallPeek<'_>| p.arguments.map(|r| whole(r.get().as_bytes()));
        let theirs = params.get("arguments").filter(|a| !a.is_null()).cloned();
        assert_eq!(args(&policy_saw), theirs, "arguments differ");
        match era::call_peek(&read) {
            Ok(Some(again)) => {
                assert_eq!(again.name, policy_saw.name, "tool name differs on the line");
                assert_eq!(args(&again), args(&policy_saw), "arguments differ on the line");
            }
            other => panic!("the gate read a call, the line reads {other:?}"),
        }
    }
}
