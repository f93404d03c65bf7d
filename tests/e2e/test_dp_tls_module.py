"""The data plane's TLS layer is a module (airgw-tls.so) loaded on first TLS
use: a worker that has not spoken TLS has no BoringSSL mapped, the one that
served an HTTPS connection has; without the module, HTTPS is refused with a
clear log line and plain HTTP still works; so does a file that is not this
build's module. What is mapped is read from
/proc/PID/maps of the real processes."""

import os
import socket
import ssl

import test_dp_tls as base
from harness import Fail, T, check, eq, free_port, uid, wait_until
from dp_harness import new_dp, wait_serving


def maps_boringssl(pid):
    """Whether the process maps BoringSSL's libssl or the TLS module."""
    with open("/proc/%d/maps" % pid) as f:
        text = f.read()
    return "android/libssl.so" in text or "airgw-tls.so" in text


def https_get(env, ctx, port, path):
    c = ssl.create_default_context(cafile=os.path.join(base.certs(ctx), "ca.crt"))
    c.check_hostname = False
    s = socket.create_connection(("127.0.0.1", port), timeout=T(5))
    ss = c.wrap_socket(s, server_hostname="a.example.com")
    try:
        ss.sendall(("GET %s HTTP/1.1\r\nHost: a.example.com\r\nConnection: close\r\n\r\n"
                    % path).encode())
        data = b""
        while True:
            chunk = ss.recv(4096)
            if not chunk:
                break
            data += chunk
        return data
    finally:
        ss.close()


def test_module_loaded_on_first_tls_use(ctx):
    env = base.env_of(ctx)
    base.put_ssl(env, ctx, "mod-a", "a", ["a.example.com"])
    t = uid("mod")
    base.route(env, t)
    port = free_port()
    d = new_dp(ctx, env.cp, name="lazy", workers=2, args=["--https-listen", "127.0.0.1:%d" % port])
    wait_serving(d, "/%s/plain" % t)
    for _ in range(10):
        eq(d.get("/%s/plain" % t).status, 200, "plain HTTP")
    pids = list(d.workers().values())
    eq(len(pids), 2, "two workers")
    for p in [d.proc.pid] + pids:
        check(not maps_boringssl(p), "pid %d maps no BoringSSL before any TLS" % p)
    data = https_get(env, ctx, port, "/%s/tls" % t)
    check(data.startswith(b"HTTP/1.1 200"), "GET over HTTPS: %r" % data[:80])
    loaded = [p for p in pids if maps_boringssl(p)]
    eq(len(loaded), 1, "exactly the worker that served the HTTPS connection loaded TLS")
    check(not maps_boringssl(d.proc.pid), "the master (no config stream TLS) did not")
    d.stop()


def test_missing_module_refuses_tls_only(ctx):
    env = base.env_of(ctx)
    base.put_ssl(env, ctx, "mod-b", "a", ["a.example.com"])
    t = uid("nomod")
    base.route(env, t)
    port = free_port()
    missing = os.path.join(ctx.tmpdir(), "no-such-airgw-tls.so")
    d = new_dp(ctx, env.cp, name="nomod", workers=1,
               args=["--https-listen", "127.0.0.1:%d" % port],
               env={"AIRGW_TLS_MODULE": missing})
    wait_serving(d, "/%s/plain" % t)
    try:
        data = https_get(env, ctx, port, "/%s/tls" % t)
        raise Fail("HTTPS served without the TLS module: %r" % data[:80])
    except (ssl.SSLError, OSError):
        pass
    if not wait_until(lambda: "TLS is not available" in d.stderr(), T(5)):
        raise Fail("no log line about the missing module: %s" % d.stderr()[-800:])
    check("AIRGW_TLS_MODULE" in d.stderr(), "the log line says how to point at the module")
    eq(d.get("/%s/plain" % t).status, 200, "plain HTTP still served")
    d.stop()


def test_wrong_module_refused(ctx):
    """A shared object that is not this build's module (here BoringSSL's own
    libssl) is refused by its interface string, not called into."""
    env = base.env_of(ctx)
    base.put_ssl(env, ctx, "mod-c", "a", ["a.example.com"])
    t = uid("wrongmod")
    base.route(env, t)
    port = free_port()
    d = new_dp(ctx, env.cp, name="wrongmod", workers=1,
               args=["--https-listen", "127.0.0.1:%d" % port],
               env={"AIRGW_TLS_MODULE": "/usr/lib/x86_64-linux-gnu/android/libssl.so.0"})
    wait_serving(d, "/%s/plain" % t)
    try:
        data = https_get(env, ctx, port, "/%s/tls" % t)
        raise Fail("HTTPS served with a foreign module: %r" % data[:80])
    except (ssl.SSLError, OSError):
        pass
    if not wait_until(lambda: "is \"unversioned\"" in d.stderr(), T(5)):
        raise Fail("no log line refusing the module: %s" % d.stderr()[-800:])
    eq(d.get("/%s/plain" % t).status, 200, "plain HTTP still served")
    d.stop()
