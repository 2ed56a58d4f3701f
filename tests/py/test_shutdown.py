"""A gateway stops on SIGTERM and SIGINT whatever happened to its output.

`airlock serve … 2>&1 | head -5` leaves the gateway with a closed pipe for
stderr (or stdout) once `head` has its lines. Every later log line then fails
to write; that failure must never take the shutdown down with it (it used to:
the signal task's "shutting down" line panicked on the closed stderr before
the task cancelled anything, and the gateway ran on until SIGKILL).
"""
import signal
import subprocess

import httpx
import pytest

from harness import AIRLOCK_BIN, REPO, upstream_testserver, write_json
from rawmcp import call_body, client, post, stateless_headers, stateless_meta

POLICY = {"version": "1", "default": "deny",
          "rules": {"echo": {"action": "allow"}, "crash": {"action": "deny", "reason": "no crashing"}}}


def start_with_a_closed(stream: str, tmp_path):
    """Starts `airlock serve`, reads the first line of `stream` ("stdout" or
    "stderr"), then closes the read end of that pipe, as `head` does."""
    policy = write_json(tmp_path / "policy.json", POLICY)
    cmd = [AIRLOCK_BIN, "serve", "--listen", "127.0.0.1:0", "--audit", str(tmp_path / "audit.db"),
           "--policy", str(policy), "--", *upstream_testserver()]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            cwd=str(REPO), start_new_session=True)
    first = proc.stdout.readline().decode()
    assert first.startswith("airlock listening on "), first
    port = int(first.rsplit(":", 1)[1])
    if stream == "stderr":
        assert proc.stderr.readline(), "the gateway logged nothing at start-up"
        proc.stderr.close()
    else:
        proc.stdout.close()
    return proc, f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("closed", ["stderr", "stdout"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_gateway_stops_on_signal_after_its_output_pipe_closed(closed, sig, tmp_path):
    proc, base = start_with_a_closed(closed, tmp_path)
    try:
        with client() as c:
            # Requests that log (an allowed and a denied call) still work with nowhere to log to.
            for req_id, tool in [(1, "echo"), (2, "crash")]:
                r = post(c, f"{base}/mcp", call_body(req_id, tool, {"text": "hi"}, meta=stateless_meta()),
                         stateless_headers("tools/call", tool))
                assert r.status_code == 200, r.text
            assert c.get(f"{base}/healthz").status_code == 200
        proc.send_signal(sig)
        try:
            code = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pytest.fail(f"airlock ignored {sig.name} after its {closed} pipe closed")
        assert code == 0, code
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{base}/healthz", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        for stream in (proc.stdout, proc.stderr):
            if not stream.closed:
                stream.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_idle_gateway_stops_on_signal_after_stderr_closed(sig, tmp_path):
    """The issue's reproduction: nothing but the shutdown itself logs after the pipe closed."""
    proc, base = start_with_a_closed("stderr", tmp_path)
    try:
        proc.send_signal(sig)
        try:
            code = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pytest.fail(f"airlock ignored {sig.name} after its stderr pipe closed")
        assert code == 0, code
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        proc.stdout.close()
