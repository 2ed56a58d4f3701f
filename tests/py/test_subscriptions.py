"""2026-07-28 `subscriptions/listen` through Airlock: the stream's notifications
carry the listen request's id in `_meta["io.modelcontextprotocol/subscriptionId"]`,
which is how the client tells subscriptions apart. Stateless-era requests share
one stdio child, whose request ids Airlock rewrites; the notifications must come
back on the right stream with the client's own id.
"""
from __future__ import annotations

import json
import queue
import threading

import httpx

import rawmcp as rm
from harness import text_of, upstream_testserver

SUBSCRIPTION = "io.modelcontextprotocol/subscriptionId"


class Listen(threading.Thread):
    """A `subscriptions/listen` POST read as a stream; messages go to `.messages`."""

    def __init__(self, url: str, req_id, notifications: dict):
        super().__init__(daemon=True)
        self.url, self.req_id = url, req_id
        self.body = {"jsonrpc": "2.0", "id": req_id, "method": "subscriptions/listen",
                     "params": {"_meta": rm.stateless_meta(), "notifications": notifications}}
        self.messages: queue.Queue = queue.Queue()
        self.stop = threading.Event()

    def run(self):
        headers = {"Content-Type": "application/json", "Accept": rm.ACCEPT,
                   **rm.stateless_headers("subscriptions/listen")}
        with httpx.Client(timeout=httpx.Timeout(30.0, connect=5.0)) as c:
            with c.stream("POST", self.url, content=json.dumps(self.body), headers=headers) as r:
                for m in rm.stream_messages(r):
                    self.messages.put(m)
                    if self.stop.is_set():
                        return

    def next(self, timeout: float = 10) -> dict:
        return self.messages.get(timeout=timeout)


def test_listen_streams_are_acknowledged_with_the_clients_own_ids(procs):
    gw = procs.airlock(policy={"version": "1", "default": "allow"}, upstream=upstream_testserver())
    first = Listen(gw.mcp, "listen-1", {"toolsListChanged": True})
    second = Listen(gw.mcp, 7, {"toolsListChanged": True})
    first.start()
    ack = first.next()
    assert ack["method"] == "notifications/subscriptions/acknowledged", ack
    assert ack["params"]["_meta"][SUBSCRIPTION] == "listen-1", ack
    second.start()
    ack = second.next()
    assert ack["params"]["_meta"][SUBSCRIPTION] == 7, ack
    # The shared child still answers ordinary stateless calls beside the open streams.
    with rm.client() as c:
        body = rm.call_body(9, "echo", {"text": "beside"}, rm.stateless_meta())
        r = rm.post(c, gw.mcp, body, rm.stateless_headers("tools/call", "echo"))
        assert text_of(rm.answer(r, 9)["result"]) == "beside"
    first.stop.set()
    second.stop.set()


def test_a_policy_reload_is_announced_on_listen_streams_that_asked_for_tool_list_changes(procs, tmp_path):
    from test_policy_cli import ALLOW_ECHO, HIDE_ECHO, replace_file

    policy = tmp_path / "listen-policy.json"
    replace_file(policy, ALLOW_ECHO)
    gw = procs.airlock(policy=str(policy), upstream=upstream_testserver())
    tools = Listen(gw.mcp, "listen-1", {"toolsListChanged": True})
    prompts = Listen(gw.mcp, "listen-2", {"promptsListChanged": True})
    tools.start()
    prompts.start()
    assert tools.next()["params"]["notifications"] == {"toolsListChanged": True}
    assert prompts.next()["method"] == "notifications/subscriptions/acknowledged"

    replace_file(policy, HIDE_ECHO)
    changed = tools.next(timeout=5)
    assert changed["method"] == "notifications/tools/list_changed", changed
    assert changed["params"]["_meta"][SUBSCRIPTION] == "listen-1", changed
    # A stream that did not ask for tool-list changes gets none (the spec's MUST NOT).
    try:
        unexpected = prompts.next(timeout=2)
    except queue.Empty:
        unexpected = None
    assert unexpected is None, unexpected
    tools.stop.set()
    prompts.stop.set()
