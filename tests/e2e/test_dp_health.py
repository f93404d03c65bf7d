"""Upstream health checks (APISIX checks.active / checks.passive): a node
that fails its active checks stops getting traffic and gets it again once
it passes them; a node that answers requests with failing statuses is taken
out by passive checks. Each test uses its own upstream servers."""

import time

from harness import Fail, T, check, eq, uid, wait_until
from dp_harness import curl_many, dp_env, new_upstream, servers_of, wait_serving


def env_of(ctx):
    return dp_env(ctx, "health", dps=2, workers=2, upstreams=())


def route(env, t, x, y, checks):
    env.route(t, {"uri": "/%s/*" % t, "upstream": {
        "type": "roundrobin", "nodes": {x.addr: 1, y.addr: 1}, "checks": checks}})
    wait_serving(env.dps, "/%s/probe" % t)


def share(d, t, n=20):
    """Servers answering n requests, each on its own connection."""
    return servers_of(curl_many([d.url("/%s/%d" % (t, i)) for i in range(n)], close=True))


def wait_share(env, t, pred, timeout, what):
    last = {}

    def ok():
        for d in env.dps:
            last[d.name] = share(d, t)
            if not pred(last[d.name]):
                return False
        return True
    if not wait_until(ok, T(timeout), interval=0.1):
        raise Fail("%s within %.0fs; last answers per data plane: %s" % (what, T(timeout), last))


ACTIVE = {"type": "http", "http_path": "/health", "timeout": 1,
          "healthy": {"interval": 1, "successes": 2},
          "unhealthy": {"interval": 1, "http_failures": 2}}


def test_active_check_takes_node_out_and_back(ctx):
    env = env_of(ctx)
    x = new_upstream(ctx, "x")
    y = new_upstream(ctx, "y")
    t = uid("hc")
    route(env, t, x, y, {"active": ACTIVE})
    check(wait_until(lambda: x.stats()["health_checks"] >= 2, T(4)),
          "no active health check reached node x (GET /health) within 4 s")
    eq(set(share(env.dps[0], t)), {"x", "y"}, "both nodes serve while healthy")
    x.set_healthy(False)
    wait_share(env, t, lambda c: c == {"y": 20}, 6,
               "node x (failing /health) taken out on both data planes")
    time.sleep(1.0)
    for d in env.dps:
        eq(share(d, t), {"y": 20}, "%s: still only y a second later" % d.name)
    x.set_healthy(True)
    wait_share(env, t, lambda c: c.get("x", 0) >= 5 and set(c) == {"x", "y"}, 6,
               "node x back in rotation after passing its checks")


def test_active_check_on_refusing_node(ctx):
    """A node that stops listening is taken out by a tcp check: with
    retries 0 no request is sent to it (no 502), and it comes back when it
    listens again."""
    env = env_of(ctx)
    x = new_upstream(ctx, "x")
    y = new_upstream(ctx, "y")
    t = uid("hr")
    env.route(t, {"uri": "/%s/*" % t, "upstream": {
        "type": "roundrobin", "retries": 0, "nodes": {x.addr: 1, y.addr: 1},
        "checks": {"active": dict(ACTIVE, type="tcp")}}})
    wait_serving(env.dps, "/%s/probe" % t)
    eq(set(share(env.dps[0], t)), {"x", "y"}, "both nodes serve while up")
    x.stop()
    wait_share(env, t, lambda c: c == {"y": 20}, 6,
               "node x (refusing connections) taken out: no 502 with retries 0")


def test_passive_check_takes_failing_node_out(ctx):
    env = env_of(ctx)
    x = new_upstream(ctx, "x")
    y = new_upstream(ctx, "y")
    t = uid("hp")
    checks = {
        "active": {"type": "http", "http_path": "/health",
                   "healthy": {"interval": 1, "successes": 1},
                   "unhealthy": {"interval": 30, "http_failures": 1}},
        "passive": {"healthy": {"http_statuses": [200], "successes": 3},
                    "unhealthy": {"http_statuses": [500], "http_failures": 2}},
    }
    route(env, t, x, y, checks)
    x.set_failing(True)
    for d in env.dps:
        res = curl_many([d.url("/%s/%d" % (t, i)) for i in range(40)], close=True)
        cnt = servers_of(res)
        fails = cnt.get("<500>", 0)
        check(fails <= 2 * d.workers_n,
              "%s: %d of 40 requests got the failing node's 500 (passive check: 2 failures "
              "take it out; %d workers)" % (d.name, fails, d.workers_n))
        tail = servers_of(res[-20:])
        eq(tail, {"y": 20}, "%s: the last 20 of 40 requests" % d.name)
