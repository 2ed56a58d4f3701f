"""Parse once (issue 12): an allowed `tools/call` is read by a JSON parser
exactly once on its way through Airlock, whatever the agent side (HTTP,
stdio), the era (handshake, stateless) and the upstream (HTTP, stdio).

The proof is `airlock_body_parses_total` in `/metrics`: every JSON read of an
agent's message counts on it — the edge's one pass, and any later re-read of
the same bytes (a generic params peek, a `result` peek, a rewrite that parses
again). Over N allowed calls after warm-up it must rise by exactly N (and
`airlock_calls_total{outcome="allowed"}` by N too, so the calls really were
policed and allowed). Not timed: the assertions are counts.

Every call carries arguments and a `progressToken`, so the id and
progress-token rewrites of a shared stdio child are on the path too.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest

import rawmcp as rm
from harness import Airlock, airlock_stdio_cmd, upstream_testserver
from test_stdio_agent import StdioAgent

CALLS = 20
POLICY = {"version": "1", "default": "deny", "rules": {"echo": {"action": "allow"}}}


def metric(text: str, name: str) -> int:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return int(float(line.split(" ")[-1]))
    raise AssertionError(f"no {name} in /metrics:\n{text}")


def counts(base: str) -> tuple[int, int]:
    text = httpx.get(f"{base}/metrics", timeout=10).text
    return (metric(text, "airlock_body_parses_total"),
            metric(text, 'airlock_calls_total{outcome="allowed"}'))


def call(i: int, meta: dict | None) -> dict:
    # A nested object, a repeated key name in sibling objects, an escaped key,
    # a progress token: everything the one pass reads and checks.
    meta = {**(meta or {}), "progressToken": f"tok-{i}"}
    body = rm.call_body(i, "echo", {"text": f"ping {i}", "nested": {"text": [1, {"text": "x"}]}}, meta)
    body["params"]["arguments"]["caf\u00e9"] = "\u2028"
    return body


def assert_one_parse_per_call(base: str, one_call) -> None:
    for i in range(1, 4):  # warm-up: sessions, pooled connections, children
        one_call(i)
    parses, allowed = counts(base)
    for i in range(100, 100 + CALLS):
        one_call(i)
    parses_after, allowed_after = counts(base)
    assert allowed_after - allowed == CALLS, (allowed, allowed_after)
    assert parses_after - parses == CALLS, (
        f"{parses_after - parses} JSON reads of the agents' messages for {CALLS} allowed calls")


def http_gateway(procs, upstream: str) -> Airlock:
    if upstream == "http":
        _, url = procs.testserver_http("both")
        return procs.airlock(policy=POLICY, url=url)
    return procs.airlock(policy=POLICY, upstream=upstream_testserver("both"))


@pytest.mark.parametrize("upstream", ["http", "stdio"])
def test_http_agent_handshake_era_one_parse_per_allowed_call(procs, upstream):
    gw = http_gateway(procs, upstream)
    with rm.client() as c:
        headers = rm.session_headers(rm.open_session(c, gw.mcp))

        def one_call(i: int) -> None:
            r = rm.post(c, gw.mcp, call(i, None), headers)
            assert rm.answer(r, i)["result"]["content"][0]["text"].startswith(f"ping {i}"), r.text

        assert_one_parse_per_call(gw.base, one_call)


@pytest.mark.parametrize("upstream", ["http", "stdio"])
def test_http_agent_stateless_era_one_parse_per_allowed_call(procs, upstream):
    gw = http_gateway(procs, upstream)
    headers = rm.stateless_headers("tools/call", "echo")
    with rm.client() as c:
        def one_call(i: int) -> None:
            r = rm.post(c, gw.mcp, call(i, rm.stateless_meta()), headers)
            assert rm.answer(r, i)["result"]["content"][0]["text"].startswith(f"ping {i}"), r.text

        assert_one_parse_per_call(gw.base, one_call)


@pytest.mark.parametrize("era", ["handshake", "stateless"])
@pytest.mark.parametrize("upstream", ["http", "stdio"])
def test_stdio_agent_one_parse_per_allowed_call(procs, tmp_path, era, upstream):
    if upstream == "http":
        _, url = procs.testserver_http("both")
        cmd = airlock_stdio_cmd(tmp_path, POLICY, url=url)
    else:
        cmd = airlock_stdio_cmd(tmp_path, POLICY, upstream_testserver("both"))
    agent = StdioAgentCmd(procs, cmd)
    try:
        if era == "handshake":
            agent.initialize()
        meta = rm.stateless_meta() if era == "stateless" else None

        def one_call(i: int) -> None:
            answer = agent.request(call(i, meta))
            assert answer["result"]["content"][0]["text"].startswith(f"ping {i}"), answer

        assert_one_parse_per_call(f"http://127.0.0.1:{agent.gateway().port}", one_call)
    finally:
        agent.close_stdin()


class StdioAgentCmd(StdioAgent):
    """A `StdioAgent` started from a ready command line (an HTTP upstream too)."""

    def __init__(self, procs, cmd: list[str]):
        self.audit = Path(cmd[cmd.index("--audit") + 1])
        self.proc = procs.start(cmd, stdin=subprocess.PIPE)
        self.stash = []
