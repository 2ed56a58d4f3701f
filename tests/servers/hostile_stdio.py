#!/usr/bin/env python3
"""A deliberately hostile stdio MCP upstream, for what real servers do not do.

Reads one JSON-RPC message per line. Before answering each `tools/call`, it
writes a notification whose `params._meta` is an ARRAY holding the call's id
(a shape that a positional read of `_meta` would take for a subscription
id), then answers `ok`. Every other request gets an empty result.
"""
import json
import sys

for raw in sys.stdin:
    if not raw.strip():
        continue
    msg = json.loads(raw)
    if "id" not in msg or "method" not in msg:
        continue
    if msg["method"] == "tools/call":
        hostile = {"jsonrpc": "2.0", "method": "notifications/message", "params": {"_meta": [msg["id"]]}}
        sys.stdout.write(json.dumps(hostile) + "\n")
        result = {"content": [{"type": "text", "text": "ok"}]}
    else:
        result = {}
    sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": result}) + "\n")
    sys.stdout.flush()
