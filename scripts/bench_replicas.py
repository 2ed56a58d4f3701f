#!/usr/bin/env python3
"""Replicas on one PostgreSQL, through the release binaries (docs/benchmarks.md, "Replicas").

    cargo build --release --bin airlock --example echo_server
    ~/.cache/airlock-venv/bin/python scripts/bench_replicas.py [--samples 300] [--duration 10] [--connections 64]

Starts a throwaway PostgreSQL (tests/py/pgcluster.py: initdb + pg_ctl, fsync off) and
`airlock serve` replicas A and B on it (`[store] url`), each in front of its own
`echo_server stdio` (the near-free upstream of the gateway benchmarks), then measures:

1. **release**: a stateless-era `tools/call` held on A; once it is listed on the approver's
   replica, the approver POSTs approve; time from sending that POST to the agent receiving the
   upstream's answer on A. Decision on B (across replicas: B's compare-and-set → NOTIFY → A's
   pump → A records the audit row in PostgreSQL → forwards → answers) and, as the baseline, on A.
   Sequential, `--samples` each.
2. **allowed calls/s** with the audit chain on PostgreSQL: `wrk` (`--connections` keep-alive
   connections, 2 threads) posting an allowed stateless `tools/call` for `--duration` seconds, to
   one replica, then spread over two (half the connections each, at the same time). Every call
   is an audit row in the shared chain; `airlock audit verify --store` checks it afterwards.

Needs `wrk` (Debian: apt-get install wrk) and PostgreSQL's server binaries (scripts/setup-test-env).
Prints one JSON document. Environment: AIRLOCK_BIN and ECHO_BIN (default: the release builds
in $CARGO_TARGET_DIR, else ~/.cache/airlock-target), AIRLOCK_PG_BIN as for the tests.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "py"))

import httpx  # noqa: E402

from pgcluster import PgCluster, find_bin  # noqa: E402

TARGET = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache" / "airlock-target"))
AIRLOCK = os.environ.get("AIRLOCK_BIN", str(TARGET / "release" / "airlock"))
ECHO = os.environ.get("ECHO_BIN", str(TARGET / "release" / "examples" / "echo_server"))
TOKEN = "bench-approver-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
POLICY = {"version": "1", "default": "deny",
          "rules": {"echo": {"action": "allow"}, "search": {"action": "require_approval"}}}
META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "1"}}


def headers(tool: str) -> dict:
    return {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
            "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": tool}


def body(tool: str, n: int) -> str:
    return json.dumps({"jsonrpc": "2.0", "id": n, "method": "tools/call",
                       "params": {"name": tool, "arguments": {"n": n}, "_meta": META}})


class Replica:
    def __init__(self, work: Path, name: str, url: str | None):
        policy = work / "policy.json"
        policy.write_text(json.dumps(POLICY))
        config = work / f"{name}.toml"
        config.write_text(
            "[[upstream]]\nname = \"echo\"\n"
            f"command = {json.dumps(ECHO)}\nargs = [\"stdio\"]\npolicy = {json.dumps(str(policy))}\n"
            "[[approver]]\nname = \"alice\"\ntoken_env = \"BENCH_TOKEN\"\n"
            + (f"[store]\nurl_env = \"BENCH_PG_URL\"\nreplica = \"{name}\"\n" if url else ""))
        env = {**os.environ, "BENCH_TOKEN": TOKEN, "BENCH_PG_URL": url or "", "RUST_LOG": "warn"}
        self.proc = subprocess.Popen([AIRLOCK, "serve", "--config", str(config), "--listen", "127.0.0.1:0",
                                      "--audit", str(work / f"{name}.db")],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
        line = self.proc.stdout.readline()
        m = re.search(r"airlock listening on http://127\.0\.0\.1:(\d+)", line)
        if not m:
            raise RuntimeError(f"replica {name} did not start: {line!r}")
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()
        self.base = f"http://127.0.0.1:{m.group(1)}"
        self.mcp = f"{self.base}/mcp/echo"

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def release(holder: Replica, approver: Replica, samples: int) -> dict:
    """ms from the approver's POST to the agent's answer, per sample."""
    lat = []
    with httpx.Client(timeout=30) as api:
        for n in range(samples + 10):
            answered: dict = {}

            def call():
                with httpx.Client(timeout=30) as agent, \
                        agent.stream("POST", holder.mcp, content=body("search", n), headers=headers("search")) as r:
                    text = ""
                    for chunk in r.iter_text():
                        text += chunk
                        if '"result"' in text and "at" not in answered:
                            answered["at"] = time.perf_counter()

            t = threading.Thread(target=call)
            t.start()
            while True:
                pending = [p for p in api.get(f"{approver.base}/api/pending", headers=AUTH).json()["pending"]
                           if p["arguments"] == {"n": n}]
                if pending:
                    break
                time.sleep(0.002)
            started = time.perf_counter()
            r = api.post(f"{approver.base}/api/pending/{pending[0]['id']}/approve", json={}, headers=AUTH)
            assert r.status_code == 200, r.text
            t.join(30)
            if n >= 10:  # warm-up
                lat.append((answered["at"] - started) * 1000)
    return {"samples": len(lat), "p50_ms": round(pct(lat, 50), 2), "p99_ms": round(pct(lat, 99), 2),
            "mean_ms": round(statistics.mean(lat), 2), "max_ms": round(max(lat), 2)}


WRK_LUA = """
wrk.method = "POST"
wrk.body = %s
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json, text/event-stream"
wrk.headers["MCP-Protocol-Version"] = "2026-07-28"
wrk.headers["Mcp-Method"] = "tools/call"
wrk.headers["Mcp-Name"] = "echo"
"""


def wrk(url: str, connections: int, duration: float, script: Path) -> subprocess.Popen:
    return subprocess.Popen(["wrk", "-t", "1", "-c", str(connections), "-d", f"{max(1, round(duration))}s", "-s", str(script),
                             "--latency", url], stdout=subprocess.PIPE, text=True)


def requests_of(out: str) -> tuple[int, float]:
    m = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
    if not m:
        raise RuntimeError(f"wrk said: {out}")
    secs = float(m.group(2)) * (60 if m.group(3) == "m" else 1)
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw errors: {out}")
    return int(m.group(1)), secs


def allowed(r: Replica) -> int:
    for line in httpx.get(f"{r.base}/metrics").text.splitlines():
        if line.startswith('airlock_calls_total{outcome="allowed"}'):
            return int(float(line.split()[-1]))
    return 0


def throughput(replicas: list[Replica], connections: int, duration: float, work: Path) -> dict:
    script = work / "call.lua"
    script.write_text(WRK_LUA % json.dumps(body("echo", 1)))
    before = [allowed(r) for r in replicas]
    runs = [wrk(r.mcp, connections // len(replicas), duration, script) for r in replicas]
    total, per = 0, []
    for run in runs:
        out, _ = run.communicate(timeout=duration + 60)
        n, secs = requests_of(out)
        total += n
        per.append(round(n / secs))
    # Every request wrk counted was an allowed call (wrk counts only answered ones; a refusal
    # would be HTTP 200 too, so compare with the gateways' own count).
    counted = sum(allowed(r) - b for r, b in zip(replicas, before))
    if counted < total:
        raise RuntimeError(f"wrk got {total} answers, the replicas allowed {counted} calls")
    return {"replicas": len(replicas), "connections": connections, "calls_per_s": sum(per), "per_replica": per,
            "calls": total}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--connections", type=int, default=64)
    o = ap.parse_args()
    bin_dir = find_bin()
    if bin_dir is None:
        sys.exit("PostgreSQL server binaries not found (scripts/setup-test-env, or AIRLOCK_PG_BIN)")
    pg = PgCluster(bin_dir).start()
    work = Path(tempfile.mkdtemp(prefix="airlock-bench-replicas-"))
    replicas = []
    try:
        alone = Replica(work, "sqlite", None)  # the same work with the embedded SQLite audit, for scale
        httpx.post(alone.mcp, content=body("echo", 0), headers=headers("echo"), timeout=30)
        sqlite = throughput([alone], o.connections, o.duration, work)
        alone.stop()
        a = Replica(work, "a", pg.url())
        b = Replica(work, "b", pg.url())
        replicas = [a, b]
        for r in replicas:  # the stdio child starts at the first call
            httpx.post(r.mcp, content=body("echo", 0), headers=headers("echo"), timeout=30)
        out = {
            "machine": {"cores": os.cpu_count(), "load_before": os.getloadavg()},
            "release_on_b_held_on_a": release(a, b, o.samples),
            "release_on_a_held_on_a": release(a, a, o.samples),
            "allowed_one_replica_sqlite_audit": sqlite,
            "allowed_one_replica": throughput([a], o.connections, o.duration, work),
            "allowed_two_replicas": throughput([a, b], o.connections, o.duration, work),
        }
        verify = subprocess.run([AIRLOCK, "audit", "verify", "--store", pg.url()], capture_output=True, text=True)
        out["audit_verify"] = (verify.stdout + verify.stderr).strip().splitlines()[-1]
        out["machine"]["load_after"] = os.getloadavg()
        print(json.dumps(out, indent=2))
    finally:
        for r in replicas:
            r.stop()
        pg.stop()


if __name__ == "__main__":
    main()
