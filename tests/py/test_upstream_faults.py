"""Upstream faults: a stdio child that exits mid-call, will not start, hangs or
writes garbage; an HTTP upstream that is unreachable; and no upstream process
left behind after DELETE, idle reaping or SIGTERM.

Each test passes a path unique to it in the upstream's command line, so the
/proc scan (`procs_with`) sees only that test's children.
"""
import os
from pathlib import Path
import signal
import sys
import time

import httpx
import pytest

from harness import free_port, text_of
from holdkit import HeldCall, start_gateway
from rawmcp import (
    answer, call_body, client, init_body, marked_testserver, open_session, post, procs_with,
    rpc_error_of, session_headers, stateless_headers, stateless_meta, wait_until,
)

GARBAGE_SERVER = r'''
import json, sys
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("method") == "initialize":
        print(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": {"protocolVersion": "2025-11-25",
              "capabilities": {"tools": {}}, "serverInfo": {"name": "garbage", "version": "0"}}}), flush=True)
    elif msg.get("method") and "id" in msg:
        print("this is not JSON-RPC {{{", flush=True)
'''


BAD_HTTP_SERVER = r'''
import json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
mode = sys.argv[1]
class H(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
        if mode == "500":
            self.send_response(500)
            self.send_header("content-type", "text/plain")
            self.end_headers()
            self.wfile.write(b"Internal Server Error")
            return
        if body.get("method") == "initialize":
            out = json.dumps({"jsonrpc": "2.0", "id": body["id"], "result": {"protocolVersion": "2025-11-25",
                  "capabilities": {"tools": {}}, "serverInfo": {"name": "x", "version": "0"}}}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("mcp-session-id", "s1")
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)
            return
        if "id" not in body:
            self.send_response(202)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        # An SSE answer that breaks off half-way through the response event.
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()
        self.wfile.write(b'event: message\ndata: {"jsonrpc":"2.0","id":')
        self.wfile.flush()
        self.close_connection = True
s = HTTPServer(("127.0.0.1", 0), H)
print("LISTENING http://127.0.0.1:%d/mcp" % s.server_address[1], flush=True)
s.serve_forever()
'''


def bad_http_upstream(procs, tmp_path, mode: str) -> str:
    script = tmp_path / "bad_http_server.py"
    script.write_text(BAD_HTTP_SERVER)
    p = procs.start([sys.executable, script, mode])
    return p.wait_for_line("LISTENING ").split(" ", 1)[1].strip()


@pytest.fixture
def c():
    with client() as c:
        yield c


@pytest.fixture
def marker(tmp_path):
    return tmp_path / "upstream-marker"


def crash(c, url, sid, req_id=2) -> httpx.Response:
    return post(c, url, call_body(req_id, "crash"), session_headers(sid))


def echo(c, url, sid, text="hi", req_id=3) -> httpx.Response:
    return post(c, url, call_body(req_id, "echo", {"text": text}), session_headers(sid))


def config_file(tmp_path, marker, extra: str = "") -> str:
    cmd = marked_testserver(marker)
    path = tmp_path / "airlock.toml"
    path.write_text(
        f"{extra}\n[[upstream]]\nname = \"up\"\ncommand = \"{cmd[0]}\"\n"
        f"args = [{', '.join(repr(a).replace(chr(39), chr(34)) for a in cmd[1:])}]\n"
    )
    return str(path)


# ----------------------------------------------------------------------------- child exits


def test_crash_mid_call_answers_with_an_error_saying_the_upstream_exited(procs, marker, c):
    gw = procs.airlock(upstream=marked_testserver(marker))
    sid = open_session(c, gw.mcp)
    r = crash(c, gw.mcp, sid)
    assert r.status_code == 200
    err = answer(r, 2)["error"]
    assert "exited" in err["message"] and "upstream" in err["message"]


def test_session_whose_upstream_exited_is_404_so_the_client_reinitializes(procs, marker, c):
    gw = procs.airlock(upstream=marked_testserver(marker))
    sid = open_session(c, gw.mcp)
    crash(c, gw.mcp, sid)
    r = echo(c, gw.mcp, sid)
    assert r.status_code == 404
    assert "exited" in rpc_error_of(r)["message"]


def test_new_session_after_a_crash_gets_a_fresh_working_upstream(procs, marker, c):
    gw = procs.airlock(upstream=marked_testserver(marker))
    sid = open_session(c, gw.mcp)
    old = procs_with(marker)
    assert len(old) == 1
    crash(c, gw.mcp, sid)
    assert wait_until(lambda: not procs_with(marker))
    sid2 = open_session(c, gw.mcp)
    assert sid2 != sid
    r = echo(c, gw.mcp, sid2, "fresh")
    assert answer(r, 3)["result"]["content"][0]["text"] == "fresh"
    new = procs_with(marker)
    assert len(new) == 1 and new != old


def test_a_crash_in_one_session_leaves_other_sessions_working(procs, marker, c):
    gw = procs.airlock(upstream=marked_testserver(marker))
    a = open_session(c, gw.mcp)
    b = open_session(c, gw.mcp)
    crash(c, gw.mcp, a)
    r = echo(c, gw.mcp, b, "still here")
    assert answer(r, 3)["result"]["content"][0]["text"] == "still here"


def test_stateless_requests_get_a_fresh_shared_child_after_a_crash(procs, marker, c):
    gw = procs.airlock(upstream=marked_testserver(marker))
    r = post(c, gw.mcp, call_body(1, "crash", meta=stateless_meta()), stateless_headers("tools/call", "crash"))
    assert "exited" in r.json()["error"]["message"]
    r = post(c, gw.mcp, call_body(2, "echo", {"text": "again"}, meta=stateless_meta()),
             stateless_headers("tools/call", "echo"))
    assert r.status_code == 200, r.text
    assert r.json()["result"]["content"][0]["text"] == "again"


# ----------------------------------------------------------------------------- will not start / misbehaves


def test_missing_upstream_command_answers_initialize_with_an_error_naming_it(procs, tmp_path, c):
    missing = str(tmp_path / "no-such-mcp-server")
    gw = procs.airlock(upstream=[missing, "--flag"])
    r = post(c, gw.mcp, init_body())
    err = answer(r, 1)["error"]
    assert missing in err["message"]
    assert "start" in err["message"]
    assert "mcp-session-id" not in r.headers
    # The gateway keeps answering.
    r = post(c, gw.mcp, init_body(7))
    assert missing in answer(r, 7)["error"]["message"]


def test_initialize_the_upstream_refuses_leaves_no_session_or_process(procs, marker, c):
    # A stateless-only upstream answers `initialize` with a JSON-RPC error (-32022).
    gw = procs.airlock(upstream=marked_testserver(marker, era="stateless"))
    for i in range(3):
        r = post(c, gw.mcp, init_body(i + 1))
        assert "error" in answer(r, i + 1)
        assert "mcp-session-id" not in r.headers, "a session id for a failed initialize"
    assert wait_until(lambda: not procs_with(marker), timeout=3), (
        f"{len(procs_with(marker))} upstream processes kept for failed initializes")


def test_unreachable_http_upstream_gives_a_clear_error(procs, c):
    url = f"http://127.0.0.1:{free_port()}/mcp"
    gw = procs.airlock(url=url)
    r = post(c, gw.mcp, init_body())
    err = answer(r, 1)["error"]
    assert "unreachable" in err["message"] and url in err["message"]
    r = post(c, gw.mcp, call_body(2, "echo", {"text": "x"}, meta=stateless_meta()),
             stateless_headers("tools/call", "echo"))
    assert r.status_code == 502
    assert "unreachable" in rpc_error_of(r)["message"]


def test_http_upstream_500_gives_a_jsonrpc_error_naming_it(procs, tmp_path, c):
    gw = procs.airlock(url=bad_http_upstream(procs, tmp_path, "500"))
    r = post(c, gw.mcp, init_body())
    assert r.status_code >= 500
    err = rpc_error_of(r)
    assert "500" in err["message"] and "upstream" in err["message"]


def test_http_upstream_closing_mid_sse_gives_an_error_not_a_hang(procs, tmp_path, c):
    gw = procs.airlock(url=bad_http_upstream(procs, tmp_path, "midsse"))
    sid = open_session(c, gw.mcp)
    r = echo(c, gw.mcp, sid)
    err = answer(r, 3)["error"]
    assert "upstream" in err["message"] and "before answering" in err["message"]
    r = echo(c, gw.mcp, sid, req_id=4)  # the gateway keeps serving the session
    assert "error" in answer(r, 4)


def test_upstream_writing_garbage_to_stdout_gives_an_error_not_a_hang(procs, tmp_path, c):
    script = tmp_path / "garbage_server.py"
    script.write_text(GARBAGE_SERVER)
    gw = procs.airlock(upstream=[sys.executable, str(script)])
    sid = open_session(c, gw.mcp)
    r = echo(c, gw.mcp, sid)
    err = answer(r, 3)["error"]
    assert "invalid JSON-RPC" in err["message"]


def test_hanging_upstream_call_ends_at_the_configured_upstream_timeout(procs, tmp_path, marker, c):
    # 3 s, not 1: the limit also covers `initialize`, which includes the child's start-up.
    gw = procs.airlock(config=config_file(tmp_path, marker, "upstream_timeout = 3"))
    url = gw.endpoint("up")
    sid = open_session(c, url)
    body = call_body(4, "slow", {"steps": 1, "delay_ms": 30000})
    try:
        r = post(c, url, body, session_headers(sid), timeout=8)
    except httpx.ReadTimeout:
        pytest.fail("upstream_timeout = 3 did not end a call the upstream never answers (still waiting after 8 s)")
    err = answer(r, 4)["error"]
    assert "within 3 s" in err["message"]
    r = echo(c, url, sid, "after the timeout", req_id=5)  # the session still works
    assert answer(r, 5)["result"]["content"][0]["text"] == "after the timeout"


# ----------------------------------------------------------------------------- no orphans


def test_delete_ends_the_sessions_upstream_process(procs, marker, c):
    gw = procs.airlock(upstream=marked_testserver(marker))
    sid = open_session(c, gw.mcp)
    assert len(procs_with(marker)) == 1
    assert c.delete(gw.mcp, headers=session_headers(sid)).status_code in (200, 204)
    assert wait_until(lambda: not procs_with(marker), timeout=6), procs_with(marker)


def test_sigterm_leaves_no_upstream_process_behind(procs, marker, c):
    gw = procs.airlock(upstream=marked_testserver(marker))
    open_session(c, gw.mcp)
    open_session(c, gw.mcp)
    r = post(c, gw.mcp, call_body(1, "echo", {"text": "shared"}, meta=stateless_meta()),
             stateless_headers("tools/call", "echo"))
    assert r.status_code == 200
    assert len(procs_with(marker)) == 3  # two session children + the stateless shared child
    os.kill(gw.proc.popen.pid, signal.SIGTERM)
    assert gw.proc.popen.wait(timeout=10) == 0
    assert wait_until(lambda: not procs_with(marker), timeout=3), procs_with(marker)


def test_idle_session_is_reaped_and_its_upstream_ends(procs, tmp_path, marker, c):
    gw = procs.airlock(config=config_file(tmp_path, marker, "session_idle_timeout = 1"))
    url = gw.endpoint("up")
    sid = open_session(c, url)
    assert len(procs_with(marker)) == 1
    assert wait_until(lambda: not procs_with(marker), timeout=6), "idle session's child still running"
    r = echo(c, url, sid)
    assert r.status_code == 404


# ----------------------------------------------------------------------------- bad lines on stdout
#
# The testserver's `garbage` tool writes one line that is not a JSON-RPC message
# instead of its answer, then never answers. Every wait is bounded: the gateway
# this replaced stopped reading the child on such a line, so calls hung.

WAIT = 10  # seconds a prompt answer may take, at most


def garbage(c, url, headers, kind, req_id, with_id=True, meta=None) -> httpx.Response:
    body = call_body(req_id, "garbage", {"kind": kind, "with_id": with_id}, meta=meta)
    try:
        return post(c, url, body, headers, timeout=WAIT + 20 if kind == "too_long" else WAIT)
    except httpx.ReadTimeout:
        pytest.fail(f"a call whose upstream wrote a {kind} line got no answer (hang)")


def stateless_garbage(c, url, kind, req_id, with_id=True) -> httpx.Response:
    return garbage(c, url, stateless_headers("tools/call", "garbage"), kind, req_id, with_id, stateless_meta())


def upstream_health(gw) -> str:
    h = httpx.get(f"{gw.base}/healthz", timeout=5).json()
    assert h["status"] == "ok", h  # one upstream's fault is not the gateway's
    states = list(h.get("upstreams", {}).values())
    assert len(states) == 1, h
    return states[0]


def metric(gw, name: str) -> float:
    text = httpx.get(f"{gw.base}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} in /metrics")


def later_call_on_a_broken_session_fails_fast(c, url, sid, what: str):
    try:
        r = echo(c, url, sid, req_id=9)  # no longer routed to the stopped child
    except httpx.ReadTimeout:
        pytest.fail("a later call on the session whose child broke the protocol hung")
    assert r.status_code == 404, r.text
    err = rpc_error_of(r)
    assert "broke the protocol" in err["message"] and what in err["message"], err


@pytest.mark.parametrize("kind, what", [("not_utf8", "not UTF-8"), ("too_long", "over the 64 MiB limit")])
def test_session_child_writing_an_unframeable_line_fails_the_call_is_stopped_and_reported(procs, marker, c,
                                                                                          kind, what):
    gw = procs.airlock(upstream=marked_testserver(marker))
    sid = open_session(c, gw.mcp)
    r = garbage(c, gw.mcp, session_headers(sid), kind, 5)
    err = answer(r, 5)["error"]
    assert err["code"] == -32000, err
    # The child is stopped (its process group killed), and /healthz and /metrics say why.
    assert wait_until(lambda: not procs_with(marker), timeout=8), f"child still running: {procs_with(marker)}"
    assert "broke the protocol" in err["message"] and what in err["message"], err
    assert "stopped" in err["message"], err
    state = upstream_health(gw)
    assert state.startswith("degraded:") and what in state, state
    assert metric(gw, "airlock_upstream_protocol_errors_total") == 1
    assert metric(gw, "airlock_upstream_children_stopped_total") == 1
    later_call_on_a_broken_session_fails_fast(c, gw.mcp, sid, what)
    # A new session gets a fresh child that works.
    sid2 = open_session(c, gw.mcp)
    assert answer(echo(c, gw.mcp, sid2, "fresh"), 3)["result"]["content"][0]["text"] == "fresh"


def test_shared_child_bad_line_with_an_id_fails_only_that_call(procs, marker, c):
    gw = procs.airlock(upstream=marked_testserver(marker))
    slow = HeldCall(gw.mcp, "slow", {"steps": 1, "delay_ms": 2500}, req_id=1)  # agent B
    slow.start()
    time.sleep(0.5)  # B's call is in flight on the shared child
    r = stateless_garbage(c, gw.mcp, "not_utf8", 1)  # agent A, same JSON-RPC id as B
    err = rpc_error_of(r)
    assert err["code"] == -32000 and "not UTF-8" in err["message"], err
    assert text_of(slow.result(WAIT)) == "done after 1 steps"
    # The shared child was not restarted for it, and keeps answering.
    assert len(procs_with(marker)) == 1
    r = post(c, gw.mcp, call_body(3, "echo", {"text": "after"}, meta=stateless_meta()),
             stateless_headers("tools/call", "echo"), timeout=WAIT)
    assert r.json()["result"]["content"][0]["text"] == "after"
    assert "not UTF-8" in upstream_health(gw)
    assert metric(gw, "airlock_upstream_children_stopped_total") == 0


def test_shared_child_bad_line_without_an_id_fails_no_other_agents_call(procs, tmp_path, marker, c):
    # Which call the line answered cannot be told: it fails none; A's call ends at upstream_timeout.
    gw = procs.airlock(config=config_file(tmp_path, marker, "upstream_timeout = 4"))
    url = gw.endpoint("up")
    # Start the shared child first: its start-up would count against B's 4 s.
    warm = post(c, url, call_body(9, "echo", {"text": "warm"}, meta=stateless_meta()),
                stateless_headers("tools/call", "echo"))
    assert warm.status_code == 200, warm.text
    slow = HeldCall(url, "slow", {"steps": 1, "delay_ms": 2500}, req_id=1)  # agent B
    slow.start()
    time.sleep(0.5)
    r = stateless_garbage(c, url, "not_json", 2, with_id=False)  # agent A
    assert "within 4 s" in rpc_error_of(r)["message"]
    assert text_of(slow.result(WAIT)) == "done after 1 steps"
    assert "invalid JSON-RPC" in upstream_health(gw)
    assert metric(gw, "airlock_upstream_protocol_errors_total") == 1


def test_approved_held_call_whose_upstream_breaks_gets_an_error_not_a_hang(procs, c):
    policy = {"version": "1", "default": "allow",
              "rules": {"garbage": {"action": "require_approval", "reason": "test"}}}
    gw = start_gateway(procs, policy)
    sid = open_session(c, gw.mcp)
    held = HeldCall(gw.mcp, "garbage", {"kind": "not_utf8"}, req_id=4, session=sid)
    held.start()
    (item,) = gw.wait_pending(1)
    assert gw.decide(item["id"], "approve").status_code == 200
    held.join(WAIT)
    assert not held.is_alive(), "the approved call hung after its upstream wrote a line that is not UTF-8"
    assert held.answer is not None and held.answer["error"]["code"] == -32000, (held.status, held.messages)
    assert "not UTF-8" in held.answer["error"]["message"]


def test_a_hostile_meta_array_cannot_stop_the_shared_childs_reader(procs, c):
    """A notification whose `_meta` is an array holding an in-flight id (read
    positionally, it looked like a subscription id) once panicked the task
    that reads the shared child's stdout: every agent's call then hung."""
    hostile = [sys.executable, str(Path(__file__).resolve().parents[1] / "servers" / "hostile_stdio.py")]
    gw = procs.airlock(upstream=hostile)
    for n in range(3):
        r = post(c, gw.mcp, call_body(n + 1, "echo", {"text": "x"}, meta=stateless_meta()),
                 stateless_headers("tools/call", "echo"), timeout=10)
        assert r.status_code == 200, r.text
        assert answer(r, n + 1)["result"]["content"][0]["text"] == "ok", r.text
