"""Helpers for the approval-hold tests (test_holds.py, test_approval_api.py,
test_audit_history.py): a config-mode gateway with named approvers, the
approvers' HTTP API, raw held calls on threads, and a minimal websocket client.

Everything talks to the real `airlock` binary over real sockets.
"""
from __future__ import annotations

import base64
import json
import os
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import httpx

import rawmcp as rm
from harness import AIRLOCK_BIN, PYTHON, TESTSERVER, Proc, gateway_number, listening_port, write_json

ALICE = "alice-approver-token-0123456789"
BOB = "bob-approver-token-0123456789ab"
AGENT = "agent-token-for-claude-0123456789"
TOKENS_ENV = {"AIRLOCK_TEST_ALICE": ALICE, "AIRLOCK_TEST_BOB": BOB, "AIRLOCK_TEST_AGENT": AGENT}

UPSTREAM = "test"

# delete_* is held; echo is allowed; crash is denied by policy.
HOLD_POLICY = {
    "version": "1",
    "default": "deny",
    "rules": {
        "echo": {"action": "allow"},
        "crash": {"action": "deny", "reason": "no crashing"},
        "delete_*": {"action": "require_approval", "reason": "destructive"},
    },
}

DECISIONS = {"approved", "denied_by_human", "timed_out", "cancelled", "denied", "abandoned"}


def timeout_policy(seconds: int, on_timeout: str) -> dict:
    return {
        "version": "1",
        "default": "deny",
        "rules": {
            "echo": {"action": "allow"},
            "delete_*": {
                "action": "require_approval",
                "reason": "destructive",
                "approval": {"timeout": seconds, "on_timeout": on_timeout},
            },
        },
    }


class Gateway:
    """A running `airlock serve --config …` with approvers alice and bob."""

    def __init__(self, proc: Proc, port: int, audit: Path, config: Path):
        self.proc = proc
        self.port = port
        self.audit = audit
        self.config = config
        self.base = f"http://127.0.0.1:{port}"
        self.mcp = f"{self.base}/mcp/{UPSTREAM}"
        self.http = httpx.Client(base_url=self.base, timeout=httpx.Timeout(15.0, connect=5.0))

    # --- approvers' API -------------------------------------------------
    def api(self, method: str, path: str, token: str | None = ALICE, **kw) -> httpx.Response:
        headers = dict(kw.pop("headers", {}) or {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return self.http.request(method, path, headers=headers, **kw)

    def pending(self) -> list[dict]:
        r = self.api("GET", "/api/pending")
        assert r.status_code == 200, r.text
        return r.json()["pending"]

    def wait_pending(self, n: int = 1, timeout: float = 15.0, where=None) -> list[dict]:
        """Waits until at least `n` (matching) holds are open; returns them."""
        deadline = time.monotonic() + timeout
        while True:
            items = [p for p in self.pending() if where is None or where(p)]
            if len(items) >= n:
                return items
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {n} pending, have {items}\n{self.proc.stderr_text()[-3000:]}")
            time.sleep(0.05)

    def wait_gone(self, pending_id: str, timeout: float = 10.0):
        assert rm.wait_until(lambda: all(p["id"] != pending_id for p in self.pending()), timeout), (
            f"{pending_id} still pending")

    def decide(self, pending_id: str, action: str, token: str = ALICE, comment: str | None = None) -> httpx.Response:
        body = {} if comment is None else {"comment": comment}
        return self.api("POST", f"/api/pending/{pending_id}/{action}", token=token, json=body)

    def audit_rows(self, **filters) -> list[dict]:
        """Every audit row matching the filters, oldest first (follows the cursor)."""
        rows, cursor = [], None
        while True:
            params = {**filters, "limit": 1000}
            if cursor:
                params["cursor"] = cursor
            r = self.api("GET", "/api/audit", params=params)
            assert r.status_code == 200, r.text
            body = r.json()
            rows.extend(body["entries"])
            cursor = body.get("next_cursor")
            if not cursor:
                break
        return sorted(rows, key=lambda e: e["seq"])

    def decision_rows(self, pending_id: str) -> list[dict]:
        return [e for e in self.audit_rows(pending_id=pending_id) if e["decision"] in DECISIONS]

    def metrics(self) -> dict[str, float]:
        r = self.http.get("/metrics")
        assert r.status_code == 200, r.text
        out = {}
        for line in r.text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out


def write_config(tmp_path: Path, policy: dict, *, progress: float = 0.5, agents: bool = False,
                 name: str = "airlock", upstream_args: list[str] = (), url: str | None = None,
                 resume_grace: float | None = None) -> Path:
    """A config whose upstream is the stdio test server, or the HTTP server at `url`."""
    policy_path = write_json(tmp_path / f"{name}-policy.json", policy)
    if url:
        upstream = [f"url = {json.dumps(url)}"]
    else:
        upstream = [f"command = {json.dumps(PYTHON)}",
                    f"args = {json.dumps([str(TESTSERVER), 'stdio', *map(str, upstream_args)])}"]
    lines = [
        "[[upstream]]",
        f'name = "{UPSTREAM}"',
        *upstream,
        f"policy = {json.dumps(str(policy_path))}",
        "",
        "[[approver]]",
        'name = "alice"',
        'token_env = "AIRLOCK_TEST_ALICE"',
        "",
        "[[approver]]",
        'name = "bob"',
        'token_env = "AIRLOCK_TEST_BOB"',
        "",
    ]
    if agents:
        lines += ["[[agent]]", 'name = "claude-desktop"', 'token_env = "AIRLOCK_TEST_AGENT"', ""]
    lines += ["[approval]", f"progress_interval = {progress}"]
    if resume_grace is not None:
        lines.append(f"resume_grace = {resume_grace}")
    lines.append("")
    path = tmp_path / f"{name}.toml"
    path.write_text("\n".join(lines))
    return path


def start_gateway(procs, policy: dict = HOLD_POLICY, *, progress: float = 0.5, agents: bool = False,
                  audit: Path | None = None, config: Path | None = None, upstream_args: list[str] = (),
                  url: str | None = None, resume_grace: float | None = None) -> Gateway:
    tmp = procs.tmp_path
    n = gateway_number()
    config = config or write_config(tmp, policy, progress=progress, agents=agents, name=f"airlock-{n}",
                                    upstream_args=upstream_args, url=url, resume_grace=resume_grace)
    audit = audit or tmp / f"audit-{n}.db"
    cmd = [AIRLOCK_BIN, "serve", "--config", config, "--listen", "127.0.0.1:0", "--audit", audit]
    proc = procs.start(cmd, env=TOKENS_ENV)
    return Gateway(proc, listening_port(proc), audit, config)



def run_cli(*args, env: dict | None = None, timeout: float = 20) -> subprocess.CompletedProcess:
    full = dict(os.environ)
    full.update(env or {})
    return subprocess.run([AIRLOCK_BIN, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=full)


# --- raw held calls ---------------------------------------------------------

class HeldCall(threading.Thread):
    """A stateless-era `tools/call` on its own thread and connection; `.answer`
    is the JSON-RPC response (or None), `.messages` every SSE message."""

    def __init__(self, url: str, name: str, arguments: dict, req_id=1, headers: dict | None = None,
                 progress_token=None, session: str | None = None):
        super().__init__(daemon=True)
        self.url, self.name, self.arguments, self.req_id = url, name, arguments, req_id
        self.extra = headers or {}
        self.progress_token = progress_token
        self.session = session
        self.answer: dict | None = None
        self.messages: list[dict] = []
        self.status: int | None = None
        self.error: BaseException | None = None
        self.finished_at: float | None = None

    def body(self) -> dict:
        meta = {} if self.session else rm.stateless_meta()
        if self.progress_token is not None:
            meta["progressToken"] = self.progress_token
        return rm.call_body(self.req_id, self.name, self.arguments, meta or None)

    def headers(self) -> dict:
        if self.session:
            return rm.session_headers(self.session, self.extra)
        return {**rm.stateless_headers("tools/call", self.name), **self.extra}

    def run(self):
        try:
            with httpx.Client(timeout=httpx.Timeout(60.0, connect=5.0)) as c:
                r = rm.post(c, self.url, self.body(), self.headers())
                self.status = r.status_code
                self.messages = rm.messages(r)
                for m in self.messages:
                    if "method" not in m and m.get("id") == self.req_id:
                        self.answer = m
        except BaseException as e:  # noqa: BLE001
            self.error = e
        finally:
            self.finished_at = time.monotonic()

    def result(self, timeout: float = 20.0) -> dict:
        self.join(timeout)
        assert not self.is_alive(), f"held call {self.arguments} got no answer within {timeout}s"
        assert self.error is None, repr(self.error)
        assert self.answer is not None, (self.status, self.messages)
        assert "result" in self.answer, self.answer
        return self.answer["result"]


# --- websocket -----------------------------------------------------------------

class WebSocket:
    """Just enough RFC 6455 for the event stream: handshake, text frames in,
    close out. Server frames are unmasked; ours are masked."""

    def __init__(self, port: int, headers: dict | None = None, path: str = "/api/ws"):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ] + [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                break
            head += chunk
        head, _, self.buf = head.partition(b"\r\n\r\n")
        status_line = head.split(b"\r\n", 1)[0].decode()
        self.status = int(status_line.split()[1])
        self.head = head.decode("latin-1")

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("websocket closed by the server")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv(self, timeout: float = 10.0) -> dict:
        """The next text frame as JSON (skips pings)."""
        self.sock.settimeout(timeout)
        while True:
            b0, b1 = self._read(2)
            opcode, length = b0 & 0x0F, b1 & 0x7F
            if length == 126:
                length = struct.unpack(">H", self._read(2))[0]
            elif length == 127:
                length = struct.unpack(">Q", self._read(8))[0]
            payload = self._read(length)
            if opcode == 1:
                return json.loads(payload)
            if opcode == 8:
                raise ConnectionError(f"websocket closed: {payload!r}")

    def recv_until(self, predicate, timeout: float = 10.0) -> tuple[dict, list[dict]]:
        """Reads events until one matches; returns it and everything read."""
        deadline = time.monotonic() + timeout
        seen = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching event within {timeout}s; saw {seen}")
            event = self.recv(left)
            seen.append(event)
            if predicate(event):
                return event, seen

    def close(self):
        try:
            mask = os.urandom(4)
            payload = struct.pack(">H", 1000)
            masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            self.sock.sendall(bytes([0x88, 0x80 | len(payload)]) + mask + masked)
        except OSError:
            pass
        self.sock.close()
