//! Tamper evidence: canonical rows and the hash chain.
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

/// The text the hash covers (as a string: tests compare it).
#[cfg(test)]
fn canonical(entry: &Entry) -> String {
    let arguments = entry.arguments.as_ref().map(canonical_json);
    let mut out = Vec::with_capacity(256);
    write_row(entry, arguments.as_deref(), &mut out);
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

pub fn row_hash(prev_hash: &str, entry: &Entry) -> String {
    let arguments = entry.arguments.as_ref().map(canonical_json);
    sealed_hash(prev_hash, entry, arguments.as_deref())
}

/// [`row_hash`] with the row's canonical arguments already at hand (the
/// writer computes them once for the hash and the stored column).
pub(super) fn sealed_hash(prev_hash: &str, entry: &Entry, arguments: Option<&str>) -> String {
    // The row is written out whole and hashed in one go: serde_json writes
    // a few bytes at a time (a quote, a comma, a run of text), and one
    // hasher update per write cost a few hundred instructions a row more
    // than the copy (callgrind).
    let mut row = Vec::with_capacity(prev_hash.len() + 320 + arguments.map_or(0, str::len));
    row.extend_from_slice(prev_hash.as_bytes());
    write_row(entry, arguments, &mut row);
    hex_digest(Sha256::new_with_prefix(&row))
}

/// Lower-case hex of a SHA-256 (`hex::encode` goes char by char; this is
/// on the writer's per-row path twice).
pub(super) fn hex_digest(hasher: Sha256) -> String {
    let mut out = [0u8; 64];
    hex::encode_to_slice(hasher.finalize(), &mut out).expect("64 bytes for 32");
    String::from_utf8(out.to_vec()).expect("hex is ASCII")
}

/// The canonical row: a JSON array of every field but the hashes, in a fixed
/// order, the arguments as their canonical JSON text (a string).
fn write_row(entry: &Entry, arguments: Option<&str>, out: &mut impl std::io::Write) {
    use serde::ser::{SerializeSeq, Serializer};
    let mut ser = serde_json::Serializer::new(out);
    let written = (|| {
        let mut row = ser.serialize_seq(Some(17))?;
        row.serialize_element(&entry.seq)?;
        row.serialize_element(&entry.id)?;
        row.serialize_element(&entry.at)?;
        row.serialize_element(&entry.decision)?;
        row.serialize_element(&entry.session)?;
        row.serialize_element(&entry.agent)?;
        row.serialize_element(&entry.upstream)?;
        row.serialize_element(&entry.tool)?;
        row.serialize_element(&arguments)?;
        row.serialize_element(&entry.args_hash)?;
        row.serialize_element(&entry.rule)?;
        row.serialize_element(&entry.reason)?;
        row.serialize_element(&entry.pending_id)?;
        row.serialize_element(&entry.decider)?;
        row.serialize_element(&entry.channel)?;
        row.serialize_element(&entry.comment)?;
        row.serialize_element(&entry.wait_ms)?;
        row.end()
    })();
    // Writing to a Vec or a hasher cannot fail, and strings always serialise.
    written.expect("serialising an audit row");
}

/// JSON with object keys sorted at every level (stable across serialisers).
pub fn canonical_json(value: &Value) -> String {
    let mut out = Vec::with_capacity(64);
    write_canonical(value, &mut out);
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, k).expect("a string serialises");
                out.push(b':');
                write_canonical(v, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(v, out);
            }
            out.push(b']');
        }
        other => serde_json::to_writer(&mut *out, other).expect("a scalar serialises"),
    }
}

/// sha256 of the canonical arguments: binds an approval to the exact call.
pub fn arguments_hash(arguments: &Value) -> String {
    let mut h = Sha256::new();
    h.update(canonical_json(arguments).as_bytes());
    hex_digest(h)
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

    /// The streaming row writer must produce exactly the bytes of the original
    /// `json!` form, or rows written before would no longer verify.
    #[test]
    fn canonical_row_matches_the_json_array_form() {
        let entry = Entry {
            seq: 42,
            id: "0190-id".into(),
            at: "2026-11-25T10:00:00.000Z".into(),
            decision: "approved".into(),
            session: Some("s\"1\\ \u{1}\n".into()),
            agent: None,
            upstream: Some("odoo".into()),
            tool: Some("délete_☃".into()),
            arguments: Some(json!({"z": [1, 2.5, {"b": null, "a": "\u{7f}\u{2028}"}], "a": true})),
            args_hash: Some("ab".into()),
            rule: Some("delete_*".into()),
            reason: Some("<b>\"quoted\"</b>".into()),
            pending_id: Some("p1".into()),
            decider: Some("alice".into()),
            channel: Some("api".into()),
            comment: Some("ok 👍".into()),
            wait_ms: Some(-3),
            prev_hash: GENESIS.into(),
            hash: String::new(),
        };
        let reference = json!([
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
        ])
        .to_string();
        assert_eq!(canonical(&entry), reference);
        let mut h = Sha256::new();
        h.update(GENESIS.as_bytes());
        h.update(reference.as_bytes());
        assert_eq!(row_hash(GENESIS, &entry), hex::encode(h.finalize()));
    }
}
