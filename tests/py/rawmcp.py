"""Raw-protocol helpers for the HTTP, stdio-agent, fault and CLI tests: hand-built
JSON-RPC bodies sent with httpx or over pipes, SSE parsing, and a /proc scan
that finds a test's own upstream processes by a marker in their command line.

Kept apart from harness.py (which other test files share) so these helpers can
grow without touching it.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import httpx

from harness import AIRLOCK_BIN, PYTHON, TESTSERVER

HANDSHAKE_VERSION = "2025-11-25"
STATELESS_VERSION = "2026-07-28"
TIMEOUT = httpx.Timeout(10.0, connect=5.0)
ACCEPT = "application/json, text/event-stream"


def client() -> httpx.Client:
    return httpx.Client(timeout=TIMEOUT)


def marked_testserver(marker: Path, era: str = "both") -> list[str]:
    """A stdio testserver whose command line carries `marker` (a path unique to
    the test), so `procs_with(marker)` finds exactly this test's children.
    (`--log-requests` is accepted and ignored by the stdio transport.)"""
    return [PYTHON, str(TESTSERVER), "stdio", "--era", era, "--log-requests", str(marker)]


def procs_with(marker) -> list[int]:
    """PIDs of live (non-zombie) processes, other than airlock itself, whose
    command line contains `marker`."""
    needle = str(marker).encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            if needle not in cmdline:
                continue
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        argv = cmdline.split(b"\0")
        if Path(argv[0].decode(errors="replace")).name == "airlock":
            continue  # the gateway itself carries the upstream command in its args
        state = stat.rsplit(")", 1)[1].split()[0]
        if state != "Z":
            found.append(int(entry))
    return found


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.05):
    """Polls `predicate` until it returns something truthy; returns it or the last value."""
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = predicate()
    return value


def init_body(req_id=1, version: str = HANDSHAKE_VERSION, capabilities: dict | None = None) -> dict:
    return {
        "jsonrpc": "2.0",
        "id": req_id,
        "method": "initialize",
        "params": {
            "protocolVersion": version,
            "capabilities": capabilities or {},
            "clientInfo": {"name": "raw-test", "version": "1.0"},
        },
    }


def post(c: httpx.Client, url: str, body, headers: dict | None = None, **kw) -> httpx.Response:
    """POSTs a dict (as JSON) or raw bytes/str with MCP's usual headers."""
    h = {"Content-Type": "application/json", "Accept": ACCEPT}
    h.update(headers or {})
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return c.post(url, content=content, headers=h, **kw)


def sse_messages(text: str) -> list[dict]:
    """The JSON-RPC messages of an SSE body (multi-line data joined)."""
    out, data = [], []
    for line in text.replace("\r\n", "\n").split("\n"):
        if line.startswith("data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(" ") else value)
        elif line == "":
            joined = "\n".join(data).strip()
            if joined:
                out.append(json.loads(joined))
            data = []
    joined = "\n".join(data).strip()
    if joined:
        out.append(json.loads(joined))
    return out


def stream_messages(resp: httpx.Response):
    """Yields the JSON-RPC messages of a streaming SSE response as each event completes."""
    text = ""
    for chunk in resp.iter_text():
        text += chunk.replace("\r\n", "\n")
        while "\n\n" in text:
            frame, text = text.split("\n\n", 1)
            yield from sse_messages(frame + "\n\n")


def messages(resp: httpx.Response) -> list[dict]:
    ctype = resp.headers.get("content-type", "")
    if ctype.startswith("text/event-stream"):
        return sse_messages(resp.text)
    if not resp.content:
        return []
    return [resp.json()]


def answer(resp: httpx.Response, req_id=None) -> dict:
    """The JSON-RPC response in an HTTP response (JSON or SSE)."""
    for m in messages(resp):
        if "method" not in m and ("result" in m or "error" in m):
            if req_id is None or m.get("id") == req_id:
                return m
    raise AssertionError(f"no JSON-RPC response in HTTP {resp.status_code}: {resp.text[:2000]}")


def open_session(c: httpx.Client, url: str, headers: dict | None = None) -> str:
    """initialize + notifications/initialized; returns the Mcp-Session-Id."""
    r = post(c, url, init_body(), headers)
    assert r.status_code == 200, r.text
    assert "result" in answer(r, 1), r.text
    sid = r.headers.get("mcp-session-id")
    assert sid, f"initialize answered without Mcp-Session-Id: {dict(r.headers)}"
    h = {"Mcp-Session-Id": sid, "MCP-Protocol-Version": HANDSHAKE_VERSION, **(headers or {})}
    r = post(c, url, {"jsonrpc": "2.0", "method": "notifications/initialized"}, h)
    assert r.status_code == 202, (r.status_code, r.text)
    return sid


def session_headers(sid: str, extra: dict | None = None) -> dict:
    return {"Mcp-Session-Id": sid, "MCP-Protocol-Version": HANDSHAKE_VERSION, **(extra or {})}


def call_body(req_id, name: str, arguments: dict | None = None, meta: dict | None = None) -> dict:
    params: dict = {"name": name, "arguments": arguments or {}}
    if meta is not None:
        params["_meta"] = meta
    return {"jsonrpc": "2.0", "id": req_id, "method": "tools/call", "params": params}


def stateless_meta() -> dict:
    return {
        "io.modelcontextprotocol/protocolVersion": STATELESS_VERSION,
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "raw-test", "version": "1.0"},
    }


def stateless_headers(method: str, name: str | None = None) -> dict:
    h = {"MCP-Protocol-Version": STATELESS_VERSION, "Mcp-Method": method}
    if name is not None:
        h["Mcp-Name"] = name
    return h


def rpc_error_of(resp: httpx.Response) -> dict:
    """The `error` object of a JSON-RPC error body (asserting it is one)."""
    assert resp.headers.get("content-type", "").startswith("application/json"), (
        resp.status_code, dict(resp.headers), resp.text)
    body = resp.json()
    assert body.get("jsonrpc") == "2.0" and "error" in body, body
    assert isinstance(body["error"].get("code"), int) and body["error"].get("message"), body
    return body["error"]


def read_log(path: Path) -> list[dict]:
    """Records written by `testserver.py http --log-requests`."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_check(*files, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run([AIRLOCK_BIN, "check", *map(str, files)], capture_output=True, text=True, timeout=timeout)


class TinyUpstream:
    """A minimal HTTP upstream in the test process, for answers the project's test server
    does not give. `respond(body)` gets each POSTed JSON-RPC message and returns
    `(content_type, extra_headers, payload_bytes)`, or `(status, content_type, extra_headers,
    payload_bytes)`; `calls` keeps every message seen."""

    def __init__(self, respond):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        import threading

        self.calls: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                outer.calls.append(body)
                answer = respond(body)
                status, (content_type, headers, data) = (200, answer) if len(answer) == 3 else (answer[0], answer[1:])
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/mcp"

    def close(self):
        self.server.shutdown()
        self.server.server_close()
