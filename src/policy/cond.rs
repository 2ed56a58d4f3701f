//! Conditions on a call, one vocabulary for every policy format.
//!
//! A leaf is `{path, op, value}`: `path` is `args.a.b` (array indices as
//! segments: `args.items.0`) or one of the facts `agent`, `upstream`,
//! `session`, `tool`; `op` is one of [`OPS`]. A list of conditions is ANDed;
//! `{"any": [...]}`, `{"all": [...]}` and `{"not": ...}` group the rest.
//!
//! Conditions are compiled once per load (paths split, regexes compiled) and
//! evaluated against [`Facts`], which parses the call's arguments only when a
//! condition first reads them.

use std::borrow::Cow;
use std::cell::OnceCell;

use serde_json::Value;

use crate::suggest::suggestion;

/// Every operator, as written in policy files.
pub const OPS: [&str; 11] = [
    "eq", "neq", "in", "not_in", "lt", "lte", "gt", "gte", "regex", "contains", "exists",
];

/// A compiled condition.
#[derive(Debug, Clone)]
pub enum Cond {
    /// Every member holds (an empty list always holds).
    All(Vec<Cond>),
    /// At least one member holds.
    Any(Vec<Cond>),
    Not(Box<Cond>),
    Leaf(Box<Leaf>),
}

/// `{path, op, value}`.
#[derive(Debug, Clone)]
pub struct Leaf {
    path: Path,
    op: Op,
    value: Value,
    /// Compiled once when `op` is `regex`.
    regex: Option<regex::Regex>,
    /// `args.amount gte 100`, for audit rows and lint messages.
    text: String,
}

#[derive(Debug, Clone)]
enum Path {
    Agent,
    Upstream,
    Session,
    Tool,
    Args(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Neq,
    In,
    NotIn,
    Lt,
    Lte,
    Gt,
    Gte,
    Regex,
    Contains,
    Exists,
}

/// What conditions can look at for one call.
pub struct Facts<'a> {
    pub tool: &'a str,
    /// The raw JSON of `params.arguments`, as the agent sent it.
    pub arguments: Option<&'a str>,
    pub agent: &'a str,
    pub upstream: &'a str,
    pub session: &'a str,
    /// The annotations the tool's server declared (for `annotations` defaults).
    pub hints: Option<super::Hints>,
    parsed: OnceCell<Option<Value>>,
}

impl<'a> Facts<'a> {
    pub fn new(
        tool: &'a str,
        arguments: Option<&'a str>,
        agent: &'a str,
        upstream: &'a str,
        session: &'a str,
    ) -> Facts<'a> {
        Facts {
            tool,
            arguments,
            agent,
            upstream,
            session,
            hints: None,
            parsed: OnceCell::new(),
        }
    }

    /// The same facts, with the hints the tool's server declared.
    pub fn with_hints(mut self, hints: Option<super::Hints>) -> Facts<'a> {
        self.hints = hints;
        self
    }

    /// The arguments as a JSON value, parsed on first use (unreadable: none).
    fn args(&self) -> Option<&Value> {
        self.parsed
            .get_or_init(|| self.arguments.and_then(|a| serde_json::from_str(a).ok()))
            .as_ref()
    }
}

impl Cond {
    /// Compiles a list of conditions (ANDed).
    pub fn compile_list(items: &[Value]) -> Result<Cond, String> {
        let mut all = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            all.push(Cond::compile(item).map_err(|e| format!("conditions[{i}]: {e}"))?);
        }
        Ok(match all.len() {
            1 => all.pop().expect("one item"),
            _ => Cond::All(all),
        })
    }

    /// Compiles one condition: a leaf or an `any` / `all` / `not` group.
    pub fn compile(item: &Value) -> Result<Cond, String> {
        let Some(map) = item.as_object() else {
            return Err(format!(
                "a condition is an object `{{path, op, value}}` or a group `any` / `all` / `not`, got {item}"
            ));
        };
        for group in ["any", "all", "not"] {
            let Some(members) = map.get(group) else {
                continue;
            };
            if map.len() != 1 {
                return Err(format!("a `{group}` group has no other keys"));
            }
            let list = match members {
                Value::Array(list) => Cond::compile_list(list),
                Value::Object(_) if group == "not" => Cond::compile(members),
                _ => Err(format!("`{group}` takes a list of conditions")),
            }
            .map_err(|e| format!("{group}: {e}"))?;
            return Ok(match group {
                "not" => Cond::Not(Box::new(list)),
                "any" => match list {
                    Cond::All(members) => Cond::Any(members),
                    one => Cond::Any(vec![one]),
                },
                _ => list,
            });
        }
        let known = ["path", "op", "value"];
        if let Some(key) = map.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(format!(
                "unknown key `{key}` in a condition{}",
                hint(key, &known)
            ));
        }
        let path_text = map
            .get("path")
            .and_then(Value::as_str)
            .ok_or("a condition needs a string `path` (e.g. \"args.amount\")")?;
        let op_text = map
            .get("op")
            .and_then(Value::as_str)
            .ok_or("a condition needs a string `op`")?;
        let op = parse_op(op_text).ok_or_else(|| {
            format!(
                "unknown op `{op_text}`: expected one of {}{}",
                OPS.join(", "),
                hint(op_text, &OPS)
            )
        })?;
        let path = parse_path(path_text)?;
        let value = match (map.get("value"), op) {
            (Some(v), _) => v.clone(),
            (None, Op::Exists) => Value::Bool(true),
            (None, _) => return Err(format!("op `{op_text}` needs a `value`")),
        };
        let mut regex = None;
        match op {
            Op::In | Op::NotIn if !value.is_array() => {
                return Err(format!("op `{op_text}` needs a list `value`"));
            }
            Op::Lt | Op::Lte | Op::Gt | Op::Gte if !(value.is_number() || value.is_string()) => {
                return Err(format!("op `{op_text}` needs a number or string `value`"));
            }
            Op::Exists if !value.is_boolean() => {
                return Err("op `exists` takes `value: true` or `false`".into());
            }
            Op::Regex => {
                let pattern = value.as_str().ok_or("op `regex` needs a string `value`")?;
                regex = Some(
                    regex::Regex::new(pattern)
                        .map_err(|e| format!("bad regex `{pattern}`: {e}"))?,
                );
            }
            _ => {}
        }
        let text = format!("{path_text} {op_text} {value}");
        Ok(Cond::Leaf(Box::new(Leaf {
            path,
            op,
            value,
            regex,
            text,
        })))
    }

    /// Whether the condition holds for this call.
    pub fn holds(&self, facts: &Facts<'_>) -> bool {
        match self {
            Cond::All(members) => members.iter().all(|c| c.holds(facts)),
            Cond::Any(members) => members.iter().any(|c| c.holds(facts)),
            Cond::Not(inner) => !inner.holds(facts),
            Cond::Leaf(leaf) => leaf.holds(facts),
        }
    }

    /// Human-readable form: `args.amount gte 100 and agent eq "ci"`.
    pub fn describe(&self) -> String {
        let join = |members: &[Cond], sep: &str| {
            members
                .iter()
                .map(Cond::describe)
                .collect::<Vec<_>>()
                .join(sep)
        };
        match self {
            Cond::All(members) if members.is_empty() => "always".into(),
            Cond::All(members) => join(members, " and "),
            Cond::Any(members) => format!("any({})", join(members, ", ")),
            Cond::Not(inner) => format!("not({})", inner.describe()),
            Cond::Leaf(leaf) => leaf.text.clone(),
        }
    }

    /// The condition in the policy files' own vocabulary (`{path, op,
    /// value}` leaves, `all` / `any` / `not` groups): compiling the result
    /// gives back the same condition.
    pub fn to_json(&self) -> Value {
        let list = |members: &[Cond]| Value::Array(members.iter().map(Cond::to_json).collect());
        match self {
            Cond::All(members) => serde_json::json!({ "all": list(members) }),
            Cond::Any(members) => serde_json::json!({ "any": list(members) }),
            Cond::Not(inner) => serde_json::json!({ "not": inner.to_json() }),
            Cond::Leaf(leaf) => serde_json::json!({
                "path": leaf.path.text(),
                "op": leaf.op.text(),
                "value": leaf.value,
            }),
        }
    }

    /// Whether the condition is the empty list, which always holds.
    pub fn is_always(&self) -> bool {
        matches!(self, Cond::All(m) if m.is_empty())
    }
}

impl Leaf {
    fn holds(&self, facts: &Facts<'_>) -> bool {
        let actual = self.resolve(facts);
        let Some(actual) = actual else {
            // A missing value fails every operator except `exists: false`.
            return self.op == Op::Exists && self.value == Value::Bool(false);
        };
        let v = &self.value;
        match self.op {
            Op::Exists => v == &Value::Bool(true),
            Op::Eq => same(&actual, v),
            Op::Neq => !same(&actual, v),
            Op::In => v
                .as_array()
                .is_some_and(|l| l.iter().any(|x| same(&actual, x))),
            Op::NotIn => v
                .as_array()
                .is_some_and(|l| !l.iter().any(|x| same(&actual, x))),
            Op::Lt | Op::Lte | Op::Gt | Op::Gte => {
                let Some(order) = compare(&actual, v) else {
                    return false;
                };
                match self.op {
                    Op::Lt => order.is_lt(),
                    Op::Lte => order.is_le(),
                    Op::Gt => order.is_gt(),
                    _ => order.is_ge(),
                }
            }
            Op::Regex => match (&*actual, &self.regex) {
                (Value::String(s), Some(re)) => re.is_match(s),
                _ => false,
            },
            Op::Contains => match (&*actual, v) {
                (Value::String(s), Value::String(needle)) => s.contains(needle.as_str()),
                (Value::Array(items), _) => items.iter().any(|x| same(x, v)),
                _ => false,
            },
        }
    }

    fn resolve<'f>(&self, facts: &'f Facts<'_>) -> Option<Cow<'f, Value>> {
        let fact = |s: &str| Some(Cow::Owned(Value::String(s.to_owned())));
        match &self.path {
            Path::Agent => fact(facts.agent),
            Path::Upstream => fact(facts.upstream),
            Path::Session => fact(facts.session),
            Path::Tool => fact(facts.tool),
            Path::Args(segments) => {
                let mut at = facts.args()?;
                for segment in segments {
                    at = match at {
                        Value::Object(map) => map.get(segment)?,
                        Value::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
                        _ => return None,
                    };
                }
                Some(Cow::Borrowed(at))
            }
        }
    }
}

fn hint(got: &str, known: &[&str]) -> String {
    let known: Vec<String> = known.iter().map(|k| (*k).to_owned()).collect();
    suggestion(got, &known)
}

impl Path {
    fn text(&self) -> String {
        match self {
            Path::Agent => "agent".into(),
            Path::Upstream => "upstream".into(),
            Path::Session => "session".into(),
            Path::Tool => "tool".into(),
            Path::Args(segments) if segments.is_empty() => "args".into(),
            Path::Args(segments) => format!("args.{}", segments.join(".")),
        }
    }
}

impl Op {
    fn text(self) -> &'static str {
        match self {
            Op::Eq => "eq",
            Op::Neq => "neq",
            Op::In => "in",
            Op::NotIn => "not_in",
            Op::Lt => "lt",
            Op::Lte => "lte",
            Op::Gt => "gt",
            Op::Gte => "gte",
            Op::Regex => "regex",
            Op::Contains => "contains",
            Op::Exists => "exists",
        }
    }
}

fn parse_op(op: &str) -> Option<Op> {
    Some(match op {
        "eq" => Op::Eq,
        "neq" => Op::Neq,
        "in" => Op::In,
        "not_in" => Op::NotIn,
        "lt" => Op::Lt,
        "lte" => Op::Lte,
        "gt" => Op::Gt,
        "gte" => Op::Gte,
        "regex" => Op::Regex,
        "contains" => Op::Contains,
        "exists" => Op::Exists,
        _ => return None,
    })
}

fn parse_path(path: &str) -> Result<Path, String> {
    Ok(match path {
        "agent" => Path::Agent,
        "upstream" => Path::Upstream,
        "session" => Path::Session,
        "tool" => Path::Tool,
        "args" => Path::Args(Vec::new()),
        _ => {
            let Some(rest) = path.strip_prefix("args.") else {
                return Err(format!(
                    "unknown path `{path}`: a path is `args.<name>[.<name or index>…]`, `agent`, `upstream`, `session` or `tool`"
                ));
            };
            let segments: Vec<String> = rest.split('.').map(str::to_owned).collect();
            if segments.iter().any(String::is_empty) {
                return Err(format!("path `{path}` has an empty segment"));
            }
            Path::Args(segments)
        }
    })
}

/// JSON equality, with numbers compared by value (`100` equals `100.0`).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

/// Numbers by value, strings lexically; anything else is not ordered.
fn compare(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    }
}
