#!/usr/bin/env python3
"""Client driver on the official Python SDK (`mcp` 2.x `Client`), with the same contract as the
Node drivers in tests/node/clients (see tests/node/README.md): run a JSON script of steps against
one server and print ONE JSON document on stdout.

    python pydriver.py --mode legacy|auto|2026-07-28 --url URL --script JSON [options]
    python pydriver.py --mode ... --script JSON [options] --stdio -- <command> <args...>

Options: --name N (clientInfo.name, default py-driver), --sample-text T (default sampled-by-py),
--elicit-content JSON (default {"answer":"yes"}), --elicit-action accept|decline|cancel (default accept),
--timeout-ms N (read timeout, default 30000).
Declares sampling, elicitation and roots (handlers answer like the Node drivers: sampling ->
{model:"<name>-fixed-model", role:"assistant", content:{type:"text",text:<sample-text>}},
elicitation -> accept with the content, roots -> one root).

Steps (each may carry `timeoutMs`, `label`): list (cursor?, full?), call (name, args, meta?,
progress?), request is not supported,
sleep (ms), close (leaves the Client context: DELETE on a handshake-era HTTP session, the child is
stopped on stdio). `terminate` is an alias of `close` (the Python SDK has no separate DELETE).
Output steps carry the same fields as the Node drivers (`ok`, `result` | `error` {kind, code,
message, data?}, `progress`, `progressEvents`, `sampling`, `elicitation`, `roots`, `elapsedMs`).
Exit: 0 when every step ran, 2 when connecting failed (the document still has `crash`).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import anyio
import mcp_types as mt
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from mcp import Client, StdioServerParameters
from mcp.shared.exceptions import MCPError


def dump(model: Any) -> Any:
    if hasattr(model, "model_dump"):
        return model.model_dump(mode="json", by_alias=True, exclude_none=True)
    return model


def leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def error_json(exc: BaseException) -> dict[str, Any]:
    exc = leaf(exc)
    if isinstance(exc, MCPError):
        out: dict[str, Any] = {"kind": "jsonrpc", "code": exc.code, "message": exc.message, "name": type(exc).__name__}
        if exc.data is not None:
            out["data"] = exc.data
        return out
    if isinstance(exc, TimeoutError):
        return {"kind": "timeout", "code": None, "message": str(exc), "name": type(exc).__name__}
    return {"kind": "transport", "code": None, "message": f"{type(exc).__name__}: {exc}", "name": type(exc).__name__}


async def run_step(client: Client, step: dict[str, Any], counters: dict[str, int]) -> dict[str, Any]:
    op = step["op"]
    out: dict[str, Any] = {"op": op}
    if "name" in step:
        out["name"] = step["name"]
    if "label" in step:
        out["label"] = step["label"]
    before = dict(counters)
    started = time.monotonic()
    events: list[dict[str, Any]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        counters["progress"] += 1
        ev: dict[str, Any] = {"progress": progress}
        if total is not None:
            ev["total"] = total
        if message is not None:
            ev["message"] = message
        events.append(ev)

    timeout = step.get("timeoutMs")
    try:
        with anyio.fail_after(timeout / 1000 if timeout else None):
            await run_op(client, step, out, on_progress)
    except Exception as e:  # noqa: BLE001
        out["ok"] = False
        out["error"] = error_json(e)
    if op == "call" or step.get("progress"):
        out["progress"] = len(events)
        if events:
            out["progressEvents"] = events
    for k in ("sampling", "elicitation", "roots"):
        out[k] = counters[k] - before[k]
    out["elapsedMs"] = int((time.monotonic() - started) * 1000)
    return out


async def run_op(client: Client, step: dict[str, Any], out: dict[str, Any], on_progress: Any) -> None:
    op = step["op"]
    if op == "list":
        r = await client.list_tools(cursor=step.get("cursor"))
        out["tools"] = [t.name for t in r.tools]
        out["descriptions"] = {t.name: t.description for t in r.tools}
        if step.get("full"):
            out["result"] = dump(r)
    elif op == "call":
        r = await client.call_tool(
            step["name"],
            step.get("args", {}),
            progress_callback=on_progress if step.get("progress") else None,
            meta=step.get("meta"),
        )
        out["result"] = dump(r)
    elif op == "sleep":
        await anyio.sleep(step.get("ms", 0) / 1000)
    else:
        raise SystemExit(f"unknown op {op!r}")
    out["ok"] = True


async def run(opts: argparse.Namespace, doc: dict[str, Any]) -> int:
    counters = doc["totals"]

    async def sampling_cb(ctx: Any, params: mt.CreateMessageRequestParams) -> mt.CreateMessageResult:
        counters["sampling"] += 1
        return mt.CreateMessageResult(
            role="assistant",
            content=mt.TextContent(type="text", text=opts.sample_text),
            model=f"{opts.name}-fixed-model",
            stop_reason="endTurn",
        )

    async def elicitation_cb(ctx: Any, params: mt.ElicitRequestParams) -> mt.ElicitResult:
        counters["elicitation"] += 1
        counters.setdefault("elicitMessages", []).append(params.message)
        if opts.elicit_action != "accept":
            return mt.ElicitResult(action=opts.elicit_action)
        return mt.ElicitResult(action="accept", content=json.loads(opts.elicit_content))

    async def roots_cb(ctx: Any) -> mt.ListRootsResult:
        counters["roots"] += 1
        return mt.ListRootsResult(roots=[mt.Root(uri="file:///tmp/airlock-test-root", name="airlock-test-root")])

    if opts.url:
        target: Any = opts.url
    else:
        target = StdioServerParameters(command=opts.stdio[0], args=opts.stdio[1:])
    client = Client(
        target,
        mode=opts.mode,
        sampling_callback=sampling_cb,
        elicitation_callback=elicitation_cb,
        list_roots_callback=roots_cb,
        client_info=mt.Implementation(name=opts.name, version="1.0.0"),
        read_timeout_seconds=opts.timeout_ms / 1000,
        cache=None,
    )
    rest: list[dict[str, Any]] = []  # the close/terminate step that ended the session, and after
    started = time.monotonic()
    try:
        async with client:
            doc["protocolVersion"] = client.protocol_version
            doc["era"] = "modern" if client.protocol_version in MODERN_PROTOCOL_VERSIONS else "legacy"
            doc["serverInfo"] = dump(client.server_info)
            doc["serverCapabilities"] = dump(client.server_capabilities)
            for i, step in enumerate(opts.script):
                if step["op"] in ("close", "terminate"):
                    rest = opts.script[i:]
                    started = time.monotonic()
                    break
                doc["steps"].append(await run_step(client, step, counters))
    except BaseException as e:  # noqa: BLE001
        if doc["protocolVersion"] is None:
            doc["crash"] = error_json(e)
            return 2
        if not rest:
            raise
        closing: dict[str, Any] = {"ok": False, "error": error_json(e)}
    else:
        closing = {"ok": True}
    for step in rest:
        if step["op"] not in ("close", "terminate"):
            break
        out = {"op": step["op"], **closing, "sampling": 0, "elicitation": 0, "roots": 0,
               "elapsedMs": int((time.monotonic() - started) * 1000)}
        if "label" in step:
            out["label"] = step["label"]
        doc["steps"].append(out)
    return 0


def main() -> None:
    argv = sys.argv[1:]
    stdio = None
    if "--stdio" in argv:
        i = argv.index("--stdio")
        stdio = argv[i + 1 :]
        if stdio and stdio[0] == "--":
            stdio = stdio[1:]
        argv = argv[:i]
    p = argparse.ArgumentParser(description="Python mcp 2.x client driver")
    p.add_argument("--mode", default="auto")
    p.add_argument("--url")
    p.add_argument("--script", default='[{"op":"list"},{"op":"close"}]')
    p.add_argument("--name", default="py-driver")
    p.add_argument("--sample-text", default="sampled-by-py")
    p.add_argument("--elicit-content", default='{"answer":"yes"}')
    p.add_argument("--elicit-action", default="accept", choices=["accept", "decline", "cancel"])
    p.add_argument("--timeout-ms", type=int, default=30000)
    opts = p.parse_args(argv)
    opts.stdio = stdio
    if bool(opts.url) == bool(stdio):
        p.error("need exactly one of --url or --stdio -- <command>")
    opts.script = json.loads(opts.script)
    import mcp

    doc: dict[str, Any] = {
        "driver": "py",
        "sdk": f"mcp@{getattr(mcp, '__version__', '2.x')}",
        "transport": "http" if opts.url else "stdio",
        "eraRequested": opts.mode,
        "era": None,
        "protocolVersion": None,
        "serverInfo": None,
        "serverCapabilities": None,
        "steps": [],
        "totals": {"sampling": 0, "elicitation": 0, "roots": 0, "progress": 0},
    }
    code = anyio.run(run, opts, doc)
    sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    sys.stdout.flush()
    sys.exit(code)


if __name__ == "__main__":
    main()
