"""A supervisor that begins by finding out what a killed Hestia left running for it.

A mixin of `Supervisor` (lifecycle/supervisor.py), split out like holding.py. `resume`, called
before `run`, hands the supervisor a *resumption*: an async function that settles a remote
backend a previous Hestia left (lifecycle/remote_recovery.py) and returns it, ready to adopt, or
None once it is stopped (or never ran). The supervisor runs it in its own task, first thing
after `run` reports started, so the gateway serves every other backend meanwhile.

Until it returns, the backend shows STARTING (or STOPPING, as the resumption says), requests
wait in the hold queue as for any start, and nothing is started: `request_start` is refused as
during a start, so no second copy can start beside the one being settled. A stop (the API, the
shutdown) cancels the resumption, which stops what it found before it returns.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import structlog
import trio

from ..launchers.base import Running
from .leases import State
from .placement import Placement

__all__ = ["Resumable", "Resumption"]

log = structlog.get_logger("hestia.supervisor")

# Given the supervisor's state setter (to show STOPPING once it decided to stop); returns the
# backend to adopt as READY on its placement, or None.
Resumption = Callable[[Callable[[State], None]], Awaitable[tuple[Running, Placement] | None]]


class Resumable:
    """`resume` and `_resume`; `Supervisor` inherits them."""

    # What it reads of its owner, the supervisor:
    name: str
    state: State
    placement: Placement
    ready_since: float | None
    _running: Running | None
    _start_scope: trio.CancelScope | None
    _idle_since: float
    _ready_at: float
    _resuming: Resumption | None = None

    def _set_state(self, state: State) -> None: ...

    def _grant_waiters(self) -> None: ...

    async def _watch_exit(self, running: Running) -> None: ...

    def resume(self, resumption: Resumption, state: State = State.STARTING) -> None:
        """Before `run()`: let `resumption` settle a backend a killed Hestia left, showing
        `state` meanwhile (see the module docstring)."""
        assert self.state is State.COLD and self._running is None
        self._resuming = resumption
        self._set_state(state)

    async def _resume(self, nursery: trio.Nursery) -> None:
        """Run the resumption, if any: READY with what it found, else COLD."""
        resumption, self._resuming = self._resuming, None
        if resumption is None:
            return
        found = None
        with trio.CancelScope() as scope:
            self._start_scope = scope
            found = await resumption(self._set_state)
        self._start_scope = None
        if found is not None and scope.cancel_called:  # a stop asked for as it adopted
            self._set_state(State.STOPPING)
            with trio.CancelScope(shield=True):
                await found[0].stop()
            found = None
        if found is None:
            self._set_state(State.COLD)
            return
        running, self.placement = found
        self._running = running
        self.ready_since = time.time()
        self._idle_since = self._ready_at = trio.current_time()
        nursery.start_soon(self._watch_exit, running)
        self._set_state(State.READY)
        log.info("backend_adopted", service=self.name, machine=self.placement.machine)
        self._grant_waiters()
