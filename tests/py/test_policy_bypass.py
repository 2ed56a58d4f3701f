"""Requests shaped to slip past the policy are refused before any upstream sees them."""
import json

import httpx

from harness import PYTHON, TESTSERVER

POLICY = {"version": "1", "default": "deny", "hide": ["secret_tool"],
          "rules": {"echo": {"action": "allow"}, "delete_record": {"action": "require_approval"}}}
ACCEPT = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


def start(procs, tmp_path):
    log = tmp_path / "upstream.jsonl"
    _, url = procs.testserver_http("both", "--log-requests", str(log))
    gw = procs.airlock(policy=POLICY, url=url)
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    r = httpx.post(gw.mcp, json=init, headers=ACCEPT, timeout=20)
    sid = r.headers["mcp-session-id"]
    httpx.post(gw.mcp, json={"jsonrpc": "2.0", "method": "notifications/initialized"},
               headers={**ACCEPT, "mcp-session-id": sid}, timeout=20)
    return gw, sid, log


def upstream_saw(log, needle):
    return log.exists() and needle in log.read_text()


def post(gw, sid, body: str):
    return httpx.post(gw.mcp, content=body.encode(), headers={**ACCEPT, "mcp-session-id": sid}, timeout=20)


def test_a_tools_call_with_a_null_id_is_refused(procs, tmp_path):
    gw, sid, log = start(procs, tmp_path)
    r = post(gw, sid, '{"jsonrpc":"2.0","id":null,"method":"tools/call","params":{"name":"delete_record","arguments":{"id":"n1"}}}')
    assert r.status_code == 400 and r.json()["error"]["code"] == -32600, r.text
    assert not upstream_saw(log, '"n1"')


def test_a_tools_call_sent_as_a_notification_is_refused(procs, tmp_path):
    gw, sid, log = start(procs, tmp_path)
    r = post(gw, sid, '{"jsonrpc":"2.0","method":"tools/call","params":{"name":"delete_record","arguments":{"id":"n2"}}}')
    assert r.status_code == 400 and "must be a request" in r.json()["error"]["message"], r.text
    assert not upstream_saw(log, '"n2"')


def test_duplicate_argument_keys_are_refused(procs, tmp_path):
    gw, sid, log = start(procs, tmp_path)
    r = post(gw, sid, '{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"echo","arguments":{"text":"dup1","text":"dup2"}}}')
    body = r.json()
    assert body["error"]["code"] == -32602 and "duplicate key `text`" in body["error"]["message"], r.text
    assert not upstream_saw(log, "dup1")


def test_unreadable_params_are_refused_not_forwarded(procs, tmp_path):
    gw, sid, log = start(procs, tmp_path)
    r = post(gw, sid, '{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"echo","name":"delete_record","arguments":{"id":"n3"}}}')
    assert r.json()["error"]["code"] == -32602, r.text
    assert not upstream_saw(log, '"n3"')


def test_default_denied_and_hidden_tools_look_the_same_as_missing_ones(procs, tmp_path):
    gw, sid, _ = start(procs, tmp_path)
    answers = {}
    for i, tool in enumerate(["secret_tool", "add", "no_such_tool_at_all"]):
        r = post(gw, sid, json.dumps({"jsonrpc": "2.0", "id": 10 + i, "method": "tools/call",
                                      "params": {"name": tool, "arguments": {}}}))
        text = r.text
        start_at = text.find("{")
        answer = json.loads(text[start_at:text.rfind("}") + 1])
        answers[tool] = (answer["error"]["code"], answer["error"]["message"].replace(tool, "<tool>"))
    assert answers["secret_tool"] == answers["add"] == answers["no_such_tool_at_all"], answers
