//! Differential: what the policy read of a message is exactly what a
//! line-framed upstream reads (issue 11, the stdio smuggling bypass).
//!
//! For any bytes the gateway accepts as a message (`Message::parse`, the same
//! call the HTTP and stdio agents make), the bytes written to a stdio peer
//! (`jsonrpc::line::to_line`, the one writer of both stdio sides) must be one
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

use airlock::era::CallPeek;
use airlock::jsonrpc::line::{is_one_line, to_line};
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
    let line = to_line(sent.raw());
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

    // What the gate read (tool name and arguments) is what the upstream reads.
    let policy_saw = accepted.params_strict::<CallPeek<'_>>();
    let upstream_reads = read.params_strict::<CallPeek<'_>>();
    match (policy_saw, upstream_reads) {
        (Ok(Some(a)), Ok(Some(b))) => {
            assert_eq!(a.name, b.name, "tool name differs");
            let args = |p: &CallPeek<'_>| p.arguments.map(|r| whole(r.get().as_bytes()));
            assert_eq!(args(&a), args(&b), "arguments differ");
        }
        (Ok(None), Ok(None)) => {}
        // The gate refuses an unreadable call; the line must not become readable.
        (Err(_), Err(_)) => {}
        (a, b) => panic!(
            "the gate read {:?} but the upstream reads {:?}",
            a.map(|p| p.map(|p| p.name.into_owned())),
            b.map(|p| p.map(|p| p.name.into_owned()))
        ),
    }
}
