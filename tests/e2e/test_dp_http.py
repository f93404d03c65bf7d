"""Data plane HTTP proxying: large bodies streamed both ways (sha256 checked,
memory bounded), chunked both ways, HTTP/1.0 clients, Expect: 100-continue,
keep-alive to upstreams, pipelining, WebSocket. One control plane, two data
planes with two workers each; the heavy transfers run through one."""

import hashlib
import json
import os
import socket
import subprocess
import threading
import time

from harness import Fail, Settings, T, check, eq, uid, wait_until
from dp_harness import (WsClient, connect, curl_many, dp_env, new_upstream, read_responses,
                        recv_all, wait_serving)
import upstream_server

MB = 1 << 20
BIG = 100 * MB


def env_of(ctx):
    return dp_env(ctx, "http", upstreams=("a", "b"))


def host_route(env, t, up="a", **extra):
    """A route for every path on host t.test (paths reach the upstream as
    they are); returns the Host header to send."""
    h = "%s.test" % t
    body = {"uri": "/*", "hosts": [h], "upstream": env.up(up)}
    body.update(extra)
    env.route(t, body)
    wait_serving(env.dps, "/ok", headers=["Host: " + h])
    return h


class RssSampler:
    """Samples a data plane's RSS (master + workers) every 20 ms."""

    def __init__(self, dp):
        self.dp = dp
        self.base = dp.rss_kb()
        self.peak = self.base
        self.stop_ev = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while not self.stop_ev.is_set():
            self.peak = max(self.peak, self.dp.rss_kb())
            time.sleep(0.02)

    def stop(self):
        self.stop_ev.set()
        self.t.join()
        return self.base, self.peak


def growth_limit_kb(body):
    # The body never sits in memory: allow a fixed margin (buffers, a new
    # upstream connection), a third of the smallest body moved here. ASan
    # builds keep freed memory in quarantine: a larger margin, still a third
    # of the 100 MiB body.
    return (32 if Settings.sanitizer else 16) * 1024


def check_rss(dp, base, peak, body, what):
    grew = peak - base
    check(grew <= growth_limit_kb(body),
          "%s: the data plane's RSS (master + workers) grew by %.1f MiB (from %.1f to %.1f "
          "MiB) while moving %d MiB; expected well below the body size" % (
              what, grew / 1024.0, base / 1024.0, peak / 1024.0, body // MB))


def pattern_file(ctx, n):
    path = os.path.join(ctx.tmpdir(), "body-%d.bin" % n)
    with open(path, "wb") as f:
        for b in upstream_server.pattern(n):
            f.write(b)
    return path


# ---------------------------------------------------------------------------
# large bodies


def test_large_download_streamed(ctx):
    env = env_of(ctx)
    t = uid("dl")
    h = host_route(env, t)
    d = env.dps[0]
    want = upstream_server.pattern_sha256(BIG)
    rs = RssSampler(d)
    p = subprocess.Popen(["curl", "-sS", "-g", "--max-time", "%.0f" % T(60), "-H", "Host: " + h,
                          "-D", "-", "-o", "-", d.url("/bytes/%d" % BIG)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    hdr = b""
    while b"\r\n\r\n" not in hdr:
        c = p.stdout.read(1)
        if not c:
            break
        hdr += c
    sha = hashlib.sha256()
    n = 0
    while True:
        c = p.stdout.read(1 << 20)
        if not c:
            break
        sha.update(c)
        n += len(c)
    p.wait()
    base, peak = rs.stop()
    check(hdr.startswith(b"HTTP/1.1 200"), "download head: %r %s" % (hdr[:200], p.stderr.read()))
    check(b"content-length: %d" % BIG in hdr.lower(), "Content-Length passed: %r" % hdr)
    eq(n, BIG, "bytes downloaded")
    eq(sha.hexdigest(), want, "sha256 of the 100 MiB download")
    check_rss(d, base, peak, BIG, "100 MiB download")


def test_large_upload_streamed(ctx):
    env = env_of(ctx)
    t = uid("ul")
    h = host_route(env, t, up="b")
    d = env.dps[0]
    path = pattern_file(ctx, BIG)
    want = upstream_server.pattern_sha256(BIG)
    rs = RssSampler(d)
    r = d.req("POST", "/upload", headers=["Host: " + h], timeout=T(60),
              extra=["-T", path])
    base, peak = rs.stop()
    os.unlink(path)
    eq(r.status, 200, "upload status (%s)" % r.text[:200])
    eq((r.j["length"], r.j["sha256"]), (BIG, want), "length and sha256 seen by the upstream")
    eq(r.j["content_length"], str(BIG), "Content-Length forwarded")
    check_rss(d, base, peak, BIG, "100 MiB upload")


def test_slow_reader_does_not_balloon(ctx):
    """A client that stops reading: the data plane stops reading from the
    upstream instead of buffering the response."""
    env = env_of(ctx)
    t = uid("sr")
    h = host_route(env, t)
    d = env.dps[0]
    n = 48 * MB
    s = connect(d.port)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    try:
        base = d.rss_kb()
        s.sendall(("GET /bytes/%d HTTP/1.1\r\nHost: %s\r\n\r\n" % (n, h)).encode())
        time.sleep(1.5)
        peak = d.rss_kb()
        s.settimeout(T(30))
        data = bytearray()
        while b"\r\n\r\n" not in data:
            data += s.recv(65536)
        i = data.index(b"\r\n\r\n")
        body = hashlib.sha256(bytes(data[i + 4:]))
        got = len(data) - i - 4
        while got < n:
            c = s.recv(1 << 20)
            if not c:
                break
            body.update(c)
            got += len(c)
            if got < 8 * MB:
                peak = max(peak, d.rss_kb())
    finally:
        s.close()
    eq(got, n, "bytes received by the slow reader")
    eq(body.hexdigest(), upstream_server.pattern_sha256(n), "sha256 for the slow reader")
    check_rss(d, base, peak, n, "48 MiB to a client that paused 1.5 s")


def test_chunked_both_ways(ctx):
    env = env_of(ctx)
    t = uid("ch")
    h = host_route(env, t)
    n = 10 * MB
    want = upstream_server.pattern_sha256(n)
    data = b"".join(upstream_server.pattern(n))
    for d in env.dps:
        # curl sends stdin as chunked.
        p = subprocess.run(["curl", "-sS", "--max-time", "%.0f" % T(30), "-H", "Host: " + h,
                            "-H", "Transfer-Encoding: chunked", "-T", "-", "-X", "POST",
                            d.url("/upload")], input=data, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
        try:
            j = json.loads(p.stdout)
        except ValueError:
            raise Fail("%s: chunked upload answer %r %r" % (d.name, p.stdout[:300], p.stderr))
        eq((j["length"], j["sha256"]), (n, want), "%s: chunked upload at the upstream" % d.name)
        # Chunked download: 40 chunks of 25000 bytes, some with pauses.
        r = d.get("/chunked/40/25000?interval=0.005", headers=["Host: " + h])
        eq(r.status, 200, "chunked download status")
        eq(r.headers.get("transfer-encoding", "").lower(), "chunked",
           "%s: Transfer-Encoding of a chunked response to an HTTP/1.1 client" % d.name)
        eq(hashlib.sha256(r.body).hexdigest(), upstream_server.pattern_sha256(40 * 25000),
           "%s: chunked download body" % d.name)


def test_http10_client_gets_plain_body(ctx):
    """To an HTTP/1.0 client a chunked upstream response is sent without the
    chunk framing and the connection closes at its end (nginx)."""
    env = env_of(ctx)
    t = uid("h10")
    h = host_route(env, t)
    for d in env.dps:
        s = connect(d.port)
        try:
            s.sendall(("GET /chunked/5/1000 HTTP/1.0\r\nHost: %s\r\n\r\n" % h).encode())
            data, how = recv_all(s, timeout=5)
        finally:
            s.close()
        check(how == "eof", "%s: HTTP/1.0 response not ended by a close (%s)" % (d.name, how))
        head, _, body = data.partition(b"\r\n\r\n")
        check(head.startswith(b"HTTP/1."), "%s: head %r" % (d.name, head[:80]))
        check(b"transfer-encoding" not in head.lower(),
              "%s: Transfer-Encoding sent to an HTTP/1.0 client: %r" % (d.name, head))
        eq(body, b"".join(upstream_server.pattern(5000)), "%s: HTTP/1.0 body" % d.name)


def test_expect_100_continue(ctx):
    env = env_of(ctx)
    t = uid("ex")
    h = host_route(env, t, up="b")
    for d in env.dps:
        s = connect(d.port)
        try:
            s.sendall(("POST /upload HTTP/1.1\r\nHost: %s\r\nContent-Length: 5\r\n"
                       "Expect: 100-continue\r\n\r\n" % h).encode())
            s.settimeout(T(3))
            first = s.recv(65536)
            check(first.startswith(b"HTTP/1.1 100"),
                  "%s: expected an interim 100 Continue before the body, got %r" % (
                      d.name, first[:100]))
            s.sendall(b"hello")
            rs, how = read_responses(s, 1)
        finally:
            s.close()
        check(rs, "%s: no final response (%s)" % (d.name, how))
        eq((rs[-1].status, rs[-1].j["length"]), (200, 5), "%s: final response" % d.name)


def test_body_until_close(ctx):
    """An upstream body delimited by the connection's close reaches an
    HTTP/1.1 client whole and correctly framed."""
    env = env_of(ctx)
    t = uid("eof")
    h = host_route(env, t)
    n = 3 * MB + 17
    for d in env.dps:
        s = connect(d.port)
        try:
            s.sendall(("GET /eof/%d HTTP/1.1\r\nHost: %s\r\n\r\n" % (n, h)).encode())
            rs, how = read_responses(s, 1, timeout=10)
        finally:
            s.close()
        check(rs, "%s: no complete response (%s)" % (d.name, how))
        eq(len(rs[0].body), n, "%s: body length" % d.name)
        eq(hashlib.sha256(rs[0].body).hexdigest(), upstream_server.pattern_sha256(n),
           "%s: body until close" % d.name)


def test_client_abort_closes_upstream(ctx):
    """A client that goes away mid-request: the data plane closes the
    upstream connection at once (nginx, proxy_ignore_client_abort off)
    instead of waiting for the upstream, and the worker carries on."""
    env = env_of(ctx)
    u = new_upstream(ctx, "abort")
    t = uid("ab")
    h = "%s.test" % t
    env.route(t, {"uri": "/*", "hosts": [h], "upstream": {
        "type": "roundrobin", "nodes": {u.addr: 1}}})
    wait_serving(env.dps, "/ok", headers=["Host: " + h])
    for d in env.dps:
        before = d.workers()
        socks = []
        for i in range(4):
            s = connect(d.port)
            s.sendall(("GET /hang HTTP/1.1\r\nHost: %s\r\n\r\n" % h).encode())
            socks.append(s)
        check(wait_until(lambda: u.stats()["paths"].get("/hang", 0) >= 4 * (
            env.dps.index(d) + 1), T(3)), "%s: the /hang requests did not reach the upstream" %
            d.name)
        for s in socks:
            s.close()
        ok = wait_until(lambda: u.stats()["in_flight"] == 0, T(2), interval=0.05)
        check(ok, "%s: the upstream still holds %d of 4 /hang requests (their connections "
              "open) 2 s after the clients went away" % (d.name, u.stats()["in_flight"]))
        # Downloads abandoned half-way.
        for i in range(3):
            s = connect(d.port)
            s.sendall(("GET /bytes/%d HTTP/1.1\r\nHost: %s\r\n\r\n" % (50 * MB, h)).encode())
            s.recv(65536)
            s.close()
        # An upload abandoned half-way.
        s = connect(d.port)
        s.sendall(("POST /upload HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n\r\n" % (
            h, 50 * MB)).encode() + b"u" * MB)
        s.close()
        eq(d.get("/ok", headers=["Host: " + h]).status, 200, "%s: next request" % d.name)
        eq(d.workers(), before, "%s: workers after aborted requests" % d.name)


def test_stale_pooled_connection_is_replaced(ctx):
    """The upstream closes idle keep-alive connections after 0.3 s: the next
    request must not fail on the dead pooled connection."""
    env = env_of(ctx)
    u = new_upstream(ctx, "idle", idle_timeout=0.3)
    t = uid("st")
    h = "%s.test" % t
    env.route(t, {"uri": "/*", "hosts": [h], "upstream": {
        "type": "roundrobin", "nodes": {u.addr: 1}}})
    wait_serving(env.dps, "/ok", headers=["Host: " + h])
    for method in ("GET", "PUT", "GET"):
        time.sleep(0.6)
        for d in env.dps:
            res = curl_many([d.url("/after-idle"), d.url("/again")], headers=["Host: " + h],
                            extra=["-X", method])
            eq([c for c, _ in res], [200, 200],
               "%s: %s after the upstream closed its idle connection" % (d.name, method))


def test_concurrent_requests(ctx):
    """200 requests, 50 at a time, each waiting 0.2 s at the upstream: all
    succeed, and concurrently (not one after another)."""
    env = env_of(ctx)
    t = uid("par")
    h = host_route(env, t, up="b")
    d = env.dps[0]
    t0 = time.monotonic()
    res = curl_many([d.url("/delay/0.2?i=%d" % i) for i in range(200)], headers=["Host: " + h],
                    extra=["--parallel", "--parallel-max", "50"], timeout=T(20))
    dt = time.monotonic() - t0
    codes = [c for c, _ in res]
    eq(codes.count(200), 200, "successful answers out of 200 concurrent requests (others: %s)" %
       sorted(set(codes)))
    check(dt < T(4), "200 requests of 0.2 s, 50 in parallel, took %.1fs" % dt)


# ---------------------------------------------------------------------------
# connections


def test_upstream_keepalive(ctx):
    env = env_of(ctx)
    u = new_upstream(ctx, "ka")
    t = uid("ka")
    h = "%s.test" % t
    env.route(t, {"uri": "/*", "hosts": [h], "upstream": {
        "type": "roundrobin", "nodes": {u.addr: 1}}})
    wait_serving(env.dps[:1], "/ok", headers=["Host: " + h])
    d = env.dps[0]
    # Let the probes' pooled connections be the ones reused below.
    res = curl_many([d.url("/seq/%d" % i) for i in range(6)], headers=["Host: " + h])
    conns = {json.loads(b)["conn"] for c, b in res if c == 200}
    eq([c for c, _ in res], [200] * 6, "statuses")
    eq(len(conns), 1, "upstream connections for 6 sequential requests on one client "
       "connection (echo 'conn' values %s)" % sorted(conns))
    before = u.stats()["connections"]
    res = curl_many([d.url("/sep/%d" % i) for i in range(8)], headers=["Host: " + h],
                    close=True)
    eq([c for c, _ in res], [200] * 8, "statuses")
    after = u.stats()["connections"]
    check(after <= d.workers_n,
          "8 requests on 8 client connections opened %d new upstream connections (%d "
          "in all, %d workers): the keep-alive pool is not used" % (
              after - before, after, d.workers_n))


def test_client_keepalive_and_pipelining(ctx):
    env = env_of(ctx)
    t = uid("pl")
    h = host_route(env, t)
    for d in env.dps:
        s = connect(d.port)
        try:
            reqs = ("GET /delay/0.3?n=1 HTTP/1.1\r\nHost: {h}\r\n\r\n"
                    "POST /echo?n=2 HTTP/1.1\r\nHost: {h}\r\nContent-Length: 3\r\n\r\nabc"
                    "GET /status/404?n=3 HTTP/1.1\r\nHost: {h}\r\n\r\n"
                    "HEAD /echo?n=4 HTTP/1.1\r\nHost: {h}\r\n\r\n"
                    "GET /echo?n=5 HTTP/1.1\r\nHost: {h}\r\n\r\n").format(h=h)
            s.sendall(reqs.encode())
            rs, how = read_responses(s, 5, timeout=5, head_only=(3,))
            # The connection stays open for more.
            s.sendall(("GET /echo?n=6 HTTP/1.1\r\nHost: %s\r\n\r\n" % h).encode())
            more, how2 = read_responses(s, 1, timeout=5)
        finally:
            s.close()
        eq(len(rs), 5, "%s: responses to 5 pipelined requests (%s)" % (d.name, how))
        eq([r.status for r in rs], [200, 200, 404, 200, 200], "%s: statuses in order" % d.name)
        eq([rs[i].j["query"]["n"] for i in (0, 1, 2, 4)], ["1", "2", "3", "5"],
           "%s: pipelined responses in request order" % d.name)
        eq(rs[1].j.get("body"), "abc", "%s: body of the pipelined POST" % d.name)
        eq(rs[3].body, b"", "%s: HEAD response body" % d.name)
        eq(len(more), 1, "%s: a request after the pipelined batch (%s)" % (d.name, how2))
        eq(more[0].j["query"]["n"], "6", "%s: the request after the batch" % d.name)


def test_connection_close_honoured(ctx):
    env = env_of(ctx)
    t = uid("cc")
    h = host_route(env, t)
    for d in env.dps:
        s = connect(d.port)
        try:
            s.sendall(("GET /x HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % h).encode())
            data, how = recv_all(s, timeout=5)
        finally:
            s.close()
        eq(how, "eof", "%s: the connection closes after a 'Connection: close' request" % d.name)
        check(b"\r\nconnection: close" in data.lower(),
              "%s: 'Connection: close' in the response head: %r" % (d.name, data[:300]))


# ---------------------------------------------------------------------------
# WebSocket


def test_websocket_echo(ctx):
    env = env_of(ctx)
    t = uid("ws")
    h = host_route(env, t, up="b", enable_websocket=True)
    for d in env.dps:
        ws = WsClient(d.port, "/ws", host=h)
        try:
            eq(ws.status, 101, "%s: WebSocket upgrade status (body %r)" % (d.name, ws.body[:200]))
            eq(ws.headers.get("sec-websocket-accept"), ws.expect_accept,
               "%s: Sec-WebSocket-Accept" % d.name)
            eq(ws.headers.get("upgrade", "").lower(), "websocket", "%s: Upgrade" % d.name)
            ws.send("hello")
            eq(ws.recv(), (0x1, b"hello"), "%s: text echo" % d.name)
            big = os.urandom(70000)
            ws.send(big, op=0x2)
            eq(ws.recv(), (0x2, big), "%s: 70000-byte binary echo" % d.name)
            ws.send(b"p1", op=0x9)
            eq(ws.recv(), (0xA, b"p1"), "%s: ping -> pong" % d.name)
            for i in range(20):
                ws.send("m%d" % i)
            eq([ws.recv()[1] for _ in range(20)], [b"m%d" % i for i in range(20)],
               "%s: 20 messages in order" % d.name)
            ws.send(b"\x03\xe8", op=0x8)
            eq(ws.recv()[0], 0x8, "%s: close echoed" % d.name)
            data, how = recv_all(ws.sock, timeout=3)
            check(how in ("eof", "reset"), "%s: tunnel not closed after the upstream closed "
                  "(%s)" % (d.name, how))
        finally:
            ws.close()


def test_websocket_refused_without_enable_websocket(ctx):
    env = env_of(ctx)
    t = uid("nows")
    h = host_route(env, t, up="b")
    for d in env.dps:
        ws = WsClient(d.port, "/ws", host=h)
        try:
            check(ws.status != 101, "%s: a route without enable_websocket upgraded (101)" %
                  d.name)
            eq(ws.status, 426, "%s: the upstream's answer to a plain GET /ws" % d.name)
            seen = json.loads(ws.body)["headers"]
            check("upgrade" not in seen,
                  "%s: Upgrade reached the upstream on a route without enable_websocket: %s" %
                  (d.name, seen))
        finally:
            ws.close()
