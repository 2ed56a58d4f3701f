//! `airlock check POLICY --against <command|URL>`: what would this policy do
//! to that server's tools? Connects as a plain MCP client (handshake era),
//! lists the tools, and shows per tool its annotations, a risk read from
//! them, the outcome the policy gives it and the rule that decides.

use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::policy::{Action, HINTS, Hints, Policy, Verdict};

const PROTOCOL: &str = "2025-11-25";
const TIMEOUT: Duration = Duration::from_secs(30);

/// One tool as the policy sees it.
pub struct Row {
    pub tool: String,
    pub hints: Hints,
    pub risk: &'static str,
    pub outcome: String,
    pub rule: String,
}

/// Lists the tools of `target` (a URL, or a command line split on blanks).
pub async fn list_tools(target: &str) -> anyhow::Result<Vec<Value>> {
    tokio::time::timeout(TIMEOUT, async {
        if target.starts_with("http://") || target.starts_with("https://") {
            list_http(target).await
        } else {
            list_stdio(target).await
        }
    })
    .await
    .with_context(|| {
        format!(
            "{target}: no tools/list answer within {} s",
            TIMEOUT.as_secs()
        )
    })?
}

/// The policy's view of every listed tool.
pub fn rows(policy: &Policy, tools: &[Value]) -> Vec<Row> {
    tools
        .iter()
        .filter_map(|t| {
            let tool = t.get("name")?.as_str()?.to_owned();
            let hints = t
                .get("annotations")
                .and_then(|a| serde::Deserialize::deserialize(a).ok())
                .unwrap_or_default();
            let (outcome, rule) = outcome(policy, &tool, &hints);
            Some(Row {
                risk: risk(&hints),
                tool,
                hints,
                outcome,
                rule,
            })
        })
        .collect()
}

/// The risk class of a tool, from its annotations, first match wins:
/// `readOnlyHint: true` → `read-only`; `destructiveHint: true` →
/// `destructive`; `openWorldHint: true` → `open-world`; else `unknown`.
/// Hints are the server's claims, not proof; absent hints are not assumed
/// (the MCP defaults would call every unannotated tool destructive).
pub fn risk(hints: &Hints) -> &'static str {
    if hints.read_only_hint == Some(true) {
        "read-only"
    } else if hints.destructive_hint == Some(true) {
        "destructive"
    } else if hints.open_world_hint == Some(true) {
        "open-world"
    } else {
        "unknown"
    }
}

/// `allow`, `deny`, `require_approval`, `hidden`, or `depends on arguments
/// (allow | require_approval)` for rules with conditions; and the deciding rule.
pub fn outcome(policy: &Policy, tool: &str, hints: &Hints) -> (String, String) {
    let (mut possible, rule) = match policy.decide(tool) {
        Verdict::Hidden => return ("hidden".into(), "hide".into()),
        Verdict::Default(default) => match policy.by_annotations(Some(hints)) {
            Some((action, hint)) => (vec![action], format!("annotations.{hint}")),
            None => (vec![default], "default".into()),
        },
        Verdict::Rule(rule) => {
            let mut possible: Vec<Action> = Vec::new();
            let mut reaches_end = true;
            for branch in &rule.branches {
                if !possible.contains(&branch.action) {
                    possible.push(branch.action);
                }
                if branch.when.is_always() {
                    reaches_end = false;
                    break;
                }
            }
            if reaches_end && !possible.contains(&rule.action) {
                possible.push(rule.action);
            }
            (possible, rule.key.clone())
        }
    };
    // The policy-wide checks (`all_tools`, Intercept's `"*"` rules) may deny
    // what the tool's own rule lets through.
    let guarded = policy
        .all_tools
        .as_ref()
        .is_some_and(|g| !g.branches.is_empty());
    if guarded && possible.iter().any(|a| *a != Action::Deny) && !possible.contains(&Action::Deny) {
        possible.push(Action::Deny);
    }
    let names: Vec<&str> = possible.iter().map(|a| a.as_str()).collect();
    let outcome = match names.as_slice() {
        [one] => (*one).to_owned(),
        many => format!("depends on arguments ({})", many.join(" | ")),
    };
    (outcome, rule)
}

/// Declared-true hints, comma-separated (`-` when none).
fn hint_names(hints: &Hints) -> String {
    let names: Vec<&str> = HINTS
        .iter()
        .copied()
        .filter(|h| hints.declares(h))
        .collect();
    if names.is_empty() {
        "-".into()
    } else {
        names.join(",")
    }
}

/// A plain-text table, one tool per line.
pub fn table(rows: &[Row]) -> String {
    let header = ["TOOL", "ANNOTATIONS", "RISK", "OUTCOME", "RULE"];
    let cells: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            [
                r.tool.clone(),
                hint_names(&r.hints),
                r.risk.to_owned(),
                r.outcome.clone(),
                r.rule.clone(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cols: [&str; 5]| {
        let mut out = String::new();
        for (i, c) in cols.iter().enumerate() {
            if i == 4 {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        out.trim_end().to_owned()
    };
    let mut out = vec![line(header)];
    out.extend(cells.iter().map(|r| line(r.each_ref().map(String::as_str))));
    out.join("\n")
}

/// The same rows as JSON (`--format json`).
pub fn json_rows(rows: &[Row]) -> Value {
    Value::Array(
        rows.iter()
            .map(|r| {
                let declared: serde_json::Map<String, Value> = HINTS
                    .iter()
                    .filter(|h| r.hints.declares(h))
                    .map(|h| ((*h).to_owned(), Value::Bool(true)))
                    .collect();
                json!({"tool": r.tool, "annotations": declared, "risk": r.risk,
                       "outcome": r.outcome, "rule": r.rule})
            })
            .collect(),
    )
}

fn initialize(id: u64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": {
        "protocolVersion": PROTOCOL, "capabilities": {},
        "clientInfo": {"name": "airlock-check", "version": env!("CARGO_PKG_VERSION")}}})
}

fn list_request(id: u64, cursor: Option<&str>) -> Value {
    match cursor {
        Some(c) => {
            json!({"jsonrpc": "2.0", "id": id, "method": "tools/list", "params": {"cursor": c}})
        }
        None => json!({"jsonrpc": "2.0", "id": id, "method": "tools/list"}),
    }
}

const INITIALIZED: &str = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;

/// Appends one page's tools; returns the next cursor.
fn take_page(answer: &Value, tools: &mut Vec<Value>) -> anyhow::Result<Option<String>> {
    if let Some(error) = answer.get("error") {
        bail!("tools/list failed: {error}");
    }
    let result = answer
        .get("result")
        .context("tools/list answer has no result")?;
    if let Some(list) = result.get("tools").and_then(Value::as_array) {
        tools.extend(list.iter().cloned());
    }
    Ok(result
        .get("nextCursor")
        .and_then(Value::as_str)
        .map(str::to_owned))
}

async fn list_stdio(command: &str) -> anyhow::Result<Vec<Value>> {
    let mut words = command.split_whitespace();
    let program = words.next().context("--against: empty command")?;
    let mut child = tokio::process::Command::new(program)
        .args(words)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start `{command}`"))?;
    let mut stdin = child.stdin.take().context("no stdin")?;
    let mut lines = BufReader::new(child.stdout.take().context("no stdout")?).lines();
    let mut send = async |message: String| -> anyhow::Result<()> {
        stdin.write_all(message.as_bytes()).await?;
        stdin.write_all(b"\n").await?;
        stdin.flush().await?;
        Ok(())
    };
    send(initialize(1).to_string()).await?;
    let answer = |id: u64, line: &str| -> Option<Value> {
        let v: Value = serde_json::from_str(line).ok()?;
        (v.get("id") == Some(&json!(id)) && v.get("method").is_none()).then_some(v)
    };
    let mut wait = async |id: u64| -> anyhow::Result<Value> {
        while let Some(line) = lines.next_line().await? {
            if let Some(v) = answer(id, &line) {
                return Ok(v);
            }
        }
        bail!("`{command}` closed its output before answering")
    };
    let init = wait(1).await?;
    if let Some(error) = init.get("error") {
        bail!("initialize failed: {error}");
    }
    send(INITIALIZED.to_owned()).await?;
    let mut tools = Vec::new();
    let mut cursor: Option<String> = None;
    for id in 2.. {
        send(list_request(id, cursor.as_deref()).to_string()).await?;
        cursor = take_page(&wait(id).await?, &mut tools)?;
        if cursor.is_none() || id > 100 {
            break;
        }
    }
    drop(child);
    Ok(tools)
}

async fn list_http(url: &str) -> anyhow::Result<Vec<Value>> {
    let client = reqwest::Client::new();
    let mut session: Option<String> = None;
    let post = async |body: &Value,
                      session: &Option<String>|
           -> anyhow::Result<(Option<String>, Option<Value>)> {
        let mut request = client
            .post(url)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", PROTOCOL)
            .json(body);
        if let Some(s) = session {
            request = request.header("mcp-session-id", s);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach {url}"))?;
        let status = response.status();
        let sid = response
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let is_sse = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.starts_with("text/event-stream"));
        let text = response.text().await?;
        if !status.is_success() {
            bail!("{url} answered HTTP {status}: {text}");
        }
        let id = body.get("id");
        let found = if is_sse {
            text.lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
                .find(|v| id.is_some() && v.get("id") == id && v.get("method").is_none())
        } else {
            serde_json::from_str(&text).ok()
        };
        Ok((sid, found))
    };
    let (sid, init) = post(&initialize(1), &session).await?;
    session = sid;
    let init = init.context("no answer to initialize")?;
    if let Some(error) = init.get("error") {
        bail!("initialize failed: {error}");
    }
    let initialized: Value = serde_json::from_str(INITIALIZED)?;
    post(&initialized, &session).await?;
    let mut tools = Vec::new();
    let mut cursor: Option<String> = None;
    for id in 2.. {
        let (_, answer) = post(&list_request(id, cursor.as_deref()), &session).await?;
        cursor = take_page(&answer.context("no answer to tools/list")?, &mut tools)?;
        if cursor.is_none() || id > 100 {
            break;
        }
    }
    if let Some(s) = &session {
        let _ = client.delete(url).header("mcp-session-id", s).send().await;
    }
    Ok(tools)
}
