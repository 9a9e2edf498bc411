"""Test upstream HTTP/1.1 server for Hestia integration tests (stdlib only).

Run as a child process:  python tests/upstream_app.py [flags]

Port: env HESTIA_PORT (set by the gateway), overridden by --port N; if neither
is given an ephemeral port is used.  Binds 127.0.0.1 only.  Keep-alive
(HTTP/1.1), one daemon thread per connection, listen backlog 128.

Flags (applied in this order):
  --spawn-child        spawn `python -c "import time; time.sleep(3600)"` (same
                       process group, default signal handling) and print
                       `child-pid <pid>` to stdout
  --ignore-sigterm     ignore SIGTERM (the child above is unaffected)
  --start-delay SECS   sleep (float) before binding the port
  --fail-start CODE    print "fatal: simulated start failure" to stderr and
                       exit(CODE) without listening
  --pid-file PATH      write own pid to PATH once listening
Once listening, prints `listening <port> <pid>` to stdout (flushed); no
per-request logging.

Routes (matched on the path without query string, regardless of method;
HEAD gets the same status/headers with no body):
  /echo*                  200 JSON {"method", "path" (raw request target incl.
                          query), "headers" [[name, value], ...] in received
                          order, "body_length", "body_sha256", "body" (utf-8,
                          errors=replace; null if > 4096 bytes), "pid", "peer_port"
                          (the client port of this connection)}.
                          Request bodies: Content-Length or chunked.
  /health                 200 {"ok": true}
  /status/<code>          <code> (200..599) with {"status": code}; 204/304
                          have no body and no Content-Length
  /cookies                200 "ok", two Set-Cookie headers (a=1; Path=/ and
                          b=2; Path=/) and X-Upstream: yes
  /redirect?to=U&code=302&header=Location
                          <code> with header <header>: U, where `{self}` in U
                          stands for http://<the request's Host>
  /set-cookie?path=P      200 "ok", Set-Cookie: s=1; Path=P; HttpOnly
  /hop                    200 "ok", Connection: X-Secret, keep-alive, X-Secret:
                          should-be-dropped, Keep-Alive: timeout=5, X-Kept: yes
  /stream?n=5&gap_ms=0&type=ndjson|sse
                          chunked; n chunks `{"i": k}\\n` (application/x-ndjson)
                          or `data: {"i": k}\\n\\n` (text/event-stream), one per
                          chunk, gap_ms between chunks
  /gated?key=K&n=3        chunked; sends `{"i": 0}\\n` at once, then before
                          each further chunk waits (<= 30 s, then sends anyway)
                          for /release?key=K and clears it.  A release sent
                          before the gate exists is remembered; the gate is
                          removed when its response ends.
  /release?key=K          sets the event for K; 200 "released"
  /bytes?n=N[&chunked=1]  exactly N bytes, byte i == i % 256, streamed in 64 KiB
                          blocks; Content-Length unless chunked=1
  /upload                 streams the body (Content-Length or chunked);
                          200 {"length": n, "sha256": hex}
  /slow?ms=M              sleeps M ms before the headers, then 200 "slow"
  /slow-body?ms=M         chunked: "a" at once, sleeps M ms, then "b"
  /crash                  os._exit(17) without sending anything
  /close                  closes the connection without answering (server lives)
  /close-idle?ms=M        200 "ok" (keep-alive), then closes the connection M ms later
  /crash-mid-body         headers with Content-Length: 1000000, 1000 bytes,
                          then os._exit(18)
  /die-later?ms=M         200 "bye", then os._exit(19) after M ms
  anything else           404 {"error": "not found", "path": <raw target>}
Bad query parameters give 400 {"error": ...}.  Non-chunked responses always
carry an accurate Content-Length.
"""

import argparse
import hashlib
import json
import os
import signal
import socketserver
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

BLOCK = 64 * 1024
PATTERN = bytes(range(256)) * (BLOCK // 256)  # 64 KiB, byte i == i % 256
DISCONNECT_ERRORS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)

_gates = {}
_gates_lock = threading.Lock()


class BadRequest(Exception):
    pass


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):
        pass

    # ---- dispatch -------------------------------------------------------
    def _dispatch(self):
        target = self.path
        if target.startswith(("http://", "https://")):  # absolute-form
            target = "/" + target.split("://", 1)[1].partition("/")[2]
        path, _, query = target.partition("?")
        self.query = parse_qs(query)
        try:
            if path.startswith("/echo"):
                return self.route_echo()
            if path == "/upload":
                return self.route_upload()
            self._read_body()  # drain any body so keep-alive stays in sync
            if path.startswith("/status/"):
                return self.route_status(path[len("/status/"):])
            if path in ROUTES:
                return getattr(self, "route_" + path[1:].replace("-", "_"))()
            self._send(404, {"error": "not found", "path": self.path})
        except BadRequest as exc:
            self.close_connection = True
            self._send(400, {"error": str(exc)})
        except DISCONNECT_ERRORS:
            self.close_connection = True

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _dispatch

    # ---- helpers ----------------------------------------------------------
    def _arg(self, name, default=""):
        return self.query.get(name, [default])[0]

    def _int(self, name, default):
        try:
            return int(self._arg(name, default))
        except ValueError:
            raise BadRequest(f"bad integer for {name!r}: {self._arg(name)!r}")

    def _read_body(self, sink=None):
        """Read the request body in blocks, passing each to sink; return length."""
        total = 0
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                line = self.rfile.readline(1024)
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise BadRequest("bad chunk size line")
                if size == 0:
                    while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
                        pass  # skip trailers
                    return total
                while size > 0:
                    data = self.rfile.read(min(size, BLOCK))
                    if not data:
                        raise ConnectionResetError("EOF in chunked body")
                    size -= len(data)
                    total += len(data)
                    if sink:
                        sink(data)
                self.rfile.readline(1024)  # CRLF after chunk data
        try:
            remaining = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise BadRequest("bad Content-Length")
        while remaining > 0:
            data = self.rfile.read(min(remaining, BLOCK))
            if not data:
                raise ConnectionResetError("EOF in request body")
            remaining -= len(data)
            total += len(data)
            if sink:
                sink(data)
        return total

    def _send(self, status, body, ctype=None, headers=()):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            ctype = ctype or "application/json"
        elif isinstance(body, str):
            body = body.encode()
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        if status in (204, 304):
            body = b""
        else:
            self.send_header("Content-Type", ctype or "text/plain")
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _start_fixed(self, length):
        """Send 200 octet-stream headers; return True if this is a HEAD request."""
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.end_headers()
        return self.command == "HEAD"

    def _start_chunked(self, ctype):
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _chunk(self, data):
        if self.command == "HEAD" or not data:
            return
        if isinstance(data, str):
            data = data.encode()
        self.wfile.write(b"%x\r\n" % len(data) + data + b"\r\n")
        self.wfile.flush()

    def _end_chunked(self):
        if self.command != "HEAD":
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

    # ---- routes ---------------------------------------------------------
    def route_echo(self):
        parts = []
        n = self._read_body(parts.append)
        body = b"".join(parts)
        self._send(200, {
            "method": self.command,
            "path": self.path,
            "headers": [[k, v] for k, v in self.headers.items()],
            "body_length": n,
            "body_sha256": hashlib.sha256(body).hexdigest(),
            "body": body.decode("utf-8", errors="replace") if n <= 4096 else None,
            "pid": os.getpid(), "peer_port": self.client_address[1],
        })

    def route_upload(self):
        digest = hashlib.sha256()
        n = self._read_body(digest.update)
        self._send(200, {"length": n, "sha256": digest.hexdigest()})

    def route_health(self):
        self._send(200, {"ok": True})

    def route_status(self, code):
        if not code.isdigit() or not 200 <= int(code) <= 599:
            raise BadRequest(f"bad status code {code!r}")
        self._send(int(code), {"status": int(code)})

    def route_cookies(self):
        self._send(200, "ok", headers=[("Set-Cookie", "a=1; Path=/"),
                                       ("Set-Cookie", "b=2; Path=/"),
                                       ("X-Upstream", "yes")])

    def route_redirect(self):
        # As an app builds its redirects: `to` as given, `{self}` standing for the
        # scheme://host it was reached at (from its Host header); `header` picks the header.
        to = self._arg("to", "/").replace("{self}", "http://" + self.headers.get("Host", ""))
        self._send(int(self._arg("code", "302")), "moved",
                   headers=[(self._arg("header", "Location"), to)])

    def route_set_cookie(self):
        self._send(200, "ok", headers=[("Set-Cookie", f"s=1; Path={self._arg('path', '/')}"
                                                      "; HttpOnly")])

    def route_hop(self):
        self._send(200, "ok", headers=[("Connection", "X-Secret, keep-alive"),
                                       ("X-Secret", "should-be-dropped"),
                                       ("Keep-Alive", "timeout=5"),
                                       ("X-Kept", "yes")])

    def route_stream(self):
        n, gap = self._int("n", 5), self._int("gap_ms", 0)
        sse = self._arg("type") == "sse"
        self._start_chunked("text/event-stream" if sse else "application/x-ndjson")
        for k in range(n):
            if k and gap > 0:
                time.sleep(gap / 1000)
            line = json.dumps({"i": k})
            self._chunk(f"data: {line}\n\n" if sse else line + "\n")
        self._end_chunked()

    def route_gated(self):
        key, n = self._arg("key"), self._int("n", 3)
        with _gates_lock:  # registered before chunk 0; keeps an earlier release
            event = _gates.setdefault(key, threading.Event())
        try:
            self._start_chunked("application/x-ndjson")
            for k in range(n):
                if k:
                    event.wait(30)
                    event.clear()
                self._chunk(json.dumps({"i": k}) + "\n")
            self._end_chunked()
        finally:
            with _gates_lock:
                if _gates.get(key) is event:
                    del _gates[key]

    def route_release(self):
        key = self._arg("key")
        with _gates_lock:
            event = _gates.setdefault(key, threading.Event())
        event.set()
        self._send(200, "released")

    def route_bytes(self):
        remaining = self._int("n", 0)
        chunked = self._arg("chunked", "0") not in ("0", "", "false")
        if chunked:
            self._start_chunked("application/octet-stream")
        elif self._start_fixed(remaining):
            return
        while remaining > 0:
            block = PATTERN if remaining >= BLOCK else PATTERN[:remaining]
            remaining -= len(block)
            if chunked:
                self._chunk(block)
            else:
                self.wfile.write(block)
        if chunked:
            self._end_chunked()

    def route_slow(self):
        time.sleep(self._int("ms", 0) / 1000)
        self._send(200, "slow")

    def route_slow_body(self):
        ms = self._int("ms", 0)
        self._start_chunked("text/plain")
        self._chunk("a")
        time.sleep(ms / 1000)
        self._chunk("b")
        self._end_chunked()

    def route_crash(self):
        os._exit(17)

    def route_close(self):
        # Close this connection without answering; the server itself carries on.
        self.close_connection = True

    def route_crash_mid_body(self):
        self._start_fixed(1000000)
        self.wfile.write(PATTERN[:1000])
        self.wfile.flush()
        os._exit(18)

    def route_die_later(self):
        ms = self._int("ms", 0)
        self._send(200, "bye")

        def die():
            time.sleep(ms / 1000)
            os._exit(19)
        threading.Thread(target=die, daemon=True).start()

    def route_close_idle(self):
        # Answer with keep-alive, then close the connection while it is idle, as servers with
        # a short keep-alive timeout do.
        self._send(200, "ok")
        self.wfile.flush()
        time.sleep(self._int("ms", 0) / 1000)
        self.close_connection = True


ROUTES = {"/health", "/cookies", "/redirect", "/set-cookie", "/hop", "/stream", "/gated",
          "/release", "/bytes", "/slow", "/slow-body", "/crash", "/close", "/crash-mid-body",
          "/die-later", "/close-idle"}


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def server_bind(self):
        # Skip HTTPServer's socket.getfqdn() lookup, which can be slow.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], DISCONNECT_ERRORS + (TimeoutError,)):
            super().handle_error(request, client_address)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Hestia test upstream server")
    parser.add_argument("--port", type=int, default=int(os.environ.get("HESTIA_PORT") or 0))
    parser.add_argument("--start-delay", type=float, default=0.0)
    parser.add_argument("--fail-start", type=int, default=None)
    parser.add_argument("--ignore-sigterm", action="store_true")
    parser.add_argument("--spawn-child", action="store_true")
    parser.add_argument("--pid-file", default=None)
    args = parser.parse_args(argv)

    if args.spawn_child:  # before SIG_IGN so the child keeps default handling
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
        print(f"child-pid {child.pid}", flush=True)
    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.start_delay > 0:
        time.sleep(args.start_delay)
    if args.fail_start is not None:
        print("fatal: simulated start failure", file=sys.stderr, flush=True)
        sys.exit(args.fail_start)

    server = Server(("127.0.0.1", args.port), Handler)
    port = server.server_address[1]
    if args.pid_file:
        with open(args.pid_file, "w") as f:
            f.write(f"{os.getpid()}\n")
    print(f"listening {port} {os.getpid()}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
