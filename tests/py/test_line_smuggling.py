"""Line smuggling into stdio upstreams (issue 11): what the policy decided is
exactly what the upstream executes.

A raw LF or CR between JSON tokens is whitespace to the gateway's JSON parser
but a message boundary to a stdio server, which reads one message per line
(the official Python SDK server, used here, reads with universal newlines: LF,
CR and CRLF all end a line). Every test drives the real binary in front of the
real SDK server, with both of the server's pipes copied to files by `tee`, so
the tests see every byte the server read and every answer it wrote.

The attacks: a complete `tools/call` of a denied, hidden or held tool nested
inside an allowed carrier (a `ping`, a notification, an allowed call's
arguments or `_meta`), with LF, CR or CRLF around it; over HTTP in both eras
(the handshake era's own child per session, the stateless era's shared child)
and through `airlock stdio`. Then a randomised differential check: messages
with random line breaks in every gap between tokens must reach the server as
exactly one line each, carrying the same method, tool name and arguments the
audit history recorded.
"""
from __future__ import annotations

import json
import random
import re
import subprocess
import time
from pathlib import Path

import httpx
import pytest

import rawmcp as rm
from harness import airlock_stdio_cmd
from holdkit import ALICE, Gateway

POLICY = {
    "version": "1",
    "default": "allow",
    "hide": ["secret_tool"],
    "rules": {
        "delete_record": {"action": "deny", "reason": "records are kept forever"},
        "slow": {"action": "require_approval", "reason": "slow work needs a human"},
    },
}
SMUGGLED = [("delete_record", {"id": "gone"}), ("secret_tool", {}), ("slow", {"steps": 1, "delay_ms": 1})]
SEPARATORS = {"lf": "\n", "cr": "\r", "crlf": "\r\n"}
ENV = {"AIRLOCK_APPROVER_TOKEN": ALICE}


def tapped_testserver(tmp_path: Path, marker: Path) -> tuple[list[str], Path, Path]:
    """The stdio test server with its stdin copied to `in` and its stdout to `out`."""
    seen_in, seen_out = tmp_path / "upstream-in.log", tmp_path / "upstream-out.log"
    script = 'i="$0"; o="$1"; shift; tee -a "$i" | "$@" | tee -a "$o"'
    return ["bash", "-c", script, str(seen_in), str(seen_out), *rm.marked_testserver(marker)], seen_in, seen_out


def server_lines(path: Path) -> list[str]:
    """What a universal-newlines reader (the Python SDK's stdio server) reads as lines."""
    text = path.read_bytes().decode("utf-8", "replace") if path.exists() else ""
    return [line for line in re.split(r"\r\n|\r|\n", text) if line.strip()]


def server_messages(path: Path) -> list[dict]:
    out = []
    for line in server_lines(path):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            out.append({"unparsable": line})
    return out


def smuggled_ids(messages: list[dict]) -> list:
    return [m.get("id") for m in messages if str(m.get("id", "")).startswith("smuggled")]


def carriers(sep: str, inner: dict, meta: dict | None) -> dict[str, str]:
    """Allowed messages (raw JSON text) that carry `inner` as a nested value with `sep` around it."""
    nested = f"{sep}{json.dumps(inner, separators=(',', ':'))}{sep}"
    m = "" if meta is None else f',"_meta":{json.dumps(meta)}'
    era_meta = "" if meta is None else json.dumps(meta)[1:-1] + ","
    return {
        "ping": f'{{"jsonrpc":"2.0","id":"c-ping","method":"ping","params":{{"x":{nested}{m}}}}}',
        "notification": f'{{"jsonrpc":"2.0","method":"notifications/roots/list_changed","params":{{"x":{nested}{m}}}}}',
        "arguments": (f'{{"jsonrpc":"2.0","id":"c-args","method":"tools/call","params":{{"name":"echo",'
                      f'"arguments":{{"text":"carrier","x":{nested}}}{m}}}}}'),
        "meta": (f'{{"jsonrpc":"2.0","id":"c-meta","method":"tools/call","params":{{"name":"echo",'
                 f'"arguments":{{"text":"carrier"}},"_meta":{{{era_meta}"x":{nested}}}}}}}'),
    }


def headers_for(carrier: str, stateless: bool) -> dict:
    if not stateless:
        return {}
    if carrier == "ping":
        return rm.stateless_headers("ping")
    if carrier == "notification":
        return rm.stateless_headers("notifications/roots/list_changed")
    return rm.stateless_headers("tools/call", "echo")


def assert_nothing_ran(seen_in: Path, seen_out: Path, gw: Gateway):
    # Give a smuggled request the time to run if it got through.
    time.sleep(0.3)
    got_in, got_out = server_messages(seen_in), server_messages(seen_out)
    assert not smuggled_ids(got_in), f"the server read a smuggled request: {smuggled_ids(got_in)}"
    assert not smuggled_ids(got_out), f"the server answered a smuggled request: {smuggled_ids(got_out)}"
    assert "gone" not in seen_out.read_text() if seen_out.exists() else True
    assert gw.pending() == [], "a smuggled call was held"
    for row in gw.audit_rows():
        assert row["tool"] == "echo", f"audited a smuggled tool: {row}"


@pytest.fixture
def gateway(procs, tmp_path):
    argv, seen_in, seen_out = tapped_testserver(tmp_path, tmp_path / "marker")
    gw = procs.airlock(policy=POLICY, upstream=argv, env=ENV)
    return Gateway(gw.proc, gw.port, None, None), gw.mcp, seen_in, seen_out


@pytest.mark.parametrize("sep", SEPARATORS)
def test_a_call_smuggled_in_a_handshake_session_never_reaches_the_server(gateway, sep):
    gw, mcp, seen_in, seen_out = gateway
    with rm.client() as c:
        sid = rm.open_session(c, mcp)
        for n, (tool, args) in enumerate(SMUGGLED):
            inner = rm.call_body(f"smuggled-{n}", tool, args)
            for name, body in carriers(SEPARATORS[sep], inner, None).items():
                r = rm.post(c, mcp, body, rm.session_headers(sid))
                assert r.status_code in (200, 202), (name, r.status_code, r.text)
    assert_nothing_ran(seen_in, seen_out, gw)
    # The carriers themselves did reach the server, each as one line.
    assert sum(1 for m in server_messages(seen_in) if m.get("id") == "c-args") == len(SMUGGLED)


@pytest.mark.parametrize("sep", SEPARATORS)
def test_a_call_smuggled_on_the_shared_stateless_child_never_reaches_the_server(gateway, sep):
    gw, mcp, seen_in, seen_out = gateway
    meta = rm.stateless_meta()
    with rm.client() as c:
        for n, (tool, args) in enumerate(SMUGGLED):
            inner = rm.call_body(f"smuggled-{n}", tool, args, meta=meta)
            for name, body in carriers(SEPARATORS[sep], inner, meta).items():
                if name == "notification":
                    continue  # the stateless era has no client notifications on HTTP
                r = rm.post(c, mcp, body, headers_for(name, True))
                # The 2026-07-28 server has no `ping` (404, -32601): the carrier still reached it.
                assert r.status_code in (200, 404), (name, r.status_code, r.text)
    assert_nothing_ran(seen_in, seen_out, gw)


def test_a_call_smuggled_with_a_cr_through_airlock_stdio_never_reaches_the_server(procs, tmp_path):
    argv, seen_in, seen_out = tapped_testserver(tmp_path, tmp_path / "marker")
    cmd = airlock_stdio_cmd(tmp_path, POLICY, argv)
    proc = procs.start(cmd, stdin=subprocess.PIPE, env=ENV)
    found = rm.wait_until(lambda: re.search(r"dashboard: http://127\.0\.0\.1:(\d+)/", proc.stderr_text()), 15)
    assert found, proc.stderr_text()
    gw = Gateway(proc, int(found.group(1)), None, None)

    def send(text: str):
        proc.popen.stdin.write(text.encode() + b"\n")
        proc.popen.stdin.flush()

    send(json.dumps(rm.init_body()))
    assert json.loads(proc.lines.get(timeout=15))["id"] == 1
    send('{"jsonrpc":"2.0","method":"notifications/initialized"}')
    for n, (tool, args) in enumerate(SMUGGLED):
        inner = rm.call_body(f"smuggled-{n}", tool, args)
        for body in carriers("\r", inner, None).values():
            send(body)
    # The allowed carriers are answered; the smuggled calls are not.
    answered = set()
    deadline = time.monotonic() + 15
    while len(answered) < 3 and time.monotonic() < deadline:
        m = json.loads(proc.lines.get(timeout=15))
        answered.add(m.get("id"))
    assert {"c-ping", "c-args", "c-meta"} <= answered, answered
    assert_nothing_ran(seen_in, seen_out, gw)


# ----------------------------------------------------------------------------- differential

def scrambled(value, rng: random.Random) -> str:
    """JSON text of `value` with random whitespace, line breaks included, in every gap between tokens."""
    def gap() -> str:
        return "".join(rng.choice([" ", "\t", "\n", "\r", "\r\n", ""]) for _ in range(rng.randint(0, 3)))

    def emit(v) -> str:
        if isinstance(v, dict):
            items = [f"{gap()}{json.dumps(k)}{gap()}:{gap()}{emit(x)}{gap()}" for k, x in v.items()]
            return "{" + ",".join(items) + gap() + "}"
        if isinstance(v, list):
            return "[" + ",".join(f"{gap()}{emit(x)}{gap()}" for x in v) + gap() + "]"
        return json.dumps(v, ensure_ascii=rng.random() < 0.5)
    return gap() + emit(value) + gap()


def random_value(rng: random.Random, depth: int = 0):
    pick = rng.randrange(7 if depth < 3 else 4)
    if pick == 0:
        return rng.randint(-10**6, 10**6)
    if pick == 1:
        return "".join(rng.choice("ab \u2028\u2029\u0085é—\\\"/\t") for _ in range(rng.randint(0, 8)))
    if pick == 2:
        return rng.choice([True, False, None])
    if pick == 3:
        return rng.random()
    if pick == 4:
        # A whole request, as an attacker would nest it.
        return rm.call_body(f"smuggled-{rng.randrange(10**6)}", rng.choice(["delete_record", "secret_tool"]), {})
    if pick == 5:
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {f"k{i}": random_value(rng, depth + 1) for i in range(rng.randint(0, 3))}


@pytest.mark.parametrize("era", ["handshake", "stateless"])
def test_each_accepted_message_reaches_the_server_as_one_line_with_what_the_policy_saw(gateway, era):
    gw, mcp, seen_in, _ = gateway
    rng = random.Random(f"line-smuggling-{era}")
    sent = []
    with rm.client() as c:
        extra = {}
        meta = None
        if era == "handshake":
            extra = rm.session_headers(rm.open_session(c, mcp))
        else:
            meta = rm.stateless_meta()
        deadline = time.monotonic() + 60
        for n in range(40):
            if time.monotonic() > deadline:
                break
            arguments = {"text": f"d{n}", **{f"a{i}": random_value(rng) for i in range(rng.randint(0, 4))}}
            body = rm.call_body(f"diff-{n}", "echo", arguments, meta=meta)
            headers = {**extra, **(rm.stateless_headers("tools/call", "echo") if meta else {})}
            r = rm.post(c, mcp, scrambled(body, rng), headers)
            assert r.status_code == 200, r.text
            sent.append(body)
    assert len(sent) >= 10
    # What the server read: one line per accepted message, no more.
    calls = [m for m in server_messages(seen_in) if m.get("method") == "tools/call"]
    assert not [m for m in server_messages(seen_in) if "unparsable" in m]
    assert not smuggled_ids(server_messages(seen_in))
    assert len(calls) == len(sent), f"{len(sent)} calls sent, the server read {len(calls)} calls"
    # The same tool and arguments as sent (the stateless child's ids are the gateway's own).
    for got, want in zip(calls, sent):
        assert got["params"]["name"] == want["params"]["name"]
        assert got["params"]["arguments"] == want["params"]["arguments"]
        if era == "handshake":
            assert got["id"] == want["id"]
    # ... and the same as the audit history recorded for each.
    rows = [r for r in gw.audit_rows() if r["decision"] == "allowed"]
    assert len(rows) == len(sent)
    for row, want in zip(rows, sent):
        assert row["tool"] == "echo"
        assert row["arguments"] == want["params"]["arguments"], row
