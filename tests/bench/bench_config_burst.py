#!/usr/bin/env python3
"""Benchmark: a burst of configuration changes (SQLite store).

One control plane, one data plane (a master and --workers workers, 2 by
default) and an HTTP upstream, all real processes. Per round, on a fresh
control plane and data plane:

1. Admin write rate with no data plane: --upstreams sequential PUTs of
   upstreams/<i> over one keep-alive connection, on a control plane of its
   own (what is measured is the control plane and its store).
2. The burst with the data plane attached: --upstreams PUTs of
   upstreams/<i>, then --routes PUTs of routes/<i> (uri /r<i>, upstream_id
   <i>), each sequential; the PUT rate of each phase, and the CPU seconds the
   data plane (master + workers) spent from the first PUT until the last
   route written is served.
3. Convergence: one more route PUT right after the burst; the time from just
   before it is sent until the data plane first answers 200 on its uri
   (polled over one keep-alive connection; the data plane may still be
   digesting the burst), and the time until every worker has logged that
   revision.
4. SIGTERM during a burst: --stop-burst more route PUTs in a thread; halfway
   through, SIGTERM to the data plane master; the time until it exits (it
   must exit 0; the harness's bound is 15 s).

Prints markdown; --json for raw numbers. Timings on a shared machine are
noisy: the table gives each round and the median.

usage: bench_config_burst.py --build-dir build [--upstreams 2000] [--routes 2000]
                             [--rounds 3] [--workers 2] [--stop-burst 1000]
"""
import argparse
import http.client
import json
import os
import statistics
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))

import harness  # noqa: E402
from harness import Daemon, Fail, Settings  # noqa: E402
from dp_harness import DataPlane, Upstream, proc_children  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


class Admin:
    """Keep-alive Admin API client."""

    def __init__(self, d):
        self.d = d
        self.conn = http.client.HTTPConnection("127.0.0.1", d.admin_port, timeout=60)
        self.hdr = {"X-API-KEY": d.key, "Content-Type": "application/json"}

    def put(self, path, body):
        self.conn.request("PUT", "/apisix/admin/" + path, json.dumps(body), self.hdr)
        r = self.conn.getresponse()
        data = r.read()
        if r.status not in (200, 201):
            raise SystemExit("PUT %s: %d %s" % (path, r.status, data[:300]))
        return json.loads(data)


def cpu_seconds(pid):
    """utime + stime of pid and its children now running, in seconds."""
    total = 0
    for p in [pid] + proc_children(pid):
        try:
            with open("/proc/%d/stat" % p) as f:
                st = f.read()
        except OSError:
            continue
        rest = st[st.rfind(")") + 2:].split()
        total += int(rest[11]) + int(rest[12])
    return total / TICK


def put_upstreams(adm, n, addr, tag):
    t0 = time.perf_counter()
    for i in range(n):
        adm.put("upstreams/%s%d" % (tag, i), {"type": "roundrobin", "nodes": {addr: 1}})
    return n / (time.perf_counter() - t0)


def put_routes(adm, n, tag, utag, first=0):
    t0 = time.perf_counter()
    for i in range(first, first + n):
        adm.put("routes/%s%d" % (tag, i), {"uri": "/%s%d" % (tag, i),
                                           "upstream_id": "%s%d" % (utag, i % max(1, n))})
    return n / (time.perf_counter() - t0)


def wait_served(dp, uri, timeout):
    """Seconds until dp answers 200 on uri (None: not within timeout)."""
    t0 = time.perf_counter()
    poll = None
    while time.perf_counter() - t0 < timeout:
        try:
            if poll is None:
                poll = http.client.HTTPConnection("127.0.0.1", dp.port, timeout=timeout)
            poll.request("GET", uri)
            r = poll.getresponse()
            r.read()
            if r.status == 200:
                poll.close()
                return time.perf_counter() - t0
        except (OSError, http.client.HTTPException):
            if poll:
                poll.close()
            poll = None
        time.sleep(0.002)
    return None


def one_round(a, up, r):
    out = {}
    # 1. no data plane
    lone = Daemon(name="lone%d" % r).start()
    try:
        out["put_s_no_dp"] = put_upstreams(Admin(lone), a.upstreams, up.addr, "u")
    finally:
        lone.stop()
    # 2. with a data plane
    cp = Daemon(name="cp%d" % r).start()
    dp = None
    try:
        dp = DataPlane(cp, name="dp%d" % r, workers=a.workers, log_level="info").start()
        adm = Admin(cp)
        cpu0 = cpu_seconds(dp.proc.pid)
        out["put_s_upstreams"] = put_upstreams(adm, a.upstreams, up.addr, "u")
        out["put_s_routes"] = put_routes(adm, a.routes, "r", "u")
        t_burst_end = time.perf_counter()
        # 3. the next route
        t0 = time.perf_counter()
        adm.put("routes/next", {"uri": "/next", "upstream_id": "u0"})
        s = wait_served(dp, "/next", a.timeout)
        out["next_route_s"] = (time.perf_counter() - t0) if s is not None else float("inf")
        out["after_burst_s"] = time.perf_counter() - t_burst_end
        out["dp_cpu_s"] = cpu_seconds(dp.proc.pid) - cpu0
        # 4. SIGTERM during a burst
        stop_at = threading.Event()
        err = []

        def burst():
            try:
                adm2 = Admin(cp)
                for i in range(a.stop_burst):
                    if i == a.stop_burst // 2:
                        stop_at.set()
                    adm2.put("routes/s%d" % i, {"uri": "/s%d" % i, "upstream_id": "u%d" % i})
            except BaseException as ex:  # noqa: BLE001
                err.append(ex)
            stop_at.set()
        th = threading.Thread(target=burst)
        th.start()
        stop_at.wait()
        try:
            dp.stop(timeout=a.stop_timeout)
            out["sigterm_exit_s"] = dp.last_stop_seconds
        except Fail as ex:
            print("(data plane stop: %s)" % ex, file=sys.stderr)
            out["sigterm_exit_s"] = float("inf")
        dp = None
        th.join()
        if err:
            raise SystemExit("stop burst: %s" % err[0])
    finally:
        if dp:
            try:
                dp.stop(timeout=30)
            except Fail as ex:
                print("(data plane stop: %s)" % ex, file=sys.stderr)
        cp.stop(timeout=30)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build-dir", default="build")
    ap.add_argument("--upstreams", type=int, default=2000)
    ap.add_argument("--routes", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--stop-burst", type=int, default=1000)
    ap.add_argument("--timeout", type=float, default=300,
                    help="seconds to wait for the next route to be served")
    ap.add_argument("--stop-timeout", type=float, default=30,
                    help="seconds to wait for the data plane to exit after SIGTERM")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    Settings.build_dir = os.path.abspath(a.build_dir)
    rows = []
    up = Upstream("bench").start()
    try:
        for r in range(a.rounds):
            rows.append(one_round(a, up, r))
            print("(round %d: %s)" % (r + 1, json.dumps(rows[-1])), file=sys.stderr)
    finally:
        up.stop()
        harness.kill_leftovers()
        harness.cleanup_tmp()
    if a.json:
        print(json.dumps(rows).replace("Infinity", "null"))
        return
    bound = {"next_route_s": a.timeout, "sigterm_exit_s": a.stop_timeout}

    def fmt(k, f, v):
        # inf: not within the bound (the data plane was killed at the end)
        return "> %.0f" % bound[k] if v == float("inf") else f % v
    cols = [("put_s_no_dp", "PUT/s, no data plane", "%.0f"),
            ("put_s_upstreams", "PUT/s upstreams, data plane attached", "%.0f"),
            ("put_s_routes", "PUT/s routes, data plane attached", "%.0f"),
            ("next_route_s", "next route served after (s)", "%.2f"),
            ("dp_cpu_s", "data plane CPU (s)", "%.1f"),
            ("sigterm_exit_s", "SIGTERM mid-burst -> exit (s)", "%.2f")]
    print("### Configuration burst: %d upstreams + %d routes, then one route (SQLite, "
          "1 data plane, %d workers)" % (a.upstreams, a.routes, a.workers))
    print()
    print("| round | " + " | ".join(c[1] for c in cols) + " |")
    print("| --- |" + " --- |" * len(cols))
    for i, row in enumerate(rows):
        print("| %d | " % (i + 1) + " | ".join(fmt(k, f, row[k]) for k, _, f in cols) + " |")
    print("| **median** | " + " | ".join(
        "**%s**" % fmt(k, f, statistics.median(r[k] for r in rows)) for k, _, f in cols) + " |")


if __name__ == "__main__":
    main()
