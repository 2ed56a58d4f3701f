#!/usr/bin/env python3
"""Self-check for tests/servers/testserver.py using the official SDK client (mcp 2.x).

Runs the SDK `Client` in mode="legacy", "auto" and the pinned "2026-07-28" over stdio and over
Streamable HTTP against the test server, checks every tool, the resource and the prompt, checks
the --era restrictions and the crash tool, and captures raw JSON exchanges (with httpx and raw
stdio) for the facts recorded in testserver.py. Prints a summary; exit code 0 when all passed.

    /root/.cache/airlock-venv/bin/python tests/servers/selfcheck.py [--raw-out FILE] [-v]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from typing import Any, Iterator

import anyio
import httpx
import mcp_types as mt

from mcp import Client, StdioServerParameters
from mcp.shared.exceptions import MCPError

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER = os.path.join(HERE, "testserver.py")
PY = sys.executable
EXPECTED_TOOLS = {"echo", "add", "slow", "sample", "elicit", "large", "crash", "delete_record", "secret_tool",
                  "garbage"}

results: list[tuple[str, bool, str]] = []
raw_facts: dict[str, Any] = {}
VERBOSE = False


def record(name: str, ok: bool, detail: str = "") -> None:
    results.append((name, ok, detail))
    if VERBOSE or not ok:
        print(("PASS " if ok else "FAIL ") + name + (f"  -- {detail}" if detail else ""), flush=True)


def text_of(res: mt.CallToolResult) -> str:
    assert len(res.content) == 1, res
    c = res.content[0]
    assert isinstance(c, mt.TextContent), c
    return c.text


# ----------------------------------------------------------------------------- server processes


@contextmanager
def http_server(era: str = "both", log_file: str | None = None, extra: list[str] | None = None) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    cmd = [PY, SERVER, "http", "--port", "0", "--era", era] + (extra or [])
    if log_file:
        cmd += ["--log-requests", log_file]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("LISTENING http://127.0.0.1:") and line.endswith("/mcp"), line
        yield line.split(" ", 1)[1], proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()


def stdio_params(era: str = "both") -> StdioServerParameters:
    return StdioServerParameters(command=PY, args=[SERVER, "stdio", "--era", era])


# ----------------------------------------------------------------------------- SDK client checks


async def sampling_cb(ctx: Any, params: mt.CreateMessageRequestParams) -> mt.CreateMessageResult:
    msg = params.messages[0].content
    prompt = msg.text if isinstance(msg, mt.TextContent) else "?"
    return mt.CreateMessageResult(
        role="assistant", content=mt.TextContent(type="text", text=f"reply to {prompt}"), model="fake-llm"
    )


async def elicitation_cb(ctx: Any, params: mt.ElicitRequestParams) -> mt.ElicitResult:
    if "decline" in params.message:
        return mt.ElicitResult(action="decline")
    return mt.ElicitResult(action="accept", content={"answer": "yes"})


async def full_check(label: str, target: Any, mode: str, expect_version: str) -> None:
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(p: float, total: float | None, message: str | None) -> None:
        progress.append((p, total, message))

    try:
        async with Client(
            target,
            mode=mode,
            sampling_callback=sampling_cb,
            elicitation_callback=elicitation_cb,
            read_timeout_seconds=20,
        ) as c:
            record(f"{label}: negotiated {c.protocol_version}", c.protocol_version == expect_version,
                   f"expected {expect_version}")
            tools = await c.list_tools()
            names = {t.name for t in tools.tools}
            record(f"{label}: tools/list", names == EXPECTED_TOOLS, str(sorted(names)))
            dr = next(t for t in tools.tools if t.name == "delete_record")
            record(f"{label}: delete_record destructiveHint", bool(dr.annotations and dr.annotations.destructive_hint))

            r = await c.call_tool("echo", {"text": "héllo wörld"})
            record(f"{label}: echo", text_of(r) == "héllo wörld" and not r.is_error, text_of(r))
            r = await c.call_tool("add", {"a": 2, "b": 3})
            record(f"{label}: add", text_of(r) == "5", text_of(r))
            r = await c.call_tool("add", {"a": 1.5, "b": 2})
            record(f"{label}: add float", text_of(r) == "3.5", text_of(r))
            r = await c.call_tool("slow", {"steps": 4, "delay_ms": 20}, progress_callback=on_progress)
            record(f"{label}: slow + progress", text_of(r) == "done after 4 steps" and len(progress) == 4,
                   f"{text_of(r)!r} progress={progress}")
            r = await c.call_tool("slow", {"steps": 2, "delay_ms": 10})
            record(f"{label}: slow without token", text_of(r) == "done after 2 steps", text_of(r))
            r = await c.call_tool("sample", {"prompt": "hi"})
            record(f"{label}: sample", text_of(r) == "sampled: reply to hi", text_of(r))
            r = await c.call_tool("elicit", {"message": "ok?"})
            record(f"{label}: elicit accept", text_of(r) == 'elicited: {"answer":"yes"}', text_of(r))
            r = await c.call_tool("elicit", {"message": "please decline"})
            record(f"{label}: elicit decline", text_of(r) == 'elicited: "decline"', text_of(r))
            r = await c.call_tool("large", {"size": 200_000})
            t = text_of(r)
            record(f"{label}: large", len(t.encode()) == 200_000 and set(t) == {"x"}, str(len(t)))
            r = await c.call_tool("delete_record", {"id": "42"})
            record(f"{label}: delete_record", text_of(r) == "deleted 42", text_of(r))
            r = await c.call_tool("secret_tool", {})
            record(f"{label}: secret_tool", text_of(r) == "secret", text_of(r))
            try:
                r = await c.call_tool("nope", {})
                record(f"{label}: unknown tool -> MCPError", False, f"got result {r}")
            except MCPError as e:
                err = e.error.model_dump(mode="json", by_alias=True, exclude_none=True)
                raw_facts.setdefault("sdk_client_unknown_tool_error", {})[label] = err
                record(f"{label}: unknown tool -> MCPError -32602", e.code == -32602, json.dumps(err))
            rr = await c.read_resource("test://hello")
            ok = len(rr.contents) == 1 and getattr(rr.contents[0], "text", None) == "hello"
            record(f"{label}: resources/read", ok, str(rr.contents))
            res = await c.list_resources()
            record(f"{label}: resources/list", [str(x.uri) for x in res.resources] == ["test://hello"])
            pr = await c.list_prompts()
            record(f"{label}: prompts/list", [p.name for p in pr.prompts] == ["greet"])
            gp = await c.get_prompt("greet", {"name": "Ann"})
            content = gp.messages[0].content
            record(f"{label}: prompts/get", isinstance(content, mt.TextContent) and content.text == "Hello, Ann!",
                   str(gp.messages))
    except Exception as e:  # noqa: BLE001
        record(f"{label}: session", False, f"{type(e).__name__}: {e}\n{traceback.format_exc()}")


async def expect_connect_failure(label: str, target: Any, mode: str) -> None:
    try:
        with anyio.fail_after(20):
            async with Client(target, mode=mode, read_timeout_seconds=10) as c:
                # pinned mode does not probe: the first real request must fail
                await c.list_tools()
        record(label, False, "connected and listed tools")
    except Exception as e:  # noqa: BLE001
        while isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
            e = e.exceptions[0]
        detail = f"{type(e).__name__}: {e}"
        if isinstance(e, MCPError):
            detail = json.dumps(e.error.model_dump(mode="json", by_alias=True, exclude_none=True))
        raw_facts.setdefault("era_mismatch_errors", {})[label] = detail
        record(label, True, detail)


async def negotiate_only(label: str, target: Any, mode: str, expect_version: str) -> None:
    try:
        with anyio.fail_after(20):
            async with Client(target, mode=mode, read_timeout_seconds=10) as c:
                r = await c.call_tool("echo", {"text": "x"})
                record(label, c.protocol_version == expect_version and text_of(r) == "x", c.protocol_version)
    except Exception as e:  # noqa: BLE001
        record(label, False, f"{type(e).__name__}: {e}")


# ----------------------------------------------------------------------------- raw exchanges


def sse_or_json(resp: httpx.Response) -> list[Any]:
    ctype = resp.headers.get("content-type", "")
    if ctype.startswith("application/json"):
        return [resp.json()]
    out = []
    for line in resp.text.splitlines():
        if line.startswith("data:") and line[5:].strip():
            out.append(json.loads(line[5:].strip()))
    return out


MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {"sampling": {}, "elicitation": {"form": {}}},
    "io.modelcontextprotocol/clientInfo": {"name": "raw-check", "version": "0"},
}
ACCEPT = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


def modern_headers(method: str, name: str | None = None) -> dict[str, str]:
    h = dict(ACCEPT, **{"mcp-protocol-version": "2026-07-28", "mcp-method": method})
    if name:
        h["mcp-name"] = name
    return h


def raw_http_checks() -> None:
    discover = {"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {"_meta": MODERN_META}}
    for era in ("both", "handshake", "stateless"):
        with http_server(era) as (url, _):
            r = httpx.post(url, json=discover, headers=modern_headers("server/discover"), timeout=10)
            raw_facts[f"http_discover_era_{era}"] = {"status": r.status_code, "body": sse_or_json(r)}
            record(f"raw http era={era}: server/discover", (r.status_code == 200) == (era != "handshake"),
                   f"{r.status_code} {r.text[:300]}")
            init = {"jsonrpc": "2.0", "id": 2, "method": "initialize",
                    "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                               "clientInfo": {"name": "raw", "version": "0"}}}
            r = httpx.post(url, json=init, headers=ACCEPT, timeout=10)
            raw_facts[f"http_initialize_era_{era}"] = {"status": r.status_code, "body": sse_or_json(r),
                                                       "session": r.headers.get("mcp-session-id")}
            record(f"raw http era={era}: initialize", (r.status_code == 200) == (era != "stateless"),
                   f"{r.status_code} {r.text[:300]}")
            if era == "stateless":
                g = httpx.get(url, headers={"accept": "text/event-stream"}, timeout=10)
                record("raw http era=stateless: GET -> 405", g.status_code == 405, str(g.status_code))
            if era != "handshake":
                call = {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                        "params": {"name": "nope", "arguments": {}, "_meta": MODERN_META}}
                r = httpx.post(url, json=call, headers=modern_headers("tools/call", "nope"), timeout=10)
                raw_facts[f"http_unknown_tool_stateless_era_{era}"] = {"status": r.status_code, "body": sse_or_json(r)}
                record(f"raw http era={era}: stateless unknown tool -32602",
                       sse_or_json(r)[-1].get("error", {}).get("code") == -32602, r.text[:300])
                call = {"jsonrpc": "2.0", "id": 4, "method": "tools/call",
                        "params": {"name": "sample", "arguments": {"prompt": "hi"}, "_meta": MODERN_META}}
                r = httpx.post(url, json=call, headers=modern_headers("tools/call", "sample"), timeout=10)
                body = sse_or_json(r)[-1]
                raw_facts[f"http_sample_input_required_era_{era}"] = {"status": r.status_code, "body": body}
                res = body.get("result", {})
                record(f"raw http era={era}: sample -> input_required",
                       res.get("resultType") == "input_required", json.dumps(body)[:300])
                # answer it by hand: retry with inputResponses + requestState
                key = next(iter(res.get("inputRequests", {})), None)
                if key:
                    retry = {"jsonrpc": "2.0", "id": 5, "method": "tools/call",
                             "params": {"name": "sample", "arguments": {"prompt": "hi"}, "_meta": MODERN_META,
                                        "inputResponses": {key: {"role": "assistant", "model": "m",
                                                                 "content": {"type": "text", "text": "raw reply"}}},
                                        "requestState": res.get("requestState")}}
                    r = httpx.post(url, json=retry, headers=modern_headers("tools/call", "sample"), timeout=10)
                    body = sse_or_json(r)[-1]
                    raw_facts[f"http_sample_retry_era_{era}"] = {"status": r.status_code, "body": body}
                    txt = body.get("result", {}).get("content", [{}])[0].get("text")
                    record(f"raw http era={era}: sample retry with inputResponses", txt == "sampled: raw reply",
                           json.dumps(body)[:300])
                call = {"jsonrpc": "2.0", "id": 6, "method": "tools/call",
                        "params": {"name": "slow", "arguments": {"steps": 2, "delay_ms": 10},
                                   "_meta": dict(MODERN_META, progressToken="p1")}}
                r = httpx.post(url, json=call, headers=modern_headers("tools/call", "slow"), timeout=10)
                msgs = sse_or_json(r)
                raw_facts[f"http_slow_progress_stateless_era_{era}"] = {
                    "status": r.status_code, "content-type": r.headers.get("content-type"), "messages": msgs}
                record(f"raw http era={era}: stateless slow progress on SSE",
                       sum(1 for m in msgs if m.get("method") == "notifications/progress") == 2, str(msgs)[:300])
            if era != "stateless":
                sid = raw_facts[f"http_initialize_era_{era}"]["session"]
                h = dict(ACCEPT, **{"mcp-session-id": sid, "mcp-protocol-version": "2025-11-25"})
                httpx.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=h, timeout=10)
                call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "nope", "arguments": {}}}
                r = httpx.post(url, json=call, headers=h, timeout=10)
                raw_facts[f"http_unknown_tool_handshake_era_{era}"] = {"status": r.status_code, "body": sse_or_json(r)}
                record(f"raw http era={era}: handshake unknown tool -32602",
                       sse_or_json(r)[-1].get("error", {}).get("code") == -32602, r.text[:300])
                r = httpx.post(url, json=discover | {"id": 8}, headers=h, timeout=10)
                raw_facts[f"http_discover_in_session_era_{era}"] = {"status": r.status_code, "body": sse_or_json(r)}
    # unknown tool with the SDK default
    with http_server("both", extra=["--unknown-tool", "sdk"]) as (url, _):
        call = {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                "params": {"name": "nope", "arguments": {}, "_meta": MODERN_META}}
        r = httpx.post(url, json=call, headers=modern_headers("tools/call", "nope"), timeout=10)
        raw_facts["http_unknown_tool_stateless_sdk_default"] = {"status": r.status_code, "body": sse_or_json(r)}


def stdio_exchange(era: str, messages: list[dict[str, Any]]) -> list[Any]:
    proc = subprocess.Popen([PY, SERVER, "stdio", "--era", era], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    assert proc.stdin and proc.stdout
    out = []
    for m in messages:
        proc.stdin.write(json.dumps(m) + "\n")
        proc.stdin.flush()
        if "id" in m:
            out.append(json.loads(proc.stdout.readline()))
    proc.stdin.close()
    proc.wait(5)
    return out


def raw_stdio_checks() -> None:
    discover = {"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {"_meta": MODERN_META}}
    init = {"jsonrpc": "2.0", "id": 2, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}}
    for era in ("both", "handshake", "stateless"):
        out = stdio_exchange(era, [discover])
        raw_facts[f"stdio_discover_era_{era}"] = out[0]
        record(f"raw stdio era={era}: server/discover", ("result" in out[0]) == (era != "handshake"), json.dumps(out[0])[:300])
        out = stdio_exchange(era, [init])
        raw_facts[f"stdio_initialize_era_{era}"] = out[0]
        record(f"raw stdio era={era}: initialize", ("result" in out[0]) == (era != "stateless"), json.dumps(out[0])[:300])
    out = stdio_exchange("both", [init, {"jsonrpc": "2.0", "method": "notifications/initialized"},
                                  {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "nope", "arguments": {}}}])
    raw_facts["stdio_unknown_tool_handshake"] = out[1]
    out = stdio_exchange("both", [{"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                                   "params": {"name": "nope", "arguments": {}, "_meta": MODERN_META}}])
    raw_facts["stdio_unknown_tool_stateless"] = out[0]
    out = stdio_exchange("both", [{"jsonrpc": "2.0", "id": 4, "method": "tools/call",
                                   "params": {"name": "elicit", "arguments": {"message": "ok?"}, "_meta": MODERN_META}}])
    raw_facts["stdio_elicit_input_required"] = out[0]
    record("raw stdio: elicit -> input_required", out[0].get("result", {}).get("resultType") == "input_required",
           json.dumps(out[0])[:300])


# ----------------------------------------------------------------------------- crash


def crash_checks() -> None:
    out = []
    proc = subprocess.Popen([PY, SERVER, "stdio"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    assert proc.stdin and proc.stdout
    proc.stdin.write(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                 "params": {"name": "crash", "arguments": {}, "_meta": MODERN_META}}) + "\n")
    proc.stdin.flush()
    rest = proc.stdout.read()
    code = proc.wait(10)
    out.append(code)
    record("crash over stdio -> exit 3, no answer", code == 3 and rest == "", f"code={code} out={rest!r}")
    with http_server() as (url, proc):
        call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                "params": {"name": "crash", "arguments": {}, "_meta": MODERN_META}}
        try:
            r = httpx.post(url, json=call, headers=modern_headers("tools/call", "crash"), timeout=10)
            detail = f"got HTTP {r.status_code}"
            ok = False
        except httpx.HTTPError as e:
            detail = f"{type(e).__name__}"
            ok = True
        code = proc.wait(10)
        record("crash over http -> exit 3, connection dropped", ok and code == 3, f"{detail} code={code}")


# ----------------------------------------------------------------------------- main


async def sdk_checks(log_dir: str) -> None:
    modern, legacy = "2026-07-28", "2025-11-25"
    for mode, ver in (("legacy", legacy), ("auto", modern), (modern, modern)):
        await full_check(f"stdio mode={mode}", stdio_params(), mode, ver)
    for mode, ver in (("legacy", legacy), ("auto", modern), (modern, modern)):
        log_file = os.path.join(log_dir, f"http-{mode}.jsonl")
        with http_server(log_file=log_file) as (url, _):
            await full_check(f"http mode={mode}", url, mode, ver)
        raw_facts[f"log_file_{mode}"] = log_file
    # era restrictions
    for transport in ("stdio", "http"):
        for era, mode, ver in (("handshake", "auto", legacy), ("handshake", "legacy", legacy),
                               ("stateless", "auto", modern), ("stateless", modern, modern)):
            if transport == "stdio":
                await negotiate_only(f"{transport} era={era} mode={mode} -> {ver}", stdio_params(era), mode, ver)
            else:
                with http_server(era) as (url, _):
                    await negotiate_only(f"{transport} era={era} mode={mode} -> {ver}", url, mode, ver)
        if transport == "stdio":
            await expect_connect_failure("stdio era=stateless mode=legacy fails", stdio_params("stateless"), "legacy")
            await expect_connect_failure("stdio era=handshake mode=2026-07-28 fails", stdio_params("handshake"), modern)
        else:
            with http_server("stateless") as (url, _):
                await expect_connect_failure("http era=stateless mode=legacy fails", url, "legacy")
            with http_server("handshake") as (url, _):
                await expect_connect_failure("http era=handshake mode=2026-07-28 fails", url, modern)
    # full run against era-restricted servers over http too
    with http_server("handshake") as (url, _):
        await full_check("http era=handshake mode=auto", url, "auto", legacy)
    with http_server("stateless") as (url, _):
        await full_check("http era=stateless mode=auto", url, "auto", modern)
    await full_check("stdio era=stateless mode=auto", stdio_params("stateless"), "auto", modern)
    await full_check("stdio era=handshake mode=auto", stdio_params("handshake"), "auto", legacy)


def main() -> int:
    global VERBOSE
    ap = argparse.ArgumentParser()
    ap.add_argument("--raw-out", default=None, help="write captured raw JSON facts to this file")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    VERBOSE = args.verbose
    t0 = time.time()
    log_dir = tempfile.mkdtemp(prefix="airlock-selfcheck-")
    anyio.run(sdk_checks, log_dir)
    raw_http_checks()
    raw_stdio_checks()
    crash_checks()
    # raw SDK-client requests of each era, from the --log-requests files
    for mode in ("legacy", "auto", "2026-07-28"):
        reqs = [json.loads(l) for l in open(raw_facts[f"log_file_{mode}"], encoding="utf-8")]
        calls = [r for r in reqs if r["kind"] == "request" and '"tools/call"' in r["body"] and '"echo"' in r["body"]]
        raw_facts[f"sdk_{mode}_echo_request"] = calls[0] if calls else None
        raw_facts[f"sdk_{mode}_first_requests"] = [
            {k: r[k] for k in ("method", "headers", "body")} for r in reqs if r["kind"] == "request"][:3]
    if args.raw_out:
        with open(args.raw_out, "w", encoding="utf-8") as f:
            json.dump(raw_facts, f, indent=2)
    failed = [r for r in results if not r[1]]
    print(f"\nselfcheck: {len(results) - len(failed)}/{len(results)} checks passed in {time.time() - t0:.1f}s")
    groups: dict[str, list[bool]] = {}
    for name, ok, _ in results:
        groups.setdefault(name.split(":")[0], []).append(ok)
    for g, oks in groups.items():
        print(f"  {'OK  ' if all(oks) else 'FAIL'} {g} ({sum(oks)}/{len(oks)})")
    for name, _, detail in failed:
        print(f"FAILED: {name}: {detail[:2000]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
