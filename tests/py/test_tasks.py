"""Held calls as tasks (docs/approvals.md, "Held calls as tasks"): a stateless-era
client that declares the `io.modelcontextprotocol/tasks` extension on a held
`tools/call` gets a `working` task at once, polls `tasks/get` until a human's
decision (and the upstream's answer) completes it, and may withdraw the hold
with `tasks/cancel`. Only the agent session that created a task can see it, and
the approved call reaches the upstream without the extension.

Raw JSON-RPC over httpx against the real `airlock` binary in config mode, with
the project's test server as upstream (stdio, or HTTP with `--log-requests`
where a test looks at what the upstream received). Every wait is bounded.
"""
from __future__ import annotations

import json
import time
import tomllib
from datetime import datetime

import rawmcp as rm
from harness import REPO, text_of
from holdkit import AGENT, start_gateway, timeout_policy, write_config

EXTENSION = "io.modelcontextprotocol/tasks"
CAPABILITIES = "io.modelcontextprotocol/clientCapabilities"
APPROVAL_TIMEOUT = 300  # s; a task's ttlMs is this plus an hour

# Held too, so an approved call can still be running upstream when the agent cancels.
POLICY = timeout_policy(APPROVAL_TIMEOUT, "deny")
# Results Airlock makes itself say who answered (the 2026-07-28 spec: results SHOULD carry serverInfo).
AIRLOCK_META = {"io.modelcontextprotocol/serverInfo": {
    "name": "airlock", "version": tomllib.loads((REPO / "Cargo.toml").read_text())["package"]["version"]}}
POLICY["rules"]["slow"] = {"action": "require_approval", "reason": "takes a while"}


class Agent:
    """A stateless-era client that declares the tasks extension on every request.
    Without agent tokens its session is its clientInfo (at its address)."""

    def __init__(self, gw, name: str = "raw-test", token: str | None = None):
        self.gw = gw
        self.name = name
        self.auth = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = rm.client()
        self.next_id = 100

    def meta(self) -> dict:
        meta = rm.stateless_meta()
        meta[CAPABILITIES] = {"extensions": {EXTENSION: {}}}
        meta["io.modelcontextprotocol/clientInfo"]["name"] = self.name
        return meta

    def request(self, method: str, params: dict, name: str | None = None) -> dict:
        """Sends one request; returns its JSON-RPC response (result or error)."""
        self.next_id += 1
        body = {"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params}
        r = rm.post(self.http, self.gw.mcp, body, {**rm.stateless_headers(method, name), **self.auth})
        return rm.answer(r, self.next_id)

    def call(self, tool: str, arguments: dict) -> dict:
        """A tools/call declaring the extension; returns the result, which must
        come back at once (it is a task, not the held call's answer)."""
        started = time.monotonic()
        response = self.request("tools/call", {"name": tool, "arguments": arguments, "_meta": self.meta()}, tool)
        assert time.monotonic() - started < 5, "a task-held call must be answered at once"
        assert "result" in response, response
        return response["result"]

    def task(self, method: str, task_id: str) -> dict:
        return self.request(method, {"taskId": task_id, "_meta": self.meta()}, task_id)

    def get(self, task_id: str) -> dict:
        response = self.task("tasks/get", task_id)
        assert "result" in response, response
        return response["result"]

    def wait_done(self, task_id: str, timeout: float = 20.0) -> dict:
        """Polls tasks/get until the task leaves `working`; returns its last view."""
        deadline = time.monotonic() + timeout
        while True:
            view = self.get(task_id)
            if view["status"] != "working":
                return view
            assert time.monotonic() < deadline, f"task still working after {timeout}s: {view}"
            time.sleep(0.05)


def stamp(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def start_task(agent: Agent, tool: str, arguments: dict) -> tuple[str, dict]:
    """Makes a held call as a task; returns the task id and its pending item."""
    created = agent.call(tool, arguments)
    assert created["resultType"] == "task", created
    [item] = agent.gw.wait_pending(1, where=lambda p: p["arguments"] == arguments)
    return created["taskId"], item


def http_upstream_gateway(procs, policy: dict = POLICY):
    """A gateway whose upstream is the HTTP test server; returns it and the
    server's request log."""
    log = procs.tmp_path / "upstream-requests.jsonl"
    _, url = procs.testserver_http("both", "--log-requests", str(log))
    return start_gateway(procs, policy, url=url), log


def upstream_requests(log, needle: str) -> list[dict]:
    return [r for r in rm.read_log(log) if r["kind"] == "request" and needle in r["body"]]


# --- approve, deny, fail ----------------------------------------------------------

def test_approved_task_completes_with_the_upstream_result(procs):
    gw = start_gateway(procs, POLICY)
    agent = Agent(gw)
    created = agent.call("delete_record", {"id": "task-7"})
    assert created["resultType"] == "task", created
    assert created["status"] == "working", created
    assert created["statusMessage"] == "waiting for human approval", created
    assert created["ttlMs"] == (APPROVAL_TIMEOUT + 3600) * 1000, created
    assert isinstance(created["pollIntervalMs"], int) and created["pollIntervalMs"] > 0, created
    assert created["createdAt"] == created["lastUpdatedAt"], created
    assert created["_meta"] == AIRLOCK_META, created
    assert "result" not in created and "error" not in created, created
    task_id = created["taskId"]

    # The POST is over; the call is still held (closing a connection does not cancel a task).
    [item] = gw.wait_pending(1)
    assert (item["tool"], item["arguments"], item["agent"]) == ("delete_record", {"id": "task-7"}, "raw-test/1.0")
    view = agent.get(task_id)
    assert (view["taskId"], view["status"], view["statusMessage"]) == (
        task_id, "working", "waiting for human approval"), view
    assert view["resultType"] == "complete" and "result" not in view, view
    assert view["_meta"] == AIRLOCK_META, view
    # tasks/update is acknowledged and changes nothing.
    assert agent.task("tasks/update", task_id) == {
        "jsonrpc": "2.0", "id": agent.next_id, "result": {"resultType": "complete", "_meta": AIRLOCK_META}}
    assert agent.get(task_id)["status"] == "working"
    assert [p["id"] for p in gw.pending()] == [item["id"]]

    assert gw.decide(item["id"], "approve").status_code == 200
    done = agent.wait_done(task_id)
    assert (done["status"], done["statusMessage"]) == ("completed", "approved and completed"), done
    assert done["result"]["content"][0]["text"] == "deleted task-7", done
    assert done["result"].get("isError") is not True, done
    assert done["createdAt"] == created["createdAt"], done
    assert stamp(done["lastUpdatedAt"]) >= stamp(done["createdAt"]), done
    assert gw.pending() == []
    rows = gw.audit_rows(pending_id=item["id"])
    assert [r["decision"] for r in rows] == ["approval_requested", "approved"], rows
    assert rows[1]["decider"] == "alice", rows


def test_denied_task_completes_with_the_refusal(procs):
    gw = start_gateway(procs, POLICY)
    agent = Agent(gw)
    task_id, item = start_task(agent, "delete_record", {"id": "task-deny"})
    assert gw.decide(item["id"], "deny", comment="not this one").status_code == 200

    done = agent.wait_done(task_id)
    assert (done["status"], done["statusMessage"]) == ("completed", "refused"), done
    assert done["result"]["isError"] is True, done
    text = text_of(done["result"])
    assert "denied" in text and "not this one" in text, text
    assert done["result"]["_meta"]["airlock.decision"] == "approval_denied", done
    [row] = gw.decision_rows(item["id"])
    assert (row["decision"], row["decider"], row["comment"]) == ("denied_by_human", "alice", "not this one"), row


def test_upstream_error_fails_the_task(procs):
    """`delete_nothing` is held by `delete_*`, approved, and unknown to the upstream."""
    gw = start_gateway(procs, POLICY)
    agent = Agent(gw)
    task_id, item = start_task(agent, "delete_nothing", {"id": "task-fail"})
    assert gw.decide(item["id"], "approve").status_code == 200

    done = agent.wait_done(task_id)
    assert (done["status"], done["statusMessage"]) == ("failed", "the upstream answered with an error"), done
    assert done["error"]["code"] == -32602 and "delete_nothing" in done["error"]["message"], done
    assert "result" not in done, done


# --- cancel -----------------------------------------------------------------------

def test_tasks_cancel_withdraws_the_hold_and_nothing_reaches_the_upstream(procs):
    gw, log = http_upstream_gateway(procs)
    agent = Agent(gw)
    task_id, item = start_task(agent, "delete_record", {"id": "task-cancel"})

    assert agent.task("tasks/cancel", task_id) == {
        "jsonrpc": "2.0", "id": agent.next_id, "result": {"resultType": "complete", "_meta": AIRLOCK_META}}
    gw.wait_gone(item["id"])
    view = agent.get(task_id)
    assert (view["status"], view["statusMessage"]) == ("cancelled", "cancelled by the agent"), view
    assert "result" not in view, view
    [row] = gw.decision_rows(item["id"])
    assert (row["decision"], row["channel"], row["comment"]) == (
        "cancelled", "agent", "cancelled by the agent (tasks/cancel)"), row
    late = gw.decide(item["id"], "approve")
    assert late.status_code == 409, late.text

    # An allowed call made afterwards reaches the upstream; the cancelled one never did.
    echoed = agent.request("tools/call", {"name": "echo", "arguments": {"text": "after-cancel"},
                                          "_meta": rm.stateless_meta()}, "echo")
    assert text_of(echoed["result"]) == "after-cancel", echoed
    assert upstream_requests(log, "after-cancel"), rm.read_log(log)
    assert upstream_requests(log, "task-cancel") == []


def test_tasks_cancel_after_approval_is_acknowledged_and_the_call_completes(procs):
    """Cancellation is cooperative (the extension's rule, docs/approvals.md): once a call
    is approved and sent, `tasks/cancel` is acknowledged, the call is not stopped, and
    the task ends `completed` with the upstream's result. `slow` runs ~3 s upstream."""
    gw, log = http_upstream_gateway(procs)
    agent = Agent(gw)
    task_id, item = start_task(agent, "slow", {"steps": 30, "delay_ms": 100})
    assert gw.decide(item["id"], "approve").status_code == 200
    assert rm.wait_until(lambda: upstream_requests(log, '"slow"'), 10), "the approved call never reached the upstream"

    assert agent.task("tasks/cancel", task_id)["result"] == {"resultType": "complete", "_meta": AIRLOCK_META}
    assert agent.get(task_id)["status"] == "working"
    view = agent.wait_done(task_id)
    assert (view["status"], view["statusMessage"]) == ("completed", "approved and completed"), view
    assert view["result"]["isError"] is False, view
    assert [r["decision"] for r in gw.decision_rows(item["id"])] == ["approved"]


def test_task_requests_must_declare_the_extension(procs):
    """A client that does not declare the extension gets -32021 naming it, even for its own task."""
    gw = start_gateway(procs, POLICY)
    agent = Agent(gw)
    task_id, item = start_task(agent, "delete_record", {"id": "undeclared"})
    for method in ("tasks/get", "tasks/cancel", "tasks/update"):
        response = agent.request(method, {"taskId": task_id, "_meta": rm.stateless_meta()}, task_id)
        assert response.get("error", {}).get("code") == -32021, response
        assert response["error"]["data"] == {"requiredCapabilities": {"extensions": {EXTENSION: {}}}}, response
    assert [p["id"] for p in gw.pending()] == [item["id"]], "an undeclared tasks/cancel withdrew the hold"
    assert agent.get(task_id)["status"] == "working"


def test_task_requests_name_their_task_in_mcp_name(procs):
    """The extension: "the client MUST set the Mcp-Name header to the value of params.taskId"
    (intermediaries route on it). A header naming another task is a header mismatch."""
    gw = start_gateway(procs, POLICY)
    agent = Agent(gw)
    task_id, item = start_task(agent, "delete_record", {"id": "routed"})
    for method in ("tasks/get", "tasks/cancel"):
        response = agent.request(method, {"taskId": task_id, "_meta": agent.meta()}, "some-other-task")
        assert response.get("error", {}).get("code") == -32020, response
        assert "Mcp-Name" in response["error"]["message"] and task_id in response["error"]["message"], response
    assert [p["id"] for p in gw.pending()] == [item["id"]], "a mismatched tasks/cancel withdrew the hold"
    assert agent.get(task_id)["status"] == "working"


# --- who can see a task -----------------------------------------------------------

def assert_not_found(response: dict):
    assert "error" in response, f"another session saw the task: {response}"
    assert response["error"]["code"] == -32602, response
    assert "not found" in response["error"]["message"].lower(), response


def test_another_client_cannot_see_or_cancel_the_task(procs):
    """Without agent tokens a stateless session is the clientInfo (at its address)."""
    gw = start_gateway(procs, POLICY)
    owner, other = Agent(gw, "raw-test"), Agent(gw, "someone-else")
    task_id, item = start_task(owner, "delete_record", {"id": "task-mine"})

    assert_not_found(other.task("tasks/get", task_id))
    assert_not_found(other.task("tasks/cancel", task_id))
    assert_not_found(other.task("tasks/update", task_id))
    assert [p["id"] for p in gw.pending()] == [item["id"]], "another client's tasks/cancel withdrew the hold"
    assert owner.get(task_id)["status"] == "working"

    assert gw.decide(item["id"], "approve").status_code == 200
    assert owner.wait_done(task_id)["status"] == "completed"
    assert_not_found(other.task("tasks/get", task_id))


def test_another_agent_token_cannot_see_the_task(procs, monkeypatch):
    """With agent tokens a stateless session is the agent: same clientInfo, other token."""
    other_token = "second-agent-token-0123456789abc"
    monkeypatch.setenv("AIRLOCK_TEST_AGENT_TWO", other_token)
    config = write_config(procs.tmp_path, POLICY, agents=True, name="two-agents")
    config.write_text(config.read_text() + '\n[[agent]]\nname = "other-agent"\ntoken_env = "AIRLOCK_TEST_AGENT_TWO"\n')
    gw = start_gateway(procs, POLICY, config=config)
    owner, other = Agent(gw, token=AGENT), Agent(gw, token=other_token)
    task_id, item = start_task(owner, "delete_record", {"id": "task-token"})
    assert item["agent"] == "claude-desktop", item

    assert_not_found(other.task("tasks/get", task_id))
    assert owner.get(task_id)["status"] == "working"
    assert gw.decide(item["id"], "approve").status_code == 200
    assert owner.wait_done(task_id)["result"]["content"][0]["text"] == "deleted task-token"
    assert_not_found(other.task("tasks/get", task_id))


# --- what the upstream receives ---------------------------------------------------

def test_approved_call_reaches_the_upstream_without_the_tasks_extension(procs):
    """The upstream must answer with a result (which completes Airlock's task), not
    a task of its own: the extension is dropped, everything else arrives as sent."""
    gw, log = http_upstream_gateway(procs)
    agent = Agent(gw)
    meta = agent.meta()
    meta[CAPABILITIES] = {"extensions": {EXTENSION: {}, "example.com/other": {"a": 1}}, "sampling": {}}
    meta["example.com/trace"] = {"n": 0}
    body = {"jsonrpc": "2.0", "id": "fwd-1", "method": "tools/call",
            "params": {"name": "delete_record", "arguments": {"id": "task-fwd"}, "_meta": meta}}
    # Compact, with a number whose spelling JSON round-trips would lose.
    raw = json.dumps(body, separators=(",", ":")).replace('"n":0', '"n":1.50')
    r = rm.post(agent.http, gw.mcp, raw, rm.stateless_headers("tools/call", "delete_record"))
    created = rm.answer(r, "fwd-1")["result"]
    assert created["resultType"] == "task", created
    [item] = gw.wait_pending(1)
    assert upstream_requests(log, "task-fwd") == [], "a held call reached the upstream before approval"

    assert gw.decide(item["id"], "approve").status_code == 200
    done = agent.wait_done(created["taskId"])
    assert done["status"] == "completed" and text_of(done["result"]) == "deleted task-fwd", done

    [seen] = upstream_requests(log, "task-fwd")
    forwarded = json.loads(seen["body"])
    caps = forwarded["params"]["_meta"][CAPABILITIES]
    assert EXTENSION not in caps.get("extensions", {}), f"the upstream was offered the tasks extension: {seen['body']}"
    expected = json.loads(raw)
    del expected["params"]["_meta"][CAPABILITIES]["extensions"][EXTENSION]
    assert forwarded == expected, seen["body"]
    assert seen["body"] == raw.replace(f'"{EXTENSION}":{{}},', ""), "key order or number spelling changed"
    assert seen["headers"].get("mcp-name") == "delete_record", seen["headers"]
