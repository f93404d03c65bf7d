"""Data plane routing (APISIX semantics), services and plugin configs, what
the upstream receives (Host, X-Forwarded-*), and hot configuration changes:
one control plane, two data planes with two workers each, real upstreams.
Every check runs through both data planes."""

import json
import threading
import time

from harness import Fail, T, check, eq, expect_status, uid, wait_until
from dp_harness import curl_many, dp_env, wait_serving

NOT_FOUND = {"error_msg": "404 Route Not Found"}


def env_of(ctx):
    return dp_env(ctx, "routing", upstreams=("a", "b", "c"))


def server(r):
    """The upstream that answered (from its echo body)."""
    if r.status != 200:
        raise Fail("%s: expected 200 from an upstream; body %s" % (r.where(), r.text[:300]))
    return r.j["server"]


def expect_404(r):
    expect_status(r, 404)
    eq(r.j, NOT_FOUND, "%s body" % r.where())
    check(r.headers.get("content-type", "").startswith("application/json"),
          "%s: 404 Content-Type %r, expected application/json" % (
              r.where(), r.headers.get("content-type")))


def each(env, fn):
    for d in env.dps:
        fn(d)


# ---------------------------------------------------------------------------
# matching


def test_no_route_is_404_json(ctx):
    env = env_of(ctx)
    for d in env.dps:
        expect_404(d.get("/nothing-here-%s" % uid()))
        expect_404(d.req("POST", "/", body="x"))


def test_exact_uri(ctx):
    env = env_of(ctx)
    t = uid("ex")
    env.route(t, {"uri": "/%s/exact" % t, "upstream": env.up("a")})
    wait_serving(env.dps, "/%s/exact" % t)
    for d in env.dps:
        r = d.get("/%s/exact?q=1&z=2" % t)
        eq(server(r), "a", "upstream of the exact uri")
        eq(r.j["target"], "/%s/exact?q=1&z=2" % t, "request target seen by the upstream")
        eq(r.headers.get("x-upstream"), "a", "X-Upstream header passed back to the client")
        expect_404(d.get("/%s/exact/more" % t))
        expect_404(d.get("/%s/exac" % t))
        expect_404(d.get("/%s/exactly" % t))


def test_path_normalised_for_matching(ctx):
    """Routes match nginx's $uri: percent-decoded, dot segments resolved,
    repeated slashes merged."""
    env = env_of(ctx)
    t = uid("norm")
    env.route(t, {"uri": "/%s/exact" % t, "upstream": env.up("b")})
    wait_serving(env.dps, "/%s/exact" % t)
    for d in env.dps:
        for p in ("/%s/ex%%61ct" % t, "/%s/x/../exact" % t, "/%s/./exact" % t,
                  "//%s//exact" % t):
            r = d.get(p, extra=["--path-as-is"])
            eq(r.status, 200, "%s: %s matches /%s/exact" % (d.name, p, t))
        expect_404(d.get("/%s/exact/.." % t, extra=["--path-as-is"]))


def test_prefix_uri(ctx):
    env = env_of(ctx)
    t = uid("pre")
    env.route(t, {"uri": "/%s/api/*" % t, "upstream": env.up("b")})
    wait_serving(env.dps, "/%s/api/x" % t)
    for d in env.dps:
        for p in ("/api/", "/api/x", "/api/x/y/z", "/api/x?y=1"):
            eq(server(d.get("/%s%s" % (t, p))), "b", "prefix route for %s" % p)
        expect_404(d.get("/%s/apix" % t))
        expect_404(d.get("/%s/other" % t))


def test_uris_list(ctx):
    env = env_of(ctx)
    t = uid("uris")
    env.route(t, {"uris": ["/%s/one" % t, "/%s/two/*" % t], "upstream": env.up("c")})
    wait_serving(env.dps, "/%s/one" % t)
    for d in env.dps:
        eq(server(d.get("/%s/one" % t)), "c", "first uri of uris")
        eq(server(d.get("/%s/two/deep/path" % t)), "c", "prefix in uris")
        expect_404(d.get("/%s/three" % t))


def test_hosts_with_wildcard(ctx):
    env = env_of(ctx)
    t = uid("host")
    env.route(t, {"uri": "/%s" % t, "hosts": ["*.%s.test" % t, "exact-%s.test" % t],
                  "upstream": env.up("a")})
    wait_serving(env.dps, "/%s" % t, headers=["Host: x.%s.test" % t])
    for d in env.dps:
        for h in ("x.%s.test" % t, "deep.sub.%s.test" % t, "exact-%s.test" % t,
                  "exact-%s.test:8080" % t, "X.%s.TEST" % t.upper()):
            r = d.get("/%s" % t, headers=["Host: " + h])
            eq(server(r), "a", "route with hosts for Host %r" % h)
        for h in ("%s.test" % t, "other.test", "x.%s.test.evil" % t, "sub.exact-%s.test" % t):
            expect_404(d.get("/%s" % t, headers=["Host: " + h]))


def test_single_host(ctx):
    env = env_of(ctx)
    t = uid("h1")
    env.route(t, {"uri": "/%s" % t, "host": "only-%s.test" % t, "upstream": env.up("b")})
    wait_serving(env.dps, "/%s" % t, headers=["Host: only-%s.test" % t])
    for d in env.dps:
        expect_404(d.get("/%s" % t))
        eq(server(d.get("/%s" % t, headers=["Host: only-%s.test" % t])), "b", "host route")


def test_methods(ctx):
    env = env_of(ctx)
    t = uid("meth")
    env.route(t, {"uri": "/%s" % t, "methods": ["GET", "POST"], "upstream": env.up("a")})
    wait_serving(env.dps, "/%s" % t)
    for d in env.dps:
        r = d.req("POST", "/%s" % t, body="payload")
        eq(server(r), "a", "POST on a GET/POST route")
        eq((r.j["method"], r.j.get("body")), ("POST", "payload"), "method and body upstream")
        expect_404(d.req("PUT", "/%s" % t, body="x"))
        expect_404(d.req("DELETE", "/%s" % t))


def test_remote_addrs(ctx):
    env = env_of(ctx)
    t = uid("ra")
    env.route(t, {"uri": "/%s" % t, "remote_addrs": ["127.0.0.2", "127.0.1.0/24"],
                  "upstream": env.up("c")})
    wait_serving(env.dps, "/%s" % t, interface="127.0.0.2")
    for d in env.dps:
        eq(server(d.get("/%s" % t, interface="127.0.0.2")), "c", "client 127.0.0.2")
        eq(server(d.get("/%s" % t, interface="127.0.1.77")), "c", "client in 127.0.1.0/24")
        expect_404(d.get("/%s" % t))  # from 127.0.0.1
        expect_404(d.get("/%s" % t, interface="127.0.0.3"))


def test_vars_arg_and_http(ctx):
    env = env_of(ctx)
    t = uid("vars")
    env.route(t, {"uri": "/%s" % t,
                  "vars": [["arg_name", "==", "json"], ["http_x_env", "~~", "^prod"]],
                  "upstream": env.up("b")})
    good = ["X-Env: production"]
    wait_serving(env.dps, "/%s?name=json" % t, headers=good)
    for d in env.dps:
        eq(server(d.get("/%s?a=1&name=json" % t, headers=good)), "b", "vars match")
        expect_404(d.get("/%s?name=yaml" % t, headers=good))
        expect_404(d.get("/%s?name=json" % t, headers=["X-Env: staging"]))
        expect_404(d.get("/%s?name=json" % t))
        expect_404(d.get("/%s" % t, headers=good))


def test_vars_operators(ctx):
    env = env_of(ctx)
    t = uid("vop")
    env.route(t, {"uri": "/%s" % t,
                  "vars": [["arg_n", ">", 10], ["http_x_tier", "in", ["gold", "silver"]],
                           ["arg_block", "!", "==", "yes"]],
                  "upstream": env.up("c")})
    good = ["X-Tier: gold"]
    wait_serving(env.dps, "/%s?n=11" % t, headers=good)
    for d in env.dps:
        eq(server(d.get("/%s?n=50&block=no" % t, headers=["X-Tier: silver"])), "c", "vars ops")
        expect_404(d.get("/%s?n=10" % t, headers=good))
        expect_404(d.get("/%s?n=11" % t, headers=["X-Tier: bronze"]))
        expect_404(d.get("/%s?n=11&block=yes" % t, headers=good))


def test_priority(ctx):
    env = env_of(ctx)
    t = uid("prio")
    env.route(t + "-low", {"uri": "/%s/*" % t, "priority": 0, "upstream": env.up("a")})
    env.route(t + "-high", {"uri": "/%s/*" % t, "priority": 10, "upstream": env.up("b")})
    wait_serving(env.dps, "/%s/x" % t, pred=lambda r: r.status == 200 and r.j["server"] == "b",
                 what="served by the priority-10 route")
    for d in env.dps:
        eq(server(d.get("/%s/y" % t)), "b", "the higher priority wins")
    # An exact uri beats a prefix, whatever the priorities (radix tree: the
    # longest match first, as APISIX).
    env.route(t + "-exact", {"uri": "/%s/exact" % t, "priority": -5, "upstream": env.up("c")})
    wait_serving(env.dps, "/%s/exact" % t, pred=lambda r: r.status == 200 and
                 r.j["server"] == "c", what="served by the exact route")
    env.put("routes/%s-high" % t, {"uri": "/%s/*" % t, "priority": -1, "upstream": env.up("b")})
    wait_serving(env.dps, "/%s/z" % t, pred=lambda r: r.status == 200 and r.j["server"] == "a",
                 what="served by route -low once -high has priority -1")


def test_status_zero_disables(ctx):
    env = env_of(ctx)
    t = uid("st")
    body = {"uri": "/%s" % t, "status": 0, "upstream": env.up("a")}
    env.route(t, body)
    # Give the change time to arrive, then it must still be 404.
    env.route(t + "-probe", {"uri": "/%s-probe" % t, "upstream": env.up("a")})
    wait_serving(env.dps, "/%s-probe" % t)
    for d in env.dps:
        expect_404(d.get("/%s" % t))
    body["status"] = 1
    env.route(t, body)
    wait_serving(env.dps, "/%s" % t)
    env.cp.must("PATCH", "routes/" + t, {"status": 0})
    wait_serving(env.dps, "/%s" % t, pred=lambda r: r.status == 404, what="404 after status 0")


def test_route_with_upstream_id(ctx):
    env = env_of(ctx)
    t = uid("uid")
    env.put("upstreams/" + t, {"type": "roundrobin", "nodes": {env.ups["c"].addr: 1}})
    env.route(t, {"uri": "/%s" % t, "upstream_id": t})
    wait_serving(env.dps, "/%s" % t)
    for d in env.dps:
        eq(server(d.get("/%s" % t)), "c", "route -> upstream_id")
    # Changing the shared upstream changes the route.
    env.put("upstreams/" + t, {"type": "roundrobin", "nodes": {env.ups["a"].addr: 1}})
    wait_serving(env.dps, "/%s" % t, pred=lambda r: r.status == 200 and r.j["server"] == "a",
                 what="served by the upstream's new node")


def test_status_codes_and_bodies_pass_through(ctx):
    env = env_of(ctx)
    t = uid("pt")
    env.route(t, {"uri": "/status/*", "hosts": ["%s.test" % t], "upstream": env.up("a")})
    h = ["Host: %s.test" % t]
    wait_serving(env.dps, "/status/201", pred=lambda r: r.status == 201, headers=h,
                 what="status 201 from the upstream")
    for d in env.dps:
        for code in (200, 201, 301, 404, 418, 500, 503):
            r = d.get("/status/%d" % code, headers=h)
            eq(r.status, code, "status passed through")
            eq(r.j["server"], "a", "body of the upstream's %d" % code)
        r = d.get("/status/204", headers=h)
        eq((r.status, r.body), (204, b""), "204 without a body")
        r = d.req("HEAD", "/status/200", headers=h, extra=["-I"])
        eq(r.status, 200, "HEAD")


# ---------------------------------------------------------------------------
# services and plugin configs


def test_service_upstream_merged(ctx):
    env = env_of(ctx)
    t = uid("svc")
    env.put("services/" + t, {"upstream": env.up("b")})
    env.route(t + "-1", {"uri": "/%s/one" % t, "service_id": t})
    env.route(t + "-2", {"uri": "/%s/two" % t, "service_id": t, "upstream": env.up("c")})
    env.put("upstreams/" + t, {"type": "roundrobin", "nodes": {env.ups["a"].addr: 1}})
    env.put("services/%s-u" % t, {"upstream_id": t})
    env.route(t + "-3", {"uri": "/%s/three" % t, "service_id": t + "-u"})
    for p in ("one", "two", "three"):
        wait_serving(env.dps, "/%s/%s" % (t, p))
    for d in env.dps:
        eq(server(d.get("/%s/one" % t)), "b", "route without upstream: the service's")
        eq(server(d.get("/%s/two" % t)), "c", "route's own upstream over the service's")
        eq(server(d.get("/%s/three" % t)), "a", "service with upstream_id")
    # Changing the service changes its routes.
    env.put("services/" + t, {"upstream": env.up("a")})
    wait_serving(env.dps, "/%s/one" % t, pred=lambda r: r.status == 200 and
                 r.j["server"] == "a", what="served by the service's new upstream")


# ---------------------------------------------------------------------------
# what the upstream receives


def test_pass_host(ctx):
    env = env_of(ctx)
    t = uid("ph")
    a = env.ups["a"]
    env.route(t + "-pass", {"uri": "/%s/pass" % t, "upstream": {
        "type": "roundrobin", "nodes": {a.addr: 1}, "pass_host": "pass"}})
    env.route(t + "-node", {"uri": "/%s/node" % t, "upstream": {
        "type": "roundrobin", "nodes": {a.addr: 1}, "pass_host": "node"}})
    env.route(t + "-rw", {"uri": "/%s/rw" % t, "upstream": {
        "type": "roundrobin", "nodes": {a.addr: 1}, "pass_host": "rewrite",
        "upstream_host": "rewritten.example"}})
    for p in ("pass", "node", "rw"):
        wait_serving(env.dps, "/%s/%s" % (t, p))
    for d in env.dps:
        h = ["Host: client.example:8000"]
        eq(d.get("/%s/pass" % t, headers=h).j["headers"].get("host"), "client.example:8000",
           "pass_host pass: the client's Host")
        eq(d.get("/%s/pass" % t).j["headers"].get("host"), "127.0.0.1:%d" % d.port,
           "pass_host pass: curl's default Host")
        eq(d.get("/%s/node" % t, headers=h).j["headers"].get("host"), a.addr,
           "pass_host node: the node's host:port")
        eq(d.get("/%s/rw" % t, headers=h).j["headers"].get("host"), "rewritten.example",
           "pass_host rewrite: upstream_host")


def test_forwarded_headers(ctx):
    env = env_of(ctx)
    t = uid("xff")
    env.route(t, {"uri": "/%s" % t, "upstream": env.up("b")})
    wait_serving(env.dps, "/%s" % t)
    for d in env.dps:
        hd = d.get("/%s" % t).j["headers"]
        eq(hd.get("x-forwarded-for"), "127.0.0.1", "X-Forwarded-For without a client value")
        eq(hd.get("x-real-ip"), "127.0.0.1", "X-Real-IP")
        eq(hd.get("x-forwarded-proto"), "http", "X-Forwarded-Proto")
        hd = d.get("/%s" % t, headers=["X-Forwarded-For: 10.9.8.7"],
                   interface="127.0.0.5").j["headers"]
        eq(hd.get("x-forwarded-for"), "10.9.8.7, 127.0.0.5",
           "X-Forwarded-For appends the client address")
        eq(hd.get("x-real-ip"), "127.0.0.5", "X-Real-IP is the client address")
        r = d.get("/%s" % t, headers=["Connection: keep-alive", "Keep-Alive: timeout=5",
                                      "Proxy-Connection: x", "TE: trailers",
                                      "X-Custom: kept"])
        hd = r.j["headers"]
        eq(hd.get("x-custom"), "kept", "an end-to-end header reaches the upstream")
        check("keep-alive" not in hd and "te" not in hd,
              "hop-by-hop headers Keep-Alive and TE must not reach the upstream (nginx "
              "clears them): %s" % json.dumps(hd))


# ---------------------------------------------------------------------------
# hot changes


def test_dataplanes_acknowledge_revision(ctx):
    """Both data planes show in GET /apisix/admin/dataplanes with the
    revision of the last write acknowledged."""
    env = env_of(ctx)
    t = uid("ack")
    rev = env.route(t, {"uri": "/%s" % t, "upstream": env.up("a")})["modifiedIndex"]
    want = {d.node_id for d in env.dps}
    last = [None]

    def acked():
        last[0] = {x.get("node_id"): x.get("revision") for x in env.cp.dataplanes()["list"]}
        return all(last[0].get(n, -1) >= rev for n in want)
    check(wait_until(acked, T(2), interval=0.05),
          "data planes %s did not acknowledge revision %d within 2 s: %s" % (
              sorted(want), rev, last[0]))


def test_put_serves_within_a_second_and_delete_removes(ctx):
    env = env_of(ctx)
    t = uid("hot")
    path = "/%s" % t
    for d in env.dps:
        expect_404(d.get(path))
    env.route(t, {"uri": path, "upstream": env.up("a")})
    took = wait_serving(env.dps, path, timeout=3, streak=3)
    check(took <= T(1.5), "a PUT took %.2fs to serve on both data planes (expected ~1 s)" % took)
    # PATCH of the route's upstream nodes.
    env.cp.must("PATCH", "routes/%s/upstream/nodes" % t, {env.ups["c"].addr: 1})
    took = wait_serving(env.dps, path, pred=lambda r: r.status == 200 and r.j["server"] == "c",
                        timeout=3, streak=3, what="served by c after the PATCH")
    check(took <= T(1.5), "a PATCH took %.2fs to serve (expected ~1 s)" % took)
    env.delete("routes/" + t)
    took = wait_serving(env.dps, path, pred=lambda r: r.status == 404, timeout=3, streak=3,
                        what="404 after DELETE")
    check(took <= T(1.5), "a DELETE took %.2fs to apply (expected ~1 s)" % took)
    for d in env.dps:
        expect_404(d.get(path))


def test_change_during_slow_request(ctx):
    """A request in flight keeps the configuration it started with."""
    env = env_of(ctx)
    t = uid("slow")
    env.route(t, {"uri": "/slow/*", "hosts": ["%s.test" % t], "upstream": env.up("a")})
    h = ["Host: %s.test" % t]
    wait_serving(env.dps, "/slow/1/0", headers=h)
    results = {}

    def slow(d):
        results[d.name] = d.get("/slow/12/0.1", headers=h, timeout=T(10))
    threads = [threading.Thread(target=slow, args=(d,)) for d in env.dps]
    for th in threads:
        th.start()
    time.sleep(0.3)
    env.route(t, {"uri": "/slow/*", "hosts": ["%s.test" % t], "upstream": env.up("b")})
    wait_serving(env.dps, "/slow/1/0", headers=h,
                 pred=lambda r: r.status == 200 and r.headers.get("x-upstream") == "b",
                 what="new requests served by b")
    env.delete("routes/" + t)
    wait_serving(env.dps, "/slow/1/0", headers=h, pred=lambda r: r.status == 404,
                 what="404 after the delete")
    for th in threads:
        th.join(T(15))
    for d in env.dps:
        r = results.get(d.name)
        check(r is not None, "%s: the slow request did not finish" % d.name)
        eq(r.status, 200, "%s: status of the slow request across the change" % d.name)
        eq(r.headers.get("x-upstream"), "a", "%s: the slow request's upstream" % d.name)
        eq(r.body, b"".join(b"line %04d\n" % i for i in range(12)),
           "%s: body of the slow request across two changes" % d.name)


def test_many_routes_one_snapshot(ctx):
    """Fifty routes written in a row all serve on both data planes."""
    env = env_of(ctx)
    t = uid("bulk")
    for i in range(50):
        env.route("%s-%d" % (t, i), {"uri": "/%s/%d" % (t, i),
                                     "upstream": env.up("abc"[i % 3])})
    wait_serving(env.dps, "/%s/49" % t)
    for d in env.dps:
        res = curl_many([d.url("/%s/%d" % (t, i)) for i in range(50)])
        got = [json.loads(b)["server"] if c == 200 else c for c, b in res]
        eq(got, ["abc"[i % 3] for i in range(50)], "%s: upstream of each of 50 routes" % d.name)

