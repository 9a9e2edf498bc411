"""Bundled HTTP/1.1 load generator for the benchmarks (stdlib only; used when `wrk` is missing).

Two commands, each printing one JSON object on stdout:

    python benchmarks/loadgen.py run --url URL -c 32 -d 5 --warmup 1 [--procs N] [--cpus 1]
    python benchmarks/loadgen.py hold --url URL -n 2000 [--rate 500] [--timeout 60]

`run`: closed-loop load on keep-alive connections. Each connection is an asyncio raw Protocol
that writes a fixed request, parses the response head for its Content-Length, reads the body,
records the latency (perf_counter_ns) and sends the next request at once; like wrk, it
reconnects when the server closes a connection (hypercorn does after 1000 requests).
Connections are spread over `--procs` worker processes (default: one per 16 connections, at most
one per usable CPU). All workers share one time line: `--warmup` seconds of load that are not
recorded, then `-d` seconds whose completed requests are counted. Output: requests, rps,
p50/p90/p99/max latency (ms), non-2xx responses, socket errors, reconnects.

`hold`: opens N connections from one asyncio process (raising RLIMIT_NOFILE first; paced at
`--rate` connections per second), sends one request on each, prints `sent <n> <time.time()>` on
stderr once all are sent, then waits for every response. Output: the count per status, connect
errors, and when the first and last responses arrived.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing as mp
import os
import resource
import socket
import sys
import time
from array import array
from urllib.parse import urlsplit

# --- shared ---------------------------------------------------------------------------------


def build_request(url: str, close: bool = False) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 80
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    request = (f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: hestia-loadgen\r\n"
               + ("Connection: close\r\n" if close else "") + "\r\n").encode()
    return host, port, request


def raise_nofile(wanted: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    return soft


class _Response:
    """Incremental parser of one response with a Content-Length (all the benchmark needs)."""

    __slots__ = ("buf", "status", "need", "close")

    def __init__(self) -> None:
        self.buf = b""
        self.status = 0
        self.need = -1  # body bytes still expected; -1 while the head is incomplete
        self.close = False  # the server said `Connection: close`

    def feed(self, data: bytes) -> bytes | None:
        """Feed bytes; once the response is complete return the leftover bytes, else None."""
        buf = self.buf + data if self.buf else data
        if self.need < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return None
            head = buf[:end]
            self.status = int(head[9:12])
            lower = head.lower()
            pos = lower.find(b"\r\ncontent-length:")
            self.need = int(lower[pos + 17:].split(b"\r\n", 1)[0]) if pos >= 0 else 0
            pos = lower.find(b"\r\nconnection:")
            self.close = pos >= 0 and b"close" in lower[pos + 13:].split(b"\r\n", 1)[0]
            buf = buf[end + 4:]
        if len(buf) >= self.need:
            rest = buf[self.need:]
            self.buf = b""
            self.need = -1
            return rest
        self.buf = buf
        return None


# --- run: closed-loop load ------------------------------------------------------------------


class _LoadConnection(asyncio.Protocol):
    """One client connection of the closed loop; `slot` survives reconnects."""

    def __init__(self, slot: _Slot) -> None:
        self.slot = slot
        self.parser = _Response()
        self.transport: asyncio.Transport | None = None
        self.sent_at = 0
        self.in_flight = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._send()

    def _send(self) -> None:
        self.in_flight = True
        self.sent_at = time.perf_counter_ns()
        self.transport.write(self.slot.request)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        rest = self.parser.feed(data)
        if rest is None:
            return
        now = time.perf_counter_ns()
        self.in_flight = False
        slot = self.slot
        if self.sent_at >= slot.measure_from and now <= slot.measure_to:
            slot.latencies.append(now - self.sent_at)
            if not 200 <= self.parser.status < 300:
                slot.stats["non2xx"] += 1
        if now >= slot.measure_to:
            slot.finish()
            self.transport.close()  # type: ignore[union-attr]
        elif self.parser.close:
            self.transport.close()  # type: ignore[union-attr]  # reconnects in connection_lost
        else:
            self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        slot = self.slot
        if slot.done.done():
            return
        if self.in_flight:
            slot.stats["errors"] += 1
        slot.stats["reconnects"] += 1
        asyncio.ensure_future(slot.connect())


class _Slot:
    """A client connection over its reconnects: a server may close a keep-alive connection
    after some number of requests (hypercorn: 1000 by default), as wrk, it reconnects."""

    def __init__(self, host: str, port: int, request: bytes, window: tuple[int, int],
                 latencies: array, stats: dict[str, int]) -> None:
        self.host, self.port, self.request = host, port, request
        self.measure_from, self.measure_to = window
        self.latencies = latencies
        self.stats = stats
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    async def connect(self) -> None:
        while not self.done.done():
            if time.perf_counter_ns() >= self.measure_to:
                self.finish()
                return
            try:
                await asyncio.get_running_loop().create_connection(
                    lambda: _LoadConnection(self), self.host, self.port)
                return
            except OSError:
                self.stats["errors"] += 1
                await asyncio.sleep(0.01)


async def _run_worker(host: str, port: int, request: bytes, connections: int, start_wall: float,
                      warmup: float, duration: float) -> tuple[array, dict[str, int]]:
    # Convert the shared wall-clock start into this process's perf_counter time line.
    offset = time.perf_counter_ns() - time.time_ns()
    start = int(start_wall * 1e9) + offset
    measure_from = start + int(warmup * 1e9)
    measure_to = measure_from + int(duration * 1e9)
    latencies = array("q")
    stats = {"non2xx": 0, "errors": 0, "reconnects": 0}
    delay = (start - time.perf_counter_ns()) / 1e9
    if delay > 0:
        await asyncio.sleep(delay)
    slots = [_Slot(host, port, request, (measure_from, measure_to), latencies, stats)
             for _ in range(connections)]
    for slot in slots:
        await slot.connect()
    timeout = (measure_to - time.perf_counter_ns()) / 1e9 + 30
    await asyncio.wait_for(asyncio.gather(*(slot.done for slot in slots)),
                           timeout=max(timeout, 1))
    return latencies, stats


def _worker_main(args: tuple, queue: mp.Queue) -> None:  # type: ignore[type-arg]
    try:
        latencies, stats = asyncio.run(_run_worker(*args))
        queue.put((latencies.tobytes(), stats, None))
    except BaseException as exc:  # report, never hang the parent
        queue.put((b"", {}, repr(exc)))


def percentile(sorted_values: list[int] | array, q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def run_load(url: str, concurrency: int, duration: float, warmup: float,
             procs: int, start_at: float | None = None) -> dict[str, object]:
    host, port, request = build_request(url)
    procs = max(1, min(procs, concurrency))
    shares = [concurrency // procs + (1 if i < concurrency % procs else 0) for i in range(procs)]
    start_wall = start_at if start_at and start_at > time.time() else time.time() + 0.3
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    workers = [ctx.Process(target=_worker_main, daemon=True,
                           args=((host, port, request, n, start_wall, warmup, duration), queue))
               for n in shares]
    for w in workers:
        w.start()
    latencies = array("q")
    stats = {"non2xx": 0, "errors": 0, "reconnects": 0}
    failures = []
    try:
        for _ in workers:
            data, worker_stats, failure = queue.get(timeout=warmup + duration + 60)
            latencies.frombytes(data)
            for k, v in worker_stats.items():
                stats[k] += v
            if failure:
                failures.append(failure)
    finally:
        for w in workers:
            w.join(timeout=5)
            if w.is_alive():
                w.kill()
    ordered = sorted(latencies)
    n = len(ordered)
    return {
        "url": url, "concurrency": concurrency, "duration_s": duration, "warmup_s": warmup,
        "procs": procs, "requests": n, "rps": n / duration if duration else math.nan,
        "p50_ms": percentile(ordered, 50) / 1e6, "p90_ms": percentile(ordered, 90) / 1e6,
        "p99_ms": percentile(ordered, 99) / 1e6,
        "max_ms": (ordered[-1] / 1e6) if n else math.nan,
        "non2xx": stats["non2xx"], "errors": stats["errors"],
        "reconnects": stats["reconnects"], "failures": failures,
    }


# --- hold: many connections, one request each ----------------------------------------------


class _HoldConnection(asyncio.Protocol):
    def __init__(self, request: bytes, result: asyncio.Future[tuple[int, float]]) -> None:
        self.request = request
        self.result = result
        self.parser = _Response()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.parser.feed(data) is not None and not self.result.done():
            self.result.set_result((self.parser.status, time.time()))
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.result.done():
            self.result.set_result((-1, time.time()))


async def _hold(url: str, count: int, batch: int, rate: float,
                timeout: float) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    host, port, request = build_request(url, close=True)
    results: list[asyncio.Future[tuple[int, float]]] = []
    connect_errors = 0
    began = time.time()
    for first in range(0, count, batch):
        # Pace the connects: a burst faster than the server accepts overflows its listen
        # backlog, and each dropped SYN costs the client a 1 s (then 3 s, 7 s) retransmit.
        if rate > 0:
            await asyncio.sleep(max(0.0, began + first / rate - time.time()))
        pending = []
        for _ in range(first, min(count, first + batch)):
            fut: asyncio.Future[tuple[int, float]] = loop.create_future()
            results.append(fut)
            pending.append(loop.create_connection(
                lambda fut=fut: _HoldConnection(request, fut), host, port))
        for outcome in await asyncio.gather(*pending, return_exceptions=True):
            if isinstance(outcome, BaseException):
                connect_errors += 1
    sent_at = time.time()
    print(f"sent {count} {sent_at:.6f}", file=sys.stderr, flush=True)
    done, _ = await asyncio.wait(results, timeout=timeout)
    statuses: dict[str, int] = {}
    times = []
    for fut in results:
        if fut.done():
            status, at = fut.result()
            times.append(at)
        else:
            status = 0  # no answer within the timeout
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    return {
        "url": url, "count": count, "connect_errors": connect_errors, "statuses": statuses,
        "ok": statuses.get("200", 0), "began": began, "sent_at": sent_at,
        "first_response_at": min(times) if times else None,
        "last_response_at": max(times) if times else None,
    }


# --- command line ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="closed-loop load on keep-alive connections")
    run.add_argument("--url", required=True)
    run.add_argument("-c", "--connections", type=int, default=32)
    run.add_argument("-d", "--duration", type=float, default=5.0)
    run.add_argument("--warmup", type=float, default=1.0)
    run.add_argument("--procs", type=int, default=0,
                     help="worker processes (default: one per 16 connections, at most one "
                          "per usable CPU)")
    run.add_argument("--cpus", help="pin the generator to these CPUs, e.g. 1")
    run.add_argument("--start-at", type=float,
                     help="wall-clock time (time.time()) at which the warm-up begins")
    hold = commands.add_parser("hold", help="hold N requests open at once")
    hold.add_argument("--url", required=True)
    hold.add_argument("-n", "--count", type=int, default=2000)
    hold.add_argument("--batch", type=int, default=20)
    hold.add_argument("--rate", type=float, default=500.0,
                      help="connections opened per second (0: as fast as possible)")
    hold.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)

    if getattr(args, "cpus", None) and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
    if args.command == "run":
        usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        procs = args.procs or min(usable, math.ceil(args.connections / 16))
        raise_nofile(args.connections + 256)
        result = run_load(args.url, args.connections, args.duration, args.warmup, procs,
                          args.start_at)
    else:
        raise_nofile(args.count + 256)
        result = asyncio.run(_hold(args.url, args.count, args.batch, args.rate, args.timeout))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
