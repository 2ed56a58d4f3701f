//! Gateway benchmarks: the same MCP work direct to an upstream and through
//! Airlock (and through peer proxies), measured in one run on one machine.
//!
//! Run it with `scripts/bench` (which builds everything, installs the peers and
//! renders docs/benchmarks.md); by hand:
//!
//! ```text
//! cargo bench --bench gateway -- [--quick] [--only latency,throughput,audit,peers,sdk,holds,ws,load] [--out FILE]
//! ```
//!
//! Environment: `AIRLOCK_BIN`, `ECHO_BIN` (default: next to this binary's
//! target dir), `BENCH_MCP_PROXY_PY`, `BENCH_SUPERGATEWAY`,
//! `BENCH_MCP_PROXY_NPM` (peers; skipped when unset), `BENCH_SDK_PYTHON`
//! (the Python SDK server's interpreter, see `sdk`).
//!
//! Every loop is bounded by a count and by time; every process it starts is
//! in its own process group and is ended when the driver ends.

mod client;
mod holds;
mod load;
mod procs;
mod scenarios;
mod sdk;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

/// Approver token of the Airlock instances started here.
pub const TOKEN: &str = "airlock-bench-approver-token-0123456789";

/// What to run and for how long.
pub struct Opts {
    pub quick: bool,
    pub only: Option<Vec<String>>,
    pub out: PathBuf,
    pub airlock: PathBuf,
    pub echo: PathBuf,
    /// `examples/bare_proxy`: the floor of one HTTP hop (latency, throughput).
    pub bare: PathBuf,
    pub work: PathBuf,
    pub shm: PathBuf,
    pub clients: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub seq_rounds: usize,
    pub seq_block: usize,
    pub seq_warmup: usize,
    pub peer_seq_calls: usize,
    pub holds: usize,
    pub release_samples: usize,
    pub ws_clients: usize,
    pub ws_events: usize,
    pub load_sessions: usize,
    pub load_duration: Duration,
    pub peers: Vec<(String, Vec<String>)>,
}

impl Opts {
    pub fn wants(&self, scenario: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|s| s == scenario))
    }
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn parse_opts() -> Opts {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let quick = args.iter().any(|a| a == "--quick");
    // The bench binary lives in target/release/deps; the others one level up.
    let exe = std::env::current_exe().expect("current exe");
    let release = exe
        .parent()
        .and_then(|p| p.parent())
        .map(PathBuf::from)
        .unwrap_or_default();
    let node = |script: PathBuf| vec!["node".to_owned(), script.display().to_string()];
    let mut peers = Vec::new();
    if let Some(p) = env_path("BENCH_MCP_PROXY_PY") {
        peers.push(("mcp-proxy (PyPI)".to_owned(), vec![p.display().to_string()]));
    }
    if let Some(p) = env_path("BENCH_SUPERGATEWAY") {
        peers.push(("supergateway (npm)".to_owned(), node(p)));
    }
    if let Some(p) = env_path("BENCH_MCP_PROXY_NPM") {
        peers.push(("mcp-proxy (npm)".to_owned(), node(p)));
    }
    let pid = std::process::id();
    let num =
        |flag: &str, default: usize| value(flag).and_then(|v| v.parse().ok()).unwrap_or(default);
    let secs = |flag: &str, default: f64| {
        Duration::from_secs_f64(value(flag).and_then(|v| v.parse().ok()).unwrap_or(default))
    };
    Opts {
        quick,
        only: value("--only").map(|v| v.split(',').map(str::to_owned).collect()),
        out: value("--out")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("docs/benchmarks.json")),
        airlock: env_path("AIRLOCK_BIN").unwrap_or_else(|| release.join("airlock")),
        echo: env_path("ECHO_BIN").unwrap_or_else(|| release.join("examples/echo_server")),
        bare: env_path("BARE_PROXY_BIN").unwrap_or_else(|| release.join("examples/bare_proxy")),
        work: std::env::temp_dir().join(format!("airlock-bench-{pid}")),
        shm: PathBuf::from(format!("/dev/shm/airlock-bench-{pid}")),
        clients: num("--clients", 64),
        warmup: secs("--warmup", if quick { 0.5 } else { 2.0 }),
        duration: secs("--duration", if quick { 2.0 } else { 10.0 }),
        seq_rounds: num("--rounds", if quick { 2 } else { 10 }),
        seq_block: num("--block", if quick { 300 } else { 2_000 }),
        seq_warmup: if quick { 100 } else { 1_000 },
        peer_seq_calls: num("--peer-calls", if quick { 300 } else { 3_000 }),
        holds: num("--holds", if quick { 500 } else { 10_000 }),
        release_samples: num("--release-samples", if quick { 50 } else { 1_000 }),
        ws_clients: num("--ws-clients", 100),
        ws_events: num("--ws-events", if quick { 10 } else { 100 }),
        load_sessions: num("--load-sessions", if quick { 200 } else { 1_000 }),
        // The load runs for `--duration` when it is given, else for a minute.
        load_duration: secs("--duration", if quick { 5.0 } else { 60.0 }),
        peers,
    }
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn machine() -> Value {
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    let mem_kib: u64 = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": model,
        "memory_gib": (mem_kib as f64 / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
    })
}

/// Whether any scenario failed (an `error` key anywhere in the results).
fn has_error(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.iter().any(|(k, v)| k == "error" || has_error(v)),
        Value::Array(a) => a.iter().any(has_error),
        _ => false,
    }
}

fn main() {
    let opts = parse_opts();
    for bin in [&opts.airlock, &opts.echo, &opts.bare] {
        if !bin.exists() {
            eprintln!(
                "missing {}: build with `cargo build --release --bin airlock --example echo_server --example bare_proxy`",
                bin.display()
            );
            std::process::exit(2);
        }
    }
    std::fs::create_dir_all(&opts.work).expect("work dir");
    std::fs::create_dir_all(&opts.shm).expect("tmpfs dir");
    let started = chrono::Utc::now();
    let loadavg_at_start = read("/proc/loadavg");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let results = runtime.block_on(scenarios::run_all(&opts));
    let finished = chrono::Utc::now();
    let mut machine = machine();
    machine["loadavg_at_start"] = json!(loadavg_at_start.trim());
    let report = json!({
        "date": started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "wall_seconds": (finished - started).num_milliseconds() as f64 / 1000.0,
        "loadavg_at_end": read("/proc/loadavg").trim(),
        "command": std::env::var("BENCH_COMMAND").unwrap_or_else(|_| std::env::args().collect::<Vec<_>>().join(" ")),
        "commit": std::env::var("BENCH_COMMIT").unwrap_or_default(),
        "quick": opts.quick,
        "machine": machine,
        "settings": {
            "clients": opts.clients,
            "warmup_s": opts.warmup.as_secs_f64(),
            "duration_s": opts.duration.as_secs_f64(),
            "sequential_calls_per_target": opts.seq_rounds * opts.seq_block,
            "holds": opts.holds,
            "ws_clients": opts.ws_clients,
            "ws_events": opts.ws_events,
            "load_sessions": opts.load_sessions,
            "load_duration_s": opts.load_duration.as_secs_f64(),
        },
        "results": results,
    });
    if let Some(dir) = opts.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(dir);
    }
    let text = serde_json::to_string_pretty(&report).expect("json");
    std::fs::write(&opts.out, text + "\n").expect("writing the results");
    eprintln!("wrote {}", opts.out.display());
    let _ = std::fs::remove_dir_all(&opts.shm);
    // Keep the logs of a run that reported errors.
    let failed = has_error(&report);
    if failed {
        eprintln!("logs kept in {}", opts.work.display());
    } else {
        let _ = std::fs::remove_dir_all(&opts.work);
    }
}
