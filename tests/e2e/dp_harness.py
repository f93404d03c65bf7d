"""
Helpers for the data plane's end-to-end tests (tests/e2e/test_dp_*.py), on
top of harness.py (Python 3 standard library only).

  Upstream(name)        tests/e2e/upstream_server.py as a separate process on
                        127.0.0.1 (a port it picks itself): echo, statuses,
                        slow and large bodies, chunked, uploads, WebSocket,
                        abrupt closes, a health endpoint, counters
  DataPlane(cp, ...)    one airgw-dataplane (a master + N workers) on free
                        ports; stopped with SIGTERM (exit 0 and no sanitizer
                        report required, no worker left behind, no worker
                        that died unless the test killed it)
  dp_env(ctx, name)     one control plane + data planes + upstreams shared by
                        the tests of a module, stopped when the module ends
  new_dp(ctx, ...)      a data plane stopped at the end of the test
  new_upstream(ctx, n)  an upstream stopped at the end of the test

Client requests go through the real curl binary (harness.curl, curl_many,
LoadLoop); raw sockets (connect, recv_all, read_responses, WsClient) are
for malformed input, slow clients, pipelining and WebSocket. Helpers for
upstream failures: FullBacklog (a connect that hangs, for connect timeouts)
and Silent (accepts, never answers).
"""

import hashlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time

from harness import (AUTO, Fail, Settings, T, _short, _track, check_no_sanitizer_report,
                     close_files, curl, end_process, free_port, kill_process, new_tmpdir, read_text,
                     stop_within, to_yaml, wait_until)

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import upstream_server  # noqa: E402  (pattern(), ws framing)

UPSTREAM_PY = os.path.join(HERE, "upstream_server.py")


def dp_bin():
    return os.path.join(Settings.build_dir, "dataplane", "airgw-dataplane")


# ---------------------------------------------------------------------------
# /proc


def proc_children(pid):
    """Pids whose parent is pid."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                st = f.read()
        except OSError:
            continue
        # "pid (comm) S ppid ..." -- comm may hold spaces and parentheses.
        rest = st[st.rfind(")") + 2:].split()
        if len(rest) > 1 and rest[1] == str(pid):
            out.append(int(d))
    return sorted(out)


def pid_alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            st = f.read()
    except OSError:
        return False
    return st[st.rfind(")") + 2:].split()[0] != "Z"


def rss_kb(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for ln in f:
                if ln.startswith("VmRSS:"):
                    return int(ln.split()[1])
    except OSError:
        pass
    return 0


# ---------------------------------------------------------------------------
# the upstream server


class Upstream:
    """tests/e2e/upstream_server.py in its own process."""

    def __init__(self, name="up", delay_all=None, idle_timeout=None):
        self.name = name
        self.delay_all = delay_all
        self.idle_timeout = idle_timeout
        self.dir = new_tmpdir("up-" + name)
        self.proc = None
        self.port = None
        self.stop_checked = True
        self.stderr_path = os.path.join(self.dir, "stderr.log")

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def start(self):
        argv = [sys.executable, UPSTREAM_PY, "--name", self.name, "--port", "0"]
        if self.delay_all:
            argv += ["--delay-all", str(self.delay_all)]
        if self.idle_timeout:
            argv += ["--idle-timeout", str(self.idle_timeout)]
        self.err_f = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=self.err_f)
        _track(self.proc)
        self.stop_checked = False
        line = self.proc.stdout.readline().decode()
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        if not m:
            self.stop()
            raise Fail("upstream %s did not start: %r %s" % (self.name, line, self.tail()))
        self.port = int(m.group(1))
        return self

    def url(self, path):
        return "http://%s%s" % (self.addr, path)

    def stats(self):
        r = curl("GET", self.url("/__stats"), timeout=T(5))
        if r.status != 200:
            raise Fail("upstream %s: /__stats: %r" % (self.name, r))
        return r.j

    def reset(self):
        r = curl("GET", self.url("/__reset"), timeout=T(5))
        if r.status != 200:
            raise Fail("upstream %s: /__reset: %r" % (self.name, r))

    def set_healthy(self, ok):
        r = curl("GET", self.url("/__health/ok" if ok else "/__health/fail"), timeout=T(5))
        if r.status != 200:
            raise Fail("upstream %s: health switch: %r" % (self.name, r))

    def set_failing(self, on):
        r = curl("GET", self.url("/__mode/fail" if on else "/__mode/ok"), timeout=T(5))
        if r.status != 200:
            raise Fail("upstream %s: mode switch: %r" % (self.name, r))

    def requests(self):
        return self.stats()["requests"]

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        self.stop_checked = True
        if self.proc is None:
            return
        end_process(self.proc, 5)
        close_files(self.proc.stdout, self.err_f)

    def tail(self, n=10):
        return read_text(self.stderr_path).splitlines()[-n:]


class FullBacklog:
    """A listening socket on 127.0.0.1 whose accept queue is full: a connect
    to it hangs (the kernel drops the SYN), as to an unreachable host, with
    no traffic leaving the machine."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self.fill = []
        for _ in range(3):
            c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            c.setblocking(False)
            try:
                c.connect(("127.0.0.1", self.port))
            except BlockingIOError:
                pass
            self.fill.append(c)
        time.sleep(0.05)
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        probe.settimeout(0.3)
        try:
            probe.connect(("127.0.0.1", self.port))
            ok = False
        except OSError:
            ok = True
        finally:
            probe.close()
        if not ok:
            self.close()
            raise Fail("cannot make a listening socket with a full backlog")

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def close(self):
        for c in self.fill:
            c.close()
        self.sock.close()


class AcceptLoop:
    """A socket listening on 127.0.0.1 (a free port) and a thread handing
    each connection it accepts to self.accepted(conn); close() stops it."""

    def __init__(self, backlog=64):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(backlog)
        self.port = self.sock.getsockname()[1]
        self.stopped = False
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def _run(self):
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.accepted(c)

    def accepted(self, conn):
        raise NotImplementedError

    def close(self):
        self.stopped = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class Silent(AcceptLoop):
    """Accepts connections and reads, never answers (read timeouts)."""

    def __init__(self):
        self.conns = []
        super().__init__(backlog=64)

    def accepted(self, conn):
        self.conns.append(conn)

    def close(self):
        super().close()
        for c in self.conns:
            c.close()


# ---------------------------------------------------------------------------
# the data plane

LISTEN_RE = re.compile(r"http listening on 127\.0\.0\.1:(\d+)")
STARTED_RE = re.compile(r"started worker (\d+) \(pid (\d+)\)")
SERVING_RE = re.compile(r"worker (\d+) \(pid (\d+)\) serving revision (-?\d+)")
DIED_RE = re.compile(r"worker (\d+) \(pid (\d+)\) (was killed by signal \d+|exited with status "
                     r"\d+)[^\n]*")


class DataPlane:
    """One airgw-dataplane master (and its workers).

    cp          a harness.Daemon (its config stream), a "HOST:PORT[,...]"
                string, or None (no --control-plane: standalone or config)
    workers     --workers N
    listeners   how many --http-listen addresses (free ports)
    config      dict (written as YAML) or str: -c FILE
    flags       False: put no listen/metrics/state flags on the command line
                (the config file has them); self.http_ports etc. stay as set
    standalone  --standalone FILE
    access_log  --access-log VALUE; access_log_format --access-log-format
    """

    def __init__(self, cp=None, name="dp", workers=2, listeners=1, config=None,
                 standalone=None, access_log=None, access_log_format=None, node_id=None,
                 state_dir=AUTO, args=None, flags=True, log_level="info", env=None):
        self.name = name
        self.dir = new_tmpdir(name)
        self.cp = cp
        self.workers_n = workers
        self.http_ports = [free_port() for _ in range(listeners)]
        self.metrics_port = free_port()
        self.config_path = None
        # The HTTPS listener defaults to 0.0.0.0:9443: a test that does not ask
        # for one gets none, so every listener stays on 127.0.0.1, free ports.
        self.https_default_off = not (config is not None and "https_listen" in (
            config if isinstance(config, str) else to_yaml(config)))
        if config is not None:
            self.config_path = os.path.join(self.dir, "dataplane.yaml")
            self.write_config(config)
        self.standalone = standalone
        self.access_log = access_log
        self.access_log_format = access_log_format
        self.node_id = node_id or "%s-%s" % (name, secrets.token_hex(3))
        self.state_dir = os.path.join(self.dir, "state") if state_dir is AUTO else state_dir
        self.extra = list(args or [])
        self.flags = flags
        self.log_level = log_level
        self.env = env
        self.proc = None
        self.starts = 0
        self.stop_checked = True
        self.stderr_path = None
        self.expected_deaths = set()  # worker pids the test killed itself
        self.slow = []

    def write_config(self, config):
        with open(self.config_path, "w") as f:
            f.write(config if isinstance(config, str) else to_yaml(config) + "\n")

    def cp_arg(self):
        if self.cp is None:
            return None
        if isinstance(self.cp, str):
            return self.cp
        return "127.0.0.1:%d" % self.cp.config_port

    def argv(self):
        a = [dp_bin()]
        if self.config_path:
            a += ["-c", self.config_path]
        cp = self.cp_arg()
        if cp:
            a += ["--control-plane", cp]
        if self.standalone:
            a += ["--standalone", self.standalone]
        if self.flags:
            for p in self.http_ports:
                a += ["--http-listen", "127.0.0.1:%d" % p]
            a += ["--metrics-listen", "127.0.0.1:%d" % self.metrics_port,
                  "--workers", str(self.workers_n), "--node-id", self.node_id,
                  "--log-level", self.log_level]
            if self.state_dir:
                a += ["--state-dir", self.state_dir]
            if self.https_default_off and "--https-listen" not in self.extra:
                a += ["--https-listen", "off"]
        if self.access_log is not None:
            a += ["--access-log", self.access_log]
        if self.access_log_format is not None:
            a += ["--access-log-format", self.access_log_format]
        return a + self.extra

    # -- lifecycle

    def start(self, wait=True, synced=None):
        if not os.access(dp_bin(), os.X_OK):
            raise Fail("missing binary %s (build the data plane first)" % dp_bin())
        self.starts += 1
        self.stderr_path = os.path.join(self.dir, "stderr.%d.log" % self.starts)
        self.stdout_path = os.path.join(self.dir, "stdout.%d.log" % self.starts)
        self.err_f = open(self.stderr_path, "wb")
        self.out_f = open(self.stdout_path, "wb")
        env = None
        if self.env:
            env = dict(os.environ, **self.env)
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=self.out_f,
                                     stderr=self.err_f, cwd=self.dir, env=env)
        _track(self.proc)
        self.stop_checked = False
        if wait:
            self.wait_ready(synced=(self.cp is not None) if synced is None else synced)
        return self

    def wait_ready(self, synced=True, timeout=10):
        """Waits for every listener, every worker serving, and (synced) the
        first sync with a control plane."""
        def ready():
            err = self.stderr()
            if self.proc.poll() is not None:
                raise Fail("%s exited with %s during start-up: %s" % (
                    self.name, self.proc.returncode, _short(err.strip(), 1500)))
            if len(LISTEN_RE.findall(err)) < len(self.http_ports):
                return False
            if len({m[0] for m in SERVING_RE.findall(err)}) < self.workers_n:
                return False
            if synced and "config stream: synced with" not in err:
                return False
            return True
        if not wait_until(ready, T(timeout), interval=0.02):
            raise Fail("%s not ready within %.0fs: %s" % (self.name, T(timeout),
                                                          _short(self.stderr().strip(), 1500)))

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stderr(self):
        return read_text(self.stderr_path)

    def stdout(self):
        return read_text(self.stdout_path)

    def tail(self, n=30):
        out = self.stderr().splitlines()[-n:]
        if self.slow:
            out.append("(requests slower than 1 s through curl: %s)" % "; ".join(self.slow[-5:]))
        return out

    def log_mark(self):
        return len(self.stderr())

    def wait_log(self, regex, timeout=5, since=0, what=None):
        """Waits for regex in the log after offset since; returns the match."""
        rx = re.compile(regex)
        found = wait_until(lambda: rx.search(self.stderr(), since), T(timeout), interval=0.02)
        if not found:
            raise Fail("%s: no log line /%s/ within %.1fs; log tail:\n    %s" % (
                self.name, what or regex, T(timeout), "\n    ".join(self.tail(15))))
        return found

    def children(self):
        return proc_children(self.proc.pid) if self.proc else []

    def workers(self):
        """slot -> pid of the workers running now (per the log, checked
        against the master's children)."""
        kids = set(self.children())
        out = {}
        for slot, pid in STARTED_RE.findall(self.stderr()):
            if int(pid) in kids and pid_alive(int(pid)):
                out[int(slot)] = int(pid)
        return out

    def wait_workers(self, n=None, timeout=10, exclude=()):
        """Waits until n workers (default: --workers) run and serve, none of
        them in exclude; returns slot -> pid."""
        n = n or self.workers_n
        last = [{}]

        def ok():
            w = self.workers()
            last[0] = w
            if len(w) != n or set(w.values()) & set(exclude):
                return False
            if set(self.children()) != set(w.values()):
                return False
            serving = {int(p) for _, p, _ in SERVING_RE.findall(self.stderr())}
            return set(w.values()) <= serving
        if not wait_until(ok, T(timeout), interval=0.05):
            raise Fail("%s: expected %d serving workers (not %s) within %.0fs; have %s, "
                       "children %s" % (self.name, n, sorted(exclude), T(timeout), last[0],
                                        self.children()))
        return last[0]

    def rss_kb(self):
        """Resident memory of the master and its workers, in KiB."""
        return sum(rss_kb(p) for p in [self.proc.pid] + self.children())

    def kill_worker(self, slot=0, sig=signal.SIGKILL):
        pid = self.workers()[slot]
        self.expected_deaths.add(pid)
        os.kill(pid, sig)
        return pid

    def send_signal(self, sig):
        self.proc.send_signal(sig)

    def sighup(self):
        self.proc.send_signal(signal.SIGHUP)

    def unexpected_deaths(self, text=None):
        """Log lines of workers that died although the test did not kill
        them."""
        out = []
        for m in DIED_RE.finditer(text if text is not None else self.stderr()):
            if int(m.group(2)) not in self.expected_deaths:
                out.append(m.group(0))
        return out

    def _close_files(self):
        close_files(getattr(self, "err_f", None), getattr(self, "out_f", None))

    def _reap_orphans(self, pids):
        left = [p for p in pids if pid_alive(p)]
        if left:
            wait_until(lambda: not any(pid_alive(p) for p in left), T(3), interval=0.05)
        left = [p for p in left if pid_alive(p)]
        for p in left:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        return left

    def stop(self, sig=signal.SIGTERM, timeout=None):
        """Stops the master with sig and checks: exit 0 within timeout, no
        worker left running, no sanitizer report and no worker that died on
        its own in the log (workers write to the same stderr)."""
        if self.proc is None:
            return None
        timeout = timeout or T(15)
        self.stop_checked = True
        kids = self.children() if self.proc.poll() is None else []
        already, rc, took = stop_within(self.proc, sig, timeout)
        if rc is None:
            self._close_files()
            self._reap_orphans(kids)
            raise Fail("%s did not exit within %.1fs of %s" % (self.name, timeout,
                                                               signal.Signals(sig).name))
        self.last_stop_seconds = took
        left = self._reap_orphans(kids)
        self._close_files()
        err = self.stderr()
        if already:
            raise Fail("%s had already exited (rc %s) before %s" % (
                self.name, rc, signal.Signals(sig).name))
        if rc != 0:
            raise Fail("%s exited %s on %s (expected 0); log tail: %s" % (
                self.name, rc, signal.Signals(sig).name, _short("\n".join(self.tail(8)), 1500)))
        check_no_sanitizer_report(self.name, err, before=300, size=2500)
        if left:
            raise Fail("%s: worker(s) %s still running after the master exited" % (
                self.name, left))
        dead = self.unexpected_deaths(err)
        if dead:
            raise Fail("%s: worker(s) died during the test: %s" % (self.name, "; ".join(dead)))
        return rc

    def kill9(self):
        """kill -9 of the master (and of its workers, by pid)."""
        kids = self.children()
        kill_process(self.proc)
        self._reap_orphans(kids)
        self._close_files()
        self.stop_checked = True

    # -- client side

    @property
    def port(self):
        return self.http_ports[0]

    def url(self, path, i=0):
        return "http://127.0.0.1:%d%s" % (self.http_ports[i], path)

    def req(self, method, path, body=None, headers=None, i=0, **kw):
        kw.setdefault("ctype", None)
        t0 = time.monotonic()
        r = curl(method, self.url(path, i), body=body, headers=headers, **kw)
        dt = time.monotonic() - t0
        if dt > 1.0:  # shown with the log tail when a test fails
            self.slow.append("%.2fs %s %s -> %s" % (dt, method, path, r.status))
        return r

    def get(self, path, **kw):
        return self.req("GET", path, **kw)

    def metrics_text(self):
        r = curl("GET", "http://127.0.0.1:%d/apisix/prometheus/metrics" % self.metrics_port,
                 timeout=T(5))
        if r.status != 200:
            raise Fail("%s: metrics: %r" % (self.name, r))
        return r.text

    def metrics(self):
        return parse_prometheus(self.metrics_text())


def parse_prometheus(text):
    """[(name, {label: value}, float)] of a Prometheus text exposition."""
    out = []
    for ln in text.splitlines():
        if not ln or ln.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$", ln)
        if not m:
            raise Fail("bad metrics line: %r" % ln)
        labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"',
                                 m.group(2) or ""))
        out.append((m.group(1), labels, float(m.group(3))))
    return out


def metric_sum(series, name, **labels):
    """Sum of the series of name whose labels include labels."""
    return sum(v for n, lb, v in series
               if n == name and all(lb.get(k) == str(x) for k, x in labels.items()))


# ---------------------------------------------------------------------------
# fixtures: per test, per module


def new_upstream(ctx, name="up", **kw):
    u = Upstream(name, **kw)
    ctx.daemons.append(u)
    return u.start()


def new_dp(ctx, cp=None, start=True, **kw):
    d = DataPlane(cp, **kw)
    ctx.daemons.append(d)
    if start:
        d.start()
    return d


class Env:
    """One control plane, data planes and upstreams shared by a module."""

    def __init__(self, cp, dps, ups):
        self.cp = cp
        self.dps = dps
        self.ups = ups

    def put(self, path, body):
        return self.cp.must("PUT", path, body)

    def delete(self, path):
        return self.cp.must("DELETE", path, status=200)

    def route(self, rid, body):
        return self.put("routes/" + rid, body)

    def up(self, *names, **weights):
        """An inline roundrobin upstream of the named upstream servers."""
        nodes = {self.ups[n].addr: 1 for n in names}
        nodes.update({self.ups[n].addr: w for n, w in weights.items()})
        return {"type": "roundrobin", "nodes": nodes}


def dp_env(ctx, name="env", dps=2, workers=2, upstreams=("a", "b", "c"), dp_kw=None):
    """The module's shared environment `name`, started on first use: a
    control plane, `dps` data planes with `workers` workers each subscribed
    to it, and upstream servers named by `upstreams`."""
    envs = getattr(ctx.mod, "dp_envs", None)
    if envs is None:
        envs = ctx.mod.dp_envs = {}
    env = envs.get(name)
    if env is None:
        cp_key = "cp-" + name
        cp = ctx.shared(cp_key)
        ups = {}
        for u in upstreams:
            up = Upstream(u)
            ctx.mod.shared["up-%s-%s" % (name, u)] = up
            up.start()
            ups[u] = up
        dplist = []
        for i in range(dps):
            d = DataPlane(cp, name="%s-dp%d" % (name, i + 1), workers=workers, **(dp_kw or {}))
            ctx.mod.shared["dp-%s-%d" % (name, i)] = d
            d.start()
            dplist.append(d)
        # Stop the data planes and upstreams before the control plane.
        ctx.mod.shared[cp_key] = ctx.mod.shared.pop(cp_key)
        env = envs[name] = Env(cp, dplist, ups)
    else:
        ctx.shared("cp-" + name)
    for d in env.dps:
        if d not in ctx.used_shared:
            ctx.used_shared.append(d)
        if not d.running():
            raise Fail("shared data plane %s is not running (exit %s)" % (
                d.name, d.proc.returncode))
    for u in env.ups.values():
        if not u.running():
            raise Fail("shared upstream %s is not running" % u.name)
    return env


# ---------------------------------------------------------------------------
# waiting for configuration to serve


def wait_serving(dps, path, pred=None, timeout=2, method="GET", headers=None, streak=4,
                 what=None, **kw):
    """Polls path on every data plane (in turn) until pred(resp) holds, then
    until it holds for `streak` requests in a row (each on its own
    connection, so both workers are seen). Returns the seconds from the call
    to the first good answer of the slowest data plane. pred defaults to
    status 200."""
    pred = pred or (lambda r: r.status == 200)
    if not isinstance(dps, (list, tuple)):
        dps = [dps]
    t0 = time.monotonic()
    end = t0 + T(timeout)
    first = {}
    last = {}
    while len(first) < len(dps):
        for d in dps:
            if d.name in first:
                continue
            r = d.req(method, path, headers=headers, timeout=T(5), **kw)
            last[d.name] = r
            if pred(r):
                first[d.name] = time.monotonic() - t0
        if len(first) < len(dps):
            if time.monotonic() > end:
                bad = [d.name for d in dps if d.name not in first]
                raise Fail("%s: %s %s not as expected (%s) within %.1fs; last: %r" % (
                    ", ".join(bad), method, path, what or "status 200", T(timeout),
                    last[bad[0]]))
            time.sleep(0.01)
    for d in dps:
        ok = 1
        while ok < streak:
            r = d.req(method, path, headers=headers, timeout=T(5), **kw)
            if pred(r):
                ok += 1
                continue
            ok = 0
            if time.monotonic() > end:
                raise Fail("%s: %s %s not steadily as expected (%s) within %.1fs; last: %r" % (
                    d.name, method, path, what or "status 200", T(timeout), r))
            time.sleep(0.01)
    return max(first.values())


# ---------------------------------------------------------------------------
# curl in bulk

_SEP = "\n\x1eCURL-RESULT "


def curl_many(urls, headers=None, close=False, timeout=None, extra=None, interface=None):
    """Runs one curl process over urls (in order, one after another; with
    close=True each on its own connection). Returns a list of
    (status, body bytes) with status 0 for a transfer that failed."""
    timeout = timeout or T(10)
    cmd = ["curl", "-sS", "-g", "--max-time", "%.1f" % timeout, "-w",
           _SEP + "%{http_code} %{num_connects}\n"]
    for h in headers or []:
        cmd += ["-H", h]
    if close:
        cmd += ["-H", "Connection: close"]
    if interface:
        cmd += ["--interface", interface]
    cmd += extra or []
    cmd += list(urls)
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=timeout * len(urls) + 30)
    out = p.stdout
    res = []
    sep = _SEP.encode()
    pos = 0
    while True:
        i = out.find(sep, pos)
        if i < 0:
            break
        j = out.index(b"\n", i + len(sep))
        code = int(out[i + len(sep):j].split()[0])
        res.append((code, out[pos:i]))
        pos = j + 1
    if len(res) != len(urls):
        raise Fail("curl_many: %d results for %d URLs: %s" % (
            len(res), len(urls), _short(p.stderr.decode(errors="replace"), 400)))
    return res


def servers_of(results):
    """Counts of the echo body's "server" over curl_many results (status
    200 only; others counted under "<status>")."""
    counts = {}
    for code, body in results:
        if code == 200:
            try:
                k = json.loads(body)["server"]
            except (ValueError, KeyError, TypeError):
                k = "<bad body>"
        else:
            k = "<%d>" % code
        counts[k] = counts.get(k, 0) + 1
    return counts


class LoadLoop:
    """Client threads, each running curl over batches of requests until
    stopped; every request on its own connection. .results: [(t, status)]."""

    def __init__(self, url, threads=2, batch=10, headers=None, timeout=None):
        self.url = url
        self.batch = batch
        self.headers = headers
        self.timeout = timeout or T(10)
        self.results = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.errors = []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self):
        while not self.stopping.is_set():
            try:
                res = curl_many([self.url] * self.batch, headers=self.headers, close=True,
                                timeout=self.timeout)
            except Exception as e:  # noqa: BLE001
                self.errors.append(str(e))
                return
            now = time.monotonic()
            with self.lock:
                self.results.extend((now, code) for code, _ in res)

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def count(self):
        with self.lock:
            return len(self.results)

    def wait_count(self, n, timeout=10):
        if not wait_until(lambda: self.count() >= n or self.errors, T(timeout), interval=0.02):
            raise Fail("load loop: only %d requests within %.0fs" % (self.count(), T(timeout)))

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join(timeout=T(30))
        if self.errors:
            raise Fail("load loop: %s" % self.errors[0])
        return [c for _, c in self.results]


# ---------------------------------------------------------------------------
# raw sockets


def connect(port, timeout=5):
    s = socket.create_connection(("127.0.0.1", port), timeout=T(timeout))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def recv_all(s, timeout=5, limit=1 << 24):
    """Reads until EOF (or timeout / reset, or limit bytes). Returns (bytes,
    how) with how "eof", "timeout", "reset" or "limit"."""
    s.settimeout(T(timeout))
    out = bytearray()
    end = time.monotonic() + T(timeout)
    while len(out) < limit:
        try:
            d = s.recv(65536)
        except socket.timeout:
            return bytes(out), "timeout"
        except ConnectionResetError:
            return bytes(out), "reset"
        if not d:
            return bytes(out), "eof"
        out += d
        left = end - time.monotonic()
        if left <= 0:
            return bytes(out), "timeout"
        s.settimeout(left)
    return bytes(out), "limit"


class RawResponse:
    def __init__(self, status, reason, headers, body, version):
        self.status = status
        self.reason = reason
        self.headers = headers  # lower-case name -> value (last one)
        self.body = body
        self.version = version

    @property
    def j(self):
        try:
            return json.loads(self.body)
        except ValueError:
            raise Fail("response body is not JSON: %r" % self.body[:300])

    def __repr__(self):
        return "%s %d %r" % (self.version, self.status, self.body[:200])


def parse_responses(data, head_only=()):
    """Splits bytes holding HTTP/1.1 responses (Content-Length, chunked, or
    until the end) into RawResponses; a trailing incomplete one is dropped.
    head_only: indexes of responses to HEAD requests (no body)."""
    out = []
    pos = 0
    while pos < len(data):
        i = data.find(b"\r\n\r\n", pos)
        if i < 0:
            break
        lines = data[pos:i].decode("latin-1").split("\r\n")
        m = re.match(r"(HTTP/\d\.\d) (\d{3}) ?(.*)", lines[0])
        if not m:
            raise Fail("not an HTTP response at byte %d: %r" % (pos, data[pos:pos + 80]))
        hdrs = {}
        for ln in lines[1:]:
            k, _, v = ln.partition(":")
            hdrs[k.strip().lower()] = v.strip()
        status = int(m.group(2))
        p = i + 4
        if status < 200 or status in (204, 304) or len(out) in head_only:
            body = b""
            if 100 <= status < 200 and status != 101:
                pos = p
                continue  # interim response
        elif "chunked" in hdrs.get("transfer-encoding", "").lower():
            body = bytearray()
            while True:
                j = data.find(b"\r\n", p)
                if j < 0:
                    return out
                n = int(data[p:j].split(b";")[0], 16)
                p = j + 2
                if n == 0:
                    k = data.find(b"\r\n\r\n", p - 2)
                    if k < 0:
                        return out
                    p = k + 4
                    break
                if len(data) < p + n + 2:
                    return out
                body += data[p:p + n]
                p += n + 2
            body = bytes(body)
        elif "content-length" in hdrs:
            n = int(hdrs["content-length"])
            if len(data) < p + n:
                return out
            body = data[p:p + n]
            p += n
        else:
            body = data[p:]
            p = len(data)
        out.append(RawResponse(status, m.group(3), hdrs, body, m.group(1)))
        pos = p
    return out


def read_responses(s, n, timeout=5, head_only=()):
    """Reads from s until n complete responses arrived (or EOF/timeout);
    returns (responses, how)."""
    s.settimeout(T(timeout))
    data = b""
    end = time.monotonic() + T(timeout)
    while True:
        rs = parse_responses(data, head_only)
        if len(rs) >= n:
            return rs, "ok"
        left = end - time.monotonic()
        if left <= 0:
            return rs, "timeout"
        s.settimeout(left)
        try:
            d = s.recv(65536)
        except socket.timeout:
            return parse_responses(data, head_only), "timeout"
        except ConnectionResetError:
            return parse_responses(data, head_only), "reset"
        if not d:
            return parse_responses(data, head_only), "eof"
        data += d


class WsClient:
    """A WebSocket client over a raw socket (RFC 6455)."""

    def __init__(self, port, path="/ws", host="ws.test", timeout=5):
        import base64
        self.sock = connect(port, timeout)
        self.sock.settimeout(T(timeout))
        key = base64.b64encode(os.urandom(16)).decode()
        self.expect_accept = base64.b64encode(hashlib.sha1(
            key.encode() + upstream_server.WS_GUID).digest()).decode()
        self.sock.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\n"
                           "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n" % (path, host, key)).encode())
        self.rd = upstream_server.Reader(self.sock)
        head = self.rd.until(b"\r\n\r\n", 65536).decode("latin-1").split("\r\n")
        m = re.match(r"HTTP/1\.1 (\d{3})", head[0])
        self.status = int(m.group(1)) if m else 0
        self.headers = {}
        for ln in head[1:]:
            k, _, v = ln.partition(":")
            self.headers[k.strip().lower()] = v.strip()
        self.body = b""
        if self.status != 101:
            n = int(self.headers.get("content-length", "0") or 0)
            try:
                self.body = self.rd.exact(n) if n else b""
            except Exception:  # noqa: BLE001
                pass

    def send(self, payload, op=0x1):
        if isinstance(payload, str):
            payload = payload.encode()
        self.sock.sendall(upstream_server.ws_frame(op, payload, mask=True))

    def recv(self):
        return upstream_server.ws_read_frame(self.rd)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def check_no_worker_change(dp, before, what):
    """Fails when the workers' pids differ from before (a worker died)."""
    now = dp.workers()
    if now != before:
        raise Fail("%s: worker pids changed after %s: %s -> %s; log: %s" % (
            dp.name, what, before, now, "; ".join(dp.unexpected_deaths()) or "(nothing)"))

