"""Airlock's secrets never reach an upstream process."""
import httpx

from harness import PYTHON, TESTSERVER

TOKEN = "approver-secret-token-0123456789"


def test_stdio_upstream_does_not_inherit_approver_or_other_airlock_secrets(procs, tmp_path):
    env_dump = tmp_path / "child-env.txt"
    upstream = ["sh", "-c", f'env > "{env_dump}"; exec "{PYTHON}" "{TESTSERVER}" stdio']
    gw = procs.airlock(
        upstream=upstream,
        env={"AIRLOCK_APPROVER_TOKEN": TOKEN, "AIRLOCK_SOMETHING_ELSE": "x", "COPIED_TOKEN": TOKEN, "HARMLESS": "kept"},
    )
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    r = httpx.post(gw.mcp, json=init, headers={"accept": "application/json, text/event-stream"}, timeout=20)
    assert r.status_code == 200, r.text
    child_env = env_dump.read_text()
    assert TOKEN not in child_env
    assert "AIRLOCK_" not in child_env
    assert "HARMLESS=kept" in child_env
