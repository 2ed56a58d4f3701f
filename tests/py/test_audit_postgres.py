"""The audit chain in a shared PostgreSQL (`[store] url`), end to end: two `airlock serve`
replicas on one real cluster, allowed and denied calls through both with the official Python SDK
client (`mcp` 2.x), then `airlock audit verify --store`, `audit export --store-env`,
`replay --store` and the history API see every call exactly once in one intact chain."""
from __future__ import annotations

import json
import subprocess
import threading
import time

import httpx

from harness import AIRLOCK_BIN, PYTHON, TESTSERVER, listening_port, run_pydriver, text_of
from holdkit import ALICE, TOKENS_ENV, run_cli
from pgcluster import pg  # noqa: F401  (the fixture)

POLICY = {"version": "1", "default": "deny",
          "rules": {"echo": {"action": "allow"}, "add": {"action": "deny", "reason": "no maths here"}}}
CALLS_PER_REPLICA = 6


def start_replica(procs, name: str, url_env: dict):
    tmp = procs.tmp_path
    policy = tmp / "policy.json"
    policy.write_text(json.dumps(POLICY))
    cfg = tmp / f"{name}.toml"
    cfg.write_text(
        "[[upstream]]\nname = \"test\"\n"
        f"command = {json.dumps(PYTHON)}\nargs = {json.dumps([str(TESTSERVER), 'stdio'])}\n"
        f"policy = {json.dumps(str(policy))}\n"
        "[[approver]]\nname = \"alice\"\ntoken_env = \"AIRLOCK_TEST_ALICE\"\n"
        "[store]\nurl_env = \"AIRLOCK_TEST_PG_URL\"\n"
        "[audit]\nredact = [\"secret\"]\n")
    proc = procs.start([AIRLOCK_BIN, "serve", "--config", cfg, "--listen", "127.0.0.1:0",
                        "--audit", tmp / f"{name}.db"], env={**TOKENS_ENV, **url_env})
    return proc, f"http://127.0.0.1:{listening_port(proc)}"


def calls(name: str) -> list[dict]:
    """Allowed and denied calls, each with an argument naming it (`name-i`)."""
    steps = []
    for i in range(CALLS_PER_REPLICA):
        if i % 3 == 2:
            steps.append({"op": "call", "name": "add", "args": {"a": i, "b": 1}})
        else:
            steps.append({"op": "call", "name": "echo", "args": {"text": f"{name}-{i}"}})
    return steps


def test_two_replicas_share_one_audit_chain_that_verifies_and_exports_every_call_once(procs, pg, tmp_path):
    url = pg.url(password="hunter2")  # trust auth ignores it; it must never be printed
    env = {"AIRLOCK_TEST_PG_URL": url}
    a, base_a = start_replica(procs, "a", env)
    b, base_b = start_replica(procs, "b", env)

    reports: dict[str, dict] = {}

    def drive(name: str, base: str):
        reports[name] = run_pydriver("2026-07-28", calls(name), url=f"{base}/mcp/test", name=f"py-{name}")

    threads = [threading.Thread(target=drive, args=("a", base_a)), threading.Thread(target=drive, args=("b", base_b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name, report in reports.items():
        assert report["_exit"] == 0, report["_stderr"]
        for i, step in enumerate(report["steps"]):
            assert step["ok"], step
            if i % 3 == 2:
                assert step["result"]["isError"] and "no maths here" in text_of(step["result"]), step
            else:
                assert text_of(step["result"]) == f"{name}-{i}", step
    total = 2 * CALLS_PER_REPLICA

    # The history API of either replica shows the other's rows (one shared chain).
    for base in (base_a, base_b):
        seen = []
        for _ in range(50):
            r = httpx.get(f"{base}/api/audit?limit=100", headers={"Authorization": f"Bearer {ALICE}"})
            assert r.status_code == 200, r.text
            seen = r.json()["entries"]
            if len(seen) >= total:
                break
            time.sleep(0.1)
        assert len(seen) == total, seen
        assert {e["agent"].split("/")[0] for e in seen} == {"py-a", "py-b"}, seen

    verify = run_cli("audit", "verify", "--store", url)
    assert verify.returncode == 0, verify.stderr
    assert f"{total} row(s), hash chain intact" in verify.stdout, verify.stdout
    assert "hunter2" not in verify.stdout + verify.stderr
    assert "airlock:***@127.0.0.1" in verify.stdout, verify.stdout

    export = run_cli("audit", "export", "--format", "jsonl", "--store-env", "AIRLOCK_TEST_PG_URL", env=env)
    assert export.returncode == 0, export.stderr
    rows = [json.loads(line) for line in export.stdout.splitlines()]
    assert [r["seq"] for r in rows] == list(range(1, total + 1))
    echoed = sorted(r["arguments"]["text"] for r in rows if r["tool"] == "echo")
    expected = sorted(f"{n}-{i}" for n in "ab" for i in range(CALLS_PER_REPLICA) if i % 3 != 2)
    assert echoed == expected  # every allowed call once
    denied = [r for r in rows if r["tool"] == "add"]
    assert len(denied) == 2 * (CALLS_PER_REPLICA // 3) and all(r["decision"] == "denied" for r in denied)
    assert {r["decision"] for r in rows if r["tool"] == "echo"} == {"allowed"}

    # `replay --store`: a policy that denies echo changes exactly the allowed calls.
    strict = tmp_path / "strict.json"
    strict.write_text(json.dumps({"version": "1", "default": "deny"}))
    replay = run_cli("replay", strict, "--store", url, "--format", "json")
    assert replay.returncode == 0, replay.stderr
    changed = json.loads(replay.stdout)
    assert len(changed) == len(expected) and {c["tool"] for c in changed} == {"echo"}, changed

    # Tampering in the database is found by the same command.
    psql = [str(pg.bin / "psql"), "-h", "127.0.0.1", "-p", str(pg.port), "-U", "airlock", "-d", "postgres",
            "-c", "UPDATE airlock_audit SET decider = 'mallory' WHERE seq = 3"]
    subprocess.run(psql, check=True, capture_output=True)
    broken = run_cli("audit", "verify", "--store", url)
    assert broken.returncode == 1 and "row 3" in broken.stderr, broken.stderr
    assert "hunter2" not in broken.stderr


def test_audit_commands_refuse_a_database_without_a_chain(pg):
    done = run_cli("audit", "verify", "--store", pg.url(password="hunter2"))
    assert done.returncode != 0
    assert "no audit chain" in done.stderr and "hunter2" not in done.stderr, done.stderr
    missing = run_cli("audit", "export", "--store-env", "AIRLOCK_TEST_NO_SUCH_VAR")
    assert missing.returncode != 0 and "AIRLOCK_TEST_NO_SUCH_VAR" in missing.stderr, missing.stderr
