//! Tamper evidence: canonical rows, the hash chain, argument redaction.
//!
//! `hash = sha256(prev_hash ‖ canonical row)` in lower-case hex, where the
//! canonical row is a JSON array of every field but the hashes, in a fixed
//! order, with object keys sorted. Editing any stored field breaks the row's
//! hash; deleting a row breaks the next row's `prev_hash`.

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::Entry;

/// The `prev_hash` of the first row.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The text the hash covers.
pub fn canonical(entry: &Entry) -> String {
    let row = serde_json::json!([
        entry.seq,
        entry.id,
        entry.at,
        entry.decision,
        entry.session,
        entry.agent,
        entry.upstream,
        entry.tool,
        entry.arguments.as_ref().map(canonical_json),
        entry.args_hash,
        entry.rule,
        entry.reason,
        entry.pending_id,
        entry.decider,
        entry.channel,
        entry.comment,
        entry.wait_ms,
    ]);
    row.to_string()
}

pub fn row_hash(prev_hash: &str, entry: &Entry) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(canonical(entry).as_bytes());
    hex::encode(h.finalize())
}

/// JSON with object keys sorted at every level (stable across serialisers).
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String((*k).clone()).to_string());
                out.push(':');
                write_canonical(&map[*k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// sha256 of the canonical arguments: binds an approval to the exact call.
pub fn arguments_hash(arguments: &Value) -> String {
    hex::encode(Sha256::digest(canonical_json(arguments).as_bytes()))
}

/// Replaces the values of keys named in `redact` (case-insensitive, at any depth).
pub fn redact(value: &mut Value, redact: &[String]) {
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if redact.iter().any(|r| r.eq_ignore_ascii_case(k)) {
                    *v = Value::String("[redacted]".into());
                } else {
                    self::redact(v, redact);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| self::redact(v, redact)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let v = json!({"b": 1, "a": {"d": [ {"z": 1, "y": 2} ], "c": null}});
        assert_eq!(
            canonical_json(&v),
            r#"{"a":{"c":null,"d":[{"y":2,"z":1}]},"b":1}"#
        );
        assert_eq!(
            arguments_hash(&v),
            arguments_hash(&json!({"a": {"c": null, "d": [{"y": 2, "z": 1}]}, "b": 1}))
        );
    }

    #[test]
    fn redaction_reaches_nested_keys_case_insensitively() {
        let mut v = json!({"user": "bob", "Password": "x", "nested": [{"token": "t", "ok": 1}]});
        redact(&mut v, &["password".into(), "token".into()]);
        assert_eq!(
            v,
            json!({"user": "bob", "Password": "[redacted]", "nested": [{"token": "[redacted]", "ok": 1}]})
        );
    }
}
