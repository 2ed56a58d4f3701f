#!/usr/bin/env python3
"""CPU instructions Airlock executes per allowed `tools/call` (callgrind), a
figure that does not move with the machine's load the way timings do.

    scripts/callgrind_per_call.py [--calls 1000] [--warmup 200] [--stateless]
                                  [--airlock PATH] [--echo PATH] [--bare-proxy]

Needs a release build (`cargo build --release --bin airlock --example
echo_server`), valgrind, and a Python with httpx (the test virtualenv).
Starts the Rust echo upstream (HTTP), Airlock under callgrind in front of it
(allow policy, audit on), opens one handshake-era session, makes `--warmup`
calls, zeroes the counters (`callgrind_control -z`), makes `--calls`
sequential calls from one keep-alive client, dumps (`callgrind_control -d`)
and prints Airlock's instructions (Ir) per call: every thread, the audit
writer included. The client and the upstream are not measured. `--stateless`
makes stateless-era calls (no session; `_meta` and mirrored headers) instead.
`--airlock`/`--echo` measure other builds (e.g. a base commit's, for a
before/after). Also prints `airlock_body_parses_total` per measured call
(absent before the parse-once work). `--bare-proxy` measures
`examples/bare_proxy` instead of Airlock: the same HTTP server, pooled
client, runtime and allocator doing nothing but relay, i.e. the floor of
one hop; Airlock's own work is its count minus this one.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/airlock-target"))
POLICY = {"version": "1", "default": "deny", "rules": {"echo": {"action": "allow"}}}


def announced(proc: subprocess.Popen, prefix: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        m = re.search(prefix + r"\s*(?:http://)?([0-9.]+:[0-9]+)", line)
        if m:
            return m.group(1)
    raise SystemExit(f"no '{prefix}' line from {proc.args[0]}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--stateless", action="store_true", help="stateless-era calls (2026-07-28)")
    ap.add_argument("--airlock", type=Path, default=TARGET / "release/airlock")
    ap.add_argument("--echo", type=Path, default=TARGET / "release/examples/echo_server")
    ap.add_argument("--bare-proxy", action="store_true",
                    help="measure examples/bare_proxy (the floor of one hop) instead of Airlock")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="airlock-callgrind-"))
    echo = subprocess.Popen([a.echo, "http", "127.0.0.1:0", "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    gw = None
    try:
        upstream = announced(echo, "listening on")
        (tmp / "policy.json").write_text(json.dumps(POLICY))
        (tmp / "airlock.toml").write_text(
            f'listen = "127.0.0.1:0"\n\n[[upstream]]\nname = "echo"\nurl = "http://{upstream}/mcp"\n'
            f'policy = "{tmp / "policy.json"}"\n\n[audit]\npath = "{tmp / "audit.db"}"\n')
        out = tmp / "callgrind.out"
        measured = ([a.echo.parent / "bare_proxy", f"http://{upstream}/mcp"] if a.bare_proxy
                    else [a.airlock, "serve", "--config", tmp / "airlock.toml"])
        gw = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p", *measured],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "AIRLOCK_APPROVER_TOKEN": "callgrind-approver-token-0123456789"})
        addr = announced(gw, 'listening on' if a.bare_proxy else 'airlock listening on')
        base = f"http://{addr}/mcp" if a.bare_proxy else f"http://{addr}/mcp/echo"
        h = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        meta = None
        with httpx.Client(timeout=60) as c:
            if a.stateless:
                meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                        "io.modelcontextprotocol/clientCapabilities": {},
                        "io.modelcontextprotocol/clientInfo": {"name": "callgrind", "version": "1"}}
                h = {**h, "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": "echo"}
            else:
                init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                    "protocolVersion": "2025-06-18", "capabilities": {},
                    "clientInfo": {"name": "callgrind", "version": "1"}}}
                r = c.post(base, json=init, headers=h)
                h = {**h, "Mcp-Session-Id": r.headers["mcp-session-id"], "MCP-Protocol-Version": "2025-06-18"}
                c.post(base, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=h)

            def calls(n: int) -> None:
                for i in range(n):
                    params = {"name": "echo", "arguments": {"text": "hello from callgrind", "n": i}}
                    if meta:
                        params["_meta"] = meta
                    body = {"jsonrpc": "2.0", "id": i + 1, "method": "tools/call", "params": params}
                    r = c.post(base, json=body, headers=h)
                    assert r.status_code == 200 and '"isError":true' not in r.text, r.text

            def parses() -> int | None:
                if a.bare_proxy:
                    return None
                r = c.get(f"http://{addr}/metrics")
                for line in r.text.splitlines():
                    if line.startswith("airlock_body_parses_total "):
                        return int(line.split()[1])
                return None

            calls(a.warmup)
            before = parses()  # outside the measured window
            subprocess.run(["callgrind_control", "-z", str(gw.pid)], check=True, capture_output=True)
            calls(a.calls)
            subprocess.run(["callgrind_control", "-d", str(gw.pid)], check=True, capture_output=True)
            after = parses()
        dumps = sorted(tmp.glob("callgrind.out.*.*"), key=lambda p: p.stat().st_mtime)
        total = 0
        for line in dumps[-1].read_text(errors="replace").splitlines():
            if line.startswith("summary:") or line.startswith("totals:"):
                total = int(line.split()[1])
                break
        era = "stateless" if a.stateless else "handshake"
        print(f"{total:,} instructions for {a.calls} {era}-era calls: {total // a.calls:,} per allowed call "
              f"(dump {dumps[-1]})")
        if not a.bare_proxy:
            writer(dumps[-1], total, a.calls)
        if before is not None and after is not None:
            print(f"airlock_body_parses_total: {after - before} for {a.calls} calls "
                  f"({(after - before) / a.calls:g} per allowed call)")
    finally:
        for p in (gw, echo):
            if p and p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()


def writer(dump: Path, total: int, calls: int) -> None:
    """Splits the total into the audit writer thread and the rest: the
    writer's share depends on how many rows each of its transactions
    gathered (it lingers 2 ms for more), which moves with the machine's speed
    and load, so the rest is the figure to compare builds by."""
    tree = subprocess.run(["callgrind_annotate", "--tree=caller", "--inclusive=yes", "--threshold=100",
                           "--auto=no", str(dump)], capture_output=True, text=True).stdout
    own = re.search(r"^\s*([\d,]+) .*\*\s+\S*airlock::audit::write_loop\s", tree, re.M)
    # The block of the backend's `append` (one call per transaction), and in
    # it the line of its caller, the writer loop, with the number of calls.
    block = next((b for b in tree.split("\n\n") if re.search(r"\*\s+.*AuditBackend>::append\s", b)), "")
    batches = re.search(r"<\s+\S*airlock::audit::write_loop \(([\d,]+)x\)", block)
    if not own or not batches:
        return
    own, batches = int(own.group(1).replace(",", "")), int(batches.group(1).replace(",", ""))
    print(f"audit writer thread: {own // calls:,} per call, {batches:,} transactions "
          f"({calls / batches:.2f} rows each); everything else: {(total - own) // calls:,} per call")


if __name__ == "__main__":
    main()
