"""Data plane limits and bad input (nginx behaviour): 431 for a big or
crowded head, 414 for a huge request line, 413 over max_body_bytes, 408 for
client header / body timeouts and slowloris, idle keep-alive closes, 400 for
request smuggling and garbage, send_timeout, max_connections. Limits come
from the YAML config file's "dataplane.limits" (short timeouts keep the
tests fast). No bad input may kill a worker: pids are compared after each
test."""

import os
import socket
import time

from harness import T, check, eq, uid
from dp_harness import (check_no_worker_change, connect, curl_many, dp_env, new_dp,
                        read_responses, recv_all, wait_serving)

LIMITS = {"max_header_bytes": 4096, "max_headers": 20, "max_body_bytes": 1000000,
          "client_header_timeout": 1, "client_body_timeout": 1, "keepalive_timeout": 1.5,
          "send_timeout": 1.5}


def env_of(ctx):
    return dp_env(ctx, "limits", dps=1, upstreams=("a",),
                  dp_kw={"config": {"dataplane": {"limits": LIMITS, "drain_timeout": 3}}})


def setup(ctx):
    """(env, dp, Host header value, worker pids before the test)."""
    env = env_of(ctx)
    d = env.dps[0]
    h = getattr(ctx.mod, "limits_host", None)
    if h is None:
        h = "%s.test" % uid("lim")
        env.route("limits", {"uri": "/*", "hosts": [h], "upstream": env.up("a")})
        wait_serving(d, "/ok", headers=["Host: " + h])
        ctx.mod.limits_host = h
    return env, d, h, d.workers()


def still_serving(d, h, before, what):
    r = d.get("/after", headers=["Host: " + h])
    eq(r.status, 200, "%s: a normal request after %s" % (d.name, what))
    check_no_worker_change(d, before, what)


def raw_status(data):
    """Status code of the first response in data, or None."""
    if not data.startswith(b"HTTP/1."):
        return None
    try:
        return int(data[9:12])
    except ValueError:
        return None


def test_big_header_431(ctx):
    env, d, h, before = setup(ctx)
    r = d.get("/x", headers=["Host: " + h, "X-Big: " + "b" * 6000])
    eq(r.status, 431, "a 6000-byte header with max_header_bytes 4096")
    r = d.get("/x", headers=["Host: " + h] + ["X-Part-%d: %s" % (i, "p" * 500)
                                              for i in range(10)])
    eq(r.status, 431, "ten 500-byte headers with max_header_bytes 4096")
    r = d.get("/x", headers=["Host: " + h, "X-Ok: " + "o" * 2500])
    eq(r.status, 200, "a head under the limit")
    still_serving(d, h, before, "big headers")


def test_too_many_headers_431(ctx):
    env, d, h, before = setup(ctx)
    # curl adds Host, User-Agent and Accept.
    r = d.get("/x", headers=["Host: " + h] + ["X-H%d: v" % i for i in range(25)])
    eq(r.status, 431, "28 headers with max_headers 20")
    r = d.get("/x", headers=["Host: " + h] + ["X-H%d: v" % i for i in range(15)])
    eq(r.status, 200, "18 headers with max_headers 20")
    eq(r.j["headers"].get("x-h14"), "v", "the 15th header reached the upstream")
    still_serving(d, h, before, "many headers")


def test_huge_request_line_414(ctx):
    env, d, h, before = setup(ctx)
    r = d.get("/x?q=" + "a" * 8000, headers=["Host: " + h])
    eq(r.status, 414, "an 8000-byte request line with max_header_bytes 4096 (nginx: "
       "414 Request-URI Too Large)")
    data, how = b"", None
    s = connect(d.port)
    try:
        s.sendall(b"GET /" + b"z" * 200000 + b" HTTP/1.1\r\nHost: " + h.encode() + b"\r\n\r\n")
    except OSError:
        pass
    try:
        data, how = recv_all(s, timeout=5)
    finally:
        s.close()
    eq(raw_status(data), 414, "a 200000-byte request line (%s, got %r)" % (how, data[:80]))
    still_serving(d, h, before, "huge request lines")


def test_body_limit_413(ctx):
    env, d, h, before = setup(ctx)
    r = d.req("POST", "/upload", body=b"x" * 900000, headers=["Host: " + h])
    eq((r.status, r.j.get("length")), (200, 900000), "a 900000-byte body under the limit")
    r = d.req("POST", "/upload", body=b"x" * 2000000, headers=["Host: " + h])
    eq(r.status, 413, "a 2000000-byte body (Content-Length) with max_body_bytes 1000000")
    r = d.req("POST", "/upload", body=b"x" * 2000000, headers=["Host: " + h, "Expect:"])
    eq(r.status, 413, "the same without Expect: 100-continue")
    r = d.req("POST", "/upload", body=b"y" * 1500000,
              headers=["Host: " + h, "Transfer-Encoding: chunked"])
    eq(r.status, 413, "a 1500000-byte chunked body with max_body_bytes 1000000")
    still_serving(d, h, before, "bodies over the limit")


def test_client_header_timeout_408(ctx):
    env, d, h, before = setup(ctx)
    s = connect(d.port)
    try:
        t0 = time.monotonic()
        s.sendall(("GET /x HTTP/1.1\r\nHost: %s\r\n" % h).encode())
        data, how = recv_all(s, timeout=4)
        dt = time.monotonic() - t0
    finally:
        s.close()
    eq(raw_status(data), 408, "an unfinished head after client_header_timeout 1 s (%s, "
       "%.2fs, got %r)" % (how, dt, data[:100]))
    check(how in ("eof", "reset"), "connection not closed after the 408 (%s)" % how)
    check(0.8 <= dt <= T(2.5), "408 after %.2fs with client_header_timeout 1 s" % dt)
    still_serving(d, h, before, "a header timeout")


def test_slowloris_408(ctx):
    """A client trickling its head one byte at a time does not extend the
    header timeout."""
    env, d, h, before = setup(ctx)
    s = connect(d.port)
    head = ("GET /x HTTP/1.1\r\nHost: %s\r\nX-Slow: %s" % (h, "s" * 200)).encode()
    t0 = time.monotonic()
    closed = False
    try:
        s.settimeout(0.15)
        for i in range(len(head)):
            try:
                s.send(head[i:i + 1])
            except OSError:
                closed = True
                break
            try:
                first = s.recv(65536)
                break
            except socket.timeout:
                pass
            if time.monotonic() - t0 > T(5):
                break
        else:
            first = b""
        rest, how = recv_all(s, timeout=3)
        dt = time.monotonic() - t0
    finally:
        s.close()
    data = (first if not closed else b"") + rest
    eq(raw_status(data), 408, "slowloris after %.2fs (%s): %r" % (dt, how, data[:100]))
    check(dt <= T(2.5), "slowloris answered only after %.2fs (client_header_timeout 1 s)" % dt)
    still_serving(d, h, before, "a slowloris client")


def test_client_body_timeout_408(ctx):
    env, d, h, before = setup(ctx)
    s = connect(d.port)
    try:
        t0 = time.monotonic()
        s.sendall(("POST /upload HTTP/1.1\r\nHost: %s\r\nContent-Length: 100\r\n\r\n0123456789"
                   % h).encode())
        data, how = recv_all(s, timeout=5)
        dt = time.monotonic() - t0
    finally:
        s.close()
    eq(raw_status(data), 408, "a body stalled past client_body_timeout 1 s (%s, %.2fs): %r" % (
        how, dt, data[:100]))
    check(0.8 <= dt <= T(3), "408 after %.2fs with client_body_timeout 1 s" % dt)
    still_serving(d, h, before, "a body timeout")


def test_keepalive_timeout_closes_idle(ctx):
    env, d, h, before = setup(ctx)
    s = connect(d.port)
    try:
        s.sendall(("GET /x HTTP/1.1\r\nHost: %s\r\n\r\n" % h).encode())
        rs, how = read_responses(s, 1)
        eq([r.status for r in rs], [200], "first request (%s)" % how)
        t0 = time.monotonic()
        rest, how = recv_all(s, timeout=6)
        dt = time.monotonic() - t0
    finally:
        s.close()
    check(how in ("eof", "reset"), "idle keep-alive connection still open after 6 s")
    eq(rest, b"", "bytes sent on an idle keep-alive connection")
    check(1.2 <= dt <= T(3.5), "idle connection closed after %.2fs with keepalive_timeout "
          "1.5 s" % dt)
    still_serving(d, h, before, "keep-alive timeouts")


def test_request_smuggling_400(ctx):
    env, d, h, before = setup(ctx)
    u = env.ups["a"]
    tag = uid("smug")
    cases = {
        "CL+TE": "POST /x HTTP/1.1\r\nHost: {h}\r\nContent-Length: 6\r\n"
                 "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /{t}-1 HTTP/1.1\r\nHost: {h}\r\n\r\n",
        "TE+CL": "POST /x HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: chunked\r\n"
                 "Content-Length: 40\r\n\r\n0\r\n\r\nGET /{t}-2 HTTP/1.1\r\nHost: {h}\r\n\r\n",
        "two Content-Length": "POST /x HTTP/1.1\r\nHost: {h}\r\nContent-Length: 0\r\n"
                              "Content-Length: 44\r\n\r\nGET /{t}-3 HTTP/1.1\r\nHost: {h}\r\n\r\n",
        "bad Content-Length": "POST /x HTTP/1.1\r\nHost: {h}\r\nContent-Length: 1x\r\n\r\n"
                              "GET /{t}-4 HTTP/1.1\r\nHost: {h}\r\n\r\n",
        "space before colon": "POST /x HTTP/1.1\r\nHost: {h}\r\nContent-Length : 0\r\n\r\n"
                              "GET /{t}-5 HTTP/1.1\r\nHost: {h}\r\n\r\n",
    }
    for what, raw in cases.items():
        data, how = b"", None
        s = connect(d.port)
        try:
            s.sendall(raw.format(h=h, t=tag).encode())
            data, how = recv_all(s, timeout=4)
        finally:
            s.close()
        eq(raw_status(data), 400, "%s: status (%s): %r" % (what, how, data[:100]))
        check(how in ("eof", "reset"), "%s: connection not closed after the 400" % what)
        check(data.count(b"HTTP/1.1 ") == 1,
              "%s: more than one response on the connection: %r" % (what, data[:600]))
    paths = u.stats()["paths"]
    smuggled = [p for p in paths if tag in p]
    eq(smuggled, [], "smuggled requests that reached the upstream")
    still_serving(d, h, before, "smuggling attempts")


def test_garbage_400(ctx):
    env, d, h, before = setup(ctx)
    inputs = {
        "binary": os.urandom(512) + b"\r\n\r\n",
        "TLS ClientHello": bytes.fromhex("16030100a5010000a10303") + os.urandom(160),
        "NUL in a header": b"GET / HTTP/1.1\r\nHost: a\x00b\r\n\r\n",
        "bad method chars": b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n",
        "header without colon": ("GET / HTTP/1.1\r\nHost: %s\r\nNoColonHere\r\n\r\n" %
                                 h).encode(),
    }
    for what, raw in inputs.items():
        s = connect(d.port)
        try:
            try:
                s.sendall(raw)
            except OSError:
                pass
            data, how = recv_all(s, timeout=4)
        finally:
            s.close()
        eq(raw_status(data), 400, "%s: status (%s): %r" % (what, how, data[:100]))
        check(how in ("eof", "reset"), "%s: connection not closed after the 400" % what)
    # Many clients that connect and vanish at once, mid-request.
    for i in range(30):
        s = connect(d.port)
        s.sendall(b"GET /x HTTP/1.1\r\nHo")
        s.close()
    still_serving(d, h, before, "garbage input")


def test_send_timeout_closes_stalled_client(ctx):
    """A client that stops reading a large response is cut off after
    send_timeout (1.5 s) without progress."""
    env, d, h, before = setup(ctx)
    n = 200 << 20
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
    s.connect(("127.0.0.1", d.port))
    try:
        s.sendall(("GET /bytes/%d HTTP/1.1\r\nHost: %s\r\n\r\n" % (n, h)).encode())
        time.sleep(3.5)
        t0 = time.monotonic()
        data, how = recv_all(s, timeout=10, limit=n + 4096)
        dt = time.monotonic() - t0
    finally:
        s.close()
    check(how in ("eof", "reset"), "stalled client: connection state %s after reading %d "
          "bytes in %.1fs" % (how, len(data), dt))
    check(len(data) < n // 2, "a client stalled for 3.5 s still received %d of %d bytes "
          "(send_timeout 1.5 s)" % (len(data), n))
    still_serving(d, h, before, "a stalled client")


def test_max_connections(ctx):
    env = env_of(ctx)
    h = "%s.test" % uid("mc")
    env.route("mc-" + h.split(".")[0], {"uri": "/*", "hosts": [h], "upstream": env.up("a")})
    d = new_dp(ctx, env.cp, name="maxconn", workers=1, config={"dataplane": {"limits": {
        "max_connections": 3, "client_header_timeout": 10, "keepalive_timeout": 10}}})
    wait_serving(d, "/ok", headers=["Host: " + h])
    time.sleep(0.3)  # the probes' connections are gone
    held = []
    try:
        for i in range(3):
            s = connect(d.port)
            s.sendall(("GET /held/%d HTTP/1.1\r\nHost: %s\r\n\r\n" % (i, h)).encode())
            rs, how = read_responses(s, 1)
            eq([r.status for r in rs], [200], "held connection %d (%s)" % (i, how))
            held.append(s)
        s = connect(d.port)
        try:
            try:
                s.sendall(("GET /fourth HTTP/1.1\r\nHost: %s\r\n\r\n" % h).encode())
            except OSError:
                pass
            data, how = recv_all(s, timeout=3)
        finally:
            s.close()
        check(how in ("eof", "reset") and raw_status(data) in (None, 503),
              "a 4th connection with max_connections 3: %s, %r (expected it closed at once)" % (
                  how, data[:100]))
        held.pop().close()
        time.sleep(0.2)
        res = curl_many([d.url("/again")], headers=["Host: " + h])
        eq(res[0][0], 200, "a new connection once one of the three closed")
    finally:
        for s in held:
            s.close()

