"""Approval power shared by replicas on one real PostgreSQL (`[store] url`, src/power_store.rs):
grants, votes toward a two-person rule and tool pins, end to end.

Two `airlock serve` replicas on a throwaway PostgreSQL (`pg` fixture), a real upstream (the stdio
test server; the rug-pull server on the official Python SDK for pins) and raw HTTP / the official
Python SDK client: a grant given through B covers the agent's call on A, its revocation through A
ends it on B; approvers racing for the second approval through A and B get one 200 and one 409
and the hold gets one `approved` row; the same approver through both replicas counts once; a tool
change seen by A holds calls on B, and its acceptance on B releases them on A.
"""
from __future__ import annotations

import json
import threading
import time

from harness import AIRLOCK_BIN, PYTHON, gateway_number, listening_port, text_of
from holdkit import ALICE, BOB, HOLD_POLICY, TOKENS_ENV, UPSTREAM, Gateway, HeldCall, write_config
from pgcluster import pg  # noqa: F401  (the fixture)
from replicakit import URL_ENV, start_replica
from test_power import LIST, PULL, RUGPULL, call, drive, outcome

CAROL = "carol-approver-token-0123456789"
CAROL_ENV = {"AIRLOCK_TEST_CAROL": CAROL}
CAROL_CONFIG = '\n[[approver]]\nname = "carol"\ntoken_env = "AIRLOCK_TEST_CAROL"\n'


def until(predicate, timeout: float = 10.0, what: str = "condition") -> float:
    """Polls `predicate` every 20 ms; returns the seconds it took."""
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, f"{what} not within {timeout} s"
        time.sleep(0.02)
    return time.monotonic() - started


def grants(gw) -> list[dict]:
    r = gw.api("GET", "/api/grants")
    assert r.status_code == 200, r.text
    return r.json()["grants"]


def test_a_grant_given_on_b_covers_calls_on_a_and_its_revocation_on_a_ends_it_on_b(procs, pg):
    a = start_replica(procs, pg.url(), "a")
    b = start_replica(procs, pg.url(), "b")
    first = HeldCall(a.mcp, "delete_record", {"id": "r1"})
    first.start()
    [item] = b.wait_pending()
    r = b.api("POST", f"/api/pending/{item['id']}/approve", json={"grant": {"minutes": 5}})
    assert r.status_code == 200, r.text
    grant = r.json()["grant"]
    assert grant["rule"] == "delete_*" and grant["agent"] == item["agent"]
    assert text_of(first.result()) == "deleted r1"
    took = until(lambda: [g["id"] for g in grants(a)] == [grant["id"]], 5, "the grant on A")
    print(f"grant given on B listed on A after {took * 1000:.0f} ms")
    # The agent's next call, on A: not held, audited `granted` with the grant's id.
    later = HeldCall(a.mcp, "delete_record", {"id": "r2"})
    later.start()
    assert text_of(later.result(10)) == "deleted r2"
    [row] = a.audit_rows(decision="granted")
    assert row["pending_id"] == grant["id"] and row["decider"] == "alice", row
    assert a.pending() == [] and b.pending() == []
    # Revoked through A: ended on B too, and only once.
    r = a.api("DELETE", f"/api/grants/{grant['id']}", token=BOB)
    assert r.status_code == 200, r.text
    took = until(lambda: grants(b) == [], 5, "the revocation on B")
    print(f"grant revoked on A gone from B after {took * 1000:.0f} ms")
    assert b.api("DELETE", f"/api/grants/{grant['id']}").status_code == 404
    held = HeldCall(b.mcp, "delete_record", {"id": "r3"})
    held.start()
    [again] = b.wait_pending()
    assert again["arguments"] == {"id": "r3"}
    b.decide(again["id"], "deny")
    assert held.result()["isError"]
    ended = a.audit_rows(decision="grant.ended")
    assert [e["reason"] for e in ended] == [f"grant {grant['id']} ended: revoked by bob"], ended
    assert len(a.audit_rows(decision="grant.created")) == 1


def two_person(procs, pg):
    pol = json.loads(json.dumps(HOLD_POLICY))
    pol["rules"]["delete_*"]["approval"] = {"approvers": 2, "timeout": 60}
    a = start_replica(procs, pg.url(), "a", pol, extra=CAROL_CONFIG, env=CAROL_ENV)
    b = start_replica(procs, pg.url(), "b", pol, extra=CAROL_CONFIG, env=CAROL_ENV)
    return a, b


def approve(gw, pid, token):
    return gw.api("POST", f"/api/pending/{pid}/approve", token=token, json={})


def race(*moves):
    """Runs (gateway, pending id, token) approvals at the same moment; their answers in order."""
    go = threading.Barrier(len(moves))
    out = [None] * len(moves)

    def run(i, gw, pid, token):
        go.wait()
        out[i] = approve(gw, pid, token)

    threads = [threading.Thread(target=run, args=(i, *m)) for i, m in enumerate(moves)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    return out


def test_second_approvals_racing_through_a_and_b_complete_a_two_person_rule_once(procs, pg):
    a, b = two_person(procs, pg)
    for n in range(3):
        held = HeldCall((a, b)[n % 2].mcp, "delete_record", {"id": f"r{n}"})
        held.start()
        [item] = a.wait_pending()
        r = approve(b, item["id"], ALICE)
        assert r.status_code == 200 and r.json()["decision"] == "vote", r.text
        q = a.api("GET", "/api/quorum").json()["quorum"][item["id"]]
        assert q["approvals"] == ["alice"], q  # A sees the vote taken on B
        bob, carol = race((a, item["id"], BOB), (b, item["id"], CAROL))
        codes = sorted([bob.status_code, carol.status_code])
        assert codes == [200, 409], (bob.text, carol.text)
        winner, loser = (bob, carol) if bob.status_code == 200 else (carol, bob)
        assert winner.json()["decision"] == "approved", winner.text
        assert loser.json()["error"]["code"] == "already_decided", loser.text
        assert loser.json()["error"]["decided_by"] == winner.json()["decider"], loser.text
        assert text_of(held.result()) == f"deleted r{n}"
        rows = a.decision_rows(item["id"])
        assert [r["decision"] for r in rows] == ["approved"], rows
        assert rows[0]["comment"] == f"approved by alice, {rows[0]['decider']} (2 of 2)", rows
        assert len([v for v in a.audit_rows(decision="approval.vote") if v["pending_id"] == item["id"]]) == 1


def test_the_same_approver_through_a_and_b_counts_once_and_one_deny_ends_the_hold(procs, pg):
    a, b = two_person(procs, pg)
    held = HeldCall(a.mcp, "delete_record", {"id": "r1"})
    held.start()
    [item] = b.wait_pending()
    first, second = race((a, item["id"], ALICE), (b, item["id"], ALICE))
    got = sorted([(first.status_code, first.json().get("decision") or first.json()["error"]["code"]),
                  (second.status_code, second.json().get("decision") or second.json()["error"]["code"])])
    assert got == [(200, "vote"), (409, "same_approver")], (first.text, second.text)
    r = b.decide(item["id"], "deny", token=BOB, comment="no")
    assert r.status_code == 200 and r.json()["decision"] == "denied", r.text
    assert held.result()["isError"]
    assert approve(a, item["id"], CAROL).status_code == 409
    assert [r["decision"] for r in a.decision_rows(item["id"])] == ["denied_by_human"]


def pin_replica(procs, url: str, pg_url: str, name: str) -> Gateway:
    """A replica whose upstream is the rug-pull server at `url`; alice is an admin."""
    pol = {"version": "1", "default": "deny", "on_tool_change": "hold",
           "rules": {"transfer": {"action": "allow"}, "rug_pull": {"action": "allow"}}}
    n = gateway_number()
    config = write_config(procs.tmp_path, pol, url=url, name=f"pins-{name}-{n}")
    text = config.read_text().replace('token_env = "AIRLOCK_TEST_ALICE"',
                                      'token_env = "AIRLOCK_TEST_ALICE"\nrole = "admin"')
    config.write_text(text + f'\n[store]\nurl_env = "{URL_ENV}"\nreplica = "{name}"\n'
                             "heartbeat = 0.5\nlease = 2.0\n")
    audit = procs.tmp_path / f"pins-{name}-{n}.db"
    cmd = [AIRLOCK_BIN, "serve", "--config", config, "--listen", "127.0.0.1:0", "--audit", audit]
    proc = procs.start(cmd, env={**TOKENS_ENV, URL_ENV: pg_url})
    return Gateway(proc, listening_port(proc), audit, config)


def test_a_tool_change_seen_on_a_holds_calls_on_b_and_its_acceptance_on_b_holds_on_a(procs, pg):
    server = procs.start([PYTHON, RUGPULL, "--port", "0"])
    url = server.wait_for_line("LISTENING ", timeout=60).split(" ", 1)[1].strip()
    a = pin_replica(procs, url, pg.url(), "a")
    b = pin_replica(procs, url, pg.url(), "b")
    # A lists (first sight pins), the server changes `transfer`, A lists again: changed.
    steps = drive(a, LIST, PULL, LIST)
    assert all(s["ok"] for s in steps), steps

    def status(gw):
        return {p["tool"]: p["status"] for p in gw.api("GET", "/api/pins").json()["pins"]}.get("transfer")

    took = until(lambda: status(b) == "changed", 5, "the change on B")
    print(f"change seen on A known on B after {took * 1000:.0f} ms")
    # B never listed the changed tool, yet holds its calls (on_tool_change: hold).
    held = HeldCall(b.mcp, "transfer", {"to": "mallory", "amount": 5})
    held.start()
    [item] = b.wait_pending()
    assert item["rule"] == "on_tool_change", item
    b.decide(item["id"], "deny")
    assert held.result()["isError"]
    # Accepted on B (admin): A no longer holds.
    r = b.api("POST", f"/api/tools/{UPSTREAM}/transfer/accept")
    assert r.status_code == 200, r.text
    assert a.api("POST", f"/api/tools/{UPSTREAM}/transfer/accept").status_code == 409
    until(lambda: status(a) == "pinned", 5, "the acceptance on A")
    [step] = drive(a, call("transfer", to="bob", amount=3))
    assert outcome(step) == "ok: sent 3 to bob", step
    assert a.pending() == []
    changed = a.audit_rows(decision="tool.changed")
    assert len(changed) == 1, changed  # announced once, by the replica that recorded it
    assert len(a.audit_rows(decision="tool.accepted")) == 1


def test_an_escalation_is_recorded_once_across_replicas_and_lets_the_group_decide_on_both(procs, pg):
    pol = json.loads(json.dumps(HOLD_POLICY))
    pol["rules"]["delete_*"]["approval"] = {"groups": ["finance"], "escalate_after": 1,
                                            "escalate_to": "oncall", "timeout": 60}
    oncall = CAROL_CONFIG + 'groups = ["oncall"]\n'
    a = start_replica(procs, pg.url(), "a", pol, extra=oncall, env=CAROL_ENV)
    b = start_replica(procs, pg.url(), "b", pol, extra=oncall, env=CAROL_ENV)
    held = HeldCall(a.mcp, "delete_record", {"id": "r1"})
    held.start()
    [item] = b.wait_pending()
    r = approve(b, item["id"], CAROL)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden_group", r.text
    until(lambda: a.audit_rows(decision="approval.escalated"), 10, "the escalation")
    time.sleep(1.5)  # both replicas' ticks have seen it due by now
    rows = a.audit_rows(decision="approval.escalated")
    assert len(rows) == 1 and "escalated to group oncall (carol)" in rows[0]["reason"], rows
    until(lambda: b.api("GET", "/api/quorum", token=CAROL).json()["quorum"][item["id"]]["may_decide"],
          5, "carol may decide on B")
    assert a.api("GET", "/api/quorum", token=CAROL).json()["quorum"][item["id"]]["may_decide"] is True
    r = approve(b, item["id"], CAROL)
    assert r.status_code == 200 and r.json()["decision"] == "approved", r.text
    assert text_of(held.result()) == "deleted r1"


def test_a_replica_cut_off_from_postgresql_stops_honouring_grants_after_one_lease(procs, pg):
    import subprocess

    a = start_replica(procs, pg.url(), "a", heartbeat=0.3, lease=1.5)
    first = HeldCall(a.mcp, "delete_record", {"id": "r1"})
    first.start()
    [item] = a.wait_pending()
    r = a.api("POST", f"/api/pending/{item['id']}/approve", json={"grant": {"minutes": 5}})
    assert r.status_code == 200, r.text
    first.result()
    assert a.metrics()["airlock_grants_mirror_age_seconds"] < 1.5
    granted = HeldCall(a.mcp, "delete_record", {"id": "r2"})
    granted.start()
    assert text_of(granted.result(10)) == "deleted r2"
    subprocess.run(pg._cmd("pg_ctl", "-D", str(pg.dir / "data"), "-m", "immediate", "-w", "stop"),
                   check=True, capture_output=True)
    stopped = time.monotonic()
    time.sleep(2.5)  # more than a lease (1.5 s) after the last re-read
    late = HeldCall(a.mcp, "delete_record", {"id": "r3"})
    late.start()
    result = late.result(20)
    # Not covered any more: held, which fails closed while the store is down.
    assert result["isError"] and "needs human approval, but" in text_of(result), result
    print(f"grant no longer honoured {time.monotonic() - stopped:.1f} s after PostgreSQL stopped")
    assert a.metrics()["airlock_grants_mirror_age_seconds"] > 1.5
