//! The two MCP protocol eras, as far as the gateway needs to tell them apart.
//!
//! Handshake era (2025-06-18, 2025-11-25): `initialize` + `Mcp-Session-Id`.
//! Stateless era (2026-07-28): every request carries
//! `_meta["io.modelcontextprotocol/protocolVersion"]`, and on HTTP mirrors
//! method and name into headers that must agree with the body. See
//! `docs/protocol.md`.

use std::borrow::Cow;

use axum::http::{HeaderMap, HeaderValue};
use base64::Engine;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::jsonrpc::Message;

pub const PROTOCOL_VERSION_HEADER: &str = "mcp-protocol-version";
pub const METHOD_HEADER: &str = "mcp-method";
pub const NAME_HEADER: &str = "mcp-name";
pub const META_PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
pub const META_SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";

/// Airlock's own `_meta` serverInfo, for the stateless-era results it makes
/// itself (refusals, tasks): the spec says results SHOULD say who answered.
pub fn airlock_server_info() -> serde_json::Value {
    serde_json::json!({ "name": "airlock", "version": env!("CARGO_PKG_VERSION") })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Era {
    Handshake,
    Stateless,
}

/// The parts of `params` the gateway reads; everything else stays raw.
#[derive(Deserialize, Default)]
pub struct ParamsPeek<'a> {
    #[serde(borrow, default)]
    pub name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub uri: Option<Cow<'a, str>>,
    /// `tasks/get`, `tasks/update`, `tasks/cancel` (tasks extension).
    #[serde(rename = "taskId", borrow, default)]
    pub task_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub arguments: Option<&'a RawValue>,
    #[serde(rename = "_meta", borrow, default)]
    pub meta: Option<MetaPeek<'a>>,
    /// Only present on `initialize` (handshake era).
    #[serde(rename = "clientInfo", default)]
    pub client_info: Option<ClientInfo>,
}

/// What the gate reads of a `tools/call`: nothing else, so an odd value in
/// some other field cannot make the read fail — and a read that fails
/// (wrong type, duplicate key) refuses the call instead of skipping the policy.
#[derive(Deserialize)]
pub struct CallPeek<'a> {
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    #[serde(borrow, default)]
    pub arguments: Option<&'a RawValue>,
    #[serde(rename = "requestState", borrow, default)]
    pub request_state: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Default)]
pub struct MetaPeek<'a> {
    #[serde(rename = "io.modelcontextprotocol/protocolVersion", default)]
    pub protocol_version: Option<String>,
    #[serde(rename = "io.modelcontextprotocol/clientInfo", default)]
    pub client_info: Option<ClientInfo>,
    #[serde(rename = "io.modelcontextprotocol/clientCapabilities", borrow, default)]
    pub client_capabilities: Option<&'a RawValue>,
    #[serde(rename = "progressToken", borrow, default)]
    pub progress_token: Option<&'a RawValue>,
}

#[derive(Deserialize, Debug, Clone)]
pub struct ClientInfo {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub version: String,
}

impl ClientInfo {
    pub fn label(&self) -> String {
        if self.version.is_empty() {
            self.name.clone()
        } else {
            format!("{}/{}", self.name, self.version)
        }
    }
}

/// Reads the peek of a request's params (an empty peek when absent).
pub fn peek(message: &Message) -> ParamsPeek<'_> {
    message.params::<ParamsPeek<'_>>().unwrap_or_default()
}

/// The stateless-era protocol version a request declares, if any.
pub fn stateless_version<'p>(peek: &'p ParamsPeek<'_>) -> Option<&'p str> {
    peek.meta.as_ref()?.protocol_version.as_deref()
}

/// The value `Mcp-Name` must carry for this request, if the method has one.
fn expected_name<'p>(method: &str, peek: &'p ParamsPeek<'_>) -> Option<&'p str> {
    match method {
        "tools/call" | "prompts/get" => peek.name.as_deref(),
        "resources/read" => peek.uri.as_deref(),
        // The tasks extension: "the client MUST set the Mcp-Name header to
        // the value of params.taskId".
        "tasks/get" | "tasks/update" | "tasks/cancel" => peek.task_id.as_deref(),
        _ => None,
    }
}

/// Checks the stateless-era HTTP headers against the body.
///
/// Returns the HeaderMismatch message (`-32020`) on the first disagreement.
/// The body is the source of truth: the policy later reads the body only.
pub fn check_headers(
    message: &Message,
    peek: &ParamsPeek<'_>,
    headers: &HeaderMap,
) -> Result<(), String> {
    let method = message.method().unwrap_or_default();
    let version = stateless_version(peek).unwrap_or_default();
    compare(
        headers,
        PROTOCOL_VERSION_HEADER,
        "MCP-Protocol-Version",
        version,
    )?;
    compare(headers, METHOD_HEADER, "Mcp-Method", method)?;
    if let Some(name) = expected_name(method, peek) {
        compare(headers, NAME_HEADER, "Mcp-Name", name)?;
    }
    Ok(())
}

fn compare(headers: &HeaderMap, key: &str, shown: &str, body: &str) -> Result<(), String> {
    let Some(raw) = headers.get(key) else {
        return Err(format!(
            "Header mismatch: required header {shown} is missing"
        ));
    };
    let Some(value) = decode_header_value(raw) else {
        return Err(format!(
            "Header mismatch: {shown} header value is not valid"
        ));
    };
    if value != body {
        return Err(format!(
            "Header mismatch: {shown} header value '{value}' does not match body value '{body}'"
        ));
    }
    Ok(())
}

/// The strict read of a request's params, made at most once per message and
/// shared by the edge's checks (the mirrored `Mcp-Name` check and the
/// stateless-era peek used to read it separately: two parses of one body).
pub type StrictPeek<'m> = std::cell::OnceCell<Result<Option<ParamsPeek<'m>>, String>>;

/// The strict peek of `message`'s params, read on first use and cached in `cell`.
pub fn strict_peek<'c, 'm>(
    cell: &'c StrictPeek<'m>,
    message: &'m Message,
) -> &'c Result<Option<ParamsPeek<'m>>, String> {
    cell.get_or_init(|| message.params_strict::<ParamsPeek<'_>>())
}

/// Checks whichever mirrored headers are present (any era): each at most
/// once, and equal to the body. Duplicates are refused because the gateway
/// and the upstream might read different copies. `peek` caches the strict
/// read of the params, so the caller can reuse it instead of parsing again.
pub fn check_mirrored_headers<'m>(
    message: &'m Message,
    headers: &HeaderMap,
    peek: &StrictPeek<'m>,
) -> Result<(), String> {
    for (key, shown) in [
        (PROTOCOL_VERSION_HEADER, "MCP-Protocol-Version"),
        (METHOD_HEADER, "Mcp-Method"),
        (NAME_HEADER, "Mcp-Name"),
    ] {
        if headers.get_all(key).iter().nth(1).is_some() {
            return Err(format!(
                "Header mismatch: {shown} header appears more than once"
            ));
        }
    }
    let method = message.method().unwrap_or_default();
    if headers.contains_key(METHOD_HEADER) && message.is_request() {
        compare(headers, METHOD_HEADER, "Mcp-Method", method)?;
    }
    if headers.contains_key(NAME_HEADER) && names_a_target(method) {
        // Params that do not read (a field of the wrong type) cannot vouch
        // for the header: refused, not waved through.
        let Ok(peek) = strict_peek(peek, message) else {
            return Err(
                "Header mismatch: Mcp-Name header cannot be checked: params are not valid".into(),
            );
        };
        let expected = peek
            .as_ref()
            .and_then(|peek| expected_name(method, peek))
            .unwrap_or_default();
        compare(headers, NAME_HEADER, "Mcp-Name", expected)?;
    }
    Ok(())
}

/// Methods whose `Mcp-Name` header names something in the body.
fn names_a_target(method: &str) -> bool {
    matches!(
        method,
        "tools/call"
            | "prompts/get"
            | "resources/read"
            | "tasks/get"
            | "tasks/update"
            | "tasks/cancel"
    )
}

/// Decodes a header value, including the `=?base64?…?=` form for values that
/// are not plain visible ASCII.
pub fn decode_header_value(raw: &HeaderValue) -> Option<Cow<'_, str>> {
    let text = raw.to_str().ok()?;
    match text
        .strip_prefix("=?base64?")
        .and_then(|t| t.strip_suffix("?="))
    {
        Some(encoded) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .ok()?;
            String::from_utf8(bytes).ok().map(Cow::Owned)
        }
        None => Some(Cow::Borrowed(text)),
    }
}

/// Encodes a value for a header, using the base64 form when needed.
pub fn encode_header_value(value: &str) -> Option<HeaderValue> {
    let plain = !value.is_empty()
        && value
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) || b == b'\t')
        && value.trim() == value
        && !(value.starts_with("=?base64?") && value.ends_with("?="));
    if plain {
        HeaderValue::from_str(value).ok()
    } else {
        let encoded = base64::engine::general_purpose::STANDARD.encode(value.as_bytes());
        HeaderValue::from_str(&format!("=?base64?{encoded}?=")).ok()
    }
}

/// Sets the stateless-era headers from the body (for agents that sent none,
/// i.e. stdio agents talking to an HTTP upstream).
pub fn derive_headers(message: &Message, out: &mut HeaderMap) {
    if !message.is_request() {
        return;
    }
    let peek = peek(message);
    let Some(version) = stateless_version(&peek) else {
        return;
    };
    let method = message.method().unwrap_or_default();
    if let Ok(v) = HeaderValue::from_str(version) {
        out.insert(PROTOCOL_VERSION_HEADER, v);
    }
    if let Some(v) = encode_header_value(method) {
        out.insert(METHOD_HEADER, v);
    }
    if let Some(v) = expected_name(method, &peek).and_then(encode_header_value) {
        out.insert(NAME_HEADER, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn msg(s: &str) -> Message {
        Message::parse(Bytes::copy_from_slice(s.as_bytes())).unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    const CALL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#;

    #[test]
    fn matching_headers_pass() {
        let m = msg(CALL);
        let h = headers(&[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "echo"),
        ]);
        assert_eq!(check_headers(&m, &peek(&m), &h), Ok(()));
    }

    #[test]
    fn a_name_header_that_disagrees_with_the_body_is_a_mismatch() {
        let m = msg(CALL);
        let h = headers(&[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "safe_tool"),
        ]);
        let e = check_headers(&m, &peek(&m), &h).unwrap_err();
        assert_eq!(
            e,
            "Header mismatch: Mcp-Name header value 'safe_tool' does not match body value 'echo'"
        );
    }

    #[test]
    fn missing_headers_are_mismatches() {
        let m = msg(CALL);
        let e =
            check_headers(&m, &peek(&m), &headers(&[("mcp-method", "tools/call")])).unwrap_err();
        assert!(e.contains("MCP-Protocol-Version is missing"), "{e}");
        let h = headers(&[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
        ]);
        let e = check_headers(&m, &peek(&m), &h).unwrap_err();
        assert!(e.contains("Mcp-Name is missing"), "{e}");
    }

    #[test]
    fn base64_names_are_decoded_before_comparing() {
        let m = msg(&CALL.replace("\"echo\"", "\"Hello, 世界\""));
        let h = headers(&[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "=?base64?SGVsbG8sIOS4lueVjA==?="),
        ]);
        assert_eq!(check_headers(&m, &peek(&m), &h), Ok(()));
        assert_eq!(
            encode_header_value("Hello, 世界").unwrap(),
            "=?base64?SGVsbG8sIOS4lueVjA==?="
        );
        assert_eq!(encode_header_value("echo").unwrap(), "echo");
    }

    #[test]
    fn derived_headers_mirror_the_body() {
        let mut h = HeaderMap::new();
        derive_headers(&msg(CALL), &mut h);
        assert_eq!(h["mcp-protocol-version"], "2026-07-28");
        assert_eq!(h["mcp-method"], "tools/call");
        assert_eq!(h["mcp-name"], "echo");
    }
}

/// The `requestState` of an MRTR `input_required` answer (stateless era), if
/// the answer is one.
pub fn input_required_state(answer: &Message) -> Option<String> {
    #[derive(Deserialize)]
    struct R {
        #[serde(rename = "resultType")]
        result_type: Option<String>,
        #[serde(rename = "requestState")]
        request_state: Option<String>,
    }
    let r = answer.result::<R>()?;
    (r.result_type.as_deref() == Some("input_required"))
        .then_some(r.request_state)
        .flatten()
}

/// Refuses `tools/call` arguments that are present but not an object (`null`
/// reads as absent). Conditions read `args.*` from an object only, so an
/// array or a string would make every `deny_if` miss while the upstream still
/// runs the call: the gateway fails closed instead.
pub fn check_arguments_shape(raw: &RawValue) -> Result<(), String> {
    match raw.get().trim_start().as_bytes().first() {
        Some(b'{') => Ok(()),
        Some(b'n') if raw.get().trim() == "null" => Ok(()),
        Some(b'[') => Err("an array".into()),
        Some(b'"') => Err("a string".into()),
        Some(b't' | b'f') => Err("a boolean".into()),
        _ => Err("a number".into()),
    }
}

/// Refuses JSON with a repeated object key at any depth: parsers disagree on
/// which copy wins, so the approver and the upstream could see different calls.
pub fn check_unique_keys(raw: &RawValue) -> Result<(), String> {
    use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
    struct Unique;
    impl<'de> DeserializeSeed<'de> for Unique {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(Unique)
        }
    }
    impl<'de> Visitor<'de> for Unique {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while seq.next_element_seed(Unique)?.is_some() {}
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            // Most objects have a handful of keys: a linear scan of the keys
            // seen so far beats hashing them; a large object switches to a
            // set, so a million keys stay linear in time.
            const FEW: usize = 16;
            let mut few: Vec<Cow<'de, str>> = Vec::new();
            let mut many: Option<std::collections::HashSet<Cow<'de, str>>> = None;
            while let Some(key) = map.next_key_seed(Key)? {
                let repeated = match &mut many {
                    Some(set) => set.contains(&key),
                    None => few.contains(&key),
                };
                if repeated {
                    return Err(serde::de::Error::custom(format!("duplicate key `{key}`")));
                }
                match &mut many {
                    Some(set) => {
                        set.insert(key);
                    }
                    None if few.len() < FEW => few.push(key),
                    None => {
                        let mut set: std::collections::HashSet<_> = few.drain(..).collect();
                        set.insert(key);
                        many = Some(set);
                    }
                }
                map.next_value_seed(Unique)?;
            }
            Ok(())
        }
    }
    /// An object key, borrowed from the text when it holds no escape (no
    /// allocation per key), decoded otherwise: `"a"` and `"\u0061"` compare
    /// equal, as every parser reads them.
    struct Key;
    impl<'de> DeserializeSeed<'de> for Key {
        type Value = Cow<'de, str>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
            d.deserialize_str(Key)
        }
    }
    impl<'de> Visitor<'de> for Key {
        type Value = Cow<'de, str>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object key")
        }
        fn visit_borrowed_str<E>(self, key: &'de str) -> Result<Cow<'de, str>, E> {
            Ok(Cow::Borrowed(key))
        }
        fn visit_str<E>(self, key: &str) -> Result<Cow<'de, str>, E> {
            Ok(Cow::Owned(key.to_owned()))
        }
    }
    let mut de = serde_json::Deserializer::from_str(raw.get());
    Unique.deserialize(&mut de).map_err(|e| e.to_string())
}

#[cfg(test)]
mod unique_tests {
    use super::*;

    #[test]
    fn arguments_must_be_an_object_or_null() {
        let read = |text: &str| {
            let raw: &RawValue = serde_json::from_str(text).unwrap();
            check_arguments_shape(raw)
        };
        assert!(read(r#"{"a":1}"#).is_ok());
        assert!(read(" null ").is_ok());
        assert_eq!(read(r#"[{"amount":5000}]"#).unwrap_err(), "an array");
        assert_eq!(read(r#""amount=5000""#).unwrap_err(), "a string");
        assert_eq!(read("true").unwrap_err(), "a boolean");
        assert_eq!(read("5000").unwrap_err(), "a number");
    }

    #[test]
    fn repeated_keys_at_any_depth_are_found() {
        let ok: &RawValue =
            serde_json::from_str(r#"{"a":1,"b":{"a":2},"c":[{"a":1},{"a":2}]}"#).unwrap();
        assert!(check_unique_keys(ok).is_ok());
        let top: &RawValue = serde_json::from_str(r#"{"id":"/etc/passwd","id":"x"}"#).unwrap();
        assert!(
            check_unique_keys(top)
                .unwrap_err()
                .contains("duplicate key `id`")
        );
        let deep: &RawValue = serde_json::from_str(r#"{"a":[{"b":{"c":1,"c":2}}]}"#).unwrap();
        assert!(check_unique_keys(deep).is_err());
        let escaped: &RawValue = serde_json::from_str(r#"{"id":1,"\u0069d":2}"#).unwrap();
        assert!(
            check_unique_keys(escaped)
                .unwrap_err()
                .contains("duplicate key `id`")
        );
    }

    #[test]
    fn repeated_keys_are_found_past_the_linear_scan() {
        let mut keys: Vec<String> = (0..40).map(|i| format!("\"k{i}\":{i}")).collect();
        let unique = format!("{{{}}}", keys.join(","));
        let ok: &RawValue = serde_json::from_str(&unique).unwrap();
        assert!(check_unique_keys(ok).is_ok());
        for repeat in ["k3", "k20"] {
            keys.push(format!("\"{repeat}\":0"));
            let text = format!("{{{}}}", keys.join(","));
            let twice: &RawValue = serde_json::from_str(&text).unwrap();
            assert!(
                check_unique_keys(twice)
                    .unwrap_err()
                    .contains(&format!("duplicate key `{repeat}`"))
            );
            keys.pop();
        }
    }
}
