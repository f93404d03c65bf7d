"""Data plane access log (JSON and nginx combined) and Prometheus metrics
(APISIX names) moving with traffic. Each test has its own data plane, so
counters start from zero; the control plane and upstreams are shared."""

import json
import os
import re
import time

from harness import Fail, T, check, eq, free_port, uid, wait_until
from dp_harness import (connect, curl_many, dp_env, metric_sum, new_dp, read_responses,
                        wait_serving)


def env_of(ctx):
    return dp_env(ctx, "obs", dps=0, upstreams=("a",))


def read_lines(path, n, timeout=3):
    def ok():
        try:
            with open(path) as f:
                lines = [ln for ln in f.read().splitlines() if ln]
        except OSError:
            return None
        return lines if len(lines) >= n else None
    lines = wait_until(ok, T(timeout))
    if not lines:
        try:
            have = open(path).read()
        except OSError:
            have = "(no file)"
        raise Fail("access log %s: expected %d lines, have: %r" % (path, n, have[-1000:]))
    return lines


def test_access_log_json(ctx):
    env = env_of(ctx)
    a = env.ups["a"]
    log = os.path.join(ctx.tmpdir(), "access.log")
    d = new_dp(ctx, env.cp, name="alog", access_log=log)
    t = uid("al")
    env.route(t, {"uri": "/%s/*" % t, "upstream": env.up("a")})
    dead = "127.0.0.1:%d" % free_port()
    env.route(t + "-dead", {"uri": "/%s-dead" % t, "upstream": {
        "type": "roundrobin", "nodes": {dead: 1}}})
    wait_serving(d, "/%s-dead" % t, pred=lambda r: r.status == 502)
    wait_serving(d, "/%s/probe" % t)
    open(log, "w").close()  # forget the probes (the file is opened O_APPEND)
    ua = "e2e-agent/1.0 (\"quoted\")"
    r1 = d.get("/%s/one?x=1&y=%%20" % t, headers=["User-Agent: " + ua, "Host: h1.example"])
    r2 = d.req("POST", "/%s/two" % t, body="abc")
    r3 = d.get("/no-route-%s" % t)
    r4 = d.get("/%s-dead" % t)
    eq([r.status for r in (r1, r2, r3, r4)], [200, 200, 404, 502], "statuses")
    lines = read_lines(log, 4)
    recs = []
    for ln in lines:
        try:
            recs.append(json.loads(ln))
        except ValueError:
            raise Fail("access log line is not JSON: %r" % ln)
    by_uri = {x.get("uri"): x for x in recs}
    one = by_uri.get("/%s/one?x=1&y=%%20" % t)
    check(one is not None, "no line for the first request: %s" % lines)
    for k in ("time", "remote_addr", "method", "uri", "status", "bytes_sent", "request_time",
              "upstream_addr", "upstream_status", "upstream_response_time", "route_id",
              "user_agent", "host"):
        check(k in one, "access log field %r missing: %s" % (k, one))
    check(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", one["time"]), "time %r" % one["time"])
    eq((one["method"], one["status"], one["remote_addr"], one["route_id"], one["host"],
        one["user_agent"], one["upstream_addr"], str(one["upstream_status"])),
       ("GET", 200, "127.0.0.1", t, "h1.example", ua, a.addr, "200"), "fields of a 200")
    check(one["bytes_sent"] >= len(r1.body), "bytes_sent %r < body %d" % (
        one["bytes_sent"], len(r1.body)))
    check(isinstance(one["request_time"], (int, float)) and 0 <= one["request_time"] < 5,
          "request_time %r" % one["request_time"])
    two = by_uri.get("/%s/two" % t)
    eq((two and two["method"], two and two["status"]), ("POST", 200), "POST line")
    nr = by_uri.get("/no-route-%s" % t)
    eq((nr and nr["status"], nr and nr["route_id"], nr and nr["upstream_addr"]), (404, "", ""),
       "no-route line")
    dl = by_uri.get("/%s-dead" % t)
    check(dl and dl["status"] == 502 and dead in dl["upstream_addr"],
          "502 line names the refusing node: %s" % dl)


def test_access_log_499_when_client_goes_away(ctx):
    env = env_of(ctx)
    log = os.path.join(ctx.tmpdir(), "access.log")
    d = new_dp(ctx, env.cp, name="a499", access_log=log, workers=1)
    t = uid("ab")
    env.route(t, {"uri": "/*", "hosts": ["%s.test" % t], "upstream": env.up("a")})
    wait_serving(d, "/ok", headers=["Host: %s.test" % t])
    open(log, "w").close()
    s = connect(d.port)
    s.sendall(("GET /delay/1?gone=1 HTTP/1.1\r\nHost: %s.test\r\n\r\n" % t).encode())
    time.sleep(0.3)
    s.close()
    line = wait_until(lambda: [x for x in open(log).read().splitlines() if "gone=1" in x],
                      T(3))
    check(line, "no access log line for the aborted request")
    eq(json.loads(line[0])["status"], 499, "status logged for a client that went away")


def test_access_log_combined_to_stdout(ctx):
    env = env_of(ctx)
    d = new_dp(ctx, env.cp, name="clog", access_log="-", access_log_format="combined")
    t = uid("cl")
    env.route(t, {"uri": "/%s/*" % t, "upstream": env.up("a")})
    wait_serving(d, "/%s/probe" % t)
    r = d.get("/%s/page?q=1" % t, headers=["User-Agent: combined-agent/2",
                                            "Referer: http://ref.example/x"])
    eq(r.status, 200, "status")
    rx = re.compile(r'^127\.0\.0\.1 - - \[\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] '
                    r'"GET /%s/page\?q=1 HTTP/1\.1" 200 (\d+) "http://ref\.example/x" '
                    r'"combined-agent/2"$' % re.escape(t), re.M)
    m = wait_until(lambda: rx.search(d.stdout()), T(3))
    check(m, "no nginx combined line for the request on stdout; stdout tail: %r" % (
        d.stdout()[-600:]))
    eq(int(m.group(1)), len(r.body), "body bytes in the combined line ($body_bytes_sent)")


def scrape(d):
    return d.metrics()


def delta(before, after, name, **labels):
    return metric_sum(after, name, **labels) - metric_sum(before, name, **labels)


def test_metrics_move_with_traffic(ctx):
    """As in APISIX, requests are recorded where the prometheus plugin is:
    on the route, and (for requests no route matched) in a global rule."""
    env = env_of(ctx)
    d = new_dp(ctx, env.cp, name="metrics", workers=2)
    t = uid("mt")
    h = "%s.test" % t
    env.put("global_rules/" + t, {"plugins": {"prometheus": {}}})
    try:
        metrics_move(ctx, env, d, t, h)
    finally:
        env.delete("global_rules/" + t)


def metrics_move(ctx, env, d, t, h):
    last = env.route(t, {"uri": "/*", "hosts": [h], "upstream": env.up("a"),
                         "plugins": {"prometheus": {}}})
    wait_serving(d, "/ok", headers=["Host: " + h])
    m0 = scrape(d)
    res = curl_many([d.url("/ok/%d" % i) for i in range(5)], headers=["Host: " + h], close=True)
    res += curl_many([d.url("/status/503") for _ in range(3)], headers=["Host: " + h],
                     close=True)
    res += curl_many([d.url("/nothing-%s" % t) for _ in range(2)], close=True)
    eq([c for c, _ in res], [200] * 5 + [503] * 3 + [404] * 2, "statuses")
    m1 = scrape(d)
    eq(delta(m0, m1, "apisix_http_status", code="200", route=t), 5, "apisix_http_status 200")
    eq(delta(m0, m1, "apisix_http_status", code="503", route=t), 3, "apisix_http_status 503")
    eq(delta(m0, m1, "apisix_http_status", code="404", route=""), 2,
       "apisix_http_status 404 without a route")
    eq(delta(m0, m1, "apisix_http_requests_total"), 10, "apisix_http_requests_total")
    for typ in ("request", "upstream"):
        eq(delta(m0, m1, "apisix_http_latency_count", type=typ, route=t, code="200"), 5,
           "apisix_http_latency_count type=%s" % typ)
        eq(delta(m0, m1, "apisix_http_latency_bucket", type=typ, route=t, code="200",
                 le="+Inf"), 5, "apisix_http_latency_bucket le=+Inf type=%s" % typ)
    body_bytes = sum(len(b) for c, b in res[:5])
    check(delta(m0, m1, "apisix_bandwidth", type="egress", route=t, code="200") >= body_bytes,
          "apisix_bandwidth egress grew by less than the bodies sent (%d)" % body_bytes)
    check(delta(m0, m1, "apisix_bandwidth", type="ingress", route=t, code="200") >= 5 * 40,
          "apisix_bandwidth ingress did not grow with 5 requests")
    names = [lb.get("hostname") for n, lb, v in m1 if n == "apisix_node_info"]
    eq(names, [d.node_id], "apisix_node_info hostname")
    eq(metric_sum(m1, "apisix_config_revision"), last["modifiedIndex"],
       "apisix_config_revision")
    # Connections: three idle keep-alive connections show as active.
    held = []
    try:
        for i in range(3):
            s = connect(d.port)
            s.sendall(("GET /held HTTP/1.1\r\nHost: %s\r\n\r\n" % h).encode())
            read_responses(s, 1)
            held.append(s)
        got = wait_until(lambda: metric_sum(scrape(d), "apisix_nginx_http_current_connections",
                                            state="active") >= 3, T(2.5), interval=0.2)
        check(got, "apisix_nginx_http_current_connections{state=active} did not reach 3 "
              "with 3 open connections within 2.5 s: %s" % metric_sum(
                  scrape(d), "apisix_nginx_http_current_connections", state="active"))
    finally:
        for s in held:
            s.close()
    acc = metric_sum(scrape(d), "apisix_nginx_http_current_connections", state="accepted")
    check(acc >= 13, "connections accepted: %s (expected at least 13)" % acc)
    check(wait_until(lambda: metric_sum(scrape(d), "apisix_nginx_http_current_connections",
                                        state="active") <= 1, T(2.5), interval=0.2),
          "active connections did not fall after closing them")


def test_metrics_labels_like_apisix(ctx):
    """APISIX fills matched_uri, matched_host and node in apisix_http_status."""
    env = env_of(ctx)
    a = env.ups["a"]
    d = new_dp(ctx, env.cp, name="labels", workers=1)
    t = uid("lb")
    env.route(t, {"uri": "/%s/*" % t, "hosts": ["%s.test" % t], "upstream": env.up("a"),
                  "plugins": {"prometheus": {}}})
    wait_serving(d, "/%s/x" % t, headers=["Host: %s.test" % t])
    series = [lb for n, lb, v in scrape(d) if n == "apisix_http_status" and lb.get("route") == t]
    check(series, "no apisix_http_status series for route %s" % t)
    lb = series[0]
    eq((lb.get("matched_uri"), lb.get("matched_host"), lb.get("node")),
       ("/%s/*" % t, "%s.test" % t, a.addr.split(":")[0]),
       "apisix_http_status labels matched_uri, matched_host, node")

