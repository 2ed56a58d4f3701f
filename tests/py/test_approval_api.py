"""The approvers' side of the gateway: who may use the API and the event
websocket, browser login (cookie + CSRF), `/metrics`, `/healthz`, and the
`airlock pending|approve|deny` command line — against the real binary."""
from __future__ import annotations

import socket
import time

import httpx

from harness import text_of
from holdkit import AGENT, ALICE, HeldCall, WebSocket, run_cli, start_gateway

EVIL = "http://evil.example"


def error_of(r: httpx.Response) -> dict:
    assert r.headers["content-type"].startswith("application/json"), (r.status_code, r.text)
    err = r.json()["error"]
    assert isinstance(err["code"], str) and err["message"], err
    return err


# --- bearer tokens ---------------------------------------------------------------

def test_api_refuses_missing_wrong_agent_and_query_string_tokens(procs):
    gw = start_gateway(procs, agents=True)
    for path in ("/api/pending", "/api/audit", "/api/audit/export?format=csv"):
        r = gw.api("GET", path, token=None)
        assert r.status_code == 401 and error_of(r)["code"] == "unauthorized", (path, r.text)
        r = gw.api("GET", path, token="not-a-real-token-0123456789")
        assert r.status_code == 401 and error_of(r)["code"] == "unauthorized", (path, r.text)
        r = gw.api("GET", path, token=AGENT)
        assert r.status_code == 403 and "agent" in error_of(r)["message"], (path, r.text)
        assert gw.api("GET", path).status_code == 200
    r = gw.api("POST", "/api/pending/whatever/approve", token=AGENT, json={})
    assert r.status_code == 403, r.text
    for query in ("token", "access_token"):
        r = gw.api("GET", f"/api/pending?{query}={ALICE}", token=None)
        assert r.status_code == 401 and "query" in error_of(r)["message"], r.text
    # An unknown id is a JSON 404, not a crash.
    r = gw.api("POST", "/api/pending/0190c5d2-0000-7000-8000-000000000000/deny", json={"comment": "x"})
    assert r.status_code == 404 and error_of(r)["code"] == "not_found"


def test_agent_token_admits_the_agent_but_never_approves(procs):
    gw = start_gateway(procs, agents=True)
    refused = HeldCall(gw.mcp, "echo", {"text": "no token"})
    refused.start()
    refused.join(10)
    assert refused.status == 401
    call = HeldCall(gw.mcp, "delete_record", {"id": "a1"}, headers={"Authorization": f"Bearer {AGENT}"})
    call.start()
    [item] = gw.wait_pending(1)
    assert item["agent"] == "claude-desktop"
    assert gw.decide(item["id"], "approve", token=AGENT).status_code == 403
    assert gw.pending() == [item]
    assert gw.decide(item["id"], "approve").status_code == 200
    assert text_of(call.result()) == "deleted a1"


# --- browser login ----------------------------------------------------------------

def test_login_sets_an_httponly_samesite_strict_cookie(procs):
    gw = start_gateway(procs)
    assert gw.http.post("/api/login", json={"token": "wrong-token-0123456789"}).status_code == 401
    assert gw.http.post("/api/login", json={"token": ALICE}, headers={"Origin": EVIL}).status_code == 403
    r = httpx.post(f"{gw.base}/api/login", json={"token": ALICE}, headers={"Origin": gw.base})
    assert r.status_code == 200, r.text
    assert r.json()["approver"] == "alice" and len(r.json()["csrf"]) >= 32
    cookie = r.headers["set-cookie"]
    attrs = [a.strip().lower() for a in cookie.split(";")]
    assert attrs[0].startswith("airlock_session=") and len(attrs[0]) > len("airlock_session=") + 30
    assert "httponly" in attrs and "samesite=strict" in attrs and "path=/" in attrs, cookie
    assert ALICE not in cookie
    with httpx.Client(base_url=gw.base, cookies=r.cookies) as browser:
        me = browser.get("/api/me")
        assert me.status_code == 200 and me.json()["approver"] == "alice"


def test_cookie_posts_need_the_csrf_token_and_the_own_origin(procs):
    gw = start_gateway(procs)
    login = gw.http.post("/api/login", json={"token": ALICE})
    csrf = login.json()["csrf"]
    call = HeldCall(gw.mcp, "delete_record", {"id": "c1"})
    call.start()
    [item] = gw.wait_pending(1)
    url = f"/api/pending/{item['id']}/approve"
    with httpx.Client(base_url=gw.base, cookies=login.cookies, timeout=10) as browser:
        assert browser.get("/api/pending").status_code == 200
        r = browser.post(url, json={})
        assert r.status_code == 403 and error_of(r)["code"] == "csrf", r.text
        r = browser.post(url, json={}, headers={"X-Airlock-CSRF": "0" * len(csrf)})
        assert r.status_code == 403 and error_of(r)["code"] == "csrf", r.text
        r = browser.post(url, json={}, headers={"X-Airlock-CSRF": csrf, "Origin": EVIL})
        assert r.status_code == 403, r.text
        assert gw.pending() == [item]
        r = browser.post(url, json={"comment": "from the dashboard"},
                         headers={"X-Airlock-CSRF": csrf, "Origin": gw.base})
        assert r.status_code == 200, r.text
    assert text_of(call.result()) == "deleted c1"
    [row] = gw.decision_rows(item["id"])
    assert (row["decider"], row["channel"]) == ("alice", "dashboard")
    # Logging out ends the cookie.
    with httpx.Client(base_url=gw.base, cookies=login.cookies) as browser:
        assert browser.post("/api/logout", headers={"X-Airlock-CSRF": csrf}).status_code == 204
        assert browser.get("/api/pending").status_code == 401


# --- websocket ----------------------------------------------------------------------

def test_websocket_refuses_foreign_origins_and_non_approvers(procs):
    gw = start_gateway(procs, agents=True)
    bearer = {"Authorization": f"Bearer {ALICE}"}
    assert WebSocket(gw.port).status == 401
    assert WebSocket(gw.port, {"Authorization": f"Bearer {AGENT}"}).status == 403
    assert WebSocket(gw.port, {**bearer, "Origin": EVIL}).status == 403
    cookie = gw.http.post("/api/login", json={"token": ALICE}).headers["set-cookie"].split(";")[0]
    assert WebSocket(gw.port, {"Cookie": cookie, "Origin": EVIL}).status == 403
    assert WebSocket(gw.port, {"Authorization": "Bearer x", "Origin": EVIL}).status in (401, 403)
    ok = WebSocket(gw.port, {"Cookie": cookie, "Origin": gw.base})
    assert ok.status == 101 and ok.recv()["type"] == "snapshot"
    ok.close()
    ok = WebSocket(gw.port, bearer)
    assert ok.status == 101
    snap = ok.recv()
    assert snap["type"] == "snapshot" and snap["pending"] == [] and "seq" in snap and "at" in snap
    ok.close()


# --- metrics and health -------------------------------------------------------------

def test_metrics_count_outcomes_and_healthz_reports_ok(procs):
    gw = start_gateway(procs)
    h = gw.http.get("/healthz")
    assert h.status_code == 200 and h.json()["status"] == "ok" and h.json()["audit"] == "ok", h.text
    for text in ("a", "b"):
        c = HeldCall(gw.mcp, "echo", {"text": text})
        c.start()
        assert text_of(c.result()) == text
    c = HeldCall(gw.mcp, "crash", {})
    c.start()
    assert c.result()["isError"] is True
    held = [HeldCall(gw.mcp, "delete_record", {"id": f"m{i}"}) for i in range(3)]
    for c in held:
        c.start()
    items = {p["arguments"]["id"]: p for p in gw.wait_pending(3)}
    m = gw.metrics()
    assert m['airlock_pending'] == 3 and gw.http.get("/healthz").json()["pending"] == 3
    assert gw.decide(items["m0"]["id"], "approve").status_code == 200
    assert gw.decide(items["m1"]["id"], "deny").status_code == 200
    held[0].result(), held[1].result()
    m = gw.metrics()
    calls = {k.split('"')[1]: v for k, v in m.items() if k.startswith("airlock_calls_total{")}
    assert calls == {
        "allowed": 2, "denied": 1, "rate_limited": 0, "hidden": 0, "approval_requested": 3,
        "approved": 1, "denied_by_human": 1, "timed_out": 0, "cancelled": 0, "abandoned": 0,
    }, calls
    assert m["airlock_pending"] == 1
    assert m["airlock_approval_wait_seconds_count"] == 2
    assert m['airlock_approval_wait_seconds_bucket{le="+Inf"}'] == 2
    assert m["airlock_upstream_latency_seconds_count"] >= 3  # two echoes + the approved delete
    assert m["airlock_audit_healthy"] == 1
    # /metrics and /healthz need no token; nothing in them is a secret.
    assert ALICE not in gw.http.get("/metrics").text


# --- approvers' CLI -----------------------------------------------------------------

def test_cli_lists_approves_and_reports_conflicts(procs):
    gw = start_gateway(procs)
    env = {"AIRLOCK_URL": gw.base, "AIRLOCK_APPROVER_TOKEN": ALICE}
    empty = run_cli("pending", env=env)
    assert empty.returncode == 0 and "No calls waiting." in empty.stdout, empty
    call = HeldCall(gw.mcp, "delete_record", {"id": "cli-1"})
    call.start()
    [item] = gw.wait_pending(1)
    listed = run_cli("pending", env=env)
    assert listed.returncode == 0, listed
    assert item["id"] in listed.stdout and "delete_record" in listed.stdout and "cli-1" in listed.stdout
    approved = run_cli("approve", item["id"], "--comment", "ship it", env=env)
    assert approved.returncode == 0, approved
    assert f"approved {item['id']}" in approved.stdout
    assert text_of(call.result()) == "deleted cli-1"
    [row] = gw.decision_rows(item["id"])
    assert (row["decider"], row["channel"], row["comment"]) == ("alice", "cli", "ship it")
    again = run_cli("deny", item["id"], env=env)
    assert again.returncode != 0 and "409" in again.stderr and "approved by alice" in again.stderr, again
    wrong = run_cli("pending", env={**env, "AIRLOCK_APPROVER_TOKEN": "wrong-token-0123456789"})
    assert wrong.returncode != 0 and "401" in wrong.stderr, wrong


def test_api_errors_are_json_even_for_malformed_requests(procs):
    """Every /api error is `{"error": {"code", "message"}}`, including the ones the
    web framework's extractors raise (bad JSON body, bad query, unknown route)."""
    gw = start_gateway(procs)
    cases = [
        gw.http.post("/api/login", content=b"{bad", headers={"Content-Type": "application/json"}),
        gw.http.post("/api/login", content=b"token=x"),
        gw.api("POST", "/api/pending/x/approve", content=b"{bad", headers={"Content-Type": "application/json"}),
        gw.api("GET", "/api/audit", params={"limit": "many"}),
        gw.api("GET", "/api/no-such-endpoint"),
    ]
    problems = [(r.request.method, str(r.request.url), r.status_code, r.headers.get("content-type"), r.text[:80])
                for r in cases
                if not (400 <= r.status_code < 500 and r.headers.get("content-type", "").startswith("application/json")
                        and "error" in r.json())]
    assert not problems, "\n".join(map(str, problems))


def test_a_refused_request_leaves_the_connection_usable(procs):
    """A request refused before its body arrives (here: no credentials) must not leave the
    keep-alive connection half-read: the next request on it gets its own answer."""
    gw = start_gateway(procs)
    body = b'{"comment": "late body"}'
    head = (f"POST /api/pending/none/approve HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    second = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
        s.sendall(head)
        time.sleep(0.3)  # the refusal is decided before the body is sent
        s.sendall(body)
        s.sendall(second)
        got = b""
        while got.count(b"HTTP/1.1 ") < 2:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
    assert got.startswith(b"HTTP/1.1 401"), got[:200]
    assert got.count(b"HTTP/1.1 200") == 1, f"the connection was closed after the refusal: {got[-300:]!r}"
