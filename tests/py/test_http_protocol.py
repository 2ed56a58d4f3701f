"""Raw Streamable HTTP against `airlock serve`: framing errors, Origin/Host
checks, sessions (handshake era), header checks (stateless era), byte-exact
pass-through, and agent tokens. Every request has a short timeout: nothing may hang.
"""
import base64
import json
import socket
import time

import pytest

from harness import Processes, upstream_testserver
from rawmcp import (
    ACCEPT, HANDSHAKE_VERSION, STATELESS_VERSION, TinyUpstream, answer, call_body, client, init_body,
    open_session, post, read_log, rpc_error_of, session_headers, sse_messages, stateless_headers,
    stateless_meta,
)

AGENT_TOKEN = "agent-token-0123456789abcdef"


@pytest.fixture(scope="module")
def mprocs(tmp_path_factory):
    p = Processes(tmp_path_factory.mktemp("http-protocol"))
    yield p
    p.stop_all()


@pytest.fixture(scope="module")
def gw(mprocs):
    """Quick mode, allow-all, in front of a stdio testserver."""
    return mprocs.airlock(upstream=upstream_testserver())


@pytest.fixture(scope="module")
def http_upstream(mprocs):
    """An HTTP testserver logging every request and response it sees."""
    log = mprocs.tmp_path / "upstream-requests.jsonl"
    _, url = mprocs.testserver_http("both", "--log-requests", str(log))
    return url, log


@pytest.fixture(scope="module")
def gw_http(mprocs, http_upstream):
    url, log = http_upstream
    gw = mprocs.airlock(
        policy={"version": "1", "default": "allow", "rules": {"delete_record": {"action": "deny", "reason": "no deleting"}}},
        url=url,
    )
    return gw, log


@pytest.fixture
def c():
    with client() as c:
        yield c


def find_request(log, needle: str) -> dict:
    hits = [r for r in read_log(log) if r["kind"] == "request" and needle in r["body"]]
    assert len(hits) == 1, f"expected one upstream request containing {needle!r}, got {hits}"
    return hits[0]


def sse_data(text: str) -> list[str]:
    """The non-empty `data:` payloads of an SSE body, as text."""
    return [line[6:] for line in text.splitlines() if line.startswith("data: ") and line[6:].strip()]


def response_for(log, n: int) -> dict:
    hits = [r for r in read_log(log) if r["kind"] == "response" and r["n"] == n]
    assert hits, f"upstream logged no response #{n}"
    return hits[0]


# ----------------------------------------------------------------------------- framing errors


def test_malformed_json_is_a_400_parse_error(gw, c):
    r = post(c, gw.mcp, b'{"jsonrpc":"2.0","id":1,"method":')
    assert r.status_code == 400
    err = rpc_error_of(r)
    assert err["code"] == -32700
    assert "parse error" in err["message"].lower()


def test_batch_array_is_a_400_invalid_request(gw, c):
    r = post(c, gw.mcp, [init_body(1), init_body(2)])
    assert r.status_code == 400
    err = rpc_error_of(r)
    assert err["code"] == -32600
    assert "batch" in err["message"].lower()


def test_missing_jsonrpc_field_is_an_invalid_request(gw, c):
    body = init_body()
    del body["jsonrpc"]
    r = post(c, gw.mcp, body)
    assert r.status_code == 400
    err = rpc_error_of(r)
    assert err["code"] == -32600
    assert "jsonrpc" in err["message"]


def test_invalid_utf8_is_a_400_parse_error(gw, c):
    r = post(c, gw.mcp, b'{"jsonrpc":"2.0","id":1,"method":"ping\xff\xfe"}')
    assert r.status_code == 400
    err = rpc_error_of(r)
    assert err["code"] == -32700
    assert "utf-8" in err["message"].lower()


def test_non_json_content_type_is_415(gw, c):
    r = post(c, gw.mcp, json.dumps(init_body()), {"Content-Type": "text/plain"})
    assert r.status_code == 415
    assert "content-type" in rpc_error_of(r)["message"].lower()


def test_body_over_the_configured_cap_is_413(mprocs, c):
    cfg = mprocs.tmp_path / "capped.toml"
    cfg.write_text(
        "max_body_bytes = 1024\n\n[[upstream]]\nname = \"up\"\n"
        f"command = {json.dumps(upstream_testserver()[0])}\n"
        f"args = {json.dumps(upstream_testserver()[1:])}\n"
    )
    gw = mprocs.airlock(config=str(cfg))
    big = call_body(1, "echo", {"text": "x" * 4096})
    r = post(c, gw.endpoint("up"), big)
    assert r.status_code == 413
    err = rpc_error_of(r)
    assert "1024" in err["message"] and "limit" in err["message"]
    # A body under the cap on the same gateway is fine.
    r = post(c, gw.endpoint("up"), init_body())
    assert r.status_code == 200 and "result" in answer(r, 1)


# ----------------------------------------------------------------------------- Origin / Host


def test_foreign_origin_is_403(gw, c):
    r = post(c, gw.mcp, init_body(), {"Origin": "http://evil.example"})
    assert r.status_code == 403
    assert "evil.example" in rpc_error_of(r)["message"]


def test_rebound_host_is_403(gw, c):
    r = post(c, gw.mcp, init_body(), {"Host": "evil.example"})
    assert r.status_code == 403
    err = rpc_error_of(r)
    assert "Host" in err["message"] and "evil.example" in err["message"]


def test_localhost_origin_is_allowed(gw, c):
    r = post(c, gw.mcp, init_body(), {"Origin": "http://localhost:3000"})
    assert r.status_code == 200
    assert answer(r, 1)["result"]["serverInfo"]["name"] == "airlock-testserver"
    assert r.headers.get("mcp-session-id")


# ----------------------------------------------------------------------------- handshake-era sessions


def test_initialize_issues_a_session_id_that_later_requests_use(gw, c):
    sid = open_session(c, gw.mcp)
    r = post(c, gw.mcp, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, session_headers(sid))
    assert r.status_code == 200
    names = [t["name"] for t in answer(r, 2)["result"]["tools"]]
    assert "echo" in names


def test_request_without_session_id_after_initialize_is_400(gw, c):
    open_session(c, gw.mcp)
    r = post(c, gw.mcp, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, {"MCP-Protocol-Version": HANDSHAKE_VERSION})
    assert r.status_code == 400
    assert "Mcp-Session-Id" in rpc_error_of(r)["message"]


def test_unknown_session_id_is_404(gw, c):
    r = post(c, gw.mcp, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, session_headers("no-such-session"))
    assert r.status_code == 404
    assert "session" in rpc_error_of(r)["message"].lower()


def test_delete_ends_the_session_and_it_is_then_404(gw, c):
    sid = open_session(c, gw.mcp)
    r = c.delete(gw.mcp, headers=session_headers(sid))
    assert r.status_code in (200, 204)
    r = post(c, gw.mcp, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, session_headers(sid))
    assert r.status_code == 404
    assert "session" in rpc_error_of(r)["message"].lower()
    assert c.delete(gw.mcp, headers=session_headers(sid)).status_code == 404


def test_unsupported_protocol_version_header_in_a_session_is_400(gw, c):
    # 2025-11-25 transports: an invalid or unsupported MCP-Protocol-Version MUST get 400.
    sid = open_session(c, gw.mcp)
    headers = session_headers(sid, {"MCP-Protocol-Version": "1900-01-01"})
    r = post(c, gw.mcp, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, headers)
    assert r.status_code == 400
    assert "1900-01-01" in rpc_error_of(r)["message"]


def test_get_opens_an_sse_stream_for_a_session(gw, c):
    sid = open_session(c, gw.mcp)
    with c.stream("GET", gw.mcp, headers=session_headers(sid, {"Accept": "text/event-stream"})) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")


def test_get_without_session_is_405(gw, c):
    r = c.get(gw.mcp, headers={"Accept": "text/event-stream"})
    assert r.status_code == 405


# ----------------------------------------------------------------------------- stateless era


def test_stateless_request_works_without_a_session(gw, c):
    body = call_body(5, "echo", {"text": "no session"}, meta=stateless_meta())
    r = post(c, gw.mcp, body, stateless_headers("tools/call", "echo"))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    assert "mcp-session-id" not in r.headers
    assert r.json()["result"]["content"][0]["text"] == "no session"


def test_stateless_request_without_the_meta_version_is_400_invalid_params(gw, c):
    """MCP-Protocol-Version 2026-07-28 without `_meta` protocolVersion: a stateless request missing
    a required key (-32602), not a handshake request missing its session (-32000)."""
    body = call_body(5, "echo", {"text": "x"}, meta={"io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"}})
    r = post(c, gw.mcp, body, stateless_headers("tools/call", "echo"))
    assert r.status_code == 400
    error = rpc_error_of(r)
    assert error["code"] == -32602 and "io.modelcontextprotocol/protocolVersion" in error["message"], error
    assert r.json()["id"] == 5


def test_stateless_request_missing_mcp_method_is_400_header_mismatch(gw, c):
    body = call_body(5, "echo", {"text": "x"}, meta=stateless_meta())
    headers = stateless_headers("tools/call", "echo")
    del headers["Mcp-Method"]
    r = post(c, gw.mcp, body, headers)
    assert r.status_code == 400
    err = rpc_error_of(r)
    assert err["code"] == -32020
    assert "Mcp-Method" in err["message"]


def test_stateless_base64_mcp_name_is_accepted(gw, c):
    body = call_body(6, "echo", {"text": "b64"}, meta=stateless_meta())
    encoded = "=?base64?" + base64.b64encode(b"echo").decode() + "?="
    r = post(c, gw.mcp, body, stateless_headers("tools/call", encoded))
    assert r.status_code == 200, r.text
    assert r.json()["result"]["content"][0]["text"] == "b64"


def test_stateless_name_header_disagreeing_with_body_never_reaches_upstream(gw_http, c):
    gw, log = gw_http
    body = call_body(7, "delete_record", {"id": "mismatch-7f3a"}, meta=stateless_meta())
    r = post(c, gw.mcp, body, stateless_headers("tools/call", "echo"))
    assert r.status_code == 400
    err = rpc_error_of(r)
    assert err["code"] == -32020 and "Mcp-Name" in err["message"]
    assert not [x for x in read_log(log) if x["kind"] == "request" and "mismatch-7f3a" in x["body"]]


def test_session_name_header_with_unreadable_params_is_refused_not_waved_through(gw_http, c):
    """In a handshake-era session a sent Mcp-Name is checked too; params with a field of the wrong
    type (here `taskId: 1`) cannot vouch for it, so the request is refused rather than forwarded
    with a header naming another tool."""
    gw, log = gw_http
    sid = open_session(c, gw.mcp)
    body = call_body(8, "delete_record", {"id": "unreadable-9c1d"})
    body["params"]["taskId"] = 1
    r = post(c, gw.mcp, body, session_headers(sid, {"Mcp-Name": "echo"}))
    assert r.status_code == 400, r.text
    err = rpc_error_of(r)
    assert err["code"] == -32020 and "Mcp-Name" in err["message"], err
    assert not [x for x in read_log(log) if x["kind"] == "request" and "unreadable-9c1d" in x["body"]]


@pytest.fixture(scope="module")
def gw_deny(mprocs):
    """Only `echo` is allowed; `crash` (which would kill the upstream) is denied."""
    return mprocs.airlock(policy={"version": "1", "default": "deny", "rules": {"echo": {"action": "allow"}}},
                          upstream=upstream_testserver())


CALL = '{"jsonrpc":"2.0","id":2,"method":"tools/call",'


@pytest.mark.parametrize("raw", [
    CALL + '"params":{"name":"echo","arguments":{"text":"x"},"name":"crash"}}',
    CALL + '"params":{"name":"echo","arguments":{"text":"x"}},"params":{"name":"crash","arguments":{}}}',
    CALL + '"params":{"name":"crash","arguments":{},"uri":5}}',
    CALL + '"params":{"name":"crash","arguments":{},"clientInfo":5}}',
], ids=["duplicate-name", "duplicate-params", "numeric-uri", "numeric-clientInfo"])
def test_tools_call_the_policy_cannot_read_never_reaches_the_upstream(gw_deny, c, raw):
    """Policy is enforced on the body: a call whose params the gateway cannot
    read must be refused, not forwarded unchecked (the upstream would run the
    denied `crash` tool, ending this session's upstream)."""
    sid = open_session(c, gw_deny.mcp)
    r = post(c, gw_deny.mcp, raw.encode(), session_headers(sid))
    m = json.loads(r.text) if r.headers.get("content-type", "").startswith("application/json") else answer(r, 2)
    assert "error" in m or m["result"].get("isError") is True, m
    assert "exited" not in r.text, f"the denied tool ran upstream: {r.text}"
    after = post(c, gw_deny.mcp, call_body(3, "echo", {"text": "alive"}), session_headers(sid))
    assert after.status_code == 200, after.text
    assert answer(after, 3)["result"]["content"][0]["text"] == "alive"


# ----------------------------------------------------------------------------- transparency


def test_handshake_unknown_fields_and_meta_reach_upstream_byte_for_byte(gw_http, c):
    gw, log = gw_http
    sid = open_session(c, gw.mcp)
    raw = ('{"jsonrpc":"2.0", "id":"rr-1a2b","method":"resources/read",'
           '"params":{"uri":"test://hello","_meta":{"x.example/trace":{"k":[1,2.50,"\\u00e9"]}},'
           '"unknownParam":null} ,"topLevelExtra":{"z":1}}')
    r = post(c, gw.mcp, raw.encode(), session_headers(sid, {"X-Unknown-Header": "kept", "Mcp-Param-Region": "eu"}))
    assert r.status_code == 200, r.text
    seen = find_request(log, "rr-1a2b")
    assert seen["body"] == raw
    assert seen["headers"].get("x-unknown-header") == "kept"
    assert seen["headers"].get("mcp-param-region") == "eu"
    # The answer's JSON text is the upstream's, unchanged (the SSE framing is Airlock's own).
    upstream_answer = response_for(log, seen["n"])
    assert upstream_answer["headers"]["content-type"].startswith("text/event-stream")
    assert r.headers["content-type"].startswith("text/event-stream")
    assert sse_data(r.text) == sse_data(upstream_answer["body"])
    assert answer(r, "rr-1a2b")["result"]["contents"][0]["text"] == "hello"


def test_handshake_unknown_method_passes_through(gw_http, c):
    gw, log = gw_http
    sid = open_session(c, gw.mcp)
    raw = '{"jsonrpc":"2.0","id":"um-5c6d","method":"vendor/doSomething","params":{"a":1}}'
    r = post(c, gw.mcp, raw.encode(), session_headers(sid))
    assert find_request(log, "um-5c6d")["body"] == raw
    err = answer(r, "um-5c6d")["error"]
    assert err["code"] == -32601


def test_stateless_resources_read_answer_is_the_upstream_bytes(gw_http, c):
    gw, log = gw_http
    meta = dict(stateless_meta(), **{"x.example/custom": {"keep": True}})
    body = {"jsonrpc": "2.0", "id": "sr-9e8f", "method": "resources/read",
            "params": {"uri": "test://hello", "_meta": meta, "extraField": [1, {"b": None}]}}
    raw = json.dumps(body, separators=(", ", ": "))  # unusual spacing must survive
    r = post(c, gw.mcp, raw.encode(), stateless_headers("resources/read", "test://hello"))
    seen = find_request(log, "sr-9e8f")
    assert seen["body"] == raw
    upstream_answer = response_for(log, seen["n"])
    assert r.status_code == upstream_answer["status"] == 200
    assert r.text == upstream_answer["body"]
    assert r.json()["result"]["contents"][0]["text"] == "hello"


def test_stateless_prompts_get_answer_is_the_upstream_bytes(gw_http, c):
    gw, log = gw_http
    body = {"jsonrpc": "2.0", "id": "pg-4d3c", "method": "prompts/get",
            "params": {"name": "greet", "arguments": {"name": "Zoë"}, "_meta": stateless_meta()}}
    raw = json.dumps(body, ensure_ascii=False)
    r = post(c, gw.mcp, raw.encode(), stateless_headers("prompts/get", "greet"))
    seen = find_request(log, "pg-4d3c")
    assert seen["body"] == raw
    upstream_answer = response_for(log, seen["n"])
    assert r.status_code == upstream_answer["status"]
    assert r.text == upstream_answer["body"]
    assert r.json()["result"]["messages"][0]["content"]["text"] == "Hello, Zoë!"


def test_stateless_unknown_method_answer_is_the_upstream_bytes(gw_http, c):
    gw, log = gw_http
    body = {"jsonrpc": "2.0", "id": "su-1f2e", "method": "vendor/unknown", "params": {"_meta": stateless_meta()}}
    raw = json.dumps(body)
    r = post(c, gw.mcp, raw.encode(), stateless_headers("vendor/unknown"))
    seen = find_request(log, "su-1f2e")
    assert seen["body"] == raw
    upstream_answer = response_for(log, seen["n"])
    assert r.status_code == upstream_answer["status"]
    assert r.text == upstream_answer["body"]


# ----------------------------------------------------------------------------- agent tokens


@pytest.fixture(scope="module")
def gw_agents(mprocs, http_upstream):
    url, log = http_upstream
    cfg = mprocs.tmp_path / "agents.toml"
    cfg.write_text(
        f'[[upstream]]\nname = "up"\nurl = "{url}"\n\n'
        '[[agent]]\nname = "tester"\ntoken_env = "RAW_TEST_AGENT_TOKEN"\n'
    )
    gw = mprocs.airlock(config=str(cfg), env={"RAW_TEST_AGENT_TOKEN": AGENT_TOKEN})
    return gw, log


def test_agent_without_token_is_401(gw_agents, c):
    gw, _ = gw_agents
    r = post(c, gw.endpoint("up"), init_body())
    assert r.status_code == 401
    assert "token" in rpc_error_of(r)["message"].lower()
    assert r.headers.get("www-authenticate", "").lower().startswith("bearer")


def test_agent_with_wrong_token_is_401(gw_agents, c):
    gw, _ = gw_agents
    r = post(c, gw.endpoint("up"), init_body(), {"Authorization": "Bearer wrong-token-0123456789abcdef"})
    assert r.status_code == 401
    assert "token" in rpc_error_of(r)["message"].lower()


def raw_exchange(port: int, head: str, body: bytes, then: bytes, pause: float = 0.3) -> bytes:
    """Sends a request's head, then (after `pause`, once the gateway could have refused it) its
    body and a second request on the same connection; returns everything the gateway sent."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(head.encode())
        time.sleep(pause)
        try:
            s.sendall(body + then)
        except (BrokenPipeError, ConnectionResetError):
            pass
        got = b""
        deadline = time.monotonic() + 5
        while got.count(b"HTTP/1.1 ") < 2 and time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            got += chunk
    return got


def test_a_refused_agent_request_leaves_the_connection_usable(gw_agents):
    """A POST refused before its body is read (no agent token) must not leave the keep-alive
    connection half-read: the next request on it gets its own answer."""
    gw, _ = gw_agents
    body = json.dumps(init_body()).encode()
    head = (f"POST /mcp/up HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\nContent-Type: application/json\r\n"
            f"Accept: {ACCEPT}\r\nContent-Length: {len(body)}\r\n\r\n")
    second = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\n\r\n".encode()
    got = raw_exchange(gw.port, head, body, second)
    assert got.startswith(b"HTTP/1.1 401"), got[:200]
    assert got.count(b"HTTP/1.1 200") == 1, f"the connection was closed after the refusal: {got[-300:]!r}"


def test_a_refused_agent_request_with_a_big_body_is_told_to_close(gw_agents):
    """Airlock does not buffer a large body of a request it refuses: it says `Connection: close`,
    so the client opens a new connection instead of failing on this one."""
    gw, _ = gw_agents
    size = 1024 * 1024
    head = (f"POST /mcp/up HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\nContent-Type: application/json\r\n"
            f"Accept: {ACCEPT}\r\nContent-Length: {size}\r\n\r\n")
    got = raw_exchange(gw.port, head, b"", b"", pause=0)
    status, _, rest = got.partition(b"\r\n")
    assert status.startswith(b"HTTP/1.1 401"), got[:200]
    headers = rest.split(b"\r\n\r\n", 1)[0].lower()
    assert b"connection: close" in headers, headers


def test_a_refused_agent_upload_waiting_for_100_continue_is_not_invited(gw_agents):
    """`Expect: 100-continue` without a token: the refusal comes at once, with no `100 Continue`
    asking for the body first, and the connection is closed."""
    gw, _ = gw_agents
    head = (f"POST /mcp/up HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\nContent-Type: application/json\r\n"
            f"Accept: {ACCEPT}\r\nExpect: 100-continue\r\nContent-Length: 100\r\n\r\n")
    got = raw_exchange(gw.port, head, b"", b"", pause=0)
    assert got.startswith(b"HTTP/1.1 401"), got[:200]
    assert b"100 Continue" not in got
    assert b"connection: close" in got.split(b"\r\n\r\n", 1)[0].lower(), got[:300]


def test_agent_with_right_token_works_and_token_is_not_forwarded(gw_agents, c):
    gw, log = gw_agents
    auth = {"Authorization": f"Bearer {AGENT_TOKEN}"}
    sid = open_session(c, gw.endpoint("up"), auth)
    body = call_body("tok-3b4a", "echo", {"text": "authed"})
    r = post(c, gw.endpoint("up"), body, session_headers(sid, auth))
    assert r.status_code == 200
    assert answer(r, "tok-3b4a")["result"]["content"][0]["text"] == "authed"
    seen = find_request(log, "tok-3b4a")
    assert "authorization" not in seen["headers"]
    assert AGENT_TOKEN not in (log.read_text())


# ----------------------------------------------------------------------------- response headers


UPSTREAM_HEADERS = [
    ("X-Upstream-Trace", "trace-8f2e"),
    ("Link", "<https://example.test/a>; rel=a"),
    ("Link", "<https://example.test/b>; rel=b"),
    ("Set-Cookie", "airlock_session=planted; Path=/"),
    ("Access-Control-Allow-Origin", "*"),
    ("Mcp-Session-Id", "upstream-own-session"),
    ("Clear-Site-Data", '"cookies"'),
    ("Strict-Transport-Security", "max-age=31536000"),
    ("Connection", "X-Hop"),
    ("X-Hop", "named in Connection"),
]


def answer_with_headers(body: dict):
    """A stateless upstream's JSON answer, with headers of its own."""
    result = {"resultType": "complete", "content": [{"type": "text", "text": "ok"}]}
    return "application/json", UPSTREAM_HEADERS, json.dumps({"jsonrpc": "2.0", "id": body.get("id"), "result": result}).encode()


def test_upstream_response_headers_come_back_except_those_acting_on_airlocks_origin(mprocs, c):
    """DESIGN §2: unknown headers pass through in both directions. Cookies and CORS headers
    would act on the origin the dashboard shares, and the session id is Airlock's to issue."""
    upstream = TinyUpstream(answer_with_headers)
    try:
        gw = mprocs.airlock(url=upstream.url)
        body = call_body(9, "echo", {"text": "x"}, meta=stateless_meta())
        r = post(c, gw.mcp, body, stateless_headers("tools/call", "echo"))
        assert r.status_code == 200, r.text
        assert r.headers["x-upstream-trace"] == "trace-8f2e"
        assert r.headers.get_list("link") == ["<https://example.test/a>; rel=a", "<https://example.test/b>; rel=b"]
        assert r.headers["content-type"] == "application/json"
        for dropped in ("set-cookie", "access-control-allow-origin", "mcp-session-id", "clear-site-data",
                        "strict-transport-security", "x-hop"):
            assert dropped not in r.headers, (dropped, r.headers)
    finally:
        upstream.close()


def test_stateless_refusals_say_airlock_answered(mprocs, c):
    """2026-07-28 results SHOULD carry `_meta` serverInfo: a refusal is Airlock's answer, not the
    upstream's, and says so."""
    gw = mprocs.airlock(policy={"version": "1", "default": "allow",
                                "rules": {"crash": {"action": "deny", "reason": "no crashing"}}},
                        upstream=upstream_testserver())
    body = call_body(11, "crash", {}, meta=stateless_meta())
    r = post(c, gw.mcp, body, stateless_headers("tools/call", "crash"))
    result = answer(r, 11)["result"]
    assert result["isError"] is True and result["resultType"] == "complete", result
    assert result["_meta"]["airlock.decision"] == "denied", result
    assert result["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "airlock", result


def test_upstream_redirects_are_not_followed(mprocs, c):
    """A redirect would carry the configured upstream headers (often credentials) wherever the
    upstream points: the agent gets the 3xx, and the target is never called."""
    target = TinyUpstream(answer_with_headers)
    redirecting = TinyUpstream(lambda body: (307, "text/plain", [("Location", target.url)], b"moved"))
    try:
        gw = mprocs.airlock(url=redirecting.url)
        body = call_body(12, "echo", {"text": "x"}, meta=stateless_meta())
        r = post(c, gw.mcp, body, stateless_headers("tools/call", "echo"))
        assert r.status_code == 307 and r.headers["location"] == target.url, (r.status_code, r.headers)
        assert len(redirecting.calls) == 1 and target.calls == []
    finally:
        target.close()
        redirecting.close()


def unknown_tool_answer(framing: str):
    """An upstream for which every tools/call is an unknown tool, answered as JSON or as an event
    stream, with a header of its own."""
    def respond(body: dict):
        error = {"code": -32602, "message": f"Unknown tool: {body['params']['name']}"}
        payload = json.dumps({"jsonrpc": "2.0", "id": body.get("id"), "error": error})
        if framing == "sse":
            return "text/event-stream", [("X-Powered-By", "tiny-upstream")], f"event: message\ndata: {payload}\n\n".encode()
        return "application/json", [("X-Powered-By", "tiny-upstream")], payload.encode()
    return respond


@pytest.mark.parametrize("framing", ["json", "sse"])
def test_a_hidden_tool_is_answered_like_a_missing_one_headers_and_framing_included(mprocs, c, framing):
    """With the upstream's headers passed back, a hidden tool's (replayed) answer must carry them
    too, framed as the upstream frames it, or an agent could tell hidden tools from missing ones."""
    upstream = TinyUpstream(unknown_tool_answer(framing))
    try:
        gw = mprocs.airlock(policy={"version": "1", "default": "allow", "hide": ["secret_tool"]}, url=upstream.url)
        answers = {}
        for req_id, tool in ((21, "no_such_tool"), (22, "secret_tool")):
            r = post(c, gw.mcp, call_body(req_id, tool, {}, meta=stateless_meta()), stateless_headers("tools/call", tool))
            answers[tool] = (r.status_code, r.headers.get("x-powered-by"), r.headers["content-type"].split(";")[0],
                             answer(r, req_id)["error"])
        assert answers["no_such_tool"][:3] == (200, "tiny-upstream",
                                               "text/event-stream" if framing == "sse" else "application/json"), answers
        assert answers["secret_tool"] == (*answers["no_such_tool"][:3],
                                          {"code": -32602, "message": "Unknown tool: secret_tool"}), answers
        assert not [b for b in upstream.calls if "secret_tool" in json.dumps(b)], "the hidden name reached the upstream"
    finally:
        upstream.close()


def test_health_and_metrics_refuse_rebound_names_and_foreign_origins(gw, c):
    """No login is needed for /healthz and /metrics, but a page elsewhere reaching a loopback
    gateway through a rebound DNS name (or any foreign origin) gets 403, as on /mcp."""
    for path in ("/healthz", "/metrics"):
        assert c.get(f"{gw.base}{path}").status_code == 200
        assert c.get(f"{gw.base}{path}", headers={"Host": "rebound.example:8080"}).status_code == 403, path
        assert c.get(f"{gw.base}{path}", headers={"Origin": "http://evil.example"}).status_code == 403, path
        assert c.get(f"{gw.base}{path}", headers={"Host": f"localhost:{gw.port}"}).status_code == 200, path


@pytest.mark.parametrize("ctype", ["application/jsonfoo", "application/json-seq", "application/json+x",
                                   "application/json; charset=latin1", "application/json; charset",
                                   "text/json", "application/x-ndjson"])
def test_content_type_must_be_exactly_json(gw, c, ctype):
    r = post(c, gw.mcp, json.dumps(init_body()), {"Content-Type": ctype})
    assert r.status_code == 415, (ctype, r.status_code, r.text)
    assert "content-type" in rpc_error_of(r)["message"].lower()


@pytest.mark.parametrize("ctype", ["Application/JSON", "application/json; charset=utf-8",
                                   "application/json;charset=\"UTF-8\""])
def test_json_content_type_with_parameters_or_in_another_case_is_accepted(gw, c, ctype):
    r = post(c, gw.mcp, json.dumps(init_body()), {"Content-Type": ctype})
    assert r.status_code == 200, (ctype, r.status_code, r.text)
    assert "result" in answer(r, 1)
