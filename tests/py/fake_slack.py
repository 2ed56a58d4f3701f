"""A local stand-in for Slack, for test_slack.py: an HTTP server on 127.0.0.1
in the test process that records every request and answers as told.

It plays three parts of Slack:
  - an incoming webhook   POST /services/T000/B000/<secret>
  - response_url          POST /actions/<name>
  - the Web API           POST /api/chat.postMessage, /api/chat.update

Each request is answered by the next queued behaviour for its kind
(`fail_next`), else by the default (`"ok"`):
  "ok"              200 (webhooks answer "ok"; the Web API answers {"ok": true, …})
  500               HTTP 500
  (429, seconds)    HTTP 429 with Retry-After: seconds
  ("stall", secs)   answers 200 only after `secs` seconds
  ("api_error", e)  200 with {"ok": false, "error": e} (Web API only)
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

WEBHOOK_SECRET = "XyZsEcReTwEbHoOkPaTh0123456789"
BOT_TOKEN = "xoxb-fake-bot-token-0123456789"


@dataclass
class Request:
    path: str
    headers: dict
    raw: bytes
    status: int
    at: float = field(default_factory=time.monotonic)

    @property
    def kind(self) -> str:
        if self.path.startswith("/services/"):
            return "webhook"
        if self.path.startswith("/actions/"):
            return "response"
        return "api"

    @property
    def body(self):
        try:
            return json.loads(self.raw)
        except ValueError:
            return parse_qs(self.raw.decode())


class FakeSlack:
    def __init__(self):
        self.requests: list[Request] = []
        self.plans: dict[str, list] = {"webhook": [], "response": [], "api": []}
        self.default = "ok"
        self.cond = threading.Condition()
        self._ts = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                fake._answer(self, raw)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    # --- addresses -----------------------------------------------------------
    @property
    def webhook_url(self) -> str:
        return f"{self.base}/services/T000/B000/{WEBHOOK_SECRET}"

    @property
    def api_url(self) -> str:
        return f"{self.base}/api"

    def response_url(self, name: str) -> str:
        return f"{self.base}/actions/{name}"

    # --- behaviour -------------------------------------------------------------
    def fail_next(self, *behaviours, kind: str = "webhook"):
        with self.cond:
            self.plans[kind].extend(behaviours)

    def _behaviour(self, kind: str):
        with self.cond:
            return self.plans[kind].pop(0) if self.plans[kind] else self.default

    def _answer(self, handler: BaseHTTPRequestHandler, raw: bytes):
        path = handler.path
        kind = "webhook" if path.startswith("/services/") else "response" if path.startswith("/actions/") else "api"
        behaviour = self._behaviour(kind)
        status, headers, body = 200, {}, b"ok"
        if isinstance(behaviour, tuple) and behaviour[0] == "stall":
            time.sleep(behaviour[1])
        elif behaviour == 500:
            status, body = 500, b"internal_error"
        elif isinstance(behaviour, tuple) and behaviour[0] == 429:
            status, headers, body = 429, {"Retry-After": str(behaviour[1])}, b"rate_limited"
        if status == 200 and kind == "api":
            if isinstance(behaviour, tuple) and behaviour[0] == "api_error":
                body = json.dumps({"ok": False, "error": behaviour[1]}).encode()
            else:
                sent = json.loads(raw or b"{}")
                with self.cond:
                    self._ts += 1
                    ts = sent.get("ts") or f"1700000000.{self._ts:06d}"
                body = json.dumps({"ok": True, "channel": sent.get("channel"), "ts": ts}).encode()
        record = Request(path, {k.lower(): v for k, v in handler.headers.items()}, raw, status)
        with self.cond:
            self.requests.append(record)
            self.cond.notify_all()
        try:
            handler.send_response(status)
            for k, v in headers.items():
                handler.send_header(k, v)
            handler.send_header("Content-Type", "application/json" if kind == "api" else "text/plain")
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)
        except OSError:
            pass  # the client gave up (timeout)

    # --- what was received -----------------------------------------------------
    def received(self, kind: str | None = None, ok_only: bool = True, path: str | None = None) -> list[Request]:
        with self.cond:
            return [r for r in self.requests
                    if (kind is None or r.kind == kind) and (not ok_only or r.status == 200)
                    and (path is None or r.path == path)]

    def wait_for(self, predicate, timeout: float = 15.0, **filters) -> Request:
        """The first received request (as filtered) whose body satisfies `predicate`."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for r in self.received(**filters):
                    if predicate(r.body):
                        return r
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"fake Slack got no matching request within {timeout}s; got "
                                         f"{[(r.path, r.status, r.raw[:300]) for r in self.requests]}")
                self.cond.wait(left)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def texts(message) -> list[str]:
    """Every `text` string of a Block Kit message (and its fallback)."""
    out = []

    def walk(v):
        if isinstance(v, dict):
            t = v.get("text")
            if isinstance(t, str):
                out.append(t)
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    walk(message)
    return out


def all_text(message) -> str:
    return "\n".join(texts(message))
