//! The load driver's clients: a minimal keep-alive HTTP/1.1 client (so the
//! driver spends as little CPU per call as possible), MCP sessions on top of
//! it, and an MCP client for stdio servers.

use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// Longest wait for any single answer; every loop in the driver is also bounded.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

pub const PROTOCOL_VERSION: &str = "2025-06-18";

pub fn bad(message: impl Into<String>) -> io::Error {
    io::Error::other(message.into())
}

/// Status line and headers of one HTTP response.
#[derive(Debug)]
pub struct Head {
    pub status: u16,
    headers: Vec<(String, String)>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn chunked(&self) -> bool {
        self.header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    }

    fn length(&self) -> Option<usize> {
        self.header("content-length")
            .and_then(|v| v.trim().parse().ok())
    }

    pub fn is_sse(&self) -> bool {
        self.header("content-type")
            .is_some_and(|v| v.starts_with("text/event-stream"))
    }
}

/// One keep-alive HTTP/1.1 connection.
pub struct Http {
    stream: TcpStream,
    buf: Vec<u8>,
    pos: usize,
    host: String,
    out: Vec<u8>,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl Http {
    pub async fn connect(addr: SocketAddr) -> io::Result<Http> {
        let stream = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
            .await
            .map_err(|_| bad(format!("connect to {addr} timed out")))??;
        stream.set_nodelay(true)?;
        Ok(Http {
            stream,
            buf: Vec::with_capacity(16 * 1024),
            pos: 0,
            host: addr.to_string(),
            out: Vec::with_capacity(1024),
        })
    }

    /// Writes one request.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<()> {
        self.out.clear();
        write!(
            self.out,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n",
            self.host
        )?;
        for (k, v) in headers {
            write!(self.out, "{k}: {v}\r\n")?;
        }
        write!(self.out, "Content-Length: {}\r\n\r\n", body.len())?;
        self.out.extend_from_slice(body);
        self.stream.write_all(&self.out).await
    }

    async fn fill(&mut self) -> io::Result<()> {
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 64 * 1024 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.reserve(16 * 1024);
        let n = self.stream.read_buf(&mut self.buf).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        Ok(())
    }

    /// Reads a status line and headers.
    pub async fn read_head(&mut self) -> io::Result<Head> {
        loop {
            if let Some(end) = find(&self.buf[self.pos..], b"\r\n\r\n") {
                let text = std::str::from_utf8(&self.buf[self.pos..self.pos + end])
                    .map_err(|_| bad("response head is not UTF-8"))?;
                let mut lines = text.split("\r\n");
                let status = lines
                    .next()
                    .and_then(|l| l.split(' ').nth(1))
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| bad(format!("bad status line in {text:?}")))?;
                let headers = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                    .collect();
                self.pos += end + 4;
                return Ok(Head { status, headers });
            }
            self.fill().await?;
        }
    }

    async fn take(&mut self, n: usize) -> io::Result<Vec<u8>> {
        while self.buf.len() - self.pos < n {
            self.fill().await?;
        }
        let out = self.buf[self.pos..self.pos + n].to_vec();
        self.pos += n;
        Ok(out)
    }

    async fn line(&mut self) -> io::Result<String> {
        loop {
            if let Some(end) = find(&self.buf[self.pos..], b"\r\n") {
                let line =
                    String::from_utf8_lossy(&self.buf[self.pos..self.pos + end]).into_owned();
                self.pos += end + 2;
                return Ok(line);
            }
            self.fill().await?;
        }
    }

    /// The next chunk of a chunked body; `None` after the last one.
    pub async fn read_chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
        let size_line = self.line().await?;
        let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| bad(format!("bad chunk size {size_line:?}")))?;
        if size == 0 {
            // Trailers (none expected), then the blank line.
            while !self.line().await?.is_empty() {}
            return Ok(None);
        }
        let data = self.take(size).await?;
        self.line().await?;
        Ok(Some(data))
    }

    /// Reads the whole body of a response whose head was read.
    pub async fn read_body(&mut self, head: &Head) -> io::Result<Vec<u8>> {
        if head.chunked() {
            let mut body = Vec::new();
            while let Some(chunk) = self.read_chunk().await? {
                body.extend_from_slice(&chunk);
            }
            Ok(body)
        } else if let Some(n) = head.length() {
            self.take(n).await
        } else if head.status == 204 || head.status == 304 || head.status < 200 {
            Ok(Vec::new())
        } else {
            // Delimited by the end of the connection.
            let mut body = self.buf[self.pos..].to_vec();
            self.pos = self.buf.len();
            self.stream.read_to_end(&mut body).await?;
            Ok(body)
        }
    }

    /// One request and its whole response.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<(Head, Vec<u8>)> {
        self.send(method, path, headers, body).await?;
        tokio::time::timeout(ANSWER_TIMEOUT, async {
            let head = self.read_head().await?;
            let body = self.read_body(&head).await?;
            Ok((head, body))
        })
        .await
        .map_err(|_| {
            bad(format!(
                "no answer to {method} {path} within {ANSWER_TIMEOUT:?}"
            ))
        })?
    }
}

/// The JSON-RPC answer in a body that is either JSON or SSE.
pub fn rpc_answer(head: &Head, body: &[u8]) -> io::Result<Vec<u8>> {
    if head.is_sse() {
        sse_answer(body)
    } else {
        Ok(body.to_vec())
    }
}

/// The data of the event that carries a `result` or an `error` in an SSE body.
pub fn sse_answer(body: &[u8]) -> io::Result<Vec<u8>> {
    let text = String::from_utf8_lossy(body);
    for event in text.split("\n\n").flat_map(|e| e.split("\r\n\r\n")) {
        let data: Vec<&str> = event
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| d.strip_prefix(' ').unwrap_or(d))
            .collect();
        let data = data.join("\n");
        if data.contains("\"result\"") || data.contains("\"error\"") {
            return Ok(data.into_bytes());
        }
    }
    Err(bad(format!(
        "no JSON-RPC answer in the event stream: {text:.300}"
    )))
}

/// The text of the first content item of a successful `CallToolResult`.
pub fn result_text(answer: &[u8]) -> io::Result<String> {
    let v: serde_json::Value =
        serde_json::from_slice(answer).map_err(|e| bad(format!("bad JSON answer: {e}")))?;
    if v["result"]["isError"] == serde_json::Value::Bool(true) || v.get("error").is_some() {
        return Err(bad(format!("call failed: {v}")));
    }
    v["result"]["content"][0]["text"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| bad(format!("no text in {v}")))
}

fn check_call(answer: &[u8]) -> io::Result<()> {
    // A cheap check on the hot path: an answer with a result and not an error.
    let ok = find(answer, b"\"result\"").is_some() && find(answer, b"\"isError\":true").is_none();
    if ok {
        Ok(())
    } else {
        Err(bad(format!(
            "call failed: {}",
            String::from_utf8_lossy(answer)
        )))
    }
}

fn initialize_body(id: u64) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"initialize","params":{{"protocolVersion":"{PROTOCOL_VERSION}","capabilities":{{}},"clientInfo":{{"name":"airlock-bench","version":"1.0.0"}}}}}}"#
    )
}

const INITIALIZED: &str = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;

pub fn call_body(id: u64, tool: &str, arguments: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{tool}","arguments":{arguments}}}}}"#
    )
}

/// An MCP session over Streamable HTTP (handshake era).
pub struct Mcp {
    pub http: Http,
    pub path: String,
    pub session: Option<String>,
    next_id: u64,
}

impl Mcp {
    /// Connects, initializes, and sends `notifications/initialized`.
    pub async fn connect(addr: SocketAddr, path: &str) -> io::Result<Mcp> {
        let mut mcp = Mcp::attach(addr, path, None).await?;
        let (head, body) = mcp.post(initialize_body(0).as_bytes()).await?;
        if head.status != 200 {
            return Err(bad(format!(
                "initialize: HTTP {}: {}",
                head.status,
                String::from_utf8_lossy(&body)
            )));
        }
        rpc_answer(&head, &body)?;
        mcp.session = head.header("mcp-session-id").map(str::to_owned);
        let (head, body) = mcp.post(INITIALIZED.as_bytes()).await?;
        if !(200..300).contains(&head.status) {
            return Err(bad(format!(
                "initialized: HTTP {}: {}",
                head.status,
                String::from_utf8_lossy(&body)
            )));
        }
        Ok(mcp)
    }

    /// A new connection within an existing session (no handshake).
    pub async fn attach(addr: SocketAddr, path: &str, session: Option<String>) -> io::Result<Mcp> {
        Ok(Mcp {
            http: Http::connect(addr).await?,
            path: path.to_owned(),
            session,
            next_id: 1,
        })
    }

    async fn send(&mut self, body: &[u8]) -> io::Result<()> {
        let mut headers = vec![
            ("Content-Type", "application/json"),
            ("Accept", "application/json, text/event-stream"),
        ];
        if let Some(sid) = &self.session {
            headers.push(("Mcp-Session-Id", sid));
            headers.push(("MCP-Protocol-Version", PROTOCOL_VERSION));
        }
        self.http.send("POST", &self.path, &headers, body).await
    }

    pub async fn post(&mut self, body: &[u8]) -> io::Result<(Head, Vec<u8>)> {
        self.send(body).await?;
        let http = &mut self.http;
        tokio::time::timeout(ANSWER_TIMEOUT, async {
            let head = http.read_head().await?;
            let body = http.read_body(&head).await?;
            Ok((head, body))
        })
        .await
        .map_err(|_| bad("no answer within the time limit"))?
    }

    /// Calls a tool and returns the JSON-RPC answer.
    pub async fn call(&mut self, tool: &str, arguments: &str) -> io::Result<Vec<u8>> {
        let id = self.next_id;
        self.next_id += 1;
        let (head, body) = self.post(call_body(id, tool, arguments).as_bytes()).await?;
        if head.status != 200 {
            return Err(bad(format!(
                "tools/call: HTTP {}: {}",
                head.status,
                String::from_utf8_lossy(&body)
            )));
        }
        let answer = rpc_answer(&head, &body)?;
        check_call(&answer)?;
        Ok(answer)
    }

    /// Sends a call and reads only the response head (for held calls, whose
    /// answer comes later as an event stream).
    pub async fn start_call(&mut self, id: u64, tool: &str, arguments: &str) -> io::Result<Head> {
        self.send(call_body(id, tool, arguments).as_bytes()).await?;
        tokio::time::timeout(ANSWER_TIMEOUT, self.http.read_head())
            .await
            .map_err(|_| bad("no response head within the time limit"))?
    }
}

/// An MCP client of a stdio server (the direct baseline, or `airlock stdio`).
pub struct StdioMcp {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    line: String,
    next_id: u64,
    out: Vec<u8>,
}

impl StdioMcp {
    pub async fn spawn(
        command: &[String],
        env: &[(&str, &str)],
        stderr: std::fs::File,
    ) -> io::Result<StdioMcp> {
        let mut cmd = Command::new(&command[0]);
        cmd.args(&command[1..])
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd.spawn()?;
        let stdin = child.stdin.take().ok_or_else(|| bad("no stdin"))?;
        let stdout = BufReader::with_capacity(
            64 * 1024,
            child.stdout.take().ok_or_else(|| bad("no stdout"))?,
        );
        let mut mcp = StdioMcp {
            child,
            stdin,
            stdout,
            line: String::new(),
            next_id: 1,
            out: Vec::new(),
        };
        mcp.write(&initialize_body(0)).await?;
        tokio::time::timeout(ANSWER_TIMEOUT, mcp.read_answer(0))
            .await
            .map_err(|_| bad("no answer to initialize"))??;
        mcp.write(INITIALIZED).await?;
        Ok(mcp)
    }

    async fn write(&mut self, line: &str) -> io::Result<()> {
        self.out.clear();
        self.out.extend_from_slice(line.as_bytes());
        self.out.push(b'\n');
        self.stdin.write_all(&self.out).await?;
        self.stdin.flush().await
    }

    async fn read_answer(&mut self, id: u64) -> io::Result<()> {
        #[derive(serde::Deserialize)]
        struct Envelope {
            id: Option<u64>,
            method: Option<serde::de::IgnoredAny>,
        }
        loop {
            self.line.clear();
            if self.stdout.read_line(&mut self.line).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "stdio server closed stdout",
                ));
            }
            let env: Envelope = match serde_json::from_str(&self.line) {
                Ok(env) => env,
                Err(_) => continue,
            };
            if env.method.is_none() && env.id == Some(id) {
                return check_call_or_init(self.line.as_bytes());
            }
        }
    }

    pub async fn call(&mut self, tool: &str, arguments: &str) -> io::Result<()> {
        let id = self.next_id;
        self.next_id += 1;
        self.write(&call_body(id, tool, arguments)).await?;
        tokio::time::timeout(ANSWER_TIMEOUT, self.read_answer(id))
            .await
            .map_err(|_| bad("no answer within the time limit"))?
    }

    /// Closes stdin and waits for the process (killed after a grace period).
    pub async fn close(mut self) {
        drop(self.stdin);
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

fn check_call_or_init(answer: &[u8]) -> io::Result<()> {
    if find(answer, b"\"error\"").is_some() && find(answer, b"\"result\"").is_none() {
        return Err(bad(format!(
            "request failed: {}",
            String::from_utf8_lossy(answer)
        )));
    }
    check_call(answer)
}
