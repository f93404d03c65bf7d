"""TLS session resumption across the workers of one data plane: the master
makes the session ticket keys and every worker seals and opens tickets with
them, so a client that comes back resumes whichever worker the kernel hands
its new connection to (SO_REUSEPORT spreads connections by their ports),
also after a reload has replaced every worker.

One control plane, one data plane with two workers and an HTTPS listener;
the client is Python's ssl with session=. Which worker served a connection
is read from the system, not guessed: the worker whose file table holds the
accepted socket of that connection (its inode in /proc/net/tcp)."""

import os
import socket
import ssl

import test_dp_tls as base
from harness import Fail, T, check, eq, uid


def socket_inode(local_port, remote_port):
    """Inode of the accepted socket 127.0.0.1:local_port <-
    127.0.0.1:remote_port, from /proc/net/tcp (None: not found)."""
    want_l = "0100007F:%04X" % local_port
    want_r = "0100007F:%04X" % remote_port
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            p = line.split()
            if p[1] == want_l and p[2] == want_r and p[9] != "0":  # not a TIME_WAIT leftover
                return p[9]
    return None


def owner_of(inode, pids):
    """The pid among pids holding socket inode open."""
    target = "socket:[%s]" % inode
    for pid in pids:
        d = "/proc/%d/fd" % pid
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for n in names:
            try:
                if os.readlink(os.path.join(d, n)) == target:
                    return pid
            except OSError:
                pass
    return None


def client_context(ctx, maxv):
    c = ssl.create_default_context(cafile=os.path.join(base.certs(ctx), "ca.crt"))
    c.check_hostname = False
    if maxv:
        c.maximum_version = maxv
    return c


def one_request(env, c, path, session):
    """A new TLS connection with client context c (resuming session when
    given), one GET on it (keep-alive, so the worker still holds the
    socket), then the serving worker's pid, whether the session was
    resumed, and the newest session."""
    s = socket.create_connection(("127.0.0.1", env.https_port), timeout=T(5))
    try:
        ss = c.wrap_socket(s, server_hostname="a.example.com", session=session)
    except Exception:
        s.close()
        raise
    try:
        ss.sendall(("GET %s HTTP/1.1\r\nHost: a.example.com\r\n\r\n" % path).encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = ss.recv(4096)
            if not chunk:
                break
            data += chunk
        check(data.startswith(b"HTTP/1.1 200"), "GET %s over TLS: %r" % (path, data[:80]))
        inode = socket_inode(env.https_port, ss.getsockname()[1])
        pid = owner_of(inode, env.dps[0].workers().values()) if inode else None
        if pid is None:
            raise Fail("no worker holds the accepted socket of port %d" % ss.getsockname()[1])
        return pid, ss.session_reused, ss.session
    finally:
        ss.close()


def resume_across_workers(env, ctx, path, maxv, what):
    workers = env.dps[0].workers()
    eq(len(workers), 2, "two workers running")
    c = client_context(ctx, maxv)
    pid0, reused, sess = one_request(env, c, path, None)
    check(not reused, "%s: the first connection is a full handshake" % what)
    check(sess is not None, "%s: the server gave a session" % what)
    served = {pid0: 1}
    results = []
    # At least 10 reconnections; more (up to 40) until both workers served
    # some (the kernel picks the worker from the client's port).
    while len(results) < 40 and (len(results) < 10 or len(served) < 2):
        pid, reused, new = one_request(env, c, path, sess)
        served[pid] = served.get(pid, 0) + 1
        results.append((pid, reused))
        sess = new or sess
    not_resumed = [pid for pid, r in results if not r]
    eq(not_resumed, [], "%s: every reconnection resumed (%d connections, per worker %s)" % (
        what, len(results), served))
    eq(len(served), 2, "%s: both workers served connections: %s" % (what, served))
    return c, sess


def test_resumption_across_workers(ctx):
    env = base.env_of(ctx)
    base.put_ssl(env, ctx, "res-a", "a", ["a.example.com"])
    t = uid("resume")
    base.route(env, t)
    base.wait_subject(env, ctx, "a.example.com", "commonName", "a.example.com")
    c13, s13 = resume_across_workers(env, ctx, "/%s/x" % t, None, "TLS 1.3")
    c12, s12 = resume_across_workers(env, ctx, "/%s/y" % t, ssl.TLSVersion.TLSv1_2, "TLS 1.2")

    # A reload (SIGHUP) replaces every worker; the master keeps the keys,
    # so sessions from before resume on the new workers.
    d = env.dps[0]
    old = set(d.wait_workers().values())
    d.sighup()
    new = d.wait_workers(exclude=old)
    for c, sess, what in ((c13, s13, "TLS 1.3"), (c12, s12, "TLS 1.2")):
        pid, reused, _ = one_request(env, c, "/%s/z" % t, sess)
        check(pid in new.values(), "%s: a new worker served (%d)" % (what, pid))
        check(reused, "%s: a session from before the reload resumed on a new worker" % what)
