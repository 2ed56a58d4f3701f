#!/usr/bin/env python3
"""What one allowed call through `airlock stdio` costs Airlock itself: context
switches (all of Airlock's threads, from /proc/PID/task/*/status) and CPU time
(user + system, /proc/PID/stat) per call, plus the client-side p50, over N
sequential `tools/call echo` from this script over pipes. Counts, not timings,
are the point: they hold still on a noisy machine where latency does not.

    scripts/stdio_cost_per_call.py [--calls N] [--socketpair] AIRLOCK_BIN -- UPSTREAM COMMAND...

Example (the Rust echo server of the benchmarks as the upstream):

    scripts/stdio_cost_per_call.py $CARGO_TARGET_DIR/release/airlock -- \\
        $CARGO_TARGET_DIR/release/examples/echo_server stdio

With `--socketpair` the client's ends are UNIX socket pairs, as Node's
`child_process` (so Claude Desktop) gives them. Used for the figures in
docs/benchmarks.md (section "stdio agents").
"""
import argparse
import glob
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

POLICY = {"version": "1", "default": "deny", "rules": {"echo": {"action": "allow"}}}
WARMUP = 300


def switches(pid: int) -> int:
    total = 0
    for status in glob.glob(f"/proc/{pid}/task/*/status"):
        try:
            with open(status) as f:
                for line in f:
                    if "ctxt_switches" in line:
                        total += int(line.split()[1])
        except FileNotFoundError:
            pass  # a thread ended between the glob and the read
    return total


def cpu_us(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1e6 / os.sysconf("SC_CLK_TCK")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=5000)
    ap.add_argument("--socketpair", action="store_true")
    ap.add_argument("airlock")
    ap.add_argument("upstream", nargs="+")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        policy = os.path.join(tmp, "policy.json")
        with open(policy, "w") as f:
            json.dump(POLICY, f)
        cmd = [a.airlock, "stdio", "--listen", "127.0.0.1:0", "--policy", policy,
               "--audit", os.path.join(tmp, "audit.db"), "--", *a.upstream]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "AIRLOCK_APPROVER_TOKEN": "x" * 32}
        if a.socketpair:
            ours_in, theirs_in = socket.socketpair()
            ours_out, theirs_out = socket.socketpair()
            proc = subprocess.Popen(cmd, stdin=theirs_in, stdout=theirs_out, stderr=subprocess.DEVNULL, env=env)
            theirs_in.close()
            theirs_out.close()
            writer = ours_in.makefile("wb")
            reader = ours_out.makefile("rb")
        else:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, env=env)
            writer, reader = proc.stdin, proc.stdout

        def send(message: dict):
            writer.write(json.dumps(message).encode() + b"\n")
            writer.flush()

        def call(i: int):
            send({"jsonrpc": "2.0", "id": i, "method": "tools/call",
                  "params": {"name": "echo", "arguments": {"text": f"call {i}"}}})
            answer = json.loads(reader.readline())
            if answer.get("id") != i or "result" not in answer:
                raise SystemExit(f"unexpected answer to {i}: {answer}")

        send({"jsonrpc": "2.0", "id": 0, "method": "initialize",
              "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                         "clientInfo": {"name": "stdio-cost", "version": "1"}}})
        json.loads(reader.readline())
        send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        for i in range(1, WARMUP + 1):
            call(i)
        sw0, cpu0 = switches(proc.pid), cpu_us(proc.pid)
        took = []
        for i in range(WARMUP + 1, WARMUP + 1 + a.calls):
            t = time.perf_counter()
            call(i)
            took.append(time.perf_counter() - t)
        sw1, cpu1 = switches(proc.pid), cpu_us(proc.pid)
        writer.close()
        if a.socketpair:
            ours_in.shutdown(socket.SHUT_WR)  # the makefile's close leaves the socket open
        proc.wait(timeout=10)
    took.sort()
    print(json.dumps({
        "calls": a.calls,
        "transport": "socketpair" if a.socketpair else "pipe",
        "context_switches_per_call": round((sw1 - sw0) / a.calls, 2),
        "airlock_cpu_us_per_call": round((cpu1 - cpu0) / a.calls, 1),
        "client_p50_us": round(took[len(took) // 2] * 1e6, 1),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
