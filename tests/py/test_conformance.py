"""The official conformance suite (@modelcontextprotocol/conformance 0.1.16, server scenarios,
--suite all) against server-everything's Streamable HTTP transport, directly and through Airlock
(allow-all policy, `--url` upstream). Both runs happen once (module fixture, concurrently, ~2 s)."""
from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness import NODE_DIR, Processes

ALLOW_ALL = {"version": "1", "default": "allow"}


def conformance(url: str, out) -> dict:
    done = subprocess.run([str(NODE_DIR / "conformance.sh"), url, str(out), "--suite", "all"],
                          capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("conformance")
    procs = Processes(tmp)
    try:
        _, url = procs.everything_http()
        gw = procs.airlock(policy=ALLOW_ALL, url=url)
        with ThreadPoolExecutor(2) as pool:
            d = pool.submit(conformance, url, tmp / "direct.json")
            t = pool.submit(conformance, gw.mcp, tmp / "through.json")
            yield d.result(), t.result()
    finally:
        procs.stop_all()


def checks(details: dict) -> tuple:
    return details["passed"], sorted(f["id"] for f in details["failures"])


def test_conformance_through_airlock_passes_every_scenario_that_passes_directly(runs):
    direct, through = runs
    passing = {s for s, r in direct["scenarios"].items() if r == "pass"}
    assert len(passing) >= 10, direct["scenarios"]
    assert set(through["scenarios"]) == set(direct["scenarios"])
    lost = {s: through["details"][s]["failures"] for s in passing if through["scenarios"][s] != "pass"}
    assert not lost, json.dumps(lost, indent=1)


def test_conformance_dns_rebinding_protection_passes_through_airlock(runs):
    _, through = runs
    assert through["scenarios"]["dns-rebinding-protection"] == "pass", through["details"]["dns-rebinding-protection"]


def test_conformance_through_airlock_changes_no_other_check(runs):
    """Scenarios that fail directly (server-everything lacks the suite's fixtures) fail through
    Airlock with exactly the same failed checks: Airlock neither hides nor adds a failure."""
    direct, through = runs
    differ = {s: {"direct": checks(direct["details"][s]), "through": checks(through["details"][s])}
              for s in direct["scenarios"]
              if s != "dns-rebinding-protection" and checks(direct["details"][s]) != checks(through["details"][s])}
    assert not differ, json.dumps(differ, indent=1)
