"""Resumable event streams through Airlock (2025-11-25 transports, "Resumability and Redelivery").

Upstream: the Python SDK's conformance server (tests/servers/everything_server.py, `mcp` 2.x, with
an event store and `retry: 100`); its `test_reconnection` tool closes the POST's SSE stream mid-call.
"""
from __future__ import annotations

import asyncio
import time

import httpx
import pytest

import rawmcp as rm
from harness import PYTHON, REPO, Processes
from holdkit import start_gateway

EVERYTHING_PY = REPO / "tests" / "servers" / "everything_server.py"
ALLOW_ALL = {"version": "1", "default": "allow"}
HOLD_SIMPLE = {
    "version": "1",
    "default": "allow",
    "rules": {"test_simple_text": {"action": "require_approval", "reason": "try a resume"}},
}


@pytest.fixture
def procs(tmp_path):
    p = Processes(tmp_path)
    yield p
    p.stop_all()


def python_upstream(procs) -> str:
    p = procs.start([PYTHON, EVERYTHING_PY, "--port", "0"])
    return p.wait_for_line("LISTENING ", timeout=60).split(" ", 1)[1].strip()


def sse_events(resp: httpx.Response):
    """Yields each SSE event of a streaming response as a dict of its fields (`data` joined)."""
    buf = ""
    for chunk in resp.iter_text():
        buf += chunk.replace("\r\n", "\n")
        while "\n\n" in buf:
            frame, buf = buf.split("\n\n", 1)
            event: dict = {}
            for line in frame.split("\n"):
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "data":
                    event["data"] = event.get("data", "") + value
                elif name:
                    event[name] = value
            yield event


def test_sdk_client_resumes_a_stream_the_upstream_closed_for_polling(procs):
    """The SDK server closes the POST stream after a priming event (id + retry); the SDK client
    reconnects with GET + Last-Event-ID through Airlock and gets the tool's result."""
    from mcp import Client

    gw = procs.airlock(policy=ALLOW_ALL, url=python_upstream(procs))

    async def run():
        async with Client(gw.mcp, mode="legacy", read_timeout_seconds=20) as client:
            result = await client.call_tool("test_reconnection", {})
            return [c.text for c in result.content if getattr(c, "text", None)]

    assert asyncio.run(run()) == ["Reconnection test completed"]


def test_priming_event_id_and_retry_pass_through(procs):
    """The upstream's priming event reaches the agent with its id and `retry`; the stream then ends
    without a made-up error, and GET + Last-Event-ID on Airlock's endpoint replays the rest."""
    gw = procs.airlock(policy=ALLOW_ALL, url=python_upstream(procs))
    with httpx.Client(timeout=httpx.Timeout(20.0, connect=5.0)) as c:
        sid = rm.open_session(c, gw.mcp)
        h = rm.session_headers(sid)
        with c.stream("POST", gw.mcp, json=rm.call_body(7, "test_reconnection"),
                      headers={**h, "Accept": rm.ACCEPT}) as r:
            events = list(sse_events(r))
        priming = events[0]
        assert priming.get("id") and priming.get("retry") == "100" and priming.get("data", "") == "", events
        assert not any('"id":7' in e.get("data", "") for e in events), events
        last = [e["id"] for e in events if e.get("id")][-1]
        time.sleep(0.3)
        with c.stream("GET", gw.mcp, headers={**h, "Accept": "text/event-stream", "Last-Event-ID": last}) as r:
            assert r.status_code == 200
            answer = None
            for e in sse_events(r):
                if '"id":7' in e.get("data", ""):
                    answer = e["data"]
                    break
        assert answer and "Reconnection test completed" in answer, answer


def test_held_call_whose_stream_dropped_is_resumed_with_last_event_id(procs):
    """A held call's stream opens with a priming event of Airlock's own; the agent drops it, the hold
    stays open, and a GET with that Last-Event-ID gets the progress, the decision and the result."""
    gw = start_gateway(procs, HOLD_SIMPLE, url=python_upstream(procs), progress=0.3)
    with httpx.Client(timeout=httpx.Timeout(20.0, connect=5.0)) as c:
        sid = rm.open_session(c, gw.mcp)
        h = rm.session_headers(sid)
        body = rm.call_body(3, "test_simple_text", meta={"progressToken": "p1"})
        with c.stream("POST", gw.mcp, json=body, headers={**h, "Accept": rm.ACCEPT}) as r:
            first = next(sse_events(r))
        assert first["id"].startswith("airlock-") and first.get("retry") and first.get("data", "") == "", first
        [pending] = gw.wait_pending(1)
        time.sleep(1.0)  # the stream is gone; the hold waits for a resume
        assert [p["id"] for p in gw.pending()] == [pending["id"]]
        with c.stream("GET", gw.mcp, headers={**h, "Accept": "text/event-stream", "Last-Event-ID": first["id"]}) as r:
            assert r.status_code == 200, r.read()
            seen = []
            for e in sse_events(r):
                seen.append(e)
                if len(seen) == 1:
                    assert gw.decide(pending["id"], "approve").status_code == 200
                if '"id":3' in e.get("data", ""):
                    break
        answer = seen[-1]["data"]
        assert "This is a simple text response for testing." in answer, seen
        assert all(e.get("id") for e in seen), seen
    rows = gw.decision_rows(pending["id"])
    assert [r["decision"] for r in rows][-1] == "approved", rows


def test_resume_with_an_airlock_id_from_another_session_is_refused(procs):
    gw = start_gateway(procs, HOLD_SIMPLE, url=python_upstream(procs))
    with httpx.Client(timeout=httpx.Timeout(20.0, connect=5.0)) as c:
        sid = rm.open_session(c, gw.mcp)
        other = rm.open_session(c, gw.mcp)
        with c.stream("POST", gw.mcp, json=rm.call_body(3, "test_simple_text"),
                      headers={**rm.session_headers(sid), "Accept": rm.ACCEPT}) as r:
            first = next(sse_events(r))
        r = c.get(gw.mcp, headers={**rm.session_headers(other), "Accept": "text/event-stream",
                                   "Last-Event-ID": first["id"]})
        assert r.status_code == 400, r.text
