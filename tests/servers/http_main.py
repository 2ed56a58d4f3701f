"""Runs an ASGI app from an MCP SDK server on 127.0.0.1 (`--port N`, default any free port)
and prints `LISTENING http://127.0.0.1:PORT/mcp` once it accepts connections: the line the
tests wait for. Shared by the Python SDK test servers in this directory."""

import asyncio
import logging
import sys

import uvicorn


async def serve(app, port: int) -> None:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    runner = asyncio.create_task(server.serve())
    while not server.started:
        if runner.done():
            await runner
            return
        await asyncio.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    print(f"LISTENING http://127.0.0.1:{bound}/mcp", flush=True)
    await runner


def main(app) -> int:
    port = 0
    if "--port" in sys.argv:
        port = int(sys.argv[sys.argv.index("--port") + 1])
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(serve(app, port))
    return 0
