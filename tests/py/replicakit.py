"""Several `airlock serve` replicas on one real PostgreSQL (`[store] url`), for
test_replicas.py and the browser test's helper (tests/e2e/replicas.test.mjs
starts its own). Each replica is a `holdkit.Gateway` (same approvers, same
policy, its own audit file for checkpoints) whose config adds a `[store]`
section naming the replica.
"""
from __future__ import annotations

import json

from harness import AIRLOCK_BIN, gateway_number, listening_port
from holdkit import HOLD_POLICY, TOKENS_ENV, Gateway, write_config

URL_ENV = "AIRLOCK_TEST_PG_URL"


def start_replica(procs, url: str, name: str, policy: dict = HOLD_POLICY, *, heartbeat: float = 0.5,
                  lease: float = 2.0, progress: float = 0.5, extra: str = "", env: dict | None = None) -> Gateway:
    """Starts replica `name` on the PostgreSQL at `url` (passed through `url_env`). `extra` is
    appended to the config (tables only: it follows `[approval]`)."""
    tmp = procs.tmp_path
    n = gateway_number()
    config = write_config(tmp, policy, progress=progress, name=f"replica-{name}-{n}")
    config.write_text(config.read_text() + extra + "\n[store]\n"
                      f"url_env = \"{URL_ENV}\"\nreplica = {json.dumps(name)}\n"
                      f"heartbeat = {heartbeat}\nlease = {lease}\n")
    audit = tmp / f"replica-{name}-{n}.db"
    cmd = [AIRLOCK_BIN, "serve", "--config", config, "--listen", "127.0.0.1:0", "--audit", audit]
    proc = procs.start(cmd, env={**TOKENS_ENV, URL_ENV: url, **(env or {})})
    return Gateway(proc, listening_port(proc), audit, config)
