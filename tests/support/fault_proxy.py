#!/usr/bin/env python3
"""Fault-injecting HTTP reverse proxy for end-to-end tests (standard library only).

Usage:
    python3 tests/support/fault_proxy.py --port 0 --upstream http://127.0.0.1:5000

Binds 127.0.0.1 only.  Once listening it prints exactly one line ``READY <port>``
to stdout.  Every request is forwarded unchanged (method, path+query, headers
including Host, body) to the upstream, except requests under ``/__fault__``,
which form the control API:

    POST /__fault__/rules   {"rules": [rule, ...]}  replace rules, reset rule counters
    POST /__fault__/reset                           clear rules and stats
    GET  /__fault__/stats   -> {"requests": n, "injected": {"status": n, "reset": n,
                                                             "truncate": n, "delay": n}}
    GET  /__fault__/rules   -> current rules with their per-rule counters (debugging)

A rule:
    {"kind": "status"|"reset"|"truncate"|"delay",
     "method": "GET",        # optional; any method if absent
     "match": "list-type=2", # optional; substring of the request path+query
     "skip": 0,              # let this many matching requests through first
     "every": 1,             # then inject on every Nth matching request
     "count": 3,             # stop after this many injections; null/absent = unlimited
     "status": 503,          # kind "status" only
     "delay_s": 1.5}         # kind "delay" only

Rules are evaluated in order; evaluation stops at the first rule that decides to
inject (later rules do not see that request).  A "truncate" rule whose response
has a body shorter than 2 bytes (HEAD, 204, empty objects, ...) passes the
response through and gives the injection back (it does not count).
"""

import argparse
import http.client
import json
import signal
import socket
import struct
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CONTROL_PREFIX = "/__fault__"
KINDS = ("status", "reset", "truncate", "delay")
ERROR_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>'
    b"<Error><Code>SlowDown</Code><Message>injected</Message></Error>"
)
# Hop-by-hop headers (RFC 9110 7.6.1) plus ones this proxy recomputes/handles itself.
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}


class BadRequest(Exception):
    pass


class Rule:
    def __init__(self, spec):
        if not isinstance(spec, dict):
            raise ValueError("rule must be a JSON object")
        kind = spec.get("kind")
        if kind not in KINDS:
            raise ValueError("rule kind must be one of %s, got %r" % (KINDS, kind))
        self.kind = kind
        method = spec.get("method")
        if method is not None and not isinstance(method, str):
            raise ValueError("method must be a string")
        self.method = method.upper() if method else None
        match = spec.get("match")
        if match is not None and not isinstance(match, str):
            raise ValueError("match must be a string")
        self.match = match or None
        self.skip = _int(spec, "skip", 0, minimum=0)
        self.every = _int(spec, "every", 1, minimum=1)
        count = spec.get("count")
        self.count = None if count is None else _int(spec, "count", 0, minimum=0)
        self.status = _int(spec, "status", 503, minimum=100)
        if self.status > 599:
            raise ValueError("status must be <= 599")
        delay = spec.get("delay_s", 1.0)
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or delay < 0:
            raise ValueError("delay_s must be a non-negative number")
        self.delay_s = float(delay)
        self.spec = spec
        self.seen = 0
        self.injected = 0

    def matches(self, method, path):
        if self.method is not None and self.method != method.upper():
            return False
        if self.match is not None and self.match not in path:
            return False
        return True

    def decide(self):
        """Called (under the state lock) for a matching request; True to inject."""
        self.seen += 1
        n = self.seen - self.skip
        if n <= 0:
            return False
        if self.count is not None and self.injected >= self.count:
            return False
        if n % self.every != 0:
            return False
        self.injected += 1
        return True

    def describe(self):
        d = dict(self.spec)
        d["seen"] = self.seen
        d["injected_count"] = self.injected
        return d


def _int(spec, key, default, minimum):
    v = spec.get(key, default)
    if v is None:
        v = default
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError("%s must be an integer >= %d" % (key, minimum))
    return v


class FaultState:
    def __init__(self):
        self.lock = threading.Lock()
        self.rules = []
        self._reset_stats()

    def _reset_stats(self):
        self.requests = 0
        self.injected = {k: 0 for k in KINDS}

    def set_rules(self, rules):
        with self.lock:
            self.rules = rules  # freshly built Rule objects: counters start at 0

    def reset(self):
        with self.lock:
            self.rules = []
            self._reset_stats()

    def choose(self, method, path):
        """Count the request and return the Rule to apply, or None."""
        with self.lock:
            self.requests += 1
            for rule in self.rules:
                if rule.matches(method, path) and rule.decide():
                    return rule
            return None

    def record(self, kind):
        with self.lock:
            self.injected[kind] += 1

    def refund(self, rule):
        with self.lock:
            if rule.injected > 0:
                rule.injected -= 1

    def stats(self):
        with self.lock:
            return {"requests": self.requests, "injected": dict(self.injected)}

    def describe_rules(self):
        with self.lock:
            return {"rules": [r.describe() for r in self.rules]}


class ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, addr, upstream, upstream_timeout, verbose):
        u = urllib.parse.urlsplit(upstream)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise SystemExit("--upstream must look like http://host:port, got %r" % upstream)
        self.up_scheme = u.scheme
        self.up_host = u.hostname
        self.up_port = u.port or (443 if u.scheme == "https" else 80)
        self.up_prefix = u.path.rstrip("/")
        self.upstream_timeout = upstream_timeout
        self.verbose = verbose
        self.state = FaultState()
        super().__init__(addr, ProxyHandler)

    def handle_error(self, request, client_address):
        if self.verbose:
            super().handle_error(request, client_address)

    def upstream_connection(self):
        cls = http.client.HTTPSConnection if self.up_scheme == "https" else http.client.HTTPConnection
        return cls(self.up_host, self.up_port, timeout=self.upstream_timeout)


class ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fault-proxy"
    # Idle keep-alive client connections are dropped after this many seconds.
    timeout = 300

    # ---------------------------------------------------------------- plumbing
    def log_message(self, format, *args):
        if self.server.verbose:
            sys.stderr.write("%s - [%s] %s\n" % (self.address_string(), self.log_date_time_string(), format % args))

    def handle(self):
        try:
            super().handle()
        except (ConnectionError, TimeoutError, OSError) as e:
            # Client went away (or we aborted the connection ourselves).
            self.close_connection = True
            if self.server.verbose:
                self.log_message("connection error: %r", e)

    def do_GET(self):
        self._dispatch()

    do_HEAD = do_PUT = do_POST = do_DELETE = do_PATCH = do_OPTIONS = do_GET

    def _read_body(self):
        te = self.headers.get("Transfer-Encoding")
        if te is not None and "chunked" in te.lower():
            return self._read_chunked(), True
        cl = self.headers.get("Content-Length")
        if cl is None:
            return b"", False
        try:
            n = int(cl.strip())
            if n < 0:
                raise ValueError
        except ValueError:
            raise BadRequest("invalid Content-Length %r" % cl)
        data = self.rfile.read(n) if n else b""
        if len(data) != n:
            raise ConnectionError("client closed connection while sending the body")
        return data, True

    def _read_chunked(self):
        parts = []
        while True:
            line = self.rfile.readline(65537)
            if not line:
                raise ConnectionError("client closed connection inside chunked body")
            size_s = line.split(b";", 1)[0].strip()
            try:
                size = int(size_s, 16)
            except ValueError:
                raise BadRequest("invalid chunk size %r" % size_s)
            if size == 0:
                # Trailer section, terminated by an empty line.
                while True:
                    t = self.rfile.readline(65537)
                    if not t:
                        raise ConnectionError("client closed connection inside chunked trailer")
                    if t in (b"\r\n", b"\n"):
                        return b"".join(parts)
            chunk = self.rfile.read(size)
            if len(chunk) != size:
                raise ConnectionError("client closed connection inside a chunk")
            parts.append(chunk)
            if self.rfile.readline(3) not in (b"\r\n", b"\n"):
                raise BadRequest("missing CRLF after chunk")

    def _send_simple(self, status, body, content_type, head=False):
        self.send_response_only(status)
        self.send_header("Date", self.date_time_string())
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if not head:
            self.wfile.write(body)
        self.log_request(status)

    def _send_json(self, status, obj):
        self._send_simple(status, json.dumps(obj).encode(), "application/json")

    def _abort(self, linger_first=0.0):
        """Close the client connection with an RST, without any (further) response."""
        self.close_connection = True
        if linger_first:
            time.sleep(linger_first)
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        # rfile holds a reference to the socket (makefile); close it first so the
        # underlying fd is really closed (and the RST sent) right now.
        for f in (self.rfile, self.connection):
            try:
                f.close()
            except OSError:
                pass

    # ---------------------------------------------------------------- dispatch
    def _dispatch(self):
        try:
            body, had_length = self._read_body()
        except BadRequest as e:
            self.close_connection = True
            self._send_simple(400, str(e).encode(), "text/plain")
            return

        if self.path.startswith(CONTROL_PREFIX):
            self._control(body)
            return

        state = self.server.state
        rule = state.choose(self.command, self.path)
        head = self.command == "HEAD"

        if rule is not None and rule.kind == "status":
            state.record("status")
            self._send_simple(rule.status, ERROR_BODY, "application/xml", head=head)
            return
        if rule is not None and rule.kind == "reset":
            state.record("reset")
            self._abort()
            return
        if rule is not None and rule.kind == "delay":
            state.record("delay")
            time.sleep(rule.delay_s)

        try:
            status, reason, headers, resp_body = self._forward(body, had_length)
        except (OSError, http.client.HTTPException) as e:
            if rule is not None and rule.kind == "truncate":
                state.refund(rule)
            msg = ("upstream error: %r" % (e,)).encode()
            self._send_simple(502, msg, "text/plain", head=head)
            return

        no_body = head or status in (204, 304) or 100 <= status < 200
        truncate = False
        if rule is not None and rule.kind == "truncate":
            if no_body or len(resp_body) < 2:
                state.refund(rule)
            else:
                truncate = True
                state.record("truncate")

        self.send_response_only(status, reason)
        upstream_cl = None
        for k, v in headers:
            lk = k.lower()
            if lk == "content-length":
                upstream_cl = v
                continue
            if lk in HOP_BY_HOP:
                continue
            self.send_header(k, v)
        if no_body:
            if upstream_cl is not None:
                self.send_header("Content-Length", upstream_cl)
        else:
            self.send_header("Content-Length", str(len(resp_body)))
        if self.close_connection and not truncate:
            self.send_header("Connection", "close")
        self.end_headers()
        self.log_request(status)
        if no_body:
            return
        if truncate:
            self.wfile.write(resp_body[: len(resp_body) // 2])
            # Give the partial body a moment to reach the peer, then RST.
            self._abort(linger_first=0.05)
            return
        self.wfile.write(resp_body)

    def _forward(self, body, had_length):
        srv = self.server
        conn = srv.upstream_connection()
        try:
            conn.putrequest(self.command, srv.up_prefix + self.path, skip_host=True, skip_accept_encoding=True)
            extra_hop = set()
            for v in self.headers.get_all("Connection", []):
                extra_hop.update(t.strip().lower() for t in v.split(",") if t.strip())
            for k, v in self.headers.items():
                lk = k.lower()
                # The body has been read completely (and 100-continue already
                # answered), so Expect is dropped and Content-Length recomputed.
                if lk in HOP_BY_HOP or lk in extra_hop or lk in ("content-length", "expect"):
                    continue
                conn.putheader(k, v)
            if had_length:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body if body else None)
            resp = conn.getresponse()
            resp_body = resp.read()
            return resp.status, resp.reason, resp.getheaders(), resp_body
        finally:
            conn.close()

    # ---------------------------------------------------------------- control
    def _control(self, body):
        state = self.server.state
        path = urllib.parse.urlsplit(self.path).path
        sub = path[len(CONTROL_PREFIX):].rstrip("/")
        if sub == "/rules" and self.command == "POST":
            try:
                doc = json.loads(body.decode("utf-8") or "{}")
                specs = doc.get("rules") if isinstance(doc, dict) else None
                if not isinstance(specs, list):
                    raise ValueError('expected {"rules": [...]}')
                rules = [Rule(s) for s in specs]
            except (ValueError, UnicodeDecodeError) as e:
                self._send_json(400, {"error": str(e)})
                return
            state.set_rules(rules)
            self._send_json(200, {"ok": True, "rules": len(rules)})
        elif sub == "/rules" and self.command == "GET":
            self._send_json(200, state.describe_rules())
        elif sub == "/reset" and self.command == "POST":
            state.reset()
            self._send_json(200, {"ok": True})
        elif sub == "/stats" and self.command == "GET":
            self._send_json(200, state.stats())
        else:
            self._send_json(404, {"error": "unknown control endpoint %s %s" % (self.command, path)})


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=0, help="port to listen on (127.0.0.1); 0 = pick a free one")
    ap.add_argument("--upstream", required=True, help="upstream base URL, e.g. http://127.0.0.1:5000")
    ap.add_argument("--upstream-timeout", type=float, default=60.0, help="seconds (default 60)")
    ap.add_argument("--verbose", action="store_true", help="log each request to stderr")
    args = ap.parse_args(argv)

    server = ProxyServer(("127.0.0.1", args.port), args.upstream, args.upstream_timeout, args.verbose)

    def on_signal(signum, frame):
        # shutdown() blocks until serve_forever() returns, so it must not run on
        # the thread that is inside serve_forever() (this one).
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    sys.stdout.write("READY %d\n" % server.server_address[1])
    sys.stdout.flush()
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
