"""A streaming HTTP/1.1 upstream for the benchmarks (stdlib only: one blocking thread per
connection, so every write is one `sendall` with nothing buffered in between).

    python benchmarks/stream_upstream.py [--port N] [--cpus 1]

- `GET /health`: 200 `ok`.
- `GET /ticks?n=1000&interval_ms=5`: a chunked response of `n` chunks sent `interval_ms` apart
  on an absolute schedule (no drift). Each chunk is one line `<seq> <monotonic_ns>\\n`, the
  stamp taken with `time.monotonic_ns()` just before the chunk's `sendall`. CLOCK_MONOTONIC is
  one clock for the whole machine on Linux, so a client in another process can subtract it
  from its own arrival time. The head goes out at once, before the first chunk.
- `GET /bytes?n=N`: N bytes with a Content-Length, written from one reused 256 KiB block, so a
  1 GiB download never sits in memory.
- `PUT` or `POST /sink`: reads the body (Content-Length or chunked), discards it, and answers
  `{"received": <bytes>}`.

The port comes from `--port`, else `$HESTIA_PORT` (set by Hestia's process launcher), else 0.
Connections are kept alive (a gateway pools them). Sockets use TCP_NODELAY. Prints
`listening <port>` once it accepts connections; SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import socketserver
import sys
import time
from urllib.parse import parse_qs, urlsplit

BLOCK = b"x" * (256 * 1024)
READ_SIZE = 1 << 20
MAX_HEAD = 64 * 1024


class _Closed(Exception):
    """The peer closed the connection (or sent something unusable)."""


class Handler(socketserver.BaseRequestHandler):
    request: socket.socket

    def setup(self) -> None:
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.scratch = bytearray(READ_SIZE)

    def handle(self) -> None:
        try:
            while self._one_request():
                pass
        except (_Closed, OSError):
            pass

    # --- reading -----------------------------------------------------------------------------

    def _fill(self) -> None:
        n = self.request.recv_into(self.scratch)
        if n == 0:
            raise _Closed
        self.buf += memoryview(self.scratch)[:n]

    def _line(self, sep: bytes = b"\r\n") -> bytes:
        while (end := self.buf.find(sep)) < 0:
            if len(self.buf) > MAX_HEAD:
                raise _Closed
            self._fill()
        line = bytes(self.buf[:end])
        del self.buf[:end + len(sep)]
        return line

    def _discard(self, count: int) -> int:
        """Read and drop `count` body bytes; return how many."""
        left = count
        taken = min(left, len(self.buf))
        del self.buf[:taken]
        left -= taken
        while left:
            n = self.request.recv_into(self.scratch, min(left, READ_SIZE))
            if n == 0:
                raise _Closed
            left -= n
        return count

    def _discard_chunked(self) -> int:
        total = 0
        while True:
            size = int(self._line().split(b";", 1)[0].strip(), 16)
            if size == 0:
                while self._line():  # trailers, up to the empty line
                    pass
                return total
            total += self._discard(size)
            self._line()  # the CRLF after the chunk data

    # --- one exchange ------------------------------------------------------------------------

    def _one_request(self) -> bool:
        head = self._line(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        try:
            method, target, version = lines[0].split(b" ")
        except ValueError:
            raise _Closed from None
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        connection = headers.get(b"connection", b"").lower()
        keep = b"close" not in connection and (version == b"HTTP/1.1"
                                               or b"keep-alive" in connection)
        received = 0
        if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            received = self._discard_chunked()
        elif b"content-length" in headers:
            received = self._discard(int(headers[b"content-length"]))
        url = urlsplit(target.decode("latin-1"))
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if url.path == "/ticks":
            self._ticks(int(query.get("n", "1000")), float(query.get("interval_ms", "5")))
        elif url.path == "/bytes":
            self._bytes(int(query.get("n", "0")))
        elif url.path == "/sink" and method in (b"PUT", b"POST"):
            self._answer(200, json.dumps({"received": received}).encode(), "application/json")
        elif url.path == "/health":
            self._answer(200, b"ok\n")
        else:
            self._answer(404, b"not found\n")
        return keep

    def _answer(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        reason = {200: "OK", 404: "Not Found"}[status]
        self.request.sendall(f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
                             f"Content-Length: {len(body)}\r\n\r\n".encode() + body)

    def _ticks(self, count: int, interval_ms: float) -> None:
        sock = self.request
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nCache-Control: no-cache"
                     b"\r\nTransfer-Encoding: chunked\r\n\r\n")
        interval = interval_ms / 1000
        start = time.monotonic() + interval
        for seq in range(count):
            delay = start + seq * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            line = b"%d %d\n" % (seq, time.monotonic_ns())
            sock.sendall(b"%x\r\n%s\r\n" % (len(line), line))
        sock.sendall(b"0\r\n\r\n")

    def _bytes(self, count: int) -> None:
        sock = self.request
        sock.sendall(f"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                     f"Content-Length: {count}\r\n\r\n".encode())
        block = memoryview(BLOCK)
        left = count
        while left >= len(block):
            sock.sendall(block)
            left -= len(block)
        if left:
            sock.sendall(block[:left])


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("HESTIA_PORT", "0")))
    parser.add_argument("--cpus", help="pin to these CPUs, e.g. 1 or 0,1")
    args = parser.parse_args(argv)
    if args.cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    with Server((args.host, args.port), Handler) as server:
        print(f"listening {server.server_address[1]}", flush=True)
        try:
            server.serve_forever(poll_interval=0.5)
        except KeyboardInterrupt:
            sys.exit(130)


if __name__ == "__main__":
    main()
