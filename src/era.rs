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

use crate::jsonrpc::{Message, scan};

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

/// A JSON value inside a message's text, as written (like serde_json's
/// `RawValue`, without parsing it again to get one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawJson<'a>(&'a str);

impl<'a> RawJson<'a> {
    /// The value's JSON text.
    pub fn get(&self) -> &'a str {
        self.0
    }
}

/// The parts of `params` the gateway reads; everything else stays raw.
/// Built from what the message's one pass recorded ([`peek_strict`]).
#[derive(Default, Debug)]
pub struct ParamsPeek<'a> {
    pub name: Option<Cow<'a, str>>,
    pub uri: Option<Cow<'a, str>>,
    /// `tasks/get`, `tasks/update`, `tasks/cancel` (tasks extension).
    pub task_id: Option<Cow<'a, str>>,
    pub arguments: Option<RawJson<'a>>,
    pub meta: Option<MetaPeek<'a>>,
    /// Only present on `initialize` (handshake era).
    pub client_info: Option<ClientInfo>,
}

/// What the gate reads of a `tools/call`: nothing else, so an odd value in
/// some other field cannot make the read fail — and a read that fails
/// (wrong type, duplicate key) refuses the call instead of skipping the policy.
#[derive(Debug)]
pub struct CallPeek<'a> {
    pub name: Cow<'a, str>,
    pub arguments: Option<RawJson<'a>>,
    pub request_state: Option<Cow<'a, str>>,
}

#[derive(Default, Debug)]
pub struct MetaPeek<'a> {
    pub protocol_version: Option<Cow<'a, str>>,
    pub client_info: Option<ClientInfo>,
    pub client_capabilities: Option<RawJson<'a>>,
    pub progress_token: Option<RawJson<'a>>,
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

/// The strict read of a request's params: what the message's one pass
/// found (nothing is parsed here). `Ok(None)` without params; `Err` names
/// why they cannot be read unambiguously (a repeated key, a known field of
/// the wrong type).
pub fn peek_strict(message: &Message) -> Result<Option<ParamsPeek<'_>>, String> {
    let text = message.text();
    let Some(facts) = message.param_facts().map_err(str::to_owned)? else {
        return Ok(None);
    };
    fn str_of<'m>(t: &'m Option<scan::Text>, text: &'m str) -> Option<Cow<'m, str>> {
        t.as_ref().map(|t| Cow::Borrowed(t.get(text)))
    }
    let s = |t| str_of(t, text);
    let raw = |span: Option<scan::Span>| span.map(|sp| RawJson(&text[sp.start..sp.end]));
    let info = |i: &Option<scan::ClientInfoFacts>| {
        i.as_ref().map(|i| ClientInfo {
            name: i.name.as_ref().map_or("", |t| t.get(text)).to_owned(),
            version: i.version.as_ref().map_or("", |t| t.get(text)).to_owned(),
        })
    };
    Ok(Some(ParamsPeek {
        name: s(&facts.name),
        uri: s(&facts.uri),
        task_id: s(&facts.task_id),
        arguments: raw(facts.arguments),
        meta: facts.meta.as_ref().map(|m| MetaPeek {
            protocol_version: s(&m.protocol_version),
            client_info: info(&m.client_info),
            client_capabilities: raw(m.client_capabilities),
            progress_token: raw(m.progress_token),
        }),
        client_info: info(&facts.client_info),
    }))
}

/// Reads the peek of a request's params (an empty peek when absent or
/// unreadable).
pub fn peek(message: &Message) -> ParamsPeek<'_> {
    peek_strict(message).ok().flatten().unwrap_or_default()
}

/// What the gate reads of a `tools/call`, from the message's one pass.
/// `Ok(None)` without params; `Err` when they cannot be read unambiguously
/// (a repeated key at any depth of `arguments` included) or name no tool.
pub fn call_peek(message: &Message) -> Result<Option<CallPeek<'_>>, String> {
    let text = message.text();
    let Some(facts) = message.param_facts().map_err(str::to_owned)? else {
        return Ok(None);
    };
    let Some(name) = &facts.name else {
        return Err("missing field `name`".into());
    };
    Ok(Some(CallPeek {
        name: Cow::Borrowed(name.get(text)),
        arguments: facts.arguments.map(|sp| RawJson(&text[sp.start..sp.end])),
        request_state: facts
            .request_state
            .as_ref()
            .map(|t| Cow::Borrowed(t.get(text))),
    }))
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

/// Checks whichever mirrored headers are present (any era): each at most
/// once, and equal to the body. Duplicates are refused because the gateway
/// and the upstream might read different copies.
pub fn check_mirrored_headers(message: &Message, headers: &HeaderMap) -> Result<(), String> {
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
        let Ok(peek) = peek_strict(message) else {
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
pub fn check_arguments_shape(raw: RawJson<'_>) -> Result<(), String> {
    match raw.get().trim_start().as_bytes().first() {
        Some(b'{') => Ok(()),
        Some(b'n') if raw.get().trim() == "null" => Ok(()),
        Some(b'[') => Err("an array".into()),
        Some(b'"') => Err("a string".into()),
        Some(b't' | b'f') => Err("a boolean".into()),
        _ => Err("a number".into()),
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

#[cfg(test)]
mod shape_tests {
    use super::*;

    #[test]
    fn arguments_must_be_an_object_or_null() {
        let read = |text: &str| check_arguments_shape(RawJson(text));
        assert!(read(r#"{"a":1}"#).is_ok());
        assert!(read(" null ").is_ok());
        assert_eq!(read(r#"[{"amount":5000}]"#).unwrap_err(), "an array");
        assert_eq!(read(r#""amount=5000""#).unwrap_err(), "a string");
        assert_eq!(read("true").unwrap_err(), "a boolean");
        assert_eq!(read("5000").unwrap_err(), "a number");
    }
}
