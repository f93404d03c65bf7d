"""Data plane TLS: the HTTPS listener (--https-listen) with certificates
PUT through the Admin API (ssls), SNI selection, refusals, mTLS, live
certificate changes, and upstreams with scheme https. One control plane,
one data plane with two workers; certificates are made with openssl(1) at
the start of the module; the https upstream is a Python ssl server in the
test process (it records the server names it was asked for)."""

import http.client
import http.server
import json
import os
import socket
import ssl
import threading

from harness import Fail, T, check, curl, eq, free_port, uid, wait_until
from dp_harness import curl_many, dp_env, new_dp, wait_serving
from certs import ca, client, module_certs, server

CERTS = (
    ca("ca", "/CN=airgw e2e CA"),
    server("a", "/CN=a.example.com/O=v1", "DNS:a.example.com"),
    server("a2", "/CN=a.example.com/O=v2", "DNS:a.example.com"),
    server("wild", "/CN=*.example.com", "DNS:*.example.com"),
    server("m", "/CN=m.example.com", "DNS:m.example.com"),
    client("dev", "/CN=device-1/O=airgw e2e"),
)


def certs(ctx):
    """The module's certificate directory (made once)."""
    return module_certs(ctx, "tls-certs", *CERTS)


def pem(ctx, name):
    with open(os.path.join(certs(ctx), name)) as f:
        return f.read()


def env_of(ctx):
    port = ctx.mod.__dict__.setdefault("https_port", free_port())
    env = dp_env(ctx, "tls", dps=1, workers=2, upstreams=("a",),
                 dp_kw={"args": ["--https-listen", "127.0.0.1:%d" % port]})
    env.https_port = port
    return env


def put_ssl(env, ctx, sid, name, snis, **extra):
    body = {"cert": pem(ctx, name + ".crt"), "key": pem(ctx, name + ".key"), "snis": snis}
    body.update(extra)
    env.put("ssls/" + sid, body)


def tls_connect(env, ctx, sni, cert=None, alpn=None):
    """A TLS connection to the HTTPS listener (the server certificate is
    verified against the test CA, not its name). Returns (socket, subject
    dict of the server certificate)."""
    c = ssl.create_default_context(cafile=os.path.join(certs(ctx), "ca.crt"))
    c.check_hostname = False
    if cert:
        c.load_cert_chain(os.path.join(certs(ctx), cert + ".crt"),
                          os.path.join(certs(ctx), cert + ".key"))
    if alpn:
        c.set_alpn_protocols(alpn)
    s = socket.create_connection(("127.0.0.1", env.https_port), timeout=T(5))
    try:
        ss = c.wrap_socket(s, server_hostname=sni)
    except Exception:
        s.close()
        raise
    subj = {k: v for rdn in ss.getpeercert()["subject"] for k, v in rdn}
    return ss, subj


def refused(env, ctx, sni, **kw):
    """The handshake (or the first read, for TLS 1.3 client certificates)
    fails; returns the error text."""
    try:
        ss, _ = tls_connect(env, ctx, sni, **kw)
    except (ssl.SSLError, OSError) as e:
        return str(e)
    try:
        ss.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = ss.recv(100)
    except (ssl.SSLError, OSError) as e:
        return str(e)
    finally:
        ss.close()
    raise Fail("TLS with server name %r was not refused (got %r)" % (sni, data[:60]))


def get(env, ctx, host, path, cert=None, extra=None):
    """curl over HTTPS to host (resolved to the listener), CA-verified."""
    x = ["--resolve", "%s:%d:127.0.0.1" % (host, env.https_port),
         "--cacert", os.path.join(certs(ctx), "ca.crt")]
    if cert:
        x += ["--cert", os.path.join(certs(ctx), cert + ".crt"),
              "--key", os.path.join(certs(ctx), cert + ".key")]
    return curl("GET", "https://%s:%d%s" % (host, env.https_port, path), extra=x + (extra or []),
                ctype=None)


def route(env, t, upstream=None, **extra):
    body = {"uri": "/%s/*" % t, "upstream": upstream or env.up("a")}
    body.update(extra)
    env.route(t, body)
    wait_serving(env.dps, "/%s/ok" % t, pred=lambda r: r.status in (200, 502))


def wait_subject(env, ctx, sni, key, value):
    def ok():
        try:
            ss, subj = tls_connect(env, ctx, sni)
        except (ssl.SSLError, OSError):
            return False
        ss.close()
        return subj.get(key) == value
    if not wait_until(ok, T(5)):
        raise Fail("%s: the certificate with %s=%s was not served within 5s" % (sni, key, value))


# ---------------------------------------------------------------------------


def test_https_listener_sni_and_forwarded_proto(ctx):
    env = env_of(ctx)
    put_ssl(env, ctx, "tls-a", "a", ["a.example.com"])
    put_ssl(env, ctx, "tls-wild", "wild", ["*.example.com"])
    t = uid("https")
    route(env, t)
    wait_subject(env, ctx, "b.example.com", "commonName", "*.example.com")
    wait_subject(env, ctx, "a.example.com", "commonName", "a.example.com")
    r = get(env, ctx, "a.example.com", "/%s/x?q=1" % t)
    eq(r.status, 200, "GET over HTTPS: %s" % r.text[:200])
    h = r.j["headers"]
    eq(h.get("x-forwarded-proto"), "https", "X-Forwarded-Proto seen by the upstream")
    eq(h.get("host"), "a.example.com:%d" % env.https_port, "Host seen by the upstream")
    eq(r.j["target"], "/%s/x?q=1" % t, "target")
    # the wildcard, by curl with name verification
    r = get(env, ctx, "b.example.com", "/%s/y" % t)
    eq(r.status, 200, "GET through the wildcard certificate: %s" % r.text[:200])
    # ALPN: http/1.1 chosen over h2
    ss, _ = tls_connect(env, ctx, "a.example.com", alpn=["h2", "http/1.1"])
    eq(ss.selected_alpn_protocol(), "http/1.1", "ALPN")
    ss.close()
    # the plain listener still says http
    r = env.dps[0].get("/%s/z" % t)
    eq(r.j["headers"].get("x-forwarded-proto"), "http", "X-Forwarded-Proto on the http listener")


def test_unknown_or_missing_sni_refused(ctx):
    env = env_of(ctx)
    put_ssl(env, ctx, "tls-a", "a", ["a.example.com"])
    wait_subject(env, ctx, "a.example.com", "commonName", "a.example.com")
    err = refused(env, ctx, "nope.example.org")
    check("UNRECOGNIZED NAME" in norm(err), "unknown name: %s" % err)
    err = refused(env, ctx, None)
    check("UNRECOGNIZED NAME" in norm(err), "no server name: %s" % err)
    err = refused(env, ctx, "a.example.com", alpn=["h2"])
    check("NO APPLICATION PROTOCOL" in norm(err), "h2 only: %s" % err)
    # the data plane logs why (rate limited)
    check("TLS handshake failed" in env.dps[0].stderr(), "handshake failures are logged")


def test_certificate_change_without_restart(ctx):
    env = env_of(ctx)
    t = uid("swap")
    route(env, t)
    put_ssl(env, ctx, "tls-swap", "a", ["swap.example.net"])
    wait_subject(env, ctx, "swap.example.net", "organizationName", "v1")
    # a keep-alive connection made with the old certificate
    ss, subj = tls_connect(env, ctx, "swap.example.net")
    eq(subj.get("organizationName"), "v1", "first certificate")
    conn = http.client.HTTPConnection("swap.example.net", env.https_port, timeout=T(5))
    conn.sock = ss
    conn.request("GET", "/%s/1" % t)
    resp = conn.getresponse()
    resp.read()
    eq(resp.status, 200, "first request")

    put_ssl(env, ctx, "tls-swap", "a2", ["swap.example.net"])
    wait_subject(env, ctx, "swap.example.net", "organizationName", "v2")
    # every new connection (both workers) gets the new one
    for _ in range(6):
        s2, subj2 = tls_connect(env, ctx, "swap.example.net")
        s2.close()
        eq(subj2.get("organizationName"), "v2", "certificate after the change")
    # the old connection goes on with its certificate
    conn.request("GET", "/%s/2" % t)
    resp = conn.getresponse()
    body = json.loads(resp.read())
    eq(resp.status, 200, "request on the old connection after the change")
    eq(body["path"], "/%s/2" % t, "path served on the old connection")
    conn.close()

    # deleted: the name is refused
    env.delete("ssls/tls-swap")
    wait_until(lambda: "UNRECOGNIZED" in refused_or_empty(env, ctx, "swap.example.net"), T(5))
    check("UNRECOGNIZED" in refused_or_empty(env, ctx, "swap.example.net"),
          "a deleted ssl's name is refused")


def norm(err):
    return err.upper().replace("_", " ")


def refused_or_empty(env, ctx, sni):
    try:
        ss, _ = tls_connect(env, ctx, sni)
        ss.close()
        return ""
    except (ssl.SSLError, OSError) as e:
        return norm(str(e))


def test_mtls(ctx):
    env = env_of(ctx)
    t = uid("mtls")
    route(env, t)
    put_ssl(env, ctx, "tls-m", "m", ["m.example.com"],
            client={"ca": pem(ctx, "ca.crt"), "depth": 1})
    wait_until(lambda: get(env, ctx, "m.example.com", "/%s/x" % t, cert="dev").status == 200,
               T(5))
    r = get(env, ctx, "m.example.com", "/%s/x" % t, cert="dev")
    eq(r.status, 200, "with a client certificate: %s" % r.text[:200])
    r = get(env, ctx, "m.example.com", "/%s/x" % t)
    eq(r.status, 0, "without a client certificate the connection fails")
    err = refused(env, ctx, "m.example.com")
    check("CERTIFICATE" in norm(err), "no client certificate: %s" % err)
    # routes can match on the client's subject ($ssl_client_s_dn)
    t2 = uid("dn")
    env.route(t2, {"uri": "/%s/*" % t2, "upstream": env.up("a"),
                   "vars": [["ssl_client_s_dn", "==", "O=airgw e2e,CN=device-1"]]})
    wait_until(lambda: get(env, ctx, "m.example.com", "/%s/x" % t2, cert="dev").status == 200,
               T(5))
    eq(get(env, ctx, "m.example.com", "/%s/x" % t2, cert="dev").status, 200,
       "route on ssl_client_s_dn")


class _TlsUpstream:
    """An HTTPS upstream in this process: answers JSON {sni, conn, path,
    host, xfp, resumed}; counts connections; a path ending in /close
    closes the connection after the answer."""

    def __init__(self, ctx):
        self.snis = []
        self.conns = 0
        up = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                up.conns += 1
                self.conn_no = up.conns

            def do_GET(self):
                body = json.dumps({"sni": getattr(self.connection, "sni", None),
                                   "conn": self.conn_no, "path": self.path,
                                   "host": self.headers.get("Host"),
                                   "xfp": self.headers.get("X-Forwarded-Proto"),
                                   "resumed": self.connection.session_reused}).encode()
                close = self.path.endswith("/close")
                self.send_response(200)
                if close:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        c.load_cert_chain(os.path.join(certs(ctx), "a.crt"), os.path.join(certs(ctx), "a.key"))

        def on_sni(sock, name, _c):
            sock.sni = name
            up.snis.append(name)
        c.sni_callback = on_sni
        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.srv.daemon_threads = True
        self.srv.socket = c.wrap_socket(self.srv.socket, server_side=True)
        self.port = self.srv.server_address[1]
        self.t = threading.Thread(target=self.srv.serve_forever, daemon=True)
        self.t.start()

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


def test_https_upstream(ctx):
    env = env_of(ctx)
    up = _TlsUpstream(ctx)
    try:
        t = uid("tlsup")
        node = {"127.0.0.1:%d" % up.port: 1}
        env.route(t, {"uri": "/%s/*" % t, "upstream": {
            "type": "roundrobin", "scheme": "https", "nodes": node, "pass_host": "rewrite",
            "upstream_host": "a.example.com", "keepalive_pool": {"size": 4}}})
        wait_serving(env.dps, "/%s/ok" % t)
        r = env.dps[0].get("/%s/x" % t)
        eq(r.status, 200, "through an https upstream: %s" % r.text[:200])
        eq(r.j["sni"], "a.example.com", "SNI sent upstream (upstream_host)")
        eq(r.j["host"], "a.example.com", "Host sent upstream")
        eq(r.j["xfp"], "http", "X-Forwarded-Proto from the http listener")
        # keep-alive: one client connection, several requests, one upstream connection
        before = up.conns
        res = curl_many([env.dps[0].url("/%s/k%d" % (t, i)) for i in range(5)])
        eq([s for s, _ in res], [200] * 5, "statuses")
        conns = {json.loads(b)["conn"] for _, b in res}
        check(len(conns) == 1, "one pooled upstream connection for 5 requests: %s" % conns)
        check(up.conns - before <= 1, "at most one new upstream connection")
        # a new connection resumes the pool's session
        res = curl_many([env.dps[0].url("/%s/close" % t), env.dps[0].url("/%s/again" % t)])
        eq([s for s, _ in res], [200, 200], "statuses")
        a, b = (json.loads(x) for _, x in res)
        check(a["conn"] != b["conn"], "a new upstream connection after Connection: close")
        check(b["resumed"], "the new upstream connection resumed the TLS session")
        # HTTPS in front of an https upstream
        put_ssl(env, ctx, "tls-a", "a", ["a.example.com"])
        wait_subject(env, ctx, "a.example.com", "commonName", "a.example.com")
        r = get(env, ctx, "a.example.com", "/%s/y" % t)
        eq(r.status, 200, "https to https: %s" % r.text[:200])
        eq(r.j["xfp"], "https", "X-Forwarded-Proto from the https listener")

        # pass_host "pass": the client's Host (without its port) is the SNI
        t2 = uid("tlspass")
        env.route(t2, {"uri": "/%s/*" % t2, "upstream": {
            "type": "roundrobin", "scheme": "https", "nodes": node}})
        wait_serving(env.dps, "/%s/ok" % t2, headers=["Host: Pass.Example.com:8080"])
        r = env.dps[0].get("/%s/x" % t2, headers=["Host: Pass.Example.com:8080"])
        eq(r.j["sni"], "pass.example.com", "SNI with pass_host pass")

        # tls.verify against the system CAs: the test CA is unknown -> 502
        t3 = uid("tlsverify")
        env.route(t3, {"uri": "/%s/*" % t3, "upstream": {
            "type": "roundrobin", "scheme": "https", "nodes": node, "pass_host": "rewrite",
            "upstream_host": "a.example.com", "tls": {"verify": True}}})
        wait_serving(env.dps, "/%s/ok" % t3, pred=lambda r: r.status == 502)
        check("TLS handshake failed" in env.dps[0].stderr(), "verification failure logged")
    finally:
        up.close()


def test_https_listen_settings(ctx):
    """--https-listen off: no HTTPS; dataplane.https_listen in the file: its
    addresses (the default is 0.0.0.0:9443, as APISIX)."""
    env = env_of(ctx)
    d = new_dp(ctx, env.cp, name="nohttps", workers=1, args=["--https-listen", "off"])
    check("https listening" not in d.stderr(), "--https-listen off: no https listener")
    port = free_port()
    d2 = new_dp(ctx, env.cp, name="filehttps", workers=1,
                config={"dataplane": {"https_listen": ["127.0.0.1:%d" % port]}})
    check("https listening on 127.0.0.1:%d" % port in d2.stderr(),
          "dataplane.https_listen from the file: %s" % d2.stderr()[-500:])
    s = socket.create_connection(("127.0.0.1", port), timeout=T(5))
    c = ssl.create_default_context()
    try:
        c.wrap_socket(s, server_hostname="nothing.example.org")
        raise Fail("a handshake without any ssl configured for the name succeeded")
    except ssl.SSLError as e:
        check("UNRECOGNIZED NAME" in norm(str(e)), "TLS served on the file's address: %s" % e)
    finally:
        s.close()
    d.stop()
    d2.stop()
