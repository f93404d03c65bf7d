"""Data plane load balancing and upstream failures: roundrobin weights,
chash (arg, header, remote_addr), least_conn, ewma, retries, connect and read
timeouts (504), upstreams that close or reset. One control plane, two data
planes with two workers each, real upstreams; checks run through both data
planes unless a test needs one."""

import socket
import time

from harness import Fail, T, check, eq, free_port, uid
from dp_harness import (FullBacklog, LoadLoop, Silent, connect, curl_many, dp_env,
                        new_upstream, read_responses, servers_of, wait_serving)


def env_of(ctx):
    return dp_env(ctx, "bal", upstreams=("a", "b", "c"))


def nodes(env, **weights):
    return {env.ups[n].addr: w for n, w in weights.items()}


def set_route(env, t, upstream, **extra):
    """Route /t/* and waits until every worker of both data planes has it:
    a probe route written after it serves (changes apply in order)."""
    body = {"uri": "/%s/*" % t, "upstream": upstream}
    body.update(extra)
    env.route(t, body)
    env.route(t + "-probe", {"uri": "/%s-probe" % t, "upstream": env.up("a")})
    wait_serving(env.dps, "/%s-probe" % t)


def test_roundrobin_weights(ctx):
    env = env_of(ctx)
    t = uid("rr")
    set_route(env, t, {"type": "roundrobin", "nodes": nodes(env, a=3, b=1, c=0)})
    for d in env.dps:
        # Each request on its own connection: both workers balance.
        res = curl_many([d.url("/%s/%d" % (t, i)) for i in range(100)], close=True)
        cnt = servers_of(res)
        check(set(cnt) <= {"a", "b"}, "%s: weight 0 node or errors used: %s" % (d.name, cnt))
        check(70 <= cnt.get("a", 0) <= 80 and 20 <= cnt.get("b", 0) <= 30,
              "%s: roundrobin 3:1 over 100 requests gave %s (expected about 75/25)" % (
                  d.name, cnt))
        # On one connection (one worker) the smooth round robin is exact.
        res = curl_many([d.url("/%s/k%d" % (t, i)) for i in range(40)])
        cnt = servers_of(res)
        eq(cnt, {"a": 30, "b": 10}, "%s: 40 requests on one connection" % d.name)


def test_roundrobin_equal_weights_spread(ctx):
    env = env_of(ctx)
    t = uid("rr3")
    set_route(env, t, {"type": "roundrobin", "nodes": nodes(env, a=1, b=1, c=1)})
    d = env.dps[0]
    cnt = servers_of(curl_many([d.url("/%s/%d" % (t, i)) for i in range(30)]))
    eq(cnt, {"a": 10, "b": 10, "c": 10}, "30 requests over three equal nodes, one connection")


def sticky_map(d, urls_by_key, headers_by_key=None, interface_by_key=None, rounds=3):
    """key -> the one server that answered it over `rounds` requests each
    on a new connection; Fail if a key moved."""
    out = {}
    for k, url in urls_by_key.items():
        hs = (headers_by_key or {}).get(k)
        iface = (interface_by_key or {}).get(k)
        res = curl_many([url] * rounds, headers=hs, close=True, interface=iface)
        got = servers_of(res)
        if len(got) != 1 or list(got)[0].startswith("<"):
            raise Fail("%s: chash key %r was answered by %s (expected one node always)" % (
                d.name, k, got))
        out[k] = list(got)[0]
    return out


def test_chash_on_arg(ctx):
    env = env_of(ctx)
    t = uid("ch")
    set_route(env, t, {"type": "chash", "hash_on": "vars", "key": "arg_device",
                       "nodes": nodes(env, a=1, b=1, c=1)})
    maps = []
    for d in env.dps:
        keys = {"dev-%d" % i: d.url("/%s/x?device=dev-%d" % (t, i)) for i in range(24)}
        maps.append(sticky_map(d, keys))
    check(len(set(maps[0].values())) >= 2,
          "24 device ids all hashed to one node: %s" % maps[0])
    eq(maps[1], maps[0], "chash mapping on data plane 2 vs data plane 1")


def test_chash_on_header(ctx):
    env = env_of(ctx)
    t = uid("chh")
    set_route(env, t, {"type": "chash", "hash_on": "header", "key": "X-Device",
                       "nodes": nodes(env, a=1, b=1, c=1)})
    maps = []
    for d in env.dps:
        keys = {"h%d" % i: d.url("/%s/y" % t) for i in range(24)}
        hdrs = {"h%d" % i: ["X-Device: device-%d" % i] for i in range(24)}
        maps.append(sticky_map(d, keys, headers_by_key=hdrs))
    check(len(set(maps[0].values())) >= 2, "24 header values all on one node: %s" % maps[0])
    eq(maps[1], maps[0], "chash on header: data plane 2 vs data plane 1")


def test_chash_on_remote_addr(ctx):
    env = env_of(ctx)
    t = uid("chr")
    set_route(env, t, {"type": "chash", "hash_on": "vars", "key": "remote_addr",
                       "nodes": nodes(env, a=1, b=1, c=1)})
    maps = []
    for d in env.dps:
        keys = {"127.0.0.%d" % i: d.url("/%s/z" % t) for i in range(2, 20)}
        ifs = {k: k for k in keys}
        maps.append(sticky_map(d, keys, interface_by_key=ifs))
    check(len(set(maps[0].values())) >= 2, "18 client addresses all on one node: %s" % maps[0])
    eq(maps[1], maps[0], "chash on remote_addr: data plane 2 vs data plane 1")


def test_chash_node_removal_moves_only_its_keys(ctx):
    """Consistent hashing: removing one of three nodes moves only the keys
    that were on it."""
    env = env_of(ctx)
    t = uid("chm")
    set_route(env, t, {"type": "chash", "key": "arg_k", "nodes": nodes(env, a=1, b=1, c=1)})
    d = env.dps[0]
    keys = {"k%d" % i: d.url("/%s/m?k=k%d" % (t, i)) for i in range(30)}
    before = sticky_map(d, keys, rounds=2)
    env.route(t, {"uri": "/%s/*" % t, "upstream": {"type": "chash", "key": "arg_k",
                                                    "nodes": nodes(env, a=1, b=1)}})
    wait_serving(env.dps, "/%s/m?k=x" % t,
                 pred=lambda r: r.status == 200 and r.j["server"] in ("a", "b"), streak=6,
                 what="node c removed")
    time.sleep(0.1)
    after = sticky_map(d, keys, rounds=2)
    moved = [k for k in keys if before[k] != "c" and after[k] != before[k]]
    eq(moved, [], "keys that moved although their node stayed")


def test_least_conn(ctx):
    """least_conn sends new requests to the node with fewer requests in
    flight: a slow node gets few of them."""
    env = env_of(ctx)
    slow = new_upstream(ctx, "slow", delay_all=0.5)
    t = uid("lc")
    set_route(env, t, {"type": "least_conn",
                       "nodes": {slow.addr: 1, env.ups["b"].addr: 1}})
    slow.reset()
    env.ups["b"].reset()
    d = env.dps[0]
    loop = LoadLoop(d.url("/%s/lc" % t), threads=3, batch=2).start()
    time.sleep(2.0)
    codes = loop.stop()
    ns, nb = slow.requests(), env.ups["b"].requests()
    eq([c for c in codes if c != 200], [], "statuses other than 200")
    check(nb >= 5 * max(ns, 1),
          "least_conn: slow node got %d requests, fast node %d (expected the fast node to get "
          "at least 5x more)" % (ns, nb))
    # The same load with roundrobin would split evenly: the check above
    # distinguishes the two.


def test_ewma_prefers_fast_node(ctx):
    env = env_of(ctx)
    slow = new_upstream(ctx, "slow", delay_all=0.15)
    t = uid("ew")
    set_route(env, t, {"type": "ewma", "nodes": {slow.addr: 1, env.ups["c"].addr: 1}})
    slow.reset()
    env.ups["c"].reset()
    d = env.dps[0]
    res = curl_many([d.url("/%s/e%d" % (t, i)) for i in range(40)], close=True)
    cnt = servers_of(res)
    check(set(cnt) <= {"slow", "c"}, "errors: %s" % cnt)
    check(cnt.get("slow", 0) <= 8,
          "ewma: the slow node (150 ms) answered %d of 40 sequential requests (fast node %d); "
          "expected a few at most" % (cnt.get("slow", 0), cnt.get("c", 0)))


# ---------------------------------------------------------------------------
# failures


def test_retry_next_node_when_refused(ctx):
    env = env_of(ctx)
    t = uid("rt")
    dead = "127.0.0.1:%d" % free_port()
    set_route(env, t, {"type": "roundrobin", "nodes": {dead: 1, env.ups["a"].addr: 1}})
    for d in env.dps:
        res = curl_many([d.url("/%s/%d" % (t, i)) for i in range(20)], close=True)
        eq(servers_of(res), {"a": 20}, "%s: 20 requests with one refusing node" % d.name)
    # retries: 0 -> no retry: the requests picked for the dead node fail.
    t2 = uid("rt0")
    set_route(env, t2, {"type": "roundrobin", "retries": 0,
                        "nodes": {dead: 1, env.ups["a"].addr: 1}})
    d = env.dps[0]
    res = curl_many([d.url("/%s/%d" % (t2, i)) for i in range(20)])
    cnt = servers_of(res)
    check(set(cnt) == {"a", "<502>"} and cnt["a"] >= 5 and cnt["<502>"] >= 5,
          "retries 0: expected both answers from a and 502s (the refusing node, not "
          "retried) over 20 requests, got %s" % cnt)


def test_all_nodes_refused_is_502(ctx):
    env = env_of(ctx)
    t = uid("dead")
    set_route(env, t, {"type": "roundrobin",
                       "nodes": {"127.0.0.1:%d" % free_port(): 1,
                                 "127.0.0.1:%d" % free_port(): 1}})
    for d in env.dps:
        r = d.get("/%s/x" % t)
        eq(r.status, 502, "every node refuses")
        check("502 Bad Gateway" in r.text, "502 page: %r" % r.text[:200])


def test_connect_timeout_504(ctx):
    env = env_of(ctx)
    bl = FullBacklog()
    try:
        t = uid("ct")
        set_route(env, t, {"type": "roundrobin", "nodes": {bl.addr: 1},
                           "timeout": {"connect": 0.5, "send": 2, "read": 2}})
        for d in env.dps:
            t0 = time.monotonic()
            r = d.get("/%s/x" % t, timeout=T(10))
            dt = time.monotonic() - t0
            eq(r.status, 504, "connect timeout")
            check("504 Gateway Time-out" in r.text or "504 Gateway Timeout" in r.text,
                  "504 page: %r" % r.text[:200])
            check(0.4 <= dt <= T(2.5), "504 after %.2fs with a 0.5 s connect timeout" % dt)
        # With a second node, the request goes on to it.
        t2 = uid("ct2")
        set_route(env, t2, {"type": "roundrobin", "nodes": {bl.addr: 1, env.ups["b"].addr: 1},
                            "timeout": {"connect": 0.3, "send": 2, "read": 2}})
        for d in env.dps:
            res = curl_many([d.url("/%s/%d" % (t2, i)) for i in range(4)], close=True,
                            timeout=T(10))
            eq(servers_of(res), {"b": 4}, "%s: connect timeout then the next node" % d.name)
    finally:
        bl.close()


def test_read_timeout_504(ctx):
    env = env_of(ctx)
    t = uid("read")
    # Routes on a host name, so /hang and /delay/S reach the upstream as is.
    h = "%s.test" % t
    env.route(t + "-h", {"uri": "/*", "hosts": [h], "timeout": {"connect": 1, "send": 1,
                                                                 "read": 0.5},
                         "upstream": {"type": "roundrobin", "nodes": nodes(env, c=1)}})
    wait_serving(env.dps, "/delay/0", headers=["Host: " + h])
    for d in env.dps:
        for path in ("/hang", "/delay/3"):
            t0 = time.monotonic()
            r = d.get(path, headers=["Host: " + h], timeout=T(10))
            dt = time.monotonic() - t0
            eq(r.status, 504, "%s: read timeout on %s" % (d.name, path))
            check(0.4 <= dt <= T(2.0), "%s: 504 after %.2fs with read timeout 0.5 s" % (
                d.name, dt))
        r = d.get("/delay/0.1", headers=["Host: " + h])
        eq(r.status, 200, "%s: a request under the read timeout" % d.name)
    # An upstream object's own timeout applies when the route has none.
    h2 = "%s-up.test" % t
    env.route(t + "-u", {"uri": "/*", "hosts": [h2], "upstream": {
        "type": "roundrobin", "nodes": nodes(env, c=1),
        "timeout": {"connect": 1, "send": 1, "read": 0.4}}})
    wait_serving(env.dps, "/delay/0", headers=["Host: " + h2])
    r = env.dps[0].get("/delay/2", headers=["Host: " + h2], timeout=T(10))
    eq(r.status, 504, "upstream.timeout.read")


def test_read_timeout_silent_node(ctx):
    """A node that accepts and never answers: 504 after the read timeout."""
    env = env_of(ctx)
    s = Silent()
    try:
        t = uid("sil")
        set_route(env, t, {"type": "roundrobin", "nodes": {s.addr: 1}},
                  timeout={"connect": 1, "send": 1, "read": 0.5})
        for d in env.dps:
            t0 = time.monotonic()
            r = d.get("/%s/x" % t, timeout=T(10))
            dt = time.monotonic() - t0
            eq(r.status, 504, "silent node")
            check(dt <= T(2.0), "504 after %.2fs" % dt)
    finally:
        s.close()


def test_upstream_closes_before_answer_502(ctx):
    env = env_of(ctx)
    t = uid("cl")
    h = "%s.test" % t
    env.route(t, {"uri": "/*", "hosts": [h], "upstream": {
        "type": "roundrobin", "nodes": nodes(env, a=1)}})
    wait_serving(env.dps, "/ok", headers=["Host: " + h])
    for d in env.dps:
        r = d.get("/close", headers=["Host: " + h])
        eq(r.status, 502, "%s: the upstream closed without answering" % d.name)
        eq(d.get("/ok", headers=["Host: " + h]).status, 200, "%s: next request" % d.name)


def test_upstream_resets_mid_response(ctx):
    """The upstream sends the head and part of the body, then resets: the
    client gets the head and a truncated body, then the connection closes
    (no hang, no fake end of body); the worker survives."""
    env = env_of(ctx)
    t = uid("mid")
    h = "%s.test" % t
    env.route(t, {"uri": "/*", "hosts": [h], "upstream": {
        "type": "roundrobin", "nodes": nodes(env, b=1)}})
    wait_serving(env.dps, "/ok", headers=["Host: " + h])
    for d in env.dps:
        before = d.workers()
        s = connect(d.port)
        try:
            s.sendall(("GET /close-mid HTTP/1.1\r\nHost: %s\r\n\r\n" % h).encode())
            s.settimeout(T(5))
            data = b""
            how = "eof"
            t0 = time.monotonic()
            while True:
                try:
                    chunk = s.recv(65536)
                except socket.timeout:
                    how = "timeout"
                    break
                except ConnectionResetError:
                    how = "reset"
                    break
                if not chunk:
                    break
                data += chunk
            dt = time.monotonic() - t0
        finally:
            s.close()
        check(how != "timeout", "%s: connection still open %.1fs after the upstream reset" % (
            d.name, dt))
        head, _, body = data.partition(b"\r\n\r\n")
        check(head.startswith(b"HTTP/1.1 200"), "%s: head %r" % (d.name, head[:100]))
        check(b"content-length: 1000000" in head.lower(),
              "%s: the upstream's Content-Length must pass: %r" % (d.name, head))
        check(0 < len(body) < 1000000, "%s: body of %d bytes" % (d.name, len(body)))
        eq(d.workers(), before, "%s: workers after an upstream reset" % d.name)
        eq(d.get("/ok", headers=["Host: " + h]).status, 200, "%s: next request" % d.name)


def test_retry_does_not_repeat_after_response_started(ctx):
    """Two nodes both resetting mid-response: the request is not retried
    once bytes went to the client (each upstream sees it at most once)."""
    env = env_of(ctx)
    a = new_upstream(ctx, "ra")
    b = new_upstream(ctx, "rb")
    t = uid("nr")
    h = "%s.test" % t
    env.route(t, {"uri": "/*", "hosts": [h], "upstream": {
        "type": "roundrobin", "nodes": {a.addr: 1, b.addr: 1}}})
    wait_serving(env.dps, "/ok", headers=["Host: " + h])
    a.reset()
    b.reset()
    d = env.dps[0]
    s = connect(d.port)
    try:
        s.sendall(("GET /close-mid HTTP/1.1\r\nHost: %s\r\n\r\n" % h).encode())
        read_responses(s, 1, timeout=3)
    finally:
        s.close()
    time.sleep(0.2)
    eq(a.requests() + b.requests(), 1, "upstream requests for one /close-mid")

