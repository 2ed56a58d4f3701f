//! Bounded load: many agent sessions (handshake era, over HTTP) for a fixed
//! time, each looping over a mix of allowed, denied, rate-limited and held
//! calls, with scripted approvers deciding the holds; then the audit rows
//! are checked against the calls and the memory against the start.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::TOKEN;
use crate::client::{Http, Mcp, bad, call_body, rpc_answer};
use crate::procs::Proc;
use crate::scenarios::{AIRLOCK_PATH, Upstream, airlock, args, audit_rows, config, summary};

/// Allows `echo`, denies `delete_all` with a reason, rate-limits `search`
/// (5 per 10 s per session) and holds `stamp` for approval.
pub const LOAD_POLICY: &str = r#"{"version":"1","default":"deny",
  "rules":{"echo":{"action":"allow"},
           "search":{"action":"allow","rate_limit":{"max":5,"window":10}},
           "stamp":{"action":"require_approval","reason":"load hold","approval":{"timeout":300,"on_timeout":"deny"}},
           "delete_all":{"action":"deny","reason":"destructive"}}}"#;

/// One session's round: 5 allowed, 2 denied, 2 rate-limited tool, 1 held.
const MIX: [Kind; 10] = [
    Kind::Echo,
    Kind::Deny,
    Kind::Echo,
    Kind::Search,
    Kind::Echo,
    Kind::Stamp,
    Kind::Echo,
    Kind::Search,
    Kind::Deny,
    Kind::Echo,
];
/// Most calls one session makes (the time limit usually ends it first).
const MAX_CALLS_PER_SESSION: u64 = 10_000_000;
/// Parallel approver tasks.
const APPROVERS: u64 = 4;
/// Every approver's poll interval.
const POLL: Duration = Duration::from_millis(50);
/// Every hold whose `n % DENY_EVERY == 0` is denied, the others approved.
const DENY_EVERY: u64 = 4;
/// Extra time after the load for in-flight calls to finish.
const GRACE: Duration = Duration::from_secs(120);
/// Kept error messages.
const KEEP_ERRORS: usize = 5;

#[derive(Clone, Copy)]
enum Kind {
    Echo,
    Deny,
    Search,
    Stamp,
}

/// What a call came back as.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Allowed,
    Denied,
    RateLimited,
    HeldApproved,
    HeldDenied,
}

const OUTCOMES: [(Outcome, &str); 5] = [
    (Outcome::Allowed, "allowed"),
    (Outcome::Denied, "denied"),
    (Outcome::RateLimited, "rate_limited"),
    (Outcome::HeldApproved, "held_approved"),
    (Outcome::HeldDenied, "held_denied"),
];

fn say(what: impl AsRef<str>) {
    eprintln!("[bench] {}", what.as_ref());
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `Some(decision)` of a refusal (`isError` with `airlock.decision`), `None`
/// for a successful result; an error for anything else.
fn classify(answer: &[u8]) -> io::Result<Option<String>> {
    if find(answer, b"\"result\"").is_none() {
        return Err(bad(format!(
            "not a result: {}",
            String::from_utf8_lossy(answer)
        )));
    }
    if find(answer, b"\"isError\":true").is_none() {
        return Ok(None);
    }
    let key = b"\"airlock.decision\":\"";
    let at = find(answer, key)
        .ok_or_else(|| bad(format!("error result: {}", String::from_utf8_lossy(answer))))?;
    let rest = &answer[at + key.len()..];
    let end = rest
        .iter()
        .position(|&b| b == b'"')
        .ok_or_else(|| bad("unterminated decision"))?;
    Ok(Some(String::from_utf8_lossy(&rest[..end]).into_owned()))
}

fn expect(kind: Kind, decision: Option<&str>) -> Option<Outcome> {
    match (kind, decision) {
        (Kind::Echo, None) | (Kind::Search, None) => Some(Outcome::Allowed),
        (Kind::Deny, Some("denied")) => Some(Outcome::Denied),
        (Kind::Search, Some("rate_limited")) => Some(Outcome::RateLimited),
        (Kind::Stamp, None) => Some(Outcome::HeldApproved),
        (Kind::Stamp, Some("approval_denied")) => Some(Outcome::HeldDenied),
        _ => None,
    }
}

#[derive(Default)]
struct SessionResult {
    lat: [Vec<u64>; 5],
    errors: u64,
    messages: Vec<String>,
    deleted: bool,
}

impl SessionResult {
    fn error(&mut self, e: impl std::fmt::Display) {
        self.errors += 1;
        if self.messages.len() < KEEP_ERRORS {
            self.messages.push(e.to_string());
        }
    }
}

async fn one_call(mcp: &mut Mcp, id: u64, kind: Kind, n: u64) -> io::Result<Outcome> {
    let (tool, arguments) = match kind {
        Kind::Echo => ("echo", args(n)),
        Kind::Search => ("search", args(n)),
        Kind::Deny => ("delete_all", "{}".to_owned()),
        Kind::Stamp => ("stamp", format!(r#"{{"n":{n}}}"#)),
    };
    let (head, body) = mcp.post(call_body(id, tool, &arguments).as_bytes()).await?;
    if head.status != 200 {
        return Err(bad(format!(
            "{tool}: HTTP {}: {}",
            head.status,
            String::from_utf8_lossy(&body)
        )));
    }
    let answer = rpc_answer(&head, &body)?;
    let decision = classify(&answer).map_err(|e| bad(format!("{tool}: {e}")))?;
    expect(kind, decision.as_deref()).ok_or_else(|| {
        bad(format!(
            "{tool}: unexpected answer {}",
            String::from_utf8_lossy(&answer)
        ))
    })
}

/// One agent session: calls until `deadline` (or the call bound), then DELETE.
async fn session(mut mcp: Mcp, index: u64, deadline: Instant) -> SessionResult {
    let mut r = SessionResult::default();
    // Sessions start at different places in the mix.
    let offset = index as usize % MIX.len();
    for k in 0..MAX_CALLS_PER_SESSION {
        if Instant::now() >= deadline {
            break;
        }
        let kind = MIX[(offset + k as usize) % MIX.len()];
        // Unique per call: the approvers decide by it.
        let n = (index << 32) | k;
        let t = Instant::now();
        match one_call(&mut mcp, k + 1, kind, n).await {
            Ok(outcome) => r.lat[outcome as usize].push(t.elapsed().as_nanos() as u64),
            Err(e) => {
                let broken = e.kind() != io::ErrorKind::Other;
                r.error(e);
                // A broken connection stays broken: stop this session.
                if broken || r.errors > 100 {
                    break;
                }
            }
        }
    }
    if let Some(sid) = mcp.session.clone() {
        let path = mcp.path.clone();
        match mcp
            .http
            .request("DELETE", &path, &[("Mcp-Session-Id", &sid)], b"")
            .await
        {
            Ok((head, _)) if head.status == 200 => r.deleted = true,
            Ok((head, body)) => r.error(format!(
                "DELETE: HTTP {}: {}",
                head.status,
                String::from_utf8_lossy(&body)
            )),
            Err(e) => r.error(format!("DELETE: {e}")),
        }
    }
    r
}

#[derive(Default)]
struct ApproverResult {
    approved: u64,
    denied: u64,
    polls: u64,
    errors: u64,
    messages: Vec<String>,
}

/// Polls `GET /api/pending` and decides the holds whose `n % APPROVERS == k`.
async fn approver(
    addr: SocketAddr,
    k: u64,
    stop: Arc<AtomicBool>,
    limit: Instant,
) -> ApproverResult {
    let mut r = ApproverResult::default();
    let auth = format!("Bearer {TOKEN}");
    let mut api = match Http::connect(addr).await {
        Ok(api) => api,
        Err(e) => {
            r.errors += 1;
            r.messages.push(e.to_string());
            return r;
        }
    };
    // Stagger the approvers' polls.
    tokio::time::sleep(POLL * k as u32 / APPROVERS as u32).await;
    while Instant::now() < limit && r.errors <= 100 {
        let stopping = stop.load(Ordering::Acquire);
        r.polls += 1;
        let list = match api
            .request("GET", "/api/pending", &[("Authorization", &auth)], b"")
            .await
        {
            Ok((head, body)) if head.status == 200 => {
                serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null)
            }
            Ok((head, _)) => {
                r.errors += 1;
                r.messages
                    .push(format!("GET /api/pending: HTTP {}", head.status));
                break;
            }
            Err(e) => {
                r.errors += 1;
                r.messages.push(format!("GET /api/pending: {e}"));
                break;
            }
        };
        let mine: Vec<(u64, String)> = list["pending"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| {
                        Some((p["arguments"]["n"].as_u64()?, p["id"].as_str()?.to_owned()))
                    })
                    .filter(|(n, _)| n % APPROVERS == k)
                    .collect()
            })
            .unwrap_or_default();
        if mine.is_empty() && stopping {
            break;
        }
        for (n, id) in mine {
            let deny = (n / APPROVERS).is_multiple_of(DENY_EVERY);
            let verb = if deny { "deny" } else { "approve" };
            let path = format!("/api/pending/{id}/{verb}");
            match api
                .request("POST", &path, &[("Authorization", &auth)], b"")
                .await
            {
                Ok((head, _)) if head.status == 200 => {
                    if deny {
                        r.denied += 1;
                    } else {
                        r.approved += 1;
                    }
                }
                Ok((head, body)) => {
                    r.errors += 1;
                    if r.messages.len() < KEEP_ERRORS {
                        r.messages.push(format!(
                            "{verb} {id}: HTTP {}: {}",
                            head.status,
                            String::from_utf8_lossy(&body)
                        ));
                    }
                }
                Err(e) => {
                    r.errors += 1;
                    r.messages.push(format!("{verb} {id}: {e}"));
                    return r;
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }
    r
}

fn count(rows: &BTreeMap<String, u64>, key: &str) -> u64 {
    rows.get(key).copied().unwrap_or(0)
}

/// Whether every gauge in `now` is at or below its value in `start`.
fn settled(start: &Value, now: &Value) -> bool {
    match (start.as_object(), now.as_object()) {
        (Some(start), Some(now)) => start
            .iter()
            .all(|(k, v)| now.get(k).and_then(Value::as_u64) <= v.as_u64()),
        _ => false,
    }
}

/// The gauges of `/metrics` a leak would make grow (its own connection
/// counts as one task and one fd, at both readings).
async fn resources(addr: std::net::SocketAddr) -> Value {
    const GAUGES: [&str; 5] = [
        "airlock_runtime_tasks",
        "airlock_open_fds",
        "airlock_upstream_children",
        "airlock_sessions",
        "airlock_pending",
    ];
    let Ok(mut http) = Http::connect(addr).await else {
        return Value::Null;
    };
    let Ok((head, body)) = http.request("GET", "/metrics", &[], b"").await else {
        return Value::Null;
    };
    if head.status != 200 {
        return Value::Null;
    }
    let text = String::from_utf8_lossy(&body);
    let mut out = serde_json::Map::new();
    for line in text.lines() {
        if let Some((name, value)) = line.split_once(' ')
            && GAUGES.contains(&name)
            && let Ok(v) = value.trim().parse::<u64>()
        {
            out.insert(name.trim_start_matches("airlock_").into(), v.into());
        }
    }
    Value::Object(out)
}

pub async fn load(o: &crate::Opts, echo: &Proc) -> io::Result<Value> {
    let n_sessions = o.load_sessions;
    say(format!(
        "load: {n_sessions} sessions for {:.0} s",
        o.load_duration.as_secs_f64()
    ));
    let db = o.work.join("load.db");
    let cfg = config(
        o,
        "load",
        Upstream::Url(echo.addr()),
        LOAD_POLICY,
        &db,
        true,
    )?;
    let mut gw = airlock(o, "load", &cfg)?;
    let addr = gw.addr();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_start = gw.rss_kib();
    let resources_start = resources(addr).await;

    // Sessions (handshake), 100 at a time.
    let gate = Arc::new(Semaphore::new(100));
    let connects = (0..n_sessions).map(|_| {
        let gate = gate.clone();
        async move {
            let _permit = gate.acquire().await.map_err(|_| bad("semaphore closed"))?;
            Mcp::connect(addr, AIRLOCK_PATH).await
        }
    });
    let t_open = Instant::now();
    let mut sessions = Vec::with_capacity(n_sessions);
    let mut open_errors = Vec::new();
    for r in futures::future::join_all(connects).await {
        match r {
            Ok(m) => sessions.push(m),
            Err(e) => open_errors.push(e.to_string()),
        }
    }
    let open_seconds = t_open.elapsed().as_secs_f64();
    if sessions.is_empty() {
        return Err(bad(format!("no session opened: {open_errors:?}")));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = gw.rss_kib();

    say("load: running");
    let loadavg_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let deadline = t0 + o.load_duration;
    let limit = deadline + GRACE;
    let approvers: Vec<_> = (0..APPROVERS)
        .map(|k| tokio::spawn(approver(addr, k, stop.clone(), limit)))
        .collect();
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (peak, stop, pid) = (peak.clone(), stop.clone(), gw.pid);
        tokio::spawn(async move {
            while !stop.load(Ordering::Acquire) && Instant::now() < limit {
                peak.fetch_max(crate::procs::rss_kib(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    let tasks: Vec<_> = sessions
        .into_iter()
        .enumerate()
        .map(|(i, m)| tokio::spawn(session(m, i as u64, deadline)))
        .collect();
    // Memory at the end of the load, while the sessions are still open.
    tokio::time::sleep_until(deadline.into()).await;
    let rss_end = gw.rss_kib();
    let loadavg_end = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut results = Vec::with_capacity(tasks.len());
    let mut lost = 0;
    for t in tasks {
        match tokio::time::timeout_at(limit.into(), t).await {
            Ok(Ok(r)) => results.push(r),
            _ => lost += 1,
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Release);
    let mut decided = ApproverResult::default();
    for a in approvers {
        if let Ok(Ok(r)) = tokio::time::timeout_at(limit.into(), a).await {
            decided.approved += r.approved;
            decided.denied += r.denied;
            decided.polls += r.polls;
            decided.errors += r.errors;
            decided.messages.extend(r.messages);
        }
    }
    let _ = sampler.await;

    // All sessions were DELETEd by their tasks; memory 10 s later.
    say("load: sessions deleted; waiting 10 s");
    tokio::time::sleep(Duration::from_secs(10)).await;
    let rss_after = gw.rss_kib();
    // Pooled connections to the upstream close after 15 s unused: look again
    // (once a second, for up to 40 s) until every gauge is back at its start.
    let settle = Instant::now();
    let mut resources_after = resources(addr).await;
    while !settled(&resources_start, &resources_after) && settle.elapsed() < Duration::from_secs(40)
    {
        tokio::time::sleep(Duration::from_secs(1)).await;
        resources_after = resources(addr).await;
    }
    let settled_after = settle.elapsed().as_secs_f64() + 10.0;
    let mut api = Http::connect(addr).await?;
    let auth = format!("Bearer {TOKEN}");
    let status = match api
        .request("GET", "/api/status", &[("Authorization", &auth)], b"")
        .await
    {
        Ok((head, body)) if head.status == 200 => {
            serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null)
        }
        _ => Value::Null,
    };
    drop(api);
    let clean_exit = gw.terminate(Duration::from_secs(120));
    let rows = audit_rows(o, &db)?;

    let mut lat: [Vec<u64>; 5] = Default::default();
    let (mut errors, mut deleted) = (0, 0);
    let mut messages: Vec<String> = open_errors.iter().take(KEEP_ERRORS).cloned().collect();
    for r in results {
        for (all, mine) in lat.iter_mut().zip(r.lat) {
            all.extend(mine);
        }
        errors += r.errors;
        deleted += r.deleted as u64;
        for m in r.messages {
            if messages.len() < KEEP_ERRORS {
                messages.push(m);
            }
        }
    }
    errors += open_errors.len() as u64 + lost + decided.errors;
    messages.extend(decided.messages.iter().take(KEEP_ERRORS).cloned());
    let calls: Vec<u64> = lat.iter().map(|v| v.len() as u64).collect();
    let total: u64 = calls.iter().sum();
    let held = calls[Outcome::HeldApproved as usize] + calls[Outcome::HeldDenied as usize];
    let mut outcomes = serde_json::Map::new();
    for (outcome, name) in OUTCOMES {
        outcomes.insert(
            name.into(),
            json!({ "calls": calls[outcome as usize], "latency": summary(std::mem::take(&mut lat[outcome as usize])) }),
        );
    }
    // Every call the driver saw must be exactly one terminal row.
    let checks = json!({
        "allowed": [count(&rows, "allowed"), calls[Outcome::Allowed as usize]],
        "denied": [count(&rows, "denied"), calls[Outcome::Denied as usize]],
        "rate_limited": [count(&rows, "rate_limited"), calls[Outcome::RateLimited as usize]],
        "approval_requested": [count(&rows, "approval_requested"), held],
        "approved": [count(&rows, "approved"), calls[Outcome::HeldApproved as usize]],
        "denied_by_human": [count(&rows, "denied_by_human"), calls[Outcome::HeldDenied as usize]],
    });
    let rows_match = checks
        .as_object()
        .is_some_and(|m| m.values().all(|v| v[0] == v[1]));
    let kib = |a: u64, b: u64| b as i64 - a as i64;
    Ok(json!({
        "sessions": n_sessions,
        "sessions_opened": n_sessions - open_errors.len(),
        "open_seconds": (open_seconds * 100.0).round() / 100.0,
        "seconds": (elapsed * 100.0).round() / 100.0,
        "calls": total,
        "calls_per_s": (total as f64 / o.load_duration.as_secs_f64()).round(),
        "outcomes": outcomes,
        "errors": errors,
        "first_errors": messages,
        "sessions_deleted": deleted,
        "approver": {
            "tasks": APPROVERS,
            "poll_ms": POLL.as_millis() as u64,
            "approved": decided.approved,
            "denied": decided.denied,
            "polls": decided.polls,
        },
        "audit_rows": rows,
        "audit_check": checks,
        "rows_match": rows_match,
        "rss_kib": {
            "start": rss_start,
            "before_load": rss_before,
            "peak": peak.load(Ordering::Relaxed),
            "end_of_load": rss_end,
            "after_delete_10s": rss_after,
            "after_minus_before": kib(rss_before, rss_after),
            "after_minus_start": kib(rss_start, rss_after),
        },
        // Tasks, fds, children, sessions, pending: before any session vs after the last.
        "resources": {
            "start": resources_start,
            "after": resources_after,
            "after_seconds": settled_after.round(),
        },
        "status_after": status,
        "loadavg": { "before": loadavg_before.trim(), "end": loadavg_end.trim() },
        "clean_exit": clean_exit,
    }))
}
