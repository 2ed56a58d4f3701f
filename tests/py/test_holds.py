"""The approval hold end to end: a `require_approval` call is held, a human
decides over the HTTP API, and the held JSON-RPC request resumes or is
refused — against the real binary, the project's test server as upstream,
and official SDK clients where the behaviour is theirs to see.

Gateways run in config mode with `[approval] progress_interval = 0.5`, so
progress arrives twice a second and the tests stay quick.
"""
from __future__ import annotations

import hashlib
import json
import random
import subprocess
import threading
import time
from datetime import datetime

import anyio
import httpx
import pytest

import rawmcp as rm
from harness import run_driver, text_of
from harness import AIRLOCK_BIN, free_port
from holdkit import (ALICE, BOB, HOLD_POLICY, TOKENS_ENV, Gateway, HeldCall, WebSocket, run_cli, start_gateway,
                     timeout_policy, write_config)


def created_at(item: dict) -> float:
    return datetime.fromisoformat(item["created_at"].replace("Z", "+00:00")).timestamp()


def expires_at(item: dict) -> float:
    return datetime.fromisoformat(item["expires_at"].replace("Z", "+00:00")).timestamp()


# --- approve -------------------------------------------------------------------

def test_python_sdk_client_gets_the_upstream_result_after_approval_with_progress(procs):
    """Official Python `mcp` 2.x Client, handshake era over HTTP, progress callback,
    60 s client timeout; a human approves after ~5 s."""
    from mcp import Client

    gw = start_gateway(procs)
    progress: list[tuple[float, str | None]] = []
    decided: dict = {}

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, message))

    async def approver():
        async with httpx.AsyncClient(base_url=gw.base, headers={"Authorization": f"Bearer {ALICE}"}) as c:
            started = time.monotonic()
            while True:
                items = (await c.get("/api/pending")).json()["pending"]
                if items:
                    break
                assert time.monotonic() - started < 15, "call was never held"
                await anyio.sleep(0.05)
            decided["item"] = items[0]
            await anyio.sleep(5.0)
            r = await c.post(f"/api/pending/{items[0]['id']}/approve", json={"comment": "ok, go"})
            decided["response"] = r

    async def main():
        async with Client(gw.mcp, mode="legacy", read_timeout_seconds=60) as client:
            assert client.protocol_version == "2025-11-25"
            async with anyio.create_task_group() as tg:
                tg.start_soon(approver)
                started = time.monotonic()
                result = await client.call_tool("delete_record", {"id": "42"}, progress_callback=on_progress,
                                                read_timeout_seconds=60)
                return result, time.monotonic() - started

    result, elapsed = anyio.run(main)
    assert decided["response"].status_code == 200, decided["response"].text
    assert decided["response"].json()["decider"] == "alice"
    assert result.is_error is False or result.is_error is None
    assert [c.text for c in result.content] == ["deleted 42"]
    assert elapsed >= 5.0
    # 0.5 s interval over a ~5 s hold.
    assert len(progress) >= 6, progress
    assert all(m and m.startswith("waiting for human approval") for _, m in progress), progress
    assert [v for v, _ in progress] == sorted(v for v, _ in progress), "progress must increase"
    item = decided["item"]
    assert (item["tool"], item["upstream"], item["arguments"], item["rule"], item["reason"]) == (
        "delete_record", "test", {"id": "42"}, "delete_*", "destructive")
    # The approval is bound to these exact arguments.
    rows = gw.audit_rows(pending_id=item["id"])
    assert [r["decision"] for r in rows] == ["approval_requested", "approved"]
    canonical = json.dumps({"id": "42"}, separators=(",", ":"), sort_keys=True)
    assert rows[0]["args_hash"] == hashlib.sha256(canonical.encode()).hexdigest()
    assert rows[1]["decider"] == "alice" and rows[1]["comment"] == "ok, go" and rows[1]["channel"] == "api"
    assert rows[1]["wait_ms"] >= 4900


def test_stateless_era_python_sdk_client_gets_the_result_after_approval(procs):
    """The same SDK pinned to 2026-07-28 (no handshake, no session): the held call is
    answered on its POST's stream, with progress while it waits."""
    from mcp import Client

    gw = start_gateway(procs)
    progress: list[str | None] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(message)

    async def approver():
        async with httpx.AsyncClient(base_url=gw.base, headers={"Authorization": f"Bearer {ALICE}"}) as c:
            while not (items := (await c.get("/api/pending")).json()["pending"]):
                await anyio.sleep(0.05)
            assert items[0]["agent"].startswith("mcp")  # clientInfo names the agent
            await anyio.sleep(1.6)
            assert (await c.post(f"/api/pending/{items[0]['id']}/approve", json={})).status_code == 200

    async def main():
        async with Client(gw.mcp, mode="2026-07-28", read_timeout_seconds=30) as client:
            async with anyio.create_task_group() as tg:
                tg.start_soon(approver)
                return await client.call_tool("delete_record", {"id": "m1"}, progress_callback=on_progress)

    result = anyio.run(main)
    assert [c.text for c in result.content] == ["deleted m1"] and not result.is_error
    assert len(progress) >= 2 and all(m.startswith("waiting for human approval") for m in progress), progress


def test_progress_keeps_a_client_alive_past_its_own_timeout(procs):
    """The Python 2.x SDK's per-request timeout is absolute (not reset by progress),
    so this runs on the TypeScript SDK 1.x: a 3 s timeout with resetTimeoutOnProgress
    survives a 5 s hold; the same call without the reset times out (and its
    SDK's notifications/cancelled withdraws that hold)."""
    gw = start_gateway(procs)
    script = [
        {"op": "parallel", "steps": [
            {"op": "call", "name": "delete_record", "args": {"id": "kept"}, "progress": True,
             "timeoutMs": 3000, "resetTimeoutOnProgress": True, "label": "kept"},
            {"op": "call", "name": "delete_record", "args": {"id": "plain"}, "progress": True,
             "timeoutMs": 3000, "label": "plain"},
        ]},
        {"op": "close"},
    ]
    report: dict = {}
    t = threading.Thread(target=lambda: report.update(run_driver("sdk1", script, url=gw.mcp, timeout=60)), daemon=True)
    t.start()
    held = gw.wait_pending(2)
    by_id = {p["arguments"]["id"]: p for p in held}
    # The client without the reset gives up at 3 s and cancels its request.
    gw.wait_gone(by_id["plain"]["id"], timeout=8)
    assert [r["decision"] for r in gw.decision_rows(by_id["plain"]["id"])] == ["cancelled"]
    time.sleep(max(0.0, created_at(by_id["kept"]) + 5.0 - time.time()))
    r = gw.decide(by_id["kept"]["id"], "approve")
    assert r.status_code == 200, r.text
    t.join(30)
    assert report.get("_exit") == 0, report
    steps = {s["label"]: s for s in report["steps"][0]["steps"]}
    kept, plain = steps["kept"], steps["plain"]
    assert kept["ok"], kept
    assert text_of(kept["result"]) == "deleted kept"
    assert kept["elapsedMs"] >= 5000 > 3000
    assert kept["progress"] >= 8
    assert all(e["message"].startswith("waiting for human approval") for e in kept["progressEvents"])
    assert plain["ok"] is False and plain["error"]["kind"] == "timeout", plain
    assert plain["elapsedMs"] < 4500


# --- deny and timeout ------------------------------------------------------------

def test_deny_with_comment_returns_is_error_naming_approver_and_comment(procs):
    gw = start_gateway(procs)
    call = HeldCall(gw.mcp, "delete_record", {"id": "7"})
    call.start()
    [item] = gw.wait_pending(1)
    one = gw.api("GET", f"/api/pending/{item['id']}").json()
    assert one["status"] == "pending" and one["pending"] == item
    r = gw.decide(item["id"], "deny", token=BOB, comment="not on a Friday")
    assert r.status_code == 200, r.text
    assert r.json()["decision"] == "denied" and r.json()["decider"] == "bob"
    one = gw.api("GET", f"/api/pending/{item['id']}").json()
    assert one["status"] == "decided" and one["resolution"]["decider"] == "bob", one
    result = call.result()
    assert result["isError"] is True
    text = text_of(result)
    assert "bob" in text and "not on a Friday" in text and "delete_record" in text, text
    assert result["_meta"]["airlock.decision"] == "approval_denied"
    [row] = gw.decision_rows(item["id"])
    assert (row["decision"], row["decider"], row["comment"]) == ("denied_by_human", "bob", "not on a Friday")


def test_timeout_with_on_timeout_deny_refuses_and_says_after_how_long(procs):
    gw = start_gateway(procs, timeout_policy(1, "deny"))
    call = HeldCall(gw.mcp, "delete_record", {"id": "9"})
    started = time.monotonic()
    call.start()
    [item] = gw.wait_pending(1)
    assert 0.9 <= expires_at(item) - created_at(item) <= 1.1
    result = call.result(10)
    assert call.finished_at - started >= 1.0
    text = text_of(result)
    assert result["isError"] is True
    assert "timed out" in text and "1 s" in text, text
    assert result["_meta"]["airlock.decision"] == "approval_timed_out"
    [row] = gw.decision_rows(item["id"])
    assert row["decision"] == "timed_out" and row["channel"] == "timeout" and row["decider"] is None
    late = gw.decide(item["id"], "approve")
    assert late.status_code == 409 and "timed out" in late.json()["error"]["message"], late.text


def test_timeout_with_on_timeout_allow_lets_the_call_through(procs):
    gw = start_gateway(procs, timeout_policy(1, "allow"))
    call = HeldCall(gw.mcp, "delete_record", {"id": "11"})
    call.start()
    [item] = gw.wait_pending(1)
    result = call.result(10)
    assert text_of(result) == "deleted 11" and not result.get("isError"), result
    [row] = gw.decision_rows(item["id"])
    assert row["decision"] == "timed_out"


# --- cancel ------------------------------------------------------------------------

def test_notifications_cancelled_withdraws_the_hold(procs):
    gw = start_gateway(procs)
    ws = WebSocket(gw.port, {"Authorization": f"Bearer {ALICE}"})
    assert ws.status == 101 and ws.recv()["type"] == "snapshot"
    with rm.client() as c:
        sid = rm.open_session(c, gw.mcp)
        call = HeldCall(gw.mcp, "delete_record", {"id": "5"}, req_id=77, session=sid)
        call.start()
        [item] = gw.wait_pending(1)
        r = rm.post(c, gw.mcp, {"jsonrpc": "2.0", "method": "notifications/cancelled",
                                "params": {"requestId": 77, "reason": "user pressed stop"}},
                    rm.session_headers(sid))
        assert r.status_code == 202, r.text
        gw.wait_gone(item["id"])
        call.join(10)
        assert not call.is_alive(), "the held stream stayed open after the cancel"
        assert call.answer is None, call.answer  # a cancelled request gets no response
    event, _ = ws.recv_until(lambda e: e["type"] == "pending.resolved" and e["id"] == item["id"])
    assert event["decision"] == "cancelled"
    ws.close()
    [row] = gw.decision_rows(item["id"])
    assert row["decision"] == "cancelled" and row["channel"] == "agent"
    late = gw.decide(item["id"], "approve")
    assert late.status_code == 409 and "cancelled" in late.json()["error"]["message"]


@pytest.mark.parametrize("progress", [False, True], ids=["silent", "with-progress"])
def test_closing_the_connection_withdraws_the_hold(procs, progress):
    gw = start_gateway(procs)
    ws = WebSocket(gw.port, {"Authorization": f"Bearer {ALICE}"})
    assert ws.recv()["type"] == "snapshot"
    body = rm.call_body(3, "delete_record", {"id": "8"},
                        {**rm.stateless_meta(), **({"progressToken": "p-8"} if progress else {})})
    headers = {"Content-Type": "application/json", "Accept": rm.ACCEPT,
               **rm.stateless_headers("tools/call", "delete_record")}
    with httpx.Client(timeout=10) as c:
        with c.stream("POST", gw.mcp, content=json.dumps(body), headers=headers) as r:
            assert r.status_code == 200
            [item] = gw.wait_pending(1)
            if progress:
                first = next(r.iter_lines())
                assert first  # the stream is live
    # The response (and its connection) is closed without reading the answer.
    gw.wait_gone(item["id"], timeout=10)
    event, _ = ws.recv_until(lambda e: e["type"] == "pending.resolved" and e["id"] == item["id"])
    assert event["decision"] == "cancelled"
    ws.close()
    [row] = gw.decision_rows(item["id"])
    assert row["decision"] == "cancelled"


def test_deleting_the_session_withdraws_its_holds(procs):
    gw = start_gateway(procs)
    with rm.client() as c:
        sid = rm.open_session(c, gw.mcp)
        call = HeldCall(gw.mcp, "delete_record", {"id": "6"}, req_id=5, session=sid)
        call.start()
        [item] = gw.wait_pending(1)
        r = c.delete(gw.mcp, headers=rm.session_headers(sid))
        assert r.status_code in (200, 202, 204), r.text
    gw.wait_gone(item["id"])
    [row] = gw.decision_rows(item["id"])
    assert row["decision"] == "cancelled"
    call.join(10)
    assert not call.is_alive()


def test_stdio_client_exiting_withdraws_the_hold(procs):
    port = free_port()
    config = write_config(procs.tmp_path, HOLD_POLICY, name="stdio")
    audit = procs.tmp_path / "stdio-audit.db"
    proc = procs.start([AIRLOCK_BIN, "stdio", "--config", config, "--listen", f"127.0.0.1:{port}", "--audit", audit],
                       env=TOKENS_ENV, stdin=subprocess.PIPE)
    def send(m):
        proc.popen.stdin.write((json.dumps(m) + "\n").encode())
        proc.popen.stdin.flush()
    send(rm.init_body(1))
    assert json.loads(proc.lines.get(timeout=15))["id"] == 1
    send({"jsonrpc": "2.0", "method": "notifications/initialized"})
    send(rm.call_body(2, "delete_record", {"id": "stdio-1"}))
    api = Gateway(proc, port, audit, config)
    [item] = api.wait_pending(1)
    proc.popen.stdin.close()
    assert proc.popen.wait(15) == 0
    rows = [json.loads(line) for line in run_cli("audit", "export", "--audit", audit).stdout.splitlines()]
    decisions = [r["decision"] for r in rows if r["pending_id"] == item["id"]]
    assert decisions == ["approval_requested", "cancelled"], decisions


# --- races ---------------------------------------------------------------------------

def test_two_approvers_at_once_exactly_one_wins(procs):
    gw = start_gateway(procs)
    calls = [HeldCall(gw.mcp, "delete_record", {"id": f"race-{i}"}) for i in range(6)]
    for c in calls:
        c.start()
    items = {p["arguments"]["id"]: p for p in gw.wait_pending(6)}
    for i, call in enumerate(calls):
        item = items[f"race-{i}"]
        barrier = threading.Barrier(2)
        answers: dict[str, httpx.Response] = {}

        def act(who, token, action):
            with httpx.Client(base_url=gw.base, timeout=10) as c:
                barrier.wait()
                answers[who] = c.post(f"/api/pending/{item['id']}/{action}", json={"comment": who},
                                      headers={"Authorization": f"Bearer {token}"})

        # Alternate which approver tries which decision.
        threads = [threading.Thread(target=act, args=("alice", ALICE, "approve" if i % 2 else "deny")),
                   threading.Thread(target=act, args=("bob", BOB, "deny" if i % 2 else "approve"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        statuses = sorted(r.status_code for r in answers.values())
        assert statuses == [200, 409], {k: (v.status_code, v.text) for k, v in answers.items()}
        winner = next(k for k, v in answers.items() if v.status_code == 200)
        loser = answers["bob" if winner == "alice" else "alice"].json()["error"]
        assert loser["code"] == "already_decided" and loser["decided_by"] == winner
        assert winner in loser["message"], loser
        decision = answers[winner].json()["decision"]
        result = call.result()
        if decision == "approved":
            assert text_of(result) == f"deleted race-{i}"
        else:
            assert result["isError"] is True and winner in text_of(result)
        rows = gw.decision_rows(item["id"])
        assert len(rows) == 1 and rows[0]["decider"] == winner, rows


def test_approver_racing_the_timeout_exactly_one_wins(procs):
    gw = start_gateway(procs, timeout_policy(2, "deny"))
    n = 10
    calls = [HeldCall(gw.mcp, "delete_record", {"id": f"t-{i}"}) for i in range(n)]
    for c in calls:
        c.start()
    items = {p["arguments"]["id"]: p for p in gw.wait_pending(n, timeout=1.8)}
    answers: dict[int, httpx.Response] = {}

    def approve_at(i: int, at: float):
        with httpx.Client(base_url=gw.base, timeout=10) as c:
            time.sleep(max(0.0, at - time.time()))
            answers[i] = c.post(f"/api/pending/{items[f't-{i}']['id']}/approve",
                                headers={"Authorization": f"Bearer {ALICE}"})

    # Approvals land from 50 ms before to 50 ms after each hold's expiry.
    threads = [threading.Thread(target=approve_at, args=(i, expires_at(items[f"t-{i}"]) - 0.05 + 0.1 * i / (n - 1)))
               for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    outcomes = []
    for i, call in enumerate(calls):
        r, result = answers[i], call.result(10)
        rows = gw.decision_rows(items[f"t-{i}"]["id"])
        assert len(rows) == 1, rows
        if r.status_code == 200:
            assert rows[0]["decision"] == "approved" and text_of(result) == f"deleted t-{i}"
            outcomes.append("approver")
        else:
            assert r.status_code == 409, r.text
            err = r.json()["error"]
            assert err["decision"] == "timed_out" and err["decided_by"] is None and "timed out" in err["message"]
            assert rows[0]["decision"] == "timed_out" and result["isError"] is True
            outcomes.append("timeout")
    print("approver vs timeout:", outcomes)


def test_hundred_concurrent_holds_decided_in_random_order_reach_their_callers(procs):
    gw = start_gateway(procs)
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    n = 100
    calls = [HeldCall(gw.mcp, "delete_record", {"id": f"rec-{i}"}, req_id=1000 + i) for i in range(n)]
    for c in calls:
        c.start()
    items = gw.wait_pending(n, timeout=30)
    assert len({p["id"] for p in items}) == n
    order = items[:]
    rng.shuffle(order)
    plan = {p["arguments"]["id"]: ("approve" if rng.random() < 0.5 else "deny") for p in order}
    with httpx.Client(base_url=gw.base, timeout=10, headers={"Authorization": f"Bearer {ALICE}"}) as c:
        for p in order:
            rid = p["arguments"]["id"]
            r = c.post(f"/api/pending/{p['id']}/{plan[rid]}", json={"comment": f"verdict for {rid}"})
            assert r.status_code == 200, (seed, r.text)
    for i, call in enumerate(calls):
        rid = f"rec-{i}"
        result = call.result(30)
        if plan[rid] == "approve":
            assert text_of(result) == f"deleted {rid}" and not result.get("isError"), (seed, rid, result)
        else:
            assert result["isError"] is True and f"verdict for {rid}" in text_of(result), (seed, rid, result)
    assert gw.pending() == []
    rows = [r for r in gw.audit_rows(tool="delete_record") if r["decision"] in ("approved", "denied_by_human")]
    assert len(rows) == n and len({r["pending_id"] for r in rows}) == n


def test_progress_interval_below_50_ms_is_rejected_naming_the_key(procs):
    config = write_config(procs.tmp_path, HOLD_POLICY, progress=0.01, name="too-fast")
    checked = run_cli("check", config, env=TOKENS_ENV)
    assert checked.returncode != 0
    assert "progress_interval" in checked.stderr and "too-fast.toml:" in checked.stderr, checked.stderr
    ok = run_cli("check", write_config(procs.tmp_path, HOLD_POLICY, progress=0.05, name="fast"), env=TOKENS_ENV)
    assert ok.returncode == 0, ok.stderr
