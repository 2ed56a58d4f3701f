"""A proxy named in the environment (`HTTP_PROXY`, `ALL_PROXY`, …) still
carries Airlock's requests to a plain-HTTP upstream. Such upstreams' POSTs
(the allowed call's path) skip reqwest and go through hyper's pooled client
directly, which knows no proxies; with a proxy variable set, Airlock keeps
them on reqwest, which honours it (this test fails if the direct path
takes a call that should have gone through the proxy).

The proxy here is a real forward proxy on loopback (absolute-form requests,
relayed with `http.client`); it records the targets it was asked for.
"""
from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import rawmcp as rm

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}


class ForwardProxy(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[str] = []

    def relay(self):
        ForwardProxy.seen.append(f"{self.command} {self.path}")
        target = urlsplit(self.path)
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
        conn.request(self.command, target.path or "/", body=body, headers=headers)
        answer = conn.getresponse()
        data = answer.read()  # the upstream ends a call's stream after its answer
        self.send_response(answer.status)
        for k, v in answer.getheaders():
            if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        conn.close()

    do_POST = do_GET = do_DELETE = relay

    def log_message(self, *args):
        pass


def start_proxy() -> tuple[ThreadingHTTPServer, str]:
    ForwardProxy.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), ForwardProxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


NO_PROXY_ENV = {name: "" for name in ("NO_PROXY", "no_proxy")}


def call_echo(gw) -> None:
    with rm.client() as c:
        headers = rm.session_headers(rm.open_session(c, gw.mcp))
        r = rm.post(c, gw.mcp, rm.call_body(2, "echo", {"text": "via the proxy?"}), headers)
        assert r.status_code == 200, r.text
        assert "via the proxy?" in str(rm.answer(r, 2)["result"]), r.text


def test_an_http_proxy_from_the_environment_carries_the_upstream_calls(procs):
    _, upstream = procs.testserver_http("both")
    server, proxy = start_proxy()
    try:
        gw = procs.airlock(url=upstream, env={**NO_PROXY_ENV, "HTTP_PROXY": proxy, "http_proxy": proxy})
        call_echo(gw)
    finally:
        server.shutdown()
    posts = [s for s in ForwardProxy.seen if s.startswith("POST ")]
    # initialize, notifications/initialized, tools/call: all through the proxy.
    assert len(posts) >= 3, ForwardProxy.seen
    assert all(s == f"POST {upstream}" for s in posts), ForwardProxy.seen

