"""Leases and the hold queue of a supervisor: who uses the backend now, and who waits, in order.

A mixin of `Supervisor` (lifecycle/supervisor.py), split out to keep both modules readable. All
of it is synchronous but `_wait_for_lease`, so a grant, a release or a hand-over happens in one
step that no other task can see halfway.

`max_connections` caps the leases that count: every lease but a passive one, from its grant
until its release, its revocation, or `free_slot` (an open WebSocket: long-lived and mostly
idle, it would otherwise starve plain requests). A request that finds every slot taken waits in
the same hold queue as requests waiting for a start, behind everyone already there, within the
same `queue.timeout`. A released slot goes to the first waiter in the same step, so a request
arriving meanwhile can never overtake the queue.
"""

from __future__ import annotations

import copy
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import structlog
import trio

from ..errors import GatewayError, QueueFull, QueueTimeout, StartCancelled
from .leases import Lease, State, _Waiter

if TYPE_CHECKING:
    from .supervisor import Supervisor

__all__ = ["HoldQueue"]

log = structlog.get_logger("hestia.supervisor")


class HoldQueue:
    """`acquire`, `release`, `lease` and what they need; `Supervisor` inherits it."""

    @property
    def connections_in_use(self: Supervisor) -> int:
        """Leases counted against `max_connections`."""
        return self._counted

    def acquire_nowait(self: Supervisor, *, passive: bool = False) -> Lease | None:
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

    async def acquire(self: Supervisor) -> Lease:
        """A lease, waiting in the hold queue (and starting the backend) when needed.

        Raises `QueueFull`, `QueueTimeout`, `StartFailed` or `StartCancelled` (all 503).
        Pair every lease with `release()`; `lease()` does both.
        """
        return self.acquire_nowait() or await self._wait_for_lease()

    async def acquire_watching(self: Supervisor,
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

    def release(self: Supervisor, lease: Lease) -> None:
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

    def free_slot(self: Supervisor, lease: Lease) -> None:
        """`lease` keeps the backend busy (no idle stop) but stops counting against
        `max_connections`: its slot goes to the first waiter. For an open WebSocket."""
        if lease in self._leases:
            self._uncount(lease)

    @asynccontextmanager
    async def lease(self: Supervisor) -> AsyncIterator[Lease]:
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

    # --- synchronous steps --------------------------------------------------------------------

    def _grant(self: Supervisor, passive: bool = False) -> Lease:
        lease = Lease(passive)
        self._leases.add(lease)
        if not passive:
            lease.counted = True
            self._counted += 1
            self._active += 1
            self.last_used = time.time()
        return lease

    def _uncount(self: Supervisor, lease: Lease) -> None:
        if lease.counted:
            lease.counted = False
            self._counted -= 1
            if self._waiters:
                self._grant_waiters()

    def _grant_waiters(self: Supervisor) -> None:
        """READY: the first waiters get a lease each, in arrival order, while slots are free."""
        if self.state is not State.READY or self._stop_requested is not None or self._closing:
            return
        while self._waiters and self._counted < self._cap:
            waiter, _ = self._waiters.popitem(last=False)
            waiter.lease = self._grant()
            waiter.event.set()

    def _fail_waiters(self: Supervisor, error: GatewayError) -> None:
        waiters, self._waiters = self._waiters, type(self._waiters)()
        for waiter in waiters:
            waiter.error = error
            waiter.event.set()

    def _revoke_leases(self: Supervisor, error: GatewayError) -> None:
        """Every lease ends with `error`. A revoked lease stops counting at once: its holder
        may take a while to give it back, and its slot belongs to the next backend."""
        for lease in list(self._leases):
            if lease.counted:
                lease.counted = False
                self._counted -= 1
            lease.revoke(error)

    # --- waiting ------------------------------------------------------------------------------

    async def _wait_for_lease(self: Supervisor) -> Lease:
        if self._closing:
            raise StartCancelled("the gateway is shutting down", service=self.name,
                                 retry_after=self.retry_after())
        if self.state is State.FAILED and self._failure is not None:
            failure = copy.copy(self._failure)
            failure.retry_after = max(1.0, self._failed_until - trio.current_time())
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
