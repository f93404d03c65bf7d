"""
End-to-end test harness for airgw (Python 3 standard library only).

Tests start real processes: the built airgw-controlplane, the real `curl`
binary for every HTTP request, and airgw-cfgwatch for the config stream.
Every server listens on 127.0.0.1 on a free port and is stopped by the test.

A test module (tests/e2e/test_*.py) defines functions `def test_xxx(ctx)`,
run in the order they are defined. `ctx` (a Ctx) gives:

  ctx.daemon(**opts)      a fresh control plane, stopped (SIGTERM, exit 0
                          required, no sanitizer report) at the end of the test
  ctx.shared(name, **o)   one control plane per module and name, stopped (and
                          checked) when the module's tests are done
  ctx.use_shared(*procs)  marks processes a module keeps in ctx.mod.shared as
                          used by the test (Fail when one is not running)
  ctx.watch(daemon, ...)  an airgw-cfgwatch subscriber, stopped at test end
  ctx.tmpdir()            a scratch directory, removed at the end of the run
  ctx.run(argv, ...)      runs a short-lived command (e.g. the daemon with
                          --help) and returns (rc, stdout, stderr)

Daemon options: see Daemon.__init__. Assertion helpers: check, eq,
expect_status, expect_error, expect_json. Process helpers (also for
dp_harness, etcd_harness, mqtt_harness): end_process, kill_process,
run_to_end, close_files, read_text, check_no_sanitizer_report.
"""

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

# ---------------------------------------------------------------------------
# configuration of the run (set by run_all.py)


class Settings:
    build_dir = None
    sanitizer = False
    scale = 1.0  # timeout multiplier (larger for sanitizer builds)
    keep = False  # keep temp dirs
    verbose = False
    store = "sqlite"  # "etcd": daemons without an explicit store use the run's etcd

    @classmethod
    def cp_bin(cls):
        return os.path.join(cls.build_dir, "controlplane", "airgw-controlplane")

    @classmethod
    def watch_bin(cls):
        return os.path.join(cls.build_dir, "proto", "airgw-cfgwatch")


def T(seconds):
    """A timeout, scaled for slow (sanitizer) builds."""
    return seconds * Settings.scale


# ---------------------------------------------------------------------------
# failures


class Fail(AssertionError):
    pass


class Skip(Exception):
    pass


def _short(v, n=600):
    s = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    return s if len(s) <= n else s[:n] + "...(%d chars)" % len(s)


def check(cond, msg):
    if not cond:
        raise Fail(msg)


def eq(actual, expected, what="value"):
    if actual != expected:
        raise Fail("%s: expected %s, got %s" % (what, _short(expected), _short(actual)))


# ---------------------------------------------------------------------------
# processes started by this run (killed by pid if the harness itself dies)

_live_procs = set()
_live_lock = threading.Lock()


def _track(p):
    with _live_lock:
        _live_procs.add(p)


def _untrack(p):
    with _live_lock:
        _live_procs.discard(p)


def end_process(p, timeout, sig=signal.SIGTERM):
    """Sends sig to p if it still runs and waits up to timeout seconds for
    it, then SIGKILL (and waits). Untracks it; returns its exit status."""
    if p.poll() is None:
        p.send_signal(sig)
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    _untrack(p)
    return p.returncode


def stop_within(p, sig, timeout):
    """Sends sig to p unless it has already exited, and waits up to timeout
    seconds: (already exited, exit status or None when it did not exit in
    time: then killed (SIGKILL) and reaped, seconds waited). Untracks p."""
    already = p.poll() is not None
    if not already:
        p.send_signal(sig)
    t0 = time.monotonic()
    try:
        rc = p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        rc = None
    _untrack(p)
    return already, rc, time.monotonic() - t0


def kill_process(p):
    """kill -9 of p (None: nothing) if it still runs; untracks it."""
    if p is None:
        return
    if p.poll() is None:
        p.kill()
        p.wait()
    _untrack(p)


def run_to_end(argv, timeout, stderr=subprocess.PIPE, **popen):
    """Runs argv (stdin /dev/null, stdout to a pipe) until it exits, killed
    when it runs longer than timeout seconds: (exit status, stdout bytes,
    stderr bytes or None, whether it was killed for the timeout)."""
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr,
                         **popen)
    _track(p)
    late = False
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        late = True
    _untrack(p)
    return p.returncode, out, err, late


def close_files(*files):
    """Closes each of files that is not None; never raises."""
    for f in files:
        try:
            if f is not None:
                f.close()
        except OSError:
            pass


def kill_leftovers():
    with _live_lock:
        procs = list(_live_procs)
    for p in procs:
        if p.poll() is None:
            try:
                p.kill()
                p.wait(timeout=5)
            except Exception:
                pass


_tmp_root = None
_tmp_lock = threading.Lock()


def tmp_root():
    global _tmp_root
    with _tmp_lock:
        if _tmp_root is None:
            _tmp_root = tempfile.mkdtemp(prefix="airgw-e2e-")
        return _tmp_root


def new_tmpdir(prefix="t"):
    return tempfile.mkdtemp(prefix=prefix + "-", dir=tmp_root())


def cleanup_tmp():
    if _tmp_root and not Settings.keep:
        shutil.rmtree(_tmp_root, ignore_errors=True)


def read_text(path):
    """A log file as text ("" when it cannot be read, or path is None: not
    started yet)."""
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except (OSError, TypeError):
        return ""


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def port_open(port, host="127.0.0.1"):
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_until(pred, timeout, interval=0.02):
    """Polls pred() until it returns a true value (returned) or timeout."""
    end = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= end:
            return v
        time.sleep(interval)


# ---------------------------------------------------------------------------
# YAML writer for config files (block style, enough for airgw's config)


def _yscalar(v):
    if v is True:
        return "true"
    if v is False:
        return "false"
    if v is None:
        return "null"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v))  # a double-quoted YAML string


def to_yaml(obj, indent=0):
    pad = " " * indent
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, dict) and v:
                out.append("%s%s:" % (pad, k))
                out.append(to_yaml(v, indent + 2))
            elif isinstance(v, list) and v and any(isinstance(x, (dict, list)) for x in v):
                out.append("%s%s:" % (pad, k))
                out.append(to_yaml(v, indent + 2))
            elif isinstance(v, list):
                out.append("%s%s: [%s]" % (pad, k, ", ".join(_yscalar(x) for x in v)))
            elif isinstance(v, dict):
                out.append("%s%s: {}" % (pad, k))
            else:
                out.append("%s%s: %s" % (pad, k, _yscalar(v)))
    elif isinstance(obj, list):
        for x in obj:
            if isinstance(x, dict) and x:
                inner = to_yaml(x, indent + 2).split("\n")
                inner[0] = pad + "- " + inner[0].lstrip()
                out.extend(inner)
            else:
                out.append("%s- %s" % (pad, _yscalar(x)))
    else:
        out.append(pad + _yscalar(obj))
    return "\n".join(out)


# ---------------------------------------------------------------------------
# HTTP through the real curl binary


class Resp:
    def __init__(self, method, url, status, headers, body):
        self.method = method
        self.url = url
        self.status = status
        self.headers = headers  # dict, lower-case names (last header block)
        self.body = body  # bytes
        self._json = None
        self._json_err = None
        try:
            self._json = json.loads(body.decode("utf-8")) if body else None
            if not body:
                self._json_err = "empty body"
        except Exception as e:  # noqa: BLE001
            self._json_err = str(e)

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    @property
    def j(self):
        """The body as JSON (Fail if it is not JSON)."""
        if self._json_err:
            raise Fail("%s: body is not JSON (%s): %s" % (self.where(), self._json_err,
                                                          _short(self.text, 300)))
        return self._json

    def is_json(self):
        return self._json_err is None

    def where(self):
        path = re.sub(r"^https?://[^/]+", "", self.url)
        path = re.sub(r"api_key=[^&]*", "api_key=...", path)
        return "%s %s -> %s" % (self.method, path, self.status)

    def __repr__(self):
        return "%s %s" % (self.where(), _short(self.text, 400))


def curl(method, url, body=None, headers=None, interface=None, timeout=None, extra=None,
         ctype="application/json"):
    """Runs one `curl` request. body: None, bytes/str (sent as is) or a
    JSON-able object. Returns a Resp; a curl-level failure (connection
    refused, timeout) returns Resp with status 0 and the error as body."""
    timeout = timeout or T(20)
    fd, hdr_path = tempfile.mkstemp(prefix="hdr-", dir=tmp_root())
    os.close(fd)
    cmd = ["curl", "-sS", "-g", "--max-time", "%.1f" % timeout, "-X", method,
           "-D", hdr_path, "-o", "-", "-w", "", url]
    data = None
    if body is not None:
        if isinstance(body, bytes):
            data = body
        elif isinstance(body, str):
            data = body.encode()
        else:
            data = json.dumps(body).encode()
        if ctype:
            cmd += ["-H", "Content-Type: " + ctype]
        cmd += ["--data-binary", "@-"]
    for h in headers or []:
        cmd += ["-H", h]
    if interface:
        cmd += ["--interface", interface]
    cmd += extra or []
    try:
        p = subprocess.run(cmd, input=data, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=timeout + 10)
        with open(hdr_path, "rb") as f:
            raw = f.read().decode("latin-1")
    finally:
        os.unlink(hdr_path)
    if p.returncode != 0 and not raw:
        return Resp(method, url, 0, {}, ("curl exit %d: %s" % (
            p.returncode, p.stderr.decode(errors="replace").strip())).encode())
    # -D writes every header block (e.g. "100 Continue" first): take the last.
    blocks = [b for b in re.split(r"\r?\n\r?\n", raw) if b.strip()]
    status, headers_d = 0, {}
    if blocks:
        lines = blocks[-1].splitlines()
        m = re.match(r"HTTP/\S+\s+(\d+)", lines[0])
        status = int(m.group(1)) if m else 0
        for ln in lines[1:]:
            if ":" in ln:
                k, v = ln.split(":", 1)
                headers_d[k.strip().lower()] = v.strip()
    return Resp(method, url, status, headers_d, p.stdout)


def expect_status(r, code):
    if r.status != code:
        raise Fail("%s: expected status %d; body %s" % (r.where(), code, _short(r.text, 500)))


def expect_json(r, code, expected):
    expect_status(r, code)
    if r.j != expected:
        raise Fail("%s: expected body %s, got %s" % (r.where(), _short(expected), _short(r.text)))


def expect_error(r, code, exact=None, prefix=None, contains=None, regex=None, field="error_msg"):
    """Checks status and that body is an object whose `field` matches."""
    expect_status(r, code)
    body = r.j
    if not isinstance(body, dict) or not isinstance(body.get(field), str):
        raise Fail("%s: expected {\"%s\": ...}, got %s" % (r.where(), field, _short(r.text)))
    msg = body[field]
    if exact is not None and msg != exact:
        raise Fail("%s: %s expected %r, got %r" % (r.where(), field, exact, msg))
    if prefix is not None and not msg.startswith(prefix):
        raise Fail("%s: %s expected to start with %r, got %r" % (r.where(), field, prefix, msg))
    if contains is not None:
        for c in ([contains] if isinstance(contains, str) else contains):
            if c not in msg:
                raise Fail("%s: %s expected to contain %r, got %r" % (r.where(), field, c, msg))
    if regex is not None and not re.search(regex, msg):
        raise Fail("%s: %s expected to match /%s/, got %r" % (r.where(), field, regex, msg))
    return msg


# ---------------------------------------------------------------------------
# the control plane daemon

ADMIN_RE = re.compile(r"admin API listening on 127\.0\.0\.1:(\d+)")
STREAM_RE = re.compile(r"config stream listening on 127\.0\.0\.1:(\d+)")
SANITIZER_MARKS = ("Sanitizer", "runtime error")


def check_no_sanitizer_report(name, err, before=200, size=1500):
    """Fail when stderr text err of process name has a sanitizer report
    (quoting it from `before` characters ahead of the mark, at most size)."""
    for mark in SANITIZER_MARKS:
        if mark in err:
            i = err.index(mark)
            raise Fail("%s stderr has a sanitizer report (%r): %s" % (
                name, mark, _short(err[max(0, i - before):], size)))

AUTO = object()


class Daemon:
    """One airgw-controlplane process.

    Options:
      config      dict (written as YAML) or str (written verbatim) -> -c FILE
      admin_key   AUTO (default): a random key passed as --admin-key;
                  a str: passed as --admin-key; None: no --admin-key
      listen      True (default): --admin-listen/--config-listen on free
                  ports; False: no listen flags (config file or defaults)
      ports       (admin_port, config_port) to use with listen=True
      state_dir   AUTO (default): a fresh temp dir passed as --state-dir;
                  a path: passed; None: no --state-dir
      args        extra command-line arguments
      cwd         working directory (default: the state dir's parent)
      wait_ready  wait for the two "listening on" log lines (default True)
      store       AUTO (default): the run's store mode (Settings.store); with
                  "etcd", a daemon whose args and config choose no store runs
                  on the run's etcd under a prefix of its own (self.etcd_prefix)
                  kept across restarts; "sqlite": never moved to etcd
    """

    def __init__(self, config=None, admin_key=AUTO, listen=True, ports=None, state_dir=AUTO,
                 args=None, cwd=None, wait_ready=True, name="cp", store=AUTO):
        self.name = name
        self.dir = new_tmpdir(name)
        self.config_path = None
        self.store = "sqlite"
        self.etcd_prefix = None
        if store is AUTO:
            store = Settings.store
        if store == "etcd" and _no_store_chosen(config, args):
            config, args = self._on_run_etcd(config, args)
        if config is not None:
            self.config_path = os.path.join(self.dir, "airgw.yaml")
            with open(self.config_path, "w") as f:
                f.write(config if isinstance(config, str) else to_yaml(config) + "\n")
        if admin_key is AUTO:
            admin_key = "e2e-" + secrets.token_hex(12)
        self.key = admin_key
        if state_dir is AUTO:
            state_dir = os.path.join(self.dir, "state")
        self.state_dir = state_dir
        self.listen = listen
        if listen:
            self.admin_port, self.config_port = ports or (free_port(), free_port())
        else:
            self.admin_port = self.config_port = None
        self.extra = list(args or [])
        self.cwd = cwd or self.dir
        self.wait_ready = wait_ready
        self.proc = None
        self.stderr_path = None
        self.starts = 0
        self.stop_checked = True
        self.generated_key = None

    def _on_run_etcd(self, config, args):
        import etcd_harness  # late: it imports this module
        url = etcd_harness.shared_etcd().url
        self.store = "etcd"
        self.etcd_prefix = "/e2e-%s" % secrets.token_hex(6)
        config = json.loads(json.dumps(config or {}))
        dep = config.setdefault("deployment", {})
        dep["etcd"] = {"host": [url], "prefix": self.etcd_prefix}
        return config, list(args or []) + ["--store", "etcd:" + url]

    # -- command line

    def argv(self):
        a = [Settings.cp_bin()]
        if self.config_path:
            a += ["-c", self.config_path]
        if self.listen:
            a += ["--admin-listen", "127.0.0.1:%d" % self.admin_port,
                  "--config-listen", "127.0.0.1:%d" % self.config_port]
        if self.key is not None:
            a += ["--admin-key", self.key]
        if self.state_dir is not None:
            a += ["--state-dir", self.state_dir]
        return a + self.extra

    # -- lifecycle

    def start(self):
        self.starts += 1
        self.stderr_path = os.path.join(self.dir, "stderr.%d.log" % self.starts)
        self.stdout_path = os.path.join(self.dir, "stdout.%d.log" % self.starts)
        self.err_f = open(self.stderr_path, "wb")
        self.out_f = open(self.stdout_path, "wb")
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=self.out_f,
                                     stderr=self.err_f, cwd=self.cwd)
        _track(self.proc)
        self.stop_checked = False
        if self.wait_ready:
            self._wait_ready()
        return self

    def stderr(self):
        return read_text(self.stderr_path)

    def all_stderr(self):
        return "".join(read_text(os.path.join(self.dir, "stderr.%d.log" % i))
                       for i in range(1, self.starts + 1))

    def _wait_ready(self):
        deadline = time.monotonic() + T(10)
        probe_after = time.monotonic() + T(3)
        while True:
            err = self.stderr()
            ma, ms = ADMIN_RE.search(err), STREAM_RE.search(err)
            if ma and ms:
                self.admin_port, self.config_port = int(ma.group(1)), int(ms.group(1))
                break
            if self.proc.poll() is not None:
                raise Fail("%s exited with %s during start-up: %s" % (
                    self.name, self.proc.returncode, _short(err.strip(), 800)))
            # Fallback so one missing log line does not sink every test:
            # the dedicated CLI tests check the log lines themselves.
            if (time.monotonic() > probe_after and self.admin_port and self.config_port
                    and port_open(self.admin_port) and port_open(self.config_port)):
                break
            if time.monotonic() > deadline:
                raise Fail("%s not ready after %.0fs (no 'admin API listening on' / "
                           "'config stream listening on' lines): %s" % (
                               self.name, T(10), _short(err.strip(), 800)))
            time.sleep(0.02)
        # A generated key is in <state_dir>/admin.key (and logged).
        self.generated_key = None
        kf = os.path.join(self.state_dir or os.path.join(self.cwd, "airgw-data"), "admin.key")
        if os.path.exists(kf):
            with open(kf) as f:
                self.generated_key = f.read().strip() or None
        if self.key is None and self.generated_key:
            self.key = self.generated_key

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def _close_files(self):
        close_files(getattr(self, "err_f", None), getattr(self, "out_f", None))

    def stop(self, sig=signal.SIGTERM, timeout=None):
        """Stops with sig and checks: exit 0 within timeout, no sanitizer
        report on stderr. Raises Fail otherwise (after killing it)."""
        if self.proc is None:
            return None
        timeout = timeout or T(5)
        self.stop_checked = True
        already, rc, took = stop_within(self.proc, sig, timeout)
        self._close_files()
        if rc is None:
            raise Fail("%s did not exit within %.1fs of %s" % (self.name, timeout,
                                                               signal.Signals(sig).name))
        self.last_stop_seconds = took
        err = self.stderr()
        if already:
            raise Fail("%s had already exited (rc %s) before %s" % (
                self.name, rc, signal.Signals(sig).name))
        if rc != 0:
            raise Fail("%s exited %s on %s (expected 0)" % (self.name, rc,
                                                            signal.Signals(sig).name))
        check_no_sanitizer_report(self.name, err)
        return rc

    def kill9(self):
        kill_process(self.proc)
        self._close_files()
        self.stop_checked = True

    def restart(self):
        self.stop()
        return self.start()

    def tail(self, n=25):
        lines = self.stderr().splitlines()
        return lines[-n:]

    # -- admin API

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.admin_port, path)

    def api(self, method, path, body=None, key=AUTO, headers=None, interface=None,
            timeout=None, extra=None, ctype="application/json"):
        """An Admin API request; path is relative to /apisix/admin unless it
        starts with '/'. key=AUTO sends this daemon's admin key in X-API-KEY;
        None sends no key; a str sends that key."""
        if not path.startswith("/"):
            path = "/apisix/admin/" + path
        hdrs = list(headers or [])
        if key is AUTO:
            key = self.key
        if key is not None:
            hdrs.append("X-API-KEY: %s" % key)
        return curl(method, self.url(path), body=body, headers=hdrs, interface=interface,
                    timeout=timeout, extra=extra, ctype=ctype)

    def get(self, path, **kw):
        return self.api("GET", path, **kw)

    def put(self, path, body=None, **kw):
        return self.api("PUT", path, body, **kw)

    def post(self, path, body=None, **kw):
        return self.api("POST", path, body, **kw)

    def patch(self, path, body=None, **kw):
        return self.api("PATCH", path, body, **kw)

    def delete(self, path, **kw):
        return self.api("DELETE", path, **kw)

    def must(self, method, path, body=None, status=(200, 201), **kw):
        """A request that must succeed; returns the JSON body."""
        r = self.api(method, path, body, **kw)
        if r.status not in (status if isinstance(status, tuple) else (status,)):
            raise Fail("%s: expected %s; body %s" % (r.where(), status, _short(r.text, 500)))
        return r.j

    def revision_now(self):
        """The store's latest revision, as seen by a snapshot (via cfgwatch)."""
        w = Watcher(self, node_id="rev-probe-" + secrets.token_hex(3))
        try:
            w.start()
            end = w.wait_type("SNAPSHOT_END")
            return end["revision"]
        finally:
            w.stop()

    def dataplanes(self):
        r = self.get("dataplanes")
        expect_status(r, 200)
        return r.j


def _no_store_chosen(config, args):
    """True when neither args nor a dict config pick a store (a str config is
    taken as choosing: it is the test's own file, left as written)."""
    if any(a == "--store" or a.startswith("--store=") for a in args or []):
        return False
    if isinstance(config, str):
        return False
    dep = (config or {}).get("deployment") or {}
    return "store" not in dep and "etcd" not in dep


def stores(*names):
    """Decorator: the test runs only in runs whose store mode is one of names
    (as a module's STORES, which by default is ("sqlite",))."""
    def mark(fn):
        fn.stores = names
        return fn
    return mark


# ---------------------------------------------------------------------------
# config stream subscriber (airgw-cfgwatch)


class Watcher:
    """airgw-cfgwatch connected to a daemon's config stream; its JSON lines
    are collected by a thread. Message types are upper-cased."""

    def __init__(self, daemon, node_id=None, revision=None, args=None, port=None):
        self.daemon = daemon
        self.port = port or daemon.config_port
        self.node_id = node_id or "e2e-" + secrets.token_hex(4)
        self.revision = revision
        self.args = list(args or [])
        self.msgs = []
        self.bad_lines = []
        self.cond = threading.Condition()
        self.proc = None
        self.eof = False

    def argv(self):
        a = [Settings.watch_bin(), "--connect", "127.0.0.1:%d" % self.port,
             "--node-id", self.node_id]
        if self.revision is not None:
            a += ["--revision", str(self.revision)]
        return a + self.args

    def start(self):
        self.dir = new_tmpdir("watch")
        self.stderr_path = os.path.join(self.dir, "stderr.log")
        self.err_f = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=self.err_f)
        _track(self.proc)
        self.thread = threading.Thread(target=self._reader, daemon=True)
        self.thread.start()
        return self

    def _reader(self):
        for line in self.proc.stdout:
            line = line.decode("utf-8", "replace").strip()
            if not line:
                continue
            try:
                m = json.loads(line)
                if isinstance(m, dict) and isinstance(m.get("type"), str):
                    m["type"] = m["type"].upper()
                else:
                    raise ValueError("no type")
            except ValueError:
                with self.cond:
                    self.bad_lines.append(line)
                continue
            with self.cond:
                self.msgs.append(m)
                self.cond.notify_all()
        with self.cond:
            self.eof = True
            self.cond.notify_all()

    def stderr(self):
        return read_text(self.stderr_path)

    def describe(self, n=8):
        with self.cond:
            last = self.msgs[-n:]
            count = len(self.msgs)
        return "cfgwatch %s: %d messages; last: %s; stderr: %s" % (
            self.node_id, count, _short([{k: v for k, v in m.items() if k != "value"}
                                         for m in last], 700),
            _short(self.stderr().strip(), 300))

    def wait_for(self, pred, timeout=None, what="message", start=0):
        """Waits for a message (index >= start) satisfying pred; returns
        (index, msg)."""
        timeout = T(timeout or 5)
        end = time.monotonic() + timeout
        i = start
        with self.cond:
            while True:
                while i < len(self.msgs):
                    if pred(self.msgs[i]):
                        return i, self.msgs[i]
                    i += 1
                left = end - time.monotonic()
                if left <= 0 or self.eof:
                    break
                self.cond.wait(min(left, 0.1))
        raise Fail("no %s within %.1fs (%s)" % (what, timeout, self.describe()))

    def wait_type(self, typ, timeout=None, start=0):
        return self.wait_for(lambda m: m["type"] == typ, timeout, typ, start)[1]

    def wait_count(self, n, timeout=None):
        timeout = T(timeout or 5)
        end = time.monotonic() + timeout
        with self.cond:
            while len(self.msgs) < n and not self.eof:
                left = end - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(min(left, 0.1))
            if len(self.msgs) < n:
                raise Fail("expected %d messages within %.1fs (%s)" % (
                    n, timeout, self.describe()))
            return list(self.msgs)

    def snapshot(self, timeout=None):
        """Waits for SNAPSHOT_END; returns (begin, [PUT...], end, index_after)."""
        i_end, end = self.wait_for(lambda m: m["type"] == "SNAPSHOT_END", timeout,
                                   "SNAPSHOT_END")
        with self.cond:
            msgs = self.msgs[:i_end + 1]
        if msgs[0]["type"] != "SNAPSHOT_BEGIN":
            raise Fail("first message is %s, expected SNAPSHOT_BEGIN (%s)" % (
                msgs[0]["type"], self.describe()))
        puts = [m for m in msgs[1:-1] if m["type"] not in ("PING", "PONG")]
        return msgs[0], puts, end, i_end + 1

    def data_msgs(self, start=0):
        """Messages from index start on, without PING/PONG."""
        with self.cond:
            return [m for m in self.msgs[start:] if m["type"] not in ("PING", "PONG")]

    def exited(self):
        return self.proc.poll() is not None

    def wait_exit(self, timeout):
        try:
            return self.proc.wait(timeout=T(timeout))
        except subprocess.TimeoutExpired:
            return None

    def stop(self):
        if self.proc is None:
            return
        end_process(self.proc, T(3))
        close_files(self.err_f)
        self.thread.join(timeout=2)


# ---------------------------------------------------------------------------
# per-test context


class ModuleState:
    def __init__(self, name):
        self.name = name
        self.shared = {}  # name -> Daemon


class Ctx:
    def __init__(self, mod):
        self.mod = mod
        self.daemons = []
        self.watchers = []
        self.used_shared = []

    def daemon(self, start=True, **opts):
        d = Daemon(**opts)
        self.daemons.append(d)
        if start:
            d.start()
        return d

    def shared(self, name="default", **opts):
        d = self.mod.shared.get(name)
        if d is None:
            d = Daemon(name="shared-" + name, **opts)
            self.mod.shared[name] = d
            d.start()
        if d not in self.used_shared:
            self.used_shared.append(d)
        if not d.running():
            raise Fail("shared daemon %s is not running (exit %s)" % (name, d.proc.returncode))
        return d

    def use_shared(self, *objs):
        """Marks processes the module shares (kept in ctx.mod.shared) as used
        by this test (their logs go in its diagnostics); Fail when one is not
        running."""
        for x in objs:
            if x not in self.used_shared:
                self.used_shared.append(x)
            if not x.running():
                raise Fail("shared %s is not running" % x.name)

    def watch(self, daemon, start=True, **opts):
        w = Watcher(daemon, **opts)
        self.watchers.append(w)
        if start:
            w.start()
        return w

    def tmpdir(self):
        return new_tmpdir("scratch")

    def run(self, argv, timeout=10, cwd=None, env=None):
        rc, out, err, late = run_to_end(argv, T(timeout), cwd=cwd or self.tmpdir(), env=env)
        if late:
            raise Fail("%s did not exit within %.0fs" % (" ".join(argv[:3]), T(timeout)))
        return rc, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")

    def finish(self):
        """Stops what the test started; returns a list of failure strings."""
        problems = []
        for w in self.watchers:
            try:
                w.stop()
            except Exception as e:  # noqa: BLE001
                problems.append("stopping cfgwatch: %s" % e)
        # Stable: what has stop_last (an etcd) goes after the daemons using it.
        for d in sorted(self.daemons, key=lambda d: getattr(d, "stop_last", False)):
            if d.proc is not None and not d.stop_checked:
                try:
                    d.stop()
                except Fail as e:
                    problems.append(str(e))
        return problems

    def diagnostics(self):
        out = []
        for d in self.daemons + self.used_shared:
            if d.stderr_path:
                where = " [%s]" % d.stderr_path if Settings.keep else ""
                out.append("--- %s stderr (tail)%s" % (d.name, where))
                out.extend("    " + ln for ln in d.tail())
        for w in self.watchers:
            err = w.stderr().strip()
            if err:
                out.append("--- cfgwatch %s stderr (tail)" % w.node_id)
                out.extend("    " + ln for ln in err.splitlines()[-8:])
        return out


def finish_module(mod):
    """Stops the module's shared daemons; returns [(name, problem)]."""
    problems = []
    for name, d in sorted(mod.shared.items(), key=lambda nd: getattr(nd[1], "stop_last", False)):
        if d.proc is not None and not d.stop_checked:
            try:
                d.stop()
            except Fail as e:
                problems.append((d, str(e)))
    return problems


# ---------------------------------------------------------------------------
# shared fixtures

# A self-signed certificate for test.example.com (RSA 2048, valid to 2126).
TEST_CERT = """-----BEGIN CERTIFICATE-----
MIIDNjCCAh6gAwIBAgIUWl6JGJPlMYk/HCl0bwfl7jOlwLcwDQYJKoZIhvcNAQEL
BQAwGzEZMBcGA1UEAwwQdGVzdC5leGFtcGxlLmNvbTAgFw0yNjExMjIwODI2NTJa
GA8yMTI2MTAyOTA4MjY1MlowGzEZMBcGA1UEAwwQdGVzdC5leGFtcGxlLmNvbTCC
ASIwDQYJKoZIhvcNAQEBBQADggEPADCCAQoCggEBAPsAebgDpd2hh2pJ3eHGOFEt
RmezQRRGgebLcEFse02vr/fnpwpEQSWTplhL/RRpQDv7xmX4jJ/WoDxPYF0vCMK9
Y+Y+Ki+O1tv4BrTH1otgw0U58sP4jTkeTeHYF8B/P1hrSvglDeIU2CEU1qRKTBRx
TtqxgGC7csjLkU5K+pN4XKh7Ebjw9Wp+WXUPHCZrMBMplEk9WwcS1SZ6lvCETo7s
LCOY9LEF3XZ46d35LwNpA7q2t2aFKheLiO23xU8TflGGHj97JvV0byJCy6WVRSM4
kqHdqJTj+jrVVDmpCQ0KPQ0ifnqrp0p5v5Wlq+cKN2Dhbvjj9wu4SpVFYVd9g2UC
AwEAAaNwMG4wHQYDVR0OBBYEFPsB/3BiLD/eJbqdzIF/kfnZH0F6MB8GA1UdIwQY
MBaAFPsB/3BiLD/eJbqdzIF/kfnZH0F6MA8GA1UdEwEB/wQFMAMBAf8wGwYDVR0R
BBQwEoIQdGVzdC5leGFtcGxlLmNvbTANBgkqhkiG9w0BAQsFAAOCAQEAp/CusQyY
XDtaaGgwTU9ahGBZ+mCWkV1G6kdHfOhz0ebUOhhNyhh3yoorRmL3ijcXDJ2druuk
Pl4i7VuWsbbw9yGl1VBYGt4OPaJmc1R2Z7wNPWXuBJ4NrElGBtjW3rPMUk/v0N+T
Y6U9pOz0FgFNMoGxllZcPaotTolvSNxyAKAG0x+gfOErnPoDqoElT11UCzsvRUT4
tFfEKVzqRek6kE87CSvbjB5AHSgfNszQxMcJKTJ1YwzcFo19EEKF9RNtxKwSapLE
we1czcPDeUMRxkwuxJe2szwxGIZniSK7VeQNWSIAFC38vmNavDBt7zIivZaHNktE
3DPC9YRQtgcjtQ==
-----END CERTIFICATE-----
"""
TEST_KEY = """-----BEGIN PRIVATE KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQD7AHm4A6XdoYdq
Sd3hxjhRLUZns0EURoHmy3BBbHtNr6/356cKREElk6ZYS/0UaUA7+8Zl+Iyf1qA8
T2BdLwjCvWPmPiovjtbb+Aa0x9aLYMNFOfLD+I05Hk3h2BfAfz9Ya0r4JQ3iFNgh
FNakSkwUcU7asYBgu3LIy5FOSvqTeFyoexG48PVqfll1DxwmazATKZRJPVsHEtUm
epbwhE6O7CwjmPSxBd12eOnd+S8DaQO6trdmhSoXi4jtt8VPE35Rhh4/eyb1dG8i
QsullUUjOJKh3aiU4/o61VQ5qQkNCj0NIn56q6dKeb+VpavnCjdg4W744/cLuEqV
RWFXfYNlAgMBAAECggEAXDGog7aTTfzuyFOpdCxisy52FdD5roDXZfaDnQRDph1J
/TzRViwL4cmB6BzBMKYYOfAYx4ur22nyITTmqFOGXEFEWGWtCRrmQJWxoOVmIHvC
PcMzMFgzRy+iW7oLv2D923RNbSfvGYOef0gwLtg7aabU1+8qwF0ZpDdhf+h6cX+i
D6Y50Evy1AIxg4uikxl+PGy09yL+K+7inTF/qDquehgnm4MFQHCFGsAJJVnilELg
Avi8G3hyicUwVXBAeqrkj393rC5UfoI7RKuhNGt1v+WDgoeLyrYhWv281gUNXx1b
hb+IsLywDWIJMXwtIZ31k/PNcrwsmOFXQOh68vzlYQKBgQD/r5Lh01FalyKETxLb
LHehYCW8DlJe4tr88bwq4TdcOijrVLpSHSKIjmjnabKbacshnUN0PuMvZe8YM/W7
JF44F7tc01TmTpYWVOO0AEtOrzmJFZgYVyxxk1Iua21JiMMgCFv+k3BHpLkGG7xM
4Xdimi8hlPDT5Ioh+h9RMZL4JwKBgQD7T22ouTyKZ+/PTVJfcqJLK16F6zM+rxjO
driACOUUe1FQw4a9xBDf46s8VckWTLuzQolOrkNO+4v/dW8cV6216Godm7q05vIm
s/Hf60IykVBAKujuZgYEhCEjuUi6n3lICP8toT2Tx0BbV6cx9C9MYCmm6HvzM0iI
Ci2t2JTzkwKBgQCknJPTAeqhiSX2yrXYF5PZeH4yyYGshx73tGYxsRekL+mCQOVH
0mwWQKE3Q2xy9DSMKqRv5cD8FgNNsL4mwu5J7LV6uLAzKiskq3iBvaK+QL+pCxcF
rLH3WSKSsiUFL6B4MgmQJ7ok1d8tGJQtZwcmmx923l4B/WQVJeQdsO3vBwKBgEEH
Fnr4I4A00Mq1WUE1amVE/Zptd78ak7Ko6ajHpG8eUbYyQeVMnIkyYhako/nPNSp3
Zwwi72u6j0k02+FblqlhUEQFDdTNhY8aNNYaC/EFxNw1vjwhziDRB7o0sWsI5NsM
6OqntEVO44o/LhYw9yQuJdj4g0o01OnOqG85gaFdAoGAQY4luXtdGpNkuMW22XNR
7YmipL44YuJQH7IstOO/Nj1oxqBphQWkFtfJErAurzNO+b8Dm4B2Tl5sNezI4FRA
29FSktO3KgzV5tHGdvE2b/oUjJb1CQDGvu9I67Ird0owZQ7mX2DI7m97aLhVXfxc
drP7CrwXiufosXswGboeUUA=
-----END PRIVATE KEY-----
"""

KINDS = {
    # collection: (kind name, POST allowed, PATCH allowed)
    "routes": ("route", True, True),
    "services": ("service", True, True),
    "upstreams": ("upstream", True, True),
    "stream_routes": ("stream_route", True, False),
    "ssls": ("ssl", True, True),
    "consumers": ("consumer", False, False),
    "global_rules": ("global_rule", False, True),
    "plugin_configs": ("plugin_config", False, True),
}


def upstream_conf(nodes=None):
    return {"type": "roundrobin", "nodes": nodes or {"127.0.0.1:1980": 1}}


def minimal(coll, tag="x"):
    """A minimal valid object of a collection."""
    if coll == "routes":
        return {"uri": "/" + tag, "upstream": upstream_conf()}
    if coll == "services":
        return {"upstream": upstream_conf()}
    if coll == "upstreams":
        return upstream_conf()
    if coll == "stream_routes":
        return {"server_port": 9100, "upstream": upstream_conf()}
    if coll == "ssls":
        return {"cert": TEST_CERT, "key": TEST_KEY, "snis": ["test.example.com"]}
    if coll == "consumers":
        return {"username": tag.replace("-", "_")}
    if coll == "global_rules":
        return {"plugins": {"prometheus": {}}}
    if coll == "plugin_configs":
        return {"plugins": {"limit-count": {"count": 10, "time_window": 60}}}
    raise KeyError(coll)


def uid(prefix="t"):
    return "%s-%s" % (prefix, secrets.token_hex(4))
