//! JSON-RPC 2.0 framing: the few typed bits the gateway reads, the rest kept raw.
//!
//! A [`Message`] keeps the exact bytes it arrived as. One pass over them
//! ([`scan`]) validates the JSON and records where the envelope (`jsonrpc`,
//! `id`, `method`, `params`) and the facts the gateway polices (`params.name`,
//! `arguments`, the era's `_meta` keys…) sit; the era checks and the gate
//! read those ranges instead of parsing the body again, and everything is
//! forwarded byte for byte.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

pub mod line;
pub mod scan;

use scan::{ParamFacts, ScanError, Span};

/// Counts JSON reads of the messages it is attached to (agents' messages:
/// the edges attach the gateway's meter, `airlock_body_parses_total`): the
/// one pass of [`Message::parse_metered`], and every later read of the same
/// bytes by a JSON parser (a generic [`Message::params`] peek, a `result`
/// peek, a rewrite that parses again). Parse once means one per message.
#[derive(Clone, Default, Debug)]
pub struct ParseMeter(Arc<AtomicU64>);

impl ParseMeter {
    fn count(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads counted so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

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
    /// Where `params` sits in `raw` (`None`: absent or `null`), found by
    /// the one pass: a generic peek reads only those bytes.
    params: Option<Span>,
    /// What an object `params` holds that the gateway reads, or why it
    /// cannot be read (a repeated key, a field of the wrong type): the
    /// readers that need it refuse the message with that reason.
    facts: Option<Result<Box<ParamFacts>, Arc<str>>>,
    /// Where the `id` value is (for [`Message::with_id`]'s splice).
    id_span: Option<Span>,
    /// Where the top-level object's `{` is, and whether it has no key.
    open: usize,
    empty: bool,
    /// The gateway's count of body reads, for agents' messages.
    meter: Option<ParseMeter>,
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
    /// serde_json reads an object whose only key is one of its private
    /// tokens as something else: with `arbitrary_precision` (numbers kept
    /// exactly as written) `{"amount":{"$serde_json::private::Number":"5"}}`
    /// is the number `5`, and with `raw_value`
    /// `{"$serde_json::private::RawValue":"\"/etc\""}` is the JSON text in
    /// the string. An approver and a condition would see one value while the
    /// upstream gets an object.
    #[error("invalid request: the key `{0}` is reserved")]
    ReservedKey(&'static str),
    #[error(
        "parse error: a string holds a lone surrogate escape (\\uD800-\\uDFFF without its pair); JSON parsers disagree on such strings"
    )]
    LoneSurrogate,
}

/// The keys serde_json reads as something other than an object's key:
/// arbitrary-precision numbers and raw values (both features are on).
pub const RESERVED_KEYS: [&str; 2] = [
    "$serde_json::private::Number",
    "$serde_json::private::RawValue",
];

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
fn params_shape(raw: &str) -> Option<&'static str> {
    match raw.as_bytes().first() {
        Some(b'{') | Some(b'n') | None => None,
        Some(b'[') => Some("an array"),
        Some(b'"') => Some("a string"),
        Some(b't' | b'f') => Some("a boolean"),
        Some(_) => Some("a number"),
    }
}

impl Message {
    /// Reads one message from raw bytes: the one pass over them (see [`scan`]).
    pub fn parse(raw: Bytes) -> Result<Message, FrameError> {
        Message::parse_with(raw, None)
    }

    /// [`Message::parse`] for an agent's message: the parse, and every later
    /// JSON read of the same bytes, count on `meter`.
    pub fn parse_metered(raw: Bytes, meter: &ParseMeter) -> Result<Message, FrameError> {
        Message::parse_with(raw, Some(meter.clone()))
    }

    fn parse_with(raw: Bytes, meter: Option<ParseMeter>) -> Result<Message, FrameError> {
        if let Some(meter) = &meter {
            meter.count();
        }
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
        let scanned = scan::scan(text).map_err(|e| match e {
            ScanError::Syntax(why) => FrameError::NotJson(why),
            ScanError::ReservedKey(key) => FrameError::ReservedKey(key),
            ScanError::LoneSurrogate => FrameError::LoneSurrogate,
        })?;
        let at = |span: Span| &text[span.start..span.end];
        if scanned.jsonrpc.map(at) != Some("\"2.0\"") {
            return Err(FrameError::BadVersion);
        }
        let method = scanned.method.as_ref().map(|m| m.get(text));
        let id = match scanned.id.map(at) {
            None => None,
            // `"id": null` is a request to JSON-RPC but not to MCP; refuse it
            // rather than let it pass as a notification.
            Some("null") if method.is_some() => return Err(FrameError::NullId),
            Some("null") => None,
            Some(text) => {
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
        if method.is_some()
            && let Some(got) = scanned.params.map(at).and_then(params_shape)
        {
            return Err(FrameError::ParamsNotObject { id, got });
        }
        let kind = match (method, id.is_some()) {
            (Some(_), true) => Kind::Request,
            (Some(_), false) => Kind::Notification,
            (None, _) if scanned.result || scanned.error => Kind::Response,
            (None, _) => return Err(FrameError::NoMethod),
        };
        if kind == Kind::Notification
            && let Some(m @ ("tools/call" | "tools/list")) = method
        {
            // The gate only polices requests: these must never travel as notifications.
            return Err(FrameError::MustBeRequest(m.to_owned()));
        }
        let method = method.map(Arc::from);
        Ok(Message {
            kind,
            id,
            method,
            params: scanned.params,
            facts: scanned.facts.map(|f| f.map(Box::new).map_err(Arc::from)),
            id_span: scanned.id,
            open: scanned.open,
            empty: scanned.empty,
            meter,
            raw,
        })
    }

    /// Counts one more JSON read of this message's bytes.
    fn count_read(&self) {
        if let Some(meter) = &self.meter {
            meter.count();
        }
    }

    /// What the one pass read of an object `params`: `Ok(None)` when there
    /// are no params (or they are not an object: refused at parse for
    /// requests); `Err` when they cannot be read unambiguously (a repeated
    /// key, a known field of the wrong type, `arguments` nested too deep).
    /// No JSON is read here.
    pub fn param_facts(&self) -> Result<Option<&ParamFacts>, &str> {
        match &self.facts {
            None => Ok(None),
            Some(Ok(facts)) => Ok(Some(facts)),
            Some(Err(why)) => Err(why),
        }
    }

    /// Builds a message from a JSON value the gateway made itself.
    pub fn from_value(value: &serde_json::Value) -> Message {
        let raw = Bytes::from(serde_json::to_vec(value).expect("a Value always serialises"));
        Message::parse(raw).expect("gateway-built messages are valid JSON-RPC")
    }

    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// The same message in an allocation of its own. A body read off an
    /// HTTP connection is a slice of that connection's read buffer (8 KiB or
    /// more): a message kept for long (a held call) would pin the buffer, and
    /// the connection would allocate a second one for its next read.
    pub fn detached(mut self) -> Message {
        self.raw = Bytes::copy_from_slice(&self.raw);
        self
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
    /// For what the gateway polices, [`Message::param_facts`] reads nothing again.
    pub fn params<'a, T: Deserialize<'a>>(&'a self) -> Option<T> {
        self.params_strict().ok().flatten()
    }

    /// Like [`Message::params`], but says why the params could not be read
    /// (wrong types, duplicate keys). `Ok(None)` when there are no params.
    /// Reads only the bytes of `params` (error positions are counted from
    /// the start of `params`). A JSON read: counted on the meter.
    pub fn params_strict<'a, T: Deserialize<'a>>(&'a self) -> Result<Option<T>, String> {
        let Some(span) = self.params else {
            return Ok(None);
        };
        self.count_read();
        serde_json::from_str::<Option<T>>(&self.text()[span.start..span.end])
            .map_err(|e| e.to_string())
    }

    /// Deserialises `result` into a peek type; `None` when absent or unreadable.
    pub fn result<'a, T: Deserialize<'a>>(&'a self) -> Option<T> {
        #[derive(Deserialize)]
        struct R<T> {
            result: Option<T>,
        }
        self.count_read();
        serde_json::from_str::<R<T>>(self.text()).ok()?.result
    }

    /// The same message with another id: the id's bytes are replaced (or an
    /// `id` key is added after the `{`); every other byte stays as it was,
    /// and nothing is parsed again (the recorded ranges move with the splice).
    pub fn with_id(&self, id: &Id) -> Message {
        let mut out = match self.id_span {
            Some(span) => self.spliced(span, id.raw()),
            None => {
                let at = self.open + 1;
                let comma = if self.empty { "" } else { "," };
                let key = "\"id\":";
                let mut out = self.spliced(
                    Span { start: at, end: at },
                    &format!("{key}{}{comma}", id.raw()),
                );
                let start = at + key.len();
                out.id_span = Some(Span {
                    start,
                    end: start + id.raw().len(),
                });
                out.empty = false;
                out
            }
        };
        out.id = Some(id.clone());
        out
    }

    /// This message with `text[span]` replaced by `insert` (valid JSON for
    /// the value there), the recorded ranges kept on their values.
    fn spliced(&self, span: Span, insert: &str) -> Message {
        let text = self.text();
        let mut out = String::with_capacity(text.len() + insert.len());
        out.push_str(&text[..span.start]);
        out.push_str(insert);
        out.push_str(&text[span.end..]);
        let delta = insert.len() as isize - (span.end - span.start) as isize;
        let moved = |mut s: Span| {
            s.shift(span.end, delta);
            s
        };
        let facts = self.facts.clone().map(|f| {
            f.map(|mut facts| {
                facts.shift(span.end, delta);
                facts
            })
        });
        Message {
            raw: Bytes::from(out),
            kind: self.kind,
            id: self.id.clone(),
            method: self.method.clone(),
            params: self.params.map(moved),
            facts,
            id_span: self.id_span.map(moved),
            open: self.open,
            empty: self.empty,
            meter: self.meter.clone(),
        }
    }

    /// The same message with `params._meta.progressToken` (requests) or
    /// `params.progressToken` (progress notifications) set to `token` (raw
    /// JSON text); unchanged when it has neither. Only those values are
    /// replaced: every other value keeps its original text (a round trip
    /// through `Value` would fold duplicate keys the gate refused, so the
    /// child could read a call the policy never saw).
    pub fn with_progress_token(&self, token: &str) -> Message {
        // A request's token was found by the one pass: replaced in place.
        if let Some(Ok(facts)) = &self.facts
            && let Some(span) = facts.meta.as_ref().and_then(|m| m.progress_token)
        {
            return self.spliced(span, token);
        }
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
        // A JSON read (and the new text is read once more): counted.
        self.count_read();
        let rebuilt = rebuild_object(self.text(), |key, params| {
            (key == "params").then(|| in_params(params)).flatten()
        });
        match rebuilt {
            Some((text, true)) => Message::parse_with(Bytes::from(text), self.meter.clone())
                .unwrap_or_else(|_| self.clone()),
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
    msg.count_read();
    serde_json::from_str::<E>(msg.text())
        .ok()?
        .error
        .map(|e| e.code)
}

#[cfg(test)]
mod tests;
