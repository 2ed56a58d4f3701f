"""2026-07-28 multi-round-trip requests (MRTR) whose `input_required` answers
come as SSE streams, not JSON: the retry that answers the server's questions is
the same logical call, so it must neither use another rate-limit slot nor be
held for approval a second time, whichever way the upstream framed its answer.

The upstream is a minimal stateless MCP server in this file that always answers
`tools/call` as an event stream (the project's test server answers these with
JSON), so the streamed path is what is exercised.
"""
from __future__ import annotations

import json
import threading

import pytest

import rawmcp as rm
from harness import text_of
from holdkit import start_gateway

ROUNDS = 2  # questions the upstream asks before it answers


def streaming_upstream() -> rm.TinyUpstream:
    """`ask` asks ROUNDS questions (requestState `round-1`, `round-2`, …), then
    answers `answered after N rounds`; every answer is one SSE `message` event."""

    def respond(body: dict):
        payload = json.dumps({"jsonrpc": "2.0", "id": body.get("id"), "result": result(body)})
        return "text/event-stream", [], f"event: message\ndata: {payload}\n\n".encode()

    return rm.TinyUpstream(respond)


def result(body: dict) -> dict:
    params = body.get("params") or {}
    state = params.get("requestState")
    done = int(state.split("-")[1]) if state else 0
    if body.get("method") != "tools/call":
        return {"resultType": "complete"}
    if done < ROUNDS:
        question = {"method": "elicitation/create",
                    "params": {"mode": "form", "message": f"question {done + 1}",
                               "requestedSchema": {"type": "object", "properties": {}}}}
        return {"resultType": "input_required", "inputRequests": {f"q{done + 1}": question},
                "requestState": f"round-{done + 1}"}
    return {"resultType": "complete", "isError": False,
            "content": [{"type": "text", "text": f"answered after {done} rounds"}]}


@pytest.fixture
def upstream():
    u = streaming_upstream()
    yield u
    u.close()


def ask(client, gw, req_id: int, state: str | None = None, topic: str = "x") -> dict:
    """One `tools/call` of `ask` (a retry when `state` is given); returns its result."""
    body = rm.call_body(req_id, "ask", {"topic": topic}, rm.stateless_meta())
    if state:
        n = int(state.split("-")[1])
        body["params"]["requestState"] = state
        body["params"]["inputResponses"] = {f"q{n}": {"action": "accept", "content": {}}}
    r = rm.post(client, gw.mcp, body, rm.stateless_headers("tools/call", "ask"), timeout=20)
    response = rm.answer(r, req_id)
    assert "result" in response, response
    return response["result"]


def answer_every_round(client, gw, first: dict) -> dict:
    result, req_id = first, 10
    while result.get("resultType") == "input_required":
        assert result["requestState"].startswith("round-"), result
        req_id += 1
        result = ask(client, gw, req_id, result["requestState"])
    return result


def test_streamed_input_required_retries_do_not_use_up_the_rate_limit(procs, upstream):
    gw = start_gateway(procs, {"version": "1", "default": "allow",
                               "rules": {"ask": {"action": "allow", "rate_limit": {"max": 1, "window": 60}}}},
                       url=upstream.url)
    with rm.client() as c:
        first = ask(c, gw, 1)
        assert first["resultType"] == "input_required", first
        done = answer_every_round(c, gw, first)
        assert text_of(done) == f"answered after {ROUNDS} rounds", done
        # The limit is real: a new call (no requestState) is refused.
        again = ask(c, gw, 50)
        assert again["isError"] is True and again["_meta"]["airlock.decision"] == "rate_limited", again
    assert len(upstream.calls) == 1 + ROUNDS


def test_streamed_input_required_rounds_of_an_approved_call_are_not_held_again(procs, upstream):
    gw = start_gateway(procs, {"version": "1", "default": "allow",
                               "rules": {"ask": {"action": "require_approval", "reason": "asks things"}}},
                       url=upstream.url)
    result: dict = {}
    with rm.client() as c:
        held = threading.Thread(target=lambda: result.update(ask(c, gw, 1)), daemon=True)
        held.start()
        [item] = gw.wait_pending(1)
        assert gw.decide(item["id"], "approve").status_code == 200
        held.join(20)
        assert result.get("resultType") == "input_required", result
        # Every further round goes straight upstream: nothing is held again.
        done = answer_every_round(c, gw, result)
        assert text_of(done) == f"answered after {ROUNDS} rounds", done
    assert gw.pending() == []
    assert len(upstream.calls) == 1 + ROUNDS


def test_a_retry_with_other_arguments_is_a_new_call_against_the_rate_limit(procs, upstream):
    gw = start_gateway(procs, {"version": "1", "default": "allow",
                               "rules": {"ask": {"action": "allow", "rate_limit": {"max": 1, "window": 60}}}},
                       url=upstream.url)
    with rm.client() as c:
        first = ask(c, gw, 1)
        assert first["resultType"] == "input_required", first
        # The continuation is bound to the arguments it was given for: another
        # topic under the same requestState spends budget, and there is none left.
        swapped = ask(c, gw, 2, first["requestState"], topic="something else")
        assert swapped["isError"] is True and swapped["_meta"]["airlock.decision"] == "rate_limited", swapped
    assert len(upstream.calls) == 1
    assert [row["decision"] for row in gw.audit_rows(tool="ask")] == ["allowed", "rate_limited"]
