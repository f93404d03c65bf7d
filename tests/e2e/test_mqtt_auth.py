"""MQTT authentication at CONNECT (the mqtt-auth stream plugin), end to end,
with real mosquitto brokers, the real mosquitto_pub / mosquitto_sub and the
real data plane (raw sockets where the exact CONNACK byte matters):

- password mode: 3.1.1 and 5.0 clients with a consumer's basic-auth user
  name and password publish and a subscriber receives; a wrong password, an
  unknown user, no credentials, a user name without a password get CONNACK
  0x04 (3.1.1) / 0x86 (5.0) and never reach the broker; each refusal is
  logged with the client id and user name, never the password;
- a consumer deleted (or its password changed) through the Admin API stops
  later CONNECTs;
- allow_anonymous: a client with no credentials passes, a wrong credential
  is still refused;
- mTLS, certificate mode: the client certificate's subject (RFC 2253) or CN
  names the consumer; a certificate naming no consumer, no certificate, or
  a CN spelled like another consumer's subject get 0x05 / 0x87; mode either
  takes a certificate or a password; on a TLS stream route without
  mqtt-proxy a certificate naming no consumer is closed before the upstream;
- chash with hash_on consumer: one consumer always lands on the same broker
  of two, whatever its client ids; consumers spread over both; clients
  without a consumer hash on their address;
- limit-conn keyed on consumer_name after mqtt-auth: one session per
  consumer across both workers, the slot given back when the session ends
  (the stream_log phase), refused CONNECTs take no slot;
- the Admin API checks mqtt-auth's configuration on stream routes and its
  credential on consumers.

Certificates are made with openssl(1) at the start of the module."""

import os
import re
import secrets
import socket
import ssl
import time

from harness import T, Fail, check, eq, wait_until
from dp_harness import check_no_worker_change
from mqtt_harness import (Broker, PacketReader, Sub, broker_of, connect_packet, marks, mqtt_dp,
                          parse_connack, pub, shared_brokers, wait_subscribed)
from certs import ca, client, module_certs, server

# stream listeners of the module's data plane (one stream route each, by
# server_port); TLS is the TLS listener (routes by server name)
PW, CH, ANON, LIM, TLS = range(5)

CERTS = (
    ca("ca", "/CN=airgw mqtt-auth e2e CA"),
    server("srv", "/CN=*.auth.test", "DNS:*.auth.test"),
    client("dev1", "/O=Acme/CN=dev1"),
    client("dev2", "/CN=dev2/OU=fleet"),
    client("dev3", "/CN=dev3/O=Acme"),
    client("spoof", "/CN=CN=dev1,O=Acme"),
)

DEV1_SUBJECT = "CN=dev1,O=Acme"   # RFC 2253: the last RDN first


class Env:
    def __init__(self, cp, dp, a, b, certs):
        self.cp, self.dp, self.a, self.b, self.certs = cp, dp, a, b, certs

    def port(self, which):
        return self.dp.stream_ports[which]

    def put(self, path, body):
        return self.cp.must("PUT", path, body)

    def cf(self, name):
        return os.path.join(self.certs, name)

    def pem(self, name):
        with open(self.cf(name)) as f:
            return f.read()


def env(ctx):
    e = getattr(ctx.mod, "auth_env", None)
    if e is None:
        certs = module_certs(ctx, "mqtt-auth-certs", *CERTS)
        cp = ctx.shared("cp-mqauth")
        d = mqtt_dp(ctx, cp, name="mqauth", streams=TLS, tls=True, args=["--https-listen", "off"],
                    shared="dp-mqauth")
        a, b = shared_brokers(ctx, Broker("auth-a"), Broker("auth-b"))
        # stopped in this order: data plane, brokers, control plane
        ctx.mod.shared["cp-mqauth"] = ctx.mod.shared.pop("cp-mqauth")
        e = ctx.mod.auth_env = Env(cp, d, a, b, certs)
        setup(e)
    else:
        ctx.shared("cp-mqauth")
    ctx.use_shared(e.dp, e.a, e.b)
    return e


def one(br):
    return {"type": "roundrobin", "nodes": {br.addr: 1}}


def by_consumer(e):
    return {"type": "chash", "hash_on": "consumer", "nodes": {e.a.addr: 1, e.b.addr: 1}}


def setup(e):
    mq = {"mqtt-proxy": {}}

    def route(rid, auth, upstream, **match):
        body = {"plugins": dict(mq, **{"mqtt-auth": auth}), "upstream": upstream}
        body.update(match)
        e.put("stream_routes/" + rid, body)
    e.put("consumers/dev_a", {"username": "dev_a", "plugins": {
        "basic-auth": {"username": "dev-a", "password": "pw-a-s3cret"}}})
    e.put("consumers/cert_dev1", {"username": "cert_dev1", "plugins": {
        "mqtt-auth": {"cert_subject": DEV1_SUBJECT}}})
    e.put("consumers/cert_dev2", {"username": "cert_dev2", "plugins": {
        "mqtt-auth": {"cert_cn": "dev2"}}})
    route("auth-pw", {}, one(e.a), server_port=e.port(PW))
    route("auth-ch", {"mode": "password"}, by_consumer(e), server_port=e.port(CH))
    route("auth-anon", {"allow_anonymous": True}, by_consumer(e), server_port=e.port(ANON))
    e.put("consumers/dev_b", {"username": "dev_b", "plugins": {
        "basic-auth": {"username": "dev-b", "password": "pw-b"}}})
    e.put("stream_routes/auth-lim", {
        "server_port": e.port(LIM), "upstream": one(e.a),
        "plugins": {"mqtt-proxy": {}, "mqtt-auth": {},
                    "limit-conn": {"conn": 1, "burst": 0, "default_conn_delay": 0.1,
                                   "key": "consumer_name"}}})
    e.put("ssls/auth-m", {"cert": e.pem("srv.crt"), "key": e.pem("srv.key"),
                          "snis": ["m.auth.test", "e.auth.test", "t.auth.test"],
                          "client": {"ca": e.pem("ca.crt"), "depth": 1}})
    e.put("ssls/auth-p", {"cert": e.pem("srv.crt"), "key": e.pem("srv.key"),
                          "snis": ["p.auth.test"]})
    route("auth-tls-m", {"mode": "certificate"}, one(e.a), server_port=e.port(TLS),
          sni="m.auth.test")
    route("auth-tls-e", {"mode": "either"}, one(e.a), server_port=e.port(TLS),
          sni="e.auth.test")
    route("auth-tls-p", {"mode": "certificate"}, one(e.a), server_port=e.port(TLS),
          sni="p.auth.test")
    # plain TCP over TLS (no mqtt-proxy): the broker itself answers
    e.put("stream_routes/auth-tls-t", {"server_port": e.port(TLS), "sni": "t.auth.test",
                                       "upstream": one(e.a),
                                       "plugins": {"mqtt-auth": {"mode": "certificate"}}})
    # every worker has everything (the TLS route and the certificates last)
    stable(lambda: connack(e, PW, user="dev-a", password="pw-a-s3cret") == (3, 0) and
           connack(e, PW) == (3, 4), "password route")
    stable(lambda: tls_connack(e, "m.auth.test", "dev1") == (3, 0) and
           tls_connack(e, "p.auth.test") == (3, 5), "certificate routes")


def stable(pred, what, n=6, timeout=8):
    """pred holds n times in a row (so both workers have the change)."""
    end = time.monotonic() + T(timeout)
    ok = 0
    while ok < n:
        try:
            good = pred()
        except (OSError, EOFError, ssl.SSLError):
            good = False
        if good:
            ok += 1
            continue
        ok = 0
        if time.monotonic() > end:
            raise Fail("%s not in effect within %.0fs" % (what, T(timeout)))
        time.sleep(0.05)


# ---------------------------------------------------------------------------
# clients


def new_cid(prefix="au"):
    return "%s-%s" % (prefix, secrets.token_hex(4))


def _exchange(sock, cid, level, user, password):
    """Sends a CONNECT and reads its CONNACK: (form, code), or None when the
    connection closed without one."""
    rd = PacketReader(sock)
    try:
        sock.sendall(connect_packet(cid, level, username=user, password=password))
        first, body = rd.read(5)
    except (EOFError, ConnectionResetError, BrokenPipeError):
        return None
    return parse_connack(bytes([first, len(body)]) + body)


def connack(e, which, cid=None, level=4, user=None, password=None):
    """One CONNECT through a plain stream listener: the CONNACK (form, code)."""
    s = socket.create_connection(("127.0.0.1", e.port(which)), timeout=T(5))
    try:
        return _exchange(s, cid or new_cid(), level, user, password)
    finally:
        s.close()


class Session:
    """An authenticated MQTT session held open on a raw socket."""

    def __init__(self, e, which, user, password, level=4):
        self.cid = new_cid("s")
        self.sock = socket.create_connection(("127.0.0.1", e.port(which)), timeout=T(5))
        self.code = _exchange(self.sock, self.cid, level, user, password)

    def close(self):
        try:
            self.sock.sendall(b"\xe0\x00")  # DISCONNECT
        except OSError:
            pass
        self.sock.close()


def tls_context(e, cert=None):
    c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    c.check_hostname = False
    c.load_verify_locations(e.cf("ca.crt"))
    if cert:
        c.load_cert_chain(e.cf(cert + ".crt"), e.cf(cert + ".key"))
    return c


def tls_connack(e, sni, cert=None, cid=None, level=4, user=None, password=None):
    """One CONNECT over TLS with server name sni (and a client certificate)."""
    raw = socket.create_connection(("127.0.0.1", e.port(TLS)), timeout=T(5))
    try:
        s = tls_context(e, cert).wrap_socket(raw, server_hostname=sni)
    except Exception:
        raw.close()
        raise
    try:
        return _exchange(s, cid or new_cid(), level, user, password)
    finally:
        s.close()


def auth_args(user, password):
    a = []
    if user is not None:
        a += ["-u", user]
    if password is not None:
        a += ["-P", password]
    return a


def pubsub(e, port, level, user, password, what, extra=None):
    """mosquitto_sub and mosquitto_pub through port with the credentials:
    the subscriber gets the message."""
    topic = "auth/%s" % secrets.token_hex(4)
    creds = auth_args(user, password) + (extra or [])
    sub = Sub(port, topic, level=level, count=1, wait=8, extra=creds)
    try:
        wait_subscribed([e.a, e.b], sub.cid)
        msg = "hello-" + secrets.token_hex(4)
        rc, out = pub(port, topic, msg, level=level, cid=new_cid("p"), extra=creds)
        if rc != 0:
            raise Fail("%s: mosquitto_pub failed: rc %d: %s" % (what, rc, out.strip()))
        lines = sub.wait_lines(1, timeout=5)
        check(("%s %s" % (topic, msg)) in lines, "%s: the subscriber got %r (stderr %r)" % (
            what, lines, sub.stderr()[-300:]))
    finally:
        sub.close()


# ---------------------------------------------------------------------------
# tests


def test_password_pubsub_311_and_5(ctx):
    e = env(ctx)
    before = e.dp.workers()
    for level in (4, 5):
        pubsub(e, e.port(PW), level, "dev-a", "pw-a-s3cret", "MQTT level %d" % level)
    # the CONNECT went on unchanged: the broker saw the user name
    check("u'dev-a'" in e.a.log(),
          "broker a logged no client with user dev-a: %s" % "\n".join(e.a.tail(5)))
    check_no_worker_change(e.dp, before, "authenticated sessions")


def test_password_refusals_give_connack_codes(ctx):
    e = env(ctx)
    m = marks([e.a, e.b])
    mark = len(e.dp.stderr())
    cases = [
        ("wrong password", "dev-a", "not-the-password"),
        ("unknown user", "nobody", "pw-a-s3cret"),
        ("no credentials", None, None),
        ("user name, no password", "dev-a", None),
        ("empty user name and password", "", ""),
        ("password prefix", "dev-a", "pw-a-s3cre"),
        ("password longer", "dev-a", "pw-a-s3cret!"),
    ]
    cids = []
    for what, user, password in cases:
        for level, want in ((4, (3, 0x04)), (5, (5, 0x86))):
            cid = new_cid("bad")
            cids.append(cid)
            eq(connack(e, PW, cid, level, user, password), want, "%s, level %d" % (what, level))
    # the right credentials on the same connection shape still pass
    eq(connack(e, PW, level=5, user="dev-a", password="pw-a-s3cret"), (5, 0), "right password")
    # no refused client ever reached a broker
    for b in (e.a, e.b):
        seen = set(b.ids(m[b.name]))
        check(not seen & set(cids), "refused clients reached %s: %s" % (b.name, seen & set(cids)))
    # what mosquitto_pub users see
    rc, out = pub(e.port(PW), "auth/x", "m", extra=["-u", "dev-a", "-P", "wrong"])
    check(rc != 0 and "bad user name or password" in out.lower(),
          "mosquitto_pub with a wrong password: rc %d: %s" % (rc, out.strip()))
    rc, out = pub(e.port(PW), "auth/x", "m", level=5, extra=["-u", "dev-a", "-P", "wrong"])
    check(rc != 0 and "bad user name or password" in out.lower(),
          "mosquitto_pub -V mqttv5 with a wrong password: rc %d: %s" % (rc, out.strip()))
    # one log line per refusal, with client id and user name, never the password
    log = e.dp.stderr()[mark:]
    lines = [ln for ln in log.splitlines() if "mqtt-auth" in ln and "refused" in ln]
    check(len(lines) >= len(cids), "%d refusal lines for %d refusals: %s" % (
        len(lines), len(cids), "\n".join(lines[-5:])))
    first = [ln for ln in lines if cids[0] in ln]
    check(first and "user dev-a" in first[0] and "127.0.0.1" in first[0],
          "the refusal of %s is logged with user and address: %s" % (cids[0], first))
    for secret in ("not-the-password", "pw-a-s3cret"):
        check(secret not in log, "a password (%s) appears in the data plane's log" % secret)


def test_consumer_deleted_or_changed_stops_connects(ctx):
    e = env(ctx)
    e.put("consumers/dev_tmp", {"username": "dev_tmp", "plugins": {
        "basic-auth": {"username": "dev-tmp", "password": "first"}}})
    stable(lambda: connack(e, PW, user="dev-tmp", password="first") == (3, 0), "new consumer")
    e.put("consumers/dev_tmp", {"username": "dev_tmp", "plugins": {
        "basic-auth": {"username": "dev-tmp", "password": "second"}}})
    stable(lambda: connack(e, PW, user="dev-tmp", password="first") == (3, 4) and
           connack(e, PW, user="dev-tmp", password="second") == (3, 0), "password change")
    e.cp.must("DELETE", "consumers/dev_tmp")
    stable(lambda: connack(e, PW, level=5, user="dev-tmp", password="second") == (5, 0x86),
           "consumer deletion")
    eq(connack(e, PW, user="dev-a", password="pw-a-s3cret"), (3, 0), "other consumers")


def test_allow_anonymous(ctx):
    e = env(ctx)
    m = marks([e.a, e.b])
    cid = new_cid("anon")
    eq(connack(e, ANON, cid), (3, 0), "no credentials on an allow_anonymous route")
    broker_of([e.a, e.b], cid, since=m)
    eq(connack(e, ANON, level=5, user="dev-a", password="wrong"), (5, 0x86),
       "a wrong credential is still refused")
    eq(connack(e, ANON, user="dev-a", password="pw-a-s3cret"), (3, 0), "right credential")


def test_certificate_subject_and_cn(ctx):
    e = env(ctx)
    m = marks([e.a, e.b])
    cid = new_cid("cert")
    eq(tls_connack(e, "m.auth.test", "dev1", cid), (3, 0), "subject CN=dev1,O=Acme")
    broker_of([e.a], cid, since=m)
    eq(tls_connack(e, "m.auth.test", "dev2", level=5), (5, 0), "cert_cn dev2")
    # a verified certificate naming no consumer
    eq(tls_connack(e, "m.auth.test", "dev3"), (3, 0x05), "dev3 (no consumer), 3.1.1")
    eq(tls_connack(e, "m.auth.test", "dev3", level=5), (5, 0x87), "dev3 (no consumer), 5.0")
    # a CN spelled like dev1's subject does not stand for dev1
    eq(tls_connack(e, "m.auth.test", "spoof"), (3, 0x05), "CN 'CN=dev1,O=Acme'")
    # a password does not replace the certificate in certificate mode
    eq(tls_connack(e, "m.auth.test", "dev3", user="dev-a", password="pw-a-s3cret"), (3, 0x05),
       "certificate mode ignores user names")
    # no client certificate at all (the ssl asks for none)
    eq(tls_connack(e, "p.auth.test"), (3, 0x05), "no certificate, 3.1.1")
    eq(tls_connack(e, "p.auth.test", level=5), (5, 0x87), "no certificate, 5.0")
    log = e.dp.stderr()
    check(re.search(r"mqtt-auth: stream route auth-tls-m: refused .*certificate CN=dev3,O=Acme",
                    log) or re.search(r"refused .*certificate O=Acme,CN=dev3", log),
          "the refusal of dev3 is logged with its subject")


def test_certificate_mosquitto_clients(ctx):
    e = env(ctx)
    # mosquitto clients send the host they connect to as the server name,
    # and *.auth.test does not resolve: a route for "localhost" (the
    # certificate is *.auth.test, so --insecure skips the name check; the
    # chain is still verified against the CA).
    e.put("ssls/auth-l", {"cert": e.pem("srv.crt"), "key": e.pem("srv.key"),
                          "snis": ["localhost"], "client": {"ca": e.pem("ca.crt")}})
    e.put("stream_routes/auth-tls-l", {
        "server_port": e.port(TLS), "sni": "localhost", "upstream": one(e.a),
        "plugins": {"mqtt-proxy": {}, "mqtt-auth": {"mode": "certificate"}}})
    stable(lambda: tls_connack(e, "localhost", "dev1") == (3, 0) and
           tls_connack(e, "localhost", "dev3") == (3, 5), "localhost certificate route")
    base = ["-h", "localhost", "-p", str(e.port(TLS)), "--cafile", e.cf("ca.crt"), "--insecure"]
    for level in (4, 5):
        topic = "auth/tls/%s" % secrets.token_hex(4)
        sub = Sub(e.port(TLS), topic, level=level, count=1, wait=8,
                  extra=base + ["--cert", e.cf("dev2.crt"), "--key", e.cf("dev2.key")])
        try:
            wait_subscribed([e.a], sub.cid)
            msg = "tls-" + secrets.token_hex(4)
            rc, out = pub(e.port(TLS), topic, msg, level=level,
                          extra=base + ["--cert", e.cf("dev1.crt"), "--key", e.cf("dev1.key")])
            check(rc == 0, "mosquitto_pub with dev1's certificate: rc %d: %s" % (rc, out))
            lines = sub.wait_lines(1, timeout=5)
            check(("%s %s" % (topic, msg)) in lines, "level %d: subscriber got %r" % (
                level, lines))
        finally:
            sub.close()
    rc, out = pub(e.port(TLS), "auth/tls/x", "m",
                  extra=base + ["--cert", e.cf("dev3.crt"), "--key", e.cf("dev3.key")])
    check(rc != 0 and "not authori" in out.lower(),
          "mosquitto_pub with a certificate naming no consumer: rc %d: %s" % (rc, out.strip()))


def test_certificate_on_plain_tcp_route(ctx):
    e = env(ctx)
    stable(lambda: tls_connack(e, "t.auth.test", "dev2") == (3, 0), "TCP route over TLS")
    m = marks([e.a])
    cid = new_cid("tcp")
    eq(tls_connack(e, "t.auth.test", "dev1", cid), (3, 0), "dev1 through the TCP route")
    broker_of([e.a], cid, since=m)
    m = marks([e.a])
    cid = new_cid("tcp")
    eq(tls_connack(e, "t.auth.test", "dev3", cid), None, "dev3: closed, no byte")
    time.sleep(0.2)
    check(not e.a.has_client(cid, m[e.a.name]) and
          "New connection" not in e.a.log()[m[e.a.name]:],
          "dev3's connection reached the broker: %s" % "\n".join(e.a.tail(4)))


def test_either_mode(ctx):
    e = env(ctx)
    eq(tls_connack(e, "e.auth.test", "dev1"), (3, 0), "certificate")
    eq(tls_connack(e, "e.auth.test", "dev3", user="dev-a", password="pw-a-s3cret"), (3, 0),
       "unmatched certificate, right password")
    eq(tls_connack(e, "e.auth.test", "dev3", user="dev-a", password="nope"), (3, 0x04),
       "unmatched certificate, wrong password")
    eq(tls_connack(e, "e.auth.test", "dev3", level=5), (5, 0x87),
       "unmatched certificate, no password")


def test_chash_on_consumer(ctx):
    e = env(ctx)
    names = ["ch%02d" % i for i in range(16)]
    for n in names:
        e.put("consumers/" + n, {"username": n, "plugins": {
            "basic-auth": {"username": "u-" + n, "password": "p-" + n}}})
    stable(lambda: connack(e, CH, user="u-" + names[-1], password="p-" + names[-1]) == (3, 0),
           "the consumers")
    where = {}
    for n in names:
        got = set()
        for _ in range(3):
            m = marks([e.a, e.b])
            cid = new_cid(n)
            eq(connack(e, CH, cid, user="u-" + n, password="p-" + n), (3, 0), n)
            got.add(broker_of([e.a, e.b], cid, since=m).name)
        check(len(got) == 1, "consumer %s with three client ids landed on %s" % (n, got))
        where[n] = got.pop()
    check(len(set(where.values())) == 2, "16 consumers all on one broker: %s" % where)
    # without a consumer (anonymous) the client address is the key: one
    # broker for every client id from 127.0.0.1
    got = set()
    for _ in range(6):
        m = marks([e.a, e.b])
        cid = new_cid("anon")
        eq(connack(e, ANON, cid), (3, 0), "anonymous")
        got.add(broker_of([e.a, e.b], cid, since=m).name)
    eq(len(got), 1, "brokers of anonymous clients from one address")


def test_admin_api_checks(ctx):
    e = env(ctx)
    bad = [
        ("stream_routes/auth-bad", {"plugins": {"mqtt-proxy": {},
                                                "mqtt-auth": {"mode": "telepathy"}},
                                    "upstream": one(e.a)}),
        ("stream_routes/auth-bad", {"plugins": {"mqtt-proxy": {},
                                                "mqtt-auth": {"allow_anonymous": "yes"}},
                                    "upstream": one(e.a)}),
        ("consumers/bad_cert", {"username": "bad_cert", "plugins": {"mqtt-auth": {}}}),
        ("consumers/bad_cert", {"username": "bad_cert",
                                "plugins": {"mqtt-auth": {"cert_cn": ""}}}),
        ("routes/auth-http", {"uri": "/x", "plugins": {"mqtt-auth": {}},
                              "upstream": {"type": "roundrobin",
                                           "nodes": {"127.0.0.1:1": 1}}}),
    ]
    for path, body in bad:
        r = e.cp.api("PUT", path, body)
        eq(r.status, 400, "PUT %s %s" % (path, body))
        check("mqtt-auth" in r.text, "the error names mqtt-auth: %s" % r.text)
    # defaults are filled in
    got = e.cp.must("GET", "stream_routes/auth-pw")
    conf = got["value"]["plugins"]["mqtt-auth"]
    eq((conf.get("mode"), conf.get("allow_anonymous")), ("password", False), "defaults")


def test_limit_conn_by_consumer(ctx):
    e = env(ctx)
    # In effect on both workers: dev-b is let in, or refused by limit-conn
    # (0x03) while the data plane has not yet seen the previous probe's close.
    stable(lambda: connack(e, LIM, user="dev-b", password="pw-b") in ((3, 0), (3, 0x03)),
           "limit route")
    first = Session(e, LIM, "dev-a", "pw-a-s3cret")
    try:
        eq(first.code, (3, 0), "dev-a's first session")
        # a second session of the same consumer, on any worker: refused
        for level, want in ((4, (3, 0x03)), (5, (5, 0x88))) * 3:
            eq(connack(e, LIM, level=level, user="dev-a", password="pw-a-s3cret"), want,
               "dev-a's second session (level %d)" % level)
        # another consumer is not limited by dev-a's session
        # (once the data plane has seen the close of dev-b's last probe above)
        check(wait_until(lambda: connack(e, LIM, user="dev-b", password="pw-b") == (3, 0),
                         T(5), interval=0.05), "dev-b is not limited by dev-a's session")
        # refused by mqtt-auth: no slot taken, nothing given back twice
        for _ in range(4):
            eq(connack(e, LIM, user="dev-a", password="wrong"), (3, 0x04), "wrong password")
    finally:
        first.close()
    # the session's end gives the slot back (stream_log); each probe's own
    # close is seen by the data plane a moment later, so probe by sessions
    held = []

    def session_ok():
        s = Session(e, LIM, "dev-a", "pw-a-s3cret")
        if s.code == (3, 0):
            held.append(s)
            return True
        s.close()
        return False
    check(wait_until(session_ok, T(5), interval=0.05),
          "dev-a can connect again once its session ended")
    again = held[0]
    try:
        eq(connack(e, LIM, user="dev-a", password="pw-a-s3cret"), (3, 0x03),
           "still one session per consumer")
    finally:
        again.close()
