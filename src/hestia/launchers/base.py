"""The launcher protocol.

A launcher turns "start this backend" into something running, and gives back a `Running`
handle, which the supervisor owns from then on: it waits on it (a return means the thing ended
by itself: a crash while ready, a failure while starting) and stops it. Readiness is not the
launcher's business: the supervisor probes the upstream.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import ClassVar, Protocol
from urllib.parse import urlsplit

import trio

__all__ = ["LaunchContext", "Launcher", "Running", "StopOnce", "upstream_host"]


def upstream_host(upstream: str) -> str:
    """The host of an upstream URL (without the brackets of an IPv6 address)."""
    return urlsplit(upstream).hostname or ""


@dataclass(frozen=True, slots=True)
class LaunchContext:
    """What a launcher knows about the backend it starts."""

    service: str
    backend: str
    upstream: str
    port: int
    machine: str = "local"

    def environment(self, action: str) -> dict[str, str]:
        """The `HESTIA_*` variables every launcher that runs a program passes to it."""
        return {"HESTIA_SERVICE": self.service, "HESTIA_BACKEND": self.backend,
                "HESTIA_MACHINE": self.machine, "HESTIA_UPSTREAM": self.upstream,
                "HESTIA_PORT": str(self.port), "HESTIA_ACTION": action}


class Running(Protocol):
    """A started backend."""

    pid: int | None

    async def wait(self) -> int | None:
        """Return when the backend ends by itself, with its exit status (None if unknown).
        A launcher whose backend cannot end by itself never returns."""
        ...

    async def stop(self) -> None:
        """Stop it gracefully, then forcibly; return once nothing of it is left. Must be safe to
        call after it ended, more than once, and inside a shielded cancel scope."""
        ...

    def describe_exit(self, status: int | None) -> str:
        """A reason for a failure report: `exited with status 3`, `killed by SIGKILL`."""
        ...

    def log_tail(self, lines: int = 20) -> list[str]:
        """The last lines the backend wrote since this start (empty if unknown)."""
        ...


class Launcher(Protocol):
    """Starts a backend. Raises `StartFailed` when it cannot even begin (e.g. no such program).

    Launchers subclass it, for the defaults of what the supervisor asks of each (startup.py).
    """

    # A remote job that bounds itself (a Semaphore task has `task_timeout`): the readiness
    # timeout counts from the end of `start`, not from its beginning.
    times_its_start: ClassVar[bool] = False
    # Nothing is started (an `external` backend): one probe decides at once, instead of
    # probing until the readiness timeout.
    probe_only: ClassVar[bool] = False

    @property
    def kind(self) -> str:
        """Its name in the configuration (`process`, `semaphore`, …); launchers set it."""
        return type(self).__name__

    async def start(self, context: LaunchContext) -> Running: ...


class StopOnce:
    """Runs a `Running`'s stop at most once: a second caller (the protocol allows several)
    waits for the first instead of running the stop again — stopping a remote machine twice
    only produces a failed ssh."""

    __slots__ = ("begun", "done")

    def __init__(self) -> None:
        self.begun = False
        self.done = trio.Event()

    async def __call__(self, stop: Callable[[], Awaitable[None]]) -> None:
        if self.begun:
            await self.done.wait()
            return
        self.begun = True
        try:
            await stop()
        finally:
            self.done.set()

    def state(self, otherwise: str) -> str:
        return "stopped" if self.done.is_set() else "stopping" if self.begun else otherwise
