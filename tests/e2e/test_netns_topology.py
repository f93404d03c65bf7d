"""The deployment of deploy/docker-compose.yml as real processes on separate
network hosts: one network namespace per host, all on one bridge.

The test makes its own namespaces (`ip netns add`, names with a random
suffix): a "switch" namespace holding a bridge, and one namespace per host,
each joined to the bridge by a veth pair made inside the switch namespace (the
root namespace's networking is never touched). Hosts, on 10.231.0.0/24:

  etcd1 .11, etcd2 .12, etcd3 .13   a 3-member etcd cluster (/usr/bin/etcd)
  cp1 .21, cp2 .22                  airgw-controlplane --store etcd:<all 3>
  dp1 .31, dp2 .32                  airgw-dataplane, dp1 follows cp1 then cp2,
                                    dp2 follows cp2 then cp1
  broker .41                        a real mosquitto
  upstream .51                      tests/e2e/upstream_server.py
  device .61                        curl, mosquitto_pub, mosquitto_sub (also the
                                    operator: Admin API calls come from here)

The config stream between the hosts runs over TLS with client certificates, as
docs/operations.md advises (a CA made with openssl(1); each control plane's
certificate names its IP, each data plane has its own client certificate).

Checks: a route written through either control plane carries HTTP and MQTT
(stream route with mqtt-proxy) device traffic through either data plane;
stopping a control plane stops no traffic and the other one still takes
changes that reach both data planes; killing an etcd member stops neither
traffic nor admin writes.

Must run as root (CI does). Where namespaces cannot be made the tests say so
and skip; nothing else skips. Every process started is stopped by pid and every
namespace removed, also on failure (the module's teardown and an atexit hook).
"""
import atexit
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from harness import (SANITIZER_MARKS, Fail, Settings, Skip, T, _track, _untrack, check, eq,
                     new_tmpdir, read_text, wait_until)
from dp_harness import dp_bin, proc_children
from mqtt_harness import mosquitto_bin
import etcd_harness

HERE = os.path.dirname(os.path.abspath(__file__))
UPSTREAM_PY = os.path.join(HERE, "upstream_server.py")
NET = "10.231.0."
HOSTS = {"etcd1": 11, "etcd2": 12, "etcd3": 13, "cp1": 21, "cp2": 22, "dp1": 31,
         "dp2": 32, "broker": 41, "upstream": 51, "device": 61}
ADMIN_PORT, STREAM_PORT, HTTP_PORT, MQTT_PORT = 9180, 9280, 9080, 9100


def ip(role):
    return NET + str(HOSTS[role])


def sh(argv, timeout=10, check_rc=True):
    """Runs a short command (ip, ...) in the root namespace; Fail on error."""
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=timeout)
    if check_rc and p.returncode != 0:
        raise Fail("%s: exit %d: %s" % (" ".join(argv), p.returncode,
                                         p.stderr.decode(errors="replace").strip()))
    return p


class Proc:
    """One long-running process inside a host's namespace, output to a log."""

    def __init__(self, topo, host, name, argv, daemon=False):
        self.topo, self.host, self.name, self.argv = topo, host, name, argv
        self.daemon = daemon  # ours: SIGTERM must give exit 0 and no sanitizer report
        self.dir = new_tmpdir("ns-" + name)
        self.log_path = os.path.join(self.dir, "output.log")
        self.proc = None

    def start(self):
        self.log_f = open(self.log_path, "ab")
        self.proc = subprocess.Popen(["ip", "netns", "exec", self.topo.ns(self.host)] +
                                     self.argv, stdin=subprocess.DEVNULL, stdout=self.log_f,
                                     stderr=subprocess.STDOUT, cwd=self.dir)
        _track(self.proc)
        return self

    def log(self):
        return read_text(self.log_path)

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def wait_log(self, rx, timeout=10, what=None):
        ok = wait_until(lambda: re.search(rx, self.log()) or not self.running(), T(timeout))
        if not ok or not re.search(rx, self.log()):
            raise Fail("%s: no %s in its log within %.0fs (%s): %s" % (
                self.name, what or repr(rx), T(timeout),
                "running" if self.running() else "exited %s" % self.proc.returncode,
                self.log()[-400:]))

    def stop(self, sig=signal.SIGTERM, timeout=10):
        """Stops by pid; returns a problem string or None."""
        if self.proc is None:
            return None
        p, problem = self.proc, None
        children = proc_children(p.pid) if p.poll() is None else []
        if p.poll() is None:
            p.send_signal(sig)
            try:
                p.wait(timeout=T(timeout))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                problem = "%s did not exit within %.0fs of %s" % (self.name, T(timeout),
                                                                 signal.Signals(sig).name)
            if problem is None and self.daemon and sig == signal.SIGTERM and p.returncode != 0:
                problem = "%s exited %s on SIGTERM (expected 0)" % (self.name, p.returncode)
        elif self.daemon and sig == signal.SIGTERM:
            problem = "%s had exited (%s) before it was stopped" % (self.name, p.returncode)
        for c in children:  # data plane workers: none may outlive the master
            if wait_until(lambda: not os.path.exists("/proc/%d" % c), T(3)) is False:
                try:
                    os.kill(c, signal.SIGKILL)
                except OSError:
                    pass
                problem = problem or "%s: child %d outlived it" % (self.name, c)
        _untrack(p)
        self.log_f.close()
        if self.daemon:
            text = self.log()
            for mark in SANITIZER_MARKS:
                if mark in text and problem is None:
                    i = text.index(mark)
                    problem = "%s: sanitizer report: %s" % (self.name, text[max(0, i - 200):i + 800])
        self.proc = None
        return problem


class Topology:
    """The namespaces and the processes in them. Looks like a harness daemon
    (proc, name, stop, tail, stop_checked) so the module's teardown stops it."""

    def __init__(self):
        self.tag = "agw" + secrets.token_hex(3)
        self.name = "netns-topology " + self.tag
        self.made = []  # namespace names, in creation order
        self.procs = {}  # name -> Proc
        self.key = "e2e-" + secrets.token_hex(12)
        self.proc = True  # for finish_module: something to stop
        self.stop_checked = False
        self.stderr_path = None
        self.down = False
        self.etcd_dirs = []
        atexit.register(self.remove_namespaces)

    def ns(self, role):
        return "%s-%s" % (self.tag, role)

    # -- network

    def build(self):
        if os.geteuid() != 0:
            raise Skip("network namespaces need root (uid %d): run as root, as CI does" %
                       os.geteuid())
        if shutil.which("ip") is None:
            raise Skip("no `ip` command (Debian package iproute2): cannot make namespaces")
        sw = self.ns("sw")
        p = sh(["ip", "netns", "add", sw], check_rc=False)
        if p.returncode != 0:
            raise Skip("cannot make network namespaces here (`ip netns add`: %s)" %
                       p.stderr.decode(errors="replace").strip())
        self.made.append(sw)
        # Past this point the machine can make namespaces: any failure is a failure.
        sh(["ip", "-n", sw, "link", "add", "br0", "type", "bridge"])
        sh(["ip", "-n", sw, "link", "set", "br0", "up"])
        for role in HOSTS:
            ns = self.ns(role)
            sh(["ip", "netns", "add", ns])
            self.made.append(ns)
            port = "s-" + role
            sh(["ip", "-n", sw, "link", "add", port, "type", "veth", "peer", "name", "eth0",
                "netns", ns])
            sh(["ip", "-n", sw, "link", "set", port, "master", "br0", "up"])
            sh(["ip", "-n", ns, "addr", "add", ip(role) + "/24", "dev", "eth0"])
            sh(["ip", "-n", ns, "link", "set", "eth0", "up"])
            sh(["ip", "-n", ns, "link", "set", "lo", "up"])

    def remove_namespaces(self):
        for ns in reversed(self.made):
            subprocess.run(["ip", "netns", "del", ns], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        self.made = []
        for d in self.etcd_dirs:
            shutil.rmtree(d, ignore_errors=True)
        self.etcd_dirs = []

    # -- commands on hosts

    def run(self, host, argv, timeout=15, input=None):
        """A short command on a host; returns (rc, stdout, stderr) as text."""
        p = subprocess.Popen(["ip", "netns", "exec", self.ns(host)] + argv,
                             stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _track(p)
        try:
            out, err = p.communicate(input=input, timeout=T(timeout))
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
            raise Fail("%s on %s did not finish within %.0fs" % (" ".join(argv[:4]), host,
                                                                 T(timeout)))
        finally:
            _untrack(p)
        return p.returncode, out.decode(errors="replace"), err.decode(errors="replace")

    def curl(self, url, method="GET", body=None, key=None, timeout=5):
        """curl from the device host: (status, body text); status 0 = no answer."""
        argv = ["curl", "-sS", "--max-time", "%.1f" % T(timeout), "-o", "-", "-w",
                "\n%{http_code}", "-X", method, url]
        if key:
            argv += ["-H", "X-API-KEY: " + key]
        data = None
        if body is not None:
            argv += ["-H", "Content-Type: application/json", "--data-binary", "@-"]
            data = json.dumps(body).encode()
        rc, out, err = self.run("device", argv, timeout=timeout + 5, input=data)
        text, _, code = out.rpartition("\n")
        try:
            return int(code), text
        except ValueError:
            return 0, err.strip()

    def admin(self, cp, method, path, body=None, want=(200, 201), timeout=10):
        """An Admin API call to control plane cp (from the device host); it must
        answer one of want within timeout (a few retries while it cannot)."""
        url = "http://%s:%d/apisix/admin/%s" % (ip(cp), ADMIN_PORT, path)
        end = time.monotonic() + T(timeout)
        while True:
            status, text = self.curl(url, method, body, key=self.key, timeout=5)
            if status in want:
                return json.loads(text) if text.strip() else None
            if time.monotonic() >= end:
                raise Fail("%s %s via %s: status %s, body %s" % (method, path, cp, status,
                                                                text[:400]))
            time.sleep(0.2)

    def http_via(self, dp, path):
        return self.curl("http://%s:%d%s" % (ip(dp), HTTP_PORT, path))

    def wait_http(self, dp, path, want=200, timeout=10, what=""):
        """Polls a device request through data plane dp until it answers want."""
        last = [None]

        def ok():
            last[0] = self.http_via(dp, path)
            return last[0][0] == want
        if not wait_until(ok, T(timeout), interval=0.1):
            raise Fail("%s via %s: expected %d within %.0fs, last %s %s %s" % (
                path, dp, want, T(timeout), last[0][0], last[0][1][:200], what))
        return last[0][1]

    # -- processes

    def start(self, host, name, argv, daemon=False):
        p = Proc(self, host, name, argv, daemon=daemon).start()
        self.procs[name] = p
        return p

    def start_etcd(self, role):
        d = tempfile.mkdtemp(prefix="airgw-ns-%s-" % role, dir="/dev/shm"
                             if os.access("/dev/shm", os.W_OK) else None)
        self.etcd_dirs.append(d)
        cluster = ",".join("%s=http://%s:2380" % (r, ip(r)) for r in ("etcd1", "etcd2", "etcd3"))
        return self.start(role, role, [
            etcd_harness.ETCD_BIN, "--name", role, "--data-dir", d,
            "--listen-client-urls", "http://%s:2379" % ip(role),
            "--advertise-client-urls", "http://%s:2379" % ip(role),
            "--listen-peer-urls", "http://%s:2380" % ip(role),
            "--initial-advertise-peer-urls", "http://%s:2380" % ip(role),
            "--initial-cluster", cluster, "--initial-cluster-token", self.tag,
            "--initial-cluster-state", "new", "--heartbeat-interval", "50",
            "--election-timeout", "500", "--logger", "zap", "--log-outputs", "stderr"])

    def etcd_urls(self):
        return ",".join("http://%s:2379" % ip(r) for r in ("etcd1", "etcd2", "etcd3"))

    def make_certs(self):
        """A CA, a server certificate per control plane (IP SAN), a client
        certificate per data plane; PEM files in self.pki."""
        self.pki = new_tmpdir("ns-pki")

        def ossl(*args):
            p = subprocess.run(["openssl"] + list(args), cwd=self.pki, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
            check(p.returncode == 0, "openssl %s: %s" % (args[0], p.stderr.decode()[-300:]))
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
        ossl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "30",
             "-subj", "/CN=airgw netns CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        leaves = {r: "subjectAltName=IP:%s\nextendedKeyUsage=serverAuth\n" % ip(r)
                  for r in ("cp1", "cp2")}
        leaves.update({r: "extendedKeyUsage=clientAuth\n" for r in ("dp1", "dp2")})
        for name, ext in leaves.items():
            with open(os.path.join(self.pki, name + ".ext"), "w") as f:
                f.write(ext)
            ossl("req", *ec, "-keyout", name + ".key", "-out", name + ".csr",
                 "-subj", "/CN=%s/O=airgw netns" % name)
            ossl("x509", "-req", "-in", name + ".csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "30", "-extfile", name + ".ext", "-out",
                 name + ".crt")

    def pem(self, name):
        return os.path.join(self.pki, name)

    def start_cp(self, role):
        conf = os.path.join(new_tmpdir("ns-conf"), "controlplane.yaml")
        with open(conf, "w") as f:
            f.write("deployment:\n"
                    "  admin:\n"
                    "    admin_listen: {ip: %s, port: %d}\n"
                    "    allow_admin: [%s0/24]\n"
                    "  config_stream:\n"
                    "    listen: %s:%d\n"
                    "    heartbeat_interval: 1\n"
                    "    tls: {cert: %s, key: %s, client_ca: %s}\n"
                    "  store: etcd:%s\n"
                    "  log_level: info\n" % (ip(role), ADMIN_PORT, NET, ip(role), STREAM_PORT,
                                             self.pem(role + ".crt"), self.pem(role + ".key"),
                                             self.pem("ca.crt"), self.etcd_urls()))
        p = self.start(role, role, [Settings.cp_bin(), "-c", conf, "--admin-key", self.key,
                                    "--state-dir", new_tmpdir("ns-state-" + role)],
                       daemon=True)
        self.wait_admin(role)
        return p

    def wait_admin(self, role, timeout=15):
        url = "http://%s:%d/healthz" % (ip(role), ADMIN_PORT)
        p = self.procs[role]
        ok = wait_until(lambda: self.curl(url, timeout=2)[0] == 200 or not p.running(),
                        T(timeout), interval=0.1)
        if not ok or not p.running():
            raise Fail("%s did not answer /healthz: %s" % (
                role, " | ".join(p.log().splitlines()[-8:])))

    def start_dp(self, role, cps):
        cplist = ",".join("%s:%d" % (ip(c), STREAM_PORT) for c in cps)
        conf = os.path.join(new_tmpdir("ns-conf"), "dataplane.yaml")
        with open(conf, "w") as f:
            f.write("dataplane:\n  control_plane_tls: {ca: %s, cert: %s, key: %s}\n" % (
                self.pem("ca.crt"), self.pem(role + ".crt"), self.pem(role + ".key")))
        return self.start(role, role, [
            dp_bin(), "-c", conf, "--control-plane", cplist, "--node-id", role, "--workers", "1",
            "--http-listen", "%s:%d" % (ip(role), HTTP_PORT), "--https-listen", "off",
            "--stream-listen", "%s:%d" % (ip(role), MQTT_PORT),
            "--metrics-listen", "127.0.0.1:9091",
            "--state-dir", new_tmpdir("ns-state-" + role)], daemon=True)

    def up(self):
        self.build()
        missing = [b for b in (etcd_harness.ETCD_BIN, Settings.cp_bin(), dp_bin())
                   if not os.access(b, os.X_OK)]
        for tool in ("curl", "mosquitto_pub", "mosquitto_sub", "openssl"):
            if shutil.which(tool) is None:
                missing.append(tool)
        check(not missing, "missing programs: %s" % ", ".join(missing))
        self.make_certs()
        mosq = mosquitto_bin()
        conf = os.path.join(new_tmpdir("ns-mosq"), "mosquitto.conf")
        with open(conf, "w") as f:
            f.write("listener 1883 %s\nallow_anonymous true\npersistence false\n"
                    "log_dest stderr\nlog_type all\nconnection_messages true\n" % ip("broker"))
        self.start("broker", "broker", [mosq, "-c", conf])
        self.start("upstream", "upstream", [sys.executable, UPSTREAM_PY, "--host",
                                             ip("upstream"), "--port", "8080", "--name",
                                             "ns-upstream"])
        for r in ("etcd1", "etcd2", "etcd3"):
            self.start_etcd(r)
        # Ready once every member reports a healthy cluster (a leader exists).
        for r in ("etcd1", "etcd2", "etcd3"):
            url = "http://%s:2379/health" % ip(r)
            if not wait_until(lambda: '"true"' in self.curl(url, timeout=2)[1], T(15),
                              interval=0.1):
                raise Fail("%s not healthy: %s" % (r, self.procs[r].log()[-400:]))
        self.procs["broker"].wait_log(r"mosquitto version \S+ running", 5, "mosquitto start")
        self.procs["upstream"].wait_log(r"listening on", 5, "upstream start")
        self.start_cp("cp1")
        self.start_cp("cp2")
        self.start_dp("dp1", ["cp1", "cp2"])
        self.start_dp("dp2", ["cp2", "cp1"])
        for d in ("dp1", "dp2"):
            self.procs[d].wait_log(r"http listening on", 10, "http listener")

    # -- harness daemon interface

    def tail(self, n=25):
        out = []
        for name, p in self.procs.items():
            lines = p.log().splitlines()[-4:]
            out.append("[%s] %s" % (name, " | ".join(lines))[:600])
        return out[-n:]

    def stop(self):
        """Stops every process (data planes, control planes, the rest), removes
        the namespaces; raises Fail listing the problems."""
        self.stop_checked = True
        problems = []
        order = ["dp1", "dp2", "cp1", "cp2", "broker", "upstream", "etcd1", "etcd2", "etcd3"]
        for name in order + [n for n in self.procs if n not in order]:
            p = self.procs.get(name)
            if p is not None and p.proc is not None:
                try:
                    pr = p.stop()
                except Exception as e:  # noqa: BLE001
                    pr = "%s: %s" % (name, e)
                if pr:
                    problems.append(pr)
        self.remove_namespaces()
        self.down = True
        if problems:
            raise Fail("; ".join(problems))


def topo(ctx, build=False):
    """The module's topology (made by the first test); Skip when namespaces
    cannot be made, Fail when a previous test could not bring it up."""
    t = ctx.mod.shared.get("netns")
    if t is None:
        t = Topology()
        ctx.mod.shared["netns"] = t
        try:
            t.up()
        except Skip as e:
            t.skip = str(e)
        except BaseException as e:
            t.error = str(e)
            ctx.used_shared.append(t)
            raise
    if getattr(t, "skip", None):
        raise Skip(t.skip)
    if getattr(t, "error", None) and not build:
        raise Fail("the topology did not come up (see test_topology_comes_up): %s" %
                   t.error[:200])
    if t.down:
        raise Fail("the topology was already torn down")
    if t not in ctx.used_shared:
        ctx.used_shared.append(t)  # its logs in the diagnostics of a failing test
    return t


def test_topology_comes_up(ctx):
    t = topo(ctx, build=True)
    # Each data plane subscribes to the first control plane of its list.
    for cp, dp in (("cp1", "dp1"), ("cp2", "dp2")):
        def listed():
            j = t.admin(cp, "GET", "dataplanes")
            return any(dp in json.dumps(x) for x in (j.get("list") or []))
        check(wait_until(listed, T(10), interval=0.2),
              "%s does not list data plane %s as a subscriber" % (cp, dp))
        # Over TLS, and the control plane saw the data plane's own certificate.
        t.procs[cp].wait_log(r'client certificate "[^"]*CN ?= ?%s\b' % dp, 5,
                             "TLS client certificate of %s" % dp)


def test_http_route_through_either_control_plane_and_data_plane(ctx):
    t = topo(ctx)
    up = "%s:8080" % ip("upstream")
    t.admin("cp1", "PUT", "upstreams/web", {"type": "roundrobin", "nodes": {up: 1}})
    t.admin("cp1", "PUT", "routes/via-cp1", {"uri": "/via-cp1/*", "upstream_id": "web"})
    t.admin("cp2", "PUT", "routes/via-cp2", {"uri": "/via-cp2/*", "upstream_id": "web"})
    for dp in ("dp1", "dp2"):
        for cp in ("cp1", "cp2"):
            body = t.wait_http(dp, "/via-%s/anything?from=%s" % (cp, dp))
            j = json.loads(body)
            check(j.get("server") == "ns-upstream" and j.get("path") == "/via-%s/anything" % cp,
                  "route written via %s, traffic via %s: upstream saw %s" % (cp, dp, body[:300]))
            # The upstream sees the data plane's host address, not the device's.
            check(j.get("peer", "").startswith(ip(dp)),
                  "upstream peer %r is not data plane %s (%s)" % (j.get("peer"), dp, ip(dp)))


def mqtt_roundtrip(t, sub_dp, pub_dp, topic, message):
    """mosquitto_sub through sub_dp, mosquitto_pub through pub_dp, both on the
    device host; the subscriber must print the message."""
    cid = "sub-" + secrets.token_hex(3)
    broker = t.procs["broker"]
    sub = t.start("device", "sub-" + topic.replace("/", "-"), [
        "mosquitto_sub", "-h", ip(sub_dp), "-p", str(MQTT_PORT), "-t", topic, "-i", cid,
        "-q", "1", "-C", "1", "-W", "%d" % T(15)])
    try:
        broker.wait_log(r"Received SUBSCRIBE from %s" % cid, 10, "SUBSCRIBE from %s" % cid)
        rc, out, err = t.run("device", ["mosquitto_pub", "-h", ip(pub_dp), "-p", str(MQTT_PORT),
                                        "-t", topic, "-m", message, "-q", "1",
                                        "-i", "pub-" + secrets.token_hex(3)])
        check(rc == 0, "mosquitto_pub via %s: exit %d %s" % (pub_dp, rc, err.strip()))
        check(wait_until(lambda: message in sub.log(), T(10)),
              "subscriber via %s did not get %r published via %s (log: %s)" % (
                  sub_dp, message, pub_dp, sub.log()[-300:]))
    finally:
        sub.stop()
        t.procs.pop(sub.name, None)


def test_mqtt_stream_route_through_either_data_plane(ctx):
    t = topo(ctx)
    t.admin("cp1", "PUT", "upstreams/brokers",
            {"type": "chash", "key": "mqtt_client_id",
             "nodes": {"%s:1883" % ip("broker"): 1}})
    t.admin("cp2", "PUT", "stream_routes/mqtt",
            {"upstream_id": "brokers",
             "plugins": {"mqtt-proxy": {"protocol_name": "MQTT", "protocol_level": 4}}})
    # The route needs both writes; poll until a client gets through each data plane.
    for dp in ("dp1", "dp2"):
        ok = wait_until(lambda: t.run("device", [
            "mosquitto_pub", "-h", ip(dp), "-p", str(MQTT_PORT), "-t", "probe", "-m", "x",
            "-i", "probe-" + secrets.token_hex(3)], timeout=10)[0] == 0, T(10), interval=0.2)
        check(ok, "MQTT through %s never reached the broker" % dp)
    mqtt_roundtrip(t, "dp1", "dp2", "site/a/telemetry", "hello-from-dp2")
    mqtt_roundtrip(t, "dp2", "dp1", "site/b/telemetry", "hello-from-dp1")


def test_control_plane_down_keeps_traffic_and_the_other_takes_changes(ctx):
    t = topo(ctx)
    problem = t.procs["cp1"].stop()
    check(problem is None, problem or "")
    for dp in ("dp1", "dp2"):
        t.wait_http(dp, "/via-cp1/anything", timeout=3, what="(cp1 stopped)")
        t.wait_http(dp, "/via-cp2/anything", timeout=3, what="(cp1 stopped)")
    mqtt_roundtrip(t, "dp1", "dp2", "site/c/telemetry", "cp1-down")
    # dp1 followed cp1: it fails over to cp2, which takes the new route.
    t.admin("cp2", "PUT", "routes/after-cp1-down", {"uri": "/after-cp1-down/*",
                                                    "upstream_id": "web"})
    for dp in ("dp1", "dp2"):
        t.wait_http(dp, "/after-cp1-down/anything", timeout=15, what="(written via cp2)")
    # cp1 comes back (a rolling restart): it serves the changes made meanwhile
    # and its writes reach both data planes again.
    t.start_cp("cp1")
    got = t.admin("cp1", "GET", "routes/after-cp1-down")
    check(got["value"]["uri"] == "/after-cp1-down/*", "cp1 after restart: %s" % got)
    t.admin("cp1", "PUT", "routes/after-cp1-back", {"uri": "/after-cp1-back/*",
                                                    "upstream_id": "web"})
    for dp in ("dp1", "dp2"):
        t.wait_http(dp, "/after-cp1-back/anything", timeout=10, what="(written via cp1)")


def etcd_status(t):
    """(member id of etcd1, leader id) from `etcdctl endpoint status`."""
    rc, out, err = t.run("device", [etcd_harness.ETCDCTL_BIN, "--endpoints",
                                    "http://%s:2379" % ip("etcd1"), "endpoint", "status",
                                    "-w", "json"], timeout=10)
    check(rc == 0, "etcdctl endpoint status: %s" % err.strip())
    hdr = json.loads(out)[0]["Status"]
    return hdr["header"]["member_id"], hdr["leader"]


def test_etcd_member_down_keeps_traffic_and_admin_writes(ctx):
    t = topo(ctx)
    # The hardest member to lose: etcd1 is the first endpoint of both control planes,
    # and it is made the leader first, so losing it also means an election.
    me, leader = etcd_status(t)
    if me != leader:
        rc, out, err = t.run("device", [etcd_harness.ETCDCTL_BIN, "--endpoints",
                                        t.etcd_urls(), "move-leader", "%x" % me], timeout=15)
        check(rc == 0, "etcdctl move-leader: %s %s" % (out.strip(), err.strip()))
    me, leader = etcd_status(t)
    eq(leader, me, "etcd1 leads before it is killed")
    problem = t.procs["etcd1"].stop(sig=signal.SIGKILL)
    check(problem is None, problem or "")
    for dp in ("dp1", "dp2"):
        t.wait_http(dp, "/via-cp1/anything", timeout=3, what="(etcd1 killed)")
    mqtt_roundtrip(t, "dp2", "dp1", "site/d/telemetry", "etcd1-down")
    for cp in ("cp1", "cp2"):
        t.admin(cp, "PUT", "routes/etcd-down-%s" % cp,
                {"uri": "/etcd-down-%s/*" % cp, "upstream_id": "web"}, timeout=15)
        got = t.admin(cp, "GET", "routes/etcd-down-%s" % cp)
        check(got["value"]["uri"] == "/etcd-down-%s/*" % cp, "read back via %s: %s" % (cp, got))
    for dp in ("dp1", "dp2"):
        for cp in ("cp1", "cp2"):
            t.wait_http(dp, "/etcd-down-%s/anything" % cp, timeout=15,
                        what="(written via %s with etcd1 down)" % cp)


def test_teardown_stops_everything_and_removes_namespaces(ctx):
    t = topo(ctx)
    names = list(t.made)
    pids = [p.proc.pid for p in t.procs.values() if p.proc is not None]
    t.stop()  # Fail lists any daemon that did not exit 0 on SIGTERM
    left = sh(["ip", "netns", "list"]).stdout.decode()
    check(not any(n in left.split() or (n + " ") in left for n in names),
          "namespaces left behind: %s" % [n for n in names if n in left])
    alive = [pid for pid in pids if os.path.exists("/proc/%d" % pid)]
    check(not alive, "processes left behind: %s" % alive)
