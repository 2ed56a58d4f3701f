"""Several Airlock replicas on one real PostgreSQL (`[store] url`), end to end.

Each test starts a throwaway PostgreSQL (`pg` fixture: `initdb` + `pg_ctl`
from the system's binaries) and two or three `airlock serve` processes on it,
then drives them with the official Python SDK client (`mcp` 2.x) and raw
HTTP: a call held on replica A is seen and decided on replica B; approvers
racing through A and B get one 200 and one 409; a timeout fires once; a
SIGKILLed replica's holds are recorded `abandoned` by a survivor within the
lease; a thousand holds over two replicas are all decided through one, and
`airlock audit verify --store` passes over the one shared chain afterwards.
"""
from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import anyio
import httpx

from harness import text_of
from holdkit import ALICE, BOB, HeldCall, WebSocket, run_cli, timeout_policy
from pgcluster import pg  # noqa: F401  (the fixture)
from replicakit import start_replica


def decisions(gw, pending_id: str) -> list[dict]:
    """The outcome rows of one hold in the shared chain (any replica's API shows all)."""
    return gw.decision_rows(pending_id)


def wait_rows(gw, pending_id: str, n: int = 1, timeout: float = 10.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        rows = decisions(gw, pending_id)
        if len(rows) >= n or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


# --- (a) held on A, seen and approved on B ------------------------------------------------------

def test_call_held_on_a_is_listed_and_pushed_on_b_and_approved_through_b_releases_it_on_a(procs, pg):
    from mcp import Client

    a = start_replica(procs, pg.url(), "a")
    b = start_replica(procs, pg.url(), "b")
    bearer = {"Authorization": f"Bearer {ALICE}"}
    early = WebSocket(b.port, bearer)  # connected before the hold: gets the event
    assert early.status == 101 and early.recv()["type"] == "snapshot"
    seen: dict = {}

    async def approver_on_b():
        async with httpx.AsyncClient(base_url=b.base, headers=bearer, timeout=10) as c:
            started = time.monotonic()
            while not (items := (await c.get("/api/pending")).json()["pending"]):
                assert time.monotonic() - started < 15, "the hold on A never showed on B"
                await anyio.sleep(0.05)
            seen["item"] = items[0]
            # A websocket opened now gets it in its snapshot.
            late = WebSocket(b.port, bearer)
            seen["snapshot"] = late.recv()
            late.close()
            r = await c.post(f"/api/pending/{items[0]['id']}/approve", json={"comment": "fine from B"})
            seen["response"] = r

    async def main():
        async with Client(a.mcp, mode="2026-07-28", read_timeout_seconds=30) as client:
            async with anyio.create_task_group() as tg:
                tg.start_soon(approver_on_b)
                return await client.call_tool("delete_record", {"id": "on-a"})

    result = anyio.run(main)
    assert [c.text for c in result.content] == ["deleted on-a"] and not result.is_error
    item = seen["item"]
    assert (item["tool"], item["upstream"], item["arguments"], item["rule"]) == (
        "delete_record", "test", {"id": "on-a"}, "delete_*")
    assert item["agent"].startswith("mcp"), item
    snap = seen["snapshot"]
    assert snap["type"] == "snapshot" and [p["id"] for p in snap["pending"]] == [item["id"]], snap
    r = seen["response"]
    assert r.status_code == 200, r.text
    assert r.json()["decider"] == "alice" and r.json()["decision"] == "approved"
    created, _ = early.recv_until(lambda e: e["type"] == "pending.created")
    assert created["pending"]["id"] == item["id"]
    resolved, _ = early.recv_until(lambda e: e["type"] == "pending.resolved")
    assert (resolved["id"], resolved["decision"], resolved["decider"]) == (item["id"], "approved", "alice")
    early.close()
    # Recorded once, by A (the owner), in the shared chain; B's history shows it.
    rows = b.audit_rows(pending_id=item["id"])
    assert [r["decision"] for r in rows] == ["approval_requested", "approved"], rows
    assert rows[1]["comment"] == "fine from B" and rows[1]["channel"] == "api"
    assert a.pending() == [] and b.pending() == []
    assert a.metrics()["airlock_store_healthy"] == 1 and b.metrics()["airlock_store_healthy"] == 1


# --- (b) racing approvers on A and B --------------------------------------------------------------

def test_approvers_racing_through_a_and_b_get_one_200_and_one_409_naming_the_winner(procs, pg):
    a = start_replica(procs, pg.url(), "a")
    b = start_replica(procs, pg.url(), "b")
    n = 8
    # Half the holds on each replica; every one raced by alice on A and bob on B.
    calls = [HeldCall((a if i % 2 else b).mcp, "delete_record", {"id": f"race-{i}"}) for i in range(n)]
    for c in calls:
        c.start()
    items = b.wait_pending(n)
    assert len(a.wait_pending(n)) == n
    outcomes: dict[str, dict] = {}

    def race(item):
        barrier = threading.Barrier(2)
        got = {}

        def act(who, gw, token, action):
            barrier.wait()
            got[who] = gw.decide(item["id"], action, token=token, comment=f"{who} says {action}")

        ts = [threading.Thread(target=act, args=("alice", a, ALICE, "approve")),
              threading.Thread(target=act, args=("bob", b, BOB, "deny"))]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        outcomes[item["arguments"]["id"]] = got

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(race, items))
    for call in calls:
        rid = call.arguments["id"]
        got = outcomes[rid]
        codes = sorted(r.status_code for r in got.values())
        assert codes == [200, 409], (rid, {k: (v.status_code, v.text) for k, v in got.items()})
        winner = next(k for k, v in got.items() if v.status_code == 200)
        loser = next(v for v in got.values() if v.status_code == 409)
        error = loser.json()["error"]
        assert error["code"] == "already_decided" and error["decided_by"] == winner, loser.text
        assert winner in error["message"], loser.text
        result = call.result(20)
        if winner == "alice":
            assert text_of(result) == f"deleted {rid}" and not result.get("isError"), result
        else:
            assert result["isError"] and "bob" in text_of(result), result
    for item in items:
        rows = wait_rows(a, item["id"])
        assert len(rows) == 1, rows
        assert rows[0]["decision"] in ("approved", "denied_by_human")
    time.sleep(0.5)  # nothing more arrives late
    assert all(len(decisions(a, item["id"])) == 1 for item in items)


# --- (c) a timeout fires once ------------------------------------------------------------------

def test_timeout_fires_once_with_both_replicas_alive(procs, pg):
    policy = timeout_policy(2, "deny")
    a = start_replica(procs, pg.url(), "a", policy)
    b = start_replica(procs, pg.url(), "b", policy)
    calls = [HeldCall(gw.mcp, "delete_record", {"id": f"late-{name}"})
             for name, gw in (("a", a), ("b", b))]
    for c in calls:
        c.start()
    items = a.wait_pending(2)
    for call in calls:
        result = call.result(15)
        assert result["isError"] and "timed out" in text_of(result), result
    time.sleep(1.5)  # both replicas' timers and lease sweeps have had their chance
    for item in items:
        rows = decisions(b, item["id"])
        assert [r["decision"] for r in rows] == ["timed_out"], rows
    assert a.pending() == [] and b.pending() == []


# --- (d) SIGKILL of A mid-hold ------------------------------------------------------------------

def test_sigkill_of_a_mid_hold_is_recorded_abandoned_once_by_a_survivor_within_the_lease(procs, pg):
    heartbeat, lease = 0.3, 1.5
    a = start_replica(procs, pg.url(), "a", heartbeat=heartbeat, lease=lease)
    b = start_replica(procs, pg.url(), "b", heartbeat=heartbeat, lease=lease)
    c = start_replica(procs, pg.url(), "c", heartbeat=heartbeat, lease=lease)
    calls = [HeldCall(a.mcp, "delete_record", {"id": f"doomed-{i}"}) for i in range(3)]
    survivor_call = HeldCall(b.mcp, "delete_record", {"id": "lives"})
    for call in [*calls, survivor_call]:
        call.start()
    items = c.wait_pending(4)
    doomed = [p for p in items if p["arguments"]["id"].startswith("doomed")]
    assert len(doomed) == 3
    ws = WebSocket(b.port, {"Authorization": f"Bearer {ALICE}"})
    assert ws.recv()["type"] == "snapshot"
    killed_at = time.monotonic()
    a.proc.stop(signal.SIGKILL)
    # The agents' connections drop with A.
    for call in calls:
        call.join(10)
        assert not call.is_alive() and call.answer is None, (call.status, call.messages)
    bound = lease + 2 * heartbeat + 3.0  # the lease, a sweep tick, and a loaded machine's slack
    for p in doomed:
        rows = wait_rows(b, p["id"], timeout=bound + 2)
        assert rows and rows[0]["decision"] == "abandoned", rows
    elapsed = time.monotonic() - killed_at
    assert elapsed < bound, f"abandoned after {elapsed:.1f}s, lease {lease}s"
    # Dashboards on survivors drop them.
    resolved = set()
    while len(resolved) < 3:
        event, _ = ws.recv_until(lambda e: e["type"] == "pending.resolved", timeout=5)
        if event["decision"] == "abandoned":
            resolved.add(event["id"])
    assert resolved == {p["id"] for p in doomed}
    ws.close()
    assert [p["arguments"]["id"] for p in b.pending()] == ["lives"]
    time.sleep(lease)  # both survivors kept sweeping: still one row each
    for p in doomed:
        rows = decisions(c, p["id"])
        assert len(rows) == 1 and rows[0]["channel"] == "lease", rows
    # The survivors still work.
    survivor = [p for p in items if p["arguments"]["id"] == "lives"][0]
    assert c.decide(survivor["id"], "approve").status_code == 200
    assert text_of(survivor_call.result(10)) == "deleted lives"


def test_a_decision_taken_after_the_owner_died_is_recorded_once_as_abandoned_naming_it(procs, pg):
    """Between A's death and the end of its lease the store cannot tell A from a slow replica: a
    decision taken through B then is accepted, but A will never record or release it. The sweep
    hands it over: one `abandoned` row, naming the decision; nothing was released."""
    heartbeat, lease = 0.3, 2.0
    a = start_replica(procs, pg.url(), "a", heartbeat=heartbeat, lease=lease)
    b = start_replica(procs, pg.url(), "b", heartbeat=heartbeat, lease=lease)
    call = HeldCall(a.mcp, "delete_record", {"id": "too-late"})
    call.start()
    item = b.wait_pending(1)[0]
    a.proc.stop(signal.SIGKILL)
    r = b.decide(item["id"], "approve", comment="go")
    assert r.status_code == 200, r.text
    rows = wait_rows(b, item["id"], timeout=lease + 5)
    assert [(e["decision"], e["decider"], e["channel"]) for e in rows] == [("abandoned", "alice", "lease")], rows
    assert "approved by alice" in rows[0]["reason"] and "nothing was released" in rows[0]["reason"], rows
    time.sleep(lease)
    assert len(decisions(b, item["id"])) == 1


def test_a_replica_restarted_under_its_name_records_what_its_earlier_run_left_open(procs, pg):
    """SIGKILL then an immediate restart with the same `[store] replica`: its lease never lapses,
    so no survivor abandons its holds; the restarted replica does, once, at start."""
    a = start_replica(procs, pg.url(), "a", heartbeat=0.3, lease=5.0)
    b = start_replica(procs, pg.url(), "b", heartbeat=0.3, lease=5.0)
    calls = [HeldCall(a.mcp, "delete_record", {"id": f"left-{i}"}) for i in range(2)]
    for call in calls:
        call.start()
    items = b.wait_pending(2)
    a.proc.stop(signal.SIGKILL)
    again = start_replica(procs, pg.url(), "a", heartbeat=0.3, lease=5.0)
    for item in items:
        rows = wait_rows(again, item["id"], timeout=5)
        assert [(e["decision"], e["channel"]) for e in rows] == [("abandoned", "restart")], rows
    assert b.pending() == [] and again.pending() == []
    time.sleep(6)  # a full lease: nobody records them again
    assert all(len(decisions(b, item["id"])) == 1 for item in items)


# --- (e) a thousand holds over two replicas -----------------------------------------------------

def test_a_thousand_holds_over_two_replicas_decided_through_one_then_the_shared_chain_verifies(procs, pg):
    from mcp import Client

    a = start_replica(procs, pg.url(), "a")
    b = start_replica(procs, pg.url(), "b")
    total, clients_per_replica = 1000, 10
    per_client = total // (2 * clients_per_replica)
    started = time.monotonic()
    results: dict[str, object] = {}

    async def agent(gw, name: str):
        async with Client(gw.mcp, mode="2026-07-28", read_timeout_seconds=240) as client:
            async def one(i: int):
                rid = f"{name}-{i}"
                results[rid] = await client.call_tool("delete_record", {"id": rid}, read_timeout_seconds=240)

            async with anyio.create_task_group() as tg:
                for i in range(per_client):
                    tg.start_soon(one, i)

    def approve_all():
        """One approver, one replica's API (B): approve the odd ones, deny the even ones."""
        decided: set[str] = set()
        with httpx.Client(base_url=b.base, timeout=30, headers={"Authorization": f"Bearer {ALICE}"},
                          limits=httpx.Limits(max_connections=8)) as c:
            def decide(p):
                n = int(p["arguments"]["id"].rsplit("-", 1)[1])
                action = "approve" if n % 2 else "deny"
                r = c.post(f"/api/pending/{p['id']}/{action}", json={})
                assert r.status_code == 200, r.text
                return p["id"]

            with ThreadPoolExecutor(8) as pool:
                while len(decided) < total:
                    assert time.monotonic() - started < 240, f"only {len(decided)} decided"
                    fresh = [p for p in c.get("/api/pending").json()["pending"] if p["id"] not in decided]
                    if not fresh:
                        time.sleep(0.1)
                        continue
                    decided.update(pool.map(decide, fresh))

    async def main():
        async with anyio.create_task_group() as tg:
            for k in range(clients_per_replica):
                tg.start_soon(agent, a, f"a{k}")
                tg.start_soon(agent, b, f"b{k}")
            await anyio.to_thread.run_sync(approve_all)

    anyio.run(main)
    elapsed = time.monotonic() - started
    assert len(results) == total
    for rid, result in results.items():
        n = int(rid.rsplit("-", 1)[1])
        if n % 2:
            assert [c.text for c in result.content] == [f"deleted {rid}"] and not result.is_error, (rid, result)
        else:
            assert result.is_error and "denied" in result.content[0].text, (rid, result)
    assert elapsed < 240, elapsed
    # Every replica's view empties (no resolved hold comes back from a resync's stale list).
    assert rm_wait(lambda: a.pending() == [] and b.pending() == [], 10), (len(a.pending()), len(b.pending()))
    assert a.metrics()["airlock_pending"] == 0 and b.metrics()["airlock_pending"] == 0
    rows = [r for r in a.audit_rows(tool="delete_record")]
    by_decision: dict[str, int] = {}
    for r in rows:
        by_decision[r["decision"]] = by_decision.get(r["decision"], 0) + 1
    assert by_decision == {"approval_requested": total, "approved": total // 2,
                           "denied_by_human": total // 2}, by_decision
    assert len({r["pending_id"] for r in rows}) == total
    verify = run_cli("audit", "verify", "--store", pg.url(), timeout=60)
    assert verify.returncode == 0, verify.stderr
    assert f"{len(rows)} row(s), hash chain intact" in verify.stdout, verify.stdout


# --- state shared beyond approvals: Slack links, logins -------------------------------------------

def test_a_slack_link_works_on_any_replica_and_only_once_across_them(procs, pg):
    """One Slack message per hold (from its owner); its link, signed with the key the replicas
    share through the store, decides on any replica, and a link used on one is refused on the
    other."""
    import re

    from fake_slack import FakeSlack, all_text

    slack = FakeSlack()
    try:
        extra = '\n[slack]\nwebhook_url_env = "T_SLACK_WEBHOOK"\n'
        env = {"T_SLACK_WEBHOOK": slack.webhook_url}
        a = start_replica(procs, pg.url(), "a", extra=extra, env=env)
        b = start_replica(procs, pg.url(), "b", extra=extra, env=env)

        def link_of(pending_id: str) -> str:
            message = slack.wait_for(lambda m: pending_id in all_text(m) and "blocks" in m
                                     and any(bl["type"] == "actions" for bl in m["blocks"]), kind=None).body
            actions = next(bl for bl in message["blocks"] if bl["type"] == "actions")
            url = next(e["url"] for e in actions["elements"] if e["action_id"] == "approve_link")
            return url.rsplit("/approve/", 1)[1]

        def page(gw, token: str) -> tuple[int, str | None, str]:
            r = gw.http.get(f"/approve/{token}")
            m = re.search(r'name="csrf" value="([^"]+)"', r.text)
            return r.status_code, m.group(1) if m else None, r.text

        for owner, user, other in ((a, b, a), (b, a, b)):
            call = HeldCall(owner.mcp, "delete_record", {"id": f"slack-{owner.port}"})
            call.start()
            item = user.wait_pending(1, where=lambda p, o=owner: p["arguments"]["id"] == f"slack-{o.port}")[0]
            token = link_of(item["id"])
            status, csrf, _ = page(user, token)
            assert status == 200 and csrf, "the link opens on a replica that did not send it"
            r = user.http.post(f"/approve/{token}", data={"csrf": csrf, "action": "approve", "name": "carol"})
            assert r.status_code == 200 and "Approved by carol (Slack link)" in r.text, r.text
            assert text_of(call.result(15)) == f"deleted slack-{owner.port}"
            # Used: the other replica refuses it, saying who decided.
            status, _, text = page(other, token)
            assert status == 409 and "Already approved by carol (Slack link)" in text, text
            again = other.http.post(f"/approve/{token}", data={"csrf": csrf, "action": "deny"})
            assert again.status_code == 409 and "Already approved by carol" in again.text, again.text
            assert [r["decision"] for r in decisions(owner, item["id"])] == ["approved"]
            # One message per hold: the owner's (the other replica stays quiet), and one follow-up.
            slack.wait_for(lambda m, i=item["id"]: "approved by carol" in all_text(m), kind="webhook")
            time.sleep(0.5)
            about = [r for r in slack.received(kind="webhook") if item["id"] in all_text(r.body)]
            assert len(about) == 2, [all_text(r.body)[:200] for r in about]
    finally:
        slack.close()


def test_a_dashboard_login_on_a_is_valid_on_b(procs, pg):
    a = start_replica(procs, pg.url(), "a")
    b = start_replica(procs, pg.url(), "b")
    login = a.http.post("/api/login", json={"token": ALICE})
    assert login.status_code == 200, login.text
    csrf = login.json()["csrf"]
    call = HeldCall(a.mcp, "delete_record", {"id": "by-cookie"})
    call.start()
    with httpx.Client(base_url=b.base, cookies=login.cookies, timeout=10) as browser:
        r = browser.get("/api/pending")
        assert r.status_code == 200, r.text
        item = b.wait_pending(1)[0]
        r = browser.post(f"/api/pending/{item['id']}/approve", json={}, headers={"X-Airlock-CSRF": csrf})
        assert r.status_code == 200 and r.json()["decider"] == "alice", r.text
    assert text_of(call.result(15)) == "deleted by-cookie"
    # Logging out on B ends the cookie on A too (within a heartbeat: logouts are kept in the store).
    with httpx.Client(base_url=b.base, cookies=login.cookies, timeout=10) as browser:
        r = browser.post("/api/logout", headers={"X-Airlock-CSRF": csrf})
        assert r.status_code == 204, r.text
        assert browser.get("/api/pending").status_code == 401
    with httpx.Client(base_url=a.base, cookies=login.cookies, timeout=10) as browser:
        assert rm_wait(lambda: browser.get("/api/pending").status_code == 401, 5), "the logout did not reach A"
    # A fresh login still works on both.
    again = a.http.post("/api/login", json={"token": ALICE})
    with httpx.Client(base_url=b.base, cookies=again.cookies, timeout=10) as browser:
        assert browser.get("/api/pending").status_code == 200


# --- nginx in front (docs/deploy.md) ------------------------------------------------------------

def test_nginx_routes_each_handshake_session_to_its_replica_and_a_dead_replicas_sessions_get_404(procs, pg):
    import shutil
    from pathlib import Path

    import pytest

    import rawmcp as rm
    from harness import free_port
    from replicakit import nginx_config

    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if nginx is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light)")
    from mcp import Client

    a = start_replica(procs, pg.url(), "a")
    b = start_replica(procs, pg.url(), "b")
    prefix = procs.tmp_path / "nginx"
    prefix.mkdir()
    port = free_port()
    (prefix / "nginx.conf").write_text(nginx_config(port, {"a": a.port, "b": b.port}, prefix))
    proxy = procs.start([nginx, "-p", prefix, "-c", prefix / "nginx.conf"])
    front = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(f"{front}/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    assert rm.wait_until(healthy, 10), (proxy.stderr_text(), (prefix / "error.log").read_text())

    # Handshake-era SDK sessions through nginx: initialize lands on either replica, every later
    # request of the session on the one that minted its id.
    async def session(i: int):
        async with Client(f"{front}/mcp/test", mode="legacy", read_timeout_seconds=30) as client:
            for k in range(3):
                result = await client.call_tool("echo", {"text": f"s{i}-{k}"})
                assert [c.text for c in result.content] == [f"s{i}-{k}"], result

    async def sessions():
        async with anyio.create_task_group() as tg:
            for i in range(8):
                tg.start_soon(session, i)

    anyio.run(sessions)
    # A held call in a session through nginx, approved through nginx (any replica).
    with httpx.Client(timeout=10) as c:
        sid = rm.open_session(c, f"{front}/mcp/test")
    owner, other = (a, b) if sid.startswith("a.") else (b, a)
    assert sid.split(".", 1)[0] in ("a", "b") and len(sid.split(".", 1)[1]) == 32, sid
    call = HeldCall(f"{front}/mcp/test", "delete_record", {"id": "via-nginx"}, session=sid)
    call.start()
    item = other.wait_pending(1)[0]
    r = httpx.post(f"{front}/api/pending/{item['id']}/approve", json={}, headers={"Authorization": f"Bearer {ALICE}"})
    assert r.status_code == 200, r.text
    assert text_of(call.result(15)) == "deleted via-nginx"
    # The session's replica dies: nginx falls back to the other, which does not know the session
    # (404: the client must initialize again), and a new session works.
    owner.proc.stop(signal.SIGKILL)
    with httpx.Client(timeout=10) as c:
        r = rm.post(c, f"{front}/mcp/test", rm.call_body(5, "echo", {"text": "again"}), rm.session_headers(sid))
        assert r.status_code == 404, (r.status_code, r.text)
        fresh = rm.open_session(c, f"{front}/mcp/test")
        assert fresh.startswith("a." if other is a else "b."), fresh
        r = rm.post(c, f"{front}/mcp/test", rm.call_body(6, "echo", {"text": "again"}), rm.session_headers(fresh))
        assert text_of(rm.answer(r, 6)["result"]) == "again"


# --- the store goes away ------------------------------------------------------------------------

def test_a_decision_while_postgresql_is_down_is_503_store_unavailable_and_metrics_say_so(procs, pg):
    import subprocess

    a = start_replica(procs, pg.url(), "a", heartbeat=0.3, lease=1.5)
    assert a.metrics()["airlock_store_healthy"] == 1
    call = HeldCall(a.mcp, "delete_record", {"id": "stranded"})
    call.start()
    item = a.wait_pending(1)[0]
    subprocess.run(pg._cmd("pg_ctl", "-D", str(pg.dir / "data"), "-m", "immediate", "-w", "stop"),
                   check=True, capture_output=True)
    r = a.decide(item["id"], "approve")
    assert r.status_code == 503, r.text
    error = r.json()["error"]
    assert error["code"] == "store_unavailable" and "nothing was decided" in error["message"], error
    assert rm_wait(lambda: a.metrics()["airlock_store_healthy"] == 0, 5), a.metrics()
    # Nothing was released.
    assert call.is_alive() and call.answer is None
    # A new call that needs approval is refused at once, saying why.
    refused = HeldCall(a.mcp, "delete_record", {"id": "refused"})
    refused.start()
    result = refused.result(20)
    text = text_of(result)
    assert result["isError"] and "needs human approval, but" in text and "PostgreSQL" in text, result


def rm_wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_a_logout_is_kept_in_the_store_and_survives_a_restart(procs):
    """Without [store] too: the logout lands in the audit file's meta table, read back at start."""
    from holdkit import start_gateway

    gw = start_gateway(procs)
    login = gw.http.post("/api/login", json={"token": ALICE})
    csrf = login.json()["csrf"]
    with httpx.Client(base_url=gw.base, cookies=login.cookies, timeout=10) as browser:
        assert browser.post("/api/logout", headers={"X-Airlock-CSRF": csrf}).status_code == 204
    time.sleep(0.5)  # the store write is off the logout's path
    gw.proc.stop()
    again = start_gateway(procs, audit=gw.audit, config=gw.config)
    with httpx.Client(base_url=again.base, cookies=login.cookies, timeout=10) as browser:
        assert browser.get("/api/pending").status_code == 401
    fresh = again.http.post("/api/login", json={"token": ALICE})
    with httpx.Client(base_url=again.base, cookies=fresh.cookies, timeout=10) as browser:
        assert browser.get("/api/pending").status_code == 200


def test_logout_rows_past_their_cookies_expiry_are_purged_and_live_ones_kept(procs, pg):
    import subprocess

    def psql(sql: str) -> str:
        cmd = [str(pg.bin / "psql"), "-h", "127.0.0.1", "-p", str(pg.port), "-U", "airlock", "-d", "postgres",
               "-At", "-c", sql]
        return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()

    a = start_replica(procs, pg.url(), "a", heartbeat=0.3, lease=1.5)
    b = start_replica(procs, pg.url(), "b", heartbeat=0.3, lease=1.5)
    # A real logout through A: its row expires with the cookie (12 h from now).
    login = a.http.post("/api/login", json={"token": ALICE})
    with httpx.Client(base_url=a.base, cookies=login.cookies, timeout=10) as browser:
        r = browser.post("/api/logout", headers={"X-Airlock-CSRF": login.json()["csrf"]})
        assert r.status_code == 204
    now = int(time.time())
    psql("INSERT INTO airlock_audit_meta (key, value) VALUES "
         f"('logout:expired-nonce', '{now - 5}'), ('logout:soon-nonce', '{now + 3600}')")
    keys = lambda: psql("SELECT key FROM airlock_audit_meta WHERE key LIKE 'logout:%' ORDER BY key").split()
    # Purged within a heartbeat or two; the real logout's row is written off its request's path.
    assert rm_wait(lambda: "logout:expired-nonce" not in keys() and len(keys()) == 2, 10), keys()
    assert "logout:soon-nonce" in keys(), keys()
    # The live logout still holds on both replicas (B picks it up within a heartbeat).
    for gw in (a, b):
        with httpx.Client(base_url=gw.base, cookies=login.cookies, timeout=10) as browser:
            assert rm_wait(lambda: browser.get("/api/pending").status_code == 401, 3), gw.base
