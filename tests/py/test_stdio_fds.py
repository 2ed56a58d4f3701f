"""How `airlock stdio` drives its stdin and stdout (src/stdio_agent/fds.rs).

Pipes (Python's `subprocess`) and UNIX socket pairs (Node's `child_process`,
so Claude Desktop) are read and written on the runtime's event loop, which
needs O_NONBLOCK on Airlock's end. That flag lives on the open file
description, so these tests hold Airlock's ends themselves (as a wrapper
shell would) and check: the flag is set while Airlock runs, and cleared once
it is done (and left set if it was set before); and when another standard
descriptor is the same pipe or socket (`2>&1`, or one socket for stdin and
stdout as socat gives), that one is left blocking so no blocking write meets
EAGAIN, and every answer and log line still arrives whole."""
import fcntl
import json
import os
import queue
import socket
import subprocess
import threading
import time

import pytest

from harness import airlock_stdio_cmd
from rawmcp import call_body, init_body, marked_testserver

POLICY = {"version": "1", "default": "allow", "rules": {"delete_record": {"action": "deny", "reason": "kept"}}}


def nonblocking(fd: int) -> bool:
    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK)


class Ends:
    """Airlock's stdin/stdout/stderr, and the test's ends of them."""

    def __init__(self, kind: str):
        if kind == "one socket":
            a, b = socket.socketpair()
            self.socks = (a, b)
            self.their_in = self.their_out = a.fileno()
            self.our_in = self.our_out = b.fileno()
        elif kind == "pipe":
            self.their_in, self.our_in = os.pipe()
            self.our_out, self.their_out = os.pipe()
        else:
            a, b = socket.socketpair()
            c, d = socket.socketpair()
            self.socks = (a, b, c, d)
            self.their_in, self.our_in = a.fileno(), b.fileno()
            self.our_out, self.their_out = c.fileno(), d.fileno()
        self.lines: queue.Queue[bytes] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        buf = b""
        while True:
            try:
                chunk = os.read(self.our_out, 65536)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                self.lines.put(line)

    def send(self, message: dict):
        os.write(self.our_in, json.dumps(message).encode() + b"\n")

    def answer(self, req_id, timeout: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                continue
            if line.startswith(b"{"):
                message = json.loads(line)
                if message.get("id") == req_id and "method" not in message:
                    return message
        raise AssertionError(f"no answer to {req_id} within {timeout}s")

    def end_input(self):
        if hasattr(self, "socks"):
            self.socks[1].shutdown(socket.SHUT_WR)
        else:
            os.close(self.our_in)


def wait_until(pred, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def run_agent(tmp_path, ends: Ends, stderr=None, while_running=lambda: None):
    """Runs `airlock stdio` on `ends` (stderr to a file unless given), makes
    the exchange, calls `while_running()`, ends its input and expects exit 0."""
    cmd = airlock_stdio_cmd(tmp_path, POLICY, marked_testserver(tmp_path / "marker"))
    with open(tmp_path / "stderr.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdin=ends.their_in, stdout=ends.their_out,
                                stderr=log if stderr is None else stderr, close_fds=True)
        try:
            exchange(ends)
            while_running()
            ends.end_input()
            assert proc.wait(timeout=15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


def exchange(ends: Ends):
    ends.send(init_body(1))
    assert "result" in ends.answer(1)
    ends.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
    for i in range(2, 40):
        ends.send(call_body(i, "echo", {"text": f"n{i}"}))
        assert ends.answer(i)["result"]["content"][0]["text"] == f"n{i}"
    ends.send(call_body(99, "delete_record", {"id": "x"}))
    assert ends.answer(99)["result"]["isError"] is True


@pytest.mark.parametrize("kind", ["pipe", "socketpair"])
def test_pipes_and_sockets_run_nonblocking_and_are_put_back_blocking(tmp_path, kind):
    ends = Ends(kind)
    assert not nonblocking(ends.their_in) and not nonblocking(ends.their_out)

    def driven():
        # Airlock's end, which this test shares: on the event loop now.
        assert nonblocking(ends.their_in), "stdin is not driven by the event loop"
        assert nonblocking(ends.their_out), "stdout is not driven by the event loop"

    run_agent(tmp_path, ends, while_running=driven)
    # Whoever still shares these ends gets them back as they were.
    assert not nonblocking(ends.their_in), "stdin left non-blocking after Airlock exited"
    assert not nonblocking(ends.their_out), "stdout left non-blocking after Airlock exited"


def test_stdout_shared_with_stderr_stays_blocking_and_loses_nothing(tmp_path):
    ends = Ends("pipe")

    def checked():
        assert nonblocking(ends.their_in)
        assert not nonblocking(ends.their_out), "stdout is stderr too: it must stay blocking"

    run_agent(tmp_path, ends, stderr=ends.their_out, while_running=checked)  # 2>&1
    # Log lines and answers share the pipe; each arrived as a line of its own.
    lines = []
    assert wait_until(lambda: lines.extend(drain(ends)) or any(not line.startswith(b"{") for line in lines)), lines[-5:]
    for line in lines:
        if line.startswith(b"{"):
            json.loads(line)


def test_one_socket_for_stdin_and_stdout_stays_blocking(tmp_path):
    """socat's EXEC and systemd's socket activation hand one socket as both
    stdin and stdout: driving one direction non-blocking would hand the other
    (on the blocking pool) EAGAIN, so both stay as they were."""
    ends = Ends("one socket")

    def checked():
        assert not nonblocking(ends.their_in), "a socket shared by stdin and stdout was made non-blocking"

    run_agent(tmp_path, ends, while_running=checked)


def test_an_end_that_was_nonblocking_is_left_so(tmp_path):
    ends = Ends("pipe")
    os.set_blocking(ends.their_in, False)
    run_agent(tmp_path, ends)
    assert nonblocking(ends.their_in), "Airlock cleared a flag it did not set"
    assert not nonblocking(ends.their_out)


def drain(ends: Ends) -> list[bytes]:
    out = []
    while not ends.lines.empty():
        out.append(ends.lines.get())
    return out
