"""Asking the agent's own user (issue 15, item 4): `"approval": {"via": [...]}` with `agent_user`,
against the real binary and the project's test server (official Python SDK server), answered by
the official Python SDK client (`mcp` 2.x, both eras, HTTP and `airlock stdio`) and the official
TypeScript SDK clients (`@modelcontextprotocol/sdk` 1.x, handshake era; `@modelcontextprotocol/client`
2.x, stateless era), plus raw HTTP where a test needs to control when the user answers (races with
an approver). The browser side is tests/e2e/elicitation.test.mjs."""
from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

import rawmcp as rm
from harness import TESTSERVER, PYTHON, airlock_stdio_cmd, run_driver, run_pydriver, text_of, write_json
from holdkit import ALICE, start_gateway

APPROVE = {"decision": "approve"}


def policy(via: list[str] | None, **approval) -> dict:
    rule = {"action": "require_approval", "reason": "destructive",
            "approval": {"timeout": 30, **approval, **({"via": via} if via is not None else {})}}
    return {"version": "1", "default": "deny",
            "rules": {"echo": {"action": "allow"}, "delete_*": rule}}


def call_script(**args) -> list[dict]:
    return [{"op": "call", "name": "delete_record", "args": args or {"id": "r1"}, "timeoutMs": 25000},
            {"op": "close"}]


def the_call(report: dict) -> dict:
    step = report["steps"][0]
    assert step.get("ok", True) and "result" in step, report
    return step


def outcome_rows(gw, tool="delete_record") -> list[dict]:
    """Audit rows that end a hold (or refuse a call) of `tool`."""
    return [e for e in gw.audit_rows(tool=tool)
            if e["decision"] not in ("approval_requested", "allowed")]


# ----------------------------------------------------------------------------- handshake era


@pytest.mark.parametrize("via", [["agent_user"], ["approvers", "agent_user"]])
def test_python_sdk_user_approves_in_their_client_and_the_call_runs(procs, via):
    gw = start_gateway(procs, policy(via))
    report = run_pydriver("legacy", call_script(id="r1"), url=gw.mcp, name="py-user",
                          extra=["--elicit-content", json.dumps(APPROVE)])
    step = the_call(report)
    assert step["elicitation"] == 1, report
    assert text_of(step["result"]) == "deleted r1" and not step["result"].get("isError"), step
    question = report["totals"]["elicitMessages"][0]
    assert "`delete_record`" in question and '"id":"r1"' in question and "destructive" in question
    [row] = outcome_rows(gw)
    assert row["decision"] == "approved" and row["channel"] == "elicitation", row
    assert row["decider"] == "agent_user:py-user/1.0.0", row
    assert gw.pending() == []


def test_typescript_sdk_user_declines_and_the_call_is_refused(procs):
    gw = start_gateway(procs, policy(["agent_user"]))
    report = run_driver("sdk1", call_script(id="r2"), url=gw.mcp,
                        extra=["--elicit-action", "decline", "--name", "ts-user"])
    step = the_call(report)
    assert step["elicitation"] == 1, report
    result = step["result"]
    assert result["isError"] is True, result
    assert "declined" in text_of(result) and "agent_user:" in text_of(result), result
    assert result["_meta"]["airlock.decision"] == "approval_denied", result
    [row] = outcome_rows(gw)
    assert row["decision"] == "denied_by_human" and row["channel"] == "elicitation", row
    assert row["decider"].startswith("agent_user:"), row


def test_typescript_sdk_user_approves(procs):
    gw = start_gateway(procs, policy(["approvers", "agent_user"]))
    report = run_driver("sdk1", call_script(id="r3"), url=gw.mcp,
                        extra=["--elicit-content", json.dumps(APPROVE), "--name", "ts-user"])
    step = the_call(report)
    assert text_of(step["result"]) == "deleted r3", step
    [row] = outcome_rows(gw)
    assert (row["decision"], row["channel"]) == ("approved", "elicitation"), row


def test_an_answer_without_approve_denies(procs):
    """Accepting the form without choosing approve (here: content the form did not ask for) is no approval."""
    gw = start_gateway(procs, policy(["agent_user"]))
    report = run_pydriver("legacy", call_script(id="r4"), url=gw.mcp, extra=["--elicit-content", '{"answer":"yes"}'])
    result = the_call(report)["result"]
    assert result["isError"] is True and "without choosing approve" in text_of(result), result
    assert text_of(result).find("deleted") == -1


def test_stdio_agent_asks_on_stdout_and_takes_the_answer_from_stdin(procs, tmp_path):
    cmd = airlock_stdio_cmd(tmp_path, policy(["agent_user"]), upstream=[PYTHON, str(TESTSERVER), "stdio"])
    report = run_pydriver("legacy", call_script(id="r5"), stdio=cmd, extra=["--elicit-content", json.dumps(APPROVE)])
    step = the_call(report)
    assert step["elicitation"] == 1 and text_of(step["result"]) == "deleted r5", report


def test_client_without_the_capability(procs):
    """via = ["agent_user"] only: refused, saying why (nobody else may approve). With approvers too:
    a normal hold that an approver decides."""
    gw = start_gateway(procs, policy(["agent_user"]))
    report = run_driver("sdk1", call_script(id="r6"), url=gw.mcp, extra=["--no-capabilities"])
    result = the_call(report)["result"]
    assert result["isError"] is True and "elicitation capability" in text_of(result), result
    [row] = outcome_rows(gw)
    assert row["decision"] == "denied" and "elicitation capability" in row["reason"], row

    gw2 = start_gateway(procs, policy(["approvers", "agent_user"]))
    done = {}
    t = threading.Thread(target=lambda: done.update(r=run_driver(
        "sdk1", call_script(id="r7"), url=gw2.mcp, extra=["--no-capabilities"])))
    t.start()
    [item] = gw2.wait_pending()
    assert gw2.decide(item["id"], "approve").status_code == 200
    t.join(30)
    step = the_call(done["r"])
    assert step["elicitation"] == 0 and text_of(step["result"]) == "deleted r7", step
    [row] = outcome_rows(gw2)
    assert (row["decision"], row["channel"], row["decider"]) == ("approved", "api", "alice"), row


class RawHeld(threading.Thread):
    """A handshake-era session (declaring elicitation) whose held call's SSE stream is read on a
    thread: `.messages` collects every message, `.question` is Airlock's elicitation request."""

    def __init__(self, gw, arguments: dict, capabilities: dict | None = None, tool: str = "delete_record"):
        super().__init__(daemon=True)
        self.gw, self.arguments, self.tool = gw, arguments, tool
        self.c = httpx.Client(timeout=httpx.Timeout(60.0, connect=5.0))
        caps = {"elicitation": {"form": {}}} if capabilities is None else capabilities
        r = rm.post(self.c, gw.mcp, rm.init_body(capabilities=caps))
        assert r.status_code == 200, r.text
        self.sid = r.headers["mcp-session-id"]
        rm.post(self.c, gw.mcp, {"jsonrpc": "2.0", "method": "notifications/initialized"},
                rm.session_headers(self.sid))
        self.messages: list[dict] = []
        self.asked = threading.Event()

    def run(self):
        body = rm.call_body(5, self.tool, self.arguments)
        with self.c.stream("POST", self.gw.mcp, content=json.dumps(body),
                           headers={"Content-Type": "application/json", "Accept": rm.ACCEPT,
                                    **rm.session_headers(self.sid)}) as r:
            for m in rm.stream_messages(r):
                self.messages.append(m)
                if m.get("method") == "elicitation/create":
                    self.asked.set()

    @property
    def question(self) -> dict:
        assert self.asked.wait(15), self.messages
        return next(m for m in self.messages if m.get("method") == "elicitation/create")

    def reply(self, result: dict) -> httpx.Response:
        body = {"jsonrpc": "2.0", "id": self.question["id"], "result": result}
        return rm.post(self.c, self.gw.mcp, body, rm.session_headers(self.sid))

    def answer(self) -> dict:
        self.join(20)
        assert not self.is_alive(), self.messages
        return next(m for m in self.messages if m.get("id") == 5 and "method" not in m)


def test_the_question_is_a_flat_form_with_an_id_of_airlocks_own(procs):
    gw = start_gateway(procs, policy(["agent_user"]))
    held = RawHeld(gw, {"id": "q1"})
    held.start()
    q = held.question
    assert isinstance(q["id"], str) and q["id"].startswith("airlock-elicit-"), q
    params = q["params"]
    assert params["mode"] == "form"
    schema = params["requestedSchema"]
    assert schema["type"] == "object" and schema["required"] == ["decision"]
    assert schema["properties"]["decision"]["enum"] == ["approve", "deny"]
    assert all(p["type"] in ("string", "number", "integer", "boolean") for p in schema["properties"].values())
    # An answer from another session is not Airlock's to take: it goes upstream like any message
    # (and the upstream ignores it); the hold stays open.
    other = rm.open_session(held.c, gw.mcp)
    r = rm.post(held.c, gw.mcp, {"jsonrpc": "2.0", "id": q["id"], "result": {"action": "accept", "content": APPROVE}},
                rm.session_headers(other))
    assert r.status_code == 202
    time.sleep(0.3)
    assert len(gw.pending()) == 1
    # Approvers cannot approve a call only the agent's user may approve; they can deny it.
    [item] = gw.pending()
    r = gw.decide(item["id"], "approve")
    assert r.status_code == 403 and r.json()["error"]["code"] == "agent_user_only", r.text
    assert gw.decide(item["id"], "deny", comment="not today").status_code == 200
    answer = held.answer()
    assert "not today" in text_of(answer["result"]), answer
    # The user's question was withdrawn; a late answer is swallowed (202, never forwarded).
    cancelled = [m for m in held.messages if m.get("method") == "notifications/cancelled"]
    assert cancelled and cancelled[0]["params"]["requestId"] == q["id"], held.messages
    assert held.reply({"action": "accept", "content": APPROVE}).status_code == 202
    [row] = outcome_rows(gw)
    assert (row["decision"], row["channel"], row["decider"]) == ("denied_by_human", "api", "alice"), row


def test_an_approver_racing_the_user_decides_once(procs):
    """The approver decides first: one outcome (theirs), one audit row; the user's late answer is
    taken (202) but decides nothing, and their question was withdrawn."""
    gw = start_gateway(procs, policy(["approvers", "agent_user"]))
    held = RawHeld(gw, {"id": "race1"})
    held.start()
    held.question
    [item] = gw.pending()
    assert gw.decide(item["id"], "approve").status_code == 200
    assert held.reply({"action": "decline"}).status_code == 202
    answer = held.answer()
    assert text_of(answer["result"]) == "deleted race1", answer
    assert any(m.get("method") == "notifications/cancelled" for m in held.messages)
    rows = outcome_rows(gw)
    assert [(r["decision"], r["channel"]) for r in rows] == [("approved", "api")], rows


def test_the_user_racing_an_approver_decides_once(procs):
    """The user answers first: the approver gets 409 naming the user's decision."""
    gw = start_gateway(procs, policy(["approvers", "agent_user"]))
    held = RawHeld(gw, {"id": "race2"})
    held.start()
    held.question
    [item] = gw.pending()
    assert held.reply({"action": "decline"}).status_code == 202
    answer = held.answer()
    assert answer["result"]["isError"] is True, answer
    r = gw.decide(item["id"], "approve")
    assert r.status_code == 409 and r.json()["error"]["decided_by"].startswith("agent_user:"), r.text
    rows = outcome_rows(gw)
    assert [(r["decision"], r["channel"]) for r in rows] == [("denied_by_human", "elicitation")], rows
    assert not any(m.get("method") == "notifications/cancelled" for m in held.messages)


def test_both_at_once_many_times_one_outcome_each(procs):
    """User and approver answer at the same moment, repeatedly: each hold gets exactly one outcome row."""
    gw = start_gateway(procs, policy(["approvers", "agent_user"]))
    for n in range(5):
        held = RawHeld(gw, {"id": f"both{n}"})
        held.start()
        held.question
        [item] = gw.wait_pending()
        go = threading.Barrier(2)
        results = {}

        def user():
            go.wait()
            results["user"] = held.reply({"action": "accept", "content": APPROVE}).status_code

        def approver():
            go.wait()
            results["api"] = gw.decide(item["id"], "deny").status_code

        ts = [threading.Thread(target=user), threading.Thread(target=approver)]
        [t.start() for t in ts]
        [t.join(20) for t in ts]
        answer = held.answer()
        assert results["user"] == 202 and results["api"] in (200, 409), results
        rows = [r for r in outcome_rows(gw) if r["pending_id"] == item["id"]]
        assert len(rows) == 1, rows
        ran = text_of(answer["result"]) == f"deleted both{n}"
        assert ran == (rows[0]["decision"] == "approved"), (answer, rows)
        gw.wait_gone(item["id"])


# ----------------------------------------------------------------------------- changed tool definitions


def test_a_changed_tool_definition_is_never_put_to_the_agents_user(procs):
    """on_tool_change: hold makes an approver accept the new definition: the user is not asked,
    even where the tool's rule would let only them approve."""
    from test_power import LIST, PULL, drive, gateway as power_gateway, policy as power_policy
    gw = power_gateway(procs, power_policy("hold", transfer={
        "action": "require_approval", "approval": {"timeout": 60, "via": ["agent_user"]}}))
    drive(gw, LIST, PULL, LIST)
    done = {}
    t = threading.Thread(target=lambda: done.update(r=run_pydriver(
        "legacy", [{"op": "call", "name": "transfer", "args": {"to": "eve", "amount": 3}}, {"op": "close"}],
        url=gw.mcp, extra=["--elicit-content", json.dumps(APPROVE)])))
    t.start()
    [item] = gw.wait_pending()
    assert item["rule"] == "on_tool_change" and "via" not in item, item
    assert gw.decide(item["id"], "approve").status_code == 200
    t.join(30)
    step = the_call(done["r"])
    assert step["elicitation"] == 0 and text_of(step["result"]) == "sent 3 to eve", step


def test_the_user_cannot_approve_a_call_whose_tool_changed_while_it_was_held(procs):
    from test_power import LIST, PULL, drive, gateway as power_gateway, policy as power_policy
    gw = power_gateway(procs, power_policy("deny", transfer={
        "action": "require_approval", "approval": {"timeout": 60, "via": ["agent_user"]}}))
    drive(gw, LIST)
    held = RawHeld(gw, {"to": "eve", "amount": 9}, tool="transfer")
    held.start()
    held.question
    drive(gw, PULL, LIST)  # the server changes the tool while the call waits
    assert held.reply({"action": "accept", "content": APPROVE}).status_code == 202
    answer = held.answer()
    assert answer["result"]["isError"] is True, answer
    assert "changed after this call was held" in text_of(answer["result"]), answer
    [row] = [r for r in outcome_rows(gw, tool="transfer") if r["decision"] != "tool.changed"]
    assert (row["decision"], row["channel"]) == ("denied_by_human", "elicitation"), row


# ----------------------------------------------------------------------------- stateless era


@pytest.mark.parametrize("action,ran", [("accept", True), ("decline", False)])
def test_python_sdk_stateless_era_answers_by_input_required(procs, action, ran):
    gw = start_gateway(procs, policy(["agent_user"]))
    report = run_pydriver("2026-07-28", call_script(id="s1"), url=gw.mcp, name="py-modern",
                          extra=["--elicit-content", json.dumps(APPROVE), "--elicit-action", action])
    assert report["era"] == "modern", report
    step = the_call(report)
    assert step["elicitation"] == 1, report
    result = step["result"]
    if ran:
        assert text_of(result) == "deleted s1" and not result.get("isError"), result
    else:
        assert result["isError"] is True and "declined" in text_of(result), result
    [row] = outcome_rows(gw)
    assert row["channel"] == "elicitation" and row["decider"] == "agent_user:py-modern/1.0.0", row
    assert row["decision"] == ("approved" if ran else "denied_by_human"), row


@pytest.mark.parametrize("action,ran", [("accept", True), ("cancel", False)])
def test_typescript_sdk2_stateless_era_answers_by_input_required(procs, action, ran):
    gw = start_gateway(procs, policy(["approvers", "agent_user"]))
    report = run_driver("client2", call_script(id="t1"), url=gw.mcp, era="2026-07-28",
                        extra=["--elicit-action", action, "--elicit-content", json.dumps(APPROVE), "--name", "ts2"])
    step = the_call(report)
    assert step["elicitation"] == 1, report
    result = step["result"]
    if ran:
        assert text_of(result) == "deleted t1" and not result.get("isError"), result
    else:
        assert result["isError"] is True and "dismissed" in text_of(result), result
    [row] = outcome_rows(gw)
    assert row["channel"] == "elicitation" and row["decider"].startswith("agent_user:ts2"), row
    assert row["decision"] == ("approved" if ran else "denied_by_human"), row


def stateless_call(c, gw, req_id, args, *, caps=None, state=None, responses=None) -> dict:
    meta = rm.stateless_meta()
    meta["io.modelcontextprotocol/clientCapabilities"] = {"elicitation": {}} if caps is None else caps
    body = rm.call_body(req_id, "delete_record", args, meta)
    if state:
        body["params"]["requestState"] = state
    if responses is not None:
        body["params"]["inputResponses"] = responses
    r = rm.post(c, gw.mcp, body, rm.stateless_headers("tools/call", "delete_record"), timeout=20)
    return rm.answer(r, req_id)


def test_stateless_retry_is_bound_to_its_call_and_races_an_approver_once(procs):
    gw = start_gateway(procs, policy(["approvers", "agent_user"]))
    with rm.client() as c:
        first = stateless_call(c, gw, 1, {"id": "s2"})["result"]
        assert first["resultType"] == "input_required", first
        state = first["requestState"]
        question = first["inputRequests"]["airlock_approval"]
        assert question["method"] == "elicitation/create" and "`delete_record`" in question["params"]["message"]
        # The state only works for the same call: other arguments are refused, the hold stays.
        wrong = stateless_call(c, gw, 2, {"id": "other"}, state=state,
                               responses={"airlock_approval": {"action": "accept", "content": APPROVE}})
        assert wrong["error"]["code"] == -32602 and "another call" in wrong["error"]["message"], wrong
        # A retry without the answer is asked again.
        again = stateless_call(c, gw, 3, {"id": "s2"}, state=state, responses={})
        assert again["result"]["resultType"] == "input_required", again
        # An approver denies first; the user's approval then gets the approver's outcome.
        [item] = gw.pending()
        assert gw.decide(item["id"], "deny", comment="no").status_code == 200
        late = stateless_call(c, gw, 4, {"id": "s2"}, state=state,
                              responses={"airlock_approval": {"action": "accept", "content": APPROVE}})
        assert late["result"]["isError"] is True and "alice denied" in text_of(late["result"]), late
        rows = outcome_rows(gw)
        assert [(r["decision"], r["channel"]) for r in rows] == [("denied_by_human", "api")], rows
        # Used up: the same state again names nothing.
        used = stateless_call(c, gw, 5, {"id": "s2"}, state=state,
                              responses={"airlock_approval": {"action": "accept", "content": APPROVE}})
        assert used["error"]["code"] == -32602, used
        # A state Airlock never handed out is refused, never forwarded.
        forged = stateless_call(c, gw, 6, {"id": "s2"}, state="airlock-elicit:forged",
                                responses={"airlock_approval": {"action": "accept", "content": APPROVE}})
        assert forged["error"]["code"] == -32602, forged


def test_stateless_client_without_the_capability_is_refused_when_only_the_user_may_approve(procs):
    gw = start_gateway(procs, policy(["agent_user"]))
    with rm.client() as c:
        answer = stateless_call(c, gw, 1, {"id": "s3"}, caps={"sampling": {}})
    assert answer["result"]["isError"] is True and "elicitation capability" in text_of(answer["result"]), answer
    assert gw.pending() == []


# ----------------------------------------------------------------------------- airlock check


@pytest.mark.parametrize("approval,needle", [
    ({"via": ["agent_users"]}, "unknown value `agent_users`"),
    ({"via": []}, "approval.via is empty"),
    ({"via": ["approvers", "approvers"]}, "lists `approvers` twice"),
    ({"via": ["agent_user"], "approvers": 2}, "cannot be combined with approval.approvers > 1"),
    ({"via": ["approvers", "agent_user"], "approvers": 2}, "cannot be combined with approval.approvers > 1"),
    ({"via": ["agent_user"], "groups": ["finance"]}, "approval.groups has no one to apply to"),
])
def test_check_rejects_via_values_that_make_no_sense_with_line_and_column(tmp_path, approval, needle):
    text = ('{\n  "version": "1",\n  "rules": {\n    "delete_*": {\n      "action": "require_approval",\n'
            f'      "approval": {json.dumps(approval)}\n    }}\n  }}\n}}\n')
    p = tmp_path / "via.json"
    p.write_text(text)
    done = rm.run_check(p)
    assert done.returncode == 1, done.stdout
    import re
    m = re.search(re.escape(str(p)) + r":(\d+):(\d+): (.*)", done.stderr)
    assert m, done.stderr
    assert int(m.group(1)) == 6, done.stderr
    assert needle in m.group(3) and "rules.delete_*.approval" in m.group(3), m.group(3)
    if "agent_users" in needle:
        assert "did you mean `agent_user`" in m.group(3), m.group(3)


def test_check_accepts_the_documented_via_values(tmp_path):
    for via in (["approvers"], ["agent_user"], ["approvers", "agent_user"], ["agent_user", "approvers"]):
        p = write_json(tmp_path / "ok.json", policy(via))
        done = rm.run_check(p)
        assert done.returncode == 0, done.stderr
