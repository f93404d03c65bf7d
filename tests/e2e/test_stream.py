"""Config stream: snapshot, live changes, resume, back-pressure, heartbeats,
the dataplanes endpoint, robustness against bad peers."""

import json
import socket
import struct
import time

from harness import (TEST_KEY, Fail, check, eq, expect_status, minimal, upstream_conf,
                     wait_until, T, stores)

# Also run against a real etcd (run_all.py --store etcd).
STORES = ("sqlite", "etcd")


def strip_key(v):
    return {k: x for k, x in v.items() if k not in ("key", "keys")}


def find_dp(d, node_id):
    for it in d.dataplanes()["list"]:
        if it.get("node_id") == node_id:
            return it
    return None


def wait_dp(d, node_id, pred, timeout, what):
    last = [None]

    def probe():
        last[0] = find_dp(d, node_id)
        return pred(last[0])
    if not wait_until(probe, T(timeout), interval=0.05):
        raise Fail("%s within %.1fs; dataplanes entry: %r" % (what, T(timeout), last[0]))
    return last[0]


def quiet(w, start, seconds=0.4):
    """Data messages that arrive from index start within seconds."""
    time.sleep(seconds)
    return w.data_msgs(start)


# ---------------------------------------------------------------------------
# snapshot


@stores("sqlite")  # on a shared etcd an empty prefix is still at etcd's revision
def test_snapshot_of_empty_store(ctx):
    d = ctx.daemon()
    w = ctx.watch(d, revision=0)
    begin, puts, end, _ = w.snapshot()
    eq(begin.get("revision"), 0, "SNAPSHOT_BEGIN.revision of an empty store")
    eq((end.get("revision"), end.get("count")), (0, 0), "SNAPSHOT_END (revision, count)")
    eq(puts, [], "messages inside an empty snapshot")


def test_snapshot_for_new_subscriber(ctx):
    d = ctx.daemon()
    stored = {}
    for coll in ("upstreams", "routes", "services", "consumers", "global_rules",
                 "plugin_configs", "stream_routes", "ssls"):
        path = "consumers/snap" if coll == "consumers" else coll + "/s1"
        b = d.must("PUT", path, minimal(coll, "snap"), status=201)
        stored[b["key"]] = b
    b = d.must("PUT", "routes/s2", minimal("routes", "s2"), status=201)
    stored[b["key"]] = b
    d.must("PUT", "routes/s2", dict(minimal("routes", "s2"), name="v2"), status=200)
    d.must("PUT", "routes/gone", minimal("routes", "gone"), status=201)
    d.must("DELETE", "routes/gone", status=200)
    last = d.must("PATCH", "upstreams/s1", {"desc": "patched"}, status=200)
    cur = last["modifiedIndex"]
    # The values as GET shows them now.
    now = {k: d.must("GET", k.replace("/apisix/", "")) for k in stored}

    w = ctx.watch(d, revision=0, node_id="snap-node")
    begin, puts, end, _ = w.snapshot()
    eq(begin.get("revision"), cur, "SNAPSHOT_BEGIN.revision (latest revision)")
    eq(end.get("revision"), cur, "SNAPSHOT_END.revision")
    eq(end.get("count"), len(now), "SNAPSHOT_END.count")
    eq([m["type"] for m in puts], ["PUT"] * len(now), "message types inside the snapshot")
    eq(sorted(m["key"] for m in puts), sorted(now), "snapshot keys")
    for m in puts:
        g = now[m["key"]]
        if m["key"].startswith("/apisix/ssls/"):
            check(m["value"].get("key"), "the snapshot's ssl has no private key: the data "
                  "plane could not serve TLS")
            eq(strip_key(m["value"]), strip_key(g["value"]), "snapshot value of " + m["key"])
        else:
            eq(m["value"], g["value"], "snapshot value of " + m["key"])
        eq(m.get("mod_revision"), g["modifiedIndex"], "mod_revision of " + m["key"])
        eq(m.get("revision"), g["modifiedIndex"], "revision of a snapshot PUT (its "
           "mod_revision) for " + m["key"])
        eq(m.get("create_revision"), g["createdIndex"], "create_revision of " + m["key"])


def test_live_changes_follow_the_snapshot(ctx):
    d = ctx.daemon()
    d.must("PUT", "upstreams/1", upstream_conf(), status=201)
    w = ctx.watch(d, revision=0)
    _, _, end, i = w.snapshot()
    r = d.must("PUT", "routes/1", minimal("routes", "live"), status=201)
    _, m = w.wait_for(lambda m: m["type"] == "PUT" and m.get("key") == "/apisix/routes/1",
                      what="PUT for routes/1", start=i)
    eq(m.get("revision"), r["modifiedIndex"], "PUT.revision vs admin modifiedIndex")
    eq(m.get("mod_revision"), r["modifiedIndex"], "PUT.mod_revision")
    eq(m.get("create_revision"), r["createdIndex"], "PUT.create_revision")
    eq(m.get("value"), r["value"], "PUT.value vs admin response value")
    # A refused write sends nothing; the next good one comes next.
    expect_status(d.put("routes/2", {"uri": 123}), 400)
    p = d.must("PATCH", "routes/1", {"name": "patched"}, status=200)
    o = d.must("POST", "upstreams", upstream_conf({"127.0.0.5:80": 1}), status=201)
    d.must("DELETE", "routes/1", status=200)
    n = d.must("PUT", "routes/3", minimal("routes", "three"), status=201)
    msgs = []
    w.wait_for(lambda m: m.get("key") == "/apisix/routes/3", what="PUT for routes/3", start=i)
    msgs = w.data_msgs(i)
    got = [(m["type"], m.get("key"), m.get("revision")) for m in msgs]
    want = [("PUT", "/apisix/routes/1", r["modifiedIndex"]),
            ("PUT", "/apisix/routes/1", p["modifiedIndex"]),
            ("PUT", o["key"], o["modifiedIndex"]),
            ("DELETE", "/apisix/routes/1", o["modifiedIndex"] + 1),
            ("PUT", "/apisix/routes/3", n["modifiedIndex"])]
    eq(got, want, "live messages (type, key, revision)")
    eq(msgs[1]["value"], p["value"], "PATCH's PUT value")
    eq(n["modifiedIndex"], o["modifiedIndex"] + 2, "the DELETE took exactly one revision")


def test_subscribers_see_the_same_sequence(ctx):
    d = ctx.daemon()
    ws = [ctx.watch(d, revision=0, node_id="same-%d" % k) for k in range(3)]
    starts = [w.snapshot()[3] for w in ws]
    last = None
    for k in range(12):
        if k % 4 == 3:
            d.must("DELETE", "upstreams/u%d" % (k - 1), status=200)
        else:
            last = d.must("PUT", "upstreams/u%d" % k, upstream_conf({"127.0.0.1:%d" % (80 + k): 1}),
                          status=201)
    final = d.must("PUT", "upstreams/final", upstream_conf(), status=201)
    seqs = []
    for w, s in zip(ws, starts):
        w.wait_for(lambda m: m.get("key") == "/apisix/upstreams/final", start=s,
                   what="the last change")
        seqs.append([(m["type"], m.get("key"), m.get("revision")) for m in w.data_msgs(s)])
    eq(len(seqs[0]), 13, "number of changes received")
    revs = [x[2] for x in seqs[0]]
    eq(revs, sorted(revs), "revisions in order")
    eq(len(set(revs)), len(revs), "revisions distinct")
    eq(revs[-1], final["modifiedIndex"], "last revision")
    eq(seqs[1], seqs[0], "subscriber 2 vs subscriber 1")
    eq(seqs[2], seqs[0], "subscriber 3 vs subscriber 1")
    check(last is not None, "setup")


def test_many_subscribers(ctx):
    d = ctx.daemon()
    for k in range(5):
        d.must("PUT", "upstreams/u%d" % k, upstream_conf(), status=201)
    ws = [ctx.watch(d, node_id="many-%02d" % k) for k in range(24)]
    for w in ws:
        _, puts, end, _ = w.snapshot(timeout=10)
        eq((len(puts), end.get("count")), (5, 5), "snapshot of %s" % w.node_id)
    c = d.must("PUT", "routes/r", minimal("routes"), status=201)
    for w in ws:
        _, m = w.wait_for(lambda m: m.get("key") == "/apisix/routes/r", what="live PUT")
        eq(m.get("revision"), c["modifiedIndex"], "revision on %s" % w.node_id)
    wait_until(lambda: d.dataplanes().get("total") == 24, T(3), 0.1)
    eq(d.dataplanes().get("total"), 24, "dataplanes total with 24 subscribers")


# ---------------------------------------------------------------------------
# resume


def test_resume_sends_only_missed_changes(ctx):
    d = ctx.daemon()
    for k in range(3):
        d.must("PUT", "upstreams/u%d" % k, upstream_conf(), status=201)
    w = ctx.watch(d, revision=0, node_id="resumer")
    _, _, end, _ = w.snapshot()
    R = end["revision"]
    w.stop()
    a = d.must("PUT", "upstreams/u3", upstream_conf(), status=201)
    b = d.must("PATCH", "upstreams/u0", {"desc": "changed"}, status=200)
    d.must("DELETE", "upstreams/u1", status=200)
    w2 = ctx.watch(d, revision=R, node_id="resumer")
    _, first = w2.wait_for(lambda m: m["type"] != "PING", what="first message")
    eq(first["type"], "RESUME", "first message for a subscriber within history")
    eq(first.get("revision"), R, "RESUME.revision")
    w2.wait_for(lambda m: m["type"] == "DELETE", what="the missed DELETE")
    msgs = quiet(w2, 0)
    got = [(m["type"], m.get("key"), m.get("revision")) for m in msgs]
    eq(got, [("RESUME", None, R),
             ("PUT", "/apisix/upstreams/u3", a["modifiedIndex"]),
             ("PUT", "/apisix/upstreams/u0", b["modifiedIndex"]),
             ("DELETE", "/apisix/upstreams/u1", b["modifiedIndex"] + 1)],
       "messages after resume")
    eq(msgs[2].get("value"), b["value"], "resumed PUT value")
    # Then live changes.
    c = d.must("PUT", "upstreams/u9", upstream_conf(), status=201)
    _, m = w2.wait_for(lambda m: m.get("key") == "/apisix/upstreams/u9", what="live PUT")
    eq(m.get("revision"), c["modifiedIndex"], "live revision after resume")


def test_resume_at_current_revision(ctx):
    d = ctx.daemon()
    d.must("PUT", "upstreams/u0", upstream_conf(), status=201)
    R = d.must("PUT", "upstreams/u1", upstream_conf(), status=201)["modifiedIndex"]
    w = ctx.watch(d, revision=R)
    _, first = w.wait_for(lambda m: m["type"] != "PING", what="first message")
    eq((first["type"], first.get("revision")), ("RESUME", R), "first message (type, revision)")
    msgs = quiet(w, 1)
    eq(msgs, [], "messages after RESUME at the current revision")
    c = d.must("PUT", "upstreams/u2", upstream_conf(), status=201)
    _, m = w.wait_for(lambda m: m["type"] == "PUT", what="live PUT")
    eq((m.get("key"), m.get("revision")), ("/apisix/upstreams/u2", c["modifiedIndex"]), "live PUT")


def test_resume_beyond_history_gets_snapshot(ctx):
    d = ctx.daemon(config={"deployment": {"config_stream": {"history": 3}}})
    for k in range(10):
        d.must("PUT", "upstreams/u%d" % (k % 4), upstream_conf({"127.0.0.1:%d" % (100 + k): 1}))
    cur = d.must("PUT", "upstreams/last", upstream_conf(), status=201)["modifiedIndex"]
    w = ctx.watch(d, revision=2)
    begin, puts, end, _ = w.snapshot()
    eq((begin.get("revision"), end.get("revision"), end.get("count")), (cur, cur, 5),
       "snapshot for a revision older than the history (begin, end, count)")
    eq(sorted(m["key"] for m in puts),
       sorted(["/apisix/upstreams/u%d" % k for k in range(4)] + ["/apisix/upstreams/last"]),
       "snapshot keys")
    # Within the history: resume.
    w2 = ctx.watch(d, revision=cur - 2)
    _, first = w2.wait_for(lambda m: m["type"] != "PING", what="first message")
    eq((first["type"], first.get("revision")), ("RESUME", cur - 2),
       "first message for revision current-2 with history 3")
    w2.wait_for(lambda m: m.get("revision") == cur, what="change at the current revision")
    eq([m.get("revision") for m in quiet(w2, 1, 0.2)], [cur - 1, cur], "resumed revisions")


def test_resume_from_the_future_gets_snapshot(ctx):
    d = ctx.daemon()
    cur = d.must("PUT", "upstreams/u0", upstream_conf(), status=201)["modifiedIndex"]
    w = ctx.watch(d, revision=cur + 1000)
    begin, puts, end, _ = w.snapshot()
    eq((begin.get("revision"), end.get("revision"), end.get("count")), (cur, cur, 1),
       "snapshot for a revision above the current one")
    eq([m["key"] for m in puts], ["/apisix/upstreams/u0"], "snapshot keys")


@stores("sqlite")  # etcd: the history ring is in memory; a snapshot after a restart
def test_resume_after_control_plane_restart(ctx):
    d = ctx.daemon()
    d.must("PUT", "upstreams/u0", upstream_conf(), status=201)
    R = d.must("PUT", "upstreams/u1", upstream_conf(), status=201)["modifiedIndex"]
    d.must("PUT", "upstreams/u2", upstream_conf(), status=201)
    d.restart()
    a = d.must("PUT", "upstreams/u3", upstream_conf(), status=201)
    check(a["modifiedIndex"] == R + 2, "revision after restart %d, expected %d" % (
        a["modifiedIndex"], R + 2))
    w = ctx.watch(d, revision=R)
    _, first = w.wait_for(lambda m: m["type"] != "PING", what="first message")
    eq((first["type"], first.get("revision")), ("RESUME", R),
       "resume from before a control plane restart (history is in the store)")
    w.wait_for(lambda m: m.get("key") == "/apisix/upstreams/u3", what="PUT u3")
    eq([(m.get("key"), m.get("revision")) for m in quiet(w, 1, 0.2)],
       [("/apisix/upstreams/u2", R + 1), ("/apisix/upstreams/u3", R + 2)], "resumed changes")


# ---------------------------------------------------------------------------
# dataplanes endpoint


def test_dataplanes_lists_subscribers(ctx):
    d = ctx.daemon()
    d.must("PUT", "upstreams/u0", upstream_conf(), status=201)
    R = d.must("PUT", "upstreams/u1", upstream_conf(), status=201)["modifiedIndex"]
    body = d.dataplanes()
    eq(body, {"list": [], "total": 0}, "dataplanes with no subscriber")
    wa = ctx.watch(d, node_id="dp-a")
    wb = ctx.watch(d, node_id="dp-b")
    wa.snapshot()
    wb.snapshot()
    a = wait_dp(d, "dp-a", lambda e: e and e.get("revision") == R, 3,
                "dp-a not listed with its ACKed revision %d" % R)
    body = d.dataplanes()
    eq(body.get("total"), 2, "dataplanes total")
    eq(sorted(e.get("node_id") for e in body["list"]), ["dp-a", "dp-b"], "node ids")
    for e in body["list"]:
        for f in ("node_id", "address", "revision", "connected_at", "hostname", "version"):
            check(f in e, "dataplanes entry lacks %r: %r" % (f, e))
        check(str(e["address"]).startswith("127.0.0.1"), "address %r" % e["address"])
        ca = e["connected_at"]
        if isinstance(ca, (int, float)):
            check(abs(ca - time.time()) < 120, "connected_at %r is not now" % ca)
        else:
            check(isinstance(ca, str) and ca, "connected_at %r" % ca)
    check(a["address"] != find_dp(d, "dp-b")["address"], "two subscribers share an address")
    # An ACK after a live change moves the revision.
    c = d.must("PUT", "upstreams/u2", upstream_conf(), status=201)["modifiedIndex"]
    wait_dp(d, "dp-b", lambda e: e and e.get("revision") == c, 3,
            "dp-b's revision did not reach %d after the ACK" % c)
    # A subscriber that never ACKs.
    wn = ctx.watch(d, node_id="dp-noack", args=["--no-ack"])
    wn.snapshot()
    d.must("PUT", "upstreams/u3", upstream_conf(), status=201)
    wn.wait_for(lambda m: m.get("key") == "/apisix/upstreams/u3", what="PUT u3")
    time.sleep(0.3)
    e = find_dp(d, "dp-noack")
    check(e is not None, "dp-noack not listed")
    eq(e.get("revision"), 0, "revision of a subscriber that never ACKed")
    # Gone when disconnected.
    wa.stop()
    wait_dp(d, "dp-a", lambda e: e is None, 3, "dp-a still listed after it disconnected")
    eq(d.dataplanes().get("total"), 2, "total after one disconnected")


# ---------------------------------------------------------------------------
# back-pressure and heartbeats


def test_stalled_subscriber_is_cut_off(ctx):
    # A long heartbeat interval keeps heartbeats out of this test.
    d = ctx.daemon(config={"deployment": {"config_stream": {"max_pending_bytes": 1048576,
                                                            "heartbeat_interval": 60}}})
    stalled = ctx.watch(d, node_id="staller", args=["--stall"])
    good = ctx.watch(d, node_id="reader")
    good.snapshot()
    wait_dp(d, "staller", lambda e: e is not None, 3, "staller not listed")
    # About 200 KB per change, 64 changes: ~13 MB, far more than 1 MiB plus
    # what the kernel's socket buffers can hold.
    nodes = {"10.%d.%d.%d:%d" % (k >> 16 & 255, k >> 8 & 255, k & 255, 1000 + k): 1
             for k in range(9000)}
    last = None
    t0 = time.monotonic()
    for k in range(64):
        nodes["10.255.255.%d:80" % (k % 250)] = k + 1
        last = d.must("PUT", "upstreams/big%d" % (k % 8), {"type": "roundrobin", "nodes": nodes})
        if k % 16 == 15:
            expect_status(d.get("/healthz", key=None), 200)
    t_writes = time.monotonic() - t0
    wait_dp(d, "staller", lambda e: e is None, 5,
            "stalled subscriber not cut off (max_pending_bytes 1 MiB, ~13 MB written in "
            "%.1fs)" % t_writes)
    # The reader got everything, in order.
    good.wait_for(lambda m: m.get("revision") == last["modifiedIndex"], timeout=15,
                  what="the last change on the reading subscriber")
    revs = [m["revision"] for m in good.data_msgs() if m["type"] == "PUT"
            and m["key"].startswith("/apisix/upstreams/big")]
    eq(len(revs), 64, "changes received by the reading subscriber")
    eq(revs, sorted(revs), "order on the reading subscriber")
    check(find_dp(d, "reader") is not None, "reading subscriber was cut off too")
    expect_status(d.get("/healthz", key=None), 200)
    # The stalled one can come back and catch up.
    again = ctx.watch(d, node_id="staller-again", revision=0)
    _, _, end, _ = again.snapshot(timeout=10)
    eq(end.get("revision"), last["modifiedIndex"], "snapshot revision for a new subscriber")
    # Cut off abortively (RST), so even a peer that stopped reading sees it.
    check(stalled.wait_exit(3) is not None, "the stalled cfgwatch never noticed it was cut "
          "off within 3 s (a graceful close leaves its FIN queued behind unread data; expected "
          "an abortive close, PROTOCOL.md step 7: uv_tcp_close_reset)")


def test_heartbeat_disconnects_silent_subscriber(ctx):
    d = ctx.daemon(config={"deployment": {"config_stream": {"heartbeat_interval": 0.2}}})
    ok = ctx.watch(d, node_id="ponger")
    silent = ctx.watch(d, node_id="silent", args=["--no-pong"])
    ok.snapshot()
    silent.snapshot()
    t0 = time.monotonic()
    wait_dp(d, "silent", lambda e: e is None, 3,
            "a --no-pong subscriber was not disconnected (heartbeat_interval 0.2)")
    dt = time.monotonic() - t0
    check(dt <= T(2.5), "--no-pong subscriber disconnected only after %.1fs" % dt)
    # The ponging one stays, and sees pings.
    time.sleep(max(0, 2.0 - dt))
    check(find_dp(d, "ponger") is not None, "a subscriber that answers pings was disconnected")
    pings = [m for m in ok.msgs if m["type"] == "PING"]
    check(len(pings) >= 3, "only %d PINGs in ~2 s with heartbeat_interval 0.2" % len(pings))
    check(all(isinstance(m.get("ts"), int) for m in pings), "PING without integer ts")
    check(not ok.exited(), "the ponging cfgwatch exited")


# ---------------------------------------------------------------------------
# robustness


def frame(typ, body):
    payload = bytes([typ]) + (body if isinstance(body, bytes) else json.dumps(body).encode())
    return struct.pack(">I", len(payload)) + payload


HELLO_TYPE, ERROR_TYPE = 1, 10


def read_frames(sock, timeout):
    """Reads frames until the server closes or timeout; returns
    (frames [(type, body)], closed)."""
    sock.settimeout(0.2)
    buf = b""
    frames = []
    end = time.monotonic() + timeout
    closed = False
    while time.monotonic() < end:
        try:
            data = sock.recv(65536)
            if not data:
                closed = True
                break
            buf += data
        except socket.timeout:
            continue
        except OSError:
            closed = True
            break
        while len(buf) >= 4:
            n = struct.unpack(">I", buf[:4])[0]
            if len(buf) < 4 + n:
                break
            t, body = buf[4], buf[5:4 + n]
            try:
                body = json.loads(body)
            except ValueError:
                pass
            frames.append((t, body))
            buf = buf[4 + n:]
    return frames, closed


def expect_error_and_close(d, data, what, hello_first=False):
    s = socket.create_connection(("127.0.0.1", d.config_port))
    try:
        if hello_first:
            s.sendall(frame(HELLO_TYPE, {"proto": 1, "node_id": "raw-" + what[:10].replace(
                " ", "-"), "revision": 0}))
        s.sendall(data)
        frames, closed = read_frames(s, T(3))
    finally:
        s.close()
    check(closed, "connection not closed after %s (frames: %r)" % (
        what, [(t, b if t == ERROR_TYPE else "...") for t, b in frames][-3:]))
    errs = [b for t, b in frames if t == ERROR_TYPE]
    check(errs and isinstance(errs[-1], dict) and errs[-1].get("message"),
          "no ERROR{message} before the close after %s (PROTOCOL.md: the side that sees a "
          "fatal error sends ERROR, flushes it, and closes); frame types %r" % (
              what, [t for t, _ in frames]))
    return errs[-1]["message"]


def test_bad_frames_get_error_and_close(ctx):
    d = ctx.daemon()
    d.must("PUT", "upstreams/u0", upstream_conf(), status=201)
    cases = [
        ("zero-length frame", b"\x00\x00\x00\x00"),
        ("frame over the maximum", b"\xff\xff\xff\xf0" + b"\x01" + b"{}" * 100),
        ("unknown type", frame(0x63, {})),
        ("body not JSON", frame(1, b"this is not json")),
        ("body not an object", frame(1, b"[1,2,3]")),
        ("HELLO without node_id", frame(1, {"proto": 1, "revision": 0})),
        ("HELLO with a string revision", frame(1, {"proto": 1, "node_id": "x",
                                                   "revision": "7"})),
        ("ACK before HELLO", frame(9, {"revision": 1})),
        ("plain HTTP", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
    ]
    for what, data in cases:
        expect_error_and_close(d, data, what)
    # Messages that make no sense after HELLO.
    for what, data in [("a second HELLO", frame(1, {"proto": 1, "node_id": "y", "revision": 0})),
                       ("a PUT sent to the control plane",
                        frame(3, {"revision": 1, "key": "/apisix/routes/x", "value": {},
                                  "create_revision": 1, "mod_revision": 1})),
                       ("SNAPSHOT_BEGIN sent to the control plane", frame(2, {"revision": 1}))]:
        expect_error_and_close(d, data, what, hello_first=True)
    expect_status(d.get("/healthz", key=None), 200)
    eq(d.dataplanes().get("total"), 0, "dataplanes after the bad peers left")


def test_unsupported_protocol_version_gets_error(ctx):
    d = ctx.daemon()
    msg = expect_error_and_close(d, frame(1, {"proto": 99, "node_id": "future", "revision": 0}),
                                 "HELLO of protocol 99")
    check("99" in msg, "ERROR message does not name the version: %r" % msg)


def test_bad_peers_do_not_disturb_others(ctx):
    d = ctx.daemon()
    d.must("PUT", "upstreams/u0", upstream_conf(), status=201)
    idle = socket.create_connection(("127.0.0.1", d.config_port))
    partial = socket.create_connection(("127.0.0.1", d.config_port))
    partial.sendall(b"\x00\x00")
    half = socket.create_connection(("127.0.0.1", d.config_port))
    half.sendall(frame(HELLO_TYPE, {"proto": 1, "node_id": "half", "revision": 0})[:9])
    try:
        w = ctx.watch(d, node_id="after-garbage")
        _, puts, end, _ = w.snapshot()
        eq([m["key"] for m in puts], ["/apisix/upstreams/u0"], "snapshot with bad peers open")
        listed = [e.get("node_id") for e in d.dataplanes()["list"]]
        eq(listed, ["after-garbage"], "dataplanes lists only the subscriber that said HELLO")
        c = d.must("PUT", "upstreams/u1", upstream_conf(), status=201)
        _, m = w.wait_for(lambda m: m.get("key") == "/apisix/upstreams/u1", what="live PUT")
        eq(m["revision"], c["modifiedIndex"], "live revision")
    finally:
        idle.close()
        partial.close()
        half.close()
    expect_status(d.get("/healthz", key=None), 200)


def test_control_plane_answers_ping(ctx):
    d = ctx.daemon()
    s = socket.create_connection(("127.0.0.1", d.config_port))
    try:
        s.sendall(frame(HELLO_TYPE, {"proto": 1, "node_id": "pinger", "revision": 0}))
        s.sendall(frame(7, {"ts": 1234567890123}))
        frames, closed = read_frames(s, 1.0)
    finally:
        s.close()
    types = [t for t, _ in frames]
    check(not closed, "connection closed after HELLO and PING: %r" % frames[-2:])
    eq(types[:2], [2, 5], "SNAPSHOT_BEGIN, SNAPSHOT_END for an empty store")
    pongs = [b for t, b in frames if t == 8]
    eq(pongs, [{"ts": 1234567890123}], "PONG bodies (the PING's ts echoed)")


def test_peer_without_hello_is_closed(ctx):
    # PROTOCOL.md: a dp MUST send HELLO within 3 heartbeat intervals or be closed.
    d = ctx.daemon(config={"deployment": {"config_stream": {"heartbeat_interval": 0.2}}})
    s = socket.create_connection(("127.0.0.1", d.config_port))
    t0 = time.monotonic()
    try:
        frames, closed = read_frames(s, T(3))
    finally:
        s.close()
    check(closed, "a connection that never sent HELLO is still open after %.1fs "
          "(heartbeat_interval 0.2)" % T(3))
    check(time.monotonic() - t0 <= T(2), "closed only after %.1fs" % (time.monotonic() - t0))


def test_snapshot_is_not_interleaved_with_live_changes(ctx):
    d = ctx.daemon()
    nodes = {"10.%d.%d.%d:%d" % (k >> 16 & 255, k >> 8 & 255, k & 255, 1000 + k): 1
             for k in range(40000)}  # about 0.9 MB per upstream
    for k in range(6):
        d.must("PUT", "upstreams/big%d" % k, {"type": "roundrobin", "nodes": nodes}, status=201)
    w = ctx.watch(d, node_id="interleave")
    writes = [d.must("PUT", "upstreams/live%d" % k, upstream_conf(), status=201)
              for k in range(5)]
    begin, puts, end, i = w.snapshot(timeout=15)
    R = end["revision"]
    eq(begin["revision"], R, "SNAPSHOT_BEGIN vs SNAPSHOT_END revision")
    for m in puts:
        check(m["type"] == "PUT" and m["revision"] <= R,
              "inside the snapshot at %d: %s %s revision %s" % (R, m["type"], m.get("key"),
                                                               m.get("revision")))
    eq(end["count"], len(puts), "SNAPSHOT_END.count vs PUTs")
    in_snap = {m["key"] for m in puts}
    for wr in writes:
        if wr["modifiedIndex"] <= R:
            check(wr["key"] in in_snap, "%s (revision %d <= %d) missing from the snapshot" % (
                wr["key"], wr["modifiedIndex"], R))
        else:
            w.wait_for(lambda m, k=wr["key"]: m.get("key") == k, start=i,
                       what="live PUT of %s after the snapshot" % wr["key"])
    live = w.data_msgs(i)
    check(all(m["revision"] > R for m in live), "a change after SNAPSHOT_END has a revision "
          "<= the snapshot's: %r" % [(m["key"], m["revision"]) for m in live])


def test_sigterm_with_subscribers_exits_promptly(ctx):
    d = ctx.daemon()
    d.must("PUT", "upstreams/u0", upstream_conf(), status=201)
    ws = [ctx.watch(d, node_id="term-%d" % k) for k in range(3)]
    for w in ws:
        w.snapshot()
    idle = socket.create_connection(("127.0.0.1", d.config_port))
    d.stop(timeout=T(3))
    for w in ws:
        check(w.wait_exit(3) is not None, "cfgwatch %s still running 3 s after the control "
              "plane stopped" % w.node_id)
    idle.close()


def test_snapshot_carries_ssl_private_key(ctx):
    d = ctx.daemon()
    d.must("PUT", "ssls/1", minimal("ssls"), status=201)
    w = ctx.watch(d)
    _, puts, _, _ = w.snapshot()
    eq([m["key"] for m in puts], ["/apisix/ssls/1"], "snapshot keys")
    k = puts[0]["value"].get("key")
    check(isinstance(k, str) and k, "ssl in the config stream has no private key")
    if "PRIVATE KEY" in k:
        eq(k, TEST_KEY, "private key in the stream")
