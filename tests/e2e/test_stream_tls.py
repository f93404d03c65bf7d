"""The config stream over TLS with client certificates: a control plane with
deployment.config_stream.tls {cert, key, client_ca}, data planes with
dataplane.control_plane_tls {ca, cert, key}. Certificates are made with
openssl(1) at the start of the module: one CA for the control plane's
certificate (IP SAN 127.0.0.1) and the data planes' client certificates,
and a second, unrelated CA for the impostors."""

import os

from harness import T, check, eq, new_tmpdir, uid, wait_until
from dp_harness import new_dp, new_upstream, wait_serving
from certs import ca, client, module_certs, server

CERTS = (
    ca("ca", "/CN=airgw stream CA"),
    ca("other", "/CN=someone else"),
    server("cp", "/CN=controlplane", "IP:127.0.0.1,DNS:cp.internal"),
    client("dp", "/CN=dataplane-1/O=airgw e2e"),
    client("rogue", "/CN=rogue", by="other"),
    server("fakecp", "/CN=controlplane", "IP:127.0.0.1", by="other"),
    server("elsewhere", "/CN=controlplane", "IP:10.9.9.9,DNS:cp.internal"),
)


def certs(ctx):
    return module_certs(ctx, "stream-tls", *CERTS)


def p(ctx, name):
    return os.path.join(certs(ctx), name)


def tls_cp(ctx, server="cp", client_ca="ca.crt"):
    tls = {"cert": p(ctx, server + ".crt"), "key": p(ctx, server + ".key")}
    if client_ca:
        tls["client_ca"] = p(ctx, client_ca)
    return ctx.daemon(config={"deployment": {"config_stream": {"tls": tls}}})


def dp_conf(ctx, client="dp", ca="ca.crt", server_name=None):
    t = {"ca": p(ctx, ca)}
    if client:
        t["cert"] = p(ctx, client + ".crt")
        t["key"] = p(ctx, client + ".key")
    if server_name:
        t["server_name"] = server_name
    return {"dataplane": {"control_plane_tls": t}}


def refused_dp(ctx, cp, unsynced, log=r"config stream: .*TLS", what="a TLS failure", **kw):
    """A data plane (new_dp keywords in kw) that must not link: waits for
    its log line log, then checks it never synced (else Fail: unsynced)."""
    dp = new_dp(ctx, cp, start=False, **kw)
    dp.start(wait=False)
    dp.wait_log(log, timeout=10, what=what)
    check("synced with" not in dp.stderr(), unsynced)
    return dp


def put_route(cp, up, path):
    cp.must("PUT", "/apisix/admin/routes/" + uid(), {
        "uri": path, "upstream": {"type": "roundrobin", "nodes": {up.addr: 1}}})


def test_tls_stream_with_client_certificate(ctx):
    cp = tls_cp(ctx)
    up = new_upstream(ctx)
    put_route(cp, up, "/before")
    dp = new_dp(ctx, cp, config=dp_conf(ctx))
    wait_serving(dp, "/before")
    # A change after the sync travels the encrypted stream too.
    put_route(cp, up, "/after")
    wait_serving(dp, "/after")
    check(wait_until(lambda: 'client certificate "CN=dataplane-1,O=airgw e2e"' in cp.stderr(),
                     T(5)),
          "control plane did not log the data plane's certificate subject: %s" %
          cp.stderr()[-1500:])
    eq([d["node_id"] for d in cp.dataplanes()["list"]], [dp.node_id], "connected data planes")


def test_name_checked_when_configured(ctx):
    cp = tls_cp(ctx)
    up = new_upstream(ctx)
    put_route(cp, up, "/named")
    ok = new_dp(ctx, cp, config=dp_conf(ctx, server_name="cp.internal"))
    wait_serving(ok, "/named")
    refused_dp(ctx, cp, "a data plane synced with a control plane whose certificate does not "
               "name it", config=dp_conf(ctx, server_name="other.internal"))


def test_address_checked_without_a_name(ctx):
    """No server_name: the certificate must carry the address dialled (an
    IP SAN); one from the right CA for another address is refused."""
    cp = tls_cp(ctx, server="elsewhere")
    refused_dp(ctx, cp, "a data plane synced with a control plane whose certificate is for "
               "another address", config=dp_conf(ctx))


def test_data_plane_without_certificate_refused(ctx):
    cp = tls_cp(ctx)
    for name, client in (("nocert", None), ("rogue", "rogue")):
        refused_dp(ctx, cp, "%s synced without a valid certificate" % name, name=name,
                   config=dp_conf(ctx, client=client))
        check(wait_until(lambda: "certificate" in cp.stderr(), T(5)),
              "control plane did not log why it refused %s" % name)
    eq(cp.dataplanes()["list"], [], "connected data planes")


def test_impostor_control_plane_refused(ctx):
    cp = tls_cp(ctx, server="fakecp")
    refused_dp(ctx, cp, "the data plane trusted a control plane certificate from another CA",
               config=dp_conf(ctx))


def test_plain_data_plane_cannot_talk_to_tls_stream(ctx):
    cp = tls_cp(ctx)
    refused_dp(ctx, cp, "a plain data plane synced with a TLS stream",
               log=r"config stream: (lost|cannot reach) control plane", what="a failed link")


def test_bad_tls_settings_refused_at_start(ctx):
    rc, _, err = ctx.run([cp_bin_of(ctx), "--state-dir", new_tmpdir("s"), "-c",
                          write(ctx, "deployment:\n  config_stream:\n    tls:\n      cert: /nonexistent.crt\n      key: /nonexistent.key\n"),
                          "--admin-listen", "127.0.0.1:0", "--config-listen", "127.0.0.1:0"])
    eq(rc, 1, "exit code with a missing certificate")
    check("/nonexistent.crt" in err, "error names the file: %s" % err[-500:])
    rc, _, err = ctx.run([cp_bin_of(ctx), "-c", write(ctx, "deployment:\n  config_stream:\n    tls:\n      cert: a.crt\n")])
    eq(rc, 2, "exit code with cert but no key")
    check("needs both cert and key" in err, "message: %s" % err[-300:])


def cp_bin_of(ctx):
    from harness import Settings
    return Settings.cp_bin()


def write(ctx, text):
    d = new_tmpdir("cfg")
    path = os.path.join(d, "c.yaml")
    with open(path, "w") as f:
        f.write(text)
    return path
