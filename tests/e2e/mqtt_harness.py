"""
Helpers for the MQTT end-to-end tests (tests/e2e/test_dp_mqtt.py), on top of
harness.py and dp_harness.py (Python 3 standard library only).

  Broker(name)           a real mosquitto (`mosquitto -c CONF`, `listener PORT
                         127.0.0.1`, `allow_anonymous true`, every log type to
                         a file) on a free port, stopped by its pid. Its log
                         tells which client ids connected to it and when a
                         subscription was acknowledged.
  new_broker(ctx, name)  a broker stopped at the end of the test
  shared_brokers(ctx, *b)  brokers shared by a module's tests
  mqtt_dp(ctx, cp, ...)  a data plane (dp_harness.DataPlane) with stream
                         listeners (--stream-listen, free ports in
                         .stream_ports; tls=True: one --stream-tls-listen
                         more, last), stopped at the end of the test
  pub(...)               one real `mosquitto_pub` run
  Sub(...)               a real `mosquitto_sub` in the background; its lines
                         collected by a thread
  RawMqtt(port, ...)     a minimal MQTT client over a raw socket: CONNECT and
                         its exact CONNACK bytes, SUBSCRIBE, PUBLISH (QoS 0),
                         PINGREQ
  connect_packet(...)    CONNECT bytes for 3.1 / 3.1.1 / 5.0 (or broken ones)
  exchange(port, bytes)  sends bytes on a raw socket and reads until the peer
                         closes: (bytes, "eof" | "reset" | "timeout")
  parse_connack(bytes)   (level form, code) of a CONNACK
  sessions_by_worker(dp, port, socks)  which worker holds each proxied
                         connection (from /proc/net/tcp and /proc/PID/fd)

Client-side objects (Sub, RawMqtt) registered with track(ctx, obj) are closed
first at the end of the test, before the data plane is stopped (an open MQTT
session would otherwise hold a SIGTERM drain for its whole drain timeout).
"""

import os
import re
import secrets
import shutil
import socket
import struct
import subprocess
import threading
import time

from harness import (read_text, Fail, T, _short, _track, close_files, end_process,
                     free_port, new_tmpdir, run_to_end, wait_until)
from dp_harness import AcceptLoop, DataPlane, recv_all

# ---------------------------------------------------------------------------
# the broker


def mosquitto_bin():
    """The mosquitto binary (Debian puts it in /usr/sbin, often not on a
    user's PATH); Fail when the mosquitto / mosquitto-clients packages are
    missing."""
    b = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None)
    missing = [n for n in ("mosquitto_pub", "mosquitto_sub") if not shutil.which(n)]
    if not b or missing:
        raise Fail("missing %s: install Debian's mosquitto and mosquitto-clients" % (
            ", ".join((["mosquitto"] if not b else []) + missing)))
    return b

CONNECTED_RE = re.compile(r"New client connected from [0-9.:\[\]a-f]+ as (\S+) \(p(\d+)")


class Broker:
    """One mosquitto process on 127.0.0.1:port."""

    def __init__(self, name="broker", port=None):
        self.name = name
        self.port = port or free_port()
        self.dir = new_tmpdir("mosq-" + name)
        self.conf_path = os.path.join(self.dir, "mosquitto.conf")
        self.log_path = os.path.join(self.dir, "mosquitto.log")
        self.stderr_path = self.log_path  # for the harness's diagnostics
        self.proc = None
        self.stop_checked = True
        self.starts = 0

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def conf(self, before="", listener="", persistence="persistence false\n"):
        """The configuration file: before, then the listener on self.port
        and the options of that listener, then the common ones (every log
        type to stderr, anonymous clients) and the persistence ones.
        Subclasses change it through the three parts."""
        return ("%slistener %d 127.0.0.1\n%sallow_anonymous true\nlog_dest stderr\n"
                "log_type all\nconnection_messages true\n%s" % (before, self.port, listener,
                                                                 persistence))

    def start(self):
        with open(self.conf_path, "w") as f:
            f.write(self.conf())
        self.starts += 1
        self.err_f = open(self.log_path, "ab")
        self.proc = subprocess.Popen([mosquitto_bin(), "-c", self.conf_path],
                                     stdin=subprocess.DEVNULL, stdout=self.err_f,
                                     stderr=self.err_f)
        _track(self.proc)
        self.stop_checked = False
        # Wait for the log line rather than probing the port (a probe would
        # show up as a connection in the log).
        rx = re.compile(r"mosquitto version \S+ running")
        ok = wait_until(lambda: len(rx.findall(self.log())) >= self.starts or
                        self.proc.poll() is not None, T(5))
        if not ok or self.proc.poll() is not None:
            tail = "\n".join(self.tail(10))
            self.stop()
            raise Fail("mosquitto %s did not start on port %d: %s" % (self.name, self.port, tail))
        return self

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        """SIGTERM by pid (SIGKILL after 5 s); never raises."""
        self.stop_checked = True
        if self.proc is None:
            return None
        rc = end_process(self.proc, 5)
        close_files(self.err_f)
        return rc

    def log(self):
        return read_text(self.log_path)

    def tail(self, n=12):
        return self.log().splitlines()[-n:]

    def mark(self):
        return len(self.log())

    def connected(self, since=0):
        """[(client id, protocol p-number)] of the clients that connected
        (mosquitto: p1 = 3.1, p2 = 3.1.1, p5 = 5.0)."""
        return [(m.group(1), int(m.group(2))) for m in CONNECTED_RE.finditer(self.log(), since)]

    def ids(self, since=0):
        return [cid for cid, _ in self.connected(since)]

    def has_client(self, cid, since=0):
        return cid in self.ids(since)

    def suback_sent(self, cid, since=0):
        return ("Sending SUBACK to %s\n" % cid) in self.log()[since:]


def new_broker(ctx, name="broker"):
    b = Broker(name)
    ctx.daemons.append(b)
    return b.start()


def shared_brokers(ctx, *brokers):
    """Starts brokers (Broker objects) as processes the module shares
    ("broker-NAME" in ctx.mod.shared, stopped with the module); returns
    them."""
    for b in brokers:
        ctx.mod.shared["broker-" + b.name] = b
        b.start()
    return brokers


def broker_of(brokers, cid, since=None, timeout=3):
    """The one broker whose log shows client cid connected (waiting up to
    timeout); Fail when none or several do."""
    since = since or {}

    def which():
        return [b for b in brokers if b.has_client(cid, since.get(b.name, 0))]
    found = wait_until(which, T(timeout))
    if not found:
        raise Fail("client id %r connected to no broker (%s)" % (
            cid, ", ".join("%s: %s" % (b.name, _short(b.ids(since.get(b.name, 0))[-10:], 300))
                           for b in brokers)))
    if len(found) > 1:
        raise Fail("client id %r connected to several brokers: %s" % (
            cid, [b.name for b in found]))
    return found[0]


def marks(brokers):
    return {b.name: b.mark() for b in brokers}


# ---------------------------------------------------------------------------
# the data plane with stream listeners

STREAM_LISTEN_RE = re.compile(r"stream listening on 127\.0\.0\.1:(\d+)")


def mqtt_dp(ctx, cp=None, name="mq", streams=1, workers=2, start=True, args=None, shared=None,
            tls=False, **kw):
    """A data plane with `streams` stream listeners on free ports
    (--stream-listen 127.0.0.1:PORT each), in .stream_ports. tls: one more,
    --stream-tls-listen, last in .stream_ports. shared: a module-level name
    (stopped with the module) instead of the test."""
    ports = [free_port() for _ in range(streams + (1 if tls else 0))]
    a = list(args or [])
    if tls:
        a += ["--stream-tls-listen", "127.0.0.1:%d" % ports[-1]]
    for p in ports[:streams]:
        a += ["--stream-listen", "127.0.0.1:%d" % p]
    d = DataPlane(cp, name=name, workers=workers, args=a, **kw)
    d.stream_ports = ports
    if shared:
        ctx.mod.shared[shared] = d
    else:
        ctx.daemons.append(d)
    if start:
        d.start()
        if streams:
            wait_stream_listeners(d, ports[:streams])
        if tls:
            tls_line = "stream (tls) listening on 127.0.0.1:%d" % ports[-1]
            if not wait_until(lambda: tls_line in d.stderr(), T(10)):
                raise Fail("no TLS stream listener: %s" % d.stderr()[-1000:])
    return d


def wait_stream_listeners(d, ports=None, timeout=10):
    ports = ports or d.stream_ports

    def ok():
        have = {int(p) for p in STREAM_LISTEN_RE.findall(d.stderr())}
        return set(ports) <= have
    if not wait_until(ok, T(timeout)):
        raise Fail("%s: no 'stream listening on' line for %s within %.0fs: %s" % (
            d.name, ports, T(timeout), _short("\n".join(d.tail(15)), 1500)))


# ---------------------------------------------------------------------------
# client-side objects closed before the daemons


class _Tracked:
    """Adapter: Ctx.finish stops ctx.watchers before ctx.daemons."""

    def __init__(self, obj):
        self.obj = obj
        self.node_id = getattr(obj, "name", type(obj).__name__)

    def stop(self):
        self.obj.close()

    def stderr(self):
        f = getattr(self.obj, "stderr", None)
        return f() if f else ""


def track(ctx, obj):
    ctx.watchers.append(_Tracked(obj))
    return obj


# ---------------------------------------------------------------------------
# real clients: mosquitto_pub / mosquitto_sub

VERSIONS = {3: "mqttv31", 4: "mqttv311", 5: "mqttv5"}


def pub(port, topic, message=None, level=4, cid=None, retain=False, qos=0, file=None,
        timeout=10, bind=None, extra=None):
    """Runs mosquitto_pub once; returns (rc, stdout+stderr text)."""
    argv = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-t", topic,
            "-V", VERSIONS[level], "-q", str(qos)]
    if cid:
        argv += ["-i", cid]
    if file is not None:
        argv += ["-f", file]
    else:
        argv += ["-m", message if message is not None else "m"]
    if retain:
        argv += ["-r"]
    if bind:
        argv += ["-A", bind]
    argv += extra or []
    rc, out, _, late = run_to_end(argv, T(timeout), stderr=subprocess.STDOUT)
    if late:
        return -999, "mosquitto_pub did not exit within %.0fs: %s" % (
            T(timeout), out.decode("utf-8", "replace"))
    return rc, out.decode("utf-8", "replace")


def must_pub(port, topic, message, **kw):
    rc, out = pub(port, topic, message, **kw)
    if rc != 0:
        raise Fail("mosquitto_pub -p %d -t %s (%s) failed: rc %d: %s" % (
            port, topic, VERSIONS[kw.get("level", 4)], rc, out.strip()))


class Sub:
    """mosquitto_sub in the background, each message printed as one line
    "TOPIC PAYLOAD" (-v). count/wait: -C / -W."""

    def __init__(self, port, topic, level=4, cid=None, count=None, wait=None, raw=False,
                 extra=None):
        self.cid = cid or "sub-" + secrets.token_hex(4)
        self.name = "mosquitto_sub " + self.cid
        self.raw = raw
        argv = ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-t", topic,
                "-V", VERSIONS[level], "-i", self.cid]
        if raw:
            argv += ["-N"]  # payload bytes only
        else:
            argv += ["-v"]
        if count:
            argv += ["-C", str(count)]
        if wait:
            argv += ["-W", str(int(wait))]
        argv += extra or []
        self.dir = new_tmpdir("sub")
        self.err_path = os.path.join(self.dir, "stderr")
        self.err_f = open(self.err_path, "wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=self.err_f)
        _track(self.proc)
        self.out = bytearray()
        self.cond = threading.Condition()
        self.eof = False
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()

    def _read(self):
        while True:
            d = self.proc.stdout.read1(65536)
            if not d:
                break
            with self.cond:
                self.out += d
                self.cond.notify_all()
        with self.cond:
            self.eof = True
            self.cond.notify_all()

    def lines(self):
        with self.cond:
            return bytes(self.out).decode("utf-8", "replace").splitlines()

    def wait_lines(self, n, timeout=5):
        end = time.monotonic() + T(timeout)
        with self.cond:
            while True:
                have = bytes(self.out).decode("utf-8", "replace").splitlines()
                if len(have) >= n or self.eof:
                    return have
                left = end - time.monotonic()
                if left <= 0:
                    return have
                self.cond.wait(min(left, 0.1))

    def wait_bytes(self, n, timeout=10):
        end = time.monotonic() + T(timeout)
        with self.cond:
            while len(self.out) < n and not self.eof:
                left = end - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(min(left, 0.1))
            return bytes(self.out)

    def wait_exit(self, timeout=5):
        """The exit status (None if still running after timeout), once
        everything it printed has been read."""
        try:
            rc = self.proc.wait(timeout=T(timeout))
        except subprocess.TimeoutExpired:
            return None
        self.t.join(timeout=T(5))
        return rc

    def stderr(self):
        return read_text(self.err_path)

    def running(self):
        return self.proc.poll() is None

    def close(self):
        end_process(self.proc, 3)
        self.t.join(timeout=2)
        close_files(self.err_f)


def wait_subscribed(brokers, cid, timeout=5, since=None):
    """Waits until one of the brokers logged the SUBACK to client cid."""
    since = since or {}
    if not wait_until(lambda: any(b.suback_sent(cid, since.get(b.name, 0)) for b in brokers),
                      T(timeout)):
        raise Fail("no broker acknowledged the subscription of %r within %.0fs (%s)" % (
            cid, T(timeout), "; ".join("%s: %s" % (b.name, _short("\n".join(b.tail(4)), 300))
                                       for b in brokers)))


# ---------------------------------------------------------------------------
# MQTT packets


def varint(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def mstr(s):
    if isinstance(s, str):
        s = s.encode()
    return struct.pack(">H", len(s)) + s


def packet(first, body):
    return bytes([first]) + varint(len(body)) + body


def connect_packet(cid="c", level=4, name=None, flags=None, keepalive=60, props=b"",
                   username=None, password=None, will=None):
    """A CONNECT. level 3 -> "MQIsdp", 4/5 -> "MQTT" unless name is given;
    5.0 gets a property block (props, raw, default empty). flags default:
    clean session + the username/password/will bits as given."""
    if name is None:
        name = "MQIsdp" if level == 3 else "MQTT"
    if flags is None:
        flags = 0x02
        if username is not None:
            flags |= 0x80
        if password is not None:
            flags |= 0x40
        if will is not None:
            flags |= 0x04
    vh = mstr(name) + bytes([level, flags]) + struct.pack(">H", keepalive)
    if level >= 5:
        vh += varint(len(props)) + props
    pl = mstr(cid)
    if will is not None:
        topic, payload = will
        if level >= 5:
            pl += varint(0)
        pl += mstr(topic) + mstr(payload)
    if username is not None:
        pl += mstr(username)
    if password is not None:
        pl += mstr(password)
    return packet(0x10, vh + pl)


def subscribe_packet(topic, mid=1, level=4, qos=0):
    body = struct.pack(">H", mid)
    if level >= 5:
        body += varint(0)
    body += mstr(topic) + bytes([qos])
    return packet(0x82, body)


def publish_packet(topic, payload, level=4, retain=False):
    if isinstance(payload, str):
        payload = payload.encode()
    body = mstr(topic)
    if level >= 5:
        body += varint(0)
    return packet(0x30 | (1 if retain else 0), body + payload)


PINGREQ = b"\xc0\x00"
DISCONNECT = b"\xe0\x00"


def parse_connack(data):
    """(form, code) of a CONNACK at the start of data: form 3 for the 3.x
    shape (20 02 sp rc), 5 for the 5.0 shape (20 len sp reason proplen ...);
    None when data is not a CONNACK."""
    if len(data) < 4 or data[0] != 0x20:
        return None
    if data[1] == 2 and len(data) >= 4:
        return 3, data[3]
    return 5, data[3]


class PacketReader:
    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout()
        self.sock.settimeout(left)
        d = self.sock.recv(65536)
        if not d:
            raise EOFError()
        self.buf += d

    def read(self, timeout=5, scaled=True):
        """One packet as (first byte, body); raises EOFError on EOF,
        socket.timeout, ConnectionResetError. timeout is scaled by T()
        unless scaled=False."""
        deadline = time.monotonic() + (T(timeout) if scaled else timeout)
        while True:
            if len(self.buf) >= 2:
                mult, n, i = 1, 0, 1
                complete = False
                while i < len(self.buf) and i <= 4:
                    b = self.buf[i]
                    n += (b & 0x7f) * mult
                    mult *= 128
                    i += 1
                    if not b & 0x80:
                        complete = True
                        break
                if complete and len(self.buf) >= i + n:
                    first, body = self.buf[0], self.buf[i:i + n]
                    self.buf = self.buf[i + n:]
                    return first, body
            self._fill(deadline)


def raw_connect(port, timeout=5, bind=None):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(T(timeout))
    if bind:
        s.bind((bind, 0))
    s.connect(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_until_close(s, timeout=5):
    """Reads until the peer closes: (bytes, "eof" | "reset" | "timeout")."""
    return recv_all(s, timeout, limit=float("inf"))


def exchange(port, data, timeout=5, shut_wr=False, bind=None):
    """Connects, sends data, reads until the peer closes. Returns (bytes
    received, how, seconds until the close)."""
    s = raw_connect(port, timeout, bind=bind)
    try:
        t0 = time.monotonic()
        if data:
            try:
                s.sendall(data)
            except (BrokenPipeError, ConnectionResetError):
                pass
        if shut_wr:
            s.shutdown(socket.SHUT_WR)
        got, how = read_until_close(s, timeout)
        return got, how, time.monotonic() - t0
    finally:
        s.close()


class RawMqtt:
    """A minimal MQTT client (QoS 0) on a raw socket. .connack holds the
    first packet's bytes as received ((form, code) in .code)."""

    def __init__(self, port, cid=None, level=4, timeout=5, bind=None, connect=True):
        self.port = port
        self.cid = cid if cid is not None else "raw-" + secrets.token_hex(4)
        self.name = "raw client " + self.cid
        self.level = level
        self.timeout = timeout
        self.sock = raw_connect(port, timeout, bind=bind)
        self.local_port = self.sock.getsockname()[1]
        self.rd = PacketReader(self.sock)
        self.connack = None
        self.code = None
        self.closed = False
        if connect:
            self.sock.sendall(connect_packet(self.cid, level))
            first, body = self.rd.read(timeout)
            self.connack = bytes([first]) + varint(len(body)) + body
            self.code = parse_connack(self.connack)

    @property
    def ok(self):
        return self.code is not None and self.code[1] == 0

    def send(self, data):
        self.sock.sendall(data)

    def subscribe(self, topic, timeout=5):
        self.sock.sendall(subscribe_packet(topic, level=self.level))
        while True:
            first, body = self.rd.read(timeout)
            if first == 0x90:
                return body

    def publish(self, topic, payload, retain=False):
        self.sock.sendall(publish_packet(topic, payload, level=self.level, retain=retain))

    def recv_publish(self, timeout=5):
        """(topic, payload) of the next PUBLISH, or None on timeout."""
        try:
            while True:
                first, body = self.rd.read(timeout)
                if first & 0xf0 == 0x30:
                    tl = struct.unpack(">H", body[:2])[0]
                    topic = body[2:2 + tl].decode()
                    p = 2 + tl
                    if first & 0x06:
                        p += 2
                    if self.level >= 5:
                        n, mult = 0, 1
                        while True:
                            b = body[p]
                            p += 1
                            n += (b & 0x7f) * mult
                            mult *= 128
                            if not b & 0x80:
                                break
                        p += n
                    return topic, body[p:]
        except socket.timeout:
            return None

    def publishes_before_pingresp(self, timeout=5):
        """Sends PINGREQ and returns the [(topic, payload)] of the PUBLISHes
        that arrive before its PINGRESP (a broker sends a subscription's
        retained messages before it handles the next packet)."""
        self.sock.sendall(PINGREQ)
        out = []
        while True:
            first, body = self.rd.read(timeout)
            if first == 0xd0:
                return out
            if first & 0xf0 == 0x30:
                self.rd.buf = bytes([first]) + varint(len(body)) + body + self.rd.buf
                out.append(self.recv_publish(timeout))

    def ping(self, timeout=3):
        """True when a PINGRESP comes back."""
        try:
            self.sock.sendall(PINGREQ)
            while True:
                first, _ = self.rd.read(timeout)
                if first == 0xd0:
                    return True
        except (OSError, EOFError):
            return False

    def wait_closed(self, timeout=3):
        """True when the connection gets EOF/reset within timeout (pending
        packets are skipped)."""
        end = time.monotonic() + T(timeout)
        try:
            while True:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self.rd.read(left, scaled=False)
        except (EOFError, ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def disconnect(self):
        try:
            self.sock.sendall(DISCONNECT)
        except OSError:
            pass
        self.close()

    def close(self):
        if not self.closed:
            self.closed = True
            try:
                self.sock.close()
            except OSError:
                pass


def probe(port, cid=None, level=4, timeout=3, bind=None):
    """One CONNECT through port: the (form, code) of the answer, or None
    when the connection closed without a CONNACK. Disconnects cleanly."""
    try:
        c = RawMqtt(port, cid, level, timeout=timeout, bind=bind)
    except (EOFError, ConnectionResetError, ConnectionRefusedError, socket.timeout):
        return None
    c.disconnect()
    return c.code


def wait_probe(port, pred, timeout=5, streak=6, level=4, what="route", cid_prefix="probe",
               bind=None):
    """Connects through port (each time a new client id cid_prefix-N) until
    pred(cid, code) holds `streak` times in a row (so every worker has the
    change). Returns the last cid."""
    end = time.monotonic() + T(timeout)
    ok = 0
    last = None
    while True:
        cid = "%s-%s" % (cid_prefix, secrets.token_hex(4))
        code = probe(port, cid, level, bind=bind)
        last = (cid, code)
        if pred(cid, code):
            ok += 1
            if ok >= streak:
                return cid
            continue
        ok = 0
        if time.monotonic() > end:
            raise Fail("port %d: %s not in effect within %.1fs (last probe: client %s -> %s)" % (
                port, what, T(timeout), last[0], last[1]))
        time.sleep(0.02)


# ---------------------------------------------------------------------------
# which worker holds a connection


def _tcp_inodes():
    """{(local port, remote port): inode} of 127.0.0.1 IPv4 TCP sockets."""
    out = {}
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for ln in f:
                parts = ln.split()
                lp = int(parts[1].split(":")[1], 16)
                rp = int(parts[2].split(":")[1], 16)
                out[(lp, rp)] = int(parts[9])
    except OSError:
        pass
    return out


def _socket_inodes(pid):
    out = set()
    d = "/proc/%d/fd" % pid
    try:
        names = os.listdir(d)
    except OSError:
        return out
    for n in names:
        try:
            link = os.readlink(os.path.join(d, n))
        except OSError:
            continue
        m = re.match(r"socket:\[(\d+)\]", link)
        if m:
            out.add(int(m.group(1)))
    return out


def sessions_by_worker(dp, port, clients):
    """{worker pid: [client]} for clients (objects with .local_port)
    connected to the data plane's stream port; a client no worker holds is
    under None."""
    inodes = _tcp_inodes()
    workers = {pid: _socket_inodes(pid) for pid in dp.children()}
    out = {}
    for c in clients:
        ino = inodes.get((port, c.local_port))
        owner = None
        for pid, s in workers.items():
            if ino is not None and ino in s:
                owner = pid
                break
        out.setdefault(owner, []).append(c)
    return out


# ---------------------------------------------------------------------------
# a plain TCP server for stream routes without mqtt-proxy


class EofReplyServer(AcceptLoop):
    """Accepts on 127.0.0.1; per connection reads until the client's FIN,
    then answers b"got N bytes" and closes (a half-close probe)."""

    def __init__(self):
        super().__init__(backlog=16)
        self.name = "eof-reply server :%d" % self.port

    def accepted(self, conn):
        threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, c):
        n = 0
        try:
            c.settimeout(10)
            while True:
                d = c.recv(65536)
                if not d:
                    break
                n += len(d)
            c.sendall(b"got %d bytes" % n)
        except OSError:
            pass
        finally:
            c.close()
