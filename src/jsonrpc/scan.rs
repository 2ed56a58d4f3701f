//! The one pass over a message's bytes (issue 12, "parse once").
//!
//! [`scan`] validates the whole text as JSON (RFC 8259: the same grammar
//! serde_json accepts) and, in the same pass, records where everything the
//! gateway reads sits: the envelope (`jsonrpc`, `id`, `method`, `result`,
//! `error`, `params`) and inside an object `params` the facts the edges, the
//! era checks and the gate read (`name`, `uri`, `taskId`, `requestState`,
//! `arguments`, `clientInfo`, `_meta` with its protocol version, client info,
//! capabilities and progress token). Nothing is copied: a fact is a byte
//! range of the text, decoded only when the string holds an escape.
//!
//! What the pass refuses, and how (the same refusals the several parses
//! before it made, now made once):
//!
//! - Not JSON, a repeated key in the envelope, a non-string `method`: fatal
//!   ([`ScanError::Syntax`], a parse error).
//! - A string anywhere (key or value) that decodes to serde_json's private
//!   number key, or holds a lone surrogate escape: fatal, reported only once
//!   the whole text is known to be JSON (as before, when a separate scan ran
//!   after the parse).
//! - Inside `params`: a repeated key (in `params`, `_meta`, `clientInfo`, and
//!   at any depth of `arguments`, escaped spellings included), a known field
//!   of the wrong type, `arguments` nested deeper than serde_json's recursion
//!   limit. These are *not* fatal: they are kept as the params' error, which
//!   the readers that need the params (the gate, the stateless-era checks,
//!   the `Mcp-Name` check) turn into `-32602`, exactly where the strict
//!   serde reads used to fail.
//!
//! `fuzz/fuzz_targets/jsonrpc_parse.rs` checks the pass against serde_json on
//! arbitrary input: accepted text must be JSON to serde_json, with the same
//! arguments and name.

use std::borrow::Cow;
use std::collections::HashSet;

/// A byte range of the message text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    /// Keeps the range on the same value after the text's length changed by
    /// `delta` in a splice that ends at `from`: a range after the splice
    /// moves, a range that holds it (or is it) grows or shrinks.
    pub fn shift(&mut self, from: usize, delta: isize) {
        if self.start >= from {
            self.start = self.start.saturating_add_signed(delta);
            self.end = self.end.saturating_add_signed(delta);
        } else if self.end >= from {
            self.end = self.end.saturating_add_signed(delta);
        }
    }
}

/// A string value: where its contents sit (no escape), or its decoded text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Text {
    At(Span),
    Decoded(Box<str>),
}

impl Text {
    pub fn get<'t>(&'t self, text: &'t str) -> &'t str {
        match self {
            Text::At(span) => &text[span.start..span.end],
            Text::Decoded(s) => s,
        }
    }

    fn shift(&mut self, at: usize, delta: isize) {
        if let Text::At(span) = self {
            span.shift(at, delta);
        }
    }
}

/// `clientInfo` (handshake era, in `initialize`) or
/// `_meta["io.modelcontextprotocol/clientInfo"]` (stateless era).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientInfoFacts {
    pub name: Option<Text>,
    pub version: Option<Text>,
}

/// What `params._meta` holds that the gateway reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetaFacts {
    pub protocol_version: Option<Text>,
    pub client_info: Option<ClientInfoFacts>,
    pub client_capabilities: Option<Span>,
    pub progress_token: Option<Span>,
}

/// What an object `params` holds that the gateway reads. `null` values are
/// taken as absent, as serde's `Option` reads them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParamFacts {
    pub name: Option<Text>,
    pub uri: Option<Text>,
    pub task_id: Option<Text>,
    pub request_state: Option<Text>,
    /// The raw value (any JSON type but `null`).
    pub arguments: Option<Span>,
    pub client_info: Option<ClientInfoFacts>,
    pub meta: Option<MetaFacts>,
}

impl ParamFacts {
    /// Keeps the ranges on their values after a splice (see [`Span::shift`]).
    pub fn shift(&mut self, at: usize, delta: isize) {
        for text in [
            &mut self.name,
            &mut self.uri,
            &mut self.task_id,
            &mut self.request_state,
        ]
        .into_iter()
        .flatten()
        {
            text.shift(at, delta);
        }
        if let Some(span) = &mut self.arguments {
            span.shift(at, delta);
        }
        let shift_info = |info: &mut ClientInfoFacts| {
            for text in [&mut info.name, &mut info.version].into_iter().flatten() {
                text.shift(at, delta);
            }
        };
        if let Some(info) = &mut self.client_info {
            shift_info(info);
        }
        if let Some(meta) = &mut self.meta {
            if let Some(t) = &mut meta.protocol_version {
                t.shift(at, delta);
            }
            if let Some(info) = &mut meta.client_info {
                shift_info(info);
            }
            for span in [&mut meta.client_capabilities, &mut meta.progress_token]
                .into_iter()
                .flatten()
            {
                span.shift(at, delta);
            }
        }
    }
}

/// The envelope as the pass found it: raw value ranges, `null` as absent
/// except for `id` (a `null` id is kept: it means something to JSON-RPC).
#[derive(Debug, Default)]
pub struct Scanned {
    /// Where the top-level object's `{` is.
    pub open: usize,
    /// The object has no key at all.
    pub empty: bool,
    pub jsonrpc: Option<Span>,
    pub id: Option<Span>,
    pub method: Option<Text>,
    pub result: bool,
    pub error: bool,
    pub params: Option<Span>,
    /// The facts of an object `params`, or why they cannot be read.
    pub facts: Option<Result<ParamFacts, String>>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ScanError {
    /// Not JSON, or an envelope serde would not read.
    Syntax(String),
    /// A string decodes to one of serde_json's private tokens.
    ReservedKey(&'static str),
    /// A string holds a `\uD800`–`\uDFFF` escape without its pair.
    LoneSurrogate,
}

type R<T> = Result<T, ScanError>;

/// The keys serde_json reads as a number or as raw JSON text.
const RESERVED: [&str; 2] = super::RESERVED_KEYS;

/// Which reserved key `decoded` is, if any.
fn reserved(decoded: &[u8]) -> Option<&'static str> {
    RESERVED.into_iter().find(|key| key.as_bytes() == decoded)
}

/// Escapes only lengthen a string: only a raw text this long can decode to
/// a reserved key.
fn may_decode_to_reserved(raw_len: usize) -> bool {
    let shortest = RESERVED.iter().map(|k| k.len()).min().unwrap_or(0);
    let longest = RESERVED.iter().map(|k| k.len()).max().unwrap_or(0);
    (shortest..=longest * 6).contains(&raw_len)
}

/// serde_json's default recursion limit, kept for `arguments` (where the
/// repeated-key walk used serde_json and so refused deeper nesting).
const MAX_DEPTH: usize = 127;

/// Scans `text` (which must start, after blanks, with `{`): one pass.
pub fn scan(text: &str) -> R<Scanned> {
    let mut s = Scanner {
        text,
        b: text.as_bytes(),
        i: 0,
        string_issue: None,
        keys: Vec::new(),
    };
    let scanned = s.message()?;
    match s.string_issue {
        Some(issue) => Err(issue),
        None => Ok(scanned),
    }
}

struct Scanner<'a> {
    text: &'a str,
    b: &'a [u8],
    i: usize,
    /// The first reserved-key or lone-surrogate string, reported after the
    /// whole text is known to be JSON.
    string_issue: Option<ScanError>,
    /// Keys of the objects being walked (each object owns a tail of it):
    /// one buffer for the whole message instead of one per object.
    keys: Vec<Cow<'a, str>>,
}

/// A string token: where its contents are, and the decoded text if escaped.
struct Str<'a> {
    span: Span,
    decoded: Option<String>,
    text: &'a str,
}

impl<'a> Str<'a> {
    fn as_cow(&self) -> Cow<'a, str> {
        match &self.decoded {
            None => Cow::Borrowed(&self.text[self.span.start..self.span.end]),
            Some(s) => Cow::Owned(s.clone()),
        }
    }

    fn into_text(self) -> Text {
        match self.decoded {
            None => Text::At(self.span),
            Some(s) => Text::Decoded(s.into_boxed_str()),
        }
    }
}

/// The keys of one object, for the repeated-key check: a linear scan of the
/// shared buffer while there are few, a set past 16 (so a huge object stays
/// linear in time).
struct KeySet<'a> {
    from: usize,
    many: Option<HashSet<Cow<'a, str>>>,
}

impl<'a> KeySet<'a> {
    fn new(s: &Scanner<'a>) -> KeySet<'a> {
        KeySet {
            from: s.keys.len(),
            many: None,
        }
    }

    /// Adds `key`; false when it was already there.
    fn insert(&mut self, keys: &mut Vec<Cow<'a, str>>, key: Cow<'a, str>) -> bool {
        const FEW: usize = 16;
        if let Some(set) = &mut self.many {
            return set.insert(key);
        }
        if keys[self.from..].contains(&key) {
            return false;
        }
        if keys.len() - self.from < FEW {
            keys.push(key);
        } else {
            let mut set: HashSet<_> = keys.drain(self.from..).collect();
            set.insert(key);
            self.many = Some(set);
        }
        true
    }

    fn done(self, keys: &mut Vec<Cow<'a, str>>) {
        keys.truncate(self.from);
    }
}

/// The JSON type of a value, by its first byte (for type errors).
fn kind_of(first: u8) -> &'static str {
    match first {
        b'{' => "an object",
        b'[' => "an array",
        b'"' => "a string",
        b't' | b'f' => "a boolean",
        b'n' => "null",
        _ => "a number",
    }
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    /// A syntax error at the current position, as serde_json words its position.
    fn error(&self, what: &str) -> ScanError {
        let at = self.i.min(self.b.len());
        let before = &self.b[..at];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let column = at
            - before
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |p| p + 1)
            + 1;
        ScanError::Syntax(format!("{what} at line {line} column {column}"))
    }

    fn expect(&mut self, byte: u8, what: &str) -> R<()> {
        self.ws();
        if self.peek() == Some(byte) {
            self.i += 1;
            Ok(())
        } else if self.i >= self.b.len() {
            Err(self.error("EOF while parsing a value"))
        } else {
            Err(self.error(what))
        }
    }

    /// The first byte of the next value, after blanks.
    fn value_start(&mut self) -> R<u8> {
        self.ws();
        self.peek()
            .ok_or_else(|| self.error("EOF while parsing a value"))
    }

    /// The whole message: one top-level object, nothing after it but blanks.
    fn message(&mut self) -> R<Scanned> {
        let mut out = Scanned::default();
        self.ws();
        out.open = self.i;
        self.expect(b'{', "expected `{`")?;
        let mut keys = KeySet::new(self);
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            out.empty = true;
        } else {
            loop {
                let key = self.key()?;
                let name = key.as_cow();
                if !keys.insert(&mut self.keys, name.clone()) {
                    return Err(self.error(&format!("duplicate key `{name}`")));
                }
                self.expect(b':', "expected `:`")?;
                let first = self.value_start()?;
                let start = self.i;
                match name.as_ref() {
                    "params" if first == b'{' => {
                        out.facts = Some(self.params()?);
                        out.params = Some(Span { start, end: self.i });
                    }
                    "method" if first == b'"' => {
                        out.method = Some(self.string()?.into_text());
                    }
                    "method" if first != b'n' => {
                        self.skip_value()?;
                        return Err(ScanError::Syntax(format!(
                            "invalid type: {}, expected a string (`method`)",
                            kind_of(first)
                        )));
                    }
                    _ => {
                        self.skip_value()?;
                        let span = Span { start, end: self.i };
                        let null = first == b'n';
                        match name.as_ref() {
                            "jsonrpc" if !null => out.jsonrpc = Some(span),
                            "id" => out.id = Some(span),
                            "result" => out.result = !null,
                            "error" => out.error = !null,
                            "params" if !null => out.params = Some(span),
                            _ => {}
                        }
                    }
                }
                self.ws();
                match self.peek() {
                    Some(b',') => self.i += 1,
                    Some(b'}') => {
                        self.i += 1;
                        break;
                    }
                    None => return Err(self.error("EOF while parsing an object")),
                    Some(_) => return Err(self.error("expected `,` or `}`")),
                }
            }
        }
        keys.done(&mut self.keys);
        self.ws();
        if self.i < self.b.len() {
            return Err(self.error("trailing characters"));
        }
        Ok(out)
    }

    /// An object key (after blanks).
    fn key(&mut self) -> R<Str<'a>> {
        self.key_as(true)
    }

    fn key_as(&mut self, decode: bool) -> R<Str<'a>> {
        self.ws();
        match self.peek() {
            Some(b'"') => self.string_as(decode),
            None => Err(self.error("EOF while parsing an object")),
            Some(_) => Err(self.error("key must be a string")),
        }
    }

    /// An object `params`, at its `{`. Syntax errors are fatal (the outer
    /// `Err`); what only makes the facts unreadable is the inner `Err`.
    fn params(&mut self) -> R<Result<ParamFacts, String>> {
        let mut facts = ParamFacts::default();
        let mut soft: Option<String> = None;
        self.object(&mut soft, "params", |s, key, first, soft| {
            match key {
                "name" => facts.name = s.string_field(first, key, soft)?,
                "uri" => facts.uri = s.string_field(first, key, soft)?,
                "taskId" => facts.task_id = s.string_field(first, key, soft)?,
                "requestState" => facts.request_state = s.string_field(first, key, soft)?,
                "arguments" => {
                    let start = s.i;
                    s.walk_unique(0, soft)?;
                    facts.arguments = (first != b'n').then_some(Span { start, end: s.i });
                }
                "clientInfo" => facts.client_info = s.client_info(first, key, soft)?,
                "_meta" => facts.meta = s.meta(first, soft)?,
                _ => s.skip_value()?,
            }
            Ok(())
        })?;
        Ok(match soft {
            Some(why) => Err(why),
            None => Ok(facts),
        })
    }

    /// An object at its `{`: each value goes to `field` (key, the value's
    /// first byte); a repeated key is a soft error naming `what`.
    fn object(
        &mut self,
        soft: &mut Option<String>,
        what: &str,
        mut field: impl FnMut(&mut Self, &str, u8, &mut Option<String>) -> R<()>,
    ) -> R<()> {
        self.i += 1;
        let mut keys = KeySet::new(self);
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            keys.done(&mut self.keys);
            return Ok(());
        }
        loop {
            let name = self.key()?.as_cow();
            if !keys.insert(&mut self.keys, name.clone()) && soft.is_none() {
                *soft = Some(format!("duplicate key `{name}` in {what}"));
            }
            self.expect(b':', "expected `:`")?;
            let first = self.value_start()?;
            field(self, &name, first, soft)?;
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    break;
                }
                None => return Err(self.error("EOF while parsing an object")),
                Some(_) => return Err(self.error("expected `,` or `}`")),
            }
        }
        keys.done(&mut self.keys);
        Ok(())
    }

    /// A field that must be a string (or `null`, read as absent).
    fn string_field(&mut self, first: u8, key: &str, soft: &mut Option<String>) -> R<Option<Text>> {
        match first {
            b'"' => Ok(Some(self.string()?.into_text())),
            b'n' => self.skip_value().map(|_| None),
            _ => {
                self.skip_value()?;
                if soft.is_none() {
                    *soft = Some(format!(
                        "invalid type: {}, expected a string (`{key}`)",
                        kind_of(first)
                    ));
                }
                Ok(None)
            }
        }
    }

    /// A field that must be an object (or `null`); `false` when it was neither.
    fn object_field(&mut self, first: u8, key: &str, soft: &mut Option<String>) -> R<bool> {
        match first {
            b'{' => Ok(true),
            _ => {
                self.skip_value()?;
                if first != b'n' && soft.is_none() {
                    *soft = Some(format!(
                        "invalid type: {}, expected an object (`{key}`)",
                        kind_of(first)
                    ));
                }
                Ok(false)
            }
        }
    }

    fn client_info(
        &mut self,
        first: u8,
        key: &str,
        soft: &mut Option<String>,
    ) -> R<Option<ClientInfoFacts>> {
        if !self.object_field(first, key, soft)? {
            return Ok(None);
        }
        let mut info = ClientInfoFacts::default();
        self.object(soft, key, |s, key, first, soft| {
            match key {
                "name" => info.name = s.string_field(first, key, soft)?,
                "version" => info.version = s.string_field(first, key, soft)?,
                _ => s.skip_value()?,
            }
            Ok(())
        })?;
        Ok(Some(info))
    }

    fn meta(&mut self, first: u8, soft: &mut Option<String>) -> R<Option<MetaFacts>> {
        if !self.object_field(first, "_meta", soft)? {
            return Ok(None);
        }
        let mut meta = MetaFacts::default();
        self.object(soft, "_meta", |s, key, first, soft| {
            match key {
                "io.modelcontextprotocol/protocolVersion" => {
                    meta.protocol_version = s.string_field(first, key, soft)?
                }
                "io.modelcontextprotocol/clientInfo" => {
                    meta.client_info = s.client_info(first, key, soft)?
                }
                "io.modelcontextprotocol/clientCapabilities" => {
                    meta.client_capabilities = s.raw_field(first)?
                }
                "progressToken" => meta.progress_token = s.raw_field(first)?,
                _ => s.skip_value()?,
            }
            Ok(())
        })?;
        Ok(Some(meta))
    }

    /// Any value, kept as its range (`null` as absent).
    fn raw_field(&mut self, first: u8) -> R<Option<Span>> {
        let start = self.i;
        self.skip_value()?;
        Ok((first != b'n').then_some(Span { start, end: self.i }))
    }

    /// A value of `arguments` at `depth`, refusing repeated keys at any depth.
    fn walk_unique(&mut self, depth: usize, soft: &mut Option<String>) -> R<()> {
        let first = self.value_start()?;
        match first {
            b'{' | b'[' if depth >= MAX_DEPTH => {
                if soft.is_none() {
                    *soft = Some("recursion limit exceeded in arguments".into());
                }
                self.skip_value()
            }
            b'{' => self.object(soft, "arguments", |s, _, _, soft| {
                s.walk_unique(depth + 1, soft)
            }),
            b'[' => {
                self.i += 1;
                self.ws();
                if self.peek() == Some(b']') {
                    self.i += 1;
                    return Ok(());
                }
                loop {
                    self.walk_unique(depth + 1, soft)?;
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(());
                        }
                        None => return Err(self.error("EOF while parsing a list")),
                        Some(_) => return Err(self.error("expected `,` or `]`")),
                    }
                }
            }
            _ => self.skip_value(),
        }
    }

    /// Any JSON value, validated without recursion (so without a depth limit,
    /// as serde_json skips values it does not read).
    fn skip_value(&mut self) -> R<()> {
        let mut open: Vec<u8> = Vec::new();
        loop {
            match self.value_start()? {
                b'{' => {
                    self.i += 1;
                    self.ws();
                    if self.peek() == Some(b'}') {
                        self.i += 1;
                    } else {
                        open.push(b'}');
                        self.key_as(false)?;
                        self.expect(b':', "expected `:`")?;
                        continue;
                    }
                }
                b'[' => {
                    self.i += 1;
                    self.ws();
                    if self.peek() == Some(b']') {
                        self.i += 1;
                    } else {
                        open.push(b']');
                        continue;
                    }
                }
                b'"' => {
                    self.string_as(false)?;
                }
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'n' => self.literal(b"null")?,
                b'-' | b'0'..=b'9' => self.number()?,
                _ => return Err(self.error("expected value")),
            }
            // A value is complete: close what it ended, or go to the next one.
            loop {
                let Some(&close) = open.last() else {
                    return Ok(());
                };
                self.ws();
                match self.peek() {
                    Some(b',') => {
                        self.i += 1;
                        if close == b'}' {
                            self.key_as(false)?;
                            self.expect(b':', "expected `:`")?;
                        }
                        break;
                    }
                    Some(c) if c == close => {
                        self.i += 1;
                        open.pop();
                    }
                    None => return Err(self.error("EOF while parsing a value")),
                    Some(_) if close == b'}' => return Err(self.error("expected `,` or `}`")),
                    Some(_) => return Err(self.error("expected `,` or `]`")),
                }
            }
        }
    }

    fn literal(&mut self, word: &[u8]) -> R<()> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else if self.b.len() - self.i < word.len() && word.starts_with(&self.b[self.i..]) {
            self.i = self.b.len();
            Err(self.error("EOF while parsing a value"))
        } else {
            Err(self.error("expected ident"))
        }
    }

    /// A number as RFC 8259 writes it: `-?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?`.
    fn number(&mut self) -> R<()> {
        let digits = |s: &mut Self| {
            let from = s.i;
            while let Some(b'0'..=b'9') = s.peek() {
                s.i += 1;
            }
            s.i > from
        };
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                digits(self);
            }
            _ => return Err(self.error("invalid number")),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if !digits(self) {
                return Err(self.error("invalid number"));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if !digits(self) {
                return Err(self.error("invalid number"));
            }
        }
        Ok(())
    }

    /// A string at its `"`: validated (escapes, no raw control character),
    /// decoded when it holds an escape (a key, a fact: `decode`; a skipped
    /// value only when it could spell the reserved key), and checked for the
    /// reserved key and lone surrogates.
    fn string(&mut self) -> R<Str<'a>> {
        self.string_as(true)
    }

    fn string_as(&mut self, decode: bool) -> R<Str<'a>> {
        self.i += 1;
        let start = self.i;
        let mut decoded: Option<String> = None;
        let mut escaped = false;
        let mut run = start;
        loop {
            self.i = special_byte(self.b, self.i);
            if self.i >= self.b.len() {
                return Err(self.error("EOF while parsing a string"));
            }
            match self.b[self.i] {
                b'"' => {
                    let end = self.i;
                    self.i += 1;
                    if let Some(d) = &mut decoded {
                        d.push_str(&self.text[run..end]);
                    }
                    let reserved = match &decoded {
                        None if escaped => {
                            if may_decode_to_reserved(end - start) {
                                serde_json::from_str::<String>(&self.text[start - 1..=end])
                                    .ok()
                                    .and_then(|d| reserved(d.as_bytes()))
                            } else {
                                None
                            }
                        }
                        None => reserved(&self.b[start..end]),
                        Some(d) => reserved(d.as_bytes()),
                    };
                    if let Some(key) = reserved
                        && self.string_issue.is_none()
                    {
                        self.string_issue = Some(ScanError::ReservedKey(key));
                    }
                    return Ok(Str {
                        span: Span { start, end },
                        decoded,
                        text: self.text,
                    });
                }
                b'\\' => {
                    escaped = true;
                    if decode {
                        decoded
                            .get_or_insert_with(String::new)
                            .push_str(&self.text[run..self.i]);
                    }
                    self.i += 1;
                    let Some(escape) = self.peek() else {
                        return Err(self.error("EOF while parsing a string"));
                    };
                    self.i += 1;
                    let c = match escape {
                        b'"' => Some('"'),
                        b'\\' => Some('\\'),
                        b'/' => Some('/'),
                        b'b' => Some('\u{8}'),
                        b'f' => Some('\u{c}'),
                        b'n' => Some('\n'),
                        b'r' => Some('\r'),
                        b't' => Some('\t'),
                        b'u' => {
                            let unit = self.hex4()?;
                            match unit {
                                0xD800..=0xDBFF if self.b[self.i..].starts_with(b"\\u") => {
                                    let save = self.i;
                                    self.i += 2;
                                    let low = self.hex4()?;
                                    if (0xDC00..=0xDFFF).contains(&low) {
                                        char::from_u32(
                                            0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00),
                                        )
                                    } else {
                                        self.i = save; // read the next escape on its own
                                        None
                                    }
                                }
                                _ => char::from_u32(unit),
                            }
                        }
                        _ => {
                            self.i -= 1;
                            return Err(self.error("invalid escape"));
                        }
                    };
                    if c.is_none() && self.string_issue.is_none() {
                        self.string_issue = Some(ScanError::LoneSurrogate);
                    }
                    if let Some(d) = &mut decoded {
                        d.push(c.unwrap_or('\u{FFFD}'));
                    }
                    run = self.i;
                }
                _ => {
                    return Err(self.error(
                        "control character (\\u0000-\\u001F) found while parsing a string",
                    ));
                }
            }
        }
    }

    /// Four hex digits after `\u`.
    fn hex4(&mut self) -> R<u32> {
        let Some(digits) = self.b.get(self.i..self.i + 4) else {
            self.i = self.b.len();
            return Err(self.error("EOF while parsing a string"));
        };
        let mut n = 0u32;
        for &d in digits {
            let v = match d {
                b'0'..=b'9' => d - b'0',
                b'a'..=b'f' => d - b'a' + 10,
                b'A'..=b'F' => d - b'A' + 10,
                _ => return Err(self.error("invalid escape")),
            };
            n = n * 16 + u32::from(v);
        }
        self.i += 4;
        Ok(n)
    }
}

/// The index of the first `"`, `\\` or control character at or after `i`
/// (`b.len()` if none): eight bytes at a time, as serde_json scans strings.
fn special_byte(b: &[u8], mut i: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // The lowest byte flagged is exact (higher ones may be borrow artefacts).
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    while let Some(chunk) = b.get(i..i + 8) {
        let w = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
        let found = zero(w ^ (ONES * u64::from(b'"')))
            | zero(w ^ (ONES * u64::from(b'\\')))
            | (w.wrapping_sub(ONES * 0x20) & !w & HIGHS);
        if found != 0 {
            return i + (found.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(&c) = b.get(i) {
        if c == b'"' || c == b'\\' || c < 0x20 {
            return i;
        }
        i += 1;
    }
    b.len()
}
