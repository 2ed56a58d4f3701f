"""The official conformance suite (@modelcontextprotocol/conformance 0.1.16, server scenarios,
--suite all) against server-everything's Streamable HTTP transport, directly and through Airlock
(allow-all policy, `--url` upstream). Both runs happen once (module fixture, concurrently, ~2 s)."""
from __future__ import annotations

import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness import NODE_DIR, PYTHON, Processes

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


# --- conformance 0.2.0-alpha.12 (npm alias `conformance-next`), per spec revision -------------------
# Against the Python SDK's own conformance server (tests/servers/everything_server.py, `mcp` 2.x),
# with `--requirements <revision>` (the scenarios that revision requires, frozen at its release,
# pending ones included), directly and through Airlock. The four runs go two at a time (~1 min).

REVISIONS = ["2025-11-25", "2026-07-28"]
EVERYTHING_PY = NODE_DIR.parent / "servers" / "everything_server.py"


def conformance_next(url: str, out, revision: str) -> dict:
    env = {**os.environ, "CONFORMANCE_PACKAGE": "conformance-next"}
    done = subprocess.run([str(NODE_DIR / "conformance.sh"), url, str(out), "--requirements", revision],
                          capture_output=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def next_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("conformance-next")
    procs = Processes(tmp)
    try:
        p = procs.start([PYTHON, EVERYTHING_PY, "--port", "0"])
        url = p.wait_for_line("LISTENING ", timeout=60).split(" ", 1)[1].strip()
        gw = procs.airlock(policy=ALLOW_ALL, url=url)
        with ThreadPoolExecutor(2) as pool:
            jobs = {(rev, where): pool.submit(conformance_next, target, tmp / f"{where}-{rev}.json", rev)
                    for rev in REVISIONS for where, target in (("direct", url), ("through", gw.mcp))}
            yield {key: job.result() for key, job in jobs.items()}
    finally:
        procs.stop_all()


def passing_checks(summary: dict) -> int:
    return sum(d["passed"] for d in summary["details"].values())


@pytest.mark.parametrize("revision", REVISIONS)
def test_conformance_next_through_airlock_loses_no_check_that_passes_directly(next_runs, revision):
    direct, through = next_runs[(revision, "direct")], next_runs[(revision, "through")]
    assert passing_checks(direct) >= 80, direct["details"]
    assert set(through["scenarios"]) == set(direct["scenarios"])
    lost = {s: {"direct": checks(direct["details"][s]), "through": checks(through["details"][s])}
            for s in direct["scenarios"]
            if set(checks(through["details"][s])[1]) - set(checks(direct["details"][s])[1])
            or checks(through["details"][s])[0] < checks(direct["details"][s])[0]}
    assert not lost, json.dumps(lost, indent=1)
    assert passing_checks(through) == passing_checks(direct)


def test_conformance_next_sse_polling_passes_through_airlock(next_runs):
    through = next_runs[("2025-11-25", "through")]
    assert through["scenarios"]["server-sse-polling"] == "pass", through["details"]["server-sse-polling"]
