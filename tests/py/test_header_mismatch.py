"""Stateless-era (2026-07-28) routing headers are checked against the body before the policy runs:
a request whose `Mcp-Name` / `Mcp-Method` header disagrees with the body is rejected with HTTP 400
and JSON-RPC -32020 and never reaches the upstream (testserver over HTTP, with --log-requests)."""
from __future__ import annotations

import base64
import json
import time

import httpx
import pytest

ENVELOPE = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "raw-http", "version": "1.0.0"},
}
POLICY = {
    "version": "1",
    "default": "deny",
    "hide": ["secret_tool"],
    "rules": {
        "echo": {"action": "allow"},
        "add": {"action": "allow"},
        "delete_record": {"action": "deny", "reason": "records are kept forever"},
    },
}
ARGS = {"echo": {"text": "hi"}, "add": {"a": 1, "b": 2}, "delete_record": {"id": "7"}, "secret_tool": {}}


def b64(value: str) -> str:
    return "=?base64?" + base64.b64encode(value.encode()).decode() + "?="


@pytest.fixture
def gateway(procs, tmp_path):
    log = tmp_path / "upstream-requests.jsonl"
    _, url = procs.testserver_http("both", "--log-requests", str(log))
    gw = procs.airlock(policy=POLICY, url=url)
    return gw, log


def upstream_requests(log) -> list[dict]:
    if not log.exists():
        return []
    return [r for r in map(json.loads, log.read_text().splitlines()) if r["kind"] == "request"]


def post(url: str, tool: str, headers: dict, req_id: int = 7) -> httpx.Response:
    body = {"jsonrpc": "2.0", "id": req_id, "method": "tools/call",
            "params": {"name": tool, "arguments": ARGS[tool], "_meta": ENVELOPE}}
    base = {
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/call",
    }
    base.update(headers)
    return httpx.post(url, content=json.dumps(body), headers={k: v for k, v in base.items() if v is not None}, timeout=10)


def rpc(resp: httpx.Response) -> dict:
    if resp.headers.get("content-type", "").startswith("text/event-stream"):
        datas = [line[5:].strip() for line in resp.text.splitlines() if line.startswith("data:") and line[5:].strip()]
        return json.loads(datas[-1])
    return resp.json()


def test_matching_headers_reach_the_upstream(gateway):
    """Control for the tests below: the log does record a call that gets through."""
    gw, log = gateway
    resp = post(gw.mcp, "echo", {"mcp-name": "echo"})
    assert resp.status_code == 200, resp.text
    assert rpc(resp)["result"]["content"][0]["text"] == "hi"
    assert any('"echo"' in r["body"] for r in upstream_requests(log))


@pytest.mark.parametrize("body_tool", ["delete_record", "secret_tool", "add"], ids=["denied", "hidden", "allowed"])
@pytest.mark.parametrize("header", ["plain", "base64"])
def test_mcp_name_naming_another_tool_than_the_body_is_rejected_before_the_upstream(gateway, body_tool, header):
    gw, log = gateway
    before = len(upstream_requests(log))
    name = "echo" if header == "plain" else b64("echo")
    resp = post(gw.mcp, body_tool, {"mcp-name": name})
    assert resp.status_code == 400, resp.text
    err = resp.json()
    assert err["error"]["code"] == -32020, err
    assert err.get("id") == 7
    time.sleep(0.2)
    after = upstream_requests(log)
    assert len(after) == before, after[before:]
    assert not any(body_tool in r["body"] for r in after)


def test_missing_mcp_name_is_rejected_before_the_upstream(gateway):
    gw, log = gateway
    before = len(upstream_requests(log))
    resp = post(gw.mcp, "delete_record", {})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"] == -32020
    time.sleep(0.2)
    assert len(upstream_requests(log)) == before


def test_mcp_method_disagreeing_with_the_body_is_rejected_before_the_upstream(gateway):
    gw, log = gateway
    before = len(upstream_requests(log))
    resp = post(gw.mcp, "delete_record", {"mcp-method": "tools/list", "mcp-name": "delete_record"})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"] == -32020
    time.sleep(0.2)
    assert len(upstream_requests(log)) == before


def test_base64_mcp_name_matching_a_denied_body_is_decoded_and_denied_by_policy(gateway):
    gw, log = gateway
    before = len(upstream_requests(log))
    resp = post(gw.mcp, "delete_record", {"mcp-name": b64("delete_record")})
    assert resp.status_code == 200, resp.text
    result = rpc(resp)["result"]
    assert result["isError"] is True and result["_meta"]["airlock.decision"] == "denied"
    time.sleep(0.2)
    assert len(upstream_requests(log)) == before
