"""A fast HTTP/1.1 keep-alive upstream for the benchmarks (asyncio raw Protocol, stdlib only).

Every request, whatever its method or path (`GET /health` included), is answered with the same
short 200 response carrying a Content-Length. Request bodies with a Content-Length are read and
discarded; `Connection: close` (and HTTP/1.0 without keep-alive) closes after the response.

    python benchmarks/fast_upstream.py [--port N] [--delay-start S] [--listen-stamp PATH]

The port comes from `--port`, else `$HESTIA_PORT` (set by Hestia's process launcher), else 0
(any free port). `--delay-start S` waits S seconds before binding, to stand in for a slow-starting
service. Once listening it prints `listening <port> <time.time()>` on stdout and, with
`--listen-stamp PATH`, writes that wall-clock time to PATH (atomically), which the cold-start
benchmark compares with the moment the client has its response.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
import time

BODY = b"Hello, world!\n"
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
            + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)
RESPONSE_CLOSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                  b"Content-Length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)
BAD_REQUEST = (b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
MAX_HEAD = 64 * 1024


class HttpProtocol(asyncio.Protocol):
    __slots__ = ("transport", "buf", "skip")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.skip = 0  # request body bytes still to discard

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        transport = self.transport
        assert transport is not None
        out = []
        while buf:
            if self.skip:
                taken = min(self.skip, len(buf))
                self.skip -= taken
                buf = buf[taken:]
                continue
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    out.append(BAD_REQUEST)
                    transport.write(b"".join(out))
                    transport.close()
                    self.buf = b""
                    return
                break
            head = buf[:end]
            buf = buf[end + 4:]
            close = False
            line_end = head.find(b"\r\n")
            request_line = head if line_end < 0 else head[:line_end]
            if request_line.endswith(b"HTTP/1.0"):
                close = True
            if line_end >= 0:
                lower = head[line_end:].lower()
                pos = lower.find(b"\r\nconnection:")
                if pos >= 0:
                    value = lower[pos + 13:].split(b"\r\n", 1)[0]
                    if b"close" in value:
                        close = True
                    elif b"keep-alive" in value:
                        close = False
                pos = lower.find(b"\r\ncontent-length:")
                if pos >= 0:
                    value = lower[pos + 17:].split(b"\r\n", 1)[0].strip()
                    try:
                        self.skip = int(value)
                    except ValueError:
                        out.append(BAD_REQUEST)
                        transport.write(b"".join(out))
                        transport.close()
                        self.buf = b""
                        return
                elif b"\r\ntransfer-encoding:" in lower:
                    # Chunked request bodies are not needed by the benchmarks.
                    out.append(BAD_REQUEST)
                    transport.write(b"".join(out))
                    transport.close()
                    self.buf = b""
                    return
            if close:
                out.append(RESPONSE_CLOSE)
                transport.write(b"".join(out))
                transport.close()
                self.buf = b""
                return
            out.append(RESPONSE)
        self.buf = buf
        if out:
            transport.write(out[0] if len(out) == 1 else b"".join(out))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


def _write_stamp(path: str, stamp: float) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(repr(stamp))
    os.replace(tmp, path)


async def main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.delay_start > 0:
        try:
            await asyncio.wait_for(stop.wait(), timeout=args.delay_start)
            return  # stopped while still "starting"
        except TimeoutError:
            pass
    server = await loop.create_server(HttpProtocol, args.host, args.port, backlog=4096,
                                      reuse_address=True)
    stamp = time.time()
    port = server.sockets[0].getsockname()[1]
    if args.listen_stamp:
        _write_stamp(args.listen_stamp, stamp)
    print(f"listening {port} {stamp:.6f}", flush=True)
    async with server:
        await stop.wait()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("HESTIA_PORT", "0")))
    parser.add_argument("--delay-start", type=float, default=0.0,
                        help="seconds to wait before listening")
    parser.add_argument("--listen-stamp", help="write time.time() of the listen to this file")
    parser.add_argument("--cpus", help="pin to these CPUs, e.g. 1 or 0,1")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(c) for c in arguments.cpus.split(",")})
    try:
        asyncio.run(main(arguments))
    except KeyboardInterrupt:
        sys.exit(130)
