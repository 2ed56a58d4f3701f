"""Two-person rule, approver groups and escalation (issue 15, item 3), against the real binary,
the rug-pull test server on the official Python SDK, and the official Python SDK client."""
from __future__ import annotations

import threading
import time

from holdkit import ALICE, BOB, run_cli
from test_power import Background, call, gateway, outcome, policy

CAROL = "carol-approver-token-0123456789"


def with_groups(alice=(), bob=(), carol=()):
    def edit(text: str) -> str:
        text = text.replace('role = "admin"', f'role = "admin"\ngroups = {list(alice)!r}'.replace("'", '"'))
        text = text.replace('token_env = "AIRLOCK_TEST_BOB"',
                            f'token_env = "AIRLOCK_TEST_BOB"\ngroups = {list(bob)!r}'.replace("'", '"'))
        return text + (f'\n[[approver]]\nname = "carol"\ntoken_env = "AIRLOCK_TEST_CAROL"\n'
                       f'groups = {list(carol)!r}\n'.replace("'", '"'))
    return edit


def start(procs, monkeypatch, approval: dict, **groups):
    monkeypatch.setenv("AIRLOCK_TEST_CAROL", CAROL)
    pol = policy(delete={"action": "require_approval", "reason": "destructive", "approval": approval})
    return gateway(procs, pol, edit=with_groups(**groups))


def approve(gw, pid, token, **body):
    return gw.api("POST", f"/api/pending/{pid}/approve", token=token, json=body)


def test_two_distinct_approvers_are_needed_and_the_same_one_cannot_count_twice(procs, monkeypatch):
    gw = start(procs, monkeypatch, {"approvers": 2, "timeout": 60})
    held = Background(gw, call("delete_record", id="r1"))
    held.start()
    [item] = gw.wait_pending()
    r = approve(gw, item["id"], ALICE, comment="looks fine")
    assert r.status_code == 200 and r.json()["decision"] == "vote", r.text
    assert r.json()["approvals"] == ["alice"] and r.json()["needed"] == 2
    q = gw.api("GET", "/api/quorum").json()["quorum"][item["id"]]
    assert q["needed"] == 2 and q["approvals"] == ["alice"] and q["may_decide"] is True
    r = approve(gw, item["id"], ALICE)
    assert r.status_code == 409 and r.json()["error"]["code"] == "same_approver", r.text
    assert [p["id"] for p in gw.pending()] == [item["id"]], "still held"
    r = approve(gw, item["id"], BOB)
    assert r.status_code == 200 and r.json()["decision"] == "approved", r.text
    assert outcome(held.result()[0]) == "ok: deleted r1"
    [vote] = gw.audit_rows(decision="approval.vote")
    assert (vote["decider"], vote["reason"], vote["comment"]) == ("alice", "1 of 2 approvals", "looks fine")
    [approved] = [r for r in gw.decision_rows(item["id"]) if r["decision"] == "approved"]
    assert approved["decider"] == "bob" and approved["comment"] == "approved by alice, bob (2 of 2)"
    # The CLI says where the vote stands.
    held = Background(gw, call("delete_record", id="r2"))
    held.start()
    [item] = gw.wait_pending()
    out = run_cli("approve", item["id"], "--url", gw.base, env={"AIRLOCK_APPROVER_TOKEN": BOB})
    assert out.returncode == 0 and "1 of 2 approvals" in out.stdout, out.stdout + out.stderr
    gw.decide(item["id"], "deny")
    assert outcome(held.result()[0]).startswith("refused approval_denied")


def test_one_deny_ends_a_two_person_hold(procs, monkeypatch):
    gw = start(procs, monkeypatch, {"approvers": 2, "timeout": 60})
    held = Background(gw, call("delete_record", id="r1"))
    held.start()
    [item] = gw.wait_pending()
    assert approve(gw, item["id"], ALICE).json()["decision"] == "vote"
    r = gw.decide(item["id"], "deny", token=BOB, comment="no")
    assert r.status_code == 200 and r.json()["decision"] == "denied"
    assert outcome(held.result()[0]).startswith("refused approval_denied")
    assert approve(gw, item["id"], CAROL).status_code == 409


def test_two_approvers_racing_for_the_second_approval_decide_once(procs, monkeypatch):
    gw = start(procs, monkeypatch, {"approvers": 2, "timeout": 60})
    held = Background(gw, call("delete_record", id="r1"))
    held.start()
    [item] = gw.wait_pending()
    assert approve(gw, item["id"], ALICE).json()["decision"] == "vote"
    answers = {}
    go = threading.Barrier(2)

    def race(token, name):
        go.wait()
        answers[name] = approve(gw, item["id"], token)

    threads = [threading.Thread(target=race, args=(t, n)) for t, n in ((BOB, "bob"), (CAROL, "carol"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    codes = sorted(r.status_code for r in answers.values())
    assert codes == [200, 409], {n: r.text for n, r in answers.items()}
    assert outcome(held.result()[0]) == "ok: deleted r1"
    assert len([r for r in gw.decision_rows(item["id"]) if r["decision"] == "approved"]) == 1


def test_only_the_rules_groups_decide_until_escalation_calls_in_another(procs, monkeypatch):
    gw = start(procs, monkeypatch, {"groups": ["finance"], "escalate_after": 2, "escalate_to": "oncall",
                                    "timeout": 60},
               alice=["finance"], bob=["oncall"], carol=[])
    held = Background(gw, call("delete_record", id="r1"))
    held.start()
    [item] = gw.wait_pending()
    r = approve(gw, item["id"], BOB)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden_group", r.text
    assert "not in a group allowed to decide calls of rule `delete_record` (allowed: finance, oncall (after 2 s))" in r.text
    assert gw.api("GET", "/api/quorum", token=BOB).json()["quorum"][item["id"]]["may_decide"] is False
    assert gw.api("GET", "/api/quorum").json()["quorum"][item["id"]]["may_decide"] is True
    deadline = time.monotonic() + 15
    while not gw.audit_rows(decision="approval.escalated"):
        assert time.monotonic() < deadline, "no escalation"
        time.sleep(0.2)
    [row] = gw.audit_rows(decision="approval.escalated")
    assert row["reason"] == "no decision within 2 s: escalated to group oncall (bob)"
    assert approve(gw, item["id"], CAROL).status_code == 403, "carol is in neither group"
    r = approve(gw, item["id"], BOB)
    assert r.status_code == 200 and r.json()["decision"] == "approved", r.text
    assert outcome(held.result()[0]) == "ok: deleted r1"


def test_check_validates_the_quorum_keys(tmp_path):
    cases = {
        '"approvers": 0': "approval.approvers must be between 1 and 10, got 0",
        '"groups": []': "approval.groups is empty",
        '"escalate_after": 30': "escalate_after needs escalate_to",
        '"escalate_to": "oncall", "escalate_after": 400': "escalate_after must be between 1 and the timeout (300 s) minus one",
        '"approver": 2': "unknown key `approver` in rules.x.approval, did you mean `approvers`?",
    }
    for i, (body, message) in enumerate(cases.items()):
        path = tmp_path / f"p{i}.json"
        path.write_text('{\n  "version": "1",\n  "rules": {\n    "x": {\n      "action": "require_approval",\n'
                        f'      "approval": {{{body}}}\n    }}\n  }}\n}}\n')
        out = run_cli("check", path)
        text = out.stdout + out.stderr
        assert out.returncode != 0 and f"{path}:6:" in text and message in text, text


def test_slack_hears_the_count_and_the_escalation_mentions_the_group(procs, monkeypatch):
    from fake_slack import FakeSlack, all_text
    slack = FakeSlack()
    monkeypatch.setenv("AIRLOCK_TEST_SLACK_WEBHOOK", slack.webhook_url)
    monkeypatch.setenv("AIRLOCK_TEST_CAROL", CAROL)
    try:
        pol = policy(delete={"action": "require_approval", "approval": {
            "approvers": 2, "escalate_after": 2, "escalate_to": "oncall", "groups": ["finance"], "timeout": 60}})

        def edit(text):
            text = with_groups(alice=["finance"], bob=["finance"], carol=["oncall"])(text)
            text = text.replace('name = "carol"', 'name = "carol"\nslack_user_id = "U0CAROL1"')
            return text + '\n[slack]\nwebhook_url_env = "AIRLOCK_TEST_SLACK_WEBHOOK"\n'

        gw = gateway(procs, pol, edit=edit)
        held = Background(gw, call("delete_record", id="r1"))
        held.start()
        [item] = gw.wait_pending()
        assert approve(gw, item["id"], ALICE).json()["decision"] == "vote"
        vote = slack.wait_for(lambda b: "1 of 2 approvals" in all_text(b), kind=None).body
        assert "alice" in all_text(vote) and item["id"] in all_text(vote)
        escalated = slack.wait_for(lambda b: "Escalated" in all_text(b), kind=None).body
        text = all_text(escalated)
        assert "<@U0CAROL1>" in text and "oncall" in text and "within 2 s" in text, text
        # carol (oncall, called in) gives the second approval.
        r = approve(gw, item["id"], CAROL)
        assert r.status_code == 200 and r.json()["decision"] == "approved", r.text
        assert outcome(held.result()[0]) == "ok: deleted r1"
    finally:
        slack.close()


def test_check_of_a_config_warns_about_groups_nobody_is_in(tmp_path):
    import json
    policy_path = tmp_path / "g.json"
    policy_path.write_text(json.dumps({"version": "1", "rules": {"pay": {
        "action": "require_approval",
        "approval": {"approvers": 3, "groups": ["finance"], "escalate_after": 60, "escalate_to": "oncall"}}}}))
    config = tmp_path / "g.toml"
    config.write_text(f'[[upstream]]\nname = "x"\ncommand = "true"\npolicy = {json.dumps(str(policy_path))}\n\n'
                      '[[approver]]\nname = "alice"\ntoken_env = "AIRLOCK_TEST_ALICE"\ngroups = ["finance"]\n')
    out = run_cli("check", config, env={"AIRLOCK_TEST_ALICE": ALICE})
    assert out.returncode == 0, out.stderr
    assert "names group `oncall`, which no [[approver]] is in" in out.stderr
    assert "approvers is 3 but only 1 approver(s) may decide its calls" in out.stderr
    assert "group `finance`" not in out.stderr, "finance has a member"


def test_an_unsigned_slack_link_cannot_vote_on_a_two_person_rule(procs, monkeypatch):
    from fake_slack import FakeSlack, all_text
    from test_slack import links_of, open_page
    slack = FakeSlack()
    monkeypatch.setenv("AIRLOCK_TEST_SLACK_WEBHOOK", slack.webhook_url)
    monkeypatch.setenv("AIRLOCK_TEST_CAROL", CAROL)
    try:
        pol = policy(delete={"action": "require_approval", "approval": {"approvers": 2, "timeout": 60}})

        def edit(text):
            text = with_groups()(text)
            return text + '\n[slack]\nwebhook_url_env = "AIRLOCK_TEST_SLACK_WEBHOOK"\n'

        gw = gateway(procs, pol, edit=edit)
        held = Background(gw, call("delete_record", id="r1"))
        held.start()
        [item] = gw.wait_pending()
        message = slack.wait_for(lambda b: item["id"] in all_text(b) and "blocks" in b
                                 and any(bl["type"] == "actions" for bl in b["blocks"]), kind=None).body
        url = links_of(message)["approve_link"]
        url = gw.base + url[url.index("/approve/"):]  # public_url names port 0 (--listen :0)
        _, csrf = open_page(gw.http, url)
        browser = {"Origin": "null", "Sec-Fetch-Site": "same-origin"}
        r = gw.http.post(url, data={"csrf": csrf, "action": "approve", "name": "mallory"}, headers=browser)
        assert r.status_code == 403 and "needs approvers signed in by name" in r.text, r.text
        assert gw.audit_rows(decision="approval.vote") == [], "the link did not count"
        assert [p["id"] for p in gw.pending()] == [item["id"]]
        gw.decide(item["id"], "deny")
        held.result()
    finally:
        slack.close()
