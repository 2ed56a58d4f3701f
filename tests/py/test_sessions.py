"""Agent sessions end to end (docs/policy.md "What agent session means",
docs/protocol.md "Sessions and upstream connections", docs/api.md): rate-limit
budgets belong to the agent session in each way an agent can connect; request
ids and progress tokens of stateless-era requests are rewritten on the shared
stdio child and mapped back to the right client; held calls are listed oldest
first. Raw JSON-RPC against the real `airlock` binary; every wait is bounded.
"""
from __future__ import annotations

import re
import time
from datetime import datetime

import httpx
import pytest

import rawmcp as rm
from harness import text_of, write_json
from holdkit import AGENT, ALICE, HeldCall, WebSocket, start_gateway
from test_config_e2e import FILEBOT, bearer, serve, stdio_upstream
from test_stdio_agent import calls_sent_upstream, make_agent, teed_testserver  # noqa: F401 (make_agent is a fixture)

pytestmark = pytest.mark.timeout(30)

CLIENT_INFO = "io.modelcontextprotocol/clientInfo"
# Two calls, then one every 30 s: nothing refills while a test runs.
RATE_POLICY = {"version": "1", "default": "allow",
               "rules": {"echo": {"action": "allow", "rate_limit": {"max": 2, "window": 60}}}}


def assert_echoed(result: dict, text: str):
    assert text_of(result) == text and not result.get("isError"), result


def assert_rate_limited(result: dict):
    assert result["isError"] is True, result
    meta = result["_meta"]
    assert (meta["airlock.decision"], meta["airlock.rule"]) == ("rate_limited", "echo"), meta
    assert 20 <= meta["airlock.retry_after_s"] <= 30, meta  # a burst of 2, then one every 30 s
    assert f"Retry in {meta['airlock.retry_after_s']} s" in text_of(result), result


def client_meta(name: str, version: str = "1.0") -> dict:
    meta = rm.stateless_meta()
    meta[CLIENT_INFO] = {"name": name, "version": version}
    return meta


def stateless_call(url: str, text: str, client=("raw-test", "1.0"), source: str = "127.0.0.1",
                   headers: dict | None = None) -> dict:
    """One stateless-era `echo` sent as clientInfo `client` from loopback address `source`; its result."""
    body = rm.call_body(1, "echo", {"text": text}, client_meta(*client))
    with httpx.Client(timeout=rm.TIMEOUT, transport=httpx.HTTPTransport(local_address=source)) as c:
        r = rm.post(c, url, body, {**rm.stateless_headers("tools/call", "echo"), **(headers or {})})
    return rm.answer(r, 1)["result"]


def sessions_of(gw) -> list[str]:
    return [row["session"] for row in gw.audit_rows(tool="echo")]


# ----------------------------------------------------------------------------- rate limits per agent session


def test_each_handshake_session_has_its_own_budget_and_a_new_one_starts_full(procs):
    gw = start_gateway(procs, RATE_POLICY)
    with rm.client() as c:
        def echo(sid: str, n: int) -> dict:
            r = rm.post(c, gw.mcp, rm.call_body(n, "echo", {"text": f"{sid[:6]}-{n}"}), rm.session_headers(sid))
            return rm.answer(r, n)["result"]

        a, b = rm.open_session(c, gw.mcp), rm.open_session(c, gw.mcp)
        for n in (1, 2):  # interleaved: a's calls do not spend b's budget
            assert_echoed(echo(a, n), f"{a[:6]}-{n}")
            assert_echoed(echo(b, n), f"{b[:6]}-{n}")
        assert_rate_limited(echo(a, 3))
        assert_rate_limited(echo(b, 3))

        assert c.delete(gw.mcp, headers=rm.session_headers(a)).status_code in (200, 204)
        fresh = rm.open_session(c, gw.mcp)
        assert_echoed(echo(fresh, 1), f"{fresh[:6]}-1")
        assert_echoed(echo(fresh, 2), f"{fresh[:6]}-2")
        assert_rate_limited(echo(fresh, 3))
        assert_rate_limited(echo(b, 4))  # still spent
    assert sessions_of(gw) == [a, b, a, b, a, b, fresh, fresh, fresh, b]


def test_stateless_session_without_tokens_is_client_info_at_the_client_address(procs):
    gw = start_gateway(procs, RATE_POLICY)
    alpha, beta, alpha2 = ("alpha", "1.0"), ("beta", "1.0"), ("alpha", "2.0")
    # (clientInfo, source address): four sessions, each with its own two calls
    senders = [(alpha, "127.0.0.1"), (beta, "127.0.0.1"), (alpha2, "127.0.0.1"), (alpha, "127.0.0.2")]
    for n in (1, 2):
        for client, source in senders:
            assert_echoed(stateless_call(gw.mcp, f"{client[0]}{n}", client, source), f"{client[0]}{n}")
    for client, source in senders:
        assert_rate_limited(stateless_call(gw.mcp, "one too many", client, source))
    keys = ["alpha/1.0@127.0.0.1", "beta/1.0@127.0.0.1", "alpha/2.0@127.0.0.1", "alpha/1.0@127.0.0.2"]
    assert sessions_of(gw) == keys * 3


def test_stateless_session_with_agent_tokens_is_the_agent_whatever_its_client_info(procs):
    (procs.tmp_path / "filebot.token").write_text(FILEBOT)
    policy = write_json(procs.tmp_path / "rate-policy.json", RATE_POLICY)
    gw = serve(procs, "rate-agents", stdio_upstream("test", policy=policy) + (
        '[[agent]]\nname = "claude-desktop"\ntoken_env = "AIRLOCK_TEST_AGENT"\n'
        '[[agent]]\nname = "filebot"\ntoken_file = "filebot.token"\n'))
    claude, filebot = bearer(AGENT), bearer(FILEBOT)
    # One token, two clientInfo names: one budget.
    assert_echoed(stateless_call(gw.mcp, "c1", ("alpha", "1.0"), headers=claude), "c1")
    assert_echoed(stateless_call(gw.mcp, "c2", ("beta", "1.0"), headers=claude), "c2")
    assert_rate_limited(stateless_call(gw.mcp, "c3", ("gamma", "1.0"), headers=claude))
    assert_rate_limited(stateless_call(gw.mcp, "c4", ("alpha", "1.0"), headers=claude))
    # Another token, even with the same clientInfo: its own budget.
    assert_echoed(stateless_call(gw.mcp, "f1", ("alpha", "1.0"), headers=filebot), "f1")
    assert_echoed(stateless_call(gw.mcp, "f2", ("alpha", "1.0"), headers=filebot), "f2")
    assert_rate_limited(stateless_call(gw.mcp, "f3", ("alpha", "1.0"), headers=filebot))
    assert sessions_of(gw) == ["agent:claude-desktop"] * 4 + ["agent:filebot"] * 3


@pytest.mark.parametrize("era", ["handshake", "stateless"])
def test_airlock_stdio_process_is_one_session(make_agent, era):
    agent = make_agent(policy=RATE_POLICY, env={"AIRLOCK_APPROVER_TOKEN": ALICE})
    if era == "handshake":
        agent.initialize()

    def echo(n: int, text: str) -> dict:  # stateless era: a different clientInfo on each call
        meta = client_meta(f"client-{n}") if era == "stateless" else None
        return agent.request(rm.call_body(n, "echo", {"text": text}, meta))["result"]

    assert_echoed(echo(2, "one"), "one")
    assert_echoed(echo(3, "two"), "two")
    assert_rate_limited(echo(4, "three"))
    assert sessions_of(agent.gateway()) == [f"stdio:{agent.proc.popen.pid}"] * 3


# ----------------------------------------------------------------------------- the shared stdio child


class As(HeldCall):
    """A stateless-era tools/call (on its own thread) sent as clientInfo `client`."""

    def __init__(self, client: str, url: str, tool: str, arguments: dict, req_id=1, **kw):
        super().__init__(url, tool, arguments, req_id=req_id, **kw)
        self.client = client

    def body(self) -> dict:
        body = super().body()
        body["params"]["_meta"][CLIENT_INFO] = {"name": self.client, "version": "1.0"}
        return body

    def progress(self) -> list[tuple]:
        """(token, progress, total, message) of each progress notification on this call's stream."""
        notes = [m["params"] for m in self.messages if m.get("method") == "notifications/progress"]
        return [(p["progressToken"], p["progress"], p.get("total"), p["message"]) for p in notes]


@pytest.fixture
def shared(procs):
    """A quick-mode gateway whose stdio upstream is teed: `log` has every line the shared child read."""
    log = procs.tmp_path / "sent-upstream.jsonl"
    gw = procs.airlock(upstream=teed_testserver(log, procs.tmp_path / "upstream-marker"))
    return gw, log


def wait_sent(log, tool: str, n: int = 1) -> list[dict]:
    """The `tool` calls the shared child has read, once there are at least `n`."""
    assert rm.wait_until(lambda: len(calls_sent_upstream(log, tool)) >= n, 10), calls_sent_upstream(log, tool)
    return calls_sent_upstream(log, tool)


def test_overlapping_stateless_calls_with_the_same_id_get_their_own_answers(shared):
    gw, log = shared
    slow = As("client-a", gw.mcp, "slow", {"steps": 2, "delay_ms": 750})
    slow.start()
    wait_sent(log, "slow")  # in flight upstream under id 1 when the others arrive with id 1
    # c's id is the string "1": the type comes back as sent
    echoes = [As(f"client-{x}", gw.mcp, "echo", {"text": f"only for {x}"}, req_id=i)
              for x, i in (("b", 1), ("c", "1"))]
    for e in echoes:
        e.start()
    for x, e in zip("bc", echoes):
        assert_echoed(e.result(10), f"only for {x}")
        assert slow.finished_at is None or slow.finished_at > e.finished_at  # answered while slow still ran
    assert text_of(slow.result(10)) == "done after 2 steps"
    for call in (slow, *echoes):  # exactly one answer each, carrying the client's own id
        assert [m["id"] for m in call.messages if "method" not in m] == [call.req_id], call.messages
    ids = [m["id"] for m in calls_sent_upstream(log, "slow") + calls_sent_upstream(log, "echo")]
    assert len(set(ids)) == 3 and all(re.fullmatch(r"airlock-\d+", str(i)) for i in ids), ids


def test_progress_of_overlapping_calls_with_the_same_token_reaches_only_its_client(shared):
    gw, log = shared
    a = As("client-a", gw.mcp, "slow", {"steps": 3, "delay_ms": 300}, progress_token="p1")
    b = As("client-b", gw.mcp, "slow", {"steps": 2, "delay_ms": 400}, progress_token="p1")
    c = As("client-c", gw.mcp, "slow", {"steps": 1, "delay_ms": 400}, progress_token=1)  # an integer token
    a.start()
    wait_sent(log, "slow")
    b_sent_at = time.monotonic()
    b.start()
    c.start()
    assert text_of(a.result(10)) == "done after 3 steps"
    assert text_of(b.result(10)) == "done after 2 steps"
    assert a.progress() == [("p1", i, 3, f"step {i}/3") for i in (1, 2, 3)], a.messages
    assert b.progress() == [("p1", i, 2, f"step {i}/2") for i in (1, 2)], b.messages
    assert text_of(c.result(10)) == "done after 1 steps" and c.progress() == [(1, 1, 1, "step 1/1")], c.messages
    assert a.answer["id"] == b.answer["id"] == c.answer["id"] == 1
    assert a.finished_at > b_sent_at  # they overlapped
    sent = wait_sent(log, "slow", 3)
    tokens = [m["params"]["_meta"]["progressToken"] for m in sent]
    assert len(set(tokens)) == 3 and all(re.fullmatch(r"airlock-p-\d+", t) for t in tokens), tokens


# ----------------------------------------------------------------------------- GET /api/pending order


def created_at(item: dict) -> datetime:
    return datetime.fromisoformat(item["created_at"].replace("Z", "+00:00"))


def test_pending_calls_are_listed_oldest_first_by_the_api_and_the_websocket_snapshot(procs):
    gw = start_gateway(procs)  # delete_* is held
    labels = ["first", "second", "third", "fourth"]  # four: a hash order passes by chance 1 time in 24
    ids = []
    for label in labels:
        HeldCall(gw.mcp, "delete_record", {"id": label}).start()
        [item] = gw.wait_pending(1, where=lambda p: p["arguments"]["id"] == label)
        ids.append(item["id"])
        time.sleep(0.01)  # distinct created_at milliseconds
    listed = gw.pending()
    assert [p["id"] for p in listed] == ids, listed
    assert [p["arguments"]["id"] for p in listed] == labels
    stamps = [created_at(p) for p in listed]
    assert stamps == sorted(stamps) and len(set(stamps)) == 4, stamps

    ws = WebSocket(gw.port, bearer(ALICE))
    assert ws.status == 101
    snapshot = ws.recv()
    assert snapshot["type"] == "snapshot" and snapshot["pending"] == listed, snapshot
    ws.close()

    assert gw.decide(ids[1], "deny").status_code == 200
    gw.wait_gone(ids[1])
    assert [p["id"] for p in gw.pending()] == [ids[0], ids[2], ids[3]]
