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


# --- strict reading of what decides the policy (issue 11) -------------------

def start_audited(procs, tmp_path):
    """Like `start`, behind a config-mode gateway whose audit trail the test reads."""
    from holdkit import start_gateway
    log = tmp_path / "upstream-audited.jsonl"
    _, url = procs.testserver_http("both", "--log-requests", str(log))
    gw = start_gateway(procs, POLICY, url=url)
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    r = httpx.post(gw.mcp, json=init, headers=ACCEPT, timeout=20)
    sid = r.headers["mcp-session-id"]
    httpx.post(gw.mcp, json={"jsonrpc": "2.0", "method": "notifications/initialized"},
               headers={**ACCEPT, "mcp-session-id": sid}, timeout=20)
    return gw, sid, log


def post_to(url, sid, body: str, headers: dict | None = None):
    h = {**ACCEPT, **({"mcp-session-id": sid} if sid else {}), **(headers or {})}
    return httpx.post(url, content=body.encode(), headers=h, timeout=20)


STATELESS_META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                  "io.modelcontextprotocol/clientCapabilities": {},
                  "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"}}


def test_by_position_params_are_invalid_params_before_the_policy_and_the_audit(procs, tmp_path):
    gw, sid, log = start_audited(procs, tmp_path)
    calls = [
        '{"jsonrpc":"2.0","id":21,"method":"tools/call","params":["echo",{"text":"pos1"}]}',
        '{"jsonrpc":"2.0","id":22,"method":"tools/call","params":["delete_record",{"id":"pos2"}]}',
        '{"jsonrpc":"2.0","id":23,"method":"tools/list","params":["pos3"]}',
    ]
    for body in calls:
        r = post_to(gw.mcp, sid, body)
        error = r.json()["error"]
        assert r.status_code == 400 and error["code"] == -32602, r.text
        assert "`params` must be an object" in error["message"] and "array" in error["message"], r.text
        assert r.json()["id"] == json.loads(body)["id"], r.text
    # The stateless era reads `_meta` (and tasks/* their taskId) from params: same refusal.
    for method, params in [("tools/call", ["echo", {"text": "pos4"}, STATELESS_META]),
                           ("tasks/get", ["pos5"]), ("server/discover", [STATELESS_META])]:
        body = json.dumps({"jsonrpc": "2.0", "id": 30, "method": method, "params": params})
        r = post_to(gw.mcp, None, body, {"mcp-protocol-version": "2026-07-28", "mcp-method": method})
        assert r.status_code == 400 and r.json()["error"]["code"] == -32602, (method, r.text)
    for needle in ("pos1", "pos2", "pos3", "pos4", "pos5"):
        assert not upstream_saw(log, needle), needle
    assert gw.pending() == []
    assert [row for row in gw.audit_rows() if row["decision"] == "allowed"] == []


NON_INTEGER_IDS = ["1.0", "1e0", "2.5", "-0", "1E2", "99999999999999999999", "9007199254740992"]


def test_non_integer_ids_are_invalid_requests_never_forwarded(procs, tmp_path):
    gw, sid, log = start(procs, tmp_path)
    for i, raw_id in enumerate(NON_INTEGER_IDS):
        body = ('{"jsonrpc":"2.0","id":%s,"method":"tools/call","params":{"name":"echo","arguments":{"text":"num%d"}}}'
                % (raw_id, i))
        r = post(gw, sid, body)
        assert r.status_code == 400, (raw_id, r.text)
        assert r.json()["error"]["code"] == -32600 and r.json()["id"] is None, (raw_id, r.text)
        assert raw_id in r.json()["error"]["message"], r.text
        assert not upstream_saw(log, f"num{i}"), raw_id
    # An agent's answer to a server request is held to the same rule.
    r = post(gw, sid, '{"jsonrpc":"2.0","id":1.0,"result":{}}')
    assert r.status_code == 400 and r.json()["error"]["code"] == -32600, r.text
    # The largest integer every JSON peer keeps exactly still works, and comes back as sent.
    r = post(gw, sid, '{"jsonrpc":"2.0","id":9007199254740991,"method":"tools/call",'
                      '"params":{"name":"echo","arguments":{"text":"big"}}}')
    text = r.text
    assert '"id":9007199254740991' in text.replace(" ", "") and "big" in text, text


def test_a_tools_list_answer_airlock_cannot_read_is_not_passed_on_unfiltered(procs):
    import rawmcp as rm

    def respond(body):
        if body.get("method") == "tools/list":  # an id Airlock refuses to read: 1.0
            data = b'{"jsonrpc":"2.0","id":1.0,"result":{"tools":[{"name":"secret_tool"},{"name":"echo"}]}}'
        else:
            data = json.dumps({"jsonrpc": "2.0", "id": body.get("id"), "result": {}}).encode()
        return "application/json", [], data

    upstream = rm.TinyUpstream(respond)
    try:
        gw = procs.airlock(policy=POLICY, url=upstream.url)
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": rm.stateless_meta()}}
        with rm.client() as c:
            r = rm.post(c, gw.mcp, body, rm.stateless_headers("tools/list"))
        assert "secret_tool" not in r.text, r.text
        assert r.json()["error"]["code"] == -32000 and r.json()["id"] == 1, r.text
    finally:
        upstream.close()


def test_arguments_that_are_not_an_object_cannot_slip_past_a_condition(procs, tmp_path):
    # A condition reads `args.text` from an object only: an array or a string
    # would make the deny branch miss while a lenient upstream still runs it.
    log = tmp_path / "upstream.jsonl"
    _, url = procs.testserver_http("both", "--log-requests", str(log))
    policy = {"version": "1", "default": "deny", "rules": {"echo": {"when": [
        {"if": [{"path": "args.text", "op": "contains", "value": "drop"}], "action": "deny", "reason": "no drops"},
        {"action": "allow"}]}}}
    gw = procs.airlock(policy=policy, url=url)
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    sid = httpx.post(gw.mcp, json=init, headers=ACCEPT, timeout=20).headers["mcp-session-id"]
    for n, arguments in enumerate(['["drop1"]', '"drop2"', '7', 'true']):
        r = post(gw, sid, '{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"echo","arguments":%s}}' % (10 + n, arguments))
        error = r.json()["error"]
        assert error["code"] == -32602 and "arguments must be a JSON object" in error["message"], r.text
    assert not upstream_saw(log, "drop")
    # An object is read; `null` reads as no arguments (the deny branch cannot match).
    r = post(gw, sid, '{"jsonrpc":"2.0","id":20,"method":"tools/call","params":{"name":"echo","arguments":{"text":"drop3"}}}')
    assert "no drops" in r.text and not upstream_saw(log, "drop3"), r.text
    r = post(gw, sid, '{"jsonrpc":"2.0","id":21,"method":"tools/call","params":{"name":"echo","arguments":null}}')
    assert "arguments must be" not in r.text, r.text
