"""Config-mode features end to end, against the real binary: what `[[upstream]]`
`headers`/`headers_env`/`env` actually deliver to the upstream, `token_file`
credentials, the audit rows of hidden, default-denied and rate-limited calls,
the `agent`/`until` history filters, and the `policy.reloaded` event."""
from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import rawmcp as rm
from harness import PYTHON, TESTSERVER, free_port, text_of
from holdkit import AGENT, ALICE, HeldCall, WebSocket, run_cli, start_gateway
from test_http_protocol import find_request
from test_policy_cli import ALLOW_ECHO, DENY_ECHO, replace_file

APPROVER = '[[approver]]\nname = "alice"\ntoken_env = "AIRLOCK_TEST_ALICE"\n'


def stdio_upstream(name: str, *, policy=None, command: str = PYTHON, args=None, env: dict | None = None) -> str:
    """An `[[upstream]]` table running the stdio testserver (or `command`/`args`)."""
    lines = ["[[upstream]]", f'name = "{name}"', f"command = {json.dumps(str(command))}",
             f"args = {json.dumps(args if args is not None else [str(TESTSERVER), 'stdio'])}"]
    if env:
        lines.append("env = { " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in env.items()) + " }")
    if policy:
        lines.append(f"policy = {json.dumps(str(policy))}")
    return "\n".join(lines) + "\n"


def serve(procs, name: str, toml: str):
    """Writes `toml` (plus approver alice) and starts `airlock serve --config` on it."""
    cfg = procs.tmp_path / f"{name}.toml"
    cfg.write_text(toml + "\n" + APPROVER)
    return start_gateway(procs, config=cfg)


def call(url: str, name: str, arguments: dict | None = None, headers: dict | None = None) -> dict:
    """One stateless-era tools/call, on this thread; the JSON-RPC answer."""
    c = HeldCall(url, name, arguments or {}, headers=headers)
    c.run()
    assert c.error is None and c.answer is not None, (c.status, c.error, c.messages)
    return c.answer


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


# ----------------------------------------------------------------------------- [[upstream]] url + headers


def test_http_upstream_gets_configured_headers_which_override_the_agents(procs, monkeypatch):
    log = procs.tmp_path / "remote-requests.jsonl"
    _, url = procs.testserver_http("both", "--log-requests", str(log))
    monkeypatch.setenv("E2E_REMOTE_AUTH", "Bearer remote-secret-7a1c")
    gw = serve(procs, "remote", (
        f'[[upstream]]\nname = "test"\nurl = "{url}"\n'
        'headers = { X-Static = "static-value" }\n'
        'headers_env = { Authorization = "E2E_REMOTE_AUTH" }\n'))
    agent_own = {"Authorization": "Bearer agent-own-value", "X-Static": "agent-static"}
    with rm.client() as c:
        sid = rm.open_session(c, gw.mcp, agent_own)
        r = rm.post(c, gw.mcp, rm.call_body("hdr-1", "echo", {"text": "h1"}), rm.session_headers(sid, agent_own))
        assert rm.answer(r, "hdr-1")["result"]["content"][0]["text"] == "h1"
    assert text_of(call(gw.mcp, "echo", {"text": "hdr-stateless"}, agent_own)["result"]) == "hdr-stateless"

    find_request(log, "hdr-1")  # both calls reached it
    find_request(log, "hdr-stateless")
    requests = [x for x in rm.read_log(log) if x["kind"] == "request"]
    assert len(requests) >= 4  # initialize, initialized, two calls
    for seen in requests:  # every request, with the configured values only
        assert seen["headers"].get("authorization") == "Bearer remote-secret-7a1c", seen
        assert seen["headers"].get("x-static") == "static-value", seen
    text = log.read_text()
    assert "agent-own-value" not in text and "agent-static" not in text


# ----------------------------------------------------------------------------- [[upstream]] command + env


def test_stdio_upstream_gets_configured_env_on_top_of_the_filtered_environment(procs, monkeypatch):
    dump = procs.tmp_path / "child-env.txt"
    monkeypatch.setenv("E2E_OVERRIDDEN", "from-parent")
    monkeypatch.setenv("E2E_INHERITED", "inherited-value")
    monkeypatch.setenv("E2E_COPY_OF_APPROVER_TOKEN", ALICE)
    gw = serve(procs, "childenv", stdio_upstream(
        "test", command="sh", args=["-c", f'env > "{dump}"; exec "{PYTHON}" "{TESTSERVER}" stdio'],
        env={"E2E_FROM_CONFIG": "configured value", "E2E_OVERRIDDEN": "from-config",
             "AIRLOCK_CHILD_SETTING": "set-in-env"}))
    assert text_of(call(gw.mcp, "echo", {"text": "spawned"})["result"]) == "spawned"
    child = dict(line.split("=", 1) for line in dump.read_text().splitlines() if "=" in line)
    assert child.get("E2E_FROM_CONFIG") == "configured value"
    assert child.get("E2E_OVERRIDDEN") == "from-config"  # `env` wins over the inherited value
    assert child.get("E2E_INHERITED") == "inherited-value"
    # config.md: variables set in `env` are passed as written, even AIRLOCK_* ones...
    assert child.get("AIRLOCK_CHILD_SETTING") == "set-in-env"
    # ...while Airlock's own secrets are not inherited.
    assert ALICE not in dump.read_text() and "AIRLOCK_TEST_ALICE" not in child
    assert "E2E_COPY_OF_APPROVER_TOKEN" not in child


# ----------------------------------------------------------------------------- token_file


CAROL = "carol-token-from-a-file-0123456789"
FILEBOT = "filebot-agent-token-from-a-file-987"


def test_token_files_authenticate_an_approver_and_an_agent(procs):
    conf = procs.tmp_path / "conf"  # relative token_file paths are relative to the config's folder
    conf.mkdir()
    (conf / "carol.token").write_text(f"  {CAROL}\n\n")  # surrounding whitespace is trimmed
    (conf / "filebot.token").write_text(f"{FILEBOT}\n")
    cfg = conf / "airlock.toml"
    cfg.write_text(stdio_upstream("test") + APPROVER + (
        '[[approver]]\nname = "carol"\ntoken_file = "carol.token"\n'
        '[[agent]]\nname = "filebot"\ntoken_file = "filebot.token"\n'))
    gw = start_gateway(procs, config=cfg)

    r = gw.api("GET", "/api/pending", token=CAROL)
    assert r.status_code == 200 and r.json() == {"pending": []}, r.text
    assert gw.api("GET", "/api/me", token=CAROL).json()["approver"] == "carol"
    assert gw.api("GET", "/api/pending", token=FILEBOT).status_code == 403  # an agent's token
    assert gw.api("GET", "/api/pending", token=CAROL[:-1]).status_code == 401

    with rm.client() as c:
        assert rm.post(c, gw.mcp, rm.init_body()).status_code == 401
        assert rm.post(c, gw.mcp, rm.init_body(), bearer(CAROL)).status_code == 401  # approvers are not agents
        r = rm.post(c, gw.mcp, rm.init_body(), bearer(FILEBOT))
        assert r.status_code == 200 and "result" in rm.answer(r, 1), r.text
    assert text_of(call(gw.mcp, "echo", {"text": "by file"}, bearer(FILEBOT))["result"]) == "by file"
    [row] = gw.audit_rows(tool="echo")
    assert (row["agent"], row["session"]) == ("filebot", "agent:filebot")


def test_a_missing_token_file_stops_start_up_naming_the_entry_and_the_file(tmp_path):
    cfg = tmp_path / "missing.toml"
    cfg.write_text(stdio_upstream("test") + '\n[[approver]]\nname = "dave"\ntoken_file = "nope/dave.token"\n')
    done = run_cli("serve", "--config", cfg, "--listen", f"127.0.0.1:{free_port()}",
                   "--audit", tmp_path / "a.db", timeout=20)
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert "listening" not in done.stdout
    [line] = [l for l in done.stderr.splitlines() if l.startswith("airlock: ")]
    assert f"{cfg}:" in line  # file:line:col, as every config error
    assert "approver `dave`" in line and "token_file" in line and str(tmp_path / "nope" / "dave.token") in line, line
    agent_cfg = tmp_path / "missing-agent.toml"
    agent_cfg.write_text(stdio_upstream("test") + '\n[[agent]]\nname = "eve"\ntoken_file = "eve.token"\n')
    done = run_cli("serve", "--config", agent_cfg, "--listen", f"127.0.0.1:{free_port()}",
                   "--audit", tmp_path / "b.db", timeout=20)
    assert done.returncode == 1 and "agent `eve`" in done.stderr and "eve.token" in done.stderr, done.stderr


def test_a_bad_upstream_url_stops_start_up_naming_it(tmp_path):
    """Caught at start-up, not on the first forwarded request."""
    for url, why in (("ftp://example.test/mcp", "must start with http:// or https://"),
                     ("http://exa mple/mcp", "is not a valid URL")):
        done = run_cli("serve", "--url", url, "--listen", "127.0.0.1:0", "--audit", tmp_path / "u.db", timeout=20)
        assert done.returncode == 1 and f"--url `{url}` {why}" in done.stderr, done.stderr
        cfg = tmp_path / "bad-url.toml"
        cfg.write_text(f'[[upstream]]\nname = "remote"\nurl = "{url}"\n')
        done = run_cli("serve", "--config", cfg, "--listen", "127.0.0.1:0", "--audit", tmp_path / "u.db", timeout=20)
        assert done.returncode == 1 and f"{cfg}:" in done.stderr and f"url `{url}` {why}" in done.stderr, done.stderr


def test_an_unknown_upstream_filter_stops_start_up_naming_it(tmp_path):
    cfg = tmp_path / "one.toml"
    cfg.write_text(stdio_upstream("test") + APPROVER)
    for mode in ("serve", "stdio"):
        done = run_cli(mode, "--config", cfg, "--upstream", "nope", "--listen", "127.0.0.1:0",
                       "--audit", tmp_path / "x.db", timeout=20, env={"AIRLOCK_TEST_ALICE": ALICE})
        assert done.returncode == 1, (mode, done.stdout, done.stderr)
        assert f"--upstream nope: no [[upstream]] with that name in {cfg}" in done.stderr, done.stderr


# ----------------------------------------------------------------------------- audit rows


OUTCOMES_POLICY = {
    "version": "1",
    "default": "deny",
    "hide": ["secret_*"],
    "rules": {"echo": {"action": "allow", "reason": "unused by rate limits", "rate_limit": {"max": 2, "window": 60}}},
}


def test_hidden_default_denied_and_rate_limited_calls_are_audited(procs):
    gw = start_gateway(procs, OUTCOMES_POLICY)
    hidden = call(gw.mcp, "secret_tool")
    assert hidden["error"]["code"] == -32602, hidden
    default_denied = call(gw.mcp, "add", {"a": 1, "b": 2})
    assert default_denied["error"]["code"] == -32602, default_denied
    for i in range(2):
        assert text_of(call(gw.mcp, "echo", {"text": f"e{i}"})["result"]) == f"e{i}"
    limited = call(gw.mcp, "echo", {"text": "e2"})["result"]
    assert limited["isError"] is True and limited["_meta"]["airlock.decision"] == "rate_limited", limited

    rows = gw.audit_rows()
    assert [(r["decision"], r["tool"]) for r in rows] == [
        ("hidden", "secret_tool"), ("denied", "add"), ("allowed", "echo"), ("allowed", "echo"),
        ("rate_limited", "echo")]
    hid, den, _, _, lim = rows
    assert hid["rule"] == "hide" and hid["pending_id"] is None
    assert den["rule"] == "default" and den["reason"] == "no rule allows this tool (policy default: deny)"
    assert den["arguments"] == {"a": 1, "b": 2}
    assert lim["rule"] == "echo" and lim["arguments"] == {"text": "e2"}
    assert lim["reason"] == "2 calls per 60 s per session (a burst of 2, then one every 30 s)"
    for r in rows:
        assert (r["agent"], r["session"], r["upstream"]) == ("raw-test/1.0", "raw-test/1.0@127.0.0.1", "test"), r
    # the decision filter finds each of them
    assert [r["tool"] for r in gw.audit_rows(decision="hidden")] == ["secret_tool"]
    assert [r["seq"] for r in gw.audit_rows(decision="rate_limited")] == [lim["seq"]]
    m = gw.metrics()
    assert m['airlock_calls_total{outcome="hidden"}'] == 1 and m['airlock_calls_total{outcome="rate_limited"}'] == 1


def test_audit_filters_by_agent_and_until(procs):
    cfg = procs.tmp_path / "two-agents.toml"
    (procs.tmp_path / "filebot.token").write_text(FILEBOT)
    cfg.write_text(stdio_upstream("test") + APPROVER + (
        '[[agent]]\nname = "claude-desktop"\ntoken_env = "AIRLOCK_TEST_AGENT"\n'
        '[[agent]]\nname = "filebot"\ntoken_file = "filebot.token"\n'))
    gw = start_gateway(procs, config=cfg)
    for who, text in ((AGENT, "a1"), (FILEBOT, "b1"), (AGENT, "a2")):
        assert text_of(call(gw.mcp, "echo", {"text": text}, bearer(who))["result"]) == text
        time.sleep(0.05)  # distinct `at` milliseconds

    def texts(**filters) -> list[str]:  # newest first, as the API answers
        r = gw.api("GET", "/api/audit", params=filters)
        assert r.status_code == 200, r.text
        return [e["arguments"]["text"] for e in r.json()["entries"]]

    assert texts() == ["a2", "b1", "a1"]
    assert texts(agent="claude-desktop") == ["a2", "a1"]
    assert texts(agent="filebot") == ["b1"]
    assert texts(agent="Filebot") == [] and texts(agent="file") == []  # exact match
    assert texts(agent="file*") == ["b1"] and texts(agent="*e-d*") == ["a2", "a1"]  # globs
    assert texts(agent="fileb?t") == ["b1"] and texts(agent="File*") == []  # case-sensitive
    export = gw.api("GET", "/api/audit/export", params={"format": "jsonl", "agent": "claude-*"})
    assert [json.loads(line)["arguments"]["text"] for line in export.text.splitlines()] == ["a1", "a2"]
    a1, b1, a2 = gw.audit_rows()
    assert a1["at"] < b1["at"] < a2["at"], (a1["at"], b1["at"], a2["at"])
    assert texts(until=b1["at"]) == ["a1"]  # exclusive: b1 itself and later rows are left out
    assert texts(until=a2["at"]) == ["b1", "a1"]
    assert texts(since=b1["at"], until=a2["at"]) == ["b1"]
    assert texts(until=b1["at"], agent="filebot") == []
    # any offset: the same instant as b1, written at +02:00
    at = datetime.fromisoformat(b1["at"].replace("Z", "+00:00")).astimezone(timezone(timedelta(hours=2)))
    assert texts(until=at.isoformat(timespec="milliseconds")) == ["a1"]
    assert texts(until="2000-01-01T00:00:00Z") == []
    bad = gw.api("GET", "/api/audit", params={"until": "tomorrow"})
    assert bad.status_code == 400 and "until" in bad.json()["error"]["message"], bad.text


# ----------------------------------------------------------------------------- policy.reloaded


def test_policy_reloaded_event_names_the_upstream_and_an_invalid_edit_only_reports_failure(procs):
    other, live = procs.tmp_path / "other-policy.json", procs.tmp_path / "live-policy.json"
    replace_file(other, ALLOW_ECHO)
    replace_file(live, ALLOW_ECHO)
    gw = serve(procs, "reload", stdio_upstream("other", policy=other) + stdio_upstream("test", policy=live))
    ws = WebSocket(gw.port, bearer(ALICE))
    assert ws.status == 101
    snapshot = ws.recv()
    assert snapshot["type"] == "snapshot", snapshot

    # An invalid edit: a policy.reload_failed saying why (no policy.reloaded); the old policy still decides.
    replace_file(live, '{"version": "1", "rules": {"echo": {"action": "deny"}')
    failed, seen = ws.recv_until(lambda e: e["type"].startswith("policy."), timeout=5)
    assert failed["type"] == "policy.reload_failed" and seen == [failed], seen
    assert failed["upstream"] == "test" and failed["error"].startswith(f"{live}:1:"), failed
    assert text_of(call(gw.mcp, "echo", {"text": "still allowed"})["result"]) == "still allowed"

    # A valid edit: one event, naming the upstream whose file changed.
    replace_file(live, DENY_ECHO)
    event, seen = ws.recv_until(lambda e: e["type"].startswith("policy."), timeout=5)
    assert event["type"] == "policy.reloaded" and seen == [event], seen
    assert event["upstream"] == "test" and event["at"].endswith("Z"), event
    assert event["seq"] > failed["seq"] > snapshot["seq"]
    denied = call(gw.mcp, "echo", {"text": "now denied"})["result"]
    assert denied["isError"] is True and "echo switched off" in text_of(denied), denied
    assert text_of(call(f"{gw.base}/mcp/other", "echo", {"text": "untouched"})["result"]) == "untouched"
    ws.close()


def test_healthz_and_metrics_show_a_policy_file_that_is_not_in_force(procs):
    """A refused edit or an unreadable file keeps the previous policy running (healthy), but
    /healthz names the upstream whose file is stale — without quoting the file, as it needs no
    login — and `airlock_policy_stale` is 1 for it."""
    other, live = procs.tmp_path / "fine-policy.json", procs.tmp_path / "stale-policy.json"
    replace_file(other, ALLOW_ECHO)
    replace_file(live, ALLOW_ECHO)
    gw = serve(procs, "stale", stdio_upstream("other", policy=other) + stdio_upstream("test", policy=live))

    def health() -> dict:
        r = gw.http.get("/healthz")
        assert r.status_code == 200 and r.json()["status"] == "ok", r.text
        return r.json()["policies"]

    def stale() -> dict:
        return {k: v for k, v in gw.metrics().items() if k.startswith("airlock_policy_stale")}

    assert health() == {"other": "ok", "test": "ok"}
    assert stale() == {'airlock_policy_stale{upstream="other"}': 0, 'airlock_policy_stale{upstream="test"}': 0}

    replace_file(live, '{"version": "1", "rules": {"secret_rule_name": {"action": "nope"}}}')
    assert rm.wait_until(lambda: health()["test"] != "ok", 5)
    assert health()["test"].startswith("stale: the last edit was refused") and health()["other"] == "ok"
    assert "secret_rule_name" not in gw.http.get("/healthz").text
    assert stale()['airlock_policy_stale{upstream="test"}'] == 1
    # Approvers see it on connecting too (snapshot) and in /api/status.
    ws = WebSocket(gw.port, bearer(ALICE))
    assert ws.recv()["policy_problems"] == {"test": "refused"}
    ws.close()
    assert gw.api("GET", "/api/status").json()["policy_problems"] == {"test": "refused"}

    replace_file(live, DENY_ECHO)
    assert rm.wait_until(lambda: health()["test"] == "ok", 5)
    assert stale()['airlock_policy_stale{upstream="test"}'] == 0
    assert gw.api("GET", "/api/status").json()["policy_problems"] == {}

    live.write_bytes(json.dumps(DENY_ECHO).encode("utf-16"))  # another encoding: a refused edit, not an unreadable file
    assert rm.wait_until(lambda: health()["test"] != "ok", 5)
    assert health()["test"].startswith("stale: the last edit was refused"), health()
    replace_file(live, DENY_ECHO)
    assert rm.wait_until(lambda: health()["test"] == "ok", 5)

    live.unlink()  # gone for good (not an editor's rename): reported after a 2 s grace
    assert rm.wait_until(lambda: health()["test"].startswith("stale: the file cannot be read"), 6), health()
    replace_file(live, DENY_ECHO)  # back, unchanged: in force again
    assert rm.wait_until(lambda: health()["test"] == "ok", 5)
