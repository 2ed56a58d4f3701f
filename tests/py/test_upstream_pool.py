"""Upstream connection reuse: an HTTP upstream that answers `tools/call` as an
event stream (the official SDK servers do) keeps its pooled connections for a
sequential agent. Airlock reads each answer's stream to its end, so its
HTTP client can put the connection back in its pool; the proof is the counter
`airlock_upstream_connections_opened_total{upstream}` in `/metrics`.

The SDK server writes the answer event and the stream's end (the last, empty
chunk) in two writes, so the end often arrives a little after the answer: a
gateway that stops reading at the answer loses about every other connection
(measured before the fix: 28 new connections for 50 calls).

Warm-up opens two connections on purpose (a slow call beside a quick one):
the pool gets a connection back on a task of its own once a response has
ended, and a sequential agent on loopback can now and then send its next
call before that task ran; a second pooled connection takes that call. So
the count after warm-up is exactly 0, not 0 most of the time.

Not timed: the assertions are counts of connections, not durations. The
stateless-era test (JSON answers) and the TypeScript SDK test guard the
other answer shapes; the handshake-era Python SDK test is the one that
failed before the fix.
"""
from __future__ import annotations

import threading
from typing import Callable

import httpx

import rawmcp as rm

CALLS = 50


def connections_opened(c: httpx.Client, base: str, upstream: str = "default") -> int:
    text = c.get(f"{base}/metrics").text
    needle = f'airlock_upstream_connections_opened_total{{upstream="{upstream}"}} '
    for line in text.splitlines():
        if line.startswith(needle):
            return int(line[len(needle):])
    raise AssertionError(f"no {needle.strip()} in /metrics:\n{text}")


def answered(r: httpx.Response, i: int, streamed: bool) -> dict:
    assert r.status_code == 200, (r.status_code, r.text)
    ctype = "text/event-stream" if streamed else "application/json"
    assert r.headers["content-type"].startswith(ctype), r.headers
    return rm.answer(r, i)["result"]


def warm_up(url: str, headers: dict, slow_body: dict, quick: Callable[[int], None]) -> None:
    """A slow call on a second client while the quick ones run: the pool
    holds two connections afterwards."""
    def slow():
        with rm.client() as c2:
            r = rm.post(c2, url, slow_body, headers)
            assert r.status_code == 200, r.text

    t = threading.Thread(target=slow)
    t.start()
    i = 0
    while t.is_alive() and i < 1000:  # quick calls while the slow one is upstream
        i += 1
        quick(i)
    t.join(timeout=30)
    assert not t.is_alive()
    for i in range(i + 1, i + 6):
        quick(i)


def assert_no_new_connections(c: httpx.Client, base: str, quick: Callable[[int], None]) -> None:
    before = connections_opened(c, base)
    assert before >= 2, before
    for i in range(100, 100 + CALLS):
        quick(i)
    opened = connections_opened(c, base) - before
    assert opened == 0, f"{opened} new upstream connection(s) for {CALLS} sequential calls after warm-up"


def python_sdk_calls(c: httpx.Client, url: str, headers: dict, meta: dict | None):
    # The SDK answers handshake-era calls as an event stream, stateless-era ones as JSON.
    def quick(i: int) -> None:
        r = rm.post(c, url, rm.call_body(i, "echo", {"text": f"ping {i}"}, meta), headers)
        assert answered(r, i, meta is None)["content"][0]["text"] == f"ping {i}"

    slow = rm.call_body(10_000, "slow", {"steps": 1, "delay_ms": 300}, meta)
    return quick, slow


def test_event_stream_answers_reuse_upstream_connections(procs):
    _, upstream = procs.testserver_http("both")
    gw = procs.airlock(url=upstream)
    with rm.client() as c:
        headers = rm.session_headers(rm.open_session(c, gw.mcp))
        quick, slow = python_sdk_calls(c, gw.mcp, headers, None)
        warm_up(gw.mcp, headers, slow, quick)
        assert_no_new_connections(c, gw.base, quick)


def test_stateless_json_answers_reuse_upstream_connections(procs):
    _, upstream = procs.testserver_http("both")
    gw = procs.airlock(url=upstream)
    headers = rm.stateless_headers("tools/call", "echo")
    with rm.client() as c:
        quick, slow = python_sdk_calls(c, gw.mcp, headers, rm.stateless_meta())
        warm_up(gw.mcp, {**headers, "Mcp-Name": "slow"}, slow, quick)
        assert_no_new_connections(c, gw.base, quick)


def test_typescript_sdk_answers_reuse_upstream_connections(procs):
    _, upstream = procs.everything_http()
    gw = procs.airlock(url=upstream)
    with rm.client() as c:
        headers = rm.session_headers(rm.open_session(c, gw.mcp))

        def quick(i: int) -> None:
            # server-everything's `echo` answers "Echo: <message>".
            r = rm.post(c, gw.mcp, rm.call_body(i, "echo", {"message": f"ping {i}"}), headers)
            assert answered(r, i, True)["content"][0]["text"] == f"Echo: ping {i}"

        slow = rm.call_body(10_000, "trigger-long-running-operation", {"duration": 0.3, "steps": 1})
        warm_up(gw.mcp, headers, slow, quick)
        assert_no_new_connections(c, gw.base, quick)
