"""Data plane standalone mode: APISIX's apisix.yaml (routes, upstreams,
services, the #END marker) or apisix.json as the whole configuration, no
control plane; reload when the file changes (within ~2 s) and on SIGHUP; an
invalid edit keeps the running configuration with a log line."""

import json
import os
import re

from harness import T, check, eq
from dp_harness import LoadLoop, dp_env, new_dp, wait_serving


def ups_of(ctx):
    return dp_env(ctx, "sa", dps=0, upstreams=("a", "b")).ups


def yaml_conf(ups, extra_routes="", end=True):
    text = """# airgw standalone configuration (APISIX apisix.yaml format)
routes:
  - id: r1
    uri: /sa/one
    upstream_id: u1
  - id: r2
    uris:
      - /sa/svc/*
    service_id: s1
  - id: r3
    uri: /sa/inline
    methods: [GET]
    upstream:
      type: roundrobin
      nodes:
        - host: 127.0.0.1
          port: {pb}
          weight: 1
{extra}upstreams:
  - id: u1
    type: roundrobin
    nodes:
      "127.0.0.1:{pa}": 1
services:
  - id: s1
    upstream:
      type: roundrobin
      nodes:
        "127.0.0.1:{pb}": 1
""".format(pa=ups["a"].port, pb=ups["b"].port, extra=extra_routes)
    return text + ("#END\n" if end else "")


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def server_is(name):
    return lambda r: r.status == 200 and r.j.get("server") == name


def start(ctx, text, name="sa", fname="apisix.yaml"):
    path = os.path.join(ctx.tmpdir(), fname)
    write(path, text)
    d = new_dp(ctx, None, name=name, standalone=path, workers=2)
    d.wait_log(r"standalone: loaded %s" % re.escape(path))
    return d, path


def test_standalone_serves_yaml(ctx):
    ups = ups_of(ctx)
    d, path = start(ctx, yaml_conf(ups))
    wait_serving(d, "/sa/one", pred=server_is("a"), what="r1 -> upstream u1 (a)")
    eq(d.get("/sa/svc/deep").j["server"], "b", "r2 -> service s1 (b)")
    eq(d.get("/sa/inline").j["server"], "b", "r3 inline upstream with a nodes list")
    eq(d.req("POST", "/sa/inline", body="x").status, 404, "r3 allows GET only")
    eq(d.get("/sa/none").status, 404, "no route")


def test_standalone_reloads_on_change(ctx):
    ups = ups_of(ctx)
    d, path = start(ctx, yaml_conf(ups))
    wait_serving(d, "/sa/one", pred=server_is("a"))
    extra = "  - id: r4\n    uri: /sa/four\n    upstream_id: u1\n"
    write(path, yaml_conf(ups, extra))
    took = wait_serving(d, "/sa/four", pred=server_is("a"), timeout=4)
    check(took <= T(2.5), "a file edit took %.2fs to serve (expected within ~2 s)" % took)
    d.wait_log(r"standalone: loaded %s \(file changed\)" % re.escape(path))
    # Removing a route from the file removes it.
    write(path, yaml_conf(ups).replace("  - id: r1\n    uri: /sa/one\n    upstream_id: u1\n", ""))
    wait_serving(d, "/sa/one", pred=lambda r: r.status == 404, timeout=4,
                 what="404 once r1 is gone from the file")
    eq(d.get("/sa/svc/x").status, 200, "r2 still there")


def test_standalone_invalid_edit_keeps_config(ctx):
    ups = ups_of(ctx)
    d, path = start(ctx, yaml_conf(ups))
    wait_serving(d, "/sa/one", pred=server_is("a"))
    bad = {
        "no #END": yaml_conf(ups, "  - id: r5\n    uri: /sa/five\n    upstream_id: u1\n",
                             end=False),
        "invalid route": yaml_conf(ups, "  - id: r5\n    uri: 123\n    upstream_id: u1\n"),
        "missing upstream": yaml_conf(ups, "  - id: r5\n    uri: /sa/five\n"
                                           "    upstream_id: nope\n"),
        "not YAML": "routes: [\n#END\n",
    }
    for what, text in bad.items():
        mark = d.log_mark()
        write(path, text)
        d.wait_log(r"standalone: [^\n]*keeping the configuration at revision \d+", since=mark,
                   timeout=4, what="the log line for a refused edit (%s)" % what)
        eq(d.get("/sa/five").status, 404, "%s: the refused edit's route" % what)
        r = d.get("/sa/one")
        eq((r.status, r.j.get("server")), (200, "a"), "%s: the old configuration serves" % what)
    # A good edit after bad ones applies.
    write(path, yaml_conf(ups, "  - id: r5\n    uri: /sa/five\n    upstream_id: u1\n"))
    wait_serving(d, "/sa/five", pred=server_is("a"), timeout=4)


def test_standalone_sighup_reload(ctx):
    ups = ups_of(ctx)
    d, path = start(ctx, yaml_conf(ups))
    wait_serving(d, "/sa/one", pred=server_is("a"))
    old = d.wait_workers()
    mark = d.log_mark()
    write(path, yaml_conf(ups, "  - id: r6\n    uri: /sa/six\n    upstream_id: u1\n"))
    d.sighup()
    took = wait_serving(d, "/sa/six", pred=server_is("a"), timeout=3)
    check(took <= T(1.5), "SIGHUP reload took %.2fs to serve" % took)
    d.wait_log(r"SIGHUP: reloading settings", since=mark)
    d.wait_workers(exclude=old.values())


def test_standalone_json(ctx):
    ups = ups_of(ctx)
    conf = {
        "routes": [{"id": "j1", "uri": "/sa/json", "upstream_id": "u1"}],
        "upstreams": [{"id": "u1", "type": "roundrobin",
                       "nodes": {ups["b"].addr: 1}}],
    }
    d, path = start(ctx, json.dumps(conf), name="sajson", fname="apisix.json")
    wait_serving(d, "/sa/json", pred=server_is("b"))
    conf["routes"].append({"id": "j2", "uri": "/sa/json2", "upstream_id": "u1"})
    write(path, json.dumps(conf))
    wait_serving(d, "/sa/json2", pred=server_is("b"), timeout=4)


def big_conf(ups, n=5000):
    """n prefix routes plus /sa/loop, all to upstream a: a new worker needs
    a moment to compile it."""
    lines = ["routes:"]
    for i in range(n):
        lines += ["  - id: b%d" % i, "    uri: /bulk/%d/*" % i, "    upstream_id: u1"]
    lines += ["  - id: loop", "    uri: /sa/loop", "    upstream_id: u1",
              "upstreams:", "  - id: u1", "    type: roundrobin", "    nodes:",
              '      "%s": 1' % ups["a"].addr, "#END", ""]
    return "\n".join(lines)


def test_standalone_sighup_large_config_no_failed_request(ctx):
    """SIGHUP with 5000 routes under a request loop: the new workers must
    not answer (404) before their configuration is compiled."""
    ups = ups_of(ctx)
    d, path = start(ctx, big_conf(ups), name="sabig")
    wait_serving(d, "/sa/loop", pred=server_is("a"))
    old = d.wait_workers()
    loop = LoadLoop(d.url("/sa/loop"), threads=3, batch=10).start()
    try:
        loop.wait_count(30)
        mark = d.log_mark()
        d.sighup()
        d.wait_log(r"SIGHUP: reloading settings", since=mark)
        d.wait_workers(exclude=old.values())
        n = loop.count()
        loop.wait_count(n + 30)
    finally:
        codes = loop.stop()
    bad = [c for c in codes if c != 200]
    eq(bad, [], "failed requests during a SIGHUP with 5000 routes (of %d)" % len(codes))


def test_standalone_kill9_worker_large_config(ctx):
    """kill -9 of a worker with 5000 routes under a request loop: only the
    requests in flight on it may be lost; the respawned worker must not
    answer 404 while it compiles."""
    ups = ups_of(ctx)
    d, path = start(ctx, big_conf(ups), name="sak9")
    wait_serving(d, "/sa/loop", pred=server_is("a"))
    d.wait_workers()
    loop = LoadLoop(d.url("/sa/loop"), threads=2, batch=10).start()
    try:
        loop.wait_count(30)
        mark = d.log_mark()
        victim = d.kill_worker(1)
        d.wait_log(r"started worker 1 \(pid \d+\)", since=mark)
        d.wait_workers(exclude=[victim])
        n = loop.count()
        loop.wait_count(n + 30)
    finally:
        codes = loop.stop()
    bad = [c for c in codes if c != 200]
    eq([c for c in bad if c != 0], [], "HTTP errors around the kill -9 (of %d requests)" %
       len(codes))
    check(len(bad) <= 2, "%d requests lost around the kill -9" % len(bad))
