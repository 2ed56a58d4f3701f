//! The stateless-era header checks. Input: a JSON-RPC body on the first line,
//! then up to three header values (`MCP-Protocol-Version`, `Mcp-Method`,
//! `Mcp-Name`). Also checks that `encode_header_value` and
//! `decode_header_value` round-trip every string.
#![no_main]

use airlock::era::{self, check_headers, decode_header_value, encode_header_value};
use airlock::jsonrpc::Message;
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|b| *b == b'\n');
    let body = lines.next().unwrap_or_default();
    let mut headers = HeaderMap::new();
    for (name, value) in [
        era::PROTOCOL_VERSION_HEADER,
        era::METHOD_HEADER,
        era::NAME_HEADER,
    ]
    .into_iter()
    .zip(lines)
    {
        if let Ok(v) = HeaderValue::from_bytes(value) {
            let _ = decode_header_value(&v);
            headers.insert(name, v);
        }
    }
    if let Ok(message) = Message::parse(bytes::Bytes::copy_from_slice(body)) {
        let peek = era::peek(&message);
        let _ = check_headers(&message, &peek, &headers);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(encoded) = encode_header_value(text) {
            let decoded = decode_header_value(&encoded);
            assert_eq!(
                decoded.as_deref(),
                Some(text),
                "header value did not round-trip"
            );
        }
    }
});
