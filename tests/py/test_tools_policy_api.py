"""The tools inventory, policy editing and history-details API, and approver roles — against the
real binary, its real stdio test server, and the official Python SDK client for enforcement."""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import httpx

from harness import AIRLOCK_BIN, PYTHON, TESTSERVER, gateway_number, listening_port, run_pydriver, text_of, write_json
from holdkit import ALICE, BOB, WebSocket

VIC = "vic-viewer-token-0123456789abcdef"
ENV = {"AIRLOCK_TEST_ALICE": ALICE, "AIRLOCK_TEST_BOB": BOB, "AIRLOCK_TEST_VIC": VIC}

POLICY = {
    "version": "1",
    "default": "deny",
    "hide": ["secret_tool"],
    "rules": {
        "echo": {"action": "allow"},
        "add": {"action": "allow", "when": [
            {"if": [{"path": "args.a", "op": "gt", "value": 100}], "action": "deny", "reason": "too big"}]},
        "delete_*": {"action": "require_approval", "reason": "destructive"},
    },
}


class Gw:
    def __init__(self, procs, policy=POLICY, policy_name="policy.json"):
        n = gateway_number()
        tmp: Path = procs.tmp_path
        self.policy_path = tmp / f"{n}-{policy_name}"
        if isinstance(policy, str):
            self.policy_path.write_text(policy)
        else:
            write_json(self.policy_path, policy)
        config = tmp / f"airlock-{n}.toml"
        config.write_text("\n".join([
            "[[upstream]]", 'name = "test"', f"command = {json.dumps(PYTHON)}",
            f"args = {json.dumps([str(TESTSERVER), 'stdio'])}", f"policy = {json.dumps(str(self.policy_path))}", "",
            "[[approver]]", 'name = "alice"', 'token_env = "AIRLOCK_TEST_ALICE"', 'role = "admin"', "",
            "[[approver]]", 'name = "bob"', 'token_env = "AIRLOCK_TEST_BOB"', "",
            "[[approver]]", 'name = "vic"', 'token_env = "AIRLOCK_TEST_VIC"', 'role = "viewer"', "",
        ]))
        self.audit = tmp / f"audit-{n}.db"
        self.proc = procs.start([AIRLOCK_BIN, "serve", "--config", config, "--listen", "127.0.0.1:0",
                                 "--audit", self.audit], env=ENV)
        self.port = listening_port(self.proc)
        self.base = f"http://127.0.0.1:{self.port}"
        self.mcp = f"{self.base}/mcp/test"
        self.http = httpx.Client(base_url=self.base, timeout=httpx.Timeout(60.0, connect=5.0))

    def api(self, method, path, token=ALICE, **kw):
        return self.http.request(method, path, headers={"Authorization": f"Bearer {token}"}, **kw)

    def tools(self) -> dict[str, dict]:
        r = self.api("GET", "/api/tools")
        assert r.status_code == 200, r.text
        [up] = r.json()["upstreams"]
        assert up["error"] is None, up
        return {t["name"]: t for t in up["tools"]}


def sdk_calls(url: str, *calls: tuple[str, dict]) -> list[str]:
    script = [{"op": "call", "name": n, "args": a} for n, a in calls]
    report = run_pydriver("auto", script, url=url)
    assert report["_exit"] == 0, report["_stderr"]
    out = []
    for step in report["steps"]:
        if not step["ok"]:
            out.append(f"error {step['error'].get('code')}")
        elif step["result"].get("isError"):
            out.append(f"refused {step['result']['_meta']['airlock.decision']}")
        else:
            out.append(f"ok: {text_of(step['result'])}")
    return out


# --- roles -------------------------------------------------------------------------

def test_roles_are_reported_and_enforced(procs):
    gw = Gw(procs)
    assert gw.api("GET", "/api/me").json()["role"] == "admin"
    assert gw.api("GET", "/api/me", token=BOB).json()["role"] == "approver"
    assert gw.api("GET", "/api/me", token=VIC).json()["role"] == "viewer"
    # A viewer reads everything…
    for path in ("/api/pending", "/api/audit", "/api/tools", "/api/policy/test"):
        assert gw.api("GET", path, token=VIC).status_code == 200, path
    # …but cannot decide, even an id that does not exist (the role is checked first).
    r = gw.api("POST", "/api/pending/0190c5d2-0000-7000-8000-000000000000/approve", token=VIC, json={})
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden_role", r.text
    assert "approver" in r.json()["error"]["message"] and "viewer" in r.json()["error"]["message"]
    # Only an admin saves a policy.
    text = gw.policy_path.read_text()
    for token in (VIC, BOB):
        r = gw.api("PUT", "/api/policy/test", token=token, json={"text": text.replace("destructive", "x")})
        assert r.status_code == 403 and r.json()["error"]["needed"] == "admin", r.text
    assert gw.policy_path.read_text() == text
    assert gw.api("GET", "/api/policy/test", token=BOB).json()["can_edit"] is False
    assert gw.api("GET", "/api/policy/test").json()["can_edit"] is True


def test_a_viewer_cannot_decide_a_real_hold(procs):
    from holdkit import HeldCall
    gw = Gw(procs)
    call = HeldCall(gw.mcp, "delete_record", {"id": "r1"})
    call.start()
    deadline = time.monotonic() + 15
    while not (items := gw.api("GET", "/api/pending").json()["pending"]):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    pid = items[0]["id"]
    assert gw.api("POST", f"/api/pending/{pid}/approve", token=VIC, json={}).status_code == 403
    assert gw.api("GET", "/api/pending").json()["pending"][0]["id"] == pid
    assert gw.api("POST", f"/api/pending/{pid}/approve", token=BOB, json={}).status_code == 200
    assert text_of(call.result()) == "deleted r1"


# --- tools ---------------------------------------------------------------------------

def test_tools_lists_every_tool_with_risk_outcome_rule_and_calls(procs):
    gw = Gw(procs)
    assert sdk_calls(gw.mcp, ("echo", {"text": "hi"}), ("echo", {"text": "again"}), ("add", {"a": 500, "b": 1})) == [
        "ok: hi", "ok: again", "refused denied"]
    tools = gw.tools()
    # Unfiltered: hidden tools are in the inventory, marked hidden.
    assert {"echo", "add", "delete_record", "secret_tool", "crash"} <= set(tools)
    assert tools["secret_tool"]["outcome"] == "hidden" and tools["secret_tool"]["rule"] == "hide"
    assert tools["echo"]["outcome"] == "allow" and tools["echo"]["rule"] == "echo"
    assert tools["echo"]["calls_24h"] == {"allowed": 2}
    assert tools["add"]["outcome"] == "depends on arguments (deny | allow)"
    assert tools["add"]["conditions"][0]["label"].startswith("when 1: args.a gt 100")
    assert tools["add"]["calls_24h"] == {"denied": 1}
    assert tools["delete_record"]["risk"] == "destructive"
    assert tools["delete_record"]["outcome"] == "require_approval" and tools["delete_record"]["rule"] == "delete_*"
    assert tools["delete_record"]["reason"] == "destructive"
    assert tools["crash"]["outcome"] == "deny" and tools["crash"]["rule"] == "default"
    assert tools["echo"]["risk"] == "unknown" and tools["echo"]["description"] == "Echo the text back"
    body = gw.api("GET", "/api/tools").json()
    assert "readOnlyHint" in body["risk_classes"]
    # Refresh lists again.
    r = gw.api("POST", "/api/tools/refresh", token=VIC)
    assert r.status_code == 200 and r.json()["upstreams"][0]["listed_at"] >= body["upstreams"][0]["listed_at"]
    r = gw.api("GET", "/api/tools?upstream=nope")
    assert r.status_code == 404 and "`nope`" in r.json()["error"]["message"] and "test" in r.json()["error"]["message"]


# --- policy editing -----------------------------------------------------------------

def test_saving_a_policy_validates_writes_atomically_and_is_enforced(procs):
    gw = Gw(procs)
    assert sdk_calls(gw.mcp, ("echo", {"text": "before"})) == ["ok: before"]
    current = gw.api("GET", "/api/policy/test").json()
    assert current["format"] == "Airlock JSON" and current["text"] == gw.policy_path.read_text()
    new = json.loads(current["text"])
    new["rules"]["echo"] = {"action": "deny", "reason": "echo is off today"}
    new_text = json.dumps(new, indent=2) + "\n"
    check = gw.api("POST", "/api/policy/test/check", token=VIC, json={"text": new_text})
    assert check.status_code == 200, check.text
    assert '-    "echo": {' in check.json()["diff"] or '"echo"' in check.json()["diff"]
    assert '+      "reason": "echo is off today"' in check.json()["diff"], check.json()["diff"]
    ws = WebSocket(gw.port, headers={"Authorization": f"Bearer {ALICE}"})
    ws.recv()  # snapshot
    r = gw.api("PUT", "/api/policy/test", json={"text": new_text, "base_sha256": current["sha256"]})
    assert r.status_code == 200, r.text
    saved = r.json()
    assert saved["saved"] and saved["reloaded"], saved
    assert saved["diff_sha256"] == check.json()["diff_sha256"]
    assert gw.policy_path.read_text() == new_text
    assert Path(str(gw.policy_path) + ".prev").read_text() == current["text"]
    assert not [p for p in gw.policy_path.parent.iterdir() if p.name.endswith(".tmp")]
    event, _ = ws.recv_until(lambda e: e["type"] == "policy.changed")
    assert event["upstream"] == "test" and event["by"] == "alice" and event["diff_sha256"] == saved["diff_sha256"]
    ws.close()
    # The running gateway enforces it, for a real SDK client.
    assert sdk_calls(gw.mcp, ("echo", {"text": "after"})) == ["refused denied"]
    # The save is an audit row naming who and the diff's hash.
    r = gw.api("GET", "/api/audit", params={"decision": "policy.changed"})
    [row] = r.json()["entries"]
    assert row["decider"] == "alice" and row["upstream"] == "test" and row["channel"] == "api"
    assert row["arguments"]["diff_sha256"] == saved["diff_sha256"]
    assert row["arguments"]["previous_sha256"] == current["sha256"]
    # A save from a stale base is refused.
    r = gw.api("PUT", "/api/policy/test", json={"text": current["text"], "base_sha256": current["sha256"]})
    assert r.status_code == 409 and r.json()["error"]["code"] == "policy_changed", r.text


def test_an_invalid_policy_is_refused_with_airlock_checks_message(procs):
    gw = Gw(procs)
    before = gw.policy_path.read_text()
    bad = '{\n  "version": "1",\n  "default": "deny",\n  "rules": {\n    "echo": {"acton": "allow"}\n  }\n}\n'
    r = gw.api("PUT", "/api/policy/test", json={"text": bad})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_policy" and err["line"] == 5 and err["column"] > 0, err
    # The very message `airlock check` prints for the same text in the same file.
    probe = gw.policy_path.parent / "probe" 
    probe.mkdir()
    same = probe / gw.policy_path.name
    same.write_text(bad)
    done = subprocess.run([AIRLOCK_BIN, "check", str(same)], capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.strip().replace(str(same), "FILE") == "error: " + err["message"].replace(str(gw.policy_path), "FILE")
    assert "acton" in err["message"] and "action" in err["message"]
    assert gw.policy_path.read_text() == before
    r = gw.api("POST", "/api/policy/test/check", json={"text": "{"})
    assert r.status_code == 422 and r.json()["error"]["line"] is not None
    assert gw.api("PUT", "/api/policy/nope", json={"text": before}).status_code == 404
    assert gw.api("PUT", "/api/policy/test", json={"txt": before}).status_code in (400, 422)


def test_a_policylayer_file_comes_with_a_conversion(procs):
    pl = {"version": "1", "default": "deny", "hide": ["secret_tool"],
          "tools": {"echo": {}, "add": {"deny_if": [{"conditions": [{"path": "args.a", "op": "gt", "value": 100}],
                                                     "on_deny": "too big"}]}}}
    gw = Gw(procs, policy=pl)
    body = gw.api("GET", "/api/policy/test").json()
    assert body["format"] == "PolicyLayer JSON"
    converted = json.loads(body["converted"]["text"])
    assert converted["rules"]["echo"]["action"] == "allow" and converted["hide"] == ["secret_tool"]
    # Saving the conversion keeps the same decisions.
    r = gw.api("PUT", "/api/policy/test", json={"text": body["converted"]["text"]})
    assert r.status_code == 200 and r.json()["reloaded"], r.text
    assert gw.api("GET", "/api/policy/test").json()["format"] == "Airlock JSON"
    assert sdk_calls(gw.mcp, ("echo", {"text": "x"}), ("add", {"a": 500, "b": 1}), ("add", {"a": 1, "b": 2})) == [
        "ok: x", "refused denied", "ok: 3"]


# --- history details -------------------------------------------------------------------

def test_an_entry_opens_with_its_chain_position_and_related_rows(procs):
    from holdkit import HeldCall
    gw = Gw(procs)
    call = HeldCall(gw.mcp, "delete_record", {"id": "r9", "password": "hunter2"})
    call.start()
    deadline = time.monotonic() + 15
    while not (items := gw.api("GET", "/api/pending").json()["pending"]):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert gw.api("POST", f"/api/pending/{items[0]['id']}/deny", token=BOB, json={"comment": "not today"}).status_code == 200
    call.result()
    rows = gw.api("GET", "/api/audit", params={"tool": "delete_record"}).json()["entries"]
    requested = next(r for r in rows if r["decision"] == "approval_requested")
    decided = next(r for r in rows if r["decision"] == "denied_by_human")
    r = gw.api("GET", f"/api/audit/entries/{decided['seq']}", token=VIC)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["entry"]["comment"] == "not today" and body["entry"]["decider"] == "bob"
    assert body["entry"]["arguments"]["password"] == "[redacted]"
    assert body["chain"] == {"position": decided["seq"], "last": body["chain"]["last"],
                             "hash_matches_row": True, "links_to_previous": True}
    assert [x["seq"] for x in body["related"]] == [requested["seq"]]
    back = gw.api("GET", f"/api/audit/entries/{requested['seq']}").json()
    assert [x["decision"] for x in back["related"]] == ["denied_by_human"]
    assert gw.api("GET", "/api/audit/entries/999999").status_code == 404
    assert gw.api("GET", "/api/audit/entries/abc").status_code == 400


def test_verify_chain_reports_ok_then_the_first_broken_row(procs):
    import sqlite3
    gw = Gw(procs)
    assert sdk_calls(gw.mcp, ("echo", {"text": "a"}), ("echo", {"text": "b"})) == ["ok: a", "ok: b"]
    r = gw.api("POST", "/api/audit/verify", token=VIC)
    assert r.status_code == 200, r.text
    assert r.json()["chain"]["ok"] and r.json()["chain"]["rows"] >= 2
    with sqlite3.connect(gw.audit) as db:
        db.execute("UPDATE audit SET tool = 'tampered' WHERE seq = 1")
    body = gw.api("POST", "/api/audit/verify").json()
    assert body["ok"] is False and "row 1" in body["chain"]["problem"], body
