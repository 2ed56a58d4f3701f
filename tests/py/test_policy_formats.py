"""Policies people already have (PolicyLayer's JSON document, Intercept's YAML)
and Airlock's own conditional rules, enforced by the real gateway on calls from
the official Python SDK client in both protocol eras, and named by `airlock check`."""
from __future__ import annotations

import json
import time

import anyio
import httpx
import pytest

from harness import REPO, run_pydriver, text_of, upstream_testserver
from holdkit import ALICE, start_gateway
from rawmcp import run_check

POLICYLAYER = REPO / "policies" / "policylayer-example.json"
INTERCEPT = REPO / "policies" / "intercept-example.yaml"
ERAS = ["legacy", "2026-07-28"]


def call(name: str, **args) -> dict:
    return {"op": "call", "name": name, "args": args}


def outcome(step: dict) -> str:
    """`ok: text`, `refused <decision>: text`, or `error <code>` for one call step."""
    if not step["ok"]:
        return f"error {step['error'].get('code')}"
    result = step["result"]
    if result.get("isError"):
        return f"refused {result['_meta']['airlock.decision']}: {text_of(result)}"
    return f"ok: {text_of(result)}"


def run(era: str, url: str, script: list) -> list[dict]:
    report = run_pydriver(era, script, url=url)
    assert report["_exit"] == 0, report["_stderr"]
    return report["steps"]


def hour() -> int:
    return int(time.time() // 3600)


def test_check_names_the_format_it_read():
    done = run_check(POLICYLAYER, INTERCEPT, REPO / "policies" / "everything.json")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any("policylayer-example.json: PolicyLayer JSON, 4 rule(s), default deny" in l for l in lines), lines
    assert any("intercept-example.yaml: Intercept YAML, 2 rule(s), default allow" in l for l in lines), lines
    assert any("everything.json: Airlock JSON" in l for l in lines), lines


def test_check_reports_yaml_errors_with_line_and_column(tmp_path):
    p = tmp_path / "policy.yaml"
    p.write_text("version: 1\ntools:\n  add:\n    rules:\n      - name: x\n        conditions:\n"
                 "          - {path: args.a, op: bigger, value: 1}\n")
    done = run_check(p)
    assert done.returncode == 1
    assert f"{p}:5:" in done.stderr and "unknown op `bigger`" in done.stderr, done.stderr


def test_check_warns_about_a_branch_after_an_unconditional_one(tmp_path):
    p = tmp_path / "when.json"
    p.write_text('{"version": "1", "rules": {"add": {"when": [\n'
                 '  {"action": "allow"},\n'
                 '  {"if": [{"path": "args.a", "op": "gt", "value": 5}], "action": "deny"}\n'
                 ']}}}\n')
    done = run_check(p)
    assert done.returncode == 0, done.stderr
    assert "branch `when 2: args.a gt 5` (line 3) is never reached: `when 1: always` (line 2)" in done.stderr


@pytest.mark.parametrize("era", ERAS)
def test_policylayer_example_is_enforced_through_the_gateway(procs, era):
    gw = procs.airlock(policy=POLICYLAYER, upstream=upstream_testserver())
    started = hour()
    steps = run(era, gw.endpoint(), [
        {"op": "list"},
        call("echo", text="hi"),
        call("add", a=1, b=2),
        call("add", a=1001, b=2),
        call("delete_record", id="tmp-1"),
        call("delete_record", id="prod-1"),
        call("crash"),
        call("secret_tool"),
        call("large", size=3),
        *[call("add", a=2, b=2) for _ in range(5)],
    ])
    listed = set(steps[0]["tools"])
    assert {"echo", "add", "delete_record"} <= listed
    assert not listed & {"secret_tool", "crash", "large"}, "hidden, always denied and unnamed tools are not listed"
    results = [outcome(s) for s in steps[1:]]
    assert results[0] == "ok: hi"
    assert results[1] == "ok: 3"
    assert results[2] == ("refused denied: Airlock denied this call to `add`: Sums with a above 1000 exceed the "
                          "policy limit. (rule `add[deny_if 1: args.a gt 1000]`).")
    assert results[3] == "ok: deleted tmp-1"
    assert results[4].startswith("refused denied: Airlock denied this call to `delete_record`: Only tmp- records")
    assert results[5].startswith("refused denied: Airlock denied this call to `crash`: Crashing the server is never")
    assert results[6] == "error -32602", "a hidden tool is answered like an unknown one"
    assert results[7] == "error -32602", "an unnamed tool under default deny is answered like an unknown one"
    # add-calls: 5 per UTC calendar hour per agent; the first add and four of these pass.
    assert results[8:12] == ["ok: 4"] * 4
    if hour() == started:  # the counter resets at the top of the hour
        assert results[12].startswith("refused rate_limited: Airlock rate-limited this call to `add`: 5 calls per "
                                      "hour (UTC calendar hour, per agent, counter `add-calls`)"), results[12]


@pytest.mark.parametrize("era", ERAS)
def test_intercept_example_is_enforced_through_the_gateway(procs, era):
    gw = procs.airlock(policy=INTERCEPT, upstream=upstream_testserver())
    steps = run(era, gw.endpoint(), [
        {"op": "list"},
        call("echo", text="hello"),
        call("echo", text="1; DROP TABLE users"),
        call("add", a=1, b=2),
        call("add", a=5000, b=2),
        call("delete_record", id="1"),
        call("secret_tool"),
    ])
    listed = set(steps[0]["tools"])
    assert {"echo", "add", "large"} <= listed, "default allow lists unnamed tools"
    assert "secret_tool" not in listed
    results = [outcome(s) for s in steps[1:]]
    assert results[0] == "ok: hello"
    assert results[1] == ("refused denied: Airlock denied this call to `echo`: Text that looks like SQL is refused. "
                          "(rule `*[rule no-sql-in-text: args.text contains \"DROP TABLE\"]`).")
    assert results[2] == "ok: 3"
    assert results[3] == ("refused denied: Airlock denied this call to `add`: Sums with a above 1000 are not allowed. "
                          "(rule `add[rule small-sums: args.a lte 1000]`).")
    assert results[4].startswith("refused denied: Airlock denied this call to `delete_record`: Deleting records")
    assert results[5] == "error -32602"


REFUND_POLICY = {
    "version": "1",
    "default": "deny",
    "rules": {
        "add": {"reason": "sums need care", "when": [
            {"if": [{"path": "args.a", "op": "gt", "value": 10000}], "action": "deny", "reason": "far too large"},
            {"if": [{"any": [{"path": "args.a", "op": "gte", "value": 100},
                             {"path": "args.b", "op": "gte", "value": 100}]}], "action": "require_approval"},
            {"action": "allow"},
        ]},
    },
}


@pytest.mark.parametrize("era", ERAS)
def test_conditions_choose_allow_hold_or_deny_and_the_hold_names_the_condition(procs, era):
    from mcp import Client

    gw = start_gateway(procs, REFUND_POLICY)
    seen: dict = {}

    async def approver():
        async with httpx.AsyncClient(base_url=gw.base, headers={"Authorization": f"Bearer {ALICE}"}) as c:
            started = time.monotonic()
            while not (items := (await c.get("/api/pending")).json()["pending"]):
                assert time.monotonic() - started < 15, "call was never held"
                await anyio.sleep(0.05)
            seen["item"] = items[0]
            r = await c.post(f"/api/pending/{items[0]['id']}/approve", json={"comment": "fine"})
            assert r.status_code == 200, r.text

    async def main():
        async with Client(gw.mcp, mode=era, read_timeout_seconds=30) as client:
            small = await client.call_tool("add", {"a": 1, "b": 2})
            huge = await client.call_tool("add", {"a": 20000, "b": 2})
            async with anyio.create_task_group() as tg:
                tg.start_soon(approver)
                held = await client.call_tool("add", {"a": 1, "b": 150}, read_timeout_seconds=30)
            return small, huge, held

    small, huge, held = anyio.run(main)
    assert [c.text for c in small.content] == ["3"] and not small.is_error
    assert huge.is_error
    assert huge.content[0].text == ("Airlock denied this call to `add`: far too large "
                                    "(rule `add[when 1: args.a gt 10000]`).")
    assert [c.text for c in held.content] == ["151"] and not held.is_error
    item = seen["item"]
    assert item["rule"] == "add[when 2: any(args.a gte 100, args.b gte 100)]"
    assert item["reason"] == "sums need care"
    assert item["arguments"] == {"a": 1, "b": 150}
    rows = gw.audit_rows(pending_id=item["id"])
    assert [r["decision"] for r in rows] == ["approval_requested", "approved"]
    assert rows[0]["rule"] == item["rule"], json.dumps(rows[0])


ANNOTATIONS_POLICY = {
    "version": "1",
    "default": "deny",
    "annotations": {"destructiveHint": "require_approval"},
    "rules": {"echo": {"action": "allow"}},
}


@pytest.mark.parametrize("era", ERAS)
def test_annotations_send_a_tool_no_rule_names_to_approval(procs, era):
    """delete_record declares destructiveHint in tools/list; no rule names it."""
    from mcp import Client

    gw = start_gateway(procs, ANNOTATIONS_POLICY)
    seen: dict = {}

    async def approver():
        async with httpx.AsyncClient(base_url=gw.base, headers={"Authorization": f"Bearer {ALICE}"}) as c:
            started = time.monotonic()
            while not (items := (await c.get("/api/pending")).json()["pending"]):
                assert time.monotonic() - started < 15, "call was never held"
                await anyio.sleep(0.05)
            seen["item"] = items[0]
            r = await c.post(f"/api/pending/{items[0]['id']}/approve", json={})
            assert r.status_code == 200, r.text

    async def main():
        async with Client(gw.mcp, mode=era, read_timeout_seconds=30) as client:
            listed = await client.list_tools()
            async with anyio.create_task_group() as tg:
                tg.start_soon(approver)
                held = await client.call_tool("delete_record", {"id": "9"}, read_timeout_seconds=30)
            return listed, held

    listed, held = anyio.run(main)
    by_name = {t.name: t for t in listed.tools}
    assert set(by_name) == {"echo", "delete_record"}, "undeclared tools stay denied by default"
    assert by_name["delete_record"].description.endswith(
        "[Airlock: a human must approve each call to this tool; the call waits for their decision.]")
    assert [c.text for c in held.content] == ["deleted 9"]
    assert seen["item"]["rule"] == "annotations.destructiveHint"


def check_against(policy, target: str, *extra: str):
    import subprocess

    from harness import AIRLOCK_BIN
    return subprocess.run([AIRLOCK_BIN, "check", str(policy), "--against", target, *extra],
                          capture_output=True, text=True, timeout=60)


def test_check_against_a_stdio_server_prints_each_tools_outcome():
    from harness import PYTHON, TESTSERVER
    done = check_against(POLICYLAYER, f"{PYTHON} {TESTSERVER} stdio")
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line.split(None, 3) for line in done.stdout.splitlines()[1:]}
    assert done.stdout.splitlines()[0].split() == ["TOOL", "ANNOTATIONS", "RISK", "OUTCOME", "RULE"]
    assert rows["echo"][1:3] == ["-", "unknown"] and rows["echo"][3].split() == ["allow", "echo"]
    assert rows["delete_record"][1:3] == ["destructiveHint", "destructive"]
    assert rows["delete_record"][3].startswith("depends on arguments (deny | allow)")
    assert rows["secret_tool"][3].split() == ["hidden", "hide"]
    assert rows["large"][3].split() == ["deny", "default"]


def test_check_against_an_http_server_answers_json(procs):
    _, url = procs.testserver_http()
    done = check_against(INTERCEPT, url, "--format", "json")
    assert done.returncode == 0, done.stderr
    rows = {r["tool"]: r for r in json.loads(done.stdout)}
    assert rows["delete_record"] == {"tool": "delete_record", "annotations": {"destructiveHint": True},
                                     "risk": "destructive", "outcome": "deny", "rule": "delete_record"}
    assert rows["echo"]["outcome"] == "depends on arguments (allow | deny)", "the `*` rule may deny"
    assert rows["secret_tool"]["outcome"] == "hidden"


def test_replay_lists_recorded_calls_whose_outcome_a_candidate_policy_changes(procs, tmp_path):
    import subprocess

    from harness import AIRLOCK_BIN
    gw = start_gateway(procs, {"version": "1", "default": "deny",
                               "rules": {"echo": {"action": "allow"}, "add": {"action": "allow"}}})
    steps = run("legacy", gw.mcp, [call("echo", text="x"), call("add", a=1, b=1), call("add", a=500, b=1),
                                   call("large", size=1)])
    assert [outcome(s) for s in steps] == ["ok: x", "ok: 2", "ok: 501", "error -32602"]
    gw.proc.stop()
    candidate = tmp_path / "candidate.json"
    candidate.write_text(json.dumps({"version": "1", "default": "deny", "rules": {
        "echo": {"action": "allow"},
        "add": {"when": [{"if": [{"path": "args.a", "op": "gt", "value": 100}], "action": "require_approval"},
                         {"action": "allow"}]},
        "large": {"action": "allow"}}}))
    done = subprocess.run([AIRLOCK_BIN, "replay", str(candidate), "--audit", str(gw.audit), "--format", "json"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    changed = [(c["tool"], c["recorded"], c["now"], c["rule"]) for c in json.loads(done.stdout)]
    assert changed == [("add", "allow", "require_approval", "add[when 1: args.a gt 100]"),
                       ("large", "deny", "allow", "large")]
    assert "4 recorded call(s) replayed, 2 would change" in done.stderr
