#!/usr/bin/env python3
"""Benchmark: how long an Admin API write takes to reach every subscriber.

Starts a real airgw-controlplane (SQLite store, in a temp dir) and N
airgw-cfgwatch subscribers, then makes M route PUTs one after another over
one keep-alive HTTP connection. For each write, latency = the time the
subscriber received the PUT (cfgwatch's recv_us, CLOCK_REALTIME) minus the
time just before the request was sent. Prints one markdown table row set
and, with --json, the raw numbers.

usage: bench_config_stream.py --build-dir build [--subscribers 4] [--writes 500]
"""
import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def pct(values, p):
    values = sorted(values)
    k = max(0, min(len(values) - 1, int(round(p / 100.0 * (len(values) - 1)))))
    return values[k]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build-dir", default="build")
    ap.add_argument("--subscribers", type=int, default=4)
    ap.add_argument("--writes", type=int, default=500)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    cp_bin = os.path.join(a.build_dir, "controlplane", "airgw-controlplane")
    watch_bin = os.path.join(a.build_dir, "proto", "airgw-cfgwatch")
    tmp = tempfile.mkdtemp(prefix="airgw-bench-")
    admin, stream = free_port(), free_port()
    key = "bench-key-0123456789"
    cp = subprocess.Popen([cp_bin, "--admin-listen", "127.0.0.1:%d" % admin,
                           "--config-listen", "127.0.0.1:%d" % stream, "--admin-key", key,
                           "--state-dir", tmp, "--log-level", "warn"],
                          stderr=open(os.path.join(tmp, "cp.log"), "w"))
    watchers = []
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", admin), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        conn = http.client.HTTPConnection("127.0.0.1", admin)
        hdr = {"X-API-KEY": key, "Content-Type": "application/json"}
        conn.request("PUT", "/apisix/admin/upstreams/1",
                     json.dumps({"nodes": {"127.0.0.1:1980": 1}}), hdr)
        conn.getresponse().read()
        outs = []
        for i in range(a.subscribers):
            path = os.path.join(tmp, "w%d.jsonl" % i)
            outs.append(path)
            watchers.append(subprocess.Popen(
                [watch_bin, "--connect", "127.0.0.1:%d" % stream, "--node-id", "bench%d" % i,
                 "--timeout-ms", str(60000 + a.writes * 50)],
                stdout=open(path, "w"), stderr=subprocess.DEVNULL))
        # Wait until every subscriber has its snapshot.
        deadline = time.time() + 10
        while time.time() < deadline:
            if all("SNAPSHOT_END" in open(p).read() for p in outs):
                break
            time.sleep(0.05)
        sent = {}
        for i in range(a.writes):
            body = json.dumps({"uri": "/bench/%d" % i, "upstream_id": "1"})
            t0 = time.time_ns() // 1000
            conn.request("PUT", "/apisix/admin/routes/r%d" % (i % 50), body, hdr)
            resp = conn.getresponse()
            data = json.loads(resp.read())
            sent[data["modifiedIndex"]] = t0
        time.sleep(0.5)
        for w in watchers:
            w.terminate()
            w.wait(5)
        lat = []
        for p in outs:
            for line in open(p):
                m = json.loads(line)
                if m.get("type") == "PUT" and m.get("revision") in sent:
                    lat.append((m["recv_us"] - sent[m["revision"]]) / 1000.0)
        expected = a.writes * a.subscribers
        res = {
            "subscribers": a.subscribers, "writes": a.writes, "received": len(lat),
            "expected": expected, "p50_ms": round(pct(lat, 50), 3),
            "p99_ms": round(pct(lat, 99), 3), "max_ms": round(max(lat), 3),
            "mean_ms": round(statistics.mean(lat), 3),
        }
        if a.json:
            print(json.dumps(res))
        else:
            print("| %d | %d | %d/%d | %.2f | %.2f | %.2f |" % (
                a.subscribers, a.writes, len(lat), expected, res["p50_ms"], res["p99_ms"],
                res["max_ms"]))
        return 0 if len(lat) == expected else 1
    finally:
        for w in watchers:
            if w.poll() is None:
                w.kill()
        cp.terminate()
        cp.wait(10)


if __name__ == "__main__":
    sys.exit(main())
