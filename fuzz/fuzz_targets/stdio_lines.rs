//! A stdio byte stream split into lines (the stdio transports' framing, with
//! a small line limit) and each line parsed as a JSON-RPC message.
#![no_main]

use airlock::jsonrpc::Message;
use libfuzzer_sys::fuzz_target;

const LIMIT: usize = 4096;

fuzz_target!(|data: &[u8]| {
    for line in data.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() > LIMIT || line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if let Ok(m) = Message::parse(bytes::Bytes::copy_from_slice(line)) {
            let _ = (m.kind(), m.id(), m.method());
            let _ = airlock::era::peek(&m);
        }
    }
});
