"""Rate-limit budgets shared by replicas (`[store] url`), end to end.

A stateless-era agent's `rate_limit` budget lives in PostgreSQL: spread over
two replicas, the agent gets `max` calls in the window, not `max` per
replica, and every refusal says when the next call is free. When PostgreSQL
is gone, a rate-limited call is refused (`budget_unavailable`), never let
through unlimited; a call without a rate limit does not touch the store.
"""
from __future__ import annotations

import math
import subprocess
import time

import httpx

import rawmcp as rm
from harness import text_of
from pgcluster import pg  # noqa: F401  (the fixture)
from replicakit import start_replica

BUDGET_POLICY = {
    "version": "1",
    "default": "deny",
    "rules": {
        "echo": {"action": "allow", "rate_limit": {"max": 3, "window": 30}},
        "add": {"action": "allow"},
    },
}


def call(gw, tool: str, arguments: dict, client: str = "budget-test", req_id: int = 1) -> dict:
    """One stateless-era `tools/call` as agent `client`; its `result`."""
    meta = {**rm.stateless_meta(), "io.modelcontextprotocol/clientInfo": {"name": client, "version": "1"}}
    with httpx.Client(timeout=20) as c:
        r = rm.post(c, gw.mcp, rm.call_body(req_id, tool, arguments, meta), rm.stateless_headers("tools/call", tool))
        return rm.answer(r, req_id)["result"]


def test_a_stateless_agent_alternating_between_replicas_gets_max_calls_then_when_to_retry(procs, pg):
    a = start_replica(procs, pg.url(), "a", BUDGET_POLICY)
    b = start_replica(procs, pg.url(), "b", BUDGET_POLICY)
    for gw in (a, b):  # both upstream children running: the calls below are quick
        assert text_of(call(gw, "add", {"a": 1, "b": 2})) == "3"
    started = time.monotonic()
    results = [call(a if i % 2 == 0 else b, "echo", {"text": f"n{i}"}, req_id=i + 1) for i in range(8)]
    elapsed = time.monotonic() - started
    allowed = [r for r in results if not r.get("isError")]
    refused = [r for r in results if r.get("isError")]
    assert [text_of(r) for r in allowed] == ["n0", "n1", "n2"], results
    assert len(refused) == 5 and elapsed < 5, (elapsed, results)
    for r in refused:
        meta = r["_meta"]
        assert meta["airlock.decision"] == "rate_limited" and meta["airlock.rule"] == "echo", r
        # 3 per 30 s: the burst is spent, the next call is free one interval (10 s) after
        # the first call, in whole seconds rounded up.
        wait = meta["airlock.retry_after_s"]
        assert math.ceil(10 - elapsed) <= wait <= 10, (elapsed, r)
        assert f"Retry in {wait} s." in text_of(r), r
    # Another agent has its own budget; a rule without a rate limit is not counted.
    assert text_of(call(b, "echo", {"text": "other"}, client="another-agent")) == "other"
    assert text_of(call(a, "add", {"a": 1, "b": 2})) == "3"
    # Told to retry in N s: after N s one call is free again (on either replica), not two.
    time.sleep(refused[-1]["_meta"]["airlock.retry_after_s"])
    assert text_of(call(b, "echo", {"text": "later"})) == "later"
    again = call(a, "echo", {"text": "too soon"})
    assert again["_meta"]["airlock.decision"] == "rate_limited", again
    rows = a.audit_rows(decision="rate_limited")
    assert len(rows) == 6 and {r["tool"] for r in rows} == {"echo"}, rows


def test_with_postgresql_gone_a_rate_limited_call_is_refused_and_an_unlimited_one_is_not(procs, pg):
    a = start_replica(procs, pg.url(), "a", BUDGET_POLICY)
    assert text_of(call(a, "echo", {"text": "before"})) == "before"
    subprocess.run(pg._cmd("pg_ctl", "-D", str(pg.dir / "data"), "-m", "immediate", "-w", "stop"),
                   check=True, capture_output=True)
    refused = call(a, "echo", {"text": "after"})
    assert refused["isError"], refused
    assert refused["_meta"]["airlock.decision"] == "budget_unavailable", refused
    assert "counted in the shared store, which cannot be reached; the call was not forwarded" in text_of(refused), refused
    assert "PostgreSQL" in refused["_meta"]["airlock.reason"], refused
    assert "airlock.retry_after_s" not in refused["_meta"]
    # No rate limit, no store on the path: still forwarded.
    assert text_of(call(a, "add", {"a": 2, "b": 2})) == "4"
