"""The etcd store with real etcd (Debian's etcd-server 3.4): APISIX's key
layout, several control planes on one etcd and the data planes behind them,
concurrent writers, delete protection across control planes, compaction,
etcd down and back, endpoint failover in a 3-member cluster, leases.

These tests start their own etcd (and control planes on it), so they run in
the default (sqlite) pass of both builds; the rest of the admin suite runs a
second time on etcd with run_all.py --store etcd."""

import json
import os
import re
import shutil
import threading
import time

from certs import ca, client, module_certs, server
from dp_harness import new_dp, new_upstream, wait_serving
from etcd_harness import Etcd, EtcdClient, etcdctl, module_etcd, new_cluster, new_etcd, unb64
from harness import T, Fail, check, eq, expect_error, expect_status, uid, wait_until

CONFLICT = "the resource was changed by another writer at the same time; retry"


def cp_on(ctx, urls, prefix=None, timeout=None, name="cp", **kw):
    """A control plane on etcd at urls (a URL or a list): --store etcd:URLS
    and deployment.etcd in its config file."""
    urls = [urls] if isinstance(urls, str) else list(urls)
    etcd = {"host": urls}
    if prefix is not None:
        etcd["prefix"] = prefix
    if timeout is not None:
        etcd["timeout"] = timeout
    return ctx.daemon(name=name, config={"deployment": {"etcd": etcd}},
                      args=["--store", "etcd:" + ",".join(urls)], **kw)


def pair(ctx, urls_a, urls_b=None, prefix=None, **kw):
    """Two control planes on the same etcd keys."""
    prefix = prefix or "/" + uid("pair")
    a = cp_on(ctx, urls_a, prefix, name="cpA", **kw)
    b = cp_on(ctx, urls_b or urls_a, prefix, name="cpB", **kw)
    return a, b


def cp_with_dp(ctx, tag):
    """The module's etcd, a control plane on it under a prefix of its own,
    an upstream and a data plane: (etcd, prefix, cp, upstream, dp)."""
    e = module_etcd(ctx)
    prefix = "/" + uid(tag)
    d = cp_on(ctx, e.url, prefix)
    return e, prefix, d, new_upstream(ctx, tag), new_dp(ctx, d, workers=1)


def rel(key):
    """An admin API path ("routes/1") from a resource key ("/apisix/routes/1")."""
    return "/".join(key.split("/")[-2:])


def route(up, uri, **extra):
    r = {"uri": uri, "upstream": {"type": "roundrobin", "nodes": {up.addr: 1}}}
    r.update(extra)
    return r


def serving(dps, path, timeout=5):
    return wait_serving(dps, path, timeout=timeout, streak=2)


def gone(dps, path, timeout=5):
    return wait_serving(dps, path, pred=lambda r: r.status == 404, timeout=timeout, streak=2,
                        what="404")


def parallel(fns):
    """Runs the callables in threads at once; returns their results in order."""
    out = [None] * len(fns)
    start = threading.Event()

    def run(i):
        start.wait()
        try:
            out[i] = fns[i]()
        except Exception as e:  # noqa: BLE001
            out[i] = e
    ts = [threading.Thread(target=run, args=(i,)) for i in range(len(fns))]
    for t in ts:
        t.start()
    start.set()
    for t in ts:
        t.join()
    for x in out:
        if isinstance(x, Exception):
            raise x
    return out


def etcd_kvs(url, prefix):
    """{key: kv} from `etcdctl get --prefix -w json` (key, value decoded)."""
    rc, out, err = etcdctl(url, "get", "--prefix", prefix, "-w", "json")
    check(rc == 0, "etcdctl get --prefix %s: exit %d: %s" % (prefix, rc, err.strip()))
    kvs = {}
    for kv in json.loads(out).get("kvs") or []:
        kv["key"] = unb64(kv["key"])
        kv["value"] = unb64(kv.get("value"))
        kvs[kv["key"]] = kv
    return kvs


# ---------------------------------------------------------------------------
# layout


def test_etcdctl_shows_apisix_layout(ctx):
    e = module_etcd(ctx)
    d = cp_on(ctx, e.url)  # the default prefix: /apisix
    up = d.must("PUT", "upstreams/u1", {"type": "roundrobin", "nodes": {"127.0.0.1:1980": 1}},
                status=201)
    r1 = d.must("PUT", "routes/1", {"uri": "/hello", "upstream_id": "u1"}, status=201)
    jack = d.must("PUT", "consumers", {"username": "jack"}, status=201)
    posted = d.must("POST", "services", {"upstream_id": "u1"}, status=201)
    kvs = etcd_kvs(e.url, "/apisix")
    want = {"/apisix/upstreams/u1": up, "/apisix/routes/1": r1, "/apisix/consumers/jack": jack,
            posted["key"]: posted}
    check(posted["key"].startswith("/apisix/services/"), "POST key %r" % posted["key"])
    eq(sorted(kvs), sorted(want), "keys under /apisix in etcd")
    for key, ans in want.items():
        kv = kvs[key]
        try:
            stored = json.loads(kv["value"])
        except ValueError:
            raise Fail("etcd value of %s is not JSON: %r" % (key, kv["value"][:200]))
        g = d.must("GET", rel(key))
        eq(stored, g["value"], "etcd value of %s vs the admin API's value" % key)
        eq((g["createdIndex"], g["modifiedIndex"]),
           (int(kv["create_revision"]), int(kv["mod_revision"])),
           "%s (createdIndex, modifiedIndex) vs etcd (create_revision, mod_revision)" % key)
        eq((ans["createdIndex"], ans["modifiedIndex"]),
           (int(kv["create_revision"]), int(kv["mod_revision"])),
           "%s indexes in the write's answer vs etcd" % key)
    # A replace keeps create_revision and moves mod_revision.
    r2 = d.must("PUT", "routes/1", {"uri": "/hello2", "upstream_id": "u1"}, status=200)
    kv = etcd_kvs(e.url, "/apisix/routes/1")["/apisix/routes/1"]
    eq((r2["createdIndex"], r2["modifiedIndex"]),
       (int(kv["create_revision"]), int(kv["mod_revision"])), "indexes after a replace")
    check(r2["modifiedIndex"] > r1["modifiedIndex"], "mod_revision did not move on replace")
    # A DELETE removes the key from etcd.
    d.must("DELETE", rel(posted["key"]), status=200)
    check(posted["key"] not in etcd_kvs(e.url, "/apisix"), "deleted key still in etcd")


def test_prefix_is_honoured_and_isolates(ctx):
    e = module_etcd(ctx)
    pa, pb = "/" + uid("pa"), "/" + uid("pb")
    a = cp_on(ctx, e.url, pa, name="cpA")
    b = cp_on(ctx, e.url, pb, name="cpB")
    a.must("PUT", "upstreams/same", {"type": "roundrobin", "nodes": {"127.0.0.1:1": 1}},
           status=201)
    b.must("PUT", "upstreams/same", {"type": "roundrobin", "nodes": {"127.0.0.1:2": 1}},
           status=201)
    ka, kb = etcd_kvs(e.url, pa + "/"), etcd_kvs(e.url, pb + "/")
    eq(sorted(ka), [pa + "/upstreams/same"], "keys under prefix %s" % pa)
    eq(sorted(kb), [pb + "/upstreams/same"], "keys under prefix %s" % pb)
    eq(a.must("GET", "upstreams/same")["value"]["nodes"], {"127.0.0.1:1": 1}, "A's upstream")
    eq(b.must("GET", "upstreams/same")["value"]["nodes"], {"127.0.0.1:2": 1}, "B's upstream")
    eq(a.must("GET", "upstreams")["total"], 1, "A's list total (B's keys are not A's)")


def test_write_in_etcd_reaches_data_planes(ctx):
    # Operators sometimes write etcd directly (etcdctl put), as with APISIX.
    e, prefix, d, up, dp = cp_with_dp(ctx, "ext")
    body = json.dumps(route(up, "/ext", id="ext"))
    rc, _, err = etcdctl(e.url, "put", prefix + "/routes/ext", body)
    check(rc == 0, "etcdctl put: %s" % err)
    serving(dp, "/ext")
    eq(d.must("GET", "routes/ext")["value"]["uri"], "/ext", "admin GET of an etcdctl write")
    rc, _, err = etcdctl(e.url, "del", prefix + "/routes/ext")
    check(rc == 0, "etcdctl del: %s" % err)
    gone(dp, "/ext")
    expect_status(d.get("routes/ext"), 404)


# ---------------------------------------------------------------------------
# two control planes


def test_two_control_planes_see_each_others_writes(ctx):
    e = module_etcd(ctx)
    a, b = pair(ctx, e.url)
    up = new_upstream(ctx, "two")
    dpa = new_dp(ctx, a, name="dpA", workers=1)
    dpb = new_dp(ctx, b, name="dpB", workers=1)
    # Written through A: B answers it, both data planes serve it.
    wa = a.must("PUT", "routes/r1", route(up, "/one"), status=201)
    gb = b.must("GET", "routes/r1")
    eq((gb["value"], gb["modifiedIndex"]), (wa["value"], wa["modifiedIndex"]),
       "B's GET of A's write (value, modifiedIndex)")
    serving([dpa, dpb], "/one")
    # Changed through B: both data planes follow.
    b.must("PATCH", "routes/r1", {"uri": "/uno"}, status=200)
    serving([dpa, dpb], "/uno")
    gone([dpa, dpb], "/one")
    eq(a.must("GET", "routes/r1")["value"]["uri"], "/uno", "A's GET after B's PATCH")
    # POST through B, listed by A.
    p = b.must("POST", "routes", route(up, "/posted"), status=201)
    keys = [it["key"] for it in a.must("GET", "routes")["list"]]
    check(p["key"] in keys, "A's list %r lacks B's POST %s" % (keys, p["key"]))
    serving([dpa, dpb], "/posted")
    # Deleted through A.
    a.must("DELETE", "routes/r1", status=200)
    gone([dpa, dpb], "/uno")
    expect_status(b.get("routes/r1"), 404)


def test_data_plane_moves_to_the_other_control_plane(ctx):
    # Revisions are etcd's, the same on every control plane: a data plane
    # whose control plane goes away continues on the next one it knows.
    e = module_etcd(ctx)
    a, b = pair(ctx, e.url)
    up = new_upstream(ctx, "move")
    dp = new_dp(ctx, "127.0.0.1:%d,127.0.0.1:%d" % (a.config_port, b.config_port), workers=1)
    a.must("PUT", "routes/m1", route(up, "/m1"), status=201)
    serving(dp, "/m1")
    a.stop()
    b.must("PUT", "routes/m2", route(up, "/m2"), status=201)
    b.must("DELETE", "routes/m1", status=200)
    serving(dp, "/m2", timeout=10)
    gone(dp, "/m1")
    # Only the missed changes were sent: B's revisions are A's.
    check(re.search(r"synced with 127\.0\.0\.1:%d at revision \d+ \(resumed\)" % b.config_port,
                    dp.stderr()), "the data plane did not resume on the second control plane: %s"
          % "\n".join(dp.tail(6)))


def test_concurrent_patches_through_two_control_planes(ctx):
    e = module_etcd(ctx)
    a, b = pair(ctx, e.url)
    a.must("PUT", "routes/hot", {"uri": "/hot", "upstream": {
        "type": "roundrobin", "nodes": {"127.0.0.1:1980": 1}}, "labels": {"seed": "0"}},
        status=201)
    n = 32
    res = parallel([(lambda k=k: (a if k % 2 else b).patch(
        "routes/hot", {"labels": {"k%d" % k: "v%d" % k}})) for k in range(n)])
    labels = a.must("GET", "routes/hot")["value"].get("labels", {})
    acked = {k for k in range(n) if res[k].status == 200}
    refused = {k for k in range(n) if res[k].status == 409}
    others = [res[k] for k in range(n) if k not in acked | refused]
    check(not others, "PATCH answers other than 200/409: %r" % others[:3])
    for k in refused:
        expect_error(res[k], 409, exact=CONFLICT)
    check(acked, "no PATCH succeeded")
    want = {"seed": "0"}
    want.update({"k%d" % k: "v%d" % k for k in acked})
    eq(labels, want, "labels after %d concurrent PATCHes (%d acknowledged, %d refused 409): "
       "every acknowledged one and no refused one" % (n, len(acked), len(refused)))

    # Clients that retry on 409 all get through, and nothing is lost.
    def retrying(d, k):
        for _ in range(100):
            r = d.patch("routes/hot", {"labels": {"r%d" % k: "x"}})
            if r.status == 200:
                return r.status
            if r.status != 409:
                return r
        return "still 409 after 100 tries"
    res = parallel([(lambda k=k: retrying(a if k % 2 else b, k)) for k in range(16)])
    eq(res, [200] * 16, "retrying PATCH outcomes")
    labels = b.must("GET", "routes/hot")["value"]["labels"]
    eq(sorted(k for k in labels if k.startswith("r")), sorted("r%d" % k for k in range(16)),
       "labels of retrying writers")


def test_concurrent_posts_through_two_control_planes(ctx):
    e = module_etcd(ctx)
    a, b = pair(ctx, e.url)
    n = 24
    res = parallel([(lambda k=k: (a if k % 2 else b).post(
        "upstreams", {"type": "roundrobin", "nodes": {"127.0.0.1:%d" % (3000 + k): 1}}))
        for k in range(n)])
    bad = [r for r in res if r.status not in (201, 409)]
    check(not bad, "POST answers other than 201/409: %r" % bad[:3])
    made = {r.j["key"]: r.j["value"]["nodes"] for r in res if r.status == 201}
    eq(len(made), sum(1 for r in res if r.status == 201), "distinct keys of created upstreams")
    listed = {it["key"]: it["value"]["nodes"] for it in a.must("GET", "upstreams")["list"]}
    eq(listed, made, "stored upstreams vs the 201 answers")


def test_delete_protection_across_control_planes(ctx):
    e = module_etcd(ctx)
    a, b = pair(ctx, e.url)
    a.must("PUT", "upstreams/u", {"type": "roundrobin", "nodes": {"127.0.0.1:1980": 1}},
           status=201)
    b.must("PUT", "routes/r", {"uri": "/r", "upstream_id": "u"}, status=201)
    expect_error(a.delete("upstreams/u"), 400,
                 exact="can not delete this upstream, route [r] is still using it now")
    b.must("DELETE", "routes/r", status=200)
    a.must("DELETE", "upstreams/u", status=200)
    # A route that refers to an upstream and the upstream's DELETE, at once
    # through the two control planes: never both (no dangling reference).
    both = []
    for i in range(20):
        u = "u%d" % i
        a.must("PUT", "upstreams/" + u, {"type": "roundrobin", "nodes": {"127.0.0.1:1980": 1}},
               status=201)
        rd, rp = parallel([lambda: a.delete("upstreams/" + u),
                           lambda: b.put("routes/" + u, {"uri": "/" + u, "upstream_id": u})])
        check(rd.status in (200, 400, 409), "DELETE: %r" % rd)
        check(rp.status in (201, 400, 409), "PUT route: %r" % rp)
        if rd.status == 200 and rp.status == 201:
            both.append(u)
        has_up = a.get("upstreams/" + u).status == 200
        has_route = a.get("routes/" + u).status == 200
        check(has_up or not has_route, "route %s stored without its upstream (DELETE %d, "
              "PUT %d)" % (u, rd.status, rp.status))
    eq(both, [], "rounds where both the DELETE and the referring PUT succeeded")


# ---------------------------------------------------------------------------
# leases


def test_ttl_uses_a_lease(ctx):
    e, prefix, d, up, dp = cp_with_dp(ctx, "ttl")
    for bad in ("abc", "0", "-1", "1.5"):
        r = d.put("routes/bad?ttl=" + bad, route(up, "/bad"))
        expect_error(r, 400)
        expect_status(d.get("routes/bad"), 404)
    t0 = time.monotonic()
    d.must("PUT", "routes/short?ttl=2", route(up, "/short"), status=201)
    p = d.must("POST", "routes?ttl=2", route(up, "/short-post"), status=201)
    d.must("PUT", "routes/keep?ttl=2", route(up, "/keep"), status=201)
    d.must("PUT", "routes/keep", route(up, "/keep"), status=200)  # no ttl: permanent again
    d.must("PUT", "routes/plain", route(up, "/plain"), status=201)
    kvs = etcd_kvs(e.url, prefix + "/routes/")
    check(int(kvs[prefix + "/routes/short"].get("lease", 0)) != 0,
          "routes/short?ttl=2 has no lease in etcd: %r" % kvs[prefix + "/routes/short"])
    eq(int(kvs[prefix + "/routes/plain"].get("lease", 0)), 0, "lease of a route without ttl")
    serving(dp, "/short", timeout=1.5)
    expect_status(d.get("routes/short"), 200)
    # Gone after expiry: from the admin API, etcd and the data plane.
    if not wait_until(lambda: d.get("routes/short").status == 404, T(8), interval=0.2):
        raise Fail("routes/short?ttl=2 still there %.1fs later" % (time.monotonic() - t0))
    check(time.monotonic() - t0 >= 1.5, "routes/short?ttl=2 gone after %.2fs" % (
        time.monotonic() - t0))
    expect_status(d.get(rel(p["key"])), 404)
    gone(dp, "/short")
    gone(dp, "/short-post")
    eq(sorted(etcd_kvs(e.url, prefix + "/routes/")),
       [prefix + "/routes/keep", prefix + "/routes/plain"], "keys left in etcd")
    expect_status(d.get("routes/keep"), 200)
    serving(dp, "/keep")
    serving(dp, "/plain")


# ---------------------------------------------------------------------------
# etcd down and back, compaction, failover


def test_etcd_down_and_back(ctx):
    e = new_etcd(ctx)
    d = cp_on(ctx, e.url, timeout=1)
    up = new_upstream(ctx, "down")
    dp = new_dp(ctx, d, workers=1)
    d.must("PUT", "routes/before", route(up, "/before"), status=201)
    serving(dp, "/before")

    def unavailable(r, what):
        if r.status == 0:
            raise Fail("%s: no answer within %.0fs while etcd is down (%s)" % (
                what, T(8), r.text))
        expect_error(r, 503, prefix="store unavailable: etcd")

    # etcd hangs (SIGSTOP): answers come within the timeout, as 503.
    e.pause()
    try:
        for m, path, body in (("GET", "routes/before", None), ("GET", "routes", None),
                              ("PUT", "routes/x", route(up, "/x")),
                              ("DELETE", "routes/before", None)):
            unavailable(d.api(m, path, body, timeout=T(8)), "%s %s (etcd hung)" % (m, path))
        eq(dp.get("/before").status, 200, "data plane while etcd hangs")
    finally:
        e.resume()
    # etcd stopped (connections refused).
    e.stop()
    for m, path, body in (("GET", "routes/before", None), ("PATCH", "routes/before",
                                                             {"desc": "x"}),
                          ("POST", "routes", route(up, "/y"))):
        unavailable(d.api(m, path, body, timeout=T(8)), "%s %s (etcd stopped)" % (m, path))
    expect_status(d.get("/healthz", key=None), 200)
    for _ in range(5):
        eq(dp.get("/before").status, 200, "data plane while etcd is stopped")
    # etcd back: everything recovers without restarting anything.
    e.start()
    if not wait_until(lambda: d.get("routes/before").status == 200, T(15), interval=0.2):
        raise Fail("admin GET still failing 15s after etcd returned: %r" % d.get("routes/before"))
    d.must("PUT", "routes/after", route(up, "/after"), status=201)
    serving(dp, "/after", timeout=10)
    d.must("DELETE", "routes/before", status=200)
    gone(dp, "/before")
    check(d.running(), "the control plane exited")


def followers_first(cl):
    """The cluster's members, the leader last."""
    lead = cl.leader()
    check(lead is not None, "no etcd leader found")
    return sorted(cl.members, key=lambda m: m is cl.members[lead])


def test_control_plane_started_before_etcd(ctx):
    e = Etcd("late")
    ctx.daemons.append(e)
    d = cp_on(ctx, e.url, timeout=1)  # nothing listens there yet
    expect_error(d.get("routes", timeout=T(8)), 503, prefix="store unavailable: etcd")
    up = new_upstream(ctx, "late")
    dp = new_dp(ctx, d, workers=1, start=False)
    dp.start(synced=False)
    e.start()
    if not wait_until(lambda: d.get("routes").status == 200, T(10), interval=0.2):
        raise Fail("admin GET still failing 10s after etcd started: %r" % d.get("routes"))
    d.must("PUT", "routes/late", route(up, "/late"), status=201)
    serving(dp, "/late", timeout=10)


def test_etcd_replaced_by_an_empty_one(ctx):
    # etcd restored from an old backup or rebuilt empty: its revision goes
    # back. Control plane and data planes must follow what etcd now holds.
    e = new_etcd(ctx)
    d = cp_on(ctx, e.url, timeout=1)
    up = new_upstream(ctx, "wipe")
    dp = new_dp(ctx, d, workers=1)
    for k in range(5):
        d.must("PUT", "routes/old%d" % k, route(up, "/old%d" % k), status=201)
    serving(dp, "/old4")
    e.kill9()
    shutil.rmtree(e.data_dir)
    e.start()
    if not wait_until(lambda: d.get("routes").status == 200, T(10), interval=0.2):
        raise Fail("admin GET still failing 10s after etcd returned: %r" % d.get("routes"))
    eq(d.must("GET", "routes")["total"], 0, "routes listed from the empty etcd")
    d.must("PUT", "routes/new", route(up, "/new"), status=201)
    serving(dp, "/new", timeout=10)
    gone(dp, "/old0")
    gone(dp, "/old4")


def test_compaction_and_broken_watch(ctx):
    cl = new_cluster(ctx, 3)
    m1, m2, _ = followers_first(cl)  # m1 dies: a follower (leader loss is tested below)
    a, b = pair(ctx, [m1.url], [m2.url])
    up = new_upstream(ctx, "cmp")
    dpa = new_dp(ctx, a, name="dpA", workers=1)
    dpb = new_dp(ctx, b, name="dpB", workers=1)
    a.must("PUT", "routes/r1", route(up, "/c1"), status=201)
    serving([dpa, dpb], "/c1")
    # Compaction while both watch: later writes still reach everyone.
    EtcdClient(m2.url).compact()
    b.must("PUT", "routes/r2", route(up, "/c2"), status=201)
    serving([dpa, dpb], "/c2")
    a.must("PUT", "routes/r3", route(up, "/c3"), status=201)
    serving([dpa, dpb], "/c3")
    # A's only etcd member dies: A's watch breaks. Meanwhile B changes
    # things and etcd compacts past them. When the member returns, A's
    # watch cannot resume from where it was: A must reload and resync.
    m1.kill9()
    b.must("PUT", "routes/r4", route(up, "/c4"), status=201)
    b.must("DELETE", "routes/r1", status=200)
    b.must("PATCH", "routes/r2", {"uri": "/c2b"}, status=200)
    serving(dpb, "/c4")
    gone(dpb, "/c1")
    eq(dpa.get("/c1").status, 200, "dpA while its control plane's etcd member is down")
    EtcdClient(m2.url).compact()
    m1.start()
    serving(dpa, "/c4", timeout=15)
    serving(dpa, "/c2b")
    gone(dpa, "/c1")
    gone(dpa, "/c2")
    a.must("PUT", "routes/r5", route(up, "/c5"), status=201)
    serving([dpa, dpb], "/c5")
    eq(sorted(it["key"].rsplit("/", 1)[1] for it in a.must("GET", "routes")["list"]),
       ["r2", "r3", "r4", "r5"], "A's routes after the resync")


def two_cps(ctx, tag, members_a, member_b, first):
    """Control plane A on members_a (timeout 2 s) with a data plane, B on
    member_b, under one prefix; route `first` is served by A's data plane.
    Returns (a, b, upstream, dpa)."""
    prefix = "/" + uid(tag)
    a = cp_on(ctx, [m.url for m in members_a], prefix, timeout=2, name="cpA")
    b = cp_on(ctx, [member_b.url], prefix, name="cpB")
    up = new_upstream(ctx, tag)
    dpa = new_dp(ctx, a, name="dpA", workers=1)
    a.must("PUT", "routes/" + first, route(up, "/" + first), status=201)
    serving(dpa, "/" + first)
    return a, b, up, dpa


def first_put_moves_on(a, up, name, what, interval):
    """The first PUT through A after its first etcd member `what` (died,
    hung) already works: A moved on to its next member."""
    first = a.put("routes/" + name, route(up, "/" + name))
    if first.status != 201:
        ok = wait_until(lambda: a.put("routes/" + name, route(up, "/" + name)).status in (200, 201),
                        T(10), interval=interval)
        raise Fail("first PUT through A after its first etcd member %s: %r (%s later)" % (
            what, first, "it worked" if ok else "still failing 10s"))


def test_endpoint_failover(ctx):
    cl = new_cluster(ctx, 3)
    # The member that dies is a follower: the cluster keeps its leader, so
    # what is tested is the control plane's move to its next URL.
    m1, m2, m3 = followers_first(cl)
    a, b, up, dpa = two_cps(ctx, "fo", [m1, m2], m3, "f1")
    m1.kill9()
    # Admin requests on A move to the second URL.
    first_put_moves_on(a, up, "f2", "died", 0.2)
    for k in range(5):
        expect_status(a.put("routes/g%d" % k, route(up, "/g%d" % k)), 201)
    expect_status(a.get("routes/f1"), 200)
    serving(dpa, "/f2")
    # A's watch moved too: a write through B (on the third member) reaches
    # A's data plane.
    b.must("PUT", "routes/f3", route(up, "/f3"), status=201)
    serving(dpa, "/f3", timeout=10)
    b.must("DELETE", "routes/f1", status=200)
    gone(dpa, "/f1")
    m1.start()


def test_leader_loss_is_not_an_outage(ctx):
    # etcd elects a new leader within about a second (election timeout
    # 500 ms here); the control plane's store timeout is 5 s, so admin
    # requests made meanwhile wait for the new leader instead of failing.
    cl = new_cluster(ctx, 3)
    f1, f2, lead = followers_first(cl)
    a = cp_on(ctx, [f1.url], "/" + uid("ll"), name="cpA")
    up = new_upstream(ctx, "ll")
    dpa = new_dp(ctx, a, name="dpA", workers=1)
    a.must("PUT", "routes/l0", route(up, "/l0"), status=201)
    serving(dpa, "/l0")
    lead.kill9()
    res = [a.put("routes/l%d" % k, route(up, "/l%d" % k)) for k in range(1, 4)]
    res += [a.get("routes/l0"), a.get("routes")]
    eq([r.status for r in res], [201, 201, 201, 200, 200],
       "admin requests right after the etcd leader died (%s)" % "; ".join(
           r.text[:160] for r in res if r.status >= 300))
    serving(dpa, "/l3", timeout=10)
    lead.start()


def test_hung_member_does_not_stall_changes(ctx):
    # A member that stops answering without closing its connections (a frozen
    # VM, a network black hole; here SIGSTOP) must not freeze the changes a
    # control plane streams: its watch has to notice and move on.
    cl = new_cluster(ctx, 3)
    f1, f2, lead = followers_first(cl)
    a, b, up, dpa = two_cps(ctx, "hung", [f1, f2], lead, "h0")
    f1.pause()
    try:
        # The hung member gets only a share of the request's timeout: the
        # first request already moves on to the second member.
        first_put_moves_on(a, up, "h1", "hung", 0.1)
        b.must("PUT", "routes/h2", route(up, "/h2"), status=201)
        serving(dpa, "/h1", timeout=15)
        serving(dpa, "/h2", timeout=15)
    finally:
        f1.resume()


# ---------------------------------------------------------------------------
# TLS and authentication

def certs(ctx):
    d = module_certs(ctx, "etcd-certs",
                     ca("ca", "/CN=airgw etcd e2e CA"),
                     # etcd's own gateway dials etcd with the server certificate:
                     # clientAuth too.
                     server("server", "/CN=etcd", "IP:127.0.0.1,DNS:localhost",
                            eku="serverAuth,clientAuth"),
                     client("client", "/CN=airgw-controlplane"))
    return {n: os.path.join(d, f) for n, f in (
        ("ca", "ca.crt"), ("cert", "server.crt"), ("key", "server.key"),
        ("client_cert", "client.crt"), ("client_key", "client.key"))}


def tls_cp(ctx, e, tls, name="cp", start=True):
    return ctx.daemon(name=name, start=start, config={"deployment": {"etcd": {
        "host": [e.url], "prefix": "/apisix", "timeout": 2, "tls": tls}}},
        args=["--store", "etcd:" + e.url])


def refused(d, regex=None):
    """A control plane whose etcd refuses it: either it exits at start with
    a message (status 1), or it runs and answers 503 with a clear error."""
    try:
        d.start()
    except Fail as e:
        if d.running():
            raise
        d.stop_checked = True
        d._close_files()
        err = d.stderr()
        check(d.proc.returncode == 1, "exit status %s: %s" % (d.proc.returncode, e))
        check("etcd" in err and (regex is None or re.search(regex, err)),
              "start-up failure does not say why: %r" % err[-500:])
        return
    msg = expect_error(d.get("routes", timeout=T(8)), 503, prefix="store unavailable: etcd")
    check(regex is None or re.search(regex, msg), "503 error_msg %r does not match /%s/" % (
        msg, regex))


def test_tls_with_client_certificates(ctx):
    c = certs(ctx)
    e = new_etcd(ctx, tls=c)
    d = tls_cp(ctx, e, {"ca": c["ca"], "cert": c["client_cert"], "key": c["client_key"],
                        "verify": True})
    w = ctx.watch(d)
    w.snapshot()
    r = d.must("PUT", "routes/t1", {"uri": "/t1", "upstream": {
        "type": "roundrobin", "nodes": {"127.0.0.1:1980": 1}}}, status=201)
    w.wait_for(lambda m: m.get("key") == "/apisix/routes/t1", what="PUT of routes/t1 over TLS")
    rc, out, err = etcdctl(e.url, *e.ctl_args(), "get", "/apisix/routes/t1", "--print-value-only")
    check(rc == 0, "etcdctl over TLS: %s" % err)
    eq(json.loads(out), r["value"], "value in etcd written over TLS")
    # Without a client certificate etcd refuses the TLS handshake: a clear 503.
    refused(tls_cp(ctx, e, {"ca": c["ca"], "verify": True}, name="nocert", start=False))
    # Without the CA, etcd's certificate cannot be verified: a clear 503.
    refused(tls_cp(ctx, e, {"cert": c["client_cert"], "key": c["client_key"], "verify": True},
                   name="noca", start=False), regex="(?i)certificate|verif|SSL|TLS")
    # verify: false accepts it.
    d4 = tls_cp(ctx, e, {"cert": c["client_cert"], "key": c["client_key"], "verify": False},
                name="noverify")
    eq(d4.must("GET", "routes/t1")["value"], r["value"], "GET with verify: false")


def test_user_and_password(ctx):
    # Simple tokens live 1 s here, so the control plane must authenticate
    # again when etcd forgets its token.
    e = new_etcd(ctx, extra=["--auth-token-ttl", "1"])
    for cmd in (["user", "add", "root", "--new-user-password=rootpw"], ["role", "add", "root"],
                ["user", "grant-role", "root", "root"], ["role", "add", "gw"],
                ["role", "grant-permission", "gw", "--prefix=true", "readwrite", "/apisix/"],
                ["user", "add", "gw", "--new-user-password=gw pw"],
                ["user", "grant-role", "gw", "gw"], ["auth", "enable"]):
        rc, _, err = etcdctl(e.url, *cmd)
        check(rc == 0, "etcdctl %s: %s" % (" ".join(cmd), err))

    def cp(user, password, name, start=True):
        return ctx.daemon(name=name, start=start, config={"deployment": {"etcd": {
            "host": [e.url], "user": user, "password": password, "timeout": 2}}},
            args=["--store", "etcd:" + e.url])
    d = cp("gw", "gw pw", "gw")
    w = ctx.watch(d)
    w.snapshot()
    d.must("PUT", "routes/a1", {"uri": "/a1", "upstream": {
        "type": "roundrobin", "nodes": {"127.0.0.1:1980": 1}}}, status=201)
    w.wait_for(lambda m: m.get("key") == "/apisix/routes/a1", what="PUT with authentication")
    rc, out, err = etcdctl(e.url, "--user", "root:rootpw", "get", "--prefix", "/apisix/",
                           "--keys-only")
    eq(out.split(), ["/apisix/routes/a1"], "keys in etcd")
    time.sleep(2.5)  # the token expires
    d.must("PUT", "routes/a2", {"uri": "/a2", "upstream": {
        "type": "roundrobin", "nodes": {"127.0.0.1:1980": 1}}}, status=201)
    w.wait_for(lambda m: m.get("key") == "/apisix/routes/a2", what="PUT after token expiry")
    eq(d.must("GET", "routes")["total"], 2, "routes listed after token expiry")
    # A wrong password: a clear 503 on use.
    refused(cp("gw", "wrong", "badpw", start=False), regex="(?i)auth|password")
