//! The scenarios: sequential latency, throughput, audit on/off, peer proxies
//! (holds and the event websocket are in `holds`).

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::client::{Mcp, StdioMcp, bad};
use crate::procs::{self, Proc, TreeCpu};
use crate::{Opts, TOKEN};

/// Most calls one throughput client makes (the time limit usually ends it first).
const MAX_CALLS_PER_CLIENT: u64 = 50_000_000;
/// Upper bound on any one sequential series.
const SEQUENTIAL_TIME_LIMIT: Duration = Duration::from_secs(300);

/// The policy of the allowed-call benchmarks: the called tool is allowed by
/// an exact rule among globs, as in a real deployment.
pub const ALLOW_POLICY: &str = r#"{"version":"1","default":"deny","hide":["debug_*"],
  "rules":{
    "echo":{"action":"allow"},
    "read_*":{"action":"allow"},
    "list_*":{"action":"allow"},
    "search_*":{"action":"allow","rate_limit":{"max":1000,"window":60}},
    "write_*":{"action":"require_approval","reason":"changes data"},
    "delete_*":{"action":"deny","reason":"destructive"},
    "stamp":{"action":"allow"}}}"#;

/// `stamp` needs approval: the holds scenarios.
pub const HOLD_POLICY: &str = r#"{"version":"1","default":"allow",
  "rules":{"stamp":{"action":"require_approval","reason":"benchmark hold","approval":{"timeout":3600,"on_timeout":"deny"}},
           "blocked":{"action":"deny","reason":"answered by Airlock itself"}}}"#;

pub fn args(n: u64) -> String {
    format!(r#"{{"text":"hello from airlock-bench","n":{n}}}"#)
}

fn say(what: impl AsRef<str>) {
    eprintln!("[bench] {}", what.as_ref());
}

/// Latency summary in microseconds.
pub fn summary(mut ns: Vec<u64>) -> Value {
    if ns.is_empty() {
        return json!({ "n": 0 });
    }
    ns.sort_unstable();
    let n = ns.len();
    let at = |q: f64| {
        let i = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
        us(ns[i])
    };
    let mean = ns.iter().map(|&v| v as f64).sum::<f64>() / n as f64 / 1000.0;
    json!({
        "n": n,
        "mean_us": (mean * 10.0).round() / 10.0,
        "p50_us": at(0.50),
        "p90_us": at(0.90),
        "p99_us": at(0.99),
        "p999_us": at(0.999),
        "max_us": us(ns[n - 1]),
    })
}

fn us(ns: u64) -> f64 {
    (ns as f64 / 100.0).round() / 10.0
}

fn diff(a: &Value, b: &Value, key: &str) -> Value {
    match (a[key].as_f64(), b[key].as_f64()) {
        (Some(a), Some(b)) => json!(((a - b) * 10.0).round() / 10.0),
        _ => Value::Null,
    }
}

/// The differences of two latency summaries (through minus direct).
pub fn added(through: &Value, direct: &Value) -> Value {
    json!({
        "p50_us": diff(through, direct, "p50_us"),
        "p90_us": diff(through, direct, "p90_us"),
        "p99_us": diff(through, direct, "p99_us"),
        "p999_us": diff(through, direct, "p999_us"),
        "mean_us": diff(through, direct, "mean_us"),
    })
}

pub fn failed(e: impl std::fmt::Display) -> Value {
    json!({ "error": e.to_string() })
}

// ---------------------------------------------------------------- processes

pub fn echo_http(o: &Opts, name: &str) -> io::Result<Proc> {
    let mut cmd = Command::new(&o.echo);
    cmd.args(["http", "127.0.0.1:0", "--threads", "2"]);
    Proc::start(
        name,
        &mut cmd,
        &o.work.join(format!("{name}.log")),
        Some("listening on "),
    )
}

/// `bare_proxy` in front of the echo server: the floor of one HTTP hop.
pub fn bare_proxy(o: &Opts, echo: &Proc) -> io::Result<Proc> {
    let mut cmd = Command::new(&o.bare);
    cmd.arg(format!("http://{}/mcp", echo.addr()));
    Proc::start(
        "bare_proxy",
        &mut cmd,
        &o.work.join("bare_proxy.log"),
        Some("listening on "),
    )
}

/// Where an Airlock instance sends calls.
pub enum Upstream<'a> {
    Url(SocketAddr),
    Stdio(&'a Path),
    /// A stdio server started by this command line (program, then arguments).
    Command(&'a [String]),
}

/// Writes an airlock.toml (and its policy) for one instance; returns its path.
pub fn config(
    o: &Opts,
    name: &str,
    upstream: Upstream<'_>,
    policy: &str,
    audit: &Path,
    record_allowed: bool,
) -> io::Result<PathBuf> {
    let policy_path = o.work.join(format!("{name}.policy.json"));
    std::fs::write(&policy_path, policy)?;
    let upstream = match upstream {
        Upstream::Url(addr) => format!("url = \"http://{addr}/mcp\""),
        Upstream::Stdio(echo) => format!(
            "command = {:?}\nargs = [\"stdio\"]",
            echo.display().to_string()
        ),
        Upstream::Command(command) => {
            format!("command = {:?}\nargs = {:?}", command[0], &command[1..])
        }
    };
    let text = format!(
        "listen = \"127.0.0.1:0\"\n\n[[upstream]]\nname = \"echo\"\n{upstream}\npolicy = {policy:?}\n\n\
         [[approver]]\nname = \"bench\"\ntoken_env = \"AIRLOCK_BENCH_TOKEN\"\n\n\
         [audit]\npath = {audit:?}\nrecord_allowed = {record_allowed}\n",
        policy = policy_path.display().to_string(),
        audit = audit.display().to_string(),
    );
    let path = o.work.join(format!("{name}.toml"));
    std::fs::write(&path, text)?;
    Ok(path)
}

/// `airlock serve --config FILE`; the MCP endpoint is `/mcp/echo`.
pub fn airlock(o: &Opts, name: &str, config: &Path) -> io::Result<Proc> {
    let mut cmd = Command::new(&o.airlock);
    cmd.arg("serve")
        .arg("--config")
        .arg(config)
        .env("AIRLOCK_BENCH_TOKEN", TOKEN);
    Proc::start(
        name,
        &mut cmd,
        &o.work.join(format!("{name}.log")),
        Some("airlock listening on "),
    )
}

pub const AIRLOCK_PATH: &str = "/mcp/echo";

/// Counts rows per decision in an audit database (`airlock audit export`).
pub fn audit_rows(o: &Opts, db: &Path) -> io::Result<std::collections::BTreeMap<String, u64>> {
    let out = Command::new(&o.airlock)
        .args(["audit", "export", "--audit"])
        .arg(db)
        .output()?;
    if !out.status.success() {
        return Err(bad(format!(
            "audit export failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let mut counts = std::collections::BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
    {
        let v: Value =
            serde_json::from_str(line).map_err(|e| bad(format!("bad export line: {e}")))?;
        let decision = v["decision"].as_str().unwrap_or("?").to_owned();
        *counts.entry(decision).or_insert(0) += 1;
    }
    Ok(counts)
}

// ---------------------------------------------------------------- sequential

enum Client {
    Http(Mcp),
    Stdio(StdioMcp),
}

impl Client {
    async fn call(&mut self, n: u64) -> io::Result<()> {
        match self {
            Client::Http(m) => m.call("echo", &args(n)).await.map(|_| ()),
            Client::Stdio(s) => s.call("echo", &args(n)).await,
        }
    }
}

/// Sequential calls, interleaved in rounds so that every target sees the same
/// machine conditions; returns nanosecond samples per target.
async fn sequential(
    o: &Opts,
    targets: &mut [(String, Client)],
    rounds: usize,
    block: usize,
) -> io::Result<Vec<Vec<u64>>> {
    for (name, client) in targets.iter_mut() {
        for n in 0..o.seq_warmup as u64 {
            client
                .call(n)
                .await
                .map_err(|e| bad(format!("{name}: {e}")))?;
        }
    }
    let mut samples = vec![Vec::with_capacity(rounds * block); targets.len()];
    let deadline = Instant::now() + SEQUENTIAL_TIME_LIMIT;
    let mut n = 1_000_000u64;
    'rounds: for _ in 0..rounds {
        for (k, (name, client)) in targets.iter_mut().enumerate() {
            for _ in 0..block {
                if Instant::now() > deadline {
                    break 'rounds;
                }
                n += 1;
                let t = Instant::now();
                client
                    .call(n)
                    .await
                    .map_err(|e| bad(format!("{name}: {e}")))?;
                samples[k].push(t.elapsed().as_nanos() as u64);
            }
        }
    }
    Ok(samples)
}

async fn latency(
    o: &Opts,
    echo: &Proc,
    bare: &Proc,
    gateway: &Proc,
    stdio_config: &Path,
) -> io::Result<Value> {
    say("latency: sequential allowed tools/call, direct vs through Airlock");
    let log = std::fs::File::create(o.work.join("stdio.log"))?;
    let echo_cmd = vec![o.echo.display().to_string(), "stdio".into()];
    let airlock_cmd = vec![
        o.airlock.display().to_string(),
        "stdio".into(),
        "--config".into(),
        stdio_config.display().to_string(),
    ];
    let mut targets = vec![
        (
            "http_direct".to_owned(),
            Client::Http(Mcp::connect(echo.addr(), "/mcp").await?),
        ),
        (
            "http_airlock".to_owned(),
            Client::Http(Mcp::connect(gateway.addr(), AIRLOCK_PATH).await?),
        ),
        (
            "http_bare_proxy".to_owned(),
            Client::Http(Mcp::connect(bare.addr(), "/mcp").await?),
        ),
        (
            "stdio_direct".to_owned(),
            Client::Stdio(StdioMcp::spawn(&echo_cmd, &[], log.try_clone()?).await?),
        ),
        (
            "stdio_airlock".to_owned(),
            Client::Stdio(
                StdioMcp::spawn(&airlock_cmd, &[("AIRLOCK_BENCH_TOKEN", TOKEN)], log).await?,
            ),
        ),
    ];
    let samples = sequential(o, &mut targets, o.seq_rounds, o.seq_block).await?;
    for (_, client) in targets {
        if let Client::Stdio(s) = client {
            s.close().await;
        }
    }
    let s: Vec<Value> = samples.into_iter().map(summary).collect();
    Ok(json!({
        "http": { "direct": s[0], "airlock": s[1], "added": added(&s[1], &s[0]) },
        // The floor of one hop: what any relay adds here, and Airlock's own
        // cost above it.
        "http_bare_proxy": {
            "proxy": s[2],
            "added": added(&s[2], &s[0]),
            "airlock_above_bare": added(&s[1], &s[2]),
        },
        "stdio": { "direct": s[3], "airlock": s[4], "added": added(&s[4], &s[3]) },
    }))
}

// ---------------------------------------------------------------- throughput

fn cpu_of(procs: &[&Proc]) -> TreeCpu {
    procs.iter().fold(TreeCpu::default(), |acc, p| {
        let c = procs::tree_cpu(p.pid);
        TreeCpu {
            proxy: acc.proxy + c.proxy,
            upstream: acc.upstream + c.upstream,
        }
    })
}

struct Flags {
    stop: AtomicBool,
    measuring: AtomicBool,
}

struct ClientResult {
    in_window: u64,
    ok_total: u64,
    errors: u64,
    first_error: Option<String>,
    latencies: Vec<u64>,
}

/// `o.clients` concurrent sessions calling `echo` as fast as they can;
/// calls/s and CPU over a window after a warm-up. `ok_total` counts every
/// successful call (warm-up included) for the audit row check.
pub async fn throughput(
    o: &Opts,
    addr: SocketAddr,
    path: &str,
    watch: &[&Proc],
) -> io::Result<Value> {
    let connects = (0..o.clients).map(|_| Mcp::connect(addr, path));
    let mut sessions = Vec::new();
    for r in futures::future::join_all(connects).await {
        sessions.push(r?);
    }
    let flags = Arc::new(Flags {
        stop: AtomicBool::new(false),
        measuring: AtomicBool::new(false),
    });
    let tasks: Vec<_> = sessions
        .into_iter()
        .enumerate()
        .map(|(i, mut mcp)| {
            let flags = flags.clone();
            tokio::spawn(async move {
                let mut r = ClientResult {
                    in_window: 0,
                    ok_total: 0,
                    errors: 0,
                    first_error: None,
                    latencies: Vec::with_capacity(64 * 1024),
                };
                let mut n = (i as u64) << 32;
                for _ in 0..MAX_CALLS_PER_CLIENT {
                    if flags.stop.load(Ordering::Relaxed) {
                        break;
                    }
                    n += 1;
                    let t = Instant::now();
                    match mcp.call("echo", &args(n)).await {
                        Ok(_) => {
                            r.ok_total += 1;
                            if flags.measuring.load(Ordering::Relaxed) {
                                r.in_window += 1;
                                r.latencies.push(t.elapsed().as_nanos() as u64);
                            }
                        }
                        Err(e) => {
                            r.errors += 1;
                            r.first_error.get_or_insert(e.to_string());
                            // A broken connection stays broken: stop this client.
                            if e.kind() != io::ErrorKind::Other || r.errors > 100 {
                                break;
                            }
                        }
                    }
                }
                r
            })
        })
        .collect();
    tokio::time::sleep(o.warmup).await;
    let (cpu0, self0, t0) = (cpu_of(watch), procs::self_cpu(), Instant::now());
    flags.measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(o.duration).await;
    flags.measuring.store(false, Ordering::Relaxed);
    let (cpu1, self1, elapsed) = (cpu_of(watch), procs::self_cpu(), t0.elapsed().as_secs_f64());
    flags.stop.store(true, Ordering::Relaxed);
    let mut calls = 0;
    let mut ok_total = 0;
    let mut errors = 0;
    let mut first_error = None;
    let mut latencies = Vec::new();
    for task in tasks {
        let r = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .map_err(|_| bad("a client did not stop"))?
            .map_err(|e| bad(format!("client task failed: {e}")))?;
        calls += r.in_window;
        ok_total += r.ok_total;
        errors += r.errors;
        if first_error.is_none() {
            first_error = r.first_error;
        }
        latencies.extend(r.latencies);
    }
    let pct = |a: f64, b: f64| ((b - a) / elapsed * 1000.0).round() / 10.0;
    Ok(json!({
        "clients": o.clients,
        "seconds": (elapsed * 100.0).round() / 100.0,
        "calls": calls,
        "calls_per_s": (calls as f64 / elapsed).round(),
        "errors": errors,
        "first_error": first_error,
        "ok_total": ok_total,
        "latency": summary(latencies),
        "cpu_percent": {
            "proxy": pct(cpu0.proxy, cpu1.proxy),
            "upstream": pct(cpu0.upstream, cpu1.upstream),
            "driver": pct(self0, self1),
        },
    }))
}

fn mean_rate(runs: &[Value]) -> f64 {
    let rates: Vec<f64> = runs
        .iter()
        .filter_map(|r| r["calls_per_s"].as_f64())
        .collect();
    if rates.is_empty() {
        0.0
    } else {
        (rates.iter().sum::<f64>() / rates.len() as f64).round()
    }
}

fn mean_cpu(runs: &[Value], key: &str) -> f64 {
    let v: Vec<f64> = runs
        .iter()
        .filter_map(|r| r["cpu_percent"][key].as_f64())
        .collect();
    if v.is_empty() {
        0.0
    } else {
        (v.iter().sum::<f64>() / v.len() as f64 * 10.0).round() / 10.0
    }
}

/// Direct vs through Airlock, alternating twice.
async fn throughput_pair(o: &Opts, echo: &Proc, bare: &Proc, gateway: &Proc) -> io::Result<Value> {
    let mut direct = Vec::new();
    let mut through = Vec::new();
    let mut relayed = Vec::new();
    for round in 0..2 {
        say(format!("throughput round {}: direct", round + 1));
        direct.push(throughput(o, echo.addr(), "/mcp", &[echo]).await?);
        say(format!("throughput round {}: through Airlock", round + 1));
        through.push(throughput(o, gateway.addr(), AIRLOCK_PATH, &[gateway, echo]).await?);
        say(format!(
            "throughput round {}: through bare_proxy",
            round + 1
        ));
        relayed.push(throughput(o, bare.addr(), "/mcp", &[bare, echo]).await?);
    }
    let (d, a, b) = (mean_rate(&direct), mean_rate(&through), mean_rate(&relayed));
    let ratio = |x: f64, of: f64| {
        if of > 0.0 {
            ((x / of) * 1000.0).round() / 1000.0
        } else {
            0.0
        }
    };
    Ok(json!({
        "direct": { "calls_per_s": d, "cpu_upstream": mean_cpu(&direct, "upstream"), "cpu_driver": mean_cpu(&direct, "driver"), "runs": direct },
        "airlock": { "calls_per_s": a, "cpu_airlock": mean_cpu(&through, "proxy"), "cpu_upstream": mean_cpu(&through, "upstream"), "cpu_driver": mean_cpu(&through, "driver"), "runs": through },
        "bare_proxy": { "calls_per_s": b, "cpu_proxy": mean_cpu(&relayed, "proxy"), "cpu_upstream": mean_cpu(&relayed, "upstream"), "cpu_driver": mean_cpu(&relayed, "driver"), "runs": relayed },
        "ratio": ratio(a, d),
        "bare_proxy_ratio": ratio(b, d),
        "airlock_vs_bare_proxy": ratio(a, b),
    }))
}

// ---------------------------------------------------------------- audit

/// Allowed-call throughput with audit rows (disk, tmpfs) and without, then
/// rows written == calls made.
async fn audit(o: &Opts, echo: &Proc) -> io::Result<Value> {
    let variants = [
        ("audit_on_disk", o.work.join("audit-on.db"), true),
        ("audit_off", o.work.join("audit-off.db"), false),
        ("audit_on_tmpfs", o.shm.join("audit-on.db"), true),
    ];
    let mut gateways = Vec::new();
    for (name, db, record) in &variants {
        let cfg = config(
            o,
            name,
            Upstream::Url(echo.addr()),
            ALLOW_POLICY,
            db,
            *record,
        )?;
        gateways.push(airlock(o, name, &cfg)?);
    }
    let mut runs: Vec<Vec<Value>> = vec![Vec::new(); variants.len()];
    for round in 0..2 {
        for (k, (name, _, _)) in variants.iter().enumerate() {
            say(format!("audit round {}: {name}", round + 1));
            let g = &gateways[k];
            runs[k].push(throughput(o, g.addr(), AIRLOCK_PATH, &[g, echo]).await?);
        }
    }
    let mut out = serde_json::Map::new();
    for (k, (name, db, record)) in variants.iter().enumerate() {
        let calls_made: u64 = runs[k].iter().filter_map(|r| r["ok_total"].as_u64()).sum();
        let exited = gateways[k].terminate(Duration::from_secs(60));
        let rows = audit_rows(o, db)?;
        let allowed_rows = rows.get("allowed").copied().unwrap_or(0);
        out.insert(
            (*name).to_owned(),
            json!({
                "calls_per_s": mean_rate(&runs[k]),
                "cpu_airlock": mean_cpu(&runs[k], "proxy"),
                "calls_made": calls_made,
                "allowed_rows": allowed_rows,
                "rows_match": if *record { allowed_rows == calls_made } else { allowed_rows == 0 },
                "clean_exit": exited,
                "runs": runs[k],
            }),
        );
    }
    let on = out["audit_on_disk"]["calls_per_s"].as_f64().unwrap_or(0.0);
    let off = out["audit_off"]["calls_per_s"].as_f64().unwrap_or(0.0);
    out.insert(
        "on_vs_off".into(),
        json!(if off > 0.0 {
            ((on / off) * 1000.0).round() / 1000.0
        } else {
            0.0
        }),
    );
    Ok(Value::Object(out))
}

// ---------------------------------------------------------------- peers

/// One bridge in front of a stdio echo server: started, measured, ended.
async fn bridge(o: &Opts, name: &str, mut proc: Proc, path: &str) -> io::Result<Value> {
    say(format!("peers: {name}"));
    let addr = proc.addr();
    let mut one = Mcp::connect(addr, path).await?;
    for n in 0..(o.seq_warmup as u64).min(500) {
        one.call("echo", &args(n)).await?;
    }
    let deadline = Instant::now() + SEQUENTIAL_TIME_LIMIT;
    let mut samples = Vec::with_capacity(o.peer_seq_calls);
    for n in 0..o.peer_seq_calls as u64 {
        if Instant::now() > deadline {
            break;
        }
        let t = Instant::now();
        one.call("echo", &args(n)).await?;
        samples.push(t.elapsed().as_nanos() as u64);
    }
    drop(one);
    let tput = throughput(o, addr, path, &[&proc]).await?;
    let rss = proc.rss_kib();
    proc.terminate(Duration::from_secs(10));
    Ok(json!({ "sequential": summary(samples), "throughput": tput, "rss_kib_after": rss }))
}

fn peer_proc(o: &Opts, name: &str, command: &[String]) -> io::Result<Proc> {
    let port = procs::free_port()?;
    let echo = o.echo.display().to_string();
    let mut args: Vec<String> = command[1..].to_vec();
    if name.starts_with("mcp-proxy (PyPI)") {
        args.extend(
            [
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--log-level",
                "WARNING",
                &echo,
                "stdio",
            ]
            .map(String::from),
        );
    } else if name.starts_with("supergateway") {
        args.extend(
            [
                "--stdio",
                &format!("{echo} stdio"),
                "--outputTransport",
                "streamableHttp",
                "--stateful",
                "--port",
                &port.to_string(),
                "--logLevel",
                "none",
            ]
            .map(String::from),
        );
    } else {
        args.extend(
            [
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--server",
                "stream",
                "--",
                &echo,
                "stdio",
            ]
            .map(String::from),
        );
    }
    let mut cmd = Command::new(&command[0]);
    cmd.args(&args);
    let slug: String = name.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    let mut proc = Proc::start(
        name,
        &mut cmd,
        &o.work.join(format!("peer-{slug}.log")),
        None,
    )?;
    proc.wait_listening(
        SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(60),
    )?;
    Ok(proc)
}

/// HTTP client → bridge → stdio echo server, for Airlock and each peer.
async fn peers(o: &Opts) -> io::Result<Value> {
    let mut out = serde_json::Map::new();
    let db = o.work.join("peers.db");
    let cfg = config(
        o,
        "peers_airlock",
        Upstream::Stdio(&o.echo),
        ALLOW_POLICY,
        &db,
        true,
    )?;
    let result = match airlock(o, "peers_airlock", &cfg) {
        Ok(p) => bridge(o, "airlock", p, AIRLOCK_PATH)
            .await
            .unwrap_or_else(failed),
        Err(e) => failed(e),
    };
    out.insert("airlock".into(), result);
    for (name, command) in &o.peers {
        let result = match peer_proc(o, name, command) {
            Ok(p) => bridge(o, name, p, "/mcp").await.unwrap_or_else(failed),
            Err(e) => failed(e),
        };
        out.insert(name.clone(), result);
    }
    let rate = |v: &Value| v["throughput"]["calls_per_s"].as_f64().unwrap_or(0.0);
    let p50 = |v: &Value| v["sequential"]["p50_us"].as_f64().unwrap_or(0.0);
    let ours = out["airlock"].clone();
    let mut ratios = serde_json::Map::new();
    for (name, v) in &out {
        if name != "airlock" && rate(v) > 0.0 {
            ratios.insert(
                name.clone(),
                json!({
                    "throughput_airlock_over_peer": ((rate(&ours) / rate(v)) * 100.0).round() / 100.0,
                    "p50_peer_over_airlock": if p50(&ours) > 0.0 { ((p50(v) / p50(&ours)) * 100.0).round() / 100.0 } else { 0.0 },
                }),
            );
        }
    }
    out.insert("ratios".into(), Value::Object(ratios));
    Ok(Value::Object(out))
}

// ---------------------------------------------------------------- all

pub async fn run_all(o: &Opts) -> Value {
    let mut out = serde_json::Map::new();
    let echo = match echo_http(o, "echo_http") {
        Ok(p) => p,
        Err(e) => return failed(e),
    };
    if o.wants("latency") || o.wants("throughput") {
        let bare = match bare_proxy(o, &echo) {
            Ok(p) => p,
            Err(e) => return failed(e),
        };
        let db = o.work.join("gateway.db");
        let started = config(
            o,
            "gateway",
            Upstream::Url(echo.addr()),
            ALLOW_POLICY,
            &db,
            true,
        )
        .and_then(|cfg| airlock(o, "gateway", &cfg));
        let stdio_cfg = config(
            o,
            "stdio",
            Upstream::Stdio(&o.echo),
            ALLOW_POLICY,
            &o.work.join("stdio.db"),
            true,
        );
        match (started, stdio_cfg) {
            (Ok(gateway), Ok(stdio_cfg)) => {
                if o.wants("latency") {
                    let r = latency(o, &echo, &bare, &gateway, &stdio_cfg)
                        .await
                        .unwrap_or_else(failed);
                    out.insert("latency".into(), r);
                }
                if o.wants("throughput") {
                    let r = throughput_pair(o, &echo, &bare, &gateway)
                        .await
                        .unwrap_or_else(failed);
                    out.insert("throughput".into(), r);
                }
                let rss = gateway.rss_kib();
                out.insert("airlock_rss_kib_after_load".into(), json!(rss));
            }
            (Err(e), _) | (_, Err(e)) => {
                out.insert("latency".into(), failed(e));
            }
        }
    }
    if o.wants("audit") {
        out.insert("audit".into(), audit(o, &echo).await.unwrap_or_else(failed));
    }
    if o.wants("peers") {
        out.insert("peers".into(), peers(o).await.unwrap_or_else(failed));
    }
    if o.wants("sdk") {
        out.insert(
            "sdk".into(),
            crate::sdk::sdk(o).await.unwrap_or_else(failed),
        );
    }
    if o.wants("holds") {
        out.insert(
            "holds".into(),
            crate::holds::holds(o, &echo).await.unwrap_or_else(failed),
        );
    }
    if o.wants("ws") {
        out.insert(
            "websocket".into(),
            crate::holds::websocket(o, &echo)
                .await
                .unwrap_or_else(failed),
        );
    }
    if o.wants("load") {
        out.insert(
            "load".into(),
            crate::load::load(o, &echo).await.unwrap_or_else(failed),
        );
    }
    Value::Object(out)
}
