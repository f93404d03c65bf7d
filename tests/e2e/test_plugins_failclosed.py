"""Plugins that cannot run fail closed (docs/plugins.md "How plugins run"),
end to end: real etcd, a control plane on it, a data plane of two workers,
a real upstream, a real mosquitto, the real curl and etcdctl.

The Admin API refuses what a data plane could not run, so these
configurations are written to etcd directly with etcdctl, as operators
(or a newer control plane sharing the etcd) do:
- a route with a plugin airgw has no code for, and one whose configuration
  the plugin's code refuses (limit-count with count 0): 503 with APISIX's
  error_msg body, nothing reaches the upstream, the reason logged once per
  snapshot (not per request); a route beside them still serves; fixed
  through the Admin API, the route serves again;
- a global rule with such a plugin: every request is refused until the
  rule is gone;
- a stream route (MQTT) with such a plugin: CONNACK "server unavailable"
  (3.1.1 and 5.0), the broker never sees the client, while a route with
  only mqtt-proxy (no plugin code on purpose) serves."""

import json
import re

from dp_harness import new_dp, new_upstream, wait_serving
from etcd_harness import etcdctl, module_etcd
from harness import T, check, eq, uid, wait_until
from mqtt_harness import mqtt_dp, new_broker, probe, wait_probe


def cp_on_etcd(ctx):
    """A control plane on the module's etcd under a fresh prefix; returns
    (control plane, etcd url, prefix)."""
    e = module_etcd(ctx)
    prefix = "/" + uid("fc")
    cp = ctx.daemon(name="cp", config={"deployment": {"etcd": {"host": [e.url],
                                                                "prefix": prefix}}},
                    args=["--store", "etcd:" + e.url])
    return cp, e.url, prefix


def etcd_put(url, key, value):
    rc, _, err = etcdctl(url, "put", key, json.dumps(value))
    check(rc == 0, "etcdctl put %s: %s" % (key, err.strip()))


def etcd_del(url, key):
    rc, _, err = etcdctl(url, "del", key)
    check(rc == 0, "etcdctl del %s: %s" % (key, err.strip()))


def upstream_of(up):
    return {"type": "roundrobin", "nodes": {up.addr: 1}}


def unavailable(name):
    return {"error_msg": "plugin %s is not available on this route" % name}


def log_lines(d, pattern):
    return len(re.findall(pattern, d.stderr()))


def test_http_route_with_a_plugin_that_cannot_run(ctx):
    cp, url, prefix = cp_on_etcd(ctx)
    up = new_upstream(ctx, "fc")
    d = new_dp(ctx, cp, name="fc", workers=2)
    t = uid("r")
    cp.must("PUT", "routes/%s-ok" % t, {"uri": "/%s/ok" % t, "upstream": upstream_of(up),
                                         "plugins": {"prometheus": {}}}, status=201)
    # key-auth would protect it; the other plugin is unknown to airgw
    etcd_put(url, "%s/routes/%s-unk" % (prefix, t), {
        "id": t + "-unk", "uri": "/%s/unk" % t, "upstream": upstream_of(up),
        "plugins": {"key-auth": {}, "jwt-auth-v9": {"secret": "x"}}})
    # a configuration the Admin API refuses (count 0): limit-count's code too
    etcd_put(url, "%s/routes/%s-bad" % (prefix, t), {
        "id": t + "-bad", "uri": "/%s/bad" % t, "upstream": upstream_of(up),
        "plugins": {"limit-count": {"count": 0, "time_window": 60, "key": "remote_addr",
                                    "rejected_code": 503, "policy": "local"}}})
    wait_serving(d, "/%s/ok" % t)
    wait_serving(d, "/%s/unk" % t, pred=lambda r: r.status == 503, what="503")
    wait_serving(d, "/%s/bad" % t, pred=lambda r: r.status == 503, what="503")
    logged = {
        "unk": r"error \[worker \d\] route/%s-unk: plugin jwt-auth-v9 is not available: "
               r"airgw has no code for it" % t,
        "bad": r"error \[worker \d\] route/%s-bad: plugin limit-count is not available: "
               r"count and time_window must be positive" % t,
    }
    before = {k: log_lines(d, p) for k, p in logged.items()}
    for k in before:
        check(before[k] >= 1, "no log line naming route %s-%s and its plugin: %s" % (
            t, k, "\n".join(d.tail(5))))
    seen = up.stats()["paths"]
    for _ in range(5):
        r = d.get("/%s/unk" % t)
        eq((r.status, r.j), (503, unavailable("jwt-auth-v9")), "unknown plugin")
        r = d.get("/%s/bad" % t, headers=["apikey: whatever"])
        eq((r.status, r.j), (503, unavailable("limit-count")), "plugin whose create failed")
    after = up.stats()["paths"]
    for k in ("unk", "bad"):
        path = "/%s/%s" % (t, k)
        eq(after.get(path, 0), seen.get(path, 0), "requests of %s that reached the upstream" % path)
    eq({k: log_lines(d, p) for k, p in logged.items()}, before,
       "log lines after 10 refused requests (logged per snapshot, not per request)")
    eq(d.get("/%s/ok" % t).status, 200, "the route beside them")
    # Fixed through the Admin API: serves again.
    cp.must("PUT", "routes/%s-bad" % t, {"uri": "/%s/bad" % t, "upstream": upstream_of(up),
                                          "plugins": {"limit-count": {
                                              "count": 100, "time_window": 60,
                                              "key": "remote_addr"}}}, status=200)
    wait_serving(d, "/%s/bad" % t)
    check(d.unexpected_deaths() == [], "workers died: %s" % d.unexpected_deaths())


def test_global_rule_with_a_plugin_that_cannot_run(ctx):
    cp, url, prefix = cp_on_etcd(ctx)
    up = new_upstream(ctx, "fcg")
    d = new_dp(ctx, cp, name="fcg", workers=2)
    t = uid("g")
    cp.must("PUT", "routes/" + t, {"uri": "/%s/*" % t, "upstream": upstream_of(up)},
            status=201)
    wait_serving(d, "/%s/x" % t)
    key = "%s/global_rules/%s" % (prefix, t)
    etcd_put(url, key, {"id": t, "plugins": {"ip-restriction": {}}})  # neither list
    wait_serving(d, "/%s/x" % t, pred=lambda r: r.status == 503, what="503")
    r = d.get("/%s/y" % t)
    eq((r.status, r.j), (503, unavailable("ip-restriction")), "a route under the rule")
    r = d.get("/no-route-" + t)
    eq((r.status, r.j), (503, unavailable("ip-restriction")), "no route: the rule runs first")
    check(log_lines(d, r"global_rule/%s: plugin ip-restriction is not available: needs "
                       r"exactly one of whitelist or blacklist" % t) >= 1,
          "no log line naming the global rule")
    etcd_del(url, key)
    wait_serving(d, "/%s/x" % t)
    eq(d.get("/no-route-" + t).status, 404, "no route once the rule is gone")


def test_stream_route_with_a_plugin_that_cannot_run(ctx):
    cp, url, prefix = cp_on_etcd(ctx)
    br = new_broker(ctx, "fcs")
    d = mqtt_dp(ctx, cp, name="fcs", streams=2, workers=2)
    bad, good = d.stream_ports
    t = uid("s")
    ups = {"type": "roundrobin", "nodes": {br.addr: 1}}
    cp.must("PUT", "stream_routes/%s-good" % t, {"server_port": good, "upstream": ups,
                                                  "plugins": {"mqtt-proxy": {}}}, status=201)
    etcd_put(url, "%s/stream_routes/%s-bad" % (prefix, t), {
        "id": t + "-bad", "server_port": bad, "upstream": ups,
        "plugins": {"mqtt-proxy": {}, "limit-conn": {"conn": 0, "burst": 0,
                                                     "default_conn_delay": 0.1,
                                                     "key": "remote_addr"}}})
    wait_probe(good, lambda cid, code: code == (3, 0), what="mqtt-proxy route")
    wait_probe(bad, lambda cid, code: code == (3, 3), what="refusal")
    cid = uid("dev")
    eq(probe(bad, cid), (3, 3), "3.1.1: server unavailable")
    eq(probe(bad, cid + "-5", level=5), (5, 0x88), "5.0: server unavailable")
    check(not br.has_client(cid) and not br.has_client(cid + "-5"),
          "a refused client reached the broker")
    check(log_lines(d, r"stream_route/%s-bad: plugin limit-conn is not available: conn must "
                       r"be positive" % t) >= 1, "no log line naming the stream route")
    eq(probe(good, uid("ok")), (3, 0), "the mqtt-proxy route beside it")
