"""The supervisor: the single owner of one backend's lifecycle.

```
 COLD ──lease wanted / start──▶ STARTING ──ready──▶ READY ──idle / stop──▶ STOPPING ──▶ COLD
   ▲                               │                  │  └── health checks failed ──▲
   │                every attempt failed              └── exited by itself (crash) ──▶ COLD
   │                               ▼
   └──────── cool-down over ─── FAILED   (requests meanwhile: 503 at once, attempts listed)
```

Request handlers never look at the state and act on it; they ask for a lease
(`async with supervisor.lease(): …`) and the supervisor decides. A request for a backend that is
not READY waits in the bounded FIFO hold queue; the supervisor's task starts the backend and, the
moment it is ready, grants a lease to every waiter in arrival order, up to `max_connections`
(holding.py). A request arriving while the backend is STOPPING waits as well and, once the stop
is done, causes a fresh start.

Every transition is taken in one synchronous step: set the state, revoke the leases, answer the
waiters, and note what must be closed; the closing (a process, the pooled connections) comes
after. So a lease is never granted on a backend that is already dead or being stopped.

A start is the supervisor's `StartSequence` (startup.py): it tries the placements and hands back
the backend, ready, or the failure; the supervisor makes the transitions. After a crash, or a
failed start of a `keep_warm` backend, the next start waits for the restart backoff (startup.py:
`Backoff`), so a backend that dies right after becoming ready is not restarted in a tight loop.
The count of failures in a row is reset once the backend has stayed READY for `STABLE_AFTER`.

The idle timer runs only while no lease is held, counting from the release of the last lease.
Everything that takes time (launch, probe, stop) happens in `run()`, the supervisor's own task;
the methods callers use (`lease`, `request_start`, `request_stop`, `close`) only record what is
wanted and wake that task.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import structlog
import trio

from ..config import ServiceConfig
from ..errors import BackendCrashed, BackendStopped, GatewayError, StartCancelled
from ..events import EventBus
from ..launchers.base import Launcher, Running
from ..upstream import UpstreamPool
from .groups import Group
from .health import HealthWatch
from .history import StartHistory
from .holding import HoldQueue
from .leases import Lease, State
from .placement import Machines, Placement
from .readiness import LOG_TAIL_LINES, Probe
from .reconfigure import Reconfiguring
from .resuming import Resumable
from .startup import Backoff, StartSequence
from .warmth import Peer, Warmth

__all__ = ["Lease", "State", "Supervisor"]

log = structlog.get_logger("hestia.supervisor")


class Supervisor(HoldQueue, Reconfiguring, Warmth, Resumable, HealthWatch):
    """Owns one backend: `await nursery.start(sup.run)`, then `async with sup.lease(): …`."""

    def __init__(self, name: str, config: ServiceConfig, launcher: Launcher, probe: Probe, *,
                 fallbacks: Sequence[Placement] = (), machines: Machines | None = None,
                 group: Group | None = None, backend: str = "default",
                 drain_timeout: float = 10.0, events: EventBus | None = None,
                 peers: Mapping[str, Peer] | None = None,
                 now: Callable[[], float] | None = None) -> None:  # both: warmth.py
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
        self.last_error: dict[str, Any] | None = None
        self.last_start_duration: float | None = None
        self.history = StartHistory()
        self.ready_since: float | None = None      # wall clock
        self.starts = 0
        self._starting = StartSequence(name, backend=backend, service=self.service,
                                       startup=config.startup, machines=self.machines,
                                       emit=self._emit)
        self._backoff = Backoff(config.startup)
        HoldQueue.__init__(self, config.max_connections)
        Warmth.__init__(self, peers, now)
        self._changed = trio.Event()
        self._running: Running | None = None
        self._exit: tuple[Running, int | None] | None = None
        self._ready_at = 0.0                        # trio clock
        self._start_requested = False  # a person asked: skips the cool-down and the backoff
        self._auto_start = False  # keep_warm wants it running again
        self._start_on: str | None = None  # a person asked for a start on this machine
        self._stop_requested: str | None = None
        self._start_scope: trio.CancelScope | None = None
        self._closing = False
        Reconfiguring.__init__(self)
        HealthWatch.__init__(self)
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
    def stop_pending(self) -> str | None:
        return self._stop_requested

    @property
    def pid(self) -> int | None:
        running = self.running
        return running.pid if running is not None else None

    @property
    def running(self) -> Running | None:
        """What was started and is not stopped yet (None while COLD): while STARTING, what
        the attempt under way started."""
        return self._running if self._running is not None else self._starting.running

    @property
    def cooldown_remaining(self) -> float | None:
        """While FAILED: seconds until requests may start the backend again."""
        return self._backoff.cooldown_remaining() if self.state is State.FAILED else None

    @property
    def failures_in_a_row(self) -> int:
        """Failed starts and crashes since the backend last stayed READY `STABLE_AFTER` (or
        was stopped on purpose)."""
        ready_for = trio.current_time() - self._ready_at if self.state is State.READY else None
        return self._backoff.failures_now(ready_for)

    @property
    def next_attempt_in(self) -> float | None:
        """While COLD or FAILED after failures: seconds until the next start may begin (a
        `keep_warm` backend starts then; requests wait for it). None: it may begin at once."""
        cold = self.state in (State.COLD, State.FAILED)
        return self._backoff.next_attempt_in() if cold else None

    async def wait_until(self, *states: State) -> None:
        """Return once the backend is in one of `states`; the caller bounds the wait."""
        while self.state not in states:
            await self._changed.wait()

    def request_start(self, machine: str | None = None) -> bool:
        """Ask for a start without a request, on `machine`'s placements only if given. False
        when already starting or running."""
        if self.state in (State.STARTING, State.READY) or self._closing:
            return False
        # From FAILED too, and during a restart backoff: a person asking skips both.
        self._start_requested = True
        self._start_on = machine
        self._notify()
        return True

    def request_stop(self, reason: str = "api") -> bool:
        """Ask for a stop. In-flight requests get `drain_timeout` to finish; requests arriving
        meanwhile wait for a fresh start. False when there is nothing to stop."""
        self._start_requested = False
        self._auto_start = False
        self._stop_asked()
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
        if state in (State.COLD, State.FAILED):
            self._release_dependencies()
            if self.group is not None:
                self.group.release(self)

    def _crashed(self) -> UpstreamPool:
        """READY → COLD for a backend that exited by itself, in one step: no lease can be
        granted on it after this. Returns the pool whose connections must be closed."""
        assert self._exit is not None
        running, status = self._exit
        self._exit = None
        self._running = None
        ready_for = self._end_ready(running, running.describe_exit(status), status)
        self._set_state(State.COLD)
        self._restart_after_crash(ready_for)
        return self.pool

    def _end_ready(self, running: Running, reason: str, status: int | None) -> float:
        """Record a crash and revoke every lease with it; how long the backend was READY."""
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
        return trio.current_time() - self._ready_at

    def _restart_after_crash(self, ready_for: float) -> None:
        """The next start (keep_warm's, or a waiting request's) waits for the backoff if the
        backend is in a crash loop (startup.py: `Backoff.crashed`)."""
        delay = self._backoff.crashed(ready_for)
        if delay is not None:
            log.warning("restart_delayed", service=self.name, failures=self._backoff.failures,
                        delay_s=delay)
        self._auto_start = self.config.always_warm  # a held backend is wanted anyway

    # --- the owner's task ---------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the backend until `close()`; a backend still running on the way out is stopped."""
        try:
            async with trio.open_nursery() as nursery:
                if self.config.always_warm:
                    self._auto_start = True
                nursery.start_soon(self._follow_schedule)
                if self._adopted is not None:
                    self._idle_since = self._ready_at = trio.current_time()
                    nursery.start_soon(self._watch_exit, self._adopted)
                    self._adopted = None
                task_status.started()
                await self._resume(nursery)  # a remote backend a killed Hestia left (if any)
                await self._loop(nursery)
                nursery.cancel_scope.cancel()
        finally:
            running = self.running  # or what a start under way had started
            if running is not None:
                with trio.CancelScope(shield=True):
                    await running.stop()
                self._running = self._starting.running = None
            self.closed.set()

    async def _loop(self, nursery: trio.Nursery) -> None:
        while True:
            if self._closing:
                await self._shut_down()
                return
            if self._next is not None and self.state in (State.COLD, State.FAILED):
                self._take_next()
            if self.state is State.COLD:
                wanted = bool(self._waiters) or self._auto_start or bool(self._holds)
                retry_at = self._backoff.retry_at
                if self._start_requested or (wanted and trio.current_time() >= retry_at):
                    await self._start(nursery)
                else:
                    with trio.move_on_at(retry_at if wanted else math.inf):
                        await self._changed.wait()
            elif self.state is State.READY:
                await self._while_ready()
            elif self.state is State.FAILED:
                with trio.move_on_at(self._backoff.failed_until):
                    await self._changed.wait()
                if self._start_requested or trio.current_time() >= self._backoff.failed_until:
                    self._failure = None
                    self._set_state(State.COLD)

    @property
    def launcher_kind(self) -> str:
        return self.placement.kind

    async def _start(self, nursery: trio.Nursery) -> None:
        """Try the placements (startup.py: `StartSequence`): READY, or FAILED listing every
        attempt."""
        self._start_requested = False
        self._auto_start = False
        placements = [p for p in self.placements
                      if self._start_on is None or p.machine == self._start_on
                      ] or self.placements
        self._start_on = None
        self._exit = None
        self.starts += 1
        self._set_state(State.STARTING)
        self.history.begin()
        self._starting.begin()
        began = trio.current_time()
        with trio.CancelScope() as self._start_scope:
            dependency_error = await self._start_dependencies()
            if dependency_error is None:
                if self.group is not None:
                    await self.group.acquire(self)
                await self._starting.run(placements, self._use)
        cancelled = self._start_scope.cancelled_caught
        self._start_scope = None
        # The backend, ready; or what an attempt cut short had started (stopped below).
        running = self._running = self._starting.running
        self._starting.running = None
        duration = trio.current_time() - began
        if running is None or cancelled:
            self.history.end(None)
            await self._start_failed(duration, cancelled=cancelled,
                                     error=None if cancelled else dependency_error)
            return
        self.history.end(duration)
        self.last_start_duration = duration
        self.ready_since = time.time()
        self._idle_since = self._ready_at = trio.current_time()
        nursery.start_soon(self._watch_exit, running)
        self._set_state(State.READY)
        attempt = len(self._starting.attempts) + 1
        log.info("backend_ready", service=self.name, start_duration_ms=round(duration * 1000, 1),
                 attempt=attempt, waiting=len(self._waiters), pid=running.pid)
        self._emit("ready", machine=self.placement.machine, attempts=attempt,
                   pid=running.pid, launcher=self.launcher_kind,
                   upstream=self.placement.upstream,
                   duration_ms=round(duration * 1000, 1))
        self._grant_waiters()

    def _use(self, placement: Placement) -> None:
        self.placement = placement  # the one tried now, and running once READY

    async def _start_failed(self, duration: float, *, cancelled: bool,
                            error: GatewayError | None = None) -> None:
        """Every attempt failed, or the start was cancelled: answer the waiters, in one step
        with the state. A process left by an attempt cut short is stopped after that step,
        in STOPPING: a request arriving meanwhile waits for a fresh start, not for this one's
        error."""
        error = error or self._starting.failure(duration, cancelled=cancelled,
                                                retry_after=self.retry_after())
        self._start_ended(error)
        self.last_error = {"at": time.time(), "error": error.code, "detail": error.detail,
                           **error.extra}
        retry = not cancelled and not self._closing
        failed = retry and self._backoff.start_failed(keep_warm=self.warm)
        if self.config.always_warm and retry:
            self._auto_start = True
        running, self._running = self._running, None
        # Cancelled for a reload (`replace_launch`): the waiters wait for the new start.
        keep_waiters = cancelled and self._next is not None and not self._closing
        if running is not None:  # cut short in the middle of an attempt
            self._set_state(State.STOPPING)
            if not keep_waiters:
                self._fail_waiters(error)
            with trio.CancelScope(shield=True):
                await running.stop()
            self._set_state(State.COLD)
        elif not failed:
            self._set_state(State.COLD)
            if not keep_waiters:
                self._fail_waiters(error)
        else:
            self._failure = error
            error.retry_after = self.config.startup.cooldown
            self._set_state(State.FAILED)
            self._fail_waiters(error)

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
                pool = self._crashed()
                await pool.clear()
                return
            if self._unhealthy is not None:
                await self._stop_unhealthy()
                return
            if self._health_changed:
                self._health_changed = False
                return  # `_while_ready` again, with the new health watch
            if self._stop_requested is not None:
                await self._stop(self._stop_requested)
                return
            deadline = math.inf
            idle_timeout = 0.0 if self.warm else self.config.idle_timeout
            if idle_timeout > 0 and not self._active:
                deadline = self._idle_since + idle_timeout
                if trio.current_time() >= deadline:
                    await self._stop("idle")
                    return
            with trio.move_on_at(deadline):
                await self._changed.wait()

    async def _stop(self, reason: str) -> None:
        self._stop_requested = None
        self._set_state(State.STOPPING)
        began = trio.current_time()
        await self._stop_dependents()
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
        pool = self.pool
        self.ready_since = None
        # Stopped on purpose, not crashed: whatever failures came before are no longer "in a
        # row" with the next one.
        self._backoff.reset()
        self._set_state(State.COLD)
        self._emit("stopped", reason=reason,
                   duration_ms=round((trio.current_time() - began) * 1000, 1))
        log.info("backend_stopped", service=self.name, reason=reason,
                 stop_duration_ms=round((trio.current_time() - began) * 1000, 1))
        await pool.clear()

    async def _shut_down(self) -> None:
        detail = self._closing_detail
        self._fail_waiters(StartCancelled(detail, service=self.name,
                                          retry_after=self.retry_after()))
        if self._running is not None:
            # At shutdown the server has already given in-flight requests the grace period;
            # a backend removed by a reload gives its own now (`_stop`).
            if not self._retired:
                self._revoke_leases(BackendStopped(detail, service=self.name))
            await self._stop("removed" if self._retired else "shutdown")
