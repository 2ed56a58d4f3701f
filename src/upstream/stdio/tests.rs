//! The stdout framing and the lenient id read of bad lines.

use bytes::BytesMut;
use tokio_util::codec::Decoder;

use super::{Line, LineDecoder, lenient_id};

fn decode_all(max: usize, chunks: &[&[u8]]) -> Vec<Line> {
    let mut decoder = LineDecoder::new(max);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        while let Some(line) = decoder.decode(&mut buf).unwrap() {
            out.push(line);
        }
    }
    while let Some(line) = decoder.decode_eof(&mut buf).unwrap() {
        out.push(line);
    }
    out
}

fn complete(text: &[u8]) -> Line {
    Line::Complete(BytesMut::from(text))
}

#[test]
fn lines_are_split_on_newlines_across_reads_and_lose_their_cr() {
    let lines = decode_all(100, &[b"{\"a\":1}\r\n{\"b\"", b":2}\n", b"last"]);
    assert_eq!(
        lines,
        [
            complete(b"{\"a\":1}"),
            complete(b"{\"b\":2}"),
            complete(b"last")
        ]
    );
}

#[test]
fn bytes_that_are_not_utf8_are_a_line_like_any_other() {
    let lines = decode_all(100, &[b"\xff\xfe\n", b"ok\n"]);
    assert_eq!(lines, [complete(b"\xff\xfe"), complete(b"ok")]);
}

#[test]
fn an_over_long_line_is_reported_once_skipped_and_reading_goes_on() {
    // Arriving in pieces, none with its newline until the end.
    let lines = decode_all(
        8,
        &[b"{\"id\":7,", b"\"result\":", b"xxxxxxxx", b"xx\nnext\n"],
    );
    assert_eq!(lines.len(), 2, "{lines:?}");
    let Line::TooLong { head } = &lines[0] else {
        panic!("{lines:?}")
    };
    assert!(head.starts_with(b"{\"id\":7,"));
    assert_eq!(lines[1], complete(b"next"));
}

#[test]
fn an_over_long_line_read_whole_is_reported_and_the_next_one_kept() {
    let lines = decode_all(4, &[b"0123456789\nabc\n"]);
    assert_eq!(
        lines,
        [
            Line::TooLong {
                head: bytes::Bytes::from_static(b"0123456789")
            },
            complete(b"abc")
        ]
    );
}

#[test]
fn an_over_long_line_cut_off_by_eof_yields_nothing_more() {
    let lines = decode_all(4, &[b"0123456789"]);
    assert_eq!(lines.len(), 1);
    assert!(matches!(lines[0], Line::TooLong { .. }));
}

#[test]
fn lenient_id_reads_the_id_before_the_garbage() {
    let id = |line: &[u8]| lenient_id(line).map(|id| id.raw().to_owned());
    assert_eq!(
        id(b"{\"jsonrpc\":\"2.0\",\"id\":\"airlock-3\",\"result\":\xff\xfe}"),
        Some("\"airlock-3\"".into())
    );
    assert_eq!(
        id(b"{\"jsonrpc\":\"2.0\",\"id\":12,\"result\":{\"content\":[tr"),
        Some("12".into())
    );
    assert_eq!(id(b"{\"id\":-1}"), Some("-1".into()));
}

#[test]
fn lenient_id_finds_nothing_without_a_readable_id() {
    for line in [
        &b"not json at all"[..],
        b"{\"result\":{garbage},\"id\":4}",
        b"{\"id\":null,\"error\":{}}",
        b"{\"id\":{\"x\":1}}",
        b"[{\"id\":1}]",
        b"{\"params\":{\"id\":5}",
        b"",
    ] {
        assert!(
            lenient_id(line).is_none(),
            "{}",
            String::from_utf8_lossy(line)
        );
    }
}
