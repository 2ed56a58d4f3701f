"""Fault and load tests (issue 7): the audit store cannot be written, the agent
disconnects mid-response and mid-hold, SIGTERM under load with holds open, and
100 holds while Slack stalls, errors or rate-limits — against the real `airlock` binary.

(Upstream faults live in test_upstream_faults.py; SIGTERM with a couple of holds
and restarts in test_audit_history.py; one hold with Slack down in test_slack.py.)
"""
from __future__ import annotations

import errno
import json
import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections import Counter

import httpx
import pytest

import rawmcp as rm
from fake_slack import FakeSlack
from harness import text_of
from holdkit import HeldCall, run_cli, start_gateway, write_config

POLICY = {
    "version": "1",
    "default": "deny",
    "rules": {
        "echo": {"action": "allow"},
        "slow": {"action": "allow"},
        "delete_*": {"action": "require_approval", "reason": "destructive"},
    },
}

LOCK_SECONDS = 8  # the gateway's SQLite busy timeout is 5 s


def jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def call(gw, name: str, arguments: dict, req_id=1) -> dict:
    """One stateless tools/call; returns its result."""
    c = HeldCall(gw.mcp, name, arguments, req_id=req_id)
    c.start()
    return c.result(20)


class Locked:
    """An exclusive write lock on the gateway's SQLite file, held by the test."""

    def __init__(self, path):
        self.db = sqlite3.connect(str(path), isolation_level=None, timeout=2)
        self.db.execute("BEGIN EXCLUSIVE")
        self.since = time.monotonic()

    def release(self, after: float = LOCK_SECONDS):
        left = self.since + after - time.monotonic()
        if left > 0:
            time.sleep(left)
        self.db.execute("ROLLBACK")
        self.db.close()


def healthz(gw) -> httpx.Response:
    return gw.http.get("/healthz")


def wait_status(gw, status: int, timeout: float) -> httpx.Response:
    r = rm.wait_until(lambda: (lambda r: r if r.status_code == status else None)(healthz(gw)), timeout, 0.1)
    assert r is not None and r.status_code == status, (healthz(gw).text, gw.proc.stderr_text()[-2000:])
    return r


def allowed_texts(rows: list[dict]) -> Counter:
    return Counter(r["arguments"]["text"] for r in rows if r["decision"] == "allowed" and r["tool"] == "echo")


def on_error_config(procs, mode: str):
    path = write_config(procs.tmp_path, POLICY, name=f"airlock-{mode}")
    path.write_text(path.read_text() + f'\n[audit]\non_error = "{mode}"\n')
    return path


# ----------------------------------------------------------------------------- audit store unwritable


def test_unwritable_audit_store_fails_approvals_closed_keeps_allowed_calls_and_recovers_without_duplicates(procs):
    gw = start_gateway(procs, POLICY)  # on_error defaults to "allow"
    assert text_of(call(gw, "echo", {"text": "before"})) == "before"
    lock = Locked(gw.audit)
    try:
        # The store looks healthy until a write fails: this allowed row is what finds out.
        assert text_of(call(gw, "echo", {"text": "during-1"})) == "during-1"
        degraded = wait_status(gw, 503, LOCK_SECONDS - 1)
        assert degraded.json()["status"] == "degraded", degraded.text
        assert "cannot write" in degraded.json()["audit"], degraded.text

        started = time.monotonic()
        refused = call(gw, "delete_record", {"id": "while-locked"})
        assert refused["isError"] is True, refused
        assert "audit store cannot be written" in text_of(refused), refused
        assert refused["_meta"]["airlock.decision"] == "audit_unavailable", refused
        assert time.monotonic() - started < 2, "a fail-closed refusal should not wait for the store"
        assert gw.pending() == []

        # on_error = "allow": allowed calls still go through.
        assert text_of(call(gw, "echo", {"text": "during-2"})) == "during-2"
        assert healthz(gw).status_code == 503, "released the lock too early for the test to mean anything"
    finally:
        lock.release()

    ok = wait_status(gw, 200, 5)
    assert ok.json()["status"] == "ok"
    held = HeldCall(gw.mcp, "delete_record", {"id": "after"})
    held.start()
    [item] = gw.wait_pending(1)
    assert gw.decide(item["id"], "approve").status_code == 200
    assert text_of(held.result()) == "deleted after"
    assert text_of(call(gw, "echo", {"text": "after"})) == "after"

    assert gw.proc.stop(signal.SIGTERM) == 0
    rows = jsonl(run_cli("audit", "export", "--audit", gw.audit).stdout)
    assert allowed_texts(rows) == Counter({"before": 1, "during-1": 1, "during-2": 1, "after": 1}), rows
    assert [r["decision"] for r in rows if r["pending_id"] == item["id"]] == ["approval_requested", "approved"]
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
    verify = run_cli("audit", "verify", "--audit", gw.audit)
    assert verify.returncode == 0, (verify.stdout, verify.stderr)


def test_an_idle_gateway_notices_an_unwritable_store_before_any_call(procs):
    gw = start_gateway(procs, POLICY)
    assert text_of(call(gw, "echo", {"text": "before"})) == "before"
    # No traffic from here: the writer's own probe (every 5 s, then the 5 s busy timeout) must find out.
    lock = Locked(gw.audit)
    try:
        degraded = wait_status(gw, 503, 5 + 5 + 3)
        assert "cannot write" in degraded.json()["audit"], degraded.text
        started = time.monotonic()
        refused = call(gw, "delete_record", {"id": "idle-locked"})
        assert refused["_meta"]["airlock.decision"] == "audit_unavailable", refused
        assert time.monotonic() - started < 2, "the first approval after the failure should not wait"
    finally:
        lock.release(after=0)
    assert wait_status(gw, 200, 5).json()["status"] == "ok"
    assert gw.proc.stop(signal.SIGTERM) == 0
    assert run_cli("audit", "verify", "--audit", gw.audit).returncode == 0


def test_on_error_fail_closed_refuses_allowed_calls_while_the_store_cannot_be_written(procs):
    gw = start_gateway(procs, POLICY, config=on_error_config(procs, "fail_closed"))
    lock = Locked(gw.audit)
    try:
        assert text_of(call(gw, "echo", {"text": "finds-out"})) == "finds-out"
        wait_status(gw, 503, LOCK_SECONDS - 1)
        refused = call(gw, "echo", {"text": "refused"})
        assert refused["isError"] is True, refused
        assert "audit store cannot be written" in text_of(refused), refused
        assert "fail closed" in text_of(refused), refused
    finally:
        lock.release()
    wait_status(gw, 200, 5)
    assert text_of(call(gw, "echo", {"text": "after"})) == "after"
    assert gw.proc.stop(signal.SIGTERM) == 0
    rows = jsonl(run_cli("audit", "export", "--audit", gw.audit).stdout)
    assert allowed_texts(rows) == Counter({"finds-out": 1, "after": 1}), rows
    assert run_cli("audit", "verify", "--audit", gw.audit).returncode == 0


# ----------------------------------------------------------------------------- agent disconnects


def raw_post(port: int, path: str, body: dict, headers: dict) -> socket.socket:
    """Sends a POST on a raw socket and returns it unread (so the test can drop it)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    data = json.dumps(body).encode()
    h = {"Host": f"127.0.0.1:{port}", "Content-Type": "application/json", "Accept": rm.ACCEPT,
         "Content-Length": str(len(data)), **headers}
    s.sendall(("POST %s HTTP/1.1\r\n" % path + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n").encode()
              + data)
    return s


def read_until(s: socket.socket, needle: bytes, timeout: float = 10) -> bytes:
    s.settimeout(timeout)
    got = b""
    while needle not in got:
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def resources(gw) -> dict[str, float]:
    m = gw.metrics()
    return {k: m[k] for k in ("airlock_runtime_tasks", "airlock_open_fds", "airlock_upstream_children",
                              "airlock_pending", "airlock_sessions")}


def settles_at(gw, baseline: dict, timeout: float = 6) -> dict:
    """Waits until no resource gauge is above its baseline; returns the last reading."""
    last = {}

    def check():
        nonlocal last
        last = resources(gw)
        return all(last[k] <= baseline[k] for k in baseline)

    rm.wait_until(check, timeout, 0.1)
    return last


def test_agent_disconnecting_mid_response_and_mid_hold_frees_everything(procs, tmp_path):
    marker = tmp_path / "disconnect-upstream-marker"
    # A dropped held stream waits `resume_grace` for the agent to resume it: 1 s here.
    gw = start_gateway(procs, POLICY, upstream_args=["--log-requests", marker], resume_grace=1)
    path = "/mcp/test"
    with rm.client() as c:
        sid = rm.open_session(c, gw.mcp)
        r = rm.post(c, gw.mcp, rm.call_body(1, "echo", {"text": "warm"}), rm.session_headers(sid))
        assert rm.answer(r, 1)["result"]["content"][0]["text"] == "warm"
    [session_child] = rm.procs_with(marker)
    # The stateless era's shared child starts on first use: start it before the baseline.
    assert text_of(call(gw, "echo", {"text": "stateless"})) == "stateless"
    baseline = settles_at(gw, resources(gw))
    assert baseline["airlock_upstream_children"] == 2 and baseline["airlock_sessions"] == 1, baseline
    assert baseline["airlock_pending"] == 0, baseline

    # Mid-response: a long `slow` call whose stream the agent drops after the first progress event.
    s = raw_post(gw.port, path, rm.call_body(2, "slow", {"steps": 200, "delay_ms": 50}, {"progressToken": "p"}),
                 rm.session_headers(sid))
    assert b"notifications/progress" in read_until(s, b"notifications/progress")
    during = resources(gw)
    assert during["airlock_runtime_tasks"] > baseline["airlock_runtime_tasks"], (during, baseline)
    s.close()

    # Mid-hold: a held call whose connection the agent drops.
    s = raw_post(gw.port, path, rm.call_body(3, "delete_record", {"id": "dropped"}), rm.session_headers(sid))
    [item] = gw.wait_pending(1)
    during = resources(gw)
    assert during["airlock_runtime_tasks"] > baseline["airlock_runtime_tasks"], (during, baseline)
    assert during["airlock_open_fds"] > baseline["airlock_open_fds"], (during, baseline)
    s.close()
    gw.wait_gone(item["id"])
    [row] = gw.decision_rows(item["id"])
    assert row["decision"] == "cancelled" and row["channel"] == "agent", row

    # Every task, socket and process the two dropped calls used is released.
    after = settles_at(gw, baseline)
    assert all(after[k] <= baseline[k] for k in baseline), (after, baseline)

    # The same session and a new one still work; nothing is left pending.
    with rm.client() as c:
        r = rm.post(c, gw.mcp, rm.call_body(4, "echo", {"text": "still here"}), rm.session_headers(sid))
        assert rm.answer(r, 4)["result"]["content"][0]["text"] == "still here"
        r = rm.post(c, gw.mcp, rm.call_body(5, "slow", {"steps": 2, "delay_ms": 10}), rm.session_headers(sid))
        assert "result" in rm.answer(r, 5), r.text
        assert text_of(call(gw, "echo", {"text": "stateless"})) == "stateless"
        m = gw.metrics()
        assert m["airlock_pending"] == 0 and m["airlock_sessions"] == 1, m
        assert healthz(gw).json()["pending"] == 0

        assert c.delete(gw.mcp, headers=rm.session_headers(sid)).status_code in (200, 204)
    # (the stateless calls have their own shared child, which stays)
    assert rm.wait_until(lambda: session_child not in rm.procs_with(marker), timeout=6), rm.procs_with(marker)
    closed = settles_at(gw, {**baseline, "airlock_sessions": 0, "airlock_upstream_children": 1})
    assert closed["airlock_sessions"] == 0 and closed["airlock_upstream_children"] == 1, closed
    assert closed["airlock_runtime_tasks"] < baseline["airlock_runtime_tasks"], (closed, baseline)


# ----------------------------------------------------------------------------- SIGTERM under load


class StreamedCall(threading.Thread):
    """A stateless `slow` call read as a stream; `.started` is set at its first progress event."""

    def __init__(self, url: str, i: int):
        super().__init__(daemon=True)
        self.url, self.i = url, i
        self.started = threading.Event()
        self.outcome: str | None = None  # "result" | "error" | "closed"
        self.detail = None

    def run(self):
        body = rm.call_body(self.i, "slow", {"steps": 40, "delay_ms": 100},
                            {**rm.stateless_meta(), "progressToken": f"t{self.i}"})
        headers = {"Content-Type": "application/json", "Accept": rm.ACCEPT,
                   **rm.stateless_headers("tools/call", "slow")}
        text = ""
        try:
            with httpx.Client(timeout=httpx.Timeout(20.0, connect=5.0)) as c:
                with c.stream("POST", self.url, content=json.dumps(body), headers=headers) as r:
                    for chunk in r.iter_text():
                        text += chunk
                        if "notifications/progress" in text:
                            self.started.set()
            answers = [m for m in rm.sse_messages(text) if m.get("id") == self.i]
            if answers and "result" in answers[0]:
                self.outcome, self.detail = "result", answers[0]["result"]
            elif answers:
                self.outcome, self.detail = "error", answers[0]["error"]
            else:
                self.outcome, self.detail = "closed", text[-300:]
        except httpx.TimeoutException as e:
            self.outcome, self.detail = "hung", repr(e)
        except (httpx.HTTPError, json.JSONDecodeError) as e:
            self.outcome, self.detail = "closed", repr(e)
        finally:
            self.started.set()


def test_sigterm_under_load_answers_every_call_and_audits_each_once(procs, tmp_path):
    marker = tmp_path / "sigterm-load-marker"
    gw = start_gateway(procs, POLICY, upstream_args=["--log-requests", marker])
    allowed = [StreamedCall(gw.mcp, i) for i in range(100, 120)]
    for c in allowed:
        c.start()
    holds = [HeldCall(gw.mcp, "delete_record", {"id": f"load{i}"}, req_id=i) for i in range(5)]
    for h in holds:
        h.start()
    for c in allowed:
        assert c.started.wait(15), "an allowed call never started streaming"
    items = gw.wait_pending(5)
    assert all(c.outcome is None for c in allowed), "calls finished before the SIGTERM: make them longer"

    started = time.monotonic()
    os.kill(gw.proc.popen.pid, signal.SIGTERM)
    for h in holds:
        result = h.result(15)
        assert result["isError"] is True and "gateway shutting down" in text_of(result), result
    for c in allowed:
        c.join(15)
        assert not c.is_alive() and c.outcome in ("result", "error", "closed"), (c.i, c.outcome, c.detail)
        if c.outcome == "result":
            assert c.detail.get("isError") is not True and "40" in text_of(c.detail), c.detail
    assert gw.proc.popen.wait(10) == 0, gw.proc.stderr_text()[-2000:]
    assert time.monotonic() - started < 10
    print("allowed outcomes:", Counter(c.outcome for c in allowed), f"exit after {time.monotonic() - started:.2f}s")
    assert rm.wait_until(lambda: not rm.procs_with(marker), 5), "upstream child outlived the gateway"

    rows = jsonl(run_cli("audit", "export", "--audit", gw.audit).stdout)
    allowed_rows = [r for r in rows if r["decision"] == "allowed"]
    assert len(allowed_rows) == len(allowed) and all(r["tool"] == "slow" for r in allowed_rows), allowed_rows
    ids = {i["id"] for i in items}
    assert sum(r["decision"] == "approval_requested" for r in rows) == len(holds)
    ends = [r for r in rows if r["pending_id"] in ids and r["decision"] != "approval_requested"]
    assert len(ends) == len(holds) and {r["pending_id"] for r in ends} == ids, ends
    assert all(r["decision"] == "denied" and r["reason"] == "gateway shutting down" for r in ends), ends
    assert len(rows) == len(allowed) + 2 * len(holds), [r["decision"] for r in rows]
    assert run_cli("audit", "verify", "--audit", gw.audit).returncode == 0


# ----------------------------------------------------------------------------- Slack fails during 100 holds


@pytest.fixture
def slack():
    fake = FakeSlack()
    yield fake
    fake.close()


@pytest.mark.parametrize("failure", [("stall", 30), 500, (429, 30)], ids=["slow-30s", "erroring-500", "rate-limited-429"])
def test_hundred_holds_are_decided_promptly_while_slack_fails(procs, slack, failure):
    from test_slack import start as start_with_slack  # the gateway with a [slack] table

    slack.default = failure
    asked = []  # Slack requests begun (the fake records a request only once it answers)
    behaviour = slack._behaviour
    slack._behaviour = lambda kind: (asked.append(kind), behaviour(kind))[1]
    gw = start_with_slack(procs, slack, give_up=600)
    calls = [HeldCall(gw.mcp, "delete_record", {"id": f"s{i}"}, req_id=i) for i in range(100)]
    for c in calls:
        c.start()
    items = rm.wait_until(lambda: (lambda p: p if len(p) == 100 else None)(gw.pending()), timeout=20)
    assert items and len(items) == 100, f"{len(gw.pending())} holds open"
    assert rm.wait_until(lambda: asked, 5), "the gateway never tried to reach Slack"
    assert not slack.received(ok_only=True), "Slack accepted a message: it was meant to fail"
    started = time.monotonic()
    for n, item in enumerate(items):
        action = "approve" if n % 2 == 0 else "deny"
        r = gw.api("POST", f"/api/pending/{item['id']}/{action}", json={})
        assert r.status_code == 200, r.text
    for c in calls:
        c.join(10)
    took = time.monotonic() - started
    by_arg = {i["arguments"]["id"]: n for n, i in enumerate(items)}
    for c in calls:
        res = c.result(1)
        if by_arg[c.arguments["id"]] % 2 == 0:
            assert text_of(res) == f"deleted {c.arguments['id']}", res
        else:
            assert res["isError"] is True and "denied" in text_of(res), res
    assert took < 5, f"deciding 100 holds took {took:.1f}s with Slack failing ({failure})"
    assert gw.pending() == [] and gw.http.get("/healthz").status_code == 200
    if failure != ("stall", 30):
        refused = [r for r in slack.received(ok_only=False) if r.status != 200]
        assert refused, "Slack was never reached, so the failure was not exercised"
    if failure == (429, 30):
        # Retry-After holds back every message, not only the one that got the 429:
        # at most the requests already in flight (4 at a time) reach Slack.
        assert len(asked) <= 4, f"{len(asked)} requests reached a rate-limited Slack"
    print(f"{failure}: slack requests begun: {len(asked)}; 100 decisions took {took:.2f}s")


# ----------------------------------------------------------------------------- real filesystem failures (tmpfs)


def _mount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True, timeout=10)


@pytest.fixture
def tmpfs(tmp_path):
    """A 4 MiB tmpfs mounted for this test (needs root). The test itself stops the gateway and
    unmounts (`_umount`) in a `finally`."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    r = _mount("-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt))
    if r.returncode != 0:
        if "permission denied" in r.stderr.lower() or "must be superuser" in r.stderr.lower() or os.geteuid() != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): {r.stderr.strip()}")
        raise AssertionError(f"mount tmpfs failed: {r.stderr}")
    yield mnt


def _umount(mnt) -> None:
    r = subprocess.run(["umount", str(mnt)], capture_output=True, text=True, timeout=10)
    if r.returncode != 0:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, text=True, timeout=10)


def fill(path) -> int:
    """Writes `path` until the filesystem says ENOSPC; returns the bytes written."""
    written = 0
    with open(path, "wb", buffering=0) as f:
        for size in (1 << 16, 4096, 512, 1):
            chunk = b"\0" * size
            while True:
                try:
                    written += f.write(chunk)
                except OSError as e:
                    assert e.errno == errno.ENOSPC, e
                    break
    return written


def start_on(procs, mnt):
    return start_gateway(procs, POLICY, audit=mnt / "audit.db")


def warm_up(gw, texts: list[str]) -> None:
    """An allowed call and an approval, end to end, while the filesystem is healthy."""
    assert text_of(call(gw, "echo", {"text": "before"})) == "before"
    texts.append("before")
    held = HeldCall(gw.mcp, "delete_record", {"id": "before"})
    held.start()
    [item] = gw.wait_pending(1)
    assert gw.decide(item["id"], "approve").status_code == 200
    assert text_of(held.result()) == "deleted before"
    assert healthz(gw).status_code == 200


def notice_failure(gw, texts: list[str], tag: str) -> None:
    """Allowed calls (on_error = "allow" lets them through) until a failed audit write turns /healthz
    503. The first one normally suffices; SQLite may reuse WAL pages already allocated, so allow a few."""
    for n in range(1, 41):
        text = f"{tag}-{n}"
        assert text_of(call(gw, "echo", {"text": text}, req_id=n)) == text
        texts.append(text)
        if rm.wait_until(lambda: healthz(gw).status_code == 503, 1.0, 0.1):
            print(f"{tag}: noticed after {n} allowed call(s)")
            break
    else:
        raise AssertionError(f"/healthz never went 503: {healthz(gw).text}\n{gw.proc.stderr_text()[-2000:]}")
    body = healthz(gw).json()
    assert body["status"] == "degraded" and "cannot write" in body["audit"], body


def refused_closed(gw, pending_id: str) -> None:
    started = time.monotonic()
    refused = call(gw, "delete_record", {"id": pending_id})
    assert refused["isError"] is True, refused
    assert "audit store cannot be written" in text_of(refused), refused
    assert refused["_meta"]["airlock.decision"] == "audit_unavailable", refused
    assert time.monotonic() - started < 2, "a fail-closed refusal should not wait for the store"
    assert gw.pending() == []
    assert healthz(gw).status_code == 503


def recovers(gw, texts: list[str]) -> str:
    ok = wait_status(gw, 200, 5)
    assert ok.json()["status"] == "ok", ok.text
    held = HeldCall(gw.mcp, "delete_record", {"id": "after"})
    held.start()
    [item] = gw.wait_pending(1)
    assert gw.decide(item["id"], "approve").status_code == 200
    assert text_of(held.result()) == "deleted after"
    assert text_of(call(gw, "echo", {"text": "after"})) == "after"
    texts.append("after")
    return item["id"]


def check_store(gw, texts: list[str], pending_after: str) -> None:
    assert gw.proc.stop(signal.SIGTERM) == 0, gw.proc.stderr_text()[-2000:]
    verify = run_cli("audit", "verify", "--audit", gw.audit)
    assert verify.returncode == 0, (verify.stdout, verify.stderr)
    export = run_cli("audit", "export", "--audit", gw.audit)
    assert export.returncode == 0, export.stderr
    rows = jsonl(export.stdout)
    assert allowed_texts(rows) == Counter({t: 1 for t in texts}), rows
    assert [r["decision"] for r in rows if r["pending_id"] == pending_after] == ["approval_requested", "approved"]
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))


def test_full_filesystem_fails_approvals_closed_and_recovers_when_space_returns(procs, tmpfs):
    gw = None
    try:
        gw = start_on(procs, tmpfs)
        texts: list[str] = []
        warm_up(gw, texts)
        filler = tmpfs / "filler"
        print(f"filler: {fill(filler)} bytes")
        notice_failure(gw, texts, "full")
        refused_closed(gw, "while-full")
        filler.unlink()
        pending_after = recovers(gw, texts)
        check_store(gw, texts, pending_after)
    finally:
        if gw is not None:
            gw.proc.stop(signal.SIGTERM)
        _umount(tmpfs)


# A read-only remount cannot be produced here: Linux refuses `remount,ro` while the
# gateway holds its SQLite files open for writing ("mount point is busy"). The
# full-filesystem test above and the lock-based tests cover an unwritable store.
