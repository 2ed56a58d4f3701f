"""`airlock stdio` driven by raw newline-delimited JSON-RPC over pipes, as
Claude Desktop would spawn it."""
import json
import os
import queue
import re
import signal
import stat
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from harness import AIRLOCK_BIN, airlock_stdio_cmd
from holdkit import ALICE, TOKENS_ENV, Gateway, write_config
from rawmcp import call_body, init_body, marked_testserver, procs_with, stateless_meta, wait_until

POLICY = {
    "version": "1",
    "default": "allow",
    "hide": ["secret_tool"],
    "rules": {"delete_record": {"action": "deny", "reason": "records are kept forever"}},
}


class StdioAgent:
    """One `airlock stdio` process and a reader that matches answers by id."""

    def __init__(self, procs, tmp_path, marker, policy=POLICY, config: str | None = None,
                 upstream: list[str] | None = None, env: dict | None = None):
        if config:
            self.audit = tmp_path / "audit.db"
            cmd = [AIRLOCK_BIN, "stdio", "--listen", "127.0.0.1:0", "--audit", str(self.audit), "--config", config]
        else:
            cmd = airlock_stdio_cmd(tmp_path, policy, upstream or marked_testserver(marker))
            self.audit = Path(cmd[cmd.index("--audit") + 1])
        self.proc = procs.start(cmd, stdin=subprocess.PIPE, env=env)
        self.stash: list[dict] = []

    def gateway(self, timeout: float = 10.0) -> Gateway:
        """The approvers' side of this process: its dashboard port comes from the
        `dashboard: http://127.0.0.1:PORT/` log line."""
        found = wait_until(lambda: re.search(r"dashboard: http://127\.0\.0\.1:(\d+)/", self.proc.stderr_text()), timeout)
        assert found, f"no dashboard line on stderr:\n{self.proc.stderr_text()[-2000:]}"
        return Gateway(self.proc, int(found.group(1)), self.audit, None)

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


def test_non_integer_ids_and_by_position_params_are_refused_and_never_forwarded(agent):
    for raw_id in ["1.0", "1e0", "1E2", "2.5", "-0", "99999999999999999999"]:
        agent.send_raw(b'{"jsonrpc":"2.0","id":%s,"method":"tools/call","params":{"name":"add","arguments":{"a":1,"b":1}}}'
                       % raw_id.encode())
        err = agent.wait_for(lambda m: "error" in m and m.get("id") is None)
        assert err["error"]["code"] == -32600 and f"`{raw_id}`" in err["error"]["message"], err
    answer = agent.request({"jsonrpc": "2.0", "id": 8, "method": "tools/call", "params": ["add", {"a": 1, "b": 1}]})
    assert answer["error"]["code"] == -32602 and "must be an object" in answer["error"]["message"], answer
    # The agent keeps working, and none of the refused calls reached the upstream.
    assert agent.request(call_body(9, "add", {"a": 2, "b": 2}))["result"]["content"][0]["text"] == "4"
    assert not [m for m in agent.stash if "result" in m], agent.stash


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
    assert "upstream starting" in agent.proc.stderr_text()


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


# --- held calls: the Claude Desktop path (agent → airlock stdio → upstream child) ---

HOLD_POLICY = {
    "version": "1",
    "default": "allow",
    "rules": {"delete_record": {"action": "require_approval", "reason": "destructive"}},
}


def teed_testserver(log: Path, marker: Path) -> list[str]:
    """The stdio test server behind `tee`, which copies every line Airlock
    writes to the upstream's stdin into `log`."""
    return ["bash", "-c", 'tee -a "$0" | exec "$@"', str(log), *marked_testserver(marker)]


def calls_sent_upstream(log: Path, tool: str) -> list[dict]:
    lines = log.read_text().split("\n")[:-1] if log.exists() else []  # complete lines only
    sent = [json.loads(line) for line in lines if line.strip()]
    return [m for m in sent if m.get("method") == "tools/call" and m["params"]["name"] == tool]


def answer_to(agent: StdioAgent, req_id, timeout: float = 10.0) -> dict:
    return agent.wait_for(lambda m: m.get("id") == req_id and "method" not in m, timeout)


@pytest.fixture
def held(make_agent, tmp_path):
    """An initialized handshake-era agent on a quick-mode `airlock stdio` whose
    approver token is ALICE, its gateway, and the log of what reached the upstream."""
    log = tmp_path / "sent-upstream.jsonl"
    a = make_agent(policy=HOLD_POLICY, env={"AIRLOCK_APPROVER_TOKEN": ALICE},
                   upstream=teed_testserver(log, tmp_path / "upstream-marker"))
    a.initialize()
    return a, a.gateway(), log


def test_held_call_approved_over_the_api_gets_the_upstreams_result(held):
    agent, gw, log = held
    request = call_body(20, "delete_record", {"id": "42"})
    agent.send(request)
    item = gw.wait_pending()[0]
    assert (item["tool"], item["arguments"], item["upstream"], item["reason"], item["agent"]) == (
        "delete_record", {"id": "42"}, "default", "destructive", "raw-test/1.0")
    # other requests keep flowing while the call is held, and the held one has not gone upstream
    assert agent.request(call_body(21, "echo", {"text": "meanwhile"}))["result"]["content"][0]["text"] == "meanwhile"
    assert wait_until(lambda: calls_sent_upstream(log, "echo"), 2) and not calls_sent_upstream(log, "delete_record")

    r = gw.decide(item["id"], "approve", comment="ticket 1234")
    assert r.status_code == 200 and r.json()["decision"] == "approved", r.text
    result = answer_to(agent, 20)["result"]
    assert result["content"] == [{"type": "text", "text": "deleted 42"}]
    assert result.get("isError") is False and "_meta" not in result
    assert calls_sent_upstream(log, "delete_record") == [request]
    assert json.dumps(request) in log.read_text().split("\n")  # the agent's own bytes
    assert gw.pending() == []
    assert [e["decision"] for e in gw.decision_rows(item["id"])] == ["approved"]


def test_held_call_denied_with_a_comment_never_reaches_the_upstream(held):
    agent, gw, log = held
    agent.send(call_body(22, "delete_record", {"id": "43"}))
    item = gw.wait_pending()[0]
    r = gw.decide(item["id"], "deny", comment="use archive instead")
    assert r.status_code == 200 and r.json()["decision"] == "denied", r.text

    result = answer_to(agent, 22)["result"]
    assert result["isError"] is True
    assert result["content"] == [
        {"type": "text", "text": "Airlock: approver denied this call to `delete_record`: use archive instead"}]
    assert result["_meta"] == {"airlock.decision": "approval_denied", "airlock.reason": "use archive instead",
                               "airlock.rule": "delete_record"}
    # the upstream is alive and logged (echo went through), but never saw delete_record
    assert agent.request(call_body(23, "echo", {"text": "after"}))["result"]["content"][0]["text"] == "after"
    assert wait_until(lambda: calls_sent_upstream(log, "echo"), 2)
    assert calls_sent_upstream(log, "delete_record") == []
    rows = gw.decision_rows(item["id"])
    assert [(e["decision"], e["comment"]) for e in rows] == [("denied_by_human", "use archive instead")]


def test_held_call_with_a_progress_token_gets_progress_until_approved(make_agent, tmp_path):
    marker = tmp_path / "upstream-marker"
    config = write_config(tmp_path, HOLD_POLICY, progress=0.2, upstream_args=["--log-requests", marker])
    agent = make_agent(marker=marker, config=str(config), env=TOKENS_ENV)
    agent.initialize()
    gw = agent.gateway()
    agent.send(call_body(24, "delete_record", {"id": "44"}, meta={"progressToken": "hold-24"}))
    item = gw.wait_pending()[0]

    waiting = [agent.wait_for(lambda m: m.get("method") == "notifications/progress", timeout=5) for _ in range(3)]
    assert [p["params"]["progressToken"] for p in waiting] == ["hold-24"] * 3
    assert [p["params"]["progress"] for p in waiting] == [1, 2, 3]
    assert all("total" not in p["params"] for p in waiting)
    assert all(p["params"]["message"].startswith("waiting for human approval") for p in waiting), waiting

    assert gw.decide(item["id"], "approve").status_code == 200
    result = answer_to(agent, 24)["result"]
    assert result["content"] == [{"type": "text", "text": "deleted 44"}]
    # no waiting notification after the answer
    time.sleep(0.5)
    after = [json.loads(line) for line in agent.proc.stdout_log]
    answer_at = next(i for i, m in enumerate(after) if m.get("id") == 24)
    assert not [m for m in after[answer_at:] if m.get("method") == "notifications/progress"], after[answer_at:]


def test_stateless_era_held_call_over_stdio_is_approved(make_agent, tmp_path):
    agent = make_agent(policy=HOLD_POLICY, env={"AIRLOCK_APPROVER_TOKEN": ALICE})
    gw = agent.gateway()
    agent.send(call_body(25, "delete_record", {"id": "7"}, meta=stateless_meta()))
    item = gw.wait_pending()[0]
    assert (item["tool"], item["arguments"], item["agent"]) == ("delete_record", {"id": "7"}, "raw-test/1.0")

    assert gw.decide(item["id"], "approve").status_code == 200
    result = answer_to(agent, 25)["result"]
    assert result["content"] == [{"type": "text", "text": "deleted 7"}]
    assert result.get("isError") is False
    # the upstream answered in the stateless era: its result says so
    assert result["resultType"] == "complete"
    assert result["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "airlock-testserver"


def test_quick_mode_without_a_token_writes_the_login_link_to_a_private_file(make_agent, monkeypatch):
    monkeypatch.delenv("AIRLOCK_APPROVER_TOKEN", raising=False)
    agent = make_agent(policy=HOLD_POLICY)
    agent.initialize()
    gw = agent.gateway()
    login_file = agent.audit.with_name(agent.audit.name + ".login")
    assert stat.S_IMODE(login_file.stat().st_mode) == 0o600
    link = re.fullmatch(r"http://127\.0\.0\.1:(\d+)/login#token=([0-9a-f]{16,})", login_file.read_text().strip())
    assert link, login_file.read_text()
    port, token = int(link.group(1)), link.group(2)
    assert port == gw.port
    assert f"login link in {login_file}" in agent.proc.stderr_text()

    agent.request(call_body(26, "echo", {"text": "hi"}))
    assert token not in "\n".join(agent.proc.stdout_log)
    assert token not in agent.proc.stderr_text()

    r = gw.api("GET", "/api/pending", token=token)
    assert r.status_code == 200 and r.json() == {"pending": []}, r.text
    assert gw.api("GET", "/api/pending", token=token[::-1]).status_code == 401
    with httpx.Client(base_url=gw.base, timeout=10) as browser:
        assert browser.get("/login").status_code == 200
        r = browser.post("/api/login", json={"token": token})
        assert r.status_code == 200 and r.json()["approver"] == "approver", r.text
        assert "airlock_session" in browser.cookies
        r = browser.get("/api/pending")
        assert r.status_code == 200 and r.json() == {"pending": []}, r.text
