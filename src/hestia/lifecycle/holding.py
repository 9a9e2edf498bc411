"""Leases and the hold queue of a supervisor: who uses the backend now, and who waits, in order.

A mixin of `Supervisor` (lifecycle/supervisor.py), split out to keep both modules readable. It
stays a mixin rather than an object of its own because every step asks the lifecycle state
(grant now, refuse, or hold?) and wakes the supervisor's task: what it reads of its owner is
declared on the class. All of it is synchronous but `_wait_for_lease`, so a grant, a release or
a hand-over happens in one step that no other task can see halfway.

`max_connections` caps the leases that count: every lease but a passive one, from its grant
until its release, its revocation, or `free_slot` (an open WebSocket: long-lived and mostly
idle, it would otherwise starve plain requests). A request that finds every slot taken waits in
the same hold queue as requests waiting for a start, behind everyone already there, within the
same `queue.timeout`. A released slot goes to the first waiter in the same step, so a request
arriving meanwhile can never overtake the queue.
"""

from __future__ import annotations

import collections
import copy
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import structlog
import trio

from ..config import ServiceConfig
from ..errors import GatewayError, QueueFull, QueueTimeout, StartCancelled
from .groups import Group
from .history import StartHistory
from .leases import Lease, State, _Waiter
from .placement import Placement
from .startup import Backoff

__all__ = ["HoldQueue"]

log = structlog.get_logger("hestia.supervisor")


class HoldQueue:
    """`acquire`, `release`, `lease` and what they need; `Supervisor` inherits it."""

    # What it reads of its owner, the supervisor:
    name: str
    state: State
    config: ServiceConfig
    group: Group | None
    placement: Placement  # the one running
    history: StartHistory
    last_start_duration: float | None
    next_attempt_in: float | None
    _stop_requested: str | None
    _closing: bool
    _closing_detail: str  # why no lease is granted any more
    _failure: GatewayError | None  # answered while FAILED
    _backoff: Backoff

    def _notify(self) -> None: ...  # wake the owner's task

    def _emit(self, kind: str, **data: Any) -> None: ...  # publish an event

    def __init__(self, max_connections: int | None) -> None:
        self.last_used: float | None = None  # wall clock, for people
        self._leases: set[Lease] = set()
        self._active = 0  # leases that are not passive: only these hold off the idle timer
        self._counted = 0  # leases that hold one of `max_connections`
        self._cap = max_connections or math.inf  # read on the hot path: no model access
        # Ordered, with O(1) removal from anywhere (a waiter that gives up) and from the front.
        self._waiters: collections.OrderedDict[_Waiter, None] = collections.OrderedDict()
        self._idle_since = 0.0  # trio clock

    @property
    def busy(self) -> bool:
        return bool(self._leases)

    @property
    def in_flight(self) -> int:
        return len(self._leases)

    @property
    def queue_pending(self) -> int:
        return len(self._waiters)

    @property
    def connections_in_use(self) -> int:
        """Leases counted against `max_connections`."""
        return self._counted

    def acquire_nowait(self, *, passive: bool = False) -> Lease | None:
        """A lease at once when the backend is READY with a free slot and nobody waiting (the
        hot path), else None. A `passive` lease is for a request that does not count as use
        (an uptime monitor): it neither holds off nor resets the idle timer, and it never
        counts against `max_connections` (such a request must not wait, nor wake anything)."""
        if self.state is State.READY and self._stop_requested is None and not self._closing:
            if passive:
                return self._grant(passive=True)
            if self._counted < self._cap and not self._waiters:
                return self._grant()
        return None

    async def acquire(self) -> Lease:
        """A lease, waiting in the hold queue (and starting the backend) when needed.

        Raises `QueueFull`, `QueueTimeout`, `StartFailed` or `StartCancelled` (all 503).
        Pair every lease with `release()`; `lease()` does both.
        """
        return self.acquire_nowait() or await self._wait_for_lease()

    async def acquire_watching(self,
                               watch: Callable[[trio.CancelScope], Awaitable[None]],
                               ) -> Lease | None:
        """A lease (waiting in the hold queue if need be) while `watch(scope)` looks out for the
        client leaving, and cancels `scope` when it does: then None, or a lease granted in the
        same instant, which the caller gives back. Raises what `acquire` raises."""
        lease: Lease | None = None
        error: GatewayError | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch, nursery.cancel_scope)
            try:
                lease = await self.acquire()
            except GatewayError as exc:
                error = exc  # raised outside the nursery, not inside an exception group
            nursery.cancel_scope.cancel()
        if error is not None:
            raise error
        return lease

    def release(self, lease: Lease) -> None:
        if lease not in self._leases:
            return
        self._leases.discard(lease)
        if lease.counted:
            self._uncount(lease)
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

    def free_slot(self, lease: Lease) -> None:
        """`lease` keeps the backend busy (no idle stop) but stops counting against
        `max_connections`: its slot goes to the first waiter. For an open WebSocket."""
        if lease in self._leases:
            self._uncount(lease)

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

    def retry_after(self) -> float:
        """A fair guess of when a refused client should try again, in seconds: what is left
        of a start under way, or how long starts take (from past starts) after what is left of
        a restart backoff."""
        wait = self.history.remaining()
        if wait is None:
            wait = self.history.expected() or self.last_start_duration or 5.0
            wait += self.next_attempt_in or 0.0
        return max(1.0, wait)

    def _estimate(self) -> dict[str, Any]:
        wait = self.history.remaining()
        return {} if wait is None else {"estimated_wait_ms": round(wait * 1000)}

    # --- synchronous steps --------------------------------------------------------------------

    def _grant(self, passive: bool = False) -> Lease:
        lease = Lease(self.placement, self.config.timeouts, passive)
        self._leases.add(lease)
        if not passive:
            lease.counted = True
            self._counted += 1
            self._active += 1
            self.last_used = time.time()
        return lease

    def _uncount(self, lease: Lease) -> None:
        if lease.counted:
            lease.counted = False
            self._counted -= 1
            if self._waiters:
                self._grant_waiters()

    def _grant_waiters(self) -> None:
        """READY: the first waiters get a lease each, in arrival order, while slots are free."""
        if self.state is not State.READY or self._stop_requested is not None or self._closing:
            return
        while self._waiters and self._counted < self._cap:
            waiter, _ = self._waiters.popitem(last=False)
            waiter.lease = self._grant()
            waiter.event.set()

    def _fail_waiters(self, error: GatewayError) -> None:
        waiters, self._waiters = self._waiters, type(self._waiters)()
        for waiter in waiters:
            waiter.error = error
            waiter.event.set()

    def _revoke_leases(self, error: GatewayError) -> None:
        """Every lease ends with `error`. A revoked lease stops counting at once: its holder
        may take a while to give it back, and its slot belongs to the next backend."""
        for lease in list(self._leases):
            if lease.counted:
                lease.counted = False
                self._counted -= 1
            lease.revoke(error)

    # --- waiting ------------------------------------------------------------------------------

    async def _wait_for_lease(self) -> Lease:
        if self._closing:
            raise StartCancelled(self._closing_detail, service=self.name,
                                 retry_after=self.retry_after())
        if self.state is State.FAILED and self._failure is not None:
            failure = copy.copy(self._failure)
            failure.retry_after = max(1.0, self._backoff.failed_until - trio.current_time())
            raise failure
        queue = self.config.queue
        if len(self._waiters) >= queue.max:
            log.warning("queue_overflow", service=self.name, queue_max=queue.max,
                        state=self.state.name)
            self._emit("queue_overflow", queue_max=queue.max, state=self.state.name)
            raise QueueFull(
                f"{queue.max} requests are already waiting for {self.name!r}",
                service=self.name, retry_after=self.retry_after(), state=self.state.name,
                **self._estimate())
        waiter = _Waiter()
        self._waiters[waiter] = None
        self._notify()
        try:
            with trio.move_on_after(queue.timeout):
                await waiter.event.wait()
        except BaseException:
            # Cancelled (client went away, shutdown): leave the queue, or give back a lease
            # that was granted in the same instant (its slot goes to the next waiter).
            if waiter.lease is not None:
                self.release(waiter.lease)
            self._waiters.pop(waiter, None)
            raise
        if not waiter.event.is_set():
            self._waiters.pop(waiter, None)
            log.warning("queue_timeout", service=self.name, state=self.state.name,
                        waited_s=queue.timeout)
            self._emit("queue_timeout", waited_s=queue.timeout, state=self.state.name)
            if self.state is State.READY and self._stop_requested is None:
                detail = (f"no connection to {self.name!r} came free within {queue.timeout}s "
                          f"(all {self.config.max_connections} of max_connections in use)")
            else:
                detail = (f"{self.name!r} was not ready within {queue.timeout}s "
                          f"(state {self.state.name})")
            raise QueueTimeout(detail, service=self.name, retry_after=self.retry_after(),
                               state=self.state.name, **self._estimate())
        if waiter.error is not None:
            raise copy.copy(waiter.error)
        assert waiter.lease is not None
        return waiter.lease
