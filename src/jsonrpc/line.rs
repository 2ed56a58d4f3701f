//! One message, one line: the framing invariant of line-delimited transports.
//!
//! A stdio peer reads one JSON-RPC message per line. The gateway reads a
//! message as one JSON value, in which a raw LF or CR between two tokens is
//! insignificant whitespace. Written unchanged, such a message is *several*
//! messages to a line reader: a `tools/call` nested as a value inside an
//! allowed request would reach the server as a request of its own that no
//! policy ever saw.
//!
//! **Invariant:** every byte Airlock writes to a line-framed peer (a stdio
//! upstream child, a stdio agent) goes through [`to_line`] first, and what
//! [`to_line`] returns contains no byte sequence that any common line reader
//! treats as the end of a line: LF, CR (Python's universal newlines, Node's
//! `readline`), and U+0085, U+2028, U+2029 (Python's `str.splitlines`). The
//! other separators `str.splitlines` knows (`\v`, `\f`, `\x1c`–`\x1e`) cannot
//! occur raw in JSON at all, and [`Message::parse`](super::Message::parse)
//! refuses a body that is not JSON.
//!
//! Why the rewrite is the same JSON value (for the valid JSON that the gateway
//! accepted): RFC 8259 §7 forbids unescaped U+0000–U+001F inside strings, so a
//! raw LF or CR byte can only be whitespace between tokens and becomes a
//! space. A non-ASCII character can only occur inside a string, where U+0085,
//! U+2028 and U+2029 mean the same as their `\u` escapes. UTF-8 lead bytes
//! (0xC2, 0xE2) never occur inside another character, so a byte match is a
//! character match. The rewrite costs one scan of the message and copies only
//! when a separator is present (never for compact JSON).
//! `fuzz/fuzz_targets/line_framing.rs` checks all of this against arbitrary
//! input.

use bytes::Bytes;

/// The message as one line: insignificant line breaks become spaces, and
/// Unicode line separators inside strings become `\u` escapes.
pub fn to_line(raw: &Bytes) -> Bytes {
    match next_separator(raw, 0) {
        None => raw.clone(),
        Some(first) => Bytes::from(rewrite(raw, first)),
    }
}

/// What a line-framed peer is sent for one message: [`to_line`] and its
/// terminating `\n`, in one buffer, so the message goes out in one write.
/// Two writes (the line, then the `\n`) wake the peer's line reader twice,
/// the first time for half a line: a second pipe read and scheduler round
/// trip per message on the peer's side, and a second blocking-pool hand-off
/// per message on ours for tokio's stdout.
pub fn to_terminated_line(raw: &Bytes) -> Vec<u8> {
    let line = to_line(raw);
    let mut out = Vec::with_capacity(line.len() + 1);
    out.extend_from_slice(&line);
    out.push(b'\n');
    out
}

/// True when `bytes` holds no sequence any common line reader splits on.
pub fn is_one_line(bytes: &[u8]) -> bool {
    next_separator(bytes, 0).is_none()
}

/// A line separator found at some offset: how many bytes it spans and what
/// replaces them.
struct Separator {
    at: usize,
    len: usize,
    replacement: &'static [u8],
}

fn next_separator(bytes: &[u8], from: usize) -> Option<Separator> {
    let mut start = from;
    while start < bytes.len() {
        // One linear scan: each candidate byte is looked at once.
        let rel = bytes[start..]
            .iter()
            .position(|b| matches!(b, b'\n' | b'\r' | 0xC2 | 0xE2))?;
        let at = start + rel;
        let found = match &bytes[at..] {
            [b'\n' | b'\r', ..] => Some((1, &b" "[..])),
            [0xC2, 0x85, ..] => Some((2, &b"\\u0085"[..])),
            [0xE2, 0x80, 0xA8, ..] => Some((3, &b"\\u2028"[..])),
            [0xE2, 0x80, 0xA9, ..] => Some((3, &b"\\u2029"[..])),
            _ => None,
        };
        if let Some((len, replacement)) = found {
            return Some(Separator {
                at,
                len,
                replacement,
            });
        }
        start = at + 1;
    }
    None
}

fn rewrite(raw: &[u8], first: Separator) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + 16);
    let mut copied = 0;
    let mut next = Some(first);
    while let Some(sep) = next {
        out.extend_from_slice(&raw[copied..sep.at]);
        out.extend_from_slice(sep.replacement);
        copied = sep.at + sep.len;
        next = next_separator(raw, copied);
    }
    out.extend_from_slice(&raw[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn line(s: &str) -> String {
        String::from_utf8(to_line(&Bytes::copy_from_slice(s.as_bytes())).to_vec()).unwrap()
    }

    #[test]
    fn a_terminated_line_is_the_line_and_one_newline() {
        for raw in [
            &br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#[..],
            b"{\"jsonrpc\":\"2.0\",\r\n\"id\":1,\n\"method\":\"ping\"}",
            b"",
        ] {
            let raw = Bytes::copy_from_slice(raw);
            let out = to_terminated_line(&raw);
            assert_eq!(out.last(), Some(&b'\n'));
            assert_eq!(&out[..out.len() - 1], &to_line(&raw)[..]);
            assert!(is_one_line(&out[..out.len() - 1]));
        }
    }

    #[test]
    fn compact_json_is_returned_as_is_without_a_copy() {
        let raw = Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":"caf\u00e9 \u2014"}}"#,
        );
        let out = to_line(&raw);
        assert_eq!(out.as_ptr(), raw.as_ptr());
    }

    #[test]
    fn line_breaks_between_tokens_become_spaces() {
        let smuggled = "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\",\"params\":{\"x\":\n{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/call\",\"params\":{\"name\":\"rm\"}}\r\n}}";
        let out = line(smuggled);
        assert!(!out.contains('\n') && !out.contains('\r'));
        let before: Value = serde_json::from_str(smuggled).unwrap();
        let after: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(before, after);
    }

    #[test]
    fn unicode_line_separators_in_strings_become_escapes() {
        let raw = "{\"a\":\"x\u{2028}y\u{2029}z\u{85}w — é\"}";
        let out = line(raw);
        assert_eq!(out, r#"{"a":"x\u2028y\u2029z\u0085w — é"}"#);
        let before: Value = serde_json::from_str(raw).unwrap();
        let after: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(before, after);
        assert!(is_one_line(out.as_bytes()));
        assert!(!is_one_line(raw.as_bytes()));
    }

    #[test]
    fn a_truncated_multibyte_sequence_is_left_alone() {
        assert_eq!(
            to_line(&Bytes::from_static(b"\xE2\x80")).as_ref(),
            b"\xE2\x80"
        );
        assert_eq!(to_line(&Bytes::from_static(b"\xC2")).as_ref(), b"\xC2");
    }
}
