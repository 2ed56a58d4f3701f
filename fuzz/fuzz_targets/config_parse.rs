//! `airlock.toml`: `config::parse` with every environment variable set to a
//! valid token (so validation goes past the credentials).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = |_: &str| Some("fuzz-token-0123456789abcdef".to_owned());
    if let Err(e) = airlock::config::parse(
        text,
        "fuzz.toml",
        Path::new("/nonexistent-airlock-fuzz"),
        &env,
    ) {
        // Every error message names a position.
        let _ = e.to_string();
    }
});
