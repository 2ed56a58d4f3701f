"""Real third-party MCP clients through Airlock: the era matrix.

agent  {Python `mcp` 2.x Client legacy/auto/pinned 2026-07-28, TS sdk 1.x, TS client 2.x
        legacy/auto/pinned 2026-07-28}
x agent transport {Streamable HTTP (`airlock serve`), stdio (`airlock stdio`)}
x upstream {testserver stdio (--era both), testserver HTTP (--era both), server-everything stdio,
            server-everything HTTP (handshake era only), Node stateless server HTTP (2026-07-28 only)}

Every combination runs the same script twice: directly against the upstream (the agent spawns a
stdio upstream itself, or connects to an HTTP upstream's URL) and through Airlock. A combination that
does not work directly must fail through Airlock too; for the ones that work, every check below
compares the Airlock run with the direct run. All client runs happen once, concurrently, in the
module fixture `matrix`; each test then checks one behaviour on the recorded reports.
"""
from __future__ import annotations

import json
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import pytest

from harness import (
    Processes,
    airlock_stdio_cmd,
    run_driver,
    run_pydriver,
    text_of,
    upstream_everything,
    upstream_testserver,
)

APPROVAL_NOTE = "[Airlock: a human must approve each call to this tool; the call waits for their decision.]"
UNKNOWN = "no_such_tool_anywhere"
WORKERS = 4

pytestmark = pytest.mark.timeout(400)  # the first test also runs the whole matrix (module fixture)

# --------------------------------------------------------------------------- agents


@dataclass(frozen=True)
class Agent:
    driver: str  # py | sdk1 | client2
    era: str | None  # legacy | auto | 2026-07-28 (None for sdk1)

    @property
    def handshake_only(self) -> bool:
        return self.era in (None, "legacy")

    @property
    def pinned_modern(self) -> bool:
        return self.era == "2026-07-28"


AGENTS = {
    "py-legacy": Agent("py", "legacy"),
    "py-auto": Agent("py", "auto"),
    "py-2026": Agent("py", "2026-07-28"),
    "sdk1": Agent("sdk1", None),
    "client2-legacy": Agent("client2", "legacy"),
    "client2-auto": Agent("client2", "auto"),
    "client2-2026": Agent("client2", "2026-07-28"),
}

# --------------------------------------------------------------------------- upstreams and policies


def allow(**extra):
    return {"action": "allow", **extra}


RATE_2 = {"max": 2, "window": 60}


@dataclass(frozen=True)
class Family:
    """What an upstream's tools are used for in the script, and the policy in front of it."""

    allowed: tuple  # (tool, args)
    denied: tuple  # (tool, args, reason)
    hidden: tuple  # (tool, args)
    rate: tuple  # (tool, args); its rule allows 2 calls per minute
    approval: str  # listed, with the approval note
    progress: tuple  # (tool, args, steps)
    interactions: tuple  # ((tool, args, counter), ...) counter = sampling | elicitation
    policy: dict = field(hash=False)

    @property
    def listed(self) -> set[str]:
        """The tools an agent sees through Airlock (default deny: allowed + approval tools)."""
        return {n for n, r in self.policy["rules"].items() if r["action"] != "deny"}


TESTSERVER = Family(
    allowed=("echo", {"text": "héllo wörld"}),
    denied=("delete_record", {"id": "7"}, "records are kept forever"),
    hidden=("secret_tool", {}),
    rate=("add", {"a": 2, "b": 3}),
    approval="large",
    progress=("slow", {"steps": 4, "delay_ms": 50}, 4),
    interactions=(("sample", {"prompt": "hi"}, "sampling"), ("elicit", {"message": "ok?"}, "elicitation")),
    policy={
        "version": "1",
        "default": "deny",
        "hide": ["secret_tool"],
        "rules": {
            "echo": allow(),
            "add": allow(rate_limit=RATE_2),
            "slow": allow(),
            "sample": allow(),
            "elicit": allow(),
            "delete_record": {"action": "deny", "reason": "records are kept forever"},
            "large": {"action": "require_approval", "reason": "big output"},
        },
    },
)

EVERYTHING = Family(
    allowed=("echo", {"message": "héllo wörld"}),
    denied=("get-env", {}, "the environment is private"),
    hidden=("toggle-simulated-logging", {}),
    rate=("get-sum", {"a": 2, "b": 3}),
    approval="gzip-file-as-resource",
    progress=("trigger-long-running-operation", {"duration": 0.4, "steps": 4}, 4),
    interactions=(
        ("trigger-sampling-request", {"prompt": "hi"}, "sampling"),
        ("trigger-elicitation-request", {}, "elicitation"),
    ),
    policy={
        "version": "1",
        "default": "deny",
        "hide": ["toggle-simulated-logging"],
        "rules": {
            "echo": allow(),
            "get-sum": allow(rate_limit=RATE_2),
            "trigger-long-running-operation": allow(),
            "trigger-sampling-request": allow(),
            "trigger-elicitation-request": allow(),
            "get-env": {"action": "deny", "reason": "the environment is private"},
            "gzip-file-as-resource": {"action": "require_approval", "reason": "fetches URLs"},
        },
    },
)

# The Node stateless server has six tools: echo doubles as the allowed and the rate-limited tool
# (the allowed call is the rule's first call).
STATELESS = Family(
    allowed=("echo", {"text": "héllo wörld"}),
    denied=("delete_record", {"id": "7"}, "records are kept forever"),
    hidden=("fail", {"message": "boom"}),
    rate=("echo", {"text": "héllo wörld"}),
    approval="ask",
    progress=("slow", {"steps": 4, "ms": 50}, 4),
    interactions=(("sample", {"prompt": "hi"}, "sampling"),),
    policy={
        "version": "1",
        "default": "deny",
        "hide": ["fail"],
        "rules": {
            "echo": allow(rate_limit=RATE_2),
            "slow": allow(),
            "sample": allow(),
            "delete_record": {"action": "deny", "reason": "records are kept forever"},
            "ask": {"action": "require_approval", "reason": "asks the user"},
        },
    },
)


@dataclass(frozen=True)
class Upstream:
    family: Family
    transport: str  # stdio | http
    eras: str  # both | handshake | stateless


UPSTREAMS = {
    "testserver-stdio": Upstream(TESTSERVER, "stdio", "both"),
    "testserver-http": Upstream(TESTSERVER, "http", "both"),
    "everything-stdio": Upstream(EVERYTHING, "stdio", "handshake"),
    "everything-http": Upstream(EVERYTHING, "http", "handshake"),
    "stateless-http": Upstream(STATELESS, "http", "stateless"),
}


def works_directly(agent: Agent, upstream: Upstream) -> bool:
    """The era table: a handshake-only agent needs a handshake-era upstream, a pinned 2026-07-28
    agent a stateless-era one; auto agents and dual-era upstreams work with everything."""
    if upstream.eras == "handshake":
        return not agent.pinned_modern
    if upstream.eras == "stateless":
        return not agent.handshake_only
    return True


# --------------------------------------------------------------------------- the script


def script_for(family: Family, transport: str, working: bool = True) -> list[dict]:
    if not working:  # only needs to show that it fails, and how
        return [{"op": "list", "label": "list", "timeoutMs": 8000}, {"op": "close", "label": "close"}]

    def call(label, tool, args, **kw):
        return {"op": "call", "label": label, "name": tool, "args": args, "timeoutMs": 20000, **kw}

    steps = [{"op": "list", "label": "list", "timeoutMs": 20000}]
    steps.append(call("allowed", *family.allowed))
    steps.append(call("denied", *family.denied[:2]))
    steps.append(call("hidden", *family.hidden))
    steps.append(call("unknown", UNKNOWN, {}))
    n_rate = 2 if family.rate[0] == family.allowed[0] else 3
    for i in range(n_rate):
        steps.append(call(f"rate{i + 1}", *family.rate))
    tool, args, _ = family.progress
    steps.append(call("progress", tool, args, progress=True))
    for tool, args, counter in family.interactions:
        steps.append(call(counter, tool, args))
    if transport == "http":
        steps.append({"op": "terminate", "label": "terminate"})
    steps.append({"op": "close", "label": "close"})
    return steps


def run_agent(agent_key: str, script: list[dict], *, url=None, stdio=None) -> dict:
    agent = AGENTS[agent_key]
    started = time.monotonic()
    if agent.driver == "py":
        report = run_pydriver(agent.era, script, url=url, stdio=stdio, name=agent_key, timeout=150)
    else:
        extra = ["--name", agent_key, "--timeout-ms", "20000", "--probe-timeout-ms", "8000"] if agent.driver == "client2" \
            else ["--name", agent_key, "--timeout-ms", "20000"]
        report = run_driver(agent.driver, script, url=url, stdio=stdio, era=agent.era, extra=extra, timeout=150)
    report["_seconds"] = time.monotonic() - started
    return report


# --------------------------------------------------------------------------- running the matrix

COMBOS = [(a, t, u) for u in UPSTREAMS for a in AGENTS for t in ("http", "stdio")]
WORKING = [(a, t, u) for (a, t, u) in COMBOS if works_directly(AGENTS[a], UPSTREAMS[u])]


def ids(combos):
    return ["-".join(c) for c in combos]


class Matrix:
    def __init__(self):
        self.direct: dict[tuple[str, str], dict] = {}
        self.through: dict[tuple[str, str, str], dict] = {}
        self.seconds = 0.0


def run_matrix(tmp, procs: Processes, upstreams=None, agents=None) -> Matrix:
    """Starts the upstreams and one `airlock serve` per upstream, then runs every agent directly,
    through `airlock serve` (HTTP) and through `airlock stdio`, WORKERS runs at a time."""
    upstreams = upstreams or list(UPSTREAMS)
    agents = agents or list(AGENTS)
    started = time.monotonic()
    native = {}
    if "testserver-stdio" in upstreams:
        native["testserver-stdio"] = {"stdio": upstream_testserver("both")}
    if "testserver-http" in upstreams:
        native["testserver-http"] = {"url": procs.testserver_http("both")[1]}
    if "everything-stdio" in upstreams:
        native["everything-stdio"] = {"stdio": upstream_everything()}
    if "everything-http" in upstreams:
        native["everything-http"] = {"url": procs.everything_http()[1]}
    if "stateless-http" in upstreams:
        native["stateless-http"] = {"url": procs.stateless_node_http()[1]}

    def upstream_args(u):
        n = native[u]
        return {"upstream": n["stdio"]} if "stdio" in n else {"url": n["url"]}

    gateways = {u: procs.airlock(policy=UPSTREAMS[u].family.policy, **upstream_args(u)) for u in upstreams}
    jobs = {}
    m = Matrix()
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        for u in upstreams:
            fam = UPSTREAMS[u].family
            for a in agents:
                n = native[u]
                ok = works_directly(AGENTS[a], UPSTREAMS[u])
                direct_transport = "stdio" if "stdio" in n else "http"
                jobs[("direct", a, u)] = pool.submit(run_agent, a, script_for(fam, direct_transport, ok), **n)
                jobs[("http", a, u)] = pool.submit(run_agent, a, script_for(fam, "http", ok), url=gateways[u].mcp)
                cmd = airlock_stdio_cmd(tmp, policy=fam.policy, **upstream_args(u))
                jobs[("stdio", a, u)] = pool.submit(run_agent, a, script_for(fam, "stdio", ok), stdio=cmd)
        for (kind, a, u), fut in jobs.items():
            report = fut.result()
            if kind == "direct":
                m.direct[(a, u)] = report
            else:
                m.through[(a, kind, u)] = report
    m.seconds = time.monotonic() - started
    return m


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("clients")
    procs = Processes(tmp)
    try:
        yield run_matrix(tmp, procs)
    finally:
        procs.stop_all()


def pair(matrix: Matrix, agent: str, transport: str, upstream: str) -> tuple[dict, dict]:
    return matrix.direct[(agent, upstream)], matrix.through[(agent, transport, upstream)]


def step(report: dict, label: str) -> dict:
    for s in report.get("steps", []):
        if s.get("label") == label:
            return s
    raise AssertionError(f"no step {label!r} in report (crash={report.get('crash')}): {report.get('steps')}")


def content(result: dict) -> list:
    """A CallToolResult's content, without the fields that legitimately differ per run."""
    return result.get("content", [])


def normalize(value, tool: str):
    """Replaces a tool name in every string of `value` by a placeholder."""
    if isinstance(value, str):
        return value.replace(tool, "<TOOL>")
    if isinstance(value, list):
        return [normalize(v, tool) for v in value]
    if isinstance(value, dict):
        return {k: normalize(v, tool) for k, v in value.items()}
    return value


def outcome(s: dict, tool: str) -> dict:
    """What the agent saw for a call, comparable across runs: an error's kind/code/message/HTTP
    status, or a result's isError and content."""
    if s["ok"]:
        r = s["result"]
        return normalize({"isError": bool(r.get("isError")), "content": content(r)}, tool)
    e = s["error"]
    return normalize({k: e.get(k) for k in ("kind", "code", "message", "httpStatus")}, tool)


def diag(direct: dict, through: dict) -> str:
    return f"\ndirect: crash={direct.get('crash')} stderr={direct.get('_stderr', '')[-600:]}\n" \
           f"through: crash={through.get('crash')} stderr={through.get('_stderr', '')[-1500:]}"


# --------------------------------------------------------------------------- tests


def usable(report: dict) -> bool:
    """Connected and listed tools (a pinned 2026-07-28 Python client connects without a request,
    so a refusal only shows on the first one)."""
    return "crash" not in report and step(report, "list")["ok"]


def failure(report: dict) -> tuple[str, str]:
    """(stage, kind) of an unusable run: where it failed, and whether by a peer's answer, a local
    refusal or a timeout."""
    if "crash" in report:
        return "connect", report["crash"].get("kind")
    return "list", step(report, "list")["error"]["kind"]


@pytest.mark.parametrize("agent,transport,upstream", COMBOS, ids=ids(COMBOS))
def test_combination_works_through_airlock_exactly_when_it_works_directly(matrix, agent, transport, upstream):
    direct, through = pair(matrix, agent, transport, upstream)
    expected = works_directly(AGENTS[agent], UPSTREAMS[upstream])
    assert usable(direct) == expected, f"the direct run disagrees with the era table: {direct.get('crash')} {direct['steps']}"
    assert usable(through) == expected, diag(direct, through)
    if expected:
        assert through["protocolVersion"] == direct["protocolVersion"], diag(direct, through)
        assert through["era"] == direct["era"]
        assert (through.get("serverInfo") or {}).get("name") == (direct.get("serverInfo") or {}).get("name")


NOT_WORKING = [c for c in COMBOS if c not in WORKING]
# Over `airlock stdio`, an HTTP upstream's JSON-RPC error with `"id": null` (server-everything's
# HTTP 400 "Server not initialized") must come back with the request's id, or the agent waits.


@pytest.mark.parametrize("agent,transport,upstream", NOT_WORKING, ids=ids(NOT_WORKING))
def test_unworkable_combination_fails_the_same_way_as_direct(matrix, agent, transport, upstream):
    direct, through = pair(matrix, agent, transport, upstream)
    assert failure(through) == failure(direct), diag(direct, through)


@pytest.mark.parametrize("agent,transport,upstream", WORKING, ids=ids(WORKING))
def test_tools_list_drops_hidden_and_denied_tools_and_keeps_approval_tools(matrix, agent, transport, upstream):
    direct, through = pair(matrix, agent, transport, upstream)
    fam = UPSTREAMS[upstream].family
    listed_direct = set(step(direct, "list")["tools"])
    assert fam.listed <= listed_direct, "the policy names tools the upstream does not list"
    listed = step(through, "list")
    assert set(listed["tools"]) == fam.listed, diag(direct, through)
    assert fam.hidden[0] not in listed["tools"]
    assert listed["descriptions"][fam.approval].endswith(APPROVAL_NOTE)


@pytest.mark.parametrize("agent,transport,upstream", WORKING, ids=ids(WORKING))
def test_allowed_call_returns_the_upstream_result(matrix, agent, transport, upstream):
    direct, through = pair(matrix, agent, transport, upstream)
    d, t = step(direct, "allowed"), step(through, "allowed")
    assert d["ok"] and not d["result"].get("isError"), d
    assert outcome(t, "") == outcome(d, ""), diag(direct, through)


@pytest.mark.parametrize("agent,transport,upstream", WORKING, ids=ids(WORKING))
def test_denied_call_is_a_tool_error_naming_rule_and_reason(matrix, agent, transport, upstream):
    _, through = pair(matrix, agent, transport, upstream)
    tool, _, reason = UPSTREAMS[upstream].family.denied
    t = step(through, "denied")
    assert t["ok"], t
    assert t["result"]["isError"] is True
    text = text_of(t["result"])
    assert reason in text and tool in text, text
    assert t["result"]["_meta"]["airlock.decision"] == "denied"
    assert t["result"]["_meta"]["airlock.reason"] == reason


@pytest.mark.parametrize("agent,transport,upstream", WORKING, ids=ids(WORKING))
def test_hidden_tool_answers_like_an_unknown_tool_directly(matrix, agent, transport, upstream):
    direct, through = pair(matrix, agent, transport, upstream)
    hidden = UPSTREAMS[upstream].family.hidden[0]
    expected = outcome(step(direct, "unknown"), UNKNOWN)
    got = outcome(step(through, "hidden"), hidden)
    assert got == expected, diag(direct, through)
    assert expected.get("isError", True), "an unknown tool must not succeed directly"


@pytest.mark.parametrize("agent,transport,upstream", WORKING, ids=ids(WORKING))
def test_third_call_of_a_max_2_rule_is_rate_limited(matrix, agent, transport, upstream):
    direct, through = pair(matrix, agent, transport, upstream)
    fam = UPSTREAMS[upstream].family
    labels = [s["label"] for s in through["steps"] if s.get("label", "").startswith("rate")]
    *under, last = labels
    for label in under:
        assert outcome(step(through, label), "") == outcome(step(direct, label), ""), diag(direct, through)
    d, t = step(direct, last), step(through, last)
    assert d["ok"] and not d["result"].get("isError"), d
    assert t["ok"] and t["result"]["isError"] is True, t
    assert t["result"]["_meta"]["airlock.decision"] == "rate_limited"
    text = text_of(t["result"])
    assert fam.rate[0] in text and re.search(r"[Rr]etry in \d+ s", text), text


@pytest.mark.parametrize("agent,transport,upstream", WORKING, ids=ids(WORKING))
def test_progress_notifications_reach_the_agent(matrix, agent, transport, upstream):
    """The notifications arrive in order, before the result. The last one or two may be lost by the
    client itself: the upstream sends the last notification right before the result, and the Node
    SDK clients over stdio sometimes drop a notification that arrives in the same read as the
    response (seen directly too, e.g. client2 -> testserver stdio, and server-everything over stdio
    sends its last one after the result). So: at least steps-2 of the steps, as a prefix."""
    direct, through = pair(matrix, agent, transport, upstream)
    d, t = step(direct, "progress"), step(through, "progress")
    assert d["ok"] and t["ok"], diag(direct, through)
    assert outcome(t, "") == outcome(d, "")
    steps = UPSTREAMS[upstream].family.progress[2]
    assert d["progress"] >= steps - 2
    assert t["progress"] >= steps - 2, diag(direct, through)
    got = [e["progress"] for e in t["progressEvents"]]
    assert got == list(range(1, len(got) + 1)), got
    assert all(e.get("total") == steps for e in t["progressEvents"]), t["progressEvents"]


@pytest.mark.parametrize("agent,transport,upstream", WORKING, ids=ids(WORKING))
def test_server_to_client_requests_round_trip(matrix, agent, transport, upstream):
    """Sampling / elicitation: a server->client request in the handshake era, `input_required`
    (retried by the client) in the stateless era."""
    direct, through = pair(matrix, agent, transport, upstream)
    for _, _, counter in UPSTREAMS[upstream].family.interactions:
        d, t = step(direct, counter), step(through, counter)
        assert d["ok"] and not d["result"].get("isError") and d[counter] == 1, d
        assert t[counter] == 1, diag(direct, through)
        assert outcome(t, "") == outcome(d, ""), diag(direct, through)


@pytest.mark.parametrize("agent,transport,upstream", WORKING, ids=ids(WORKING))
def test_session_ends_cleanly(matrix, agent, transport, upstream):
    direct, through = pair(matrix, agent, transport, upstream)
    assert step(through, "close")["ok"], diag(direct, through)
    if transport == "http" and AGENTS[agent].driver != "py":
        t = step(through, "terminate")
        assert t["ok"], t
    assert through["_exit"] == 0, diag(direct, through)


# --------------------------------------------------------------------------- tools/list filtering

LIST_POLICY = {
    "version": "1",
    "default": "deny",
    "hide": ["toggle-*", "get-env"],
    "rules": {
        "echo": {"action": "allow"},
        "get-*": {"action": "allow"},
        "trigger-*": {"action": "deny", "reason": "no triggers"},
        "trigger-long-running-operation": {"action": "allow"},
        "gzip-file-as-resource": {"action": "require_approval", "reason": "fetches URLs"},
    },
}
# hidden (a glob, and an exact name that an allowing glob also matches), denied by a glob, and
# denied by default:
LIST_REMOVED = {"toggle-simulated-logging", "toggle-subscriber-updates", "get-env",
                "trigger-elicitation-request", "trigger-sampling-request", "simulate-research-query"}


@pytest.mark.parametrize("capabilities", [True, False], ids=["with-client-capabilities", "without"])
@pytest.mark.parametrize("upstream_transport", ["stdio", "http"])
def test_tools_list_is_server_everythings_real_list_minus_exactly_the_policy_removals(procs, upstream_transport, capabilities):
    if upstream_transport == "stdio":
        direct_target = {"stdio": upstream_everything()}
        gw = procs.airlock(policy=LIST_POLICY, upstream=upstream_everything())
    else:
        _, url = procs.everything_http()
        direct_target = {"url": url}
        gw = procs.airlock(policy=LIST_POLICY, url=url)
    script = [{"op": "list", "full": True}, {"op": "close"}]
    extra = [] if capabilities else ["--no-capabilities"]
    with ThreadPoolExecutor(2) as pool:
        d = pool.submit(run_driver, "sdk1", script, extra=extra, **direct_target)
        t = pool.submit(run_driver, "sdk1", script, extra=extra, url=gw.mcp)
        direct, through = d.result(), t.result()
    direct_tools = direct["steps"][0]["result"]["tools"]
    through_tools = through["steps"][0]["result"]["tools"]
    names = [x["name"] for x in direct_tools]
    removed = LIST_REMOVED & set(names)
    assert removed >= LIST_REMOVED - {"trigger-elicitation-request", "trigger-sampling-request"}, names
    assert len(direct_tools) == (16 if capabilities else 13), names

    expected = []
    for tool in direct_tools:
        if tool["name"] in removed:
            continue
        if tool["name"] == "gzip-file-as-resource":
            tool = {**tool, "description": f"{tool['description']}\n\n{APPROVAL_NOTE}"}
        expected.append(tool)
    assert through_tools == expected


# --------------------------------------------------------------------------- regressions
# Gateway bugs found by the matrix, each pinned by a test.

STATELESS_ENVELOPE = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1.0.0"},
}


def test_upstream_error_without_id_is_answered_with_the_request_id_over_stdio(procs, tmp_path):
    """server-everything answers a sessionless POST with HTTP 400 and `"id": null`. Over HTTP the
    agent sees the 400 at once; over `airlock stdio` the gateway must put the request's id on it,
    or the agent waits for its timeout (dual-era clients then fall back only after their probe
    timeout; a pinned 2026-07-28 client hangs on every request)."""
    _, url = procs.everything_http()
    p = procs.start(airlock_stdio_cmd(tmp_path, url=url), stdin=subprocess.PIPE)
    request = {"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {"_meta": STATELESS_ENVELOPE}}
    p.popen.stdin.write((json.dumps(request) + "\n").encode())
    p.popen.stdin.flush()
    answer = json.loads(p.wait_for_line("{", timeout=10))
    assert "error" in answer, answer
    assert answer["id"] == 1, answer


def test_input_required_retry_is_not_a_second_call_against_the_rate_limit(procs):
    """A 2026-07-28 `input_required` round trip is one logical call: the client's retry (same
    name and arguments, with `inputResponses` + `requestState`) must not use up another slot."""
    _, url = procs.stateless_node_http()
    gw = procs.airlock(policy={"version": "1", "default": "allow",
                               "rules": {"sample": {"action": "allow", "rate_limit": {"max": 1, "window": 60}}}}, url=url)
    report = run_driver("client2", [{"op": "call", "name": "sample", "args": {"prompt": "hi"}}, {"op": "close"}],
                        url=gw.mcp, era="2026-07-28")
    result = report["steps"][0]["result"]
    assert text_of(result) == "sampled: sampled-by-client2", result


@pytest.mark.parametrize("tool", ["nope", "fail"], ids=["unknown-tool", "hidden-tool"])
def test_stateless_error_answer_keeps_the_http_upstreams_status(procs, tool):
    _, url = procs.stateless_node_http()
    gw = procs.airlock(policy={"version": "1", "default": "allow", "hide": ["fail"]}, url=url)

    def post(u, name):
        body = {"jsonrpc": "2.0", "id": 5, "method": "tools/call",
                "params": {"name": name, "arguments": {}, "_meta": STATELESS_ENVELOPE}}
        headers = {"content-type": "application/json", "accept": "application/json, text/event-stream",
                   "mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call", "mcp-name": name}
        return httpx.post(u, content=json.dumps(body), headers=headers, timeout=10)

    direct = post(url, "nope")
    through = post(gw.mcp, tool)
    assert direct.json()["error"]["code"] == -32602
    assert through.json()["error"] == {**direct.json()["error"], "message": direct.json()["error"]["message"].replace("nope", tool)}
    assert through.status_code == direct.status_code, (direct.status_code, through.status_code)
