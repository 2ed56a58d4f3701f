"""The gateway's log tells the story of each call (docs/operations.md): one
line per refusal, hold and human decision, with tool, upstream, agent,
outcome, decider and wait; never an argument value; values, not `Some(…)`."""
import re
import threading

import httpx

from harness import upstream_testserver
from rawmcp import call_body, client, post, stateless_headers, stateless_meta, wait_until

TOKEN = "log-test-approver-token"
SECRET = "ARGUMENT-VALUE-7f3a"
POLICY = {
    "version": "1",
    "default": "deny",
    "hide": ["secret_tool"],
    "rules": {
        "echo": {"action": "allow"},
        "add": {"action": "deny", "reason": "no sums today"},
        "delete_record": {"action": "require_approval", "reason": "destructive",
                          "approval": {"timeout": 1, "on_timeout": "deny"}},
    },
}


def call(c, url, req_id, tool, args):
    return post(c, url, call_body(req_id, tool, args, meta=stateless_meta()), stateless_headers("tools/call", tool))


def lines_with(text: str, *needles: str) -> list[str]:
    return [line for line in text.splitlines() if all(n in line for n in needles)]


def test_each_decision_is_one_log_line_without_argument_values(procs):
    gw = procs.airlock(policy=POLICY, upstream=upstream_testserver(), env={"AIRLOCK_APPROVER_TOKEN": TOKEN})
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with client() as c:
        assert call(c, gw.mcp, 1, "echo", {"text": SECRET}).status_code == 200
        assert call(c, gw.mcp, 2, "add", {"a": 1, "b": 2}).status_code == 200
        call(c, gw.mcp, 3, "secret_tool", {"x": SECRET})
        assert call(c, gw.mcp, 4, "delete_record", {"id": SECRET}).status_code == 200  # times out after 1 s

        # A human denies the next one.
        held = threading.Thread(target=lambda: call(client(), gw.mcp, 5, "delete_record", {"id": SECRET}))
        held.start()
        pending = wait_until(lambda: c.get(f"{gw.base}/api/pending", headers=auth).json()["pending"], 10)
        assert pending, "no pending call"
        r = c.post(f"{gw.base}/api/pending/{pending[0]['id']}/deny", headers=auth, json={"comment": "no"})
        assert r.status_code == 200, r.text
        held.join(10)
    log = lambda: gw.proc.stderr_text()  # noqa: E731
    assert wait_until(lambda: lines_with(log(), "held call decided", "denied_by_human"), 5), log()
    text = log()

    starting = lines_with(text, "upstream starting")
    assert starting and re.search(r"upstream=default pid=\d+ ", starting[0]), starting
    assert lines_with(text, "tools/call decided", "tool=add", "upstream=default", "outcome=denied", "no sums today")
    assert lines_with(text, "tools/call decided", "tool=secret_tool", "outcome=hidden")
    assert not lines_with(text, "tool=echo", "tools/call decided"), "allowed calls log at debug"
    assert len(lines_with(text, "call held for approval", "tool=delete_record", "outcome=held")) == 2
    timed_out = lines_with(text, "held call decided", "tool=delete_record", "outcome=timed_out")
    assert len(timed_out) == 1 and "wait_ms=" in timed_out[0] and "decider" not in timed_out[0], timed_out
    by_human = lines_with(text, "held call decided", "outcome=denied_by_human")
    assert len(by_human) == 1 and "decider=approver" in by_human[0] and "channel=api" in by_human[0], by_human
    assert "agent=" in by_human[0]
    assert SECRET not in text
    assert "Some(" not in text
