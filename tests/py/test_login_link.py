"""`airlock login-link`: the login link of a gateway running on this machine,
again, after the start-up text has scrolled away (quick mode, generated token)."""
import os
import stat
import subprocess
from pathlib import Path

import httpx

from harness import AIRLOCK_BIN, upstream_testserver


def login_link(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([AIRLOCK_BIN, "login-link", *args], capture_output=True, text=True, timeout=20)


def audit_of(gw) -> Path:
    cmd = gw.proc.cmd
    return Path(cmd[cmd.index("--audit") + 1])


def test_login_link_prints_the_running_gateways_link_and_token(procs, monkeypatch):
    monkeypatch.delenv("AIRLOCK_APPROVER_TOKEN", raising=False)
    gw = procs.airlock(upstream=upstream_testserver())
    dashboard = gw.proc.wait_for_line("  Dashboard:").split(":", 1)[1].strip()
    token_line = gw.proc.wait_for_line("  Approver token")
    assert token_line.endswith(dashboard.split("#token=", 1)[1]), (dashboard, token_line)
    assert "airlock login-link --audit" in gw.proc.wait_for_line("  (the dashboard link carries the same token")
    audit = audit_of(gw)
    login_file = audit.with_name(audit.name + ".login")
    assert stat.S_IMODE(login_file.stat().st_mode) == 0o600

    link = login_link("--audit", str(audit))
    assert link.returncode == 0, link.stderr
    assert link.stdout.strip() == dashboard
    token = login_link("--audit", str(audit), "--token")
    assert token.returncode == 0, token.stderr
    token = token.stdout.strip()
    assert dashboard.endswith(f"#token={token}")

    r = httpx.get(f"{gw.base}/api/pending", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json() == {"pending": []}
    # The CLI approver commands take the same token.
    env = {**os.environ, "AIRLOCK_URL": gw.base, "AIRLOCK_APPROVER_TOKEN": token}
    pending = subprocess.run([AIRLOCK_BIN, "pending"], capture_output=True, text=True, timeout=20, env=env)
    assert pending.returncode == 0, pending.stderr
    assert "No calls waiting." in pending.stdout

    # The link goes away with the gateway.
    assert gw.proc.stop() == 0
    assert not login_file.exists()
    gone = login_link("--audit", str(audit))
    assert gone.returncode == 1
    assert "no login file" in gone.stderr


def test_login_link_refuses_when_the_token_came_from_the_environment(procs):
    gw = procs.airlock(upstream=upstream_testserver(), env={"AIRLOCK_APPROVER_TOKEN": "a-token-of-sixteen-chars"})
    gw.proc.wait_for_line("  Dashboard:")
    audit = audit_of(gw)
    assert not audit.with_name(audit.name + ".login").exists()
    r = login_link("--audit", str(audit))
    assert r.returncode == 1
    assert "AIRLOCK_APPROVER_TOKEN" in r.stderr
    assert "a-token-of-sixteen-chars" not in r.stdout + r.stderr
