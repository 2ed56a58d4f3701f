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
                  lease: float = 2.0, progress: float = 0.5, extra: str = "", env: dict | None = None,
                  upstream_url: str | None = None) -> Gateway:
    """Starts replica `name` on the PostgreSQL at `url` (passed through `url_env`), its upstream the
    stdio test server or the HTTP one at `upstream_url`. `extra` is appended to the config (tables
    only: it follows `[approval]`)."""
    tmp = procs.tmp_path
    n = gateway_number()
    config = write_config(tmp, policy, progress=progress, name=f"replica-{name}-{n}", url=upstream_url)
    config.write_text(config.read_text() + extra + "\n[store]\n"
                      f"url_env = \"{URL_ENV}\"\nreplica = {json.dumps(name)}\n"
                      f"heartbeat = {heartbeat}\nlease = {lease}\n")
    audit = tmp / f"replica-{name}-{n}.db"
    cmd = [AIRLOCK_BIN, "serve", "--config", config, "--listen", "127.0.0.1:0", "--audit", audit]
    proc = procs.start(cmd, env={**TOKENS_ENV, URL_ENV: url, **(env or {})})
    return Gateway(proc, listening_port(proc), audit, config)


def nginx_config(port: int, replicas: dict[str, int], prefix) -> str:
    """The nginx front of docs/deploy.md, for replicas {name: port} on 127.0.0.1: a request with
    an `Mcp-Session-Id` goes to the replica named in the id (the others as backups, which answer
    404 for a session they do not hold, so the client starts a new one); everything else
    (initialize, stateless-era requests, the dashboard and API) to any replica."""
    names = sorted(replicas)
    pools = []
    for name in names:
        backups = "".join(f"    server 127.0.0.1:{replicas[o]} backup;\n" for o in names if o != name)
        pools.append(f"  upstream airlock_{name} {{\n    server 127.0.0.1:{replicas[name]};\n{backups}  }}\n")
    every = "".join(f"    server 127.0.0.1:{replicas[n]};\n" for n in names)
    routes = "".join(f"    \"~^{n}\\.[0-9a-f]{{32}}$\" airlock_{n};\n" for n in names)
    return f"""daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {prefix}/body;
  proxy_temp_path {prefix}/proxy;
  fastcgi_temp_path {prefix}/fastcgi;
  uwsgi_temp_path {prefix}/uwsgi;
  scgi_temp_path {prefix}/scgi;
{''.join(pools)}  upstream airlock_all {{
{every}  }}
  map $http_mcp_session_id $airlock_pool {{
{routes}    default airlock_all;
  }}
  map $http_upgrade $connection_upgrade {{
    default upgrade;
    ''      '';
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://$airlock_pool;
      proxy_http_version 1.1;
      proxy_set_header Host $http_host;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_buffering off;
      proxy_read_timeout 1h;
    }}
  }}
}}
"""
