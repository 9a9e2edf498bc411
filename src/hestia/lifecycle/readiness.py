"""Readiness probes: how a supervisor knows a started backend serves.

Probing is adaptive (`poll_until`): the first probe runs as soon as the launcher's `start`
returns, with no wait; after each failed probe the wait before the next is `FIRST_INTERVAL`, then
`GROWTH` times the previous one, up to the configured cap (`readiness.interval`). A start that
takes 2 ms is seen in about 2 ms, one that takes two minutes costs a probe every `interval` —
cheap on loopback, where an early probe is a refused connect — and the added cold-start latency
stays below `interval` plus one probe's own exchange.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

import structlog
import trio

from ..config import HealthConfig, PlacementConfig, ReadinessConfig, ServiceConfig
from ..errors import GatewayError, StartFailed
from ..launchers.base import Running
from ..upstream import UpstreamPool, fetch_status

__all__ = ["DelayProbe", "HttpProbe", "Probe", "TcpProbe", "make_probe", "poll_until",
           "probe_once", "until_ready", "watch_health"]

log = structlog.get_logger("hestia.supervisor")

FIRST_INTERVAL = 0.002
GROWTH = 1.5
PROBE_TIMEOUT = 5.0
LOG_TAIL_LINES = 20


class Probe(Protocol):
    last_result: str | None

    async def check(self) -> bool:
        """One probe: is the backend ready now?"""
        ...

    async def wait_ready(self) -> None:
        """Return once the backend is ready; never returns otherwise (the caller times out)."""
        ...

    def describe(self) -> str: ...


async def poll_until(check: Callable[[], Awaitable[bool]], cap: float) -> None:
    interval = FIRST_INTERVAL
    while not await check():
        await trio.sleep(interval)
        interval = min(interval * GROWTH, cap)


class TcpProbe:
    def __init__(self, host: str, port: int, cap: float) -> None:
        self._pool = UpstreamPool(host, port)
        self._cap = cap
        self.last_result: str | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()} last={self.last_result!r}>"

    def describe(self) -> str:
        return "tcp connect"

    async def check(self) -> bool:
        try:
            conn = await self._pool.connect(PROBE_TIMEOUT)
        except GatewayError as exc:
            self.last_result = exc.detail
            return False
        await conn.aclose()
        self.last_result = "connected"
        return True

    async def wait_ready(self) -> None:
        await poll_until(self.check, self._cap)


class HttpProbe:
    def __init__(self, host: str, port: int, path: str, cap: float, tls: bool = False) -> None:
        self.host, self.port, self.path, self.tls = host, port, path, tls
        self._cap = cap
        self.last_result: str | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()} last={self.last_result!r}>"

    def describe(self) -> str:
        return f"http GET {self.path}"

    async def check(self) -> bool:
        try:
            status = await fetch_status(self.host, self.port, self.path,
                                        timeout=PROBE_TIMEOUT, tls=self.tls)
        except GatewayError as exc:
            self.last_result = exc.detail
            return False
        self.last_result = f"HTTP {status}"
        return 200 <= status < 400

    async def wait_ready(self) -> None:
        await poll_until(self.check, self._cap)


class DelayProbe:
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.last_result: str | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()} last={self.last_result!r}>"

    def describe(self) -> str:
        return f"delay {self.delay}s"

    async def check(self) -> bool:
        return True  # nothing to probe: only the wait says anything

    async def wait_ready(self) -> None:
        await trio.sleep(self.delay)
        self.last_result = "delay elapsed"


def make_probe(target: ServiceConfig | PlacementConfig,
               readiness: ReadinessConfig | None = None) -> Probe:
    """The probe `readiness` (default: the target's own) describes, aimed at its upstream."""
    readiness = readiness or target.readiness or ReadinessConfig()
    host, port = target.upstream_host, target.upstream_port
    tls = target.upstream.startswith("https:")
    if readiness.kind == "http":
        assert readiness.http is not None
        return HttpProbe(host, port, target.upstream_prefix + readiness.http,
                         readiness.interval, tls)
    if readiness.kind == "delay":
        assert readiness.delay is not None
        return DelayProbe(readiness.delay)
    return TcpProbe(host, port, readiness.interval)


async def until_ready(service: str, running: Running, probe: Probe) -> None:
    """Probe until ready; a backend that ends meanwhile fails the start at once.
    Raises `StartFailed` (reason `exited`)."""
    ended: list[int | None] = []
    async with trio.open_nursery() as race:
        async def watch() -> None:
            ended.append(await running.wait())
            race.cancel_scope.cancel()

        async def wait_ready() -> None:
            await probe.wait_ready()
            race.cancel_scope.cancel()

        race.start_soon(watch)
        race.start_soon(wait_ready)
    if ended:
        raise StartFailed(
            f"{service!r} {running.describe_exit(ended[0])} while starting",
            service=service, reason="exited", exit_status=ended[0],
            log_tail=running.log_tail(LOG_TAIL_LINES))


async def probe_once(service: str, probe: Probe) -> None:
    """For a backend Hestia does not start: one probe decides, so that a client learns at once
    that it is not there. Raises `StartFailed` (reason `unreachable`)."""
    if not await probe.check():
        raise StartFailed(f"{service!r} is not reachable ({probe.last_result or 'no answer'})",
                          service=service, reason="unreachable")


async def watch_health(service: str, probe: Probe, health: HealthConfig) -> str:
    """Probe every `health.interval`; return the last result once `health.failures` probes in
    a row failed."""
    failed = 0
    while True:
        await trio.sleep(health.interval)
        if await probe.check():
            failed = 0
            continue
        failed += 1
        log.warning("health_check_failed", service=service, failures=failed,
                    of=health.failures, detail=probe.last_result)
        if failed >= health.failures:
            return probe.last_result or "no answer"
