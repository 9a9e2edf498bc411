"""The supervisor: the single owner of one backend's lifecycle.

```
 COLD ──lease wanted / start──▶ STARTING ──ready──▶ READY ──idle / stop──▶ STOPPING ──▶ COLD
   ▲                               │                  │
   │                every attempt failed              └── exited by itself (crash) ──▶ COLD
   │                               ▼
   └──────── cool-down over ─── FAILED   (requests meanwhile: 503 at once, attempts listed)
```

Request handlers never look at the state and act on it; they ask for a lease
(`async with supervisor.lease(): …`) and the supervisor decides. A request for a backend that is
not READY waits in the bounded FIFO hold queue; the supervisor's task starts the backend and, the
moment it is ready, grants a lease to every waiter in arrival order. A request arriving while the
backend is STOPPING waits as well and, once the stop is done, causes a fresh start.

The idle timer runs only while no lease is held, counting from the release of the last lease.
Everything that takes time (launch, probe, stop) happens in `run()`, the supervisor's own task;
the methods callers use (`lease`, `request_start`, `request_stop`, `close`) only record what is
wanted and wake that task.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import structlog
import trio

from ..config import ServiceConfig
from ..errors import (
    BackendCrashed,
    BackendStopped,
    GatewayError,
    QueueFull,
    QueueTimeout,
    StartCancelled,
)
from ..events import EventBus
from ..http.upstream import UpstreamPool
from ..launchers.base import Launcher, Running
from .groups import Group
from .history import StartHistory
from .leases import Lease, State, _Waiter
from .placement import Machines, Placement
from .readiness import LOG_TAIL_LINES, Probe, watch_health
from .startup import StartSequence

__all__ = ["Lease", "State", "Supervisor"]

log = structlog.get_logger("hestia.supervisor")


class Supervisor(StartSequence):
    """Owns one backend: `await nursery.start(sup.run)`, then `async with sup.lease(): …`."""

    def __init__(self, name: str, config: ServiceConfig, launcher: Launcher, probe: Probe, *,
                 fallbacks: Sequence[Placement] = (), machines: Machines | None = None,
                 group: Group | None = None, backend: str = "default",
                 drain_timeout: float = 10.0, events: EventBus | None = None) -> None:
        self.name = name  # the backend's id: the service's, or `<service>@<backend>`
        self.backend = backend
        self.service = name.partition("@")[0]  # what clients address (`HESTIA_SERVICE`)
        self.config = config
        self.placements = [Placement.primary(config, launcher, probe), *fallbacks]
        self.placement = self.placements[0]  # the one running, or last tried
        self.machines = machines or Machines()
        self.group = group
        self.drain_timeout = drain_timeout
        self.events = events or EventBus()
        self.state = State.COLD
        self.last_used: float | None = None        # wall clock, for people
        self.last_error: dict[str, Any] | None = None
        self.last_start_duration: float | None = None
        self.history = StartHistory()
        self.ready_since: float | None = None      # wall clock
        self.starts = 0
        self._leases: set[Lease] = set()
        self._active = 0  # leases that are not passive: only these hold off the idle timer
        self._waiters: dict[_Waiter, None] = {}
        self._changed = trio.Event()
        self._running: Running | None = None
        self._exit: tuple[Running, int | None] | None = None
        self._idle_since = 0.0                      # trio clock
        self._start_requested = False
        self._start_on: str | None = None  # a person asked for a start on this machine
        self._stop_requested: str | None = None
        self._start_scope: trio.CancelScope | None = None
        self._closing = False
        self._failures = 0
        self._retry_at = math.inf
        self._failed_until = 0.0
        self._unhealthy: str | None = None  # why the health check gave up on the backend
        self._adopted: Running | None = None  # to watch once run() has its nursery
        self._failure: GatewayError | None = None  # answered while FAILED

    def __repr__(self) -> str:
        return (f"<Supervisor {self.name} {self.state.name} leases={len(self._leases)} "
                f"waiting={len(self._waiters)}>")

    # --- what callers use ---------------------------------------------------------------------

    @property
    def launcher(self) -> Launcher:
        return self.placement.launcher

    @property
    def probe(self) -> Probe:
        return self.placement.probe

    @property
    def pool(self) -> UpstreamPool:
        return self.placement.pool

    @property
    def busy(self) -> bool:
        return bool(self._leases)

    @property
    def stop_pending(self) -> str | None:
        return self._stop_requested

    @property
    def in_flight(self) -> int:
        return len(self._leases)

    @property
    def queue_pending(self) -> int:
        return len(self._waiters)

    @property
    def pid(self) -> int | None:
        return self._running.pid if self._running is not None else None

    @property
    def running(self) -> Running | None:
        """What was started and is not stopped yet (None while COLD)."""
        return self._running

    @property
    def cooldown_remaining(self) -> float | None:
        """While FAILED: seconds until requests may start the backend again."""
        if self.state is not State.FAILED:
            return None
        return max(0.0, self._failed_until - trio.current_time())

    def acquire_nowait(self, *, passive: bool = False) -> Lease | None:
        """A lease at once when the backend is READY (the hot path), else None. A `passive`
        lease is for a request that does not count as use (an uptime monitor): it neither holds
        off nor resets the idle timer."""
        if self.state is State.READY and self._stop_requested is None and not self._closing:
            return self._grant(passive)
        return None

    async def acquire(self) -> Lease:
        """A lease, waiting in the hold queue (and starting the backend) when needed.

        Raises `QueueFull`, `QueueTimeout`, `StartFailed` or `StartCancelled` (all 503).
        Pair every lease with `release()`; `lease()` does both.
        """
        return self.acquire_nowait() or await self._wait_for_lease()

    def release(self, lease: Lease) -> None:
        if lease not in self._leases:
            return
        self._leases.discard(lease)
        if not self._leases:
            self._notify()  # a stop may be draining
            if self.group is not None:
                self.group.notify()  # a start in the group may be waiting for an idle member
        if lease.passive:
            return
        self._active -= 1
        self.last_used = time.time()
        if not self._active:
            self._idle_since = trio.current_time()
            self._notify()

    @asynccontextmanager
    async def lease(self) -> AsyncIterator[Lease]:
        """Hold the backend for the duration of the block, starting it if needed.

        Raises what `acquire` raises. When the lease is revoked (crash, stop), the block is
        cancelled and the context exits quietly with `lease.error` set: the caller answers that
        error if it can still answer at all.
        """
        lease = await self.acquire()
        try:
            with trio.CancelScope() as scope:
                lease.bind(scope)
                yield lease
        finally:
            self.release(lease)

    async def wait_until(self, *states: State) -> None:
        """Return once the backend is in one of `states`; the caller bounds the wait."""
        while self.state not in states:
            await self._changed.wait()

    def request_start(self, machine: str | None = None) -> bool:
        """Ask for a start without a request, on `machine`'s placements only if given. False
        when already starting or running."""
        if self.state in (State.STARTING, State.READY) or self._closing:
            return False
        self._start_requested = True  # from FAILED too: a person asking skips the cool-down
        self._start_on = machine
        self._notify()
        return True

    def request_stop(self, reason: str = "api") -> bool:
        """Ask for a stop. In-flight requests get `drain_timeout` to finish; requests arriving
        meanwhile wait for a fresh start. False when there is nothing to stop."""
        self._start_requested = False
        if self.state is State.STARTING and self._start_scope is not None:
            self._start_scope.cancel()
            return True
        if self.state is State.READY and not self._stop_requested:
            self._stop_requested = reason
            self._notify()
            return True
        return False

    def adopt(self, running: Running, placement: Placement | None = None) -> None:
        """Before `run()`: take over a backend that is already running and ready (left by a
        previous Hestia), as `placement` (default: the primary). It starts READY, with its
        idle timer running from now."""
        assert self.state is State.COLD and self._running is None
        self.placement = placement or self.placements[0]
        self._running = running
        self._adopted = running
        self.state = State.READY
        self.ready_since = time.time()
        log.info("backend_adopted", service=self.name, pid=running.pid)

    def close(self) -> None:
        """Begin shutting down: waiters get 503, the backend is stopped, `run()` returns."""
        self._closing = True
        if self._start_scope is not None:
            self._start_scope.cancel()
        self._notify()

    def retry_after(self) -> float:
        """A fair guess of when a refused client should try again, in seconds: what is left
        of a start under way, or how long starts take, from past starts."""
        wait = self.history.remaining()
        if wait is None:
            wait = self.history.expected() or self.last_start_duration or 5.0
        return max(1.0, wait)

    def _estimate(self) -> dict[str, Any]:
        wait = self.history.remaining()
        return {} if wait is None else {"estimated_wait_ms": round(wait * 1000)}

    # --- state changes (synchronous: decide here, act in run()) --------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _emit(self, kind: str, **data: Any) -> None:
        self.events.publish(kind, self.name, **data)

    def _set_state(self, state: State) -> None:
        previous, self.state = self.state, state
        self._notify()
        if previous is not state:
            self._emit("state", state=state.name, previous=previous.name,
                       machine=self.placement.machine)
        if self.group is not None and state in (State.COLD, State.FAILED):
            self.group.release(self)

    def _grant(self, passive: bool = False) -> Lease:
        lease = Lease(passive)
        self._leases.add(lease)
        if not passive:
            self._active += 1
            self.last_used = time.time()
        return lease

    async def _wait_for_lease(self) -> Lease:
        if self._closing:
            raise StartCancelled("the gateway is shutting down", service=self.name,
                                 retry_after=self.retry_after())
        if self.state is State.FAILED and self._failure is not None:
            failure = copy.copy(self._failure)
            failure.retry_after = max(1.0, self._failed_until - trio.current_time())
            raise failure
        if len(self._waiters) >= self.config.queue.max:
            log.warning("queue_overflow", service=self.name, queue_max=self.config.queue.max,
                        state=self.state.name)
            self._emit("queue_overflow", queue_max=self.config.queue.max, state=self.state.name)
            raise QueueFull(
                f"{self.config.queue.max} requests are already waiting for {self.name!r}",
                service=self.name, retry_after=self.retry_after(), state=self.state.name,
                **self._estimate())
        waiter = _Waiter()
        self._waiters[waiter] = None
        self._notify()
        try:
            with trio.move_on_after(self.config.queue.timeout):
                await waiter.event.wait()
        except BaseException:
            # Cancelled (client went away, shutdown): leave the queue, or give back a lease
            # that was granted in the same instant.
            if waiter.lease is not None:
                self.release(waiter.lease)
            self._waiters.pop(waiter, None)
            raise
        if not waiter.event.is_set():
            self._waiters.pop(waiter, None)
            log.warning("queue_timeout", service=self.name, state=self.state.name,
                        waited_s=self.config.queue.timeout)
            self._emit("queue_timeout", waited_s=self.config.queue.timeout,
                       state=self.state.name)
            raise QueueTimeout(
                f"{self.name!r} was not ready within {self.config.queue.timeout}s "
                f"(state {self.state.name})",
                service=self.name, retry_after=self.retry_after(), state=self.state.name,
                **self._estimate())
        if waiter.error is not None:
            raise copy.copy(waiter.error)
        assert waiter.lease is not None
        return waiter.lease

    def _release_waiters(self) -> None:
        """READY: every waiter gets its lease, in arrival order, in one go."""
        waiters, self._waiters = self._waiters, {}
        for waiter in waiters:
            waiter.lease = self._grant()
            waiter.event.set()

    def _fail_waiters(self, error: GatewayError) -> None:
        waiters, self._waiters = self._waiters, {}
        for waiter in waiters:
            waiter.error = error
            waiter.event.set()

    def _revoke_leases(self, error: GatewayError) -> None:
        for lease in list(self._leases):
            lease.revoke(error)

    # --- the owner's task ---------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the backend until `close()`; a backend still running on the way out is stopped."""
        try:
            async with trio.open_nursery() as nursery:
                if self.config.keep_warm:
                    self._start_requested = True
                if self._adopted is not None:
                    self._idle_since = trio.current_time()
                    nursery.start_soon(self._watch_exit, self._adopted)
                    self._adopted = None
                task_status.started()
                await self._loop(nursery)
                nursery.cancel_scope.cancel()
        finally:
            if self._running is not None:
                with trio.CancelScope(shield=True):
                    await self._running.stop()
                self._running = None

    async def _loop(self, nursery: trio.Nursery) -> None:
        while True:
            if self._closing:
                await self._shut_down()
                return
            if self.state is State.COLD:
                if self._waiters or self._start_requested or trio.current_time() >= self._retry_at:
                    await self._start(nursery)
                else:
                    with trio.move_on_at(self._retry_at):
                        await self._changed.wait()
            elif self.state is State.READY:
                await self._while_ready()
            elif self.state is State.FAILED:
                with trio.move_on_at(self._failed_until):
                    await self._changed.wait()
                if self._start_requested or trio.current_time() >= self._failed_until:
                    self._failure = None
                    self._set_state(State.COLD)

    @property
    def launcher_kind(self) -> str:
        return self.placement.kind

    async def _watch_exit(self, running: Running) -> None:
        status = await running.wait()
        if self._running is running and self.state is State.READY:
            self._exit = (running, status)
            self._notify()

    async def _while_ready(self) -> None:
        async with trio.open_nursery() as nursery:
            if self.config.health is not None:
                nursery.start_soon(self._check_health)
            await self._serve_until_not_ready()
            nursery.cancel_scope.cancel()

    async def _serve_until_not_ready(self) -> None:
        while True:
            if self._closing:
                return
            if self._exit is not None:
                await self._crashed()
                return
            if self._stop_requested is not None:
                await self._stop(self._stop_requested)
                return
            deadline = math.inf
            idle_timeout = 0.0 if self.config.keep_warm else self.config.idle_timeout
            if idle_timeout > 0 and not self._active:
                deadline = self._idle_since + idle_timeout
                if trio.current_time() >= deadline:
                    await self._stop("idle")
                    return
            with trio.move_on_at(deadline):
                await self._changed.wait()

    async def _check_health(self) -> None:
        """While READY: `health.failures` failed probes in a row make the backend count as
        crashed (stopped, then COLD)."""
        assert self.config.health is not None
        reason = await watch_health(self.name, self.probe, self.config.health)
        running = self._running
        if running is not None:
            with trio.CancelScope(shield=True):
                await running.stop()
            self._exit = (running, None)
            self._unhealthy = reason
            self._notify()

    async def _crashed(self) -> None:
        assert self._exit is not None
        running, status = self._exit
        self._exit = None
        self._running = None
        reason = running.describe_exit(status)
        if self._unhealthy is not None:
            reason = (f"failed {self.config.health.failures if self.config.health else 0} "
                      f"health checks in a row ({self._unhealthy}) and was stopped")
            self._unhealthy = None
        tail = running.log_tail(LOG_TAIL_LINES)
        error = BackendCrashed(f"{self.name!r} {reason} while serving", service=self.name,
                               exit_status=status, log_tail=tail)
        self.last_error = {"at": time.time(), "error": error.code, "detail": error.detail,
                           "exit_status": status, "log_tail": tail}
        self._emit("crashed", detail=reason, exit_status=status)
        log.error("backend_crashed", service=self.name, detail=reason, exit_status=status,
                  in_flight=len(self._leases), log_tail=tail)
        self._revoke_leases(error)
        self.ready_since = None
        await self.pool.clear()
        self._set_state(State.COLD)
        if self.config.keep_warm:
            self._start_requested = True

    async def _stop(self, reason: str) -> None:
        self._stop_requested = None
        self._set_state(State.STOPPING)
        began = trio.current_time()
        if self._leases:
            with trio.move_on_after(self.drain_timeout):
                while self._leases:
                    await self._changed.wait()
            self._revoke_leases(BackendStopped(f"{self.name!r} was stopped ({reason})",
                                               service=self.name))
        running, self._running = self._running, None
        if running is not None:
            with trio.CancelScope(shield=True):
                await running.stop()
        await self.pool.clear()
        self.ready_since = None
        self._set_state(State.COLD)
        self._emit("stopped", reason=reason,
                   duration_ms=round((trio.current_time() - began) * 1000, 1))
        log.info("backend_stopped", service=self.name, reason=reason,
                 stop_duration_ms=round((trio.current_time() - began) * 1000, 1))

    async def _shut_down(self) -> None:
        self._fail_waiters(StartCancelled("the gateway is shutting down", service=self.name,
                                          retry_after=self.retry_after()))
        if self._running is not None:
            self._revoke_leases(BackendStopped("the gateway is shutting down",
                                               service=self.name))
            await self._stop("shutdown")
