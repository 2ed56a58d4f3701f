"""The README example in miniature: a real client through a real gateway."""
from harness import run_driver, upstream_testserver, text_of

POLICY = {
    "version": "1",
    "default": "deny",
    "hide": ["secret_tool"],
    "rules": {"echo": {"action": "allow"}, "crash": {"action": "deny", "reason": "no crashing"}},
}


def test_allowed_denied_and_hidden_calls_through_http(procs):
    gw = procs.airlock(policy=POLICY, upstream=upstream_testserver())
    report = run_driver("sdk1", [
        {"op": "list"},
        {"op": "call", "name": "echo", "args": {"text": "hi"}},
        {"op": "call", "name": "crash", "args": {}},
        {"op": "call", "name": "secret_tool", "args": {}},
        {"op": "close"},
    ], url=gw.mcp)
    assert report["_exit"] == 0, report
    listed, echo, crash, secret = report["steps"][:4]
    assert listed["tools"] == ["echo"]
    assert text_of(echo["result"]) == "hi"
    assert crash["result"]["isError"] is True
    assert "no crashing" in text_of(crash["result"])
    assert crash["result"]["_meta"]["airlock.decision"] == "denied"
    assert secret["error"]["code"] == -32602
