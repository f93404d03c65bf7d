"""MQTT through the data plane's stream proxy (stream_routes + mqtt-proxy),
end to end, with real mosquitto brokers and the real mosquitto_pub /
mosquitto_sub clients (raw sockets only for broken input and for reading
CONNACK bytes exactly):

- messages flow subscriber <- publisher through airgw for MQTT 3.1, 3.1.1
  and 5.0; a route without protocol_level takes 3.1.1 and 5.0;
- chash on mqtt_client_id: one client id, one broker (broker logs and a
  retained message seen only on that broker); 100 ids spread over two brokers;
  an empty client id hashes on the client address;
  a stopped broker's clients fail over on reconnect; no broker: CONNACK
  "server unavailable";
- refusals a client sees: wrong level / name (0x01, 0x84), malformed 5.0
  (0x81 then close), malformed 3.1.1 (closed, no CONNACK), oversized CONNECT
  (0x95 / 0x03), not MQTT (closed, no byte), no CONNECT in time (closed);
  every bad input leaves the workers' pids unchanged;
- half-close, a 1 MB payload, stream route matching on server_port and
  remote_addr (no match: closed), live route changes, SIGHUP, kill -9 of a
  worker and SIGTERM with sessions open, APISIX's standalone seed file and
  the APISIX 2.x in-plugin upstream.

Most tests share one control plane, two brokers (a, b) and one data plane
with 8 stream listeners; each port has its own stream route (server_port), so
the tests do not see each other's routes."""

import os
import secrets
import socket
import threading
import time

from harness import T, Fail, check, eq, free_port, wait_until
from dp_harness import SERVING_RE, check_no_worker_change
from mqtt_harness import (PINGREQ, Broker, EofReplyServer, RawMqtt, Sub, broker_of,
                          connect_packet, exchange, marks, mqtt_dp, must_pub, new_broker, probe,
                          pub, parse_connack, publish_packet, read_until_close, sessions_by_worker,
                          shared_brokers, subscribe_packet, track, varint, mstr, packet, wait_probe,
                          wait_stream_listeners, wait_subscribed)

# ---------------------------------------------------------------------------
# the module's shared environment

# Stream listeners of the shared data plane, one stream route each.
FLOW, CHASH, V4, V5, ANY, REMOTE, NOMATCH, DOWN = range(8)


class Env:
    def __init__(self, cp, dp, a, b):
        self.cp, self.dp, self.a, self.b = cp, dp, a, b
        self.routes = set()

    def port(self, which):
        return self.dp.stream_ports[which]

    def put(self, path, body):
        return self.cp.must("PUT", path, body)


def env(ctx):
    e = getattr(ctx.mod, "mq_env", None)
    if e is None:
        cp = ctx.shared("cp-mq")
        dp = mqtt_dp(ctx, cp, name="mq-main", streams=8, workers=2, shared="dp-mq-main")
        a, b = shared_brokers(ctx, Broker("a"), Broker("b"))
        # Stopped in this order at the end of the module: data plane,
        # brokers, control plane.
        ctx.mod.shared["cp-mq"] = ctx.mod.shared.pop("cp-mq")
        e = ctx.mod.mq_env = Env(cp, dp, a, b)
    else:
        ctx.shared("cp-mq")
    ctx.use_shared(e.dp, e.a, e.b)
    return e


def ok311(cid, code):
    return code == (3, 0)


def ok5(cid, code):
    return code == (5, 0)


def route(e, which):
    """Puts the stream route of the shared data plane's port `which` (once
    per module) and waits until it serves."""
    P = e.port(which)
    if which in e.routes:
        return P
    a, b = e.a, e.b
    mq = {"mqtt-proxy": {}}
    if which == FLOW:
        # No protocol_name, no protocol_level: every MQTT version; one broker.
        e.put("stream_routes/mq-flow", {"server_port": P, "plugins": mq,
                                        "upstream": {"type": "roundrobin",
                                                     "nodes": {a.addr: 1}}})
        wait_probe(P, ok311, what="route mq-flow")
    elif which == CHASH:
        # README's example: an upstream by id, chash on the MQTT client id.
        e.put("upstreams/mq-chash", {"type": "chash", "key": "mqtt_client_id",
                                     "nodes": {a.addr: 1, b.addr: 1}})
        e.put("stream_routes/mq-chash", {"server_port": P, "upstream_id": "mq-chash",
                                         "plugins": {"mqtt-proxy": {"protocol_name": "MQTT",
                                                                    "protocol_level": 4}}})
        wait_probe(P, ok311, what="route mq-chash")
    elif which == V4:
        e.put("stream_routes/mq-v4", {
            "server_port": P, "upstream": {"type": "roundrobin", "nodes": {a.addr: 1}},
            "plugins": {"mqtt-proxy": {"protocol_name": "MQTT", "protocol_level": 4}}})
        wait_probe(P, ok311, what="route mq-v4")
    elif which == V5:
        e.put("stream_routes/mq-v5", {
            "server_port": P, "upstream": {"type": "roundrobin", "nodes": {b.addr: 1}},
            "plugins": {"mqtt-proxy": {"protocol_name": "MQTT", "protocol_level": 5}}})
        wait_probe(P, ok5, level=5, what="route mq-v5")
    elif which == ANY:
        e.put("stream_routes/mq-any", {
            "server_port": P, "upstream": {"type": "roundrobin", "nodes": {b.addr: 1}},
            "plugins": {"mqtt-proxy": {"protocol_name": "MQTT"}}})
        wait_probe(P, ok5, level=5, what="route mq-any")
    elif which == REMOTE:
        # Same port: clients from 127.0.0.2 -> a, everybody else -> b
        # (stream routes are tried in id order).
        e.put("stream_routes/mq-remote-1", {
            "server_port": P, "remote_addr": "127.0.0.2", "plugins": mq,
            "upstream": {"type": "roundrobin", "nodes": {a.addr: 1}}})
        e.put("stream_routes/mq-remote-2", {
            "server_port": P, "plugins": mq,
            "upstream": {"type": "roundrobin", "nodes": {b.addr: 1}}})
        wait_probe(P, lambda cid, code: code == (3, 0) and b.has_client(cid),
                   what="route mq-remote-2")
    elif which == NOMATCH:
        # Only clients from 127.0.0.3: one from 127.0.0.1 matches no route.
        e.put("stream_routes/mq-only3", {
            "server_port": P, "remote_addr": "127.0.0.3/32", "plugins": mq,
            "upstream": {"type": "roundrobin", "nodes": {a.addr: 1}}})
        wait_probe(P, lambda cid, code: code == (3, 0), what="route mq-only3",
                   cid_prefix="from3", bind="127.0.0.3")
    elif which == DOWN:
        dead = ["127.0.0.1:%d" % free_port() for _ in range(2)]
        e.put("stream_routes/mq-down", {
            "server_port": P, "plugins": mq,
            "upstream": {"type": "chash", "key": "mqtt_client_id",
                         "nodes": {dead[0]: 1, dead[1]: 1}}})
        wait_probe(P, lambda cid, code: code == (3, 3), what="route mq-down")
    e.routes.add(which)
    return P


def uid(p="c"):
    return "%s-%s" % (p, secrets.token_hex(4))


def workers_before(e):
    w = e.dp.workers()
    check(len(w) == 2, "shared data plane: expected 2 workers, have %s" % w)
    return w


# A refusal's CONNACK must be followed by an orderly close (FIN, "eof"): a
# reset can make the client's TCP stack drop the CONNACK before it is read.


def eq_closed(got, how, what, allow_reset=False):
    """The connection was closed (EOF; or reset if allowed) without a byte."""
    eq(got, b"", "%s: bytes received" % what)
    check(how == "eof" or (allow_reset and how == "reset"),
          "%s: expected the connection closed (eof), got %s" % (what, how))


# ---------------------------------------------------------------------------
# messages flow


def flow(e, ctx, level_sub, level_pub, port=None, broker=None):
    P = port or route(e, FLOW)
    br = broker or e.a
    topic = "flow/%s" % secrets.token_hex(3)
    sid, pid = uid("sub%d" % level_sub), uid("pub%d" % level_pub)
    s = track(ctx, Sub(P, topic, level=level_sub, cid=sid, count=1, wait=10))
    wait_subscribed([br], sid)
    msg = "hello v%d->v%d" % (level_pub, level_sub)
    must_pub(P, topic, msg, level=level_pub, cid=pid)
    rc = s.wait_exit(5)
    eq(s.lines(), ["%s %s" % (topic, msg)], "what mosquitto_sub (%s) printed" % sid)
    eq(rc, 0, "mosquitto_sub exit status (stderr %r)" % s.stderr().strip())
    pnum = {3: 1, 4: 2, 5: 5}
    got = dict(br.connected())
    eq(got.get(sid), pnum[level_sub], "protocol the broker saw for the subscriber")
    eq(got.get(pid), pnum[level_pub], "protocol the broker saw for the publisher")


def test_v311_pub_sub(ctx):
    flow(env(ctx), ctx, 4, 4)


def test_v5_pub_sub(ctx):
    e = env(ctx)
    flow(e, ctx, 5, 5)
    flow(e, ctx, 5, 4)  # a 5.0 subscriber gets a 3.1.1 publisher's message


def test_v31_pub_sub(ctx):
    flow(env(ctx), ctx, 3, 3)


def test_level_absent_takes_v311_and_v5(ctx):
    """protocol_name "MQTT" without protocol_level: 3.1.1 and 5.0 pass."""
    e = env(ctx)
    P = route(e, ANY)
    flow(e, ctx, 4, 5, port=P, broker=e.b)
    flow(e, ctx, 5, 4, port=P, broker=e.b)


def test_large_payload_1mb(ctx):
    e = env(ctx)
    P = route(e, FLOW)
    payload = os.urandom(512 * 1024).hex().encode()  # 1 MiB of text
    path = os.path.join(ctx.tmpdir(), "payload")
    with open(path, "wb") as f:
        f.write(payload)
    topic = "big/%s" % secrets.token_hex(3)
    sid = uid("bigsub")
    s = track(ctx, Sub(P, topic, level=5, cid=sid, count=1, wait=20, raw=True))
    wait_subscribed([e.a], sid)
    rc, out = pub(P, topic, file=path, level=5, cid=uid("bigpub"), timeout=20)
    eq(rc, 0, "mosquitto_pub -f (1 MiB) exit status: %s" % out.strip())
    got = s.wait_bytes(len(payload), timeout=20)
    eq(len(got), len(payload), "bytes mosquitto_sub received")
    check(got == payload, "the 1 MiB payload arrived changed")
    eq(s.wait_exit(5), 0, "mosquitto_sub exit status")


# ---------------------------------------------------------------------------
# route matching


def test_server_port_selects_route(ctx):
    """Two listeners, two stream routes told apart by server_port: the V4
    port's route goes to broker a, the V5 port's to broker b."""
    e = env(ctx)
    p4, p5 = route(e, V4), route(e, V5)
    m = marks([e.a, e.b])
    c4, c5 = uid("sp4"), uid("sp5")
    must_pub(p4, "sp/x", "x", level=4, cid=c4)
    must_pub(p5, "sp/x", "x", level=5, cid=c5)
    eq(broker_of([e.a, e.b], c4, m).name, "a", "broker of the client on port %d" % p4)
    eq(broker_of([e.a, e.b], c5, m).name, "b", "broker of the client on port %d" % p5)


def test_remote_addr_selects_route(ctx):
    e = env(ctx)
    P = route(e, REMOTE)
    m = marks([e.a, e.b])
    c2, c1 = uid("from2"), uid("from1")
    must_pub(P, "ra/x", "x", cid=c2, bind="127.0.0.2")
    must_pub(P, "ra/x", "x", cid=c1, bind="127.0.0.1")
    eq(broker_of([e.a, e.b], c2, m).name, "a", "broker of a client from 127.0.0.2")
    eq(broker_of([e.a, e.b], c1, m).name, "b", "broker of a client from 127.0.0.1")


def test_no_matching_route_closes(ctx):
    """Port NOMATCH's only route wants clients from 127.0.0.3: a client
    from 127.0.0.1 matches no route and is closed without a byte (also
    without a CONNACK); a port with no route at all is the same."""
    e = env(ctx)
    before = workers_before(e)
    P = route(e, NOMATCH)
    m = marks([e.a, e.b])
    cid = uid("nomatch")
    got, how, _ = exchange(P, connect_packet(cid, 4))
    eq_closed(got, how, "CONNECT from 127.0.0.1 (no route matches)", allow_reset=True)
    rc, out = pub(P, "nm/x", "x", cid=cid, timeout=10)
    check(rc != 0, "mosquitto_pub through a port without a matching route succeeded: %s" % out)
    eq(probe(P, uid("from3"), bind="127.0.0.3"), (3, 0), "CONNECT from 127.0.0.3")
    # A data plane port no route names at all.
    d = mqtt_dp(ctx, e.cp, name="mq-noroute", streams=1, workers=1)
    got, how, _ = exchange(d.stream_ports[0], connect_packet(cid, 5))
    eq_closed(got, how, "CONNECT on a port with no stream route", allow_reset=True)
    check(not e.a.has_client(cid, m[e.a.name]) and not e.b.has_client(cid, m[e.b.name]),
          "a client without a route reached a broker")
    check_no_worker_change(e.dp, before, "connections without a route")


# ---------------------------------------------------------------------------
# chash on mqtt_client_id


def test_chash_same_client_id_same_broker(ctx):
    e = env(ctx)
    P = route(e, CHASH)
    brokers = [e.a, e.b]
    run = secrets.token_hex(3)
    ids = ["dev-%s-%d" % (run, i) for i in range(6)]
    m = marks(brokers)
    for rnd in range(3):
        for cid in ids:
            must_pub(P, "ch/%s" % cid, "r%d" % rnd, level=4, cid=cid)
    where = {}
    for cid in ids:
        counts = {b.name: b.ids(m[b.name]).count(cid) for b in brokers}
        eq(sorted(counts.values()), [0, 3], "connections of %s per broker (%s)" % (cid, counts))
        where[cid] = [n for n, c in counts.items() if c][0]
    # A retained message published through airgw with client id X is on
    # X's broker only.
    for cid in ids:
        must_pub(P, "ret/%s/%s" % (run, cid), "kept-" + cid, level=4, cid=cid, retain=True)
    for cid in ids:
        for b in brokers:
            c = RawMqtt(b.port, uid("direct"))
            try:
                c.subscribe("ret/%s/%s" % (run, cid))
                got = c.publishes_before_pingresp()
            finally:
                c.disconnect()
            if b.name == where[cid]:
                eq(got, [("ret/%s/%s" % (run, cid), ("kept-" + cid).encode())],
                   "retained message of %s on broker %s" % (cid, b.name))
            else:
                eq(got, [], "retained message of %s on the other broker %s" % (cid, b.name))


def test_chash_spreads_client_ids(ctx):
    e = env(ctx)
    P = route(e, CHASH)
    m = marks([e.a, e.b])
    run = secrets.token_hex(3)
    # 100 ids rather than 40: a node's share of the ring (160 points per
    # node, placed by its "host:port", so different on every run) plus the
    # binomial spread put 40 ids outside 25%..75% about once in 30 runs.
    n = 100
    ids = ["spread-%s-%03d" % (run, i) for i in range(n)]
    for cid in ids:
        eq(probe(P, cid), (3, 0), "CONNACK for %s" % cid)
    na = len(set(e.a.ids(m["a"])) & set(ids))
    nb = len(set(e.b.ids(m["b"])) & set(ids))
    eq(na + nb, n, "clients seen by the two brokers")
    check(n // 4 <= na <= n * 3 // 4, "%d client ids: broker a got %d, broker b %d (each "
          "should get 25%%..75%%)" % (n, na, nb))


def test_empty_client_id(ctx):
    """An empty client id: 3.1.1 with clean session and 5.0 get one from the
    broker, 3.1.1 without clean session and 3.1 get return code 2
    (identifier rejected); on a chash route the key falls back to the
    client address, so every empty-id client from one address reaches the
    same broker."""
    e = env(ctx)
    F = route(e, FLOW)
    body = mstr("MQTT") + bytes([4])
    got, _, _ = exchange(F, packet(0x10, body + b"\x00\x00\x3c" + mstr("")))
    eq(got, b"\x20\x02\x00\x02", "3.1.1, empty id, no clean session: CONNACK")
    got, _, _ = exchange(F, connect_packet("", 3))
    eq(got, b"\x20\x02\x00\x02", "3.1, empty id: CONNACK")
    c = RawMqtt(F, "", level=5)
    c.disconnect()
    eq(parse_connack(c.connack), (5, 0), "5.0, empty id: CONNACK")
    check(b"\x12\x00" in c.connack and b"auto-" in c.connack,
          "5.0 CONNACK without an Assigned Client Identifier: %r" % c.connack)
    P = route(e, CHASH)
    for src in ("127.0.0.1", "127.0.0.2"):
        m = marks([e.a, e.b])
        for _ in range(4):
            eq(probe(P, "", bind=src), (3, 0), "CONNACK for an empty id from %s" % src)
        n = {b.name: len([i for i in b.ids(m[b.name]) if i.startswith("auto-")])
             for b in (e.a, e.b)}
        eq(sorted(n.values()), [0, 4], "empty-id clients from %s per broker (%s)" % (src, n))


def test_chash_broker_stopped_fails_over(ctx):
    """Two brokers of the test's own; 12 clients with sessions open. One
    broker stops: its sessions end (the client sees the close), the other
    broker's sessions go on; the stopped broker's clients reconnect with the
    same id through airgw and land on the other broker."""
    e = env(ctx)
    c1, c2 = new_broker(ctx, "c1"), new_broker(ctx, "c2")
    d = mqtt_dp(ctx, e.cp, name="mq-fo", streams=1, workers=2)
    P = d.stream_ports[0]
    e.put("stream_routes/mq-fo", {"server_port": P, "plugins": {"mqtt-proxy": {}},
                                  "upstream": {"type": "chash", "key": "mqtt_client_id",
                                               "nodes": {c1.addr: 1, c2.addr: 1}}})
    wait_probe(P, ok311, what="route mq-fo")
    run = secrets.token_hex(3)
    ids = ["fo-%s-%02d" % (run, i) for i in range(12)]
    sess = {cid: track(ctx, RawMqtt(P, cid)) for cid in ids}
    for cid, s in sess.items():
        check(s.ok, "CONNACK of %s: %r" % (cid, s.connack))
    on = {cid: broker_of([c1, c2], cid).name for cid in ids}
    on1 = [cid for cid in ids if on[cid] == "c1"]
    on2 = [cid for cid in ids if on[cid] == "c2"]
    check(on1 and on2, "12 client ids all on one broker: %s" % on)
    m2 = c2.mark()
    c1.stop()
    for cid in on1:
        check(sess[cid].wait_closed(3), "session of %s (on the stopped broker) still open"
              % cid)
    for cid in on2:
        check(sess[cid].ping(), "session of %s (on the running broker) stopped answering PINGREQ"
              % cid)
    for cid in on1:
        sess[cid].close()
        eq(probe(P, cid), (3, 0), "CONNACK when %s reconnects" % cid)
        check(c2.has_client(cid, m2), "%s did not reconnect to the running broker c2" % cid)
    for cid in on2:
        sess[cid].disconnect()


def test_all_brokers_down_server_unavailable(ctx):
    e = env(ctx)
    before = workers_before(e)
    P = route(e, DOWN)
    got, how, _ = exchange(P, connect_packet(uid("down"), 4))
    eq(got, b"\x20\x02\x00\x03", "3.1.1 CONNACK (return code 3 server unavailable)")
    check(how == "eof", "3.1.1: expected the CONNACK then a FIN, got %s" % how)
    got, how, _ = exchange(P, connect_packet(uid("down"), 5))
    eq(parse_connack(got), (5, 0x88), "5.0 CONNACK reason code (bytes %r)" % got)
    check(how == "eof", "5.0: expected the CONNACK then a FIN, got %s" % how)
    rc, out = pub(P, "down/x", "x", level=5)
    check(rc != 0 and "unavailable" in out.lower(),
          "mosquitto_pub -V mqttv5 with every broker down: rc %d, %r" % (rc, out))
    check_no_worker_change(e.dp, before, "CONNECTs with every broker down")


def test_hostname_node(ctx):
    """An upstream node given by host name ("localhost:PORT"), as APISIX
    allows: messages flow."""
    e = env(ctx)
    d = mqtt_dp(ctx, e.cp, name="mq-host", streams=1, workers=1)
    P = d.stream_ports[0]
    e.put("stream_routes/mq-host", {"server_port": P, "plugins": {"mqtt-proxy": {}},
                                    "upstream": {"type": "roundrobin",
                                                 "nodes": {"localhost:%d" % e.a.port: 1}}})
    m = e.a.mark()
    try:
        wait_probe(P, ok311, timeout=3, what="route mq-host (node localhost:%d)" % e.a.port)
    except Fail as ex:
        got, _, _ = exchange(P, connect_packet(uid("host"), 4))
        raise Fail("%s; CONNACK bytes %r; data plane log: %s" % (
            ex, got, [ln for ln in d.tail(40) if "localhost" in ln][-1:]))
    flow(e, ctx, 4, 4, port=P, broker=e.a)
    check(e.a.ids(m), "broker a saw no client")


# ---------------------------------------------------------------------------
# refusals


def test_wrong_protocol_level_refused(ctx):
    e = env(ctx)
    before = workers_before(e)
    p4, p5 = route(e, V4), route(e, V5)
    m = marks([e.a, e.b])
    # 5.0 client on a protocol_level 4 route.
    cid = uid("lvl5on4")
    got, how, _ = exchange(p4, connect_packet(cid, 5))
    eq(parse_connack(got), (5, 0x84), "5.0 CONNECT on a level-4 route: CONNACK (bytes %r)" % got)
    check(how == "eof", "expected the CONNACK then a FIN, got %s" % how)
    rc, out = pub(p4, "lv/x", "x", level=5, cid=cid)
    check(rc != 0 and "unsupported protocol version" in out.lower(),
          "mosquitto_pub -V mqttv5 on a level-4 route: rc %d %r" % (rc, out))
    # 3.1.1 client on a protocol_level 5 route.
    cid2 = uid("lvl4on5")
    got, how, _ = exchange(p5, connect_packet(cid2, 4))
    eq(got, b"\x20\x02\x00\x01", "3.1.1 CONNECT on a level-5 route: CONNACK")
    check(how == "eof", "expected the CONNACK then a FIN, got %s" % how)
    rc, out = pub(p5, "lv/x", "x", level=4, cid=cid2)
    check(rc != 0 and "unacceptable protocol version" in out.lower(),
          "mosquitto_pub -V mqttv311 on a level-5 route: rc %d %r" % (rc, out))
    for c in (cid, cid2):
        check(not e.a.has_client(c, m["a"]) and not e.b.has_client(c, m["b"]),
              "refused client %s reached a broker" % c)
    check_no_worker_change(e.dp, before, "wrong protocol levels")


def test_wrong_protocol_name_refused(ctx):
    """protocol_name "MQTT": an MQTT 3.1 client ("MQIsdp") gets return
    code 1; a made-up name gets 1 (3.1.1 level) / 0x84 (5.0 level)."""
    e = env(ctx)
    before = workers_before(e)
    P = route(e, ANY)
    got, how, _ = exchange(P, connect_packet(uid("v31"), 3))
    eq(got, b"\x20\x02\x00\x01", "3.1 CONNECT (MQIsdp) on a protocol_name MQTT route")
    check(how == "eof", "expected the CONNACK then a FIN, got %s" % how)
    rc, out = pub(P, "nm/x", "x", level=3)
    check(rc != 0 and "unacceptable protocol version" in out.lower(),
          "mosquitto_pub -V mqttv31 on a protocol_name MQTT route: rc %d %r" % (rc, out))
    got, how, _ = exchange(P, connect_packet(uid("mqtx"), 4, name="MQTX"))
    eq(got, b"\x20\x02\x00\x01", "CONNECT named MQTX, level 4")
    got, how, _ = exchange(P, connect_packet(uid("mqtx"), 5, name="MQTX"))
    eq(parse_connack(got), (5, 0x84), "CONNECT named MQTX, level 5 (bytes %r)" % got)
    # Without a name in the route, any valid name of the level passes, and an
    # invalid name is still refused.
    F = route(e, FLOW)
    got, how, _ = exchange(F, connect_packet(uid("mqtx"), 4, name="MQTX"))
    eq(got, b"\x20\x02\x00\x01", "CONNECT named MQTX on a route without protocol_name")
    check_no_worker_change(e.dp, before, "wrong protocol names")


def v5_connect_body(props, cid="m5"):
    return packet(0x10, mstr("MQTT") + bytes([5, 0x02]) + b"\x00\x3c" + props + mstr(cid))


def test_malformed_v5_connect_gets_0x81_and_close(ctx):
    e = env(ctx)
    before = workers_before(e)
    P = route(e, FLOW)
    cases = {
        "unknown property 0xff": v5_connect_body(varint(2) + b"\xff\x00"),
        "property length past the packet": v5_connect_body(varint(40) + b"\x11"),
        "receive maximum 0": v5_connect_body(varint(3) + b"\x21\x00\x00"),
        "session expiry twice": v5_connect_body(varint(10) + b"\x11\x00\x00\x00\x01"
                                                b"\x11\x00\x00\x00\x02"),
        "reserved connect flag": connect_packet("m5", 5, flags=0x03),
        "client id not UTF-8": v5_connect_body(varint(0), cid=b"\xff\xfe"),
        "remaining length shorter than the fields": packet(0x10, mstr("MQTT") + b"\x05\x02"),
    }
    for what, data in cases.items():
        got, how, dt = exchange(P, data)
        check(parse_connack(got) == (5, 0x81),
              "malformed 5.0 CONNECT (%s): expected CONNACK 0x81, got %r (%s)" % (what, got, how))
        check(how == "eof", "%s: expected the CONNACK then a FIN, got %s" % (what, how))
        check(dt < T(2), "%s: closed after %.1fs" % (what, dt))
    check_no_worker_change(e.dp, before, "malformed 5.0 CONNECTs")


def test_malformed_v311_connect_closed_without_connack(ctx):
    e = env(ctx)
    before = workers_before(e)
    P = route(e, FLOW)
    body = mstr("MQTT") + bytes([4])
    cases = {
        "reserved connect flag": connect_packet("m4", 4, flags=0x03),
        "password without user name": connect_packet("m4", 4, flags=0x42, password="pw"),
        "will QoS 3": connect_packet("m4", 4, flags=0x1e, will=("w", "x")),
        "will retain without will": connect_packet("m4", 4, flags=0x22),
        "client id length past the packet": packet(0x10, body + b"\x02\x00\x3c\x00\x50ab"),
        "fixed header flags set (0x12)": b"\x12" + connect_packet("m4", 4)[1:],
    }
    for what, data in cases.items():
        got, how, dt = exchange(P, data)
        eq_closed(got, how, "malformed 3.1.1 CONNECT (%s)" % what, allow_reset=True)
        check(dt < T(2), "%s: closed after %.1fs" % (what, dt))
    check_no_worker_change(e.dp, before, "malformed 3.1.1 CONNECTs")


def test_oversized_connect_refused(ctx):
    """A CONNECT over 64 KiB (the default limit): 5.0 gets 0x95 (packet
    too large), 3.1.1 return code 3 (server unavailable), then the close;
    whether the client sent only the start or all of it."""
    e = env(ctx)
    before = workers_before(e)
    P = route(e, FLOW)
    for level, want in ((5, (5, 0x95)), (4, (3, 0x03)), (3, (3, 0x03))):
        data = connect_packet(uid("big"), level, username="u" * 60000, password="p" * 10000)
        check(len(data) > 65536, "test CONNECT is %d bytes" % len(data))
        for what, part in (("first 1000 bytes", data[:1000]), ("whole packet", data)):
            got, how, dt = exchange(P, part)
            eq(parse_connack(got), want, "level %d oversized CONNECT (%s): CONNACK (bytes %r)"
               % (level, what, got[:8]))
            check(how == "eof", "level %d (%s): expected the CONNACK then a FIN, got %s" %
                  (level, what, how))
            check(dt < T(2), "level %d (%s): closed after %.1fs" % (level, what, dt))
    check_no_worker_change(e.dp, before, "oversized CONNECTs")


def test_not_mqtt_closed_without_a_byte(ctx):
    e = env(ctx)
    before = workers_before(e)
    P = route(e, FLOW)
    cases = {
        "HTTP request": b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
        "TLS ClientHello": bytes.fromhex("16030100a5010000a10303") + os.urandom(64),
        "PUBLISH before CONNECT": publish_packet("t", "x"),
        "PINGREQ": PINGREQ,
        "zero bytes": b"\x00" * 64,
        "random": b"\xfe" + os.urandom(300),
    }
    for what, data in cases.items():
        got, how, dt = exchange(P, data)
        eq_closed(got, how, what, allow_reset=True)
        check(dt < T(2), "%s: closed after %.1fs" % (what, dt))
    check_no_worker_change(e.dp, before, "bytes that are not MQTT")


def test_connect_timeout_closes_silent_client(ctx):
    """dataplane.limits.mqtt_connect_timeout (1 s here; default 10 s): a
    client that sends nothing, or half a CONNECT, is closed without a byte
    once it is over."""
    e = env(ctx)
    d = mqtt_dp(ctx, e.cp, name="mq-cto", streams=1, workers=1,
                config={"dataplane": {"limits": {"mqtt_connect_timeout": 1}}})
    P = d.stream_ports[0]
    e.put("stream_routes/mq-cto", {"server_port": P, "plugins": {"mqtt-proxy": {}},
                                   "upstream": {"type": "roundrobin",
                                                "nodes": {e.a.addr: 1}}})
    wait_probe(P, ok311, what="route mq-cto")
    before = d.workers()
    s1 = socket.create_connection(("127.0.0.1", P))
    s2 = socket.create_connection(("127.0.0.1", P))
    try:
        t0 = time.monotonic()
        s2.sendall(connect_packet("half", 4)[:7])
        got1, how1 = read_until_close(s1, timeout=10)
        dt1 = time.monotonic() - t0
        got2, how2 = read_until_close(s2, timeout=10)
        dt2 = time.monotonic() - t0
    finally:
        s1.close()
        s2.close()
    eq_closed(got1, how1, "silent client")
    eq_closed(got2, how2, "client that sent 7 bytes of a CONNECT")
    check(0.8 <= dt1 <= T(3), "silent client closed after %.2fs (timeout 1 s)" % dt1)
    check(0.8 <= dt2 <= T(3), "half-CONNECT client closed after %.2fs (timeout 1 s)" % dt2)
    check_no_worker_change(d, before, "CONNECT timeouts")


# ---------------------------------------------------------------------------
# the byte stream


def test_half_close_mqtt(ctx):
    """CONNECT, SUBSCRIBE, PINGREQ, then the client shuts down its sending
    side: the broker's CONNACK, SUBACK and PINGRESP still arrive, then the
    close."""
    e = env(ctx)
    P = route(e, FLOW)
    got, how, _ = exchange(P, connect_packet(uid("hc"), 4) + subscribe_packet("hc/x") + PINGREQ,
                           shut_wr=True)
    eq(got, b"\x20\x02\x00\x00" + b"\x90\x03\x00\x01\x00" + b"\xd0\x00",
       "CONNACK + SUBACK + PINGRESP after the client's FIN")
    eq(how, "eof", "how the connection ended")


def test_half_close_tcp_stream(ctx):
    """A stream route without mqtt-proxy to a server that answers only
    after the client's FIN: the answer comes back through airgw."""
    e = env(ctx)
    srv = track(ctx, EofReplyServer())
    d = mqtt_dp(ctx, e.cp, name="mq-tcp", streams=1, workers=1)
    P = d.stream_ports[0]
    e.put("stream_routes/mq-tcp", {"server_port": P,
                                   "upstream": {"type": "roundrobin",
                                                "nodes": {srv.addr: 1}}})

    def served():
        try:
            got, how, _ = exchange(P, b"ping", shut_wr=True, timeout=2)
        except OSError:
            return False
        return got == b"got 4 bytes"
    check(wait_until(served, T(5)), "stream route mq-tcp not serving")
    data = os.urandom(300000)
    got, how, _ = exchange(P, data, shut_wr=True, timeout=10)
    eq(got, b"got %d bytes" % len(data), "answer after the half-close")
    eq(how, "eof", "how the connection ended")


# ---------------------------------------------------------------------------
# configuration changes and process events with sessions open


def test_route_change_applies_live(ctx):
    e = env(ctx)
    d = mqtt_dp(ctx, e.cp, name="mq-live", streams=1, workers=2)
    P = d.stream_ports[0]
    body = {"server_port": P, "plugins": {"mqtt-proxy": {}},
            "upstream": {"type": "roundrobin", "nodes": {e.a.addr: 1}}}
    e.put("stream_routes/mq-live", body)
    wait_probe(P, lambda cid, code: code == (3, 0) and e.a.has_client(cid),
               what="route mq-live -> a")
    topic = "live/%s" % secrets.token_hex(3)
    s = track(ctx, RawMqtt(P, uid("live")))
    check(s.ok, "CONNACK %r" % s.connack)
    s.subscribe(topic)
    check(e.a.has_client(s.cid), "session not on broker a")
    body["upstream"]["nodes"] = {e.b.addr: 1}
    e.put("stream_routes/mq-live", body)
    wait_probe(P, lambda cid, code: code == (3, 0) and e.b.has_client(cid),
               what="route mq-live -> b (changed)")
    m = marks([e.a, e.b])
    cid = uid("after")
    must_pub(P, "live/y", "y", cid=cid)
    eq(broker_of([e.a, e.b], cid, m).name, "b", "broker of a new connection after the change")
    # The established session still works, on its broker.
    must_pub(e.a.port, topic, "still here")
    eq(s.recv_publish(), (topic, b"still here"), "message to the session opened before the "
       "change")
    check(s.ping(), "the session opened before the change no longer answers PINGREQ")
    s.disconnect()


def new_workers_serving(d, old, mark, timeout=10):
    """Waits for d.workers_n workers serving that are not in old (pids)."""
    def ok():
        pids = {int(p) for _, p, _ in SERVING_RE.findall(d.stderr()[mark:])}
        return len(pids - set(old)) >= d.workers_n
    if not wait_until(ok, T(timeout)):
        raise Fail("%s: no %d new serving workers within %.0fs: %s" % (
            d.name, d.workers_n, T(timeout), "\n".join(d.tail(12))))


def test_sighup_keeps_established_sessions(ctx):
    """A mosquitto_sub connected before SIGHUP still receives a message
    published (through the new workers) after it, on its first connection
    (mosquitto_sub would reconnect by itself: the broker must have seen its
    client id connect once)."""
    e = env(ctx)
    d = mqtt_dp(ctx, e.cp, name="mq-hup", streams=1, workers=2)
    P = d.stream_ports[0]
    e.put("stream_routes/mq-hup", {"server_port": P, "plugins": {"mqtt-proxy": {}},
                                   "upstream": {"type": "roundrobin",
                                                "nodes": {e.a.addr: 1}}})
    wait_probe(P, ok311, what="route mq-hup")
    topic = "hup/%s" % secrets.token_hex(3)
    sid = uid("hupsub")
    subs = [track(ctx, Sub(P, topic, level=lvl, cid="%s-v%d" % (sid, lvl), count=1, wait=15))
            for lvl in (4, 5)]
    for s in subs:
        wait_subscribed([e.a], s.cid)
    old = d.wait_workers()
    mark = d.log_mark()
    d.sighup()
    d.wait_log(r"SIGHUP: reloading settings", since=mark)
    new_workers_serving(d, old.values(), mark)
    # New connections are served by the new workers.
    wait_probe(P, ok311, what="route after SIGHUP")
    must_pub(P, topic, "after-hup", cid=uid("huppub"))
    for s in subs:
        rc = s.wait_exit(5)
        eq(s.lines(), ["%s after-hup" % topic], "what %s printed" % s.cid)
        eq(rc, 0, "%s exit status (stderr %r)" % (s.cid, s.stderr().strip()))
        eq(e.a.ids().count(s.cid), 1, "connections of %s seen by the broker" % s.cid)
    # With the sessions gone the old workers finish.
    for slot, pid in old.items():
        d.wait_log(r"worker %d \(pid %d\) exited \(drained\)" % (slot, pid), since=mark,
                   what="old worker %d drained" % slot)


def test_kill9_worker_drops_only_its_sessions(ctx):
    e = env(ctx)
    d = mqtt_dp(ctx, e.cp, name="mq-k9", streams=1, workers=2)
    P = d.stream_ports[0]
    e.put("stream_routes/mq-k9", {"server_port": P, "plugins": {"mqtt-proxy": {}},
                                  "upstream": {"type": "roundrobin",
                                               "nodes": {e.a.addr: 1}}})
    wait_probe(P, ok311, what="route mq-k9")
    before = d.wait_workers()
    sessions = []
    by = {}
    while len(sessions) < 40:
        for _ in range(6):
            c = track(ctx, RawMqtt(P, uid("k9")))
            check(c.ok, "CONNACK %r" % c.connack)
            sessions.append(c)
        by = sessions_by_worker(d, P, sessions)
        if all(len(by.get(pid, [])) >= 2 for pid in before.values()):
            break
    check(None not in by, "sessions held by no worker: %s" % [c.cid for c in by.get(None, [])])
    check(all(by.get(pid) for pid in before.values()),
          "%d sessions, not on both workers: %s" % (
              len(sessions), {p: len(v) for p, v in by.items()}))
    mark = d.log_mark()
    victim = d.kill_worker(0)
    survivor = before[1]
    for c in by[victim]:
        check(c.wait_closed(3), "session %s of the killed worker still open" % c.cid)
    for c in by[survivor]:
        check(c.ping(), "session %s of the other worker (pid %d) stopped answering" % (
            c.cid, survivor))
    d.wait_log(r"worker 0 \(pid %d\) was killed by signal 9" % victim, since=mark)
    now = d.wait_workers(exclude=[victim])
    eq(now.get(1), survivor, "the other worker's pid")
    # The killed worker's clients reconnect.
    for c in by[victim][:3]:
        eq(probe(P, c.cid), (3, 0), "CONNACK when %s reconnects" % c.cid)
    for c in sessions:
        c.disconnect()


def test_sigterm_with_open_session_exits_at_drain_timeout(ctx):
    """SIGTERM while an MQTT session is open: the session runs until the
    drain timeout (1 s here), then the client sees the close and the data
    plane exits 0."""
    e = env(ctx)
    d = mqtt_dp(ctx, e.cp, name="mq-term", streams=1, workers=1,
                config={"dataplane": {"drain_timeout": 1}})
    P = d.stream_ports[0]
    e.put("stream_routes/mq-term", {"server_port": P, "plugins": {"mqtt-proxy": {}},
                                    "upstream": {"type": "roundrobin",
                                                 "nodes": {e.a.addr: 1}}})
    wait_probe(P, ok311, what="route mq-term")
    c = track(ctx, RawMqtt(P, uid("term")))
    check(c.ok, "CONNACK %r" % c.connack)
    errors = []

    def stopper():  # SIGTERM, then the harness's checks (exit 0, clean log)
        try:
            d.stop()
        except Fail as ex:
            errors.append(str(ex))
    th = threading.Thread(target=stopper, daemon=True)
    t0 = time.monotonic()
    th.start()
    time.sleep(0.3)
    check(c.ping(), "the session stopped answering at once on SIGTERM (before the drain "
          "timeout)")
    check(c.wait_closed(3), "session still open 3 s after SIGTERM (drain timeout 1 s)")
    th.join(T(15))
    dt = time.monotonic() - t0
    check(not th.is_alive(), "data plane stop did not return")
    eq(errors, [], "data plane stop")
    check(dt < T(3), "data plane exit took %.1fs (drain timeout 1 s)" % dt)


# ---------------------------------------------------------------------------
# APISIX's forms


SEED = """stream_routes:
  - id: 1
    upstream_id: 1
    plugins:
      mqtt-proxy:
        protocol_name: "MQTT"
        protocol_level: 5
upstreams:
  - nodes:
      "127.0.0.1:{pa}": 1
      "127.0.0.1:{pb}": 1
    type: chash
    key: mqtt_client_id
    id: 1
#END
"""


def ids_by_broker(port, brokers, n, level, prefix):
    """Client ids probed through port, grouped by the broker each reached."""
    out = {b.name: [] for b in brokers}
    m = marks(brokers)
    for i in range(n):
        cid = "%s-%d" % (prefix, i)
        eq(probe(port, cid, level), (5, 0) if level == 5 else (3, 0), "CONNACK for %s" % cid)
        out[broker_of(brokers, cid, m).name].append(cid)
    return out


def test_standalone_apisix_seed_file(ctx):
    """APISIX's MQTT seed apisix.yaml (broker ports replaced), listeners from
    the YAML config (dataplane.stream_proxy.tcp, both forms): 5.0 clients
    pass and stick to a broker; 3.1.1 clients get return code 1; messages
    flow between two clients the hash puts on the same broker."""
    e = env(ctx)
    a, b = e.a, e.b
    path = os.path.join(ctx.tmpdir(), "apisix.yaml")
    with open(path, "w") as f:
        f.write(SEED.replace("{pa}", str(a.port)).replace("{pb}", str(b.port)))
    p1, p2 = free_port(), free_port()
    d = mqtt_dp(ctx, None, name="mq-seed", streams=0, workers=2, standalone=path, start=False,
                config={"dataplane": {"stream_proxy": {"tcp": [
                    "127.0.0.1:%d" % p1, {"addr": "127.0.0.1:%d" % p2, "tls": False}]}}})
    d.start(synced=False)
    wait_stream_listeners(d, [p1, p2])
    wait_probe(p1, ok5, level=5, what="seed route")
    run = secrets.token_hex(3)
    groups = ids_by_broker(p1, [a, b], 16, 5, "seed-%s" % run)
    check(groups["a"] and groups["b"], "16 client ids all on one broker: %s" % groups)
    # Same id again, through the other listener: same broker.
    for name, cids in groups.items():
        m = marks([a, b])
        for cid in cids[:2]:
            must_pub(p2, "seed/x", "x", level=5, cid=cid)
            eq(broker_of([a, b], cid, m).name, name, "broker of %s on its second visit" % cid)
    got, how, _ = exchange(p1, connect_packet(uid("seed4"), 4))
    eq(got, b"\x20\x02\x00\x01", "3.1.1 CONNECT on the seed route (protocol_level 5)")
    # Messages flow between two clients on the same broker.
    br = a if len(groups["a"]) >= 2 else b
    sid, pid = groups[br.name][:2]
    topic = "seed/%s" % run
    m = br.mark()
    s = track(ctx, Sub(p1, topic, level=5, cid=sid, count=1, wait=10))
    wait_subscribed([br], sid, since={br.name: m})
    must_pub(p2, topic, "through the seed route", level=5, cid=pid)
    eq(s.wait_exit(5), 0, "mosquitto_sub exit status (%r)" % s.stderr().strip())
    eq(s.lines(), ["%s through the seed route" % topic], "what mosquitto_sub printed")


def test_apisix2_plugin_upstream_form(ctx):
    """APISIX 2.x: mqtt-proxy names the broker itself ("upstream": {"ip",
    "port"}), the route has remote_addr and nothing else (own control plane:
    this route matches every port)."""
    e = env(ctx)
    cp = ctx.daemon()
    d = mqtt_dp(ctx, cp, name="mq-2x", streams=1, workers=2)
    P = d.stream_ports[0]
    cp.must("PUT", "stream_routes/1", {
        "remote_addr": "127.0.0.1",
        "plugins": {"mqtt-proxy": {"protocol_name": "MQTT", "protocol_level": 4,
                                   "upstream": {"ip": "127.0.0.1", "port": e.a.port}}}})
    wait_probe(P, ok311, what="APISIX 2.x route")
    flow(e, ctx, 4, 4, port=P, broker=e.a)
    got, how, _ = exchange(P, connect_packet(uid("from2"), 4), bind="127.0.0.2")
    eq_closed(got, how, "a client from 127.0.0.2 (route remote_addr 127.0.0.1)",
              allow_reset=True)
    got, how, _ = exchange(P, connect_packet(uid("v5"), 5))
    eq(parse_connack(got), (5, 0x84), "5.0 CONNECT on the 2.x level-4 route (bytes %r)" % got)
    # The "host" spelling of the same form.
    cp.must("PUT", "stream_routes/1", {
        "remote_addr": "127.0.0.1",
        "plugins": {"mqtt-proxy": {"protocol_name": "MQTT", "protocol_level": 4,
                                   "upstream": {"host": "127.0.0.1", "port": e.b.port}}}})
    wait_probe(P, lambda cid, code: code == (3, 0) and e.b.has_client(cid),
               what="APISIX 2.x route with upstream.host -> b")
