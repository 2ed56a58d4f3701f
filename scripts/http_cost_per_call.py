#!/usr/bin/env python3
"""What one allowed call through Airlock's HTTP listener costs, beside the
floor of one hop (`examples/bare_proxy`) and the direct path: context
switches (all threads, /proc/PID/task/*/status), user and system CPU time
(/proc/PID/stat) per call of the measured process, and the client-side p50,
over N sequential `tools/call echo` from one keep-alive client after 300
warm-up calls. The HTTP counterpart of `stdio_cost_per_call.py`: counts that
hold still on a noisy machine where latency does not.

    scripts/http_cost_per_call.py [--calls N] [--audit-off] AIRLOCK_BIN

The Rust echo server (`examples/echo_server`, HTTP) is the upstream and
`bare_proxy` the floor; both are taken from the release directory beside
AIRLOCK_BIN's target (`$CARGO_TARGET_DIR/release/examples`) unless
`--examples DIR` says otherwise. `--audit-off` runs Airlock with
`[audit] record_allowed = false`. Used for the figures in
docs/benchmarks.md (section "HTTP agents: the connection's own wakes").
"""
import argparse
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from stdio_cost_per_call import POLICY, WARMUP, switches

TOKEN = "http-cost-approver-token-0123456789"


def cpu_us(pid: int) -> tuple[float, float]:
    """User and system CPU time of `pid` so far, in µs."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = 1e6 / os.sysconf("SC_CLK_TCK")
    return int(fields[11]) * tick, int(fields[12]) * tick


def start(cmd: list, pattern: str) -> tuple[subprocess.Popen, str]:
    """Starts `cmd` and waits (at most 60 s) for `pattern` in its output."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "AIRLOCK_APPROVER_TOKEN": TOKEN})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if m := re.search(pattern, line):
            # Keep reading its output so that it never blocks on a full pipe.
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, m.group(1)
    proc.kill()
    raise SystemExit(f"{cmd[0]} did not announce its address")


def measure(addr: str, path: str, pid: int, calls: int) -> str:
    host, port = addr.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}

    def post(body: dict) -> tuple[http.client.HTTPResponse, bytes]:
        conn.request("POST", path, json.dumps(body), headers)
        response = conn.getresponse()
        return response, response.read()

    response, _ = post({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "cost", "version": "1"}}})
    headers["MCP-Protocol-Version"] = "2025-06-18"
    if session := response.getheader("Mcp-Session-Id"):
        headers["Mcp-Session-Id"] = session
    post({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def call(i: int) -> None:
        response, body = post({"jsonrpc": "2.0", "id": i, "method": "tools/call",
                               "params": {"name": "echo", "arguments": {"text": f"call {i}"}}})
        if response.status != 200 or b'"result"' not in body:
            raise SystemExit(f"call {i}: HTTP {response.status}: {body[:200]!r}")

    for i in range(1, WARMUP + 1):
        call(i)
    switches0, (user0, sys0) = switches(pid), cpu_us(pid)
    times = []
    for i in range(WARMUP + 1, WARMUP + 1 + calls):
        t = time.perf_counter()
        call(i)
        times.append(time.perf_counter() - t)
    switches1, (user1, sys1) = switches(pid), cpu_us(pid)
    times.sort()
    return (f"context switches/call {(switches1 - switches0) / calls:.2f}, "
            f"CPU/call user {(user1 - user0) / calls:.0f} µs + system {(sys1 - sys0) / calls:.0f} µs, "
            f"client p50 {times[len(times) // 2] * 1e6:.0f} µs")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=5000)
    ap.add_argument("--audit-off", action="store_true")
    ap.add_argument("--examples", type=Path)
    ap.add_argument("airlock", type=Path)
    a = ap.parse_args()
    examples = a.examples or Path(os.environ.get("CARGO_TARGET_DIR", "target")) / "release" / "examples"
    procs = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            echo, upstream = start([examples / "echo_server", "http"], r"(127\.0\.0\.1:\d+)")
            procs.append(echo)
            bare, bare_addr = start([examples / "bare_proxy", f"http://{upstream}/mcp"],
                                    r"listening on http://(127\.0\.0\.1:\d+)")
            procs.append(bare)
            Path(tmp, "policy.json").write_text(json.dumps(POLICY))
            Path(tmp, "airlock.toml").write_text(
                f'listen = "127.0.0.1:0"\n\n[[upstream]]\nname = "echo"\nurl = "http://{upstream}/mcp"\n'
                f'policy = "{tmp}/policy.json"\n\n[[approver]]\nname = "cost"\n'
                f'token_env = "AIRLOCK_APPROVER_TOKEN"\n\n[audit]\npath = "{tmp}/audit.db"\n'
                f'record_allowed = {"false" if a.audit_off else "true"}\n')
            airlock, airlock_addr = start([a.airlock, "serve", "--config", f"{tmp}/airlock.toml"],
                                          r"airlock listening on http://(127\.0\.0\.1:\d+)")
            procs.append(airlock)
            print("direct     ", measure(upstream, "/mcp", echo.pid, a.calls))
            print("bare_proxy ", measure(bare_addr, "/mcp", bare.pid, a.calls))
            print("airlock    ", measure(airlock_addr, "/mcp/echo", airlock.pid, a.calls))
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
