//! Holds: memory per held call, decision → upstream release latency, and the
//! delivery of `pending.created` to many websocket clients.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::TOKEN;
use crate::client::{Http, Mcp, bad, call_body, result_text, sse_answer};
use crate::procs::Proc;
use crate::scenarios::{
    AIRLOCK_PATH, HOLD_POLICY, Upstream, airlock, args, audit_rows, config, summary,
};

/// Limit on opening all the holds, and on releasing them in bulk.
const PHASE_LIMIT: Duration = Duration::from_secs(300);

fn say(what: impl AsRef<str>) {
    eprintln!("[bench] {}", what.as_ref());
}

fn wall_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

async fn api_get(api: &mut Http, path: &str) -> io::Result<Value> {
    let auth = bearer();
    let (head, body) = api
        .request("GET", path, &[("Authorization", &auth)], b"")
        .await?;
    if head.status != 200 {
        return Err(bad(format!(
            "GET {path}: HTTP {}: {}",
            head.status,
            String::from_utf8_lossy(&body)
        )));
    }
    serde_json::from_slice(&body).map_err(|e| bad(format!("GET {path}: {e}")))
}

async fn approve(api: &mut Http, id: &str) -> io::Result<()> {
    let auth = bearer();
    let path = format!("/api/pending/{id}/approve");
    let (head, body) = api
        .request("POST", &path, &[("Authorization", &auth)], b"")
        .await?;
    if head.status != 200 {
        return Err(bad(format!(
            "approve {id}: HTTP {}: {}",
            head.status,
            String::from_utf8_lossy(&body)
        )));
    }
    Ok(())
}

/// Reads a held call's event stream until its answer; returns the answer
/// and when it arrived, then reads the stream to its end.
async fn read_answer(mcp: &mut Mcp) -> io::Result<(Vec<u8>, Instant)> {
    let mut events = Vec::new();
    let found = tokio::time::timeout(PHASE_LIMIT, async {
        loop {
            match mcp.http.read_chunk().await? {
                Some(chunk) => {
                    events.extend_from_slice(&chunk);
                    if events.ends_with(b"\n\n")
                        && let Ok(answer) = sse_answer(&events)
                    {
                        return Ok::<_, io::Error>((answer, Instant::now()));
                    }
                }
                None => return Err(bad("the stream ended without an answer")),
            }
        }
    })
    .await
    .map_err(|_| bad("no answer to a released call"))??;
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(_)) = mcp.http.read_chunk().await {}
    })
    .await;
    Ok(found)
}

/// Starts a held call on a new connection of `session`.
async fn hold_one(addr: SocketAddr, session: Option<String>, id: u64, n: i64) -> io::Result<Mcp> {
    let mut m = Mcp::attach(addr, AIRLOCK_PATH, session).await?;
    let head = m
        .start_call(id, "stamp", &format!(r#"{{"n":{n}}}"#))
        .await?;
    if head.status != 200 || !head.is_sse() {
        return Err(bad(format!(
            "held call: HTTP {} ({:?})",
            head.status,
            head.header("content-type")
        )));
    }
    Ok(m)
}

async fn wait_pending(api: &mut Http, want: u64, limit: Duration) -> io::Result<u64> {
    let started = Instant::now();
    loop {
        let n = api_get(api, "/api/status").await?["pending"]
            .as_u64()
            .unwrap_or(0);
        if n >= want || started.elapsed() > limit {
            return Ok(n);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Pending id of each held call, by the `n` in its arguments.
async fn pending_ids(api: &mut Http) -> io::Result<HashMap<i64, String>> {
    let list = api_get(api, "/api/pending").await?;
    Ok(list["pending"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| Some((p["arguments"]["n"].as_i64()?, p["id"].as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default())
}

pub async fn holds(o: &crate::Opts, echo: &Proc) -> io::Result<Value> {
    say(format!("holds: {} concurrent held calls", o.holds));
    let db = o.work.join("holds.db");
    let cfg = config(
        o,
        "holds",
        Upstream::Url(echo.addr()),
        HOLD_POLICY,
        &db,
        true,
    )?;
    let mut gw = airlock(o, "holds", &cfg)?;
    let addr = gw.addr();
    let mut api = Http::connect(addr).await?;

    // Sessions first, so that their cost is not counted as the holds'.
    let n_sessions = o.holds.clamp(1, 100);
    let mut sessions = Vec::new();
    for _ in 0..n_sessions {
        let mut m = Mcp::connect(addr, AIRLOCK_PATH).await?;
        for n in 0..10 {
            m.call("echo", &args(n)).await?;
        }
        sessions.push(m.session.clone());
    }
    // Warm the hold path once.
    let mut warm = hold_one(addr, sessions[0].clone(), 1, -1).await?;
    wait_pending(&mut api, 1, Duration::from_secs(10)).await?;
    let id = pending_ids(&mut api)
        .await?
        .remove(&-1)
        .ok_or_else(|| bad("warm-up hold not listed"))?;
    approve(&mut api, &id).await?;
    read_answer(&mut warm).await?;
    drop(warm);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = gw.rss_kib();

    say("holds: opening");
    let gate = Arc::new(Semaphore::new(200));
    let opening = (0..o.holds).map(|n| {
        let gate = gate.clone();
        let session = sessions[n % n_sessions].clone();
        async move {
            let _permit = gate.acquire().await.map_err(|_| bad("semaphore closed"))?;
            hold_one(addr, session, n as u64 + 10, n as i64).await
        }
    });
    let t_open = Instant::now();
    let opened = tokio::time::timeout(PHASE_LIMIT, futures::future::join_all(opening))
        .await
        .map_err(|_| bad("opening the holds took too long"))?;
    let open_seconds = t_open.elapsed().as_secs_f64();
    let mut first_error = None;
    let mut conns: Vec<Option<Mcp>> = Vec::with_capacity(o.holds);
    for r in opened {
        match r {
            Ok(m) => conns.push(Some(m)),
            Err(e) => {
                first_error.get_or_insert(e.to_string());
                conns.push(None);
            }
        }
    }
    let held = conns.iter().filter(|c| c.is_some()).count() as u64;
    let listed = wait_pending(&mut api, held, Duration::from_secs(120)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_with = gw.rss_kib();
    let ids = pending_ids(&mut api).await?;

    say("holds: release latency (sequential approvals)");
    let samples = o.release_samples.min(conns.len());
    let (mut release, mut api_lat, mut agent_lat) = (Vec::new(), Vec::new(), Vec::new());
    let mut early = 0;
    for (n, slot) in conns.iter_mut().enumerate().take(samples) {
        let (Some(mut m), Some(id)) = (slot.take(), ids.get(&(n as i64))) else {
            continue;
        };
        let wall0 = wall_ns();
        let t0 = Instant::now();
        approve(&mut api, id).await?;
        api_lat.push(t0.elapsed().as_nanos() as u64);
        let (answer, at) = read_answer(&mut m).await?;
        agent_lat.push((at - t0).as_nanos() as u64);
        let stamp: u128 = result_text(&answer)?
            .parse()
            .map_err(|_| bad("stamp is not a number"))?;
        if stamp < wall0 {
            early += 1;
        }
        release.push(stamp.saturating_sub(wall0) as u64);
    }

    say("holds: releasing the rest (8 approvers in parallel)");
    let mut readers = Vec::new();
    let mut rest: Vec<String> = Vec::new();
    for (n, slot) in conns.iter_mut().enumerate() {
        if let (Some(mut m), Some(id)) = (slot.take(), ids.get(&(n as i64))) {
            rest.push(id.clone());
            readers.push(tokio::spawn(
                async move { read_answer(&mut m).await.is_ok() },
            ));
        }
    }
    let t_bulk = Instant::now();
    let per = rest.len().div_ceil(8).max(1);
    let approvers = rest.chunks(per).map(|chunk| async move {
        let mut api = Http::connect(addr).await?;
        for id in chunk {
            approve(&mut api, id).await?;
        }
        Ok::<_, io::Error>(())
    });
    let bulk = tokio::time::timeout(PHASE_LIMIT, futures::future::join_all(approvers))
        .await
        .map_err(|_| bad("bulk release took too long"))?;
    let bulk_seconds = t_bulk.elapsed().as_secs_f64();
    if let Some(Err(e)) = bulk.into_iter().find(|r| r.is_err()) {
        first_error.get_or_insert(e.to_string());
    }
    let mut answered = 0;
    for r in readers {
        if let Ok(Ok(true)) = tokio::time::timeout(PHASE_LIMIT, r).await {
            answered += 1;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = gw.rss_kib();
    let clean_exit = gw.terminate(Duration::from_secs(120));
    let rows = audit_rows(o, &db)?;
    let requested = rows.get("approval_requested").copied().unwrap_or(0);
    let approved = rows.get("approved").copied().unwrap_or(0);
    let per_hold = if held > 0 {
        (rss_with as f64 - rss_before as f64) / held as f64
    } else {
        0.0
    };
    let baseline = connection_baseline(o, echo)
        .await
        .unwrap_or_else(crate::scenarios::failed);
    let per_connection = baseline["kib_per_connection"].as_f64();
    Ok(json!({
        "sessions": n_sessions,
        "holds_opened": held,
        "holds_listed": listed,
        "open_seconds": (open_seconds * 100.0).round() / 100.0,
        "first_error": first_error,
        "rss_kib": { "before": rss_before, "with_holds": rss_with, "after_release": rss_after },
        "kib_per_hold": (per_hold * 100.0).round() / 100.0,
        "idle_connection_baseline": baseline,
        "kib_per_hold_beyond_connection": per_connection.map(|c| ((per_hold - c) * 100.0).round() / 100.0),
        "release_latency": summary(release),
        "release_stamp_before_decision": early,
        "approve_api_latency": summary(api_lat),
        "agent_answer_latency": summary(agent_lat),
        "bulk": {
            "decisions": rest.len(),
            "seconds": (bulk_seconds * 100.0).round() / 100.0,
            "decisions_per_s": (rest.len() as f64 / bulk_seconds).round(),
            "answered": answered,
        },
        "audit_rows": rows,
        // +1: the warm-up hold.
        "all_recorded": requested == held + 1 && approved == held + 1,
        "clean_exit": clean_exit,
    }))
}

/// What an idle agent connection costs by itself: the same number of
/// connections as holds, each after one call, on a fresh instance.
async fn connection_baseline(o: &crate::Opts, echo: &Proc) -> io::Result<Value> {
    say(format!(
        "holds: baseline of {} idle agent connections",
        o.holds
    ));
    let db = o.work.join("conns.db");
    let cfg = config(
        o,
        "conns",
        Upstream::Url(echo.addr()),
        HOLD_POLICY,
        &db,
        true,
    )?;
    let gw = airlock(o, "conns", &cfg)?;
    let addr = gw.addr();
    let n_sessions = o.holds.clamp(1, 100);
    let mut sessions = Vec::new();
    for _ in 0..n_sessions {
        let mut m = Mcp::connect(addr, AIRLOCK_PATH).await?;
        for n in 0..10 {
            m.call("echo", &args(n)).await?;
        }
        sessions.push(m.session.clone());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = gw.rss_kib();
    let gate = Arc::new(Semaphore::new(200));
    let opening = (0..o.holds).map(|n| {
        let gate = gate.clone();
        let session = sessions[n % n_sessions].clone();
        async move {
            let _permit = gate.acquire().await.map_err(|_| bad("semaphore closed"))?;
            // A call Airlock answers itself (denied), so no upstream
            // connection is opened on its behalf.
            let mut m = Mcp::attach(addr, AIRLOCK_PATH, session).await?;
            let (head, _) = m
                .post(call_body(n as u64 + 1, "blocked", "{}").as_bytes())
                .await?;
            if head.status != 200 {
                return Err(bad(format!("denied call: HTTP {}", head.status)));
            }
            Ok::<_, io::Error>(m)
        }
    });
    let opened = tokio::time::timeout(PHASE_LIMIT, futures::future::join_all(opening))
        .await
        .map_err(|_| bad("opening the connections took too long"))?;
    let conns: Vec<Mcp> = opened.into_iter().filter_map(Result::ok).collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let with = gw.rss_kib();
    let open = conns.len();
    drop(conns);
    drop(gw);
    let per = if open > 0 {
        (with as f64 - before as f64) / open as f64
    } else {
        0.0
    };
    Ok(json!({
        "connections": open,
        "rss_kib": { "before": before, "with_connections": with },
        "kib_per_connection": (per * 100.0).round() / 100.0,
    }))
}

pub async fn websocket(o: &crate::Opts, echo: &Proc) -> io::Result<Value> {
    let (clients, events) = (o.ws_clients, o.ws_events);
    say(format!(
        "websocket: pending.created to {clients} clients, {events} events"
    ));
    let db = o.work.join("ws.db");
    let cfg = config(o, "ws", Upstream::Url(echo.addr()), HOLD_POLICY, &db, true)?;
    let mut gw = airlock(o, "ws", &cfg)?;
    let addr = gw.addr();
    let session = Mcp::connect(addr, AIRLOCK_PATH).await?.session;
    let mut api = Http::connect(addr).await?;

    let base = Instant::now();
    let t0s: Arc<Vec<AtomicU64>> = Arc::new((0..events).map(|_| AtomicU64::new(0)).collect());
    let seen: Arc<Vec<AtomicUsize>> = Arc::new((0..events).map(|_| AtomicUsize::new(0)).collect());
    let ids: Arc<Mutex<Vec<Option<String>>>> = Arc::new(Mutex::new(vec![None; events]));
    let deadline = tokio::time::Instant::now() + PHASE_LIMIT;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut request = format!("ws://{addr}/api/ws")
            .into_client_request()
            .map_err(io::Error::other)?;
        let auth = HeaderValue::from_str(&bearer()).map_err(io::Error::other)?;
        request.headers_mut().insert("authorization", auth);
        let (mut ws, _) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(request),
        )
        .await
        .map_err(|_| bad("websocket connect timed out"))?
        .map_err(io::Error::other)?;
        // The snapshot comes first.
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.contains("\"snapshot\"") => {}
            other => return Err(bad(format!("no snapshot on the websocket: {other:?}"))),
        }
        let (t0s, seen, ids) = (t0s.clone(), seen.clone(), ids.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(events);
            while lat.len() < events {
                let Ok(Some(Ok(msg))) = tokio::time::timeout_at(deadline, ws.next()).await else {
                    break;
                };
                let Message::Text(text) = msg else { continue };
                if !text.contains("\"pending.created\"") {
                    continue;
                }
                let now = base.elapsed().as_nanos() as u64;
                let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else {
                    continue;
                };
                let Some(n) = v["pending"]["arguments"]["n"]
                    .as_u64()
                    .map(|n| n as usize)
                    .filter(|&n| n < events)
                else {
                    continue;
                };
                lat.push(now.saturating_sub(t0s[n].load(Ordering::Acquire)));
                if c == 0 {
                    ids.lock().expect("ids")[n] = v["pending"]["id"].as_str().map(str::to_owned);
                }
                seen[n].fetch_add(1, Ordering::AcqRel);
            }
            lat
        }));
    }

    let mut late = 0;
    for k in 0..events {
        let mut m = Mcp::attach(addr, AIRLOCK_PATH, session.clone()).await?;
        t0s[k].store(base.elapsed().as_nanos() as u64, Ordering::Release);
        let head = m
            .start_call(k as u64 + 1, "stamp", &format!(r#"{{"n":{k}}}"#))
            .await?;
        if head.status != 200 {
            return Err(bad(format!("held call: HTTP {}", head.status)));
        }
        let waited = Instant::now();
        while seen[k].load(Ordering::Acquire) < clients
            && waited.elapsed() < Duration::from_secs(10)
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if seen[k].load(Ordering::Acquire) < clients {
            late += 1;
        }
        let id = ids.lock().expect("ids")[k].clone();
        let id = match id {
            Some(id) => id,
            None => pending_ids(&mut api)
                .await?
                .remove(&(k as i64))
                .ok_or_else(|| bad("hold not listed"))?,
        };
        approve(&mut api, &id).await?;
        read_answer(&mut m).await?;
    }
    let mut all = Vec::new();
    for t in tasks {
        if let Ok(Ok(lat)) = tokio::time::timeout(Duration::from_secs(30), t).await {
            all.extend(lat);
        }
    }
    let delivered = all.len();
    gw.terminate(Duration::from_secs(30));
    Ok(json!({
        "clients": clients,
        "events": events,
        "delivered": delivered,
        "missed": clients * events - delivered.min(clients * events),
        "events_not_seen_by_all_within_10s": late,
        "latency": summary(all),
    }))
}
