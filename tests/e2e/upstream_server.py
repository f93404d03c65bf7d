#!/usr/bin/env python3
"""
A small real HTTP/1.1 upstream for the data plane's end-to-end tests
(Python standard library only, one thread per connection).

  python3 upstream_server.py [--port P] [--host ADDR] [--name NAME]
                            [--delay-all S] [--idle-timeout S]

Listens on 127.0.0.1:P (or ADDR:P) (0, the default, picks a free port) and prints one
line "upstream NAME listening on 127.0.0.1:PORT" on stdout once it accepts.
Every response carries "X-Upstream: NAME". Requests on a connection are
served in order (keep-alive and pipelining work); HTTP/1.1 connections stay
open unless the client sends "Connection: close".

Paths (any method):

  /anything           echo: JSON {server, method, target, path, query, version,
                      headers (lower-case name -> value, repeats joined by
                      ", "), header_list ([name, value] as received), body
                      (text, when at most 64 KiB), body_length, body_sha256,
                      conn (this connection's number, from 1), conn_req (the
                      request's number on it, from 1), peer}
  /status/N           status N, echo body (none for 1xx/204/304)
  /delay/S            waits S seconds, then echo
  /slow/N/S           headers at once, then N lines of 10 bytes, S seconds apart
                      (Content-Length framing)
  /bytes/N            N bytes of pattern() (see below), streamed, Content-Length
  /chunked/N/SIZE     N chunks of SIZE bytes of pattern(), chunked encoding;
                      ?interval=S waits between chunks
  /upload             reads the whole body (Content-Length or chunked) without
                      keeping it; JSON {length, sha256, chunked, content_length}
  /ws                 WebSocket (RFC 6455): with "Upgrade: websocket" answers 101
                      and echoes every text/binary message, answers pings,
                      echoes a close; without it 426 with the echo body
  /close              reads the request, then closes without answering
  /close-mid          sends a head announcing 1000000 bytes, 1000 of them,
                      then resets the connection (SO_LINGER 0)
  /eof/N              N bytes of pattern() with neither Content-Length nor
                      chunked: the body ends when the connection closes
  /hang               reads the request and never answers (until the peer
                      closes, at most 120 s)
  /health             200 "ok" while healthy, 503 after /__health/fail
                      (counted apart: not in "requests")
  /__health/ok|fail   sets the health state
  /__mode/fail|ok     every counted request answers 500 (fail) or as usual (ok)
  /__stats            JSON {name, connections, requests, health_checks,
                      active_connections, in_flight (counted requests being
                      answered now), paths: {path: count}}
  /__reset            zeroes the counters

/__* requests and /health are not counted in "requests", and a connection
counts in "connections" once it carried one counted request.

With --delay-all S every counted request waits S seconds before its answer.
With --idle-timeout S a keep-alive connection idle for S seconds between two
requests is closed by the server (as many servers do).
"""

import argparse
import base64
import hashlib
import json
import os
import socket
import struct
import threading
import time
from urllib.parse import parse_qsl, urlsplit

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
BLOCK = 65536
_BASE = bytes((i * 131 + 7) % 251 for i in range(BLOCK))


def pattern_block(i):
    """Block i of the byte pattern: its index (8 bytes) then fixed bytes, so
    a lost, repeated or reordered block changes the digest."""
    return struct.pack(">Q", i) + _BASE[8:]


def pattern(n, start_block=0):
    """Yields the first n bytes of the pattern, in pieces of at most BLOCK."""
    i = start_block
    left = n
    while left > 0:
        b = pattern_block(i)
        if left < BLOCK:
            b = b[:left]
        yield b
        left -= len(b)
        i += 1


def pattern_sha256(n):
    h = hashlib.sha256()
    for b in pattern(n):
        h.update(b)
    return h.hexdigest()


class Closed(Exception):
    pass


class Reader:
    """Buffered reads from a socket."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()

    def fill(self, n=262144):
        d = self.sock.recv(n)
        if not d:
            raise Closed()
        self.buf += d

    def until(self, sep, limit):
        while True:
            i = self.buf.find(sep)
            if i >= 0:
                out = bytes(self.buf[:i])
                del self.buf[:i + len(sep)]
                return out
            if len(self.buf) > limit:
                raise ValueError("line too long")
            self.fill()

    def some(self, maxn):
        if not self.buf:
            self.fill()
        n = min(maxn, len(self.buf))
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def exact(self, n):
        while len(self.buf) < n:
            self.fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out


class HeadOnly:
    """A socket for the answer to HEAD: the head goes out, the body not."""

    def __init__(self, sock):
        self.sock = sock
        self.head_sent = False

    def sendall(self, data):
        if not self.head_sent:
            self.head_sent = True
            self.sock.sendall(data)

    def __getattr__(self, name):
        return getattr(self.sock, name)


class Server:
    def __init__(self, name, delay_all=0.0, idle_timeout=0.0):
        self.name = name
        self.delay_all = delay_all
        self.idle_timeout = idle_timeout
        self.lock = threading.Lock()
        self.healthy = True
        self.fail_all = False
        self.conn_seq = 0
        self.reset()

    def reset(self):
        with self.lock:
            self.connections = 0
            self.requests = 0
            self.health_checks = 0
            self.active = 0
            self.in_flight = 0
            self.paths = {}

    def stats(self):
        with self.lock:
            return {"name": self.name, "connections": self.connections,
                    "requests": self.requests, "health_checks": self.health_checks,
                    "active_connections": self.active, "in_flight": self.in_flight,
                    "paths": dict(self.paths)}

    # -- connection

    def serve(self, sock, peer):
        with self.lock:
            self.conn_seq += 1
            conn_no = self.conn_seq
        st = {"no": conn_no, "reqs": 0, "counted": False, "peer": "%s:%d" % peer}
        rd = Reader(sock)
        try:
            while True:
                if not self.one_request(sock, rd, st):
                    break
        except (Closed, ConnectionError, OSError, ValueError):
            pass
        finally:
            if st["counted"]:
                with self.lock:
                    self.active -= 1
            try:
                sock.close()
            except OSError:
                pass

    def one_request(self, sock, rd, st):
        st["in_flight"] = False
        try:
            return self.request(sock, rd, st)
        finally:
            if st["in_flight"]:
                with self.lock:
                    self.in_flight -= 1

    def request(self, sock, rd, st):
        if self.idle_timeout and st["reqs"] and not rd.buf:
            sock.settimeout(self.idle_timeout)
            try:
                rd.fill()
            except socket.timeout:
                return False
            sock.settimeout(None)
        line = rd.until(b"\r\n", 65536)
        while line == b"":  # tolerate empty lines between requests
            line = rd.until(b"\r\n", 65536)
        parts = line.decode("latin-1").split(" ")
        if len(parts) != 3:
            self.send(sock, 400, b'{"error":"bad request line"}', keep=False)
            return False
        method, target, version = parts
        hdr_list = []
        while True:
            h = rd.until(b"\r\n", 65536)
            if h == b"":
                break
            k, _, v = h.decode("latin-1").partition(":")
            hdr_list.append([k.strip(), v.strip()])
        headers = {}
        for k, v in hdr_list:
            lk = k.lower()
            headers[lk] = headers[lk] + ", " + v if lk in headers else v
        conn_hdr = headers.get("connection", "").lower()
        if version == "HTTP/1.0":
            keep = "keep-alive" in conn_hdr
        else:
            keep = "close" not in conn_hdr
        st["reqs"] += 1
        u = urlsplit(target)
        path = u.path
        query = dict(parse_qsl(u.query, keep_blank_values=True))
        counted = not (path.startswith("/__") or path == "/health")
        if counted:
            with self.lock:
                self.requests += 1
                self.in_flight += 1
                st["in_flight"] = True
                self.paths[path] = self.paths.get(path, 0) + 1
                if not st["counted"]:
                    st["counted"] = True
                    self.connections += 1
                    self.active += 1
        elif path == "/health":
            with self.lock:
                self.health_checks += 1

        if headers.get("expect", "").lower() == "100-continue":
            sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")

        # -- the request body
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        clen = headers.get("content-length")
        h = hashlib.sha256()
        keep_body = bytearray()
        body_len = 0

        def consume(piece):
            nonlocal body_len
            h.update(piece)
            body_len += len(piece)
            if len(keep_body) <= 65536:
                keep_body.extend(piece[:65537 - len(keep_body)])

        if chunked:
            while True:
                sz = rd.until(b"\r\n", 4096).split(b";")[0].strip()
                n = int(sz, 16)
                if n == 0:
                    while rd.until(b"\r\n", 65536) != b"":
                        pass  # trailers
                    break
                left = n
                while left:
                    piece = rd.some(min(left, 262144))
                    consume(piece)
                    left -= len(piece)
                rd.exact(2)
        elif clen is not None:
            left = int(clen)
            while left:
                piece = rd.some(min(left, 262144))
                consume(piece)
                left -= len(piece)

        if counted and self.delay_all:
            time.sleep(self.delay_all)

        info = {
            "server": self.name, "method": method, "target": target, "path": path,
            "query": query, "version": version, "headers": headers,
            "header_list": hdr_list, "body_length": body_len,
            "body_sha256": h.hexdigest(), "conn": st["no"], "conn_req": st["reqs"],
            "peer": st["peer"],
        }
        if body_len <= 65536:
            info["body"] = bytes(keep_body).decode("utf-8", "replace")

        seg = [s for s in path.split("/") if s]
        head = seg[0] if seg else ""
        if method == "HEAD":
            sock = HeadOnly(sock)

        if path == "/__stats":
            return self.send_json(sock, 200, self.stats(), keep)
        if path == "/__reset":
            self.reset()
            return self.send_json(sock, 200, {"reset": True}, keep)
        if path == "/__health/ok":
            self.healthy = True
            return self.send_json(sock, 200, {"healthy": True}, keep)
        if path == "/__health/fail":
            self.healthy = False
            return self.send_json(sock, 200, {"healthy": False}, keep)
        if path in ("/__mode/fail", "/__mode/ok"):
            self.fail_all = path == "/__mode/fail"
            return self.send_json(sock, 200, {"fail_all": self.fail_all}, keep)
        if counted and self.fail_all:
            return self.send_json(sock, 500, info, keep)
        if path == "/health":
            if self.healthy:
                return self.send(sock, 200, b"ok", keep, ctype="text/plain")
            return self.send(sock, 503, b"unhealthy", keep, ctype="text/plain")
        if head == "status" and len(seg) == 2:
            code = int(seg[1])
            if code < 200 or code in (204, 304):
                return self.send(sock, code, b"", keep, no_body=True)
            return self.send_json(sock, code, info, keep)
        if head == "delay" and len(seg) == 2:
            time.sleep(float(seg[1]))
            return self.send_json(sock, 200, info, keep)
        if head == "slow" and len(seg) == 3:
            n, iv = int(seg[1]), float(seg[2])
            self.head(sock, 200, {"Content-Length": str(10 * n), "Content-Type": "text/plain"},
                      keep)
            for i in range(n):
                if i:
                    time.sleep(iv)
                sock.sendall(b"line %04d\n" % i)
            return keep
        if head == "bytes" and len(seg) == 2:
            n = int(seg[1])
            self.head(sock, 200, {"Content-Length": str(n),
                                  "Content-Type": "application/octet-stream"}, keep)
            out = bytearray()
            for b in pattern(n):
                out += b
                if len(out) >= 262144:
                    sock.sendall(out)
                    out = bytearray()
            if out:
                sock.sendall(out)
            return keep
        if head == "chunked" and len(seg) == 3:
            n, size = int(seg[1]), int(seg[2])
            iv = float(query.get("interval", "0"))
            self.head(sock, 200, {"Transfer-Encoding": "chunked",
                                  "Content-Type": "application/octet-stream"}, keep)
            gen = pattern(n * size)
            buf = b"".join(gen)
            for i in range(n):
                if i and iv:
                    time.sleep(iv)
                piece = buf[i * size:(i + 1) * size]
                sock.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
            sock.sendall(b"0\r\n\r\n")
            return keep
        if path == "/upload":
            return self.send_json(sock, 200, {
                "server": self.name, "length": body_len, "sha256": h.hexdigest(),
                "chunked": chunked, "content_length": clen,
                "conn": st["no"], "conn_req": st["reqs"]}, keep)
        if path == "/ws":
            if "websocket" in headers.get("upgrade", "").lower() and \
                    "upgrade" in conn_hdr and "sec-websocket-key" in headers:
                self.websocket(sock, rd, headers)
                return False
            return self.send_json(sock, 426, info, keep)
        if head == "eof" and len(seg) == 2:
            n = int(seg[1])
            sock.sendall(("HTTP/1.1 200 OK\r\nX-Upstream: %s\r\n"
                          "Content-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
                          % self.name).encode())
            for b in pattern(n):
                sock.sendall(b)
            return False
        if path == "/close":
            return False
        if path == "/close-mid":
            sock.sendall(b"HTTP/1.1 200 OK\r\nX-Upstream: " + self.name.encode() +
                         b"\r\nContent-Type: application/octet-stream\r\n"
                         b"Content-Length: 1000000\r\n\r\n" + b"x" * 1000)
            time.sleep(0.05)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False
        if path == "/hang":
            sock.settimeout(120)
            try:
                while sock.recv(65536):
                    pass
            except OSError:
                pass
            return False
        return self.send_json(sock, 200, info, keep)

    # -- responses

    REASONS = {100: "Continue", 101: "Switching Protocols", 200: "OK", 201: "Created",
               204: "No Content", 301: "Moved Permanently", 302: "Found",
               304: "Not Modified", 400: "Bad Request", 401: "Unauthorized",
               403: "Forbidden", 404: "Not Found", 426: "Upgrade Required",
               500: "Internal Server Error", 502: "Bad Gateway",
               503: "Service Unavailable", 504: "Gateway Timeout"}

    def head(self, sock, code, hdrs, keep):
        lines = ["HTTP/1.1 %d %s" % (code, self.REASONS.get(code, "Status")),
                 "X-Upstream: %s" % self.name]
        lines += ["%s: %s" % kv for kv in hdrs.items()]
        lines.append("Connection: %s" % ("keep-alive" if keep else "close"))
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def send(self, sock, code, body, keep, ctype="application/json", no_body=False):
        hdrs = {"Content-Type": ctype}
        if not no_body:
            hdrs["Content-Length"] = str(len(body))
        self.head(sock, code, hdrs, keep)
        if body:
            sock.sendall(body)
        return keep

    def send_json(self, sock, code, obj, keep):
        return self.send(sock, code, (json.dumps(obj) + "\n").encode(), keep)

    # -- WebSocket (RFC 6455)

    def websocket(self, sock, rd, headers):
        accept = base64.b64encode(hashlib.sha1(
            headers["sec-websocket-key"].encode() + WS_GUID).digest()).decode()
        sock.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                      "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n"
                      "X-Upstream: %s\r\n\r\n" % (accept, self.name)).encode())
        while True:
            try:
                op, payload = ws_read_frame(rd)
            except (Closed, OSError):
                return
            if op == 0x8:
                sock.sendall(ws_frame(0x8, payload[:2], mask=False))
                return
            if op == 0x9:
                sock.sendall(ws_frame(0xA, payload, mask=False))
            elif op in (0x1, 0x2):
                sock.sendall(ws_frame(op, payload, mask=False))


def ws_frame(op, payload, mask=True):
    """One final frame. Clients mask (RFC 6455 5.3), servers do not."""
    b0 = 0x80 | op
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126:
        hdr = struct.pack(">BB", b0, mbit | n)
    elif n < 65536:
        hdr = struct.pack(">BBH", b0, mbit | 126, n)
    else:
        hdr = struct.pack(">BBQ", b0, mbit | 127, n)
    if not mask:
        return hdr + payload
    key = os.urandom(4)
    masked = bytes(c ^ key[i % 4] for i, c in enumerate(payload))
    return hdr + key + masked


def ws_read_frame(rd):
    """Reads one whole message (continuation frames joined). Returns
    (opcode, payload)."""
    op0 = None
    data = b""
    while True:
        b0, b1 = rd.exact(2)
        fin, op = b0 & 0x80, b0 & 0x0F
        masked, n = b1 & 0x80, b1 & 0x7F
        if n == 126:
            n = struct.unpack(">H", rd.exact(2))[0]
        elif n == 127:
            n = struct.unpack(">Q", rd.exact(8))[0]
        key = rd.exact(4) if masked else None
        payload = rd.exact(n)
        if key:
            payload = bytes(c ^ key[i % 4] for i, c in enumerate(payload))
        if op >= 0x8:  # control frames may come between fragments
            return op, payload
        if op0 is None:
            op0 = op
        data += payload
        if fin:
            return op0, data


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--host", default="127.0.0.1")  # another address: the netns test
    ap.add_argument("--name", default="upstream")
    ap.add_argument("--delay-all", type=float, default=0.0)
    ap.add_argument("--idle-timeout", type=float, default=0.0)
    o = ap.parse_args()
    srv = Server(o.name, o.delay_all, o.idle_timeout)
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((o.host, o.port))
    ls.listen(512)
    print("upstream %s listening on %s:%d" % (o.name, o.host, ls.getsockname()[1]), flush=True)
    while True:
        try:
            s, peer = ls.accept()
        except OSError:
            continue
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=srv.serve, args=(s, peer), daemon=True).start()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
