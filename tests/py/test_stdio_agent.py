"""`airlock stdio` driven by raw newline-delimited JSON-RPC over pipes, as
Claude Desktop would spawn it."""
import json
import os
import queue
import signal
import subprocess
import time

import pytest

from harness import AIRLOCK_BIN, free_port, write_json
from rawmcp import call_body, init_body, marked_testserver, procs_with, wait_until

POLICY = {
    "version": "1",
    "default": "allow",
    "hide": ["secret_tool"],
    "rules": {"delete_record": {"action": "deny", "reason": "records are kept forever"}},
}


class StdioAgent:
    """One `airlock stdio` process and a reader that matches answers by id."""

    def __init__(self, procs, tmp_path, marker, policy=POLICY, config: str | None = None):
        cmd = [AIRLOCK_BIN, "stdio", "--listen", f"127.0.0.1:{free_port()}", "--audit", str(tmp_path / "audit.db")]
        if config:
            cmd += ["--config", config]
        else:
            cmd += ["--policy", str(write_json(tmp_path / "policy.json", policy)), "--", *marked_testserver(marker)]
        self.proc = procs.start(cmd, stdin=subprocess.PIPE)
        self.stash: list[dict] = []

    def send_raw(self, line: bytes):
        self.proc.popen.stdin.write(line if line.endswith(b"\n") else line + b"\n")
        self.proc.popen.stdin.flush()

    def send(self, message: dict):
        self.send_raw(json.dumps(message).encode())

    def next_message(self, timeout: float = 10.0) -> dict:
        line = self.proc.lines.get(timeout=timeout)
        return json.loads(line)

    def wait_for(self, pred, timeout: float = 10.0) -> dict:
        for m in self.stash:
            if pred(m):
                self.stash.remove(m)
                return m
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                m = self.next_message(timeout=0.1)
            except queue.Empty:
                if self.proc.popen.poll() is not None:
                    time.sleep(0.1)  # the stdout pump may still hold a last line
                    if self.proc.lines.empty():
                        break
                continue
            if pred(m):
                return m
            self.stash.append(m)
        raise AssertionError(
            f"no matching message (waited up to {timeout}s; airlock exit={self.proc.popen.poll()})\n"
            f"stdout: {self.proc.stdout_log[-10:]}\nstderr: {self.proc.stderr_log[-20:]}"
        )

    def request(self, message: dict, timeout: float = 10.0) -> dict:
        self.send(message)
        return self.wait_for(lambda m: m.get("id") == message["id"] and "method" not in m, timeout)

    def initialize(self) -> dict:
        result = self.request(init_body(1))
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return result

    def close_stdin(self):
        self.proc.popen.stdin.close()


@pytest.fixture
def make_agent(procs, tmp_path):
    """Starts agents; at teardown closes their stdin (the way a client ends
    `airlock stdio`) before the harness signals whatever is left."""
    made = []

    def make(**kw):
        a = StdioAgent(procs, tmp_path, kw.pop("marker", tmp_path / "upstream-marker"), **kw)
        made.append(a)
        return a

    yield make
    for a in made:
        try:
            a.close_stdin()
            a.proc.popen.wait(timeout=5)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            pass


@pytest.fixture
def agent(make_agent):
    a = make_agent()
    a.initialize()
    return a


def test_initialize_passes_through(make_agent):
    a = make_agent()
    answer = a.initialize()
    assert answer["result"]["serverInfo"]["name"] == "airlock-testserver"
    assert answer["result"]["protocolVersion"] == "2025-11-25"


def test_tools_list_passes_through_without_hidden_tools(agent):
    answer = agent.request({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
    names = [t["name"] for t in answer["result"]["tools"]]
    assert "echo" in names and "add" in names
    assert "secret_tool" not in names


def test_allowed_call_passes_through(agent):
    answer = agent.request(call_body(3, "add", {"a": 2, "b": 3}))
    assert answer["result"]["content"][0]["text"] == "5"
    assert answer["result"].get("isError") is False


def test_denied_call_is_an_error_result_with_the_reason(agent):
    answer = agent.request(call_body(4, "delete_record", {"id": "r1"}))
    result = answer["result"]
    assert result["isError"] is True
    assert "records are kept forever" in result["content"][0]["text"]
    assert result["_meta"]["airlock.decision"] == "denied"


def test_hidden_tool_is_answered_like_an_unknown_tool(agent):
    hidden = agent.request(call_body(5, "secret_tool"))
    unknown = agent.request(call_body(6, "no_such_tool"))
    assert hidden["error"]["code"] == unknown["error"]["code"] == -32602
    assert hidden["error"]["message"] == unknown["error"]["message"].replace("no_such_tool", "secret_tool")


def test_malformed_line_gets_a_parse_error_and_the_agent_keeps_working(agent):
    agent.send_raw(b'{"jsonrpc":"2.0","id":7,"method":')
    err = agent.wait_for(lambda m: "error" in m and m.get("id") is None)
    assert err["error"]["code"] == -32700
    answer = agent.request(call_body(8, "echo", {"text": "still alive"}))
    assert answer["result"]["content"][0]["text"] == "still alive"


def test_invalid_utf8_line_gets_a_parse_error_and_the_agent_keeps_working(agent):
    agent.send_raw(b'{"jsonrpc":"2.0","id":9,"method":"ping\xff"}')
    err = agent.wait_for(lambda m: "error" in m and m.get("id") is None)
    assert err["error"]["code"] == -32700
    answer = agent.request(call_body(10, "echo", {"text": "after bad utf-8"}))
    assert answer["result"]["content"][0]["text"] == "after bad utf-8"


def test_oversized_line_gets_an_error_and_the_agent_keeps_working(make_agent, tmp_path):
    marker = tmp_path / "m"
    cmd = marked_testserver(marker)
    cfg = tmp_path / "airlock.toml"
    cfg.write_text(
        "max_body_bytes = 2048\n[[upstream]]\nname = \"up\"\n"
        f"command = {json.dumps(cmd[0])}\nargs = {json.dumps(cmd[1:])}\n"
    )
    a = make_agent(marker=marker, config=str(cfg))
    a.initialize()
    a.send(call_body(11, "echo", {"text": "x" * 5000}))
    err = a.wait_for(lambda m: "error" in m)
    assert "2048" in err["error"]["message"]
    answer = a.request(call_body(12, "echo", {"text": "small"}))
    assert answer["result"]["content"][0]["text"] == "small"


def test_stdout_carries_only_jsonrpc_and_logs_go_to_stderr(agent):
    agent.request({"jsonrpc": "2.0", "id": 13, "method": "tools/list"})
    agent.request(call_body(14, "delete_record", {"id": "x"}))
    agent.request(call_body(15, "slow", {"steps": 2, "delay_ms": 10}, meta={"progressToken": "p15"}))
    agent.close_stdin()
    agent.proc.popen.wait(timeout=10)
    time.sleep(0.2)  # let the pumps drain
    assert agent.proc.stdout_log, "nothing on stdout"
    for line in agent.proc.stdout_log:
        message = json.loads(line)
        assert message.get("jsonrpc") == "2.0", line
    assert any(m.get("method") == "notifications/progress" for m in map(json.loads, agent.proc.stdout_log))
    assert "started upstream child" in agent.proc.stderr_text()


def test_stdin_eof_exits_0_and_ends_the_upstream(make_agent, tmp_path):
    marker = tmp_path / "upstream-marker"
    a = make_agent(marker=marker)
    a.initialize()
    assert len(procs_with(marker)) == 1
    a.close_stdin()
    assert a.proc.popen.wait(timeout=10) == 0
    assert wait_until(lambda: not procs_with(marker), timeout=3), procs_with(marker)


def test_sigterm_with_stdin_still_open_exits_promptly_and_ends_the_upstream(make_agent, tmp_path):
    marker = tmp_path / "upstream-marker"
    a = make_agent(marker=marker)
    a.initialize()
    assert len(procs_with(marker)) == 1
    os.kill(a.proc.popen.pid, signal.SIGTERM)
    try:
        code = a.proc.popen.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pytest.fail("airlock stdio still running 5 s after SIGTERM (its stdin is still open)")
    assert code == 0
    assert wait_until(lambda: not procs_with(marker), timeout=3), procs_with(marker)
