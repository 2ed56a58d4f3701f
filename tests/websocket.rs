//! The event websocket (`/api/ws`) seen by a real websocket client
//! (tokio-tungstenite) against the real binary, with the project's Python test
//! server as upstream: snapshot first, then `pending.created` and
//! `pending.resolved` with increasing `seq`; a reconnecting client gets a fresh
//! snapshot with the open hold; a foreign `Origin` is refused.
//!
//! The upstream needs Python with `mcp` installed: `AIRLOCK_TEST_PYTHON`
//! (scripts/test sets it to the test virtualenv), else `python3`.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const TOKEN: &str = "websocket-test-approver-token-0123";
const POLICY: &str = r#"{"version":"1","default":"allow",
  "rules":{"delete_*":{"action":"require_approval","reason":"destructive"}}}"#;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A running `airlock serve`, stopped (SIGTERM, then SIGKILL) when dropped.
struct Gateway {
    child: Child,
    dir: PathBuf,
    base: String,
    port: u16,
}

impl Gateway {
    fn start() -> Gateway {
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let python = std::env::var("AIRLOCK_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir =
            std::env::temp_dir().join(format!("airlock-ws-test-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("policy.json"), POLICY).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_airlock"))
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--audit")
            .arg(dir.join("audit.db"))
            .arg("--policy")
            .arg(dir.join("policy.json"))
            .arg("--")
            .arg(&python)
            .arg(repo.join("tests/servers/testserver.py"))
            .arg("stdio")
            .env("AIRLOCK_APPROVER_TOKEN", TOKEN)
            .env("RUST_LOG", "airlock=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the airlock binary");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.starts_with("airlock listening on ") => break,
                Ok(_) => {}
                Err(_) => panic!(
                    "airlock did not start listening within 15 s (exit: {:?})",
                    child.try_wait()
                ),
            }
        }
        Gateway {
            child,
            dir,
            base: format!("http://127.0.0.1:{port}"),
            port,
        }
    }

    fn ws_request(&self, origin: Option<&str>) -> tungstenite::handshake::client::Request {
        let mut request = format!("ws://127.0.0.1:{}/api/ws", self.port)
            .into_client_request()
            .unwrap();
        let headers = request.headers_mut();
        headers.insert("Authorization", format!("Bearer {TOKEN}").parse().unwrap());
        if let Some(origin) = origin {
            headers.insert("Origin", origin.parse().unwrap());
        }
        request
    }

    async fn connect(&self) -> Ws {
        let (ws, response) = tokio_tungstenite::connect_async(self.ws_request(None))
            .await
            .expect("websocket connect");
        assert_eq!(response.status(), 101);
        ws
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The next JSON text frame (pings and pongs skipped).
async fn next_event(ws: &mut Ws) -> Value {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("no websocket event within 10 s")
            .expect("websocket ended")
            .expect("websocket error");
        match frame {
            Message::Text(text) => {
                return serde_json::from_str(text.as_str()).expect("event is JSON");
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected websocket frame {other:?}"),
        }
    }
}

/// Reads events until one of `kind`; checks `seq` increases across all of them.
async fn next_of(ws: &mut Ws, kind: &str, last_seq: &mut u64) -> Value {
    loop {
        let event = next_event(ws).await;
        let seq = event["seq"]
            .as_u64()
            .unwrap_or_else(|| panic!("event without seq: {event}"));
        assert!(
            seq > *last_seq,
            "seq went from {last_seq} to {seq}: {event}"
        );
        assert!(event["at"].is_string(), "event without at: {event}");
        *last_seq = seq;
        if event["type"] == kind {
            return event;
        }
    }
}

#[tokio::test]
async fn websocket_snapshot_then_created_and_resolved_in_seq_order() {
    let gw = Gateway::start();
    let http = reqwest::Client::new();

    let mut first = gw.connect().await;
    let snapshot = next_event(&mut first).await;
    assert_eq!(snapshot["type"], "snapshot", "{snapshot}");
    assert_eq!(snapshot["pending"], json!([]), "{snapshot}");
    let mut seq = snapshot["seq"].as_u64().expect("snapshot seq");

    // A stateless-era tools/call that the policy holds.
    let mut call = {
        let http = http.clone();
        let url = format!("{}/mcp", gw.base);
        tokio::spawn(async move {
            let body = json!({
                "jsonrpc": "2.0", "id": 1, "method": "tools/call",
                "params": {"name": "delete_record", "arguments": {"id": "42"}, "_meta": {
                    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                    "io.modelcontextprotocol/clientCapabilities": {},
                    "io.modelcontextprotocol/clientInfo": {"name": "ws-test", "version": "1.0"}}}
            });
            let response = http
                .post(url)
                .header("Accept", "application/json, text/event-stream")
                .header("MCP-Protocol-Version", "2026-07-28")
                .header("Mcp-Method", "tools/call")
                .header("Mcp-Name", "delete_record")
                .json(&body)
                .send()
                .await
                .expect("held call");
            response.text().await.expect("held call body")
        })
    };

    let created = tokio::select! {
        created = next_of(&mut first, "pending.created", &mut seq) => created,
        answer = &mut call => panic!(
            "the call was answered instead of held (is AIRLOCK_TEST_PYTHON a Python with `mcp` installed?): {answer:?}"
        ),
    };
    let created_seq = seq;
    let pending = &created["pending"];
    let id = pending["id"].as_str().expect("pending id").to_owned();
    assert_eq!(pending["tool"], "delete_record");
    assert_eq!(pending["arguments"], json!({"id": "42"}));
    assert_eq!(pending["reason"], "destructive");

    // A second dashboard (or a reconnect) starts from a fresh snapshot with the hold.
    let mut second = gw.connect().await;
    let fresh = next_event(&mut second).await;
    assert_eq!(fresh["type"], "snapshot", "{fresh}");
    let open: Vec<&str> = fresh["pending"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(open, vec![id.as_str()], "{fresh}");
    let mut second_seq = fresh["seq"].as_u64().unwrap();
    assert!(
        second_seq >= created_seq,
        "snapshot seq {second_seq} is older than the event it contains"
    );

    let approved = http
        .post(format!("{}/api/pending/{id}/approve", gw.base))
        .bearer_auth(TOKEN)
        .json(&json!({"comment": "looks right"}))
        .send()
        .await
        .unwrap();
    assert_eq!(approved.status(), 200);

    for (ws, last) in [(&mut first, &mut seq), (&mut second, &mut second_seq)] {
        let resolved = next_of(ws, "pending.resolved", last).await;
        assert_eq!(resolved["id"], id.as_str(), "{resolved}");
        assert_eq!(resolved["decision"], "approved", "{resolved}");
        assert_eq!(resolved["decider"], "approver", "{resolved}");
        assert_eq!(resolved["channel"], "api", "{resolved}");
        assert_eq!(resolved["comment"], "looks right", "{resolved}");
    }
    assert!(seq > created_seq);

    let answer = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("call answered")
        .unwrap();
    assert!(
        answer.contains("deleted 42"),
        "the upstream's result did not come back (is AIRLOCK_TEST_PYTHON a Python with `mcp` installed?): {answer}"
    );

    // A browser page on another site may not listen in, even with a token.
    match tokio_tungstenite::connect_async(gw.ws_request(Some("http://evil.example"))).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 403),
        Err(other) => panic!("expected HTTP 403, got {other}"),
        Ok(_) => panic!("a cross-origin websocket was accepted"),
    }
    // Its own origin is fine.
    let (mut own, _) = tokio_tungstenite::connect_async(gw.ws_request(Some(&gw.base)))
        .await
        .expect("own origin");
    assert_eq!(next_event(&mut own).await["type"], "snapshot");

    for mut ws in [first, second, own] {
        let _ = ws.close(None).await;
        let _ = ws.flush().await;
    }
}
