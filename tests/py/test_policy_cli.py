"""`airlock check` (exit codes, file:line:col errors, warnings) and policy hot
reload on a running gateway."""
import json
import os
import queue
import re
import subprocess
import threading
import time

import pytest

from harness import airlock_stdio_cmd, upstream_testserver
from rawmcp import (answer, call_body, client, init_body, open_session, post, run_check, session_headers,
                    stateless_meta, stream_messages)


def write(path, text: str):
    path.write_text(text)
    return path


def located_error(done, path) -> tuple[int, int, str]:
    """(line, column, message) of the single `error:` line naming `path`."""
    m = re.search(re.escape(str(path)) + r":(\d+):(\d+): (.*)", done.stderr)
    assert m, f"no file:line:col error for {path} in stderr:\n{done.stderr}\nstdout:\n{done.stdout}"
    return int(m.group(1)), int(m.group(2)), m.group(3)


# ----------------------------------------------------------------------------- airlock check


def test_check_valid_policy_exits_0_and_says_ok(tmp_path):
    p = write(tmp_path / "ok.json", json.dumps({
        "version": "1", "default": "deny", "hide": ["odoo_web_logout"],
        "rules": {"odoo_search_read": {"action": "allow", "rate_limit": {"max": 10, "window": 60}},
                  "odoo_*_delete": {"action": "require_approval", "reason": "destructive",
                                    "approval": {"timeout": 300, "on_timeout": "deny"}}},
    }, indent=2))
    done = run_check(p)
    assert done.returncode == 0, done.stderr
    assert "ok" in done.stdout and str(p) in done.stdout
    assert "warning" not in done.stderr


def test_check_shipped_example_policies_are_valid():
    from harness import REPO
    files = sorted((REPO / "policies").glob("*.json"))
    assert files
    done = run_check(*files)
    assert done.returncode == 0, done.stderr


def test_check_unknown_key_names_it_suggests_the_fix_and_exits_1(tmp_path):
    p = write(tmp_path / "typo.json", '{\n  "version": "1",\n  "rules": {\n    "odoo_unlink": { "acton": "deny" }\n  }\n}\n')
    done = run_check(p)
    assert done.returncode == 1
    line, col, message = located_error(done, p)
    assert message == "unknown key `acton` in rules.odoo_unlink, did you mean `action`?"
    assert line == 4
    assert 22 <= col <= 28  # somewhere on `"acton"`


def test_check_bad_action_value_names_the_key_and_suggests_the_fix(tmp_path):
    p = write(tmp_path / "value.json", '{\n  "version": "1",\n  "rules": {\n    "x": { "action": "alow" }\n  }\n}\n')
    done = run_check(p)
    assert done.returncode == 1
    line, _, message = located_error(done, p)
    assert line == 4
    assert "rules.x.action" in message and "did you mean `allow`?" in message


def test_check_bad_glob_is_an_error_naming_the_rule(tmp_path):
    p = write(tmp_path / "glob.json", '{\n  "version": "1",\n  "rules": {\n    "odoo_[unlink": { "action": "deny" }\n  }\n}\n')
    done = run_check(p)
    assert done.returncode == 1
    line, col, message = located_error(done, p)
    assert (line, col) == (4, 5)
    assert "odoo_[unlink" in message and "glob" in message


def test_check_zero_rate_limit_is_an_error_naming_the_key(tmp_path):
    p = write(tmp_path / "zero.json",
              '{\n  "version": "1",\n  "rules": {\n    "search": { "action": "allow", "rate_limit": {"max": 0, "window": 60} }\n  }\n}\n')
    done = run_check(p)
    assert done.returncode == 1
    line, col, message = located_error(done, p)
    assert (line, col) == (4, 51)  # the `"max"` key
    assert "rules.search.rate_limit.max" in message and "at least 1" in message


def test_check_zero_rate_limit_window_is_an_error(tmp_path):
    p = write(tmp_path / "window.json",
              '{"version": "1", "rules": {"s": {"action": "allow", "rate_limit": {"max": 5, "window": 0}}}}')
    done = run_check(p)
    assert done.returncode == 1
    assert "rules.s.rate_limit.window" in located_error(done, p)[2]


def test_check_unsupported_version_is_an_error(tmp_path):
    p = write(tmp_path / "ver.json", '{\n  "version": "2",\n  "rules": {}\n}\n')
    done = run_check(p)
    assert done.returncode == 1
    line, _, message = located_error(done, p)
    assert line == 2
    assert "version" in message and "2" in message


def test_check_invalid_json_is_an_error_with_its_location(tmp_path):
    p = write(tmp_path / "broken.json", '{\n  "version": "1",\n  "rules": {\n    "x": { "action": "allow" },\n  }\n}\n')
    done = run_check(p)
    assert done.returncode == 1
    line, _, _ = located_error(done, p)
    assert line == 5


def test_check_warns_about_a_rule_that_hide_makes_unreachable(tmp_path):
    p = write(tmp_path / "hidden.json", json.dumps(
        {"version": "1", "hide": ["danger_*"], "rules": {"danger_delete": {"action": "deny"}}}))
    done = run_check(p)
    assert done.returncode == 0
    assert "warning" in done.stderr and "danger_delete" in done.stderr and "never match" in done.stderr
    assert "warning" not in done.stdout


def test_check_warns_about_a_shadowed_glob(tmp_path):
    p = write(tmp_path / "shadow.json", json.dumps(
        {"version": "1", "rules": {"odoo_*": {"action": "allow"}, "odoo_[a-z]*": {"action": "deny"}}}))
    done = run_check(p)
    assert done.returncode == 0
    assert "warning" in done.stderr and "odoo_[a-z]*" in done.stderr and "shadowed" in done.stderr


def test_check_config_with_unknown_key_names_it_with_its_location(tmp_path):
    p = write(tmp_path / "airlock.toml", 'listen = "127.0.0.1:9000"\n\n[[upstream]]\nname = "a"\ncomand = "x"\n')
    done = run_check(p)
    assert done.returncode == 1
    line, _, message = located_error(done, p)
    assert line == 5
    assert "comand" in message


def test_check_config_reports_errors_in_its_policy_files(tmp_path):
    write(tmp_path / "bad-policy.json", '{"version": "1", "rules": {"x": {"acton": "deny"}}}')
    p = write(tmp_path / "airlock.toml", '[[upstream]]\nname = "a"\ncommand = "x"\npolicy = "bad-policy.json"\n')
    done = run_check(p)
    assert done.returncode == 1
    assert "bad-policy.json" in done.stderr and "acton" in done.stderr


def test_check_several_files_exits_1_if_any_is_bad(tmp_path):
    good = write(tmp_path / "good.json", '{"version": "1"}')
    bad = write(tmp_path / "bad.json", '{"version": "1", "defualt": "allow"}')
    done = run_check(good, bad)
    assert done.returncode == 1
    assert str(good) in done.stdout
    assert "defualt" in done.stderr and "did you mean `default`?" in done.stderr


# ----------------------------------------------------------------------------- hot reload


def replace_file(path, value):
    """Writes a file the way editors do (write aside, then rename)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(value if isinstance(value, str) else json.dumps(value))
    os.replace(tmp, path)


ALLOW_ECHO = {"version": "1", "default": "deny", "rules": {"echo": {"action": "allow"}}}
DENY_ECHO = {"version": "1", "default": "deny", "rules": {"echo": {"action": "deny", "reason": "echo switched off"}}}


@pytest.fixture
def reloading(procs, tmp_path):
    policy = tmp_path / "live-policy.json"
    replace_file(policy, ALLOW_ECHO)
    gw = procs.airlock(policy=str(policy), upstream=upstream_testserver())
    with client() as c:
        sid = open_session(c, gw.mcp)
        yield gw, policy, c, sid


def echo_result(gw, c, sid, req_id) -> dict:
    r = post(c, gw.mcp, call_body(req_id, "echo", {"text": "ping"}), session_headers(sid))
    assert r.status_code == 200, r.text
    return answer(r, req_id)["result"]


def test_reload_applies_to_the_next_call_in_an_open_session(reloading):
    gw, policy, c, sid = reloading
    assert echo_result(gw, c, sid, 2).get("isError") is False
    replace_file(policy, DENY_ECHO)
    deadline, n, result = time.monotonic() + 3, 3, None
    while time.monotonic() < deadline:
        result = echo_result(gw, c, sid, n)
        if result.get("isError"):
            break
        n += 1
        time.sleep(0.1)
    assert result and result["isError"] is True, "policy change not applied within 3 s"
    assert "echo switched off" in result["content"][0]["text"]


def test_invalid_reload_keeps_the_old_policy_and_says_why(reloading):
    gw, policy, c, sid = reloading
    replace_file(policy, '{"version": "1", "rules": {"echo": {"action": "deny"}')  # truncated JSON
    said = lambda: "keeping the previous policy" in gw.proc.stderr_text()
    deadline = time.monotonic() + 3
    while not said() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert said(), f"no reload error on stderr:\n{gw.proc.stderr_text()[-2000:]}"
    assert str(policy) in gw.proc.stderr_text()
    assert echo_result(gw, c, sid, 2).get("isError") is False  # still the old allow rule
    # ...and a later valid edit is still picked up.
    replace_file(policy, DENY_ECHO)
    deadline, n = time.monotonic() + 3, 3
    while time.monotonic() < deadline and not echo_result(gw, c, sid, n).get("isError"):
        n += 1
        time.sleep(0.1)
    assert echo_result(gw, c, sid, 99)["isError"] is True


# ----------------------------------------------------------------------------- list_changed on reload

LIST_CHANGED = "notifications/tools/list_changed"
HIDE_ECHO = {"version": "1", "default": "deny", "hide": ["echo"], "rules": {"delete_*": {"action": "allow"}}}


def tool_names(gw, c, sid, req_id) -> list[str]:
    r = post(c, gw.mcp, {"jsonrpc": "2.0", "id": req_id, "method": "tools/list", "params": {}}, session_headers(sid))
    return [t["name"] for t in answer(r, req_id)["result"]["tools"]]


class StreamReader(threading.Thread):
    """Reads a session's standalone GET stream; every SSE message goes to `.messages`."""

    def __init__(self, url: str, sid: str):
        super().__init__(daemon=True)
        self.url, self.sid = url, sid
        self.messages: queue.Queue = queue.Queue()
        self.open = threading.Event()

    def run(self):
        headers = {**session_headers(self.sid), "Accept": "text/event-stream"}
        with client() as c, c.stream("GET", self.url, headers=headers, timeout=30) as r:
            assert r.status_code == 200, r.status_code
            self.open.set()
            for m in stream_messages(r):
                self.messages.put(m)


def next_method(messages: queue.Queue, timeout: float) -> str | None:
    try:
        return messages.get(timeout=timeout).get("method")
    except queue.Empty:
        return None


def test_a_reload_tells_open_sessions_that_the_tool_list_changed(reloading):
    gw, policy, c, sid = reloading
    assert "echo" in tool_names(gw, c, sid, 2)
    stream = StreamReader(gw.mcp, sid)
    stream.start()
    assert stream.open.wait(10), "the GET stream did not open"
    replace_file(policy, HIDE_ECHO)
    assert next_method(stream.messages, 5) == LIST_CHANGED, "no list_changed within 5 s of the reload"
    assert "echo" not in tool_names(gw, c, sid, 3)
    # An invalid edit is not a reload: nothing is announced.
    replace_file(policy, '{"version": "1", "rules": ')
    assert next_method(stream.messages, 2) is None


def test_airlock_stdio_tells_a_handshake_client_that_the_tool_list_changed(procs, tmp_path):
    policy = tmp_path / "stdio-live-policy.json"
    replace_file(policy, ALLOW_ECHO)
    p = procs.start(airlock_stdio_cmd(tmp_path, policy=policy, upstream=upstream_testserver()),
                    stdin=subprocess.PIPE)

    def send(message):
        p.popen.stdin.write((json.dumps(message) + "\n").encode())
        p.popen.stdin.flush()

    def read() -> dict:
        return json.loads(p.wait_for_line("{", timeout=10))

    send(init_body(1))
    assert read()["id"] == 1
    send({"jsonrpc": "2.0", "method": "notifications/initialized"})
    send({"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}})
    assert "echo" in [t["name"] for t in read()["result"]["tools"]]
    replace_file(policy, HIDE_ECHO)
    assert read().get("method") == LIST_CHANGED
    send({"jsonrpc": "2.0", "id": 3, "method": "tools/list", "params": {}})
    assert "echo" not in [t["name"] for t in read()["result"]["tools"]]


def test_airlock_stdio_sends_no_list_changed_to_a_stateless_client(procs, tmp_path):
    """2026-07-28 clients get no notifications outside a request."""
    policy = tmp_path / "stdio-stateless-policy.json"
    replace_file(policy, ALLOW_ECHO)
    p = procs.start(airlock_stdio_cmd(tmp_path, policy=policy, upstream=upstream_testserver()),
                    stdin=subprocess.PIPE)
    request = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": stateless_meta()}}
    p.popen.stdin.write((json.dumps(request) + "\n").encode())
    p.popen.stdin.flush()
    assert json.loads(p.wait_for_line("{", timeout=10))["id"] == 1
    replace_file(policy, HIDE_ECHO)
    with pytest.raises(RuntimeError):
        p.wait_for_line("{", timeout=2.5)  # nothing on stdout after the reload
