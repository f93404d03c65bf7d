#!/usr/bin/env python3
"""Benchmark: the etcd store.

1. Propagation across control planes: one etcd (data on disk), control
   planes A and B on it, a data plane (1 worker) subscribed to B and an HTTP
   upstream. Each change is a PUT through A's Admin API that moves one route
   to a new uri (/p<i>; the configuration keeps its size); its latency is
   the time from just before the PUT is sent until the data plane behind B
   first answers 200 on /p<i> (polled over one keep-alive connection). The
   same with SQLite (one control plane, the data plane behind it) is the
   baseline.
2. Admin write throughput: PUTs per second of new upstreams/<i>, sequential
   (one keep-alive connection) and with 8 concurrent clients, on SQLite and
   on etcd, with no data plane attached (what is measured is the control
   plane and its store).

Real processes throughout (etcd from Debian's etcd-server, our daemons,
tests/e2e/upstream_server.py). Prints markdown; --json for raw numbers.

usage: bench_etcd.py --build-dir build [--changes 200] [--writes 1000] [--rounds 3]
"""
import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))

import harness  # noqa: E402
from harness import Daemon, Settings  # noqa: E402
from dp_harness import DataPlane, Upstream  # noqa: E402
import etcd_harness  # noqa: E402


def pct(values, p):
    values = sorted(values)
    k = max(0, min(len(values) - 1, int(round(p / 100.0 * (len(values) - 1)))))
    return values[k]


class Admin:
    """Keep-alive Admin API client."""

    def __init__(self, d):
        self.d = d
        self.conn = http.client.HTTPConnection("127.0.0.1", d.admin_port, timeout=30)
        self.hdr = {"X-API-KEY": d.key, "Content-Type": "application/json"}

    def put(self, path, body):
        self.conn.request("PUT", "/apisix/admin/" + path, json.dumps(body), self.hdr)
        r = self.conn.getresponse()
        data = r.read()
        if r.status not in (200, 201):
            raise SystemExit("PUT %s: %d %s" % (path, r.status, data[:300]))
        return r.status


def etcd_cp(e, name):
    prefix = "/bench-" + name
    return Daemon(name=name, config={"deployment": {"etcd": {"host": [e.url],
                                                             "prefix": prefix}}},
                  args=["--store", "etcd:" + e.url]).start()


def sqlite_cp(name):
    return Daemon(name=name).start()


def propagation(writer, dp, up, n, tag):
    """Latencies (ms) of n route PUTs through writer until dp serves them."""
    adm = Admin(writer)
    poll = http.client.HTTPConnection("127.0.0.1", dp.port, timeout=10)
    lat = []
    for i in range(n):
        uri = "/p-%s-%d" % (tag, i)
        body = {"uri": uri, "upstream": {"type": "roundrobin", "nodes": {up.addr: 1}}}
        t0 = time.perf_counter()
        adm.put("routes/prop", body)
        deadline = t0 + 10
        while True:
            try:
                poll.request("GET", uri)
                r = poll.getresponse()
                r.read()
                status = r.status
            except (OSError, http.client.HTTPException):
                poll.close()
                poll = http.client.HTTPConnection("127.0.0.1", dp.port, timeout=10)
                status = 0
            if status == 200:
                lat.append((time.perf_counter() - t0) * 1000)
                break
            if time.perf_counter() > deadline:
                raise SystemExit("route %s not served within 10 s" % uri)
    poll.close()
    return lat


def throughput(d, writes, clients, tag):
    """PUTs per second of `writes` upstream PUTs over `clients` connections."""
    per = writes // clients
    errors = []

    def run(c):
        try:
            adm = Admin(d)
            for i in range(per):
                adm.put("upstreams/%s-%d-%d" % (tag, c, i),
                        {"type": "roundrobin", "nodes": {"127.0.0.1:%d" % (1000 + i): 1}})
        except BaseException as ex:  # noqa: BLE001
            errors.append(ex)
    ts = [threading.Thread(target=run, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    dt = time.perf_counter() - t0
    if errors:
        raise SystemExit("throughput: %s" % errors[0])
    return per * clients / dt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build-dir", default="build")
    ap.add_argument("--changes", type=int, default=200)
    ap.add_argument("--writes", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    Settings.build_dir = os.path.abspath(a.build_dir)
    why = etcd_harness.available()
    if why:
        raise SystemExit(why)
    # Data on disk, as in production (the tests put it on tmpfs).
    etcd_harness._data_root = tempfile.mkdtemp(prefix="airgw-bench-etcd-",
                                               dir=harness.tmp_root())
    raw = {"prop": {"etcd": [], "sqlite": []}, "tput": {}}
    procs = []
    try:
        e = etcd_harness.Etcd("bench").start()
        procs.append(e)
        up = Upstream("bench").start()
        procs.append(up)
        a_cp, b_cp = etcd_cp(e, "a"), None
        # B shares A's prefix: same keys.
        b_cp = Daemon(name="b", config={"deployment": {"etcd": {"host": [e.url],
                                                                "prefix": "/bench-a"}}},
                      args=["--store", "etcd:" + e.url]).start()
        s_cp = sqlite_cp("s")
        procs += [a_cp, b_cp, s_cp]
        dp_b = DataPlane(b_cp, name="dpB", workers=1).start()
        dp_s = DataPlane(s_cp, name="dpS", workers=1).start()
        procs = [dp_b, dp_s] + procs
        for r in range(a.rounds):
            raw["prop"]["etcd"].append(propagation(a_cp, dp_b, up, a.changes, "e%d" % r))
            raw["prop"]["sqlite"].append(propagation(s_cp, dp_s, up, a.changes, "s%d" % r))
        for dp in (dp_b, dp_s):
            dp.stop()
            procs.remove(dp)
        for store, d in (("sqlite", s_cp), ("etcd", a_cp)):
            for clients in (1, 8):
                raw["tput"]["%s/%d" % (store, clients)] = [
                    throughput(d, a.writes, clients, "t%d-%d" % (clients, r))
                    for r in range(a.rounds)]
    finally:
        for p in procs:
            try:
                p.stop()
            except Exception as ex:  # noqa: BLE001
                print("(stopping %s: %s)" % (getattr(p, "name", p), ex), file=sys.stderr)
        harness.kill_leftovers()
        harness.cleanup_tmp()

    if a.json:
        print(json.dumps(raw))
        return
    print("### Config propagation across control planes: PUT on A -> traffic on a data "
          "plane behind B (ms)")
    print()
    print("%d changes per round, %d rounds; per-round figures, then the median of the "
          "rounds." % (a.changes, a.rounds))
    print()
    print("| store | path | round | p50 | p99 | max |")
    print("| --- | --- | --- | --- | --- | --- |")
    for store, path in (("etcd", "A -> etcd -> B -> data plane"),
                        ("sqlite", "one control plane -> data plane")):
        rows = raw["prop"][store]
        for i, lat in enumerate(rows):
            print("| %s | %s | %d | %.2f | %.2f | %.2f |" % (store, path, i + 1, pct(lat, 50),
                                                            pct(lat, 99), max(lat)))
        print("| %s | %s | **median** | **%.2f** | **%.2f** | %.2f |" % (
            store, path, statistics.median(pct(x, 50) for x in rows),
            statistics.median(pct(x, 99) for x in rows), statistics.median(max(x) for x in rows)))
    print()
    print("### Admin API writes per second (PUT upstreams/<id>, %d per round, median of %d)"
          % (a.writes, a.rounds))
    print()
    print("| store | clients | PUT/s (median) | rounds |")
    print("| --- | --- | --- | --- |")
    for k, v in raw["tput"].items():
        store, clients = k.split("/")
        print("| %s | %s | %.0f | %s |" % (store, clients, statistics.median(v),
                                          ", ".join("%.0f" % x for x in v)))


if __name__ == "__main__":
    main()
