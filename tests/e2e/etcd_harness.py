"""
A real etcd for the end-to-end tests and benchmarks (Debian's etcd-server
3.4, /usr/bin/etcd; Python 3 standard library only).

  Etcd(name)            one etcd process on 127.0.0.1 (free client and peer
                        ports), a single-member cluster unless built by
                        EtcdCluster; start/stop/kill9/restart keep its data
  EtcdCluster(n)        n members that form one cluster (started together,
                        ready once a leader answers); .urls, .members[i]
  new_etcd(ctx) ...     per-test fixtures stopped at the end of the test,
  module_etcd(ctx)      one etcd per module, stopped when the module ends
  shared_etcd()         the one etcd of a run in store mode etcd (run_all.py
                        --store etcd), stopped by stop_shared_etcd()

Client side: EtcdClient(url) speaks etcd's v3 JSON gateway (range, put,
delete, compaction, lease) with urllib, and etcdctl(endpoints, ...) runs the
real etcdctl. Members are stopped with SIGTERM and must exit cleanly; data dirs
live on /dev/shm when it exists (a test run writes thousands of revisions and
fsync on tmpfs is free) and are removed when the process exits.
"""

import atexit
import base64
import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import threading
import urllib.error
import urllib.request

from harness import (Fail, Settings, T, _short, _track, _untrack, close_files, free_port,
                     kill_process, new_tmpdir, read_text, stop_within, wait_until)

ETCD_BIN = os.environ.get("AIRGW_ETCD", "/usr/bin/etcd")
ETCDCTL_BIN = os.environ.get("AIRGW_ETCDCTL", "/usr/bin/etcdctl")


def available():
    """None when etcd and etcdctl can be run, else why not."""
    for b in (ETCD_BIN, ETCDCTL_BIN):
        if not os.access(b, os.X_OK):
            return "%s is missing (Debian packages etcd-server and etcd-client)" % b
    return None


_data_root = None
_data_lock = threading.Lock()


def data_root():
    """Where member data dirs go: /dev/shm when usable, else the run's tmp."""
    global _data_root
    with _data_lock:
        if _data_root is None:
            base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
            if base:
                _data_root = tempfile.mkdtemp(prefix="airgw-etcd-", dir=base)
            else:
                _data_root = new_tmpdir("etcd-data")
            atexit.register(_remove_data_root)
        return _data_root


def _remove_data_root():
    if _data_root and not Settings.keep:
        shutil.rmtree(_data_root, ignore_errors=True)


def b64(s):
    if isinstance(s, str):
        s = s.encode()
    return base64.b64encode(s).decode()


def unb64(s):
    return base64.b64decode(s or "").decode("utf-8", "replace")


def prefix_end(prefix):
    """etcd's range_end for every key that starts with prefix."""
    b = bytearray(prefix.encode())
    while b:
        if b[-1] < 0xFF:
            b[-1] += 1
            return bytes(b)
        b.pop()
    return b"\x00"


# ---------------------------------------------------------------------------
# the v3 JSON gateway


class EtcdError(Exception):
    def __init__(self, status, body):
        Exception.__init__(self, "etcd answered %s: %s" % (status, _short(body, 300)))
        self.status = status
        self.body = body


class EtcdClient:
    """Requests to etcd's JSON gateway (http://HOST:PORT/v3/...)."""

    def __init__(self, url, timeout=5, tls=None):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.ssl = None
        if tls:  # {"ca": file, "cert": file, "key": file} for an https etcd
            self.ssl = ssl.create_default_context(cafile=tls.get("ca"))
            if tls.get("client_cert"):
                self.ssl.load_cert_chain(tls["client_cert"], tls["client_key"])

    def call(self, path, body, timeout=None):
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"},
                                     method="POST")
        try:
            with urllib.request.urlopen(req, timeout=timeout or T(self.timeout),
                                        context=self.ssl) as r:
                return json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            raise EtcdError(e.code, e.read().decode("utf-8", "replace"))

    def revision(self):
        """The cluster's current revision."""
        r = self.call("/v3/kv/range", {"key": b64("\x00"), "count_only": True})
        return int(r["header"]["revision"])

    def get(self, key):
        """(value, create_revision, mod_revision) or None."""
        r = self.call("/v3/kv/range", {"key": b64(key)})
        kvs = r.get("kvs") or []
        if not kvs:
            return None
        kv = kvs[0]
        return unb64(kv.get("value")), int(kv["create_revision"]), int(kv["mod_revision"])

    def get_prefix(self, prefix):
        """{key: value} of every key under prefix."""
        r = self.call("/v3/kv/range", {"key": b64(prefix), "range_end": b64(prefix_end(prefix))})
        return {unb64(kv["key"]): unb64(kv.get("value")) for kv in r.get("kvs") or []}

    def put(self, key, value, lease=None):
        body = {"key": b64(key), "value": b64(value)}
        if lease:
            body["lease"] = str(lease)
        return int(self.call("/v3/kv/put", body)["header"]["revision"])

    def delete_prefix(self, prefix):
        r = self.call("/v3/kv/deleterange", {"key": b64(prefix),
                                             "range_end": b64(prefix_end(prefix))})
        return int(r.get("deleted", 0))

    def compact(self, revision=None):
        """Compacts up to revision (default: the current one); returns it."""
        rev = revision or self.revision()
        self.call("/v3/kv/compaction", {"revision": str(rev), "physical": True})
        return rev

    def leases(self):
        r = self.call("/v3/lease/leases", {})
        return [int(x["ID"]) for x in r.get("leases") or []]

    def lease_ttl(self, lease_id):
        r = self.call("/v3/lease/timetolive", {"ID": str(lease_id)})
        return int(r.get("TTL", -1))

    def status(self):
        """(member id, leader id) as this member sees them."""
        r = self.call("/v3/maintenance/status", {})
        return int(r["header"]["member_id"]), int(r.get("leader", 0))

    def healthy(self, timeout=1.0):
        try:
            req = urllib.request.Request(self.url + "/health")
            with urllib.request.urlopen(req, timeout=timeout, context=self.ssl) as r:
                return json.loads(r.read()).get("health") == "true"
        except (OSError, ValueError):
            return False


def etcdctl(endpoints, *args, timeout=10):
    """Runs the real etcdctl (API v3) against endpoints (a URL or a list);
    returns (rc, stdout, stderr)."""
    if not isinstance(endpoints, str):
        endpoints = ",".join(endpoints)
    env = dict(os.environ, ETCDCTL_API="3")
    p = subprocess.run([ETCDCTL_BIN, "--endpoints", endpoints, "--dial-timeout", "2s"]
                       + list(args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, env=env, timeout=T(timeout))
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


# ---------------------------------------------------------------------------
# etcd processes


class Etcd:
    """One etcd member. Alone it is a single-member cluster; EtcdCluster
    gives it its peers. Compatible with harness.Ctx cleanup (proc, name,
    stderr_path, stop(), tail(), stop_checked) and stopped after the
    control planes of the test (stop_last)."""

    stop_last = True

    def __init__(self, name="etcd", cluster=None, client_port=None, peer_port=None,
                 token=None, extra=None, tls=None):
        self.name = name
        # tls: {"cert", "key": server files, "ca": CA file; with "client_cert",
        # "client_key" etcd requires client certificates signed by ca}
        self.tls = tls
        self.client_port = client_port or free_port()
        self.peer_port = peer_port or free_port()
        self.cluster = cluster  # "n1=http://...,n2=..." or None (alone)
        self.token = token or "airgw-e2e-%d" % self.peer_port
        self.data_dir = tempfile.mkdtemp(prefix=name + "-", dir=data_root())
        self.log_dir = new_tmpdir(name)
        self.extra = list(extra or [])
        self.proc = None
        self.starts = 0
        self.stop_checked = True
        self.stderr_path = None

    @property
    def url(self):
        return "%s://127.0.0.1:%d" % ("https" if self.tls else "http", self.client_port)

    @property
    def peer_url(self):
        return "http://127.0.0.1:%d" % self.peer_port

    def client(self, timeout=5):
        return EtcdClient(self.url, timeout=timeout, tls=self.tls)

    def ctl_args(self):
        """etcdctl flags for this member's TLS (none without)."""
        if not self.tls:
            return []
        a = ["--cacert", self.tls["ca"]]
        if self.tls.get("client_cert"):
            a += ["--cert", self.tls["client_cert"], "--key", self.tls["client_key"]]
        return a

    def argv(self):
        return [ETCD_BIN, "--name", self.name, "--data-dir", self.data_dir,
                "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                "--listen-peer-urls", self.peer_url,
                "--initial-advertise-peer-urls", self.peer_url,
                "--initial-cluster", self.cluster or "%s=%s" % (self.name, self.peer_url),
                "--initial-cluster-token", self.token, "--initial-cluster-state", "new",
                "--heartbeat-interval", "50", "--election-timeout", "500",
                "--logger", "zap", "--log-outputs", "stderr"] + self.tls_flags() + self.extra

    def tls_flags(self):
        if not self.tls:
            return []
        a = ["--cert-file", self.tls["cert"], "--key-file", self.tls["key"]]
        if self.tls.get("client_cert"):
            a += ["--client-cert-auth", "--trusted-ca-file", self.tls["ca"]]
        return a

    def start(self, wait=True):
        why = available()
        if why:
            raise Fail(why)
        self.starts += 1
        self.stderr_path = os.path.join(self.log_dir, "stderr.%d.log" % self.starts)
        self.err_f = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self.err_f,
                                     cwd=self.log_dir)
        _track(self.proc)
        self.stop_checked = False
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout=10):
        """Waits until the member answers a read (so a leader exists)."""
        c = self.client(timeout=1)

        def ready():
            if self.proc.poll() is not None:
                raise Fail("%s exited with %s during start-up: %s" % (
                    self.name, self.proc.returncode, "\n".join(self.tail(8))))
            try:
                c.revision()
                return True
            except EtcdError as e:
                # With authentication on, a refusal for want of a user is
                # an answer too (a leader exists).
                return any(w in e.body for w in ("user name", "auth", "permission denied", "CommonName"))
            except (OSError, ValueError, KeyError):
                return False
        if not wait_until(ready, T(timeout), interval=0.05):
            raise Fail("%s not ready within %.0fs: %s" % (self.name, T(timeout),
                                                          "\n".join(self.tail(8))))

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def _close(self):
        _untrack(self.proc)
        close_files(self.err_f)

    def stop(self, timeout=None):
        """SIGTERM; Fail unless it exits 0 within timeout."""
        if self.proc is None or self.stop_checked:
            return None
        self.stop_checked = True
        p = self.proc
        if p.poll() is not None:
            self._close()
            raise Fail("%s had already exited (rc %s)" % (self.name, p.returncode))
        p.send_signal(signal.SIGCONT)  # in case a test paused it
        _, rc, _ = stop_within(p, signal.SIGTERM, timeout or T(10))
        self._close()
        if rc is None:
            raise Fail("%s did not exit within %.0fs of SIGTERM" % (self.name,
                                                                    timeout or T(10)))
        # etcd re-raises the signal after its graceful shutdown.
        if rc not in (0, -signal.SIGTERM):
            raise Fail("%s exited %s on SIGTERM" % (self.name, rc))
        return rc

    def kill9(self):
        kill_process(self.proc)
        if self.proc is not None:
            self._close()
        self.stop_checked = True

    def pause(self):
        """SIGSTOP: the member keeps its sockets but answers nothing."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self):
        self.proc.send_signal(signal.SIGCONT)

    def restart(self, wait=True):
        if self.running():
            self.stop()
        return self.start(wait=wait)

    def stderr(self):
        return read_text(self.stderr_path)

    def tail(self, n=10):
        return self.stderr().splitlines()[-n:]


class EtcdCluster:
    """n etcd members forming one cluster on 127.0.0.1."""

    stop_last = True

    def __init__(self, n=3, name="etcd"):
        peers = [free_port() for _ in range(n)]
        names = ["%s%d" % (name, i + 1) for i in range(n)]
        cluster = ",".join("%s=http://127.0.0.1:%d" % (nm, p) for nm, p in zip(names, peers))
        token = "airgw-e2e-%d" % peers[0]
        self.name = name
        self.members = [Etcd(nm, cluster=cluster, peer_port=p, token=token)
                        for nm, p in zip(names, peers)]
        self.stop_checked = True

    # harness.Ctx cleanup compatibility
    @property
    def proc(self):
        return self.members[0].proc

    @property
    def stderr_path(self):
        return self.members[0].stderr_path

    @property
    def urls(self):
        return [m.url for m in self.members]

    def leader(self):
        """Index of the leader among the running members (None if unknown)."""
        ids, leader = {}, None
        for i, m in enumerate(self.members):
            if not m.running():
                continue
            try:
                mid, lid = m.client().status()
            except (OSError, EtcdError, ValueError, KeyError):
                continue
            ids[mid] = i
            leader = lid or leader
        return ids.get(leader)

    def start(self):
        for m in self.members:
            m.start(wait=False)
        self.stop_checked = False
        for m in self.members:
            m.wait_ready(timeout=15)
        return self

    def stop(self):
        self.stop_checked = True
        problems = []
        for m in self.members:
            try:
                m.stop()
            except Fail as e:
                problems.append(str(e))
        if problems:
            raise Fail("; ".join(problems))

    def tail(self, n=10):
        out = []
        for m in self.members:
            out.append("[%s]" % m.name)
            out.extend(m.tail(n // len(self.members) + 1))
        return out


# ---------------------------------------------------------------------------
# fixtures


def new_etcd(ctx, name="etcd", **kw):
    """A single etcd, stopped after the test's daemons."""
    e = Etcd(name, **kw)
    ctx.daemons.append(e)
    return e.start()


def new_cluster(ctx, n=3, name="etcd"):
    c = EtcdCluster(n, name)
    ctx.daemons.append(c)
    return c.start()


def module_etcd(ctx, name="etcd"):
    """One etcd per module, started on first use, stopped after every other
    shared process of the module."""
    key = "etcd-" + name
    e = ctx.mod.shared.get(key)
    if e is None:
        e = Etcd("m" + name)
        ctx.mod.shared[key] = e
        e.start()
    else:
        ctx.mod.shared[key] = ctx.mod.shared.pop(key)  # keep it last
    if not e.running():
        raise Fail("the module's etcd is not running (exit %s)" % e.proc.returncode)
    return e


_shared = None
_shared_lock = threading.Lock()


def shared_etcd():
    """The run's etcd for store mode etcd (started on first use)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Etcd("store")
            _shared.start()
        if not _shared.running():
            raise Fail("the run's etcd (store mode) is not running (exit %s): %s" % (
                _shared.proc.returncode, "\n".join(_shared.tail(8))))
        return _shared


def stop_shared_etcd():
    """Stops the run's etcd; returns a problem string or None."""
    global _shared
    with _shared_lock:
        e, _shared = _shared, None
    if e is None:
        return None
    try:
        e.stop()
    except Fail as ex:
        return str(ex)
    return None
