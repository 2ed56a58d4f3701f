"""The HTTP listener under abuse: slow and idle connections are cut by the
`[server]` header and idle timeouts, a connection cap keeps the gateway
inside its file-descriptor budget, accept errors are survived, and nothing
the gateway is answering (a held call, a websocket) is cut. Raw sockets
against the real binary; every loop is bounded by count and time.
"""
from __future__ import annotations

import select
import socket
import statistics
import subprocess
import threading
import time

import httpx

import rawmcp as rm
from harness import AIRLOCK_BIN, gateway_number, listening_port
from holdkit import HOLD_POLICY, TOKENS_ENV, Gateway, HeldCall, WebSocket, write_config


def start(procs, server: dict, nofile: int | None = None) -> Gateway:
    """A config-mode gateway (stdio testserver, approvers alice and bob) with
    the given `[server]` keys, under an open-file limit of `nofile` if given."""
    n = gateway_number()
    config = write_config(procs.tmp_path, HOLD_POLICY, name=f"listener-{n}")
    table = "".join(f"{key} = {value}\n" for key, value in server.items())
    config.write_text(config.read_text() + "\n[server]\n" + table)
    audit = procs.tmp_path / f"audit-{n}.db"
    cmd = [AIRLOCK_BIN, "serve", "--config", config, "--listen", "127.0.0.1:0", "--audit", audit]
    if nofile:
        cmd = ["prlimit", f"--nofile={nofile}:{nofile}", "--", *cmd]
    proc = procs.start(cmd, env=TOKENS_ENV)
    return Gateway(proc, listening_port(proc), audit, config)


class Slowloris:
    """Starts a request and adds one header line at each `tick`, never ending it."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        self.opened = time.monotonic()
        self.closed_at: float | None = None

    def tick(self):
        if self.closed_at is None:
            try:
                self.sock.sendall(b"X-Slow: 1\r\n")
            except OSError:
                self.closed_at = time.monotonic()

    def poll(self) -> bool:
        """True once the gateway has closed the connection."""
        if self.closed_at is None and closed_by_peer(self.sock):
            self.closed_at = time.monotonic()
        return self.closed_at is not None

    def close(self):
        self.sock.close()


def closed_by_peer(sock: socket.socket) -> bool:
    """Without blocking: has the gateway closed (or reset) the connection?"""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:  # reset
        return True


def wait_closed(sock: socket.socket, timeout: float) -> float | None:
    """Seconds until the gateway closed `sock`, or None if it stayed open."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if closed_by_peer(sock):
            return time.monotonic() - start
        time.sleep(0.05)
    return None


def get(sock: socket.socket, path: str = "/healthz") -> bytes:
    """One keep-alive GET on a raw socket; returns the response head."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before answering: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += sock.recv(65536)
    return head


def echo(gw: Gateway, text: str, timeout: float) -> str:
    call = HeldCall(gw.mcp, "echo", {"text": text})
    call.start()
    return call.result(timeout)["content"][0]["text"]


def test_slowloris_connections_are_cut_after_the_header_timeout(procs):
    gw = start(procs, {"max_connections": 50, "header_timeout": 2, "idle_timeout": 30})
    clients = [Slowloris(gw.port) for _ in range(30)]
    try:
        deadline = time.monotonic() + 8
        next_tick = time.monotonic() + 1
        while time.monotonic() < deadline and not all(c.poll() for c in clients):
            if time.monotonic() >= next_tick:
                for c in clients:
                    c.tick()
                next_tick += 1
            time.sleep(0.05)
        lived = sorted(c.closed_at - c.opened for c in clients if c.closed_at is not None)
        assert len(lived) == len(clients), f"{len(clients) - len(lived)} slow connection(s) still open after 8 s"
        assert 1.5 <= lived[0] and lived[-1] <= 4.5, lived
    finally:
        for c in clients:
            c.close()
    assert gw.metrics()['airlock_http_connections_timed_out_total{reason="header"}'] >= len(clients)


def test_healthz_and_agents_keep_working_under_a_slowloris_attack_with_few_file_descriptors(procs):
    """64 descriptors (about 20 are the gateway's own) and 24 connections at most:
    100 slow clients queue behind the cap instead of exhausting descriptors, and
    the header timeout moves the queue along."""
    gw = start(procs, {"max_connections": 24, "header_timeout": 2, "idle_timeout": 30}, nofile=64)
    assert echo(gw, "before", 20) == "before"  # the upstream child is running
    stop = threading.Event()
    opened = []

    def attack():
        clients: list[Slowloris] = []
        next_tick = time.monotonic()
        while not stop.is_set() and len(opened) < 2000:
            for c in [c for c in clients if c.poll()]:
                c.close()
                clients.remove(c)
            while len(clients) < 100:
                clients.append(Slowloris(gw.port))
                opened.append(1)
            if time.monotonic() >= next_tick:
                for c in clients:
                    c.tick()
                next_tick += 1
            time.sleep(0.05)
        for c in clients:
            c.close()

    attacker = threading.Thread(target=attack, daemon=True)
    attacker.start()
    try:
        time.sleep(3)  # the cap is full and the backlog holds slow clients
        started = time.monotonic()
        health = httpx.get(f"{gw.base}/healthz", timeout=25)
        waited = time.monotonic() - started
        assert health.status_code == 200, health.text
        assert echo(gw, "during", 25) == "during"
        assert attacker.is_alive(), "the attack ended early"
    finally:
        stop.set()
        attacker.join(20)
    metrics = gw.metrics()
    assert metrics["airlock_http_connection_limit_waits_total"] > 0
    assert metrics['airlock_http_connections_timed_out_total{reason="header"}'] >= 24
    assert metrics["airlock_http_accept_errors_total"] == 0, "the cap should keep accept inside the fd limit"
    print(f"healthz answered after {waited:.1f} s in the queue; {len(opened)} slow connections opened")


def test_an_idle_keep_alive_connection_waits_idle_timeout_not_header_timeout(procs):
    gw = start(procs, {"header_timeout": 1, "idle_timeout": 3})
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        assert b" 200 " in get(sock)
        time.sleep(2)  # idle beyond the header timeout, within the idle timeout
        assert not closed_by_peer(sock)
        assert b" 200 " in get(sock)
        closed_after = wait_closed(sock, 8)
    assert closed_after is not None, "an idle keep-alive connection stayed open past idle_timeout"
    assert 2.5 <= closed_after <= 5, closed_after
    assert gw.metrics()['airlock_http_connections_timed_out_total{reason="idle"}'] >= 1


def test_a_held_call_and_a_websocket_outlive_the_idle_timeout(procs):
    """A held call is a request in flight and a websocket an upgraded
    connection: neither is idle, however long nothing is sent on it."""
    gw = start(procs, {"header_timeout": 1, "idle_timeout": 1})
    ws = WebSocket(gw.port, headers={"Authorization": "Bearer alice-approver-token-0123456789"})
    assert ws.status == 101 and ws.recv()["type"] == "snapshot"
    held = HeldCall(gw.mcp, "delete_record", {"id": "slow-human"})
    held.start()
    [item] = gw.wait_pending(1)
    time.sleep(3.5)  # three idle timeouts with nothing sent on either connection
    assert held.is_alive() and held.error is None
    assert gw.decide(item["id"], "approve").status_code == 200
    assert "slow-human" in held.result(10)["content"][0]["text"]
    event, _ = ws.recv_until(lambda e: e.get("type") != "snapshot", timeout=10)
    assert event
    ws.close()


def test_accept_errors_back_off_and_the_gateway_recovers_when_descriptors_free_up(procs):
    """Descriptors can still run out below the cap (the limit lowered under a
    running gateway, here with prlimit): accept fails (EMFILE), the gateway
    backs off and logs once, and serves again once clients leave."""
    gw = start(procs, {"header_timeout": 30})
    subprocess.run(["prlimit", f"--pid={gw.proc.popen.pid}", "--nofile=64:64"], check=True)
    idle = []
    try:
        for _ in range(80):
            idle.append(socket.create_connection(("127.0.0.1", gw.port), timeout=5))
        time.sleep(2)  # accept keeps failing meanwhile
    finally:
        for s in idle:
            s.close()
    deadline = time.monotonic() + 15
    health = None
    while time.monotonic() < deadline:
        try:
            health = httpx.get(f"{gw.base}/healthz", timeout=5)
            break
        except httpx.HTTPError:
            time.sleep(0.2)
    assert health is not None and health.status_code == 200, gw.proc.stderr_text()[-2000:]
    assert gw.proc.popen.poll() is None
    assert gw.metrics()["airlock_http_accept_errors_total"] > 0
    said = [line for line in gw.proc.stderr_log if "cannot accept connections" in line]
    assert 1 <= len(said) <= 2, said  # once per episode, not once per retry


def test_the_default_cap_is_clamped_below_the_open_file_limit(procs):
    """Under a 128-descriptor limit the default cap (16,384) becomes 64 (128
    minus a reserve of half): 100 idle clients queue instead of making
    accept fail, and the clamp is logged."""
    gw = start(procs, {"header_timeout": 2}, nofile=128)
    said = [line for line in gw.proc.stderr_log if "accepting up to 64 connections at once" in line]
    assert said and "WARN" in said[0], gw.proc.stderr_text()[-2000:]
    idle = [socket.create_connection(("127.0.0.1", gw.port), timeout=5) for _ in range(100)]
    try:
        time.sleep(1)
        health = httpx.get(f"{gw.base}/healthz", timeout=15)
        assert health.status_code == 200
    finally:
        for s in idle:
            s.close()
    metrics = gw.metrics()
    assert metrics["airlock_http_accept_errors_total"] == 0
    assert metrics["airlock_http_connection_limit_waits_total"] > 0


class BodyTrickler:
    """Sends the headers of a `POST /api/login` announcing a 100,000-byte body,
    then one byte of it at each `tick`."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.sendall(
            b"POST /api/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000\r\n\r\n{"
        )
        self.closed = False

    def tick(self):
        try:
            self.sock.sendall(b" ")
        except OSError:
            self.closed = True

    def poll(self) -> bool:
        if not self.closed and closed_by_peer(self.sock):
            self.closed = True
        return self.closed

    def close(self):
        self.sock.close()


def test_trickled_request_bodies_are_cut_and_cannot_lock_out_healthz(procs):
    """Headers in, then a body byte a second on an unauthenticated route:
    before `body_timeout` such a connection held its permit forever, and a
    cap's worth of them locked everyone out."""
    gw = start(procs, {"max_connections": 8, "header_timeout": 2, "body_timeout": 2, "idle_timeout": 30})
    stop = threading.Event()

    def attack():
        clients: list[BodyTrickler] = []
        next_tick = time.monotonic()
        while not stop.is_set():
            for c in [c for c in clients if c.poll()]:
                c.close()
                clients.remove(c)
            while len(clients) < 16:
                clients.append(BodyTrickler(gw.port))
            if time.monotonic() >= next_tick:
                for c in clients:
                    c.tick()
                next_tick += 1
            time.sleep(0.05)
        for c in clients:
            c.close()

    attacker = threading.Thread(target=attack, daemon=True)
    attacker.start()
    try:
        time.sleep(3)  # the cap is full of tricklers
        started = time.monotonic()
        health = httpx.get(f"{gw.base}/healthz", timeout=20)
        waited = time.monotonic() - started
        assert health.status_code == 200, health.text
        assert waited < 15, waited
        assert attacker.is_alive(), "the attack ended early"
    finally:
        stop.set()
        attacker.join(20)
    assert gw.metrics()['airlock_http_connections_timed_out_total{reason="body"}'] >= 8
    # The one who trickles hears why.
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(b"POST /api/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{")
        assert sock.recv(65536).startswith(b"HTTP/1.1 408 "), "expected 408 Request Timeout"


def test_a_login_body_over_16_kib_is_refused_before_it_is_read_whole(procs):
    gw = start(procs, {})
    big = httpx.post(f"{gw.base}/api/login", json={"token": "x" * 20_000}, timeout=10)
    assert big.status_code == 413, big.text
    wrong = httpx.post(f"{gw.base}/api/login", json={"token": "x" * 100}, timeout=10)
    assert wrong.status_code == 401, wrong.text


def test_a_client_that_stops_reading_is_cut_after_the_write_timeout(procs):
    """Thousands of pipelined `GET /metrics` and no read: the gateway's writes
    block, and after `write_timeout` the connection is closed."""
    gw = start(procs, {"write_timeout": 2, "idle_timeout": 60})
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", gw.port))
    sock.settimeout(0.5)
    request = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    try:
        for _ in range(5000):
            sock.sendall(request)
    except (TimeoutError, OSError):
        pass  # the gateway stopped reading: its writes are blocked
    deadline = time.monotonic() + 15
    cut = 0
    while time.monotonic() < deadline and not cut:
        cut = gw.metrics()['airlock_http_connections_timed_out_total{reason="write"}']
        time.sleep(0.2)
    assert cut >= 1, "a connection whose client stopped reading stayed open"
    sock.settimeout(5)
    try:
        while sock.recv(65536):
            pass
    except OSError:
        pass  # reset: also closed
    sock.close()


def test_headers_over_64_kib_are_refused_with_431_and_the_gateway_keeps_serving(procs):
    gw = start(procs, {})
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 100 * 1024 + b"\r\n\r\n")
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    # Headers of a few tens of KB (Mcp-Param-* included) still fit.
    ok = httpx.get(f"{gw.base}/healthz", headers={"Mcp-Param-Big": "b" * 32 * 1024}, timeout=10)
    assert ok.status_code == 200


def test_event_stream_answers_are_not_delayed_by_nagle(procs):
    """TCP_NODELAY: a relayed event-stream answer is written as headers, the
    event, then the end of the chunked body. With Nagle's algorithm that last
    small write waits for the client's delayed ACK (~40 ms per call: measured
    56 ms through Airlock against 4.5 ms direct before the fix)."""
    _, upstream = procs.everything_http()
    gw = procs.airlock(url=upstream)

    def median_call(c: httpx.Client, url: str, headers: dict) -> float:
        body = rm.call_body(1, "echo", {"message": "fast"})
        times = []
        for _ in range(25):
            started = time.monotonic()
            r = c.post(url, json=body, headers=headers)
            times.append(time.monotonic() - started)
            assert r.status_code == 200 and "fast" in r.text, r.text
            assert r.headers["content-type"].startswith("text/event-stream"), r.headers
        return statistics.median(times[5:])

    with httpx.Client(timeout=10) as c:
        direct = median_call(c, upstream, rm.session_headers(rm.open_session(c, upstream), {"Accept": rm.ACCEPT}))
        through = median_call(c, gw.mcp, rm.session_headers(rm.open_session(c, gw.mcp), {"Accept": rm.ACCEPT}))
    added = through - direct
    assert added < 0.025, f"Airlock adds {added * 1000:.1f} ms per call ({through * 1000:.1f} vs {direct * 1000:.1f} ms)"
