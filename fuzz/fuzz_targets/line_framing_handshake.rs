//! The line-framing differential (see `line_framing/check.rs`) on the
//! handshake era's path to a stdio child.
#![no_main]

#[path = "line_framing/check.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data, false));
