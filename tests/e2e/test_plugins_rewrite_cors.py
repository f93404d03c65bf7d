"""The plugin framework's first users, proxy-rewrite and cors, through a real
control plane, a data plane (two workers) and echoing upstreams: what the
upstream receives after a rewrite, CORS preflights and response headers,
plugins merged from services and plugin configs (the route's win), global
rules on every route (and on a 404), and a plugin change applied live."""

import time

from harness import Fail, check, eq, expect_status, uid
from dp_harness import dp_env, wait_serving


def env_of(ctx):
    return dp_env(ctx, "plugins", dps=1, workers=2, upstreams=("a", "b"))


def echo(r):
    """The request as the upstream saw it."""
    if r.status != 200:
        raise Fail("%s: expected 200 from the upstream; got %d: %s" % (
            r.where(), r.status, r.text[:300]))
    return r.j


def header_values(info, name):
    return [v for k, v in info["header_list"] if k.lower() == name.lower()]


def serve(env, rid, body, path, pred=None):
    env.route(rid, body)
    wait_serving(env.dps, path, pred=pred)


# ---------------------------------------------------------------------------
# proxy-rewrite


def test_rewrite_uri_keeps_the_query(ctx):
    env = env_of(ctx)
    t = uid("uri")
    serve(env, t, {"uri": "/%s/old" % t, "upstream": env.up("a"),
                   "plugins": {"proxy-rewrite": {"uri": "/new/place"}}}, "/%s/old" % t)
    d = env.dps[0]
    info = echo(d.get("/%s/old?q=1&z=2" % t))
    eq(info["target"], "/new/place?q=1&z=2", "target after uri rewrite")
    info = echo(d.get("/%s/old" % t))
    eq(info["target"], "/new/place", "target without a query")


def test_rewrite_uri_with_variables(ctx):
    env = env_of(ctx)
    t = uid("var")
    serve(env, t, {"uri": "/%s/v" % t, "upstream": env.up("a"),
                   "plugins": {"proxy-rewrite": {"uri": "/by/$arg_dev/${request_method}?fixed=1"}}},
          "/%s/v" % t)
    info = echo(env.dps[0].get("/%s/v?dev=d42" % t))
    eq(info["target"], "/by/d42/GET?fixed=1&dev=d42",
       "variables expanded; the client's query appended with '&'")


def test_rewrite_regex_uri(ctx):
    env = env_of(ctx)
    t = uid("rx")
    serve(env, t, {"uri": "/%s/*" % t, "upstream": env.up("a"),
                   "plugins": {"proxy-rewrite": {"regex_uri": [
                       "^/%s/api/v1/(\\w+)/(\\d+)$" % t, "/v2/$2/${1}",
                       "^/%s/old/(.*)" % t, "/legacy/$1"]}}},
          "/%s/api/v1/users/7" % t)
    d = env.dps[0]
    eq(echo(d.get("/%s/api/v1/users/7?x=y" % t))["target"], "/v2/7/users?x=y",
       "first pair: captures in the template")
    eq(echo(d.get("/%s/old/a/b" % t))["target"], "/legacy/a/b", "second pair")
    eq(echo(d.get("/%s/other" % t))["target"], "/%s/other" % t, "no pair matches: unchanged")


def test_rewrite_method_and_host(ctx):
    env = env_of(ctx)
    t = uid("mh")
    serve(env, t, {"uri": "/%s" % t, "upstream": env.up("b"),
                   "plugins": {"proxy-rewrite": {"method": "PUT", "host": "backend.internal:8443"}}},
          "/%s" % t)
    info = echo(env.dps[0].get("/%s" % t, headers=["Host: client.example"]))
    eq(info["method"], "PUT", "method sent upstream")
    eq(info["headers"].get("host"), "backend.internal:8443", "Host sent upstream")
    eq(info["headers"].get("x-forwarded-host"), "client.example",
       "X-Forwarded-Host keeps the client's Host")


def test_rewrite_host_loses_to_pass_host_node(ctx):
    """APISIX: proxy-rewrite's host applies with pass_host "pass" only."""
    env = env_of(ctx)
    t = uid("pn")
    up = env.up("b")
    up["pass_host"] = "node"
    serve(env, t, {"uri": "/%s" % t, "upstream": up,
                   "plugins": {"proxy-rewrite": {"host": "ignored.internal"}}}, "/%s" % t)
    info = echo(env.dps[0].get("/%s" % t))
    eq(info["headers"].get("host"), env.ups["b"].addr, "pass_host node wins")


def test_rewrite_headers_add_set_remove(ctx):
    env = env_of(ctx)
    t = uid("hdr")
    serve(env, t, {"uri": "/%s/*" % t, "upstream": env.up("a"),
                   "plugins": {"proxy-rewrite": {
                       "regex_uri": ["^/%s/dev/(\\w+)" % t, "/devices/$1"],
                       "headers": {
                           "add": {"X-Added": "from-gw", "X-Num": 42},
                           "set": {"X-Api-Version": "v2", "X-Client": "$remote_addr",
                                   "X-Device": "$1"},
                           "remove": ["X-Secret"]}}}},
          "/%s/dev/abc" % t)
    info = echo(env.dps[0].get("/%s/dev/abc" % t, headers=[
        "X-Api-Version: v1", "X-Added: from-client", "X-Secret: hunter2", "X-Keep: yes"]))
    eq(info["target"], "/devices/abc", "target")
    eq(header_values(info, "X-Api-Version"), ["v2"], "set replaces the client's value")
    eq(sorted(header_values(info, "X-Added")), ["from-client", "from-gw"], "add appends")
    eq(header_values(info, "X-Num"), ["42"], "numbers are sent as text")
    eq(header_values(info, "X-Client"), ["127.0.0.1"], "$remote_addr expanded")
    eq(header_values(info, "X-Device"), ["abc"], "regex_uri capture in a header")
    eq(header_values(info, "X-Secret"), [], "removed")
    eq(header_values(info, "X-Keep"), ["yes"], "other headers pass")


def test_rewrite_flat_headers(ctx):
    """The older form: a flat object of headers to set; "" removes."""
    env = env_of(ctx)
    t = uid("flat")
    serve(env, t, {"uri": "/%s" % t, "upstream": env.up("a"),
                   "plugins": {"proxy-rewrite": {"headers": {"X-Flat": "1", "X-Gone": ""}}}},
          "/%s" % t)
    info = echo(env.dps[0].get("/%s" % t, headers=["X-Flat: 0", "X-Gone: here"]))
    eq(header_values(info, "X-Flat"), ["1"], "flat header set")
    eq(header_values(info, "X-Gone"), [], "empty value removes")


def test_rewrite_keeps_the_body(ctx):
    env = env_of(ctx)
    t = uid("body")
    serve(env, t, {"uri": "/%s" % t, "upstream": env.up("a"),
                   "plugins": {"proxy-rewrite": {"uri": "/stored", "method": "POST"}}}, "/%s" % t)
    info = echo(env.dps[0].req("PUT", "/%s" % t, body="x" * 5000))
    eq((info["method"], info["target"], info["body_length"]), ("POST", "/stored", 5000),
       "rewritten request with its body")


# ---------------------------------------------------------------------------
# cors


def cors_route(env, t, conf):
    serve(env, t, {"uri": "/%s" % t, "methods": ["GET", "POST", "OPTIONS"],
                   "upstream": env.up("a"), "plugins": {"cors": conf}}, "/%s" % t)


def test_cors_preflight_answered_by_the_plugin(ctx):
    env = env_of(ctx)
    t = uid("pre")
    cors_route(env, t, {})
    before = env.ups["a"].stats()["paths"].get("/%s" % t, 0)
    r = env.dps[0].req("OPTIONS", "/%s" % t, headers=[
        "Origin: https://app.example", "Access-Control-Request-Method: POST"])
    expect_status(r, 200)
    eq(r.body, b"", "preflight body")
    h = r.headers
    eq((h.get("access-control-allow-origin"), h.get("access-control-allow-methods"),
        h.get("access-control-allow-headers"), h.get("access-control-expose-headers"),
        h.get("access-control-max-age")), ("*", "*", "*", "*", "5"), "default CORS headers")
    check("access-control-allow-credentials" not in h, "no credentials header by default")
    eq(env.ups["a"].stats()["paths"].get("/%s" % t, 0), before,
       "the preflight never reached the upstream")


def test_cors_simple_request_headers_on_the_upstream_answer(ctx):
    env = env_of(ctx)
    t = uid("simple")
    cors_route(env, t, {"allow_origins": "https://a.example,https://b.example:8443",
                        "allow_methods": "GET,POST", "allow_headers": "X-Token",
                        "expose_headers": "X-Upstream", "max_age": 600,
                        "allow_credential": True})
    d = env.dps[0]
    r = d.get("/%s" % t, headers=["Origin: https://b.example:8443"])
    info = echo(r)
    eq(info["server"], "a", "proxied")
    h = r.headers
    eq((h.get("access-control-allow-origin"), h.get("access-control-allow-methods"),
        h.get("access-control-allow-headers"), h.get("access-control-expose-headers"),
        h.get("access-control-max-age"), h.get("access-control-allow-credentials"),
        h.get("vary")),
       ("https://b.example:8443", "GET,POST", "X-Token", "X-Upstream", "600", "true", "Origin"),
       "CORS headers for a listed origin")
    eq(h.get("x-upstream"), "a", "the upstream's own headers are kept")
    r = d.get("/%s" % t, headers=["Origin: https://evil.example"])
    echo(r)
    check("access-control-allow-origin" not in r.headers,
          "an origin not listed gets no CORS headers: %r" % r.headers)
    r = d.req("OPTIONS", "/%s" % t, headers=["Origin: https://a.example"])
    expect_status(r, 200)
    eq(r.headers.get("access-control-allow-origin"), "https://a.example", "listed preflight")


def test_cors_by_regex_and_double_star(ctx):
    env = env_of(ctx)
    t1, t2 = uid("rx"), uid("ss")
    cors_route(env, t1, {"allow_origins_by_regex": ["^https://[a-z]+\\.iot\\.example$"]})
    cors_route(env, t2, {"allow_origins": "**", "allow_methods": "**", "allow_headers": "**"})
    d = env.dps[0]
    r = d.get("/%s" % t1, headers=["Origin: https://dev.iot.example"])
    eq(r.headers.get("access-control-allow-origin"), "https://dev.iot.example", "regex match")
    r = d.get("/%s" % t1, headers=["Origin: https://dev.iot.example.evil"])
    check("access-control-allow-origin" not in r.headers, "regex mismatch: no headers")
    r = d.req("OPTIONS", "/%s" % t2, headers=["Origin: http://x.test",
                                             "Access-Control-Request-Headers: X-A, X-B"])
    eq((r.headers.get("access-control-allow-origin"), r.headers.get("access-control-allow-headers"),
        r.headers.get("access-control-allow-methods")),
       ("http://x.test", "X-A, X-B", "GET,POST,PUT,DELETE,PATCH,HEAD,OPTIONS,CONNECT,TRACE"),
       "'**' echoes the request")


# ---------------------------------------------------------------------------
# where plugins come from


def test_service_and_plugin_config_merge(ctx):
    """Service plugins, then plugin_config plugins, then the route's: for a
    plugin configured at several levels the route's configuration wins."""
    env = env_of(ctx)
    t = uid("merge")
    env.put("services/" + t, {"upstream": env.up("b"), "plugins": {
        "proxy-rewrite": {"headers": {"set": {"X-From": "service"}}},
        "cors": {"allow_origins": "https://svc.example"}}})
    env.put("plugin_configs/" + t, {"plugins": {
        "proxy-rewrite": {"headers": {"set": {"X-From": "plugin_config"}}}}})
    env.route(t + "-svc", {"uri": "/%s/svc" % t, "service_id": t})
    env.route(t + "-pc", {"uri": "/%s/pc" % t, "service_id": t, "plugin_config_id": t})
    env.route(t + "-rt", {"uri": "/%s/rt" % t, "service_id": t, "plugin_config_id": t,
                          "plugins": {"proxy-rewrite": {"headers": {"set": {"X-From": "route"}}}}})
    for p in ("svc", "pc", "rt"):
        wait_serving(env.dps, "/%s/%s" % (t, p))
    d = env.dps[0]
    for p, want in (("svc", "service"), ("pc", "plugin_config"), ("rt", "route")):
        r = d.get("/%s/%s" % (t, p), headers=["Origin: https://svc.example"])
        info = echo(r)
        eq(info["server"], "b", "the service's upstream")
        eq(header_values(info, "X-From"), [want], "/%s: the winning configuration" % p)
        eq(r.headers.get("access-control-allow-origin"), "https://svc.example",
           "/%s: the service's cors still applies" % p)


def test_global_rule_runs_on_every_route_and_on_404(ctx):
    env = dp_env(ctx, "plugins-global", dps=1, workers=2, upstreams=("a",))
    t = uid("glob")
    env.route(t + "-1", {"uri": "/%s/one" % t, "upstream": env.up("a")})
    env.route(t + "-2", {"uri": "/%s/two" % t, "upstream": env.up("a"),
                         "plugins": {"proxy-rewrite": {"headers": {"set": {"X-Route": "two"}}}}})
    wait_serving(env.dps, "/%s/two" % t)
    env.put("global_rules/" + t, {"plugins": {
        "proxy-rewrite": {"headers": {"set": {"X-Global": "yes"}}},
        "cors": {"allow_origins": "**"}}})
    d = env.dps[0]
    wait_serving(env.dps, "/%s/one" % t,
                 pred=lambda r: r.status == 200 and header_values(r.j, "X-Global") == ["yes"])
    for p in ("one", "two"):
        info = echo(d.get("/%s/%s" % (t, p)))
        eq(header_values(info, "X-Global"), ["yes"], "/%s: the global rule's rewrite" % p)
    eq(header_values(echo(d.get("/%s/two" % t)), "X-Route"), ["two"],
       "the route's own plugin runs too")
    r = d.get("/%s/none" % t, headers=["Origin: http://o.test"])
    expect_status(r, 404)
    eq(r.j, {"error_msg": "404 Route Not Found"}, "404 body")
    eq(r.headers.get("access-control-allow-origin"), "http://o.test",
       "the global rule's cors ran on the 404 (header_filter of a local answer)")
    r = d.req("OPTIONS", "/%s/none" % t, headers=["Origin: http://o.test"])
    expect_status(r, 200)  # the global cors answers a preflight before the 404
    env.delete("global_rules/" + t)
    wait_serving(env.dps, "/%s/one" % t,
                 pred=lambda r: r.status == 200 and header_values(r.j, "X-Global") == [])


def test_plugin_change_applies_live(ctx):
    env = env_of(ctx)
    t = uid("live")
    d = env.dps[0]
    pids = d.worker_pids() if hasattr(d, "worker_pids") else None
    body = {"uri": "/%s" % t, "upstream": env.up("a"),
            "plugins": {"proxy-rewrite": {"headers": {"set": {"X-Ver": "1"}}}}}
    serve(env, t, body, "/%s" % t)
    eq(header_values(echo(d.get("/%s" % t)), "X-Ver"), ["1"], "first configuration")
    body["plugins"]["proxy-rewrite"]["headers"]["set"]["X-Ver"] = "2"
    body["plugins"]["cors"] = {}
    env.route(t, body)
    t0 = time.monotonic()
    wait_serving(env.dps, "/%s" % t,
                 pred=lambda r: r.status == 200 and header_values(r.j, "X-Ver") == ["2"])
    check(time.monotonic() - t0 < 5, "the change was served within seconds")
    r = d.get("/%s" % t)
    eq(r.headers.get("access-control-allow-origin"), "*", "a plugin added live")
    del body["plugins"]
    env.route(t, body)
    wait_serving(env.dps, "/%s" % t,
                 pred=lambda r: r.status == 200 and header_values(r.j, "X-Ver") == [])
    r = d.get("/%s" % t)
    check("access-control-allow-origin" not in r.headers, "plugins removed live")
    if pids is not None:
        eq(d.worker_pids(), pids, "same workers: no restart")
    check(d.running(), "the data plane kept running")
