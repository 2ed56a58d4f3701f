//! A tiny, fast MCP server for benchmarks: the upstream that costs almost
//! nothing, so that what a benchmark shows is the gateway's own cost.
//!
//! ```text
//! cargo build --release --example echo_server
//! echo_server http [ADDR] [--threads N]   # Streamable HTTP at POST /mcp (JSON answers)
//! echo_server stdio                        # newline-delimited JSON-RPC on stdin/stdout
//! ```
//!
//! In HTTP mode the first line on stdout is `listening on http://ADDR` (ADDR
//! may use port 0). Both protocol eras are served: `initialize` answers with
//! an `Mcp-Session-Id` (handshake era); a request whose
//! `params._meta["io.modelcontextprotocol/protocolVersion"]` is set needs no
//! session (stateless era). Any other request without a session is a 400.
//!
//! Tools: `echo` (and `search`, the same) answers its arguments as text; `stamp` answers the wall-clock
//! time (ns since the Unix epoch) at which the call arrived, so a benchmark can
//! tell when a released call reached the upstream.

use std::borrow::Cow;
use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use serde_json::value::RawValue;

const VERSIONS: [&str; 5] = [
    "2024-11-05",
    "2025-03-26",
    "2025-06-18",
    "2025-11-25",
    "2026-07-28",
];
const DEFAULT_VERSION: &str = "2025-06-18";
const META_VERSION: &str = "io.modelcontextprotocol/protocolVersion";

const TOOLS: &str = r#"{"tools":[{"name":"echo","description":"Answers its arguments as text.","inputSchema":{"type":"object"}},{"name":"stamp","description":"Answers the time the call arrived (ns since the Unix epoch).","inputSchema":{"type":"object"}},{"name":"search","description":"Answers its arguments as text (a second allowed tool, rate-limited by the load benchmark's policy).","inputSchema":{"type":"object"}}]}"#;

#[derive(Deserialize)]
struct Request<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    method: Option<Cow<'a, str>>,
    #[serde(borrow)]
    params: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
struct Params<'a> {
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    arguments: Option<&'a RawValue>,
    #[serde(rename = "protocolVersion", borrow)]
    protocol_version: Option<Cow<'a, str>>,
    #[serde(rename = "_meta", borrow)]
    meta: Option<std::collections::HashMap<Cow<'a, str>, &'a RawValue>>,
}

/// What one incoming message asks of the server.
struct Answer {
    /// The JSON-RPC answer, or `None` for notifications and responses.
    body: Option<String>,
    initialize: bool,
    stateless: bool,
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn result(id: &str, result: &str) -> String {
    format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{result}}}"#)
}

fn error(id: &str, code: i64, message: &str) -> String {
    let message = serde_json::to_string(message).unwrap_or_else(|_| "\"error\"".into());
    format!(r#"{{"jsonrpc":"2.0","id":{id},"error":{{"code":{code},"message":{message}}}}}"#)
}

fn text_result(id: &str, text: &str) -> String {
    let text = serde_json::to_string(text).unwrap_or_else(|_| "\"\"".into());
    result(
        id,
        &format!(r#"{{"content":[{{"type":"text","text":{text}}}],"isError":false}}"#),
    )
}

fn answer(body: &[u8]) -> Answer {
    let arrived = now_ns();
    let mut out = Answer {
        body: None,
        initialize: false,
        stateless: false,
    };
    let Ok(request) = serde_json::from_slice::<Request<'_>>(body) else {
        out.body = Some(error("null", -32700, "parse error"));
        return out;
    };
    let params: Params<'_> = request
        .params
        .and_then(|p| serde_json::from_str(p.get()).ok())
        .unwrap_or_default();
    out.stateless = params
        .meta
        .as_ref()
        .is_some_and(|m| m.contains_key(META_VERSION));
    let (Some(id), Some(method)) = (request.id, request.method) else {
        return out; // a notification or a response: nothing to answer
    };
    let id = id.get();
    out.body = Some(match method.as_ref() {
        "initialize" => {
            out.initialize = true;
            let asked = params
                .protocol_version
                .as_deref()
                .unwrap_or(DEFAULT_VERSION);
            let version = if VERSIONS.contains(&asked) {
                asked
            } else {
                DEFAULT_VERSION
            };
            result(
                id,
                &format!(
                    r#"{{"protocolVersion":"{version}","capabilities":{{"tools":{{}}}},"serverInfo":{{"name":"airlock-bench-echo","version":"1.0.0"}}}}"#
                ),
            )
        }
        "ping" => result(id, "{}"),
        "tools/list" => result(id, TOOLS),
        "tools/call" => match params.name.as_deref() {
            Some("echo" | "search") => {
                text_result(id, params.arguments.map(RawValue::get).unwrap_or("{}"))
            }
            Some("stamp") => text_result(id, &arrived.to_string()),
            Some(other) => error(id, -32602, &format!("Unknown tool: {other}")),
            None => error(id, -32602, "tools/call needs a tool name"),
        },
        other => error(id, -32601, &format!("Method not found: {other}")),
    });
    out
}

static SESSIONS: AtomicU64 = AtomicU64::new(1);

async fn post_mcp(headers: HeaderMap, body: Bytes) -> Response {
    let answer = answer(&body);
    let has_session = headers.contains_key("mcp-session-id");
    if !answer.initialize && !answer.stateless && !has_session {
        let body = error(
            "null",
            -32000,
            "Bad Request: Mcp-Session-Id header is required",
        );
        return (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response();
    }
    let Some(body) = answer.body else {
        return StatusCode::ACCEPTED.into_response();
    };
    let mut response = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    if answer.initialize && !answer.stateless {
        let sid = format!("echo-{:016x}", SESSIONS.fetch_add(1, Ordering::Relaxed));
        if let Ok(v) = HeaderValue::from_str(&sid) {
            response.headers_mut().insert("mcp-session-id", v);
        }
    }
    response
}

async fn get_mcp() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(header::ALLOW, "POST, DELETE")],
    )
        .into_response()
}

fn serve_http(addr: &str, threads: usize) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        println!("listening on http://{}", listener.local_addr()?);
        std::io::stdout().flush()?;
        let app = Router::new().route(
            "/mcp",
            post(post_mcp)
                .get(get_mcp)
                .delete(|| async { StatusCode::OK }),
        );
        axum::serve(listener, app).await
    })
}

fn serve_stdio() -> std::io::Result<()> {
    let mut input = std::io::BufReader::with_capacity(1 << 16, std::io::stdin());
    let stdout = std::io::stdout();
    let mut output = std::io::BufWriter::new(stdout.lock());
    let mut line = Vec::with_capacity(4096);
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if let Some(body) = answer(&line).body {
            output.write_all(body.as_bytes())?;
            output.write_all(b"\n")?;
        }
        // Several requests may be in flight: answer them all, then flush once.
        if input.buffer().is_empty() {
            output.flush()?;
        }
    }
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let threads = args
        .iter()
        .position(|a| a == "--threads")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(2);
    match args.first().map(String::as_str) {
        Some("http") => {
            let addr = args
                .get(1)
                .filter(|a| !a.starts_with("--"))
                .map(String::as_str);
            serve_http(addr.unwrap_or("127.0.0.1:0"), threads)
        }
        Some("stdio") => serve_stdio(),
        _ => {
            eprintln!("usage: echo_server http [ADDR] [--threads N] | echo_server stdio");
            std::process::exit(2);
        }
    }
}
