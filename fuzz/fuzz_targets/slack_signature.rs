//! Slack request signatures (`slack::interactions::verify`). Input: the
//! `X-Slack-Request-Timestamp` value, a newline, the `X-Slack-Signature`
//! value, a newline, the body. Anything verifies only with the real
//! signature, and the real signature of any body verifies when the timestamp
//! is within the replay window.
#![no_main]

use airlock::slack::interactions::verify;
use hmac::{Hmac, KeyInit, Mac};
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;

const SECRET: &str = "fuzz-signing-secret";
const NOW: i64 = 1_800_000_000;

fn headers(timestamp: &[u8], signature: &[u8]) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(timestamp) {
        h.insert("x-slack-request-timestamp", v);
    }
    if let Ok(v) = HeaderValue::from_bytes(signature) {
        h.insert("x-slack-signature", v);
    }
    h
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |b| *b == b'\n');
    let timestamp = parts.next().unwrap_or_default();
    let signature = parts.next().unwrap_or_default();
    let body = parts.next().unwrap_or_default();

    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key length");
    mac.update(b"v0:");
    mac.update(timestamp);
    mac.update(b":");
    mac.update(body);
    let real = mac.finalize().into_bytes();

    if verify(&headers(timestamp, signature), body, SECRET, NOW).is_ok() {
        let sent = signature
            .strip_prefix(b"v0=")
            .and_then(|s| hex::decode(s).ok());
        assert_eq!(
            sent.as_deref(),
            Some(&real[..]),
            "a request verified without the real signature"
        );
    }

    let good = format!("v0={}", hex::encode(real));
    let fresh = std::str::from_utf8(timestamp)
        .ok()
        .filter(|_| HeaderValue::from_bytes(timestamp).is_ok_and(|v| v.to_str().is_ok()))
        .and_then(|t| t.trim().parse::<i64>().ok())
        .is_some_and(|at| (NOW as i128 - at as i128).abs() <= 300);
    let result = verify(&headers(timestamp, good.as_bytes()), body, SECRET, NOW);
    if fresh {
        assert!(
            result.is_ok(),
            "a correctly signed, fresh request was refused: {result:?}"
        );
    }
});
