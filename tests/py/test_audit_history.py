"""The audit history as a person uses it: export through the API and the CLI
(JSONL and CSV, same rows), `airlock audit verify` before and after someone
edits the database, redaction, and what restarts and shutdowns leave behind —
against the real binary and its real SQLite file."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import signal
import sqlite3
import time

import rawmcp as rm
from harness import AIRLOCK_BIN, listening_port, text_of
from holdkit import BOB, TOKENS_ENV, HeldCall, run_cli, start_gateway

CSV_COLUMNS = ["seq", "id", "at", "decision", "session", "agent", "upstream", "tool", "arguments", "args_hash",
               "rule", "reason", "pending_id", "decider", "channel", "comment", "wait_ms", "prev_hash", "hash"]


def canonical(value) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def some_history(gw) -> list[dict]:
    """allowed, denied, approved (with comment), denied_by_human; returns the held items."""
    for name, args in (("echo", {"text": "héllo, \"world\"\nline 2"}), ("crash", {})):
        c = HeldCall(gw.mcp, name, args)
        c.start()
        c.result()
    calls = [HeldCall(gw.mcp, "delete_record", {"id": f"h{i}"}) for i in range(2)]
    for c in calls:
        c.start()
    items = {p["arguments"]["id"]: p for p in gw.wait_pending(2)}
    assert gw.decide(items["h0"]["id"], "approve", comment="fine, with a comma").status_code == 200
    assert gw.decide(items["h1"]["id"], "deny", token=BOB, comment='no "quotes" please').status_code == 200
    for c in calls:
        c.result()
    return list(items.values())


def wait_rows(gw, n: int) -> list[dict]:
    rows = rm.wait_until(lambda: (lambda r: r if len(r) >= n else None)(jsonl(
        gw.api("GET", "/api/audit/export", params={"format": "jsonl"}).text)), timeout=10)
    assert rows and len(rows) == n, rows
    return rows


def test_export_jsonl_and_csv_round_trip_between_api_and_cli(procs):
    gw = start_gateway(procs)
    some_history(gw)
    # allowed, denied, 2 x approval_requested, approved, denied_by_human
    api_rows = wait_rows(gw, 6)
    assert sorted(r["decision"] for r in api_rows) == sorted(
        ["allowed", "denied", "approval_requested", "approval_requested", "approved", "denied_by_human"])
    assert [r["seq"] for r in api_rows] == list(range(1, 7))
    r = gw.api("GET", "/api/audit/export", params={"format": "jsonl"})
    assert r.headers["content-type"].startswith("application/x-ndjson")
    cli = run_cli("audit", "export", "--format", "jsonl", "--audit", gw.audit)
    assert cli.returncode == 0, cli.stderr
    assert jsonl(cli.stdout) == api_rows

    api_csv = gw.api("GET", "/api/audit/export", params={"format": "csv"})
    assert api_csv.status_code == 200 and api_csv.headers["content-type"].startswith("text/csv")
    cli_csv = run_cli("audit", "export", "--format", "csv", "--audit", gw.audit)
    assert cli_csv.returncode == 0, cli_csv.stderr
    assert cli_csv.stdout == api_csv.text
    table = list(csv.DictReader(io.StringIO(api_csv.text)))
    assert list(table[0].keys()) == CSV_COLUMNS
    assert len(table) == len(api_rows)
    for row, entry in zip(table, api_rows):
        for key in CSV_COLUMNS:
            value = entry[key]
            if key == "arguments":
                expected = "" if value is None else canonical(value)
            else:
                expected = "" if value is None else str(value)
            assert row[key] == expected, (key, row[key], expected)

    # The filters of the API and the CLI agree.
    since = api_rows[3]["at"]
    by_api = jsonl(gw.api("GET", "/api/audit/export", params={"format": "jsonl", "since": since}).text)
    by_cli = jsonl(run_cli("audit", "export", "--since", since, "--audit", gw.audit).stdout)
    assert by_api == by_cli and by_api and all(e["at"] >= since for e in by_api)
    for params, flags in (({"decider": "bob"}, ["--decider", "bob"]),
                          ({"tool": "delete_*", "decision": "approval_requested"},
                           ["--tool", "delete_*", "--decision", "approval_requested"]),
                          ({"agent": "*"}, ["--agent", "*"]), ({"tool": "nope"}, ["--tool", "nope"])):
        by_api = jsonl(gw.api("GET", "/api/audit/export", params={"format": "jsonl", **params}).text)
        by_cli = jsonl(run_cli("audit", "export", *flags, "--audit", gw.audit).stdout)
        assert by_api == by_cli, params
    held = jsonl(run_cli("audit", "export", "--tool", "delete_*", "--decision", "approval_requested",
                         "--audit", gw.audit).stdout)
    assert [e["decision"] for e in held] == ["approval_requested"] * 2, held
    assert gw.api("GET", "/api/audit/export", params={"format": "xml"}).status_code == 400


def test_audit_query_filters_and_paginates(procs):
    gw = start_gateway(procs)
    some_history(gw)
    wait_rows(gw, 6)
    [denied] = gw.api("GET", "/api/audit", params={"decider": "bob"}).json()["entries"]
    assert denied["decision"] == "denied_by_human" and denied["comment"] == 'no "quotes" please'
    held = gw.api("GET", "/api/audit", params={"tool": "delete_record", "decision": "approval_requested"}).json()
    assert len(held["entries"]) == 2
    seen, cursor = [], None
    while True:
        page = gw.api("GET", "/api/audit", params={"limit": 4, **({"cursor": cursor} if cursor else {})}).json()
        seen += [e["seq"] for e in page["entries"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert sorted(seen) == list(range(1, 7)) and len(seen) == 6
    bad = gw.api("GET", "/api/audit", params={"since": "yesterday"})
    assert bad.status_code == 400 and "since" in bad.json()["error"]["message"]


def test_audit_redacts_secret_argument_keys_but_hashes_the_real_ones(procs):
    gw = start_gateway(procs)
    args = {"id": "r1", "password": "hunter2", "nested": {"Token": "abc123"}}
    call = HeldCall(gw.mcp, "delete_record", args)
    call.start()
    [item] = gw.wait_pending(1)
    assert item["arguments"] == args  # the approver sees what will be sent
    assert gw.decide(item["id"], "deny").status_code == 200
    call.result()
    rows = gw.audit_rows(pending_id=item["id"])
    export = gw.api("GET", "/api/audit/export").text
    assert "hunter2" not in export and "abc123" not in export
    assert rows[0]["arguments"] == {"id": "r1", "password": "[redacted]", "nested": {"Token": "[redacted]"}}
    assert rows[0]["args_hash"] == hashlib.sha256(canonical(args).encode()).hexdigest()


def test_verify_passes_then_names_the_edited_row(procs):
    gw = start_gateway(procs)
    some_history(gw)
    wait_rows(gw, 6)
    assert gw.proc.stop(signal.SIGTERM) == 0
    ok = run_cli("audit", "verify", "--audit", gw.audit)
    assert ok.returncode == 0, ok.stderr
    assert "6 row(s)" in ok.stdout and "intact" in ok.stdout, ok.stdout

    with sqlite3.connect(gw.audit) as db:
        (seq, row_id), = db.execute("SELECT seq, id FROM audit WHERE decision = 'denied_by_human'").fetchall()
        db.execute("UPDATE audit SET comment = 'approved, honest' WHERE seq = ?", (seq,))
    bad = run_cli("audit", "verify", "--audit", gw.audit)
    assert bad.returncode == 1, (bad.stdout, bad.stderr)
    assert f"row {seq} " in bad.stderr and row_id in bad.stderr and "changed" in bad.stderr, bad.stderr

    # Put it back, then remove a row instead: the gap is named.
    with sqlite3.connect(gw.audit) as db:
        db.execute("UPDATE audit SET comment = 'no \"quotes\" please' WHERE seq = ?", (seq,))
    assert run_cli("audit", "verify", "--audit", gw.audit).returncode == 0
    with sqlite3.connect(gw.audit) as db:
        db.execute("DELETE FROM audit WHERE seq = 2")
    gap = run_cli("audit", "verify", "--audit", gw.audit)
    assert gap.returncode == 1 and "row 2" in gap.stderr, gap.stderr
    missing = run_cli("audit", "verify", "--audit", gw.audit.with_name("nope.db"))
    assert missing.returncode != 0 and "nope.db" in missing.stderr


def kill_while_holding(gw, hold_id: str) -> tuple[HeldCall, dict]:
    """Holds a call on `gw`, then kills it with SIGKILL (no chance to record anything);
    returns the call and its pending item."""
    call = HeldCall(gw.mcp, "delete_record", {"id": hold_id})
    call.start()
    [item] = gw.wait_pending(1, where=lambda p: p["arguments"] == {"id": hold_id})
    os.kill(gw.proc.popen.pid, signal.SIGKILL)
    gw.proc.popen.wait(10)
    return call, item


def test_restart_records_holds_left_open_as_abandoned(procs):
    gw = start_gateway(procs)
    call, item = kill_while_holding(gw, "lost")
    call.join(10)
    assert call.answer is None  # the agent saw its connection drop

    again = start_gateway(procs, audit=gw.audit, config=gw.config)
    assert again.pending() == []
    [row] = again.decision_rows(item["id"])
    assert row["decision"] == "abandoned" and row["tool"] == "delete_record"
    assert row["arguments"] == {"id": "lost"}
    assert again.decide(item["id"], "approve").status_code in (404, 409)
    export = [e for e in jsonl(again.api("GET", "/api/audit/export").text) if e["pending_id"] == item["id"]]
    assert [e["decision"] for e in export] == ["approval_requested", "abandoned"]
    assert again.metrics()['airlock_calls_total{outcome="abandoned"}'] == 1
    assert again.proc.stop(signal.SIGTERM) == 0

    # A second restart does not abandon it twice; the chain is intact.
    third = start_gateway(procs, audit=gw.audit, config=gw.config)
    assert len(third.decision_rows(item["id"])) == 1
    assert third.proc.stop(signal.SIGTERM) == 0
    assert run_cli("audit", "verify", "--audit", gw.audit).returncode == 0


def test_a_second_gateway_on_the_same_file_leaves_the_firsts_holds_alone(procs):
    """Several gateways may share one audit file (one `airlock stdio` per client-spawned server).
    One that starts while another runs must not record the other's live holds as abandoned;
    once it is alone again, a restart does abandon what a killed gateway left."""
    first = start_gateway(procs)
    call = HeldCall(first.mcp, "delete_record", {"id": "shared-file"})
    call.start()
    [item] = first.wait_pending(1)

    second = start_gateway(procs, audit=first.audit, config=first.config)
    assert rm.wait_until(lambda: "may belong to another running gateway" in second.proc.stderr_text(), 5), \
        second.proc.stderr_text()
    assert second.audit_rows(decision="abandoned") == []
    assert first.decide(item["id"], "approve").status_code == 200
    assert text_of(call.result(15)) == "deleted shared-file"
    assert [r["decision"] for r in second.decision_rows(item["id"])] == ["approved"]

    # A hold left by a killed gateway stays open while another gateway runs, and is abandoned by
    # the next gateway that starts alone.
    _, orphan = kill_while_holding(first, "killed")
    assert second.proc.stop(signal.SIGTERM) == 0
    alone = start_gateway(procs, audit=first.audit, config=first.config)
    assert [r["decision"] for r in alone.decision_rows(orphan["id"])] == ["abandoned"]
    assert run_cli("audit", "verify", "--audit", first.audit).returncode == 0


def test_gateways_starting_together_abandon_a_leftover_hold_once(procs):
    """Start-ups on one audit file take turns: of three gateways started at the same moment, one
    finds itself alone and records the killed gateway's hold as abandoned; the others see company."""
    first = start_gateway(procs)
    _, orphan = kill_while_holding(first, "left-over")
    cmd = [AIRLOCK_BIN, "serve", "--config", first.config, "--listen", "127.0.0.1:0", "--audit", first.audit]
    starting = [procs.start(cmd, env=TOKENS_ENV) for _ in range(3)]
    ports = [listening_port(p) for p in starting]
    assert len(set(ports)) == 3
    rows = [r for r in jsonl(run_cli("audit", "export", "--audit", first.audit).stdout)
            if r["pending_id"] == orphan["id"]]
    assert [r["decision"] for r in rows] == ["approval_requested", "abandoned"], rows
    assert run_cli("audit", "verify", "--audit", first.audit).returncode == 0


def test_sigterm_denies_open_holds_records_it_and_exits_zero(procs, tmp_path):
    marker = tmp_path / "sigterm-upstream-marker"
    gw = start_gateway(procs, upstream_args=["--log-requests", marker])
    calls = [HeldCall(gw.mcp, "delete_record", {"id": f"s{i}"}) for i in range(2)]
    for c in calls:
        c.start()
    items = gw.wait_pending(2)
    assert rm.procs_with(marker), "the upstream child should be running"
    started = time.monotonic()
    os.kill(gw.proc.popen.pid, signal.SIGTERM)
    for c in calls:
        result = c.result(15)
        assert result["isError"] is True and "gateway shutting down" in text_of(result), result
    assert gw.proc.popen.wait(15) == 0, gw.proc.stderr_text()[-2000:]
    assert time.monotonic() - started < 10
    assert rm.wait_until(lambda: not rm.procs_with(marker), 5), "upstream child outlived the gateway"
    cli = run_cli("audit", "export", "--audit", gw.audit)
    rows = jsonl(cli.stdout)
    for item in items:
        [row] = [r for r in rows if r["pending_id"] == item["id"] and r["decision"] != "approval_requested"]
        assert row["decision"] == "denied" and row["reason"] == "gateway shutting down", row
    assert run_cli("audit", "verify", "--audit", gw.audit).returncode == 0
    # Nothing is left to abandon on the next start.
    again = start_gateway(procs, audit=gw.audit, config=gw.config)
    assert again.audit_rows(decision="abandoned") == []


def test_an_answered_call_is_in_the_history_read_right_after(procs):
    """The writer gathers allowed rows for a few ms before it commits; the API waits for rows still
    queued, so reading the history right after a call's answer always shows that call."""
    gw = start_gateway(procs)
    for i in range(20):
        c = HeldCall(gw.mcp, "echo", {"text": f"now-{i}"})
        c.start()
        assert text_of(c.result()) == f"now-{i}"
        r = gw.api("GET", "/api/audit", params={"tool": "echo", "limit": 1})
        assert r.status_code == 200, r.text
        [newest] = r.json()["entries"]
        assert newest["arguments"] == {"text": f"now-{i}"}, (i, newest)
        exported = jsonl(gw.api("GET", "/api/audit/export", params={"tool": "echo"}).text)
        assert exported[-1]["arguments"] == {"text": f"now-{i}"}, (i, exported[-1])


def rehash_chain(db: sqlite3.Connection):
    """Recomputes every row's prev_hash and hash with the documented formula (docs/audit.md), as an
    attacker with write access to the file can."""
    prev = "0" * 64
    rows = db.execute("SELECT seq, id, at, decision, session, agent, upstream, tool, arguments, args_hash,"
                      " rule, reason, pending_id, decider, channel, comment, wait_ms FROM audit ORDER BY seq").fetchall()
    for fields in rows:
        canonical_row = json.dumps(list(fields), separators=(",", ":"), ensure_ascii=False)
        digest = hashlib.sha256((prev + canonical_row).encode()).hexdigest()
        db.execute("UPDATE audit SET prev_hash = ?, hash = ? WHERE seq = ?", (prev, digest, fields[0]))
        prev = digest


def copy_store(src, dst):
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)
    return dst


def test_signed_checkpoints_catch_truncation_and_a_rehashed_chain(procs, tmp_path):
    gw = start_gateway(procs)
    some_history(gw)
    wait_rows(gw, 6)
    assert gw.proc.stop(signal.SIGTERM) == 0  # a graceful stop signs the final head
    checkpoints = gw.audit.with_name(gw.audit.name + ".checkpoints")
    lines = [json.loads(line) for line in checkpoints.read_text().splitlines()]
    assert lines and lines[-1]["seq"] == 6, lines
    assert set(lines[-1]) == {"seq", "hash", "time", "public_key", "signature"}
    key = run_cli("audit", "public-key", "--audit", gw.audit)
    assert key.returncode == 0, key.stderr
    public_key = key.stdout.strip()
    assert public_key == lines[-1]["public_key"]
    assert public_key in gw.proc.stderr_text(), "the public key is announced at start"
    key_file = gw.audit.with_name(gw.audit.name + ".key")
    assert key_file.stat().st_mode & 0o777 == 0o600

    # A copy shipped elsewhere, and the untouched store: verified.
    shipped = tmp_path / "shipped.checkpoints"
    shipped.write_text(checkpoints.read_text())
    ok = run_cli("audit", "verify", "--audit", gw.audit, "--checkpoint", shipped, "--public-key", public_key)
    assert ok.returncode == 0, ok.stderr
    assert "6 row(s), hash chain intact" in ok.stdout and "latest at row 6" in ok.stdout, ok.stdout

    # Rows removed from the end: the chain alone still looks intact; the checkpoint does not.
    truncated = copy_store(gw.audit, tmp_path / "truncated.db")
    with sqlite3.connect(truncated) as db:
        db.execute("DELETE FROM audit WHERE seq > 4")
    alone = run_cli("audit", "verify", "--audit", truncated)
    assert alone.returncode == 0 and "4 row(s)" in alone.stdout, (alone.stdout, alone.stderr)
    caught = run_cli("audit", "verify", "--audit", truncated, "--checkpoint", shipped, "--public-key", public_key)
    assert caught.returncode == 1, (caught.stdout, caught.stderr)
    n = len(lines)
    assert f"checkpoint line {n} (row 6," in caught.stderr and "row 6 is missing" in caught.stderr, caught.stderr
    assert "ends at row 4" in caught.stderr, caught.stderr

    # A row edited, then the whole chain re-hashed with the documented formula.
    rewritten = copy_store(gw.audit, tmp_path / "rewritten.db")
    with sqlite3.connect(rewritten) as db:
        db.execute("UPDATE audit SET decision = 'approved', comment = 'fine' WHERE decision = 'denied_by_human'")
        rehash_chain(db)
    alone = run_cli("audit", "verify", "--audit", rewritten)
    assert alone.returncode == 0 and "6 row(s), hash chain intact" in alone.stdout, (alone.stdout, alone.stderr)
    caught = run_cli("audit", "verify", "--audit", rewritten, "--checkpoint", shipped, "--public-key", public_key)
    assert caught.returncode == 1, (caught.stdout, caught.stderr)
    assert f"checkpoint line {n} (row 6," in caught.stderr and "rewritten" in caught.stderr, caught.stderr

    # Without a key of one's own the check is refused, saying why...
    keyless = run_cli("audit", "verify", "--audit", gw.audit, "--checkpoint", shipped)
    assert keyless.returncode != 0, (keyless.stdout, keyless.stderr)
    assert "--public-key" in keyless.stderr and "--trust-embedded-key" in keyless.stderr, keyless.stderr
    # ...unless asked for by name, with a warning that it proves little.
    trusting = run_cli("audit", "verify", "--audit", gw.audit, "--checkpoint", shipped, "--trust-embedded-key")
    assert trusting.returncode == 0 and "--trust-embedded-key" in trusting.stderr, trusting.stderr
    # The kept key may also come from a file.
    pub = tmp_path / "audit.pub"
    pub.write_text(key.stdout)
    from_file = run_cli("audit", "verify", "--audit", gw.audit, "--checkpoint", shipped, "--public-key-file", pub)
    assert from_file.returncode == 0, from_file.stderr
    # A checkpoint signed by another key is refused when the kept key is given.
    other = run_cli("audit", "verify", "--audit", gw.audit, "--checkpoint", shipped,
                    "--public-key", "A" * 43 + "=")
    assert other.returncode != 0, (other.stdout, other.stderr)


def test_default_redaction_covers_credential_names_at_any_depth(procs):
    gw = start_gateway(procs)
    args = {"id": "r2", "api_key": "k-123", "config": {"passwd": "p-456"},
            "accounts": [{"name": "a", "secret_value": "s-789"}, {"name": "b", "Access_Token": "t-000"}],
            "max_tokens": 100}
    call = HeldCall(gw.mcp, "delete_record", args)
    call.start()
    [item] = gw.wait_pending(1)
    assert gw.decide(item["id"], "deny").status_code == 200
    call.result()
    [row, *_] = gw.audit_rows(pending_id=item["id"])
    assert row["arguments"] == {
        "id": "r2", "api_key": "[redacted]", "config": {"passwd": "[redacted]"},
        "accounts": [{"name": "a", "secret_value": "[redacted]"}, {"name": "b", "Access_Token": "[redacted]"}],
        "max_tokens": 100}, row["arguments"]
    export = gw.api("GET", "/api/audit/export").text + run_cli("audit", "export", "--audit", gw.audit).stdout
    for secret in ("k-123", "p-456", "s-789", "t-000"):
        assert secret not in export


def test_csv_export_neutralises_formulas_in_client_chosen_text(procs):
    gw = start_gateway(procs)
    for name, args in (("=HYPERLINK(\"http://evil.example\",\"click\")", {"a": 1}),
                       ("echo", {"text": "@SUM(1+1)"})):
        c = HeldCall(gw.mcp, name, args)
        c.start()
        c.join(20)  # the first is refused as an unknown tool; both are recorded
    rows = wait_rows(gw, 2)
    api_csv = gw.api("GET", "/api/audit/export", params={"format": "csv"}).text
    cli_csv = run_cli("audit", "export", "--format", "csv", "--audit", gw.audit).stdout
    assert api_csv == cli_csv
    table = list(csv.DictReader(io.StringIO(api_csv)))
    assert table[0]["tool"] == "'=HYPERLINK(\"http://evil.example\",\"click\")", table[0]
    assert table[1]["arguments"] == canonical({"text": "@SUM(1+1)"})  # JSON starts with {: left alone
    for row in table:
        assert all(not v.lstrip().startswith(("=", "+", "-", "@")) for v in row.values()), row
    assert rows[0]["tool"] == "=HYPERLINK(\"http://evil.example\",\"click\")"  # JSONL stays exact
