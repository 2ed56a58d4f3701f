//! The official SDK servers as upstreams (what users run): the Python SDK's
//! `MCPServer` (`tests/servers/testserver.py`, mcp 2.x) over Streamable HTTP,
//! which answers `tools/call` as an event stream, and over stdio; the
//! TypeScript SDK's server (`server-everything` over Streamable HTTP, through
//! `tests/node/servers/everything-http.mjs`). Sequential allowed calls,
//! direct vs through Airlock, interleaved in rounds in one run; for the HTTP
//! upstreams also the upstream connections Airlock opened while measuring
//! (`airlock_upstream_connections_opened_total`: 0 when every connection is
//! reused) and the JSON reads of the agent's messages per call
//! (`airlock_body_parses_total`: 1 when each message is parsed once).
//!
//! Environment: `BENCH_SDK_PYTHON` (a Python with `mcp` 2.x; default
//! `~/.cache/airlock-venv/bin/python`), `node` on `PATH` with
//! `tests/node/node_modules` installed. A missing one skips its upstream.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::Opts;
use crate::TOKEN;
use crate::client::{Http, Mcp, StdioMcp, bad, call_body, rpc_answer};
use crate::procs::Proc;
use crate::scenarios::{AIRLOCK_PATH, ALLOW_POLICY, Upstream, added, airlock, config, summary};

/// Upper bound on the whole sequential series of this scenario.
const TIME_LIMIT: Duration = Duration::from_secs(300);

const TESTSERVER: &str = "tests/servers/testserver.py";
const EVERYTHING: &str = "tests/node/servers/everything-http.mjs";

fn python() -> Option<PathBuf> {
    let p = std::env::var_os("BENCH_SDK_PYTHON")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".cache/airlock-venv/bin/python"))
        })?;
    p.exists().then_some(p)
}

/// One measured path: a client and the arguments its server's `echo` takes.
struct Target {
    name: String,
    client: Client,
    /// Where an HTTP client connects, once every server has started (uvicorn
    /// closes a keep-alive connection after 5 s idle; starting node takes longer).
    connect: Option<(SocketAddr, &'static str)>,
    /// `echo`'s argument object for call `n` (the Python SDK server takes
    /// `text`, server-everything `message`).
    args: fn(u64) -> String,
}

enum Client {
    Unconnected,
    Http(Mcp),
    Stdio(StdioMcp),
}

fn text_args(n: u64) -> String {
    format!(r#"{{"text":"hello from airlock-bench {n}"}}"#)
}

fn message_args(n: u64) -> String {
    format!(r#"{{"message":"hello from airlock-bench {n}"}}"#)
}

impl Target {
    async fn call(&mut self, n: u64) -> io::Result<()> {
        let args = (self.args)(n);
        match &mut self.client {
            Client::Http(m) => sdk_call(m, n, &args).await,
            Client::Stdio(s) => s.call("echo", &args).await,
            Client::Unconnected => Err(bad("not connected")),
        }
    }
}

/// One `echo` call whose answer is found by its id among the events (an SDK
/// server may send notifications on the same stream).
async fn sdk_call(m: &mut Mcp, id: u64, args: &str) -> io::Result<()> {
    let (head, body) = m.post(call_body(id, "echo", args).as_bytes()).await?;
    if head.status != 200 {
        return Err(bad(format!(
            "tools/call: HTTP {}: {}",
            head.status,
            String::from_utf8_lossy(&body)
        )));
    }
    let messages: Vec<Value> = if head.is_sse() {
        String::from_utf8_lossy(&body)
            .replace("\r\n", "\n")
            .split("\n\n")
            .filter_map(|event| {
                let data: Vec<&str> = event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(|d| d.strip_prefix(' ').unwrap_or(d))
                    .collect();
                serde_json::from_str(&data.join("\n")).ok()
            })
            .collect()
    } else {
        vec![serde_json::from_slice(&rpc_answer(&head, &body)?).map_err(|e| bad(e.to_string()))?]
    };
    let answer = messages
        .iter()
        .find(|v| v["id"] == json!(id) && v.get("method").is_none())
        .ok_or_else(|| bad(format!("no answer to call {id}")))?;
    if answer.get("error").is_some() || answer["result"]["isError"] == json!(true) {
        return Err(bad(format!("call {id} failed: {answer}")));
    }
    Ok(())
}

/// The counters of an Airlock instance this scenario reports.
#[derive(Clone, Copy)]
struct Counters {
    /// `airlock_upstream_connections_opened_total`
    connections_opened: u64,
    /// `airlock_body_parses_total`
    body_parses: u64,
}

/// Reads [`Counters`] from an Airlock instance's `/metrics`.
async fn counters(addr: SocketAddr) -> io::Result<Counters> {
    let mut http = Http::connect(addr).await?;
    let (_, body) = http.request("GET", "/metrics", &[], b"").await?;
    let text = String::from_utf8_lossy(&body);
    let read = |prefix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| bad(format!("no {prefix}in /metrics")))
    };
    Ok(Counters {
        connections_opened: read("airlock_upstream_connections_opened_total{upstream=\"echo\"} ")?,
        body_parses: read("airlock_body_parses_total ")?,
    })
}

/// Starts an HTTP SDK server and an Airlock in front of it.
fn http_pair(o: &Opts, name: &str, mut cmd: Command) -> io::Result<(Proc, Proc)> {
    let server = Proc::start(
        name,
        &mut cmd,
        &o.work.join(format!("{name}.log")),
        Some("LISTENING "),
    )?;
    let cfg = config(
        o,
        &format!("{name}_airlock"),
        Upstream::Url(server.addr()),
        ALLOW_POLICY,
        &o.work.join(format!("{name}.db")),
        true,
    )?;
    let gateway = airlock(o, &format!("{name}_airlock"), &cfg)?;
    Ok((server, gateway))
}

pub async fn sdk(o: &Opts) -> io::Result<Value> {
    let mut procs = Vec::new();
    let mut targets = Vec::new();
    let mut gateways = Vec::new();
    let mut out = serde_json::Map::new();
    // Short blocks: every client idles while the others run theirs, and
    // uvicorn closes a keep-alive connection idle for 5 s.
    let block = 100;
    let rounds = o.seq_rounds * 5;
    if let Some(py) = python() {
        let mut cmd = Command::new(&py);
        cmd.args([TESTSERVER, "http", "--port", "0"]);
        let (server, gateway) = http_pair(o, "python_http", cmd)?;
        targets.push(Target {
            name: "python_http direct".into(),
            client: Client::Unconnected,
            connect: Some((server.addr(), "/mcp")),
            args: text_args,
        });
        targets.push(Target {
            name: "python_http airlock".into(),
            client: Client::Unconnected,
            connect: Some((gateway.addr(), AIRLOCK_PATH)),
            args: text_args,
        });
        gateways.push(("python_http", gateway.addr()));
        procs.extend([server, gateway]);

        let command = vec![py.display().to_string(), TESTSERVER.into(), "stdio".into()];
        let cfg = config(
            o,
            "python_stdio",
            Upstream::Command(&command),
            ALLOW_POLICY,
            &o.work.join("python_stdio.db"),
            true,
        )?;
        let log = std::fs::File::create(o.work.join("python_stdio.log"))?;
        let airlock_cmd = vec![
            o.airlock.display().to_string(),
            "stdio".into(),
            "--config".into(),
            cfg.display().to_string(),
        ];
        targets.push(Target {
            name: "python_stdio direct".into(),
            client: Client::Stdio(StdioMcp::spawn(&command, &[], log.try_clone()?).await?),
            connect: None,
            args: text_args,
        });
        targets.push(Target {
            name: "python_stdio airlock".into(),
            client: Client::Stdio(
                StdioMcp::spawn(&airlock_cmd, &[("AIRLOCK_BENCH_TOKEN", TOKEN)], log).await?,
            ),
            connect: None,
            args: text_args,
        });
    } else {
        out.insert("python".into(), json!({"skipped": "no BENCH_SDK_PYTHON"}));
    }
    if std::path::Path::new("tests/node/node_modules/@modelcontextprotocol/server-everything")
        .exists()
    {
        let mut cmd = Command::new("node");
        cmd.args([EVERYTHING, "--port", "0"]);
        let (server, gateway) = http_pair(o, "typescript_http", cmd)?;
        targets.push(Target {
            name: "typescript_http direct".into(),
            client: Client::Unconnected,
            connect: Some((server.addr(), "/mcp")),
            args: message_args,
        });
        targets.push(Target {
            name: "typescript_http airlock".into(),
            client: Client::Unconnected,
            connect: Some((gateway.addr(), AIRLOCK_PATH)),
            args: message_args,
        });
        gateways.push(("typescript_http", gateway.addr()));
        procs.extend([server, gateway]);
    } else {
        out.insert(
            "typescript".into(),
            json!({"skipped": "tests/node/node_modules not installed"}),
        );
    }

    eprintln!(
        "[bench] sdk: sequential allowed tools/call to the SDK servers, direct vs through Airlock"
    );
    for t in targets.iter_mut() {
        if let Some((addr, path)) = t.connect {
            t.client = Client::Http(Mcp::connect(addr, path).await?);
        }
    }
    // Warm up in the same interleaved blocks as the measurement, so that no
    // keep-alive connection (the client's, or Airlock's to the upstream)
    // idles for longer than one round: one target after another, 300 calls
    // each, left the first idle for over 5 s on a slow day, and uvicorn
    // closed it.
    let warmup = o.seq_warmup.min(300) as u64;
    let mut n = 0u64;
    while n < warmup {
        let upto = (n + block as u64).min(warmup);
        for t in targets.iter_mut() {
            for k in n + 1..=upto {
                t.call(k)
                    .await
                    .map_err(|e| bad(format!("{} (warm-up): {e}", t.name)))?;
            }
        }
        n = upto;
    }
    let mut before = Vec::new();
    for (_, addr) in &gateways {
        before.push(counters(*addr).await?);
    }
    let mut samples = vec![Vec::with_capacity(rounds * block); targets.len()];
    let deadline = Instant::now() + TIME_LIMIT;
    let mut n = 1_000_000u64;
    'rounds: for _ in 0..rounds {
        for (k, t) in targets.iter_mut().enumerate() {
            for _ in 0..block {
                if Instant::now() > deadline {
                    break 'rounds;
                }
                n += 1;
                let started = Instant::now();
                t.call(n)
                    .await
                    .map_err(|e| bad(format!("{}: {e}", t.name)))?;
                samples[k].push(started.elapsed().as_nanos() as u64);
            }
        }
    }
    let mut moved = std::collections::HashMap::new();
    for ((name, addr), b) in gateways.iter().zip(before) {
        let after = counters(*addr).await?;
        moved.insert(
            (*name).to_owned(),
            Counters {
                connections_opened: after.connections_opened - b.connections_opened,
                body_parses: after.body_parses - b.body_parses,
            },
        );
    }
    let names: Vec<String> = targets.iter().map(|t| t.name.clone()).collect();
    for t in targets {
        if let Client::Stdio(s) = t.client {
            s.close().await;
        }
    }
    let s: Vec<Value> = samples.into_iter().map(summary).collect();
    for pair in names.chunks(2).zip(s.chunks(2)) {
        let (names, s) = pair;
        let upstream = names[0].split(' ').next().unwrap_or("?").to_owned();
        let mut v = json!({ "direct": s[0], "airlock": s[1], "added": added(&s[1], &s[0]) });
        if let Some(c) = moved.get(&upstream) {
            v["upstream_connections_opened"] = json!(c.connections_opened);
            // Every measured call through this instance is one agent message.
            let calls = s[1]["n"].as_u64().unwrap_or(0).max(1);
            v["body_parses_per_call"] = json!(c.body_parses as f64 / calls as f64);
        }
        out.insert(upstream, v);
    }
    drop(procs);
    Ok(Value::Object(out))
}
