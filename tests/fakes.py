"""A fake launcher and probe for unit tests in virtual time (no processes, no sockets)."""

from __future__ import annotations

import math
from typing import Any

import trio
import trio.testing

from hestia.config import ServiceConfig
from hestia.errors import StartFailed
from hestia.launchers.base import LaunchContext, Launcher
from hestia.lifecycle.supervisor import Supervisor


class FakeRunning:
    def __init__(self, launcher: FakeLauncher, pid: int) -> None:
        now = trio.current_time()
        self.launcher = launcher
        self.pid = pid
        self.ready_at = now + launcher.start_s if launcher.ready else math.inf
        self.exit_at = math.inf if launcher.exit_after is None else now + launcher.exit_after
        self.status: int | None = None
        self._exited = trio.Event()

    def exit(self, status: int | None) -> None:
        if not self._exited.is_set():
            self.status = status
            self._exited.set()

    async def wait(self) -> int | None:
        with trio.move_on_at(self.exit_at):
            await self._exited.wait()
        self.exit(self.launcher.exit_status)
        return self.status

    async def stop(self) -> None:
        if self._exited.is_set():
            return
        self.launcher.stop_calls.append(trio.current_time())
        await trio.sleep(self.launcher.stop_s)
        self.exit(-15)

    def describe_exit(self, status: int | None) -> str:
        return f"exited with status {status}"

    def log_tail(self, lines: int = 20) -> list[str]:
        return [f"fake log of pid {self.pid}"]


class FakeLauncher(Launcher):
    """Starts a `FakeRunning` that is ready `start_s` after its start.

    `ready=False`: never ready. `exit_after`: ends by itself that long after its start with
    `exit_status`. `spawn_error`: the start itself fails. `stop_s`: a stop takes that long.
    """

    def __init__(self, *, start_s: float = 1.0, ready: bool = True,
                 exit_after: float | None = None, exit_status: int = 1, stop_s: float = 0.0,
                 spawn_error: str | None = None) -> None:
        self.start_s = start_s
        self.ready = ready
        self.exit_after = exit_after
        self.exit_status = exit_status
        self.stop_s = stop_s
        self.spawn_error = spawn_error
        self.starts: list[float] = []
        self.stop_calls: list[float] = []
        self.current: FakeRunning | None = None

    async def start(self, context: LaunchContext) -> FakeRunning:
        self.starts.append(trio.current_time())
        if self.spawn_error:
            raise StartFailed(self.spawn_error, service=context.service, reason="spawn_failed")
        self.current = FakeRunning(self, 1000 + len(self.starts))
        return self.current


class FakeProbe:
    def __init__(self, launcher: FakeLauncher) -> None:
        self.launcher = launcher
        self.last_result: str | None = None
        self.healthy = True  # what `check` answers once ready

    def describe(self) -> str:
        return "fake"

    async def check(self) -> bool:
        current = self.launcher.current
        ready = current is not None and trio.current_time() >= current.ready_at
        self.last_result = "ok" if ready and self.healthy else "refused"
        return ready and self.healthy

    async def wait_ready(self) -> None:
        assert self.launcher.current is not None
        await trio.sleep_until(self.launcher.current.ready_at)
        self.last_result = "ready"


def service(**fields: Any) -> ServiceConfig:
    base: dict[str, Any] = {"upstream": "http://127.0.0.1:9",
                            "launcher": {"process": {"command": ["unused"]}}}
    return ServiceConfig.model_validate({**base, **fields})


def supervisor(launcher: FakeLauncher | None = None, *, drain_timeout: float = 10.0,
               **fields: Any) -> Supervisor:
    launcher = launcher or FakeLauncher()
    return Supervisor("echo", service(**fields), launcher, FakeProbe(launcher),
                      drain_timeout=drain_timeout)


class SlowPool:
    """Stands in for a placement's `UpstreamPool` whose connections take `close_s` to close,
    so that a test can act while a supervisor cleans up after its backend."""

    def __init__(self, close_s: float) -> None:
        self.close_s = close_s
        self.cleared: list[float] = []

    async def clear(self) -> None:
        self.cleared.append(trio.current_time())
        await trio.sleep(self.close_s)


class MemoryUpstream:
    """An upstream on in-memory streams, for `UpstreamPool.open_stream`: each connection is
    served by `_serve` in `run`'s nursery, so tests of the proxy run in virtual time."""

    connections = 0

    async def open(self, host: str, port: int) -> trio.abc.Stream:
        ours, theirs = trio.testing.memory_stream_pair()
        self.connections += 1
        self._nursery.start_soon(self._serve, theirs)
        return ours

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as self._nursery:
            task_status.started()
            await trio.sleep_forever()

    async def _serve(self, stream: trio.testing.StapledStream) -> None:
        raise NotImplementedError
