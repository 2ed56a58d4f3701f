#!/usr/bin/env python3
"""Airlock's own test MCP server (upstream for the integration tests), built on the official
Python SDK `mcp==2.3.0` (`mcp.server.mcpserver.MCPServer`).

CLI (tests depend on it exactly)
--------------------------------
  python tests/servers/testserver.py stdio [--era both|handshake|stateless]
  python tests/servers/testserver.py http --port 0 [--host 127.0.0.1] [--era ...]
        [--log-requests FILE] [--json-response] [--no-origin-check]
  common: [--unknown-tool spec|sdk]

  stdio: JSON-RPC on stdin/stdout, logs only on stderr.
  http:  Streamable HTTP at /mcp. Once listening, prints exactly one line
         `LISTENING http://127.0.0.1:<port>/mcp` to stdout (flushed); nothing else goes to stdout.
         --log-requests FILE appends one JSON line per HTTP request
         {"kind":"request","n":N,"method":"POST","path":"/mcp","headers":{...},"body":"<raw>"}
         and one per response {"kind":"response","n":N,"status":...,"headers":{...},"body":"<raw>"}
         (headers lower-cased; body is the raw text, SSE frames included; responses are written
         when the response ends).
         --json-response: answer POSTs with application/json instead of SSE (SDK option).
         --no-origin-check: disable the SDK's Host/Origin (DNS-rebinding) validation.

Tools: echo{text} -> text; add{a,b} -> "5" (integral sums print without ".0");
slow{steps=3,delay_ms=100} -> notifications/progress (progress=i, total=steps, message="step i/N")
per step when the request carried a progressToken, then "done after N steps";
sample{prompt} -> "sampled: <client reply text>"; elicit{message} -> 'elicited: <json>' where json
is the compact JSON (separators ",", ":") of the accepted content (schema {"answer": string}), e.g.
`elicited: {"answer":"yes"}`, or of the action string on decline/cancel, e.g. `elicited: "decline"`;
large{size} -> text of exactly `size` bytes of "x"; crash{} -> os._exit(3) with no answer;
delete_record{id} -> "deleted <id>" (annotations destructiveHint=true);
secret_tool{} -> "secret";
garbage{kind, with_id=true, size=64 MiB + 16} (stdio only) -> instead of an answer, writes one line to
stdout that is not a JSON-RPC message, then never answers: kind "not_utf8" (bytes 0xff 0xfe where the
result should be), "not_json" (a truncated result), "too_long" (a line of `size` bytes, over the 64 MiB
line limit of Airlock's stdio reader). with_id=true starts the line like a response to this call
(`{"jsonrpc":"2.0","id":<this request's id>,"result":…`), with_id=false gives it no id. Resource test://hello ("hello"), prompt greet{name} ->
one user message "Hello, <name>!". All tool results are unstructured (content only, no
structuredContent/outputSchema).

--unknown-tool spec (default): tools/call for an unknown name -> JSON-RPC error
  {"code":-32602,"message":"Unknown tool: <name>"} (what both spec eras prescribe).
--unknown-tool sdk: MCPServer's own default, which is NOT a protocol error but a result:
  {"content":[{"type":"text","text":"Unknown tool: <name>"}],"isError":true}.

How sample/elicit reach the client: the tools use the SDK's resolver mechanism
(`Annotated[..., Resolve(fn)]` returning `Sample(...)` / `Elicit(...)`). The SDK picks the
transport from the negotiated version: handshake era (<= 2025-11-25) -> a real server->client
JSON-RPC request (`sampling/createMessage`, `elicitation/create`) sent mid-call (on HTTP on the
POST's SSE stream); 2026-07-28 -> the tools/call returns `resultType:"input_required"` with
`inputRequests` + sealed `requestState`; the client retries tools/call with `inputResponses` and
the same `requestState` and gets the final result. Requires the client to declare the
`sampling` / `elicitation` capability (else a -32021 MissingRequiredClientCapability error).

=====================================================================================
FACTS (measured with selfcheck.py against this server, mcp 2.3.0; see the report)
=====================================================================================
How the 2.x client picks the era (`mcp.Client(..., mode=...)`, client/client.py + _probe.py):
  mode="auto" (default): sends `server/discover` with _meta protocolVersion 2026-07-28
    (HTTP: header MCP-Protocol-Version: 2026-07-28). DiscoverResult listing a modern version ->
    adopt 2026-07-28 (stateless). Any other MCPError (incl. HTTP 4xx mapped to an MCPError) ->
    `initialize` (handshake era). -32022 with a modern-only, disjoint `supported` -> raise.
    Transport errors (connection refused etc.) propagate, no fallback.
  mode="legacy": initialize handshake only (protocolVersion 2025-11-25).
  mode="2026-07-28": pin; no probe at all, adopts a synthesized DiscoverResult and sends every
    request with the 2026-07-28 envelope.

--era (what this server accepts; the SDK itself is always dual-era, restriction is ours):
  both (default): SDK default. stdio: Server.run -> serve_dual_era_loop, the first request
    decides the connection's era for the life of the process (enveloped request -> modern;
    anything else, incl. initialize -> handshake); later requests of the other era are refused
    (initialize on a modern stdio connection -> -32022; an enveloped request on a handshake
    connection -> -32600). HTTP: per request, routed on the MCP-Protocol-Version header: absent
    or a handshake version -> the session (Mcp-Session-Id) transport; any other value ->
    the stateless single-exchange entry. Both eras are served concurrently.
  handshake: stdio -> `serve_loop` (handshake-only loop); HTTP -> a POST whose
    MCP-Protocol-Version header is not a handshake version gets HTTP 400
    {"jsonrpc":"2.0","id":<id>,"error":{"code":-32600,"message":"Bad Request: Unsupported protocol
    version: 2026-07-28"}} (a 2025-11-25 server MUST answer 400 to an unsupported version).
    `server/discover` -> -32601 Method not found everywhere (a middleware, so also on stdio).
  stateless: stdio -> the SDK's modern stream loop (every request must carry the envelope;
    initialize -> -32022 naming ["2026-07-28"]). HTTP -> every request goes to the SDK's
    stateless entry: GET/DELETE -> 405, Mcp-Session-Id ignored/never minted, initialize ->
    HTTP 400 -32022 {"supported":["2026-07-28"],"requested":<client's protocolVersion>}.
  The exact JSON examples (raw requests of each era, server/discover answers, unknown-tool
  errors, an input_required result) are in the FACTS block at the end of this file.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from typing import Annotated, Any

import anyio
import mcp_types as mt
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel, Field

from mcp.server.elicitation import ElicitationResult
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.resolve import Elicit, Resolve, Sample
from mcp.shared.exceptions import MCPError

SERVER_NAME = "airlock-testserver"

# The stdio wire, duplicated before the SDK diverts fd 1 to stderr (so that
# stray prints cannot corrupt the protocol); the garbage tool writes here.
WIRE_FD: int | None = None


def log(*args: Any) -> None:
    print("[testserver]", *args, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- tools


class Answer(BaseModel):
    answer: str = Field(description="Your answer")


def ask_sampling(prompt: str) -> Sample:
    return Sample(
        [mt.SamplingMessage(role="user", content=mt.TextContent(type="text", text=prompt))],
        max_tokens=100,
    )


def ask_elicitation(message: str) -> Elicit[Answer]:
    return Elicit(message, Answer)


def build_server(unknown_tool: str, era: str) -> MCPServer:
    mcp = MCPServer(SERVER_NAME, version="0.1.0", instructions="Airlock test server", log_level="WARNING")

    @mcp.tool(description="Echo the text back", structured_output=False)
    def echo(text: str) -> str:
        return text

    @mcp.tool(description="Add two numbers", structured_output=False)
    def add(a: float, b: float) -> str:
        s = a + b
        return str(int(s)) if float(s).is_integer() else repr(s)

    @mcp.tool(description="Report progress for each step, then finish", structured_output=False)
    async def slow(ctx: Context, steps: int = 3, delay_ms: int = 100) -> str:
        for i in range(1, steps + 1):
            await anyio.sleep(delay_ms / 1000)
            await ctx.report_progress(i, steps, f"step {i}/{steps}")
        return f"done after {steps} steps"

    @mcp.tool(description="Ask the client's LLM (sampling) and return its reply", structured_output=False)
    async def sample(prompt: str, reply: Annotated[mt.CreateMessageResult, Resolve(ask_sampling)]) -> str:
        content = reply.content
        text = content.text if isinstance(content, mt.TextContent) else json.dumps(
            content.model_dump(mode="json", by_alias=True, exclude_none=True)
        )
        return f"sampled: {text}"

    @mcp.tool(description="Ask the user (elicitation) and return the outcome", structured_output=False)
    async def elicit(message: str, outcome: Annotated[ElicitationResult[Answer], Resolve(ask_elicitation)]) -> str:
        if outcome.action == "accept":
            value: Any = outcome.data.model_dump(mode="json")
        else:
            value = outcome.action
        return "elicited: " + json.dumps(value, separators=(",", ":"))

    @mcp.tool(description="Return a text of exactly `size` bytes", structured_output=False)
    def large(size: int) -> str:
        return "x" * size

    @mcp.tool(description="Exit the server process immediately with code 3", structured_output=False)
    def crash() -> str:
        log("crash tool called: exiting with code 3")
        sys.stderr.flush()
        os._exit(3)

    @mcp.tool(
        description="Delete a record (destructive)",
        annotations=mt.ToolAnnotations(destructive_hint=True, read_only_hint=False),
        structured_output=False,
    )
    def delete_record(id: str) -> str:
        return f"deleted {id}"

    @mcp.tool(description="A tool that policies hide", structured_output=False)
    def secret_tool() -> str:
        return "secret"

    @mcp.tool(description="Write a line that is not JSON-RPC to stdout instead of answering", structured_output=False)
    async def garbage(ctx: Context, kind: str, with_id: bool = True, size: int = 64 * 1024 * 1024 + 16) -> str:
        head = b'{"jsonrpc":"2.0",'
        if with_id:
            head += b'"id":' + json.dumps(ctx.request_context.request_id).encode() + b","
        head += b'"result":'
        if kind == "not_utf8":
            line = head + b'{"content":[{"type":"text","text":"\xff\xfe"}]}}\n'
        elif kind == "not_json":
            line = head + b'{"content":[{"type":"te\n'
        elif kind == "too_long":
            line = head + b'"' + b"x" * max(0, size - len(head) - 3) + b'"}\n'
        else:
            raise ValueError(f"unknown kind {kind!r}")
        log(f"garbage tool: writing a {kind} line of {len(line)} bytes to stdout")
        if WIRE_FD is None:
            raise ValueError("garbage needs the stdio transport")
        view = memoryview(line)
        while view:  # one write(2) for short lines, so no other message is cut in two
            view = view[os.write(WIRE_FD, view):]
        await anyio.sleep_forever()
        return "unreachable"

    @mcp.resource("test://hello", name="hello", mime_type="text/plain")
    def hello() -> str:
        return "hello"

    @mcp.prompt(description="Greet someone")
    def greet(name: str) -> str:
        return f"Hello, {name}!"

    async def policy_middleware(ctx: Any, call_next: Any) -> Any:
        if ctx.method == "server/discover" and era == "handshake":
            raise MCPError(code=mt.METHOD_NOT_FOUND, message="Method not found", data="server/discover")
        if ctx.method == "tools/call" and unknown_tool == "spec":
            name = (ctx.params or {}).get("name")
            if isinstance(name, str) and mcp._tool_manager.get_tool(name) is None:  # noqa: SLF001
                raise MCPError(code=mt.INVALID_PARAMS, message=f"Unknown tool: {name}")
        return await call_next(ctx)

    mcp.middleware.append(policy_middleware)
    return mcp


# ----------------------------------------------------------------------------- stdio


async def run_stdio(mcp: MCPServer, era: str) -> None:
    from mcp.server import runner
    from mcp.server.stdio import stdio_server

    low = mcp._lowlevel_server  # noqa: SLF001
    async with stdio_server() as (read_stream, write_stream):
        if era == "both":
            await low.run(read_stream, write_stream, low.create_initialization_options())
            return
        async with low.lifespan(low) as state:
            if era == "handshake":
                await runner.serve_loop(low, read_stream, write_stream, lifespan_state=state)
            else:
                try:
                    await runner._serve_modern_stream(  # noqa: SLF001
                        low, read_stream, write_stream, lifespan_state=state, raise_exceptions=False
                    )
                finally:
                    await write_stream.aclose()


# ----------------------------------------------------------------------------- http


def _json_error(status: int, req_id: Any, code: int, message: str, data: Any = None):
    from starlette.responses import Response

    err: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    body = {"jsonrpc": "2.0", "id": req_id, "error": err}
    return Response(json.dumps(body, separators=(",", ":")), status_code=status, media_type="application/json")


class RequestLogger:
    """ASGI wrapper appending raw requests/responses as JSON lines to a file."""

    def __init__(self, app: Any, path: str) -> None:
        self.app = app
        self.path = path
        self.n = 0

    def _write(self, rec: dict[str, Any]) -> None:
        rec["ts"] = time.time()
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.n += 1
        n = self.n
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        chunks: list[bytes] = []
        logged = False

        def log_request() -> None:
            nonlocal logged
            if not logged:
                logged = True
                self._write(
                    {"kind": "request", "n": n, "method": scope["method"], "path": scope["path"],
                     "headers": headers, "body": b"".join(chunks).decode("utf-8", "replace")}
                )

        async def rx() -> Any:
            msg = await receive()
            if msg["type"] == "http.request":
                chunks.append(msg.get("body", b""))
                if not msg.get("more_body", False):
                    log_request()
            return msg

        resp: dict[str, Any] = {"kind": "response", "n": n, "status": None, "headers": {}, "body": b""}

        async def tx(msg: Any) -> None:
            if msg["type"] == "http.response.start":
                log_request()
                resp["status"] = msg["status"]
                resp["headers"] = {k.decode("latin-1"): v.decode("latin-1") for k, v in msg.get("headers", [])}
            elif msg["type"] == "http.response.body":
                resp["body"] += msg.get("body", b"")
                if not msg.get("more_body", False):
                    resp["body"] = resp["body"].decode("utf-8", "replace")
                    self._write(resp)
            await send(msg)

        await self.app(scope, rx, tx)


class EraGate:
    """ASGI wrapper restricting the protocol eras served at /mcp (see module docstring)."""

    def __init__(self, app: Any, low: Any, era: str, path: str) -> None:
        self.app = app
        self.low = low
        self.era = era
        self.path = path

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or self.era == "both":
            await self.app(scope, receive, send)
            return
        from starlette.requests import Request

        pv = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"mcp-protocol-version"), None)
        if self.era == "handshake":
            if pv is None or pv in HANDSHAKE_PROTOCOL_VERSIONS:
                await self.app(scope, receive, send)
                return
            request = Request(scope, receive)
            body = await request.body()
            req_id = _peek_id(body)

            await _json_error(400, req_id, mt.INVALID_REQUEST, f"Bad Request: Unsupported protocol version: {pv}")(
                scope, receive, send
            )
            return
        # stateless-only
        from mcp.server._streamable_http_modern import handle_modern_request

        sm = self.low.session_manager
        if scope["method"] == "POST" and (pv is None or pv in HANDSHAKE_PROTOCOL_VERSIONS):
            request = Request(scope, receive)
            body = await request.body()
            try:
                decoded = json.loads(body)
            except ValueError:
                decoded = None
            if isinstance(decoded, dict) and decoded.get("method") == "initialize":
                requested = (decoded.get("params") or {}).get("protocolVersion")
                await _json_error(
                    400, decoded.get("id"), mt.UNSUPPORTED_PROTOCOL_VERSION, "Unsupported protocol version",
                    {"supported": list(MODERN_PROTOCOL_VERSIONS), "requested": requested},
                )(scope, receive, send)
                return
            # replay the consumed body for the SDK entry
            sent = False

            async def replay() -> Any:
                nonlocal sent
                if not sent:
                    sent = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            receive = replay
        await handle_modern_request(
            self.low, sm.security_settings, sm.json_response, sm._lifespan_state, scope, receive, send  # noqa: SLF001
        )


def _peek_id(body: bytes) -> Any:
    try:
        d = json.loads(body)
        return d.get("id") if isinstance(d, dict) else None
    except ValueError:
        return None


async def run_http(mcp: MCPServer, args: argparse.Namespace) -> None:
    import uvicorn

    from mcp.server.transport_security import TransportSecuritySettings

    low = mcp._lowlevel_server  # noqa: SLF001
    security = TransportSecuritySettings(enable_dns_rebinding_protection=False) if args.no_origin_check else None
    app: Any = low.streamable_http_app(
        streamable_http_path="/mcp",
        json_response=args.json_response,
        host=args.host,
        transport_security=security,
    )
    app = EraGate(app, low, args.era, "/mcp")
    if args.log_requests:
        app = RequestLogger(app, args.log_requests)

    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    # proto=IPPROTO_TCP, as uvicorn's own sockets have: asyncio sets TCP_NODELAY only on
    # connections of such a socket (without it, every answer after the first on a
    # keep-alive connection waits ~40 ms for the client's delayed ACK).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(128)
    sock.setblocking(False)
    port = sock.getsockname()[1]

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)

    async def announce() -> None:
        while not server.started:
            await anyio.sleep(0.01)
        host = f"[{args.host}]" if ":" in args.host else args.host
        sys.stdout.write(f"LISTENING http://{host}:{port}/mcp\n")
        sys.stdout.flush()
        log(f"era={args.era} listening on {host}:{port}")

    async with anyio.create_task_group() as tg:
        tg.start_soon(announce)
        await server.serve(sockets=[sock])
        tg.cancel_scope.cancel()


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("transport", choices=["stdio", "http"])
    p.add_argument("--era", choices=["both", "handshake", "stateless"], default="both")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--log-requests", metavar="FILE", default=None)
    p.add_argument("--json-response", action="store_true")
    p.add_argument("--no-origin-check", action="store_true")
    p.add_argument("--unknown-tool", choices=["spec", "sdk"], default="spec")
    args = p.parse_args(argv)

    mcp = build_server(args.unknown_tool, args.era)
    if args.transport == "stdio":
        global WIRE_FD
        WIRE_FD = os.dup(1)
        anyio.run(run_stdio, mcp, args.era)
    else:
        anyio.run(run_http, mcp, args)


if __name__ == "__main__":
    main()


# =====================================================================================
# FACTS — raw JSON captured by selfcheck.py (mcp 2.3.0 client and server, 2026-11).
# Re-capture: python tests/servers/selfcheck.py --raw-out facts.json
# =====================================================================================
#
# Handshake-era tools/call (Client(mode="legacy") over HTTP), headers (minus host/ua/encoding):
#   {"accept":"application/json, text/event-stream","content-type":"application/json",
#    "mcp-session-id":"9181786e7d174bba9bcc31b40da573b2","mcp-protocol-version":"2025-11-25"}
#   {"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo","arguments":{"text":"héllo wörld"}}}
#   (opened by {"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25",
#   "capabilities":{"sampling":{},"elicitation":{"form":{},"url":{}}},"clientInfo":{"name":"mcp","version":"0.1.0"}}},
#   then notifications/initialized (202), then a GET SSE stream; DELETE at close. Answers are
#   text/event-stream; progress: params._meta = {"progressToken": <request id>}.)
#
# Stateless tools/call (Client(mode="2026-07-28") and mode="auto" after discover), headers:
#   {"accept":"application/json, text/event-stream","content-type":"application/json",
#    "mcp-protocol-version":"2026-07-28","mcp-method":"tools/call","mcp-name":"echo"}
#   {"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"text":"héllo wörld"},
#    "_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientInfo":
#    {"name":"mcp","version":"0.1.0"},"io.modelcontextprotocol/clientCapabilities":{"sampling":{},
#    "elicitation":{"form":{},"url":{}}}}}}
#   -> 200 application/json {"jsonrpc":"2.0","id":2,"result":{"content":[{"text":"h\u00e9llo w\u00f6rld","type":"text"}],
#      "isError":false,"resultType":"complete","_meta":{"io.modelcontextprotocol/serverInfo":
#      {"name":"airlock-testserver","version":"0.1.0"}}}}
#   (a handler that emits a notification, e.g. progress, switches the answer to text/event-stream.)
#   mode="auto" first sends the same envelope with method "server/discover" (Mcp-Method: server/discover).
#
# server/discover (stateless envelope; HTTP with MCP-Protocol-Version: 2026-07-28):
#   --era both | stateless (stdio and HTTP 200 application/json):
#     {"jsonrpc":"2.0","id":1,"result":{"cacheScope":"private","capabilities":{"prompts":{"listChanged":true},
#      "resources":{"listChanged":true,"subscribe":true},"tools":{"listChanged":true}},
#      "instructions":"Airlock test server","resultType":"complete","supportedVersions":["2026-07-28"],"ttlMs":0,
#      "_meta":{"io.modelcontextprotocol/serverInfo":{"name":"airlock-testserver","version":"0.1.0"}}}}
#   --era handshake, HTTP: 400 {"jsonrpc":"2.0","id":1,"error":{"code":-32600,"message":"Bad Request: Unsupported protocol version: 2026-07-28"}}
#   --era handshake, stdio: {"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"Method not found","data":"server/discover"}}
#   --era both, inside a handshake session (HTTP Mcp-Session-Id): 200 SSE, same -32601 error.
#   Client(mode="auto") falls back to initialize on both handshake answers.
#
# initialize to --era stateless: HTTP 400 {"jsonrpc":"2.0","id":2,"error":{"code":-32022,"message":
#   "Unsupported protocol version","data":{"supported":["2026-07-28"],"requested":"2025-11-25"}}};
#   stdio: {"jsonrpc":"2.0","id":2,"error":{"code":-32022,"message":"connection is serving the 2026-07-28
#   protocol; the initialize handshake is not accepted","data":{"supported":["2026-07-28"],"requested":"2025-11-25"}}}
#   A stateless request to --era handshake stdio without initialize:
#   {"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"Invalid request parameters","data":""}}
#
# Unknown tool (--unknown-tool spec, the default), every era/transport:
#   {"jsonrpc":"2.0","id":7,"error":{"code":-32602,"message":"Unknown tool: nope"}}
#   HTTP status: handshake era 200 (SSE event), stateless era 400 application/json.
#   The SDK client raises MCPError; e.error = {"code": -32602, "message": "Unknown tool: nope"} in all modes.
#   With --unknown-tool sdk: 200 {"jsonrpc":"2.0","id":3,"result":{"content":[{"text":"Unknown tool: nope",
#   "type":"text"}],"isError":true,"resultType":"complete","_meta":{...serverInfo...}}} (no exception in the client).
#
# sample in the stateless era (first round), HTTP 200 application/json:
#   {"jsonrpc":"2.0","id":4,"result":{"inputRequests":{"__main__:ask_sampling":{"method":"sampling/createMessage",
#    "params":{"maxTokens":100,"messages":[{"content":{"text":"hi","type":"text"},"role":"user"}]}}},
#    "requestState":"v1.5kdI_syp…(sealed, ~400 chars)","resultType":"input_required",
#    "_meta":{"io.modelcontextprotocol/serverInfo":{"name":"airlock-testserver","version":"0.1.0"}}}}
#   The client's retry (new id, same name/arguments/_meta, headers Mcp-Name: sample):
#   {"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"inputResponses":{"__main__:ask_sampling":
#    {"role":"assistant","content":{"type":"text","text":"reply to hi"},"model":"fake-llm"}},
#    "requestState":"v1.…","name":"sample","arguments":{"prompt":"hi"},"_meta":{…envelope…}}}
#   elicit: inputRequests {"__main__:ask_elicitation":{"method":"elicitation/create","params":{"message":"ok?",
#    "mode":"form","requestedSchema":{"properties":{"answer":{"description":"Your answer","title":"Answer",
#    "type":"string"}},"required":["answer"],"type":"object"}}}}; response {"action":"accept","content":{"answer":"yes"}}.
#   Handshake era instead: the POST's SSE stream carries {"jsonrpc":"2.0","id":1,"method":"sampling/createMessage",
#   "params":{"messages":[{"role":"user","content":{"type":"text","text":"hi"}}],"maxTokens":100}}, the client POSTs
#   {"jsonrpc":"2.0","id":1,"result":{"role":"assistant","content":{...},"model":"fake-llm"}} (202), then the
#   tools/call result follows on the same stream. requestState is sealed with a per-process key.
