"""Shared helpers for Airlock's integration tests: start the real `airlock`
binary, real upstream MCP servers and real client drivers as processes.

Nothing here imitates Airlock: every test talks to the built binary.
"""
from __future__ import annotations

import itertools
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
AIRLOCK_BIN = os.environ.get("AIRLOCK_BIN", str(TARGET / "debug" / "airlock"))
PYTHON = sys.executable
NODE = os.environ.get("NODE", "node")
NODE_DIR = REPO / "tests" / "node"
TESTSERVER = REPO / "tests" / "servers" / "testserver.py"
EVERYTHING_BIN = NODE_DIR / "node_modules" / ".bin" / "mcp-server-everything"


# Numbers gateway files (policy, config, audit): unique per test run, unlike ports.
_GATEWAY_FILES = itertools.count(1)


def gateway_number() -> int:
    """A number no other gateway of this test run has, for naming its files."""
    return next(_GATEWAY_FILES)


def listening_port(proc: "Proc") -> int:
    """The port of a gateway started with `--listen 127.0.0.1:0`, from its first stdout line.
    (A port picked by the OS at bind time cannot be taken by anyone else in between.)"""
    line = proc.wait_for_line("airlock listening on ", timeout=30)
    return int(line.rsplit(":", 1)[1].strip().rstrip("/"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A child process whose stdout lines are collected in the background."""

    def __init__(self, cmd: list[str], env: dict | None = None, cwd: str | None = None, stdin=None):
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.cmd = cmd
        self.popen = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            env=full_env,
            cwd=cwd or str(REPO),
            start_new_session=True,
        )
        self.lines: "queue.Queue[str]" = queue.Queue()
        self.stdout_log: list[str] = []
        self.stderr_log: list[str] = []
        threading.Thread(target=self._pump, args=(self.popen.stdout, self.stdout_log, True), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.popen.stderr, self.stderr_log, False), daemon=True).start()

    def _pump(self, stream, log, to_queue):
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            log.append(line)
            if to_queue:
                self.lines.put(line)

    def wait_for_line(self, prefix: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.popen.poll() is not None:
                    break
                continue
            if line.startswith(prefix):
                return line
        raise RuntimeError(
            f"{self.cmd[0]} did not print {prefix!r} within {timeout}s (exit={self.popen.poll()})\n"
            f"stdout: {self.stdout_log[-20:]}\nstderr: {self.stderr_log[-40:]}"
        )

    def stderr_text(self) -> str:
        return "\n".join(self.stderr_log)

    def stop(self, sig=signal.SIGTERM, timeout: float = 10.0) -> int | None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=5)
        return self.popen.returncode


class Airlock:
    """A running `airlock serve`."""

    def __init__(self, proc: Proc, port: int):
        self.proc = proc
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.mcp = f"{self.base}/mcp"

    def endpoint(self, upstream: str | None = None) -> str:
        return self.mcp if upstream is None else f"{self.mcp}/{upstream}"


def write_json(path: Path, value) -> Path:
    path.write_text(json.dumps(value, indent=2))
    return path


def upstream_testserver(era: str = "both", *extra: str) -> list[str]:
    return [PYTHON, str(TESTSERVER), "stdio", "--era", era, *extra]


def upstream_everything() -> list[str]:
    return [NODE, str(EVERYTHING_BIN)]


class Processes:
    """Tracks started processes and stops them all at teardown."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.started: list[Proc] = []

    def start(self, cmd, **kw) -> Proc:
        p = Proc([str(c) for c in cmd], **kw)
        self.started.append(p)
        return p

    def testserver_http(self, era: str = "both", *extra: str) -> tuple[Proc, str]:
        p = self.start([PYTHON, TESTSERVER, "http", "--port", "0", "--era", era, *extra])
        line = p.wait_for_line("LISTENING ")
        return p, line.split(" ", 1)[1].strip()

    def everything_http(self) -> tuple[Proc, str]:
        p = self.start([NODE, NODE_DIR / "servers" / "everything-http.mjs", "--port", "0"])
        line = p.wait_for_line("LISTENING ", timeout=60)
        return p, line.split(" ", 1)[1].strip()

    def stateless_node_http(self, *extra: str) -> tuple[Proc, str]:
        p = self.start([NODE, NODE_DIR / "servers" / "stateless-server.mjs", "--port", "0", *extra])
        line = p.wait_for_line("LISTENING ", timeout=60)
        return p, line.split(" ", 1)[1].strip()

    def airlock(
        self,
        policy=None,
        upstream: list[str] | None = None,
        url: str | None = None,
        config: str | None = None,
        env: dict | None = None,
        args: list[str] | None = None,
    ) -> Airlock:
        """Starts `airlock serve` on a free port. `policy` may be a dict (written
        to a file), a path, or None (allow everything)."""
        n = gateway_number()
        cmd = [AIRLOCK_BIN, "serve", "--listen", "127.0.0.1:0", "--audit", str(self.tmp_path / f"audit-{n}.db")]
        if config:
            cmd += ["--config", str(config)]
        if isinstance(policy, dict):
            policy = write_json(self.tmp_path / f"policy-{n}.json", policy)
        if policy:
            cmd += ["--policy", str(policy)]
        if url:
            cmd += ["--url", url]
        cmd += args or []
        if upstream:
            cmd += ["--", *upstream]
        p = self.start(cmd, env=env)
        return Airlock(p, listening_port(p))

    def stop_all(self):
        for p in reversed(self.started):
            p.stop()


def run_driver(driver: str, script: list, *, url: str | None = None, stdio: list[str] | None = None,
               era: str | None = None, extra: list[str] | None = None, timeout: float = 120) -> dict:
    """Runs a Node client driver (`sdk1` or `client2`) and returns its JSON report."""
    cmd = [NODE, str(NODE_DIR / "clients" / f"{driver}.mjs"), "--script", json.dumps(script)]
    if era:
        cmd += ["--era", era]
    cmd += extra or []
    if url:
        cmd += ["--url", url]
    if stdio:
        cmd += ["--stdio", "--", *stdio]
    done = subprocess.run(cmd, capture_output=True, timeout=timeout, cwd=str(NODE_DIR))
    try:
        report = json.loads(done.stdout.decode())
    except json.JSONDecodeError as e:
        raise AssertionError(f"{driver} printed no JSON (exit {done.returncode}):\n{done.stdout.decode()}\n{done.stderr.decode()[-3000:]}") from e
    report["_exit"] = done.returncode
    report["_stderr"] = done.stderr.decode()[-3000:]
    return report


def text_of(result: dict) -> str:
    """The concatenated text content of a CallToolResult."""
    return "".join(c.get("text", "") for c in result.get("content", []) if c.get("type") == "text")


PYDRIVER = REPO / "tests" / "py" / "pydriver.py"


def run_pydriver(mode: str, script: list, *, url: str | None = None, stdio: list[str] | None = None,
                 name: str | None = None, extra: list[str] | None = None, timeout: float = 120) -> dict:
    """Runs the Python `mcp` 2.x client driver (tests/py/pydriver.py, same JSON contract as the Node
    drivers) with `mode` = legacy | auto | 2026-07-28 and returns its report."""
    cmd = [PYTHON, str(PYDRIVER), "--mode", mode, "--script", json.dumps(script)]
    if name:
        cmd += ["--name", name]
    cmd += extra or []
    if url:
        cmd += ["--url", url]
    if stdio:
        cmd += ["--stdio", "--", *[str(c) for c in stdio]]
    done = subprocess.run(cmd, capture_output=True, timeout=timeout, cwd=str(REPO))
    try:
        report = json.loads(done.stdout.decode())
    except json.JSONDecodeError as e:
        raise AssertionError(f"pydriver printed no JSON (exit {done.returncode}):\n{done.stdout.decode()}\n{done.stderr.decode()[-3000:]}") from e
    report["_exit"] = done.returncode
    report["_stderr"] = done.stderr.decode()[-3000:]
    return report


def airlock_stdio_cmd(tmp_path: Path, policy=None, upstream: list[str] | None = None, url: str | None = None) -> list[str]:
    """The command line of an `airlock stdio` agent-side gateway (for a client to spawn), with a free
    dashboard port and its own audit file. `policy` may be a dict (written to a file) or a path."""
    # Names come from a counter, not a port: two free_port() calls can return the same port, and
    # two gateways sharing a policy file once ran one upstream behind the other's policy.
    n = gateway_number()
    cmd = [AIRLOCK_BIN, "stdio", "--listen", "127.0.0.1:0", "--audit", str(tmp_path / f"audit-stdio-{n}.db")]
    if isinstance(policy, dict):
        policy = write_json(tmp_path / f"policy-stdio-{n}.json", policy)
    if policy:
        cmd += ["--policy", str(policy)]
    if url:
        cmd += ["--url", url]
    if upstream:
        cmd += ["--", *[str(c) for c in upstream]]
    return cmd
