"""Held calls as tasks across replicas (docs/deploy.md, "Stateless-era tasks"):
with `[store] url`, a task created on replica A is read, decided and cancelled
through any replica, and it survives A's death: a survivor adopts its hold
(exactly once, however many survivors sweep), runs the call once it is
approved, and `tasks/get` through any replica returns the upstream's result.

Real PostgreSQL (`pg` fixture), two or three real `airlock serve` replicas with
the project's test server as their stdio upstream, raw stateless-era JSON-RPC
over httpx (the `Agent` of test_tasks.py, declaring the tasks extension).
Every wait is bounded.
"""
from __future__ import annotations

import signal
import time

from pgcluster import pg  # noqa: F401  (the fixture)
from holdkit import HOLD_POLICY
from replicakit import start_replica
from test_tasks import Agent

HEARTBEAT, LEASE = 0.3, 1.5


def rows_of(gw, pending_id: str) -> list[tuple]:
    return [(r["decision"], r.get("decider"), r.get("channel")) for r in gw.audit_rows(pending_id=pending_id)]


def wait_rows(gw, pending_id: str, n: int, timeout: float = 15.0) -> list[tuple]:
    deadline = time.monotonic() + timeout
    while len(rows := rows_of(gw, pending_id)) < n:
        assert time.monotonic() < deadline, f"only {rows} after {timeout}s"
        time.sleep(0.05)
    return rows


def held_task(agent: Agent, via, arguments: dict) -> tuple[str, dict]:
    created = agent.call("delete_record", arguments)
    assert created["resultType"] == "task" and created["status"] == "working", created
    [item] = via.wait_pending(1, where=lambda p: p["arguments"] == arguments)
    return created["taskId"], item


def test_a_task_created_on_a_is_read_and_completed_through_b(procs, pg):
    a = start_replica(procs, pg.url(), "a")
    b = start_replica(procs, pg.url(), "b")
    on_a, on_b = Agent(a), Agent(b)
    task_id, item = held_task(on_a, b, {"id": "t-ab"})
    view = on_b.get(task_id)
    assert (view["taskId"], view["status"], view["statusMessage"]) == (
        task_id, "working", "waiting for human approval"), view
    assert b.decide(item["id"], "approve").status_code == 200
    done = on_b.wait_done(task_id)
    assert (done["status"], done["statusMessage"]) == ("completed", "approved and completed"), done
    assert done["result"]["content"][0]["text"] == "deleted t-ab", done
    assert on_a.get(task_id)["result"] == done["result"]
    assert rows_of(b, item["id"]) == [("approval_requested", None, None), ("approved", "alice", "api")]


def test_another_client_cannot_read_a_task_through_another_replica(procs, pg):
    a = start_replica(procs, pg.url(), "a")
    b = start_replica(procs, pg.url(), "b")
    task_id, item = held_task(Agent(a), b, {"id": "t-private"})
    stranger = Agent(b, name="someone-else")
    response = stranger.task("tasks/get", task_id)
    assert response.get("error", {}).get("message") == "Failed to retrieve task: Task not found", response
    assert b.decide(item["id"], "deny").status_code == 200


def test_tasks_cancel_through_b_withdraws_the_hold_on_a(procs, pg):
    a = start_replica(procs, pg.url(), "a")
    b = start_replica(procs, pg.url(), "b")
    on_a, on_b = Agent(a), Agent(b)
    task_id, item = held_task(on_a, b, {"id": "t-cancel"})
    assert "result" in on_b.task("tasks/cancel", task_id)
    view = on_b.wait_done(task_id)
    assert (view["status"], view["statusMessage"]) == ("cancelled", "cancelled by the agent"), view
    assert b.pending() == []
    assert [r[0] for r in wait_rows(b, item["id"], 2)] == ["approval_requested", "cancelled"]


def test_a_task_survives_the_death_of_its_replica_and_is_adopted_once(procs, pg):
    a = start_replica(procs, pg.url(), "a", heartbeat=HEARTBEAT, lease=LEASE)
    b = start_replica(procs, pg.url(), "b", heartbeat=HEARTBEAT, lease=LEASE)
    c = start_replica(procs, pg.url(), "c", heartbeat=HEARTBEAT, lease=LEASE)
    on_b, on_c = Agent(b), Agent(c)
    task_id, item = held_task(Agent(a), b, {"id": "t-survives"})
    a.proc.stop(signal.SIGKILL)
    # Past the lease both survivors sweep; the hold stays open (adopted, not abandoned).
    time.sleep(LEASE + 4 * HEARTBEAT + 1.0)
    assert [p["id"] for p in b.pending()] == [item["id"]]
    assert [p["id"] for p in c.pending()] == [item["id"]]
    assert on_c.get(task_id)["status"] == "working"
    assert c.decide(item["id"], "approve", comment="after A died").status_code == 200
    done = on_b.wait_done(task_id)
    assert (done["status"], done["statusMessage"]) == ("completed", "approved and completed"), done
    assert done["result"]["content"][0]["text"] == "deleted t-survives", done
    assert on_c.get(task_id)["result"] == done["result"]
    time.sleep(LEASE)  # every survivor kept sweeping: still one outcome row
    assert rows_of(c, item["id"]) == [("approval_requested", None, None), ("approved", "alice", "api")]


def test_a_task_approved_while_its_replica_is_dead_runs_once_adopted(procs, pg):
    """Approved through B after A died but before A's lease ran out: nobody is waiting for it
    then; the survivor that adopts the hold finds it approved and runs it."""
    a = start_replica(procs, pg.url(), "a", heartbeat=HEARTBEAT, lease=LEASE)
    b = start_replica(procs, pg.url(), "b", heartbeat=HEARTBEAT, lease=LEASE)
    on_b = Agent(b)
    task_id, item = held_task(Agent(a), b, {"id": "t-early"})
    a.proc.stop(signal.SIGKILL)
    assert b.decide(item["id"], "approve").status_code == 200
    done = on_b.wait_done(task_id, timeout=LEASE + 15)
    assert (done["status"], done["result"]["content"][0]["text"]) == ("completed", "deleted t-early"), done
    assert rows_of(b, item["id"]) == [("approval_requested", None, None), ("approved", "alice", "api")]


def test_a_streamed_hold_of_a_dead_replica_is_still_abandoned(procs, pg):
    """Only tasks are adopted: a call held on an open stream dies with its agent's connection."""
    from holdkit import HeldCall

    a = start_replica(procs, pg.url(), "a", heartbeat=HEARTBEAT, lease=LEASE)
    b = start_replica(procs, pg.url(), "b", heartbeat=HEARTBEAT, lease=LEASE)
    call = HeldCall(a.mcp, "delete_record", {"id": "t-stream"})
    call.start()
    [item] = b.wait_pending(1)
    a.proc.stop(signal.SIGKILL)
    rows = wait_rows(b, item["id"], 2, timeout=LEASE + 10)
    assert rows[1][0] == "abandoned" and rows[1][2] == "lease", rows


def wait_status(agent: Agent, task_id: str, status: str, timeout: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout
    while (view := agent.get(task_id))["status"] != status:
        assert time.monotonic() < deadline, f"not {status} after {timeout}s: {view}"
        time.sleep(0.05)
    return view


QUESTION = {"method": "elicitation/create",
            "params": {"mode": "form", "message": "which shard?",
                       "requestedSchema": {"type": "object", "properties": {"shard": {"type": "string"}}}}}


def asking_upstream():
    """`ask` answers `input_required` (one question, `q1`) until the retry answers it."""
    import json

    import rawmcp as rm

    def respond(body: dict):
        params = body.get("params") or {}
        if body.get("method") != "tools/call":
            result = {"resultType": "complete"}
        elif "q1" in (params.get("inputResponses") or {}):
            shard = params["inputResponses"]["q1"]["content"]["shard"]
            result = {"resultType": "complete", "isError": False,
                      "content": [{"type": "text", "text": f"asked, then ran on {shard}"}]}
        else:
            result = {"resultType": "input_required", "inputRequests": {"q1": QUESTION}, "requestState": "s1"}
        return "application/json", [], json.dumps({"jsonrpc": "2.0", "id": body.get("id"), "result": result}).encode()

    return rm.TinyUpstream(respond)


def test_a_task_waiting_for_input_shows_its_questions_through_any_replica(procs, pg):
    """tasks/get through B shows the `inputRequests` of a task A runs; the answer itself must
    still reach A (docs/deploy.md, known limitations), and then B sees the task complete."""
    upstream = asking_upstream()
    policy = {"version": "1", "default": "allow", "rules": {"ask": {"action": "require_approval", "reason": "asks"}}}
    try:
        a = start_replica(procs, pg.url(), "a", policy, upstream_url=upstream.url)
        b = start_replica(procs, pg.url(), "b", policy, upstream_url=upstream.url)
        on_a, on_b = Agent(a), Agent(b)
        created = on_a.call("ask", {"topic": "x"})
        task_id = created["taskId"]
        [item] = b.wait_pending(1)
        assert b.decide(item["id"], "approve").status_code == 200
        here = wait_status(on_a, task_id, "input_required")
        there = wait_status(on_b, task_id, "input_required")
        assert there["inputRequests"] == here["inputRequests"] == {"q1": QUESTION}, there
        assert "result" not in there, there

        answer = {"q1": {"action": "accept", "content": {"shard": "eu-1"}}}
        elsewhere = on_b.request("tasks/update", {"taskId": task_id, "inputResponses": answer,
                                                  "_meta": on_b.meta()}, task_id)
        assert "another Airlock replica" in elsewhere.get("error", {}).get("message", ""), elsewhere
        assert "result" in on_a.request("tasks/update", {"taskId": task_id, "inputResponses": answer,
                                                         "_meta": on_a.meta()}, task_id)
        done = wait_status(on_b, task_id, "completed")
        assert done["result"]["content"][0]["text"] == "asked, then ran on eu-1", done
        assert "inputRequests" not in done, done
    finally:
        upstream.close()


def psql(pg, sql: str) -> str:
    import subprocess

    cmd = [str(pg.bin / "psql"), "-h", "127.0.0.1", "-p", str(pg.port), "-U", "airlock", "-d", "postgres",
           "-At", "-c", sql]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def test_an_adoption_that_fails_on_a_store_error_is_tried_again_at_the_next_sweep(procs, pg):
    """The survivor cannot read the dead replica's task (here: its table is renamed away for a
    while, a query error like any other): the hold is neither abandoned nor lost; once the table
    is back the next sweep adopts it, and the approved call completes the task."""
    a = start_replica(procs, pg.url(), "a", heartbeat=HEARTBEAT, lease=LEASE)
    b = start_replica(procs, pg.url(), "b", heartbeat=HEARTBEAT, lease=LEASE)
    on_b = Agent(b)
    task_id, item = held_task(Agent(a), b, {"id": "t-retry-adopt"})
    psql(pg, "ALTER TABLE airlock_tasks RENAME TO airlock_tasks_away")
    try:
        a.proc.stop(signal.SIGKILL)
        time.sleep(LEASE + 4 * HEARTBEAT + 1.0)  # B adopted the hold and failed to read its task
        assert [p["id"] for p in b.pending()] == [item["id"]], "the hold was abandoned on a store error"
    finally:
        psql(pg, "ALTER TABLE airlock_tasks_away RENAME TO airlock_tasks")
    time.sleep(4 * HEARTBEAT)
    assert on_b.get(task_id)["status"] == "working"
    assert b.decide(item["id"], "approve").status_code == 200
    done = on_b.wait_done(task_id)
    assert (done["status"], done["result"]["content"][0]["text"]) == ("completed", "deleted t-retry-adopt"), done
    assert rows_of(b, item["id"]) == [("approval_requested", None, None), ("approved", "alice", "api")]


def test_a_task_whose_replica_died_mid_call_ends_saying_it_cannot_tell_whether_the_call_ran(procs, pg):
    """A recorded the approval, claimed the release and sent the call; it dies before the answer.
    The survivor must not run the call again, nor leave the task `working` until its ttl: the task
    completes with an error saying Airlock cannot tell whether the call ran; the history keeps its
    one outcome row."""
    policy = {**HOLD_POLICY, "rules": {**HOLD_POLICY["rules"], "slow": {"action": "require_approval"}}}
    a = start_replica(procs, pg.url(), "a", policy, heartbeat=HEARTBEAT, lease=LEASE)
    b = start_replica(procs, pg.url(), "b", policy, heartbeat=HEARTBEAT, lease=LEASE)
    on_b = Agent(b)
    created = Agent(a).call("slow", {"steps": 200, "delay_ms": 100})  # ~20 s upstream
    [item] = b.wait_pending(1)
    assert b.decide(item["id"], "approve").status_code == 200
    wait_rows(b, item["id"], 2)
    time.sleep(0.5)  # claimed and sent: the upstream is working on it
    assert on_b.get(created["taskId"])["status"] == "working"
    a.proc.stop(signal.SIGKILL)
    done = on_b.wait_done(created["taskId"], timeout=LEASE + 10)
    assert (done["status"], done["statusMessage"]) == ("completed", "refused"), done
    assert done["result"]["isError"] is True, done
    assert done["result"]["content"][0]["text"] == (
        "Airlock cannot tell whether this call to `slow` ran: the replica running it stopped after its "
        "decision was recorded."), done
    time.sleep(LEASE)  # every survivor kept sweeping: still one outcome row
    assert rows_of(b, item["id"]) == [("approval_requested", None, None), ("approved", "alice", "api")]


SLOW_POLICY = {**HOLD_POLICY, "rules": {**HOLD_POLICY["rules"], "slow": {"action": "require_approval"}}}


def test_a_replica_restarting_under_its_name_ends_the_task_it_died_running(procs, pg):
    """Like the test above, but A comes back under the same name before anyone thinks it dead
    (a long lease): no survivor adopts its holds, so A's new run ends the task it left running."""
    a = start_replica(procs, pg.url(), "a", SLOW_POLICY, heartbeat=HEARTBEAT, lease=60)
    b = start_replica(procs, pg.url(), "b", SLOW_POLICY, heartbeat=HEARTBEAT, lease=60)
    on_b = Agent(b)
    created = Agent(a).call("slow", {"steps": 200, "delay_ms": 100})
    [item] = b.wait_pending(1)
    assert b.decide(item["id"], "approve").status_code == 200
    wait_rows(b, item["id"], 2)
    time.sleep(0.5)
    a.proc.stop(signal.SIGKILL)
    start_replica(procs, pg.url(), "a", SLOW_POLICY, heartbeat=HEARTBEAT, lease=60)
    done = on_b.wait_done(created["taskId"], timeout=10)
    assert done["result"]["content"][0]["text"] == (
        "Airlock cannot tell whether this call to `slow` ran: the replica running it stopped after its "
        "decision was recorded."), done
    assert rows_of(b, item["id"]) == [("approval_requested", None, None), ("approved", "alice", "api")]


def test_a_restart_does_not_contradict_a_streamed_call_it_released_before_dying(procs, pg):
    """A recorded and released a streamed hold, then died before telling the store (the few
    milliseconds between its outcome row and `mark_recorded`, made here by resetting the flag).
    Its next run must not add an `abandoned … nothing was released` row: the call did run."""
    from holdkit import HeldCall

    a = start_replica(procs, pg.url(), "a", heartbeat=HEARTBEAT, lease=60)
    call = HeldCall(a.mcp, "delete_record", {"id": "t-ran"})
    call.start()
    [item] = a.wait_pending(1)
    assert a.decide(item["id"], "approve").status_code == 200
    assert call.result(10)["content"][0]["text"] == "deleted t-ran"
    assert psql(pg, f"UPDATE airlock_approvals SET recorded = false WHERE id = '{item['id']}'") == "UPDATE 1"
    a.proc.stop(signal.SIGKILL)
    again = start_replica(procs, pg.url(), "a", heartbeat=HEARTBEAT, lease=60)
    assert psql(pg, f"SELECT recorded FROM airlock_approvals WHERE id = '{item['id']}'") == "t"
    assert rows_of(again, item["id"]) == [("approval_requested", None, None), ("approved", "alice", "api")]
