"""Data plane processes: kill -9 of a worker under load, SIGHUP (workers
replaced with no failed request, listen address change, bad settings kept
out), SIGTERM drain, control plane down and back, restart on the on-disk
configuration, control plane failover, the command line and config file."""

import os
import re
import threading
import time

from harness import T, check, eq, free_port, port_open, uid, wait_until
from dp_harness import (LoadLoop, curl_many, dp_bin, dp_env, new_dp, wait_serving)

# Also run against a real etcd (run_all.py --store etcd): control plane
# restarts and data plane resumes over a store the control plane watches.
STORES = ("sqlite", "etcd")


def env_of(ctx):
    """The module's control plane and upstream (no shared data plane)."""
    return dp_env(ctx, "life", dps=0, upstreams=("a", "b"))


def add_route(env, dps, up="a"):
    t = uid("lc")
    env.route(t, {"uri": "/%s/*" % t, "upstream": env.up(up)})
    wait_serving(dps, "/%s/x" % t)
    return t


def failures(codes):
    return [c for c in codes if c != 200]


# ---------------------------------------------------------------------------
# workers


def test_kill9_worker_under_load(ctx):
    env = env_of(ctx)
    d = new_dp(ctx, env.cp, name="k9", workers=2)
    t = add_route(env, d)
    before = d.wait_workers()
    loop = LoadLoop(d.url("/%s/load" % t), threads=2, batch=10).start()
    try:
        loop.wait_count(40)
        mark = d.log_mark()
        victim = d.kill_worker(0)
        d.wait_log(r"worker 0 \(pid %d\) was killed by signal 9[^\n]*restarting it" % victim,
                   since=mark, what="the master noticing the killed worker")
        m = d.wait_log(r"started worker 0 \(pid (\d+)\)", since=mark,
                       what="worker 0 started again")
        new_pid = int(m.group(1))
        check(new_pid != victim, "respawned worker has the killed pid %d" % victim)
        now = d.wait_workers(exclude=[victim])
        eq(now.get(1), before[1], "worker 1's pid (untouched)")
        eq(now.get(0), new_pid, "worker 0's pid after the respawn")
        n = loop.count()
        loop.wait_count(n + 60)
    finally:
        codes = loop.stop()
    # A request in flight on the killed worker loses its connection (curl:
    # status 0); every request that got an HTTP answer must have got 200
    # (a respawned worker must not answer before it has the configuration).
    bad = failures(codes)
    lost = [c for c in bad if c == 0]
    eq([c for c in bad if c != 0], [], "HTTP errors around the kill -9 (of %d requests)" %
       len(codes))
    check(len(lost) <= 2, "%d of %d requests lost around the kill -9; at most the ones in "
          "flight on the killed worker (2 clients) may be" % (len(lost), len(codes)))


def test_sighup_replaces_workers_without_failures(ctx):
    """Three SIGHUPs under a request loop: every request gets its 200 (a
    new worker must not answer before it has the configuration)."""
    env = env_of(ctx)
    d = new_dp(ctx, env.cp, name="hup", workers=2)
    t = add_route(env, d)
    old = d.wait_workers()
    first = dict(old)
    loop = LoadLoop(d.url("/%s/load" % t), threads=3, batch=10).start()
    try:
        loop.wait_count(40)
        for i in range(3):
            mark = d.log_mark()
            d.sighup()
            d.wait_log(r"SIGHUP: reloading settings", since=mark)
            new = d.wait_workers(exclude=old.values())
            for slot, pid in old.items():
                d.wait_log(r"worker %d \(pid %d\) exited \(drained\)" % (slot, pid),
                           since=mark, what="old worker %d drained" % slot)
            check(not set(new.values()) & set(old.values()), "workers not replaced: %s -> %s" %
                  (old, new))
            old = new
            n = loop.count()
            loop.wait_count(n + 30)
    finally:
        codes = loop.stop()
    eq(failures(codes), [], "failed requests during three SIGHUPs (of %d)" % len(codes))
    check(not set(old.values()) & set(first.values()), "workers %s not replaced" % first)


def test_several_listeners(ctx):
    env = env_of(ctx)
    d = new_dp(ctx, env.cp, name="multi", workers=2, listeners=3)
    t = add_route(env, d)
    for i in range(3):
        res = curl_many([d.url("/%s/%d" % (t, k), i=i) for k in range(4)], close=True)
        eq([c for c, _ in res], [200] * 4, "listener %d (port %d)" % (i, d.http_ports[i]))


def test_sighup_changes_listen_address(ctx):
    env = env_of(ctx)
    p1, p2 = free_port(), free_port()
    d = new_dp(ctx, None, name="listen", start=False, flags=False)
    conf = {"dataplane": {
        "control_plane": ["127.0.0.1:%d" % env.cp.config_port],
        "http_listen": ["127.0.0.1:%d" % p1],
        "metrics_listen": "127.0.0.1:%d" % d.metrics_port,
        "workers": 2, "state_dir": d.state_dir, "node_id": d.node_id,
        "log_level": "info"}}
    d.config_path = os.path.join(d.dir, "dataplane.yaml")
    d.write_config(conf)
    d.http_ports = [p1]
    d.start(synced=False)
    d.wait_log(r"config stream: synced with 127\.0\.0\.1:%d" % env.cp.config_port)
    t = add_route(env, d)
    old = d.wait_workers()
    conf["dataplane"]["http_listen"] = ["127.0.0.1:%d" % p2]
    conf["dataplane"]["workers"] = 3
    d.write_config(conf)
    d.sighup()
    d.http_ports = [p2]
    wait_serving(d, "/%s/x" % t, timeout=5)
    d.wait_workers(n=3, exclude=old.values())
    check(wait_until(lambda: not port_open(p1), T(5)),
          "the old listen address 127.0.0.1:%d still accepts after the SIGHUP" % p1)
    r = d.get("/%s/y" % t)
    eq(r.status, 200, "a request on the new address")


def test_sighup_with_bad_settings_keeps_running(ctx):
    env = env_of(ctx)
    d = new_dp(ctx, env.cp, name="badhup", workers=2,
               config={"dataplane": {"drain_timeout": 3}})
    t = add_route(env, d)
    old = d.wait_workers()
    d.write_config("dataplane:\n  workers: 0\n")
    mark = d.log_mark()
    d.sighup()
    d.wait_log(r"SIGHUP: [^\n]*keeping the running settings", since=mark)
    time.sleep(0.3)
    eq(d.workers(), old, "workers after a SIGHUP with invalid settings")
    eq(d.get("/%s/x" % t).status, 200, "traffic after a refused SIGHUP")
    d.write_config("dataplane:\n  drain_timeout: 3\n")


def test_sigterm_drains_in_flight_request(ctx):
    env = env_of(ctx)
    d = new_dp(ctx, env.cp, name="drain", workers=2)
    h = "%s.test" % uid("dr")
    env.route(h.split(".")[0], {"uri": "/*", "hosts": [h], "upstream": env.up("a")})
    wait_serving(d, "/ok", headers=["Host: " + h])
    res = {}

    def slow():
        res["r"] = d.get("/slow/10/0.1", headers=["Host: " + h], timeout=T(10))
    th = threading.Thread(target=slow)
    th.start()
    time.sleep(0.3)
    d.stop()  # SIGTERM; checks exit 0 and no sanitizer report
    th.join(T(10))
    r = res.get("r")
    check(r is not None, "the in-flight request did not finish")
    eq(r.status, 200, "status of a request in flight during SIGTERM")
    eq(r.body, b"".join(b"line %04d\n" % i for i in range(10)), "its body")
    check(d.last_stop_seconds >= 0.5, "master exited %.2fs after SIGTERM, before its request "
          "in flight ended" % d.last_stop_seconds)
    check(not port_open(d.port), "the listener still accepts after the master exited")


# ---------------------------------------------------------------------------
# the control plane going away


def test_control_plane_down_and_back(ctx):
    env = env_of(ctx)
    cp = ctx.daemon()
    d = new_dp(ctx, cp, name="cpdown", workers=2)
    t = uid("cpd")
    cp.must("PUT", "routes/" + t, {"uri": "/%s/*" % t, "upstream": env.up("a")})
    wait_serving(d, "/%s/x" % t)
    mark = d.log_mark()
    cp.stop()
    d.wait_log(r"config stream: lost control plane", since=mark)
    res = curl_many([d.url("/%s/%d" % (t, i)) for i in range(20)], close=True)
    eq(failures([c for c, _ in res]), [], "requests while the control plane is down")
    time.sleep(1.0)
    eq(d.get("/%s/later" % t).status, 200, "a request 1 s later")
    mark = d.log_mark()
    cp.start()
    # The control plane's store kept its history: the data plane resumes.
    d.wait_log(r"config stream: synced with 127\.0\.0\.1:%d at revision \d+ \(resumed\)" %
               cp.config_port, since=mark, timeout=8,
               what="resumed sync once the control plane is back")
    t2 = uid("cpb")
    cp.must("PUT", "routes/" + t2, {"uri": "/%s/*" % t2, "upstream": env.up("b")})
    took = wait_serving(d, "/%s/x" % t2, timeout=3)
    check(took <= T(1.5), "a PUT after the control plane came back took %.2fs" % took)
    eq(d.get("/%s/x" % t).status, 200, "the old route still serves")


def test_restart_while_control_plane_down_serves_disk_config(ctx):
    env = env_of(ctx)
    cp = ctx.daemon()
    d = new_dp(ctx, cp, name="disk", workers=2)
    t = uid("dsk")
    rev = cp.must("PUT", "routes/" + t, {"uri": "/%s/*" % t,
                                         "upstream": env.up("b")})["modifiedIndex"]
    wait_serving(d, "/%s/x" % t)
    state = os.path.join(d.state_dir, "config.json")

    def saved():
        try:
            with open(state) as f:
                return ("/apisix/routes/" + t) in f.read()
        except OSError:
            return False
    check(wait_until(saved, T(3)), "%s does not hold route %s" % (state, t))
    cp.stop()
    d.stop()
    d.start(synced=False)
    d.wait_log(r"serving the last configuration from %s \(revision %d\)" % (re.escape(state), rev),
               what="serving the on-disk configuration")
    wait_serving(d, "/%s/x" % t, pred=lambda r: r.status == 200 and r.j["server"] == "b",
                 what="the route from the on-disk configuration")
    mark = d.log_mark()
    cp.start()
    d.wait_log(r"config stream: synced with 127\.0\.0\.1:%d at revision %d \(resumed\)" % (
        cp.config_port, rev), since=mark, timeout=8,
        what="resumed from the on-disk revision (docs/configuration.md)")
    t2 = uid("dsk2")
    cp.must("PUT", "routes/" + t2, {"uri": "/%s/*" % t2, "upstream": env.up("a")})
    wait_serving(d, "/%s/x" % t2, timeout=3)


def test_control_plane_failover_list(ctx):
    env = env_of(ctx)
    dead = "127.0.0.1:%d" % free_port()
    d = new_dp(ctx, "%s,127.0.0.1:%d" % (dead, env.cp.config_port), name="failover",
               workers=1, start=False)
    d.start(synced=False)
    d.wait_log(r"config stream: synced with 127\.0\.0\.1:%d" % env.cp.config_port, timeout=8,
               what="synced with the second control plane of the list")
    add_route(env, d)


# ---------------------------------------------------------------------------
# command line and config file


def test_bad_flags_and_config_exit_2(ctx):
    tmp = ctx.tmpdir()
    bad_yaml = os.path.join(tmp, "bad.yaml")
    with open(bad_yaml, "w") as f:
        f.write("dataplane:\n  wrokers: 2\n")
    not_yaml = os.path.join(tmp, "broken.yaml")
    with open(not_yaml, "w") as f:
        f.write("dataplane: [\n")
    bad_limit = os.path.join(tmp, "limit.yaml")
    with open(bad_limit, "w") as f:
        f.write("dataplane:\n  limits:\n    max_body_bytes: -1\n")
    cases = [
        (["--workers", "0"], "--workers"),
        (["--workers", "many"], "--workers"),
        (["--http-listen", "nowhere"], "--http-listen"),
        (["--access-log-format", "xml"], "--access-log-format"),
        (["--log-level", "loud"], "--log-level"),
        (["--bogus"], "bogus"),
        (["--standalone", "x.yaml", "--control-plane", "127.0.0.1:1"], "exclude"),
        (["-c", bad_yaml], "wrokers"),
        (["-c", not_yaml], "broken.yaml"),
        (["-c", bad_limit], "max_body_bytes"),
        (["-c", os.path.join(tmp, "missing.yaml")], "missing.yaml"),
    ]
    for args, word in cases:
        rc, out, err = ctx.run([dp_bin()] + args, timeout=5)
        eq(rc, 2, "exit code of airgw-dataplane %s (stderr %r)" % (" ".join(args), err[:300]))
        check(word in err, "airgw-dataplane %s: stderr should name %r: %r" % (
            " ".join(args), word, err[:300]))
    rc, out, err = ctx.run([dp_bin(), "--help"], timeout=5)
    eq(rc, 0, "--help exit code")
    check("--control-plane" in out and "--http-listen" in out, "--help text: %r" % out[:300])


def test_config_file_settings(ctx):
    """Every setting from the YAML file alone (no flags)."""
    env = env_of(ctx)
    d = new_dp(ctx, None, name="yaml", start=False, flags=False)
    log = os.path.join(d.dir, "access.log")
    d.config_path = os.path.join(d.dir, "dataplane.yaml")
    d.write_config({"dataplane": {
        "control_plane": "127.0.0.1:%d" % env.cp.config_port,
        "http_listen": ["127.0.0.1:%d" % d.http_ports[0]],
        "metrics_listen": "127.0.0.1:%d" % d.metrics_port, "https_listen": [],
        "workers": 1, "state_dir": d.state_dir, "node_id": "yaml-node-7",
        "log_level": "info", "access_log": log, "access_log_format": "combined",
        "drain_timeout": 2,
        "limits": {"max_header_bytes": 2048}}})
    d.workers_n = 1
    d.cp = env.cp  # wait for the sync
    d.start()
    t = add_route(env, d)
    eq(d.get("/%s/x" % t, headers=["X-Big: " + "x" * 3000]).status, 431,
       "limits.max_header_bytes from the file")
    eq(len(d.children()), 1, "workers: 1 from the file")
    names = [lb.get("hostname") for n, lb, v in d.metrics() if n == "apisix_node_info"]
    eq(names, ["yaml-node-7"], "apisix_node_info hostname (node_id from the file)")
    check(wait_until(lambda: os.path.exists(log) and '"GET /%s/x HTTP/1.1"' % t in open(log).read(),
                     T(3)), "combined access log line in %s" % log)
    check(os.path.exists(os.path.join(d.state_dir, "config.json")) or
          wait_until(lambda: os.path.exists(os.path.join(d.state_dir, "config.json")), T(3)),
          "state_dir from the file holds config.json")
    rc = d.stop()
    eq(rc, 0, "exit code")
    check(d.last_stop_seconds < 2.5, "stop took %.1fs" % d.last_stop_seconds)

