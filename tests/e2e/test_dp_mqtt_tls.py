"""MQTT over TLS through the data plane's stream proxy, end to end:

- a TLS stream listener (--stream-tls-listen) serving the ssls PUT through
  the Admin API: mosquitto_pub / mosquitto_sub over TLS (--cafile, name
  verified) publish and receive through airgw;
- stream routes with sni (exact and "*.x" wildcard) select the broker; an
  unknown server name fails the handshake; a name with a certificate but
  no route is closed;
- refusal CONNACKs come encrypted (then close_notify);
- mTLS: a client certificate by the CA in ssl.client.ca is accepted; none,
  or one by another CA, is refused;
- upstream scheme "tls" to a mosquitto TLS listener (from a plain and from
  a TLS listener); a plain broker behind scheme "tls" fails the handshake
  and the client gets CONNACK "server unavailable";
- a certificate change without restart: new connections get the new one,
  an established session keeps working;
- garbage and plain MQTT on the TLS listener are closed; the workers' pids
  do not change.

Certificates are made with openssl(1) at the start of the module."""

import os
import secrets
import socket
import ssl
import subprocess
import time

from harness import T, Fail, _track, _untrack, check, eq, free_port, run_to_end, wait_until
from dp_harness import DataPlane, check_no_worker_change
from mqtt_harness import (Broker, PacketReader, connect_packet, mqtt_dp, parse_connack,
                          publish_packet, read_until_close, shared_brokers, subscribe_packet)
from certs import ca, client, module_certs, server

CERTS = (
    ca("ca", "/CN=airgw mqtt e2e CA"),
    ca("evil", "/CN=another CA"),
    server("local", "/CN=localhost/O=v1", "DNS:localhost,IP:127.0.0.1"),
    server("local2", "/CN=localhost/O=v2", "DNS:localhost,IP:127.0.0.1"),
    server("wild", "/CN=*.example.test", "DNS:*.example.test"),
    server("broker", "/CN=broker", "DNS:localhost,IP:127.0.0.1"),
    client("dev", "/CN=device-1/O=airgw e2e"),
    client("rogue", "/CN=rogue", by="evil"),
)

# which stream listener of the module's data plane (mqtt_dp puts TLS last)
PLAIN_L, TLS_L = 0, 1


def certs(ctx):
    return module_certs(ctx, "mqtt-tls-certs", *CERTS)


def cf(ctx, name):
    return os.path.join(certs(ctx), name)


def pem(ctx, name):
    with open(cf(ctx, name)) as f:
        return f.read()


class TlsBroker(Broker):
    """mosquitto with a TLS listener (the module's "broker" certificate)."""

    def __init__(self, name, ctx):
        super().__init__(name)
        self.ctx = ctx

    def conf(self):
        extra = "cafile %s\ncertfile %s\nkeyfile %s\n" % (
            cf(self.ctx, "ca.crt"), cf(self.ctx, "broker.crt"), cf(self.ctx, "broker.key"))
        # mosquitto started as root drops to user "mosquitto", who cannot
        # read the test's private directory: stay root
        if os.geteuid() == 0:
            extra += "user root\n"
        return super().conf(listener=extra)


class Env:
    def __init__(self, cp, dp, a, b, t):
        self.cp, self.dp, self.a, self.b, self.t = cp, dp, a, b, t

    def port(self, which):
        return self.dp.stream_ports[which]

    def put(self, path, body):
        return self.cp.must("PUT", path, body)


def env(ctx):
    e = getattr(ctx.mod, "mqtls_env", None)
    if e is None:
        certs(ctx)
        cp = ctx.shared("cp-mqtls")
        d = mqtt_dp(ctx, cp, name="mqtls", streams=1, tls=True, log_level="debug",
                    args=["--https-listen", "off"], shared="dp-mqtls")
        a, b, t = shared_brokers(ctx, Broker("tls-a"), Broker("tls-b"), TlsBroker("tls-t", ctx))
        ctx.mod.shared["cp-mqtls"] = ctx.mod.shared.pop("cp-mqtls")
        e = ctx.mod.mqtls_env = Env(cp, d, a, b, t)
        e.certs = certs(ctx)
        setup_routes(ctx, e)
    else:
        ctx.shared("cp-mqtls")
    ctx.use_shared(e.dp, e.a, e.b, e.t)
    return e


def setup_routes(ctx, e):
    P, Q = e.port(TLS_L), e.port(PLAIN_L)
    mq = {"mqtt-proxy": {}}

    def up(br, **kw):
        u = {"type": "roundrobin", "nodes": {br.addr: 1}}
        u.update(kw)
        return u
    e.put("ssls/mq-local", {"cert": pem(ctx, "local.crt"), "key": pem(ctx, "local.key"),
                            "snis": ["localhost", "noroute.test"]})
    e.put("ssls/mq-wild", {"cert": pem(ctx, "wild.crt"), "key": pem(ctx, "wild.key"),
                           "snis": ["*.example.test"]})
    e.put("ssls/mq-m", {"cert": pem(ctx, "wild.crt"), "key": pem(ctx, "wild.key"),
                        "snis": ["m.example.test"],
                        "client": {"ca": pem(ctx, "ca.crt"), "depth": 1}})
    # SNI routes are tried first, in id order: exact names before the wildcard.
    e.put("stream_routes/mqt-1-local", {"server_port": P, "sni": "localhost", "plugins": mq,
                                        "upstream": up(e.a)})
    e.put("stream_routes/mqt-2-a", {"server_port": P, "sni": "a.example.test", "plugins": mq,
                                    "upstream": up(e.a)})
    e.put("stream_routes/mqt-3-m", {"server_port": P, "sni": "m.example.test", "plugins": mq,
                                    "upstream": up(e.a)})
    e.put("stream_routes/mqt-4-v5", {
        "server_port": P, "sni": "v5.example.test", "upstream": up(e.a),
        "plugins": {"mqtt-proxy": {"protocol_name": "MQTT", "protocol_level": 5}}})
    e.put("stream_routes/mqt-5-tls2tls", {"server_port": P, "sni": "up.example.test",
                                          "plugins": mq, "upstream": up(e.t, scheme="tls")})
    e.put("stream_routes/mqt-6-badup", {"server_port": P, "sni": "badup.example.test",
                                        "plugins": mq, "upstream": up(e.b, scheme="tls")})
    e.put("stream_routes/mqt-9-wild", {"server_port": P, "sni": "*.example.test",
                                       "plugins": mq, "upstream": up(e.b)})
    # the plain listener in front of the TLS broker ("https" maps to "tls")
    e.put("stream_routes/mqt-plain-up", {"server_port": Q, "plugins": mq,
                                         "upstream": up(e.t, scheme="https")})
    wait_until(lambda: tls_probe(e, "b.example.test") == (3, 0), T(5))
    stable(lambda: tls_probe(e, "b.example.test") == (3, 0), "wildcard route")


def stable(pred, what, n=6):
    """pred holds n times in a row (every worker has the change) within 5 s."""
    end = time.monotonic() + T(5)
    ok = 0
    while ok < n:
        if pred():
            ok += 1
            continue
        ok = 0
        if time.monotonic() > end:
            raise Fail("%s not in effect within 5s" % what)
        time.sleep(0.05)


# ---------------------------------------------------------------------------
# clients


def tls_ctx(ctx_or_env_certs, cert=None, ca="ca.crt"):
    c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    c.check_hostname = False
    c.load_verify_locations(os.path.join(ctx_or_env_certs, ca))
    if cert:
        c.load_cert_chain(os.path.join(ctx_or_env_certs, cert + ".crt"),
                          os.path.join(ctx_or_env_certs, cert + ".key"))
    return c


class TlsMqtt:
    """A raw MQTT client over TLS to the TLS listener (any server name)."""

    def __init__(self, e, sni, cid=None, level=4, cert=None, connect=True, port=None):
        self.cid = cid or "t-" + secrets.token_hex(4)
        s = socket.create_connection(("127.0.0.1", port or e.port(TLS_L)), timeout=T(5))
        try:
            self.sock = tls_ctx(e.certs, cert).wrap_socket(s, server_hostname=sni)
        except Exception:
            s.close()
            raise
        self.subject = {k: v for rdn in self.sock.getpeercert()["subject"] for k, v in rdn}
        self.rd = PacketReader(self.sock)
        self.code = None
        if connect:
            self.sock.sendall(connect_packet(self.cid, level))
            first, body = self.rd.read(5)
            self.code = parse_connack(bytes([first, len(body)]) + body)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def tls_probe(e, sni, cid=None, level=4, cert=None):
    """CONNECT over TLS with server name sni: the CONNACK's (form, code),
    or the error text when the handshake or the connection failed."""
    try:
        c = TlsMqtt(e, sni, cid, level, cert)
    except (ssl.SSLError, OSError, EOFError) as ex:
        return "%s: %s" % (type(ex).__name__, ex)
    c.close()
    return c.code


def mosq_tls_args(e, host="localhost", port=None, cert=None):
    a = ["-h", host, "-p", str(port or e.port(TLS_L)), "--cafile", os.path.join(e.certs, "ca.crt")]
    if cert:
        a += ["--cert", os.path.join(e.certs, cert + ".crt"),
              "--key", os.path.join(e.certs, cert + ".key")]
    return a


def run(argv, timeout=10):
    rc, out, _, _ = run_to_end(argv, T(timeout), stderr=subprocess.STDOUT)
    return rc, out.decode("utf-8", "replace")


def pubsub(e, conn_args, what):
    """mosquitto_sub and mosquitto_pub with conn_args: the message arrives."""
    topic = "mqtls/" + secrets.token_hex(4)
    sub = subprocess.Popen(["mosquitto_sub", "-t", topic, "-C", "1", "-W", "8",
                            "-i", "s-" + secrets.token_hex(4)] + conn_args,
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT)
    _track(sub)
    try:
        msg = "hello-" + secrets.token_hex(4)
        deadline = time.monotonic() + T(6)
        while sub.poll() is None and time.monotonic() < deadline:
            rc, out = run(["mosquitto_pub", "-t", topic, "-m", msg,
                           "-i", "p-" + secrets.token_hex(4)] + conn_args)
            if rc != 0:
                raise Fail("%s: mosquitto_pub failed: rc %d: %s" % (what, rc, out.strip()))
            time.sleep(0.2)
        try:
            out, _ = sub.communicate(timeout=T(5))
        except subprocess.TimeoutExpired:
            sub.kill()
            out, _ = sub.communicate()
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()
        _untrack(sub)
    text = out.decode("utf-8", "replace")
    check(msg in text, "%s: the subscriber got the message (rc %s): %r" % (
        what, sub.returncode, text[:300]))


def E(ctx):
    e = env(ctx)
    e.certs = certs(ctx)
    return e


# ---------------------------------------------------------------------------


def test_mosquitto_over_tls(ctx):
    e = E(ctx)
    before = e.dp.workers()
    mark = e.a.mark()
    pubsub(e, mosq_tls_args(e), "mosquitto over TLS (SNI localhost)")
    check(len(e.a.connected(mark)) >= 2, "the clients reached broker a")
    # MQTT 5.0 too
    pubsub(e, mosq_tls_args(e) + ["-V", "mqttv5"], "mosquitto 5.0 over TLS")
    # without the CA the client refuses the certificate
    rc, out = run(["mosquitto_pub", "-t", "x", "-m", "y", "-h", "localhost",
                   "-p", str(e.port(TLS_L)), "--cafile", os.path.join(e.certs, "evil.crt")])
    check(rc != 0, "a client not trusting the CA fails: %s" % out)
    check_no_worker_change(e.dp, before, "TLS sessions")


def test_sni_routes(ctx):
    e = E(ctx)
    cid = "sni-a-" + secrets.token_hex(3)
    mark_a, mark_b = e.a.mark(), e.b.mark()
    eq(tls_probe(e, "a.example.test", cid), (3, 0), "exact sni route")
    check(e.a.has_client(cid, mark_a), "a.example.test -> broker a")
    cid = "sni-w-" + secrets.token_hex(3)
    eq(tls_probe(e, "whatever.example.test", cid), (3, 0), "wildcard sni route")
    check(e.b.has_client(cid, mark_b), "*.example.test -> broker b")
    # the certificate served is the wildcard's
    c = TlsMqtt(e, "a.example.test", connect=False)
    eq(c.subject.get("commonName"), "*.example.test", "certificate by SNI")
    c.close()
    # no certificate for the name: the handshake fails
    r = tls_probe(e, "nope.other.test")
    check(isinstance(r, str) and "UNRECOGNIZED_NAME" in r.upper(), "unknown name: %s" % r)
    r = tls_probe(e, None)
    check(isinstance(r, str), "no server name: %s" % r)
    # a certificate but no stream route: closed after the handshake
    r = tls_probe(e, "noroute.test")
    check(isinstance(r, str), "no route for the name: closed (%s)" % r)
    check(wait_until(lambda: "stream TLS handshake failed" in e.dp.stderr(), T(3)),
          "handshake failures are logged")


def test_refusal_connack_is_encrypted(ctx):
    e = E(ctx)
    c = TlsMqtt(e, "v5.example.test", level=4)
    eq(c.code, (3, 1), "3.1.1 on a 5.0-only route: CONNACK 0x01 over TLS")
    # then close_notify: a clean EOF on the TLS layer
    try:
        c.sock.settimeout(T(3))
        data = c.sock.recv(100)
        eq(data, b"", "EOF after the CONNACK")
    finally:
        c.close()


def test_mtls(ctx):
    e = E(ctx)
    before = e.dp.workers()
    cid = "mtls-" + secrets.token_hex(3)
    eq(tls_probe(e, "m.example.test", cid, cert="dev"), (3, 0), "with a client certificate")
    check(wait_until(lambda: "O=airgw e2e,CN=device-1" in e.dp.stderr(), T(3)),
          "the client certificate's subject is logged (debug)")
    r = tls_probe(e, "m.example.test")
    check(isinstance(r, str), "without a client certificate: refused (%s)" % r)
    r = tls_probe(e, "m.example.test", cert="rogue")
    check(isinstance(r, str), "a certificate by another CA: refused (%s)" % r)
    check_no_worker_change(e.dp, before, "mTLS refusals")


def test_mosquitto_mtls(ctx):
    """mosquitto_pub with --cert/--key to an mTLS ssl for "localhost" (on a
    second ssl id sorting first so it takes the name), then without."""
    e = E(ctx)
    e.put("ssls/mq-0-local-m", {"cert": pem(ctx, "local.crt"), "key": pem(ctx, "local.key"),
                                "snis": ["localhost"],
                                "client": {"ca": pem(ctx, "ca.crt"), "depth": 1}})
    try:
        args = mosq_tls_args(e, cert="dev")
        stable(lambda: run(["mosquitto_pub", "-t", "x", "-m", "y"] + mosq_tls_args(e))[0] != 0,
               "mTLS on localhost")
        pubsub(e, args, "mosquitto with a client certificate")
        rc, out = run(["mosquitto_pub", "-t", "x", "-m", "y"] + mosq_tls_args(e, cert="rogue"))
        check(rc != 0, "mosquitto with another CA's certificate is refused: %s" % out)
    finally:
        e.cp.must("DELETE", "ssls/mq-0-local-m", status=200)
    stable(lambda: run(["mosquitto_pub", "-t", "x", "-m", "y"] + mosq_tls_args(e))[0] == 0,
           "mTLS removed")


def test_upstream_tls(ctx):
    e = E(ctx)
    # plain listener -> TLS broker (scheme https read as tls)
    mark = e.t.mark()
    pubsub(e, ["-h", "127.0.0.1", "-p", str(e.port(PLAIN_L))], "plain client, TLS broker")
    check(len(e.t.connected(mark)) >= 2, "the clients reached the TLS broker")
    # TLS listener -> TLS broker
    cid = "t2t-" + secrets.token_hex(3)
    c = TlsMqtt(e, "up.example.test", cid)
    try:
        eq(c.code, (3, 0), "TLS to TLS")
        check(e.t.has_client(cid, mark), "reached the TLS broker")
        c.sock.sendall(subscribe_packet("t2t/x"))
        first, _ = c.rd.read(5)
        eq(first >> 4, 9, "SUBACK")
        c.sock.sendall(publish_packet("t2t/x", b"payload-" + b"z" * 100000))
        first, body = c.rd.read(5)
        eq(first >> 4, 3, "PUBLISH back")
        check(body.endswith(b"z" * 1000), "100 KB payload both ways over two TLS legs")
    finally:
        c.close()
    # scheme tls to a plain broker: the handshake fails -> server unavailable
    eq(tls_probe(e, "badup.example.test"), (3, 3), "plain broker behind scheme tls")
    check(wait_until(lambda: "TLS handshake failed" in e.dp.stderr(), T(3)),
          "upstream handshake failure logged")


def test_certificate_change_without_restart(ctx):
    e = E(ctx)
    c = TlsMqtt(e, "localhost", "swap-" + secrets.token_hex(3))
    try:
        eq(c.code, (3, 0), "session before the change")
        eq(c.subject.get("organizationName"), "v1", "first certificate")
        e.put("ssls/mq-local", {"cert": pem(ctx, "local2.crt"), "key": pem(ctx, "local2.key"),
                                "snis": ["localhost", "noroute.test"]})
        stable(lambda: TlsMqtt(e, "localhost", connect=False).subject.get(
            "organizationName") == "v2", "the new certificate")
        pubsub(e, mosq_tls_args(e), "mosquitto after the change")
        # the old session still works
        c.sock.sendall(subscribe_packet("swap/x"))
        first, _ = c.rd.read(5)
        eq(first >> 4, 9, "SUBACK on the old session")
        c.sock.sendall(b"\xc0\x00")  # PINGREQ
        first, _ = c.rd.read(5)
        eq(first, 0xd0, "PINGRESP on the old session")
    finally:
        c.close()


def test_garbage_and_plain_mqtt_closed(ctx):
    e = E(ctx)
    before = e.dp.workers()
    for data in (connect_packet("plain", 4), b"GET / HTTP/1.1\r\n\r\n", os.urandom(3000),
                 b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00"):
        s = socket.create_connection(("127.0.0.1", e.port(TLS_L)), timeout=T(5))
        try:
            s.sendall(data)
            got, how = read_until_close(s, 5)
        finally:
            s.close()
        check(how in ("eof", "reset"), "%r...: closed (%s)" % (data[:10], how))
        check(not got.startswith(b"\x20"), "no plaintext CONNACK")
    # a TLS client that never sends its CONNECT is closed (CONNECT timeout
    # covers the handshake): not waited for here; a half handshake closed
    # at its EOF
    s = socket.create_connection(("127.0.0.1", e.port(TLS_L)), timeout=T(5))
    s.sendall(b"\x16\x03\x01")
    s.shutdown(socket.SHUT_WR)
    got, how = read_until_close(s, 5)
    s.close()
    check(how in ("eof", "reset"), "half a record then EOF: closed (%s)" % how)
    eq(tls_probe(e, "a.example.test"), (3, 0), "still serving")
    check_no_worker_change(e.dp, before, "garbage on the TLS listener")


def test_tls_listener_from_the_file(ctx):
    """dataplane.stream_proxy.tcp: [{addr, tls: true}] in the YAML file."""
    e = E(ctx)
    port = free_port()
    d = DataPlane(e.cp, name="mqtls-file", workers=1,
                  args=["--https-listen", "off"],
                  config={"dataplane": {"stream_proxy": {
                      "tcp": [{"addr": "127.0.0.1:%d" % port, "tls": True}]}}})
    ctx.daemons.append(d)
    d.start()
    check(wait_until(lambda: "stream (tls) listening on 127.0.0.1:%d" % port in d.stderr(), T(10)),
          "TLS stream listener from the file: %s" % d.stderr()[-500:])

    def served():
        try:
            c = TlsMqtt(e, "q.example.test", connect=False, port=port)
        except (ssl.SSLError, OSError):
            return False
        c.close()
        return c.subject.get("commonName") == "*.example.test"
    check(wait_until(served, T(5)), "the file's TLS listener serves the ssls")
