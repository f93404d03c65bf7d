"""The limit plugins and prometheus end to end, with a real control plane, a
data plane of two workers (the limits hold for the whole node: the workers
share their counters), real upstreams and the real curl.

- limit-count: count + k requests over new connections (spread over both
  workers) admit exactly count; X-RateLimit-* headers on admitted and
  refused answers; rejected_code / rejected_msg and the default page;
  window expiry; the sliding window (airgw's window_type); group shared by
  routes; a quota per consumer after key-auth; bad configurations refused
  by the Admin API;
- limit-req: burst requests delayed, in order; nodelay; over the burst
  refused;
- limit-conn: slow requests in parallel, over conn refused, the count given
  back when requests end (also when the client goes away first); on an
  MQTT stream route (CONNACK "server unavailable");
- prometheus: series only for routes (or global rules) with the plugin;
  prefer_name; the consumer label (the consumer key-auth attached);
- ThingsBoard's host quota: a per-host limit, a whitelist never limited and
  a blacklist always refused (curl --interface 127.0.0.x)."""

import threading
import time

from harness import Fail, T, check, curl, eq, uid, wait_until
from dp_harness import curl_many, dp_env, metric_sum, new_dp, wait_serving
from mqtt_harness import RawMqtt, mqtt_dp, new_broker, probe, wait_probe


def env_of(ctx):
    return dp_env(ctx, "limits", dps=1, workers=2, upstreams=("a",))


def dp_of(env):
    return env.dps[0]


def statuses(res):
    return sorted(c for c, _ in res)


def parallel(fn, n):
    """Runs fn(i) in n threads at once; returns [(result, seconds)] in i
    order."""
    out = [None] * n
    start = threading.Barrier(n)

    def run(i):
        start.wait()
        t0 = time.monotonic()
        try:
            r = fn(i)
        except Exception as e:  # reported by the caller
            r = e
        out[i] = (r, time.monotonic() - t0)
    ts = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for r, _ in out:
        if isinstance(r, Exception):
            raise r
    return out


# ---------------------------------------------------------------------------
# limit-count


def test_limit_count_across_workers(ctx):
    env = env_of(ctx)
    d = dp_of(env)
    t = uid("lc")
    env.route(t, {"uri": "/%s/*" % t, "upstream": env.up("a"), "plugins": {"limit-count": {
        "count": 6, "time_window": 60, "key": "http_x_k", "rejected_code": 429,
        "rejected_msg": "quota of %s exceeded" % t}}})
    wait_serving(d, "/%s/probe" % t, headers=["X-K: probe-" + t])
    # 20 requests, each on its own connection: the kernel spreads them over
    # both workers, which together admit exactly 6.
    res = curl_many([d.url("/%s/r%d" % (t, i)) for i in range(20)],
                    headers=["X-K: flood-" + t], close=True)
    eq(statuses(res), [200] * 6 + [429] * 14, "statuses of 20 requests with count 6")
    refused = [b for c, b in res if c == 429][0]
    eq(refused.strip(), ('{"error_msg":"quota of %s exceeded"}' % t).encode(),
       "refusal body (rejected_msg)")
    r = d.get("/%s/again" % t, headers=["X-K: flood-" + t])
    eq(r.status, 429, "status once the quota is spent")
    eq(r.headers.get("x-ratelimit-limit"), "6", "X-RateLimit-Limit on a refusal")
    eq(r.headers.get("x-ratelimit-remaining"), "0", "X-RateLimit-Remaining on a refusal")
    reset = int(r.headers.get("x-ratelimit-reset", "-1"))
    check(1 <= reset <= 60, "X-RateLimit-Reset %d not within the 60 s window" % reset)
    check(r.headers.get("content-type", "").startswith("application/json"),
          "refusal Content-Type %r" % r.headers.get("content-type"))
    # Another key has its own quota, counted down on every answer.
    for left in (5, 4):
        r = d.get("/%s/other" % t, headers=["X-K: other-" + t])
        eq(r.status, 200, "another key")
        eq((r.headers.get("x-ratelimit-limit"), r.headers.get("x-ratelimit-remaining")),
           ("6", str(left)), "X-RateLimit-Limit / -Remaining on an admitted request")
        check(r.j["path"] == "/%s/other" % t, "admitted request reached the upstream")


def test_limit_count_window_and_default_page(ctx):
    env = env_of(ctx)
    d = dp_of(env)
    t = uid("lw")
    env.route(t, {"uri": "/%s/*" % t, "upstream": env.up("a"), "plugins": {"limit-count": {
        "count": 2, "time_window": 1, "key_type": "var_combination",
        "key": "$http_x_k-$http_x_none", "show_limit_quota_header": False}}})
    wait_serving(d, "/%s/probe" % t, headers=["X-K: probe"], streak=1)
    key = ["X-K: w-" + t]
    first = time.monotonic()
    got = [d.get("/%s/%d" % (t, i), headers=key) for i in range(3)]
    eq([r.status for r in got], [200, 200, 503], "statuses within one window")
    r = got[2]
    check(b"<h1>503 Service Temporarily Unavailable</h1>" in r.body,
          "default refusal page: %r" % r.body[:200])
    check("x-ratelimit-limit" not in r.headers and "x-ratelimit-limit" not in got[0].headers,
          "X-RateLimit headers with show_limit_quota_header false")
    # The window (1 s from the first request) ends: two more.
    time.sleep(max(0.0, first + 1.2 - time.monotonic()))
    eq([d.get("/%s/n%d" % (t, i), headers=key).status for i in range(3)], [200, 200, 503],
       "statuses in the next window")


def test_limit_count_sliding(ctx):
    env = env_of(ctx)
    d = dp_of(env)
    t = uid("ls")
    env.route(t, {"uri": "/%s/*" % t, "upstream": env.up("a"), "plugins": {"limit-count": {
        "count": 4, "time_window": 30, "window_type": "sliding", "key_type": "constant",
        "key": t, "rejected_code": 429}}})
    # The probe's requests count too (constant key): wait on a 200 or 429.
    wait_serving(d, "/%s/probe" % t, pred=lambda r: r.status in (200, 429), streak=1)
    res = curl_many([d.url("/%s/s%d" % (t, i)) for i in range(8)], close=True)
    check(statuses(res).count(200) <= 3 and statuses(res).count(429) >= 5,
          "sliding window of 4 (one spent by the probe) admitted %s" % statuses(res))
    r = d.get("/%s/last" % t)
    eq((r.status, r.headers.get("x-ratelimit-remaining")), (429, "0"), "refused, remaining 0")
    bad = env.cp.api("PUT", "routes/" + t + "-bad", {"uri": "/x", "plugins": {"limit-count": {
        "count": 1, "time_window": 1, "window_type": "rolling"}}})
    eq(bad.status, 400, "window_type outside fixed|sliding")


def test_limit_count_group(ctx):
    env = env_of(ctx)
    d = dp_of(env)
    t = uid("lg")
    conf = {"count": 3, "time_window": 60, "group": "g-" + t, "key_type": "constant",
            "key": "all", "rejected_code": 429}
    for r in ("a", "b"):
        env.route("%s-%s" % (t, r), {"uri": "/%s/%s/*" % (t, r), "upstream": env.up("a"),
                                      "plugins": {"limit-count": dict(conf)}})
    wait_serving(d, "/%s/b/probe" % t, streak=1)  # spends one of the three
    eq(d.get("/%s/a/1" % t).status, 200, "route a")
    eq(d.get("/%s/b/2" % t).status, 200, "route b")
    eq(d.get("/%s/a/3" % t).status, 429, "route a once the group's count is spent")
    eq(d.get("/%s/b/4" % t).status, 429, "route b once the group's count is spent")


def test_limit_count_per_consumer(ctx):
    """key-auth names the consumer (rewrite phase), limit-count counts per
    consumer (access phase): each device key has its own quota."""
    env = env_of(ctx)
    d = dp_of(env)
    t = uid("lp")
    names = [("%s_%d" % (t, i)).replace("-", "_") for i in range(2)]
    for n in names:
        env.put("consumers", {"username": n, "plugins": {"key-auth": {"key": "k-" + n}}})
    env.route(t, {"uri": "/%s/*" % t, "upstream": env.up("a"), "plugins": {
        "key-auth": {}, "limit-count": {"count": 2, "time_window": 60, "key": "consumer_name",
                                        "rejected_code": 429}}})
    wait_serving(d, "/%s/x" % t, pred=lambda r: r.status == 401, streak=1)
    for n in names:
        res = curl_many([d.url("/%s/%d" % (t, i)) for i in range(4)],
                        headers=["apikey: k-" + n], close=True)
        eq([c for c, _ in res], [200, 200, 429, 429], "consumer %s" % n)
    eq(d.get("/%s/nokey" % t).status, 401, "no key: key-auth answers first")


def test_admin_refuses_bad_limits(ctx):
    env = env_of(ctx)
    t = uid("bad")
    cases = [
        {"limit-count": {"count": 0, "time_window": 1}},
        {"limit-count": {"count": 1}},
        {"limit-count": {"count": 1, "time_window": 1, "key_type": "header"}},
        {"limit-req": {"rate": 1, "burst": 1}},
        {"limit-req": {"rate": 0, "burst": 1, "key": "remote_addr"}},
        {"limit-conn": {"conn": 1, "burst": 0, "key": "remote_addr"}},
        {"limit-conn": {"conn": 1, "burst": -1, "default_conn_delay": 1, "key": "x"}},
        {"prometheus": {"prefer_name": "yes"}},
    ]
    for plugins in cases:
        r = env.cp.api("PUT", "routes/" + t, {"uri": "/x", "plugins": plugins})
        eq(r.status, 400, "PUT route with %s" % plugins)
        check("error_msg" in (r.j or {}), "error body for %s: %s" % (plugins, r.text[:200]))


# ---------------------------------------------------------------------------
# limit-req


def test_limit_req_burst_delay(ctx):
    env = env_of(ctx)
    d = dp_of(env)
    t = uid("lr")
    env.route(t, {"uri": "/%s/*" % t, "upstream": env.up("a"), "plugins": {"limit-req": {
        "rate": 1, "burst": 2, "key": "http_x_k", "rejected_code": 429}}})
    env.route(t + "-nd", {"uri": "/%s-nd/*" % t, "upstream": env.up("a"), "plugins": {
        "limit-req": {"rate": 0.5, "burst": 1, "key": "http_x_k", "nodelay": True}}})
    wait_serving(d, "/%s/probe" % t, headers=["X-K: probe"], streak=1)
    wait_serving(d, "/%s-nd/probe" % t, headers=["X-K: probe"], streak=1)

    # Five at once: one now, two delayed (1 s and 2 s: rate 1/s), two
    # refused at once.
    out = parallel(lambda i: d.get("/%s/p%d" % (t, i), headers=["X-K: b-" + t]), 5)
    eq(sorted(r.status for r, _ in out), [200, 200, 200, 429, 429], "statuses")
    by_time = sorted(out, key=lambda x: x[1])
    eq([r.status for r, _ in by_time][-2:], [200, 200],
       "the last two answers are the delayed admissions")
    refused_slowest = max(dt for r, dt in out if r.status == 429)
    check(refused_slowest < by_time[-1][1],
          "refusals came after the delayed requests (%.2fs vs %.2fs)" % (
              refused_slowest, by_time[-1][1]))
    check(by_time[-1][1] >= 1.4, "the second delayed request went on after %.2fs (rate 1/s, "
          "it waits about 2 s)" % by_time[-1][1])

    # nodelay: the burst goes on at once, the rest is refused (503 default).
    out = parallel(lambda i: d.get("/%s-nd/p%d" % (t, i), headers=["X-K: nd-" + t]), 4)
    eq(sorted(r.status for r, _ in out), [200, 200, 503, 503], "nodelay statuses")


# ---------------------------------------------------------------------------
# limit-conn


def test_limit_conn_parallel(ctx):
    env = env_of(ctx)
    d = dp_of(env)
    t = uid("ln")
    env.route(t, {"uri": "/delay/*", "host": t + ".test", "upstream": env.up("a"),
                  "plugins": {"limit-conn": {"conn": 2, "burst": 0, "default_conn_delay": 0.1,
                                             "key": "http_x_k", "rejected_code": 429,
                                             "rejected_msg": "too many"}}})
    host = "Host: %s.test" % t
    wait_serving(d, "/delay/0", headers=[host, "X-K: probe"])
    # Four slow requests at once (1.5 s each): two go through, two are
    # refused at once.
    out = parallel(lambda i: d.get("/delay/1.5", headers=[host, "X-K: p-" + t]), 4)
    eq(sorted(r.status for r, _ in out), [200, 200, 429, 429], "statuses")
    for r, dt in out:
        if r.status == 429:
            eq(r.j, {"error_msg": "too many"}, "refusal body")
    # They ended: the counts came back.
    eq([d.get("/delay/0", headers=[host, "X-K: p-" + t]).status for _ in range(3)],
       [200] * 3, "after the slow requests ended")
    # A client that gives up early (499) gives its count back too.
    got = parallel(lambda i: curl("GET", d.url("/delay/3"), headers=[host, "X-K: g-" + t],
                                  timeout=0.5), 2)
    check(all(r.status == 0 for r, _ in got), "clients gave up: %s" % [r for r, _ in got])

    def free_again():
        out = parallel(lambda i: d.get("/delay/0.3", headers=[host, "X-K: g-" + t]), 2)
        return all(r.status == 200 for r, _ in out)
    check(wait_until(free_again, T(4), interval=0.2),
          "counts of requests whose clients went away were not given back")


def test_limit_conn_burst_delay(ctx):
    env = env_of(ctx)
    d = dp_of(env)
    t = uid("lb")
    env.route(t, {"uri": "/delay/*", "host": t + ".test", "upstream": env.up("a"),
                  "plugins": {"limit-conn": {"conn": 1, "burst": 1, "default_conn_delay": 0.5,
                                             "only_use_default_delay": True,
                                             "key_type": "var_combination",
                                             "key": "$remote_addr $http_x_k"}}})
    host = "Host: %s.test" % t
    wait_serving(d, "/delay/0", headers=[host])
    out = parallel(lambda i: d.get("/delay/1", headers=[host, "X-K: " + t]), 3)
    eq(sorted(r.status for r, _ in out), [200, 200, 503], "conn 1 + burst 1 of 3")


def test_limit_conn_worker_killed(ctx):
    """A worker killed while it holds limit-conn counts: the master gives
    them back (otherwise the key would stay at its limit for good)."""
    env = env_of(ctx)
    d = new_dp(ctx, env.cp, name="limits-crash", workers=2)
    t = uid("lk")
    env.route(t, {"uri": "/delay/*", "host": t + ".test", "upstream": env.up("a"),
                  "plugins": {"limit-conn": {"conn": 1, "burst": 0, "default_conn_delay": 0.1,
                                             "key": "http_x_k"}}})
    host = "Host: %s.test" % t
    wait_serving(d, "/delay/0", headers=[host, "X-K: probe"])
    up = env.ups["a"]
    # The upstream is shared with the tests before (whose abandoned slow
    # requests may still be in flight there): wait for this request's own
    # path to arrive, which it does only after limit-conn took its count.
    base = up.stats()["paths"].get("/delay/8", 0)
    held = threading.Thread(target=lambda: d.get("/delay/8", headers=[host, "X-K: c"],
                                                 timeout=T(10)))
    held.start()
    try:
        check(wait_until(lambda: up.stats()["paths"].get("/delay/8", 0) > base, T(3),
                         interval=0.05),
              "the slow request did not reach the upstream")
        eq(d.get("/delay/0", headers=[host, "X-K: c"]).status, 503,
           "the key while the slow request holds it")
        old = d.workers()
        for slot in sorted(old):
            d.kill_worker(slot)
        d.wait_workers(exclude=old.values())
        eq(d.get("/delay/0", headers=[host, "X-K: c"]).status, 200,
           "the key after the workers holding it were killed")
    finally:
        held.join()


def test_limit_conn_mqtt(ctx):
    """conn 1 per client address on an MQTT stream route. A client's count
    is given back when the data plane sees its connection close, a moment
    after the client closed it: a probe (connect, disconnect) followed at
    once by another client from the same address can meet its own count
    still held. So the test probes only while it holds a session itself
    (probes are then refused, and a refusal takes no count), and it takes
    its sessions by retrying until one is admitted, then keeps it."""
    env = env_of(ctx)
    br = new_broker(ctx, "lconn")
    d = mqtt_dp(ctx, env.cp, name="limits-mq", streams=1, workers=2)
    p = d.stream_ports[0]
    env.put("stream_routes/" + uid("sl"), {
        "server_port": p, "upstream": {"type": "roundrobin", "nodes": {br.addr: 1}},
        "plugins": {"mqtt-proxy": {}, "limit-conn": {
            "conn": 1, "burst": 0, "default_conn_delay": 0.1, "key": "remote_addr"}}})

    def admitted_session(what):
        got = []

        def one():
            try:
                c = RawMqtt(p, uid("hold"), timeout=T(3))
            except (EOFError, ConnectionResetError, ConnectionRefusedError, OSError):
                return False  # no route in that worker yet: closed
            if c.code == (3, 0):
                got.append(c)
                return True
            c.disconnect()
            return False
        check(wait_until(one, T(5), interval=0.05), what)
        return got[0]

    held = admitted_session("no client admitted through the stream route")
    try:
        # Every worker has the route and sees the held count: refused, in
        # a row (a worker without the route would close without CONNACK).
        wait_probe(p, lambda cid, code: code == (3, 3), what="limit-conn on every worker")
        eq(probe(p, uid("c")), (3, 3), "second client from the same host: server unavailable")
        eq(probe(p, uid("c"), level=5), (5, 0x88), "5.0: server unavailable")
        eq(probe(p, uid("c"), bind="127.0.0.2"), (3, 0), "a client from another host")
    finally:
        held.disconnect()
    # The count comes back once the data plane saw the close, and exactly
    # one: with the new session held, the next client is refused again.
    again = admitted_session("the count of the closed session was not given back")
    try:
        eq(probe(p, uid("c")), (3, 3), "still one session per host")
    finally:
        again.disconnect()


# ---------------------------------------------------------------------------
# prometheus


def test_prometheus_only_with_plugin(ctx):
    env = env_of(ctx)
    d = dp_of(env)
    t = uid("pm")
    env.route(t + "-on", {"uri": "/%s/on/*" % t, "upstream": env.up("a"),
                          "plugins": {"prometheus": {}}})
    env.route(t + "-off", {"uri": "/%s/off/*" % t, "upstream": env.up("a")})
    env.route(t + "-nm", {"uri": "/%s/nm/*" % t, "name": "named-" + t, "upstream": env.up("a"),
                          "plugins": {"prometheus": {"prefer_name": True}}})
    for w in ("on", "off", "nm"):
        wait_serving(d, "/%s/%s/probe" % (t, w), streak=1)
    res = curl_many([d.url("/%s/%s/%d" % (t, w, i)) for w in ("on", "off", "nm")
                     for i in range(3)], close=True)
    eq([c for c, _ in res], [200] * 9, "statuses")

    def seen():
        m = d.metrics()
        return (metric_sum(m, "apisix_http_status", route=t + "-on", code="200") >= 4 and
                metric_sum(m, "apisix_http_status", route="named-" + t, code="200") >= 4)
    check(wait_until(seen, T(3)), "no apisix_http_status for the routes with prometheus")
    m = d.metrics()
    eq(metric_sum(m, "apisix_http_status", route=t + "-on", code="200"), 4,
       "requests recorded on the route with prometheus (probe + 3)")
    eq([lb for n, lb, v in m if lb.get("route") == t + "-off"], [],
       "series of the route without prometheus")
    eq([lb for n, lb, v in m if lb.get("route") == t + "-nm"], [],
       "series labelled with the id under prefer_name")
    # The workers publish their connection gauges once a second.
    check(wait_until(lambda: metric_sum(d.metrics(), "apisix_nginx_http_current_connections",
                                        state="accepted") >= 9, T(3), interval=0.1),
          "connection gauges are there without the plugin")


def test_prometheus_consumer_label(ctx):
    """As APISIX (ctx.consumer_name): the consumer key-auth attached labels
    the request's series; a request without one (refused: 401) has
    consumer=""."""
    env = env_of(ctx)
    d = dp_of(env)
    t = uid("pc")
    names = [("%s_%s" % (t, w)).replace("-", "_") for w in ("jack", "rose")]
    for n in names:
        env.put("consumers", {"username": n, "plugins": {"key-auth": {"key": "k-" + n}}})
    env.route(t, {"uri": "/%s/*" % t, "upstream": env.up("a"),
                  "plugins": {"key-auth": {}, "prometheus": {}}})
    # every worker has the route (and the consumers, written before it);
    # the probes (at least 4) are 401s with consumer=""
    wait_serving(d, "/%s/probe" % t, pred=lambda r: r.status == 401, what="401")
    urls = [d.url("/%s/%d" % (t, i)) for i in range(3)]
    eq([c for c, _ in curl_many(urls, headers=["apikey: k-" + names[0]], close=True)],
       [200] * 3, names[0])
    eq([c for c, _ in curl_many(urls[:2], headers=["apikey: k-" + names[1]], close=True)],
       [200] * 2, names[1])
    eq([c for c, _ in curl_many(urls[:1], close=True)], [401], "no key")

    def got():
        return {(lb["consumer"], lb["code"]): v for n, lb, v in d.metrics()
                if n == "apisix_http_status" and lb.get("route") == t}
    want = {(names[0], "200"): 3, (names[1], "200"): 2}

    def done():
        g = got()
        return {k: v for k, v in g.items() if k[1] == "200"} == want and \
            g.get(("", "401"), 0) >= 5
    wait_until(done, T(3))
    g = got()
    eq({k: v for k, v in g.items() if k[1] == "200"}, want,
       "apisix_http_status code 200 by consumer on route %s" % t)
    check(g.get(("", "401"), 0) >= 5, "401s (no consumer) on route %s: %s" % (t, g))
    eq(sorted(g), sorted(list(want) + [("", "401")]), "series of route %s" % t)
    m = d.metrics()
    for n in names:
        check(metric_sum(m, "apisix_bandwidth", type="egress", route=t, consumer=n) > 0,
              "apisix_bandwidth of consumer %s" % n)
        eq(metric_sum(m, "apisix_http_latency_count", type="request", route=t, consumer=n),
           {names[0]: 3, names[1]: 2}[n], "apisix_http_latency_count of consumer %s" % n)
    # one line per label set (consumers keep a route's series apart)
    keys = [(n, tuple(sorted(lb.items()))) for n, lb, v in m if lb.get("route") == t]
    eq(len(keys), len(set(keys)), "duplicate series for route %s" % t)


# ---------------------------------------------------------------------------
# ThingsBoard's host quota


def test_host_quota(ctx):
    """Per host: 3 requests a minute; 127.0.0.2 is whitelisted (never
    limited), 127.0.0.3 blacklisted (always refused). Configured exactly as
    docs/plugins.md "A per-host quota (ThingsBoard style)" says."""
    env = env_of(ctx)
    d = dp_of(env)
    t = uid("hq")
    up = env.up("a")
    env.put("global_rules/" + t, {"plugins": {"ip-restriction": {
        "blacklist": ["127.0.0.3"]}}})
    try:
        env.route(t + "-quota", {"uri": "/api/v1/*", "host": t + ".test", "priority": 0,
                                 "upstream": up, "plugins": {"limit-count": {
                                     "count": 3, "time_window": 60, "key": "remote_addr",
                                     "rejected_code": 429,
                                     "rejected_msg": "Host quota exceeded"}}})
        env.route(t + "-white", {"uri": "/api/v1/*", "host": t + ".test", "priority": 10,
                                 "vars": [["remote_addr", "ipmatch", ["127.0.0.2"]]],
                                 "upstream": up})
        host = ["Host: %s.test" % t]
        wait_serving(d, "/api/v1/probe", headers=host, interface="127.0.0.2")
        urls = [d.url("/api/v1/telemetry?n=%d" % i) for i in range(6)]
        eq(statuses(curl_many(urls, headers=host, close=True, interface="127.0.0.4")),
           [200] * 3 + [429] * 3, "a host over its quota")
        eq(statuses(curl_many(urls, headers=host, close=True, interface="127.0.0.5")),
           [200] * 3 + [429] * 3, "another host has its own quota")
        eq(statuses(curl_many(urls * 2, headers=host, close=True, interface="127.0.0.2")),
           [200] * 12, "the whitelisted host is never limited")
        res = curl_many(urls[:2], headers=host, close=True, interface="127.0.0.3")
        eq(statuses(res), [403, 403], "the blacklisted host is always refused")
        check(b"not allowed" in res[0][1], "blacklist body: %r" % res[0][1][:120])
        r = d.get("/api/v1/telemetry", headers=host, interface="127.0.0.4")
        eq((r.status, r.j), (429, {"error_msg": "Host quota exceeded"}), "quota refusal body")
    finally:
        env.delete("global_rules/" + t)
