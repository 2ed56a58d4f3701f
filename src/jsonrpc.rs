//! JSON-RPC 2.0 framing: the few typed bits the gateway reads, the rest kept raw.
//!
//! A [`Message`] keeps the exact bytes it arrived as. The gateway reads the
//! envelope (`jsonrpc`, `id`, `method`) once and peeks into `params` only for
//! the methods it polices; everything else is forwarded byte for byte.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

pub mod line;

/// Standard JSON-RPC error codes, plus the MCP ones the gateway produces.
pub mod code {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    pub const INVALID_PARAMS: i64 = -32602;
    pub const INTERNAL_ERROR: i64 = -32603;
    /// Airlock: the upstream server failed (exited, unreachable, timed out).
    pub const UPSTREAM_ERROR: i64 = -32000;
    /// MCP handshake era: the session id is unknown or ended.
    pub const SESSION_NOT_FOUND: i64 = -32001;
    /// MCP 2026-07-28: an HTTP header disagrees with the body.
    pub const HEADER_MISMATCH: i64 = -32020;
    /// MCP 2026-07-28: the request lacks a capability the method needs.
    pub const MISSING_CAPABILITY: i64 = -32021;
}

/// A request or response id, kept as its raw JSON text (`1`, `"abc"`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Id(Arc<str>);

impl Id {
    /// The raw JSON text of the id.
    pub fn raw(&self) -> &str {
        &self.0
    }

    /// Builds an id from JSON text that is already known to be valid.
    pub fn from_raw(raw: &str) -> Id {
        Id(Arc::from(raw))
    }

    /// The JSON `null` id used in errors about unreadable requests.
    pub fn null() -> Id {
        Id::from_raw("null")
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What kind of JSON-RPC message this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Request,
    Notification,
    Response,
}

/// One JSON-RPC message: its original bytes plus the envelope fields.
#[derive(Clone)]
pub struct Message {
    raw: Bytes,
    kind: Kind,
    id: Option<Id>,
    method: Option<Arc<str>>,
    /// Where `params` sits in `raw`, found by the envelope's one pass: the
    /// peeks then read only those bytes instead of walking the whole body
    /// again to find them.
    params: ParamsSpan,
}

/// Where a message's `params` value is, as byte offsets into its text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ParamsSpan {
    /// The message has no `params` key.
    Absent,
    /// `params` is `text[start..end]` (its value, without surrounding blanks).
    At { start: usize, end: usize },
    /// Not recorded (a rewritten message): read from the whole text.
    Unknown,
}

/// Why a body is not a JSON-RPC message; each maps to a standard code.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FrameError {
    #[error("parse error: body is not valid UTF-8")]
    NotUtf8,
    #[error("parse error: {0}")]
    NotJson(String),
    #[error("invalid request: JSON-RPC batches (arrays) are not supported by MCP")]
    Batch,
    #[error("invalid request: expected a JSON object")]
    NotObject,
    #[error("invalid request: `jsonrpc` must be \"2.0\"")]
    BadVersion,
    #[error("invalid request: `id` must be a string or an integer")]
    BadId,
    /// A number that is not a plain integer (`1.0`, `1e0`, `-0`) or is too
    /// large to survive a round trip through every JSON implementation: the
    /// answer's id would not match the request's, and the call would hang.
    #[error(
        "invalid request: a numeric `id` must be an integer from -9007199254740991 to 9007199254740991, written without fraction, exponent or minus zero (got `{0}`)"
    )]
    NumericId(String),
    #[error("invalid request: message has neither `method` nor `result`/`error`")]
    NoMethod,
    #[error("invalid request: a request id must not be null")]
    NullId,
    #[error("invalid request: `{0}` must be a request with an id")]
    MustBeRequest(String),
    /// JSON-RPC allows by-position (array) params; MCP never uses them, and
    /// reading an array as named params would let the policy and the
    /// upstream see different calls.
    #[error(
        "invalid params: `params` must be an object (MCP passes parameters by name, never by position), not {got}"
    )]
    ParamsNotObject { id: Option<Id>, got: &'static str },
    /// serde_json (with `arbitrary_precision`, which keeps numbers exactly
    /// as written) reads an object whose only key is this token as a
    /// number: `{"amount":{"$serde_json::private::Number":"5"}}` would show
    /// an approver and a condition `5` while the upstream gets an object.
    #[error("invalid request: the key `{RESERVED_KEY}` is reserved")]
    ReservedKey,
    #[error(
        "parse error: a string holds a lone surrogate escape (\\uD800-\\uDFFF without its pair); JSON parsers disagree on such strings"
    )]
    LoneSurrogate,
}

/// The key serde_json uses internally for arbitrary-precision numbers.
pub const RESERVED_KEY: &str = "$serde_json::private::Number";

/// Checks every string in the (valid JSON) `text` — key or value, escaped or
/// not: none may decode to [`RESERVED_KEY`], and none may hold a lone
/// surrogate escape (`"\udddd"`: I-JSON, RFC 7493 §2.1, forbids them; other
/// parsers accept them while serde_json's `Value` does not, so conditions,
/// approvers and the audit would not see what the upstream reads). A single
/// scan; strings are decoded only when they hold an escape.
fn check_strings(text: &str) -> Result<(), FrameError> {
    let bytes = text.as_bytes();
    if !bytes.contains(&b'$') && !text.contains("\\u") {
        return Ok(()); // the fast path: no `$`, no `\u` escape
    }
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'"' {
            i += 1;
            continue;
        }
        let start = i;
        let mut escaped = false;
        i += 1;
        while i < bytes.len() && bytes[i] != b'"' {
            if bytes[i] == b'\\' {
                escaped = true;
                i += 1; // skip the escaped character
            }
            i += 1;
        }
        let token = &text[start..(i + 1).min(text.len())];
        i += 1;
        let decoded = if escaped {
            serde_json::from_str::<String>(token).map_err(|_| FrameError::LoneSurrogate)?
        } else {
            token[1..token.len().saturating_sub(1)].to_owned()
        };
        if decoded == RESERVED_KEY {
            return Err(FrameError::ReservedKey);
        }
    }
    Ok(())
}

impl FrameError {
    /// The JSON-RPC error code for this framing problem.
    pub fn code(&self) -> i64 {
        match self {
            FrameError::NotUtf8 | FrameError::NotJson(_) | FrameError::LoneSurrogate => {
                code::PARSE_ERROR
            }
            FrameError::ParamsNotObject { .. } => code::INVALID_PARAMS,
            _ => code::INVALID_REQUEST,
        }
    }

    /// The id the error answer should carry: known only once the envelope
    /// was read (invalid params); `None` means `null`.
    pub fn id(&self) -> Option<&Id> {
        match self {
            FrameError::ParamsNotObject { id, .. } => id.as_ref(),
            _ => None,
        }
    }
}

/// The largest integer every JSON implementation holds exactly (2^53 - 1):
/// a larger id may come back from a JavaScript upstream as another number.
const MAX_SAFE_INTEGER: u64 = 9_007_199_254_740_991;

/// Whether a JSON number, as written, is an id every peer echoes unchanged:
/// a plain integer (no fraction, exponent or `-0`) within ±(2^53 - 1).
/// Responses are matched to requests by the id's text, so `1.0` or `1e0`
/// (which many peers echo as `1`) would leave the call waiting forever.
fn is_portable_integer(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'))
        && text != "-0"
        && digits.len() <= 16
        && digits.parse::<u64>().is_ok_and(|n| n <= MAX_SAFE_INTEGER)
}

/// What kind of JSON value `params` is, when it is not an object (or null).
fn params_shape(raw: &RawValue) -> Option<&'static str> {
    match raw.get().as_bytes().first() {
        Some(b'{') | Some(b'n') | None => None,
        Some(b'[') => Some("an array"),
        Some(b'"') => Some("a string"),
        Some(b't' | b'f') => Some("a boolean"),
        Some(_) => Some("a number"),
    }
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    jsonrpc: Option<&'a RawValue>,
    /// `Some("null")` for an explicit null, `None` when absent.
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    method: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    result: Option<&'a RawValue>,
    #[serde(borrow)]
    error: Option<&'a RawValue>,
    #[serde(borrow)]
    params: Option<&'a RawValue>,
}

/// Keeps an explicit `null` as a raw value instead of folding it into `None`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&'de RawValue>::deserialize(d).map(Some)
}

impl Message {
    /// Reads one message from raw bytes, checking only the envelope.
    pub fn parse(raw: Bytes) -> Result<Message, FrameError> {
        let text = std::str::from_utf8(&raw).map_err(|_| FrameError::NotUtf8)?;
        match text.trim_start().as_bytes().first() {
            Some(b'[') => return Err(FrameError::Batch),
            Some(b'{') => {}
            Some(_) => {
                // Valid JSON but not an object is an invalid request; invalid JSON a parse error.
                return match serde_json::from_str::<&RawValue>(text) {
                    Ok(_) => Err(FrameError::NotObject),
                    Err(e) => Err(FrameError::NotJson(e.to_string())),
                };
            }
            None => return Err(FrameError::NotJson("empty body".into())),
        }
        let env: Envelope<'_> =
            serde_json::from_str(text).map_err(|e| FrameError::NotJson(e.to_string()))?;
        check_strings(text)?;
        if env.jsonrpc.map(RawValue::get) != Some("\"2.0\"") {
            return Err(FrameError::BadVersion);
        }
        let id = match env.id {
            None => None,
            // `"id": null` is a request to JSON-RPC but not to MCP; refuse it
            // rather than let it pass as a notification.
            Some(raw) if raw.get() == "null" && env.method.is_some() => {
                return Err(FrameError::NullId);
            }
            Some(raw) if raw.get() == "null" => None,
            Some(raw) => {
                let text = raw.get();
                let first = text.as_bytes()[0];
                if first != b'"' && first != b'-' && !first.is_ascii_digit() {
                    return Err(FrameError::BadId);
                }
                if first != b'"' && !is_portable_integer(text) {
                    let shown = &text[..text.floor_char_boundary(40)];
                    return Err(FrameError::NumericId(shown.to_owned()));
                }
                Some(Id::from_raw(text))
            }
        };
        // Checked before anything reads the params: a serde struct reads an
        // array by position, so `["delete_record", {…}]` would pass as named.
        // (`null` is taken as absent, as it was before; a response's stray
        // `params` means nothing and is left alone.)
        if env.method.is_some()
            && let Some(got) = env.params.and_then(params_shape)
        {
            return Err(FrameError::ParamsNotObject { id, got });
        }
        let kind = match (&env.method, id.is_some()) {
            (Some(_), true) => Kind::Request,
            (Some(_), false) => Kind::Notification,
            (None, _) if env.result.is_some() || env.error.is_some() => Kind::Response,
            (None, _) => return Err(FrameError::NoMethod),
        };
        if kind == Kind::Notification
            && let Some(m @ ("tools/call" | "tools/list")) = env.method.as_deref()
        {
            // The gate only polices requests: these must never travel as notifications.
            return Err(FrameError::MustBeRequest(m.to_owned()));
        }
        let method = env.method.map(|m| Arc::from(m.as_ref()));
        let params = match env.params {
            None => ParamsSpan::Absent,
            Some(value) => {
                // The raw value borrows from `text`: its offset is the distance
                // between the two pointers.
                let start = value.get().as_ptr() as usize - text.as_ptr() as usize;
                let end = start + value.get().len();
                debug_assert_eq!(text.get(start..end), Some(value.get()));
                ParamsSpan::At { start, end }
            }
        };
        Ok(Message {
            raw,
            kind,
            id,
            method,
            params,
        })
    }

    /// Builds a message from a JSON value the gateway made itself.
    pub fn from_value(value: &serde_json::Value) -> Message {
        let raw = Bytes::from(serde_json::to_vec(value).expect("a Value always serialises"));
        Message::parse(raw).expect("gateway-built messages are valid JSON-RPC")
    }

    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    pub fn text(&self) -> &str {
        // Checked to be UTF-8 in `parse`.
        std::str::from_utf8(&self.raw).unwrap_or_default()
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn id(&self) -> Option<&Id> {
        self.id.as_ref()
    }

    pub fn method(&self) -> Option<&str> {
        self.method.as_deref()
    }

    pub fn is_request(&self) -> bool {
        self.kind == Kind::Request
    }

    /// Deserialises `params` into a borrowed peek type; `None` when absent or unreadable.
    pub fn params<'a, T: Deserialize<'a>>(&'a self) -> Option<T> {
        self.params_strict().ok().flatten()
    }

    /// Like [`Message::params`], but says why the params could not be read
    /// (wrong types, duplicate keys). `Ok(None)` when there are no params.
    /// Reads only the bytes of `params` when `parse` recorded where they are
    /// (error positions are then counted from the start of `params`).
    pub fn params_strict<'a, T: Deserialize<'a>>(&'a self) -> Result<Option<T>, String> {
        #[derive(Deserialize)]
        struct P<T> {
            params: Option<T>,
        }
        match self.params {
            ParamsSpan::Absent => Ok(None),
            ParamsSpan::At { start, end } => {
                serde_json::from_str::<Option<T>>(&self.text()[start..end])
                    .map_err(|e| e.to_string())
            }
            ParamsSpan::Unknown => serde_json::from_str::<P<T>>(self.text())
                .map(|p| p.params)
                .map_err(|e| e.to_string()),
        }
    }

    /// Deserialises `result` into a peek type; `None` when absent or unreadable.
    pub fn result<'a, T: Deserialize<'a>>(&'a self) -> Option<T> {
        #[derive(Deserialize)]
        struct R<T> {
            result: Option<T>,
        }
        serde_json::from_str::<R<T>>(self.text()).ok()?.result
    }

    /// The same message with another id; only the top-level object is rewritten,
    /// nested values stay as their original text.
    pub fn with_id(&self, id: &Id) -> Message {
        let has_id = object_fields(self.text()).is_some_and(|f| f.0.iter().any(|(k, _)| k == "id"));
        let (mut text, _) = rebuild_object(self.text(), |key, _| {
            (key == "id").then(|| id.raw().to_owned())
        })
        .expect("parsed once already: an object");
        if !has_id {
            text.insert_str(1, &format!("\"id\":{},", id.raw()));
            if text.ends_with(",}") {
                text.replace_range(text.len() - 2.., "}");
            }
        }
        Message {
            raw: Bytes::from(text),
            kind: self.kind,
            id: Some(id.clone()),
            method: self.method.clone(),
            params: ParamsSpan::Unknown,
        }
    }

    /// The same message with `params._meta.progressToken` (requests) or
    /// `params.progressToken` (progress notifications) set to `token` (raw
    /// JSON text); unchanged when it has neither. Only those values are
    /// replaced: every other value keeps its original text (a round trip
    /// through `Value` would fold duplicate keys the gate refused, so the
    /// child could read a call the policy never saw).
    pub fn with_progress_token(&self, token: &str) -> Message {
        let in_params = |params: &RawValue| -> Option<String> {
            let (text, replaced) = rebuild_object(params.get(), |key, meta| {
                if key != "_meta" {
                    return None;
                }
                match rebuild_object(meta.get(), |k, _| {
                    (k == "progressToken").then(|| token.to_owned())
                }) {
                    Some((text, true)) => Some(text),
                    _ => None,
                }
            })?;
            if replaced {
                return Some(text);
            }
            match rebuild_object(params.get(), |k, _| {
                (k == "progressToken").then(|| token.to_owned())
            }) {
                Some((text, true)) => Some(text),
                _ => None,
            }
        };
        let rebuilt = rebuild_object(self.text(), |key, params| {
            (key == "params").then(|| in_params(params)).flatten()
        });
        match rebuilt {
            Some((text, true)) => {
                Message::parse(Bytes::from(text)).unwrap_or_else(|_| self.clone())
            }
            _ => self.clone(),
        }
    }
}

/// The top-level fields of a JSON object, values as their raw text.
fn object_fields(text: &str) -> Option<indexmap_like::Fields<'_>> {
    serde_json::from_str(text).ok()
}

/// Rebuilds a JSON object's text with the values `replace` returns new text
/// for (every occurrence of a key, duplicates included); the other values
/// keep their original text. `None` when `text` is not an object; the flag
/// says whether anything was replaced.
fn rebuild_object(
    text: &str,
    mut replace: impl FnMut(&str, &RawValue) -> Option<String>,
) -> Option<(String, bool)> {
    let fields = object_fields(text)?;
    let mut out = String::with_capacity(text.len() + 16);
    let mut replaced = false;
    out.push('{');
    for (n, (key, value)) in fields.0.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(key).expect("a string serialises"));
        out.push(':');
        match replace(key, value) {
            Some(new) => {
                replaced = true;
                out.push_str(&new);
            }
            None => out.push_str(value.get()),
        }
    }
    out.push('}');
    Some((out, replaced))
}

mod indexmap_like {
    //! An ordered list of top-level fields with raw values, for id rewriting.
    use serde::de::{Deserializer, MapAccess, Visitor};
    use serde_json::value::RawValue;
    use std::borrow::Cow;

    pub struct Fields<'a>(pub Vec<(Cow<'a, str>, &'a RawValue)>);

    impl<'de> serde::Deserialize<'de> for Fields<'de> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Fields<'de>;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields<'de>, A::Error> {
                    let mut out = Vec::new();
                    while let Some((k, v)) = map.next_entry::<Cow<'de, str>, &'de RawValue>()? {
                        out.push((k, v));
                    }
                    Ok(Fields(out))
                }
            }
            d.deserialize_map(V)
        }
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.text();
        let shown = if text.len() > 200 {
            &text[..text.floor_char_boundary(200)]
        } else {
            text
        };
        write!(f, "Message({shown})")
    }
}

/// A JSON-RPC error response for `id` (use [`Id::null`] when the id is unknown).
pub fn error_response(id: &Id, code: i64, message: &str) -> Message {
    error_response_with_data(id, code, message, None)
}

/// A JSON-RPC error response carrying structured `data`.
pub fn error_response_with_data(
    id: &Id,
    code: i64,
    message: &str,
    data: Option<serde_json::Value>,
) -> Message {
    let mut error = serde_json::json!({ "code": code, "message": message });
    if let Some(data) = data {
        error["data"] = data;
    }
    let id: serde_json::Value = serde_json::from_str(id.raw()).unwrap_or(serde_json::Value::Null);
    Message::from_value(&serde_json::json!({ "jsonrpc": "2.0", "id": id, "error": error }))
}

/// A JSON-RPC success response for `id` with the given result.
pub fn result_response(id: &Id, result: serde_json::Value) -> Message {
    let id: serde_json::Value = serde_json::from_str(id.raw()).unwrap_or(serde_json::Value::Null);
    Message::from_value(&serde_json::json!({ "jsonrpc": "2.0", "id": id, "result": result }))
}

/// The JSON-RPC error code of a response, if it is an error.
pub fn error_code(msg: &Message) -> Option<i64> {
    #[derive(Deserialize)]
    struct E {
        error: Option<EC>,
    }
    #[derive(Deserialize)]
    struct EC {
        code: i64,
    }
    if msg.kind() != Kind::Response {
        return None;
    }
    serde_json::from_str::<E>(msg.text())
        .ok()?
        .error
        .map(|e| e.code)
}

#[cfg(test)]
mod tests;
