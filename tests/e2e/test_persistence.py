"""Persistence across restarts and kill -9; store revisions."""

import os
import threading
import time

from harness import (KINDS, check, eq, expect_json, expect_status, minimal, stores,
                     upstream_conf)

# Also run against a real etcd (run_all.py --store etcd).
STORES = ("sqlite", "etcd")

NOT_FOUND = {"message": "Key not found"}


def snapshot_all(d):
    """{key: (value, createdIndex, modifiedIndex)} for every resource."""
    out = {}
    for coll in KINDS:
        b = d.must("GET", coll + "?page=1&page_size=500", status=200)
        for it in b["list"]:
            out[it["key"]] = (it["value"], it["createdIndex"], it["modifiedIndex"])
    return out


def test_restart_keeps_everything(ctx):
    d = ctx.daemon()
    revs = []
    for coll in KINDS:
        path = "consumers/keepme" if coll == "consumers" else coll + "/keep1"
        b = d.must("PUT", path, minimal(coll, "keepme"), status=201)
        revs.append(b["modifiedIndex"])
    b = d.must("PUT", "routes/keep2", minimal("routes", "k2"), status=201)
    b = d.must("PUT", "routes/keep2", dict(minimal("routes", "k2"), name="replaced"), status=200)
    b = d.must("PATCH", "upstreams/keep1", {"desc": "patched"}, status=200)
    p = d.must("POST", "upstreams", upstream_conf({"127.0.0.3:80": 2}), status=201)
    d.must("PUT", "routes/gone", minimal("routes", "gone"), status=201)
    d.must("DELETE", "routes/gone", status=200)
    last = d.must("PUT", "services/last", minimal("services"), status=201)["modifiedIndex"]
    before = snapshot_all(d)
    eq(len(before), len(KINDS) + 3, "resources before restart")
    d.restart()
    after = snapshot_all(d)
    eq(sorted(after), sorted(before), "keys after restart")
    for k in before:
        eq(after[k], before[k], "%s (value, createdIndex, modifiedIndex) after restart" % k)
    expect_json(d.get("routes/gone"), 404, NOT_FOUND)
    eq(d.must("GET", "upstreams/keep1")["value"].get("desc"), "patched", "patched desc")
    eq(d.must("GET", p["key"].replace("/apisix/", ""))["value"]["nodes"], {"127.0.0.3:80": 2},
       "POSTed upstream")
    # Revisions continue upward.
    nb = d.must("PUT", "routes/new", minimal("routes"), status=201)
    check(nb["modifiedIndex"] > last, "revision after restart %d is not above the last one "
          "before it (%d)" % (nb["modifiedIndex"], last))
    # A replace after restart keeps create_time and createdIndex.
    r = d.must("PUT", "routes/keep2", minimal("routes", "k2"), status=200)
    eq(r["createdIndex"], before["/apisix/routes/keep2"][1], "createdIndex of keep2")
    eq(r["value"]["create_time"], before["/apisix/routes/keep2"][0]["create_time"],
       "create_time of keep2")


def test_revisions_are_consecutive(ctx):
    d = ctx.daemon()
    a = d.must("PUT", "routes/1", minimal("routes"), status=201)
    r0 = a["modifiedIndex"]
    eq(a["createdIndex"], r0, "createdIndex of a new key")
    b = d.must("PUT", "routes/1", minimal("routes", "b"), status=200)
    eq((b["createdIndex"], b["modifiedIndex"]), (r0, r0 + 1), "replace indexes")
    c = d.must("POST", "upstreams", minimal("upstreams"), status=201)
    eq((c["createdIndex"], c["modifiedIndex"]), (r0 + 2, r0 + 2), "POST indexes")
    e = d.must("PATCH", "routes/1", {"name": "p"}, status=200)
    eq((e["createdIndex"], e["modifiedIndex"]), (r0, r0 + 3), "PATCH indexes")
    d.must("DELETE", "routes/1", status=200)  # takes r0 + 4
    f = d.must("PUT", "routes/1", minimal("routes"), status=201)
    eq((f["createdIndex"], f["modifiedIndex"]), (r0 + 5, r0 + 5),
       "re-created key after DELETE (the DELETE took a revision)")
    # Refused writes take no revision.
    expect_status(d.put("routes/2", {"uri": 123}), 400)
    expect_status(d.delete("routes/nope"), 404)
    expect_status(d.patch("routes/nope", {"name": "x"}), 404)
    expect_status(d.post("consumers", {"username": "x"}), 405)
    g = d.must("PUT", "routes/2", minimal("routes"), status=201)
    eq(g["modifiedIndex"], r0 + 6, "revision after refused writes")
    # GET reports the same indexes.
    h = d.must("GET", "routes/1")
    eq((h["createdIndex"], h["modifiedIndex"]), (r0 + 5, r0 + 5), "GET indexes")


@stores("sqlite")  # about the SQLite file
def test_store_flag_puts_database_there(ctx):
    dbdir = ctx.tmpdir()
    db = os.path.join(dbdir, "elsewhere.db")
    d = ctx.daemon(args=["--store", "sqlite:" + db])
    v = d.must("PUT", "upstreams/s1", minimal("upstreams"), status=201)
    check(os.path.exists(db), "--store sqlite:%s did not create the file" % db)
    check(not os.path.exists(os.path.join(d.state_dir, "airgw.db")),
          "airgw.db created in the state dir although --store points elsewhere")
    d.stop()
    # Another state dir, same store: same data.
    d2 = ctx.daemon(args=["--store", "sqlite:" + db], admin_key=d.key)
    g = d2.must("GET", "upstreams/s1")
    eq(g["value"], v["value"], "upstream read from the same store file")


def test_kill9_during_write_burst_keeps_acknowledged_writes(ctx):
    d = ctx.daemon()
    acked = {}  # path -> (nodes, modifiedIndex)
    lock = threading.Lock()
    stop = threading.Event()
    errors = []

    def writer(t):
        i = 0
        while not stop.is_set():
            path = "upstreams/w%d-%d" % (t, i)
            nodes = {"127.0.%d.%d:%d" % (t, i % 250, 1000 + i): 1 + i % 7}
            r = d.put(path, {"type": "roundrobin", "nodes": nodes, "desc": "x" * (i % 300)},
                      timeout=5)
            if r.status in (200, 201):
                with lock:
                    acked[path] = (nodes, r.j["modifiedIndex"])
            elif r.status != 0:
                errors.append(repr(r))
                return
            i += 1

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.2)
    d.kill9()
    stop.set()
    for t in threads:
        t.join(timeout=20)
    check(not errors, "writes failed before the kill: %s" % errors[:3])
    check(len(acked) >= 10, "only %d writes acknowledged in 1.2 s" % len(acked))
    revs = [rev for _, rev in acked.values()]
    eq(len(set(revs)), len(revs), "distinct revisions among acknowledged writes")
    d.start()
    missing, wrong = [], []
    listed = {}
    b = d.must("GET", "upstreams?page=1&page_size=500")
    pages = (b["total"] + 499) // 500
    for it in b["list"]:
        listed[it["key"]] = it
    for p in range(2, pages + 1):
        for it in d.must("GET", "upstreams?page=%d&page_size=500" % p)["list"]:
            listed[it["key"]] = it
    for path, (nodes, rev) in acked.items():
        it = listed.get("/apisix/" + path)
        if it is None:
            missing.append(path)
        elif it["value"].get("nodes") != nodes or it["modifiedIndex"] != rev:
            wrong.append((path, it["modifiedIndex"], rev))
    check(not missing, "%d of %d acknowledged writes lost after kill -9: %s" % (
        len(missing), len(acked), missing[:5]))
    check(not wrong, "acknowledged writes changed after kill -9: %s" % wrong[:5])
    # Revisions continue upward, never reused.
    n = d.must("PUT", "routes/after-kill", minimal("routes"), status=201)
    check(n["modifiedIndex"] > max(revs), "revision after kill -9 (%d) not above the highest "
          "acknowledged one (%d)" % (n["modifiedIndex"], max(revs)))
    # Unacknowledged writes that did land are whole, valid objects.
    for k, it in listed.items():
        check(isinstance(it["value"].get("nodes"), dict), "%s is not a whole upstream" % k)


def test_revision_not_reused_after_delete_and_restart(ctx):
    d = ctx.daemon()
    a = d.must("PUT", "routes/a", minimal("routes"), status=201)["modifiedIndex"]
    d.must("DELETE", "routes/a", status=200)  # a + 1; the store is empty again
    d.restart()
    b = d.must("PUT", "routes/b", minimal("routes"), status=201)["modifiedIndex"]
    eq(b, a + 2, "revision after DELETE of the only key and a restart")
    d.must("DELETE", "routes/b", status=200)  # b + 1
    d.kill9()
    d.start()
    c = d.must("PUT", "routes/c", minimal("routes"), status=201)["modifiedIndex"]
    eq(c, b + 2, "revision after DELETE of the only key and kill -9")
    # A new subscriber's snapshot is at the latest revision, not at the highest live key's.
    d.must("DELETE", "routes/c", status=200)
    w = ctx.watch(d)
    begin, puts, end, _ = w.snapshot()
    eq((begin["revision"], end["revision"], end["count"]), (c + 1, c + 1, 0),
       "empty snapshot after deletes (revision, revision, count)")


def test_post_ids_never_collide_after_restart(ctx):
    d = ctx.daemon()
    first = [d.must("POST", "upstreams", upstream_conf({"127.0.0.%d:80" % k: 1}), status=201)
             for k in range(1, 4)]
    d.restart()
    second = [d.must("POST", "upstreams", upstream_conf({"127.0.1.%d:80" % k: 1}), status=201)
              for k in range(1, 4)]
    d.kill9()
    d.start()
    third = [d.must("POST", "upstreams", upstream_conf({"127.0.2.%d:80" % k: 1}), status=201)
             for k in range(1, 4)]
    keys = [b["key"] for b in first + second + third]
    eq(len(set(keys)), 9, "distinct POST keys across a restart and a kill -9")
    eq(keys, sorted(keys), "POST ids keep increasing across restarts")
    for b in first + second + third:
        g = d.must("GET", b["key"].replace("/apisix/", ""))
        eq(g["value"]["nodes"], b["value"]["nodes"], "value of " + b["key"])
        eq(g["createdIndex"], b["createdIndex"], "createdIndex of " + b["key"])
