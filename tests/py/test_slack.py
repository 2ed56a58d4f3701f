"""Slack (issue 6): the message per held call, the follow-up, delivery that
never holds anything up, decision links and Slack-app interactions — all
against a fake Slack in this process and the real `airlock` binary.

(The browser test — open a link from the fake payload, tap Approve on a
375 px viewport — lives with the dashboard's playwright tests.)
"""
from __future__ import annotations

import hashlib
import hmac
import json
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.parse

import httpx
import pytest

import rawmcp as rm
from fake_slack import BOT_TOKEN, WEBHOOK_SECRET, FakeSlack, all_text
from harness import AIRLOCK_BIN, PYTHON, TESTSERVER, free_port, write_json

ALICE = "alice-approver-token-0123456789"
BOB = "bob-approver-token-0123456789ab"
SIGNING_SECRET = "fake-slack-signing-secret-0123456789"
LINK_KEY = "shared-link-key-for-two-gateways-0123456789"
ALICE_SLACK = "U0ALICE"

POLICY = {
    "version": "1",
    "default": "allow",
    "rules": {
        "delete_*": {"action": "require_approval", "reason": "destructive"},
        "slow_*": {"action": "require_approval", "reason": "expires fast",
                   "approval": {"timeout": 2, "on_timeout": "deny"}},
    },
}
LINK_RE = re.compile(r"^(http://127\.0\.0\.1:\d+)/approve/([A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)$")


@pytest.fixture
def slack():
    fake = FakeSlack()
    yield fake
    fake.close()


class Gateway:
    """A running `airlock serve --config …` with a [slack] table."""

    def __init__(self, proc, port: int, audit):
        self.proc, self.port, self.audit = proc, port, audit
        self.base = f"http://127.0.0.1:{port}"
        self.mcp = f"{self.base}/mcp/test"
        self.http = httpx.Client(base_url=self.base, timeout=15)

    def api(self, method: str, path: str, token: str = ALICE, **kw) -> httpx.Response:
        return self.http.request(method, path, headers={"Authorization": f"Bearer {token}"}, **kw)

    def pending(self) -> list[dict]:
        return self.api("GET", "/api/pending").json()["pending"]

    def wait_pending(self, n: int = 1, timeout: float = 15) -> list[dict]:
        items = rm.wait_until(lambda: len(self.pending()) >= n and self.pending(), timeout)
        assert items and len(items) >= n, f"expected {n} pending, have {items}"
        return items

    def audit_rows(self, **filters) -> list[dict]:
        r = self.api("GET", "/api/audit", params={**filters, "limit": 1000})
        assert r.status_code == 200, r.text
        return sorted(r.json()["entries"], key=lambda e: e["seq"])

    def metric(self, name: str) -> float:
        for line in self.http.get("/metrics").text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        raise AssertionError(f"no metric {name}")


def start(procs, slack: FakeSlack, *, signing=False, login=False, bot=False, give_up=600,
          link_key=False, audit=None, env_extra=None) -> Gateway:
    tmp = procs.tmp_path
    port = free_port()
    policy = write_json(tmp / f"policy-{port}.json", POLICY)
    lines = [
        f'listen = "127.0.0.1:{port}"',
        f'public_url = "http://127.0.0.1:{port}"',
        "[[upstream]]", 'name = "test"', f"command = {json.dumps(PYTHON)}",
        f'args = [{json.dumps(str(TESTSERVER))}, "stdio"]', f"policy = {json.dumps(str(policy))}",
        "[[approver]]", 'name = "alice"', 'token_env = "T_ALICE"', f'slack_user_id = "{ALICE_SLACK}"',
        "[[approver]]", 'name = "bob"', 'token_env = "T_BOB"',
        "[slack]",
        f"give_up_after = {give_up}",
        f"link_requires_login = {'true' if login else 'false'}",
    ]
    if bot:
        lines += ['bot_token_env = "T_SLACK_BOT"', 'channel = "C0APPROVALS"', f'api_url = "{slack.api_url}"']
    else:
        lines += ['webhook_url_env = "T_SLACK_WEBHOOK"']
    if signing:
        lines += ['signing_secret_env = "T_SLACK_SIGNING"']
    if link_key:
        lines += ['link_key_env = "T_SLACK_LINK_KEY"']
    config = tmp / f"airlock-{port}.toml"
    config.write_text("\n".join(lines) + "\n")
    audit = audit or tmp / f"audit-{port}.db"
    env = {"T_ALICE": ALICE, "T_BOB": BOB, "T_SLACK_WEBHOOK": slack.webhook_url, "T_SLACK_BOT": BOT_TOKEN,
           "T_SLACK_SIGNING": SIGNING_SECRET, "T_SLACK_LINK_KEY": LINK_KEY, **(env_extra or {})}
    proc = procs.start([AIRLOCK_BIN, "serve", "--config", config, "--audit", audit], env=env)
    proc.wait_for_line("airlock listening on ", timeout=30)
    return Gateway(proc, port, audit)


class HeldCall(threading.Thread):
    """A handshake-era `tools/call` on its own thread; `.answer` is the JSON-RPC response."""

    def __init__(self, gw: Gateway, name: str, arguments: dict, req_id: int = 7):
        super().__init__(daemon=True)
        self.gw, self.name, self.arguments, self.req_id = gw, name, arguments, req_id
        self.answer = None
        self.session = None
        self.ready = threading.Event()
        self.start()
        assert self.ready.wait(15), "no session"

    def run(self):
        try:
            with httpx.Client(timeout=httpx.Timeout(60.0, connect=5.0)) as c:
                self.session = rm.open_session(c, self.gw.mcp)
                self.ready.set()
                r = rm.post(c, self.gw.mcp, rm.call_body(self.req_id, self.name, self.arguments),
                            rm.session_headers(self.session))
                self.answer = rm.answer(r, self.req_id)
        except (httpx.HTTPError, AssertionError) as e:  # e.g. the gateway was killed
            self.error = e

    error: BaseException | None = None

    def result(self, timeout: float = 15) -> dict:
        self.join(timeout)
        assert self.answer is not None, f"the held call got no answer ({self.error!r})"
        return self.answer["result"]


def text_of(result: dict) -> str:
    return "".join(c.get("text", "") for c in result.get("content", []))


def held_message(slack: FakeSlack, pending_id: str) -> dict:
    return slack.wait_for(lambda b: pending_id in all_text(b) and "blocks" in b
                          and any(bl["type"] == "actions" for bl in b["blocks"]), kind=None).body


def links_of(message: dict) -> dict[str, str]:
    actions = next(b for b in message["blocks"] if b["type"] == "actions")
    return {e["action_id"]: e.get("url") for e in actions["elements"]}


def open_page(http: httpx.Client, url: str, **kw) -> tuple[httpx.Response, str | None]:
    r = http.get(url, **kw)
    m = re.search(r'name="csrf" value="([^"]+)"', r.text)
    return r, m.group(1) if m else None


def hold(gw: Gateway, slack: FakeSlack, name="delete_record", arguments=None):
    call = HeldCall(gw, name, arguments if arguments is not None else {"id": "7"})
    item = gw.wait_pending()[-1]
    return call, item, held_message(slack, item["id"])


# --- the message ----------------------------------------------------------------

def test_held_call_posts_the_block_kit_message(procs, slack):
    gw = start(procs, slack)
    call, item, message = hold(gw, slack)
    links = links_of(message)
    for action in ("approve_link", "deny_link"):
        m = LINK_RE.match(links[action])
        assert m and m.group(1) == gw.base, links[action]
    expires = re.search(r"<!date\^(\d+)\^", all_text(message)).group(1)
    expected = {
        "text": f"Approval needed: delete_record on test (agent {item['agent']})",
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": "delete_record on test needs approval", "emoji": True}},
            {"type": "section", "fields": [
                {"type": "mrkdwn", "text": f"*Agent*\n{item['agent']}"},
                {"type": "mrkdwn", "text": "*Rule*\n`delete_*`"},
                {"type": "mrkdwn", "text": "*Reason*\ndestructive"},
                {"type": "mrkdwn", "text": f"*Expires*\n<!date^{expires}^{{date_short_pretty}} at {{time_secs}}|"
                                           f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(int(expires)))} UTC> (after 5 min)"},
            ]},
            {"type": "section", "text": {"type": "mrkdwn", "text": '*Arguments*\n```{\n  "id": "7"\n}```'}},
            {"type": "actions", "block_id": "airlock_decide", "elements": [
                {"type": "button", "text": {"type": "plain_text", "text": "Approve", "emoji": True},
                 "action_id": "approve_link", "style": "primary", "url": links["approve_link"]},
                {"type": "button", "text": {"type": "plain_text", "text": "Deny", "emoji": True},
                 "action_id": "deny_link", "style": "danger", "url": links["deny_link"]},
                {"type": "button", "text": {"type": "plain_text", "text": "Details", "emoji": True},
                 "action_id": "details_link", "url": f"{gw.base}/"},
            ]},
            {"type": "context", "elements": [{"type": "mrkdwn", "text":
                f"Request `{item['id']}` · Approve and Deny open a confirm page on Airlock; "
                "nothing is decided until you confirm there."}]},
        ],
    }
    assert message == expected
    assert links["approve_link"] != links["deny_link"]
    assert gw.api("POST", f"/api/pending/{item['id']}/approve").status_code == 200
    assert text_of(call.result()) == "deleted 7"


def test_hostile_and_huge_arguments_are_escaped_and_cut(procs, slack):
    gw = start(procs, slack)
    hostile = {"id": "<!channel> <https://evil.example|click me> & ```x```", "blob": "<>" * 20_000}
    call, item, message = hold(gw, slack, arguments=hostile)
    blocks = message["blocks"]
    assert len(blocks) <= 50
    for b in blocks:
        for t in [b.get("text", {}).get("text", "")] + [f["text"] for f in b.get("fields", [])]:
            assert len(t.encode("utf-16-le")) // 2 <= 3000, len(t)
            assert "<!channel>" not in t and "<https://evil" not in t, t
    text = all_text(message)
    assert "&lt;!channel&gt; &lt;https://evil.example|click me&gt; &amp;" in text
    assert re.search(r"✂️ [\d,]+ of [\d,]+ characters of arguments not shown", text), text
    arg_sections = [b["text"]["text"] for b in blocks if b["type"] == "section" and "text" in b]
    assert all(s.count("```") == 2 for s in arg_sections), arg_sections
    # The confirm page shows the whole call.
    r, _ = open_page(gw.http, links_of(message)["approve_link"])
    assert r.status_code == 200 and "&lt;&gt;" * 20_000 in r.text
    gw.api("POST", f"/api/pending/{item['id']}/deny")
    call.result()


def test_follow_up_on_each_outcome(procs, slack):
    gw = start(procs, slack)

    def followup(pending_id: str, starts: str) -> str:
        body = slack.wait_for(lambda b: pending_id in all_text(b) and b["blocks"][0]["type"] == "section"
                              and b["blocks"][0]["text"]["text"].startswith(starts), kind="webhook").body
        return body["blocks"][0]["text"]["text"]

    call, item, _ = hold(gw, slack)
    gw.api("POST", f"/api/pending/{item['id']}/approve")
    assert re.fullmatch(r"✅ approved by alice via API after \d+ s", followup(item["id"], "✅"))
    call.result()

    call, item, _ = hold(gw, slack)
    gw.api("POST", f"/api/pending/{item['id']}/deny", token=BOB, json={"comment": "not <!here> today"})
    assert re.fullmatch(r"❌ denied by bob via API after \d+ s\n>not &lt;!here&gt; today", followup(item["id"], "❌"))
    call.result()

    call, item, _ = hold(gw, slack, name="slow_wipe")
    assert followup(item["id"], "⌛") == "⌛ timed out after 2 s — denied"
    assert call.result()["isError"] is True

    call, item, _ = hold(gw, slack)
    with httpx.Client(timeout=10) as c:
        rm.post(c, gw.mcp, {"jsonrpc": "2.0", "method": "notifications/cancelled",
                            "params": {"requestId": call.req_id}}, rm.session_headers(call.session))
    assert re.fullmatch(r"🚫 cancelled after \d+ s\n>cancelled by the agent", followup(item["id"], "🚫"))


# --- delivery ---------------------------------------------------------------------

def test_retries_on_500_until_slack_accepts(procs, slack):
    slack.fail_next(500, 500)
    gw = start(procs, slack)
    call, item, _ = hold(gw, slack)
    attempts = slack.received("webhook", ok_only=False)
    assert [r.status for r in attempts[:3]] == [500, 500, 200]
    gaps = [attempts[1].at - attempts[0].at, attempts[2].at - attempts[1].at]
    assert gaps[0] >= 0.45 and gaps[1] >= 0.95, f"exponential backoff with jitter: {gaps}"
    assert gw.metric("airlock_notification_failures_total") >= 2
    rows = rm.wait_until(lambda: [e for e in gw.audit_rows(pending_id=item["id"])
                                  if e["decision"] == "notification_failed"])
    assert rows and "HTTP 500" in rows[0]["reason"] and rows[0]["channel"] == "slack", rows
    gw.api("POST", f"/api/pending/{item['id']}/approve")
    call.result()


def test_honours_retry_after_on_429(procs, slack):
    slack.fail_next((429, 3))
    gw = start(procs, slack)
    call, item, _ = hold(gw, slack)
    first, second = slack.received("webhook", ok_only=False)[:2]
    assert (first.status, second.status) == (429, 200)
    assert second.at - first.at >= 2.9, second.at - first.at
    gw.api("POST", f"/api/pending/{item['id']}/approve")
    call.result()


def test_a_hold_resolves_from_the_dashboard_while_slack_is_down(procs, slack):
    slack.default = ("stall", 30)  # every request hangs past the gateway's 10 s limit
    gw = start(procs, slack, give_up=3)
    call = HeldCall(gw, "delete_record", {"id": "7"})
    item = gw.wait_pending()[0]
    started = time.monotonic()
    assert gw.api("POST", f"/api/pending/{item['id']}/approve").status_code == 200
    assert text_of(call.result()) == "deleted 7"
    assert time.monotonic() - started < 3, "Slack being down must not delay the release"
    assert gw.http.get("/healthz").status_code == 200
    gave_up = rm.wait_until(lambda: [e for e in gw.audit_rows(decision="notification_failed")
                                     if "gave up" in (e["reason"] or "")], timeout=25)
    assert gave_up and gave_up[0]["pending_id"] == item["id"], gave_up
    assert gw.metric("airlock_notification_failures_total") >= 1


def test_webhook_urls_and_tokens_never_appear_in_logs(procs, slack):
    slack.fail_next(500, (429, 1))
    gw = start(procs, slack, env_extra={"RUST_LOG": "debug"})
    call, item, _ = hold(gw, slack)
    gw.api("POST", f"/api/pending/{item['id']}/approve")
    call.result()
    slack.wait_for(lambda b: "✅" in all_text(b), kind="webhook")
    logs = gw.proc.stderr_text() + "\n".join(gw.proc.stdout_log)
    assert "retrying" in logs, logs[-2000:]
    assert WEBHOOK_SECRET not in logs and "/services/T000" not in logs
    assert SIGNING_SECRET not in logs and BOT_TOKEN not in logs


def test_an_unreachable_slack_is_reported_without_its_url(procs, slack):
    dead = f"http://127.0.0.1:{free_port()}/services/T000/B000/{WEBHOOK_SECRET}"
    gw = start(procs, slack, give_up=2, env_extra={"T_SLACK_WEBHOOK": dead, "RUST_LOG": "debug"})
    call = HeldCall(gw, "delete_record", {"id": "7"})
    item = gw.wait_pending()[0]
    gave_up = rm.wait_until(lambda: [e for e in gw.audit_rows(pending_id=item["id"])
                                     if "gave up" in (e["reason"] or "")], timeout=15)
    assert gave_up and "error sending request" in gave_up[0]["reason"], gave_up
    logs = gw.proc.stderr_text()
    assert "not delivered" in logs and WEBHOOK_SECRET not in logs and "/services/" not in logs
    assert WEBHOOK_SECRET not in json.dumps(gw.audit_rows())
    gw.api("POST", f"/api/pending/{item['id']}/approve")
    assert text_of(call.result()) == "deleted 7"


def test_bot_mode_posts_then_edits_the_message(procs, slack):
    gw = start(procs, slack, bot=True)
    call = HeldCall(gw, "delete_record", {"id": "7"})
    item = gw.wait_pending()[0]
    post = slack.wait_for(lambda b: item["id"] in all_text(b), path="/api/chat.postMessage")
    assert post.headers["authorization"] == f"Bearer {BOT_TOKEN}"
    assert post.body["channel"] == "C0APPROVALS"
    gw.api("POST", f"/api/pending/{item['id']}/approve")
    call.result()
    update = slack.wait_for(lambda b: "✅" in all_text(b), path="/api/chat.update").body
    assert update["ts"] == "1700000000.000001" and update["channel"] == "C0APPROVALS"
    assert not any(b["type"] == "actions" for b in update["blocks"]), "buttons are gone once decided"


# --- decision links -----------------------------------------------------------------

def test_get_never_decides(procs, slack):
    gw = start(procs, slack)
    call, item, message = hold(gw, slack)
    url = links_of(message)["approve_link"]
    for agent in ("Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)", "Mozilla/5.0", "Microsoft Office"):
        r = gw.http.get(url, headers={"User-Agent": agent})
        assert r.status_code == 200
    assert gw.http.head(url).status_code == 200
    assert [p["id"] for p in gw.pending()] == [item["id"]]
    r = gw.http.get(url)
    assert "delete_record" in r.text and "&quot;id&quot;: &quot;7&quot;" in r.text
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["cache-control"] == "no-store" and r.headers["referrer-policy"] == "same-origin"
    assert "<script" not in r.text and "style=" not in r.text and "<style" not in r.text
    css = gw.http.get("/slack/confirm.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    gw.api("POST", f"/api/pending/{item['id']}/deny")
    call.result()


def test_post_decides_once_then_says_who_decided(procs, slack):
    gw = start(procs, slack)
    call, item, message = hold(gw, slack)
    url = links_of(message)["approve_link"]
    _, csrf = open_page(gw.http, url)
    # As a browser sends it from a no-referrer page: Origin null, but same-origin.
    browser = {"Origin": "null", "Sec-Fetch-Site": "same-origin"}
    r = gw.http.post(url, data={"csrf": csrf, "action": "approve", "name": "carol", "comment": "ok"}, headers=browser)
    assert r.status_code == 200 and "Approved by carol (Slack link)" in r.text, r.text
    assert text_of(call.result()) == "deleted 7"
    row = [e for e in gw.audit_rows(pending_id=item["id"]) if e["decision"] == "approved"][0]
    assert (row["decider"], row["channel"], row["comment"]) == ("carol (Slack link)", "slack-link", "ok")
    again = gw.http.post(url, data={"csrf": csrf, "action": "deny"})
    assert again.status_code == 409 and "Already approved by carol (Slack link) just now" in again.text
    assert gw.http.get(url).status_code == 409
    slack.wait_for(lambda b: "✅ approved by carol (Slack link) after" in all_text(b), kind="webhook")


def test_a_post_needs_this_pages_csrf_and_the_allowed_action(procs, slack):
    gw = start(procs, slack)
    call_a, a, msg_a = hold(gw, slack)
    call_b = HeldCall(gw, "delete_record", {"id": "8"}, req_id=8)
    b = gw.wait_pending(2)[-1]
    msg_b = held_message(slack, b["id"])
    url_a, deny_a = links_of(msg_a)["approve_link"], links_of(msg_a)["deny_link"]
    _, csrf_b = open_page(gw.http, links_of(msg_b)["approve_link"])
    _, csrf_a = open_page(gw.http, url_a)
    assert gw.http.post(url_a, data={"action": "approve"}).status_code == 403
    assert gw.http.post(url_a, data={"csrf": csrf_b, "action": "approve"}).status_code == 403, "csrf of another pending"
    foreign = gw.http.post(url_a, data={"csrf": csrf_a, "action": "approve"}, headers={"Origin": "https://evil.example"})
    assert foreign.status_code == 403
    cross = gw.http.post(url_a, data={"csrf": csrf_a, "action": "approve"}, headers={"Sec-Fetch-Site": "cross-site"})
    assert cross.status_code == 403 and "another site" in cross.text
    _, csrf_deny = open_page(gw.http, deny_a)
    r = gw.http.post(deny_a, data={"csrf": csrf_deny, "action": "approve"})
    assert r.status_code == 403 and "can only deny" in r.text
    assert len(gw.pending()) == 2, "nothing was decided"
    r = gw.http.post(deny_a, data={"csrf": csrf_deny, "action": "deny"})
    assert r.status_code == 200 and "Denied by Slack link" in r.text
    assert call_a.result()["isError"] is True
    gw.api("POST", f"/api/pending/{b['id']}/deny")
    call_b.result()


def test_an_expired_link_says_so(procs, slack):
    gw = start(procs, slack)
    call, item, message = hold(gw, slack, name="slow_wipe")
    url = links_of(message)["approve_link"]
    _, csrf = open_page(gw.http, url)
    call.result()  # timed out
    r = gw.http.get(url)
    assert r.status_code == 410 and "This link has expired" in r.text
    assert gw.http.post(url, data={"csrf": csrf, "action": "approve"}).status_code == 410


def test_a_forged_link_is_not_valid_and_audited(procs, slack):
    gw = start(procs, slack)
    call, item, message = hold(gw, slack)
    base, token = LINK_RE.match(links_of(message)["approve_link"]).groups()
    claims, tag = token.split(".")
    flip = lambda s, i: s[:i] + ("A" if s[i] != "A" else "B") + s[i + 1:]  # noqa: E731
    for forged in (f"{claims}.{flip(tag, 5)}", f"{flip(claims, 3)}.{tag}", "nonsense"):
        r = gw.http.get(f"{base}/approve/{forged}")
        assert r.status_code == 403 and "This link is not valid" in r.text, forged
        assert gw.http.post(f"{base}/approve/{forged}", data={"action": "approve"}).status_code == 403
    rows = rm.wait_until(lambda: gw.audit_rows(decision="forged_link"))
    assert len(rows) >= 3 and "bad signature" in rows[0]["reason"], rows
    assert [p["id"] for p in gw.pending()] == [item["id"]]
    gw.api("POST", f"/api/pending/{item['id']}/deny")
    call.result()


def test_a_token_from_another_gateway_is_not_valid(procs, slack):
    one = start(procs, slack, link_key=True)
    two = start(procs, slack, link_key=True)      # same key, never held that call
    three = start(procs, slack)                   # its own key
    call, item, message = hold(one, slack)
    token = LINK_RE.match(links_of(message)["approve_link"]).group(2)
    r = two.http.get(f"/approve/{token}")
    assert r.status_code == 404 and "This link is not valid" in r.text
    r = three.http.get(f"/approve/{token}")
    assert r.status_code == 403 and "This link is not valid" in r.text
    one.api("POST", f"/api/pending/{item['id']}/deny")
    call.result()


def test_links_survive_a_restart(procs, slack):
    gw = start(procs, slack)
    call, item, message = hold(gw, slack)
    token = LINK_RE.match(links_of(message)["approve_link"]).group(2)
    gw.proc.stop(sig=signal.SIGKILL)
    again = start(procs, slack, audit=gw.audit)
    r = again.http.get(f"/approve/{token}")
    assert r.status_code == 410 and "no longer pending" in r.text and "gateway restarted" in r.text, r.text
    # The key was kept in the audit store: new links of the restarted gateway work too.
    call2, item2, message2 = hold(again, slack)
    url = links_of(message2)["approve_link"]
    _, csrf = open_page(again.http, url)
    assert again.http.post(url, data={"csrf": csrf, "action": "approve"}).status_code == 200
    assert text_of(call2.result()) == "deleted 7"


def test_links_can_require_an_approver_login(procs, slack):
    gw = start(procs, slack, login=True)
    call, item, message = hold(gw, slack)
    url = links_of(message)["approve_link"]
    r = gw.http.get(url)
    assert r.status_code == 200 and 'http-equiv="refresh"' in r.text and "?again=1" in r.text
    r = gw.http.get(url + "?again=1")
    assert r.status_code == 401 and "Log in to decide" in r.text
    assert gw.http.post(url, data={"action": "approve"}).status_code == 401
    with httpx.Client(base_url=gw.base, timeout=15) as browser:
        assert browser.post("/api/login", json={"token": ALICE}).status_code == 200
        r, csrf = open_page(browser, url)
        assert "Deciding as <strong>alice</strong>" in r.text and 'name="name"' not in r.text
        r = browser.post(url, data={"csrf": csrf, "action": "approve"})
        assert r.status_code == 200 and "Approved by alice" in r.text
    call.result()
    row = [e for e in gw.audit_rows(pending_id=item["id"]) if e["decision"] == "approved"][0]
    assert (row["decider"], row["channel"]) == ("alice", "slack-link")


# --- Slack-app interactions -------------------------------------------------------------

def signed(body: str, secret: str = SIGNING_SECRET, at: int | None = None) -> dict:
    ts = str(at if at is not None else int(time.time()))
    sig = hmac.new(secret.encode(), f"v0:{ts}:{body}".encode(), hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={sig}",
            "Content-Type": "application/x-www-form-urlencoded"}


def interaction(pending_id: str, user: str, action: str, response_url: str) -> str:
    payload = {"type": "block_actions", "user": {"id": user, "username": user.lower()},
               "response_url": response_url,
               "actions": [{"action_id": action, "block_id": "airlock_decide", "value": pending_id}]}
    return "payload=" + urllib.parse.quote(json.dumps(payload))


def test_interactive_approve_decides_and_replaces_the_message(procs, slack):
    gw = start(procs, slack, signing=True)
    call, item, message = hold(gw, slack)
    approve = next(e for b in message["blocks"] if b["type"] == "actions" for e in b["elements"]
                   if e["action_id"] == "approve")
    assert approve["value"] == item["id"] and "url" not in approve and approve["confirm"]
    body = interaction(item["id"], ALICE_SLACK, "approve", slack.response_url("r1"))
    r = gw.http.post("/slack/interactions", content=body, headers=signed(body))
    assert r.status_code == 200, r.text
    assert text_of(call.result()) == "deleted 7"
    reply = slack.wait_for(lambda b: True, path="/actions/r1").body
    assert reply["replace_original"] is True
    assert re.search(r"✅ approved by alice in Slack after \d+ s", all_text(reply)), reply
    row = [e for e in gw.audit_rows(pending_id=item["id"]) if e["decision"] == "approved"][0]
    assert (row["decider"], row["channel"]) == ("alice", "slack")


def test_interactions_with_bad_signatures_are_refused(procs, slack):
    gw = start(procs, slack, signing=True)
    call, item, _ = hold(gw, slack)
    body = interaction(item["id"], ALICE_SLACK, "approve", slack.response_url("r2"))
    bad = signed(body, secret="not-the-secret")
    assert gw.http.post("/slack/interactions", content=body, headers=bad).status_code == 401
    stale = signed(body, at=int(time.time()) - 6 * 60)
    assert gw.http.post("/slack/interactions", content=body, headers=stale).status_code == 401
    altered = body.replace(ALICE_SLACK, "U0MALLORY")
    assert gw.http.post("/slack/interactions", content=altered, headers=signed(body)).status_code == 401
    assert gw.http.post("/slack/interactions", content=body).status_code == 401
    assert [p["id"] for p in gw.pending()] == [item["id"]]
    assert not slack.received("response")
    gw.api("POST", f"/api/pending/{item['id']}/deny")
    call.result()


def test_an_unmapped_slack_user_is_refused(procs, slack):
    gw = start(procs, slack, signing=True)
    call, item, _ = hold(gw, slack)
    body = interaction(item["id"], "U0STRANGER", "approve", slack.response_url("r3"))
    assert gw.http.post("/slack/interactions", content=body, headers=signed(body)).status_code == 200
    reply = slack.wait_for(lambda b: True, path="/actions/r3").body
    assert reply["response_type"] == "ephemeral" and reply["replace_original"] is False
    assert "not an Airlock approver" in reply["text"]
    assert [p["id"] for p in gw.pending()] == [item["id"]]
    gw.api("POST", f"/api/pending/{item['id']}/deny")
    call.result()


def test_links_name_the_port_airlock_stdio_actually_listens_on(procs, slack):
    """Several `airlock stdio --config` gateways (one per client-spawned server) share a config:
    only the first gets its `listen` port, the others fall back to a free one. Without
    `public_url` in the file, each one's Slack links must point at its own dashboard."""
    tmp = procs.tmp_path
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    taken_port = taken.getsockname()[1]
    policy = write_json(tmp / "policy-fallback.json", POLICY)
    config = tmp / "airlock-fallback.toml"
    config.write_text("\n".join([
        f'listen = "127.0.0.1:{taken_port}"',
        "[[upstream]]", 'name = "test"', f"command = {json.dumps(PYTHON)}",
        f'args = [{json.dumps(str(TESTSERVER))}, "stdio"]', f"policy = {json.dumps(str(policy))}",
        "[[approver]]", 'name = "alice"', 'token_env = "T_ALICE"',
        "[slack]", 'webhook_url_env = "T_SLACK_WEBHOOK"',
    ]) + "\n")
    proc = procs.start([AIRLOCK_BIN, "stdio", "--config", config, "--audit", tmp / "audit-fallback.db"],
                       env={"T_ALICE": ALICE, "T_SLACK_WEBHOOK": slack.webhook_url}, stdin=subprocess.PIPE)
    try:
        found = rm.wait_until(lambda: re.search(r"dashboard: http://127\.0\.0\.1:(\d+)/", proc.stderr_text()), 30)
        assert found, proc.stderr_text()
        bound = int(found.group(1))
        assert bound != taken_port

        def send(message):
            proc.popen.stdin.write((json.dumps(message) + "\n").encode())
            proc.popen.stdin.flush()

        send(rm.init_body(1))
        send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        send(rm.call_body(2, "delete_record", {"id": "7"}))
        message = slack.wait_for(lambda b: "delete_record" in all_text(b), kind="webhook").body
        base, token = LINK_RE.match(links_of(message)["approve_link"]).groups()
        assert base == f"http://127.0.0.1:{bound}", base
        page = httpx.get(f"{base}/approve/{token}", timeout=10)
        assert page.status_code == 200 and "delete_record" in page.text
    finally:
        taken.close()
